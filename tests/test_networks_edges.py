"""StyleGAN2 network arithmetic against by-hand references: every layer's published formula on tiny tensors.

Expectations come from numpy loops written from the StyleGAN2 formulas, never from our own code:
equalised lr (weight * lr_mul / sqrt(fan_in), bias * lr_mul), modulation and demodulation
(w'[o,i,k] = w[o,i,k] s[i] / sqrt(sum (w s)^2 + 1e-8)), the 2x up-sampling conv (stride-2 transposed
conv = true convolution of the zero-stuffed input, then the FIR filter times 4, centred by cropping
ceil(excess / 2) at the start), the 2x down-sampling conv (FIR low-pass padded by floor(excess / 2) at
the start, then a stride-2 cross-correlation), the mapping network (normalised z, w_avg lerp with beta,
truncation on the first `cutoff` ws) and minibatch stddev (population std over groups n mod N/G).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from corgigan.stylegan2 import networks as nw
from corgigan.stylegan2.ops.upfirdn2d import setup_filter

pytestmark = pytest.mark.usefixtures("one_thread")

SQRT2 = math.sqrt(2)
FIR = [1, 3, 3, 1]


# ----------------------------------------------------------------------------------------------------
# numpy references


def full_conv(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """True 2-D convolution of a with k, full output (size a + k - 1)."""
    H, W = a.shape
    out = np.zeros((H + k.shape[0] - 1, W + k.shape[1] - 1))
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            out[i:i + H, j:j + W] += k[i, j] * a
    return out


def correlate_valid(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Cross-correlation without padding: out[y, x] = sum a[y + i, x + j] k[i, j]."""
    oh, ow = a.shape[0] - k.shape[0] + 1, a.shape[1] - k.shape[1] + 1
    out = np.zeros((oh, ow))
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            out += k[i, j] * a[i:i + oh, j:j + ow]
    return out


def pad_or_crop(a: np.ndarray, before: int, after: int) -> np.ndarray:
    """Zero-pad both axes by (before, after); negative amounts crop."""
    a = np.pad(a, ((max(before, 0), max(after, 0)),) * 2)
    return a[max(-before, 0): a.shape[0] - max(-after, 0), max(-before, 0): a.shape[1] - max(-after, 0)]


def filter2d_of(taps) -> np.ndarray:
    t = np.asarray(taps, dtype=np.float64)
    f = np.outer(t, t)
    return f / f.sum()


def ref_up2(x: np.ndarray, w: np.ndarray, f: np.ndarray) -> np.ndarray:
    """x [N, I, H, W], w [O, I, k, k] -> [N, O, 2H, 2W]: zero-stuff, convolve with w, FIR x 4, centre."""
    N, n_in, H, W = x.shape
    k, fw = w.shape[-1], f.shape[-1]
    start = math.ceil((k + fw - 3) / 2)
    out = np.zeros((N, w.shape[0], 2 * H, 2 * W))
    for n in range(N):
        for o in range(w.shape[0]):
            t = 0
            for i in range(n_in):
                z = np.zeros((2 * H - 1, 2 * W - 1))
                z[::2, ::2] = x[n, i]
                t = t + full_conv(z, w[o, i])
            u = 4 * full_conv(t, f)
            out[n, o] = u[start:start + 2 * H, start:start + 2 * W]
    return out


def ref_down2(x: np.ndarray, w: np.ndarray, f: np.ndarray) -> np.ndarray:
    """x [N, I, H, W], w [O, I, k, k] -> [N, O, H/2, W/2]: FIR (padded floor(excess/2) first), stride 2."""
    N, n_in, H, W = x.shape
    k, fw = w.shape[-1], f.shape[-1]
    pad = fw + k - 3
    out = np.zeros((N, w.shape[0], H // 2, W // 2))
    for n in range(N):
        v = [correlate_valid(pad_or_crop(x[n, i], pad // 2, pad - pad // 2), f[::-1, ::-1])
             for i in range(n_in)]
        for o in range(w.shape[0]):
            out[n, o] = sum(correlate_valid(v[i], w[o, i]) for i in range(n_in))[::2, ::2]
    return out


def ref_modconv(x, w, s, demodulate=True, up=1, f=None, noise=None):
    """StyleGAN2 modulated conv, float64: per-sample kernels w * s, demodulated, then the (up-)conv."""
    N = x.shape[0]
    outs = []
    for n in range(N):
        wm = w * s[n][None, :, None, None]
        if demodulate:
            wm = wm / np.sqrt((wm**2).sum(axis=(1, 2, 3)) + 1e-8)[:, None, None, None]
        if up == 2:
            outs.append(ref_up2(x[n:n + 1], wm, f)[0])
        else:
            p = w.shape[-1] // 2
            xp = [np.pad(x[n, i], p) for i in range(x.shape[1])]
            outs.append(np.stack([sum(correlate_valid(xp[i], wm[o, i]) for i in range(x.shape[1]))
                                  for o in range(w.shape[0])]))
    y = np.stack(outs)
    return y if noise is None else y + noise


def lrelu(v: np.ndarray) -> np.ndarray:
    return np.where(v >= 0, v, 0.2 * v)


def f32(a: np.ndarray) -> np.ndarray:
    """Round to float32 (the networks' parameter dtype) and back, so the reference sees the same values."""
    return a.astype(np.float32).astype(np.float64)


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


# ----------------------------------------------------------------------------------------------------
# Small helpers


def test_check_shape_accepts_matches_and_names_each_mismatch():
    nw.check_shape(torch.zeros(2, 3), [None, 3], "t")
    nw.check_shape(torch.zeros(2, 3), [2, 3], "t")
    with pytest.raises(ValueError) as e:
        nw.check_shape([1, 2], [2], "thing")
    assert str(e.value) == "thing: expected a tensor, got list"
    with pytest.raises(ValueError) as e:
        nw.check_shape(torch.zeros(2, 3, 4), [2, 3], "t")   # the sizes agree as far as they go
    assert str(e.value) == "t: expected shape [2, 3], got [2, 3, 4]"
    with pytest.raises(ValueError) as e:
        nw.check_shape(torch.zeros(2, 4), [None, 3], "t")
    assert str(e.value) == "t: expected shape [*, 3], got [2, 4]"


def test_normalize_2nd_moment_by_hand():
    x = torch.tensor([[3.0, 4.0], [0.0, 1e-5]], dtype=torch.float64)
    want = torch.tensor([[3 / math.sqrt(12.5 + 1e-8), 4 / math.sqrt(12.5 + 1e-8)],
                         [0.0, 1e-5 / math.sqrt(5e-11 + 1e-8)]], dtype=torch.float64)
    torch.testing.assert_close(nw.normalize_2nd_moment(x), want, rtol=1e-12, atol=0)
    col = torch.tensor([[3.0, 1.0], [4.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(nw.normalize_2nd_moment(col, dim=0),
                               col / torch.tensor([[math.sqrt(12.5 + 1e-8), 1.0]], dtype=torch.float64))


def test_channels_fp16_resolution_and_fp16_switch_by_hand():
    assert nw.channels_per_resolution(100, 20, [4, 8, 16]) == {4: 20, 8: 12, 16: 6}
    assert all(type(v) is int for v in nw.channels_per_resolution(100, 20, [8]).values())
    assert nw.fp16_resolution(256, 4) == 32       # 2 ** (8 + 1 - 4)
    assert nw.fp16_resolution(64, 2) == 32
    assert nw.fp16_resolution(32, 0) == 64        # above the top: no block runs in float16
    assert nw.fp16_resolution(16, 4) == 8         # never below 8x8
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert nw.use_fp16_now(True, cuda, False) is True
    assert nw.use_fp16_now(True, cuda, True) is False
    assert nw.use_fp16_now(True, cpu, False) is False
    assert nw.use_fp16_now(False, cuda, False) is False


def test_mbstd_group_at_the_edges():
    assert nw.mbstd_group(1, 4) == 1
    assert nw.mbstd_group(4, 1) == 1
    assert nw.mbstd_group(5, 5) == 5
    assert nw.mbstd_group(9, 4) == 3
    for batch, group in ((0, 4), (4, 0)):
        with pytest.raises(ValueError) as e:
            nw.mbstd_group(batch, group)
        assert str(e.value) == f"mbstd_group: batch ({batch}) and group_size ({group}) must be >= 1"


# ----------------------------------------------------------------------------------------------------
# Resampling convolutions


@pytest.mark.parametrize(("k", "taps", "groups"), [
    (3, FIR, 1), (2, FIR, 1), (1, FIR, 1), (3, [1], 1), (6, FIR, 1), (3, FIR, 2),
])
def test_conv2d_up2_by_hand(k, taps, groups):
    rng = np.random.default_rng(k + len(taps) + groups)
    x = rng.normal(size=(2, 2 * groups, 3, 4))
    w = rng.normal(size=(3 * groups, 2, k, k))
    f = filter2d_of(taps)
    y = nw.conv2d_up2(t64(x), t64(w), t64(f), groups=groups).numpy()
    want = np.concatenate([ref_up2(x[:, 2 * g:2 * g + 2], w[3 * g:3 * g + 3], f) for g in range(groups)],
                          axis=1)
    assert y.shape == (2, 3 * groups, 6, 8)
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-10)


def test_conv2d_up2_and_down2_take_a_separable_filter():
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(1, 2, 4, 4)), rng.normal(size=(3, 2, 3, 3))
    f1 = setup_filter(FIR, separable=True).double()                       # 1-D taps, applied on both axes
    assert f1.ndim == 1
    np.testing.assert_allclose(nw.conv2d_up2(t64(x), t64(w), f1).numpy(), ref_up2(x, w, filter2d_of(FIR)),
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(nw.conv2d_down2(t64(x), t64(w), f1).numpy(), ref_down2(x, w, filter2d_of(FIR)),
                               rtol=1e-10, atol=1e-10)


EIGHT_TAPS = [1, 2, 3, 4, 4, 3, 2, 1]   # pad 8: a trailing pad of 3 instead of 4 changes the output size


@pytest.mark.parametrize(("k", "taps"), [(3, FIR), (1, FIR), (2, FIR), (1, [1]), (3, EIGHT_TAPS)])
def test_conv2d_down2_by_hand(k, taps):
    rng = np.random.default_rng(10 + k)
    x, w = rng.normal(size=(2, 3, 6, 8)), rng.normal(size=(4, 3, k, k))
    f = filter2d_of(taps)
    y = nw.conv2d_down2(t64(x), t64(w), t64(f)).numpy()
    assert y.shape == (2, 4, 3, 4)
    np.testing.assert_allclose(y, ref_down2(x, w, f), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------------
# Modulated convolution


MODCONV_CASES = {
    "3x3 demodulated + noise": dict(N=2, I=3, O=4, k=3, H=3, W=5, demodulate=True, up=1, taps=None,
                                    noise=True),
    "5x5 plain, one sample": dict(N=1, I=2, O=3, k=5, H=4, W=3, demodulate=False, up=1, taps=None,
                                  noise=False),
    "up 3x3 demodulated + noise": dict(N=2, I=3, O=4, k=3, H=3, W=2, demodulate=True, up=2, taps=FIR,
                                       noise=True),
    "up 3x3 one-tap filter": dict(N=3, I=2, O=2, k=3, H=2, W=3, demodulate=True, up=2, taps=[1],
                                  noise=False),
}


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("case", MODCONV_CASES)
def test_modulated_conv2d_by_hand(case, fused):
    c = MODCONV_CASES[case]
    rng = np.random.default_rng(len(case))
    x = rng.normal(size=(c["N"], c["I"], c["H"], c["W"]))
    w, s = rng.normal(size=(c["O"], c["I"], c["k"], c["k"])), rng.normal(size=(c["N"], c["I"]))
    f = filter2d_of(c["taps"]) if c["taps"] else None
    H2, W2 = c["H"] * c["up"], c["W"] * c["up"]
    noise = rng.normal(size=(c["N"], 1, H2, W2)) if c["noise"] else None
    kwargs = {} if c["demodulate"] else {"demodulate": False}
    if c["up"] == 2:
        kwargs.update(up=2, resample_filter=t64(f))
    y = nw.modulated_conv2d(t64(x), t64(w), t64(s), noise=None if noise is None else t64(noise), fused=fused,
                            **kwargs)
    want = ref_modconv(x, w, s, demodulate=c["demodulate"], up=c["up"], f=f, noise=noise)
    assert y.shape == (c["N"], c["O"], H2, W2)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fused", [True, False])
def test_demodulation_keeps_its_epsilon_for_tiny_weights(fused):
    # sum (w s)^2 = 36e-12 is far below the 1e-8 guard, so the guard sets the scale: the formula says
    # y = conv / sqrt(36e-12 + 1e-8), not the unit-norm output that rescaling the weights first would give.
    x = torch.ones(1, 4, 3, 3, dtype=torch.float64)
    w = torch.full((1, 4, 3, 3), 1e-6, dtype=torch.float64)
    y = nw.modulated_conv2d(x, w, torch.ones(1, 4, dtype=torch.float64), fused=fused)
    assert y[0, 0, 1, 1].item() == pytest.approx(36e-6 / math.sqrt(36e-12 + 1e-8), rel=1e-9)


@pytest.mark.parametrize("fused", [True, False])
def test_modulated_conv2d_returns_x_dtype(fused):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float16)
    w, s = torch.randn(2, 3, 3, 3), torch.randn(2, 3)
    noise = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    for demodulate in (True, False):
        y = nw.modulated_conv2d(x, w, s, noise=noise, demodulate=demodulate, fused=fused)
        assert y.dtype == torch.float16
    y = nw.modulated_conv2d(x.float(), w, s, noise=noise, fused=fused)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, nw.modulated_conv2d(x.float(), w, s, fused=fused) + noise.float())
    with pytest.raises(RuntimeError):   # the weights follow x's dtype, so a mismatch cannot hide in them
        nw.modulated_conv2d(x.double(), w.half(), s, fused=fused).sum()
    assert nw.modulated_conv2d(x.double(), w, s, fused=fused).dtype == torch.float64


def test_float16_demodulated_conv_neither_overflows_nor_underflows():
    """Float16 activations, weights and styles of any scale: the result stays finite and right."""
    w = torch.ones(2, 4, 3, 3)
    # Large activations: 36 taps of 5000 would overflow float16 (65504) unless the weights are first scaled
    # to 1/sqrt(fan_in) of their max; the demodulated answer is 36 * 5000 / 6 = 30000.
    x = torch.full((1, 4, 4, 4), 5000.0, dtype=torch.float16)
    for styles in (torch.ones(1, 4), torch.full((1, 4), 100.0)):
        for scale in (1.0, 1e3):
            y = nw.modulated_conv2d(x, w * scale, styles, fused=False)
            assert y.dtype == torch.float16
            assert y[0, :, 1:3, 1:3].float().sub(30000).abs().max().item() <= 30000 * 2e-3
    # Tiny weights and tiny styles of one sample must not vanish in float16 next to a normal sample.
    x = torch.ones(2, 4, 4, 4, dtype=torch.float16)
    styles = torch.tensor([[1.0] * 4, [1e-9] * 4])
    for scale in (1.0, 1e-9):
        y = nw.modulated_conv2d(x, w * scale, styles, fused=False)
        torch.testing.assert_close(y[:, :, 1:3, 1:3].float(), torch.full((2, 2, 2, 2), 6.0), rtol=2e-3,
                                   atol=0)


def test_float16_unfused_conv_keeps_the_smallest_activations():
    # One float16 activation of 2^-24 (the smallest subnormal) on a 1x1 conv with 4 equal inputs: the styles
    # scaled to a max of 1 keep it; scaled to an L2 norm of 1 (halving it) it rounds to zero.
    x = torch.zeros(1, 4, 2, 2, dtype=torch.float16)
    x[0, :, 0, 0] = 2.0**-24
    y = nw.modulated_conv2d(x, torch.ones(1, 4, 1, 1), torch.ones(1, 4), fused=False)
    assert y[0, 0, 0, 0].item() > 0
    # One activation of 2^-21 in one channel under a 3x3 kernel of 36 equal taps: scaled to 1/sqrt(fan_in)
    # of their max, each tap keeps 2^-21 / 6 (about 1.3 x 2^-24); scaled by the L2 norm it is 2^-21 / 36 -> 0.
    x = torch.zeros(1, 4, 4, 4, dtype=torch.float16)
    x[0, 0, 1, 1] = 2.0**-21
    y = nw.modulated_conv2d(x, torch.ones(1, 4, 3, 3), torch.ones(1, 4), fused=False)
    assert (y[0, 0, :3, :3] > 0).all()


def test_fused_default_folds_styles_into_float32_weights():
    # Demodulation off (toRGB): x * styles = 100 * 1000 overflows float16 in the unfused path, while the
    # fused default multiplies weight * styles = 1 in float32 first. Expected 4 inputs * 100 * 1 = 400.
    x = torch.full((1, 4, 2, 2), 100.0, dtype=torch.float16)
    y = nw.modulated_conv2d(x, torch.full((1, 4, 1, 1), 1e-3), torch.full((1, 4), 1e3), demodulate=False)
    torch.testing.assert_close(y.float(), torch.full((1, 1, 2, 2), 400.0), rtol=2e-3, atol=0)


def test_modulated_conv2d_refuses_bad_arguments_with_their_names():
    x, w, s = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 3, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError) as e:
        nw.modulated_conv2d(x, w, s, up=3)
    assert str(e.value) == "modulated_conv2d: up must be 1 or 2, got 3"
    with pytest.raises(ValueError) as e:
        nw.modulated_conv2d(x, w, s, up=2)
    assert str(e.value) == "modulated_conv2d: up=2 needs resample_filter"
    with pytest.raises(ValueError) as e:
        nw.modulated_conv2d(x, w, torch.zeros(2, 4))
    assert str(e.value) == "modulated_conv2d styles: expected shape [2, 3], got [2, 4]"
    with pytest.raises(ValueError) as e:
        nw.modulated_conv2d(x, torch.zeros(2, 4, 3, 3), s)
    assert str(e.value) == "modulated_conv2d weight: expected shape [2, 3, 3, 3], got [2, 4, 3, 3]"
    for up in (1, 2):
        y = nw.modulated_conv2d(torch.zeros(0, 3, 4, 5), w, torch.zeros(0, 3), up=up,
                                resample_filter=setup_filter(FIR))
        assert y.shape == (0, 2, 4 * up, 5 * up)


# ----------------------------------------------------------------------------------------------------
# Equalised-learning-rate layers


def test_fully_connected_defaults_and_stored_scales():
    torch.manual_seed(0)
    fc = nw.FullyConnected(3, 2)
    assert fc.bias is not None and torch.equal(fc.bias, torch.zeros(2))
    assert fc.lr_multiplier == 1.0 and fc.extra_repr() == "in=3, out=2, act=linear"
    assert nw.FullyConnected(3, 2, bias=False).bias is None
    slow = nw.FullyConnected(256, 64, lr_multiplier=0.01, bias_init=0.5)
    # Stored values have the variance 1 / lr_mul^2 so that the effective weight has unit variance.
    assert 95 < slow.weight.std().item() < 105
    assert torch.equal(slow.bias, torch.full((64,), 0.5 / 0.01))


@pytest.mark.parametrize(("activation", "bias", "lr"), [("linear", True, 1.0), ("lrelu", True, 0.5),
                                                        ("linear", False, 0.25), ("lrelu", False, 1.0)])
def test_fully_connected_forward_by_hand(activation, bias, lr):
    rng = np.random.default_rng(3)
    W, b, x = rng.normal(size=(2, 3)), rng.normal(size=2), rng.normal(size=(4, 3))
    fc = nw.FullyConnected(3, 2, bias=bias, activation=activation, lr_multiplier=lr)
    with torch.no_grad():
        fc.weight.copy_(t64(W))
        if bias:
            fc.bias.copy_(t64(b))
    v = x @ (W.astype(np.float32).astype(np.float64) * lr / math.sqrt(3)).T
    if bias:
        v = v + b.astype(np.float32) * lr
    want = lrelu(v) * SQRT2 if activation == "lrelu" else v
    y = fc(t64(x))
    assert y.dtype == torch.float64
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-6, atol=1e-7)


def conv_layer(n_in, n_out, k, **kwargs):
    rng = np.random.default_rng(n_in * 10 + k)
    layer = nw.Conv2dLayer(n_in, n_out, k, **kwargs)
    W = rng.normal(size=(n_out, n_in, k, k)).astype(np.float32)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(W))
        if layer.bias is not None:
            layer.bias.copy_(torch.from_numpy(rng.normal(size=n_out).astype(np.float32)))
    b = np.zeros(n_out) if layer.bias is None else layer.bias.detach().double().numpy()
    return layer, W.astype(np.float64) / math.sqrt(n_in * k * k), b


@pytest.mark.parametrize(("k", "down", "activation", "bias", "gain", "clamp"), [
    (3, 1, "lrelu", True, 1.0, None), (5, 1, "linear", False, 1.0, None), (3, 1, "lrelu", True, 0.5, 0.4),
    (3, 2, "lrelu", True, 1.0, None), (1, 2, "linear", False, math.sqrt(0.5), None),
])
def test_conv2d_layer_forward_by_hand(k, down, activation, bias, gain, clamp):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 3, 6, 8))
    layer, w, b = conv_layer(3, 4, k, bias=bias, activation=activation, down=down, conv_clamp=clamp)
    if down == 2:
        v = ref_down2(x, w, filter2d_of(FIR))
    else:
        v = ref_modconv(x, w, np.ones((2, 3)), demodulate=False)
    v = v + b[None, :, None, None]
    want = (lrelu(v) * SQRT2 if activation == "lrelu" else v) * gain
    if clamp is not None:
        want = np.clip(want, -clamp * gain, clamp * gain)
    y = layer(t64(x)) if gain == 1.0 else layer(t64(x), gain=gain)
    assert y.dtype == torch.float64
    if clamp is not None:
        assert (np.abs(want) == clamp * gain).any()              # the clamp is active in this case
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------------
# Mapping network


def set_fc(fc: nw.FullyConnected, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random stored parameters; returns the effective (weight, bias) in float64."""
    W = rng.normal(size=tuple(fc.weight.shape)).astype(np.float32)
    b = rng.normal(size=fc.out_features).astype(np.float32)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(W))
        fc.bias.copy_(torch.from_numpy(b))
    return W * fc.lr_multiplier / math.sqrt(fc.in_features), b * fc.lr_multiplier


def set_modulated(layer: nw.SynthesisLayer | nw.ToRGBLayer, rng: np.random.Generator
                  ) -> tuple[np.ndarray, ...]:
    """Random stored affine, weight and bias of a modulated layer; returns the affine's effective
    (weight, bias) and the stored weight and bias, in float64."""
    A, ab = set_fc(layer.affine, rng)
    W = rng.normal(size=tuple(layer.weight.shape)).astype(np.float32)
    b = rng.normal(size=W.shape[0]).astype(np.float32)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(W))
        layer.bias.copy_(torch.from_numpy(b))
    return A, ab, W.astype(np.float64), b.astype(np.float64)


def norm2(v: np.ndarray) -> np.ndarray:
    return v / np.sqrt((v**2).mean(axis=1, keepdims=True) + 1e-8)


@pytest.mark.parametrize(("z_dim", "c_dim"), [(2, 0), (1, 0), (0, 1), (0, 3), (2, 3), (1, 1)])
def test_mapping_network_by_hand(z_dim, c_dim):
    rng = np.random.default_rng(z_dim * 10 + c_dim)
    m = nw.MappingNetwork(z_dim, c_dim, 2, num_ws=3, num_layers=2)
    embed = set_fc(m.embed, rng) if c_dim else None
    layers = [set_fc(layer, rng) for layer in m.layers]
    z, c = rng.normal(size=(4, z_dim)), rng.normal(size=(4, c_dim))
    parts = ([norm2(z)] if z_dim else []) + ([norm2(c @ embed[0].T + embed[1])] if c_dim else [])
    v = np.concatenate(parts, axis=1)
    for W, b in layers:
        v = lrelu(v @ W.T + b) * SQRT2
    ws = m(t64(z).float() if z_dim else None, t64(c).float() if c_dim else None)
    assert ws.shape == (4, 3, 2)
    np.testing.assert_allclose(ws.detach().numpy(), np.repeat(v[:, None], 3, axis=1), rtol=1e-5, atol=1e-6)


def test_mapping_w_avg_update_and_truncation_by_hand():
    torch.manual_seed(0)
    m = nw.MappingNetwork(2, 0, 2, num_ws=4, num_layers=1)
    avg = np.array([0.5, -1.0])
    m.w_avg.copy_(torch.tensor(avg))
    z = torch.randn(3, 2)
    w = m(z, None)[:, 0].detach().double().numpy()                     # no truncation at the default psi 1
    assert torch.equal(m.w_avg, torch.tensor(avg, dtype=torch.float32))  # no update by default
    # Truncation: w_avg + psi (w - w_avg) on the first `cutoff` ws, w itself on the rest.
    for psi, cutoff, cut in ((0.5, 2, 2), (0.5, None, 4), (2.0, 10, 4), (0.0, 4, 4)):
        ws = m(z, None, truncation_psi=psi, truncation_cutoff=cutoff).detach().double().numpy()
        want = np.repeat(w[:, None], 4, axis=1)
        want[:, :cut] = avg + psi * (want[:, :cut] - avg)
        np.testing.assert_allclose(ws, want, rtol=1e-6, atol=1e-6)
    # One update: w_avg <- mean(w) + beta (w_avg - mean(w)), even from a single sample.
    for batch in (z, z[:1]):
        before = m.w_avg.double().numpy().copy()
        m(batch, None, update_emas=True)
        mean = m(batch, None)[:, 0].detach().double().numpy().mean(axis=0)
        np.testing.assert_allclose(m.w_avg.double().numpy(), mean + 0.995 * (before - mean), rtol=1e-6)


def test_mapping_without_w_avg():
    torch.manual_seed(0)
    m = nw.MappingNetwork(2, 0, 2, num_ws=3, num_layers=1, w_avg_beta=None)
    z = torch.randn(2, 2)
    assert m(z, None).shape == (2, 3, 2)                   # psi 1 needs no w_avg
    with pytest.raises(ValueError) as e:
        m(z, None, truncation_psi=0.5)
    assert str(e.value) == "truncation needs a tracked w_avg (w_avg_beta is None)"
    assert nw.MappingNetwork(0, 2, 2, num_ws=None, w_avg_beta=None)(None, torch.eye(2)).shape == (2, 2)


def test_mapping_refuses_wrong_latents_by_name():
    m = nw.MappingNetwork(2, 3, 2, num_ws=3, num_layers=1)
    with pytest.raises(ValueError) as e:
        m(torch.zeros(3, 5), torch.zeros(3, 3))
    assert str(e.value) == "MappingNetwork z: expected shape [*, 2], got [3, 5]"
    with pytest.raises(ValueError) as e:
        m(torch.zeros(3, 2), torch.zeros(3, 1))
    assert str(e.value) == "MappingNetwork c: expected shape [*, 3], got [3, 1]"


# ----------------------------------------------------------------------------------------------------
# Synthesis layers


def synthesis_layer(up: int, clamp: float | None, use_noise: bool = True):
    rng = np.random.default_rng(up)
    res = 4 * up
    layer = nw.SynthesisLayer(2, 3, 2, res, up=up, use_noise=use_noise, conv_clamp=clamp)
    params = set_modulated(layer, rng)
    if use_noise:
        with torch.no_grad():
            layer.noise_strength.fill_(0.5)
    return layer, *params


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(("up", "mode", "clamp"), [(1, "const", None), (1, "none", 0.5), (2, "random", None),
                                                    (2, "const", 0.7)])
def test_synthesis_layer_by_hand(up, mode, clamp, fused):
    layer, A, ab, W, b = synthesis_layer(up, clamp)
    rng = np.random.default_rng(5)
    x, w = f32(rng.normal(size=(3, 2, 4, 4))), f32(rng.normal(size=(3, 2)))
    res = 4 * up
    torch.manual_seed(11)
    noise = None
    if mode == "random":
        noise = torch.randn(3, 1, res, res).double().numpy() * 0.5           # N x 1 x res x res normals
    elif mode == "const":
        noise = layer.noise_const.double().numpy() * 0.5
    torch.manual_seed(11)
    y = layer(t64(x).float(), t64(w).float(), noise_mode=mode, fused=fused)
    styles = w @ A.T + ab
    v = ref_modconv(x, W, styles, up=up, f=filter2d_of(FIR), noise=noise) + b[None, :, None, None]
    want = lrelu(v) * SQRT2
    if clamp is not None:
        want = np.clip(want, -clamp, clamp)          # after the gain, not scaled by it
        assert (np.abs(want) == clamp).any()
    assert y.shape == (3, 3, res, res)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-6, atol=1e-6)


def test_synthesis_layer_without_noise_ignores_the_noise_mode():
    layer, *_ = synthesis_layer(1, None, use_noise=False)
    x, w = torch.randn(2, 2, 4, 4), torch.randn(2, 2)
    quiet = layer(x, w, noise_mode="none", fused=True)
    assert torch.equal(layer(x, w, noise_mode="random", fused=True), quiet)
    assert torch.equal(layer(x, w, noise_mode="const", fused=True), quiet)


def test_synthesis_layer_draws_noise_on_the_input_device():
    # The importer lays networks out under another default device; the noise must follow x, not the default.
    layer, *_ = synthesis_layer(1, None)
    x, w = torch.randn(2, 2, 4, 4), torch.randn(2, 2)
    with torch.device("meta"):
        y = layer(x, w, noise_mode="random", fused=True)
    assert y.device.type == "cpu" and torch.isfinite(y).all()


def test_synthesis_layer_names_a_wrong_input():
    layer, *_ = synthesis_layer(2, None)
    with pytest.raises(ValueError) as e:
        layer(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2), noise_mode="none", fused=True)
    assert str(e.value) == "SynthesisLayer input: expected shape [*, 2, 4, 4], got [1, 2, 3, 3]"


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("clamp", [None, 0.3])
def test_torgb_layer_by_hand(clamp, fused):
    rng = np.random.default_rng(8)
    layer = nw.ToRGBLayer(4, 3, 2, conv_clamp=clamp)
    A, ab, W, b = set_modulated(layer, rng)
    x, w = f32(rng.normal(size=(2, 4, 3, 3))), f32(rng.normal(size=(2, 2)))
    styles = (w @ A.T + ab) / math.sqrt(4)                                # no demodulation, 1/sqrt(fan_in)
    want = np.einsum("oi,ni,nihw->nohw", W[:, :, 0, 0], styles, x) + b[None, :, None, None]
    if clamp is not None:
        want = np.clip(want, -clamp, clamp)
        assert (np.abs(want) == clamp).any()
    y = layer(t64(x).float(), t64(w).float(), fused=fused)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-6, atol=1e-6)


def test_torgb_layer_float16_paths_stay_finite():
    # toRGB does not demodulate, so nothing rescales: the fused path folds styles into the float32 weights
    # (large x and styles, small weights fit), the unfused one scales x first (large weights and styles fit).
    layer = nw.ToRGBLayer(4, 1, 2)
    with torch.no_grad():
        layer.affine.weight.zero_()
        layer.affine.bias.fill_(2e3)                       # styles = 2e3 / sqrt(4) = 1e3 for every w
    for fused, x_value, weight in ((True, 100.0, 1e-3), (False, 1e-3, 1e3)):
        with torch.no_grad():
            layer.weight.fill_(weight)
        x = torch.full((1, 4, 2, 2), x_value, dtype=torch.float16)
        y = layer(x, torch.zeros(1, 2), fused=fused)       # 4 channels * x * 1e3 * weight
        torch.testing.assert_close(y.float(), torch.full((1, 1, 2, 2), 4 * x_value * 1e3 * weight), rtol=2e-3,
                                   atol=0)


# ----------------------------------------------------------------------------------------------------
# Minibatch standard deviation


@pytest.mark.parametrize(("N", "group", "F"), [(4, 2, 2), (6, 4, 1), (3, 8, 3), (4, 4, 2)])
def test_minibatch_std_by_hand(N, group, F):
    rng = np.random.default_rng(N + group + F)
    x = rng.normal(size=(N, 6, 2, 3))
    x[0] = x[-1]                     # some spread is zero: only the 1e-8 inside the root remains
    G = nw.mbstd_group(N, group)
    M = N // G
    want = np.zeros((N, F))
    for n in range(N):
        members = [m for m in range(N) if m % M == n % M]
        for f in range(F):
            chunk = x[members][:, f * 6 // F:(f + 1) * 6 // F]
            want[n, f] = np.sqrt(chunk.var(axis=0) + 1e-8).mean()
    y = nw.MinibatchStdLayer(group, F)(t64(x))
    assert y.shape == (N, 6 + F, 2, 3)
    assert torch.equal(y[:, :6], t64(x))
    np.testing.assert_allclose(y[:, 6:].numpy(), np.broadcast_to(want[:, :, None, None], (N, F, 2, 3)),
                               rtol=1e-10, atol=0)


def test_minibatch_std_of_identical_images_is_the_epsilon_root():
    y = nw.MinibatchStdLayer(4)(torch.ones(4, 2, 2, 2, dtype=torch.float64))
    assert torch.equal(y[:, 2], torch.full((4, 2, 2), math.sqrt(1e-8), dtype=torch.float64))


def test_minibatch_std_refuses_channels_that_do_not_split():
    with pytest.raises(ValueError) as e:
        nw.MinibatchStdLayer(2, 2)(torch.zeros(2, 3, 2, 2))
    assert str(e.value) == "MinibatchStdLayer: 3 channels do not split into 2 stddev channels"
