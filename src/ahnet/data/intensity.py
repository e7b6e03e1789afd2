"""Intensity normalisation: CT clipped to an HU window (§4.2), other modalities z-scored."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

#: The paper's liver window (§4.2): "truncated to the range of [-125, 225] HU".
DEFAULT_CT_WINDOW = (-125.0, 225.0)


@dataclass(frozen=True)
class Intensity:
    """How image values become network inputs.

    ``mode="ct"``: clip to ``window`` (HU) and scale linearly to [0, 1];
    ``mode="zscore"``: subtract the volume's mean and divide by its standard deviation.
    """

    mode: str = "zscore"
    window: tuple[float, float] = DEFAULT_CT_WINDOW

    def __post_init__(self):
        if self.mode not in ("ct", "zscore"):
            raise ConfigError(f"intensity mode must be 'ct' or 'zscore', got {self.mode!r}")
        lo, hi = self.window
        if not hi > lo:
            raise ConfigError(f"the HU window must be (low, high) with low < high, got {self.window}")

    @classmethod
    def for_modality(cls, modality: str, window: tuple[float, float] | None = None) -> "Intensity":
        """CT (any case, as nnU-Net's ``channel_names``) gets the HU window; anything else z-scores."""
        if modality.strip().upper() == "CT":
            return cls("ct", tuple(window) if window else DEFAULT_CT_WINDOW)
        return cls("zscore", tuple(window) if window else DEFAULT_CT_WINDOW)

    def __call__(self, array: np.ndarray) -> np.ndarray:
        array = np.asarray(array, dtype=np.float32)
        if self.mode == "ct":
            lo, hi = self.window
            return ((np.clip(array, lo, hi) - lo) / (hi - lo)).astype(np.float32)
        std = float(array.std())
        return ((array - float(array.mean())) / (std if std > 0 else 1.0)).astype(np.float32)
