"""The re-ranker's run config: data, the CLIP towers' size, the batches, training."""

from __future__ import annotations

from dataclasses import dataclass, field

from minidalle.arguments import check_int
from minidalle.data import DataConfig
from minidalle.train_config import TrainConfig

MAX_TEXT_LEN = 512


@dataclass
class ClipSize:
    """Both towers of a transformers ``CLIPModel``, one width and depth for the two."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    patch_size: int = 8  # pixels per patch side; the resolution must be a multiple of it
    projection_dim: int = 128
    text_len: int = 24  # caption tokens, the end token included (longer captions are cut)
    vocab_size: int = 4096  # byte-level BPE trained on the training captions

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "patch_size", "projection_dim"):
            check_int(f"model.{name}", getattr(self, name), 1, None)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size ({self.hidden_size}) must be a multiple of model.num_heads ({self.num_heads})."
            )
        check_int("model.text_len", self.text_len, 2, MAX_TEXT_LEN)
        check_int("model.vocab_size", self.vocab_size, 259, None, "256 bytes + <pad>, <unk>, <eos>")


@dataclass
class BatchConfig:
    # Rows that share this column's value (the emoji data's "unified": one emoji in two styles) go into
    # the same batch, so the contrastive loss can only tell them apart by what their captions differ in.
    group_column: str | None = None
    grouped_fraction: float = 0.5  # of each batch, drawn as whole groups (the rest uniformly)
    # Of each batch, the share shown as stage 1 reconstructs it (vqvae below): the re-ranker then reads
    # pictures as the pipeline decodes them, not only the sharp originals.
    stage1_views: float = 0.0

    def __post_init__(self) -> None:
        for name in ("grouped_fraction", "stage1_views"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"batches.{name} must lie in [0, 1], got {value}.")


@dataclass
class RerankerRunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    vqvae: str | None = None  # a stage-1 model folder; needed when batches.stage1_views > 0
    model: ClipSize = field(default_factory=ClipSize)
    batches: BatchConfig = field(default_factory=BatchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    num_eval_images: int = 512  # held-out pairs for retrieval top-1 / top-5

    def __post_init__(self) -> None:
        check_int("num_eval_images", self.num_eval_images, 2, None)
        if self.data.resolution % self.model.patch_size:
            raise ValueError(
                f"data.resolution ({self.data.resolution}) must be a multiple of model.patch_size "
                f"({self.model.patch_size})."
            )
        if self.batches.stage1_views > 0 and not self.vqvae:
            raise ValueError(
                "batches.stage1_views needs vqvae: the stage-1 model folder whose reconstructions to show "
                "(e.g. --vqvae outputs/stage1_emoji32_8x8/vqvae), or set batches.stage1_views 0."
            )
        if self.train.batch_size < 2:
            raise ValueError("train.batch_size must be at least 2: a contrastive batch needs negatives.")
