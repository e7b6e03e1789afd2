"""Activation recomputation: training on less memory for about one more forward pass.

A training step keeps every intermediate map of the forward pass for the backward pass; in AH-Net's
densely connected decoder (§3.3) at the paper's 192x192x64 patch these are gigabytes. With
recomputation a unit (an encoder block, a decoder level) keeps only its input: autograd runs the unit
again in the backward pass, one unit at a time (``torch.utils.checkpoint``, non-reentrant). The result
and the gradients are the same numbers, since the same kernels run on the same inputs.

A batch norm in training mode updates its running statistics on every call, so the second run of a unit
would count each batch twice; :func:`recomputed` puts them back as the first run left them.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

#: How a network runs a unit in its forward: :func:`direct` or :func:`recomputed`.
Run = Callable[..., torch.Tensor]


def direct(unit: Callable[..., torch.Tensor], *inputs: torch.Tensor, owner: nn.Module | None = None) -> torch.Tensor:
    """``unit(*inputs)``, its activations kept for the backward pass as usual."""
    return unit(*inputs)


def recomputed(unit: Callable[..., torch.Tensor], *inputs: torch.Tensor, owner: nn.Module | None = None) -> torch.Tensor:
    """``unit(*inputs)`` keeping only the inputs: the backward pass runs ``unit`` again. ``owner`` is the
    module whose batch norms ``unit`` runs (``unit`` itself when it is a module)."""
    module = owner if owner is not None else unit
    if not isinstance(module, nn.Module):
        raise TypeError("recomputed needs the module that holds the unit's batch norms (owner=...)")
    return checkpoint(unit, *inputs, use_reentrant=False,
                      context_fn=lambda: (nullcontext(), _statistics_kept(module)))


def runner(model: nn.Module, recompute: bool) -> Run:
    """:func:`recomputed` while ``model`` trains with gradients and ``recompute`` is set, else :func:`direct`
    (evaluation, batch-norm calibration and validation under ``no_grad`` keep nothing anyway)."""
    return recomputed if recompute and model.training and torch.is_grad_enabled() else direct


@contextmanager
def _statistics_kept(module: nn.Module) -> Iterator[None]:
    """Running statistics of the batch norms in ``module`` restored on exit."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
