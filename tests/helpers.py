"""Helpers shared by the test modules, in one place: test modules import from here (or use the fixtures
in conftest.py), never from one another.

- the tiny pipeline run through the real CLIs (`tiny_params`, `run`, `ran_stages`, `stricter_cover`);
- tiny training: `tiny_config`, `LOOP_KW` (the loop keywords most tests share), `write_dataset`;
- ADA: `augment_pipe` (a pipe at a fixed probability) and `random_images` (images in [-1, 1));
- the planted raw fixture for filter, dedup and dataset: `make_raw` writes shards, posts and detections
  as scrape and detect do, for the `CASES` whose expected reasons under `FILTER` are known.
"""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from PIL import Image

from corgigan import images, tables
from corgigan.params import FilterParams, ImagesParams
from corgigan.stylegan2.augment import AugmentPipe

if TYPE_CHECKING:
    from corgigan.stylegan2.configs import TrainingConfig

ROOT = Path(__file__).resolve().parents[1]
DATA_STAGES = ["scrape", "detector", "detect", "filter", "dedup", "dataset"]


# ---------------------------------------------------------------------------------------------------------
# The pipeline through the real CLIs


def tiny_params() -> dict:
    """The demo params, shrunk so the whole pipeline runs in a couple of minutes on 2 cores."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["scrape"]["synthetic"].update(num_images=24, min_short_side=500, max_short_side=640)
    raw["detector"].update(num_images=200, epochs=12, imgsz=128, batch=8)  # confident boxes, ~1 min
    raw["detect"].update(imgsz=128, batch=8)
    raw["filter"].update(resolution=16)
    raw["train"].update(kimg=0.064, snapshot_kimg=0.032, workers=0)
    raw["evaluate"].update(num_images=16, grid_seeds=8, video_frames=6, batch=8)
    raw["explore"].update(num_components=2, pca_samples=500, num_labelled=64, check_seeds=4, strip_seeds=2,
                          strip_steps=5)
    return raw


def run(args: list[str], cwd: Path, env: dict[str, str], check: bool = True,
        timeout: float = 1500) -> subprocess.CompletedProcess:
    """Run a CLI command; on failure the assertion shows its whole output."""
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def stricter_cover(repo: Path) -> float:
    """A filter.min_cover that rejects about half of the images the repo's last run kept (their median
    cover), so an experiment with it changes the funnel but still leaves a dataset to train on."""
    table = tables.read_table("filter", repo / "data" / "interim" / "filter" / "filter.parquet",
                              columns=["kept", "cover"])
    return round(float(table.loc[table["kept"], "cover"].median()), 4)


def ran_stages(output: str) -> list[str]:
    """Stage names from dvc's "Running stage 'x'" lines."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


# ---------------------------------------------------------------------------------------------------------
# Tiny training


def tiny_config(batch: int = 4, batch_gpu: int = 4, **changes) -> TrainingConfig:
    """The demo config at 8 px, shrunk to a few thousand parameters so tests train in seconds."""
    # Imported here: conftest imports this module, and only the tests that train need torch.
    from corgigan.stylegan2 import configs

    cfg = configs.make_config("demo", 8, batch=batch)
    G_kwargs = {"z_dim": 16, "w_dim": 16, "mapping_kwargs": {"num_layers": 2},
                "synthesis_kwargs": {"channel_base": 64, "channel_max": 16, "num_fp16_res": 0,
                                     "conv_clamp": 256}}
    D_kwargs = dict(cfg.D_kwargs, channel_base=64, channel_max=16, mbstd_group_size=2)
    fields = dict(batch_gpu=batch_gpu, mbstd_group=2, G_kwargs=G_kwargs, D_kwargs=D_kwargs, D_reg_interval=4,
                  r1_gamma=1.0, ema_kimg=0.01)
    return dataclasses.replace(cfg, **{**fields, **changes})


# The training_loop keywords most loop tests share (CPU, no workers, ADA on, no resume).
LOOP_KW = dict(seed=3, augment="ada", augment_p=0.2, ada_target=0.6, mirror=True, workers=0, device="cpu",
               require_cuda_ops=False, resume_from=None, allow_other_data=False)


def png_bytes(arr: np.ndarray) -> bytes:
    """PNG bytes of a uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_dataset(path: Path, n: int = 12, res: int = 8, seed: int = 0, labels: object = None,
                  channels: int = 3, meta: str | None = None) -> Path:
    """A dataset zip of `n` random RGB (or grayscale) images and a dataset.json (`meta`: its raw text)."""
    rng = np.random.default_rng(seed)
    shape = (res, res, channels) if channels == 3 else (res, res)
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(n):
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
            zf.writestr(f"{i // 1000:05d}/img{i:08d}.png", png_bytes(arr))
        zf.writestr("dataset.json", meta if meta is not None else json.dumps({"labels": labels}))
    return path


# ---------------------------------------------------------------------------------------------------------
# The planted raw fixture (filter, dedup, dataset)


FILTER = FilterParams(min_side=100, min_crop=80, max_dogs=1, min_confidence=0.4, min_cover=0.1,
                      max_center_shift=0.25, allow_partial=False, resolution=32,
                      resize_filter="lanczos", shard_size=3)
IMAGES = ImagesParams(max_pixels=10_000_000)


@dataclasses.dataclass
class Spec:
    """One planted image: its size (as stored), boxes (x0, y0, x1, y1, conf) and how it is stored."""

    name: str
    size: tuple[int, int]
    boxes: list[tuple[float, float, float, float, float]] = dataclasses.field(default_factory=list)
    kind: str = "jpeg"          # jpeg | png | bytes (stored as given in `data`) | refused (never read)
    data: bytes = b""
    seed: int = 0
    exif_orientation: int = 0   # 0: none
    quality: int = 90           # JPEG quality


def picture(size: tuple[int, int], seed: int) -> Image.Image:
    """A smooth random picture: distinct per seed, stable under resizing and re-encoding."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize(size, Image.Resampling.BICUBIC)


def encode(spec: Spec) -> tuple[bytes, str]:
    """The stored bytes of a planted image and their file extension."""
    if spec.kind == "bytes":
        return spec.data, ".bin"
    img = picture(spec.size, spec.seed)
    buf = io.BytesIO()
    if spec.kind == "png":
        img.save(buf, format="PNG")
        return buf.getvalue(), ".png"
    exif = Image.Exif()
    if spec.exif_orientation:
        exif[0x0112] = spec.exif_orientation
    img.save(buf, format="JPEG", quality=spec.quality, exif=exif.tobytes())
    return buf.getvalue(), ".jpg"


def image_id(name: str) -> str:
    """The image_id of the planted image `name`."""
    return images.sha256(f"test:{name}".encode())[:16]


def make_raw(root: Path, specs: list[Spec], shard_size: int = 4) -> Path:
    """Write raw/shards + raw/posts.parquet and detections.parquet the way scrape and detect do."""
    raw = root / "raw"
    posts: list[dict[str, Any]] = []
    dets: list[dict[str, Any]] = []
    with images.ShardWriter(raw / "shards", shard_size) as writer:
        for spec in specs:
            iid = image_id(spec.name)
            if spec.kind == "refused":   # as scrape records an entry the source refused: no bytes stored
                data, shard, fmt, (w, h) = b"", None, None, (None, None)
                status, detail = "refused", "zip member escapes the archive folder"
            else:
                data, ext = encode(spec)
                shard = writer.add(iid, data, ext)
                try:
                    img, fmt = images.decode(data, IMAGES.max_pixels), ext[1:].upper()
                    status, detail, (w, h) = "ok", None, img.size
                except images.DecodeError as e:
                    status, detail, fmt, (w, h) = e.status, e.detail, None, (None, None)
            posts.append({"image_id": iid, "source": "test", "source_id": spec.name, "url": None,
                          "owner": None, "timestamp": datetime(2024, 1, 1, tzinfo=UTC), "likes": None,
                          "width": w, "height": h, "format": fmt, "sha256": images.sha256(data),
                          "num_bytes": len(data), "decode_status": status, "decode_detail": detail,
                          "shard": shard})
            for x0, y0, x1, y1, conf in spec.boxes:
                dets.append({"image_id": iid, "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                             "confidence": conf, "class_id": 0})
    tables.write_table("posts", posts, raw / "posts.parquet")
    tables.write_table("detections", dets, root / "detections.parquet")
    return raw


# Expected reason (None: kept) for each planted image under FILTER.
CASES: list[tuple[Spec, str | None]] = [
    (Spec("kept_a", (200, 150), [(60, 40, 120, 100, 0.9)], seed=1), None),
    (Spec("kept_png", (160, 120), [(40, 30, 120, 90, 0.8)], kind="png", seed=2), None),
    # stored 120x160, EXIF-rotated to 160x120; the box is in the oriented image
    (Spec("kept_exif", (120, 160), [(30, 20, 110, 100, 0.7)], seed=3, exif_orientation=6), None),
    (Spec("kept_weak_extra", (200, 150), [(60, 40, 120, 100, 0.9), (0, 0, 20, 20, 0.2)], seed=4), None),
    (Spec("undecodable", (0, 0), [], kind="bytes", data=b"this is not an image"), "decode_error"),
    (Spec("empty", (0, 0), [], kind="bytes", data=b""), "decode_error"),
    (Spec("escape", (0, 0), [], kind="refused"), "refused"),
    (Spec("small", (90, 200), [(10, 10, 80, 80, 0.9)], seed=5), "too_small"),
    (Spec("nodog", (200, 150), [], seed=6), "no_dog"),
    (Spec("unsure", (200, 150), [(60, 40, 120, 100, 0.3)], seed=7), "low_confidence"),
    (Spec("pack", (200, 150), [(10, 10, 70, 70, 0.9), (100, 50, 180, 130, 0.8)], seed=8), "multiple_dogs"),
    (Spec("huge", (200, 120), [(10, 5, 190, 115, 0.9)], seed=9), "partial"),
    (Spec("tiny", (200, 150), [(90, 70, 100, 80, 0.9)], seed=10), "low_cover"),
    (Spec("corner", (100, 100), [(0, 0, 28, 28, 0.9)], seed=11), "off_center"),
]


def fake_state(cfg: TrainingConfig, data_hash: str = "a" * 64, nimg: int = 8, run: dict | None = None
               ) -> dict:
    """A complete snapshot state of freshly built networks (optimiser states empty)."""
    import torch

    from corgigan.stylegan2 import configs
    from corgigan.stylegan2.snapshot import make_state

    torch.manual_seed(0)
    G, D = configs.build_networks(configs.network_spec(cfg))
    opt = torch.optim.Adam(G.parameters()).state_dict()
    return make_state(
        config=configs.config_to_dict(cfg), run=run or {"seed": 0},
        dataset={"hash": data_hash, "resolution": cfg.resolution, "num_channels": 3, "label_dim": 0,
                 "num_images": 4},
        progress={"nimg": nimg, "batch_idx": nimg // cfg.batch, "tick": 1},
        networks={"G": G.state_dict(), "D": D.state_dict(), "G_ema": G.state_dict()},
        optimizers={"G": opt, "D": opt}, augment_p=0.25, ada_signs=(1.0, 4.0), pl_mean=0.5)


def photo_bytes(width: int, height: int, fmt: str = "PNG") -> bytes:
    """A random RGB photo of that size, encoded as `fmt`."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def write_directions(path: Path, w_dim: int, entries: dict) -> Path:
    """A directions file (the explore stage's format) holding `entries`."""
    from corgigan.analysis.directions import FORMAT as DIRECTIONS_FORMAT

    path.write_text(json.dumps({"format": DIRECTIONS_FORMAT, "directions": entries}))
    return path


def augment_pipe(p: float = 1.0, **strengths: float) -> AugmentPipe:
    """An ADA pipe with the given strengths, its probability fixed at `p`."""
    pipe = AugmentPipe(**strengths)
    pipe.p.fill_(p)
    return pipe


def random_images(n: int = 8, c: int = 3, h: int = 16, w: int = 16, dtype: torch.dtype = torch.float32,
                  seed: int = 1) -> torch.Tensor:
    """`n` images uniform in [-1, 1), drawn in float64 from their own generator (the global one is left
    for the pipe's draws)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, h, w, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
