"""Training snapshots: everything needed to resume a run exactly, as state dicts and plain data.

A snapshot is a dict saved with torch.save and read back with ``weights_only=True`` (no pickled code):

    format      SNAPSHOT_FORMAT
    config      configs.config_to_dict(cfg): rebuilds the networks
    run         the loop arguments that shape the trajectory (seed, augment, mirror, ...)
    dataset     {"hash": sha256 of the zip, "resolution", "num_channels", "label_dim", "num_images"}
    progress    {"nimg", "batch_idx", "tick"}
    G, D, G_ema, G_opt, D_opt   state dicts
    augment_p, ada_signs [sum, count], pl_mean
    rng         torch CPU/CUDA, numpy and python generator states

Files are named by the images shown so far, ``snapshot-<nimg, 9 digits>.pt``, and written atomically.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import random
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corgigan.stylegan2 import configs
from corgigan.stylegan2.atomic import atomic_path

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "corgigan-stylegan2-snapshot/1"
REQUIRED_KEYS = ("format", "config", "run", "dataset", "progress", "G", "D", "G_ema", "G_opt", "D_opt",
                 "augment_p", "ada_signs", "pl_mean", "rng")
_NAME = re.compile(r"^snapshot-(\d{9,})\.pt$")


class SnapshotError(RuntimeError):
    """A snapshot is missing, corrupt, or belongs to another config or dataset; the message says which."""


def snapshot_name(nimg: int) -> str:
    """File name of the snapshot taken after `nimg` images."""
    return f"snapshot-{nimg:09d}.pt"


def grid_name(nimg: int) -> str:
    """File name of the fixed-latent image grid taken with the snapshot after `nimg` images."""
    return f"grid-{nimg:09d}.png"


def list_snapshots(directory: str | Path) -> list[tuple[int, Path]]:
    """(nimg, path) of every snapshot file in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_snapshot(directory: str | Path) -> Path | None:
    """The snapshot with the most images shown in `directory`, or None."""
    found = list_snapshots(directory)
    return found[-1][1] if found else None


def save_snapshot(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` with torch.save to a temporary file beside `path`, then rename it into place."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"snapshot state lacks {missing}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(_canonical(state), f)


def _canonical(obj: Any) -> Any:
    """A fresh copy of the containers with every string interned.

    Pickle shares repeated objects by identity, so equal states built differently (fresh vs. loaded
    from a snapshot) would otherwise serialise to different bytes.
    """
    if isinstance(obj, dict):
        return {_canonical(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_canonical(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_canonical(v) for v in obj)
    if isinstance(obj, str):
        return sys.intern(str(obj))
    return obj


def load_snapshot(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a snapshot (weights_only=True). Raises SnapshotError if missing, truncated or not ours."""
    path = Path(path)
    if not path.is_file():
        raise SnapshotError(f"{path}: snapshot not found")
    what = (f"a corgigan snapshot is a file of state dicts and plain data ({SNAPSHOT_FORMAT}) that "
            f"`corgigan train` writes as snapshot-NNNNNNNNN.pt, read with weights_only")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refused what the pickle asks for (a class or function, i.e. code) or it is no pickle
        # at all.
        global_name = refused_global(e)
        detail = (f"it holds a reference to {global_name}, code that no snapshot contains" if global_name
                  else "not a torch file of tensors and plain data")
        raise SnapshotError(f"{path}: not a corgigan snapshot ({detail}); {what}. It was not loaded, "
                            f"and nothing in it ran") from e
    except Exception as e:  # damaged archives and files that are not torch files at all
        with path.open("rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04":  # torch.save's zip, cut short or damaged (torch's own text is noise)
            raise SnapshotError(f"{path}: snapshot is truncated or corrupt (its archive cannot be read); "
                                f"delete it to fall back to the previous one") from e
        kind = "an empty file" if not head else "not a torch file"
        raise SnapshotError(f"{path}: not a corgigan snapshot ({kind}); {what}") from e
    if not isinstance(state, dict) or state.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"{path}: not a corgigan StyleGAN2 snapshot (format {SNAPSHOT_FORMAT} expected)")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise SnapshotError(f"{path}: snapshot is incomplete, it lacks {missing}")
    try:
        # Everything that rebuilds the networks is checked here, once, so no reader of a snapshot meets a
        # config it cannot build (a KeyError or a torch error deep inside a constructor).
        cfg = configs.config_from_dict(state["config"])
        _check_dataset_record(state["dataset"], cfg.resolution)
    except ValueError as e:
        raise SnapshotError(f"{path}: the snapshot's stored networks cannot be rebuilt: {e}") from None
    return state


def _check_dataset_record(data: Any, resolution: int) -> None:
    """ValueError unless `data` is a snapshot's dataset record with usable image format and labels, made
    at the config's `resolution`."""
    if not isinstance(data, dict):
        raise ValueError(f"its dataset record is a {type(data).__name__}, not a dict")
    for key, kind in (("resolution", "resolution"), ("num_channels", "img_channels"), ("label_dim", "c_dim")):
        if key not in data:
            raise ValueError(f"its dataset record lacks {key}")
        configs.check_size(kind, data[key], f"dataset.{key}")
    # The networks are built at the config's resolution, while pictures and reports print the record's:
    # two sizes for one model means one of them was damaged.
    if data["resolution"] != resolution:
        raise ValueError(f"dataset.resolution = {data['resolution']} disagrees with config.resolution = "
                         f"{resolution}")
    if not isinstance(data.get("hash"), str):
        raise ValueError("its dataset record has no hash string")


def refused_global(e: BaseException) -> str | None:
    """The global that torch's weights_only loader refused in `e` (None for other failures).

    torch's message runs to several lines and advises retrying with weights_only=False, which would run
    the refused code: callers give one line naming the global instead.
    """
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    return found.group(1) if found else None


def exception_line(e: BaseException) -> str:
    """`e` as one line for an error message: its type and first non-empty line (torch's weights_only
    refusals as the global they refused, without the advice to load the file with weights_only=False)."""
    global_name = refused_global(e)
    if global_name:
        return f"{type(e).__name__}: the global {global_name} is refused"
    # torch's weights_only messages put their advice on the lines that name the option; the reason is
    # on another line ("WeightsUnpickler error: Unsupported operand ...").
    lines = [line.strip() for line in str(e).splitlines() if line.strip() and "weights_only" not in line]
    if not lines and "weights_only" in str(e):
        lines = ["refused by torch's weights-only loader"]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def make_state(*, config: dict[str, Any], run: dict[str, Any], dataset: dict[str, Any],
               progress: dict[str, int], networks: dict[str, dict[str, torch.Tensor]],
               optimizers: dict[str, dict[str, Any]], augment_p: float = 0.0,
               ada_signs: tuple[float, float] | list[float] = (0.0, 0.0), pl_mean: float = 0.0,
               rng: dict[str, Any] | None = None) -> dict[str, Any]:
    """A snapshot: the fields of SNAPSHOT_FORMAT (module docstring), every tensor moved to the CPU.

    `networks` holds the G, D and G_ema state dicts, `optimizers` the G and D Adam state dicts; `rng`
    defaults to the process's generator states now.
    """
    return _to_cpu({
        "format": SNAPSHOT_FORMAT, "config": config, "run": dict(run), "dataset": dict(dataset),
        "progress": {k: int(progress[k]) for k in ("nimg", "batch_idx", "tick")},
        "G": networks["G"], "D": networks["D"], "G_ema": networks["G_ema"],
        "G_opt": optimizers["G"], "D_opt": optimizers["D"],
        "augment_p": float(augment_p), "ada_signs": [float(v) for v in ada_signs], "pl_mean": float(pl_mean),
        "rng": capture_rng() if rng is None else rng,
    })


@dataclasses.dataclass(frozen=True)
class Counters:
    """The training state of a snapshot besides weights: where the run is and its running estimates."""

    nimg: int
    batch_idx: int
    tick: int
    augment_p: float
    ada_signs: tuple[float, float]
    pl_mean: float


def restore_state(state: dict[str, Any], networks: dict[str, torch.nn.Module],
                  optimizers: dict[str, torch.optim.Optimizer] | None = None) -> Counters | None:
    """Load a snapshot's weights into `networks` (G, D, G_ema); with `optimizers` (G, D) also their
    states and the generators' states, returning the counters to continue from (None without)."""
    for name, module in networks.items():
        try:
            module.load_state_dict(state[name])
        except RuntimeError as e:
            raise SnapshotError(f"snapshot {name} does not fit this config's network: {e}") from e
    if optimizers is None:
        return None
    for name, opt in optimizers.items():
        opt.load_state_dict(state[f"{name}_opt"])
    restore_rng(state["rng"])
    prog = state["progress"]
    signs = state["ada_signs"]
    return Counters(int(prog["nimg"]), int(prog["batch_idx"]), int(prog["tick"]), float(state["augment_p"]),
                    (float(signs[0]), float(signs[1])), float(state["pl_mean"]))


def _to_cpu(obj: Any) -> Any:
    """Nested containers with every tensor detached and moved to the CPU (snapshots load anywhere)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def differences(stored: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable list of keys whose values differ between two nested dicts (empty if equal)."""
    out: list[str] = []
    for key in sorted(set(stored) | set(current), key=str):
        name = f"{prefix}{key}"
        a, b = stored.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(differences(a, b, f"{name}."))
        elif _normalise(a) != _normalise(b):
            out.append(f"{name}: snapshot {a!r}, now {b!r}")
    return out


def _normalise(v: Any) -> Any:
    # Tuples come back from torch.load as tuples, from configs as tuples or lists: compare as lists.
    if isinstance(v, (list, tuple)):
        return [_normalise(x) for x in v]
    return v


def architecture(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config dict that fixes the networks' shapes (what weights can be loaded into)."""
    return {k: config[k] for k in ("resolution", "G_kwargs", "D_kwargs") if k in config}


def capture_rng() -> dict[str, Any]:
    """States of the torch (CPU and CUDA), numpy and python generators as weights_only-safe data."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Restore generator states captured by capture_rng (CUDA only when the device count matches)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))

