"""Stage `detect`: run the detector over every scraped image; one detections.parquet row per dog box.

Images stream shard by shard in batches of detect.batch, so memory stays bounded whatever the number of
images. Images that do not decode are skipped here: filter rejects them from posts.decode_status.
Rows are sorted by image_id, then by falling confidence, so the table is byte-stable.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image
from tqdm import tqdm

from corgigan import tables
from corgigan.detector import detection
from corgigan.errors import StageError
from corgigan.geometry import clip_box
from corgigan.images import DecodeError, decode, iter_shards, list_shards
from corgigan.params import DetectParams, ImagesParams
from corgigan.stylegan2.devices import resolve_device

log = logging.getLogger(__name__)

T = TypeVar("T")
# Dog photos nearly all hold a dog: when boxes are found in fewer than this share of the decoded images,
# the detector found almost nothing (the rehearsal's weak one: 0 boxes in 348 photos) and the run would
# go on to reject nearly everything as no_dog.
FEW_FOUND_SHARE = 0.2


def run(p: DetectParams, images: ImagesParams, raw: Path, detector: Path, out: Path) -> None:
    """Detect dogs in every image of `raw`/shards with the detector in `detector`; write `out`."""
    shard_dir = raw / "shards"
    if not shard_dir.is_dir():
        raise StageError(f"{shard_dir}: no image shards; run `corgigan scrape` first")
    device = str(resolve_device(p.device))
    yolo, dog_class, meta = detection.load_dog_detector(detector)
    warn_if_trained_on_drawings(meta, raw / "posts.parquet")
    rows, decoded = detect_shards(yolo, shard_dir, p, device=device, max_pixels=images.max_pixels,
                                  dog_class=dog_class)
    warning = found_too_few(len({r["image_id"] for r in rows}), decoded, p.conf, meta.get("map50"))
    if warning:
        log.warning("detect: %s", warning)
    rows.sort(key=lambda r: (r["image_id"], -r["confidence"], r["x0"], r["y0"], r["x1"], r["y1"]))
    tables.write_table("detections", rows, out)
    log.info("detect: %d boxes written to %s", len(rows), out)


def warn_if_trained_on_drawings(meta: dict[str, Any], posts: Path) -> bool:
    """Warn (and return True) when real photos meet a detector trained only on drawn scenes.

    Such a detector calls many things a dog (a person's portrait, a bus's passengers): fine for the demo,
    not for real photos.
    """
    if meta.get("kind") != "train" or meta.get("labels") != "synthetic" or not posts.is_file():
        return False
    sources = set(tables.read_table("posts", posts, columns=["source"])["source"])
    real = sorted(sources - {"synthetic"})
    if not real:
        return False
    log.warning("detect: photos from %s meet a detector trained on drawn scenes only (detector.labels: "
                "synthetic); it will call many non-dogs dogs. For real photos set detector.labels: "
                "stanford_dogs or detector.kind: pretrained", ", ".join(real))
    return True


def found_too_few(with_box: int, decoded: int, conf: float, map50: float | None) -> str | None:
    """Why `with_box` images with a dog among `decoded` says the detector found almost nothing, or None."""
    if decoded == 0 or with_box >= FEW_FOUND_SHARE * decoded:
        return None
    learned = f"its held-out mAP50 is {map50:.3f}" if map50 is not None else "it is a pretrained weight"
    return (f"the detector found a dog in only {with_box} of {decoded} images ({with_box / decoded:.0%}, "
            f"below {FEW_FOUND_SHARE:.0%}; {learned}); filter will reject the rest as no_dog. Check "
            f"models/detector/meta.json, lower detect.conf ({conf}) or use a better detector")


def detect_shards(yolo: Any, shard_dir: Path, p: DetectParams, *, device: str, max_pixels: int,
                  dog_class: int) -> tuple[list[dict[str, Any]], int]:
    """Detection rows (unsorted) for every decodable image in the shards of `shard_dir`, and how many
    images decoded."""
    paths = list_shards(shard_dir)
    total = sum(len(zipfile.ZipFile(path).infolist()) for path in paths)
    rows: list[dict[str, Any]] = []
    skipped = decoded = 0
    with tqdm(total=total, desc="detect", unit="img") as bar:
        for batch_ids, batch_imgs, num_skipped in _prefetched(_batches(shard_dir, p.batch, max_pixels)):
            skipped += num_skipped
            decoded += len(batch_ids)
            found = detection.predict(yolo, batch_imgs, classes=[dog_class], conf=p.conf, iou=p.iou,
                                      imgsz=p.imgsz, device=device)
            for image_id, img, dets in zip(batch_ids, batch_imgs, found, strict=True):
                rows.extend(_rows(image_id, img, dets))
            bar.update(len(batch_ids) + num_skipped)
    if skipped:
        log.info("detect: %d undecodable image(s) skipped (see posts.decode_status)", skipped)
    return rows, decoded


def _batches(shard_dir: Path, batch: int, max_pixels: int
             ) -> Iterator[tuple[list[str], list[Image.Image], int]]:
    """Decoded images in groups of `batch`, with the number of undecodable ones met since the last group."""
    ids: list[str] = []
    imgs: list[Image.Image] = []
    skipped = 0
    for _shard, image_id, data in iter_shards(shard_dir):
        try:
            img = decode(data, max_pixels)
        except DecodeError:
            skipped += 1
            continue
        ids.append(image_id)
        imgs.append(img)
        if len(ids) == batch:
            yield ids, imgs, skipped
            ids, imgs, skipped = [], [], 0
    if ids or skipped:
        yield ids, imgs, skipped


def _prefetched(items: Iterator[T]) -> Iterator[T]:
    """Produce `items` one ahead in a worker thread, so the next batch decodes while this one is detected
    (Pillow and torch release the GIL). At most two batches are decoded at any time."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="detect-decode") as pool:
        pending = pool.submit(next, items, None)
        while (item := pending.result()) is not None:
            pending = pool.submit(next, items, None)
            yield item


def _rows(image_id: str, img: Image.Image, dets: list[detection.Detection]) -> list[dict[str, Any]]:
    """Table rows for one image's boxes, clipped to the image (pixel xyxy in the oriented original)."""
    rows = []
    for d in dets:
        x0, y0, x1, y1 = clip_box((d.x0, d.y0, d.x1, d.y1), *img.size)
        rows.append({"image_id": image_id, "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                     "confidence": d.confidence, "class_id": d.class_id})
    return rows
