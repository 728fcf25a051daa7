"""The training data: the dataset zip reader and the resumable, rank-aware stream sampler."""

from __future__ import annotations

import hashlib
import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from corgigan.stylegan2.data import (
    DatasetError,
    StreamSampler,
    ZipDataset,
    dataset_hash,
    file_sha256,
    make_loader,
)
from tests.helpers import png_bytes, write_dataset


def test_images_labels_and_mirror(tmp_path):
    path = write_dataset(tmp_path / "d.zip", n=5, res=8)
    plain = ZipDataset(path)
    assert (len(plain), plain.resolution, plain.num_channels, plain.label_dim) == (5, 8, 3, 0)
    img, label = plain[2]
    assert img.dtype == torch.uint8 and img.shape == (3, 8, 8) and label.shape == (0,)
    with zipfile.ZipFile(path) as zf:
        want = np.asarray(Image.open(io.BytesIO(zf.read(plain.names[2])))).transpose(2, 0, 1)
    assert np.array_equal(img.numpy(), want)
    mirrored = ZipDataset(path, mirror=True)
    assert len(mirrored) == 10
    assert torch.equal(mirrored[7][0], img.flip(-1))
    assert torch.equal(mirrored[2][0], img)


def test_class_labels_are_one_hot(tmp_path):
    names = [f"{0:05d}/img{i:08d}.png" for i in range(3)]
    path = write_dataset(tmp_path / "d.zip", n=3, labels=[[names[0], 2], [names[1], 0], [names[2], 1]])
    ds = ZipDataset(path)
    assert ds.label_dim == 3
    assert ds[0][1].tolist() == [0, 0, 1] and ds[1][1].tolist() == [1, 0, 0]


def test_grayscale(tmp_path):
    ds = ZipDataset(write_dataset(tmp_path / "g.zip", n=2, channels=1))
    assert ds.num_channels == 1 and ds[0][0].shape == (1, 8, 8)


@pytest.mark.parametrize("case, message", [
    ("missing", "not found"),
    ("not_zip", "not a zip"),
    ("empty", "no PNG images"),
    ("bad_json", "not valid JSON"),
    ("label_missing", "no label for"),
    ("not_square", "square"),
    ("broken_png", "cannot decode"),
])
def test_bad_zips_give_clear_errors(tmp_path, case, message):
    path = tmp_path / "d.zip"
    if case == "not_zip":
        path.write_bytes(b"hello")
    elif case == "empty":
        zipfile.ZipFile(path, "w").close()
    elif case == "bad_json":
        write_dataset(path, n=2, meta="{nope")
    elif case == "label_missing":
        write_dataset(path, n=2, labels=[["other.png", 1]])
    elif case == "not_square":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("a.png", png_bytes(np.zeros((8, 16, 3), np.uint8)))
    elif case == "broken_png":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("a.png", b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError, match=message):
        ZipDataset(path)


def test_image_of_another_size_is_named_before_any_is_read(tmp_path):
    # Checked on every member's header up front: a run stops at once, not when the sampler draws it.
    path = write_dataset(tmp_path / "d.zip", n=2, res=8)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("zzz.png", png_bytes(np.zeros((16, 16, 3), np.uint8)))
    with pytest.raises(DatasetError, match="zzz.png: 16x16 RGB differs from the first image"):
        ZipDataset(path)


def test_file_sha256_is_the_legacy_record_and_dataset_hash_is_not(tmp_path):
    # Snapshots recorded the file's sha256 before; the identity now comes from the zip's directory
    # (tests/test_dataset_identity.py).
    path = write_dataset(tmp_path / "d.zip")
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert dataset_hash(path) != file_sha256(path) and dataset_hash(path).startswith("zip-")


def _take(sampler: StreamSampler, n: int) -> list[int]:
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_stream_is_seeded_epochwise_permutation():
    a = _take(StreamSampler(10, seed=3, batch=5, batch_gpu=5), 30)
    assert a == _take(StreamSampler(10, seed=3, batch=5, batch_gpu=5), 30)
    assert a != _take(StreamSampler(10, seed=4, batch=5, batch_gpu=5), 30)
    for epoch in range(3):
        assert sorted(a[epoch * 10:(epoch + 1) * 10]) == list(range(10))
    assert a[:10] != a[10:20]


def test_stream_resumes_from_a_step_and_splits_over_ranks():
    full = _take(StreamSampler(7, seed=1, batch=4, batch_gpu=2), 40)   # 2 rounds per step
    assert _take(StreamSampler(7, seed=1, batch=4, batch_gpu=2, start_step=3), 8) == full[12:20]
    r0 = _take(StreamSampler(7, seed=1, batch=4, batch_gpu=2, rank=0, world_size=2), 20)
    r1 = _take(StreamSampler(7, seed=1, batch=4, batch_gpu=2, rank=1, world_size=2), 20)
    merged = [x for s in range(10) for x in r0[2 * s:2 * s + 2] + r1[2 * s:2 * s + 2]]
    assert merged == full[:40]
    with pytest.raises(ValueError, match="multiple"):
        StreamSampler(7, seed=1, batch=6, batch_gpu=4)


def test_loader_with_workers_matches_main_process(tmp_path):
    ds = ZipDataset(write_dataset(tmp_path / "d.zip", n=6), mirror=True)
    batches = []
    for workers in (0, 2):
        it = make_loader(ds, StreamSampler(len(ds), seed=0, batch=4, batch_gpu=4), workers)
        batches.append([next(it)[0] for _ in range(4)])
    for a, b in zip(*batches):
        assert torch.equal(a, b)
