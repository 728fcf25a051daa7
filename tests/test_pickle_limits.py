"""What a network pickle (or a snapshot) may make the reader allocate: bounded by the file's own content.

Each hostile file is a few hundred kilobytes at most and describes a gigabyte or more: a one-element
storage viewed with stride 0 at a huge size, one storage cut into thousands of views, one payload or one
array's bytes rebuilt thousands of times. `corgigan convert` runs in a subprocess that reports how far its
peak memory grew during the command, so the bound is measured, not assumed.
"""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from corgigan.stylegan2.snapshot import save_snapshot
from tests import pickle_writer as pw
from tests.helpers import fake_state, tiny_config

GIB_FLOATS = 2**28                  # float32 elements in 1 GiB
STORAGE = 2**16                     # elements of the storage the reuse cases share (256 KiB)
REUSE = 4096                        # references to it: 4096 x 256 KiB = 1 GiB
GREW_MB = 200                       # what the command's peak memory may grow by

# Runs the CLI and prints how much its peak resident memory grew (imports are done before the baseline).
_MEASURE = """
import json, resource, sys
import torch
from corgigan import cli
from corgigan.stylegan2 import importer
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rc = cli.main(sys.argv[1:])
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps({"rc": rc, "grew_mb": grew}))
"""


def _storage_payload(values: torch.Tensor) -> bytes:
    """A storage's nested payload exactly as torch pickles it (its legacy torch.save bytes)."""
    buf = io.BytesIO()
    torch.save(values._typed_storage(), buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


class _Tensor:
    """Pickles as torch's own tensor rebuild over `storage` with any offset, size and stride."""

    def __init__(self, storage: object, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self) -> tuple:
        return torch._utils._rebuild_tensor_v2, self.args


class _Storage:
    """Pickles as torch.storage._load_from_bytes(payload): distinct objects may share one payload."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __reduce__(self) -> tuple:
        return torch.storage._load_from_bytes, (self.payload,)


class _Array:
    """Pickles as numpy reduces an array, with its data bytes given (so one bytes object can be shared)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple:
        function, args, _ = np.zeros(1, np.float32).__reduce__()
        return function, args, (1, (len(self.data) // 4,), np.dtype(np.float32), False, self.data)


def _stride_zero(path: Path) -> Path:
    one = torch.zeros(1)._typed_storage()
    return pw.write(path, {"G_ema": _Tensor(one, 0, (GIB_FLOATS,), (0,))})


def _views_of_one_storage(path: Path) -> Path:
    shared = torch.zeros(STORAGE)._typed_storage()      # pickled once, then referenced by the memo
    return pw.write(path, {"G_ema": [_Tensor(shared, 1, (STORAGE - 1,), (1,)) for _ in range(REUSE)]})


def _one_payload_loaded_again_and_again(path: Path) -> Path:
    payload = _storage_payload(torch.zeros(STORAGE))
    tensors = [_Tensor(_Storage(payload), 0, (STORAGE,), (1,)) for _ in range(REUSE)]
    return pw.write(path, {"G_ema": tensors})


def _one_array_built_again_and_again(path: Path) -> Path:
    data = np.zeros(STORAGE, np.float32).tobytes()
    return pw.write(path, {"G_ema": [_Array(data) for _ in range(REUSE)]})


class _DeclaresStorage(pickle.Pickler):
    """Writes the main pickle of a legacy storage payload: the persistent id torch writes for a storage,
    with any declared element count."""

    def __init__(self, file: io.BytesIO, numel: int) -> None:
        super().__init__(file, protocol=2)
        self.numel = numel

    def persistent_id(self, obj: object) -> tuple | None:
        if obj is not _DeclaresStorage:
            return None
        return ("storage", torch.FloatStorage, "0", "cpu", self.numel, None)


def _storage_declared_far_beyond_its_bytes(path: Path) -> Path:
    # torch's layout (magic number, protocol, system info, the storage's persistent id, its keys, then
    # each storage's element count and bytes) holding 16 bytes while declaring 1 GiB; the keys list is
    # left empty so torch would not even read (and check) the bytes, only allocate the declared size.
    real = _storage_payload(torch.zeros(4))
    buf = io.BytesIO()
    magic_protocol_sysinfo = io.BytesIO(real)
    for _ in range(3):
        pickle.load(magic_protocol_sysinfo)
    buf.write(real[:magic_protocol_sysinfo.tell()])
    _DeclaresStorage(buf, GIB_FLOATS).dump(_DeclaresStorage)
    pickle.dump([], buf, protocol=2)
    buf.write((4).to_bytes(8, "little") + bytes(16))
    return pw.write(path, {"G_ema": _Tensor(_Storage(buf.getvalue()), 0, (GIB_FLOATS,), (1,))})


CASES = {
    "stride-0 view of one value": (_stride_zero, "refused: a tensor of size [268435456]"),
    "thousands of views of one storage": (_views_of_one_storage, "refused: a tensor of size [65535]"),
    # Read once and shared, this file costs nothing; it then fails as what it is: not a network.
    "one payload loaded thousands of times": (_one_payload_loaded_again_and_again,
                                              "G_ema is a list, not a persistent network"),
    "one array's bytes built thousands of times": (_one_array_built_again_and_again,
                                                   "refused: a numpy array of shape [65536]"),
    "a storage payload declaring far more than it holds": (
        _storage_declared_far_beyond_its_bytes, "refused: a tensor storage declares 1,073,741,824 bytes"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_pickles_stay_within_their_size(tmp_path, case):
    make, message = CASES[case]
    path = make(tmp_path / "hostile.pkl")
    assert path.stat().st_size < 2 * STORAGE * 4 + 200 * REUSE       # a few hundred KiB describing >= 1 GiB
    out = tmp_path / "out.pt"
    proc = subprocess.run([sys.executable, "-c", _MEASURE, "convert", str(path), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 2, proc.stderr
    assert result["grew_mb"] < GREW_MB, (case, result)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{path}: " in lines[0] and message in lines[0], lines[0]
    assert not out.exists()



def test_a_small_snapshot_describing_huge_networks_is_refused_before_they_are_built(tmp_path):
    # Every size within configs.SIZE_LIMITS, together a G of 0.5 GB and a D of 0.6 GB that a file of a
    # few KB cannot hold weights for. 4096 px and 4096 channels would ask for tens of GB: too much for a
    # test machine should the check ever be lost.
    state = fake_state(tiny_config())
    for kwargs in (state["config"]["G_kwargs"]["synthesis_kwargs"], state["config"]["D_kwargs"]):
        kwargs.update(channel_base=1 << 20, channel_max=1024)
    state["config"]["resolution"] = state["dataset"]["resolution"] = 512
    path = tmp_path / "snapshot-000000008.pt"
    save_snapshot(path, state)
    assert path.stat().st_size < 200_000
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _MEASURE, "generate", "--checkpoint", str(path), "--out",
                           str(out), "--seeds", "0", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 2, proc.stderr
    assert result["grew_mb"] < GREW_MB, result
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{path}: refused: its stored settings describe networks of " in lines[0], lines[0]
    assert not out.exists()
