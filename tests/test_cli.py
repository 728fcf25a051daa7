"""The `corgigan` command: every failure a user can fix ends as one clear line and exit code 2, never a
traceback; --help says what each stage reads."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corgigan import tables
from corgigan.cli import main
from corgigan.stylegan2.loop import training_loop
from tests.helpers import LOOP_KW, tiny_config, write_dataset

ROOT = Path(__file__).resolve().parents[1]
DEMO = (ROOT / "params.yaml").read_text()


def _png(size: int, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _truncated(path: Path) -> Path:
    whole = write_dataset(path, n=4).read_bytes()
    path.write_bytes(whole[:-200])           # the central directory is gone
    return path


def _error(caplog: pytest.LogCaptureFixture) -> str:
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    return errors[0]


# ---- params.yaml -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    (DEMO.replace("  kimg: 4 ", "  kimg: [4\n", 1), r"params.yaml:\d+:\d+: invalid YAML"),
    (DEMO.replace("\n  kimg:", "\n\tkimg:", 1), r"params.yaml:\d+:1: invalid YAML: found character '\\t'"),
    (DEMO.replace("  kimg: 4 ", "  kimg: 4\n  kimg: 5 ", 1),
     r"params.yaml:\d+:3: invalid YAML: duplicate key .*\"kimg\""),
    (DEMO.replace("  kimg: 4 ", "  kimg: .inf ", 1), r"train.kimg: must be a finite number, got inf"),
    (DEMO.replace("  tick_kimg: 0.25", "  tick_kimg: .nan", 1), r"train.tick_kimg: must be a finite number"),
    (DEMO.replace("  snapshot_kimg: 1 ", "  snapshot_kimg: -.inf ", 1),
     r"train.snapshot_kimg: must be a finite number"),
], ids=["syntax", "tab", "duplicate_key", "inf", "nan", "minus_inf"])
def test_bad_params_files_name_the_file_and_line(tmp_path, caplog, text, message):
    assert text != DEMO
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert main(["--params", str(path), "train", "--dataset", "d.zip", "--out", "o", "--metrics", "m"]) == 2
    assert re.search(message, _error(caplog))


def test_non_utf8_params_file(tmp_path, caplog):
    path = tmp_path / "params.yaml"
    path.write_bytes(DEMO.encode().replace(b"corgi]", b"corg\xefi]"))
    assert main(["--params", str(path), "scrape", "--out", "o", "--cache", "c"]) == 2
    assert "params.yaml:" in _error(caplog) and "not UTF-8" in _error(caplog)


def test_the_console_script_prints_no_traceback(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(DEMO.replace("\n  kimg:", "\n\tkimg:", 1))
    stale = tmp_path / "raw"
    stale.mkdir()
    (tmp_path / "ok.yaml").write_text(DEMO)
    tables.write_table("dedup", [], stale / "posts.parquet")       # a table of another schema
    tables.write_table("detections", [], tmp_path / "d.parquet")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    for args in (["--params", str(path), "train", "--dataset", "d", "--out", "o", "--metrics", "m"],
                 ["--params", str(tmp_path / "ok.yaml"), "filter", "--raw", str(stale),
                  "--detections", str(tmp_path / "d.parquet"), "--out", str(tmp_path / "f")]):
        proc = subprocess.run([sys.executable, "-m", "corgigan.cli", *args], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert len([line for line in proc.stderr.splitlines() if "ERROR" in line]) == 1, proc.stderr
    assert "schema differs from table posts" in proc.stderr


# ---- corrupt dataset zips: train and evaluate, one reader, one message each --------------------------

BAD_ZIPS = {
    "truncated": (_truncated, "truncated"),
    "non_image_member": (lambda p: _zip(p, {"00000/img00000000.png": _png(8),
                                            "00000/img00000001.png": b"<html>not a png</html>"}),
                         "img00000001.png: not a readable PNG"),
    "mixed_sizes": (lambda p: _zip(p, {f"00000/img0000000{i}.png": _png(8 if i < 5 else 16, i)
                                       for i in range(6)}),
                    "img00000005.png: 16x16 RGB differs from the first image"),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    data = write_dataset(run_dir.parent / "good.zip", n=4)
    training_loop(data, run_dir, tiny_config(), kimg=0.004, snapshot_kimg=0.004, **LOOP_KW)
    return run_dir


@pytest.mark.parametrize("case", sorted(BAD_ZIPS))
def test_corrupt_dataset_zip_stops_train_and_evaluate(tmp_path, caplog, checkpoints, monkeypatch, case):
    make, message = BAD_ZIPS[case]
    bad = tmp_path / "corgis.zip"
    make(bad)
    monkeypatch.setenv("CORGIGAN_CACHE", str(tmp_path / "cache"))
    params = tmp_path / "params.yaml"
    params.write_text(DEMO.replace("  workers: 2                 # DataLoader", "  workers: 0  # DataLoader"))
    assert main(["--params", str(params), "train", "--dataset", str(bad), "--out", str(tmp_path / "models"),
                 "--metrics", str(tmp_path / "reports")]) == 2
    assert message in _error(caplog)
    assert not (tmp_path / "models").exists()          # stopped before training, nothing written
    caplog.clear()
    assert main(["--params", str(params), "evaluate", "--checkpoints", str(checkpoints),
                 "--dataset", str(bad), "--metrics", str(tmp_path / "metrics.json"),
                 "--figures", str(tmp_path / "fig")]) == 2
    assert message in _error(caplog)
    assert not (tmp_path / "metrics.json").exists()


# ---- generate ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "message"), [
    (["--seeds", "7-3"], "runs backwards"),
    (["--seeds", "abc"], "'abc' is not a seed"),
    (["--seeds", ","], "no seeds"),
    (["--device", "cuda"] if not __import__("torch").cuda.is_available() else ["--device", "tpu"],
     "device"),
])
def test_generate_argument_errors(tmp_path, caplog, checkpoints, extra, message):
    assert main(["generate", "--checkpoint", str(checkpoints), "--out", str(tmp_path / "out"), *extra]) == 2
    assert message in _error(caplog)


# ---- help --------------------------------------------------------------------------------------------

def test_stage_help_names_its_params_sections_and_filter_its_reasons(capsys):
    with pytest.raises(SystemExit):
        main(["filter", "--help"])
    text = capsys.readouterr().out
    assert "Reads params.yaml sections: filter, images." in text
    assert all(reason in text for reason in tables.REASONS if reason != "duplicate")
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = capsys.readouterr().out
    assert "(default: 0-7)" in text and "(default: auto)" in text
