"""Directions in a generator's W space, and how well they do what their names say: pure math.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# The directions file's format tag (the contract is in projection.py's docstring: name -> unit vector in W
# and ws range; extra keys such as method and score are allowed).
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
