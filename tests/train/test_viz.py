import numpy as np

from segunet.train.viz import grey, hot, save_png, sheet


def test_sheet_lays_out_panels_with_white_gaps(tmp_path):
    a, b = np.zeros((5, 3, 3)), np.full((5, 2, 3), 0.5)
    out = sheet([[a, b], [b, a]], gap=1)
    assert out.shape == (5 + 1 + 5, 3 + 1 + 2, 3)
    assert (out[:5, 3] == 1).all() and (out[5] == 1).all()  # gaps are white
    np.testing.assert_array_equal(out[:5, 4:], b)
    assert save_png(tmp_path / "x" / "s.png", out).is_file()


def test_colour_maps_span_black_to_white():
    np.testing.assert_array_equal(hot(np.array([0.0, 1.0])), [[0, 0, 0], [1, 1, 1]])
    assert grey(np.array([[2.0]])).tolist() == [[[1.0, 1.0, 1.0]]]


def test_hot_ramps_red_then_green_then_blue():
    # Red rises over [0, 1/3], green over [1/3, 2/3], blue over [2/3, 1], each 3x as steep.
    x = np.array([1 / 6, 1 / 3, 1 / 2, 2 / 3, 5 / 6])
    expected = [[0.5, 0, 0], [1, 0, 0], [1, 0.5, 0], [1, 1, 0], [1, 1, 0.5]]
    np.testing.assert_allclose(hot(x), expected, atol=1e-12)
    assert hot(np.zeros((2, 3))).shape == (2, 3, 3)
