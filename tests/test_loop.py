"""The losses and the training loop: loss math, learning direction, exact resume, NaN stop, resume rules."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from corgigan.analysis.curves import draw_curves
from corgigan.stylegan2 import configs
from corgigan.stylegan2.loop import Hooks, TrainingError, ema_beta, make_optimizer, training_loop
from corgigan.stylegan2.loss import StyleGAN2Loss, path_lengths, pl_mean_update, r1_penalty
from corgigan.stylegan2.snapshot import grid_name, list_snapshots, load_snapshot, snapshot_name
from tests.helpers import LOOP_KW as KW
from tests.helpers import tiny_config, write_dataset

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")

# ---------------------------------------------------------------------------------------------------------
# Loss math on networks whose gradients are known in closed form


def test_r1_penalty_of_a_linear_critic_is_its_squared_weight_norm():
    w = torch.randn(1, 3, 4, 4)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    logits = (x * w).sum(dim=[1, 2, 3])
    assert torch.allclose(r1_penalty(logits, x), w.square().sum().expand(5))


def test_path_length_of_a_linear_synthesis():
    # img = (mean over ws of w) @ M  =>  J^T y = M y / num_ws for each w; the length averages over ws.
    M = torch.randn(6, 12)
    ws = torch.randn(3, 4, 6, requires_grad=True)
    img = (ws.mean(dim=1) @ M).view(3, 3, 2, 2)
    y = torch.randn(3, 3, 2, 2)
    want = (y.flatten(1) @ M.T / 4).square().sum(dim=1).sqrt()
    assert torch.allclose(path_lengths(img, ws, y), want, atol=1e-6)


def test_running_means_and_lazy_correction():
    assert pl_mean_update(0.0, 2.0, 0.01) == pytest.approx(0.02)
    opt = make_optimizer(iter([torch.nn.Parameter(torch.zeros(1))]), 0.002, (0.0, 0.99), reg_interval=4)
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(0.002 * 0.8)
    assert group["betas"] == pytest.approx((0.0, 0.99 ** 0.8))
    assert make_optimizer(iter([torch.nn.Parameter(torch.zeros(1))]), 0.002, (0.0, 0.99),
                          None).param_groups[0]["lr"] == 0.002
    assert ema_beta(4, 0, 10, 0.05) == 0.0                                  # rampup: G_ema starts as G
    assert ema_beta(4, 10**6, 10, 0.05) == pytest.approx(0.5 ** (4 / 10000))  # then the 10 kimg half-life
    assert ema_beta(4, 0, 10, None) == pytest.approx(0.5 ** (4 / 10000))


# ---------------------------------------------------------------------------------------------------------
# The losses move the way the game says


def _nets(seed: int = 0):
    cfg = tiny_config()
    torch.manual_seed(seed)
    G, D = configs.build_networks(configs.network_spec(cfg))
    return cfg, G, D


def test_d_steps_lower_d_loss_and_g_steps_lower_g_loss():
    _, G, D = _nets()
    loss = StyleGAN2Loss(G, D, r1_gamma=1.0, pl_weight=2.0)
    loss.pl_mean = torch.zeros([])
    reals = torch.ones(4, 3, 8, 8) * torch.tensor([0.8, -0.5, 0.1]).view(1, 3, 1, 1)
    c = torch.zeros(4, 0)
    z = torch.randn(4, G.z_dim)

    def phase(name: str, module: torch.nn.Module, opt: torch.optim.Optimizer, stat: str) -> float:
        module.requires_grad_(True)
        opt.zero_grad(set_to_none=True)
        value = loss.accumulate_gradients(name, reals, c, z, c, gain=1.0)[stat].mean().item()
        opt.step()
        module.requires_grad_(False)
        return value

    G.requires_grad_(False)
    D.requires_grad_(False)
    opt_D = torch.optim.Adam(D.parameters(), lr=0.002, betas=(0.0, 0.99))
    d_losses = [phase("Dboth", D, opt_D, "Loss/D/loss") for _ in range(12)]
    assert d_losses[-1] < d_losses[0] - 0.1
    opt_G = torch.optim.Adam(G.parameters(), lr=0.002, betas=(0.0, 0.99))
    g_losses = [phase("Gmain", G, opt_G, "Loss/G/loss") for _ in range(12)]
    assert g_losses[-1] < g_losses[0] - 0.1
    G.requires_grad_(True)
    stats = loss.accumulate_gradients("Greg", reals, c, z, c, gain=4.0)
    assert stats["Loss/pl"].shape == (2,) and torch.isfinite(stats["Loss/pl"]).all()  # batch shrink 2
    with pytest.raises(ValueError, match="unknown phase"):
        loss.accumulate_gradients("Gfoo", reals, c, z, c, gain=1.0)


# ---------------------------------------------------------------------------------------------------------
# The loop


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return write_dataset(root / "a.zip", n=6, seed=0), write_dataset(root / "b.zip", n=6, seed=1)


def test_resume_continues_bit_identically(tmp_path, data):
    cfg = tiny_config(batch=4, batch_gpu=2)  # 2 accumulation rounds per step
    ticks: list[tuple[int, dict]] = []
    straight = training_loop(data[0], tmp_path / "straight", cfg, kimg=0.032, snapshot_kimg=0.016,
                             tick_kimg=0.008, hooks=Hooks(on_tick=lambda t, s: ticks.append((t, s))), **KW)
    assert straight.name == snapshot_name(32)
    assert [t for t, _ in ticks] == [1, 2, 3, 4]
    want = {"Loss/G/loss", "Loss/D/loss", "Loss/r1", "Loss/pl", "ADA/p", "Timing/sec_per_kimg"}
    assert want <= set(ticks[0][1])

    starts: list[dict] = []
    hooks = Hooks(on_start=starts.append)
    training_loop(data[0], tmp_path / "split", cfg, kimg=0.016, snapshot_kimg=0.016, tick_kimg=0.008,
                  hooks=hooks, **KW)
    resumed = training_loop(data[0], tmp_path / "split", cfg, kimg=0.032, snapshot_kimg=0.016,
                            tick_kimg=0.008, hooks=hooks, **KW)
    assert [s["resumed"] for s in starts] == [False, True] and starts[1]["nimg"] == 16

    a, b = load_snapshot(straight), load_snapshot(resumed)
    assert a["progress"] == b["progress"] == {"nimg": 32, "batch_idx": 8, "tick": 4}
    assert a["augment_p"] != 0.2                      # ADA moved p ...
    for key in ("G", "D", "G_ema"):                   # ... and the split run ended in the very same place
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name}"
    assert straight.read_bytes() == resumed.read_bytes()
    grid = grid_name(32)
    assert (tmp_path / "straight" / grid).read_bytes() == (tmp_path / "split" / grid).read_bytes()
    # Asking for no more than is done returns the last snapshot without training.
    assert training_loop(data[0], tmp_path / "split", cfg, kimg=0.032, snapshot_kimg=0.016, **KW) == resumed


_RUN_IN_A_FRESH_PROCESS = """
import sys
import torch
from corgigan.stylegan2.loop import training_loop
from tests.helpers import LOOP_KW, tiny_config
torch.set_num_threads(1)
training_loop(sys.argv[1], sys.argv[2], tiny_config(), kimg=0.008, snapshot_kimg=0.008, **LOOP_KW)
"""


def test_identical_runs_in_two_processes_write_identical_bytes(tmp_path, data):
    # Each process starts with its own OS-seeded numpy and python generators, whose states the snapshot
    # stores: only seeding all of them makes DVC hashes of two identical runs agree.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "src")]))
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", _RUN_IN_A_FRESH_PROCESS, str(data[0]), str(tmp_path / name)],
                       check=True, env=env, cwd=ROOT, timeout=300)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert snapshot_name(8) in files and files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_leftover_temp_files_of_a_killed_write_are_removed_on_restart(tmp_path, data):
    run_dir = tmp_path / "run"
    training_loop(data[0], run_dir, tiny_config(), kimg=0.004, snapshot_kimg=0.004, **KW)
    # What a SIGKILL during save_snapshot / save_image_grid leaves behind (atomic_path's temp names; the
    # last one in the form of earlier versions).
    leftovers = [run_dir / n for n in (".snapshot-000000008.k2j4x.tmp.pt", ".grid-000000008.a8qz1.tmp.png",
                                       ".grid-000000004.png.b7c2d.tmp")]
    for p in leftovers:
        p.write_bytes(b"half a file")
    training_loop(data[0], run_dir, tiny_config(), kimg=0.008, snapshot_kimg=0.004, **KW)
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []
    assert [n for n, _ in list_snapshots(run_dir)] == [4, 8]


def test_snapshot_of_other_data_is_not_resumed(tmp_path, data, caplog):
    cfg = tiny_config()
    run_dir = tmp_path / "run"
    training_loop(data[0], run_dir, cfg, kimg=0.008, snapshot_kimg=0.008, **KW)
    with caplog.at_level(logging.WARNING):
        last = training_loop(data[1], run_dir, cfg, kimg=0.004, snapshot_kimg=0.004, **KW)
    assert "belongs to another run" in caplog.text and "dataset" in caplog.text
    assert [n for n, _ in list_snapshots(run_dir)] == [4]    # the stale 8-image snapshot is gone
    assert load_snapshot(last)["progress"]["nimg"] == 4


def test_resume_from_starts_over_from_the_weights(tmp_path, data):
    cfg = tiny_config()
    first = training_loop(data[0], tmp_path / "a", cfg, kimg=0.008, snapshot_kimg=0.008, **KW)
    kw = dict(KW, resume_from=str(first))
    with pytest.raises(Exception, match="allow_other_data"):
        training_loop(data[1], tmp_path / "b", cfg, kimg=0.004, snapshot_kimg=0.004, **kw)
    kw["allow_other_data"] = True
    last = training_loop(data[1], tmp_path / "b", cfg, kimg=0.004, snapshot_kimg=0.004, **kw)
    state = load_snapshot(last)
    assert state["progress"]["nimg"] == 4 and state["run"]["resume_from"] == str(first)


def test_keep_snapshots_prunes_old_ones_but_keeps_grids(tmp_path, data):
    run_dir = tmp_path / "run"
    training_loop(data[0], run_dir, tiny_config(), kimg=0.012, snapshot_kimg=0.004, keep_snapshots=1, **KW)
    assert [n for n, _ in list_snapshots(run_dir)] == [12]
    assert sorted(p.name for p in run_dir.glob("grid-*.png")) == [grid_name(n) for n in (4, 8, 12)]
    assert (run_dir / "reals.png").is_file()


def test_non_finite_loss_stops_with_its_name(tmp_path, data):
    cfg = tiny_config(r1_gamma=math.inf)
    with pytest.raises(TrainingError, match=r"Loss/D/reg at kimg 0\.000"):
        training_loop(data[0], tmp_path / "run", cfg, kimg=0.008, snapshot_kimg=0.008, **KW)
    assert list_snapshots(tmp_path / "run") == []


def test_resolution_mismatch_is_refused(tmp_path, data):
    cfg = configs.make_config("demo", 16)
    with pytest.raises(TrainingError, match="8 px but config demo is for 16 px"):
        training_loop(data[0], tmp_path / "run", cfg, kimg=0.008, snapshot_kimg=0.008, **KW)


# ---------------------------------------------------------------------------------------------------------
# The DVC stage


def test_stage_writes_snapshots_and_dvclive_metrics_and_resumes(tmp_path, data):
    from corgigan import params as params_mod
    from corgigan.errors import StageError
    from corgigan.stages import train

    p = dataclasses.replace(params_mod.load(ROOT / "params.yaml").train, kimg=0.016, snapshot_kimg=0.016,
                            tick_kimg=0.008, workers=1)
    out, metrics = tmp_path / "models", tmp_path / "reports"
    train.run(p, data[0], out, metrics)
    assert [n for n, _ in list_snapshots(out)] == [16] and (out / grid_name(16)).is_file()
    summary = json.loads((metrics / "metrics.json").read_text())
    assert summary["step"] == 2 and summary["Progress"]["kimg"] == 0.016
    assert "p" in summary["ADA"] and "Timing" not in summary and "signs" not in summary["Loss"]
    assert (metrics / "plots/metrics/Timing/sec_per_kimg.tsv").is_file()   # still drawn as a curve
    assert len((metrics / "plots/metrics/Loss/G/loss.tsv").read_text().splitlines()) == 3  # header + 2 ticks
    curves = metrics / train.CURVES                     # the same curves as a picture, x in kimg
    assert Image.open(curves).size == (800, 480)
    assert draw_curves(metrics / "plots/metrics", tmp_path / "again.png")
    assert (tmp_path / "again.png").read_bytes() == curves.read_bytes()
    # As if a killed run had logged tick 3 after its last snapshot: resuming logs tick 3 again, once.
    history = metrics / "plots/metrics/Loss/G/loss.tsv"
    history.write_text(history.read_text() + "3\t99.0\n")
    train.run(dataclasses.replace(p, kimg=0.024), data[0], out, metrics)
    assert [n for n, _ in list_snapshots(out)] == [16, 24]
    rows = history.read_text().splitlines()
    assert [r.split("\t")[0] for r in rows] == ["step", "1", "2", "3"] and "99.0" not in rows[-1]
    # A damaged snapshot is a stage error that says what to do.
    last = list_snapshots(out)[-1][1]
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(StageError, match="truncated or corrupt.*delete it"):
        train.run(dataclasses.replace(p, kimg=0.032), data[0], out, metrics)
