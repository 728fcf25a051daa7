"""Forged pieces of the network pickle formats: each refused with its own line, each legal variant read right.

Every file is written the way the formats' writers write them (numpy's and torch's own reductions,
torch_utils.persistence's meta dict, plain pickle) with one piece changed; the messages are the lines a user
reads, so they are compared whole.
"""

from __future__ import annotations

import io
import logging
import pickle
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from corgigan.stylegan2 import pickles
from tests import pickle_writer as pw


class Reduced:
    """Pickles as `function(*args)`, then a BUILD of `state` when one is given (as numpy and torch do)."""

    def __init__(self, function: Any, args: tuple, state: Any = None) -> None:
        self.function, self.args, self.state = function, args, state

    def __reduce__(self) -> tuple:
        return (self.function, self.args) if self.state is None else (self.function, self.args, self.state)


_RECONSTRUCT, _PLACEHOLDER, _STATE = np.zeros(2, np.float32).__reduce__()   # numpy's own reduction
_DATA = _STATE[4]   # two float32 zeros, as raw bytes
_SCALAR, (_F4, _F4_BYTES) = np.float32(1.5).__reduce__()   # numpy's scalar(dtype, raw bytes)


def _dtype(state: Any, code: str = "f4") -> Reduced:
    """A numpy dtype as numpy reduces one, with `state` as its BUILD state."""
    return Reduced(np.dtype, (code, False, True), state)


def _array(state: tuple) -> Reduced:
    return Reduced(_RECONSTRUCT, _PLACEHOLDER, state)


def _meta(**changes: Any) -> dict:
    """torch_utils.persistence's meta for one object, changed by `changes`."""
    return {"type": "class", "version": 6, "module_src": pw.MODULE_SRC, "class_name": "Layer", "state": {},
            **changes}


def _persistent(state: dict | None = None, **changes: Any) -> Reduced:
    return Reduced(pw._reconstruct_persistent_obj, (_meta(state=state or {}, **changes),))


def _read(tmp_path: Path, obj: Any) -> Any:
    return pickles.read_pickle(pw.write(tmp_path / "forged.pkl", {"G_ema": obj}))["G_ema"]


_META = "a persistent object's meta is not {type: 'class', class_name, state, ...}"
_HOOKS = (torch.arange(3.0), True)

REFUSED = {
    "a global beyond the formats": (
        Reduced(logging.getLogger, ("x",)), pickles.UnsafePickleError,
        "refused: the pickle references the global logging.getLogger, which is not part of the StyleGAN2 "
        "network pickle formats (nothing of the file was run)"),
    # numpy scalars: scalar(dtype, the value's raw bytes).
    "scalar of a dtype name": (Reduced(_SCALAR, ("f4", _F4_BYTES)), pickles.UnsafePickleError,
                               "a numpy scalar without a numeric dtype and raw bytes"),
    "scalar of text": (Reduced(_SCALAR, (_F4, "abcd")), pickles.UnsafePickleError,
                       "a numpy scalar without a numeric dtype and raw bytes"),
    "scalar of three bytes": (Reduced(_SCALAR, (_F4, b"abc")), pickles.PickleError,
                              "a numpy float32 scalar holds 3 bytes"),
    "scalar without its bytes": (Reduced(_SCALAR, (_F4,)), pickles.PickleError,
                                 "a numpy float32 scalar holds 0 bytes"),
    # Pieces that only make sense inside an array or a tensor, found on their own.
    "array never given its state": (Reduced(_RECONSTRUCT, _PLACEHOLDER), pickles.PickleError,
                                    "a numpy array without its data"),
    "a dtype on its own": (np.dtype("f4"), pickles.PickleError, "a stray Dtype outside a tensor or array"),
    "numpy.ndarray on its own": (np.ndarray, pickles.PickleError,
                                 "a stray NDArrayType outside a tensor or array"),
    # numpy arrays: the BUILD state (version, shape, dtype, fortran, data), one field wrong at a time.
    "array state of four fields": (_array(_STATE[:4]), pickles.UnsafePickleError,
                                   "numpy array state is not (version, shape, dtype, fortran, data)"),
    "array state as a list": (_array(list(_STATE)), pickles.UnsafePickleError,
                              "numpy array state is not (version, shape, dtype, fortran, data)"),
    "array dtype as a string": (_array((1, (2,), "<f4", False, _DATA)), pickles.UnsafePickleError,
                                "numpy array state without a numpy dtype"),
    "array shape of strings": (_array((1, ("2",), _STATE[2], False, _DATA)), pickles.UnsafePickleError,
                               "numpy array shape is not a tuple of non-negative integers: ('2',)"),
    "array data as a list": (_array((1, (2,), _STATE[2], False, [0, 0])), pickles.UnsafePickleError,
                             "numpy array data is a list, not raw bytes (object arrays are refused)"),
    "array data one byte short": (_array((1, (2,), _STATE[2], False, _DATA[:7])), pickles.PickleError,
                                  "numpy array of shape [2] and dtype float32 holds 7 bytes"),
    "array of another type": (Reduced(_RECONSTRUCT, (3, *_PLACEHOLDER[1:]), _STATE),
                              pickles.UnsafePickleError,
                              "numpy array of a subclass: only plain numpy.ndarray is read"),
    # numpy dtypes: numpy.dtype(code, align, copy) then a BUILD of (version, byte order, subarray, names,
    # fields, ...); only plain numbers in one of the four byte orders are read.
    **{f"dtype state {name}": (_array((1, (2,), _dtype(state), False, _DATA)), pickles.UnsafePickleError,
                               "numpy dtype 'f4' with a structured state: not a network array")
       for name, state in {
           "of four fields": (3, "<", None, None),
           "as a list": [3, "<", None, None, None, -1, -1, 0],
           "in byte order 'x'": (3, "x", None, None, None, -1, -1, 0),
           "of a subarray": (3, "<", ((2,), None), None, None, -1, -1, 0),
           "with field names": (3, "<", None, ("a",), None, -1, -1, 0),
           "with fields": (3, "<", None, None, {"a": 1}, -1, -1, 0),
       }.items()},
    # torch_utils.persistence objects: the meta dict, one condition failing at a time.
    "meta of a function": (_persistent(type="function"), pickles.PickleError, _META),
    "meta with a numeric class name": (_persistent(class_name=3), pickles.PickleError, _META),
    "meta with a list state": (Reduced(pw._reconstruct_persistent_obj, (_meta(state=[1]),)),
                               pickles.PickleError, _META),
    "meta as a list": (Reduced(pw._reconstruct_persistent_obj, ([1],)), pickles.PickleError, _META),
    "state BUILT onto a persistent object": (
        Reduced(pw._reconstruct_persistent_obj, (_meta(),), {"weight": 1}), pickles.UnsafePickleError,
        "unexpected object state for PersistentObject (BUILD opcode): not a file the reference wrote"),
    # torch parameters: the tensor they wrap and their backward hooks (always an empty OrderedDict).
    "parameter with a hook": (Reduced(torch._utils._rebuild_parameter, (*_HOOKS, OrderedDict(a=1))),
                              pickles.UnsafePickleError, "a parameter carries backward hooks"),
    "parameter hooks as a list": (Reduced(torch._utils._rebuild_parameter, (*_HOOKS, [])),
                                  pickles.UnsafePickleError, "a parameter carries backward hooks"),
    "parameter of a number": (Reduced(torch._utils._rebuild_parameter, (3, True, OrderedDict())),
                              pickles.UnsafePickleError, "a parameter wraps a int, not a tensor"),
}


def test_parameters_without_hooks_and_fortran_arrays_are_read_as_written(tmp_path):
    t = torch.arange(3.0)
    for hooks in (None, OrderedDict()):   # the absent and the empty hooks the writers emit
        assert torch.equal(_read(tmp_path, Reduced(torch._utils._rebuild_parameter, (t, True, hooks))), t)
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    fortran = np.asfortranarray(values)
    assert fortran.__reduce__()[2][3] is True   # numpy stores it column-major
    np.testing.assert_array_equal(_read(tmp_path, fortran), values)
    np.testing.assert_array_equal(_read(tmp_path, values), values)


@pytest.mark.parametrize("state, dtype", [
    ((3, "<", None, None, None, -1, -1, 0), np.dtype("<f4")),    # what numpy writes
    ((3, ">", None, None, None, -1, -1, 0), np.dtype(">f4")),    # big-endian
    ((3, "|", None, None, None, -1, -1, 0), np.dtype("f4")),     # byte order not applicable
    ((3, "=", None, None, None, -1, -1, 0), np.dtype("f4")),     # native
    ((1, "<", None, None, None), np.dtype("<f4")),               # the shortest state numpy reads
])
def test_dtype_states_numpy_writes_are_read_in_their_byte_order(tmp_path, state, dtype):
    data = np.float32([1.5, -2.0]).astype(dtype).tobytes()
    array = _read(tmp_path, _array((1, (2,), _dtype(state), False, data)))
    assert array.dtype == dtype and array.tolist() == [1.5, -2.0]


def test_one_arrays_bytes_built_past_the_files_limit_is_refused_naming_the_array(tmp_path):
    data = bytes(1 << 20)    # one MiB, shared by every array: the file holds it once
    count = pickles.alloc_limit(2 * len(data)) // len(data)   # arrays enough to pass the limit
    arrays = [_array((1, (len(data) // 4,), _STATE[2], False, data)) for _ in range(count)]
    path = pw.write(tmp_path / "reused.pkl", arrays)
    assert path.stat().st_size < 2 * len(data)
    with pytest.raises(pickles.PickleError) as e:
        pickles.read_pickle(path)
    assert str(e.value).startswith(f"{path}: refused: a numpy array of shape [262144] would take the tensors "
                                   "and arrays read so far to ")


def test_a_file_may_allocate_exactly_its_limit_and_not_a_byte_more(tmp_path):
    shared = bytes(1 << 20)    # one MiB held once in the file, built into many arrays
    count = pickles.ALLOC_SLACK // len(shared) + 4

    def write(extra: int) -> tuple[Path, int]:
        """The arrays over the shared MiB and one array of `extra` bytes of its own; the bytes they take."""
        u8 = np.dtype(np.uint8)
        arrays = [_array((1, (len(shared),), u8, False, shared)) for _ in range(count)]
        arrays.append(_array((1, (extra,), u8, False, bytes(extra))))
        return pw.write(tmp_path / f"edge{extra}.pkl", arrays), count * len(shared) + extra

    extra = 0
    for _ in range(4):    # each byte of its own adds one byte used and two of limit: solve used == limit
        path, used = write(extra)
        extra += used - pickles.alloc_limit(path.stat().st_size)
    path, used = write(extra)
    assert used == pickles.alloc_limit(path.stat().st_size)
    assert len(pickles.read_pickle(path)) == count + 1
    path, used = write(extra - 1)
    assert used == pickles.alloc_limit(path.stat().st_size) + 1
    with pytest.raises(pickles.PickleError) as e:
        pickles.read_pickle(path)
    size = path.stat().st_size
    assert str(e.value) == (
        f"{path}: refused: a numpy array of shape [{extra - 1}] would take the tensors and arrays read so "
        f"far to {used:,} bytes, over the {used - 1:,} a {size:,}-byte file can hold (stored values expanded "
        "or reused far beyond the file's content; nothing was allocated for them)")


def _tensors(tmp_path: Path, state: dict) -> dict[str, torch.Tensor]:
    return pickles.load_reference_pickle(pw.write(tmp_path / "tree.pkl", {"G_ema": _persistent(state)})
                                         ).G_ema.tensors()


def test_a_module_trees_tensors_skip_empty_entries_and_keep_the_rest(tmp_path):
    w, b, buf = torch.ones(2), torch.zeros(2), torch.full((1,), 3.0)
    child = _persistent({"_parameters": {"bias": None, "weight": torch.nn.Parameter(w)}})
    tree = {"_parameters": {"none": None, "b": torch.nn.Parameter(b)}, "_buffers": {"buf": buf},
            "_modules": {"empty": None, "fc": child}}
    out = _tensors(tmp_path, tree)
    assert list(out) == ["b", "buf", "fc.weight"]
    assert torch.equal(out["b"], b) and torch.equal(out["buf"], buf) and torch.equal(out["fc.weight"], w)


@pytest.mark.parametrize("state, message", [
    ({"_parameters": [1]}, "Layer: _parameters is a list, not a dict"),
    ({"_buffers": {"x": 1.5}}, "Layer: x is a float, not a tensor"),
    ({"_modules": {"fc": _persistent({"_parameters": {"w": "s"}})}}, "Layer: fc.w is a str, not a tensor"),
    ({"_modules": (1,)}, "Layer: _modules is a tuple, not a dict"),
    ({"_modules": {"fc": 3}}, "Layer: sub-module fc is a int, not a persistent network object"),
])
def test_a_module_tree_of_the_wrong_kinds_is_refused_by_name(tmp_path, state, message):
    with pytest.raises(pickles.PickleError) as e:
        _tensors(tmp_path, state)
    assert str(e.value) == message


# ----------------------------------------------------------------------------------------------------
# Tensors: torch's _rebuild_tensor_v2 over a storage read from its nested legacy torch.save payload.


def _payload(values: torch.Tensor) -> bytes:
    """A storage's payload exactly as torch pickles it (legacy torch.save of the typed storage)."""
    buf = io.BytesIO()
    torch.save(values._typed_storage(), buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


_REAL = _payload(torch.arange(4.0))


def _zip_payload() -> bytes:
    """torch.save's default (zip) format: never what the reference's storages hold."""
    buf = io.BytesIO()
    torch.save(torch.arange(4.0)._typed_storage(), buf)
    return buf.getvalue()


def _header() -> bytes:
    """The payload's first three pickles (magic number, protocol, system info), as torch writes them."""
    f = io.BytesIO(_REAL)
    for _ in range(3):
        pickle.load(f)
    return _REAL[:f.tell()]


class _Id:
    def __init__(self, pid: Any) -> None:
        self.pid = pid


class _IdPickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        return obj.pid if isinstance(obj, _Id) else None


def _declaring(*pids: Any, tail: bytes = b"") -> bytes:
    """A legacy payload whose storage pickle carries the persistent ids `pids` (torch writes one, a
    ("storage", storage class, key, location, numel, view) tuple), then `tail` as its data."""
    buf = io.BytesIO()
    _IdPickler(buf, protocol=2).dump([_Id(pid) for pid in pids])
    return _header() + buf.getvalue() + tail


def _storage(payload: bytes) -> Reduced:
    return Reduced(torch.storage._load_from_bytes, (payload,))


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, hooks: Any = None, *metadata: Any) -> Reduced:
    hooks = OrderedDict() if hooks is None else hooks   # what torch writes: an empty OrderedDict
    return Reduced(torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, False, hooks, *metadata))


def _untyped_payload() -> bytes:
    """torch's legacy payload of an untyped storage (what pickling a bare UntypedStorage writes)."""
    buf = io.BytesIO()
    torch.save(torch.arange(4.0).untyped_storage(), buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


_S = _storage(_REAL)
_FLOAT2 = ("storage", torch.FloatStorage, "0", "cpu", 2, None)   # as torch declares one
_NO_SIZE = "a storage payload declares a storage without a known type and size"
_NOT_STORAGE = "a storage payload has a persistent id {!r}, not a storage"

TENSORS_REFUSED = {
    "id as a list": (_storage(_declaring(["storage", 4, "0", "cpu", 2, None])), pickles.PickleError,
                     _NOT_STORAGE.format("['storage', 4, '0', 'cpu', 2, None]")),
    "id of five fields": (_storage(_declaring(("storage", 4, "0", "cpu", 2))), pickles.PickleError,
                          _NOT_STORAGE.format("('storage', 4, '0', 'cpu', 2)")),
    "id of a module, shown to 60 characters": (
        _storage(_declaring(("module", 4, "k" * 80, "cpu", 2, None))), pickles.PickleError,
        _NOT_STORAGE.format("('module', 4, '" + "k" * 45)),
    "storage class unknown": (_storage(_declaring(("storage", "FloatStorage", "0", "cpu", 2, None))),
                              pickles.PickleError, _NO_SIZE),
    "size a float": (_storage(_declaring(("storage", 4, "0", "cpu", 2.0, None))), pickles.PickleError,
                     _NO_SIZE),
    "size negative": (_storage(_declaring(("storage", 4, "0", "cpu", -1, None))), pickles.PickleError,
                      _NO_SIZE),
    "a torch global that is no storage class": (
        _storage(_header() + pickle.dumps(torch.FloatTensor, protocol=2)), pickles.UnsafePickleError,
        "refused: a tensor's stored bytes reference the global torch.FloatTensor, which is not part of the "
        "StyleGAN2 network pickle formats (nothing of the file was run)"),
    "storage pickle cut short": (_storage(_header() + b"\x80\x02]q\x00("), pickles.PickleError,
                                 "a tensor storage cannot be read (EOFError: Ran out of input)"),
    "torch's untyped storage (never under a tensor)": (
        _storage(_untyped_payload()), pickles.UnsafePickleError,
        "refused: a tensor's stored bytes reference the global torch.storage.UntypedStorage, which is not "
        "part of the StyleGAN2 network pickle formats (nothing of the file was run)"),
    "storage pickle of a number": (
        _storage(_header() + pickle.dumps(5, protocol=2) + pickle.dumps([], protocol=2)), pickles.PickleError,
        "a storage payload holds a int, not a storage"),
    # The keys pickle after the storage's is read by torch's weights-only loader alone.
    "a global in the storage keys": (
        _storage(_declaring(_FLOAT2, tail=pickle.dumps(logging.getLogger, protocol=2) + bytes(16))),
        pickles.UnsafePickleError,
        "refused: a tensor's stored bytes reference the global logging.getLogger, which is not part of the "
        "StyleGAN2 network pickle formats (nothing of the file was run)"),
    "an opcode the weights-only loader lacks in the storage keys": (
        _storage(_declaring(_FLOAT2, tail=b"\x80\x02\x82\x01." + bytes(16))), pickles.UnsafePickleError,
        "refused: a tensor's stored bytes reference what torch's weights-only loader refuses "
        "(UnpicklingError: Unsupported operand 130), which is not part of the StyleGAN2 network pickle "
        "formats (nothing of the file was run)"),
    "a storage on its own": (_S, pickles.PickleError, "a stray Storage outside a tensor or array"),
    "storage bytes cut short": (   # the keys, the storage's length (2 floats), then 4 of its 8 bytes
        _storage(_declaring(_FLOAT2, tail=pickle.dumps(["0"], protocol=2) + (2).to_bytes(8, "little")
                            + bytes(4))),
        pickles.PickleError,
        "a tensor storage cannot be read (RuntimeError: unexpected EOF, expected 4 more bytes. The file "
        "might be corrupted.)"),
    "payload as a zip archive": (_storage(_zip_payload()), pickles.PickleError,
                                 "a storage payload is a zip archive; the reference's storages are torch's "
                                 "legacy payloads"),
    "payload as text": (Reduced(torch.storage._load_from_bytes, ("text",)), pickles.UnsafePickleError,
                        "a storage payload is a str, not bytes"),
    "tensor on a number": (_tensor(3, 0, (2,), (1,)), pickles.UnsafePickleError,
                           "a tensor is built on a int, not a storage"),
    "size of strings": (_tensor(_S, 0, ("2",), (1,)), pickles.UnsafePickleError,
                        "tensor size is not a tuple of non-negative integers: ('2',)"),
    "negative stride": (_tensor(_S, 0, (2,), (-1,)), pickles.UnsafePickleError,
                        "tensor stride is not a tuple of non-negative integers: (-1,)"),
    "negative offset": (_tensor(_S, -1, (2,), (1,)), pickles.UnsafePickleError,
                        "tensor offset -1, size (2,), stride (1,) are invalid"),
    "offset a string": (_tensor(_S, "0", (2,), (1,)), pickles.UnsafePickleError,
                        "tensor offset '0', size (2,), stride (1,) are invalid"),
    "size and stride of different lengths": (_tensor(_S, 0, (2,), (1, 1)), pickles.UnsafePickleError,
                                             "tensor offset 0, size (2,), stride (1, 1) are invalid"),
    "tensor with a hook": (_tensor(_S, 0, (2,), (1,), OrderedDict(a=1)), pickles.UnsafePickleError,
                           "a tensor carries backward hooks"),
    "tensor with metadata": (_tensor(_S, 0, (2,), (1,), None, {"x": 1}), pickles.UnsafePickleError,
                             "a tensor carries python metadata"),
    "one element past the end": (_tensor(_S, 4, (1,), (1,)), pickles.PickleError,
                                 "a tensor of size [1] reaches past the end of its storage"),
}




@pytest.mark.parametrize("case", REFUSED | TENSORS_REFUSED)
def test_each_forged_piece_is_refused_with_its_own_line(tmp_path, case):
    obj, error, message = (REFUSED | TENSORS_REFUSED)[case]
    path = pw.write(tmp_path / "forged.pkl", {"G_ema": obj})
    with pytest.raises(error) as e:
        pickles.read_pickle(path)
    assert type(e.value) is error and str(e.value) == f"{path}: {message}"


def test_storages_declared_under_two_keys_count_both_against_the_payload(tmp_path):
    # Each declaration alone fits in the payload; torch allocates both keys, which do not.
    numel = 40
    payload = _declaring(("storage", 4, "0", "cpu", numel, None), ("storage", 4, "1", "cpu", numel, None),
                         tail=bytes(40))
    assert 4 * numel <= len(payload) < 2 * 4 * numel
    path = pw.write(tmp_path / "two.pkl", {"G_ema": _storage(payload)})
    with pytest.raises(pickles.PickleError) as e:
        pickles.read_pickle(path)
    assert str(e.value) == (f"{path}: refused: a tensor storage declares {2 * 4 * numel} bytes, its stored "
                            f"payload holds {len(payload)} (nothing was allocated for it)")


def test_a_storage_declaring_exactly_its_payloads_size_passes_the_size_check(tmp_path):
    numel = 60
    tail = 0
    while len(_declaring(("storage", 4, "0", "cpu", numel, None), tail=bytes(tail))) < 4 * numel:
        tail += 1
    payload = _declaring(("storage", 4, "0", "cpu", numel, None), tail=bytes(tail))
    assert len(payload) == 4 * numel
    path = pw.write(tmp_path / "exact.pkl", {"G_ema": _storage(payload)})
    with pytest.raises(pickles.PickleError) as e:   # torch then reads it (and finds no storage class in it)
        pickles.read_pickle(path)
    assert str(e.value).startswith(f"{path}: a tensor storage cannot be read (")


def test_empty_and_last_element_views_are_read(tmp_path):
    assert _read(tmp_path, _tensor(_storage(_payload(torch.zeros(0))), 0, (0,), (1,))).numel() == 0
    assert _read(tmp_path, _tensor(_S, 5, (0,), (1,))).numel() == 0   # an empty view reads nothing
    assert torch.equal(_read(tmp_path, _tensor(_S, 3, (1,), (1,))), torch.tensor([3.0]))
    assert torch.equal(_read(tmp_path, _tensor(_S, 0, (4,), (1,))), torch.arange(4.0))


def _settle(write: Callable[[int], Path], numel_for: Callable[[int], int]) -> tuple[Path, int]:
    """The file `write(numel)` makes with the numel `numel_for(its limit)` asks for, and that numel: the
    file's size (so its limit) barely moves with numel, so a few rounds settle it."""
    numel = 0
    for _ in range(3):
        size = write(numel).stat().st_size
        numel = numel_for(pickles.alloc_limit(size))
    path = write(numel)
    assert path.stat().st_size == size
    return path, numel


def test_a_storage_payload_past_what_views_left_of_the_limit_is_refused_naming_it(tmp_path):
    # A stride-0 view is charged at its full size; the next storage's payload then passes the limit.
    later = _storage(_payload(torch.arange(8.0)))
    path, numel = _settle(lambda n: pw.write(tmp_path / "views.pkl", [_tensor(_S, 0, (n,), (0,)), later]),
                          lambda limit: (limit - len(_REAL) - len(later.args[0]) // 2) // 4)
    size = path.stat().st_size
    limit = pickles.alloc_limit(size)
    used = len(_REAL) + 4 * numel + len(later.args[0])
    assert len(_REAL) + 4 * numel <= limit < used
    with pytest.raises(pickles.PickleError) as e:
        pickles.read_pickle(path)
    assert str(e.value) == (
        f"{path}: refused: a tensor storage would take the tensors and arrays read so far to {used:,} bytes, "
        f"over the {limit:,} a {size:,}-byte file can hold (stored values expanded or reused far beyond the "
        "file's content; nothing was allocated for them)")


@pytest.mark.parametrize("values", [torch.arange(4), torch.arange(4, dtype=torch.float16),
                                    torch.tensor([True, False])])
def test_tensors_of_other_dtypes_keep_their_dtype_and_values(tmp_path, values):
    read = _read(tmp_path, values)    # torch's own reduction of the tensor
    assert read.dtype == values.dtype and torch.equal(read, values)


def test_a_storage_saved_from_a_gpu_is_read_on_the_cpu(tmp_path):
    # torch writes a storage's device as its location tag; a module pickled on the GPU carries "cuda:0".
    cpu = b"X\x03\x00\x00\x00cpu"
    assert _REAL.count(cpu) == 1
    cuda = _REAL.replace(cpu, b"X\x06\x00\x00\x00cuda:0")
    read = _read(tmp_path, _tensor(_storage(cuda), 0, (4,), (1,)))
    assert read.device.type == "cpu" and torch.equal(read, torch.arange(4.0))


def test_a_whole_storage_view_of_several_dimensions_is_not_charged_again(tmp_path):
    # A (2, 1, 2) tensor over all of its 4-byte storage (torch's strides (2, 2, 1): a dimension of one
    # inside, so every stride counts) is that storage's memory; a stride-0 view then takes the rest of the
    # limit to the byte, and the file is read.
    storage = _storage(_payload(torch.arange(4, dtype=torch.uint8)))
    whole = _tensor(storage, 0, (2, 1, 2), (2, 2, 1))
    path, numel = _settle(
        lambda n: pw.write(tmp_path / "whole.pkl", [whole, _tensor(storage, 0, (n,), (0,))]),
        lambda limit: limit - len(storage.args[0]))
    assert len(storage.args[0]) + numel == pickles.alloc_limit(path.stat().st_size)
    whole, spread = pickles.read_pickle(path)
    assert torch.equal(whole, torch.arange(4, dtype=torch.uint8).view(2, 1, 2)) and spread.shape == (numel,)


def test_objects_referenced_twice_are_read_twice(tmp_path):
    # pickle writes a repeated object once and refers back to it: each reference reads the same value.
    values, d, items, pair, net = np.arange(3.0), {"a": 1}, [2], (3, 4), _persistent()
    tf_net = pw.Network("G_mapping", {}, [])
    read = _read(tmp_path, [values, values, d, d, items, items, pair, pair, net, net, tf_net, tf_net])
    np.testing.assert_array_equal(read[0], values)
    np.testing.assert_array_equal(read[1], values)
    assert read[2:8] == [d, d, items, items, pair, pair]
    assert isinstance(read[8], pickles.PersistentObject) and read[9] is read[8]
    assert isinstance(read[10], pickles.TFNetwork) and read[11] is read[10]


def test_an_easydict_referenced_twice_is_a_plain_dict_twice(tmp_path):
    kwargs = pw.EasyDict(channel_base=16384)
    first, second = _read(tmp_path, [kwargs, kwargs])
    assert first == second == {"channel_base": 16384} and type(first) is dict


def test_a_pytorch_pickles_other_dicts_are_kept_beside_its_networks(tmp_path):
    data = {"G": None, "D": None, "G_ema": _persistent(), "training_set_kwargs": {"resolution": 64},
            "augment_pipe": None, "progress": 3}
    path = pw.write(tmp_path / "snapshot.pkl", data)
    assert pickles.load_reference_pickle(path).extra == {"training_set_kwargs": {"resolution": 64},
                                                         "augment_pipe": None}


@pytest.mark.parametrize("content, message", [
    (None, "pickle not found"),
    (b"\x80\x02]q\x00(", "not a readable network pickle (EOFError: Ran out of input)"),
    # 100,000 nested lists: pickle builds them without recursion, reading them back would not.
    (b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".",
     "the pickle nests too deeply to be a network pickle"),
])
def test_files_that_are_no_pickle_are_refused_with_their_own_line(tmp_path, content, message):
    path = tmp_path / "file.pkl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(pickles.PickleError) as e:
        pickles.read_pickle(path)
    assert str(e.value) == f"{path}: {message}"


@pytest.mark.parametrize("data, message", [
    ({"G_ema": None}, "the pickle's G_ema is empty"),
    ([1], "not a StyleGAN2 network pickle (expected a dict with G_ema, or a TensorFlow (G, D, Gs) tuple; "
          "found a list)"),
    ({k: 0 for k in "jihgfedcba"}, "not a StyleGAN2 network pickle (expected a dict with G_ema, or a "
                                   "TensorFlow (G, D, Gs) tuple; found a dict with keys ['a', 'b', 'c', 'd', "
                                   "'e', 'f', 'g', 'h'])"),
])
def test_pickles_without_networks_are_refused_with_what_they_hold(tmp_path, data, message):
    path = pw.write(tmp_path / "none.pkl", data)
    with pytest.raises(pickles.PickleError) as e:
        pickles.load_reference_pickle(path)
    assert str(e.value) == f"{path}: {message}"


def test_a_reference_pickle_keeps_its_path_and_kind(tmp_path):
    path = pw.write(tmp_path / "pt.pkl", {"G_ema": _persistent()})
    ref = pickles.load_reference_pickle(path)
    assert (ref.path, ref.kind, ref.G, ref.D) == (path, "pytorch", None, None)
    path = pw.write(tmp_path / "tf.pkl", pw.Network("G", {}, []))
    ref = pickles.load_reference_pickle(path)
    assert (ref.path, ref.kind, ref.G, ref.D, ref.extra) == (path, "tensorflow", None, None, {})
    # A TensorFlow training pickle is the tuple (G, D, Gs).
    path = pw.write(tmp_path / "tf3.pkl", (pw.Network("G", {}, []), pw.Network("D", {}, []),
                                           pw.Network("Gs", {}, [])))
    ref = pickles.load_reference_pickle(path)
    assert (ref.path, ref.kind, ref.extra) == (path, "tensorflow", {})
    assert (ref.G_ema.name, ref.G.name, ref.D.name) == ("Gs", "G", "D")
