"""`corgigan serve`: its API on a tiny model over real HTTP, and the page in a real headless browser.

The browser test drives Debian's chromium through its chromedriver (apt packages chromium and
chromium-driver, which .ci/run installs) with selenium; nothing is downloaded at run time. It skips, saying
why, only when those are not installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import io
import json
import logging
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corgigan.play import serve
from corgigan.play.explorer import Explorer, FairLock, Limits, RefusedError, load_explorer
from corgigan.stylegan2.loop import training_loop
from tests.helpers import photo_bytes, tiny_config, write_dataset, write_directions

RES = 16
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
LIMITS = Limits(max_grid=6, max_steps=20, default_steps=8, max_upload_bytes=200_000,
                max_upload_pixels=400 * 400, max_jobs=2)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[serve.Server]:
    """A server on 127.0.0.1 (a free port) for a tiny 16-px model trained in seconds, with one direction."""
    root = tmp_path_factory.mktemp("serve")
    dataset = write_dataset(root / "data.zip", n=8, res=RES, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    training_loop(dataset, root / "run", tiny_config(resolution=RES), kimg=0.016, snapshot_kimg=0.016, seed=0,
                  augment="none", workers=0, device="cpu")
    w_dim = 16
    directions = write_directions(root / "directions.json", w_dim, {
        "fluffy": {"vector": [1.0] * w_dim, "layers": [0, 3]}})
    explorer = load_explorer(root / "run", "cpu", directions=directions, limits=LIMITS)
    srv = serve.start(explorer, "127.0.0.1", 0)
    yield srv
    srv.shutdown()
    srv.server_close()
    torch.set_num_threads(threads)


def request(srv: serve.Server, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of one request to the test server."""
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def image_of(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def upload(srv: serve.Server, data: bytes, query: str = "steps=5") -> tuple[int, dict]:
    status, _, body = request(srv, "POST", f"/api/project?{query}", data, {"X-Corgigan": "1"})
    return status, json.loads(body)


def wait_done(srv: serve.Server, job: str, timeout: float = 60) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = json.loads(request(srv, "GET", f"/api/job?id={job}")[2])
        if state["state"] in ("done", "error"):
            return state
        time.sleep(0.1)
    raise AssertionError(f"projection {job} did not finish in {timeout} s")


def test_info_and_images(server: serve.Server) -> None:
    status, kind, body = request(server, "GET", "/api/info")
    info = json.loads(body)
    assert status == 200 and kind == "application/json"
    assert info["resolution"] == RES and info["directions"][0]["name"] == "fluffy"
    assert info["limits"]["grid"] == 6 and info["limits"]["max_steps"] == 20 and info["feature_loss"]
    status, kind, body = request(server, "GET", "/api/image?seed=3&psi=0.7")
    assert status == 200 and kind == "image/png" and image_of(body).shape == (RES, RES, 3)
    same = request(server, "GET", "/api/image?seed=3&psi=0.7")[2]
    other = request(server, "GET", "/api/image?seed=3&psi=0.2")[2]
    moved = request(server, "GET", "/api/image?seed=3&psi=0.7&d0=3")[2]
    mixed = request(server, "GET", "/api/image?seed=3&psi=0.7&mix=9&cutoff=2")[2]
    assert np.array_equal(image_of(same), image_of(body))
    for changed in (other, moved, mixed):
        assert not np.array_equal(image_of(changed), image_of(body))
    status, _, body = request(server, "GET", "/api/grid?start=0&count=6&cols=3&psi=1")
    assert status == 200 and image_of(body).shape == (2 * RES, 3 * RES, 3)
    # A tile picked from the grid is drawn again as the same picture: one truncation (towards w_avg).
    tile = image_of(request(server, "GET", "/api/grid?start=3&count=1&cols=1&psi=0.5")[2]).astype(int)
    alone = image_of(request(server, "GET", "/api/image?seed=3&psi=0.5")[2]).astype(int)
    assert np.abs(tile - alone).max() <= 1
    # The page and its assets come from the package, with a policy that loads nothing from elsewhere.
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    conn.request("GET", "/")
    resp = conn.getresponse()
    page = resp.read().decode()
    assert "default-src 'none'" in resp.getheader("Content-Security-Policy")
    assert "http://" not in page and "https://" not in page and 'src="/app.js"' in page
    for asset in ("/app.js", "/app.css"):
        text = request(server, "GET", asset)[2].decode()
        assert "http://" not in text and "https://" not in text


@pytest.mark.parametrize(("path", "message"), [
    ("/api/grid?count=7", "count=7 is out of range"),
    ("/api/image?psi=abc", "not a number"),
    ("/api/image?psi=nan", "out of range"),
    ("/api/image?seed=-1", "out of range"),
    ("/api/image?d0=9", "out of range"),
    ("/api/image?latent=nope", "no longer kept"),
    ("/api/job?id=nope", "no such projection"),
    ("/nowhere", "no such page"),
])
def test_bad_requests_get_a_clear_json_error(server: serve.Server, path: str, message: str) -> None:
    status, kind, body = request(server, "GET", path)
    assert status in (400, 404) and kind == "application/json" and message in json.loads(body)["error"]


def test_uploads_are_bounded_and_checked(server: serve.Server) -> None:
    cases = [
        (b"just text, no photo", "not an image"),
        (photo_bytes(64, 64)[:300], "truncated"),
        (photo_bytes(500, 500, "JPEG"), "too large"),       # over max_upload_pixels
        (b"", "empty"),
    ]
    for data, why in cases:
        status, answer = upload(server, data)
        assert status == 400 and why in answer["error"], (why, answer)
    status, answer = upload(server, b"x" * (LIMITS.max_upload_bytes + 1))
    # The limit as written, not rounded to a whole MB ("at most 0 MB" for this 200,000-byte server).
    assert status == 413 and answer["error"] == "the photo is 0.2 MB; this server takes at most 0.191 MB"
    status, answer = upload(server, photo_bytes(40, 30), "steps=21")
    assert status == 400 and "steps=21 is out of range" in answer["error"]
    # Without the page's header (a form on another site), or addressed by another name: refused.
    status, _, body = request(server, "POST", "/api/project", photo_bytes(40, 30))
    assert status == 403 and "X-Corgigan" in json.loads(body)["error"]
    status, _, body = request(server, "GET", "/api/info", headers={"Host": "evil.example:80"})
    assert status == 403


def test_projection_over_http(server: serve.Server) -> None:
    status, answer = upload(server, photo_bytes(40, 30), "steps=6&space=w")
    assert status == 202
    state = wait_done(server, answer["job"])
    assert state["state"] == "done" and state["step"] == 6 and state["errors"]["mse"] > 0
    assert state["crop"]["crop"] == [5, 0, 35, 30]               # the centred square: no detector here
    assert image_of(request(server, "GET", f"/api/target?id={answer['latent']}")[2]).shape == (RES, RES, 3)
    status, _, body = request(server, "GET", f"/api/image?latent={answer['latent']}&psi=1")
    assert status == 200 and image_of(body).shape == (RES, RES, 3)
    with np.load(io.BytesIO(request(server, "GET", f"/api/latent?id={answer['latent']}")[2])) as z:
        assert z["ws"].shape == (server.explorer.G.num_ws, 16) and str(z["space"]) == "w"


def test_projections_queue_is_bounded(server: serve.Server, monkeypatch: pytest.MonkeyPatch) -> None:
    ex = server.explorer
    explorer = Explorer(ex.G, ex.D, ex.info, limits=Limits(max_jobs=1, max_latents=2))
    monkeypatch.setattr(explorer._queue, "put", lambda item: None)      # jobs stay queued
    first = explorer.submit(photo_bytes(40, 30), steps=3, space="w+")
    with pytest.raises(RefusedError, match="try again") as e:
        explorer.submit(photo_bytes(40, 30), steps=3, space="w+")
    assert e.value.kind == "busy" and explorer.job(first["job"])["state"] == "queued"
    # Over HTTP, the same refusal is a 503.
    srv = serve.start(explorer, "127.0.0.1", 0)
    try:
        status, answer = upload(srv, photo_bytes(40, 30), "steps=3")
    finally:
        srv.shutdown()
        srv.server_close()
    assert status == 503 and "try again" in answer["error"]


def test_fair_lock_serves_in_arrival_order() -> None:
    lock, order = FairLock(), []
    with lock:
        threads = [threading.Thread(target=lambda i=i: (lock.__enter__(), order.append(i), lock.__exit__()))
                   for i in range(4)]
        for t in threads:
            t.start()
            time.sleep(0.05)     # each waits before the next arrives
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3]


@pytest.mark.parametrize("query", ["d1=2", "d0=1&d7=1&dfluffy=-1"])
def test_unknown_directions_are_refused(server: serve.Server, query: str) -> None:
    status, kind, body = request(server, "GET", f"/api/image?seed=1&{query}")
    error = json.loads(body)["error"] if kind == "application/json" else ""
    assert status == 400, (status, kind)
    unknown = [k.split("=")[0] for k in query.split("&") if not k.startswith("d0=")]
    assert all(name in error for name in unknown) and "d0 (fluffy)" in error, error


@pytest.mark.parametrize(("host", "ok"), [
    ("localhost", True), ("LOCALHOST", True), ("Localhost:{port}", True), ("127.0.0.1:{port}", True),
    ("[::1]:{port}", True), ("127.0.0.2", True),
    ("evil-localhost", False), ("localhost.evil.com", False), ("xlocalhost", False),
    ("evil.example:80", False), ("localhost.evil.com:{port}", False), ("", False),
])
def test_host_names_are_checked_case_insensitively(server: serve.Server, host: str, ok: bool) -> None:
    header = host.format(port=server.server_address[1])
    status = request(server, "GET", "/api/info", headers={"Host": header})[0]
    assert status == (200 if ok else 403), header


# ----------------------------------------------------------------------------------------------------
# The connection: one answer per request read, bounded time and threads per connection


@pytest.fixture(scope="module")
def short_server(server: serve.Server) -> Iterator[serve.Server]:
    """A second server for the same model whose connections time out after 1 s, at most 4 served at once."""
    ex = server.explorer
    limits = dataclasses.replace(LIMITS, timeout=1.0, max_connections=4)
    srv = serve.start(Explorer(ex.G, ex.D, ex.info, ex.directions, limits), "127.0.0.1", 0)
    yield srv
    srv.shutdown()
    srv.server_close()


def raw_exchange(srv: serve.Server, data: bytes, wait: float) -> tuple[list[int], bool, float]:
    """Send raw bytes on one new connection, then read until the server hangs up or `wait` s have passed:
    (the status of every response read, whether the server closed the connection, seconds it took)."""
    t0 = time.monotonic()
    got, closed = b"", False
    with socket.create_connection(srv.server_address[:2], timeout=wait) as sock:
        if data:
            sock.sendall(data)
        while (left := t0 + wait - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            got += chunk
    # A response may follow the previous body without a line break: look for status lines anywhere.
    return [int(s) for s in re.findall(rb"HTTP/1\.[01] (\d{3}) ", got)], closed, time.monotonic() - t0


def smuggling(srv: serve.Server, request_line: str, framing: str) -> bytes:
    """`request_line` as a text/plain request (what a form on another site may send) whose body is a
    complete upload with the page's header: read as a request of its own, it would start a projection.
    `framing`: the outer request's body headers, `{n}` standing for the body's length."""
    host = f"127.0.0.1:{srv.server_address[1]}"
    photo = photo_bytes(40, 30)
    inner = (f"POST /api/project?steps=1 HTTP/1.1\r\nHost: {host}\r\nX-Corgigan: 1\r\n"
             f"Content-Length: {len(photo)}\r\n\r\n").encode() + photo
    return (f"{request_line}\r\nHost: {host}\r\nContent-Type: text/plain\r\n"
            f"{framing.format(n=len(inner))}\r\n\r\n").encode() + inner


@pytest.mark.parametrize(("request_line", "framing", "status"), [
    ("POST /api/project HTTP/1.1", "Content-Length: {n}", 403),     # refused: no X-Corgigan header
    ("POST /nowhere HTTP/1.1", "Content-Length: {n}", 404),
    ("GET /api/info HTTP/1.1", "Content-Length: {n}", 200),         # a body on a GET, which no route reads
    # Framed two ways: which length counts is a guess, so none is trusted.
    ("POST /api/project HTTP/1.1\r\nX-Corgigan: 1", "Content-Length: 0\r\nContent-Length: {n}", 400),
    ("POST /api/project HTTP/1.1\r\nX-Corgigan: 1", "Transfer-Encoding: gzip\r\nContent-Length: {n}", 411),
])
def test_an_unread_body_is_never_read_as_a_request(server: serve.Server, request_line: str, framing: str,
                                                   status: int) -> None:
    jobs = set(server.explorer.jobs)
    statuses, closed, _ = raw_exchange(server, smuggling(server, request_line, framing), wait=10)
    assert statuses == [status] and closed
    assert set(server.explorer.jobs) == jobs


def test_idle_connections_are_closed_after_the_timeout(short_server: serve.Server) -> None:
    timeout = short_server.explorer.limits.timeout
    statuses, closed, seconds = raw_exchange(short_server, b"", wait=timeout + 5)
    assert statuses == [] and closed and seconds >= 0.8 * timeout
    # Kept alive after an answer, then idle: closed too.
    head = b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    statuses, closed, seconds = raw_exchange(short_server, head, wait=timeout + 5)
    assert statuses == [200] and closed and seconds >= 0.8 * timeout


def test_a_body_shorter_than_its_length_times_out(short_server: serve.Server) -> None:
    timeout = short_server.explorer.limits.timeout
    jobs = set(short_server.explorer.jobs)
    head = b"POST /api/project HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Corgigan: 1\r\nContent-Length: 5000\r\n\r\n"
    statuses, closed, seconds = raw_exchange(short_server, head + b"x" * 100, wait=timeout + 5)
    assert statuses == [408] and closed and seconds >= 0.8 * timeout
    assert request(short_server, "GET", "/api/info")[0] == 200
    assert set(short_server.explorer.jobs) == jobs


def test_many_idle_connections_hold_few_threads(short_server: serve.Server) -> None:
    cap = short_server.explorer.limits.max_connections
    before = threading.active_count()
    socks: list[socket.socket] = []
    most = 0
    try:
        for _ in range(5 * cap):
            sock = socket.socket()
            sock.setblocking(False)      # connections past the cap wait in the server's backlog
            sock.connect_ex(short_server.server_address[:2])
            socks.append(sock)
        # Long enough for the first connections to time out and the server to take the next ones.
        end = time.monotonic() + 1.5 * short_server.explorer.limits.timeout
        while time.monotonic() < end:
            most = max(most, threading.active_count() - before)
            time.sleep(0.02)
    finally:
        for sock in socks:
            sock.close()
    assert 0 < most <= cap
    assert request(short_server, "GET", "/api/info")[0] == 200


def test_connections_past_the_cap_wait_then_get_a_503(short_server: serve.Server) -> None:
    lim = short_server.explorer.limits
    head = b"POST /api/project HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Corgigan: 1\r\nContent-Length: 1000\r\n\r\n"
    address = short_server.server_address[:2]
    busy = [socket.create_connection(address, timeout=5) for _ in range(lim.max_connections)]
    t0 = time.monotonic()
    try:
        for sock in busy:
            sock.sendall(head)
        late = socket.create_connection(address, timeout=5)
        late.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        late.setblocking(False)
        got = b""
        # Uploads that keep trickling hold every slot for longer than the timeout.
        while time.monotonic() - t0 < lim.timeout + 3 and b"\r\n\r\n" not in got:
            for sock in busy:
                sock.sendall(b"x")
            time.sleep(lim.timeout / 5)
            with contextlib.suppress(BlockingIOError):
                got += late.recv(65536)
        seconds = time.monotonic() - t0
        late.close()
    finally:
        for sock in busy:
            sock.close()
    assert got.startswith(b"HTTP/1.1 503 ") and b"Connection: close" in got
    assert seconds >= 0.8 * lim.timeout
    assert request(short_server, "GET", "/api/info")[0] == 200


@pytest.mark.parametrize("how", ["reset mid-headers", "close mid-body", "reset mid-body"])
def test_a_client_gone_mid_upload_logs_no_traceback(server: serve.Server, how: str,
                                                    caplog: pytest.LogCaptureFixture,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG, logger="corgigan.play.serve")
    head = b"POST /api/project HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Corgigan: 1\r\nContent-Length: 100000\r\n\r\n"
    before = threading.active_count()
    sock = socket.create_connection(server.server_address[:2], timeout=10)
    sock.sendall(head[:30] if "headers" in how else head + b"x" * 1000)
    time.sleep(0.3)                      # the server is waiting for the rest
    if how.startswith("reset"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    end = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < end:
        time.sleep(0.02)
    assert threading.active_count() <= before, "the connection's thread did not end"
    assert "Traceback" not in capfd.readouterr().err
    for record in caplog.records:
        assert record.exc_info is None and "\n" not in record.getMessage(), record.getMessage()


# ----------------------------------------------------------------------------------------------------
# The page in a real browser


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Debian chromium through /usr/bin/chromedriver (never a downloaded driver)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"no {' and '.join(missing)}: install Debian's chromium and chromium-driver "
                    "(`apt-get install chromium chromium-driver`; .ci/run does)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        pytest.skip(f"selenium is not installed ({e}); `make venv` installs requirements.txt")
    # Selenium Manager would look for (and download) a driver only when no path is given; paths are given,
    # and these keep it from fetching or reporting anything should it run at all.
    os.environ.setdefault("SE_OFFLINE", "true")
    os.environ.setdefault("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,1500", "--no-first-run", "--disable-extensions", "--disable-sync",
                "--disable-background-networking", "--disable-component-update", "--disable-default-apps"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(driver: object, script: str, timeout: float = 60) -> object:
    """Poll a JavaScript expression until it is truthy; return its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(script))


def shown_pixels(driver: object) -> np.ndarray:
    """The pixels of the image on screen (#view), as the browser decoded them."""
    return image_of(driver.find_element("id", "view").screenshot_as_png)


def test_page_in_headless_chromium(server: serve.Server, browser: object, tmp_path: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    driver = browser
    driver.get(server.url)
    wait_for(driver, "return document.getElementById('view').dataset.state === 'ready'")
    assert "psi=0.7" in driver.execute_script("return document.getElementById('view').dataset.query")
    wait_for(driver, "return document.getElementById('grid').dataset.state === 'ready'")
    before = shown_pixels(driver)

    # Move the truncation slider (keyboard, as a user would): the image must change.
    slider = driver.find_element("id", "psi")
    slider.click()
    for _ in range(14):
        slider.send_keys(Keys.ARROW_LEFT)
    psi = float(slider.get_attribute("value"))
    assert psi < 0.7
    wait_for(driver, f"const v = document.getElementById('view'); return v.dataset.state === 'ready' && "
             f"v.dataset.query.includes('psi={slider.get_attribute('value')}')")
    assert driver.find_element("id", "psi-value").text == f"{psi:.2f}"
    assert not np.array_equal(shown_pixels(driver), before)
    assert driver.find_element("id", "view-status").text.endswith("ms")
    assert driver.find_element("id", "download").get_attribute("href").startswith(server.url + "api/image?")

    # Upload a photo and get its projection shown.
    photo = tmp_path / "dog.png"
    photo.write_bytes(photo_bytes(40, 30))
    driver.find_element("id", "upload").send_keys(str(photo))
    steps = driver.find_element("id", "steps")
    steps.clear()
    steps.send_keys("6")
    driver.find_element("id", "project-btn").click()
    latent = wait_for(driver, "return document.getElementById('view').dataset.projection")
    status = driver.find_element("id", "project-status").text
    assert status.startswith("done: 6 steps") and "PSNR" in status, status
    assert f"latent={latent}" in driver.execute_script("return document.getElementById('view').dataset.query")
    assert driver.execute_script("return document.getElementById('target').naturalWidth") == RES
    assert driver.find_element("id", "error").is_displayed() is False
    # Then edit it: the direction slider changes the projected image.
    projected = shown_pixels(driver)
    fluffy = driver.find_element("id", "dir-0")
    fluffy.click()                      # the middle of the range; then a few steps right
    for _ in range(10):
        fluffy.send_keys(Keys.ARROW_RIGHT)
    wait_for(driver, "const v = document.getElementById('view'); return v.dataset.state === 'ready' && "
             "v.dataset.query.includes('d0=')")
    assert not np.array_equal(shown_pixels(driver), projected)
    driver.save_screenshot(str(tmp_path / "page.png"))

    # A file that is no photo: a clear message on the page.
    note = tmp_path / "notes.txt"
    note.write_text("this is not a photo")
    driver.find_element("id", "upload").send_keys(str(note))
    driver.find_element("id", "project-btn").click()
    message = wait_for(driver, "const e = document.getElementById('error'); "
                       "return !e.hidden && e.textContent")
    assert "not an image" in message
    assert driver.execute_script("return document.getElementById('view').dataset.state") == "ready"
