"""From a trained MC-GCN checkpoint to an AH-Net checkpoint ready for ``train3d --init`` (Eq. 1-3)."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from ..models import transfer_2d_to_3d
from ..models.factory import model_from_meta, model_meta
from .checkpoint import load_checkpoint, load_model_state, save_checkpoint


def transfer_checkpoint(source: str | Path, out: str | Path, preset: str = "paper", options: dict | None = None) -> Path:
    """Transfer the encoder of the MC-GCN in ``source`` into a new AH-Net (``preset``, with
    ``options`` overriding its structure) saved at ``out``."""
    saved = load_checkpoint(source, kind="train")
    meta = saved["model_meta"]
    if meta["model"] != "mc-gcn":
        raise CheckpointError(f"{source}: holds a {meta['model']!r}; transfer needs an mc-gcn checkpoint (train2d)")
    mcgcn = model_from_meta(meta)
    load_model_state(mcgcn, saved["model"], source)
    target_meta = model_meta("ahnet", meta["image_channels"], meta["out_channels"], meta["backbone"], preset, options)
    ahnet = transfer_2d_to_3d(mcgcn, model_from_meta(target_meta))
    out = Path(out)
    save_checkpoint(out, {
        "kind": "transfer",
        "model_meta": target_meta,
        "model": ahnet.state_dict(),
        "source": str(source),
        "preprocessing": saved.get("preprocessing"),
    })
    return out
