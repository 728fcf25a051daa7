"""The training knobs StyleGAN users sweep (train.gamma, glr, ..., subset): checked like every knob, carried
into the snapshot, and resumed only when they leave the trajectory alone (batch_gpu) ."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import yaml

from corgigan import params as params_mod
from corgigan.cli import main
from corgigan.errors import StageError
from corgigan.stylegan2.loop import Hooks, training_loop
from corgigan.stylegan2.snapshot import list_snapshots, load_snapshot
from tests.helpers import LOOP_KW as KW
from tests.helpers import tiny_config, write_dataset

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")

# knob -> the reference's flag, as README's table and `corgigan train --help` give it.
REFERENCE_FLAGS = {"gpus": "--gpus", "batch_gpu": "--batch-gpu", "gamma": "--gamma", "glr": "--glr",
                   "dlr": "--dlr", "cbase": "--cbase", "cmax": "--cmax", "map_depth": "--map-depth",
                   "mbstd_group": "--mbstd-group", "fp16_res": "--fp32", "augpipe": "--augpipe",
                   "subset": "--subset"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "a.zip", n=6, seed=0)


def _raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize(("key", "value", "message"), [
    ("gamma", -1, "train.gamma: must be >= 0, got -1"),
    ("glr", 0, "train.glr: must be in (0, 1], got 0"),
    ("dlr", "fast", "train.dlr: must be a number, got 'fast'"),
    ("gpus", 0, "train.gpus: must be auto or an integer >= 1, got 0"),
    ("gpus", "all", "train.gpus: must be"),
    ("augpipe", "bgcx", "train.augpipe: must be one of blit, geom, color, filter, noise, cutout, bg, bgc"),
    ("map_depth", 0, "train.map_depth: must be >= 1, got 0"),
    ("style_mixing", 1.5, "train.style_mixing: must be in [0, 1], got 1.5"),
    ("subset", 0, "train.subset: must be > 0, got 0"),
    ("batch_gpu", 0, "train.batch_gpu: must be in (0, 1024], got 0"),
])
def test_each_knob_is_checked_and_named(key, value, message):
    raw = _raw()
    raw["train"][key] = value
    with pytest.raises(params_mod.ParamsError) as err:
        params_mod.from_dict(raw)
    assert str(err.value).startswith(message)


def test_every_new_knob_defaults_to_the_configs_own_and_says_its_reference_flag():
    train = params_mod.load(ROOT / "params.yaml").train
    helps = params_mod.knobs()
    for key, flag in REFERENCE_FLAGS.items():
        assert flag in helps[f"train.{key}"], key
        if key != "gpus":
            assert getattr(train, key) is None, key
    readme = (ROOT / "README.md").read_text()
    for key, flag in REFERENCE_FLAGS.items():
        assert f"| `train.{key}` | `{flag}`" in readme, key


def test_train_help_lists_the_knobs_with_their_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for key, flag in REFERENCE_FLAGS.items():
        assert f"train.{key}" in out and flag in out, key


def test_the_stage_trains_with_the_knobs_and_the_snapshot_records_them(tmp_path, data):
    from corgigan.stages import train

    p = dataclasses.replace(
        params_mod.load(ROOT / "params.yaml").train, kimg=0.008, snapshot_kimg=0.008, tick_kimg=0.008,
        workers=0, batch_gpu=4, gamma=5.0, glr=0.001, dlr=0.003, cbase=256, cmax=32, map_depth=1,
        mbstd_group=2, fp16_res=0, augpipe="bgcfnc", augment_p=0.5, ema_kimg=0.5, ema_rampup=0.0,
        pl_weight=0.0, style_mixing=0.5, subset=4)
    train.run(p, data, tmp_path / "models", tmp_path / "reports")
    state = load_snapshot(list_snapshots(tmp_path / "models")[-1][1])
    cfg = state["config"]
    assert (cfg["batch"], cfg["batch_gpu"], cfg["mbstd_group"], cfg["D_kwargs"]["mbstd_group_size"]) == (
        8, 4, 2, 2)
    assert (cfg["r1_gamma"], cfg["G_lr"], cfg["D_lr"], cfg["ema_kimg"], cfg["ema_rampup"]) == (
        5.0, 0.001, 0.003, 0.5, None)
    assert (cfg["pl_weight"], cfg["style_mixing_prob"]) == (0.0, 0.5)
    assert cfg["G_kwargs"]["mapping_kwargs"]["num_layers"] == 1
    s = cfg["G_kwargs"]["synthesis_kwargs"]
    assert (s["channel_base"], s["channel_max"], s["num_fp16_res"]) == (256, 32, 0)
    assert (state["run"]["augpipe"], state["run"]["subset"]) == ("bgcfnc", 4)
    # A knob that cannot work with the others is one line naming it.
    with pytest.raises(StageError, match="train: batch_gpu 3 does not divide"):
        train.run(dataclasses.replace(p, batch_gpu=3), data, tmp_path / "other", tmp_path / "reports2")


def test_batch_gpu_resumes_and_a_trajectory_knob_starts_fresh(tmp_path, data, caplog):
    run_dir = tmp_path / "run"
    starts: list[dict] = []
    hooks = Hooks(on_start=starts.append)

    def train(kimg: float, cfg=None, run_dir: Path = run_dir, **kw) -> None:
        training_loop(data, run_dir, cfg or tiny_config(batch=4, batch_gpu=4), kimg=kimg, snapshot_kimg=0.004,
                      hooks=hooks, **{**KW, **kw})

    train(0.004)
    train(0.008, tiny_config(batch=4, batch_gpu=2))          # only splits the work: resumes
    assert [s["mode"] for s in starts] == ["fresh", "resume"]
    with caplog.at_level(logging.WARNING):
        train(0.012, tiny_config(batch=4, batch_gpu=2, r1_gamma=5.0))
    assert starts[-1]["mode"] == "fresh" and "config.r1_gamma" in caplog.text
    train(0.016, tiny_config(batch=4, batch_gpu=2, r1_gamma=5.0))
    assert starts[-1]["mode"] == "resume"
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        train(0.020, tiny_config(batch=4, batch_gpu=2, r1_gamma=5.0), augpipe="bgcf")
    assert starts[-1]["mode"] == "fresh" and "run.augpipe" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        train(0.024, tiny_config(batch=4, batch_gpu=2, r1_gamma=5.0), augpipe="bgcf", subset=3)
    assert starts[-1]["mode"] == "fresh" and "run.subset" in caplog.text
    train(0.028, tiny_config(batch=4, batch_gpu=2, r1_gamma=5.0), augpipe="bgcf", subset=3)
    assert starts[-1]["mode"] == "resume"
    # A cap at or above the dataset's size (6 images) is no cap: the run without one, resumed.
    train(0.004, run_dir=tmp_path / "whole")
    train(0.008, run_dir=tmp_path / "whole", subset=6)
    assert starts[-1]["mode"] == "resume"


def _real(name: str = "paper256", res: int = 256, gpus: int = 1, batch: int | None = None, **knobs) -> dict:
    """The config dict a snapshot of make_config's real config records."""
    from corgigan.stylegan2.configs import Knobs, config_to_dict, make_config

    return config_to_dict(make_config(name, res, gpus=gpus, batch=batch, knobs=Knobs(**knobs)))


def test_the_real_configs_resume_across_batch_gpu_and_not_across_a_trajectory_knob():
    from corgigan.stylegan2.loop import resume_differences

    # paper256's group of 8 follows batch_gpu down to 4: the knob people lower on out-of-memory.
    eight, four = _real(), _real(batch_gpu=4)
    assert (eight["mbstd_group"], four["mbstd_group"]) == (8, 4)
    assert resume_differences(eight, four) == resume_differences(four, eight) == []
    assert resume_differences(eight, _real(batch_gpu=2)) == []
    assert resume_differences(eight, _real(batch_gpu=4, r1_gamma=2.0)) == [
        "config.r1_gamma: snapshot 1, now 2.0"]
    # A group the user set (smaller than the images per pass) is a real change.
    assert "config.mbstd_group: snapshot 8, now 4" in resume_differences(eight, _real(mbstd_group=4))
    assert resume_differences(four, _real(batch_gpu=8, mbstd_group=2)) != []
    # demo and auto derive batch, gamma and EMA from the GPU count: with them set, another count resumes.
    for name in ("demo", "auto"):
        assert resume_differences(_real(name, 64, gpus=1), _real(name, 64, gpus=2)) != []
        fixed = dict(batch=16, r1_gamma=0.5, ema_kimg=1.0)
        assert resume_differences(_real(name, 64, gpus=1, **fixed), _real(name, 64, gpus=2, **fixed)) == []


def _clamped(batch_gpu: int, **changes):
    """tiny_config with its minibatch-stddev group clamped to batch_gpu, as make_config clamps it."""
    base = tiny_config()
    return tiny_config(batch=4, batch_gpu=batch_gpu, mbstd_group=batch_gpu,
                       D_kwargs=dict(base.D_kwargs, mbstd_group_size=batch_gpu), **changes)


def test_a_group_that_follows_batch_gpu_resumes_and_a_batch_change_names_the_knobs(tmp_path, data, caplog):
    starts: list[dict] = []

    def train(cfg, kimg: float, run_dir: Path = tmp_path / "run") -> None:
        training_loop(data, run_dir, cfg, kimg=kimg, snapshot_kimg=0.004, hooks=Hooks(on_start=starts.append),
                      **KW)

    train(_clamped(4), 0.004)
    with caplog.at_level(logging.WARNING):
        train(_clamped(2), 0.008)      # batch_gpu 4 -> 2 takes the group 4 -> 2 with it: resumes
    assert [s["mode"] for s in starts] == ["fresh", "resume"] and "another run" not in caplog.text
    assert load_snapshot(list_snapshots(tmp_path / "run")[-1][1])["config"]["mbstd_group"] == 2
    # The demo's batch follows the GPU count: a refused resume says which knobs keep it.
    with caplog.at_level(logging.WARNING):
        train(dataclasses.replace(_clamped(2), batch=8), 0.016)
    assert starts[-1]["mode"] == "fresh"
    assert "config.batch: snapshot 4, now 8" in caplog.text
    assert "train.batch" in caplog.text and "train.gpus" in caplog.text


def test_a_subset_trains_only_on_its_images(tmp_path, data):
    from corgigan.stylegan2.data import ZipDataset
    from corgigan.stylegan2.loop import DatasetSubset

    full = ZipDataset(data, mirror=True)
    sub = DatasetSubset(full, 3, seed=7)
    assert len(sub) == 6 and sub.num_images == 3
    assert list(sub.indices) == sorted(sub.indices) and len(set(sub.indices.tolist())) == 3
    assert list(DatasetSubset(full, 3, seed=7).indices) == list(sub.indices)   # the seed decides
    for i in range(3):
        assert (sub.image(i) == full.image(int(sub.indices[i]))).all()
        assert (sub.image(i + 3) == sub.image(i)[:, :, ::-1]).all()           # the mirror of the same
    assert any(list(DatasetSubset(full, 3, seed=s).indices) != list(sub.indices) for s in range(8))
