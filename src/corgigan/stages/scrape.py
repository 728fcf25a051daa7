"""Scrape: collect every image of the configured source into shards and posts.parquet.

Items stream through one at a time (bounded memory): each is decoded once to learn its size, format
and whether it is usable, its original bytes go into a shard, and one posts row records it, usable
or not. The synthetic source also writes truth.parquet (what was planted); other sources write it
empty. Outputs: <out>/shards/shard-NNNNN.zip, <out>/posts.parquet, <out>/truth.parquet.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from corgigan import images as images_mod
from corgigan import tables
from corgigan.data.sources import Source, SourceItem
from corgigan.errors import StageError
from corgigan.params import ImagesParams, ScrapeParams

log = logging.getLogger(__name__)

# Pillow format name -> file extension inside the shards.
_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp",
               "BMP": ".bmp", "TIFF": ".tif", "ICO": ".ico", "PPM": ".ppm", "AVIF": ".avif"}


def image_id(source: str, source_id: str) -> str:
    """The stable id of an image: 16 hex chars of sha256("<source>:<source_id>")."""
    return hashlib.sha256(f"{source}:{source_id}".encode()).hexdigest()[:16]


def extension(fmt: str | None) -> str:
    """Shard member extension for a Pillow format name; '.bin' for undecodable bytes."""
    if fmt is None:
        return ".bin"
    return _EXTENSIONS.get(fmt, "." + fmt.lower())


def build_source(p: ScrapeParams, cache: Path) -> Source:
    """The source named by scrape.source, built from its params section."""
    if p.source == "synthetic":
        from corgigan.data.sources.synthetic import SyntheticSource
        return SyntheticSource(p.synthetic)
    if p.source == "folder":
        from corgigan.data.sources.folder import FolderSource
        return FolderSource(p.folder.path)
    if p.source == "instagram":
        from corgigan.data.sources.instagram import InstagramSource
        return InstagramSource(p.instagram, cache_dir=cache / "instagram")
    raise StageError(f"scrape.source: unknown source {p.source!r}")


def post_row(source: str, item: SourceItem, max_pixels: int) -> tuple[dict[str, Any], str | None]:
    """The posts row of one item, and the shard extension of its bytes (None: do not store)."""
    row: dict[str, Any] = {
        "image_id": image_id(source, item.source_id), "source": source, "source_id": item.source_id,
        "url": item.url, "owner": item.owner, "timestamp": item.timestamp, "likes": item.likes,
        "width": None, "height": None, "format": None, "sha256": None, "num_bytes": len(item.data),
        "decode_status": "ok", "decode_detail": None, "shard": None,
    }
    if item.refused is not None:
        row.update(decode_status="refused", decode_detail=item.refused)
        return row, None
    row["sha256"] = images_mod.sha256(item.data)
    try:
        img, fmt = images_mod.decode_with_format(item.data, max_pixels)
    except images_mod.DecodeError as e:
        row.update(decode_status=e.status, decode_detail=e.detail)
        return row, extension(None)
    row.update(width=img.width, height=img.height, format=fmt)
    return row, extension(fmt)


def _clear(out: Path) -> None:
    """Remove what an earlier run wrote here, so a rerun never mixes shards (only our own files)."""
    shutil.rmtree(out / "shards", ignore_errors=True)
    for name in ("posts.parquet", "truth.parquet"):
        (out / name).unlink(missing_ok=True)


def _truth_rows(source: Source) -> list[dict[str, Any]]:
    """The source's truth rows keyed by image_id (synthetic only; empty for real sources)."""
    truth = getattr(source, "truth", None)
    if truth is None:
        return []
    rows = []
    for r in truth():
        dup = r["duplicate_of"]
        rows.append({**r, "image_id": image_id(source.name, r["source_id"]),
                     "duplicate_of": image_id(source.name, dup) if dup else None})
    return rows


def _store(source: Source, out: Path, shard_size: int, max_pixels: int) -> list[pa.Table]:
    """Stream every item into shards; return the posts rows as Arrow chunks, in source order."""
    chunks: list[pa.Table] = []
    pending: list[dict[str, Any]] = []     # rows not yet packed: a shard's worth at most
    seen: set[str] = set()                 # source_ids so far: a repeat is a source bug
    statuses: Counter[str] = Counter()
    with images_mod.ShardWriter(out / "shards", shard_size) as shards:
        items = tqdm(source.items(), total=getattr(source, "total", None), desc=f"scrape {source.name}",
                     unit="img", disable=None)
        for item in items:
            if item.source_id in seen:
                raise StageError(f"scrape: source {source.name} gave source_id {item.source_id!r} twice; "
                                 "every item needs a unique id (for a .zip: two members with one name)")
            seen.add(item.source_id)
            row, ext = post_row(source.name, item, max_pixels)
            if ext is not None:
                row["shard"] = shards.add(row["image_id"], item.data, ext)
            statuses[row["decode_status"]] += 1
            pending.append(row)
            if len(pending) >= shard_size:
                chunks.append(tables.to_arrow("posts", pending))
                pending = []
    if pending:
        chunks.append(tables.to_arrow("posts", pending))
    log.info("scrape: %d images from %s (%s)", len(seen), source.name,
             ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    return chunks


def run(p: ScrapeParams, images: ImagesParams, out: Path, cache: Path) -> None:
    """Stream the configured source into `out`: shards/, posts.parquet and truth.parquet."""
    source = build_source(p, cache)
    _clear(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        chunks = _store(source, out, p.shard_size, images.max_pixels)
        if not chunks:
            raise StageError(f"scrape: source {source.name} gave no images; check scrape.{source.name} "
                             "in params.yaml (and that the source has files)")
        tables.write_table("posts", pa.concat_tables(chunks), out / "posts.parquet")
        tables.write_table("truth", _truth_rows(source), out / "truth.parquet")
    except BaseException:
        _clear(out)       # a failed run leaves no shards that a later stage could take for complete
        raise
    log.info("scrape: wrote %s", out)
