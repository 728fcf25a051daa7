"""dedup stage: near-duplicates found, one kept per cluster by the documented rule, same pairs as
imagededup's own search."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from imagededup.methods import PHash
from PIL import Image

from corgigan import images, tables
from corgigan.data import dedup
from corgigan.errors import StageError
from corgigan.params import DedupParams
from corgigan.stages import dedup as dedup_stage

PARAMS = DedupParams(method="phash", max_distance=4)


def smooth(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize((size, size), Image.Resampling.BICUBIC)


def near_copy(img: Image.Image) -> Image.Image:
    """The same picture re-encoded as a lossy JPEG at another size and brought back."""
    buf = io.BytesIO()
    img.resize((47, 47), Image.Resampling.BILINEAR).save(buf, format="JPEG", quality=60)
    return images.decode(buf.getvalue(), 10**6).resize(img.size, Image.Resampling.BICUBIC)


def filter_row(iid: str, conf: float, side: int) -> dict[str, Any]:
    row: dict[str, Any] = {n: None for n in tables.SCHEMAS["filter"].names}
    row.update(image_id=iid, kept=True, width=side, height=side, confidence=conf, crop_side=side)
    return row


def make_crops(root: Path, crops: list[tuple[str, Image.Image, float, int]]) -> Path:
    """A filter output: crop shards plus filter.parquet with (id, image, confidence, crop side)."""
    with images.ShardWriter(root / "shards", 2) as w:
        for iid, img, _, _ in crops:
            w.add(iid, images.encode_png(img), ".png")
    rows = [filter_row(iid, conf, side) for iid, _, conf, side in crops]
    tables.write_table("filter", rows, root / "filter.parquet")
    return root


def test_near_duplicate_found_and_exactly_one_kept(tmp_path):
    base = smooth(1)
    crops = [("a" * 16, base, 0.7, 500), ("b" * 16, near_copy(base), 0.9, 400),
             ("c" * 16, smooth(2), 0.8, 600), ("d" * 16, smooth(3), 0.8, 600)]
    dedup_stage.run(PARAMS, make_crops(tmp_path / "filter", crops), tmp_path / "dedup.parquet")
    t = tables.read_table("dedup", tmp_path / "dedup.parquet").set_index("image_id")
    assert list(t.index) == sorted(t.index)
    a, b = t.loc["a" * 16], t.loc["b" * 16]
    assert a["cluster"] == b["cluster"]
    assert b["kept"] and not a["kept"]                        # higher confidence wins
    assert a["reason"] == "duplicate" and a["duplicate_of"] == "b" * 16
    assert 0 <= a["distance"] <= PARAMS.max_distance
    assert t.loc["c" * 16, "kept"] and t.loc["d" * 16, "kept"]
    assert t["cluster"].nunique() == 3
    assert list(t["cluster"]) == [0, 0, 1, 2]                 # numbered by smallest image_id
    assert t["hash"].str.fullmatch("[0-9a-f]{16}").all()


def test_ties_prefer_larger_crop_then_smaller_id(tmp_path):
    img = smooth(4)
    crops = [("a" * 16, img, 0.8, 500), ("b" * 16, img, 0.8, 700), ("c" * 16, img, 0.8, 700)]
    dedup_stage.run(PARAMS, make_crops(tmp_path / "f", crops), tmp_path / "d.parquet")
    t = tables.read_table("dedup", tmp_path / "d.parquet").set_index("image_id")
    assert list(t["kept"]) == [False, True, False]
    assert set(t["duplicate_of"].dropna()) == {"b" * 16}
    assert list(t["distance"].fillna(-1)) == [0, -1, 0]


def test_no_crops_gives_an_empty_table(tmp_path):
    dedup_stage.run(PARAMS, make_crops(tmp_path / "f", []), tmp_path / "d.parquet")
    assert len(tables.read_table("dedup", tmp_path / "d.parquet")) == 0


def test_crops_and_table_must_agree(tmp_path):
    root = make_crops(tmp_path / "f", [("a" * 16, smooth(1), 0.8, 500)])
    tables.write_table("filter", [filter_row("b" * 16, 0.8, 500)], root / "filter.parquet")
    with pytest.raises(StageError, match="re-run filter"):
        dedup_stage.run(PARAMS, root, tmp_path / "d.parquet")


def test_rerun_is_byte_identical(tmp_path):
    crops = [(f"{i:016x}", smooth(i % 5), 0.5 + i / 100, 500) for i in range(12)]
    root = make_crops(tmp_path / "f", crops)
    dedup_stage.run(PARAMS, root, tmp_path / "1.parquet")
    dedup_stage.run(PARAMS, root, tmp_path / "2.parquet")
    assert (tmp_path / "1.parquet").read_bytes() == (tmp_path / "2.parquet").read_bytes()
    t = tables.read_table("dedup", tmp_path / "1.parquet")
    assert int(t["kept"].sum()) == 5                           # five distinct pictures


# imagededup's hashes of smooth(1): a change here (another imagededup, another decode or resize on the
# way in) changes which crops count as duplicates, so it must be a decision, not an accident.
KNOWN_HASHES = {"phash": "f2ed5227695c92d8", "dhash": "8f0733030fccfc30", "whash": "e1e3dfe3e3070418",
                "ahash": "e3f3dfe3e3070c18"}


@pytest.mark.parametrize("method", sorted(KNOWN_HASHES))
def test_every_method_hashes_to_its_known_64_bits(method):
    assert dedup.hash_image(images.encode_png(smooth(1)), method) == KNOWN_HASHES[method]


def test_chains_join_one_cluster():
    # 0~1 (distance 3) and 1~2 (distance 3) but 0 and 2 are 6 apart: one cluster of three.
    h = np.array([0b0, 0b111, 0b111111], dtype=np.uint64)
    pairs = dedup.near_pairs(h, 3)
    assert pairs.tolist() == [[0, 1, 3], [1, 2, 3]]
    assert dedup.components(3, pairs).tolist() == [0, 0, 0]


def test_search_matches_imagededup():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 300, dtype=np.uint64)
    flips = [np.uint64(1) << np.uint64(b) for b in rng.integers(0, 64, (300, 3))]
    near = base ^ np.array([f[0] | f[1] | f[2] if i % 3 else f[0] for i, f in enumerate(flips)],
                           dtype=np.uint64)
    h = np.concatenate([base, near, np.uint64(1) << np.arange(64, dtype=np.uint64)])  # crowded too
    hexes = {f"{i:05d}": f"{int(v):016x}" for i, v in enumerate(h)}
    ours = {(int(i), int(j), int(d)) for i, j, d in dedup.near_pairs(h, 4, processes=2)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs_map = PHash(verbose=False).find_duplicates(
            encoding_map=hexes, max_distance_threshold=4, scores=True, num_dist_workers=0)
    theirs = {(min(int(k), int(o)), max(int(k), int(o)), int(d))
              for k, found in theirs_map.items() for o, d in found}
    assert ours == theirs
    assert len(ours) > 300


def test_tiles_cover_every_pair(monkeypatch):
    # A tile smaller than the set exercises the block boundaries.
    monkeypatch.setattr(dedup, "TILE", 7)
    h = np.array([5, 5, 6, 1 << 40, 5, 7, 5, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5], dtype=np.uint64)
    n = len(h)
    want = sorted((i, j, int(np.bitwise_count(h[i] ^ h[j]))) for i in range(n) for j in range(i + 1, n)
                  if np.bitwise_count(h[i] ^ h[j]) <= 2)
    assert [tuple(r) for r in dedup.near_pairs(h, 2, processes=2).tolist()] == want
