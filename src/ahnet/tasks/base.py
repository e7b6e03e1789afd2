"""The interface of a task: every step of ahnet that depends on what is learned asks one of these.

A task is known by its ``name``, which data sets (:class:`~ahnet.data.dataset.DatasetInfo`), the
:class:`~ahnet.data.preprocessing.Preprocessing`, plans and checkpoints store, so that files keep
loading whatever the objects become. Methods import what they need when called: the task modules are
imported by data, training and inference modules alike, and must import none of them at load time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

    from ..data.dataset import CaseFiles, DatasetInfo
    from ..data.preprocessing import Preprocessing
    from ..data.volume import Header, Volume
    from ..experiments import Column, Comparison, Scale
    from ..inference.predictor import Prediction
    from ..losses import LossSchedule
    from ..training.config import TrainConfig


@dataclass(frozen=True)
class OutputOptions:
    """What ``ahnet predict`` was asked to write; each task reads the options that concern it."""

    save_probabilities: bool
    nms_radius_mm: float | Sequence[float]
    threshold: float | None
    top_k: int


class PredictionWriter(ABC):
    """The files of one prediction run in ``out``: each case's as it is predicted, then the run's own."""

    #: files of the whole run, beside the cases' (their stale temporary files are removed too)
    run_files: tuple[str, ...] = ()

    def __init__(self, out: Path, options: OutputOptions):
        self.out, self.options = out, options

    @abstractmethod
    def names(self, case: str) -> list[str]:
        """A case's files: written atomically, so a case whose files all exist is complete."""

    @abstractmethod
    def add(self, case: str, reference: Header, prediction: Prediction | None) -> None:
        """Write the files of ``prediction``; ``None``: an earlier run wrote them (read what the run's own
        files need). ``reference`` is the header of the case's first input channel."""

    def finish(self) -> int:
        """Write the run's own files once every case is added; returns the detections they list."""
        return 0


class Task(ABC):
    """What differs between tasks, from a case's target to the report (see :mod:`ahnet.tasks`)."""

    #: stored in data sets' info, preprocessing, plans and checkpoints; ``task_for`` looks it up
    name: str
    #: in words, for messages
    title: str
    #: :class:`~ahnet.losses.LossSchedule`'s base: ``"ce"`` (class targets) or ``"l2"`` (maps)
    base_loss: str
    #: whether plans and experiments add the soft Dice term to the loss
    dice_loss: bool
    #: the validation metric as the console names it
    metric_name: str
    #: predictions are label maps: largest-component post-processing and label comparisons apply
    label_maps: bool
    #: every case of a data set has a label map (``labelsTr``) / boxes (``boxesTr.json``)
    needs_labels: bool
    needs_boxes: bool
    #: the built-in phantoms in words (the demo's report title)
    phantoms: str
    #: the file name of the experiments' plot
    plot_name: str

    # -- data ---------------------------------------------------------------------------------------
    @abstractmethod
    def out_channels(self, labels: Mapping[str, int]) -> int:
        """Output channels of a network for a data set with ``labels`` (dataset.json's)."""

    @abstractmethod
    def annotation(self, case: CaseFiles, info: DatasetInfo | None, reference: Volume, shape: Sequence[int],
                   spacing: Sequence[float]) -> tuple[np.ndarray | None, list[tuple[int, ...]]]:
        """A case's label map and boxes on the network grid of ``shape`` at ``spacing`` (after resampling);
        ``reference`` is its first channel as read."""

    @abstractmethod
    def target(self, shape: Sequence[int], label: np.ndarray | None, boxes: list[tuple[int, ...]],
               prep: Preprocessing) -> np.ndarray:
        """What the network learns to output for a case, ``(X, Y, Z)``."""

    @abstractmethod
    def foreground(self, target: np.ndarray, boxes: list[tuple[int, ...]],
                   rng: np.random.Generator) -> list[np.ndarray]:
        """Voxel indices ``(K, 3)`` that positive patches centre on, one array per class or object."""

    @abstractmethod
    def store(self, target: np.ndarray, boxes: list[tuple[int, ...]],
              rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, int]]:
        """A target as ``ahnet preprocess`` stores it: the array, the arrays of the case's locations file
        (``voxels_k`` and, per connected component, ``offsets_k``; ``classes``), and voxels per class."""

    # -- training ------------------------------------------------------------------------------------
    def loss(self, config: TrainConfig) -> LossSchedule:
        """The §3.4 schedule on this task's base loss, as ``config`` sets it up."""
        from ..losses import LossSchedule

        return LossSchedule(self.base_loss, gamma=config.focal_gamma, d_max=config.focal_d_max,
                            patience=config.switch_patience, threshold=config.switch_threshold,
                            switch_epoch=config.switch_epoch, focal=config.focal, dice=config.dice_loss)

    @abstractmethod
    def validate(self, model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device,
                 labels: Mapping[str, int]) -> dict[str, Any]:
        """The validation record of ``model`` (in evaluation mode) on fixed patches: ``val_metric``, the
        number the best checkpoint is chosen by, and what else the epoch's line in metrics.jsonl keeps."""

    # -- prediction ----------------------------------------------------------------------------------
    def activate(self, output: torch.Tensor) -> torch.Tensor:
        """A network's output as the map that windows, mirrorings and ensembled models average."""
        return output

    @abstractmethod
    def writer(self, out: Path, options: OutputOptions) -> PredictionWriter:
        """The writer of a prediction run's files into ``out``."""

    def predict_note(self, result: Mapping[str, Any]) -> str:
        """What ``ahnet predict``'s closing line adds about the outputs of :func:`~ahnet.inference.predict`."""
        return ""

    # -- evaluation, report, demo and experiments ------------------------------------------------------
    @abstractmethod
    def evaluate(self, predictions: Path, test: Path) -> dict:
        """The metrics of a prediction folder against the held-out data set ``test``, with the per-case
        material the experiments' bootstrap resamples."""

    @abstractmethod
    def report(self, predictions: Path, test: Path, out: Path, title: str) -> Path:
        """The HTML report of a prediction folder against ``test``."""

    @abstractmethod
    def headline(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """The few numbers of :meth:`evaluate`'s metrics worth printing."""

    @abstractmethod
    def held_out(self, metrics: Mapping[str, Any]) -> str:
        """What :meth:`evaluate`'s numbers stand on, in words."""

    @abstractmethod
    def baseline(self, test: Path, seed: int) -> tuple[str, dict]:
        """A trivial method's name and metrics on ``test``: the score that shows a network learned."""

    @abstractmethod
    def make_phantoms(self, out: str | Path, **kwargs) -> Path:
        """A synthetic data set of this task (:mod:`ahnet.synth`) in ``out``."""

    @abstractmethod
    def phantom_shape(self, scale: Scale) -> tuple[int, int, int]:
        """The phantoms' array size at an experiment scale."""

    @abstractmethod
    def columns(self, metrics: Mapping[str, Any]) -> dict[str, Column]:
        """The experiments' table columns for an arm's :meth:`evaluate` metrics."""

    @abstractmethod
    def plot(self, comparison: Comparison, runs: Sequence[Mapping[str, dict]], path: Path, title: str) -> None:
        """The experiments' plot of a comparison's rows."""
