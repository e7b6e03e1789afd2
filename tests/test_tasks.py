"""The task registry: names in files, objects everywhere else (docs/tasks.md)."""

import re
from pathlib import Path

import pytest

from ahnet.errors import ConfigError
from ahnet.tasks import TASKS, DetectionTask, SegmentationTask, dataset_task, task_for

from datasets import make_det_dataset, make_seg_dataset

SRC = Path(__file__).resolve().parents[1] / "src" / "ahnet"


def test_names_find_their_tasks_and_an_unknown_name_lists_the_known_ones():
    assert isinstance(task_for("seg"), SegmentationTask) and isinstance(task_for("det"), DetectionTask)
    assert all(task_for(name).name == name for name in TASKS)
    with pytest.raises(ConfigError, match="task must be one of seg, det, got 'cls'"):
        task_for("cls")


def test_a_data_set_with_boxes_is_a_detection_set(tmp_path):
    assert dataset_task(make_seg_dataset(tmp_path / "seg")).name == "seg"
    assert dataset_task(make_det_dataset(tmp_path / "det")).name == "det"


def test_only_the_tasks_and_the_command_line_compare_task_names():
    """Everything else asks the task: no ``== "seg"`` / ``!= "det"`` anywhere but in ahnet.tasks."""
    comparison = re.compile(r"""[!=]=\s*["'](seg|det)["']|["'](seg|det)["']\s*[!=]=|in \(["'](seg|det)["']""")
    found = [f"{path.relative_to(SRC)}:{n}" for path in SRC.rglob("*.py") if "tasks" not in path.parts
             for n, line in enumerate(path.read_text().splitlines(), 1) if comparison.search(line)]
    assert not found
