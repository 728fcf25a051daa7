"""filter stage: decide, for every scraped image, whether it yields one square dog crop, and crop it.

Writes ``out/filter.parquet`` (one row per posts row, in posts order) and ``out/shards/`` (PNG crops of
the kept images at ``filter.resolution``, named ``<image_id>.png``, in posts order). The rules, their
order and the crop plan are data/filter_rules.py; this module reads the tables, runs the crop tasks over the
cores and writes the outputs.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from corgigan import images, tables
from corgigan.data import filter_rules
from corgigan.errors import StageError
from corgigan.parallel import ordered_map, workers
from corgigan.params import FilterParams, ImagesParams

log = logging.getLogger(__name__)

_POSTS_COLS = ("image_id", "decode_status", "width", "height", "shard")   # all that filter reads


def _read_inputs(raw: Path, detections: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    posts_path = raw / "posts.parquet"
    for path, stage in ((posts_path, "scrape"), (detections, "detect")):
        if not path.is_file():
            raise StageError(f"{path} not found: run `dvc repro {stage}` first")
    posts = tables.read_table("posts", posts_path, columns=_POSTS_COLS)
    det = tables.read_table("detections", detections)
    if posts["image_id"].duplicated().any():
        dup = posts.loc[posts["image_id"].duplicated(), "image_id"].iloc[0]
        raise StageError(f"{posts_path}: image_id {dup} appears twice; re-run scrape")
    unknown = set(det["image_id"]) - set(posts["image_id"])
    if unknown:
        raise StageError(f"{detections} has boxes for {len(unknown)} images not in {posts_path} "
                         f"(e.g. {min(unknown)}): it is stale, re-run detect")
    return posts, det


def _write_crops(tasks: list[filter_rules.CropTask], out_dir: Path, shard_size: int,
                 total: int) -> dict[str, filter_rules.CropResult]:
    """Run the crop tasks and store the PNGs in shards under `out_dir`; return the failures by id."""
    failures: dict[str, filter_rules.CropResult] = {}
    with images.ShardWriter(out_dir, shard_size) as writer, \
            tqdm(total=total, desc="filter: crop", unit="img") as bar:
        for results in ordered_map(filter_rules.crop_chunk, tasks, workers()):
            for image_id, png, status, detail in results:
                if png is None:
                    failures[image_id] = (image_id, None, status, detail)
                else:
                    writer.add(image_id, png, ".png")
            bar.update(len(results))
    return failures


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished `src` onto `dst`, removing what `dst` held (stale shards of a previous run)."""
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(src, dst)


def run(p: FilterParams, images_p: ImagesParams, raw: Path, detections: Path, out: Path) -> None:
    """Write out/filter.parquet (every posts row) and out/shards (crops of the kept images)."""
    posts, det = _read_inputs(Path(raw), Path(detections))
    table, crop_boxes = filter_rules.decide_all(posts, filter_rules.boxes_by_image(det), p)
    del det  # before the crop pool forks: workers need none of it
    log.info("filter: %d images, %d to crop", table.num_rows, len(crop_boxes))

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp_dir = out / ".shards.tmp"
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tasks = filter_rules.plan_crops(posts, crop_boxes, Path(raw) / "shards", p, images_p)
    failures = _write_crops(tasks, tmp_dir, p.shard_size, len(crop_boxes))
    table = filter_rules.mark_failures(table, failures)
    _replace_dir(tmp_dir, out / "shards")
    tables.write_table("filter", table, out / "filter.parquet")
    _log_counts(table)


def _log_counts(table: pa.Table) -> None:
    counts = collections.Counter(r or "kept" for r in table.column("reason").to_pylist())
    entered, kept = table.num_rows, counts.pop("kept", 0)
    log.info("filter: %d entered, %d kept; rejected %s", entered, kept,
             ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")
