"""One device vocabulary (auto | cpu | cuda | cuda:N), resolved once, checked before long work."""

from __future__ import annotations

import dataclasses
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from corgigan import params as params_mod
from corgigan.cli import main
from corgigan.errors import StageError
from corgigan.stages import train
from corgigan.stylegan2.devices import DeviceError, is_device_name, resolve_device

ROOT = Path(__file__).resolve().parents[1]
NO_GPU = not torch.cuda.is_available()


def test_names_and_resolution():
    assert all(is_device_name(n) for n in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"))
    assert not any(is_device_name(n) for n in ("gpu", "cuda:", "cuda:x", "0", "CPU", ""))
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="use auto | cpu | cuda | cuda:N"):
        resolve_device("gpu")


@pytest.mark.skipif(not NO_GPU, reason="checks a machine without a GPU")
def test_a_missing_gpu_is_named():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match="no CUDA device"):
            resolve_device(name)


def test_every_device_param_takes_the_same_names():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section in ("detector", "detect", "train", "evaluate"):
        for name, ok in (("auto", True), ("cuda:3", True), ("gpu", False)):
            changed = {**raw, section: {**raw[section], "device": name}}
            if ok:
                assert getattr(params_mod.from_dict(changed), section).device == name
            else:
                with pytest.raises(params_mod.ParamsError, match=f"{section}.device: must be auto"):
                    params_mod.from_dict(changed)


def _zip(path: Path, res: int) -> Path:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((res, res, 3), np.uint8)).save(buf, format="PNG")
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(2):
            zf.writestr(f"00000/img{i:08d}.png", buf.getvalue())
        zf.writestr("dataset.json", '{"labels": null}')
    return path


@pytest.mark.skipif(not NO_GPU, reason="checks a machine without a GPU")
def test_a_large_config_on_the_cpu_must_be_asked_for(tmp_path):
    p = dataclasses.replace(params_mod.load(ROOT / "params.yaml").train, config="auto", device="auto")
    data = _zip(tmp_path / "big.zip", 512)
    with pytest.raises(StageError, match="at 512 px needs a GPU.*set train.device: cpu to insist"):
        train.run(p, data, tmp_path / "models", tmp_path / "reports")
    assert not (tmp_path / "models").exists()
    train.check_device_fits("cpu", on_gpu=False, cfg=train.configs.make_config("auto", 512))  # asked for


@pytest.mark.skipif(not NO_GPU, reason="checks a machine without a GPU")
def test_detector_on_a_missing_gpu_stops_before_preparing_data(tmp_path, caplog):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["detector"]["device"] = "cuda"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["--params", str(path), "detector", "--out", str(tmp_path / "det")]) == 2
    assert "no CUDA device" in caplog.text and not (tmp_path / "det").exists()
