"""A file that is not an ahnet checkpoint gets a message saying what it is, never unsafe advice."""

from __future__ import annotations

import gzip
import os
import random

import pytest
import torch

from ahnet import CheckpointError
from ahnet.models import ResNet
from ahnet.models.resnet import load_torchvision_weights, resnet18
from ahnet.training import load_checkpoint


class _Code:
    def __reduce__(self):
        return (os.getcwd, ())


def _files(tmp_path):
    files = {}
    # Seeded: unseeded bytes began like a pickle (0x80) in 1 run of 256 and made this test flaky.
    files["random.pt"] = random.Random(0).randbytes(4096)
    files["volume.nii.gz"] = gzip.compress(b"\0" * 400)
    nifti = bytearray(352)
    nifti[0:4] = (348).to_bytes(4, "little")
    nifti[344:348] = b"n+1\0"
    files["volume.nii"] = bytes(nifti)
    for name, value in files.items():
        (tmp_path / name).write_bytes(value)
    torch.save({"model": _Code()}, tmp_path / "pickled.pt")
    torch.save(ResNet("resnet18", num_classes=1000).state_dict(), tmp_path / "resnet18.pth")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "bare.pt")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "optimizer": {}, "epoch": 3}, tmp_path / "lightning.ckpt")
    bundle = tmp_path / "spleen_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "metadata.json").write_text("{}")
    (bundle / "models").mkdir()
    torch.save({"conv.weight": torch.zeros(1)}, bundle / "models" / "model.pt")
    return tmp_path


EXPECTED = {
    "random.pt": "not a readable ahnet checkpoint: not a PyTorch file at all",
    "volume.nii.gz": "a gzip file (a .nii.gz volume?), not a PyTorch file",
    "volume.nii": "a NIfTI volume, not a PyTorch file",
    "pickled.pt": "it holds pickled Python objects (posix.getcwd), which ahnet never loads because unpickling",
    "resnet18.pth": "not an ahnet checkpoint: a torchvision ResNet state dict (ImageNet weights go to "
                    "`ahnet train2d --pretrained`)",
    "bare.pt": "a bare state dict of 1 tensors (encoder.weight, ...) without the network description",
    "lightning.ckpt": "a dict with keys epoch, optimizer, state_dict (another tool's checkpoint?)",
    "spleen_bundle": "a MONAI bundle folder, not an ahnet checkpoint",
    "spleen_bundle/models/model.pt": "(the weights of the MONAI bundle",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_what_a_file_is_is_said(tmp_path, name):
    folder = _files(tmp_path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(folder / name)
    message = str(err.value)
    assert message.startswith(f"{folder / name}: ") and EXPECTED[name] in message
    assert "weights_only" not in message and "trust" not in message


def test_pretrained_weights_messages_are_safe_too(tmp_path):
    folder = _files(tmp_path)
    with pytest.raises(CheckpointError, match=r"pickled Python objects \(posix.getcwd\)") as err:
        load_torchvision_weights(resnet18(), folder / "pickled.pt")
    assert "weights_only" not in str(err.value)
    with pytest.raises(CheckpointError, match="not a PyTorch file at all"):
        load_torchvision_weights(resnet18(), folder / "random.pt")
    torch.save({"format": "ahnet-checkpoint", "kind": "train", "model": {}}, folder / "run.pt")
    with pytest.raises(CheckpointError, match=r"found an ahnet 'train' checkpoint \(for --init"):
        load_torchvision_weights(resnet18(), folder / "run.pt")
