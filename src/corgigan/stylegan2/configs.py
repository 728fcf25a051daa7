"""Training configurations: the StyleGAN2-ADA reference presets, the resolution-based "auto" rule, and
a tiny CPU "demo".

A preset is plain code that fills one frozen TrainingConfig; snapshots store it as plain data
(config_to_dict) and rebuild the networks from it (config_from_dict + build_networks).

A NetworkSpec is what fixes a pair of networks (image format and the Generator/Discriminator keywords),
whatever it came from: a training config (network_spec), a snapshot, or a reference pickle's stored
settings. build_networks(spec) is the one way every caller turns one into networks.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from corgigan.stylegan2.networks import Discriminator, Generator

CONFIG_NAMES = ("demo", "auto", "stylegan2", "paper256", "paper512", "paper1024", "cifar")

# Shared by every preset (the reference's values).
NUM_FP16_RES = 4          # float16 in the 4 highest resolutions (CUDA only)
CONV_CLAMP = 256          # activations clamped to +-256
CHANNEL_MAX = 512
PL_WEIGHT = 2.0           # path-length regularisation weight
STYLE_MIXING_PROB = 0.9
G_REG_INTERVAL = 4        # lazy path-length regularisation every 4 minibatches
D_REG_INTERVAL = 16       # lazy R1 every 16 minibatches
BETAS = (0.0, 0.99)       # Adam


# What a network description may ask for (inclusive). The reference's models (up to 1024 px, 512-d latents,
# 8 mapping layers, 512 feature maps) sit well inside. A stored description outside these is damaged or
# forged: building it would fail deep inside torch, or allocate gigabytes before anything is checked.
SIZE_LIMITS: dict[str, tuple[int, int]] = {
    "resolution": (8, 4096),          # also a power of two
    "img_channels": (1, 4),
    "c_dim": (0, 65536),
    "z_dim": (1, 4096),
    "w_dim": (1, 4096),
    "mapping_layers": (1, 32),
    "label_mapping_layers": (0, 32),  # the discriminator's label mapping; 0 where it has none
    "channel_base": (1, 1 << 20),
    "channel_max": (1, 4096),
    "num_fp16_res": (0, 16),
    "mbstd_group_size": (1, 1024),
    "mbstd_num_channels": (0, 64),
}


def check_size(kind: str, value: Any, name: str | None = None) -> int:
    """`value` if it is an integer within SIZE_LIMITS[kind] (a resolution also a power of two); else a
    ValueError naming it as `name` (default: `kind`)."""
    lo, hi = SIZE_LIMITS[kind]
    name = name or kind
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} = {value!r} is not an integer")
    if not lo <= value <= hi:
        raise ValueError(f"{name} = {value} is outside {lo}..{hi}")
    if kind == "resolution" and value & (value - 1):
        raise ValueError(f"{name} = {value} is not a power of two")
    return value


# (kwargs dict, key path, SIZE_LIMITS kind) of the sizes a config's network keywords carry; the required
# ones are the keywords our Generator and Discriminator cannot do without.
_KWARG_SIZES = (
    ("G_kwargs", ("z_dim",), "z_dim", True),
    ("G_kwargs", ("w_dim",), "w_dim", True),
    ("G_kwargs", ("mapping_kwargs", "num_layers"), "mapping_layers", False),
    ("G_kwargs", ("synthesis_kwargs", "channel_base"), "channel_base", False),
    ("G_kwargs", ("synthesis_kwargs", "channel_max"), "channel_max", False),
    ("G_kwargs", ("synthesis_kwargs", "num_fp16_res"), "num_fp16_res", False),
    ("D_kwargs", ("channel_base",), "channel_base", False),
    ("D_kwargs", ("channel_max",), "channel_max", False),
    ("D_kwargs", ("num_fp16_res",), "num_fp16_res", False),
    ("D_kwargs", ("mbstd_group_size",), "mbstd_group_size", False),
    ("D_kwargs", ("mbstd_num_channels",), "mbstd_num_channels", False),
    ("D_kwargs", ("mapping_kwargs", "num_layers"), "mapping_layers", False),
)


def check_network_kwargs(G_kwargs: dict, D_kwargs: dict) -> None:
    """Raise ValueError naming the first size in G_kwargs / D_kwargs outside SIZE_LIMITS (or missing)."""
    kwargs = {"G_kwargs": G_kwargs, "D_kwargs": D_kwargs}
    for section, keys, kind, required in _KWARG_SIZES:
        name = ".".join((section, *keys))
        value: Any = kwargs[section]
        for depth, key in enumerate(keys):
            if value is None:          # an absent sub-dict (mapping_kwargs None): the network's default
                break
            if not isinstance(value, dict):
                raise ValueError(f"{'.'.join((section, *keys[:depth]))} is a {type(value).__name__}, "
                                 "not a dict")
            value = value.get(key)
        if value is None:
            if required:
                raise ValueError(f"{name} is missing")
            continue
        check_size(kind, value, name)


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that defines a training run's networks and optimisation (not its data or length)."""

    name: str                      # preset name (CONFIG_NAMES)
    resolution: int                # image side the networks are built for
    batch: int                     # images per step, over all GPUs
    batch_gpu: int                 # images per GPU per pass; batch / gpus / batch_gpu accumulation rounds
    mbstd_group: int               # minibatch-stddev group size (also in D_kwargs)
    G_kwargs: dict                 # Generator keywords except c_dim, img_resolution, img_channels
    D_kwargs: dict                 # Discriminator keywords except c_dim, img_resolution, img_channels
    G_lr: float
    D_lr: float
    betas: tuple[float, float]     # Adam betas
    r1_gamma: float                # R1 weight
    ema_kimg: float                # half-life of G_ema in thousands of images
    ema_rampup: float | None       # G_ema half-life at most this fraction of the images seen; None: off
    pl_weight: float               # path-length regularisation weight; 0: off
    style_mixing_prob: float       # chance that a generated sample mixes two latents; 0: off
    G_reg_interval: int | None     # lazy path-length regularisation period; None: every step, no lazy scaling
    D_reg_interval: int            # lazy R1 period


@dataclass(frozen=True)
class _Spec:
    """One row of the reference table."""

    ref_gpus: int        # GPUs the batch_gpu of the preset was chosen for
    batch: int
    mbstd: int
    fmaps: float         # channel_base = fmaps * 32768
    lr: float
    gamma: float
    ema_kimg: float
    ema_rampup: float | None
    map_layers: int


# ref_gpus, batch, mbstd, fmaps, lr, gamma, ema kimg, ema rampup, mapping layers
_PRESETS = {
    "stylegan2": _Spec(8, 32, 4, 1, 0.002, 10, 10, None, 8),
    "paper256": _Spec(8, 64, 8, 0.5, 0.0025, 1, 20, None, 8),
    "paper512": _Spec(8, 64, 8, 1, 0.0025, 0.5, 20, None, 8),
    "paper1024": _Spec(8, 32, 4, 1, 0.002, 2, 10, None, 8),
    "cifar": _Spec(2, 64, 32, 1, 0.0025, 0.01, 500, 0.05, 2),
}

# The demo: small enough that a G+D step with regularisation at 64 px, batch 8 takes a fraction of a
# second on 2 CPU cores, large enough to learn colours and coarse shapes within a few kimg.
DEMO_LATENT = 64
DEMO_CHANNEL_BASE = 1024
DEMO_CHANNEL_MAX = 64
DEMO_BATCH_GPU = 8


def _demo_spec(resolution: int, gpus: int) -> _Spec:
    """The demo follows the auto formulas at a batch of 8 per GPU."""
    batch = DEMO_BATCH_GPU * gpus
    gamma = 0.0002 * resolution**2 / batch
    return _Spec(ref_gpus=gpus, batch=batch, mbstd=4, fmaps=0, lr=0.0025, gamma=gamma,
                 ema_kimg=batch * 10 / 32, ema_rampup=0.05, map_layers=2)


def _auto_spec(resolution: int, gpus: int) -> _Spec:
    """The reference's "auto" rule: batch, group, width, lr, gamma and EMA from resolution and GPUs."""
    batch = max(min(gpus * min(4096 // resolution, 32), 64), gpus)
    return _Spec(
        ref_gpus=gpus,
        batch=batch,
        mbstd=min(batch // gpus, 4),
        fmaps=1 if resolution >= 512 else 0.5,
        lr=0.002 if resolution >= 1024 else 0.0025,
        gamma=0.0002 * resolution**2 / batch,
        ema_kimg=batch * 10 / 32,
        ema_rampup=0.05,
        map_layers=2,
    )


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return next(d for d in range(min(n, cap), 0, -1) if n % d == 0)


@dataclass(frozen=True)
class Knobs:
    """A user's changes to a preset (params.yaml `train:`); None keeps the preset's own value.

    Each is one of the reference's command-line flags (StyleGAN2-ADA / StyleGAN3 train.py, in brackets).
    """

    batch_gpu: int | None = None            # images per GPU per pass [--batch-gpu]; divides batch / gpus
    r1_gamma: float | None = None           # R1 weight [--gamma]
    G_lr: float | None = None               # generator learning rate [--glr]
    D_lr: float | None = None               # discriminator learning rate [--dlr]
    channel_base: int | None = None         # feature maps: min(channel_base / res, channel_max) [--cbase]
    channel_max: int | None = None          # [--cmax]
    mapping_layers: int | None = None       # mapping network depth [--map-depth]
    mbstd_group: int | None = None          # minibatch-stddev group size [--mbstd-group]
    num_fp16_res: int | None = None         # float16 in this many highest resolutions; 0: [--fp32]
    ema_kimg: float | None = None           # G_ema half-life in kimg [--ema]
    ema_rampup: float | None = None         # G_ema half-life ramp-up as a fraction of images seen; 0: off
    pl_weight: float | None = None          # path-length regularisation weight; 0: off [--pl-weight]
    style_mixing_prob: float | None = None  # style-mixing probability; 0: off [--style-mixing]


def make_config(name: str, resolution: int, gpus: int = 1, batch: int | None = None,
                knobs: Knobs | None = None) -> TrainingConfig:
    """Build the named preset for images of `resolution` on `gpus` GPUs; batch None keeps the preset's.

    batch_gpu follows the reference: the preset's batch / ref_gpus (so one GPU accumulates gradients over
    several rounds), capped by the per-GPU batch; an explicit batch sets batch_gpu = batch / gpus, and
    knobs.batch_gpu sets it outright. The minibatch-stddev group follows batch_gpu (a group is drawn from
    one GPU's images) unless knobs.mbstd_group sets it. `knobs` then replaces the preset's values.
    """
    knobs = knobs or Knobs()
    if name not in CONFIG_NAMES:
        raise ValueError(f"unknown training config {name!r}; choose one of {', '.join(CONFIG_NAMES)}")
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    if batch is not None and batch <= 0:
        raise ValueError(f"batch must be > 0 (or None: the config's own), got {batch}")

    if name == "demo":
        spec = _demo_spec(resolution, gpus)
    elif name == "auto":
        spec = _auto_spec(resolution, gpus)
    else:
        spec = _PRESETS[name]

    total = batch or spec.batch
    if total % gpus:
        raise ValueError(f"batch {total} does not split evenly over {gpus} GPUs; pass a multiple of {gpus}")
    per_gpu = total // gpus
    batch_gpu = per_gpu if batch else _largest_divisor_at_most(per_gpu, max(spec.batch // spec.ref_gpus, 1))
    if knobs.batch_gpu is not None:
        if knobs.batch_gpu <= 0 or per_gpu % knobs.batch_gpu:
            raise ValueError(f"batch_gpu {knobs.batch_gpu} does not divide the {per_gpu} images each of "
                             f"{gpus} GPU(s) takes per step (batch {total}); pick a divisor of {per_gpu}")
        batch_gpu = knobs.batch_gpu
    mbstd_group = min(spec.mbstd, batch_gpu) if knobs.mbstd_group is None else knobs.mbstd_group
    if mbstd_group > batch_gpu:
        raise ValueError(f"mbstd_group {mbstd_group} is larger than batch_gpu {batch_gpu}: a group is drawn "
                         "from one GPU's images; lower mbstd_group or raise batch_gpu")

    if name == "demo":
        latent, channel_base, channel_max = DEMO_LATENT, DEMO_CHANNEL_BASE, DEMO_CHANNEL_MAX
        num_fp16_res = 0  # the demo targets the CPU, which always computes in float32
    else:
        latent, channel_base, channel_max = 512, int(spec.fmaps * 32768), CHANNEL_MAX
        num_fp16_res = NUM_FP16_RES
    channel_base = _knob(knobs.channel_base, channel_base)
    channel_max = _knob(knobs.channel_max, channel_max)
    num_fp16_res = _knob(knobs.num_fp16_res, num_fp16_res)
    map_layers = _knob(knobs.mapping_layers, spec.map_layers)
    for kind, value in (("channel_base", channel_base), ("channel_max", channel_max),
                        ("num_fp16_res", num_fp16_res), ("mapping_layers", map_layers),
                        ("mbstd_group_size", mbstd_group)):
        check_size(kind, value, "mbstd_group" if kind == "mbstd_group_size" else kind)
    G_kwargs = {
        "z_dim": latent,
        "w_dim": latent,
        "mapping_kwargs": {"num_layers": map_layers},
        "synthesis_kwargs": {"channel_base": channel_base, "channel_max": channel_max,
                             "num_fp16_res": num_fp16_res, "conv_clamp": CONV_CLAMP},
    }
    D_kwargs = {
        "channel_base": channel_base,
        "channel_max": channel_max,
        "num_fp16_res": num_fp16_res,
        "conv_clamp": CONV_CLAMP,
        "mbstd_group_size": mbstd_group,
        "mbstd_num_channels": 1,
        "architecture": "orig" if name == "cifar" else "resnet",
    }
    plain = name == "cifar"  # cifar: no path-length regularisation and no style mixing
    ema_rampup = spec.ema_rampup if knobs.ema_rampup is None else (knobs.ema_rampup or None)  # 0: off
    return TrainingConfig(
        name=name, resolution=resolution, batch=total, batch_gpu=batch_gpu, mbstd_group=mbstd_group,
        G_kwargs=G_kwargs, D_kwargs=D_kwargs, G_lr=_knob(knobs.G_lr, spec.lr),
        D_lr=_knob(knobs.D_lr, spec.lr), betas=BETAS, r1_gamma=_knob(knobs.r1_gamma, spec.gamma),
        ema_kimg=_knob(knobs.ema_kimg, spec.ema_kimg),
        ema_rampup=ema_rampup, pl_weight=_knob(knobs.pl_weight, 0.0 if plain else PL_WEIGHT),
        style_mixing_prob=_knob(knobs.style_mixing_prob, 0.0 if plain else STYLE_MIXING_PROB),
        G_reg_interval=G_REG_INTERVAL, D_reg_interval=D_REG_INTERVAL,
    )


def _knob(value: Any, preset: Any) -> Any:
    """The user's value when set, else the preset's."""
    return preset if value is None else value


@dataclass(frozen=True)
class NetworkSpec:
    """What fixes a pair of networks: image format and our Generator/Discriminator keywords."""

    resolution: int                # image side
    img_channels: int              # 3 for RGB
    c_dim: int                     # label dimensions; 0: unconditional
    G_kwargs: dict                 # Generator keywords except c_dim, img_resolution, img_channels
    D_kwargs: dict | None          # Discriminator keywords likewise; None: no D (a generator-only file)


def network_spec(cfg: TrainingConfig, img_channels: int = 3, c_dim: int = 0) -> NetworkSpec:
    """The networks of `cfg` for images of `img_channels` channels and `c_dim` label dimensions."""
    return NetworkSpec(cfg.resolution, img_channels, c_dim, cfg.G_kwargs, cfg.D_kwargs)


def build_networks(spec: NetworkSpec, with_D: bool = True,
                   keep_rng: bool = False) -> tuple[Generator, Discriminator | None]:
    """Construct (G, D) for `spec` on the current default device (the CPU unless a `torch.device` context
    says otherwise); D is None when not asked for or when the spec has none (a training config's:
    `network_spec(cfg)`).

    Initial values are drawn from torch's global generator, G first, then D: a training run's first
    weights, and so its snapshots' bytes, depend on that order. `keep_rng` draws them from a forked
    generator instead, leaving the process's where it was: for networks about to be overwritten with
    stored weights (loading, importing, converting), whose throwaway draws must not shift what follows.
    """
    common = {"c_dim": spec.c_dim, "img_resolution": spec.resolution, "img_channels": spec.img_channels}
    with torch.random.fork_rng(devices=[]) if keep_rng else contextlib.nullcontext():
        G = Generator(**common, **copy.deepcopy(spec.G_kwargs))
        D = None
        if with_D and spec.D_kwargs is not None:
            D = Discriminator(**common, **copy.deepcopy(spec.D_kwargs))
    return G, D


_FIELDS = tuple(f.name for f in dataclasses.fields(TrainingConfig))


def config_to_dict(cfg: TrainingConfig) -> dict[str, Any]:
    """Plain data (dicts, lists, str, numbers, None) that torch.load(weights_only=True) can read back."""
    d = {name: copy.deepcopy(getattr(cfg, name)) for name in _FIELDS}
    d["betas"] = list(cfg.betas)
    return d


def config_from_dict(d: dict[str, Any]) -> TrainingConfig:
    """Inverse of config_to_dict; a missing or unknown key is a ValueError naming it."""
    if not isinstance(d, dict):
        raise ValueError(f"a training config must be a dict, got {type(d).__name__}")
    missing = [k for k in _FIELDS if k not in d]
    unknown = sorted(set(d) - set(_FIELDS))
    if missing or unknown:
        raise ValueError(f"training config dict: missing keys {missing}, unknown keys {unknown}")
    values = {k: copy.deepcopy(d[k]) for k in _FIELDS}
    betas = values["betas"]
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2):
        raise ValueError(f"training config dict: betas must be two numbers, got {betas!r}")
    values["betas"] = (float(betas[0]), float(betas[1]))
    if not (isinstance(values["G_kwargs"], dict) and isinstance(values["D_kwargs"], dict)):
        raise ValueError("training config dict: G_kwargs and D_kwargs must be dicts")
    if values["name"] not in CONFIG_NAMES:
        raise ValueError(f"training config dict: unknown config {values['name']!r}; "
                         f"choose one of {', '.join(CONFIG_NAMES)}")
    try:
        check_size("resolution", values["resolution"])
        check_network_kwargs(values["G_kwargs"], values["D_kwargs"])
    except ValueError as e:
        raise ValueError(f"training config dict: {e}") from None
    return TrainingConfig(**values)
