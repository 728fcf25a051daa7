"""The CLI's numbers and its error lines (issue 19): every out-of-range argument or params value is one
capped ERROR line and exit code 2, checked before anything is read or written, never a traceback, an
empty output folder, a silently black picture or an out-of-memory run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corgigan.analysis import sampling
from corgigan.cli import main
from corgigan.errors import MAX_LINE
from corgigan.stylegan2.snapshot import save_snapshot
from tests.helpers import fake_state, tiny_config, write_dataset, write_directions

ROOT = Path(__file__).resolve().parents[1]
DEMO = (ROOT / "params.yaml").read_text()


def _error(caplog: pytest.LogCaptureFixture) -> str:
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "\n" not in errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A snapshot of a tiny 8-px generator (w_dim 16) and a directions file with one direction."""
    root = tmp_path_factory.mktemp("model")
    snap = root / "network-snapshot-000000008.pt"
    save_snapshot(snap, fake_state(tiny_config()))
    directions = write_directions(root / "directions.json", 16, {
        "fluffy": {"vector": [1.0] * 16, "layers": [0, 2], "sigma": 1.0}})
    return snap, directions


def _generate(model: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    return ["generate", "--checkpoint", str(model[0]), "--directions", str(model[1]), "--device", "cpu",
            "--out", str(out), *extra]


EDIT = ("--what", "edit", "--direction", "fluffy")


@pytest.mark.parametrize(("extra", "message"), [
    (("--seeds", "4294967296"), "--seeds '4294967296': seed 4294967296 is not in [0, 4294967296)"),
    (("--seeds", "4294967290-4294967299"), "is not in [0, 4294967296)"),
    (("--seeds", "0-1000000000"), "1000000001 seeds; at most 1000"),
    (("--seeds", "0-600,1000-1600"), "1202 seeds; at most 1000"),
    (("--what", "video", "--frames", "0"), "--frames 0: must be in [2, 2400]"),
    (("--what", "video", "--frames", "-5"), "--frames -5: must be in [2, 2400]"),
    (("--what", "video", "--frames", "1000000"), "--frames 1000000: must be in [2, 2400]"),
    (("--psi", "nan"), "--psi nan: must be a finite number in [-10, 10]"),
    (("--psi", "inf"), "--psi inf: must be a finite number in [-10, 10]"),
    (("--psi", "1e30"), "--psi 1e+30: must be a finite number in [-10, 10]"),
    ((*EDIT, "--strength=nan..3"), "--strength 'nan..3': A and B must be finite numbers in [-100, 100]"),
    ((*EDIT, "--strength=-3..inf"), "must be finite numbers in [-100, 100]"),
    ((*EDIT, "--strength", "1e9"), "must be finite numbers in [-100, 100]"),
    ((*EDIT, "--steps", "1000000"), "--steps 1000000: must be in [2, 100]"),
    ((*EDIT, "--steps", "1"), "--steps 1: must be in [2, 100]"),
], ids=["seed_2_32", "seed_range_past_2_32", "a_billion_seeds", "too_many_seeds_in_parts", "frames_0",
        "frames_negative", "frames_huge", "psi_nan", "psi_inf", "psi_huge", "strength_nan", "strength_inf",
        "strength_huge", "steps_huge", "steps_1"])
def test_generate_numbers_are_checked_before_any_output(tmp_path, caplog, model, extra, message):
    out = tmp_path / "out"
    start = time.perf_counter()
    assert main(_generate(model, out, *extra)) == 2
    assert time.perf_counter() - start < 5            # refused, not expanded: no billion-element list
    assert message in _error(caplog)
    assert not out.exists()


def test_in_range_numbers_still_draw(tmp_path, model):
    out = tmp_path / "out"
    assert main(_generate(model, out, "--seeds", "4294967294-4294967295", "--psi", "-10")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["seed4294967294.png", "seed4294967295.png"]
    assert main(_generate(model, out, *EDIT, "--seeds", "0", "--strength=-100..100", "--steps", "2")) == 0
    assert (out / "edit-fluffy.png").is_file()


def test_project_and_serve_numbers(tmp_path, caplog, model):
    photo = tmp_path / "dog.png"
    photo.write_bytes(b"not read: the arguments are refused first")
    out = tmp_path / "out"
    project = ["--params", str(tmp_path / "none.yaml"), "project", str(photo), "--checkpoint", str(model[0]),
               "--out", str(out)]
    for extra, message in ((("--steps", "0"), "--steps 0: must be in [1, 10000]"),
                           (("--seed", "-1"), "--seed -1: must be in [0, 4294967295]"),
                           (("--seed", str(2**32)), "--seed 4294967296: must be in [0, 4294967295]")):
        caplog.clear()
        assert main([*project, *extra]) == 2
        assert message in _error(caplog)
        assert not out.exists()
    caplog.clear()
    assert main(["serve", "--checkpoint", str(model[0]), "--port", "70000"]) == 2
    assert "--port 70000: must be in [0, 65535]" in _error(caplog)
    caplog.clear()
    assert main(["serve", "--checkpoint", str(model[0]), "--max-steps", "0"]) == 2
    assert "--max-steps 0: must be in [1, 10000]" in _error(caplog)


def test_a_picture_beyond_the_memory_budget_is_refused_before_any_output(tmp_path, caplog, model,
                                                                       monkeypatch):
    # 8-px tiles: 64 pixels each. A budget of 64 * 100 pixels takes 100 images, not 3 seeds x 40 steps.
    monkeypatch.setattr(sampling, "MAX_PICTURE_PIXELS", 64 * 100)
    out = tmp_path / "out"
    assert main(_generate(model, out, *EDIT, "--seeds", "0-2", "--steps", "40")) == 2
    assert "120 images of 8x8 px" in _error(caplog)
    assert not out.exists()
    caplog.clear()
    assert main(_generate(model, out, "--what", "mixing", "--seeds", "0-19")) == 2
    assert "121 images of 8x8 px" in _error(caplog)
    assert not out.exists()
    # PNGs and videos stream a generator pass at a time: any number of seeds or frames fits.
    assert main(_generate(model, out, "--seeds", "0-199")) == 0
    assert len(list(out.glob("seed*.png"))) == 200
    assert main(_generate(model, out, "--what", "video", "--seeds", "0-1", "--frames", "150")) == 0
    assert main(_generate(model, out, "--what", "edit-video", "--direction", "fluffy", "--seeds", "0-1",
                          "--frames", "120")) == 0
    assert {p.name for p in out.glob("*.mp4")} == {"interpolation.mp4", "edit-fluffy.mp4"}


# ---- error lines are capped ---------------------------------------------------------------------------

def test_a_huge_argument_is_quoted_capped(tmp_path, caplog, model):
    out = tmp_path / "out"
    assert main(_generate(model, out, "--seeds", "x" * 1_000_000)) == 2
    line = _error(caplog)
    assert len(line) <= MAX_LINE and "…" in line and "is not a seed" in line
    caplog.clear()
    assert main(_generate(model, out, "--frames", "9" * 1_000_000)) == 2     # argparse's own error
    line = _error(caplog)
    assert len(line) <= MAX_LINE and "…" in line and "--frames" in line
    assert not out.exists()


def test_argparse_errors_are_one_line_and_rc_2(caplog):
    assert main(["generate", "--checkpoint", "x"]) == 2
    assert "the following arguments are required: --out" in _error(caplog)
    caplog.clear()
    assert main(["generate", "--checkpoint", "x", "--out", "o", "--what", "nothing"]) == 2
    assert "invalid choice" in _error(caplog)


def _params(tmp_path: Path, old: str, new: str) -> Path:
    assert old in DEMO
    path = tmp_path / "params.yaml"
    path.write_text(DEMO.replace(old, new, 1))
    return path


def _train(params: Path, tmp_path: Path) -> list[str]:
    return ["--params", str(params), "train", "--dataset", str(write_dataset(tmp_path / "d.zip", n=4)),
            "--out", str(tmp_path / "models"), "--metrics", str(tmp_path / "reports")]


@pytest.mark.parametrize(("old", "new", "message"), [
    ("  kimg: 4 ", "  kimg: 0.0001 ", "train.kimg: must be in [0.001, 1000000], got 0.0001"),
    ("  seed: 0                    # the one", "  seed: -1 # the one",
     "train.seed: must be in [0, 4294967296), got -1"),
    ("  batch: null ", "  batch: 100000000000000000000 ", "train.batch: must be in (0, 1024]"),
], ids=["kimg_too_small", "negative_seed", "huge_batch"])
def test_params_that_would_fail_in_training_stop_before_it(tmp_path, caplog, old, new, message):
    params = _params(tmp_path, old, new)
    assert main(_train(params, tmp_path)) == 2
    assert message in _error(caplog)
    assert not (tmp_path / "models").exists() and not (tmp_path / "reports").exists()


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A YAML value of `width ** levels` strings written in a few hundred bytes."""
    lines = ['  bomb0: &b0 ["corgi corgi corgi corgi"]']
    lines += [f"  bomb{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines)


@pytest.mark.parametrize(("value", "message"), [
    ("kimg: *b8", "more than 10000 values once aliases are expanded"),
    ("kimg: &self [*self]", "an alias refers to its own value"),
    ("kimg: " + "[" * 1000 + "]" * 1000, "nested more than 32 levels deep"),
    ("kimg: " + "7" * 5000, "invalid YAML"),
], ids=["alias_bomb", "recursive_alias", "deep_nesting", "huge_integer"])
def test_params_files_that_attack_the_reader_are_refused_fast(tmp_path, caplog, value, message):
    params = _params(tmp_path, "  kimg: 4 ", f"  {value} ")
    if "*b8" in value:     # the anchors go first, in a section of their own (refused: an unknown key)
        params.write_text(params.read_text().replace("\ntrain:\n", f"\nbombs:\n{_alias_bomb()}\ntrain:\n", 1))
    assert len(params.read_text()) < len(DEMO) + 20_000
    start = time.perf_counter()
    assert main(["--params", str(params), "train", "--dataset", "d.zip", "--out", str(tmp_path / "o"),
                 "--metrics", str(tmp_path / "m")]) == 2
    assert time.perf_counter() - start < 2
    line = _error(caplog)
    assert message in line and len(line) <= MAX_LINE
    assert not (tmp_path / "o").exists()


def test_a_huge_string_value_is_quoted_capped(tmp_path, caplog):
    params = _params(tmp_path, "  device: auto  ", f"  device: {'x' * 1_000_000}  ")
    assert main(["--params", str(params), "train", "--dataset", "d.zip", "--out", "o", "--metrics", "m"]) == 2
    line = _error(caplog)
    assert line.startswith("train.device: must be auto | cpu") and "…" in line and len(line) <= MAX_LINE


def test_the_console_script_says_one_line(tmp_path, model):
    # One process (torch's import costs seconds); the in-process tests above cover each kind of value.
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "-m", "corgigan.cli", *_generate(model, tmp_path / "o", "--seeds",
                                                                          "4294967296")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "is not in [0, 4294967296)" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()
