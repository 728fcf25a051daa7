"""`corgigan serve`: a local web page to explore a model.

A seed grid, a truncation slider, style mixing of two seeds, sliders along the explore stage's directions,
and "upload a photo, project it, then edit it", with every image downloadable. The page (play/web/) is
plain HTML, CSS and JavaScript served from the package: no CDN, no fonts or scripts from elsewhere, no
telemetry; its Content-Security-Policy lets it load nothing but this server.

Why a small server of our own: the model-demo tools this ecosystem knows (Gradio, Streamlit) load fonts or
scripts from the internet and phone home unless configured not to, and bring a large dependency tree;
the standard library's ThreadingHTTPServer with a JSON/PNG API does all this page needs.

Every request's work is bounded (`Limits`): images per grid, generated pixels per request, projection
steps, upload bytes and pixels, projections queued, photos kept; so is every connection: a socket timeout
(idle keep-alive, stalled bodies) and a cap on connections served at once, so idle sockets cannot hold
threads. An answer sent before its request's body was read closes the connection, so an unread body is
never taken for a request of its own (request smuggling). All model work runs under one FIFO lock,
so concurrent requests queue instead of oversubscribing the CPU, and a projection yields the model
between its steps, so the sliders stay responsive while it runs. Bad uploads (not an image, too large,
truncated) get a JSON error that the page shows. The server binds 127.0.0.1 unless told otherwise, and
then answers only requests addressed to a loopback name (a guard against DNS rebinding).

API (all GET unless marked):
    /api/info                                   model, limits, directions (with their index)
    /api/image?seed=S|latent=ID&psi=&mix=&cutoff=&d<i>=   one PNG; d<i>: move along direction i, in sigmas
    /api/grid?start=&count=&cols=&psi=          a PNG grid of seeds start .. start+count-1
    POST /api/project?steps=&space=  body: the photo's bytes; header X-Corgigan: 1 -> {"job", "latent"}
    /api/job?id=                                {"state": queued|running|done|error, "step", "steps", ...}
    /api/target?id=                             the cropped photo the projection aims at (PNG)
    /api/latent?id=                             the projected latent (npz: ws [num_ws, w_dim], space)
"""

from __future__ import annotations

import collections
import contextlib
import io
import ipaddress
import json
import logging
import queue
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

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

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
WEB_DIR = Path(__file__).resolve().parent / "web"
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/app.css": ("app.css", "text/css; charset=utf-8")}
# The page may load only from this server; inline scripts and styles are refused too.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
MAX_SEED = SEED_LIMIT - 1  # numpy's RandomState seeds, as `corgigan generate` draws them
# A client that hung up or stalled: nobody reads an answer, and it is no fault of the server's.
GONE = (ConnectionError, TimeoutError)


@dataclass(frozen=True)
class Limits:
    """The most work one request may ask for."""

    max_grid: int = 16                       # images per grid
    max_pixels: int = 16 * 256 * 256         # generated pixels per request (16 images at 256 px, 1 at 1024)
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
        """Images one grid may hold at this resolution."""
        return max(1, min(self.max_grid, self.max_pixels // resolution**2))


class RequestError(Exception):
    """A request the server refuses; `status` and a message for the page."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


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


def _one(q: dict[str, list[str]], name: str) -> str | None:
    values = q.get(name)
    return values[-1] if values else None


def _int(q: dict[str, list[str]], name: str, default: int, lo: int, hi: int) -> int:
    text = _one(q, name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name}={text!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name}={value} is out of range ({lo} to {hi})")
    return value


def _float(q: dict[str, list[str]], name: str, default: float, lo: float, hi: float) -> float:
    text = _one(q, name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name}={text!r} is not a number") from None
    if not lo <= value <= hi:   # also refuses nan
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name}={value:g} is out of range ({lo:g} to {hi:g})")
    return value


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

    # ---- reading requests ---------------------------------------------------------------------------

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
            "limits": {"grid": lim.grid_cap(self.G.img_resolution), "max_steps": lim.max_steps,
                       "default_steps": min(lim.default_steps, lim.max_steps),
                       "max_upload_bytes": lim.max_upload_bytes, "max_upload_pixels": lim.max_upload_pixels,
                       "max_sigmas": lim.max_sigmas, "max_seed": MAX_SEED},
        }

    def _edit(self, q: dict[str, list[str]]) -> tuple[Edit, tuple]:
        """The edit a query asks for, and its part of the cache key."""
        self._check_directions(q)
        psi = _float(q, "psi", 1.0, -1.0, 2.0)
        mix_text = _one(q, "mix")
        mix = None if mix_text in (None, "") else _int(q, "mix", 0, 0, MAX_SEED)
        cutoff = _int(q, "cutoff", self.G.num_ws // 2, 0, self.G.num_ws)
        amounts = tuple(_float(q, f"d{i}", 0.0, -self.limits.max_sigmas, self.limits.max_sigmas)
                        for i in range(len(self.directions)))
        moves = {d.name: a * s for d, a, s in zip(self.directions, amounts, self.sigmas) if a}
        mix_ws = latents.map_seeds(self.G, [mix], 1.0)[0].cpu() if mix is not None else None
        edit = Edit(psi=psi, mix=mix_ws, cutoff=cutoff, moves=moves)
        return edit, (psi, mix, cutoff if mix is not None else None, amounts)

    def _check_directions(self, q: dict[str, list[str]]) -> None:
        """RequestError naming every direction parameter (d<i>, or any other d...) this model lacks: a
        slider for another model's direction would otherwise be ignored and the image look unedited."""
        known = {f"d{i}" for i in range(len(self.directions))}
        unknown = [k for k in q if k.startswith("d") and k not in known]
        if unknown:
            has = ", ".join(f"d{i} ({d.name})" for i, d in enumerate(self.directions)) or "none"
            raise RequestError(HTTPStatus.BAD_REQUEST,
                               f"no such direction: {', '.join(unknown)} (this model's directions: {has})")

    def _source(self, q: dict[str, list[str]]) -> tuple[torch.Tensor, tuple]:
        """The latent to draw ([1, num_ws, w_dim]) and its cache key: a seed or a projected photo."""
        latent_id = _one(q, "latent")
        if latent_id:
            with self._state:
                lat = self.latents.get(latent_id)
                if lat is None:
                    raise RequestError(HTTPStatus.NOT_FOUND, "that photo is no longer kept; upload it again")
                return lat.ws.unsqueeze(0), ("latent", latent_id, lat.version)
        seed = _int(q, "seed", 0, 0, MAX_SEED)
        return latents.map_seeds(self.G, [seed], 1.0).cpu(), ("seed", seed)

    def image(self, q: dict[str, list[str]]) -> bytes:
        """/api/image: one edited image as PNG."""
        self._check_pixels(1)
        with self.lock:
            ws, key = self._source(q)
            edit, edit_key = self._edit(q)
            cached = self._cached(key + edit_key)
            if cached is not None:
                return cached
            ws = apply_edit(ws, self.G.mapping.w_avg, edit, self._by_name())
            png = png_bytes(sampling.synthesize_w(self.G, ws)[0])
        self._store(key + edit_key, png)
        return png

    def grid(self, q: dict[str, list[str]]) -> bytes:
        """/api/grid: seeds start .. start + count - 1 at truncation psi, `cols` per row."""
        cap = self.limits.grid_cap(self.G.img_resolution)
        count = _int(q, "count", min(8, cap), 1, cap)
        start = _int(q, "start", 0, 0, MAX_SEED - count + 1)
        cols = _int(q, "cols", min(count, 4), 1, count)
        psi = _float(q, "psi", 1.0, -1.0, 2.0)
        key = ("grid", start, count, cols, psi)
        cached = self._cached(key)
        if cached is not None:
            return cached
        with self.lock:
            imgs = sampling.generate_images(self.G, list(range(start, start + count)), psi)
        png = png_bytes(np.asarray(sampling.image_grid(imgs, cols)))
        self._store(key, png)
        return png

    def _check_pixels(self, count: int) -> None:
        if count * self.G.img_resolution**2 > self.limits.max_pixels:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"{count} images at {self.G.img_resolution} px exceed "
                               f"this server's limit of {self.limits.max_pixels} pixels per request")

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

    def submit(self, data: bytes, q: dict[str, list[str]]) -> dict[str, Any]:
        """POST /api/project: check and crop the photo, queue its projection; {"job", "latent"}."""
        lim = self.limits
        steps = _int(q, "steps", min(lim.default_steps, lim.max_steps), 1, lim.max_steps)
        space = _one(q, "space") or self.project_cfg.space
        if space not in projection.SPACES:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"space={space!r}: use w or w+")
        with self._state:
            self._check_busy()   # before the work of cropping
        rule = replace(self.rule, max_pixels=min(self.rule.max_pixels, self.limits.max_upload_pixels))
        try:
            with self.lock:   # the detector shares the CPU with the model
                target, how = photos.photo_target(data, self.G.img_resolution, rule, self.detector,
                                                  self.G.img_channels, name="upload")
        except StageError as e:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(e).removeprefix("upload: ")) from e
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
        """RequestError when max_jobs projections are queued or running (call holding _state)."""
        busy = sum(j.state in ("queued", "running") for j in self.jobs.values())
        if busy >= self.limits.max_jobs:
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE,
                               f"{busy} projections are running or queued; try again when one is done")

    def job(self, job_id: str) -> dict[str, Any]:
        """/api/job: a projection's progress."""
        with self._state:
            job = self.jobs.get(job_id)
            if job is None:
                raise RequestError(HTTPStatus.NOT_FOUND, "no such projection (it may have been dropped)")
            return {"id": job.id, "state": job.state, "step": job.step, "steps": job.steps,
                    "space": job.space, "error": job.error, "errors": job.errors, "crop": job.crop,
                    "seconds": round(job.seconds, 2)}

    def latent(self, latent_id: str) -> Latent:
        """A kept projected photo."""
        with self._state:
            lat = self.latents.get(latent_id)
        if lat is None:
            raise RequestError(HTTPStatus.NOT_FOUND, "that photo is no longer kept; upload it again")
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


# ----------------------------------------------------------------------------------------------------
# HTTP


def _is_loopback(host: str) -> bool:
    """Whether `host` (an IP literal, IPv6 with or without brackets, or a name) is this machine's loopback."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        # DNS names are case-insensitive; only the name itself, never one that merely contains it. ASCII
        # only, so that no other letter lower-cases into it.
        return host.isascii() and host.lower() == "localhost"


BUSY = b'{"error": "the server is busy with other connections; try again"}'
BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BUSY), BUSY))


class Server(ThreadingHTTPServer):
    """ThreadingHTTPServer holding the Explorer its handlers use; at most `max_connections` at once."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128    # connections past the cap wait in the kernel's backlog, not in threads

    def __init__(self, address: tuple[str, int], explorer: Explorer) -> None:
        self.explorer = explorer
        self.loopback_only = _is_loopback(address[0])
        self._slots = threading.BoundedSemaphore(explorer.limits.max_connections)
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a thread of its own once one of `max_connections` slots is free.

        Waiting here (in the accepting thread) keeps further connections in the backlog; idle ones free
        their slot within `timeout`, so a wait longer than that means every slot is busy working.
        """
        lim = self.explorer.limits
        if not self._slots.acquire(timeout=lim.timeout):
            log.warning("%d connections busy for %g s: refused one from %s", lim.max_connections, lim.timeout,
                        client_address[0])
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(BUSY_RESPONSE)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()     # no thread started: it will not release the slot
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """The connection's thread (ThreadingMixIn's), giving its slot back when the connection ends."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """An exception that left a connection's handler: a client gone is one debug line, not a traceback
        on stderr (socketserver's default); anything else is logged with its traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, GONE):
            log.debug("%s: connection dropped (%s)", client_address[0], exc)
        else:
            log.error("connection from %s failed:\n%s", client_address[0], traceback.format_exc())

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"


class Handler(BaseHTTPRequestHandler):
    """Routes of the page and its API; every answer has a length, errors are JSON."""

    server: Server
    protocol_version = "HTTP/1.1"      # keep-alive: the page asks for many small images
    server_version = "corgigan"
    sys_version = ""
    # Whether the current request's body may still be (partly) on the wire; True until a request has been
    # looked at, so that an answer sent by a path that never looked closes the connection.
    _body_unread = True

    def setup(self) -> None:
        # Every read and write on the connection, including waiting for the next keep-alive request and
        # for the rest of a body, gives up after this (StreamRequestHandler applies it in setup).
        self.timeout = self.server.explorer.limits.timeout
        super().setup()
        # Headers and body leave in two writes; with Nagle's algorithm the second waits for the client's
        # delayed ACK of the first (~40 ms on Linux) on every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # the base class's argument name
        log.debug("%s %s", self.address_string(), format % args)

    # ---- answers ------------------------------------------------------------------------------------

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, extra: dict[str, str] | None = None
              ) -> None:
        """The one way an answer leaves: headers every answer carries, then the body (none for HEAD).

        An answer to a request whose body was not read in full (refused before reading, or a body nobody
        reads) ends the connection: the rest of that body, read as the next request, would be a request
        nobody sent, e.g. an upload smuggled inside a cross-origin form's text/plain body.
        """
        if self._body_unread:
            extra = {**(extra or {}), "Connection": "close"}
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json({"error": message}, status)

    def _host_ok(self) -> bool:
        """Loopback servers answer only requests addressed to a loopback name (DNS rebinding)."""
        if not self.server.loopback_only:
            return True
        host = self.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return _is_loopback(name)

    # ---- routes -------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._handle(self._get)

    def do_HEAD(self) -> None:
        self._handle(self._get)

    def do_POST(self) -> None:
        self._handle(self._post)

    def _has_body(self) -> bool:
        """Whether the request declares a body: any Transfer-Encoding, or a Content-Length other than 0."""
        if self.headers.get("Transfer-Encoding") is not None:
            return True
        return any(v.strip() != "0" for v in self.headers.get_all("Content-Length") or [])

    def _handle(self, route: Any) -> None:
        """Answer one request exactly once; a client gone (or stalled past the timeout) ends the
        connection."""
        self._body_unread = self._has_body()
        try:
            self._answer(route)
        except GONE as e:
            # The page moved on (a newer slider value) or the client hung up mid-upload: nobody reads an
            # answer, and the connection is in no state to carry another request.
            self.close_connection = True
            log.debug("%s %s: client gone (%s)", self.command, self.path, e)

    def _answer(self, route: Any) -> None:
        try:
            if not self._host_ok():
                raise RequestError(HTTPStatus.FORBIDDEN, "this server answers only 127.0.0.1 or localhost")
            url = urlsplit(self.path)
            route(url.path, parse_qs(url.query, keep_blank_values=True))
        except RequestError as e:
            self._error(e.status, str(e))
        except GONE:
            raise
        except Exception:
            log.error("%s %s failed:\n%s", self.command, self.path, traceback.format_exc())
            with contextlib.suppress(OSError):
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; the server log says more")

    def _get(self, path: str, q: dict[str, list[str]]) -> None:
        ex = self.server.explorer
        if path in STATIC:
            name, kind = STATIC[path]
            self._send(HTTPStatus.OK, (WEB_DIR / name).read_bytes(), kind)
        elif path == "/api/info":
            self._json(ex.describe())
        elif path == "/api/image":
            self._send(HTTPStatus.OK, ex.image(q), "image/png")
        elif path == "/api/grid":
            self._send(HTTPStatus.OK, ex.grid(q), "image/png")
        elif path == "/api/job":
            self._json(ex.job(_one(q, "id") or ""))
        elif path == "/api/target":
            self._send(HTTPStatus.OK, ex.latent(_one(q, "id") or "").target_png, "image/png")
        elif path == "/api/latent":
            lat = ex.latent(_one(q, "id") or "")
            buf = io.BytesIO()
            np.savez(buf, ws=lat.ws.numpy().astype(np.float32), space=np.array(lat.space))
            self._send(HTTPStatus.OK, buf.getvalue(), "application/octet-stream",
                       {"Content-Disposition": 'attachment; filename="projected_w.npz"'})
        elif path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        else:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    def _post(self, path: str, q: dict[str, list[str]]) -> None:
        if path != "/api/project":
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint: POST {path}")
        # A custom header: a page on another site cannot send it without a CORS preflight, which this
        # server never grants, so other sites cannot make it work.
        if self.headers.get("X-Corgigan") != "1":
            raise RequestError(HTTPStatus.FORBIDDEN, "uploads come from the page (X-Corgigan header)")
        data = self._read_body(self.server.explorer.limits.max_upload_bytes)
        self._json(self.server.explorer.submit(data, q), HTTPStatus.ACCEPTED)

    def _read_body(self, limit: int) -> bytes:
        """The request body, at most `limit` bytes; larger ones are refused before they are read. A body
        that stalls for the connection's timeout is refused (408) and the connection closed."""
        try:
            return self._read_length(limit)
        except TimeoutError:
            raise RequestError(HTTPStatus.REQUEST_TIMEOUT, f"the upload stalled for {self.timeout:g} s; "
                               "try again") from None

    def _read_length(self, limit: int) -> bytes:
        """`_read_body` without the timeout's translation: the body its one Content-Length frames."""
        if self.headers.get("Transfer-Encoding") is not None:
            # Chunked or any other coding: only a Content-Length frames a body here, and one framed both
            # ways is read differently by different parsers.
            self.close_connection = True
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send the photo with a Content-Length")
        if len(self.headers.get_all("Content-Length") or []) > 1:
            # Which one frames the body is a guess another parser may make differently.
            raise RequestError(HTTPStatus.BAD_REQUEST, "send the photo with one Content-Length")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send the photo with a Content-Length") from None
        if length <= 0:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the upload is empty: choose a photo")
        if length > limit:
            # Read and drop a moderate excess so the browser, still sending, gets this answer instead of a
            # reset connection; beyond that, just hang up.
            self.close_connection = True
            if length <= 4 * limit:
                left = length
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    left -= len(chunk)
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"the photo is {length / 2**20:.1f} MB; this server takes at most "
                               f"{limit / 2**20:.0f} MB")
        data = self.rfile.read(length)
        if len(data) != length:
            self.close_connection = True
            raise RequestError(HTTPStatus.BAD_REQUEST, "the upload was cut short; try again")
        self._body_unread = False
        return data


def start(explorer: Explorer, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> Server:
    """Bind the server (port 0: any free port) and serve in a background thread; `shutdown()` stops it."""
    try:
        server = Server((host, port), explorer)
    except OSError as e:
        raise StageError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port") from e
    threading.Thread(target=server.serve_forever, name="corgigan-serve", daemon=True).start()
    return server


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


def main(explorer: Explorer, host: str, port: int) -> None:
    """`corgigan serve`: serve until interrupted (Ctrl-C)."""
    if not _is_loopback(host):
        log.warning("listening on %s: anyone who can reach this machine can use the page", host)
    server = start(explorer, host, port)
    log.info("serving %s (%d px, kimg %s): open %s ; Ctrl-C stops", explorer.info.get("path"),
             explorer.G.img_resolution, explorer.info.get("kimg"), server.url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        server.shutdown()
        server.server_close()
