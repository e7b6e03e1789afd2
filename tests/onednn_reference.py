"""Training steps with oneDNN, checked against the same computation with oneDNN disabled.

oneDNN picks its kernels by CPU (AVX2, AVX-512, ...), and some of them corrupt the heap, hang or
compute wrong gradients for unusual shapes (``docs/troubleshooting.md``). Run as a child process,
``python tests/onednn_reference.py PLAN.json``, so that such a kernel fails one named test instead
of the whole suite. The plan is ``{"threads": T, "cases": [...]}``; each case is
``{"build": {...}, "shape": [N, C, ...]}`` with ``build`` the keyword arguments of
:func:`ahnet.models.factory.build_model`. Two comparisons per case:

- the step: output, input gradient and every parameter gradient, each as a relative Euclidean
  norm. Max pooling over near-ties routes a few gradient elements by rounding, so two correct
  float32 runs can differ by percents in single elements of a whole network's gradients;
- every distinct convolution the step called (shapes, stride, padding, ...), alone with random
  data: output, input, weight and bias gradients, element-wise. A convolution is linear and well
  conditioned: a kernel that is wrong anywhere shows here.

Batch norms use their running statistics: the convolutions run the kernels of a training step
(forward, input gradient, weight gradient), but batch statistics of 2 samples on a 1x1 map would
amplify the rounding of two correct implementations to percents.

One JSON line per case goes to stdout: the worst relative error of each comparison and where.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from ahnet.models.factory import build_model

CONVOLUTION = torch.ops.aten.convolution.default


class RecordConvolutions(TorchDispatchMode):
    """Collects the distinct argument sets of every convolution while active."""

    def __init__(self):
        super().__init__()
        self.calls: dict[tuple, tuple] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is CONVOLUTION:
            x, w, b, *rest = args
            key = (tuple(x.shape), tuple(w.shape), b is not None, *(tuple(r) if isinstance(r, list) else r for r in rest))
            self.calls.setdefault(key, key)
        return func(*args, **(kwargs or {}))


def _model(case: dict) -> nn.Module:
    torch.manual_seed(case.get("seed", 0))
    model = build_model(**case["build"]).train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def training_step(case: dict, onednn: bool, record: RecordConvolutions | None = None) -> dict[str, torch.Tensor]:
    """Output, input gradient and every parameter gradient of one step (same seed every time)."""
    torch.backends.mkldnn.enabled = onednn
    model = _model(case)
    x = torch.randn(*case["shape"], requires_grad=True)
    with record if record is not None else nullcontext():
        out = model(x)
        out.backward(torch.randn_like(out))
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return {"output": out.detach(), "input.grad": x.grad, **grads}


def convolution_step(key: tuple, onednn: bool) -> dict[str, torch.Tensor]:
    """One convolution of ``key`` alone: output and the gradients of input, weight and bias."""
    torch.backends.mkldnn.enabled = onednn
    x_shape, w_shape, has_bias, stride, padding, dilation, transposed, output_padding, groups = key
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=gen).requires_grad_()
    fan_in = w_shape[1] * max(1, int(torch.tensor(w_shape[2:]).prod()))
    w = (torch.randn(w_shape, generator=gen) / fan_in ** 0.5).requires_grad_()
    b = torch.randn(w_shape[1] if transposed else w_shape[0], generator=gen).requires_grad_() if has_bias else None
    y = torch.ops.aten.convolution(x, w, b, list(stride), list(padding), list(dilation), transposed,
                                   list(output_padding), groups)
    y.backward(torch.randn(y.shape, generator=gen))
    out = {"output": y.detach(), "input.grad": x.grad, "weight.grad": w.grad}
    if b is not None:
        out["bias.grad"] = b.grad
    return out


def relative_errors(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], norm: str) -> dict[str, float]:
    """Difference of each tensor over its reference, as largest values (``norm="max"``) or as
    Euclidean norms (``"l2"``). A gradient that is zero in exact arithmetic (a conv bias before a
    batch norm) is rounding noise in both runs; it is measured against a thousandth of the largest
    gradient instead."""
    size = (lambda t: t.abs().max().item()) if norm == "max" else (lambda t: t.norm().item())
    floor = 1e-3 * max(size(r) for name, r in ref.items() if name != "output")
    return {name: size(got[name] - r) / max(size(r), 1e-12 if name == "output" else floor) for name, r in ref.items()}


def _worst(errors: dict[str, float], what: str = "") -> tuple[float, str]:
    name = max(errors, key=errors.get)
    return errors[name], f"{name}{what}"


def check(case: dict, checked: set) -> dict:
    """The whole step (norm-wise: max pooling over near-ties routes a few gradient elements by
    rounding) and every convolution it called (element-wise) that is not in ``checked`` yet."""
    record = RecordConvolutions()
    start = time.perf_counter()
    got = training_step(case, onednn=True, record=record)
    seconds = time.perf_counter() - start
    step_error, step_worst = _worst(relative_errors(got, training_step(case, onednn=False), "l2"))
    conv_error, conv_worst = 0.0, None
    for key in record.calls.keys() - checked:
        checked.add(key)
        error, worst = _worst(relative_errors(convolution_step(key, True), convolution_step(key, False), "max"),
                              f" of convolution {key}")
        if error >= conv_error:
            conv_error, conv_worst = error, worst
    return {"seconds": round(seconds, 3), "tensors": len(got), "step_error": step_error, "step_worst": step_worst,
            "convolutions": len(record.calls), "convolution_error": conv_error, "convolution_worst": conv_worst}


def main(path: str) -> None:
    with open(path) as f:
        plan = json.load(f)
    torch.set_num_threads(plan.get("threads", torch.get_num_threads()))
    checked: set = set()
    for case in plan["cases"]:
        print(json.dumps({"case": case, **check(case, checked)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
