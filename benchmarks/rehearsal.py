"""The full run, rehearsed: configs/full.yaml's code paths at 1024 px on this machine, offline, small counts.

`make rehearsal` (or `python -m benchmarks.rehearsal`) writes a params file that is configs/full.yaml with
offline stand-ins and small counts (REHEARSAL below says each change and why): drawn scenes at photo sizes
from the synthetic source instead of Instagram, the drawn-scene detector trained tiny instead of Stanford
Dogs, pixel FID instead of Inception, a few paper1024 training steps on the CPU at 2 images per step. The
filter keeps full.yaml's rules (min side and crop 800, one dog, cover 0.5, 1024 px). Then it runs every
stage of dvc.yaml, each with dvc.yaml's own command line, as its own process, and measures:

  * wall seconds (time.perf_counter) and CPU seconds of the stage's process tree;
  * peak memory: the resident set's high-water mark of the stage's process and the children it waited for
    (os.wait4's rusage, ru_maxrss: the largest of them, not their sum);
  * output size per image (raw photo, 1024-px crop, zip member, snapshot), and seconds per image with the
    process start (python + torch imports, measured in the same run) taken off;

plus two probes: the memory of generating 1024-px images (peak RSS of a process generating a batch of 1
and of 3 with a paper1024 G, the difference per image: what evaluate and explore need per image), and the
1024-px crop of real photos (the photos ultralytics ships, cropped and resized by the filter's code),
since drawn scenes compress better than photos.

It writes OUT/rehearsal.json, OUT/rehearsal.txt (the table) and the stages' logs in OUT/logs, and, with
--costs, rewrites the measured figures of that costs.json (src/corgigan/costs.json is what `corgigan check`
and README's cost table use), keeping the published ones. --smoke runs the same at 64 px with tiny counts
(tests/test_rehearsal.py; ~2.5 min on 2 busy cores, the stages' process starts and the detector most of it).

    python -m benchmarks.rehearsal [--smoke] [--out out/rehearsal] [--costs src/corgigan/costs.json]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from corgigan import check, tables

log = logging.getLogger("rehearsal")

ROOT = Path(__file__).resolve().parents[1]
GB = 2**30   # peak memory in GiB, as the loop's peak_memory_gb and NOTES.md report it

# configs/full.yaml's changes for the rehearsal, section by section. Everything not named keeps full.yaml's
# value: the filter's rules, dedup, the training config and its knobs, evaluate's and explore's settings.
REHEARSAL: dict[str, dict[str, Any]] = {
    # Instagram -> drawn scenes at Instagram's photo sizes (1080 px wide; the filter's min side is 800).
    # Drawn dogs fill less of the frame than real corgi photos, so cover >= 0.5 keeps about one in eight.
    "scrape": {"source": "synthetic", "synthetic": {"seed": 1, "num_images": 48, "min_short_side": 800,
                                                    "max_short_side": 1080, "planted_per_case": 1}},
    # Stanford Dogs -> the drawn-scene detector, trained tiny (the demo's recipe that finds drawn dogs
    # confidently in about a minute); detect runs at the size it was trained at, as full.yaml says.
    "detector": {"labels": "synthetic", "model": "yolo11n.yaml", "num_images": 200, "epochs": 12,
                 "imgsz": 128, "batch": 8, "device": "cpu", "workers": 0},
    # detect.batch stays full.yaml's 64: explore labels generated images in batches of it, and generation
    # itself passes within the memory budget whatever the batch.
    "detect": {"imgsz": 128, "device": "cpu"},
    # paper1024 as configured, but 2 images per step (what fits 16 GB on the CPU) for 2 steps: the first
    # runs all four phases (both regularisers), then a snapshot with its sample grid. train.workers stays
    # full.yaml's 4, more than this machine may have: the loader clamps it.
    "train": {"batch": 2, "kimg": 0.004, "snapshot_kimg": 0.004, "tick_kimg": 0.002, "gpus": 1,
              "device": "cpu", "require_cuda_ops": False},
    # Inception -> pixel features (no weights offline); a few images each.
    "evaluate": {"num_images": 4, "features": "pixels", "grid_seeds": 4, "video_frames": 4,
                 "fid_every_snapshot": False, "device": "cpu"},
    "explore": {"num_components": 1, "pca_samples": 1000, "num_labelled": 8, "check_seeds": 2,
                "strip_seeds": 1, "strip_steps": 3, "device": "cpu"},
}

# The smoke version: the same stages and code at 64 px with tiny counts, the demo's training config.
SMOKE: dict[str, dict[str, Any]] = {
    "scrape": {"synthetic": {"num_images": 24, "min_short_side": 96, "max_short_side": 128}},
    "detector": {"num_images": 24, "epochs": 1, "imgsz": 64},
    "detect": {"imgsz": 64},
    # A detector trained for seconds is unsure of itself: take its best box however unsure, so that
    # crops reach dataset and train (the smoke checks code paths, not the detector's quality).
    "filter": {"min_side": 64, "min_crop": 64, "resolution": 64, "min_confidence": 0.0, "min_cover": 0.0,
               "max_dogs": 100, "max_center_shift": 1.0, "allow_partial": True},
    "train": {"config": "demo", "batch": 4, "kimg": 0.004, "snapshot_kimg": 0.004, "tick_kimg": 0.004},
    "evaluate": {"num_images": 4},
    "explore": {"pca_samples": 200, "num_labelled": 4},
}
SMOKE_DETECT_CONF = 0.001

# Stages whose per-image cost is per scraped photo, and those whose is per crop.
PER_PHOTO = ("scrape", "detect", "filter")
PER_CROP = ("dedup", "dataset")


@dataclass
class Stage:
    """One stage's measurements."""

    stage: str
    rc: int
    wall_s: float
    cpu_s: float
    peak_gb: float
    images: int = 0              # photos (scrape, detect, filter) or crops (dedup, dataset) it worked on
    out_mb: float = 0.0          # its main output's size
    mb_per_image: float = 0.0    # per photo (scrape), crop (filter, dataset) or snapshot (train)
    s_per_image: float = 0.0     # (wall - process start) / images


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def rehearsal_params(smoke: bool) -> dict[str, Any]:
    """configs/full.yaml with the rehearsal's changes (and the smoke's on top)."""
    raw = _merge(yaml.safe_load((ROOT / "configs" / "full.yaml").read_text()), REHEARSAL)
    if smoke:
        raw = _merge(raw, SMOKE)
        raw["detect"]["conf"] = SMOKE_DETECT_CONF
    return raw


def stage_commands(params: Path) -> list[tuple[str, list[str]]]:
    """Every stage of dvc.yaml with its own command line, `corgigan` run by this Python with `params`."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = []
    for name, stage in stages.items():
        argv = shlex.split(stage["cmd"])
        assert argv[0] == "corgigan", stage["cmd"]
        out.append((name, [sys.executable, "-m", "corgigan.cli", "--params", str(params), *argv[1:]]))
    return out


def measured(argv: list[str], cwd: Path, logfile: Path,
             env: dict[str, str]) -> tuple[int, float, float, float]:
    """Run argv; (exit code, wall s, CPU s, peak GiB) of its process and the children it waited for."""
    with logfile.open("wb") as f:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)   # this child's own rusage, not every child's so far
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024 / GB


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def _outputs(work: Path, name: str) -> tuple[int, int, int]:
    """(images its time divides by, images its output size divides by, bytes of its main output); the
    data stages work per scraped photo (scrape, detect, filter) or per kept crop (dedup, dataset)."""
    raw, filt = work / "data" / "raw", work / "data" / "interim" / "filter"
    match name:
        case "scrape":
            photos = len(tables.read_table("posts", raw / "posts.parquet", columns=["image_id"]))
            return photos, photos, _size(raw / "shards")
        case "detect" | "filter":
            posts = tables.read_table("posts", raw / "posts.parquet", columns=["decode_status"])
            decoded = int((posts["decode_status"] == "ok").sum())
            if name == "detect":
                return decoded, 0, _size(work / "data" / "interim" / "detections.parquet")
            return decoded, _kept(work), _size(filt) - _size(filt / "filter.parquet")
        case "dedup":
            return _kept(work), 0, _size(work / "data" / "interim" / "dedup.parquet")
        case "dataset":
            path = work / "data" / "processed" / "corgis.zip"
            with zipfile.ZipFile(path) as z:
                members = sum(i.filename.endswith(".png") for i in z.infolist())
            return members, members, _size(path)
        case "train":
            snaps = sorted((work / "models" / "stylegan2").glob("snapshot-*.pt"))
            return 0, len(snaps[-1:]), _size(snaps[-1]) if snaps else 0
        case "detector":
            return 0, 0, _size(work / "models" / "detector")
        case "evaluate":
            return 0, 0, _size(work / "reports" / "figures" / "evaluate")
        case "explore":
            figures = _size(work / "reports" / "figures" / "explore")
            return 0, 0, figures + _size(work / "models" / "directions.json")
        case "export":
            return 0, 0, _size(work / "models" / "export")
    return 0, 0, 0


def _kept(work: Path) -> int:
    path = work / "data" / "interim" / "filter" / "filter.parquet"
    table = tables.read_table("filter", path, columns=["kept"])
    return int(table["kept"].sum())


def generation_probe(config: str, resolution: int, batch: int) -> None:
    """(In a process of its own.) Generate `batch` images with a fresh `config` G at `resolution`."""
    import torch

    from corgigan.stylegan2 import configs

    torch.manual_seed(0)
    cfg = configs.make_config(config, resolution)
    G, _ = configs.build_networks(configs.network_spec(cfg))
    G.eval().requires_grad_(False)
    with torch.no_grad():
        img = G(torch.randn(batch, G.z_dim), torch.zeros(batch, 0), noise_mode="const")   # [N, C, H, W]
    assert img.shape[-1] == resolution


def generation_memory(config: str, resolution: int, work: Path, env: dict[str, str]) -> dict[str, float]:
    """Peak GiB of generating 1 and 3 images at `resolution`, and the difference per image."""
    peaks = {}
    for batch in (1, 3):
        argv = [sys.executable, "-m", "benchmarks.rehearsal", "--probe-generation", config, str(resolution),
                str(batch)]
        rc, _, _, peak = measured(argv, ROOT, work / "logs" / f"probe-generation-{batch}.log", env)
        if rc:
            raise RuntimeError(f"generation probe at batch {batch} failed; see {work / 'logs'}")
        peaks[batch] = peak
    return {"peak_gb_1": peaks[1], "peak_gb_3": peaks[3], "gb_per_image": (peaks[3] - peaks[1]) / 2}


def photo_probe(resolution: int, resize_filter: str, min_side: int) -> dict[str, Any]:
    """MB of real photos as scraped (per megapixel, and at Instagram's 1080x1350) and of their centred
    square crop at `resolution` as the filter writes it (PNG), from the photos the filter would crop
    (short side >= `min_side`). The photos are those ultralytics ships."""
    from PIL import Image

    from corgigan import images

    # Found, not imported: importing ultralytics outside detection.setup_ultralytics writes its settings.
    spec = importlib.util.find_spec("ultralytics")
    assert spec is not None and spec.submodule_search_locations, "ultralytics is not installed"
    rows = []
    for path in sorted((Path(spec.submodule_search_locations[0]) / "assets").glob("*.jpg")):
        img = Image.open(path).convert("RGB")
        w, h = img.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        crop = images.encode_png(images.crop_square(img, box, resolution, resize_filter))
        rows.append({"photo": path.name, "size": [w, h], "mb": path.stat().st_size / 1e6,
                     "mb_per_mpixel": path.stat().st_size / (w * h), "crop_mb": len(crop) / 1e6,
                     "cropped": s >= min_side})
    crops = [r["crop_mb"] for r in rows if r["cropped"]] or [r["crop_mb"] for r in rows]
    return {"photos": rows, "crop_mb": sum(crops) / len(crops),
            "raw_mb_1080x1350": sum(r["mb_per_mpixel"] for r in rows) / len(rows) * 1080 * 1350 / 1e6}


def start_seconds(env: dict[str, str], work: Path) -> float:
    """Wall seconds of a stage process that does nothing: Python, torch and the CLI imported."""
    argv = [sys.executable, "-c", "import corgigan.cli"]
    return min(measured(argv, ROOT, work / "logs" / "start.log", env)[1] for _ in range(2))


def measured_figures(stages: dict[str, Stage], gen: dict[str, float], photos: dict[str, Any],
                     resolution: int) -> dict[str, float]:
    """The costs.json figures this rehearsal measured, at 1024 px (only a 1024-px rehearsal writes them)."""
    assert resolution == 1024
    s = stages
    figures = {
        "raw_mb_drawn": s["scrape"].mb_per_image,
        "raw_mb_photo": photos["raw_mb_1080x1350"],
        "crop_mb_1024_drawn": s["filter"].mb_per_image,
        "crop_mb_1024_photo": photos["crop_mb"],
        # the zip holds the crops dedup kept: compare with as many crops' bytes
        "zip_per_crops": s["dataset"].mb_per_image / s["filter"].mb_per_image,
        "snapshot_gb_paper1024": s["train"].out_mb / 1e3,
        "gen_gb_per_image_1024_cpu": gen["gb_per_image"],
        "train_gb_per_image_1024_cpu": s["train"].peak_gb / REHEARSAL["train"]["batch"],
        # dedup's and dataset's per-crop seconds are in the report but not figures: a few crops take less
        # than their process start and the imports (imagededup's) it does not count.
        "detect_s_per_image_cpu": s["detect"].s_per_image,
        "filter_s_per_image_cpu": s["filter"].s_per_image,
    }
    # A stage done within its process start's noise (filter keeps a few crops of a few dozen photos) measured
    # no time per image: costs.json keeps its earlier figure rather than learn that it costs nothing.
    unmeasured = sorted(k for k, v in figures.items() if v <= 0)
    if unmeasured:
        log.warning("not measured (within the process start's noise), costs.json keeps: %s",
                    ", ".join(unmeasured))
    return {k: v for k, v in figures.items() if v > 0}


SOURCES = {
    "raw_mb_drawn": "drawn scenes at photo sizes (800-1080 px short side), JPEG as the synthetic source "
                    "writes them",
    "raw_mb_photo": "the real photos ultralytics ships (bus.jpg, zidane.jpg), bytes per pixel x 1080x1350",
    "crop_mb_1024_drawn": "the filter's 1024-px PNG crops of drawn scenes",
    "crop_mb_1024_photo": "the real photos ultralytics ships that pass min_side 800 (bus.jpg, 810x1080), "
                          "centre square resized to 1024 px by the filter's code, PNG",
    "zip_per_crops": "dataset zip bytes / the kept crops' bytes",
    "snapshot_gb_paper1024": "a paper1024 snapshot file (G, D, G_ema, Adam)",
    "gen_gb_per_image_1024_cpu": "peak RSS generating 3 vs 1 images with a paper1024 G, float32 on the CPU",
    "train_gb_per_image_1024_cpu": "the train stage's peak RSS / 2 images per pass, paper1024 on the CPU",
    "detect_s_per_image_cpu": "detect's wall time less the process start, per photo (imgsz 128, detector "
                              "loading included)",
    "filter_s_per_image_cpu": "filter's wall time less the process start, per photo",
}


def write_costs(path: Path, figures: dict[str, float], machine: str) -> None:
    """Rewrite the measured figures of the costs.json at `path`; the other figures stay as they are."""
    data = json.loads(path.read_text())
    for name, value in figures.items():
        entry = data["figures"][name]
        entry["value"] = round(value, 4)
        entry["source"] = f"rehearsal ({machine}): {SOURCES[name]}"
    path.write_text(json.dumps(data, indent=2) + "\n")


def projection(figures: dict[str, Any], snapshot_gb: float) -> dict[str, float]:
    """check's disk model at the original run's counts (photos' sizes, 10 kept snapshots, DVC's copy)."""
    return check.project_disk(figures, photos=check.ORIGINAL_PHOTOS, crops=check.ORIGINAL_CROPS,
                              resolution=1024, snapshots=10, snapshot_gb=snapshot_gb, drawn=False,
                              linked=False)


def table(report: dict[str, Any]) -> str:
    """The stages as a text table, then the probes and the projection."""
    head = f"{'stage':<9} {'rc':>3} {'wall s':>8} {'cpu s':>8} {'peak GiB':>9} {'images':>7} {'out MB':>9} " \
           f"{'MB/image':>9} {'s/image':>8}"
    lines = [f"rehearsal ({report['profile']}, {report['machine']})", head]
    for s in report["stages"]:
        lines.append(f"{s['stage']:<9} {s['rc']:>3} {s['wall_s']:>8.1f} {s['cpu_s']:>8.1f} "
                     f"{s['peak_gb']:>9.2f} {s['images']:>7} {s['out_mb']:>9.2f} {s['mb_per_image']:>9.3f} "
                     f"{s['s_per_image']:>8.3f}")
    g = report["generation"]
    lines.append(f"generation at {report['resolution']} px: peak {g['peak_gb_1']:.2f} GiB for 1 image, "
                 f"{g['peak_gb_3']:.2f} for 3: {g['gb_per_image']:.3f} GiB per image")
    p = report["photos"]
    lines.append(f"real photos: {p['raw_mb_1080x1350']:.3f} MB at 1080x1350, crop {p['crop_mb']:.3f} MB at "
                 f"{report['resolution']} px")
    if report.get("projection"):
        proj = report["projection"]
        lines.append("projected to the original run (350k photos, 136,255 crops, 10 snapshots): " +
                     ", ".join(f"{k} {v:.0f} GB" for k, v in proj.items()))
    return "\n".join(lines)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(YOLO_OFFLINE="1", YOLO_AUTOINSTALL="false", DVC_NO_ANALYTICS="1", PYTHONHASHSEED="0")
    return env


def run(out: Path, smoke: bool, costs: Path | None) -> dict[str, Any]:
    """Rehearse every stage into `out`; return the report (also written as rehearsal.json / .txt)."""
    work = out / "project"
    # A rehearsal measures a run from nothing: an earlier one's outputs would let train resume a finished
    # snapshot in seconds and evaluate reuse cached features.
    for old in (work, out / "logs", out / "cache"):
        shutil.rmtree(old, ignore_errors=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    (work / "data" / "external" / "photos").mkdir(parents=True, exist_ok=True)
    raw = rehearsal_params(smoke)
    params = out / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = _env()
    env.setdefault("CORGIGAN_CACHE", str(out / "cache"))
    resolution = raw["filter"]["resolution"]
    start = start_seconds(env, out)
    stages: dict[str, Stage] = {}
    for name, argv in stage_commands(params.resolve()):
        log.info("%s ...", name)
        rc, wall, cpu, peak = measured(argv, work, out / "logs" / f"{name}.log", env)
        stage = Stage(name, rc, round(wall, 2), round(cpu, 2), round(peak, 3))
        stages[name] = stage
        log.info("%s: rc %d, %.1f s, peak %.2f GiB", name, rc, wall, peak)
        if rc:
            break
        timed, sized, size = _outputs(work, name)
        stage.images, stage.out_mb = timed or sized, round(size / 1e6, 3)
        if sized:
            stage.mb_per_image = round(size / 1e6 / sized, 4)
        if timed:
            stage.s_per_image = round(max(wall - start, 0.0) / timed, 4)
    report: dict[str, Any] = {
        "profile": "smoke" if smoke else "full", "resolution": resolution, "machine": machine(),
        "start_s": round(start, 2), "changes": {**REHEARSAL, **({"smoke": SMOKE} if smoke else {})},
        "stages": [asdict(s) for s in stages.values()],
    }
    failed = [s.stage for s in stages.values() if s.rc]
    if not failed:
        config = raw["train"]["config"]
        report["generation"] = generation_memory(config, resolution, out, env)
        report["photos"] = photo_probe(resolution, raw["filter"]["resize_filter"], raw["filter"]["min_side"])
        if resolution == 1024:
            figures = measured_figures(stages, report["generation"], report["photos"], resolution)
            report["figures"] = figures
            report["projection"] = projection({**check.load_costs(), **figures},
                                              figures["snapshot_gb_paper1024"])
            if costs is not None:
                write_costs(costs, figures, report["machine"])
    (out / "rehearsal.json").write_text(json.dumps(report, indent=2) + "\n")
    if not failed:
        (out / "rehearsal.txt").write_text(table(report) + "\n")
    report["failed"] = failed
    return report


def machine() -> str:
    """This machine in a few words: CPUs this process may use, memory, torch."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    return f"{platform.machine()}, {cpus} CPUs, {mem:.0f} GiB, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="64 px, tiny counts (a few minutes)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "rehearsal", help="output folder")
    parser.add_argument("--costs", type=Path,
                        help="costs.json whose measured figures to rewrite (1024 px only)")
    parser.add_argument("--probe-generation", nargs=3, metavar=("CONFIG", "RES", "BATCH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_generation:
        config, res, batch = args.probe_generation
        generation_probe(config, int(res), int(batch))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.costs and args.smoke:
        parser.error("--costs takes only a 1024-px rehearsal's figures; drop --smoke")
    report = run(args.out, args.smoke, args.costs)
    if report["failed"]:
        first = report["failed"][0]
        log.error("stage %s failed; see %s", first, args.out / "logs" / f"{first}.log")
        return 1
    sys.stdout.write((args.out / "rehearsal.txt").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
