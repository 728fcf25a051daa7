"""Interrupted runs leave nothing behind: a rerun of a stage sweeps the temporary files a killed run left
in its outputs, and a train stage killed while dvclive wrote its files resumes.

A SIGKILL skips atomic_path's cleanup, so `leftover` makes the file such a kill leaves: the temporary
name the real writer chose, holding half of what it was writing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from corgigan import cli, images, tables
from corgigan.analysis import attributes, curves
from corgigan.detector import detection
from corgigan.stages import train
from corgigan.stylegan2 import atomic
from corgigan.stylegan2.loop import training_loop
from corgigan.stylegan2.snapshot import save_snapshot, snapshot_name
from tests.helpers import fake_state, tiny_config, tiny_params, write_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


class KilledError(Exception):
    """Stands for the SIGKILL."""


def leftover(target: Path, data: bytes = b"half of it") -> Path:
    """The temporary file a write of `target` leaves when the process is killed half-way through it."""
    with contextlib.suppress(KilledError), tables.atomic_path(target) as tmp:
        raise KilledError   # atomic_path removes its file here; a SIGKILL would not have
    tmp.write_bytes(data)
    return tmp


def params_file(path: Path, **sections: dict) -> Path:
    """The tiny params with `sections`' keys changed."""
    raw = tiny_params()
    for name, changes in sections.items():
        raw[name].update(changes)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    """WARNING lines, without the train stage's expected one about a tiny dataset."""
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "a GAN needs thousands" not in r.getMessage()]


# ---------------------------------------------------------------------------------------------------------
# The rule: one naming scheme, one sweep


def test_sweep_takes_every_temp_of_a_folder_output_but_only_a_file_outputs_own(tmp_path: Path) -> None:
    figures, reports = tmp_path / "reports" / "figures", tmp_path / "reports"
    mine = [leftover(figures / "grid.png"), leftover(figures / "sub" / "interpolation.mp4"),
            leftover(reports / "metrics.json")]
    (figures / ".shards.tmp").mkdir()              # a temporary folder (the filter stage's form)
    (figures / ".shard-00001.zip.tmp").write_bytes(b"PK")   # images.ShardWriter's form
    others = [leftover(reports / "explore.json"), leftover(reports / "metrics.v2.json"),
              leftover(reports / "funnel.json")]   # beside metrics.json, but other outputs' temps
    keep = [figures / "grid.png", reports / ".hidden.json", reports / "metrics.json"]
    for p in keep:
        p.write_text("{}")
    removed = tables.remove_stale_temps(reports / "metrics.json", figures)
    assert sorted(removed) == sorted([*mine, figures / ".shards.tmp", figures / ".shard-00001.zip.tmp"])
    assert all(p.exists() for p in others + keep) and not any(p.exists() for p in removed)
    assert all(atomic.is_temp(p.name) for p in mine + others)
    assert tables.remove_stale_temps(reports / "metrics.json", figures, tmp_path / "nowhere") == []


def test_sweep_spares_a_young_temp_when_asked(tmp_path: Path) -> None:
    young = leftover(tmp_path / "cache" / "abc-pixels.npy")
    assert tables.remove_stale_temps(tmp_path / "cache" / "abc-pixels.npy", min_age_s=3600) == []
    assert tables.remove_stale_temps(tmp_path / "cache" / "abc-pixels.npy") == [young]


# ---------------------------------------------------------------------------------------------------------
# evaluate and explore: a rerun sweeps, then writes what a clean run writes


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset zip, checkpoint folder with one snapshot of a few steps)."""
    root = tmp_path_factory.mktemp("trained")
    dataset = write_dataset(root / "data.zip", n=8, seed=0)
    training_loop(dataset, root / "run", tiny_config(), kimg=0.008, snapshot_kimg=0.008, seed=0,
                  augment="none", workers=0, device="cpu")
    return dataset, root / "run"


EVALUATE = dict(num_images=8, batch=8, grid_seeds=8, video_frames=4, fid_every_snapshot=False, device="cpu")


def test_evaluate_rerun_removes_what_a_killed_run_left(trained: tuple[Path, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CORGIGAN_CACHE", str(tmp_path / "cache"))
    dataset, run = trained
    params = params_file(tmp_path / "params.yaml", evaluate=EVALUATE)

    def evaluate(root: Path) -> int:
        return cli.main(["--params", str(params), "evaluate", "--checkpoints", str(run), "--dataset",
                         str(dataset), "--metrics", str(root / "metrics.json"), "--figures",
                         str(root / "figures")])

    assert evaluate(tmp_path / "clean") == 0
    killed = tmp_path / "killed"
    stale = [leftover(killed / "figures" / "interpolation.mp4"), leftover(killed / "figures" / "grid.png"),
             leftover(killed / "metrics.json")]
    other = leftover(killed / "explore.json")      # another stage's output shares the metrics' folder
    caplog.clear()
    assert evaluate(killed) == 0
    assert not any(p.exists() for p in stale) and other.exists()
    clean = tmp_path / "clean"
    assert files_under(killed / "figures") == files_under(clean / "figures")
    for name in ("metrics.json", *(f"figures/{n}" for n in files_under(clean / "figures"))):
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name
    swept = " ".join(m for m in warnings_of(caplog) if "temporary" in m)
    assert all(str(p) in swept for p in stale) and str(other) not in swept


def boxes_by_brightness(yolo: object, images: list[Image.Image], **_: object
                        ) -> list[list[detection.Detection]]:
    """A stand-in detector: one 'dog' per image, its box and confidence growing with the brightness."""
    out = []
    for img in images:
        b = float(np.asarray(img).mean() / 255)
        side = img.width * (0.3 + 0.5 * b)
        out.append([detection.Detection(0, 0, side, side, b, 0)])
    return out


def test_explore_rerun_removes_what_a_killed_run_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    monkeypatch.setattr(attributes.detection, "predict", boxes_by_brightness)
    monkeypatch.setattr(detection.DogDetector, "load",
                        classmethod(lambda cls, _dir, **kw: cls(None, 0, **kw)))
    checkpoints = tmp_path / "run"
    save_snapshot(checkpoints / snapshot_name(8), fake_state(tiny_config(resolution=16)))
    params = params_file(tmp_path / "params.yaml", detect=dict(batch=16, device="cpu"), explore=dict(
        truncation_psi=1.0, num_components=2, pca_samples=60, num_labelled=40, check_seeds=3, strip_seeds=2,
        strip_steps=3, device="cpu"))

    def explore(root: Path) -> int:
        return cli.main(["--params", str(params), "explore", "--checkpoints", str(checkpoints), "--detector",
                         str(tmp_path / "detector"), "--directions", str(root / "models" / "directions.json"),
                         "--metrics", str(root / "explore.json"), "--figures", str(root / "figures")])

    assert explore(tmp_path / "clean") == 0
    killed = tmp_path / "killed"
    stale = [leftover(killed / "figures" / "sefa_0.png"), leftover(killed / "figures" / "brightness.png"),
             leftover(killed / "models" / "directions.json"), leftover(killed / "explore.json")]
    others = [leftover(killed / "models" / "detector.json"), leftover(killed / "metrics.json")]
    assert explore(killed) == 0
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others)
    clean = tmp_path / "clean"
    assert files_under(killed / "figures") == files_under(clean / "figures")
    strips = [f"figures/{n}" for n in files_under(clean / "figures")]
    for name in ["models/directions.json", "explore.json", *strips]:
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------------------
# train: dvclive's files as a killed run leaves them


@pytest.fixture(scope="module")
def two_ticks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder after a train stage run of 2 ticks: params.yaml, data.zip, models/, reports/."""
    root = tmp_path_factory.mktemp("train")
    write_dataset(root / "data.zip", n=8, seed=0)
    params_file(root / "params.yaml", train=dict(kimg=0.016, snapshot_kimg=0.016, tick_kimg=0.008, workers=0,
                                                 device="cpu"))
    assert cli.main(train_args(root)) == 0
    return root


def train_args(root: Path) -> list[str]:
    return ["--params", str(root / "params.yaml"), "train", "--dataset", str(root / "data.zip"), "--out",
            str(root / "models"), "--metrics", str(root / "reports")]


def test_a_truncated_summary_is_rebuilt_as_dvclive_wrote_it(two_ticks: Path, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    shutil.copytree(two_ticks / "reports", reports)
    summary = reports / "metrics.json"
    whole = summary.read_bytes()
    assert json.loads(whole)["step"] == 2 and "Timing" not in json.loads(whole)
    for cut in (b"", whole[:40], whole[:-3]):
        summary.write_bytes(cut)
        assert "rebuilt from the histories at step 2" in curves.repair_summary(reports, 2, train.NOT_COMPARED)
        assert summary.read_bytes() == whole
    assert curves.repair_summary(reports, 2, train.NOT_COMPARED) is None      # a whole file stays as it is
    history = reports / "plots" / "metrics" / "Loss" / "G" / "loss.tsv"
    rows = history.read_bytes()
    history.write_bytes(rows + b"3\t0.5\n4\t0.2")    # a row after the snapshot, and a partial one
    assert curves.repair_histories(reports / "plots" / "metrics", 2) == [
        "Loss/G/loss.tsv: 1 partial or garbled line(s) dropped"]
    assert history.read_bytes() == rows


def test_a_summary_is_rebuilt_with_dvclives_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The train stage's own reporter writes the folder; a metric first logged at step 2 and a non-finite
    # value test the order and the types dvclive gives them.
    monkeypatch.chdir(tmp_path)
    reports = tmp_path / "reports"
    reporter = train._Reporter(reports)
    reporter.on_start({"resumed": False, "mode": "fresh", "nimg": 0, "total_nimg": 16, "tick": 0})
    reporter.on_tick(1, {"Progress/kimg": 0.008, "Loss/G/loss": 1.5, "ADA/rt": float("nan"),
                         "Timing/sec_per_kimg": 3.0, "Loss/signs/real": 0.1, "Progress/count": 3})
    reporter.on_tick(2, {"Progress/kimg": 0.016, "Loss/G/loss": 1.25, "ADA/rt": 0.25, "Loss/D/reg": 0.5,
                         "Timing/sec_per_kimg": 2.0, "Loss/signs/real": 0.2, "Progress/count": 5})
    reporter.close()
    summary = reports / "metrics.json"
    whole = summary.read_bytes()
    summary.write_bytes(whole[:25])
    assert curves.repair_summary(reports, 2, train.NOT_COMPARED)
    assert summary.read_text() == whole.decode()


def test_train_resumes_after_a_kill_while_dvclive_wrote(two_ticks: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "train"
    shutil.copytree(two_ticks, root)
    reports, models = root / "reports", root / "models"
    summary = reports / "metrics.json"
    summary.write_bytes(summary.read_bytes()[:40])                # killed while dvclive rewrote it
    kimg = reports / "plots" / "metrics" / "Progress" / "kimg.tsv"
    kimg.write_bytes(kimg.read_bytes()[:-2])                      # and while it appended a row
    stale = [leftover(reports / "curves.png"), leftover(reports / "plots" / "metrics" / "ADA" / "p.tsv"),
             leftover(models / snapshot_name(24))]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["kimg"] = 0.024
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    caplog.clear()
    assert cli.main(train_args(root)) == 0
    assert not any(p.exists() for p in stale)
    repaired = [m for m in warnings_of(caplog) if "interrupted run" in m and "temporary" not in m]
    assert len(repaired) == 1 and "metrics.json" in repaired[0] and "Progress/kimg.tsv" in repaired[0]
    done = json.loads(summary.read_text())
    assert done["step"] == 3 and done["Progress"]["kimg"] == 0.024 and "Timing" not in done
    for tsv in sorted((reports / "plots" / "metrics").rglob("*.tsv")):   # whole rows, each step once
        text = tsv.read_text()
        steps = [int(row.split("\t")[0]) for row in text.splitlines()[1:]]
        assert text.endswith("\n") and steps == sorted(set(steps)) and steps[-1] <= 3, tsv
    # tick 2's row was cut: it is gone, not glued to tick 3's
    assert kimg.read_text().splitlines() == ["step\tkimg", "1\t0.008", "3\t0.024"]


def test_every_stage_rerun_sweeps_its_outputs_first(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The rule lives in the CLI, for every stage: here the dedup stage, whose file output shares its
    # folder with other stages' outputs (their temps stay).
    crops = tmp_path / "filter"
    with images.ShardWriter(crops / "shards", 4) as w:
        for i in range(3):
            img = Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8))
            w.add(f"{i:016x}", images.encode_png(img), ".png")
    rows = [{n: None for n in tables.SCHEMAS["filter"].names} for _ in range(3)]
    for i, row in enumerate(rows):
        row.update(image_id=f"{i:016x}", kept=True, width=16, height=16, confidence=0.9, crop_side=16)
    tables.write_table("filter", rows, crops / "filter.parquet")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params()))
    out = tmp_path / "interim" / "dedup.parquet"
    mine, theirs = leftover(out), leftover(tmp_path / "interim" / "detections.parquet")
    with caplog.at_level(logging.WARNING):
        assert cli.main(["--params", str(params), "dedup", "--crops", str(crops), "--out", str(out)]) == 0
    assert not mine.exists() and theirs.exists() and out.is_file()
    assert str(mine) in caplog.text
