"""Photos into projection targets: decode, find the dog, crop and resize as the filter stage does.

A photo becomes a target with the filter stage's rule: geometry.crop_window around the box
filter_rules.box_rank puts first (the detector's, `DogDetector`), or around the whole image without a
detector, so the centred square of the short side; images.crop_square resizes it with
filter.resize_filter. Photos are decoded by the project's one decoder (images.decode), and a bad one is a
StageError that says why. `corgigan project` (projection.py) and `corgigan serve` (explorer.py) take
their targets from here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from corgigan import geometry, images
from corgigan.data.filter_rules import box_rank
from corgigan.detector.detection import DogDetector
from corgigan.errors import StageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropRule:
    """The filter stage's crop, for photos: params.yaml's filter.min_crop and filter.resize_filter."""

    min_crop: int                  # smallest crop side before resizing (capped at the short side)
    resize_filter: str = "lanczos"  # lanczos | bicubic | bilinear | box
    max_pixels: int = 100_000_000  # images.max_pixels: larger photos are refused


def decode_photo(data: bytes, max_pixels: int, name: str = "photo") -> Image.Image:
    """images.decode; a bad file is a StageError that says why (not an image, truncated, too large, ...)."""
    try:
        return images.decode(data, max_pixels)
    except images.DecodeError as e:
        why = {"empty": "the file is empty", "not_image": "not an image (JPEG, PNG, GIF, WebP, BMP or TIFF)",
               "too_large": "the image is too large", "truncated": "the image is truncated (cut short)",
               "corrupt": "the image is corrupt"}.get(e.status, e.status)
        raise StageError(f"{name}: {why} ({e.detail})") from e


def crop_photo(img: Image.Image, resolution: int, rule: CropRule,
               box: tuple[float, float, float, float] | None = None,
               channels: int = 3) -> tuple[Image.Image, geometry.CropWindow]:
    """The square crop of `img` the filter stage would take around `box` (xyxy; None: the whole image, so a
    centred square of the short side), resized to `resolution`."""
    w, h = img.size
    whole = (0.0, 0.0, float(w), float(h))
    win = geometry.crop_window(w, h, box if box is not None else whole, rule.min_crop)
    crop = images.crop_square(img, win.box, resolution, rule.resize_filter)
    return (crop.convert("L") if channels == 1 else crop), win


def to_tensor(img: Image.Image) -> torch.Tensor:
    """A PIL image -> [1, C, H, W] float in [-1, 1] (the generator's range)."""
    arr = np.asarray(img, dtype=np.float32)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr / 127.5 - 1).permute(2, 0, 1).unsqueeze(0).contiguous()


def best_box(detector: DogDetector, img: Image.Image) -> tuple[float, float, float, float] | None:
    """The box the filter stage would crop `img` around (the first by filter_rules.box_rank), or None."""
    found = detector.predict([img])[0]
    if not found:
        return None
    best = min(found, key=lambda d: box_rank(d.confidence, d.x0, d.y0, d.x1, d.y1))
    return best.x0, best.y0, best.x1, best.y1


def photo_target(data: bytes, resolution: int, rule: CropRule, detector: DogDetector | None = None,
                 channels: int = 3, name: str = "photo") -> tuple[Image.Image, dict[str, Any]]:
    """Decode, find the dog (with a detector), crop and resize: (target image, how it was cropped)."""
    img = decode_photo(data, rule.max_pixels, name)
    box = best_box(detector, img) if detector is not None else None
    if detector is not None and box is None:
        log.warning("%s: no dog found; cropping the centre", name)
    crop, win = crop_photo(img, resolution, rule, box, channels)
    how = {"width": img.size[0], "height": img.size[1], "box": list(box) if box else None,
           "crop": list(win.box), "cover": win.cover if box else None,
           "mode": "dog" if box else ("centre (no dog found)" if detector is not None else "centre")}
    return crop, how
