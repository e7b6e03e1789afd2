"""Training losses of AH-Net (§3.4): L2 / cross-entropy first, then their focal forms.

§3.4 trains with a plain loss (L2 on the DBT lesion heatmaps of §4.1, cross-entropy on the LiTS
segmentation of §4.2) and, once that loss "barely decreases", replaces it with a focal version
that down-weights the easy voxels (hard-voxel mining): Eq. 4 for L2, Lin et al. 2017 [13] for
cross-entropy. :class:`LossSchedule` does that switch. Beyond the paper, segmentation may add a
soft Dice term to either phase (:func:`soft_dice_loss`, nnU-Net's Dice + CE).

Tensors are ``(N, C, X, Y, Z)`` (or ``(N, C, X, Y)`` in 2D); class targets are ``(N, X, Y[, Z])``.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import CheckpointError, ConfigError, InputShapeError

__all__ = [
    "LossSchedule",
    "cross_entropy_loss",
    "focal_cross_entropy_loss",
    "focal_l2_loss",
    "l2_loss",
    "soft_dice_loss",
]


# --------------------------------------------------------------------------------------- checks
def _check_number(name: str, value, minimum: float, strict: bool) -> float:
    """``value`` as a finite float ``>= minimum`` (``> minimum`` if ``strict``), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if value < minimum or (strict and value == minimum):
        raise ConfigError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value:g}")
    return value


def _check_tensor(name: str, x, floating: bool) -> None:
    if not isinstance(x, Tensor):
        raise InputShapeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise InputShapeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def _check_same_shape(pred: Tensor, target: Tensor, loss: str) -> None:
    _check_tensor("pred", pred, floating=True)
    _check_tensor("target", target, floating=False)
    if pred.shape != target.shape:
        raise InputShapeError(
            f"{loss}: pred and target must have the same shape, got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    if pred.numel() == 0:
        raise InputShapeError(f"{loss}: pred is empty (shape {tuple(pred.shape)})")


def _check_classes(logits: Tensor, target: Tensor, loss: str) -> Tensor:
    """Validate ``logits (N, C, ...)`` against ``target (N, ...)`` and return target as int64."""
    _check_tensor("logits", logits, floating=True)
    _check_tensor("target", target, floating=False)
    if logits.dim() < 2:
        raise InputShapeError(f"{loss}: logits must be (N, C, ...), got shape {tuple(logits.shape)}")
    expected = (logits.shape[0],) + tuple(logits.shape[2:])
    if tuple(target.shape) != expected:
        raise InputShapeError(
            f"{loss}: target must be (N, ...) = {expected} class indices for logits of shape "
            f"{tuple(logits.shape)}, got {tuple(target.shape)}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise InputShapeError(f"{loss}: target must hold integer class indices (int64), got {target.dtype}")
    if logits.numel() == 0:
        raise InputShapeError(f"{loss}: logits is empty (shape {tuple(logits.shape)})")
    n_classes = logits.shape[1]
    lo, hi = int(target.min()), int(target.max())
    if lo < 0 or hi >= n_classes:
        raise InputShapeError(
            f"{loss}: target class indices must be in [0, {n_classes}) for {n_classes} logit "
            f"channel(s), got values in [{lo}, {hi}]"
        )
    return target.long()


def _check_class_vector(name: str, values, n_classes: int | None = None) -> list[float] | None:
    """A per-class sequence of finite non-negative numbers as a list (None stays None)."""
    if values is None:
        return None
    if isinstance(values, Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigError(f"{name} must be None or a per-class sequence of numbers, got {values!r}")
    out = [_check_number(f"{name}[{i}]", v, 0.0, strict=False) for i, v in enumerate(values)]
    if not out:
        raise ConfigError(f"{name} must not be empty")
    if n_classes is not None and len(out) != n_classes:
        raise ConfigError(f"{name} has {len(out)} value(s) but the logits have {n_classes} classes")
    return out


def _safe_pow(base: Tensor, gamma: float) -> Tensor:
    """``base ** gamma`` for ``base >= 0`` with a finite gradient at ``base == 0`` for any gamma > 0.

    Plain ``pow`` back-propagates ``gamma * 0 ** (gamma - 1) = inf`` there (for gamma < 1), which
    times a zero upstream gradient gives NaN; the double ``where`` gives the exact value and a zero
    gradient at the origin instead.
    """
    positive = base > 0
    safe = torch.where(positive, base, torch.ones_like(base))
    return torch.where(positive, safe.pow(gamma), torch.zeros_like(base))


# ---------------------------------------------------------------------------------------- L2
def l2_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean squared error over all voxels: the regression loss of the DBT heatmaps (§3.4, §4.1).

    ``weight`` (optional, broadcastable to ``pred``) multiplies the per-voxel squared error
    before the mean over all voxels, i.e. ``mean(weight * (pred - target) ** 2)``.
    """
    _check_same_shape(pred, target, "l2_loss")
    sq = (pred - target.to(pred.dtype)).square()
    if weight is not None:
        _check_tensor("weight", weight, floating=False)
        try:
            shape = torch.broadcast_shapes(weight.shape, sq.shape)
        except RuntimeError:
            shape = None
        if shape != sq.shape:
            raise InputShapeError(
                f"l2_loss: weight of shape {tuple(weight.shape)} does not broadcast to pred's "
                f"shape {tuple(sq.shape)}"
            )
        sq = sq * weight.to(sq.dtype)
    return sq.mean()


def focal_l2_loss(pred: Tensor, target: Tensor, gamma: float = 2.0, d_max: float = 1.0) -> Tensor:
    """Focal L2 loss (Eq. 4, §3.4): ``mean(factor * D)``, ``D = (pred - target) ** 2`` per voxel.

    Eq. 4 prints ``factor = (ln D / ln D_max) ** gamma``, which for D < 1 is inverted (it
    up-weights easy voxels) or NaN (negative ratio to a fractional power). We use
    ``factor = (ln(1 + D) / ln(1 + d_max)) ** gamma``: equal to Eq. 4's ratio for large D, 0 at
    D = 0, increasing in D, 1 at D = d_max. The factor is not detached; gamma = 0 is exactly L2.
    """
    gamma = _check_number("gamma", gamma, 0.0, strict=False)
    d_max = _check_number("d_max", d_max, 0.0, strict=True)
    _check_same_shape(pred, target, "focal_l2_loss")
    if gamma == 0.0:
        return l2_loss(pred, target)
    d = (pred - target.to(pred.dtype)).square()
    factor = _safe_pow(torch.log1p(d) / math.log1p(d_max), gamma)
    return (factor * d).mean()


# -------------------------------------------------------------------------------- cross-entropy
def cross_entropy_loss(logits: Tensor, target: Tensor, class_weights=None) -> Tensor:
    """Softmax cross-entropy over voxels, the LiTS segmentation loss (§3.4, §4.2).

    ``logits`` ``(N, C, ...)``, ``target`` int64 ``(N, ...)`` in ``[0, C)``. With
    ``class_weights`` it is PyTorch's weighted mean ``sum(w_t * nll) / sum(w_t)``.
    """
    target = _check_classes(logits, target, "cross_entropy_loss")
    weights = _check_class_vector("class_weights", class_weights, logits.shape[1])
    w = None if weights is None else torch.tensor(weights, dtype=logits.dtype, device=logits.device)
    if w is not None and float(w[target].sum()) == 0.0:
        raise ConfigError("cross_entropy_loss: class_weights give every target voxel weight 0")
    return F.cross_entropy(logits, target, weight=w)


def focal_cross_entropy_loss(logits: Tensor, target: Tensor, gamma: float = 2.0, alpha=None) -> Tensor:
    """Multi-class softmax focal loss (Lin et al. 2017 [13], the CE form of §3.4).

    ``mean(-alpha_t * (1 - p_t) ** gamma * log p_t)`` over all voxels (a plain mean, not divided
    by the alphas). ``log p_t`` comes from ``log_softmax`` and ``1 - p_t`` from ``-expm1(log p_t)``,
    so nothing takes the log of 0 even at extreme logits. gamma = 0, alpha = None is exactly
    :func:`cross_entropy_loss`. MONAI's ``FocalLoss(use_softmax=True)`` averages over the class
    axis too, so it is this value divided by C.
    """
    gamma = _check_number("gamma", gamma, 0.0, strict=False)
    target = _check_classes(logits, target, "focal_cross_entropy_loss")
    alphas = _check_class_vector("alpha", alpha, logits.shape[1])
    log_pt = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -log_pt
    if gamma != 0.0:
        loss = _safe_pow(-torch.expm1(log_pt), gamma) * loss
    if alphas is not None:
        loss = torch.tensor(alphas, dtype=loss.dtype, device=loss.device)[target] * loss
    return loss.mean()


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1e-5) -> Tensor:
    """``1 - mean_c Dice_c`` of the softmax probabilities over the foreground classes ``c >= 1``.

    Each class's Dice is taken over the whole batch at once (nnU-Net's batch Dice): a patch without
    that class then costs only its false positives, instead of a Dice of 0 whatever the network does.
    Cross-entropy is a per-voxel average, so on an organ it is content with probabilities near 0.5
    at the border and inside unusual tissue; Dice scores the overlap that is measured at the end and
    so pushes those voxels over the argmax threshold. Computed in float32 (safe under autocast).
    """
    target = _check_classes(logits, target, "soft_dice_loss")
    if logits.shape[1] < 2:
        raise ConfigError("soft_dice_loss needs at least two classes (background and one foreground)")
    probs = F.softmax(logits.float(), dim=1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1)[:, 1:].to(probs.dtype)
    axes = [0, *range(2, probs.ndim)]
    overlap = (probs * onehot).sum(axes)
    total = probs.sum(axes) + onehot.sum(axes)
    return 1.0 - ((2.0 * overlap + smooth) / (total + smooth)).mean()


# ------------------------------------------------------------------------------------ schedule
class LossSchedule:
    """The §3.4 loss schedule: train with CE or L2, then switch once to the focal form.

    §3.4: "We replace the original L2 loss with FL after a few epochs when the L2 loss barely
    decreases" (§4.1: "trained till convergence then ... replaced with the Focal Loss").

    * ``base``: ``"ce"`` (logits + int64 classes) or ``"l2"`` (regression maps).
    * ``switch_epoch`` given: switch at the end of that epoch (``end_epoch(switch_epoch, ...)``
      returns True; the focal loss is used from epoch ``switch_epoch + 1``); plateau detection is
      then off, so the schedule is exactly the one asked for.
    * otherwise: switch once the epoch loss has failed to beat the best so far by more than
      ``threshold`` (relative: ``loss < best * (1 - threshold)``) for ``patience`` consecutive
      epochs (a NaN loss counts as no improvement).
    * ``focal=False``: never switch (a plain L2 / CE baseline).
    * ``dice=True`` (``base="ce"`` only): :func:`soft_dice_loss` is added to the loss of both
      phases (Dice + CE, then Dice + focal CE).

    After the switch no further switch happens: the focal loss is smaller than the base loss, so
    the two are not comparable and the plateau tracking is reset and stops.
    """

    _STATE_KEYS = ("base", "gamma", "d_max", "patience", "threshold", "switch_epoch", "focal",
                   "alpha", "phase", "switched_at", "best", "num_bad_epochs", "dice")
    #: keys that states written by older versions lack, with the value they meant
    _STATE_DEFAULTS = {"dice": False}

    def __init__(self, base: str, gamma: float = 2.0, d_max: float = 1.0, patience: int = 3,
                 threshold: float = 0.01, switch_epoch: int | None = None, focal: bool = True,
                 alpha=None, dice: bool = False):
        if base not in ("ce", "l2"):
            raise ConfigError(f"LossSchedule base must be 'ce' or 'l2', got {base!r}")
        self.base = base
        self.gamma = _check_number("gamma", gamma, 0.0, strict=False)
        self.d_max = _check_number("d_max", d_max, 0.0, strict=True)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ConfigError(f"patience must be an int >= 1, got {patience!r}")
        self.patience = int(patience)
        self.threshold = _check_number("threshold", threshold, 0.0, strict=False)
        if switch_epoch is not None and (isinstance(switch_epoch, bool) or not isinstance(switch_epoch, int)
                                         or switch_epoch < 0):
            raise ConfigError(f"switch_epoch must be None or an int >= 0, got {switch_epoch!r}")
        self.switch_epoch = None if switch_epoch is None else int(switch_epoch)
        if not isinstance(focal, bool):
            raise ConfigError(f"focal must be True or False, got {focal!r}")
        self.focal = focal
        if alpha is not None and base != "ce":
            raise ConfigError("alpha (per-class focal weights) only applies to base='ce'")
        self.alpha = _check_class_vector("alpha", alpha)
        if not isinstance(dice, bool):
            raise ConfigError(f"dice must be True or False, got {dice!r}")
        if dice and base != "ce":
            raise ConfigError("dice (a soft Dice term) only applies to base='ce' (class targets)")
        self.dice = dice
        self.phase = "base"
        self.switched_at: int | None = None
        self.best: float | None = None
        self.num_bad_epochs = 0

    def __repr__(self) -> str:
        return (f"LossSchedule(base={self.base!r}, phase={self.phase!r}, gamma={self.gamma:g}, "
                f"dice={self.dice}, switched_at={self.switched_at})")

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        """The loss of the current phase."""
        if self.base == "l2":
            if self.phase == "focal":
                return focal_l2_loss(pred, target, gamma=self.gamma, d_max=self.d_max)
            return l2_loss(pred, target)
        if self.phase == "focal":
            loss = focal_cross_entropy_loss(pred, target, gamma=self.gamma, alpha=self.alpha)
        else:
            loss = cross_entropy_loss(pred, target)
        return loss + soft_dice_loss(pred, target) if self.dice else loss

    def end_epoch(self, epoch: int, epoch_loss: float) -> bool:
        """Record the mean training loss of ``epoch``; True if the loss switched to focal now."""
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise ConfigError(f"epoch must be an int, got {epoch!r}")
        if not self.focal or self.phase == "focal":
            return False
        if self.switch_epoch is not None:
            switch = epoch >= self.switch_epoch
        else:
            loss = float(epoch_loss)
            if self.best is None or loss < self.best - self.threshold * abs(self.best):
                self.best, self.num_bad_epochs = loss, 0
            else:
                self.num_bad_epochs += 1
            switch = self.num_bad_epochs >= self.patience
        if switch:
            self.phase, self.switched_at = "focal", int(epoch)
            self.best, self.num_bad_epochs = None, 0
        return switch

    def state_dict(self) -> dict:
        """Configuration and progress as plain Python values (loads with ``weights_only=True``)."""
        state = {k: getattr(self, k) for k in self._STATE_KEYS}
        state["alpha"] = None if self.alpha is None else list(self.alpha)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore configuration and progress from :meth:`state_dict` (validated)."""
        if not isinstance(state, dict):
            raise CheckpointError(f"LossSchedule state must be a dict, got {type(state).__name__}")
        state = {**self._STATE_DEFAULTS, **state}
        missing = [k for k in self._STATE_KEYS if k not in state]
        if missing:
            raise CheckpointError(f"LossSchedule state lacks {missing}")
        try:
            fresh = LossSchedule(state["base"], gamma=state["gamma"], d_max=state["d_max"],
                                 patience=state["patience"], threshold=state["threshold"],
                                 switch_epoch=state["switch_epoch"], focal=state["focal"],
                                 alpha=state["alpha"], dice=state["dice"])
        except ConfigError as exc:
            raise CheckpointError(f"LossSchedule state is not valid: {exc}") from exc
        phase, switched_at, best, bad = (state["phase"], state["switched_at"], state["best"],
                                         state["num_bad_epochs"])
        if phase not in ("base", "focal") or (phase == "focal") != (switched_at is not None):
            raise CheckpointError(f"LossSchedule state has phase={phase!r} with switched_at={switched_at!r}")
        if not isinstance(bad, int) or bad < 0 or not (best is None or isinstance(best, (int, float))):
            raise CheckpointError(f"LossSchedule state has best={best!r}, num_bad_epochs={bad!r}")
        self.__dict__.update(fresh.__dict__)
        self.phase, self.switched_at, self.num_bad_epochs = phase, switched_at, bad
        self.best = None if best is None else float(best)
