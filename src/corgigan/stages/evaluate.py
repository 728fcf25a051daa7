"""evaluate stage: FID/KID of the last snapshot against the dataset, plus the showcase pictures."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from corgigan.analysis import fid, sampling
from corgigan.analysis.curves import draw_scores
from corgigan.errors import StageError
from corgigan.params import EvaluateParams
from corgigan.stylegan2 import snapshot
from corgigan.stylegan2.data import dataset_hash, same_dataset
from corgigan.stylegan2.devices import resolve_device
from corgigan.tables import write_json

log = logging.getLogger(__name__)

SCORES_JSON = "fid_vs_kimg.json"   # in the figures folder: kimg, FID and KID per scored snapshot
SCORES_PNG = "fid_vs_kimg.png"     # the same as a picture (a DVC image plot)
# The same rows with field names that do not depend on evaluate.features: dvc.yaml's FID and KID plots
# (x kimg) read them, so `dvc plots diff` overlays experiments whatever features each used.
SCORES_PLOT = "scores_per_snapshot.json"
FID_DIGITS, KID_DIGITS = 6, 8      # decimals kept of the scores


def cache_dir() -> Path:
    """The project's cache of reference features (CORGIGAN_CACHE overrides .cache/corgigan)."""
    return Path(os.environ.get("CORGIGAN_CACHE", ".cache/corgigan")) / "fid"


def generated_features(G: torch.nn.Module, p: EvaluateParams, extractor: fid.Extractor) -> np.ndarray:
    """Features of p.num_images generated images, seeds p.seed.., truncation p.truncation_psi."""
    seeds = list(range(p.seed, p.seed + p.num_images))
    batches = (sampling.generate_images(G, seeds[i:i + p.batch], p.truncation_psi, p.batch)
               for i in range(0, len(seeds), p.batch))
    return fid.features_of(batches, extractor, len(seeds), "generated features")


def score(G: torch.nn.Module, p: EvaluateParams, extractor: fid.Extractor, real: np.ndarray
          ) -> tuple[float, float]:
    """(FID, KID) of the generator against the real features."""
    fake = generated_features(G, p, extractor)
    return fid.fid_from_features(fake, real), fid.kid_from_features(fake, real, p.seed)


def score_row(G: torch.nn.Module, kimg: float, p: EvaluateParams, extractor: fid.Extractor,
              real: np.ndarray) -> dict[str, float]:
    """One row of the scores table: the snapshot's kimg, FID and KID.

    Rounded: the matrix square root and threaded BLAS sums differ in the last bits between processes,
    and the written rows must be the same bytes for the same inputs.
    """
    f, k = score(G, p, extractor, real)
    return {"kimg": float(kimg), f"fid_{extractor.name}": round(f, FID_DIGITS),
            f"kid_{extractor.name}": round(k, KID_DIGITS)}


def earlier_rows(checkpoints: Path, last: Path, p: EvaluateParams, extractor: fid.Extractor,
                 real: np.ndarray, device: torch.device) -> list[dict[str, float]]:
    """Score rows of every snapshot in the folder before `last`, in training order."""
    rows = []
    for _, path in snapshot.list_snapshots(checkpoints):
        if path != last:
            G, info = sampling.load(path, device)
            rows.append(score_row(G, info["kimg"], p, extractor, real))
    return rows


def write_figures(G: torch.nn.Module, p: EvaluateParams, figures: Path) -> None:
    """Sample grid, truncation sweep, style mixing, interpolation video (mp4 + GIF for DVC plots)."""
    figures.mkdir(parents=True, exist_ok=True)
    seeds = list(range(p.seed, p.seed + p.grid_seeds))
    cols = int(np.ceil(np.sqrt(len(seeds))))
    sampling.save_png(sampling.image_grid(sampling.generate_images(G, seeds, p.truncation_psi), cols),
                      figures / "grid.png")
    sampling.save_png(sampling.truncation_sweep(G, seeds[:4]), figures / "truncation.png")
    sampling.save_png(sampling.style_mixing(G, seeds[:3], seeds[3:8] or seeds[:1], p.truncation_psi),
                      figures / "mixing.png")
    # One walk, streamed to both files: no frame is drawn twice or kept past its pass.
    frames = sampling.interpolation_frames(G, seeds[:6], p.video_frames, p.truncation_psi)
    sampling.write_video(frames, figures / "interpolation.mp4", gif=figures / "interpolation.gif")


def run(p: EvaluateParams, checkpoints: Path, dataset: Path, metrics: Path, figures: Path) -> None:
    """Score the latest snapshot in `checkpoints` and draw its pictures.

    `checkpoints` may also be one file: a snapshot, or a reference StyleGAN2(-ADA) PyTorch or TensorFlow
    pickle (read without running its code), e.g. to score a pretrained model on this dataset.
    """
    last = sampling.find_checkpoint(checkpoints)
    if not dataset.is_file():
        raise StageError(f"dataset {dataset} not found: run the dataset stage first")
    device = resolve_device(p.device)
    G, info = sampling.load(last, device)
    sha = dataset_hash(dataset)   # the zip's directory: no image is read before scoring
    same = same_dataset(info.get("dataset_hash") or "", sha, dataset)
    if not same:
        log.warning("%s was trained on another dataset than %s", last.name, dataset)
    extractor = fid.build_extractor(p.features, p.inception_path, device)
    real = fid.dataset_features(dataset, sha, extractor, cache_dir(), p.batch)
    row = score_row(G, info["kimg"], p, extractor, real)
    fid_value, kid_value = row[f"fid_{extractor.name}"], row[f"kid_{extractor.name}"]
    log.info("kimg %.1f: fid_%s %.4f, kid_%s %.6f", info["kimg"], extractor.name, fid_value,
             extractor.name, kid_value)
    write_figures(G, p, figures)
    # The scores table and its picture always exist (a declared DVC plot): every snapshot with
    # fid_every_snapshot, otherwise only the last one.
    every = p.fid_every_snapshot and checkpoints.is_dir()
    rows = [*(earlier_rows(checkpoints, last, p, extractor, real, device) if every else []), row]
    write_json(rows, figures / SCORES_JSON)
    write_json([{"kimg": r["kimg"], "fid": r[f"fid_{extractor.name}"], "kid": r[f"kid_{extractor.name}"]}
                for r in rows], figures / SCORES_PLOT)
    only_last = (f"{last.name} only (evaluate.fid_every_snapshot: false)" if checkpoints.is_dir()
                 else f"{last.name} (one checkpoint file)")
    draw_scores(rows, figures / SCORES_PNG, "" if every else only_last)
    write_json({
        f"fid_{extractor.name}": fid_value,
        f"kid_{extractor.name}": kid_value,
        "features": extractor.name,
        "kimg": float(info["kimg"]),
        "snapshot": last.name,
        "num_generated": p.num_images,
        "num_real": len(real),
        "truncation_psi": p.truncation_psi,
        "same_dataset": same,
    }, metrics)
