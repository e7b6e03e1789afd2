"""Eq. 5 lesion heatmaps (§4.1): one anisotropic Gaussian per 3D box, summed."""

import math

import numpy as np
import pytest

from ahnet import ConfigError, DataError
from ahnet.data.heatmap import box_sigmas, gaussian_heatmap


def test_box_sigmas_follow_extents_with_minimum():
    assert box_sigmas((0, 0, 0, 39, 19, 3)) == pytest.approx((10.0, 5.0, 1.0))
    assert box_sigmas((5, 5, 5, 5, 5, 5)) == (0.5, 0.5, 0.5)  # 1-voxel box: minimum sigma
    assert box_sigmas((0, 0, 0, 9, 9, 9), sigma_scale=0.5) == pytest.approx((5.0, 5.0, 5.0))


def test_peak_is_one_at_centre_of_odd_box_and_symmetric():
    h = gaussian_heatmap((32, 30, 12), [(10, 8, 3, 20, 16, 7)])  # centre (15, 12, 5), extents 11, 9, 5
    assert h.dtype == np.float32 and h.shape == (32, 30, 12)
    assert h[15, 12, 5] == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(h), h.shape) == (15, 12, 5)
    window = h[5:26, 2:23, 0:11]  # centred on the box centre
    for axis in range(3):
        np.testing.assert_allclose(window, np.flip(window, axis), rtol=1e-6, atol=1e-7)


def test_values_follow_the_anisotropic_gaussian():
    box = (10, 20, 4, 29, 29, 7)  # extents 20, 10, 4 -> sigmas 5, 2.5, 1; centre (19.5, 24.5, 5.5)
    h = gaussian_heatmap((40, 50, 12), [box])
    sx, sy, sz = box_sigmas(box)
    assert (sx, sy, sz) == pytest.approx((5.0, 2.5, 1.0))
    for p in [(19, 24, 5), (25, 24, 5), (19, 28, 6), (22, 21, 3)]:
        expected = math.exp(-0.5 * (((p[0] - 19.5) / sx) ** 2 + ((p[1] - 24.5) / sy) ** 2
                                    + ((p[2] - 5.5) / sz) ** 2))
        assert h[p] == pytest.approx(expected, rel=1e-5)
    # cut at +-4 sigma: y window ends at ceil(24.5 + 10) = 35, z starts at floor(5.5 - 4) = 1
    assert h[19, 34, 5] > 0 and h[19, 36, 5] == 0
    assert h[19, 24, 1] > 0 and h[19, 24, 0] == 0


def test_box_faces_at_two_sigma():
    """sigma = extent / 4: on the lines through the centre, exactly the box's voxels are >= exp(-2)."""
    box = (10, 20, 4, 30, 30, 8)  # extents 21, 11, 5; centre (20, 25, 6)
    h = gaussian_heatmap((48, 48, 14), [box])
    lines = [h[:, 25, 6], h[20, :, 6], h[20, 25, :]]
    for d, line in enumerate(lines):
        inside = np.flatnonzero(line >= math.exp(-2))
        assert (inside.min(), inside.max()) == (box[d], box[d + 3])


def test_density_mode_integrates_to_one_and_matches_eq5_peak():
    box = (20, 22, 10, 34, 34, 17)
    h = gaussian_heatmap((64, 64, 32), [box], normalize="density")
    assert h.sum() == pytest.approx(1.0, abs=1e-2)
    sx, sy, sz = box_sigmas(box)
    peak = gaussian_heatmap((64, 64, 32), [box]).max()
    assert h.max() == pytest.approx(peak / ((2 * math.pi) ** 1.5 * sx * sy * sz), rel=1e-5)


def test_two_boxes_sum():
    a, b = (4, 4, 2, 12, 12, 6), (10, 8, 3, 20, 18, 9)
    ha, hb = gaussian_heatmap((32, 32, 12), [a]), gaussian_heatmap((32, 32, 12), [b])
    both = gaussian_heatmap((32, 32, 12), [a, b])
    np.testing.assert_allclose(both, ha + hb, rtol=1e-6, atol=1e-7)
    assert both.max() > 1.0 > ha.max() - 1e-6  # overlapping lesions may exceed 1
    np.testing.assert_allclose(gaussian_heatmap((32, 32, 12), np.array([a, b])), both)


def test_clipped_boxes_match_the_full_map():
    big = gaussian_heatmap((60, 60, 22), [(30, 30, 10, 52, 50, 17)])
    clipped = gaussian_heatmap((40, 40, 12), [(10, 10, 0, 32, 30, 7)])  # same box shifted by -20,-20,-10
    np.testing.assert_allclose(clipped, big[20:, 20:, 10:], rtol=1e-6, atol=1e-7)
    far = gaussian_heatmap((16, 16, 8), [(100, 100, 100, 110, 110, 104), (-30, 0, 0, -20, 4, 3)])
    assert not far.any()


def test_empty_boxes_give_zeros():
    for boxes in ([], (), np.zeros((0, 6))):
        h = gaussian_heatmap((8, 9, 3), boxes)
        assert h.shape == (8, 9, 3) and h.dtype == np.float32 and not h.any()


@pytest.mark.parametrize("boxes", [[(0, 0, 0, 4, 4)], [(5, 0, 0, 4, 4, 4)], [(0, 0, 3, 4, 4, 2)],
                                   [(0, 0, 0, 4, float("nan"), 4)], [("a", 0, 0, 4, 4, 4)], None, "box"])
def test_invalid_boxes_raise(boxes):
    with pytest.raises(DataError):
        gaussian_heatmap((8, 8, 8), boxes)


@pytest.mark.parametrize("shape", [(8, 8), (8, 0, 8), (8, 8, 2.5), (8, -1, 4), "888", 8])
def test_invalid_shape_raises(shape):
    with pytest.raises(DataError, match="shape"):
        gaussian_heatmap(shape, [])


def test_invalid_options_raise():
    with pytest.raises(ConfigError, match="normalize"):
        gaussian_heatmap((8, 8, 8), [], normalize="sum")
    with pytest.raises(ConfigError, match="sigma_scale"):
        gaussian_heatmap((8, 8, 8), [], sigma_scale=0)
    with pytest.raises(DataError, match="x1 < x0"):
        box_sigmas((3, 0, 0, 2, 1, 1))
