"""A dataset's identity costs nothing: it comes from the zip's directory, and a resume reads no image."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corgigan.stylegan2 import data as data_mod
from corgigan.stylegan2.data import DatasetError, ZipDataset, dataset_hash, file_sha256
from corgigan.stylegan2.loop import Hooks, training_loop
from corgigan.stylegan2.snapshot import load_snapshot, save_snapshot, snapshot_name
from tests.helpers import LOOP_KW, png_bytes, tiny_config, write_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _repack(src: Path, dst: Path, compression: int, reverse: bool) -> Path:
    """The same members in another order and compression (so other bytes on disk)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        names = sorted(zin.namelist(), reverse=reverse)
        for name in names:
            zout.writestr(name, zin.read(name))
    return dst


def _spoil_member(path: Path, name: str) -> None:
    """Overwrite the start of one member's stored bytes in place; the central directory is untouched."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    assert info.compress_type == zipfile.ZIP_STORED
    with path.open("r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
        f.seek(info.header_offset + 30 + int(name_len) + int(extra_len))
        f.write(b"not a png at all")


@pytest.fixture
def fresh_process(monkeypatch):
    """Forget what this process already checked or hashed, as a new process would."""
    monkeypatch.setattr(data_mod, "_CHECKED", set())
    monkeypatch.setattr(data_mod, "_FILE_DIGESTS", {})


def test_identity_follows_the_images_not_the_file_bytes(tmp_path):
    path = write_dataset(tmp_path / "a.zip", n=4)
    ident = dataset_hash(path)
    assert ident.startswith("zip-") and len(ident) == 4 + 64
    assert ZipDataset(path).identity == ident
    # Repacked (deflated, other member order): other file bytes, the same images and labels.
    repacked = _repack(path, tmp_path / "b.zip", zipfile.ZIP_DEFLATED, reverse=True)
    assert file_sha256(repacked) != file_sha256(path)
    assert dataset_hash(repacked) == ident
    # One pixel, or the labels, change it.
    other = tmp_path / "c.zip"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(other, "w") as zout:
        for name in zin.namelist():
            raw = zin.read(name)
            if name == "00000/img00000003.png":
                arr = np.array(Image.open(io.BytesIO(raw)))
                arr[0, 0, 0] ^= 1
                raw = png_bytes(arr)
            zout.writestr(name, raw)
    assert dataset_hash(other) != ident
    labelled = write_dataset(tmp_path / "d.zip", n=4, meta=json.dumps({"labels": None}) + " ")
    assert dataset_hash(labelled) != ident


def test_identity_reads_no_image(tmp_path):
    path = write_dataset(tmp_path / "a.zip", n=4)
    before = dataset_hash(path)
    _spoil_member(path, "00000/img00000002.png")
    assert dataset_hash(path) == before   # the spoiled bytes were never read


def test_members_are_checked_once_per_process(tmp_path, fresh_process):
    path = write_dataset(tmp_path / "a.zip", n=4)
    ZipDataset(path)                                   # checks every header
    _spoil_member(path, "00000/img00000002.png")       # same directory, so the same identity
    ZipDataset(path)                                   # already checked in this process: no re-read
    data_mod._CHECKED.clear()                          # a new process checks again, and finds it
    with pytest.raises(DatasetError, match="img00000002.png: corrupt zip member"):
        ZipDataset(path)
    lazy = ZipDataset(path, check_members=False)       # what the train stage and a resume construct
    with pytest.raises(DatasetError, match="img00000002.png"):
        lazy.check_members()


def test_resume_reads_no_image_and_a_new_run_checks_them(tmp_path, fresh_process):
    data = write_dataset(tmp_path / "a.zip", n=6)
    cfg = tiny_config()
    last = training_loop(data, tmp_path / "run", cfg, kimg=0.008, snapshot_kimg=0.008, **LOOP_KW)
    assert load_snapshot(last)["dataset"]["hash"] == dataset_hash(data)
    _spoil_member(data, "00000/img00000004.png")   # the first image is read for its size; this one is not
    data_mod._CHECKED.clear()
    starts: list[dict] = []
    again = training_loop(data, tmp_path / "run", cfg, kimg=0.008, snapshot_kimg=0.008,
                          hooks=Hooks(on_start=starts.append), **LOOP_KW)
    assert again == last and starts[0]["resumed"]
    with pytest.raises(DatasetError, match="img00000004.png"):   # a run new to the data checks it first
        training_loop(data, tmp_path / "other", cfg, kimg=0.008, snapshot_kimg=0.008, **LOOP_KW)


def test_snapshot_with_the_old_file_hash_resumes_on_its_data_only(tmp_path, fresh_process, caplog):
    a, b = write_dataset(tmp_path / "a.zip", n=6, seed=0), write_dataset(tmp_path / "b.zip", n=6, seed=1)
    cfg = tiny_config()
    for zip_path, trained_on, resumed in ((a, a, True), (a, b, False)):
        run_dir = tmp_path / f"run-{trained_on.stem}"
        last = training_loop(trained_on, run_dir, cfg, kimg=0.008, snapshot_kimg=0.008, **LOOP_KW)
        state = load_snapshot(last)
        state["dataset"]["hash"] = file_sha256(trained_on)    # as snapshots recorded it before
        save_snapshot(last, state)
        data_mod._FILE_DIGESTS.clear()
        starts: list[dict] = []
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="corgigan.stylegan2"):
            newest = training_loop(zip_path, run_dir, cfg, kimg=0.016, snapshot_kimg=0.008,
                                   hooks=Hooks(on_start=starts.append), **LOOP_KW)
        assert "sha256 of the zip's bytes" in caplog.text   # said, not silent
        assert starts[0]["resumed"] is resumed and starts[0]["nimg"] == (8 if resumed else 0)
        if not resumed:
            assert "dataset: snapshot" in caplog.text
        assert newest.name == snapshot_name(16)
        # The cheap record from now on.
        assert load_snapshot(newest)["dataset"]["hash"] == dataset_hash(zip_path)
