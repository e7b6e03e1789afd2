"""The training batches of a whole run, drawn asynchronously in DataLoader workers (§4.1).

One pass of one DataLoader iterator covers every epoch the run has left (:class:`EpochSampler`), so
the workers and their cache of loaded cases live from the first epoch to the last, and they are
stopped the way DataLoader documents: its iterator ends when it is released. Two things a plain
DataLoader does not do for a training run:

* a data error in a worker (a broken label, say) reaches the trainer as the :class:`AhnetError` it
  was, one line, instead of a ``RuntimeError`` carrying the worker's traceback as text;
* the workers never outlive the run, even when it fails: they ignore SIGINT / SIGTERM (the main
  process stops the run cleanly, :mod:`.stopping`), so a failure that left them running would make
  the interpreter wait for them at exit forever.
"""

from __future__ import annotations

import signal
import traceback
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..data.sampling import EpochSampler
from ..errors import AhnetError


def _worker_init(worker_id: int) -> None:
    """DataLoader workers leave SIGINT / SIGTERM to the main process, which stops cleanly (a
    terminal's Ctrl-C and a scheduler's SIGTERM reach the whole process group)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@dataclass
class DataFailure:
    """What a worker sends instead of a sample when the data is at fault: the error itself."""

    error: AhnetError


class _CarryDataErrors(Dataset):
    """``dataset``, with an :class:`AhnetError` of a sample returned as a :class:`DataFailure`."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except AhnetError as err:
            return DataFailure(err)


def _collate(samples: list[Any]) -> Any:
    failure = next((s for s in samples if isinstance(s, DataFailure)), None)
    return failure if failure is not None else default_collate(samples)


class PatchStream:
    """Batches of ``dataset`` (a :class:`~ahnet.data.sampling.PatchDataset` of ``steps * batch_size``
    samples per epoch), epoch after epoch. Use as a context manager: leaving it stops the workers.

    Args:
        dataset: the epoch's samples; sample ``i`` of epoch ``e`` is index ``e * len(dataset) + i``.
        batch_size: samples per step.
        workers: DataLoader worker processes (0: sampled in this process).
        pin_memory: page-locked batches, for a CUDA device.
    """

    def __init__(self, dataset: Dataset, batch_size: int, workers: int, pin_memory: bool = False):
        self.batch_size = batch_size
        self.steps = len(dataset) // batch_size
        self._sampler = EpochSampler(len(dataset))
        self._loader = DataLoader(_CarryDataErrors(dataset), batch_size=batch_size, sampler=self._sampler,
                                  num_workers=workers, drop_last=True, pin_memory=pin_memory,
                                  collate_fn=_collate, worker_init_fn=_worker_init if workers > 0 else None)
        self._iterator: Iterator | None = None

    def start(self, epoch: int, step: int, epochs: int) -> None:
        """Draw ``epochs`` epochs from ``epoch`` on, the first from its step ``step`` (a resumed run)."""
        self.close()
        self._sampler.set_epoch(epoch, start=step * self.batch_size, epochs=epochs)
        self._iterator = iter(self._loader)

    def next(self) -> dict[str, torch.Tensor]:
        """The next batch; a data error of a worker is raised here as itself."""
        if self._iterator is None:
            raise RuntimeError("PatchStream.next() before start()")
        try:
            batch = next(self._iterator)
        except BaseException as err:
            # The iterator's finished frames in the traceback would keep it, and so its workers, alive.
            traceback.clear_frames(err.__traceback__)
            self.close()
            raise
        if isinstance(batch, DataFailure):
            self.close()
            raise batch.error
        return batch

    def close(self) -> None:
        """Stop the workers: a DataLoader iterator without persistent workers shuts them down when it
        is released, and this stream holds its only reference."""
        self._iterator = None

    def __enter__(self) -> "PatchStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
