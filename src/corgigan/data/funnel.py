"""The funnel: how many images entered, were kept and were rejected per reason, at filter, dedup and overall.

`funnel_counts` is what the dataset stage writes as reports/funnel.json (a DVC metric). Every reason
appears, with 0 when it did not occur, so metrics diffs line up; each step is checked to add up
(entered = kept + sum of rejected), so tables that disagree stop the stage instead of skewing a metric.
`check_not_empty` stops an experiment whose thresholds rejected everything and names the params that
would loosen them (`LOOSEN`). `warnings` (a list of sentences, empty when all is well; DVC's metrics
skip it) says why a funnel looks wrong, e.g. a detector that found almost no dog.
"""

from __future__ import annotations

import collections
from typing import Any

import pandas as pd

from corgigan import tables
from corgigan.errors import StageError

FILTER_REASONS = tuple(r for r in tables.REASONS if r != "duplicate")

# The params that loosen each rejection reason: named when an experiment's thresholds reject everything.
LOOSEN = {
    "decode_error": "the source's files (see posts.decode_status) or images.max_pixels",
    "refused": "the source's files (see posts.decode_detail)",
    "too_small": "filter.min_side",
    "no_dog": "detect.conf or a better detector",
    "multiple_dogs": "filter.max_dogs or filter.min_confidence",
    "low_confidence": "filter.min_confidence",
    "low_cover": "filter.min_cover",
    "off_center": "filter.max_center_shift",
    "partial": "filter.allow_partial",
    "duplicate": "dedup.max_distance",
}

# Dog photos nearly all hold a dog: when more than this share of the decodable images are rejected as
# no_dog, the detector (not the photos) is the likely cause.
NO_DOG_SHARE = 0.5


def warnings(counts: dict[str, Any]) -> list[str]:
    """Sentences saying why the funnel's counts look wrong (empty when nothing does)."""
    rej = counts["filter"]["rejected"]
    decodable = counts["filter"]["entered"] - rej.get("decode_error", 0) - rej.get("refused", 0)
    no_dog = rej.get("no_dog", 0)
    if decodable <= 0 or no_dog <= NO_DOG_SHARE * decodable:
        return []
    return [f"no_dog rejected {no_dog} of {decodable} decodable images ({no_dog / decodable:.0%}, above "
            f"{NO_DOG_SHARE:.0%}): the detector found almost nothing; see models/detector/meta.json "
            f"(mAP50, warnings) and loosen {LOOSEN['no_dog']}"]


def _step(entered: int, kept: int, rejected: dict[str, int], name: str) -> dict[str, Any]:
    if entered != kept + sum(rejected.values()):
        raise StageError(f"funnel {name}: entered {entered} != kept {kept} + rejected "
                         f"{sum(rejected.values())}; the tables disagree, re-run the pipeline")
    return {"entered": entered, "kept": kept, "rejected": rejected}


def funnel_counts(filt: pd.DataFrame, dd: pd.DataFrame) -> dict[str, Any]:
    """Entered / kept / rejected-per-reason for filter, dedup and overall, from filter and dedup rows."""
    f_counts = collections.Counter(filt["reason"].dropna())
    d_counts = collections.Counter(dd["reason"].dropna())
    f_rej = {r: int(f_counts.get(r, 0)) for r in FILTER_REASONS}
    d_rej = {"duplicate": int(d_counts.get("duplicate", 0))}
    f_kept, d_kept = int(filt["kept"].sum()), int(dd["kept"].sum())
    counts = {
        **_step(len(filt), d_kept, {**f_rej, **d_rej}, "overall"),
        "filter": _step(len(filt), f_kept, f_rej, "filter"),
        "dedup": _step(len(dd), d_kept, d_rej, "dedup"),
    }
    counts["warnings"] = warnings(counts)
    return counts


def check_not_empty(counts: dict[str, Any]) -> None:
    """Stop when no image survived filter and dedup, naming the reasons that emptied the set."""
    if counts["kept"] > 0:
        return
    rejected = sorted(((n, r) for r, n in counts["rejected"].items() if n), reverse=True)
    why = ", ".join(f"{r} {n}" for n, r in rejected) or "no image entered"
    loosen = "; ".join(f"{r}: {LOOSEN[r]}" for _, r in rejected if r in LOOSEN)
    raise StageError(f"dataset: none of the {counts['entered']} images survived filter and dedup "
                     f"({why}); loosen the thresholds that rejected them ({loosen or 'see funnel'}) "
                     "and re-run")
