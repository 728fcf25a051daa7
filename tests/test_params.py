"""params.yaml loader: the shipped files load, and every kind of mistake names its key."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from corgigan import params
from corgigan.errors import MAX_LINE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_demo_params_load() -> None:
    p = params.load(ROOT / "params.yaml")
    assert p.scrape.source == "synthetic"
    assert isinstance(p.filter.min_cover, float)


def test_full_preset_is_the_original_configuration() -> None:
    p = params.load(ROOT / "configs" / "full.yaml")
    assert p.scrape.source == "instagram"
    assert p.filter.resolution == 1024
    assert p.filter.min_side == 800 and p.filter.min_crop == 800
    assert p.filter.max_dogs == 1
    assert p.train.config == "paper1024"
    assert p.evaluate.features == "inception"


def test_full_preset_has_the_same_keys_as_the_demo(raw: dict) -> None:
    full = yaml.safe_load((ROOT / "configs" / "full.yaml").read_text())

    def keys(d: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in d.items():
            out |= keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
        return out

    assert keys(full) == keys(raw)


@pytest.mark.parametrize(("path", "value", "message"), [
    (("filter", "min_cover"), "high", "filter.min_cover: must be a number"),
    (("filter", "min_cover"), 1.5, "filter.min_cover: must be in [0, 1]"),
    (("filter", "allow_partial"), "yes", "filter.allow_partial: must be true or false"),
    (("filter", "resolution"), 100, "filter.resolution: must be a power of two"),
    (("scrape", "source"), "flickr", "scrape.source: must be one of synthetic, folder, instagram"),
    (("scrape", "instagram", "hashtags"), "corgi", "scrape.instagram.hashtags: must be a list"),
    (("train", "config"), "huge", "train.config: must be one of"),
    (("detect", "batch"), 1.5, "detect.batch: must be an integer"),
    # Wrong types reach the custom checks only after the type check: an error, not a crash.
    (("train", "device"), 5, "train.device: must be a string"),
    (("filter", "resolution"), "x", "filter.resolution: must be an integer"),
    (("filter", "resolution"), True, "filter.resolution: must be an integer"),
    (("detect", "imgsz"), "x", "detect.imgsz: must be an integer"),
    (("explore", "layers"), 3, "explore.layers: must be a string"),
    (("explore", "layers"), "top", "explore.layers: must be all | coarse"),
])
def test_bad_values_name_their_key(raw: dict, path: tuple, value: object, message: str) -> None:
    bad = copy.deepcopy(raw)
    node = bad
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(params.ParamsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        params.from_dict(bad)


def test_unknown_and_missing_keys(raw: dict) -> None:
    bad = copy.deepcopy(raw)
    bad["filter"]["min_covr"] = 0.5
    with pytest.raises(params.ParamsError, match="filter.min_covr: unknown key"):
        params.from_dict(bad)
    bad = copy.deepcopy(raw)
    del bad["dedup"]["max_distance"]
    with pytest.raises(params.ParamsError, match="dedup.max_distance: missing"):
        params.from_dict(bad)
    bad = copy.deepcopy(raw)
    bad["extra_section"] = {}
    with pytest.raises(params.ParamsError, match="extra_section: unknown key"):
        params.from_dict(bad)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(params.ParamsError, match="params file not found"):
        params.load(tmp_path / "params.yaml")


def _comments(path: Path) -> dict[str, str]:
    """Dotted key -> its inline comment in a params file (continuation comment lines joined)."""
    key = re.compile(r"^(\s*)([A-Za-z_]\w*):([^#]*)(#\s?(.*))?$")
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last, column = None, -1
    for line in path.read_text().splitlines():
        m = key.match(line)
        if m is None:
            text = line.strip()
            if last and text.startswith("#") and line.index("#") == column:   # a continuation
                out[last] += " " + text[1:].strip()
            else:
                last = None
            continue
        indent, name, value, comment, text = m.groups()
        while stack and stack[-1][0] >= len(indent):
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [name])
        if not value.strip():
            stack.append((len(indent), name))
            last = None
            continue
        out[dotted] = text or ""
        last, column = (dotted, line.index("#")) if comment else (None, -1)
    return out


@pytest.mark.parametrize("name", ["params.yaml", "configs/full.yaml"])
def test_every_knob_is_documented_once_and_the_files_say_the_same(name: str) -> None:
    # The help lives in params.py (field metadata); each params file's comment is that help, word for word.
    comments = _comments(ROOT / name)
    knobs = params.knobs()
    assert list(comments) == list(knobs), "keys differ from params.py, or are out of its order"
    wrong = {k: (comments[k], help_) for k, help_ in knobs.items() if comments[k] != help_}
    assert not wrong, wrong


def test_ranges_and_optional_values(raw: dict) -> None:
    bad = copy.deepcopy(raw)
    bad["train"]["batch"] = 0
    with pytest.raises(params.ParamsError, match=r"train.batch: must be in \(0, 1024\], got 0"):
        params.from_dict(bad)
    bad["train"].update(batch=None, resume_from=None)
    p = params.from_dict(bad)
    assert p.train.batch is None and p.train.resume_from is None
    bad["filter"].update(min_crop=600, min_side=500)
    with pytest.raises(params.ParamsError, match=r"filter.min_crop: must be in \(0, min_side\]"):
        params.from_dict(bad)


SEED_KEYS = [("scrape", "synthetic", "seed"), ("detector", "seed"), ("train", "seed"), ("evaluate", "seed"),
             ("explore", "seed")]


def _set(raw: dict, path: tuple, value: object) -> dict:
    bad = copy.deepcopy(raw)
    node = bad
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return bad


@pytest.mark.parametrize("path", SEED_KEYS, ids=[".".join(p) for p in SEED_KEYS])
@pytest.mark.parametrize("value", [-1, 2**32, 2**70])
def test_every_seed_is_in_numpys_range(raw: dict, path: tuple, value: int) -> None:
    # numpy's RandomState and SeedSequence take seeds in [0, 2**32): anything else crashed after hours.
    with pytest.raises(params.ParamsError, match=rf"{'.'.join(path)}: must be in \[0, 4294967296\), "
                                                 rf"got {value}$"):
        params.from_dict(_set(raw, path, value))
    assert params.from_dict(_set(raw, path, 2**32 - 6000)) is not None     # explore draws 5012 seeds


@pytest.mark.parametrize(("changes", "message"), [
    ({("evaluate", "seed"): 2**32 - 10}, r"evaluate.seed: the seeds 4294967286 .. 4294967485 run past "
                                         r"2\*\*32 - 1 \(seed \+ max\(num_images, grid_seeds\)\)"),
    ({("evaluate", "seed"): 2**32 - 200, ("evaluate", "grid_seeds"): 201}, r"evaluate.seed: the seeds"),
    ({("explore", "seed"): 2**32 - 5000}, r"explore.seed: the seeds 4294962296 .. 4294967307 run past"),
])
def test_a_seed_range_must_end_below_2_32(raw: dict, changes: dict, message: str) -> None:
    bad = raw
    for path, value in changes.items():
        bad = _set(bad, path, value)
    with pytest.raises(params.ParamsError, match=message):
        params.from_dict(bad)


@pytest.mark.parametrize(("path", "value", "message"), [
    (("train", "batch"), 10**20, r"train.batch: must be in \(0, 1024\], got 100000000000000000000"),
    (("train", "batch"), 1025, r"train.batch: must be in \(0, 1024\]"),
    (("evaluate", "batch"), 10**6, r"evaluate.batch: must be in \(0, 1024\]"),
    (("detect", "batch"), 10**6, r"detect.batch: must be in \(0, 1024\]"),
    (("detector", "batch"), 10**6, r"detector.batch: must be in \(0, 1024\]"),
    (("train", "kimg"), 0.0004, r"train.kimg: must be in \[0.001, 1000000\], got 0.0004"),
    (("train", "kimg"), 1e300, r"train.kimg: must be in \[0.001, 1000000\]"),
    (("train", "snapshot_kimg"), 1e300, r"train.snapshot_kimg: must be in \[0.001, 1000000\]"),
    (("train", "tick_kimg"), 1e-9, r"train.tick_kimg: must be in \[0.001, 1000000\]"),
    (("evaluate", "truncation_psi"), 1e30, r"evaluate.truncation_psi: must be in \[-10, 10\]"),
    (("explore", "truncation_psi"), -11, r"explore.truncation_psi: must be in \[-10, 10\]"),
    (("explore", "max_sigma"), 1e30, r"explore.max_sigma: must be in \(0, 100\]"),
    (("explore", "strip_steps"), 10**6, r"explore.strip_steps: must be in \[3, 100\]"),
    (("evaluate", "video_frames"), 10**6, r"evaluate.video_frames: must be in \[2, 2400\]"),
    (("evaluate", "grid_seeds"), 10**6, r"evaluate.grid_seeds: must be in \(0, 1000\]"),
])
def test_sizes_have_sane_bounds(raw: dict, path: tuple, value: object, message: str) -> None:
    # Values the schema used to pass that asserted (kimg below one image), overflowed or ran out of memory.
    with pytest.raises(params.ParamsError, match=message):
        params.from_dict(_set(raw, path, value))


def test_messages_quote_values_capped(raw: dict) -> None:
    huge = {"k" * 10_000: list(range(100_000))}
    for path, value in ((("train", "device"), "x" * 1_000_000), (("train", "kimg"), huge),
                        (("train", "k" * 1_000_000), 1)):
        with pytest.raises(params.ParamsError) as info:
            params.from_dict(_set(raw, path, value))
        text = str(info.value)
        assert len(text) <= MAX_LINE and "…" in text and "\n" not in text, text[:300]


def test_params_imports_no_torch_and_no_analysis() -> None:
    # The config sits below the code it configures: checking a params file costs no torch import, and
    # nothing in analysis/ can change what a knob accepts.
    import subprocess
    import sys
    code = ("import sys, corgigan.params; print(sorted(m for m in sys.modules if m == 'torch' or "
            "m.startswith(('corgigan.analysis', 'corgigan.play', 'corgigan.detector', 'corgigan.data'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
