"""Parquet schemas are enforced on write and read, and writes are atomic."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from corgigan import tables


def _detection(**over: object) -> dict:
    row = {"image_id": "a" * 16, "x0": 1.0, "y0": 2.0, "x1": 3.0, "y1": 4.0, "confidence": 0.9, "class_id": 0}
    row.update(over)
    return row


def test_roundtrip_and_byte_identical(tmp_path: Path) -> None:
    rows = [_detection(), _detection(image_id="b" * 16, confidence=0.5)]
    tables.write_table("detections", rows, tmp_path / "a.parquet")
    tables.write_table("detections", pd.DataFrame(rows), tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    df = tables.read_table("detections", tmp_path / "a.parquet")
    assert list(df.image_id) == ["a" * 16, "b" * 16]


def test_extra_missing_or_mistyped_columns_are_refused(tmp_path: Path) -> None:
    with pytest.raises(tables.SchemaError, match="extra"):
        tables.write_table("detections", [_detection(score=1.0)], tmp_path / "x.parquet")
    row = _detection()
    del row["class_id"]
    with pytest.raises(tables.SchemaError, match="missing"):
        tables.write_table("detections", [row], tmp_path / "x.parquet")
    with pytest.raises(tables.SchemaError):
        tables.write_table("detections", [_detection(x0="left")], tmp_path / "x.parquet")
    assert not list(tmp_path.iterdir())


def test_reading_a_table_of_another_schema_fails(tmp_path: Path) -> None:
    tables.write_table("detections", [_detection()], tmp_path / "d.parquet")
    with pytest.raises(tables.SchemaError, match="schema differs"):
        tables.read_table("dedup", tmp_path / "d.parquet")


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    tables.write_json({"a": 1}, target)
    with pytest.raises(RuntimeError), tables.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_keeps_the_suffix_fsyncs_before_the_rename_and_is_readable(tmp_path: Path,
                                                                              monkeypatch) -> None:
    import os

    from corgigan.stylegan2 import atomic

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    target = tmp_path / "grid.png"
    with tables.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and atomic.is_temp(tmp.name)
        tmp.write_bytes(b"png")
    assert events == ["fsync", "replace"]
    assert target.read_bytes() == b"png" and (target.stat().st_mode & 0o777) == 0o644
    # the names a killed write leaves, in this form and in the older one without the suffix
    assert atomic.is_temp(".snapshot-000000008.k2j4x.tmp.pt") and atomic.is_temp(".grid-1.png.a8qz1.tmp")
    assert not atomic.is_temp("grid-000000008.png") and not atomic.is_temp(".dvcignore")
