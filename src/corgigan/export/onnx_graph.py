"""The generator as one ONNX file: latents in, pictures out, checked against PyTorch with onnxruntime.

The graph (ONNX opset 18, which onnxruntime runs from 1.14 on; no custom operators):

    inputs   z      float32 [N, z_dim]   latents (the same z `corgigan generate` draws for a seed:
                                         numpy's RandomState(seed).randn(z_dim))
             psi    float32 []           truncation: 1 none, 0 every image is the average dog
             c      float32 [N, c_dim]   labels, only when the model has them (c_dim > 0)
    output   image  float32 [N, C, H, W] about [-1, 1] (uint8 pixel = clip(image * 127.5 + 128, 0, 255))

N is dynamic. Inside: the mapping network, truncation of every w towards w_avg with psi, and the
synthesis network with its constant noise (noise_mode "const", so the same z gives the same picture),
all in float32 through the plain-torch reference ops; the custom CUDA kernels never enter the graph,
because the export runs on a CPU copy of the network, where only the reference path exists.

The file is written by torch's dynamo exporter (torch.export, then onnxscript's translation), which
handles the dynamic batch. The TorchScript exporter is legacy. Its node metadata (Python stack traces
with absolute paths) is dropped, so the same generator gives the same bytes in any process and in any
checkout: the file can be a DVC output. The file is kept only when onnxruntime reproduces the PyTorch
forward within MAX_ERROR.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from corgigan.analysis.latents import seed_latents
from corgigan.errors import StageError, one_line
from corgigan.stylegan2.atomic import atomic_path

log = logging.getLogger(__name__)

OPSET = 18                   # the dynamo exporter's own opset: no down-conversion pass; onnxruntime >= 1.14
# Largest |onnxruntime - torch| accepted on the [-1, 1] image scale. Measured (2-core x86 CPU, 4-8 images):
# 7e-6 at the demo size (64 px), 3e-5 at paper256's, 3e-6 for a tiny trained snapshot: float32 rounding
# in another order of operations, growing with depth and width. One uint8 level is 2/255 = 7.8e-3, so
# 1e-3 keeps a saved pixel within one level of PyTorch's and leaves 30x headroom above paper256 for larger
# networks and other CPUs' kernels; a translation bug (a wrong pad or filter tap) misses by far more.
MAX_ERROR = 1e-3
EXAMPLE_BATCH = 2            # the batch torch.export traces with (not 0 or 1: those it would specialise)
PROTOBUF_LIMIT = 2**31 - 2**26   # one ONNX file is one protobuf message (< 2 GiB), with room for the graph
INPUT_NAMES = ("z", "psi", "c")
OUTPUT_NAME = "image"


class OnnxError(StageError):
    """The generator cannot be exported, or the exported file does not reproduce it (one line, rc 2)."""


@dataclass(frozen=True)
class OnnxCheck:
    """What write_onnx wrote and how well onnxruntime reproduced PyTorch with it."""

    path: Path          # the ONNX file
    opset: int          # its ONNX opset (OPSET)
    max_error: float    # max |onnxruntime - torch| on [-1, 1] pixels over the checked images
    checked: int        # images compared


class _Sampler(nn.Module):
    """G's sampling forward with psi as a tensor: what the graph computes."""

    def __init__(self, G: nn.Module) -> None:
        super().__init__()
        # Held directly, so the graph's weights carry G's own state-dict names (mapping.*, synthesis.*).
        self.mapping = G.mapping
        self.synthesis = G.synthesis

    def forward(self, z: torch.Tensor, psi: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """z [N, z_dim], psi [], c [N, c_dim] or None -> image [N, C, H, W]."""
        ws = self.mapping(z, c)                            # [N, num_ws, w_dim], untruncated
        # The mapping's own truncation branches on a Python float; a lerp with a tensor weight is the
        # same formula as a graph input (psi = 1 returns ws exactly, psi = 0 exactly w_avg).
        ws = torch.lerp(self.mapping.w_avg, ws, psi)       # [N, num_ws, w_dim]
        return self.synthesis(ws, noise_mode="const", force_fp32=True)   # [N, C, H, W]


def _cpu_copy(G: nn.Module) -> nn.Module:
    """A float32 CPU copy of G in eval mode (the caller's network is left where and as it was)."""
    for attr in ("mapping", "synthesis", "z_dim", "c_dim", "img_resolution", "img_channels"):
        if not hasattr(G, attr):
            raise OnnxError(f"cannot export a {type(G).__name__} to ONNX: not a StyleGAN2 generator "
                            f"(it has no {attr})")
    if getattr(G.mapping, "w_avg", None) is None:
        raise OnnxError("cannot export the generator to ONNX: its mapping network tracks no w_avg, "
                        "which truncation needs")
    size = sum(t.numel() * 4 for t in (*G.parameters(), *G.buffers()))
    if size > PROTOBUF_LIMIT:
        raise OnnxError(f"cannot export the generator to ONNX: its {size / 2**30:.1f} GiB of float32 "
                        f"weights exceed the {PROTOBUF_LIMIT / 2**30:.1f} GiB one ONNX file can hold")
    return copy.deepcopy(G).to(device="cpu", dtype=torch.float32).eval().requires_grad_(False)


def _check_latents(G: nn.Module, seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """z of seeds seed..seed+count-1 (as `generate` draws them) and, for a conditional G, one-hot labels
    cycling through the classes."""
    z = seed_latents(list(range(seed, seed + count)), G.z_dim)          # [count, z_dim]
    if G.c_dim == 0:
        return z, None
    c = torch.zeros(count, G.c_dim)
    c[torch.arange(count), torch.arange(count) % G.c_dim] = 1            # [count, c_dim]
    return z, c


def _strip_metadata(model) -> None:
    """Drop the exporter's per-node metadata and doc strings in place: stack traces with absolute paths
    and Python object names that would make the bytes depend on where and how the export ran."""
    graphs = [model.graph, *(f for f in model.functions)]
    while graphs:
        graph = graphs.pop()
        items = [*graph.node, *graph.input, *graph.output, *graph.value_info, *graph.initializer]
        if hasattr(graph, "metadata_props"):
            del graph.metadata_props[:]
        for item in items:
            if hasattr(item, "metadata_props"):
                del item.metadata_props[:]
            if hasattr(item, "doc_string"):
                item.doc_string = ""
        for node in graph.node:   # If / Loop bodies, should an exporter version emit them
            for attr in node.attribute:
                graphs.extend([attr.g] if attr.HasField("g") else [])
                graphs.extend(attr.graphs)
    del model.metadata_props[:]


def _export_bytes(G: nn.Module) -> bytes:
    """The ONNX file's bytes for G, a copy from _cpu_copy, which this switches to the batch-free path."""
    import onnx

    # Eval mode picks the grouped convolution (one per-sample kernel set), whose group count is the batch:
    # ONNX needs it fixed. Training mode's path (scale activations around one shared convolution) is the
    # same function with a batch-free graph; `training` selects nothing else in the generator.
    G.synthesis.train()
    sampler = _Sampler(G)
    z = torch.zeros(EXAMPLE_BATCH, G.z_dim)
    args: tuple[torch.Tensor, ...] = (z, torch.tensor(1.0))
    batch = torch.export.Dim("batch", min=1)
    dynamic: tuple = ({0: batch}, None)
    if G.c_dim > 0:
        args += (torch.zeros(EXAMPLE_BATCH, G.c_dim),)
        dynamic += ({0: batch},)
    names = list(INPUT_NAMES[:len(args)])
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # "Exporting a model while it is in training mode": on purpose, see above.
            warnings.simplefilter("ignore", UserWarning)
            program = torch.onnx.export(sampler, args, None, dynamo=True, opset_version=OPSET,
                                        input_names=names, output_names=[OUTPUT_NAME],
                                        dynamic_shapes=dynamic, optimize=True, verbose=False)
        model = program.model_proto
    except Exception as e:   # torch.export and the translation raise many types; the user needs the gist
        log.debug("ONNX export failed", exc_info=True)
        raise OnnxError(f"the generator cannot be exported to ONNX: {type(e).__name__}: "
                        f"{one_line(e, 300)}") from e
    _strip_metadata(model)
    model.doc_string = (f"corgigan StyleGAN2 generator, {G.img_channels}x{G.img_resolution}x"
                        f"{G.img_resolution}: inputs {', '.join(names)}; output {OUTPUT_NAME} "
                        "[N, C, H, W] float32, about [-1, 1]")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise OnnxError(f"the exported ONNX graph is invalid: {one_line(e, 300)}") from e
    data = model.SerializeToString(deterministic=True)
    log.info("exported the generator to ONNX (opset %d, %.1f MB) in %.1f s", OPSET, len(data) / 1e6,
             time.perf_counter() - start)
    return data


def run_onnx(path: Path, z: np.ndarray, psi: float, c: np.ndarray | None = None) -> np.ndarray:
    """Images [N, C, H, W] float32 from the ONNX file at `path`, on onnxruntime's CPU provider."""
    import onnxruntime as ort

    feeds = {"z": np.ascontiguousarray(z, dtype=np.float32), "psi": np.array(psi, dtype=np.float32)}
    if c is not None:
        feeds["c"] = np.ascontiguousarray(c, dtype=np.float32)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (image,) = session.run([OUTPUT_NAME], feeds)
    except Exception as e:   # onnxruntime's errors share no useful base class (Fail, InvalidGraph, ...)
        raise OnnxError(f"{path}: onnxruntime cannot run it: {type(e).__name__}: {one_line(e, 300)}") from e
    return image


def write_onnx(G: torch.nn.Module, path: Path, seed: int = 0, psi: float = 1.0, count: int = 4) -> OnnxCheck:
    """Export generator G to the ONNX file `path` (opset OPSET; graph in the module docstring) and check it.

    The check runs the file with onnxruntime (CPU) on the `count` latents of seeds seed..seed+count-1 at
    truncation `psi` and compares with G's PyTorch forward (CPU, float32, constant noise). The file is
    written atomically and only when the images agree within MAX_ERROR; else OnnxError, as for a network
    that cannot be exported or a file onnxruntime cannot run.
    """
    path = Path(path)
    if count < 1:
        raise OnnxError(f"write_onnx: count must be >= 1, got {count}")
    if not math.isfinite(psi):
        raise OnnxError(f"write_onnx: psi must be a finite number, got {psi}")
    G = _cpu_copy(G)
    z, c = _check_latents(G, seed, count)
    with torch.no_grad():   # the forward `generate` runs (eval mode), before the export changes the mode
        want = G(z, c, truncation_psi=psi, noise_mode="const", force_fp32=True).numpy()   # [count, C, H, W]
    if not np.isfinite(want).all():
        raise OnnxError("the generator's own images are not finite (NaN or inf): its weights are broken "
                        "(a diverged training run?); nothing to export")
    data = _export_bytes(G)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        got = run_onnx(tmp, z.numpy(), psi, None if c is None else c.numpy())
        if got.shape != want.shape:
            raise OnnxError(f"{path}: onnxruntime gave images of shape {list(got.shape)}, PyTorch "
                            f"{list(want.shape)}")
        error = float(np.abs(got.astype(np.float64) - want).max())
        if not error <= MAX_ERROR:   # NaN fails too
            raise OnnxError(f"{path}: onnxruntime's images differ from PyTorch's by up to {error:.3g} "
                            f"(allowed {MAX_ERROR:g} on [-1, 1] pixels); the file was not written")
    log.info("wrote %s: onnxruntime matches PyTorch within %.2g over %d images (psi %g)", path, error,
             count, psi)
    return OnnxCheck(path=path, opset=OPSET, max_error=error, checked=count)
