"""What the 1024-px rehearsal showed passing silently now warns: a detector that barely learned, a detect
run that found almost no dog, a funnel emptied by no_dog."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from corgigan.data.funnel import funnel_counts
from corgigan.data.scenes import draw_scene
from corgigan.detector import detection
from corgigan.images import ShardWriter, encode_png
from corgigan.params import DetectorParams, DetectParams, ImagesParams
from corgigan.stages import detect, detector

# One epoch on 24 drawn scenes at 96 px: a detector that learned next to nothing, in seconds.
WEAK = DetectorParams(
    kind="train", pretrained_weights="", dog_class=0, labels="synthetic", stanford_dogs_path="",
    model="yolo11n.yaml", seed=3, num_images=24, epochs=1, imgsz=96, batch=8, val_fraction=0.25,
    device="cpu", workers=0,
)


@pytest.fixture(scope="module")
def weak(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("weak")
    detector.run(WEAK, out)
    return out


def test_detector_that_barely_learned_warns_and_meta_says_why(weak: Path, caplog) -> None:
    meta = json.loads((weak / detection.META_FILE).read_text())
    assert meta["map50"] < detector.WEAK_MAP50
    assert len(meta["warnings"]) == 1 and "barely learned" in meta["warnings"][0]
    assert f"mAP50 {meta['map50']:.3f}" in meta["warnings"][0]
    # The rule itself: a learned or a pretrained detector says nothing.
    assert detector.learning_warning(0.9) is None and detector.learning_warning(None) is None


def test_detect_that_finds_almost_nothing_warns(weak: Path, tmp_path: Path, caplog) -> None:
    rng = np.random.default_rng(5)
    raw = tmp_path / "raw"
    with ShardWriter(raw / "shards", shard_size=4) as w:
        for i in range(6):
            img, _ = draw_scene(rng, 160, 120, 1)
            w.add(f"{i:016x}", encode_png(img), ".png")
    out = tmp_path / "d.parquet"
    strict = DetectParams(conf=0.99, iou=0.6, imgsz=96, batch=3, device="cpu")   # nothing passes 0.99
    with caplog.at_level(logging.WARNING, logger="corgigan.stages.detect"):
        detect.run(strict, ImagesParams(max_pixels=10_000_000), raw, weak, out)
    assert "found a dog in only 0 of 6 images" in caplog.text and "detect.conf (0.99)" in caplog.text
    assert detect.found_too_few(5, 6, 0.25, 0.9) is None


def _tables(no_dog: int, kept: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    reasons = ["no_dog"] * no_dog + ["decode_error"] * 3 + [None] * kept
    filt = pd.DataFrame({"reason": reasons, "kept": [r is None for r in reasons]})
    dd = pd.DataFrame({"reason": [None] * kept, "kept": [True] * kept})
    return filt, dd


def test_funnel_says_why_when_no_dog_dominates() -> None:
    counts = funnel_counts(*_tables(no_dog=9, kept=1))
    assert len(counts["warnings"]) == 1
    assert counts["warnings"][0].startswith("no_dog rejected 9 of 10 decodable images (90%")
    # At the threshold (half the decodable images) all is well; just over it, the warning.
    assert funnel_counts(*_tables(no_dog=5, kept=5))["warnings"] == []
    assert len(funnel_counts(*_tables(no_dog=51, kept=49))["warnings"]) == 1


def test_projection_errors_are_on_clamped_pixels() -> None:
    import torch

    from corgigan.play import projection

    target = torch.ones(1, 3, 4, 4)                          # white, in [-1, 1]
    over = projection.reconstruction_errors(torch.full((1, 3, 4, 4), 3.0), target)[0]
    assert over["mse"] == 0.0                                 # overshoot draws as white: no error
    black = projection.reconstruction_errors(-3 * torch.ones(1, 3, 4, 4), target)[0]
    assert black["mse"] == 1.0 and black["psnr"] == 0.0       # the worst a [0, 1] picture can be
