"""The scrape stage end to end through the CLI: shards, posts and truth, byte-identical on rerun."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from corgigan import images
from corgigan.cli import main
from corgigan.stages.scrape import image_id
from corgigan.tables import DECODE_STATUSES, read_table

ROOT = Path(__file__).resolve().parents[1]


def _params(tmp_path: Path, **scrape: object) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["scrape"]["synthetic"].update(num_images=4, min_short_side=64, max_short_side=96, planted_per_case=1)
    raw["scrape"]["shard_size"] = 8
    raw["scrape"].update(scrape)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _scrape(params: Path, out: Path, cache: Path) -> int:
    return main(["--params", str(params), "scrape", "--out", str(out), "--cache", str(cache)])


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_synthetic_scrape_end_to_end(tmp_path: Path) -> None:
    params, out, cache = _params(tmp_path), tmp_path / "raw", tmp_path / "cache"
    assert _scrape(params, out, cache) == 0
    posts = read_table("posts", out / "posts.parquet")
    truth = read_table("truth", out / "truth.parquet")
    # entered = rows: every item of the source has exactly one row
    assert posts.image_id.is_unique and len(posts) == truth.image_id.nunique()
    assert set(posts.image_id) == set(truth.image_id)
    assert set(posts.decode_status) <= set(DECODE_STATUSES)
    assert set(posts.decode_status) == {"ok", "truncated", "empty", "not_image", "too_large"}
    assert (posts.image_id == [image_id("synthetic", s) for s in posts.source_id]).all()
    # every stored image is in the shard named by its row, with the recorded hash and extension
    stored = {}
    for shard in images.list_shards(out / "shards"):
        with zipfile.ZipFile(shard) as zf:
            for name in zf.namelist():
                stored[name.rsplit(".", 1)[0]] = (shard.name, name.rsplit(".", 1)[1], zf.read(name))
    assert set(stored) == set(posts.image_id)
    assert len(images.list_shards(out / "shards")) == -(-len(posts) // 8)
    for row in posts.itertuples():
        shard, ext, data = stored[row.image_id]
        assert shard == row.shard and images.sha256(data) == row.sha256 and len(data) == row.num_bytes
        if row.decode_status == "ok":
            assert ext == {"JPEG": "jpg", "PNG": "png", "GIF": "gif"}[row.format]
            assert images.decode(data, 10**8).size == (row.width, row.height)
        else:
            assert ext == "bin" and pd.isna(row.width) and row.decode_detail
    # duplicates in truth point at image_ids present in posts
    dup = truth.dropna(subset=["duplicate_of"])
    assert len(dup) and set(dup.duplicate_of) <= set(posts.image_id)


def test_rerun_is_byte_identical_and_clears_old_shards(tmp_path: Path) -> None:
    params, out, cache = _params(tmp_path), tmp_path / "raw", tmp_path / "cache"
    assert _scrape(params, out, cache) == 0
    first = _files(out)
    (out / "shards" / "shard-00099.zip").write_bytes(b"stale")      # left by an older, larger run
    assert _scrape(params, out, cache) == 0
    assert _files(out) == first


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (30, 20), (200, 120, 50)).save(buf, format="JPEG")
    return buf.getvalue()


def test_folder_scrape_records_refused_and_not_image(tmp_path: Path) -> None:
    z = tmp_path / "photos.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a.jpg", _jpeg_bytes())
        zf.writestr("notes.txt", b"hello")
        zf.writestr("../escape.jpg", _jpeg_bytes())
    params = _params(tmp_path, source="folder", folder={"path": str(z)})
    assert _scrape(params, tmp_path / "raw", tmp_path / "cache") == 0
    posts = read_table("posts", tmp_path / "raw" / "posts.parquet").set_index("source_id")
    assert posts.loc["a.jpg", "decode_status"] == "ok" and posts.loc["a.jpg", "width"] == 30
    assert posts.loc["notes.txt", "decode_status"] == "not_image"
    refused = posts.loc["../escape.jpg"]
    assert refused.decode_status == "refused" and refused.shard is None and refused.num_bytes == 0
    assert "escapes" in refused.decode_detail
    assert len(read_table("truth", tmp_path / "raw" / "truth.parquet")) == 0


def test_duplicate_source_id_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    z = tmp_path / "photos.zip"
    with zipfile.ZipFile(z, "w") as zf, pytest.warns(UserWarning):
        zf.writestr("a.jpg", _jpeg_bytes())
        zf.writestr("a.jpg", _jpeg_bytes())                 # zip allows a repeated member name
    params = _params(tmp_path, source="folder", folder={"path": str(z)})
    out = tmp_path / "raw"
    assert _scrape(params, out, tmp_path / "cache") == 2
    assert "'a.jpg' twice" in caplog.text
    assert not (out / "posts.parquet").exists() and not images.list_shards(out / "shards")


def test_missing_folder_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    params = _params(tmp_path, source="folder", folder={"path": str(tmp_path / "none")})
    assert _scrape(params, tmp_path / "raw", tmp_path / "cache") == 2
    assert "does not exist" in caplog.text
