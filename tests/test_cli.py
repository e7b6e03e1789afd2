"""`ahnet summary` reproduces Table 2 through the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

from ahnet.cli import main


def test_summary_json_released_equals_table2(capsys):
    assert main(["summary", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert set(rows[0]) == {"model", "preset", "conv_layers", "params", "paper_conv_layers", "paper_params"}
    by_key = {(r["model"], r["preset"]): r for r in rows}
    assert {m for m, _ in by_key} == {"2d-unet", "3d-unet", "resnet50", "mc-gcn", "ahnet"}
    for key in [("ahnet", "released"), ("mc-gcn", "released"), ("2d-unet", "paper"), ("3d-unet", "paper")]:
        row = by_key[key]
        assert (row["conv_layers"], row["params"]) == (row["paper_conv_layers"], row["paper_params"]), key
    assert by_key[("ahnet", "released")]["params"] == 27_085_500
    assert by_key[("mc-gcn", "released")]["params"] == 23_576_758
    assert ("ahnet", "paper") in by_key and ("mc-gcn", "paper") in by_key


def test_summary_table(capsys):
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert "27,085,500" in out and "unused Conv2d(256, 64, 1)" in out


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("ahnet")
    out = subprocess.run([str(exe), "summary", "--json"], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert json.loads(out.stdout)[-1]["params"] == 27_085_500


def test_verify_reports_problems_with_exit_code(tmp_path, capsys):
    from datasets import make_seg_dataset

    root = make_seg_dataset(tmp_path / "ds", cases=2)
    assert main(["verify", str(root), "--quiet"]) == 0
    assert "no problems" in capsys.readouterr().out
    next((root / "labelsTr").iterdir()).unlink()
    assert main(["verify", str(root), "--quiet"]) == 1
    assert "label" in capsys.readouterr().out


def _options(parser, name="ahnet"):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _options(sub, f"{name} {sub_name}")
        elif not isinstance(action, argparse._HelpAction):
            yield name, action


def test_every_flag_has_help_and_shows_its_default():
    from ahnet.cli import build_parser

    options = list(_options(build_parser()))
    assert [(cmd, a.dest) for cmd, a in options if not a.help] == []
    train3d = build_parser()._subparsers._group_actions[0].choices["train3d"].format_help()
    assert "(default: 100)" in " ".join(train3d.split())  # --iters-per-epoch
    assert "(default: 0.7)" in " ".join(train3d.split())  # --positive-ratio


def test_predict_flags_follow_the_convention_and_old_names_still_work(capsys):
    from ahnet.cli import build_parser

    parse = build_parser().parse_args
    new = parse(["predict", "--checkpoint", "c.pt", "-i", "in", "--out", "o"])
    old = parse(["predict", "--model", "c.pt", "-i", "in", "--output", "o"])
    assert (new.checkpoint, new.output) == (old.checkpoint, old.output) == ("c.pt", "o")
    assert main(["predict", "-i", "in", "-o", "o"]) == 2
    assert "-m/--checkpoint CHECKPOINT is required" in capsys.readouterr().err
