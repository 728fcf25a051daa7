"""The fused ops: reference paths against independent re-implementations, their gradients to second order,
the CUDA path's autograd wiring (with a Python stand-in for the kernel, so it runs on CPU), and, on a GPU,
the CUDA kernels against the references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from corgigan.stylegan2.ops import bias_act as ba
from corgigan.stylegan2.ops import build
from corgigan.stylegan2.ops import upfirdn2d as uf
from corgigan.stylegan2.ops.compare import TOLERANCE, agreement, three_orders

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def exact_float32():
    """The references' conv2d would run in TF32 on recent GPUs (torch's default), ~1e-3 off in float32."""
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        yield


# ---------------------------------------------------------------------------------------------------------
# Independent re-implementations.


def explicit_upfirdn2d(x, f, up, down, pad, flip_filter=False, gain=1.0):
    """Zero insertion by strided assignment, F.pad / slicing, a full 2-D conv2d with stride `down`."""
    upx, upy = up
    downx, downy = down
    N, C, H, W = x.shape
    z = x.new_zeros(N, C, H * upy, W * upx)
    z[:, :, ::upy, ::upx] = x
    px0, px1, py0, py1 = pad
    z = F.pad(z, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    z = z[:, :, max(-py0, 0): z.shape[2] - max(-py1, 0), max(-px0, 0): z.shape[3] - max(-px1, 0)]
    w = torch.outer(f, f) if f.ndim == 1 else f
    w = w.to(x.dtype) * gain
    if not flip_filter:
        w = w.flip([0, 1])
    return F.conv2d(z, w.expand(C, 1, *w.shape), stride=(downy, downx), groups=C)


def direct_upfirdn2d(x, f, up, down, pad, flip_filter=False, gain=1.0):
    """Per output pixel, sum the taps that land on input pixels: the CUDA kernel's algorithm in Python."""
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = pad
    w = torch.outer(f, f) if f.ndim == 1 else f
    fh, fw = w.shape
    N, C, H, W = x.shape
    out_h = (H * upy + py0 + py1 - fh) // downy + 1
    out_w = (W * upx + px0 + px1 - fw) // downx + 1
    y = x.new_zeros(N, C, out_h, out_w)

    def taps(u0, up_, size, n_taps):
        first = max((-u0) % up_, -u0)
        return range(first, min(n_taps, (size - 1) * up_ - u0 + 1), up_)

    for oy in range(out_h):
        uy0 = oy * downy - py0
        for ox in range(out_w):
            ux0 = ox * downx - px0
            acc = x.new_zeros(N, C)
            for ky in taps(uy0, upy, H, fh):
                for kx in taps(ux0, upx, W, fw):
                    tap = w[ky, kx] if flip_filter else w[fh - 1 - ky, fw - 1 - kx]
                    acc = acc + x[:, :, (uy0 + ky) // upy, (ux0 + kx) // upx] * tap
            y[:, :, oy, ox] = acc * gain
    return y


def sigmoid(s):
    return 1 / (1 + torch.exp(-s))


# The closed-form derivatives the CUDA kernel uses: (value, first, second) per activation.
def closed_form(act: str, s: torch.Tensor, alpha: float):
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    pos = s > 0
    nonneg = s >= 0  # torch's second derivative of elu and selu at exactly 0 is the positive branch's 0
    p = sigmoid(s)
    t = torch.tanh(s)
    k, a = 1.0507009873554805, 1.6732632423543772
    return {
        "linear": (s, one, zero),
        "relu": (torch.where(pos, s, zero), pos.to(s.dtype), zero),
        "lrelu": (torch.where(pos, s, s * alpha), torch.where(pos, one, one * alpha), zero),
        "tanh": (t, 1 - t * t, -2 * t * (1 - t * t)),
        "sigmoid": (p, p * (1 - p), p * (1 - p) * (1 - 2 * p)),
        "elu": (torch.where(pos, s, torch.expm1(s)), torch.where(pos, one, torch.exp(s)),
                torch.where(nonneg, zero, torch.exp(s))),
        "selu": (torch.where(pos, k * s, k * a * torch.expm1(s)),
                 torch.where(pos, k * one, k * a * torch.exp(s)),
                 torch.where(nonneg, zero, k * a * torch.exp(s))),
        "softplus": (torch.where(s > 20, s, torch.log1p(torch.exp(s))), p, p * (1 - p)),
        "swish": (s * p, p * (1 + s * (1 - p)), p * (1 - p) * (2 + s * (1 - 2 * p))),
    }[act]


class StandInExt:
    """Mimics the compiled extensions' functions with the same arguments, in plain torch."""

    @staticmethod
    def upfirdn2d(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip, gain):
        return uf._upfirdn2d_ref(x, f, (upx, upy), (downx, downy), (px0, px1, py0, py1), flip, gain)

    @staticmethod
    def bias_act(x, b, g, dim, act_id, order, alpha, gain, clamp):
        # Like the kernel: arithmetic in higher precision, rounded once to the storage type.
        act = next(a.name for a in ba.ACTIVATIONS.values() if a.cuda_id == act_id)
        shape = [1] * x.ndim
        shape[dim] = -1
        opmath = torch.float64 if x.dtype == torch.float64 else torch.float32
        s = x.to(opmath) + b.to(opmath).reshape(shape) if b.numel() else x.to(opmath)
        value, *derivs = closed_form(act, s, alpha)
        if order == 0:
            out = value * gain
            return (out.clamp(-clamp, clamp) if clamp >= 0 else out).to(x.dtype)
        out = derivs[order - 1] * gain * g.to(opmath)
        return (torch.where((value * gain).abs() >= clamp, 0, out) if clamp >= 0 else out).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------
# setup_filter and the resampling helpers.


def test_setup_filter_normalises_and_applies_gain():
    f = uf.setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and f.dtype == torch.float32
    assert torch.allclose(f.sum(), torch.tensor(1.0))
    assert torch.allclose(f, torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64)
    assert torch.allclose(uf.setup_filter([1, 3, 3, 1], gain=4).sum(), torch.tensor(4.0))
    sep = uf.setup_filter([1, 2, 3, 4, 4, 3, 2, 1])  # 8 taps: separable by default
    assert sep.ndim == 1 and torch.allclose(sep.sum(), torch.tensor(1.0))
    assert torch.allclose(uf.setup_filter([1, 2, 3, 4, 4, 3, 2, 1], gain=4).sum(), torch.tensor(2.0))
    assert uf.setup_filter([1, 2], separable=True).ndim == 1
    assert torch.equal(uf.setup_filter([[1, 2], [3, 4]], normalize=False, flip_filter=True),
                       torch.tensor([[4.0, 3], [2, 1]]))
    assert torch.equal(uf.setup_filter(None), torch.ones(1, 1))


@pytest.mark.parametrize("bad", [[], [[[1.0]]], [1.0, -1.0], [float("nan"), 1.0]])
def test_setup_filter_rejects_bad_filters(bad):
    with pytest.raises(ValueError):
        uf.setup_filter(bad)


def test_resample_helpers_keep_sizes_and_constant_images():
    f = uf.setup_filter([1, 3, 3, 1])
    x = torch.ones(2, 3, 8, 8)
    up = uf.upsample2d(x, f, impl="ref")
    down = uf.downsample2d(x, f, impl="ref")
    same = uf.filter2d(x, f, impl="ref")
    assert up.shape == (2, 3, 16, 16) and down.shape == (2, 3, 4, 4) and same.shape == (2, 3, 8, 8)
    # Away from the zero-padded border a constant image stays constant: gains are right.
    assert torch.allclose(up[:, :, 2:-2, 2:-2], torch.ones(1))
    assert torch.allclose(down[:, :, 1:-1, 1:-1], torch.ones(1))
    assert torch.allclose(same[:, :, 2:-2, 2:-2], torch.ones(1))
    assert uf.upsample2d(torch.ones(1, 1, 5, 7), f, up=(2, 3), impl="ref").shape == (1, 1, 15, 14)
    assert uf.downsample2d(torch.ones(1, 1, 8, 12), f, down=(3, 2), impl="ref").shape == (1, 1, 4, 4)


def test_upfirdn2d_rejects_bad_arguments():
    x = torch.ones(1, 1, 4, 4)
    f = uf.setup_filter([1, 1])
    for kwargs in ({"up": 0}, {"down": (1, -1)}, {"padding": (1, 2, 3)}, {"impl": "fast"}, {"padding": -3}):
        with pytest.raises(ValueError):
            uf.upfirdn2d(x, f, **kwargs)
    with pytest.raises(ValueError, match="N, C, H, W"):
        uf.upfirdn2d(torch.ones(4, 4), f)


# ---------------------------------------------------------------------------------------------------------
# upfirdn2d reference.

CASES = [
    # (H, W, filter taps or 2-D, up, down, padding, flip, gain)
    (8, 8, [1, 3, 3, 1], 1, 1, 0, False, 1.0),
    (8, 8, [1, 3, 3, 1], 2, 1, (2, 1), False, 4.0),
    (8, 8, [1, 3, 3, 1], 1, 2, (1, 1, 1, 1), False, 1.0),
    (7, 9, [1, 2, 1], (2, 3), (1, 2), (1, 0, 2, 1), True, 2.0),
    (9, 7, [1, 3, 3, 1], 3, 2, (-1, 2, 0, -2), False, 1.0),
    (10, 10, [1, 3, 3, 1], 1, 1, (-2, -3, -1, -2), False, 1.0),
    (6, 5, [[1, 2, 3], [0, 1, 0]], 2, 3, (0, 3, 1, 0), False, 1.5),
    (6, 5, [[1, 2, 3], [0, 1, 0]], (1, 2), (2, 1), (-1, 1, 2, -1), True, 1.0),
    (5, 6, [1, 2, 3, 4, 4, 3, 2, 1], 2, 1, (4, 3), False, 4.0),  # separable, 8 taps
    (12, 12, [1, 2, 3, 4, 5, 6, 6, 5, 4, 3, 2, 1], 1, 2, (-1, 5, 4, 4), True, 1.0),
    (4, 4, None, 4, 3, 0, False, 1.0),
    (3, 3, [1, 1], 1, 1, 5, False, 1.0),  # padding wider than the image
]


def _filter(taps):
    if taps is None:
        return torch.ones(1, 1)
    return uf.setup_filter(taps, normalize=False, separable=None if torch.tensor(taps).ndim == 1 else False)


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_upfirdn2d_ref_matches_explicit_and_direct(case):
    H, W, taps, up, down, padding, flip, gain = case
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, H, W, generator=g, dtype=torch.float64)
    f = _filter(taps)
    upxy, downxy, pad = uf._pair(up, "up"), uf._pair(down, "down"), uf._padding(padding)
    y = uf.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain, impl="ref")
    want = explicit_upfirdn2d(x, f.double(), upxy, downxy, pad, flip, gain)
    assert y.shape == want.shape
    assert torch.allclose(y, want, atol=1e-12)
    assert torch.allclose(direct_upfirdn2d(x, f.double(), upxy, downxy, pad, flip, gain), want, atol=1e-12)


@pytest.mark.parametrize("case", CASES[:10:3], ids=[str(i) for i in range(0, 10, 3)])
def test_upfirdn2d_ref_second_order_gradients(case):
    H, W, taps, up, down, padding, flip, gain = case
    x = torch.randn(1, 1, H, W, dtype=torch.float64, requires_grad=True)
    f = _filter(taps).double()

    def op(x):
        return uf.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain, impl="ref")

    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradgradcheck(op, (x,))


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_cuda_path_autograd_wiring_matches_ref(monkeypatch, case):
    """The CUDA path's Functions (separable two-pass, adjoint padding, flip) with a torch stand-in kernel."""
    H, W, taps, up, down, padding, flip, gain = case
    x = torch.randn(1, 2, H, W, dtype=torch.float64, requires_grad=True)
    f = _filter(taps).double()
    upxy, downxy, pad = uf._pair(up, "up"), uf._pair(down, "down"), uf._padding(padding)

    def wired(x):
        return uf._upfirdn2d_cuda(x, f, upxy, downxy, pad, flip, gain, StandInExt)

    def ref(x):
        return uf._upfirdn2d_ref(x, f, upxy, downxy, pad, flip, gain)

    assert torch.allclose(wired(x), ref(x), atol=1e-12)
    dy = torch.randn_like(ref(x))
    (g_wired,) = torch.autograd.grad(wired(x), x, dy)
    (g_ref,) = torch.autograd.grad(ref(x), x, dy)
    assert torch.allclose(g_wired, g_ref, atol=1e-12)
    assert torch.autograd.gradgradcheck(wired, (x[:, :1].detach().requires_grad_(True),), fast_mode=True)


# ---------------------------------------------------------------------------------------------------------
# bias_act reference.

TORCH_ACTS = {
    "linear": lambda s: s,
    "relu": F.relu,
    "lrelu": lambda s: F.leaky_relu(s, 0.2),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "elu": F.elu,
    "selu": F.selu,
    "softplus": F.softplus,
    "swish": F.silu,
}
DEFAULT_GAINS = {"relu": math.sqrt(2), "lrelu": math.sqrt(2), "swish": math.sqrt(2)}


@pytest.mark.parametrize("act", sorted(ba.ACTIVATIONS))
def test_bias_act_ref_matches_torch_activations(act):
    x = torch.randn(4, 5, 3, 2, dtype=torch.float64) * 3
    b = torch.randn(5, dtype=torch.float64)
    want = TORCH_ACTS[act](x + b[None, :, None, None]) * DEFAULT_GAINS.get(act, 1.0)
    assert torch.allclose(ba.bias_act(x, b, act=act, impl="ref"), want, atol=1e-12)
    # Another dim, explicit gain, clamp, no bias.
    b3 = torch.randn(3, dtype=torch.float64)
    want = (TORCH_ACTS[act](x + b3[None, None, :, None]) * 0.7).clamp(-0.5, 0.5)
    got = ba.bias_act(x, b3, dim=2, act=act, gain=0.7, clamp=0.5, impl="ref")
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(ba.bias_act(x, None, act=act, gain=1, impl="ref"), TORCH_ACTS[act](x), atol=1e-12)


def test_bias_act_alpha_and_errors():
    x = torch.randn(3, 4)
    b = torch.randn(4)
    assert torch.allclose(ba.bias_act(x, b, act="lrelu", alpha=0.5, gain=1), F.leaky_relu(x + b, 0.5))
    with pytest.raises(ValueError, match="unknown activation"):
        ba.bias_act(x, b, act="gelu")
    with pytest.raises(ValueError, match="takes no alpha"):
        ba.bias_act(x, b, act="tanh", alpha=0.1)
    with pytest.raises(ValueError, match="bias must have shape"):
        ba.bias_act(x, torch.randn(3))
    with pytest.raises(ValueError, match="out of range"):
        ba.bias_act(x, b, dim=2)


@pytest.mark.parametrize("act", sorted(ba.ACTIVATIONS))
def test_bias_act_closed_form_derivatives_match_autograd(act):
    """The formulas the CUDA kernel evaluates, checked against autograd of the reference."""
    # Include exactly 0 (and the kinks of lrelu/elu/selu there), where conventions could differ.
    s = torch.cat([torch.randn(200, dtype=torch.float64) * 4, torch.zeros(1, dtype=torch.float64)])
    s.requires_grad_(True)
    value, d1, d2 = closed_form(act, s.detach(), 0.2)
    y = ba.bias_act(s, None, dim=0, act=act, gain=1, impl="ref")
    assert torch.allclose(y, value, atol=1e-12)
    (g1,) = torch.autograd.grad(y.sum(), s, create_graph=True)
    assert torch.allclose(g1, d1, atol=1e-12)
    if g1.requires_grad:
        (g2,) = torch.autograd.grad(g1.sum(), s)
        assert torch.allclose(g2, d2, atol=1e-12)
    else:
        assert torch.count_nonzero(d2) == 0


@pytest.mark.parametrize("act", sorted(ba.ACTIVATIONS))
@pytest.mark.parametrize("clamp", [None, 0.8])
def test_bias_act_ref_second_order_gradients(act, clamp):
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def op(x, b):
        return ba.bias_act(x, b, act=act, clamp=clamp, impl="ref")

    assert torch.autograd.gradcheck(op, (x, b))
    assert torch.autograd.gradgradcheck(op, (x, b))


@pytest.mark.parametrize("act", sorted(ba.ACTIVATIONS))
@pytest.mark.parametrize("clamp", [None, 0.8])
def test_bias_act_cuda_path_autograd_wiring(act, clamp):
    """The CUDA path's Functions (order 1 and 2 kernels) with a torch stand-in kernel."""
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    spec, alpha, gain, clamp_v = ba._resolve(act, None, None, clamp)

    def wired(x, b):
        return ba._bias_act_cuda(x, b, 1, spec, alpha, gain, clamp_v, StandInExt)

    assert torch.allclose(wired(x, b), ba.bias_act(x, b, act=act, clamp=clamp, impl="ref"), atol=1e-12)
    assert torch.autograd.gradcheck(wired, (x, b))
    assert torch.autograd.gradgradcheck(wired, (x, b))
    assert torch.autograd.gradgradcheck(lambda x: wired(x, None), (x,))  # no bias


def test_cpu_tensors_never_build(monkeypatch):
    def refuse(name, **_):
        raise AssertionError(f"tried to build {name} for a CPU tensor")

    monkeypatch.setattr(build, "load_extension", refuse)
    x = torch.randn(1, 2, 6, 6)
    ba.bias_act(x, torch.zeros(2), act="lrelu", impl="cuda")
    uf.upsample2d(x, uf.setup_filter([1, 3, 3, 1]), impl="cuda")


@pytest.mark.skipif(CUDA, reason="checks the status reported without a GPU")
def test_status_without_gpu_names_each_op():
    status = build.cuda_ops_status()
    assert set(status) == set(build.OPS)
    # "built" when a test in this process already built it; otherwise the reason for the reference path.
    assert all(v == "built" or (v.startswith("reference (") and v.endswith(")")) for v in status.values())


def test_unavailable_extension_falls_back_to_reference(monkeypatch):
    """x looks like a CUDA tensor but the extension is unavailable: the reference path gives the result."""
    x = torch.randn(1, 2, 6, 6)
    f = uf.setup_filter([1, 2, 1])
    want_fir = uf.upfirdn2d(x, f, up=2, padding=1, impl="ref")
    want_act = ba.bias_act(x, torch.ones(2), act="relu", impl="ref")
    calls = []
    monkeypatch.setattr(build, "load_extension", lambda name, **_: calls.append(name))
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    got_fir = uf.upfirdn2d(x, f, up=2, padding=1)
    got_act = ba.bias_act(x, torch.ones(2), act="relu")
    monkeypatch.undo()
    assert calls == ["upfirdn2d", "bias_act"]
    assert torch.equal(got_fir, want_fir) and torch.equal(got_act, want_act)


# ---------------------------------------------------------------------------------------------------------
# CUDA against the reference (GPU only).

# Shapes the networks use: mapping layers, 3x3 conv outputs, toRGB, and resampling of feature maps/images.
BIAS_SHAPES = [(4, 512), (4, 512, 4, 4), (4, 256, 32, 32), (2, 64, 256, 256), (8, 3, 16, 16)]
FIR_SHAPES = [(4, 512, 8, 8), (4, 128, 64, 64), (2, 3, 256, 256)]
def assert_close_all(got, want, tol):
    """Each pair agrees to `tol` relative to the largest magnitude of the reference output."""
    for i, (c, r) in enumerate(zip(got, want)):
        err, rel, ok = agreement(c, r, tol)
        assert ok, f"output {i}: max error {err}, {rel:.2e} of the reference's largest magnitude"


def away_from_clamp(x, b, act, clamp):
    """Move elements whose activation lands within 0.1% of the clamp bound away from it: there the two
    paths' last-bit rounding decides whether the gradient is cut, a tie no tolerance can absorb."""
    shape = [1] * x.ndim
    shape[1] = -1
    for _ in range(3):
        h = ba.bias_act(x.double(), b.double(), act=act, impl="ref")
        near = ((h.abs() - clamp).abs() < 1e-3 * clamp).to(x.dtype)
        x = x + near * 0.05
    return x


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("act", sorted(ba.ACTIVATIONS))
def test_bias_act_cuda_matches_ref(dtype, act):
    assert build.load_extension("bias_act") is not None
    clamp = 256.0 if dtype == torch.float16 else 1.5
    for shape in BIAS_SHAPES:
        b = torch.randn(shape[1], device="cuda").to(dtype).requires_grad_(True)
        x = away_from_clamp((torch.randn(shape, device="cuda") * 2).to(dtype), b.detach(), act, clamp)
        x.requires_grad_(True)
        got, want = (
            three_orders(lambda x, b, impl=impl: ba.bias_act(x, b, act=act, clamp=clamp, impl=impl), (x, b))
            for impl in ("cuda", "ref")
        )
        assert_close_all(got, want, TOLERANCE[dtype])


@needs_cuda
@pytest.mark.parametrize("act", sorted(ba.ACTIVATIONS))
def test_bias_act_cuda_gradgradcheck_float64(act):
    assert build.load_extension("bias_act") is not None
    x = torch.randn(2, 3, 4, device="cuda", dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, device="cuda", dtype=torch.float64, requires_grad=True)

    def op(x, b):
        return ba.bias_act(x, b, act=act, clamp=0.8, impl="cuda")

    assert torch.allclose(op(x, b), ba.bias_act(x, b, act=act, clamp=0.8, impl="ref"), atol=1e-12)
    assert torch.autograd.gradcheck(op, (x, b))
    assert torch.autograd.gradgradcheck(op, (x, b))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_upfirdn2d_cuda_matches_ref(dtype):
    assert build.load_extension("upfirdn2d") is not None
    f = uf.setup_filter([1, 3, 3, 1], device=torch.device("cuda"))
    ops = {
        "up": lambda x, impl: uf.upsample2d(x, f, impl=impl),
        "down": lambda x, impl: uf.downsample2d(x, f, impl=impl),
        "filter": lambda x, impl: uf.filter2d(x, f, padding=1, impl=impl),
        "crop": lambda x, impl: uf.upfirdn2d(x, f, up=2, padding=(1, 2, -1, 0), impl=impl),
    }
    for shape in FIR_SHAPES:
        x = torch.randn(shape, device="cuda").to(dtype).requires_grad_(True)
        for op in ops.values():
            got, want = (three_orders(lambda x, o=op, i=impl: o(x, i), (x,)) for impl in ("cuda", "ref"))
            assert_close_all(got, want, TOLERANCE[dtype])


@needs_cuda
@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_upfirdn2d_cuda_cases_float64(case):
    assert build.load_extension("upfirdn2d") is not None
    H, W, taps, up, down, padding, flip, gain = case
    x = torch.randn(2, 3, H, W, device="cuda", dtype=torch.float64, requires_grad=True)
    f = _filter(taps).cuda()

    def op(x, impl="cuda"):
        return uf.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain, impl=impl)

    assert torch.allclose(op(x), op(x, "ref"), atol=1e-10)
    assert torch.autograd.gradgradcheck(op, (x,))
