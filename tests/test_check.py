"""`corgigan check`: what the params need, found or missing, each with what to do; rc 2 when missing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from corgigan import check
from corgigan import params as params_mod
from corgigan.analysis import sampling
from corgigan.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _params(tmp_path: Path, **sections: dict) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, changes in sections.items():
        raw[name] = {**raw[name], **changes}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_demo_needs_nothing_more(tmp_path, capsys):
    assert main(["--params", str(_params(tmp_path)), "check"]) == 0
    out = capsys.readouterr().out
    assert "MISSING" not in out and "everything the params need is here" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_the_full_run_lists_what_is_missing_and_what_to_do(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("CORGIGAN_IG_SESSION", raising=False)
    monkeypatch.chdir(tmp_path)                    # no Stanford Dogs, no Inception file here
    assert main(["--params", str(ROOT / "configs" / "full.yaml"), "check"]) == 2
    out = capsys.readouterr().out
    missing = {line.split()[1] for line in out.splitlines() if line.startswith("MISSING")}
    assert {"Instagram", "detector.device", "detect.device", "detector.stanford_dogs_path", "train.device",
            "evaluate.inception_path"} <= missing
    assert "instaloader --login" in out and "run on a GPU machine" in out


def test_a_folder_source_must_exist_and_a_large_cpu_run_be_asked_for(tmp_path):
    folder = {"source": "folder", "folder": {"path": str(tmp_path / "no")}}
    p = params_mod.load(_params(tmp_path, scrape=folder))
    checks = {c.what: c for c in check.run_checks(p, tmp_path, environ={})}
    assert not checks["scrape.folder.path"].ok and "no such folder" in checks["scrape.folder.path"].detail
    (tmp_path / "no").mkdir()
    assert check.source_checks(p, {})[0].ok
    if not torch.cuda.is_available():
        sizes = {"resolution": 1024, "min_side": 1024, "min_crop": 1024}
        train = {"config": "paper1024", "device": "auto"}
        big = params_mod.load(_params(tmp_path, filter=sizes, train=train))
        found = {c.what: c for c in check.train_checks(big)}
        assert not found["train on a GPU"].ok and "train.device: cpu to insist" in found["train on a GPU"].fix


def test_the_full_run_costs_what_the_measured_sizes_say(tmp_path):
    # configs/full.yaml: 1024 px, paper1024, 10 kept snapshots; sizes from costs.json's measured figures.
    full = params_mod.load(ROOT / "configs" / "full.yaml")
    c = check.costs()
    assert abs(check.snapshot_gb(full) / c["snapshot_gb_paper1024"] - 1) < 0.05   # counted vs the file
    est = check.disk_estimate(full, tmp_path)                    # no .dvc/config: DVC copies
    photos = full.scrape.instagram.max_posts * len(full.scrape.instagram.hashtags)
    assert est["raw"] == pytest.approx(photos * c["raw_mb_photo"] / 1e3)          # photos, not drawn scenes
    assert est["crops"] == pytest.approx(photos * c["kept_share"] * c["crop_mb_1024_photo"] / 1e3)
    assert est["zip"] == pytest.approx(est["crops"] * c["zip_per_crops"])
    assert est["snapshots"] == 10 * check.snapshot_gb(full)
    assert est["total"] == 2 * est["outputs"]
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[cache]\n    type = reflink,hardlink,symlink\n")
    assert check.disk_estimate(full, tmp_path)["total"] == est["outputs"]
    days = check.time_check(full).detail
    kimg = full.train.kimg
    v100 = c["sec_per_kimg_v100"]["1024"]
    assert v100 == 141.83                                                          # published
    assert f"{kimg:g} kimg at 1024 px: ~{kimg * v100 / 86400:.1f} days on one V100" in days
    hours = photos * (c["detect_s_per_image_cpu"] + c["filter_s_per_image_cpu"]) / 3600
    assert f"detect and filter ~{hours:.1f} h" in days
    disk = check.disk_check(full, tmp_path.parent)
    assert "dvc config cache.type reflink,hardlink,symlink" in disk.fix and "dvc unprotect" in disk.fix


def test_drawn_scenes_are_costed_as_drawn_and_scaled_by_pixels(tmp_path):
    demo = params_mod.load(ROOT / "params.yaml")                  # synthetic source, 64 px
    c = check.costs()
    est = check.disk_estimate(demo, tmp_path)
    photos = demo.scrape.synthetic.num_images + 50
    assert est["raw"] == pytest.approx(photos * c["raw_mb_drawn"] / 1e3)
    assert est["crops"] == pytest.approx(photos * c["kept_share"] * c["crop_mb_1024_drawn"] * (64 / 1024) ** 2
                                         / 1e3)


def test_memory_needs_follow_the_measured_per_image_figures(tmp_path):
    sizes = {"resolution": 1024, "min_side": 1024, "min_crop": 1024}
    p = params_mod.load(_params(tmp_path, filter=sizes, train={"config": "paper1024", "device": "cpu",
                                                                "batch": 2},
                                evaluate={"device": "cpu", "batch": 64}))
    c = check.costs()
    found = {x.what: x for x in check.memory_checks(p)}
    assert found["train memory"].detail.startswith(f"~{2 * c['train_gb_per_image_1024_cpu']:.1f} GB needed")
    # evaluate.batch 64 at 1024 px is ~35 GB in one pass: generation passes within half the memory instead.
    per = c["gen_gb_per_image_1024_cpu"]
    budget = sampling.memory_budget(torch.device("cpu")) / 2**30
    passes = min(64, int(budget // per))
    assert passes < 64
    assert found["evaluate memory"].ok
    assert found["evaluate memory"].detail.startswith(f"~{passes * per:.1f} GB needed on cpu (passes of "
                                                      f"{passes} of evaluate.batch's 64 images")
