"""95 % intervals of the paper's metrics by bootstrap over test cases and training seeds.

Why: one training of a network, scored on a handful of test cases, gives one number; whether
AH-Net's 0.41 is above MC-GCN's 0.35 depends on which cases happened to be drawn and on how that
training went. Two levels of resampling put both into the interval of every number:

1. training seeds with replacement: a resample averages the metric over N seeds drawn from the
   N trained (training variation; with one seed this level does nothing);
2. test cases with replacement: one draw of C cases from the C test cases, the same for every
   drawn seed and every row, since all rows were scored on the same cases (test set variation).

The metric is recomputed from per-case quantities on every resample - Dice global from the cases'
voxel counts (not an average of Dice), Dice per case as the mean of the drawn cases' Dice, the
FROC from the drawn volumes' findings with the FP rate per volume of the resample - so that each
interval is the metric's own. A draw repeats a case by giving it weight 2, 3, ...: every metric
here is a function of the cases' weights (:data:`Metric`).

A :class:`Bootstrap` draws once; every estimate made with it uses the same draws, so the
difference of two rows is a paired bootstrap (same seeds, same cases), the test that fits rows
trained and scored side by side: :func:`verdict` says "holds" only when the difference's interval
lies above 0. Intervals are the 2.5 and 97.5 percentiles of the replicates (percentile bootstrap).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError

#: Resamples per interval: percentiles of 2000 replicates move by about 0.01 of the interval's width.
RESAMPLES = 2000

#: Coverage of the intervals.
LEVEL = 0.95

#: ``metric(material, weights)``: one seed's per-case material (cases in a fixed order) and case weights of
#: shape (R, C) -> the metric of each of the R weighted case sets, shape (R,). Weights of ones: the plain metric.
Metric = Callable[[Any, np.ndarray], np.ndarray]

_BLOCK = 1 << 22  # array elements per block of froc_tpr's resamples


@dataclass(frozen=True)
class Interval:
    """A mean and its 95 % interval."""

    mean: float
    low: float
    high: float

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high

    def format(self, digits: int = 3, sign: bool = False) -> str:
        """``0.410 [0.300, 0.520]`` (``+0.060 [-0.030, 0.150]`` with ``sign``)."""
        mean = f"{self.mean:+.{digits}f}" if sign else f"{self.mean:.{digits}f}"
        return f"{mean} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Estimate:
    """A row's interval and the replicates it came from (kept for paired differences)."""

    interval: Interval
    replicates: np.ndarray


class Bootstrap:
    """One two-level draw (seeds, then cases) of ``resamples`` resamples, from a seeded generator."""

    def __init__(self, seeds: int, cases: int, resamples: int = RESAMPLES, seed: int = 0):
        for name, n in (("seeds", seeds), ("cases", cases), ("resamples", resamples)):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise ConfigError(f"bootstrap: {name} must be a whole number >= 1, got {n!r}")
        rng = np.random.default_rng(seed)
        self.seeds, self.cases = int(seeds), int(cases)
        # how often each seed / case is drawn in each resample: multinomial counts = draws with replacement
        self.seed_weights = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=resamples).astype(np.float64)
        self.case_weights = rng.multinomial(cases, np.full(cases, 1 / cases), size=resamples).astype(np.float64)

    def estimate(self, metric: Metric, materials: Sequence[Any]) -> Estimate:
        """Mean over seeds of ``metric`` on all cases, and its interval; ``materials``: one per seed."""
        if len(materials) != self.seeds:
            raise ConfigError(f"bootstrap: {len(materials)} seed(s) of material for a draw of {self.seeds}")
        everything = np.ones((1, self.cases))
        mean = float(np.mean([metric(m, everything)[0] for m in materials]))
        per_seed = np.stack([metric(m, self.case_weights) for m in materials], axis=1)  # (R, S)
        replicates = (per_seed * self.seed_weights).sum(axis=1) / self.seeds
        return Estimate(Interval(mean, *_percentiles(replicates)), replicates)

    @staticmethod
    def difference(better: Estimate, worse: Estimate) -> Interval:
        """Paired bootstrap of ``better - worse`` (both estimated with this draw)."""
        return Interval(better.interval.mean - worse.interval.mean,
                        *_percentiles(better.replicates - worse.replicates))


def verdict(difference: Interval) -> str:
    """Whether "better > worse" is shown by the paired difference: ``holds`` (interval above 0),
    ``does not hold`` (below 0: the reverse is shown) or ``not shown`` (the interval holds 0)."""
    if difference.low > 0:
        return "holds"
    if difference.high < 0:
        return "does not hold"
    return "not shown"


# ------------------------------------------------------------------------------------- metrics

def dice_global(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Dice global ``2 sum tp / sum (2 tp + fp + fn)`` of weighted cases; ``counts``: (C, 3) voxel
    counts tp, fp, fn per case (``SegmentationResult.counts``). 1.0 where nothing is in either mask."""
    c = np.asarray(counts, dtype=np.float64).reshape(-1, 3)
    inter = weights @ c[:, 0]
    total = weights @ (2 * c[:, 0] + c[:, 1] + c[:, 2])
    return np.where(total > 0, 2 * inter / np.where(total > 0, total, 1.0), 1.0)


def mean_per_case(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of a per-case score, shape (C,): Dice per case from each case's Dice."""
    return weights @ np.asarray(values, dtype=np.float64) / weights.sum(axis=1)


def froc_tpr(findings: Sequence[tuple[np.ndarray, np.ndarray]], weights: np.ndarray, rate: float) -> np.ndarray:
    """TPR at ``rate`` FP per volume of weighted volumes, read as :func:`~ahnet.evaluation.detection.froc` reads it.

    ``findings``: per volume, the scores of its false positives and, per lesion, the best score of a
    detection inside (-inf: missed), as :func:`~ahnet.evaluation.detection.case_findings` keeps them.
    A volume drawn k times brings k times its lesions, false positives and its place in the FP rate's
    denominator; the threshold sweeps the scores, the TPR is the highest with FP <= rate x volumes.
    """
    volume = np.concatenate([np.full(len(fp) + len(les), i) for i, (fp, les) in enumerate(findings)]).astype(int)
    scores = np.concatenate([np.concatenate([fp, les]) for fp, les in findings]).astype(np.float64)
    is_fp = np.concatenate([np.r_[np.ones(len(fp)), np.zeros(len(les))] for fp, les in findings])
    lesions = weights @ np.array([len(les) for _, les in findings], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    scores, volume, is_fp = scores[order], volume[order], is_fp[order]
    found = np.isfinite(scores)
    # counts at each distinct score (equal scores enter together): the last event of each run of equals
    ends = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True] & found)
    tpr = np.empty(len(weights))
    block = max(1, _BLOCK // max(1, len(scores)))  # resamples at a time: memory stays flat on large test sets
    for start in range(0, len(weights), block):
        w = weights[start:start + block]
        events = w[:, volume]  # (resamples, events): each event weighs as often as its volume is drawn
        n_fp = np.cumsum(events * is_fp, axis=1)[:, ends]
        n_tp = np.cumsum(events * (1 - is_fp) * found, axis=1)[:, ends]
        allowed = w.sum(axis=1, keepdims=True) * rate * (1 + 1e-12)
        best = np.where(n_fp <= allowed, n_tp, 0.0).max(axis=1, initial=0.0)  # both counts grow with the sweep
        n = lesions[start:start + block]
        tpr[start:start + block] = np.where(n > 0, best / np.where(n > 0, n, 1.0), 0.0)
    return tpr


def _percentiles(replicates: np.ndarray) -> tuple[float, float]:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)
