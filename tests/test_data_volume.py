"""ahnet.data.volume: NIfTI volumes in network orientation (thick axis last) and back, and the
DataError raised for every kind of broken file."""

import gzip
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from datasets import PIXDIM_OFFSET, SCL_INTER_OFFSET, SCL_SLOPE_OFFSET, patch_header_float, write_nifti

from ahnet.data import Volume, boxes_to_network, load_volume, thick_axis, to_file_orientation
from ahnet.errors import AhnetError, DataError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def _arange(shape, dtype=np.float32):
    return np.arange(np.prod(shape), dtype=dtype).reshape(shape)


# ----------------------------------------------------------------------------------- thick_axis

@pytest.mark.parametrize("spacing, expected", [
    ((0.8, 0.8, 3.0), 2),
    ((3.0, 0.8, 0.8), 0),
    ((0.7, 5.0, 0.7), 1),
    ((1.0, 1.0, 1.0), 2),               # isotropic: keep the file's last axis
    ((1.0, 1.0005, 1.0), 2),            # within 1e-3 relative: still isotropic
    ((1.0, 1.01, 1.0), 1),              # 1 % coarser: a real thick axis
    ((3.0, 3.0, 1.0), 1),               # tie between the coarsest: the last of them
    ((3.0, 1.0, 3.0), 2),
    ((2.0, 2.0 * (1 - 5e-4), 1.0), 1),  # tie within tolerance: still the last of them
])
def test_thick_axis(spacing, expected):
    assert thick_axis(spacing) == expected


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 0.0, 2.0), (1.0, -1.0, 2.0), (float("nan"), 1, 1), "abc"])
def test_thick_axis_rejects_bad_spacing(spacing):
    with pytest.raises(DataError, match="spacing"):
        thick_axis(spacing)


# ---------------------------------------------------------------------------------- orientation

def test_load_volume_keeps_z_last_file(tmp_path):
    arr = _arange((5, 4, 3))
    aff = np.array([[0, 0.8, 0, 10], [0.8, 0, 0, -5], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    p = write_nifti(tmp_path / "a.nii.gz", arr, (0.8, 0.8, 3.0), affine=aff)
    v = load_volume(p)
    assert isinstance(v, Volume)
    assert v.axes == (0, 1, 2) and v.file_shape == (5, 4, 3) and v.path == str(p)
    assert v.array.dtype == np.float32 and v.array.shape == (5, 4, 3)
    np.testing.assert_array_equal(v.array, arr)
    assert v.spacing == pytest.approx((0.8, 0.8, 3.0))
    np.testing.assert_allclose(v.affine, aff, atol=1e-6)  # the file's affine, not permuted


def test_thick_axis_first_comes_back_last(tmp_path):
    arr = _arange((4, 7, 6))  # file axis 0 is the thick axis
    p = write_nifti(tmp_path / "t0.nii.gz", arr, (2.5, 0.5, 0.6))
    v = load_volume(p)
    assert v.axes == (1, 2, 0)
    assert v.array.shape == (7, 6, 4)
    assert v.spacing == pytest.approx((0.5, 0.6, 2.5))
    assert v.file_shape == (4, 7, 6)
    # network voxel (y, z, x) is file voxel (x, y, z): a pure permutation, no flip
    assert v.array[3, 5, 1] == arr[1, 3, 5]
    np.testing.assert_array_equal(v.array, arr.transpose(1, 2, 0))
    np.testing.assert_allclose(v.affine, np.diag([2.5, 0.5, 0.6, 1.0]))
    back = to_file_orientation(v.array, v)
    assert back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_thick_axis_middle(tmp_path):
    arr = _arange((6, 3, 5))
    v = load_volume(write_nifti(tmp_path / "t1.nii", arr, (0.5, 4.0, 0.6)))
    assert v.axes == (0, 2, 1) and v.array.shape == (6, 5, 3)
    assert v.spacing == pytest.approx((0.5, 0.6, 4.0))
    np.testing.assert_array_equal(to_file_orientation(v.array, v), arr)


def test_to_file_orientation_channels_first(tmp_path):
    arr = _arange((4, 7, 6))
    v = load_volume(write_nifti(tmp_path / "t0.nii.gz", arr, (2.5, 0.5, 0.6)))
    stack = np.stack([v.array, -v.array, 2 * v.array])  # (C, X, Y, Z) prediction
    back = to_file_orientation(stack, v)
    assert back.shape == (3, 4, 7, 6)
    np.testing.assert_array_equal(back[0], arr)
    np.testing.assert_array_equal(back[1], -arr)
    np.testing.assert_array_equal(back[2], 2 * arr)


def test_to_file_orientation_rejects_wrong_shapes(tmp_path):
    v = load_volume(write_nifti(tmp_path / "t0.nii.gz", _arange((4, 7, 6)), (2.5, 0.5, 0.6)))
    with pytest.raises(DataError, match=r"t0\.nii\.gz.*\(X, Y, Z\) or \(C, X, Y, Z\)"):
        to_file_orientation(np.zeros((7, 6)), v)
    with pytest.raises(DataError, match=r"t0\.nii\.gz.*does not match"):
        to_file_orientation(np.zeros((4, 7, 6)), v)  # file shape, not network shape


def test_isotropic_real_volume_is_not_permuted(tmp_path):
    arr = _arange((5, 4, 3))
    v = load_volume(write_nifti(tmp_path / "iso.nii.gz", arr, (3.0, 3.0, 3.0)))
    assert v.axes == (0, 1, 2)
    np.testing.assert_array_equal(v.array, arr)


def test_trailing_singleton_fourth_dim_is_squeezed(tmp_path):
    arr = _arange((5, 4, 3, 1))
    v = load_volume(write_nifti(tmp_path / "four.nii.gz", arr, (3.0, 0.8, 0.8, 1.0)))
    assert v.file_shape == (5, 4, 3) and v.array.shape == (4, 3, 5)
    np.testing.assert_array_equal(to_file_orientation(v.array, v), arr[..., 0])


def test_scaled_int_image_is_float32(tmp_path):
    p = write_nifti(tmp_path / "s.nii", _arange((4, 4, 3), np.int16), (1, 1, 2))
    patch_header_float(p, SCL_SLOPE_OFFSET, 0.5)
    patch_header_float(p, SCL_INTER_OFFSET, -10.0)
    v = load_volume(p)
    assert v.array.dtype == np.float32
    np.testing.assert_allclose(v.array, _arange((4, 4, 3)) * 0.5 - 10.0)


# ------------------------------------------------------------------------------------- labels

def test_label_is_int64(tmp_path):
    lab = (np.arange(60).reshape(5, 4, 3) % 3).astype(np.uint8)
    v = load_volume(write_nifti(tmp_path / "l.nii.gz", lab, (3.0, 0.8, 0.8)), is_label=True)
    assert v.array.dtype == np.int64
    np.testing.assert_array_equal(v.array, lab.transpose(1, 2, 0))


def test_float_label_with_integral_values_is_accepted(tmp_path):
    lab = (np.arange(60).reshape(5, 4, 3) % 3).astype(np.float32)
    v = load_volume(write_nifti(tmp_path / "l.nii.gz", lab), is_label=True)
    assert v.array.dtype == np.int64
    np.testing.assert_array_equal(v.array, lab.astype(np.int64))


def test_label_with_fractions_is_refused(tmp_path):
    lab = np.zeros((5, 4, 3), np.float32)
    lab[1, 1, 1] = 0.5
    p = write_nifti(tmp_path / "frac_label.nii.gz", lab)
    with pytest.raises(DataError, match=r"frac_label\.nii\.gz.*1 non-integer.*0\.5"):
        load_volume(p, is_label=True)
    assert load_volume(p).array[1, 1, 1] == 0.5  # as an image it is fine


def test_label_with_nan_is_refused(tmp_path):
    lab = np.zeros((5, 4, 3), np.float32)
    lab[0, 0, 0] = np.nan
    with pytest.raises(DataError, match=r"nan_label\.nii\.gz.*NaN or Inf.*integers"):
        load_volume(write_nifti(tmp_path / "nan_label.nii.gz", lab), is_label=True)


# ------------------------------------------------------------------------------------- errors

def test_error_is_typed(tmp_path):
    with pytest.raises(AhnetError):
        load_volume(tmp_path / "nothing.nii.gz")
    assert issubclass(DataError, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothing\.nii\.gz: file not found"):
        load_volume(tmp_path / "nothing.nii.gz")


def test_directory_is_not_a_file(tmp_path):
    (tmp_path / "dir.nii.gz").mkdir()
    with pytest.raises(DataError, match=r"dir\.nii\.gz: not a regular file"):
        load_volume(tmp_path / "dir.nii.gz")


def test_empty_file(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.nii\.gz: empty file"):
        load_volume(tmp_path / "empty.nii.gz")


@pytest.mark.parametrize("name, content", [
    ("text.nii", b"this is not a nifti file " * 20),
    ("text.nii.gz", b"this is not gzip at all " * 20),
    ("badgz.nii.gz", gzip.compress(b"gzip, but not NIfTI inside " * 20)),
])
def test_not_a_nifti(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=re.escape(name) + r": not a readable NIfTI"):
        load_volume(tmp_path / name)


def test_other_format_is_not_nifti(tmp_path):
    p = tmp_path / "vol.mgz"
    nib.save(nib.MGHImage(_arange((4, 4, 4)), np.eye(4)), str(p))
    with pytest.raises(DataError, match=r"vol\.mgz: not a NIfTI file.*MGHImage"):
        load_volume(p)


def test_truncated_gzip_data(tmp_path):
    """The header decodes but the data stream ends early: nibabel fails only when reading data."""
    p = write_nifti(tmp_path / "trunc.nii.gz", np.random.default_rng(0).normal(size=(30, 30, 20)))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) - 500])
    with pytest.raises(DataError, match=r"trunc\.nii\.gz: data cannot be read.*truncated or corrupt"):
        load_volume(p)


def test_truncated_uncompressed_data(tmp_path):
    p = write_nifti(tmp_path / "short.nii", _arange((5, 4, 3)))
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"short\.nii: data cannot be read"):
        load_volume(p)


def test_corrupt_gzip_stream(tmp_path):
    p = write_nifti(tmp_path / "corrupt.nii.gz", np.random.default_rng(1).normal(size=(30, 30, 20)))
    raw = bytearray(p.read_bytes())
    raw[40:60] = b"\x00" * 20
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"corrupt\.nii\.gz: (not a readable NIfTI|data cannot be read)"):
        load_volume(p)


def test_2d_image(tmp_path):
    p = write_nifti(tmp_path / "flat.nii.gz", _arange((5, 4)), (1.0, 1.0))
    with pytest.raises(DataError, match=r"flat\.nii\.gz: volume must be 3D, got 2D"):
        load_volume(p)


def test_4d_image(tmp_path):
    p = write_nifti(tmp_path / "series.nii.gz", _arange((5, 4, 3, 2)), (1.0, 1.0, 1.0, 1.0))
    with pytest.raises(DataError, match=r"series\.nii\.gz: volume must be 3D, got 4D shape \(5, 4, 3, 2\)"):
        load_volume(p)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_image(tmp_path, bad):
    arr = _arange((5, 4, 3))
    arr[2, 2, 2] = bad
    arr[0, 0, 0] = bad
    with pytest.raises(DataError, match=r"nf\.nii\.gz: image has 2 NaN or Inf voxels"):
        load_volume(write_nifti(tmp_path / "nf.nii.gz", arr))


@pytest.mark.parametrize("value", [0.0, -0.8, float("nan"), float("inf")])
def test_bad_spacing(tmp_path, value):
    """nibabel itself silently turns a zero voxel size into 1 and a negative one into its absolute
    value; ahnet must still refuse the file."""
    p = write_nifti(tmp_path / "sp.nii.gz", _arange((5, 4, 3)), (0.8, 0.8, 3.0))
    patch_header_float(p, PIXDIM_OFFSET + 4 * 2, value)  # pixdim[2] = voxel size along axis 1
    with pytest.raises(DataError, match=r"sp\.nii\.gz: voxel size \(header pixdim\) must be positive and finite"):
        load_volume(p)


def test_scaling_overflow(tmp_path):
    p = write_nifti(tmp_path / "overflow.nii", _arange((5, 4, 3), np.int16), (1, 1, 1))
    patch_header_float(p, SCL_SLOPE_OFFSET, 3e38)
    with pytest.raises(DataError, match=r"overflow\.nii: data cannot be decoded: scaling .* overflows"):
        load_volume(p)


def test_scaling_overflow_in_label(tmp_path):
    p = write_nifti(tmp_path / "overflow_label.nii", _arange((5, 4, 3), np.int16), (1, 1, 1))
    patch_header_float(p, SCL_SLOPE_OFFSET, 3e38)
    with pytest.raises(DataError, match=r"overflow_label\.nii: label values exceed the int64 range"):
        load_volume(p, is_label=True)


def test_complex_data_refused(tmp_path):
    p = write_nifti(tmp_path / "cplx.nii.gz", _arange((4, 4, 3)).astype(np.complex64))
    with pytest.raises(DataError, match=r"cplx\.nii\.gz: unsupported data type complex64"):
        load_volume(p)


# ---------------------------------------------------------------------------------------- boxes

def test_boxes_to_network():
    boxes = [[1, 2, 3, 4, 5, 6], (0, 0, 0, 0, 0, 0)]
    assert boxes_to_network(boxes, (0, 1, 2)) == [(1, 2, 3, 4, 5, 6), (0, 0, 0, 0, 0, 0)]
    # thick axis was file axis 0: network (X, Y, Z) = file (1, 2, 0)
    assert boxes_to_network(boxes, (1, 2, 0)) == [(2, 3, 1, 5, 6, 4), (0, 0, 0, 0, 0, 0)]
    assert boxes_to_network(boxes, (0, 2, 1)) == [(1, 3, 2, 4, 6, 5), (0, 0, 0, 0, 0, 0)]
    assert boxes_to_network([], (1, 2, 0)) == []
    out = boxes_to_network([np.array([1, 2, 3, 4, 5, 6])], (0, 1, 2))
    assert all(type(v) is int for v in out[0])


def test_boxes_follow_the_volume(tmp_path):
    """A box drawn on the file array marks the same voxels on the network array."""
    arr = np.zeros((4, 9, 8), np.float32)  # thick file axis 0
    box = [1, 2, 3, 2, 6, 5]
    arr[box[0]:box[3] + 1, box[1]:box[4] + 1, box[2]:box[5] + 1] = 1
    v = load_volume(write_nifti(tmp_path / "b.nii.gz", arr, (2.0, 0.3, 0.3)))
    (nb,) = boxes_to_network([box], v.axes)
    net = np.zeros_like(v.array)
    net[nb[0]:nb[3] + 1, nb[1]:nb[4] + 1, nb[2]:nb[5] + 1] = 1
    np.testing.assert_array_equal(net, v.array)


@pytest.mark.parametrize("box, msg", [
    ([1, 2, 3, 4, 5], "6 integers"),
    ([1, 2, 3, 4, 5, 6, 7], "6 integers"),
    ([1, 2, 3, 4, 5.5, 6], "integers only"),
    ([1, 2, 3, 4, 5.0, 6], "integers only"),
    ([1, 2, 3, 4, True, 6], "integers only"),
    ([1, -2, 3, 4, 5, 6], "negative"),
    ([4, 2, 3, 1, 5, 6], "inverted on x"),
    ([1, 2, 7, 4, 5, 6], "inverted on z"),
    ("123456", "6 integers"),
])
def test_boxes_to_network_rejects_bad_boxes(box, msg):
    with pytest.raises(DataError, match=msg):
        boxes_to_network([box], (0, 1, 2))


@pytest.mark.parametrize("axes", [(0, 1), (0, 0, 1), (1, 2, 3)])
def test_boxes_to_network_rejects_bad_axes(axes):
    with pytest.raises(DataError, match="permutation"):
        boxes_to_network([[0, 0, 0, 1, 1, 1]], axes)


# ------------------------------------------------------------------------------- real volumes

@pytest.fixture(scope="module")
def chaos():
    p = REAL / "chaos_ct" / "chaos_ct_sample_image.nii.gz"
    if not p.exists():
        pytest.skip(f"real data not present: {p}")
    return load_volume(p)


def test_real_chaos_ct(chaos):
    assert chaos.file_shape == (512, 512, 78)
    assert chaos.array.shape == (512, 512, 78)
    assert chaos.axes == (0, 1, 2)
    assert chaos.array.dtype == np.float32
    assert chaos.spacing == pytest.approx((0.7266, 0.7266, 2.0), abs=1e-4)
    assert thick_axis(chaos.spacing) == 2
    # int16 HU: air about -1000 and bone well above 0, both present in an abdominal CT
    assert chaos.array.min() < -900 and chaos.array.max() > 500
    assert chaos.affine[:3, 3] == pytest.approx((185.0, 98.0, 1536.5))  # the file's own affine


def test_real_chaos_label():
    p = REAL / "chaos_ct" / "chaos_ct_sample_liver_gt.nii.gz"
    if not p.exists():
        pytest.skip(f"real data not present: {p}")
    v = load_volume(p, is_label=True)
    assert v.array.dtype == np.int64 and v.array.shape == (512, 512, 78)
    assert int((v.array == 1).sum()) == 1_342_595  # the liver voxel count its README gives


def test_real_totalseg_isotropic():
    p = REAL / "totalseg_example" / "example_ct_sm.nii.gz"
    if not p.exists():
        pytest.skip(f"real data not present: {p}")
    v = load_volume(p)
    assert thick_axis(v.spacing) == 2
    assert v.axes == (0, 1, 2)
    assert v.array.shape == (122, 101, 30) and v.file_shape == (122, 101, 30)
    assert v.array.dtype == np.float32
    assert v.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert np.isfinite(v.array).all()
