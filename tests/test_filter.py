"""filter stage: one decision per scraped image, every reason reachable, crops exact and reproducible.

The raw fixture (tests/helpers.py make_raw) is built the way scrape stores it (ShardWriter shards +
posts.parquet) and the boxes are written as detect writes them, so these tests do not depend on those
stages.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from corgigan import images, tables
from corgigan.data import filter_rules
from corgigan.errors import StageError
from corgigan.params import FilterParams, ImagesParams
from corgigan.stages import filter as filter_stage
from tests.helpers import CASES, FILTER, IMAGES, image_id, make_raw


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    raw = make_raw(tmp_path, [spec for spec, _ in CASES])
    return raw, tmp_path / "detections.parquet"


def _run(raw: Path, det: Path, out: Path, p: FilterParams = FILTER) -> Any:
    filter_stage.run(p, IMAGES, raw=raw, detections=det, out=out)
    return tables.read_table("filter", out / "filter.parquet")


def test_every_reason_is_produced_and_counts_add_up(planted, tmp_path):
    raw, det = planted
    table = _run(raw, det, tmp_path / "filter")
    expected = {image_id(spec.name): reason for spec, reason in CASES}
    got = dict(zip(table["image_id"], table["reason"]))
    assert got == expected
    assert list(table["image_id"]) == [image_id(s.name) for s, _ in CASES]   # posts order
    assert (table["kept"] == table["reason"].isna()).all()
    assert set(table["reason"].dropna()) == set(tables.REASONS) - {"duplicate"}
    assert len(table) == int(table["kept"].sum()) + int(table["reason"].notna().sum())


def test_geometry_columns_follow_the_checks(planted, tmp_path):
    raw, det = planted
    table = _run(raw, det, tmp_path / "filter").set_index("image_id")
    kept = table.loc[image_id("kept_a")]
    assert (kept["crop_x0"], kept["crop_y0"], kept["crop_side"]) == (50, 30, 80)
    assert kept["cover"] == pytest.approx(60 * 60 / 80**2)
    assert kept["num_dogs"] == 1 and kept["confidence"] == pytest.approx(0.9)
    assert table.loc[image_id("kept_weak_extra"), "num_dogs"] == 1
    assert table.loc[image_id("pack"), "num_dogs"] == 2
    assert np.isnan(table.loc[image_id("pack"), "cover"])          # geometry not reached
    corner = table.loc[image_id("corner")]
    assert corner["center_shift_x"] == pytest.approx((40 - 14) / 100)
    assert np.isnan(table.loc[image_id("undecodable"), "width"])


def test_crops_are_the_oriented_window_resized(planted, tmp_path):
    raw, det = planted
    out = tmp_path / "filter"
    table = _run(raw, det, out).set_index("image_id")
    crops = {i: d for _, i, d in images.iter_shards(out / "shards")}
    kept_ids = [image_id(s.name) for s, r in CASES if r is None]
    assert list(crops) == kept_ids
    posts = tables.read_table("posts", raw / "posts.parquet").set_index("image_id")
    for iid in kept_ids:
        crop = images.decode(crops[iid], 10**6)
        assert crop.size == (32, 32)
        row = table.loc[iid]
        shard = raw / "shards" / posts.loc[iid, "shard"]
        with zipfile.ZipFile(shard) as zf:
            data = next(zf.read(n) for n in zf.namelist() if n.startswith(iid))
        src = images.decode(data, 10**7)
        assert src.size == (posts.loc[iid, "width"], posts.loc[iid, "height"])
        x0, y0, s = int(row["crop_x0"]), int(row["crop_y0"]), int(row["crop_side"])
        want = src.resize((32, 32), Image.Resampling.LANCZOS, box=(x0, y0, x0 + s, y0 + s))
        assert np.array_equal(np.asarray(crop), np.asarray(want))
    assert posts.loc[image_id("kept_exif"), "width"] == 160    # oriented


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rerun_is_byte_identical_and_drops_stale_shards(planted, tmp_path):
    raw, det = planted
    out = tmp_path / "filter"
    _run(raw, det, out)
    first = _tree_bytes(out)
    (out / "shards" / "shard-00099.zip").write_bytes(b"stale")
    _run(raw, det, out)
    assert _tree_bytes(out) == first
    assert sorted(first) == ["filter.parquet", "shards/shard-00000.zip", "shards/shard-00001.zip"]


def test_allow_partial_keeps_the_big_dog(planted, tmp_path):
    raw, det = planted
    table = _run(raw, det, tmp_path / "filter", dataclasses.replace(FILTER, allow_partial=True))
    row = table.set_index("image_id").loc[image_id("huge")]
    assert row["kept"] and row["partial"]


def test_no_kept_images_gives_empty_shards(planted, tmp_path):
    raw, det = planted
    out = tmp_path / "filter"
    table = _run(raw, det, out, dataclasses.replace(FILTER, min_confidence=1.0))
    assert not table["kept"].any()
    assert images.list_shards(out / "shards") == []


def test_stale_detections_are_refused(planted, tmp_path):
    raw, _ = planted
    det = tmp_path / "other.parquet"
    tables.write_table("detections", [{"image_id": "0" * 16, "x0": 0, "y0": 0, "x1": 1, "y1": 1,
                                       "confidence": 0.9, "class_id": 0}], det)
    with pytest.raises(StageError, match="re-run detect"):
        _run(raw, det, tmp_path / "filter")


def test_missing_inputs_say_which_stage_to_run(tmp_path):
    with pytest.raises(StageError, match="dvc repro scrape"):
        _run(tmp_path / "raw", tmp_path / "d.parquet", tmp_path / "filter")


def test_decide_orders_checks():
    post = {"image_id": "x", "decode_status": "ok", "width": 200, "height": 150}
    # too_small wins over everything the boxes would say
    row, _ = filter_rules.decide({**post, "width": 50}, [], FILTER)
    assert row["reason"] == "too_small"
    # a faint best box is low_confidence even when there are several boxes
    row, _ = filter_rules.decide(post, [(0, 0, 10, 10, 0.3), (20, 20, 30, 30, 0.2)], FILTER)
    assert row["reason"] == "low_confidence" and row["num_dogs"] == 0
    row, win = filter_rules.decide(post, [(60, 40, 120, 100, 0.9)], FILTER)
    assert row["kept"] and win is not None and win.side == 80


def test_image_that_no_longer_decodes_becomes_a_decode_error_row(planted, tmp_path):
    """images.max_pixels lowered after scrape: kept images now too large to decode are rejected rows."""
    raw, det = planted
    out = tmp_path / "filter"
    filter_stage.run(FILTER, ImagesParams(max_pixels=160 * 120), raw=raw, detections=det, out=out)
    table = tables.read_table("filter", out / "filter.parquet").set_index("image_id")
    for name in ("kept_a", "kept_weak_extra"):   # 200x150 > the new limit; 160x120 still fits
        row = table.loc[image_id(name)]
        assert not row["kept"] and row["reason"] == "decode_error"
        assert row[["crop_side", "cover", "confidence", "x0"]].isna().all()
    assert table.loc[image_id("kept_png"), "kept"]
    assert len(table) == len(CASES)
    with zipfile.ZipFile(next((out / "shards").glob("*.zip"))) as zf:
        assert image_id("kept_a") + ".png" not in zf.namelist()


def test_raw_set_missing_an_image_stops(planted, tmp_path):
    raw, det = planted
    shard = sorted((raw / "shards").glob("*.zip"))[0]
    with zipfile.ZipFile(shard) as zf:
        members = {n: zf.read(n) for n in zf.namelist() if not n.startswith(image_id("kept_a"))}
    with zipfile.ZipFile(shard, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(StageError, match="data/raw is inconsistent"):
        _run(raw, det, tmp_path / "filter")
