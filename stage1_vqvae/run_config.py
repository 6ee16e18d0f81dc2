"""The stage-1 run config: data + model + training, read from YAML with command-line overrides."""

from __future__ import annotations

from dataclasses import dataclass, field

from minidalle.data import DataConfig
from minidalle.train_config import TrainConfig
from stage1_vqvae.config import VQVAEConfig


@dataclass
class CodebookTrainingConfig:
    kmeans_init: bool = True  # seed the codebook with k-means of the first batches' encoder outputs
    kmeans_batches: int = 4
    restart_every: int = 50  # steps between dead-code restarts (0 disables)
    dead_code_threshold: float = 0.05  # usage EMA (codes picked per step) under which a code is dead
    restart_until: float = 0.8  # stop restarting after this fraction of training, to let codes settle
    usage_window: int = 50  # steps over which "codebook usage" is measured in the training logs

    def __post_init__(self) -> None:
        if self.restart_every < 0 or self.kmeans_batches < 1 or self.usage_window < 1:
            raise ValueError("codebook.restart_every must be >= 0, kmeans_batches and usage_window >= 1.")
        if not 0 <= self.restart_until <= 1:
            raise ValueError(f"codebook.restart_until must lie in [0, 1], got {self.restart_until}.")


@dataclass
class Stage1RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: VQVAEConfig = field(default_factory=VQVAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    codebook: CodebookTrainingConfig = field(default_factory=CodebookTrainingConfig)
    num_eval_images: int = 512  # held-out images used for PSNR/usage during training
    num_grid_images: int = 8

    def __post_init__(self) -> None:
        if self.model.resolution != self.data.resolution:
            # The data decides the training resolution; the model records it.
            self.model.resolution = self.data.resolution
            self.model.__post_init__()
