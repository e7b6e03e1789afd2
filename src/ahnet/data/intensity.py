"""Intensity normalisation of one channel: an HU window (§4.2), a clipped z-score, or a per-case z-score."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

#: The paper's liver window (§4.2): "truncated to the range of [-125, 225] HU".
DEFAULT_CT_WINDOW = (-125.0, 225.0)

#: Names of the modes (``ct`` is the window, the name checkpoints have always used for it).
MODES = ("ct", "clip-zscore", "zscore")


@dataclass(frozen=True)
class Intensity:
    """How one channel's values become network inputs.

    ``mode="ct"``: clip to ``window`` (HU) and scale linearly to [0, 1] (the paper's liver window);
    ``mode="clip-zscore"``: clip to ``window``, subtract ``mean`` and divide by ``std``, numbers of the
    whole data set's foreground (nnU-Net's CT scheme: the window is the foreground's 0.5-99.5 percentiles);
    ``mode="zscore"``: subtract the volume's own mean and divide by its standard deviation.
    """

    mode: str = "zscore"
    window: tuple[float, float] = DEFAULT_CT_WINDOW
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"intensity mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        lo, hi = self.window
        if not hi > lo:
            raise ConfigError(f"the intensity window must be (low, high) with low < high, got {self.window}")
        if not self.std > 0:
            raise ConfigError(f"the intensity std must be positive, got {self.std}")

    @classmethod
    def for_modality(cls, modality: str, window: tuple[float, float] | None = None) -> "Intensity":
        """CT (any case, as nnU-Net's ``channel_names``) gets the HU window; anything else z-scores."""
        if modality.strip().upper() == "CT":
            return cls("ct", tuple(window) if window else DEFAULT_CT_WINDOW)
        return cls("zscore", tuple(window) if window else DEFAULT_CT_WINDOW)

    @property
    def value_range(self) -> tuple[float, float]:
        """The interval the normalised values lie in: a window's ends map to its bounds (a per-case
        z-score has none)."""
        if self.mode == "zscore":
            return -np.inf, np.inf
        lo, hi = self(np.asarray(self.window, dtype=np.float64))
        return float(lo), float(hi)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "window": list(self.window), "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: dict) -> "Intensity":
        return cls(d["mode"], tuple(d["window"]), float(d.get("mean", 0.0)), float(d.get("std", 1.0)))

    def __call__(self, array: np.ndarray) -> np.ndarray:
        array = np.asarray(array, dtype=np.float32)
        if self.mode == "ct":
            lo, hi = self.window
            return ((np.clip(array, lo, hi) - lo) / (hi - lo)).astype(np.float32)
        if self.mode == "clip-zscore":
            lo, hi = self.window
            return ((np.clip(array, lo, hi) - self.mean) / self.std).astype(np.float32)
        std = float(array.std())
        return ((array - float(array.mean())) / (std if std > 0 else 1.0)).astype(np.float32)
