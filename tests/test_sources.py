"""Synthetic scenes and source, and the folder/zip source with its escape guards."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corgigan.data.scenes import draw_scene, paste_dog
from corgigan.data.sources.folder import FolderSource
from corgigan.data.sources.synthetic import CASES, SyntheticSource
from corgigan.errors import StageError
from corgigan.images import DecodeError, decode
from corgigan.params import SyntheticParams

MAX = 100_000_000


def _tiny(seed: int = 1, **kw: int) -> SyntheticParams:
    args = {"seed": seed, "num_images": 3, "min_short_side": 64, "max_short_side": 96, "planted_per_case": 1}
    return SyntheticParams(**{**args, **kw})


# -- draw_scene ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_dogs", [0, 1, 3])
def test_draw_scene_shape_and_boxes(num_dogs: int) -> None:
    img, boxes = draw_scene(np.random.default_rng(num_dogs), 240, 180, num_dogs, (0.3, 0.5))
    assert img.mode == "RGB" and img.size == (240, 180)
    assert len(boxes) == num_dogs
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= 240 and 0 <= y0 < y1 <= 180
        # longest side about dog_scale * short side (rotation adds a little)
        assert 0.25 * 180 <= max(x1 - x0, y1 - y0) <= 0.6 * 180


def test_draw_scene_is_deterministic() -> None:
    a, ba = draw_scene(np.random.default_rng(5), 200, 150, 2)
    b, bb = draw_scene(np.random.default_rng(5), 200, 150, 2)
    c, _ = draw_scene(np.random.default_rng(6), 200, 150, 2)
    assert a.tobytes() == b.tobytes() and ba == bb
    assert a.tobytes() != c.tobytes()


@pytest.mark.parametrize("seed", range(4))
def test_pasted_dog_box_is_tight(seed: int) -> None:
    bg = Image.new("RGB", (200, 160), (0, 0, 255))            # no dog colour is pure blue
    box = paste_dog(bg, np.random.default_rng(seed), 90)
    assert box is not None
    changed = np.argwhere((np.asarray(bg) != (0, 0, 255)).any(axis=2))   # [k, (y, x)]
    y0, x0 = changed.min(axis=0)
    y1, x1 = changed.max(axis=0) + 1
    assert np.allclose(box, (x0, y0, x1, y1), atol=1.0)


def test_dog_cut_by_border_is_clipped() -> None:
    bg = Image.new("RGB", (200, 160), (0, 0, 255))
    box = paste_dog(bg, np.random.default_rng(0), 100, center=(5.0, 80.0))
    assert box is not None and box[0] == 0.0 and box[2] < 60


# -- synthetic source ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_items() -> tuple[list, list[dict]]:
    src = SyntheticSource(_tiny())
    items = list(src.items())
    assert len(items) == src.total
    return items, src.truth()


def test_synthetic_same_seed_same_bytes(tiny_items) -> None:
    items, truth = tiny_items
    again = SyntheticSource(_tiny())
    assert [(i.source_id, i.data) for i in again.items()] == [(i.source_id, i.data) for i in items]
    assert again.truth() == truth
    other = list(SyntheticSource(_tiny(seed=2)).items())
    assert [i.source_id for i in other] == [i.source_id for i in items]
    assert sum(a.data != b.data for a, b in zip(other, items)) > len(items) // 2


def test_synthetic_truth_without_iterating() -> None:
    src = SyntheticSource(_tiny(num_images=1, planted_per_case=0))
    rows = src.truth()
    assert [r["case"] for r in rows] == ["ordinary"] and rows[0]["num_dogs"] == 1


# Expected decode status per planted case; every other case must decode.
_BROKEN = {"truncated_jpeg": "truncated", "empty_file": "empty", "not_image": "not_image",
           "decompression_bomb": "too_large"}


def test_planted_cases_exist_with_correct_truth(tiny_items) -> None:
    items, truth = tiny_items
    by_id = {i.source_id: i for i in items}
    cases = {r["case"] for r in truth}
    assert cases == {"ordinary", *CASES}
    assert {r["source_id"] for r in truth} == set(by_id)
    per_image: dict[str, list[dict]] = {}
    for r in truth:
        per_image.setdefault(r["source_id"], []).append(r)
    for sid, rows in per_image.items():
        case, data = rows[0]["case"], by_id[sid].data
        assert all(r["num_dogs"] == len(rows) or r["num_dogs"] == 0 for r in rows)
        if case in _BROKEN:
            with pytest.raises(DecodeError) as e:
                decode(data, MAX)
            assert e.value.status == _BROKEN[case], sid
            continue
        img = decode(data, MAX)
        assert img.mode == "RGB"
        for r in rows:
            if r["num_dogs"]:
                assert 0 <= r["x0"] < r["x1"] <= img.width and 0 <= r["y0"] < r["y1"] <= img.height, sid
        if case == "too_small":
            assert min(img.size) < 64
        elif case not in ("near_duplicate", "exact_duplicate") or not sid.endswith("-copy"):
            assert 64 <= min(img.size) <= 96 and 3 / 4 - 0.02 <= img.width / img.height <= 16 / 9 + 0.02
        if case == "multiple_dogs":
            assert rows[0]["num_dogs"] >= 2
        if case in ("no_dog", "empty_file", "not_image", "decompression_bomb"):
            assert rows[0]["num_dogs"] == 0 and rows[0]["x0"] is None
        if case == "tiny_dog":
            assert max(rows[0]["x1"] - rows[0]["x0"], rows[0]["y1"] - rows[0]["y0"]) < 0.25 * min(img.size)
        if case == "cut_by_border":
            r = rows[0]
            assert r["x0"] == 0 or r["x1"] == img.width or r["y1"] == img.height


def test_planted_duplicates(tiny_items) -> None:
    items, truth = tiny_items
    by_id = {i.source_id: i.data for i in items}
    dups = [r for r in truth if r["duplicate_of"]]
    assert {r["case"] for r in dups} == {"near_duplicate", "exact_duplicate"}
    for r in dups:
        copy, orig = by_id[r["source_id"]], by_id[r["duplicate_of"]]
        if r["case"] == "exact_duplicate":
            assert copy == orig
        else:
            assert copy != orig
            a, b = decode(copy, MAX), decode(orig, MAX).resize(decode(copy, MAX).size)
            diff = np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean()
            assert diff < 40     # the same picture, slightly changed


def test_exif_case_truth_in_oriented_frame() -> None:
    # Enough images that both orientations appear, on clearly non-square pictures.
    p = SyntheticParams(seed=3, num_images=0, min_short_side=64, max_short_side=80, planted_per_case=4)
    src = SyntheticSource(p)
    items = [i for i in src.items() if i.source_id.startswith("exif_rotated/")]
    truth = {r["source_id"]: r for r in src.truth() if r["case"] == "exif_rotated"}
    orientations = set()
    for item in items:
        raw = Image.open(io.BytesIO(item.data))
        orientations.add(raw.getexif()[0x0112])
        img = decode(item.data, MAX)
        assert img.size == (raw.height, raw.width)             # rotated by the tag
        r = truth[item.source_id]
        assert r["x1"] <= img.width and r["y1"] <= img.height
    assert orientations <= {6, 8} and len(items) == 4


# -- folder source ------------------------------------------------------------------------------------


def _jpeg(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), color).save(buf, format="JPEG")
    return buf.getvalue()


def test_folder_directory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "photos"
    (root / "b" / "c").mkdir(parents=True)
    (root / ".hidden_dir").mkdir()
    (root / "a.jpg").write_bytes(_jpeg((255, 0, 0)))
    (root / "b" / "c" / "d.jpg").write_bytes(_jpeg((0, 255, 0)))
    (root / "b" / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"junk")
    (root / ".hidden_dir" / "x.jpg").write_bytes(_jpeg((0, 0, 0)))
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(_jpeg((1, 2, 3)))
    (tmp_path / "outdir").mkdir()
    os.symlink(outside, root / "link_out.jpg")
    os.symlink(root / "a.jpg", root / "link_in.jpg")
    os.symlink(tmp_path / "outdir", root / "linkdir")
    os.symlink(root / "missing.jpg", root / "dangling.jpg")

    items = list(FolderSource(root).items())
    ids = [i.source_id for i in items]
    assert ids == ["a.jpg", "b/c/d.jpg", "b/notes.txt", "dangling.jpg", "link_in.jpg", "link_out.jpg",
                   "linkdir"]
    got = {i.source_id: i for i in items}
    assert got["a.jpg"].data == (root / "a.jpg").read_bytes()
    assert got["b/notes.txt"].data == b"not an image"
    assert got["link_in.jpg"].data == got["a.jpg"].data          # inside the folder: read
    for sid in ("link_out.jpg", "linkdir", "dangling.jpg"):
        assert got[sid].refused and got[sid].data == b""
    assert "outside the folder" in got["link_out.jpg"].refused
    assert got["a.jpg"].refused is None
    assert "refused 'link_out.jpg'" in caplog.text


def test_folder_zip_with_escapes(tmp_path: Path) -> None:
    z = tmp_path / "photos.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("dogs/b.jpg", _jpeg((0, 255, 0)))
        zf.writestr("a.jpg", _jpeg((255, 0, 0)))
        zf.writestr("dogs/", b"")                             # a directory entry: not an item
        zf.writestr("../../evil.jpg", _jpeg((1, 1, 1)))        # zip slip
        zf.writestr("/etc/abs.jpg", _jpeg((2, 2, 2)))          # absolute
        zf.writestr("dogs\\..\\..\\win.jpg", _jpeg((3, 3, 3)))  # backslash traversal
        zf.writestr("__MACOSX/._a.jpg", b"resource fork")
        zf.writestr("readme.txt", b"hello")
        link = zipfile.ZipInfo("link.jpg")
        link.external_attr = (0o120777 << 16)                  # a symbolic link member
        zf.writestr(link, "/etc/passwd")
    items = list(FolderSource(z).items())
    got = {i.source_id: i for i in items}
    assert [i.source_id for i in items] == sorted(got)
    assert set(got) == {"../../evil.jpg", "/etc/abs.jpg", "a.jpg", "dogs/b.jpg", "dogs\\..\\..\\win.jpg",
                        "link.jpg", "readme.txt"}
    assert got["a.jpg"].data == _jpeg((255, 0, 0)) and got["readme.txt"].data == b"hello"
    for sid in ("../../evil.jpg", "/etc/abs.jpg", "dogs\\..\\..\\win.jpg", "link.jpg"):
        assert got[sid].refused and got[sid].data == b"", sid


def test_folder_missing_or_wrong_path(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="does not exist.*scrape.folder.path"):
        FolderSource(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(StageError, match="not a .zip"):
        FolderSource(tmp_path / "f.txt")
