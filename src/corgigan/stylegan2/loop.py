"""The StyleGAN2-ADA training loop: a plain function from a dataset zip to snapshots.

Determinism. Every random draw of a step (latents, style mixing, noise inputs, augmentations) comes from
the global torch generator re-seeded per (step, phase, chunk), and the data stream is a function of
(seed, position) (data.StreamSampler). So a run resumed from a snapshot continues bit-identically on
CPU, and the result does not depend on how the global batch is split over processes and accumulation
rounds (up to the order of floating-point sums on GPUs).

Resume rules (decide_start):
  * run_dir holds a snapshot of the same config, run settings and dataset -> resume it exactly
    (kimg, ADA p, optimiser states and generator states continue). Every knob that changes the
    trajectory is in one of them (gamma, learning rates, widths, EMA, ... in the config; augpipe and
    subset in the run settings); batch_gpu, which only splits the work, is not compared, nor the
    minibatch-stddev group it clamps (resume_differences; with the same batch_gpu the split over processes
    changes no bit; another batch_gpu draws other latents per pass). Configs demo and auto derive the
    batch, gamma and EMA from the GPU count: with those set explicitly, another GPU count resumes too;
  * it holds one of another config or run settings -> log why and start fresh (stale snapshots and
    grids are removed; they remain in the DVC cache); of another dataset -> the same, unless
    allow_other_data, which resumes it on the new data;
  * otherwise, resume_from names a snapshot -> start from its weights (transfer learning: counters,
    optimisers and ADA p start over). Another dataset there is refused unless allow_other_data;
    another architecture is refused always;
  * resume_from names a reference StyleGAN2(-ADA) .pkl, or a snapshot `corgigan convert` made of one ->
    transfer learning from a model trained elsewhere: its dataset is not compared, but its resolution,
    channels and labels must be the dataset's and its weight shapes those of the config's networks;
  * resume_from names an export folder (`corgigan export`: G_ema only) -> the same transfer.
  One rule for what such a file lacks, the reference's: every network it holds is copied, the others keep
  this run's own initialisation (train.seed), each with a warning. A file without D (an export, a Gs-only
  pickle) gives G and G_ema, and D starts fresh; one without a training G starts G from its G_ema.
"""

from __future__ import annotations

import copy
import logging
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from corgigan.stylegan2 import augment as augment_mod
from corgigan.stylegan2 import configs, distributed
from corgigan.stylegan2.atomic import atomic_path, remove_stale_temps
from corgigan.stylegan2.data import StreamSampler, ZipDataset, make_loader, same_dataset
from corgigan.stylegan2.devices import resolve_device
from corgigan.stylegan2.grid import tile
from corgigan.stylegan2.importer import check_transfer
from corgigan.stylegan2.load import load_networks
from corgigan.stylegan2.loss import StyleGAN2Loss, sample_latents, seeded
from corgigan.stylegan2.ops import build as ops_build
from corgigan.stylegan2.snapshot import (
    SnapshotError,
    architecture,
    differences,
    grid_name,
    latest_snapshot,
    list_snapshots,
    load_snapshot,
    make_state,
    restore_state,
    save_snapshot,
    snapshot_name,
)

log = logging.getLogger(__name__)

ADA_INTERVAL = 4          # minibatches between ADA adjustments
ADA_KIMG = 500            # p can cross [0, 1] in this many kimg
PL_DECAY = 0.01           # path-length running-mean decay
PL_BATCH_SHRINK = 2       # path-length reg on half the batch
DEFAULT_AUGPIPE = "bgc"    # the reference's default --augpipe
MOVING_BUFFERS = ("w_avg",)   # buffer names a training step changes (synced across ranks after each step)
# Seed purposes: independent streams for initialisation, training steps and the sample grid.
_SEED_INIT, _SEED_STEP, _SEED_GRID = 0, 1, 2

# Stats reported per tick: losses and scores are means over every sample of the tick.
STAT_NAMES = ("Loss/G/loss", "Loss/G/reg", "Loss/pl", "Loss/pl_length", "Loss/D/loss", "Loss/D/reg",
              "Loss/r1", "Loss/scores/real", "Loss/scores/fake", "Loss/signs/real")
# Loss values checked for NaN/inf after every step.
LOSS_NAMES = ("Loss/G/loss", "Loss/G/reg", "Loss/D/loss", "Loss/D/reg")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, bad batch split, missing CUDA ops); the message says why."""


@dataclass
class Phase:
    """One optimiser step of one network, run every `interval` minibatches with gain `interval`."""

    name: str
    module: torch.nn.Module
    opt: torch.optim.Optimizer
    interval: int


@dataclass
class Hooks:
    """Optional callbacks of the caller (rank 0 only): progress bars and metric loggers live there."""

    on_start: Callable[[dict[str, Any]], None] | None = None      # {"resumed", "nimg", "total_nimg", ...}
    on_progress: Callable[[int, int], None] | None = None          # (nimg, total_nimg) after each step
    on_tick: Callable[[int, dict[str, float]], None] | None = None  # (tick, stats) after each tick
    on_snapshot: Callable[[int, int, Path], None] | None = None     # (tick, nimg, grid PNG) after each one


@dataclass
class Progress:
    """Counters of a run (all stored in snapshots)."""

    nimg: int = 0
    batch_idx: int = 0
    tick: int = 0


@dataclass
class TickStats:
    """Sums and counts of per-sample stats since the last tick, kept on the device (no syncs)."""

    device: torch.device
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for name, values in stats.items():
            self.sums[name] = self.sums.get(name, 0) + values.float().sum()
            self.counts[name] = self.counts.get(name, 0) + values.numel()

    def reduce(self) -> dict[str, float]:
        """Means over this tick and every rank (names with no samples are left out)."""
        flat = torch.zeros(len(STAT_NAMES), 2, dtype=torch.float64, device=self.device)
        for i, name in enumerate(STAT_NAMES):
            if name in self.sums:
                flat[i, 0] = self.sums[name].double()
                flat[i, 1] = self.counts[name]
        distributed.all_reduce_sum_(flat)
        flat = flat.cpu()
        self.sums, self.counts = {}, {}
        return {n: float(flat[i, 0] / flat[i, 1]) for i, n in enumerate(STAT_NAMES) if flat[i, 1] > 0}


# ---------------------------------------------------------------------------------------------------------
# Set-up helpers


def make_optimizer(params: Iterator[torch.nn.Parameter], lr: float, betas: tuple[float, float],
                   reg_interval: int | None) -> torch.optim.Adam:
    """Adam with the lazy-regularisation correction: with reg every k steps, lr*c and beta**c, c=k/(k+1)."""
    if reg_interval:
        c = reg_interval / (reg_interval + 1)
        lr, betas = lr * c, (betas[0] ** c, betas[1] ** c)
    return torch.optim.Adam(params, lr=lr, betas=(float(betas[0]), float(betas[1])), eps=1e-8)


def make_phases(G: torch.nn.Module, D: torch.nn.Module, cfg: configs.TrainingConfig) -> list[Phase]:
    """The phases of a step in order: G main (+ reg), D main (+ reg), or the 'both' phases if not lazy."""
    phases = []
    for prefix, module, lr, interval, reg_on in (
        ("G", G, cfg.G_lr, cfg.G_reg_interval, cfg.pl_weight > 0),
        ("D", D, cfg.D_lr, cfg.D_reg_interval, cfg.r1_gamma > 0),
    ):
        lazy = bool(interval) and reg_on
        opt = make_optimizer(module.parameters(), lr, tuple(cfg.betas), interval if lazy else None)
        if lazy:
            phases += [Phase(f"{prefix}main", module, opt, 1),
                       Phase(f"{prefix}reg", module, opt, int(interval))]
        else:
            phases.append(Phase(f"{prefix}both", module, opt, 1))
    return phases


def frozen_d_parameters(D: torch.nn.Module, num_layers: int) -> list[torch.nn.Parameter]:
    """The parameters of D's first `num_layers` layers, counted as the reference's Freeze-D counts them:
    block by block from the highest resolution, each block's fromrgb (first block only), conv0, conv1 and
    skip (resnet). The epilogue and the label mapping are never frozen."""
    layers = [layer for block in D.blocks for layer in (block.fromrgb, block.conv0, block.conv1, block.skip)
              if layer is not None]
    if not 0 <= num_layers <= len(layers):
        raise TrainingError(f"freeze_d {num_layers}: D has {len(layers)} layers to freeze (its blocks' "
                            "fromrgb, conv0, conv1 and skip, from the highest resolution down)")
    return [p for layer in layers[:num_layers] for p in layer.parameters()]


def make_augment_pipe(mode: str, p: float, device: torch.device, name: str = "bgc") -> torch.nn.Module | None:
    """'ada' and 'fixed': the pipe `name` (augment.PIPES) starting at p; 'none': no augmentation."""
    if mode == "none":
        return None
    if mode not in ("ada", "fixed"):
        raise ValueError(f"augment must be ada, fixed or none, got {mode!r}")
    pipe = augment_mod.make_pipe(name).to(device).requires_grad_(False)
    pipe.p.fill_(p)
    return pipe


def ema_beta(batch: int, nimg: int, ema_kimg: float, ema_rampup: float | None) -> float:
    """Per-step decay of G_ema: half-life ema_kimg, shortened to nimg*rampup early in training."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, nimg * ema_rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(G_ema: torch.nn.Module, G: torch.nn.Module, beta: float) -> None:
    """G_ema <- beta * G_ema + (1 - beta) * G for parameters; buffers are copied."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        b_ema.copy_(b)


def grid_shape(resolution: int) -> tuple[int, int]:
    """Columns and rows of the sample grid: 8x8 up to 512 px, fewer above (at most 4096 px wide)."""
    cols = max(2, min(8, 4096 // resolution))
    return cols, cols


def save_image_grid(images: torch.Tensor, cols: int, path: Path) -> None:
    """Tile float images [N, C, H, W] in [-1, 1] into one PNG (black where the last row ends), atomically."""
    c = images.shape[1]
    arr = ((images.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    canvas = tile(arr.transpose(0, 2, 3, 1), cols)                      # [rows * H, cols * W, C]
    img = Image.fromarray(canvas[:, :, 0] if c == 1 else canvas, "L" if c == 1 else "RGB")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process: allocated GPU memory on CUDA, resident set size on CPU (GiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


class DatasetSubset(torch.utils.data.Dataset):
    """`size` images of a ZipDataset drawn by `seed` (the reference's --subset), mirrored if it is.

    Offers what the loop uses of a ZipDataset (index i + size is image i mirrored, as there).
    """

    def __init__(self, full: ZipDataset, size: int, seed: int):
        if not 0 < size <= full.num_images:
            raise TrainingError(f"subset {size}: the dataset holds {full.num_images} images")
        self.full = full
        # Sorted, so the images keep the zip's order; the draw depends only on the seed and the size.
        draw = np.random.default_rng([seed, full.num_images]).permutation(full.num_images)
        self.indices = np.sort(draw[:size])
        self.labels = full.labels[self.indices]
        self.mirror, self.resolution, self.num_channels = full.mirror, full.resolution, full.num_channels

    @property
    def num_images(self) -> int:
        """Distinct images in the subset (without the mirror)."""
        return len(self.indices)

    @property
    def label_dim(self) -> int:
        """Length of the label vector (0 without labels)."""
        return self.full.label_dim

    def __len__(self) -> int:
        return self.num_images * (2 if self.mirror else 1)

    def check_members(self) -> None:
        """Check the whole zip's members (a subset of a damaged zip is refused like the zip)."""
        self.full.check_members()

    def _full_index(self, index: int) -> int:
        mirrored, raw = divmod(index, self.num_images)
        return int(self.indices[raw]) + mirrored * self.full.num_images

    def image(self, index: int) -> np.ndarray:
        """Image `index` (mirror applied) as uint8 array [C, H, W]."""
        return self.full.image(self._full_index(index))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.full[self._full_index(index)]


# ---------------------------------------------------------------------------------------------------------
# Resume decision


@dataclass
class Start:
    """How a run begins: fresh, resuming `state` exactly, or from `state`'s weights only."""

    mode: str                        # "fresh" | "resume" | "transfer"
    state: dict[str, Any] | None = None
    reason: str = ""
    stale: list[Path] = field(default_factory=list)   # snapshots and grids of another run in run_dir


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


def resume_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between a snapshot's config dict and this run's, as decide_start compares them.

    batch_gpu only splits the batch, so it is left out: another GPU count resumes, and another batch_gpu
    continues the same training (same batch and hyperparameters; each pass draws its own latents, so not
    bit for bit). The minibatch-stddev group follows batch_gpu (make_config clamps it to the images of
    one pass), so a group that differs only because one side's was clamped to its batch_gpu is no
    difference either: paper256 at batch_gpu 8 has groups of 8, at batch_gpu 4 groups of 4.
    """
    if _group_follows_batch_gpu(stored, current):
        # Compare the rest: the stored config with this run's group.
        group = current["mbstd_group"]
        stored = dict(stored, mbstd_group=group, D_kwargs=dict(stored["D_kwargs"], mbstd_group_size=group))
    return differences(_without(stored, "batch_gpu"), _without(current, "batch_gpu"), "config.")


def _group_of(config: dict[str, Any]) -> Any:
    D_kwargs = config.get("D_kwargs")
    return D_kwargs.get("mbstd_group_size") if isinstance(D_kwargs, dict) else None


def _group_follows_batch_gpu(stored: dict[str, Any], current: dict[str, Any]) -> bool:
    """True when the two groups differ and the smaller one is its config's whole batch_gpu: both then
    come from one configured group clamped to each run's images per pass (the larger one unclamped, or
    clamped to its own larger batch_gpu)."""
    a, b = _group_of(stored), _group_of(current)
    if not (isinstance(a, int) and isinstance(b, int)) or a == b:
        return False
    if stored.get("mbstd_group") != a or current.get("mbstd_group") != b:
        return False   # not a config make_config wrote (the two records of the group disagree)
    small, small_cfg = (a, stored) if a < b else (b, current)
    return small == small_cfg.get("batch_gpu")


def _batch_follows_gpus(stored: dict[str, Any], current: dict[str, Any]) -> bool:
    """True when a refused resume may come from another train.gpus under a config (demo, auto) whose
    batch, gamma and EMA are formulas of the GPU count: the batch, or both gamma and EMA, changed."""
    if current.get("name") not in ("demo", "auto") or stored.get("name") != current.get("name"):
        return False
    changed = {k for k in ("batch", "r1_gamma", "ema_kimg") if stored.get(k) != current.get(k)}
    return "batch" in changed or {"r1_gamma", "ema_kimg"} <= changed


def decide_start(run_dir: Path, config: dict[str, Any], run: dict[str, Any], data_hash: str,
                 resume_from: str | Path | None, allow_other_data: bool,
                 data: dict[str, Any] | None = None, dataset_path: str | Path | None = None) -> Start:
    """Apply the resume rules (module docstring) and return how to start. Raises SnapshotError.

    `data` ({"resolution", "num_channels", "label_dim"} of the dataset) is what a model from elsewhere
    (a reference pickle, or a snapshot converted from one) must match. `dataset_path` lets a snapshot
    that recorded the older whole-file sha256 be verified against the zip (data.same_dataset).
    """
    latest = latest_snapshot(run_dir)
    stale: list[Path] = []
    reason = "no snapshot to resume"
    if latest is not None:
        state = load_snapshot(latest)
        diffs = resume_differences(state["config"], config) + differences(state["run"], run, "run.")
        other_data = not same_dataset(state["dataset"]["hash"], data_hash, dataset_path)
        if not diffs and (not other_data or allow_other_data):
            why = f"{latest.name} matches this run"
            if other_data:
                why += " (trained on another dataset; allow_other_data is set)"
            return Start("resume", state, why)
        if other_data:
            diffs.append(f"dataset: snapshot {state['dataset']['hash'][:12]}, now {data_hash[:12]}")
        reason = f"{latest.name} in {run_dir} belongs to another run, starting fresh: " + "; ".join(diffs)
        if _batch_follows_gpus(state["config"], config):
            reason += (f" (config {config['name']} derives the batch, gamma and EMA from the GPU count: set "
                       f"train.batch, train.gamma and train.ema_kimg to the snapshot's "
                       f"{state['config']['batch']}, {state['config']['r1_gamma']:g} and "
                       f"{state['config']['ema_kimg']:g} to resume it with another train.gpus)")
        log.warning("%s", reason)
        stale = [p for _, p in list_snapshots(run_dir)] + sorted(run_dir.glob("grid-*.png"))
    if resume_from:
        path = Path(resume_from)
        if not path.exists():
            raise SnapshotError(f"resume_from {path}: no such snapshot (set train.resume_from to an existing "
                                "snapshot file or folder, or to \"\")")
        try:
            # The one loader decides what the file is: a snapshot, a folder's newest one, a converted
            # snapshot or a reference pickle.
            loaded = load_networks(path, training_nets=True)
        except SnapshotError as e:
            raise type(e)(f"resume_from {e}") from e
        if loaded.from_elsewhere:
            # Fine-tuning a model trained elsewhere is the point, so its dataset is not compared; its image
            # format and weight shapes must fit this run.
            check_transfer(loaded.spec, config, data, str(loaded.path))
            if loaded.snapshot is not None:
                return Start("transfer", loaded.snapshot, f"weights of {loaded.path} (converted from "
                             f"{loaded.snapshot['run']['imported_from']}); {reason}", stale)
            nets = loaded.states          # G_ema always; G and D when the file holds them
            if "G" not in nets:
                log.warning("%s holds no training G: starting it from G_ema", path)
            if "D" not in nets:
                log.warning("%s holds no discriminator: D starts from this run's own initialisation "
                            "(train.seed), as the reference's resume leaves a network the file lacks", path)
            weights = {"G": nets.get("G", nets["G_ema"]), **({"D": nets["D"]} if "D" in nets else {}),
                       "G_ema": nets["G_ema"]}
            what = "the export" if loaded.source == "export" else "the reference pickle"
            return Start("transfer", weights, f"weights of {what} {path}; {reason}", stale)
        path, state = loaded.path, loaded.snapshot
        diffs = differences(architecture(state["config"]), architecture(config), "config.")
        if diffs:
            raise SnapshotError(f"resume_from {path}: snapshot of another network config, its weights do not "
                                "fit: " + "; ".join(diffs))
        if not same_dataset(state["dataset"]["hash"], data_hash, dataset_path) and not allow_other_data:
            raise SnapshotError(f"resume_from {path}: trained on another dataset "
                                f"({state['dataset']['hash'][:12]}, now {data_hash[:12]}); set "
                                "train.allow_other_data: true to fine-tune it on this one")
        return Start("transfer", state, f"weights of {path}; {reason}", stale)
    return Start("fresh", None, reason, stale)


# ---------------------------------------------------------------------------------------------------------
# The loop


class _Trainer:
    """State of one training run; `training_loop` is the public entry point."""

    def __init__(self, dataset: ZipDataset, data_hash: str, cfg: configs.TrainingConfig, run: dict[str, Any],
                 device: torch.device, rank: int, world: int):
        self.dataset, self.data_hash, self.cfg, self.run = dataset, data_hash, cfg, run
        self.device, self.rank, self.world = device, rank, world
        self.seed = int(run["seed"])
        if cfg.batch % (cfg.batch_gpu * world):
            raise TrainingError(f"batch {cfg.batch} is not a multiple of batch_gpu {cfg.batch_gpu} "
                                f"x {world} processes")
        self.rounds = cfg.batch // (cfg.batch_gpu * world)
        self.num_chunks = cfg.batch // cfg.batch_gpu
        init_seed = seeded(self.seed, _SEED_INIT)
        # Snapshots store every global generator's state (capture_rng): seed numpy's and python's too,
        # or two identical runs write snapshots whose bytes differ.
        torch.manual_seed(init_seed)
        np.random.seed(init_seed % 2**32)
        random.seed(init_seed)
        G, D = configs.build_networks(configs.network_spec(cfg, dataset.num_channels, dataset.label_dim))
        assert D is not None    # a config's spec always has a D
        self.G = G.to(device).train().requires_grad_(False)
        self.D = D.to(device).train().requires_grad_(False)
        self.G_ema = copy.deepcopy(self.G).eval()
        self.augment_pipe = make_augment_pipe(run["augment"], run["augment_p"], device,
                                              run.get("augpipe", DEFAULT_AUGPIPE))
        self.loss = StyleGAN2Loss(self.G, self.D, self.augment_pipe, r1_gamma=cfg.r1_gamma,
                                  style_mixing_prob=cfg.style_mixing_prob, pl_weight=cfg.pl_weight,
                                  pl_batch_shrink=PL_BATCH_SHRINK, pl_decay=PL_DECAY)
        self.loss.pl_mean = torch.zeros([], device=device)
        self.phases = make_phases(self.G, self.D, cfg)
        self.frozen_d = frozen_d_parameters(self.D, int(run.get("freeze_d", 0)))
        self.augment_p = float(run["augment_p"]) if self.augment_pipe is not None else 0.0
        self.ada_signs = torch.zeros(2, dtype=torch.float64, device=device)  # [sum, count] since last adjust
        self.progress = Progress()
        self.tick_stats = TickStats(device)
        labels = dataset.labels
        self._label_fn = (None if dataset.label_dim == 0 else
                          lambda idx: torch.from_numpy(labels[idx.numpy() % len(labels)]))
        # Identical start on every rank, whatever the seeding did.
        distributed.broadcast_(self._synced_tensors())
        # The only buffers a step changes: w_avg, moved on rank 0's first chunk. The resampling filters
        # and constant noise never change, so re-sending them every step (megabytes at 1024 px) is waste.
        self._moving_buffers = [b for m in (self.G, self.D) for name, b in m.named_buffers()
                                if name.rsplit(".", 1)[-1] in MOVING_BUFFERS]

    def _synced_tensors(self) -> list[torch.Tensor]:
        return [t for m in (self.G, self.D, self.G_ema) for t in (*m.parameters(), *m.buffers())]

    # -- snapshots ------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to resume exactly (snapshot.make_state)."""
        ds = self.dataset
        return make_state(
            config=configs.config_to_dict(self.cfg), run=self.run,
            dataset={"hash": self.data_hash, "resolution": ds.resolution, "num_channels": ds.num_channels,
                     "label_dim": ds.label_dim, "num_images": ds.num_images},
            progress=vars(self.progress),
            networks={"G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict()},
            optimizers={name: opt.state_dict() for name, opt in self._optimizers().items()},
            augment_p=self.augment_p, ada_signs=self.ada_signs.tolist(), pl_mean=float(self.loss.pl_mean))

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": next(p.opt for p in self.phases if p.module is self.G),
                "D": next(p.opt for p in self.phases if p.module is self.D)}

    def load(self, start: Start) -> None:
        """Load a snapshot: everything for 'resume', the networks' weights for 'transfer' (all three, or G
        and G_ema from an export, whose D stays as this run initialised it)."""
        assert start.state is not None
        nets = {k: m for k, m in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)) if k in start.state}
        counters = restore_state(start.state, nets,
                                 self._optimizers() if start.mode == "resume" else None)
        if counters is None:
            return
        self.augment_p = counters.augment_p
        if self.augment_pipe is not None:
            self.augment_pipe.p.fill_(self.augment_p)
        self.ada_signs = torch.tensor(counters.ada_signs, dtype=torch.float64, device=self.device)
        self.loss.pl_mean = torch.tensor(counters.pl_mean, dtype=torch.float32, device=self.device)
        self.progress = Progress(counters.nimg, counters.batch_idx, counters.tick)

    # -- one step -------------------------------------------------------------------------------------
    def step(self, reals: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Run every phase due at this minibatch; return the step's loss sums (for the NaN check)."""
        b = self.progress.batch_idx
        step_losses: dict[str, torch.Tensor] = {}
        real = [(img.to(self.device, non_blocking=True).float() / 127.5 - 1,  # [N, C, H, W] in [-1, 1]
                 c.to(self.device, non_blocking=True)) for img, c in reals]
        for phase_idx, phase in enumerate(self.phases):
            if b % phase.interval:
                continue
            phase.module.requires_grad_(True)
            if phase.module is self.D:
                for p in self.frozen_d:   # Freeze-D: no gradient, so Adam leaves them as they are
                    p.requires_grad_(False)
            phase.opt.zero_grad(set_to_none=True)
            pl_sum = torch.zeros(2, dtype=torch.float64, device=self.device)
            has_pl = False
            for r in range(self.rounds):
                chunk = self.rank * self.rounds + r
                torch.manual_seed(seeded(self.seed, _SEED_STEP, b, phase_idx, chunk))
                z, c = sample_latents(self.cfg.batch_gpu, self.G.z_dim, self._label_fn,
                                      self.dataset.num_images, self.device)
                # w_avg moves once per step (chunk 0, broadcast below), however the batch is split.
                stats = self.loss.accumulate_gradients(phase.name, real[r][0], real[r][1], z, c,
                                                       gain=phase.interval, update_emas=chunk == 0)
                self.tick_stats.add(stats)
                for name in LOSS_NAMES:
                    if name in stats:
                        step_losses[name] = step_losses.get(name, 0) + stats[name].double().sum()
                if "Loss/signs/real" in stats:
                    s = stats["Loss/signs/real"]
                    self.ada_signs += torch.stack([s.double().sum(), torch.tensor(s.numel(), device=s.device,
                                                                                   dtype=torch.float64)])
                if "Loss/pl_length" in stats:
                    has_pl = True
                    pl = stats["Loss/pl_length"]
                    pl_sum += torch.stack([pl.double().sum(), torch.tensor(pl.numel(), device=pl.device,
                                                                           dtype=torch.float64)])
            distributed.reduce_gradients_(phase.module.parameters(), self.num_chunks)
            phase.opt.step()
            phase.module.requires_grad_(False)
            if has_pl:
                distributed.all_reduce_sum_(pl_sum)
                self.loss.update_pl_mean((pl_sum[0] / pl_sum[1]).float())
        distributed.broadcast_(self._moving_buffers)
        return step_losses

    def after_step(self) -> None:
        """Advance counters, update G_ema and, every ADA_INTERVAL minibatches, ADA's p."""
        cfg = self.cfg
        update_ema(self.G_ema, self.G, ema_beta(cfg.batch, self.progress.nimg, cfg.ema_kimg, cfg.ema_rampup))
        self.progress.nimg += cfg.batch
        self.progress.batch_idx += 1
        if self.run["augment"] == "ada" and self.progress.batch_idx % ADA_INTERVAL == 0:
            signs = distributed.all_reduce_sum_(self.ada_signs.clone())
            if signs[1] > 0:
                rt = float(signs[0] / signs[1])
                self.augment_p = augment_mod.ada_adjust(self.augment_p, rt, self.run["ada_target"],
                                                        cfg.batch * ADA_INTERVAL, ADA_KIMG)
                self.augment_pipe.p.fill_(self.augment_p)
            self.ada_signs.zero_()

    def check_finite(self, step_losses: dict[str, torch.Tensor]) -> None:
        """Stop with the loss name and kimg when any loss of the step is NaN or infinite (on any rank)."""
        names = [n for n in LOSS_NAMES if n in step_losses]
        if not names:
            return
        values = torch.stack([step_losses[n] for n in names])
        bad = distributed.all_reduce_sum_((~torch.isfinite(values)).double())
        if bad.any():
            which = ", ".join(n for n, flag in zip(names, bad.tolist()) if flag)
            raise TrainingError(f"non-finite loss {which} at kimg {self.progress.nimg / 1000:.3f} "
                                f"(minibatch {self.progress.batch_idx}); lower the learning rate or "
                                "r1_gamma, or resume from the previous snapshot")

    # -- outputs --------------------------------------------------------------------------------------
    def grid_latents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed latents (and labels) of the sample grid: the same for every snapshot of a run."""
        cols, rows = grid_shape(self.dataset.resolution)
        gen = torch.Generator().manual_seed(seeded(self.seed, _SEED_GRID))
        z = torch.randn(cols * rows, self.G.z_dim, generator=gen)
        if self.dataset.label_dim == 0:
            return z, torch.zeros(len(z), 0)
        idx = torch.randint(self.dataset.num_images, (len(z),), generator=gen)
        return z, self._label_fn(idx)

    @torch.no_grad()
    def save_grid(self, path: Path) -> None:
        z, c = self.grid_latents()
        images = [self.G_ema(zb.to(self.device), cb.to(self.device), noise_mode="const").cpu()
                  for zb, cb in zip(z.split(self.cfg.batch_gpu), c.split(self.cfg.batch_gpu))]
        save_image_grid(torch.cat(images), grid_shape(self.dataset.resolution)[0], path)

    def save_reals(self, path: Path) -> None:
        cols, rows = grid_shape(self.dataset.resolution)
        n = min(cols * rows, self.dataset.num_images)
        images = torch.stack([torch.from_numpy(self.dataset.image(i)) for i in range(n)])
        save_image_grid(images.float() / 127.5 - 1, cols, path)


def _cuda_setup(device: torch.device, require_cuda_ops: bool, allow_tf32: bool = False) -> None:
    # TF32 rounds float32 matmul/conv inputs to 10 mantissa bits on Ampere and later: faster, less exact.
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    torch.backends.cudnn.benchmark = True
    ops_build.set_require_cuda_ops(require_cuda_ops)
    status = ops_build.cuda_ops_status()
    for op, s in sorted(status.items()):
        log.info("CUDA op %s: %s", op, s)
    missing = {op: s for op, s in status.items() if s != "built"}
    if require_cuda_ops and missing:
        raise TrainingError(f"require_cuda_ops is set but these ops are not built: {missing}")
    log.info("device %s (%s), TF32 %s", device, torch.cuda.get_device_name(device),
             "on" if allow_tf32 else "off")


def training_loop(
    dataset_path: str | Path,          # the dataset zip (PNGs + dataset.json)
    run_dir: str | Path,               # snapshots, grids and reals.png are written here
    cfg: configs.TrainingConfig,       # networks and hyperparameters (configs.make_config)
    kimg: float,                       # stop after this many thousand real images
    snapshot_kimg: float,              # snapshot + grid every this many kimg, and at the end
    seed: int = 0,                     # the one seed of the run
    augment: str = "ada",              # ada | fixed | none
    augment_p: float = 0.0,            # initial p (the fixed p with augment fixed)
    ada_target: float = 0.6,           # target of E[sign(D(real))]
    mirror: bool = False,              # x-flipped copies double the dataset
    workers: int = 2,                  # DataLoader worker processes (0: load in the main process)
    device: str = "auto",              # auto | cpu | cuda | cuda:N
    require_cuda_ops: bool = False,    # on CUDA: stop when a fused op cannot be built
    allow_tf32: bool = False,          # on CUDA: TF32 float32 matmul/conv (the reference's default: off)
    resume_from: str | Path | None = None,   # transfer learning: start from this snapshot's (or reference
                                             # StyleGAN2(-ADA) .pkl's) weights
    allow_other_data: bool = False,    # accept snapshots trained on another dataset
    freeze_d: int = 0,                 # Freeze-D: keep D's first N layers fixed (the reference's --freezed)
    augpipe: str = DEFAULT_AUGPIPE,    # augmentations ADA applies (augment.PIPES; the reference's --augpipe)
    subset: int | None = None,         # train on this many of the dataset's images, drawn by the seed
    tick_kimg: float = 4.0,            # stats are reported every this many kimg
    keep_snapshots: int = 0,           # keep only the newest N snapshots (0: keep all)
    hooks: Hooks | None = None,        # progress and metric callbacks (rank 0)
) -> Path:
    """Train (or resume) a StyleGAN2-ADA run; return the path of the newest snapshot."""
    hooks = hooks or Hooks()
    run_dir = Path(run_dir)
    if round(kimg * 1000) < 1:   # the loop would end before its first snapshot
        raise TrainingError(f"kimg {kimg:g}: train at least one image (kimg >= 0.001)")
    info = distributed.current()
    dev = resolve_device(device, info.local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        _cuda_setup(dev, require_cuda_ops, allow_tf32)
    dataset = ZipDataset(dataset_path, mirror=mirror, check_members=False)   # checked below if new
    if dataset.resolution != cfg.resolution:
        raise TrainingError(f"{dataset_path}: images are {dataset.resolution} px but config {cfg.name} "
                            f"is for {cfg.resolution} px")
    data_hash = dataset.identity   # from the zip's directory: a resume reads no image before training
    run = {"seed": int(seed), "augment": augment, "augment_p": float(augment_p),
           "ada_target": float(ada_target), "mirror": bool(mirror),
           "resume_from": str(resume_from or "")}
    if freeze_d:  # only when set, so snapshots of runs without it keep resuming
        run["freeze_d"] = int(freeze_d)
    if augpipe != DEFAULT_AUGPIPE:   # likewise
        run["augpipe"] = augpipe
    if subset is not None and subset < dataset.num_images:   # a cap above the size is no cap
        run["subset"] = int(subset)
        dataset = DatasetSubset(dataset, subset, int(seed))
        log.info("training on %d of the %d images (subset)", subset, dataset.full.num_images)
    trainer = _Trainer(dataset, data_hash, cfg, run, dev, info.rank, info.world_size)
    start = decide_start(run_dir, configs.config_to_dict(cfg), run, data_hash, resume_from, allow_other_data,
                         {"resolution": dataset.resolution, "num_channels": dataset.num_channels,
                          "label_dim": dataset.label_dim}, dataset_path)
    log.info("start: %s (%s)", start.mode, start.reason)
    # A run resumed on the data it was trained on checked those members when it began; anything else
    # checks every member's header now, before stale snapshots go, so a bad zip stops the run here.
    resumed = start.state["dataset"]["hash"] if start.mode == "resume" and start.state else None
    if resumed is None or not same_dataset(resumed, data_hash, dataset_path):
        dataset.check_members()
    if start.state is not None:
        trainer.load(start)
    distributed.barrier()  # every rank has read run_dir before rank 0 removes anything
    if info.is_main:
        remove_stale_temps(run_dir)
        for p in start.stale:
            log.warning("removing %s of another run", p)
            p.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    total = round(kimg * 1000)
    prog = trainer.progress
    if info.is_main:
        if start.mode != "resume":
            trainer.save_reals(run_dir / "reals.png")
        if hooks.on_start:
            hooks.on_start({"resumed": start.mode == "resume", "mode": start.mode, "nimg": prog.nimg,
                            "total_nimg": total, "tick": prog.tick})
    if prog.nimg >= total:
        last = latest_snapshot(run_dir)
        if last is not None:
            log.info("already trained %.3f kimg of %.3f", prog.nimg / 1000, kimg)
            return last
    log.info("training %s at %d px: batch %d (%d per step and process, %d rounds, %d processes), "
             "%.3f -> %.3f kimg", cfg.name, cfg.resolution, cfg.batch, cfg.batch_gpu, trainer.rounds,
             info.world_size, prog.nimg / 1000, kimg)
    sampler = StreamSampler(len(dataset), trainer.seed, cfg.batch, cfg.batch_gpu, info.rank, info.world_size,
                            start_step=prog.batch_idx)
    loader = make_loader(dataset, sampler, workers, pin_memory=dev.type == "cuda")
    tick_n, snap_n = max(int(tick_kimg * 1000), 1), max(int(snapshot_kimg * 1000), 1)
    tick_start_time, tick_start_nimg = time.perf_counter(), prog.nimg
    last_path = latest_snapshot(run_dir) if start.mode == "resume" else None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    while prog.nimg < total:
        reals = [next(loader) for _ in range(trainer.rounds)]
        step_losses = trainer.step(reals)
        trainer.check_finite(step_losses)
        before = prog.nimg
        trainer.after_step()
        done = prog.nimg >= total
        if info.is_main and hooks.on_progress:
            hooks.on_progress(min(prog.nimg, total), total)
        if done or prog.nimg // tick_n > before // tick_n:
            prog.tick += 1
            stats = trainer.tick_stats.reduce()
            seconds = time.perf_counter() - tick_start_time
            shown = prog.nimg - tick_start_nimg
            stats.update({
                "Progress/kimg": prog.nimg / 1000,
                "ADA/p": trainer.augment_p,
                "ADA/rt": stats.get("Loss/signs/real", float("nan")),
                "Timing/sec_per_kimg": seconds / max(shown / 1000, 1e-9),
                "Timing/images_per_s": shown / max(seconds, 1e-9),
                "Resources/peak_memory_gb": peak_memory_gb(dev),
            })
            log.info("tick %d kimg %.3f: G %.3f D %.3f p %.3f, %.1f s/kimg", prog.tick, prog.nimg / 1000,
                     stats.get("Loss/G/loss", float("nan")), stats.get("Loss/D/loss", float("nan")),
                     trainer.augment_p, stats["Timing/sec_per_kimg"])
            if info.is_main and hooks.on_tick:
                hooks.on_tick(prog.tick, stats)
            tick_start_time, tick_start_nimg = time.perf_counter(), prog.nimg
        if done or prog.nimg // snap_n > before // snap_n:
            if info.is_main:
                last_path = run_dir / snapshot_name(prog.nimg)
                save_snapshot(last_path, trainer.state())
                trainer.save_grid(run_dir / grid_name(prog.nimg))
                log.info("snapshot %s", last_path)
                if hooks.on_snapshot:
                    hooks.on_snapshot(prog.tick, prog.nimg, run_dir / grid_name(prog.nimg))
                _prune(run_dir, keep_snapshots)
            distributed.barrier()
            last_path = run_dir / snapshot_name(prog.nimg)
    assert last_path is not None
    return last_path


def _prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` snapshots (grids stay: they are small and show progress)."""
    if keep <= 0:
        return
    for _, path in list_snapshots(run_dir)[:-keep]:
        log.info("removing old snapshot %s (keep_snapshots %d)", path.name, keep)
        path.unlink()
