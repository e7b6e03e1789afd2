"""The run's batch stream: epochs in one pass, data errors as themselves, workers that end with it."""

import multiprocessing

import pytest
import torch
from torch.utils.data import Dataset

from ahnet.errors import DataError
from ahnet.training.patch_stream import PatchStream


class Indices(Dataset):
    """Sample ``i`` is its own index; index ``fail_at`` raises ``error``."""

    def __init__(self, samples: int, fail_at: int = -1, error: Exception | None = None):
        self.samples, self.fail_at, self.error = samples, fail_at, error

    def __len__(self):
        return self.samples

    def __getitem__(self, index):
        if index == self.fail_at:
            raise self.error
        return {"index": torch.tensor(index)}


@pytest.mark.parametrize("workers", [0, 2])
def test_epochs_follow_each_other_from_the_resumed_step(workers):
    with PatchStream(Indices(6), batch_size=2, workers=workers) as stream:
        assert stream.steps == 3
        stream.start(epoch=1, step=1, epochs=2)  # epoch 1 from its second step, then epoch 2
        seen = [stream.next()["index"].tolist() for _ in range(5)]
        assert seen == [[8, 9], [10, 11], [12, 13], [14, 15], [16, 17]]
        with pytest.raises(StopIteration):
            stream.next()
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_data_error_in_a_worker_is_raised_as_itself(workers):
    error = DataError("labelsTr/case_001.nii.gz: label has 3 non-integer voxel values")
    with PatchStream(Indices(4, fail_at=2, error=error), batch_size=2, workers=workers) as stream:
        stream.start(epoch=0, step=0, epochs=1)
        stream.next()
        with pytest.raises(DataError) as raised:
            stream.next()
    assert str(raised.value) == str(error)  # one line: no worker traceback in the message
    assert not multiprocessing.active_children()


def test_a_bug_in_a_worker_keeps_its_traceback_and_stops_the_workers():
    stream = PatchStream(Indices(4, fail_at=1, error=ZeroDivisionError("bug")), batch_size=2, workers=2)
    stream.start(epoch=0, step=0, epochs=1)
    with pytest.raises(ZeroDivisionError, match="Original Traceback") as raised:
        stream.next()
    # The exception (and its traceback) is still held here, yet no worker outlived the failure.
    assert raised.value is not None and not multiprocessing.active_children()


def test_closing_in_the_middle_stops_the_workers():
    stream = PatchStream(Indices(8), batch_size=2, workers=2)
    stream.start(epoch=0, step=0, epochs=3)
    stream.next()
    assert multiprocessing.active_children()
    stream.close()
    assert not multiprocessing.active_children()
