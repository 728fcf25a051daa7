"""Labelled training data for the detector, written as a one-class ("dog") YOLO dataset.

Samples come from drawn scenes (scenes.py, the demo) or a Stanford Dogs folder (PASCAL-VOC boxes);
`write_yolo_dataset` writes them as the images/ + labels/ + data.yaml layout ultralytics trains on. Plain
files only: nothing here imports ultralytics (detection.py does the training).
"""

from __future__ import annotations

import hashlib
import io
import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from corgigan.data.scenes import draw_scene
from corgigan.errors import StageError
from corgigan.geometry import clip_box
from corgigan.images import DecodeError, decode, encode_png

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]         # pixel xyxy


@dataclass(frozen=True)
class Sample:
    """One labelled training image: encoded bytes (PNG/JPEG) and its dog boxes in pixel xyxy."""

    name: str                      # unique file stem inside the dataset
    data: bytes
    ext: str                       # ".png", ".jpg"
    width: int
    height: int
    boxes: tuple[Box, ...]


# Short sides of the drawn training scenes: photo sizes, as the scraped images have. The detector sees
# them shrunk to its imgsz by ultralytics, the same way it will see the photos at inference; scenes drawn
# at the small size directly look different (line widths, blur) and do not transfer.
_SCENE_SHORT_SIDE = (256, 1024)


def synthetic_samples(seed: int, num_images: int) -> Iterator[Sample]:
    """Drawn training scenes (JPEG): a sixth with no dog (distractors only), the rest 1-3 dogs."""
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        short = int(rng.integers(_SCENE_SHORT_SIDE[0], _SCENE_SHORT_SIDE[1] + 1))
        aspect = float(rng.uniform(1.0, 1.6))
        w, h = (int(short * aspect), short) if rng.random() < 0.5 else (short, int(short * aspect))
        num_dogs = 0 if i % 6 == 5 else int(rng.choice([1, 1, 1, 2, 3]))
        lo = float(rng.uniform(0.15, 0.45))
        img, boxes = draw_scene(rng, w, h, num_dogs, dog_scale=(lo, min(0.95, lo + 0.4)))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=92)
        yield Sample(f"scene-{i:06d}", buf.getvalue(), ".jpg", img.width, img.height,
                     tuple(tuple(float(v) for v in b) for b in boxes))


def read_voc_boxes(xml_path: str | Path) -> tuple[int, int, list[Box]]:
    """Read a PASCAL-VOC annotation (Stanford Dogs style): (width, height, every object's xyxy box).

    Every object counts as a dog: Stanford Dogs names the breed, and all 120 breeds are one class here.
    Raises ValueError on a file that is not such an annotation.
    """
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{xml_path}: not XML ({e})") from e
    size = root.find("size")
    if size is None:
        raise ValueError(f"{xml_path}: no <size>")
    try:
        width, height = int(size.findtext("width", "")), int(size.findtext("height", ""))
        boxes: list[Box] = []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            if bb is None:
                raise ValueError(f"{xml_path}: <object> without <bndbox>")
            x0, y0, x1, y1 = (float(bb.findtext(k, "")) for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append((x0, y0, x1, y1))
    except ValueError as e:
        raise ValueError(f"{xml_path}: {e}") from e
    return width, height, boxes


def stanford_dogs_samples(root: str | Path, max_pixels: int = 100_000_000) -> Iterator[Sample]:
    """Images and boxes of a Stanford Dogs folder (Images/<breed>/<id>.jpg + Annotation/<breed>/<id>).

    Pairs are visited in sorted order. An annotation without its image, an image that does not decode,
    or one whose size differs from its annotation is skipped with a warning (the counts are logged).
    """
    root = Path(root)
    ann_dir, img_dir = root / "Annotation", root / "Images"
    if not ann_dir.is_dir() or not img_dir.is_dir():
        raise StageError(f"{root}: expected Images/ and Annotation/ folders of Stanford Dogs; download and "
                         f"unpack the dataset there, or set detector.stanford_dogs_path")
    skipped = 0
    for ann in sorted(p for p in ann_dir.rglob("*") if p.is_file()):
        rel = ann.relative_to(ann_dir).with_suffix("")
        img_path = img_dir / rel.with_suffix(".jpg")
        try:
            width, height, boxes = read_voc_boxes(ann)
            data = img_path.read_bytes()
            img = decode(data, max_pixels)
        except (ValueError, OSError, DecodeError) as e:
            log.warning("stanford_dogs: skipping %s: %s", rel, e)
            skipped += 1
            continue
        if img.size != (width, height):
            log.warning("stanford_dogs: skipping %s: image %dx%d, annotation %dx%d", rel, *img.size,
                        width, height)
            skipped += 1
            continue
        # Re-encode the decoded (EXIF-oriented) pixels so training sees exactly what `decode` gives.
        yield Sample(str(rel).replace("/", "__"), encode_png(img), ".png", width, height, tuple(boxes))
    if skipped:
        log.warning("stanford_dogs: skipped %d annotation(s) in total", skipped)


def yolo_label_lines(boxes: Sequence[Box], width: int, height: int, class_id: int = 0) -> list[str]:
    """YOLO label lines ``class cx cy w h`` (normalised), boxes clipped to the image; empty ones dropped."""
    lines = []
    for bx0, by0, bx1, by1 in boxes:
        # Ordered first: an annotation may give its corners either way round.
        x0, y0, x1, y1 = clip_box((min(bx0, bx1), min(by0, by1), max(bx0, bx1), max(by0, by1)), width, height)
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
        lines.append(f"{class_id} {cx:.6f} {cy:.6f} {(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}")
    return lines


def is_validation(name: str, val_fraction: float) -> bool:
    """Held-out split by a hash of the sample name: stable whatever the order or count of samples."""
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return h / 2**64 < val_fraction


def write_yolo_dataset(samples: Iterable[Sample], root: str | Path, val_fraction: float = 0.2) -> Path:
    """Write samples as a one-class ("dog") YOLO dataset under `root`; return its data.yaml path.

    The split is by name (see `is_validation`); the yaml also records the image count of each split.
    """
    root = Path(root)
    counts = {"train": 0, "val": 0}
    for s in samples:
        split = "val" if is_validation(s.name, val_fraction) else "train"
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        (root / "images" / split / f"{s.name}{s.ext}").write_bytes(s.data)
        lines = yolo_label_lines(s.boxes, s.width, s.height)
        (root / "labels" / split / f"{s.name}.txt").write_text("".join(line + "\n" for line in lines))
        counts[split] += 1
    if counts["train"] == 0 or counts["val"] == 0:
        raise StageError(f"detector training needs images in both splits, got {counts}: add more images")
    data = {"path": str(root.resolve()), "train": "images/train", "val": "images/val",
            "names": {0: "dog"}, "num_train": counts["train"], "num_val": counts["val"]}
    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=True))
    log.info("YOLO dataset: %d training, %d held-out images", counts["train"], counts["val"])
    return data_yaml
