"""Multi-process training on CPU (gloo): two processes give the result of one with the same batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from corgigan.stylegan2 import distributed
from corgigan.stylegan2.loop import training_loop
from corgigan.stylegan2.snapshot import list_snapshots, load_snapshot
from tests.helpers import tiny_config, write_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

KW = dict(kimg=0.024, snapshot_kimg=0.024, seed=5, augment="ada", augment_p=0.3, ada_target=0.6,
          mirror=True, workers=0, device="cpu", require_cuda_ops=False, resume_from=None,
          allow_other_data=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, dataset: str, run_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = distributed.init_from_env("cpu")
    assert (info.rank, info.world_size) == (rank, world)
    try:
        training_loop(dataset, run_dir, tiny_config(batch=4, batch_gpu=2), **KW)
    finally:
        distributed.shutdown()


@pytest.mark.timeout(300)
def test_two_gloo_processes_match_one(tmp_path: Path):
    dataset = write_dataset(tmp_path / "d.zip", n=6)
    single = training_loop(dataset, tmp_path / "one", tiny_config(batch=4, batch_gpu=2), **KW)  # 2 rounds
    mp.spawn(_worker, args=(2, _free_port(), str(dataset), str(tmp_path / "two")), nprocs=2, join=True)
    snaps = list_snapshots(tmp_path / "two")
    assert [n for n, _ in snaps] == [24]
    a, b = load_snapshot(single), load_snapshot(snaps[0][1])
    assert a["progress"] == b["progress"] and a["augment_p"] == pytest.approx(b["augment_p"])
    assert a["pl_mean"] == pytest.approx(b["pl_mean"], rel=1e-5)
    for key in ("G", "D", "G_ema"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, rtol=1e-5, atol=1e-6, msg=f"{key}.{name}")


def test_a_step_changes_only_the_buffers_that_are_synced(tmp_path: Path):
    """After each step only MOVING_BUFFERS are broadcast: every other buffer must stay as initialised."""
    from corgigan.stylegan2.data import ZipDataset
    from corgigan.stylegan2.loop import MOVING_BUFFERS, _Trainer

    dataset = ZipDataset(write_dataset(tmp_path / "d.zip", n=6))
    run = {"seed": 0, "augment": "ada", "augment_p": 0.3, "ada_target": 0.6}
    trainer = _Trainer(dataset, "0" * 64, tiny_config(batch=4, batch_gpu=2), run, torch.device("cpu"), 0, 1)
    nets = (("G", trainer.G), ("D", trainer.D))
    before = {(k, n): b.clone() for k, m in nets for n, b in m.named_buffers()}
    reals = [(torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8), torch.zeros(2, 0))] * trainer.rounds
    for _ in range(3):
        trainer.step(reals)
        trainer.after_step()
    after = {(k, n): b for k, m in nets for n, b in m.named_buffers()}
    changed = {name for name, b in after.items() if not torch.equal(b, before[name])}
    assert changed == {name for name in after if name[1].rsplit(".", 1)[-1] in MOVING_BUFFERS}
    assert len(trainer._moving_buffers) == len(changed) > 0
