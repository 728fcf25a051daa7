"""Test-side writer of StyleGAN2 network pickles in the reference's layouts (our own code, no reference code).

* PyTorch: the reference networks' module trees, rebuilt here as small nn.Modules with the reference's
  class, attribute and tensor names (structure only: no forward), each pickled the way
  ``torch_utils.persistence`` does: ``_reconstruct_persistent_obj(meta)`` with meta = type, version,
  module_src, class_name and the object's ``__dict__``. Tensors go through torch's own pickling
  (``_rebuild_parameter``, ``_rebuild_tensor_v2``, ``_load_from_bytes``), as in the real files.
* TensorFlow: ``dnnlib.tflib.network.Network`` stand-ins whose ``__getstate__`` is the state the real
  class pickles (version, name, static_kwargs, components, build_module_src, build_func_name, variables).

The stand-in classes live in fake modules under the formats' names (``torch_utils.persistence``,
``dnnlib.util``, ``dnnlib.tflib.network``) that exist in sys.modules only while a file is written.
Weights are filled from one of our own networks, so a test can compare the import with the original.
"""

from __future__ import annotations

import contextlib
import copy
import math
import pickle
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corgigan.stylegan2.networks import Discriminator, Generator
from corgigan.stylegan2.ops.upfirdn2d import setup_filter

FILTER = setup_filter([1, 3, 3, 1])    # what the reference stores in every resample_filter buffer


# ----------------------------------------------------------------------------------------------------
# Fake modules under the formats' names


def _reconstruct_persistent_obj(meta: Any) -> Any:
    """Stand-in of torch_utils.persistence's function: only its name matters when writing."""
    raise AssertionError("the stand-in is for writing pickles, never for reading them")


class EasyDict(dict):
    """Stand-in of dnnlib.util.EasyDict."""


class Network:
    """Stand-in of dnnlib.tflib.network.Network: pickles as its state dict, like the real class."""

    def __init__(self, name: str, static_kwargs: dict, variables: list[tuple[str, np.ndarray]],
                 components: dict[str, Network] | None = None, build_func_name: str = "",
                 build_module_src: str = "# TensorFlow code would be here\n") -> None:
        self.state = {"version": 4, "name": name, "static_kwargs": dict(static_kwargs),
                      "components": dict(components or {}), "build_module_src": build_module_src,
                      "build_func_name": build_func_name, "variables": list(variables)}

    def __getstate__(self) -> dict:
        return self.state


_FAKES = {
    "torch_utils": {},
    "torch_utils.persistence": {"_reconstruct_persistent_obj": _reconstruct_persistent_obj},
    "dnnlib": {},
    "dnnlib.util": {"EasyDict": EasyDict},
    "dnnlib.tflib": {},
    "dnnlib.tflib.network": {"Network": Network},
}


@contextlib.contextmanager
def fake_modules() -> Iterator[None]:
    """Put the stand-ins under the formats' module names while pickling (pickle looks globals up there)."""
    saved = {name: sys.modules.get(name) for name in _FAKES}
    originals = {}
    try:
        for name, attrs in _FAKES.items():
            module = types.ModuleType(name)
            for attr, obj in attrs.items():
                setattr(module, attr, obj)
                originals[obj] = (obj.__module__, obj.__qualname__)
                obj.__module__, obj.__qualname__ = name, attr
            sys.modules[name] = module
        yield
    finally:
        for obj, (mod, qual) in originals.items():
            obj.__module__, obj.__qualname__ = mod, qual
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def write(path: Path, data: Any, protocol: int = 4) -> Path:
    """Pickle `data` (which may hold the stand-ins) to `path` with plain pickle, as the reference does."""
    with fake_modules():
        path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


# ----------------------------------------------------------------------------------------------------
# The reference's PyTorch module trees (names and shapes as in its training/networks.py)


MODULE_SRC = "# the reference's training/networks.py would be here; readers must never run it\n"


class Persistent(torch.nn.Module):
    """Base of the stand-ins: records init kwargs and pickles as torch_utils.persistence objects do."""

    module_src = MODULE_SRC

    def __init__(self, init_locals: dict[str, Any]) -> None:
        super().__init__()
        self._init_args = ()
        kwargs = {k: v for k, v in init_locals.items() if k not in ("self", "__class__", "init")}
        self._init_kwargs = copy.deepcopy(kwargs)

    def __reduce__(self) -> tuple:
        meta = {"type": "class", "version": 6, "module_src": self.module_src,
                "class_name": type(self).__name__, "state": dict(self.__dict__)}
        return _reconstruct_persistent_obj, (meta,)


def _tensor(module: torch.nn.Module, name: str, value: torch.Tensor, trainable: bool = True) -> None:
    # Freeze-D layers keep their weights as buffers under the same names.
    if trainable:
        setattr(module, name, torch.nn.Parameter(value))
    else:
        module.register_buffer(name, value)


class FullyConnectedLayer(Persistent):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1, bias_init: float = 0) -> None:
        super().__init__(locals())
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn(out_features, in_features))
        self.bias = torch.nn.Parameter(torch.zeros(out_features)) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)   # a numpy float64, as in the reference
        self.bias_gain = lr_multiplier


class Conv2dLayer(Persistent):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1, conv_clamp: float | None = None,
                 trainable: bool = True) -> None:
        super().__init__(locals())
        self.register_buffer("resample_filter", FILTER.clone())
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size**2)
        _tensor(self, "weight", torch.randn(out_channels, in_channels, kernel_size, kernel_size), trainable)
        if bias:
            _tensor(self, "bias", torch.zeros(out_channels), trainable)
        else:
            self.bias = None


class MappingNetwork(Persistent):
    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.995) -> None:
        super().__init__(locals())
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers = num_layers
        embed = w_dim if c_dim else 0
        features = [z_dim + embed] + [w_dim] * num_layers
        if c_dim:
            self.embed = FullyConnectedLayer(c_dim, embed)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], activation="lrelu",
                                                        lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))


class SynthesisLayer(Persistent):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: int = 1,
                 conv_clamp: float | None = None) -> None:
        super().__init__(locals())
        self.register_buffer("resample_filter", FILTER.clone())
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros(out_channels))


class ToRGBLayer(Persistent):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int,
                 conv_clamp: float | None = None) -> None:
        super().__init__(locals())
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = torch.nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / np.sqrt(in_channels)


class SynthesisBlock(Persistent):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, use_fp16: bool = False, conv_clamp: float | None = None) -> None:
        super().__init__(locals())
        self.register_buffer("resample_filter", FILTER.clone())
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)


class SynthesisNetwork(Persistent):
    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 0, **block_kwargs: Any) -> None:
        init = dict(locals())
        init.update(init.pop("block_kwargs"))   # the reference takes them as **block_kwargs
        super().__init__(init)
        log2 = int(math.log2(img_resolution))
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        ch = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        fp16_res = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for r in self.block_resolutions:
            block = SynthesisBlock(ch[r // 2] if r > 4 else 0, ch[r], w_dim, r, img_channels,
                                   is_last=r == img_resolution, use_fp16=r >= fp16_res,
                                   conv_clamp=block_kwargs.get("conv_clamp"))
            self.num_ws += 1 if r == 4 else 2
            setattr(self, f"b{r}", block)
        self.num_ws += 1


class ReferenceGenerator(Persistent):
    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 mapping_kwargs: dict | None = None, synthesis_kwargs: dict | None = None) -> None:
        mapping_kwargs = EasyDict(mapping_kwargs or {})
        synthesis_kwargs = EasyDict(synthesis_kwargs or {})
        super().__init__(locals())
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.synthesis.num_ws, **mapping_kwargs)


class DiscriminatorBlock(Persistent):
    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int,
                 img_channels: int, first_layer_idx: int, architecture: str = "resnet",
                 conv_clamp: float | None = None, freeze_layers: int = 0) -> None:
        super().__init__(locals())
        self.register_buffer("resample_filter", FILTER.clone())
        self.num_layers = 0

        def trainable() -> bool:   # the reference's Freeze-D counter: layers from the top resolution down
            self.num_layers += 1
            return first_layer_idx + self.num_layers - 1 >= freeze_layers

        act = {"activation": "lrelu", "conv_clamp": conv_clamp}
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, **act, trainable=trainable())
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, **act, trainable=trainable())
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, down=2, **act, trainable=trainable())
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, trainable=trainable())


class MinibatchStdLayer(Persistent):
    def __init__(self, group_size: int | None, num_channels: int = 1) -> None:
        super().__init__(locals())
        self.group_size, self.num_channels = group_size, num_channels


class DiscriminatorEpilogue(Persistent):
    def __init__(self, in_channels: int, cmap_dim: int, resolution: int, img_channels: int,
                 architecture: str = "resnet", mbstd_group_size: int | None = 4, mbstd_num_channels: int = 1,
                 conv_clamp: float | None = None) -> None:
        super().__init__(locals())
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu",
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)


class ReferenceDiscriminator(Persistent):
    def __init__(self, c_dim: int, img_resolution: int, img_channels: int, architecture: str = "resnet",
                 channel_base: int = 32768, channel_max: int = 512, num_fp16_res: int = 0,
                 conv_clamp: float | None = None, cmap_dim: int | None = None,
                 block_kwargs: dict | None = None, mapping_kwargs: dict | None = None,
                 epilogue_kwargs: dict | None = None) -> None:
        block_kwargs, mapping_kwargs = EasyDict(block_kwargs or {}), EasyDict(mapping_kwargs or {})
        epilogue_kwargs = EasyDict(epilogue_kwargs or {})
        super().__init__(locals())
        log2 = int(math.log2(img_resolution))
        self.block_resolutions = [2**i for i in range(log2, 2, -1)]
        ch = {r: min(channel_base // r, channel_max) for r in [*self.block_resolutions, 4]}
        cmap = (ch[4] if cmap_dim is None else cmap_dim) if c_dim else 0
        layer_idx = 0
        for r in self.block_resolutions:
            block = DiscriminatorBlock(ch[r] if r < img_resolution else 0, ch[r], ch[r // 2], r, img_channels,
                                       first_layer_idx=layer_idx, architecture=architecture,
                                       conv_clamp=conv_clamp, **block_kwargs)
            setattr(self, f"b{r}", block)
            layer_idx += block.num_layers
        if c_dim:
            self.mapping = MappingNetwork(0, c_dim, cmap, None, w_avg_beta=None, **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(ch[4], cmap, 4, img_channels, architecture=architecture,
                                        conv_clamp=conv_clamp, **epilogue_kwargs)


# The stand-ins carry the reference's class names when pickled.
ReferenceGenerator.__name__ = ReferenceGenerator.__qualname__ = "Generator"
ReferenceDiscriminator.__name__ = ReferenceDiscriminator.__qualname__ = "Discriminator"


# ----------------------------------------------------------------------------------------------------
# Filling a reference tree from one of our networks


def reference_name_in_g(ours: str) -> str:
    """Our Generator state-dict name -> the reference's."""
    parts = ours.split(".")
    if parts[:2] == ["mapping", "layers"]:
        return ".".join(["mapping", f"fc{parts[2]}", *parts[3:]])
    if parts[:2] == ["synthesis", "blocks"]:
        return ".".join(["synthesis", f"b{4 * 2 ** int(parts[2])}", *parts[3:]])
    return ours


def reference_name_in_d(ours: str, img_resolution: int) -> str:
    """Our Discriminator state-dict name -> the reference's."""
    parts = ours.split(".")
    if parts[0] == "epilogue":
        return ".".join(["b4", *parts[1:]])
    if parts[0] == "blocks":
        return ".".join([f"b{img_resolution // 2 ** int(parts[1])}", *parts[2:]])
    if parts[:2] == ["mapping", "layers"]:
        return ".".join(["mapping", f"fc{parts[2]}", *parts[3:]])
    return ours


@torch.no_grad()
def fill(reference: torch.nn.Module, ours: dict[str, torch.Tensor], rename: Any) -> torch.nn.Module:
    """Copy our tensors into the reference tree by name; every tensor on both sides must be used."""
    targets = {**dict(reference.named_parameters()), **dict(reference.named_buffers())}
    used = set()
    for name, value in ours.items():
        ref = rename(name)
        assert ref in targets, f"{name} -> {ref} is not in the reference tree"
        assert targets[ref].shape == value.shape, f"{ref}: {list(targets[ref].shape)} vs {list(value.shape)}"
        targets[ref].copy_(value)
        used.add(ref)
    left = sorted(n for n in set(targets) - used if not n.endswith("resample_filter"))
    assert not left, f"reference tensors with no counterpart of ours: {left}"
    return reference.requires_grad_(False)


def reference_generator(G: Generator, mapping_kwargs: dict, synthesis_kwargs: dict) -> ReferenceGenerator:
    """The reference-layout Generator holding G's weights, built with the given reference init kwargs."""
    ref = ReferenceGenerator(G.z_dim, G.c_dim, G.w_dim, G.synthesis.img_resolution, G.synthesis.img_channels,
                             mapping_kwargs=mapping_kwargs, synthesis_kwargs=synthesis_kwargs)
    return fill(ref, G.state_dict(), reference_name_in_g)


def reference_discriminator(D: Discriminator, **kwargs: Any) -> ReferenceDiscriminator:
    """The reference-layout Discriminator holding D's weights, built with the given reference init kwargs."""
    ref = ReferenceDiscriminator(D.c_dim, D.img_resolution, D.img_channels, **kwargs)
    return fill(ref, D.state_dict(), lambda n: reference_name_in_d(n, D.img_resolution))


def pytorch_pickle(path: Path, G: Generator, D: Discriminator, G_ema: Generator, G_ref_kwargs: dict,
                   D_ref_kwargs: dict, extra: dict | None = None) -> Path:
    """A training-snapshot pickle {G, D, G_ema, augment_pipe, training_set_kwargs} of our networks."""
    data = {"G": reference_generator(G, **G_ref_kwargs), "D": reference_discriminator(D, **D_ref_kwargs),
            "G_ema": reference_generator(G_ema, **G_ref_kwargs), "augment_pipe": None,
            "training_set_kwargs": EasyDict(class_name="training.dataset.ImageFolderDataset",
                                            path="~/datasets/corgis.zip", use_labels=False, xflip=True,
                                            resolution=G.synthesis.img_resolution)}
    data.update(extra or {})
    return write(path, data)


# ----------------------------------------------------------------------------------------------------
# TensorFlow layout


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _tf_conv(w: torch.Tensor, flip: bool = False) -> np.ndarray:
    a = _np(w).transpose(2, 3, 1, 0)                      # [out, in, k, k] -> [k, k, in, out]
    return np.ascontiguousarray(a[::-1, ::-1] if flip else a)


def _tf_dense(w: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(_np(w).T)                 # [out, in] -> [in, out]


def tf_generator(G: Generator, name: str, static_kwargs: dict) -> Network:
    """G as a TF Network with mapping and synthesis components (variable layout of the TF code)."""
    sd = G.state_dict()
    mapping = []
    for i in range(G.mapping.num_layers):
        mapping += [(f"Dense{i}/weight", _tf_dense(sd[f"mapping.layers.{i}.weight"])),
                    (f"Dense{i}/bias", _np(sd[f"mapping.layers.{i}.bias"]))]
    if G.c_dim:
        mapping += [("LabelEmbed/weight", _tf_dense(sd["mapping.embed.weight"])),
                    ("LabelEmbed/bias", _np(sd["mapping.embed.bias"]))]
    synthesis = []
    noise = {}

    def layer(scope: str, ours: str, noise_index: int | None, flip: bool = False) -> None:
        synthesis.extend([(f"{scope}/weight", _tf_conv(sd[f"{ours}.weight"], flip)),
                          (f"{scope}/bias", _np(sd[f"{ours}.bias"])),
                          (f"{scope}/mod_weight", _tf_dense(sd[f"{ours}.affine.weight"])),
                          (f"{scope}/mod_bias", _np(sd[f"{ours}.affine.bias"]) - 1)])
        if noise_index is not None:
            synthesis.append((f"{scope}/noise_strength", _np(sd[f"{ours}.noise_strength"])))
            noise[noise_index] = _np(sd[f"{ours}.noise_const"])[None, None]

    for k, block in enumerate(G.synthesis.blocks):
        r = block.resolution
        ours, scope = f"synthesis.blocks.{k}", f"{r}x{r}"
        if r == 4:
            synthesis.append(("4x4/Const/const", _np(sd[f"{ours}.const"])[None]))
            layer("4x4/Conv", f"{ours}.conv1", 0)
        else:
            layer(f"{scope}/Conv0_up", f"{ours}.conv0", 2 * k - 1, flip=True)
            layer(f"{scope}/Conv1", f"{ours}.conv1", 2 * k)
        layer(f"{scope}/ToRGB", f"{ours}.torgb", None)
    synthesis += [(f"noise{i}", noise[i]) for i in sorted(noise)]
    components = {"mapping": Network("G_mapping", static_kwargs, mapping, build_func_name="G_mapping"),
                  "synthesis": Network("G_synthesis", static_kwargs, synthesis,
                                       build_func_name="G_synthesis_stylegan2")}
    return Network(name, static_kwargs, [("dlatent_avg", _np(sd["mapping.w_avg"]))], components, "G_main")


def tf_discriminator(D: Discriminator, static_kwargs: dict) -> Network:
    """D as a TF Network (no components; the down-sampling convs are stored unflipped)."""
    sd = D.state_dict()
    variables = []
    for k, block in enumerate(D.blocks):
        r, ours = block.resolution, f"blocks.{k}"
        if block.fromrgb is not None:
            variables += [(f"{r}x{r}/FromRGB/weight", _tf_conv(sd[f"{ours}.fromrgb.weight"])),
                          (f"{r}x{r}/FromRGB/bias", _np(sd[f"{ours}.fromrgb.bias"]))]
        variables += [(f"{r}x{r}/Conv0/weight", _tf_conv(sd[f"{ours}.conv0.weight"])),
                      (f"{r}x{r}/Conv0/bias", _np(sd[f"{ours}.conv0.bias"])),
                      (f"{r}x{r}/Conv1_down/weight", _tf_conv(sd[f"{ours}.conv1.weight"])),
                      (f"{r}x{r}/Conv1_down/bias", _np(sd[f"{ours}.conv1.bias"]))]
        if block.skip is not None:
            variables.append((f"{r}x{r}/Skip/weight", _tf_conv(sd[f"{ours}.skip.weight"])))
    variables += [("4x4/Conv/weight", _tf_conv(sd["epilogue.conv.weight"])),
                  ("4x4/Conv/bias", _np(sd["epilogue.conv.bias"])),
                  ("4x4/Dense0/weight", _tf_dense(sd["epilogue.fc.weight"])),
                  ("4x4/Dense0/bias", _np(sd["epilogue.fc.bias"])),
                  ("Output/weight", _tf_dense(sd["epilogue.out.weight"])),
                  ("Output/bias", _np(sd["epilogue.out.bias"]))]
    if D.c_dim:
        variables += [("LabelEmbed/weight", _tf_dense(sd["mapping.embed.weight"])),
                      ("LabelEmbed/bias", _np(sd["mapping.embed.bias"]))]
        for i in range(D.mapping.num_layers):
            variables += [(f"Mapping{i}/weight", _tf_dense(sd[f"mapping.layers.{i}.weight"])),
                          (f"Mapping{i}/bias", _np(sd[f"mapping.layers.{i}.bias"]))]
    return Network("D", static_kwargs, variables, build_func_name="D_stylegan2")


def tf_pickle(path: Path, G: Generator, D: Discriminator | None, Gs: Generator, G_static: dict,
              D_static: dict | None = None) -> Path:
    """A TF (G, D, Gs) tuple of our networks, or Gs alone when D is None."""
    gs = tf_generator(Gs, "Gs", G_static)
    if D is None:
        return write(path, gs)
    return write(path, (tf_generator(G, "G", G_static), tf_discriminator(D, D_static or {}), gs))


# ----------------------------------------------------------------------------------------------------
# Networks with weights worth comparing


@torch.no_grad()
def randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial values everywhere (biases, noise strengths and w_avg are zero after construction)."""
    gen = torch.Generator().manual_seed(seed)
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_floating_point() and not name.endswith("resample_filter"):
            t.add_(torch.randn(t.shape, generator=gen) * (0.1 if t.ndim <= 1 else 0.05))
    return module


def ordered(d: dict) -> OrderedDict:
    """An OrderedDict copy (the reference's state containers)."""
    return OrderedDict(d)
