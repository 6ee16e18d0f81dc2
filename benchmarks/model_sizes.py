"""The model sizes the benchmarks measure, one definition for all of them.

"tiny" is configs/stage{1,2}_tiny.yaml (the demo), "gpu" the real-scale configs/stage{1,2}_gpu.yaml, and
"mid" is defined here: 128x128 images to 16x16 codes; an 8-layer, 512-wide transformer over 32 caption +
256 image tokens. A stage-2 layout is always over the codes of the stage-1 model of the same size.
"""

from __future__ import annotations

from pathlib import Path

from minidalle.config import parse_config
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.run_config import Stage1RunConfig
from stage2_transformer.layout import SequenceLayout
from stage2_transformer.model import TransformerConfig
from stage2_transformer.run_config import Stage2RunConfig

SIZES = ("tiny", "mid", "gpu")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def stage1_setting(size: str, device: str) -> tuple[VQVAEConfig, int]:
    """(model config, training batch size)."""
    if size in ("tiny", "gpu"):
        cfg = parse_config(Stage1RunConfig, ["--config", str(CONFIGS / f"stage1_{size}.yaml")])
        return cfg.model, cfg.train.batch_size
    model = VQVAEConfig(resolution=128, base_channels=64, channel_multipliers=[1, 1, 2, 2], num_res_blocks=1,
                        codebook_size=1024, codebook_dim=8)  # fmt: skip
    return model, 32 if device == "cuda" else 4


def stage2_setting(size: str, device: str) -> tuple[TransformerConfig, SequenceLayout, int]:
    """(model config, sequence layout, training batch size)."""
    if size in ("tiny", "gpu"):
        cfg = parse_config(Stage2RunConfig, ["--config", str(CONFIGS / f"stage2_{size}.yaml")])
        vq, _ = stage1_setting(size, device)
        layout = SequenceLayout(text_len=cfg.tokenizer.text_len, text_vocab_size=cfg.tokenizer.vocab_size,
                                codebook_size=vq.codebook_size, grid_h=vq.grid_size, grid_w=vq.grid_size,
                                pad_id=0)  # fmt: skip
        return cfg.model, layout, cfg.train.batch_size
    layout = SequenceLayout(
        text_len=32, text_vocab_size=4096, codebook_size=1024, grid_h=16, grid_w=16, pad_id=0
    )
    return (
        TransformerConfig(hidden_size=512, num_layers=8, num_heads=8),
        layout,
        32 if device == "cuda" else 4,
    )
