"""Numerical guards on degenerate inputs: all-zero styles, all-zero latents, identical images, empty batches.

The guards (the epsilon inside demodulation's rsqrt, inside the mapping input's norm and inside the
minibatch-stddev square root) change nothing on ordinary inputs, so only degenerate ones can tell
whether they sit in the right place: there the right place gives a finite value and the wrong one
inf or NaN. Expectations are computed by hand: demodulation d[n, o] = 1 / sqrt(sum_{i,k} (w[o,i,k]
s[n,i])^2 + 1e-8), so an all-zero style row gives d = 1e4 and an output of exactly 0.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corgigan.stylegan2 import configs
from corgigan.stylegan2.loss import r1_penalty
from corgigan.stylegan2.networks import demodulation_coefficients, modulated_conv2d, normalize_2nd_moment
from corgigan.stylegan2.ops.upfirdn2d import setup_filter
from tests.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demodulation_coefficients_by_hand():
    weight = torch.ones(2, 3, 3, 3, dtype=torch.float64)
    weight[1] *= 2
    styles = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    d = demodulation_coefficients(weight, styles)
    # Row 0: sum_i s_i^2 * 9 * w^2 = 5 * 9 = 45 (180 for the doubled kernel); row 1: only the epsilon.
    want = torch.tensor([[1 / np.sqrt(45 + 1e-8), 1 / np.sqrt(180 + 1e-8)], [1e4, 1e4]], dtype=torch.float64)
    assert torch.allclose(d, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_modulated_1x1_conv_by_hand_with_a_zero_style_row(fused):
    # A 1x1 kernel makes the conv a per-pixel matrix product: y[n,o] = d[n,o] * sum_i w[o,i] s[n,i] x[n,i].
    rng = np.random.default_rng(0)
    x, w, s = rng.normal(size=(3, 4, 2, 2)), rng.normal(size=(5, 4, 1, 1)), rng.normal(size=(3, 4))
    s[1] = 0
    d = 1 / np.sqrt((s**2) @ (w[:, :, 0, 0] ** 2).T + 1e-8)                   # [N, O]
    want = np.einsum("oi,ni,nihw->nohw", w[:, :, 0, 0], s, x) * d[:, :, None, None]
    y = modulated_conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(s), fused=fused)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-10, atol=1e-12)
    assert np.all(y.numpy()[1] == 0)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("up", [1, 2])
def test_zero_styles_give_zero_not_nan(fused, up):
    torch.manual_seed(0)
    x, w = torch.randn(2, 4, 5, 5), torch.randn(3, 4, 3, 3)
    styles = torch.randn(2, 4)
    styles[0] = 0
    noise = torch.randn(2, 1, 5 * up, 5 * up)
    y = modulated_conv2d(x, w, styles, noise=noise, up=up, resample_filter=setup_filter([1, 3, 3, 1]),
                         fused=fused)
    assert torch.isfinite(y).all()
    assert torch.equal(y[0], noise[0].expand(3, -1, -1))              # nothing but the noise
    assert y[1].abs().max() > 0


def _generator():
    torch.manual_seed(0)
    G, D = configs.build_networks(configs.network_spec(tiny_config()))
    return G, D


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_generator_with_an_all_zero_style_layer_stays_finite(mode):
    G, _ = _generator()
    getattr(G, mode)()
    with torch.no_grad():   # this layer's styles are 0 for every w: affine weight and bias zero
        affine = G.synthesis.blocks[1].conv0.affine
        affine.weight.zero_()
        affine.bias.zero_()
        img = G(torch.randn(3, G.z_dim), None, noise_mode="const")
    assert torch.isfinite(img).all()


def test_all_zero_latents_and_identical_images_stay_finite():
    G, D = _generator()
    assert torch.equal(normalize_2nd_moment(torch.zeros(2, 5)), torch.zeros(2, 5))
    with torch.no_grad():
        assert torch.isfinite(G(torch.zeros(2, G.z_dim), None)).all()
    # A batch of identical images has zero spread in every minibatch-stddev group: D and its R1 penalty
    # (a second derivative through the square root) stay finite.
    reals = torch.zeros(4, 3, 8, 8, requires_grad=True)
    D.requires_grad_(True)
    penalty = r1_penalty(D(reals, None), reals)
    penalty.sum().backward()
    assert torch.isfinite(penalty).all()
    assert all(torch.isfinite(p.grad).all() for p in D.parameters() if p.grad is not None)


def test_empty_batch_through_the_training_generator():
    G, _ = _generator()
    img = G.train()(torch.zeros(0, G.z_dim), None)
    assert img.shape == (0, 3, 8, 8)


def test_empty_batch_through_the_inference_generator():
    G, _ = _generator()
    with torch.no_grad():
        img = G.eval()(torch.zeros(0, G.z_dim), None)
    assert img.shape == (0, 3, 8, 8)


def test_w_avg_is_not_moved_by_an_empty_batch():
    G, _ = _generator()
    before = G.mapping.w_avg.clone()
    with torch.no_grad():
        G.mapping(torch.zeros(0, G.z_dim), None, update_emas=True)
    assert torch.equal(G.mapping.w_avg, before)
