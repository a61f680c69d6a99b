import numpy as np
import pytest

from segunet.data.augment import flip_rot90
from segunet.data.datasets import PatchDataset, StepSampler, Volume, crop_targets, iter_tiles


def coordinate_volume(shape=(40, 50)):
    """Image, label and weight all encode the pixel's position, so any misregistration shows."""
    coords = np.indices(shape)
    code = (coords[0] * 1000 + coords[1]).astype(np.float32)
    return Volume(
        name="coords",
        image=code[None],
        label=code.astype(np.int64),
        weight=code + 0.5,
        ignore=np.zeros(shape, bool),
    )


def centre_crop(a, shape):
    s = [(n - m) // 2 for n, m in zip(a.shape, shape)]
    return a[tuple(slice(i, i + m) for i, m in zip(s, shape))]


@pytest.mark.parametrize("augment", [False, True])
def test_patches_keep_image_and_targets_in_register(augment):
    vol = coordinate_volume()
    ds = PatchDataset([vol], in_shape=(30, 30), out_shape=(14, 14), seed=3, augment=augment)
    for i in range(20):
        s = ds[i]
        np.testing.assert_array_equal(centre_crop(s["image"][0].numpy(), (14, 14)), s["label"])
        np.testing.assert_array_equal(s["weight"].numpy(), s["label"].numpy() + 0.5)


def test_patch_input_context_is_np_pad_reflect():
    vol = coordinate_volume()
    ds = PatchDataset([vol], in_shape=(30, 30), out_shape=(14, 14), seed=0, augment=False)
    padded = np.pad(vol.image[0], 8, mode="reflect")
    for i in range(20):
        s = ds[i]
        y, x = np.unravel_index(int(s["label"][0, 0]), (1000, 1000))  # decode the start
        np.testing.assert_array_equal(s["image"][0].numpy(), padded[y : y + 30, x : x + 30])


def test_patches_are_a_function_of_seed_and_index():
    vol = coordinate_volume()
    a = PatchDataset([vol], (30, 30), (14, 14), seed=1)
    b = PatchDataset([vol], (30, 30), (14, 14), seed=1)
    c = PatchDataset([vol], (30, 30), (14, 14), seed=2)
    assert all((a[i]["label"] == b[i]["label"]).all() for i in (0, 5, 99))
    assert any((a[i]["label"] != c[i]["label"]).any() for i in (0, 5, 99))


def test_image_smaller_than_output_tile_is_ignored_outside():
    vol = coordinate_volume((10, 12))
    t = crop_targets(vol, (-3, -2), (16, 16))
    assert t["ignore"].sum() == 16 * 16 - 10 * 12
    assert (t["weight"][t["ignore"]] == 0).all()
    np.testing.assert_array_equal(t["label"][3:13, 2:14], vol.label)


def test_flip_rot90_applies_one_draw_to_every_array():
    rng = np.random.default_rng(0)
    vol = coordinate_volume((8, 8))
    sample = {"image": vol.image, "label": vol.label, "weight": vol.weight, "ignore": vol.ignore}
    for _ in range(10):
        out = flip_rot90(sample, rng)
        np.testing.assert_array_equal(out["image"][0], out["label"])
        np.testing.assert_array_equal(out["weight"], out["label"] + 0.5)


def test_tiles_cover_the_image_exactly():
    vol = coordinate_volume((37, 23))
    seen = np.zeros((37, 23), int)
    for start, s in iter_tiles(vol, (26, 26), (10, 10)):
        ys, xs = (slice(a, a + 10) for a in start)
        np.testing.assert_array_equal(s["label"], vol.label[ys, xs])
        seen[ys, xs] += 1
    assert (seen >= 1).all()


def test_step_sampler_splits_one_global_stream_between_ranks():
    one = list(StepSampler(2, 4, batch_size=4))
    ranks = [list(StepSampler(2, 4, batch_size=2, rank=r, world_size=2)) for r in range(2)]
    merged = [i for step in range(2) for r in range(2) for i in ranks[r][step * 2 : step * 2 + 2]]
    assert one == list(range(8, 16)) == merged
