"""Scrape throughput and peak memory: a small vs a 10x larger synthetic run.

Each run happens in its own child process, so its peak RSS is its own. Memory should stay flat as
the number of images grows (items stream into shards; only small per-row metadata accumulates), and
images/s should stay about the same. A third child only generates the images (no decode, no shards):
the baseline that shows what the stage itself costs on top of the source.

    python -m benchmarks.bench_scrape                      # 2k vs 20k at photo-like 500..1000 px
    python -m benchmarks.bench_scrape --small 500 --large 5000 --min-side 64 --max-side 96
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _child(n: int, min_side: int, max_side: int, generate_only: bool) -> dict[str, float]:
    """Run one scrape (or only the generation) of `n` ordinary images; report time and peak RSS."""
    from corgigan.data.sources.synthetic import SyntheticSource
    from corgigan.params import FolderParams, ImagesParams, InstagramParams, ScrapeParams, SyntheticParams
    from corgigan.stages import scrape

    synthetic = SyntheticParams(seed=0, num_images=n, min_short_side=min_side, max_short_side=max_side,
                                planted_per_case=0)
    p = ScrapeParams(source="synthetic", shard_size=1000, synthetic=synthetic, folder=FolderParams(path=""),
                     instagram=InstagramParams(hashtags=["corgi"], max_posts=1, max_wait_s=0, session_env=""))
    start = time.perf_counter()
    if generate_only:
        total = sum(len(item.data) for item in SyntheticSource(synthetic).items())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            scrape.run(p, ImagesParams(max_pixels=100_000_000), Path(tmp) / "raw", Path(tmp) / "cache")
            total = sum(f.stat().st_size for f in (Path(tmp) / "raw" / "shards").iterdir())
    seconds = time.perf_counter() - start
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds, "bytes": total,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _spawn(n: int, args: argparse.Namespace, generate_only: bool) -> dict[str, float]:
    cmd = [sys.executable, "-m", "benchmarks.bench_scrape", "--child", str(n),
           "--min-side", str(args.min_side), "--max-side", str(args.max_side)]
    if generate_only:
        cmd.append("--generate-only")
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=2000, help="images in the baseline run")
    ap.add_argument("--large", type=int, default=20000, help="images in the large run")
    ap.add_argument("--min-side", type=int, default=500, help="short side lower bound (px)")
    ap.add_argument("--max-side", type=int, default=1000, help="short side upper bound (px)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        logging.disable(logging.INFO)
        print(json.dumps(_child(args.child, args.min_side, args.max_side, args.generate_only)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    gen = _spawn(args.small, args, generate_only=True)
    small = _spawn(args.small, args, generate_only=False)
    large = _spawn(args.large, args, generate_only=False)
    for name, r in (("generate only", gen), ("scrape small", small), ("scrape large", large)):
        log.info("%-14s %7d images  %7.1f s  %7.1f images/s  peak RSS %6.1f MiB  %.1f MB stored", name,
                 r["images"], r["seconds"], r["images_per_s"], r["peak_rss_mib"], r["bytes"] / 1e6)
    log.info("scrape / generate-only speed (small): %.2f", small["images_per_s"] / gen["images_per_s"])
    log.info("large / small: speed %.2f, peak RSS %.2f (for %.0fx the images)",
             large["images_per_s"] / small["images_per_s"], large["peak_rss_mib"] / small["peak_rss_mib"],
             args.large / args.small)


if __name__ == "__main__":
    main()
