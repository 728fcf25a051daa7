"""Run every benchmark in this folder (`make bench`), or those named: `python -m benchmarks.run ops train`.

Each bench_<topic>.py runs as `python -m benchmarks.bench_<topic>` and prints its own figures as ratios
against a baseline measured in the same run.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("benchmarks")


def topics() -> list[str]:
    """The benchmark topics present: bench_<topic>.py files beside this one."""
    return sorted(p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py"))


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    chosen = argv or topics()
    unknown = sorted(set(chosen) - set(topics()))
    if unknown:
        log.error("unknown benchmark(s) %s; available: %s", ", ".join(unknown), ", ".join(topics()))
        return 2
    for topic in chosen:
        log.info("=== %s", topic)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", f"benchmarks.bench_{topic}"], check=False)
        if proc.returncode != 0:
            log.error("%s failed with exit code %d", topic, proc.returncode)
            return proc.returncode
        log.info("=== %s done in %.0f s", topic, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
