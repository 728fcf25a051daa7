"""Training constants against the published formulas (StyleGAN2-ADA; see /work/shared/NOTES.md).

Self-consistency tests cannot see a constant that is wrong on both sides, so every expectation here is
derived by hand from the paper's formulas, on networks small enough to differentiate on paper:

- the losses (StyleGAN2Loss) on a linear critic D(x) = <v, x> + b, whose input gradient is v for every
  image, and a linear generator img = mean_i(ws_i) @ M: R1 = gamma/2 * |v|^2, its gradient gamma * v, the
  lazy gain k multiplying every regulariser gradient, softplus logistic losses, the path-length penalty
  pl_weight * (|J^T y| - a)^2 with a = pl_mean + decay * (mean length - pl_mean);
- the loop (training_loop) after real steps with batch != batch per GPU: the phases due at each minibatch
  and their gains, Adam's lazy correction lr * c, beta ** c with c = k / (k + 1), the path-length mean after
  one step, and G_ema's decay beta = 0.5 ** (batch / ema_nimg) over the WHOLE batch, ema_nimg ramped;
- the mapping network's equalised learning rate: weight gain lr_mul / sqrt(fan_in), bias gain lr_mul,
  parameters stored divided by lr_mul (lr_mul 0.01).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from corgigan.stylegan2 import configs
from corgigan.stylegan2.loop import Hooks, make_phases, training_loop
from corgigan.stylegan2.loss import StyleGAN2Loss
from corgigan.stylegan2.snapshot import list_snapshots, load_snapshot
from tests.helpers import LOOP_KW, tiny_config, write_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------------------
# Networks whose derivatives are known in closed form


class LinearCritic(nn.Module):
    """D(x, c) = <v, x> + b + sum(c) per image: dD/dx = v whatever x is; c must be the labels' tensor."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.randn(shape, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
        self.seen: list[bool] = []          # per call: whether the input asked for its own gradient

    def forward(self, img: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        self.seen.append(img.requires_grad)
        return (img * self.v).sum(dim=[1, 2, 3])[:, None] + self.b + c.sum(dim=1, keepdim=True)   # [N, 1]


class Broadcast(nn.Module):
    """A mapping that copies z * s + sum(c) into every w (s = 1, a parameter: ws is differentiable; no
    noise), recording each call's (z, c, update_emas)."""

    def __init__(self, num_ws: int) -> None:
        super().__init__()
        self.num_ws = num_ws
        self.s = nn.Parameter(torch.ones([], dtype=torch.float64))
        self.calls: list[tuple[torch.Tensor, torch.Tensor, bool]] = []

    def forward(self, z: torch.Tensor, c: torch.Tensor, update_emas: bool = False) -> torch.Tensor:
        self.calls.append((z.detach(), c, update_emas))
        w = z * self.s + c.sum(dim=1, keepdim=True)
        return w[:, None, :].repeat(1, self.num_ws, 1)                      # [N, num_ws, z_dim]


class LinearGenerator(nn.Module):
    """img = mean_i(ws_i) @ M, reshaped to `shape`: with identical ws, img = z @ M."""

    def __init__(self, z_dim: int, shape: tuple[int, int, int], num_ws: int = 3) -> None:
        super().__init__()
        self.z_dim, self.num_ws, self.shape = z_dim, num_ws, shape
        self.mapping = Broadcast(num_ws)
        self.M = nn.Parameter(torch.randn(z_dim, math.prod(shape), dtype=torch.float64))

    def synthesis(self, ws: torch.Tensor) -> torch.Tensor:
        return (ws.mean(dim=1) @ self.M).view(-1, *self.shape)


SHAPE = (2, 2, 2)


def _setup(seed: int = 0, shape: tuple[int, int, int] = SHAPE, **loss_kw: float):
    torch.manual_seed(seed)
    G, D = LinearGenerator(4, shape), LinearCritic(shape)
    loss = StyleGAN2Loss(G, D, style_mixing_prob=0.0, **loss_kw)
    reals = torch.randn(4, *shape, dtype=torch.float64)
    z = torch.randn(4, 4, dtype=torch.float64)
    c = torch.zeros(4, 0, dtype=torch.float64)
    return G, D, loss, reals, z, c


def _run(loss: StyleGAN2Loss, phase: str, reals, z, c, gain: float) -> dict[str, torch.Tensor]:
    for p in (*loss.G.parameters(), *loss.D.parameters()):
        p.grad = None
    return loss.accumulate_gradients(phase, reals, c, z, c, gain=gain)


def _grad(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p) if p.grad is None else p.grad


# ---------------------------------------------------------------------------------------------------------
# The loss terms and their gains


@pytest.mark.parametrize("gain", [1.0, 16.0])
def test_r1_is_half_gamma_times_the_squared_input_gradient_scaled_by_the_gain(gain):
    G, D, loss, reals, z, c = _setup(r1_gamma=10.0)
    stats = _run(loss, "Dreg", reals, z, c, gain)
    sq = D.v.detach().square().sum()                                  # |grad_x D|^2 = |v|^2, every image
    assert torch.allclose(stats["Loss/r1"], sq.expand(4))
    assert torch.allclose(stats["Loss/D/reg"], (10.0 / 2 * sq).expand(4))
    # d/dv [gain * gamma/2 * |v|^2] = gain * gamma * v; b does not enter the gradient of D.
    assert torch.allclose(D.v.grad, gain * 10.0 * D.v.detach())
    assert torch.equal(_grad(D.b), torch.zeros([], dtype=torch.float64))
    assert all(p.grad is None for p in G.parameters())
    assert set(stats) == {"Loss/r1", "Loss/D/reg"}


def test_d_main_is_the_logistic_loss_on_fakes_and_reals():
    G, D, loss, reals, z, c = _setup()
    stats = _run(loss, "Dmain", reals, z, c, 3.0)
    fakes = (z @ G.M.detach()).view(4, *SHAPE)
    v, b = D.v.detach(), D.b.detach()
    s_fake = (fakes * v).sum(dim=[1, 2, 3]) + b
    s_real = (reals * v).sum(dim=[1, 2, 3]) + b
    assert torch.allclose(stats["Loss/scores/fake"], s_fake)
    assert torch.allclose(stats["Loss/scores/real"], s_real)
    assert torch.equal(stats["Loss/signs/real"], s_real.sign())
    assert torch.allclose(stats["Loss/D/loss"], torch.log1p(s_fake.exp()) + torch.log1p((-s_real).exp()))
    # d/ds softplus(s) = sigmoid(s): mean over the chunk, times the gain; G gets nothing.
    sig_f, sig_r = torch.sigmoid(s_fake), torch.sigmoid(-s_real)
    per_image = sig_f[:, None, None, None] * fakes - sig_r[:, None, None, None] * reals
    want_v = 3.0 * per_image.mean(0)
    assert torch.allclose(D.v.grad, want_v)
    assert torch.allclose(D.b.grad, 3.0 * (sig_f.mean() - sig_r.mean()))
    assert all(p.grad is None for p in G.parameters())


def test_d_both_adds_the_r1_term_with_gain_one():
    _, D, loss, reals, z, c = _setup(r1_gamma=0.5)
    main = _run(loss, "Dmain", reals, z, c, 1.0)
    main_grad = D.v.grad.clone()
    both = _run(loss, "Dboth", reals, z, c, 1.0)
    assert torch.allclose(both["Loss/D/loss"], main["Loss/D/loss"])
    assert torch.allclose(both["Loss/D/reg"], (0.25 * D.v.detach().square().sum()).expand(4))
    assert torch.allclose(D.v.grad, main_grad + 0.5 * D.v.detach())


def test_g_main_is_the_non_saturating_loss():
    G, D, loss, reals, z, c = _setup()
    stats = _run(loss, "Gmain", reals, z, c, 2.0)
    v = D.v.detach().flatten()
    s = z @ G.M.detach() @ v + D.b.detach()                          # D(G(z)) = z^T M v + b
    assert torch.allclose(stats["Loss/scores/fake"], s)
    assert torch.allclose(stats["Loss/G/loss"], torch.log1p((-s).exp()))
    # d/dM mean softplus(-s) = mean_n -sigmoid(-s_n) z_n v^T, times the gain.
    want = 2.0 * (-torch.sigmoid(-s)[:, None, None] * z[:, :, None] * v[None, None, :]).mean(0)
    assert torch.allclose(G.M.grad, want)


@pytest.mark.parametrize(("gain", "pl_mean"), [(4.0, 0.0), (1.0, 0.7)])
def test_path_length_penalty_weight_target_and_gain(gain, pl_mean):
    # One-pixel images: img = z @ M with M [z_dim, 1], so |J_w^T y| = |y| |M| / num_ws and
    # d|J^T y|/dM = length * M / |M|^2, whatever noise y the loss draws.
    G, _, loss, reals, z, c = _setup(shape=(1, 1, 1))
    loss.pl_mean = pl_mean
    stats = _run(loss, "Greg", reals, z, c, gain)
    lengths = stats["Loss/pl_length"]
    assert lengths.shape == (2,)                                      # batch 4 shrunk by 2
    target = pl_mean + 0.01 * (lengths.mean() - pl_mean)              # decay 0.01 toward this batch
    assert torch.allclose(stats["Loss/pl"], (lengths - target).square())
    assert torch.allclose(stats["Loss/G/reg"], 2.0 * (lengths - target).square())   # weight 2
    M = G.M.detach()
    want = gain * 2.0 * (2 * (lengths - target) * lengths).mean() * M / M.square().sum()
    assert torch.allclose(G.M.grad, want)
    assert loss.pl_mean == pl_mean                                    # the loop moves it, once per step


# ---------------------------------------------------------------------------------------------------------
# The loop: phases, gains, Adam's correction, path-length mean and G_ema after real steps


def test_lazy_phases_correct_adam_and_the_plain_ones_do_not():
    cfg = tiny_config(D_reg_interval=16, G_lr=0.002, D_lr=0.003, betas=(0.5, 0.99))
    G, D = configs.build_networks(configs.network_spec(cfg))
    got = {p.name: (p.interval, p.opt.param_groups[0]["lr"], p.opt.param_groups[0]["betas"])
           for p in make_phases(G, D, cfg)}
    assert got == {
        "Gmain": (1, pytest.approx(0.002 * 4 / 5), pytest.approx((0.5 ** 0.8, 0.99 ** 0.8))),
        "Greg": (4, pytest.approx(0.002 * 4 / 5), pytest.approx((0.5 ** 0.8, 0.99 ** 0.8))),
        "Dmain": (1, pytest.approx(0.003 * 16 / 17), pytest.approx((0.5 ** (16 / 17), 0.99 ** (16 / 17)))),
        "Dreg": (16, pytest.approx(0.003 * 16 / 17), pytest.approx((0.5 ** (16 / 17), 0.99 ** (16 / 17)))),
    }
    # Without a regulariser (or without lazy regularisation) one phase per network, uncorrected.
    plain = tiny_config(pl_weight=0.0, G_reg_interval=None, r1_gamma=0.0, G_lr=0.002, D_lr=0.003,
                        betas=(0.5, 0.99))
    got = {p.name: (p.interval, p.opt.param_groups[0]["lr"], p.opt.param_groups[0]["betas"])
           for p in make_phases(G, D, plain)}
    assert got == {"Gboth": (1, 0.002, (0.5, 0.99)), "Dboth": (1, 0.003, (0.5, 0.99))}


def _g_param_names(cfg: configs.TrainingConfig) -> list[str]:
    G, _ = configs.build_networks(configs.network_spec(cfg))
    return [name for name, _ in G.named_parameters()]


def _flat(state: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([state[n].double().flatten() for n in names])


@pytest.mark.parametrize(("ema_rampup", "betas"), [
    # ema_kimg 0.01: ema_nimg 10. Ramped, ema_nimg = min(10, nimg * rampup): 0 at the first step (G_ema
    # becomes G), 4 images * 1.0 at the second. The exponent is the WHOLE batch (4), not batch_gpu (2).
    (1.0, (0.0, 0.5 ** (4 / 4))),
    (None, (0.5 ** (4 / 10), 0.5 ** (4 / 10))),
])
def test_a_real_loop_step_with_accumulation(tmp_path, monkeypatch, ema_rampup, betas):
    cfg = tiny_config(batch=4, batch_gpu=2, D_reg_interval=16, ema_kimg=0.01, ema_rampup=ema_rampup)
    data = write_dataset(tmp_path / "data.zip", n=12, res=8)
    calls: list[tuple[int, str, float, int]] = []
    accumulate = StyleGAN2Loss.accumulate_gradients

    def recording(self, phase, real_img, real_c, gen_z, gen_c, gain, update_emas=False):
        calls.append((len(ticks), phase, gain, len(gen_z)))
        return accumulate(self, phase, real_img, real_c, gen_z, gen_c, gain, update_emas)

    monkeypatch.setattr(StyleGAN2Loss, "accumulate_gradients", recording)
    ticks: list[dict[str, float]] = []
    training_loop(data, tmp_path / "run", cfg, kimg=0.008, snapshot_kimg=0.004, tick_kimg=0.004,
                  hooks=Hooks(on_tick=lambda tick, stats: ticks.append(stats)), **LOOP_KW)

    # Minibatch 0 runs every phase, the regularisers with gain = their interval; minibatch 1 only the
    # main phases. Each phase runs over batch / batch_gpu = 2 chunks of 2.
    step0 = [("Gmain", 1), ("Greg", 4), ("Dmain", 1), ("Dreg", 16)]
    assert calls == ([(0, name, gain, 2) for name, gain in step0 for _ in range(2)]
                     + [(1, name, 1, 2) for name in ("Gmain", "Dmain") for _ in range(2)])

    (_, first), (_, second) = list_snapshots(tmp_path / "run")
    s1, s2 = load_snapshot(first), load_snapshot(second)
    # Adam's lazy correction as stored in the snapshot: c = 4/5 for G, 16/17 for D.
    for key, lr, c in (("G_opt", cfg.G_lr, 4 / 5), ("D_opt", cfg.D_lr, 16 / 17)):
        group = s1[key]["param_groups"][0]
        assert group["lr"] == pytest.approx(lr * c)
        assert tuple(group["betas"]) == pytest.approx((0.0, 0.99 ** c))
    # Path-length mean after the one Greg phase: 0 + 0.01 * (mean length of that step), then unchanged.
    assert s1["pl_mean"] == pytest.approx(0.01 * ticks[0]["Loss/pl_length"], rel=1e-5)
    assert s2["pl_mean"] == s1["pl_mean"]

    # G_ema after each step = beta * G_ema before + (1 - beta) * G after. Snapshot 1 holds G_1 and G_ema_1,
    # snapshot 2 G_2 and G_ema_2, so beta_2 = (G_ema_2 - G_2) / (G_ema_1 - G_2) (least squares over every
    # parameter); beta_1 = 0 makes G_ema_1 = G_1 exactly.
    names = _g_param_names(cfg)
    g1, e1, g2, e2 = (_flat(s[k], names) for s in (s1, s2) for k in ("G", "G_ema"))
    if betas[0] == 0.0:
        assert torch.equal(e1, g1)
    num, den = e2 - g2, e1 - g2
    assert float(den.abs().max()) > 1e-4                              # the step moved G
    assert float((num * den).sum() / den.square().sum()) == pytest.approx(betas[1], abs=2e-4)
    assert torch.equal(s2["G_ema"]["mapping.w_avg"], s2["G"]["mapping.w_avg"])   # buffers are copied


# ---------------------------------------------------------------------------------------------------------
# The mapping network's equalised learning rate


def _lrelu(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, x, 0.2 * x) * math.sqrt(2)


def test_mapping_layers_use_the_learning_rate_multiplier():
    torch.manual_seed(0)
    G, _ = configs.build_networks(configs.network_spec(tiny_config()))
    layers = G.mapping.layers
    assert len(layers) == 2
    # Stored parameters are N(0, 1) / lr_mul (std 100) and biases 0: effective weights start N(0, 1/fan_in).
    stored = torch.cat([layer.weight.detach().flatten() for layer in layers])
    assert float(stored.std()) == pytest.approx(100, rel=0.05)
    assert all(float(layer.bias.detach().abs().max()) == 0 for layer in layers)

    # Forward with known stored values, by hand: x <- lrelu(x @ (W * 0.01 / sqrt(16)).T + b * 0.01) * sqrt(2)
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=(16, 16)) * 100 for _ in layers]
    biases = [rng.normal(size=16) * 100 for _ in layers]
    with torch.no_grad():
        for layer, w, b in zip(layers, weights, biases):
            layer.weight.copy_(torch.from_numpy(w))
            layer.bias.copy_(torch.from_numpy(b))
    z = rng.normal(size=(3, 16))
    x = z / np.sqrt((z**2).mean(axis=1, keepdims=True) + 1e-8)
    for w, b in zip(weights, biases):
        x = _lrelu(x @ (w * 0.01 / math.sqrt(16)).T + b * 0.01)
    with torch.no_grad():
        ws = G.mapping(torch.from_numpy(z).float(), None).double().numpy()
    assert ws.shape == (3, G.num_ws, 16)
    np.testing.assert_allclose(ws, np.repeat(x[:, None, :], G.num_ws, axis=1), rtol=1e-4, atol=1e-5)


def test_synthesis_affine_layers_start_at_bias_one_and_unit_gain():
    # lr_mul 1 elsewhere: a style affine's effective bias starts at 1, its weight gain is 1/sqrt(w_dim).
    torch.manual_seed(0)
    G, _ = configs.build_networks(configs.network_spec(tiny_config()))
    affine = G.synthesis.blocks[0].conv1.affine
    w = torch.randn(2, 16)
    want = w @ (affine.weight.detach() / 4).T + 1
    assert torch.allclose(affine(w), want, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# The loss's plumbing: phases, stats, labels, update_emas, augmentation, style mixing, the path-length noise


def test_the_published_defaults():
    # StyleGAN2-ADA's loss (config f): gamma 10, mixing 0.9, path length weight 2 on half the batch, decay
    # 0.01, its running mean starting at 0; no augmentation unless given one.
    G, D = LinearGenerator(4, SHAPE), LinearCritic(SHAPE)
    loss = StyleGAN2Loss(G, D)
    got = (loss.augment_pipe, loss.r1_gamma, loss.style_mixing_prob, loss.pl_weight, loss.pl_batch_shrink,
           loss.pl_decay, loss.pl_mean)
    assert got == (None, 10.0, 0.9, 2.0, 2, 0.01, 0.0)


STAT_KEYS = {
    "Gmain": {"Loss/scores/fake", "Loss/G/loss"},
    "Greg": {"Loss/pl", "Loss/G/reg", "Loss/pl_length"},
    "Dmain": {"Loss/scores/fake", "Loss/scores/real", "Loss/signs/real", "Loss/D/loss"},
    "Dreg": {"Loss/r1", "Loss/D/reg"},
}
STAT_KEYS["Gboth"] = STAT_KEYS["Gmain"] | STAT_KEYS["Greg"]
STAT_KEYS["Dboth"] = STAT_KEYS["Dmain"] | STAT_KEYS["Dreg"]


@pytest.mark.parametrize("phase", sorted(STAT_KEYS))
def test_each_phase_reports_its_stats_per_sample(phase):
    # (G's phases also reach D's parameters: the loop lets only the phase's network require gradients.)
    G, D, loss, reals, z, c = _setup(r1_gamma=0.5, pl_weight=0.5)
    stats = _run(loss, phase, reals, z, c, 1.0)
    assert set(stats) == STAT_KEYS[phase]
    n = {"Loss/pl": 2, "Loss/G/reg": 2, "Loss/pl_length": 2}                # half the batch
    assert {k: tuple(v.shape) for k, v in stats.items()} == {k: (n.get(k, 4),) for k in stats}
    assert (G.M.grad is not None) == (phase[0] == "G")
    assert D.v.grad is not None or phase == "Greg"


def test_a_regulariser_of_weight_zero_does_nothing_and_an_unknown_phase_is_refused():
    _, _, loss, reals, z, c = _setup(r1_gamma=0.0, pl_weight=0.0)
    assert _run(loss, "Greg", reals, z, c, 4.0) == {}
    assert _run(loss, "Dreg", reals, z, c, 16.0) == {}
    assert set(_run(loss, "Gboth", reals, z, c, 1.0)) == STAT_KEYS["Gmain"]
    assert set(_run(loss, "Dboth", reals, z, c, 1.0)) == STAT_KEYS["Dmain"]
    with pytest.raises(ValueError, match=r"^unknown phase 'Dboth ' \(one of \('Gmain', 'Greg', 'Gboth', "
                                         r"'Dmain', 'Dreg', 'Dboth'\)\)$"):
        _run(loss, "Dboth ", reals, z, c, 1.0)


def test_labels_go_with_their_images():
    # Conditional: fakes are generated and judged with gen_c, reals judged with real_c.
    G, D, loss, reals, z, _ = _setup()
    real_c = torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 0]], dtype=torch.float64)
    gen_c = torch.tensor([[0.5, 0], [0, 0], [2, 0], [0, 3]], dtype=torch.float64)
    stats = loss.accumulate_gradients("Dmain", reals, real_c, z, gen_c, gain=1.0)
    v, b = D.v.detach(), D.b.detach()
    fakes = ((z + gen_c.sum(1, keepdim=True)) @ G.M.detach()).view(4, *SHAPE)
    assert torch.allclose(stats["Loss/scores/fake"], (fakes * v).sum(dim=[1, 2, 3]) + b + gen_c.sum(1))
    assert torch.allclose(stats["Loss/scores/real"], (reals * v).sum(dim=[1, 2, 3]) + b + real_c.sum(1))
    assert all(torch.equal(call_c, gen_c) for _, call_c, _ in G.mapping.calls)


@pytest.mark.parametrize("mixing", [0.0, 1.0])
def test_update_emas_reaches_only_the_fakes_d_learns_from(mixing):
    # The w average moves with the latents of D's fakes (main phase, when the loop asks) and never with the
    # second latent of style mixing, G's own phases or the regulariser's samples.
    G, _, loss, reals, z, c = _setup(r1_gamma=1.0)
    loss.style_mixing_prob = mixing
    want = {"Gmain": [False], "Greg": [False], "Dmain": [True], "Dreg": []}
    for phase, flags in want.items():
        G.mapping.calls.clear()
        loss.accumulate_gradients(phase, reals, c, z, c, gain=1.0, update_emas=True)
        second = [False] * len(flags) if mixing else []               # the mixing latent's mapping call
        assert [u for _, _, u in G.mapping.calls] == flags + second, phase
    G.mapping.calls.clear()
    loss.accumulate_gradients("Dmain", reals, c, z, c, gain=1.0)     # not asked: no update
    assert not any(u for _, _, u in G.mapping.calls)


def test_only_the_r1_pass_differentiates_the_reals():
    # Dmain scores fakes (made without a graph) and reals without asking for dD/dx; R1 asks for it.
    _, D, loss, reals, z, c = _setup(r1_gamma=1.0)
    _run(loss, "Dmain", reals, z, c, 1.0)
    assert D.seen == [False, False]
    D.seen.clear()
    _run(loss, "Dreg", reals, z, c, 1.0)
    assert D.seen == [True]


class Doubling(nn.Module):
    """A deterministic stand-in for the augment pipe: x -> 2x, counting the images it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return 2 * x


def test_the_augment_pipe_sits_in_front_of_every_d_call_and_r1_differentiates_through_it():
    G, D, loss, reals, z, c = _setup(r1_gamma=10.0)
    loss.augment_pipe = pipe = Doubling()
    v, b, M = D.v.detach(), D.b.detach(), G.M.detach()
    fakes = (z @ M).view(4, *SHAPE)

    stats = _run(loss, "Gmain", reals, z, c, 1.0)
    s = (2 * fakes * v).sum(dim=[1, 2, 3]) + b
    assert torch.allclose(stats["Loss/scores/fake"], s)
    want = (-torch.sigmoid(-s)[:, None, None] * z[:, :, None] * 2 * v.flatten()[None, None, :]).mean(0)
    assert torch.allclose(G.M.grad, want)
    assert pipe.images == 4

    stats = _run(loss, "Dmain", reals, z, c, 1.0)
    assert torch.allclose(stats["Loss/scores/fake"], s)
    assert torch.allclose(stats["Loss/scores/real"], (2 * reals * v).sum(dim=[1, 2, 3]) + b)
    assert pipe.images == 12

    # R1 is taken w.r.t. the images before augmentation: dD(2x)/dx = 2v, |2v|^2 = 4|v|^2.
    stats = _run(loss, "Dreg", reals, z, c, 3.0)
    sq = v.square().sum()
    assert torch.allclose(stats["Loss/r1"], (4 * sq).expand(4))
    assert torch.allclose(stats["Loss/D/reg"], (5 * 4 * sq).expand(4))
    assert torch.allclose(D.v.grad, 3.0 * 10.0 * 4 * v)
    assert pipe.images == 16

    _run(loss, "Greg", reals, z, c, 1.0)                             # no D, no augmentation
    assert pipe.images == 16


@pytest.mark.parametrize("prob", [0.75, 1.0])
def test_style_mixing_swaps_a_uniform_tail_of_the_ws_with_probability_p(prob):
    # With probability p a sample takes a second latent's w from a crossover layer drawn uniformly from
    # 1..num_ws-1 on; otherwise every layer gets its own w.
    torch.manual_seed(0)
    n, num_ws = 4000, 4
    G = LinearGenerator(4, SHAPE, num_ws=num_ws)
    loss = StyleGAN2Loss(G, LinearCritic(SHAPE), style_mixing_prob=prob)
    z, c = torch.randn(n, 4, dtype=torch.float64), torch.zeros(n, 0, dtype=torch.float64)
    img, ws = loss.generate(z, c)
    (z1, _, _), (z2, _, _) = G.mapping.calls
    assert torch.equal(z1, z)
    own, other = (ws == z[:, None, :]).all(dim=2), (ws == z2[:, None, :]).all(dim=2)   # [n, num_ws]
    assert bool((own ^ other).all())                                  # each layer one w or the other
    cut = own.sum(dim=1)                                              # the crossover layer
    assert torch.equal(own, torch.arange(num_ws)[None, :] < cut[:, None])   # own w on the first layers
    mixed = cut < num_ws
    assert float(mixed.double().mean()) == pytest.approx(prob, abs=0.02)
    share = torch.bincount(cut[mixed], minlength=num_ws).double() / int(mixed.sum())
    assert float(share[0]) == 0
    assert share[1:].tolist() == pytest.approx([1 / 3] * 3, abs=0.03)
    assert torch.allclose(img, (ws.mean(dim=1) @ G.M).view(n, *SHAPE))


def test_without_style_mixing_one_latent_and_no_random_draws():
    G, _, loss, _, z, c = _setup()
    state = torch.get_rng_state()
    _, ws = loss.generate(z, c)
    assert len(G.mapping.calls) == 1
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(ws, z[:, None, :].expand(4, 3, 4))


def test_style_mixing_draws_on_the_latents_device():
    # On the meta device every tensor must be made there: one made on the CPU cannot meet them.
    G = LinearGenerator(4, SHAPE, num_ws=4).to("meta")
    loss = StyleGAN2Loss(G, LinearCritic(SHAPE), style_mixing_prob=0.5)
    img, ws = loss.generate(torch.zeros(3, 4, device="meta"), torch.zeros(3, 0, device="meta"))
    assert (img.device.type, ws.device.type, tuple(ws.shape)) == ("meta", "meta", (3, 4, 4))


class WeightedGenerator(LinearGenerator):
    """img = (sum_i a_i ws_i) @ M: d(img . y)/d ws_i = a_i M y, so |J^T y| = sqrt(mean_i a_i^2) |M y|."""

    A = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)

    def synthesis(self, ws: torch.Tensor) -> torch.Tensor:
        return (torch.einsum("i,niz->nz", self.A, ws) @ self.M).view(-1, *self.shape)


@pytest.mark.parametrize(("batch", "shrink", "n"), [(4, 2, 2), (4, 4, 1), (3, 2, 1), (1, 2, 1)])
def test_path_length_noise_is_scaled_by_the_image_area(batch, shrink, n):
    # Non-square multi-pixel images: y = N(0, 1) / sqrt(H * W), drawn as the first random numbers of the
    # phase (no style mixing), on batch // shrink samples (at least one).
    shape = (2, 2, 3)
    torch.manual_seed(1)
    G, D = WeightedGenerator(4, shape), LinearCritic(shape)
    loss = StyleGAN2Loss(G, D, style_mixing_prob=0.0, pl_weight=0.5, pl_batch_shrink=shrink, pl_decay=0.1)
    loss.pl_mean = 0.4
    z, c = torch.randn(batch, 4, dtype=torch.float64), torch.zeros(batch, 0, dtype=torch.float64)
    torch.manual_seed(7)
    stats = loss.accumulate_gradients("Greg", z, c, z, c, gain=3.0)
    torch.manual_seed(7)
    y = torch.randn(n, math.prod(shape), dtype=torch.float64) / math.sqrt(2 * 3)
    M = G.M.detach()
    My = y @ M.T                                                      # [n, z_dim]
    k = math.sqrt((1 + 4 + 9) / 3)
    lengths = k * My.norm(dim=1)
    assert torch.allclose(stats["Loss/pl_length"], lengths)
    target = 0.4 + 0.1 * (lengths.mean() - 0.4)
    assert torch.allclose(stats["Loss/G/reg"], 0.5 * (lengths - target).square())
    # dL/dM = k (M y) y^T / |M y|; the penalty's gradient: gain * weight * mean_n 2 (L_n - t) dL_n/dM.
    dL = k * My[:, :, None] * y[:, None, :] / My.norm(dim=1)[:, None, None]
    want = 3.0 * 0.5 * (2 * (lengths - target)[:, None, None] * dL).mean(0)
    assert torch.allclose(G.M.grad, want)
    assert torch.equal(_grad(G.mapping.s), torch.zeros([], dtype=torch.float64))   # lengths ignore ws


def test_the_path_length_mean_moves_by_decay_toward_the_step_mean():
    _, _, loss, *_ = _setup(pl_decay=0.25)
    loss.pl_mean = 1.0
    loss.update_pl_mean(3.0)
    assert loss.pl_mean == 1.5
    loss.update_pl_mean(torch.tensor(0.5, dtype=torch.float64))
    assert float(loss.pl_mean) == 1.25
