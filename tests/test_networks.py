"""StyleGAN2 networks: reference parameter counts, shapes, truncation, determinism, mbstd, gradients."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch

from corgigan.stylegan2 import networks as nw
from corgigan.stylegan2.networks import (
    Discriminator,
    Generator,
    MinibatchStdLayer,
    count_parameters,
    mbstd_group,
    modulated_conv2d,
)

SMALL = {"channel_base": 512, "channel_max": 32}


def tiny_generator(res: int = 32, z: int = 32, c_dim: int = 0, **synthesis) -> Generator:
    return Generator(z, c_dim, z, res, 3, {"num_layers": 2}, {**SMALL, **synthesis})


def tiny_discriminator(res: int = 32, c_dim: int = 0, **kwargs) -> Discriminator:
    return Discriminator(c_dim, res, 3, **{**SMALL, **kwargs})


def set_noise_strength(G: Generator, value: float) -> None:
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(value)


def test_parameter_counts_match_the_reference_at_1024():
    torch.manual_seed(0)
    G = Generator(512, 0, 512, 1024, 3, {"num_layers": 8}, {"channel_base": 32768, "channel_max": 512})
    D = Discriminator(0, 1024, 3, channel_base=32768, channel_max=512)
    assert G.num_ws == 18
    assert count_parameters(G) == 30_370_060
    assert count_parameters(D) == 29_012_513
    # w_avg, the constant noise images and the FIR filters are state, not trainable parameters.
    param_names = {n for n, _ in G.named_parameters()}
    assert not any("w_avg" in n or "noise_const" in n or "resample_filter" in n for n in param_names)
    assert "mapping.w_avg" in G.state_dict()
    assert "synthesis.blocks.8.conv1.noise_const" in G.state_dict()


@pytest.mark.parametrize("res", [8, 32, 64])
def test_generator_output_shape_and_range(res):
    torch.manual_seed(1)
    G = tiny_generator(res)
    img = G(torch.randn(3, 32), None)
    assert img.shape == (3, 3, res, res)                      # [N, C, H, W]
    assert img.dtype == torch.float32
    assert torch.isfinite(img).all()
    assert 0.05 < img.std().item() < 10                       # roughly unit scale at initialisation
    assert img.abs().max().item() <= 256                      # conv_clamp bounds toRGB


def test_generator_num_ws_and_channels_per_resolution():
    G = tiny_generator(64)
    # One w for the 4x4 conv, two for each further block, plus the last toRGB.
    assert G.num_ws == 1 + 2 * 4 + 1
    channels = [b.out_channels for b in G.synthesis.blocks]
    assert channels == [min(512 // r, 32) for r in (4, 8, 16, 32, 64)]


def test_truncation_psi_zero_gives_the_w_avg_image_for_every_z():
    torch.manual_seed(2)
    G = tiny_generator(16).eval()
    G.mapping(torch.randn(64, 32), None, update_emas=True)    # make w_avg non-zero
    imgs = G(torch.randn(4, 32), None, truncation_psi=0, noise_mode="const")
    ws_avg = G.mapping.w_avg.expand(1, G.num_ws, -1)
    avg_img = G.synthesis(ws_avg, noise_mode="const")
    torch.testing.assert_close(imgs, avg_img.expand_as(imgs), rtol=1e-5, atol=1e-5)
    # A cutoff truncates only the first ws; the rest still follow z.
    ws = G.mapping(torch.randn(2, 32), None, truncation_psi=0, truncation_cutoff=3)
    assert torch.equal(ws[:, :3], G.mapping.w_avg.expand(2, 3, -1))
    assert not torch.allclose(ws[:, 3:], G.mapping.w_avg.expand(2, G.num_ws - 3, -1))


def test_w_avg_moves_towards_the_batch_mean_by_one_minus_beta():
    torch.manual_seed(3)
    G = tiny_generator(8)
    z = torch.randn(16, 32)
    before = G.mapping.w_avg.clone()
    ws = G.mapping(z, None, update_emas=True)
    expected = before + (ws[:, 0].mean(0) - before) * (1 - 0.995)
    torch.testing.assert_close(G.mapping.w_avg, expected)
    G.mapping(z, None)                                        # no update without update_emas
    torch.testing.assert_close(G.mapping.w_avg, expected)


def test_noise_modes_and_determinism():
    torch.manual_seed(4)
    G = tiny_generator(16).eval()
    set_noise_strength(G, 0.5)
    z = torch.randn(2, 32)
    ws = G.mapping(z, None)
    assert torch.equal(G.mapping(z, None), ws)
    const = G.synthesis(ws, noise_mode="const")
    assert torch.equal(G.synthesis(ws, noise_mode="const"), const)
    assert torch.equal(G.synthesis(ws, noise_mode="none"), G.synthesis(ws, noise_mode="none"))
    assert not torch.equal(G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random"))
    assert not torch.allclose(G.synthesis(ws, noise_mode="none"), const)
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="fixed")


def test_same_seed_builds_identical_networks():
    torch.manual_seed(5)
    a = tiny_generator(16)
    torch.manual_seed(5)
    b = tiny_generator(16)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_training_and_inference_paths_agree():
    # Training scales activations around one shared conv; inference runs one grouped conv per batch.
    torch.manual_seed(6)
    G = tiny_generator(32)
    set_noise_strength(G, 0.3)
    ws = G.mapping(torch.randn(3, 32), None)
    train = G.train().synthesis(ws, noise_mode="const")
    infer = G.eval().synthesis(ws, noise_mode="const")
    torch.testing.assert_close(train, infer, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("up", [1, 2])
def test_modulated_conv_fused_equals_unfused_and_demodulation_ignores_style_scale(up):
    torch.manual_seed(7)
    x, w, s = torch.randn(2, 5, 6, 6), torch.randn(4, 5, 3, 3), torch.randn(2, 5)
    f = nw.setup_filter(nw.RESAMPLE_FILTER)
    fused = modulated_conv2d(x, w, s, up=up, resample_filter=f, fused=True)
    unfused = modulated_conv2d(x, w, s, up=up, resample_filter=f, fused=False)
    assert fused.shape == (2, 4, 6 * up, 6 * up)
    torch.testing.assert_close(fused, unfused, rtol=1e-4, atol=1e-4)
    scaled = modulated_conv2d(x, w * 7, s * torch.tensor([[3.0], [0.2]]), up=up, resample_filter=f)
    torch.testing.assert_close(scaled, fused, rtol=1e-4, atol=1e-4)
    # Each demodulated output channel has unit expected variance for unit-variance input.
    big = modulated_conv2d(torch.randn(1, 64, 32, 32), torch.randn(8, 64, 3, 3), torch.randn(1, 64))
    assert 0.8 < big[:, :, 2:-2, 2:-2].var().item() < 1.2


def test_float16_path_matches_float32():
    # CPU runs float32; pretend to be on CUDA so the float16 blocks (and their overflow guards) run here.
    torch.manual_seed(8)
    G = tiny_generator(32, num_fp16_res=2).eval()
    D = tiny_discriminator(32, num_fp16_res=2)
    z = torch.randn(2, 32)
    ref_img = G(z, None, noise_mode="const")
    ref_logits = D(ref_img, None)
    def anywhere(block_fp16, device, force_fp32):
        return block_fp16 and not force_fp32

    with mock.patch.object(nw, "use_fp16_now", anywhere):
        img = G(z, None, noise_mode="const")
        logits = D(ref_img, None)
        assert torch.equal(G(z, None, noise_mode="const", force_fp32=True), ref_img)
    assert img.dtype == torch.float32 and logits.dtype == torch.float32
    assert (img - ref_img).abs().max().item() < 0.05 * ref_img.abs().max().item()
    torch.testing.assert_close(logits, ref_logits, rtol=0.02, atol=0.02)


@pytest.mark.parametrize("architecture", ["resnet", "orig"])
def test_discriminator_output_shape(architecture):
    torch.manual_seed(9)
    D = tiny_discriminator(32, architecture=architecture)
    logits = D(torch.randn(5, 3, 32, 32), None)
    assert logits.shape == (5, 1)
    assert torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="Discriminator img"):
        D(torch.randn(5, 3, 16, 16), None)


def test_conditional_networks_use_the_label():
    torch.manual_seed(10)
    G, D = tiny_generator(16, c_dim=4).eval(), tiny_discriminator(16, c_dim=4)
    z = torch.randn(2, 32)
    c1, c2 = torch.eye(4)[[0, 1]], torch.eye(4)[[2, 3]]
    assert not torch.allclose(G(z, c1, noise_mode="const"), G(z, c2, noise_mode="const"))
    img = torch.randn(2, 3, 16, 16)
    assert D(img, c1).shape == (2, 1)
    assert not torch.allclose(D(img, c1), D(img, c2))


def test_mbstd_group_rule():
    assert mbstd_group(8, 4) == 4
    assert mbstd_group(2, 4) == 2      # smaller batch: the whole batch is one group
    assert mbstd_group(6, 4) == 3      # not divisible: the largest divisor below the group size
    assert mbstd_group(12, 8) == 6
    assert mbstd_group(7, 4) == 1      # prime: groups of one
    with pytest.raises(ValueError):
        mbstd_group(0, 4)


def test_mbstd_layer_with_a_batch_not_divisible_by_the_group():
    torch.manual_seed(11)
    x = torch.randn(6, 4, 3, 3)
    y = MinibatchStdLayer(group_size=4)(x)                 # groups of 3: images {0, 2, 4} and {1, 3, 5}
    assert y.shape == (6, 5, 3, 3)
    assert torch.equal(y[:, :4], x)
    for members in ([0, 2, 4], [1, 3, 5]):
        std = x[members].var(dim=0, unbiased=False).add(1e-8).sqrt().mean()
        for n in members:
            torch.testing.assert_close(y[n, 4], std.expand(3, 3))
    # In a discriminator, every image still gets a logit.
    assert tiny_discriminator(16, mbstd_group_size=4)(torch.randn(6, 3, 16, 16), None).shape == (6, 1)
    assert tiny_discriminator(16, mbstd_group_size=4)(torch.randn(7, 3, 16, 16), None).shape == (7, 1)


def test_gradients_reach_every_parameter():
    torch.manual_seed(12)
    G, D = tiny_generator(16), tiny_discriminator(16)
    loss = torch.nn.functional.softplus(-D(G(torch.randn(4, 32), None), None)).mean()
    loss.backward()
    for name, p in [*G.named_parameters(), *D.named_parameters()]:
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_r1_double_backward_through_the_discriminator():
    torch.manual_seed(13)
    D = tiny_discriminator(16)
    reals = torch.randn(4, 3, 16, 16, requires_grad=True)
    (grad,) = torch.autograd.grad(D(reals, None).sum(), reals, create_graph=True)
    penalty = grad.square().sum(dim=(1, 2, 3)).mean()
    penalty.backward()
    grads = dict(D.named_parameters())
    for name, p in grads.items():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
        # With piecewise-linear activations dD/dx depends on the weights; biases only move the kinks.
        if name.endswith("weight"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_path_length_double_backward_through_synthesis():
    torch.manual_seed(14)
    G = tiny_generator(16)
    ws = G.mapping(torch.randn(2, 32), None).detach().requires_grad_(True)
    img = G.synthesis(ws)
    noise = torch.randn_like(img) / math.sqrt(16 * 16)
    (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
    grad.square().sum(dim=2).mean(dim=1).sqrt().mean().backward()
    grads = {n: p.grad for n, p in G.synthesis.named_parameters()}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    for name, g in grads.items():
        if "affine" in name or name.endswith(".weight"):
            assert g is not None and g.abs().sum() > 0, name


def test_shape_checks_name_the_mismatch():
    G = tiny_generator(16)
    with pytest.raises(ValueError, match=r"SynthesisNetwork ws: expected shape \[\*, 6, 32\]"):
        G.synthesis(torch.randn(2, 5, 32))
    with pytest.raises(ValueError, match="MappingNetwork z"):
        G(torch.randn(2, 31), None)
    with pytest.raises(ValueError, match="power of two"):
        tiny_generator(48)


def test_conv_clamp_bounds_activations_as_the_reference_does():
    """clamp(act(x + b) * gain, +-conv_clamp * forward's gain): the clamp is not scaled by lrelu's sqrt(2)."""
    torch.manual_seed(15)
    conv = nw.Conv2dLayer(4, 8, 3, activation="lrelu", conv_clamp=256)
    layer = nw.SynthesisLayer(4, 8, 16, 8, conv_clamp=256)
    with torch.no_grad():
        conv.weight.mul_(1e4)
        layer.weight.mul_(1e4)
        layer.bias.fill_(1e4)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert conv(x).abs().max().item() == 256
        assert conv(x, gain=math.sqrt(0.5)).abs().max().item() == pytest.approx(256 * math.sqrt(0.5))
        assert layer(x, torch.randn(2, 16), noise_mode="none", fused=True).abs().max().item() == 256
