"""Preprocess once, plan, train with one command (issue 13): the store, the plan and ``ahnet train``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ahnet.cli import main
from ahnet.data.dataset import load_dataset
from ahnet.data.preprocessing import PreparedCase
from ahnet.data.sampling import PatchDataset
from ahnet.data.store import PreprocessedStore, fingerprint_dataset, preprocess_dataset, settings_key
from ahnet.errors import ConfigError, DataError
from ahnet.planning import make_plan, parse_duration, plan_preprocessing, read_plan
from ahnet.training import Trainer

from datasets import write_nifti
from test_training import make_learnable_dataset, tiny

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def seg(tmp_path):
    return make_learnable_dataset(tmp_path / "data", cases=4)


def _plan(data, tmp_path, **kw):
    info = load_dataset(data)
    fingerprint = fingerprint_dataset(info, tmp_path / "fingerprint.json", workers=0, progress=False)
    return info, make_plan(fingerprint, **kw)


def test_durations():
    assert parse_duration("30m") == 1800 and parse_duration("12h") == 43200
    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90 and parse_duration(45) == 45
    for bad in ("", "soon", "-5m", "0s"):
        with pytest.raises(ConfigError, match="time budget"):
            parse_duration(bad)


def test_plan_from_the_fingerprint(seg, tmp_path):
    info, plan = _plan(seg, tmp_path)
    assert plan["task"] == "seg" and plan["spacing"]["inplane"] == pytest.approx(0.8)
    assert plan["spacing"]["z"] is None  # every case has 3 mm slices: each keeps its own
    norm = plan["normalisation"][0]
    assert norm["scheme"] == "ct"  # nnU-Net's CT scheme: foreground percentiles and z-score
    # the foreground of these cases: organ at ~100 HU, lesion at ~30 HU, noise sd 15
    assert -30 < norm["clip"][0] < 30 and 100 < norm["clip"][1] < 160 and 30 < norm["mean"] < 100
    assert plan["ahnet"]["patch"] == [32, 32, 8] and plan["mcgcn"]["patch"] == [32, 32]
    assert plan["validation"]["fraction"] == 0.2
    assert plan["dice_loss"] is True and plan["intensity_augmentation"] is True  # segmentation: Dice + CE
    # each case's foreground is one organ with its lesion inside: predictions keep their largest component
    assert plan["postprocessing"] == {"largest_component": True}
    prep = plan_preprocessing(plan)
    assert prep.intensity[0].mode == "clip-zscore" and prep.inplane_spacing == pytest.approx(0.8)

    _, window = _plan(seg, tmp_path, ct_scheme="liver-window")
    assert window["normalisation"][0] == {"channel": "CT", "scheme": "liver-window", "clip": [-125.0, 225.0]}


def test_largest_component_only_where_every_case_is_one_object(seg, tmp_path):
    info = load_dataset(seg)
    fingerprint = fingerprint_dataset(info, tmp_path / "fingerprint.json", workers=0, progress=False)
    assert all(c["foreground_largest_share"] == 1.0 for c in fingerprint["cases"])
    fingerprint["cases"][1]["foreground_largest_share"] = 0.6  # e.g. two organs, or lesions scattered
    assert make_plan(fingerprint)["postprocessing"] == {"largest_component": False}
    del fingerprint["cases"][1]["foreground_largest_share"]  # unknown
    assert make_plan(fingerprint)["postprocessing"] == {"largest_component": False}
    # a cached fingerprint written before the field is computed again, not trusted
    old = json.loads((tmp_path / "fingerprint.json").read_text())
    for case in old["cases"]:
        del case["foreground_largest_share"]
    (tmp_path / "fingerprint.json").write_text(json.dumps(old))
    again = fingerprint_dataset(info, tmp_path / "fingerprint.json", workers=0, progress=False)
    assert all(c["foreground_largest_share"] == 1.0 for c in again["cases"])


def test_time_budget_sets_the_iterations(seg, tmp_path):
    steps = {"mcgcn": 0.5, "ahnet": 1.0}
    _, short = _plan(seg, tmp_path, time_budget_s=600, step_times=steps)
    _, long = _plan(seg, tmp_path, time_budget_s=6000, step_times=steps)
    total = lambda p: p["ahnet"]["stage1_epochs"] + p["ahnet"]["epochs"]  # noqa: E731
    assert total(long) == pytest.approx(10 * total(short), rel=0.15)
    # 85 % of 600 s, 65 % of it for AH-Net at 1 s a step, 50 steps an epoch
    assert total(short) == round(600 * 0.85 * 0.65 / 1.0 / 50)
    assert long["measured_step_s"] == steps
    _, folds = _plan(seg, tmp_path, time_budget_s=6000, step_times=steps, folds=2)
    assert folds["folds"] == 2 and total(folds) == pytest.approx(total(long) / 2, rel=0.15)  # the folds share it
    with pytest.raises(ConfigError, match="--folds 5"):
        _plan(seg, tmp_path, folds=5)  # 4 cases


def test_folds_validate_every_case_exactly_once(seg):
    from ahnet.training.trainer import split_cases

    cases = load_dataset(seg).cases
    held = [split_cases(cases, 0.2, seed=3, folds=3, fold=k) for k in range(3)]
    assert sorted(c.name for _, val in held for c in val) == sorted(c.name for c in cases)
    for train, val in held:
        assert val and not {c.name for c in train} & {c.name for c in val} and len(train) + len(val) == 4
    assert split_cases(cases, 0.5, seed=3) == split_cases(cases, 0.5, seed=3, folds=1, fold=0)
    with pytest.raises(ConfigError, match="5 folds need at least 5 cases"):
        split_cases(cases, 0.2, seed=0, folds=5, fold=0)


def test_mixed_slice_spacings_resample_z_and_other_modalities_zscore(tmp_path):
    root = tmp_path / "mr"
    rng = np.random.default_rng(0)
    for i, sz in enumerate((1.0, 2.5, 5.0)):
        label = np.zeros((24, 24, 12), np.uint8)
        label[8:16, 8:16, 3:9] = 1
        write_nifti(root / "imagesTr" / f"c{i}_0000.nii.gz", rng.normal(0, 1, (24, 24, 12)), (1.0, 1.0, sz))
        write_nifti(root / "labelsTr" / f"c{i}.nii.gz", label, (1.0, 1.0, sz))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2"}, "labels": {"background": 0, "a": 1},
                                                   "numTraining": 3, "file_ending": ".nii.gz"}))
    _, plan = _plan(root, tmp_path)
    assert plan["spacing"]["z"] == pytest.approx(2.5)
    assert plan["normalisation"] == [{"channel": "T2", "scheme": "zscore"}]
    assert plan["validation"]["fraction"] == 0.0  # 3 cases: every one is needed for training


def test_store_prepares_once_and_notices_changed_files_and_settings(seg, tmp_path):
    info, plan = _plan(seg, tmp_path)
    prep = plan_preprocessing(plan)
    report = preprocess_dataset(info, prep, tmp_path / "store", workers=2, progress=False)
    assert sorted(report.prepared) == [c.name for c in info.cases] and report.kept == []
    again = preprocess_dataset(info, prep, tmp_path / "store", workers=0, progress=False)
    assert again.prepared == [] and len(again.kept) == 4

    store = PreprocessedStore(tmp_path / "store")
    case = store.load(info.cases[0])
    assert isinstance(case.image, np.memmap) and case.image.shape == (1, 40, 36, 10)
    assert case.target.dtype == np.uint8 and set(np.unique(case.target)) == {0, 1, 2}
    # the stored image is exactly what prediction computes from the files
    from ahnet.data.volume import load_volume

    np.testing.assert_array_equal(case.image, prep.image([load_volume(info.cases[0].images[0])]))

    path = info.cases[1].images[0]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a replaced source file
    with pytest.raises(DataError, match="case1.*run `ahnet preprocess` again"):
        store.check(info.cases, prep)
    redo = preprocess_dataset(info, prep, tmp_path / "store", workers=0, progress=False)
    assert redo.prepared == ["case1"]

    other = type(prep)(prep.task, prep.intensity, 1.6)  # another spacing: not current for these cases
    assert settings_key(other) != settings_key(prep)
    assert not any(store.is_current(c, settings_key(other)) for c in info.cases)


def test_a_kill_in_the_middle_of_a_case_leaves_no_case_that_can_be_read(seg, tmp_path, monkeypatch):
    info, plan = _plan(seg, tmp_path)
    prep = plan_preprocessing(plan)
    preprocess_dataset(info, prep, tmp_path / "store", workers=0, progress=False)
    import ahnet.data.store as store_module

    calls = {"n": 0}
    real = store_module.atomic_write

    def dies_after_the_image(path, write, suffix=".tmp"):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed between the image and the target
        return real(path, write, suffix)

    path = info.cases[2].images[0]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    monkeypatch.setattr(store_module, "atomic_write", dies_after_the_image)
    with pytest.raises(KeyboardInterrupt):
        preprocess_dataset(info, prep, tmp_path / "store", workers=0, progress=False)
    monkeypatch.undo()
    store = PreprocessedStore(tmp_path / "store")
    assert store.record(info.cases[2].name) is None  # removed before the arrays were rewritten
    with pytest.raises(DataError, match="not preprocessed"):
        store.load(info.cases[2])
    with pytest.raises(DataError, match="case2"):
        Trainer(tiny(seg, tmp_path / "run", preprocessed=str(tmp_path / "store")), progress=False)
    assert preprocess_dataset(info, prep, tmp_path / "store", workers=0, progress=False).prepared == ["case2"]
    assert not [p for p in (tmp_path / "store" / "cases").iterdir() if p.name.startswith(".")]


def test_every_lesion_gets_its_share_of_positive_patches(tmp_path):
    """A large and a small lesion of one class: drawn per lesion, the small one is centred as often."""
    root = tmp_path / "two"
    label = np.zeros((64, 64, 12), np.uint8)
    label[4:30, 4:30, 2:10] = 1          # large: 5408 voxels
    label[48:51, 48:51, 5:7] = 1         # small: 18 voxels
    write_nifti(root / "imagesTr" / "a_0000.nii.gz", np.random.default_rng(0).normal(0, 1, label.shape), (1, 1, 3))
    write_nifti(root / "labelsTr" / "a.nii.gz", label, (1, 1, 3))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MR"}, "labels": {"background": 0, "l": 1},
                                                   "numTraining": 1, "file_ending": ".nii.gz"}))
    info, plan = _plan(root, tmp_path)
    preprocess_dataset(info, plan_preprocessing(plan), tmp_path / "store", workers=0, progress=False)
    case = PreprocessedStore(tmp_path / "store").load(info.cases[0])
    assert list(case.components[0]) == [0, 5408, 5426]
    data = PatchDataset(info.cases, lambda c: case, (16, 16, 4), samples=200, positive_ratio=1.0, augment=False)
    # a patch around the small lesion cannot reach the large one (18 voxels apart at least)
    small = sum(bool(0 < data[i]["target"].sum() < 40) for i in range(200))
    assert 70 < small < 130  # half of the patches, not 18 / 5426 of them

    whole = PreparedCase("a", case.image, case.target, case.foreground, [], case.spacing, None)
    data = PatchDataset(info.cases, lambda c: whole, (16, 16, 4), samples=200, positive_ratio=1.0, augment=False)
    assert sum(bool(0 < data[i]["target"].sum() < 40) for i in range(200)) < 10  # per class only: almost never


def test_trainer_reads_the_store(seg, tmp_path):
    info, plan = _plan(seg, tmp_path)
    preprocess_dataset(info, plan_preprocessing(plan), tmp_path / "store", workers=0, progress=False)
    run = tmp_path / "run"
    result = Trainer(tiny(seg, run, preprocessed=str(tmp_path / "store")), progress=False).fit()
    assert result["epochs"] == 2
    saved = json.loads((run / "config.json").read_text())
    assert saved["preprocessing"] == plan_preprocessing(plan).to_dict()
    with pytest.raises(ConfigError, match="drop --window"):
        tiny(seg, run, preprocessed=str(tmp_path / "store"), inplane_spacing=1.0)


def test_ahnet_plan_then_train_then_predict_the_run(seg, tmp_path, capsys):
    """The README's path: plan (edited), train with one command, predict with the run folder."""
    assert main(["plan", str(seg), "--time-budget", "2m", "--quiet"]) == 0
    plan_file = seg / "preprocessed" / "plans.json"
    plan = read_plan(plan_file)
    assert plan["time_budget_s"] == 120 and set(plan["measured_step_s"]) == {"mcgcn", "ahnet"}
    assert main(["preprocess", str(seg), "--quiet"]) == 0
    assert "preprocessed 4 case(s)" in capsys.readouterr().out
    plan["mcgcn"].update(epochs=1, iters_per_epoch=2, batch_size=2)
    plan["ahnet"].update(stage1_epochs=1, epochs=1, iters_per_epoch=2)
    plan_file.write_text(json.dumps(plan))
    run = tmp_path / "run"
    args = ["train", str(seg), "--out", str(run), "--plan", str(plan_file), "--device", "cpu", "--workers", "0",
            "--quiet"]
    assert main(args) == 0
    state = json.loads((run / "run.json").read_text())
    assert state["done"] == ["mcgcn", "transfer", "ahnet"] and (run / state["model"]).is_file()
    assert json.loads((run / "plans.json").read_text()) == plan
    assert main(args[:4] + ["--device", "cpu", "--workers", "0", "--quiet"]) == 0  # again: nothing left to do
    out = tmp_path / "pred"
    assert main(["predict", "-m", str(run), "-i", str(seg / "imagesTr"), "-o", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"case{i}.nii.gz" for i in range(4)]
    # the plan's post-processing (largest component) is applied; --no-largest-component turns it off
    assert state["postprocessing"] == {"largest_component": True}
    raw = tmp_path / "raw"
    assert main(["predict", "-m", str(run), "-i", str(seg / "imagesTr"), "-o", str(raw), "--device", "cpu",
                 "--no-largest-component"]) == 0
    import nibabel as nib
    from ahnet.inference.predictor import keep_largest_component

    for i in range(4):
        kept, plain = (np.asarray(nib.load(str(d / f"case{i}.nii.gz")).dataobj) for d in (out, raw))
        np.testing.assert_array_equal(kept, keep_largest_component(plain))
    assert main(["predict", "-m", str(tmp_path), "-i", str(seg / "imagesTr"), "-o", str(out)]) == 2
    assert "neither a finished `ahnet train` run" in capsys.readouterr().err


def test_a_run_stopped_in_a_step_continues_there(seg, tmp_path, monkeypatch):
    from ahnet import pipeline

    _, plan = _plan(seg, tmp_path)
    plan["mcgcn"].update(epochs=1, iters_per_epoch=2, batch_size=2)
    plan["ahnet"].update(stage1_epochs=1, epochs=1, iters_per_epoch=2)
    plan_file = tmp_path / "plans.json"
    plan_file.write_text(json.dumps(plan))
    import ahnet.training as training

    def crash(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(training, "transfer_checkpoint", crash)
    with pytest.raises(RuntimeError):
        pipeline.train_run(seg, tmp_path / "run", plan_file=plan_file, device="cpu", workers=0, progress=False)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["done"] == ["mcgcn"]
    monkeypatch.undo()
    mtime = (tmp_path / "run" / "mcgcn" / "checkpoint_latest.pt").stat().st_mtime_ns
    result = pipeline.train_run(seg, tmp_path / "run", device="cpu", workers=0, progress=False)
    assert result["done"] == ["mcgcn", "transfer", "ahnet"]
    assert (tmp_path / "run" / "mcgcn" / "checkpoint_latest.pt").stat().st_mtime_ns == mtime  # not trained again


def test_train_folds_then_predict_their_ensemble(seg, tmp_path):
    """--folds 2: one run per fold, each validated on its own fold; predict -m RUN averages both models."""
    from ahnet.inference.predictor import Predictor

    _, plan = _plan(seg, tmp_path)
    plan["mcgcn"].update(epochs=1, iters_per_epoch=2, batch_size=2)
    plan["ahnet"].update(stage1_epochs=1, epochs=1, iters_per_epoch=2)
    plan_file = tmp_path / "plans.json"
    plan_file.write_text(json.dumps(plan))
    run = tmp_path / "run"
    assert main(["train", str(seg), "--out", str(run), "--plan", str(plan_file), "--folds", "2", "--device", "cpu",
                 "--workers", "0", "--quiet"]) == 0
    state = json.loads((run / "run.json").read_text())
    assert state["done"] == [f"fold_{k}/{s}" for k in range(2) for s in ("mcgcn", "transfer", "ahnet")]
    assert state["models"] == [f"fold_{k}/ahnet/checkpoint_best.pt" for k in range(2)]
    vals = [json.loads((run / f"fold_{k}" / "ahnet" / "config.json").read_text()) for k in range(2)]
    assert [(v["config"]["folds"], v["config"]["fold"]) for v in vals] == [(2, 0), (2, 1)]
    assert all(v["config"]["dice_loss"] and v["config"]["intensity_augment"] for v in vals)  # from the plan
    assert sorted(v["val_cases"][0] for v in vals) == sorted({v["val_cases"][0] for v in vals})
    assert all(len(v["val_cases"]) == 2 and not set(v["val_cases"]) & set(v["train_cases"]) for v in vals)
    out = tmp_path / "pred"
    assert main(["predict", "-m", str(run), "-i", str(seg / "imagesTr" / "case0_0000.nii.gz"), "-o", str(out),
                 "--device", "cpu", "--save-probabilities"]) == 0
    models = [run / m for m in state["models"]]
    image = seg / "imagesTr" / "case0_0000.nii.gz"
    each = [Predictor(m, device="cpu").predict_case("case0", [image]).output for m in models]
    both = Predictor(models, device="cpu").predict_case("case0", [image]).output
    np.testing.assert_allclose(both, (each[0] + each[1]) / 2, atol=1e-6)
    assert not np.allclose(each[0], each[1])  # two different models were averaged
    import nibabel as nib

    saved = np.asarray(nib.load(str(out / "case0_probabilities.nii.gz")).dataobj)
    np.testing.assert_allclose(np.moveaxis(saved, -1, 0), both, atol=1e-5)
    from ahnet.pipeline import train_run

    with pytest.raises(ConfigError, match="--folds cannot change it"):
        train_run(seg, run, folds=3, device="cpu", workers=0, progress=False)


def test_loader_benchmark_runs_both_rows(tmp_path):
    """benchmarks/loader.py (the store against raw files) at a tiny size: both rows, rates and memory."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "loader.py"
    out = tmp_path / "loader.json"
    subprocess.run([sys.executable, str(script), "--cases", "3", "--shape", "48x48x12", "--patch", "32x32x8",
                    "--batches", "4", "--workers", "0", "--work", str(tmp_path / "work"), "--json", str(out)],
                   check=True, capture_output=True, timeout=240)
    result = json.loads(out.read_text())
    assert [r["row"] for r in result["rows"]] == ["store", "raw"] and result["cases"] == 3
    for row in result["rows"]:
        assert row["patches"] == 8 and row["patches_per_s"] > 0 and row["memory"][-1]["anon_mb"] > 0
