"""StyleGAN2 generator and discriminator (config F): the networks StyleGAN2-ADA trains.

Generator: an 8-layer mapping MLP z -> w, then a synthesis network that starts from a learned 4x4
constant and doubles the resolution block by block. Each block has modulated, weight-demodulated 3x3
convolutions with per-pixel noise, and a toRGB layer whose output is added to the up-sampled image of
the previous block ("skip" architecture). Discriminator: a "resnet" stack of down-sampling blocks, a
minibatch standard-deviation layer, and a small epilogue that outputs one logit per image.

Every weight uses the equalised learning rate: parameters are stored with unit variance (divided by
the layer's lr_multiplier) and scaled at run time by lr_multiplier / sqrt(fan_in), so Adam moves every
layer at the same relative speed. On CUDA the blocks of the num_fp16_res highest resolutions run in
float16; activations are clamped to +-conv_clamp so float16 cannot overflow. On CPU everything is
float32.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from corgigan.stylegan2.ops.bias_act import bias_act
from corgigan.stylegan2.ops.upfirdn2d import setup_filter, upfirdn2d, upsample2d

RESAMPLE_FILTER = (1, 3, 3, 1)   # the FIR low-pass used for every 2x up- and down-sampling
NOISE_MODES = ("random", "const", "none")
LRELU_GAIN = math.sqrt(2)        # bias_act's default gain for lrelu (keeps unit variance)


# ----------------------------------------------------------------------------------------------------
# Small pure helpers


def check_shape(x: torch.Tensor | None, shape: Sequence[int | None], what: str) -> None:
    """Raise ValueError unless `x` is a tensor of `shape` (None matches any size)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what}: expected a tensor, got {type(x).__name__}")
    ok = x.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, x.shape))
    if not ok:
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{what}: expected shape {want}, got {list(x.shape)}")


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale `x` so the mean of its squares along `dim` is 1 (the mapping network's input norm)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def channels_per_resolution(channel_base: int, channel_max: int,
                            resolutions: Sequence[int]) -> dict[int, int]:
    """Feature maps at each resolution: min(channel_base // res, channel_max)."""
    return {res: min(channel_base // res, channel_max) for res in resolutions}


def fp16_resolution(img_resolution: int, num_fp16_res: int) -> int:
    """The lowest resolution whose blocks run in float16 (never below 8x8)."""
    return max(2 ** (int(math.log2(img_resolution)) + 1 - num_fp16_res), 8)


def use_fp16_now(block_fp16: bool, device: torch.device, force_fp32: bool) -> bool:
    """Float16 only on CUDA: CPU convolutions in float16 are slow and imprecise."""
    return block_fp16 and not force_fp32 and device.type == "cuda"


def mbstd_group(batch: int, group_size: int) -> int:
    """Group size the minibatch-stddev layer uses for `batch` images.

    The rule: the largest divisor of `batch` that does not exceed `group_size`. A batch smaller than the
    group uses the whole batch; a batch that is not a multiple of the group (for example 6 images with
    group 4) uses smaller equal groups (3) so every image is in a group of the same size. A prime batch
    larger than the group falls back to groups of one, whose standard deviation is zero.
    """
    if batch < 1 or group_size < 1:
        raise ValueError(f"mbstd_group: batch ({batch}) and group_size ({group_size}) must be >= 1")
    # g = 1 always divides, so the search ends at 1 at the latest.
    return next(g for g in range(min(group_size, batch), 0, -1) if batch % g == 0)


def _check_resolution(img_resolution: int, lowest: int) -> int:
    if img_resolution < lowest or img_resolution & (img_resolution - 1):
        raise ValueError(f"img_resolution must be a power of two >= {lowest}, got {img_resolution}")
    return int(math.log2(img_resolution))


# ----------------------------------------------------------------------------------------------------
# Resampling convolutions (weights are [O, I, k, k]; the FIR filter is a 2-D buffer)


def conv2d_up2(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """2x up-sampling convolution: transposed conv with stride 2, then the FIR low-pass.

    A stride-2 transposed conv costs a quarter of a conv at the output size. `w` is [O, I/groups, k, k]
    as for conv2d. Output [N, O, 2H, 2W].
    """
    out_c, in_g, kh, kw = w.shape
    out_g = out_c // groups
    # conv_transpose2d wants [I, O/groups, k, k]: regroup the output channels per group.
    wt = w.reshape(groups, out_g, in_g, kh, kw).transpose(1, 2).reshape(groups * in_g, out_g, kh, kw)
    x = F.conv_transpose2d(x, wt, stride=2, groups=groups)  # [N, O, 2H-2+k, 2W-2+k]
    fw = f.shape[-1]
    pad = fw + 1 - kw  # total padding that brings 2H-2+k back to 2H after the fw-tap filter
    return upfirdn2d(x, f, padding=(pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), gain=4)


def conv2d_down2(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x down-sampling convolution: FIR low-pass first (anti-aliasing), then a stride-2 conv."""
    kw = w.shape[-1]
    fw = f.shape[-1]
    pad = fw + kw - 3  # total padding that makes (H + pad - fw + 1 - k) // 2 + 1 == H / 2
    x = upfirdn2d(x, f, padding=(pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    return F.conv2d(x, w, stride=2)


def demodulation_coefficients(weight: torch.Tensor, styles: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 / L2 norm of each output channel's modulated kernel: [N, O].

    sum_{i,k} (w[o,i,k] * s[n,i])^2 = sum_i s[n,i]^2 * sum_k w[o,i,k]^2, so this needs one [N, I] x [I, O]
    product instead of materialising the [N, O, I, k, k] modulated weights.
    """
    return (styles.square() @ weight.square().sum(dim=(2, 3)).t() + eps).rsqrt()


def modulated_conv2d(
    x: torch.Tensor,                      # [N, I, H, W] input activations
    weight: torch.Tensor,                 # [O, I, k, k] shared weights
    styles: torch.Tensor,                 # [N, I] per-sample input-channel scales
    noise: torch.Tensor | None = None,    # [N, 1, H', W'] (or broadcastable) added after demodulation
    up: int = 1,                          # 1 or 2
    resample_filter: torch.Tensor | None = None,  # 2-D FIR filter, needed when up == 2
    demodulate: bool = True,              # normalise each output channel to unit expected variance
    fused: bool = True,                   # one grouped conv with per-sample weights; False: scale x
                                          # before and after one shared conv
) -> torch.Tensor:
    """StyleGAN2 modulated convolution; returns [N, O, H * up, W * up] in x's dtype."""
    N, in_c, H, W = x.shape
    out_c, _, kh, kw = weight.shape
    check_shape(weight, [out_c, in_c, kh, kw], "modulated_conv2d weight")
    check_shape(styles, [N, in_c], "modulated_conv2d styles")
    if up not in (1, 2):
        raise ValueError(f"modulated_conv2d: up must be 1 or 2, got {up}")
    if up == 2 and resample_filter is None:
        raise ValueError("modulated_conv2d: up=2 needs resample_filter")
    if N == 0:   # the fused path's grouped conv would have groups = 0, which torch refuses
        return x.new_zeros([0, out_c, H * up, W * up])

    if demodulate and x.dtype == torch.float16:
        # Demodulation makes the result invariant to the scale of each output channel's weights and of
        # each sample's styles, so normalise both first: the float16 products below cannot overflow.
        # The 1/sqrt(fan_in) keeps the un-demodulated conv output near the input's magnitude.
        w_max = weight.flatten(1).norm(float("inf"), dim=1).clamp_min(1e-8)[:, None, None, None]
        weight = weight / (w_max * math.sqrt(in_c * kh * kw))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True).clamp_min(1e-8)
    dcoefs = demodulation_coefficients(weight, styles) if demodulate else None  # [N, O]
    pad = kh // 2

    if fused:
        w = weight.unsqueeze(0) * styles[:, None, :, None, None]   # [N, O, I, k, k]
        if dcoefs is not None:
            w = w * dcoefs[:, :, None, None, None]
        w = w.reshape(N * out_c, in_c, kh, kw).to(x.dtype)
        xg = x.reshape(1, N * in_c, H, W)
        if up == 2:
            y = conv2d_up2(xg, w, resample_filter, groups=N)
        else:
            y = F.conv2d(xg, w, padding=pad, groups=N)
        y = y.reshape(N, out_c, *y.shape[2:])                            # [N, O, H', W']
        return y if noise is None else y + noise.to(y.dtype)

    x = x * styles.to(x.dtype)[:, :, None, None]
    w = weight.to(x.dtype)
    y = conv2d_up2(x, w, resample_filter) if up == 2 else F.conv2d(x, w, padding=pad)  # [N, O, H', W']
    if dcoefs is not None:
        y = y * dcoefs.to(y.dtype)[:, :, None, None]
    return y if noise is None else y + noise.to(y.dtype)


# ----------------------------------------------------------------------------------------------------
# Equalised-learning-rate layers


class FullyConnected(nn.Module):
    """Dense layer with equalised learning rate and a fused bias + activation."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,            # learn a bias
        activation: str = "linear",   # any bias_act activation
        lr_multiplier: float = 1.0,   # scales this layer's effective learning rate
        bias_init: float = 0.0,       # initial value of the effective bias
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.lr_multiplier = lr_multiplier
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], bias_init / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, in_features] -> [N, out_features]."""
        w = (self.weight * self.weight_gain).to(x.dtype)
        b = None if self.bias is None else (self.bias * self.lr_multiplier).to(x.dtype)
        if self.activation == "linear":
            return F.linear(x, w, b)
        return bias_act(F.linear(x, w), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, act={self.activation}"


class Conv2dLayer(nn.Module):
    """Plain (unmodulated) conv with equalised learning rate, optional 2x down-sampling, bias + act."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,               # learn a bias
        activation: str = "linear",      # linear | lrelu
        down: int = 1,                   # 1 or 2
        conv_clamp: float | None = None,  # clamp the output to +-conv_clamp (times forward's gain)
    ) -> None:
        super().__init__()
        if down not in (1, 2):
            raise ValueError(f"Conv2dLayer: down must be 1 or 2, got {down}")
        if activation not in ("linear", "lrelu"):
            raise ValueError(f"Conv2dLayer: activation must be linear or lrelu, got {activation!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.down = down
        self.conv_clamp = conv_clamp
        self.act_gain = LRELU_GAIN if activation == "lrelu" else 1.0
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.register_buffer("resample_filter", setup_filter(RESAMPLE_FILTER), persistent=False)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """[N, I, H, W] -> [N, O, H / down, W / down]; `gain` scales the activated output."""
        w = (self.weight * self.weight_gain).to(x.dtype)
        if self.down == 2:
            x = conv2d_down2(x, w, self.resample_filter)
        else:
            x = F.conv2d(x, w, padding=w.shape[-1] // 2)
        b = None if self.bias is None else self.bias.to(x.dtype)
        # As in the reference: the clamp scales with the caller's gain, not with the activation's own gain.
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        gain = self.act_gain * gain
        return bias_act(x, b, act=self.activation, gain=gain, clamp=clamp)

    def extra_repr(self) -> str:
        k = self.weight.shape[-1]
        return f"{self.in_channels}->{self.out_channels}, k={k}, down={self.down}, act={self.activation}"


# ----------------------------------------------------------------------------------------------------
# Mapping network


class MappingNetwork(nn.Module):
    """z (and optional label c) -> w, broadcast to num_ws copies; tracks w_avg for truncation."""

    def __init__(
        self,
        z_dim: int,                        # latent size; 0 for a label-only mapping (the conditional D)
        c_dim: int,                        # label size; 0 for none
        w_dim: int,                        # intermediate latent size
        num_ws: int | None,                # copies of w to output; None: output [N, w_dim]
        num_layers: int = 8,               # dense layers
        lr_multiplier: float = 0.01,       # slower learning rate of the mapping layers
        w_avg_beta: float | None = 0.995,  # decay of the tracked average w; None: do not track
    ) -> None:
        super().__init__()
        if z_dim == 0 and c_dim == 0:
            raise ValueError("MappingNetwork needs z_dim > 0 or c_dim > 0")
        if num_layers < 1:
            raise ValueError(f"MappingNetwork: num_layers must be >= 1, got {num_layers}")
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.num_ws, self.num_layers, self.w_avg_beta = num_ws, num_layers, w_avg_beta
        embed_features = w_dim if c_dim > 0 else 0
        self.embed = FullyConnected(c_dim, embed_features) if c_dim > 0 else None
        features = [z_dim + embed_features] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            FullyConnected(fin, fout, activation="lrelu", lr_multiplier=lr_multiplier)
            for fin, fout in itertools.pairwise(features)
        )
        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self,
        z: torch.Tensor | None,             # [N, z_dim]
        c: torch.Tensor | None,             # [N, c_dim]
        truncation_psi: float = 1.0,        # 1: no truncation; 0: every w is w_avg
        truncation_cutoff: int | None = None,  # truncate only the first this many ws; None: all
        update_emas: bool = False,          # move w_avg towards this batch's mean w
    ) -> torch.Tensor:
        """Return ws [N, num_ws, w_dim] (or [N, w_dim] when num_ws is None)."""
        parts = []
        if self.z_dim > 0:
            check_shape(z, [None, self.z_dim], "MappingNetwork z")
            parts.append(normalize_2nd_moment(z.float()))
        if self.c_dim > 0:
            check_shape(c, [None, self.c_dim], "MappingNetwork c")
            parts.append(normalize_2nd_moment(self.embed(c.float())))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # [N, z_dim + embed]
        for layer in self.layers:
            x = layer(x)                                                  # [N, w_dim]

        if update_emas and self.w_avg_beta is not None and x.shape[0] > 0:   # no mean w of no samples
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return x
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)                     # [N, num_ws, w_dim]
        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise ValueError("truncation needs a tracked w_avg (w_avg_beta is None)")
            cut = self.num_ws if truncation_cutoff is None else min(truncation_cutoff, self.num_ws)
            head = self.w_avg.lerp(ws[:, :cut], truncation_psi)
            ws = torch.cat([head, ws[:, cut:]], dim=1)
        return ws

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


# ----------------------------------------------------------------------------------------------------
# Synthesis network


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x up) + per-pixel noise + bias + lrelu."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,                   # output resolution
        up: int = 1,                       # 1 or 2
        use_noise: bool = True,            # add per-pixel noise with a learned strength
        conv_clamp: float | None = None,   # clamp the activations to +-conv_clamp (after the gain)
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resolution, self.up, self.use_noise, self.conv_clamp = resolution, up, use_noise, conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("resample_filter", setup_filter(RESAMPLE_FILTER), persistent=False)
        if use_noise:
            # The fixed noise image of noise_mode="const": part of the state dict, so a snapshot
            # renders the same pictures after reloading.
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str, fused: bool) -> torch.Tensor:
        """x [N, I, H, W], w [N, w_dim] -> [N, O, res, res]."""
        N = x.shape[0]
        check_shape(x, [None, self.in_channels, self.resolution // self.up, self.resolution // self.up],
                    "SynthesisLayer input")
        styles = self.affine(w)                                            # [N, I]
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn(N, 1, self.resolution, self.resolution, device=x.device) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength                 # [res, res], broadcast
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up,
                             resample_filter=self.resample_filter, fused=fused)
        # The clamp applies after lrelu's gain and is not scaled by it (as in the reference and TF code).
        clamp = self.conv_clamp
        return bias_act(x, self.bias.to(x.dtype), act="lrelu", clamp=clamp)  # [N, O, res, res]

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.out_channels}, res={self.resolution}, up={self.up}"


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to image channels, without demodulation (the colours keep their scale)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool) -> torch.Tensor:
        """x [N, I, H, W], w [N, w_dim] -> [N, img_channels, H, W]."""
        styles = self.affine(w) * self.weight_gain                         # [N, I]
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the generator: (const or 2x-up conv) + conv + toRGB added to the image."""

    def __init__(
        self,
        in_channels: int,           # 0 for the first block, which starts from the learned constant
        out_channels: int,
        w_dim: int,
        resolution: int,            # this block's output resolution
        img_channels: int,
        use_fp16: bool = False,     # run in float16 (on CUDA)
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resolution, self.img_channels, self.use_fp16 = resolution, img_channels, use_fp16
        self.register_buffer("resample_filter", setup_filter(RESAMPLE_FILTER), persistent=False)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
            self.conv0 = None
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def forward(
        self,
        x: torch.Tensor | None,     # [N, in_channels, res/2, res/2]; None for the first block
        img: torch.Tensor | None,   # [N, img_channels, res/2, res/2] float32; None for the first block
        ws: torch.Tensor,           # [N, num_conv + num_torgb, w_dim]
        noise_mode: str = "random",
        force_fp32: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (features [N, out_channels, res, res], image [N, img_channels, res, res] float32)."""
        check_shape(ws, [None, self.num_conv + self.num_torgb, None], "SynthesisBlock ws")
        N = ws.shape[0]
        fp16 = use_fp16_now(self.use_fp16, ws.device, force_fp32)
        dtype = torch.float16 if fp16 else torch.float32
        fmt = torch.channels_last if fp16 else torch.contiguous_format
        # Grouped (fused) convs suit inference; training scales activations around one shared conv,
        # whose weight gradient is far cheaper than that of N per-sample weights.
        fused = not self.training and not fp16
        w_iter = iter(ws.unbind(dim=1))

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype).unsqueeze(0).repeat(N, 1, 1, 1).to(memory_format=fmt)
            x = self.conv1(x, next(w_iter), noise_mode, fused)               # [N, C, 4, 4]
        else:
            check_shape(x, [N, self.in_channels, self.resolution // 2, self.resolution // 2],
                        "SynthesisBlock x")
            x = x.to(dtype=dtype, memory_format=fmt)
            x = self.conv0(x, next(w_iter), noise_mode, fused)               # [N, C, res, res]
            x = self.conv1(x, next(w_iter), noise_mode, fused)               # [N, C, res, res]

        y = self.torgb(x, next(w_iter), fused).float()                       # [N, img_C, res, res]
        if img is not None:
            check_shape(img, [N, self.img_channels, self.resolution // 2, self.resolution // 2],
                        "SynthesisBlock img")
            y = y + upsample2d(img, self.resample_filter)
        return x, y

    def extra_repr(self) -> str:
        return f"res={self.resolution}, {self.in_channels}->{self.out_channels}, fp16={self.use_fp16}"


class SynthesisNetwork(nn.Module):
    """ws -> image: the learned 4x4 constant grown by SynthesisBlocks to img_resolution ("skip" G)."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,          # feature maps at resolution r: min(channel_base // r, max)
        channel_max: int = 512,
        num_fp16_res: int = 4,              # float16 in this many highest resolutions (CUDA only)
        conv_clamp: float | None = 256,     # clamp activations to +-conv_clamp; None: no clamp
    ) -> None:
        super().__init__()
        log2 = _check_resolution(img_resolution, 4)
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        channels = channels_per_resolution(channel_base, channel_max, self.block_resolutions)
        fp16_res = fp16_resolution(img_resolution, num_fp16_res)
        self.blocks = nn.ModuleList()
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(
                in_channels=channels[res // 2] if res > 4 else 0, out_channels=channels[res], w_dim=w_dim,
                resolution=res, img_channels=img_channels, use_fp16=res >= fp16_res and num_fp16_res > 0,
                conv_clamp=conv_clamp,
            )
            self.blocks.append(block)
            self.num_ws += block.num_conv
        self.num_ws += self.blocks[-1].num_torgb

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", force_fp32: bool = False) -> torch.Tensor:
        """ws [N, num_ws, w_dim] -> img [N, img_channels, res, res] float32, roughly in [-1, 1]."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        check_shape(ws, [None, self.num_ws, self.w_dim], "SynthesisNetwork ws")
        ws = ws.float()
        x = img = None
        w_idx = 0
        for block in self.blocks:
            # Consecutive blocks share one w: a block's toRGB uses the same w as the next block's conv0.
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            x, img = block(x, img, block_ws, noise_mode=noise_mode, force_fp32=force_fp32)
            w_idx += block.num_conv
        return img

    def extra_repr(self) -> str:
        return f"w_dim={self.w_dim}, num_ws={self.num_ws}, res={self.img_resolution}"


class Generator(nn.Module):
    """StyleGAN2 generator: MappingNetwork + SynthesisNetwork."""

    def __init__(
        self,
        z_dim: int,                          # latent size
        c_dim: int,                          # label size, 0 for unconditional
        w_dim: int,                          # intermediate latent size
        img_resolution: int,                 # output side, a power of two
        img_channels: int,                   # 3 for RGB
        mapping_kwargs: dict | None = None,  # MappingNetwork keywords (num_layers, lr_multiplier, ...)
        synthesis_kwargs: dict | None = None,  # SynthesisNetwork keywords (channel_base, ...)
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **(synthesis_kwargs or {}))
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, **(mapping_kwargs or {}))

    def forward(
        self,
        z: torch.Tensor,                       # [N, z_dim]
        c: torch.Tensor | None,                # [N, c_dim]; may be None or [N, 0] when c_dim == 0
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
        noise_mode: str = "random",
        force_fp32: bool = False,
    ) -> torch.Tensor:
        """Return images [N, img_channels, res, res], float32, about [-1, 1]."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, noise_mode=noise_mode, force_fp32=force_fp32)


# ----------------------------------------------------------------------------------------------------
# Discriminator


class DiscriminatorBlock(nn.Module):
    """One resolution of D: (fromRGB at the top) + conv + 2x-down conv, with a residual 1x1 skip."""

    def __init__(
        self,
        in_channels: int,            # 0 for the first block, which reads the image through fromRGB
        tmp_channels: int,           # feature maps at this resolution
        out_channels: int,           # feature maps at half this resolution
        resolution: int,             # this block's input resolution
        img_channels: int,
        architecture: str = "resnet",  # resnet | orig
        use_fp16: bool = False,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        if architecture not in ("resnet", "orig"):
            raise ValueError(f"DiscriminatorBlock: architecture must be resnet or orig, got {architecture!r}")
        self.in_channels, self.tmp_channels, self.out_channels = in_channels, tmp_channels, out_channels
        self.resolution, self.img_channels = resolution, img_channels
        self.architecture, self.use_fp16 = architecture, use_fp16
        self.fromrgb = (Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
                        if in_channels == 0 else None)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2,
                                 conv_clamp=conv_clamp)
        self.skip = (Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)
                     if architecture == "resnet" else None)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None,
                force_fp32: bool = False) -> torch.Tensor:
        """Return features [N, out_channels, res/2, res/2]."""
        src = img if x is None else x
        fp16 = use_fp16_now(self.use_fp16, src.device, force_fp32)
        dtype = torch.float16 if fp16 else torch.float32
        fmt = torch.channels_last if fp16 else torch.contiguous_format
        if self.fromrgb is not None:
            check_shape(img, [None, self.img_channels, self.resolution, self.resolution],
                        "DiscriminatorBlock img")
            x = self.fromrgb(img.to(dtype=dtype, memory_format=fmt))          # [N, tmp, res, res]
        else:
            check_shape(x, [None, self.in_channels, self.resolution, self.resolution], "DiscriminatorBlock x")
            x = x.to(dtype=dtype, memory_format=fmt)

        if self.skip is None:
            x = self.conv0(x)
            return self.conv1(x)                                              # [N, out, res/2, res/2]
        # Both branches carry gain sqrt(1/2) so their sum keeps the variance of one branch.
        y = self.skip(x, gain=math.sqrt(0.5))                                 # [N, out, res/2, res/2]
        x = self.conv0(x)
        x = self.conv1(x, gain=math.sqrt(0.5))
        return x + y

    def extra_repr(self) -> str:
        return (f"res={self.resolution}, {self.tmp_channels}->{self.out_channels}, "
                f"arch={self.architecture}, fp16={self.use_fp16}")


class MinibatchStdLayer(nn.Module):
    """Append the standard deviation of features across small groups of images as extra channels.

    The images of a batch are split into groups (image n goes to group n mod (N/G)); each group's
    per-feature standard deviation, averaged over positions, becomes num_channels constant feature
    maps. A generator that collapses to similar images shows a small value here, which D can punish.
    See mbstd_group for the group-size rule.
    """

    def __init__(self, group_size: int, num_channels: int = 1) -> None:
        super().__init__()
        if group_size < 1 or num_channels < 1:
            raise ValueError(f"MinibatchStdLayer: group_size ({group_size}) and num_channels "
                             f"({num_channels}) must be >= 1")
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, C + num_channels, H, W]."""
        N, C, H, W = x.shape
        G = mbstd_group(N, self.group_size)
        F_ = self.num_channels
        if C % F_:
            raise ValueError(f"MinibatchStdLayer: {C} channels do not split into {F_} stddev channels")
        y = x.reshape(G, N // G, F_, C // F_, H, W)       # [G, M, F, c, H, W]
        y = y - y.mean(dim=0)                              # deviation from the group mean
        y = (y.square().mean(dim=0) + 1e-8).sqrt()         # [M, F, c, H, W] std over the group
        y = y.mean(dim=(2, 3, 4))                          # [M, F]
        y = y.reshape(-1, F_, 1, 1).repeat(G, 1, H, W)     # [N, F, H, W], image n gets group n mod M
        return torch.cat([x, y.to(x.dtype)], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(nn.Module):
    """The 4x4 head of D: minibatch stddev, 3x3 conv, dense layer, output layer."""

    def __init__(
        self,
        in_channels: int,
        cmap_dim: int,                  # label embedding size; 0 for an unconditional D
        resolution: int,                # 4
        img_channels: int,
        mbstd_group_size: int = 4,
        mbstd_num_channels: int = 1,    # 0 disables the minibatch stddev layer
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.cmap_dim, self.resolution = in_channels, cmap_dim, resolution
        self.mbstd = (MinibatchStdLayer(mbstd_group_size, mbstd_num_channels)
                      if mbstd_num_channels > 0 else None)
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu",
                                conv_clamp=conv_clamp)
        self.fc = FullyConnected(in_channels * resolution**2, in_channels, activation="lrelu")
        self.out = FullyConnected(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, cmap: torch.Tensor | None) -> torch.Tensor:
        """x [N, C, 4, 4] (cmap [N, cmap_dim]) -> logits [N, 1]."""
        check_shape(x, [None, self.in_channels, self.resolution, self.resolution], "DiscriminatorEpilogue x")
        x = x.float().contiguous()
        if self.mbstd is not None:
            x = self.mbstd(x)                               # [N, C + F, 4, 4]
        x = self.conv(x)                                    # [N, C, 4, 4]
        x = self.fc(x.flatten(1))                           # [N, C]
        x = self.out(x)                                     # [N, 1] or [N, cmap_dim]
        if self.cmap_dim > 0:
            check_shape(cmap, [x.shape[0], self.cmap_dim], "DiscriminatorEpilogue cmap")
            # Projection discriminator: the logit is the score's projection on the label embedding.
            x = (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
        return x


class Discriminator(nn.Module):
    """StyleGAN2 discriminator ("resnet"; "orig" for the plain stack the cifar config uses)."""

    def __init__(
        self,
        c_dim: int,                     # label size, 0 for unconditional
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,      # feature maps at resolution r: min(channel_base // r, channel_max)
        channel_max: int = 512,
        num_fp16_res: int = 4,          # float16 in this many highest resolutions (CUDA only)
        conv_clamp: float | None = 256,
        mbstd_group_size: int = 4,      # images per minibatch-stddev group (see mbstd_group)
        mbstd_num_channels: int = 1,    # stddev feature maps appended; 0 disables the layer
        architecture: str = "resnet",   # resnet | orig
        mapping_kwargs: dict | None = None,  # label MappingNetwork keywords (conditional D only)
    ) -> None:
        super().__init__()
        log2 = _check_resolution(img_resolution, 8)  # at least one block above the 4x4 epilogue
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(log2, 2, -1)]
        channels = channels_per_resolution(channel_base, channel_max, [*self.block_resolutions, 4])
        fp16_res = fp16_resolution(img_resolution, num_fp16_res)
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(
                in_channels=0 if res == img_resolution else channels[res], tmp_channels=channels[res],
                out_channels=channels[res // 2], resolution=res, img_channels=img_channels,
                architecture=architecture, use_fp16=res >= fp16_res and num_fp16_res > 0,
                conv_clamp=conv_clamp,
            )
            for res in self.block_resolutions
        )
        cmap_dim = channels[4] if c_dim > 0 else 0
        self.mapping = None
        if c_dim > 0:
            self.mapping = MappingNetwork(0, c_dim, cmap_dim, num_ws=None, w_avg_beta=None,
                                          **(mapping_kwargs or {}))
        self.epilogue = DiscriminatorEpilogue(channels[4], cmap_dim, 4, img_channels, mbstd_group_size,
                                              mbstd_num_channels, conv_clamp=conv_clamp)

    def forward(self, img: torch.Tensor, c: torch.Tensor | None, update_emas: bool = False,
                force_fp32: bool = False) -> torch.Tensor:
        """img [N, img_channels, res, res] (c [N, c_dim]) -> logits [N, 1]."""
        del update_emas  # D tracks no running averages; accepted for a uniform call signature
        res = self.img_resolution
        check_shape(img, [None, self.img_channels, res, res], "Discriminator img")
        x = None
        for block in self.blocks:
            x = block(x, img if x is None else None, force_fp32=force_fp32)
        cmap = self.mapping(None, c) if self.mapping is not None else None
        return self.epilogue(x if x is not None else img, cmap)  # [N, 1]


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars (every nn.Parameter; buffers are not counted)."""
    return sum(p.numel() for p in module.parameters())
