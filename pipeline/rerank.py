"""Re-ranking candidates with CLIP: sample N images per prompt, keep the k that CLIP matches best.

DALL-E, DALLE-pytorch and minDALL-E all do this. The CLIP model comes from a local folder only (a
transformers ``CLIPModel`` saved with its tokenizer and image processor): weights from safetensors,
no remote code, no download.

    reranker = ClipReranker("models/clip-vit-base-patch32")
    out = pipe(["a red circle"], num_images_per_prompt=2, rerank_with=reranker, num_candidates=8)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

from minidalle.errors import ArgumentError
from reranker.folder import check_clip_folder


class ClipReranker:
    def __init__(self, path: str | Path, device: str | torch.device | None = None, batch_size: int = 64):
        folder = check_clip_folder(path)
        if batch_size < 1:
            raise ArgumentError(f"batch_size must be >= 1, got {batch_size}.")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        load = {"local_files_only": True, "trust_remote_code": False}
        self.model = CLIPModel.from_pretrained(folder, use_safetensors=True, **load).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, **load)
        self.image_processor = AutoImageProcessor.from_pretrained(folder, **load)
        # CLIP reads at most this many text tokens; a saved tokenizer's model_max_length may be unset.
        self.max_text_len = self.model.config.text_config.max_position_embeddings

    @torch.no_grad()
    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of each image with its own prompt: (N,) float32 on the CPU."""
        if len(images) != len(prompts):
            raise ValueError(
                f"score needs one prompt per image, got {len(images)} images, {len(prompts)} prompts."
            )
        unique = list(dict.fromkeys(prompts))  # each distinct prompt embedded once
        text = self.tokenizer(
            unique, padding=True, truncation=True, max_length=self.max_text_len, return_tensors="pt"
        ).to(self.device)
        text_embeds = self._embed(
            input_ids=text["input_ids"], attention_mask=text["attention_mask"]
        )  # (U, E)
        image_embeds = []
        for start in range(0, len(images), self.batch_size):
            chunk = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            pixels = self.image_processor(chunk, return_tensors="pt")["pixel_values"]  # (b, 3, S, S)
            image_embeds.append(self._embed(pixel_values=pixels.to(self.device, self.model.dtype)))
        image_embeds = torch.cat(image_embeds)  # (N, E)
        which = torch.tensor([unique.index(p) for p in prompts], device=self.device)  # (N,)
        return (image_embeds * text_embeds[which]).sum(-1).float().cpu()  # (N,)

    def _embed(self, **inputs) -> torch.Tensor:
        return clip_embeddings(self.model, **inputs)


def clip_embeddings(model: CLIPModel, **inputs) -> torch.Tensor:
    """L2-normalised projected embeddings of one tower: ``pixel_values`` (b, 3, S, S) for the image tower,
    else ``input_ids`` and ``attention_mask`` (b, T) for the text tower. Returns (b, E) float32."""
    if "pixel_values" in inputs:
        out = model.get_image_features(**inputs)
    else:
        out = model.get_text_features(**inputs)
    # transformers 5 returns a model output whose pooler_output is the projection; 4.x a tensor.
    features = out if isinstance(out, torch.Tensor) else out.pooler_output  # (b, E)
    return torch.nn.functional.normalize(features.float(), dim=-1)


def best_per_prompt(scores: torch.Tensor, per_prompt: int, keep: int) -> tuple[torch.Tensor, list[int]]:
    """(P * per_prompt,) scores -> the best ``keep`` of each prompt, best first: values (P * keep,) and
    their indices into the candidates."""
    grouped = scores.float().cpu().reshape(-1, per_prompt)  # (P, per_prompt)
    values, order = grouped.topk(keep, dim=1)  # (P, keep) each
    flat = order + torch.arange(grouped.shape[0])[:, None] * per_prompt  # (P, keep)
    return values.reshape(-1), flat.reshape(-1).tolist()
