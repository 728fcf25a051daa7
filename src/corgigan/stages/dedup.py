"""dedup stage: group near-duplicate crops and keep one of each group.

Reads the filter output (filter.parquet and the crop shards) and writes dedup.parquet: one row per crop,
sorted by image_id. The hashing, pair search, clustering and choice of the kept crop are data/dedup.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from corgigan import images, tables
from corgigan.data import dedup
from corgigan.errors import StageError
from corgigan.parallel import workers
from corgigan.params import DedupParams

log = logging.getLogger(__name__)


def _kept_crops(crops: Path) -> tuple[pd.DataFrame, list[Path]]:
    table = crops / "filter.parquet"
    if not table.is_file():
        raise StageError(f"{table} not found: run `dvc repro filter` first")
    filt = tables.read_table("filter", table)
    kept = filt.loc[filt["kept"], ["image_id", "confidence", "crop_side"]]
    return kept, images.list_shards(crops / "shards")


def run(p: DedupParams, crops: Path, out: Path) -> None:
    """Write dedup.parquet: hash, cluster and keep decision for every crop the filter kept."""
    kept, shards = _kept_crops(Path(crops))
    processes = workers()
    hashes = dedup.hash_shards(shards, p.method, processes)
    missing, extra = set(kept["image_id"]) - set(hashes), set(hashes) - set(kept["image_id"])
    if missing or extra:
        example = min(missing or extra)
        raise StageError(f"{crops}: crop shards and filter.parquet disagree ({len(missing)} kept images "
                         f"without a crop, {len(extra)} crops not kept, e.g. {example}); re-run filter")
    # No crops is a valid outcome (strict thresholds): an empty table, not an error.
    rows = dedup.choose(kept, hashes, p.max_distance, processes)
    tables.write_table("dedup", rows, out)
    dups = sum(1 for r in rows if not r["kept"])
    log.info("dedup: %d crops, %d duplicates, %d kept", len(rows), dups, len(rows) - dups)
