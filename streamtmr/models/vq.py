"""Vector quantisation (VQ-VAE style) with a straight-through estimator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VectorQuantizer(nn.Module):
    """Snap each vector ``z[..., D]`` to its nearest of ``num_codes`` learned codes.

    Forward returns ``(z_q, loss, codes)``: ``z_q`` carries the code values forward and the
    gradient of ``z`` backward (straight-through); ``loss`` = codebook term
    ``|sg(z) − e|²`` + ``beta`` · commitment term ``|z − sg(e)|²``; ``codes`` are the indices.
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25):
        super().__init__()
        self.codebook = nn.Embedding(num_codes, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / num_codes, 1.0 / num_codes)
        self.beta = float(beta)
        self.num_codes = num_codes

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e = self.codebook.weight
        dist = (z.pow(2).sum(-1, keepdim=True) - 2 * torch.matmul(z, e.t())
                + e.pow(2).sum(-1))
        codes = dist.argmin(-1)
        q = self.codebook(codes)
        loss = F.mse_loss(q, z.detach()) + self.beta * F.mse_loss(z, q.detach())
        return z + (q - z).detach(), loss, codes

    def stats(self, codes: torch.Tensor) -> dict[str, float]:
        """Codebook perplexity (exp of the code-usage entropy) and the fraction of codes used."""
        counts = torch.bincount(codes.reshape(-1), minlength=self.num_codes).float()
        p = counts / counts.sum().clamp_min(1)
        entropy = -(p * p.clamp_min(1e-12).log()).sum()
        return {"perplexity": float(entropy.exp()), "usage": float((counts > 0).float().mean())}
