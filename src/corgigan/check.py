"""`corgigan check`: everything the current params need, what is missing, and what to do about it.

Each stage checks its own inputs and devices when it starts; this runs all of those checks at once,
before `dvc repro`, so a full-scale run does not stop hours in for want of a file or a GPU. Nothing is
downloaded, trained or written.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corgigan.analysis import sampling
from corgigan.analysis.fid import INCEPTION_FILE
from corgigan.errors import StageError
from corgigan.params import Params
from corgigan.stylegan2 import configs
from corgigan.stylegan2.devices import DeviceError, resolve_device

# The cost model's figures live in costs.json beside this file, each with where it came from: measured by
# `make rehearsal` (benchmarks/rehearsal.py), taken from ../shared/NOTES.md or published by NVIDIA. One
# place, so that check, the rehearsal and README's "What the full run costs" quote the same numbers.
COSTS_FILE = Path(__file__).with_name("costs.json")
BYTES_PER_NUMBER = 4           # float32; a snapshot holds G, D, G_ema and Adam's two moments of G and D
ORIGINAL_PHOTOS, ORIGINAL_CROPS = 350_000, 136_255   # the original corgi run (NOTES.md)
DVC_LINK_TYPES = "reflink,hardlink,symlink"


@dataclass(frozen=True)
class Check:
    """One thing the params need: whether it is there, what was found, and how to get it."""

    what: str
    ok: bool
    detail: str
    fix: str = ""


def _device(key: str, name: str, fix: str = "") -> Check:
    try:
        return Check(key, True, str(resolve_device(name)))
    except DeviceError as e:
        return Check(key, False, str(e), fix or f"set {key}: cpu (or run on a machine with a GPU)")


def source_checks(p: Params, environ: dict[str, str]) -> list[Check]:
    """The scrape source's inputs: the folder or zip, or the Instagram session."""
    s = p.scrape
    if s.source == "folder":
        path = Path(s.folder.path)
        ok = path.is_dir() or (path.is_file() and path.suffix.lower() == ".zip")
        return [Check("scrape.folder.path", ok, str(path) if ok else f"{path}: no such folder or .zip",
                      "put your photos there, or point scrape.folder.path at them")]
    if s.source == "instagram":
        from corgigan.data.sources.instagram import load_session  # instaloader only when it is the source

        try:
            user, _ = load_session(s.instagram.session_env, environ)
            return [Check("Instagram session", True, f"${s.instagram.session_env}, user id {user}")]
        except StageError as e:
            return [Check("Instagram session", False, str(e).split(". ")[0],
                          "`instaloader --login USER`, then export "
                          f"{s.instagram.session_env}=~/.config/instaloader/session-USER")]
    return [Check("scrape.source", True, "synthetic (drawn on the fly)")]


def detector_checks(p: Params) -> list[Check]:
    """The detector's weights or labelled boxes, and the devices of detector and detect."""
    d = p.detector
    out = [_device("detector.device", d.device), _device("detect.device", p.detect.device)]
    if d.kind == "pretrained":
        path = Path(d.pretrained_weights)
        out.append(Check("detector.pretrained_weights", path.is_file(), str(path),
                         "copy an ultralytics detection .pt there (e.g. COCO yolo11n.pt with "
                         "detector.dog_class: 16)"))
    elif d.labels == "stanford_dogs":
        root = Path(d.stanford_dogs_path)
        ok = (root / "Images").is_dir() and (root / "Annotation").is_dir()
        out.append(Check("detector.stanford_dogs_path", ok, f"{root} {'has' if ok else 'lacks'} Images/ and "
                         "Annotation/", "unpack Stanford Dogs' images and annotations there"))
    return out


def train_checks(p: Params) -> list[Check]:
    """The training device, and whether the config fits it (large configs need a GPU)."""
    t = p.train
    cfg = configs.make_config(t.config, p.filter.resolution, batch=t.batch)
    large = cfg.resolution >= 512
    dev = _device("train.device", t.device, "run on a GPU machine: at this resolution the CPU takes days per "
                  "kimg" if large else "")
    out = [dev]
    if dev.ok and dev.detail == "cpu" and large and t.device != "cpu":
        out.append(Check("train on a GPU", False, f"{t.config} at {cfg.resolution} px and no GPU here",
                         "run on a GPU machine, or set train.device: cpu to insist"))
    return out


def evaluate_checks(p: Params) -> list[Check]:
    """The evaluate device and, for Inception FID, the local Inception weights."""
    e = p.evaluate
    out = [_device("evaluate.device", e.device)]
    if e.features == "inception":
        path = Path(e.inception_path)
        out.append(Check("evaluate.inception_path", path.is_file() and path.name == INCEPTION_FILE, str(path),
                         f"copy clean-fid's {INCEPTION_FILE} there (nothing is downloaded at run time), or "
                         "set evaluate.features: pixels"))
    return out


def load_costs(path: Path = COSTS_FILE) -> dict[str, Any]:
    """The cost model's figures {name: value} from a costs.json (default: the one beside this module)."""
    return {name: entry["value"] for name, entry in json.loads(path.read_text())["figures"].items()}


@functools.cache
def costs() -> dict[str, Any]:
    """The cost model's figures, read once per process from COSTS_FILE."""
    return load_costs()


def _scraped_images(p: Params, c: dict[str, Any]) -> tuple[int, float, bool]:
    """(images scrape takes in, raw GB, whether they are drawn scenes) for the params' source (an upper
    bound for Instagram)."""
    s = p.scrape
    if s.source == "folder":
        folder = Path(s.folder.path)
        raw = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0
        return max(int(raw / (c["raw_mb_photo"] * 1e6)), 1), raw / 1e9, False
    ig = s.instagram
    drawn = s.source == "synthetic"
    n = s.synthetic.num_images + 50 if drawn else ig.max_posts * len(ig.hashtags)
    return n, n * c["raw_mb_drawn" if drawn else "raw_mb_photo"] / 1e3, drawn


def project_disk(c: dict[str, Any], *, photos: int, crops: float, resolution: int, snapshots: int,
                 snapshot_gb: float, drawn: bool, linked: bool,
                 raw_gb: float | None = None) -> dict[str, float]:
    """GB per output for `photos` scraped images giving `crops` crops at `resolution`, `snapshots` kept
    snapshots, and the total with DVC's cache (a second copy of every output unless it links).

    Sizes are per image, measured at 1024 px and scaled by pixels; `drawn` picks the drawn scenes' sizes
    (the synthetic source) over photos'. `raw_gb` replaces the raw estimate when the photos are on disk.
    """
    kind = "drawn" if drawn else "photo"
    raw = photos * c[f"raw_mb_{kind}"] / 1e3 if raw_gb is None else raw_gb
    crop_gb = crops * c[f"crop_mb_1024_{kind}"] * (resolution / 1024) ** 2 / 1e3
    out = {"raw": raw, "crops": crop_gb, "zip": crop_gb * c["zip_per_crops"],
           "snapshots": snapshots * snapshot_gb}
    out["outputs"] = sum(out.values())
    out["total"] = out["outputs"] * (1 if linked else 2)
    return out


def _dvc_links(root: Path) -> bool:
    """Whether the project's DVC config makes the cache link files instead of copying them."""
    for name in ("config", "config.local"):
        path = root / ".dvc" / name
        if path.is_file() and any(line.strip().replace(" ", "").startswith("type=") and "copy" not in line
                                  for line in path.read_text().splitlines()):
            return True
    return False


def snapshot_gb(p: Params) -> float:
    """One training snapshot's size for the params' config, from its parameter counts (no weights made)."""
    import torch

    cfg = configs.make_config(p.train.config, p.filter.resolution, batch=p.train.batch)
    with torch.device("meta"):   # shapes only: counting a 1024-px network costs no memory
        G, D = configs.build_networks(configs.network_spec(cfg))
    g, d = (sum(x.numel() for x in net.parameters()) for net in (G, D))
    return BYTES_PER_NUMBER * (2 * g + d + 2 * (g + d)) / 1e9


def disk_estimate(p: Params, root: Path) -> dict[str, float]:
    """GB per output at the params' resolution and counts, and the total with DVC's cache copy."""
    c = costs()
    images, raw, drawn = _scraped_images(p, c)
    snaps = p.train.keep_snapshots or max(1, int(p.train.kimg // p.train.snapshot_kimg))
    return project_disk(c, photos=images, crops=images * c["kept_share"], resolution=p.filter.resolution,
                        snapshots=snaps, snapshot_gb=snapshot_gb(p), drawn=drawn, linked=_dvc_links(root),
                        raw_gb=raw)


def disk_check(p: Params, root: Path) -> Check:
    """Free space at `root` against the measured per-image and per-snapshot sizes, DVC's copy counted."""
    est = disk_estimate(p, root)
    free = shutil.disk_usage(root).free / 1e9
    parts = ", ".join(f"{k} {est[k]:.1f}" for k in ("raw", "crops", "zip", "snapshots"))
    copy = "linked by DVC" if est["total"] == est["outputs"] else "x2: DVC's cache copies every output"
    return Check("disk space", free > est["total"], f"{free:.1f} GB free at {root}, ~{est['total']:.1f} GB "
                 f"needed ({parts} GB; {copy})",
                 f"free space, or `dvc config cache.type {DVC_LINK_TYPES}` so DVC links instead of copying "
                 "(DVC then protects linked files read-only: `dvc unprotect` one before editing it in place)")


def memory_checks(p: Params) -> list[Check]:
    """Training and generation memory for the configs on the chosen devices, against what the device has."""
    import torch

    c = costs()
    scale = (p.filter.resolution / 1024) ** 2
    cfg = configs.make_config(p.train.config, p.filter.resolution, batch=p.train.batch)
    out = []
    for key, device, knob in (("train memory", p.train.device, "train.batch_gpu"),
                              ("evaluate memory", p.evaluate.device, "evaluate.batch")):
        try:
            dev = resolve_device(device)
        except DeviceError:
            continue   # the device check already says what is missing
        if dev.type == "cuda":
            have = torch.cuda.get_device_properties(dev).total_memory / 2**30
            train_need = c["train_gb_1024_gpu"] * scale
        else:
            have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
            train_need = c["train_gb_per_image_1024_cpu"] * scale * cfg.batch_gpu
        if key == "train memory":
            out.append(Check(key, train_need <= have, f"~{train_need:.1f} GB needed on {dev}, {have:.1f} GB "
                             "there", f"lower {knob}, or run on a device with more memory"))
            continue
        # Generation passes take as many of evaluate.batch's images as the memory budget holds (sampling's
        # rule), so a large batch costs passes, not memory; only one image beyond the budget cannot fit.
        per_image = c["gen_gb_per_image_1024_cpu"] * scale
        budget = sampling.memory_budget(dev) / 2**30
        per_pass = sampling.images_per_pass(budget, per_image, p.evaluate.batch)
        need = per_pass * per_image
        out.append(Check(key, need <= have, f"~{need:.1f} GB needed on {dev} (passes of {per_pass} of "
                         f"evaluate.batch's {p.evaluate.batch} images within the {budget:.1f} GB budget), "
                         f"{have:.1f} GB there", "run on a device with more memory"))
    return out


def data_stage_hours(c: dict[str, Any], photos: float) -> float:
    """Hours of detect and filter over `photos` on a CPU like the rehearsal's, from its per-photo costs."""
    return photos * (c["detect_s_per_image_cpu"] + c["filter_s_per_image_cpu"]) / 3600


def train_days(c: dict[str, Any], kimg: float, resolution: int) -> tuple[float, float]:
    """Training days on one V100 and one A100 from the published sec/kimg nearest `resolution`."""
    out = []
    for gpu in ("v100", "a100"):
        table = {int(r): s for r, s in c[f"sec_per_kimg_{gpu}"].items()}
        out.append(kimg * table[min(table, key=lambda r: abs(r - resolution))] / 86400)
    return out[0], out[1]


def time_check(p: Params) -> Check:
    """Training days on one V100 / A100 from the published sec/kimg at the params' resolution, and hours of
    detect and filter from the rehearsal's per-photo costs."""
    c = costs()
    res = p.filter.resolution
    v100, a100 = train_days(c, p.train.kimg, res)
    images, _, _ = _scraped_images(p, c)
    hours = data_stage_hours(c, images)
    return Check("train time", True, f"{p.train.kimg:g} kimg at {res} px: ~{v100:.1f} days on one V100, "
                 f"~{a100:.1f} on one A100 (published sec/kimg; divide by the GPUs used); detect and filter "
                 f"~{hours:.1f} h on 2 CPU cores like the rehearsal's (fewer with a GPU and more cores)")


def run_checks(p: Params, root: Path, environ: dict[str, str] | None = None) -> list[Check]:
    """Every check for params `p` in the project at `root`."""
    environ = dict(os.environ) if environ is None else environ
    return [*source_checks(p, environ), *detector_checks(p), *train_checks(p), *evaluate_checks(p),
            disk_check(p, root), *memory_checks(p), time_check(p)]


def format_checks(checks: list[Check]) -> str:
    """One line per check: ok or MISSING, what, what was found, and what to do when missing."""
    width = max(len(c.what) for c in checks)
    lines = []
    for c in checks:
        line = f"{'ok     ' if c.ok else 'MISSING'}  {c.what.ljust(width)}  {c.detail}"
        lines.append(line if c.ok else f"{line}\n{' ' * (11 + width)}-> {c.fix}")
    missing = sum(not c.ok for c in checks)
    lines.append("everything the params need is here" if not missing else f"{missing} missing")
    return "\n".join(lines)
