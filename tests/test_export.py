"""`corgigan export`: the portable folder loads wherever a checkpoint does, gives the snapshot's images, is
byte-stable, is written atomically, refuses tampered files in one line, and its card tells only what the
records say."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from corgigan import cli
from corgigan.analysis import directions as dirs
from corgigan.export import model_card
from corgigan.stylegan2 import configs
from corgigan.stylegan2.load import build, load_networks
from corgigan.stylegan2.loop import decide_start, training_loop
from corgigan.stylegan2.snapshot import latest_snapshot
from tests import pickle_writer as pw
from tests.helpers import LOOP_KW, ROOT, tiny_config, write_dataset

N_IMAGES = 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny trained run (snapshot folder + dataset) and a params file whose data sections describe it."""
    root = tmp_path_factory.mktemp("export")
    data = write_dataset(root / "corgis.zip", n=N_IMAGES)
    torch.set_num_threads(1)
    training_loop(data, root / "run", tiny_config(), kimg=0.004, snapshot_kimg=0.004, **LOOP_KW)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["filter"]["resolution"] = 8
    # ONNX off (tests/test_onnx.py covers it): the demo's params.yaml turns it on, and each export would
    # then spend seconds on it
    raw["export"].update(sample_count=4, truncation_psi=0.7, onnx=False)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return {"root": root, "run": root / "run", "data": data, "params": root / "params.yaml"}


def export(trained: dict[str, Path], out: Path, *extra: str, checkpoint: Path | None = None) -> int:
    return cli.main(["--params", str(trained["params"]), "export", str(checkpoint or trained["run"]),
                     "--out", str(out), *extra])


def records(trained: dict[str, Path], snapshot_name: str) -> dict[str, Path]:
    """funnel, metrics and explore records as the pipeline writes them, naming `snapshot_name`."""
    root = trained["root"]
    funnel = {"entered": 7, "kept": N_IMAGES, "rejected": {"no_dog": 2, "duplicate": 1},
              "filter": {"entered": 7, "kept": 5, "rejected": {"no_dog": 2}},
              "dedup": {"entered": 5, "kept": N_IMAGES, "rejected": {"duplicate": 1}}, "warnings": []}
    metrics = {"fid_pixels": 123.456, "kid_pixels": 0.0421, "features": "pixels", "kimg": 0.004,
               "snapshot": snapshot_name, "num_generated": 16, "num_real": N_IMAGES, "truncation_psi": 1.0,
               "same_dataset": True}
    explore = {"checkpoint": snapshot_name, "accuracy": {"dog_size": 0.875}, "rank_corr": {"dog_size": 0.5},
               "explained_variance": {"sefa_0": 0.25}, "dogs_found": 0.25, "num_labelled": 64}
    paths = {}
    for name, doc in (("funnel", funnel), ("metrics", metrics), ("explore", explore)):
        paths[name] = root / f"{name}.json"
        paths[name].write_text(json.dumps(doc))
    paths["directions"] = root / "directions.json"
    w_dim, num_ws = 16, 4
    vec = torch.zeros(w_dim)
    vec[0] = 1
    dirs.write_directions(paths["directions"], {"checkpoint": snapshot_name}, {
        "dog_size": {"method": "labelled", "layers": [0, num_ws], "vector": vec, "chance": 0.625},
        "sefa_0": {"method": "sefa", "layers": [0, 2], "vector": vec.flip(0)}})
    return paths


def read_images(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_export_folder_gives_the_snapshots_images(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert export(trained, out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                     "samples.png"]
    loaded = load_networks(out)
    assert loaded.source == "export" and set(loaded.states) == {"G_ema"}
    # G_ema only, w_avg and the constant noise included
    snap = load_networks(trained["run"])
    tensors = load_file(str(out / "model.safetensors"))
    assert tensors.keys() == snap.states["G_ema"].keys()
    assert "mapping.w_avg" in tensors and any("noise_const" in k for k in tensors)
    for what in ("images", "truncation"):
        for name, ckpt in (("snap", trained["run"]), ("export", out)):
            assert cli.main(["generate", "--checkpoint", str(ckpt), "--out", str(tmp_path / f"{what}-{name}"),
                             "--what", what, "--seeds", "0-3", "--psi", "0.7", "--device", "cpu"]) == 0
        assert read_images(tmp_path / f"{what}-snap") == read_images(tmp_path / f"{what}-export")
    # an export of the export holds the same weights and record
    assert export(trained, tmp_path / "again", checkpoint=out) == 0
    for name in ("model.safetensors", "config.json", "samples.png"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name


def test_config_json_alone_rebuilds_the_network_as_the_card_shows(trained: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert export(trained, out) == 0
    card = (out / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S)
    assert code is not None
    scope: dict = {}
    exec(code.group(1).replace("MODEL_DIR", str(out)), scope)   # the card's own snippet, as a user runs it
    G = build(load_networks(trained["run"]))
    assert torch.equal(scope["images"], G(scope["z"], None, truncation_psi=0.7, noise_mode="const"))


def test_same_inputs_give_a_byte_identical_folder_in_two_processes(trained: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    paths = records(trained, latest_snapshot(trained["run"]).name)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    folders = []
    for i in range(2):
        out = tmp_path / f"out{i}" / "export"
        records_args = [x for k, p in paths.items() for x in (f"--{k}", str(p))]
        args = [sys.executable, "-m", "corgigan.cli", "--params", str(trained["params"]), "export",
                str(trained["run"]), "--out", str(out), *records_args]
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        folders.append(out)
    first, second = read_images(folders[0]), read_images(folders[1])
    assert first == second
    assert set(first) == {"README.md", "config.json", "model.safetensors", "samples.png", "directions.json"}
    for name, content in first.items():
        assert str(tmp_path).encode() not in content and str(trained["root"]).encode() not in content, name
    assert first["directions.json"] == paths["directions"].read_bytes()


def test_card_tells_what_the_records_say(trained: dict[str, Path], tmp_path: Path) -> None:
    snapshot = latest_snapshot(trained["run"]).name
    paths = records(trained, snapshot)
    out = tmp_path / "export"
    assert export(trained, out, *(x for k, p in paths.items() for x in (f"--{k}", str(p)))) == 0
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "other" and "stylegan2" in front["tags"] and front["library_name"]
    assert f"from `{snapshot}` (snapshot)" in card
    assert "| filter | 7 | 5 | no_dog: 2 |" in card
    assert "| overall | 7 | 4 | duplicate: 1, no_dog: 2 |" in card
    assert "synthetic: scenes drawn by corgigan" in card and "cover >= 0.15" in card
    assert "Config: demo." in card and "4 images shown" in card and "GPU hours: unknown" in card
    # The run's augment_p is where ADA started; the card also gives where it stood at the snapshot.
    p = float(load_networks(trained["run"] / snapshot).snapshot["augment_p"])
    shown = str(int(p)) if p.is_integer() else f"{p:.4g}"
    assert "augment_p 0.2 (at the start)" in card
    assert f"- Augmentation probability at this snapshot: {shown}." in card
    # a 4-image run's G_ema half-life is the ramp's, not ema_kimg's (tiny_config: 0.01 kimg, ramp 0.05)
    assert ("G_ema half-life 0.01 kimg (ramped up over the first images: at most 0.05 of the images shown, "
            "so 0.0002 kimg at the end of this run)") in card
    # tiny_config's knobs differ from the demo preset's: the card names them
    assert "Settings that differ from demo's defaults" in card and "r1_gamma: default" in card
    assert "| fid_pixels | 123.456 |" in card and "NOT comparable to published FIDs" in card
    # every ws reads "all", a part --layers' FIRST-STOP; an accuracy stands beside its chance level
    assert ("| dog_size | labelled | all | held-out accuracy 0.875 (chance 0.625), rank correlation 0.5 |"
            in card)
    assert "| sefa_0 | sefa | 0-2 | explained variance 0.25 |" in card
    # what it was trained on, and what the detector found in what it draws
    assert "trained on square crops of one dog each" in card
    assert "found a dog in 25% of 64 generated images" in card
    assert "seeds 0-3, truncation psi 0.7" in card


def test_card_says_unknown_for_what_is_not_this_models(trained: dict[str, Path], tmp_path: Path) -> None:
    paths = records(trained, "snapshot-000000999.pt")     # records of another snapshot
    out = tmp_path / "export"
    assert export(trained, out, "--metrics", str(paths["metrics"]), "--explore", str(paths["explore"])) == 0
    card = (out / "README.md").read_text()
    assert "FID / KID: unknown (not recorded) (reports/metrics.json scores `snapshot-000000999.pt`" in card
    assert "123.456" not in card and "Directions\n\nNone shipped." in card and "found a dog" not in card
    # a reference pickle holding only Gs: no data, config, kimg or scores are known, and none is invented
    G, _ = configs.build_networks(configs.network_spec(tiny_config()))
    G_static = {"resolution": 8, "num_channels": 3, "label_size": 0, "fmap_base": 32, "fmap_max": 16,
                "latent_size": 16, "dlatent_size": 16, "mapping_layers": 2}
    pkl = pw.tf_pickle(tmp_path / "gs.pkl", G, None, copy.deepcopy(G), G_static)
    funnel = records(trained, "gs.pkl")["funnel"]
    assert export(trained, tmp_path / "pkl", "--funnel", str(funnel), checkpoint=pkl) == 0
    card = (tmp_path / "pkl" / "README.md").read_text()
    assert "Training data: unknown (not recorded); the model was not trained by this pipeline." in card
    assert "Config: unknown" in card and "Length: unknown" in card and "| overall |" not in card
    assert "synthetic" not in card and "trained on images that are not recorded here" in card


def test_directions_of_another_checkpoint_are_refused(trained: dict[str, Path], tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    paths = records(trained, "snapshot-000000999.pt")
    with caplog.at_level(logging.ERROR):
        assert export(trained, tmp_path / "export", "--directions", str(paths["directions"])) == 2
    assert "directions found in snapshot-000000999.pt" in caplog.text
    assert not (tmp_path / "export").exists()


def test_resume_from_an_export_transfers_g_and_starts_d_fresh(trained: dict[str, Path], tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "export"
    assert export(trained, out) == 0
    cfg = configs.config_to_dict(tiny_config())
    with caplog.at_level(logging.WARNING):
        start = decide_start(tmp_path / "run", cfg, {"seed": 0}, "a" * 64, str(out), False,
                             data={"resolution": 8, "num_channels": 3, "label_dim": 0})
    assert start.mode == "transfer" and list(start.state) == ["G", "G_ema"]
    exported = load_file(str(out / "model.safetensors"))
    for net in ("G", "G_ema"):
        assert all(torch.equal(start.state[net][k], exported[k]) for k in exported)
    assert f"{out} holds no discriminator: D starts from this run's own initialisation" in caplog.text
    # and a run starts from it and trains
    last = training_loop(trained["data"], tmp_path / "ft", tiny_config(), kimg=0.004, snapshot_kimg=0.004,
                         **{**LOOP_KW, "resume_from": str(out)})
    assert last.is_file()


def _tampered(out: Path, how: str) -> None:
    cfg_path, st = out / "config.json", out / "model.safetensors"
    if how == "config":
        doc = json.loads(cfg_path.read_text())
        doc["generator"]["w_dim"] = 32                   # tensors no longer fit
        cfg_path.write_text(json.dumps(doc))
    elif how == "keyword":
        doc = json.loads(cfg_path.read_text())
        doc["generator"]["synthesis_kwargs"]["architecture"] = "resnet"   # not a Generator keyword
        cfg_path.write_text(json.dumps(doc))
    elif how == "format":
        cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "format": "other"}))
    elif how == "tensor":
        tensors = load_file(str(st))
        name = next(k for k in tensors if k.endswith("affine.weight"))
        tensors[name] = torch.zeros(tensors[name].shape[0] + 1, tensors[name].shape[1])
        save_file(tensors, str(st))
    elif how == "header":
        data = st.read_bytes()
        st.write_bytes(struct.pack("<Q", 1 << 40) + data[8:])
    elif how == "truncated":
        st.write_bytes(st.read_bytes()[:-100])


@pytest.mark.parametrize(("how", "message"), [
    ("config", "its tensors do not fit the network of config.json: mapping.layers.0.bias is [16]"),
    ("keyword", "its stored network settings cannot be built"), ("format", "not a portable generator config"),
    ("tensor", "its tensors do not fit the network of config.json"), ("header", "byte header in a"),
    ("truncated", "not a readable safetensors file"),
])
def test_tampered_exports_are_refused_in_one_line(trained: dict[str, Path], tmp_path: Path, how: str,
                                                  message: str, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "export"
    assert export(trained, out) == 0
    _tampered(out, how)
    with caplog.at_level(logging.ERROR):
        assert cli.main(["generate", "--checkpoint", str(out), "--out", str(tmp_path / "g"), "--device",
                         "cpu"]) == 2
        assert export(trained, tmp_path / "again", checkpoint=out) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and all(message in r.getMessage() and "\n" not in r.getMessage() for r in errors)


def test_missing_checkpoint_is_one_line(trained: dict[str, Path], tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert export(trained, tmp_path / "export", checkpoint=tmp_path / "nope.pt") == 2
    assert "nope.pt: no such snapshot, folder or pickle" in caplog.text


def test_an_interrupted_export_leaves_the_old_folder_and_is_swept(trained: dict[str, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "export"
    assert export(trained, out) == 0
    before = read_images(out)

    def killed(*args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt   # stands in for a kill while the folder is half written

    monkeypatch.setattr(model_card, "render", killed)
    with pytest.raises(KeyboardInterrupt):
        export(trained, out)
    monkeypatch.undo()
    assert read_images(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    # a SIGKILL skips the clean-up: the next export sweeps what it left
    stale = tmp_path / ".export.k1ll3d.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    (out / ".README.abc.tmp.md").write_text("half")
    assert export(trained, out) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"] and read_images(out) == before
