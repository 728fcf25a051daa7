"""The filter's rules: whether a scraped image yields one square dog crop, and the plan to cut the crops.

The checks run in this order; the first that fails is the row's reason:

1. ``refused``        the source refused to read the entry (posts.decode_status refused);
   ``decode_error``   posts.decode_status is otherwise not ok (or the bytes no longer decode);
2. ``too_small``      short side < min_side: needs only the image size, so it comes before the boxes;
3. ``no_dog``         no detected box;
4. ``low_confidence`` the best box is below min_confidence: no dog we trust;
5. ``multiple_dogs``  more than max_dogs boxes at or above min_confidence (weak extra boxes are
                      ignored, so one clear dog plus a faint false positive is kept);
6. ``partial``        the dog is larger than the crop window (unless allow_partial);
7. ``low_cover``      the dog covers less than min_cover of the window;
8. ``off_center``     the border slide moved the window more than max_center_shift (either axis).

The crop is taken around the first box by `box_rank` (the most confident; ties: the smallest x0, y0, x1,
y1), as projection's photos are. ``num_dogs`` counts the boxes at or above min_confidence. Geometry
columns are filled from step 6 on; box and confidence from step 4 on. Decisions need only tables
(`decide`, `decide_all`); images are decoded only to crop the kept ones (`crop_chunk`), in chunks of one
raw shard each, planned in posts order (`plan_crops`), so the output does not depend on the number of
cores. The window math itself is geometry.py; the resize, images.crop_square.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from corgigan import geometry, images, tables
from corgigan.errors import StageError
from corgigan.params import FilterParams, ImagesParams

log = logging.getLogger(__name__)

CHUNK = 32          # images per crop task: small enough to bound memory at 1024 px
ROW_BLOCK = 4096    # decisions turned into Arrow rows at a time
_GEOMETRY_COLS = ("crop_x0", "crop_y0", "crop_side", "cover", "center_shift_x", "center_shift_y",
                  "partial")
_BOX_COLS = ("x0", "y0", "x1", "y1")

ScoredBox = tuple[float, float, float, float, float]    # x0, y0, x1, y1, confidence
CropBox = tuple[int, int, int, int]                     # the window as PIL's crop box (xyxy, exclusive)
# One crop task: the raw shard, (image_id, width, height, crop box) per image, resolution, filter, max_pixels.
CropTask = tuple[str, list[tuple[str, int, int, CropBox]], int, str, int]
# One result per image: (image_id, png bytes or None, decode status, detail).
CropResult = tuple[str, bytes | None, str, str]


def box_rank(confidence: Any, x0: Any, y0: Any, x1: Any, y1: Any) -> tuple[Any, ...]:
    """The sort key that ranks one image's boxes: the most confident first, ties to the smallest x0, y0, x1,
    y1, so the box a crop goes around never depends on the detector's output order. Takes numbers, or
    whole columns (pandas Series) to sort a table by."""
    return (-confidence, x0, y0, x1, y1)


def _empty_row(post: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in tables.SCHEMAS["filter"].names}
    row["image_id"] = post["image_id"]
    row["kept"] = False
    if post["decode_status"] == "ok":
        row["width"], row["height"] = int(post["width"]), int(post["height"])
    return row


def decide(post: dict[str, Any], boxes: list[ScoredBox],
           p: FilterParams) -> tuple[dict[str, Any], geometry.CropWindow | None]:
    """The filter row of one image and, when kept, its crop window.

    `post` is a posts row; `boxes` are its detections as (x0, y0, x1, y1, confidence), most confident
    first (ties broken by coordinates). Pure: tables in, decision out.
    """
    row = _empty_row(post)
    if post["decode_status"] == "refused":
        return {**row, "reason": "refused"}, None
    if post["decode_status"] != "ok":
        return {**row, "reason": "decode_error"}, None
    width, height = row["width"], row["height"]
    if geometry.too_small(width, height, p.min_side):
        return {**row, "reason": "too_small"}, None
    confident = [b for b in boxes if b[4] >= p.min_confidence]
    row["num_dogs"] = len(confident)
    if not boxes:
        return {**row, "reason": "no_dog"}, None
    best = boxes[0]
    row.update(zip(_BOX_COLS, best[:4], strict=True))
    row["confidence"] = best[4]
    if not confident:
        return {**row, "reason": "low_confidence"}, None
    if len(confident) > p.max_dogs:
        return {**row, "reason": "multiple_dogs"}, None
    win = geometry.crop_window(width, height, best[:4], p.min_crop)
    row.update(zip(_GEOMETRY_COLS, (win.x0, win.y0, win.side, win.cover, win.center_shift_x,
                                    win.center_shift_y, win.partial), strict=True))
    if win.partial and not p.allow_partial:
        return {**row, "reason": "partial"}, None
    if win.cover < p.min_cover:
        return {**row, "reason": "low_cover"}, None
    if max(abs(win.center_shift_x), abs(win.center_shift_y)) > p.max_center_shift:
        return {**row, "reason": "off_center"}, None
    return {**row, "kept": True}, win


def boxes_by_image(det: pd.DataFrame) -> dict[str, list[ScoredBox]]:
    """Detections grouped by image, in `box_rank` order (most confident first)."""
    rank = box_rank(det["confidence"], det["x0"], det["y0"], det["x1"], det["y1"])
    keys = [f"_rank{i}" for i in range(len(rank))]
    det = det.assign(**dict(zip(keys, rank))).sort_values(["image_id", *keys], kind="mergesort")
    out: dict[str, list[ScoredBox]] = {}
    for image_id, x0, y0, x1, y1, conf in zip(det["image_id"], det["x0"], det["y0"], det["x1"],
                                              det["y1"], det["confidence"]):
        out.setdefault(image_id, []).append((float(x0), float(y0), float(x1), float(y1), float(conf)))
    return out


def decide_all(posts: pd.DataFrame, boxes: dict[str, list[ScoredBox]],
               p: FilterParams) -> tuple[pa.Table, dict[str, CropBox]]:
    """Every posts row's decision as one Arrow table (posts order), and the crop box of each kept image.

    Rows become Arrow in blocks of ROW_BLOCK, so memory per image is a table row, not a Python dict.
    """
    blocks: list[pa.Table] = []
    crop_boxes: dict[str, CropBox] = {}
    for start in range(0, len(posts), ROW_BLOCK):
        rows = []
        for post in posts.iloc[start:start + ROW_BLOCK].to_dict("records"):
            row, win = decide(post, boxes.get(post["image_id"], []), p)
            rows.append(row)
            if win is not None:
                crop_boxes[row["image_id"]] = win.box
        blocks.append(tables.to_arrow("filter", rows))
    if not blocks:
        return tables.to_arrow("filter", []), crop_boxes
    return pa.concat_tables(blocks).combine_chunks(), crop_boxes


def plan_crops(posts: pd.DataFrame, crop_boxes: dict[str, CropBox], shard_dir: Path, p: FilterParams,
               images_p: ImagesParams) -> list[CropTask]:
    """Chunks of kept images (at most CHUNK), each from one raw shard of `shard_dir`, in posts order."""
    tasks: list[CropTask] = []
    chunk: list[tuple[str, int, int, CropBox]] = []
    shard = None
    for image_id, width, height, name in zip(posts["image_id"], posts["width"], posts["height"],
                                             posts["shard"]):
        if image_id not in crop_boxes:
            continue
        if chunk and (name != shard or len(chunk) == CHUNK):
            tasks.append((str(shard_dir / shard), chunk, p.resolution, p.resize_filter,
                          images_p.max_pixels))
            chunk = []
        shard = name
        chunk.append((image_id, int(width), int(height), crop_boxes[image_id]))
    if chunk:
        tasks.append((str(shard_dir / shard), chunk, p.resolution, p.resize_filter, images_p.max_pixels))
    return tasks


def crop_chunk(task: CropTask) -> list[CropResult]:
    """Decode, crop and resize one chunk of images from one raw shard (a worker's task)."""
    shard, items, resolution, resize_filter, max_pixels = task
    out: list[CropResult] = []
    with zipfile.ZipFile(shard) as zf:
        names = images.members_by_id(zf)
        for image_id, width, height, box in items:
            if image_id not in names:
                out.append((image_id, None, "missing", f"not in {Path(shard).name}"))
                continue
            try:
                img = images.decode(zf.read(names[image_id]), max_pixels)
            except images.DecodeError as e:
                out.append((image_id, None, e.status, e.detail))
                continue
            if img.size != (width, height):
                out.append((image_id, None, "size_changed",
                            f"decodes to {img.size[0]}x{img.size[1]}, posts say {width}x{height}"))
                continue
            crop = images.crop_square(img, box, resolution, resize_filter)
            out.append((image_id, images.encode_png(crop), "ok", ""))
    return out


def mark_failures(table: pa.Table, failures: dict[str, CropResult]) -> pa.Table:
    """Rows of images that failed to crop become decode_error rejections (a broken raw set stops)."""
    if not failures:
        return table
    df = table.to_pandas()
    for image_id, _, status, detail in failures.values():
        if status in ("missing", "size_changed"):
            raise StageError(f"image {image_id} {detail}: data/raw is inconsistent; re-run scrape")
        # scrape decoded these bytes; they fail now only if images.max_pixels changed in between.
        log.warning("image %s no longer decodes (%s: %s)", image_id, status, detail)
    failed = df["image_id"].isin(failures.keys())
    cleared = [*_GEOMETRY_COLS, *_BOX_COLS, "confidence", "num_dogs"]
    # Object columns take None as it is: a bool or int column without nulls would have to be upcast,
    # which pandas deprecates (FutureWarning, an error to come). The schema gives the types back.
    df[cleared] = df[cleared].astype(object)
    df.loc[failed, cleared] = None
    df.loc[failed, ["kept", "reason"]] = [False, "decode_error"]
    return tables.to_arrow("filter", df)
