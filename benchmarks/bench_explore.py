"""Benchmark: the explore stage on CPU, its direction math and its labelling, as ratios in the same run.

Fixture: the demo generator (models/stylegan2 when present, else a freshly built demo-config 64-px one:
speed does not depend on training) and the demo detector (models/detector when present, else an untrained
yolo11n: same network, same cost, few boxes). Wall seconds (time.perf_counter), best of --repeats
(interleaved) after a warm-up. Figures:
  * labelling throughput (images/s) of `labelling.label_images` on generated images, baseline: a bare
    ultralytics loop, `yolo.predict(pil_images, batch=B, ...)` over the same in-memory images in chunks
    of the same batch and settings. Target: within 10% (ratio >= 0.9): labelling runs at the detector's
    speed;
  * drawing + labelling (`labelling.label_latents`, what the stage does), against the labelling alone:
    the generator's share;
  * the direction math (sampling --pca-samples w, SeFa, PCA, and fitting a boundary for each attribute on
    --images labelled samples), against drawing and labelling those images: the math must be a small
    fraction;
  * the whole `explore.run` with the demo params (params.yaml's explore and detect sections), against
    the labelling of as many images as it labels (num_labelled + check_seeds x strip_steps per labelled
    direction): the stage's overhead over the detector.

    python -m benchmarks.bench_explore [--images 256] [--repeats 3] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import torch
from PIL import Image
from tests.helpers import fake_state

from benchmarks.timing import best_of
from corgigan import params
from corgigan.analysis import attributes, latents, sampling
from corgigan.analysis import directions as dirs
from corgigan.detector import detection
from corgigan.stages import explore
from corgigan.stylegan2 import configs
from corgigan.stylegan2.snapshot import save_snapshot, snapshot_name

log = logging.getLogger("bench_explore")
ROOT = Path(__file__).resolve().parents[1]


def demo_checkpoint(root: Path, given: Path) -> Path:
    """`given` when it holds a snapshot, else a fresh demo-config 64-px generator saved as one."""
    if given.exists() and (given.is_file() or any(given.glob("snapshot-*.pt"))):
        return given
    log.warning("%s holds no snapshot: timing a freshly built demo generator at 64 px", given)
    (root / "run").mkdir()
    save_snapshot(root / "run" / snapshot_name(8), fake_state(configs.make_config("demo", 64, batch=8)))
    return root / "run"


def demo_detector(root: Path, given: Path) -> Path:
    """`given` when it holds a detector, else an untrained yolo11n saved as one."""
    if (given / detection.WEIGHTS_FILE).is_file():
        return given
    log.warning("%s holds no detector: timing an untrained yolo11n (boxes will be few)", given)
    detection.setup_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolo11n.yaml", nc=1, verbose=False)
    model.names = {0: "dog"}
    detection.save_detector(model.eval(), root / "detector", {"kind": "untrained", "dog_class": 0})
    return root / "detector"


def bare_predict(det: detection.DogDetector, images: list[Image.Image]) -> int:
    """What a plain ultralytics user writes for in-memory images; returns the number of boxes."""
    boxes = 0
    for i in range(0, len(images), det.batch):
        for res in det.yolo.predict(images[i:i + det.batch], stream=True, batch=det.batch,
                                    classes=[det.dog_class], conf=det.conf, iou=det.iou, imgsz=det.imgsz,
                                    device=det.device, verbose=False):
            boxes += len(res.boxes)
    return boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="generated images labelled")
    parser.add_argument("--pca-samples", type=int, default=5000)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "stylegan2")
    parser.add_argument("--detector", type=Path, default=ROOT / "models" / "detector")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = params.load(ROOT / "params.yaml")
    d = cfg.detect

    with tempfile.TemporaryDirectory(prefix="bench-explore-") as tmp:
        root = Path(tmp)
        ckpt, det_dir = demo_checkpoint(root, args.checkpoint), demo_detector(root, args.detector)
        G, _ = sampling.load(ckpt, torch.device("cpu"))
        det = detection.DogDetector.load(det_dir, conf=d.conf, iou=d.iou, imgsz=d.imgsz, batch=d.batch,
                                         device="cpu")
        n = args.images
        w = latents.sample_w(G, list(range(n)), 1.0)
        ws = w[:, None].repeat(1, G.num_ws, 1)
        imgs = sampling.synthesize_w(G, ws, d.batch)
        pil = [Image.fromarray(im) for im in imgs]
        log.info("generator %d px (w_dim %d, num_ws %d), detector imgsz %d, batch %d, %d images, %d threads",
                 G.img_resolution, G.w_dim, G.num_ws, d.imgsz, d.batch, n, torch.get_num_threads())

        attributes.label_images(det, imgs[:d.batch])        # warm-up: the first predict builds the predictor
        bare_predict(det, pil[:d.batch])
        # Interleaved repeats, best of each: a busy machine slows all three alike.
        t_bare = t_label = t_draw_label = float("inf")
        for _ in range(args.repeats):
            t_bare = min(t_bare, best_of(1, lambda: bare_predict(det, pil)))
            t_label = min(t_label, best_of(1, lambda: attributes.label_images(det, imgs)))
            t_draw_label = min(t_draw_label, best_of(1, lambda: attributes.label_latents(G, det, ws)))
        log.info("bare ultralytics predict:        %7.1f images/s (%.2f s)", n / t_bare, t_bare)
        log.info("labelling.label_images:          %7.1f images/s (%.2f s)  ratio to bare %.3f "
                 "(target >= 0.90)", n / t_label, t_label, t_bare / t_label)
        log.info("draw + label (label_latents):    %7.1f images/s (%.2f s)  generator share %.0f%%",
                 n / t_draw_label, t_draw_label, 100 * (1 - t_label / t_draw_label))

        labels = attributes.label_images(det, imgs)
        p = cfg.explore
        timings = {
            f"sample {args.pca_samples} w": lambda: latents.sample_w(G, list(range(args.pca_samples)), 1.0),
            "SeFa (all layers)": lambda: dirs.sefa(dirs.style_affines(G, 0, G.num_ws), p.num_components),
            f"PCA of {args.pca_samples} w": lambda: dirs.pca(w_pca, p.num_components),
            f"boundaries for {len(attributes.ATTRIBUTES)} attributes": lambda: explore.labelled_directions(
                labels, w, p, G.num_ws),
        }
        w_pca = latents.sample_w(G, list(range(args.pca_samples)), 1.0)
        total = 0.0
        for what, fn in timings.items():
            seconds = best_of(args.repeats, fn)
            total += seconds
            log.info("%-34s %8.4f s  (%.2f%% of drawing + labelling %d images)", what + ":", seconds,
                     100 * seconds / t_draw_label, n)
        log.info("direction math in all:            %8.4f s  ratio to drawing + labelling %.4f", total,
                 total / t_draw_label)

        out = root / "out"
        t_stage = best_of(1, lambda: explore.run(p, d, ckpt, det_dir, out / "directions.json",
                                                 out / "explore.json", out / "figures"))
        found = json.loads((out / "directions.json").read_text())["directions"].values()
        checked = sum(f["method"] == "labelled" for f in found)
        labelled_images = p.num_labelled + p.check_seeds * p.strip_steps * checked
        log.info("explore stage (demo params):      %8.2f s, %d directions, %d images labelled (%d "
                 "checked directions); ratio to labelling them alone %.2f", t_stage, len(found),
                 labelled_images, checked, t_stage / (labelled_images * t_label / n))


if __name__ == "__main__":
    main()
