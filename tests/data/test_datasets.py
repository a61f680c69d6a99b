import numpy as np

from segunet.data.datasets import (
    PatchDataset,
    StepSampler,
    Volume,
    crop_targets,
    crop_to_output,
    draw_shares,
    shares_line,
)


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


def test_patches_keep_image_and_targets_in_register():
    vol = coordinate_volume()
    ds = PatchDataset([vol], in_shape=(30, 30), out_shape=(14, 14), seed=3)
    for i in range(20):
        s = ds[i]
        # Before augmentation every array covers the input tile, mirrored alike.
        np.testing.assert_array_equal(s["image"][0].numpy(), s["label"].numpy())
        np.testing.assert_array_equal(s["weight"].numpy(), s["label"].numpy() + 0.5)
        cropped = crop_to_output(s, (14, 14))
        np.testing.assert_array_equal(
            centre_crop(s["image"][0].numpy(), (14, 14)), cropped["label"]
        )
        assert cropped["weight"].shape == cropped["ignore"].shape == (14, 14)


def test_augment_in_dataset_sees_the_input_tile_and_returns_the_output_tile():
    seen = []

    def augment(batch, generator):
        seen.append({k: tuple(v.shape) for k, v in batch.items()})
        return batch

    ds = PatchDataset([coordinate_volume()], (30, 30), (14, 14), augment=augment)
    s = ds[0]
    assert seen == [{"image": (1, 1, 30, 30), "label": (1, 30, 30), "weight": (1, 30, 30),
                     "ignore": (1, 30, 30)}]
    assert s["image"].shape == (1, 30, 30) and s["label"].shape == (14, 14)


def test_foreground_oversampling_centres_on_foreground():
    shape = (200, 200)
    label = np.zeros(shape, np.int64)
    label[150:156, 20:26] = 1  # one small object
    vol = Volume("sparse", label[None].astype(np.float32), label, np.ones(shape, np.float32),
                 np.zeros(shape, bool))
    hits = []
    for p in (0.0, 1.0):
        ds = PatchDataset([vol], (30, 30), (14, 14), foreground_oversample=p)
        hits.append(np.mean([crop_to_output(ds[i], (14, 14))["label"].any() for i in range(50)]))
    assert hits[0] < 0.2 and hits[1] == 1.0


def test_patch_input_context_is_np_pad_reflect():
    vol = coordinate_volume()
    ds = PatchDataset([vol], in_shape=(30, 30), out_shape=(14, 14), seed=0)
    padded = np.pad(vol.image[0], 8, mode="reflect")
    for i in range(20):
        s = crop_to_output(ds[i], (14, 14))
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


def test_step_sampler_splits_one_global_stream_between_ranks():
    one = list(StepSampler(2, 4, batch_size=4))
    ranks = [list(StepSampler(2, 4, batch_size=2, rank=r, world_size=2)) for r in range(2)]
    merged = [i for step in range(2) for r in range(2) for i in ranks[r][step * 2 : step * 2 + 2]]
    assert one == list(range(8, 16)) == merged


def sized(name, shape, group):
    return Volume(name=name, image=np.zeros((1, *shape), np.float32),
                  label=np.zeros(shape, np.int64), weight=np.ones(shape, np.float32),
                  ignore=np.zeros(shape, bool), group=group)


def test_draw_shares_by_size_and_tempered_by_kind():
    """Four grey images (two of them twice the size) and one colour image, by hand: by size
    1:1:2:2:1; balanced, the kinds share sqrt(4) : sqrt(1) = 2/3 : 1/3, size within kind."""
    volumes = [sized("a", (8, 8), "grey"), sized("b", (8, 8), "grey"),
               sized("c", (8, 16), "grey"), sized("d", (8, 16), "grey"),
               sized("e", (8, 8), "colour")]
    np.testing.assert_allclose(draw_shares(volumes), np.array([1, 1, 2, 2, 1]) / 7)
    np.testing.assert_allclose(draw_shares(volumes, balance=True),
                               [2 / 3 / 6, 2 / 3 / 6, 2 / 3 / 3, 2 / 3 / 3, 1 / 3])
    assert shares_line(volumes) == "colour 33% (1 images); grey 67% (4 images)"
    same = [sized(v.name, v.spatial_shape, "grey") for v in volumes]
    np.testing.assert_allclose(draw_shares(same, balance=True), draw_shares(same))


def test_patches_are_drawn_with_those_shares():
    volumes = [sized(f"g{i}", (8, 8), "grey") for i in range(9)] + [sized("c", (8, 8), "c")]
    for volume, value in zip(volumes, range(10)):
        volume.image[:] = value
    ds = PatchDataset(volumes, in_shape=(8, 8), out_shape=(8, 8), balance=True)
    drawn = np.array([int(ds[i]["image"][0, 0, 0]) for i in range(4000)])
    # sqrt(9) : sqrt(1): the one colour image is a quarter of the draws, not a tenth
    assert abs(np.mean(drawn == 9) - 0.25) < 0.025
