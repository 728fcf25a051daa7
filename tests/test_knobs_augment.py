"""The reference's named augmentation pipes (train.augpipe) and the corrupting augmentations they add:
image-space filtering, additive noise and cutout."""

from __future__ import annotations

import pytest
import torch

from corgigan.stylegan2.augment import (
    FILTER_BAND_POWER,
    PIPES,
    AugmentPipe,
    band_filters,
    bgc_pipe,
    filter_separable,
    make_pipe,
)

REFERENCE_NAMES = ("blit", "geom", "color", "filter", "noise", "cutout", "bg", "bgc", "bgcf", "bgcfn",
                   "bgcfnc")


def _images(n: int = 6, c: int = 3, size: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g, dtype=torch.float64) * 2 - 1


def _pipe(name: str, p: float) -> AugmentPipe:
    pipe = make_pipe(name)
    pipe.p.fill_(p)
    return pipe


def test_every_reference_pipe_name_is_known_and_nested_as_in_the_reference():
    assert tuple(PIPES) == REFERENCE_NAMES
    for short, longer in (("bg", "bgc"), ("bgc", "bgcf"), ("bgcf", "bgcfn"), ("bgcfn", "bgcfnc")):
        assert set(PIPES[short]) < set(PIPES[longer])
    assert set(PIPES["bg"]) == set(PIPES["blit"]) | set(PIPES["geom"])
    assert set(PIPES["bgcfnc"]) - set(PIPES["bgc"]) == {"imgfilter", "noise", "cutout"}
    with pytest.raises(ValueError, match="unknown augmentation pipe 'bgcx'; choose one of blit, geom"):
        make_pipe("bgcx")


def test_bgc_by_name_is_the_bgc_pipe_draw_for_draw():
    x = _images()
    a, b = _pipe("bgc", 0.8), bgc_pipe()
    b.p.fill_(0.8)
    torch.manual_seed(3)
    ya = a(x)
    torch.manual_seed(3)
    assert torch.equal(ya, b(x))


@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_each_pipe_is_the_identity_at_p_0_and_changes_images_at_p_1(name):
    x = _images()
    torch.manual_seed(0)
    assert torch.equal(_pipe(name, 0.0)(x), x)
    torch.manual_seed(0)
    y = _pipe(name, 1.0)(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert not torch.equal(y, x)


def test_the_filter_bands_sum_to_the_identity_and_split_the_spectrum():
    bands = band_filters()
    impulse = torch.zeros(bands.shape[1], dtype=torch.float64)
    impulse[bands.shape[1] // 2] = 1
    torch.testing.assert_close(bands.sum(0), impulse, atol=1e-12, rtol=0)
    response = torch.fft.rfft(bands, 1024).abs()            # [4, 513], frequency 0 .. Nyquist
    peak = [int(r.argmax()) for r in response]
    assert peak == sorted(peak, reverse=True)                # highest band first
    assert response[3, 0] == pytest.approx(1) and response[:3, 0].abs().max() < 1e-12  # the mean: lowest
    assert sum(FILTER_BAND_POWER) == pytest.approx(1)
    # Unit gains leave images as they are; gain 0 on all but the lowest band blurs them.
    x = _images()
    taps = torch.ones(len(x), 4, dtype=torch.float64) @ bands
    torch.testing.assert_close(filter_separable(x, taps), x, atol=1e-12, rtol=0)
    blur = filter_separable(x, bands[3].expand(len(x), -1))
    assert blur.diff(dim=3).abs().mean() < 0.25 * x.diff(dim=3).abs().mean()


def test_noise_adds_noise_and_cutout_zeroes_a_square():
    x = torch.full((4, 3, 16, 16), 0.5, dtype=torch.float64)
    torch.manual_seed(0)
    y = AugmentPipe(noise=1, noise_std=0.1).requires_grad_(False)
    y.p.fill_(1.0)
    noisy = y(x)
    assert 0 < (noisy - x).std() < 0.5
    cut = AugmentPipe(cutout=1)
    cut.p.fill_(1.0)
    torch.manual_seed(0)
    out = cut(x)
    zeros = (out == 0).all(dim=1)                                 # [n, H, W]
    assert set(torch.unique(out).tolist()) == {0.0, 0.5}
    for mask in zeros:                                            # a square of side 0.5 (clipped at borders)
        rows, cols = mask.any(dim=1).sum(), mask.any(dim=0).sum()
        assert 1 <= rows <= 8 and 1 <= cols <= 8
        assert mask.sum() == rows * cols


def test_the_corrupting_augmentations_are_differentiable_twice():
    pipe = _pipe("bgcfnc", 1.0).requires_grad_(False)
    x = _images(3, size=8).requires_grad_(True)
    torch.manual_seed(2)
    (grad,) = torch.autograd.grad(pipe(x).square().sum(), x, create_graph=True)
    (grad2,) = torch.autograd.grad(grad.square().sum(), x)
    assert torch.isfinite(grad2).all() and grad2.abs().sum() > 0
