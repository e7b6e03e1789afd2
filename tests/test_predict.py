"""Whole-volume prediction: sliding windows, outputs in the input's own geometry, detection CSV."""

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ahnet import ConfigError, DataError
from ahnet.cli import main
from ahnet.inference import Predictor, find_cases, predict
from ahnet.inference.predictor import SliceStacks, class_argmax, keep_largest_component
from ahnet.models import MCGCN
from ahnet.training import TrainConfig, Trainer

from datasets import write_nifti
from test_training import make_learnable_dataset

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def train_tiny(data: Path, out: Path, model: str = "ahnet") -> Path:
    patch = (32, 32, 3) if model in ("mc-gcn", "2d-unet") else (32, 32, 8)
    Trainer(TrainConfig(data=str(data), out=str(out), model=model, backbone="resnet18", patch=patch, batch_size=2,
                        epochs=1, iters_per_epoch=2, workers=0, val_patches=1, device="cpu"), progress=False).fit()
    return out / "checkpoint_latest.pt"


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    data = make_learnable_dataset(root / "data")
    return data, train_tiny(data, root / "run")


@pytest.fixture(scope="module")
def det_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    data = make_learnable_dataset(root / "data", detection=True)
    return data, train_tiny(data, root / "run", model="3d-unet")


def test_segmentation_outputs_keep_shape_affine_and_header(seg_run, tmp_path):
    data, checkpoint = seg_run
    assert main(["predict", "-m", str(checkpoint), "-i", str(data / "imagesTr"), "-o", str(tmp_path),
                 "--device", "cpu", "--save-probabilities"]) == 0
    for image in sorted((data / "imagesTr").glob("*.nii.gz")):
        case = image.name.replace("_0000.nii.gz", "")
        src, out = nib.load(image), nib.load(tmp_path / f"{case}.nii.gz")
        assert out.shape == src.shape and np.allclose(out.affine, src.affine)
        assert out.get_data_dtype() == np.uint8 and set(np.unique(out.get_fdata())) <= {0, 1, 2}
        probs = nib.load(tmp_path / f"{case}_probabilities.nii.gz").get_fdata()
        assert probs.shape == (*src.shape, 3) and np.allclose(probs.sum(-1), 1, atol=1e-4)
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temporary files


def test_thick_axis_first_gives_the_transposed_prediction(seg_run, tmp_path):
    """Orientation is undone exactly: the same volume stored with its slices along axis 0 gets the
    same prediction, transposed the same way."""
    data, checkpoint = seg_run
    array = nib.load(data / "imagesTr" / "case0_0000.nii.gz").get_fdata().astype(np.float32)
    write_nifti(tmp_path / "in" / "last.nii.gz", array, (0.8, 0.8, 3.0))
    write_nifti(tmp_path / "in" / "first.nii.gz", array.transpose(2, 0, 1), (3.0, 0.8, 0.8))
    predict(checkpoint, tmp_path / "in", tmp_path / "out", device="cpu", progress=False, save_probabilities=True)
    last = nib.load(tmp_path / "out" / "last_probabilities.nii.gz").get_fdata()
    first = nib.load(tmp_path / "out" / "first_probabilities.nii.gz").get_fdata()
    assert first.shape == (10, 40, 36, 3)
    assert np.allclose(first, last.transpose(2, 0, 1, 3), atol=1e-5)


@pytest.mark.skipif(not (REAL / "totalseg_example").is_dir(), reason="shared real data not present")
def test_real_ct_with_flipped_axes_keeps_its_affine(seg_run, tmp_path):
    _, checkpoint = seg_run
    src = REAL / "totalseg_example" / "example_ct_sm.nii.gz"
    predict(checkpoint, src, tmp_path, device="cpu", progress=False)
    ref, out = nib.load(src), nib.load(tmp_path / "example_ct_sm.nii.gz")
    assert out.shape == ref.shape == (122, 101, 30)
    assert np.allclose(out.affine, ref.affine)
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(ref.affine)


def test_mirroring_and_overlap_options(seg_run, tmp_path):
    data, checkpoint = seg_run
    image = data / "imagesTr" / "case1_0000.nii.gz"
    plain = Predictor(checkpoint, device="cpu").predict_case("c", [image]).output
    mirrored = Predictor(checkpoint, device="cpu", mirror=True, overlap=0.25).predict_case("c", [image]).output
    assert plain.shape == mirrored.shape == (3, 40, 36, 10)
    assert not np.allclose(plain, mirrored)


def test_largest_component_keeps_one_foreground_island_with_what_lies_in_it(seg_run, det_run):
    labels = np.zeros((12, 12, 6), np.uint8)
    labels[1:7, 1:7, 1:5] = 1
    labels[3:5, 3:5, 2:4] = 2            # a lesion inside the organ: part of the same component
    labels[9:11, 9:11, 1:3] = 1          # an island elsewhere
    labels[10, 0, 5] = 2                 # a lesion alone
    kept = keep_largest_component(labels)
    assert kept.dtype == labels.dtype and kept[9:11, 9:11].sum() == 0 and kept[10, 0, 5] == 0
    np.testing.assert_array_equal(kept[:8, :8], labels[:8, :8])
    assert keep_largest_component(np.zeros_like(labels)).sum() == 0
    data, checkpoint = seg_run
    image = data / "imagesTr" / "case1_0000.nii.gz"
    plain = Predictor(checkpoint, device="cpu").predict_case("c", [image])
    one = Predictor(checkpoint, device="cpu", largest_component=True).predict_case("c", [image])
    np.testing.assert_array_equal(one.output, plain.output)  # probabilities untouched
    np.testing.assert_array_equal(one.labels, keep_largest_component(plain.labels))
    with pytest.raises(ConfigError, match="segmentation"):
        Predictor(det_run[1], device="cpu", largest_component=True)


def test_2d_networks_run_on_every_slice_stack():
    model = MCGCN(out_channels=2, backbone="resnet18").eval()
    volume = torch.randn(1, 1, 32, 32, 5)
    with torch.no_grad():
        out = SliceStacks(model, slices_per_batch=2)(volume)
        padded = torch.nn.functional.pad(volume, (1, 1))[0, 0]
        for z in range(5):
            expected = model(padded[..., z:z + 3].permute(2, 0, 1)[None])
            assert torch.allclose(out[..., z], expected, atol=1e-5)


def test_2d_checkpoint_predicts_volumes(tmp_path):
    data = make_learnable_dataset(tmp_path / "data")
    checkpoint = train_tiny(data, tmp_path / "run", model="mc-gcn")
    predict(checkpoint, data / "imagesTr" / "case2_0000.nii.gz", tmp_path / "out", device="cpu", progress=False)
    assert nib.load(tmp_path / "out" / "case2.nii.gz").shape == (40, 36, 10)


def test_detection_writes_heatmaps_and_one_csv(det_run, tmp_path):
    data, checkpoint = det_run
    assert main(["predict", "-m", str(checkpoint), "-i", str(data / "imagesTr"), "-o", str(tmp_path),
                 "--device", "cpu", "--threshold=-1e9", "--top-k", "3", "--nms-radius-mm", "2"]) == 0
    heatmap = nib.load(tmp_path / "case0_heatmap.nii.gz")
    assert heatmap.shape == (40, 36, 10) and heatmap.get_data_dtype() == np.float32
    rows = list(csv.DictReader(open(tmp_path / "detections.csv")))
    assert {"case", "x", "y", "z", "score", "x_mm", "y_mm", "z_mm"} <= set(rows[0])
    assert {r["case"] for r in rows} == {f"case{i}" for i in range(4)}
    values = heatmap.get_fdata()
    for r in rows:
        if r["case"] == "case0":
            x, y, z = int(r["x"]), int(r["y"]), int(r["z"])
            assert values[x, y, z] == pytest.approx(float(r["score"]), abs=1e-5)
            assert float(r["x_mm"]) == pytest.approx(0.8 * x) and float(r["z_mm"]) == pytest.approx(3.0 * z)


def test_case_discovery_and_errors(tmp_path):
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b.nii.gz"):
        write_nifti(tmp_path / name, np.zeros((4, 4, 2), np.float32))
    cases = find_cases(tmp_path)
    assert list(cases) == ["a", "b"] and len(cases["a"]) == 2
    (tmp_path / "a_0001.nii.gz").rename(tmp_path / "a_0002.nii.gz")
    with pytest.raises(DataError, match="case a"):
        find_cases(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        find_cases(tmp_path / "absent")


def test_wrong_channel_count_is_a_clear_error(seg_run, tmp_path):
    _, checkpoint = seg_run
    for c in range(2):
        write_nifti(tmp_path / "in" / f"x_000{c}.nii.gz", np.zeros((20, 20, 6), np.float32), (1, 1, 3))
    assert main(["predict", "-m", str(checkpoint), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o")]) == 2


def test_predict_then_evaluate_from_the_cli(seg_run, det_run, tmp_path, capsys):
    import json

    data, checkpoint = seg_run
    main(["predict", "-m", str(checkpoint), "-i", str(data / "imagesTr"), "-o", str(tmp_path / "seg"), "--device", "cpu"])
    assert main(["evaluate", "seg", "--pred", str(tmp_path / "seg"), "--gt", str(data / "labelsTr"),
                 "--json", str(tmp_path / "seg.json"), "--csv", str(tmp_path / "seg.csv")]) == 0
    result = json.loads((tmp_path / "seg.json").read_text())
    assert set(result) == {"dice_global", "dice_per_case", "cases", "counts", "surface", "surface_tolerance_mm"}
    assert set(result["cases"]) == {f"case{i}" for i in range(4)} and result["surface_tolerance_mm"] == 2.0
    assert set(result["dice_global"]) == {"liver", "lesion"}

    data, checkpoint = det_run
    main(["predict", "-m", str(checkpoint), "-i", str(data / "imagesTr"), "-o", str(tmp_path / "det"), "--device", "cpu",
          "--threshold=-1e9"])
    assert main(["evaluate", "det", "--pred", str(tmp_path / "det" / "detections.csv"), "--boxes",
                 str(data / "boxesTr.json"), "--json", str(tmp_path / "det.json"), "--png", str(tmp_path / "froc.png")]) == 0
    froc = json.loads((tmp_path / "det.json").read_text())
    assert froc["volumes"] == 4 and froc["lesions"] == 2 and "0.25" in froc["froc"]
    assert (tmp_path / "froc.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["evaluate", "seg", "--pred", str(tmp_path / "seg"), "--gt", str(tmp_path / "det")]) == 2
    assert "error" in capsys.readouterr().err


def test_reports_are_self_contained_pages(seg_run, det_run, tmp_path):
    data, checkpoint = seg_run
    predict(checkpoint, data / "imagesTr", tmp_path / "seg", device="cpu", progress=False)
    assert main(["report", "seg", "--images", str(data / "imagesTr"), "--pred", str(tmp_path / "seg"),
                 "--gt", str(data / "labelsTr"), "--out", str(tmp_path / "seg.html")]) == 0
    page = (tmp_path / "seg.html").read_text()
    assert "Dice global" in page and page.count("data:image/png;base64,") == 4 and "case3" in page

    data, checkpoint = det_run
    predict(checkpoint, data / "imagesTr", tmp_path / "det", device="cpu", progress=False, threshold=-1e9)
    assert main(["report", "det", "--pred", str(tmp_path / "det"), "--boxes", str(data / "boxesTr.json"),
                 "--out", str(tmp_path / "det.html")]) == 0
    page = (tmp_path / "det.html").read_text()
    assert "FROC" in page and page.count("data:image/png;base64,") == 5  # the curve + 4 cases
    _render_in_chromium(tmp_path / "det.html", tmp_path / "det.png")


def _render_in_chromium(page: Path, png: Path) -> None:
    """Where Debian's Chromium is installed, the page must render to a non-blank screenshot."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={png.parent / 'chromium-profile'}", f"--screenshot={png}",
                    "--window-size=1200,1600", page.as_uri()], check=True, capture_output=True, timeout=120)
    from matplotlib.image import imread

    pixels = imread(png)
    assert pixels.shape[0] == 1600 and pixels[..., :3].std() > 0.05  # text and pictures, not a blank page


@pytest.mark.parametrize("classes", [1, 3, 300])
def test_class_argmax_is_numpys_argmax_ties_included(classes):
    rng = np.random.default_rng(classes)
    scores = rng.integers(0, 4, size=(classes, 6, 5, 4)).astype(np.float32)  # many ties
    view = scores[:, ::-1].transpose(0, 2, 1, 3)  # a strided view, as the file orientation gives
    labels = class_argmax(view)
    assert labels.dtype == (np.uint8 if classes < 256 else np.uint16)
    assert np.array_equal(labels, view.argmax(0))
