"""The regularisers' first-order passes compute no weight gradients in the convolutions (the reference
needed a custom conv op for that; torch's autograd engine does it when asked for the input gradient only)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from corgigan.stylegan2 import configs
from corgigan.stylegan2.loss import path_lengths, r1_penalty
from tests.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


class ConvBackwardMasks(TorchDispatchMode):
    """Records the output_mask (grad_input, grad_weight, grad_bias) of every convolution backward."""

    def __init__(self) -> None:
        super().__init__()
        self.masks: list[tuple[bool, bool, bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default:
            self.masks.append(tuple(bool(m) for m in args[-1]))
        return func(*args, **(kwargs or {}))


def _nets():
    torch.manual_seed(0)
    G, D = configs.build_networks(configs.network_spec(tiny_config()))
    return G.train().requires_grad_(True), D.train().requires_grad_(True)


def test_r1_first_pass_skips_conv_weight_gradients():
    _, D = _nets()
    reals = torch.randn(4, 3, 8, 8, requires_grad=True)
    logits = D(reals, None)
    with ConvBackwardMasks() as rec:
        penalty = r1_penalty(logits, reals)
    assert rec.masks, "D's convolutions were not differentiated"
    assert not any(m[1] for m in rec.masks), rec.masks
    penalty.sum().backward()  # the second pass still reaches every conv weight
    assert all(p.grad is not None for p in D.parameters() if p.ndim == 4)


def test_path_length_first_pass_skips_conv_weight_gradients():
    G, _ = _nets()
    ws = G.mapping(torch.randn(2, G.z_dim), None)
    img = G.synthesis(ws)
    with ConvBackwardMasks() as rec:
        lengths = path_lengths(img, ws, torch.randn_like(img))
    assert rec.masks, "the synthesis convolutions were not differentiated"
    assert not any(m[1] for m in rec.masks), rec.masks
    lengths.sum().backward()
    assert all(p.grad is not None for p in G.synthesis.parameters() if p.ndim == 4)
