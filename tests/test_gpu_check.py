"""`make gpu-check` without a GPU: the whole prepared check at toy sizes, as the GPU machine would run it
(no packages beyond torch, numpy, Pillow and pytest: the others are blocked at import)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Installed here, absent on the GPU machine: importing any of them there would fail.
BLOCKED = ("yaml", "pandas", "pyarrow", "tqdm", "dvc", "dvclive", "ultralytics", "torchvision", "scipy",
           "sklearn", "cv2", "matplotlib", "imagededup", "cleanfid", "instaloader", "boto3")
# Every import finder is wrapped to find nothing under those names: `import yaml` raises
# ModuleNotFoundError and importlib.util.find_spec("yaml") is None, exactly as where it is not installed.
SITECUSTOMIZE = f"""
import sys
import time

class _Hidden:
    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {set(BLOCKED)!r}:
            return None
        find = getattr(self._finder, "find_spec", None)
        return find(name, path, target) if find is not None else None

    def __getattr__(self, attr):
        return getattr(self._finder, attr)

sys.meta_path[:] = [_Hidden(f) for f in sys.meta_path]
"""


@pytest.fixture
def device_like_env(tmp_path: Path) -> dict[str, str]:
    """This Python, with the packages the GPU machine lacks made unimportable in every child process."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k not in ("CORGIGAN_EXT_CACHE", "TORCH_CUDA_ARCH_LIST")}
    env["PYTHONPATH"] = str(block)
    return env


def test_blocker_works(device_like_env: dict[str, str]):
    code = "import importlib.util; assert importlib.util.find_spec('yaml') is None; import yaml"
    proc = subprocess.run([sys.executable, "-c", code], env=device_like_env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "ModuleNotFoundError: No module named 'yaml'" in proc.stderr, proc.stderr


def test_gpu_check_imports_only_what_the_gpu_machine_has(device_like_env: dict[str, str]):
    code = ("import importlib.util, json, sys; "
            "spec = importlib.util.spec_from_file_location('gpu_check', 'benchmarks/gpu_check.py'); "
            "module = sys.modules['gpu_check'] = importlib.util.module_from_spec(spec); "
            "spec.loader.exec_module(module); "
            "print(json.dumps(sorted(sys.modules)))")
    env = dict(device_like_env, PYTHONPATH=f"{device_like_env['PYTHONPATH']}{os.pathsep}{ROOT / 'src'}")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    modules = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = {m for m in modules if m.partition(".")[0] == "corgigan"}
    # The model package only: no params (yaml), tables (pandas), stages or CLI.
    assert ours and all(m in ("corgigan", "corgigan.stylegan2") or m.startswith("corgigan.stylegan2.")
                        for m in ours), sorted(ours)
    assert not {m.partition(".")[0] for m in modules} & set(BLOCKED)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU toy mode")
def test_make_gpu_check_runs_at_toy_sizes_on_cpu(tmp_path: Path, device_like_env: dict[str, str]):
    out = tmp_path / "report"
    proc = subprocess.run(["make", "-s", "gpu-check", f"OUT={out}", f"PYTHON={sys.executable}"], cwd=ROOT,
                          env=device_like_env, capture_output=True, text=True, timeout=280, check=False)
    log = (out / "gpu-check.log").read_text() if (out / "gpu-check.log").exists() else ""
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{log[-5000:]}"
    # What comes back from the device: a few files, none deeper than OUT.
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.log", "report.json", "report.txt"]
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "toy" and report["cuda_skipped"]
    assert report["passed"] and report["exit_code"] == 0
    assert "CUDA PARTS SKIPPED" in proc.stderr and "CUDA PARTS SKIPPED" in (out / "report.txt").read_text()
    parts = report["parts"]
    assert list(parts) == ["build", "correctness", "op_speed", "train_speed", "short_run"]
    assert report["seconds"] < 120

    assert parts["build"]["status"] == "skipped"
    corr = parts["correctness"]
    assert corr["status"] == "skipped" and "dry_run" in corr and corr["cases"] > 10
    assert {(r["op"], r["dtype"]) for r in corr["errors"].values()} == {
        (op, dt) for op in ("bias_act", "upfirdn2d") for dt in ("float32", "float16")}
    orders = {"forward", "backward", "double_backward"}
    assert all(set(r["max_rel"]) == orders for r in corr["errors"].values())
    assert not corr["failures"] and "skipped" in corr["pytest"]["summary"]
    assert parts["op_speed"]["status"] == "skipped" and {r["op"] for r in parts["op_speed"]["networks"]} == {
        "bias_act", "upfirdn2d"}

    speed = parts["train_speed"]
    assert speed["status"] == "passed" and speed["cuda_skipped"]
    cuda_rows = [r for r in speed["rows"] if r["impl"] == "cuda"]
    ref_rows = [r for r in speed["rows"] if r["impl"] == "ref"]
    assert cuda_rows and all(r["skipped"] == "no CUDA device" for r in cuda_rows)
    assert ref_rows and all(r["sec_per_kimg"] > 0 and r["images_per_s"] > 0 and r["steps"] == 16
                            for r in ref_rows)

    run = parts["short_run"]
    assert run["status"] == "passed" and all(run["checks"].values()), run
    assert [s["resumed"] for s in run["starts"]] == [False, True]
    assert len(run["snapshots"]) == 2 and run["p"][0] != run["p"][2]
    assert run["ticks"] and all(math.isfinite(t["G"]) and math.isfinite(t["D"]) for t in run["ticks"])


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)   # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_short_run_budget_comes_from_the_path_it_will_take():
    gc = load_gpu_check()
    rows = [{"config": "paper256", "resolution": 256, "impl": impl, "tf32": False, "sec_per_kimg": spk}
            for impl, spk in (("cuda", 2.0), ("ref", 5.0))]
    assert gc._short_run_speed({"rows": rows}, "gpu", ops_built=True) == 2.0
    assert gc._short_run_speed({"rows": rows}, "gpu", ops_built=False) == 5.0   # the reference path runs


def test_kill_group_takes_what_a_part_left_running():
    gc = load_gpu_check()
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!"], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    orphan = int(proc.stdout.readline())
    proc.wait()
    os.kill(orphan, 0)                      # the shell has exited, its child still runs
    gc.kill_group(proc.pid)
    gc.kill_group(proc.pid)                 # a group that has gone is no error
    for _ in range(100):
        try:
            os.kill(orphan, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the orphan survived")
