"""Instagram source, offline: instaloader's real Post/NodeIterator/rate-control code against a local server.

A ThreadingHTTPServer on 127.0.0.1 (TLS with a throw-away certificate, because instaloader only speaks
https) plays Instagram: it answers the hashtag GraphQL query with pages of GraphQL-like post nodes and
serves real JPEG bytes for their image URLs. Faults (429, 401/403, 404, dropped connections) are
scripted per URL path. The only stand-in is the test context's `graphql_query`, which sends the
query to this server instead of www.instagram.com through instaloader's own `get_json`.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import ipaddress
import json
import logging
import pickle
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from instaloader import InstaloaderContext
from PIL import Image

from corgigan.data.sources.instagram import Cache, CappedRateController, InstagramSource, RateLimitStop
from corgigan.errors import StageError
from corgigan.params import InstagramParams

ENV = "CORGIGAN_IG_SESSION"
T0 = 1_600_000_000          # 2020-09-13 12:26:40 UTC


# ---------------------------------------------------------------- the local "Instagram"

@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class FakeInstagram(ThreadingHTTPServer):
    """Hashtag pages and images over https, with scripted faults and hit counts."""

    daemon_threads = True

    def __init__(self, tls: tuple[Path, Path]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*map(str, tls))
        self.socket = ctx.wrap_socket(self.socket, server_side=True)
        self.host = f"127.0.0.1:{self.server_address[1]}"
        self.pages: dict[str, list[list[dict[str, Any]]]] = {}     # tag -> pages of post nodes
        self.images: dict[str, bytes] = {}                          # image name -> JPEG bytes
        self.faults: dict[str, list[str]] = {}                      # path -> actions ("ok", "drop",
        #                                                             "429:<retry-after>", "401"...) in turn
        self.always: dict[str, str] = {}                            # path -> action for every request
        self.requests: Counter[str] = Counter()                     # every request, by path
        self.served: Counter[str] = Counter()                       # 200 answers, by path
        self.lock = threading.Lock()

    def url(self, name: str) -> str:
        return f"https://{self.host}/img/{name}.jpg"

    def add_image(self, name: str, seed: int) -> str:
        """Serve a real JPEG under /img/<name>.jpg; returns its URL."""
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)).save(buf, "JPEG")
        self.images[name] = buf.getvalue()
        return self.url(name)

    def action(self, path: str) -> str | None:
        with self.lock:
            self.requests[path] += 1
            queue = self.faults.get(path)
            if queue:
                return queue.pop(0)
            return self.always.get(path)

    def total_requests(self) -> int:
        return sum(self.requests.values())


class _Handler(BaseHTTPRequestHandler):
    server: FakeInstagram

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        action = self.server.action(parts.path)
        if action == "ok":
            action = None
        if action == "drop":
            self.close_connection = True      # no answer at all: the client sees the connection drop
            return
        if action is not None:
            status, _, retry_after = action.partition(":")
            self.send_response(int(status))
            if retry_after:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"status": "fail", "message": "scripted"}')
            return
        if parts.path == "/graphql/query":
            self._send(200, "application/json", json.dumps(self._page(parse_qs(parts.query))).encode())
        elif parts.path.startswith("/img/") and parts.path[5:-4] in self.server.images:
            self._send(200, "image/jpeg", self.server.images[parts.path[5:-4]])
        else:
            self._send(404, "text/plain", b"not found")
            return
        with self.server.lock:
            self.server.served[parts.path] += 1

    def _page(self, query: dict[str, list[str]]) -> dict[str, Any]:
        variables = json.loads(query["variables"][0])
        pages = self.server.pages[variables["tag_name"]]
        index = int(variables.get("after") or 0)
        has_next = index + 1 < len(pages)
        media = {"count": sum(map(len, pages)), "edges": [{"node": n} for n in pages[index]],
                 "page_info": {"has_next_page": has_next, "end_cursor": str(index + 1) if has_next else None}}
        return {"data": {"hashtag": {"name": variables["tag_name"], "edge_hashtag_to_media": media}},
                "status": "ok"}

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class LocalContext(InstaloaderContext):
    """instaloader's context, with GraphQL queries sent to the local server instead of instagram.com."""

    def __init__(self, host: str, **kwargs: Any) -> None:
        kwargs["sleep"] = False          # no random pauses between requests in tests
        super().__init__(**kwargs)
        self.host = host

    def graphql_query(self, query_hash: str, variables: dict[str, Any],
                      referer: str | None = None) -> dict[str, Any]:
        params = {"query_hash": query_hash, "variables": json.dumps(variables, separators=(",", ":"))}
        return self.get_json("graphql/query", params, host=self.host)


@pytest.fixture
def server(tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeInstagram]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_files[0]))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    srv = FakeInstagram(tls_files)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture
def session_file(tmp_path: Path) -> Path:
    """A session file as `instaloader --login` writes it: a pickled dict of cookies."""
    path = tmp_path / "session-tester"
    path.write_bytes(pickle.dumps({"sessionid": "s3cr3t", "csrftoken": "tok", "ds_user_id": "4242",
                                   "mid": "m"}))
    return path


# ---------------------------------------------------------------- post nodes

def image_node(server: FakeInstagram, code: str, seed: int = 0) -> dict[str, Any]:
    return {"__typename": "GraphImage", "shortcode": code, "id": str(1000 + seed), "is_video": False,
            "display_url": server.add_image(code, seed), "owner": {"id": f"{500 + seed}"},
            "taken_at_timestamp": T0 + seed, "edge_liked_by": {"count": 10 + seed},
            "edge_media_preview_like": {"count": 10 + seed}}


def video_node(server: FakeInstagram, code: str) -> dict[str, Any]:
    return {"__typename": "GraphVideo", "shortcode": code, "id": "1", "is_video": True,
            "display_url": server.url(f"{code}_thumb"), "video_url": server.url(f"{code}_video"),
            "owner": {"id": "7"}, "taken_at_timestamp": T0, "edge_media_preview_like": {"count": 1}}


def sidecar_node(server: FakeInstagram, code: str, kinds: str) -> dict[str, Any]:
    """A sidecar whose children are images ('i') and videos ('v'), in order."""
    children = []
    for i, kind in enumerate(kinds):
        if kind == "i":
            children.append({"__typename": "GraphImage", "is_video": False,
                             "display_url": server.add_image(f"{code}-{i}", 100 + i)})
        else:
            children.append({"__typename": "GraphVideo", "is_video": True,
                             "display_url": server.url(f"{code}-{i}_thumb"),
                             "video_url": server.url(f"{code}-{i}_video")})
    return {"__typename": "GraphSidecar", "shortcode": code, "id": "2", "is_video": False,
            "display_url": server.url(f"{code}-0"), "owner": {"id": "8"}, "taken_at_timestamp": T0,
            "edge_media_preview_like": {"count": 3},
            "edge_sidecar_to_children": {"edges": [{"node": c} for c in children]}}


def make_source(server: FakeInstagram, cache: Path, session: Path | None, *,
                tags: tuple[str, ...] = ("corgi",), max_posts: int = 100, max_wait_s: float = 300.0,
                sleeps: list[float] | None = None) -> InstagramSource:
    p = InstagramParams(hashtags=list(tags), max_posts=max_posts, max_wait_s=max_wait_s, session_env=ENV)
    return InstagramSource(p, cache, context_factory=functools.partial(LocalContext, server.host),
                           sleep=(sleeps if sleeps is not None else []).append,
                           environ={ENV: str(session)} if session is not None else {})


def img_path(code: str) -> str:
    return f"/img/{code}.jpg"


# ---------------------------------------------------------------- tests

def test_downloads_images_and_yields_them_sorted(server, session_file, tmp_path):
    nodes = [image_node(server, code, seed) for seed, code in enumerate(["Cb", "Aa", "Ba", "aa"])]
    server.pages["corgi"] = [nodes[:3], nodes[3:]]
    items = list(make_source(server, tmp_path / "cache", session_file).items())

    assert [it.source_id for it in items] == ["Aa_0", "Ba_0", "Cb_0", "aa_0"]
    by_id = {it.source_id: it for it in items}
    first = by_id["Cb_0"]
    assert first.data == server.images["Cb"]
    assert first.url == server.url("Cb")
    assert first.owner == "500"
    assert first.timestamp == dt.datetime.fromtimestamp(T0, dt.UTC)
    assert first.likes == 10
    assert by_id["aa_0"].data == server.images["aa"]       # case-sensitive shortcodes kept apart
    assert all(server.served[img_path(c)] == 1 for c in ["Cb", "Aa", "Ba", "aa"])
    assert server.served["/graphql/query"] == 2            # both pages listed


def test_videos_skipped_and_sidecars_expanded(server, session_file, tmp_path, caplog):
    server.pages["corgi"] = [[video_node(server, "Vid"), sidecar_node(server, "Side", "ivi"),
                              image_node(server, "Img", 5)]]
    with caplog.at_level(logging.INFO, logger="corgigan.data.sources.instagram"):
        items = list(make_source(server, tmp_path / "cache", session_file).items())

    assert [it.source_id for it in items] == ["Img_0", "Side_0", "Side_2"]
    assert items[1].data == server.images["Side-0"] and items[2].data == server.images["Side-2"]
    assert items[1].owner == "8" and items[1].likes == 3
    assert not any("video" in path or "thumb" in path for path in server.requests)
    assert "2 videos skipped" in caplog.text


def test_post_in_two_hashtags_is_stored_once(server, session_file, tmp_path):
    shared = image_node(server, "Both", 1)
    server.pages["corgi"] = [[image_node(server, "C1", 2), shared]]
    server.pages["dogs"] = [[shared, image_node(server, "D1", 3)]]
    items = list(make_source(server, tmp_path / "cache", session_file, tags=("corgi", "Dogs")).items())

    assert [it.source_id for it in items] == ["Both_0", "C1_0", "D1_0"]
    assert server.served[img_path("Both")] == 1


def test_max_posts_per_hashtag_and_raising_it_resumes(server, session_file, tmp_path):
    codes = [f"P{i}" for i in range(5)]
    nodes = [image_node(server, c, i) for i, c in enumerate(codes)]
    server.pages["corgi"] = [nodes[:2], nodes[2:4], nodes[4:]]
    cache = tmp_path / "cache"

    items = list(make_source(server, cache, session_file, max_posts=3).items())
    assert [it.source_id for it in items] == ["P0_0", "P1_0", "P2_0"]
    assert server.requests[img_path("P3")] == 0

    items = list(make_source(server, cache, session_file, max_posts=5).items())
    assert [it.source_id for it in items] == [f"{c}_0" for c in codes]
    assert all(server.served[img_path(c)] == 1 for c in codes)
    # A smaller max_posts afterwards selects from the cache without any request.
    before = server.total_requests()
    assert len(list(make_source(server, cache, session_file, max_posts=2).items())) == 2
    assert server.total_requests() == before


def test_interrupted_run_resumes_without_redownload(server, session_file, tmp_path):
    codes = [f"R{i}" for i in range(7)]
    nodes = [image_node(server, c, i) for i, c in enumerate(codes)]
    nodes[2] = sidecar_node(server, "R2", "ii")
    nodes[4] = sidecar_node(server, "R4", "ii")
    server.pages["corgi"] = [nodes[:3], nodes[3:6], nodes[6:]]
    cache = tmp_path / "cache"
    server.always[img_path("R4-1")] = "drop"      # the network goes away midway through a sidecar

    sleeps: list[float] = []
    with pytest.raises(StageError, match=r"failed 4 times .*dvc repro.*nothing downloaded is lost"):
        list(make_source(server, cache, session_file, sleeps=sleeps).items())
    assert server.requests[img_path("R4-1")] == 4           # bounded retries
    assert sleeps and max(sleeps) < 30                       # short pauses between them
    assert Cache(cache).read_listing("corgi") == ["R0", "R1", "R2", "R3"]

    del server.always[img_path("R4-1")]
    queries = server.served["/graphql/query"]
    items = list(make_source(server, cache, session_file).items())
    # Thawed: instaloader's constructor asks for the first page, then the iteration goes on with the
    # third; the second page comes from the frozen state.
    assert server.served["/graphql/query"] - queries == 2
    expected = sorted(["R0_0", "R1_0", "R2_0", "R2_1", "R3_0", "R4_0", "R4_1", "R5_0", "R6_0"])
    assert [it.source_id for it in items] == expected
    served_images = {p: n for p, n in server.served.items() if p.startswith("/img/")}
    assert set(served_images.values()) == {1}, served_images   # nothing downloaded twice
    assert len(served_images) == len(expected)
    assert Cache(cache).read_listing("corgi") == codes                  # each post listed once

    # A finished scrape asks Instagram nothing and yields the same bytes.
    before = server.total_requests()
    again = list(make_source(server, cache, session_file).items())
    assert server.total_requests() == before
    assert [(it.source_id, it.data) for it in again] == [(it.source_id, it.data) for it in items]


def test_api_failure_midway_resumes_from_frozen_iterator(server, session_file, tmp_path):
    nodes = [image_node(server, f"F{i}", i) for i in range(6)]
    server.pages["corgi"] = [nodes[:3], nodes[3:]]
    cache = tmp_path / "cache"
    # First page answers, the second is refused: the session expired.
    server.faults["/graphql/query"] = ["ok", "401"]

    with pytest.raises(StageError, match=r"no longer accepts the login session.*instaloader --login"):
        list(make_source(server, cache, session_file).items())
    assert Cache(cache).read_listing("corgi") == ["F0", "F1", "F2"]

    queries = server.served["/graphql/query"]
    items = list(make_source(server, cache, session_file).items())
    assert [it.source_id for it in items] == [f"F{i}_0" for i in range(6)]
    assert server.served["/graphql/query"] - queries == 2     # first page (constructor), then the second
    assert all(server.served[img_path(f"F{i}")] == 1 for i in range(6))


def test_image_429_is_waited_out(server, session_file, tmp_path):
    server.pages["corgi"] = [[image_node(server, "W", 1)]]
    server.faults[img_path("W")] = ["429:7"]
    sleeps: list[float] = []
    items = list(make_source(server, tmp_path / "cache", session_file, sleeps=sleeps).items())
    assert [it.source_id for it in items] == ["W_0"]
    assert sleeps == [7.0]


def test_image_429_longer_than_max_wait_stops_and_next_run_resumes(server, session_file, tmp_path):
    nodes = [image_node(server, f"L{i}", i) for i in range(3)]
    server.pages["corgi"] = [nodes]
    server.faults[img_path("L1")] = ["429:3600"]
    cache = tmp_path / "cache"
    sleeps: list[float] = []

    with pytest.raises(StageError) as err:
        list(make_source(server, cache, session_file, max_wait_s=300, sleeps=sleeps).items())
    assert str(err.value).startswith("Instagram rate limit: waited up to 300 s; run `dvc repro` again "
                                     "later to resume; nothing downloaded is lost")
    assert sleeps == []                                       # never slept the hour

    items = list(make_source(server, cache, session_file, max_wait_s=300).items())
    assert [it.source_id for it in items] == ["L0_0", "L1_0", "L2_0"]
    assert server.served[img_path("L0")] == 1


def test_api_429_uses_instaloaders_backoff_capped(server, session_file, tmp_path):
    server.pages["corgi"] = [[image_node(server, "Q", 1)]]
    server.faults["/graphql/query"] = ["429"]
    with pytest.raises(StageError, match=r"^Instagram rate limit: waited up to 300 s"):
        list(make_source(server, tmp_path / "a", session_file, max_wait_s=300).items())

    # With a longer allowance the ~11 minute wait instaloader computes is taken (through our sleep).
    server.faults["/graphql/query"] = ["429"]
    sleeps: list[float] = []
    items = list(make_source(server, tmp_path / "b", session_file, max_wait_s=3600, sleeps=sleeps).items())
    assert [it.source_id for it in items] == ["Q_0"]
    assert sleeps and 600 < max(sleeps) <= 3600


def test_capped_rate_controller():
    slept: list[float] = []
    ctrl = CappedRateController(InstaloaderContext(sleep=False, quiet=True), 10.0, slept.append)
    ctrl.sleep(4.0)
    with pytest.raises(RateLimitStop, match="waited up to 10 s"):
        ctrl.sleep(10.5)
    assert slept == [4.0]


@pytest.mark.parametrize("status", ["401", "403"])
def test_image_refused_says_refresh_session(server, session_file, tmp_path, status):
    server.pages["corgi"] = [[image_node(server, "X", 1)]]
    server.always[img_path("X")] = status
    with pytest.raises(StageError, match=rf"HTTP {status}.*instaloader --login.*{ENV}"):
        list(make_source(server, tmp_path / "cache", session_file).items())
    assert server.requests[img_path("X")] == 1               # no point in retrying


def test_dropped_connection_is_retried(server, session_file, tmp_path):
    server.pages["corgi"] = [[image_node(server, "D", 1)]]
    server.faults[img_path("D")] = ["drop", "drop"]
    items = list(make_source(server, tmp_path / "cache", session_file).items())
    assert [it.data for it in items] == [server.images["D"]]
    assert server.requests[img_path("D")] == 3


def test_api_dropped_connection_gives_clear_error(server, session_file, tmp_path):
    server.pages["corgi"] = [[image_node(server, "N", 1)]]
    server.always["/graphql/query"] = "drop"
    with pytest.raises(StageError, match=r"failed after 3 attempts.*network.*dvc repro"):
        list(make_source(server, tmp_path / "cache", session_file).items())


def test_gone_image_is_skipped_and_recorded(server, session_file, tmp_path, caplog):
    node = image_node(server, "G", 1)
    del server.images["G"]                                    # deleted since it was listed
    server.pages["corgi"] = [[node, image_node(server, "H", 2)]]
    with caplog.at_level(logging.INFO, logger="corgigan.data.sources.instagram"):
        items = list(make_source(server, tmp_path / "cache", session_file).items())
    assert [it.source_id for it in items] == ["H_0"]
    assert "1 images gone" in caplog.text
    assert Cache(tmp_path / "cache").read_post("G")["media"][0]["kind"] == "gone"


def test_missing_session_variable(server, tmp_path):
    server.pages["corgi"] = [[image_node(server, "S", 1)]]
    with pytest.raises(StageError, match=rf"{ENV} is not set.*instaloader --login.*export {ENV}="):
        list(make_source(server, tmp_path / "cache", None).items())
    assert server.total_requests() == 0


def test_missing_session_file(server, tmp_path):
    with pytest.raises(StageError, match=r"does not exist.*instaloader --login"):
        list(make_source(server, tmp_path / "cache", tmp_path / "nope").items())


def test_not_a_session_file(server, tmp_path):
    bad = tmp_path / "session"
    bad.write_text("hello")
    with pytest.raises(StageError, match=r"not an instaloader session file.*instaloader --login"):
        list(make_source(server, tmp_path / "cache", bad).items())


class _Payload:
    """Unpickling this runs code: it opens (creates) `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_session_file_with_a_payload_is_refused_without_running_it(server, tmp_path, protocol):
    marker = tmp_path / "ran"
    cookies = {"sessionid": "s3cr3t", "csrftoken": "tok", "ds_user_id": "4242", "mid": _Payload(marker)}
    bad = tmp_path / "session-evil"
    bad.write_bytes(pickle.dumps(cookies, protocol=protocol))
    server.pages["corgi"] = [[image_node(server, "S", 1)]]
    with pytest.raises(StageError, match=r"not an instaloader session file.*open.*instaloader --login"):
        list(make_source(server, tmp_path / "cache", bad).items())
    assert not marker.exists()
    assert server.total_requests() == 0


def test_session_file_of_another_shape_is_refused(server, tmp_path):
    bad = tmp_path / "session-list"
    bad.write_bytes(pickle.dumps(["sessionid", "csrftoken"]))
    with pytest.raises(StageError, match=r"not an instaloader session file \(it holds a list"):
        list(make_source(server, tmp_path / "cache", bad).items())
    bad.write_bytes(pickle.dumps({"sessionid": "s", "csrftoken": 7}))
    with pytest.raises(StageError, match=r"not an instaloader session file \(cookie 'csrftoken'"):
        list(make_source(server, tmp_path / "cache", bad).items())


def test_session_file_written_by_instaloader_logs_in(server, tmp_path):
    # instaloader's own writer (what `instaloader --login` ends with), not a hand-made pickle.
    context = InstaloaderContext(quiet=True)
    context.load_session("tester", {"sessionid": "s3cr3t", "csrftoken": "tok", "ds_user_id": "4242"})
    path = tmp_path / "session-tester"
    with path.open("wb") as f:
        context.save_session_to_file(f)
    server.pages["corgi"] = [[image_node(server, "S", 1)]]
    items = list(make_source(server, tmp_path / "cache", path).items())
    assert [it.source_id for it in items] == ["S_0"]


def test_hashtag_without_login_is_refused_before_any_request(server, tmp_path):
    # An anonymous cookie jar (empty sessionid): Instagram lists hashtags only for logged-in users.
    anonymous = tmp_path / "session-anon"
    anonymous.write_bytes(pickle.dumps({"sessionid": "", "csrftoken": "", "ds_user_id": "", "mid": ""}))
    server.pages["corgi"] = [[image_node(server, "S", 1)]]
    with pytest.raises(StageError, match=r"holds no login.*instaloader --login"):
        list(make_source(server, tmp_path / "cache", anonymous).items())
    assert server.total_requests() == 0


def test_bad_hashtag_name(server, session_file, tmp_path):
    with pytest.raises(StageError, match=r"'#corgi' is not a hashtag name"):
        make_source(server, tmp_path / "cache", session_file, tags=("#corgi",))


def test_torn_listing_line_is_dropped(tmp_path):
    cache = Cache(tmp_path)
    cache.append_listing("corgi", "A1")
    with (tmp_path / "hashtags" / "corgi.posts").open("a") as f:
        f.write("B2")                                         # a run stopped mid-write
    assert cache.read_listing("corgi") == ["A1"]
    cache.append_listing("corgi", "C3")
    assert cache.read_listing("corgi") == ["A1", "C3"]
