"""Labels for generated images: what the pipeline's own dog detector sees, plus two image statistics.

Images are drawn from latents in batches and go straight to the detector through `detection.predict`
in batches of detect.batch, as the detect stage sends photos, so labelling runs at the detector's speed
and memory stays bounded (only the first `keep` images are returned).

Attributes of one image (ATTRIBUTES):
    dog_size    area of the most confident dog box / image area (0 without a dog): the box's cover of the
                image, as the filter stage measures a crop's cover
    dog_x/dog_y centre of that box / image side, 0..1 (NaN without a dog)
    num_dogs    boxes found at detect.conf
    confidence  the most confident box's confidence (0 without a dog)
    brightness  mean luma (ITU-R 601) / 255
    saturation  mean HSV saturation, (max - min) / max of R, G, B
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from corgigan.analysis import sampling
from corgigan.detector import detection
from corgigan.geometry import clip_box

BOX_ATTRIBUTES = ("dog_size", "dog_x", "dog_y", "num_dogs", "confidence")
# Attributes of the dog itself: a boundary for them is fitted among the images with a dog only, so that
# "dog_size" separates small dogs from large ones rather than "no dog" from "a dog" (that is num_dogs).
DOG_ATTRIBUTES = ("dog_size", "dog_x", "dog_y", "confidence")
ATTRIBUTES = (*BOX_ATTRIBUTES, "brightness", "saturation")


def image_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """Brightness and saturation (0..1) of uint8 images [N, H, W, 3]."""
    x = images.astype(np.float32) / 255.0
    luma = x @ np.array([0.299, 0.587, 0.114], np.float32)                 # [N, H, W]
    hi, lo = x.max(axis=3), x.min(axis=3)
    sat = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-12), 0.0)
    return {"brightness": luma.mean(axis=(1, 2)).astype(np.float64),
            "saturation": sat.mean(axis=(1, 2)).astype(np.float64)}


def box_attributes(dets: Sequence[detection.Detection], width: int, height: int) -> dict[str, float]:
    """dog_size, dog_x, dog_y, num_dogs and confidence of one image's boxes (clipped to the image)."""
    if not dets:
        return {"dog_size": 0.0, "dog_x": math.nan, "dog_y": math.nan, "num_dogs": 0.0, "confidence": 0.0}
    best = max(dets, key=lambda d: d.confidence)
    x0, y0, x1, y1 = clip_box((best.x0, best.y0, best.x1, best.y1), width, height)
    return {"dog_size": (x1 - x0) * (y1 - y0) / (width * height), "dog_x": (x0 + x1) / 2 / width,
            "dog_y": (y0 + y1) / 2 / height, "num_dogs": float(len(dets)), "confidence": best.confidence}


def label_images(det: detection.DogDetector, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every attribute of uint8 images [N, H, W, 3], one array [N] each (one predict call per det.batch)."""
    boxes: dict[str, list[float]] = {k: [] for k in BOX_ATTRIBUTES}
    for i in range(0, len(images), det.batch):
        chunk = [Image.fromarray(img) for img in images[i:i + det.batch]]
        found = det.predict(chunk)
        for dets, img in zip(found, chunk, strict=True):
            for k, v in box_attributes(dets, img.width, img.height).items():
                boxes[k].append(v)
    out = {k: np.array(v, np.float64) for k, v in boxes.items()}
    out.update(image_stats(images))
    return {k: out[k] for k in ATTRIBUTES}


def label_latents(G: torch.nn.Module, det: detection.DogDetector, ws: torch.Tensor, keep: int = 0,
                  desc: str = "label") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Draw ws [N, num_ws, w_dim] and label every image; (attributes [N] each, the first `keep` images).

    Images are drawn and labelled det.batch at a time and then dropped, so N can be large at 1024 px.
    """
    parts: list[dict[str, np.ndarray]] = []
    kept: list[np.ndarray] = []
    with tqdm(total=len(ws), desc=desc, unit="img") as bar:
        for i in range(0, len(ws), det.batch):
            imgs = sampling.synthesize_w(G, ws[i:i + det.batch], det.batch)
            parts.append(label_images(det, imgs))
            if i < keep:
                kept.append(imgs[:keep - i])
            bar.update(len(imgs))
    labels = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0) for k in ATTRIBUTES}
    h = G.img_resolution
    return labels, np.concatenate(kept) if kept else np.zeros((0, h, h, 3), np.uint8)
