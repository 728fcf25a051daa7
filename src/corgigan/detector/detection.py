"""Everything that touches ultralytics: offline setup, training, saving, loading and prediction.

`load_dog_detector` is the one way to load the saved detector (meta.json's dog class checked against the
weights); `DogDetector` holds it with the detect stage's settings for the commands that find dogs.

The rest of the project never imports ultralytics; the labelled data it trains on is written as plain
files by yolo_data.py. A detector is stored as two files: ``detector.pt`` (a plain torch.save of the
model's state dict, its model yaml and class names, loadable with ``weights_only=True``) and
``meta.json``. Ultralytics' own ``.pt`` pickles whole modules and embeds a date, so the same weights
would hash differently on every save; ours hash the same.

No weight file is trusted: a pretrained ultralytics file is checked before it is unpickled and then read
with weights_only, and every model yaml, ours included, is checked before ultralytics builds from it,
because ultralytics evaluates parts of it (yolo_weights.py).
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from corgigan.detector.yolo_weights import (
    ZIP_MAGIC,
    check_model_yaml,
    read_ultralytics_weights,
    unsafe_globals,
)
from corgigan.errors import StageError
from corgigan.stylegan2.devices import resolve_device

log = logging.getLogger(__name__)

WEIGHTS_FILE = "detector.pt"
META_FILE = "meta.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Detection:
    """One predicted box in the original image's pixels."""

    x0: float
    y0: float
    x1: float
    y1: float
    confidence: float
    class_id: int


# ---------------------------------------------------------------------------------------------------
# Offline setup


_setup_done = False


def setup_ultralytics(config_dir: str | Path | None = None) -> Any:
    """Make ultralytics work offline and quietly, then import and return the `ultralytics` module.

    Sets YOLO_OFFLINE / YOLO_AUTOINSTALL and, unless one is set, a project-local YOLO_CONFIG_DIR
    (`config_dir`, else $CORGIGAN_CACHE/ultralytics, else .cache/corgigan/ultralytics); puts a
    TTF font where training looks for Arial.ttf (otherwise it would download one) and switches off the
    integrations that act by themselves (its DVC callback would create DVC experiments in our repo).
    Must run before the first ultralytics import to take effect; later calls are cheap.
    """
    global _setup_done
    if _setup_done:
        import ultralytics
        return ultralytics
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    if "YOLO_CONFIG_DIR" not in os.environ:
        cache = Path(os.environ.get("CORGIGAN_CACHE", ".cache/corgigan"))
        os.environ["YOLO_CONFIG_DIR"] = str(Path(config_dir or cache / "ultralytics").resolve())
    Path(os.environ["YOLO_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)

    import ultralytics
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    font = Path(USER_CONFIG_DIR) / "Arial.ttf"
    if not font.exists():
        import matplotlib
        src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        font.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, font)
    off = {k: False for k in ("sync", "dvc", "clearml", "comet", "mlflow", "raytune", "tensorboard", "wandb",
                              "vscode_msg", "openvino_msg") if SETTINGS.get(k) is not False}
    if off:
        SETTINGS.update(off)
    # Importing ultralytics replaces PIL.Image.open process-wide with a wrapper that, for bytes Pillow cannot
    # identify, asks for a HEIF plugin: offline, a "requirement ['pi-heif'] not found" warning for every
    # such scraped image detect decodes, then an ImportError. Give Pillow its own open back.
    from ultralytics.utils import patches
    Image.open = patches._image_open
    _setup_done = True
    return ultralytics


# ---------------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class TrainResult:
    model: torch.nn.Module         # ultralytics DetectionModel (best epoch, EMA weights), float32, eval
    map50: float                   # on the held-out split
    map50_95: float
    num_train: int
    num_val: int


def train(data_yaml: Path, model_cfg: str, *, epochs: int, imgsz: int, batch: int, seed: int,
          device: str, workers: int, workdir: Path) -> TrainResult:
    """Train `model_cfg` (an ultralytics model yaml) from scratch; validate on the dataset's val split."""
    setup_ultralytics()
    from ultralytics import YOLO

    yolo = YOLO(model_cfg, task="detect")
    metrics = yolo.train(
        data=str(data_yaml), epochs=epochs, imgsz=imgsz, batch=batch, seed=seed, deterministic=True,
        device=device, workers=workers, pretrained=False, amp=False, plots=False, val=True,
        project=str(workdir), name="train", exist_ok=True, verbose=False, save=True,
        # Ultralytics accumulates gradients up to a nominal batch of 64 and warms up for at least 100
        # iterations: sized for big datasets. On a few hundred scenes that leaves a handful of optimizer
        # steps per epoch, mostly in warm-up; step every batch and warm up for one epoch instead.
        nbs=batch, warmup_epochs=min(1.0, epochs / 4),
    )
    data = yaml.safe_load(data_yaml.read_text())
    model = yolo.model.float().eval()
    return TrainResult(model=model, map50=float(metrics.box.map50), map50_95=float(metrics.box.map),
                       num_train=int(data["num_train"]), num_val=int(data["num_val"]))


def import_pretrained(weights: str | Path) -> torch.nn.Module:
    """Load a local ultralytics weight file without running anything from it; nothing is downloaded.

    The file is checked before it is unpickled (see `read_ultralytics_weights`); the model is then rebuilt
    from its (checked) model yaml and given the file's tensors, so no object from the file is used as code.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise StageError(f"detector.pretrained_weights: {weights} not found. Put an ultralytics detection "
                         f"weight file (e.g. yolo11n.pt) at that path yourself; nothing is downloaded. Set "
                         f"detector.dog_class to its 'dog' class id (16 for COCO weights).")
    setup_ultralytics()
    from ultralytics.nn.tasks import guess_model_task

    ckpt = read_ultralytics_weights(weights)
    bad = f"{weights}: not a loadable ultralytics weight file"
    model = next((m for m in (ckpt.get("ema"), ckpt.get("model")) if isinstance(m, torch.nn.Module)), None)
    if model is None:
        raise StageError(f"{bad} (it holds no model); use a detection weight file written by ultralytics")
    cfg = model.__dict__.get("yaml")
    try:
        check_model_yaml(cfg)
        names = _class_names(model.__dict__.get("names"))
    except ValueError as e:
        raise StageError(f"{bad} ({e}); use a detection weight file written by ultralytics") from e
    try:
        # Read from the module tree directly: state_dict() would call hooks stored in the file.
        tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    except Exception as e:  # a module tree from the file that is not a well-formed one
        raise StageError(f"{bad} (its module tree is malformed: {type(e).__name__}); use a detection weight "
                         f"file written by ultralytics") from e
    task = guess_model_task(cfg)
    if task != "detect":
        raise StageError(f"{weights}: a {task} model; the detector needs a detection model")
    return _rebuild(cfg, names, tensors, bad)


# ---------------------------------------------------------------------------------------------------
# Deterministic save and load


def _state_bytes(model: torch.nn.Module) -> bytes:
    """Serialize what rebuilds `model`: model yaml, class names and float32 weights, deterministically."""
    names = {int(k): str(v) for k, v in dict(model.names).items()}
    cfg = copy.deepcopy(model.yaml)
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
             for k, v in model.state_dict().items()}
    ckpt = {"format_version": FORMAT_VERSION, "yaml": cfg, "names": names, "state_dict": state}
    buf = io.BytesIO()
    # A BytesIO rather than the file: torch names the archive's records after the file, and ours are
    # temporary files with random names.
    torch.save(ckpt, buf)
    return buf.getvalue()


def save_detector(model: torch.nn.Module, out: Path, meta: dict[str, Any]) -> str:
    """Write detector.pt and meta.json into `out`; return the weights' sha256 (also put in meta)."""
    from corgigan.tables import atomic_path, write_json

    out.mkdir(parents=True, exist_ok=True)
    data = _state_bytes(model)
    digest = hashlib.sha256(data).hexdigest()
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        tmp.write_bytes(data)
    names = {int(k): str(v) for k, v in dict(model.names).items()}
    write_json({**meta, "format_version": FORMAT_VERSION, "names": {str(k): v for k, v in names.items()},
                "weights_sha256": digest}, out / META_FILE)
    return digest


def read_meta(detector_dir: Path) -> dict[str, Any]:
    """The detector's meta.json; StageError when the folder holds no detector."""
    import json

    meta_path, weights = detector_dir / META_FILE, detector_dir / WEIGHTS_FILE
    if not meta_path.is_file() or not weights.is_file():
        raise StageError(f"{detector_dir}: no detector ({META_FILE} and {WEIGHTS_FILE}); "
                         f"run `corgigan detector`")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise StageError(f"{meta_path}: not JSON ({e}); delete {detector_dir} and re-run "
                         f"`corgigan detector`") from e
    if not isinstance(meta, dict):
        raise StageError(f"{meta_path}: not a detector's meta.json (a JSON object); delete {detector_dir} "
                         f"and re-run `corgigan detector`")
    return meta


def build_model(detector_dir: Path) -> torch.nn.Module:
    """Rebuild the ultralytics DetectionModel saved in `detector_dir` (float32, eval mode).

    StageError when detector.pt is not one that `save_detector` wrote: damaged, of another format, or
    holding anything but tensors and plain data (weights_only refuses that, and nothing from it runs).
    """
    setup_ultralytics()
    read_meta(detector_dir)
    path = detector_dir / WEIGHTS_FILE
    redo = f"delete {detector_dir} and re-run `corgigan detector` (or `dvc pull` it)"
    not_ours = f"{path}: not a corgigan detector"
    data = path.read_bytes()
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message would advise weights_only=False, i.e. running the file's code: name what it holds.
        refused = sorted(unsafe_globals(data))
        what = f"it refers to {', '.join(refused[:3])}" if refused else "not a file of tensors and plain data"
        raise StageError(f"{not_ours} ({what}; a corgigan detector holds only tensors and plain data, and "
                         f"nothing in this one was run); {redo}") from e
    except Exception as e:  # truncated or damaged archives, files that are not torch files at all
        what = ("its archive cannot be read: truncated or damaged" if data[:4] == ZIP_MAGIC
                else "not a torch file")
        raise StageError(f"{not_ours} ({what}); {redo}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != FORMAT_VERSION:
        version = ckpt.get("format_version") if isinstance(ckpt, dict) else None
        raise StageError(f"{not_ours} (format {version!r}, expected {FORMAT_VERSION}); {redo}")
    state = ckpt.get("state_dict")
    try:
        check_model_yaml(ckpt.get("yaml"))
        names = _class_names(ckpt.get("names"))
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError("its state_dict is not a dict of tensors")
    except ValueError as e:
        raise StageError(f"{not_ours} ({e}); {redo}") from e
    return _rebuild(ckpt["yaml"], names, state, not_ours, advice=redo)


def _class_names(names: Any) -> dict[int, str]:
    """A model's class names as {id: name}; ValueError unless a mapping (or list) of ids to strings."""
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise ValueError("it has no class names")
    out: dict[int, str] = {}
    for k, v in names.items():
        if isinstance(k, bool) or not isinstance(k, (int, str)) or not isinstance(v, str):
            raise ValueError(f"class name {k!r}: {v!r} is not an id and a string")
        try:
            out[int(k)] = v
        except ValueError as e:
            raise ValueError(f"class id {k!r} is not a number") from e
    if sorted(out) != list(range(len(out))):
        raise ValueError(f"class ids are not 0..{len(out) - 1}")
    return out


def _rebuild(cfg: dict[str, Any], names: dict[int, str], tensors: dict[str, torch.Tensor], what: str,
             advice: str = "use a detection weight file written by ultralytics") -> torch.nn.Module:
    """A fresh DetectionModel built from `cfg` (already checked) holding `tensors`; StageError on mismatch."""
    from ultralytics.nn.tasks import DetectionModel

    try:
        model = DetectionModel(cfg=copy.deepcopy(cfg), nc=len(names), verbose=False)
        want = model.state_dict()
        missing = [k for k in want if k not in tensors]
        wrong = [k for k in want if k in tensors and tuple(tensors[k].shape) != tuple(want[k].shape)]
        if missing or wrong:
            raise ValueError(f"its weights do not fit its own model yaml ({len(missing)} missing, "
                             f"{len(wrong)} of another shape, e.g. {(missing + wrong)[0]})")
        model.load_state_dict({k: tensors[k] for k in want}, strict=True)
    except Exception as e:  # a yaml that passed the check can still describe an unbuildable network
        raise StageError(f"{what} ({type(e).__name__}: {e}); {advice}") from e
    model.names = names
    return model.float().eval()


def load_yolo(detector_dir: Path) -> Any:
    """The saved detector as an ultralytics YOLO object, ready for `predict`."""
    setup_ultralytics()
    from ultralytics import YOLO

    model = build_model(detector_dir)
    # YOLO() takes a path; hand it the model in ultralytics' own checkpoint layout through a temporary
    # file (never kept: only our deterministic detector.pt is an output).
    with tempfile.TemporaryDirectory(prefix="corgigan-detector-") as tmp:
        path = Path(tmp) / "detector.pt"
        torch.save({"model": model, "train_args": {"task": "detect"}}, path)
        return YOLO(str(path), task="detect")


def load_dog_detector(detector_dir: Path) -> tuple[Any, int, dict[str, Any]]:
    """The YOLO model in `detector_dir`, its 'dog' class id (checked against the weights' classes) and its
    meta.json; StageError, saying what to do, when the folder does not hold a usable detector."""
    meta = read_meta(detector_dir)
    dog_class = meta.get("dog_class")
    redo = f"delete {detector_dir} and re-run `corgigan detector`"
    if isinstance(dog_class, bool) or not isinstance(dog_class, int):
        raise StageError(f"{detector_dir / META_FILE}: no dog_class (the detector's class id of 'dog', an "
                         f"integer; got {dog_class!r}); {redo}")
    yolo = load_yolo(detector_dir)
    if dog_class not in yolo.names:
        raise StageError(f"{detector_dir / META_FILE}: dog_class {dog_class} is not a class of "
                         f"{WEIGHTS_FILE} (classes 0..{len(yolo.names) - 1}); {redo}")
    return yolo, dog_class, meta


@dataclass(frozen=True)
class DogDetector:
    """The saved detector, ready to find dogs with the detect stage's settings (params.yaml's detect)."""

    yolo: Any                 # the ultralytics YOLO object (load_dog_detector's)
    dog_class: int            # its class id of 'dog', checked against the weights' classes
    conf: float = 0.25        # boxes below this confidence are dropped
    iou: float = 0.45         # non-maximum suppression IoU threshold
    imgsz: int = 640          # inference size
    batch: int = 16           # images per predict call
    device: str = "cpu"       # a torch device name, resolved

    @classmethod
    def load(cls, detector_dir: Path, *, conf: float = 0.25, iou: float = 0.45, imgsz: int = 640,
             batch: int = 16, device: str = "cpu") -> DogDetector:
        """The detector in `detector_dir` (through `load_dog_detector`, so its checks and StageErrors);
        `device` is a name of the project's vocabulary (auto | cpu | cuda | cuda:N), resolved here."""
        yolo, dog_class, _ = load_dog_detector(detector_dir)
        return cls(yolo, dog_class, conf, iou, imgsz, batch, str(resolve_device(device)))

    def predict(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        """The dog boxes of each RGB image (original pixels), `batch` images per call of the network."""
        out: list[list[Detection]] = []
        for start in range(0, len(images), self.batch):
            out += predict(self.yolo, images[start:start + self.batch], classes=[self.dog_class],
                           conf=self.conf, iou=self.iou, imgsz=self.imgsz, device=self.device)
        return out


# ---------------------------------------------------------------------------------------------------
# Prediction


def predict(yolo: Any, images: Sequence[Image.Image], *, classes: Sequence[int], conf: float, iou: float,
            imgsz: int, device: str) -> list[list[Detection]]:
    """Detect `classes` in a batch of RGB images; one list of boxes (original pixels) per image."""
    if not images:
        return []
    results = yolo.predict(list(images), stream=True, batch=len(images), classes=list(classes), conf=conf,
                           iou=iou, imgsz=imgsz, device=device, verbose=False)
    out: list[list[Detection]] = []
    for res in results:
        boxes = res.boxes
        xyxy = boxes.xyxy.cpu().numpy().astype(np.float64)
        confs = boxes.conf.cpu().numpy().astype(np.float64)
        cls = boxes.cls.cpu().numpy().astype(np.int64)
        out.append([Detection(*map(float, xyxy[i]), float(confs[i]), int(cls[i])) for i in range(len(cls))])
    if len(out) != len(images):
        raise RuntimeError(f"ultralytics returned {len(out)} results for {len(images)} images")
    return out
