"""The generator as ONNX (export/onnx_graph.py): the graph's contract, onnxruntime against PyTorch at the demo
and paper256 sizes, dynamic batch, truncation, byte identity across processes, its errors, and
`corgigan export --onnx` against `corgigan generate`."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corgigan import cli
from corgigan.analysis.latents import seed_latents
from corgigan.export import onnx_graph
from corgigan.export.onnx_graph import MAX_ERROR, OPSET, OnnxError, write_onnx
from corgigan.stylegan2 import configs
from corgigan.stylegan2.load import build, load_networks
from corgigan.stylegan2.loop import training_loop
from corgigan.stylegan2.snapshot import latest_snapshot
from tests.helpers import LOOP_KW, ROOT, tiny_config, write_dataset

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def make_generator(spec: configs.NetworkSpec, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised G in eval mode, with the parts a fresh network leaves at zero set to random
    values (w_avg, noise strengths), so truncation and the constant noise change the pictures."""
    torch.manual_seed(seed)
    G, _ = configs.build_networks(spec, with_D=False)
    with torch.no_grad():
        G.mapping.w_avg.copy_(torch.randn(G.w_dim))
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)
    return G.eval().requires_grad_(False)


def demo_spec(resolution: int = 64) -> configs.NetworkSpec:
    return configs.network_spec(configs.make_config("demo", resolution))


def tiny_spec(c_dim: int = 0) -> configs.NetworkSpec:
    """tests/helpers' tiny networks (16-d latents, 16 feature maps) at 16 px: exports in a few seconds."""
    return configs.NetworkSpec(16, 3, c_dim, tiny_config().G_kwargs, None)


def torch_images(G: torch.nn.Module, z: torch.Tensor, psi: float,
                 c: torch.Tensor | None = None) -> np.ndarray:
    """G's PyTorch images, as `generate` draws them (eval mode, constant noise)."""
    with torch.no_grad():
        return G(z, c, truncation_psi=psi, noise_mode="const").numpy()


def ort_images(path: Path, z: torch.Tensor, psi: float, c: torch.Tensor | None = None) -> np.ndarray:
    """onnxruntime run directly (not through onnx_graph), as a user of the file would."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"z": z.numpy(), "psi": np.array(psi, dtype=np.float32)}
    if c is not None:
        feeds["c"] = c.numpy()
    return session.run(["image"], feeds)[0]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[torch.nn.Module, onnx_graph.OnnxCheck]:
    G = make_generator(demo_spec())
    path = tmp_path_factory.mktemp("onnx") / "generator.onnx"
    start = time.perf_counter()
    check = write_onnx(G, path, seed=0, psi=0.7, count=4)
    print(f"demo export + check {time.perf_counter() - start:.1f} s, {path.stat().st_size / 1e6:.1f} MB, "
          f"max error {check.max_error:.3g}")
    return G, check


def test_demo_size_onnxruntime_matches_pytorch(demo):
    G, check = demo
    assert (check.opset, check.checked) == (OPSET, 4)
    assert 0 <= check.max_error <= MAX_ERROR
    # The reported error is what a user measures: generate's latents of seeds 0-3, onnxruntime directly.
    z = seed_latents([0, 1, 2, 3], G.z_dim)
    want = torch_images(G, z, 0.7)
    got = ort_images(check.path, z, 0.7)
    assert got.shape == want.shape == (4, 3, 64, 64)
    error = float(np.abs(got.astype(np.float64) - want).max())
    assert error <= MAX_ERROR
    assert error == pytest.approx(check.max_error, rel=1e-6)
    assert np.abs(want).max() > 0.5   # real pictures, not a vanishing output that any graph would match


def test_graph_has_the_stated_inputs_outputs_and_opset(demo):
    G, check = demo
    model = onnx.load(str(check.path))
    onnx.checker.check_model(model)
    assert {(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")} == {("", OPSET)}
    # Standard operators only: no custom (CUDA) op or exporter-private function left in the graph.
    assert {n.domain for n in model.graph.node} <= {""}
    assert not model.functions

    def sig(value):
        t = value.type.tensor_type
        return value.name, t.elem_type, [d.dim_param or d.dim_value for d in t.shape.dim]

    float32 = onnx.TensorProto.FLOAT
    inputs = [sig(v) for v in model.graph.input]
    assert inputs[0][:2] == ("z", float32) and inputs[0][2][1] == G.z_dim
    assert inputs[1] == ("psi", float32, [])
    assert len(inputs) == 2                      # unconditional: no c
    (output,) = [sig(v) for v in model.graph.output]
    assert output[:2] == ("image", float32) and output[2][1:] == [3, 64, 64]
    batch = inputs[0][2][0]
    assert isinstance(batch, str) and output[2][0] == batch   # one symbolic batch, in and out
    # Nothing that depends on where or how the export ran (stack traces, paths).
    raw = check.path.read_bytes()
    assert str(ROOT).encode() not in raw and b"stack_trace" not in raw


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch(demo, batch):
    G, check = demo   # traced with a batch of 2, checked with 4
    z = seed_latents(list(range(100, 100 + batch)), G.z_dim)
    got = ort_images(check.path, z, 1.0)
    assert got.shape == (batch, 3, 64, 64)
    assert np.abs(got - torch_images(G, z, 1.0)).max() <= MAX_ERROR


def test_psi_zero_gives_the_w_avg_image_for_every_z(demo):
    G, check = demo
    z = seed_latents([3, 17, 42], G.z_dim)
    got = ort_images(check.path, z, 0.0)
    ws = G.mapping.w_avg.expand(1, G.num_ws, G.w_dim)
    with torch.no_grad():
        average = G.synthesis(ws, noise_mode="const").numpy()[0]
    assert np.abs(got - average).max() <= MAX_ERROR
    assert np.abs(got - got[:1]).max() <= 1e-6   # the same picture, whatever z
    assert np.abs(ort_images(check.path, z, 1.0)[0] - average).max() > 0.1   # psi does something


def test_conditional_generator_takes_labels(tmp_path):
    G = make_generator(tiny_spec(c_dim=3))
    check = write_onnx(G, tmp_path / "g.onnx", seed=5, count=3)
    assert check.max_error <= MAX_ERROR
    model = onnx.load(str(check.path))
    (c,) = [v for v in model.graph.input if v.name == "c"]
    assert [d.dim_value for d in c.type.tensor_type.shape.dim][1:] == [3]
    z = seed_latents([1, 2], G.z_dim)
    labels = torch.eye(3)[[0, 2]]
    got = ort_images(check.path, z, 0.5, labels)
    assert np.abs(got - torch_images(G, z, 0.5, labels)).max() <= MAX_ERROR
    other = ort_images(check.path, z, 0.5, torch.eye(3)[[1, 1]])
    assert np.abs(got - other).max() > 1e-3   # the label reaches the picture


def test_paper256_size(tmp_path):
    G = make_generator(configs.network_spec(configs.make_config("paper256", 256)))
    start = time.perf_counter()
    check = write_onnx(G, tmp_path / "g.onnx", seed=0, psi=0.7, count=2)
    seconds = time.perf_counter() - start
    print(f"paper256 export + check {seconds:.1f} s, {check.path.stat().st_size / 1e6:.1f} MB, "
          f"max error {check.max_error:.3g}")
    assert check.max_error <= MAX_ERROR
    assert ort_images(check.path, seed_latents([9], G.z_dim), 0.7).shape == (1, 3, 256, 256)


SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from pathlib import Path
    import corgigan
    from corgigan.export.onnx_graph import write_onnx
    from corgigan.stylegan2 import configs
    weights, out, seed, G_kwargs = sys.argv[1:]
    print(corgigan.__file__)
    torch.manual_seed(int(seed))   # another global generator state: the bytes must not depend on it
    G, _ = configs.build_networks(configs.NetworkSpec(16, 3, 0, json.loads(G_kwargs), None), with_D=False)
    G.load_state_dict(torch.load(weights, weights_only=True))
    write_onnx(G.eval(), Path(out))
""")


def test_bytes_identical_across_processes_and_checkouts(tmp_path):
    G = make_generator(tiny_spec())
    weights = tmp_path / "G.pt"
    torch.save(G.state_dict(), weights)
    # The second process runs a copy of the package from another folder, as another clone would.
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "src" / "corgigan", checkout / "corgigan",
                    ignore=shutil.ignore_patterns("__pycache__"))
    procs = []
    for i, (hashseed, src) in enumerate((("0", ROOT / "src"), ("12345", checkout))):
        cwd = tmp_path / f"run{i}"
        cwd.mkdir()
        env = dict(os.environ, PYTHONHASHSEED=hashseed, PYTHONPATH=str(src))
        args = [sys.executable, "-c", SCRIPT, str(weights), "g.onnx", str(i),
                json.dumps(tiny_config().G_kwargs)]
        procs.append((src, subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True)))
    for src, proc in procs:   # side by side: two cores, half the wait
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        assert out.startswith(str(src / "corgigan")), out
    first, second = ((tmp_path / f"run{i}" / "g.onnx").read_bytes() for i in range(2))
    assert len(first) > 10_000 and first == second


def test_not_a_generator_is_one_clear_error(tmp_path):
    with pytest.raises(OnnxError, match="not a StyleGAN2 generator"):
        write_onnx(torch.nn.Linear(4, 4), tmp_path / "g.onnx")
    assert not (tmp_path / "g.onnx").exists()


def test_broken_weights_write_nothing(tmp_path):
    G = make_generator(tiny_spec())
    with torch.no_grad():
        G.synthesis.blocks[0].conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(OnnxError, match="not finite"):
        write_onnx(G, tmp_path / "g.onnx")
    assert list(tmp_path.iterdir()) == []


def test_error_above_the_tolerance_writes_nothing(tmp_path, monkeypatch):
    # No real network misses by 1e-3; a zero tolerance makes the float32 rounding (> 0) an error.
    monkeypatch.setattr(onnx_graph, "MAX_ERROR", 0.0)
    (tmp_path / "g.onnx").write_bytes(b"an older export")
    with pytest.raises(OnnxError, match=r"differ from PyTorch's by up to .*not written"):
        write_onnx(make_generator(tiny_spec()), tmp_path / "g.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["g.onnx"]
    assert (tmp_path / "g.onnx").read_bytes() == b"an older export"


@pytest.mark.parametrize(("kwargs", "message"), [({"count": 0}, "count must be >= 1"),
                                                 ({"psi": float("nan")}, "psi must be a finite")])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(OnnxError, match=message):
        write_onnx(make_generator(tiny_spec()), tmp_path / "g.onnx", **kwargs)


# ---- through the CLI: `corgigan export --onnx` -----------------------------------------------------------


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    """A tiny trained run's snapshot folder (8 px)."""
    root = tmp_path_factory.mktemp("run")
    data = write_dataset(root / "corgis.zip", n=4)
    training_loop(data, root / "run", tiny_config(), kimg=0.004, snapshot_kimg=0.004, **LOOP_KW)
    return root / "run"


def test_cli_export_onnx_reproduces_generate(snapshot, tmp_path):
    out, pictures = tmp_path / "export", tmp_path / "pictures"
    params = ["--params", str(ROOT / "params.yaml")]
    assert cli.main([*params, "export", str(snapshot), "--out", str(out), "--onnx"]) == 0
    assert cli.main([*params, "generate", "--checkpoint", str(snapshot), "--out", str(pictures),
                     "--seeds", "0-3", "--psi", "0.7", "--device", "cpu"]) == 0
    G = build(load_networks(snapshot))
    image = ort_images(out / "generator.onnx", seed_latents([0, 1, 2, 3], G.z_dim), 0.7)   # [4, 3, 8, 8]
    # generate's pixel is floor(clip(x * 127.5 + 128)); an x off by at most MAX_ERROR moves that within
    # MAX_ERROR * 127.5 (0.13 of a level): the PNG's value must lie in the floors of that band.
    scaled = image.transpose(0, 2, 3, 1).astype(np.float64) * 127.5 + 128
    low = np.floor(np.clip(scaled - MAX_ERROR * 127.5, 0, 255))
    high = np.floor(np.clip(scaled + MAX_ERROR * 127.5, 0, 255))
    for i, seed in enumerate(range(4)):
        png = np.asarray(Image.open(pictures / f"seed{seed:05d}.png"))
        assert png.shape == (8, 8, 3)
        assert ((low[i] <= png) & (png <= high[i])).all()
    assert np.ptp(image) > 0.1   # pictures, not a constant any graph would give
    # The card's own snippets, as a user runs them: PyTorch's images, then onnxruntime's from the same z.
    blocks = re.findall(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S)
    assert len(blocks) == 2
    scope: dict = {}
    for code in blocks:
        exec(code.replace("MODEL_DIR", str(out)), scope)
    assert np.abs(scope["onnx_images"] - scope["images"].numpy()).max() <= MAX_ERROR


def test_cli_export_onnx_of_broken_weights_is_one_line(snapshot, tmp_path, caplog):
    state = torch.load(latest_snapshot(snapshot), weights_only=True)
    state["G_ema"]["synthesis.blocks.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    caplog.set_level(logging.ERROR)
    out = tmp_path / "export"
    assert cli.main(["--params", str(ROOT / "params.yaml"), "export", str(broken), "--out", str(out),
                     "--onnx"]) == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "not finite" in line and "\n" not in line
    assert not out.exists()
