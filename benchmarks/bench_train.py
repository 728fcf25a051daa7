"""Benchmark: CPU time of a StyleGAN2-ADA training step at the demo config, and sec/kimg.

Times are process CPU seconds (time.process_time), which do not depend on what else runs on the
machine; with --threads 1 they equal the wall time on an idle core. Wall seconds are printed beside.

Baseline: a step of the main phases only (Gmain + Dmain). Measured against it in the same run:
  * the full step (Gmain, Greg, Dmain, Dreg: what minibatch 0, 16, 32, ... runs);
  * the amortised step (main + Greg / 4 + Dreg / 16: the average cost of a minibatch), which gives
    sec/kimg and images/s;
  * the amortised step with the ADA pipe at p = 0.5 (p rises from 0 as D starts to overfit).

The speed work of the reference, each measured against its alternative in the same run:
  * weight gradients in the R1 and path-length first-order passes: skipped (loss.py asks autograd.grad
    for the input gradient only, so torch's engine runs each conv backward without its weight gradient)
    vs. forced (the weight gradients computed too, as the reference's conv2d_gradfix avoided by hand);
  * buffers sent between processes after each step: only w_avg (what the loop does) vs. every buffer
    of G and D (filters and constant noise too), two gloo processes on this machine, and the bytes per
    step at the demo, paper256 and paper1024 configs;
  * TF32 is a CUDA-only switch (train.allow_tf32): nothing to measure on a CPU; gpu_check measures it.

    python -m benchmarks.bench_train [--resolution 64] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.multiprocessing as mp

from corgigan.stylegan2 import configs, distributed
from corgigan.stylegan2 import loss as loss_mod
from corgigan.stylegan2.augment import bgc_pipe
from corgigan.stylegan2.loop import MOVING_BUFFERS, make_phases
from corgigan.stylegan2.loss import StyleGAN2Loss

log = logging.getLogger("bench_train")


def _setup(cfg: configs.TrainingConfig, p: float | None):
    torch.manual_seed(0)
    G, D = configs.build_networks(configs.network_spec(cfg))
    G.train().requires_grad_(False)
    D.train().requires_grad_(False)
    pipe = None
    if p is not None:
        pipe = bgc_pipe().requires_grad_(False)
        pipe.p.fill_(p)
    loss = StyleGAN2Loss(G, D, pipe, r1_gamma=cfg.r1_gamma, style_mixing_prob=cfg.style_mixing_prob,
                         pl_weight=cfg.pl_weight)
    loss.pl_mean = torch.zeros([])
    return G, loss, {ph.name: ph for ph in make_phases(G, D, cfg)}


@contextlib.contextmanager
def forced_weight_gradients(G: torch.nn.Module, D: torch.nn.Module) -> Iterator[None]:
    """The regularisers' first-order passes also compute every conv weight's gradient (then dropped)."""
    r1_penalty, path_lengths = loss_mod.r1_penalty, loss_mod.path_lengths

    def weights(module: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [q for q in module.parameters() if q.ndim == 4 and q.requires_grad]

    def r1_forced(logits: torch.Tensor, reals: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad([logits.sum()], [reals, *weights(D)], create_graph=True)
        return grads[0].square().sum(dim=[1, 2, 3])

    def pl_forced(img: torch.Tensor, ws: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad([(img * noise).sum()], [ws, *weights(G.synthesis)], create_graph=True)
        return grads[0].square().sum(dim=2).mean(dim=1).sqrt()

    loss_mod.r1_penalty, loss_mod.path_lengths = r1_forced, pl_forced
    try:
        yield
    finally:
        loss_mod.r1_penalty, loss_mod.path_lengths = r1_penalty, path_lengths


def time_phases(cfg: configs.TrainingConfig, repeats: int, p: float | None,
                clock=time.process_time, force_weight_grads: bool = False) -> dict[str, float]:
    """Median `clock` seconds of each phase (forward, backward, optimiser step) over `repeats` runs."""
    G, loss, phases = _setup(cfg, p)
    with forced_weight_gradients(G, loss.D) if force_weight_grads else contextlib.nullcontext():
        return _time(G, loss, phases, cfg, repeats, clock)


def _time(G, loss, phases, cfg: configs.TrainingConfig, repeats: int, clock) -> dict[str, float]:
    n = cfg.batch_gpu
    reals = torch.rand(n, 3, cfg.resolution, cfg.resolution) * 2 - 1
    c = torch.zeros(n, 0)
    times: dict[str, list[float]] = {name: [] for name in phases}
    for rep in range(repeats + 1):  # the first round warms up allocators and kernels
        for name, ph in phases.items():
            z = torch.randn(n, G.z_dim)
            t0 = clock()
            ph.module.requires_grad_(True)
            ph.opt.zero_grad(set_to_none=True)
            loss.accumulate_gradients(name, reals, c, z, c, gain=ph.interval)
            ph.opt.step()
            ph.module.requires_grad_(False)
            if rep:
                times[name].append(clock() - t0)
    return {name: sorted(v)[len(v) // 2] for name, v in times.items()}


def buffer_split(cfg: configs.TrainingConfig) -> tuple[int, int]:
    """Bytes of (w_avg-like moving buffers, all buffers) of G and D at cfg."""
    torch.manual_seed(0)
    nets = configs.build_networks(configs.network_spec(cfg))
    moving = total = 0
    for net in nets:
        for name, b in net.named_buffers():
            total += b.numel() * b.element_size()
            moving += b.numel() * b.element_size() if name.rsplit(".", 1)[-1] in MOVING_BUFFERS else 0
    return moving, total


def _broadcast_worker(rank: int, port: int, cfg: configs.TrainingConfig, repeats: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.init_from_env("cpu")
    try:
        torch.manual_seed(0)
        G, D = configs.build_networks(configs.network_spec(cfg))
        everything = [b for m in (G, D) for b in m.buffers()]
        moving = [b for m in (G, D) for n, b in m.named_buffers() if n.rsplit(".", 1)[-1] in MOVING_BUFFERS]
        result = {}
        for label, tensors in (("all", everything), ("moving", moving)):
            times = []
            for _ in range(repeats + 1):
                distributed.barrier()
                t0 = time.perf_counter()
                distributed.broadcast_(tensors)
                times.append(time.perf_counter() - t0)
            result[label] = sorted(times[1:])[repeats // 2]
        if rank == 0:
            Path(out).write_text(f"{result['all']} {result['moving']}")
    finally:
        distributed.shutdown()


def time_broadcasts(cfg: configs.TrainingConfig, repeats: int) -> tuple[float, float]:
    """Median wall seconds of one broadcast of (all buffers, moving buffers) between two gloo processes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "times")
        mp.spawn(_broadcast_worker, args=(port, cfg, repeats, out), nprocs=2, join=True)
        everything, moving = (float(v) for v in Path(out).read_text().split())
    return everything, moving


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--wall", action="store_true", help="time wall seconds instead of CPU seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = configs.make_config("demo", args.resolution)
    k_g, k_d = cfg.G_reg_interval, cfg.D_reg_interval
    clock = time.perf_counter if args.wall else time.process_time
    log.info("demo config at %d px, batch %d, %d torch threads, torch %s, %s seconds", cfg.resolution,
             cfg.batch, torch.get_num_threads(), torch.__version__, "wall" if args.wall else "CPU")
    rows, measured = [], {}
    for label, p in (("no augment", None), ("ADA p=0.5", 0.5)):
        t = measured[label] = time_phases(cfg, args.repeats, p, clock)
        main_step = t["Gmain"] + t["Dmain"]
        full = main_step + t["Greg"] + t["Dreg"]
        amortised = main_step + t["Greg"] / k_g + t["Dreg"] / k_d
        log.info("%s: phases %s", label, ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in t.items()))
        rows.append((label, main_step, full, amortised))
    base = rows[0][1]
    log.info("%-12s %12s %12s %14s %10s %10s", "", "main step", "full step", "amortised", "sec/kimg", "img/s")
    for label, main_step, full, amortised in rows:
        log.info("%-12s %9.3f s   %9.3f s   %9.3f s     %8.1f %10.1f", label, main_step, full, amortised,
                 amortised / cfg.batch * 1000, cfg.batch / amortised)
        log.info("%-12s %11.2fx %11.2fx %13.2fx   (vs. the main step without augmentation)", "",
                 main_step / base, full / base, amortised / base)

    log.info("")
    log.info("weight gradients in the R1 / path-length first-order passes (no augment):")
    skip = measured["no augment"]
    forced = time_phases(cfg, args.repeats, None, clock, force_weight_grads=True)
    for label, t in (("skipped", skip), ("forced", forced)):
        amortised = t["Gmain"] + t["Dmain"] + t["Greg"] / k_g + t["Dreg"] / k_d
        log.info("  %-8s Greg %6.0f ms  Dreg %6.0f ms  amortised step %6.3f s", label, t["Greg"] * 1000,
                 t["Dreg"] * 1000, amortised)
    ratio = {k: forced[k] / skip[k] for k in ("Greg", "Dreg")}
    am = [t["Gmain"] + t["Dmain"] + t["Greg"] / k_g + t["Dreg"] / k_d for t in (skip, forced)]
    log.info("  forced / skipped: Greg %.2fx, Dreg %.2fx, amortised step %.2fx", ratio["Greg"], ratio["Dreg"],
             am[1] / am[0])

    log.info("")
    log.info("buffers sent between processes after each step:")
    for name, res in (("demo", args.resolution), ("paper256", 256), ("paper1024", 1024)):
        moving, total = buffer_split(configs.make_config(name, res))
        log.info("  %-9s %5d px: w_avg only %8.1f KiB, all buffers %9.1f KiB (%.0fx)", name, res,
                 moving / 1024, total / 1024, total / max(moving, 1))
    t_all, t_moving = time_broadcasts(cfg, max(args.repeats, 5) * 4)
    log.info("  two gloo processes, demo %d px: all buffers %.2f ms, w_avg only %.2f ms (%.1fx)",
             cfg.resolution, t_all * 1000, t_moving * 1000, t_all / t_moving)
    log.info("TF32 (train.allow_tf32) switches CUDA kernels only: nothing to measure on a CPU")


if __name__ == "__main__":
    main()
