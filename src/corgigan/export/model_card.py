"""The model card: the export folder's README.md, written from the project's own records.

A card says only what a record says. Each record is used when it describes the exported model and said to
be unknown otherwise:

- the model's own record (`ModelFacts`): a snapshot's training config, run settings and dataset identity;
  a reference pickle or a converted snapshot knows none of them (its kimg only from a
  network-snapshot-NNNNNN.pkl name), an export folder what its config.json kept;
- the data: params.yaml's scrape and filter sections and reports/funnel.json describe the pipeline's dataset,
  so they are the model's only when it is a snapshot this pipeline trained at filter.resolution on that many
  images (the funnel's kept count, or train.subset of them);
- the scores: reports/metrics.json names the snapshot it scored; the directions file and reports/explore.json
  name the checkpoint they were found in. Another model's numbers are left out, and the card says so.

`render` gives the whole text: Hugging Face model-card front matter (license "other": no license is recorded
for the weights or the photos they learnt from), then the sections. No dates, no absolute paths: the same
records give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corgigan.params import FilterParams, ScrapeParams
from corgigan.stylegan2 import configs
from corgigan.stylegan2.snapshot import differences

UNKNOWN = "unknown (not recorded)"
# Run settings a snapshot records, as the card names them.
RUN_KEYS = ("seed", "augment", "augment_p", "ada_target", "augpipe", "mirror", "subset", "freeze_d",
            "resume_from")


@dataclass(frozen=True)
class ModelFacts:
    """What the exported model's own file says about it."""

    checkpoint: str                  # the file (or folder) name read, without its folder
    source: str                      # load.Loaded.source: snapshot, converted snapshot, ... pickle, export
    resolution: int
    img_channels: int
    c_dim: int
    z_dim: int
    w_dim: int
    num_ws: int
    parameters: int                  # numbers in G_ema's parameters (buffers left out)
    kimg: float | None               # None: unknown
    config_name: str | None          # train.config it was trained with; None: unknown
    config: dict[str, Any] | None    # the snapshot's whole training config (configs.config_to_dict)
    run: dict[str, Any] | None       # the snapshot's run settings
    dataset_hash: str | None         # identity of the zip it was trained on
    num_images: int | None           # images it was trained on
    ada_p: float | None = None       # the augmentation probability reached at this snapshot; None: unknown


@dataclass(frozen=True)
class Records:
    """The pipeline's records offered to the card (None: not given); `describe` keeps those of this model."""

    scrape: ScrapeParams | None = None
    filter: FilterParams | None = None
    funnel: dict[str, Any] | None = None        # reports/funnel.json
    metrics: dict[str, Any] | None = None       # reports/metrics.json
    explore: dict[str, Any] | None = None       # reports/explore.json
    directions: dict[str, Any] | None = None    # the directions file, as JSON


@dataclass(frozen=True)
class Samples:
    """The sample grid shipped in the folder."""

    file: str
    seeds: list[int]
    psi: float


@dataclass(frozen=True)
class OnnxFacts:
    """What `corgigan export --onnx` measured of generator.onnx."""

    file: str
    opset: int
    max_error: float
    checked: int


def own_data(facts: ModelFacts, records: Records) -> bool:
    """True when params.yaml's data sections and the funnel describe the data this model was trained on."""
    if facts.source != "snapshot" or not facts.dataset_hash or records.filter is None:
        return False
    if records.filter.resolution != facts.resolution:
        return False
    return records.funnel is None or _funnel_matches(facts, records.funnel)


def _funnel_matches(facts: ModelFacts, funnel: dict[str, Any]) -> bool:
    kept = funnel.get("kept")
    subset = (facts.run or {}).get("subset")
    return facts.num_images is not None and (kept == facts.num_images or (subset == facts.num_images
                                                                          and isinstance(kept, int)
                                                                          and kept >= subset))


def own_scores(facts: ModelFacts, record: dict[str, Any] | None, key: str) -> bool:
    """True when `record` (metrics.json: key "snapshot"; explore.json, directions: "checkpoint") names the
    exported checkpoint."""
    return record is not None and record.get(key) == facts.checkpoint


def render(facts: ModelFacts, records: Records, samples: Samples, onnx: OnnxFacts | None,
           files: list[str]) -> str:
    """The README.md of the export folder (`files`: the names the folder holds, in order)."""
    parts = [_front_matter(), _summary(facts, records, files), _data(facts, records), _training(facts),
             _metrics(facts, records), _directions(facts, records), _samples(samples), _onnx(onnx),
             _limitations(facts, records), _usage(facts, samples, onnx is not None)]
    return "\n".join(p.rstrip("\n") + "\n" for p in parts if p)


def _front_matter() -> str:
    return "\n".join([
        "---",
        "license: other",
        "library_name: pytorch",
        "pipeline_tag: unconditional-image-generation",
        "tags:",
        "- gan",
        "- stylegan2",
        "- stylegan2-ada",
        "- safetensors",
        "- corgigan",
        "- dogs",
        "---",
    ])


def _num(value: float) -> str:
    """A number as the card prints it: integers plain, others to 4 significant digits."""
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def _summary(facts: ModelFacts, records: Records, files: list[str]) -> str:
    # What it was trained on, not what it draws: a short run's pictures need not show a dog at all (the
    # metrics section gives the detector's measure when the explore stage ran on this checkpoint).
    what = ("square crops of one dog each, cut from the source below by the pipeline's filter"
            if own_data(facts, records) else "images that are not recorded here")
    kimg = UNKNOWN if facts.kimg is None else f"{_num(facts.kimg)} kimg"
    cond = f", conditioned on {facts.c_dim} label dimensions" if facts.c_dim else ""
    lines = [
        f"# StyleGAN2-ADA generator, {facts.resolution} px",
        "",
        f"A StyleGAN2-ADA generator (the moving average G_ema) that draws "
        f"{facts.resolution}x{facts.resolution} "
        f"{'RGB' if facts.img_channels == 3 else f'{facts.img_channels}-channel'} images from a "
        f"{facts.z_dim}-d latent z{cond}, trained on {what}. Exported by corgigan from `{facts.checkpoint}` "
        f"({facts.source}).",
        "",
        "| | |",
        "| --- | --- |",
        f"| parameters | {facts.parameters:,} |",
        f"| latents | z {facts.z_dim}, w {facts.w_dim}, {facts.num_ws} ws |",
        f"| trained | {kimg} |",
        f"| config | {facts.config_name or UNKNOWN} |",
        "",
        "Files: " + ", ".join(f"`{f}`" for f in files) + ".",
    ]
    return "\n".join(lines) + "\n"


def _source(scrape: ScrapeParams) -> str:
    if scrape.source == "synthetic":
        s = scrape.synthetic
        return (f"synthetic: scenes drawn by corgigan (seed {s.seed}, {s.num_images} single-dog scenes with "
                f"short sides {s.min_short_side}-{s.max_short_side} px, plus {s.planted_per_case} of each "
                "planted case); drawings, not photographs")
    if scrape.source == "folder":
        # The folder's name only: a path on the exporting machine means nothing elsewhere.
        return f"folder: local photos (`{Path(scrape.folder.path).name}`)"
    tags = ", ".join(f"#{t}" for t in scrape.instagram.hashtags)
    return f"instagram: posts under {tags}, at most {scrape.instagram.max_posts} per hashtag"


def _data(facts: ModelFacts, records: Records) -> str:
    lines = ["## Data", ""]
    if not own_data(facts, records):
        ours = facts.source == "snapshot" and facts.dataset_hash
        why = ("the model was not trained by this pipeline" if not ours
               else "no params or funnel that match this model's dataset were given")
        lines.append(f"Training data: {UNKNOWN}; {why}.")
        if facts.num_images:
            lines.append(f"The snapshot records {facts.num_images:,} training images (dataset "
                         f"`{(facts.dataset_hash or '')[:12]}`).")
        return "\n".join(lines) + "\n"
    assert records.scrape is not None and records.filter is not None
    f = records.filter
    lines += [f"- Source: {_source(records.scrape)}.",
              f"- Dataset identity: `{(facts.dataset_hash or '')[:12]}` ({facts.num_images:,} images).", ""]
    funnel = records.funnel
    if funnel is None:
        lines.append(f"Funnel counts: {UNKNOWN}.")
    else:
        lines += ["| step | entered | kept | rejected (reason: count) |", "| --- | --- | --- | --- |"]
        steps = (("filter", funnel.get("filter")), ("dedup", funnel.get("dedup")), ("overall", funnel))
        for name, step in steps:
            if isinstance(step, dict):
                rejected = ", ".join(f"{r}: {n}" for r, n in sorted(step.get("rejected", {}).items()) if n)
                lines.append(f"| {name} | {step.get('entered')} | {step.get('kept')} | "
                             f"{rejected or 'none'} |")
    lines += ["", "Filter thresholds (params.yaml `filter`): "
              f"short side >= {f.min_side} px, crop side >= {f.min_crop} px, at most {f.max_dogs} dog(s), "
              f"best box confidence >= {f.min_confidence}, cover >= {f.min_cover}, centre shift <= "
              f"{f.max_center_shift}, partial dogs {'kept' if f.allow_partial else 'rejected'}; crops "
              "resized "
              f"to {f.resolution} px ({f.resize_filter})."]
    return "\n".join(lines) + "\n"


def _knob_changes(facts: ModelFacts) -> list[str]:
    """The training settings that differ from the config's own at this resolution on one GPU."""
    assert facts.config is not None and facts.config_name is not None
    default = configs.config_to_dict(configs.make_config(facts.config_name, facts.resolution))
    return [d.replace("snapshot ", "default ").replace(", now ", ", used ")
            for d in differences(default, facts.config)]


def _ema_rampup(config: dict[str, Any], kimg: float | None) -> str:
    """The ramp-up that shortens G_ema's half-life early in training (loop.ema_beta), with the half-life it
    had at the end when the run stopped inside the ramp: a short run's G_ema averages far fewer images than
    ema_kimg says."""
    rampup, ema_kimg = config.get("ema_rampup"), config.get("ema_kimg")
    if not isinstance(rampup, (int, float)) or not isinstance(ema_kimg, (int, float)):
        return ""
    text = f" (ramped up over the first images: at most {_num(rampup)} of the images shown"
    if kimg is not None and kimg * rampup < ema_kimg:
        text += f", so {kimg * rampup:.3g} kimg at the end of this run"
    return text + ")"


def _training(facts: ModelFacts) -> str:
    lines = ["## Training", ""]
    kimg = (UNKNOWN if facts.kimg is None
            else f"{_num(facts.kimg)} kimg ({round(facts.kimg * 1000):,} images shown)")
    lines.append(f"- Length: {kimg}.")
    lines.append(f"- Config: {facts.config_name or UNKNOWN}.")
    if facts.config is not None and facts.config_name is not None:
        try:
            changed = _knob_changes(facts)
        except ValueError:
            changed = None
        if changed is None:
            lines.append("- Settings against the config's defaults: cannot be compared.")
        elif changed:
            lines.append(f"- Settings that differ from {facts.config_name}'s defaults at {facts.resolution} "
                         "px (one GPU): " + "; ".join(changed) + ".")
        else:
            lines.append(f"- Settings: {facts.config_name}'s defaults at {facts.resolution} px (one GPU).")
        c = facts.config
        lines.append(f"- Batch {c.get('batch')}, R1 gamma {_num(c.get('r1_gamma', 0))}, learning rates "
                     f"G {c.get('G_lr')} / D {c.get('D_lr')}, G_ema half-life "
                     f"{_num(c.get('ema_kimg', 0))} kimg{_ema_rampup(c, facts.kimg)}.")
    if facts.run:
        shown = {k: facts.run[k] for k in RUN_KEYS if k in facts.run and facts.run[k] not in ("", None)}
        if "resume_from" in shown:   # a path on the training machine: its name says enough
            shown["resume_from"] = Path(str(shown["resume_from"])).name
        if "augment_p" in shown:     # the run's setting is where p started; ADA moves it from there
            shown["augment_p"] = f"{shown['augment_p']} (at the start)"
        lines.append("- Run: " + ", ".join(f"{k} {v}" for k, v in shown.items()) + ".")
    if facts.ada_p is not None:
        lines.append(f"- Augmentation probability at this snapshot: {_num(facts.ada_p)}.")
    lines.append(f"- GPU hours: {UNKNOWN}.")
    return "\n".join(lines) + "\n"


def _metrics(facts: ModelFacts, records: Records) -> str:
    lines = ["## Metrics", ""]
    m = records.metrics
    if not own_scores(facts, m, "snapshot"):
        other = f" (reports/metrics.json scores `{m.get('snapshot')}`, another checkpoint)" if m else ""
        lines.append(f"FID / KID: {UNKNOWN}{other}.")
        return "\n".join(lines + _dogs_found(facts, records)) + "\n"
    assert m is not None
    features = m.get("features")
    lines += ["| metric | value |", "| --- | --- |"]
    for key in (f"fid_{features}", f"kid_{features}"):
        if key in m:
            lines.append(f"| {key} | {m[key]} |")
    lines.append("")
    lines.append(f"Feature extractor: {features}. {m.get('num_generated')} generated images (truncation psi "
                 f"{m.get('truncation_psi')}) against {m.get('num_real')} training images, at "
                 f"{_num(float(m.get('kimg', 0)))} kimg.")
    if features == "pixels":
        lines.append("These scores use downsampled pixels as features, not Inception-v3: they compare runs "
                     "of this project with each other and are NOT comparable to published FIDs.")
    elif features == "inception":
        lines.append("Inception-v3 features (clean-fid's inception-2015-12-05 weights), as published FIDs "
                     "use; FID also depends on the number of images compared.")
    if m.get("same_dataset") is False:
        lines.append("The scores were measured against another dataset than the one the model was trained "
                     "on.")
    return "\n".join(lines + _dogs_found(facts, records)) + "\n"


def _dogs_found(facts: ModelFacts, records: Records) -> list[str]:
    """The explore stage's measure of what the model draws: the share of its pictures in which the
    pipeline's own dog detector found a dog (none when explore.json is another checkpoint's)."""
    e = records.explore
    if not own_scores(facts, e, "checkpoint") or not isinstance(e.get("dogs_found"), (int, float)):
        return []
    return ["", f"Dogs drawn: the pipeline's dog detector found a dog in {e['dogs_found']:.0%} of "
            f"{e.get('num_labelled')} generated images (reports/explore.json)."]


def _directions(facts: ModelFacts, records: Records) -> str:
    d = records.directions
    if d is None:
        return "## Directions\n\nNone shipped.\n"
    explore = records.explore if own_scores(facts, records.explore, "checkpoint") else None
    lines = ["## Directions", "",
             "`directions.json` (corgigan-directions/1) holds unit directions in W; `corgigan generate "
             "--what edit --direction NAME` and `corgigan serve` move latents along them.", "",
             "| name | method | ws (FIRST-STOP, as `--layers`) | measured |", "| --- | --- | --- | --- |"]
    for name, entry in d.get("directions", {}).items():
        measured = []
        if explore and name in explore.get("accuracy", {}):
            # An accuracy means little without the share a constant guess gets on the same held-out set.
            chance = f" (chance {entry['chance']})" if isinstance(entry.get("chance"), (int, float)) else ""
            measured.append(f"held-out accuracy {explore['accuracy'][name]}{chance}")
            if name in explore.get("rank_corr", {}):
                measured.append(f"rank correlation {explore['rank_corr'][name]}")
        elif explore and name in explore.get("explained_variance", {}):
            measured.append(f"explained variance {explore['explained_variance'][name]}")
        layers = entry.get("layers", [])
        ranged = isinstance(layers, list) and len(layers) == 2 and layers != [0, facts.num_ws]
        ws = f"{layers[0]}-{layers[1]}" if ranged else "all"
        method = entry.get("method", "unknown")
        lines.append(f"| {name} | {method} | {ws} | {', '.join(measured) or UNKNOWN} |")
    if explore is None:
        lines += ["", "Measurements: " + UNKNOWN + " (no reports/explore.json of this checkpoint)."]
    return "\n".join(lines) + "\n"


def _samples(samples: Samples) -> str:
    seeds = samples.seeds
    consecutive = seeds == list(range(seeds[0], seeds[-1] + 1))
    span = f"{seeds[0]}-{seeds[-1]}" if consecutive else ",".join(map(str, seeds))
    return (f"## Samples\n\n![samples]({samples.file})\n\n`{samples.file}`: seeds {span}, truncation psi "
            f"{_num(samples.psi)}, constant noise (the same pictures `corgigan generate --seeds {span} --psi "
            f"{_num(samples.psi)}` draws from this folder).\n")


def _onnx(onnx: OnnxFacts | None) -> str:
    if onnx is None:
        return ""
    return (f"## ONNX\n\n`{onnx.file}` (opset {onnx.opset}): inputs `z` [N, z_dim] float32 and `psi` (a "
            "float32 scalar), plus `c` [N, c_dim] for a conditional model; output `image` [N, C, H, W] "
            f"float32 in about [-1, 1]. Checked against the PyTorch generator with onnxruntime on "
            f"{onnx.checked} images: max absolute error {onnx.max_error:.3g}. Run it with onnxruntime (no "
            "PyTorch needed).\n")


def _limitations(facts: ModelFacts, records: Records) -> str:
    lines = ["## Limitations", ""]
    if facts.kimg is not None and facts.kimg < 1000:
        lines.append(f"- Trained for {_num(facts.kimg)} kimg, far short of the ~10,000 kimg of the original "
                     "corgi run: judge samples.png before using it.")
    if own_data(facts, records) and records.scrape is not None and records.scrape.source == "synthetic":
        lines.append("- Trained on drawn scenes, not photographs: it has never seen a real dog.")
    lines += ["- It reproduces its training images' biases (breeds, poses, backgrounds, photo styles); "
              "images it draws can look like real photos and are not.",
              "- Noise inputs are the constant ones stored with the weights; per-image random noise is not "
              "part of this export.",
              "- License: none is recorded for these weights or for the images they learnt from; ask the "
              "publisher before reuse."]
    return "\n".join(lines) + "\n"


def _usage(facts: ModelFacts, samples: Samples, onnx: bool) -> str:
    c_line = f"c = torch.zeros(len(z), {facts.c_dim})" if facts.c_dim else "c = None"
    lines = [
        "## How to load it", "",
        "With corgigan (any command that takes a checkpoint takes this folder):", "",
        "```bash",
        f"corgigan generate --checkpoint MODEL_DIR --out samples --seeds 0-7 --psi {_num(samples.psi)}",
        "corgigan serve --checkpoint MODEL_DIR --directions MODEL_DIR/directions.json",
        "```", "",
        "In Python, from the two files alone (the network code is corgigan's `stylegan2/networks.py`):", "",
        "```python",
        "import json",
        "import torch",
        "from safetensors.torch import load_file",
        "from corgigan.stylegan2.networks import Generator",
        "",
        'cfg = json.load(open("MODEL_DIR/config.json"))',
        'G = Generator(c_dim=cfg["c_dim"], img_resolution=cfg["resolution"],',
        '              img_channels=cfg["img_channels"], **cfg["generator"]).eval().requires_grad_(False)',
        'G.load_state_dict(load_file("MODEL_DIR/model.safetensors"))',
        "z = torch.randn(4, G.z_dim)",
        c_line,
        f'images = G(z, c, truncation_psi={_num(samples.psi)}, noise_mode="const")',
        "# images: [4, C, H, W] float32, about [-1, 1]",
        "```",
    ]
    if onnx:
        # onnxruntime takes numpy arrays only: psi a 0-d float32 array (it refuses a numpy scalar).
        c_feed = ', "c": c.numpy()' if facts.c_dim else ""
        lines += ["", "With onnxruntime (`z` as above, or any float32 numpy array [N, z_dim]; onnx_images "
                  "equal images within the error stated in the ONNX section):", "",
                  "```python",
                  "import numpy",
                  "import onnxruntime",
                  "",
                  'session = onnxruntime.InferenceSession("MODEL_DIR/generator.onnx", '
                  'providers=["CPUExecutionProvider"])',
                  f"psi = numpy.array({_num(samples.psi)}, dtype=numpy.float32)",
                  f'(onnx_images,) = session.run(["image"], {{"z": z.numpy(), "psi": psi{c_feed}}})',
                  "```"]
    lines += [
        "", "Fine-tune it with `train.resume_from: MODEL_DIR` (G and G_ema start from these weights; the "
        "discriminator, which an export does not hold, starts from scratch).", "",
        "Publish the folder as it is: `huggingface-cli upload USER/REPO MODEL_DIR .`",
    ]
    return "\n".join(lines) + "\n"
