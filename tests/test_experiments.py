"""The paper's comparisons (ahnet.experiments) and the demo, at the tiny scale."""

from __future__ import annotations

import json

import pytest
import torch

from ahnet.cli import main
from ahnet.errors import ConfigError
from ahnet.experiments import EXPERIMENTS, SCALES, run_arms, run_experiment
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
    arms = summary["arms"]
    assert arms["AH-Net"]["parameters"] != arms["3D U-Net"]["parameters"]


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
    source = table4 / "mc-gcn" / "train" / "checkpoint_best.pt"
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
