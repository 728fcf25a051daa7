"""`corgigan report`: the experiments side by side, only what differs and what matters.

`dvc exp show` lists every param, metric and dependency hash (well over a hundred columns). This reads
its JSON (`dvc exp show --json`, DVC's stable interface) and prints one row per experiment: the params
whose values differ between the rows (a gamma sweep shows train.gamma; `null` is the config's own value;
runtime-only knobs such as devices and workers are left out, as they change no result), the funnel
(entered, kept) and the FID/KID of the evaluate stage.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

from corgigan.errors import StageError
from corgigan.params import runtime_knobs

FUNNEL = "reports/funnel.json"
SCORES = "reports/metrics.json"
PARAMS_FILE = "params.yaml"


def exp_show_json(all_commits: bool = False) -> list[dict[str, Any]]:
    """`dvc exp show --json` parsed; StageError when dvc is missing or the folder is no DVC project."""
    args = ["dvc", "exp", "show", "--json", "--no-pager", *(["--all-commits"] if all_commits else [])]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise StageError("dvc not found: activate the project's venv (source .venv/bin/activate)") from e
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise StageError(f"dvc exp show failed: {why}")
    return json.loads(proc.stdout)


def _flatten(d: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _flatten(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], d


def rows(shown: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per workspace, commit and experiment: name, flat params, funnel and scores."""
    def row(name: str, data: dict[str, Any] | None) -> dict[str, Any]:
        data = data or {}
        params = (data.get("params") or {}).get(PARAMS_FILE, {}).get("data", {})
        metrics = data.get("metrics") or {}
        funnel = metrics.get(FUNNEL, {}).get("data", {})
        scores = metrics.get(SCORES, {}).get("data", {})
        out: dict[str, Any] = {"experiment": name, "params": dict(_flatten(params))}
        out["entered"], out["kept"] = funnel.get("entered"), funnel.get("kept")
        out.update({k: v for k, v in scores.items() if k.startswith(("fid_", "kid_"))})
        return out

    table = []
    for entry in shown:
        if entry.get("rev") == "workspace":
            table.append(row("workspace", entry.get("data")))
            continue
        table.append(row(entry.get("name") or entry["rev"][:7], entry.get("data")))
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:
                table.append(row(rev.get("name") or exp.get("name") or rev["rev"][:7], rev.get("data")))
    return table


def format_table(table: list[dict[str, Any]]) -> str:
    """Text table: experiment, the params that differ between rows, entered, kept, FID/KID."""
    runtime = set(runtime_knobs())
    keys = sorted({k for r in table for k in r["params"]} - runtime)
    differing = [k for k in keys if len({json.dumps(r["params"].get(k)) for r in table}) > 1]
    scores = sorted({k for r in table for k in r if k.startswith(("fid_", "kid_"))})
    header = ["experiment", *differing, "entered", "kept", *scores]

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    def param(r: dict[str, Any], key: str) -> str:
        # A knob set to null is the config's own value, not a missing one.
        return "null" if key in r["params"] and r["params"][key] is None else cell(r["params"].get(key))

    lines = [[cell(r["experiment"]), *(param(r, k) for k in differing),
              cell(r["entered"]), cell(r["kept"]), *(cell(r.get(k)) for k in scores)] for r in table]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    if not differing:
        out.append("(no params differ between these rows)")
    return "\n".join(out)


def main(all_commits: bool = False) -> str:
    """The report for the DVC project in the current folder."""
    return format_table(rows(exp_show_json(all_commits)))
