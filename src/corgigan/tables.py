"""Parquet schemas, declared once, and atomic writes.

Every table the pipeline writes is named here with its columns and types. `write_table` checks the
rows against the schema and writes through `atomic_path` (a temporary file, fsync'ed, then renamed into
place; stylegan2/atomic.py owns it), so an interrupted stage never leaves a half-written table. Boxes
are pixel xyxy in the original image. Library modules write their other outputs through
`tables.atomic_path` too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# The one temporary-file rule (atomic write: fsync, then rename; the sweep of what a killed write left;
# see its module), re-exported for the library modules.
from corgigan.stylegan2.atomic import atomic_path
from corgigan.stylegan2.atomic import remove_stale_temps as remove_stale_temps

# Why an image was dropped (the contact sheet's row order); `None` in a `reason` column means kept.
REASONS: dict[str, str] = {
    "decode_error": "empty, truncated, not an image or too large (posts.decode_status says which)",
    "refused": "never read: the source refused the entry (a path escaping the folder, an outside link)",
    "too_small": "short side < filter.min_side",
    "no_dog": "no box of the dog class",
    "multiple_dogs": "more than filter.max_dogs boxes at or above filter.min_confidence",
    "low_confidence": "best box below filter.min_confidence",
    "low_cover": "dog covers less than filter.min_cover of the crop window",
    "off_center": "the border slide moved the window more than filter.max_center_shift",
    "partial": "dog larger than the crop window (unless filter.allow_partial)",
    "duplicate": "near-duplicate of a kept image (dedup.max_distance)",
}

# posts.decode_status values besides "ok"
DECODE_STATUSES = ("ok", "empty", "not_image", "truncated", "too_large", "corrupt",
                   "refused")   # refused: never read (a path escaping the source folder, a link, ...)

_BOX = [("x0", pa.float32()), ("y0", pa.float32()), ("x1", pa.float32()), ("y1", pa.float32())]

SCHEMAS: dict[str, pa.Schema] = {
    # One row per image that entered scrape.
    "posts": pa.schema([
        ("image_id", pa.string()),         # stable id, the key of every later table
        ("source", pa.string()),           # synthetic | folder | instagram
        ("source_id", pa.string()),        # id within the source (post shortcode + index, path...)
        ("url", pa.string()),
        ("owner", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("likes", pa.int64()),
        ("width", pa.int32()),             # after EXIF orientation; null when not decodable
        ("height", pa.int32()),
        ("format", pa.string()),           # Pillow format name (JPEG, PNG, ...)
        ("sha256", pa.string()),           # of the stored bytes
        ("num_bytes", pa.int64()),
        ("decode_status", pa.string()),    # one of DECODE_STATUSES
        ("decode_detail", pa.string()),    # the decoder's message when not ok
        ("shard", pa.string()),            # shard file name holding the bytes
    ]),
    # One row per detected box.
    "detections": pa.schema([
        ("image_id", pa.string()),
        *_BOX,
        ("confidence", pa.float32()),
        ("class_id", pa.int32()),
    ]),
    # One row per image that entered scrape: the crop decision.
    "filter": pa.schema([
        ("image_id", pa.string()),
        ("kept", pa.bool_()),
        ("reason", pa.string()),           # one of REASONS, null when kept
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("num_dogs", pa.int32()),
        ("confidence", pa.float32()),      # of the chosen box
        *_BOX,                             # the chosen box
        ("crop_x0", pa.int32()),           # crop window, pixels in the oriented original
        ("crop_y0", pa.int32()),
        ("crop_side", pa.int32()),
        ("cover", pa.float32()),
        ("center_shift_x", pa.float32()),
        ("center_shift_y", pa.float32()),
        ("partial", pa.bool_()),
    ]),
    # What the synthetic source planted: one row per drawn dog, or one row with null box and
    # num_dogs 0 for an image without a dog. Empty for real sources.
    "truth": pa.schema([
        ("image_id", pa.string()),
        ("source_id", pa.string()),
        ("case", pa.string()),             # ordinary, multiple_dogs, tiny_dog, truncated_jpeg, ...
        ("num_dogs", pa.int32()),          # dogs drawn in the image
        ("dog_index", pa.int32()),         # 0..num_dogs-1; null when num_dogs is 0
        *_BOX,                             # true box, pixels in the EXIF-oriented image; null: no dog
        ("duplicate_of", pa.string()),     # image_id this one duplicates (near or exact); else null
    ]),
    # One row per crop kept by filter.
    "dedup": pa.schema([
        ("image_id", pa.string()),
        ("hash", pa.string()),             # hex perceptual hash
        ("cluster", pa.int64()),           # images in one cluster are near-duplicates
        ("kept", pa.bool_()),
        ("reason", pa.string()),           # "duplicate" or null
        ("duplicate_of", pa.string()),     # the kept image of the cluster
        ("distance", pa.int32()),          # Hamming distance to duplicate_of
    ]),
}


class SchemaError(ValueError):
    """Rows do not match the declared schema of a table."""


def to_arrow(name: str, rows: pd.DataFrame | Sequence[dict[str, Any]]) -> pa.Table:
    """Convert rows to an Arrow table of schema `name`; missing or extra columns are an error."""
    schema = SCHEMAS[name]
    if isinstance(rows, pd.DataFrame):
        cols = list(rows.columns)
        if set(cols) != set(schema.names):
            raise SchemaError(f"table {name}: columns {sorted(cols)} != schema {sorted(schema.names)}")
        try:
            return pa.Table.from_pandas(rows[schema.names], schema=schema, preserve_index=False)\
                .replace_schema_metadata(None)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise SchemaError(f"table {name}: {e}") from e
    for i, row in enumerate(rows):
        if set(row) != set(schema.names):
            extra, missing = set(row) - set(schema.names), set(schema.names) - set(row)
            raise SchemaError(f"table {name}, row {i}: extra {sorted(extra)}, missing {sorted(missing)}")
    try:
        return pa.Table.from_pylist(list(rows), schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise SchemaError(f"table {name}: {e}") from e


def write_table(name: str, rows: pa.Table | pd.DataFrame | Sequence[dict[str, Any]],
                path: str | Path) -> None:
    """Check `rows` against schema `name` and write them atomically to a parquet file.

    `rows` may be an Arrow table already built with `to_arrow` (e.g. chunks concatenated by a
    streaming stage); its schema must be exactly the declared one.
    """
    if isinstance(rows, pa.Table):
        if not rows.schema.equals(SCHEMAS[name], check_metadata=False):
            raise SchemaError(f"table {name}: schema {rows.schema} != declared {SCHEMAS[name]}")
        table = rows.combine_chunks()
    else:
        table = to_arrow(name, rows)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_table(name: str, path: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a parquet table (only `columns`, when given) and check the file has schema `name`."""
    if not pq.read_schema(path).equals(SCHEMAS[name], check_metadata=False):
        raise SchemaError(f"{path}: schema differs from table {name}; re-run the stage that writes it")
    return pq.read_table(path, columns=list(columns) if columns is not None else None).to_pandas()


def write_json(obj: Any, path: str | Path) -> None:
    """Write `obj` as stable, indented JSON (sorted keys), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
