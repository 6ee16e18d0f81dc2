"""How good is the learned prior? Validation loss and bits per image; samples for the checker to read.

Bits per image: -log2 p(z | caption) summed over the h*w codes. The uniform prior needs
h*w*log2(K) bits; a useful prior needs far fewer, and fewer still when it sees the caption.
"""

from __future__ import annotations

import math

import torch

from minidalle.pixels import tensor_to_pil
from stage2_transformer.layout import SequenceLayout
from stage2_transformer.sampling import DEFAULT_NEGATIVE_SCALE, image_token_log_likelihood, sample_image_codes
from stage2_transformer.tokenizer import encode_captions


@torch.no_grad()
def evaluate_prior(
    model, layout: SequenceLayout, codes_dataset, max_examples: int, batch_size: int = 64
) -> dict:
    """Image-token loss (nats/token) and bits per image, with the captions and with the empty caption."""
    n = min(max_examples, len(codes_dataset))
    rows = codes_dataset.select(range(n)).with_format("numpy", columns=["codes", "text_ids"])[:]
    codes = torch.as_tensor(rows["codes"].astype("int64"))  # (n, h*w)
    text_ids = torch.as_tensor(rows["text_ids"].astype("int64"))  # (n, T)
    conditional = image_token_log_likelihood(
        model, layout, text_ids, codes, batch_size=batch_size
    ).cpu()  # (n,)
    empty = layout.empty_caption_ids(n)  # (n, T)
    unconditional = image_token_log_likelihood(model, layout, empty, codes, batch_size=batch_size).cpu()
    N = layout.num_image_tokens
    uniform_bits = N * math.log2(layout.codebook_size)
    bits = -conditional.mean().item() / math.log(2)
    bits_empty = -unconditional.mean().item() / math.log(2)
    return {
        "examples": n,
        "image_loss": -conditional.mean().item() / N,
        "image_loss_empty_caption": -unconditional.mean().item() / N,
        "bits_per_image": bits,
        "bits_per_image_empty_caption": bits_empty,
        "uniform_bits_per_image": uniform_bits,
        "bits_ratio_to_uniform": bits / uniform_bits,
    }


@torch.no_grad()
def sample_images(
    model,
    layout: SequenceLayout,
    vqvae,
    tokenizer,
    captions: list[str],
    *,
    guidance_scale: float,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    batch_size: int = 32,
    negative_captions: list[str] | None = None,
    negative_scale: float = DEFAULT_NEGATIVE_SCALE,
    return_codes: bool = False,
):
    """Sample one image per caption (PIL), each with its own seeded stream (seed + index).

    ``negative_captions``: one per caption, a negative prompt that guidance steers away from with weight
    ``negative_scale``. ``return_codes``: also return the sampled codes, (n, h, w) on the CPU."""
    device = next(model.parameters()).device
    images, all_codes = [], []
    for start in range(0, len(captions), batch_size):
        chunk = captions[start : start + batch_size]
        text_ids = encode_captions(tokenizer, chunk, layout.text_len, warn=False).to(device)  # (b, T)
        negative_ids = None
        if negative_captions is not None:
            negative_chunk = negative_captions[start : start + batch_size]
            negative_ids = encode_captions(tokenizer, negative_chunk, layout.text_len, warn=False).to(device)
        generators = [torch.Generator(device=device).manual_seed(seed + start + i) for i in range(len(chunk))]
        codes = sample_image_codes(
            model,
            layout,
            text_ids,
            guidance_scale=guidance_scale,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=generators,
            negative_text_ids=negative_ids,
            negative_scale=negative_scale,
        )  # (b, h, w)
        pixels = vqvae.decode_codes(codes.to(next(vqvae.parameters()).device))  # (b, 3, H, W)
        images.extend(tensor_to_pil(pixels))
        all_codes.append(codes.cpu())
    return (images, torch.cat(all_codes)) if return_codes else images


@torch.no_grad()
def sample_reranked(
    model,
    layout: SequenceLayout,
    vqvae,
    tokenizer,
    captions: list[str],
    reranker,
    candidates: int,
    *,
    seed: int = 0,
    first: list | None = None,
    **settings,
):
    """DALL-E's choice: ``candidates`` samples per caption, keep the one the CLIP ``reranker`` matches best.

    Candidate k of caption i has seed ``seed + k * n + i`` (n captions), so candidate 0 is what
    ``sample_images`` draws with ``seed``: pass those images as ``first`` when they are drawn already.
    Returns the kept images (PIL) and each one's candidate index (n,). ``settings``: ``sample_images``'s
    sampling arguments."""
    n = len(captions)
    drawn, scores = [], []
    for k in range(candidates):
        if k == 0 and first is not None:
            images = first
        else:
            images = sample_images(model, layout, vqvae, tokenizer, captions, seed=seed + k * n, **settings)
        drawn.append(images)
        scores.append(reranker.score(images, captions))  # (n,)
    picked = torch.stack(scores, 1).argmax(1)  # (n,)
    return [drawn[k][i] for i, k in enumerate(picked.tolist())], picked
