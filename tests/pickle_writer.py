"""Test-side writer of StyleGAN2 network pickles in the reference's layouts (our own code, no reference code).

* PyTorch: the reference networks' module trees, rebuilt here as small nn.Modules with the reference's
  class, attribute and tensor names (structure only: no forward), each pickled the way
  ``torch_utils.persistence`` does: ``_reconstruct_persistent_obj(meta)`` with meta = type, version,
  module_src, class_name and the object's ``__dict__``. Tensors go through torch's own pickling
  (``_rebuild_parameter``, ``_rebuild_tensor_v2``, ``_load_from_bytes``), as in the real files.
* TensorFlow: ``dnnlib.tflib.network.Network`` stand-ins whose ``__getstate__`` is the state the real
  class pickles (version, name, static_kwargs, components, build_module_src, build_func_name, variables,
  and StyleGAN2-ADA's input/output shapes and names).

Types are the real writers' (NVlabs stylegan2-ada dnnlib/tflib/network.py, stylegan2-ada-pytorch
torch_utils/persistence.py and training_loop.py), not our idea of them:

* a TF variable's value is what ``tf.Session.run`` returned for it: an ndarray, or a numpy scalar
  (``numpy.float32``) for a 0-d variable such as every ``noise_strength``;
* a persistent object's ``_init_args`` / ``_init_kwargs`` are the constructor call as made (positional
  arguments stay positional, defaults are not filled in); nested keyword dicts are ``dnnlib.util.EasyDict``;
  a layer's ``weight_gain`` is a ``numpy.float64``; the snapshot's training_set_kwargs a plain dict;
* files come from Python 3.6/3.7 with numpy 1.x (pickle protocol 3, numpy's functions under
  ``numpy.core.multiarray``) or from later Pythons (protocol 4, ``numpy._core`` under numpy 2); `write`
  emits either.

The stand-in classes live in fake modules under the formats' names (``torch_utils.persistence``,
``dnnlib.util``, ``dnnlib.tflib.network``, and numpy 1's ``numpy.core.multiarray`` when asked for) that
exist in sys.modules only while a file is written. Weights are filled from one of our own networks, so a
test can compare the import with the original.
"""

from __future__ import annotations

import contextlib
import copy
import io
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
    """Stand-in of dnnlib.tflib.network.Network: pickles as its state dict, like the real class.

    Version 5 is StyleGAN2-ADA's (it adds the input/output shapes and names), 4 the original StyleGAN2's.
    """

    def __init__(self, name: str, static_kwargs: dict, variables: list[tuple[str, Any]],
                 components: dict[str, Network] | None = None, build_func_name: str = "",
                 build_module_src: str = "# TensorFlow code would be here\n", version: int = 5,
                 inputs: dict[str, list] | None = None, outputs: dict[str, list] | None = None) -> None:
        self.state = {"version": version, "name": name, "static_kwargs": dict(static_kwargs),
                      "components": dict(components or {}), "build_module_src": build_module_src,
                      "build_func_name": build_func_name, "variables": list(variables)}
        if version >= 5:
            inputs, outputs = inputs or {}, outputs or {}
            self.state.update(input_shapes=list(inputs.values()), output_shapes=list(outputs.values()),
                              input_names=list(inputs), output_names=list(outputs))

    def __getstate__(self) -> dict:
        return self.state


def scalar(*args: Any) -> Any:
    """Stand-in of numpy 1's numpy.core.multiarray.scalar: only its name matters when writing."""
    raise AssertionError("the stand-in is for writing pickles, never for reading them")


def _reconstruct(*args: Any) -> Any:
    """Stand-in of numpy 1's numpy.core.multiarray._reconstruct: only its name matters when writing."""
    raise AssertionError("the stand-in is for writing pickles, never for reading them")


_FAKES = {
    "torch_utils": {},
    "torch_utils.persistence": {"_reconstruct_persistent_obj": _reconstruct_persistent_obj},
    "dnnlib": {},
    "dnnlib.util": {"EasyDict": EasyDict},
    "dnnlib.tflib": {},
    "dnnlib.tflib.network": {"Network": Network},
}
NUMPY1 = "numpy.core.multiarray"     # where numpy 1.x's pickles name scalar and _reconstruct
NUMPY2 = np.float32(0).__reduce__()[0].__module__   # where this numpy's own pickles name them
_NUMPY1_FAKES = {NUMPY1: {"scalar": scalar, "_reconstruct": _reconstruct}}


class _Numpy1Pickler(pickle.Pickler):
    """Pickles numpy scalars and arrays exactly as numpy reduces them, with numpy 1's module name."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, np.generic) or type(obj) is np.ndarray:
            function, *rest = obj.__reduce__()      # numpy's own (function, args[, state])
            return (_NUMPY1_FAKES[NUMPY1][function.__name__], *rest)
        return NotImplemented


@contextlib.contextmanager
def fake_modules(numpy_module: str = NUMPY2) -> Iterator[None]:
    """Put the stand-ins under the formats' module names while pickling (pickle looks globals up there)."""
    fakes = {**_FAKES, **(_NUMPY1_FAKES if numpy_module == NUMPY1 else {})}
    saved = {name: sys.modules.get(name) for name in fakes}
    originals = {}
    try:
        for name, attrs in fakes.items():
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


def write(path: Path, data: Any, protocol: int = 3, numpy_module: str = NUMPY1) -> Path:
    """Pickle `data` (which may hold the stand-ins) to `path` with plain pickle, as the reference does.

    The defaults make the files of the reference's own era (Python 3.6/3.7: protocol 3; numpy 1.x:
    numpy.core.multiarray); protocol 4 and NUMPY2 make a later environment's.
    """
    if numpy_module not in (NUMPY1, NUMPY2):
        raise ValueError(f"numpy_module must be {NUMPY1!r} or {NUMPY2!r}, got {numpy_module!r}")
    buf = io.BytesIO()
    with fake_modules(numpy_module):
        pickler = (_Numpy1Pickler if numpy_module == NUMPY1 else pickle.Pickler)(buf, protocol=protocol)
        pickler.dump(data)
    path.write_bytes(buf.getvalue())
    return path


# ----------------------------------------------------------------------------------------------------
# The reference's PyTorch module trees (names and shapes as in its training/networks.py)


MODULE_SRC = "# the reference's training/networks.py would be here; readers must never run it\n"


class Persistent(torch.nn.Module):
    """Base of the stand-ins: records the constructor call and pickles as torch_utils.persistence objects do.

    Like the reference's persistent_class decorator, `_init_args` is the tuple of positional arguments and
    `_init_kwargs` the dict of keyword arguments of the call as made (deep copies; defaults not filled in).
    """

    module_src = MODULE_SRC

    def __new__(cls, *args: Any, **kwargs: Any) -> Persistent:
        obj = super().__new__(cls)
        # Kept outside nn.Module's attribute machinery until __init__ has set it up.
        object.__setattr__(obj, "_call", (copy.deepcopy(args), copy.deepcopy(kwargs)))
        return obj

    def __init__(self) -> None:
        super().__init__()
        self._init_args, self._init_kwargs = self.__dict__.pop("_call")

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
        super().__init__()
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn(out_features, in_features))
        self.bias = torch.nn.Parameter(torch.zeros(out_features)) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)   # a numpy float64, as in the reference
        self.bias_gain = lr_multiplier


class Conv2dLayer(Persistent):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1, conv_clamp: float | None = None,
                 trainable: bool = True) -> None:
        super().__init__()
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
        super().__init__()
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
        super().__init__()
        self.register_buffer("resample_filter", FILTER.clone())
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros(out_channels))


class ToRGBLayer(Persistent):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = torch.nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / np.sqrt(in_channels)


class SynthesisBlock(Persistent):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, use_fp16: bool = False, conv_clamp: float | None = None) -> None:
        super().__init__()
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
        super().__init__()
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
        super().__init__()
        mapping_kwargs, synthesis_kwargs = mapping_kwargs or {}, synthesis_kwargs or {}
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.synthesis.num_ws, **mapping_kwargs)


class DiscriminatorBlock(Persistent):
    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int,
                 img_channels: int, first_layer_idx: int, architecture: str = "resnet",
                 conv_clamp: float | None = None, freeze_layers: int = 0) -> None:
        super().__init__()
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
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels


class DiscriminatorEpilogue(Persistent):
    def __init__(self, in_channels: int, cmap_dim: int, resolution: int, img_channels: int,
                 architecture: str = "resnet", mbstd_group_size: int | None = 4, mbstd_num_channels: int = 1,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
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
        super().__init__()
        block_kwargs, mapping_kwargs = block_kwargs or {}, mapping_kwargs or {}
        epilogue_kwargs = epilogue_kwargs or {}
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


def _easy(kwargs: dict) -> EasyDict:
    """The reference's train.py keeps its keyword dicts (and the dicts nested in them) as EasyDicts."""
    return EasyDict({k: _easy(v) if isinstance(v, dict) else v for k, v in kwargs.items()})


def reference_generator(G: Generator, mapping_kwargs: dict, synthesis_kwargs: dict) -> ReferenceGenerator:
    """The reference-layout Generator holding G's weights, constructed as the reference's training loop
    does: construct_class_by_name(**G_kwargs, **common_kwargs), every argument a keyword."""
    G_kwargs = _easy({"z_dim": G.z_dim, "w_dim": G.w_dim, "mapping_kwargs": mapping_kwargs,
                      "synthesis_kwargs": synthesis_kwargs})
    common = {"c_dim": G.c_dim, "img_resolution": G.synthesis.img_resolution,
              "img_channels": G.synthesis.img_channels}
    ref = ReferenceGenerator(**G_kwargs, **common)
    return fill(ref, G.state_dict(), reference_name_in_g)


def reference_discriminator(D: Discriminator, **kwargs: Any) -> ReferenceDiscriminator:
    """The reference-layout Discriminator holding D's weights, constructed like reference_generator's G with
    the given reference init kwargs."""
    common = {"c_dim": D.c_dim, "img_resolution": D.img_resolution, "img_channels": D.img_channels}
    ref = ReferenceDiscriminator(**_easy(kwargs), **common)
    return fill(ref, D.state_dict(), lambda n: reference_name_in_d(n, D.img_resolution))


def pytorch_pickle(path: Path, G: Generator, D: Discriminator, G_ema: Generator, G_ref_kwargs: dict,
                   D_ref_kwargs: dict, extra: dict | None = None, protocol: int = 3,
                   numpy_module: str = NUMPY1) -> Path:
    """A training-snapshot pickle {training_set_kwargs, G, D, G_ema, augment_pipe} of our networks, as the
    reference's training loop writes it (training_set_kwargs copied into a plain dict)."""
    training_set_kwargs = EasyDict(class_name="training.dataset.ImageFolderDataset",
                                   path="~/datasets/corgis.zip", use_labels=False, max_size=6, xflip=True,
                                   resolution=G.synthesis.img_resolution)
    data = {"training_set_kwargs": dict(training_set_kwargs), "G": reference_generator(G, **G_ref_kwargs),
            "D": reference_discriminator(D, **D_ref_kwargs),
            "G_ema": reference_generator(G_ema, **G_ref_kwargs), "augment_pipe": None}
    data.update(extra or {})
    return write(path, data, protocol, numpy_module)


# ----------------------------------------------------------------------------------------------------
# TensorFlow layout


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def tf_value(value: np.ndarray) -> Any:
    """A variable's value as tf.Session.run returns it: a numpy scalar for a 0-d variable, else the array."""
    return value[()] if value.ndim == 0 else value


# G_main's own parameters in the StyleGAN2-ADA TF code: the rest of its static kwargs go on to its
# components, with the build's is_template_graph (and the mapping's dlatent_broadcast).
_G_MAIN_OWN = {"truncation_psi", "truncation_cutoff", "truncation_psi_val", "truncation_cutoff_val",
               "dlatent_avg_beta", "style_mixing_prob", "is_training", "is_validation", "return_dlatents",
               "mapping_func", "synthesis_func"}


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
            synthesis.append((f"{scope}/noise_strength", tf_value(_np(sd[f"{ours}.noise_strength"]))))
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
    res, C, num_ws = G.synthesis.img_resolution, G.synthesis.img_channels, G.synthesis.num_ws
    passed_on = {k: v for k, v in static_kwargs.items() if k not in _G_MAIN_OWN} | {"is_template_graph": True}
    z_shape, c_shape, img_shape = [None, G.z_dim], [None, G.c_dim], [None, C, res, res]
    ws_shape = [None, num_ws, G.w_dim]
    components = {
        "mapping": Network("G_mapping", {**passed_on, "dlatent_broadcast": num_ws}, mapping,
                           build_func_name="G_mapping", inputs={"latents_in": z_shape, "labels_in": c_shape},
                           outputs={"dlatents_out": ws_shape}),
        "synthesis": Network("G_synthesis", passed_on, synthesis, build_func_name="G_synthesis",
                             inputs={"dlatents_in": ws_shape}, outputs={"images_out": img_shape}),
    }
    return Network(name, static_kwargs, [("dlatent_avg", _np(sd["mapping.w_avg"]))], components, "G_main",
                   inputs={"latents_in": z_shape, "labels_in": c_shape}, outputs={"images_out": img_shape})


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
    res, C = D.img_resolution, D.img_channels
    return Network("D", static_kwargs, variables, build_func_name="D_main",
                   inputs={"images_in": [None, C, res, res], "labels_in": [None, D.c_dim]},
                   outputs={"scores_out": [None, 1]})


def tf_pickle(path: Path, G: Generator, D: Discriminator | None, Gs: Generator, G_static: dict,
              D_static: dict | None = None, protocol: int = 3, numpy_module: str = NUMPY1) -> Path:
    """A TF (G, D, Gs) tuple of our networks as the reference's training loop pickles it, or Gs alone when D
    is None."""
    gs = tf_generator(Gs, "Gs", G_static)
    if D is None:
        return write(path, gs, protocol, numpy_module)
    return write(path, (tf_generator(G, "G", G_static), tf_discriminator(D, D_static or {}), gs), protocol,
                 numpy_module)


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
