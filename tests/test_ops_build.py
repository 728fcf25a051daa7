"""Building the CUDA ops: the real sources compile and load (cached across runs), the cache key follows the
sources, concurrent builders share one result without lock files, and failures are reported once."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from corgigan.stylegan2.ops import build

# Without a GPU nothing can be detected: build for sm_90 alone, which keeps the first run shorter.
ARCH = os.environ.get("TORCH_CUDA_ARCH_LIST") or ("" if torch.cuda.is_available() else "9.0")


def _toolchain_or_skip(monkeypatch, with_cuda=True):
    if ARCH:
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", ARCH)
    try:
        return build.find_toolchain(with_cuda)
    except build.BuildError as e:
        pytest.skip(f"no build toolchain here: {e}")


@pytest.fixture
def fresh_state(monkeypatch):
    """Forget what this process built or failed, and restore it afterwards."""
    monkeypatch.setattr(build, "_modules", {})
    monkeypatch.setattr(build, "_failures", {})
    monkeypatch.setattr(build, "_require", False)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python that imports corgigan even where it is not installed."""
    src = str(Path(build.__file__).resolve().parents[3])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
                **extra)


def run_python(code: str, env: dict[str, str], timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.mark.timeout(1500)
@pytest.mark.parametrize("name", build.OPS)
def test_real_ops_build_and_load(monkeypatch, name):
    """Compiles with the real cache (minutes the first time, instant after) and loads on this machine."""
    _toolchain_or_skip(monkeypatch)
    mod = build.load_extension(name)
    assert mod is not None, build.cuda_ops_status()
    assert Path(mod.__file__).parent.parent == build.cache_root()
    assert build.cuda_ops_status()[name] == "built"
    fn = getattr(mod, name)
    if not torch.cuda.is_available():
        # The binding runs and checks its arguments; the kernel itself needs a GPU.
        args = {"bias_act": (torch.ones(2), torch.ones(0), torch.ones(0), 0, 0, 0, 0.0, 1.0, -1.0),
                "upfirdn2d": (torch.ones(1, 1, 2, 2), torch.ones(1, 1), 1, 1, 1, 1, 0, 0, 0, 0, False, 1.0)}
        with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
            fn(*args[name])
    # A second process finds the build in the cache: no compiling, no temporary build folder.
    env = child_env(TORCH_CUDA_ARCH_LIST=ARCH) if ARCH else child_env()
    proc = run_python(f"""
        import logging
        logging.basicConfig(level=logging.INFO)
        from corgigan.stylegan2.ops import build
        assert build.load_extension({name!r}) is not None
    """, env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "building" not in proc.stderr and "built" not in proc.stderr


def test_cache_key_follows_sources_and_toolchain():
    tools = build.Toolchain("/cuda", "13.2", "9.0", None, "")
    sources = {"op.cpp": b"int a;", "op.cu": b"int b;"}
    key = build.build_key("op", sources, tools)
    assert key == build.build_key("op", dict(sources), tools)
    assert key != build.build_key("op", {**sources, "op.cu": b"int c;"}, tools)
    assert key != build.build_key("op", {**sources, "common.h": b""}, tools)
    assert key != build.build_key("op", sources, build.Toolchain("/cuda", "13.2", "8.0;9.0", None, ""))
    assert key != build.build_key("op", sources, build.Toolchain("/cuda", "13.0", "9.0", None, ""))
    assert key != build.build_key("other", sources, tools)


def test_real_sources_give_the_key_in_use(monkeypatch):
    """The key of the shipped sources changes when any of them changes (a copy edited in a tmp dir)."""
    tools = _toolchain_or_skip(monkeypatch)
    for name in build.OPS:
        sources = build._sources(name, build._SOURCE_DIR)
        assert {f"{name}.cpp", f"{name}.cu"} <= set(sources)
        edited = {**sources, f"{name}.cu": sources[f"{name}.cu"] + b"\n// edited\n"}
        assert build.build_key(name, sources, tools) != build.build_key(name, edited, tools)


TINY = """
#include <pybind11/pybind11.h>
int answer() { return 42; }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("answer", &answer); }
"""


@pytest.mark.timeout(600)
def test_concurrent_builders_share_one_build(monkeypatch, tmp_path):
    """Two processes build the same (small, C++-only) extension at once: both load it, one build is kept,
    and nothing is left behind that could block a later run."""
    _toolchain_or_skip(monkeypatch, with_cuda=False)
    src = tmp_path / "src"
    src.mkdir()
    (src / "tiny.cpp").write_text(TINY)
    cache = tmp_path / "cache"
    go = tmp_path / "go"
    code = f"""
        import json, logging, os, time
        logging.basicConfig(level=logging.INFO)
        from corgigan.stylegan2.ops import build
        while not os.path.exists({str(go)!r}):  # start both builds together
            time.sleep(0.01)
        mod = build.load_extension("tiny", source_dir={str(src)!r})
        print(json.dumps({{"answer": mod.answer(), "file": mod.__file__}}))
    """
    env = child_env(CORGIGAN_EXT_CACHE=str(cache))
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    go.touch()
    results = [p.communicate(timeout=500) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    loaded = [json.loads(out) for out, _ in results]
    assert [r["answer"] for r in loaded] == [42, 42]
    assert loaded[0]["file"] == loaded[1]["file"]  # the loser uses the winner's build
    logs = "".join(err for _, err in results)
    assert logs.count("built CUDA op 'tiny' in") == 1
    # Both started before either finished, so the second to finish found the first one's build.
    assert logs.count("another process built") == 1 or logs.count("building CUDA op 'tiny'") == 1
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 1 and entries[0].startswith("tiny-"), entries
    stale = ("lock", ".ninja_lock")
    leftovers = [p for p in cache.rglob("*") if p.name in stale or p.name.startswith(".build")]
    assert not leftovers


def _broken_copy(tmp_path: Path, name: str) -> Path:
    src = tmp_path / "broken"
    src.mkdir()
    for path in build._SOURCE_DIR.iterdir():
        if path.suffix in (".cpp", ".cu", ".h"):
            shutil.copy(path, src / path.name)
    # A syntax error, then a missing header: the compilers stop at the header (a fatal error) instead of
    # first parsing the heavy torch headers, which keeps the test short. Either makes a broken source.
    for suffix in (".cpp", ".cu"):
        path = src / f"{name}{suffix}"
        path.write_text("int deliberately_broken(;\n#include <no_such_header.h>\n" + path.read_text())
    return src


@pytest.mark.timeout(600)
def test_broken_source_fails_once_then_falls_back_or_raises(monkeypatch, tmp_path, caplog, fresh_state):
    _toolchain_or_skip(monkeypatch)
    monkeypatch.setenv("CORGIGAN_EXT_CACHE", str(tmp_path / "cache"))
    src = _broken_copy(tmp_path, "bias_act")
    with caplog.at_level(logging.WARNING, logger=build.log.name):
        assert build.load_extension("bias_act", source_dir=src) is None
        assert build.load_extension("bias_act", source_dir=src) is None  # remembered: no second build
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "compiling bias_act failed" in message and "Fix:" in message and "no_such_header.h" in message
    assert (tmp_path / "cache" / "failed-bias_act.log").is_file()
    assert not list((tmp_path / "cache").glob(".build-*"))
    build.set_require_cuda_ops(True)
    with pytest.raises(build.CudaOpsError, match="required but unavailable"):
        build.load_extension("bias_act", source_dir=src)


def test_missing_pieces_name_their_fix(monkeypatch, fresh_state):
    monkeypatch.setenv("CUDA_HOME", "/nonexistent/cuda")
    with pytest.raises(build.BuildError, match="has no bin/nvcc") as e:
        build.find_toolchain()
    assert "CUDA_HOME" in e.value.fix
    monkeypatch.delenv("CUDA_HOME")
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    if not torch.cuda.is_available():
        with pytest.raises(build.BuildError, match="architecture") as e:
            build._arch_list()
        assert "TORCH_CUDA_ARCH_LIST" in e.value.fix
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0 8.0;9.0")
    assert build._arch_list() == "8.0;9.0"
    real_which = shutil.which
    no_ninja = lambda cmd, path=None: None if cmd == "ninja" else real_which(cmd)  # noqa: E731
    monkeypatch.setattr(build.shutil, "which", no_ninja)
    with pytest.raises(build.BuildError, match="ninja") as e:
        build.find_toolchain()
    assert e.value.fix == "pip install ninja"
    monkeypatch.setattr(build.shutil, "which", real_which)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(build.BuildError, match="C\\+\\+ compiler"):
        build.find_toolchain()
    monkeypatch.delenv("CXX")
    monkeypatch.setattr(build.torch.version, "cuda", None)
    with pytest.raises(build.BuildError, match="without CUDA"):
        build.find_toolchain()
    # Unavailable toolchain through the public entry point: reference fallback, or a raise when required.
    assert build.load_extension("upfirdn2d") is None
    assert build.cuda_ops_status()["upfirdn2d"].startswith("reference (this torch")
    build.set_require_cuda_ops(True)
    with pytest.raises(build.CudaOpsError, match="without CUDA"):
        build.load_extension("upfirdn2d")


def test_unusable_cache_is_a_clear_failure(monkeypatch, tmp_path, fresh_state):
    _toolchain_or_skip(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CORGIGAN_EXT_CACHE", str(blocker / "cache"))  # a folder inside a file: unwritable
    assert build.load_extension("bias_act") is None
    assert build.cuda_ops_status()["bias_act"].startswith("reference (the build cache")
