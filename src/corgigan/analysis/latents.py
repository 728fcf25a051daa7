"""How a seed becomes a latent: z from numpy's RandomState(seed), w through G's mapping.

Every picture, direction and edit starts here, so the same seed means the same latent in `generate`,
`explore`, `serve` and `project`, whatever the batch size or device.
"""

from __future__ import annotations

import numpy as np
import torch


def seed_latents(seeds: list[int], z_dim: int) -> torch.Tensor:
    """One z per seed, [N, z_dim], independent of batch size and device."""
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])).float()


@torch.no_grad()
def map_seeds(G: torch.nn.Module, seeds: list[int], psi: float) -> torch.Tensor:
    """W+ latents [N, num_ws, w_dim] for seeds at truncation psi."""
    device = next(G.parameters()).device
    z = seed_latents(seeds, G.z_dim).to(device)
    c = torch.zeros(len(seeds), G.c_dim, device=device)
    return G.mapping(z, c, truncation_psi=psi)


def sample_w(G: torch.nn.Module, seeds: list[int], psi: float, batch: int = 1024) -> torch.Tensor:
    """w [N, w_dim] (on the CPU) for seeds at truncation psi; one w per seed (all ws are equal)."""
    return torch.cat([map_seeds(G, seeds[i:i + batch], psi)[:, 0].cpu()
                      for i in range(0, len(seeds), batch)]) if seeds else torch.zeros(0, G.w_dim)
