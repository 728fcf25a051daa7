"""Typed parameters loaded from params.yaml.

One frozen (pydantic) dataclass per section, and every knob defined once, here: its type, allowed
range and help (the help is also the knob's comment in params.yaml and configs/full.yaml, which
tests/test_params.py holds to it). Values live only in the params files, which DVC tracks. `load` is the
only reader: unknown, missing, mistyped and out-of-range keys stop with a message naming the key
(e.g. ``filter.min_cover: must be in [0, 1], got 1.5``). Stages receive only the section they need.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo
from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import CollectionEndEvent, CollectionStartEvent
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode

from corgigan.errors import clip, one_line, quote
from corgigan.stylegan2.devices import DEVICE_HELP, is_device_name
from corgigan.stylegan2.ws_ranges import LAYERS_HELP, is_layers_spec

# Bounds shared by the params and the CLI's arguments (cli.py), so a value means the same in both.
SEED_LIMIT = 2**32        # seeds are in [0, 2**32): numpy's RandomState and SeedSequence take no others
MAX_SEEDS = 1000          # seeds one picture or grid may draw (`generate --seeds`, evaluate.grid_seeds)
MAX_FRAMES = 2400         # frames of one video (100 s at 24 fps); a video is held in memory while drawn
MAX_STEPS = 100           # columns of one edit strip
MAX_PSI = 10              # |truncation psi|: far beyond this, float32 styles overflow and images go black
MAX_SIGMAS = 100          # |strength| of an edit along a direction, in sigmas of W
MAX_BATCH = 1024          # images per batch of any kind (16x the reference's largest, 64)
MIN_KIMG = 0.001          # one image: below it the run would stop before its first step, with no snapshot
MAX_KIMG = 1_000_000      # 1e9 images, 100x the reference's longest run
MAX_YAML_NODES = 10_000   # values in a params file once its aliases are expanded; the shipped ones hold ~200
MAX_YAML_DEPTH = 32       # nesting of a params file (the shipped ones: 3); ruamel's composer recurses


class ParamsError(ValueError):
    """A params.yaml key is unknown, missing, of the wrong type or out of range.

    The message is one line of at most errors.MAX_LINE characters, whatever it quotes.
    """

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def _number(value: Any) -> Any:
    # YAML integers are fine where a float is wanted; strings and booleans are not (lax pydantic takes them).
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a number")
    return float(value)


def _device(name: str) -> str:
    if not is_device_name(name):
        raise ValueError(f"must be {DEVICE_HELP}")
    return name


def _power_of_two(value: int) -> int:
    if value < 4 or value & (value - 1):
        raise ValueError("must be a power of two >= 4")
    return value


def _gpus(value: Any) -> Any:
    # Before the union's own checks, so a bad value gets one message rather than one per member.
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError("must be auto or an integer >= 1")
    return value


def _multiple_of_32(value: int) -> int:
    if value < 32 or value % 32:
        raise ValueError("must be a multiple of 32")
    return value


Number = Annotated[float, BeforeValidator(_number)]
# After the strict type check: a value of the wrong type is "must be a string/an integer", never a crash.
Device = Annotated[StrictStr, AfterValidator(_device)]
PowerOfTwo = Annotated[StrictInt, AfterValidator(_power_of_two)]
Multiple32 = Annotated[StrictInt, AfterValidator(_multiple_of_32)]
# Knobs of one kind share one type, so each bound is written once.
Seed = Annotated[StrictInt, Field(ge=0, lt=SEED_LIMIT)]
Batch = Annotated[StrictInt, Field(gt=0, le=MAX_BATCH)]
Kimg = Annotated[Number, Field(ge=MIN_KIMG, le=MAX_KIMG)]
# Training knobs (null: the config's own); their upper bounds are the networks' (configs.SIZE_LIMITS),
# checked when the config is built.
Weight = Annotated[Number, Field(ge=0)]
LearningRate = Annotated[Number, Field(gt=0, le=1)]
Width = Annotated[StrictInt, Field(ge=1)]
AUGMENT_PIPES = ("blit", "geom", "color", "filter", "noise", "cutout", "bg", "bgc", "bgcf", "bgcfn", "bgcfnc")
Psi = Annotated[Number, Field(ge=-MAX_PSI, le=MAX_PSI)]


def _seed_range(first: int, count: int, how: str) -> None:
    """A section that draws `count` seeds from `first` on must end below SEED_LIMIT."""
    last = first + count - 1
    if last >= SEED_LIMIT:
        raise ValueError(f"seed: the seeds {first} .. {last} run past 2**32 - 1 ({how}); lower the seed")


def knob(help_text: str, runtime: bool = False, **constraints: Any) -> Any:
    """A knob's help and allowed range: pydantic Field metadata, read by the loader and the tests.

    `runtime`: the knob only says where or how fast a stage runs (or how often it reports), not what it
    computes, so dvc.yaml does not track it and changing it leaves `dvc status` clean (runtime_knobs).
    The stated exception: train.tick_kimg and train.keep_snapshots change which files train leaves (metric
    rows in reports/train, snapshots kept in models/stylegan2), yet are runtime-only by decision (issue
    21): they say how a run is recorded, not what the model learns, so changing one retrains nothing.
    """
    return Field(description=help_text, json_schema_extra={"runtime": True} if runtime else None,
                 **constraints)


_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)
section = dataclass(frozen=True, config=_CONFIG)


@section
class SyntheticParams:
    seed: Annotated[Seed, knob("drawing seed; same seed, same bytes")]
    num_images: Annotated[StrictInt, knob("ordinary single-dog photos; planted cases come on top", ge=0)]
    min_short_side: Annotated[StrictInt, knob("photo-like sizes: the short side is drawn in [min, max]",
                                              ge=16)]
    max_short_side: Annotated[StrictInt, knob("the largest short side drawn", ge=16)]
    planted_per_case: Annotated[StrictInt, knob("images of each planted case (several dogs, broken files, "
                                                "CMYK, ...)", ge=0)]

    @model_validator(mode="after")
    def _sides(self) -> SyntheticParams:
        if self.min_short_side > self.max_short_side:
            raise ValueError("min_short_side: must be <= max_short_side")
        return self


@section
class FolderParams:
    path: Annotated[StrictStr, knob("a directory or a .zip of images (a dependency of scrape)")]


@section
class InstagramParams:
    hashtags: Annotated[list[StrictStr], knob("hashtags to scrape, without '#'", min_length=1)]
    max_posts: Annotated[StrictInt, knob("posts per hashtag", gt=0)]
    max_wait_s: Annotated[Number, knob("a rate-limit wait longer than this stops the run; the next run "
                                       "resumes", runtime=True, ge=0)]
    session_env: Annotated[StrictStr, knob("name of the env variable holding the session file path",
                                           runtime=True)]


@section
class ScrapeParams:
    source: Annotated[Literal["synthetic", "folder", "instagram"], knob("synthetic | folder | instagram")]
    shard_size: Annotated[StrictInt, knob("images per shard file", gt=0)]
    synthetic: SyntheticParams
    folder: FolderParams
    instagram: InstagramParams


@section
class ImagesParams:
    max_pixels: Annotated[StrictInt, knob("larger images are rejected as too_large (decompression-bomb "
                                          "guard)", gt=0)]


@section
class DetectorParams:
    kind: Annotated[Literal["train", "pretrained"], knob("train | pretrained")]
    pretrained_weights: Annotated[StrictStr, knob("a local ultralytics .pt, used when kind is pretrained")]
    dog_class: Annotated[StrictInt, knob("class id of 'dog' in the weights (16 for COCO weights)", ge=0)]
    labels: Annotated[Literal["synthetic", "stanford_dogs"], knob("synthetic | stanford_dogs (for kind: "
                                                                  "train)")]
    stanford_dogs_path: Annotated[StrictStr, knob("folder with Images/ and Annotation/ (labels: "
                                                  "stanford_dogs)")]
    model: Annotated[StrictStr, knob("ultralytics model definition, trained from scratch")]
    seed: Annotated[Seed, knob("training seed, separate from the scraped set's")]
    num_images: Annotated[StrictInt, knob("synthetic training scenes (a sixth with no dog, the rest 1-3 "
                                          "dogs)", ge=10)]
    epochs: Annotated[StrictInt, knob("training epochs (meta.json reports the mAP50 reached)", gt=0)]
    imgsz: Annotated[Multiple32, knob("training image size, a multiple of 32")]
    batch: Annotated[Batch, knob("training batch; small ones give more steps from a few hundred scenes")]
    val_fraction: Annotated[Number, knob("held-out share of the labelled images; meta.json reports mAP50 on "
                                         "it", gt=0, lt=1)]
    device: Annotated[Device, knob(DEVICE_HELP, runtime=True)]
    workers: Annotated[StrictInt, knob("DataLoader workers on GPU (ultralytics uses none on CPU)",
                                       runtime=True, ge=0)]


@section
class DetectParams:
    conf: Annotated[Number, knob("boxes below this confidence are not kept", ge=0, le=1)]
    iou: Annotated[Number, knob("non-maximum suppression IoU threshold", ge=0, le=1)]
    imgsz: Annotated[Multiple32, knob("inference size: as detector.imgsz, the size it was trained at")]
    # Runtime only: detections.parquet came out byte-identical at batch 8 and 3 (measured on the tiny
    # pipeline's shards); a batch only groups images for the network. explore also draws its generator
    # batches by it: its directions, metrics and strips came out byte-identical at batch 16 and 3
    # (tests/test_explore.py::test_detect_batch_leaves_every_explore_output_unchanged, on the CPU).
    batch: Annotated[Batch, knob("images per inference batch", runtime=True)]
    device: Annotated[Device, knob(DEVICE_HELP, runtime=True)]


@section
class FilterParams:
    min_side: Annotated[StrictInt, knob("images whose short side is smaller are rejected (too_small)", gt=0)]
    min_crop: Annotated[StrictInt, knob("smallest crop side before resizing", gt=0)]
    max_dogs: Annotated[StrictInt, knob("more confident boxes than this: multiple_dogs", ge=1)]
    min_confidence: Annotated[Number, knob("best box below this: low_confidence", ge=0, le=1)]
    min_cover: Annotated[Number, knob("dog box area inside the crop window / window area (below: "
                                      "low_cover)", ge=0, le=1)]
    max_center_shift: Annotated[Number, knob("|window centre - box centre| / image side (above: "
                                             "off_center)", ge=0, le=1)]
    allow_partial: Annotated[StrictBool, knob("keep dogs larger than the crop window")]
    resolution: Annotated[PowerOfTwo, knob("output side in pixels, a power of two")]
    resize_filter: Annotated[Literal["lanczos", "bicubic", "bilinear", "box"],
                             knob("lanczos | bicubic | bilinear | box")]
    shard_size: Annotated[StrictInt, knob("crops per output shard file", gt=0)]

    @model_validator(mode="after")
    def _crop(self) -> FilterParams:
        if self.min_crop > self.min_side:
            raise ValueError("min_crop: must be in (0, min_side]")
        return self


@section
class DedupParams:
    method: Annotated[Literal["phash", "dhash", "whash", "ahash"], knob("phash | dhash | whash | ahash")]
    max_distance: Annotated[StrictInt, knob("Hamming distance (of 64 bits) that still counts as a "
                                            "duplicate", ge=0, le=64)]


@section
class DatasetParams:
    examples_per_reason: Annotated[StrictInt, knob("contact-sheet thumbnails per kept/rejected reason", ge=0)]


@section
class TrainParams:
    config: Annotated[Literal["demo", "auto", "stylegan2", "paper256", "paper512", "paper1024", "cifar"],
                      knob("demo | auto | stylegan2 | paper256 | paper512 | paper1024 | cifar")]
    kimg: Annotated[Kimg, knob("training length in thousands of real images shown")]
    batch: Annotated[Batch | None, knob("images per step; null: the config's own")]
    gpus: Annotated[StrictInt | Literal["auto"], BeforeValidator(_gpus),
                    knob("processes the stage starts, one per CUDA device (--gpus); auto: every visible "
                         "one (one process without CUDA)")]
    # Tracked although resumable: each pass draws its own latents, so another split is another (equally
    # valid) trajectory; G_ema differed by up to 0.018 between batch_gpu 8, 4 and 2 at batch 8 (measured).
    batch_gpu: Annotated[Batch | None, knob("images per GPU per pass, gradients accumulated over passes "
                                            "(--batch-gpu); null: the config's own")]
    gamma: Annotated[Weight | None, knob("R1 regularisation weight (--gamma), the knob to sweep first; null: "
                                         "the config's own")]
    glr: Annotated[LearningRate | None, knob("generator learning rate (--glr); null: the config's own")]
    dlr: Annotated[LearningRate | None, knob("discriminator learning rate (--dlr); null: the config's own")]
    cbase: Annotated[Width | None, knob("channel base: feature maps min(cbase / resolution, cmax) (--cbase); "
                                        "null: the config's own")]
    cmax: Annotated[Width | None, knob("most feature maps of any layer (--cmax); null: the config's own")]
    map_depth: Annotated[Width | None, knob("mapping network layers (--map-depth); null: the config's own")]
    mbstd_group: Annotated[Width | None, knob("minibatch-stddev group size, at most batch_gpu "
                                              "(--mbstd-group); null: the config's own")]
    fp16_res: Annotated[Annotated[StrictInt, Field(ge=0)] | None,
                        knob("float16 in this many highest resolutions on CUDA, 0: all float32 (0 is "
                             "--fp32); null: the config's own")]
    augpipe: Annotated[Literal[AUGMENT_PIPES] | None,
                       knob(f"augmentations ADA applies (--augpipe): {' | '.join(AUGMENT_PIPES)}; null: bgc")]
    ema_kimg: Annotated[Annotated[Number, Field(gt=0)] | None,
                        knob("G_ema half-life in kimg (the reference's ema, no flag); null: the config's "
                             "own")]
    ema_rampup: Annotated[Weight | None, knob("G_ema half-life at most this fraction of the images seen, 0: "
                                              "off (the reference's ramp, no flag); null: the config's own")]
    pl_weight: Annotated[Weight | None, knob("path-length regularisation weight, 0: off (no flag); null: the "
                                             "config's own")]
    style_mixing: Annotated[Annotated[Number, Field(ge=0, le=1)] | None,
                            knob("style-mixing probability, 0: off (no flag); null: the config's own")]
    subset: Annotated[Annotated[StrictInt, Field(gt=0)] | None,
                      knob("train on this many of the dataset's images, drawn by the seed (--subset); null: "
                           "all")]
    snapshot_kimg: Annotated[Kimg, knob("snapshot and image grid every this many kimg")]
    # Runtime-only by decision though both change train's outputs (the rows of reports/train, the snapshots
    # left in models/stylegan2): they say how the run is recorded, not what the model learns (see knob()).
    tick_kimg: Annotated[Kimg, knob("training metrics (reports/train) every this many kimg", runtime=True)]
    keep_snapshots: Annotated[StrictInt, knob("keep only the newest N snapshots (0: all); a 1024-px snapshot "
                                              "is ~0.8 GB", runtime=True, ge=0)]
    seed: Annotated[Seed, knob("the one seed of the run")]
    augment: Annotated[Literal["ada", "fixed", "none"], knob("ada | fixed | none")]
    augment_p: Annotated[Number, knob("initial augmentation probability p (the fixed p when augment is "
                                      "fixed)", ge=0, le=1)]
    ada_target: Annotated[Number, knob("ADA's target for E[sign(D(real))]", gt=0, lt=1)]
    mirror: Annotated[StrictBool, knob("x-flip the dataset")]
    workers: Annotated[StrictInt, knob("DataLoader workers", runtime=True, ge=0)]
    device: Annotated[Device, knob(f"{DEVICE_HELP} (auto never picks the CPU at >= 512 px)", runtime=True)]
    require_cuda_ops: Annotated[StrictBool, knob("stop when the fused CUDA ops fail to build", runtime=True)]
    allow_tf32: Annotated[StrictBool, knob("TF32 float32 matmul/conv on CUDA (Ampere+): faster, 10-bit "
                                           "mantissa; the reference StyleGAN2-ADA disables it")]
    resume_from: Annotated[StrictStr | None, knob("transfer learning: a snapshot, or a StyleGAN2(-ADA) "
                                                  "PyTorch/TensorFlow .pkl (read without running its code; "
                                                  "see README); null for none")]
    allow_other_data: Annotated[StrictBool, knob("resume a snapshot trained on another dataset")]
    freeze_d: Annotated[StrictInt, knob("Freeze-D for transfer learning: D's first N layers stay fixed, "
                                        "counted as the reference's --freezed (fromrgb, conv0, conv1, skip "
                                        "per block, highest resolution first)", ge=0)]


@section
class EvaluateParams:
    num_images: Annotated[StrictInt, knob("generated images for FID/KID", ge=2)]
    seed: Annotated[Seed, knob("first seed of the generated images")]
    truncation_psi: Annotated[Psi, knob("truncation of the generated images (1: none)")]
    features: Annotated[Literal["inception", "pixels"], knob("inception (real FID) | pixels (offline, no "
                                                             "download; not comparable)")]
    inception_path: Annotated[StrictStr, knob("local Inception weights (clean-fid's "
                                              "inception-2015-12-05.pt)")]
    # Runtime only: metrics.json and every figure came out byte-identical at batch 8 and 3 (measured).
    batch: Annotated[Batch, knob("images per generation and feature batch", runtime=True)]
    fid_every_snapshot: Annotated[StrictBool, knob("score every snapshot, not only the last "
                                                   "(figures: fid_vs_kimg.json and .png)")]
    grid_seeds: Annotated[StrictInt, knob("images in the sample grid", gt=0, le=MAX_SEEDS)]
    video_frames: Annotated[StrictInt, knob("frames of the latent interpolation video", ge=2, le=MAX_FRAMES)]
    device: Annotated[Device, knob(DEVICE_HELP, runtime=True)]

    @model_validator(mode="after")
    def _seeds(self) -> EvaluateParams:
        _seed_range(self.seed, max(self.num_images, self.grid_seeds), "seed + max(num_images, grid_seeds)")
        return self


def _layers(value: str) -> str:
    # A named range of the generator's ws, or FIRST-STOP; checked against the model by the explore stage.
    if not is_layers_spec(value):
        raise ValueError(f"must be {LAYERS_HELP}")
    return value


@section
class ExploreParams:
    seed: Annotated[Seed, knob("first seed of the sampled latents; the check seeds follow them")]
    truncation_psi: Annotated[Psi, knob("truncation of the sampled latents (1: none)")]
    layers: Annotated[StrictStr, AfterValidator(_layers),
                      knob("ws the SeFa and PCA edits move: all | coarse | middle | fine | FIRST-STOP")]
    num_components: Annotated[StrictInt, knob("closed-form (SeFa) and PCA directions kept, each with a strip",
                                              gt=0)]
    pca_samples: Annotated[StrictInt, knob("w drawn for PCA in W and for each direction's sigma", ge=2)]
    num_labelled: Annotated[StrictInt, knob("generated images labelled by the detector to fit the labelled "
                                            "directions", ge=4)]
    share: Annotated[Number, knob("top and bottom share of each attribute taken as positives and negatives "
                                  "(InterFaceGAN)", gt=0, le=0.5)]
    holdout: Annotated[Number, knob("share of those held out to measure each boundary's accuracy", gt=0,
                                    lt=1)]
    check_seeds: Annotated[StrictInt, knob("seeds not used to fit, moved along each labelled direction to "
                                           "measure its rank correlation", ge=1)]
    strip_seeds: Annotated[StrictInt, knob("rows of each direction's strip (the first check seeds)", ge=1)]
    strip_steps: Annotated[StrictInt, knob("columns of each strip and steps of each check, -max_sigma to "
                                           "+max_sigma", ge=3, le=MAX_STEPS)]
    max_sigma: Annotated[Number, knob("strips and checks move this many sigmas of W either way", gt=0,
                                      le=MAX_SIGMAS)]
    device: Annotated[Device, knob(DEVICE_HELP, runtime=True)]

    @model_validator(mode="after")
    def _strips(self) -> ExploreParams:
        if self.strip_seeds > self.check_seeds:
            raise ValueError("strip_seeds: must be <= check_seeds")
        # The fitting pool, then the check seeds (stages/explore.py).
        _seed_range(self.seed, max(self.pca_samples, self.num_labelled) + self.check_seeds,
                    "seed + max(pca_samples, num_labelled) + check_seeds")
        return self


@section
class ExportParams:
    sample_seed: Annotated[Seed, knob("first seed of the export's sample grid (samples.png)")]
    sample_count: Annotated[StrictInt, knob("pictures in the sample grid", gt=0, le=64)]
    truncation_psi: Annotated[Psi, knob("truncation of the sample grid (1: none)")]
    onnx: Annotated[StrictBool, knob("also write generator.onnx (z and psi in, image out), checked against "
                                     "PyTorch with onnxruntime")]

    @model_validator(mode="after")
    def _seeds(self) -> ExportParams:
        _seed_range(self.sample_seed, self.sample_count, "sample_seed + sample_count")
        return self


@section
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
    explore: ExploreParams
    export: ExportParams


_ADAPTER = TypeAdapter(Params)

# pydantic's words -> ours, keeping the shape "<dotted key>: <what was expected>, got <what was found>".
_MESSAGES = {
    "int_type": "must be an integer", "int_from_float": "must be an integer",
    "bool_type": "must be true or false", "string_type": "must be a string", "list_type": "must be a list",
    "float_type": "must be a number", "finite_number": "must be a finite number",
    "dataclass_type": "must be a mapping",
}


def _range(cls: Any, name: str) -> str | None:
    """'in [0, 1]', '> 0', ... from the field's constraints (one phrase for both bounds)."""
    fields = getattr(cls, "__pydantic_fields__", {})
    if name not in fields:
        return None
    bounds = {k: getattr(m, k) for m in _constraints(fields[name]) for k in ("ge", "gt", "le", "lt")
              if hasattr(m, k)}
    lo = f"[{bounds['ge']}" if "ge" in bounds else f"({bounds['gt']}" if "gt" in bounds else None
    hi = f"{bounds['le']}]" if "le" in bounds else f"{bounds['lt']})" if "lt" in bounds else None
    if lo and hi:
        return f"in {lo}, {hi}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1:]}"
    return f"{'<=' if hi[-1] == ']' else '<'} {hi[:-1]}" if hi else None


def _constraints(field: Any) -> list[Any]:
    """A field's constraint objects: its own and those of its type's Annotated parts (``Batch | None``)."""
    found = list(field.metadata)
    todo = [field.annotation]
    while todo:
        hint = todo.pop()
        for part in typing.get_args(hint):
            if isinstance(part, FieldInfo):
                found += part.metadata
            elif hasattr(part, "__metadata__") or typing.get_args(part):
                todo.append(part)
            elif any(hasattr(part, k) for k in ("ge", "gt", "le", "lt")):
                found.append(part)
    return found


def _subsection(cls: Any, name: str) -> Any:
    """The section class of field `name` of `cls`, or None for a knob."""
    hint = typing.get_type_hints(cls).get(name)
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _section_class(loc: tuple[str, ...]) -> Any:
    """The section class that holds the key at `loc` (None when the path leaves the sections)."""
    cls: Any = Params
    for part in loc[:-1]:
        cls = _subsection(cls, part)
        if cls is None:
            return None
    return cls


def _message(error: dict[str, Any]) -> str:
    """One pydantic error as '<key>: <expected>, got <found>'."""
    loc = tuple(str(x) for x in error["loc"])
    kind, found = error["type"], error.get("input")
    # Keys come from the file too: each part is capped like a value, so the message's end survives.
    key = ".".join(clip(part) for part in loc)
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        cls = _section_class(loc)
        known = ", ".join(f.name for f in dataclasses.fields(cls)) if cls else ""
        return f"{key}: unknown key (known: {known})"
    if kind in ("missing", "missing_argument"):
        return f"{key}: missing"
    if kind == "value_error":
        text = str(error["ctx"]["error"])
        # A cross-field check names its own key: "min_crop: must be ..." inside the section's location.
        head, sep, rest = text.partition(": ")
        if sep and head.isidentifier() and not head.startswith("must"):
            return f"{key + '.' if key else ''}{head}: {rest}"
        return f"{key}: {text}, got {quote(found)}"
    if kind == "literal_error":
        choices = error["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
        return f"{key}: must be one of {choices}, got {quote(found)}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        cls = _section_class(loc)
        phrase = _range(cls, loc[-1]) if cls else None
        return f"{key}: must be {phrase or error['msg'].lower()}, got {quote(found)}"
    if kind in ("too_short", "too_long"):
        return f"{key}: {error['msg'].lower()}"
    what = _MESSAGES.get(kind, error["msg"])
    return f"{key or 'params'}: {what}, got {quote(found)}"


def from_dict(raw: Any) -> Params:
    """Build and validate Params from a parsed params.yaml mapping. Raises ParamsError (the first error)."""
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as e:
        errors = e.errors()
        raise ParamsError(_message(errors[0])
                          + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")) from None


def knobs(cls: Any = Params, prefix: str = "") -> dict[str, str]:
    """Every knob's dotted name -> its help, in declaration order (sections recursed)."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        sub = _subsection(cls, f.name)
        if sub is not None:
            out.update(knobs(sub, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = cls.__pydantic_fields__[f.name].description or ""
    return out


def runtime_knobs(cls: Any = Params, prefix: str = "") -> list[str]:
    """The dotted names of the knobs declared runtime-only (knob(..., runtime=True)), in declaration order.

    dvc.yaml lists every other knob under the stages whose outputs it changes (tests/test_dvc_params.py).
    """
    out: list[str] = []
    for f in dataclasses.fields(cls):
        sub = _subsection(cls, f.name)
        if sub is not None:
            out += runtime_knobs(sub, f"{prefix}{f.name}.")
        elif (cls.__pydantic_fields__[f.name].json_schema_extra or {}).get("runtime"):
            out.append(prefix + f.name)
    return out


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
    """Parse YAML as DVC does (ruamel.yaml, YAML 1.2); duplicate keys, syntax errors and files that attack
    the reader (aliases that expand beyond MAX_YAML_NODES values, deep nesting, huge numbers) are
    ParamsErrors.

    PyYAML would silently keep the last of two equal keys, and reads some scalars differently from DVC
    (``yes``, ``1e-3``), so `dvc params diff` and the stages would disagree.
    """
    yaml = YAML(typ="safe", pure=True)
    try:
        # The parser is a flat state machine: its events give the depth before the recursive composer
        # would run out of stack on "[[[[...".
        depth = 0
        for event in yaml.parse(text):
            depth += isinstance(event, CollectionStartEvent) - isinstance(event, CollectionEndEvent)
            if depth > MAX_YAML_DEPTH:
                raise ParamsError(f"{where}:{event.start_mark.line + 1}: invalid YAML: nested more than "
                                  f"{MAX_YAML_DEPTH} levels deep (a params file is a few levels deep)")
        # Composing keeps an alias as a second reference to its node, so a 1 KB "billion laughs" file is a
        # small graph here; its expanded size is measured before anything walks the values one by one.
        node = yaml.compose(text)
        if node is None:
            return None
        _check_expansion(node, where)
        return yaml.constructor.construct_document(node)
    except ParamsError:
        raise
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark is not None else where
        what = "duplicate key (each key may appear once): " if isinstance(e, DuplicateKeyError) else ""
        raise ParamsError(f"{at}: invalid YAML: {what}{e.problem or e.context}") from e
    except YAMLError as e:
        raise ParamsError(f"{where}: invalid YAML: {str(e).splitlines()[0]}") from e
    except ValueError as e:   # a number past CPython's 4300 digits: ruamel's int() refuses it
        raise ParamsError(f"{where}: invalid YAML: {str(e).split(';')[0]}") from None


def _check_expansion(root: Node, where: str) -> None:
    """Refuse a document whose aliases expand to more than MAX_YAML_NODES values, or refer to themselves."""
    sizes: dict[int, int | None] = {}    # id(node) -> its expanded size (capped); None while being counted

    def size(node: Node) -> int:
        if id(node) in sizes:
            known = sizes[id(node)]
            if known is None:
                raise ParamsError(f"{where}: invalid YAML: an alias refers to its own value (line "
                                  f"{node.start_mark.line + 1})")
            return known
        sizes[id(node)] = None
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = []
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_YAML_NODES:
                break
        sizes[id(node)] = total
        return total

    if size(root) > MAX_YAML_NODES:
        raise ParamsError(f"{where}: invalid YAML: more than {MAX_YAML_NODES} values once aliases are "
                          "expanded (a params file holds a few hundred); write the values out")
