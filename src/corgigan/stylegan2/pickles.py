"""Read the reference's network pickles without running any of their code.

Two families are read (the format facts are public; see the project notes):

* StyleGAN2-ADA PyTorch (training snapshots ``network-snapshot-NNNNNN.pkl`` and the published pretrained
  pickles): a dict with G, D, G_ema, augment_pipe and training_set_kwargs. Each network was pickled by
  ``torch_utils.persistence`` as a call ``_reconstruct_persistent_obj(meta)`` whose meta carries the class
  name, the init arguments and the object's ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``),
  plus the whole source of its module. Tensors are ``torch._utils._rebuild_tensor_v2`` over storages that
  are nested legacy ``torch.save`` payloads (``torch.storage._load_from_bytes``).
* StyleGAN2 / StyleGAN2-ADA TensorFlow: a tuple (G, D, Gs) of ``dnnlib.tflib.network.Network`` objects
  restored through ``__setstate__(state)``; the state holds static kwargs, sub-networks (components),
  the build module's source and a list of (variable name, numpy array).

The unpickler resolves only the globals those formats use, each to a function or class of this module
that builds an inert record (`PersistentObject`, `TFNetwork`) or checked plain data (tensors, arrays,
numbers). Any other global (``os.system``, ``builtins.eval``, a class with ``__reduce__``...) stops the
read with `UnsafePickleError` before anything it names is called. The module source the files carry is
dropped unread: it is never compiled or executed.

Why records rather than the real objects while unpickling: pickle's BUILD opcode calls
``__setstate__`` of whatever object is on the stack. Torch tensors and numpy arrays have one that
trusts its input, so tensors and arrays exist only inside records whose ``__setstate__`` refuses (or
checks) its state; `read_pickle` swaps them for the real values once the whole file is read.

A few hundred bytes of pickle can describe gigabytes: a one-element storage viewed with stride 0 at a huge
size, one storage (or one array's bytes) rebuilt thousands of times. Every tensor and array is therefore
charged at the bytes it will take before it is made (`_Reading.charge`), each storage once however often
it is referenced, and a file is refused once the total passes what its own size can hold
(ALLOC_FACTOR x its size + ALLOC_SLACK).
"""

from __future__ import annotations

import collections
import functools
import io
import math
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corgigan.stylegan2.snapshot import SnapshotError, exception_line, refused_global

PICKLE_SUFFIX = ".pkl"
# The dtypes a network's tensors and arrays may have (no object or structured dtypes: those carry
# pickled objects or field tables rather than numbers).
_NUMERIC_DTYPE_CODES = frozenset({"b1", "u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8", "f2", "f4", "f8"})
# What a file may make the reader allocate for its tensors and arrays: a real file's storages and arrays
# are its own bytes (x1); views cut from a storage add their copies. Twice the file leaves room for those,
# and the constant for small files.
ALLOC_FACTOR = 2
ALLOC_SLACK = 16 << 20
# torch writes a storage's nested payload in its legacy format (magic number pickle first) and never as a
# zip archive, whose compressed members could inflate far beyond the payload.
_ZIP_MAGIC = b"PK\x03\x04"


class PickleError(SnapshotError):
    """A pickle cannot be read as a StyleGAN2 network pickle; the message says why."""


class UnsafePickleError(PickleError):
    """A pickle references a global (or an operation) outside the formats we read; nothing of it ran."""


def is_pickle(path: str | Path) -> bool:
    """True for a file named like a network pickle (``*.pkl``)."""
    return Path(path).suffix.lower() == PICKLE_SUFFIX


# ----------------------------------------------------------------------------------------------------
# Inert records


class _Refuses:
    """Base of records that accept no pickled state (a BUILD on them means a forged file)."""

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"unexpected object state for {type(self).__name__} (BUILD opcode): "
                                "not a file the reference wrote")


@dataclass
class PersistentObject(_Refuses):
    """One ``torch_utils.persistence`` object: its class name, init arguments and state, no code."""

    class_name: str
    state: dict[str, Any]

    @property
    def init_args(self) -> tuple:
        """Positional arguments the object was constructed with."""
        return tuple(self.state.get("_init_args") or ())

    @property
    def init_kwargs(self) -> dict[str, Any]:
        """Keyword arguments the object was constructed with."""
        return dict(self.state.get("_init_kwargs") or {})

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Every parameter and buffer of this module tree under its state-dict name (None entries skipped).

        Parameters and buffers are listed together: the reference stores frozen Freeze-D layers' weights
        as buffers under the same names.
        """
        out: dict[str, torch.Tensor] = {}
        for group in ("_parameters", "_buffers"):
            entries = self.state.get(group) or {}
            if not isinstance(entries, dict):
                raise PickleError(f"{self.class_name}: {group} is a {type(entries).__name__}, not a dict")
            for name, value in entries.items():
                if value is None:
                    continue
                if not isinstance(value, torch.Tensor):
                    raise PickleError(f"{self.class_name}: {prefix}{name} is a {type(value).__name__}, "
                                      "not a tensor")
                out[f"{prefix}{name}"] = value
        modules = self.state.get("_modules") or {}
        if not isinstance(modules, dict):
            raise PickleError(f"{self.class_name}: _modules is a {type(modules).__name__}, not a dict")
        for name, child in modules.items():
            if child is None:
                continue
            if not isinstance(child, PersistentObject):
                raise PickleError(f"{self.class_name}: sub-module {prefix}{name} is a "
                                  f"{type(child).__name__}, not a persistent network object")
            out.update(child.tensors(f"{prefix}{name}."))
        return out


class TFNetwork:
    """Stand-in for ``dnnlib.tflib.network.Network``: keeps the parts of its pickled state that describe the
    network (name, static_kwargs, components, variables)."""

    name: str
    static_kwargs: dict[str, Any]
    components: dict[str, TFNetwork]
    variables: list[tuple[str, Any]]

    def __setstate__(self, state: Any) -> None:
        # The fields dnnlib's own __setstate__ reads without a default; "components" is optional there too.
        if not isinstance(state, dict):
            raise PickleError(f"TensorFlow network state is a {type(state).__name__}, not a dict")
        missing = [key for key in ("name", "static_kwargs", "variables") if key not in state]
        if missing:
            raise PickleError(f"TensorFlow network state lacks {', '.join(missing)}: "
                              "not a network dnnlib wrote")
        fields = {"name": (state["name"], str), "static_kwargs": (state["static_kwargs"], dict),
                  "components": (state.get("components", {}), dict), "variables": (state["variables"], list)}
        for key, (value, kind) in fields.items():
            if not isinstance(value, kind):
                raise PickleError(f"TensorFlow network state's {key} is a {type(value).__name__}, "
                                  f"not a {kind.__name__}")
            setattr(self, key, value)
        # state["build_module_src"] is the network's TensorFlow code: dropped unread, never executed.

    def collect(self, prefix: str = "") -> dict[str, np.ndarray]:
        """All variables of this network and its components, named ``component/.../variable``.

        The values are what TensorFlow returned for each variable when the network was pickled: numpy
        arrays, and numpy scalars (numpy.float32) for 0-d variables such as every noise strength; the
        scalars come back as 0-d arrays.
        """
        out: dict[str, np.ndarray] = {}
        for entry in self.variables:
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)
                    and isinstance(entry[1], (np.ndarray, np.generic))):
                raise PickleError(f"TensorFlow network {self.name!r}: a variable entry is not "
                                  "(name, numpy array or scalar)")
            out[prefix + entry[0]] = np.asarray(entry[1])
        for name, comp in self.components.items():
            if not isinstance(comp, TFNetwork):
                raise PickleError(f"TensorFlow network {self.name!r}: component {name!r} is a "
                                  f"{type(comp).__name__}, not a network")
            out.update(comp.collect(f"{prefix}{name}/"))
        return out


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a plain dict (read as one)."""


class _NDArrayType(_Refuses):
    """What the global ``numpy.ndarray`` resolves to: only meaningful as ``_reconstruct``'s first argument."""


_NDARRAY = _NDArrayType()


@dataclass
class _Dtype:
    """A numpy dtype as pickled: ``numpy.dtype(code, align, copy)`` plus a state carrying the byte order."""

    code: str
    byteorder: str = "="

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags); anything beyond the
        # byte order would describe a structured or sub-array dtype, which no network uses.
        if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in ("<", ">", "|", "=")
                and state[2] is None and state[3] is None and state[4] is None):
            raise UnsafePickleError(f"numpy dtype {self.code!r} with a structured state: not a network array")
        self.byteorder = state[1]

    def resolve(self) -> np.dtype:
        # "|" (not applicable) and "=" (native) leave the dtype as numpy.dtype(code) makes it.
        return np.dtype(self.code).newbyteorder(self.byteorder)


@dataclass
class _Array:
    """A numpy array under reconstruction; its BUILD state is checked and turned into a real array."""

    reading: _Reading
    array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # (version, shape, dtype, is_fortran, raw bytes)
        if not (isinstance(state, tuple) and len(state) == 5):
            raise UnsafePickleError("numpy array state is not (version, shape, dtype, fortran, data)")
        _, shape, dtype, fortran, data = state
        if not isinstance(dtype, _Dtype):
            raise UnsafePickleError("numpy array state without a numpy dtype")
        shape = _int_tuple(shape, "numpy array shape")
        if not isinstance(data, (bytes, bytearray)):
            raise UnsafePickleError(f"numpy array data is a {type(data).__name__}, not raw bytes "
                                    "(object arrays are refused)")
        dt = dtype.resolve()
        nbytes = math.prod(shape) * dt.itemsize
        if len(data) != nbytes:
            raise PickleError(f"numpy array of shape {list(shape)} and dtype {dt} holds {len(data)} bytes")
        # The bytes are the file's own, but one bytes object can be BUILT into any number of arrays.
        self.reading.charge(nbytes, f"a numpy array of shape {list(shape)}")
        self.array = np.frombuffer(data, dtype=dt).reshape(shape, order="F" if fortran else "C").copy()


@dataclass
class _Storage(_Refuses):
    """A torch storage read from its nested torch.save payload, as a flat 1-D tensor."""

    flat: torch.Tensor


@dataclass
class _Tensor(_Refuses):
    """A rebuilt tensor, held in a record until the read is over (a whole storage's tensor shares the
    storage's memory, any other view is a copy)."""

    tensor: torch.Tensor


def alloc_limit(file_size: int) -> int:
    """The most bytes reading (and importing) a file of `file_size` bytes may allocate for its values."""
    return ALLOC_FACTOR * file_size + ALLOC_SLACK


class _Reading:
    """One file being read: the storages read so far and the allocation bound (read_pickle names the file in
    its messages itself)."""

    def __init__(self, file_size: int) -> None:
        self.file_size = file_size
        self.limit = alloc_limit(file_size)
        self.used = 0
        # id(payload) -> (payload, its storage): a payload referenced again is not loaded again. The
        # payload is kept so its id cannot be reused by another object during the read.
        self.storages: dict[int, tuple[Any, _Storage]] = {}

    def charge(self, nbytes: int, what: str) -> None:
        """Count `nbytes` about to be allocated for `what`; refuse the file past its limit."""
        self.used += nbytes
        if self.used > self.limit:
            raise PickleError(
                f"refused: {what} would take the tensors and arrays read so far to {self.used:,} bytes, over "
                f"the {self.limit:,} a {self.file_size:,}-byte file can hold (stored values expanded or "
                "reused far beyond the file's content; nothing was allocated for them)")


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not (isinstance(value, (tuple, list)) and all(type(v) is int and v >= 0 for v in value)):
        raise UnsafePickleError(f"{what} is not a tuple of non-negative integers: {value!r}")
    return tuple(value)


def _no_hooks(hooks: Any, what: str) -> None:
    # Written files always carry an empty OrderedDict: hooks are functions, which we never accept.
    if hooks is not None and not (isinstance(hooks, dict) and not hooks):
        raise UnsafePickleError(f"{what} carries backward hooks")


# ----------------------------------------------------------------------------------------------------
# What the allowed globals resolve to


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    """torch_utils.persistence._reconstruct_persistent_obj: keep class name and state, drop module_src."""
    if not (isinstance(meta, dict) and meta.get("type") == "class" and isinstance(meta.get("class_name"), str)
            and isinstance(meta.get("state"), dict)):
        raise PickleError("a persistent object's meta is not {type: 'class', class_name, state, ...}")
    return PersistentObject(class_name=meta["class_name"], state=dict(meta["state"]))


# The storage classes a legacy payload names, as their element sizes in bytes.
_LEGACY_STORAGE_ITEMSIZE = {"DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
                            "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1,
                            "ByteStorage": 1, "BoolStorage": 1}


class _DeclaredStorages(pickle.Unpickler):
    """Reads the pickles of a legacy storage payload only for the storages they declare: a storage class
    resolves to its element size, any other global is refused, and a persistent id (torch's
    ("storage", class, key, location, numel, view)) is recorded, never loaded."""

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.bytes_by_key: dict[Any, int] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _LEGACY_STORAGE_ITEMSIZE:
            return _LEGACY_STORAGE_ITEMSIZE[name]     # an int: nothing a pickle could call
        raise UnsafePickleError(f"refused: a tensor's stored bytes reference the global {module}.{name}, "
                                "which is not part of the StyleGAN2 network pickle formats (nothing of the "
                                "file was run)")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise PickleError(f"a storage payload has a persistent id {str(pid)[:60]!r}, not a storage")
        _, itemsize, key, _, numel, _ = pid
        if type(itemsize) is not int or type(numel) is not int or numel < 0:
            raise PickleError("a storage payload declares a storage without a known type and size")
        self.bytes_by_key.setdefault(key, itemsize * numel)   # torch allocates each key once, at its first
        return None


def _declared_storage_bytes(payload: bytes) -> int:
    """Bytes torch's legacy loader would allocate for the storages `payload` declares (its magic number,
    protocol and system-info pickles, then the one naming the storages); PickleError when they cannot be
    read, UnsafePickleError naming a global they reference beyond the storage classes."""
    f = io.BytesIO(payload)
    scan = _DeclaredStorages(f)
    try:
        for _ in range(4):
            scan.load()
    except PickleError:
        raise
    except Exception as e:
        raise PickleError(f"a tensor storage cannot be read ({exception_line(e)})") from None
    return sum(scan.bytes_by_key.values())


def _load_from_bytes(reading: _Reading, payload: Any) -> _Storage:
    """torch.storage._load_from_bytes: the nested payload, read by torch's own weights-only loader (once
    per payload object, however often the file references it)."""
    if not isinstance(payload, (bytes, bytearray)):
        raise UnsafePickleError(f"a storage payload is a {type(payload).__name__}, not bytes")
    if id(payload) in reading.storages:
        return reading.storages[id(payload)][1]
    if bytes(payload[:4]) == _ZIP_MAGIC:
        raise PickleError("a storage payload is a zip archive; the reference's storages are torch's legacy "
                          "payloads")
    # torch's legacy loader allocates every storage at the size its pickle declares before it reads (and
    # checks) the bytes that follow, so the declared sizes are read first and held to the payload's own
    # length: loading it then allocates at most len(payload) bytes.
    declared = _declared_storage_bytes(bytes(payload))
    if declared > len(payload):
        raise PickleError(f"refused: a tensor storage declares {declared:,} bytes, its stored payload holds "
                          f"{len(payload):,} (nothing was allocated for it)")
    reading.charge(len(payload), "a tensor storage")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation: the format is what it is
            storage = torch.load(io.BytesIO(bytes(payload)), map_location="cpu", weights_only=True)
            # Only the typed storage classes pass the scan above (torch.storage.UntypedStorage is a global
            # it refuses); what else torch returns is whatever the storage pickle held.
            if not isinstance(storage, torch.TypedStorage):
                raise PickleError(f"a storage payload holds a {type(storage).__name__}, not a storage")
            flat = torch.empty(0, dtype=storage.dtype).set_(storage)
    except PickleError:
        raise
    except pickle.UnpicklingError as e:
        # torch's own refusal runs to several lines and advises weights_only=False (running the code).
        found = refused_global(e)
        what = (f"the global {found}" if found
                else f"what torch's weights-only loader refuses ({exception_line(e)})")
        raise UnsafePickleError(f"refused: a tensor's stored bytes reference {what}, which is not part of "
                                "the StyleGAN2 network pickle formats (nothing of the file was run)") from e
    except Exception as e:
        raise PickleError(f"a tensor storage cannot be read ({exception_line(e)})") from e
    record = _Storage(flat)
    reading.storages[id(payload)] = (payload, record)
    return record


def _rebuild_tensor_v2(reading: _Reading, storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any, backward_hooks: Any, metadata: Any = None) -> _Tensor:
    """torch._utils._rebuild_tensor_v2, with the bounds checks torch's own rebuild leaves out."""
    if not isinstance(storage, _Storage):
        raise UnsafePickleError(f"a tensor is built on a {type(storage).__name__}, not a storage")
    size = _int_tuple(size, "tensor size")
    stride = _int_tuple(stride, "tensor stride")
    if type(storage_offset) is not int or storage_offset < 0 or len(size) != len(stride):
        raise UnsafePickleError(f"tensor offset {storage_offset!r}, size {size}, stride {stride} are invalid")
    _no_hooks(backward_hooks, "a tensor")
    if metadata:
        raise UnsafePickleError("a tensor carries python metadata")
    # A view must stay inside its storage: Tensor.set_ does not check this, so check here.
    numel = math.prod(size)
    if numel > 0:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.flat.numel():
            raise PickleError(f"a tensor of size {list(size)} reaches past the end of its storage")
    if storage_offset == 0 and numel == storage.flat.numel() and stride == _contiguous_strides(size):
        return _Tensor(storage.flat.view(size))     # the whole storage: its memory, already counted
    # Any other view becomes a copy of its own, charged at its full size: a stride-0 view of one stored
    # value can be any size at all.
    reading.charge(numel * storage.flat.element_size(), f"a tensor of size {list(size)}")
    return _Tensor(storage.flat.as_strided(size, stride, storage_offset).clone())


def _contiguous_strides(size: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> _Tensor:
    """torch._utils._rebuild_parameter: a parameter is read as its tensor."""
    if not isinstance(data, _Tensor):
        raise UnsafePickleError(f"a parameter wraps a {type(data).__name__}, not a tensor")
    _no_hooks(backward_hooks, "a parameter")
    return data


def _numpy_dtype(code: Any, align: Any = False, copy: Any = True) -> _Dtype:
    """numpy.dtype(code, align, copy) for plain numeric dtypes only."""
    if not isinstance(code, str) or code not in _NUMERIC_DTYPE_CODES:
        raise UnsafePickleError(f"numpy dtype {code!r} is not a plain numeric dtype")
    return _Dtype(code)


def _numpy_scalar(dtype: Any, data: Any = b"") -> np.generic:
    """numpy.core.multiarray.scalar: a numpy number as the file holds it (numpy.float32 for a TensorFlow
    0-d variable, numpy.float64 for a PyTorch layer's weight gain), of a plain numeric dtype."""
    if not isinstance(dtype, _Dtype) or not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("a numpy scalar without a numeric dtype and raw bytes")
    dt = dtype.resolve()
    if len(data) != dt.itemsize:
        raise PickleError(f"a numpy {dt} scalar holds {len(data)} bytes")
    return np.frombuffer(bytes(data), dtype=dt)[0]


def _numpy_reconstruct(reading: _Reading, subtype: Any, shape: Any, dtype_code: Any) -> _Array:
    """numpy.core.multiarray._reconstruct: an empty array record that the following BUILD fills.

    ndarray.__reduce__ always passes the placeholders (0,) and b"b"; the BUILD state has the real shape
    and dtype.
    """
    if subtype is not _NDARRAY:
        raise UnsafePickleError("numpy array of a subclass: only plain numpy.ndarray is read")
    return _Array(reading)


@dataclass(frozen=True)
class _PerRead:
    """An allowed global whose function takes the file's `_Reading` first (bound per read)."""

    function: Callable[..., Any]


# (module, name) -> what it resolves to. These are exactly the globals the two formats use (numpy's
# module is numpy.core before numpy 2 and numpy._core after; protocol 3, the default of the Python 3.6/3.7
# the reference ran on, pickles a set, such as every torch module's _non_persistent_buffers_set, as a call
# of builtins.set).
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _PerRead(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _PerRead(_load_from_bytes),
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib.tflib.network", "Network"): TFNetwork,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _PerRead(_numpy_reconstruct),
    ("numpy._core.multiarray", "_reconstruct"): _PerRead(_numpy_reconstruct),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves globals only through ALLOWED_GLOBALS."""

    def __init__(self, file: Any, reading: _Reading) -> None:
        super().__init__(file)
        self.reading = reading

    def find_class(self, module: str, name: str) -> Any:
        try:
            target = ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused: the pickle references the global {module}.{name}, which is not part of the "
                "StyleGAN2 network pickle formats (nothing of the file was run)") from None
        return functools.partial(target.function, self.reading) if isinstance(target, _PerRead) else target

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refused: the pickle uses a persistent id ({str(pid)[:60]!r}), which the "
                                "network pickle formats never do")


# ----------------------------------------------------------------------------------------------------
# Reading


def _unwrap(obj: Any, seen: dict[int, Any]) -> Any:
    """Swap records for real tensors, arrays and dicts, in place for mutable containers."""
    key = id(obj)
    if key in seen:
        return seen[key]
    if isinstance(obj, _Tensor):
        return obj.tensor
    if isinstance(obj, _Array):
        if obj.array is None:
            raise PickleError("a numpy array without its data")
        return obj.array
    if isinstance(obj, (_Dtype, _Storage)) or obj is _NDARRAY:
        raise PickleError(f"a stray {type(obj).__name__.lstrip('_')} outside a tensor or array")
    if isinstance(obj, EasyDict):
        plain: dict[Any, Any] = {}
        seen[key] = plain
        plain.update((k, _unwrap(v, seen)) for k, v in obj.items())
        return plain
    if isinstance(obj, dict):
        seen[key] = obj
        for k in list(obj):
            obj[k] = _unwrap(obj[k], seen)
        return obj
    if isinstance(obj, list):
        seen[key] = obj
        obj[:] = [_unwrap(v, seen) for v in obj]
        return obj
    if isinstance(obj, tuple):
        out = tuple(_unwrap(v, seen) for v in obj)
        seen[key] = out
        return out
    if isinstance(obj, PersistentObject):
        seen[key] = obj
        obj.state = _unwrap(obj.state, seen)
        return obj
    if isinstance(obj, TFNetwork):
        if not hasattr(obj, "variables"):    # dnnlib pickles every Network with its state
            raise PickleError("a TensorFlow network without its state: not a network dnnlib wrote")
        seen[key] = obj
        obj.static_kwargs = _unwrap(obj.static_kwargs, seen)
        obj.components = _unwrap(obj.components, seen)
        obj.variables = _unwrap(obj.variables, seen)
        return obj
    return obj


def read_pickle(path: str | Path) -> Any:
    """Read a network pickle with the restricted unpickler; return its data with inert records.

    Raises UnsafePickleError (naming the global) for anything outside the two formats, PickleError for
    a file that is missing, truncated or not a pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise PickleError(f"{path}: pickle not found")
    try:
        with open(path, "rb") as f:
            reading = _Reading(path.stat().st_size)
            data = _RestrictedUnpickler(f, reading).load()
        return _unwrap(data, {})
    except PickleError as e:
        # Raised inside the unpickler, where the file is not known: every message names it here, once.
        raise type(e)(f"{path}: {e}") from e
    except RecursionError:
        raise PickleError(f"{path}: the pickle nests too deeply to be a network pickle") from None
    except Exception as e:  # truncated files, bad opcodes, wrong argument counts to the allowed globals
        raise PickleError(f"{path}: not a readable network pickle ({exception_line(e)})") from e


@dataclass
class ReferencePickle:
    """The networks of one reference pickle, as records: kind 'pytorch' (PersistentObject) or
    'tensorflow' (TFNetwork). D and G are None when the file holds only the generator."""

    path: Path
    kind: str
    G_ema: Any
    G: Any = None
    D: Any = None
    extra: dict[str, Any] = field(default_factory=dict)   # training_set_kwargs etc. (PyTorch only)


def load_reference_pickle(path: str | Path) -> ReferencePickle:
    """Read a StyleGAN2(-ADA) PyTorch or TensorFlow pickle and pick out its networks."""
    path = Path(path)
    data = read_pickle(path)
    if isinstance(data, dict) and "G_ema" in data:
        nets = {k: data.get(k) for k in ("G", "D", "G_ema")}
        for k, v in nets.items():
            if v is not None and not isinstance(v, PersistentObject):
                raise PickleError(f"{path}: {k} is a {type(v).__name__}, not a persistent network")
        if nets["G_ema"] is None:
            raise PickleError(f"{path}: the pickle's G_ema is empty")
        extra = {k: v for k, v in data.items() if k not in nets and isinstance(v, (dict, type(None)))}
        return ReferencePickle(path, "pytorch", nets["G_ema"], nets["G"], nets["D"], extra)
    if isinstance(data, tuple) and len(data) == 3 and all(isinstance(n, TFNetwork) for n in data):
        G, D, Gs = data
        return ReferencePickle(path, "tensorflow", Gs, G, D)
    if isinstance(data, TFNetwork):
        return ReferencePickle(path, "tensorflow", data)
    what = type(data).__name__
    if isinstance(data, dict):
        what += f" with keys {sorted(map(str, data))[:8]}"
    raise PickleError(f"{path}: not a StyleGAN2 network pickle (expected a dict with G_ema, or a TensorFlow "
                      f"(G, D, Gs) tuple; found a {what})")
