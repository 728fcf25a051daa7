"""The ADA augmentation pipe: matrices, exact integer paths, the warp, colour, gradients, ADA steps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from corgigan.stylegan2.augment import (
    AugmentPipe,
    ada_adjust,
    bgc_pipe,
    color_transform,
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

LUMA = (1 / math.sqrt(3),) * 3
SINGLE = (
    "xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac",
    "brightness", "contrast", "lumaflip", "hue", "saturation",
)  # fmt: skip


def _smooth(h: int = 32, w: int = 32) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    chans = [
        torch.sin(2 * math.pi * 2 * xx / w) * torch.cos(2 * math.pi * yy / h),
        torch.cos(2 * math.pi * xx / w),
        torch.sin(2 * math.pi * 3 * yy / h),
    ]
    return torch.stack(chans)[None].to(torch.float64)


def _apply(m: torch.Tensor, point: tuple[float, ...]) -> torch.Tensor:
    return m @ torch.tensor([*point, 1.0], dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- matrices


def test_2d_matrices_compose_and_invert():
    eye = torch.eye(3, dtype=torch.float64)
    for a in (0.3, -1.2, math.pi):
        torch.testing.assert_close(rotate2d(a) @ rotate2d(-a), eye)
    torch.testing.assert_close(translate2d(3.5, -2) @ translate2d(-3.5, 2), eye)
    torch.testing.assert_close(scale2d(2, 0.25) @ scale2d(0.5, 4), eye)
    torch.testing.assert_close(
        _apply(rotate2d(math.pi / 2), (1, 0)), torch.tensor([0, 1, 1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        _apply(translate2d(2, -1), (1, 1)), torch.tensor([3, 0, 1.0], dtype=torch.float64)
    )
    # Order matters: scale then translate is not translate then scale.
    p = _apply(translate2d(1, 0) @ scale2d(2, 2), (1, 1))
    torch.testing.assert_close(p, torch.tensor([3, 2, 1.0], dtype=torch.float64))


def test_matrices_broadcast_over_batches():
    t = torch.tensor([0.0, 1.0, 2.0])
    m = translate2d(t, 5.0)
    assert m.shape == (3, 3, 3) and m.dtype == torch.float64
    torch.testing.assert_close(m[:, 0, 2], t.double())
    torch.testing.assert_close(m[:, 1, 2], torch.full((3,), 5.0, dtype=torch.float64))
    assert rotate3d(LUMA, torch.zeros(4, 2)).shape == (4, 2, 4, 4)


def test_colour_matrices():
    rgb = (0.2, -0.5, 0.9)
    torch.testing.assert_close(_apply(translate3d(0.3, 0.3, 0.3), rgb)[:3], torch.tensor(rgb).double() + 0.3)
    torch.testing.assert_close(_apply(scale3d(2, 2, 2), rgb)[:3], torch.tensor(rgb).double() * 2)
    eye = torch.eye(4, dtype=torch.float64)
    r = rotate3d(LUMA, 0.7)
    torch.testing.assert_close(r @ rotate3d(LUMA, -0.7), eye)
    torch.testing.assert_close(r[:3, :3] @ r[:3, :3].T, torch.eye(3, dtype=torch.float64))
    grey = (0.4, 0.4, 0.4)
    torch.testing.assert_close(_apply(r, grey)[:3], torch.tensor(grey).double())  # luma axis is fixed
    torch.testing.assert_close(_apply(rotate3d((0, 0, 1), math.pi / 2), (1, 0, 0))[:3],
                               torch.tensor([0, 1, 0.0], dtype=torch.float64))  # fmt: skip
    torch.testing.assert_close(reflect3d(LUMA, 1) @ reflect3d(LUMA, 1), eye)
    torch.testing.assert_close(_apply(reflect3d(LUMA, 1), grey)[:3], -torch.tensor(grey).double())
    torch.testing.assert_close(reflect3d(LUMA, 0), eye)
    torch.testing.assert_close(saturate3d(LUMA, 1), eye)
    mean = sum(rgb) / 3
    torch.testing.assert_close(_apply(saturate3d(LUMA, 0), rgb), torch.tensor([mean, mean, mean, 1]).double())
    with pytest.raises(ValueError, match="unit axis"):
        rotate3d((1, 1, 1), 0.5)


# ------------------------------------------------------------------------------------------- the pipe


def test_p0_is_bitwise_identity():
    x = random_images(16, h=32, w=32)
    torch.manual_seed(0)
    assert torch.equal(bgc_pipe()(x), x)
    assert float(bgc_pipe().p) == 0.0


@pytest.mark.parametrize("name", SINGLE)
def test_each_augmentation_changes_images_at_p1(name):
    x = random_images(8)
    torch.manual_seed(3)
    y = augment_pipe(1.0, **{name: 1})(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.isfinite(y).all()
    changed = (y - x).abs().amax(dim=(1, 2, 3)) > 1e-4
    assert changed.any(), f"{name} at p=1 left every image unchanged"


def test_xflip_is_exact():
    x = random_images(32)
    torch.manual_seed(0)
    y = augment_pipe(xflip=1)(x)
    flipped = [torch.equal(yi, xi.flip(2)) for xi, yi in zip(x, y)]
    same = [torch.equal(yi, xi) for xi, yi in zip(x, y)]
    assert all(f or s for f, s in zip(flipped, same))
    assert any(flipped) and any(same)


def test_rotate90_is_exact():
    x = random_images(32)
    torch.manual_seed(0)
    y = augment_pipe(rotate90=1)(x)
    seen = set()
    for xi, yi in zip(x, y):
        ks = [k for k in range(4) if torch.equal(yi, torch.rot90(xi, k, dims=(1, 2)))]
        assert len(ks) == 1
        seen.add(ks[0])
    assert len(seen) >= 3


def test_integer_translation_is_an_exact_reflected_shift():
    x = random_images(16, h=16, w=16)
    torch.manual_seed(0)
    y = augment_pipe(xint=1)(x)  # xint_max 0.125 of 16 px: shifts of at most 2 pixels
    padded = F.pad(x, [2, 2, 2, 2], mode="reflect")
    shifts = set()
    for i in range(len(x)):
        hits = [
            (dx, dy)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(y[i], padded[i, :, 2 - dy : 18 - dy, 2 - dx : 18 - dx])
        ]
        assert hits, f"image {i} is not an integer shift of its input"
        shifts.add(hits[0])
    assert len(shifts) > 2


def test_warp_identity_and_translation():
    x = _smooth()
    eye = torch.eye(3, dtype=torch.float64)[None]
    # Up- then downsampling with an orthonormal wavelet filter and its adjoint is exactly invertible.
    torch.testing.assert_close(warp(x, eye), x, atol=1e-6, rtol=0)
    # Inverse map x_in = x_out - 1: the image moves one pixel right.
    y = warp(x, translate2d(-1.0, 0.0)[None])
    torch.testing.assert_close(y[..., 1:], x[..., :-1], atol=1e-6, rtol=0)


def test_warp_keeps_constants_and_matches_rotation_approximately():
    const = torch.full((3, 2, 12, 12), 0.7, dtype=torch.float64)
    torch.manual_seed(0)
    inv = rotate2d(torch.rand(3) * 6) @ scale2d(1.3, 0.8) @ translate2d(1.7, -0.4)
    # The filter taps are float32, so they sum to 1 only to float32 precision.
    torch.testing.assert_close(warp(const, inv), const, atol=2e-6, rtol=0)
    x = _smooth()
    y = warp(x, rotate2d(math.pi / 2)[None])
    # The symlet filter is not symmetric, so a turned image is off by a fraction of a pixel only.
    err = (y - torch.rot90(x, 1, dims=(2, 3))).abs()[..., 4:-4, 4:-4].max()
    assert err < 0.25
    assert (y - x).abs()[..., 4:-4, 4:-4].max() > 1.0


def test_permute_pixels_refuses_off_lattice_maps():
    x = random_images(2, h=8, w=8)
    assert permute_pixels(x, translate2d(torch.tensor([0.5, 0.0]), 0.0)) is None
    y = permute_pixels(x, scale2d(torch.tensor([-1.0, 1.0]), 1.0))
    assert torch.equal(y[0], x[0].flip(2)) and torch.equal(y[1], x[1])


def test_colour_augmentations_do_what_they_say():
    x = random_images(16, seed=4)
    torch.manual_seed(0)
    y = augment_pipe(brightness=1)(x)
    offset = y - x
    torch.testing.assert_close(offset, offset[:, :1, :1, :1].expand_as(offset), atol=1e-6, rtol=0)
    torch.manual_seed(0)
    y = augment_pipe(contrast=1)(x)
    ratio = y / x
    torch.testing.assert_close(ratio, ratio[:, :1, :1, :1].expand_as(ratio), atol=1e-4, rtol=1e-4)
    # Hue turns about the luma axis: per-pixel mean and length are kept.
    torch.manual_seed(0)
    y = augment_pipe(hue=1)(x)
    torch.testing.assert_close(y.mean(1), x.mean(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(y.norm(dim=1), x.norm(dim=1), atol=1e-5, rtol=0)
    # Luma flip: either unchanged or x - 2 * mean.
    torch.manual_seed(0)
    y = augment_pipe(lumaflip=1)(x)
    flipped = x - 2 * x.mean(1, keepdim=True)
    for xi, yi, fi in zip(x, y, flipped):
        assert torch.equal(yi, xi) or torch.allclose(yi, fi, atol=1e-6)
    # Grey images have no hue or saturation to change.
    grey = x[:, :1].expand(-1, 3, -1, -1).contiguous()
    torch.manual_seed(0)
    torch.testing.assert_close(augment_pipe(hue=1, saturation=1)(grey), grey, atol=1e-6, rtol=0)


def test_colour_on_one_channel_and_bad_channel_counts():
    grey = random_images(4, c=1)
    m = translate3d(0.25, 0.25, 0.25).expand(4, 4, 4)
    torch.testing.assert_close(color_transform(grey, m), grey + 0.25)
    # Grey is kept as grey: the RGB gain (here 0.5) scales it, the offset adds to it.
    m = (translate3d(0.25, 0.25, 0.25) @ scale3d(0.5, 0.5, 0.5)).expand(4, 4, 4)
    torch.testing.assert_close(color_transform(grey, m), grey * 0.5 + 0.25)
    torch.manual_seed(0)
    assert augment_pipe(brightness=1, hue=1)(grey).shape == grey.shape
    four = random_images(4, c=4)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        augment_pipe(brightness=1)(four)
    assert augment_pipe(xflip=1, rotate=1)(four).shape == four.shape  # geometry is channel-agnostic


def test_non_square_images_keep_their_shape():
    x = random_images(8, h=12, w=20)
    torch.manual_seed(0)
    y = bgc_pipe().requires_grad_(False)
    y.p.fill_(1.0)
    out = y(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.manual_seed(0)
    out = augment_pipe(rotate90=1)(x)  # odd quarter turns of a 12x20 image cannot be exact: warped
    assert out.shape == x.shape


def test_deterministic_under_manual_seed():
    pipe = bgc_pipe()
    pipe.p.fill_(0.7)
    x = random_images(8, h=24, w=24)
    torch.manual_seed(123)
    a = pipe(x)
    torch.manual_seed(123)
    b = pipe(x)
    torch.manual_seed(124)
    c = pipe(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_float64_matches_float32():
    pipe = bgc_pipe()
    pipe.p.fill_(1.0)
    x = random_images(6, h=16, w=16, dtype=torch.float64)
    torch.manual_seed(5)
    y64 = pipe(x)
    torch.manual_seed(5)
    y32 = pipe(x.float())
    assert y64.dtype == torch.float64 and y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, atol=1e-4, rtol=1e-4)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="xflip"):
        AugmentPipe(xflip=-1)
    with pytest.raises(ValueError, match="hue_max"):
        AugmentPipe(hue_max=float("nan"))
    pipe = bgc_pipe()
    pipe.p.fill_(1.5)
    with pytest.raises(ValueError, match="p must lie"):
        pipe(random_images(2))
    with pytest.raises(ValueError, match="float images"):
        bgc_pipe()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="one 3x3 matrix per image"):
        warp(random_images(2), torch.eye(3, dtype=torch.float64)[None])


def test_p_is_a_buffer_saved_with_the_state():
    pipe = bgc_pipe()
    pipe.p.fill_(0.25)
    assert "p" in pipe.state_dict() and not list(pipe.parameters())
    other = bgc_pipe()
    other.load_state_dict(pipe.state_dict())
    assert float(other.p) == 0.25


# ------------------------------------------------------------------------------------------- gradients


def test_gradients_flow_to_the_input():
    pipe = bgc_pipe()
    pipe.p.fill_(1.0)
    x = random_images(8).requires_grad_(True)
    torch.manual_seed(0)
    weights = torch.randn(8, 3, 16, 16)
    (pipe(x) * weights).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.abs().amax(dim=(1, 2, 3)) > 0).all()


def _seeded(pipe: AugmentPipe, seed: int):
    def run(x: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(seed)
        return pipe(x)

    return run


@pytest.mark.parametrize("seed", [0, 1])
def test_gradcheck_and_gradgradcheck_float64(seed):
    pipe = bgc_pipe()
    pipe.p.fill_(1.0)
    x = random_images(3, h=6, w=6, dtype=torch.float64, seed=seed).requires_grad_(True)
    fn = _seeded(pipe, seed)
    assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


def test_r1_style_double_backward_reaches_discriminator_weights():
    torch.manual_seed(0)
    disc = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Softplus(), torch.nn.Flatten(), torch.nn.LazyLinear(1)
    )
    pipe = bgc_pipe()
    pipe.p.fill_(1.0)
    real = random_images(4).requires_grad_(True)
    logits = disc(pipe(real))
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    penalty = grad.square().sum()
    penalty.backward()
    w = disc[0].weight.grad
    assert w is not None and torch.isfinite(w).all() and w.abs().max() > 0


# ------------------------------------------------------------------------------------------------ ADA


def test_ada_adjust_direction_step_and_clamp():
    step = 256 / 500_000
    assert ada_adjust(0.5, rt=0.8, target=0.6, batch_images=256) == pytest.approx(0.5 + step)
    assert ada_adjust(0.5, rt=0.1, target=0.6, batch_images=256) == pytest.approx(0.5 - step)
    assert ada_adjust(0.5, rt=0.6, target=0.6, batch_images=256) == 0.5
    assert ada_adjust(0.0, rt=-1.0, target=0.6, batch_images=256) == 0.0
    assert ada_adjust(1.0 - step / 2, rt=1.0, target=0.6, batch_images=256) == 1.0
    assert ada_adjust(0.2, rt=0.9, target=0.6, batch_images=100, speed_kimg=0.1) == 1.0


def test_ada_moves_p_from_0_to_1_in_500_kimg():
    p, images = 0.0, 0
    while p < 1.0:
        p = ada_adjust(p, rt=0.9, target=0.6, batch_images=4 * 64)
        images += 4 * 64
    assert 499_000 <= images <= 501_000


def test_ada_adjust_rejects_nonsense():
    with pytest.raises(ValueError):
        ada_adjust(0.5, rt=float("nan"), target=0.6, batch_images=64)
    with pytest.raises(ValueError):
        ada_adjust(0.5, rt=0.7, target=0.6, batch_images=64, speed_kimg=0)
    with pytest.raises(ValueError):
        ada_adjust(0.5, rt=0.7, target=0.6, batch_images=-1)


# ----------------------------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_double_backward():
    pipe = bgc_pipe()
    pipe.p.fill_(1.0)
    x = random_images(8, h=32, w=32)
    torch.manual_seed(7)
    cpu = pipe(x)
    torch.manual_seed(7)
    gpu = pipe.cuda()(x.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
    xd = random_images(2, h=6, w=6, dtype=torch.float64).cuda().requires_grad_(True)
    assert torch.autograd.gradgradcheck(_seeded(pipe, 0), (xd,), fast_mode=True)
