"""The re-ranker model: a transformers ``CLIPModel`` (ViT image tower, causal text tower) trained from scratch.

Its folder is what ``pipeline.rerank.ClipReranker`` loads: ``config.json`` + ``model.safetensors``, the
caption tokenizer and a PIL image processor that maps pixels to [-1, 1] as the training data does.
"""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

from reranker.run_config import ClipSize


def build_clip(size: ClipSize, tokenizer, resolution: int) -> CLIPModel:
    """A randomly initialised CLIP of ``size`` for ``tokenizer``'s vocabulary and ``resolution`` pixels."""
    tower = dict(
        hidden_size=size.hidden_size,
        intermediate_size=4 * size.hidden_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
    )
    text = dict(
        tower,
        vocab_size=len(tokenizer),
        max_position_embeddings=size.text_len,
        # The pooled text state is read at the first end token (not at the largest id, as CLIP's original
        # tokenizer arranged it).
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    vision = dict(tower, image_size=resolution, patch_size=size.patch_size)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=size.projection_dim))


def save_clip_folder(model: CLIPModel, tokenizer, folder: str | Path, state_dict: dict | None = None) -> Path:
    """Model, tokenizer and image processor in one folder that ``ClipReranker`` loads."""
    folder = Path(folder)
    model.save_pretrained(folder, state_dict=state_dict)
    tokenizer.save_pretrained(folder)
    resolution = model.config.vision_config.image_size
    CLIPImageProcessorPil(
        size={"shortest_edge": resolution},
        crop_size={"height": resolution, "width": resolution},
        image_mean=[0.5, 0.5, 0.5],  # [0, 1] -> [-1, 1], the range of minidalle.data's pixels
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(folder)
    return folder
