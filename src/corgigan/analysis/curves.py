"""Curves as PNGs: the training curves (losses, regularisers, D scores, ADA p) and FID/KID, against kimg;
and the dvclive folder those training curves come from, opened safely after an interrupted run.

DVC's own plots render in a browser page that loads vega from a CDN; this picture shows anywhere
(a DVC image plot, a file viewer, a README). It is drawn from the dvclive histories the train stage
writes (one ``plots/metrics/<name>.tsv`` of ``step, value`` per metric, beside the summary
``metrics.json``), with x in kimg from ``Progress/kimg``; the scores from the evaluate stage's rows, one
per scored snapshot.

dvclive appends history rows and rewrites metrics.json in place, so a run killed at the wrong moment
leaves a partial row or a truncated summary, and dvclive's resume reads both (json.load on the summary:
a traceback). `open_live` is how the train stage opens the folder: on resume it first drops every row
that is not a complete row of the history (and the rows after the snapshot being resumed), rebuilds an
unreadable summary from the histories, says so in one WARNING line, and then writes its summary
atomically from there on.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from corgigan.tables import atomic_path, remove_stale_temps

log = logging.getLogger(__name__)

SUMMARY = "metrics.json"               # dvclive's summary in its folder: the last value of every metric
HISTORIES = Path("plots", "metrics")   # dvclive's histories in its folder: <name>.tsv per metric
NON_FINITE = ("nan", "inf", "-inf")    # dvclive logs these values as strings, in the histories and summary

# (panel title, [(metric name, legend label)]): the curves worth reading at a glance.
PANELS: list[tuple[str, list[tuple[str, str]]]] = [
    ("losses", [("Loss/G/loss", "G"), ("Loss/D/loss", "D")]),
    ("regularisers", [("Loss/r1", "R1 penalty"), ("Loss/pl", "path-length penalty")]),
    ("D scores", [("Loss/scores/real", "real"), ("Loss/scores/fake", "fake")]),
    ("augmentation", [("ADA/p", "ADA p"), ("ADA/rt", "r_t (sign of D(real))")]),
]


def save_png(fig: Figure, out: Path) -> None:
    """Write the figure as a PNG, atomically, without the timestamp or version that would vary its bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    with atomic_path(out) as tmp:
        tmp.write_bytes(buf.getvalue())


def read_history(plots_dir: Path, name: str) -> dict[int, float]:
    """step -> value of one dvclive metric history (empty when the metric was never logged)."""
    path = plots_dir.joinpath(*name.split("/")).with_suffix(".tsv")
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return {int(r[0]): float(r[1]) for r in rows[1:] if len(r) >= 2}


def draw_curves(plots_dir: Path, out: Path) -> bool:
    """Draw the PANELS from the histories under `plots_dir` into the PNG `out`; False if none exist yet.

    Same histories, same bytes.
    """
    kimg = read_history(plots_dir, "Progress/kimg")
    if not kimg:
        return False
    fig = Figure(figsize=(10, 6), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)
    for i, (title, series) in enumerate(PANELS):
        ax = fig.add_subplot(2, 2, i + 1)
        for name, label in series:
            values = read_history(plots_dir, name)
            steps = [s for s in sorted(values) if s in kimg]
            if steps:
                ax.plot([kimg[s] for s in steps], [values[s] for s in steps], label=label, linewidth=1.2)
        ax.set_title(title)
        ax.set_xlabel("kimg")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="best", fontsize="small")
    save_png(fig, out)
    return True


def draw_scores(rows: list[dict[str, float]], out: Path, title: str = "") -> None:
    """Draw FID and KID against kimg from evaluate's rows ({"kimg", "fid_<f>", "kid_<f>"}) into `out`.

    At least one row; one row (only the last snapshot scored) is a single marker per panel. Same rows,
    same bytes.
    """
    rows = sorted(rows, key=lambda r: r["kimg"])
    fig = Figure(figsize=(10, 3.5), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)
    names = [k for k in rows[0] if k != "kimg"]
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        ax.plot([r["kimg"] for r in rows], [r[name] for r in rows], marker="o", linewidth=1.2)
        ax.set_title(name)
        ax.set_xlabel("kimg")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize="medium")
    save_png(fig, out)


# ---------------------------------------------------------------------------------------------------------
# The dvclive folder, safe to resume


def _value(text: str) -> int | float | str:
    """A history value as dvclive put it in the summary (ints stay ints; non-finite values are strings);
    ValueError when `text` is no number."""
    try:
        return int(text)
    except ValueError:
        pass
    value = float(text)
    return text if text in NON_FINITE else value


def _history_rows(text: str, name: str) -> tuple[list[tuple[int, str]], int]:
    """((step, value text) of every complete, well-formed row, number of partial or garbled lines).

    A row counts only when its line ends: dvclive writes a row and its newline together, so a line
    without one is what a killed write left.
    """
    *lines, tail = text.split("\n")
    bad = 1 if tail else 0
    if lines and lines[0].rstrip("\r") == f"step\t{name}":
        lines = lines[1:]
    else:
        bad += 1   # no header: empty, cut inside it, or garbled
    rows = []
    for line in lines:
        fields = line.rstrip("\r").split("\t")
        try:
            if len(fields) != 2:
                raise ValueError(line)
            _value(fields[1])
            rows.append((int(fields[0]), fields[1]))
        except ValueError:
            bad += 1
    return rows, bad


def repair_histories(plots_dir: Path, last_step: int) -> list[str]:
    """Keep only the complete rows with step <= `last_step` in every history under `plots_dir`.

    Rows after `last_step` are those a killed run logged after its last snapshot: the resumed run logs
    those steps again. A history left without rows is deleted (dvclive writes it anew, header first).
    Returns what was damaged (partial or garbled lines dropped, a header rebuilt), one entry per file.
    """
    damaged = []
    for tsv in sorted(plots_dir.rglob("*.tsv")):
        raw = tsv.read_bytes()
        rows, bad = _history_rows(raw.decode("utf-8", errors="replace"), tsv.stem)
        kept = [f"{step}\t{value}" for step, value in rows if step <= last_step]
        if bad:
            damaged.append(f"{tsv.relative_to(plots_dir)}: {bad} partial or garbled line(s) dropped")
        if not kept:
            tsv.unlink()
            continue
        text = "".join(line + os.linesep for line in [f"step\t{tsv.stem}", *kept])
        if text.encode() != raw:
            with atomic_path(tsv) as tmp:
                tmp.write_text(text, newline="")
    return damaged


def rebuild_summary(metrics: Path, step: int, not_compared: Sequence[tuple[str, ...]] = ()) -> dict[str, Any]:
    """The summary dvclive held at `step`: the last value of every history in `metrics` up to `step`,
    nested by the name's parts, minus the `not_compared` groups, plus the step.

    In dvclive's order too, so that the rebuilt file has the bytes dvclive wrote: keys in order of first
    logging (the train stage logs a step's metrics sorted by name), and "step" after the first step's.
    """
    plots_dir = metrics / HISTORIES
    found = sorted(plots_dir.rglob("*.tsv")) if plots_dir.is_dir() else []
    histories: dict[str, list[tuple[int, str]]] = {}
    for tsv in found:
        keys = tsv.relative_to(plots_dir).with_suffix("").parts
        if any(keys[:len(group)] == tuple(group) for group in not_compared):
            continue
        rows = [r for r in _history_rows(tsv.read_text(errors="replace"), tsv.stem)[0] if r[0] <= step]
        if rows:
            histories["/".join(keys)] = rows
    summary: dict[str, Any] = {}
    first = {name: rows[0][0] for name, rows in histories.items()}
    for name in sorted(histories, key=lambda n: (first[n], n)):
        if "step" not in summary and first[name] > min(first.values()):
            summary["step"] = step
        *parents, last = name.split("/")
        group = summary
        for key in parents:
            group = group.setdefault(key, {})
        group[last] = _value(histories[name][-1][1])
    summary["step"] = step
    return summary


def repair_summary(metrics: Path, step: int, not_compared: Sequence[tuple[str, ...]] = ()) -> str | None:
    """Rebuild `metrics`/metrics.json from the histories when it cannot be read as a JSON object; say why."""
    path = metrics / SUMMARY
    if not path.is_file():
        return None
    try:
        if isinstance(json.loads(path.read_text(encoding="utf-8")), dict):
            return None
        why = "not a JSON object"
    except (UnicodeDecodeError, ValueError) as e:
        why = f"unreadable: {e}"
    with atomic_path(path) as tmp:   # dvclive's own layout: 4-space indent and a final newline
        tmp.write_text(json.dumps(rebuild_summary(metrics, step, not_compared), indent=4) + "\n")
    return f"{SUMMARY} was {why}; rebuilt from the histories at step {step}"


def open_live(metrics: Path, resume_step: int | None, not_compared: Sequence[tuple[str, ...]] = ()) -> Any:
    """dvclive's Live on the folder `metrics` (no dvc.yaml of its own, no experiment saved), made safe.

    First, what killed writes left: temporary files in the folder go (atomic.remove_stale_temps). To
    resume (`resume_step`: the step of the snapshot resumed), the histories keep only their complete rows
    up to that step and an unreadable summary is rebuilt from them (`not_compared`: the summary groups
    the caller leaves out of it), with one WARNING line when anything was damaged; None starts afresh
    (dvclive deletes the old files). The Live returned writes its summary atomically.
    """
    remove_stale_temps(metrics)
    if resume_step is not None:
        damaged = []
        if (metrics / HISTORIES).is_dir():
            damaged += repair_histories(metrics / HISTORIES, resume_step)
        damaged += [why for why in [repair_summary(metrics, resume_step, not_compared)] if why]
        if damaged:
            log.warning("%s: repaired what an interrupted run left: %s", metrics, "; ".join(damaged))
    return _atomic_live()(str(metrics), resume=resume_step is not None, dvcyaml=False, save_dvc_exp=False)


def _atomic_live() -> type:
    """dvclive's Live with an atomic summary (imported here: only the train stage's rank 0 needs dvclive).

    dvclive truncates metrics.json and then writes it, at every step; a kill in between leaves it empty.
    Here each summary goes to a temporary file (the `metrics_file` dvclive writes to, only while it
    writes the summary) that then replaces metrics.json whole.
    """
    from dvclive import Live

    class AtomicSummaryLive(Live):
        _summary_tmp: Path | None = None

        @property
        def metrics_file(self) -> str:
            return str(self._summary_tmp) if self._summary_tmp is not None else super().metrics_file

        def make_summary(self) -> None:
            with atomic_path(self.metrics_file) as tmp:
                self._summary_tmp = tmp
                try:
                    super().make_summary()
                finally:
                    self._summary_tmp = None

    return AtomicSummaryLive
