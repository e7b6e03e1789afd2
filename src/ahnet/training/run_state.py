"""Where a training run stands, as a checkpoint saves it and ``--resume`` restores it (bit-exact)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..losses import LossSchedule
from .checkpoint import load_model_state, rng_state, set_rng_state


@dataclass
class RunState:
    """The epoch to run next, the loss schedule (its phase), the gradient scaler, the best validation
    value and every finished epoch's record. With the model, the optimiser and the random generators
    (:meth:`checkpoint`) it is all a resumed run needs to continue exactly where it stopped."""

    loss: LossSchedule
    scaler: torch.amp.GradScaler | None = None
    epoch: int = 0
    best_metric: float = -math.inf
    history: list[dict[str, Any]] = field(default_factory=list)

    def finish_epoch(self, record: dict[str, Any]) -> bool:
        """Keep ``record`` and move on to the next epoch; True when its ``val_metric`` is the best so
        far. A tie goes to the later, longer-trained epoch (a detection metric often stays 0 for the
        first epochs: the best must not stay the first one)."""
        self.history.append(record)
        value = record.get("val_metric")  # None without validation cases
        improved = value is not None and value >= self.best_metric
        if improved:
            self.best_metric = value
        self.epoch += 1
        return improved

    def checkpoint(self, model: nn.Module, optimizer: torch.optim.Optimizer, stage: int, **extra) -> dict[str, Any]:
        """The state with the model, the optimiser (of stage number ``stage``) and the random generators,
        as plain data (``extra``: e.g. the step reached within an interrupted epoch)."""
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None, "epoch": self.epoch, "stage": stage,
                "loss_schedule": self.loss.state_dict(), "best_metric": self.best_metric, "rng": rng_state(),
                "history": self.history, **extra}

    def restore(self, saved: dict[str, Any], model: nn.Module, source: str | Path) -> None:
        """Everything :meth:`checkpoint` saved except the optimiser, which the stage's loop restores once
        it has built it; ``source`` names the file in errors."""
        load_model_state(model, saved["model"], source)
        self.epoch = int(saved["epoch"])
        self.loss.load_state_dict(saved["loss_schedule"])
        self.best_metric = float(saved["best_metric"])
        self.history = list(saved.get("history", []))
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
