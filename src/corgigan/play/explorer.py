"""The model side of `corgigan serve`: one model shared by every request, its work bounded and queued.

An `Explorer` holds the generator (and D for projections), the explore stage's directions with their
sigmas, the photo rule and detector, a cache of rendered PNGs, the projection jobs and the projected
latents. Its methods take typed arguments (serve.py parses the queries) and refuse what they cannot do
with `RefusedError` (bad input, gone, busy), which the HTTP side turns into statuses.

Every request's work is bounded (`Limits`): images per grid, generated pixels per pass (a grid of a
1024-px model is drawn a pass at a time and shown as thumbnails), projection steps, upload bytes and
pixels, projections queued, photos kept. All model work runs under one FIFO lock
(`FairLock`), so concurrent requests queue instead of oversubscribing the CPU, and a projection yields
the model between its steps, so the sliders stay responsive while it runs. Projections run one at a
time on a worker thread, in order.
"""

from __future__ import annotations

import collections
import io
import logging
import queue
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from corgigan.analysis import latents, sampling
from corgigan.analysis.directions import Direction, Edit, apply_edit, direction_sigmas, read_directions
from corgigan.detector.detection import DogDetector
from corgigan.errors import StageError
from corgigan.params import SEED_LIMIT
from corgigan.play import photos, projection
from corgigan.stylegan2.devices import resolve_device

log = logging.getLogger(__name__)

MAX_SEED = SEED_LIMIT - 1  # numpy's RandomState seeds, as `corgigan generate` draws them
REFUSALS = ("bad", "gone", "busy")   # what was asked cannot be done | is no longer kept | must wait


@dataclass(frozen=True)
class Limits:
    """The most work one request may ask for (and, for the HTTP side, what one connection may hold)."""

    max_grid: int = 16                       # images per grid
    max_pixels: int = 16 * 256 * 256         # generated pixels per pass (16 images at 256 px, 1 at 1024)
    thumb: int = 256                         # grid tiles at most this many px wide (larger images shrink)
    max_steps: int = 300                     # projection steps per upload
    default_steps: int = 100                 # what the page proposes
    max_upload_bytes: int = 20 * 2**20       # upload size
    max_upload_pixels: int = 50_000_000      # decoded photo size (checked on the header, before decoding)
    max_jobs: int = 2                        # projections queued or running; more are told to wait
    max_latents: int = 16                    # projected photos kept (the oldest is dropped)
    max_sigmas: float = 5.0                  # direction sliders move at most this many sigmas either way
    cache_images: int = 64                   # rendered PNGs kept for repeated requests
    timeout: float = 5.0                     # seconds a connection may sit idle or stall mid-request
    max_connections: int = 32                # connections served at once; more wait (then get a 503)

    def grid_cap(self, resolution: int) -> int:
        """Images one grid may hold at this resolution: max_grid at any resolution, since a grid is drawn
        `grid_pass` images at a time and keeps only thumbnails (at most `thumb` px) of them."""
        return max(1, self.max_grid)

    def grid_pass(self, resolution: int) -> int:
        """Images of this resolution one generator pass of a grid may draw (max_pixels; at least one)."""
        return max(1, min(self.max_grid, self.max_pixels // resolution**2))


class RefusedError(Exception):
    """Work the Explorer will not do; `kind` (one of REFUSALS) says why, the message says what to do."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in REFUSALS:
            raise ValueError(f"kind must be one of {REFUSALS}, got {kind!r}")
        super().__init__(message)
        self.kind = kind


class FairLock:
    """A FIFO lock: waiters get it in arrival order, so a projection that takes it again after each step
    cannot starve the page's image requests (threading.Lock makes no such promise)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0
        self._serving = 0

    def __enter__(self) -> FairLock:
        with self._cond:
            ticket = self._next
            self._next += 1
            while ticket != self._serving:
                self._cond.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


@dataclass
class Job:
    """One projection of an uploaded photo."""

    id: str
    steps: int
    space: str
    state: str = "queued"                 # queued | running | done | error
    step: int = 0
    error: str = ""
    errors: dict[str, float] = field(default_factory=dict)
    crop: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Latent:
    """A projected photo: its latent (updated while the projection runs) and target."""

    ws: torch.Tensor                      # [num_ws, w_dim]
    target_png: bytes
    space: str
    version: int = 0                      # bumped with every update: part of the render cache key


def png_bytes(img: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> PNG, fast settings (the page asks for many)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class Explorer:
    """The model and all that requests share. Model work holds `lock`; the rest holds `_state`."""

    def __init__(
        self,
        G: torch.nn.Module,                          # generator, eval, frozen
        D: torch.nn.Module | None,                   # for the projection's feature loss; None: pixels only
        info: dict[str, Any],                        # sampling.load's info
        directions: list[Direction] | None = None,
        limits: Limits | None = None,
        rule: photos.CropRule | None = None,         # the filter stage's crop (default: min_crop = G's res)
        detector: DogDetector | None = None,         # crop around the detected dog
        lpips: projection.LpipsVGG | None = None,
        project_cfg: projection.ProjectConfig | None = None,  # steps and space come from each request
    ) -> None:
        self.G, self.D, self.info = G, D, info
        self.directions = directions or []
        self.limits = limits or Limits()
        self.rule = rule or photos.CropRule(min_crop=G.img_resolution)
        self.detector, self.lpips = detector, lpips
        self.project_cfg = project_cfg or projection.ProjectConfig()
        self.lock = FairLock()
        self._state = threading.Lock()
        with self.lock:
            self.stats = projection.w_stats(G, self.project_cfg.w_avg_samples, self.project_cfg.seed)
            self.sigmas = direction_sigmas(G, self.directions)
        self._cache: collections.OrderedDict[tuple, bytes] = collections.OrderedDict()
        self.latents: collections.OrderedDict[str, Latent] = collections.OrderedDict()
        self.jobs: dict[str, Job] = {}
        self._queue: queue.Queue[tuple[Job, torch.Tensor]] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="corgigan-projection", daemon=True)
        self._worker.start()

    # ---- images -------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """/api/info: what the page needs to build its controls."""
        lim = self.limits
        return {
            "resolution": self.G.img_resolution, "num_ws": self.G.num_ws, "w_dim": self.G.w_dim,
            "kimg": self.info.get("kimg"), "checkpoint": Path(str(self.info.get("path", ""))).name,
            "feature_loss": self.D is not None, "lpips": self.lpips is not None,
            "detector": self.detector is not None,
            "directions": [{"index": i, "name": d.name, "layers": list(d.layers)}
                           for i, d in enumerate(self.directions)],
            "limits": {"grid": lim.grid_cap(self.G.img_resolution), "thumb": lim.thumb,
                       "max_steps": lim.max_steps,
                       "default_steps": min(lim.default_steps, lim.max_steps),
                       "max_upload_bytes": lim.max_upload_bytes, "max_upload_pixels": lim.max_upload_pixels,
                       "max_sigmas": lim.max_sigmas, "max_seed": MAX_SEED},
        }

    def _edit(self, psi: float, mix: int | None, cutoff: int,
              amounts: tuple[float, ...]) -> tuple[Edit, tuple]:
        """The edit asked for, and its part of the cache key (call holding `lock`: it maps the mix seed)."""
        if len(amounts) != len(self.directions):
            raise ValueError(f"{len(amounts)} amounts for {len(self.directions)} directions")
        moves = {d.name: a * s for d, a, s in zip(self.directions, amounts, self.sigmas) if a}
        mix_ws = latents.map_seeds(self.G, [mix], 1.0)[0].cpu() if mix is not None else None
        edit = Edit(psi=psi, mix=mix_ws, cutoff=cutoff, moves=moves)
        return edit, (psi, mix, cutoff if mix is not None else None, amounts)

    def _source(self, source: int | str) -> tuple[torch.Tensor, tuple]:
        """The latent to draw ([1, num_ws, w_dim]) and its cache key: a seed (int) or a projected photo's id
        (str); RefusedError (gone) when that photo is no longer kept."""
        if isinstance(source, str):
            with self._state:
                lat = self.latents.get(source)
                if lat is None:
                    raise RefusedError("gone", "that photo is no longer kept; upload it again")
                return lat.ws.unsqueeze(0), ("latent", source, lat.version)
        return latents.map_seeds(self.G, [source], 1.0).cpu(), ("seed", source)

    def image(self, source: int | str, psi: float = 1.0, mix: int | None = None, cutoff: int | None = None,
              amounts: tuple[float, ...] = ()) -> bytes:
        """/api/image: one image as PNG. `source`: a seed or a projected photo's id; `psi`: truncation;
        `mix`: a seed whose w takes the layers from `cutoff` on (default: half of them); `amounts`: the
        move along each direction, in its sigmas (one per direction; none: no move)."""
        cutoff = self.G.num_ws // 2 if cutoff is None else cutoff
        amounts = amounts or (0.0,) * len(self.directions)
        self._check_pixels(1)
        with self.lock:
            ws, key = self._source(source)
            edit, edit_key = self._edit(psi, mix, cutoff, amounts)
            cached = self._cached(key + edit_key)
            if cached is not None:
                return cached
            ws = apply_edit(ws, self.G.mapping.w_avg, edit, self._by_name())
            png = png_bytes(sampling.synthesize_w(self.G, ws)[0])
        self._store(key + edit_key, png)
        return png

    def grid(self, start: int, count: int, cols: int, psi: float = 1.0) -> bytes:
        """/api/grid: seeds start .. start + count - 1 at truncation psi, `cols` per row (count: at most
        `limits.grid_cap`), tiles shrunk to `limits.thumb` px; drawn `limits.grid_pass` images at a time."""
        if not 1 <= count <= self.limits.grid_cap(self.G.img_resolution):
            raise RefusedError("bad", f"count={count}: a grid holds 1 to "
                               f"{self.limits.grid_cap(self.G.img_resolution)} images")
        key = ("grid", start, count, cols, psi)
        cached = self._cached(key)
        if cached is not None:
            return cached
        seeds = list(range(start, start + count))
        per_pass = self.limits.grid_pass(self.G.img_resolution)
        tiles = []
        for i in range(0, count, per_pass):
            with self.lock:   # one pass at a time: other requests queue between the passes
                imgs = sampling.generate_images(self.G, seeds[i:i + per_pass], psi, per_pass)
            tiles.append(sampling.shrink(imgs, self.limits.thumb))
        png = png_bytes(np.asarray(sampling.image_grid(np.concatenate(tiles), cols)))
        self._store(key, png)
        return png

    def _check_pixels(self, count: int) -> None:
        if count * self.G.img_resolution**2 > self.limits.max_pixels:
            raise RefusedError("bad", f"{count} images at {self.G.img_resolution} px exceed this server's "
                               f"limit of {self.limits.max_pixels} pixels per request")

    def _by_name(self) -> dict[str, Direction]:
        return {d.name: d for d in self.directions}

    def _cached(self, key: tuple) -> bytes | None:
        with self._state:
            png = self._cache.get(key)
            if png is not None:
                self._cache.move_to_end(key)
            return png

    def _store(self, key: tuple, png: bytes) -> None:
        with self._state:
            self._cache[key] = png
            while len(self._cache) > self.limits.cache_images:
                self._cache.popitem(last=False)

    # ---- projections --------------------------------------------------------------------------------

    def submit(self, data: bytes, steps: int, space: str) -> dict[str, Any]:
        """POST /api/project: check and crop the photo, queue its projection of `steps` steps in `space`
        (w | w+); {"job", "latent"}. RefusedError: bad (the photo), busy (max_jobs already waiting)."""
        with self._state:
            self._check_busy()   # before the work of cropping
        rule = replace(self.rule, max_pixels=min(self.rule.max_pixels, self.limits.max_upload_pixels))
        try:
            with self.lock:   # the detector shares the CPU with the model
                target, how = photos.photo_target(data, self.G.img_resolution, rule, self.detector,
                                                  self.G.img_channels, name="upload")
        except StageError as e:
            raise RefusedError("bad", str(e).removeprefix("upload: ")) from e
        job = Job(id=uuid.uuid4().hex[:12], steps=steps, space=space, crop=how)
        buf = io.BytesIO()
        target.convert("RGB").save(buf, format="PNG")
        with self._state:
            self._check_busy()   # again, with the insertion: two uploads may have been cropped at once
            self.jobs[job.id] = job
            self.latents[job.id] = Latent(ws=self.stats.mean.expand(self.G.num_ws, -1).clone(),
                                          target_png=buf.getvalue(), space=space)
            while len(self.latents) > self.limits.max_latents:
                old, _ = self.latents.popitem(last=False)
                self.jobs.pop(old, None)
        self._queue.put((job, photos.to_tensor(target)))
        log.info("projection %s queued: %s crop %s, %d steps in %s", job.id, how["mode"], how["crop"], steps,
                 space.upper())
        return {"job": job.id, "latent": job.id}

    def _check_busy(self) -> None:
        """RefusedError (busy) when max_jobs projections are queued or running (call holding _state)."""
        busy = sum(j.state in ("queued", "running") for j in self.jobs.values())
        if busy >= self.limits.max_jobs:
            raise RefusedError("busy", f"{busy} projections are running or queued; try again when one is "
                                       "done")

    def job(self, job_id: str) -> dict[str, Any]:
        """/api/job: a projection's progress."""
        with self._state:
            job = self.jobs.get(job_id)
            if job is None:
                raise RefusedError("gone", "no such projection (it may have been dropped)")
            return {"id": job.id, "state": job.state, "step": job.step, "steps": job.steps,
                    "space": job.space, "error": job.error, "errors": job.errors, "crop": job.crop,
                    "seconds": round(job.seconds, 2)}

    def latent(self, latent_id: str) -> Latent:
        """A kept projected photo."""
        with self._state:
            lat = self.latents.get(latent_id)
        if lat is None:
            raise RefusedError("gone", "that photo is no longer kept; upload it again")
        return lat

    def _work(self) -> None:
        """The one projection worker: jobs run one at a time, in order."""
        while True:
            job, target = self._queue.get()
            try:
                self._run(job, target)
            except Exception as e:   # a failed projection must not stop the worker
                log.error("projection %s failed:\n%s", job.id, traceback.format_exc())
                with self._state:
                    job.state, job.error = "error", f"projection failed: {type(e).__name__}: {e}"
            finally:
                self._queue.task_done()

    def _run(self, job: Job, target: torch.Tensor) -> None:
        with self._state:
            if job.id not in self.jobs:      # dropped while queued
                return
            job.state = "running"
        t0 = time.perf_counter()

        def on_step(step: int, ws: torch.Tensor) -> None:
            with self._state:
                job.step = step + 1
                lat = self.latents.get(job.id)
                if lat is not None:
                    lat.ws, lat.version = ws[0], lat.version + 1

        cfg = replace(self.project_cfg, steps=job.steps, space=job.space)
        result = projection.project(self.G, target, self.D, cfg, self.lpips, on_step=on_step, lock=self.lock,
                                    stats=self.stats)
        with self._state:
            lat = self.latents.get(job.id)
            if lat is not None:
                lat.ws, lat.version = result.ws[0], lat.version + 1
            job.errors = {k: round(v, 6) for k, v in result.errors[0].items()}
            job.seconds = time.perf_counter() - t0
            job.state = "done"
        log.info("projection %s done in %.1f s: mse %.5f", job.id, job.seconds, job.errors["mse"])


def load_explorer(checkpoint: Path, device: str = "auto", directions: Path | None = None,
                  detector: Path | None = None, detect_kwargs: dict[str, Any] | None = None,
                  rule: photos.CropRule | None = None,
                  lpips_files: tuple[Path, Path | None] | None = None,
                  limits: Limits | None = None) -> Explorer:
    """An Explorer for a snapshot (file or folder) or reference pickle, with its D for projections."""
    dev = resolve_device(device)
    G, D, info = sampling.load_with_discriminator(checkpoint, dev)
    if D is None:
        log.warning("%s has no discriminator: projections use the pixel loss only", checkpoint)
    dirs = read_directions(directions, G.w_dim, G.num_ws) if directions else None
    dogs = DogDetector.load(detector, **(detect_kwargs or {})) if detector else None
    lpips = projection.LpipsVGG.from_files(*lpips_files).to(dev) if lpips_files else None
    return Explorer(G, D, info, dirs, limits, rule, dogs, lpips)
