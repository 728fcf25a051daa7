"""export stage: the trained generator as a portable, documented folder (the DVC artifact corgi-generator).

Reads the newest snapshot (or any checkpoint `generate` takes) and the pipeline's records (funnel, metrics,
explore results, the directions), and lets export/folder.py write the folder: safetensors + config, the model
card, samples, the directions and, with export.onnx or --onnx, generator.onnx.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corgigan.errors import StageError
from corgigan.export import folder, model_card
from corgigan.params import ExportParams, FilterParams, ScrapeParams

MAX_RECORD_BYTES = 16 << 20   # the records are a few kilobytes; a larger file is not one of them


def read_record(path: Path | None, what: str) -> dict[str, Any] | None:
    """A JSON record (funnel.json, metrics.json, explore.json) as a dict; None when not given."""
    if path is None:
        return None
    if not path.is_file():
        raise StageError(f"{path}: {what} not found (run the stage that writes it, or leave it out)")
    if path.stat().st_size > MAX_RECORD_BYTES:
        raise StageError(f"{path}: larger than {MAX_RECORD_BYTES:,} bytes; not a {what}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise StageError(f"{path}: {what} is not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise StageError(f"{path}: {what} must be a JSON object")
    return doc


def run(p: ExportParams, scrape: ScrapeParams, filt: FilterParams, checkpoint: Path, out: Path,
        directions: Path | None = None, metrics: Path | None = None, funnel: Path | None = None,
        explore: Path | None = None, onnx: bool = False) -> None:
    """Write the export folder `out` for `checkpoint`; `onnx` adds generator.onnx whatever export.onnx
    says."""
    records = model_card.Records(scrape=scrape, filter=filt, funnel=read_record(funnel, "funnel"),
                                 metrics=read_record(metrics, "metrics file"),
                                 explore=read_record(explore, "explore metrics file"))
    settings = folder.Settings(sample_seed=p.sample_seed, sample_count=p.sample_count,
                               truncation_psi=p.truncation_psi, onnx=p.onnx or onnx)
    folder.write_export(Path(checkpoint), Path(out), settings, records, directions)
