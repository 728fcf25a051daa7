"""FID/KID through clean-fid: zero against itself, growing with a shift; the missing-weights error."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corgigan.analysis import fid
from corgigan.errors import StageError

CPU = torch.device("cpu")


def _images(seed: int, n: int = 120, shift: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(120, 40, size=(n, 32, 32, 3)) + shift
    return np.clip(base, 0, 255).astype(np.uint8)


def test_fid_and_kid_are_zero_against_itself_and_grow_with_a_shift() -> None:
    extract = fid.build_extractor("pixels", "unused", CPU)
    a = extract(_images(0))
    same = fid.fid_from_features(a, a)
    assert abs(same) < 1e-6
    fids = [fid.fid_from_features(a, extract(_images(1, shift=s))) for s in (0, 20, 60)]
    kids = [fid.kid_from_features(a, extract(_images(1, shift=s)), seed=0) for s in (0, 20, 60)]
    assert fids[0] < fids[1] < fids[2]
    assert kids[0] < kids[1] < kids[2]
    assert abs(fid.kid_from_features(a, a, seed=0)) < 1e-3


def test_kid_is_reproducible_and_leaves_numpy_state_alone() -> None:
    extract = fid.build_extractor("pixels", "unused", CPU)
    a, b = extract(_images(0)), extract(_images(1, shift=10))
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    assert fid.kid_from_features(a, b, seed=5) == fid.kid_from_features(a, b, seed=5)
    assert (np.random.get_state()[1] == before).all()


def test_missing_inception_weights_say_where_to_put_them(tmp_path: Path) -> None:
    path = tmp_path / fid.INCEPTION_FILE
    with pytest.raises(StageError, match=f"copy it to {path}"):
        fid.build_extractor("inception", path, CPU)


def test_inception_weights_are_loaded_from_the_configured_path(tmp_path: Path) -> None:
    """The configured file is what gets loaded (a small TorchScript module with the same interface)."""

    class Layers(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = Layers()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x)

    path = tmp_path / fid.INCEPTION_FILE
    torch.jit.script(Net()).save(str(path))
    extract = fid.build_extractor("inception", path, CPU)
    feats = extract(_images(0, n=3))
    assert feats.shape == (3, 2048)


def test_dataset_features_are_cached_by_hash(tmp_path: Path) -> None:
    zpath = tmp_path / "d.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for i, img in enumerate(_images(0, n=10)):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            zf.writestr(f"00000/img{i:08d}.png", buf.getvalue())
        zf.writestr("dataset.json", '{"labels": null}')
    extract = fid.build_extractor("pixels", "unused", CPU)
    feats = fid.dataset_features(zpath, "ab" * 32, extract, tmp_path / "cache", batch=4)
    assert feats.shape == (10, 3 * fid.PIXEL_SIDE**2)
    cached = list((tmp_path / "cache").iterdir())
    assert [p.name for p in cached] == ["abababababababab-pixels.npy"]
    zpath.unlink()   # a second call must not need the zip
    again = fid.dataset_features(zpath, "ab" * 32, extract, tmp_path / "cache", batch=4)
    assert np.array_equal(feats, again)
