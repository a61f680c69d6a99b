"""Data sources: files become normalised images, class labels, ignore masks and weights."""


import numpy as np
import pytest
import tifffile
from helpers import SHARED_DATA, touching_squares
from hydra.utils import instantiate

from segunet.data.io import write_array
from segunet.data.labels import (
    Targets,
    border_weight_maps,
    class_balance_weights,
    instances_from_labels,
    volume_from_instances,
)
from segunet.data.normalize import normalize_percentile
from segunet.data.sources import folder, split_names, synthetic, tiff_stack, volume_file
from segunet.data.weightmaps import border_weight_map, separate_touching
from segunet.errors import SegunetError

SHARED = SHARED_DATA


def one_line(info, *names):
    message = str(info.value)
    assert "\n" not in message, message
    for name in names:
        assert str(name) in message, message
    return message


def write_folder(root, n=6, image_ext="png", label_ext="tif", rgb=False, label_fn=None):
    for i in range(n):
        image, inst = touching_squares(seed=i)
        if rgb:
            image = np.stack([image, image // 2, 255 - image], axis=-1)
        write_array(root / "images" / f"img{i:02d}.{image_ext}", image)
        labels = label_fn(inst) if label_fn else inst
        write_array(root / "masks" / f"img{i:02d}.{label_ext}", labels)
    return root


# --- normalisation and targets -------------------------------------------------------------


def test_percentile_normalisation_per_channel_matches_numpy():
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(5, 2, (30, 40)), rng.exponential(100, (30, 40))]).astype(np.uint16)
    out = normalize_percentile(x, 1.0, 99.8)
    assert out.dtype == np.float32
    for c in range(2):
        lo, hi = np.percentile(x[c], [1.0, 99.8])
        np.testing.assert_allclose(out[c], (x[c] - lo) / (hi - lo), rtol=1e-5, atol=1e-5)
    whole = normalize_percentile(x, 2, 98, channel_axis=None)
    lo, hi = np.percentile(x, [2, 98])
    np.testing.assert_allclose(whole, (x - lo) / (hi - lo), rtol=1e-5, atol=1e-5)


def test_constant_image_normalises_to_zeros_and_rare_values_keep_their_range():
    assert not normalize_percentile(np.full((1, 8, 8), 7)).any()
    sparse = np.zeros((1, 100, 100))
    sparse[0, 0, 0] = 10  # both percentiles are 0: fall back to min/max
    out = normalize_percentile(sparse)
    assert out.max() == 1 and out.min() == 0


def test_binary_instances_are_connected_components_of_the_foreground():
    labels = np.zeros((10, 10), np.uint8)
    labels[1:4, 1:4] = 255
    labels[4:7, 4:7] = 255  # touches the first only diagonally
    labels[8:, 8:] = 255
    full, ignore = instances_from_labels(labels, "binary", 255)
    assert full.max() == 2 and not ignore.any()
    faces, _ = instances_from_labels(labels, "binary", 255, connectivity=1)
    assert faces.max() == 3


def test_class_balance_weights():
    classes = np.array([[0, 0, 0, 1], [1, 2, 2, 2]])
    valid = np.ones_like(classes, bool)
    valid[1, 3] = False
    w = class_balance_weights(classes, valid, 4, "balanced")
    # 7 valid pixels, 3 classes present: w_c = 7 / (3 * N_c); class 3 absent.
    np.testing.assert_allclose(w[0], [7 / 9] * 3 + [7 / 6])
    np.testing.assert_allclose(w[1], [7 / 6, 7 / 6, 7 / 6, 0])
    assert (w[valid] * 1).sum() == pytest.approx(7)
    np.testing.assert_array_equal(class_balance_weights(classes, valid, 4, None), valid)


def test_weight_maps_in_one_call_match_the_per_image_weight_map():
    instances = [touching_squares(seed=i)[1] for i in range(3)]
    valid = [np.ones(i.shape, bool) for i in instances]
    valid[1][:, :5] = False
    maps = border_weight_maps(instances, valid, w0=10, sigma=5)
    for inst, v, m in zip(instances, valid, maps):
        np.testing.assert_allclose(m, border_weight_map(inst, 10, 5, valid=v), rtol=1e-6)


def test_synthetic_and_volume_from_instances_still_work():
    data = synthetic(n_train=2, n_val=1, shape=(64, 64))
    assert len(data.train) == 2 and len(data.val) == 1 and data.in_channels == 1
    image, inst = touching_squares()
    v = volume_from_instances("x", image.astype(np.float32), inst)
    np.testing.assert_array_equal(v.label, separate_touching(inst) > 0)
    assert v.image.shape == (1, *inst.shape) and v.weight.max() > 5


@pytest.mark.parametrize("key", ["n_train", "n_val"])
def test_synthetic_without_train_or_val_images_is_one_clear_error(key):
    with pytest.raises(SegunetError, match=f"data.{key}=0: need at least 1") as info:
        synthetic(**{"n_train": 1, "n_val": 1, key: 0}, shape=(32, 32))
    one_line(info, f"data.{key}=1")


# --- folder --------------------------------------------------------------------------------


def test_folder_of_grey_png_and_instance_tiffs(tmp_path):
    write_folder(tmp_path)
    data = folder(tmp_path, val_fraction=0.34,
                  targets=Targets(separate_touching=True))
    assert (len(data.train), len(data.val)) == (4, 2)
    assert data.num_classes == 2 and data.spatial_dims == 2 and data.in_channels == 1
    v = data.train[0]
    image, inst = touching_squares(seed=int(v.name[3:]))
    assert v.image.dtype == np.float32 and v.image.shape == (1, 32, 40)
    np.testing.assert_allclose(v.image, normalize_percentile(image[None]), atol=1e-6)
    np.testing.assert_array_equal(v.label, separate_touching(inst) > 0)
    assert v.weight[8, 14] > 5 > v.weight[0, 0] > 0  # the opened gap weighs most


def test_folder_rgb_kept_or_converted_to_grey(tmp_path):
    write_folder(tmp_path, n=3, rgb=True)
    assert folder(tmp_path, val_fraction=0.3).in_channels == 3
    grey = folder(tmp_path, channels=1, val_fraction=0.3)
    assert grey.in_channels == 1 and grey.train[0].image.shape == (1, 32, 40)


def test_folder_groups_images_by_appearance_before_converting_them(tmp_path):
    write_folder(tmp_path / "grey", n=3)
    write_folder(tmp_path / "mixed", n=3, rgb=True)
    for i in range(3):  # three grey images beside the three colour ones
        for sub in ("images", "masks"):
            src = next((tmp_path / "grey" / sub).glob(f"img{i:02d}.*"))
            src.rename(tmp_path / "mixed" / sub / f"grey{i}{src.suffix}")
    data = folder(tmp_path / "mixed", channels=1, balance="appearance", val_fraction=0.2)
    kinds = {v.name[:3]: v.group for v in data.train + data.val}
    assert kinds == {"img": "colour, dark background", "gre": "grey, dark background"}
    assert data.balance and data.in_channels == 1  # grouped as stored, trained as grey
    plain = folder(tmp_path / "mixed", channels=1, val_fraction=0.2)
    assert not plain.balance and {v.group for v in plain.train} == {""}


def test_folder_binary_labels_with_suffix(tmp_path):
    for i in range(3):
        image, inst = touching_squares(seed=i)
        write_array(tmp_path / "img" / f"a{i}.tif", image)
        write_array(tmp_path / "lab" / f"a{i}_mask.png", ((inst > 0) * 255).astype(np.uint8))
    data = folder(tmp_path, images="img", labels="lab", label_suffix="_mask",
                  val_fraction=0.3, targets=Targets(label_kind="binary"))
    v = data.train[0]
    np.testing.assert_array_equal(v.label, touching_squares()[1] > 0)
    # The two touching squares form one component: no border term between them.
    assert v.weight[8, 14] == v.weight[8, 13]


def test_folder_classes_with_ignore_value(tmp_path):
    def classes(inst):
        lab = np.minimum(inst, 2).astype(np.uint8)
        lab[:2] = 255  # unlabelled rows
        return lab

    write_folder(tmp_path, n=3, label_fn=classes)
    targets = Targets(label_kind="classes", num_classes=3, ignore_value=255)
    data = folder(tmp_path, val_fraction=0.3, class_names=["bg", "a", "b"], targets=targets)
    v = data.train[0]
    assert data.num_classes == 3 and data.class_names == ["bg", "a", "b"]
    assert v.ignore[:2].all() and not v.ignore[2:].any()
    assert set(np.unique(v.label)) == {0, 1, 2} and (v.weight[:2] == 0).all()
    np.testing.assert_allclose(v.weight[~v.ignore].sum(), (~v.ignore).sum(), rtol=1e-5)


def test_folder_of_3d_stacks(tmp_path):
    for i in range(3):
        image, inst = touching_squares(seed=i)
        write_array(tmp_path / "images" / f"v{i}.tif", np.stack([image] * 4))
        write_array(tmp_path / "masks" / f"v{i}.tif", np.stack([inst] * 4))
    data = folder(tmp_path, spatial_dims=3, val_fraction=0.3)
    assert data.spatial_dims == 3 and data.train[0].image.shape == (1, 4, 32, 40)
    with pytest.raises(SegunetError, match="spatial_dims=3") as info:
        folder(tmp_path, val_fraction=0.3)
    one_line(info, "v0.tif")


def test_split_is_deterministic_disjoint_and_seeded(tmp_path):
    names = [f"n{i:02d}" for i in range(20)]
    val = split_names(names, 0.25, seed=0)
    assert len(val) == 5 and val == split_names(names[::-1], 0.25, seed=0)
    assert val != split_names(names, 0.25, seed=1)
    write_folder(tmp_path, n=8)
    data = folder(tmp_path, val_fraction=0.25, split_seed=3)
    train, val = {v.name for v in data.train}, {v.name for v in data.val}
    assert not train & val and len(train | val) == 8
    assert val == set(split_names(sorted(train | val), 0.25, seed=3))
    again = folder(tmp_path, val_fraction=0.25, split_seed=3)
    assert {v.name for v in again.val} == val
    assert len(folder(tmp_path, max_images=4, val_fraction=0.25).train) == 3


def test_split_errors_say_which_way_to_move_val_fraction(tmp_path):
    write_folder(tmp_path, n=2)
    with pytest.raises(SegunetError, match="lower data.val_fraction"):
        folder(tmp_path, val_fraction=0.9)
    with pytest.raises(SegunetError, match="strictly between"):
        folder(tmp_path, val_fraction=0.0)


def test_folder_errors_are_one_line_naming_the_file(tmp_path):
    write_folder(tmp_path, n=4)
    (tmp_path / "masks" / "img02.tif").unlink()
    with pytest.raises(SegunetError, match="no label") as info:
        folder(tmp_path)
    one_line(info, "img02.png", "1 of 4")

    write_array(tmp_path / "masks" / "img02.tif", np.zeros((30, 40), np.uint16))
    with pytest.raises(SegunetError, match="pixel for pixel") as info:
        folder(tmp_path)
    one_line(info, "img02.png", "img02.tif")

    write_array(tmp_path / "masks" / "img02.tif", touching_squares()[1] * 7)
    with pytest.raises(SegunetError, match=r"expected \{0, 255\}") as info:
        folder(tmp_path, targets=Targets(label_kind="binary"))
    one_line(info, "img00.tif", "data.targets.foreground_value")

    write_array(tmp_path / "images" / "img01.png", np.zeros((32, 40), np.uint8))
    nan = np.zeros((32, 40), np.float32)
    nan[3, 3] = np.nan
    (tmp_path / "images" / "img01.png").unlink()
    write_array(tmp_path / "images" / "img01.tif", nan)
    with pytest.raises(SegunetError, match="NaN") as info:
        folder(tmp_path)
    one_line(info, "img01.tif")

    (tmp_path / "images" / "img01.tif").write_bytes(b"")
    with pytest.raises(SegunetError, match="empty") as info:
        folder(tmp_path)
    one_line(info, "img01.tif")

    with pytest.raises(SegunetError, match="data.path") as info:
        folder(tmp_path / "elsewhere")
    one_line(info, "elsewhere")


def test_negative_instance_labels_suggest_ignore_value(tmp_path):
    write_folder(tmp_path, n=3, label_fn=lambda inst: inst.astype(np.int16) - 1)
    with pytest.raises(SegunetError, match="ignore_value") as info:
        folder(tmp_path)
    one_line(info, "img00.tif")
    data = folder(tmp_path, val_fraction=0.3, targets=Targets(ignore_value=-1))
    assert data.train[0].ignore.any() and (data.train[0].weight[data.train[0].ignore] == 0).all()


# --- stacks and volume files ---------------------------------------------------------------


def write_stack(root, depth=10):
    images, labels = zip(*(touching_squares(seed=z) for z in range(depth)))
    write_array(root / "train-volume.tif", np.stack(images))
    write_array(root / "train-labels.tif", (np.stack(labels) > 0).astype(np.uint8) * 255)
    return np.stack(images), np.stack(labels)


def test_tiff_stack_as_2d_slices_validates_on_the_last(tmp_path):
    images, labels = write_stack(tmp_path)
    data = tiff_stack(tmp_path, val_fraction=0.2)
    assert [v.name for v in data.val] == [f"{tmp_path.name}_z008", f"{tmp_path.name}_z009"]
    assert len(data.train) == 8 and data.spatial_dims == 2
    np.testing.assert_array_equal(data.val[1].label, labels[9] > 0)
    # Normalised as one stack: the slices share one intensity mapping.
    np.testing.assert_allclose(data.train[3].image[0], normalize_percentile(images[None])[0, 3],
                               atol=1e-6)
    assert len(tiff_stack(tmp_path, max_images=5, val_fraction=0.2).train) == 4


def test_tiff_stack_as_3d_splits_the_z_slab(tmp_path):
    write_stack(tmp_path)
    data = tiff_stack(tmp_path, slices_as="3d", val_fraction=0.3)
    assert data.spatial_dims == 3
    assert data.train[0].image.shape == (1, 7, 32, 40) and data.val[0].label.shape == (3, 32, 40)


@pytest.mark.parametrize("ext", ["h5", "zarr"])
def test_volume_file_with_sparse_labels(tmp_path, ext):
    image, inst = touching_squares()
    raw = np.stack([image] * 8)
    labels = np.stack([inst] * 8).astype(np.int32)
    labels[1::2] = -1  # every other slice unlabelled
    path = tmp_path / f"v.{ext}"
    write_array(path, raw, key="raw")
    write_array(path, labels, key="labels")
    data = volume_file(str(path), val_fraction=0.25,
                       targets=Targets(ignore_value=-1))
    train = data.train[0]
    assert train.image.shape == (1, 6, 32, 40) and data.val[0].label.shape == (2, 32, 40)
    assert train.ignore[1::2].all() and not train.ignore[::2].any()
    assert (train.weight[1::2] == 0).all() and (train.weight[::2] > 0).all()
    with pytest.raises(SegunetError, match="no array 'seg'") as info:
        volume_file(str(path), label_key="seg")
    one_line(info, path)


# --- pixel size ----------------------------------------------------------------------------


def write_calibrated_folder(root, sizes):
    """Image TIFFs calibrated as ImageJ writes them (pixels per micron), PNG-free."""
    for i, size in enumerate(sizes):
        image, inst = touching_squares(seed=i)
        (root / "images").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / "images" / f"img{i:02d}.tif", image, imagej=True,
                         resolution=(1 / size, 1 / size), metadata={"unit": "micron"})
        write_array(root / "masks" / f"img{i:02d}.tif", inst)
    return root


def test_folder_records_the_pixel_size_its_images_share_or_the_given_one(tmp_path):
    write_calibrated_folder(tmp_path, [0.25] * 3)
    assert folder(tmp_path, val_fraction=0.34).pixel_size == (0.25, 0.25)
    given = folder(tmp_path, val_fraction=0.34, pixel_size=[0.5])
    assert given.pixel_size == (0.5, 0.5)
    with pytest.raises(SegunetError, match=r"data.pixel_size=\[0.0, 1.0\]: a pixel size must"):
        folder(tmp_path, val_fraction=0.34, pixel_size=[0.0, 1.0])


def test_folder_of_differing_pixel_sizes_warns_and_records_none(tmp_path):
    write_calibrated_folder(tmp_path, [0.25, 0.25, 0.5])
    with pytest.warns(UserWarning, match="img02.tif.*0.5 x 0.5 um.*set data.pixel_size"):
        data = folder(tmp_path, val_fraction=0.34)
    assert data.pixel_size is None


def test_stack_pixel_size_per_slice_or_volume(tmp_path):
    images, labels = write_stack(tmp_path)
    tifffile.imwrite(tmp_path / "train-volume.tif", images, imagej=True, resolution=(2, 4),
                     metadata={"unit": "um", "spacing": 1.5, "axes": "ZYX"})
    assert tiff_stack(tmp_path).pixel_size == (0.25, 0.5)
    assert tiff_stack(tmp_path, slices_as="3d", val_fraction=0.3
                      ).pixel_size == (1.5, 0.25, 0.5)
    assert synthetic(n_train=1, n_val=1, shape=(32, 32), pixel_size=[0.3]).pixel_size == (0.3,
                                                                                          0.3)


# --- presets -------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["isbi2012", "dsb2018", "lucchi", "folder", "tiff_stack",
                                    "volume"])
def test_presets_compose_and_take_a_path(make_cfg, preset):
    cfg = make_cfg(f"data={preset}", "data.path=/some/where")
    assert cfg.data.path == "/some/where"
    assert "patch_size" in cfg.data and "foreground_oversample" in cfg.data


def test_generic_presets_need_a_path(make_cfg):
    from omegaconf.errors import MissingMandatoryValue

    with pytest.raises(MissingMandatoryValue):
        instantiate(make_cfg("data=folder").data)


def test_folder_preset_instantiates_on_files(make_cfg, tmp_path):
    write_folder(tmp_path, n=3)
    cfg = make_cfg("data=folder", f"data.path={tmp_path}", "data.val_fraction=0.3",
                   "data.patch_size=[20,20]")
    data = instantiate(cfg.data)
    assert len(data.train) == 2 and data.patch_size == (20, 20)


@pytest.mark.skipif(not (SHARED / "isbi2012").is_dir(), reason="no shared ISBI 2012 data")
def test_isbi2012_preset_on_the_real_stack(make_cfg):
    cfg = make_cfg("data=isbi2012", f"data.path={SHARED / 'isbi2012'}", "data.max_images=4",
                   "data.val_fraction=0.25")
    data = instantiate(cfg.data)
    assert (len(data.train), len(data.val)) == (3, 1)
    v = data.train[0]
    assert v.image.shape == (1, 512, 512) and data.class_names == ["membrane", "cell"]
    assert 0.6 < v.label.mean() < 0.9  # cell interiors dominate; membranes are thin
    assert v.weight[v.label == 0].max() > 5  # membranes between cells weigh most


@pytest.mark.skipif(not (SHARED / "dsb2018").is_dir(), reason="no shared DSB 2018 data")
def test_dsb2018_preset_on_real_images(make_cfg):
    cfg = make_cfg("data=dsb2018", f"data.path={SHARED / 'dsb2018' / 'train'}",
                   "data.max_images=4", "data.val_fraction=0.25")
    data = instantiate(cfg.data)
    assert (len(data.train), len(data.val)) == (3, 1) and data.in_channels == 1
    for v in data.train + data.val:
        assert v.image.shape[1:] == v.label.shape and set(np.unique(v.label)) == {0, 1}
        assert 0 <= np.median(v.image) <= 1


@pytest.mark.skipif(not (SHARED / "lucchi_pp").is_dir(), reason="no shared Lucchi data")
def test_lucchi_preset_on_the_real_stack_in_3d(make_cfg):
    cfg = make_cfg("data=lucchi", f"data.path={SHARED / 'lucchi_pp'}", "data.max_images=8",
                   "data.slices_as=3d", "data.val_fraction=0.25")
    data = instantiate(cfg.data)
    assert data.spatial_dims == 3 and data.train[0].label.shape == (6, 384, 384)
    assert 0.02 < data.train[0].label.mean() < 0.4
