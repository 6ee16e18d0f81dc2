"""Next-token loss over the stage-2 layout, text and image positions weighted separately (DALL-E: 1/8, 7/8).

With T = text_len and N = h*w, over a sequence ``[text (T) | BOI | codes (N)]``:

* text targets: tokens 1..T-1, predicted from positions 0..T-2 over the text-vocabulary logits only;
  PAD targets are ignored. (Token 0 has no predecessor; the BOI target is always the same, so it is left out.)
* image targets: code i, predicted from position T+i (BOI for i = 0) over the image-code logits only:
  image positions never predict text tokens, as in sampling.

Each part is a mean over its own valid targets (token-level, across the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import SequenceLayout


def weighted_lm_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    layout: SequenceLayout,
    text_weight: float = 1 / 8,
    image_weight: float = 7 / 8,
    text_normalizer: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted loss for ``logits`` (B, L, V) of a model fed ``input_ids`` (B, seq_len).

    ``L`` may be ``seq_len`` or ``seq_len - 1`` (the last position predicts nothing, so the model may be
    fed ``input_ids[:, :-1]``); ``V`` is at least ``layout.vocab_size``. Returns ``(total, parts)`` with
    ``total = text_weight * text_loss + image_weight * image_loss`` and ``parts`` holding detached 0-d
    tensors "text_loss", "image_loss" (nats per token; call ``.item()`` when logging) and "text_tokens".
    ``logits`` may be in bf16 (mixed precision): each part upcasts only its own slice to fp32, never the
    whole (B, L, V).

    ``text_normalizer`` replaces this batch's count of text targets as the divisor of the text loss sum.
    Data-parallel training passes the count over all processes divided by their number, so that the
    average of the processes' gradients is that of the mean over the global batch.
    """
    if text_weight < 0 or image_weight < 0:
        raise ValueError(f"Loss weights must be >= 0, got text {text_weight}, image {image_weight}.")
    batch, length = input_ids.shape
    if length != layout.seq_len:
        raise ValueError(f"input_ids must have shape (B, {layout.seq_len}), got {tuple(input_ids.shape)}.")
    if (
        logits.dim() != 3
        or logits.shape[0] != batch
        or logits.shape[1] not in (length, length - 1)
        or logits.shape[2] < layout.vocab_size
    ):
        raise ValueError(
            f"logits must have shape (B={batch}, {length} or {length - 1}, >= {layout.vocab_size}), "
            f"got {tuple(logits.shape)}."
        )
    T, N, K = layout.text_len, layout.num_image_tokens, layout.codebook_size

    # image part: position T+i predicts code i, over the K image-code logits only
    image_logits = logits[:, T : T + N, layout.image_slice].float()  # (B, N, K)
    image_targets = input_ids[:, T + 1 :] - layout.image_offset  # (B, N)
    image_loss = F.cross_entropy(image_logits.reshape(-1, K), image_targets.reshape(-1))

    # text part: position t-1 predicts text token t (t = 1..T-1), over the text logits only; PAD ignored
    text_targets = input_ids[:, 1:T]  # (B, T-1)
    text_tokens = (text_targets != layout.pad_id).sum()
    with torch.set_grad_enabled(torch.is_grad_enabled() and text_weight > 0):
        text_logits = logits[:, : T - 1, : layout.text_vocab_size].float()  # (B, T-1, Vt)
        text_sum = F.cross_entropy(
            text_logits.reshape(-1, layout.text_vocab_size),
            text_targets.reshape(-1),
            ignore_index=layout.pad_id,
            reduction="sum",
        )
        divisor = text_tokens.clamp(min=1) if text_normalizer is None else text_normalizer
        text_loss = text_sum / divisor  # 0 when every target is PAD

    total = image_weight * image_loss
    if text_weight > 0:
        total = total + text_weight * text_loss
    parts = {"text_loss": text_loss.detach(), "image_loss": image_loss.detach(), "text_tokens": text_tokens}
    return total, parts
