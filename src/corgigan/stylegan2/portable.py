"""The portable generator: a folder holding `model.safetensors` and `config.json`, the layout model hubs use.

    model.safetensors   G_ema's state dict (mapping.w_avg and the synthesis constant noise included), float32
                        tensors under our names; its metadata holds only {"format": FORMAT}
    config.json         {"format": FORMAT, "version": VERSION, "resolution", "img_channels", "c_dim",
                         "generator": the Generator keywords besides those three, "model": what the model
                         card and pictures print (config name, kimg, dataset identity, source); null: unknown}

Nothing else is needed to rebuild the network: `read_config` gives its NetworkSpec (with no D: an export
carries no discriminator) and `read_weights` its tensors. Reading runs no code (JSON and safetensors only),
and is bounded by the files' real sizes: config.json is refused past MAX_CONFIG_BYTES, and the safetensors
header is checked against the file before the library reads it (the library validates every tensor's offsets
against the file in turn). Every stored tensor must have exactly the name, shape and dtype that the network of
config.json has, so a tampered file is refused by name instead of loading into the wrong places.

`write` puts both files in a folder (the caller makes the folder atomic); the same state and record give the
same bytes: keys sorted, no dates, no paths.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from corgigan.stylegan2 import configs
from corgigan.stylegan2.configs import NetworkSpec
from corgigan.stylegan2.snapshot import SnapshotError

FORMAT = "corgigan-portable-generator"
VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
MAX_CONFIG_BYTES = 1 << 20      # a config is a few hundred bytes; a larger one is not ours
MAX_HEADER_BYTES = 16 << 20     # safetensors' JSON header: ~100 bytes per tensor, a few hundred tensors
MODEL_KEYS = ("config", "kimg", "dataset_hash", "num_images", "source")   # config.json "model", in order


@dataclass(frozen=True)
class Portable:
    """A portable folder's config: the network it rebuilds and the record of where it came from."""

    path: Path               # the folder
    spec: NetworkSpec        # D_kwargs None: the folder holds the generator only
    model: dict[str, Any]    # MODEL_KEYS; None where the exporter did not know


def is_portable(path: str | Path) -> bool:
    """True for a folder holding config.json and model.safetensors (what `write` makes)."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def write(folder: str | Path, spec: NetworkSpec, G_ema: dict[str, torch.Tensor],
          model: dict[str, Any]) -> None:
    """Write `folder`/model.safetensors (the state dict `G_ema`, float32, on the CPU) and `folder`/config.json
    (`spec` without its D, and `model`: the MODEL_KEYS record, None for what is unknown)."""
    folder = Path(folder)
    unknown = sorted(set(model) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(f"model record keys {unknown} are not among {MODEL_KEYS}")
    # Fresh contiguous copies: safetensors refuses tensors that share storage, and float32 keeps the values.
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in sorted(G_ema.items())}
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": FORMAT})
    doc = {"format": FORMAT, "version": VERSION, "resolution": spec.resolution,
           "img_channels": spec.img_channels, "c_dim": spec.c_dim, "generator": spec.G_kwargs,
           "model": {k: model.get(k) for k in MODEL_KEYS}}
    (folder / CONFIG).write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_config(folder: str | Path) -> Portable:
    """The network and record of a portable folder; SnapshotError (one line) when config.json is not one."""
    folder = Path(folder)
    path = folder / CONFIG
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise SnapshotError(f"{path}: {size:,} bytes, not a portable generator config (at most "
                            f"{MAX_CONFIG_BYTES:,})")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise SnapshotError(f"{path}: not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SnapshotError(f"{path}: not a portable generator config (format {FORMAT!r} expected)")
    if doc.get("version") != VERSION:
        raise SnapshotError(f"{path}: version {doc.get('version')!r} of {FORMAT}; this corgigan reads "
                            f"version {VERSION}")
    G_kwargs, model = doc.get("generator"), doc.get("model")
    if not isinstance(G_kwargs, dict) or not isinstance(model, dict):
        raise SnapshotError(f"{path}: 'generator' and 'model' must be objects")
    try:
        resolution = configs.check_size("resolution", doc.get("resolution"))
        img_channels = configs.check_size("img_channels", doc.get("img_channels"))
        c_dim = configs.check_size("c_dim", doc.get("c_dim"))
        configs.check_network_kwargs(G_kwargs, {})
    except ValueError as e:
        raise SnapshotError(f"{path}: {e}") from None
    record = {k: model.get(k) for k in MODEL_KEYS}
    return Portable(folder, NetworkSpec(resolution, img_channels, c_dim, G_kwargs, None), record)


def read_weights(portable: Portable) -> dict[str, torch.Tensor]:
    """G_ema's state dict from the folder's model.safetensors, checked tensor by tensor against the network
    of its config.json (names, shapes, float32); SnapshotError saying what does not fit."""
    path = portable.path / WEIGHTS
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise SnapshotError(f"{path}: not a safetensors file ({size} bytes)")
    (header,) = struct.unpack("<Q", head)
    if header > min(size - 8, MAX_HEADER_BYTES):
        raise SnapshotError(f"{path}: declares a {header:,}-byte header in a {size:,}-byte file; not a "
                            "safetensors file this program wrote")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise SnapshotError(f"{path}: not a readable safetensors file ({e})") from None
    with torch.device("meta"):
        G, _ = configs.build_networks(portable.spec, with_D=False, keep_rng=True)
    want = {k: (tuple(v.shape), v.dtype) for k, v in G.state_dict().items()}
    have = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or extra or wrong:
        parts = [f"missing {_few(missing)}" if missing else "", f"unexpected {_few(extra)}" if extra else "",
                 "; ".join(f"{k} is {list(have[k][0])} {have[k][1]}, the config's network has "
                           f"{list(want[k][0])} {want[k][1]}" for k in wrong[:3])]
        raise SnapshotError(f"{path}: its tensors do not fit the network of {CONFIG}: "
                            + "; ".join(p for p in parts if p))
    return tensors


def _few(names: list[str]) -> str:
    """Up to three names, then how many more."""
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more
