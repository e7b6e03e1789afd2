"""`ahnet bench` reproduces Table 3's measurement (issue 6); no timing is asserted here."""

import json

import pytest
import torch

from ahnet import ConfigError
from ahnet.bench import PAPER_SIZE, ROWS, count_gflops, parse_size, run_bench
from ahnet.cli import main

REQUIRED = {"ahnet-paper", "ahnet-released", "mc-gcn-paper", "mc-gcn-released", "2d-unet", "3d-unet", "monai-ahnet"}


def test_bench_cli_writes_every_row(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--size", "32x32x8", "--repeats", "1", "--json", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "Table 3" in text and "ahnet-released vs MONAI AHNet" in text
    result = json.loads(out.read_text())
    assert REQUIRED <= set(result) and set(ROWS) <= set(result)
    assert result["device"] == "cpu" and result["size"] == [32, 32, 8] and result["peak_gflops_s"] > 0
    for row in ROWS:
        r = result[row]
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"], row
        assert r["peak_mem_mb"] >= r["base_mem_mb"] > 0, row
        assert r["gflops"] > 0 and r["gflops_s"] == pytest.approx(r["gflops"] / r["median_s"]), row
    assert result["ahnet-released"]["time_ratio"] == 1.0 and result["ahnet-released"]["flop_ratio"] == 1.0
    # Slice-wise 2D networks see all 8 slices; MONAI's AHNet needs a padded volume at this size.
    assert result["mc-gcn-released"]["gflops"] == pytest.approx(8 * count_gflops("mc-gcn-released", (32, 32, 1)))
    assert result["monai-ahnet"]["padded_to"] == [128, 128, 32]


def test_our_released_preset_costs_what_monai_costs_at_table3_size():
    # The same network (27,085,500 parameters): same FLOPs per 384x256x64 forward, 315 GFLOP.
    ours, monai = count_gflops("ahnet-released", PAPER_SIZE), count_gflops("monai-ahnet", PAPER_SIZE)
    assert ours == pytest.approx(monai) and 300 < ours < 330


@pytest.mark.parametrize("argv, message", [
    (["--size", "32x32"], "--size must be XxYxZ"),
    (["--size", "32xAx8"], "--size must be XxYxZ"),
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--models", "ahnet,unet"], "unknown model(s) ['ahnet', 'unet']"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
])
def test_bad_options_are_clear_errors(argv, message, capsys):
    assert main(["bench", "--quiet", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        run_bench("cuda", (32, 32, 8), repeats=1, progress=False)


def test_parse_size():
    assert parse_size("384x256x64") == (384, 256, 64)
    with pytest.raises(ConfigError):
        parse_size("384x256x0")


def test_training_rows_time_ours_and_the_plain_route_in_own_processes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--size", "32x32x8", "--repeats", "1", "--quiet", "--models",
                 "ahnet-released,ahnet-released-plain,3d-unet", "--train-steps", "1", "--train-sizes", "40x32x8",
                 "--json", str(out)]) == 0
    assert "training step (forward, backward, Adam) on 2 patches of 40x32x8" in capsys.readouterr().out
    trained = json.loads(out.read_text())["train"]["40x32x8"]
    assert set(trained) == {"ahnet-released", "ahnet-released-plain"}  # only AH-Net rows train
    # Ours as the trainer runs it on the CPU (freed memory kept), the plain route with the defaults.
    assert trained["ahnet-released"]["memory_kept"] and not trained["ahnet-released-plain"]["memory_kept"]
    for t in trained.values():
        assert t["patch"] == t["ran_on"] == [40, 32, 8] and t["batch"] == 2 and t["steps"] == 1
        assert 0 < t["min_step_s"] <= t["median_step_s"] and t["peak_mem_mb"] > 0
