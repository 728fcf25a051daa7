"""The importer's guards, case by case: every stored setting it refuses (each with the exact line a user
reads), the legal variants it must read (positional init arguments, tuples, numpy numbers, TF's spellings),
the defaults of what a file leaves out, and the tensors' renaming and checks.

The pickles are written with tests/pickle_writer.py from tiny networks of ours (8 px, 16 features), so each
case is one small file read through importer.import_pickle, the function every command uses.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from corgigan.stylegan2 import configs, importer
from corgigan.stylegan2.configs import NetworkSpec
from corgigan.stylegan2.networks import Discriminator, Generator
from corgigan.stylegan2.pickles import PickleError
from corgigan.stylegan2.snapshot import SnapshotError, load_snapshot
from tests import pickle_writer as pw

pytestmark = pytest.mark.usefixtures("one_thread")

RES, Z = 8, 8
SYN = {"channel_base": 64, "channel_max": 16, "num_fp16_res": 0, "conv_clamp": None}
G_REF = {"mapping_kwargs": {"num_layers": 2}, "synthesis_kwargs": SYN}
D_REF = {"architecture": "resnet", "channel_base": 64, "channel_max": 16,
         "epilogue_kwargs": {"mbstd_group_size": 2}}


def nets(c_dim: int = 0, d_mapping: dict | None = None, architecture: str = "resnet",
         seed: int = 0) -> tuple[Generator, Discriminator]:
    """A tiny G and D of ours with non-trivial weights everywhere."""
    torch.manual_seed(seed)
    G = pw.randomise(Generator(Z, c_dim, Z, RES, 3, {"num_layers": 2}, SYN), seed + 1)
    D = Discriminator(c_dim, RES, 3, channel_base=64, channel_max=16, architecture=architecture,
                      mbstd_group_size=2, mapping_kwargs=d_mapping)
    return G, pw.randomise(D, seed + 2)


@pytest.fixture(scope="module")
def tiny() -> tuple[Generator, Discriminator]:
    return nets()


def ref_g(G: Generator, **edits) -> pw.ReferenceGenerator:
    """The reference Generator of G, its recorded keywords then changed by `edits` (key paths as a.b)."""
    ref = pw.reference_generator(G, **copy.deepcopy(G_REF))
    return _edit(ref, edits)


def ref_d(D: Discriminator, kwargs: dict | None = None, **edits) -> pw.ReferenceDiscriminator:
    ref = pw.reference_discriminator(D, **copy.deepcopy(kwargs if kwargs is not None else D_REF))
    return _edit(ref, edits)


def _edit(ref: pw.Persistent, edits: dict) -> pw.Persistent:
    for path, value in edits.items():
        *outer, key = path.split(".")
        d = ref._init_kwargs
        for part in outer:
            d = d.setdefault(part, pw.EasyDict())
        if value is _DELETE:
            del d[key]
        else:
            d[key] = value
    return ref


_DELETE = object()


def import_error(path: Path, **kw) -> str:
    with pytest.raises(PickleError) as e:
        importer.import_pickle(path, **kw)
    return str(e.value)


# ----------------------------------------------------------------------------------------------------
# PyTorch pickles: the Generator's keywords


@pytest.mark.parametrize("edits, line", [
    ({"z_dim": True}, "G_ema: z_dim = True is not an integer"),
    ({"z_dim": 8.0}, "G_ema: z_dim = 8.0 is not an integer"),
    ({"c_dim": -1}, "G_ema: c_dim = -1 is outside 0..65536 (not a network corgigan can build)"),
    ({"w_dim": 0}, "G_ema: w_dim = 0 is outside 1..4096 (not a network corgigan can build)"),
    ({"img_resolution": 4},
     "G_ema: img_resolution = 4 is outside 8..4096 (not a network corgigan can build)"),
    ({"img_channels": 5}, "G_ema: img_channels = 5 is outside 1..4 (not a network corgigan can build)"),
    ({"mapping_kwargs": [2]}, "G_ema mapping_kwargs: keywords are a list, not a dict"),
    ({"mapping_kwargs.num_layers": 0},
     "G_ema mapping_kwargs: num_layers = 0 is outside 1..32 (not a network corgigan can build)"),
    ({"mapping_kwargs.embed_features": 7},
     "G_ema mapping_kwargs: embed_features = 7 is not supported (corgigan's networks need None or 8)"),
    ({"mapping_kwargs.layer_features": 16},
     "G_ema mapping_kwargs: layer_features = 16 is not supported (corgigan's networks need None or 8)"),
    ({"mapping_kwargs.activation": "relu"},
     "G_ema mapping_kwargs: activation = 'relu' is not supported (corgigan's networks need 'lrelu')"),
    ({"mapping_kwargs.lr_multiplier": "0.01"},
     "G_ema mapping_kwargs: lr_multiplier = '0.01' is not a number"),
    ({"mapping_kwargs.lr_multiplier": True}, "G_ema mapping_kwargs: lr_multiplier = True is not a number"),
    ({"mapping_kwargs.w_avg_beta": "0.995"}, "G_ema mapping_kwargs: w_avg_beta = '0.995' is not a number"),
    ({"mapping_kwargs.w_avg_beta": False}, "G_ema mapping_kwargs: w_avg_beta = False is not a number"),
    ({"mapping_kwargs.zz": 1, "mapping_kwargs.aa": 1},
     "G_ema mapping_kwargs: unknown keyword 'aa' (not a StyleGAN2-ADA network, or a variant corgigan does "
     "not read)"),
    ({"synthesis_kwargs": "skip"}, "G_ema synthesis_kwargs: keywords are a str, not a dict"),
    ({"synthesis_kwargs.channel_base": 0},
     "G_ema synthesis_kwargs: channel_base = 0 is outside 1..1048576 (not a network corgigan can build)"),
    ({"synthesis_kwargs.channel_max": 4097},
     "G_ema synthesis_kwargs: channel_max = 4097 is outside 1..4096 (not a network corgigan can build)"),
    ({"synthesis_kwargs.num_fp16_res": 17},
     "G_ema synthesis_kwargs: num_fp16_res = 17 is outside 0..16 (not a network corgigan can build)"),
    ({"synthesis_kwargs.architecture": "orig"},
     "G_ema synthesis_kwargs: architecture = 'orig' is not supported (corgigan's networks need 'skip')"),
    ({"synthesis_kwargs.resample_filter": [1, 2, 1]},
     "G_ema synthesis_kwargs: resample_filter = [1, 2, 1] is not supported (corgigan's networks need "
     "[1, 3, 3, 1])"),
    ({"synthesis_kwargs.use_noise": False},
     "G_ema synthesis_kwargs: use_noise = False is not supported (corgigan's networks need True)"),
    ({"synthesis_kwargs.activation": "linear"},
     "G_ema synthesis_kwargs: activation = 'linear' is not supported (corgigan's networks need 'lrelu')"),
    ({"synthesis_kwargs.kernel_size": 1},
     "G_ema synthesis_kwargs: kernel_size = 1 is not supported (corgigan's networks need 3)"),
    ({"synthesis_kwargs.first_cutoff": 2},
     "G_ema synthesis_kwargs: unknown keyword 'first_cutoff' (not a StyleGAN2-ADA network, or a variant "
     "corgigan does not read)"),
    ({"truncation_psi": 0.5},
     "G_ema: unknown keyword 'truncation_psi' (not a StyleGAN2-ADA network, or a variant corgigan does not "
     "read)"),
])
def test_pytorch_generator_keywords_refused_with_their_line(tmp_path, tiny, edits, line):
    path = pw.write(tmp_path / "g.pkl", {"G_ema": ref_g(tiny[0], **edits)})
    assert import_error(path) == f"{path} {line}"


def test_pytorch_generator_every_keyword_at_a_supported_value_is_read(tmp_path, tiny):
    """Every keyword the reference's Generator takes, spelt out (tuples and numpy numbers as pickles hold
    them); the memory-layout keywords are read and ignored."""
    G = tiny[0]
    ref = ref_g(G, **{"mapping_kwargs.embed_features": 8, "mapping_kwargs.layer_features": None,
                      "mapping_kwargs.activation": "lrelu", "mapping_kwargs.lr_multiplier": np.float64(0.01),
                      "mapping_kwargs.w_avg_beta": 0.995, "mapping_kwargs.num_layers": np.int64(2),
                      "synthesis_kwargs.architecture": "skip",
                      "synthesis_kwargs.resample_filter": (1, 3, 3, 1),
                      "synthesis_kwargs.use_noise": True, "synthesis_kwargs.activation": "lrelu",
                      "synthesis_kwargs.kernel_size": 3, "synthesis_kwargs.channel_base": np.int32(64),
                      "synthesis_kwargs.fp16_channels_last": True, "synthesis_kwargs.channels_last": False})
    imp = importer.import_pickle(pw.write(tmp_path / "g.pkl", {"G_ema": ref}))
    assert imp.spec.G_kwargs == {"z_dim": 8, "w_dim": 8, "mapping_kwargs": {"num_layers": 2},
                                 "synthesis_kwargs": SYN}
    assert type(imp.spec.G_kwargs["mapping_kwargs"]["num_layers"]) is int
    assert (imp.spec.resolution, imp.spec.img_channels, imp.spec.c_dim, imp.spec.D_kwargs) == (8, 3, 0, None)
    assert imp.G is None and imp.D is None and imp.kimg is None and imp.kind == "pytorch"
    assert all(torch.equal(imp.G_ema[k], v) for k, v in G.state_dict().items())


def test_pytorch_generator_defaults_fill_what_the_file_leaves_out(tmp_path):
    # No mapping or synthesis keywords at all: the reference's defaults (8 layers, lr 0.01, w_avg_beta 0.995,
    # channel_base 32768, channel_max 512, no fp16, no clamp). A 8-px net at those widths is small enough.
    torch.manual_seed(0)
    G = Generator(Z, 0, Z, RES, 3, {"num_layers": 8}, {"channel_base": 32768, "channel_max": 512})
    ref = pw.reference_generator(G, {}, {})
    del ref._init_kwargs["mapping_kwargs"], ref._init_kwargs["synthesis_kwargs"]   # not even empty dicts
    imp = importer.import_pickle(pw.write(tmp_path / "g.pkl", {"G_ema": ref}))
    assert imp.spec.G_kwargs == {"z_dim": 8, "w_dim": 8, "mapping_kwargs": {"num_layers": 8},
                                 "synthesis_kwargs": {"channel_base": 32768, "channel_max": 512,
                                                      "num_fp16_res": 0, "conv_clamp": None}}


@pytest.mark.parametrize("mapping, want", [
    ({"lr_multiplier": 1, "w_avg_beta": None}, {"lr_multiplier": 1.0, "w_avg_beta": None}),
    ({"lr_multiplier": 0.02, "w_avg_beta": 0.9}, {"lr_multiplier": 0.02, "w_avg_beta": 0.9}),
    ({"lr_multiplier": 0.01, "w_avg_beta": 1}, {"w_avg_beta": 1.0}),
])
def test_pytorch_generator_mapping_settings_that_differ_from_ours_are_kept(tmp_path, mapping, want):
    torch.manual_seed(0)
    G = pw.randomise(Generator(Z, 0, Z, RES, 3, {"num_layers": 2, **mapping}, SYN), 1)
    ref = pw.reference_generator(G, {"num_layers": 2, **mapping}, SYN)
    imp = importer.import_pickle(pw.write(tmp_path / "g.pkl", {"G_ema": ref}))
    got = imp.spec.G_kwargs["mapping_kwargs"]
    assert got == {"num_layers": 2, **want}
    assert all(type(got[k]) is type(v) for k, v in want.items())


def test_pytorch_generator_init_arguments_bound_by_position(tmp_path, tiny):
    G = tiny[0]
    ref = ref_g(G)
    kw = ref._init_kwargs
    order = ["z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs",
             "synthesis_kwargs"]
    # All seven by position, as a direct call may record them: read as the keywords.
    ref._init_args, ref._init_kwargs = tuple(kw[n] for n in order), {}
    imp = importer.import_pickle(pw.write(tmp_path / "pos.pkl", {"G_ema": ref}))
    assert imp.spec.G_kwargs["z_dim"] == 8 and imp.spec.resolution == 8
    # One more than the signature has.
    ref._init_args = (*ref._init_args, None)
    path = pw.write(tmp_path / "eight.pkl", {"G_ema": ref})
    assert import_error(path) == f"{path} G_ema: 8 positional init arguments, the reference takes 7"
    # Two given both ways: the first in sorted order is named.
    ref._init_args, ref._init_kwargs = (8, 0, 8), dict(kw)
    path = pw.write(tmp_path / "twice.pkl", {"G_ema": ref})
    assert import_error(path) == f"{path} G_ema: init argument 'c_dim' given twice"


def test_a_network_of_another_class_is_refused_by_name(tmp_path, tiny):
    G, D = tiny
    path = pw.write(tmp_path / "swapped.pkl", {"G_ema": ref_d(D)})
    assert import_error(path) == f"{path} G_ema: a Discriminator, not the reference's Generator"
    path = pw.write(tmp_path / "swapped-d.pkl", {"G_ema": ref_g(G), "D": ref_g(G)})
    assert import_error(path) == f"{path} D: a Generator, not the reference's Discriminator"


# ----------------------------------------------------------------------------------------------------
# PyTorch pickles: the Discriminator's keywords


_NEVER = "(not a StyleGAN2-ADA network, or a variant corgigan does not read)"
_BUILD = "(not a network corgigan can build)"


@pytest.mark.parametrize("edits, line", [
    ({"c_dim": True}, "D: c_dim = True is not an integer"),
    ({"c_dim": -1}, f"D: c_dim = -1 is outside 0..65536 {_BUILD}"),
    ({"img_resolution": 12}, f"D: img_resolution = 12 is not a power of two {_BUILD}"),
    ({"img_channels": 0}, f"D: img_channels = 0 is outside 1..4 {_BUILD}"),
    ({"architecture": "skip"},
     "D: architecture = 'skip' is not supported (corgigan's networks need 'resnet' or 'orig')"),
    ({"channel_base": 0}, f"D: channel_base = 0 is outside 1..1048576 {_BUILD}"),
    ({"channel_max": 0}, f"D: channel_max = 0 is outside 1..4096 {_BUILD}"),
    ({"num_fp16_res": -1}, f"D: num_fp16_res = -1 is outside 0..16 {_BUILD}"),
    ({"mbstd_group_size": 4}, f"D: unknown keyword 'mbstd_group_size' {_NEVER}"),
    ({"block_kwargs": 3}, "D block_kwargs: keywords are a int, not a dict"),
    ({"block_kwargs.activation": "relu"},
     "D block_kwargs: activation = 'relu' is not supported (corgigan's networks need 'lrelu')"),
    ({"block_kwargs.resample_filter": [1, 1]},
     "D block_kwargs: resample_filter = [1, 1] is not supported (corgigan's networks need [1, 3, 3, 1])"),
    ({"block_kwargs.architecture": "resnet"}, f"D block_kwargs: unknown keyword 'architecture' {_NEVER}"),
    ({"mapping_kwargs.num_layers": 33}, f"D mapping_kwargs: num_layers = 33 is outside 0..32 {_BUILD}"),
    ({"mapping_kwargs.lr_multiplier": None}, "D mapping_kwargs: lr_multiplier = None is not a number"),
    # The label mapping's width is the 4x4 block's: min(channel_base // 4, channel_max).
    ({"channel_max": 32, "mapping_kwargs.embed_features": 8},
     "D mapping_kwargs: embed_features = 8 is not supported (corgigan's networks need None or 16)"),
    ({"channel_max": 32, "mapping_kwargs.layer_features": 8},
     "D mapping_kwargs: layer_features = 8 is not supported (corgigan's networks need None or 16)"),
    ({"mapping_kwargs.layer_features": 32},
     "D mapping_kwargs: layer_features = 32 is not supported (corgigan's networks need None or 16)"),
    ({"mapping_kwargs.activation": "tanh"},
     "D mapping_kwargs: activation = 'tanh' is not supported (corgigan's networks need 'lrelu')"),
    ({"mapping_kwargs.w_avg_beta": None}, f"D mapping_kwargs: unknown keyword 'w_avg_beta' {_NEVER}"),
    ({"epilogue_kwargs.mbstd_num_channels": 65},
     f"D epilogue_kwargs: mbstd_num_channels = 65 is outside 0..64 {_BUILD}"),
    ({"epilogue_kwargs.activation": "elu"},
     "D epilogue_kwargs: activation = 'elu' is not supported (corgigan's networks need 'lrelu')"),
    ({"epilogue_kwargs.mbstd_group_size": 0}, f"D: mbstd_group_size = 0 is outside 1..1024 {_BUILD}"),
    ({"epilogue_kwargs.mbstd_group_size": 1025}, f"D: mbstd_group_size = 1025 is outside 1..1024 {_BUILD}"),
    ({"epilogue_kwargs.cmap_dim": 16}, f"D epilogue_kwargs: unknown keyword 'cmap_dim' {_NEVER}"),
])
def test_pytorch_discriminator_keywords_refused_with_their_line(tmp_path, tiny, edits, line):
    G, D = tiny
    path = pw.write(tmp_path / "d.pkl", {"G_ema": ref_g(G), "D": ref_d(D, **edits)})
    assert import_error(path) == f"{path} {line}"
    # Only G_ema is read when the training networks are not asked for.
    assert importer.import_pickle(path, with_training_nets=False).D is None


def test_pytorch_discriminator_every_keyword_at_a_supported_value_is_read(tmp_path, caplog):
    G, D = nets(architecture="orig")
    # The stand-in takes fewer keywords than the reference: the rest are recorded as the reference would.
    ref = ref_d(D, {"architecture": "orig", "channel_base": 64, "channel_max": 16,
                    "block_kwargs": {"freeze_layers": 2}}, **{
        "num_fp16_res": 0, "conv_clamp": None, "cmap_dim": 5,          # cmap_dim: read only with labels
        "block_kwargs.activation": "lrelu", "block_kwargs.resample_filter": (1, 3, 3, 1),
        "block_kwargs.fp16_channels_last": False,
        "mapping_kwargs.num_layers": 2, "mapping_kwargs.lr_multiplier": 0.5,
        "mapping_kwargs.embed_features": 16, "mapping_kwargs.layer_features": None,
        "mapping_kwargs.activation": "lrelu",
        "epilogue_kwargs.mbstd_group_size": None, "epilogue_kwargs.mbstd_num_channels": 1,
        "epilogue_kwargs.activation": "lrelu"})
    path = pw.write(tmp_path / "d.pkl", {"G_ema": ref_g(G), "G": ref_g(G), "D": ref})
    with caplog.at_level(logging.INFO, logger="corgigan.stylegan2.importer"):
        imp = importer.import_pickle(path)
    assert f"{path} D: mbstd_group_size None (whole minibatch) is read as 4" in caplog.messages
    # Without labels the label mapping's settings describe nothing: our D takes none.
    assert imp.spec.D_kwargs == {"channel_base": 64, "channel_max": 16, "num_fp16_res": 0, "conv_clamp": None,
                                 "mbstd_group_size": 4, "mbstd_num_channels": 1, "architecture": "orig"}
    assert all(torch.equal(imp.D[k], v) for k, v in D.state_dict().items())


def test_pytorch_discriminator_defaults_fill_what_the_file_leaves_out(tmp_path, caplog):
    torch.manual_seed(0)
    G = Generator(Z, 0, Z, RES, 3, {"num_layers": 2}, {"channel_base": 32768, "channel_max": 512})
    D = Discriminator(0, RES, 3, channel_base=32768, channel_max=512)
    path = pw.write(tmp_path / "d.pkl", {"G_ema": pw.reference_generator(G, {"num_layers": 2}, {}),
                                         "D": pw.reference_discriminator(D)})
    with caplog.at_level(logging.INFO, logger="corgigan.stylegan2.importer"):
        imp = importer.import_pickle(path)
    assert not [m for m in caplog.messages if "mbstd_group_size None" in m]    # absent is 4, not None
    assert imp.spec.D_kwargs == {"channel_base": 32768, "channel_max": 512, "num_fp16_res": 0,
                                 "conv_clamp": None, "mbstd_group_size": 4, "mbstd_num_channels": 1,
                                 "architecture": "resnet"}


@pytest.mark.parametrize("d_mapping, want", [
    ({}, None),                                            # the reference's 8 layers at 0.01: our default
    ({"num_layers": 1}, {"num_layers": 1, "lr_multiplier": 0.01}),
    ({"lr_multiplier": 0.1}, {"num_layers": 8, "lr_multiplier": 0.1}),
])
def test_pytorch_conditional_discriminator_keeps_its_label_mapping(tmp_path, d_mapping, want):
    G, D = nets(c_dim=1, d_mapping=d_mapping)
    G_ref = {"mapping_kwargs": {"num_layers": 2}, "synthesis_kwargs": SYN}
    path = pw.write(tmp_path / "c.pkl", {"G_ema": pw.reference_generator(G, **G_ref),
                                         "D": pw.reference_discriminator(D, **D_REF, mapping_kwargs=d_mapping,
                                                                         cmap_dim=16)})
    imp = importer.import_pickle(path)
    assert imp.spec.D_kwargs.get("mapping_kwargs") == want and imp.spec.c_dim == 1
    assert all(torch.equal(imp.D[k], v) for k, v in D.state_dict().items())


@pytest.mark.parametrize("edits, line", [
    ({"mapping_kwargs.num_layers": 0},
     "D: a conditional discriminator without label mapping layers is not supported"),
    ({"cmap_dim": 8, "channel_max": 32}, "D: a label embedding of 8 features is not supported (corgigan's "
                                         "discriminator uses the 4x4 width, 16)"),
    ({"cmap_dim": 32}, "D: a label embedding of 32 features is not supported (corgigan's discriminator uses "
                       "the 4x4 width, 16)"),
])
def test_pytorch_conditional_discriminator_refusals(tmp_path, edits, line):
    G, D = nets(c_dim=1)
    path = pw.write(tmp_path / "c.pkl", {"G_ema": pw.reference_generator(G, **copy.deepcopy(G_REF)),
                                         "D": ref_d(D, **edits)})
    assert import_error(path) == f"{path} {line}"


def test_networks_that_disagree_are_refused(tmp_path, tiny):
    G, D = tiny
    torch.manual_seed(0)
    D16 = Discriminator(0, 16, 3, channel_base=64, channel_max=16, mbstd_group_size=2)
    path = pw.write(tmp_path / "mixed.pkl", {"G_ema": ref_g(G), "G": ref_g(G), "D": ref_d(D16)})
    assert import_error(path) == (f"{path}: the networks disagree on (resolution, channels, labels): "
                                  "G (8, 3, 0); D (16, 3, 0); G_ema (8, 3, 0)")
    G_other = ref_g(G, **{"mapping_kwargs.lr_multiplier": 1})
    path = pw.write(tmp_path / "lr.pkl", {"G_ema": ref_g(G), "G": G_other, "D": ref_d(D)})
    assert import_error(path) == f"{path}: G and G_ema have different settings"


# ----------------------------------------------------------------------------------------------------
# TensorFlow pickles: static kwargs


TF_G = {"resolution": RES, "num_channels": 3, "label_size": 0, "fmap_base": 32, "fmap_max": 16,
        "latent_size": Z, "dlatent_size": Z, "mapping_layers": 2}
TF_D = {"resolution": RES, "num_channels": 3, "label_size": 0, "fmap_base": 32, "fmap_max": 16,
        "mbstd_group_size": 2}


def tf_file(tmp_path: Path, G: Generator, D: Discriminator | None = None, name: str = "tf.pkl",
            G_static: dict | None = None, D_static: dict | None = None) -> Path:
    G_static = TF_G if G_static is None else G_static
    return pw.tf_pickle(tmp_path / name, G, D, G, G_static, TF_D if D_static is None else D_static)


@pytest.mark.parametrize("extra, line", [
    ({"latent_size": False}, "latent_size = False is not an integer"),
    ({"mapping_layers": 33}, f"mapping_layers = 33 is outside 1..32 {_BUILD}"),
    ({"fmap_base": 0}, f"2 * fmap_base = 0 is outside 1..1048576 {_BUILD}"),
    ({"fmap_base": 2.0}, "fmap_base = 2.0 is not an integer"),
    ({"fmap_max": 0}, f"fmap_max = 0 is outside 1..4096 {_BUILD}"),
    ({"num_fp16_res": 17}, f"num_fp16_res = 17 is outside 0..16 {_BUILD}"),
    ({"mapping_fmaps": 16}, "mapping_fmaps = 16 is not supported (corgigan's networks need None or 8)"),
    ({"label_fmaps": 4}, "label_fmaps = 4 is not supported (corgigan's networks need None or 8)"),
    ({"mapping_lrmul": "1"}, "mapping_lrmul = '1' is not a number"),
    ({"dlatent_avg_beta": "0.995"}, "dlatent_avg_beta = '0.995' is not a number"),
    ({"w_avg_beta": [0.995]}, "w_avg_beta = [0.995] is not a number"),
    ({"mapping_nonlinearity": "relu"},
     "mapping_nonlinearity = 'relu' is not supported (corgigan's networks need 'lrelu')"),
    ({"normalize_latents": False},
     "normalize_latents = False is not supported (corgigan's networks need True)"),
    ({"fmap_decay": 0.5}, "fmap_decay = 0.5 is not supported (corgigan's networks need 1 or 1.0)"),
    ({"fmap_min": 9}, "fmap_min 9 raises some layers' widths (not supported)"),
    ({"fmap_min": "8"}, "fmap_min = '8' is not an integer"),
    ({"fmap_const": 8, "fmap_max": 32},
     "fmap_const = 8 is not supported (corgigan's networks need None or 16)"),
    ({"fmap_const": 32}, "fmap_const = 32 is not supported (corgigan's networks need None or 16)"),
    ({"architecture": "resnet"},
     "architecture = 'resnet' is not supported (corgigan's networks need 'skip')"),
    ({"nonlinearity": "elu"}, "nonlinearity = 'elu' is not supported (corgigan's networks need 'lrelu')"),
    ({"resample_kernel": [1, 1]},
     "resample_kernel = [1, 1] is not supported (corgigan's networks need [1, 3, 3, 1])"),
    ({"use_noise": False}, "use_noise = False is not supported (corgigan's networks need True)"),
    ({"mapping_func": "G_mapping_v2"},
     "mapping_func = 'G_mapping_v2' is not supported (corgigan's networks need 'G_mapping')"),
    ({"synthesis_func": "G_synthesis_stylegan_revised"},
     "synthesis_func = 'G_synthesis_stylegan_revised' is not supported (corgigan's networks need "
     "'G_synthesis_stylegan2' or 'G_synthesis')"),
    ({"channel_base": 64}, f"unknown keyword 'channel_base' {_NEVER}"),
    ({"label_size": -1}, f"label_size = -1 is outside 0..65536 {_BUILD}"),
    ({"dlatent_size": 0}, f"dlatent_size = 0 is outside 1..4096 {_BUILD}"),
    ({"num_channels": 5}, f"num_channels = 5 is outside 1..4 {_BUILD}"),
])
def test_tensorflow_generator_settings_refused_with_their_line(tmp_path, tiny, extra, line):
    path = tf_file(tmp_path, tiny[0], G_static={**TF_G, **extra})
    assert import_error(path) == f"{path} Gs: {line}"


def test_tensorflow_labels_need_latents_as_wide_as_dlatents(tmp_path):
    torch.manual_seed(0)
    G = Generator(4, 2, 8, RES, 3, {"num_layers": 2}, SYN)
    path = tf_file(tmp_path, G, G_static={**TF_G, "latent_size": 4, "label_size": 2})
    assert import_error(path) == (f"{path} Gs: a label embedding of latent_size 4 != dlatent_size 8 is not "
                                  "supported")


def test_tensorflow_generator_every_setting_at_a_supported_value_is_read(tmp_path, tiny):
    G = tiny[0]
    static = {**TF_G, "mapping_fmaps": 8, "label_fmaps": None, "mapping_lrmul": 0.01,
              "mapping_nonlinearity": "lrelu", "normalize_latents": True, "fmap_decay": 1.0, "fmap_min": 8,
              "fmap_const": 16, "architecture": "skip", "nonlinearity": "lrelu",
              "resample_kernel": (1, 3, 3, 1),
              "use_noise": True, "mapping_func": "G_mapping", "synthesis_func": "G_synthesis",
              "num_fp16_res": 0, "conv_clamp": None,
              # Settings of a run, never of the image for given weights: read and ignored.
              "truncation_psi": 0.5, "truncation_cutoff": 8, "truncation_psi_val": None,
              "truncation_cutoff_val": None, "style_mixing_prob": 0.9, "randomize_noise": True,
              "fused_modconv": True, "dtype": "float32", "is_training": False, "is_validation": False,
              "return_dlatents": False, "structure": "auto", "is_template_graph": False,
              "force_clean_graph": False}
    imp = importer.import_pickle(tf_file(tmp_path, G, G_static=static))
    assert imp.kind == "tensorflow" and imp.G is None and imp.D is None
    assert imp.spec.G_kwargs == {"z_dim": 8, "w_dim": 8, "mapping_kwargs": {"num_layers": 2},
                                 "synthesis_kwargs": SYN}
    assert all(torch.equal(imp.G_ema[k], v) for k, v in G.state_dict().items())


def test_tensorflow_generator_defaults_fill_what_the_file_leaves_out(tmp_path):
    # 8 mapping layers, 3 channels, no labels; fmap_base 4 (8 channels at 4 px, 1 at 8 px: TF's fmap_min
    # of 1 is reached) and TF's fmap_max 512; the resolution, latent sizes and fmap_base given.
    torch.manual_seed(0)
    G = pw.randomise(Generator(Z, 0, Z, RES, 3, {"num_layers": 8}, {"channel_base": 8, "channel_max": 512}),
                     1)
    imp = importer.import_pickle(tf_file(tmp_path, G, G_static={"resolution": RES, "latent_size": Z,
                                                                "dlatent_size": Z, "fmap_base": 4}))
    assert imp.spec.G_kwargs == {"z_dim": 8, "w_dim": 8, "mapping_kwargs": {"num_layers": 8},
                                 "synthesis_kwargs": {"channel_base": 8, "channel_max": 512,
                                                      "num_fp16_res": 0, "conv_clamp": None}}
    assert (imp.spec.resolution, imp.spec.img_channels, imp.spec.c_dim) == (8, 3, 0)


@pytest.mark.parametrize("left_out, says", [
    ("latent_size", "mapping.layers.0.weight: copying a param with shape torch.Size([8, 8]) from "
                    "checkpoint, the shape in current model is torch.Size([8, 512])"),
    ("dlatent_size", "mapping.w_avg: copying a param with shape torch.Size([8]) from checkpoint, the shape "
                     "in current model is torch.Size([512])"),
])
def test_tensorflow_latent_sizes_default_to_512(tmp_path, tiny, left_out, says):
    static = {k: v for k, v in TF_G.items() if k != left_out}
    path = tf_file(tmp_path, tiny[0], G_static=static)
    error = import_error(path)
    assert error.startswith(f"{path} Gs: the weights do not fit the network its settings describe: ") \
        and says in error, error


def test_tensorflow_resolution_defaults_to_1024(tmp_path, tiny):
    # 16 channels at every resolution up to 1024 px: the file's 8-px variables end at 8x8.
    static = {**{k: v for k, v in TF_G.items() if k != "resolution"}, "fmap_base": 1 << 14}
    path = tf_file(tmp_path, tiny[0], G_static=static)
    missing = "'synthesis/16x16/Conv0_up/weight'"
    assert import_error(path) == f"{path} Gs: the TensorFlow variable {missing} is missing"


@pytest.mark.parametrize("betas, want", [
    ({"dlatent_avg_beta": None}, {"w_avg_beta": 1.0}),      # TF never moves dlatent_avg
    ({"dlatent_avg_beta": 0.9}, {"w_avg_beta": 0.9}),
    ({"w_avg_beta": 0.5}, {"w_avg_beta": 0.5}),             # the name of the PyTorch port
    ({"dlatent_avg_beta": 0.9, "w_avg_beta": "unread"}, {"w_avg_beta": 0.9}),
    ({"dlatent_avg_beta": 0.995, "mapping_lrmul": 1}, {"lr_multiplier": 1.0}),
])
def test_tensorflow_mapping_settings(tmp_path, tiny, betas, want):
    imp = importer.import_pickle(tf_file(tmp_path, tiny[0], G_static={**TF_G, **betas}))
    assert imp.spec.G_kwargs["mapping_kwargs"] == {"num_layers": 2, **want}


@pytest.mark.parametrize("extra, line", [
    ({"label_size": -1}, f"label_size = -1 is outside 0..65536 {_BUILD}"),
    ({"resolution": 24}, f"resolution = 24 is not a power of two {_BUILD}"),
    ({"num_channels": 5}, f"num_channels = 5 is outside 1..4 {_BUILD}"),
    ({"fmap_base": (1 << 19) + 1}, f"2 * fmap_base = 1048578 is outside 1..1048576 {_BUILD}"),
    ({"fmap_max": 5000}, f"fmap_max = 5000 is outside 1..4096 {_BUILD}"),
    ({"fmap_min": 9}, "fmap_min 9 raises some layers' widths (not supported)"),
    ({"architecture": "skip"}, "architecture = 'skip' is not supported (corgigan's networks need 'resnet' or "
                               "'orig')"),
    ({"mapping_layers": -1}, f"mapping_layers = -1 is outside 0..32 {_BUILD}"),
    ({"mapping_lrmul": None}, "mapping_lrmul = None is not a number"),
    ({"nonlinearity": "relu"}, "nonlinearity = 'relu' is not supported (corgigan's networks need 'lrelu')"),
    ({"resample_kernel": [1, 3, 1]},
     "resample_kernel = [1, 3, 1] is not supported (corgigan's networks need [1, 3, 3, 1])"),
    ({"mbstd_group_size": 0}, f"mbstd_group_size = 0 is outside 1..1024 {_BUILD}"),
    ({"mbstd_num_features": 65}, f"mbstd_num_features = 65 is outside 0..64 {_BUILD}"),
    ({"use_pagan": True}, "use_pagan = True is not supported (corgigan's networks need False)"),
    ({"use_spectral_norm": True},
     "use_spectral_norm = True is not supported (corgigan's networks need False)"),
    ({"score_max": 2}, "score_max = 2 is not supported (corgigan's networks need 1)"),
    ({"num_fp16_res": -1}, f"num_fp16_res = -1 is outside 0..16 {_BUILD}"),
    ({"latent_size": 8}, f"unknown keyword 'latent_size' {_NEVER}"),
])
def test_tensorflow_discriminator_settings_refused_with_their_line(tmp_path, tiny, extra, line):
    G, D = tiny
    path = tf_file(tmp_path, G, D, D_static={**TF_D, **extra})
    assert import_error(path) == f"{path} D: {line}"


def test_tensorflow_discriminator_every_setting_at_a_supported_value_is_read(tmp_path, tiny):
    G, D = tiny
    static = {**TF_D, "fmap_decay": 1, "fmap_min": 8, "architecture": "resnet", "mapping_fmaps": 3,
              "mapping_layers": 3, "mapping_lrmul": 0.5, "nonlinearity": "lrelu",
              "resample_kernel": [1, 3, 3, 1],
              "mbstd_num_features": 1, "use_pagan": False, "use_spectral_norm": False, "score_max": 1,
              "num_fp16_res": 1, "conv_clamp": 256,
              "freeze_layers": 2, "augment_strength": 0.3, "adaptive_dropout": 0, "pagan_num": 4,
              "pagan_fade": False, "score_size": 1, "dtype": "float32", "structure": "auto",
              "is_training": True, "is_template_graph": False}
    imp = importer.import_pickle(tf_file(tmp_path, G, D, D_static=static))
    assert imp.spec.D_kwargs == {"channel_base": 64, "channel_max": 16, "num_fp16_res": 1, "conv_clamp": 256,
                                 "mbstd_group_size": 2, "mbstd_num_channels": 1, "architecture": "resnet"}
    assert all(torch.equal(imp.D[k], v) for k, v in D.state_dict().items())


def test_tensorflow_discriminator_defaults_fill_what_the_file_leaves_out(tmp_path, caplog):
    torch.manual_seed(0)
    G = pw.randomise(Generator(Z, 0, Z, RES, 3, {"num_layers": 2}, {"channel_base": 8, "channel_max": 512}),
                     1)
    D = pw.randomise(Discriminator(0, RES, 3, channel_base=8, channel_max=512), 2)
    path = tf_file(tmp_path, G, D, G_static={**TF_G, "fmap_base": 4, "fmap_max": 512},
                   D_static={"resolution": RES, "fmap_base": 4})
    with caplog.at_level(logging.INFO, logger="corgigan.stylegan2.importer"):
        imp = importer.import_pickle(path)
    assert not [m for m in caplog.messages if "mbstd_group_size None" in m]    # absent is 4, not None
    assert imp.spec.D_kwargs == {"channel_base": 8, "channel_max": 512, "num_fp16_res": 0, "conv_clamp": None,
                                 "mbstd_group_size": 4, "mbstd_num_channels": 1, "architecture": "resnet"}
    assert all(torch.equal(imp.D[k], v) for k, v in D.state_dict().items())


def test_tensorflow_conditional_discriminator_label_mapping(tmp_path):
    G, D = nets(c_dim=2, d_mapping={"num_layers": 2, "lr_multiplier": 0.1})
    G_static = {**TF_G, "label_size": 2}
    # TF's default lr multiplier of the label mapping is 0.1, unlike the reference PyTorch's 0.01.
    imp = importer.import_pickle(tf_file(tmp_path, G, D, G_static=G_static,
                                         D_static={**TF_D, "label_size": 2, "mapping_layers": 2}))
    assert imp.spec.D_kwargs["mapping_kwargs"] == {"num_layers": 2, "lr_multiplier": 0.1}
    assert all(torch.equal(imp.D[k], v) for k, v in D.state_dict().items())
    # TF's default: no label mapping layers, which our conditional D cannot do without.
    path = tf_file(tmp_path, G, D, "none.pkl", G_static, {**TF_D, "label_size": 2})
    assert import_error(path) == (f"{path} D: a conditional discriminator without label mapping layers is "
                                  "not supported")
    path = tf_file(tmp_path, G, D, "cmap.pkl", G_static,
                   {**TF_D, "label_size": 2, "mapping_layers": 2, "mapping_fmaps": 8, "fmap_max": 32})
    assert import_error(path) == (f"{path} D: a label embedding of 8 features is not supported (corgigan's "
                                  "discriminator uses the 4x4 width, 16)")


# ----------------------------------------------------------------------------------------------------
# Tensors: the reference's names onto ours, and what may not be there


def _rename(module: torch.nn.Module, old: str, new: str, keep: bool = False) -> None:
    mods = module._modules
    mods[new] = mods[old] if keep else mods.pop(old)


@pytest.mark.parametrize("net, old, new, line", [
    ("G", "b8", "b12", "G_ema: block b12 is not at a power-of-two resolution"),
    ("G", "b4", "b2", "G_ema: block b2 is not at a power-of-two resolution"),
    ("D", "b8", "b6", "D: block b6 is not at a power-of-two resolution"),
])
def test_blocks_off_the_power_of_two_resolutions_are_refused(tmp_path, tiny, net, old, new, line):
    G, D = tiny
    ref_G, ref_D = ref_g(G), ref_d(D)
    _rename(ref_G.synthesis if net == "G" else ref_D, old, new)
    path = pw.write(tmp_path / "blocks.pkl", {"G_ema": ref_G, "D": ref_D})
    assert import_error(path) == f"{path} {line}"


@pytest.mark.parametrize("net", ["G", "D"])
def test_two_reference_names_for_one_of_ours_are_refused(tmp_path, tiny, net):
    # b08 is read as resolution 8 too: two tensors would land on one name of ours.
    G, D = tiny
    ref_G, ref_D = ref_g(G), ref_d(D)
    _rename(ref_G.synthesis if net == "G" else ref_D, "b8", "b08", keep=True)
    path = pw.write(tmp_path / "twice.pkl", {"G_ema": ref_G, "D": ref_D})
    where = "G_ema" if net == "G" else "D"
    assert import_error(path) == f"{path} {where}: two tensors map to the same name of ours"


@pytest.mark.parametrize("values", [
    torch.ones(4, 4) / 16,                                      # the right shape, another filter
    pw.FILTER[:3, :3].clone(),                                  # the reference's values, cut to 3x3
])
def test_resample_filters_other_than_ours_are_refused(tmp_path, tiny, values):
    G = tiny[0]
    ref_G = ref_g(G)
    ref_G.synthesis.b8.conv0.resample_filter = values
    path = pw.write(tmp_path / "filter.pkl", {"G_ema": ref_G})
    assert import_error(path) == (f"{path} G_ema: synthesis.b8.conv0.resample_filter is not the [1, 3, 3, 1] "
                                  "filter corgigan's networks use")


def test_stored_tensors_of_other_types_are_read_as_float32(tmp_path, tiny):
    # float64 weights and a float16 filter (what a half-precision export could hold) give our float32.
    G = tiny[0]
    ref_G = ref_g(G)
    ref_G.mapping.fc0.weight.data = ref_G.mapping.fc0.weight.data.double()
    ref_G.synthesis.b8.conv0.resample_filter = pw.FILTER.half()
    imp = importer.import_pickle(pw.write(tmp_path / "types.pkl", {"G_ema": ref_G}))
    assert imp.G_ema["mapping.layers.0.weight"].dtype == torch.float32
    assert all(torch.equal(imp.G_ema[k], v) for k, v in G.state_dict().items())


def test_weights_that_do_not_fit_their_settings_are_refused(tmp_path, tiny):
    G = tiny[0]
    ref_G = ref_g(G)
    ref_G.register_buffer("stray", torch.zeros(2))          # a name with no dot and no place in ours
    path = pw.write(tmp_path / "stray.pkl", {"G_ema": ref_G})
    assert import_error(path) == (f"{path} G_ema: the weights do not fit the network its settings describe: "
                                  "Error(s) in loading state_dict for Generator:\n\tUnexpected key(s) in "
                                  'state_dict: "stray". ')
    ref_G = ref_g(G)
    del ref_G.mapping.fc1._parameters["bias"]
    path = pw.write(tmp_path / "short.pkl", {"G_ema": ref_G})
    assert import_error(path) == (f"{path} G_ema: the weights do not fit the network its settings describe: "
                                  "Error(s) in loading state_dict for Generator:\n\tMissing key(s) in "
                                  'state_dict: "mapping.layers.1.bias". ')


def _tf_gs(G: Generator, static: dict, edit) -> pw.Network:
    gs = pw.tf_generator(G, "Gs", static)
    comps = gs.state["components"]
    edit(comps["mapping"].state["variables"], comps["synthesis"].state["variables"])
    return gs


def test_tensorflow_variables_missing_or_left_over(tmp_path, tiny, caplog):
    G = tiny[0]

    def drop(mapping, synthesis):
        synthesis[:] = [(n, v) for n, v in synthesis if n != "8x8/Conv1/noise_strength"]

    path = pw.write(tmp_path / "missing.pkl", _tf_gs(G, TF_G, drop))
    assert import_error(path) == (f"{path} Gs: the TensorFlow variable 'synthesis/8x8/Conv1/noise_strength' "
                                  "is missing")

    def extra(mapping, synthesis):
        synthesis.extend((f"extra{i}", np.float32([i])) for i in range(9, 0, -1))

    path = pw.write(tmp_path / "extra.pkl", _tf_gs(G, TF_G, extra))
    with caplog.at_level(logging.WARNING, logger="corgigan.stylegan2.importer"):
        imp = importer.import_pickle(path)
    assert caplog.messages == [f"{path} Gs: 9 TensorFlow variables have no place in our network and are "
                               "ignored: " + ", ".join(f"synthesis/extra{i}" for i in range(1, 9))]
    assert all(torch.equal(imp.G_ema[k], v) for k, v in G.state_dict().items())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="corgigan.stylegan2.importer"):
        importer.import_pickle(tf_file(tmp_path, G, name="clean.pkl"))
    assert caplog.messages == []


def test_tensorflow_label_concatenation_is_refused(tmp_path):
    torch.manual_seed(0)
    G = Generator(Z, 2, Z, RES, 3, {"num_layers": 2}, SYN)

    def concat(mapping, synthesis):
        mapping.append(("LabelConcat/weight", np.zeros((2, Z), np.float32)))

    path = pw.write(tmp_path / "concat.pkl", _tf_gs(G, {**TF_G, "label_size": 2}, concat))
    assert import_error(path) == (f"{path} Gs: the original StyleGAN2's label concatenation is not supported "
                                  "(only StyleGAN2-ADA's label embedding)")


# ----------------------------------------------------------------------------------------------------
# Transfer learning: what a config must share with a model


G16 = {"z_dim": 16, "w_dim": 16, "mapping_kwargs": {"num_layers": 2, "lr_multiplier": 0.1},
       "synthesis_kwargs": {"channel_base": 64, "channel_max": 8, "conv_clamp": None}}
D16 = {"channel_base": 128, "channel_max": 16, "architecture": "orig", "mbstd_num_channels": 2,
       "mbstd_group_size": 4, "mapping_kwargs": {"num_layers": 3, "lr_multiplier": 0.5}}


def test_weight_layout_is_what_fixes_the_weights_shapes():
    layout = importer.weight_layout(NetworkSpec(16, 3, 2, G16, D16))
    assert layout == {"resolution": 16, "img_channels": 3, "c_dim": 2, "z_dim": 16, "w_dim": 16,
                      "mapping_layers": 2, "mapping_lr_multiplier": 0.1,
                      "G_channels": "4:8 8:8 16:4",             # min(64 // res, 8)
                      "D_channels": "4:16 8:16 16:8",           # min(128 // res, 16)
                      "D_architecture": "orig", "D_mbstd_num_channels": 2,
                      "D_mapping_layers": 3, "D_mapping_lr_multiplier": 0.5}
    # Without labels D's label mapping is no part of it; without D, nothing of D is.
    assert "D_mapping_layers" not in importer.weight_layout(NetworkSpec(16, 3, 0, G16, D16))
    assert set(importer.weight_layout(NetworkSpec(16, 1, 0, G16, None))) == {
        "resolution", "img_channels", "c_dim", "z_dim", "w_dim", "mapping_layers", "mapping_lr_multiplier",
        "G_channels"}


def test_weight_layout_fills_in_our_networks_defaults():
    layout = importer.weight_layout(NetworkSpec(8, 3, 1, {"z_dim": 4, "w_dim": 4}, {}))
    assert layout == {"resolution": 8, "img_channels": 3, "c_dim": 1, "z_dim": 4, "w_dim": 4,
                      "mapping_layers": 8, "mapping_lr_multiplier": 0.01, "G_channels": "4:512 8:512",
                      "D_channels": "4:512 8:512", "D_architecture": "resnet", "D_mbstd_num_channels": 1,
                      "D_mapping_layers": 8, "D_mapping_lr_multiplier": 0.01}


def _config(resolution: int = 16, G: dict | None = None, D: dict | None = None) -> dict:
    return {"name": "mine", "resolution": resolution, "G_kwargs": copy.deepcopy(G or G16),
            "D_kwargs": copy.deepcopy(D or D16)}


_ADVICE = " (build the dataset at the model's resolution and channels, or start from another model)"


def test_transfer_onto_another_image_format_is_refused_with_every_reason():
    spec = NetworkSpec(16, 3, 0, G16, D16)
    with pytest.raises(SnapshotError) as e:
        importer.check_transfer(spec, _config(), {"resolution": 8, "num_channels": 1, "label_dim": 2},
                                "m.pkl")
    assert str(e.value) == ("resume_from m.pkl: cannot fine-tune it on this dataset: its networks make 16-px "
                            "images, the dataset has 8-px images; its images have 3 channels, the dataset's "
                            "1; it takes 0 label dimensions, the dataset has 2" + _ADVICE)
    # Without a dataset the config's resolution is the one to meet, and nothing else of the data is asked.
    with pytest.raises(SnapshotError) as e:
        importer.check_transfer(spec, _config(resolution=8), None, "m.pkl")
    assert str(e.value) == ("resume_from m.pkl: cannot fine-tune it on this dataset: its networks make 16-px "
                            "images, the dataset has 8-px images" + _ADVICE)
    for problem in ({"num_channels": 1}, {"label_dim": 1}):
        data = {"resolution": 16, "num_channels": 3, "label_dim": 0, **problem}
        with pytest.raises(SnapshotError, match="cannot fine-tune it on this dataset"):
            importer.check_transfer(spec, _config(), data, "m.pkl")


def test_transfer_checks_the_dataset_resolution_not_the_configs():
    # The dataset is 16 px, as the model: the config's 8 px then shows as a layout difference.
    spec = NetworkSpec(16, 3, 0, G16, D16)
    with pytest.raises(SnapshotError) as e:
        importer.check_transfer(spec, _config(resolution=8), {"resolution": 16, "num_channels": 3,
                                                              "label_dim": 0}, "m.pkl")
    assert str(e.value).startswith("resume_from m.pkl: its networks do not fit those of train.config 'mine' "
                                   "(model vs config): D_channels: model '4:16 8:16 16:8', now '4:16 8:16'; ")


def test_transfer_onto_networks_of_other_shapes_is_refused_with_the_differences():
    spec = NetworkSpec(16, 1, 2, G16, D16)
    G = {**G16, "z_dim": 8, "mapping_kwargs": {"num_layers": 2, "lr_multiplier": 0.01}}
    D = {**D16, "architecture": "resnet"}
    with pytest.raises(SnapshotError) as e:
        importer.check_transfer(spec, _config(G=G, D=D), None, "m.pkl")
    assert str(e.value) == (
        "resume_from m.pkl: its networks do not fit those of train.config 'mine' (model vs config): "
        "D_architecture: model 'orig', now 'resnet'; mapping_lr_multiplier: model 0.1, now 0.01; "
        "z_dim: model 16, now 8. Choose the config the model was trained with (the reference's stylegan2, "
        "paper256, paper512 and paper1024 presets have 512-d latents and 8 mapping layers)")
    # A generator-only model is checked for its G alone: the run's D starts fresh.
    importer.check_transfer(NetworkSpec(16, 1, 2, G16, None), _config(D=D), None, "gs.pkl")
    with pytest.raises(SnapshotError, match=r"\(model vs config\): mapping_lr_multiplier: model 0\.1, now "
                                            r"0\.01; z_dim: model 16, now 8\. Choose"):
        importer.check_transfer(NetworkSpec(16, 1, 2, G16, None), _config(G=G, D=D), None, "gs.pkl")


def test_transfer_with_other_settings_that_keep_every_shape_says_which(caplog):
    G = {**G16, "synthesis_kwargs": {**G16["synthesis_kwargs"], "conv_clamp": 256}}
    D = {**D16, "mbstd_group_size": 2}
    data = {"resolution": 16, "num_channels": 3, "label_dim": 0}
    with caplog.at_level(logging.INFO, logger="corgigan.stylegan2.importer"):
        importer.check_transfer(NetworkSpec(16, 3, 0, G16, D16), _config(G=G, D=D), data, "m.pkl")
        importer.check_transfer(NetworkSpec(16, 3, 0, G16, D16), _config(), data, "same.pkl")
        importer.check_transfer(NetworkSpec(16, 3, 0, G16, None), _config(D=D), data, "gs.pkl")
    assert caplog.messages == [
        "fine-tuning m.pkl with config mine's settings where they differ (no weight changes shape): "
        "G_kwargs.synthesis_kwargs.conv_clamp: model None, now 256; D_kwargs.mbstd_group_size: model 4, "
        "now 2"]


@pytest.mark.parametrize("state, imported", [
    ({"run": {"imported_from": "corgi.pkl", "pickle_format": "tensorflow"}}, True),
    ({"run": {"imported_from": ""}}, False),
    ({"run": {"resume_from": "corgi.pkl"}}, False),
    ({"run": "corgi.pkl"}, False),
    ({"run": None}, False),
    ({}, False),
])
def test_is_imported_only_for_snapshots_convert_wrote(state, imported):
    assert importer.is_imported(state) is imported


# ----------------------------------------------------------------------------------------------------
# Converting into a corgigan snapshot


def preset_pickle(path: Path, preset: str = "demo", mbstd_group_size: int | None = None,
                  with_G: bool = True) -> tuple[Path, Generator, Generator, Discriminator]:
    """A reference pickle of `preset`'s networks at 8 px (D's minibatch group changed if asked)."""
    cfg = configs.make_config(preset, RES)
    torch.manual_seed(3)
    G, D = configs.build_networks(configs.network_spec(cfg))
    G, D = pw.randomise(G, 4), pw.randomise(D, 5)
    G_ema = pw.randomise(copy.deepcopy(G), 6)
    G_ref = {k: cfg.G_kwargs[k] for k in ("mapping_kwargs", "synthesis_kwargs")}
    d = cfg.D_kwargs
    D_ref = {k: d[k] for k in ("channel_base", "channel_max", "num_fp16_res", "conv_clamp", "architecture")}
    D_ref["epilogue_kwargs"] = {"mbstd_group_size": mbstd_group_size or d["mbstd_group_size"]}
    data = {"G_ema": pw.reference_generator(G_ema, **G_ref), "D": pw.reference_discriminator(D, **D_ref)}
    if with_G:
        data["G"] = pw.reference_generator(G, **G_ref)
    return pw.write(path, data), G, G_ema, D


def _same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> bool:
    return list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_convert_writes_the_snapshot_a_run_would_resume(tmp_path, caplog):
    path, G, G_ema, D = preset_pickle(tmp_path / "network-snapshot-000120.pkl")
    before = torch.get_rng_state()
    with caplog.at_level(logging.INFO, logger="corgigan.stylegan2.importer"):
        out = importer.convert(path, tmp_path / "converted.pt")
    assert torch.equal(torch.get_rng_state(), before)       # the process's generators are left alone
    assert caplog.messages == [f"{path} (pytorch pickle, 8 px) -> {out} (config demo)"]
    state = load_snapshot(out)
    assert state["config"] == configs.config_to_dict(configs.make_config("demo", RES))
    assert state["run"] == {"imported_from": "network-snapshot-000120.pkl", "pickle_format": "pytorch",
                            "pickle_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert state["dataset"] == {"hash": "", "resolution": 8, "num_channels": 3, "label_dim": 0,
                                "num_images": 0}
    assert state["progress"] == {"nimg": 120_000, "batch_idx": 0, "tick": 0}
    assert _same(state["G"], G.state_dict()) and _same(state["G_ema"], G_ema.state_dict())
    assert _same(state["D"], D.state_dict())
    # Fresh Adam states for G and D, and the generators as seeded with 0 (not moved by any build).
    assert state["G_opt"]["state"] == {} and state["D_opt"]["state"] == {}
    assert len(state["G_opt"]["param_groups"][0]["params"]) == len(list(G.parameters()))
    assert len(state["D_opt"]["param_groups"][0]["params"]) == len(list(D.parameters()))
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    assert torch.equal(state["rng"]["torch"], torch.get_rng_state())
    assert state["rng"]["numpy"]["pos"] == np.random.get_state()[2]
    assert np.array_equal(state["rng"]["numpy"]["keys"].numpy(), np.random.get_state()[1].astype(np.int64))
    assert state["rng"]["python"][1] == list(random.getstate()[1])
    # The preset asked for by name, when its networks take the weights.
    again = load_snapshot(importer.convert(path, tmp_path / "named.pt", "demo"))
    assert again["config"] == state["config"] and _same(again["G_ema"], G_ema.state_dict())


def test_convert_without_a_training_g_starts_it_from_g_ema_and_counts_no_kimg(tmp_path):
    path, _, G_ema, _ = preset_pickle(tmp_path / "no-g.pkl", with_G=False)
    state = load_snapshot(importer.convert(path, tmp_path / "no-g.pt"))
    assert _same(state["G"], G_ema.state_dict()) and _same(state["G_ema"], G_ema.state_dict())
    assert state["progress"]["nimg"] == 0 and state["run"]["imported_from"] == "no-g.pkl"


def test_convert_takes_a_preset_only_when_both_networks_are_the_presets(tmp_path, caplog):
    # demo's G with another minibatch group in D: not the demo preset, so auto's settings with these nets.
    path, _, _, _ = preset_pickle(tmp_path / "group2.pkl", mbstd_group_size=2)
    with caplog.at_level(logging.INFO, logger="corgigan.stylegan2.importer"):
        state = load_snapshot(importer.convert(path, tmp_path / "group2.pt"))
    assert (f"no preset has exactly the networks of {path}: the snapshot takes auto's training settings"
            in caplog.messages)
    demo = configs.make_config("demo", RES)
    auto = configs.config_to_dict(configs.make_config("auto", RES))
    assert state["config"] == {**auto, "G_kwargs": demo.G_kwargs, "D_kwargs": {**demo.D_kwargs,
                                                                                 "mbstd_group_size": 2},
                               "mbstd_group": 2}


def test_convert_refusals_name_the_file(tmp_path, tiny):
    path, _, _, _ = preset_pickle(tmp_path / "demo.pkl")
    with pytest.raises(SnapshotError) as e:
        importer.convert(path, tmp_path / "x.pt", "paper256")
    assert str(e.value).startswith(f"resume_from {path}: its networks do not fit those of train.config "
                                   "'paper256' (model vs config): ")
    with pytest.raises(SnapshotError) as e:
        importer.convert(path, tmp_path / "x.pt", "nope")
    assert str(e.value) == ("convert: unknown training config 'nope'; choose one of demo, auto, stylegan2, "
                            "paper256, paper512, paper1024, cifar")
    gs = pw.write(tmp_path / "gs.pkl", {"G_ema": ref_g(tiny[0])})
    with pytest.raises(SnapshotError) as e:
        importer.convert(gs, tmp_path / "gs.pt")
    assert str(e.value) == (f"convert {gs}: the file holds only a generator (Gs); a corgigan snapshot needs "
                            "the discriminator too. Generate from the .pkl directly, or fine-tune it with "
                            "train.resume_from (its D then starts fresh)")
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "gs.pt").exists()


# ----------------------------------------------------------------------------------------------------
# Networks judged before they are built: what they would hold against what the file could


WIDE = {"synthesis_kwargs.channel_base": 1 << 20, "synthesis_kwargs.channel_max": 512}
WIDE_D = {"channel_base": 1 << 20, "channel_max": 512}


def _bytes(module: torch.nn.Module) -> int:
    """Bytes of float32 numbers a network holds (parameters and buffers), counted on the meta device."""
    return 4 * sum(t.numel() for t in (*module.parameters(), *module.buffers()))


def _refusal(path: Path, need: int) -> str:
    size = path.stat().st_size
    return (f"{path}: refused: its stored settings describe networks of {need:,} bytes, more than a "
            f"{size:,}-byte file can hold weights for")


def test_what_a_file_may_make_us_allocate_counts_every_network_it_holds(tmp_path, tiny):
    # 512 channels at 4 and 8 px: ~28 MB per generator, from files of a few kilobytes.
    G, D = tiny
    with torch.device("meta"):
        g = _bytes(Generator(Z, 0, Z, RES, 3, {"num_layers": 2}, {**SYN, "channel_base": 1 << 20,
                                                                  "channel_max": 512}))
        d = _bytes(Discriminator(0, RES, 3, channel_base=1 << 20, channel_max=512, mbstd_group_size=2))
    files = {"G_ema": ({"G_ema": ref_g(G, **WIDE)}, g),
             "G_ema, G": ({"G_ema": ref_g(G, **WIDE), "G": ref_g(G, **WIDE)}, 2 * g),
             "G_ema, D": ({"G_ema": ref_g(G, **WIDE), "D": ref_d(D, **WIDE_D)}, g + d)}
    for name, (data, need) in files.items():
        path = pw.write(tmp_path / f"{name}.pkl", data)
        assert import_error(path) == _refusal(path, need), name
    # Only what is read counts: the same file's G_ema alone.
    assert import_error(path, with_training_nets=False) == _refusal(path, g)


def test_a_file_just_large_enough_for_its_networks_is_not_refused_for_its_size(tmp_path, tiny):
    G = tiny[0]
    with torch.device("meta"):
        need = _bytes(Generator(Z, 0, Z, RES, 3, {"num_layers": 2}, {**SYN, "channel_base": 1 << 20,
                                                                     "channel_max": 512}))
    target = (need - importer.alloc_limit(0)) // 2         # alloc_limit(target) == need
    assert importer.alloc_limit(target) == need

    def padded(size: int) -> Path:
        path = tmp_path / f"padded-{size}.pkl"
        pad = 0
        for _ in range(3):                                   # the pickle grows one byte per padding byte
            pw.write(path, {"G_ema": ref_g(G, **WIDE), "training_set_kwargs": {"pad": "x" * pad}})
            pad += size - path.stat().st_size
        assert path.stat().st_size == size
        return path

    short = padded(target - 1)
    assert import_error(short) == _refusal(short, need)
    exact = padded(target)                                   # built for real, then the tiny weights fail
    assert import_error(exact).startswith(f"{exact} G_ema: the weights do not fit the network its settings "
                                          "describe: ")


def test_importing_leaves_the_process_generators_where_they_were(tmp_path, tiny):
    G, D = tiny
    path = pw.write(tmp_path / "net.pkl", {"G_ema": ref_g(G), "G": ref_g(G), "D": ref_d(D)})
    before = torch.get_rng_state()
    importer.import_pickle(path)
    assert torch.equal(torch.get_rng_state(), before)


def test_settings_that_fail_only_when_run_are_refused_before_building(tmp_path, tiny):
    G, D = tiny
    path = pw.write(tmp_path / "clamp.pkl", {"G_ema": ref_g(G), "D": ref_d(D, conv_clamp="256")})
    error = import_error(path)
    assert error.startswith(f"{path}: its stored network settings cannot run (TypeError: "), error
    assert "\n" not in error
    # A Gs-only file runs its G alone.
    assert importer.import_pickle(pw.write(tmp_path / "gs.pkl", {"G_ema": ref_g(G)})).D is None


def test_tensorflow_latents_of_their_own_width_without_labels_and_fmap_base_default(tmp_path):
    # latent_size may differ from dlatent_size when there are no labels; fmap_base left out is TF's 16384
    # (our channel_base 32768), here capped at 16 channels everywhere.
    torch.manual_seed(0)
    syn = {"channel_base": 32768, "channel_max": 16}
    G = pw.randomise(Generator(4, 0, 8, RES, 3, {"num_layers": 2}, syn), 1)
    D = pw.randomise(Discriminator(0, RES, 3, **syn, mbstd_group_size=2), 2)
    G_static = {"resolution": RES, "latent_size": 4, "dlatent_size": 8, "mapping_layers": 2, "fmap_max": 16}
    imp = importer.import_pickle(tf_file(tmp_path, G, D, G_static=G_static,
                                         D_static={"resolution": RES, "fmap_max": 16, "mbstd_group_size": 2}))
    assert imp.spec.G_kwargs["z_dim"] == 4 and imp.spec.G_kwargs["w_dim"] == 8
    assert imp.spec.G_kwargs["synthesis_kwargs"]["channel_base"] == 32768
    assert imp.spec.D_kwargs["channel_base"] == 32768
    assert all(torch.equal(imp.G_ema[k], v) for k, v in G.state_dict().items())
    assert all(torch.equal(imp.D[k], v) for k, v in D.state_dict().items())


def test_tensorflow_conditional_discriminator_with_our_default_label_mapping(tmp_path):
    # 8 layers at 0.01 are our D's defaults: the spec leaves them out, and all 8 layers are still read.
    G, D = nets(c_dim=2, d_mapping={"num_layers": 8, "lr_multiplier": 0.01})
    imp = importer.import_pickle(tf_file(tmp_path, G, D, G_static={**TF_G, "label_size": 2},
                                         D_static={**TF_D, "label_size": 2, "mapping_layers": 8,
                                                   "mapping_lrmul": 0.01}))
    assert "mapping_kwargs" not in imp.spec.D_kwargs
    assert all(torch.equal(imp.D[k], v) for k, v in D.state_dict().items())


def test_settings_our_constructors_refuse_are_one_line_errors(tmp_path, tiny):
    # Widths of 0 channels (channel_base 1) and a zero learning-rate multiplier divide by zero.
    for name, edits in {"base": {"synthesis_kwargs.channel_base": 1},
                        "lr": {"mapping_kwargs.lr_multiplier": 0}}.items():
        path = pw.write(tmp_path / f"{name}.pkl", {"G_ema": ref_g(tiny[0], **edits)})
        assert import_error(path) == (f"{path}: its stored network settings cannot be built "
                                      "(ZeroDivisionError: float division by zero)")


def test_refusals_name_the_network_they_are_in(tmp_path, tiny):
    G, D = tiny
    # The training G's settings, D's weights, and a TF D's variables, each named in the line.
    bad_G = ref_g(G, **{"synthesis_kwargs.kernel_size": 1})
    path = pw.write(tmp_path / "g.pkl", {"G_ema": ref_g(G), "G": bad_G, "D": ref_d(D)})
    assert import_error(path) == (f"{path} G synthesis_kwargs: kernel_size = 1 is not supported (corgigan's "
                                  "networks need 3)")
    ref_D = ref_d(D)
    ref_D.b4.register_buffer("stray", torch.zeros(1))
    path = pw.write(tmp_path / "d.pkl", {"G_ema": ref_g(G), "D": ref_D})
    assert import_error(path) == (f"{path} D: the weights do not fit the network its settings describe: "
                                  "Error(s) in loading state_dict for Discriminator:\n\tUnexpected key(s) in "
                                  'state_dict: "epilogue.stray". ')
    d_net = pw.tf_discriminator(D, TF_D)
    d_net.state["variables"] = [(n, v) for n, v in d_net.state["variables"] if n != "Output/bias"]
    gs = pw.tf_generator(G, "Gs", TF_G)
    path = pw.write(tmp_path / "tf.pkl", (pw.tf_generator(G, "G", TF_G), d_net, gs))
    assert import_error(path) == f"{path} D: the TensorFlow variable 'Output/bias' is missing"
    g_net = pw.tf_generator(G, "G", {**TF_G, "use_noise": False})
    path = pw.write(tmp_path / "tf-g.pkl", (g_net, pw.tf_discriminator(D, TF_D), gs))
    assert import_error(path) == (f"{path} G: use_noise = False is not supported (corgigan's networks need "
                                  "True)")


def test_convert_keeps_the_labels_of_a_conditional_model(tmp_path):
    G, D = nets(c_dim=1)
    path = pw.write(tmp_path / "labels.pkl", {"G_ema": pw.reference_generator(G, **copy.deepcopy(G_REF)),
                                              "D": pw.reference_discriminator(D, **copy.deepcopy(D_REF))})
    state = load_snapshot(importer.convert(path, tmp_path / "labels.pt"))
    assert state["dataset"]["label_dim"] == 1 and state["config"]["name"] == "auto"
    assert _same(state["G_ema"], G.state_dict()) and _same(state["D"], D.state_dict())


def test_pytorch_discriminator_init_arguments_bound_by_position(tmp_path, tiny):
    G, D = tiny
    ref = ref_d(D, {**D_REF, "num_fp16_res": 0, "conv_clamp": None, "cmap_dim": None, "block_kwargs": {},
                    "mapping_kwargs": {}})
    kw = ref._init_kwargs
    order = ["c_dim", "img_resolution", "img_channels", "architecture", "channel_base", "channel_max",
             "num_fp16_res", "conv_clamp", "cmap_dim", "block_kwargs", "mapping_kwargs", "epilogue_kwargs"]
    ref._init_args, ref._init_kwargs = tuple(kw[n] for n in order), {}
    imp = importer.import_pickle(pw.write(tmp_path / "pos.pkl", {"G_ema": ref_g(G), "D": ref}))
    assert imp.spec.D_kwargs == {"channel_base": 64, "channel_max": 16, "num_fp16_res": 0, "conv_clamp": None,
                                 "mbstd_group_size": 2, "mbstd_num_channels": 1, "architecture": "resnet"}
    assert all(torch.equal(imp.D[k], v) for k, v in D.state_dict().items())
    ref._init_args = (*ref._init_args, None)
    path = pw.write(tmp_path / "thirteen.pkl", {"G_ema": ref_g(G), "D": ref})
    assert import_error(path) == f"{path} D: 13 positional init arguments, the reference takes 12"
    ref._init_args, ref._init_kwargs = (0,), dict(kw)
    path = pw.write(tmp_path / "twice.pkl", {"G_ema": ref_g(G), "D": ref})
    assert import_error(path) == f"{path} D: init argument 'c_dim' given twice"


def test_tensorflow_discriminator_resolution_defaults_to_1024(tmp_path, tiny):
    G, D = tiny
    static = {**{k: v for k, v in TF_D.items() if k != "resolution"}, "fmap_base": 1 << 14}   # >= 1 channel
    path = tf_file(tmp_path, G, D, D_static=static)
    assert import_error(path) == (f"{path}: the networks disagree on (resolution, channels, labels): "
                                  "G (8, 3, 0); D (1024, 3, 0); G_ema (8, 3, 0)")


def test_tensorflow_conditional_discriminator_with_one_label_mapping_layer(tmp_path):
    G, D = nets(c_dim=2, d_mapping={"num_layers": 1, "lr_multiplier": 0.1})
    imp = importer.import_pickle(tf_file(tmp_path, G, D, G_static={**TF_G, "label_size": 2},
                                         D_static={**TF_D, "label_size": 2, "mapping_layers": 1}))
    assert imp.spec.D_kwargs["mapping_kwargs"] == {"num_layers": 1, "lr_multiplier": 0.1}
    assert all(torch.equal(imp.D[k], v) for k, v in D.state_dict().items())
