"""evaluate stage and `corgigan generate` on a tiny generator trained for a few steps on CPU."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from corgigan import cli
from corgigan.analysis import sampling
from corgigan.params import EvaluateParams
from corgigan.stages import evaluate
from corgigan.stylegan2.loop import training_loop
from corgigan.stylegan2.snapshot import latest_snapshot
from tests.helpers import tiny_config, tiny_params, write_dataset

PARAMS = EvaluateParams(num_images=12, seed=0, truncation_psi=1.0, features="pixels",
                        inception_path="models/inception-2015-12-05.pt", batch=8,
                        fid_every_snapshot=True, grid_seeds=8, video_frames=6, device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset zip, checkpoint folder with two snapshots)."""
    root = tmp_path_factory.mktemp("trained")
    dataset = write_dataset(root / "data.zip", n=8, seed=0)
    training_loop(dataset, root / "run", tiny_config(), kimg=0.016, snapshot_kimg=0.008, seed=0,
                  augment="none", workers=0, device="cpu")
    return dataset, root / "run"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORGIGAN_CACHE", str(tmp_path / "cache"))


def test_evaluate_writes_metrics_figures_and_fid_per_snapshot(trained: tuple[Path, Path], tmp_path: Path
                                                              ) -> None:
    dataset, run = trained
    metrics, figures = tmp_path / "metrics.json", tmp_path / "figures"
    evaluate.run(PARAMS, run, dataset, metrics, figures)
    m = json.loads(metrics.read_text())
    assert m["features"] == "pixels" and "fid_inception" not in m
    assert m["fid_pixels"] > 0 and np.isfinite(m["kid_pixels"])
    assert m["num_generated"] == 12 and m["num_real"] == 8 and m["same_dataset"] is True
    assert m["kimg"] == pytest.approx(0.016)
    for name in ("grid.png", "truncation.png", "mixing.png", "interpolation.mp4", "interpolation.gif"):
        assert (figures / name).stat().st_size > 0, name
    assert Image.open(figures / "grid.png").size == (3 * 8, 3 * 8)        # 8 seeds in a 3x3 grid, 8 px
    width, height = Image.open(figures / "truncation.png").size          # 4 seeds x 6 psi, labelled
    assert width > 6 * 8 and height == sampling.LABEL_BAND + 4 * 8
    per_snapshot = json.loads((figures / "fid_vs_kimg.json").read_text())
    assert [r["kimg"] for r in per_snapshot] == pytest.approx([0.008, 0.016])
    assert per_snapshot[-1]["fid_pixels"] == pytest.approx(m["fid_pixels"])   # the last row is the metric
    assert per_snapshot[0]["fid_pixels"] != per_snapshot[-1]["fid_pixels"]
    assert Image.open(figures / "fid_vs_kimg.png").size == (800, 280)         # FID and KID panels


def test_without_every_snapshot_the_scores_hold_the_last_one(trained: tuple[Path, Path], tmp_path: Path
                                                             ) -> None:
    dataset, run = trained
    params = dataclasses.replace(PARAMS, fid_every_snapshot=False)
    evaluate.run(params, run, dataset, tmp_path / "m.json", tmp_path / "figures")
    rows = json.loads((tmp_path / "figures" / "fid_vs_kimg.json").read_text())
    assert [r["kimg"] for r in rows] == pytest.approx([0.016])
    assert rows[0]["kid_pixels"] == pytest.approx(json.loads((tmp_path / "m.json").read_text())["kid_pixels"])
    assert (tmp_path / "figures" / "fid_vs_kimg.png").stat().st_size > 0     # the declared plot exists


def test_evaluate_is_reproducible_across_processes(trained: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, run = trained
    evaluate.run(PARAMS, run, dataset, tmp_path / "a.json", tmp_path / "fa")
    params = tiny_params()
    params["evaluate"] = dataclasses.asdict(PARAMS)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    # The same evaluation as the DVC stage runs it: a fresh process reading a params file.
    args = ["--params", tmp_path / "params.yaml", "evaluate", "--checkpoints", run, "--dataset", dataset,
            "--metrics", tmp_path / "b.json", "--figures", tmp_path / "fb"]
    subprocess.run([sys.executable, "-m", "corgigan.cli", *map(str, args)], check=True, capture_output=True,
                   timeout=300)
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    for name in ("grid.png", "interpolation.mp4", "interpolation.gif", "fid_vs_kimg.json", "fid_vs_kimg.png"):
        assert (tmp_path / "fa" / name).read_bytes() == (tmp_path / "fb" / name).read_bytes(), name


def test_truncation_zero_gives_one_image_for_all_seeds(trained: tuple[Path, Path]) -> None:
    G, _ = sampling.load(trained[1], torch.device("cpu"))
    imgs = sampling.generate_images(G, [0, 1, 2], psi=0.0)
    assert imgs.dtype == np.uint8 and imgs.shape == (3, 8, 8, 3)
    assert np.array_equal(imgs[0], imgs[1]) and np.array_equal(imgs[0], imgs[2])
    assert not np.array_equal(*sampling.generate_images(G, [0, 1], psi=1.0))


def test_truncation_and_mixing_figures_carry_labels(trained: tuple[Path, Path]) -> None:
    G, _ = sampling.load(trained[1], torch.device("cpu"))
    sweep = sampling.truncation_sweep(G, [0, 1], psis=(1.0, 0.5))
    plain = sampling.image_grid(sampling.generate_images(G, [0], 1.0), cols=1)
    band = sampling.LABEL_BAND
    assert sweep.height == band + 2 * 8 and sweep.width > 2 * 8         # label strips above and left
    left = sweep.width - 2 * 8
    assert np.array_equal(np.asarray(sweep)[band:band + 8, left:left + 8], np.asarray(plain))
    header = np.asarray(sweep)[:band, left:]
    assert (header < 128).any()                                       # the psi labels are drawn
    mixing = sampling.style_mixing(G, [0, 1], [2, 3])
    assert mixing.size[1] == band + 3 * 8 and (np.asarray(mixing)[:band] < 128).any()


@pytest.mark.parametrize(("what", "expected"), [
    ("images", ["seed00003.png", "seed00004.png", "seed00005.png"]),
    ("truncation", ["truncation.png"]),
    ("mixing", ["mixing.png"]),
    ("video", ["interpolation.mp4"]),
])
def test_generate_cli(trained: tuple[Path, Path], tmp_path: Path, what: str, expected: list[str]) -> None:
    out = tmp_path / "out"
    args = ["generate", "--checkpoint", str(trained[1]), "--out", str(out), "--what", what,
            "--seeds", "3-5", "--frames", "4", "--device", "cpu"]
    assert cli.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == expected


def test_missing_and_broken_checkpoints_are_clear_errors(trained: tuple[Path, Path], tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    dataset = trained[0]
    assert cli.main(["generate", "--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "no such snapshot" in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(evaluate.StageError, match="run the train stage first"):
        evaluate.run(PARAMS, empty, dataset, tmp_path / "m.json", tmp_path / "f")
    broken = tmp_path / "broken"
    broken.mkdir()
    good = latest_snapshot(trained[1])
    assert good is not None
    (broken / good.name).write_bytes(good.read_bytes()[: good.stat().st_size // 2])   # truncated copy
    with pytest.raises(evaluate.StageError, match=good.name):
        evaluate.run(PARAMS, broken, dataset, tmp_path / "m.json", tmp_path / "f")
    assert not (tmp_path / "m.json").exists()


def test_empty_dataset_and_missing_inception_weights(trained: tuple[Path, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("dataset.json", '{"labels": null}')
    with pytest.raises(evaluate.StageError, match="holds no PNG images"):
        evaluate.run(PARAMS, trained[1], empty, tmp_path / "m.json", tmp_path / "f")
    inception = EvaluateParams(**{**PARAMS.__dict__, "features": "inception",
                                  "inception_path": str(tmp_path / "inception-2015-12-05.pt")})
    with pytest.raises(evaluate.StageError, match="Inception weights not found"):
        evaluate.run(inception, trained[1], trained[0], tmp_path / "m.json", tmp_path / "f")
