"""Fused bias + activation + gain + clamp.

y = clamp(act(x + b) * gain, -clamp, clamp), with b broadcast along `dim`.

Two implementations share one interface: a plain-PyTorch reference (`impl="ref"`, always available, used on
CPU) and a fused CUDA kernel (`impl="cuda"`, used when x lives on a GPU and the extension built). The CUDA
path has its own autograd Functions whose backward is again built from the same kernel, so second-order
gradients (R1, path-length regularisation) work on both paths.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from corgigan.stylegan2.ops import build

_SELU_SCALE = 1.0507009873554805
_SELU_ALPHA = 1.6732632423543772


@dataclass(frozen=True)
class Activation:
    """One activation: its reference function, kernel id and defaults."""

    name: str
    func: Callable[[Tensor, float], Tensor]  # (x, alpha) -> act(x), plain torch, differentiable
    cuda_id: int  # the switch value in bias_act.cu
    def_alpha: float | None  # None: the activation takes no alpha
    def_gain: float
    has_second_derivative: bool  # False: piecewise linear, so the double backward needs no 2nd-order term


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("linear", lambda x, _: x, 0, None, 1.0, False),
        Activation("relu", lambda x, _: torch.relu(x), 1, None, math.sqrt(2), False),
        Activation("lrelu", lambda x, a: torch.nn.functional.leaky_relu(x, a), 2, 0.2, math.sqrt(2), False),
        Activation("tanh", lambda x, _: torch.tanh(x), 3, None, 1.0, True),
        Activation("sigmoid", lambda x, _: torch.sigmoid(x), 4, None, 1.0, True),
        Activation("elu", lambda x, _: torch.nn.functional.elu(x), 5, None, 1.0, True),
        Activation("selu", lambda x, _: torch.nn.functional.selu(x), 6, None, 1.0, True),
        Activation("softplus", lambda x, _: torch.nn.functional.softplus(x), 7, None, 1.0, True),
        Activation("swish", lambda x, _: torch.sigmoid(x) * x, 8, None, math.sqrt(2), True),
    )
}


def _resolve(act: str, alpha: float | None, gain: float | None, clamp: float | None):
    """Validate arguments and fill in the activation's defaults: -> (spec, alpha, gain, clamp or -1)."""
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; choose one of {sorted(ACTIVATIONS)}")
    spec = ACTIVATIONS[act]
    if alpha is not None and spec.def_alpha is None:
        raise ValueError(f"activation {act!r} takes no alpha (got alpha={alpha})")
    alpha = float(alpha if alpha is not None else (spec.def_alpha or 0.0))
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp if clamp is not None else -1.0)  # negative: no clamping
    return spec, alpha, gain, clamp


def _check_bias(x: Tensor, b: Tensor | None, dim: int) -> int:
    """Normalise `dim` and check that b is a vector of x.shape[dim] elements."""
    if x.ndim == 0:
        raise ValueError("bias_act needs a tensor with at least one dimension")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim={dim} is out of range for a {x.ndim}-D tensor")
    dim %= x.ndim
    if b is not None and (b.ndim != 1 or b.shape[0] != x.shape[dim]):
        raise ValueError(f"bias must have shape [{x.shape[dim]}] (x.shape[{dim}]), got {list(b.shape)}")
    return dim


def bias_act(
    x: Tensor,
    b: Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
    impl: str = "cuda",
) -> Tensor:
    """Add bias `b` along `dim`, apply `act`, scale by `gain`, clamp to [-clamp, clamp].

    act: linear, relu, lrelu (alpha defaults to 0.2), tanh, sigmoid, elu, selu, softplus, swish.
    gain defaults to the activation's own (sqrt(2) for relu, lrelu and swish, else 1); clamp None = none.
    impl: "cuda" = the fused kernel when x is on a GPU and the extension is available, else the reference;
    "ref" = always the reference.
    """
    if impl not in ("cuda", "ref"):
        raise ValueError(f"impl must be 'cuda' or 'ref', got {impl!r}")
    dim = _check_bias(x, b, dim)
    spec, alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
    if impl == "cuda" and x.is_cuda:
        ext = build.load_extension("bias_act")
        if ext is not None:
            return _bias_act_cuda(x, b, dim, spec, alpha, gain, clamp, ext)
    return _bias_act_ref(x, b, dim, spec, alpha, gain, clamp)


def _bias_act_ref(
    x: Tensor, b: Tensor | None, dim: int, spec: Activation, alpha: float, gain: float, clamp: float
) -> Tensor:
    """Plain-torch reference; autograd through these ops gives every order of derivative."""
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.to(x.dtype).reshape(shape)
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


# ---------------------------------------------------------------------------------------------------------
# CUDA path. The kernel computes, for s = x + b and h(s) = act(s) * gain (zero where |h| >= clamp):
#   order 0: h(s)         order 1: g * h'(s)         order 2: g * h''(s)
# forward = order 0; backward = order 1 with g = dy; the backward of that is order 1 again (w.r.t. dy) plus
# order 2 (w.r.t. x), so a double backward needs no further kernels.


def _bias_act_cuda(x, b, dim, spec, alpha, gain, clamp, ext) -> Tensor:
    if b is not None and b.device != x.device:
        raise ValueError(f"bias is on {b.device} but x is on {x.device}")
    return _BiasAct.apply(x, b, (ext, dim, spec, alpha, gain, clamp))


def _run(ext, order: int, x: Tensor, b: Tensor | None, g: Tensor | None, cfg) -> Tensor:
    _, dim, spec, alpha, gain, clamp = cfg
    empty = x.new_empty([0])
    x = x.contiguous()
    b = empty if b is None else b.to(x.dtype).contiguous()
    g = empty if g is None else g.to(x.dtype).contiguous()
    return ext.bias_act(x, b, g, dim, spec.cuda_id, order, alpha, gain, clamp)


def _sum_to_bias(dx: Tensor, dim: int, b: Tensor) -> Tensor:
    axes = [i for i in range(dx.ndim) if i != dim]
    return dx.sum(axes).to(b.dtype) if axes else dx.to(b.dtype)


class _BiasAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, cfg):
        ctx.cfg = cfg
        ctx.save_for_backward(x, b)
        return _run(cfg[0], 0, x, b, None, cfg)

    @staticmethod
    def backward(ctx, dy):
        x, b = ctx.saved_tensors
        dx = db = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            dx = _BiasActGrad.apply(dy, x, b, ctx.cfg)
        if b is not None and ctx.needs_input_grad[1]:
            db = _sum_to_bias(dx, ctx.cfg[1], b)
        return dx, db, None


class _BiasActGrad(torch.autograd.Function):
    """dx = dy * h'(x + b); differentiable in dy, x and b."""

    @staticmethod
    def forward(ctx, dy, x, b, cfg):
        ctx.cfg = cfg
        ctx.save_for_backward(dy, x, b)
        return _run(cfg[0], 1, x, b, dy, cfg)

    @staticmethod
    def backward(ctx, ddx):
        dy, x, b = ctx.saved_tensors
        cfg = ctx.cfg
        d_dy = d_x = d_b = None
        if ctx.needs_input_grad[0]:
            d_dy = _BiasActGrad.apply(ddx, x, b, cfg)
        # Piecewise-linear activations have h'' = 0: None tells autograd the gradient is zero.
        if (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]) and cfg[2].has_second_derivative:
            d_x = _BiasActGrad2.apply(ddx * dy, x, b, cfg)
            if b is not None and ctx.needs_input_grad[2]:
                d_b = _sum_to_bias(d_x, cfg[1], b)
        return d_dy, d_x, d_b, None


class _BiasActGrad2(torch.autograd.Function):
    """g * h''(x + b): the second-order term; third-order gradients are not supported."""

    @staticmethod
    def forward(ctx, g, x, b, cfg):
        return _run(cfg[0], 2, x, b, g, cfg)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, _):
        raise RuntimeError("bias_act (CUDA) supports derivatives up to second order only")
