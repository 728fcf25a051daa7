"""StyleGAN2 losses: non-saturating logistic GAN loss, lazy R1 and path-length regularisation.

One training step runs phases in order; each phase accumulates gradients of one network over the
chunks of the global batch. With lazy regularisation (reg_interval k) the main phases run every step
and the regularisation phases every k-th step with gain k; without it the "both" phases carry the loss
and the regularisation together every step.

    Gmain  softplus(-D(G(z)))                          -> G
    Greg   pl_weight * (|J_w^T y| - pl_mean)^2          -> G   (J: image w.r.t. w, y: image-space noise)
    Dmain  softplus(D(G(z))) + softplus(-D(x))          -> D
    Dreg   r1_gamma / 2 * |grad_x D(x)|^2               -> D

The augment pipe (if any) transforms reals and fakes before D, so D never sees an un-augmented image.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

PHASES = ("Gmain", "Greg", "Gboth", "Dmain", "Dreg", "Dboth")

# Stat name -> per-sample values of one chunk (reduced by the loop: mean over chunks, ranks and a tick).
Stats = dict[str, torch.Tensor]


def pl_mean_update(pl_mean: float | torch.Tensor, batch_mean: float | torch.Tensor,
                   decay: float) -> float | torch.Tensor:
    """The running path-length mean after one step: an exponential moving average with weight `decay`."""
    return pl_mean + (batch_mean - pl_mean) * decay


# The first-order passes below ask autograd.grad for the gradient of one input only. The engine then runs
# each convolution's backward for its input alone (convolution_backward's output_mask), skipping the weight
# gradients, which only the second pass needs: what the reference's conv2d_gradfix.no_weight_gradients()
# did by hand for older torch. tests/test_loss.py checks that it stays so; bench_train measures it.


def r1_penalty(logits: torch.Tensor, reals: torch.Tensor) -> torch.Tensor:
    """Squared norm of dD/dx per sample [N]; keeps the graph so the penalty itself can be differentiated."""
    (grads,) = torch.autograd.grad(outputs=[logits.sum()], inputs=[reals], create_graph=True,
                                   only_inputs=True)
    return grads.square().sum(dim=[1, 2, 3])


def path_lengths(img: torch.Tensor, ws: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """|J_w^T y| per sample [N]: the length of the image change along noise y, averaged over the ws."""
    (grads,) = torch.autograd.grad(outputs=[(img * noise).sum()], inputs=[ws], create_graph=True,
                                   only_inputs=True)
    return grads.square().sum(dim=2).mean(dim=1).sqrt()


class StyleGAN2Loss:
    """Computes and back-propagates the loss of one phase over one chunk of the batch."""

    def __init__(
        self,
        G: torch.nn.Module,                       # generator with .mapping, .synthesis, .num_ws, .z_dim
        D: torch.nn.Module,                       # discriminator: D(img, c) -> logits [N, 1]
        augment_pipe: torch.nn.Module | None = None,   # applied to every image D sees
        r1_gamma: float = 10.0,                   # R1 weight
        style_mixing_prob: float = 0.9,           # chance that a sample mixes two latents
        pl_weight: float = 2.0,                   # path-length weight (0: off)
        pl_batch_shrink: int = 2,                 # path-length reg runs on batch // shrink samples
        pl_decay: float = 0.01,                   # running-mean decay of the path length
    ):
        self.G, self.D, self.augment_pipe = G, D, augment_pipe
        self.r1_gamma = r1_gamma
        self.style_mixing_prob = style_mixing_prob
        self.pl_weight = pl_weight
        self.pl_batch_shrink = pl_batch_shrink
        self.pl_decay = pl_decay
        # Running mean of the path length (a float or a 0-d tensor), moved once per step (update_pl_mean).
        self.pl_mean: float | torch.Tensor = 0.0

    def update_pl_mean(self, batch_mean: float | torch.Tensor) -> None:
        """Move the path-length running mean toward this step's mean length (over every sample and rank)."""
        self.pl_mean = pl_mean_update(self.pl_mean, batch_mean, self.pl_decay)

    def generate(self, z: torch.Tensor, c: torch.Tensor, update_emas: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Generate images [N, C, H, W] and their ws [N, num_ws, w_dim], with style mixing."""
        ws = self.G.mapping(z, c, update_emas=update_emas)
        if self.style_mixing_prob > 0:
            n, num_ws = ws.shape[0], ws.shape[1]
            cutoff = torch.randint(1, num_ws, (n, 1), device=ws.device)
            mix = torch.rand(n, 1, device=ws.device) < self.style_mixing_prob
            cutoff = torch.where(mix, cutoff, torch.full_like(cutoff, num_ws))
            ws2 = self.G.mapping(torch.randn_like(z), c, update_emas=False)
            layer = torch.arange(num_ws, device=ws.device)[None, :]
            ws = torch.where((layer >= cutoff)[:, :, None], ws2, ws)
        img = self.G.synthesis(ws)
        return img, ws

    def discriminate(self, img: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Logits [N, 1] of D on augmented images."""
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        return self.D(img, c)

    def accumulate_gradients(self, phase: str, real_img: torch.Tensor, real_c: torch.Tensor,
                             gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float,
                             update_emas: bool = False) -> Stats:
        """Back-propagate `phase`'s loss over this chunk, scaled by `gain`; return per-sample stats.

        real_img is float in [-1, 1]. update_emas lets G's mapping update its w average (the loop asks
        for it on one chunk per step so the average does not depend on how the batch is split).
        """
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r} (one of {PHASES})")
        do_Gmain = phase in ("Gmain", "Gboth")
        do_Gpl = phase in ("Greg", "Gboth") and self.pl_weight > 0
        do_Dmain = phase in ("Dmain", "Dboth")
        do_Dr1 = phase in ("Dreg", "Dboth") and self.r1_gamma > 0
        stats: Stats = {}
        if do_Gmain:
            img, _ = self.generate(gen_z, gen_c)
            logits = self.discriminate(img, gen_c)
            loss = F.softplus(-logits).flatten()
            stats["Loss/scores/fake"] = logits.detach().flatten()
            stats["Loss/G/loss"] = loss.detach()
            loss.mean().mul(gain).backward()
        if do_Gpl:
            stats.update(self._path_length_reg(gen_z, gen_c, gain))
        if do_Dmain:
            stats.update(self._d_fake(gen_z, gen_c, gain, update_emas))
        if do_Dmain or do_Dr1:
            stats.update(self._d_real(real_img, real_c, gain, do_Dmain, do_Dr1))
        if do_Dmain:  # per-sample D loss: one fake and one real term
            stats["Loss/D/loss"] = stats.pop("Loss/D/loss_fake") + stats.pop("Loss/D/loss_real")
        return stats

    def _path_length_reg(self, gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float) -> Stats:
        n = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
        img, ws = self.generate(gen_z[:n], gen_c[:n])
        noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
        lengths = path_lengths(img, ws, noise)
        # The penalty uses the running mean moved toward this chunk (the update the loop will make),
        # so the first steps are not pulled toward the initial 0.
        target = pl_mean_update(self.pl_mean, lengths.detach().mean(), self.pl_decay)
        penalty = (lengths - target).square()
        loss = penalty * self.pl_weight
        # The 0 * img term keeps every synthesis parameter in the graph, so their gradients exist.
        (loss.mean() + img[:, 0, 0, 0].mean() * 0).mul(gain).backward()
        return {"Loss/pl": penalty.detach(), "Loss/G/reg": loss.detach(),
                "Loss/pl_length": lengths.detach()}

    def _d_fake(self, gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float, update_emas: bool) -> Stats:
        with torch.no_grad():
            img, _ = self.generate(gen_z, gen_c, update_emas=update_emas)
        logits = self.discriminate(img, gen_c)
        loss = F.softplus(logits).flatten()
        loss.mean().mul(gain).backward()
        return {"Loss/scores/fake": logits.detach().flatten(), "Loss/D/loss_fake": loss.detach()}

    def _d_real(self, real_img: torch.Tensor, real_c: torch.Tensor, gain: float,
                do_main: bool, do_r1: bool) -> Stats:
        reals = real_img.detach().requires_grad_(do_r1)
        logits = self.discriminate(reals, real_c)
        stats: Stats = {}
        total = torch.zeros([], device=logits.device)
        if do_main:
            loss = F.softplus(-logits).flatten()
            stats["Loss/scores/real"] = logits.detach().flatten()
            stats["Loss/signs/real"] = logits.detach().sign().flatten()
            stats["Loss/D/loss_real"] = loss.detach()
            total = total + loss.mean()
        if do_r1:
            penalty = r1_penalty(logits, reals)
            reg = penalty * (self.r1_gamma / 2)
            stats["Loss/r1"] = penalty.detach()
            stats["Loss/D/reg"] = reg.detach()
            total = total + reg.mean()
        total.mul(gain).backward()
        return stats


def seeded(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from `seed` and integer keys (step, phase, chunk): independent streams."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def sample_latents(n: int, z_dim: int, labels: Callable[[torch.Tensor], torch.Tensor] | None,
                   dataset_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """n latents z [n, z_dim] and conditioning labels [n, c_dim] drawn from the global torch RNG.

    `labels` maps dataset indices to label vectors (None: no labels, c is [n, 0]).
    """
    z = torch.randn(n, z_dim, device=device)
    if labels is None:
        return z, torch.zeros(n, 0, device=device)
    idx = torch.randint(dataset_size, (n,))
    return z, labels(idx).to(device)
