"""The task registry: names in files, objects everywhere else (docs/tasks.md)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

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


def _heatmap_batch(shape=(24, 24, 6)):
    """Two patches of Eq. 5 heatmaps on a 1 x 1 x 2 mm grid: one with two lesions, one negative."""
    from ahnet.data.heatmap import gaussian_heatmap

    two = gaussian_heatmap(shape, [(2, 2, 1, 7, 7, 3), (14, 12, 2, 21, 19, 5)])
    none = np.zeros(shape, np.float32)
    return {"image": torch.from_numpy(np.stack([two, none]))[:, None],
            "target": torch.from_numpy(np.stack([two, none]))[:, None],
            "spacing": torch.tensor([[1.0, 1.0, 2.0]] * 2, dtype=torch.float64)}


class _Output(torch.nn.Module):
    """Gives back a fixed function of its input: the validation's model."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def test_detection_validation_is_a_froc_of_the_patches():
    task, batch = DetectionTask(), _heatmap_batch()
    cpu = torch.device("cpu")
    perfect = task.validate(_Output(lambda x: x), [batch], cpu, {})
    assert perfect["val_metric"] == 1.0 and perfect["val_lesions"] == 2
    # A peak outside both lesions, above their responses: every TPR needs one false positive (0.5 per patch).
    def with_false_peak(x):
        y = x.clone()
        y[0, 0, 12, 2, 0] = 2.0
        return y
    one_fp = task.validate(_Output(with_false_peak), [batch], cpu, {})
    assert one_fp["val_froc"]["0.25"] == 0.0 and one_fp["val_froc"]["0.5"] == 1.0
    assert 0.0 < one_fp["val_metric"] < 1.0
    # Flat output: nothing found.
    assert task.validate(_Output(torch.zeros_like), [batch], cpu, {})["val_metric"] == 0.0


@pytest.mark.parametrize("box", [(4, 6, 2, 11, 13, 5), (3, 3, 1, 4, 20, 1), (10, 0, 0, 29, 9, 7)])
def test_lesion_boxes_are_the_boxes_the_heatmap_was_made_from(box):
    from ahnet.data.heatmap import gaussian_heatmap
    from ahnet.tasks.detection import lesion_boxes

    heatmap = gaussian_heatmap((30, 30, 8), [box])
    assert lesion_boxes(heatmap) == [list(box)]
    for z in range(box[2], box[5] + 1):  # every slice through the box holds its in-plane extent
        assert lesion_boxes(heatmap[..., z]) == [list(box[:2]) + [0] + list(box[3:5]) + [0]]
    outside = [z for z in range(8) if not box[2] - 1 <= z <= box[5] + 1]
    assert all(lesion_boxes(heatmap[..., z]) == [] for z in outside)


def test_two_lesions_are_two_boxes():
    from ahnet.data.heatmap import gaussian_heatmap
    from ahnet.tasks.detection import lesion_boxes

    boxes = [(2, 2, 1, 7, 7, 3), (14, 12, 2, 21, 19, 5)]
    assert sorted(lesion_boxes(gaussian_heatmap((24, 24, 6), boxes))) == sorted(list(b) for b in boxes)
