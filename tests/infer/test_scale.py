"""scale=auto's search on a simulated model whose failures are known, and its measure on
drawn discs whose width is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.draw import disk
from skimage.measure import label

from segunet.errors import SegunetError
from segunet.infer.scale import (
    MAX_FACTOR,
    MAX_MEASURES,
    Measure,
    given_diameter,
    measure_objects,
    search_scale,
)

TRAINED = (12.0, 16.0, 28.0)  # the quartiles of a model's training object widths, px


def simulated(width: float, smallest: float = 4.0, largest: float = 45.0, piece: float = 18.0):
    """A model that sees objects ``width`` image px across at factor f as ``width * f``
    model px: none below ``smallest``, pieces of ``piece`` model px above ``largest``."""
    calls = []

    def measure(factor: float) -> Measure:
        calls.append(factor)
        seen = width * factor
        if seen < smallest:
            return Measure(factor, None, 0)
        found = piece if seen > largest else seen
        return Measure(factor, found / factor, 50)

    return measure, calls


@pytest.mark.parametrize("width", [3.0, 6.0, 9.0, 14.0, 20.0, 40.0, 70.0, 150.0])
def test_the_search_brings_objects_into_the_trained_range(width):
    measure, calls = simulated(width)
    estimate = search_scale(measure, TRAINED)
    seen = width * estimate.factor
    if TRAINED[0] <= width <= TRAINED[2]:
        assert estimate.factor == 1.0  # known sizes stay as they are
    else:  # brought to the middle of what the model knows (within the search's slack)
        assert TRAINED[0] / 1.15 <= seen <= TRAINED[2] * 1.15, (width, estimate)
    assert estimate.diameter == pytest.approx(width)
    assert len(calls) <= MAX_MEASURES


def test_pieces_of_large_objects_are_not_taken_for_objects():
    """At their own scale 150 px objects come out as 18 px pieces, inside the trained range:
    a fixed point of the naive search. The coarser view shows them larger."""
    measure, calls = simulated(150.0)
    assert measure(1.0).diameter == 18.0
    estimate = search_scale(measure, TRAINED)
    assert TRAINED[0] / 1.15 <= 150 * estimate.factor <= TRAINED[2] * 1.15
    assert estimate.diameter == 150.0  # measured whole at the end


def test_no_objects_at_any_scale_leaves_the_image_as_it_is():
    calls = []

    def nothing(factor):
        calls.append(factor)
        return Measure(factor, None, 0)

    estimate = search_scale(nothing, TRAINED)
    assert estimate.factor == 1.0 and estimate.diameter is None
    assert min(calls) == 1 / MAX_FACTOR and max(calls) == MAX_FACTOR
    assert "found no objects" in estimate.describe()


def test_given_diameter_scales_to_the_median_or_refuses_beyond_the_limit():
    assert given_diameter(20.0, TRAINED).factor == 1.0
    assert given_diameter(64.0, TRAINED).factor == pytest.approx(0.25)
    assert given_diameter(4.0, TRAINED).factor == pytest.approx(4.0)
    with pytest.raises(SegunetError, match=r"diameter=1000 px is 62.5x .* beyond the 8x"):
        given_diameter(1000.0, TRAINED)


@pytest.mark.parametrize("factor", [1.0, 0.5, 2.0])
def test_measure_finds_the_width_of_drawn_discs_in_image_pixels(factor):
    """Discs of radius 10 on a 300 px image: 2 r = 20 px wide at any factor, the window
    resampled by it; the thresholded image stands in for the net and its decoding."""
    image = np.zeros((300, 300), np.float32)
    for cy in range(20, 300, 40):
        for cx in range(20, 300, 40):
            image[disk((cy, cx), 10, shape=image.shape)] = 1
    area = int(image[:40, :40].sum())  # the drawn disc's own area
    width = 2 * math.sqrt(area / math.pi)
    shapes = []

    def predict(x):
        shapes.append(x.shape)
        return np.stack([1 - x[0], x[0]])

    m = measure_objects(image[None], factor, predict, lambda p: label(p[1] > 0.5))
    assert m.diameter == pytest.approx(width, rel=0.05)
    assert m.objects >= 9
    # The window is at most 512 model px a side, cut from the middle of the image.
    assert shapes[0][1:] == tuple(min(512, round(300 * factor)) for _ in range(2))


def test_measure_in_3d_reads_a_window_of_at_most_96_voxels_a_side():
    """Balls of radius 6 (12 voxels across) in a 120^3 volume, measured at half scale."""
    from skimage.draw import ellipsoid

    volume = np.zeros((120, 120, 120), np.float32)
    ball = ellipsoid(6, 6, 6)[1:-1, 1:-1, 1:-1]
    for z in range(10, 110, 25):
        for y in range(10, 110, 25):
            for x in range(10, 110, 25):
                volume[z:z + ball.shape[0], y:y + ball.shape[1], x:x + ball.shape[2]] = ball
    width = float(np.cbrt(6 * ball.sum() / math.pi))
    shapes = []

    def predict(x):
        shapes.append(x.shape)
        return np.stack([1 - x[0], x[0]])

    m = measure_objects(volume[None], 0.5, predict, lambda p: label(p[1] > 0.5))
    assert shapes[0][1:] == (60, 60, 60)  # the whole volume fits the window at 0.5x
    assert m.diameter == pytest.approx(width, rel=0.1)
    m = measure_objects(volume[None], 1.0, predict, lambda p: label(p[1] > 0.5))
    assert shapes[1][1:] == (96, 96, 96)
    assert m.diameter == pytest.approx(width, rel=0.05)
