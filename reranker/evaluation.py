"""How well does the re-ranker match held-out captions to their pictures?

For each held-out caption, the rank of its own picture among all held-out pictures by the re-ranker's
cosine similarity (1 = its own picture scores highest): retrieval top-1 / top-5, and the contrastive loss.
Chance is 1/n and 5/n. It tells whether the re-ranker reads captions it was not trained on; it cannot
tell how it ranks the prior's samples, which are blurrier and often of something else (the stage-2
evaluate command's ``--rerank_clip`` measures that).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.rerank import clip_embeddings


@torch.no_grad()
def embed(
    model, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 256
):
    """L2-normalised image and text embeddings, (n, E) each, of n pictures (n, 3, H, W) and n captions."""
    images, texts = [], []
    for start in range(0, len(pixels), batch_size):
        end = start + batch_size
        images.append(clip_embeddings(model, pixel_values=pixels[start:end]))
        texts.append(
            clip_embeddings(model, input_ids=input_ids[start:end], attention_mask=attention_mask[start:end])
        )
    return torch.cat(images), torch.cat(texts)


def retrieval_scores(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: float) -> dict:
    """Caption i belongs to picture i (both (n, E), normalised): its picture's rank, and the loss."""
    similarity = text_embeds @ image_embeds.T  # (n, n): caption i against picture j
    own = similarity.diagonal()  # (n,)
    rank = 1 + (similarity > own[:, None]).sum(1)  # (n,) ties count for the caption's own picture
    logits = logit_scale * similarity
    target = torch.arange(len(own), device=logits.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    return {
        "pairs": len(own),
        "retrieval_top1_pct": 100.0 * (rank <= 1).float().mean().item(),
        "retrieval_top5_pct": 100.0 * (rank <= 5).float().mean().item(),
        "contrastive_loss": loss.item(),
    }
