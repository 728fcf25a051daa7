"""`corgigan check`: everything the current params need, what is missing, and what to do about it.

Each stage checks its own inputs and devices when it starts; this runs all of those checks at once,
before `dvc repro`, so a full-scale run does not stop hours in for want of a file or a GPU. Nothing is
downloaded, trained or written.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from corgigan.analysis.fid import INCEPTION_FILE
from corgigan.errors import StageError
from corgigan.params import Params
from corgigan.stylegan2 import configs
from corgigan.stylegan2.devices import DeviceError, resolve_device

# Rough bytes per image, for the disk estimate: a scraped photo, and a crop PNG per pixel (it is stored
# twice: the crop shards and the dataset zip).
PHOTO_BYTES = 300_000
CROP_BYTES_PER_PIXEL = 1.5
KEPT_SHARE = 0.4                          # of scraped images that become crops (the original: 136k of 350k)
SNAPSHOT_BYTES_PER_PARAM = 4 * 3 * 3     # G, D, G_ema and two Adam moments, float32, roughly


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


def disk_check(p: Params, root: Path) -> Check:
    """Free space at `root` against a rough estimate of what the run writes."""
    s = p.scrape
    images = {"synthetic": s.synthetic.num_images + 50,
              "instagram": s.instagram.max_posts * len(s.instagram.hashtags)}.get(s.source)
    if images is None:   # a folder: its own size is what scrape copies into shards
        folder = Path(s.folder.path)
        raw = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0
        images = max(raw // PHOTO_BYTES, 1)
    else:
        raw = images * PHOTO_BYTES
    crops = images * KEPT_SHARE * p.filter.resolution ** 2 * CROP_BYTES_PER_PIXEL * 2
    cfg = configs.make_config(p.train.config, p.filter.resolution, batch=p.train.batch)
    G, D = configs.build_networks(cfg) if cfg.resolution <= 256 else (None, None)
    params = (sum(x.numel() for x in G.parameters()) + sum(x.numel() for x in D.parameters())) if G else 6e7
    snapshots = p.train.keep_snapshots or max(1, int(p.train.kimg // p.train.snapshot_kimg))
    need = raw + crops + snapshots * params * SNAPSHOT_BYTES_PER_PARAM
    free = shutil.disk_usage(root).free
    return Check("disk space", free > need, f"{free / 1e9:.1f} GB free at {root}, about {need / 1e9:.1f} GB "
                 "needed (a rough estimate)", "free some space, or set train.keep_snapshots")


def run_checks(p: Params, root: Path, environ: dict[str, str] | None = None) -> list[Check]:
    """Every check for params `p` in the project at `root`."""
    environ = dict(os.environ) if environ is None else environ
    return [*source_checks(p, environ), *detector_checks(p), *train_checks(p), *evaluate_checks(p),
            disk_check(p, root)]


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
