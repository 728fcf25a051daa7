"""Multi-process training with torch.distributed: NCCL on GPUs, gloo on CPU.

A job is started either by `torchrun` (several machines, with a rendezvous) or, on one machine, by
`launch_local`: torch's elastic launcher (what torchrun runs) called from Python, so one command starts
one worker per device itself.

Gradients are averaged by hand (flatten, all-reduce, unflatten) rather than through
DistributedDataParallel: R1 and path-length regularisation need double backward, which DDP does not
support, and G's mapping and synthesis are called separately. Every function here is a no-op in a
single process, so the training loop is written once.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0          # global rank; rank 0 writes snapshots, grids and metrics
    world_size: int = 1    # number of processes
    local_rank: int = 0    # rank on this node: the CUDA device index

    @property
    def is_main(self) -> bool:
        """True on the process that writes files."""
        return self.rank == 0


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

    Without WORLD_SIZE > 1 this is a single process and nothing is initialised.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), world, backend)
    return current()


def launched() -> bool:
    """True inside a job a launcher started (torchrun or launch_local set WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


class WorkerError(RuntimeError):
    """A worker's failure that launch_local reports by its message alone (no traceback): what a worker
    raises for a failure the user can fix. Raising, not returning, matters: the launcher stops the other
    workers only when one raises; a worker that returns leaves its peers waiting in a collective until the
    backend's timeout (30 minutes)."""


# torch's elastic launcher logs every failed worker's traceback through this logger; launch_local reports
# the failure itself (one line for a WorkerError, the traceback otherwise).
_ELASTIC_LOGGER = "torch.distributed.elastic.multiprocessing.api"


def launch_local(nprocs: int, fn: Callable[..., Any], *args: Any) -> dict[int, Any]:
    """Run fn(*args) in `nprocs` new processes on this machine with torch's elastic launcher, as
    `torchrun --standalone --nproc_per_node nprocs` would; return rank -> fn's return value.

    The workers find RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous in their environment (init_from_env).
    `fn` and `args` must be picklable (the workers are spawned). A worker that raises fails the job, after
    the others have been stopped: a WorkerError in any worker is raised here as WorkerError(its message);
    anything else logs the first failed worker's traceback and raises torch's ChildFailedError. No
    restarts: a failed training step fails again, and a resumed run restarts from the last snapshot on
    the next `dvc repro` anyway.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nprocs, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=1.0)
    elastic_log = logging.getLogger(_ELASTIC_LOGGER)
    level = elastic_log.level
    elastic_log.setLevel(logging.CRITICAL)
    try:
        return elastic_launch(config, fn)(*args)
    except ChildFailedError as e:
        raise _root_cause(e) from None
    finally:
        elastic_log.setLevel(level)


# How torch's error file names an exception: "<class name>: <message>".
_WORKER_ERROR_PREFIX = f"{WorkerError.__name__}: "


def _root_cause(err: Any) -> Exception:
    """The exception to report for torch's ChildFailedError `err`: a WorkerError of whichever worker
    raised one (a peer's failure is often only the consequence: its collective lost a partner), else
    `err` itself, after logging the earliest failure's traceback."""
    failures = []
    for rank, failure in err.failures.items():
        message = failure.message
        text = message.get("message", "") if isinstance(message, dict) else str(message)
        stack = message.get("extraInfo", {}).get("py_callstack", "") if isinstance(message, dict) else ""
        other = not text.startswith(_WORKER_ERROR_PREFIX)
        failures.append((other, failure.timestamp, rank, text, stack))
    other, _, rank, text, stack = min(failures)
    if not other:
        return WorkerError(text.removeprefix(_WORKER_ERROR_PREFIX))
    log.error("worker rank %d failed: %s\n%s", rank, text, stack)
    return err


def current() -> DistInfo:
    """This process's rank and world size (a single process when no group is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def shutdown() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if current().world_size > 1:
        dist.barrier()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place and return it."""
    if current().world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite `tensors` on every rank with rank `src`'s values (one call per dtype and device)."""
    if current().world_size <= 1:
        return
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.detach().flatten() for t in group])
        dist.broadcast(flat, src=src)
        offset = 0
        for t in group:
            with torch.no_grad():
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def reduce_gradients_(params: Iterable[torch.nn.Parameter], divisor: float) -> None:
    """Sum the gradients of `params` over ranks, divide by `divisor`, replace NaN/inf by finite values.

    Missing gradients count as zeros so that every rank reduces the same flat vector. The NaN/inf
    clean-up keeps an overflowing fp16 step from poisoning the weights; losses are checked separately.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.flatten() for p in params])
    all_reduce_sum_(flat)
    flat.div_(divisor)
    torch.nan_to_num(flat, nan=0.0, posinf=1e5, neginf=-1e5, out=flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n
