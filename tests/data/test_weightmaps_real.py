"""The fast border weight map equals the direct formula on real labels (ISBI 2012, DSB 2018).

The datasets are read from ``../shared/data`` at run time (see its README) and the tests skip
when it is absent. The direct reference costs one full distance transform per instance
(about 10 s for the 369 nuclei of DSB ``0ea221716cf1``), so only a few images are checked.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import SHARED_DATA
from scipy import ndimage as ndi

from segunet.data.weightmaps import border_weight_map, border_weight_map_direct, separate_touching

tifffile = pytest.importorskip("tifffile")

DATA = SHARED_DATA
ISBI = DATA / "isbi2012" / "train-labels.tif"
DSB = DATA / "dsb2018" / "train" / "masks"
# The largest image of the brief's benchmark, and two small crowded ones with touching nuclei.
DSB_IDS = ["0ea221716cf1", "c53326fe49fc", "f6863b83d75e"]


def dsb_mask(prefix: str) -> np.ndarray:
    found = sorted(DSB.glob(f"{prefix}*.tif")) if DSB.is_dir() else []
    if not found:
        pytest.skip(f"DSB 2018 mask {prefix}... not in {DSB}")
    return tifffile.imread(found[0])


def assert_fast_equals_direct(instances: np.ndarray, **kwargs) -> None:
    fast = border_weight_map(instances, **kwargs)
    direct = border_weight_map_direct(instances, **kwargs)
    assert fast.dtype == np.float32 and fast.shape == instances.shape
    np.testing.assert_allclose(fast, direct, rtol=0, atol=1e-4)
    assert fast.max() > 5  # the border term is there: a trivial map would prove nothing


@pytest.mark.parametrize("index", [0, 17])
def test_isbi2012_slice(index):
    if not ISBI.is_file():
        pytest.skip(f"ISBI 2012 labels not in {ISBI.parent}")
    # 255 is cell interior, 0 membrane: the cells are the connected interiors.
    instances, count = ndi.label(tifffile.imread(ISBI, key=index) == 255)
    assert count > 80
    assert_fast_equals_direct(instances)


@pytest.mark.parametrize("prefix", DSB_IDS)
def test_dsb2018_image(prefix):
    instances = dsb_mask(prefix)
    assert instances.dtype == np.uint16 and instances.max() > 50
    assert_fast_equals_direct(instances)


def test_dsb2018_separated_with_ignore_mask():
    """The data pipeline's path: touching nuclei pulled apart, part of the image ignored."""
    instances = separate_touching(dsb_mask("c53326fe49fc"))
    valid = np.ones(instances.shape, bool)
    valid[:, 100:140] = False
    assert_fast_equals_direct(instances, valid=valid, w0=20.0, sigma=4.0)
