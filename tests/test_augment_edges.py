"""Edges of the ADA pipe: closed-form matrices, each augmentation replayed from its published sampling.

The replay tests draw the same random numbers as the pipe, in the order its docstring documents
(per augmentation: the choice and the parameter, from the global CPU generator in float64), and
build the expected images from closed forms: flips, quarter turns and reflected shifts by plain
indexing, colour changes by per-pixel arithmetic, geometric warps through `warp` with matrices
written out here. Probability 0.5 (not 1) makes both the chosen and the skipped images visible.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from corgigan.stylegan2.augment import (
    FILTER_BAND_POWER,
    FILTER_TAPS,
    PIPES,
    AugmentPipe,
    ada_adjust,
    band_filters,
    bgc_pipe,
    cutout_mask,
    filter_separable,
    make_pipe,
    permute_pixels,
    reflect3d,
    rotate2d,
    rotate3d,
    saturate3d,
    scale2d,
    scale3d,
    translate2d,
    translate3d,
    warp,
)
from tests.helpers import augment_pipe, random_images

F64 = torch.float64
N = 16


_images = functools.partial(random_images, n=N, h=8, w=8, dtype=F64)


def _chosen(prob: float) -> torch.Tensor:
    return torch.rand(N, dtype=F64) < prob


def _mat(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def _cross(axis) -> torch.Tensor:
    x, y, z = axis
    return _mat([[0, -z, y], [z, 0, -x], [-y, x, 0]])


# ------------------------------------------------------------------------------------------- matrices


def test_2d_builders_are_the_closed_forms_in_float64():
    c, s = math.cos(0.3), math.sin(0.3)
    assert torch.equal(rotate2d(0.3), _mat([[c, -s, 0], [s, c, 0], [0, 0, 1]]))
    assert torch.equal(translate2d(0.1, 0.7), _mat([[1, 0, 0.1], [0, 1, 0.7], [0, 0, 1]]))
    assert torch.equal(scale2d(0.1, 0.7), _mat([[0.1, 0, 0], [0, 0.7, 0], [0, 0, 1]]))
    assert rotate2d(0.3).dtype == F64
    # Batched: one matrix per element, in the element's order.
    t = torch.tensor([0.1, 0.2, 0.3], dtype=F64)
    m = scale2d(t, 2.0)
    assert m.shape == (3, 3, 3)
    for i in range(3):
        assert torch.equal(m[i], _mat([[t[i].item(), 0, 0], [0, 2, 0], [0, 0, 1]]))


def test_3d_builders_are_the_closed_forms_in_float64():
    assert torch.equal(
        translate3d(0.1, 0.2, 0.3), _mat([[1, 0, 0, 0.1], [0, 1, 0, 0.2], [0, 0, 1, 0.3], [0, 0, 0, 1]])
    )
    assert torch.equal(scale3d(0.1, 0.2, 0.3), torch.diag(torch.tensor([0.1, 0.2, 0.3, 1], dtype=F64)))
    v = (0.0, 0.6, 0.8)
    vvt = torch.outer(torch.tensor(v, dtype=F64), torch.tensor(v, dtype=F64))
    expected = torch.eye(4, dtype=F64)
    expected[:3, :3] -= 2 * 0.3 * vvt
    torch.testing.assert_close(reflect3d(v, 0.3), expected, rtol=0, atol=1e-15)
    # Saturation about the blue axis scales red and green only.
    blue = torch.diag(torch.tensor([0.3, 0.3, 1, 1], dtype=F64))
    torch.testing.assert_close(saturate3d((0, 0, 1), 0.3), blue, rtol=0, atol=1e-15)
    # About the luma axis: mean + s * (x - mean), the offset column untouched.
    rgb = torch.tensor([0.2, -0.5, 0.9], dtype=F64)
    out = saturate3d((1 / math.sqrt(3),) * 3, 2.5) @ torch.cat([rgb, torch.ones(1, dtype=F64)])
    torch.testing.assert_close(out[:3], rgb.mean() + 2.5 * (rgb - rgb.mean()), rtol=0, atol=1e-12)
    assert out[3] == 1


@pytest.mark.parametrize("axis", [(0.6, 0.0, 0.8), (0.0, 0.6, 0.8), (0.48, 0.6, 0.64), (0.8, 0.6, 0.0)])
def test_rotate3d_is_the_exponential_of_the_cross_product(axis):
    for theta in (0.7, -2.1):
        expected = torch.eye(4, dtype=F64)
        expected[:3, :3] = torch.linalg.matrix_exp(theta * _cross(axis))
        torch.testing.assert_close(rotate3d(axis, theta), expected, rtol=0, atol=1e-12)


def test_rotate3d_axis_check_message_and_tolerance():
    with pytest.raises(ValueError) as err:
        rotate3d((0.6, 0.0, 0.6), 0.5)
    assert str(err.value) == "rotate3d needs a unit axis, got (0.6, 0.0, 0.6)"
    for axis in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, 1 + 1e-10)):
        assert rotate3d(axis, 0.1).shape == (4, 4)
    for axis in ((0.0, 0.0, 1.001), (0.0, 0.0, 0.0), (0.0, 0.0, -1.5)):
        with pytest.raises(ValueError, match="unit axis"):
            rotate3d(axis, 0.1)
    with pytest.raises(ValueError, match="unit axis"):
        rotate3d((0.6, 0.8, 0.1), 0.1)  # |v|^2 = 1.01: the y term counts
    with pytest.raises(ValueError, match="unit axis"):
        rotate3d((0.1, 0.6, 0.8), 0.1)  # the x term counts


# --------------------------------------------------------------------------------- exact pixel moves


def test_permute_pixels_reflects_without_repeating_the_edge():
    x = torch.arange(4, dtype=F64).reshape(1, 1, 1, 4)
    # Output column j reads input column j + 5: 5 6 7 8 mirror to 1 0 1 2 (sequence 0 1 2 3 2 1 0 1 2 ...).
    y = permute_pixels(x, translate2d(torch.tensor([5.0]), 0.0))
    assert y.flatten().tolist() == [1.0, 0.0, 1.0, 2.0]
    y = permute_pixels(x, translate2d(torch.tensor([-2.0]), 0.0))
    assert y.flatten().tolist() == [2.0, 1.0, 0.0, 1.0]
    two = torch.tensor([[[[5.0, 7.0]]]], dtype=F64)
    assert permute_pixels(two, translate2d(torch.tensor([1.0]), 0.0)).flatten().tolist() == [7.0, 5.0]
    # A single-pixel axis always reads its only pixel.
    col = torch.arange(3, dtype=F64).reshape(1, 1, 3, 1)
    assert permute_pixels(col, translate2d(torch.tensor([3.0]), 1.0)).flatten().tolist() == [1.0, 2.0, 1.0]


def test_permute_pixels_rows_columns_and_tolerance():
    x = torch.arange(12, dtype=F64).reshape(1, 1, 3, 4)
    down = permute_pixels(x, translate2d(torch.tensor([0.0]), -1.0))  # row i reads row i - 1
    assert down[0, 0].tolist() == [[4, 5, 6, 7], [0, 1, 2, 3], [4, 5, 6, 7]]
    assert permute_pixels(x, translate2d(torch.tensor([0.0]), 0.5)) is None  # off-lattice in y only
    assert permute_pixels(x, translate2d(torch.tensor([1e-7]), 0.0)) is not None  # within 1e-6
    assert permute_pixels(x, translate2d(torch.tensor([0.0]), 1e-7)) is not None
    assert permute_pixels(x, translate2d(torch.tensor([1e-5]), 0.0)) is None
    assert permute_pixels(x, translate2d(torch.tensor([0.0]), 1e-5)) is None
    flip = permute_pixels(x.expand(2, 2, 3, 4), scale2d(torch.tensor([1.0, -1.0]), torch.tensor([-1.0, 1.0])))
    assert torch.equal(flip[0], x[0].flip(1).expand(2, 3, 4))
    assert torch.equal(flip[1], x[0].flip(2).expand(2, 3, 4))


# --------------------------------------------------------------------------------- geometric replays


def _expected_rot90(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    # Forward rotation by +90 degrees in (x, y) with y pointing down is a clockwise quarter turn.
    return torch.stack([torch.rot90(xi, -int(k), dims=(1, 2)) for xi, k in zip(x, q)])


def test_xflip_replay_at_half_probability():
    x = _images()
    torch.manual_seed(11)
    flip = torch.randint(2, (N,), dtype=F64)
    chosen = _chosen(0.5)
    torch.manual_seed(11)
    y = augment_pipe(0.5, xflip=1)(x)
    for i in range(N):
        want = x[i].flip(2) if flip[i] and chosen[i] else x[i]
        assert torch.equal(y[i], want), i
    assert (flip.bool() & chosen).any() and (flip.bool() & ~chosen).any()


def test_rotate90_replay_at_half_probability():
    x = _images()
    torch.manual_seed(12)
    q = torch.randint(4, (N,), dtype=F64) * _chosen(0.5)
    torch.manual_seed(12)
    y = augment_pipe(0.5, rotate90=1)(x)
    assert torch.equal(y, _expected_rot90(x, q))
    assert set(q.tolist()) == {0.0, 1.0, 2.0, 3.0}


def test_rotate90_of_non_square_images_is_warped_and_unturned_images_stay_bitwise():
    x = _images(h=7, w=10)  # odd by even: a quarter turn moves pixel centres off the lattice
    torch.manual_seed(13)
    q = torch.randint(4, (N,), dtype=F64) * _chosen(1.0)
    torch.manual_seed(13)
    y = augment_pipe(1.0, rotate90=1)(x)
    assert (q % 2 == 1).any() and (q == 0).any()
    for i in range(N):
        if q[i] == 0:
            assert torch.equal(y[i], x[i])
        else:  # some turn cannot be a permutation: the whole group is resampled
            want = warp(x[i : i + 1], rotate2d(-math.pi / 2 * q[i : i + 1]))
            torch.testing.assert_close(y[i : i + 1], want, rtol=0, atol=1e-12)


def test_integer_translation_replay_with_reflection():
    x = _images(h=8, w=16)
    torch.manual_seed(14)
    t = (torch.rand(N, 2, dtype=F64) * 2 - 1) * 0.25 * _chosen(0.5)[:, None]
    torch.manual_seed(14)
    y = augment_pipe(0.5, xint=1, xint_max=0.25)(x)
    tx, ty = torch.round(t[:, 0] * 16).long(), torch.round(t[:, 1] * 8).long()
    padded = F.pad(x, [4, 4, 2, 2], mode="reflect")
    for i in range(N):
        want = padded[i, :, 2 - ty[i] : 10 - ty[i], 4 - tx[i] : 20 - tx[i]]
        assert torch.equal(y[i], want), (i, tx[i], ty[i])
    assert (tx != 0).any() and (ty != 0).any() and (tx != ty).any()
    assert (tx.abs() == 4).any() or (ty.abs() == 2).any() or (tx.abs() >= 3).any()


def test_default_integer_translation_range_is_an_eighth():
    x = _images(h=16, w=16)
    torch.manual_seed(15)
    t = (torch.rand(N, 2, dtype=F64) * 2 - 1) * 0.125 * _chosen(1.0)[:, None]
    torch.manual_seed(15)
    y = augment_pipe(1.0, xint=1)(x)
    tx, ty = torch.round(t[:, 0] * 16).long(), torch.round(t[:, 1] * 16).long()
    padded = F.pad(x, [2, 2, 2, 2], mode="reflect")
    for i in range(N):
        assert torch.equal(y[i], padded[i, :, 2 - ty[i] : 18 - ty[i], 2 - tx[i] : 18 - tx[i]])


def _warp_replay(x: torch.Tensor, y: torch.Tensor, inv: torch.Tensor, moved: torch.Tensor) -> None:
    for i in range(len(x)):
        if moved[i]:
            torch.testing.assert_close(y[i : i + 1], warp(x[i : i + 1], inv[i : i + 1]), rtol=0, atol=1e-12)
        else:
            assert torch.equal(y[i], x[i]), i


@pytest.mark.parametrize("knob, diagonal", [
    ("scale", lambda s: (1 / s, 1 / s)),     # one lognormal factor for both axes
    ("aniso", lambda s: (1 / s, s)),         # x by the factor, y by its inverse
])
def test_scale_and_aniso_replay_lognormal_std_02(knob, diagonal):
    x = _images()
    torch.manual_seed(16)
    chosen = _chosen(0.5)
    s = 2 ** (torch.randn(N, dtype=F64) * 0.2 * chosen)
    torch.manual_seed(16)
    y = augment_pipe(0.5, **{knob: 1})(x)
    inv = torch.diag_embed(torch.stack([*diagonal(s), torch.ones(N, dtype=F64)], 1))
    _warp_replay(x, y, inv, chosen)
    assert chosen.any() and not chosen.all()


def _rot(theta: torch.Tensor) -> torch.Tensor:
    c, s, z, o = torch.cos(theta), torch.sin(theta), torch.zeros_like(theta), torch.ones_like(theta)
    rows = [torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)]
    return torch.stack(rows, -2)


def test_rotate_replay_two_rotations_with_p_rot():
    x = _images()
    p_rot = 1 - math.sqrt(1 - 0.5)  # P(at least one of two) = 0.5
    torch.manual_seed(18)
    c1 = _chosen(p_rot)
    t1 = (torch.rand(N, dtype=F64) * 2 - 1) * math.pi * c1
    c2 = _chosen(p_rot)
    t2 = (torch.rand(N, dtype=F64) * 2 - 1) * math.pi * c2
    torch.manual_seed(18)
    y = augment_pipe(0.5, rotate=1)(x)
    _warp_replay(x, y, _rot(-t1) @ _rot(-t2), c1 | c2)
    assert (c1 ^ c2).any() and not (c1 | c2).all()


def test_rotation_range_and_strength_above_one():
    x = _images()
    torch.manual_seed(19)
    c1 = _chosen(1.0)  # strength 2 at p 0.5: probability capped at 1
    t1 = (torch.rand(N, dtype=F64) * 2 - 1) * math.pi * 0.25 * c1
    c2 = _chosen(1.0)
    t2 = (torch.rand(N, dtype=F64) * 2 - 1) * math.pi * 0.25 * c2
    torch.manual_seed(19)
    y = augment_pipe(0.5, rotate=2, rotate_max=0.25)(x)
    _warp_replay(x, y, _rot(-t1) @ _rot(-t2), c1 | c2)


def test_xfrac_replay_std_an_eighth_of_the_size():
    x = _images(h=8, w=12)
    torch.manual_seed(20)
    chosen = _chosen(0.5)
    t = torch.randn(N, 2, dtype=F64) * 0.125 * chosen[:, None]
    torch.manual_seed(20)
    y = augment_pipe(0.5, xfrac=1)(x)
    inv = torch.eye(3, dtype=F64).repeat(N, 1, 1)
    inv[:, 0, 2], inv[:, 1, 2] = -t[:, 0] * 12, -t[:, 1] * 8
    _warp_replay(x, y, inv, chosen)


def test_full_geometric_group_replay():
    """All seven at p 0.25, in the published order; exact images stay exact beside warped ones."""
    x = _images()
    h = w = 8
    torch.manual_seed(21)
    flip = torch.randint(2, (N,), dtype=F64) * _chosen(0.25)
    q = torch.randint(4, (N,), dtype=F64) * _chosen(0.25)
    t = (torch.rand(N, 2, dtype=F64) * 2 - 1) * 0.125 * _chosen(0.25)[:, None]
    cs = _chosen(0.25)
    s = 2 ** (torch.randn(N, dtype=F64) * 0.2 * cs)
    p_rot = 1 - math.sqrt(0.75)
    c1 = _chosen(p_rot)
    t1 = (torch.rand(N, dtype=F64) * 2 - 1) * math.pi * c1
    ca = _chosen(0.25)
    a = 2 ** (torch.randn(N, dtype=F64) * 0.2 * ca)
    c2 = _chosen(p_rot)
    t2 = (torch.rand(N, dtype=F64) * 2 - 1) * math.pi * c2
    cf = _chosen(0.25)
    tf = torch.randn(N, 2, dtype=F64) * 0.125 * cf[:, None]
    torch.manual_seed(21)
    y = augment_pipe(0.25, xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1)(x)

    def diag(a, b):
        return torch.diag_embed(torch.stack([a, b, torch.ones(N, dtype=F64)], 1))

    def shift(a, b):
        m = torch.eye(3, dtype=F64).repeat(N, 1, 1)
        m[:, 0, 2], m[:, 1, 2] = a, b
        return m

    inv = (diag(1 - 2 * flip, torch.ones(N, dtype=F64)) @ _rot(-math.pi / 2 * q)
           @ shift(-torch.round(t[:, 0] * w), -torch.round(t[:, 1] * h)) @ diag(1 / s, 1 / s) @ _rot(-t1)
           @ diag(1 / a, a) @ _rot(-t2) @ shift(-tf[:, 0] * w, -tf[:, 1] * h))  # fmt: skip
    fractional = cs | c1 | ca | c2 | cf
    exact_moved = ~fractional & ((flip > 0) | (q > 0) | (t.abs().sum(1) > 0))
    assert fractional.any() and exact_moved.any()
    for i in range(N):
        if fractional[i]:
            torch.testing.assert_close(y[i : i + 1], warp(x[i : i + 1], inv[i : i + 1]), rtol=0, atol=1e-12)
        else:
            idx = permute_pixels(x[i : i + 1], inv[i : i + 1])
            assert torch.equal(y[i : i + 1], idx), i


# ------------------------------------------------------------------------------------- colour replays


def _luma_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=1, keepdim=True)


def test_brightness_replay_std_02():
    x = _images()
    torch.manual_seed(30)
    b = torch.randn(N, dtype=F64) * 0.2 * _chosen(0.5)
    torch.manual_seed(30)
    y = augment_pipe(0.5, brightness=1)(x)
    torch.testing.assert_close(y, x + b[:, None, None, None], rtol=0, atol=1e-12)
    assert (b == 0).any() and (b != 0).any()


def test_contrast_replay_lognormal_std_05():
    x = _images()
    torch.manual_seed(31)
    chosen = _chosen(0.5)
    c = 2 ** (torch.randn(N, dtype=F64) * 0.5 * chosen)
    torch.manual_seed(31)
    y = augment_pipe(0.5, contrast=1)(x)
    torch.testing.assert_close(y, x * c[:, None, None, None], rtol=0, atol=1e-12)


def test_lumaflip_replay():
    x = _images()
    torch.manual_seed(32)
    flip = torch.randint(2, (N,), dtype=F64) * _chosen(0.5)
    torch.manual_seed(32)
    y = augment_pipe(0.5, lumaflip=1)(x)
    want = x - 2 * flip[:, None, None, None] * _luma_mean(x)
    torch.testing.assert_close(y, want, rtol=0, atol=1e-12)
    assert (flip == 1).any() and (flip == 0).any()


def _hue(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    # Rodrigues about the unit luma axis v: x cos + (v x x) sin + v (v . x)(1 - cos).
    v = torch.full((3,), 1 / math.sqrt(3), dtype=F64)
    th = theta[:, None, None, None]
    pixels = x.permute(0, 2, 3, 1)  # [n, H, W, 3]
    cross = torch.linalg.cross(v.expand_as(pixels), pixels).permute(0, 3, 1, 2)
    along = (x * v[None, :, None, None]).sum(1, keepdim=True) * v[None, :, None, None]
    return x * torch.cos(th) + cross * torch.sin(th) + along * (1 - torch.cos(th))


def test_hue_replay_uniform_half_turn():
    x = _images()
    torch.manual_seed(33)
    theta = (torch.rand(N, dtype=F64) * 2 - 1) * math.pi
    theta = theta * _chosen(0.5)
    torch.manual_seed(33)
    y = augment_pipe(0.5, hue=1)(x)
    torch.testing.assert_close(y, _hue(x, theta), rtol=0, atol=1e-12)
    torch.manual_seed(33)
    theta = (torch.rand(N, dtype=F64) * 2 - 1) * math.pi * 0.5 * _chosen(1.0)
    torch.manual_seed(33)
    torch.testing.assert_close(augment_pipe(1.0, hue=1, hue_max=0.5)(x), _hue(x, theta), rtol=0, atol=1e-12)


def test_saturation_replay_lognormal_std_1():
    x = _images()
    torch.manual_seed(34)
    chosen = _chosen(0.5)
    s = 2 ** (torch.randn(N, dtype=F64) * chosen)[:, None, None, None]
    torch.manual_seed(34)
    y = augment_pipe(0.5, saturation=1)(x)
    torch.testing.assert_close(y, _luma_mean(x) + s * (x - _luma_mean(x)), rtol=0, atol=1e-12)


def test_full_colour_group_replay_composes_in_order():
    x = _images()
    torch.manual_seed(35)
    b = torch.randn(N, dtype=F64) * 0.2 * _chosen(0.5)
    cc = _chosen(0.5)
    c = 2 ** (torch.randn(N, dtype=F64) * 0.5 * cc)
    flip = torch.randint(2, (N,), dtype=F64) * _chosen(0.5)
    theta = (torch.rand(N, dtype=F64) * 2 - 1) * math.pi
    theta = theta * _chosen(0.5)
    cs = _chosen(0.5)
    s = 2 ** (torch.randn(N, dtype=F64) * cs)
    torch.manual_seed(35)
    y = augment_pipe(0.5, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)(x)

    def e(v):
        return v[:, None, None, None]

    z = (x + e(b)) * e(c)
    z = z - 2 * e(flip) * _luma_mean(z)
    z = _hue(z, theta)
    z = _luma_mean(z) + e(s) * (z - _luma_mean(z))
    torch.testing.assert_close(y, z, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------ filter, noise, cutout


def _response(h: torch.Tensor, f: float) -> float:
    """Frequency response of a symmetric odd-length filter at `f` (fraction of Nyquist)."""
    t = torch.arange(len(h), dtype=F64) - (len(h) - 1) / 2
    return float((h * torch.cos(math.pi * f * t)).sum())


def _hann_sinc(cutoff: float, taps: int) -> torch.Tensor:
    """The low-pass written out in plain float64 math: sinc(cutoff * t) times a Hann window of taps + 2
    points without its two zero ends, scaled to unit DC gain."""
    h = []
    for i in range(taps):
        x = cutoff * (i - (taps - 1) / 2)
        sinc = 1.0 if x == 0 else math.sin(math.pi * x) / (math.pi * x)
        h.append(sinc * (0.5 - 0.5 * math.cos(2 * math.pi * (i + 1) / (taps + 1))))
    return torch.tensor(h, dtype=F64) / math.fsum(h)


def test_band_filters_split_the_spectrum_into_octaves():
    bands = band_filters()
    assert bands.shape == (4, FILTER_TAPS) and bands.dtype == F64
    delta = torch.zeros(FILTER_TAPS, dtype=F64)
    delta[FILTER_TAPS // 2] = 1
    torch.testing.assert_close(bands.sum(0), delta, rtol=0, atol=1e-15)
    torch.testing.assert_close(bands, bands.flip(1), rtol=0, atol=1e-15)  # zero phase
    # Band k passes (1/2^(k+1), 1/2^k] of Nyquist; neighbours cross at half amplitude at each edge.
    lows = [bands[k:].sum(0) for k in (1, 2, 3)]  # the low-passes at 1/2, 1/4, 1/8
    for low, cut in zip(lows, (1 / 2, 1 / 4, 1 / 8)):
        assert _response(low, 0.0) == pytest.approx(1.0, abs=1e-12)
        assert _response(low, cut) == pytest.approx(0.5, abs=0.02)
        assert abs(_response(low, 2 * cut)) < 0.02
    assert abs(_response(bands[3], 1 / 4)) < 0.01  # the lowest band, per the module's comment
    for k in range(3):
        assert _response(bands[k], 0.0) == pytest.approx(0.0, abs=1e-12)
    # Each low-pass is the float64 Hann-windowed sinc of the docstring, to float64's last bits.
    for low, cut in zip(lows, (1 / 2, 1 / 4, 1 / 8)):
        torch.testing.assert_close(low, _hann_sinc(cut, FILTER_TAPS), rtol=0, atol=1e-14)
    assert band_filters(9).shape == (4, 9)
    torch.testing.assert_close(band_filters(9).sum(0)[4], torch.tensor(1.0, dtype=F64))


def test_filter_separable_matches_reflect_padded_convolution():
    x = _images(n=2, h=6, w=9)
    taps = torch.tensor([[0.1, 0.2, 0.4, 0.2, 0.1], [-0.3, 0.5, 1.0, 0.5, -0.3]], dtype=F64)
    y = filter_separable(x, taps)
    for i in range(2):
        k = taps[i].flip(0)  # conv2d correlates; these are symmetric, so it does not matter
        xi = F.pad(x[i : i + 1], [2, 2, 0, 0], mode="reflect")
        xi = F.conv2d(xi.transpose(0, 1), k.view(1, 1, 1, 5))
        xi = F.pad(xi, [0, 0, 2, 2], mode="reflect")
        xi = F.conv2d(xi, k.view(1, 1, 5, 1)).transpose(0, 1)
        torch.testing.assert_close(y[i : i + 1], xi, rtol=0, atol=1e-12)
    assert filter_separable(x.float(), taps).dtype == torch.float32


def test_imgfilter_replay_gains_normalised_to_keep_power():
    x = _images()
    torch.manual_seed(40)
    gains = torch.ones(N, 4, dtype=F64)
    for b in range(4):
        chosen = _chosen(0.25)
        gains[:, b] = 2 ** (torch.randn(N, dtype=F64) * chosen)
    power = torch.tensor(FILTER_BAND_POWER, dtype=F64)
    gains = gains / (gains.square() * power).sum(1, keepdim=True).sqrt()
    torch.manual_seed(40)
    y = augment_pipe(0.5, imgfilter=0.5)(x)
    untouched = (gains == 1).all(1)
    assert untouched.any() and not untouched.all()
    for i in range(N):
        if untouched[i]:
            assert torch.equal(y[i], x[i])
        else:
            want = filter_separable(x[i : i + 1], gains[i : i + 1] @ band_filters())
            torch.testing.assert_close(y[i : i + 1], want, rtol=0, atol=1e-12)
    # Equal gains in every band are rescaled to 1: the image is left alone.
    torch.manual_seed(40)
    assert torch.equal(augment_pipe(0.0, imgfilter=1)(x), x)


def test_imgfilter_std_scales_the_log_gains():
    x = _images(n=N)
    torch.manual_seed(41)
    gains = torch.ones(N, 4, dtype=F64)
    for b in range(4):
        chosen = _chosen(1.0)
        gains[:, b] = 2 ** (torch.randn(N, dtype=F64) * 0.3 * chosen)
    power = torch.tensor(FILTER_BAND_POWER, dtype=F64)
    gains = gains / (gains.square() * power).sum(1, keepdim=True).sqrt()
    torch.manual_seed(41)
    y = augment_pipe(1.0, imgfilter=1, imgfilter_std=0.3)(x)
    torch.testing.assert_close(y, filter_separable(x, gains @ band_filters()), rtol=0, atol=1e-12)


def test_noise_replay_half_normal_sigma():
    x = _images()
    torch.manual_seed(42)
    chosen = _chosen(0.5)
    sigma = torch.randn(N, dtype=F64).abs() * 0.1 * chosen
    noise = torch.randn(x.shape, dtype=F64) * sigma[:, None, None, None]
    torch.manual_seed(42)
    y = augment_pipe(0.5, noise=1)(x)
    torch.testing.assert_close(y, x + noise, rtol=0, atol=1e-15)
    assert torch.equal(y[~chosen], x[~chosen])
    torch.manual_seed(42)
    chosen = _chosen(1.0)
    sigma = torch.randn(N, dtype=F64).abs() * 0.3 * chosen
    noise = torch.randn(x.shape, dtype=F64) * sigma[:, None, None, None]
    torch.manual_seed(42)
    torch.testing.assert_close(augment_pipe(1.0, noise=1, noise_std=0.3)(x.float()), (x + noise).float())


def test_cutout_mask_square_edges():
    # 8 pixels across: centres at (i + 0.5) / 8. A side of 0.5 around 0.4375 covers centres closer than
    # 0.25: pixels 2..4; pixels 1 and 5 (0.1875, 0.6875) sit exactly 0.25 away and are kept.
    centre = torch.tensor([[0.4375, 0.4375], [0.4375, 0.4375]], dtype=F64)
    m = cutout_mask(centre, 0.5, torch.tensor([True, False]), 8, 8)
    assert m.shape == (2, 1, 8, 8) and m.dtype == F64
    inside = torch.zeros(8, dtype=torch.bool)
    inside[2:5] = True
    want = (~(inside[:, None] & inside[None, :])).to(F64)
    assert torch.equal(m[0, 0], want)
    assert torch.equal(m[1, 0], torch.ones(8, 8, dtype=F64))
    # Rows and columns use their own centre coordinate and size (non-square image).
    m = cutout_mask(torch.tensor([[0.1, 0.9]], dtype=F64), 0.25, torch.tensor([True]), 4, 10)
    cols = ((torch.arange(10) + 0.5) / 10 - 0.1).abs() < 0.125
    rows = ((torch.arange(4) + 0.5) / 4 - 0.9).abs() < 0.125
    assert torch.equal(m[0, 0], (~(rows[:, None] & cols[None, :])).to(F64))
    assert cols.tolist() == [True, True, False, False, False, False, False, False, False, False]
    assert rows.tolist() == [False, False, False, True]
    # 10 pixels across, whose centres k / 20 float32 cannot hold: a side of 0.5 around 0.4 has its edges
    # exactly on the centres of pixels 1 and 6 (0.15, 0.65), which are kept; pixels 2..5 are cut.
    m = cutout_mask(torch.tensor([[0.4, 0.4]], dtype=F64), 0.5, torch.tensor([True]), 10, 10)
    inside = torch.zeros(10, dtype=torch.bool)
    inside[2:6] = True
    assert torch.equal(m[0, 0], (~(inside[:, None] & inside[None, :])).to(F64))


def test_cutout_replay():
    x = _images(h=8, w=12)
    torch.manual_seed(43)
    chosen = _chosen(0.5)
    centre = torch.rand(N, 2, dtype=F64)
    torch.manual_seed(43)
    y = augment_pipe(0.5, cutout=1)(x)
    xs = (torch.arange(12, dtype=F64) + 0.5) / 12
    ys = (torch.arange(8, dtype=F64) + 0.5) / 8
    for i in range(N):
        hole = ((ys[:, None] - centre[i, 1]).abs() < 0.25) & ((xs[None, :] - centre[i, 0]).abs() < 0.25)
        want = x[i] * (~hole).to(F64) if chosen[i] else x[i]
        assert torch.equal(y[i], want), i
    torch.manual_seed(43)
    chosen = _chosen(1.0)
    centre = torch.rand(N, 2, dtype=F64)
    torch.manual_seed(43)
    y = augment_pipe(1.0, cutout=1, cutout_size=0.25)(x)
    hole = ((ys[:, None] - centre[0, 1]).abs() < 0.125) & ((xs[None, :] - centre[0, 0]).abs() < 0.125)
    assert torch.equal(y[0], x[0] * (~hole).to(F64))


def test_corruptions_at_p0_and_before_colour_draws():
    x = _images()
    torch.manual_seed(44)
    assert torch.equal(make_pipe("bgcfnc")(x), x)
    # Zero-strength corruptions draw nothing: the colour replay is unaffected by them.
    torch.manual_seed(45)
    b = torch.randn(N, dtype=F64) * 0.2 * _chosen(0.5)
    torch.manual_seed(45)
    y = augment_pipe(0.5, brightness=1)(x)
    torch.testing.assert_close(y, x + b[:, None, None, None], rtol=0, atol=1e-12)
    torch.manual_seed(46)
    after = torch.rand(4, dtype=F64)
    torch.manual_seed(46)
    augment_pipe(0.5)(x)
    assert torch.equal(torch.rand(4, dtype=F64), after)  # an all-zero pipe draws nothing


# ------------------------------------------------------------------------------------ configuration


def test_defaults_are_the_published_ones():
    pipe = AugmentPipe()
    for name in (*PIPES["bgcfnc"],):
        assert getattr(pipe, name) == 0.0, name
    assert (pipe.xint_max, pipe.scale_std, pipe.rotate_max, pipe.aniso_std, pipe.xfrac_std) == (
        0.125, 0.2, 1.0, 0.2, 0.125)  # fmt: skip
    assert (pipe.brightness_std, pipe.contrast_std, pipe.hue_max, pipe.saturation_std) == (0.2, 0.5, 1.0, 1.0)
    assert (pipe.imgfilter_std, pipe.noise_std, pipe.cutout_size) == (1.0, 0.1, 0.5)
    assert isinstance(pipe.xflip, float) and pipe.extra_repr() == ""
    assert float(pipe.p) == 0.0 and pipe.p.shape == ()


def test_invalid_settings_name_the_setting():
    for kwargs, shown in (({"xflip": -1}, "-1"), ({"hue_max": float("inf")}, "inf"), ({"scale": "1"}, "'1'"),
                          ({"noise_std": None}, "None")):  # fmt: skip
        (name,) = kwargs
        with pytest.raises(ValueError) as err:
            AugmentPipe(**kwargs)
        assert str(err.value) == f"AugmentPipe {name} must be a finite number >= 0, got {shown}"
    assert AugmentPipe(xflip=0, cutout_size=0).cutout_size == 0.0
    assert AugmentPipe(rotate=True).rotate == 1.0  # bool is an int


def test_extra_repr_lists_the_switched_on_augmentations():
    assert bgc_pipe().extra_repr() == (
        "xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1, "
        "brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1"
    )
    assert AugmentPipe(noise=0.5, cutout=2, scale_std=3).extra_repr() == "noise=0.5, cutout=2"
    assert "AugmentPipe(noise=0.5)" in repr(AugmentPipe(noise=0.5))


def test_make_pipe_switches_on_exactly_its_groups():
    groups = {"blit": "xflip, rotate90, xint", "geom": "scale, rotate, aniso, xfrac",
              "color": "brightness, contrast, lumaflip, hue, saturation",
              "filter": "imgfilter", "noise": "noise", "cutout": "cutout"}  # fmt: skip
    groups["bg"] = groups["blit"] + ", " + groups["geom"]
    groups["bgc"] = groups["bg"] + ", " + groups["color"]
    groups["bgcf"] = groups["bgc"] + ", imgfilter"
    groups["bgcfn"] = groups["bgcf"] + ", noise"
    groups["bgcfnc"] = groups["bgcfn"] + ", cutout"
    assert set(PIPES) == set(groups)
    for name, on in groups.items():
        want = ", ".join(f"{k}=1" for k in on.split(", "))
        assert make_pipe(name).extra_repr() == want, name
    with pytest.raises(ValueError) as err:
        make_pipe("bgcx")
    assert str(err.value) == (
        "unknown augmentation pipe 'bgcx'; choose one of "
        "blit, geom, color, filter, noise, cutout, bg, bgc, bgcf, bgcfn, bgcfnc"
    )


def test_ada_adjust_exact_steps_and_messages():
    assert ada_adjust(0.0, rt=1.0, target=0.6, batch_images=500) == 0.001  # 500 / (500 kimg * 1000)
    assert ada_adjust(0.5, rt=0.0, target=0.6, batch_images=1000, speed_kimg=100) == 0.49
    assert ada_adjust(0.3, rt=0.9, target=0.6, batch_images=0) == 0.3
    assert ada_adjust(0.3, rt=-0.7, target=-0.6, batch_images=2000, speed_kimg=1) == 0.0
    assert ada_adjust(0.3, rt=-0.7, target=0.6, batch_images=200, speed_kimg=1) == pytest.approx(0.1)
    assert ada_adjust(0.3, rt=0.7, target=0.6, batch_images=200, speed_kimg=1) == pytest.approx(0.5)
    assert ada_adjust(0.99, rt=0.7, target=0.6, batch_images=200, speed_kimg=1) == 1.0
    assert ada_adjust(0.01, rt=0.5, target=0.6, batch_images=200, speed_kimg=1) == 0.0
    assert ada_adjust(0.5, rt=0.7, target=0.6, batch_images=64, speed_kimg=0.5) == pytest.approx(0.628)
    with pytest.raises(ValueError) as err:
        ada_adjust(0.5, rt=float("inf"), target=0.6, batch_images=64)
    assert str(err.value) == "ada_adjust needs finite numbers, got p=0.5, rt=inf, target=0.6"
    with pytest.raises(ValueError) as err:
        ada_adjust(0.5, rt=0.7, target=0.6, batch_images=64, speed_kimg=-2)
    assert str(err.value) == "ada_adjust needs speed_kimg > 0 and batch_images >= 0, got -2, 64"
    with pytest.raises(ValueError, match="speed_kimg > 0"):
        ada_adjust(0.5, rt=0.7, target=0.6, batch_images=64, speed_kimg=0)
    with pytest.raises(ValueError, match="batch_images >= 0"):
        ada_adjust(0.5, rt=0.7, target=0.6, batch_images=-1, speed_kimg=10)
    for bad in ({"p": float("nan")}, {"target": float("nan")}, {"speed_kimg": float("inf")}):
        kwargs = {"p": 0.5, "rt": 0.7, "target": 0.6, "batch_images": 64, **bad}
        with pytest.raises(ValueError, match="finite numbers"):
            ada_adjust(**kwargs)


def test_pipe_messages():
    pipe = augment_pipe(1.0, xflip=1)
    with pytest.raises(ValueError) as err:
        pipe(torch.zeros(2, 3, 8))
    assert str(err.value) == "AugmentPipe needs float images [N, C, H, W], got torch.float32 (2, 3, 8)"
    with pytest.raises(ValueError, match=r"got torch.int64 \(2, 3, 8, 8\)"):
        pipe(torch.zeros(2, 3, 8, 8, dtype=torch.int64))
    for p in (-0.25, 1.0625):
        pipe.p.fill_(p)
        with pytest.raises(ValueError) as err:
            pipe(_images(n=2))
        assert str(err.value) == f"AugmentPipe p must lie in [0, 1], got {p}"
    for p in (0.0, 1.0):
        pipe.p.fill_(p)
        assert pipe(_images(n=2)).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError) as err:
        warp(_images(n=2), torch.eye(3, dtype=F64).repeat(2, 1, 1)[:, :2])
    assert str(err.value) == "warp needs one 3x3 matrix per image, got (2, 2, 3) for 2 images"
    with pytest.raises(ValueError, match="one 3x3 matrix per image"):
        warp(_images(n=2), torch.eye(4, dtype=F64)[:3].repeat(2, 1, 1))
    with pytest.raises(ValueError) as err:
        augment_pipe(1.0, brightness=1)(_images(n=2, c=2))
    assert str(err.value) == "colour augmentation needs 1 or 3 channels, got 2"


@pytest.mark.parametrize("name", ["scale", "rotate", "aniso", "xfrac"])
def test_resampling_marks_only_its_own_images(name):
    """Images that are only flipped stay exact gathers beside images this augmentation warps."""
    x = _images()
    torch.manual_seed(47)
    y = augment_pipe(0.5, xflip=1, **{name: 1})(x)
    kinds = []
    for xi, yi in zip(x, y):
        if torch.equal(yi, xi):
            kinds.append("same")
        elif torch.equal(yi, xi.flip(2)):
            kinds.append("flipped")
        else:
            assert not torch.allclose(yi, xi.flip(2), atol=1e-3), "a flip went through the warp"
            kinds.append("warped")
    assert {"same", "flipped", "warped"} <= set(kinds), kinds


@pytest.mark.parametrize("theta", [-0.3, 0.3])
@pytest.mark.parametrize("shift", [(6.0, 0.0), (-6.0, 0.0), (0.0, 6.0), (0.0, -6.0)])
def test_warp_pads_enough_for_turned_and_shifted_maps(theta, shift):
    """A constant image stays constant: the reflect padding covers every pixel the warp reads."""
    const = torch.full((1, 2, 16, 16), 0.7, dtype=F64)
    c, s = math.cos(theta), math.sin(theta)
    inv = _mat([[[c, -s, shift[0]], [s, c, shift[1]], [0, 0, 1]]])
    torch.testing.assert_close(warp(const, inv), const, rtol=0, atol=2e-6)


@pytest.mark.parametrize("shift", [(8.0, 0.0), (-8.0, 0.0), (0.0, 8.0), (0.0, -8.0)])
def test_warp_uses_padding_up_to_one_less_than_the_image(shift):
    """Half an image of shift needs a pad of exactly size - 1 (3 + 8 read, + 4 filter support)."""
    const = torch.full((1, 1, 16, 16), 0.7, dtype=F64)
    torch.testing.assert_close(warp(const, translate2d(*shift)[None]), const, rtol=0, atol=2e-6)


@pytest.mark.parametrize("tx, ty, side", [(-100, 0, 0), (100, 0, 1), (0, -100, 2), (0, 100, 3)])
def test_reflect_padding_stops_one_pixel_short_of_the_image_size(tx, ty, side):
    # F.pad's reflect mode takes at most size - 1 pixels a side: a warp reading further gets exactly that
    # (and zeros beyond it), on each side separately.
    from corgigan.stylegan2 import augment

    height, width = 6, 8
    inv = torch.tensor([[[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    pads = augment._warp_padding(inv, height, width)
    assert pads[side] == (width - 1 if side < 2 else height - 1)
    assert pads[side ^ 1] < pads[side]    # the opposite side needs no such pad


def test_float32_images_stay_float32_through_every_augmentation():
    # Parameters are drawn in float64; what reaches the images is cast to their dtype (the cutout mask too).
    torch.manual_seed(0)
    y = augment_pipe(1.0, **dict.fromkeys(PIPES["bgcfnc"], 1))(_images().float())
    assert y.dtype == torch.float32 and y.shape == (N, 3, 8, 8)
