"""Reconstruction quality of a VQ-VAE on held-out images: PSNR, codebook usage, perplexity, speed."""

from __future__ import annotations

import math
import time

import torch
from PIL import Image

from minidalle.checker import checker_scores, scores_by_value
from minidalle.images import reconstruction_grid
from minidalle.pixels import tensor_to_pil
from stage1_vqvae.model import VQVAE, psnr, ssim


@torch.no_grad()
def evaluate_reconstruction(
    model: VQVAE, dataloader, device, max_images: int | None = None, checker=None
) -> dict:
    """Returns mean PSNR (dB), SSIM, codebook usage (% of codes used on these images), perplexity, images/s.

    ``checker``: ``minidalle.checker.attributes_right`` on the built-in shapes data, or None; with it,
    the metrics also hold how often the attributes read from the reconstructions agree with the
    captions (``minidalle.checker.checker_scores``: "all_four_pct", "attributes_pct", ...).
    """
    model.eval()
    K = model.config.codebook_size
    counts = torch.zeros(K, dtype=torch.float64)
    psnr_sum, ssim_sum, seen, checked, targets = 0.0, 0.0, 0, [], []
    elapsed = 0.0
    for batch in dataloader:
        pixels = batch["pixels"].to(device)  # (B, 3, H, W)
        if pixels.shape[0] == 0:
            continue
        if max_images is not None and seen >= max_images:
            break
        if max_images is not None:
            pixels = pixels[: max_images - seen]
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        codes = model.encode(pixels)  # (B, h, w)
        reconstruction = model.decode_codes(codes)  # (B, 3, H, W)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - start
        counts += torch.bincount(codes.flatten().cpu(), minlength=K).double()
        psnr_sum += psnr(reconstruction, pixels).sum().item()
        ssim_sum += ssim(reconstruction, pixels).sum().item()
        if checker is not None:
            texts = batch["text"][: pixels.shape[0]]
            checked += checker(tensor_to_pil(reconstruction), texts)
            targets += texts
        seen += pixels.shape[0]
    if seen == 0:
        raise ValueError("No evaluation image could be read.")
    probs = counts / counts.sum()
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum().item()
    metrics = {
        "images": seen,
        "psnr_db": psnr_sum / seen,
        "ssim": ssim_sum / seen,
        "codebook_usage_pct": 100.0 * (counts > 0).sum().item() / K,
        "perplexity": math.exp(entropy),
        "images_per_s": seen / max(elapsed, 1e-9),
    }
    if checker is not None:
        metrics.update(checker_scores(checked))
        metrics.update(scores_by_value(checked, targets))  # per shape and size: small shapes lose first
    return metrics


@torch.no_grad()
def reconstructions_grid(model: VQVAE, pixels: torch.Tensor, columns: int | None = None) -> Image.Image:
    """``pixels`` (n, 3, H, W) in rows above their reconstructions: the training run's and evaluate's grid."""
    reconstruction = model.decode_codes(model.encode(pixels))  # (n, 3, H, W)
    return reconstruction_grid(tensor_to_pil(pixels), tensor_to_pil(reconstruction), columns=columns)
