"""Forward + backward time of the fused ops at the shapes of the demo (64 px) and of a 256-px network.

    python -m benchmarks.bench_ops [--device cpu|cuda] [--repeats N]

Per op and shape: the reference path in ms per call, and its ratio to a baseline measured in the same run:
on CPU `t * 1` forward + backward on a tensor of the op's output size (the memory-bound floor any op
producing that tensor pays), on CUDA the fused kernel (the speed-up the CUDA path buys).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

import torch

from corgigan.stylegan2.ops import bias_act, build, upfirdn2d

log = logging.getLogger(__name__)

# (label, batch, channels at the output resolution, channels at half of it, resolution)
# demo: channel_base 2048, channel_max 64, batch 8; 256 px: paper256 (channel_base 16384, max 512) per GPU.
SHAPES = [
    ("demo 64px", 8, 32, 64, 64),
    ("256px top", 8, 64, 128, 256),
    ("256px 32px", 8, 512, 512, 32),
]


def time_call(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Median milliseconds of fn() after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def forward_backward(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    x = x.detach().requires_grad_(True)

    def step():
        y = op(x)
        y.backward(torch.ones_like(y))
        x.grad = None

    return step


def cases(device: torch.device) -> list[tuple[str, Callable, torch.Tensor]]:
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device=device)
    out = []
    for label, batch, ch, ch_half, res in SHAPES:
        b = torch.zeros(ch, device=device)
        out += [
            (f"bias_act lrelu+clamp {label} [{batch},{ch},{res},{res}]",
             lambda x, impl, b=b: bias_act.bias_act(x, b, act="lrelu", clamp=256, impl=impl),
             torch.randn(batch, ch, res, res, device=device)),
            (f"upsample2d {label} [{batch},{ch_half},{res // 2},{res // 2}]",
             lambda x, impl: upfirdn2d.upsample2d(x, f, impl=impl),
             torch.randn(batch, ch_half, res // 2, res // 2, device=device)),
            (f"downsample2d {label} [{batch},{ch},{res},{res}]",
             lambda x, impl: upfirdn2d.downsample2d(x, f, impl=impl),
             torch.randn(batch, ch, res, res, device=device)),
        ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        log.info("CUDA ops: %s", build.cuda_ops_status())
    log.info("device %s, %d CPU threads, %d repeats (median)", device, torch.get_num_threads(), args.repeats)
    baseline = "cuda ms" if on_cuda else "copy ms"
    log.info("%-58s %10s %10s %8s", "op, shape", "ref ms", baseline, "ratio")
    for name, op, x in cases(device):
        ref_ms = time_call(forward_backward(lambda t, op=op: op(t, "ref"), x), device, args.repeats)
        if on_cuda:
            base_ms = time_call(forward_backward(lambda t, op=op: op(t, "cuda"), x), device, args.repeats)
        else:
            out = torch.randn_like(op(x, "ref"))  # the copy floor is measured at the output size
            base_ms = time_call(forward_backward(lambda t: t * 1, out), device, args.repeats)
        log.info("%-58s %10.2f %10.2f %7.1fx", name, ref_ms, base_ms, ref_ms / base_ms)


if __name__ == "__main__":
    main()
