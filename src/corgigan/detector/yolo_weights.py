"""Reading untrusted ultralytics weight files and model yamls without running anything from them.

An ultralytics .pt is a torch.save zip whose data.pkl pickles the whole model: its classes (torch and
ultralytics nn.Module subclasses) are named in the pickle, and plain unpickling would call whatever the
pickle names. Here the pickle is read twice: first statically (nothing is unpickled), to check every
global it names against what the format needs and how it uses them; then by torch's weights_only
unpickler, allowed exactly those globals. A class may only be instantiated the way pickle stores
objects (NEWOBJ: `cls.__new__` with the state set afterwards); any other use of one, such as calling it
(which runs its __init__ with arguments from the file; DetectionModel's would eval() strings from a
model yaml) or handing it to another function, is refused.

Model yamls are checked too (`check_model_yaml`), ours included, because ultralytics evaluates parts of
them when it builds a model.
"""

from __future__ import annotations

import importlib
import io
import pickle
import pickletools
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corgigan.errors import StageError

ZIP_MAGIC = b"PK\x03\x04"            # how torch.load tells its zip format from the legacy one
# Modules whose nn.Module subclasses an ultralytics weight file may instantiate.
_MODULE_PACKAGES = ("torch.nn.modules.", "ultralytics.nn.modules.")
_MODULE_MODULES = ("ultralytics.nn.tasks",)
# Opcodes torch's weights_only unpickler implements; the static pass refuses the rest as torch would.
_PUSH_OPCODES = frozenset({"NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT",
                           "BINUNICODE", "SHORT_BINSTRING", "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT",
                           "EMPTY_SET"})


@dataclass(frozen=True)
class _Global:
    """A global as the static pass sees it on the pickle stack."""

    name: str


def _module_method(obj: Any, name: str) -> Any:
    """`getattr` for weight files: pickled bound methods (a module's forward) and nothing else."""
    if isinstance(obj, torch.nn.Module) and name in ("forward", "forward_fuse"):
        # From the class, not the instance: the instance's __dict__ comes from the file.
        return getattr(type(obj), name).__get__(obj)
    raise pickle.UnpicklingError(f"getattr({type(obj).__name__}, {name!r}) is not used by weight files")


def _data_globals() -> dict[str, Any]:
    """Globals other than modules that ultralytics weight files hold: none of them runs code of the file."""
    from ultralytics.utils import IterableSimpleNamespace

    scalar = np.float64(0).__reduce__()[0]      # numpy's scalar rebuilder; its module moved in numpy 2
    return {
        "ultralytics.utils.IterableSimpleNamespace": IterableSimpleNamespace,      # train args
        "ultralytics.yolo.utils.IterableSimpleNamespace": IterableSimpleNamespace,  # before 8.0.44
        "numpy.core.multiarray.scalar": scalar, "numpy._core.multiarray.scalar": scalar,   # metrics
        "numpy.dtype": np.dtype,
        "builtins.getattr": _module_method,
    }


def _module_class(name: str) -> type | None:
    """The nn.Module subclass `name` stands for, if it is one a weight file may hold (else None).

    Only modules already imported (torch.nn and ultralytics.nn.tasks import all of theirs) are looked
    in: a name from the file never makes anything import.
    """
    module, _, attr = name.rpartition(".")
    if not (module.startswith(_MODULE_PACKAGES) or module in _MODULE_MODULES) or module not in sys.modules:
        return None
    obj = vars(sys.modules[module]).get(attr)
    if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__ == module:
        return obj
    return None


def _pickle_globals(data: bytes) -> tuple[set[str], set[str]]:
    """Statically walk a protocol-2 pickle as torch's weights_only unpickler would run it.

    Returns (every global it names, the globals it uses other than as the class of a NEWOBJ). Raises
    ValueError for an opcode torch's unpickler does not implement. Nothing is unpickled.
    """
    from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING

    named: set[str] = set()
    used: set[str] = set()
    stack: list[Any] = []
    metastack: list[list[Any]] = []
    memo: dict[int, Any] = {}

    def consume(*items: Any) -> None:
        used.update(x.name for x in items if isinstance(x, _Global))

    def pop_mark() -> list[Any]:
        nonlocal stack
        items, stack = stack, metastack.pop()
        return items

    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name in _PUSH_OPCODES:
                stack.append(None)
            elif name == "GLOBAL":
                module, attr = arg.split(" ", 1)
                # torch maps Python 2 names the same way (torch.save writes protocol 2)
                if (module, attr) in NAME_MAPPING:
                    module, attr = NAME_MAPPING[(module, attr)]
                else:
                    module = IMPORT_MAPPING.get(module, module)
                named.add(f"{module}.{attr}")
                stack.append(_Global(f"{module}.{attr}"))
            elif name == "MARK":
                metastack.append(stack)
                stack = []
            elif name == "TUPLE":
                consume(*pop_mark())
                stack.append(None)
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                if len(stack) < n:
                    raise IndexError(name)
                consume(*stack[-n:])
                del stack[-n:]
                stack.append(None)
            elif name == "APPEND":
                consume(stack.pop())
            elif name == "BUILD":
                consume(stack.pop(), stack[-1])      # the state, and the object built: never a class
            elif name == "BINPERSID":
                consume(stack.pop())
                stack.append(None)
            elif name == "SETITEM":
                consume(stack.pop(), stack.pop())
            elif name in ("APPENDS", "SETITEMS"):
                consume(*pop_mark())
            elif name == "REDUCE":
                consume(stack.pop(), stack[-1])      # the called object counts as used
                stack[-1] = None
            elif name == "NEWOBJ":
                consume(stack.pop())
                stack[-1] = None                      # the class itself: its one allowed use
            elif name in ("BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name in ("BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "STOP":
                consume(*stack)
            elif name != "PROTO":
                raise ValueError(f"pickle opcode {name}, which no torch weight file uses")
    except (IndexError, KeyError) as e:
        raise ValueError("a malformed pickle") from e
    return named, used


def unsafe_globals(data: bytes) -> set[str]:
    """Globals of a torch.save archive (bytes) outside torch's weights_only defaults; empty if unreadable."""
    try:
        return set(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)))
    except Exception:  # only used to word an error message: any failure just names nothing
        return set()


def read_ultralytics_weights(path: Path) -> dict[str, Any]:
    """Unpickle an ultralytics weight file (torch.save zip) without running code from it.

    Every global of its pickle must be a torch or ultralytics nn.Module subclass used only as the class of
    a stored object, one of the few data helpers the format holds (train args, numpy scalars), or one of
    torch's own weights_only defaults; then torch's weights_only unpickler reads it, allowed just those.
    StageError, naming the offending global, otherwise.
    """
    # Imports every module class the file may name (callers set up ultralytics' offline env first:
    # detection.setup_ultralytics).
    importlib.import_module("ultralytics.nn.tasks")
    bad = f"{path}: not a loadable ultralytics weight file"
    use = "use a detection weight file written by ultralytics (e.g. yolo11n.pt)"
    data = path.read_bytes()       # read once: what is checked is what is loaded
    if data[:4] != ZIP_MAGIC:
        raise StageError(f"{bad} (not a torch.save zip archive); {use}")
    try:
        # torch.load's own zip reader, so the pickle checked is the one torch will read.
        with torch.serialization._open_zipfile_reader(io.BytesIO(data)) as reader:
            pkl = reader.get_record("data.pkl")
    except Exception as e:  # torch's text for a cut-short zip is a paragraph about miniz
        raise StageError(f"{bad} (its zip archive cannot be read: truncated or damaged); {use}") from e
    try:
        named, used = _pickle_globals(pkl)
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)))
    except Exception as e:  # a TorchScript archive, a malformed or unusual pickle
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise StageError(f"{bad} ({detail[:200]}); {use}") from e
    helpers = _data_globals()
    allowed: list[tuple[Any, str]] = []
    refused: list[str] = []
    for name in sorted(named):
        cls = _module_class(name)
        if cls is not None:
            if name in used:
                refused.append(f"{name} (called or passed on, not stored)")
            else:
                allowed.append((cls, name))
        elif name in helpers:
            allowed.append((helpers[name], name))
        elif name in unsafe:
            refused.append(name)
    if refused:
        raise StageError(f"{path}: refused, it is not an ultralytics weight file: loading it would run "
                         f"{', '.join(refused[:3])}, which ultralytics weight files never hold. Nothing from "
                         f"it ran; {use}")
    if "numpy.dtype" in named:   # a dtype is rebuilt as an instance of its own class (e.g. Float64DType)
        allowed += [(type(np.dtype(t)), f"numpy.dtypes.{type(np.dtype(t)).__name__}")
                    for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_)]
    try:
        with torch.serialization.safe_globals(allowed):
            ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged archive, or weights_only refused something the check let through
        found = re.search(r"GLOBAL (\S+)", str(e))
        detail = f"it refers to {found.group(1)}" if found else (str(e).splitlines() or [type(e).__name__])[0]
        raise StageError(f"{bad} ({detail[:200]}); nothing from it ran; {use}") from e
    if not isinstance(ckpt, dict):
        raise StageError(f"{bad} (it holds a {type(ckpt).__name__}, not a checkpoint dict); {use}")
    return ckpt


def check_model_yaml(cfg: Any) -> None:
    """Raise ValueError unless `cfg` is a model yaml that ultralytics builds without evaluating any of it.

    Ultralytics' parse_model eval()s the `activation` string and calls any name of ultralytics.nn.tasks
    as a layer (functions too, such as its own weight loader): a yaml from a file could run code through
    either. So: plain data only, the activation a bare ``nn.Name(literal, ...)``, every layer an nn.Module
    class of torch.nn or ultralytics.nn.modules.
    """
    _check_plain(cfg, "model yaml")
    if not isinstance(cfg, dict):
        raise ValueError("it has no model yaml")
    act = cfg.get("activation")
    if act is not None:
        _check_activation(act)
    for part in ("backbone", "head"):
        layers = cfg.get(part)
        if not isinstance(layers, list) or not layers:
            raise ValueError(f"its model yaml has no {part} layers")
        for layer in layers:
            if not (isinstance(layer, list) and len(layer) == 4 and isinstance(layer[2], str)
                    and isinstance(layer[3], list)):
                raise ValueError(f"its model yaml has a malformed {part} layer {str(layer)[:80]}")
            _check_layer(layer[2])


def _check_plain(obj: Any, where: str, depth: int = 0) -> None:
    if depth > 20:
        raise ValueError(f"its {where} is nested too deeply")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, where, depth + 1)
            _check_plain(v, where, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _check_plain(v, where, depth + 1)
    elif not (obj is None or type(obj) in (str, int, float, bool)):
        raise ValueError(f"its {where} holds a {type(obj).__name__}, not plain data")


def _check_activation(act: Any) -> None:
    """ValueError unless `act` is ``nn.X(...)`` / ``torch.nn.X(...)`` with literal arguments only."""
    import ast

    try:
        call = ast.parse(str(act), mode="eval").body
        if not isinstance(act, str) or not isinstance(call, ast.Call):
            raise ValueError
        path, node = [], call.func
        while isinstance(node, ast.Attribute):
            path.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or [*path[1:], node.id] not in (["nn"], ["nn", "torch"]):
            raise ValueError
        cls = getattr(torch.nn, path[0], None)
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            raise ValueError
        for value in [*call.args, *(kw.value for kw in call.keywords)]:
            ast.literal_eval(value)
        if any(kw.arg is None for kw in call.keywords):      # **kwargs
            raise ValueError
    except (ValueError, SyntaxError, TypeError) as e:
        raise ValueError(f"its model yaml's activation {str(act)[:80]!r} is not a torch.nn module "
                         f"with literal arguments") from e


def _check_layer(name: str) -> None:
    """ValueError unless the layer `name` of a model yaml is a layer class (what parse_model will call)."""
    from ultralytics.nn import tasks

    if name.startswith("nn."):
        obj = getattr(torch.nn, name[3:], None)
    else:
        obj = vars(tasks).get(name)
        # Layers live in ultralytics.nn.modules; TorchVision would fetch torchvision weights.
        if not (isinstance(obj, type) and obj.__module__.startswith("ultralytics.nn.modules.")) \
                or name == "TorchVision":
            obj = None
    if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)):
        raise ValueError(f"its model yaml names {name[:80]!r}, which is not a layer")


