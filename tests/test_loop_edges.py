"""Edges of the training loop's core: per-tick stats, Adam's lazy correction, the phases and their
thresholds, Freeze-D's layer count, G_ema's decay, the resume comparison of configs, and what one step
hands on (real images, latents, the w_avg flag, ADA's signs, the path-length mean, the NaN check).

Expected values come from the published StyleGAN2-ADA formulas and hand computation: lazy regularisation
c = k / (k + 1) on lr and on each beta as beta ** c; G_ema's beta = 0.5 ** (batch / ema_nimg) with
ema_nimg = min(ema_kimg * 1000, nimg * rampup); ADA moves p by sign(rt - target) * (4 * batch) / 500k every
4 minibatches, rt = E[sign(D(real))] over every real image since the last move.
"""

from __future__ import annotations

import itertools
import logging
import math

import pytest
import torch

from corgigan.stylegan2 import configs
from corgigan.stylegan2.data import ZipDataset
from corgigan.stylegan2.loop import (
    Hooks,
    TickStats,
    TrainingError,
    decide_start,
    ema_beta,
    frozen_d_parameters,
    make_optimizer,
    make_phases,
    resume_differences,
    training_loop,
)
from corgigan.stylegan2.loss import StyleGAN2Loss, pl_mean_update, seeded
from corgigan.stylegan2.snapshot import list_snapshots, load_snapshot, save_snapshot, snapshot_name
from tests.helpers import LOOP_KW, fake_state, tiny_config, write_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------------------
# Per-tick stats


def test_tick_stats_are_means_over_every_sample_then_start_over():
    stats = TickStats(torch.device("cpu"))
    stats.add({"Loss/G/loss": torch.tensor([1.0, 2.0]), "Loss/r1": torch.tensor([5.0])})
    stats.add({"Loss/G/loss": torch.tensor([6.0]), "Loss/D/loss": torch.tensor([1.0, 0.0, 0.0])})
    stats.add({"Loss/pl": torch.tensor([])})             # a stat with no samples is left out
    got = stats.reduce()
    # (1 + 2 + 6) / 3 = 3 and 1 / 3 in float64 (not float32's 0.3333333432674408); one sample is a mean too.
    assert got == {"Loss/G/loss": 3.0, "Loss/r1": 5.0, "Loss/D/loss": 1 / 3}
    assert stats.reduce() == {}                          # the tick's sums went with it
    stats.add({"Loss/r1": torch.tensor([2.0, 4.0])})
    assert stats.reduce() == {"Loss/r1": 3.0}


# ---------------------------------------------------------------------------------------------------------
# Adam with the lazy-regularisation correction, and the phases


def _adam(reg_interval):
    opt = make_optimizer(iter([torch.nn.Parameter(torch.zeros(1))]), 0.002, (0.5, 0.99), reg_interval)
    g = opt.param_groups[0]
    return g["lr"], g["betas"], g["eps"]


def test_lazy_correction_at_interval_one_and_adams_epsilon():
    # k = 1: regularised every other step, c = 1/2: lr / 2 and sqrt of each beta; eps is the reference's 1e-8.
    lr, betas, eps = _adam(1)
    assert lr == pytest.approx(0.001) and betas == pytest.approx((0.5 ** 0.5, 0.99 ** 0.5)) and eps == 1e-8
    assert _adam(None) == (0.002, (0.5, 0.99), 1e-8)


@pytest.mark.parametrize(("weight", "lazy"), [(0.0, False), (0.5, True), (1.0, True), (2.0, True)])
def test_a_regulariser_is_lazy_exactly_when_its_weight_is_positive(weight, lazy):
    cfg = tiny_config(pl_weight=weight, r1_gamma=weight, G_reg_interval=4, D_reg_interval=16)
    G, D = configs.build_networks(configs.network_spec(cfg))
    phases = make_phases(G, D, cfg)
    if lazy:
        want = [("Gmain", 1), ("Greg", 4), ("Dmain", 1), ("Dreg", 16)]
        assert [(p.name, p.interval) for p in phases] == want
        assert [p.module for p in phases] == [G, G, D, D]
        assert phases[0].opt is phases[1].opt and phases[2].opt is phases[3].opt
    else:
        assert [(p.name, p.interval) for p in phases] == [("Gboth", 1), ("Dboth", 1)]
        assert [p.module for p in phases] == [G, D]
        assert [p.opt.param_groups[0]["lr"] for p in phases] == [cfg.G_lr, cfg.D_lr]
    assert all(p.module is m for p, m in zip(phases, [G, G, D, D] if lazy else [G, D]))


# ---------------------------------------------------------------------------------------------------------
# Freeze-D


def test_freeze_d_takes_layers_from_the_highest_resolution_and_refuses_more_than_there_are():
    _, D = configs.build_networks(configs.network_spec(tiny_config()))
    # 8 px, resnet: one block 8 -> 4 px (fromrgb, conv0, conv1, skip); the 4 px epilogue is never frozen.
    block, = D.blocks
    order = [block.fromrgb, block.conv0, block.conv1, block.skip]
    assert all(layer is not None for layer in order)
    for n in range(len(order) + 1):
        want = [id(p) for layer in order[:n] for p in layer.parameters()]
        assert [id(p) for p in frozen_d_parameters(D, n)] == want, n
    assert frozen_d_parameters(D, 0) == []
    for n in (-1, 5):
        with pytest.raises(TrainingError) as e:
            frozen_d_parameters(D, n)
        assert str(e.value) == (f"freeze_d {n}: D has 4 layers to freeze (its blocks' fromrgb, conv0, conv1 "
                                "and skip, from the highest resolution down)")


# ---------------------------------------------------------------------------------------------------------
# G_ema's decay


def test_ema_beta_half_life_and_rampup_on_both_sides_of_the_cap():
    # Half-life 1 kimg: one batch of 1000 images halves the weight of the old average.
    assert ema_beta(1000, 10**6, 1.0, None) == 0.5
    assert ema_beta(500, 0, 1.0, None) == pytest.approx(0.5 ** 0.5, rel=1e-12)
    # Rampup 0.05 at nimg 10k caps ema_nimg at 500 (< 10 kimg's 10000): beta = 0.5 ** (4 / 500).
    assert ema_beta(4, 10_000, 10.0, 0.05) == pytest.approx(0.5 ** (4 / 500), rel=1e-12)
    # Just under / over the cap: nimg * rampup = 9999.95 < 10000, then 10000.5 > 10000 (no cap).
    assert ema_beta(4, 199_999, 10.0, 0.05) == pytest.approx(0.5 ** (4 / 9999.95), rel=1e-12)
    assert ema_beta(4, 200_010, 10.0, 0.05) == pytest.approx(0.5 ** (4 / 10000), rel=1e-12)
    assert ema_beta(4, 0, 10.0, 0.05) == 0.0                  # no images seen: G_ema becomes G


# ---------------------------------------------------------------------------------------------------------
# The resume comparison of configs (decide_start's)


def _cfg(group: int | None, batch_gpu: int, mbstd: int | None = None, **rest) -> dict:
    """A config dict as make_config records it: the group twice (mbstd_group and D's mbstd_group_size)."""
    d = {"name": "paper256", "batch": 32, "batch_gpu": batch_gpu, "r1_gamma": 1.0, **rest,
         "D_kwargs": {"channel_base": 16384, **({} if group is None else {"mbstd_group_size": group})}}
    if mbstd is not None or group is not None:
        d["mbstd_group"] = group if mbstd is None else mbstd
    return d


def test_a_group_clamped_to_batch_gpu_is_no_difference_in_either_order():
    eight_unclamped, four_clamped = _cfg(8, 16), _cfg(4, 4)       # configured 8: at batch_gpu 16 and 4
    assert resume_differences(eight_unclamped, four_clamped) == []
    assert resume_differences(four_clamped, eight_unclamped) == []
    assert resume_differences(_cfg(8, 8), _cfg(4, 4)) == []
    # ... but the rest of the config is still compared, with the "config." prefix.
    assert resume_differences(_cfg(8, 16), _cfg(4, 4, r1_gamma=2.0)) == [
        "config.r1_gamma: snapshot 1.0, now 2.0"]
    assert resume_differences(_cfg(4, 4, r1_gamma=2.0), _cfg(8, 16)) == [
        "config.r1_gamma: snapshot 2.0, now 1.0"]
    # batch_gpu alone is never a difference.
    assert resume_differences(_cfg(4, 8), _cfg(4, 16)) == []


def test_a_group_that_is_not_its_batch_gpu_is_a_difference():
    # A user's group (smaller than the images per pass) is a real change.
    assert resume_differences(_cfg(8, 16), _cfg(4, 8)) == [
        "config.D_kwargs.mbstd_group_size: snapshot 8, now 4", "config.mbstd_group: snapshot 8, now 4"]
    # The two records of the group disagree: not a config make_config wrote, compared as it is.
    assert resume_differences(_cfg(8, 8), _cfg(4, 4, mbstd=2)) == [
        "config.D_kwargs.mbstd_group_size: snapshot 8, now 4", "config.mbstd_group: snapshot 8, now 2"]
    assert resume_differences(_cfg(8, 8, mbstd=2), _cfg(4, 4)) == [
        "config.D_kwargs.mbstd_group_size: snapshot 8, now 4", "config.mbstd_group: snapshot 2, now 4"]


def test_configs_without_a_group_are_compared_plainly():
    assert resume_differences({"batch": 4, "batch_gpu": 2}, {"batch": 8, "batch_gpu": 4}) == [
        "config.batch: snapshot 4, now 8"]
    assert resume_differences(_cfg(None, 4), _cfg(4, 4)) == [
        "config.D_kwargs.mbstd_group_size: snapshot '<absent>', now 4",
        "config.mbstd_group: snapshot '<absent>', now 4"]
    assert resume_differences(_cfg(4, 4), _cfg(None, 4)) == [
        "config.D_kwargs.mbstd_group_size: snapshot 4, now '<absent>'",
        "config.mbstd_group: snapshot 4, now '<absent>'"]


RUN = {"seed": 0}
_HINT = ("(config {name} derives the batch, gamma and EMA from the GPU count: set train.batch, train.gamma "
         "and train.ema_kimg to the snapshot's 4, 1 and 0.01 to resume it with another train.gpus)")


@pytest.fixture(scope="module")
def stored_state():
    return fake_state(tiny_config(), run=RUN)


@pytest.mark.parametrize(("name", "changes", "hint"), [
    ("demo", {"batch": 8}, True),                            # another GPU count: another batch
    ("auto", {"batch": 8}, True),
    ("demo", {"r1_gamma": 2.0, "ema_kimg": 0.02}, True),     # ... or both gamma and EMA
    ("demo", {"r1_gamma": 2.0}, False),                      # one knob alone is the user's change
    ("demo", {"ema_kimg": 0.02}, False),
    ("paper256", {"batch": 8}, False),                       # presets fix their batch
])
def test_a_refused_resume_says_how_to_keep_a_gpu_derived_config(tmp_path, caplog, stored_state, name, changes,
                                                                 hint):
    state = dict(stored_state, config=dict(stored_state["config"], name=name))
    save_snapshot(tmp_path / snapshot_name(8), state)
    current = dict(state["config"], **changes)
    with caplog.at_level(logging.WARNING):
        start = decide_start(tmp_path, current, RUN, "a" * 64, None, False)
    assert start.mode == "fresh"
    assert start.reason.endswith(_HINT.format(name=name)) is hint
    assert ("derives the batch" in start.reason) is hint


def test_another_preset_name_gives_no_gpu_hint(tmp_path, stored_state):
    save_snapshot(tmp_path / snapshot_name(8), stored_state)                   # demo
    current = dict(stored_state["config"], name="auto", batch=8)
    start = decide_start(tmp_path, current, RUN, "a" * 64, None, False)
    assert start.mode == "fresh" and "derives the batch" not in start.reason


# ---------------------------------------------------------------------------------------------------------
# What one step hands on, seen from inside StyleGAN2Loss.accumulate_gradients


# ADA's signs planted per chunk (3 chunks of 2 images): E = (-2 + 2 + 2) / 6 = 1/3 per step, below the
# target 0.6, while the last chunk alone says +1.
SIGNS = ([-1.0, -1.0], [1.0, 1.0], [1.0, 1.0])
# Path lengths planted per chunk (one length per chunk: 2 images halved): their mean in float64 is
# (1 + 2 ** -23) / 3, which float32 sums would round to exactly 1/3.
LENGTHS = (1.0, 2.0 ** -24, 2.0 ** -24)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("step")
    names = [f"{i // 1000:05d}/img{i:08d}.png" for i in range(6)]
    data = write_dataset(root / "d.zip", n=6, labels=[[n, i % 3] for i, n in enumerate(names)])
    cfg = tiny_config(batch=6, batch_gpu=2)
    calls: list[dict] = []
    steps: list[int] = []
    accumulate = StyleGAN2Loss.accumulate_gradients

    def recording(self, phase, real_img, real_c, gen_z, gen_c, gain, update_emas=False):
        b = len(steps)
        r = sum(1 for c in calls if c["b"] == b and c["phase"] == phase)
        calls.append(dict(b=b, phase=phase, r=r, real_img=real_img.clone(), real_c=real_c.clone(),
                          z=gen_z.clone(), c=gen_c.clone(), gain=gain, update_emas=update_emas))
        stats = accumulate(self, phase, real_img, real_c, gen_z, gen_c, gain, update_emas)
        if "Loss/signs/real" in stats:
            stats["Loss/signs/real"] = torch.tensor(SIGNS[r])
        if "Loss/pl_length" in stats:
            stats["Loss/pl_length"] = torch.full_like(stats["Loss/pl_length"], LENGTHS[r])
        return stats

    mp = pytest.MonkeyPatch()
    mp.setattr(StyleGAN2Loss, "accumulate_gradients", recording)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)       # a module fixture runs before the function-scoped one_thread
    try:
        training_loop(data, root / "run", cfg, kimg=0.024, snapshot_kimg=0.006, tick_kimg=0.006,
                      hooks=Hooks(on_progress=lambda n, t: steps.append(n)), **LOOP_KW)
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    snaps = [load_snapshot(p) for _, p in list_snapshots(root / "run")]
    return data, cfg, calls, snaps


def test_each_chunk_trains_on_dataset_images_scaled_to_minus_one_one_with_their_labels(recorded):
    data, _, calls, _ = recorded
    ds = ZipDataset(data, mirror=True)
    known = [(img.float() / 127.5 - 1, c) for img, c in (ds[i] for i in range(len(ds)))]
    assert len(known) == 12 and ds.label_dim == 3
    for call in calls:
        for x, c in zip(call["real_img"], call["real_c"]):
            assert any(torch.equal(x, kx) and torch.equal(c, kc) for kx, kc in known)


def test_latents_are_drawn_per_step_phase_and_chunk_and_w_avg_moves_on_the_first_chunk(recorded):
    data, _, calls, snaps = recorded
    labels = {tuple(row) for row in ZipDataset(data).labels.tolist()}
    order = ["Gmain", "Greg", "Dmain", "Dreg"]
    assert [(c["b"], c["phase"], c["r"], c["gain"]) for c in calls] == (
        [(0, p, r, g) for p, g in zip(order, (1, 4, 1, 4)) for r in range(3)]
        + [(b, p, r, 1) for b in (1, 2, 3) for p in ("Gmain", "Dmain") for r in range(3)])
    for call in calls:
        # The loop's stream for training steps (purpose 1 of the run seed 3), keyed by step, phase, chunk.
        torch.manual_seed(seeded(3, 1, call["b"], order.index(call["phase"]), call["r"]))
        assert torch.equal(call["z"], torch.randn(2, 16)), (call["b"], call["phase"], call["r"])
        assert all(tuple(row) in labels for row in call["c"].tolist())
        assert call["update_emas"] is (call["r"] == 0)
    w_avgs = [s["G"]["mapping.w_avg"] for s in snaps]
    assert all(not torch.equal(a, b) for a, b in itertools.pairwise(w_avgs))


def test_ada_moves_p_every_four_minibatches_from_the_signs_of_all_of_them(recorded):
    _, _, _, snaps = recorded
    assert [s["progress"]["batch_idx"] for s in snaps] == [1, 2, 3, 4]
    # Steps 1-3 collect (sum, count) of the signs; step 4 moves p down (rt 1/3 < 0.6) by 4 * 6 / 500k.
    assert [s["augment_p"] for s in snaps[:3]] == [0.2, 0.2, 0.2]
    assert [list(s["ada_signs"]) for s in snaps] == [[2.0, 6.0], [4.0, 12.0], [6.0, 18.0], [0.0, 0.0]]
    assert snaps[3]["augment_p"] == pytest.approx(0.2 - 24 / 500_000, rel=1e-12)


def test_the_path_length_mean_moves_toward_the_mean_over_every_chunk_in_float64(recorded):
    _, _, _, snaps = recorded
    mean = torch.tensor((1 + 2.0 ** -23) / 3, dtype=torch.float64).float()
    assert mean != torch.tensor(1 / 3, dtype=torch.float32)          # float32 sums would lose the 2 ** -24s
    want = float(pl_mean_update(torch.zeros([]), mean, 0.01))
    assert [s["pl_mean"] for s in snaps] == [want] * 4                # Greg ran at step 0 only


# ---------------------------------------------------------------------------------------------------------
# Freeze-D and fixed augmentation over real steps; the NaN check over every chunk


def test_frozen_d_layers_and_a_fixed_p_stay_put_over_real_steps(tmp_path):
    cfg = tiny_config()
    data = write_dataset(tmp_path / "d.zip", n=6)
    training_loop(data, tmp_path / "run", cfg, kimg=0.016, snapshot_kimg=0.008,
                  **dict(LOOP_KW, augment="fixed", freeze_d=2))
    a, b = (load_snapshot(p) for _, p in list_snapshots(tmp_path / "run"))
    _, D = configs.build_networks(configs.network_spec(cfg))
    name_of = {id(p): n for n, p in D.named_parameters()}
    frozen = {name_of[id(p)] for p in frozen_d_parameters(D, 2)}
    assert frozen and all(n.startswith(("blocks.0.fromrgb.", "blocks.0.conv0.")) for n in frozen)
    for name in name_of.values():
        assert torch.equal(a["D"][name], b["D"][name]) is (name in frozen), name
    assert a["augment_p"] == b["augment_p"] == 0.2        # ADA's adjustment is for augment ada only
    assert b["progress"]["batch_idx"] == 4


@pytest.mark.parametrize("nth, kimg, minibatch", [(1, "0.000", 0), (3, "0.004", 1)])   # 2 chunks a step
def test_a_non_finite_loss_in_any_chunk_stops_the_run(tmp_path, nth, kimg, minibatch):
    cfg = tiny_config(batch=4, batch_gpu=2)
    data = write_dataset(tmp_path / "d.zip", n=6)
    accumulate = StyleGAN2Loss.accumulate_gradients
    seen: list[str] = []

    def first_chunk_nan(self, phase, *args, **kw):
        stats = accumulate(self, phase, *args, **kw)
        seen.append(phase)
        if phase == "Dmain" and seen.count("Dmain") == nth:
            stats["Loss/D/loss"] = torch.tensor([math.nan, 0.5])
        return stats

    mp = pytest.MonkeyPatch()
    mp.setattr(StyleGAN2Loss, "accumulate_gradients", first_chunk_nan)
    try:
        with pytest.raises(TrainingError) as e:
            training_loop(data, tmp_path / "run", cfg, kimg=0.008, snapshot_kimg=0.008, **LOOP_KW)
    finally:
        mp.undo()
    assert str(e.value) == (f"non-finite loss Loss/D/loss at kimg {kimg} (minibatch {minibatch}); lower the "
                            "learning rate or r1_gamma, or resume from the previous snapshot")


def test_two_non_finite_losses_are_named_together(tmp_path):
    # Adam moves each weight by about lr on its first step: at lr 1e30 G's regulariser and D's loss blow up.
    cfg = tiny_config(G_lr=1e30, D_lr=1e30)
    data = write_dataset(tmp_path / "d.zip", n=6)
    with pytest.raises(TrainingError, match=r"^non-finite loss Loss/G/reg, Loss/D/loss at kimg 0\.000 "):
        training_loop(data, tmp_path / "run", cfg, kimg=0.004, snapshot_kimg=0.004, **LOOP_KW)
