"""--pretrained imagenet: torchvision's weights through torch hub's cache, never the network in tests."""

from __future__ import annotations

import urllib.error
import warnings

import pytest
import torch
import torch.hub
from datasets import make_seg_dataset

from ahnet.errors import CheckpointError
from ahnet.models.factory import build_model
from ahnet.models.imagenet import IMAGENET_URLS, imagenet_cache_path, imagenet_weights_file
from ahnet.models.resnet import resnet18
from ahnet.training import TrainConfig, Trainer
from ahnet.training.trainer import resumed_config


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache of this test's own, and a download that fails the test if tried."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def no_network(url, dst, *args, **kwargs):
        raise AssertionError(f"the test tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return home


def _cache_resnet18(home) -> dict[str, torch.Tensor]:
    """A resnet18-shaped torchvision file (with its 1000-class fc) where torch hub caches it."""
    state = resnet18(num_classes=1000).state_dict()
    path = home / "hub" / "checkpoints" / IMAGENET_URLS["resnet18"].rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def test_urls_are_torchvisions_imagenet1k_v1_files():
    assert IMAGENET_URLS == {
        "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
        "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    }


def test_cached_file_loads_without_network(torch_home):
    state = _cache_resnet18(torch_home)
    assert imagenet_weights_file("resnet18") == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    model = build_model("mc-gcn", 1, 2, backbone="resnet18", pretrained="imagenet")
    assert torch.equal(model.encoder.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_offline_without_cache_is_one_clear_error(torch_home, monkeypatch):
    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_cache_path("resnet18") == expected
    with pytest.raises(CheckpointError) as info:
        build_model("mc-gcn", 1, 2, backbone="resnet18", pretrained="imagenet")
    message = str(info.value)
    assert str(expected) in message and IMAGENET_URLS["resnet18"] in message
    assert "--pretrained FILE" in message and "by hand" in message and "URLError" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert not expected.exists()


def test_imagenet_compares_as_a_name_on_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = {"epoch": 1, "config": TrainConfig(data="d", out="o", model="mc-gcn", pretrained="imagenet").to_dict()}
    assert resumed_config(saved, {"pretrained": "imagenet"}).pretrained == "imagenet"


@pytest.mark.timeout(60)
def test_trainer_warns_about_a_random_encoder_only_without_weights(tmp_path, torch_home):
    data = make_seg_dataset(tmp_path / "data", cases=2)
    _cache_resnet18(torch_home)
    base = dict(data=str(data), model="mc-gcn", backbone="resnet18", patch=(32, 32, 3), workers=0, device="cpu")
    with pytest.warns(UserWarning, match=r"random weights.*--pretrained imagenet.*--pretrained FILE"):
        Trainer(TrainConfig(out=str(tmp_path / "random"), **base), progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(TrainConfig(out=str(tmp_path / "imagenet"), pretrained="imagenet", **base), progress=False)
        Trainer(TrainConfig(out=str(tmp_path / "unet"), **{**base, "model": "2d-unet"}), progress=False)
    assert not [w for w in caught if "random weights" in str(w.message)]
