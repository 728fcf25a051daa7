"""Latents of real photos (projection): `corgigan project`.

`project` finds the latent that makes G reproduce a target image, offline: Adam on w (one w shared by all
layers, "W") or on one w per layer ("W+"), starting at the average w, with a little latent noise early on
to get out of poor basins. The loss is a pixel MSE plus a feature distance measured on our own
discriminator's intermediate activations (each block's output, unit-normalised over channels per position,
as LPIPS does with VGG), so nothing is downloaded. LPIPS-VGG joins in only when the user gives the VGG16
weights file (`LpipsVGG.from_files`).

The latent is optimised in units of w's spread: w = w_avg + w_std * u, so one learning rate and one noise
scale fit every model, whatever the scale of its W.

Photos become targets in photos.py. `main` is `corgigan project`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from corgigan.analysis.sampling import save_png, synthesize_w, to_uint8, write_video
from corgigan.detector.detection import DogDetector
from corgigan.errors import StageError
from corgigan.play.photos import CropRule, photo_target, to_tensor
from corgigan.stylegan2.devices import resolve_device
from corgigan.tables import atomic_path, write_json

log = logging.getLogger(__name__)

SPACES = ("w", "w+")


# ----------------------------------------------------------------------------------------------------
# The optimisation


@dataclass(frozen=True)
class ProjectConfig:
    """How `project` optimises; every default is what `corgigan project` uses."""

    steps: int = 200               # Adam steps
    space: str = "w+"              # w: one w for all layers (stays on the model's manifold); w+: per layer
    lr: float = 0.1                # peak learning rate, in units of w's spread
    lr_rampup: float = 0.05        # fraction of the steps over which lr rises linearly from 0
    lr_rampdown: float = 0.25      # fraction of the steps at the end over which lr falls (cosine) to 0
    noise_start: float = 0.05      # latent noise at step 0, in units of w's spread ...
    noise_ramp: float = 0.75       # ... fading (quadratically) to 0 at this fraction of the steps
    pixel_weight: float = 1.0      # weight of the pixel MSE (images in [-1, 1])
    feature_weight: float = 1.0    # weight of the discriminator feature distance (0: off)
    lpips_weight: float = 1.0      # weight of LPIPS-VGG, when an LPIPS network is given
    w_avg_samples: int = 2000      # z drawn to measure w's mean and spread
    seed: int = 0                  # the latent noise and the w statistics draw from this seed

    def validate(self) -> None:
        """ValueError naming the first bad field."""
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {self.space!r}")
        if self.lr <= 0 or self.w_avg_samples < 2:
            raise ValueError("lr must be > 0 and w_avg_samples >= 2")
        if min(self.pixel_weight, self.feature_weight, self.lpips_weight) < 0:
            raise ValueError("loss weights must be >= 0")


@dataclass
class Projection:
    """What `project` found, for a batch of N targets."""

    ws: torch.Tensor                   # [N, num_ws, w_dim] on the CPU, ready for G.synthesis
    space: str
    history: list[dict[str, float]]    # per step: step, lr, loss and its terms (sums over the batch)
    errors: list[dict[str, float]]     # per target, final, without noise: see `reconstruction_errors`
    frames: np.ndarray | None = None   # uint8 [T, N, H, W, 3] reconstructions along the way (record=T)


@dataclass(frozen=True)
class WStats:
    """Mean and spread of W, from `w_avg_samples` mapped z."""

    mean: torch.Tensor      # [w_dim]
    std: float              # root of the mean squared distance to the mean, per dimension


@torch.no_grad()
def w_stats(G: torch.nn.Module, samples: int = 2000, seed: int = 0) -> WStats:
    """Measure W: map `samples` seeded z (labels: random classes when G is conditional)."""
    device = next(G.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, G.z_dim, generator=gen).to(device)
    c = torch.zeros(samples, G.c_dim, device=device)
    if G.c_dim > 0:
        c[torch.arange(samples), torch.randint(G.c_dim, (samples,), generator=gen).to(device)] = 1
    w = G.mapping(z, c)[:, 0].float()                                  # [S, w_dim]
    mean = w.mean(dim=0)
    std = float((w - mean).square().mean().sqrt())
    return WStats(mean=mean.cpu(), std=max(std, 1e-8))


def discriminator_features(D: torch.nn.Module, img: torch.Tensor) -> list[torch.Tensor]:
    """The output of each of D's blocks for `img` [N, C, H, W] (float32, coarsest last).

    Walks D.blocks as D.forward does, without the epilogue: the minibatch-stddev layer there mixes the
    images of a batch, and the logit says "real or not", not "looks like this photo".
    """
    feats = []
    x = None
    for block in D.blocks:
        x = block(x, img if x is None else None, force_fp32=True)   # [N, C_b, res_b / 2, res_b / 2]
        feats.append(x.float())
    return feats


def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit length along channels at every position (the LPIPS normalisation)."""
    return x * torch.rsqrt(x.square().sum(dim=1, keepdim=True) + eps)


def feature_distance(a: list[torch.Tensor], b: list[torch.Tensor],
                     weights: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Per-image distance [N] between two feature stacks: over layers, the spatial mean of the squared
    difference of channel-normalised features (each layer in [0, 4]); `weights` [C] per layer scale the
    channels (LPIPS's calibration), else the layers are averaged."""
    total = 0.0
    for i, (fa, fb) in enumerate(zip(a, b)):
        d = (_unit(fa) - _unit(fb)).square()                              # [N, C, H, W]
        if weights is None:
            total = total + d.sum(dim=1).mean(dim=(1, 2)) / len(a)
        else:
            total = total + (d * weights[i].view(1, -1, 1, 1)).sum(dim=1).mean(dim=(1, 2))
    return total


class LpipsVGG(torch.nn.Module):
    """LPIPS on VGG16 (Zhang et al. 2018): unit-normalised relu1_2 ... relu5_3 features, squared differences
    weighted per channel, averaged over positions, summed over layers. Built from weights files only.
    """

    TAPS = (3, 8, 15, 22, 29)     # torchvision vgg16().features indices of relu1_2, 2_2, 3_3, 4_3, 5_3
    # LPIPS's input scaling: images in [-1, 1] shifted and scaled towards ImageNet's statistics.
    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)

    def __init__(self, features: torch.nn.Module, lin: list[torch.Tensor] | None) -> None:
        super().__init__()
        self.features = features
        self.lin = lin
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1))

    @classmethod
    def from_files(cls, vgg_path: str | Path, lin_path: str | Path | None = None) -> LpipsVGG:
        """VGG16 from torchvision's ImageNet weights file (vgg16-397923af.pth: only `features.*` is used) and,
        optionally, LPIPS's linear calibration (the lpips package's weights/v0.1/vgg.pth); without it every
        channel weighs the same. Both are read with weights_only; a bad file is a StageError."""
        from torchvision.models import vgg as tv_vgg

        # vgg16().features without building (and randomly initialising) the 120M-weight classifier.
        vgg = tv_vgg.make_layers(tv_vgg.cfgs["D"])[: cls.TAPS[-1] + 1]
        sd = _load_weights(vgg_path, "VGG16 weights")
        feats = {k.removeprefix("features."): v for k, v in sd.items() if k.startswith("features.")}
        try:
            vgg.load_state_dict(feats, strict=True)
        except RuntimeError as e:
            raise StageError(f"{vgg_path}: not torchvision's VGG16 weights ({str(e).splitlines()[0]})") from e
        lin = None
        if lin_path is not None:
            found: dict[int, torch.Tensor] = {}
            for k, v in _load_weights(lin_path, "LPIPS linear weights").items():
                m = re.search(r"lin(\d)\.(?:model\.1\.)?weight$", k)
                if m:
                    found[int(m.group(1))] = v.detach().float().flatten()
            want = [vgg[t - 1].out_channels for t in cls.TAPS]
            if sorted(found) != list(range(5)) or [found[i].numel() for i in range(5)] != want:
                raise StageError(f"{lin_path}: not LPIPS's VGG linear weights (lin0..lin4, {want} channels)")
            lin = [found[i] for i in range(5)]
        return cls(vgg.eval().requires_grad_(False), lin)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distance [N] between images a, b [N, 3, H, W] in [-1, 1] (resized to 64..256 px first)."""
        side = a.shape[-1]
        target = min(max(side, 64), 256)   # VGG's 5 stages need >= 32 px; past 256 px: cost, no gain
        fa, fb = [], []
        for img, out in ((a, fa), (b, fb)):
            if img.shape[1] == 1:
                img = img.repeat(1, 3, 1, 1)
            if side != target:
                img = F.interpolate(img, size=(target, target), mode="area" if side > target else "bilinear",
                                    align_corners=None if side > target else False)
            x = (img - self.shift) / self.scale
            for i, layer in enumerate(self.features):
                x = layer(x)
                if i in self.TAPS:
                    out.append(x)
        weights = [w.to(a.device) for w in self.lin] if self.lin is not None else None
        d = feature_distance(fa, fb, weights)
        return d if weights is not None else d * len(self.TAPS)   # a sum over layers, as LPIPS


def _load_weights(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: {what} file not found")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # not a torch file, or one that asks for code: refused either way
        raise StageError(f"{path}: cannot read {what} with weights_only ({type(e).__name__})") from e
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise StageError(f"{path}: {what} must be a state dict of tensors")
    return sd


def _lr_at(t: float, cfg: ProjectConfig) -> float:
    """Learning rate at progress t in [0, 1): linear ramp up, flat, cosine ramp down."""
    down = min(1.0, (1.0 - t) / cfg.lr_rampdown) if cfg.lr_rampdown > 0 else 1.0
    up = min(1.0, t / cfg.lr_rampup) if cfg.lr_rampup > 0 else 1.0
    return cfg.lr * up * (0.5 - 0.5 * math.cos(math.pi * down))


def reconstruction_errors(img: torch.Tensor, target: torch.Tensor, D: torch.nn.Module | None = None,
                          lpips: LpipsVGG | None = None) -> list[dict[str, float]]:
    """Per image: mse and psnr on [0, 1] pixels, d_features (the D feature distance) and lpips when given."""
    with torch.no_grad():
        # The generator's output overshoots [-1, 1]; pictures are saved clamped, so errors are measured so.
        mse = ((img.clamp(-1, 1) - target.clamp(-1, 1)) / 2).square().mean(dim=(1, 2, 3))   # [N], in [0, 1]
        out = [{"mse": float(m), "psnr": float(10 * math.log10(1 / max(float(m), 1e-12)))} for m in mse]
        if D is not None:
            for row, d in zip(out, feature_distance(discriminator_features(D, img),
                                                    discriminator_features(D, target))):
                row["d_features"] = float(d)
        if lpips is not None:
            for row, d in zip(out, lpips(img, target)):
                row["lpips"] = float(d)
    return out


def project(
    G: torch.nn.Module,                       # the generator (G_ema), eval, no grad
    target: torch.Tensor,                     # [N, C, H, W] at G's resolution, in [-1, 1]
    D: torch.nn.Module | None = None,         # feature loss from its blocks; None: pixels (and LPIPS) only
    cfg: ProjectConfig | None = None,        # None: ProjectConfig()
    lpips: LpipsVGG | None = None,            # add LPIPS-VGG to the loss
    record: int = 0,                          # keep this many evenly spaced reconstructions (for a video)
    on_step: Callable[[int, torch.Tensor], None] | None = None,  # after each step: (step, ws [N, num_ws, w])
    lock: contextlib.AbstractContextManager | None = None,       # held around each step (a shared model)
    stats: WStats | None = None,              # W statistics, when already measured
) -> Projection:
    """Find ws that make G reproduce `target`; each of the N targets gets its own latent."""
    cfg = cfg or ProjectConfig()
    cfg.validate()
    device = next(G.parameters()).device
    res, channels = G.img_resolution, G.img_channels
    if target.ndim != 4 or tuple(target.shape[1:]) != (channels, res, res):
        raise ValueError(f"target must be [N, {channels}, {res}, {res}], got {list(target.shape)}")
    lock = lock if lock is not None else contextlib.nullcontext()
    target = target.to(device, torch.float32)
    N = target.shape[0]
    with lock:
        stats = stats or w_stats(G, cfg.w_avg_samples, cfg.seed)
        use_d = D is not None and cfg.feature_weight > 0
        if use_d:
            with torch.no_grad():
                target_feats = discriminator_features(D, target)
    mean, std = stats.mean.to(device), stats.std
    layers = 1 if cfg.space == "w" else G.num_ws
    u = torch.zeros(N, layers, G.w_dim, device=device, requires_grad=True)   # w = mean + std * u
    opt = torch.optim.Adam([u], betas=(0.9, 0.999), lr=cfg.lr)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    keep = set(np.linspace(0, cfg.steps - 1, record).round().astype(int).tolist()) if record else set()
    frames: list[np.ndarray] = []

    def ws_of(u_: torch.Tensor) -> torch.Tensor:
        return (mean + std * u_).expand(N, G.num_ws, G.w_dim)               # [N, num_ws, w_dim]

    for step in range(cfg.steps):
        t = step / cfg.steps
        lr = _lr_at(t, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        noise_scale = cfg.noise_start * max(0.0, 1.0 - t / cfg.noise_ramp) ** 2 if cfg.noise_ramp > 0 else 0.0
        with lock:
            noise = torch.randn(u.shape, generator=gen, device=device) * noise_scale
            img = G.synthesis(ws_of(u + noise), noise_mode="const", force_fp32=True)  # [N, C, res, res]
            pixel = (img - target).square().mean(dim=(1, 2, 3)).sum()
            loss = cfg.pixel_weight * pixel
            row = {"step": step, "lr": lr, "pixel": pixel.item()}
            if use_d:
                feat = feature_distance(discriminator_features(D, img), target_feats).sum()
                loss = loss + cfg.feature_weight * feat
                row["features"] = feat.item()
            if lpips is not None and cfg.lpips_weight > 0:
                lp = lpips(img, target).sum()
                loss = loss + cfg.lpips_weight * lp
                row["lpips"] = lp.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        row["loss"] = loss.item()
        history.append(row)
        if step in keep:
            frames.append(to_uint8(img.detach()))
        if on_step is not None:
            on_step(step, ws_of(u.detach()).cpu())
    ws = ws_of(u.detach())
    with lock, torch.no_grad():
        final = G.synthesis(ws, noise_mode="const", force_fp32=True)
        errors = reconstruction_errors(final, target, D, lpips)
    return Projection(ws=ws.cpu(), space=cfg.space, history=history, errors=errors,
                      frames=np.stack(frames) if frames else None)


# ----------------------------------------------------------------------------------------------------
# `corgigan project`


def write_outputs(out: Path, name: str, target: Image.Image, result: Projection, index: int,
                  how: dict[str, Any], G: torch.nn.Module, fps: int = 12) -> Path:
    """Write one target's files into out/name/: target.png, projected.png, projected_w.npz (ws
    [num_ws, w_dim] float32 and the space), projection.mp4 (target | reconstruction over the steps; a GIF
    without ffmpeg) and errors.json (final errors, crop, and the loss per step)."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    ws = result.ws[index:index + 1]
    save_png(target.convert("RGB"), folder / "target.png")
    save_png(Image.fromarray(synthesize_w(G, ws)[0]), folder / "projected.png")
    with atomic_path(folder / "projected_w.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, ws=ws[0].numpy().astype(np.float32), space=np.array(result.space))
    if result.frames is not None:
        tgt = np.asarray(target.convert("RGB"))
        # Side by side as the encoder takes them: no second copy of the recorded steps.
        frames = (np.concatenate([tgt, f[index]], axis=1) for f in result.frames)
        write_video(frames, folder / "projection.mp4", fps=fps)
    # Per-step terms are sums over the batch; with one target per call they are this target's.
    report = {"space": result.space, "steps": len(result.history), **result.errors[index], "crop": how,
              "history": [{k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}
                          for row in result.history]}
    write_json(report, folder / "errors.json")
    return folder


def main(photos: list[Path], checkpoint: Path, out: Path, cfg: ProjectConfig, rule: CropRule | None,
         detector: Path | None, detect_kwargs: dict[str, Any], lpips_files: tuple[Path, Path | None] | None,
         device: str, video: bool = True) -> list[dict[str, Any]]:
    """`corgigan project`: project each photo; return each one's final errors."""
    from corgigan.analysis import sampling

    try:
        cfg.validate()
    except ValueError as e:
        raise StageError(f"project: {e}") from e
    dev = resolve_device(device)
    if cfg.feature_weight > 0:
        G, D, _ = sampling.load_with_discriminator(checkpoint, dev)
    else:
        (G, _), D = sampling.load(checkpoint, dev), None
    if D is None and cfg.feature_weight > 0:
        log.warning("%s has no discriminator: pixel loss only (--lpips adds a perceptual one)", checkpoint)
    lpips = LpipsVGG.from_files(*lpips_files).to(dev) if lpips_files else None
    rule = rule or CropRule(min_crop=G.img_resolution)
    dogs = DogDetector.load(detector, **detect_kwargs) if detector else None
    stats = w_stats(G, cfg.w_avg_samples, cfg.seed)
    results = []
    names: set[str] = set()
    for photo in photos:
        if not photo.is_file():
            raise StageError(f"{photo}: no such photo")
        target, how = photo_target(photo.read_bytes(), G.img_resolution, rule, dogs, G.img_channels,
                                   name=str(photo))
        name = photo.stem
        while name in names:   # two photos of the same name from different folders
            name += "_"
        names.add(name)
        log.info("%s: %s crop %s -> %d px; %d steps in %s", photo, how["mode"], how["crop"], G.img_resolution,
                 cfg.steps, cfg.space.upper())
        result = project(G, to_tensor(target), D, cfg, lpips, record=min(cfg.steps, 48) if video else 0,
                         stats=stats)
        folder = write_outputs(out, name, target, result, 0, how, G)
        errors = result.errors[0]
        log.info("%s: mse %.5f, psnr %.2f dB%s -> %s", photo, errors["mse"], errors["psnr"],
                 f", D features {errors['d_features']:.4f}" if "d_features" in errors else "", folder)
        results.append({"photo": str(photo), **errors})
    return results
