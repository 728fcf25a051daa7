"""The `corgigan` command: one sub-command per pipeline stage, plus `generate`.

This module only parses arguments, loads params.yaml once and passes the stage its section and paths.
Paths come from dvc.yaml's `cmd` lines, the one place that names them.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn

from corgigan import params as params_mod
from corgigan.errors import StageError, one_line, quote
from corgigan.params import MAX_FRAMES, MAX_PSI, MAX_SEEDS, MAX_SIGMAS, MAX_STEPS, SEED_LIMIT
from corgigan.stylegan2.data import DatasetError
from corgigan.stylegan2.devices import DeviceError
from corgigan.stylegan2.loop import TrainingError
from corgigan.stylegan2.ops.build import CudaOpsError
from corgigan.stylegan2.snapshot import SnapshotError
from corgigan.stylegan2.ws_ranges import LAYERS_HELP
from corgigan.tables import REASONS, SchemaError, remove_stale_temps

log = logging.getLogger("corgigan")

# Failures a user can fix, each raised with a message that says how: one line and rc 2, no traceback.
# Anything else is a bug and keeps its traceback.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (
    params_mod.ParamsError, StageError, SchemaError, DatasetError, SnapshotError, TrainingError, CudaOpsError,
    DeviceError,
)

MAX_PROJECT_STEPS = 10_000   # optimisation steps of one projection (`project --steps`, `serve --max-steps`)

# The CLI's numbers: command -> argument -> (lowest, highest), both allowed. check_arguments holds every
# command to them before it reads or writes anything; --seeds and --strength have their own parsers.
BOUNDS: dict[str, dict[str, tuple[int, int]]] = {
    "generate": {"psi": (-MAX_PSI, MAX_PSI), "frames": (2, MAX_FRAMES), "steps": (2, MAX_STEPS)},
    "project": {"steps": (1, MAX_PROJECT_STEPS), "seed": (0, SEED_LIMIT - 1)},
    "serve": {"port": (0, 65535), "max_steps": (1, MAX_PROJECT_STEPS)},
}


class UsageError(Exception):
    """argparse refused the command line; main prints the reason as one line and returns 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line raises UsageError (one capped line) instead of printing the usage
    and exiting; sub-command parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")

# stage -> (help, [(argument, help)]); every argument is a required path.
STAGES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "scrape": ("collect images into shards and posts.parquet", [
        ("--out", "output folder: shards/, posts.parquet, truth.parquet"),
        ("--cache", "persistent download cache kept between runs (instagram), not a DVC output"),
    ]),
    "detector": ("train or import the dog detector", [
        ("--out", "output folder for the detector weights"),
    ]),
    "detect": ("detect dogs in every scraped image", [
        ("--raw", "scrape output folder"),
        ("--detector", "detector folder"),
        ("--out", "detections.parquet to write"),
    ]),
    "filter": ("crop square around the one dog; record every decision", [
        ("--raw", "scrape output folder"),
        ("--detections", "detections.parquet"),
        ("--out", "output folder: filter.parquet and crop shards"),
    ]),
    "dedup": ("drop near-duplicate crops", [
        ("--crops", "filter output folder"),
        ("--out", "dedup.parquet to write"),
    ]),
    "dataset": ("pack the training zip, the funnel metrics and the contact sheet", [
        ("--raw", "scrape output folder"),
        ("--filtered", "filter output folder"),
        ("--dedup", "dedup.parquet"),
        ("--out", "dataset zip to write"),
        ("--funnel", "funnel.json to write"),
        ("--figures", "folder for the contact sheet"),
    ]),
    "train": ("train StyleGAN2-ADA on the dataset zip", [
        ("--dataset", "dataset zip"),
        ("--out", "checkpoint folder (snapshots, grids)"),
        ("--metrics", "folder for training metrics (dvclive)"),
    ]),
    "evaluate": ("FID/KID, sample grid and interpolation video of the last snapshot", [
        ("--checkpoints", "checkpoint folder (or one snapshot file or reference .pkl)"),
        ("--dataset", "dataset zip"),
        ("--metrics", "metrics.json to write"),
        ("--figures", "folder for grids and video"),
    ]),
    "explore": ("find, measure and draw latent directions (closed-form, PCA, detector-labelled)", [
        ("--checkpoints", "checkpoint folder (or one snapshot file or reference .pkl)"),
        ("--detector", "detector folder: labels the generated images"),
        ("--directions", "directions file to write (JSON, corgigan-directions/1)"),
        ("--metrics", "explore.json to write: explained variance, accuracies, rank correlations"),
        ("--figures", "folder for one strip per direction"),
    ]),
}

# The arguments of STAGES that name a stage's outputs (the rest are its inputs).
OUTPUT_ARGS = ("--out", "--metrics", "--figures", "--funnel", "--directions")

# Which params.yaml sections each stage receives, in order, before its paths.
SECTIONS: dict[str, tuple[str, ...]] = {
    "scrape": ("scrape", "images"),
    "detector": ("detector",),
    "detect": ("detect", "images"),
    "filter": ("filter", "images"),
    "dedup": ("dedup",),
    "dataset": ("dataset",),
    "train": ("train",),
    "evaluate": ("evaluate",),
    "explore": ("explore", "detect"),
    # export also runs as `corgigan export CHECKPOINT --out DIR` (_add_export_command); scrape and filter
    # describe the data in its model card
    "export": ("export", "scrape", "filter"),
}


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="corgigan", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, args) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=_stage_description(name, help_text),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        for arg, arg_help in args:
            p.add_argument(arg, type=Path, required=True, help=arg_help)
    what = "images, truncation sweep, style mixing, video or edits along a direction from a snapshot"
    g = sub.add_parser("generate", help=what, description=f"Draw {what}. Latents come from the seeds: the "
                       "same seed gives the same image on any machine.")
    g.add_argument("--checkpoint", type=Path, required=True,
                   help="snapshot file, checkpoint folder, or a StyleGAN2(-ADA) PyTorch or TensorFlow .pkl")
    g.add_argument("--out", type=Path, required=True, help="output folder")
    g.add_argument("--what", choices=["images", "truncation", "mixing", "video", "edit", "edit-video"],
                   default="images",
                   help="images: one PNG per seed; truncation: rows of psi; mixing: style-mixing grid; "
                   "video: interpolation through the seeds; edit: a strip along --direction, a row per seed; "
                   "edit-video: the seeds moving along --direction and back (default: %(default)s)")
    g.add_argument("--seeds", default="0-7", help="seeds: '0-7', '1,5,9' or a mix (default: %(default)s)")
    g.add_argument("--psi", type=float, default=1.0, help="truncation psi, 1 for none (default: %(default)s)")
    g.add_argument("--frames", type=int, default=48, help="video frames (default: %(default)s)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    g.add_argument("--directions", type=Path, default=Path("models/directions.json"),
                   help="directions file of the explore stage (default: %(default)s)")
    g.add_argument("--direction", help="edit: the direction's name in --directions (e.g. dog_size, sefa_0)")
    g.add_argument("--strength", default="-3..3",
                   help="edit: from A to B sigmas of W along the direction, 'A..B' (or 'S' for -S..S); write "
                   "--strength=-2..2 when A is negative (default: %(default)s)")
    g.add_argument("--layers", help=f"edit: the ws moved: {LAYERS_HELP} (default: the direction's own)")
    g.add_argument("--steps", type=int, default=7, help="edit: strip columns (default: %(default)s)")
    what = "a StyleGAN2(-ADA) PyTorch or TensorFlow pickle into a corgigan snapshot"
    c = sub.add_parser("convert", help=f"convert {what}",
                       description=f"Convert {what} (weights_only-loadable, so DVC and the pipeline deal "
                       "only in plain weights). The pickle is read without running any of its code.")
    c.add_argument("pickle", type=Path,
                   help="network-snapshot-NNNNNN.pkl, a pretrained .pkl, or a TensorFlow (G, D, Gs) pickle")
    c.add_argument("--out", type=Path, required=True, help="snapshot file to write (e.g. models/ffhq.pt)")
    c.add_argument("--config", default="",
                   help="train.config the snapshot carries (its networks must take the weights); default: "
                   "the preset with exactly the pickle's networks, else auto's settings")
    r = sub.add_parser("report", help="the experiments side by side: differing params, funnel, FID/KID",
                       description="Compare the experiments of this DVC project (the baseline commit, its "
                       "experiments and the workspace): one row each, with only the params that differ, the "
                       "funnel's entered and kept counts, and FID/KID. Reads `dvc exp show --json`.")
    r.add_argument("--all-commits", action="store_true", help="include every commit, not just HEAD's")
    sub.add_parser("check", help="list what the current params need and what is missing",
                   description="Check, before `dvc repro`, everything the params need: the source's files or "
                   "session, the detector's weights or boxes, GPUs for the devices asked for, the Inception "
                   "file, disk space. Exits 2 when something is missing, saying what to do.")
    _add_play_commands(sub)
    _add_export_command(sub)
    return parser


def _add_export_command(sub: argparse._SubParsersAction) -> None:
    """`export`: a model as a portable folder (README "Sharing a model"); also the pipeline's export stage."""
    what = "a model as a portable folder: safetensors + config, model card, samples, directions, ONNX"
    e = sub.add_parser("export", help=f"export {what}",
                       description=f"Export {what}. The folder loads wherever a checkpoint does (generate, "
                       "serve, project, evaluate, explore, train.resume_from) and is laid out as the Hugging "
                       "Face Hub expects. The card is written from the records given (and params.yaml's "
                       "scrape and filter sections when they describe the model's data); what is not "
                       "recorded is said to be unknown. Reads params.yaml sections: "
                       f"{', '.join(SECTIONS['export'])}.")
    e.add_argument("checkpoint", type=Path,
                   help="snapshot file, checkpoint folder, export folder, or a StyleGAN2(-ADA) PyTorch or "
                   "TensorFlow .pkl")
    e.add_argument("--out", type=Path, required=True, help="export folder to write (replaced as a whole)")
    e.add_argument("--directions", type=Path,
                   help="directions file of the explore stage, shipped in the folder")
    e.add_argument("--metrics", type=Path, help="evaluate's metrics.json: FID/KID for the card")
    e.add_argument("--funnel", type=Path,
                   help="the dataset stage's funnel.json: the data's counts for the card")
    e.add_argument("--explore", type=Path, help="explore's explore.json: the directions' measured accuracy")
    e.add_argument("--onnx", action="store_true",
                   help="also write generator.onnx, checked with onnxruntime (params export.onnx does too)")


def _add_play_commands(sub: argparse._SubParsersAction) -> None:
    """`project` and `serve`: play with a trained model (README "Play with a model")."""
    ckpt = "snapshot file, checkpoint folder, or a StyleGAN2(-ADA) PyTorch or TensorFlow .pkl"
    detector = ("detector folder (e.g. models/detector): crop around the dog as the filter stage does; "
                "without it, the centred square of the short side")
    lpips = "torchvision's VGG16 weights (vgg16-397923af.pth): adds LPIPS-VGG to the projection loss"
    lpips_lin = "LPIPS's linear calibration for VGG (the lpips package's weights/v0.1/vgg.pth); needs --lpips"
    crop = (" Photos are cropped and resized with the filter stage's rule and params.yaml's filter.min_crop "
            "and resize_filter (when --params exists; else the whole short side).")
    p = sub.add_parser("project", help="find the latents of real photos (W or W+)",
                       description="Find the latent (in W or W+) that makes the generator reproduce each "
                       "photo: a pixel loss plus a feature loss from the model's own discriminator, offline."
                       + crop +
                       " Writes OUT/<photo>/: target.png, projected.png, projected_w.npz, projection.mp4, "
                       "errors.json.")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="photos (JPEG, PNG, ...)")
    p.add_argument("--checkpoint", type=Path, required=True, help=ckpt)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--detector", type=Path, help=detector)
    p.add_argument("--steps", type=int, default=200, help="optimisation steps (default: %(default)s)")
    p.add_argument("--space", choices=["w", "w+"], default="w+",
                   help="w: one w for all layers (edits behave best); w+: one per layer (closer "
                   "reconstructions) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent noise (default: %(default)s)")
    p.add_argument("--lpips", type=Path, help=lpips)
    p.add_argument("--lpips-lin", type=Path, help=lpips_lin)
    p.add_argument("--no-video", action="store_true", help="skip projection.mp4")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    s = sub.add_parser("serve", help="a local web page to explore a model",
                       description="Serve a page to explore a model: seed grid, truncation, style mixing, "
                       "direction sliders, and photo upload -> projection -> edits. Offline (nothing loads "
                       "from elsewhere); binds 127.0.0.1 unless --host says otherwise." + crop)
    s.add_argument("--checkpoint", type=Path, required=True, help=ckpt)
    s.add_argument("--directions", type=Path,
                   help="directions file of the explore stage (JSON, corgigan-directions/1): one slider each")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    s.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one (default: %(default)s)")
    s.add_argument("--detector", type=Path, help=detector)
    s.add_argument("--max-steps", type=int, default=300,
                   help="most projection steps one upload may ask for (default: %(default)s)")
    s.add_argument("--lpips", type=Path, help=lpips)
    s.add_argument("--lpips-lin", type=Path, help=lpips_lin)
    s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")


def _photo_settings(args: argparse.Namespace) -> tuple[object | None, dict]:
    """The filter stage's crop rule and the detect stage's settings from params.yaml, when it exists."""
    from corgigan.play.photos import CropRule

    if not Path(args.params).is_file():
        return None, {}
    cfg = params_mod.load(args.params)
    rule = CropRule(min_crop=cfg.filter.min_crop, resize_filter=cfg.filter.resize_filter,
                    max_pixels=cfg.images.max_pixels)
    detect = {"conf": cfg.detect.conf, "iou": cfg.detect.iou, "imgsz": cfg.detect.imgsz,
              "device": cfg.detect.device}
    return rule, detect


def _lpips_files(args: argparse.Namespace) -> tuple[Path, Path | None] | None:
    if args.lpips_lin and not args.lpips:
        raise StageError("--lpips-lin calibrates LPIPS: give the VGG16 weights with --lpips too")
    return (args.lpips, args.lpips_lin) if args.lpips else None


def _play(args: argparse.Namespace) -> None:
    """Run `project` or `serve`."""
    rule, detect = _photo_settings(args)
    if args.command == "project":
        from corgigan.play import projection
        cfg = projection.ProjectConfig(steps=args.steps, space=args.space, seed=args.seed)
        projection.main(args.images, args.checkpoint, args.out, cfg, rule, args.detector, detect,
                        _lpips_files(args), args.device, video=not args.no_video)
        return
    from corgigan.play import explorer, serve
    limits = explorer.Limits(max_steps=args.max_steps)
    model = explorer.load_explorer(args.checkpoint, args.device, args.directions, args.detector, detect, rule,
                                   _lpips_files(args), limits)
    serve.main(model, args.host, args.port)


def parse_strength(text: str) -> tuple[float, float]:
    """Parse '-3..3' (from A to B) or '2' (-2..2) into (A, B), finite and within MAX_SIGMAS sigmas."""
    try:
        if ".." in text:
            lo, hi = (float(x) for x in text.split("..", 1))
        else:
            hi = abs(float(text))
            lo = -hi
    except ValueError:
        raise StageError(f"--strength {quote(text)}: use A..B in sigmas, e.g. --strength=-3..3") from None
    if not all(math.isfinite(x) and abs(x) <= MAX_SIGMAS for x in (lo, hi)):
        raise StageError(f"--strength {quote(text)}: A and B must be finite numbers in [-{MAX_SIGMAS}, "
                         f"{MAX_SIGMAS}]")
    if lo == hi:
        raise StageError(f"--strength {quote(text)}: A and B are equal; nothing would move")
    return lo, hi


def _edit(args: argparse.Namespace) -> None:
    """`generate --what edit | edit-video`: check the arguments, then sampling.main_edit draws."""
    from corgigan.analysis import sampling

    if not args.direction:
        raise StageError(f"--what {args.what} needs --direction NAME (a name in {args.directions})")
    sampling.main_edit(args.checkpoint, args.out, args.directions, args.direction, args.layers, args.seeds,
                       args.strength, args.psi, steps=args.steps,
                       frames=args.frames if args.what == "edit-video" else 0, device=args.device)


def _stage_description(name: str, help_text: str) -> str:
    """A stage's --help text: what it does, the params.yaml sections it reads, and filter's reasons."""
    lines = [help_text[0].upper() + help_text[1:] + ".", "",
             f"Reads params.yaml sections: {', '.join(SECTIONS[name])}."]
    if name == "train":   # the knobs StyleGAN users sweep, each with the reference's flag in its help
        lines += ["", "Knobs (params.yaml train:, or `dvc exp run -S train.KNOB=VALUE`):"]
        runtime = set(params_mod.runtime_knobs())
        lines += [f"  {key:<24} {help_}{' [runtime only: DVC does not track it]' if key in runtime else ''}"
                  for key, help_ in params_mod.knobs().items() if key.startswith("train.")]
    if name == "filter":
        lines += ["", "Rejection reasons (filter.parquet `reason`; dedup adds `duplicate`):"]
        lines += [f"  {reason:<15} {why}" for reason, why in REASONS.items() if reason != "duplicate"]
    return "\n".join(lines)


def stage_module(name: str) -> ModuleType:
    """The stage module that runs `name`, imported only when it runs (some pull in heavy libraries)."""
    match name:
        case "scrape":
            from corgigan.stages import scrape as module
        case "detector":
            from corgigan.stages import detector as module
        case "detect":
            from corgigan.stages import detect as module
        case "filter":
            from corgigan.stages import filter as module
        case "dedup":
            from corgigan.stages import dedup as module
        case "dataset":
            from corgigan.stages import dataset as module
        case "train":
            from corgigan.stages import train as module
        case "evaluate":
            from corgigan.stages import evaluate as module
        case "explore":
            from corgigan.stages import explore as module
        case "export":
            from corgigan.stages import export as module
        case _:
            raise StageError(f"no stage {name!r}")
    return module


def parse_seeds(text: str) -> list[int]:
    """Parse '0-7' or '1,5,9' (or a mix: '0-3,9') into a list of seeds, each in [0, 2**32), at most
    MAX_SEEDS of them (counted before a range is expanded, so '0-1000000000' costs nothing)."""
    ranges: list[tuple[int, int]] = []
    count = 0
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            lo, hi = (int(x) for x in part.split("-", 1)) if "-" in part else (int(part),) * 2
        except ValueError:
            raise StageError(f"--seeds {quote(text)}: {quote(part)} is not a seed; use '0-7' or "
                             "'1,5,9'") from None
        if hi < lo:
            raise StageError(f"--seeds {quote(text)}: range {part} runs backwards (write {hi}-{lo})")
        for seed in (lo, hi):
            if not 0 <= seed < SEED_LIMIT:
                raise StageError(f"--seeds {quote(text)}: seed {quote(seed)} is not in [0, {SEED_LIMIT})")
        ranges.append((lo, hi))
        count += hi - lo + 1
    if not ranges:
        raise StageError(f"--seeds {quote(text)}: no seeds; use '0-7' or '1,5,9'")
    if count > MAX_SEEDS:
        raise StageError(f"--seeds {quote(text)}: {count} seeds; at most {MAX_SEEDS} per command")
    return [seed for lo, hi in ranges for seed in range(lo, hi + 1)]


def check_arguments(args: argparse.Namespace) -> None:
    """Hold the command's numbers to BOUNDS (finite, in range) and parse `generate`'s --seeds and
    --strength in place; a StageError names the argument. Runs before the command reads or writes anything,
    so a bad value leaves no empty output folder."""
    for name, (lo, hi) in BOUNDS.get(args.command, {}).items():
        value, flag = getattr(args, name), "--" + name.replace("_", "-")
        if isinstance(value, float):
            if not (math.isfinite(value) and lo <= value <= hi):   # NaN fails every comparison: say so
                raise StageError(f"{flag} {value:g}: must be a finite number in [{lo}, {hi}]")
        elif not lo <= value <= hi:
            raise StageError(f"{flag} {quote(value)}: must be in [{lo}, {hi}]")
    if args.command == "generate":
        args.seeds = parse_seeds(args.seeds)
        args.strength = parse_strength(args.strength)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `corgigan` console script."""
    try:
        args = _parser().parse_args(argv)
    except UsageError as e:
        _setup_logging(verbose=False)
        log.error("%s", one_line(e))
        return 2
    _setup_logging(args.verbose)
    # Every line printed for an error goes through one_line: one line, capped, whatever it quotes.
    try:
        check_arguments(args)
        if args.command == "generate" and args.what in ("edit", "edit-video"):
            _edit(args)
            return 0
        if args.command == "generate":
            from corgigan.analysis import sampling
            sampling.main(checkpoint=args.checkpoint, out=args.out, what=args.what, seeds=args.seeds,
                          psi=args.psi, frames=args.frames, device=args.device)
            return 0
        if args.command in ("project", "serve"):
            _play(args)
            return 0
        if args.command == "convert":
            from corgigan.stylegan2 import importer
            importer.convert(args.pickle, args.out, args.config or None)
            return 0
        if args.command == "check":
            from corgigan import check
            checks = check.run_checks(params_mod.load(args.params), Path.cwd())
            sys.stdout.write(check.format_checks(checks) + "\n")
            return 0 if all(c.ok for c in checks) else 2
        if args.command == "report":
            from corgigan import report
            sys.stdout.write(report.main(args.all_commits) + "\n")
            return 0
        cfg = params_mod.load(args.params)
        sections = [getattr(cfg, s) for s in SECTIONS[args.command]]
        if args.command == "export":
            remove_stale_temps(args.out)
            stage_module("export").run(*sections, checkpoint=args.checkpoint, out=args.out,
                                       directions=args.directions, metrics=args.metrics, funnel=args.funnel,
                                       explore=args.explore, onnx=args.onnx)
            return 0
        paths = {a.lstrip("-"): getattr(args, a.lstrip("-")) for a, _ in STAGES[args.command][1]}
        # What a killed earlier run left among this stage's outputs (hidden temporary files) goes first:
        # nothing else ever removes it, and DVC would cache it with the outputs.
        remove_stale_temps(*(paths[a.lstrip("-")] for a in OUTPUT_ARGS if a.lstrip("-") in paths))
        stage_module(args.command).run(*sections, **paths)
    except EXPECTED_ERRORS as e:
        log.error("%s", one_line(e))
        return 2
    except OSError as e:   # disk full, permission denied, a path that is a folder: the system says why
        log.error("%s", one_line(f"{e.filename or type(e).__name__}: {e.strerror or e}"))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
