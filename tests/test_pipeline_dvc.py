"""The whole pipeline through the real dvc and git CLIs, in a temporary copy of the project.

One module-scoped run of `dvc repro` on tiny params; the tests then check what users rely on:
a second repro does nothing, outputs are byte-identical when rebuilt, an experiment on a filter
threshold re-runs only filter and the stages after it, and the funnel adds up.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import DATA_STAGES, ran_stages, run, stricter_cover

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


def test_funnel_adds_up(repo: Path) -> None:
    funnel = json.loads((repo / "reports" / "funnel.json").read_text())
    assert funnel["entered"] == funnel["kept"] + sum(funnel["rejected"].values())
    assert funnel["kept"] > 0


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
