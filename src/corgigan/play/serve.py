"""`corgigan serve`: a local web page to explore a model.

A seed grid, a truncation slider, style mixing of two seeds, sliders along the explore stage's directions,
and "upload a photo, project it, then edit it", with every image downloadable. The page (play/web/) is
plain HTML, CSS and JavaScript served from the package: no CDN, no fonts or scripts from elsewhere, no
telemetry; its Content-Security-Policy lets it load nothing but this server.

Why a small server of our own: the model-demo tools this ecosystem knows (Gradio, Streamlit) load fonts or
scripts from the internet and phone home unless configured not to, and bring a large dependency tree;
the standard library's ThreadingHTTPServer with a JSON/PNG API does all this page needs.

This module is the HTTP side: it parses each request into typed values (ranges from the Explorer's
`Limits` and model) and calls the model side, explorer.py's `Explorer`, whose work is bounded and queued
there; what it refuses becomes a 400, 404 or 503. Every connection is bounded here: a socket timeout
(idle keep-alive, stalled bodies) and a cap on connections served at once, so idle sockets cannot hold
threads. An answer sent before its request's body was read closes the connection, so an unread body is
never taken for a request of its own (request smuggling). Bad uploads (not an image, too large,
truncated) get a JSON error that the page shows. The server binds 127.0.0.1 unless told otherwise, and
then answers only requests addressed to a loopback name (a guard against DNS rebinding).

API (all GET unless marked):
    /api/info                                   model, limits, directions (with their index)
    /api/image?seed=S|latent=ID&psi=&mix=&cutoff=&d<i>=   one PNG; d<i>: move along direction i, in sigmas
    /api/grid?start=&count=&cols=&psi=          a PNG grid of seeds start .. start+count-1 (thumbnails)
    POST /api/project?steps=&space=  body: the photo's bytes; header X-Corgigan: 1 -> {"job", "latent"}
    /api/job?id=                                {"state": queued|running|done|error, "step", "steps", ...}
    /api/target?id=                             the cropped photo the projection aims at (PNG)
    /api/latent?id=                             the projected latent (npz: ws [num_ws, w_dim], space)
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import logging
import socket
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from corgigan.errors import StageError
from corgigan.play.explorer import MAX_SEED, Explorer, RefusedError
from corgigan.play.projection import SPACES

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
# A client that hung up or stalled: nobody reads an answer, and it is no fault of the server's.
GONE = (ConnectionError, TimeoutError)
# What the Explorer's refusals are over HTTP.
REFUSED_STATUS = {"bad": HTTPStatus.BAD_REQUEST, "gone": HTTPStatus.NOT_FOUND,
                  "busy": HTTPStatus.SERVICE_UNAVAILABLE}


class RequestError(Exception):
    """A request the server refuses; `status` and a message for the page."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


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


def image_request(ex: Explorer, q: dict[str, list[str]]) -> dict[str, Any]:
    """/api/image's query as Explorer.image's arguments: seed=S or latent=ID, psi, mix, cutoff, d<i>."""
    known = {f"d{i}" for i in range(len(ex.directions))}
    unknown = [k for k in q if k.startswith("d") and k not in known]
    if unknown:
        # A slider for another model's direction would otherwise be ignored and the image look unedited.
        has = ", ".join(f"d{i} ({d.name})" for i, d in enumerate(ex.directions)) or "none"
        raise RequestError(HTTPStatus.BAD_REQUEST,
                           f"no such direction: {', '.join(unknown)} (this model's directions: {has})")
    latent = _one(q, "latent")
    mix_text = _one(q, "mix")
    lim, num_ws = ex.limits, ex.G.num_ws
    return {
        "source": latent if latent else _int(q, "seed", 0, 0, MAX_SEED),
        "psi": _float(q, "psi", 1.0, -1.0, 2.0),
        "mix": None if mix_text in (None, "") else _int(q, "mix", 0, 0, MAX_SEED),
        "cutoff": _int(q, "cutoff", num_ws // 2, 0, num_ws),
        "amounts": tuple(_float(q, f"d{i}", 0.0, -lim.max_sigmas, lim.max_sigmas)
                         for i in range(len(ex.directions))),
    }


def grid_request(ex: Explorer, q: dict[str, list[str]]) -> dict[str, Any]:
    """/api/grid's query as Explorer.grid's arguments: start, count (at most the grid cap), cols, psi."""
    cap = ex.limits.grid_cap(ex.G.img_resolution)
    count = _int(q, "count", min(8, cap), 1, cap)
    return {"start": _int(q, "start", 0, 0, MAX_SEED - count + 1), "count": count,
            "cols": _int(q, "cols", min(count, 4), 1, count), "psi": _float(q, "psi", 1.0, -1.0, 2.0)}


def project_request(ex: Explorer, q: dict[str, list[str]]) -> dict[str, Any]:
    """POST /api/project's query as Explorer.submit's arguments: steps (at most max_steps), space."""
    lim = ex.limits
    steps = _int(q, "steps", min(lim.default_steps, lim.max_steps), 1, lim.max_steps)
    space = _one(q, "space") or ex.project_cfg.space
    if space not in SPACES:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"space={space!r}: use w or w+")
    return {"steps": steps, "space": space}


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
        except RefusedError as e:
            self._error(REFUSED_STATUS[e.kind], str(e))
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
            self._send(HTTPStatus.OK, ex.image(**image_request(ex, q)), "image/png")
        elif path == "/api/grid":
            self._send(HTTPStatus.OK, ex.grid(**grid_request(ex, q)), "image/png")
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
        ex = self.server.explorer
        data = self._read_body(ex.limits.max_upload_bytes)
        self._json(ex.submit(data, **project_request(ex, q)), HTTPStatus.ACCEPTED)

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
                               f"{limit / 2**20:.3g} MB")
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
