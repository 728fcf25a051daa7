"""The README's layout names every module, so a newcomer's map of the code stays complete."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def test_the_layout_names_every_module() -> None:
    words = set(re.findall(r"[A-Za-z_0-9]+", layout_block()))
    package = ROOT / "src" / "corgigan"
    modules = [p for p in package.rglob("*.py") if p.name != "__init__.py"
               and p.parent.name not in ("stages", "ops")]   # stages and ops are described as a group
    missing = sorted(str(p.relative_to(package)) for p in modules if p.stem not in words)
    assert not missing, f"README's Layout does not mention {missing}"


def test_the_layout_names_every_top_level_folder() -> None:
    words = set(re.findall(r"[A-Za-z_0-9]+/", layout_block()))
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    folders = sorted({f"{name.split('/', 1)[0]}/" for name in tracked
                      if "/" in name and not name.startswith(".")})     # .ci/, .dvc/: tooling, not layout
    missing = [f for f in folders if f not in words]
    assert not missing, f"README's Layout does not mention the folders {missing}"
