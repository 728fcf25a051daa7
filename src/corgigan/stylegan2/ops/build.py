"""Build the CUDA ops with ninja on first use, cache them, and say clearly when that is not possible.

The cache (default ~/.cache/corgigan/torch_extensions, override with CORGIGAN_EXT_CACHE) holds one folder
per build, named by a hash of everything that shapes the binary: the sources, torch and CUDA versions, the
nvcc version, the GPU architectures and the flags. Changed sources build anew; unchanged ones load at once.

A build runs in a private temporary folder, in a child process (torch reads CUDA_HOME once at import, and a
crashing compiler must not take the caller down), and is then renamed into its keyed folder in one atomic
step. Processes that build at the same time each build privately; the first rename wins and the others use
the winner's. There is no lock file, so a killed build cannot block a later run.

A build that fails is reported once, as a warning with the reason and the fix; the ops then use their
reference path for the rest of the process (no retry per call), unless `set_require_cuda_ops(True)`, in
which case loading raises `CudaOpsError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import types
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

OPS = ("bias_act", "upfirdn2d")  # the extensions this package ships
_SOURCE_DIR = Path(__file__).resolve().parent
_FORMAT = 1  # bump when the build recipe below changes in a way the key does not capture
_CFLAGS = ["-O3"]
_CUDA_CFLAGS = ["-O3"]
_STALE_TEMP_S = 24 * 3600  # private build folders older than this were left by killed builds
_BUILD_TIMEOUT_S = 3 * 3600

_lock = threading.Lock()
_require = False
_modules: dict[tuple[str, str], types.ModuleType] = {}
_failures: dict[tuple[str, str], BuildError] = {}


class CudaOpsError(RuntimeError):
    """The CUDA ops are required (set_require_cuda_ops(True)) but cannot be built or loaded."""


@dataclass(eq=False)
class BuildError(Exception):
    """Why an extension is unavailable, and what to do about it."""

    reason: str
    fix: str
    log_tail: str = ""

    def __str__(self) -> str:
        text = f"{self.reason}. Fix: {self.fix}"
        return f"{text}\n{self.log_tail}" if self.log_tail else text


@dataclass(frozen=True)
class Toolchain:
    """Everything outside the sources that a build depends on."""

    cuda_home: str | None
    nvcc_version: str
    arch_list: str
    cudart_dir: str | None  # a folder holding libcudart.so when CUDA_HOME lacks one (pip toolkit)
    path: str  # PATH for the build: ninja, the compiler and nvcc on it


def set_require_cuda_ops(flag: bool) -> None:
    """Process-wide: when True, an op that cannot be built raises CudaOpsError instead of falling back."""
    global _require
    _require = bool(flag)


def cache_root() -> Path:
    """The build cache folder: $CORGIGAN_EXT_CACHE, else ~/.cache/corgigan/torch_extensions."""
    env = os.environ.get("CORGIGAN_EXT_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "corgigan" / "torch_extensions"


def load_extension(name: str, *, source_dir: str | Path | None = None) -> types.ModuleType | None:
    """The compiled extension `name` (built and cached on first use), or None when it cannot be had.

    source_dir: where {name}.cpp / {name}.cu / *.h live (default: this package). A failure is logged once
    per process and remembered; with set_require_cuda_ops(True) it raises CudaOpsError instead of None.
    """
    src = Path(source_dir).resolve() if source_dir is not None else _SOURCE_DIR
    key = (name, str(src))
    with _lock:
        if key not in _modules and key not in _failures:
            try:
                _modules[key] = _build_and_load(name, src)
            except BuildError as failure:
                _failures[key] = failure
                log.warning(
                    "CUDA op %r is unavailable, using the slower reference implementation: %s", name, failure
                )
        if key in _modules:
            return _modules[key]
        if _require:
            raise CudaOpsError(f"CUDA op {name!r} is required but unavailable: {_failures[key]}")
        return None


def cuda_ops_status() -> dict[str, str]:
    """Per shipped op: "built" or "reference (<reason>)". Builds the ops if a GPU is present."""
    status = {}
    for name in OPS:
        key = (name, str(_SOURCE_DIR))
        if key not in _modules and key not in _failures and torch.cuda.is_available():
            with contextlib.suppress(CudaOpsError):  # recorded in _failures, reported below
                load_extension(name)
        if key in _modules:
            status[name] = "built"
        elif key in _failures:
            status[name] = f"reference ({_failures[key].reason})"
        else:
            status[name] = "reference (no CUDA device)"
    return status


# ---------------------------------------------------------------------------------------------------------
# Toolchain discovery: each missing piece is a BuildError naming its fix.


def find_toolchain(with_cuda: bool = True) -> Toolchain:
    """Locate ninja, a C++ compiler and (with_cuda) nvcc and the target architectures."""
    if with_cuda and torch.version.cuda is None:
        raise BuildError(
            f"this torch ({torch.__version__}) is built without CUDA",
            "install a CUDA build of torch (e.g. pip install torch from the CUDA wheel index)",
        )
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    ninja = shutil.which("ninja") or shutil.which("ninja", path=str(Path(sys.executable).parent))
    if ninja is None:
        raise BuildError("ninja is not installed", "pip install ninja")
    cxx = shutil.which(os.environ.get("CXX", "c++"))
    if cxx is None:
        raise BuildError(
            f"no C++ compiler ({os.environ.get('CXX', 'c++')}) on PATH",
            "install one (apt-get install g++) or point CXX at it",
        )
    dirs = [str(Path(ninja).parent), *dirs]
    if not with_cuda:
        return Toolchain(None, "", "", None, os.pathsep.join(dirs))
    cuda_home = find_cuda_home()
    nvcc_version = _nvcc_version(cuda_home)
    _check_cccl(cuda_home)
    arch_list = _arch_list()
    dirs.insert(0, str(Path(cuda_home) / "bin"))
    return Toolchain(cuda_home, nvcc_version, arch_list, _cudart_dir(cuda_home), os.pathsep.join(dirs))


def find_cuda_home() -> str:
    """CUDA_HOME (or CUDA_PATH), else the pip toolkit (cuda-toolkit[nvcc,cccl]), else nvcc on PATH, else
    /usr/local/cuda."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home:
            if not (Path(home) / "bin" / "nvcc").is_file():
                raise BuildError(f"{var}={home} has no bin/nvcc", f"point {var} at a toolkit or unset it")
            return home
    for home in _pip_cuda_homes():
        if (home / "bin" / "nvcc").is_file():
            return str(home)
    nvcc = shutil.which("nvcc")
    if nvcc:
        return str(Path(nvcc).resolve().parent.parent)
    if Path("/usr/local/cuda/bin/nvcc").is_file():
        return "/usr/local/cuda"
    raise BuildError(
        "nvcc (the CUDA compiler) was not found",
        f'pip install "cuda-toolkit[nvcc,cccl]=={torch.version.cuda}.*" (matching torch\'s CUDA), '
        "or set CUDA_HOME to a CUDA toolkit",
    )


def _pip_cuda_homes() -> list[Path]:
    """Toolkit folders from NVIDIA's pip packages: nvidia/cu13 (CUDA 13), nvidia/cuda_nvcc (CUDA 12)."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    major = (torch.version.cuda or "").split(".")[0]
    found = []
    for loc in spec.submodule_search_locations:
        found += [Path(loc) / f"cu{major}", Path(loc) / "cuda_nvcc"]
    return found


def _nvcc_version(cuda_home: str) -> str:
    nvcc = str(Path(cuda_home) / "bin" / "nvcc")
    try:
        run = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"{nvcc} does not run ({e})", "reinstall the CUDA toolkit or set CUDA_HOME") from e
    match = re.search(r"release (\d+)\.(\d+)", run.stdout)
    if match is None:
        raise BuildError(f"cannot read the version of {nvcc}", "set CUDA_HOME to a complete CUDA toolkit")
    version = f"{match.group(1)}.{match.group(2)}"
    torch_major = (torch.version.cuda or "").split(".")[0]
    if match.group(1) != torch_major:
        raise BuildError(
            f"nvcc {version} ({nvcc}) does not match torch's CUDA {torch.version.cuda}",
            f'install a matching toolkit (pip install "cuda-toolkit[nvcc,cccl]=={torch.version.cuda}.*") '
            "and set CUDA_HOME to it",
        )
    return version


def _check_cccl(cuda_home: str) -> None:
    """torch's CUDA headers include <nv/target> from CCCL, which the pip toolkit ships separately."""
    include = Path(cuda_home) / "include"
    if not any((d / "nv" / "target").is_file() for d in (include, include / "cccl")):
        raise BuildError(
            f"the CCCL headers (nv/target) are missing from {include}",
            f'pip install "cuda-toolkit[nvcc,cccl]=={torch.version.cuda}.*", '
            "or set CUDA_HOME to a full toolkit",
        )


def _arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST, else the architectures of the visible GPUs (normalised, ';'-separated)."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env:
        return ";".join(sorted(set(re.split(r"[;\s]+", env)) - {""}))
    if torch.cuda.is_available():
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        return ";".join(f"{a}.{b}" for a, b in sorted(caps))
    raise BuildError(
        "no GPU to detect the target architecture from",
        "set TORCH_CUDA_ARCH_LIST explicitly, e.g. TORCH_CUDA_ARCH_LIST='8.0;9.0'",
    )


def _cudart_dir(cuda_home: str) -> str | None:
    """A folder with libcudart.so for `-lcudart`: the pip toolkit ships only libcudart.so.<major>."""
    for sub in ("lib64", "lib"):
        if (Path(cuda_home) / sub / "libcudart.so").exists():
            return None  # torch's own -L<CUDA_HOME>/lib64 (or lib) finds it
    candidates = sorted(p for sub in ("lib64", "lib") for p in (Path(cuda_home) / sub).glob("libcudart.so.*"))
    if not candidates:
        raise BuildError(f"no libcudart.so in {cuda_home}/lib64 or lib", "set CUDA_HOME to a full toolkit")
    target = candidates[0].resolve()
    link_dir = cache_root() / f"cudart-{hashlib.sha256(str(target).encode()).hexdigest()[:12]}"
    if not (link_dir / "libcudart.so").exists():
        link_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".cudart-", dir=link_dir.parent))
        (tmp / "libcudart.so").symlink_to(target)
        _publish(tmp, link_dir)
    return str(link_dir)


# ---------------------------------------------------------------------------------------------------------
# Building and loading.


def _sources(name: str, src: Path) -> dict[str, bytes]:
    """{file name: bytes} of {name}.cpp, {name}.cu and every header, read once (hashed and built alike)."""
    names = [p for p in (src / f"{name}.cpp", src / f"{name}.cu") if p.is_file()]
    if not (src / f"{name}.cpp").is_file():
        raise ValueError(f"no extension {name!r}: {src / (name + '.cpp')} does not exist")
    names += sorted(src.glob("*.h"))
    return {p.name: p.read_bytes() for p in names}


def build_key(name: str, sources: dict[str, bytes], tools: Toolchain) -> str:
    """Hex digest over everything that shapes the binary."""
    h = hashlib.sha256()
    meta = {
        "format": _FORMAT,
        "name": name,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "nvcc": tools.nvcc_version,
        "arch": tools.arch_list,
        "python": sysconfig.get_config_var("EXT_SUFFIX"),
        "cflags": _CFLAGS,
        "cuda_cflags": _CUDA_CFLAGS,
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    for fname in sorted(sources):
        h.update(fname.encode() + b"\0" + hashlib.sha256(sources[fname]).digest())
    return h.hexdigest()


def _build_and_load(name: str, src: Path) -> types.ModuleType:
    try:
        return _build_and_load_in_cache(name, src)
    except OSError as e:  # the cache folder cannot be written, the disk is full, ...
        raise BuildError(f"the build cache {cache_root()} is unusable ({e})",
                         "free space there, or set CORGIGAN_EXT_CACHE to a writable folder") from e


def _build_and_load_in_cache(name: str, src: Path) -> types.ModuleType:
    sources = _sources(name, src)
    with_cuda = any(f.endswith(".cu") for f in sources)
    tools = find_toolchain(with_cuda)
    key = build_key(name, sources, tools)
    module = f"corgigan_{name}_{key[:12]}"
    root = cache_root()
    final = root / f"{name}-{key[:16]}"
    if not (final / f"{module}.so").is_file():
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(root)
        log.info("building CUDA op %r into %s (first use of these sources; this takes minutes)", name, final)
        started = time.monotonic()
        tmp = _build(name, module, sources, with_cuda, tools, root)
        if _publish(tmp, final):
            log.info("built CUDA op %r in %.0f s", name, time.monotonic() - started)
        else:
            log.info("another process built CUDA op %r first; using its build", name)
    return _import(module, final / f"{module}.so")


def _build(name, module, sources, with_cuda, tools, root) -> Path:
    """Compile in a private temporary folder; return it (complete) or raise BuildError."""
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=root))
    src_dir = tmp / "src"
    src_dir.mkdir()
    for fname, data in sources.items():
        (src_dir / fname).write_bytes(data)
    ldflags = [f"-L{tools.cudart_dir}"] if tools.cudart_dir else []
    spec = {
        "module": module,
        "sources": [str(src_dir / f) for f in sorted(sources) if not f.endswith(".h")],
        "build_dir": str(tmp),
        "cflags": _CFLAGS,
        "cuda_cflags": _CUDA_CFLAGS,
        "ldflags": ldflags,
        "with_cuda": with_cuda,
    }
    env = dict(os.environ, PATH=tools.path)
    if with_cuda:
        env.update(CUDA_HOME=tools.cuda_home, TORCH_CUDA_ARCH_LIST=tools.arch_list)
    log_path = tmp / "build.log"
    try:
        with open(log_path, "wb") as out:
            proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], stdout=out,
                                  stderr=subprocess.STDOUT, env=env, timeout=_BUILD_TIMEOUT_S, check=False)
        ok = proc.returncode == 0 and (tmp / f"{module}.so").is_file()
    except subprocess.TimeoutExpired:
        ok = False
    if not ok:
        tail = _tail(log_path)
        kept = root / f"failed-{name}.log"
        shutil.copyfile(log_path, kept)
        shutil.rmtree(tmp, ignore_errors=True)
        raise BuildError(
            f"compiling {name} failed (full log: {kept})",
            "read the compiler errors below; if the toolchain is at fault set CUDA_HOME to a toolkit "
            "matching torch's CUDA",
            tail,
        )
    for leftover in (tmp / "lock", tmp / ".ninja_lock"):
        leftover.unlink(missing_ok=True)
    return tmp


def _publish(tmp: Path, final: Path) -> bool:
    """Rename tmp to final atomically; False (and tmp removed) when another process got there first."""
    try:
        os.rename(tmp, final)
        return True
    except OSError:
        if not final.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False


def _import(module: str, so_path: Path) -> types.ModuleType:
    if module in sys.modules:
        return sys.modules[module]
    try:
        spec = importlib.util.spec_from_file_location(module, so_path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    except ImportError as e:
        raise BuildError(f"the cached build {so_path} does not load ({e})",
                           f"delete {so_path.parent} to rebuild it") from e
    sys.modules[module] = mod
    return mod


def _remove_stale_temps(root: Path) -> None:
    """Private build folders of builds that were killed; old enough that no live build still uses them."""
    now = time.time()
    for tmp in root.glob(".build-*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TEMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _tail(path: Path, lines: int = 15) -> str:
    """The compiler's error lines and the end of the ninja output (the Python traceback after it is noise)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    end = next((i for i, t in enumerate(text) if t.startswith("Traceback")), len(text))
    text = text[:end]
    errors = [t for t in text if "error" in t.lower() and not t.startswith("FAILED")][:10]
    return "\n".join(["compiler errors:", *errors, "last lines of the build log:", *text[-lines:]])


# Runs in the child process: compile (and load, to prove the result links) with torch's ninja builder.
_CHILD = """
import json, sys
spec = json.loads(sys.argv[1])
from torch.utils.cpp_extension import load
load(name=spec["module"], sources=spec["sources"], build_directory=spec["build_dir"],
     extra_cflags=spec["cflags"], extra_cuda_cflags=spec["cuda_cflags"], extra_ldflags=spec["ldflags"],
     with_cuda=spec["with_cuda"], verbose=True)
"""
