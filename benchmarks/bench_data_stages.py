"""filter, dedup and dataset: images/s and peak memory on a small vs a 10x larger synthetic input.

Each stage runs in its own child process; a sampler sums the memory (PSS: pages shared with forked
workers counted once) of that process and its workers every 50 ms, so the peak includes the worker
pool. Throughput is timed around the stage's `run` only. The small run is the baseline: at 10x the images,
images/s should hold and peak memory should stay near flat (images stream shard by shard; only
per-image table rows and hashes accumulate). The fixture is smooth random pictures with one box
each, a tenth of them near-duplicates (re-encoded, resized) of earlier ones.

    python -m benchmarks.bench_data_stages                         # 2k vs 20k, 160..240 px photos
    python -m benchmarks.bench_data_stages --small 500 --large 5000 --min-side 100 --max-side 140
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image
from tqdm import tqdm

from corgigan import images, tables
from corgigan.params import DatasetParams, DedupParams, FilterParams

log = logging.getLogger(__name__)

STAGES = ("filter", "dedup", "dataset")


def _picture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize((width, height), Image.Resampling.BICUBIC)


def make_fixture(root: Path, n: int, min_side: int, max_side: int, seed: int = 0) -> None:
    """raw/shards + raw/posts.parquet + detections.parquet with `n` images, 10% near-duplicates."""
    rng = np.random.default_rng(seed)
    posts: list[dict[str, Any]] = []
    dets: list[dict[str, Any]] = []
    pictures: list[tuple[int, float]] = []      # (picture seed, aspect) of each image so far
    with images.ShardWriter(root / "raw" / "shards", 256) as writer:
        for i in tqdm(range(n), desc=f"fixture {n}", unit="img"):
            short = int(rng.integers(min_side, max_side + 1))
            copy = bool(pictures) and rng.random() < 0.1
            pic_seed, aspect = (pictures[int(rng.integers(len(pictures)))] if copy
                                else (i, float(rng.uniform(1.0, 1.5))))
            pictures.append((pic_seed, aspect))
            width, height = int(short * aspect), short
            img = _picture(np.random.default_rng(pic_seed), width, height)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=int(rng.integers(60, 95)))
            data = buf.getvalue()
            iid = images.sha256(f"bench:{i}".encode())[:16]
            shard = writer.add(iid, data, ".jpg")
            posts.append({"image_id": iid, "source": "bench", "source_id": str(i), "url": None,
                          "owner": None, "timestamp": datetime(2024, 1, 1, tzinfo=UTC), "likes": None,
                          "width": width, "height": height, "format": "JPEG",
                          "sha256": images.sha256(data), "num_bytes": len(data), "decode_status": "ok",
                          "decode_detail": None, "shard": shard})
            # a box relative to the picture, so a duplicate's crop covers the same content
            bw, bh = 0.5 * height, 0.45 * height
            cx, cy = width / 2, height / 2
            dets.append({"image_id": iid, "x0": cx - bw / 2, "y0": cy - bh / 2, "x1": cx + bw / 2,
                         "y1": cy + bh / 2, "confidence": float(rng.uniform(0.5, 1.0)), "class_id": 0})
    tables.write_table("posts", posts, root / "raw" / "posts.parquet")
    tables.write_table("detections", dets, root / "detections.parquet")


# The child imports only its stage, times only `run` (not interpreter start and imports) and prints it.
_CHILD = """
import importlib, sys, time
from pathlib import Path
from corgigan.params import DatasetParams, DedupParams, FilterParams, ImagesParams
root, stage, p = Path(sys.argv[1]), sys.argv[2], eval(sys.argv[3])
mod = importlib.import_module(f"corgigan.stages.{stage}")
paths = {
    "filter": dict(raw=root / "raw", detections=root / "detections.parquet", out=root / "filter"),
    "dedup": dict(crops=root / "filter", out=root / "dedup.parquet"),
    "dataset": dict(raw=root / "raw", filtered=root / "filter", dedup=root / "dedup.parquet",
                    out=root / "corgis.zip", funnel=root / "funnel.json", figures=root / "figures"),
}[stage]
sections = (p, ImagesParams(max_pixels=10**8)) if stage == "filter" else (p,)
start = time.perf_counter()
mod.run(*sections, **paths)
print(time.perf_counter() - start)
"""


def _tree_pss(proc: psutil.Process) -> int:
    """Proportional set size of `proc` and its children: shared pages (forked workers) counted once."""
    total = 0
    for q in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += q.memory_full_info().pss
    return total


def run_stage(root: Path, stage: str, p: Any) -> tuple[float, int]:
    """Run one stage in a child process; return (seconds in run, peak PSS of it and its workers)."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(root), stage, repr(p)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    proc = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        with contextlib.suppress(psutil.NoSuchProcess):
            peak = max(peak, _tree_pss(proc))
        time.sleep(0.05)
    stdout = child.stdout.read() if child.stdout else ""
    if child.returncode:
        raise RuntimeError(f"{stage} failed with exit code {child.returncode}")
    return float(stdout.strip().splitlines()[-1]), peak


def measure(n: int, args: argparse.Namespace) -> dict[str, tuple[float, float, int]]:
    """stage -> (items/s, seconds, peak RSS) for a fixture of `n` images."""
    params = {
        "filter": FilterParams(min_side=args.min_side // 2, min_crop=args.min_side // 2, max_dogs=1,
                               min_confidence=0.4, min_cover=0.1, max_center_shift=0.25,
                               allow_partial=False, resolution=args.resolution, resize_filter="lanczos",
                               shard_size=1000),
        "dedup": DedupParams(method="phash", max_distance=4),
        "dataset": DatasetParams(examples_per_reason=6),
    }
    out: dict[str, tuple[float, float, int]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        root = Path(tmp)
        make_fixture(root, n, args.min_side, args.max_side)
        for stage in STAGES:
            seconds, peak = run_stage(root, stage, params[stage])
            out[stage] = (n / seconds, seconds, peak)
        kept = tables.read_table("dedup", root / "dedup.parquet")["kept"].sum()
        log.info("%d images: %d kept after filter and dedup", n, kept)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000, help="images in the baseline run")
    parser.add_argument("--large", type=int, default=20000, help="images in the large run")
    parser.add_argument("--min-side", type=int, default=160, help="smallest short side of a photo")
    parser.add_argument("--max-side", type=int, default=240, help="largest short side of a photo")
    parser.add_argument("--resolution", type=int, default=64, help="crop side (filter.resolution)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("%d cores; photos %d..%d px, crops %d px", psutil.cpu_count(), args.min_side, args.max_side,
             args.resolution)
    small, large = measure(args.small, args), measure(args.large, args)
    log.info("%-8s %11s %11s %9s %11s %11s %9s", "stage", f"{args.small} img/s", f"{args.large} img/s",
             "speed", f"{args.small} MiB", f"{args.large} MiB", "memory")
    for stage in STAGES:
        (s_rate, _, s_mem), (l_rate, _, l_mem) = small[stage], large[stage]
        log.info("%-8s %11.1f %11.1f %8.2fx %11.0f %11.0f %8.2fx", stage, s_rate, l_rate, l_rate / s_rate,
                 s_mem / 2**20, l_mem / 2**20, l_mem / s_mem)


if __name__ == "__main__":
    main()
