"""The whole pipeline through the real dvc and git CLIs, in a temporary copy of the project.

One module-scoped run of `dvc repro` on tiny params; the tests then check what users rely on:
a second repro does nothing, outputs are byte-identical when rebuilt, an experiment on a filter
threshold re-runs only filter and the stages after it, and the funnel counts what the tables hold.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from corgigan import tables
from tests.helpers import DATA_STAGES, ran_stages, run, stricter_cover

pytestmark = pytest.mark.slow


def out_hashes(repo: Path) -> dict[str, str]:
    """md5 of every cached output, from dvc.lock."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", [])}


@pytest.fixture(scope="module")
def repo(copy_project: Path) -> Path:
    return copy_project


@pytest.fixture(scope="module")
def env(cli_env: dict[str, str]) -> dict[str, str]:
    return cli_env


def test_second_repro_does_nothing(repo: Path, env: dict[str, str]) -> None:
    again = run(["dvc", "repro"], repo, env)
    assert ran_stages(again.stdout) == [], again.stdout
    status = run(["dvc", "status"], repo, env)
    assert "up to date" in status.stdout


def test_funnel_counts_what_the_tables_and_the_zip_hold(repo: Path) -> None:
    # Recounted from the stages' own outputs, not from the funnel's arithmetic (which its writer checks):
    # every scraped image entered, each rejection is a row with that reason, the kept ones are in the zip.
    funnel = json.loads((repo / "reports" / "funnel.json").read_text())
    posts = tables.read_table("posts", repo / "data" / "raw" / "posts.parquet", columns=["image_id"])
    filt = tables.read_table("filter", repo / "data" / "interim" / "filter" / "filter.parquet")
    dd = tables.read_table("dedup", repo / "data" / "interim" / "dedup.parquet")
    with zipfile.ZipFile(repo / "data" / "processed" / "corgis.zip") as zf:
        in_zip = sum(1 for n in zf.namelist() if n.endswith(".png"))
    assert funnel["entered"] == len(posts) == len(filt)
    assert funnel["kept"] == in_zip == int(dd["kept"].sum()) > 0
    reasons = pd.concat([filt["reason"], dd["reason"]]).dropna().value_counts().to_dict()
    assert {r: n for r, n in funnel["rejected"].items() if n} == reasons
    assert funnel["rejected"]["duplicate"] == int((~dd["kept"]).sum())
    assert funnel["filter"]["kept"] == len(dd) == int(filt["kept"].sum())


def test_forced_rebuild_is_byte_identical(repo: Path, env: dict[str, str]) -> None:
    before = out_hashes(repo)
    run(["dvc", "repro", "--force", *DATA_STAGES], repo, env)
    assert out_hashes(repo) == before


def test_filter_experiment_reruns_only_filter_and_later(repo: Path, env: dict[str, str]) -> None:
    funnel = json.loads((repo / "reports" / "funnel.json").read_text())
    exp = run(["dvc", "exp", "run", "-S", f"filter.min_cover={stricter_cover(repo)}"], repo, env)
    stages = ran_stages(exp.stdout)
    assert "filter" in stages
    assert not {"scrape", "detector", "detect"} & set(stages), exp.stdout
    changed = json.loads((repo / "reports" / "funnel.json").read_text())
    assert changed["kept"] < funnel["kept"]
    assert changed["rejected"].get("low_cover", 0) > funnel["rejected"].get("low_cover", 0)
    shown = run(["dvc", "exp", "show", "--json"], repo, env)
    assert "min_cover" in shown.stdout
    # The readable comparison: the baseline (the committed first repro) and the experiment, the one param
    # that differs, and their funnels.
    table = run(["corgigan", "report"], repo, env).stdout.splitlines()
    assert table[0].split()[:2] == ["experiment", "filter.min_cover"]
    kept = {line.split()[0]: int(line.split()[3]) for line in table[2:]}
    assert kept["main"] == funnel["kept"] and kept["workspace"] == changed["kept"]
