"""The export folder: a trained generator as the files a model hub expects, written all at once.

    model.safetensors, config.json   the generator (stylegan2/portable.py), loadable by every command
    README.md                        the model card (model_card.py), from the project's records
    samples.png                      a grid of fixed seeds at a fixed psi (analysis/sampling.py)
    directions.json                  the explore stage's directions, when given (copied byte for byte)
    generator.onnx                   with onnx: the generator as ONNX, checked by onnxruntime (onnx_graph.py)

The folder is written beside its target under a hidden temporary name (atomic.atomic_folder), read back
through the one loader (load.load_networks) and compared with what was exported, then renamed into place;
an interrupted export leaves the old folder or none, and the next export's sweep (the CLI's
remove_stale_temps, as for every stage) removes the temporary one.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from corgigan.analysis import directions as dirs
from corgigan.analysis import sampling
from corgigan.errors import StageError
from corgigan.export import model_card
from corgigan.stylegan2 import portable
from corgigan.stylegan2.atomic import atomic_folder
from corgigan.stylegan2.load import Loaded, load_networks

log = logging.getLogger(__name__)

CARD = "README.md"
SAMPLES = "samples.png"
DIRECTIONS = "directions.json"
ONNX = "generator.onnx"


@dataclass(frozen=True)
class Settings:
    """How the folder is made (params.yaml `export`, or the command line)."""

    sample_seed: int
    sample_count: int
    truncation_psi: float
    onnx: bool


def facts_of(loaded: Loaded, G: torch.nn.Module) -> model_card.ModelFacts:
    """What the model's own file records, for the card and config.json. A snapshot knows its training config,
    run and dataset; a converted snapshot and a pickle none of them (their config is a guess, their kimg known
    only from a network-snapshot-NNNNNN.pkl name); an export what its config.json kept."""
    info, state = loaded.info, loaded.snapshot
    kimg: float | None = float(info["kimg"])
    config = run = dataset = ada_p = None
    name = None
    if loaded.source == "snapshot" and state is not None:
        config, run, dataset = state["config"], state["run"], state["dataset"]
        name = config["name"]
        ada_p = float(state["augment_p"])
    elif loaded.source == "export":
        record = info["record"]
        name = record["config"] if isinstance(record["config"], str) else None
        kimg = float(record["kimg"]) if isinstance(record["kimg"], (int, float)) else None
        dataset = {"hash": record["dataset_hash"], "num_images": record["num_images"]}
    elif kimg == 0:
        kimg = None       # a pickle or converted snapshot without a network-snapshot-NNNNNN.pkl name
    num_images = dataset.get("num_images") if dataset else None
    return model_card.ModelFacts(
        checkpoint=loaded.path.name, source=loaded.source, resolution=loaded.spec.resolution,
        img_channels=loaded.spec.img_channels, c_dim=loaded.spec.c_dim, z_dim=G.z_dim, w_dim=G.w_dim,
        num_ws=G.num_ws, parameters=sum(p.numel() for p in G.parameters()), kimg=kimg, config_name=name,
        config=config, run=run, dataset_hash=(dataset or {}).get("hash") or None,
        num_images=num_images if isinstance(num_images, int) else None, ada_p=ada_p)


def _check_directions(path: Path, G: torch.nn.Module, facts: model_card.ModelFacts,
                      doc: dict) -> None:
    """A StageError unless `path` is a directions file for this model (read_directions checks its vectors
    against the model's W; its recorded checkpoint, when it has one, must be the exported one)."""
    dirs.directions_of(doc, path, G.w_dim, G.num_ws)
    made_from = doc.get("checkpoint")
    if made_from is not None and made_from != facts.checkpoint:
        raise StageError(f"{path}: directions found in {made_from}, not in {facts.checkpoint}; re-run the "
                         "explore stage on this checkpoint or leave --directions out")


def _write_files(tmp: Path, loaded: Loaded, G: torch.nn.Module, facts: model_card.ModelFacts,
                 records: model_card.Records, settings: Settings, directions: Path | None) -> list[str]:
    """Everything but the card into `tmp`; return the names written, in the card's order."""
    # An export of an export keeps the first one's record of where the model came from.
    source = loaded.info["record"]["source"] if loaded.source == "export" else facts.source
    record = {"config": facts.config_name, "kimg": facts.kimg, "dataset_hash": facts.dataset_hash,
              "num_images": facts.num_images, "source": source}
    portable.write(tmp, loaded.spec, loaded.states["G_ema"], record)
    files = [portable.WEIGHTS, portable.CONFIG, CARD, SAMPLES]
    seeds = list(range(settings.sample_seed, settings.sample_seed + settings.sample_count))
    images = sampling.generate_images(G, seeds, settings.truncation_psi)
    cols = int(np.ceil(np.sqrt(len(seeds))))
    sampling.image_grid(images, cols).save(tmp / SAMPLES, format="PNG")
    if directions is not None:
        shutil.copyfile(directions, tmp / DIRECTIONS)
        files.append(DIRECTIONS)
    return files


def _verify(tmp: Path, loaded: Loaded) -> None:
    """Read the folder back through the one loader: the same tensors, bit for bit, or a bug."""
    again = load_networks(tmp).states["G_ema"]
    want = loaded.states["G_ema"]
    if sorted(again) != sorted(want) or any(not torch.equal(again[k], want[k].float()) for k in want):
        raise RuntimeError(f"{tmp}: the written weights read back differently")


def _onnx(G: torch.nn.Module, tmp: Path, settings: Settings) -> model_card.OnnxFacts:
    """generator.onnx through onnx_graph.write_onnx (imported here: onnx and onnxruntime load only when
    asked)."""
    from corgigan.export.onnx_graph import write_onnx

    check = write_onnx(G, tmp / ONNX, seed=settings.sample_seed, psi=settings.truncation_psi)
    log.info("export: %s, opset %d, max |onnxruntime - torch| %.3g over %d images", ONNX, check.opset,
             check.max_error, check.checked)
    return model_card.OnnxFacts(ONNX, check.opset, check.max_error, check.checked)


def write_export(checkpoint: Path, out: Path, settings: Settings, records: model_card.Records,
                 directions: Path | None = None, device: str | torch.device = "cpu") -> Path:
    """Export the model at `checkpoint` (anything load_networks reads) as the folder `out`; return `out`."""
    loaded, G, _ = sampling.load_model(checkpoint, device)
    facts = facts_of(loaded, G)
    if directions is not None:
        doc = dirs.read_document(directions)
        _check_directions(directions, G, facts, doc)
        records = model_card.Records(**{**vars(records), "directions": doc})
    else:
        records = model_card.Records(**{**vars(records), "directions": None})
    with atomic_folder(out) as tmp:
        files = _write_files(tmp, loaded, G, facts, records, settings, directions)
        onnx = _onnx(G, tmp, settings) if settings.onnx else None
        if onnx is not None:
            files.append(ONNX)
        samples = model_card.Samples(SAMPLES, list(range(settings.sample_seed,
                                                         settings.sample_seed + settings.sample_count)),
                                     settings.truncation_psi)
        (tmp / CARD).write_text(model_card.render(facts, records, samples, onnx, files), encoding="utf-8")
        _verify(tmp, loaded)
    log.info("export: %s (%s, %d px, %s) -> %s: %s", loaded.path.name, loaded.source, facts.resolution,
             "kimg unknown" if facts.kimg is None else f"{facts.kimg:g} kimg", out, ", ".join(files))
    return out
