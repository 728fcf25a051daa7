"""Security allow-lists pinned exactly: the restricted unpickler's globals and serve's Host check.

A guard that lets one more name through passes every test that only tries obviously hostile inputs, so
these tests pin the lists themselves: the unpickler's allowed globals as an exact set, harmless-looking
globals outside it refused (through the reader and the `corgigan convert` CLI), and serve's answer to a
table of Host headers over real HTTP (names that merely contain "localhost" refused).
"""

from __future__ import annotations

import collections
import copyreg
import functools
import http.client
import json
import logging
import operator
import pickle
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from corgigan import cli
from corgigan.play import serve
from corgigan.play.explorer import Explorer
from corgigan.stylegan2 import configs, pickles
from tests.helpers import tiny_config

# The globals the two reference formats use (NOTES.md: checked on pickles the reference code wrote):
# persistence's reconstructor, torch's tensor/parameter/storage rebuilders, OrderedDict, EasyDict, the TF
# Network class, numpy dtype/ndarray and the scalar and array reconstructors under numpy 1.x and 2.x names,
# and builtins.set: protocol 3 (the reference's Python 3.6/3.7 default) pickles a set, such as every torch
# module's _non_persistent_buffers_set, as a call of builtins.set.
FORMAT_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch.storage", "_load_from_bytes"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),        # protocol-3 files: each module's _non_persistent_buffers_set
    ("dnnlib.util", "EasyDict"),
    ("dnnlib.tflib.network", "Network"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}

# Globals that look harmless next to those (attribute access, containers, partial application, an older
# tensor rebuilder, numpy constructors) and that a loosened allow-list might let in. Each is pickled by
# reference under the name given.
HARMLESS_LOOKING = {
    "builtins.getattr": getattr,
    "builtins.setattr": setattr,
    "builtins.dict": dict,
    "collections.defaultdict": collections.defaultdict,
    "functools.partial": functools.partial,
    "operator.attrgetter": operator.attrgetter,
    "copyreg._reconstructor": copyreg._reconstructor,
    "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
    "numpy.frombuffer": np.frombuffer,
}


def test_the_unpicklers_allowed_globals_are_exactly_the_formats_ones():
    assert set(pickles.ALLOWED_GLOBALS) == FORMAT_GLOBALS


@pytest.mark.parametrize("name", sorted(HARMLESS_LOOKING))
def test_a_harmless_looking_extra_global_is_refused(tmp_path, name):
    path = tmp_path / "extra.pkl"
    # The reference layout (a dict with G_ema) with one extra global where a value would be.
    path.write_bytes(pickle.dumps({"G_ema": collections.OrderedDict(), "extra": HARMLESS_LOOKING[name]},
                                  protocol=4))
    with pytest.raises(pickles.UnsafePickleError, match=f"global {name}[,: ]"):
        pickles.load_reference_pickle(path)


def test_convert_refuses_an_extra_global_in_one_line(tmp_path, caplog, capsys):
    # The same through the CLI: rc 2, one line naming the global, nothing written.
    path = tmp_path / "net.pkl"
    path.write_bytes(pickle.dumps({"G_ema": getattr}, protocol=4))
    with caplog.at_level(logging.ERROR):
        assert cli.main(["convert", str(path), "--out", str(tmp_path / "out.pt")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and "builtins.getattr" in errors[0], errors
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()


# ---------------------------------------------------------------------------------------------------------
# serve: the Host check of a loopback server (a guard against DNS rebinding)


@pytest.fixture(scope="module")
def server() -> Iterator[serve.Server]:
    """A real server on 127.0.0.1 (a free port) for a freshly built tiny generator (no training needed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    G, _ = configs.build_networks(configs.network_spec(tiny_config()))
    explorer = Explorer(G.eval().requires_grad_(False), None, {"path": "tiny.pt", "kimg": 0})
    srv = serve.start(explorer, "127.0.0.1", 0)
    yield srv
    srv.shutdown()
    srv.server_close()
    torch.set_num_threads(threads)


def _get_info(srv: serve.Server, host: str | None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=30)
    try:
        conn.putrequest("GET", "/api/info", skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


ACCEPTED = ["127.0.0.1", "127.0.0.1:8765", "127.5.6.7:80", "localhost", "localhost:8765", "LOCALHOST",
            "Localhost:8765", "[::1]", "[::1]:8765"]
REFUSED = [None, "", "evil-localhost", "evil-localhost:8765", "localhost.evil.com", "localhost.evil.com:8765",
           "xlocalhost", "localhostx", "evil.com", "evil.com:8765", "127.0.0.1.evil.com", "0.0.0.0:8765",
           "192.168.1.10:8765", "[::2]:8765", "local host", ":8765",
           # The port is what follows the last colon only; brackets are stripped, nothing else.
           "localhost:80:8765", "127.0.0.1X:8765", "X127.0.0.1", "[X::1]"]


@pytest.mark.parametrize("host", ACCEPTED)
def test_loopback_names_are_answered(server, host):
    status, body = _get_info(server, host)
    assert status == 200 and body["resolution"] == 8


@pytest.mark.parametrize("host", REFUSED)
def test_other_names_are_refused(server, host):
    status, body = _get_info(server, host)
    assert status == 403 and "only 127.0.0.1 or localhost" in body["error"]
