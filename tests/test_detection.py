"""The detector and detect stages with the real ultralytics, on CPU, with a tiny detector trained once."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from corgigan import tables
from corgigan.data.scenes import draw_scene
from corgigan.detector import detection, yolo_data
from corgigan.errors import StageError
from corgigan.images import ShardWriter, encode_png
from corgigan.params import DetectorParams, DetectParams, ImagesParams
from corgigan.stages import detect, detector

ROOT = Path(__file__).resolve().parents[1]

TINY = DetectorParams(
    kind="train", pretrained_weights="", dog_class=0, labels="synthetic", stanford_dogs_path="",
    model="yolo11n.yaml", seed=3, num_images=24, epochs=1, imgsz=96, batch=8, val_fraction=0.25,
    device="cpu", workers=0,
)
# conf near zero: an hour-old detector finds little, but its boxes still exercise every column.
DETECT = DetectParams(conf=0.001, iou=0.6, imgsz=96, batch=3, device="cpu")
IMAGES = ImagesParams(max_pixels=10_000_000)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same tiny detector trained twice from scratch, into two folders."""
    a, b = tmp_path_factory.mktemp("det-a"), tmp_path_factory.mktemp("det-b")
    detector.run(TINY, a)
    detector.run(TINY, b)
    return a, b


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scrape output: five drawn scenes (PNG and JPEG, various sizes) and one broken file, 2 shards."""
    root = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(11)
    with ShardWriter(root / "shards", shard_size=4) as w:
        for i, (wd, ht, dogs) in enumerate([(160, 120, 1), (120, 200, 1), (200, 200, 2), (150, 90, 0),
                                            (130, 130, 1)]):
            img, _ = draw_scene(rng, wd, ht, dogs)
            if i % 2:
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=90)
                w.add(f"{i:016x}", buf.getvalue(), ".jpg")
            else:
                w.add(f"{i:016x}", encode_png(img), ".png")
        w.add("f" * 16, b"not an image at all", ".jpg")
    return root


def test_training_is_reproducible_to_the_byte(tiny: tuple[Path, Path]) -> None:
    a, b = tiny
    assert sha(a / detection.WEIGHTS_FILE) == sha(b / detection.WEIGHTS_FILE)
    assert (a / detection.META_FILE).read_bytes() == (b / detection.META_FILE).read_bytes()
    meta = json.loads((a / detection.META_FILE).read_text())
    assert meta["names"] == {"0": "dog"} and meta["dog_class"] == 0
    assert 0.0 <= meta["map50"] <= 1.0
    assert meta["num_train"] + meta["num_val"] == TINY.num_images and meta["num_val"] > 0
    assert meta["weights_sha256"] == sha(a / detection.WEIGHTS_FILE)


def test_saved_detector_rebuilds_and_resaves_identically(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model = detection.build_model(tiny[0])
    detection.save_detector(model, tmp_path, {"kind": "train", "dog_class": 0})
    assert sha(tmp_path / detection.WEIGHTS_FILE) == sha(tiny[0] / detection.WEIGHTS_FILE)
    # The file is plain tensors and containers: it loads without unpickling code.
    ckpt = torch.load(tiny[0] / detection.WEIGHTS_FILE, weights_only=True)
    assert set(ckpt) == {"format_version", "yaml", "names", "state_dict"}


def test_pretrained_import(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    # An ultralytics-format weight file (whole pickled module, as ultralytics writes them).
    weights = tmp_path / "local.pt"
    torch.save({"model": detection.build_model(tiny[0]), "train_args": {"task": "detect"}}, weights)
    out = tmp_path / "out"
    detector.run(dataclasses.replace(TINY, kind="pretrained", pretrained_weights=str(weights)), out)
    meta = json.loads((out / detection.META_FILE).read_text())
    assert meta["kind"] == "pretrained" and meta["dog_class"] == 0 and meta["map50"] is None
    assert sha(out / detection.WEIGHTS_FILE) == sha(tiny[0] / detection.WEIGHTS_FILE)
    with pytest.raises(StageError, match="not a class"):
        detector.run(dataclasses.replace(TINY, kind="pretrained", pretrained_weights=str(weights),
                                         dog_class=16), tmp_path / "bad")


def test_pretrained_missing_file_says_where_and_downloads_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "weights" / "yolo11n.pt"
    with pytest.raises(StageError, match="nothing is downloaded") as e:
        detector.run(dataclasses.replace(TINY, kind="pretrained", pretrained_weights=str(missing)), tmp_path)
    assert str(missing) in str(e.value)
    assert not missing.exists() and not (tmp_path / detection.WEIGHTS_FILE).exists()


def test_detect_writes_sorted_in_bounds_boxes_deterministically(
        tiny: tuple[Path, Path], raw: Path, tmp_path: Path) -> None:
    out1, out2 = tmp_path / "a.parquet", tmp_path / "b.parquet"
    detect.run(DETECT, IMAGES, raw, tiny[0], out1)
    detect.run(DETECT, IMAGES, raw, tiny[0], out2)
    assert out1.read_bytes() == out2.read_bytes()
    df = tables.read_table("detections", out1)
    assert len(df) > 0
    assert "f" * 16 not in set(df.image_id)        # the broken file is skipped, not fatal
    shapes = [(160, 120), (120, 200), (200, 200), (150, 90), (130, 130)]
    sizes = {f"{i:016x}": s for i, s in enumerate(shapes)}
    assert set(df.image_id) <= set(sizes)
    w = df.image_id.map(lambda k: sizes[k][0])
    h = df.image_id.map(lambda k: sizes[k][1])
    assert (df.x0 >= 0).all() and (df.y0 >= 0).all() and (df.x1 <= w).all() and (df.y1 <= h).all()
    assert (df.x0 <= df.x1).all() and (df.y0 <= df.y1).all()
    assert df.confidence.between(DETECT.conf, 1).all() and (df.class_id == 0).all()
    key = pd.DataFrame({"id": df.image_id, "neg": -df.confidence})
    assert key.equals(key.sort_values(["id", "neg"], kind="stable").reset_index(drop=True))


def test_detect_without_detector_or_shards_is_a_stage_error(raw: Path, tmp_path: Path) -> None:
    with pytest.raises(StageError, match="corgigan detector"):
        detect.run(DETECT, IMAGES, raw, tmp_path / "nothing", tmp_path / "d.parquet")
    with pytest.raises(StageError, match="corgigan scrape"):
        detect.run(DETECT, IMAGES, tmp_path / "noraw", tmp_path / "nothing", tmp_path / "d.parquet")


# ---------------------------------------------------------------- files that must not run code when read


class _OpenMarker:
    """Unpickling this with plain pickle runs code: it opens (creates) `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.marker), "w")


def _touching_yaml(marker: Path) -> dict[str, Any]:
    """yolo11n's model yaml whose activation, eval()ed by ultralytics when it builds the model, runs code."""
    from ultralytics.nn.tasks import DetectionModel

    cfg = copy.deepcopy(DetectionModel("yolo11n.yaml", nc=1, verbose=False).yaml)
    cfg["activation"] = f"__import__('pathlib').Path({str(marker)!r}).touch() or nn.SiLU()"
    return cfg


class _CallsDetectionModel:
    """Pickles as a call of DetectionModel(cfg): an allowed class, but calling it runs its __init__.

    `through_torch`: the call goes through torch._tensor._rebuild_from_type_v2, one of torch's own
    weights_only globals, which calls its first argument.
    """

    def __init__(self, cfg: dict[str, Any], through_torch: bool = False) -> None:
        self.cfg, self.through_torch = cfg, through_torch

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        from ultralytics.nn.tasks import DetectionModel

        if self.through_torch:
            return torch._tensor._rebuild_from_type_v2, (DetectionModel, torch.Tensor, (self.cfg,), {})
        return DetectionModel, (self.cfg,)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A detector folder as the detector stage writes it, of an untrained one-class yolo11n (no training)."""
    detection.setup_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    out = tmp_path_factory.mktemp("untrained")
    model = DetectionModel("yolo11n.yaml", nc=1, verbose=False)
    model.names = {0: "dog"}
    detection.save_detector(model.eval(), out, {"kind": "train", "dog_class": 0})
    return out


def test_pretrained_in_ultralytics_own_format_is_accepted(tmp_path: Path) -> None:
    detection.setup_ultralytics()
    from ultralytics import YOLO

    weights = tmp_path / "yolo11n.pt"
    YOLO("yolo11n.yaml").save(weights)      # ultralytics' own writer: dates, half weights, train args
    out = tmp_path / "out"
    detector.run(dataclasses.replace(TINY, kind="pretrained", pretrained_weights=str(weights), dog_class=16),
                 out)
    assert json.loads((out / detection.META_FILE).read_text())["dog_class"] == 16
    model = detection.build_model(out)
    assert len(model.names) == 80
    want = torch.load(weights, weights_only=False)["model"].float().state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("payload", ["global", "called_class", "called_after_use", "passed_on", "model_yaml",
                                     "layer"])
def test_pretrained_weights_with_a_payload_are_refused_without_running_it(
        tmp_path: Path, payload: str) -> None:
    detection.setup_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    marker = tmp_path / "ran"
    if payload == "global":
        ckpt: dict[str, Any] = {"model": _OpenMarker(marker), "train_args": {"task": "detect"}}
        match = r"refused.*open.*Nothing from it ran"
    elif payload == "called_class":
        ckpt = {"model": _CallsDetectionModel(_touching_yaml(marker))}
        match = r"refused.*DetectionModel \(called"
    elif payload == "called_after_use":     # the class stored properly once, then called (pickle memo)
        ckpt = {"model": DetectionModel("yolo11n.yaml", nc=1, verbose=False),
                "ema": _CallsDetectionModel(_touching_yaml(marker))}
        match = r"refused.*DetectionModel \(called"
    elif payload == "passed_on":
        ckpt = {"model": _CallsDetectionModel(_touching_yaml(marker), through_torch=True)}
        match = r"refused.*DetectionModel \(called or passed on"
    else:
        model = DetectionModel("yolo11n.yaml", nc=1, verbose=False)
        if payload == "model_yaml":
            model.yaml = _touching_yaml(marker)
            match = r"activation .*is not a torch.nn module"
        else:       # a layer named after a function of ultralytics.nn.tasks (its own unrestricted loader)
            model.yaml = copy.deepcopy(model.yaml)
            model.yaml["backbone"][0] = [-1, 1, "torch_safe_load", [str(tmp_path / "other.pt")]]
            match = r"names 'torch_safe_load', which is not a layer"
        ckpt = {"model": model, "train_args": {"task": "detect"}}
    weights = tmp_path / "evil.pt"
    torch.save(ckpt, weights)
    with pytest.raises(StageError, match=match):
        detector.run(dataclasses.replace(TINY, kind="pretrained", pretrained_weights=str(weights)),
                     tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out" / detection.WEIGHTS_FILE).exists()


def test_pretrained_weights_damaged_or_foreign(tmp_path: Path) -> None:
    detection.setup_ultralytics()
    from ultralytics import YOLO

    weights = tmp_path / "yolo11n.pt"
    YOLO("yolo11n.yaml").save(weights)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    params = dataclasses.replace(TINY, kind="pretrained", pretrained_weights=str(weights))
    with pytest.raises(StageError, match=r"not a loadable ultralytics weight file \(its zip archive cannot"):
        detector.run(params, tmp_path / "out")
    weights.write_text("not weights")
    with pytest.raises(StageError, match=r"not a loadable ultralytics weight file \(not a torch.save zip"):
        detector.run(params, tmp_path / "out")
    torch.save({"weights": torch.zeros(2)}, weights)
    with pytest.raises(StageError, match=r"not a loadable ultralytics weight file \(it holds no model"):
        detector.run(params, tmp_path / "out")


def _break_detector(folder: Path, case: str, marker: Path) -> None:
    weights, meta = folder / detection.WEIGHTS_FILE, folder / detection.META_FILE
    if case == "payload":
        torch.save({"format_version": detection.FORMAT_VERSION, "names": {0: "dog"}, "yaml": {},
                    "state_dict": {}, "extra": _OpenMarker(marker)}, weights)
    elif case == "model_yaml":       # plain data (weights_only loads it), but its yaml runs code when built
        ckpt = torch.load(weights, weights_only=True)
        ckpt["yaml"] = _touching_yaml(marker)
        torch.save(ckpt, weights)
    elif case == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif case == "no_dog_class":
        m = json.loads(meta.read_text())
        del m["dog_class"]
        meta.write_text(json.dumps(m))
    elif case == "meta_not_json":
        meta.write_text("{not json")


@pytest.mark.parametrize("case, message", [
    ("payload", "not a corgigan detector (it refers to"),
    ("model_yaml", "activation"),
    ("truncated", "not a corgigan detector (its archive cannot be read"),
    ("no_dog_class", "no dog_class"),
])
def test_detect_cli_bad_detector_is_one_clear_line(untrained: Path, raw: Path, tmp_path: Path,
                                                   cli_env: dict[str, str], case: str, message: str) -> None:
    folder = tmp_path / "detector"
    shutil.copytree(untrained, folder)
    marker = tmp_path / "ran"
    _break_detector(folder, case, marker)
    out = tmp_path / "d.parquet"
    proc = subprocess.run([sys.executable, "-m", "corgigan.cli", "--params", str(ROOT / "params.yaml"),
                           "detect", "--raw", str(raw), "--detector", str(folder), "--out", str(out)],
                          capture_output=True, text=True, env=cli_env, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and message in errors[0] and "corgigan detector" in errors[0], proc.stderr
    assert "weights_only=False" not in proc.stderr
    assert not marker.exists() and not out.exists()


def test_detect_meta_not_json_is_a_stage_error(untrained: Path, raw: Path, tmp_path: Path) -> None:
    folder = tmp_path / "detector"
    shutil.copytree(untrained, folder)
    _break_detector(folder, "meta_not_json", tmp_path / "ran")
    with pytest.raises(StageError, match=r"meta.json: not JSON.*corgigan detector"):
        detect.run(DETECT, IMAGES, raw, folder, tmp_path / "d.parquet")


def test_dog_detector_settings_batches_and_class_check(untrained: Path, tmp_path: Path) -> None:
    # An untrained detector at conf 0 finds boxes anywhere: enough to compare batched and single predicts.
    dogs = detection.DogDetector.load(untrained, conf=0.0, iou=0.6, imgsz=64, batch=2, device="auto")
    assert (dogs.dog_class, dogs.conf, dogs.iou, dogs.imgsz, dogs.batch) == (0, 0.0, 0.6, 64, 2)
    assert dogs.device == ("cuda:0" if torch.cuda.is_available() else "cpu")    # resolved, as detect does
    rng = np.random.default_rng(5)
    photos = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(5)]
    found = dogs.predict(photos)                         # three calls: 2 + 2 + 1 images
    assert len(found) == 5 and any(found)
    assert found == detection.predict(dogs.yolo, photos, classes=[0], conf=0.0, iou=0.6, imgsz=64,
                                      device=dogs.device)
    folder = tmp_path / "detector"
    shutil.copytree(untrained, folder)
    meta = json.loads((folder / detection.META_FILE).read_text())
    (folder / detection.META_FILE).write_text(json.dumps({**meta, "dog_class": 1}))
    with pytest.raises(StageError, match=r"dog_class 1 is not a class of detector.pt.*corgigan detector"):
        detection.DogDetector.load(folder)


def _voc(path: Path, width: int, height: int, boxes: list[tuple[int, int, int, int]]) -> None:
    objs = "".join(
        f"<object><name>Pembroke</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox>"
        f"</object>" for b in boxes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><folder>02113023</folder><filename>{path.name}</filename><source>"
                    f"<database>ImageNet database</database></source><size><width>{width}</width>"
                    f"<height>{height}</height><depth>3</depth></size><segment>0</segment>{objs}"
                    f"</annotation>")


def _jpeg(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (120, 90, 60)).save(path, format="JPEG")


def test_stanford_dogs_reader(tmp_path: Path) -> None:
    root = tmp_path / "stanford"
    _voc(root / "Annotation/n02113023-Pembroke/n02113023_1", 200, 150, [(10, 20, 110, 140)])
    _jpeg(root / "Images/n02113023-Pembroke/n02113023_1.jpg", 200, 150)
    _voc(root / "Annotation/n02113186-Cardigan/n02113186_7", 100, 120, [(0, 0, 50, 60), (40, 50, 100, 120)])
    _jpeg(root / "Images/n02113186-Cardigan/n02113186_7.jpg", 100, 120)
    _voc(root / "Annotation/n02113186-Cardigan/n02113186_8", 100, 120, [(1, 1, 9, 9)])   # no image
    _voc(root / "Annotation/n02113186-Cardigan/n02113186_9", 640, 480, [(1, 1, 9, 9)])   # wrong size
    _jpeg(root / "Images/n02113186-Cardigan/n02113186_9.jpg", 100, 120)

    assert yolo_data.read_voc_boxes(root / "Annotation/n02113186-Cardigan/n02113186_7") == (
        100, 120, [(0.0, 0.0, 50.0, 60.0), (40.0, 50.0, 100.0, 120.0)])
    samples = list(yolo_data.stanford_dogs_samples(root))
    assert [s.name for s in samples] == ["n02113023-Pembroke__n02113023_1", "n02113186-Cardigan__n02113186_7"]
    assert samples[1].boxes == ((0.0, 0.0, 50.0, 60.0), (40.0, 50.0, 100.0, 120.0))
    assert yolo_data.yolo_label_lines(samples[0].boxes, 200, 150) == ["0 0.300000 0.533333 0.500000 0.800000"]

    copies = [dataclasses.replace(samples[1], name=f"copy{i}") for i in range(10)]
    data_yaml = yolo_data.write_yolo_dataset(copies, tmp_path / "ds", val_fraction=0.5)
    labels = sorted((tmp_path / "ds" / "labels").rglob("*.txt"))
    assert sorted(p.stem for p in labels) == sorted(s.name for s in copies)
    assert {p.parent.name for p in labels} == {"train", "val"}
    assert labels[0].read_text() == ("0 0.250000 0.250000 0.500000 0.500000\n"
                                     "0 0.700000 0.708333 0.600000 0.583333\n")
    assert "names" in data_yaml.read_text()


def test_stanford_dogs_bad_annotation_and_missing_folder(tmp_path: Path) -> None:
    bad = tmp_path / "a.xml"
    bad.write_text("<annotation><object><name>x</name></object></annotation>")
    with pytest.raises(ValueError, match="no <size>"):
        yolo_data.read_voc_boxes(bad)
    bad.write_text("<annotation><size><width>3</width><height>3</height></size><object><bndbox><xmin>a"
                   "</xmin></bndbox></object></annotation>")
    with pytest.raises(ValueError):
        yolo_data.read_voc_boxes(bad)
    with pytest.raises(StageError, match="Annotation"):
        list(yolo_data.stanford_dogs_samples(tmp_path / "absent"))


def test_yolo_dataset_needs_both_splits(tmp_path: Path) -> None:
    s = yolo_data.Sample("only", encode_png(Image.new("RGB", (8, 8))), ".png", 8, 8, ())
    with pytest.raises(StageError, match="both splits"):
        yolo_data.write_yolo_dataset([s], tmp_path)


def test_real_photos_with_a_detector_trained_on_drawings_warn(tmp_path: Path, caplog) -> None:
    posts = tmp_path / "posts.parquet"
    row = {name: None for name in tables.SCHEMAS["posts"].names}
    for source, warns in (("synthetic", False), ("folder", True)):
        tables.write_table("posts", [{**row, "image_id": "a", "source": source, "decode_status": "ok"}],
                           posts)
        caplog.clear()
        assert detect.warn_if_trained_on_drawings({"kind": "train", "labels": "synthetic"}, posts) is warns
        assert ("trained on drawn scenes" in caplog.text) is warns
    assert not detect.warn_if_trained_on_drawings({"kind": "train", "labels": "stanford_dogs"}, posts)
    assert not detect.warn_if_trained_on_drawings({"kind": "pretrained"}, posts)
