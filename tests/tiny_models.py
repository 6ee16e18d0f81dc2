"""Tiny random-init models for the pipeline and app tests, built and saved in about a second.

``build_tiny_runs(root)`` writes what the two training runs write (``stage1/vqvae/``;
``stage2/transformer``, ``stage2/tokenizer``, ``stage2/stage1.json``); ``build_tiny_pipeline(root)``
assembles them into a pipeline folder with ``pipeline.assemble``. ``build_tiny_clip(dir)`` saves a tiny
random CLIP with a tokenizer and image processor made locally (no download).
"""

from __future__ import annotations

from pathlib import Path

import torch

from minidalle.hub import model_fingerprint
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.model import VQVAE
from stage2_transformer.layout import SequenceLayout
from stage2_transformer.model import TransformerConfig, build_transformer, save_transformer
from stage2_transformer.stage1_record import write_stage1_record
from stage2_transformer.tokenizer import train_caption_tokenizer

TEXT_LEN = 8
CODEBOOK = 32
RESOLUTION = 32  # -> 8x8 codes

_COLORS = ["red", "green", "blue", "yellow", "purple"]
_SHAPES = ["circle", "square", "triangle", "star", "heart"]
_PLACES = ["on white", "on black", "in the top left", "in the middle", "at the bottom"]
CAPTIONS = [f"a {c} {s} {p}" for c in _COLORS for s in _SHAPES for p in _PLACES[:2]]  # 50 captions


def tiny_vqvae(seed: int = 0, codebook_size: int = CODEBOOK, resolution: int = RESOLUTION) -> VQVAE:
    torch.manual_seed(seed)
    cfg = VQVAEConfig(
        resolution=resolution,
        base_channels=8,
        channel_multipliers=[1, 2, 2],
        num_res_blocks=1,
        codebook_size=codebook_size,
        codebook_dim=8,
    )
    vqvae = VQVAE(cfg)
    # A spread-out codebook makes different codes decode to visibly different pictures.
    torch.nn.init.normal_(vqvae.quantizer.codebook.weight)
    return vqvae.eval()


def build_tiny_runs(root: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write a stage-1 run and a stage-2 run under ``root``; returns (stage1_dir, stage2_dir)."""
    root = Path(root)
    stage1, stage2 = root / "stage1", root / "stage2"
    vqvae = tiny_vqvae(seed)
    vqvae.save_pretrained(stage1 / "vqvae")
    tokenizer = train_caption_tokenizer(CAPTIONS, vocab_size=300, out_dir=stage2 / "tokenizer")
    layout = SequenceLayout(
        text_len=TEXT_LEN,
        text_vocab_size=len(tokenizer),
        codebook_size=CODEBOOK,
        grid_h=vqvae.config.grid_size,
        grid_w=vqvae.config.grid_size,
        pad_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    # A wide init makes the random model's predictions peaked and dependent on the caption.
    cfg = TransformerConfig(hidden_size=32, num_layers=2, num_heads=2, initializer_range=0.3)
    save_transformer(build_transformer(cfg, layout), layout, stage2 / "transformer")
    write_stage1_record(stage2, stage1 / "vqvae", model_fingerprint(stage1 / "vqvae"), CODEBOOK)
    return stage1, stage2


def build_tiny_pipeline(root: str | Path, seed: int = 0, **config) -> Path:
    """A complete pipeline folder at ``root/pipeline`` (config: ``PipelineConfig`` overrides)."""
    from pipeline.assemble import assemble_pipeline

    stage1, stage2 = build_tiny_runs(root, seed)
    return assemble_pipeline(stage1, stage2, Path(root) / "pipeline", **config)


def build_tiny_clip(out_dir: str | Path, seed: int = 0, image_size: int = RESOLUTION) -> Path:
    """A random CLIP (1 layer per tower) with a character-level CLIP tokenizer and a PIL image processor."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    out_dir = Path(out_dir)
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    # Every byte as a word piece and as a word end, no merges: any text tokenizes, letter by letter.
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars])}
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        image_size=image_size,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    size = {"shortest_edge": image_size}
    crop = {"height": image_size, "width": image_size}
    CLIPImageProcessorPil(size=size, crop_size=crop).save_pretrained(out_dir)
    return out_dir
