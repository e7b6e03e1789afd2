"""A trained ahnet AH-Net as MONAI's ``AHNet`` (``monai.networks.nets.AHNet``), weights mapped by name.

MONAI's AHNet is a port of the authors' released code, so it is our ``released`` preset with the
ResNet-50 backbone, built with ``upsample_mode="trilinear"`` (``"transpose"`` and ``"nearest"``
pool the stem with 2x2x2 instead of 3x3x3 and up-sample by transposed convolutions or nearest
neighbours; ``"bilinear"`` cannot up-sample 3D maps). Each
module maps to one MONAI module by structure (:data:`STEM`, :data:`BOTTLENECK`, :data:`DECODER`,
:data:`DENSE_LAYER`, the pyramid by pooling size, :data:`HEAD`), every shape is checked, and
every tensor on both sides is used exactly once:

======================================  ==========================================
ours                                    MONAI
======================================  ==========================================
``encoder.conv1``, ``encoder.bn1``      ``conv1``, ``bn0``
``encoder.layerL.i.{conv,bn}{1,2,3}``   ``layerL.i.{conv,bn}{1,2,3}``
``encoder.layerL.0.downsample.conv/bn`` ``layerL.0.downsample.0`` / ``.2`` (``.1`` is the z pool)
``decoder.0`` .. ``decoder.4`` project  ``up0``, ``up1``, ``up2``, ``trans1``, ``up3`` (norm, conv)
``decoder.j.dense.i`` reduce/xy/z/mix   ``dense{j}.denselayer{i+1}`` bn1,conv1 / .. / bn4,conv4
``pyramid.proj.j`` (pool ``k``)         ``psp.project_modules.i`` with ``k = 2**(i+3)``
``head.norm``, ``head.conv``            ``final.norm``, ``final.conv`` (pyramid channels reordered)
======================================  ==========================================

The pyramid's maps come first in both networks' concatenation, ours in the preset's order (64, 32,
16, 8), MONAI's from 8 up, so the head's batch norm and convolution get their first input channels
permuted. Any number of input and output channels maps, and ``pyramid_pools`` may be any set
``{8, 16, ..., 2**(n+2)}``, n <= 4 (MONAI's ``psp_block_num``).

What does not map raises :class:`~ahnet.errors.ConfigError` naming it: ResNet-18/34 (MONAI's
encoder has bottleneck blocks only), the ``paper`` preset's structure (its stem order, anisotropic
dense layers, unpadded pyramid projections and 1x1x1 head with bias) and any other ablation option.

One difference no MONAI argument removes: MONAI's trilinear up-sampling (the decoder's x2 steps,
the pyramid's resizing and the head's x2) aligns corners, ours does not (``align_corners=False``;
the released code targeted PyTorch 0.3, whose interpolation aligned corners). Outputs therefore
differ, on untrained networks with random batch-norm statistics by 30-100 % of their range (78-98 %
of the labels equal), so the conversion refuses unless ``allow_aligned_corners=True`` says the
caller will measure that difference (``ahnet bench --predict`` reports the label agreement). Apart from
it the two networks are equal where MONAI runs and pools the same: X and Y multiples of twice the
largest pyramid pool (128 for the presets), Z a multiple of 32. The tests check both: the encoder
features equal, and the whole output equal with our resizing switched to aligned corners.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError
from .ahnet import AHBottleneck, AHNet

#: (ours, MONAI) module names of the stem, below ``encoder.`` and at MONAI's top level.
STEM = (("conv1", "conv1"), ("bn1", "bn0"))
#: (ours, MONAI) module names inside one bottleneck block.
BOTTLENECK = tuple((n, n) for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")) + (
    ("downsample.conv", "downsample.0"), ("downsample.bn", "downsample.2"))
#: MONAI's (projection, dense block) of each decoder level, by the encoder tap the level adds.
DECODER = {"layer3": ("up0", "dense0"), "layer2": ("up1", "dense1"), "layer1": ("up2", "dense2"),
           "pool": ("trans1", "dense3"), "conv1": ("up3", "dense4")}
#: (ours, MONAI) module names of a projection (ours ``NormReLUConv``; MONAI's UpTransition's
#: ``up`` is the parameter-free trilinear up-sampling).
PROJECTION = (("norm", "norm"), ("conv", "conv"))
#: (ours, MONAI) module names inside one dense layer (ours ``Pseudo3DDenseLayer``, MONAI's
#: ``Pseudo3DLayer``): 1x1x1 reduction, 3x3x1, 1x1x3, 1x1x1 mix.
DENSE_LAYER = (("reduce.norm", "bn1"), ("reduce.conv", "conv1"), ("xy.norm", "bn2"), ("xy.conv", "conv2"),
               ("z.norm", "bn3"), ("z.conv", "conv3"), ("mix.norm", "bn4"), ("mix.conv", "conv4"))
#: (ours, MONAI) module names of the final projection.
HEAD = (("head.norm", "final.norm"), ("head.conv", "final.conv"))

#: What MONAI's AHNet hard-codes, as fields of :class:`~ahnet.models.presets.AHNetSpec`, with
#: what each of our values means where it differs.
MONAI_SPEC = {
    "stem_pool_before_norm": (True, "MONAI's stem pools z before its batch norm (Conv - MaxPool 1x1x2 - BN - ReLU)"),
    "dense_layer": ("pseudo3d", "MONAI's dense layers are the released code's pseudo-3D layers (1x1x1 - 3x3x1, "
                                "1x1x3 on that, summed, 1x1x1)"),
    "growth_rate": (20, "MONAI's dense layers add 20 channels each"),
    "bottleneck_factor": (4, "MONAI's dense layers widen to 4 x growth"),
    "layers_per_block": (3, "MONAI's dense blocks have 3 layers"),
    "pyramid_padding": (1, "MONAI's pyramid projections pad 1 in-plane"),
    "head_kernel": ((3, 3, 1), "MONAI's final projection is a 3x3x1 convolution"),
    "head_bias": (False, "MONAI's final projection has no bias"),
}


def check_mappable(model: nn.Module, allow_aligned_corners: bool = False) -> int:
    """MONAI's ``psp_block_num`` for ``model``, or :class:`ConfigError` naming what MONAI's AHNet
    cannot express (every difference at once)."""
    if not isinstance(model, AHNet):
        raise ConfigError(f"only an AH-Net maps to MONAI's AHNet, not {type(model).__name__}")
    problems = []
    if not all(isinstance(block, AHBottleneck) for block in model.encoder.layer1):
        problems.append(f"backbone {model.backbone}: MONAI's encoder has ResNet-50-style bottleneck blocks, not "
                        "basic blocks")
    spec = model.spec
    for field, (want, what) in MONAI_SPEC.items():
        value = getattr(spec, field)
        if field == "pyramid_padding" and not spec.pyramid_pools:
            continue  # no projection to pad
        if (tuple(value) if isinstance(value, (list, tuple)) else value) != want:
            problems.append(f"{field}={value!r}: {what}")
    pools = sorted(spec.pyramid_pools)
    if pools != [2 ** (i + 3) for i in range(len(pools))] or len(pools) > 4:
        problems.append(f"pyramid_pools={tuple(spec.pyramid_pools)}: MONAI pools with 8, 16, 32, 64 "
                        "(the first psp_block_num of them)")
    if not allow_aligned_corners:
        problems.append("interpolation: MONAI's trilinear up-sampling aligns corners, ours does not "
                        "(align_corners=False); no MONAI option matches, so the outputs differ "
                        "(pass allow_aligned_corners=True to accept that and measure it)")
    if problems:
        raise ConfigError(f"this AH-Net ({model.backbone}, {model.preset} preset) cannot be expressed as MONAI's "
                          f"AHNet: {'; '.join(problems)}")
    return len(pools)


def _copy(ours: nn.Module, theirs: nn.Module, where: str, channels: list[int] | None = None) -> set[str]:
    """Copy the parameters and buffers of one module into its MONAI twin (``channels``: which of
    ours feeds each MONAI input channel); returns the names copied, below ``where``."""
    src, dst = ours.state_dict(), theirs.state_dict()
    if set(src) != set(dst):
        raise ConfigError(f"{where}: tensors {sorted(src)} do not match MONAI's {sorted(dst)}")
    for name, value in src.items():
        if channels is not None and value.dim() >= 1:
            value = value[:, channels] if value.dim() > 1 else value[channels]
        if value.shape != dst[name].shape:
            raise ConfigError(f"{where}.{name}: shape {tuple(value.shape)}, MONAI's {tuple(dst[name].shape)}")
        with torch.no_grad():
            dst[name].copy_(value)
    return {f"{where}.{name}" for name in dst}


def module_pairs(model: AHNet) -> list[tuple[str, str]]:
    """(our module, MONAI module) name of every module with weights, by structure (not by order)."""
    pairs = [(f"encoder.{a}", b) for a, b in STEM]
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for i, block in enumerate(getattr(model.encoder, stage)):
            for a, b in BOTTLENECK:
                if block.downsample is not None or not a.startswith("downsample"):
                    pairs.append((f"encoder.{stage}.{i}.{a}", f"{stage}.{i}.{b}"))
    for j, (skip, level) in enumerate(zip(model.skips, model.decoder)):
        projection, dense = DECODER[skip]
        pairs += [(f"decoder.{j}.project.{a}", f"{projection}.{b}") for a, b in PROJECTION]
        for i in range(len(level.dense)):
            pairs += [(f"decoder.{j}.dense.{i}.{a}", f"{dense}.denselayer{i + 1}.{b}") for a, b in DENSE_LAYER]
    monai_pool = {2 ** (i + 3): i for i in range(4)}  # MONAI's i-th pyramid level pools 2**(i+3)
    pairs += [(f"pyramid.proj.{j}", f"psp.project_modules.{monai_pool[k]}") for j, k in enumerate(model.pyramid.pools)]
    return pairs + list(HEAD)


def to_monai_ahnet(model: AHNet, *, allow_aligned_corners: bool = False) -> nn.Module:
    """MONAI's ``AHNet`` with ``model``'s weights and batch-norm statistics (see the module doc).

    Raises :class:`ConfigError` where MONAI's network cannot compute ours, and for the corner
    convention of its interpolation unless ``allow_aligned_corners``. The result is a new module
    in training mode on ``model``'s device (call ``.eval()``); ``model`` is not changed. It computes
    ours only on inputs sized as :func:`size_multiple` says (see :func:`check_size`).
    """
    psp_block_num = check_mappable(model, allow_aligned_corners)
    from monai.networks.nets import AHNet as MonaiAHNet

    from .resnet import RESNET_LAYOUTS

    monai = MonaiAHNet(layers=RESNET_LAYOUTS[model.backbone][1], spatial_dims=3, in_channels=model.in_channels,
                       out_channels=model.out_channels, psp_block_num=psp_block_num, upsample_mode="trilinear")
    ours_modules, monai_modules = dict(model.named_modules()), dict(monai.named_modules())
    # MONAI's channel c of the head's input is our channel order[c]: its pyramid maps from pool 8 up.
    pools = list(model.pyramid.pools)
    width = model.head.norm.num_features
    order = [pools.index(k) for k in sorted(pools)] + list(range(len(pools), width))
    used: set[str] = set()
    copied: set[str] = set()
    for a, b in module_pairs(model):
        copied |= _copy(ours_modules[a], monai_modules[b], b, order if a.startswith("head.") else None)
        used |= {f"{a}.{name}" for name in ours_modules[a].state_dict()}
    unset, unused = sorted(set(monai.state_dict()) - copied), sorted(set(model.state_dict()) - used)
    if unset or unused:
        raise ConfigError(f"the mapping to MONAI's AHNet is incomplete: MONAI's {unset[:5]} unset, "
                          f"our {unused[:5]} unused")
    return monai.to(next(model.parameters()).device)


def size_multiple(model: AHNet) -> tuple[int, int, int]:
    """Input sizes on which MONAI's port computes ``model``: X and Y multiples of twice the largest
    pyramid pool (MONAI's pooling drops a partial window, ours keeps it) and of 32, Z of 32 (MONAI
    does not pad to its five halvings, ours does)."""
    xy = max(32, 2 * max(model.pyramid.pools, default=0))
    return xy, xy, 32


def check_size(size: Sequence[int], multiple: Sequence[int], what: str = "window") -> None:
    """:class:`ConfigError` unless every axis of ``size`` is a multiple of ``multiple``."""
    if any(s % m for s, m in zip(size, multiple)):
        fit = "x".join(str(-(-s // m) * m) for s, m in zip(size, multiple))
        raise ConfigError(f"{what} {'x'.join(map(str, size))}: MONAI's AHNet computes this network only on sizes "
                          f"that are multiples of {'x'.join(map(str, multiple))} (X, Y: twice the largest pyramid "
                          f"pool, Z: 32); use e.g. {fit}")
