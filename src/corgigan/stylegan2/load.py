"""Any model file into networks: the one place that tells a reference pickle from our snapshot.

`load_networks(path)` reads a snapshot file, the newest snapshot-*.pt of a folder, a snapshot that
`corgigan convert` wrote, a reference StyleGAN2(-ADA) pickle (PyTorch or TensorFlow, read without
running any of its code), or a portable export folder (config.json + model.safetensors, portable.py; G_ema
only), and returns the weights with what is needed to rebuild them: its network
settings, state dicts and the info that pictures and reports print. `build` turns one of its state dicts
into an eval-mode, frozen network. Sampling, projection, serve and the training loop's resume all go
through here, so a file is judged the same way whatever command reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from corgigan.stylegan2 import configs, importer, portable
from corgigan.stylegan2.configs import NetworkSpec
from corgigan.stylegan2.snapshot import SnapshotError, latest_snapshot, load_snapshot

NETS = ("G_ema", "G", "D")


@dataclass
class Loaded:
    """One model file's networks, read but not yet built."""

    path: Path                            # the file read (for a folder: its newest snapshot-*.pt; an
                                          # export: the folder)
    source: str                           # snapshot | converted snapshot | pytorch pickle | tensorflow pickle
                                          # | export
    spec: NetworkSpec                     # image format and network keywords, enough to rebuild them
    states: dict[str, dict[str, torch.Tensor]]  # "G_ema" always; "G", "D" when asked for and in the file
    info: dict[str, Any]                  # path, config, nimg, kimg, dataset_hash, resolution, num_channels,
                                          # label_dim (+ format for a pickle): what pictures and logs print
    snapshot: dict[str, Any] | None       # the whole snapshot (resume and transfer need it); None: a pickle

    @property
    def from_elsewhere(self) -> bool:
        """A model trained outside corgigan: a reference pickle, or a snapshot `corgigan convert` made of one.
        Its dataset is unknown, so transfer learning checks its image format and weight shapes instead."""
        return self.snapshot is None or importer.is_imported(self.snapshot)


def resolve(path: str | Path) -> Path:
    """`path` itself (a file, or an export folder), or for a folder its newest snapshot-*.pt; SnapshotError
    when the folder has none."""
    path = Path(path)
    if path.is_dir() and not portable.is_portable(path):
        latest = latest_snapshot(path)
        if latest is None:
            raise SnapshotError(f"{path}: no snapshot-*.pt in this folder (run the train stage first)")
        return latest
    return path


def load_networks(path: str | Path, training_nets: bool = False) -> Loaded:
    """Read the model at `path` (see the module docstring). `training_nets` also keeps G and D where the
    file has them; G_ema is always read. Raises SnapshotError (PickleError for a pickle) saying what is
    wrong, among it stored settings that G, G_ema or D cannot be built from, or that describe networks
    larger than the file could hold weights for (importer.check_buildable, for both kinds of file)."""
    path = resolve(path)
    if portable.is_portable(path):
        return _load_export(path)
    if importer.is_pickle(path):
        imp = importer.import_pickle(path, with_training_nets=training_nets)
        kimg = imp.kimg if imp.kimg is not None else 0.0
        n = imp.spec
        states = {k: v for k, v in (("G_ema", imp.G_ema), ("G", imp.G), ("D", imp.D)) if v is not None}
        info = {"path": imp.path, "config": None, "nimg": int(kimg * 1000), "kimg": kimg, "dataset_hash": "",
                "resolution": n.resolution, "num_channels": n.img_channels, "label_dim": n.c_dim,
                "format": f"{imp.kind} pickle"}
        return Loaded(path, f"{imp.kind} pickle", n, states, info, None)
    state = load_snapshot(path, map_location="cpu")
    cfg, data = state["config"], state["dataset"]
    spec = NetworkSpec(int(cfg["resolution"]), int(data["num_channels"]), int(data["label_dim"]),
                       cfg["G_kwargs"], cfg["D_kwargs"])
    # Judged like a pickle (import_pickle does the same): settings every network can be built from, and
    # networks no bigger than the file's own weights, before any reader builds one for real.
    importer.check_buildable(spec, path, NETS)
    states = {k: state[k] for k in (NETS if training_nets else NETS[:1])}
    nimg = int(state["progress"]["nimg"])
    info = {"path": path, "config": cfg, "nimg": nimg, "kimg": nimg / 1000, "dataset_hash": data["hash"],
            "resolution": data["resolution"], "num_channels": data["num_channels"],
            "label_dim": data["label_dim"]}
    source = "converted snapshot" if importer.is_imported(state) else "snapshot"
    return Loaded(path, source, spec, states, info, state)


def _load_export(folder: Path) -> Loaded:
    """An export folder: G_ema and the record its config.json keeps (kimg, config name, dataset identity)."""
    found = portable.read_config(folder)
    # Judged like every other file: buildable settings, and no more network than the weights file could fill.
    importer.check_buildable(found.spec, folder / portable.WEIGHTS, ("G_ema",))
    state = portable.read_weights(found)
    m, n = found.model, found.spec
    kimg = float(m["kimg"]) if isinstance(m["kimg"], (int, float)) else 0.0
    info = {"path": folder, "config": None, "nimg": round(kimg * 1000), "kimg": kimg,
            "dataset_hash": m["dataset_hash"] if isinstance(m["dataset_hash"], str) else "",
            "resolution": n.resolution, "num_channels": n.img_channels, "label_dim": n.c_dim,
            "format": "export", "record": m}
    return Loaded(folder, "export", n, {"G_ema": state}, info, None)


def build(loaded: Loaded, net: str = "G_ema", device: str | torch.device = "cpu") -> torch.nn.Module | None:
    """Network `net` (G_ema, G or D) of `loaded` with its weights, on `device`, in eval mode and frozen;
    None when the file does not hold it (or it was not asked for). Building draws its throwaway initial
    values from a forked generator, so loading a model leaves the process's torch generator untouched."""
    if net not in NETS:
        raise ValueError(f"net {net!r}: must be one of {', '.join(NETS)}")
    state = loaded.states.get(net)
    if state is None:
        return None
    G, D = configs.build_networks(loaded.spec, with_D=net == "D", keep_rng=True)
    module = D if net == "D" else G
    assert module is not None
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise SnapshotError(f"{loaded.path}: {net} does not fit the networks of its own config ({e})") from e
    return module.to(device).eval().requires_grad_(False)
