"""One prepared check for a GPU machine: build the CUDA ops, prove them against the references, measure
training (`make gpu-check`).

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out DIR [--toy] [--parts build,train_speed] [--budget S]

It needs only the standard library, torch, numpy, Pillow (and pytest for one sub-check): no virtual
environment, no network. Parts, in order, each in a child process with its own time box: a part that runs
over is killed and recorded as timed out with what it had measured, one that raises is recorded with its
error, and the next part runs either way.

  build        both ops built by ops/build.py into an empty cache, in two parallel processes: seconds, arch
  correctness  every bias_act / upfirdn2d call of the paper256 and paper1024 networks and the ADA pipe
               (traced from a forward pass), on random inputs in float32 and float16, CUDA vs reference:
               forward, backward and double backward; max abs / relative error per op and dtype; then the
               CUDA tests of tests/test_ops.py under pytest (every activation, float64 gradgradcheck)
  op_speed     forward + backward of the same calls at the networks' own dtypes, CUDA vs reference:
               milliseconds per network pass and the ratio
  train_speed  the loop's training step (Gmain, Greg, Dmain, Dreg over 16 minibatches, i.e. one lazy
               regularisation period; ADA pipe at a fixed p = 0.5; float16 as configured) of paper256 and
               paper1024 at the configs' batch on random images: sec/kimg, images/s, peak GPU memory; then
               with the ops forced to the reference path, and with TF32 on if time is left
  short_run    training_loop on a generated 256-px dataset zip for about a minute, in two calls, the second
               resuming the first's snapshot: finite losses, ADA p moving, snapshots written and resumed

Without a CUDA device (or with --toy) the same parts run at toy sizes on the CPU in under two minutes, the
CUDA halves reported as skipped (the comparisons then run with both sides on the reference path, only to
keep the harness working).

Writes DIR/report.json (everything), DIR/report.txt (the table logged at the end) and DIR/gpu-check.log (the
parts' own logs). Exit code 0 when every part that ran passed, 1 otherwise (a failed check, an error or a
time-out).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import importlib.util
import io
import json
import logging
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import PIL
import torch
from PIL import Image

from corgigan.stylegan2 import augment, configs, loop, networks
from corgigan.stylegan2.data import ZipDataset, dataset_hash
from corgigan.stylegan2.ops import bias_act as ba_mod
from corgigan.stylegan2.ops import build
from corgigan.stylegan2.ops import upfirdn2d as uf_mod
from corgigan.stylegan2.ops.compare import TOLERANCE, agreement, three_orders
from corgigan.stylegan2.snapshot import list_snapshots, load_snapshot

log = logging.getLogger("gpu_check")

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("build", "correctness", "op_speed", "train_speed", "short_run")
REPORT_FORMAT = 1
# Per part: (time box, the least time worth starting it with), seconds. The boxes add up to more than
# the budget on purpose: a part that finishes early leaves its time to the later ones.
BOXES = {
    "gpu": {"build": (180, 60), "correctness": (110, 30), "op_speed": (50, 15), "train_speed": (180, 40),
            "short_run": (120, 45)},
    "toy": {"build": (20, 5), "correctness": (50, 10), "op_speed": (20, 5), "train_speed": (60, 20),
            "short_run": (45, 15)},
}
BUDGET_S = {"gpu": 475, "toy": 110}  # the limits: 8 minutes on an H200, 2 minutes on 2 CPU cores
ADA_P = 0.5                                # the fixed augmentation probability of the speed runs
TIMED_STEPS = 16                           # one period of R1 (every 16) and four of path length (every 4)
WARMUP_STEPS = 2                           # minibatch 0 runs all four phases (and cudnn autotuning)
LOG_LIMIT = 2 * 2**20                      # bytes of each part's log kept in gpu-check.log
NOT_BUILT = "the CUDA ops were not built (see the build part)"


@dataclass(frozen=True)
class Sizes:
    """What each part runs at: the networks and batches of the GPU run, or toy ones for the CPU."""

    trace: tuple[tuple[str, int], ...]       # (config, resolution) whose op calls are checked and timed
    train: tuple[tuple[str, int], ...]       # (config, resolution) of the training-speed rows
    short: tuple[str, int]                   # (config, resolution) of the short run
    short_images: int                        # images in the short run's dataset zip
    short_train_s: float                     # seconds of training in the short run (both calls together)
    short_overhead_s: float                  # the short run's other seconds: set-up, grids, snapshots
    workers: int                             # DataLoader workers of the short run
    speed_repeats: int                       # timed repeats per op call


SIZES = {
    "gpu": Sizes(trace=(("paper256", 256), ("paper1024", 1024)),
                 train=(("paper256", 256), ("paper1024", 1024)),
                 short=("paper256", 256), short_images=256, short_train_s=50, short_overhead_s=50,
                 workers=4, speed_repeats=5),
    "toy": Sizes(trace=(("demo", 32),), train=(("demo", 16), ("demo", 32)), short=("demo", 16),
                 short_images=32, short_train_s=6, short_overhead_s=15, workers=0, speed_repeats=2),
}


# ---------------------------------------------------------------------------------------------------------
# Small helpers


def one_line(e: BaseException) -> str:
    """`Type: first line of the message`."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def write_json(path: Path, obj: Any) -> None:
    """Write atomically (a killed part leaves its last complete result, never half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def capability() -> str:
    """The GPU's compute capability, e.g. "9.0" on an H100 or H200."""
    major, minor = torch.cuda.get_device_capability(0)
    return f"{major}.{minor}"


def part_device(mode: str) -> torch.device:
    """Where a part runs: the GPU, or the CPU at toy sizes."""
    return torch.device("cuda" if mode == "gpu" else "cpu")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def write_dataset_zip(path: Path, n: int, resolution: int, seed: int = 0) -> Path:
    """A dataset zip in the train stage's format: n smooth random RGB PNGs and a dataset.json."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(n):
            coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            img = Image.fromarray(coarse, "RGB").resize((resolution, resolution), Image.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, format="PNG", compress_level=1)
            zf.writestr(f"{i // 1000:05d}/img{i:08d}.png", buf.getvalue())
        zf.writestr("dataset.json", json.dumps({"labels": None}))
    return path


@contextlib.contextmanager
def reference_ops() -> Iterator[None]:
    """Every fused op takes its reference path, as when the extensions are unavailable."""
    with mock.patch.object(build, "load_extension", lambda name, **_: None):
        yield


def kill_group(pgid: int) -> None:
    """SIGKILL a process group; nothing when it has already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


class Deadline:
    """The cooperative end of a part: stop starting new work shortly before the parent kills the part."""

    def __init__(self, at: float):
        self.at = at

    def left(self) -> float:
        return self.at - time.time()

    def passed(self, need: float = 0.0) -> bool:
        return self.left() < need


# ---------------------------------------------------------------------------------------------------------
# The op calls of the networks, traced from a forward pass


@dataclass(frozen=True)
class OpCall:
    """One distinct call of a fused op: its input shape, dtype and arguments."""

    op: str                                  # bias_act | upfirdn2d
    shape: tuple[int, ...]
    dtype: str                               # as the network ran it (float16 in the fp16 blocks on CUDA)
    args: tuple[tuple[str, Any], ...]        # keyword arguments except x, b / f and impl
    bias: bool = False                       # bias_act: a bias vector is passed
    filt: tuple[tuple[int, ...], tuple[float, ...]] | None = None   # upfirdn2d: filter shape and taps

    def describe(self) -> str:
        kw = dict(self.args)
        if self.op == "bias_act":
            extra = f"act={kw['act']} clamp={kw['clamp']}"
        else:
            extra = f"up={kw['up']} down={kw['down']} pad={kw['padding']} taps={self.filt and self.filt[0]}"
        return f"{self.op}[{','.join(map(str, self.shape))}] {extra}"

    def make(self, device: torch.device, dtype: torch.dtype,
             seed: int) -> tuple[Callable, list[torch.Tensor]]:
        """(fn(impl, *inputs) -> output, inputs requiring grad) for this call on random inputs."""
        gen = torch.Generator(device=device).manual_seed(seed)
        kw = dict(self.args)
        x = (torch.randn(self.shape, generator=gen, device=device) * 2).to(dtype).requires_grad_(True)
        if self.op == "bias_act":
            if not self.bias:
                return (lambda impl, x: ba_mod.bias_act(x, None, impl=impl, **kw)), [x]
            b = torch.randn(self.shape[kw["dim"]], generator=gen, device=device).to(dtype)
            b.requires_grad_(True)
            return (lambda impl, x, b: ba_mod.bias_act(x, b, impl=impl, **kw)), [x, b]
        f = None if self.filt is None else torch.tensor(self.filt[1], dtype=torch.float32,
                                                         device=device).reshape(self.filt[0])
        return (lambda impl, x: uf_mod.upfirdn2d(x, f, impl=impl, **kw)), [x]


def _frozen(v: Any) -> Any:
    return tuple(v) if isinstance(v, (list, tuple)) else v


@contextlib.contextmanager
def tracing(calls: collections.Counter) -> Iterator[None]:
    """Count every bias_act / upfirdn2d call (networks import them by name, the ops module calls its own)."""
    orig_ba, orig_uf = ba_mod.bias_act, uf_mod.upfirdn2d

    def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, impl="cuda"):
        args = (("dim", dim % x.ndim), ("act", act), ("alpha", alpha), ("gain", gain), ("clamp", clamp))
        calls[OpCall("bias_act", tuple(x.shape), dtype_name(x.dtype), args, bias=b is not None)] += 1
        return orig_ba(x, b, dim, act, alpha, gain, clamp, impl)

    def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl="cuda"):
        args = (("up", _frozen(up)), ("down", _frozen(down)), ("padding", _frozen(padding)),
                ("flip_filter", flip_filter), ("gain", gain))
        filt = None if f is None else (tuple(f.shape), tuple(float(v) for v in f.detach().flatten().cpu()))
        calls[OpCall("upfirdn2d", tuple(x.shape), dtype_name(x.dtype), args, filt=filt)] += 1
        return orig_uf(x, f, up, down, padding, flip_filter, gain, impl)

    with (mock.patch.object(ba_mod, "bias_act", bias_act), mock.patch.object(networks, "bias_act", bias_act),
          mock.patch.object(uf_mod, "upfirdn2d", upfirdn2d),
          mock.patch.object(networks, "upfirdn2d", upfirdn2d)):
        yield


def network_calls(name: str, resolution: int, device: torch.device) -> collections.Counter:
    """The op calls of one training-mode pass of G (mapping + synthesis), the ADA pipe (p = 1) and D at
    the config's batch per GPU, and of G at the path-length regulariser's smaller batch."""
    cfg = configs.make_config(name, resolution)
    torch.manual_seed(0)
    G, D = configs.build_networks(configs.network_spec(cfg))
    G, D = G.to(device).train(), D.to(device).train()
    pipe = augment.bgc_pipe().to(device)
    pipe.p.fill_(1.0)
    n = cfg.batch_gpu
    calls: collections.Counter = collections.Counter()
    with torch.no_grad(), tracing(calls):
        for batch in sorted({n, max(n // loop.PL_BATCH_SHRINK, 1)}, reverse=True):
            c = torch.zeros(batch, 0, device=device)
            img = G.synthesis(G.mapping(torch.randn(batch, G.z_dim, device=device), c))
            if batch == n:
                D(pipe(img.float()), c)
    del G, D, pipe
    return calls


# ---------------------------------------------------------------------------------------------------------
# Part: build

# A builder process: the project's build code with failures raised (and logged), never a silent fallback.
_BUILDER = ("import logging, sys; logging.basicConfig(level=logging.INFO); "
            "from corgigan.stylegan2.ops import build; build.set_require_cuda_ops(True); "
            "build.load_extension(sys.argv[1])")


def build_in_parallel(deadline: Deadline, ops: dict[str, dict], save: Callable[[], None]) -> list[str]:
    """Build every op in its own process, all at once (the build code lets concurrent builders share the
    cache); fill ops[op] with seconds and exit code; return the ops still building at the deadline."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        logs = {op: stack.enter_context(open(Path(tmp) / f"{op}.log", "wb+")) for op in build.OPS}
        # Each builder in its own session, so a kill reaches the ninja/nvcc processes it started too.
        pending = {op: subprocess.Popen([sys.executable, "-c", _BUILDER, op], stdout=logs[op],
                                        stderr=subprocess.STDOUT, start_new_session=True) for op in build.OPS}
        while pending and not deadline.passed():
            for op, proc in list(pending.items()):
                if proc.poll() is not None:
                    ops[op] = {"seconds": round(time.monotonic() - started, 1), "exit_code": proc.returncode}
                    del pending[op]
                    save()
            time.sleep(0.5)
        for op, proc in pending.items():
            kill_group(proc.pid)
            proc.wait()
            ops[op] = {"seconds": round(time.monotonic() - started, 1), "exit_code": None, "timed_out": True}
        for op, f in logs.items():
            f.seek(0)
            text = f.read().decode(errors="replace")
            log.info("--- build of %s:\n%s", op, text[-20000:])
            if ops[op]["exit_code"] != 0:
                ops[op]["log_tail"] = text.strip().splitlines()[-15:]
    return list(pending)


def part_build(mode: str, deadline: Deadline, result: dict, save: Callable[[], None], **_: Any) -> None:
    cache = build.cache_root()
    result["cache"] = str(cache)
    result["cache_was_empty"] = not (cache.exists() and any(cache.iterdir()))
    try:
        tools = build.find_toolchain()
        result["toolchain"] = {"cuda_home": tools.cuda_home, "nvcc": tools.nvcc_version,
                               "arch": tools.arch_list}
    except build.BuildError as e:
        result["toolchain"] = {"error": str(e).splitlines()[0]}
    if mode == "toy":
        result.update(status="skipped", reason="no CUDA device: nothing to build for")
        return
    result["gpu"] = {"name": torch.cuda.get_device_name(0), "capability": capability()}
    ops = result.setdefault("ops", {})
    pending = build_in_parallel(deadline, ops, save)
    if pending:
        result.update(status="timed_out", error=f"building {', '.join(pending)} ran past the time box")
        return
    for op in build.OPS:
        # A good build loads from the cache in this process (no compiling); a failed one is not retried.
        if ops[op]["exit_code"] == 0 and build.load_extension(op) is not None:
            ops[op]["status"] = "built"
        else:
            ops[op]["status"] = "not built"
    if cache.is_dir():
        result["cache_entries"] = sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))
    bad = {op: v["status"] for op, v in ops.items() if v["status"] != "built"}
    result["status"] = "failed" if bad else "passed"
    if bad:
        result["error"] = "; ".join(f"{op}: {s}" for op, s in bad.items())


# ---------------------------------------------------------------------------------------------------------
# Part: correctness


def compare(call: OpCall, dtype: torch.dtype, device: torch.device,
            seed: int) -> dict[str, tuple[float, float, bool]]:
    """{order: (max abs error, max error / the reference's largest magnitude, within tolerance)}, CUDA vs
    reference, as tests/test_ops.py compares them (ops.compare)."""
    tol = TOLERANCE[dtype]
    out: dict[str, tuple[float, float, bool]] = {}
    got_want = []
    for impl in ("cuda", "ref"):
        fn, inputs = call.make(device, dtype, seed)
        got_want.append(three_orders(lambda *t, fn=fn, impl=impl: fn(impl, *t), inputs, seed))
    n_in = (len(got_want[0]) - 1) // 2
    orders = ["forward"] + ["backward"] * n_in + ["double_backward"] * n_in
    for order, c, r in zip(orders, *got_want):
        err, rel, ok = agreement(c, r, tol)
        prev = out.get(order, (0.0, 0.0, True))
        out[order] = (max(prev[0], err), max(prev[1], rel), prev[2] and ok)
    return out


def load_cuda_ops(mode: str, ops_built: bool, result: dict) -> bool:
    """On the GPU, load both built ops with missing builds made errors (never a silent ref-vs-ref run);
    False, with the part marked skipped, when the build part did not build them."""
    if mode != "gpu":
        return True
    if not ops_built:
        result.update(status="skipped", reason=NOT_BUILT)
        return False
    build.set_require_cuda_ops(True)
    for op in build.OPS:
        build.load_extension(op)
    return True


def part_correctness(mode: str, deadline: Deadline, result: dict, save: Callable[[], None],
                     ops_built: bool = True, **_: Any) -> None:
    sizes = SIZES[mode]
    device = part_device(mode)
    if not load_cuda_ops(mode, ops_built, result):
        return
    if mode != "gpu":
        result["dry_run"] = "no CUDA device: both sides ran the reference path (errors are 0 by construction)"
    # The references' conv2d would use TF32 on the GPU (torch's default for cuDNN): ~1e-3 off in float32.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cases: dict[OpCall, int] = {}
    for name, res in sizes.trace:
        for call, count in network_calls(name, res, device).items():
            key = OpCall(call.op, call.shape, "", call.args, call.bias, call.filt)  # checked in both dtypes
            cases[key] = cases.get(key, 0) + count
    result["cases"] = len(cases)
    table = result.setdefault("errors", {})
    failures = result.setdefault("failures", [])
    done = 0
    for i, call in enumerate(sorted(cases, key=lambda c: (c.op, math.prod(c.shape)))):
        if deadline.passed(10):
            result.update(status="timed_out", error=f"stopped after {done} of {2 * len(cases)} comparisons")
            break
        for dtype in (torch.float32, torch.float16):
            name = dtype_name(dtype)
            row = table.setdefault(f"{call.op} {name}", {"op": call.op, "dtype": name, "cases": 0,
                                                          "tol": TOLERANCE[dtype], "max_abs": {},
                                                          "max_rel": {}})
            errors = compare(call, dtype, device, seed=i)
            row["cases"] += 1
            for order, (err, rel, ok) in errors.items():
                row["max_abs"][order] = max(row["max_abs"].get(order, 0.0), err)
                row["max_rel"][order] = max(row["max_rel"].get(order, 0.0), rel)
                if not ok:
                    row["passed"] = False
                    failures.append(f"{call.describe()} {name} {order}: abs {err:.3g}, rel {rel:.3g}")
            done += 1
        if device.type == "cuda":
            torch.cuda.empty_cache()
        save()
    for row in table.values():
        row.setdefault("passed", True)
    result["pytest"] = run_pytest(deadline)
    save()
    if "status" in result:
        return
    if result["pytest"].get("timed_out"):
        result.update(status="timed_out", error="the pytest run of tests/test_ops.py ran out of time")
        return
    if failures or result["pytest"].get("exit_code") not in (0, None):  # None: pytest is not here
        result["status"] = "failed"
    else:
        result["status"] = "passed" if mode == "gpu" else "skipped"


def run_pytest(deadline: Deadline) -> dict[str, Any]:
    """The CUDA tests of tests/test_ops.py, as the device runs them: no conftest, no plugins, no addopts."""
    if importlib.util.find_spec("pytest") is None:
        return {"exit_code": None, "summary": "pytest is not installed: not run"}
    if not (ROOT / "tests" / "test_ops.py").is_file():
        return {"exit_code": None, "summary": "tests/test_ops.py is not here: not run"}
    if deadline.passed(20):
        return {"exit_code": None, "summary": "no time left: not run"}
    cmd = [sys.executable, "-m", "pytest", "tests/test_ops.py", "-q", "--noconftest", "-o", "addopts=",
           "-p", "no:cacheprovider", "-k", "cuda_matches_ref or cuda_gradgradcheck or cuda_cases"]
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=max(deadline.left() - 5, 5), check=False)
    except subprocess.TimeoutExpired:
        return {"exit_code": None, "summary": "timed out", "timed_out": True}
    log.info("--- pytest:\n%s%s", proc.stdout[-20000:], proc.stderr[-5000:])
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    summary = lines[-1].strip("= ") if lines else proc.stderr.strip()[-300:]
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))][:10]
    return {"exit_code": proc.returncode, "summary": summary, "failed": failed}


# ---------------------------------------------------------------------------------------------------------
# Part: op speed


def time_ms(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Median milliseconds of fn() after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def forward_backward(call: OpCall, impl: str, device: torch.device) -> Callable[[], None]:
    fn, inputs = call.make(device, getattr(torch, call.dtype), seed=0)
    dy = torch.randn_like(fn("ref", *inputs))

    def step() -> None:
        fn(impl, *inputs).backward(dy)
        for t in inputs:
            t.grad = None

    return step


def part_op_speed(mode: str, deadline: Deadline, result: dict, save: Callable[[], None],
                  ops_built: bool = True, **_: Any) -> None:
    sizes = SIZES[mode]
    device = part_device(mode)
    if not load_cuda_ops(mode, ops_built, result):
        return
    if mode == "gpu":
        # Off, unlike training: autotuning every one of ~100 shapes would eat the time box. The reference
        # path's convolutions then run cuDNN's heuristic choice; train_speed measures them autotuned.
        torch.backends.cudnn.benchmark = False
        result["cudnn_benchmark"] = False
    else:
        result["dry_run"] = "no CUDA device: both sides ran the reference path"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = result.setdefault("networks", [])
    costliest = result.setdefault("costliest_calls", [])
    for name, res in sizes.trace:
        calls = network_calls(name, res, device)
        per_op: dict[str, dict[str, float]] = {}
        for call, count in sorted(calls.items(), key=lambda kv: -math.prod(kv[0].shape)):
            if deadline.passed(5):
                result.update(status="timed_out", error=f"stopped in {name} at {res} px")
                save()
                return
            cuda_ms = time_ms(forward_backward(call, "cuda", device), device, sizes.speed_repeats)
            ref_ms = time_ms(forward_backward(call, "ref", device), device, sizes.speed_repeats)
            agg = per_op.setdefault(call.op, {"calls": 0, "cuda_ms": 0.0, "ref_ms": 0.0})
            agg["calls"] += count
            agg["cuda_ms"] += cuda_ms * count
            agg["ref_ms"] += ref_ms * count
            costliest.append({"config": name, "call": call.describe(), "dtype": call.dtype, "count": count,
                            "cuda_ms": round(cuda_ms, 4), "ref_ms": round(ref_ms, 4),
                            "ratio": round(ref_ms / max(cuda_ms, 1e-9), 2)})
            if device.type == "cuda":
                torch.cuda.empty_cache()
        for op, agg in sorted(per_op.items()):
            rows.append({"config": name, "resolution": res, "op": op, "calls": agg["calls"],
                         "cuda_ms": round(agg["cuda_ms"], 3), "ref_ms": round(agg["ref_ms"], 3),
                         "ratio": round(agg["ref_ms"] / max(agg["cuda_ms"], 1e-9), 2)})
        save()
    costliest.sort(key=lambda r: -r["ref_ms"] * r["count"])
    del costliest[12:]  # the calls that cost most per network pass on the reference path
    result["status"] = "passed" if mode == "gpu" else "skipped"


# ---------------------------------------------------------------------------------------------------------
# Part: training speed


def make_trainer(cfg: configs.TrainingConfig, dataset_path: Path, device: torch.device) -> loop._Trainer:
    """The loop's own trainer, set up as training_loop sets it up, with the ADA pipe at a fixed p."""
    run = {"seed": 0, "augment": "fixed", "augment_p": ADA_P, "ada_target": 0.6, "mirror": False,
           "resume_from": ""}
    return loop._Trainer(ZipDataset(dataset_path), dataset_hash(dataset_path), cfg, run, device, 0, 1)


def measure_step(cfg: configs.TrainingConfig, dataset_path: Path, device: torch.device,
                 deadline: Deadline) -> dict[str, Any]:
    """sec/kimg, images/s and peak memory of TIMED_STEPS real training steps after WARMUP_STEPS."""
    trainer = make_trainer(cfg, dataset_path, device)
    gen = torch.Generator().manual_seed(0)
    reals = [(torch.randint(0, 256, (cfg.batch_gpu, 3, cfg.resolution, cfg.resolution), generator=gen,
                            dtype=torch.uint8), torch.zeros(cfg.batch_gpu, 0)) for _ in range(trainer.rounds)]
    if device.type == "cuda":
        reals = [(img.pin_memory(), c) for img, c in reals]
        torch.cuda.reset_peak_memory_stats(device)

    def one_step() -> None:
        trainer.check_finite(trainer.step(reals))
        trainer.after_step()

    t0 = time.perf_counter()
    for _ in range(WARMUP_STEPS):
        one_step()
    sync(device)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(TIMED_STEPS):
        if deadline.passed(2):
            raise TimeoutError(f"out of time after {i} of {TIMED_STEPS} timed steps")
        one_step()
    sync(device)
    seconds = time.perf_counter() - t0
    images = TIMED_STEPS * cfg.batch
    out = {"batch": cfg.batch, "batch_gpu": cfg.batch_gpu, "steps": TIMED_STEPS,
           "sec_per_kimg": round(seconds / images * 1000, 3), "images_per_s": round(images / seconds, 2),
           "warmup_s": round(warmup_s, 2), "peak_memory_gb": round(loop.peak_memory_gb(device), 3)}
    return out


def part_train_speed(mode: str, deadline: Deadline, result: dict, save: Callable[[], None],
                     ops_built: bool = True, **_: Any) -> None:
    sizes = SIZES[mode]
    device = part_device(mode)
    rows = result.setdefault("rows", [])
    work = Path(tempfile.mkdtemp(prefix="gpu-check-train-"))
    try:
        plans = [(name, res, impl, False, True) for impl in ("cuda", "ref") for name, res in sizes.train]
        if mode == "gpu":
            plans += [(name, res, "cuda", True, False) for name, res in sizes.train]  # optional: TF32 on
        for name, res, impl, tf32, required in plans:
            row: dict[str, Any] = {"config": name, "resolution": res, "impl": impl, "tf32": tf32}
            rows.append(row)
            if impl == "cuda" and mode != "gpu":
                row["skipped"] = "no CUDA device"
                continue
            if impl == "cuda" and not ops_built:
                row["skipped"] = NOT_BUILT
                continue
            if deadline.passed(15 if required else 60 if res >= 1024 else 40):
                row["skipped"] = "no time left"
                if required:
                    result.update(status="timed_out", error=f"no time left for {name} {impl}")
                continue
            zip_path = work / f"{res}.zip"
            if not zip_path.exists():
                write_dataset_zip(zip_path, 4, res)
            cfg = configs.make_config(name, res)
            try:
                # A reference row's set-up runs on the reference path too: it needs no ops, builds none.
                with reference_ops() if impl == "ref" else contextlib.nullcontext():
                    if mode == "gpu":
                        loop._cuda_setup(device, require_cuda_ops=impl == "cuda", allow_tf32=tf32)
                    row.update(measure_step(cfg, zip_path, device, deadline))
            except Exception as e:  # out of time, or e.g. out of memory: the later rows still run
                timed_out = isinstance(e, TimeoutError)
                row["skipped"] = str(e) if timed_out else one_line(e)
                if required:  # an optional row (TF32) fails nothing
                    result.update(status="timed_out" if timed_out else "failed",
                                  error=f"{name} {impl}: {row['skipped']}")
            gc.collect()  # the row's networks and optimiser states go before the next row's
            if device.type == "cuda":
                torch.cuda.empty_cache()
            log.info("train speed %s", row)
            save()
        by = {(r["config"], r["resolution"], r["impl"], r["tf32"]): r for r in rows if "sec_per_kimg" in r}
        for r in rows:
            cuda = by.get((r["config"], r["resolution"], "cuda", False))
            if "sec_per_kimg" in r and cuda is not None and r is not cuda:
                r["vs_cuda"] = round(r["sec_per_kimg"] / cuda["sec_per_kimg"], 3)
        result.setdefault("status", "passed")
        if mode != "gpu":
            result["cuda_skipped"] = True
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# Part: a short real run


def part_short_run(mode: str, deadline: Deadline, result: dict, save: Callable[[], None],
                   sec_per_kimg: float | None = None, ops_built: bool = True, **_: Any) -> None:
    sizes = SIZES[mode]
    name, res = sizes.short
    cfg = configs.make_config(name, res)
    spk = sec_per_kimg or (8.0 if mode == "gpu" else 40.0)   # a guess when train_speed did not run
    train_s = max(min(sizes.short_train_s, deadline.left() - sizes.short_overhead_s), 4)
    steps = max(int(train_s / 2 / (spk * cfg.batch / 1000)), 8)   # per call
    half_kimg = steps * cfg.batch / 1000
    result.update(config=name, resolution=res, batch=cfg.batch, kimg_per_call=half_kimg,
                  planned_train_s=round(2 * steps * spk * cfg.batch / 1000, 1))
    work = Path(tempfile.mkdtemp(prefix="gpu-check-run-"))
    try:
        dataset = write_dataset_zip(work / "data.zip", sizes.short_images, res)
        run_dir = work / "run"
        ticks, starts = result.setdefault("ticks", []), result.setdefault("starts", [])

        def on_tick(tick: int, stats: dict[str, float]) -> None:
            ticks.append({"tick": tick, "kimg": stats["Progress/kimg"], "G": stats.get("Loss/G/loss"),
                          "D": stats.get("Loss/D/loss"), "r1": stats.get("Loss/r1"),
                          "pl": stats.get("Loss/pl"), "p": stats["ADA/p"],
                          "sec_per_kimg": stats["Timing/sec_per_kimg"]})
            save()

        hooks = loop.Hooks(on_start=lambda info: starts.append(dict(info)), on_tick=on_tick)
        kw = dict(seed=0, augment="ada", augment_p=0.1, ada_target=0.6, mirror=False, workers=sizes.workers,
                  device="cuda" if mode == "gpu" else "cpu", require_cuda_ops=mode == "gpu" and ops_built,
                  tick_kimg=half_kimg / 3, hooks=hooks)
        if mode == "gpu" and not ops_built:
            result["ops"] = "reference path: " + NOT_BUILT
        with contextlib.nullcontext() if ops_built else reference_ops():
            t0 = time.perf_counter()
            first = loop.training_loop(dataset, run_dir, cfg, kimg=half_kimg, snapshot_kimg=half_kimg, **kw)
            result["first_call_s"] = round(time.perf_counter() - t0, 1)
            save()
            t0 = time.perf_counter()
            last = loop.training_loop(dataset, run_dir, cfg, kimg=2 * half_kimg, snapshot_kimg=half_kimg,
                                      **kw)
            result["second_call_s"] = round(time.perf_counter() - t0, 1)
        a, b = load_snapshot(first), load_snapshot(last)
        losses = [t[k] for t in ticks for k in ("G", "D", "r1", "pl") if t.get(k) is not None]
        checks = {
            "losses_finite": bool(losses) and all(math.isfinite(v) for v in losses),
            "snapshots_written": [p.name for _, p in list_snapshots(run_dir)] == [first.name, last.name],
            "second_call_resumed": len(starts) == 2 and starts[1]["resumed"]
                                   and starts[1]["nimg"] == a["progress"]["nimg"],
            "trained_to_the_end": b["progress"]["nimg"] == round(2 * half_kimg * 1000),
            "p_moved": a["augment_p"] != 0.1 and b["augment_p"] != a["augment_p"],
        }
        result.update(checks=checks, p=[0.1, a["augment_p"], b["augment_p"]],
                      snapshots=[first.name, last.name], snapshot_mb=round(last.stat().st_size / 2**20, 1))
        result["status"] = "passed" if all(checks.values()) else "failed"
        if not all(checks.values()):
            result["error"] = "failed checks: " + ", ".join(k for k, v in checks.items() if not v)
    finally:
        shutil.rmtree(work, ignore_errors=True)


PART_FUNCS = {"build": part_build, "correctness": part_correctness, "op_speed": part_op_speed,
              "train_speed": part_train_speed, "short_run": part_short_run}


def run_part(args: argparse.Namespace) -> int:
    """Child process: run one part, saving its result after every step of progress."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    result: dict[str, Any] = {}
    path = Path(args.result)

    def save() -> None:
        write_json(path, result)

    if args.mode == "toy":
        torch.set_num_threads(1)  # toy networks run fastest on one thread; OpenMP spins on a busy machine
    t0 = time.perf_counter()
    try:
        PART_FUNCS[args.part](args.mode, Deadline(args.deadline), result, save,
                              sec_per_kimg=args.sec_per_kimg, ops_built=bool(args.ops_built))
    except Exception as e:  # recorded with its one-line error; the parent goes on with the next part
        log.error("part %s raised:\n%s", args.part, traceback.format_exc())
        result.update(status="error", error=one_line(e))
    result.setdefault("status", "passed")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    save()
    return 0


# ---------------------------------------------------------------------------------------------------------
# The parent: parts in order, each in a child process with a time box


def machine_info(mode: str) -> dict[str, Any]:
    info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "numpy": np.__version__, "pillow": PIL.__version__, "cpus": os.cpu_count(),
            "platform": platform.platform()}
    if mode == "gpu":
        info.update(device=torch.cuda.get_device_name(0), capability=capability(),
                    gpu_memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    else:
        info["device"] = "cpu"
    return info


def launch(part: str, mode: str, timeout: float, work: Path, env: dict[str, str], log_file: Path,
           sec_per_kimg: float | None, ops_built: bool) -> dict[str, Any]:
    """Run one part in a child process, killed after `timeout` seconds; return its result."""
    result_path = work / f"{part}.json"
    deadline = time.time() + timeout - 5  # the child stops starting work 5 s before it is killed
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--mode", mode,
           "--result", str(result_path), "--deadline", str(deadline)]
    if sec_per_kimg:
        cmd += ["--sec-per-kimg", str(sec_per_kimg)]
    if not ops_built:
        cmd += ["--ops-built", "0"]
    out_path = work / f"{part}.out"
    t0 = time.perf_counter()
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        # The part, if still running, and whatever it started and left (compilers, DataLoader workers).
        kill_group(proc.pid)
        proc.wait()
    seconds = time.perf_counter() - t0
    text = out_path.read_bytes()[-LOG_LIMIT:].decode(errors="replace")
    with open(log_file, "a") as f:
        f.write(f"\n===== {part} ({mode}), {seconds:.1f} s, exit code {rc}\n{text}\n")
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError):
        result = {}
    if rc is None:
        result.update(status="timed_out",
                      error=result.get("error") or f"killed after its {timeout:.0f} s box")
    elif rc != 0 or "status" not in result:
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or [""]
        result.update(status="error", error=f"exit code {rc}: {last[0][:300]}")
    result["wall_s"] = round(seconds, 1)
    result["box_s"] = round(timeout)
    return result


def main_parent(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    mode = "toy" if args.toy or not torch.cuda.is_available() else "gpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = out / "gpu-check.log"
    log_file.write_text("")
    budget = args.budget or BUDGET_S[mode]
    started = time.time()
    report: dict[str, Any] = {
        "tool": "corgigan gpu-check", "format": REPORT_FORMAT, "mode": mode,
        "cuda_skipped": mode != "gpu",
        "reason": ("" if mode == "gpu" else "--toy" if torch.cuda.is_available()
                   else "no CUDA device: toy sizes on the CPU, CUDA parts skipped"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_s": budget, "machine": machine_info(mode),
        "parts": {},
    }
    log.info("corgigan gpu-check: %s mode on %s, torch %s, budget %d s", mode, report["machine"]["device"],
             torch.__version__, budget)
    if mode != "gpu":
        log.info("CUDA PARTS SKIPPED (%s)", report["reason"])
    parts = [p for p in PARTS if p in args.parts.split(",")] if args.parts else list(PARTS)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    cache = Path(args.ext_cache) if args.ext_cache else work / "ext-cache"  # empty: every build from scratch
    env["CORGIGAN_EXT_CACHE"] = str(cache)
    try:
        boxes = BOXES[mode]
        for i, part in enumerate(parts):
            later = sum(boxes[p][1] for p in parts[i + 1:])
            left = budget - (time.time() - started)
            timeout = min(boxes[part][0], left - later)
            if timeout < boxes[part][1]:
                report["parts"][part] = {
                    "status": "timed_out",
                    "error": f"only {max(left, 0):.0f} s of the budget left (needs {boxes[part][1]} s, "
                             f"and {later} s for later parts)"}
            else:
                # Without a good build the later parts use the reference path rather than build again.
                ops_built = report["parts"].get("build", {}).get("status", "passed") in ("passed", "skipped")
                spk = _short_run_speed(report["parts"].get("train_speed"), mode, ops_built)
                report["parts"][part] = launch(part, mode, timeout, work, env, log_file, spk, ops_built)
            r = report["parts"][part]
            log.info("part %-12s %-9s %6.1f s  %s", part, r["status"], r.get("wall_s", 0), summary(part, r))
            report["seconds"] = round(time.time() - started, 1)
            write_json(out / "report.json", report)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # parts' temporary results and the fresh build cache
    statuses = [r["status"] for r in report["parts"].values()]
    report["passed"] = all(s in ("passed", "skipped") for s in statuses)
    report["exit_code"] = 0 if report["passed"] else 1
    report["seconds"] = round(time.time() - started, 1)
    write_json(out / "report.json", report)
    text = format_report(report)
    (out / "report.txt").write_text(text + "\n")
    for line in text.splitlines():
        log.info("%s", line)
    return report["exit_code"]


def _short_run_speed(train: dict[str, Any] | None, mode: str, ops_built: bool) -> float | None:
    """sec/kimg of the short run's config from the training-speed rows (the CUDA row on a GPU with the
    ops built, else the reference row, which is what the short run then uses)."""
    if not train:
        return None
    name, res = SIZES[mode].short
    impl = "cuda" if mode == "gpu" and ops_built else "ref"
    for r in train.get("rows", []):
        if (r["config"], r["resolution"], r["impl"], r["tf32"]) == (name, res, impl, False) \
                and "sec_per_kimg" in r:
            return float(r["sec_per_kimg"])
    return None


# ---------------------------------------------------------------------------------------------------------
# The compact report


def summary(part: str, r: dict[str, Any]) -> str:
    """One line per part."""
    if r.get("error"):
        return str(r["error"])[:200]
    if part == "build":
        if r["status"] == "skipped":
            return r.get("reason", "")
        ops = ", ".join(f"{op} {v['seconds']:.0f} s" for op, v in r.get("ops", {}).items())
        return f"{ops}; arch {r.get('toolchain', {}).get('arch')}, nvcc {r.get('toolchain', {}).get('nvcc')}"
    if part == "correctness":
        py = r.get("pytest", {}).get("summary", "")
        dry = " (dry run)" if "dry_run" in r else ""
        return f"{r.get('cases', 0)} distinct op calls x 2 dtypes{dry}; pytest: {py}"
    if part == "op_speed":
        return "; ".join(f"{n['config']} {n['op']} {n['ratio']}x" for n in r.get("networks", [])) + (
            " (dry run)" if "dry_run" in r else "")
    if part == "train_speed":
        return "; ".join(f"{x['config']}@{x['resolution']} {x['impl']}{' tf32' if x['tf32'] else ''} "
                         f"{x['sec_per_kimg']:.2f} s/kimg" for x in r.get("rows", []) if "sec_per_kimg" in x)
    if part == "short_run" and "p" in r:
        return (f"{2 * r['kimg_per_call']:.3f} kimg at {r['resolution']} px, p {r['p'][0]:.4f} -> "
                f"{r['p'][2]:.4f}, resumed at {r['kimg_per_call']:.3f} kimg")
    return ""


def _num(v: float | None) -> float:
    return math.nan if v is None else v


def format_report(report: dict[str, Any]) -> str:
    """The table logged at the end and written to report.txt."""
    m, parts = report["machine"], report["parts"]
    lines = [f"corgigan gpu-check: {report['mode']} mode, {m['device']}"
             + (f" (sm {m['capability']})" if "capability" in m else "")
             + f", torch {m['torch']} (CUDA {m['torch_cuda']}), "
               f"{report['seconds']:.0f} s of {report['budget_s']:.0f} s"]
    if report["cuda_skipped"]:
        lines.append(f"CUDA PARTS SKIPPED: {report['reason']}")
    lines += ["", f"{'part':<12} {'status':<10} {'seconds':>7}  summary"]
    for part, r in parts.items():
        lines.append(f"{part:<12} {r['status']:<10} {r.get('wall_s', 0):>7.1f}  {summary(part, r)}")
    corr = parts.get("correctness", {})
    if corr.get("errors"):
        lines += ["", "correctness, CUDA vs reference (max error / the reference's largest magnitude):",
                  f"  {'op':<10} {'dtype':<8} {'cases':>5} {'forward':>9} {'backward':>9} {'2nd order':>9} "
                  f"{'max abs':>9} {'tol':>7}  ok"]
        for row in corr["errors"].values():
            rel, ab = row["max_rel"], row["max_abs"]
            lines.append(f"  {row['op']:<10} {row['dtype']:<8} {row['cases']:>5} "
                         f"{rel.get('forward', 0):>9.2e} "
                         f"{rel.get('backward', 0):>9.2e} {rel.get('double_backward', 0):>9.2e} "
                         f"{max(ab.values(), default=0):>9.2e} {row['tol']:>7.0e}  {row.get('passed')}")
        lines += [f"  FAIL {f}" for f in corr.get("failures", [])[:10]]
    ops = parts.get("op_speed", {})
    if ops.get("networks"):
        lines += ["", "op speed, forward + backward of every call in one network pass:",
                  f"  {'config':<10} {'op':<10} {'calls':>5} {'cuda ms':>9} {'ref ms':>9} {'ref/cuda':>8}"]
        lines += [f"  {n['config']:<10} {n['op']:<10} {n['calls']:>5} {n['cuda_ms']:>9.2f} "
                  f"{n['ref_ms']:>9.2f} "
                  f"{n['ratio']:>7.2f}x" for n in ops["networks"]]
    train = parts.get("train_speed", {})
    if train.get("rows"):
        lines += ["", "training speed, the loop's step (16 minibatches, lazy reg amortised, ADA p = 0.5):",
                  f"  {'config':<10} {'px':>5} {'ops':<9} {'batch':>5} {'sec/kimg':>9} {'img/s':>8} "
                  f"{'peak GB':>8} {'vs cuda':>8}"]
        for x in train["rows"]:
            ops_label = x["impl"] + (" tf32" if x["tf32"] else "")
            if "sec_per_kimg" not in x:
                lines.append(f"  {x['config']:<10} {x['resolution']:>5} {ops_label:<9} "
                             f"skipped: {x.get('skipped')}")
                continue
            vs = f"{x['vs_cuda']:.2f}x" if "vs_cuda" in x else ""
            lines.append(f"  {x['config']:<10} {x['resolution']:>5} {ops_label:<9} {x['batch']:>5} "
                         f"{x['sec_per_kimg']:>9.2f} {x['images_per_s']:>8.1f} "
                         f"{x['peak_memory_gb']:>8.2f} {vs:>8}")
    run = parts.get("short_run", {})
    if run.get("ticks"):
        lines += ["", f"short run ({run['config']} at {run['resolution']} px; two calls, the second "
                      "resumes):",
                  f"  {'kimg':>8} {'G loss':>8} {'D loss':>8} {'p':>8} {'sec/kimg':>9}"]
        lines += [f"  {t['kimg']:>8.3f} {_num(t['G']):>8.3f} {_num(t['D']):>8.3f} {t['p']:>8.4f} "
                  f"{t['sec_per_kimg']:>9.2f}" for t in run["ticks"]]
        if "checks" in run:
            checks = run["checks"].items()
            lines.append("  checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in checks))
    lines += ["", f"result: {'PASSED' if report['passed'] else 'FAILED'} (exit code {report['exit_code']})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports/gpu-check", help="folder for report.json, report.txt, log")
    parser.add_argument("--toy", action="store_true", help="toy sizes even where a GPU is present")
    parser.add_argument("--parts", default="", help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--budget", type=float, default=0, help="total seconds (default: 475 GPU, 110 toy)")
    parser.add_argument("--ext-cache", default="", help="reuse this build cache (default: a new empty one)")
    # Used by the parent to start one part in a child process.
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("gpu", "toy"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--sec-per-kimg", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ops-built", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return run_part(args) if args.part else main_parent(args)


if __name__ == "__main__":
    sys.exit(main())
