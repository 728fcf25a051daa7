"""Turn the reference's networks (read inertly by pickles.py) into our Generator and Discriminator.

Architecture. PyTorch pickles: from each network's stored init kwargs (the reference's Generator and
Discriminator signatures). TensorFlow pickles: from the static kwargs, with the TensorFlow code's own
defaults for what they leave out; the variable shapes then have to fit (any mismatch is an error).
Settings our networks do not implement (another architecture, activation or resampling filter, a
label embedding of another width...) are refused by name rather than silently approximated.

Weights. Our state-dict names map one to one onto the reference PyTorch names:
``synthesis.b{res}.X`` = ``synthesis.blocks.{log2(res)-2}.X``, ``mapping.fc{i}`` = ``mapping.layers.{i}``,
D ``b{res}.X`` = ``blocks.{log2(img_res)-log2(res)}.X`` and D ``b4.X`` = ``epilogue.X``; the reference's
``resample_filter`` buffers are checked against ours and dropped. TensorFlow variables are first put
under the reference PyTorch names with the transforms the TensorFlow layouts need: dense weights
[in, out] are transposed, conv weights [k, k, in, out] become [out, in, k, k], the generator's
up-sampling conv weights are also flipped spatially (TensorFlow convolves the up-sampled image, we
run a transposed convolution), style biases are stored minus 1, and the constant and noise inputs drop
their leading axes. Buffers (w_avg, the constant noise images) come along, so the same z, truncation
and noise_mode="const" give the same images.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import logging
import math
import random
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corgigan.stylegan2 import configs
from corgigan.stylegan2.configs import NetworkSpec
from corgigan.stylegan2.networks import channels_per_resolution
from corgigan.stylegan2.ops.upfirdn2d import setup_filter
from corgigan.stylegan2.pickles import (
    PersistentObject,
    PickleError,
    ReferencePickle,
    TFNetwork,
    alloc_limit,
    is_pickle,
    load_reference_pickle,
)
from corgigan.stylegan2.snapshot import (
    SnapshotError,
    capture_rng,
    differences,
    exception_line,
    make_state,
    restore_rng,
    save_snapshot,
)

log = logging.getLogger(__name__)

__all__ = ["Imported", "PickleError", "check_buildable", "check_transfer", "convert", "import_pickle",
           "is_imported", "is_pickle", "snapshot_state"]

RESAMPLE_FILTER = [1, 3, 3, 1]
_SNAPSHOT_KIMG = re.compile(r"network-snapshot-(\d+)\.pkl$")
# Presets tried, in order, for a converted snapshot's config when none is asked for.
_PRESET_ORDER = ("paper256", "paper512", "paper1024", "stylegan2", "cifar", "auto", "demo")


@dataclass
class Imported:
    """The networks of one reference pickle as our state dicts (None where the file has no such net)."""

    path: Path
    kind: str                      # "pytorch" | "tensorflow"
    spec: NetworkSpec              # the networks its stored settings describe
    G_ema: dict[str, torch.Tensor]
    G: dict[str, torch.Tensor] | None
    D: dict[str, torch.Tensor] | None
    kimg: float | None             # from a network-snapshot-NNNNNN.pkl name; None when unknown


# ----------------------------------------------------------------------------------------------------
# Keyword checking


def _plain(value: Any) -> Any:
    """Stored keywords as plain data: numpy numbers (which a pickle may hold) become python numbers."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


class _Kwargs:
    """Reads the keywords of one stored network, refusing the ones our networks cannot honour."""

    def __init__(self, values: Any, where: str) -> None:
        if not isinstance(values, dict):
            raise PickleError(f"{where}: keywords are a {type(values).__name__}, not a dict")
        self.values = {k: _plain(v) for k, v in values.items()}
        self.where, self.used = where, set()

    def get(self, name: str, default: Any) -> Any:
        self.used.add(name)
        return self.values.get(name, default)

    def number(self, name: str, default: Any, kind: type = int, size: str | None = None) -> Any:
        """A number (an int unless kind is float; bools are refused either way); with `size`, an integer
        within configs.SIZE_LIMITS[size], checked before anything is built from it."""
        value = self.get(name, default)
        types = (int, float) if kind is float else (int,)
        if isinstance(value, bool) or not isinstance(value, types):
            what = "a number" if kind is float else "an integer"
            raise PickleError(f"{self.where}: {name} = {value!r} is not {what}")
        if size is not None:
            _check_size(size, value, name, self.where)
        return value

    def fixed(self, name: str, default: Any, *allowed: Any) -> Any:
        """Accept `name` only at one of `allowed` (absent counts as `default`)."""
        value = self.get(name, default)
        norm = list(value) if isinstance(value, tuple) else value
        if norm not in [list(a) if isinstance(a, tuple) else a for a in allowed]:
            raise PickleError(f"{self.where}: {name} = {value!r} is not supported (corgigan's networks need "
                              f"{' or '.join(repr(a) for a in allowed)})")
        return value

    def ignore(self, *names: str) -> None:
        """Settings that change training or speed only, never the image for given weights."""
        self.used.update(names)

    def done(self) -> None:
        unknown = sorted(set(self.values) - self.used)
        if unknown:
            raise PickleError(f"{self.where}: unknown keyword {unknown[0]!r} (not a StyleGAN2-ADA network, "
                              "or a variant corgigan does not read)")


def _check_size(kind: str, value: Any, name: str, where: str) -> int:
    """configs.check_size as a PickleError naming the file: the one range check of every stored size."""
    try:
        return configs.check_size(kind, value, name)
    except ValueError as e:
        raise PickleError(f"{where}: {e} (not a network corgigan can build)") from None


def _bind(obj: PersistentObject, names: list[str], where: str) -> dict[str, Any]:
    """The init arguments of a persistent object as keywords (positional ones bound in signature order)."""
    args, kwargs = obj.init_args, obj.init_kwargs
    if len(args) > len(names):
        raise PickleError(f"{where}: {len(args)} positional init arguments, the reference takes {len(names)}")
    bound = dict(zip(names, args))
    clash = sorted(set(bound) & set(kwargs))
    if clash:
        raise PickleError(f"{where}: init argument {clash[0]!r} given twice")
    return {**bound, **kwargs}


def _expect_class(obj: Any, class_name: str, where: str) -> PersistentObject:
    if not isinstance(obj, PersistentObject) or obj.class_name != class_name:
        found = obj.class_name if isinstance(obj, PersistentObject) else type(obj).__name__
        raise PickleError(f"{where}: a {found}, not the reference's {class_name}")
    return obj


def _mapping_kwargs(num_layers: int, lr_multiplier: float, w_avg_beta: float | None) -> dict[str, Any]:
    # Only non-defaults beside num_layers, so configs' presets compare equal to what a pickle holds.
    out: dict[str, Any] = {"num_layers": num_layers}
    if lr_multiplier != 0.01:
        out["lr_multiplier"] = float(lr_multiplier)
    if w_avg_beta != 0.995:
        out["w_avg_beta"] = None if w_avg_beta is None else float(w_avg_beta)
    return out


def _disc_kwargs(channel_base: int, channel_max: int, num_fp16_res: int, conv_clamp: Any,
                 mbstd_group_size: Any, mbstd_num_channels: int, architecture: str, c_dim: int,
                 map_layers: int, map_lr: float, where: str) -> dict[str, Any]:
    """Our Discriminator keywords (mapping_kwargs only where they differ from our defaults)."""
    if mbstd_group_size is None:
        # "the whole minibatch": our layer needs a number; D's group only matters in training, where the
        # run's config sets its own.
        log.info("%s: mbstd_group_size None (whole minibatch) is read as 4", where)
        mbstd_group_size = 4
    _check_size("mbstd_group_size", mbstd_group_size, "mbstd_group_size", where)
    out: dict[str, Any] = {"channel_base": channel_base, "channel_max": channel_max,
                           "num_fp16_res": num_fp16_res, "conv_clamp": conv_clamp,
                           "mbstd_group_size": mbstd_group_size,
                           "mbstd_num_channels": mbstd_num_channels, "architecture": architecture}
    if c_dim > 0 and (map_layers != 8 or map_lr != 0.01):
        if map_layers < 1:
            raise PickleError(f"{where}: a conditional discriminator without label mapping layers is not "
                              "supported")
        out["mapping_kwargs"] = {"num_layers": map_layers, "lr_multiplier": float(map_lr)}
    return out


def _check_cmap(cmap_dim: Any, channels4: int, c_dim: int, where: str) -> None:
    if c_dim > 0 and cmap_dim is not None and cmap_dim != channels4:
        raise PickleError(f"{where}: a label embedding of {cmap_dim} features is not supported (corgigan's "
                          f"discriminator uses the 4x4 width, {channels4})")


# ----------------------------------------------------------------------------------------------------
# PyTorch pickles: kwargs


def _pt_generator_spec(obj: PersistentObject, where: str) -> tuple[int, int, int, dict]:
    """(resolution, img_channels, c_dim, our G_kwargs) from a reference Generator's init arguments."""
    _expect_class(obj, "Generator", where)
    k = _Kwargs(_bind(obj, ["z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs",
                            "synthesis_kwargs"], where), where)
    z_dim, c_dim = k.number("z_dim", None, size="z_dim"), k.number("c_dim", None, size="c_dim")
    w_dim = k.number("w_dim", None, size="w_dim")
    resolution = k.number("img_resolution", None, size="resolution")
    img_channels = k.number("img_channels", None, size="img_channels")
    m = _Kwargs(k.get("mapping_kwargs", {}), f"{where} mapping_kwargs")
    num_layers = m.number("num_layers", 8, size="mapping_layers")
    m.fixed("embed_features", None, None, w_dim)
    m.fixed("layer_features", None, None, w_dim)
    m.fixed("activation", "lrelu", "lrelu")
    lr = m.number("lr_multiplier", 0.01, float)
    beta = m.get("w_avg_beta", 0.995)
    if beta is not None:   # None: w_avg is never tracked
        beta = m.number("w_avg_beta", beta, float)
    m.done()
    s = _Kwargs(k.get("synthesis_kwargs", {}), f"{where} synthesis_kwargs")
    syn = {"channel_base": s.number("channel_base", 32768, size="channel_base"),
           "channel_max": s.number("channel_max", 512, size="channel_max"),
           "num_fp16_res": s.number("num_fp16_res", 0, size="num_fp16_res"),
           "conv_clamp": s.get("conv_clamp", None)}
    s.fixed("architecture", "skip", "skip")
    s.fixed("resample_filter", RESAMPLE_FILTER, RESAMPLE_FILTER)
    s.fixed("use_noise", True, True)
    s.fixed("activation", "lrelu", "lrelu")
    s.fixed("kernel_size", 3, 3)
    s.ignore("fp16_channels_last", "channels_last")  # memory layout only
    s.done()
    k.done()
    G_kwargs = {"z_dim": z_dim, "w_dim": w_dim, "mapping_kwargs": _mapping_kwargs(num_layers, lr, beta),
                "synthesis_kwargs": syn}
    return resolution, img_channels, c_dim, G_kwargs


def _pt_discriminator_spec(obj: PersistentObject, where: str) -> tuple[int, int, int, dict]:
    """(resolution, img_channels, c_dim, our D_kwargs) from a reference Discriminator's init arguments."""
    _expect_class(obj, "Discriminator", where)
    k = _Kwargs(_bind(obj, ["c_dim", "img_resolution", "img_channels", "architecture", "channel_base",
                            "channel_max", "num_fp16_res", "conv_clamp", "cmap_dim", "block_kwargs",
                            "mapping_kwargs", "epilogue_kwargs"], where), where)
    c_dim = k.number("c_dim", None, size="c_dim")
    resolution = k.number("img_resolution", None, size="resolution")
    img_channels = k.number("img_channels", None, size="img_channels")
    architecture = k.fixed("architecture", "resnet", "resnet", "orig")
    base = k.number("channel_base", 32768, size="channel_base")
    cmax = k.number("channel_max", 512, size="channel_max")
    fp16, clamp = k.number("num_fp16_res", 0, size="num_fp16_res"), k.get("conv_clamp", None)
    _check_cmap(k.get("cmap_dim", None), min(base // 4, cmax), c_dim, where)
    b = _Kwargs(k.get("block_kwargs", {}), f"{where} block_kwargs")
    b.fixed("activation", "lrelu", "lrelu")
    b.fixed("resample_filter", RESAMPLE_FILTER, RESAMPLE_FILTER)
    b.ignore("fp16_channels_last", "freeze_layers")  # memory layout; Freeze-D is a training setting
    b.done()
    m = _Kwargs(k.get("mapping_kwargs", {}), f"{where} mapping_kwargs")
    map_layers = m.number("num_layers", 8, size="label_mapping_layers")
    map_lr = m.number("lr_multiplier", 0.01, float)
    m.fixed("embed_features", None, None, min(base // 4, cmax))
    m.fixed("layer_features", None, None, min(base // 4, cmax))
    m.fixed("activation", "lrelu", "lrelu")
    m.done()
    e = _Kwargs(k.get("epilogue_kwargs", {}), f"{where} epilogue_kwargs")
    group = e.get("mbstd_group_size", 4)
    mbstd_channels = e.number("mbstd_num_channels", 1, size="mbstd_num_channels")
    e.fixed("activation", "lrelu", "lrelu")
    e.done()
    k.done()
    D_kwargs = _disc_kwargs(base, cmax, fp16, clamp, group, mbstd_channels, architecture, c_dim, map_layers,
                            map_lr, where)
    return resolution, img_channels, c_dim, D_kwargs


# ----------------------------------------------------------------------------------------------------
# Reference PyTorch names -> ours


def _log2(res: str, where: str) -> int:
    r = int(res)
    if r < 4 or r & (r - 1):
        raise PickleError(f"{where}: block b{res} is not at a power-of-two resolution")
    return int(math.log2(r))


def _ours_gen(name: str, where: str) -> str:
    if m := re.fullmatch(r"mapping\.fc(\d+)\.(.+)", name):
        return f"mapping.layers.{m[1]}.{m[2]}"
    if m := re.fullmatch(r"synthesis\.b(\d+)\.(.+)", name):
        return f"synthesis.blocks.{_log2(m[1], where) - 2}.{m[2]}"
    return name  # mapping.embed.*, mapping.w_avg


def _ours_disc(name: str, img_resolution: int, where: str) -> str:
    if m := re.fullmatch(r"b4\.(.+)", name):
        return f"epilogue.{m[1]}"
    if m := re.fullmatch(r"b(\d+)\.(.+)", name):
        return f"blocks.{int(math.log2(img_resolution)) - _log2(m[1], where)}.{m[2]}"
    if m := re.fullmatch(r"mapping\.fc(\d+)\.(.+)", name):
        return f"mapping.layers.{m[1]}.{m[2]}"
    return name  # mapping.embed.*


def _from_reference(tensors: dict[str, torch.Tensor], ours_to_ref: dict[str, str],
                    where: str) -> dict[str, torch.Tensor]:
    """Our state dict from reference-named tensors (float32, resample filters checked and dropped).

    `ours_to_ref` maps each of our names to the reference name it comes from (one to one).
    """
    if len(ours_to_ref) != len(tensors):
        raise PickleError(f"{where}: two tensors map to the same name of ours")
    expected_filter = setup_filter(RESAMPLE_FILTER)
    out: dict[str, torch.Tensor] = {}
    for ours, name in ours_to_ref.items():
        value = tensors[name]
        if name.rsplit(".", 1)[-1] == "resample_filter":
            if value.shape != expected_filter.shape or not torch.allclose(value.float(), expected_filter):
                raise PickleError(f"{where}: {name} is not the [1, 3, 3, 1] filter corgigan's networks use")
            continue
        out[ours] = value.detach().float().contiguous() if value.is_floating_point() else value
    return out


# ----------------------------------------------------------------------------------------------------
# TensorFlow pickles: kwargs and variables


def _tf_channels(k: _Kwargs, where: str) -> tuple[int, int]:
    """(channel_base, channel_max) from TF's fmap_base and fmap_max (TF halves the base: ours is twice)."""
    base = 2 * k.number("fmap_base", 16384)
    _check_size("channel_base", base, "2 * fmap_base", where)
    return base, k.number("fmap_max", 512, size="channel_max")


def _tf_check_capacity(k: _Kwargs, channels: dict[int, int]) -> None:
    k.fixed("fmap_decay", 1, 1, 1.0)
    fmap_min = k.number("fmap_min", 1)
    if fmap_min > min(channels.values()):
        raise PickleError(f"{k.where}: fmap_min {fmap_min} raises some layers' widths (not supported)")


def _tf_generator_spec(net: TFNetwork, where: str) -> tuple[int, int, int, dict]:
    """(resolution, img_channels, c_dim, our G_kwargs) from Gs's static kwargs (TF defaults elsewhere)."""
    k = _Kwargs(net.static_kwargs, where)
    z_dim, c_dim = k.number("latent_size", 512, size="z_dim"), k.number("label_size", 0, size="c_dim")
    w_dim = k.number("dlatent_size", 512, size="w_dim")
    resolution = k.number("resolution", 1024, size="resolution")
    img_channels = k.number("num_channels", 3, size="img_channels")
    num_layers = k.number("mapping_layers", 8, size="mapping_layers")
    k.fixed("mapping_fmaps", None, None, w_dim)
    k.fixed("label_fmaps", None, None, z_dim)   # TF's label embedding defaults to the latent size
    if c_dim and z_dim != w_dim:
        raise PickleError(f"{where}: a label embedding of latent_size {z_dim} != dlatent_size {w_dim} is not "
                          "supported")
    lr = k.number("mapping_lrmul", 0.01, float)
    k.fixed("mapping_nonlinearity", "lrelu", "lrelu")
    k.fixed("normalize_latents", True, True)
    # dlatent_avg_beta, or the PyTorch port's w_avg_beta where a file has only that name.
    beta_key = "dlatent_avg_beta" if "dlatent_avg_beta" in k.values else "w_avg_beta"
    k.ignore("w_avg_beta")
    beta = k.get(beta_key, 0.995)
    beta = 1.0 if beta is None else k.number(beta_key, beta, float)   # None: TF never moves dlatent_avg
    base, cmax = _tf_channels(k, where)
    res_list = [2**i for i in range(2, int(math.log2(resolution)) + 1)]
    _tf_check_capacity(k, channels_per_resolution(base, cmax, res_list))
    k.fixed("fmap_const", None, None, min(base // 4, cmax))
    syn = {"channel_base": base, "channel_max": cmax,
           "num_fp16_res": k.number("num_fp16_res", 0, size="num_fp16_res"),
           "conv_clamp": k.get("conv_clamp", None)}
    k.fixed("architecture", "skip", "skip")
    k.fixed("nonlinearity", "lrelu", "lrelu")
    k.fixed("resample_kernel", RESAMPLE_FILTER, RESAMPLE_FILTER)
    k.fixed("use_noise", True, True)
    k.fixed("mapping_func", "G_mapping", "G_mapping")
    k.fixed("synthesis_func", "G_synthesis_stylegan2", "G_synthesis_stylegan2", "G_synthesis")
    k.ignore("truncation_psi", "truncation_cutoff", "truncation_psi_val", "truncation_cutoff_val",
             "style_mixing_prob", "randomize_noise", "fused_modconv", "dtype", "is_training", "is_validation",
             "return_dlatents", "structure", "is_template_graph", "force_clean_graph")
    k.done()
    G_kwargs = {"z_dim": z_dim, "w_dim": w_dim, "mapping_kwargs": _mapping_kwargs(num_layers, lr, beta),
                "synthesis_kwargs": syn}
    return resolution, img_channels, c_dim, G_kwargs


def _tf_discriminator_spec(net: TFNetwork, where: str) -> tuple[int, int, int, dict]:
    """(resolution, img_channels, c_dim, our D_kwargs) from D's static kwargs."""
    k = _Kwargs(net.static_kwargs, where)
    c_dim = k.number("label_size", 0, size="c_dim")
    resolution = k.number("resolution", 1024, size="resolution")
    img_channels = k.number("num_channels", 3, size="img_channels")
    base, cmax = _tf_channels(k, where)
    res_list = [2**i for i in range(2, int(math.log2(resolution)) + 1)]
    _tf_check_capacity(k, channels_per_resolution(base, cmax, res_list))
    architecture = k.fixed("architecture", "resnet", "resnet", "orig")
    _check_cmap(k.get("mapping_fmaps", None), min(base // 4, cmax), c_dim, where)
    map_layers = k.number("mapping_layers", 0, size="label_mapping_layers")
    map_lr = k.number("mapping_lrmul", 0.1, float)
    k.fixed("nonlinearity", "lrelu", "lrelu")
    k.fixed("resample_kernel", RESAMPLE_FILTER, RESAMPLE_FILTER)
    # The original StyleGAN2's D defaults to groups of 4; StyleGAN2-ADA always stores its value.
    group = k.get("mbstd_group_size", 4)
    mbstd_channels = k.number("mbstd_num_features", 1, size="mbstd_num_channels")
    k.fixed("use_pagan", False, False)
    k.fixed("use_spectral_norm", False, False)
    k.fixed("score_max", 1, 1)
    k.ignore("freeze_layers", "augment_strength", "adaptive_dropout", "pagan_num", "pagan_fade", "score_size",
             "dtype", "structure", "is_training", "is_template_graph")
    fp16, clamp = k.number("num_fp16_res", 0, size="num_fp16_res"), k.get("conv_clamp", None)
    k.done()
    if c_dim and map_layers < 1:
        raise PickleError(f"{where}: a conditional discriminator without label mapping layers is not "
                          "supported")
    D_kwargs = _disc_kwargs(base, cmax, fp16, clamp, group, mbstd_channels, architecture, c_dim, map_layers,
                            map_lr, where)
    return resolution, img_channels, c_dim, D_kwargs


class _TFVariables:
    """TensorFlow variables by name; remembers which were used so leftovers can be reported."""

    def __init__(self, net: TFNetwork, where: str) -> None:
        self.values, self.where, self.used = net.collect(), where, set()

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.values:
            raise PickleError(f"{self.where}: the TensorFlow variable {name!r} is missing")
        self.used.add(name)
        return self.values[name]

    def report_unused(self) -> None:
        unused = sorted(set(self.values) - self.used)
        if unused:
            log.warning("%s: %d TensorFlow variables have no place in our network and are ignored: %s",
                        self.where, len(unused), ", ".join(unused[:8]))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32, order="C"))   # a copy; 0-d stays 0-d


def _dense(w: np.ndarray) -> torch.Tensor:
    return _t(w.T)                                   # [in, out] -> [out, in]


def _conv(w: np.ndarray, flip: bool = False) -> torch.Tensor:
    if flip:
        w = w[::-1, ::-1]                            # TF convolves the up-sampled image (see module doc)
    return _t(w.transpose(3, 2, 0, 1))               # [k, k, in, out] -> [out, in, k, k]


def _tf_generator_tensors(net: TFNetwork, resolution: int, c_dim: int, num_layers: int,
                          where: str) -> dict[str, torch.Tensor]:
    """Gs's variables under the reference PyTorch names."""
    v = _TFVariables(net, where)
    out: dict[str, torch.Tensor] = {"mapping.w_avg": _t(v("dlatent_avg"))}
    for i in range(num_layers):
        out[f"mapping.fc{i}.weight"] = _dense(v(f"mapping/Dense{i}/weight"))
        out[f"mapping.fc{i}.bias"] = _t(v(f"mapping/Dense{i}/bias"))
    if c_dim:
        if "mapping/LabelConcat/weight" in v.values:
            raise PickleError(f"{where}: the original StyleGAN2's label concatenation is not supported (only "
                              "StyleGAN2-ADA's label embedding)")
        out["mapping.embed.weight"] = _dense(v("mapping/LabelEmbed/weight"))
        out["mapping.embed.bias"] = _t(v("mapping/LabelEmbed/bias"))

    def modulated(ours: str, tf: str, noise_index: int, flip: bool = False) -> None:
        out[f"{ours}.weight"] = _conv(v(f"{tf}/weight"), flip)
        out[f"{ours}.bias"] = _t(v(f"{tf}/bias"))
        out[f"{ours}.affine.weight"] = _dense(v(f"{tf}/mod_weight"))
        out[f"{ours}.affine.bias"] = _t(v(f"{tf}/mod_bias") + 1)   # TF adds the 1 at run time
        if noise_index >= 0:
            out[f"{ours}.noise_strength"] = _t(v(f"{tf}/noise_strength"))
            out[f"{ours}.noise_const"] = _t(v(f"synthesis/noise{noise_index}")[0, 0])   # [1, 1, r, r]

    for log2 in range(2, int(math.log2(resolution)) + 1):
        r = 2**log2
        b, s = f"synthesis.b{r}", f"synthesis/{r}x{r}"
        if r == 4:
            out[f"{b}.const"] = _t(v(f"{s}/Const/const")[0])          # [1, C, 4, 4]
            modulated(f"{b}.conv1", f"{s}/Conv", 0)
        else:
            # TF numbers its noise inputs by layer: conv0 of resolution 2^k is layer 2k-5, conv1 2k-4.
            modulated(f"{b}.conv0", f"{s}/Conv0_up", 2 * log2 - 5, flip=True)
            modulated(f"{b}.conv1", f"{s}/Conv1", 2 * log2 - 4)
        modulated(f"{b}.torgb", f"{s}/ToRGB", -1)
    v.report_unused()
    return out


def _tf_discriminator_tensors(net: TFNetwork, resolution: int, c_dim: int, architecture: str, map_layers: int,
                              where: str) -> dict[str, torch.Tensor]:
    """D's variables under the reference PyTorch names (D's down-sampling convs are not flipped)."""
    v = _TFVariables(net, where)
    out: dict[str, torch.Tensor] = {}
    for log2 in range(int(math.log2(resolution)), 2, -1):
        r = 2**log2
        b, s = f"b{r}", f"{r}x{r}"
        if r == resolution:
            out[f"{b}.fromrgb.weight"], out[f"{b}.fromrgb.bias"] = _conv(v(f"{s}/FromRGB/weight")), \
                _t(v(f"{s}/FromRGB/bias"))
        out[f"{b}.conv0.weight"], out[f"{b}.conv0.bias"] = _conv(v(f"{s}/Conv0/weight")), \
            _t(v(f"{s}/Conv0/bias"))
        out[f"{b}.conv1.weight"], out[f"{b}.conv1.bias"] = _conv(v(f"{s}/Conv1_down/weight")), \
            _t(v(f"{s}/Conv1_down/bias"))
        if architecture == "resnet":
            out[f"{b}.skip.weight"] = _conv(v(f"{s}/Skip/weight"))
    out["b4.conv.weight"], out["b4.conv.bias"] = _conv(v("4x4/Conv/weight")), _t(v("4x4/Conv/bias"))
    out["b4.fc.weight"], out["b4.fc.bias"] = _dense(v("4x4/Dense0/weight")), _t(v("4x4/Dense0/bias"))
    out["b4.out.weight"], out["b4.out.bias"] = _dense(v("Output/weight")), _t(v("Output/bias"))
    if c_dim:
        out["mapping.embed.weight"], out["mapping.embed.bias"] = _dense(v("LabelEmbed/weight")), \
            _t(v("LabelEmbed/bias"))
        for i in range(map_layers):
            out[f"mapping.fc{i}.weight"], out[f"mapping.fc{i}.bias"] = _dense(v(f"Mapping{i}/weight")), \
                _t(v(f"Mapping{i}/bias"))
    v.report_unused()
    return out


# ----------------------------------------------------------------------------------------------------
# Building and checking our networks


# What our constructors and forward passes raise for settings they cannot take (RuntimeError covers torch's
# own shape errors, ArithmeticError a zero where a width or multiplier should be).
_UNBUILDABLE = (TypeError, ValueError, AssertionError, RuntimeError, ArithmeticError)


def check_buildable(spec: NetworkSpec, path: Path, nets: Collection[str],
                    error: type[SnapshotError] = SnapshotError) -> None:
    """Raise `error` naming `path`, in one line, unless the networks `spec` describes can be built, run and
    fit the file: `nets` names the networks the file holds (G_ema, G, D).

    G and D (whatever a reader will use) are laid out on the meta device, where nothing is allocated or
    computed, and each runs one forward pass there: a setting our networks refuse (an unknown keyword,
    another architecture) or can only fail on later (a clamp that is no number) stops every reader here,
    not as a traceback deep inside one of them. Each stored size may be in range while together they
    describe networks of billions of numbers, so what is laid out is counted and refused past what a file
    of this size may make us allocate (pickles.alloc_limit), before anything is built for real.
    load.load_networks applies it to snapshots, import_pickle to pickles.
    """
    try:
        with torch.device("meta"):
            G, D = configs.build_networks(spec, keep_rng=True)
    except _UNBUILDABLE as e:
        raise error(f"{path}: its stored network settings cannot be built ({exception_line(e)})") from None
    per_G = sum(t.numel() * t.element_size() for t in (*G.parameters(), *G.buffers()))
    per_D = 0 if D is None else sum(t.numel() * t.element_size() for t in (*D.parameters(), *D.buffers()))
    need = per_G * sum(key != "D" for key in nets) + (per_D if "D" in nets else 0)
    size = path.stat().st_size
    if need > alloc_limit(size):
        raise error(f"{path}: refused: its stored settings describe networks of {need:,} bytes, more than a "
                    f"{size:,}-byte file can hold weights for")
    try:
        with torch.device("meta"), torch.no_grad():
            c = torch.empty(1, spec.c_dim)
            img = G(torch.empty(1, G.z_dim), c)         # [1, C, H, W], shapes only
            if D is not None:
                D(img, c)
    except _UNBUILDABLE as e:
        raise error(f"{path}: its stored network settings cannot run ({exception_line(e)})") from None


def _fit(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Load `state` strictly into `module` (names and shapes must match); return the module's state dict."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise PickleError(f"{what}: the weights do not fit the network its settings describe: {e}") from e
    return {name: t.detach().clone() for name, t in module.state_dict().items()}


def _same_spec(specs: list[tuple[str, tuple]], where: str) -> tuple[int, int, int]:
    """The (resolution, channels, c_dim) the networks agree on."""
    shapes = {s[1][:3] for s in specs}
    if len(shapes) > 1:
        raise PickleError(f"{where}: the networks disagree on (resolution, channels, labels): "
                          + "; ".join(f"{n} {s[:3]}" for n, s in specs))
    return specs[0][1][:3]


def _kimg_from_name(path: Path) -> float | None:
    m = _SNAPSHOT_KIMG.search(path.name)
    return float(m[1]) if m else None


def import_pickle(path: str | Path, with_training_nets: bool = True) -> Imported:
    """Read a reference pickle and convert its networks into our state dicts (G_ema always; G and D when
    `with_training_nets`). Raises PickleError (a SnapshotError) saying what does not fit."""
    path = Path(path)
    ref: ReferencePickle = load_reference_pickle(path)
    if ref.kind == "pytorch":
        gen_spec, disc_spec = _pt_generator_spec, _pt_discriminator_spec
    else:
        gen_spec, disc_spec = _tf_generator_spec, _tf_discriminator_spec
    names = {"G_ema": "Gs" if ref.kind == "tensorflow" else "G_ema", "G": "G", "D": "D"}
    nets_in = {}
    if with_training_nets:
        nets_in.update({k: v for k, v in (("G", ref.G), ("D", ref.D)) if v is not None})
    nets_in["G_ema"] = ref.G_ema
    specs = []
    for key, obj in nets_in.items():
        where = f"{path} {names[key]}"
        specs.append((key, (disc_spec if key == "D" else gen_spec)(obj, where)))
    resolution, img_channels, c_dim = _same_spec(specs, str(path))
    kwargs = {key: found[3] for key, found in specs}      # each network's keywords
    if "G" in kwargs and kwargs["G"] != kwargs["G_ema"]:
        raise PickleError(f"{path}: G and G_ema have different settings")
    nets = NetworkSpec(resolution, img_channels, c_dim, kwargs["G_ema"], kwargs.get("D"))
    check_buildable(nets, path, nets_in, PickleError)
    # Built only to check that the weights fit and to give them our names: a throwaway draw, off the
    # process's generator.
    G_net, D_net = configs.build_networks(nets, with_D="D" in nets_in, keep_rng=True)
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key, obj in nets_in.items():
        where = f"{path} {names[key]}"
        if key == "D":
            if ref.kind == "pytorch":
                ref_tensors = obj.tensors()
            else:
                d = nets.D_kwargs or {}
                map_layers = d.get("mapping_kwargs", {}).get("num_layers", 8)
                ref_tensors = _tf_discriminator_tensors(obj, resolution, c_dim, d["architecture"], map_layers,
                                                        where)
            assert D_net is not None
            ours = {_ours_disc(n, resolution, where): n for n in ref_tensors}
            states[key] = _fit(D_net, _from_reference(ref_tensors, ours, where), where)
        else:
            if ref.kind == "pytorch":
                ref_tensors = obj.tensors()
            else:
                num_layers = nets.G_kwargs["mapping_kwargs"]["num_layers"]
                ref_tensors = _tf_generator_tensors(obj, resolution, c_dim, num_layers, where)
            ours = {_ours_gen(n, where): n for n in ref_tensors}
            states[key] = _fit(G_net, _from_reference(ref_tensors, ours, where), where)
    return Imported(path=path, kind=ref.kind, spec=nets, G_ema=states["G_ema"], G=states.get("G"),
                    D=states.get("D"), kimg=_kimg_from_name(path))


# ----------------------------------------------------------------------------------------------------
# Transfer learning


def weight_layout(spec: NetworkSpec) -> dict[str, Any]:
    """What a config must share with a model to take its weights: the settings that fix the weights'
    shapes, and the mapping layers' learning-rate multipliers, which scale what the stored values mean."""
    syn, mapping = spec.G_kwargs.get("synthesis_kwargs", {}), spec.G_kwargs.get("mapping_kwargs", {})
    res_list = [2**i for i in range(2, int(math.log2(spec.resolution)) + 1)]
    layout: dict[str, Any] = {
        "resolution": spec.resolution, "img_channels": spec.img_channels, "c_dim": spec.c_dim,
        "z_dim": spec.G_kwargs.get("z_dim"), "w_dim": spec.G_kwargs.get("w_dim"),
        "mapping_layers": mapping.get("num_layers", 8),
        "mapping_lr_multiplier": mapping.get("lr_multiplier", 0.01),
        "G_channels": _by_res(channels_per_resolution(syn.get("channel_base", 32768),
                                                      syn.get("channel_max", 512), res_list)),
    }
    if spec.D_kwargs is not None:
        d = spec.D_kwargs
        layout["D_channels"] = _by_res(channels_per_resolution(d.get("channel_base", 32768),
                                                               d.get("channel_max", 512), res_list))
        layout["D_architecture"] = d.get("architecture", "resnet")
        layout["D_mbstd_num_channels"] = d.get("mbstd_num_channels", 1)
        if spec.c_dim:
            layout["D_mapping_layers"] = d.get("mapping_kwargs", {}).get("num_layers", 8)
            layout["D_mapping_lr_multiplier"] = d.get("mapping_kwargs", {}).get("lr_multiplier", 0.01)
    return layout


def _by_res(channels: dict[int, int]) -> str:
    return " ".join(f"{r}:{c}" for r, c in sorted(channels.items()))


def check_transfer(spec: NetworkSpec, config: dict[str, Any], data: dict[str, Any] | None,
                   source: str) -> None:
    """Raise SnapshotError unless networks `spec` can start a run of `config` on the dataset `data`
    ({"resolution", "num_channels", "label_dim"}; None: check against the config only). A generator-only
    `spec` (D_kwargs None: a Gs-only pickle, an export) is checked for its G alone: the run's D starts
    from its own initialisation, as the reference's resume leaves every network the file lacks."""
    resolution = data["resolution"] if data else config["resolution"]
    problems = []
    if spec.resolution != resolution:
        problems.append(f"its networks make {spec.resolution}-px images, the dataset has {resolution}-px "
                        "images")
    if data and spec.img_channels != data["num_channels"]:
        problems.append(f"its images have {spec.img_channels} channels, the dataset's {data['num_channels']}")
    if data and spec.c_dim != data["label_dim"]:
        problems.append(f"it takes {spec.c_dim} label dimensions, the dataset has {data['label_dim']}")
    if problems:
        raise SnapshotError(f"resume_from {source}: cannot fine-tune it on this dataset: "
                            + "; ".join(problems) + " (build the dataset at the model's resolution and "
                            "channels, or start from another model)")
    ours = NetworkSpec(config["resolution"], data["num_channels"] if data else spec.img_channels,
                       data["label_dim"] if data else spec.c_dim, config["G_kwargs"],
                       None if spec.D_kwargs is None else config["D_kwargs"])
    diffs = differences(weight_layout(spec), weight_layout(ours), "")
    if diffs:
        raise SnapshotError(
            f"resume_from {source}: its networks do not fit those of train.config {config.get('name')!r} "
            f"(model vs config): " + "; ".join(d.replace("snapshot ", "model ") for d in diffs)
            + ". Choose the config the model was trained with (the reference's stylegan2, paper256, paper512 "
            "and paper1024 presets have 512-d latents and 8 mapping layers)")
    others = (differences(spec.G_kwargs, config["G_kwargs"], "G_kwargs.")
              + (differences(spec.D_kwargs, config["D_kwargs"], "D_kwargs.") if spec.D_kwargs else []))
    if others:
        log.info("fine-tuning %s with config %s's settings where they differ (no weight changes shape): %s",
                 source, config.get("name"), "; ".join(d.replace("snapshot ", "model ") for d in others))


def is_imported(state: dict[str, Any]) -> bool:
    """True for a snapshot that `corgigan convert` wrote from a reference pickle."""
    run = state.get("run")
    return isinstance(run, dict) and bool(run.get("imported_from"))


# ----------------------------------------------------------------------------------------------------
# Conversion into a corgigan snapshot


def _config_for(imp: Imported, config_name: str | None) -> configs.TrainingConfig:
    """The config a converted snapshot carries: the named preset (whose networks must take the weights), or
    the first preset with exactly the pickle's networks, or auto's settings with the pickle's networks."""
    nets = imp.spec
    assert nets.D_kwargs is not None
    if config_name:
        try:
            cfg = configs.make_config(config_name, nets.resolution)
        except ValueError as e:
            raise SnapshotError(f"convert: {e}") from e
        check_transfer(nets, configs.config_to_dict(cfg), None, str(imp.path))
        return cfg
    for name in _PRESET_ORDER:
        cfg = configs.make_config(name, nets.resolution)
        d = configs.config_to_dict(cfg)
        if not differences(d["G_kwargs"], nets.G_kwargs) and not differences(d["D_kwargs"], nets.D_kwargs):
            return cfg
    log.info("no preset has exactly the networks of %s: the snapshot takes auto's training settings",
             imp.path)
    return dataclasses.replace(configs.make_config("auto", nets.resolution),
                               G_kwargs=copy.deepcopy(nets.G_kwargs), D_kwargs=copy.deepcopy(nets.D_kwargs),
                               mbstd_group=nets.D_kwargs["mbstd_group_size"])


@contextlib.contextmanager
def _seeded_generators(seed: int = 0) -> Iterator[None]:
    """Global generators seeded for the block and restored after it (snapshots store their states)."""
    saved = capture_rng()
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        restore_rng(saved)


def snapshot_state(imp: Imported, config_name: str | None = None) -> dict[str, Any]:
    """A complete corgigan snapshot state from an imported pickle (weights_only-loadable plain data).

    The same pickle gives the same bytes: the stored generator states are seeded, not the process's.
    """
    if imp.D is None:
        raise SnapshotError(f"convert {imp.path}: the file holds only a generator (Gs); a corgigan snapshot "
                            "needs the discriminator too. Generate from the .pkl directly, or fine-tune it "
                            "with train.resume_from (its D then starts fresh)")
    cfg = _config_for(imp, config_name)
    cfg_dict = configs.config_to_dict(cfg)
    nets = imp.spec
    ours = configs.network_spec(cfg, nets.img_channels, nets.c_dim)
    with _seeded_generators():
        # Forked: the stored generator states are the seeded ones, not moved by this throwaway build.
        G, D = configs.build_networks(ours, keep_rng=True)
        assert D is not None
        G_state = _fit(G, imp.G if imp.G is not None else imp.G_ema, f"{imp.path} G")
        G_ema_state = _fit(G, imp.G_ema, f"{imp.path} G_ema")
        D_state = _fit(D, imp.D, f"{imp.path} D")
        G_opt = torch.optim.Adam(G.parameters()).state_dict()
        D_opt = torch.optim.Adam(D.parameters()).state_dict()
        rng = capture_rng()
    digest = hashlib.sha256()
    with open(imp.path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    kimg = imp.kimg or 0.0
    return make_state(
        config=cfg_dict,
        # run.imported_from marks the snapshot as converted: resume_from treats it as the pickle itself.
        run={"imported_from": imp.path.name, "pickle_format": imp.kind, "pickle_sha256": digest.hexdigest()},
        dataset={"hash": "", "resolution": nets.resolution, "num_channels": nets.img_channels,
                 "label_dim": nets.c_dim, "num_images": 0},
        progress={"nimg": int(kimg * 1000), "batch_idx": 0, "tick": 0},
        networks={"G": G_state, "D": D_state, "G_ema": G_ema_state}, optimizers={"G": G_opt, "D": D_opt},
        rng=rng)


def convert(path: str | Path, out: str | Path, config_name: str | None = None) -> Path:
    """`corgigan convert`: write a reference pickle as a corgigan snapshot at `out`; return `out`."""
    imp = import_pickle(path)
    state = snapshot_state(imp, config_name)
    out = Path(out)
    save_snapshot(out, state)
    log.info("%s (%s pickle, %d px) -> %s (config %s)", path, imp.kind, imp.spec.resolution, out,
             state["config"]["name"])
    return out
