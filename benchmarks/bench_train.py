"""Benchmark: CPU time of a StyleGAN2-ADA training step at the demo config, and sec/kimg.

Times are process CPU seconds (time.process_time), which do not depend on what else runs on the
machine; with --threads 1 they equal the wall time on an idle core. Wall seconds are printed beside.

Baseline: a step of the main phases only (Gmain + Dmain). Measured against it in the same run:
  * the full step (Gmain, Greg, Dmain, Dreg: what minibatch 0, 16, 32, ... runs);
  * the amortised step (main + Greg / 4 + Dreg / 16: the average cost of a minibatch), which gives
    sec/kimg and images/s;
  * the amortised step with the ADA pipe at p = 0.5 (p rises from 0 as D starts to overfit).

    python -m benchmarks.bench_train [--resolution 64] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from corgigan.stylegan2 import configs
from corgigan.stylegan2.augment import bgc_pipe
from corgigan.stylegan2.loop import make_phases
from corgigan.stylegan2.loss import StyleGAN2Loss

log = logging.getLogger("bench_train")


def _setup(cfg: configs.TrainingConfig, p: float | None):
    torch.manual_seed(0)
    G, D = configs.build_networks(cfg)
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


def time_phases(cfg: configs.TrainingConfig, repeats: int, p: float | None,
                clock=time.process_time) -> dict[str, float]:
    """Median `clock` seconds of each phase (forward, backward, optimiser step) over `repeats` runs."""
    G, loss, phases = _setup(cfg, p)
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
    rows = []
    for label, p in (("no augment", None), ("ADA p=0.5", 0.5)):
        t = time_phases(cfg, args.repeats, p, clock)
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


if __name__ == "__main__":
    main()
