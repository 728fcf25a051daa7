"""detect stage throughput (images/s) against a bare ultralytics predict loop on the same images.

The fixture is drawn scenes at photo sizes (JPEG, like the scraped demo set) in image shards. The stage
run is the whole `corgigan detect` (model load, shard reading, decoding, predict, parquet); the baseline
is what one would write without the project: load the same model from an ultralytics .pt, then
`predict(paths, stream=True, ...)` over image files in chunks of the same batch size and settings.
Both are timed after a warm-up; best of `--repeats`. Target: the stage within 10% (ratio >= 0.9).

    python -m benchmarks.bench_detect                                # uses models/detector if present
    python -m benchmarks.bench_detect --images 96 --detector models/detector --batch 16
"""

from __future__ import annotations

import argparse
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import best_of
from corgigan.data.scenes import draw_scene
from corgigan.detector import detection
from corgigan.images import ShardWriter
from corgigan.params import DetectParams, ImagesParams
from corgigan.stages import detect

log = logging.getLogger(__name__)


def make_fixture(root: Path, n: int, seed: int = 0) -> list[Path]:
    """`n` JPEG scenes (short side 500..1000) as shards under root/raw and as loose files; the files."""
    rng = np.random.default_rng(seed)
    files: list[Path] = []
    (root / "files").mkdir(parents=True)
    with ShardWriter(root / "raw" / "shards", 64) as writer:
        for i in range(n):
            short = int(rng.integers(500, 1001))
            w, h = (int(short * rng.uniform(1.0, 1.5)), short) if i % 2 else (short, int(short * 1.25))
            img, _ = draw_scene(rng, w, h, 1)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            image_id = f"{i:016x}"
            writer.add(image_id, buf.getvalue(), ".jpg")
            path = root / "files" / f"{image_id}.jpg"
            path.write_bytes(buf.getvalue())
            files.append(path)
    return files


def untrained_detector(out: Path) -> Path:
    """A randomly initialised yolo11n with one class, saved as a detector (when none is given)."""
    detection.setup_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolo11n.yaml", nc=1, verbose=False)
    model.names = {0: "dog"}
    detection.save_detector(model.eval(), out, {"kind": "untrained", "dog_class": 0})
    return out


def bare_loop(weights: Path, files: list[Path], p: DetectParams, dog_class: int) -> int:
    """What a plain ultralytics user writes (load the .pt, predict on files); returns the number of boxes."""
    from ultralytics import YOLO

    yolo = YOLO(str(weights), task="detect")
    boxes = 0
    for i in range(0, len(files), p.batch):
        chunk = [str(f) for f in files[i:i + p.batch]]
        for res in yolo.predict(chunk, stream=True, batch=p.batch, classes=[dog_class], conf=p.conf,
                                iou=p.iou, imgsz=p.imgsz, device=p.device, verbose=False):
            boxes += len(res.boxes)
    return boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--detector", type=Path, default=Path("models/detector"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = DetectParams(conf=0.25, iou=0.45, imgsz=args.imgsz, batch=args.batch, device=args.device)
    images = ImagesParams(max_pixels=100_000_000)

    with tempfile.TemporaryDirectory(prefix="bench-detect-") as tmp:
        root = Path(tmp)
        files = make_fixture(root, args.images)
        det_dir = args.detector
        if not (det_dir / detection.WEIGHTS_FILE).is_file():
            log.warning("%s holds no detector: timing an untrained yolo11n (boxes will be few)", det_dir)
            det_dir = untrained_detector(root / "detector")
        dog_class = int(detection.read_meta(det_dir)["dog_class"])
        out = root / "detections.parquet"
        # The baseline loads the same model from an ultralytics-format .pt, as a plain user would.
        weights = root / "ultralytics.pt"
        torch.save({"model": detection.build_model(det_dir), "train_args": {"task": "detect"}}, weights)

        def stage() -> None:
            detect.run(p, images, root / "raw", det_dir, out)

        # Warm up both paths once (first predict builds the predictor, first decode loads codecs).
        stage()
        bare_loop(weights, files[: args.batch], p, dog_class)
        t_stage = best_of(args.repeats, stage)
        t_bare = best_of(args.repeats, lambda: bare_loop(weights, files, p, dog_class))
        n = args.images
        log.info("images: %d, batch %d, imgsz %d, device %s", n, p.batch, p.imgsz, p.device)
        log.info("bare ultralytics predict loop: %.2f images/s (%.2f s)", n / t_bare, t_bare)
        log.info("detect stage:                  %.2f images/s (%.2f s)", n / t_stage, t_stage)
        log.info("ratio stage/bare: %.3f (target >= 0.90)", t_bare / t_stage)


if __name__ == "__main__":
    main()
