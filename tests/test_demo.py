"""``ahnet demo``, the README's main job: it runs end to end, and at a size a test can afford it learns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ahnet.cli import main
from ahnet.demo import run_demo
from ahnet.errors import ConfigError
from ahnet.experiments import Scale

#: Small enough for the test suite (about a minute on 2 cores), large enough to learn the liver.
LEARNING = Scale(train_cases=4, test_cases=2, seg_shape=(64, 64, 16), det_shape=(64, 64, 16), patch2d=(64, 64),
                 patch3d=(64, 64, 16), backbone="resnet18", epochs2d=3, stage1_epochs=1, epochs3d=2, iters=10,
                 batch2d=8, batch3d=2)


def test_demo_learns_the_liver(tmp_path):
    """Both networks segment the held-out phantoms' liver clearly better than calling the whole
    body liver (what a network that learned only "not air" would do)."""
    summary = run_demo(tmp_path, task="seg", scale=LEARNING, device="cpu", workers=0, progress=False)
    rows = summary["tasks"]["seg"]["headline"]
    baseline = rows["baseline: body = liver"]["liver Dice"]
    assert baseline < 0.5
    for network in ("MC-GCN", "AH-Net"):
        assert rows[network]["liver Dice"] > baseline + 0.15, rows
    assert Path(summary["tasks"]["seg"]["report"]).stat().st_size > 10_000


def test_demo_cli_runs_both_tasks_and_prints_where_the_reports_are(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--scale", "tiny", "--out", str(out), "--device", "cpu", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tasks"]) == {"seg", "det"}
    for task, result in summary["tasks"].items():
        assert Path(result["report"]).is_file() and f"[{task}] report: {result['report']}" in printed
        assert set(result["headline"]) >= {"MC-GCN", "AH-Net"}
    assert "TPR@1FP" in printed and "liver Dice" in printed
    lesions = summary["tasks"]["det"]["baseline"]["lesions"]
    assert f"({lesions} held-out lesions in {summary['tasks']['det']['baseline']['volumes']} volumes)" in printed
    for task, dice in (("seg", True), ("det", False)):  # segmentation arms train with Dice + (focal) CE
        config = json.loads((out / task / "ah-net" / "train" / "config.json").read_text())["config"]
        assert config["dice_loss"] is dice and config["focal"] is True


def test_demo_refuses_unknown_task_and_scale(tmp_path):
    with pytest.raises(ConfigError, match="task must be"):
        run_demo(tmp_path, task="cls")
    with pytest.raises(ConfigError, match="scale must be"):
        run_demo(tmp_path, scale="huge")
