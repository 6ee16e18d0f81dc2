"""What a pipeline call gives back: the output, the row events of a running call, and its warnings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from stage2_transformer.tokenizer import CaptionTruncatedWarning


@dataclass
class PipelineOutput:
    """What a pipeline call returns. Images are in prompt-major order: all of prompt 0, then prompt 1..."""

    images: list[Image.Image]
    prompts: list[str]  # the prompt of each image
    seed: int | list[int]  # the seed(s) used: pass it back to get the same images
    codes: torch.Tensor | None = None  # (num_images, h, w) int64 on the CPU, with return_codes=True
    scores: list[float] | None = None  # CLIP similarity of each kept image, when re-ranked
    # The bits of each image's codes under the prior, with its caption and with the empty caption:
    # their difference is how much the caption explains (pipe.score gives the same for any image).
    bits_with_caption: list[float] | None = None
    bits_without_caption: list[float] | None = None


@dataclass
class ImageBits:
    """``pipe.score(images, captions)``: bits of each image's codes under the prior."""

    with_caption: list[float]
    without_caption: list[float]

    @property
    def caption_bits(self) -> list[float]:
        """Bits the caption saves: > 0 when the caption makes the image more likely."""
        return [u - c for c, u in zip(self.with_caption, self.without_caption)]


@dataclass
class RowEvent:
    """Sent after each sampled row of code, for a UI that shows the pictures appearing row by row."""

    row: int  # the row just sampled, 0-based
    num_rows: int  # rows in the code grid
    first_image: int  # index (in the call's order) of the first image of this batch
    images: list[Image.Image]  # this batch (of candidates, when re-ranking), rows > row painted grey
    codes: torch.Tensor  # (b, row + 1, w) the codes sampled so far, on the CPU
    progress: float  # fraction of the call's rows done, in (0, 1]


class PromptTruncatedWarning(CaptionTruncatedWarning):
    """Prompts longer than the model reads lost their ends. Fields: ``text_len`` (the tokens the model
    reads) and ``cuts`` (per cut prompt: index, preview, tokens_cut, tokens)."""

    def __str__(self) -> str:
        return f"Prompt too long for this model (it reads {self.text_len} tokens): {super().__str__()}"
