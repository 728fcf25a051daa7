"""The contact sheet (reports/figures/dataset/contact_sheet.png, a DVC plot): the funnel in pictures.

A labelled row of kept crops, then one row per rejection reason that occurred (in tables.REASONS order),
showing the original image with the dog box (red) and crop window (green); undecodable images are grey
tiles naming their decode status. Examples are the first ``dataset.examples_per_reason`` by image_id.
`sheet_rows` picks and draws the tiles, `draw` lays them out (through the one tiler, stylegan2/grid.py).
"""

from __future__ import annotations

import collections
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from corgigan import images, tables
from corgigan.stylegan2.grid import tile

TILE = 128            # thumbnail side, pixels
LABEL_W = 200         # width of the label column
PAD = 4               # white gap between and around the tiles

Row = tuple[str, list[Image.Image]]   # (label, TILE x TILE RGB tiles)


def raw_bytes(shard_dir: Path, posts: pd.DataFrame, ids: set[str]) -> dict[str, bytes]:
    """Bytes of the raw images `ids`, reading only their members of the shards posts names."""
    out: dict[str, bytes] = {}
    rows = posts[posts["image_id"].isin(ids) & posts["shard"].notna()]
    for shard, group in rows.groupby("shard", sort=True):
        with zipfile.ZipFile(shard_dir / shard) as zf:
            names = images.members_by_id(zf)
            for image_id in group["image_id"]:
                if image_id in names:
                    out[image_id] = zf.read(names[image_id])
    return out


def _grey_tile(text: str) -> Image.Image:
    tile_img = Image.new("RGB", (TILE, TILE), (128, 128, 128))
    ImageDraw.Draw(tile_img).text((6, TILE // 2 - 6), text, fill=(255, 255, 255),
                                  font=ImageFont.load_default())
    return tile_img


def _fit(img: Image.Image) -> Image.Image:
    """`img` scaled (up or down) to fit a TILE square, centred on a dark background."""
    scale = TILE / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img = img.resize(size, Image.Resampling.BILINEAR)
    out = Image.new("RGB", (TILE, TILE), (32, 32, 32))
    out.paste(img, ((TILE - img.width) // 2, (TILE - img.height) // 2))
    return out


def _raw_tile(data: bytes | None, row: dict[str, Any], post: dict[str, Any]) -> Image.Image:
    """The original image with the dog box and crop window drawn, or a grey tile if it cannot be shown."""
    if post["decode_status"] != "ok" or data is None:
        return _grey_tile(str(post["decode_status"]))
    try:
        img = images.decode(data, int(post["width"]) * int(post["height"]))
    except images.DecodeError as e:
        return _grey_tile(e.status)
    pen = ImageDraw.Draw(img)
    width = max(2, min(img.size) // 100)
    if pd.notna(row["x0"]):
        pen.rectangle([row["x0"], row["y0"], row["x1"], row["y1"]], outline=(255, 0, 0), width=width)
    if pd.notna(row["crop_side"]):
        x0, y0, s = int(row["crop_x0"]), int(row["crop_y0"]), int(row["crop_side"])
        pen.rectangle([x0, y0, x0 + s - 1, y0 + s - 1], outline=(0, 255, 0), width=width)
    return _fit(img)


def _png_pixels(png: bytes) -> int:
    """Pixel count of a PNG, from its header: the decode limit for our own crops."""
    w, h = images.png_size(png)
    return w * h


def sheet_rows(n: int, posts: pd.DataFrame, filt: pd.DataFrame, dd: pd.DataFrame,
               crops: dict[str, bytes], shard_dir: Path, kept_ids: list[str]) -> list[Row]:
    """Contact-sheet rows: up to `n` kept crops (`crops` holds their PNGs), then each rejection reason
    that occurred, with up to `n` originals read from the raw shards in `shard_dir`."""
    reason = dict(zip(filt["image_id"], filt["reason"]))
    reason.update({i: "duplicate" for i in dd.loc[~dd["kept"], "image_id"]})
    by_reason: dict[str, list[str]] = collections.defaultdict(list)
    for image_id in sorted(reason):
        if reason[image_id] is not None:
            by_reason[reason[image_id]].append(image_id)
    examples = {r: ids[:n] for r, ids in by_reason.items()}
    shown = {i for ids in examples.values() for i in ids}
    raw = raw_bytes(shard_dir, posts, shown)
    post_of = posts[posts["image_id"].isin(shown)].set_index("image_id").to_dict("index")
    filt_of = filt[filt["image_id"].isin(shown)].set_index("image_id").to_dict("index")
    rows = [(f"kept ({int(dd['kept'].sum())})",
             [_fit(images.decode(crops[i], _png_pixels(crops[i]))) for i in kept_ids[:n]])]
    for r in tables.REASONS:
        if r in by_reason:
            tiles = [_raw_tile(raw.get(i), filt_of[i], post_of[i]) for i in examples[r]]
            rows.append((f"{r} ({len(by_reason[r])})", tiles))
    return rows


def draw(rows: list[Row], per_row: int) -> Image.Image:
    """Labelled rows of tiles: one (label, tiles) per row, at most `per_row` tiles each, on white."""
    cols = max(1, per_row)
    blank = np.full((TILE, TILE, 3), 255, dtype=np.uint8)
    # Short rows end in white cells, so row r's tiles start at cell r * cols.
    cells = [c for _, tiles in rows
             for c in [np.asarray(t) for t in tiles[:cols]] + [blank] * (cols - len(tiles[:cols]))]
    grid = tile(np.stack(cells) if cells else np.zeros((0, TILE, TILE, 3), np.uint8), cols,
                rows=max(1, len(rows)), pad=PAD, fill=255)
    sheet = Image.new("RGB", (LABEL_W + grid.shape[1], grid.shape[0]), (255, 255, 255))
    sheet.paste(Image.fromarray(grid), (LABEL_W, 0))
    font = ImageFont.load_default()
    text = ImageDraw.Draw(sheet)
    for r, (label, _) in enumerate(rows):
        # Labels fit the label column (about 120 of its 200 px at most), so they never touch a tile.
        text.text((PAD, PAD + r * (TILE + PAD) + TILE // 2 - 6), label, fill=(0, 0, 0), font=font)
    return sheet
