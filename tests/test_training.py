"""Training (§3.4, §4): end to end through the CLI, two stages, focal switch, exact resume, DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ahnet import CheckpointError, ConfigError
from ahnet.cli import main
from ahnet.training import TrainConfig, Trainer, load_checkpoint, save_checkpoint, transfer_checkpoint
from ahnet.training.config import scheduled_lr
from ahnet.training.checkpoint import copy_checkpoint
from ahnet.training.trainer import split_cases
from ahnet.data.dataset import CaseFiles, load_dataset

from datasets import write_nifti

SHAPE = (40, 36, 10)


def make_learnable_dataset(root: Path, cases: int = 4, detection: bool = False) -> Path:
    """CT-like cases where the label is visible in the image: a bright organ holding a dark lesion."""
    rng = np.random.default_rng(1)
    boxes = {}
    for i in range(cases):
        image = rng.normal(0, 15, SHAPE).astype(np.float32)
        label = np.zeros(SHAPE, np.uint8)
        x, y = (int(rng.integers(10, s - 10)) for s in SHAPE[:2])
        z = int(rng.integers(3, SHAPE[2] - 3))
        label[x - 7:x + 7, y - 7:y + 7, z - 2:z + 3] = 1
        label[x - 3:x + 3, y - 3:y + 3, z - 1:z + 2] = 2
        image += np.where(label == 1, 100, 0) + np.where(label == 2, 30, 0)
        write_nifti(root / "imagesTr" / f"case{i}_0000.nii.gz", image, (0.8, 0.8, 3.0))
        write_nifti(root / "labelsTr" / f"case{i}.nii.gz", label, (0.8, 0.8, 3.0))
        boxes[f"case{i}"] = [[x - 3, y - 3, z - 1, x + 2, y + 2, z + 1]] if i % 2 == 0 else []
    spec = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "lesion": 2},
            "numTraining": cases, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(spec))
    if detection:
        (root / "boxesTr.json").write_text(json.dumps(boxes))
    return root


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    return make_learnable_dataset(tmp_path_factory.mktemp("seg"))


@pytest.fixture(scope="module")
def det_data(tmp_path_factory):
    return make_learnable_dataset(tmp_path_factory.mktemp("det"), detection=True)


def tiny(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="ahnet", backbone="resnet18", patch=(32, 32, 8), batch_size=2,
                epochs=2, iters_per_epoch=3, workers=0, val_patches=2, device="cpu")
    return TrainConfig(**{**base, **kw})


def test_cli_train2d_transfer_train3d(seg_data, tmp_path):
    """The paper's pipeline from the command line: MC-GCN, transfer, two-stage AH-Net."""
    common = ["--data", str(seg_data), "--backbone", "resnet18", "--iters-per-epoch", "3", "--workers", "0",
              "--device", "cpu", "--val-patches", "2"]
    assert main(["train2d", *common, "--out", str(tmp_path / "2d"), "--patch", "32x32", "--epochs", "1",
                 "--batch-size", "4"]) == 0
    assert main(["transfer", str(tmp_path / "2d" / "checkpoint_latest.pt"), "--out", str(tmp_path / "t.pt")]) == 0
    assert main(["train3d", *common, "--out", str(tmp_path / "3d"), "--init", str(tmp_path / "t.pt"),
                 "--patch", "32x32x8", "--epochs", "1", "--stage1-epochs", "1"]) == 0
    records = [json.loads(line) for line in (tmp_path / "3d" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["decoder", "joint"]
    config = json.loads((tmp_path / "3d" / "config.json").read_text())
    assert config["config"]["lr"] == 1e-3 and config["model_meta"]["model"] == "ahnet"
    assert sorted(config["train_cases"] + config["val_cases"]) == [f"case{i}" for i in range(4)]
    assert (tmp_path / "3d" / "training_curve.png").stat().st_size > 1000
    two_d = json.loads((tmp_path / "2d" / "config.json").read_text())["config"]
    assert two_d["lr"] == 5e-4 and two_d["model"] == "mc-gcn"


def test_transferred_encoder_is_frozen_in_stage_one(seg_data, tmp_path):
    main(["train2d", "--data", str(seg_data), "--out", str(tmp_path / "2d"), "--backbone", "resnet18",
          "--patch", "32x32", "--epochs", "1", "--iters-per-epoch", "2", "--workers", "0", "--device", "cpu"])
    main(["transfer", str(tmp_path / "2d" / "checkpoint_latest.pt"), "--out", str(tmp_path / "t.pt")])
    init = load_checkpoint(tmp_path / "t.pt", kind="transfer")["model"]
    Trainer(tiny(seg_data, tmp_path / "3d", init=str(tmp_path / "t.pt"), stage1_epochs=1, epochs=0),
            progress=False).fit()
    trained = load_checkpoint(tmp_path / "3d" / "checkpoint_latest.pt")["model"]
    encoder = [k for k in init if k.startswith("encoder.")]
    assert encoder and all(torch.equal(init[k], trained[k]) for k in encoder)  # weights and BN statistics
    decoder = [k for k in init if k.startswith("decoder.") and k.endswith("conv.weight")]
    assert any(not torch.equal(init[k], trained[k]) for k in decoder)


def test_loss_goes_down(seg_data, tmp_path):
    result = Trainer(tiny(seg_data, tmp_path, epochs=4, iters_per_epoch=4, lr=3e-3, augment=False),
                     progress=False).fit()
    losses = [h["train_loss"] for h in result["history"]]
    assert losses[-1] < 0.7 * losses[0]


def test_detection_heatmaps_and_focal_switch(det_data, tmp_path):
    result = Trainer(tiny(det_data, tmp_path, model="3d-unet", epochs=3, switch_epoch=0), progress=False).fit()
    history = result["history"]
    assert [h["loss_phase"] for h in history] == ["base", "focal", "focal"]
    assert history[0]["switched_to_focal"] and set(history[0]["val_froc"]) == {"0.125", "0.25", "0.5", "1", "2", "4", "8"}
    saved = load_checkpoint(tmp_path / "checkpoint_latest.pt")
    assert saved["loss_schedule"]["phase"] == "focal"


def test_resume_is_exact(seg_data, tmp_path):
    """2N epochs in one go == N epochs, stop, resume, N epochs: identical parameters."""
    torch.use_deterministic_algorithms(True)
    try:
        Trainer(tiny(seg_data, tmp_path / "straight", epochs=2), progress=False).fit()
        Trainer(tiny(seg_data, tmp_path / "resumed", epochs=1), progress=False).fit()
        # The same command again with --resume and more epochs continues from epoch 1.
        saved = load_checkpoint(tmp_path / "resumed" / "checkpoint_latest.pt")
        saved["config"]["epochs"] = 2
        save_checkpoint(tmp_path / "resumed" / "checkpoint_latest.pt", {k: v for k, v in saved.items() if k != "format"})
        Trainer(tiny(seg_data, tmp_path / "resumed"), resume=True, progress=False).fit()
    finally:
        torch.use_deterministic_algorithms(False)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint_latest.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint_latest.pt")
    assert a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def test_recompute_trains_the_same_weights_and_is_refused_where_absent(seg_data, tmp_path):
    for name, recompute in (("kept", False), ("recomputed", True)):
        Trainer(tiny(seg_data, tmp_path / name, epochs=1, recompute=recompute), progress=False).fit()
    a = load_checkpoint(tmp_path / "kept" / "checkpoint_latest.pt")
    b = load_checkpoint(tmp_path / "recomputed" / "checkpoint_latest.pt")
    for key in a["model"]:  # weights and batch-norm statistics (each batch counted once)
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-5, atol=1e-6, msg=key)
    with pytest.raises(ConfigError, match="--recompute is implemented for AH-Net, not for 3d-unet"):
        Trainer(tiny(seg_data, tmp_path / "unet", model="3d-unet", recompute=True), progress=False)


def test_bf16_autocast_trains(seg_data, tmp_path):
    """The mixed-precision path (bf16 autocast; on CUDA it is --amp auto) runs here on the CPU."""
    result = Trainer(tiny(seg_data, tmp_path, model="mc-gcn", patch=(32, 32, 3), amp="bf16", epochs=2,
                          augment=False, lr=3e-3),
                     progress=False).fit()
    losses = [h["train_loss"] for h in result["history"]]
    assert all(np.isfinite(losses)) and losses[1] < losses[0]
    with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
        Trainer(tiny(seg_data, tmp_path / "fp16", amp="fp16"), progress=False)


@pytest.mark.parametrize("links", [True, False])
def test_best_checkpoint_is_a_copy_that_outlives_the_next_latest(tmp_path, monkeypatch, links):
    # A hard link where possible, else a byte copy: either way replacing latest leaves best alone.
    if not links:
        monkeypatch.setattr("os.link", lambda *a: (_ for _ in ()).throw(OSError("no hard links here")))
    latest, best = tmp_path / "checkpoint_latest.pt", tmp_path / "checkpoint_best.pt"
    save_checkpoint(latest, {"kind": "note", "value": torch.tensor([1.0])})
    copy_checkpoint(latest, best)
    save_checkpoint(latest, {"kind": "note", "value": torch.tensor([2.0])})
    assert load_checkpoint(best)["value"].item() == 1.0 and load_checkpoint(latest)["value"].item() == 2.0
    assert not list(tmp_path.glob(".*.tmp"))


def test_checkpoints_are_plain_data_and_atomic(seg_data, tmp_path):
    Trainer(tiny(seg_data, tmp_path, epochs=1), progress=False).fit()
    payload = torch.load(tmp_path / "checkpoint_latest.pt", weights_only=True)
    assert {"model", "optimizer", "epoch", "stage", "loss_schedule", "rng", "config", "model_meta"} <= set(payload)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
    (tmp_path / "broken.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="broken.pt"):
        load_checkpoint(tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="expected 'transfer'"):
        load_checkpoint(tmp_path / "checkpoint_latest.pt", kind="transfer")


def test_resume_without_checkpoint_is_a_clear_error(seg_data, tmp_path):
    assert main(["train3d", "--out", str(tmp_path), "--resume"]) == 2


def test_split_is_seeded_and_disjoint(seg_data):
    cases = load_dataset(seg_data).cases
    train, val = split_cases(cases, 0.25, seed=3)
    assert len(val) == 1 and not {c.name for c in train} & {c.name for c in val}
    assert split_cases(cases, 0.25, seed=3) == (train, val)


def _det_cases(positives: int, negatives: int) -> list[CaseFiles]:
    return [CaseFiles(f"case_{i:03d}", [Path(f"{i}.nii.gz")], None, [(0, 0, 0, 1, 1, 1)] if i < positives else [])
            for i in range(positives + negatives)]


@pytest.mark.parametrize("seed", range(6))
def test_split_spreads_negative_volumes_over_training_and_validation(seed):
    """Validation of only negative volumes would score a FROC of 0 whatever the network does (the demo's
    DBT split did, seed 0): negatives and positives are split in proportion, also into folds."""
    cases = _det_cases(positives=8, negatives=4)
    train, val = split_cases(cases, 0.15, seed=seed)
    assert sorted(bool(c.boxes) for c in val) == [False, True]
    for fold in range(4):
        _, held = split_cases(cases, 0.2, seed=seed, folds=4, fold=fold)
        assert sum(not c.boxes for c in held) == 1 and len(held) == 3


def test_split_of_one_group_is_the_seeded_permutation(seg_data):
    """Segmentation splits are those of earlier versions: the first cases of the seeded permutation."""
    cases = load_dataset(seg_data).cases
    for seed in range(4):
        order = np.random.default_rng(seed).permutation(len(cases))
        assert {c.name for c in split_cases(cases, 0.5, seed=seed)[1]} == {cases[i].name for i in order[:2]}


def test_a_resumed_run_keeps_the_cases_it_started_with(det_data, tmp_path, monkeypatch):
    import ahnet.training.trainer as trainer_module

    out = tmp_path / "run"
    first = Trainer(tiny(det_data, out, model="3d-unet", patch=(16, 16, 4), epochs=1, iters_per_epoch=1),
                    progress=False)
    first.fit()
    names = ([c.name for c in first.train_cases], [c.name for c in first.val_cases])
    assert load_checkpoint(out / "checkpoint_latest.pt")["split"] == {"train": names[0], "val": names[1]}
    swapped = lambda cases, *args, **kw: (cases[1:], cases[:1])  # another rule of the split
    monkeypatch.setattr(trainer_module, "split_cases", swapped)
    resumed = Trainer(tiny(det_data, out, model="3d-unet", patch=(16, 16, 4), epochs=2, iters_per_epoch=1),
                      resume=True, progress=False, changes={"epochs": 2})
    assert ([c.name for c in resumed.train_cases], [c.name for c in resumed.val_cases]) == names


@pytest.mark.parametrize("kw,match", [
    ({"stage1_epochs": 2}, "needs --init"),
    ({"model": "3d-unet", "init": "x.pt"}, "ahnet only"),
    ({"patch": (32, 32)}, "three positive sizes"),
    ({"model": "vnet"}, "unknown model"),
    ({"epochs": 0}, "at least one epoch"),
])
def test_bad_configurations_are_clear_errors(seg_data, tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        tiny(seg_data, tmp_path, **kw)


def test_patch_larger_than_volume_is_a_clear_error(seg_data, tmp_path):
    assert main(["train3d", "--data", str(seg_data), "--out", str(tmp_path), "--model", "3d-unet",
                 "--patch", "32x32x32", "--epochs", "1", "--iters-per-epoch", "1", "--workers", "0"]) == 2


DDP_WORKER = r"""
import sys, torch, torch.distributed as dist
from ahnet.training import TrainConfig, Trainer
data, out = sys.argv[1:3]
trainer = Trainer(TrainConfig(data=data, out=out, model="ahnet", backbone="resnet18", patch=(32, 32, 8),
                              batch_size=2, epochs=2, iters_per_epoch=2, workers=0, val_patches=1, device="cpu"),
                  progress=False)
trainer.fit()
torch.save(trainer.model.state_dict(), f"{out}/rank{dist.get_rank()}.pt")
dist.destroy_process_group()
"""


def test_ddp_two_processes_on_cpu_keep_identical_parameters(seg_data, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(29500 + os.getpid() % 1000), str(script), str(seg_data),
                          str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    a = torch.load(tmp_path / "run" / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "run" / "rank1.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["world_size"] == 2
    # Only rank 0 writes: one metrics line per epoch.
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_worker_processes_end_with_the_run(seg_data, tmp_path):
    """Persistent DataLoader workers ignore SIGTERM (the main process handles it), so the trainer must
    stop them itself: none may outlive fit(), or the interpreter waits for them at exit."""
    import multiprocessing

    Trainer(tiny(seg_data, tmp_path / "run", model="3d-unet", patch=(16, 16, 4), epochs=1, iters_per_epoch=2,
                 workers=2), progress=False).fit()
    assert not multiprocessing.active_children()


def test_a_tie_in_validation_keeps_the_later_epoch_as_best(det_data, tmp_path, monkeypatch):
    """A detection metric often stays at 0 for the first epochs: the best checkpoint is then the
    latest, longest-trained one, not the first."""
    monkeypatch.setattr(Trainer, "_validate", lambda self, batches: {"val_metric": 0.0})
    out = tmp_path / "run"
    Trainer(tiny(det_data, out, model="3d-unet", patch=(16, 16, 4), epochs=3, iters_per_epoch=1),
            progress=False).fit()
    assert load_checkpoint(out / "checkpoint_best.pt")["epoch"] == 3


def test_without_validation_every_epoch_is_the_best(seg_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train3d", "--data", str(seg_data), "--out", str(out), "--model", "3d-unet", "--patch", "16x16x4",
                 "--epochs", "2", "--iters-per-epoch", "1", "--batch-size", "2", "--workers", "0",
                 "--val-fraction", "0", "--device", "cpu"]) == 0
    assert load_checkpoint(out / "checkpoint_best.pt")["epoch"] == 2
    assert "no validation cases, checkpoint_best.pt is the last epoch" in capsys.readouterr().out


def test_validation_dice_is_the_dice_evaluate_reports(seg_data, tmp_path):
    # The best checkpoint is chosen by the metric `ahnet evaluate seg` reports: Dice global of the
    # data set's classes (here over the validation patches), one definition for both.
    from ahnet.evaluation.segmentation import classes_from_labels, evaluate_arrays

    trainer = Trainer(tiny(seg_data, tmp_path / "run", model="3d-unet", patch=(16, 16, 4)), progress=False)
    batches = trainer._validation_batches()
    metric = trainer._validate(batches)
    with torch.no_grad():
        pairs = [(f"patch{i}", trainer.model(b["image"]).argmax(1).numpy(), b["target"].numpy())
                 for i, b in enumerate(batches)]
    reported = evaluate_arrays(pairs, classes_from_labels(trainer.info.labels)).dice_global
    assert metric["val_dice"] == pytest.approx(reported) and set(reported) == {"liver", "lesion"}
    assert metric["val_metric"] == pytest.approx(np.mean(list(reported.values())))


def test_console_has_one_line_per_epoch_and_no_bar_off_a_terminal(seg_data, tmp_path, capsys):
    Trainer(tiny(seg_data, tmp_path / "run", model="3d-unet", patch=(16, 16, 4)), progress=True).fit()
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2 joint (cross-entropy loss)",
                                                         "epoch 2/2 joint (cross-entropy loss)"]
    assert all("train loss" in line and "val dice" in line and "(best" in line and "ETA" in line for line in lines)
    assert lines[-1].endswith("ETA 0s")
    assert "it/s" not in err and "\r" not in err  # captured output is no terminal: no progress bar


def test_tensorboard_scalars_or_a_clear_error(seg_data, tmp_path, monkeypatch):
    import types

    written = []

    class FakeWriter:  # stands in for torch.utils.tensorboard.SummaryWriter (tensorboard is optional)
        def __init__(self, folder):
            written.append(("folder", folder))

        def add_scalar(self, tag, value, step):
            written.append((tag, step))

        def flush(self):
            pass

        def close(self):
            written.append(("closed", None))

    config = tiny(seg_data, tmp_path / "run", model="3d-unet", patch=(16, 16, 4), tensorboard=True)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    Trainer(config, progress=False).fit()
    assert written[0] == ("folder", str(tmp_path / "run" / "tensorboard")) and written[-1] == ("closed", None)
    assert {("train/loss", 1), ("train/loss", 2), ("val/metric", 2), ("val/dice/lesion", 2)} <= set(written)

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(ConfigError, match="--tensorboard needs the tensorboard package: pip install tensorboard"):
        Trainer(tiny(seg_data, tmp_path / "run2", model="3d-unet", patch=(16, 16, 4), tensorboard=True),
                progress=False).fit()
    assert not (tmp_path / "run2").exists()  # nothing left of the failed run


def test_resume_applies_more_epochs_refuses_other_changes_and_config_replays_a_run(seg_data, tmp_path, capsys):
    run, replay = tmp_path / "run", tmp_path / "replay"
    common = ["--model", "3d-unet", "--patch", "16x16x4", "--iters-per-epoch", "2", "--workers", "0",
              "--device", "cpu", "--val-patches", "1"]
    assert main(["train3d", "--data", str(seg_data), "--out", str(run), *common, "--epochs", "1", "--lr", "0.002"]) == 0
    capsys.readouterr()

    assert main(["train3d", "--out", str(run), "--resume", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "cannot change --lr 0.5 (the run has 0.002)" in err and "--config" in err
    assert main(["train3d", "--out", str(run), "--resume", "--epochs", "0"]) == 2
    assert "already trained 1 epoch(s)" in capsys.readouterr().err
    # the same settings again are no change; more epochs continue the run
    assert main(["train3d", "--out", str(run), "--resume", "--epochs", "2", "--lr", "0.002",
                 "--data", str(seg_data), "--workers", "0"]) == 0
    assert load_checkpoint(run / "checkpoint_latest.pt")["epoch"] == 2
    assert json.loads((run / "config.json").read_text())["config"]["epochs"] == 2

    assert main(["train3d", "--config", str(run / "config.json"), "--out", str(replay), "--epochs", "1"]) == 0
    a = json.loads((run / "config.json").read_text())["config"]
    b = json.loads((replay / "config.json").read_text())["config"]
    assert {k for k in a if a[k] != b[k]} == {"out", "epochs"} and b["lr"] == 0.002
    capsys.readouterr()
    assert main(["train3d", "--config", str(run / "metrics.jsonl"), "--out", str(tmp_path / "x")]) == 2
    assert "not a readable JSON configuration" in capsys.readouterr().err


def test_scheduled_lr_poly_falls_to_zero_and_constant_stays():
    assert scheduled_lr(1e-3, "constant", 7, 10) == 1e-3
    rates = [scheduled_lr(1e-3, "poly", step, 10) for step in range(10)]
    assert rates[0] == 1e-3 and all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] < 1.5e-4
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(data="d", out="o", lr_schedule="cosine")


def test_poly_schedule_decays_within_each_stage(seg_data, tmp_path):
    """The rate restarts at --lr when stage 2 (all parameters) begins, and falls within each stage."""
    source = Trainer(tiny(seg_data, tmp_path / "2d", model="mc-gcn", patch=(32, 32, 3), epochs=1), progress=False)
    source.fit()
    init = transfer_checkpoint(tmp_path / "2d" / "checkpoint_latest.pt", tmp_path / "init.pt")
    result = Trainer(tiny(seg_data, tmp_path / "3d", init=str(init), stage1_epochs=2, epochs=2, lr=1e-3,
                          lr_schedule="poly"), progress=False).fit()
    lrs = [h["lr"] for h in result["history"]]
    # 3 steps an epoch: the last steps of epochs 1-2 of each stage are steps 2 and 5 of 6
    expected = [1e-3 * (1 - 2 / 6) ** 0.9, 1e-3 * (1 - 5 / 6) ** 0.9] * 2
    assert lrs == pytest.approx(expected, rel=1e-9)
    constant = Trainer(tiny(seg_data, tmp_path / "c", epochs=1), progress=False).fit()
    assert constant["history"][0]["lr"] == 1e-3


@pytest.mark.timeout(120)
def test_constructing_a_trainer_writes_nothing_and_fit_writes_the_run(seg_data, tmp_path):
    # Issue 16: the constructor reads and builds; the run folder and its files come from fit() alone
    # (RunFiles), so a trainer can be built to inspect a configuration without leaving anything behind.
    out = tmp_path / "runs" / "a"
    trainer = Trainer(tiny(seg_data, out, epochs=1), progress=False)
    assert not out.parent.exists()
    trainer.fit()
    assert {"checkpoint_latest.pt", "checkpoint_best.pt", "config.json", "metrics.jsonl",
            "training_curve.png"} <= {p.name for p in out.iterdir()}
    assert trainer.dist.device == torch.device("cpu") and trainer.dist.world == 1


def test_run_state_keeps_the_later_of_tied_epochs_and_round_trips(tmp_path):
    # Issue 16: a run's state is one object; a checkpoint of it restores the same state.
    from ahnet.losses import LossSchedule
    from ahnet.training.run_state import RunState

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters())
    state = RunState(LossSchedule("l2", switch_epoch=0))
    assert state.finish_epoch({"epoch": 0, "val_metric": 0.0}) and state.finish_epoch({"epoch": 1, "val_metric": 0.0})
    assert not state.finish_epoch({"epoch": 2, "val_metric": -1.0}) and not state.finish_epoch({"epoch": 3})
    state.loss.end_epoch(0, 1.0)
    saved = state.checkpoint(model, optimizer, stage=0)
    torch.save(saved, tmp_path / "c.pt")
    other = RunState(LossSchedule("l2", switch_epoch=0))
    other.restore(torch.load(tmp_path / "c.pt", weights_only=True), torch.nn.Linear(2, 1), tmp_path / "c.pt")
    assert (other.epoch, other.best_metric, other.history, other.loss.phase) == (4, 0.0, state.history, "focal")


def test_precise_batchnorm_changes_only_the_statistics(seg_data, tmp_path):
    # bn_batches: at the end of every epoch the batch norms' statistics are the plain average over fixed
    # training batches with the final weights. The weights train exactly as without it.
    runs = {}
    for n in (0, 2):
        trainer = Trainer(tiny(seg_data, tmp_path / str(n), bn_batches=n), progress=False)
        trainer.fit()
        runs[n] = trainer
    plain, precise = runs[0].model.state_dict(), runs[2].model.state_dict()
    weights = [k for k in plain if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.equal(plain[k], precise[k]) for k in weights)
    means = [k for k in plain if k.endswith("running_mean")]
    assert any(not torch.equal(plain[k], precise[k]) for k in means)
    # The saved statistics are those of the fixed batches under the final weights.
    trainer = runs[2]
    saved = load_checkpoint(tmp_path / "2" / "checkpoint_latest.pt", kind="train")["model"]
    batches = trainer._batchnorm_batches()
    assert len(batches) == 2
    norms = [m for m in trainer.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    trainer.model.train()
    with torch.no_grad():
        for images in batches:
            trainer.model(images)
    again = trainer.model.state_dict()
    assert all(torch.allclose(saved[k], again[k], rtol=1e-5, atol=1e-6) for k in means)


def test_bn_batches_must_not_be_negative(seg_data, tmp_path):
    with pytest.raises(ConfigError, match="bn_batches"):
        tiny(seg_data, tmp_path, bn_batches=-1)


def test_fixed_batches_are_the_indexed_patches_stacked(seg_data, tmp_path):
    trainer = Trainer(tiny(seg_data, tmp_path / "run"), progress=False)
    data = trainer._loader(trainer.train_cases, 5, 7, 0, augment=True, positive_ratio=0.7)
    batches = data.fixed_batches(2)
    assert [len(b["image"]) for b in batches] == [2, 2, 1]
    assert torch.equal(batches[1]["image"][1], data[3]["image"]) and torch.equal(batches[2]["target"][0], data[4]["target"])
