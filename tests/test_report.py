"""`corgigan report`: rows from `dvc exp show --json`, only the params that differ, funnel and scores."""

from __future__ import annotations

from corgigan import report


def _data(min_cover: float, kept: int, fid: float) -> dict:
    return {
        "params": {"params.yaml": {"data": {"filter": {"min_cover": min_cover, "max_dogs": 1},
                                            "train": {"kimg": 4}}}},
        "metrics": {"reports/funnel.json": {"data": {"entered": 84, "kept": kept, "rejected": {}}},
                    "reports/metrics.json": {"data": {"fid_pixels": fid, "kid_pixels": 0.1, "kimg": 4.0}},
                    "reports/train/metrics.json": {"data": {"Loss": {"G": {"loss": 1.0}}}}},
    }


SHOWN = [
    {"rev": "workspace", "name": None, "data": _data(0.3, 19, 18.6), "experiments": None},
    {"rev": "df2b6238aa", "name": "main", "data": _data(0.15, 42, 17.3),
     "experiments": [{"name": "shore-repp", "revs": [{"rev": "9f4e10c2", "name": "shore-repp",
                                                      "data": _data(0.3, 19, 18.6)}]}]},
]


def test_rows_cover_workspace_baseline_and_experiments():
    table = report.rows(SHOWN)
    assert [r["experiment"] for r in table] == ["workspace", "main", "shore-repp"]
    assert [r["kept"] for r in table] == [19, 42, 19]
    assert table[1]["params"]["filter.min_cover"] == 0.15 and table[1]["fid_pixels"] == 17.3


def test_table_shows_only_the_params_that_differ():
    text = report.format_table(report.rows(SHOWN))
    header = text.splitlines()[0].split()
    assert header == ["experiment", "filter.min_cover", "entered", "kept", "fid_pixels", "kid_pixels"]
    assert "max_dogs" not in text and "kimg" not in text and "Loss" not in text
    assert text.splitlines()[3].split() == ["main", "0.15", "84", "42", "17.3", "0.1"]


def test_a_row_without_metrics_shows_dashes():
    shown = [{"rev": "abcdef123", "name": None, "data": None, "experiments": None}]
    text = report.format_table(report.rows(shown))
    assert text.splitlines()[2].split() == ["abcdef1", "-", "-"]
    assert "no params differ" in text


def test_a_gamma_sweep_shows_the_training_knobs_that_differ_but_not_runtime_ones():
    def data(gamma: float | None, workers: int, fid: float) -> dict:
        d = _data(0.15, 42, fid)
        d["params"]["params.yaml"]["data"]["train"].update(gamma=gamma, glr=None, workers=workers)
        return d

    shown = [{"rev": "df2b6238aa", "name": "main", "data": data(None, 2, 17.3), "experiments": [
        {"name": "g2", "revs": [{"rev": "1a", "name": "g2", "data": data(2.0, 4, 15.1)}]},
        {"name": "g8", "revs": [{"rev": "2b", "name": "g8", "data": data(8.0, 2, 16.0)}]}]}]
    lines = report.format_table(report.rows(shown)).splitlines()
    assert lines[0].split() == ["experiment", "train.gamma", "entered", "kept", "fid_pixels", "kid_pixels"]
    assert [line.split()[:2] for line in lines[2:]] == [["main", "null"], ["g2", "2"], ["g8", "8"]]
