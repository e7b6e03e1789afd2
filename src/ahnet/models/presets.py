"""The two presets of each network, as data: ``paper`` (the text of §3) and ``released``.

The paper's text and the authors' released code (``lsqshr/AH-Net``, which produced Table 2) differ
in a few structural details. Each network has one code path; a preset only fills the fields below.
``docs/presets.md`` explains every difference in one table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from ..errors import ConfigError


@dataclass(frozen=True)
class MCGCNSpec:
    """Structure of the MC-GCN decoder (§3.1, Fig. 2).

    Attributes:
        gcn_taps: encoder outputs (names from ``resnet.TAP_NAMES``, shallow to deep) that each feed
            one GCN module.
        gcn_kernels: the GCN kernel size K of each tap, same order.
        refine_shared_norm: ``False``: refinement = conv3x3-ReLU-conv3x3 + input (the text);
            ``True``: one BatchNorm used before both convs (BN-ReLU-conv-BN-ReLU-conv + input).
        up_conv: the up modules apply a 1x1 conv before bilinear up-sampling (the text) or not.
        output_refine: one more refinement block after the last up-sampling, at input resolution.
        unused_conv: keep the released code's ``Conv2d(256, 64, 1)`` that its forward never calls
            (16,448 parameters Table 2 counts); frozen, so no optimiser touches it.
    """

    gcn_taps: tuple[str, ...]
    gcn_kernels: tuple[int, ...]
    refine_shared_norm: bool
    up_conv: bool
    output_refine: bool
    unused_conv: bool


@dataclass(frozen=True)
class AHNetSpec:
    """Structure of the AH-Net (§3.2-3.3, Fig. 3) beyond its backbone.

    Attributes:
        stem_pool_before_norm: ``False``: Conv 7x7x3 - BN - ReLU - MaxPool 1x1x2 - MaxPool 3x3x3, the
            2D stem's order, so the transferred stem equals the 2D stem slice by slice;
            ``True``: MaxPool 1x1x2 right after the conv, before BN and ReLU (released code).
        dense_layer: ``"anisotropic"``: xy bottleneck 1x1x1-3x3x1-1x1x1 then z bottleneck
            1x1x1-1x1x3-1x1x1 summed with its input (§3.3); ``"pseudo3d"``: BN-ReLU-1x1x1, then
            3x3x1 and 1x1x3 (applied to the 3x3x1 output) summed, then 1x1x1 (released code).
        growth_rate: channels each dense layer adds (released: 20).
        bottleneck_factor: the first 1x1x1 of a dense layer widens to ``factor * growth_rate``.
        layers_per_block: dense layers per resolution level ("three" in §3.3).
        pyramid_pools: in-plane kernel (= stride) of each pyramid max pooling (§3.3: 64, 32, 16, 8).
        pyramid_padding: in-plane zero padding of the pyramid's 1x1x1 projections (released: 1, a
            quirk that shifts the pooled maps; paper: 0).
        head_kernel: kernel of the final projection (paper: 1x1x1; released: 3x3x1).
        head_bias: whether the final projection has a bias (released: no).
    """

    stem_pool_before_norm: bool
    dense_layer: str
    growth_rate: int
    bottleneck_factor: int
    layers_per_block: int
    pyramid_pools: tuple[int, ...]
    pyramid_padding: int
    head_kernel: tuple[int, int, int]
    head_bias: bool


MCGCN_PRESETS: dict[str, MCGCNSpec] = {
    "paper": MCGCNSpec(
        gcn_taps=("conv1", "pool", "layer1", "layer2", "layer3", "layer4"),
        gcn_kernels=(63, 31, 15, 9, 7, 5),
        refine_shared_norm=False,
        up_conv=True,
        output_refine=False,
        unused_conv=False,
    ),
    "released": MCGCNSpec(
        gcn_taps=("conv1", "pool", "layer2", "layer3", "layer4"),
        gcn_kernels=(7, 7, 7, 7, 7),
        refine_shared_norm=True,
        up_conv=False,
        output_refine=True,
        unused_conv=True,
    ),
}

AHNET_PRESETS: dict[str, AHNetSpec] = {
    "paper": AHNetSpec(
        stem_pool_before_norm=False,
        dense_layer="anisotropic",
        growth_rate=20,
        bottleneck_factor=4,
        layers_per_block=3,
        pyramid_pools=(64, 32, 16, 8),
        pyramid_padding=0,
        head_kernel=(1, 1, 1),
        head_bias=True,
    ),
    "released": AHNetSpec(
        stem_pool_before_norm=True,
        dense_layer="pseudo3d",
        growth_rate=20,
        bottleneck_factor=4,
        layers_per_block=3,
        pyramid_pools=(64, 32, 16, 8),
        pyramid_padding=1,
        head_kernel=(3, 3, 1),
        head_bias=False,
    ),
}


def resolve_preset(presets: Mapping[str, Any], preset: str, overrides: Mapping[str, Any], network: str) -> Any:
    """The named preset with ``overrides`` applied; clear errors for unknown names or fields."""
    if preset not in presets:
        raise ConfigError(f"unknown {network} preset {preset!r}; choose one of {sorted(presets)}")
    spec = presets[preset]
    unknown = sorted(set(overrides) - set(spec.__dataclass_fields__))
    if unknown:
        raise ConfigError(
            f"unknown {network} option(s) {unknown}; valid: {sorted(spec.__dataclass_fields__)}"
        )
    return replace(spec, **overrides)
