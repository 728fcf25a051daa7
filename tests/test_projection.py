"""Projecting images into a tiny model and `corgigan project` (photos: test_photos.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from corgigan import cli, geometry
from corgigan.analysis import latents, sampling
from corgigan.detector import detection
from corgigan.errors import StageError
from corgigan.play import projection
from corgigan.stylegan2.data import ZipDataset
from corgigan.stylegan2.loop import training_loop
from tests.helpers import photo_bytes, tiny_config, write_dataset

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
RES = 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset zip, checkpoint folder) of a tiny 16-px model trained for a few steps."""
    root = tmp_path_factory.mktemp("projection")
    dataset = write_dataset(root / "data.zip", n=8, res=RES, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        training_loop(dataset, root / "run", tiny_config(resolution=RES), kimg=0.016, snapshot_kimg=0.016,
                      seed=0, augment="none", workers=0, device="cpu")
    finally:
        torch.set_num_threads(threads)
    return dataset, root / "run"


@pytest.fixture(scope="module")
def nets(trained: tuple[Path, Path]) -> tuple[torch.nn.Module, torch.nn.Module]:
    G, D, _ = sampling.load_with_discriminator(trained[1], torch.device("cpu"))
    assert D is not None
    return G, D


def dataset_images(dataset: Path, n: int = 4) -> torch.Tensor:
    data = ZipDataset(dataset)
    return torch.stack([data[i][0] for i in range(n)]).float() / 127.5 - 1    # [n, 3, RES, RES]


def mean_error(result: projection.Projection, key: str) -> float:
    return float(np.mean([e[key] for e in result.errors]))


def test_error_falls_with_steps_and_w_plus_fits_closer_than_w(trained, nets, one_thread) -> None:
    G, D = nets
    target = dataset_images(trained[0])
    table = {}
    for space in projection.SPACES:
        for steps in (5, 50, 200):
            result = projection.project(G, target, D, projection.ProjectConfig(steps=steps, space=space))
            table[space, steps] = (mean_error(result, "mse"), mean_error(result, "d_features"))
            assert len(result.history) == steps and result.ws.shape == (4, G.num_ws, G.w_dim)
        # The loss of one run falls along its steps (its first steps carry latent noise).
        assert result.history[-1]["loss"] < 0.5 * result.history[0]["loss"]
    log.info("dataset images, mean (mse, D features) by space and steps: %s", table)
    for space in projection.SPACES:
        assert table[space, 200][1] < table[space, 50][1] < table[space, 5][1]
        assert table[space, 200][0] < table[space, 5][0]
    # W+ has num_ws times the freedom: with enough steps it reproduces the images more closely.
    assert table["w+", 200][0] < table["w", 200][0]
    assert table["w+", 200][1] < table["w", 200][1]


def test_an_image_of_the_model_is_found_again(nets, one_thread) -> None:
    G, D = nets
    target = G.synthesis(latents.map_seeds(G, [3], 1.0), noise_mode="const")
    result = projection.project(G, target, D, projection.ProjectConfig(steps=100, space="w"))
    assert result.errors[0]["mse"] < 1e-3 and result.errors[0]["psnr"] > 30


def test_projection_is_deterministic_and_records_frames(nets, one_thread) -> None:
    G, D = nets
    target = torch.rand(1, 3, RES, RES) * 2 - 1
    seen = []
    cfg = projection.ProjectConfig(steps=12, seed=5)
    a = projection.project(G, target, D, cfg, record=4, on_step=lambda step, ws: seen.append(step))
    b = projection.project(G, target, D, cfg)
    assert torch.equal(a.ws, b.ws)
    assert seen == list(range(12))
    assert a.frames is not None and a.frames.shape == (4, 1, RES, RES, 3) and a.frames.dtype == np.uint8
    with pytest.raises(ValueError, match="target must be"):
        projection.project(G, target[:, :, :8], D, cfg)
    with pytest.raises(ValueError, match="space"):
        projection.project(G, target, D, projection.ProjectConfig(space="z"))


def test_features_come_from_every_block_and_leave_d_unchanged(nets) -> None:
    _, D = nets
    img = torch.rand(2, 3, RES, RES) * 2 - 1
    logits = D(img, None).clone()
    feats = projection.discriminator_features(D, img)
    assert [f.shape[-1] for f in feats] == [b.resolution // 2 for b in D.blocks]
    assert torch.equal(D(img, None), logits)
    d_self = projection.feature_distance(feats, feats)
    d_other = projection.feature_distance(feats, projection.discriminator_features(D, img.flip(0)))
    assert torch.all(d_self == 0) and torch.all(d_other > 0) and torch.all(d_other <= 4)


def test_lpips_from_weight_files(tmp_path, nets, one_thread) -> None:
    from torchvision.models import vgg

    torch.manual_seed(0)
    # Only the convolutional part is needed; torchvision's vgg16 file holds it under features.*
    features = vgg.make_layers(vgg.cfgs["D"])
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "vgg.pth")
    channels = (64, 128, 256, 512, 512)
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(channels)},
               tmp_path / "lin.pth")
    lp = projection.LpipsVGG.from_files(tmp_path / "vgg.pth", tmp_path / "lin.pth")
    a, b = torch.rand(2, 3, RES, RES) * 2 - 1, torch.rand(2, 3, RES, RES) * 2 - 1
    assert torch.allclose(lp(a, a), torch.zeros(2)) and torch.all(lp(a, b) > 0)
    G, D = nets
    result = projection.project(G, a[:1], D, projection.ProjectConfig(steps=3), lpips=lp)
    assert "lpips" in result.history[0] and "lpips" in result.errors[0]
    (tmp_path / "bad.pth").write_bytes(b"not torch")
    with pytest.raises(StageError, match="weights_only"):
        projection.LpipsVGG.from_files(tmp_path / "bad.pth")
    with pytest.raises(StageError, match="linear weights"):
        projection.LpipsVGG.from_files(tmp_path / "vgg.pth", tmp_path / "vgg.pth")


def test_cli_project_writes_latent_video_and_errors(trained, tmp_path, one_thread) -> None:
    photo = tmp_path / "dog.jpg"
    photo.write_bytes(photo_bytes(48, 32, "JPEG"))
    out = tmp_path / "out"
    argv = ["--params", str(tmp_path / "none.yaml"), "project", str(photo), "--checkpoint", str(trained[1]),
            "--out", str(out), "--steps", "6", "--space", "w"]
    assert cli.main(argv) == 0
    folder = out / "dog"
    assert Image.open(folder / "target.png").size == (RES, RES)
    assert Image.open(folder / "projected.png").size == (RES, RES)
    with np.load(folder / "projected_w.npz") as z:
        ws, space = z["ws"], str(z["space"])
    G, _ = sampling.load(trained[1], torch.device("cpu"))
    assert ws.shape == (G.num_ws, G.w_dim) and space == "w" and np.allclose(ws, ws[:1])   # W: one w
    assert np.array_equal(sampling.synthesize_w(G, torch.from_numpy(ws)[None])[0],
                          np.asarray(Image.open(folder / "projected.png")))
    assert any((folder / f"projection.{ext}").is_file() for ext in ("mp4", "gif"))
    report = json.loads((folder / "errors.json").read_text())
    assert len(report["history"]) == 6 and report["mse"] > 0 and report["crop"]["mode"] == "centre"
    assert report["crop"]["crop"] == [8, 0, 40, 32]
    # A file that is no photo: one line, rc 2.
    (tmp_path / "notes.txt").write_text("no photo")
    assert cli.main([*argv[:3], str(tmp_path / "notes.txt"), *argv[4:]]) == 2
    assert cli.main([*argv[:3], str(tmp_path / "absent.png"), *argv[4:]]) == 2
    assert cli.main([*argv, "--lpips-lin", str(photo)]) == 2


def test_cli_project_crops_around_the_detected_dog_and_checks_the_detector(trained, tmp_path, one_thread,
                                                                         caplog) -> None:
    # An untrained one-class yolo11n at conf 0 finds boxes anywhere: enough to run the real detector path.
    detection.setup_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolo11n.yaml", nc=1, verbose=False)
    model.names = {0: "dog"}
    folder = tmp_path / "detector"
    detection.save_detector(model.eval(), folder, {"kind": "untrained", "dog_class": 0})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["detect"].update(conf=0.0, imgsz=64, device="cpu")
    params["filter"]["min_crop"] = 8
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    photo = tmp_path / "dog.png"
    photo.write_bytes(photo_bytes(48, 32))
    argv = ["--params", str(tmp_path / "params.yaml"), "project", str(photo), "--checkpoint", str(trained[1]),
            "--out", str(tmp_path / "out"), "--steps", "2", "--no-video", "--detector", str(folder)]
    assert cli.main(argv) == 0
    crop = json.loads((tmp_path / "out" / "dog" / "errors.json").read_text())["crop"]
    assert crop["mode"] == "dog"
    assert crop["crop"] == list(geometry.crop_window(48, 32, tuple(crop["box"]), 8).box)
    # A dog class the weights lack (meta.json of another detector): refused in one line, as `detect` does.
    meta = json.loads((folder / detection.META_FILE).read_text())
    (folder / detection.META_FILE).write_text(json.dumps({**meta, "dog_class": 3}))
    caplog.clear()
    assert cli.main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "dog_class 3 is not a class" in errors[0], errors
