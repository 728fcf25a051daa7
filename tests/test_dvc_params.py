"""dvc.yaml tracks params key by key: every knob is either tracked by the stages whose outputs it changes or
declared runtime-only in params.py (knob(..., runtime=True)), and `dvc status` follows that split."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from corgigan import params
from corgigan.cli import SECTIONS
from tests.helpers import ROOT, run, write_dataset


def _stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _tracked(stage: dict) -> list[str]:
    names: list[str] = []
    for entry in stage.get("params", []):
        names += list(entry) if isinstance(entry, dict) else [entry]   # {file: [keys]} or a key
    return names


def test_every_params_key_is_tracked_by_a_stage_or_declared_runtime_only():
    knobs = set(params.knobs())
    runtime = set(params.runtime_knobs())
    tracked = {key for stage in _stages().values() for key in _tracked(stage)}
    unknown = tracked - knobs
    assert not unknown, f"dvc.yaml tracks keys params.py does not define (or whole sections): {unknown}"
    both = tracked & runtime
    assert not both, f"declared runtime-only in params.py yet tracked in dvc.yaml: {both}"
    forgotten = knobs - tracked - runtime
    assert not forgotten, ("neither tracked by a stage in dvc.yaml nor declared runtime-only in params.py "
                           f"(knob(..., runtime=True)): {sorted(forgotten)}")


@pytest.mark.parametrize("name", list(SECTIONS))
def test_each_stage_tracks_exactly_the_outcome_knobs_of_the_sections_it_reads(name):
    # A stage receives whole sections (cli.SECTIONS); all but the runtime-only knobs of those can change
    # what it writes, and a knob of another section cannot.
    runtime = set(params.runtime_knobs())
    want = [k for section in SECTIONS[name] for k in params.knobs() if k.startswith(section + ".")
            and k not in runtime]
    assert sorted(_tracked(_stages()[name])) == sorted(want)


# ---------------------------------------------------------------------------------------------------------
# `dvc status` in a git + DVC project holding the real train stage, on a tiny dataset


@pytest.fixture(scope="module")
def train_project(tmp_path_factory: pytest.TempPathFactory, cli_env: dict[str, str]) -> Path:
    """A git + DVC project whose dvc.yaml is our train stage, after one `dvc repro` (a few seconds)."""
    repo = tmp_path_factory.mktemp("status") / "project"
    repo.mkdir()
    stage = _stages()["train"]
    stage["deps"] = [d for d in stage["deps"] if not d.startswith("src/")]   # the code is the venv's
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}, sort_keys=False))
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"].update(kimg=0.004, snapshot_kimg=0.004, tick_kimg=0.004, workers=0, device="cpu")
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (repo / "data" / "processed").mkdir(parents=True)
    write_dataset(repo / "data" / "processed" / "corgis.zip", n=4)
    for args in (["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q"],
                 ["dvc", "config", "core.autostage", "false"],
                 ["dvc", "add", "-q", "data/processed/corgis.zip"]):
        run(args, repo, cli_env)
    for args in (["git", "add", "-A"], ["git", "commit", "-qm", "project"],   # dvclive wants a commit
                 ["dvc", "repro"], ["git", "add", "-A"], ["git", "commit", "-qm", "trained"]):
        run(args, repo, cli_env, timeout=300)
    return repo


def _status_after(repo: Path, env: dict[str, str], key: str, value: object) -> str:
    """`dvc status` (its text) with train.`key` set to `value`, params.yaml restored afterwards."""
    saved = (repo / "params.yaml").read_bytes()
    raw = yaml.safe_load(saved)
    raw["train"][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        return run(["dvc", "status"], repo, env).stdout
    finally:
        (repo / "params.yaml").write_bytes(saved)


@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_dvc_status_ignores_runtime_knobs_and_sees_tracked_ones(train_project: Path, cli_env: dict[str, str]):
    clean = run(["dvc", "status"], train_project, cli_env).stdout
    assert "up to date" in clean
    for key, value in (("workers", 3), ("device", "auto"), ("tick_kimg", 0.002), ("keep_snapshots", 2),
                       ("require_cuda_ops", True)):
        assert "up to date" in _status_after(train_project, cli_env, key, value), key
    for key, value in (("gamma", 5.0), ("augpipe", "bgcf"), ("batch_gpu", 4), ("glr", 0.001)):
        stale = _status_after(train_project, cli_env, key, value)
        assert "train:" in stale and f"train.{key}" in stale, (key, stale)
    assert subprocess.run(["git", "status", "--porcelain"], cwd=train_project, capture_output=True,
                          text=True, check=True).stdout == ""
