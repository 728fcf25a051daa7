"""The detector and detect stages with the real ultralytics, on CPU, with a tiny detector trained once."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from corgigan import detection, tables
from corgigan.errors import StageError
from corgigan.images import ShardWriter, encode_png
from corgigan.params import DetectorParams, DetectParams, ImagesParams
from corgigan.sources.synthetic import draw_scene
from corgigan.stages import detect, detector

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

    assert detection.read_voc_boxes(root / "Annotation/n02113186-Cardigan/n02113186_7") == (
        100, 120, [(0.0, 0.0, 50.0, 60.0), (40.0, 50.0, 100.0, 120.0)])
    samples = list(detection.stanford_dogs_samples(root))
    assert [s.name for s in samples] == ["n02113023-Pembroke__n02113023_1", "n02113186-Cardigan__n02113186_7"]
    assert samples[1].boxes == ((0.0, 0.0, 50.0, 60.0), (40.0, 50.0, 100.0, 120.0))
    assert detection.yolo_label_lines(samples[0].boxes, 200, 150) == ["0 0.300000 0.533333 0.500000 0.800000"]

    copies = [dataclasses.replace(samples[1], name=f"copy{i}") for i in range(10)]
    data_yaml = detection.write_yolo_dataset(copies, tmp_path / "ds", val_fraction=0.5)
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
        detection.read_voc_boxes(bad)
    bad.write_text("<annotation><size><width>3</width><height>3</height></size><object><bndbox><xmin>a"
                   "</xmin></bndbox></object></annotation>")
    with pytest.raises(ValueError):
        detection.read_voc_boxes(bad)
    with pytest.raises(StageError, match="Annotation"):
        list(detection.stanford_dogs_samples(tmp_path / "absent"))


def test_yolo_dataset_needs_both_splits(tmp_path: Path) -> None:
    s = detection.Sample("only", encode_png(Image.new("RGB", (8, 8))), ".png", 8, 8, ())
    with pytest.raises(StageError, match="both splits"):
        detection.write_yolo_dataset([s], tmp_path)
