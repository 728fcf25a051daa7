"""Shared fixtures: a tiny end-to-end pipeline run in a temporary git + DVC copy of the project.

The run costs minutes, so it happens once per session (`pipeline_template`); each test module that
needs a repository gets its own copy of it (`copy_project`), so experiments in one module do not
leak into another. Plain helpers (the CLI runner, tiny params, ...) live in tests/helpers.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers import DATA_STAGES, ROOT, ran_stages, run, tiny_params


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny networks run fastest on one torch thread; OpenMP threads spin badly on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for dvc/git/corgigan subprocesses: this venv first, offline libraries, a git identity."""
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e['PATH']}"
    e.update(DVC_NO_ANALYTICS="1", YOLO_OFFLINE="1", YOLO_AUTOINSTALL="false", GIT_AUTHOR_NAME="t",
             GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
             CORGIGAN_CACHE=str(tmp_path_factory.mktemp("corgigan-cache")))
    return e


@pytest.fixture(scope="session")
def pipeline_template(tmp_path_factory: pytest.TempPathFactory, cli_env: dict[str, str]) -> Path:
    """A git + DVC copy of the project with tiny params, after one full `dvc repro`, committed."""
    repo = tmp_path_factory.mktemp("template") / "project"
    repo.mkdir()
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], repo, cli_env)
    run(["git", "add", "-A"], repo, cli_env)
    run(["git", "commit", "-qm", "project"], repo, cli_env)
    first = run(["dvc", "repro"], repo, cli_env)
    assert set(DATA_STAGES) <= set(ran_stages(first.stdout)), first.stdout
    run(["git", "add", "-A"], repo, cli_env)
    run(["git", "commit", "-qm", "first repro"], repo, cli_env)
    return repo


@pytest.fixture(scope="module")
def copy_project(pipeline_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's own copy of the reproduced project (git history and DVC cache included)."""
    dest = tmp_path_factory.mktemp("repo") / "project"
    shutil.copytree(pipeline_template, dest, symlinks=True)
    return dest
