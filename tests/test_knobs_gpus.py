"""train.gpus: the train stage starts one worker per device itself (torch's elastic launcher), here two
gloo processes on the CPU through the stage's real command, and ends where one process ends."""

from __future__ import annotations

import itertools
import shlex
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from corgigan.stylegan2.data import StreamSampler
from corgigan.stylegan2.snapshot import list_snapshots, load_snapshot
from tests.helpers import ROOT, run, write_dataset


def _command(dataset: Path, out: Path, metrics: Path, params: Path) -> list[str]:
    """dvc.yaml's train cmd with its paths replaced by these (and --params)."""
    cmd = shlex.split(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["cmd"])
    paths = {"--dataset": dataset, "--out": out, "--metrics": metrics}
    args = [str(paths[cmd[i - 1]]) if i and cmd[i - 1] in paths else a for i, a in enumerate(cmd)]
    return [args[0], "--params", str(params), *args[1:]]


def _params(tmp_path: Path, name: str, **train) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    # batch 8 as 4 per pass: one process runs two passes, two processes one each. The demo config derives
    # gamma and the EMA from its batch per GPU count: set them, so both runs have one config.
    raw["train"].update({"kimg": 0.016, "snapshot_kimg": 0.016, "tick_kimg": 0.008, "workers": 0,
                         "device": "cpu", "batch": 8, "batch_gpu": 4, "gamma": 0.5, "ema_kimg": 0.05,
                         **train})
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.timeout(600)
def test_two_processes_from_the_stage_command_match_one(tmp_path: Path, cli_env: dict[str, str]):
    dataset = write_dataset(tmp_path / "d.zip", n=6)
    env = dict(cli_env, OMP_NUM_THREADS="1")
    one = run(_command(dataset, tmp_path / "one", tmp_path / "m1", _params(tmp_path, "p1.yaml", gpus=1)),
              tmp_path, env, timeout=300)
    two = run(_command(dataset, tmp_path / "two", tmp_path / "m2", _params(tmp_path, "p2.yaml", gpus=2)),
              tmp_path, env, timeout=300)
    assert "starting 2 worker processes" in two.stderr and "rank 1" in two.stderr
    assert "worker processes" not in one.stderr
    (n1, a_path), = list_snapshots(tmp_path / "one")
    (n2, b_path), = list_snapshots(tmp_path / "two")
    assert n1 == n2 == 16
    a, b = load_snapshot(a_path), load_snapshot(b_path)
    assert a["config"] == b["config"] and a["run"] == b["run"] and a["progress"] == b["progress"]
    assert a["augment_p"] == pytest.approx(b["augment_p"])
    for key in ("G", "D", "G_ema"):          # as test_distributed: equal up to the order of float sums
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, rtol=1e-5, atol=1e-6, msg=f"{key}.{name}")
    assert (tmp_path / "m2" / "metrics.json").is_file()          # rank 0 logged the metrics


def test_a_failure_in_the_workers_is_one_line_and_rc_2(tmp_path: Path, cli_env: dict[str, str]):
    dataset = write_dataset(tmp_path / "d.zip", n=6)
    params = _params(tmp_path, "p.yaml", gpus=2, batch_gpu=3)      # 3 does not divide 4 per process
    proc = run(_command(dataset, tmp_path / "out", tmp_path / "m", params), tmp_path,
               dict(cli_env, OMP_NUM_THREADS="1"), check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR corgigan: " in line]
    assert len(errors) == 1 and "train: batch_gpu 3 does not divide the 4 images" in errors[0]
    assert "Traceback" not in proc.stderr


def _damage(dataset: Path, member_index: int) -> str:
    """Rewrite `dataset` with its `member_index`-th PNG cut short inside its pixel data: its header still
    reads (so the up-front member check passes), decoding it fails. Returns the member's name."""
    with zipfile.ZipFile(dataset) as zf:
        members = [(info, zf.read(info)) for info in zf.infolist()]
    pngs = [info.filename for info, _ in members if info.filename.endswith(".png")]
    name = pngs[member_index]
    with zipfile.ZipFile(dataset, "w") as zf:
        for info, data in members:
            zf.writestr(info, data[:data.index(b"IDAT") + 8] if info.filename == name else data)
    return name


@pytest.mark.timeout(300)
def test_a_failure_on_one_rank_stops_the_others_and_is_one_line(tmp_path: Path, cli_env: dict[str, str]):
    # 80 images: rank 0's reals.png (the first 64) never decodes the damaged one; rank 1 draws it in the
    # first step and fails there, while rank 0 has finished its passes and waits in the gradient all-reduce.
    # The seed is the first whose first step gives rank 1 an image above 63 that rank 0 does not draw.
    n = 80
    dataset = write_dataset(tmp_path / "d.zip", n=n)
    for seed in range(100):
        rank0, rank1 = ([i % n for i in itertools.islice(iter(StreamSampler(2 * n, seed, 8, 4, r, 2)), 4)]
                        for r in (0, 1))
        damaged = [i for i in rank1 if i >= 64 and i not in rank0]
        if damaged:
            break
    name = _damage(dataset, damaged[0])
    params = _params(tmp_path, "p.yaml", gpus=2, seed=seed, mirror=True)
    started = time.monotonic()
    proc = run(_command(dataset, tmp_path / "out", tmp_path / "m", params), tmp_path,
               dict(cli_env, OMP_NUM_THREADS="1"), check=False, timeout=240)
    assert time.monotonic() - started < 120          # not the 30-minute collective timeout
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR corgigan: " in line]
    assert len(errors) == 1 and f"{name}: cannot decode PNG" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_more_gpus_than_cuda_sees_is_refused():
    from corgigan.errors import StageError
    from corgigan.stages.train import num_processes

    assert num_processes("auto", on_gpu=False) == 1
    assert num_processes(2, on_gpu=False) == 2
    with pytest.raises(StageError, match="train.gpus is 64 but torch sees"):
        num_processes(64, on_gpu=True)
