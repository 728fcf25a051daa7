"""dataset stage: pack the training zip, count the funnel and draw the contact sheet.

- ``out`` (the dataset zip) holds the crops that survived filter and dedup as
  ``NNNNN/imgNNNNNNNN.png`` (1000 per folder) plus ``dataset.json`` = ``{"labels": null}``: the layout
  StyleGAN2-ADA's dataset tools read. Image k is the k-th surviving crop in the filter's crop order
  (posts order), so it is traced back through the crop shards and dedup.parquet. Members are stored
  (PNGs are already compressed), sorted, with fixed dates: same inputs, same bytes.
- ``funnel`` (reports/funnel.json, a DVC metric): entered, kept and rejected-per-reason for filter,
  dedup and overall. Every reason appears, with 0 when it did not occur, so metrics diffs line up.
- ``figures/contact_sheet.png`` (a DVC plot): a labelled row of kept crops, then one row per rejection
  reason that occurred, showing the original image with the dog box (red) and crop window (green);
  undecodable images are grey tiles naming their decode status. Examples are the first
  ``dataset.examples_per_reason`` by image_id.
"""

from __future__ import annotations

import collections
import json
import logging
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from corgigan import images, tables
from corgigan.errors import StageError
from corgigan.params import DatasetParams

log = logging.getLogger(__name__)

ZIP_DATE = (1980, 1, 1, 0, 0, 0)
PER_FOLDER = 1000
FILTER_REASONS = tuple(r for r in tables.REASONS if r != "duplicate")
TILE = 128            # contact-sheet thumbnail side, pixels
LABEL_W = 200         # width of the label column
PAD = 4


def member_name(index: int) -> str:
    """Zip member name of the `index`-th image: 00000/img00000000.png."""
    return f"{index // PER_FOLDER:05d}/img{index:08d}.png"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG header, without decoding the pixels."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_STORED
    return info


# ---- inputs -------------------------------------------------------------------------------------

def _read(raw: Path, filtered: Path, dedup: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    paths = ((raw / "posts.parquet", "scrape"), (filtered / "filter.parquet", "filter"), (dedup, "dedup"))
    for path, stage in paths:
        if not path.is_file():
            raise StageError(f"{path} not found: run `dvc repro {stage}` first")
    posts = tables.read_table("posts", raw / "posts.parquet")
    filt = tables.read_table("filter", filtered / "filter.parquet")
    dd = tables.read_table("dedup", dedup)
    if sorted(filt["image_id"]) != sorted(posts["image_id"]):
        raise StageError(f"{filtered}/filter.parquet does not have one row per posts row; re-run filter")
    if sorted(dd["image_id"]) != sorted(filt.loc[filt["kept"], "image_id"]):
        raise StageError(f"{dedup} does not cover exactly the crops filter kept; re-run dedup")
    unknown = set(filt["reason"].dropna()) - set(FILTER_REASONS)
    if unknown:
        raise StageError(f"filter.parquet has unknown reasons {sorted(unknown)}; re-run filter")
    return posts, filt, dd


# ---- funnel -------------------------------------------------------------------------------------

def _step(entered: int, kept: int, rejected: dict[str, int], name: str) -> dict[str, Any]:
    if entered != kept + sum(rejected.values()):
        raise StageError(f"funnel {name}: entered {entered} != kept {kept} + rejected "
                         f"{sum(rejected.values())}; the tables disagree, re-run the pipeline")
    return {"entered": entered, "kept": kept, "rejected": rejected}


def funnel_counts(filt: pd.DataFrame, dd: pd.DataFrame) -> dict[str, Any]:
    """Entered / kept / rejected-per-reason for filter, dedup and overall."""
    f_counts = collections.Counter(filt["reason"].dropna())
    d_counts = collections.Counter(dd["reason"].dropna())
    f_rej = {r: int(f_counts.get(r, 0)) for r in FILTER_REASONS}
    d_rej = {"duplicate": int(d_counts.get("duplicate", 0))}
    f_kept, d_kept = int(filt["kept"].sum()), int(dd["kept"].sum())
    return {
        **_step(len(filt), d_kept, {**f_rej, **d_rej}, "overall"),
        "filter": _step(len(filt), f_kept, f_rej, "filter"),
        "dedup": _step(len(dd), d_kept, d_rej, "dedup"),
    }


# The params that loosen each rejection reason: named when an experiment's thresholds reject everything.
LOOSEN = {
    "decode_error": "the source's files (see posts.decode_status) or images.max_pixels",
    "refused": "the source's files (see posts.decode_detail)",
    "too_small": "filter.min_side",
    "no_dog": "detect.conf or a better detector",
    "multiple_dogs": "filter.max_dogs or filter.min_confidence",
    "low_confidence": "filter.min_confidence",
    "low_cover": "filter.min_cover",
    "off_center": "filter.max_center_shift",
    "partial": "filter.allow_partial",
    "duplicate": "dedup.max_distance",
}


def check_not_empty(counts: dict[str, Any]) -> None:
    """Stop when no image survived filter and dedup, naming the reasons that emptied the set."""
    if counts["kept"] > 0:
        return
    rejected = sorted(((n, r) for r, n in counts["rejected"].items() if n), reverse=True)
    why = ", ".join(f"{r} {n}" for n, r in rejected) or "no image entered"
    loosen = "; ".join(f"{r}: {LOOSEN[r]}" for _, r in rejected if r in LOOSEN)
    raise StageError(f"dataset: none of the {counts['entered']} images survived filter and dedup "
                     f"({why}); loosen the thresholds that rejected them ({loosen or 'see funnel'}) "
                     "and re-run")


# ---- dataset zip --------------------------------------------------------------------------------

def write_zip(shards: Iterable[Path], keep: set[str], out: Path,
              want: set[str]) -> tuple[int, dict[str, bytes]]:
    """Pack the crops in `keep`, in shard order, into the dataset zip at `out`.

    Returns the number of images and the bytes of the crops named in `want` (contact-sheet examples).
    """
    size: tuple[int, int] | None = None
    found: dict[str, bytes] = {}
    count = 0
    with tables.atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
        for shard in tqdm(list(shards), desc="dataset: zip", unit="shard"):
            for image_id, data in images.iter_shard(shard):
                if image_id not in keep:
                    continue
                this = png_size(data)
                if size is not None and this != size:
                    raise StageError(f"crop {image_id} is {this}, others {size}; re-run filter")
                size = this
                zf.writestr(_zip_info(member_name(count)), data)
                count += 1
                if image_id in want:
                    found[image_id] = data
        zf.writestr(_zip_info("dataset.json"), json.dumps({"labels": None}) + "\n")
    if count != len(keep):
        raise StageError(f"{len(keep) - count} kept crops are missing from the crop shards; re-run filter")
    return count, found


# ---- contact sheet ------------------------------------------------------------------------------

def _raw_bytes(shard_dir: Path, posts: pd.DataFrame, ids: set[str]) -> dict[str, bytes]:
    """Bytes of the raw images `ids`, reading only their members."""
    out: dict[str, bytes] = {}
    rows = posts[posts["image_id"].isin(ids) & posts["shard"].notna()]
    for shard, group in rows.groupby("shard", sort=True):
        with zipfile.ZipFile(shard_dir / shard) as zf:
            names = {n.rsplit(".", 1)[0] if "." in n else n: n for n in zf.namelist()}
            for image_id in group["image_id"]:
                if image_id in names:
                    out[image_id] = zf.read(names[image_id])
    return out


def _grey_tile(text: str) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE), (128, 128, 128))
    ImageDraw.Draw(tile).text((6, TILE // 2 - 6), text, fill=(255, 255, 255), font=ImageFont.load_default())
    return tile


def _fit(img: Image.Image) -> Image.Image:
    """`img` scaled (up or down) to fit a TILE square, centred on a dark background."""
    scale = TILE / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img = img.resize(size, Image.Resampling.BILINEAR)
    tile = Image.new("RGB", (TILE, TILE), (32, 32, 32))
    tile.paste(img, ((TILE - img.width) // 2, (TILE - img.height) // 2))
    return tile


def _raw_tile(data: bytes | None, row: dict[str, Any], post: dict[str, Any]) -> Image.Image:
    """The original image with the dog box and crop window drawn, or a grey tile if it cannot be shown."""
    if post["decode_status"] != "ok" or data is None:
        return _grey_tile(str(post["decode_status"]))
    try:
        img = images.decode(data, int(post["width"]) * int(post["height"]))
    except images.DecodeError as e:
        return _grey_tile(e.status)
    draw = ImageDraw.Draw(img)
    width = max(2, min(img.size) // 100)
    if pd.notna(row["x0"]):
        draw.rectangle([row["x0"], row["y0"], row["x1"], row["y1"]], outline=(255, 0, 0), width=width)
    if pd.notna(row["crop_side"]):
        x0, y0, s = int(row["crop_x0"]), int(row["crop_y0"]), int(row["crop_side"])
        draw.rectangle([x0, y0, x0 + s - 1, y0 + s - 1], outline=(0, 255, 0), width=width)
    return _fit(img)


def contact_sheet(rows: list[tuple[str, list[Image.Image]]], per_row: int) -> Image.Image:
    """Labelled rows of tiles: one (label, tiles) per row."""
    font = ImageFont.load_default()
    cols = max(1, per_row)
    sheet = Image.new("RGB", (LABEL_W + cols * (TILE + PAD) + PAD, max(1, len(rows)) * (TILE + PAD) + PAD),
                      (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (label, tiles) in enumerate(rows):
        y = PAD + r * (TILE + PAD)
        draw.text((PAD, y + TILE // 2 - 6), label, fill=(0, 0, 0), font=font)
        for c, tile in enumerate(tiles[:cols]):
            sheet.paste(tile, (LABEL_W + PAD + c * (TILE + PAD), y))
    return sheet


def _sheet_rows(n: int, posts: pd.DataFrame, filt: pd.DataFrame, dd: pd.DataFrame,
                crops: dict[str, bytes], shard_dir: Path, kept_ids: list[str]
                ) -> list[tuple[str, list[Image.Image]]]:
    """Contact-sheet rows: kept crops, then each rejection reason that occurred."""
    reason = dict(zip(filt["image_id"], filt["reason"]))
    reason.update({i: "duplicate" for i in dd.loc[~dd["kept"], "image_id"]})
    by_reason: dict[str, list[str]] = collections.defaultdict(list)
    for image_id in sorted(reason):
        if reason[image_id] is not None:
            by_reason[reason[image_id]].append(image_id)
    examples = {r: ids[:n] for r, ids in by_reason.items()}
    shown = {i for ids in examples.values() for i in ids}
    raw = _raw_bytes(shard_dir, posts, shown)
    post_of = posts[posts["image_id"].isin(shown)].set_index("image_id").to_dict("index")
    filt_of = filt[filt["image_id"].isin(shown)].set_index("image_id").to_dict("index")
    rows = [(f"kept ({int(dd['kept'].sum())})",
             [_fit(images.decode(crops[i], _png_pixels(crops[i]))) for i in kept_ids[:n]])]
    for r in tables.REASONS:
        if r in by_reason:
            tiles = [_raw_tile(raw.get(i), filt_of[i], post_of[i]) for i in examples[r]]
            rows.append((f"{r} ({len(by_reason[r])})", tiles))
    return rows


def _png_pixels(png: bytes) -> int:
    """Pixel count of a PNG, from its header: the decode limit for our own crops."""
    w, h = png_size(png)
    return w * h


# ---- stage --------------------------------------------------------------------------------------

def run(p: DatasetParams, raw: Path, filtered: Path, dedup: Path, out: Path, funnel: Path,
        figures: Path) -> None:
    """Write the dataset zip, reports/funnel.json and the contact sheet."""
    raw, filtered, dedup, out, figures = Path(raw), Path(filtered), Path(dedup), Path(out), Path(figures)
    posts, filt, dd = _read(raw, filtered, dedup)
    counts = funnel_counts(filt, dd)
    check_not_empty(counts)
    keep = set(dd.loc[dd["kept"], "image_id"])
    kept_examples = sorted(keep)[:p.examples_per_reason]
    n, crops = write_zip(images.list_shards(filtered / "shards"), keep, out, set(kept_examples))
    log.info("dataset: %d images in %s", n, out)
    tables.write_json(counts, funnel)
    rows = _sheet_rows(p.examples_per_reason, posts, filt, dd, crops, raw / "shards", kept_examples)
    sheet = contact_sheet(rows, p.examples_per_reason)
    with tables.atomic_path(Path(figures) / "contact_sheet.png") as tmp:
        tmp.write_bytes(images.encode_png(sheet))
    log.info("dataset: funnel %d entered, %d kept", counts["entered"], counts["kept"])
