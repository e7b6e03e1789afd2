"""Table 2 reproduced: conv layers and parameters of every network, beside the paper's numbers."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn as nn

from .models import MCGCN, AHNet, ResNet, UNet2D, UNet3D


@dataclass(frozen=True)
class SummaryRow:
    model: str
    preset: str
    conv_layers: int
    params: int
    paper_conv_layers: int
    paper_params: int


#: (model, preset, builder, Table 2 conv layers, Table 2 parameters, note). Table 2 counts the
#: released code's networks with one output map (the DBT heatmap); its U-Nets have three.
TABLE2: tuple[tuple[str, str, Callable[[], nn.Module], int, int, str], ...] = (
    ("2d-unet", "paper", lambda: UNet2D(in_channels=3, out_channels=3), 15, 28_254_528, ""),
    ("3d-unet", "paper", lambda: UNet3D(in_channels=1, out_channels=3), 15, 5_298_768, ""),
    ("resnet50", "torchvision", lambda: ResNet("resnet50"), 53, 23_507_904,
     "torchvision's ResNet-50 without fc has 23,508,032; Table 2 prints 128 less (one BatchNorm's weight and bias)"),
    ("mc-gcn", "paper", lambda: MCGCN(out_channels=1, preset="paper"), 94, 23_576_758,
     "paper preset: six GCNs with K = 63..5 and 1x1 convs in the up modules, so it differs from Table 2"),
    ("mc-gcn", "released", lambda: MCGCN(out_channels=1, preset="released"), 94, 23_576_758,
     "includes the released code's unused Conv2d(256, 64, 1), 16,448 parameters, which Table 2 counts"),
    ("ahnet", "paper", lambda: AHNet(out_channels=1, preset="paper"), 123, 27_085_500,
     "paper preset: the text's dense layers (6 convs each), 1x1x1 head, so it differs from Table 2"),
    ("ahnet", "released", lambda: AHNet(out_channels=1, preset="released"), 123, 27_085_500, ""),
)


def count_conv_layers(model: nn.Module) -> int:
    """Convolution modules (any dimension, transposed included), as Table 2 counts them."""
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    return sum(isinstance(m, kinds) for m in model.modules())


def count_parameters(model: nn.Module) -> int:
    """All float parameters, trainable or not (Table 2 counts the unused conv too)."""
    return sum(p.numel() for p in model.parameters())


def table2() -> list[tuple[SummaryRow, str]]:
    """One row per network and preset with its note; models are built on the meta device (no memory)."""
    rows = []
    with torch.device("meta"):
        for name, preset, build, paper_convs, paper_params, note in TABLE2:
            model = build()
            rows.append((SummaryRow(name, preset, count_conv_layers(model), count_parameters(model),
                                    paper_convs, paper_params), note))
    return rows


def summary_json() -> list[dict]:
    return [asdict(row) for row, _ in table2()]


def summary_text() -> str:
    header = f"{'model':<10} {'preset':<9} {'conv':>5} {'params':>12}   {'Table 2 conv':>12} {'Table 2 params':>14}  match"
    lines = [header, "-" * len(header)]
    notes = []
    for row, note in table2():
        match = "yes" if (row.conv_layers, row.params) == (row.paper_conv_layers, row.paper_params) else "no"
        lines.append(
            f"{row.model:<10} {row.preset:<11} {row.conv_layers:>5} {row.params:>12,}   "
            f"{row.paper_conv_layers:>12} {row.paper_params:>14,}  {match}"
        )
        if note:
            notes.append(f"- {row.model} ({row.preset}): {note}")
    return "\n".join(lines + [""] + notes)
