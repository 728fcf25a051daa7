"""The rehearsal of the full run (benchmarks/rehearsal.py) in small, the costs.json it feeds, and two things
the 1024-px rehearsal showed: ultralytics' requirement warning for every undecodable photo detect met, and
train asking for more DataLoader workers than the machine has."""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import pytest
import yaml
from benchmarks import rehearsal

from corgigan import check
from corgigan.images import DecodeError, decode
from corgigan.stylegan2.data import StreamSampler, ZipDataset, make_loader
from tests.helpers import ROOT, write_dataset

CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("rehearsal")
    # An earlier rehearsal's leftovers must not be measured again (train would resume this snapshot).
    stale = out / "project" / "models" / "stylegan2"
    stale.mkdir(parents=True)
    (stale / "snapshot-000999.pt").write_bytes(b"an earlier rehearsal's snapshot")
    return out, rehearsal.run(out, smoke=True, costs=None)


def test_smoke_rehearsal_measures_every_stage_of_dvc_yaml(smoke: tuple[Path, dict]) -> None:
    out, report = smoke
    assert report["failed"] == []
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    for s in stages.values():
        # A Python process with torch imported holds well over 0.1 GiB: the peak is the stage's own.
        assert s["rc"] == 0 and s["wall_s"] > 0 and s["cpu_s"] > 0 and s["peak_gb"] > 0.1, s
    # Output size per image: scraped photos, crops, zip members; the snapshot as a whole.
    for name in ("scrape", "filter", "dataset"):
        assert stages[name]["images"] > 0 and stages[name]["mb_per_image"] > 0, stages[name]
    assert stages["train"]["out_mb"] > 0
    assert stages["detect"]["images"] < stages["scrape"]["images"]        # planted undecodable images
    assert report["generation"]["peak_gb_3"] >= report["generation"]["peak_gb_1"] > 0.1
    written = json.loads((out / "rehearsal.json").read_text())
    assert written == {k: v for k, v in report.items() if k != "failed"}
    text = (out / "rehearsal.txt").read_text()
    assert all(any(line.startswith(name + " ") for line in text.splitlines()) for name in stages)
    assert "figures" not in report     # only a 1024-px rehearsal measures costs.json's figures


def test_detect_meets_undecodable_photos_without_a_requirement_warning(smoke: tuple[Path, dict]) -> None:
    out, _ = smoke
    detect_log = (out / "logs" / "detect.log").read_text()
    assert "undecodable image(s) skipped" in detect_log          # it met them...
    assert "pi-heif" not in detect_log and "requirement" not in detect_log   # ...and asked for no plugin


def test_train_uses_no_more_loader_workers_than_cpus(smoke: tuple[Path, dict]) -> None:
    out, _ = smoke
    train_log = (out / "logs" / "train.log").read_text()
    asked = rehearsal.rehearsal_params(smoke=True)["train"]["workers"]
    assert "worker processes in total" not in train_log          # torch's warning
    if asked > CPUS:
        assert f"data loader: {asked} workers asked for, {CPUS} CPUs here; using {CPUS}" in train_log


def test_decoding_after_ultralytics_asks_for_no_plugin(capfd: pytest.CaptureFixture[str]) -> None:
    from corgigan.detector import detection

    detection.setup_ultralytics()
    for _ in range(2):
        with pytest.raises(DecodeError) as e:
            decode(b"this is not an image at all", 10**6)
        assert e.value.status == "not_image"
    out, err = capfd.readouterr()
    assert "pi-heif" not in out + err and "requirement" not in out + err


def test_loader_caps_workers_at_the_cpus(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dataset = ZipDataset(write_dataset(tmp_path / "d.zip", n=4, res=8))
    sampler = StreamSampler(dataset.num_images, seed=0, batch=2, batch_gpu=2)
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="corgigan.stylegan2.data"):
        warnings.simplefilter("error")          # torch's "will create N worker processes" warning fails it
        images, _ = next(make_loader(dataset, sampler, workers=CPUS + 2))
    assert images.shape == (2, 3, 8, 8)
    assert f"{CPUS + 2} workers asked for, {CPUS} CPUs here; using {CPUS}" in caplog.text


def test_costs_file_says_where_every_figure_came_from() -> None:
    data = json.loads(check.COSTS_FILE.read_text())
    for name, entry in data["figures"].items():
        assert set(entry) == {"value", "unit", "source"} and entry["source"], name
    figures = check.load_costs()
    # Every figure the rehearsal measures is one check reads, and was measured by it at 1024 px.
    assert set(rehearsal.SOURCES) <= set(figures)
    assert all(data["figures"][name]["source"].startswith("rehearsal") for name in rehearsal.SOURCES)


def test_write_costs_rewrites_only_the_measured_figures(tmp_path: Path) -> None:
    path = tmp_path / "costs.json"
    shutil.copy(check.COSTS_FILE, path)
    before = check.load_costs(path)
    changed = ("crop_mb_1024_drawn", "gen_gb_per_image_1024_cpu")
    rehearsal.write_costs(path, dict(zip(changed, (0.123456, 0.5), strict=True)), "a machine")
    after = check.load_costs(path)
    assert after["crop_mb_1024_drawn"] == 0.1235 and after["gen_gb_per_image_1024_cpu"] == 0.5
    assert {k: v for k, v in after.items() if k not in changed} == \
        {k: v for k, v in before.items() if k not in changed}
    entry = json.loads(path.read_text())["figures"]["crop_mb_1024_drawn"]
    assert entry["source"] == f"rehearsal (a machine): {rehearsal.SOURCES['crop_mb_1024_drawn']}"


def test_a_stage_done_within_the_start_noise_leaves_its_figure_unmeasured() -> None:
    # filter at 1024 px kept a few crops of 64 photos: its wall time was below a bare process start.
    stages = {name: rehearsal.Stage(name, 0, 10.0, 10.0, 1.0, images=64, out_mb=10.0, mb_per_image=0.5,
                                    s_per_image=0.05)
              for name in ("scrape", "filter", "dataset", "train", "detect")}
    stages["filter"].s_per_image = 0.0
    figures = rehearsal.measured_figures(stages, {"gb_per_image": 0.5},
                                         {"raw_mb_1080x1350": 0.15, "crop_mb": 1.6}, 1024)
    assert "filter_s_per_image_cpu" not in figures
    assert figures["detect_s_per_image_cpu"] == 0.05
    assert set(figures) == set(rehearsal.SOURCES) - {"filter_s_per_image_cpu"}
