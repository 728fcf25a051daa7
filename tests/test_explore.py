"""explore stage, labelling and `corgigan generate --what edit`, on a tiny 16-px generator.

The stage tests use a stand-in detector (a box around the image's bright mass, so size and position
change smoothly with w) to check the whole path quickly; one test runs the real ultralytics path with an
untrained detector. The pipeline test (tests/test_pipeline_dvc.py) runs the stage with the trained one.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corgigan import cli
from corgigan.analysis import attributes, latents, sampling
from corgigan.analysis.directions import direction_sigmas, edit_ws, read_directions
from corgigan.detector import detection
from corgigan.errors import StageError
from corgigan.params import DetectParams, ExploreParams
from corgigan.stages import explore
from corgigan.stylegan2.snapshot import save_snapshot, snapshot_name
from tests.helpers import fake_state, tiny_config

RES = 16
PARAMS = ExploreParams(seed=0, truncation_psi=1.0, layers="all", num_components=3, pca_samples=400,
                       num_labelled=160, share=0.3, holdout=0.3, check_seeds=6, strip_seeds=3, strip_steps=5,
                       max_sigma=2.0, device="cpu")
DETECT = DetectParams(conf=0.25, iou=0.45, imgsz=64, batch=16, device="cpu")
LABELLED = {"dog_size", "dog_x", "dog_y", "confidence", "brightness", "saturation"}   # num_dogs is constant


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding one snapshot of a freshly initialised 16-px generator."""
    run = tmp_path_factory.mktemp("explore") / "run"
    run.mkdir()
    save_snapshot(run / snapshot_name(8), fake_state(tiny_config(resolution=RES)))
    return run


def bright_mass_boxes(yolo: object, images: list[Image.Image], **_: object
                      ) -> list[list[detection.Detection]]:
    """One 'dog' per image: a box of +-1.5 standard deviations around the centroid of its brightness."""
    out = []
    for img in images:
        a = np.asarray(img, np.float64).mean(axis=2) ** 2
        h, w = a.shape
        ys, xs = np.mgrid[0:h, 0:w] + 0.5
        m = a / a.sum()
        cx, cy = (m * xs).sum(), (m * ys).sum()
        sx, sy = np.sqrt((m * (xs - cx) ** 2).sum()), np.sqrt((m * (ys - cy) ** 2).sum())
        out.append([detection.Detection(cx - 1.5 * sx, cy - 1.5 * sy, cx + 1.5 * sx, cy + 1.5 * sy,
                                        float(np.asarray(img).mean() / 255), 0)])
    return out


@pytest.fixture
def fake_detector(monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    monkeypatch.setattr(attributes.detection, "predict", bright_mass_boxes)
    monkeypatch.setattr(detection.DogDetector, "load",
                        classmethod(lambda cls, _dir, **kw: cls(None, 0, **kw)))


def run_stage(checkpoints: Path, out: Path, p: ExploreParams = PARAMS) -> tuple[Path, Path, Path]:
    paths = (out / "directions.json", out / "explore.json", out / "figures")
    explore.run(p, DETECT, checkpoints, out / "detector", *paths)
    return paths


def test_explore_writes_measured_directions_that_serve_can_read(checkpoints: Path, tmp_path: Path,
                                                                 fake_detector: None) -> None:
    directions, metrics, figures = run_stage(checkpoints, tmp_path)
    G, _ = sampling.load(checkpoints, torch.device("cpu"))
    read = read_directions(directions, G.w_dim, G.num_ws)        # the reading contract
    sefa_pca = {f"{m}_{i}" for m in ("sefa", "pca") for i in range(3)}
    assert {d.name for d in read} == sefa_pca | LABELLED
    doc = json.loads(directions.read_text())
    assert doc["format"] == "corgigan-directions/1" and doc["num_ws"] == G.num_ws == 6
    assert set(doc["skipped"]) == {"num_dogs"}
    for name, entry in doc["directions"].items():
        assert entry["sigma"] > 0 and len(entry["vector"]) == G.w_dim
        if name in LABELLED:
            assert entry["method"] == "labelled" and entry["layers"] == [0, 6]
            assert 0 <= entry["accuracy"] <= 1 and entry["num_heldout"] == round(0.3 * 96)
            assert -1 <= entry["rank_corr"] <= 1 and entry["rank_corr_seeds"] <= PARAMS.check_seeds
        else:
            assert entry["method"] in ("sefa", "pca") and 0 < entry["explained_variance"] <= 1
    m = json.loads(metrics.read_text())
    assert set(m["accuracy"]) == set(m["rank_corr"]) == LABELLED
    assert set(m["explained_variance"]) == sefa_pca and m["skipped"] == ["num_dogs"]
    assert m["dogs_found"] == 1.0
    # Brightness is a global property of a random generator's images: clearly found and clearly checked.
    assert m["accuracy"]["brightness"] > 0.8 and m["rank_corr"]["brightness"] > 0.8
    for name in sefa_pca | LABELLED:
        width, height = Image.open(figures / f"{name}.png").size
        assert width > 5 * RES and height == sampling.LABEL_BAND + 3 * RES, name
    # The stored sigma is the one edits use; measured afresh (other seeds, same method) it is close.
    assert [d.sigma for d in read] == [doc["directions"][d.name]["sigma"] for d in read]
    fresh = direction_sigmas(G, [dataclasses.replace(d, sigma=None) for d in read])
    assert np.allclose(fresh, [d.sigma for d in read], rtol=0.2)


def test_explore_is_reproducible_and_fits_on_other_seeds_than_it_checks(
        checkpoints: Path, tmp_path: Path, fake_detector: None, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[int]] = []
    sample_w = latents.sample_w

    def spy(G: torch.nn.Module, seeds: list[int], psi: float) -> torch.Tensor:
        seen.append(seeds)
        return sample_w(G, seeds, psi)

    monkeypatch.setattr(latents, "sample_w", spy)
    a = run_stage(checkpoints, tmp_path / "a")
    b = run_stage(checkpoints, tmp_path / "b")
    pool, check = seen[0], seen[1]
    assert len(pool) == PARAMS.pca_samples and len(check) == PARAMS.check_seeds and not set(pool) & set(check)
    assert a[0].read_bytes() == b[0].read_bytes() and a[1].read_bytes() == b[1].read_bytes()
    for png in sorted(a[2].glob("*.png")):
        assert png.read_bytes() == (b[2] / png.name).read_bytes(), png.name


def test_explore_layer_range_and_its_errors(checkpoints: Path, tmp_path: Path, fake_detector: None) -> None:
    p = ExploreParams(**{**PARAMS.__dict__, "layers": "coarse", "num_labelled": 40, "check_seeds": 3})
    directions, _, _ = run_stage(checkpoints, tmp_path, p)
    doc = json.loads(directions.read_text())["directions"]
    assert doc["sefa_0"]["layers"] == doc["pca_0"]["layers"] == [0, 3] and doc["dog_size"]["layers"] == [0, 6]
    with pytest.raises(StageError, match="explore.layers 'fine': no ws"):
        run_stage(checkpoints, tmp_path, ExploreParams(**{**p.__dict__, "layers": "fine"}))
    with pytest.raises(StageError, match="no snapshot"):
        run_stage(tmp_path / "nothing", tmp_path)


def test_dog_attributes_are_fitted_among_images_with_a_dog() -> None:
    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.normal(size=(200, 8))).float()
    x = w.double().numpy()
    has_dog = x[:, 0] > 0                                    # presence follows w[0]; size follows w[1]
    labels = {name: rng.random(200) for name in attributes.ATTRIBUTES}
    labels["num_dogs"] = has_dog.astype(float)
    labels["dog_size"] = np.where(has_dog, 0.3 + 0.1 * x[:, 1], 0.0)
    found, skipped = explore.labelled_directions(labels, w, PARAMS, num_ws=6)
    by_name = {f.name: f for f in found}
    size = by_name["dog_size"]
    assert size.scores["num_fit"] + size.scores["num_heldout"] == 2 * round(0.3 * has_dog.sum())
    assert abs(float(size.vector[1])) > 0.9 > abs(float(size.vector[0]))   # size, not presence
    assert abs(float(by_name["num_dogs"].vector[0])) > 0.9
    assert size.scores["accuracy"] > 0.9 and not skipped


def test_labelling_with_the_real_detector_path(tmp_path: Path, one_thread: None) -> None:
    # An untrained yolo11n at conf 0 finds random boxes: enough to run detection.predict end to end.
    detection.setup_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolo11n.yaml", nc=1, verbose=False)
    model.names = {0: "dog"}
    detection.save_detector(model.eval(), tmp_path / "detector", {"kind": "untrained", "dog_class": 0})
    det = detection.DogDetector.load(tmp_path / "detector", conf=0.0, iou=0.45, imgsz=64, batch=4,
                                     device="cpu")
    images = np.random.default_rng(0).integers(0, 256, (6, RES, RES, 3), dtype=np.uint8)
    labels = attributes.label_images(det, images)
    assert set(labels) == set(attributes.ATTRIBUTES) and all(len(v) == 6 for v in labels.values())
    assert np.all((labels["dog_size"] >= 0) & (labels["dog_size"] <= 1))
    found = labels["num_dogs"] > 0
    assert np.all((labels["dog_x"][found] >= 0) & (labels["dog_x"][found] <= 1))
    assert np.all(np.isnan(labels["dog_x"][~found]))
    (tmp_path / "detector" / detection.META_FILE).write_text('{"kind": "untrained"}')
    with pytest.raises(StageError, match="no dog_class"):
        detection.DogDetector.load(tmp_path / "detector", conf=0.0, iou=0.45, imgsz=64, batch=4, device="cpu")


def test_box_attributes_and_image_stats() -> None:
    dets = [detection.Detection(-4, 0, 4, 8, 0.5, 0), detection.Detection(8, 8, 16, 16, 0.9, 0)]
    a = attributes.box_attributes(dets, 16, 16)                               # the most confident box
    assert a == {"dog_size": 0.25, "dog_x": 0.75, "dog_y": 0.75, "num_dogs": 2.0, "confidence": 0.9}
    assert attributes.box_attributes(dets[:1], 16, 16)["dog_size"] == 4 * 8 / 256   # clipped to the image
    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[1] = (255, 0, 0)
    s = attributes.image_stats(images)
    assert s["brightness"].tolist() == pytest.approx([0.0, 0.299]) and s["saturation"].tolist() == [0.0, 1.0]


def test_edit_ws_moves_only_the_chosen_layers() -> None:
    w = torch.randn(2, 4)
    v = torch.tensor([1.0, 0, 0, 0])
    ws = edit_ws(w, v, (1, 3), np.array([-1.0, 0.0, 2.0]), num_ws=5)      # [2 * 3, 5, 4]
    assert ws.shape == (6, 5, 4)
    assert torch.equal(ws[:, 0], w.repeat_interleave(3, 0))
    assert torch.equal(ws[:, 3:], ws[:, :1].expand(6, 2, 4))
    assert ws[2, 1, 0] - w[0, 0] == pytest.approx(2.0) and ws[3, 2, 0] - w[1, 0] == pytest.approx(-1.0)


def test_generate_edit_and_edit_video(checkpoints: Path, tmp_path: Path, fake_detector: None) -> None:
    directions, _, _ = run_stage(checkpoints, tmp_path)
    base = ["generate", "--checkpoint", str(checkpoints), "--directions", str(directions), "--device", "cpu",
            "--seeds", "0-2"]
    out = tmp_path / "out"
    assert cli.main([*base, "--out", str(out), "--what", "edit", "--direction", "dog_size",
                     "--strength=-2..2", "--steps", "4"]) == 0
    width, height = Image.open(out / "edit-dog_size.png").size
    assert width > 4 * RES and height == sampling.LABEL_BAND + 3 * RES
    edit = [*base, "--out", str(out), "--what", "edit"]
    assert cli.main([*edit, "--direction", "sefa_0", "--layers", "0-2"]) == 0
    assert (out / "edit-sefa_0.png").is_file()
    assert cli.main([*base, "--out", str(out), "--what", "edit-video", "--direction", "brightness",
                     "--frames", "6"]) == 0
    assert len(list(out.glob("edit-brightness.*"))) == 1
    assert cli.main([*edit, "--direction", "nope"]) == 2
    assert cli.main(edit) == 2
    assert cli.main([*edit, "--direction", "sefa_0", "--layers", "fine"]) == 2


def test_parse_strength() -> None:
    assert cli.parse_strength("-3..3") == (-3.0, 3.0)
    assert cli.parse_strength("0.5..-1") == (0.5, -1.0)
    assert cli.parse_strength("2") == (-2.0, 2.0)
    for bad in ("a..b", "1..1", "0"):
        with pytest.raises(StageError):
            cli.parse_strength(bad)


def test_detect_batch_leaves_every_explore_output_unchanged(checkpoints: Path, tmp_path: Path,
                                                            one_thread: None) -> None:
    # detect.batch is runtime-only (dvc.yaml does not track it for explore), yet explore draws its
    # generator batches by it too: through the CLI, with the real detector path (an untrained yolo11n at
    # conf 0 finds boxes everywhere), two batch sizes (3 leaves a ragged last batch) give the same bytes.
    import yaml

    detection.setup_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolo11n.yaml", nc=1, verbose=False)
    model.names = {0: "dog"}
    detection.save_detector(model.eval(), tmp_path / "detector", {"kind": "untrained", "dog_class": 0})
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    raw["explore"].update({k: v for k, v in dataclasses.asdict(PARAMS).items()},
                          num_labelled=40, pca_samples=200, check_seeds=4, strip_seeds=2)
    outputs = []
    for batch in (16, 3):
        raw["detect"].update(conf=0.0, imgsz=64, device="cpu", batch=batch)
        (tmp_path / f"p{batch}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        out = tmp_path / f"b{batch}"
        assert cli.main(["--params", str(tmp_path / f"p{batch}.yaml"), "explore", "--checkpoints",
                         str(checkpoints), "--detector", str(tmp_path / "detector"), "--directions",
                         str(out / "directions.json"), "--metrics", str(out / "explore.json"), "--figures",
                         str(out / "figures")]) == 0
        outputs.append({p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
                        if p.is_file()})
    a, b = outputs
    assert sorted(a) == sorted(b) and any(name.endswith(".png") for name in a)
    assert [name for name in a if a[name] != b[name]] == []
