"""Snapshots: atomic save, weights_only load with clear errors, G_ema rebuild, and the resume rules."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from corgigan import cli
from corgigan.stylegan2 import configs
from corgigan.stylegan2.load import build, load_networks
from corgigan.stylegan2.loop import decide_start
from corgigan.stylegan2.snapshot import (
    SnapshotError,
    capture_rng,
    latest_snapshot,
    load_snapshot,
    restore_rng,
    save_snapshot,
    snapshot_name,
)
from tests.helpers import fake_state, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_round_trip_is_atomic_and_weights_only(tmp_path):
    cfg = tiny_config()
    state = fake_state(cfg)
    path = tmp_path / snapshot_name(8)
    save_snapshot(path, state)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]   # no temporary file left behind
    back = load_snapshot(path)
    assert back["config"] == configs.config_to_dict(cfg)
    assert back["augment_p"] == 0.25 and back["progress"]["nimg"] == 8
    for k, v in state["G"].items():
        assert torch.equal(back["G"][k], v)


def test_same_state_gives_the_same_bytes(tmp_path):
    state = fake_state(tiny_config())
    save_snapshot(tmp_path / "a.pt", state)
    save_snapshot(tmp_path / "b.pt", state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_truncated_missing_and_foreign_files(tmp_path):
    path = tmp_path / snapshot_name(8)
    save_snapshot(path, fake_state(tiny_config()))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SnapshotError, match="truncated or corrupt"):
        load_snapshot(path)
    with pytest.raises(SnapshotError, match="not found"):
        load_snapshot(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(SnapshotError, match="not a corgigan"):
        load_snapshot(tmp_path / "other.pt")


class _Payload:
    """Unpickling this runs code: it creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cli_refuses_a_snapshot_with_a_payload_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    state = fake_state(tiny_config())
    state["G_ema"] = _Payload(marker)
    path = tmp_path / snapshot_name(8)
    torch.save(state, path)
    proc = subprocess.run([sys.executable, "-m", "corgigan.cli", "generate", "--checkpoint", str(path),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "not a corgigan snapshot" in proc.stderr and "system" in proc.stderr
    assert "corgigan train" in proc.stderr            # says what a snapshot is
    assert "weights_only=False" not in proc.stderr     # never passes on torch's advice to run the code
    assert not marker.exists() and not (tmp_path / "out").exists()


def _set(section: str, key: str, value: object):
    return lambda state: state[section].__setitem__(key, value)


def generate_from_damaged(tmp_path, caplog, damage) -> tuple[Path, str]:
    """`corgigan generate` on a snapshot that `damage` edited: (its path, the one ERROR line); rc 2 and
    no output folder."""
    state = fake_state(tiny_config())
    damage(state)
    path = tmp_path / snapshot_name(8)
    save_snapshot(path, state)
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR):
        assert cli.main(["generate", "--checkpoint", str(path), "--out", str(out), "--seeds", "0",
                         "--device", "cpu"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert not out.exists()
    return path, errors[0]


@pytest.mark.parametrize("damage, message", [
    (_set("config", "name", "paper9000"), "unknown config 'paper9000'"),
    (_set("config", "resolution", 3), "resolution = 3 is outside 8..4096"),
    (_set("config", "resolution", 48), "resolution = 48 is not a power of two"),
    (lambda state: state["dataset"].pop("num_channels"), "its dataset record lacks num_channels"),
    (_set("dataset", "num_channels", -3), "dataset.num_channels = -3 is outside 1..4"),
    (lambda state: state["config"]["G_kwargs"].update(w_dim=2**20), "G_kwargs.w_dim = 1048576 is outside"),
    (lambda state: state["config"]["G_kwargs"].pop("z_dim"), "G_kwargs.z_dim is missing"),
    (_set("dataset", "resolution", 16), "dataset.resolution = 16 disagrees with config.resolution = 8"),
])
def test_a_stored_config_that_cannot_rebuild_the_networks_is_one_line(tmp_path, caplog, damage, message):
    path, error = generate_from_damaged(tmp_path, caplog, damage)
    assert error.startswith(f"{path}: ") and message in error, error
    with pytest.raises(SnapshotError, match="stored networks cannot be rebuilt"):   # every reader, not one
        load_snapshot(path)


@pytest.mark.parametrize("damage, message", [
    (lambda state: state["config"]["G_kwargs"].update(bogus=1),
     "cannot be built (TypeError: Generator.__init__() got an unexpected keyword argument 'bogus')"),
    (lambda state: state["config"]["G_kwargs"]["synthesis_kwargs"].update(conv_clamp="x"),
     "cannot run (ValueError: could not convert string to float: 'x')"),
    # generate never uses D, yet the file is as damaged for it as for resume.
    (lambda state: state["config"]["D_kwargs"].update(architecture="zzz"),
     "cannot be built (ValueError: DiscriminatorBlock: architecture must be resnet or orig, got 'zzz')"),
])
def test_settings_our_networks_refuse_are_one_line_for_every_reader(tmp_path, caplog, damage, message):
    path, error = generate_from_damaged(tmp_path, caplog, damage)
    assert error == f"{path}: its stored network settings {message}", error
    for training_nets in (False, True):       # generate, serve and project; resume
        with pytest.raises(SnapshotError, match="its stored network settings cannot"):
            load_networks(path, training_nets=training_nets)


def test_files_that_are_not_torch_files(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(SnapshotError, match=r"not a corgigan snapshot \(not a torch file\).*corgigan train"):
        load_snapshot(text)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(SnapshotError, match=r"not a corgigan snapshot \(an empty file\)"):
        load_snapshot(empty)


def test_latest_snapshot_and_load_networks(tmp_path):
    cfg = tiny_config()
    assert latest_snapshot(tmp_path) is None
    with pytest.raises(SnapshotError, match="no snapshot"):
        load_networks(tmp_path)
    for nimg in (8, 1000, 96):
        save_snapshot(tmp_path / snapshot_name(nimg), fake_state(cfg, nimg=nimg))
    (tmp_path / "snapshot-notes.pt").write_text("not a snapshot name")
    assert latest_snapshot(tmp_path) == tmp_path / snapshot_name(1000)
    loaded = load_networks(tmp_path)
    G, info = build(loaded, "G_ema", "cpu"), loaded.info
    assert loaded.path == tmp_path / snapshot_name(1000) and loaded.source == "snapshot"
    assert info["nimg"] == 1000 and info["kimg"] == 1.0 and info["dataset_hash"] == "a" * 64
    assert not G.training and not any(p.requires_grad for p in G.parameters())
    want = fake_state(cfg)["G_ema"]
    for k, v in G.state_dict().items():
        assert torch.equal(v, want[k])
    img = G(torch.randn(2, G.z_dim), torch.zeros(2, 0), noise_mode="const")
    assert img.shape == (2, 3, 8, 8)


def test_rng_states_round_trip():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    saved = capture_rng()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(saved)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


# ---------------------------------------------------------------------------------------------------------
# The resume rules (loop.decide_start)

RUN = {"seed": 0, "augment": "ada", "augment_p": 0.0, "ada_target": 0.6, "mirror": False, "resume_from": ""}


def _start(run_dir: Path, cfg=None, run=None, data_hash="a" * 64, resume_from=None, allow=False):
    cfg = cfg or tiny_config()
    return decide_start(run_dir, configs.config_to_dict(cfg), run or RUN, data_hash, resume_from, allow)


def test_matching_snapshot_resumes(tmp_path):
    save_snapshot(tmp_path / snapshot_name(8), fake_state(tiny_config(), run=RUN))
    start = _start(tmp_path)
    assert start.mode == "resume" and start.state["progress"]["nimg"] == 8 and not start.stale
    # Another split of the same batch over processes is the same run.
    assert _start(tmp_path, cfg=tiny_config(batch_gpu=2)).mode == "resume"


@pytest.mark.parametrize("change, why", [
    ({"cfg": tiny_config(G_lr=0.001)}, "config.G_lr"),
    ({"run": dict(RUN, seed=1)}, "run.seed"),
    ({"data_hash": "b" * 64}, "dataset"),
])
def test_snapshot_of_another_run_starts_fresh(tmp_path, caplog, change, why):
    save_snapshot(tmp_path / snapshot_name(8), fake_state(tiny_config(), run=RUN))
    start = _start(tmp_path, **change)
    assert start.mode == "fresh" and start.state is None
    assert why in start.reason and why in caplog.text
    assert start.stale == [tmp_path / snapshot_name(8)]


def test_other_data_resumes_when_allowed(tmp_path):
    save_snapshot(tmp_path / snapshot_name(8), fake_state(tiny_config(), run=RUN))
    start = _start(tmp_path, data_hash="b" * 64, allow=True)
    assert start.mode == "resume" and "another dataset" in start.reason


def test_resume_from_rules(tmp_path):
    src = tmp_path / "pretrained" / snapshot_name(8)
    save_snapshot(src, fake_state(tiny_config(), data_hash="b" * 64))
    run_dir = tmp_path / "run"
    with pytest.raises(SnapshotError, match="no such snapshot"):
        _start(run_dir, resume_from=tmp_path / "missing.pt")
    with pytest.raises(SnapshotError, match="another dataset.*allow_other_data"):
        _start(run_dir, resume_from=src)
    start = _start(run_dir, resume_from=src.parent, allow=True)
    assert start.mode == "transfer" and start.state["progress"]["nimg"] == 8
    wider = dataclasses.replace(tiny_config(), G_kwargs={**tiny_config().G_kwargs, "z_dim": 32})
    with pytest.raises(SnapshotError, match="another network config.*z_dim"):
        _start(run_dir, cfg=wider, resume_from=src, allow=True)


def test_resume_from_a_file_the_loader_refuses_names_the_setting(tmp_path):
    run_dir = tmp_path / "run"
    (tmp_path / "nothing").mkdir()
    with pytest.raises(SnapshotError, match=r"^resume_from \S+nothing: no snapshot-\*\.pt in this folder"):
        _start(run_dir, resume_from=tmp_path / "nothing")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(SnapshotError, match=r"^resume_from \S+empty\.pt: not a corgigan snapshot"):
        _start(run_dir, resume_from=empty)
