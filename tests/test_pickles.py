"""Reference StyleGAN2(-ADA) pickles: the restricted reader, conversion into our networks, `generate`,
`convert` and `evaluate` from a .pkl, and transfer learning (with Freeze-D) from one.

The pickles are written here (tests/pickle_writer.py) in the reference's PyTorch and TensorFlow layouts
from networks we construct directly, so every import can be compared with its original.
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import io
import json
import logging
import math
import os
import pickle
import pickletools
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from corgigan import cli
from corgigan.analysis import sampling
from corgigan.params import EvaluateParams
from corgigan.stages import evaluate
from corgigan.stylegan2 import configs, importer, pickles
from corgigan.stylegan2.load import build, load_networks
from corgigan.stylegan2.loop import TrainingError, decide_start, frozen_d_parameters, training_loop
from corgigan.stylegan2.networks import Discriminator, Generator
from corgigan.stylegan2.snapshot import SnapshotError, load_snapshot
from tests import pickle_writer as pw
from tests.helpers import tiny_config, write_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

SYN = {"channel_base": 256, "channel_max": 32, "num_fp16_res": 0, "conv_clamp": None}


def make_networks(res: int = 16, c_dim: int = 0, architecture: str = "resnet", seed: int = 0,
                  syn: dict | None = None, d_mapping: dict | None = None,
                  ) -> tuple[Generator, Generator, Discriminator]:
    """(G, G_ema, D) of ours with non-trivial weights everywhere (w_avg, noise strengths and biases too)."""
    syn = dict(SYN, **(syn or {}))
    torch.manual_seed(seed)
    G = pw.randomise(Generator(16, c_dim, 16, res, 3, {"num_layers": 2}, syn), seed + 1)
    G_ema = pw.randomise(Generator(16, c_dim, 16, res, 3, {"num_layers": 2}, syn), seed + 2)
    D = Discriminator(c_dim, res, 3, channel_base=syn["channel_base"], channel_max=syn["channel_max"],
                      num_fp16_res=syn["num_fp16_res"], conv_clamp=syn["conv_clamp"],
                      architecture=architecture, mbstd_group_size=4, mapping_kwargs=d_mapping)
    D = pw.randomise(D, seed + 3)
    return G, G_ema, D


def reference_kwargs(syn: dict | None = None, architecture: str = "resnet", freeze_layers: int = 0,
                     d_mapping: dict | None = None) -> tuple[dict, dict]:
    """The reference init kwargs that describe make_networks' networks."""
    syn = dict(SYN, **(syn or {}))
    G_kwargs = {"mapping_kwargs": {"num_layers": 2}, "synthesis_kwargs": syn}
    D_kwargs = {"architecture": architecture, "channel_base": syn["channel_base"],
                "channel_max": syn["channel_max"], "num_fp16_res": syn["num_fp16_res"],
                "conv_clamp": syn["conv_clamp"], "block_kwargs": {"freeze_layers": freeze_layers},
                "mapping_kwargs": d_mapping or {}, "epilogue_kwargs": {"mbstd_group_size": 4}}
    return G_kwargs, D_kwargs


def tf_static(res: int = 16, c_dim: int = 0, **extra) -> tuple[dict, dict]:
    """TF static kwargs (G, D) for make_networks' networks (what the TF code leaves out takes its default)."""
    common = {"resolution": res, "num_channels": 3, "label_size": c_dim,
              "fmap_base": SYN["channel_base"] // 2, "fmap_max": SYN["channel_max"]}
    G = {**common, "latent_size": 16, "dlatent_size": 16, "mapping_layers": 2, "truncation_psi": 0.5,
         "randomize_noise": True, **extra}
    D = {**common, "mbstd_group_size": 4}
    return G, D


def assert_same_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    bad = [k for k in want if got[k].shape != want[k].shape or not torch.equal(got[k], want[k])]
    assert not bad, bad


def load_generator(path: Path) -> tuple[torch.nn.Module, dict]:
    """G_ema and info of any model file, through the one loader every command uses."""
    loaded = load_networks(path)
    return build(loaded), loaded.info


def images(G: torch.nn.Module, seeds=(0, 1, 2), psi: float = 0.7) -> np.ndarray:
    return sampling.generate_images(G.eval(), list(seeds), psi)


def pickle_globals(path: Path) -> set[str]:
    """The globals (module.name) a pickle file names, read from its opcodes without unpickling it."""
    found, memo, recent = set(), {}, []
    for op, arg, _ in pickletools.genops(path.read_bytes()):
        if op.name == "GLOBAL":                     # protocols <= 3: "module name"
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":             # protocol 4: the two strings pushed before it
            found.add(f"{recent[-2]}.{recent[-1]}")
        elif op.name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = recent[-1] if recent else None
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            recent.append(memo.get(arg))
        else:
            recent.append(arg if isinstance(arg, str) and "UNICODE" in op.name else None)
    return found


def one_error(caplog: pytest.LogCaptureFixture) -> str:
    """The one ERROR record the CLI logged (asserting there is exactly one, on one line)."""
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    return errors[0]


# The files NVIDIA's code writes: under Python 3.6/3.7 and numpy 1.x (protocol 3, numpy.core), and under
# later Pythons (protocol 4) with numpy 1.x or 2.x (numpy._core).
ERAS = [(3, pw.NUMPY1), (4, pw.NUMPY1), (4, pw.NUMPY2)]


# ----------------------------------------------------------------------------------------------------
# Conversion: the imported networks are the ones the pickle was written from


@pytest.mark.parametrize("case", ["plain", "labels-orig-freezed-clamped"])
def test_pytorch_pickle_converts_to_the_networks_it_holds(tmp_path, case):
    if case == "plain":
        kw: dict = {}
        G, G_ema, D = make_networks()
        G_ref, D_ref = reference_kwargs()
    else:  # labels, the "orig" D, Freeze-D layers stored as buffers, clamping and fp16 settings
        syn = {"conv_clamp": 256, "num_fp16_res": 2}
        kw = {"c_dim": 3, "architecture": "orig", "syn": syn}
        G, G_ema, D = make_networks(res=32, **kw)
        G_ref, D_ref = reference_kwargs(syn, architecture="orig", freeze_layers=3)
    path = pw.pytorch_pickle(tmp_path / "network-snapshot-000120.pkl", G, D, G_ema, G_ref, D_ref)
    imp = importer.import_pickle(path)
    assert imp.kind == "pytorch" and imp.kimg == 120
    assert_same_state(imp.G, G.state_dict())
    assert_same_state(imp.G_ema, G_ema.state_dict())
    assert_same_state(imp.D, D.state_dict())
    assert imp.spec.G_kwargs["synthesis_kwargs"] == dict(SYN, **kw.get("syn", {}))
    assert imp.spec.D_kwargs["architecture"] == kw.get("architecture", "resnet")
    # Same z, truncation and constant noise: the same images, bit for bit.
    G_pkl, info = load_generator(path)
    assert info["kimg"] == 120 and info["label_dim"] == kw.get("c_dim", 0)
    z = torch.randn(3, 16)
    c = torch.eye(3)[:, :G.c_dim]
    assert torch.equal(G_pkl(z, c, truncation_psi=0.7, noise_mode="const"),
                       G_ema.eval()(z, c, truncation_psi=0.7, noise_mode="const"))
    assert np.array_equal(images(G_pkl), images(G_ema))
    # The one loader: D from the same read, unchanged, and building leaves torch's generator where it was.
    loaded = load_networks(path, training_nets=True)
    assert loaded.source == "pytorch pickle" and loaded.snapshot is None
    assert set(loaded.states) == {"G_ema", "G", "D"}
    before = torch.random.get_rng_state()
    D_pkl = build(loaded, "D")
    assert torch.equal(torch.random.get_rng_state(), before)
    assert_same_state(D_pkl.state_dict(), D.state_dict())
    assert not D_pkl.training
    assert set(load_networks(path).states) == {"G_ema"}   # no training nets unless asked for


@pytest.mark.parametrize("c_dim", [0, 2])
def test_tensorflow_pickle_converts_to_the_networks_it_holds(tmp_path, c_dim):
    d_mapping = {"num_layers": 2, "lr_multiplier": 0.1} if c_dim else None
    G, G_ema, D = make_networks(c_dim=c_dim, d_mapping=d_mapping)
    G_static, D_static = tf_static(c_dim=c_dim)
    if c_dim:
        D_static["mapping_layers"] = 2
    path = pw.tf_pickle(tmp_path / "stylegan2-corgi.pkl", G, D, G_ema, G_static, D_static)
    imp = importer.import_pickle(path)
    assert imp.kind == "tensorflow" and imp.kimg is None
    assert_same_state(imp.G, G.state_dict())
    assert_same_state(imp.G_ema, G_ema.state_dict())
    assert_same_state(imp.D, D.state_dict())
    G_pkl, _ = load_generator(path)
    assert np.array_equal(images(G_pkl), images(G_ema))


@pytest.mark.parametrize("protocol, numpy_module", ERAS)
def test_tensorflow_pickle_as_nvidia_writes_it_converts_and_generates(tmp_path, protocol, numpy_module):
    G, G_ema, D = make_networks()
    G_static, D_static = tf_static()
    path = pw.tf_pickle(tmp_path / "corgi.pkl", G, D, G_ema, G_static, D_static, protocol, numpy_module)
    # As TF returned them: every noise strength (a 0-d variable) a numpy.float32, pickled as numpy's scalar.
    synthesis = pw.tf_generator(G_ema, "Gs", G_static).state["components"]["synthesis"].state["variables"]
    strengths = [v for name, v in synthesis if name.endswith("/noise_strength")]
    assert len(strengths) == 5 and all(type(v) is np.float32 for v in strengths)
    assert path.read_bytes()[1] == protocol and f"{numpy_module}.scalar" in pickle_globals(path)
    out = tmp_path / "corgi.pt"
    assert cli.main(["convert", str(path), "--out", str(out)]) == 0
    assert cli.main(["generate", "--checkpoint", str(path), "--out", str(tmp_path / "png"), "--seeds", "0-2",
                     "--psi", "0.7", "--device", "cpu"]) == 0
    got = np.stack([np.asarray(Image.open(tmp_path / "png" / f"seed{s:05d}.png")) for s in range(3)])
    assert np.array_equal(got, images(G_ema))
    G_pt, _ = load_generator(out)
    assert np.array_equal(images(G_pt), images(G_ema))
    state = load_snapshot(out)
    assert_same_state(state["D"], D.state_dict())
    assert all(torch.equal(state["G"][k], v) for k, v in G.state_dict().items())


@pytest.mark.parametrize("protocol, numpy_module", ERAS)
def test_pytorch_pickle_as_the_reference_writes_it_converts(tmp_path, protocol, numpy_module):
    G, G_ema, D = make_networks()
    path = pw.pytorch_pickle(tmp_path / "network-snapshot-000040.pkl", G, D, G_ema, *reference_kwargs(),
                             protocol=protocol, numpy_module=numpy_module)
    names = pickle_globals(path)
    assert f"{numpy_module}.scalar" in names                  # each layer's weight_gain: a numpy.float64
    assert ("builtins.set" in names) == (protocol == 3)       # each module's _non_persistent_buffers_set
    # The constructor calls as the reference's persistence records them: G by keywords (the training
    # loop's construct_class_by_name) with EasyDict sub-dicts, its layers partly by position.
    ref = pw.reference_generator(G_ema, **reference_kwargs()[0])
    assert ref._init_args == () and type(ref._init_kwargs["mapping_kwargs"]) is pw.EasyDict
    assert ref.mapping.fc0._init_args == (16, 16) and type(ref.mapping.fc0.weight_gain) is np.float64
    out = tmp_path / "net.pt"
    assert cli.main(["convert", str(path), "--out", str(out)]) == 0
    state = load_snapshot(out)
    assert state["progress"]["nimg"] == 40_000
    assert_same_state(state["G_ema"], G_ema.state_dict())
    assert_same_state(state["D"], D.state_dict())
    G_pt, _ = load_generator(out)
    assert np.array_equal(images(G_pt), images(G_ema))


def _forbid_building(*args, **kwargs):
    raise AssertionError("a network was built from impossible settings")


@pytest.mark.parametrize("kind, key, value, message", [
    ("pytorch", "z_dim", -1, "z_dim = -1 is outside 1..4096"),
    ("pytorch", "w_dim", 2**20, "w_dim = 1048576 is outside 1..4096"),
    ("pytorch", "img_resolution", 48, "img_resolution = 48 is not a power of two"),
    ("pytorch", "img_channels", 1000, "img_channels = 1000 is outside 1..4"),
    ("tensorflow", "latent_size", -5, "latent_size = -5 is outside 1..4096"),
    ("tensorflow", "resolution", 3, "resolution = 3 is outside 8..4096"),
    ("tensorflow", "fmap_base", 2**30, "2 * fmap_base = 2147483648 is outside"),
])
def test_impossible_stored_sizes_are_one_line_errors_before_any_network_is_built(
        tmp_path, monkeypatch, caplog, kind, key, value, message):
    _, G_ema, _ = make_networks()
    if kind == "pytorch":
        ref = pw.reference_generator(G_ema, **reference_kwargs()[0])
        ref._init_kwargs[key] = value
        path = pw.write(tmp_path / "impossible.pkl", {"G_ema": ref})
    else:
        G_static, _ = tf_static(**{key: value})
        path = pw.write(tmp_path / "impossible.pkl", pw.tf_generator(G_ema, "Gs", G_static))
    monkeypatch.setattr(configs, "build_networks", _forbid_building)
    with caplog.at_level(logging.ERROR):
        assert cli.main(["generate", "--checkpoint", str(path), "--out", str(tmp_path / "out"),
                         "--seeds", "0", "--device", "cpu"]) == 2
    error = one_error(caplog)
    assert error.startswith(f"{path} ") and message in error, error
    assert not (tmp_path / "out").exists()


def _upsample_2d_tf(x: torch.Tensor) -> torch.Tensor:
    """TF's upsample_2d with k=[1,3,3,1] over the whole support: zeros between the samples, then the 4x4
    FIR of gain 4, keeping the one-pixel rim a following 3x3 conv reads ([N, C, 2H+2, 2W+2]). TF's fused
    upsample_conv_2d is this followed by a VALID conv2d (upsample_2d alone crops that rim away)."""
    N, C, H, W = x.shape
    up = torch.zeros(N, C, 2 * H, 2 * W, dtype=x.dtype)
    up[:, :, ::2, ::2] = x
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = torch.outer(k, k) / k.sum() ** 2 * 4
    up = F.pad(up, (3, 2, 3, 2)).reshape(N * C, 1, 2 * H + 5, 2 * W + 5)
    return F.conv2d(up, k[None, None]).reshape(N, C, 2 * H + 2, 2 * W + 2)


def _tf_modulated_layer(x: torch.Tensor, dlatent: torch.Tensor, var: dict[str, np.ndarray], scope: str,
                        noise: np.ndarray, up: bool) -> torch.Tensor:
    """One TF StyleGAN2 synthesis layer (non-fused modconv), written from the TF code's definitions in TF's
    layouts: weights [k, k, in, out] scaled by 1/sqrt(fan_in), style = dense(w) + mod_bias + 1, the
    up-sampling conv = tf.nn.conv2d (a correlation) of the up-sampled image, demodulation, noise
    [1, 1, r, r] times its strength, bias, lrelu times sqrt(2)."""
    t = {k: torch.from_numpy(np.array(v)) for k, v in var.items() if k.startswith(scope + "/")}
    w = t[f"{scope}/weight"]                                          # [k, k, I, O]
    kh, _, in_c, _ = w.shape
    w = w / math.sqrt(kh * kh * in_c)
    mod_w = t[f"{scope}/mod_weight"] / math.sqrt(mod_w_in := t[f"{scope}/mod_weight"].shape[0])
    assert mod_w_in == dlatent.shape[1]
    s = dlatent @ mod_w + t[f"{scope}/mod_bias"] + 1                  # [N, I]
    ww = w[None] * s[:, None, None, :, None]                          # [N, k, k, I, O]
    d = (ww.square().sum(dim=(1, 2, 3)) + 1e-8).rsqrt()               # [N, O]
    x = x * s[:, :, None, None]
    # TF conv2d: HWIO weights, a correlation; SAME padding, or VALID over the up-sampled rim.
    x = F.conv2d(_upsample_2d_tf(x), w.permute(3, 2, 0, 1)) if up else \
        F.conv2d(x, w.permute(3, 2, 0, 1), padding=kh // 2)
    x = x * d[:, :, None, None]
    x = x + torch.from_numpy(noise)[0, 0] * t[f"{scope}/noise_strength"]
    return F.leaky_relu(x + t[f"{scope}/bias"][None, :, None, None], 0.2) * math.sqrt(2)


@pytest.mark.parametrize("fused", [True, False])
def test_tensorflow_layers_keep_their_tensorflow_meaning(tmp_path, fused):
    """The transposes, the up-sampling conv's flip, the style bias's +1 and the noise layout, checked
    against the TF code's own definition of a layer rather than against our writer."""
    G, G_ema, D = make_networks()
    G_static, D_static = tf_static()
    path = pw.tf_pickle(tmp_path / "tf.pkl", G, D, G_ema, G_static, D_static)
    G_pkl, _ = load_generator(path)
    variables = pickles.load_reference_pickle(path).G_ema.collect()
    torch.manual_seed(5)
    dlatent = torch.randn(2, 16)
    for k, (scope, up, noise) in enumerate([("synthesis/8x8/Conv0_up", True, "synthesis/noise1"),
                                            ("synthesis/8x8/Conv1", False, "synthesis/noise2")]):
        layer = G_pkl.synthesis.blocks[1].conv0 if up else G_pkl.synthesis.blocks[1].conv1
        x = torch.randn(2, layer.in_channels, 4 if up else 8, 4 if up else 8)
        want = _tf_modulated_layer(x, dlatent, variables, scope, variables[noise], up)
        got = layer(x, dlatent, noise_mode="const", fused=fused)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), (scope, (got - want).abs().max())
        del k
    # Without the flip the up-sampling layer would compute something else: the check above has teeth.
    flipped = dict(variables)
    flipped["synthesis/8x8/Conv0_up/weight"] = variables["synthesis/8x8/Conv0_up/weight"][::-1, ::-1]
    conv0 = G_pkl.synthesis.blocks[1].conv0
    x = torch.randn(2, conv0.in_channels, 4, 4)
    wrong = _tf_modulated_layer(x, dlatent, flipped, "synthesis/8x8/Conv0_up", variables["synthesis/noise1"],
                                True)
    assert not torch.allclose(conv0(x, dlatent, noise_mode="const", fused=fused), wrong, rtol=1e-3, atol=1e-3)


def test_reference_layout_has_the_reference_parameter_counts_at_1024():
    """The writer's reference module trees are the reference's: 30,370,060 and 29,012,513 parameters."""
    with torch.device("meta"):
        G = pw.ReferenceGenerator(512, 0, 512, 1024, 3, mapping_kwargs={"num_layers": 8},
                                  synthesis_kwargs={"channel_base": 32768, "channel_max": 512})
        D = pw.ReferenceDiscriminator(0, 1024, 3, channel_base=32768, channel_max=512)
    assert sum(p.numel() for p in G.parameters()) == 30_370_060
    assert sum(p.numel() for p in D.parameters()) == 29_012_513


def test_settings_our_networks_lack_are_refused_by_name(tmp_path):
    G, G_ema, D = make_networks()
    G_ref, _ = reference_kwargs()
    ref_G = pw.reference_generator(G_ema, **G_ref)
    ref_G._init_kwargs["synthesis_kwargs"]["architecture"] = "resnet"
    path = pw.write(tmp_path / "resnet-g.pkl", {"G_ema": ref_G})
    with pytest.raises(pickles.PickleError, match="architecture = 'resnet' is not supported"):
        importer.import_pickle(path)
    ref_G._init_kwargs["synthesis_kwargs"] = {**SYN, "first_cutoff": 2}    # e.g. a StyleGAN3 keyword
    path = pw.write(tmp_path / "sg3.pkl", {"G_ema": ref_G})
    with pytest.raises(pickles.PickleError, match="unknown keyword 'first_cutoff'"):
        importer.import_pickle(path)
    G_static, D_static = tf_static(architecture="orig")
    path = pw.tf_pickle(tmp_path / "orig.pkl", G, D, G_ema, G_static, D_static)
    with pytest.raises(pickles.PickleError, match="architecture = 'orig'"):
        importer.import_pickle(path)


# ----------------------------------------------------------------------------------------------------
# Nothing in a pickle runs


class Shell:
    """What an attacker pickles: unpickling calls os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


class Exec(Shell):
    def __reduce__(self) -> tuple:
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


class Gadget:
    """A class of its own with __reduce__: unpickling would call it."""

    def __reduce__(self) -> tuple:
        return Gadget, ()


def _evil_pickles(tmp_path: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    """name -> (pickle, the global its refusal must name)."""
    G, G_ema, D = make_networks()
    G_ref, D_ref = reference_kwargs()
    return {
        "os.system": (pw.write(tmp_path / "shell.pkl", Shell(marker)), f"{os.system.__module__}.system"),
        "builtins.exec": (pw.write(tmp_path / "exec.pkl", Exec(marker)), "builtins.exec"),
        "own class": (pw.write(tmp_path / "gadget.pkl", Gadget()), f"{__name__}.Gadget"),
        "inside a real pickle": (pw.pytorch_pickle(tmp_path / "trojan.pkl", G, D, G_ema, G_ref, D_ref,
                                                   extra={"training_set_kwargs": {"x": Shell(marker)}}),
                                 f"{os.system.__module__}.system"),
        "a torch global outside the formats": (pw.write(tmp_path / "torchload.pkl", {"G_ema": torch.load}),
                                               "torch.serialization.load"),
    }


def test_pickles_referencing_any_other_global_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    for what, (path, name) in _evil_pickles(tmp_path, marker).items():
        with pytest.raises(pickles.UnsafePickleError) as e:
            importer.import_pickle(path)
        assert f"global {name}," in str(e.value) and "nothing of the file was run" in str(e.value), what
        assert not marker.exists(), what
    # The same files really would run code if unpickled the ordinary way (the tests are not vacuous).
    pickle.loads((tmp_path / "shell.pkl").read_bytes())
    assert marker.exists()


class StoredBytes:
    """A storage whose nested payload (what torch.storage._load_from_bytes reads) is `payload`."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __reduce__(self) -> tuple:
        return torch.storage._load_from_bytes, (self.payload,)


def test_code_hidden_in_a_tensors_stored_bytes_is_refused_in_one_line(tmp_path, caplog):
    marker = tmp_path / "pwned"
    payload = io.BytesIO()
    torch.save(Shell(marker), payload, _use_new_zipfile_serialization=False)   # a storage payload's format
    path = pw.write(tmp_path / "hidden.pkl", {"G_ema": StoredBytes(payload.getvalue())})
    # Hidden one level down: the outer pickle names only allowed globals.
    assert "posix.system" not in pickle_globals(path) and b"system" in path.read_bytes()
    with caplog.at_level(logging.ERROR):
        assert cli.main(["convert", str(path), "--out", str(tmp_path / "x.pt")]) == 2
    error = one_error(caplog)
    assert error.startswith(f"{path}: refused: ") and f"{os.system.__module__}.system" in error, error
    assert "nothing of the file was run" in error and "weights_only" not in error
    assert not marker.exists() and not (tmp_path / "x.pt").exists()


def test_forged_object_states_and_views_are_refused(tmp_path):
    storage = torch.arange(4.0)._typed_storage()

    class BuildOnTensor:   # REDUCE to a tensor, then a BUILD that would call Tensor.__setstate__
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (storage, 0, (4,), (1,), False, OrderedDict()), (1, 2)

    class PastTheEnd:      # a view reaching beyond its storage (torch's own rebuild does not check)
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (storage, 2, (4,), (1,), False, OrderedDict())

    with pytest.raises(pickles.UnsafePickleError, match="BUILD"):
        pickles.read_pickle(pw.write(tmp_path / "build.pkl", BuildOnTensor()))
    with pytest.raises(pickles.PickleError, match="past the end of its storage"):
        pickles.read_pickle(pw.write(tmp_path / "oob.pkl", PastTheEnd()))
    with pytest.raises(pickles.UnsafePickleError, match="numpy dtype 'O8'"):
        pickles.read_pickle(pw.write(tmp_path / "objects.pkl", np.array([1, "x"], dtype=object)))
    (tmp_path / "cut.pkl").write_bytes((tmp_path / "build.pkl").read_bytes()[:40])
    with pytest.raises(pickles.PickleError, match="not a readable network pickle"):
        pickles.read_pickle(tmp_path / "cut.pkl")


def test_a_persistent_id_is_refused_with_what_it_names(tmp_path):
    class WithIds(pickle.Pickler):   # what torch.save's zip format does; the network pickles never do
        def persistent_id(self, obj):
            return ("storage", "k" * 80) if isinstance(obj, bytes) else None

    path = tmp_path / "ids.pkl"
    with open(path, "wb") as f:
        WithIds(f, protocol=3).dump({"G_ema": b"weights"})
    with pytest.raises(pickles.UnsafePickleError) as e:
        pickles.read_pickle(path)
    shown = "('storage', '" + "k" * 47   # the id's first 60 characters
    assert str(e.value) == (f"{path}: refused: the pickle uses a persistent id ({shown!r}), "
                            "which the network pickle formats never do")


def _tf_network(tmp_path: Path, name: str, edit=None, variables=None) -> Path:
    """A single TensorFlow Network pickle as dnnlib writes it, its state changed by `edit` (in place)."""
    net = pw.Network("G", {"resolution": 8}, variables or [("w", np.float32([1, 2]))],
                     {"mapping": pw.Network("G_mapping", {}, [("b", np.float32(0.5))])})
    if edit is not None:
        net.state = edit(net.state)
    return pw.write(tmp_path / f"{name}.pkl", net)


def test_tensorflow_network_states_dnnlib_never_writes_are_refused(tmp_path):
    def without(*keys):
        return lambda state: {k: v for k, v in state.items() if k not in keys}

    def setting(key, value):
        return lambda state: {**state, key: value}

    tf = "TensorFlow network state"
    refused = {
        "no state (no BUILD)": (lambda state: None,
                                "a TensorFlow network without its state: not a network dnnlib wrote"),
        "state not a dict": (lambda state: list(state.items()), f"{tf} is a list, not a dict"),
        "no variables": (without("variables"), f"{tf} lacks variables: not a network dnnlib wrote"),
        "no name, no kwargs": (without("name", "static_kwargs"),
                               f"{tf} lacks name, static_kwargs: not a network dnnlib wrote"),
        "name": (setting("name", 3), f"{tf}'s name is a int, not a str"),
        "static_kwargs": (setting("static_kwargs", [("resolution", 8)]),
                          f"{tf}'s static_kwargs is a list, not a dict"),
        "components": (setting("components", [pw.Network("G_mapping", {}, [])]),
                       f"{tf}'s components is a list, not a dict"),
        "variables": (setting("variables", (("w", np.float32([1])),)),
                      f"{tf}'s variables is a tuple, not a list"),
    }
    for case, (edit, message) in refused.items():
        path = _tf_network(tmp_path, case.replace(" ", "_"), edit)
        with pytest.raises(pickles.PickleError) as e:
            pickles.load_reference_pickle(path)
        assert str(e.value) == f"{path}: {message}", case

    # dnnlib reads "components" with a default, so a network without it is read (as having none) ...
    net = pickles.load_reference_pickle(_tf_network(tmp_path, "flat", without("components"))).G_ema
    assert (net.name, net.static_kwargs, net.components) == ("G", {"resolution": 8}, {})
    assert list(net.collect()) == ["w"]
    # ... and the full state gives every variable, named by its component path, 0-d scalars as 0-d arrays.
    net = pickles.load_reference_pickle(_tf_network(tmp_path, "full")).G_ema
    values = net.collect("G/")
    assert list(values) == ["G/w", "G/mapping/b"]
    assert values["G/mapping/b"].shape == () and values["G/mapping/b"].dtype == np.float32
    np.testing.assert_array_equal(values["G/w"], np.float32([1, 2]))


@pytest.mark.parametrize("entry", [
    ["w", np.float32([1])],                    # a list, not a (name, value) tuple
    ("w", np.float32([1]), "extra"),           # three fields
    ("w",),                                    # one field
    (3, np.float32([1])),                      # a name that is not a string
    ("w", 1.5),                                # a Python float, not what tf.Session.run returns
    ("w", [1.0, 2.0]),                         # a list of numbers
])
def test_tensorflow_variables_not_name_and_numpy_value_are_refused(tmp_path, entry):
    net = pickles.load_reference_pickle(_tf_network(tmp_path, "bad", variables=[entry])).G_ema
    with pytest.raises(pickles.PickleError, match=r"network 'G': a variable entry is not \(name, numpy"):
        net.collect()


def test_a_tensorflow_component_that_is_not_a_network_is_refused(tmp_path):
    net = pickles.load_reference_pickle(_tf_network(tmp_path, "comp", lambda state: {
        **state, "components": {"mapping": {"b": np.float32(1)}}})).G_ema
    with pytest.raises(pickles.PickleError, match="'G': component 'mapping' is a dict, not a network"):
        net.collect()


def test_module_source_in_the_pickle_is_never_run(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').close()\n"
    monkeypatch.setattr(pw.Persistent, "module_src", code)
    G, G_ema, D = make_networks()
    G_ref, D_ref = reference_kwargs()
    pt = pw.pytorch_pickle(tmp_path / "pt.pkl", G, D, G_ema, G_ref, D_ref)
    G_static, _ = tf_static()
    net = pw.tf_generator(G_ema, "Gs", G_static)
    net.state["build_module_src"] = code
    tf = pw.write(tmp_path / "tf.pkl", net)
    for path in (pt, tf):
        G_pkl, _ = load_generator(path)
        assert np.array_equal(images(G_pkl), images(G_ema))
    assert code.encode() in pt.read_bytes() and not marker.exists()


# ----------------------------------------------------------------------------------------------------
# generate, convert and evaluate take a .pkl


@pytest.fixture
def both_formats(tmp_path) -> tuple[dict[str, Path], Generator]:
    G, G_ema, D = make_networks()
    G_ref, D_ref = reference_kwargs()
    G_static, D_static = tf_static()
    pt = pw.pytorch_pickle(tmp_path / "network-snapshot-000040.pkl", G, D, G_ema, G_ref, D_ref)
    tf = pw.tf_pickle(tmp_path / "tf-network.pkl", G, D, G_ema, G_static, D_static)
    paths = {"pytorch": pt, "tensorflow": tf}
    return paths, G_ema


@pytest.mark.parametrize("kind", ["pytorch", "tensorflow"])
def test_generate_cli_reads_a_pickle(tmp_path, both_formats, kind):
    paths, G_ema = both_formats
    out = tmp_path / "out"
    assert cli.main(["generate", "--checkpoint", str(paths[kind]), "--out", str(out), "--seeds", "0-2",
                     "--psi", "0.7", "--device", "cpu"]) == 0
    got = np.stack([np.asarray(Image.open(out / f"seed{s:05d}.png")) for s in range(3)])
    assert np.array_equal(got, images(G_ema))


@pytest.mark.parametrize("kind", ["pytorch", "tensorflow"])
def test_convert_writes_a_weights_only_snapshot_with_the_same_images(tmp_path, both_formats, kind):
    paths, G_ema = both_formats
    out, again = tmp_path / f"{kind}.pt", tmp_path / f"{kind}-again.pt"
    assert cli.main(["convert", str(paths[kind]), "--out", str(out)]) == 0
    assert cli.main(["convert", str(paths[kind]), "--out", str(again)]) == 0
    assert out.read_bytes() == again.read_bytes()           # DVC-stable: same pickle, same bytes
    state = load_snapshot(out)                                # weights_only=True
    assert state["run"]["imported_from"] == paths[kind].name and state["config"]["name"] == "auto"
    assert state["progress"]["nimg"] == (40_000 if kind == "pytorch" else 0)
    G_pt, _ = load_generator(out)
    assert np.array_equal(images(G_pt), images(G_ema))


def test_convert_and_generate_failures_are_one_line_errors(tmp_path, both_formats, caplog):
    paths, G_ema = both_formats
    G_static, _ = tf_static()
    gs_only = pw.tf_pickle(tmp_path / "gs.pkl", G_ema, None, G_ema, G_static)
    marker = tmp_path / "pwned"
    shell = pw.write(tmp_path / "shell.pkl", Shell(marker))
    with caplog.at_level(logging.ERROR):
        assert cli.main(["convert", str(gs_only), "--out", str(tmp_path / "x.pt")]) == 2
        assert "holds only a generator" in caplog.text
        assert cli.main(["convert", str(shell), "--out", str(tmp_path / "y.pt")]) == 2
        assert cli.main(["generate", "--checkpoint", str(shell), "--out", str(tmp_path / "o")]) == 2
        assert cli.main(["convert", str(paths["pytorch"]), "--out", str(tmp_path / "z.pt"),
                         "--config", "paper256"]) == 2
    assert caplog.text.count("refused: the pickle references the global") == 2
    assert "z_dim: model 16, now 512" in caplog.text
    assert not marker.exists() and not (tmp_path / "x.pt").exists()
    assert cli.main(["generate", "--checkpoint", str(gs_only), "--out", str(tmp_path / "gs"), "--seeds", "0",
                     "--device", "cpu"]) == 0            # a Gs-only file still generates


def test_evaluate_stage_scores_a_pickle(tmp_path, both_formats, monkeypatch):
    monkeypatch.setenv("CORGIGAN_CACHE", str(tmp_path / "cache"))
    paths, _ = both_formats
    dataset = write_dataset(tmp_path / "data.zip", n=8, res=16, seed=0)
    p = EvaluateParams(num_images=8, seed=0, truncation_psi=1.0, features="pixels",
                       inception_path="models/inception-2015-12-05.pt", batch=8, fid_every_snapshot=True,
                       grid_seeds=6, video_frames=4, device="cpu")
    metrics = tmp_path / "metrics.json"
    evaluate.run(p, paths["pytorch"], dataset, metrics, tmp_path / "figures")
    m = json.loads(metrics.read_text())
    assert m["snapshot"] == paths["pytorch"].name and m["kimg"] == 40 and m["same_dataset"] is False
    assert m["fid_pixels"] > 0 and (tmp_path / "figures" / "grid.png").is_file()


# ----------------------------------------------------------------------------------------------------
# Transfer learning from a pickle


KW = dict(seed=3, augment="ada", augment_p=0.0, ada_target=0.6, mirror=False, workers=0, device="cpu",
          require_cuda_ops=False, allow_other_data=False)


def config_reference_kwargs(cfg: configs.TrainingConfig) -> tuple[dict, dict]:
    """The reference init kwargs (G, D) that describe `cfg`'s networks."""
    G_ref = {k: cfg.G_kwargs[k] for k in ("mapping_kwargs", "synthesis_kwargs")}
    d = cfg.D_kwargs
    D_ref = {k: d[k] for k in ("channel_base", "channel_max", "num_fp16_res", "conv_clamp", "architecture")}
    D_ref["epilogue_kwargs"] = {"mbstd_group_size": d["mbstd_group_size"]}
    return G_ref, D_ref


def tiny_pickle(tmp_path: Path, kind: str, cfg: configs.TrainingConfig | None = None,
                name: str = "pretrained.pkl") -> tuple[Path, Generator, Discriminator]:
    """A pickle of `cfg`'s networks (tiny_config by default) with random weights."""
    cfg = cfg or tiny_config()
    torch.manual_seed(11)
    G, D = configs.build_networks(configs.network_spec(cfg))
    G, D = pw.randomise(G, 12), pw.randomise(D, 13)
    syn = cfg.G_kwargs["synthesis_kwargs"]
    if kind == "pytorch":
        path = pw.pytorch_pickle(tmp_path / name, G, D, copy.deepcopy(G), *config_reference_kwargs(cfg))
    else:
        common = {"resolution": cfg.resolution, "num_channels": 3, "label_size": 0,
                  "fmap_base": syn["channel_base"] // 2, "fmap_max": syn["channel_max"]}
        G_static = {**common, "latent_size": cfg.G_kwargs["z_dim"], "dlatent_size": cfg.G_kwargs["w_dim"],
                    "mapping_layers": cfg.G_kwargs["mapping_kwargs"]["num_layers"], "conv_clamp": 256}
        path = pw.tf_pickle(tmp_path / name, G, D, copy.deepcopy(G), G_static,
                            {**common, "mbstd_group_size": 2, "conv_clamp": 256})
    return path, G, D


@pytest.fixture(scope="module")
def data8(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "corgis.zip", n=6, seed=0)


@pytest.mark.parametrize("kind", ["pytorch", "tensorflow"])
def test_transfer_learning_from_a_pickle_with_freeze_d(tmp_path, data8, kind):
    pkl, G0, D0 = tiny_pickle(tmp_path, kind)
    last = training_loop(data8, tmp_path / "run", tiny_config(), kimg=0.008, snapshot_kimg=0.008,
                         resume_from=str(pkl), freeze_d=4, **KW)
    state = load_snapshot(last)
    assert state["progress"]["nimg"] == 8                           # kimg counted from 0
    assert state["run"]["resume_from"] == str(pkl) and state["run"]["freeze_d"] == 4
    D_sd, D0_sd = state["D"], D0.state_dict()
    frozen = [k for k in D0_sd if k.startswith("blocks.0.")]         # 8 px: one block, 4 layers
    assert frozen and all(torch.equal(D_sd[k], D0_sd[k]) for k in frozen)
    assert not torch.equal(D_sd["epilogue.fc.weight"], D0_sd["epilogue.fc.weight"])   # the rest trains
    # G started from the pickle's weights: after two steps it is still next to them, far from a fresh G.
    G0_sd = G0.state_dict()
    fresh = configs.build_networks(configs.network_spec(tiny_config()))[0].state_dict()
    name = "synthesis.blocks.1.conv1.weight"
    assert (state["G"][name] - G0_sd[name]).abs().max() < 0.1 < (fresh[name] - G0_sd[name]).abs().max()
    # A snapshot converted from the pickle starts the same kind of run (no allow_other_data needed), and
    # is refused by a config whose networks its weights do not fit.
    converted = str(importer.convert(pkl, tmp_path / "pretrained.pt"))
    with pytest.raises(SnapshotError, match="its networks do not fit those of train.config 'demo'"):
        training_loop(data8, tmp_path / "run2", configs.make_config("demo", 8), kimg=0.004,
                      snapshot_kimg=0.004, resume_from=converted, **KW)
    last = training_loop(data8, tmp_path / "run3", tiny_config(), kimg=0.004, snapshot_kimg=0.004,
                         resume_from=converted, **KW)
    assert load_snapshot(last)["progress"]["nimg"] == 4


def test_transfer_from_a_pickle_that_does_not_fit_says_why(tmp_path, data8):
    cfg16 = dataclasses.replace(tiny_config(), resolution=16)
    pkl16, _, _ = tiny_pickle(tmp_path, "pytorch", cfg16, "big.pkl")
    with pytest.raises(SnapshotError, match="its networks make 16-px images, the dataset has 8-px images"):
        training_loop(data8, tmp_path / "a", tiny_config(), kimg=0.004, snapshot_kimg=0.004,
                      resume_from=str(pkl16), **KW)
    wide = dataclasses.replace(tiny_config(), G_kwargs={**tiny_config().G_kwargs, "z_dim": 32})
    pkl_wide, _, _ = tiny_pickle(tmp_path, "tensorflow", wide, "wide.pkl")
    with pytest.raises(SnapshotError, match="z_dim: model 32, now 16"):
        training_loop(data8, tmp_path / "b", tiny_config(), kimg=0.004, snapshot_kimg=0.004,
                      resume_from=str(pkl_wide), **KW)


def gs_only_pickle(tmp_path: Path, kind: str,
                   cfg: configs.TrainingConfig | None = None) -> tuple[Path, Generator]:
    """A pickle holding a generator and no discriminator: a TensorFlow (G, None, Gs) or a PyTorch
    {"G_ema"} (as published models often are)."""
    cfg = cfg or tiny_config()
    torch.manual_seed(11)
    G = pw.randomise(configs.build_networks(configs.network_spec(cfg), with_D=False)[0], 12)
    if kind == "pytorch":
        G_ref, _ = config_reference_kwargs(cfg)
        return pw.write(tmp_path / "gs.pkl", {"G_ema": pw.reference_generator(G, **G_ref)}), G
    G_static = {"resolution": cfg.resolution, "num_channels": 3, "label_size": 0,
                "fmap_base": cfg.G_kwargs["synthesis_kwargs"]["channel_base"] // 2,
                "fmap_max": cfg.G_kwargs["synthesis_kwargs"]["channel_max"],
                "latent_size": cfg.G_kwargs["z_dim"], "dlatent_size": cfg.G_kwargs["w_dim"],
                "mapping_layers": cfg.G_kwargs["mapping_kwargs"]["num_layers"]}
    return pw.tf_pickle(tmp_path / "gs.pkl", G, None, G, G_static), G


@pytest.mark.parametrize("kind", ["pytorch", "tensorflow"])
def test_transfer_from_a_generator_only_pickle_starts_d_fresh_as_from_an_export(tmp_path, data8, kind,
                                                                               caplog):
    # The reference's resume copies whatever networks the pickle holds and leaves the rest as initialised;
    # an export (G_ema only) transfers the same way, with the same warning.
    pkl, G0 = gs_only_pickle(tmp_path, kind)
    with caplog.at_level(logging.WARNING):
        start = decide_start(tmp_path / "run", configs.config_to_dict(tiny_config()), {"seed": 0}, "a" * 64,
                             str(pkl), False, data={"resolution": 8, "num_channels": 3, "label_dim": 0})
    assert start.mode == "transfer" and list(start.state) == ["G", "G_ema"]
    assert_same_state(start.state["G_ema"], G0.state_dict())
    assert_same_state(start.state["G"], G0.state_dict())
    assert (f"{pkl} holds no discriminator: D starts from this run's own initialisation (train.seed)"
            in caplog.text)
    last = training_loop(data8, tmp_path / "run", tiny_config(), kimg=0.004, snapshot_kimg=0.004,
                         resume_from=str(pkl), **KW)
    assert load_snapshot(last)["progress"]["nimg"] == 4
    # What cannot fit is still refused: another image format, or weights of other shapes.
    with pytest.raises(SnapshotError, match="its networks make 8-px images, the dataset has 16-px images"):
        training_loop(write_dataset(tmp_path / "d16.zip", n=6, res=16), tmp_path / "a",
                      dataclasses.replace(tiny_config(), resolution=16), kimg=0.004, snapshot_kimg=0.004,
                      resume_from=str(pkl), **KW)
    wide = dataclasses.replace(tiny_config(), G_kwargs={**tiny_config().G_kwargs, "z_dim": 32})
    (tmp_path / "wide").mkdir()
    pkl_wide, _ = gs_only_pickle(tmp_path / "wide", kind, wide)
    with pytest.raises(SnapshotError, match="z_dim: model 32, now 16"):
        training_loop(data8, tmp_path / "b", tiny_config(), kimg=0.004, snapshot_kimg=0.004,
                      resume_from=str(pkl_wide), **KW)


def test_transfer_from_a_pickle_without_training_g_starts_g_from_g_ema(tmp_path, caplog):
    cfg = tiny_config()
    torch.manual_seed(11)
    G, D = configs.build_networks(configs.network_spec(cfg))
    G_ema, D = pw.randomise(G, 12), pw.randomise(D, 13)
    G_ref, D_ref = config_reference_kwargs(cfg)
    path = pw.write(tmp_path / "no-g.pkl", {"G_ema": pw.reference_generator(G_ema, **G_ref),
                                            "D": pw.reference_discriminator(D, **D_ref)})
    with caplog.at_level(logging.WARNING):
        start = decide_start(tmp_path / "run", configs.config_to_dict(cfg), {"seed": 0}, "a" * 64, str(path),
                             False, data={"resolution": 8, "num_channels": 3, "label_dim": 0})
    assert start.mode == "transfer" and list(start.state) == ["G", "D", "G_ema"]   # what Trainer.load reads
    assert_same_state(start.state["G"], G_ema.state_dict())
    assert_same_state(start.state["G_ema"], G_ema.state_dict())
    assert_same_state(start.state["D"], D.state_dict())
    assert f"{path} holds no training G: starting it from G_ema" in caplog.text


def test_freeze_d_counts_layers_as_the_reference_does():
    """Our Freeze-D set for every N equals the layers the reference stores as buffers with freeze_layers=N."""
    _, _, D = make_networks(res=32)
    n_layers = len([m for b in D.blocks for m in (b.fromrgb, b.conv0, b.conv1, b.skip) if m is not None])
    assert n_layers == 4 + 3 + 3
    names = {id(p): n for n, p in D.named_parameters()}
    for n in range(n_layers + 1):
        ours = sorted(pw.reference_name_in_d(names[id(p)], 32) for p in frozen_d_parameters(D, n))
        ref = pw.ReferenceDiscriminator(0, 32, 3, channel_base=SYN["channel_base"],
                                        channel_max=SYN["channel_max"], block_kwargs={"freeze_layers": n})
        buffers = dict(ref.named_buffers())
        frozen_in_ref = sorted(r for o in D.state_dict() if (r := pw.reference_name_in_d(o, 32)) in buffers)
        assert ours == frozen_in_ref, n
    with pytest.raises(TrainingError, match="D has 10 layers to freeze"):
        frozen_d_parameters(D, 11)


def test_sizes_each_in_range_that_describe_a_huge_network_are_refused_before_it_is_built(
        tmp_path, monkeypatch, caplog):
    # channel_base and channel_max within their limits, together 4096 channels at every resolution:
    # gigabytes of weights from a file of a few hundred kilobytes.
    _, G_ema, _ = make_networks()
    ref = pw.reference_generator(G_ema, **reference_kwargs()[0])
    ref._init_kwargs["synthesis_kwargs"]["channel_base"] = 1 << 20
    ref._init_kwargs["synthesis_kwargs"]["channel_max"] = 4096
    path = pw.write(tmp_path / "huge.pkl", {"G_ema": ref})
    real_build = configs.build_networks

    def build_on_meta_only(*args, **kwargs):
        assert torch.empty(0).device.type == "meta", "the huge network was built for real"
        return real_build(*args, **kwargs)

    monkeypatch.setattr(configs, "build_networks", build_on_meta_only)
    with caplog.at_level(logging.ERROR):
        assert cli.main(["generate", "--checkpoint", str(path), "--out", str(tmp_path / "out"),
                         "--seeds", "0", "--device", "cpu"]) == 2
    error = one_error(caplog)
    assert error.startswith(f"{path}: refused: its stored settings describe networks of"), error
    assert not (tmp_path / "out").exists()
