"""Typed parameters loaded from params.yaml.

One frozen dataclass per section. `load` is the only reader: it rejects unknown keys, missing keys,
wrong types and out-of-range values with a message naming the key (e.g. ``filter.min_cover``).
Stages receive only the section they need.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from corgigan.stylegan2.devices import DEVICE_HELP, is_device_name


class ParamsError(ValueError):
    """A params.yaml key is unknown, missing, of the wrong type or out of range."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ParamsError(f"{key}: {msg}")


@dataclass(frozen=True)
class SyntheticParams:
    seed: int                      # drawing seed; same seed, same bytes
    num_images: int                # ordinary single-dog photos; planted cases come on top
    min_short_side: int            # photo-like sizes: short side drawn in [min, max]
    max_short_side: int
    planted_per_case: int          # images of each planted case (broken files, decoder cases, ...)

    def validate(self, key: str) -> None:
        _check(self.num_images >= 0, f"{key}.num_images", "must be >= 0")
        _check(self.planted_per_case >= 0, f"{key}.planted_per_case", "must be >= 0")
        _check(16 <= self.min_short_side <= self.max_short_side, f"{key}.min_short_side",
               "must be >= 16 and <= max_short_side")


@dataclass(frozen=True)
class FolderParams:
    path: str                      # a directory or a .zip of images


@dataclass(frozen=True)
class InstagramParams:
    hashtags: list[str]            # hashtags to scrape, without '#'
    max_posts: int                 # per hashtag
    max_wait_s: float              # longer rate-limit waits stop the run; the next run resumes
    session_env: str               # env variable holding the path of an instaloader session file

    def validate(self, key: str) -> None:
        _check(len(self.hashtags) > 0, f"{key}.hashtags", "needs at least one hashtag")
        _check(self.max_posts > 0, f"{key}.max_posts", "must be > 0")
        _check(self.max_wait_s >= 0, f"{key}.max_wait_s", "must be >= 0")


@dataclass(frozen=True)
class ScrapeParams:
    source: Literal["synthetic", "folder", "instagram"]
    shard_size: int                # images per shard file
    synthetic: SyntheticParams
    folder: FolderParams
    instagram: InstagramParams

    def validate(self, key: str) -> None:
        _check(self.shard_size > 0, f"{key}.shard_size", "must be > 0")


@dataclass(frozen=True)
class ImagesParams:
    max_pixels: int                # larger images are rejected as too_large

    def validate(self, key: str) -> None:
        _check(self.max_pixels > 0, f"{key}.max_pixels", "must be > 0")


@dataclass(frozen=True)
class DetectorParams:
    kind: Literal["train", "pretrained"]
    pretrained_weights: str        # local path of an ultralytics .pt (kind: pretrained)
    dog_class: int                 # class id of "dog" in the weights
    labels: Literal["synthetic", "stanford_dogs"]
    stanford_dogs_path: str        # folder with Images/ and Annotation/ (labels: stanford_dogs)
    model: str                     # ultralytics model yaml trained from scratch
    seed: int
    num_images: int                # synthetic training scenes
    epochs: int
    imgsz: int
    batch: int
    val_fraction: float            # held-out share of the labelled images (mAP50 is measured on it)
    device: str                    # auto | cpu | cuda | cuda:N
    workers: int                   # DataLoader workers on GPU (ultralytics uses none on CPU)

    def validate(self, key: str) -> None:
        _check(self.dog_class >= 0, f"{key}.dog_class", "must be >= 0")
        _check(self.num_images >= 10, f"{key}.num_images", "must be >= 10")
        _check(self.epochs > 0, f"{key}.epochs", "must be > 0")
        _check(self.imgsz >= 32 and self.imgsz % 32 == 0, f"{key}.imgsz", "must be a multiple of 32")
        _check(self.batch > 0, f"{key}.batch", "must be > 0")
        _check(0 < self.val_fraction < 1, f"{key}.val_fraction", "must be in (0, 1)")
        _check_device(self.device, f"{key}.device")
        _check(self.workers >= 0, f"{key}.workers", "must be >= 0")


@dataclass(frozen=True)
class DetectParams:
    conf: float
    iou: float
    imgsz: int
    batch: int
    device: str                    # auto | cpu | cuda | cuda:N

    def validate(self, key: str) -> None:
        _check(0 <= self.conf <= 1, f"{key}.conf", "must be in [0, 1]")
        _check(0 <= self.iou <= 1, f"{key}.iou", "must be in [0, 1]")
        _check(self.imgsz >= 32 and self.imgsz % 32 == 0, f"{key}.imgsz", "must be a multiple of 32")
        _check(self.batch > 0, f"{key}.batch", "must be > 0")
        _check_device(self.device, f"{key}.device")


def _check_device(name: str, key: str) -> None:
    _check(is_device_name(name), key, f"must be {DEVICE_HELP}, got {name!r}")


@dataclass(frozen=True)
class FilterParams:
    min_side: int                  # short side below this: too_small
    min_crop: int                  # smallest crop side before resizing
    max_dogs: int                  # more detected dogs: multiple_dogs
    min_confidence: float          # best box below this: low_confidence
    min_cover: float               # box area inside the window / window area
    max_center_shift: float        # |window centre - box centre| / image side
    allow_partial: bool            # keep dogs larger than the crop window
    resolution: int                # output side in pixels
    resize_filter: Literal["lanczos", "bicubic", "bilinear", "box"]
    shard_size: int                # crops per output shard file

    def validate(self, key: str) -> None:
        _check(self.min_side > 0, f"{key}.min_side", "must be > 0")
        _check(self.shard_size > 0, f"{key}.shard_size", "must be > 0")
        _check(0 < self.min_crop <= self.min_side, f"{key}.min_crop", "must be in (0, min_side]")
        _check(self.max_dogs >= 1, f"{key}.max_dogs", "must be >= 1")
        _check(0 <= self.min_confidence <= 1, f"{key}.min_confidence", "must be in [0, 1]")
        _check(0 <= self.min_cover <= 1, f"{key}.min_cover", "must be in [0, 1]")
        _check(0 <= self.max_center_shift <= 1, f"{key}.max_center_shift", "must be in [0, 1]")
        r = self.resolution
        _check(r >= 4 and r & (r - 1) == 0, f"{key}.resolution", "must be a power of two >= 4")


@dataclass(frozen=True)
class DedupParams:
    method: Literal["phash", "dhash", "whash", "ahash"]
    max_distance: int              # Hamming distance (of 64 bits) that still counts as duplicate

    def validate(self, key: str) -> None:
        _check(0 <= self.max_distance <= 64, f"{key}.max_distance", "must be in [0, 64]")


@dataclass(frozen=True)
class DatasetParams:
    examples_per_reason: int       # contact-sheet thumbnails per kept/rejected reason

    def validate(self, key: str) -> None:
        _check(self.examples_per_reason >= 0, f"{key}.examples_per_reason", "must be >= 0")


TRAIN_CONFIGS = ("demo", "auto", "stylegan2", "paper256", "paper512", "paper1024", "cifar")


@dataclass(frozen=True)
class TrainParams:
    config: Literal["demo", "auto", "stylegan2", "paper256", "paper512", "paper1024", "cifar"]
    kimg: float                    # training length in thousands of real images shown
    batch: int                     # 0: the config's batch
    snapshot_kimg: float           # snapshot and image grid every this many kimg
    tick_kimg: float               # training metrics every this many kimg
    keep_snapshots: int            # keep the newest N snapshots; 0: all
    seed: int
    augment: Literal["ada", "fixed", "none"]
    augment_p: float               # initial p (the fixed p when augment is fixed)
    ada_target: float              # target E[sign(D(real))]
    mirror: bool                   # x-flip the dataset
    workers: int                   # DataLoader workers
    device: str                    # auto | cpu | cuda | cuda:N (auto never picks the CPU for >= 512 px)
    require_cuda_ops: bool         # stop when the fused CUDA ops fail to build
    allow_tf32: bool               # TF32 float32 matmul/conv on CUDA (the reference's default: false)
    resume_from: str               # snapshot or reference StyleGAN2(-ADA) .pkl to start from (transfer
                                   # learning); "" for none
    allow_other_data: bool         # allow resuming a snapshot trained on another dataset
    freeze_d: int                  # Freeze-D: D's first N layers stay fixed (the reference's --freezed)

    def validate(self, key: str) -> None:
        _check(self.kimg > 0, f"{key}.kimg", "must be > 0")
        _check(self.batch >= 0, f"{key}.batch", "must be >= 0")
        _check(self.snapshot_kimg > 0, f"{key}.snapshot_kimg", "must be > 0")
        _check(self.tick_kimg > 0, f"{key}.tick_kimg", "must be > 0")
        _check(self.keep_snapshots >= 0, f"{key}.keep_snapshots", "must be >= 0 (0: keep all)")
        _check(0 <= self.augment_p <= 1, f"{key}.augment_p", "must be in [0, 1]")
        _check(0 < self.ada_target < 1, f"{key}.ada_target", "must be in (0, 1)")
        _check(self.workers >= 0, f"{key}.workers", "must be >= 0")
        _check(self.freeze_d >= 0, f"{key}.freeze_d", "must be >= 0 (0: train every layer of D)")
        _check_device(self.device, f"{key}.device")


@dataclass(frozen=True)
class EvaluateParams:
    num_images: int                # generated images for FID/KID
    seed: int
    truncation_psi: float
    features: Literal["inception", "pixels"]   # pixels: offline, not comparable with published FID
    inception_path: str            # local Inception weights (clean-fid's inception-2015-12-05.pt)
    batch: int
    fid_every_snapshot: bool
    grid_seeds: int                # images in the sample grid
    video_frames: int              # frames of the latent interpolation video
    device: str                    # auto | cpu | cuda | cuda:N

    def validate(self, key: str) -> None:
        _check(self.num_images >= 2, f"{key}.num_images", "must be >= 2")
        _check(self.batch > 0, f"{key}.batch", "must be > 0")
        _check(self.grid_seeds > 0, f"{key}.grid_seeds", "must be > 0")
        _check(self.video_frames >= 2, f"{key}.video_frames", "must be >= 2")
        _check_device(self.device, f"{key}.device")


@dataclass(frozen=True)
class Params:
    scrape: ScrapeParams
    images: ImagesParams
    detector: DetectorParams
    detect: DetectParams
    filter: FilterParams
    dedup: DedupParams
    dataset: DatasetParams
    train: TrainParams
    evaluate: EvaluateParams


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert it (dataclasses built recursively)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        _check(value in choices, key, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        _check(isinstance(value, list), key, f"must be a list, got {value!r}")
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        _check(isinstance(value, bool), key, f"must be true or false, got {value!r}")
    elif tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key,
               f"must be an integer, got {value!r}")
    elif tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key,
               f"must be a number, got {value!r}")
        value = float(value)
        _check(math.isfinite(value), key, f"must be a finite number, got {value!r}")
    elif tp is str:
        _check(isinstance(value, str), key, f"must be a string, got {value!r}")
    return value


def _build(cls: type, raw: Any, key: str) -> Any:
    _check(isinstance(raw, dict), key or "params", f"must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{key}." if key else ""
    unknown = sorted(set(raw) - set(names))
    _check(not unknown, prefix + str(unknown[0]) if unknown else key,
           f"unknown key (known: {', '.join(names)})")
    missing = [n for n in names if n not in raw]
    _check(not missing, prefix + (missing[0] if missing else ""), "missing")
    obj = cls(**{n: _convert(raw[n], hints[n], prefix + n) for n in names})
    if hasattr(obj, "validate"):
        obj.validate(key)
    return obj


def from_dict(raw: dict[str, Any]) -> Params:
    """Build and validate Params from a parsed params.yaml mapping."""
    return _build(Params, raw, "")


def load(path: str | Path = "params.yaml") -> Params:
    """Read, check and return params.yaml; a ParamsError names the file and line, or the first bad key."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the project root)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise ParamsError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    return from_dict(parse_yaml(text, str(path)))


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML as DVC does (ruamel.yaml, YAML 1.2); duplicate keys and syntax errors are ParamsErrors.

    PyYAML would silently keep the last of two equal keys, and reads some scalars differently from DVC
    (``yes``, ``1e-3``), so `dvc params diff` and the stages would disagree.
    """
    try:
        return YAML(typ="safe", pure=True).load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark is not None else where
        what = "duplicate key (each key may appear once): " if isinstance(e, DuplicateKeyError) else ""
        raise ParamsError(f"{at}: invalid YAML: {what}{e.problem or e.context}") from e
    except YAMLError as e:
        raise ParamsError(f"{where}: invalid YAML: {str(e).splitlines()[0]}") from e
