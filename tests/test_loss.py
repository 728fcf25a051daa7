"""The regularisers' first-order passes compute no weight gradients in the convolutions (the reference
needed a custom conv op for that; torch's autograd engine does it when asked for the input gradient only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from corgigan.stylegan2 import configs
from corgigan.stylegan2.loss import path_lengths, r1_penalty, sample_latents, seeded
from tests.helpers import tiny_config

# A deprecated autograd argument (only_inputs=False) warns on every pass, and a future torch refuses it.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("error::FutureWarning")]


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


# ---------------------------------------------------------------------------------------------------------
# The random streams of a run: seeds per (step, phase, chunk) and the latents drawn from them


def test_seeded_streams_are_fixed_63_bit_seeds():
    # The values a run's streams start from: changing them changes every run made from a seed.
    assert [seeded(3), seeded(3, 1, 0, 2), seeded(3, 2, 0, 1), seeded(0)] == [
        6233904063939786893, 2377983526831475259, 1741318030659061586, 7896617691693857887]
    # They are numpy's SeedSequence of (seed, *keys): its first 64-bit word, top 63 bits (a positive int64).
    for key in ([3], [3, 1, 0, 2], [9, 4]):
        word = int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0])
        assert seeded(*key) == word // 2 < 2**63


def test_latents_are_normal_draws_and_labels_come_from_dataset_indices():
    torch.manual_seed(5)
    z, c = sample_latents(6, 3, None, 10, torch.device("cpu"))
    torch.manual_seed(5)
    assert torch.equal(z, torch.randn(6, 3))
    assert c.shape == (6, 0) and c.dtype == torch.float32

    asked: list[torch.Tensor] = []

    def labels(idx: torch.Tensor) -> torch.Tensor:
        asked.append(idx)
        return torch.nn.functional.one_hot(idx, 3).float()

    torch.manual_seed(5)
    z, c = sample_latents(300, 2, labels, 3, torch.device("cpu"))
    torch.manual_seed(5)
    assert torch.equal(z, torch.randn(300, 2))                       # z first, then the indices
    (idx,) = asked
    assert torch.equal(idx, torch.randint(3, (300,)))
    assert set(idx.tolist()) == {0, 1, 2}                            # every index of the dataset, no other
    assert torch.equal(c, torch.nn.functional.one_hot(idx, 3).float())


def test_latents_and_labels_are_made_on_the_device():
    for labels in (None, lambda idx: idx[:, None].float()):
        z, c = sample_latents(2, 3, labels, 4, torch.device("meta"))
        assert (z.device.type, c.device.type, tuple(z.shape), c.shape[0]) == ("meta", "meta", (2, 3), 2)
