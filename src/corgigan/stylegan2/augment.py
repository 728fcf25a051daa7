"""Differentiable augmentation for adaptive discriminator augmentation (ADA).

Every augmentation is applied to each image independently with probability ``strength * p``, where
``p`` is the pipe's overall probability buffer that ADA steers during training. The geometric group
composes one 3x3 homogeneous matrix per image; the colour group composes one 4x4 matrix per image.

Geometry uses centred pixel coordinates: the origin is the image centre and one unit is one pixel,
so a pixel centre sits at ``i + 0.5 - W / 2``. Matrices are kept as *inverse* maps (output coordinate
-> input coordinate) because that is what sampling needs.

Images whose transform only permutes pixels (x-flip, 90-degree rotations, integer translation with
reflection at the borders) are moved by an exact gather; the rest go through the anti-aliased warp
of the published method: reflect-pad, 2x upsample with a symlet-6 low-pass filter, bilinear
``grid_sample``, low-pass 2x downsample. Every step is differentiable twice with respect to the
images (R1 needs the gradient of a gradient through this pipe). ``torch.nn.functional.grid_sample``
supports that natively (its backward is itself differentiable with respect to the incoming gradient;
checked by gradgradcheck in the tests), so no custom autograd function is needed.

After the colour group come the reference's corrupting ones: image-space filtering (four octave bands,
each amplified or attenuated), additive noise and cutout. `make_pipe` builds the reference's named pipes
(its --augpipe: blit, geom, color, filter, noise, cutout, bg, bgc, bgcf, bgcfn, bgcfnc).

Random parameters are drawn from the global CPU generator in float64 regardless of the images'
device: the draws are tiny, the host needs them anyway to choose paths and padding, and the same
seed then gives the same augmentations on CPU and GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops import upfirdn2d

# Low-pass decomposition filter of the symlet-6 wavelet (12 taps, sums to sqrt(2)); the published
# method uses it to band-limit the 2x up- and downsampling around the warp.
SYM6_LOWPASS = (
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
)  # fmt: skip

_GEOMETRIC = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
_COLOUR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
_CORRUPTION = ("imgfilter", "noise", "cutout")

# The reference's pipe names (its --augpipe) -> the augmentations each switches on at strength 1.
_GROUPS = {"b": ("xflip", "rotate90", "xint"), "g": ("scale", "rotate", "aniso", "xfrac"), "c": _COLOUR,
           "f": ("imgfilter",), "n": ("noise",), "c2": ("cutout",)}
PIPES: dict[str, tuple[str, ...]] = {
    "blit": _GROUPS["b"], "geom": _GROUPS["g"], "color": _GROUPS["c"], "filter": _GROUPS["f"],
    "noise": _GROUPS["n"], "cutout": _GROUPS["c2"],
    "bg": _GROUPS["b"] + _GROUPS["g"],
    "bgc": _GROUPS["b"] + _GROUPS["g"] + _GROUPS["c"],
    "bgcf": _GROUPS["b"] + _GROUPS["g"] + _GROUPS["c"] + _GROUPS["f"],
    "bgcfn": _GROUPS["b"] + _GROUPS["g"] + _GROUPS["c"] + _GROUPS["f"] + _GROUPS["n"],
    "bgcfnc": _GROUPS["b"] + _GROUPS["g"] + _GROUPS["c"] + _GROUPS["f"] + _GROUPS["n"] + _GROUPS["c2"],
}

# Image-space filtering: four octave bands (highest first) that sum to the identity, so gains of 1 leave
# an image unchanged. Built from Hann-windowed sinc low-passes at 1/2, 1/4 and 1/8 of Nyquist: neighbouring
# bands cross at half amplitude at each edge; 33 taps keep the lowest band below 1% (-45 dB) from 1/4 of
# Nyquist up (measured from band_filters' frequency response).
FILTER_TAPS = 33
# Share of an image's power expected in each band (highest first): natural images carry about the same
# power per octave, and the lowest band also holds the mean colour, which dominates. Band gains are
# rescaled so the expected power of a filtered image stays that of the original.
FILTER_BAND_POWER = (1 / 13, 1 / 13, 1 / 13, 10 / 13)

# Unit vector along the luma axis (equal R, G, B) in homogeneous colour coordinates.
_LUMA_AXIS = (1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3))

# How far (in original pixels) the warped region extends past the output on each side, so that
# the downsampling filter (12 taps at 2x = 3 pixels each side) sees real samples at the borders.
_WARP_EXTEND = 3
# Extra reflect padding (original pixels) beyond the area the warp reads: upsampling filter
# support (3 pixels) plus one pixel of bilinear footprint.
_WARP_SUPPORT = 4


# --------------------------------------------------------------------------------------------------
# Elementary matrices (pure functions). Arguments are floats or tensors that broadcast together;
# results are float64 tensors [..., 3, 3] (2-D) or [..., 4, 4] (colour).


def _as_f64(*values: float | Tensor) -> list[Tensor]:
    tensors = [torch.as_tensor(v, dtype=torch.float64) for v in values]
    return list(torch.broadcast_tensors(*tensors))


def _matrix(rows: Sequence[Sequence[float | Tensor]], like: Tensor) -> Tensor:
    """Stack a nested list of scalars/tensors (each broadcast to ``like``) into [..., R, C]."""
    cells = [[torch.as_tensor(v, dtype=torch.float64).expand_as(like) for v in row] for row in rows]
    return torch.stack([torch.stack(row, dim=-1) for row in cells], dim=-2)


def translate2d(tx: float | Tensor, ty: float | Tensor) -> Tensor:
    """Homogeneous 2-D translation by (tx, ty) pixels: [..., 3, 3]."""
    tx, ty = _as_f64(tx, ty)
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], tx)


def scale2d(sx: float | Tensor, sy: float | Tensor) -> Tensor:
    """Homogeneous 2-D scaling about the origin: [..., 3, 3]."""
    sx, sy = _as_f64(sx, sy)
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], sx)


def rotate2d(theta: float | Tensor) -> Tensor:
    """Homogeneous 2-D rotation by ``theta`` radians, ``[[cos, -sin], [sin, cos]]`` in (x, y): [..., 3, 3]."""
    (theta,) = _as_f64(theta)
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], theta)


def translate3d(tx: float | Tensor, ty: float | Tensor, tz: float | Tensor) -> Tensor:
    """Homogeneous 3-D translation (adds tx, ty, tz to R, G, B): [..., 4, 4]."""
    tx, ty, tz = _as_f64(tx, ty, tz)
    return _matrix([[1, 0, 0, tx], [0, 1, 0, ty], [0, 0, 1, tz], [0, 0, 0, 1]], tx)


def scale3d(sx: float | Tensor, sy: float | Tensor, sz: float | Tensor) -> Tensor:
    """Homogeneous 3-D scaling about the origin: [..., 4, 4]."""
    sx, sy, sz = _as_f64(sx, sy, sz)
    return _matrix([[sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1]], sx)


def rotate3d(axis: Sequence[float], theta: float | Tensor) -> Tensor:
    """Homogeneous 3-D rotation by ``theta`` radians about the unit ``axis`` (Rodrigues): [..., 4, 4]."""
    (theta,) = _as_f64(theta)
    ax, ay, az = (float(a) for a in axis)
    if not math.isclose(ax * ax + ay * ay + az * az, 1.0, rel_tol=1e-9):
        raise ValueError(f"rotate3d needs a unit axis, got {tuple(axis)}")
    c, s = torch.cos(theta), torch.sin(theta)
    d = 1 - c
    return _matrix(
        [
            [ax * ax * d + c, ax * ay * d - az * s, ax * az * d + ay * s, 0],
            [ay * ax * d + az * s, ay * ay * d + c, ay * az * d - ax * s, 0],
            [az * ax * d - ay * s, az * ay * d + ax * s, az * az * d + c, 0],
            [0, 0, 0, 1],
        ],
        theta,
    )


def _axis_projector(axis: Sequence[float]) -> Tensor:
    """[4, 4] projector onto ``axis`` in the RGB block (the homogeneous entry is left at zero)."""
    v = torch.tensor([*axis, 0.0], dtype=torch.float64)
    return torch.outer(v, v)


def reflect3d(axis: Sequence[float], amount: float | Tensor) -> Tensor:
    """``I - 2 * amount * v v^T``; amount 1 mirrors colours in the plane normal to ``axis``: [..., 4, 4]."""
    (amount,) = _as_f64(amount)
    return torch.eye(4, dtype=torch.float64) - 2 * amount[..., None, None] * _axis_projector(axis)


def saturate3d(axis: Sequence[float], s: float | Tensor) -> Tensor:
    """Keep the component along ``axis`` and scale the orthogonal part by ``s``: [..., 4, 4]."""
    (s,) = _as_f64(s)
    vvt = _axis_projector(axis)
    eye = torch.eye(4, dtype=torch.float64)
    # The homogeneous row/column must stay 1, so only the RGB block is scaled.
    rgb = torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64))
    return eye - rgb + vvt + (rgb - vvt) * s[..., None, None]


# --------------------------------------------------------------------------------------------------
# Applying matrices to images.


def _reflect_index(idx: Tensor, size: int) -> Tensor:
    """Map integer indices into [0, size) by mirror reflection without repeating the edge pixel."""
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx > size - 1, period - idx, idx)


def _lattice_indices(inv: Tensor, height: int, width: int) -> Tensor | None:
    """Source pixel index per output pixel for pixel-permuting inverse maps, or None if any is off-lattice.

    inv: float64 [n, 3, 3] output -> input maps. Returns int64 [n, H * W] flat indices into [H, W].
    """
    xs = torch.arange(width, dtype=torch.float64) + 0.5 - width / 2
    ys = torch.arange(height, dtype=torch.float64) + 0.5 - height / 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([gx.reshape(-1), gy.reshape(-1), torch.ones(height * width, dtype=torch.float64)])
    src = inv[:, :2, :] @ coords  # [n, 2, H * W], centred coordinates
    col = src[:, 0] - 0.5 + width / 2
    row = src[:, 1] - 0.5 + height / 2
    col_i, row_i = col.round(), row.round()
    if (col - col_i).abs().max() > 1e-6 or (row - row_i).abs().max() > 1e-6:
        return None
    col_i = _reflect_index(col_i.to(torch.int64), width)
    row_i = _reflect_index(row_i.to(torch.int64), height)
    return row_i * width + col_i


def permute_pixels(images: Tensor, inv: Tensor) -> Tensor | None:
    """Apply pixel-permuting inverse maps exactly (reflecting at the borders) by a gather.

    images: [n, C, H, W]; inv: float64 [n, 3, 3]. Returns None when some map does not send pixel
    centres to pixel centres (e.g. a 90-degree turn of a non-square image); use ``warp`` then.
    """
    n, c, h, w = images.shape
    flat = _lattice_indices(inv, h, w)
    if flat is None:
        return None
    flat = flat.to(images.device)[:, None, :].expand(n, c, h * w)
    return images.reshape(n, c, h * w).gather(2, flat).reshape(n, c, h, w)


def _warp_padding(inv: Tensor, height: int, width: int) -> tuple[int, int, int, int]:
    """Reflect padding (left, right, top, bottom) so the warp reads only real or mirrored pixels."""
    ex, ey = width / 2 + _WARP_EXTEND, height / 2 + _WARP_EXTEND
    corners = torch.tensor([[-ex, -ey, 1], [ex, -ey, 1], [ex, ey, 1], [-ex, ey, 1]], dtype=torch.float64)
    src = corners @ inv[:, :2, :].transpose(1, 2)  # [n, 4, 2]
    lo = src.amin(dim=(0, 1))
    hi = src.amax(dim=(0, 1))
    pads = [
        -lo[0] - width / 2,
        hi[0] - width / 2,
        -lo[1] - height / 2,
        hi[1] - height / 2,
    ]
    # F.pad's reflect mode cannot pad by a full image size; beyond that grid_sample reads zeros.
    limits = [width - 1, width - 1, height - 1, height - 1]
    return tuple(  # type: ignore[return-value]
        int(min(max(math.ceil(float(p)) + _WARP_SUPPORT, 0), limit)) for p, limit in zip(pads, limits)
    )


def warp(images: Tensor, inv: Tensor, lowpass: Sequence[float] = SYM6_LOWPASS) -> Tensor:
    """Resample images through inverse maps with the anti-aliased warp of the published method.

    images: [n, C, H, W]; inv: float64 [n, 3, 3] output -> input maps in centred pixel coordinates.
    Reflect-pad, upsample 2x with the low-pass filter, bilinear grid_sample at 2x the output
    resolution, then low-pass downsample 2x. Differentiable twice with respect to ``images``.
    """
    n, c, h, w = images.shape
    if inv.shape != (n, 3, 3):
        raise ValueError(f"warp needs one 3x3 matrix per image, got {tuple(inv.shape)} for {n} images")
    pad_l, pad_r, pad_t, pad_b = _warp_padding(inv, h, w)
    padded = F.pad(images, [pad_l, pad_r, pad_t, pad_b], mode="reflect")
    hp, wp = padded.shape[2:]
    f = upfirdn2d.setup_filter(list(lowpass), device=images.device)
    upsampled = upfirdn2d.upsample2d(padded, f, up=2)  # [n, C, 2 * hp, 2 * wp]

    # theta maps normalised output coordinates of the extended 2x grid to normalised coordinates
    # of the upsampled, padded image (which spans the same extent as the padded image).
    ex, ey = w / 2 + _WARP_EXTEND, h / 2 + _WARP_EXTEND
    out_to_centred = torch.diag(torch.tensor([ex, ey, 1.0], dtype=torch.float64))
    centred_to_in = torch.tensor(
        [[2 / wp, 0, 2 * (w / 2 + pad_l) / wp - 1], [0, 2 / hp, 2 * (h / 2 + pad_t) / hp - 1], [0, 0, 1]],
        dtype=torch.float64,
    )
    theta = (centred_to_in @ inv @ out_to_centred)[:, :2, :]
    out_h, out_w = 2 * (h + 2 * _WARP_EXTEND), 2 * (w + 2 * _WARP_EXTEND)
    grid = F.affine_grid(
        theta.to(device=images.device, dtype=images.dtype), [n, c, out_h, out_w], align_corners=False
    )
    warped = F.grid_sample(upsampled, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # The symlet is not symmetric (its centroid is 0.4 taps off centre); downsampling with the
    # flipped taps makes the round trip zero-phase, so an identity warp does not shift the image.
    down = upfirdn2d.downsample2d(warped, f, down=2, flip_filter=True)  # [n, C, h + 2e, w + 2e]
    e = _WARP_EXTEND
    return down[:, :, e : e + h, e : e + w]


def color_transform(images: Tensor, matrices: Tensor) -> Tensor:
    """Apply one homogeneous 4x4 colour matrix per image. images: [n, 3 or 1, H, W]; matrices [n, 4, 4].

    A single-channel image is treated as grey (R = G = B) and the mean of the transformed RGB is kept.
    """
    n, c, h, w = images.shape
    m = matrices.to(device=images.device, dtype=images.dtype)
    flat = images.reshape(n, c, h * w)
    if c == 3:
        out = m[:, :3, :3] @ flat + m[:, :3, 3:]
    elif c == 1:
        gain = m[:, :3, :3].sum(dim=2).mean(dim=1)[:, None, None]
        offset = m[:, :3, 3].mean(dim=1)[:, None, None]
        out = flat * gain + offset
    else:
        raise ValueError(f"colour augmentation needs 1 or 3 channels, got {c}")
    return out.reshape(n, c, h, w)


def _lowpass(cutoff: float, taps: int) -> Tensor:
    """A Hann-windowed sinc low-pass with unit DC gain; `cutoff` as a fraction of Nyquist. float64 [taps]."""
    t = torch.arange(taps, dtype=torch.float64) - (taps - 1) / 2
    h = torch.sinc(cutoff * t) * torch.hann_window(taps + 2, periodic=False, dtype=torch.float64)[1:-1]
    return h / h.sum()


def band_filters(taps: int = FILTER_TAPS) -> Tensor:
    """float64 [4, taps]: the octave bands (highest first); their sum is the unit impulse."""
    delta = torch.zeros(taps, dtype=torch.float64)
    delta[taps // 2] = 1
    lows = [delta, *(_lowpass(c, taps) for c in (1 / 2, 1 / 4, 1 / 8))]
    return torch.stack([lows[0] - lows[1], lows[1] - lows[2], lows[2] - lows[3], lows[3]])


def filter_separable(images: Tensor, taps: Tensor) -> Tensor:
    """Filter each image by its own symmetric 1-D filter along x, then y, mirroring at the borders.

    images: [n, C, H, W]; taps: float64 [n, K] with K odd. Differentiable twice (a grouped conv).
    """
    n, c, h, w = images.shape
    k = taps.shape[1]
    weight = taps.to(device=images.device, dtype=images.dtype).repeat_interleave(c, dim=0)  # [n * C, K]
    x = images.reshape(1, n * c, h, w)
    cols = _reflect_index(torch.arange(-(k // 2), w + k // 2), w).to(images.device)
    x = F.conv2d(x[:, :, :, cols], weight[:, None, None, :], groups=n * c)
    rows = _reflect_index(torch.arange(-(k // 2), h + k // 2), h).to(images.device)
    x = F.conv2d(x[:, :, rows, :], weight[:, None, :, None], groups=n * c)
    return x.reshape(n, c, h, w)


def cutout_mask(centre: Tensor, size: float, chosen: Tensor, height: int, width: int) -> Tensor:
    """float64 [n, 1, H, W]: 0 inside a square of side `size` (fraction of the image) around `centre`
    ([n, 2], x and y in [0, 1]) for the chosen images, 1 elsewhere."""
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) / height
    outside_x = (xs[None, :] - centre[:, :1]).abs() >= size / 2           # [n, W]
    outside_y = (ys[None, :] - centre[:, 1:]).abs() >= size / 2           # [n, H]
    keep = outside_x[:, None, :] | outside_y[:, :, None] | ~chosen[:, None, None]
    return keep[:, None].to(torch.float64)


# --------------------------------------------------------------------------------------------------
# The pipe.


def _chosen(n: int, prob: float) -> Tensor:
    """float64 [n]: 1 where an image takes an augmentation (probability ``prob``), else 0."""
    return (torch.rand(n, dtype=torch.float64) < prob).to(torch.float64)


def _lognormal2(n: int, std: float, chosen: Tensor) -> Tensor:
    """2 ** N(0, std) where chosen, else 1."""
    return torch.exp2(torch.randn(n, dtype=torch.float64) * std * chosen)


class AugmentPipe(nn.Module):
    """The ADA augmentation pipe; ``p`` (a buffer) scales every augmentation's probability."""

    def __init__(
        self,
        xflip: float = 0,  # Strength multiplier of: horizontal flip.
        rotate90: float = 0,  # 90-degree rotations (0, 90, 180 or 270, uniform).
        xint: float = 0,  # Integer translation.
        xint_max: float = 0.125,  # Integer translation range, fraction of image size (uniform).
        scale: float = 0,  # Isotropic scaling.
        rotate: float = 0,  # Arbitrary rotation (applied twice, before and after aniso).
        aniso: float = 0,  # Anisotropic scaling.
        xfrac: float = 0,  # Fractional translation.
        scale_std: float = 0.2,  # log2 standard deviation of isotropic scaling.
        rotate_max: float = 1,  # Rotation range, in half turns (uniform).
        aniso_std: float = 0.2,  # log2 standard deviation of anisotropic scaling.
        xfrac_std: float = 0.125,  # Fractional translation std, fraction of image size.
        brightness: float = 0,  # Brightness offset.
        contrast: float = 0,  # Contrast scaling.
        lumaflip: float = 0,  # Mirror of colours through the plane normal to the luma axis.
        hue: float = 0,  # Hue rotation about the luma axis.
        saturation: float = 0,  # Saturation scaling.
        brightness_std: float = 0.2,  # Standard deviation of the brightness offset.
        contrast_std: float = 0.5,  # log2 standard deviation of contrast scaling.
        hue_max: float = 1,  # Hue rotation range, in half turns (uniform).
        saturation_std: float = 1,  # log2 standard deviation of saturation scaling.
        imgfilter: float = 0,  # Image-space filtering: each frequency band amplified or attenuated.
        imgfilter_std: float = 1,  # log2 standard deviation of a band's gain.
        noise: float = 0,  # Additive RGB noise.
        noise_std: float = 0.1,  # Its standard deviation is |N(0, noise_std)| per image.
        cutout: float = 0,  # A square of the image set to zero.
        cutout_size: float = 0.5,  # Side of that square, fraction of the image side.
    ) -> None:
        super().__init__()
        settings = dict(locals())  # the keyword arguments, plus self and __class__ (from super())
        del settings["self"], settings["__class__"]
        for name, value in settings.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"AugmentPipe {name} must be a finite number >= 0, got {value!r}")
            setattr(self, name, float(value))
        self.register_buffer("p", torch.zeros([]))

    def extra_repr(self) -> str:
        names = (*_GEOMETRIC, *_COLOUR, *_CORRUPTION)
        on = [f"{k}={getattr(self, k):g}" for k in names if getattr(self, k) > 0]
        return ", ".join(on)

    def _geometry(self, n: int, height: int, width: int, p: float) -> tuple[Tensor, Tensor]:
        """Inverse maps float64 [n, 3, 3] and a bool [n] mask of images needing the resampling warp."""
        inv = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
        fractional = torch.zeros(n, dtype=torch.bool)
        # Each step appends the inverse of the next forward transform on the right: the forward map
        # is T_k ... T_1, so its inverse is T_1^-1 ... T_k^-1.
        if self.xflip > 0:
            flip = torch.randint(2, (n,), dtype=torch.float64) * _chosen(n, self.xflip * p)
            inv = inv @ scale2d(1 - 2 * flip, 1)
        if self.rotate90 > 0:
            quarter = torch.randint(4, (n,), dtype=torch.float64) * _chosen(n, self.rotate90 * p)
            inv = inv @ rotate2d(-math.pi / 2 * quarter)
        if self.xint > 0:
            t = (torch.rand(n, 2, dtype=torch.float64) * 2 - 1) * self.xint_max
            t = t * _chosen(n, self.xint * p)[:, None]
            inv = inv @ translate2d(-torch.round(t[:, 0] * width), -torch.round(t[:, 1] * height))
        if self.scale > 0:
            chosen = _chosen(n, self.scale * p)
            s = _lognormal2(n, self.scale_std, chosen)
            inv, fractional = inv @ scale2d(1 / s, 1 / s), fractional | (chosen > 0)
        # Rotation is applied twice (around aniso), each with the probability that makes the chance
        # of at least one rotation equal to strength * p.
        p_rot = 1 - math.sqrt(max(0.0, 1 - min(self.rotate * p, 1.0)))
        if self.rotate > 0:
            chosen = _chosen(n, p_rot)
            theta = (torch.rand(n, dtype=torch.float64) * 2 - 1) * math.pi * self.rotate_max * chosen
            inv, fractional = inv @ rotate2d(-theta), fractional | (chosen > 0)
        if self.aniso > 0:
            chosen = _chosen(n, self.aniso * p)
            s = _lognormal2(n, self.aniso_std, chosen)
            inv, fractional = inv @ scale2d(1 / s, s), fractional | (chosen > 0)
        if self.rotate > 0:
            chosen = _chosen(n, p_rot)
            theta = (torch.rand(n, dtype=torch.float64) * 2 - 1) * math.pi * self.rotate_max * chosen
            inv, fractional = inv @ rotate2d(-theta), fractional | (chosen > 0)
        if self.xfrac > 0:
            chosen = _chosen(n, self.xfrac * p)
            t = torch.randn(n, 2, dtype=torch.float64) * self.xfrac_std * chosen[:, None]
            inv, fractional = (
                inv @ translate2d(-t[:, 0] * width, -t[:, 1] * height),
                fractional | (chosen > 0),
            )
        return inv, fractional

    def _color(self, n: int, p: float) -> Tensor:
        """Forward colour matrices float64 [n, 4, 4]."""
        m = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
        if self.brightness > 0:
            b = torch.randn(n, dtype=torch.float64) * self.brightness_std * _chosen(n, self.brightness * p)
            m = translate3d(b, b, b) @ m
        if self.contrast > 0:
            c = _lognormal2(n, self.contrast_std, _chosen(n, self.contrast * p))
            m = scale3d(c, c, c) @ m
        if self.lumaflip > 0:
            flip = torch.randint(2, (n,), dtype=torch.float64) * _chosen(n, self.lumaflip * p)
            m = reflect3d(_LUMA_AXIS, flip) @ m
        if self.hue > 0:
            theta = (torch.rand(n, dtype=torch.float64) * 2 - 1) * math.pi * self.hue_max
            m = rotate3d(_LUMA_AXIS, theta * _chosen(n, self.hue * p)) @ m
        if self.saturation > 0:
            s = _lognormal2(n, self.saturation_std, _chosen(n, self.saturation * p))
            m = saturate3d(_LUMA_AXIS, s) @ m
        return m

    def forward(self, images: Tensor) -> Tensor:
        """Augment a batch [N, C, H, W] (float); returns the same shape, dtype and device."""
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(
                f"AugmentPipe needs float images [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        n, _, h, w = images.shape
        p = float(self.p)
        if not 0 <= p <= 1:
            raise ValueError(f"AugmentPipe p must lie in [0, 1], got {p}")

        inv, fractional = self._geometry(n, h, w, p)
        moved = (inv - torch.eye(3, dtype=torch.float64)).abs().amax(dim=(1, 2)) > 1e-9
        exact = moved & ~fractional
        if exact.any():
            idx = exact.nonzero()[:, 0]
            done = permute_pixels(images[idx.to(images.device)], inv[idx])
            if done is None:  # off-lattice (non-square rot90): resample those too
                fractional = fractional | exact
            else:
                images = images.index_copy(0, idx.to(images.device), done)
        resample = moved & fractional
        if resample.any():
            idx = resample.nonzero()[:, 0]
            dev_idx = idx.to(images.device)
            images = images.index_copy(0, dev_idx, warp(images[dev_idx], inv[idx]))

        colour = self._color(n, p)
        recoloured = (colour - torch.eye(4, dtype=torch.float64)).abs().amax(dim=(1, 2)) > 1e-12
        if recoloured.any():
            idx = recoloured.nonzero()[:, 0]
            dev_idx = idx.to(images.device)
            images = images.index_copy(0, dev_idx, color_transform(images[dev_idx], colour[idx]))
        if self.imgfilter > 0:
            images = self._filter(images, p)
        if self.noise > 0:
            chosen = _chosen(n, self.noise * p)
            sigma = (torch.randn(n, dtype=torch.float64).abs() * self.noise_std * chosen)[:, None, None, None]
            if chosen.any():   # drawn on the CPU like every other parameter: the same on any device
                noise = torch.randn(images.shape, dtype=torch.float64) * sigma
                images = images + noise.to(device=images.device, dtype=images.dtype)
        if self.cutout > 0:
            chosen = _chosen(n, self.cutout * p)
            centre = torch.rand(n, 2, dtype=torch.float64)
            if chosen.any():
                images = images * cutout_mask(centre, self.cutout_size, chosen > 0, h, w).to(
                    device=images.device, dtype=images.dtype)
        return images

    def _filter(self, images: Tensor, p: float) -> Tensor:
        """Each band's gain 2 ** N(0, imgfilter_std) where chosen, rescaled to keep the expected power."""
        n = images.shape[0]
        bands = len(FILTER_BAND_POWER)
        gains = torch.ones(n, bands, dtype=torch.float64)
        for b in range(bands):
            gains[:, b] = _lognormal2(n, self.imgfilter_std, _chosen(n, self.imgfilter * p))
        power = torch.tensor(FILTER_BAND_POWER, dtype=torch.float64)
        gains = gains / (gains.square() * power).sum(dim=1, keepdim=True).sqrt()
        changed = (gains - 1).abs().amax(dim=1) > 1e-12
        if not changed.any():
            return images
        idx = changed.nonzero()[:, 0]
        taps = gains[idx] @ band_filters()                      # [m, FILTER_TAPS]
        dev_idx = idx.to(images.device)
        return images.index_copy(0, dev_idx, filter_separable(images[dev_idx], taps))


def make_pipe(name: str) -> AugmentPipe:
    """The reference's pipe `name` (PIPES: blit, geom, color, filter, noise, cutout, bg, bgc, bgcf, bgcfn,
    bgcfnc): its augmentations at strength 1, the rest off."""
    if name not in PIPES:
        raise ValueError(f"unknown augmentation pipe {name!r}; choose one of {', '.join(PIPES)}")
    return AugmentPipe(**dict.fromkeys(PIPES[name], 1))


def bgc_pipe() -> AugmentPipe:
    """The 'bgc' pipe of the published method: blit, geometric and colour groups at strength 1."""
    return AugmentPipe(
        xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
        brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1,
    )  # fmt: skip


def ada_adjust(p: float, rt: float, target: float, batch_images: int, speed_kimg: float = 500) -> float:
    """New augmentation probability after one ADA step.

    rt is the overfitting heuristic E[sign(D(real))] over the images seen since the last step
    (``batch_images`` of them; the loop adjusts every 4 minibatches). p moves toward more
    augmentation when rt exceeds ``target`` and can cross [0, 1] in ``speed_kimg`` thousand images.
    """
    if not all(math.isfinite(v) for v in (p, rt, target, speed_kimg)):
        raise ValueError(f"ada_adjust needs finite numbers, got p={p}, rt={rt}, target={target}")
    if speed_kimg <= 0 or batch_images < 0:
        raise ValueError(
            f"ada_adjust needs speed_kimg > 0 and batch_images >= 0, got {speed_kimg}, {batch_images}"
        )
    step = float(np.sign(rt - target)) * batch_images / (speed_kimg * 1000)
    return min(max(p + step, 0.0), 1.0)
