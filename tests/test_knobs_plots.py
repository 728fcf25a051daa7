"""What DVC's tools show of a training run: each snapshot's grid as a dvclive image while it trains, and
FID/KID per snapshot as declared plots (x kimg) that `dvc plots` reads, whatever the features."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from corgigan import params as params_mod
from tests.helpers import ROOT, run, write_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_snapshot_grid_is_a_dvclive_image_and_fid_per_snapshot_is_a_dvc_plot(tmp_path: Path,
                                                                                  cli_env: dict[str, str]):
    from corgigan.stages import evaluate, train
    from corgigan.stylegan2.snapshot import grid_name

    repo = tmp_path / "project"
    dataset = write_dataset(tmp_path / "d.zip", n=6)
    params = params_mod.load(ROOT / "params.yaml")
    p = dataclasses.replace(params.train, kimg=0.016, snapshot_kimg=0.008, tick_kimg=0.004, workers=0)
    out, metrics = repo / "models" / "stylegan2", repo / "reports" / "train"
    train.run(p, dataset, out, metrics)
    images = metrics / "plots" / "images" / train.GRID_IMAGES
    assert sorted(x.name for x in images.iterdir()) == ["1.png", "2.png"]   # ticks (one per 8-image step)
    for tick, nimg in ((1, 8), (2, 16)):
        logged, grid = Image.open(images / f"{tick}.png"), Image.open(out / grid_name(nimg))
        assert logged.size == grid.size and logged.tobytes() == grid.tobytes()

    e = dataclasses.replace(params.evaluate, num_images=8, grid_seeds=4, video_frames=2, batch=4,
                            features="pixels", fid_every_snapshot=True)
    figures = repo / "reports" / "figures" / "evaluate"
    evaluate.run(e, out, dataset, repo / "reports" / "metrics.json", figures)
    rows = json.loads((figures / evaluate.SCORES_PLOT).read_text())
    assert [r["kimg"] for r in rows] == [0.008, 0.016] and set(rows[0]) == {"kimg", "fid", "kid"}

    # The project's plot declarations, read by DVC itself.
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    plots = [d for d in declared["plots"] if isinstance(d, dict)]
    assert {"reports/train/plots/images": {"persist": True}} in declared["stages"]["train"]["plots"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        run(args, repo, cli_env)
    shown = json.loads(run(["dvc", "plots", "show", "--json"], repo, cli_env).stdout)
    assert not shown.get("errors"), shown
    for name, field in (("FID per snapshot", "fid"), ("KID per snapshot", "kid")):
        (plot,) = shown["data"][name]
        values = plot["content"]["data"]["values"]
        assert [(v["kimg"], v[field]) for v in values] == [(r["kimg"], r[field]) for r in rows]
        assert plot["content"]["encoding"]["x"]["field"] == "kimg"
    shutil.rmtree(repo / ".dvc")
