"""FID and KID with clean-fid: feature extractors, cached reference statistics, the distances.

Two feature sets:
- "inception": clean-fid's 'clean' mode (PIL bicubic resize to 299, the TorchScript Inception-v3 of
  the published FID). Its weights are read from a local path; nothing is downloaded at run time.
- "pixels": the same clean resize to 8x8, flattened and scaled to [0, 1] (192 numbers per image).
  It needs no download, so the offline demo can run, but its values are not comparable with
  published FID; metric names say which features were used (fid_pixels vs fid_inception).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from cleanfid import fid as cfid
from cleanfid.inception_torchscript import InceptionV3W
from cleanfid.resize import make_resizer
from tqdm import tqdm

from corgigan.errors import StageError
from corgigan.stylegan2.data import DatasetError, ZipDataset
from corgigan.tables import atomic_path, remove_stale_temps

log = logging.getLogger(__name__)

INCEPTION_FILE = "inception-2015-12-05.pt"   # the file name clean-fid's wrapper loads
PIXEL_SIDE = 8                                # "pixels" features: 8x8x3
STALE_CACHE_TEMP_S = 3600                     # a cache temp untouched this long was left by a killed run


@dataclass
class Extractor:
    """Turns uint8 images [N, H, W, 3] into features [N, D]."""

    name: str                                         # inception | pixels
    resize: Callable[[np.ndarray], np.ndarray]        # HWC uint8 -> HWC float32 (clean resize)
    model: Callable[[torch.Tensor], torch.Tensor]     # [N, 3, h, w] float in 0..255 -> [N, D]
    device: torch.device

    def __call__(self, images: np.ndarray) -> np.ndarray:
        resized = np.stack([self.resize(img) for img in images])          # [N, h, w, 3] float32
        batch = torch.from_numpy(resized).permute(0, 3, 1, 2).contiguous()  # [N, 3, h, w]
        return cfid.get_batch_features(batch, self.model, self.device).astype(np.float64)


def _pixel_features(x: torch.Tensor) -> torch.Tensor:
    # Scaled to [0, 1] so KID's cubic kernel stays in a sane range.
    return x.reshape(x.shape[0], -1) / 255.0


def build_extractor(features: str, inception_path: str | Path, device: torch.device) -> Extractor:
    """The feature extractor for `features`; a missing Inception file is a StageError saying where."""
    if features == "pixels":
        return Extractor("pixels", make_resizer("PIL", False, "bicubic", (PIXEL_SIDE, PIXEL_SIDE)),
                         _pixel_features, device)
    if features != "inception":
        raise ValueError(f"unknown features {features!r} (inception | pixels)")
    path = Path(inception_path)
    if path.name != INCEPTION_FILE or not path.is_file():
        raise StageError(
            f"Inception weights not found at {path}. FID with evaluate.features=inception needs "
            f"clean-fid's TorchScript Inception-v3 file named {INCEPTION_FILE}: copy it to {path} "
            f"(or point evaluate.inception_path at a file of that name). Nothing is downloaded at run "
            f"time. For an offline run set evaluate.features=pixels.")
    net = InceptionV3W(str(path.parent), download=False, resize_inside=False).to(device).eval()
    return Extractor("inception", make_resizer("PIL", False, "bicubic", (299, 299)), net, device)


def iter_dataset_images(dataset: ZipDataset, batch: int) -> Iterator[np.ndarray]:
    """Yield batches of uint8 RGB images [n, H, W, 3] of a dataset zip, in its (sorted) member order."""
    for i in range(0, dataset.num_images, batch):
        imgs = [dataset.image(k).transpose(1, 2, 0) for k in range(i, min(i + batch, dataset.num_images))]
        arr = np.stack(imgs)                                   # [n, H, W, C]
        yield np.repeat(arr, 3, axis=3) if arr.shape[3] == 1 else arr


def features_of(batches: Iterator[np.ndarray], extractor: Extractor, total: int, desc: str) -> np.ndarray:
    """Features of every image in `batches` (a progress bar counts images)."""
    feats = []
    with tqdm(total=total, desc=desc, unit="img") as bar:
        for imgs in batches:
            feats.append(extractor(imgs))
            bar.update(len(imgs))
    if not feats:
        raise StageError(f"{desc}: no images")
    return np.concatenate(feats)


def dataset_features(dataset: Path, dataset_sha: str, extractor: Extractor, cache_dir: Path,
                     batch: int) -> np.ndarray:
    """Features of every image in the dataset zip, cached under cache_dir by dataset hash and features."""
    cache = cache_dir / f"{dataset_sha[:16]}-{extractor.name}.npy"
    if cache.is_file():
        log.info("reference features from cache %s", cache)
        return np.load(cache)
    try:
        data = ZipDataset(dataset)   # the reader training uses: one check, one message per defect
    except DatasetError as e:
        raise StageError(str(e)) from e
    n = data.num_images
    if n < 2:
        raise StageError(f"{dataset}: {n} images; FID/KID need at least 2 real images")
    try:
        feats = features_of(iter_dataset_images(data, batch), extractor, n, "real features")
    except DatasetError as e:
        raise StageError(str(e)) from e
    # A killed run's half-written cache file goes; a younger one may be another evaluation writing it now.
    remove_stale_temps(cache, min_age_s=STALE_CACHE_TEMP_S)
    with atomic_path(cache) as tmp, tmp.open("wb") as f:
        np.save(f, feats)
    return feats


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets."""
    mu_a, sig_a = a.mean(axis=0), np.cov(a, rowvar=False)
    mu_b, sig_b = b.mean(axis=0), np.cov(b, rowvar=False)
    return float(cfid.frechet_distance(mu_a, sig_a, mu_b, sig_b))


def kid_from_features(a: np.ndarray, b: np.ndarray, seed: int) -> float:
    """Kernel Inception Distance (clean-fid's estimator; its subset sampling seeded by `seed`)."""
    state = np.random.get_state()
    np.random.seed(seed)   # clean-fid samples subsets from numpy's global generator
    try:
        return float(cfid.kernel_distance(a, b))
    finally:
        np.random.set_state(state)
