"""The paper's comparisons (ahnet.experiments) and the demo, at the tiny scale."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil

import numpy as np
import pytest
import torch

from ahnet.cli import main
from ahnet.errors import ConfigError
from ahnet.evaluation import LITS_CLASSES, evaluate_arrays
from ahnet.experiments import EXPERIMENTS, SCALES, _slug, compare, run_arms, run_experiment
from ahnet.models.factory import build_model
from ahnet.training import transfer_checkpoint
from ahnet.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def table4(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "table4"
    assert main(["experiment", "table4", "--scale", "tiny", "--out", str(out), "--device", "cpu",
                 "--workers", "0"]) == 0
    return out


def test_table4_rows_plot_and_paper_side_by_side(table4):
    summary = json.loads((table4 / "results.json").read_text())
    assert summary["task"] == "det" and summary["header"][:2] == ["network", "0.01"]
    assert summary["machine"] and f"device `cpu` ({summary['machine']})" in (table4 / "results.md").read_text()
    assert [r[0] for r in summary["rows"]] == ["2D U-Net", "3D U-Net", "MC-GCN", "AH-Net"]
    for row in summary["rows"]:
        assert all(0.0 <= v <= 1.0 for v in row[1:-1])
    text = (table4 / "results.md").read_text()
    assert "| AH-Net |" in text and "0.4931" in text  # ours, then the paper's row apart
    assert text.index("| AH-Net |") < text.index("The paper's published numbers")
    assert (table4 / "froc.png").stat().st_size > 1000
    arms = summary["arms"]["seed-0"]  # tiny trains one seed unless --seeds says otherwise
    assert arms["AH-Net"]["parameters"] != arms["3D U-Net"]["parameters"]
    assert summary["seeds"] == [0] and summary["bootstrap"]["cases"] == SCALES["tiny"].test_cases
    # one seed, one test case: the interval is the value itself, and the table still says so
    ah = summary["intervals"]["AH-Net"]["0.25"]
    assert ah["low"] == ah["mean"] == ah["high"] == summary["rows"][3][6]
    assert re.search(r"\| AH-Net \| \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \|", text)


def test_rerun_skips_finished_arms(table4, monkeypatch):
    import ahnet.training

    def refuse(*args, **kwargs):
        raise AssertionError("a finished arm was trained again")

    monkeypatch.setattr(ahnet.training, "Trainer", refuse)
    before = json.loads((table4 / "results.json").read_text())["rows"]
    again = run_experiment("table4", table4, scale="tiny", device="cpu", workers=0, progress=False)
    assert again["rows"] == before


def test_arms_finished_with_other_settings_are_trained_again(table4, tmp_path, monkeypatch):
    # A finished arm of another seed (or scale) is never reported as this run's (issue 12 found the
    # demo reporting networks trained at an older scale).
    import shutil

    import ahnet.training

    def refuse(*args, **kwargs):
        raise AssertionError("trained again")

    copy = tmp_path / "table4"
    shutil.copytree(table4, copy)
    monkeypatch.setattr(ahnet.training, "Trainer", refuse)
    with pytest.raises(AssertionError, match="trained again"):
        run_experiment("table4", copy, scale="tiny", device="cpu", workers=0, progress=False, seed=1)


def test_transfer_keeps_structure_options(table4, tmp_path):
    source = table4 / "seed-0" / "mc-gcn" / "train" / "checkpoint_best.pt"
    out = transfer_checkpoint(source, tmp_path / "init.pt", options={"dense_layer": "isotropic", "pyramid_pools": []})
    meta = load_checkpoint(out, kind="transfer")["model_meta"]
    assert meta["options"] == {"dense_layer": "isotropic", "pyramid_pools": []}


def test_ablation_arms_change_what_they_say():
    arms = {a.name: a for a in EXPERIMENTS["ablations"].arms}
    base = build_model("ahnet", 1, 3, "resnet18")
    flat = build_model("ahnet", 1, 3, "resnet18", options=dict(arms["no pyramid pooling"].options))
    iso = build_model("ahnet", 1, 3, "resnet18", options=dict(arms["isotropic 3x3x3 decoder"].options))
    assert base.pyramid.out_channels == flat.pyramid.out_channels + 4
    kernels = lambda m: {tuple(c.kernel_size) for c in m.modules() if isinstance(c, torch.nn.Conv3d)}  # noqa: E731
    assert (3, 3, 3) in kernels(iso) and (3, 3, 3) not in kernels(base)
    assert (1, 1, 3) in kernels(base) and (1, 1, 3) not in kernels(iso)  # 1x1x3 lives in the decoder only
    assert not arms["from scratch (no transfer)"].transfer and not arms["no focal loss"].focal
    x = torch.randn(1, 1, 32, 32, 8)
    assert iso.eval()(x).shape == flat.eval()(x).shape == (1, 3, 32, 32, 8)


def test_bad_requests(tmp_path):
    with pytest.raises(ConfigError, match="unknown experiment"):
        run_experiment("table9", tmp_path)
    with pytest.raises(ConfigError, match="both --data"):
        run_experiment("table5", tmp_path, data=tmp_path)
    with pytest.raises(ConfigError, match="det experiment"):
        run_experiment("table4", tmp_path, task="seg", scale="tiny")
    arms = EXPERIMENTS["ablations"].arms
    with pytest.raises(ConfigError, match="MC-GCN arm before"):
        run_arms("seg", arms[1:], SCALES["tiny"], tmp_path, tmp_path, tmp_path)


@pytest.fixture(scope="module")
def two_seeds(table4, tmp_path_factory):
    """table4's folder rerun with ``--seeds 2``: seed 0 is reused, seed 1 trains; with the printed summary."""
    out = tmp_path_factory.mktemp("seeds") / "table4"
    shutil.copytree(table4, out)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["experiment", "table4", "--scale", "tiny", "--out", str(out), "--device", "cpu",
                     "--workers", "0", "--seeds", "2"]) == 0
    return out, printed.getvalue()


@pytest.mark.timeout(300)
def test_seeds_train_in_their_own_folders_and_report_intervals(table4, two_seeds):
    out, printed = two_seeds
    arms = EXPERIMENTS["table4"].arms
    for seed in (0, 1):
        for arm in arms:
            result = json.loads((out / f"seed-{seed}" / _slug(arm.name) / "result.json").read_text())
            assert (result["settings"]["seed"], result["settings"]["data_seed"]) == (seed, 0)
            assert set(result["metrics"]["cases"]) == set(json.loads((out / "test" / "boxesTr.json").read_text()))
    for arm in arms:  # the finished seed was reused, not trained again
        name = f"seed-0/{_slug(arm.name)}/result.json"
        assert (out / name).read_text() == (table4 / name).read_text()
    summary = json.loads((out / "results.json").read_text())
    assert summary["seeds"] == [0, 1] and set(summary["arms"]) == {"seed-0", "seed-1"}
    assert summary["bootstrap"] == {"seeds": 2, "cases": 1, "resamples": 2000, "level": 0.95}
    for row in summary["rows"]:  # means over the two seeds, inside their intervals
        for column, mean in zip(summary["header"][1:-1], row[1:-1]):
            cell = summary["intervals"][row[0]][column]
            expected = np.mean([summary["arms"][s][row[0]]["metrics"]["froc"][column] for s in ("seed-0", "seed-1")])
            assert mean == cell["mean"] == pytest.approx(expected)
            assert cell["low"] <= cell["mean"] <= cell["high"]
    text = (out / "results.md").read_text()
    assert len(re.findall(r"\| \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", text)) == 4 * 6
    assert "training seeds 0, 1" in text and "over 2 training seed(s)" in text
    section = text[text.index("## Orderings of the paper"):text.index("The paper's published numbers")]
    lines = [line for line in section.splitlines() if line.startswith("- ")]
    assert [line.split(" on ")[0] for line in lines] == ["- AH-Net > MC-GCN", "- MC-GCN > 3D U-Net"]
    pattern = (r"on TPR at 0\.25 FP per volume: \d\.\d{3} \[.*\] vs \d\.\d{3} \[.*\], intervals (overlap|apart); "
               r"paired difference [+-]\d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\]: (holds|does not hold|not shown)$")
    assert all(re.search(pattern, line) for line in lines), lines
    tested = summary["orderings"]
    assert [o["line"] for o in tested] == [line[2:] for line in lines]
    for o in tested:
        assert o["overlap"] == (o["better_interval"]["low"] <= o["worse_interval"]["high"]
                                and o["worse_interval"]["low"] <= o["better_interval"]["high"])
        assert (o["verdict"] == "holds") == (o["difference"]["low"] > 0)
    assert "Orderings of the paper:" in printed and tested[0]["line"] in printed
    assert "0.25" in printed and re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", printed)
    assert (out / "froc.png").stat().st_size > 1000


def test_arm_of_another_data_seed_is_not_reused(two_seeds, tmp_path, monkeypatch):
    # seed-1/ holds training seed 1 on the phantoms of seed 0; --seed 1 makes other phantoms: retrain.
    import ahnet.training

    def refuse(*args, **kwargs):
        raise AssertionError("trained again")

    copy = tmp_path / "table4"
    shutil.copytree(two_seeds[0], copy)
    monkeypatch.setattr(ahnet.training, "Trainer", refuse)
    with pytest.raises(AssertionError, match="trained again"):
        run_experiment("table4", copy, scale="tiny", device="cpu", workers=0, progress=False, seed=1, seeds=1)


@pytest.mark.timeout(60)
def test_bad_seeds_is_a_message_not_a_traceback(tmp_path, capsys):
    assert main(["experiment", "table5", "--scale", "tiny", "--out", str(tmp_path / "x"), "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert "ahnet experiment: error: --seeds must be a whole number >= 1" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # refused before any data or training
    with pytest.raises(ConfigError, match="--seeds"):
        run_experiment("table4", tmp_path, scale="tiny", seeds=-1)


def _seg_result(truth: list, noise: float, seed: int, classes=None) -> dict:
    """A result.json of an arm whose predictions are the truth with a share ``noise`` of voxels relabelled."""
    rng = np.random.default_rng(seed)
    pairs = [(f"case{i}", np.where(rng.random(t.shape) < noise, rng.integers(0, 3, t.shape), t), t)
             for i, t in enumerate(truth)]
    metrics = evaluate_arrays(pairs, classes or LITS_CLASSES, surface_tolerance_mm=None)
    return {"metrics": metrics.to_dict(), "train_s": 30.0}


@pytest.mark.timeout(60)
def test_compare_from_saved_segmentation_results():
    # Without training: three seeds of table5's rows from saved results, as results.json keeps them.
    rng = np.random.default_rng(0)
    truth = [rng.integers(0, 3, (8, 8, 4)) for _ in range(6)]
    runs = [{"2D U-Net": _seg_result(truth, 0.5, s), "3D U-Net": _seg_result(truth, 0.6, s + 10),
             "MC-GCN": _seg_result(truth, 0.6, s + 20), "AH-Net": _seg_result(truth, 0.2, s + 30)} for s in range(3)]
    runs = json.loads(json.dumps(runs))
    comparison = compare(EXPERIMENTS["table5"], "seg", runs)
    assert comparison.header == ["network", "liver DG", "liver DPC", "lesion DG", "lesion DPC", "train min"]
    ah = comparison.rows[3]
    assert ah[0] == "AH-Net" and ah[3].mean == pytest.approx(np.mean([r["AH-Net"]["metrics"]["dice_global"]["lesion"]
                                                                       for r in runs]))
    assert ah[4].mean == pytest.approx(np.mean([r["AH-Net"]["metrics"]["dice_per_case"]["lesion"] for r in runs]))
    assert ah[-1] == pytest.approx(0.5)
    better, equal = comparison.orderings  # AH-Net is far better; MC-GCN and the 3D U-Net are the same recipe
    assert better.verdict == "holds" and not better.overlap and better.line().endswith(": holds")
    assert equal.verdict == "not shown" and equal.overlap and "intervals overlap" in equal.line()
    assert equal.difference.low < 0 < equal.difference.high
    assert comparison.to_dict()["orderings"][0]["metric"] == "lesion Dice global"
    # an ordering on a column this table lacks is said, not silently dropped
    liver = [{name: _seg_result(truth, 0.3, s, classes={"liver": (1, 2)}) for name in run}
             for s, run in enumerate(runs)]
    untested = compare(EXPERIMENTS["table5"], "seg", liver).orderings[0]
    assert untested.verdict == "not tested" and "no column lesion DG or 0.25" in untested.line()
