"""The filter's rules at and across each threshold, in each direction (filter_rules.decide, their one home).

Every rule gets a case exactly on its threshold, one just under and one just over, and the geometric rules
one per side of the image. The numbers are powers of two so the window measures are exact in binary and
the expectations below are computed by hand from the crop rule (NOTES.md): on a 128 x 128 image with
min_crop 64 the window side S is 64, and a window slid against a border moves its centre away from the box
centre by (S/2 - distance of the box centre from that border) / image side.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from corgigan import tables
from corgigan.data import filter_rules
from corgigan.errors import StageError
from corgigan.params import FilterParams, ImagesParams
from tests.helpers import Spec, image_id, make_raw

BASE: dict[str, Any] = dict(min_side=64, min_crop=64, max_dogs=1, min_confidence=0.5, min_cover=0.0,
                            max_center_shift=1.0, allow_partial=False, resolution=32, resize_filter="lanczos",
                            shard_size=3)
CENTRED = (48.0, 48.0, 80.0, 80.0)   # a 32 x 32 box in the middle of a 128 x 128 image: cover 0.25, no shift


def decide(size: tuple[int, int], boxes: list[tuple[float, ...]],
           **changes: Any) -> tuple[dict[str, Any], Any]:
    """The filter row and window of one decoded image of `size` with `boxes` (most confident first)."""
    post = {"image_id": "x", "decode_status": "ok", "width": size[0], "height": size[1]}
    scored = [tuple(float(v) for v in b) for b in boxes]
    return filter_rules.decide(post, scored, FilterParams(**{**BASE, **changes}))


# ---------------------------------------------------------------------------------------------------------
# off_center: the border slide, on either axis and at either border


def _box_near(side: str, distance: float) -> tuple[float, float, float, float]:
    """An 8 x 8 box whose centre is `distance` px from the `side` border of a 128 x 128 image, and centred
    along the other axis."""
    c = distance if side in ("left", "top") else 128 - distance
    along = (c - 4, c + 4)
    across = (60.0, 68.0)
    if side in ("left", "right"):
        return along[0], across[0], along[1], across[1]
    return across[0], along[0], across[1], along[1]


@pytest.mark.parametrize("side", ["left", "right", "top", "bottom"])
@pytest.mark.parametrize(("distance", "reason"), [
    (8.0, None),            # shift (32 - 8) / 128 = 0.1875: exactly the limit is kept
    (8.5, None),            # 0.18359375: just under
    (7.5, "off_center"),    # 0.19140625: just over
])
def test_off_center_on_each_axis_and_border(side, distance, reason):
    row, win = decide((128, 128), [(*_box_near(side, distance), 0.9)], max_center_shift=0.1875)
    # The window centre moves away from the border: positive shift at the left/top, negative at the
    # right/bottom; the other axis is not shifted at all.
    shift = (32 - distance) / 128 * (1 if side in ("left", "top") else -1)
    on_x = side in ("left", "right")
    assert (row["center_shift_x"], row["center_shift_y"]) == ((shift, 0.0) if on_x else (0.0, shift))
    assert row["reason"] == reason
    assert row["kept"] is (reason is None) and (win is not None) is (reason is None)


def test_off_center_takes_the_larger_axis():
    # x just under the limit, y just over: the y shift alone rejects it, and vice versa.
    box_xy = (4.5, 3.5, 12.5, 11.5)    # centre (8.5, 7.5): shifts 0.18359375 and 0.19140625
    assert decide((128, 128), [(*box_xy, 0.9)], max_center_shift=0.1875)[0]["reason"] == "off_center"
    box_yx = (3.5, 4.5, 11.5, 12.5)
    assert decide((128, 128), [(*box_yx, 0.9)], max_center_shift=0.1875)[0]["reason"] == "off_center"
    assert decide((128, 128), [(*box_xy, 0.9)], max_center_shift=0.19140625)[0]["kept"]


# ---------------------------------------------------------------------------------------------------------
# low_confidence, multiple_dogs: min_confidence is inclusive, max_dogs is the largest count kept


@pytest.mark.parametrize(("confidence", "reason", "num_dogs"), [
    (0.5, None, 1),                   # exactly min_confidence: a dog we trust
    (0.5000001, None, 1),
    (0.4999999, "low_confidence", 0),
])
def test_min_confidence_of_the_best_box(confidence, reason, num_dogs):
    row, _ = decide((128, 128), [(*CENTRED, confidence)])
    assert (row["reason"], row["num_dogs"]) == (reason, num_dogs)
    assert row["confidence"] == confidence


@pytest.mark.parametrize(("extra", "reason", "num_dogs"), [
    (0.5, "multiple_dogs", 2),        # an extra box exactly at min_confidence counts as a second dog
    (0.5000001, "multiple_dogs", 2),
    (0.4999999, None, 1),             # a faint one does not
])
def test_min_confidence_of_an_extra_box(extra, reason, num_dogs):
    row, _ = decide((128, 128), [(*CENTRED, 0.9), (0, 0, 8, 8, extra)])
    assert (row["reason"], row["num_dogs"]) == (reason, num_dogs)


@pytest.mark.parametrize(("max_dogs", "count", "reason"), [
    (1, 1, None), (1, 2, "multiple_dogs"), (2, 2, None), (2, 3, "multiple_dogs"), (3, 3, None),
])
def test_max_dogs_is_the_largest_count_kept(max_dogs, count, reason):
    boxes = [(*CENTRED, 0.9)] + [(0, 16 * i, 8, 16 * i + 8, 0.8) for i in range(count - 1)]
    row, _ = decide((128, 128), boxes, max_dogs=max_dogs)
    assert (row["reason"], row["num_dogs"]) == (reason, count)


# ---------------------------------------------------------------------------------------------------------
# low_cover: min_cover is inclusive, along either side of the box


@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize(("length", "reason"), [
    (32.0, None),           # 32 * 32 / 64**2 = 0.25: exactly min_cover is kept
    (32.5, None),           # 0.25390625
    (31.5, "low_cover"),    # 0.24609375
])
def test_min_cover_along_each_side(axis, length, reason):
    lo, hi = 64 - length / 2, 64 + length / 2
    box = (lo, 48, hi, 80) if axis == "x" else (48, lo, 80, hi)
    row, _ = decide((128, 128), [(*box, 0.9)], min_cover=0.25)
    assert row["cover"] == 32 * length / 64**2
    assert row["reason"] == reason


# ---------------------------------------------------------------------------------------------------------
# too_small: min_side is the smallest short side kept, whichever side is short


@pytest.mark.parametrize(("size", "reason"), [
    ((64, 200), None), ((200, 64), None), ((63, 200), "too_small"), ((200, 63), "too_small"),
    ((64, 64), None), ((63, 63), "too_small"),
])
def test_min_side_on_either_side(size, reason):
    w, h = size
    box = (w / 2 - 16, h / 2 - 16, w / 2 + 16, h / 2 + 16)
    row, _ = decide(size, [(*box, 0.9)], min_crop=32)
    assert row["reason"] == reason
    assert (row["crop_side"] is None) is (reason is not None)   # geometry only for images that get there


# ---------------------------------------------------------------------------------------------------------
# partial: a dog longer than the image's short side, horizontally or vertically


@pytest.mark.parametrize("orientation", ["wide", "tall"])
@pytest.mark.parametrize(("length", "partial"), [(128.0, False), (127.5, False), (128.5, True)])
def test_partial_along_each_axis(orientation, length, partial):
    lo, hi = 100 - length / 2, 100 + length / 2
    if orientation == "wide":      # 200 x 128 image, a dog as wide as (or wider than) its height
        size, box = (200, 128), (lo, 48, hi, 80)
    else:                          # 128 x 200 image, a dog as tall as (or taller than) its width
        size, box = (128, 200), (48, lo, 80, hi)
    row, _ = decide(size, [(*box, 0.9)])
    assert row["crop_side"] == 128 and row["partial"] is partial
    assert row["reason"] == ("partial" if partial else None)
    kept, _ = decide(size, [(*box, 0.9)], allow_partial=True)
    assert kept["kept"] and kept["partial"] is partial


# ---------------------------------------------------------------------------------------------------------
# The crop plan and the crop workers' answers (the paths the filter stage's fixture never takes)


def test_decide_all_of_no_posts_is_an_empty_filter_table():
    posts = pd.DataFrame({"image_id": [], "decode_status": [], "width": [], "height": []})
    table, crop_boxes = filter_rules.decide_all(posts, {}, FilterParams(**BASE))
    assert table.num_rows == 0 and table.schema == tables.SCHEMAS["filter"] and crop_boxes == {}


def test_plan_crops_chunks_follow_shards_and_the_chunk_size():
    # Rejected images (not in crop_boxes) anywhere in posts are skipped, not the end of the plan; a chunk
    # holds the kept images of one shard, at most CHUNK of them.
    n = filter_rules.CHUNK + 2
    ids = ["rejected"] + [f"a{i}" for i in range(n)] + ["b0", "rejected2", "b1"]
    shards = ["s0.zip"] * (n + 1) + ["s1.zip"] * 3
    posts = pd.DataFrame({"image_id": ids, "width": 64, "height": 48, "shard": shards})
    boxes = {i: (0, 0, 48, 48) for i in ids if not i.startswith("rejected")}
    tasks = filter_rules.plan_crops(posts, boxes, Path("/raw"), FilterParams(**BASE),
                                    ImagesParams(max_pixels=99))
    assert [(shard, [item[0] for item in items]) for shard, items, *_ in tasks] == [
        ("/raw/s0.zip", [f"a{i}" for i in range(filter_rules.CHUNK)]),
        ("/raw/s0.zip", [f"a{i}" for i in range(filter_rules.CHUNK, n)]),
        ("/raw/s1.zip", ["b0", "b1"]),
    ]
    assert all(tuple(rest) == (32, "lanczos", 99) for _, _, *rest in tasks)
    assert tasks[2][1][0] == ("b0", 64, 48, (0, 0, 48, 48))


# mark_failures once set None into bool columns, which pandas deprecates (an error in a pandas to come).
@pytest.mark.filterwarnings("error::FutureWarning")
def test_crop_chunk_answers_every_image_and_an_inconsistent_raw_set_stops(tmp_path, caplog):
    raw = make_raw(tmp_path, [Spec("a", (64, 48), seed=1), Spec("b", (64, 48), seed=2)])
    shard = str(next((raw / "shards").iterdir()))
    a, b, gone = image_id("a"), image_id("b"), image_id("gone")
    box = (0, 0, 48, 48)
    task = (shard, [(gone, 64, 48, box), (a, 50, 48, box), (b, 64, 48, box)], 16, "lanczos", 10**6)
    missing, changed, ok = filter_rules.crop_chunk(task)
    assert missing[:3] == (gone, None, "missing") and Path(shard).name in missing[3]
    assert changed == (a, None, "size_changed", "decodes to 64x48, posts say 50x48")
    assert ok[0] == b and ok[2:] == ("ok", "")
    assert Image.open(io.BytesIO(ok[1])).size == (16, 16)

    posts = pd.DataFrame({"image_id": [a, b], "decode_status": "ok", "width": 64, "height": 48})
    table, _ = filter_rules.decide_all(posts, {a: [(8, 8, 40, 40, 0.9)], b: [(8, 8, 40, 40, 0.9)]},
                                   FilterParams(**{**BASE, "min_side": 32, "min_crop": 32}))
    with pytest.raises(StageError, match=f"image {a} decodes to 64x48, posts say 50x48: data/raw"):
        filter_rules.mark_failures(table, {a: changed})
    # An image that no longer decodes (images.max_pixels lowered since scrape) becomes a rejected row.
    with caplog.at_level(logging.WARNING, logger="corgigan.data.filter_rules"):
        failed = {b: (b, None, "too_large", "4096 pixels > 99")}
        marked = filter_rules.mark_failures(table, failed).to_pylist()
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [f"image {b} no longer decodes (too_large: 4096 pixels > 99)"]
    assert [(r["kept"], r["reason"], r["crop_side"]) for r in marked] == [(True, None, 32),
                                                                           (False, "decode_error", None)]


# ---------------------------------------------------------------------------------------------------------
# The box a crop goes around: boxes_by_image's order (box_rank), one key at a time


@pytest.mark.parametrize(("first", "second"), [
    ((0, 0, 9, 9, 0.9), (0, 0, 9, 9, 0.8)),      # the most confident first, whatever the coordinates
    ((1, 5, 5, 5, 0.5), (2, 0, 0, 0, 0.5)),      # confidence tied: the smaller x0
    ((1, 1, 5, 5, 0.5), (1, 2, 0, 0, 0.5)),      # then y0
    ((1, 1, 1, 5, 0.5), (1, 1, 2, 0, 0.5)),      # then x1
    ((1, 1, 1, 1, 0.5), (1, 1, 1, 2, 0.5)),      # then y1
])
def test_boxes_by_image_ranks_by_confidence_then_each_coordinate(first, second):
    # The detector's order is the reverse of the rank, and an unrelated image sits between them.
    rows = [("i", *second), ("h", 3, 3, 4, 4, 0.1), ("i", *first)]
    det = pd.DataFrame(rows, columns=["image_id", "x0", "y0", "x1", "y1", "confidence"])
    got = filter_rules.boxes_by_image(det)
    assert got == {"h": [(3.0, 3.0, 4.0, 4.0, 0.1)],
                   "i": [tuple(float(v) for v in first), tuple(float(v) for v in second)]}
    assert filter_rules.box_rank(*first[4:], *first[:4]) < filter_rules.box_rank(*second[4:], *second[:4])
