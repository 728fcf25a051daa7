"""Pictures from a trained generator: images per seed, truncation sweep, style mixing, interpolation video.

Every picture is a function of (generator, seeds, psi): z for seed s is numpy's RandomState(s) normal
draw (latents.py), noise is constant, so the same snapshot and seeds give the same pixels. `load` is the
StageError face of stylegan2/load.py for the commands and stages.

Generation is bounded by memory, not by a count: `images_per_batch` turns the measured cost of one
1024-px image (costs.json) into images per generator pass for a model's resolution and channels and the
memory the device has free, and every pass here takes at most that many (a fixed batch is only a cap).
An image does not depend on the pass it was drawn in, so the budget never changes a picture's bytes.
Videos stream their frames to the encoder a pass at a time.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from corgigan.analysis import directions
from corgigan.analysis.latents import map_seeds
from corgigan.errors import StageError, quote
from corgigan.stylegan2.devices import resolve_device
from corgigan.stylegan2.grid import tile
from corgigan.stylegan2.load import Loaded, build, load_networks, resolve
from corgigan.stylegan2.networks import channels_per_resolution
from corgigan.stylegan2.snapshot import SnapshotError
from corgigan.stylegan2.ws_ranges import layer_range
from corgigan.tables import atomic_path

log = logging.getLogger(__name__)

TRUNCATION_PSIS = (1.0, 0.85, 0.7, 0.5, 0.3, 0.0)
VIDEO_FPS = 24
BATCH = 16                       # images per generator pass
# A picture (grid, strip, video) holds all its images in memory while it is drawn: at most this many
# pixels (3 GiB as uint8 RGB: 1024 images at 1024 px, 262144 at 64 px). One PNG per seed streams instead.
MAX_PICTURE_PIXELS = 2**30
COSTS_FILE = Path(__file__).resolve().parents[1] / "costs.json"   # the measured figures (check.py's too)
COST_FIGURE = "gen_gb_per_image_1024_cpu"   # peak memory of one generated 1024-px image, paper1024's G
# The measured G: paper1024's synthesis (channel_base 32768, channel_max 512) at 1024 px.
COST_REFERENCE = channels_per_resolution(32768, 512, [2**i for i in range(2, 11)])
# Share of the device's total memory that one generator pass may take: the rest stays for the process's
# other work (FID features, the detector, encoders) and for other processes.
BUDGET_SHARE = 0.5


@functools.cache
def gib_per_image_1024() -> float:
    """The measured peak memory of one 1024-px image of paper1024's G in float32, from costs.json (read once;
    its unit, GB, is taken as GiB: the larger, so batches err small)."""
    return float(json.loads(COSTS_FILE.read_text())["figures"][COST_FIGURE]["value"])


def bytes_per_image(G: torch.nn.Module) -> float:
    """Peak memory one generated image of G costs: the measured 1024-px figure scaled by G's activations
    (feature maps x pixels summed over its blocks) against the measured network's."""
    reference = sum(c * r * r for r, c in COST_REFERENCE.items())
    own = sum(b.out_channels * b.resolution**2 for b in G.synthesis.blocks)
    return gib_per_image_1024() * 2**30 * own / reference


def total_memory() -> int:
    """Bytes of physical memory of this machine (Linux's MemTotal; elsewhere the physical pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_budget(device: torch.device) -> int:
    """Bytes one generator pass may take on `device`: BUDGET_SHARE of its total memory.

    Total, not free: the pass size must not depend on what else happens to be running, because a pass of
    another size rounds a few pixels differently (the style affines' matmul), and the same params must give
    the same bytes on one machine from run to run.
    """
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        total = total_memory()
    return int(total * BUDGET_SHARE)


def images_per_batch(G: torch.nn.Module, device: torch.device | None = None,
                     budget_bytes: int | None = None) -> int:
    """Images of G one pass may generate within `budget_bytes` (default: `memory_budget` of G's device);
    never below 1."""
    if budget_bytes is None:
        budget_bytes = memory_budget(device or next(G.parameters()).device)
    return images_per_pass(budget_bytes, bytes_per_image(G))


def images_per_pass(budget_bytes: float, per_image_bytes: float, batch: int | None = None) -> int:
    """Images one generator pass takes: as many as `budget_bytes` holds at `per_image_bytes` each, at most
    `batch`, never below 1 (`corgigan check` applies the same rule to the measured per-image figure)."""
    fit = int(budget_bytes // per_image_bytes)
    return max(1, fit if batch is None else min(batch, fit))


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """Generator output [N, C, H, W] in about [-1, 1] -> uint8 [N, H, W, 3]."""
    img = (img.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    img = img.permute(0, 2, 3, 1).cpu().numpy()
    return np.repeat(img, 3, axis=3) if img.shape[3] == 1 else img


@torch.no_grad()
def synthesize_batches(G: torch.nn.Module, ws: torch.Tensor, batch: int = BATCH,
                       budget_bytes: int | None = None) -> Iterator[np.ndarray]:
    """uint8 images [n, H, W, 3] for latents ws [N, num_ws, w_dim], a pass at a time: at most `batch`
    images per pass, fewer when the memory budget (`images_per_batch`) allows fewer."""
    device = next(G.parameters()).device
    step = max(1, min(batch, images_per_batch(G, device, budget_bytes)))
    for i in range(0, len(ws), step):
        yield to_uint8(G.synthesis(ws[i:i + step].to(device), noise_mode="const"))


def synthesize_w(G: torch.nn.Module, ws: torch.Tensor, batch: int = BATCH,
                 budget_bytes: int | None = None) -> np.ndarray:
    """Images for latents ws [N, num_ws, w_dim] as uint8 [N, H, W, 3], in passes within the memory budget."""
    return np.concatenate(list(synthesize_batches(G, ws, batch, budget_bytes)))


def generate_images(G: torch.nn.Module, seeds: list[int], psi: float, batch: int = BATCH,
                    budget_bytes: int | None = None) -> np.ndarray:
    """uint8 images [N, H, W, 3], one per seed (mapped `batch` seeds at a time, drawn within the budget)."""
    out = [synthesize_w(G, map_seeds(G, seeds[i:i + batch], psi), batch, budget_bytes)
           for i in range(0, len(seeds), batch)]
    return np.concatenate(out)


def image_grid(images: np.ndarray, cols: int) -> Image.Image:
    """Tile uint8 images [N, H, W, 3] into rows of `cols` (the last row padded with black)."""
    return Image.fromarray(tile(images, cols))


LABEL_BAND = 16          # pixels of the label strips above and left of a labelled grid


def labelled(grid: Image.Image, tile: int, col_labels: list[str], row_labels: list[str],
             corner: str = "") -> Image.Image:
    """`grid` (tiles of side `tile`) with a label over each column and left of each row."""
    font = ImageFont.load_default()
    left = max([LABEL_BAND, *(int(font.getlength(t)) + 6 for t in [*row_labels, corner])])
    out = Image.new("RGB", (left + grid.width, LABEL_BAND + grid.height), (255, 255, 255))
    out.paste(grid, (left, LABEL_BAND))
    draw = ImageDraw.Draw(out)
    draw.text((3, 3), corner, fill=(0, 0, 0), font=font)
    for i, text in enumerate(col_labels):
        draw.text((left + i * tile + 3, 3), text, fill=(0, 0, 0), font=font)
    for i, text in enumerate(row_labels):
        draw.text((3, LABEL_BAND + i * tile + tile // 2 - 5), text, fill=(0, 0, 0), font=font)
    return out


def truncation_sweep(G: torch.nn.Module, seeds: list[int], psis: tuple[float, ...] = TRUNCATION_PSIS
                     ) -> Image.Image:
    """A grid: one row per seed, one column per psi, labelled with both."""
    rows = [generate_images(G, [s], psi) for s in seeds for psi in psis]
    grid = image_grid(np.concatenate(rows), cols=len(psis))
    return labelled(grid, G.img_resolution, [f"psi {p:g}" for p in psis], [f"seed {s}" for s in seeds])


def style_mixing(G: torch.nn.Module, row_seeds: list[int], col_seeds: list[int], psi: float = 1.0,
                 cutoff: int | None = None) -> Image.Image:
    """A grid: first row the column sources, first column the row sources; each cell takes the coarse
    styles (layers < cutoff, default half) from its row seed and the fine ones from its column seed."""
    w_rows, w_cols = map_seeds(G, row_seeds, psi), map_seeds(G, col_seeds, psi)
    cutoff = G.num_ws // 2 if cutoff is None else cutoff
    side = G.img_resolution
    cells = [np.zeros((1, side, side, 3), np.uint8)]              # black corner: no generator pass
    cells.append(synthesize_w(G, w_cols))
    for i in range(len(row_seeds)):
        mixed = w_cols.clone()
        mixed[:, :cutoff] = w_rows[i:i + 1, :cutoff]
        cells.append(synthesize_w(G, w_rows[i:i + 1]))
        cells.append(synthesize_w(G, mixed))
    grid = image_grid(np.concatenate(cells), cols=len(col_seeds) + 1)
    # Columns give the fine styles, rows the coarse ones (layers < cutoff of num_ws).
    return labelled(grid, G.img_resolution, ["", *(f"fine {s}" for s in col_seeds)],
                    ["", *(f"coarse {s}" for s in row_seeds)], corner=f"ws<{cutoff}")


def interpolation_frames(G: torch.nn.Module, seeds: list[int], frames: int, psi: float,
                         budget_bytes: int | None = None) -> Iterator[np.ndarray]:
    """A looping walk through W: keyframes at the seeds, smooth-stepped linear paths between them. Yields
    uint8 frames [H, W, 3] a generator pass at a time, so a video never holds more than one pass."""
    keys = map_seeds(G, [*seeds, seeds[0]], psi)                  # [K+1, num_ws, w_dim]
    t = np.linspace(0, len(seeds), frames, endpoint=False)
    idx = np.floor(t).astype(int)
    frac = torch.from_numpy(t - idx).float().to(keys.device)
    frac = (frac * frac * (3 - 2 * frac))[:, None, None]         # ease in and out of each keyframe
    ws = keys[idx] * (1 - frac) + keys[idx + 1] * frac
    for batch in synthesize_batches(G, ws, budget_bytes=budget_bytes):
        yield from batch


def write_video(frames: Iterable[np.ndarray], path: Path, fps: int = VIDEO_FPS, gif: Path | None = None
                ) -> Path:
    """Write frames as H.264 mp4 (bit-exact settings) with imageio-ffmpeg; a GIF if ffmpeg is missing.

    Frames are encoded as they come (an iterator streams: none is kept). With `gif`, the same frames also
    go to that GIF in the same pass. Returns the path written (its suffix says which).
    """
    import imageio.v2 as iio
    try:
        import imageio_ffmpeg
        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as e:
        log.warning("ffmpeg unavailable (%s); writing a GIF instead of %s", e, path.name)
        written = write_gif(frames, path.with_suffix(".gif"), fps)
        if gif is not None and gif != written:
            log.warning("%s not written: its frames went to %s", gif.name, written.name)
        return written
    # H.264 needs even sides; a macro block of 16 lets imageio pad small frames to fit.
    with atomic_path(path) as tmp:
        writer = iio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=None,
                                macro_block_size=16, ffmpeg_log_level="error",
                                ffmpeg_params=["-crf", "18", "-pix_fmt", "yuv420p", "-threads", "1",
                                               "-fflags", "+bitexact", "-map_metadata", "-1"])

        def encoded() -> Iterator[np.ndarray]:
            for frame in frames:
                writer.append_data(frame)
                yield frame

        if gif is not None:
            write_gif(encoded(), gif, fps)
        else:
            for _ in encoded():
                pass
        writer.close()
    return path


def write_gif(frames: Iterable[np.ndarray], path: Path, fps: int = VIDEO_FPS) -> Path:
    """Write frames as a looping GIF. Frames are read as Pillow encodes them; Pillow keeps each as its
    palette indices (a third of the RGB frame) until the file is written."""
    it = iter(frames)
    first = Image.fromarray(next(it))
    with atomic_path(path) as tmp:
        first.save(tmp, format="GIF", save_all=True, append_images=(Image.fromarray(f) for f in it),
                   duration=round(1000 / fps), loop=0)
    return path


def save_png(img: Image.Image, path: Path) -> None:
    """Write a PNG atomically."""
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def find_checkpoint(checkpoints: Path) -> Path:
    """`checkpoints` itself when it is a file (a snapshot or a reference .pkl), else the newest snapshot in
    the folder; a StageError when there is none."""
    try:
        if checkpoints.exists():
            return resolve(checkpoints)
    except SnapshotError:
        pass
    raise StageError(f"no snapshot in {checkpoints}: run the train stage first (`dvc repro train`)")


def load_model(checkpoint: Path, device: str | torch.device, with_D: bool = False
               ) -> tuple[Loaded, torch.nn.Module, torch.nn.Module | None]:
    """The model file at `checkpoint` read once (a snapshot file or folder, a reference StyleGAN2(-ADA)
    pickle read without running any of its code, or an export folder), G_ema built on `device`, and D with
    `with_D` (None when the file holds none); a missing or bad file is a StageError."""
    if not Path(checkpoint).exists():
        raise StageError(f"{checkpoint}: no such snapshot, folder or pickle (train first, or `dvc pull` it)")
    try:
        loaded = load_networks(checkpoint, training_nets=with_D)
        G = build(loaded, "G_ema", device)
        D = build(loaded, "D", device) if with_D else None
    except SnapshotError as e:
        raise StageError(str(e)) from e
    assert G is not None
    return loaded, G, D


def load(checkpoint: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """G_ema and its info (`load_model`)."""
    loaded, G, _ = load_model(checkpoint, device)
    return G, loaded.info


def load_with_discriminator(checkpoint: Path, device: torch.device
                            ) -> tuple[torch.nn.Module, torch.nn.Module | None, dict]:
    """`load`, plus D from the same read of the file (None when it holds no D: a generator-only pickle)."""
    loaded, G, D = load_model(checkpoint, device, with_D=True)
    return G, D, loaded.info


# ----------------------------------------------------------------------------------------------------
# Pictures of edits along a direction in W (`generate --what edit|edit-video`; the file: directions.py)

STRIP_TILE = 128         # strips show each image at most this many pixels wide


def shrink(images: np.ndarray, side: int) -> np.ndarray:
    """uint8 images [N, H, H, 3] resized (Lanczos) to side x side when larger; smaller ones as they are."""
    if images.shape[1] <= side:
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((side, side), Image.LANCZOS)) for im in images])


def strip_grid(images: np.ndarray, seeds: list[int], strengths: np.ndarray, corner: str = "") -> Image.Image:
    """Images [S * T, H, W, 3] (seed-major) as a labelled grid: a row per seed, a column per strength (in
    sigmas); tiles shrink to STRIP_TILE px so a 1024-px model's strips stay small."""
    images = shrink(images, STRIP_TILE)
    grid = image_grid(images, cols=len(strengths))
    return labelled(grid, images.shape[1], [f"{t:+.1f} sd" for t in strengths], [f"seed {s}" for s in seeds],
                    corner)


def write_edit(G: torch.nn.Module, out: Path, name: str, vector: torch.Tensor, sigma: float,
               layers: tuple[int, int], seeds: list[int], strength: tuple[float, float], psi: float,
               steps: int = 7, frames: int = 0) -> Path:
    """Move the seeds' latents along a direction (unit `vector`, W's spread `sigma` along it) from
    strength[0] to strength[1] sigmas over `layers`: a strip (out/edit-<name>.png, `steps` columns), or with
    frames > 0 a looping video (out/edit-<name>.mp4, the seeds side by side, there and back). Returns the
    path written."""
    w = map_seeds(G, seeds, psi)[:, 0]
    lo, hi = strength
    if frames <= 0:
        strengths = np.linspace(lo, hi, steps)
        imgs = synthesize_w(G, directions.edit_ws(w, vector, layers, strengths * sigma, G.num_ws))
        path = out / f"edit-{name}.png"
        save_png(strip_grid(imgs, seeds, strengths, corner=name), path)
        return path
    # A cosine sweep lo -> hi -> lo: the loop closes without a jump and slows at both ends.
    t = np.arange(frames) / frames
    strengths = lo + (hi - lo) * (1 - np.cos(2 * np.pi * t)) / 2
    return write_video(edit_frames(G, w, vector, sigma, layers, strengths), out / f"edit-{name}.mp4")


def edit_frames(G: torch.nn.Module, w: torch.Tensor, vector: torch.Tensor, sigma: float,
                layers: tuple[int, int], strengths: np.ndarray, budget_bytes: int | None = None
                ) -> Iterator[np.ndarray]:
    """Frames [H, S * W, 3] of the S latents w [S, w_dim] side by side, one frame per strength (in
    sigmas), drawn a memory budget's worth of frames at a time."""
    n, h = len(w), G.img_resolution
    per_pass = max(1, min(BATCH, images_per_batch(G, budget_bytes=budget_bytes)) // n)
    for i in range(0, len(strengths), per_pass):
        part = strengths[i:i + per_pass]
        ws = directions.edit_ws(w, vector, layers, part * sigma, G.num_ws)         # [S * F, num_ws, w_dim]
        imgs = synthesize_w(G, ws, budget_bytes=budget_bytes)                      # seed-major
        video = imgs.reshape(n, len(part), h, h, 3).transpose(1, 2, 0, 3, 4).reshape(len(part), h, n * h, 3)
        yield from np.ascontiguousarray(video)


def picture_images(what: str, num_seeds: int, frames: int, steps: int) -> int:
    """How many generated images `generate --what` holds in memory at once for `num_seeds` seeds. Pictures
    are whole in memory; PNGs and videos stream, a generator pass at a time (`edit_frames` puts the seeds of
    a frame side by side, so a pass holds at least one whole frame)."""
    half = max(1, num_seeds // 2)
    cols = max(num_seeds - half, 1)
    counts = {"images": min(num_seeds, BATCH), "truncation": num_seeds * len(TRUNCATION_PSIS),
              "mixing": (half + 1) * (cols + 1), "video": min(frames, BATCH), "edit": num_seeds * steps,
              "edit-video": num_seeds * min(frames, max(1, BATCH // max(1, num_seeds)))}
    if what not in counts:
        raise ValueError(f"unknown picture kind {what!r}")
    return counts[what]


def check_picture(G: torch.nn.Module, what: str, num_seeds: int, frames: int, steps: int) -> None:
    """A StageError, before anything is drawn or written, when the picture would exceed MAX_PICTURE_PIXELS."""
    count = picture_images(what, num_seeds, frames, steps)
    side = G.img_resolution
    pixels = count * side * side
    if pixels > MAX_PICTURE_PIXELS:
        raise StageError(f"--what {what}: {count} images of {side}x{side} px ({pixels * 3 / 2**30:.1f} GiB) "
                         f"exceed the {MAX_PICTURE_PIXELS * 3 / 2**30:.1f} GiB one picture may hold; use "
                         "fewer --seeds, --steps or --frames")


def main(checkpoint: Path, out: Path, what: str, seeds: list[int], psi: float, frames: int,
         device: str) -> None:
    """`corgigan generate`: write the requested pictures of a snapshot into `out`."""
    G, info = load(checkpoint, resolve_device(device))
    log.info("generator from %s (kimg %.1f)", checkpoint, info.get("kimg", float("nan")))
    check_picture(G, what, len(seeds), frames, steps=0)
    out.mkdir(parents=True, exist_ok=True)
    if what == "images":
        # A batch at a time: the same images as in one call, with memory bounded whatever the seed count.
        for i in range(0, len(seeds), BATCH):
            chunk = seeds[i:i + BATCH]
            for seed, img in zip(chunk, generate_images(G, chunk, psi)):
                save_png(Image.fromarray(img), out / f"seed{seed:05d}.png")
    elif what == "truncation":
        save_png(truncation_sweep(G, seeds), out / "truncation.png")
    elif what == "mixing":
        half = max(1, len(seeds) // 2)
        save_png(style_mixing(G, seeds[:half], seeds[half:] or seeds[:1], psi), out / "mixing.png")
    elif what == "video":
        written = write_video(interpolation_frames(G, seeds, frames, psi), out / "interpolation.mp4")
        log.info("wrote %s", written)
    else:
        raise ValueError(f"unknown picture kind {what!r}")
    log.info("wrote %s pictures to %s", what, out)


def main_edit(checkpoint: Path, out: Path, directions_path: Path, name: str, layers_spec: str | None,
              seeds: list[int], strength: tuple[float, float], psi: float, steps: int, frames: int,
              device: str) -> Path:
    """`corgigan generate --what edit | edit-video`: draw the seeds moved along direction `name` of the
    explore stage's file (over `layers_spec` instead of the direction's own ws when given); frames > 0
    makes the video. Returns the path written."""
    G, _ = load(checkpoint, resolve_device(device))
    found = {d.name: d for d in directions.read_directions(directions_path, G.w_dim, G.num_ws)}
    if name not in found:
        raise StageError(f"{directions_path}: no direction {quote(name)}; it has {quote(', '.join(found))}")
    d = found[name]
    layers = d.layers
    if layers_spec:
        try:
            layers = layer_range(layers_spec, G.num_ws)
        except ValueError as e:
            raise StageError(f"--{e}") from None
    check_picture(G, "edit-video" if frames else "edit", len(seeds), frames=frames, steps=steps)
    out.mkdir(parents=True, exist_ok=True)
    sigma = directions.direction_sigmas(G, [d])[0]
    path = write_edit(G, out, d.name, d.vector, sigma, layers, seeds, strength, psi, steps=steps,
                      frames=frames)
    log.info("wrote %s (%s, ws %d..%d, %+g..%+g sigma)", path, d.name, layers[0], layers[1] - 1, *strength)
    return path
