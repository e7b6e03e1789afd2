"""The files of a training run, written by rank 0 only, each atomically (a kill leaves at most a
stale temporary file, removed when the run starts again)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text, ensure_output_dir, remove_stale_temps
from .checkpoint import copy_checkpoint, save_checkpoint

#: Files of a run folder.
RUN_FILES = ("checkpoint_latest.pt", "checkpoint_best.pt", "config.json", "metrics.jsonl", "training_curve.png")
#: The training curve is redrawn at most this often (and at the end of a run): drawing it takes
#: about a second, which short epochs would otherwise spend mostly plotting.
CURVE_INTERVAL_S = 30.0


class RunFiles:
    """Checkpoints, ``metrics.jsonl``, ``training_curve.png`` and ``config.json`` of the run in ``out``.

    Nothing is written before :meth:`start`; a run that fails before its first checkpoint is removed
    by :meth:`remove_partial` (the folder too, when the run created it).
    """

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.latest, self.best = self.out / "checkpoint_latest.pt", self.out / "checkpoint_best.pt"
        self.created = not self.out.exists()
        self._curve_drawn_at = -math.inf

    def check_writable(self) -> None:
        """Create the folder and make sure it takes files (a clear error before any work)."""
        ensure_output_dir(self.out, "run folder")

    def start(self, record: dict[str, Any]) -> None:
        """The folder, without an earlier run's stale temporaries, and ``config.json`` (``record``)."""
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.out, RUN_FILES)
        atomic_write_text(self.out / "config.json", json.dumps(record, indent=2))

    def save_latest(self, payload: dict[str, Any]) -> None:
        save_checkpoint(self.latest, payload)

    def write_epoch(self, payload: dict[str, Any], history: list[dict[str, Any]], best: bool) -> None:
        """An epoch's checkpoint (also the best one when ``best``), metrics and, now and then, curve."""
        self.save_latest(payload)
        if best:
            copy_checkpoint(self.latest, self.best)
        self.write_metrics(history)
        if time.monotonic() - self._curve_drawn_at >= CURVE_INTERVAL_S:
            self.draw_curve(history)

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """``metrics.jsonl``, rewritten whole from the history (which the checkpoint holds), so that
        after a kill and ``--resume`` every epoch is in it exactly once."""
        atomic_write_text(self.out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))

    def draw_curve(self, history: list[dict[str, Any]]) -> None:
        from .curves import plot_training_curve

        plot_training_curve(history, self.out / "training_curve.png")
        self._curve_drawn_at = time.monotonic()

    def describe_saved(self) -> str:
        """What a forced stop leaves behind (the watchdog's message; see :mod:`.stopping`)."""
        if not self.latest.exists():
            return f"No checkpoint was written yet in {self.out}: nothing to resume; start the run again."
        written = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.latest.stat().st_mtime))
        return (f"{self.latest} (written {written}) holds the run up to its last saved step; "
                f"continue with --resume --out {self.out}.")

    def remove_partial(self) -> None:
        """A run that failed before its first checkpoint leaves nothing behind."""
        if self.latest.exists():
            return
        for name in ("config.json", "metrics.jsonl", "training_curve.png"):
            (self.out / name).unlink(missing_ok=True)
        if self.created:
            try:
                self.out.rmdir()
            except OSError:
                pass
