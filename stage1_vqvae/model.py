"""The VQ-VAE: conv encoder -> vector quantizer -> conv decoder.

pixels (B, 3, H, W) in [-1, 1]
  -> encoder -> z_e (B, D, H/f, W/f) -> quantizer -> codes (B, H/f, W/f), z_q
  -> decoder -> reconstruction (B, 3, H, W)
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minidalle.hub import PretrainedMixin
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.quantizer import QuantizerOutput, VectorQuantizer

# Floats of the widest full-resolution activation per chunk of images encoded or decoded on a CPU:
# 8 MiB, 32 demo-size images (VQVAE._cpu_chunks).
CPU_CHUNK_FLOATS = 1 << 21


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=math.gcd(32, channels), num_channels=channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.block = nn.Sequential(
            _norm(in_channels),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            _norm(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.block(x)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Asymmetric padding keeps an exact 2x reduction with a 3x3 stride-2 kernel.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


# Which rows (columns) of a 3x3 kernel fall on each input row (column) once a nearest-neighbour 2x
# upsampling is folded into the convolution: output row 2i reads input row i-1 through kernel row 0 and row
# i through rows 1 and 2; output row 2i+1 reads row i through kernel rows 0 and 1 and row i+1 through row 2.
_SUBPIXEL_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The folded form pays off in half precision only: on a 2-core AVX-512 CPU it decodes 200 demo images
        # in bf16 about 13% faster (0.19 s against 0.22 s), while in fp32 oneDNN runs its 2x2 kernels so much
        # slower than 3x3 ones that the saved multiply-adds buy nothing. Training keeps the plain form.
        if torch.is_grad_enabled() or x.dtype == torch.float32:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.folded(x)

    def folded(self, x: torch.Tensor) -> torch.Tensor:
        """The same function computed at the input's resolution, (B, C, h, w) -> (B, C, 2h, 2w): each of
        the four output phases (row and column parity) is a 2x2 convolution of the input with the kernel's
        taps summed (_SUBPIXEL_TAPS), all four in one convolution. That is 16 multiply-adds per input
        pixel and channel pair instead of 36, and no upsampled copy of the input.
        """
        batch, _, h, w = x.shape
        weight, out = self.conv.weight, self.conv.out_channels  # (O, C, 3, 3)
        with torch.autocast(x.device.type, enabled=False):  # the taps summed in the weights' precision
            taps = _SUBPIXEL_TAPS.to(weight)  # (2 phases, 2 taps, 3 kernel rows)
            phases = torch.einsum("apk,bql,ockl->abocpq", taps, taps, weight)  # (2, 2, O, C, 2, 2)
        bias = None if self.conv.bias is None else self.conv.bias.repeat(4)  # (4O,)
        grid = F.conv2d(F.pad(x, (1, 1, 1, 1)), phases.reshape(4 * out, -1, 2, 2), bias)  # (B, 4O, h+1, w+1)
        grid = grid.view(batch, 2, 2, out, h + 1, w + 1)
        y = grid.new_empty(batch, out, h, 2, w, 2)  # output row 2i + a, column 2j + b
        for a in (0, 1):
            for b in (0, 1):
                y[:, :, :, a, :, b] = grid[:, a, b, :, a : a + h, b : b + w]
        return y.view(batch, out, 2 * h, 2 * w)


class Encoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        channels = [cfg.base_channels * m for m in cfg.channel_multipliers]
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, channels[0], 3, padding=1)]
        current = channels[0]
        for level, width in enumerate(channels):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(current, width, cfg.dropout))
                current = width
            if level < len(channels) - 1:
                layers.append(Downsample(current))
        layers += [ResBlock(current, current, cfg.dropout), _norm(current), nn.SiLU()]
        layers.append(nn.Conv2d(current, cfg.codebook_dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)  # (B, D, H/f, W/f)


class Decoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        channels = [cfg.base_channels * m for m in cfg.channel_multipliers][::-1]
        current = channels[0]
        layers: list[nn.Module] = [nn.Conv2d(cfg.codebook_dim, current, 3, padding=1)]
        layers.append(ResBlock(current, current, cfg.dropout))
        for level, width in enumerate(channels):
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResBlock(current, width, cfg.dropout))
                current = width
            if level < len(channels) - 1:
                layers.append(Upsample(current))
        layers += [_norm(current), nn.SiLU(), nn.Conv2d(current, cfg.in_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.net(z_q)  # (B, 3, H, W)


@dataclass
class VQVAEOutput:
    reconstruction: torch.Tensor  # (B, 3, H, W)
    z_e: torch.Tensor  # (B, D, h, w), encoder output before quantization
    quantizer: QuantizerOutput

    @property
    def codes(self) -> torch.Tensor:
        return self.quantizer.codes  # (B, h, w)


class VQVAE(PretrainedMixin, nn.Module):
    config_class = VQVAEConfig
    model_type = "minidalle-vqvae"

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = VectorQuantizer(config.codebook_size, config.codebook_dim, config.l2_normalize)
        self.decoder = Decoder(config)

    def forward(self, pixels: torch.Tensor) -> VQVAEOutput:
        z_e = self.encoder(pixels)  # (B, D, h, w)
        quantized = self.quantizer(z_e)
        reconstruction = self.decoder(quantized.quantized)  # (B, 3, H, W)
        return VQVAEOutput(reconstruction=reconstruction, z_e=z_e, quantizer=quantized)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, H, W) in [-1, 1] -> codes (B, h, w), integer ids in raster order."""
        codes = [self.quantizer.codes(self.encoder(part)) for part in self._cpu_chunks(pixels)]
        return torch.cat(codes)  # (B, h, w)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor, compute_dtype: torch.dtype | None = None) -> torch.Tensor:
        """codes (B, h, w) -> pixels (B, 3, H, W) in [-1, 1], in the model's dtype.

        ``compute_dtype`` (e.g. ``torch.bfloat16``) runs the decoder under autocast to that precision, the
        weights staying as they are: on a CPU with native bf16, 200 demo images decode in about half the
        time of float32, with pixels within a few levels of 255 of float32's.
        """
        if codes.min() < 0 or codes.max() >= self.config.codebook_size:
            raise ValueError(
                f"Codes must lie in [0, {self.config.codebook_size}); got [{codes.min()}, {codes.max()}]."
            )
        dtype = next(self.decoder.parameters()).dtype
        z_q = self.quantizer.lookup(codes.long()).to(dtype)  # (B, D, h, w), strided channels-last
        lower = compute_dtype is not None and compute_dtype != dtype
        if lower:
            # The decoder's low-resolution half runs in its input's memory format. Channels-last suits
            # float32 (its convolutions gain more than its GroupNorms lose: 0.45 s against 0.55 s for 200
            # demo images on a CPU), but a bf16 GroupNorm there takes 18x as long: 0.26 s against 0.23 s.
            z_q = z_q.contiguous()
        with torch.autocast(z_q.device.type, dtype=compute_dtype) if lower else contextlib.nullcontext():
            parts = [self.decoder(part).clamp(-1, 1) for part in self._cpu_chunks(z_q)]
        return torch.cat(parts).to(dtype)  # (B, 3, H, W)

    def _cpu_chunks(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The pieces of ``batch`` (B, ...) that ``encode`` and ``decode_codes`` run at once: the whole batch
        except on a CPU, where a few dozen images at a time keep each layer's activations in the caches:
        at the demo size, 2048 images encode 1.8x and 200 decode 1.3x faster in chunks of 32 than in
        batches of 256 and 200, with the same codes, and pixels equal up to float rounding (oneDNN may
        pick its kernels by batch size; tests/test_stage1_model.py).
        """
        if batch.device.type != "cpu":
            return (batch,)
        widest = max(self.config.channel_multipliers) * self.config.base_channels
        return batch.split(max(1, CPU_CHUNK_FLOATS // (widest * self.config.resolution**2)))

    def loss(self, pixels: torch.Tensor, output: VQVAEOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruction (MSE, which PSNR measures, plus L1 for sharper edges) + VQ terms."""
        mse = F.mse_loss(output.reconstruction.float(), pixels.float())
        l1 = F.l1_loss(output.reconstruction.float(), pixels.float())
        vq = output.quantizer.loss(self.config.beta)
        total = mse + 0.1 * l1 + vq
        return total, {
            "mse": mse.detach(),
            "l1": l1.detach(),
            "codebook_loss": output.quantizer.codebook_loss.detach(),
            "commitment_loss": output.quantizer.commitment_loss.detach(),
            "perplexity": output.quantizer.perplexity.detach(),
        }


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [-1, 1] (peak-to-peak 2): (B,)."""
    mse = (reconstruction.float() - target.float()).pow(2).flatten(1).mean(1)  # (B,)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


def ssim(
    reconstruction: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) for images in [-1, 1]: (B,).

    Computed on [0, 1] values with the paper's 11x11 Gaussian window (sigma 1.5), constants
    (0.01)^2 and (0.03)^2, per channel, averaged over the valid positions and the channels.
    Written here because torchvision does not import beside this torch and one formula does not
    warrant torchmetrics.
    """
    x = (reconstruction.float() + 1) / 2  # (B, C, H, W)
    y = (target.float() + 1) / 2
    channels = x.shape[1]
    window = min(window, x.shape[-1], x.shape[-2])
    offsets = torch.arange(window, dtype=torch.float32, device=x.device) - (window - 1) / 2
    weights_1d = torch.exp(-offsets.square() / (2 * sigma**2))
    weights_1d = weights_1d / weights_1d.sum()
    kernel = (weights_1d[:, None] * weights_1d[None, :]).expand(channels, 1, window, window)  # (C, 1, k, k)

    def blur(image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(image, kernel, groups=channels)  # (B, C, H-k+1, W-k+1)

    mean_x, mean_y = blur(x), blur(y)
    var_x = blur(x * x) - mean_x.square()
    var_y = blur(y * y) - mean_y.square()
    cov = blur(x * y) - mean_x * mean_y
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / (
        (mean_x.square() + mean_y.square() + c1) * (var_x + var_y + c2)
    )
    return index.flatten(1).mean(1)  # (B,)
