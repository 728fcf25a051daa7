"""Curves as PNGs: the training curves (losses, regularisers, D scores, ADA p) and FID/KID, against kimg.

DVC's own plots render in a browser page that loads vega from a CDN; this picture shows anywhere
(a DVC image plot, a file viewer, a README). It is drawn from the dvclive histories the train stage
writes (one ``<name>.tsv`` of ``step, value`` per metric), with x in kimg from ``Progress/kimg``;
the scores from the evaluate stage's rows, one per scored snapshot.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from corgigan.tables import atomic_path

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
