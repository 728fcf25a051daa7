"""Benchmark: wall time of the evaluate stage on CPU: generation, feature extraction and FID/KID.

A demo-config generator at 64 px, trained for one minibatch by the real training loop (speed does not
depend on training), and a dataset zip of smooth random pictures packed by the dataset stage's own
writer (`dataset_zip.write_zip`). Wall seconds (time.perf_counter), median over --repeats runs after a
warm-up, torch and numpy's BLAS on one thread each by default (--threads; OPENBLAS_NUM_THREADS); figures
are ratios against a baseline measured in the same run:
  * throughput (images/s), baseline: the bare generator forward G(z, c) in batches. Against it:
    `generate.generate_images` (seeded latents, mapping + synthesis, uint8 conversion) and each
    offline feature extractor on in-memory images (`fid.build_extractor`: "pixels" always,
    "inception" only with --inception PATH to clean-fid's inception-2015-12-05.pt);
  * FID/KID, baseline: clean-fid called directly, `cleanfid.fid.compute_fid(generated_png_folder,
    dataset_zip, custom_feat_extractor=..., custom_fn_resize=...)` with the same features, the same
    seeds, truncation and numbers of images; its time includes generating the PNGs. Against it: the
    stage's FID/KID part (`dataset_hash` + `fid.dataset_features` with a cold cache + `evaluate.score`)
    and the whole `evaluate.run` (also the figures: grid, truncation, mixing, mp4 + GIF video).
    Both FID values are checked to agree. clean-fid's `compute_kid` only takes its own Inception, so
    the baseline has no KID; the stage is also timed without it, and KID alone.

    python -m benchmarks.bench_evaluate [--images 200] [--repeats 3] [--threads 1] [--workers 0]
    python -m benchmarks.bench_evaluate --images 64 --repeats 1 --inception models/inception-2015-12-05.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

# numpy's BLAS (np.cov, FID's sqrtm, KID's products) on one thread, like torch's --threads default: on a
# busy machine its idle threads spin and make the timings erratic. Read when numpy loads; env wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import torch
from cleanfid import fid as cfid
from PIL import Image

from corgigan import images, params
from corgigan.analysis import fid, sampling
from corgigan.data import dataset_zip
from corgigan.errors import StageError
from corgigan.params import EvaluateParams
from corgigan.stages import evaluate
from corgigan.stylegan2 import configs
from corgigan.stylegan2.data import dataset_hash
from corgigan.stylegan2.loop import training_loop

log = logging.getLogger("bench_evaluate")

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
T = TypeVar("T")
FID_RTOL = 1e-4          # stage and clean-fid see the same pixels and features: only float rounding differs


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of fn() over `repeats` calls, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---- fixtures -----------------------------------------------------------------------------------

def train_snapshot(data: Path, run_dir: Path, resolution: int) -> tuple[torch.nn.Module, Path]:
    """One minibatch of the real training loop on `data` (demo config): its snapshot, loaded as the
    stage loads it. Speed does not depend on training, so one step is enough."""
    cfg = configs.make_config("demo", resolution)
    path = training_loop(data, run_dir, cfg, kimg=cfg.batch / 1000, snapshot_kimg=cfg.batch / 1000,
                         seed=0, augment="none", workers=0, device="cpu")
    G, _ = sampling.load(path, CPU)
    return G, path


def smooth_picture(rng: np.random.Generator, side: int) -> Image.Image:
    """Random 4x4 colours blown up bicubically, plus a little noise: image-like, not white noise."""
    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((side, side),
                                                                                      Image.BICUBIC)
    noisy = np.asarray(coarse, np.int16) + rng.integers(-12, 13, (side, side, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def write_dataset(folder: Path, n: int, side: int) -> Path:
    """A dataset zip of n PNGs, packed from crop shards by the dataset stage's own writer (dataset_zip)."""
    crops, out = folder / "crops", folder / "dataset.zip"
    rng = np.random.default_rng(0)
    ids = [f"img{i:06d}" for i in range(n)]
    with images.ShardWriter(crops, shard_size=1000) as writer:
        for image_id in ids:
            writer.add(image_id, images.encode_png(smooth_picture(rng, side)), ".png")
    count, _ = dataset_zip.write_zip(images.list_shards(crops), set(ids), out, set())
    assert count == n
    return out


# ---- throughput ---------------------------------------------------------------------------------

def forward_all(G: torch.nn.Module, n: int, batch: int) -> None:
    """The bare network: G(z, c) for n latents in batches, output left as float."""
    with torch.no_grad():
        for i in range(0, n, batch):
            m = min(batch, n - i)
            G(torch.randn(m, G.z_dim), torch.zeros(m, G.c_dim), noise_mode="const")


def throughput(G: torch.nn.Module, extractors: list[fid.Extractor], n: int, batch: int,
               repeats: int) -> None:
    """Log images/s of generation and of each extractor, as ratios against the bare G forward."""
    seeds = list(range(n))
    base = n / median_seconds(lambda: forward_all(G, n, batch), repeats)
    fake = sampling.generate_images(G, seeds, 1.0, batch)
    rows = [("G forward (baseline)", base),
            ("generate_images", n / median_seconds(lambda: sampling.generate_images(G, seeds, 1.0, batch),
                                                   repeats))]
    for ex in extractors:
        rate = n / median_seconds(lambda ex=ex: [ex(fake[i:i + batch]) for i in range(0, n, batch)],
                                  repeats)
        rows.append((f"features: {ex.name}", rate))
    log.info("%-24s %10s %10s", "throughput", "images/s", "vs. G")
    for label, rate in rows:
        log.info("%-24s %10.1f %9.2fx", label, rate, rate / base)


# ---- FID/KID: stage vs. clean-fid ---------------------------------------------------------------

def stage_scores(G: torch.nn.Module, p: EvaluateParams, ex: fid.Extractor, data: Path, cache: Path
                 ) -> tuple[float, float]:
    """The stage's FID/KID part, cold cache: hash the zip, real features, generated features, scores."""
    real = fid.dataset_features(data, dataset_hash(data), ex, cache, p.batch)
    return evaluate.score(G, p, ex, real)


def stage_fid_only(G: torch.nn.Module, p: EvaluateParams, ex: fid.Extractor, data: Path, cache: Path
                   ) -> float:
    """stage_scores without the KID (what the baseline computes): `evaluate.score`'s body, minus KID."""
    real = fid.dataset_features(data, dataset_hash(data), ex, cache, p.batch)
    return fid.fid_from_features(evaluate.generated_features(G, p, ex), real)


def write_generated(G: torch.nn.Module, p: EvaluateParams, folder: Path) -> None:
    """The stage's generated images (same seeds, psi, batch) as PNG files, for clean-fid."""
    folder.mkdir(parents=True)
    seeds = list(range(p.seed, p.seed + p.num_images))
    for seed, img in zip(seeds, sampling.generate_images(G, seeds, p.truncation_psi, p.batch)):
        Image.fromarray(img).save(folder / f"seed{seed:06d}.png")


def direct_fid(G: torch.nn.Module, p: EvaluateParams, ex: fid.Extractor, data: Path, folder: Path,
               workers: int) -> tuple[float, float]:
    """clean-fid on its own: write the PNGs, then compute_fid(folder, zip). Returns (FID, PNG seconds)."""
    t0 = time.perf_counter()
    write_generated(G, p, folder)
    png_s = time.perf_counter() - t0
    # clean-fid reads a path containing ".zip" as a zip archive, the dataset zip as is.
    value = cfid.compute_fid(str(folder), str(data), mode="clean", custom_feat_extractor=ex.model,
                             custom_fn_resize=ex.resize, device=CPU, num_workers=workers,
                             batch_size=p.batch, verbose=False)
    return float(value), png_s


def full_stage(p: EvaluateParams, run_dir: Path, data: Path, out: Path) -> float:
    """`evaluate.run` end to end (figures included) with a cold feature cache; returns its FID."""
    os.environ["CORGIGAN_CACHE"] = str(out / "cache")
    metrics = out / "metrics.json"
    evaluate.run(p, run_dir, data, metrics, out / "figures")
    return float(json.loads(metrics.read_text())[f"fid_{p.features}"])


class FreshDirs:
    """Fresh sub-folders of `root`: every timed call gets a cold cache and an empty output folder."""

    def __init__(self, root: Path) -> None:
        self.root, self.n = root, 0

    def next(self, prefix: str) -> Path:
        self.n += 1
        return self.root / f"{prefix}{self.n:03d}"


def timed(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """(median wall seconds, last result) over a warm-up call plus `repeats` timed calls."""
    results: list[T] = []
    seconds = median_seconds(lambda: results.append(fn()), repeats)
    return seconds, results[-1]


def compare(G: torch.nn.Module, p: EvaluateParams, ex: fid.Extractor, data: Path, run_dir: Path,
            tmp: Path, workers: int, repeats: int) -> None:
    """Log the stage's and clean-fid's wall time and FID for one extractor, and check the FIDs agree."""
    dirs = FreshDirs(tmp / ex.name)
    direct_s, (direct_value, png_s) = timed(
        lambda: direct_fid(G, p, ex, data, dirs.next("gen"), workers), repeats)
    stage_s, (stage_fid, stage_kid) = timed(lambda: stage_scores(G, p, ex, data, dirs.next("cache")), repeats)
    fid_only_s, _ = timed(lambda: stage_fid_only(G, p, ex, data, dirs.next("cache")), repeats)
    full_s, full_fid = timed(lambda: full_stage(p, run_dir, data, dirs.next("run")), repeats)
    fake = evaluate.generated_features(G, p, ex)
    real = fid.dataset_features(data, dataset_hash(data), ex, dirs.next("cache"), p.batch)
    kid_s = median_seconds(lambda: fid.kid_from_features(fake, real, p.seed), repeats)
    log.info("%s features, %d generated vs. %d real images, batch %d, clean-fid num_workers %d",
             ex.name, p.num_images, len(real), p.batch, workers)
    log.info("%-34s %9s %9s %12s", "FID/KID", "seconds", "vs. cfid", "FID")
    log.info("%-34s %9.2f %8.2fx %12.4f", "clean-fid compute_fid (baseline)", direct_s, 1.0, direct_value)
    log.info("%-34s %9.2f %8.2fx", "  of which generate + write PNGs", png_s, png_s / direct_s)   # last run
    log.info("%-34s %9.2f %8.2fx %12.4f", "stage: dataset_features + score", stage_s, stage_s / direct_s,
             stage_fid)
    log.info("%-34s %9.2f %8.2fx", "  KID alone", kid_s, kid_s / direct_s)
    log.info("%-34s %9.2f %8.2fx", "  the same without KID (as cfid)", fid_only_s, fid_only_s / direct_s)
    log.info("%-34s %9.2f %8.2fx %12.4f", "stage: evaluate.run (+ figures)", full_s, full_s / direct_s,
             full_fid)
    log.info("KID (stage only) %.6f", stage_kid)
    check_agreement(direct_value, stage_fid, full_fid)


def check_agreement(direct_value: float, stage_fid: float, full_fid: float) -> None:
    """Warn when the stage and clean-fid disagree beyond float rounding."""
    worst = max(abs(stage_fid - direct_value), abs(full_fid - direct_value))
    if worst <= FID_RTOL * max(abs(direct_value), 1.0):
        log.info("FID agrees: stage vs. clean-fid differ by %.2e (tolerance %.0e relative)", worst, FID_RTOL)
    else:
        log.warning("FID DISAGREES: clean-fid %.6f, stage %.6f, evaluate.run %.6f", direct_value,
                    stage_fid, full_fid)


# ---- main ---------------------------------------------------------------------------------------

def extractors(inception: str | None) -> list[fid.Extractor]:
    """The offline pixels extractor, plus Inception when --inception names an existing file."""
    found = [fid.build_extractor("pixels", "unused", CPU)]
    if inception is None or not Path(inception).is_file():
        log.info("inception: skipped (%s)", "no --inception given" if inception is None
                 else f"{inception} does not exist")
        return found
    try:
        found.append(fid.build_extractor("inception", inception, CPU))
    except StageError as e:
        log.warning("inception: skipped (%s)", e)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="generated and real images (each)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--workers", type=int, default=0,
                        help="clean-fid DataLoader workers (the stage reads in-process)")
    parser.add_argument("--inception", help="clean-fid's inception-2015-12-05.pt; without it, pixels only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("corgigan").setLevel(logging.WARNING)   # the stage's own per-call lines
    os.environ["CUDA_VISIBLE_DEVICES"] = ""   # evaluate.run picks cuda when it sees one; this is a CPU bench
    if args.threads:
        torch.set_num_threads(args.threads)
    base = params.load(ROOT / "params.yaml").evaluate
    found = extractors(args.inception)
    with tempfile.TemporaryDirectory(prefix="bench_evaluate-") as tmp_name:
        tmp = Path(tmp_name)
        data = write_dataset(tmp, args.images, args.resolution)
        run_dir = tmp / "run"
        G, _ = train_snapshot(data, run_dir, args.resolution)
        log.info("demo G at %d px (%.2fM parameters), %d images, %d torch threads, torch %s, wall seconds",
                 G.img_resolution, sum(t.numel() for t in G.parameters()) / 1e6, args.images,
                 torch.get_num_threads(), torch.__version__)
        log.info("load average %.2f on %d CPUs (wall times grow with other work on the machine)",
                 os.getloadavg()[0], os.cpu_count() or 0)
        throughput(G, found, args.images, base.batch, args.repeats)
        for ex in found:
            p = dataclasses.replace(base, num_images=args.images, features=ex.name,
                                    inception_path=args.inception or base.inception_path,
                                    fid_every_snapshot=False)
            compare(G, p, ex, data, run_dir, tmp, args.workers, args.repeats)


if __name__ == "__main__":
    main()
