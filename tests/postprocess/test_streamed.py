"""Instances decoded block by block (:mod:`segunet.postprocess.streamed`) against the
whole-image decoding of the same probabilities: equal up to a permutation of the ids,
whatever the blocking, in 2D and 3D, with objects across block faces and corners."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import same_objects
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from segunet.data.synthetic import synthetic_cells
from segunet.postprocess.decoding import PostProcess, decode
from segunet.postprocess.streamed import (
    auto_halo,
    block_grid,
    decode_streamed,
    renumber,
    run_here,
)


def shuffled(task, items, description, progress=False, **shared):
    """A :data:`Map` that runs the blocks in a random order, as a cluster's workers
    finish them."""
    order = np.random.default_rng(len(items)).permutation(len(items))
    for i in order:
        yield int(i), task(items[i], **shared)


def streamed(probs, target, post, core, halo, map_blocks=run_here):
    ids = np.zeros(probs.shape[1:], np.uint32)
    window_post = PostProcess(**{**post.as_dict(), "min_size": 0})
    numbering = decode_streamed(probs, lambda p: decode(p, target, window_post), ids, core,
                                halo, post.min_size, map_blocks=map_blocks)
    out = np.zeros(probs.shape[1:], np.uint16)
    renumber(ids, numbering, out, core, map_blocks=map_blocks)
    count = numbering.count
    assert count == out.max() and set(np.unique(out)) == set(range(count + 1))
    return out


def foreground_probs(labels: np.ndarray, seed: int) -> np.ndarray:
    """Two classes: objects blurred a little, with noise, so thresholds cut them unevenly."""
    rng = np.random.default_rng(seed)
    fg = ndi.gaussian_filter((labels > 0).astype(np.float32), 1.0)
    fg = np.clip(fg + rng.normal(0, 0.05, fg.shape), 0, 1).astype(np.float32)
    return np.stack([1 - fg, fg])


def boundary_probs(labels: np.ndarray, seed: int) -> np.ndarray:
    """Three classes (background, interior, boundary) as a boundary-target net gives them
    for ``labels``: touching objects part at their common boundary."""
    rng = np.random.default_rng(seed)
    edge = find_boundaries(labels, mode="inner") & (labels > 0)
    interior = (labels > 0) & ~edge
    maps = np.stack([labels == 0, interior, edge]).astype(np.float32)
    maps = ndi.gaussian_filter(maps, (0,) + (0.7,) * labels.ndim)
    maps += rng.uniform(0, 0.1, maps.shape).astype(np.float32)
    return (maps / maps.sum(0)).astype(np.float32)


@pytest.mark.parametrize("core", [(64, 64), (37, 50), (16, 128), (200, 200)])
@pytest.mark.parametrize("target", ["foreground", "boundary"])
def test_2d_streamed_equals_whole(core, target):
    labels = synthetic_cells((150, 170), seed=3)[1]
    if target == "foreground":
        probs, post = foreground_probs(labels, 1), PostProcess(threshold=0.5, grow=1,
                                                               min_size=20)
    else:
        probs, post = boundary_probs(labels, 2), PostProcess(threshold=0.5, seed_threshold=0.5,
                                                             min_size=20)
    whole = decode(probs, target, post)
    assert whole.max() > 10
    same_objects(streamed(probs, target, post, core, auto_halo(20, post.grow)), whole)


def touching_at_corners(shape: tuple[int, ...], core: int, radius: int) -> np.ndarray:
    """Pairs of touching balls centred on block corners (the points where 4 or 8 cores
    meet), so every object spans several cores and touches another across a face."""
    grid = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    corners = itertools.product(*(range(core, n, core) for n in shape))
    for k, corner in enumerate(corners):
        for j, shift in enumerate((-radius + 1, radius - 1)):
            centre = np.array(corner) + np.array([shift] + [0] * (len(shape) - 1))
            ball = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
            labels[ball & (labels == 0)] = 2 * k + j + 1
    return labels


@pytest.mark.parametrize("dims", [2, 3])
def test_touching_objects_across_block_corners_stay_apart_and_whole(dims):
    core, radius = 16, 6
    shape = (64,) * dims if dims == 2 else (40,) * dims
    labels = touching_at_corners(shape, core, radius)
    probs = boundary_probs(labels, 5)
    post = PostProcess(threshold=0.5, seed_threshold=0.5, min_size=0)
    whole = decode(probs, "boundary", post)
    got = streamed(probs, "boundary", post, (core,) * dims, 16)
    same_objects(got, whole)
    # And they are the objects drawn (their one-pixel tips aside): none split, none merged.
    assert got.max() == labels.max()
    majority = set()
    for k in range(1, labels.max() + 1):
        ids, counts = np.unique(got[labels == k], return_counts=True)
        assert ids[counts.argmax()] > 0 and counts.max() > 0.8 * (labels == k).sum()
        majority.add(ids[counts.argmax()])
    assert len(majority) == labels.max()


@pytest.mark.parametrize("dims", [2, 3])
def test_blocks_decoded_in_any_order_give_the_same_image(dims):
    """The blocks of a cluster finish in any order: the objects and even their numbers are
    those of the blocks decoded in raster order."""
    core, radius = 16, 6
    labels = touching_at_corners((64,) * dims if dims == 2 else (40,) * dims, core, radius)
    probs = boundary_probs(labels, 4)
    post = PostProcess(threshold=0.5, seed_threshold=0.5, min_size=30)
    in_order = streamed(probs, "boundary", post, (core,) * dims, 16)
    np.testing.assert_array_equal(
        streamed(probs, "boundary", post, (core,) * dims, 16, map_blocks=shuffled),
        in_order)
    assert in_order.max() == labels.max()


def test_min_size_counts_the_whole_object_not_its_piece_in_a_core():
    """A long bar cut into pieces of 10 px by the cores is one object of 600 px: kept with
    min_size=100; a lone speck of 9 px goes."""
    labels = np.zeros((40, 80), np.int32)
    labels[10:16, 2:102 - 2] = 1  # 6 x 76
    labels[30:33, 30:33] = 2
    probs = foreground_probs(labels, 0)
    post = PostProcess(threshold=0.5, min_size=100)
    got = streamed(probs, "foreground", post, (10, 10), 16)
    same_objects(got, decode(probs, "foreground", post))
    assert got.max() == 1 and (got > 0).sum() > 400


def test_a_snake_through_many_cores_is_one_object():
    """Connected components are joined whatever their extent: a spiral wider than any
    window is one object, as in the whole image."""
    labels = np.zeros((90, 90), np.int32)
    for r in range(5, 45, 8):
        labels[45 - r, 45 - r:45 + r] = 1
        labels[45 - r:45 + r, 45 + r] = 1
        labels[45 + r, 45 - r + 4:45 + r + 1] = 1
        labels[45 - r + 4:45 + r, 45 - r] = 1
    labels = ndi.binary_dilation(labels).astype(np.int32)
    probs = foreground_probs(labels, 3)
    post = PostProcess(threshold=0.5)
    same_objects(streamed(probs, "foreground", post, (16, 16), 4),
                 decode(probs, "foreground", post))


def test_block_grid_covers_the_image_once():
    blocks = block_grid((50, 33), (16, 16), 5)
    cover = np.zeros((50, 33), int)
    for b in blocks:
        cover[b.core] += 1
        assert all(w.start <= c.start and c.stop <= w.stop for c, w in zip(b.core, b.window))
    assert (cover == 1).all() and len(blocks) == 4 * 3


def test_no_halo_is_refused():
    with pytest.raises(ValueError, match="halo of at least 1"):
        decode_streamed(np.zeros((2, 4, 4)), lambda p: p[0], np.zeros((4, 4), np.uint8),
                        (2, 2), 0)
