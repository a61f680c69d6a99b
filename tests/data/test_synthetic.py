"""The embedded synthetic data: seeded fluorescence-like images of touching nuclei."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from segunet.data.synthetic import synthetic_cells
from segunet.data.weightmaps import separate_touching

SHAPES = [(256, 256), (192, 160), (48, 96, 96)]


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: "x".join(map(str, s)))
def sample(request):
    shape = request.param
    return shape, *synthetic_cells(shape, seed=3)


def test_deterministic_per_seed():
    a_image, a_labels = synthetic_cells((96, 80), seed=7)
    b_image, b_labels = synthetic_cells((96, 80), seed=7)
    np.testing.assert_array_equal(a_image, b_image)
    np.testing.assert_array_equal(a_labels, b_labels)
    c_image, c_labels = synthetic_cells((96, 80), seed=8)
    assert not np.array_equal(a_image, c_image)
    assert not np.array_equal(a_labels, c_labels)


def test_types_shapes_and_range(sample):
    shape, image, instances = sample
    assert image.shape == instances.shape == shape
    assert image.dtype == np.float32 and instances.dtype == np.int32
    assert np.isfinite(image).all()
    lo, hi = np.percentile(image, (1, 99.8))
    assert lo == pytest.approx(0, abs=1e-4) and hi == pytest.approx(1, abs=1e-4)
    assert image.min() > -1 and image.max() < 3


def test_instances_are_labelled_1_to_k_and_connected(sample):
    _, _, instances = sample
    k = instances.max()
    assert k >= 10
    np.testing.assert_array_equal(np.unique(instances), np.arange(k + 1))
    for label, box in enumerate(ndi.find_objects(instances), start=1):
        assert ndi.label(instances[box] == label)[1] == 1, f"instance {label} is in pieces"


def test_cells_cluster_and_touch(sample):
    _, _, instances = sample
    separated = separate_touching(instances)
    touching = np.unique(instances[(instances > 0) & (separated == 0)])
    assert len(touching) >= 0.3 * instances.max()
    assert 0.15 <= np.mean(instances > 0) <= 0.6


def test_cells_are_brighter_than_background(sample):
    _, image, instances = sample
    inside, outside = image[instances > 0].mean(), image[instances == 0].mean()
    assert inside > outside + 0.25


def test_options():
    image, instances = synthetic_cells((64, 64), seed=0, noise=0.0, n_clusters=1)
    assert np.isfinite(image).all() and instances.max() >= 1
    noisy, _ = synthetic_cells((64, 64), seed=0, noise=3.0)
    assert np.isfinite(noisy).all()
    big, _ = synthetic_cells((64, 64), seed=0, cell_radius=(10.0, 12.0), density=0.1)
    small_image, small = synthetic_cells((12, 10), seed=0)  # smaller than one cell
    assert small_image.shape == small.shape == (12, 10)
