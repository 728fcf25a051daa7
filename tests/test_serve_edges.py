"""`corgigan serve` at its edges: each query parameter's default and bounds, each refusal's exact answer,
the upload framing rules over real HTTP, and the Explorer's limits (grid passes, the FIFO lock, pixels
per request, projections queued, photos kept).

Values are read off the documented API (serve.py's docstring and Limits' comments), not from the code: a
seed is in [0, 2**32), psi in [-1, 2], cutoff in [0, num_ws], a direction moves at most max_sigmas either
way, a grid holds at most max_grid images, and an upload is at most max_upload_bytes.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from corgigan.analysis.directions import read_directions
from corgigan.detector import detection
from corgigan.play import photos, serve
from corgigan.play.explorer import Explorer, FairLock, Limits, RefusedError
from corgigan.play.projection import ProjectConfig
from corgigan.stylegan2 import configs
from tests.helpers import photo_bytes, tiny_config, write_directions

MAX_SEED = 2**32 - 1
MiB = 2**20
RES, NUM_WS = 8, 4          # the tiny generator's resolution and number of ws


@pytest.fixture(scope="module")
def gen() -> Iterator[torch.nn.Module]:
    """A freshly built tiny generator (8 px, 4 ws; no training needed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    gen, _ = configs.build_networks(configs.network_spec(tiny_config()))
    assert (gen.img_resolution, gen.num_ws) == (RES, NUM_WS)
    yield gen.eval().requires_grad_(False)
    torch.set_num_threads(threads)


def make(gen: torch.nn.Module, limits: Limits | None = None, directions: list | None = None) -> Explorer:
    # Few samples for w's statistics: these tests look at limits, not at projections' quality.
    return Explorer(gen, None, {"path": "tiny.pt", "kimg": 0}, directions, limits,
                    project_cfg=ProjectConfig(w_avg_samples=16))


@pytest.fixture(scope="module")
def two_dirs(gen: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> list:
    path = write_directions(tmp_path_factory.mktemp("dirs") / "directions.json", 16, {
        "fluffy": {"vector": [1.0] * 16, "layers": [0, 3]}, "tall": {"vector": [0.5, -1.0] * 8}})
    return read_directions(path, 16, NUM_WS)


@pytest.fixture(scope="module")
def ex(gen: torch.nn.Module, two_dirs: list) -> Explorer:
    return make(gen, Limits(max_sigmas=5.0), two_dirs)


def q(text: str) -> dict[str, list[str]]:
    """A query string as serve parses it (blank values kept)."""
    from urllib.parse import parse_qs

    return parse_qs(text, keep_blank_values=True)


def refused(fn, *args) -> tuple[int, str]:
    with pytest.raises(serve.RequestError) as e:
        fn(*args)
    return int(e.value.status), str(e.value)


# ---------------------------------------------------------------------------------------------------------
# Query parsing: defaults, bounds (on, just inside, just outside), exact messages


def test_image_request_defaults(ex: Explorer) -> None:
    req = serve.image_request(ex, q(""))
    assert req == {"source": 0, "psi": 1.0, "mix": None, "cutoff": NUM_WS // 2, "amounts": (0.0, 0.0)}
    # Blank values (a cleared field on the page) are the defaults too, not errors.
    assert serve.image_request(ex, q("seed=&psi=&mix=&cutoff=&d0=&d1=")) == req
    assert type(req["cutoff"]) is int     # an index into the ws


def test_image_request_values_and_bounds(ex: Explorer) -> None:
    req = serve.image_request(ex, q(f"seed={MAX_SEED}&psi=-1&mix=0&cutoff=0&d0=-5&d1=5"))
    assert req == {"source": MAX_SEED, "psi": -1.0, "mix": 0, "cutoff": 0, "amounts": (-5.0, 5.0)}
    req = serve.image_request(ex, q(f"seed=0&psi=2&mix={MAX_SEED}&cutoff={NUM_WS}&d0=0.5"))
    assert req == {"source": 0, "psi": 2.0, "mix": MAX_SEED, "cutoff": NUM_WS, "amounts": (0.5, 0.0)}
    # The last of repeated values counts (a later slider position); a latent id replaces the seed.
    assert serve.image_request(ex, q("seed=1&seed=7&latent=abc&psi=0.5"))["source"] == "abc"
    assert serve.image_request(ex, q("seed=1&seed=7"))["source"] == 7


@pytest.mark.parametrize(("query", "message"), [
    ("seed=-1", f"seed=-1 is out of range (0 to {MAX_SEED})"),
    (f"seed={MAX_SEED + 1}", f"seed={MAX_SEED + 1} is out of range (0 to {MAX_SEED})"),
    ("seed=1.5", "seed='1.5' is not a whole number"),
    ("psi=-1.01", "psi=-1.01 is out of range (-1 to 2)"),
    ("psi=2.01", "psi=2.01 is out of range (-1 to 2)"),
    ("psi=nan", "psi=nan is out of range (-1 to 2)"),
    ("psi=x", "psi='x' is not a number"),
    ("mix=-1", f"mix=-1 is out of range (0 to {MAX_SEED})"),
    (f"mix={MAX_SEED + 1}", f"mix={MAX_SEED + 1} is out of range (0 to {MAX_SEED})"),
    ("cutoff=-1", f"cutoff=-1 is out of range (0 to {NUM_WS})"),
    (f"cutoff={NUM_WS + 1}", f"cutoff={NUM_WS + 1} is out of range (0 to {NUM_WS})"),
    ("d0=-5.01", "d0=-5.01 is out of range (-5 to 5)"),
    ("d1=5.01", "d1=5.01 is out of range (-5 to 5)"),
])
def test_image_request_refusals(ex: Explorer, query: str, message: str) -> None:
    assert refused(serve.image_request, ex, q(query)) == (400, message)


def test_unknown_directions_name_the_known_ones(gen: torch.nn.Module, ex: Explorer) -> None:
    assert refused(serve.image_request, ex, q("d0=1&d2=1&dx=1")) == (
        400, "no such direction: d2, dx (this model's directions: d0 (fluffy), d1 (tall))")
    assert refused(serve.image_request, ex, q("D0=1&d0=1&d9=1")) == (
        400, "no such direction: d9 (this model's directions: d0 (fluffy), d1 (tall))")
    bare = make(gen)
    assert refused(serve.image_request, bare, q("d0=1")) == (
        400, "no such direction: d0 (this model's directions: none)")


@pytest.mark.parametrize(("max_grid", "count", "cols"), [(16, 8, 4), (6, 6, 4), (3, 3, 3)])
def test_grid_request_defaults(gen: torch.nn.Module, max_grid: int, count: int, cols: int) -> None:
    ex = make(gen, Limits(max_grid=max_grid))
    assert serve.grid_request(ex, q("")) == {"start": 0, "count": count, "cols": cols, "psi": 1.0}
    assert serve.grid_request(ex, q("start=&count=&cols=&psi=")) == {"start": 0, "count": count, "cols": cols,
                                                                     "psi": 1.0}


def test_grid_request_bounds(ex: Explorer) -> None:
    # The last grid ends at the last seed: start + count - 1 <= MAX_SEED.
    last = MAX_SEED - 7
    assert serve.grid_request(ex, q(f"start={last}&count=8&cols=8&psi=-1")) == {
        "start": last, "count": 8, "cols": 8, "psi": -1.0}
    assert serve.grid_request(ex, q("start=0&count=1&cols=1&psi=2")) == {"start": 0, "count": 1, "cols": 1,
                                                                         "psi": 2.0}
    assert serve.grid_request(ex, q("count=16"))["cols"] == 4
    assert serve.grid_request(ex, q("count=3"))["cols"] == 3
    for query, message in [
        (f"start={last + 1}&count=8", f"start={last + 1} is out of range (0 to {last})"),
        ("start=-1", f"start=-1 is out of range (0 to {MAX_SEED - 7})"),
        ("count=0", "count=0 is out of range (1 to 16)"),
        ("count=17", "count=17 is out of range (1 to 16)"),
        ("count=3&cols=0", "cols=0 is out of range (1 to 3)"),
        ("count=3&cols=4", "cols=4 is out of range (1 to 3)"),
        ("psi=-1.5", "psi=-1.5 is out of range (-1 to 2)"),
        ("psi=2.5", "psi=2.5 is out of range (-1 to 2)"),
    ]:
        assert refused(serve.grid_request, ex, q(query)) == (400, message), query


def test_project_request_defaults_and_bounds(gen: torch.nn.Module) -> None:
    ex = make(gen, Limits(max_steps=20, default_steps=8))
    assert serve.project_request(ex, q("")) == {"steps": 8, "space": "w+"}     # ProjectConfig's space
    assert serve.project_request(ex, q("steps=&space=")) == {"steps": 8, "space": "w+"}
    assert serve.project_request(ex, q("steps=1&space=w")) == {"steps": 1, "space": "w"}
    assert serve.project_request(ex, q("steps=20&space=w%2B")) == {"steps": 20, "space": "w+"}
    # A default above the cap is capped: the page proposes what the server takes.
    assert serve.project_request(make(gen, Limits(max_steps=5, default_steps=8)), q(""))["steps"] == 5
    assert refused(serve.project_request, ex, q("steps=0")) == (400, "steps=0 is out of range (1 to 20)")
    assert refused(serve.project_request, ex, q("steps=21")) == (400, "steps=21 is out of range (1 to 20)")
    assert refused(serve.project_request, ex, q("space=z")) == (400, "space='z': use w or w+")


# ---------------------------------------------------------------------------------------------------------
# Over HTTP: the Host check, keep-alive, and the framing of uploads


@pytest.fixture(scope="module")
def srv(gen: torch.nn.Module) -> Iterator[serve.Server]:
    """127.0.0.1, uploads of at most 1 MiB, a 1 s connection timeout."""
    server = serve.start(make(gen, Limits(max_upload_bytes=MiB, max_jobs=50, timeout=1.0)), "127.0.0.1", 0)
    yield server
    server.shutdown()
    server.server_close()


HOST = "Host: 127.0.0.1\r\n"
POST = "POST /api/project?steps=1 HTTP/1.1\r\n" + HOST + "X-Corgigan: 1\r\n"


def connect(server: serve.Server, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(server.server_address[:2], timeout=10)
    if data:
        sock.sendall(data)
    return sock


def answer(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """The next response on `sock`: status, headers (lower-case names), JSON body."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    body = resp.read()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(body) if body else {}


def closed(sock: socket.socket, wait: float = 0.5) -> bool:
    """Whether the server hangs up within `wait` s (sending nothing more); shorter than the server's
    timeout, after which it would hang up on any idle connection."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def silent(sock: socket.socket, wait: float) -> bool:
    """Whether the server sends nothing (no answer, no hang-up) within `wait` s."""
    sock.settimeout(wait)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    except ConnectionResetError:
        return False
    return False


def test_a_server_on_another_address_answers_any_host(gen: torch.nn.Module) -> None:
    server = serve.start(make(gen), "0.0.0.0", 0)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
        conn.request("GET", "/api/info", headers={"Host": "dogs.example:8765"})
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("extra", ["", "Content-Length: 0\r\n", "Content-Length:  0 \r\n"])
def test_a_request_without_a_body_keeps_the_connection(srv: serve.Server, extra: str) -> None:
    get = f"GET /api/info HTTP/1.1\r\n{HOST}{extra}\r\n".encode()
    with connect(srv, get) as sock:
        status, headers, _ = answer(sock)
        assert status == 200 and "connection" not in headers
        sock.sendall(get)          # the same connection carries the next request
        assert answer(sock)[0] == 200


def test_a_chunked_body_nobody_reads_ends_the_connection(srv: serve.Server) -> None:
    with connect(srv, f"GET /api/info HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked\r\n\r\n".encode()) as sock:
        status, headers, _ = answer(sock)
        assert status == 200 and headers["connection"] == "close" and closed(sock)


@pytest.mark.parametrize(("framing", "status", "message"), [
    ("Transfer-Encoding: chunked\r\n", 411, "send the photo with a Content-Length"),
    ("Content-Length: abc\r\n", 411, "send the photo with a Content-Length"),
    ("", 411, "send the photo with a Content-Length"),
    ("Content-Length: 5\r\nContent-Length: 5\r\n", 400, "send the photo with one Content-Length"),
    ("Content-Length: 0\r\n", 400, "the upload is empty: choose a photo"),
])
def test_unframed_uploads_are_refused_and_the_connection_closed(srv: serve.Server, framing: str, status: int,
                                                                 message: str) -> None:
    jobs = set(srv.explorer.jobs)
    body = b"12345" if "5" in framing else b""
    with connect(srv, (POST + framing + "\r\n").encode() + body) as sock:
        assert answer(sock)[::2] == (status, {"error": message})
        if status == 411:
            assert closed(sock)         # what follows cannot be told from a request
    assert set(srv.explorer.jobs) == jobs


@pytest.mark.parametrize("size", [1, MiB])     # the smallest body, and one of exactly the limit: both read
def test_uploads_up_to_the_limit_are_read(srv: serve.Server, size: int) -> None:
    with connect(srv, f"{POST}Content-Length: {size}\r\n\r\n".encode() + b"x" * size) as sock:
        status, _, body = answer(sock)
    assert status == 400 and body["error"].startswith("not an image (JPEG, PNG"), body


def test_an_upload_keeps_the_connection(srv: serve.Server) -> None:
    photo = photo_bytes(40, 30)
    with connect(srv, f"{POST}Content-Length: {len(photo)}\r\n\r\n".encode() + photo) as sock:
        status, headers, body = answer(sock)
        assert status == 202 and "connection" not in headers and set(body) == {"job", "latent"}
        sock.sendall(f"GET /api/job?id={body['job']} HTTP/1.1\r\n{HOST}\r\n".encode())
        assert answer(sock)[0] == 200
    # Let its one-step projection end here, not in a daemon thread at interpreter exit.
    end = time.monotonic() + 30
    while srv.explorer.job(body["job"])["state"] not in ("done", "error") and time.monotonic() < end:
        time.sleep(0.05)


def test_a_large_upload_is_refused_unread_with_its_size(srv: serve.Server) -> None:
    # Over 4x the limit: answered at once, without waiting for the body.
    length = 5 * MiB + MiB // 2
    t0 = time.monotonic()
    with connect(srv, f"{POST}Content-Length: {length}\r\n\r\n".encode()) as sock:
        status, headers, body = answer(sock)
        assert time.monotonic() - t0 < 0.9 * srv.explorer.limits.timeout
        assert (status, body) == (413, {"error": "the photo is 5.5 MB; this server takes at most 1 MB"})
        assert headers["connection"] == "close" and closed(sock)
    t0 = time.monotonic()
    with connect(srv, f"{POST}Content-Length: {4 * MiB + 1}\r\n\r\n".encode()) as sock:
        assert answer(sock)[0] == 413 and time.monotonic() - t0 < 0.9 * srv.explorer.limits.timeout


@pytest.mark.parametrize("length", [4 * MiB, 2 * MiB + 1])   # the most; one byte past the last 1 MiB piece
def test_a_moderately_large_upload_is_read_before_the_answer(srv: serve.Server, length: int) -> None:
    # Up to 4x the limit the body is read (in 1 MiB pieces) and dropped, so the browser gets the answer.
    with connect(srv, f"{POST}Content-Length: {length}\r\n\r\n".encode() + b"x" * (length - 1)) as sock:
        assert silent(sock, wait=0.3)              # no answer while one byte is missing
        sock.sendall(b"x")
        status, _, body = answer(sock)
        mb = f"{length / MiB:.1f}"
        assert (status, body) == (413, {"error": f"the photo is {mb} MB; this server takes at most 1 MB"})
        assert closed(sock)


def test_a_large_upload_whose_sender_stops_is_still_answered(srv: serve.Server) -> None:
    with connect(srv, f"{POST}Content-Length: {2 * MiB}\r\n\r\n".encode() + b"x" * 1000) as sock:
        sock.shutdown(socket.SHUT_WR)
        assert answer(sock)[::2] == (413, {"error": "the photo is 2.0 MB; this server takes at most 1 MB"})


def test_a_body_cut_short_is_refused(srv: serve.Server) -> None:
    with connect(srv, f"{POST}Content-Length: 1000\r\n\r\n".encode() + b"x" * 10) as sock:
        sock.shutdown(socket.SHUT_WR)
        assert answer(sock)[::2] == (400, {"error": "the upload was cut short; try again"})


def test_a_stalled_body_gets_a_408_saying_so(srv: serve.Server) -> None:
    with connect(srv, f"{POST}Content-Length: 1000\r\n\r\n".encode() + b"x" * 10) as sock:
        assert answer(sock)[::2] == (408, {"error": "the upload stalled for 1 s; try again"})


# ---------------------------------------------------------------------------------------------------------
# The Explorer's limits


def test_grid_cap_and_pass() -> None:
    assert Limits(max_grid=5).grid_cap(1024) == 5
    assert Limits(max_grid=1).grid_cap(8) == 1
    assert Limits(max_grid=0).grid_cap(8) == 1          # a grid holds at least one image
    lim = Limits()                                       # 16 images at 256 px per pass
    assert [lim.grid_pass(r) for r in (128, 256, 512, 1024, 2048)] == [16, 16, 4, 1, 1]
    assert Limits(max_pixels=1000).grid_pass(30) == 1    # 1000 // 900: whole images only
    assert Limits(max_grid=3, max_pixels=1000).grid_pass(10) == 3


def run_with_timeout(fn, timeout: float = 5.0) -> None:
    done = threading.Event()
    thread = threading.Thread(target=lambda: (fn(), done.set()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert done.is_set(), "the lock never let this thread in"


def test_fair_lock_lets_one_in_at_a_time_every_time() -> None:
    lock, inside, most = FairLock(), [0], [0]

    def use(times: int) -> None:
        for _ in range(times):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                time.sleep(0.001)
                inside[0] -= 1

    run_with_timeout(lambda: use(3))           # taken again and again by one thread
    threads = [threading.Thread(target=use, args=(5,), daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads) and most[0] == 1


def test_pixels_per_request(gen: torch.nn.Module) -> None:
    assert make(gen, Limits(max_pixels=RES * RES)).image(1)[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(RefusedError) as e:
        make(gen, Limits(max_pixels=RES * RES - 1)).image(1)
    assert e.value.kind == "bad"
    assert str(e.value) == (f"1 images at {RES} px exceed this server's limit of {RES * RES - 1} pixels per "
                            "request")


@pytest.fixture()
def held(gen: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> Explorer:
    """An Explorer whose projections stay queued (none runs)."""
    explorer = make(gen, Limits(max_jobs=2, max_latents=2))
    monkeypatch.setattr(explorer._queue, "put", lambda item: None)
    return explorer


def test_projections_waiting_or_running_are_bounded(held: Explorer) -> None:
    first = held.submit(photo_bytes(40, 30), steps=3, space="w+")
    second = held.submit(photo_bytes(40, 30), steps=3, space="w")
    with pytest.raises(RefusedError) as e:
        held.submit(photo_bytes(40, 30), steps=3, space="w")
    assert (e.value.kind, str(e.value)) == ("busy", "2 projections are running or queued; try again when one "
                                                    "is done")
    held.jobs[first["job"]].state = "running"        # running ones count as well
    with pytest.raises(RefusedError, match="^2 projections"):
        held.submit(photo_bytes(40, 30), steps=3, space="w")
    held.jobs[second["job"]].state = "done"          # finished ones do not
    held.jobs[first["job"]].state = "error"
    held.submit(photo_bytes(40, 30), steps=3, space="w")


def test_submit_answers_and_keeps(held: Explorer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="corgigan.play.explorer")
    answer_ = held.submit(photo_bytes(40, 30), steps=3, space="w")
    job_id = answer_["job"]
    assert answer_ == {"job": job_id, "latent": job_id} and re.fullmatch(r"[0-9a-f]{12}", job_id)
    assert held.job(job_id) == {
        "id": job_id, "state": "queued", "step": 0, "steps": 3, "space": "w", "error": "", "errors": {},
        "crop": {"width": 40, "height": 30, "box": None, "crop": [5, 0, 35, 30], "cover": None,
                 "mode": "centre"},
        "seconds": 0.0}
    assert [r.getMessage() for r in caplog.records if r.name == "corgigan.play.explorer"] == [
        f"projection {job_id} queued: centre crop [5, 0, 35, 30], 3 steps in W"]
    lat = held.latent(job_id)
    assert lat.space == "w" and lat.version == 0 and tuple(lat.ws.shape) == (NUM_WS, 16)
    assert torch.equal(lat.ws, held.stats.mean.reshape(1, 16).expand(NUM_WS, 16))
    assert lat.target_png[:8] == b"\x89PNG\r\n\x1a\n"
    held.jobs[job_id].seconds = 1.23456
    assert held.job(job_id)["seconds"] == 1.23


def test_the_oldest_photos_are_dropped(held: Explorer) -> None:
    ids = []
    for _ in range(3):
        ids.append(held.submit(photo_bytes(40, 30), steps=3, space="w")["job"])
        for job in held.jobs.values():
            job.state = "done"          # room for the next
    assert list(held.latents) == ids[1:] and set(held.jobs) == set(ids[1:])   # max_latents=2
    for gone, message in [(held.job, "no such projection (it may have been dropped)"),
                          (held.latent, "that photo is no longer kept; upload it again")]:
        with pytest.raises(RefusedError) as e:
            gone(ids[0])
        assert (e.value.kind, str(e.value)) == ("gone", message)


def test_a_bad_photo_is_refused_without_the_upload_prefix(held: Explorer) -> None:
    with pytest.raises(RefusedError) as e:
        held.submit(b"no photo", steps=3, space="w")
    assert e.value.kind == "bad" and str(e.value).startswith("not an image (JPEG, PNG"), str(e.value)


def test_the_upload_pixel_cap_applies(gen: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    explorer = make(gen, Limits(max_upload_pixels=40 * 30))
    monkeypatch.setattr(explorer._queue, "put", lambda item: None)      # nothing runs
    explorer.submit(photo_bytes(40, 30), steps=1, space="w")
    with pytest.raises(RefusedError) as e:
        explorer.submit(photo_bytes(41, 30), steps=1, space="w")
    assert e.value.kind == "bad" and str(e.value).startswith("the image is too large"), str(e.value)


def test_a_grayscale_models_target_is_gray_rgb(monkeypatch: pytest.MonkeyPatch) -> None:
    # The photo is cropped to the model's channels (one: gray), and the target shown is an RGB PNG.
    torch.manual_seed(0)
    gray, _ = configs.build_networks(configs.network_spec(tiny_config(), img_channels=1))
    explorer = make(gray.eval().requires_grad_(False))
    monkeypatch.setattr(explorer._queue, "put", lambda item: None)      # nothing runs
    job = explorer.submit(photo_bytes(40, 30), steps=1, space="w")["job"]
    target = Image.open(io.BytesIO(explorer.latent(job).target_png))
    pixels = np.asarray(target)
    assert target.mode == "RGB" and pixels.shape == (RES, RES, 3)
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2])
    assert pixels.std() > 0


class OneBox:
    """Stands in for detection.DogDetector: one dog box in every photo."""

    def predict(self, images: list[Image.Image]) -> list[list[detection.Detection]]:
        return [[detection.Detection(20.0, 5.0, 36.0, 25.0, 0.9, 0)] for _ in images]


def test_an_upload_is_cropped_around_the_dog_the_detector_finds(gen: torch.nn.Module,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    explorer = Explorer(gen, None, {"path": "tiny.pt", "kimg": 0}, limits=Limits(max_jobs=2),
                        rule=photos.CropRule(min_crop=RES), detector=OneBox(),
                        project_cfg=ProjectConfig(w_avg_samples=16))
    monkeypatch.setattr(explorer._queue, "put", lambda item: None)
    crop = explorer.job(explorer.submit(photo_bytes(40, 30), steps=3, space="w")["job"])["crop"]
    assert (crop["mode"], crop["box"]) == ("dog", [20.0, 5.0, 36.0, 25.0])
