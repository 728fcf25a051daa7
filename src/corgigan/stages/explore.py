"""explore stage: directions in a generator's W space, each measured, each with a strip of pictures.

From the newest snapshot (or one snapshot file, or a reference .pkl):
- closed-form (SeFa) directions of the style affines of explore.layers, and PCA directions of sampled w;
  their share of the eigenvalue sum or of W's variance is their score;
- labelled directions: explore.num_labelled generated images labelled by the pipeline's own detector and
  two image statistics (attributes.ATTRIBUTES); per attribute, a logistic boundary in W between the top
  and bottom explore.share (of the images with a dog, for the dog's own attributes), scored by its
  accuracy on a held-out part of them;
- the check: explore.check_seeds other seeds, never used to fit, moved along each labelled direction from
  -max_sigma to +max_sigma and labelled again; the Spearman rank correlation of the step with the
  measured attribute (averaged over the seeds) says whether the direction does what its name says;
- a strip per direction (rows: the first check seeds, columns: the steps).

Writes the directions file (format in analysis/directions.py's docstring, read by `corgigan serve` and
`corgigan generate --what edit`), the metrics (scores, accuracies, rank correlations) and the strips.
Seeds: the fitting pool is explore.seed .. + max(pca_samples, num_labelled); the check seeds follow it.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from corgigan.analysis import attributes, latents, sampling
from corgigan.analysis import directions as dirs
from corgigan.detector import detection
from corgigan.errors import StageError
from corgigan.params import DetectParams, ExploreParams
from corgigan.stylegan2.devices import resolve_device
from corgigan.stylegan2.ws_ranges import layer_range
from corgigan.tables import write_json

log = logging.getLogger(__name__)


@dataclass
class Found:
    """One direction and what was measured about it."""

    name: str
    method: str                                  # sefa | pca | labelled
    vector: torch.Tensor                         # [w_dim], unit length
    layers: tuple[int, int]                      # ws [first, stop) an edit moves
    scores: dict[str, float | int | None] = field(default_factory=dict)


def unsupervised(G: torch.nn.Module, p: ExploreParams, w_pool: torch.Tensor, layers: tuple[int, int]
                 ) -> list[Found]:
    """SeFa directions of the affines in `layers`, then PCA directions of the sampled w."""
    k = min(p.num_components, G.w_dim)
    vectors, share = dirs.sefa(dirs.style_affines(G, *layers), k)
    found = [Found(f"sefa_{i}", "sefa", v, layers, {"explained_variance": float(s)})
             for i, (v, s) in enumerate(zip(vectors, share))]
    vectors, share = dirs.pca(w_pool[:p.pca_samples], min(k, len(w_pool[:p.pca_samples]) - 1))
    found += [Found(f"pca_{i}", "pca", v, layers, {"explained_variance": float(s)})
              for i, (v, s) in enumerate(zip(vectors, share))]
    return found


def labelled_directions(labels: dict[str, np.ndarray], w: torch.Tensor, p: ExploreParams, num_ws: int
                        ) -> tuple[list[Found], dict[str, str]]:
    """A boundary per attribute between its top and bottom p.share, scored on a held-out part: (directions,
    {attribute: why it was skipped})."""
    x = w.double().numpy()
    found: list[Found] = []
    skipped: dict[str, str] = {}
    for name in attributes.ATTRIBUTES:
        values = labels[name]
        if name in attributes.DOG_ATTRIBUTES:
            values = np.where(labels["num_dogs"] > 0, values, np.nan)
        neg, pos = dirs.extremes(values, p.share)
        if len(neg) < 2 or len(pos) < 2:
            skipped[name] = (f"too few distinct values in {int(np.isfinite(values).sum())} labelled "
                             f"images ({len(neg)} low, {len(pos)} high)")
            continue
        idx = np.concatenate([neg, pos])
        y = np.r_[np.zeros(len(neg), bool), np.ones(len(pos), bool)]
        fit, held = dirs.split_holdout(len(idx), p.holdout, p.seed)
        if y[fit].all() or not y[fit].any():
            skipped[name] = "the fitting part holds one class only"
            continue
        boundary = dirs.fit_boundary(x[idx[fit]], y[fit])
        acc = dirs.accuracy(boundary, x[idx[held]], y[held])
        chance = max(float(y[held].mean()), 1 - float(y[held].mean()))
        found.append(Found(name, "labelled", torch.from_numpy(boundary.normal).float(), (0, num_ws),
                           {"accuracy": acc, "chance": chance, "num_fit": len(fit),
                            "num_heldout": len(held)}))
    return found, skipped


def _num(x: float | int | None) -> float | int | None:
    """A JSON-safe, stable number: NaN becomes null, floats keep 6 decimals."""
    if x is None or isinstance(x, int):
        return x
    return None if not math.isfinite(x) else round(float(x), 6)


def check_and_draw(G: torch.nn.Module, det: detection.DogDetector, found: list[Found], w_check: torch.Tensor,
                   seeds: list[int], p: ExploreParams, figures: Path) -> None:
    """Move the check seeds along each direction, -max_sigma..+max_sigma; save a strip per direction.

    A labelled direction is also checked: all check seeds are labelled along it and the Spearman rank
    correlation of the step with its attribute is its rank_corr (mean over the seeds where it is defined:
    a seed with no dog at every step says nothing about position). Each f.scores["sigma"] must be set.
    """
    steps = np.linspace(-p.max_sigma, p.max_sigma, p.strip_steps)
    rows = p.strip_seeds
    figures.mkdir(parents=True, exist_ok=True)
    for stale in figures.glob("*.png"):   # strips of an earlier run with more components
        if re.fullmatch(r"(sefa|pca)_\d+", stale.stem) or stale.stem in attributes.ATTRIBUTES:
            stale.unlink()
    for f in found:
        offsets = steps * f.scores["sigma"]
        if f.method == "labelled":
            ws = dirs.edit_ws(w_check, f.vector, f.layers, offsets, G.num_ws)
            got, imgs = attributes.label_latents(G, det, ws, keep=rows * len(steps), desc=f"check {f.name}")
            rhos = np.array([dirs.spearman(steps, v) for v in got[f.name].reshape(len(seeds), len(steps))])
            f.scores["rank_corr"] = float(np.nanmean(rhos)) if np.isfinite(rhos).any() else math.nan
            f.scores["rank_corr_seeds"] = int(np.isfinite(rhos).sum())
            # Context for the dog's own attributes: how often the detector still finds a dog along the
            # way (position is measured only where it does; a direction may also make the dog vanish).
            f.scores["check_dogs_found"] = float((got["num_dogs"] > 0).mean())
        else:
            ws = dirs.edit_ws(w_check[:rows], f.vector, f.layers, offsets, G.num_ws)
            imgs = sampling.synthesize_w(G, ws, det.batch)
        sampling.save_png(sampling.strip_grid(imgs, seeds[:rows], steps, f.name), figures / f"{f.name}.png")


def run(p: ExploreParams, detect: DetectParams, checkpoints: Path, detector: Path, directions: Path,
        metrics: Path, figures: Path) -> None:
    """Find, measure and draw directions of the latest snapshot in `checkpoints` (or of that one file)."""
    last = sampling.find_checkpoint(checkpoints)
    G, info = sampling.load(last, resolve_device(p.device))
    try:
        layers = layer_range(p.layers, G.num_ws)
    except ValueError as e:
        raise StageError(f"explore.{e}") from None
    det = detection.DogDetector.load(detector, conf=detect.conf, iou=detect.iou, imgsz=detect.imgsz,
                                     batch=detect.batch, device=detect.device)
    times: dict[str, float] = {}
    pool = max(p.pca_samples, p.num_labelled)

    t = time.perf_counter()
    # Sigmas come from untruncated w and are stored with each direction, which `generate --what edit` and
    # `serve` read, so a strength means the same everywhere; the directions are found in the truncated pool.
    w_full = latents.sample_w(G, list(range(p.seed, p.seed + pool)), 1.0)
    w_avg = G.mapping.w_avg.detach().float().cpu()
    w_pool = w_avg + p.truncation_psi * (w_full - w_avg)
    found = unsupervised(G, p, w_pool, layers)
    times["sample w, SeFa and PCA"] = time.perf_counter() - t

    t = time.perf_counter()
    w_lab = w_pool[:p.num_labelled]
    labels, _ = attributes.label_latents(G, det, w_lab[:, None].repeat(1, G.num_ws, 1), desc="label")
    times[f"draw and label {p.num_labelled} images"] = time.perf_counter() - t
    t = time.perf_counter()
    fitted, skipped = labelled_directions(labels, w_lab, p, G.num_ws)
    found += fitted
    times["fit boundaries"] = time.perf_counter() - t
    for name, why in skipped.items():
        log.warning("explore: no %s direction: %s", name, why)

    for f, sigma in zip(found, dirs.spread(w_full, torch.stack([f.vector for f in found])).tolist()):
        f.scores["sigma"] = sigma
    t = time.perf_counter()
    check_seeds = list(range(p.seed + pool, p.seed + pool + p.check_seeds))
    w_check = latents.sample_w(G, check_seeds, p.truncation_psi)
    check_and_draw(G, det, found, w_check, check_seeds, p, figures)
    times["check and strips"] = time.perf_counter() - t
    for what, seconds in times.items():
        log.info("explore: %s: %.1f s", what, seconds)
    for f in found:
        log.info("explore: %-12s %s", f.name, ", ".join(f"{k} {v:.3g}" for k, v in f.scores.items()
                                                          if isinstance(v, float)))

    dirs.write_directions(directions, {
        "checkpoint": last.name, "kimg": _num(float(info.get("kimg", math.nan))), "w_dim": G.w_dim,
        "num_ws": G.num_ws, "truncation_psi": p.truncation_psi, "layers": p.layers, "skipped": skipped,
    }, {f.name: {"method": f.method, "layers": f.layers, "vector": f.vector,
                 **{k: _num(v) for k, v in f.scores.items()}} for f in found})
    labelled_found = [f for f in found if f.method == "labelled"]
    write_json({
        "checkpoint": last.name,
        "num_labelled": p.num_labelled,
        "dogs_found": _num(float((labels["num_dogs"] > 0).mean())),
        "explained_variance": {f.name: _num(f.scores["explained_variance"]) for f in found
                               if f.method != "labelled"},
        "accuracy": {f.name: _num(f.scores["accuracy"]) for f in labelled_found},
        "rank_corr": {f.name: _num(f.scores["rank_corr"]) for f in labelled_found},
        "skipped": sorted(skipped),
    }, metrics)
