"""Transfer a trained 2D encoder to the 3D AH-Net (§3.2, Eq. 1-3, Fig. 4).

* Eq. 1: the stem kernel ``T(64 x 3 x 7 x 7)`` becomes ``T(64 x 1 x 7 x 7 x 3)``: the three input
  channels (three neighbouring slices) become the three taps of the z kernel, so the 3D stem
  convolves each slice with its two neighbours exactly as the 2D stem convolved a 3-slice stack.
  With ``c`` image channels the 2D input has ``3c`` channels, ordered channel-major
  (``[ch0 z-1, ch0 z, ch0 z+1, ch1 z-1, ...]``).
* Eq. 2-3: every other kernel ``T(n x m x h x w)`` gains a trailing depth of one,
  ``T(n x m x h x w x 1)``, so it convolves slice by slice.
* Batch norm: weight, bias, running mean, running variance and the batch counter are all copied.
  Copying only the weight and bias (as the released ``copy_from`` does) leaves the 3D stem up to
  2.1 away from the 2D stem in eval mode.

With these, in eval mode, the transferred stem's convolution, batch norm and ReLU give, slice for
slice, the 2D stem's output on each 3-slice stack, and every AH-ResNet block gives the 2D block's
output slice by slice (``tests/test_transfer.py`` checks both numerically).
"""

from __future__ import annotations

import torch

from ..errors import TransferError
from .ahnet import AHNet
from .mcgcn import MCGCN
from .resnet import ResNet

#: 2D key fragment -> 3D key fragment where the AH-Downsample's modules are named differently.
_RENAMES = ((".downsample.0.", ".downsample.conv."), (".downsample.1.", ".downsample.bn."))


def _encoder_2d(source: MCGCN | ResNet) -> ResNet:
    if isinstance(source, MCGCN):
        return source.encoder
    if isinstance(source, ResNet):
        return source
    raise TransferError(f"can only transfer from an MCGCN or a ResNet, got {type(source).__name__}")


def stem_kernel_2d_to_3d(weight: torch.Tensor) -> torch.Tensor:
    """Eq. 1: ``(64, 3c, 7, 7)`` -> ``(64, c, 7, 7, 3)``, channel ``3i + k`` to z tap ``k`` of ``i``."""
    out, chans, kh, kw = weight.shape
    if chans % 3:
        raise TransferError(
            f"the 2D stem has {chans} input channels; transfer needs 3 slices per image channel (3, 6, ...)"
        )
    return weight.reshape(out, chans // 3, 3, kh, kw).permute(0, 1, 3, 4, 2).contiguous()


def kernel_2d_to_3d(weight: torch.Tensor) -> torch.Tensor:
    """Eq. 2-3: ``(n, m, h, w)`` -> ``(n, m, h, w, 1)``."""
    return weight.unsqueeze(-1).clone()


@torch.no_grad()
def transfer_2d_to_3d(source: MCGCN | ResNet, target: AHNet) -> AHNet:
    """Copy the 2D encoder of ``source`` (an :class:`MCGCN` or a :class:`ResNet`) into ``target``.

    Every encoder tensor of ``target`` is overwritten; the decoder keeps its random initialisation
    (§3.2). Raises :class:`TransferError` if backbones or channel counts do not correspond.
    Returns ``target``.
    """
    if not isinstance(target, AHNet):
        raise TransferError(f"the transfer target must be an AHNet, got {type(target).__name__}")
    encoder = _encoder_2d(source)
    if encoder.backbone != target.backbone:
        raise TransferError(f"backbones differ: 2D {encoder.backbone}, 3D {target.backbone}")
    if encoder.in_channels != 3 * target.in_channels:
        raise TransferError(
            f"the 2D net reads {encoder.in_channels} channels but the AH-Net {target.in_channels}: "
            f"Eq. 1 needs 3 neighbouring slices per volume channel ({3 * target.in_channels})"
        )
    target_state = target.encoder.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in encoder.state_dict().items():
        if key.startswith("fc."):
            continue
        key3d = _rename(key)
        if key3d not in target_state:
            raise TransferError(f"2D tensor {key!r} has no counterpart {key3d!r} in the AH-Net encoder")
        if key == "conv1.weight":
            value = stem_kernel_2d_to_3d(value)
        elif value.dim() == 4:
            value = kernel_2d_to_3d(value)
        if value.shape != target_state[key3d].shape:
            raise TransferError(f"{key}: 2D shape {tuple(value.shape)} cannot fill {tuple(target_state[key3d].shape)}")
        mapped[key3d] = value.clone()
    missing = sorted(set(target_state) - set(mapped))
    if missing:
        raise TransferError(f"{len(missing)} AH-Net encoder tensor(s) have no 2D source, e.g. {missing[:3]}")
    target.encoder.load_state_dict(mapped, strict=True)
    return target


def _rename(key: str) -> str:
    for old, new in _RENAMES:
        key = key.replace(old, new)
    return key

