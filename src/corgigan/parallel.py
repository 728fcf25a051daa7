"""Process-pool helpers shared by the data stages: ordered results, bounded memory."""

from __future__ import annotations

import collections
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def workers() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def ordered_map(fn: Callable[[T], R], tasks: Iterable[T], processes: int,
                max_pending: int | None = None) -> Iterator[R]:
    """Map `fn` over `tasks` in a process pool, yielding results in task order.

    At most `max_pending` tasks (default 2 per process) are in flight, so results never pile up in
    memory when the consumer is slower than the workers. With one process it runs inline.
    """
    if processes <= 1:
        yield from map(fn, tasks)
        return
    max_pending = max_pending or 2 * processes
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pending: collections.deque[Any] = collections.deque()
        for task in tasks:
            pending.append(pool.apply_async(fn, (task,)))
            if len(pending) >= max_pending:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
