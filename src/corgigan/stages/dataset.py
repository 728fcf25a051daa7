"""dataset stage: pack the training zip, count the funnel and draw the contact sheet.

- ``out``: the dataset zip of the crops that survived filter and dedup (layout and determinism:
  data/dataset_zip.py).
- ``funnel`` (reports/funnel.json, a DVC metric): entered, kept and rejected-per-reason for filter,
  dedup and overall (data/funnel.py).
- ``figures/contact_sheet.png`` (a DVC plot): examples of the kept crops and of each rejection reason
  (data/contact_sheet.py).

This module reads and cross-checks the three tables, then calls those three.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from corgigan import images, tables
from corgigan.data import contact_sheet, dataset_zip
from corgigan.data.funnel import FILTER_REASONS, check_not_empty, funnel_counts
from corgigan.errors import StageError
from corgigan.params import DatasetParams

log = logging.getLogger(__name__)


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


def run(p: DatasetParams, raw: Path, filtered: Path, dedup: Path, out: Path, funnel: Path,
        figures: Path) -> None:
    """Write the dataset zip, reports/funnel.json and the contact sheet."""
    raw, filtered, dedup, out, figures = Path(raw), Path(filtered), Path(dedup), Path(out), Path(figures)
    posts, filt, dd = _read(raw, filtered, dedup)
    counts = funnel_counts(filt, dd)
    for warning in counts["warnings"]:   # also in funnel.json, beside the counts
        log.warning("dataset: %s", warning)
    check_not_empty(counts)
    keep = set(dd.loc[dd["kept"], "image_id"])
    kept_examples = sorted(keep)[:p.examples_per_reason]
    n, crops = dataset_zip.write_zip(images.list_shards(filtered / "shards"), keep, out, set(kept_examples))
    log.info("dataset: %d images in %s", n, out)
    tables.write_json(counts, funnel)
    rows = contact_sheet.sheet_rows(p.examples_per_reason, posts, filt, dd, crops, raw / "shards",
                                    kept_examples)
    sheet = contact_sheet.draw(rows, p.examples_per_reason)
    with tables.atomic_path(figures / "contact_sheet.png") as tmp:
        tmp.write_bytes(images.encode_png(sheet))
    log.info("dataset: funnel %d entered, %d kept", counts["entered"], counts["kept"])
