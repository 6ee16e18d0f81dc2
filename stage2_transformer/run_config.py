"""The stage-2 run config: data, the stage-1 model, tokenizer, transformer, loss, sampling, training."""

from __future__ import annotations

from dataclasses import dataclass, field

from minidalle.arguments import MAX_BATCH_SIZE, check_int
from minidalle.data import DataConfig
from minidalle.train_config import TrainConfig
from stage2_transformer.model import TransformerConfig
from stage2_transformer.sampling import check_sampling_args

MAX_SHIFT_PIXELS = 8  # more moves a small picture's content across the caption's words ("at the left")

MAX_TEXT_LEN = 4096  # caption tokens per sequence; captions here are a sentence or two
MAX_TEXT_VOCAB = 1 << 20
MAX_SAMPLED_CAPTIONS = 256  # a grid of more is unreadable and slows every image_every step


@dataclass
class TokenizerConfig:
    path: str | None = None  # an existing tokenizer folder; None trains byte-level BPE on the captions
    vocab_size: int = 1024
    text_len: int = 16  # caption tokens per sequence (longer captions are truncated with a warning)

    def __post_init__(self) -> None:
        if not 1 <= self.text_len <= MAX_TEXT_LEN:
            raise ValueError(f"tokenizer.text_len must lie in [1, {MAX_TEXT_LEN}], got {self.text_len}.")
        if not 258 <= self.vocab_size <= MAX_TEXT_VOCAB:
            raise ValueError(
                f"tokenizer.vocab_size must lie in [258, {MAX_TEXT_VOCAB}] (256 bytes + 2 specials at least), "
                f"got {self.vocab_size}."
            )


@dataclass
class LossConfig:
    text_weight: float = 0.125  # DALL-E: 1/8 text, 7/8 image
    image_weight: float = 0.875
    caption_dropout: float = 0.1  # fraction of captions replaced by the empty caption (for CFG)

    def __post_init__(self) -> None:
        if self.text_weight < 0 or self.image_weight <= 0:
            raise ValueError("loss.text_weight must be >= 0 and loss.image_weight > 0.")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"loss.caption_dropout must lie in [0, 1), got {self.caption_dropout}.")


@dataclass
class CodesConfig:
    cache_dir: str = "data/codes"  # pre-encoded codes, keyed by stage-1 model, tokenizer and data
    train_path: str | None = None  # or: a folder of codes written earlier (checked against `vqvae`)
    eval_path: str | None = None
    batch_size: int = 256  # images per stage-1 forward pass while pre-encoding
    # s > 0: each training image is also encoded shifted s pixels right, left, down and up (edge pixels
    # repeated), five code sequences per caption. The codes of a picture change with its sub-patch
    # offset; with one sequence per image the prior learns those sequences by heart instead of what the
    # caption says (README: held-out ablations). Never applied to the eval split.
    shift_pixels: int = 0

    def __post_init__(self) -> None:
        check_int("codes.batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        check_int("codes.shift_pixels", self.shift_pixels, 0, MAX_SHIFT_PIXELS)


@dataclass
class SamplingConfig:
    num_captions: int = 8  # fixed validation captions sampled every train.image_every steps
    images_per_caption: int = 2
    guidance_scale: float = 3.0
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:  # checked now, not when the first grid is drawn hours later
        check_sampling_args(self.temperature, self.top_k, self.top_p, self.guidance_scale)
        check_int("sampling.num_captions", self.num_captions, 1, MAX_SAMPLED_CAPTIONS)
        check_int("sampling.images_per_caption", self.images_per_caption, 1, MAX_SAMPLED_CAPTIONS)


@dataclass
class Stage2RunConfig:
    vqvae: str = "outputs/stage1_tiny/vqvae"  # the trained stage-1 model folder
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: TransformerConfig = field(default_factory=TransformerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    codes: CodesConfig = field(default_factory=CodesConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    num_eval_examples: int = 512  # held-out pairs for validation loss / bits per image
