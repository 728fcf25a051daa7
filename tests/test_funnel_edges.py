"""The funnel's guards word for word: which step's tables disagree, why an emptied set stopped and what to
loosen, and the no_dog warning on, under and over its threshold (funnel.py).

test_dataset.py checks the counts of a real run; these pin the sentences a user acts on and the arithmetic
behind them, with counts worked out by hand.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from corgigan.data.funnel import FILTER_REASONS, check_not_empty, funnel_counts, warnings
from corgigan.errors import StageError

ADVICE = ("the detector found almost nothing; see models/detector/meta.json (mAP50, warnings) and loosen "
          "detect.conf or a better detector")


def tables(filter_rows: list[tuple[str | None, bool]], dedup_kept: list[bool]) -> tuple[pd.DataFrame, ...]:
    """filter rows as (reason, kept) and dedup rows (kept, else a duplicate), as the stages write them."""
    filt = pd.DataFrame(filter_rows, columns=["reason", "kept"])
    dd = pd.DataFrame({"reason": [None if k else "duplicate" for k in dedup_kept], "kept": dedup_kept})
    return filt, dd


def stage_error(fn: Any, *args: Any) -> str:
    with pytest.raises(StageError) as e:
        fn(*args)
    return str(e.value)


def test_counts_of_each_step_and_overall():
    # 6 entered: 1 too small, 2 no dog, 3 kept by the filter; dedup drops 1 of those 3.
    filt, dd = tables([("too_small", False), ("no_dog", False), (None, True), ("no_dog", False), (None, True),
                       (None, True)], [True, False, True])
    zero = dict.fromkeys(FILTER_REASONS, 0)
    assert funnel_counts(filt, dd) == {
        "entered": 6, "kept": 2, "rejected": {**zero, "too_small": 1, "no_dog": 2, "duplicate": 1},
        "filter": {"entered": 6, "kept": 3, "rejected": {**zero, "too_small": 1, "no_dog": 2}},
        "dedup": {"entered": 3, "kept": 2, "rejected": {"duplicate": 1}},
        "warnings": [],
    }


# ---------------------------------------------------------------------------------------------------------
# Steps that do not add up name the step and its numbers


def test_filter_step_that_does_not_add_up():
    # 3 entered, 1 rejected, but only 1 marked kept; dedup (2 of 2) and overall (2 + 1) add up.
    filt, dd = tables([("no_dog", False), (None, True), (None, False)], [True, True])
    assert stage_error(funnel_counts, filt, dd) == (
        "funnel filter: entered 3 != kept 1 + rejected 1; the tables disagree, re-run the pipeline")


def test_dedup_step_that_does_not_add_up():
    # dedup: 3 rows, 2 kept, none a duplicate; filter (2 + 1) and overall (2 + 1) add up.
    filt, dd = tables([("no_dog", False), (None, True), (None, True)], [True, True, False])
    dd.loc[2, "reason"] = None
    assert stage_error(funnel_counts, filt, dd) == (
        "funnel dedup: entered 3 != kept 2 + rejected 0; the tables disagree, re-run the pipeline")


def test_overall_that_does_not_add_up():
    # filter kept 2 but dedup saw only 1 (and kept it): filter and dedup add up alone, not end to end.
    filt, dd = tables([("no_dog", False), (None, True), (None, True)], [True])
    assert stage_error(funnel_counts, filt, dd) == (
        "funnel overall: entered 3 != kept 1 + rejected 1; the tables disagree, re-run the pipeline")


# ---------------------------------------------------------------------------------------------------------
# An emptied set stops, naming the reasons (most first) and the params that loosen them


def test_one_kept_image_is_enough():
    filt, dd = tables([("no_dog", False), (None, True)], [True])
    counts = funnel_counts(filt, dd)
    assert counts["kept"] == 1
    assert check_not_empty(counts) is None


def test_emptied_set_names_reasons_most_first_and_what_to_loosen():
    filt, dd = tables([("too_small", False)] * 2 + [("no_dog", False)] * 5 + [(None, True)], [False])
    counts = funnel_counts(filt, dd)
    assert stage_error(check_not_empty, counts) == (
        "dataset: none of the 8 images survived filter and dedup (no_dog 5, too_small 2, duplicate 1); "
        "loosen the thresholds that rejected them (no_dog: detect.conf or a better detector; "
        "too_small: filter.min_side; duplicate: dedup.max_distance) and re-run")


def test_nothing_entered():
    counts = funnel_counts(*tables([], []))
    assert stage_error(check_not_empty, counts) == (
        "dataset: none of the 0 images survived filter and dedup (no image entered); loosen the thresholds "
        "that rejected them (see funnel) and re-run")


# ---------------------------------------------------------------------------------------------------------
# The no_dog warning: its share of the decodable images (neither decode_error nor refused)


def test_no_dog_share_counts_only_decodable_images():
    # 12 entered, 2 decode errors and 1 refused: 9 decodable, 6 of them no_dog.
    rows = ([("no_dog", False)] * 6 + [("decode_error", False)] * 2 + [("refused", False)]
            + [(None, True)] * 3)
    counts = funnel_counts(*tables(rows, [True] * 3))
    assert counts["warnings"] == [f"no_dog rejected 6 of 9 decodable images (67%, above 50%): {ADVICE}"]


@pytest.mark.parametrize(("no_dog", "decodable", "warns"), [
    (1, 1, True),        # a single decodable image, with no dog
    (1, 4, False),       # well under half
    (2, 4, False),       # exactly half is still fine
    (3, 4, True),        # over half
    (0, 0, False),       # nothing decodable: nothing to say
])
def test_no_dog_threshold(no_dog, decodable, warns):
    rows = [("no_dog", False)] * no_dog + [(None, True)] * (decodable - no_dog) + [("decode_error", False)]
    counts = funnel_counts(*tables(rows, [True] * (decodable - no_dog)))
    share = f"{no_dog / decodable:.0%}" if decodable else ""
    want = [f"no_dog rejected {no_dog} of {decodable} decodable images ({share}, above 50%): {ADVICE}"]
    assert counts["warnings"] == (want if warns else [])


def test_reasons_absent_from_the_counts_count_as_none():
    # A counts dict need not list reasons that did not occur.
    assert warnings({"filter": {"entered": 1, "rejected": {}}}) == []
    assert warnings({"filter": {"entered": 4, "rejected": {"no_dog": 3}}}) == [
        f"no_dog rejected 3 of 4 decodable images (75%, above 50%): {ADVICE}"]
