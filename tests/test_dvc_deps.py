"""dvc.yaml lists, for each stage, every corgigan module the stage's code imports (so `dvc repro` after a
code change reruns exactly the stages whose code changed)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# Modules whose changes cannot change a stage's outputs (their own imports are not followed): params.py
# only validates the values DVC tracks as params; errors.py and the package __init__ files hold no
# behaviour.
EXEMPT = {"corgigan/params.py", "corgigan/errors.py", "corgigan/__init__.py", "corgigan/stages/__init__.py",
          "corgigan/stylegan2/__init__.py", "corgigan/data/__init__.py", "corgigan/detector/__init__.py",
          "corgigan/analysis/__init__.py", "corgigan/play/__init__.py"}
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imported(path: Path) -> set[str]:
    """Dotted names of every corgigan module (or module attribute) `path` imports, anywhere in it."""
    package = path.relative_to(SRC).parent.parts          # relative imports start from here
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}
    return {n for n in names if n.split(".")[0] == "corgigan"}


def code_of(stage: str) -> set[Path]:
    """Source files that `corgigan.stages.<stage>` runs: the closure of its corgigan imports."""
    seen: set[Path] = set()
    todo = [f"corgigan.stages.{stage}"]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        # `import a.b.c` also runs a/__init__ and a/b/__init__.
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        path = _module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        if path.relative_to(SRC).as_posix() not in EXEMPT:
            todo.extend(_imported(path))
    return seen


def test_closure_follows_imports():
    files = {p.relative_to(SRC).as_posix() for p in code_of("filter")}
    assert {"corgigan/stages/filter.py", "corgigan/geometry.py", "corgigan/tables.py",
            "corgigan/images.py"} <= files
    stylegan = {p.relative_to(SRC).as_posix() for p in code_of("train")}
    assert "corgigan/stylegan2/ops/build.py" in stylegan


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_list_every_module_it_imports(stage: str):
    deps = [ROOT / d for d in STAGES[stage].get("deps", [])]
    missing = sorted(
        rel for path in code_of(stage)
        if (rel := path.relative_to(SRC).as_posix()) not in EXEMPT
        and not any(path == d or d in path.parents for d in deps))
    assert not missing, f"dvc.yaml stage {stage} misses deps: {', '.join('src/' + m for m in missing)}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_list_no_module_it_does_not_import(stage: str):
    # A stale code dep reruns the stage (and all after it) for edits that cannot change its outputs.
    code = code_of(stage)
    stale = sorted(d for d in STAGES[stage].get("deps", []) if d.startswith("src/")
                   and not any(path == ROOT / d or ROOT / d in path.parents for path in code))
    assert not stale, f"dvc.yaml stage {stage} lists deps it does not import: {', '.join(stale)}"
