"""The VQ-VAE's one config dataclass, saved as ``config.json`` beside ``model.safetensors``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_WIDTH = 8192  # channels of the widest layer: one 3x3 convolution of that width holds 600M weights
MAX_CODEBOOK_SIZE = 1 << 20  # DALL-E used 8192 codes, LlamaGen 16384


@dataclass
class VQVAEConfig:
    resolution: int = 32  # training resolution (the model is convolutional and accepts others)
    in_channels: int = 3
    base_channels: int = 64
    # One entry per resolution level; len - 1 stride-2 stages, so downsampling = 2 ** (len - 1).
    channel_multipliers: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    codebook_size: int = 512
    # Low-dimensional, l2-normalised codes keep nearly the whole codebook in use (ViT-VQGAN, LlamaGen).
    codebook_dim: int = 8
    l2_normalize: bool = True
    beta: float = 0.25  # weight of the commitment term ||z_e - sg[e]||^2 (not of the codebook term)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not self.channel_multipliers:
            raise ValueError("channel_multipliers needs at least one entry.")
        for name in ("resolution", "in_channels", "base_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if min(self.channel_multipliers) < 1:
            raise ValueError(f"channel_multipliers must all be >= 1, got {self.channel_multipliers}.")
        if self.base_channels * max(self.channel_multipliers) > MAX_WIDTH:
            raise ValueError(
                f"base_channels x the largest channel multiplier (the widest layer) must be <= {MAX_WIDTH}, "
                f"got {self.base_channels} x {max(self.channel_multipliers)}."
            )
        if self.num_res_blocks < 0:
            raise ValueError(f"num_res_blocks must be >= 0, got {self.num_res_blocks}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}.")
        if not 2 <= self.codebook_size <= MAX_CODEBOOK_SIZE:
            raise ValueError(f"codebook_size must lie in [2, {MAX_CODEBOOK_SIZE}], got {self.codebook_size}.")
        if self.codebook_dim < 1:
            raise ValueError(f"codebook_dim must be >= 1, got {self.codebook_dim}.")
        if self.resolution % self.downsample_factor != 0:
            raise ValueError(
                f"resolution {self.resolution} is not divisible by the downsampling factor "
                f"{self.downsample_factor}; change resolution or channel_multipliers."
            )
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta}.")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def grid_size(self) -> int:
        return self.resolution // self.downsample_factor
