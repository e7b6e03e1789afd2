"""The training curve, redrawn every epoch: loss, validation metric, stage and loss switches."""

from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_write


def plot_training_curve(history: list[dict], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    ax.set_yscale("log")
    if any("val_metric" in h for h in history):
        right = ax.twinx()
        right.plot([h["epoch"] for h in history if "val_metric" in h],
                   [h["val_metric"] for h in history if "val_metric" in h], "s-", color="tab:green",
                   label="validation")
        right.set_ylabel("validation (Dice or sensitivity)", color="tab:green")
        right.set_ylim(0, 1)
    for prev, cur in zip(history, history[1:]):
        if cur["stage"] != prev["stage"]:
            ax.axvline(cur["epoch"] - 0.5, color="grey", ls="--")
            ax.text(cur["epoch"] - 0.45, ax.get_ylim()[1], f" {cur['stage']}", va="top", fontsize=8, color="grey")
    for h in history:
        if h.get("switched_to_focal"):
            ax.axvline(h["epoch"] + 0.5, color="tab:red", ls=":")
            ax.text(h["epoch"] + 0.55, ax.get_ylim()[1], " focal loss", va="top", fontsize=8, color="tab:red")
    ax.set_title("ahnet training")
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
