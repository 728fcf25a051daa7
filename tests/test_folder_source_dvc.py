"""The folder source through dvc: photos added to the folder rerun scrape and, after it, only the stages
that read its output."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers import ran_stages, run

pytestmark = pytest.mark.slow


def _photo(path: Path, seed: int) -> None:
    arr = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).resize((640, 480), Image.Resampling.BICUBIC).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue())


def _stale_stages(repo: Path, env: dict[str, str]) -> set[str]:
    """Stages `dvc status` reports as changed (its top-level 'name:' lines)."""
    out = run(["dvc", "status"], repo, env).stdout
    return {line[:-1] for line in out.splitlines() if line.endswith(":") and not line.startswith((" ", "\t"))}


def test_adding_a_photo_reruns_scrape_and_what_follows(copy_project: Path, cli_env: dict[str, str]) -> None:
    repo, env = copy_project, cli_env
    photos = repo / "data" / "external" / "photos"
    assert photos.is_dir()                  # the default folder exists in a clone, so the dep resolves
    for i in range(2):
        _photo(photos / f"dog{i}.jpg", i)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["scrape"]["source"] = "folder"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(run(["dvc", "repro", "scrape"], repo, env).stdout) == ["scrape"]
    assert "scrape" not in _stale_stages(repo, env)

    _photo(photos / "dog2.jpg", 2)
    assert "scrape" in _stale_stages(repo, env)
    assert ran_stages(run(["dvc", "repro", "scrape"], repo, env).stdout) == ["scrape"]
    stale = _stale_stages(repo, env)
    assert "scrape" not in stale and "detect" in stale and "detector" not in stale
    posts = run(["python", "-c", "import pandas; print(len(pandas.read_parquet('data/raw/posts.parquet')))"],
                repo, env).stdout
    assert posts.strip() == "3"
