"""Benchmark: how long the dataset part of a train start, a resume and an evaluation takes on a 1024-px zip.

A zip of --members stored 1024-px PNG members of about --member-mb MB each (the measured photo crops are
0.5-1.5 MB; the original run's 214 GB zip of 136,255 crops is ~1.57 MB a member), written once into a
temporary folder. Wall seconds (time.perf_counter), best of --repeats, with the zip's pages dropped from
the page cache before each run (posix_fadvise DONTNEED, "cold": what a resume after a reboot or of a zip
larger than RAM sees) and again with them cached ("warm"). Baseline, measured in the same run: what the
code did before the identity came from the zip's directory, i.e. each of the train stage and the loop
constructing a ZipDataset that reads every member's PNG header, plus the sha256 of the whole file
(`file_sha256`, the old `dataset_hash`); evaluate hashed the file again. Against it:
  * resume: the stage's and the loop's `ZipDataset(check_members=False)` (directory, labels, the first
    image) and the identity; no other image is read;
  * fresh run: the same plus one `check_members` (a run new to its data checks every header once);
  * evaluation: `dataset_hash` (the directory) against `file_sha256`.
Measured at --members and a tenth of it, each cost is split into a fixed and a per-member part and
scaled to 10,000 and 136,255 members.

    python -m benchmarks.bench_dataset_identity [--members 2000] [--member-mb 1.57] [--repeats 2]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from corgigan.stylegan2 import data as data_mod
from corgigan.stylegan2.data import ZipDataset, dataset_hash, file_sha256

log = logging.getLogger("bench_dataset_identity")

RES = 1024
DISTINCT = 8            # distinct member images cycled through the zip (costs depend on sizes, not pixels)
SCALES = (10_000, 136_255)


def member_png(seed: int, target_mb: float) -> bytes:
    """A 1024-px RGB PNG of roughly `target_mb` MB: a gradient with noise of a tuned amplitude."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, RES, dtype=np.float32)
    base = (ramp[None, :, None] + ramp[:, None, None] * 0.2).repeat(3, axis=2)
    lo, hi = 1, 255
    best = b""
    for _ in range(8):   # bisect the noise amplitude towards the target size
        amp = (lo + hi) // 2
        noise = rng.integers(0, amp + 1, (RES, RES, 3))
        arr = np.clip(base + noise, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
        best = buf.getvalue()
        if len(best) / 1e6 < target_mb:
            lo = amp + 1
        else:
            hi = amp
    return best


def write_zip(path: Path, members: int, pngs: list[bytes]) -> None:
    """The dataset stage's layout (stored members, dataset.json), `members` images cycling `pngs`."""
    with zipfile.ZipFile(path, "w", allowZip64=True) as zf:
        for i in range(members):
            zf.writestr(f"{i // 1000:05d}/img{i:08d}.png", pngs[i % len(pngs)])
        zf.writestr("dataset.json", '{"labels": null}\n')
    with path.open("rb") as f:
        os.fsync(f.fileno())


def drop_cache(path: Path) -> None:
    """Evict the file's pages from the page cache (clean pages only: the file was fsynced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def best_seconds(fn: Callable[[], object], repeats: int, before: Callable[[], None]) -> float:
    """The fastest of `repeats` timings of fn(), each after before()."""
    times = []
    for _ in range(repeats):
        before()
        data_mod._CHECKED.clear()        # every start is a new process: nothing checked or hashed yet
        data_mod._FILE_DIGESTS.clear()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def old_train_start(path: Path) -> None:
    """Before: the stage and the loop each read every header (no memo then), and the file was hashed."""
    ZipDataset(path)
    data_mod._CHECKED.clear()
    ZipDataset(path)
    file_sha256(path)


def new_resume(path: Path) -> None:
    """After, resuming on the same data: two directory reads (each computes the identity); no member is
    checked."""
    ZipDataset(path, check_members=False)
    ZipDataset(path, check_members=False)


def new_fresh(path: Path) -> None:
    """After, a run new to its data: the same, plus every header checked once."""
    ZipDataset(path, check_members=False)
    ZipDataset(path, check_members=False).check_members()


def measure(path: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Seconds of each case on the zip at `path`, with a cold and a warm page cache."""
    cases = {"train start, before (2 header passes + file sha256)": lambda: old_train_start(path),
             "resume, after (directory only)": lambda: new_resume(path),
             "fresh run, after (directory + 1 header pass)": lambda: new_fresh(path),
             "evaluate, before (file sha256)": lambda: file_sha256(path),
             "evaluate, after (dataset_hash)": lambda: dataset_hash(path)}
    out = {}
    for mode, before in (("cold", lambda: drop_cache(path)), ("warm", lambda: None)):
        if mode == "warm":
            file_sha256(path)   # pull the whole file into the page cache
        out[mode] = {name: best_seconds(fn, repeats, before) for name, fn in cases.items()}
    return out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=2000)
    ap.add_argument("--member-mb", type=float, default=1.57)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    logging.getLogger("corgigan").setLevel(logging.WARNING)
    pngs = [member_png(s, args.member_mb) for s in range(DISTINCT)]
    # Two zips, n and n/10 members, so each cost splits into a fixed part (the first image's decode,
    # imports) and a per-member part (directory entries, headers, bytes) that scales to larger zips.
    counts = (max(args.members // 10, 1), args.members)
    got = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for n in counts:
            path = Path(tmp) / f"data-{n}.zip"
            t0 = time.perf_counter()
            write_zip(path, n, pngs)
            size = path.stat().st_size
            log.info("zip: %d members of 1024 px, %.2f GB (%.2f MB a member), written in %.0f s",
                     n, size / 1e9, size / n / 1e6, time.perf_counter() - t0)
            got[n] = measure(path, args.repeats)
            path.unlink()
    small, large = counts
    for mode in ("cold", "warm"):
        log.info("--- %s page cache: seconds at %d and %d members; scaled (fixed + per member)", mode, small,
                 large)
        names = list(got[large][mode])
        scaled = {}
        for name in names:
            a, b = got[small][mode][name], got[large][mode][name]
            per = max(b - a, 0.0) / (large - small)
            fixed = max(a - per * small, 0.0)
            scaled[name] = [fixed + per * n for n in SCALES]
            log.info("%-52s %7.3f %7.3f  -> %s", name, a, b,
                     ", ".join(f"{n:,}: {s:,.1f} s" for n, s in zip(SCALES, scaled[name])))
        for i, n in enumerate(SCALES):
            log.info("%s members: train start before / resume after %.0fx, before / fresh run after %.1fx, "
                     "evaluate before / after %.0fx", f"{n:,}", scaled[names[0]][i] / scaled[names[1]][i],
                     scaled[names[0]][i] / scaled[names[2]][i], scaled[names[3]][i] / scaled[names[4]][i])


if __name__ == "__main__":
    main()
