"""Vector quantizer: nearest codebook entry, straight-through gradient, codebook + commitment losses.

    loss = ||sg[z_e] - e||^2  +  beta * ||z_e - sg[e]||^2
           codebook term          commitment term (beta belongs here)

Codebook health: codes are low-dimensional and (optionally) l2-normalised, so the nearest-neighbour
search happens on the unit sphere, where every code stays competitive; codes that go unused are
restarted onto recent encoder outputs (``restart_dead_codes``); ``kmeans_init`` seeds the codebook
from data before the first step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (B, D, h, w), straight-through: forward = codes, backward = identity to z_e
    codes: torch.Tensor  # (B, h, w) int64
    codebook_loss: torch.Tensor  # scalar
    commitment_loss: torch.Tensor  # scalar, unweighted (beta is applied in loss())
    perplexity: torch.Tensor  # scalar, exp(entropy) of this batch's code histogram

    def loss(self, beta: float) -> torch.Tensor:
        return self.codebook_loss + beta * self.commitment_loss


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size: int, codebook_dim: int, l2_normalize: bool = True):
        super().__init__()
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.l2_normalize = l2_normalize
        self.codebook = nn.Embedding(codebook_size, codebook_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        # Exponential moving average of how often each code is picked (training only); drives restarts.
        self.register_buffer("usage", torch.ones(codebook_size), persistent=True)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.l2_normalize else x

    def embeddings(self) -> torch.Tensor:
        return self._normalize(self.codebook.weight)  # (K, D)

    def _nearest_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """flat (N, D), already normalised if l2 -> (N,) ids of the nearest code by Euclidean distance."""
        # In fp32 whatever the autocast: under bf16 the argmin between nearby unit vectors would be
        # decided by rounding (about 5% of codes differ with 8192 codes), and codes would depend on precision.
        with torch.autocast(flat.device.type, enabled=False):
            flat = flat.float()
            codebook = self.embeddings().float()  # (K, D)
            # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 does not change the argmin.
            distances = codebook.pow(2).sum(1)[None, :] - 2 * flat @ codebook.t()  # (N, K)
        return distances.argmin(dim=1)

    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        B, D, h, w = z_e.shape
        z = self._normalize(z_e.permute(0, 2, 3, 1).float())  # (B, h, w, D)
        flat = z.reshape(-1, D)  # (N, D)
        with torch.no_grad():
            codes = self._nearest_codes(flat)  # (N,)
        e = self.embeddings()[codes].view(B, h, w, D)  # (B, h, w, D)
        codebook_loss = F.mse_loss(e, z.detach())  # moves only the codebook
        commitment_loss = F.mse_loss(z, e.detach())  # moves only the encoder
        quantized = z + (e - z).detach()  # straight-through estimator
        counts = torch.bincount(codes, minlength=self.codebook_size).float()  # (K,)
        if self.training:
            with torch.no_grad():
                synced = counts.clone()
                if _distributed():
                    dist.all_reduce(synced)
                self.usage.mul_(0.99).add_(synced, alpha=0.01)
        probs = counts / counts.sum().clamp_min(1)
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
        return QuantizerOutput(
            quantized=quantized.permute(0, 3, 1, 2).to(z_e.dtype),
            codes=codes.view(B, h, w),
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            perplexity=perplexity,
        )

    @torch.no_grad()
    def codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """z_e (B, D, h, w) -> (B, h, w) ids of the nearest codes (no losses, no usage update)."""
        B, D, h, w = z_e.shape
        z = self._normalize(z_e.permute(0, 2, 3, 1).reshape(-1, D).float())  # (N, D)
        return self._nearest_codes(z).view(B, h, w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) -> quantized vectors (B, D, h, w)."""
        return self.embeddings()[codes].permute(0, 3, 1, 2)

    @torch.no_grad()
    def restart_dead_codes(
        self, z_e: torch.Tensor, threshold: float, generator: torch.Generator | None = None
    ) -> int:
        """Move codes whose usage EMA fell below ``threshold`` onto random encoder outputs.

        z_e (B, D, h, w) is a recent batch of encoder outputs. Under DDP the new vectors come from
        rank 0 and are broadcast, so every rank's codebook stays identical. Returns codes restarted.
        """
        dead = (self.usage < threshold).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, self.codebook_dim).float()  # (N, D)
        picks = torch.randint(0, flat.shape[0], (dead.numel(),), generator=generator).to(flat.device)
        new_vectors = flat[picks]  # (n_dead, D)
        if _distributed():
            dist.broadcast(new_vectors, src=0)
        self.codebook.weight.data[dead] = new_vectors.to(self.codebook.weight.dtype)
        # Give a restarted code a fair chance before it can be declared dead again.
        self.usage[dead] = self.usage.mean()
        return int(dead.numel())

    @torch.no_grad()
    def kmeans_init(
        self, z_e: torch.Tensor, iterations: int = 10, generator: torch.Generator | None = None
    ) -> None:
        """Seed the codebook with k-means centroids of encoder outputs z_e (B, D, h, w)."""
        flat = self._normalize(z_e.detach().permute(0, 2, 3, 1).reshape(-1, self.codebook_dim).float())
        centroids = self._kmeans_plus_plus(flat, generator)  # (K, D)
        for _ in range(iterations):
            assign = torch.cdist(flat, centroids).argmin(1)  # (N,)
            sums = torch.zeros_like(centroids).index_add_(0, assign, flat)
            counts = torch.bincount(assign, minlength=self.codebook_size).float()[:, None]
            centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
            centroids = self._normalize(centroids)
        if _distributed():
            dist.broadcast(centroids, src=0)
        self.codebook.weight.data.copy_(centroids.to(self.codebook.weight.dtype))

    def _kmeans_plus_plus(self, flat: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """k-means++ seeding: each new centre is drawn with probability proportional to D(x)^2."""
        first = torch.randint(0, flat.shape[0], (1,), generator=generator).item()
        centroids = [flat[first]]
        nearest = (flat - flat[first]).pow(2).sum(1)  # (N,)
        for _ in range(1, self.codebook_size):
            weights = nearest.cpu().double()
            if weights.sum() <= 0:  # fewer distinct points than codes: fall back to uniform picks
                weights = torch.ones_like(weights)
            pick = torch.multinomial(weights, 1, generator=generator).item()
            centroids.append(flat[pick])
            nearest = torch.minimum(nearest, (flat - flat[pick]).pow(2).sum(1))
        return torch.stack(centroids).clone()
