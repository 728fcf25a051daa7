"""How a fused op is checked against its reference: outputs and two orders of gradients, one tolerance.

The tests (tests/test_ops.py) and the GPU check (benchmarks/gpu_check.py) both compare the CUDA kernels
with the pure-PyTorch reference this way, so a pass means the same in both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

# Allowed error relative to the reference's largest magnitude, per dtype the op runs in.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.float64: 1e-10}


def three_orders(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], seed: int = 0
                 ) -> list[torch.Tensor]:
    """[y, first-order grads..., second-order grads...] of fn(*inputs) for seeded random output and
    gradient weights (the same for both implementations when the seed is the same)."""
    g = torch.Generator(device=inputs[0].device).manual_seed(1000 + seed)
    y = fn(*inputs)
    dy = torch.randn(y.shape, generator=g, device=y.device).to(y.dtype)
    grads = torch.autograd.grad((y * dy).sum(), inputs, create_graph=True)
    weights = [torch.randn(t.shape, generator=g, device=t.device) for t in grads]
    # y.sum() keeps the second pass defined where the first-order grads do not depend on the inputs.
    total = sum((t.float() * w).sum() for t, w in zip(grads, weights)) + y.float().sum()
    return [y, *grads, *torch.autograd.grad(total, inputs)]


def agreement(got: torch.Tensor, want: torch.Tensor, tol: float) -> tuple[float, float, bool]:
    """(max abs error, that error / the reference's largest magnitude, within tolerance) of one output;
    within tolerance: finite and allclose(rtol=tol, atol=tol * that magnitude)."""
    got, want = got.detach().float(), want.detach().float()
    scale = max(want.abs().max().item(), 1e-6)
    if not bool(torch.isfinite(got).all()):
        return math.inf, math.inf, False
    err = (got - want).abs().max().item()
    return err, err / scale, torch.allclose(got, want, rtol=tol, atol=tol * scale)
