"""Two things the 1024-px rehearsal of the full run showed: ultralytics' requirement warning for every
undecodable photo detect met, and train asking for more DataLoader workers than the machine has."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import pytest

from corgigan.images import DecodeError, decode
from corgigan.stylegan2.data import StreamSampler, ZipDataset, make_loader
from tests.helpers import write_dataset

CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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
