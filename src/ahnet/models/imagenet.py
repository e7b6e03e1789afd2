"""torchvision's ImageNet weights for the MC-GCN encoder (``--pretrained imagenet``), via torch hub.

The paper's MC-GCN starts from an ImageNet-trained ResNet (§3.1). torchvision is not a dependency
(and often cannot be installed beside a given torch build), so the URLs of its ``IMAGENET1K_V1``
files are kept here. They are fetched exactly as torchvision fetches them, with
``torch.hub.load_state_dict_from_url(..., check_hash=True)``, so the file lands in (or is found in)
the same cache, ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``): a file that
torchvision downloaded before is reused, and a cached file needs no network at all.
"""

from __future__ import annotations

from pathlib import Path

import torch.hub

from ..errors import CheckpointError, ConfigError

#: name under which the command line asks for these weights (``--pretrained imagenet``)
IMAGENET = "imagenet"

#: torchvision's ``ResNet{18,34,50}_Weights.IMAGENET1K_V1`` files; the hex part is a SHA-256 prefix
#: that torch hub checks after downloading.
IMAGENET_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}


def is_imagenet(pretrained: object) -> bool:
    """Whether a ``pretrained`` value asks for the ImageNet weights rather than naming a file."""
    return isinstance(pretrained, str) and pretrained == IMAGENET


def imagenet_cache_path(backbone: str) -> Path:
    """Where torch hub keeps (or would keep) the ImageNet file of ``backbone``; honours TORCH_HOME."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _url(backbone).rsplit("/", 1)[-1]


def imagenet_weights_file(backbone: str, progress: bool = True) -> Path:
    """The cached torchvision ImageNet file of ``backbone``, downloaded through torch hub if absent.

    A failed download (offline, a proxy, a wrong hash) raises one :class:`CheckpointError` that
    names the URL and the cache path, so the file can be put there by hand.
    """
    url, path = _url(backbone), imagenet_cache_path(backbone)
    if path.is_file():
        return path
    try:
        torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=progress, check_hash=True,
                                           weights_only=True)
    except Exception as err:  # URLError, OSError, a hash mismatch (RuntimeError), ...
        reason = " ".join(str(err).split()) or type(err).__name__
        raise CheckpointError(
            f"ImageNet weights for {backbone} are not cached at {path} and could not be downloaded from {url} "
            f"({type(err).__name__}: {reason}); download that file by hand to {path}, or pass "
            f"--pretrained FILE with a local torchvision-format {backbone} file") from None
    if not path.is_file():  # torch hub saved it elsewhere: its cache layout changed
        raise CheckpointError(f"torch hub downloaded {url} but it is not at {path}; pass --pretrained FILE instead")
    return path


def _url(backbone: str) -> str:
    if backbone not in IMAGENET_URLS:
        raise ConfigError(f"no ImageNet weights for backbone {backbone!r}; choose one of {sorted(IMAGENET_URLS)}")
    return IMAGENET_URLS[backbone]
