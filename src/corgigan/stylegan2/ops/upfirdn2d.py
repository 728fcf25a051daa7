"""Upsample, FIR-filter, downsample: the resampling op behind StyleGAN2's up/down layers.

upfirdn2d(x) does, per channel: insert up-1 zeros after every pixel, pad (negative padding crops),
convolve with the 2-D FIR filter f, keep every down-th pixel. Output size per axis:
    (in * up + pad0 + pad1 - taps) // down + 1
f is a 2-D [taps_y, taps_x] filter or a 1-D separable one applied along both axes. Without flip_filter the
operation is a true convolution (the filter is flipped against cross-correlation).

`impl="ref"` is plain PyTorch; `impl="cuda"` runs a direct CUDA kernel when x is on a GPU and the extension
built, else falls back to the reference. The CUDA path's backward is another upfirdn2d (flipped filter,
up and down swapped, padding adjusted), so any order of derivative works on both paths.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from corgigan.stylegan2.ops import build

IntOrPair = int | Sequence[int]


def _pair(v: IntOrPair, what: str) -> tuple[int, int]:
    """int or (x, y) -> (x, y) of ints >= 1."""
    vx, vy = (v, v) if isinstance(v, int) else tuple(v)
    if not (isinstance(vx, int) and isinstance(vy, int) and vx >= 1 and vy >= 1):
        raise ValueError(f"{what} must be a positive int or a pair of them, got {v!r}")
    return vx, vy


def _padding(padding: IntOrPair) -> tuple[int, int, int, int]:
    """int, (x, y) or (x0, x1, y0, y1) -> (x0, x1, y0, y1)."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    p = [int(v) for v in padding]
    if len(p) == 2:
        return p[0], p[0], p[1], p[1]
    if len(p) == 4:
        return p[0], p[1], p[2], p[3]
    raise ValueError(f"padding must be an int, (x, y) or (x0, x1, y0, y1), got {padding!r}")


def _filter_size(f: Tensor | None) -> tuple[int, int]:
    """(taps_x, taps_y) of a 1-D or 2-D filter; None is the identity filter."""
    if f is None:
        return 1, 1
    if f.ndim == 1:
        return f.shape[0], f.shape[0]
    return f.shape[1], f.shape[0]


def setup_filter(
    f,
    device: torch.device = torch.device("cpu"),  # noqa: B008 - an immutable default, as in the agreed API
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1,
    separable: bool | None = None,
) -> Tensor:
    """Turn filter taps (list, array or tensor) into a float32 filter tensor for upfirdn2d.

    A 1-D filter stays 1-D when `separable` (default: when it has 8 or more taps) and is otherwise turned
    into its 2-D outer product. normalize makes the taps sum to 1; gain is the overall gain of the 2-D
    filter (a separable one carries sqrt(gain), as it is applied twice).
    """
    if f is None:
        f = 1
    # Taps are made on the CPU (then moved to `device`), so a network can be laid out on the meta device
    # to count its size before any memory is allocated for it (the importer does).
    f = torch.as_tensor(np.asarray(f, dtype=np.float32) if not isinstance(f, Tensor) else f,
                        dtype=torch.float32, device="cpu")
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"a filter must be a non-empty 1-D or 2-D array, got shape {list(f.shape)}")
    if not torch.isfinite(f).all():
        raise ValueError("filter taps must be finite")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if f.ndim != (1 if separable else 2):
        raise ValueError("a 2-D filter cannot be separable")
    if normalize:
        total = f.sum()
        if total == 0:
            raise ValueError("cannot normalise a filter whose taps sum to 0")
        f = f / total
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def upfirdn2d(
    x: Tensor,
    f: Tensor | None,
    up: IntOrPair = 1,
    down: IntOrPair = 1,
    padding: IntOrPair = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "cuda",
) -> Tensor:
    """Upsample (zero insertion), pad, FIR-filter and downsample x [N, C, H, W].

    f: a 1-D (separable) or 2-D filter from setup_filter, or None for the identity; up/down: int or (x, y);
    padding: int, (x, y) or (x0, x1, y0, y1), negative values crop; gain multiplies the result.
    """
    if impl not in ("cuda", "ref"):
        raise ValueError(f"impl must be 'cuda' or 'ref', got {impl!r}")
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a [N, C, H, W] tensor, got shape {getattr(x, 'shape', None)}")
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    if not isinstance(f, Tensor) or f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError("f must be a 1-D or 2-D filter tensor (see setup_filter)")
    upx, upy = _pair(up, "up")
    downx, downy = _pair(down, "down")
    pad = _padding(padding)
    out_w, out_h = _output_size(x, f, upx, upy, downx, downy, pad)
    if out_w < 1 or out_h < 1:
        raise ValueError(
            f"upfirdn2d output would be empty ({out_h}x{out_w}) for input {list(x.shape)}, up={up}, "
            f"down={down}, padding={padding}, filter {list(f.shape)}"
        )
    if impl == "cuda" and x.is_cuda:
        ext = build.load_extension("upfirdn2d")
        if ext is not None:
            return _upfirdn2d_cuda(x, f, (upx, upy), (downx, downy), pad, flip_filter, gain, ext)
    return _upfirdn2d_ref(x, f, (upx, upy), (downx, downy), pad, flip_filter, gain)


def _output_size(x: Tensor, f: Tensor, upx, upy, downx, downy, pad) -> tuple[int, int]:
    fw, fh = _filter_size(f)
    out_w = (x.shape[3] * upx + pad[0] + pad[1] - fw) // downx + 1
    out_h = (x.shape[2] * upy + pad[2] + pad[3] - fh) // downy + 1
    return out_w, out_h


def _upfirdn2d_ref(x: Tensor, f: Tensor, up, down, pad, flip_filter: bool, gain: float) -> Tensor:
    """Plain-torch reference: reshape-based zero insertion, F.pad, grouped conv2d, strided slicing."""
    (upx, upy), (downx, downy) = up, down
    N, C, H, W = x.shape  # [N, C, H, W]
    x = x.reshape(N, C, H, 1, W, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])  # up-1 zeros after every pixel along each axis
    x = x.reshape(N, C, H * upy, W * upx)
    x = F.pad(x, [max(pad[0], 0), max(pad[1], 0), max(pad[2], 0), max(pad[3], 0)])
    x = x[:, :, max(-pad[2], 0): x.shape[2] - max(-pad[3], 0), max(-pad[0], 0): x.shape[3] - max(-pad[1], 0)]

    # conv2d cross-correlates: flip the taps to convolve, unless the caller asked for the flipped filter.
    f = f.to(x.dtype) * (gain**0.5 if f.ndim == 1 else gain)  # a 1-D filter is applied twice
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].repeat(C, 1, 1, 1), groups=C)
    else:
        x = F.conv2d(x, f[None, None, None, :].repeat(C, 1, 1, 1), groups=C)  # along W
        x = F.conv2d(x, f[None, None, :, None].repeat(C, 1, 1, 1), groups=C)  # along H
    return x[:, :, ::downy, ::downx]


def upsample2d(x: Tensor, f: Tensor | None, up: IntOrPair = 2, padding: IntOrPair = 0,
               flip_filter: bool = False, gain: float = 1, impl: str = "cuda") -> Tensor:
    """Upsample by `up` with filter f; with padding 0 the output is exactly `up` times the input size."""
    upx, upy = _pair(up, "up")
    p = _padding(padding)
    fw, fh = _filter_size(f)
    # Total padding taps + up - 1 keeps the output at in * up; split it to keep the image centred.
    pad = (p[0] + (fw + upx - 1) // 2, p[1] + (fw - upx) // 2,
           p[2] + (fh + upy - 1) // 2, p[3] + (fh - upy) // 2)
    return upfirdn2d(x, f, up=(upx, upy), padding=pad, flip_filter=flip_filter, gain=gain * upx * upy,
                     impl=impl)


def downsample2d(x: Tensor, f: Tensor | None, down: IntOrPair = 2, padding: IntOrPair = 0,
                 flip_filter: bool = False, gain: float = 1, impl: str = "cuda") -> Tensor:
    """Downsample by `down` with filter f; with padding 0 the output is the input size divided by `down`."""
    downx, downy = _pair(down, "down")
    p = _padding(padding)
    fw, fh = _filter_size(f)
    pad = (p[0] + (fw - downx + 1) // 2, p[1] + (fw - downx) // 2,
           p[2] + (fh - downy + 1) // 2, p[3] + (fh - downy) // 2)
    return upfirdn2d(x, f, down=(downx, downy), padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)


def filter2d(x: Tensor, f: Tensor | None, padding: IntOrPair = 0, flip_filter: bool = False,
             gain: float = 1, impl: str = "cuda") -> Tensor:
    """Filter with f, keeping the size (plus any extra padding)."""
    p = _padding(padding)
    fw, fh = _filter_size(f)
    pad = (p[0] + fw // 2, p[1] + (fw - 1) // 2, p[2] + fh // 2, p[3] + (fh - 1) // 2)
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)


# ---------------------------------------------------------------------------------------------------------
# CUDA path. The kernel takes a 2-D filter; a separable filter runs as two passes (rows, then columns).


def _upfirdn2d_cuda(x, f, up, down, pad, flip_filter, gain, ext) -> Tensor:
    if f.device != x.device:
        raise ValueError(f"filter is on {f.device} but x is on {x.device}")
    if f.ndim == 2:
        return _UpFirDn2d.apply(x, f, (ext, up, down, pad, flip_filter, gain))
    g = gain**0.5  # each pass carries half of the gain
    rows = (ext, (up[0], 1), (down[0], 1), (pad[0], pad[1], 0, 0), flip_filter, g)
    cols = (ext, (1, up[1]), (1, down[1]), (0, 0, pad[2], pad[3]), flip_filter, g)
    return _UpFirDn2d.apply(_UpFirDn2d.apply(x, f[None, :], rows), f[:, None], cols)


def _kernel(x: Tensor, f: Tensor, cfg) -> Tensor:
    ext, (upx, upy), (downx, downy), (px0, px1, py0, py1), flip, gain = cfg
    f = f.to(torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()
    return ext.upfirdn2d(x.contiguous(), f, upx, upy, downx, downy, px0, px1, py0, py1, flip, gain)


class _UpFirDn2d(torch.autograd.Function):
    """upfirdn2d with a 2-D filter; the filter is a constant (no gradient flows into it)."""

    @staticmethod
    def forward(ctx, x, f, cfg):
        ctx.save_for_backward(f)
        ctx.cfg = cfg
        ctx.in_hw = x.shape[2], x.shape[3]
        return _kernel(x, f, cfg)

    @staticmethod
    def backward(ctx, dy):
        (f,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        ext, (upx, upy), (downx, downy), (px0, _, py0, _), flip, gain = ctx.cfg
        (in_h, in_w), (out_h, out_w) = ctx.in_hw, dy.shape[2:]
        fh, fw = f.shape
        # The adjoint: zero-insert dy by `down`, correlate with the flipped taps, keep every up-th pixel.
        pad = (fw - px0 - 1, in_w * upx - out_w * downx + px0 - upx + 1,
               fh - py0 - 1, in_h * upy - out_h * downy + py0 - upy + 1)
        cfg = (ext, (downx, downy), (upx, upy), pad, not flip, gain)
        return _UpFirDn2d.apply(dy, f, cfg), None, None
