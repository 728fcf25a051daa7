"""Directions in a generator's W space: finding them, measuring them, their file, and edits along them.

Three ways to find directions, none needing labels made by people or anything downloaded:

- closed form (SeFa, Shen & Zhou 2021): every synthesis layer maps w to its styles through a linear
  affine A [channels, w_dim]; the unit w that moves the styles most is the top eigenvector of A^T A, with
  A's rows (one per style channel) scaled to unit length first, so that no layer dominates by its scale.
  Stack the rows of the layers in a range (coarse, middle, fine or all) to find that range's directions.
- PCA in W (GANSpace, Harkonen et al. 2020): principal axes of sampled w.
- labelled (InterFaceGAN, Shen et al. 2020): label generated images (here with the pipeline's own dog
  detector), keep the top and bottom share of each attribute as positives and negatives, fit a linear
  boundary in W; its unit normal is the direction and its accuracy on held-out samples says how real it is.

Then `spearman` measures, on seeds not used to fit, whether stepping along a direction moves the measured
attribute monotonically.

Layer ranges (coarse, middle, fine, FIRST-STOP) are stylegan2/ws_ranges.py's.

The directions file (the explore stage writes it with `write_directions`; `corgigan serve` and
`corgigan generate --what edit` read it with `read_directions`) is JSON:

    {"format": "corgigan-directions/1",
     "directions": {"<name>": {"vector": [w_dim floats], "layers": [first, stop]}, ...}}

`vector` is a direction in W (normalised to unit length on reading); `layers` (optional; default all) is
the half-open range of ws the edit applies to; `sigma` (optional) is W's spread along it, the unit of edit
strengths (measured when absent: `direction_sigmas`). Other keys (accuracy, method, ...) are allowed and
ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corgigan.analysis.latents import sample_w
from corgigan.errors import StageError
from corgigan.tables import write_json

# The directions file's format tag (the contract is this module's docstring).
FORMAT = "corgigan-directions/1"


def style_affines(G: torch.nn.Module, first: int, stop: int) -> list[torch.Tensor]:
    """The style affine weights [channels, w_dim] of the synthesis convolutions driven by ws [first, stop).

    Only the convolutions count, as in SeFa: the toRGB affines set colour gains and carry little of the
    picture's content. Weight gains are left out (they scale a whole matrix, and rows are normalised anyway).
    """
    out: list[torch.Tensor] = []
    w_idx = 0
    for block in G.synthesis.blocks:
        convs = [block.conv1] if block.conv0 is None else [block.conv0, block.conv1]
        for i, conv in enumerate(convs):
            if first <= w_idx + i < stop:
                out.append(conv.affine.weight.detach().float().cpu())
        w_idx += block.num_conv
    return out


def _fix_signs(vectors: torch.Tensor) -> torch.Tensor:
    """Flip each row so its largest-magnitude entry is positive: eigenvectors and singular vectors come
    with an arbitrary sign, and a stable sign keeps the directions file byte-stable across LAPACKs."""
    idx = vectors.abs().argmax(dim=1, keepdim=True)
    return vectors * torch.sign(vectors.gather(1, idx))


def sefa(affines: list[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form directions: (top-k unit vectors [k, w_dim], their share of the eigenvalue sum [k]).

    affines: style weights [channels, w_dim] of the chosen layers (see `style_affines`).
    """
    if not affines:
        raise ValueError("sefa: no style affines in the chosen layer range")
    A = torch.cat(affines).double()                                   # [sum channels, w_dim]
    A = A / A.norm(dim=1, keepdim=True).clamp_min(1e-12)
    values, vectors = torch.linalg.eigh(A.T @ A)                      # ascending; columns are vectors
    order = torch.argsort(values, descending=True)[:k]
    share = values[order] / values.clamp_min(0).sum()
    return _fix_signs(vectors[:, order].T).float(), share.float()


def pca(w: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal axes of sampled w [N, w_dim]: (top-k unit vectors [k, w_dim], explained variance ratios
    [k])."""
    x = w.double() - w.double().mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)              # x = u diag(s) vh
    var = s**2
    return _fix_signs(vh[:k]).float(), (var[:k] / var.sum()).float()


def spread(w: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Standard deviation of sampled w [N, w_dim] along each unit vector [K, w_dim]: one sigma, [K].

    Edits are measured in these sigmas, so a step of 1 is as far as W's own spread whatever the model.
    """
    return (w.double() @ vectors.double().T).std(dim=0).float().clamp_min(1e-8)


# ----------------------------------------------------------------------------------------------------
# Labelled directions (InterFaceGAN)


def extremes(values: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the bottom and top `share` of `values` (NaN never chosen): (negatives, positives).

    Ties at a cut go to the side they tie with, so a discrete attribute (number of dogs) splits at a value
    boundary; when the top and bottom cuts meet (most samples equal), the split is at that value instead:
    below it against the rest. Either side may come back empty: the attribute does not vary enough.
    """
    valid = np.flatnonzero(np.isfinite(values))
    v = values[valid]
    if len(v) < 2:
        return valid[:0], valid[:0]
    k = max(1, round(share * len(v)))
    ordered = np.sort(v)
    lo, hi = ordered[k - 1], ordered[len(v) - k]
    if lo < hi:
        neg, pos = v <= lo, v >= hi
    else:
        neg, pos = v < hi, v >= hi
        if not neg.any():
            neg, pos = v <= lo, v > lo
    return valid[neg], valid[pos]


def split_holdout(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of range(n) into (fit, held-out) index arrays, held-out about `holdout` of n
    (at least one on each side when n >= 2)."""
    order = np.random.default_rng(seed).permutation(n)
    h = min(max(1, round(holdout * n)), n - 1) if n >= 2 else 0
    return np.sort(order[h:]), np.sort(order[:h])


@dataclass(frozen=True)
class Boundary:
    """A linear boundary in W: sign(x @ normal + offset) says positive; normal has unit length."""

    normal: np.ndarray          # [w_dim], unit length, pointing to the positives
    offset: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        """True where x [N, w_dim] falls on the positive side."""
        return x @ self.normal + self.offset > 0


def fit_boundary(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 50) -> Boundary:
    """L2-regularised logistic regression of y (bool [N]) on x [N, w_dim], by Newton's method.

    Inputs are centred and divided by one overall scale (not per dimension: that would tilt the normal away
    from W's own geometry), so `l2` means the same for every model. The penalty keeps the fit finite when
    the classes separate, as they do whenever N is small next to w_dim.
    """
    x = np.asarray(x, np.float64)
    t = np.asarray(y, np.float64)
    if t.min() == t.max():
        raise ValueError("fit_boundary: needs samples of both classes")
    mean = x.mean(axis=0)
    scale = float(np.sqrt(((x - mean) ** 2).sum(axis=1).mean())) or 1.0
    xs = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])          # [N, D + 1], last column: bias
    n, d = xs.shape
    reg = np.full(d, l2 * n)
    reg[-1] = 0.0                                                          # the bias is not penalised
    beta = np.zeros(d)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(xs @ beta, -30, 30)))
        grad = xs.T @ (p - t) + reg * beta
        hess = (xs * (p * (1 - p))[:, None]).T @ xs + np.diag(reg) + 1e-9 * np.eye(d)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    coef = beta[:-1] / scale                                               # back to W's units
    norm = float(np.linalg.norm(coef))
    if norm == 0 or not math.isfinite(norm):
        raise ValueError("fit_boundary: the fit found no direction")
    # sign(xs @ beta) == sign((x - mean) @ coef + b) == sign(x @ coef + (b - mean @ coef)), then scaled.
    return Boundary(normal=coef / norm, offset=float((beta[-1] - mean @ coef) / norm))


def accuracy(boundary: Boundary, x: np.ndarray, y: np.ndarray) -> float:
    """Share of samples x [N, w_dim] whose side of the boundary matches y (bool [N])."""
    return float((boundary.predict(np.asarray(x, np.float64)) == np.asarray(y, bool)).mean())


# ----------------------------------------------------------------------------------------------------
# Checking a direction


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N of x [N], ties sharing their average rank."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    out = np.empty(len(x))
    # Each run of equal values [start, end) gets the mean of ranks start+1..end.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends):
        out[order[s:e]] = (s + 1 + e) / 2
    return out


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation of x and y [N], pairs with a NaN dropped; NaN when either is constant or
    fewer than 3 pairs remain."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return math.nan
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else math.nan


# ----------------------------------------------------------------------------------------------------
# The directions file, and edits along its directions


@dataclass(frozen=True)
class Direction:
    """A unit direction in W and the ws it moves."""

    name: str
    vector: torch.Tensor            # [w_dim], unit length
    layers: tuple[int, int]         # [first, stop) of the ws; (0, num_ws) for all
    sigma: float | None = None      # W's spread along it, as the explore stage stored it (None: not stored)


def read_directions(path: str | Path, w_dim: int, num_ws: int) -> list[Direction]:
    """Read a directions file (format in the module docstring); StageError says what is wrong."""
    return directions_of(read_document(path), path, w_dim, num_ws)


def read_document(path: str | Path) -> dict[str, Any]:
    """A directions file as its JSON document, its format checked (its vectors are checked against a model
    by `directions_of`); StageError says what is wrong."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(f"{path}: directions file not found (the explore stage writes it)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise StageError(f"{path}: not a JSON directions file ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(
            doc.get("directions"), dict):
        raise StageError(f"{path}: not a directions file ({{'format': '{FORMAT}', "
                         f"'directions': {{name: {{'vector': [...], 'layers': [first, stop]}}}}}})")
    return doc


def directions_of(doc: dict[str, Any], path: str | Path, w_dim: int, num_ws: int) -> list[Direction]:
    """The directions of a document `read_document` returned (read from `path`), each checked against a
    model with `w_dim` and `num_ws`; StageError says what is wrong."""
    out = []
    for name, entry in doc["directions"].items():
        where = f"{path}: direction {name!r}"
        vec = entry.get("vector") if isinstance(entry, dict) else None
        try:
            v = torch.tensor(vec, dtype=torch.float32)
        except (TypeError, ValueError):
            raise StageError(f"{where}: vector must be a list of {w_dim} numbers") from None
        if v.shape != (w_dim,) or not torch.isfinite(v).all() or float(v.norm()) == 0:
            raise StageError(f"{where}: vector must be {w_dim} (the model's w_dim) finite numbers, not all 0")
        layers = entry.get("layers", [0, num_ws])
        if (not isinstance(layers, list) or len(layers) != 2 or not all(type(x) is int for x in layers)
                or not 0 <= layers[0] < layers[1] <= num_ws):
            raise StageError(f"{where}: layers must be [first, stop] with 0 <= first < stop <= {num_ws}")
        sigma = entry.get("sigma")
        if sigma is not None and (type(sigma) not in (int, float) or not math.isfinite(sigma) or sigma <= 0):
            raise StageError(f"{where}: sigma must be a positive number (or absent)")
        out.append(Direction(name=str(name), vector=v / v.norm(), layers=(layers[0], layers[1]),
                             sigma=None if sigma is None else float(sigma)))
    return out


def direction_sigmas(G: torch.nn.Module, found: Sequence[Direction], samples: int = 2000) -> list[float]:
    """Each direction's sigma, the unit of edit strengths: the file's own (the explore stage stores one), else
    measured the same way, W's spread along it over the untruncated w of seeds 0..samples-1."""
    missing = [d.vector for d in found if d.sigma is None]
    measured = iter(spread(sample_w(G, list(range(samples)), 1.0), torch.stack(missing)).tolist()
                    if missing else [])
    return [d.sigma if d.sigma is not None else next(measured) for d in found]


@dataclass(frozen=True)
class Edit:
    """How to change a latent before drawing it (everything the explore page's sliders set)."""

    psi: float = 1.0                        # truncation towards w_avg (1: none)
    mix: torch.Tensor | None = None         # [num_ws, w_dim]: style-mixing source for layers >= cutoff
    cutoff: int = 0
    moves: dict[str, float] = field(default_factory=dict)   # direction name -> signed amount, in W's units


def apply_edit(ws: torch.Tensor, w_avg: torch.Tensor, edit: Edit, directions: dict[str, Direction]
               ) -> torch.Tensor:
    """ws [N, num_ws, w_dim] edited: truncated, then mixed (fine layers from edit.mix), then moved along
    each direction over its layers."""
    out = w_avg.to(ws) + edit.psi * (ws - w_avg.to(ws))
    if edit.mix is not None:
        out = out.clone()
        out[:, edit.cutoff:] = (w_avg.to(ws) + edit.psi * (edit.mix.to(ws) - w_avg.to(ws)))[edit.cutoff:]
    for name, amount in edit.moves.items():
        if amount:
            d = directions[name]
            out = out.clone()
            move(out, d.vector, d.layers, amount)
    return out


def move(ws: torch.Tensor, vector: torch.Tensor, layers: tuple[int, int], amount: float | torch.Tensor
         ) -> None:
    """Add amount * vector [w_dim] to ws [..., num_ws, w_dim] over ws [first, stop), in place: the one edit
    that apply_edit (a slider) and edit_ws (a strip, a video, the explore check) both make. `amount`
    broadcasts against ws[..., first:stop, :]."""
    ws[..., layers[0]:layers[1], :] += amount * vector.to(ws)


def edit_ws(w: torch.Tensor, vector: torch.Tensor, layers: tuple[int, int], offsets: np.ndarray,
            num_ws: int) -> torch.Tensor:
    """ws [S * T, num_ws, w_dim], seed-major: each w [S, w_dim] moved by each offset [T] (in W's units)
    along `vector` [w_dim], over ws layers [first, stop) only."""
    ws = w[:, None, None, :].repeat(1, len(offsets), num_ws, 1)               # [S, T, num_ws, w_dim]
    step = torch.as_tensor(np.asarray(offsets), dtype=ws.dtype, device=ws.device)[None, :, None, None]
    move(ws, vector, layers, step)
    return ws.reshape(-1, num_ws, w.shape[1])


def write_directions(path: Path, header: dict[str, Any], entries: dict[str, dict[str, Any]]) -> None:
    """Write a directions file: {"format": FORMAT, **header, "directions": entries}, atomically.

    Each entry holds at least "vector" (a tensor or sequence [w_dim]) and "layers" ([first, stop]); other
    keys (method, scores) are stored as given. Vectors are stored rounded to 8 decimals, so the file is
    byte-stable across runs and machines.
    """
    out = {}
    for name, entry in entries.items():
        entry = dict(entry)
        entry["layers"] = list(entry["layers"])
        entry["vector"] = [round(float(v), 8) for v in entry["vector"]]
        out[name] = entry
    write_json({"format": FORMAT, **header, "directions": out}, path)
