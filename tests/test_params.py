"""params.yaml loader: the shipped files load, and every kind of mistake names its key."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from corgigan import params

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
    with pytest.raises(params.ParamsError, match=r"train.batch: must be > 0, got 0"):
        params.from_dict(bad)
    bad["train"].update(batch=None, resume_from=None)
    p = params.from_dict(bad)
    assert p.train.batch is None and p.train.resume_from is None
    bad["filter"].update(min_crop=600, min_side=500)
    with pytest.raises(params.ParamsError, match=r"filter.min_crop: must be in \(0, min_side\]"):
        params.from_dict(bad)
