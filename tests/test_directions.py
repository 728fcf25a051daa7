"""directions.py and ws_ranges.py: layer ranges, SeFa and PCA against their definitions, labelled
boundaries that recover a planted direction and are scored on held-out samples, and Spearman's rank
correlation; the directions file's contract and edits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from corgigan.analysis import directions as dirs
from corgigan.errors import StageError
from corgigan.stylegan2 import configs
from corgigan.stylegan2.ws_ranges import is_layers_spec, layer_range
from tests.helpers import tiny_config, write_directions


def tiny_generator(resolution: int) -> torch.nn.Module:
    torch.manual_seed(0)
    G, _ = configs.build_networks(configs.network_spec(tiny_config(resolution=resolution)))
    return G.eval()


@pytest.mark.parametrize(("num_ws", "spec", "expected"), [
    (12, "all", (0, 12)), (12, "coarse", (0, 3)), (12, "middle", (3, 7)), (12, "fine", (7, 12)),
    (18, "fine", (7, 18)), (6, "middle", (3, 6)), (6, "2-5", (2, 5)),
])
def test_layer_ranges(num_ws: int, spec: str, expected: tuple[int, int]) -> None:
    assert is_layers_spec(spec)
    assert layer_range(spec, num_ws) == expected


@pytest.mark.parametrize(("num_ws", "spec", "match"), [
    (6, "fine", "no ws in this range"), (6, "0-7", "stop <= 6"), (6, "3-3", "no ws"), (6, "big", "must be"),
])
def test_layer_range_errors(num_ws: int, spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        layer_range(spec, num_ws)


def test_style_affines_follow_the_ws_index_of_each_conv() -> None:
    G = tiny_generator(16)                                   # blocks 4, 8, 16: convs on ws 0 | 1, 2 | 3, 4
    assert G.num_ws == 6
    b = G.synthesis.blocks
    expected = [b[0].conv1, b[1].conv0, b[1].conv1, b[2].conv0, b[2].conv1]
    got = dirs.style_affines(G, 0, 6)
    assert len(got) == 5 and all(torch.equal(g, c.affine.weight) for g, c in zip(got, expected))
    coarse = dirs.style_affines(G, *layer_range("coarse", G.num_ws))
    assert [g.data_ptr() for g in coarse] == [c.affine.weight.data_ptr() for c in expected[:3]]
    assert dirs.style_affines(G, 5, 6) == []                  # the last w drives only toRGB


def test_sefa_is_the_top_eigenvectors_of_the_normalised_stacked_weights() -> None:
    G = tiny_generator(16)
    affines = dirs.style_affines(G, 0, G.num_ws)
    vectors, share = dirs.sefa(affines, 4)
    A = torch.cat(affines).double()
    A = A / A.norm(dim=1, keepdim=True)
    M = A.T @ A
    values = torch.linalg.eigvalsh(M).flip(0)
    assert vectors.shape == (4, G.w_dim)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(4), atol=1e-5)
    for v, lam in zip(vectors.double(), values[:4]):
        assert torch.allclose(M @ v, lam * v, atol=1e-4)       # an eigenvector, in falling order
    assert torch.allclose(share.double(), values[:4] / values.sum(), atol=1e-6)
    assert bool((share[:-1] >= share[1:]).all())


def test_sefa_finds_the_direction_every_layer_reads() -> None:
    # Every style channel of every layer reads mostly one direction of w: that is SeFa's top direction.
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(16, generator=gen)
    u = u / u.norm()
    affines = [torch.outer(torch.randn(c, generator=gen), u) * 5 + 0.1 * torch.randn(c, 16, generator=gen)
               for c in (8, 16, 4)]
    vectors, share = dirs.sefa(affines, 2)
    assert abs(float(vectors[0] @ u)) > 0.99 and float(share[0]) > 0.5
    assert float(vectors[0][vectors[0].abs().argmax()]) > 0     # the sign rule


def test_pca_recovers_the_axis_of_largest_spread() -> None:
    gen = torch.Generator().manual_seed(2)
    axis = torch.zeros(8)
    axis[3] = 1.0
    w = torch.randn(2000, 8, generator=gen) * 0.1 + torch.randn(2000, 1, generator=gen) * 3 * axis + 5
    vectors, ratio = dirs.pca(w, 3)
    assert abs(float(vectors[0] @ axis)) > 0.999
    assert float(ratio[0]) > 0.95 and bool((ratio[:-1] >= ratio[1:]).all())
    sigma = dirs.spread(w, vectors[:1])
    assert float(sigma[0]) == pytest.approx(3.0, rel=0.1)


def test_extremes_take_top_and_bottom_share_and_respect_ties() -> None:
    v = np.array([5.0, 1.0, np.nan, 3.0, 2.0, 4.0, 0.0, 6.0, 7.0, 8.0, 9.0])
    neg, pos = dirs.extremes(v, 0.2)                           # 10 valid values: 2 per side
    assert sorted(v[neg]) == [0.0, 1.0] and sorted(v[pos]) == [8.0, 9.0]
    counts = np.array([0.0] * 8 + [1.0] * 3 + [2.0])           # discrete: the cuts meet at 0
    neg, pos = dirs.extremes(counts, 0.3)
    assert set(counts[neg]) == {0.0} and set(counts[pos]) == {1.0, 2.0} and len(neg) + len(pos) == 12
    neg, pos = dirs.extremes(np.zeros(10), 0.3)                # constant: one side is empty
    assert len(neg) == 0 or len(pos) == 0


def test_split_holdout_is_a_seeded_partition() -> None:
    fit, held = dirs.split_holdout(20, 0.3, seed=4)
    assert len(held) == 6 and len(fit) == 14
    assert sorted(np.r_[fit, held].tolist()) == list(range(20))
    again = dirs.split_holdout(20, 0.3, seed=4)
    assert np.array_equal(fit, again[0]) and np.array_equal(held, again[1])
    assert [len(x) for x in dirs.split_holdout(2, 0.9, 0)] == [1, 1]


def test_boundary_recovers_a_planted_direction_and_scores_it_on_held_out_samples() -> None:
    rng = np.random.default_rng(3)
    d = rng.normal(size=32)
    d /= np.linalg.norm(d)
    x = rng.normal(size=(600, 32)) * 2 + 7                     # off-centre, like W
    score = (x - 7) @ d + 0.3 * rng.normal(size=600)
    neg, pos = dirs.extremes(score, 0.3)
    idx = np.r_[neg, pos]
    y = np.r_[np.zeros(len(neg), bool), np.ones(len(pos), bool)]
    fit, held = dirs.split_holdout(len(idx), 0.3, 0)
    b = dirs.fit_boundary(x[idx[fit]], y[fit])
    assert float(np.linalg.norm(b.normal)) == pytest.approx(1.0)
    assert float(b.normal @ d) > 0.9                            # the planted direction, with its sign
    assert dirs.accuracy(b, x[idx[held]], y[held]) > 0.95
    # Labels with no relation to x: held-out accuracy falls to chance, however well the fit separates.
    y_random = rng.random(len(fit)) < 0.5
    b = dirs.fit_boundary(x[idx[fit]], y_random)
    assert dirs.accuracy(b, x[idx[held]], rng.random(len(held)) < 0.5) < 0.75
    with pytest.raises(ValueError, match="both classes"):
        dirs.fit_boundary(x[:5], np.ones(5, bool))


def test_spearman() -> None:
    x = np.arange(7.0)
    assert dirs.spearman(x, x**3) == pytest.approx(1.0)
    assert dirs.spearman(x, -np.exp(x)) == pytest.approx(-1.0)
    assert np.array_equal(dirs.ranks(np.array([10.0, 20.0, 10.0, 30.0])), [1.5, 3.0, 1.5, 4.0])
    # With ties: Pearson's correlation of the average ranks, worked by hand.
    a, b = np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0, 4.0])
    ra, rb = np.array([1, 2.5, 2.5, 4]), np.array([1, 3, 2, 4.0])
    assert dirs.spearman(a, b) == pytest.approx(float(np.corrcoef(ra, rb)[0, 1]))
    assert dirs.spearman(x, np.r_[1.0, np.nan, 2, 3, 4, 5, 6]) == pytest.approx(1.0)   # NaN pairs dropped
    assert math.isnan(dirs.spearman(x, np.ones(7)))                                  # constant
    assert math.isnan(dirs.spearman(x[:2], x[:2]))


def test_the_directions_file_is_written_and_read_in_one_place(tmp_path) -> None:
    path = tmp_path / "d.json"
    v = torch.tensor([0.5, 0.75, 0.0, 1e-9])          # exact in float32
    dirs.write_directions(path, {"num_ws": 6}, {"a": {"method": "pca", "layers": (1, 3), "vector": v,
                                                      "score": 0.5}})
    doc = json.loads(path.read_text())
    assert doc["format"] == dirs.FORMAT and doc["num_ws"] == 6
    assert doc["directions"]["a"]["method"] == "pca" and doc["directions"]["a"]["score"] == 0.5
    assert doc["directions"]["a"]["vector"] == [0.5, 0.75, 0.0, 0.0]                # 8 decimals
    (d,) = dirs.read_directions(path, w_dim=4, num_ws=6)
    assert d.name == "a" and d.layers == (1, 3) and d.sigma is None
    # A slider's move and a strip's offsets are the same edit.
    w = torch.randn(1, 4)
    strip = dirs.edit_ws(w, d.vector, d.layers, np.array([0.5]), num_ws=6)
    edit = dirs.Edit(moves={"a": 0.5})
    slider = dirs.apply_edit(w[:, None].repeat(1, 6, 1), torch.zeros(4), edit, {"a": d})
    assert torch.equal(strip, slider)


def test_directions_file_contract(tmp_path) -> None:
    path = write_directions(tmp_path / "d.json", 4, {
        "ears": {"vector": [3, 0, 4, 0], "layers": [0, 2], "accuracy": 0.9},   # extra keys are allowed
        "colour": {"vector": [0, 1, 0, 0], "sigma": 0.25},
    })
    found = dirs.read_directions(path, w_dim=4, num_ws=6)
    assert [d.name for d in found] == ["ears", "colour"]
    assert torch.allclose(found[0].vector, torch.tensor([0.6, 0, 0.8, 0])) and found[0].layers == (0, 2)
    assert found[1].layers == (0, 6) and found[0].sigma is None and found[1].sigma == 0.25
    bad = {
        "missing.json": None,
        "wrong_dim.json": {"a": {"vector": [1, 0]}},
        "zero.json": {"a": {"vector": [0, 0, 0, 0]}},
        "layers.json": {"a": {"vector": [1, 0, 0, 0], "layers": [3, 9]}},
        "nan.json": {"a": {"vector": [1, "x", 0, 0]}},
        "sigma.json": {"a": {"vector": [1, 0, 0, 0], "sigma": -1}},
    }
    for name, entries in bad.items():
        p = tmp_path / name
        if entries is not None:
            write_directions(p, 4, entries)
        with pytest.raises(StageError, match=name.split(".")[0] if entries is None else "direction 'a'"):
            dirs.read_directions(p, w_dim=4, num_ws=6)
    (tmp_path / "other.json").write_text(json.dumps({"directions": []}))
    with pytest.raises(StageError, match="not a directions file"):
        dirs.read_directions(tmp_path / "other.json", 4, 6)


def test_edits() -> None:
    w_avg = torch.zeros(4)
    ws = torch.ones(1, 6, 4)
    d = dirs.Direction("a", torch.tensor([1.0, 0, 0, 0]), (1, 3))
    assert torch.equal(dirs.apply_edit(ws, w_avg, dirs.Edit(psi=0.0), {}), torch.zeros(1, 6, 4))
    mixed = dirs.apply_edit(ws, w_avg, dirs.Edit(mix=torch.full((6, 4), 2.0), cutoff=4), {})
    assert torch.equal(mixed[0, :4], ws[0, :4]) and torch.all(mixed[0, 4:] == 2)
    moved = dirs.apply_edit(ws, w_avg, dirs.Edit(moves={"a": 0.5}), {"a": d})
    assert torch.equal(moved[0, :, 0], torch.tensor([1, 1.5, 1.5, 1, 1, 1]))
    assert torch.equal(moved[0, :, 1:], ws[0, :, 1:]) and torch.equal(ws, torch.ones(1, 6, 4))
