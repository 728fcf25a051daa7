"""The mutation-testing configuration names code and tests that exist.

mutmut matches mutants by name pattern: a renamed function would silently drop out of the run (its pattern
matches nothing) and a listed equivalent would silently stop applying, so the names are checked here.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import mutation  # noqa: E402


def _functions(module: Path) -> set[str]:
    """Every function of `module` as "f" and every method as "Class.f" (nested ones are not mutated)."""
    tree = ast.parse(module.read_text())
    out = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.add(node.name)
        elif isinstance(node, ast.ClassDef):
            out |= {f"{node.name}.{f.name}" for f in node.body
                    if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return out


CFG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]


def test_core_functions_exist_in_the_modules_mutmut_mutates():
    for module, names in mutation.CORE_FUNCTIONS.items():
        assert module in CFG["only_mutate"], module
        missing = set(names) - _functions(ROOT / module)
        assert not missing, f"{module}: {sorted(missing)}"


def test_the_selected_tests_exist():
    for test in CFG["pytest_add_cli_args_test_selection"]:
        assert (ROOT / test).is_file(), test


@pytest.mark.parametrize("table", ["EQUIVALENT", "EXPLAINED"])
def test_listed_survivors_name_functions_that_exist(table):
    for name in getattr(mutation, table):
        match = re.fullmatch(r"(corgigan(?:\.\w+)+)\.x(?:_(\w+)|ǁ(\w+)ǁ(\w+))__mutmut_\d+", name)
        assert match, name
        dotted, func, cls, method = match.groups()
        module = ROOT / "src" / Path(*dotted.split(".")).with_suffix(".py")
        assert str(module.relative_to(ROOT)) in CFG["only_mutate"], name
        assert (func or f"{cls}.{method}") in _functions(module), name


def test_patterns_cover_a_whole_module_or_exactly_its_core_functions():
    serve, funnel = "src/corgigan/play/serve.py", "src/corgigan/data/funnel.py"
    patterns = mutation.mutant_patterns([serve, funnel])
    assert "corgigan.data.funnel.x*" in patterns
    assert "corgigan.play.serve.xǁHandlerǁ_host_ok__mutmut_*" in patterns
    assert "corgigan.play.serve.x_image_request__mutmut_*" in patterns
    assert len(patterns) == len(mutation.CORE_FUNCTIONS[serve]) + 1
    assert mutation.mutant_patterns([serve, funnel], all_functions=True) == ["corgigan.play.serve.x*",
                                                                             "corgigan.data.funnel.x*"]
