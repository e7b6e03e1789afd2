"""One trainer for every network (MC-GCN, AH-Net and the U-Net baselines), built by composition.

A run is a list of stages (§3.4): with a transferred encoder, stage 1 trains the decoder with the
encoder locked, stage 2 trains all parameters jointly; otherwise one joint stage. Each stage uses
Adam with beta (0.9, 0.999), eps 1e-8 (§4). The loss starts as cross-entropy (segmentation) or L2
(heatmaps) and switches to its focal form when it stops improving (:class:`~ahnet.losses.LossSchedule`);
the data set's task (:mod:`ahnet.tasks`) gives the loss, the outputs and the validation metric.

Each epoch: ``iters_per_epoch`` batches of patches sampled online in DataLoader workers, a
validation on fixed held-out patches, a line in ``metrics.jsonl``, ``training_curve.png``, and
``checkpoint_latest.pt`` (plus ``checkpoint_best.pt`` when validation improves), all written
atomically by rank 0. Under ``torchrun`` the same code trains data-parallel (DDP).

The trainer composes: the task (targets, loss, validation), a :class:`~.run_state.RunState` (where the
run stands, saved and restored whole), :class:`~.run_files.RunFiles` (the run folder, written from
:meth:`Trainer.fit` only) and :class:`~ahnet.distributed.Distributed` (device, ranks); it runs the loop.
"""

from __future__ import annotations

import json
import signal
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..data.dataset import CaseFiles, DatasetInfo, load_dataset
from ..data.intensity import Intensity
from ..data.preprocessing import CaseLoader, Preprocessing
from ..data.sampling import IntensityAugment, PatchDataset, check_cases
from ..data.store import PreprocessedStore, StoredCaseLoader
from ..distributed import Distributed
from ..errors import AhnetError, CheckpointError, ConfigError, DataError
from ..losses import LossSchedule
from ..memory import keep_freed_memory
from ..models.factory import build_model, model_meta, model_from_meta
from ..models.imagenet import IMAGENET
from ..tasks import task_for
from .checkpoint import load_checkpoint, load_model_state
from .config import TrainConfig, scheduled_lr
from .patch_stream import PatchStream
from .run_files import RunFiles
from .run_state import RunState
from .stopping import StopSignals

ADAM_BETAS = (0.9, 0.999)  # §4
ADAM_EPS = 1e-8
#: MC-GCN's premise (§3.1) is an ImageNet-trained encoder; training it from random weights is allowed
#: (e.g. on phantoms) but should never happen unnoticed.
RANDOM_ENCODER_WARNING = (
    "MC-GCN's ResNet encoder starts from random weights, although the paper's MC-GCN (§3.1) starts from "
    "ImageNet weights; pass --pretrained imagenet (torchvision's weights via torch hub's cache) or "
    "--pretrained FILE (a local torchvision-format file)")


def _duration(seconds: float) -> str:
    """``1h02m``, ``3m20s`` or ``12s``: an ETA a person reads at a glance."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


#: Settings a resumed run may change: where it runs, its logging, and how long its last stage lasts.
RESUME_CHANGES = ("device", "workers", "tensorboard", "epochs", "lean_memory", "recompute")


def resumed_config(saved: dict[str, Any], changes: dict[str, Any]) -> TrainConfig:
    """A saved run's configuration with ``changes`` applied where that is sound: ``epochs`` may grow
    (the last stage goes on) but not below what is done; any other setting must equal the run's,
    since the checkpoint, the split and the schedule were made with it. Never silently ignored."""
    config = saved["config"]
    refused = [f"--{k.replace('_', '-')} {v!r} (the run has {config.get(k)!r})" for k, v in changes.items()
               if k not in RESUME_CHANGES and _normalised(k, v) != _normalised(k, config.get(k))]
    if refused:
        raise ConfigError(f"--resume continues the run with its own settings and cannot change {', '.join(refused)}; "
                          "start a new run in another --out (--config RUN/config.json copies the rest)")
    epochs = changes.get("epochs", config["epochs"])
    done = int(saved["epoch"]) - int(config.get("stage1_epochs") or 0)
    if epochs < max(done, 0):
        raise ConfigError(f"--epochs {epochs}: the run has already trained {done} epoch(s) of that stage")
    return TrainConfig.from_dict({**config, **{k: v for k, v in changes.items() if k in RESUME_CHANGES}})


def _normalised(key: str, value: Any) -> Any:
    """Compare a command line's tuples with a checkpoint's JSON lists, and paths as the files they name."""
    if key == "pretrained" and value == IMAGENET:  # torchvision's weights, not a file named "imagenet"
        return value
    if key in ("data", "init", "pretrained", "preprocessed") and value:
        return str(Path(value).resolve())
    return list(value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class Stage:
    name: str
    epochs: int
    encoder_frozen: bool


@dataclass
class StageRun:
    """A stage in progress: its number, the model as it steps (DDP-wrapped under torchrun) and the
    optimiser of the parameters it trains."""

    index: int
    stage: Stage
    model: nn.Module
    optimizer: torch.optim.Optimizer


@dataclass
class ResumePoint:
    """Where a resumed run goes on: the stage whose optimiser state was saved, and within the epoch the
    step reached with the loss summed so far (0 and 0.0 after a completed epoch)."""

    stage: int
    optimizer: dict[str, Any]
    step: int = 0
    loss_sum: float = 0.0


def split_cases(cases: list[CaseFiles], val_fraction: float, seed: int, folds: int = 1,
                fold: int = 0) -> tuple[list[CaseFiles], list[CaseFiles]]:
    """A seeded split into training and validation cases (at least one of each when possible).

    With ``folds`` K > 1, the seeded order is cut into K near-equal folds and fold ``fold`` is the
    validation set, so the K runs of a cross-validation validate on every case exactly once.

    Stratified: negative volumes (detection cases without a box) and positive ones are spread over the
    training and validation sets in proportion, so that validation never holds only negatives (its FROC
    would then be 0 whatever the network does). The seeded order interleaves the groups: each case
    stands at its rank within its group, scaled to the group's size. With one group (segmentation, or
    detection without negatives) that order is the seeded permutation itself.
    """
    order = np.random.default_rng(seed).permutation(len(cases))
    groups = [_split_group(cases[i]) for i in order]
    sizes = {g: groups.count(g) for g in set(groups)}
    seen = dict.fromkeys(sizes, 0)
    position = []
    for g in groups:
        position.append((seen[g] + 0.5) / sizes[g])
        seen[g] += 1
    order = order[np.argsort(position, kind="stable")]
    if folds > 1:
        if folds > len(cases):
            raise ConfigError(f"{folds} folds need at least {folds} cases; the data set has {len(cases)}")
        held = set(np.array_split(order, folds)[fold].tolist())
    else:
        n_val = min(len(cases) - 1, max(1, round(val_fraction * len(cases)))) if val_fraction > 0 else 0
        held = set(order[:n_val].tolist())
    val = sorted((c for i, c in enumerate(cases) if i in held), key=lambda c: c.name)
    train = sorted((c for i, c in enumerate(cases) if i not in held), key=lambda c: c.name)
    return train, val


def _split_group(case: CaseFiles) -> str:
    return "negative" if case.boxes is not None and not case.boxes else "positive"


class Trainer:
    """Trains ``config.model`` on the data set in ``config.data``; see the module docstring."""

    def __init__(self, config: TrainConfig, resume: bool = False, progress: bool = True,
                 changes: dict[str, Any] | None = None):
        """``resume``: continue the run in ``config.out`` with its own configuration, except where
        it runs (``device``, ``workers``) and ``changes``: settings the user asked for, applied
        where sound (:data:`RESUME_CHANGES`), refused otherwise (see :func:`resumed_config`)."""
        self.out = Path(config.out)
        if resume:
            latest = self.out / "checkpoint_latest.pt"
            saved = load_checkpoint(latest, kind="train")
            config = resumed_config(saved, {"device": config.device, "workers": config.workers, **(changes or {})})
            self._resume_from = saved
        else:
            self._resume_from = None
        self.config = config
        self.progress = progress
        self.dist = Distributed(config.device)
        self.info: DatasetInfo = load_dataset(config.data)
        self.task = task_for(self.info.task)
        # Every file header, before anything is built or written: a broken case fails now, not hours in.
        if config.preprocessed:
            store = PreprocessedStore(config.preprocessed)
            self.preprocessing = store.preprocessing()
            store.check(self.info.cases, self.preprocessing)
            self._case_loader = StoredCaseLoader(config.preprocessed)
        else:
            self.preprocessing = Preprocessing(self.info.task,
                                               Intensity.for_modality(self.info.modality, config.window),
                                               config.inplane_spacing, config.sigma_scale)
            self._case_loader = CaseLoader(self.info, self.preprocessing, config.seed)
        check_cases(self.info.cases, config.patch, f"{config.spatial_dims}d", self.preprocessing.inplane_spacing,
                    self.preprocessing.z_spacing)
        self.train_cases, self.val_cases = split_cases(self.info.cases, config.val_fraction, config.seed,
                                                         config.folds, config.fold)
        if resume:  # the cases the run started with, even where the rule of the split has changed since
            self.train_cases, self.val_cases = self._recorded_split(self._resume_from)
        out_channels = self.task.out_channels(self.info.labels)
        channels = len(self.info.channel_names)
        torch.manual_seed(config.seed)
        if config.init:
            init = load_checkpoint(config.init, kind="transfer")
            meta = init["model_meta"]
            for key in ("model", "backbone", "preset"):
                if meta[key] != getattr(config, key):
                    raise CheckpointError(
                        f"{config.init}: transferred into a {meta['model']} with {key} {meta[key]!r}, but this "
                        f"run asks for {key} {getattr(config, key)!r}; use --{key} {meta[key]} or transfer again")
            if meta["image_channels"] != channels or meta["out_channels"] != out_channels:
                raise ConfigError(
                    f"{config.init}: transferred for {meta['image_channels']} channel(s) and "
                    f"{meta['out_channels']} output(s); this data set needs {channels} and {out_channels}")
            self.model = model_from_meta(meta)
            load_model_state(self.model, init["model"], config.init)
        else:
            meta = model_meta(config.model, channels, out_channels, config.backbone, config.preset, config.options)
            self.model = build_model(config.model, channels, out_channels, config.backbone, config.preset,
                                     pretrained=config.pretrained, options=config.options)
            if config.model == "mc-gcn" and not config.pretrained and not resume and self.dist.main:
                warnings.warn(RANDOM_ENCODER_WARNING, UserWarning, stacklevel=2)
        if config.recompute:
            if not hasattr(self.model, "recompute"):
                raise ConfigError(f"--recompute is implemented for AH-Net, not for {config.model}")
            self.model.recompute = True
        self.meta = meta
        self.files = RunFiles(self.out)  # nothing is written before fit()
        self.model.to(self.dist.device)
        self.stages = ([Stage("decoder", config.stage1_epochs, True)] if config.stage1_epochs else []) + (
            [Stage("joint", config.epochs, False)] if config.epochs else [])
        self.amp_dtype, scaler = self._amp()
        self.state = RunState(self.task.loss(config), scaler)
        self._stop: StopSignals | None = None
        self._tensorboard = None

    def _recorded_split(self, saved: dict[str, Any]) -> tuple[list[CaseFiles], list[CaseFiles]]:
        """The training and validation cases of the run being resumed: as its checkpoint names them, or
        its ``config.json`` for checkpoints written before they did; the split computed now otherwise."""
        split = saved.get("split")
        if split is None:
            try:
                record = json.loads((self.out / "config.json").read_text())
                split = {"train": record["train_cases"], "val": record["val_cases"]}
            except (OSError, ValueError, KeyError):
                return self.train_cases, self.val_cases
        by_name = {c.name: c for c in self.info.cases}
        missing = [name for name in split["train"] + split["val"] if name not in by_name]
        if missing:
            raise DataError(f"--resume: the run trained on case(s) {', '.join(missing[:5])} that {self.config.data} "
                            "no longer has; restore them or start a new run")
        return [by_name[n] for n in split["train"]], [by_name[n] for n in split["val"]]

    @property
    def epoch(self) -> int:
        """The next epoch to run (:class:`RunState`)."""
        return self.state.epoch

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.state.history

    @property
    def loss(self) -> LossSchedule:
        return self.state.loss

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self.state.scaler

    # -- set-up -------------------------------------------------------------------------------
    def _amp(self) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
        """bf16 autocast, or fp16 with a gradient scaler; ``auto`` uses them on CUDA only."""
        mode, device = self.config.amp, self.dist.device.type
        if mode == "none" or (mode == "auto" and device != "cuda"):
            return None, None
        if mode == "fp16" and device != "cuda":
            raise ConfigError("--amp fp16 needs a CUDA device; use bf16 or none on the CPU")
        if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
            return torch.bfloat16, None
        return torch.float16, torch.amp.GradScaler("cuda")

    def _loader(self, cases: list[CaseFiles], samples: int, seed: int, rank: int, augment: bool,
                positive_ratio: float) -> PatchDataset:
        # Stored cases are memory-mapped: every one stays open (the pages are the system's cache, not ours).
        cache = len(cases) if self.config.preprocessed else 8
        intensity = None
        if augment and self.config.intensity_augment:
            ranges = [self.preprocessing.channel_intensity(c).value_range for c in range(len(self.info.channel_names))]
            intensity = IntensityAugment(value_ranges=ranges)
        return PatchDataset(cases, self._case_loader, self.config.patch, samples, seed=seed, rank=rank,
                            positive_ratio=positive_ratio, mode=f"{self.config.spatial_dims}d", augment=augment,
                            cache_size=cache, intensity=intensity)

    def _stage_at(self, epoch: int) -> tuple[int, Stage]:
        start = 0
        for i, stage in enumerate(self.stages):
            if epoch < start + stage.epochs:
                return i, stage
            start += stage.epochs
        return len(self.stages) - 1, self.stages[-1]

    def _set_trainable(self, stage: Stage) -> list[nn.Parameter]:
        model = self.model
        if stage.encoder_frozen:
            model.encoder.requires_grad_(False)
            params = model.decoder_parameters()
        else:
            for name, p in model.named_parameters():
                p.requires_grad_(not name.startswith("unused_conv"))
            params = [p for p in model.parameters() if p.requires_grad]
        return params

    def _train_mode(self, stage: Stage) -> None:
        self.model.train()
        if stage.encoder_frozen:
            self.model.encoder.eval()  # locked: batch-norm statistics stay the transferred ones

    # -- the run --------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to the end, or until SIGINT / SIGTERM: then the current step is finished,
        ``checkpoint_latest.pt`` saved (``--resume`` continues exactly there) and the result's
        ``interrupted`` names the signal."""
        resuming = self._resume_from is not None
        had_checkpoint = (self.out / "checkpoint_latest.pt").exists()
        if self.dist.main:
            self.files.check_writable()
        if self.dist.device.type == "cpu" and not self.config.lean_memory:
            keep_freed_memory()
        try:
            with StopSignals(self._describe_saved) as self._stop:
                return self._fit()
        except AhnetError:
            if self.dist.main and not resuming and not had_checkpoint:
                self.files.remove_partial()
            raise
        finally:
            self._stop = None

    def _describe_saved(self) -> str:
        """What a forced stop leaves behind (the watchdog's message; see :mod:`.stopping`)."""
        return self.files.describe_saved() if self.dist.main else ""

    def _fit(self) -> dict[str, Any]:
        config, d = self.config, self.dist
        if d.main:
            self.files.start(self._run_record())
        train_set = self._loader(self.train_cases, config.iters_per_epoch * config.batch_size, config.seed, d.rank,
                                 config.augment, config.positive_ratio)
        self._open_tensorboard()
        try:
            with PatchStream(train_set, config.batch_size, config.workers,
                             pin_memory=d.device.type == "cuda") as stream:
                return self._run_epochs(stream)
        finally:
            if self._tensorboard is not None:
                self._tensorboard.close()

    def _run_epochs(self, stream: PatchStream) -> dict[str, Any]:
        """Epoch after epoch to the end of the last stage, or to a stop signal (saved where it stands)."""
        d = self.dist
        val_batches = self._validation_batches() if d.main and self.val_cases else []
        bn_batches = self._batchnorm_batches() if d.main else []
        resume = self._restore()
        total = sum(s.epochs for s in self.stages)
        if self.epoch < total:
            stream.start(self.epoch, resume.step if resume else 0, epochs=total - self.epoch)
        run, interrupted = None, None
        while self.epoch < total:
            index, stage = self._stage_at(self.epoch)
            if run is None or run.index != index:
                run = self._start_stage(index, stage, resume)
            start = time.time()
            loss_sum, steps, complete = self._train_epoch(run, stream, resume)
            resume = None
            if not complete:
                interrupted = self._save_interrupted(run, loss_sum, steps)
                break
            self._finish_epoch(run, loss_sum / max(steps, 1), val_batches, bn_batches, start, total)
            if self.epoch < total and self._stop_requested():
                interrupted = self._signal_name()
                break
        if d.main and self.history:
            self.files.draw_curve(self.history)
        return {"epochs": self.epoch, "best_metric": self.state.best_metric, "history": self.history,
                "interrupted": interrupted}

    def _restore(self) -> ResumePoint | None:
        """With ``--resume``: the saved state restored (used up here, once), and where the loop goes on."""
        saved, self._resume_from = self._resume_from, None
        if saved is None:
            return None
        self.state.restore(saved, self.model, self.out / "checkpoint_latest.pt")
        if self.dist.main and self.history:  # the log may lag behind the checkpoint after a kill
            self.files.write_metrics(self.history)
        loss_sum = (saved.get("epoch_loss") or (0.0, 0))[0]
        return ResumePoint(int(saved["stage"]), saved["optimizer"], int(saved.get("iteration", 0)), float(loss_sum))

    def _start_stage(self, index: int, stage: Stage, resume: ResumePoint | None) -> StageRun:
        params = self._set_trainable(stage)
        model = self.dist.wrap(self.model)
        # Fused: one kernel for every parameter (51 -> 10 ms a step for the ResNet-18 AH-Net on 2 CPU
        # cores); the same update up to rounding.
        optimizer = torch.optim.Adam(params, lr=self.config.lr, betas=ADAM_BETAS, eps=ADAM_EPS,
                                     fused=self.dist.device.type in ("cpu", "cuda"))
        if resume is not None and resume.stage == index:
            optimizer.load_state_dict(resume.optimizer)
        return StageRun(index, stage, model, optimizer)

    def _save_interrupted(self, run: StageRun, loss_sum: float, steps: int) -> str:
        """A stop signal within an epoch: the checkpoint at the step reached; the signal's name."""
        if self.dist.main:
            self.files.save_latest(self._payload(run.optimizer, run.index, iteration=steps,
                                                 epoch_loss=[loss_sum, steps]))
        self.dist.barrier()
        return self._signal_name()

    def _finish_epoch(self, run: StageRun, train_loss: float, val_batches: list, bn_batches: list,
                      start: float, total: int) -> None:
        """The epoch's end: batch-norm statistics, the loss schedule, validation, its record and files."""
        d = self.dist
        train_loss = d.mean(train_loss)
        if d.main:
            self._reestimate_batchnorm(run.stage, bn_batches)
        d.sync_buffers(self.model)
        phase = self.loss.phase
        switched = self.loss.end_epoch(self.epoch, train_loss)
        record = {"epoch": self.epoch, "stage": run.stage.name, "loss_phase": phase,
                  "train_loss": train_loss, "switched_to_focal": switched, "time_s": 0.0,
                  "lr": run.optimizer.param_groups[0]["lr"]}  # that of the epoch's last step
        if d.main:
            record.update(self._validate(val_batches))
            record["time_s"] = round(time.time() - start, 3)
            improved = self.state.finish_epoch(record)
            self._report_epoch(record, total)
            self.files.write_epoch(self._payload(run.optimizer, run.index), self.history,
                                   best=improved or not val_batches)
        else:
            self.state.epoch += 1
        d.barrier()

    def _report_epoch(self, record: dict[str, Any], total: int) -> None:
        """One line per epoch that stays on screen and in logs (bars are for terminals only), and
        the same scalars in TensorBoard when asked for."""
        done = [h["time_s"] for h in self.history[-5:]]
        eta = (total - record["epoch"] - 1) * sum(done) / len(done)
        value = record.get("val_metric")
        best = max((h.get("val_metric") for h in self.history if h.get("val_metric") is not None), default=None)
        if value is None:
            validation = "no validation"
        else:
            name = self.task.metric_name
            best_epoch = max(h["epoch"] for h in self.history if h.get("val_metric") == best)
            validation = f"{name} {value:.4f} (best {best:.4f}, epoch {best_epoch + 1})"
        if self.progress:
            loss = {"ce": "cross-entropy", "l2": "L2"}.get(self.loss.base, self.loss.base)
            loss = "focal" if record["loss_phase"] == "focal" else loss
            loss = f"{loss} + Dice" if self.loss.dice else loss
            print(f"epoch {record['epoch'] + 1}/{total} {record['stage']} ({loss} loss): "
                  f"train loss {record['train_loss']:.4g}, {validation}, {record['time_s']:.1f} s, "
                  f"ETA {_duration(eta)}", flush=True)
        if self._tensorboard is not None:
            step = record["epoch"] + 1
            self._tensorboard.add_scalar("train/loss", record["train_loss"], step)
            if value is not None:
                self._tensorboard.add_scalar("val/metric", value, step)
            for cls, dice in (record.get("val_dice") or {}).items():
                self._tensorboard.add_scalar(f"val/dice/{cls}", dice, step)
            self._tensorboard.add_scalar("time/epoch_s", record["time_s"], step)
            self._tensorboard.flush()

    def _open_tensorboard(self) -> None:
        self._tensorboard = None
        if not (self.config.tensorboard and self.dist.main):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        self._tensorboard = SummaryWriter(str(self.out / "tensorboard"))

    def _stop_requested(self) -> bool:
        """Whether SIGINT / SIGTERM arrived (on any rank: all ranks stop at the same step)."""
        flag = self.dist.any(self._stop is not None and self._stop.signum is not None)
        if flag and self._stop is not None:
            self._stop.acknowledge()
        return flag

    def _signal_name(self) -> str:
        signum = self._stop.signum if self._stop is not None and self._stop.signum else signal.SIGTERM
        return signal.Signals(signum).name

    def _lr_at(self, stage: Stage, step_in_epoch: int) -> float:
        """The configured schedule's rate at this step: a function of the position in the stage
        alone, so a resumed run continues on the same curve."""
        per_epoch = self.config.iters_per_epoch
        first = sum(s.epochs for s in self.stages[: self.stages.index(stage)])
        step = (self.epoch - first) * per_epoch + step_in_epoch
        return scheduled_lr(self.config.lr, self.config.lr_schedule, step, stage.epochs * per_epoch)

    def _train_epoch(self, run: StageRun, stream: PatchStream,
                     resume: ResumePoint | None) -> tuple[float, int, bool]:
        """The epoch's steps (from the resumed step on); returns the loss summed over the epoch's steps,
        their number, and whether the epoch is complete (False when a signal stopped it)."""
        from tqdm import tqdm

        device, stage, optimizer = self.dist.device, run.stage, run.optimizer
        first = resume.step if resume else 0
        total, count = (resume.loss_sum if resume else 0.0), first
        self._train_mode(stage)
        bar = tqdm(range(first, stream.steps), desc=f"epoch {self.epoch} {stage.name} ({self.loss.phase} loss)",
                   initial=first, total=stream.steps, leave=False,
                   disable=None if self.progress and self.dist.main else True,  # None: on terminals only
                   dynamic_ncols=True)
        for _ in bar:
            batch = stream.next()
            step_start = time.monotonic()
            image = batch["image"].to(device, non_blocking=True)
            target = batch["target"].to(device, non_blocking=True)
            autocast = torch.autocast(device.type, self.amp_dtype) if self.amp_dtype else nullcontext()
            with autocast:
                output = run.model(image)
            loss = self.loss(output.float(), target)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {self.epoch}: the loss became {loss.item()}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            for group in optimizer.param_groups:
                group["lr"] = self._lr_at(stage, count)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(optimizer)
                self.scaler.update()
            else:
                loss.backward()
                optimizer.step()
            total += loss.item()
            count += 1
            if self._stop is not None:
                self._stop.note_step(time.monotonic() - step_start)
            bar.set_postfix(loss=f"{total / count:.4g}")
            if self._stop_requested():
                bar.close()
                return total, count, False
        return total, count, True

    # -- validation -----------------------------------------------------------------------------
    def _validation_batches(self) -> list[dict[str, torch.Tensor]]:
        """Fixed held-out patches (same every epoch), half of them positive."""
        config = self.config
        data = self._loader(self.val_cases, config.val_patches * len(self.val_cases), config.seed + 1, 0,
                            augment=False, positive_ratio=0.5)
        return data.fixed_batches(config.batch_size)

    def _batchnorm_batches(self) -> list[torch.Tensor]:
        """Fixed training images (augmented as in training) for :meth:`_reestimate_batchnorm`."""
        config = self.config
        if not config.bn_batches:
            return []
        data = self._loader(self.train_cases, config.bn_batches * config.batch_size, config.seed + 2, 0,
                            config.augment, config.positive_ratio)
        return [batch["image"] for batch in data.fixed_batches(config.batch_size)]

    @torch.no_grad()
    def _reestimate_batchnorm(self, stage: Stage, batches: list[torch.Tensor]) -> None:
        """Precise BN: the statistics of every batch norm trained in this stage, recomputed as the plain
        average over ``batches`` with the epoch's final weights. The running averages mix the statistics
        of many earlier weights; with small batches they can lag far enough that the network in
        evaluation mode (validation, the checkpoint, prediction) predicts nonsense. Training itself
        never reads them, so the steps are unchanged."""
        if not batches:
            return
        self._train_mode(stage)
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                 and m.track_running_stats]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        autocast = torch.autocast(self.dist.device.type, self.amp_dtype) if self.amp_dtype else nullcontext()
        for images in batches:
            with autocast:
                self.model(images.to(self.dist.device))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum

    @torch.no_grad()
    def _validate(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        if not batches:
            return {}
        self.model.eval()
        return self.task.validate(self.model, batches, self.dist.device, self.info.labels)

    # -- files ----------------------------------------------------------------------------------
    def _run_record(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "model_meta": self.meta,
                "preprocessing": self.preprocessing.to_dict(), "task": self.info.task,
                "stages": [s.__dict__ for s in self.stages],
                "train_cases": [c.name for c in self.train_cases], "val_cases": [c.name for c in self.val_cases],
                "world_size": self.dist.world, "device": str(self.dist.device)}

    def _payload(self, optimizer: torch.optim.Optimizer, stage: int, **extra) -> dict[str, Any]:
        """A checkpoint: the run's state (:meth:`RunState.checkpoint`) and what the run is."""
        return {"kind": "train", "model_meta": self.meta, "config": self.config.to_dict(),
                "preprocessing": self.preprocessing.to_dict(),
                "split": {"train": [c.name for c in self.train_cases], "val": [c.name for c in self.val_cases]},
                **self.state.checkpoint(self.model, optimizer, stage, **extra)}
