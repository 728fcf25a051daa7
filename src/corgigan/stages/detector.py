"""Stage `detector`: train the dog detector (synthetic scenes or Stanford Dogs) or import a local weight.

Writes models/detector/{detector.pt, meta.json}. Training on CPU is seeded and deterministic, and the
weights are saved without timestamps, so re-running with the same params gives the same file hash.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from corgigan.detector import detection, yolo_data
from corgigan.errors import StageError
from corgigan.params import DetectorParams
from corgigan.stylegan2.devices import resolve_device

log = logging.getLogger(__name__)

# Below this mAP50 on its own held-out images a trained detector misses or invents most dogs, and filter
# then rejects most photos as no_dog. A detector that learned reaches ~0.9 on drawn scenes (yolo11n, 400
# scenes, 8 epochs); the rehearsal's barely trained one stopped at 0.005 and passed silently.
WEAK_MAP50 = 0.3


def learning_warning(map50: float | None) -> str | None:
    """Why a trained detector's held-out mAP50 says it barely learned, or None (also for pretrained)."""
    if map50 is None or map50 >= WEAK_MAP50:
        return None
    return (f"the detector barely learned: mAP50 {map50:.3f} on its held-out images (below {WEAK_MAP50}); "
            "detect will find few dogs and filter reject most photos as no_dog. Train longer "
            "(detector.epochs, detector.num_images, detector.imgsz) or use detector.kind: pretrained")


def run(p: DetectorParams, out: Path) -> None:
    """Train or import the detector described by `p` and save it into `out`."""
    if p.kind == "pretrained":
        model = detection.import_pretrained(p.pretrained_weights)
        _check_dog_class(model, p.dog_class)
        meta: dict[str, Any] = {"kind": "pretrained", "source": Path(p.pretrained_weights).name,
                                "dog_class": p.dog_class, "imgsz": None, "map50": None}
    else:
        device = str(resolve_device(p.device))   # before minutes of data preparation, not after
        with tempfile.TemporaryDirectory(prefix="corgigan-detector-") as tmp:
            if p.labels == "synthetic":
                samples = yolo_data.synthetic_samples(p.seed, p.num_images)
            else:
                samples = yolo_data.stanford_dogs_samples(p.stanford_dogs_path)
            data_yaml = yolo_data.write_yolo_dataset(samples, Path(tmp) / "data", p.val_fraction)
            result = detection.train(data_yaml, p.model, epochs=p.epochs, imgsz=p.imgsz, batch=p.batch,
                                     seed=p.seed, device=device, workers=p.workers,
                                     workdir=Path(tmp) / "runs")
        model = result.model
        meta = {"kind": "train", "labels": p.labels, "model": p.model, "seed": p.seed, "epochs": p.epochs,
                "imgsz": p.imgsz, "batch": p.batch, "dog_class": 0, "num_train": result.num_train,
                "num_val": result.num_val, "map50": round(result.map50, 6),
                "map50_95": round(result.map50_95, 6)}
        log.info("detector: mAP50 %.3f (mAP50-95 %.3f) on %d held-out images",
                 result.map50, result.map50_95, result.num_val)
    warning = learning_warning(meta["map50"])
    meta["warnings"] = [warning] if warning else []   # meta.json says why, beside the number
    if warning:
        log.warning("detector: %s", warning)
    meta["ultralytics"] = detection.setup_ultralytics().__version__
    digest = detection.save_detector(model, out, meta)
    log.info("detector saved to %s (sha256 %s)", out, digest[:12])


def _check_dog_class(model: Any, dog_class: int) -> None:
    names = dict(model.names)
    if dog_class not in names:
        raise StageError(f"detector.dog_class={dog_class} is not a class of the weights "
                         f"(classes 0..{len(names) - 1}); use the id of 'dog' (16 for COCO)")
    if names[dog_class] != "dog":
        log.warning("detector.dog_class=%d is named %r in the weights, not 'dog'",
                    dog_class, names[dog_class])
