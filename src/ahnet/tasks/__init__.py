"""The tasks ahnet learns, as objects: segmentation (``"seg"``) and detection (``"det"``).

Everything that differs between them - a case's training target and the locations positive patches
centre on, the loss, the validation metric, the prediction's files, the evaluation, the report, the
demo's baseline and the experiments' columns - is a method of the task (:class:`Task`); every other
module asks :func:`task_for` with the name a data set, preprocessing, plan or checkpoint stores.
docs/tasks.md shows how to add one.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .base import OutputOptions, PredictionWriter, Task
from .detection import DetectionTask
from .segmentation import SegmentationTask

#: Every known task by name (the name files store).
TASKS: dict[str, Task] = {task.name: task for task in (SegmentationTask(), DetectionTask())}


def task_for(name: str) -> Task:
    """The task called ``name``; :class:`ConfigError` naming the known ones otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {name!r}") from None


def dataset_task(root: str | Path) -> Task:
    """The task of a data set folder: detection where it holds boxes (``boxesTr.json``, a link included),
    segmentation otherwise."""
    boxes = Path(root) / "boxesTr.json"
    return TASKS["det"] if boxes.exists() or boxes.is_symlink() else TASKS["seg"]


__all__ = ["DetectionTask", "OutputOptions", "PredictionWriter", "SegmentationTask", "TASKS", "Task",
           "dataset_task", "task_for"]
