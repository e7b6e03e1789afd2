"""Online patch sampling (§4.1-4.2): positives, 2D stacks, determinism, augmentation, real CT."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ahnet import ConfigError, DataError
from ahnet.data.dataset import CaseFiles, load_dataset
from ahnet.data.intensity import Intensity
from ahnet.data.sampling import (Augment, CaseLoader, EpochSampler, IntensityAugment, PatchDataset, Preprocessing,
                                 crop, foreground_statistics, prepare_case)

from test_training import make_learnable_dataset

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    info = load_dataset(make_learnable_dataset(tmp_path_factory.mktemp("seg")))
    prep = Preprocessing("seg", Intensity.for_modality(info.modality))
    return info, prep


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    info = load_dataset(make_learnable_dataset(tmp_path_factory.mktemp("det"), detection=True))
    return info, Preprocessing("det", Intensity.for_modality(info.modality))


def dataset(info, prep, **kw):
    args = dict(patch=(16, 16, 4), samples=200, seed=0, augment=False)
    args.update(kw)
    return PatchDataset(info.cases, CaseLoader(info, prep), **args)


def test_positive_ratio_is_respected(seg):
    def share_with_foreground(ratio):
        data = dataset(*seg, positive_ratio=ratio)
        return np.mean([(data[i]["target"] > 0).any().item() for i in range(200)])

    always, never, paper = share_with_foreground(1.0), share_with_foreground(0.0), share_with_foreground(0.7)
    assert always == 1.0
    # 70 % centred on foreground; the other 30 % are random and touch it as often as ratio 0 does.
    assert paper == pytest.approx(0.7 + 0.3 * never, abs=0.07)


def test_patches_are_deterministic_and_differ_by_rank_and_index(seg):
    a, b = dataset(*seg), dataset(*seg)
    assert torch.equal(a[5]["image"], b[5]["image"])
    assert not torch.equal(a[5]["image"], a[6]["image"])
    assert not torch.equal(a[5]["image"], dataset(*seg, rank=1)[5]["image"])


def test_epoch_sampler_gives_new_indices_each_epoch():
    sampler = EpochSampler(4)
    assert list(sampler) == [0, 1, 2, 3]
    sampler.set_epoch(2)
    assert list(sampler) == [8, 9, 10, 11] and len(sampler) == 4


def test_2d_stacks_are_three_neighbouring_slices_with_the_centre_target(seg):
    info, prep = seg
    data = dataset(info, prep, mode="2d", patch=(16, 16, 1))
    item = data[3]
    assert item["image"].shape == (3, 16, 16) and item["target"].shape == (16, 16)
    # Find, by brute force, the slice triple and position it came from in the prepared volumes.
    found = False
    for case, z in ((data.case(c), z) for c in info.cases for z in range(10)):
        stack = crop(case.image[0], (0, 0, z - 1), (case.image.shape[1], case.image.shape[2], 3))
        for x in range(case.image.shape[1] - 15):
            for y in range(case.image.shape[2] - 15):
                if np.array_equal(stack[x:x + 16, y:y + 16].transpose(2, 0, 1), item["image"].numpy()):
                    assert np.array_equal(case.target[x:x + 16, y:y + 16, z], item["target"].numpy())
                    found = True
    assert found


def test_detection_targets_are_heatmaps(det):
    item = dataset(*det, positive_ratio=1.0)[0]
    assert item["target"].dtype == torch.float32 and item["target"].shape == (1, 16, 16, 4)
    peaks = [dataset(*det, positive_ratio=1.0)[i]["target"].max().item() for i in range(20)]
    assert max(peaks) > 0.85  # peak ~1 at lesion centres (Eq. 5, peak-normalised; even box: half-voxel off)


def test_augmentation_is_identical_on_image_and_label_and_stays_in_plane():
    rng = np.random.default_rng(0)
    label = np.zeros((1, 24, 24, 6), np.int64)
    label[0, 6:14, 8:18, 2:4] = 1
    image = label.astype(np.float32) * 10
    for seed in range(5):
        aug_image, aug_label = Augment()(image, label, True, np.random.default_rng(seed))
        assert aug_label.dtype == np.int64 and set(np.unique(aug_label)) <= {0, 1}
        inside = aug_image[0][aug_label[0] == 1]
        assert inside.size and inside.mean() > 8  # the label still covers the bright object
        # Rotation is in the xy plane: slices 0, 1, 4, 5 stay empty (scaling z by <= 20 % is centred).
        assert aug_label[0][..., [0, 5]].sum() == 0


def test_intensity_augmentation_changes_images_only_and_in_foreground_units(seg):
    info, prep = seg
    plain = dataset(info, prep, augment=True)
    changed = dataset(info, prep, augment=True, intensity=IntensityAugment())
    differ = 0
    for i in range(20):  # the same patches (geometry, targets), other intensities
        a, b = plain[i], changed[i]
        assert torch.equal(a["target"], b["target"])
        differ += not torch.equal(a["image"], b["image"])
    assert differ >= 10
    prepared = CaseLoader(info, prep)(info.cases[0])
    (mean, std), = foreground_statistics(prepared)
    voxels = np.concatenate(prepared.foreground)
    values = prepared.image[0][tuple(voxels.T)]
    assert mean == pytest.approx(values.mean(), abs=1e-4) and std == pytest.approx(values.std(), rel=1e-3)

    shift = IntensityAugment(shift=1.0, contrast=(1.0, 1.0), noise=0.0, p=1.0, p_remap=0.0)
    image, stats = np.full((1, 4, 4, 2), 5.0, np.float32), np.array([[5.0, 2.0]])
    offsets = [float(shift(image, stats, np.random.default_rng(k))[0, 0, 0, 0]) - 5.0 for k in range(200)]
    assert max(offsets) <= 2.0 and min(offsets) >= -2.0 and max(offsets) > 1.5 and min(offsets) < -1.5  # +-1 std
    assert image[0, 0, 0, 0] == 5.0  # the case's array is not changed in place
    contrast = IntensityAugment(shift=0.0, contrast=(0.5, 0.5), noise=0.0, p=1.0, p_remap=0.0)
    out = contrast(np.array([[[[1.0], [9.0]]]], np.float32), stats, np.random.default_rng(0))
    np.testing.assert_allclose(out.ravel(), [3.0, 7.0])  # halved about the foreground mean


def test_intensity_augmentation_stays_within_the_normalisations_range():
    # A liver 3 deviations darker (another contrast phase) is clipped at the window's end, as the
    # window clips the real scan; a z-score has no ends.
    window = Intensity("clip-zscore", (-10.0, 230.0), mean=110.0, std=40.0)
    assert window.value_range == (-3.0, 3.0)
    assert Intensity("ct").value_range == (0.0, 1.0) and Intensity("zscore").value_range == (-np.inf, np.inf)
    shift = IntensityAugment(shift=6.0, contrast=(1.0, 1.0), noise=0.0, p=1.0, p_remap=0.0,
                             value_ranges=[window.value_range])
    image, stats = np.full((1, 4, 4, 2), 2.0, np.float32), np.array([[2.0, 1.0]])
    outs = [float(shift(image, stats, np.random.default_rng(k))[0, 0, 0, 0]) for k in range(100)]
    assert min(outs) == -3.0 and max(outs) == 3.0 and any(-3 < v < 3 for v in outs)


def test_intensity_remap_is_monotone_and_changes_tissue_contrast():
    """Another enhancement phase: a monotone curve between the patch's extremes, which moves two tissues
    by different amounts (a shift moves both alike)."""
    remap = IntensityAugment(p=0.0, p_remap=1.0)
    values = np.linspace(-3, 3, 61, dtype=np.float32).reshape(1, 61, 1, 1)
    stats = np.array([[0.0, 1.0]])
    gaps = []
    for k in range(50):
        out = remap(values, stats, np.random.default_rng(k)).ravel()
        assert np.all(np.diff(out) >= -1e-6) and out[0] == pytest.approx(-3) and out[-1] == pytest.approx(3)
        gaps.append(out[40] - out[30])  # two tissues 1 deviation apart
    assert max(gaps) > 1.4 and min(gaps) < 0.6
    with pytest.raises(ConfigError, match="remap_points"):
        IntensityAugment(remap_points=(2, 5))


def test_volume_much_smaller_than_patch_is_a_clear_error(seg):
    data = dataset(*seg, patch=(16, 16, 64))
    with pytest.raises(DataError, match="axis Z has 10 voxels"):
        data[0]


@pytest.mark.skipif(not (REAL / "ircad_patient17").is_dir(), reason="shared real data not present")
def test_real_ct_ircad17_liver_and_tumour_patches():
    case = CaseFiles("ircad17", [REAL / "ircad_patient17" / "ircad17_ct_256.nii.gz"],
                     REAL / "ircad_patient17" / "ircad17_liver_tumor_label_256.nii.gz", None)
    prep = Preprocessing("seg", Intensity.for_modality("CT"))
    prepared = prepare_case(case, None, prep)
    assert prepared.image.shape == (1, 256, 256, 119) and prepared.spacing[2] == pytest.approx(1.6)
    assert 0.0 <= prepared.image.min() and prepared.image.max() <= 1.0  # HU window [-125, 225] scaled
    assert len(prepared.foreground) == 2  # liver and tumour
    data = PatchDataset([case], lambda c: prepared, (64, 64, 16), samples=20, positive_ratio=1.0, augment=True)
    classes = set()
    for i in range(20):
        item = data[i]
        assert item["image"].shape == (1, 64, 64, 16)
        classes |= set(np.unique(item["target"].numpy()).tolist())
    assert classes == {0, 1, 2}


@pytest.mark.skipif(not (REAL / "chaos_ct").is_dir(), reason="shared real data not present")
def test_real_ct_chaos_liver_with_inplane_resampling():
    case = CaseFiles("chaos", [REAL / "chaos_ct" / "chaos_ct_sample_image.nii.gz"],
                     REAL / "chaos_ct" / "chaos_ct_sample_liver_gt.nii.gz", None)
    prep = Preprocessing("seg", Intensity.for_modality("CT"), inplane_spacing=1.4532)
    prepared = prepare_case(case, None, prep)
    assert prepared.image.shape == (1, 256, 256, 78)
    assert prepared.spacing == pytest.approx((1.4532, 1.4532, 2.0))
    # Nearest-neighbour label resampling keeps the liver volume within 1 %.
    liver_ml = (prepared.target == 1).sum() * 1.4532 ** 2 * 2.0 / 1000
    assert liver_ml == pytest.approx(1_342_595 * 0.7266 ** 2 * 2.0 / 1000, rel=0.01)
