"""Stage train: StyleGAN2-ADA on the dataset zip -> snapshots and grids in `out`, metrics in `metrics`.

`out` is a persisted DVC output, so a killed run resumes on the next `dvc repro`. Resuming is safe:
the loop resumes a snapshot only when it was trained on this very dataset zip with this config and run
settings; otherwise it logs why and starts fresh (so `dvc exp run -S filter...` never continues a model
trained on other data). `train.resume_from` starts from another snapshot's weights instead (transfer
learning; a snapshot of another dataset needs `train.allow_other_data: true`), or from a reference
StyleGAN2(-ADA) PyTorch or TensorFlow pickle, read without running its code; `train.freeze_d` keeps D's
first layers fixed while fine-tuning.

Several GPUs: `train.gpus` (N, or auto: every visible CUDA device) makes this stage start one worker
process per device itself, with torch's elastic launcher (distributed.launch_local), so `dvc repro` uses
them all; rank 0 writes every file. On the CPU the workers use gloo. Started by `torchrun` (several
machines), the stage sees WORLD_SIZE and starts nothing of its own.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from corgigan.analysis.curves import draw_curves, open_live
from corgigan.errors import StageError
from corgigan.params import TrainParams
from corgigan.stylegan2 import configs, distributed
from corgigan.stylegan2.data import DatasetError, ZipDataset
from corgigan.stylegan2.devices import DeviceError
from corgigan.stylegan2.loop import DEFAULT_AUGPIPE, Hooks, TrainingError, training_loop
from corgigan.stylegan2.ops.build import CudaOpsError
from corgigan.stylegan2.snapshot import SnapshotError

log = logging.getLogger(__name__)

CPU_MAX_AUTO_RES = 512   # from this resolution on, training on the CPU must be asked for (train.device: cpu)
MIN_IMAGES = 1000        # fewer dataset images than this get a warning
CURVES = "curves.png"       # in the metrics folder: the training curves as a picture (a DVC image plot)
GRID_IMAGES = "grid"        # dvclive images: each snapshot's grid as plots/images/grid/<tick>.png
# Logged as curves but kept out of the metrics summary (metrics.json, what `dvc metrics diff` and
# `dvc exp show` compare): speed and memory depend on the machine, and Loss/signs/real is ADA/rt again.
NOT_COMPARED = (("Timing",), ("Resources",), ("Loss", "signs"))


class _Reporter:
    """Rank 0's progress bar (kimg) and dvclive metrics (one step per tick)."""

    def __init__(self, metrics: Path):
        self.metrics = metrics
        self.live: Any = None
        self.bar: tqdm | None = None

    def on_start(self, info: dict[str, Any]) -> None:
        # A resumed run continues its history from the snapshot's tick (rows a killed run logged after
        # its last snapshot are dropped: the resumed run logs those ticks again, and whatever a kill left
        # half-written is repaired); a fresh one starts anew.
        self.live = open_live(self.metrics, info["tick"] if info["resumed"] else None, NOT_COMPARED)
        self.bar = tqdm(total=info["total_nimg"] / 1000, initial=info["nimg"] / 1000, desc="train",
                        bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} kimg [{elapsed}<{remaining}]")

    def on_progress(self, nimg: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(nimg / 1000 - self.bar.n)

    def on_tick(self, tick: int, stats: dict[str, float]) -> None:
        self.live.step = tick
        for name, value in sorted(stats.items()):
            self.live.log_metric(name, value)
        for path in NOT_COMPARED:
            *parents, last = path
            group = self.live.summary
            for key in parents:
                group = group.get(key, {})
            group.pop(last, None)
        self.live.next_step()
        draw_curves(self.metrics / "plots" / "metrics", self.metrics / CURVES)

    def on_snapshot(self, tick: int, nimg: int, grid: Path) -> None:
        # One image per snapshot, named by its tick (the step of the metrics beside it): DVC's VS Code
        # extension and Studio show such a folder as a slider while training runs.
        self.live.log_image(f"{GRID_IMAGES}/{tick}.png", grid)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.live is not None:
            self.live.end()


def config_knobs(p: TrainParams) -> configs.Knobs:
    """The training knobs of `p` that replace the config's own values (None keeps them)."""
    return configs.Knobs(
        batch_gpu=p.batch_gpu, r1_gamma=p.gamma, G_lr=p.glr, D_lr=p.dlr, channel_base=p.cbase,
        channel_max=p.cmax, mapping_layers=p.map_depth, mbstd_group=p.mbstd_group, num_fp16_res=p.fp16_res,
        ema_kimg=p.ema_kimg, ema_rampup=p.ema_rampup, pl_weight=p.pl_weight, style_mixing_prob=p.style_mixing)


def check_device_fits(device: str, on_gpu: bool, cfg: configs.TrainingConfig) -> None:
    """Refuse a large config on the CPU unless train.device says cpu: days per kimg, and out of memory."""
    if on_gpu or cfg.resolution < CPU_MAX_AUTO_RES or device == "cpu":
        return
    raise StageError(f"train: config {cfg.name} at {cfg.resolution} px needs a GPU, and torch sees none "
                     f"(train.device: {device}); on the CPU it would take days per kimg. Run it on a GPU "
                     f"machine, or set train.device: cpu to insist")


def num_processes(gpus: int | str, on_gpu: bool) -> int:
    """Worker processes for train.gpus: auto is every visible CUDA device (one without CUDA); a number
    is refused when it asks for more CUDA devices than torch sees."""
    if gpus == "auto":
        return max(torch.cuda.device_count(), 1) if on_gpu else 1
    assert isinstance(gpus, int)
    if on_gpu and gpus > torch.cuda.device_count():
        raise StageError(f"train: train.gpus is {gpus} but torch sees {torch.cuda.device_count()} CUDA "
                         "device(s); set train.gpus: auto or a smaller number")
    return gpus


def _worker(p: TrainParams, dataset: Path, out: Path, metrics: Path, log_level: int) -> None:
    """One launched process: train as its rank. A user-fixable failure is raised as a WorkerError, so the
    launcher stops the other ranks at once (a rank that returned would leave them waiting in a collective
    until the backend's timeout) and the launching stage reports its message as one line."""
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s rank {os.environ['RANK']} "
                        "%(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        run(p, dataset, out, metrics)
    except StageError as e:
        raise distributed.WorkerError(str(e)) from None


def run(p: TrainParams, dataset: Path, out: Path, metrics: Path) -> None:
    """Train or resume StyleGAN2-ADA on `dataset`; snapshots and grids go to `out`, metrics to `metrics`."""
    on_gpu = p.device.startswith("cuda") or (p.device == "auto" and torch.cuda.is_available())
    if not distributed.launched():
        nprocs = num_processes(p.gpus, on_gpu)
        if nprocs > 1:
            log.info("train: starting %d worker processes (train.gpus: %s, %s)", nprocs, p.gpus,
                     "NCCL" if on_gpu else "gloo on the CPU")
            level = logging.getLogger().getEffectiveLevel()
            try:
                distributed.launch_local(nprocs, _worker, p, dataset, out, metrics, level)
            except distributed.WorkerError as e:
                raise StageError(str(e)) from None
            return
    info = distributed.init_from_env("cuda" if on_gpu else "cpu")
    try:
        try:
            data = ZipDataset(dataset, check_members=False)   # the loop checks members unless resuming
            cfg = configs.make_config(p.config, data.resolution, gpus=info.world_size, batch=p.batch,
                                      knobs=config_knobs(p))
        except (DatasetError, ValueError) as e:
            raise StageError(f"train: {e}") from e
        check_device_fits(p.device, on_gpu, cfg)
        if data.num_images < MIN_IMAGES:
            log.warning("train: %s holds only %d images; a GAN needs thousands (ADA helps from about %d): "
                        "expect it to memorise them", dataset, data.num_images, MIN_IMAGES)
        reporter = _Reporter(metrics)
        hooks = (Hooks(reporter.on_start, reporter.on_progress, reporter.on_tick, reporter.on_snapshot)
                 if info.is_main else None)
        try:
            last = training_loop(
                dataset, out, cfg, kimg=p.kimg, snapshot_kimg=p.snapshot_kimg, seed=p.seed, augment=p.augment,
                augment_p=p.augment_p, ada_target=p.ada_target, mirror=p.mirror, workers=p.workers,
                device=p.device, require_cuda_ops=p.require_cuda_ops, allow_tf32=p.allow_tf32,
                resume_from=p.resume_from, freeze_d=p.freeze_d,
                allow_other_data=p.allow_other_data, augpipe=p.augpipe or DEFAULT_AUGPIPE, subset=p.subset,
                tick_kimg=p.tick_kimg, keep_snapshots=p.keep_snapshots, hooks=hooks)
        except (DatasetError, SnapshotError, TrainingError, CudaOpsError, DeviceError) as e:
            raise StageError(f"train: {e}") from e
        finally:
            reporter.close()
        log.info("last snapshot: %s", last)
    finally:
        distributed.shutdown()
