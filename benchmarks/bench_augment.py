"""Throughput of the 'bgc' augmentation pipe on CPU: images/s at p = 0.5 and 1 against p = 0 (same run).

Run: python -m benchmarks.bench_augment [--repeats N]
p = 0 draws the random parameters and moves no pixel, so it is the pipe's fixed cost; the ratio says
what the augmentations themselves cost at the probability ADA typically settles at.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from corgigan.stylegan2.augment import bgc_pipe

log = logging.getLogger(__name__)

CASES = ((64, 32), (256, 8))  # (resolution, batch)


def images_per_second(p: float, resolution: int, batch: int, repeats: int) -> float:
    """Median-of-repeats throughput of bgc_pipe at probability p on random images."""
    pipe = bgc_pipe()
    pipe.p.fill_(p)
    x = torch.rand(batch, 3, resolution, resolution) * 2 - 1
    torch.manual_seed(0)
    pipe(x)  # warm-up: first-call allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            pipe(x)
        times.append(time.perf_counter() - start)
    times.sort()
    return batch / times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per case (median is reported)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("torch %s, %d threads", torch.__version__, torch.get_num_threads())
    log.info("%-6s %-6s %12s %12s %12s %9s %9s", "res", "batch", "p=0 img/s", "p=0.5 img/s", "p=1 img/s",
             "0.5 vs 0", "1 vs 0")  # fmt: skip
    for resolution, batch in CASES:
        base = images_per_second(0.0, resolution, batch, args.repeats)
        half = images_per_second(0.5, resolution, batch, args.repeats)
        full = images_per_second(1.0, resolution, batch, args.repeats)
        log.info("%-6d %-6d %12.1f %12.1f %12.1f %8.3fx %8.3fx", resolution, batch, base, half, full,
                 half / base, full / base)  # fmt: skip


if __name__ == "__main__":
    main()
