"""The keywords of a pipeline call, written once, and the checks of those that are the pipeline's own.

The sampling settings (temperature, top-k, top-p, guidance) are checked by the sampler,
``stage2_transformer.sampling.check_sampling_args``; the seed by ``pipeline.seeds.check_seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from minidalle.arguments import check_int
from minidalle.errors import ArgumentError
from stage2_transformer.sampling import check_negative_scale_value

# Upper bounds on the counts a caller types: a call beyond them would run for hours and hold every
# decoded image in memory at once; split such work into several calls.
MAX_PROMPTS = 1024
MAX_IMAGES_PER_PROMPT = 256
MAX_IMAGES_PER_CALL = 4096  # prompts x images (or candidates) per prompt


@dataclass(frozen=True)
class GenerationSettings:
    """``pipe(prompts, **settings)``. Sampling settings left at None take ``pipeline_config.json``'s."""

    num_images_per_prompt: int = 1
    temperature: float | None = None  # 0: greedy
    top_k: int | None = None  # >= codebook size: no top-k cut
    top_p: float | None = None  # 1: no nucleus cut
    guidance_scale: float | None = None  # 1: no classifier-free guidance
    seed: int | Sequence[int] | None = None  # one, one per prompt, or None: drawn and returned
    batch_size: int | None = None  # images per forward pass
    return_codes: bool = False  # PipelineOutput.codes: the (N, h, w) image codes
    # Fills the unconditional half of guidance instead of the empty caption: one, or one per prompt.
    negative_prompt: str | Sequence[str] | None = None
    # The weight of the contrast against the negative prompt (None: sampling.DEFAULT_NEGATIVE_SCALE).
    negative_scale: float | None = None
    # An input image (one for all prompts, or one per prompt) and which of its codes to resample, by
    # exactly one of: keep_rows (completion: keep the first rows, sample the rest), box (editing:
    # (x0, y0, x1, y1) in the image's pixels) or strength (variations: the share of codes resampled).
    image: Image.Image | Sequence[Image.Image] | None = None
    keep_rows: int | None = None
    box: Sequence[float] | None = None
    strength: float | None = None
    # Re-ranking: sample num_candidates per prompt (default twice the images asked) and keep the
    # num_images_per_prompt that rerank_with (a ClipReranker) finds closest to the prompt.
    rerank_with: object | None = None
    num_candidates: int | None = None


def check_prompts(prompts, allow_empty: bool = False) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise ArgumentError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}.")
    if not prompts:
        raise ArgumentError("prompts is empty: give at least one prompt.")
    if len(prompts) > MAX_PROMPTS:
        raise ArgumentError(f"{len(prompts)} prompts in one call; the limit is {MAX_PROMPTS}: split them.")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ArgumentError(f"prompt {i} must be a string, got {type(prompt).__name__}.")
        if not prompt.strip() and not allow_empty:
            raise ArgumentError(f"prompt {i} is empty or whitespace: describe the image to generate.")
    return list(prompts)


def check_negative_prompts(negative, num_prompts: int, guidance_scale: float) -> list[str] | None:
    """One negative prompt per prompt, or None."""
    if negative is None:
        return None
    if guidance_scale == 1.0:
        raise ArgumentError("negative_prompt acts through guidance: set guidance_scale != 1 (e.g. 3).")
    if isinstance(negative, str):
        negative = [negative] * num_prompts
    if not isinstance(negative, (list, tuple)) or not all(isinstance(n, str) for n in negative):
        raise ArgumentError("negative_prompt must be a string or a list of strings (one per prompt).")
    if len(negative) != num_prompts:
        raise ArgumentError(
            f"negative_prompt must be one string or one per prompt ({num_prompts}); got {len(negative)}."
        )
    return list(negative)


def check_negative_scale(scale, negative: list[str] | None, default: float) -> float:
    """The weight of the contrast against the negative prompt: a number in (0, MAX_NEGATIVE_SCALE]."""
    if scale is None:
        return default
    if negative is None:
        raise ArgumentError("negative_scale weighs the negative prompt: give negative_prompt too.")
    return check_negative_scale_value(scale, default)


def check_completion(
    image, keep_rows, num_prompts: int, grid_h: int, box=None, strength=None
) -> tuple[list[Image.Image] | None, int]:
    """(the input images, one per prompt, or None; the rows of codes completion keeps, else 0). The
    box and the strength are checked where they are used (pipeline/regions.py)."""
    tasks = [
        name
        for name, value in (("keep_rows", keep_rows), ("box", box), ("strength", strength))
        if value is not None
    ]
    if image is None:
        if tasks:
            raise ArgumentError(
                f"{tasks[0]} needs an image (image=...): the picture to complete, edit or vary."
            )
        return None, 0
    if len(tasks) != 1:
        raise ArgumentError(
            f"an input image needs exactly one of keep_rows (completion, in [0, {grid_h}]), box (editing) "
            f"or strength (variations); got {', '.join(tasks) or 'none'}."
        )
    keep_rows = 0 if keep_rows is None else check_int("keep_rows", keep_rows, 0, grid_h)
    images = [image] if isinstance(image, Image.Image) else list(image)
    if not all(isinstance(im, Image.Image) for im in images):
        raise ArgumentError("image must be a PIL image or a list of PIL images (one per prompt).")
    if len(images) == 1:
        images = images * num_prompts
    if len(images) != num_prompts:
        raise ArgumentError(f"image must be one image or one per prompt ({num_prompts}); got {len(images)}.")
    return images, keep_rows


def check_candidates(rerank_with, num_candidates, num_images_per_prompt: int) -> int:
    """The images to sample per prompt: ``num_images_per_prompt``, or more to re-rank."""
    if rerank_with is None:
        if num_candidates is not None:
            raise ArgumentError(
                "num_candidates needs rerank_with (a ClipReranker) to choose among the candidates."
            )
        return num_images_per_prompt
    if not callable(getattr(rerank_with, "score", None)):
        raise ArgumentError(
            f"rerank_with must be a ClipReranker (an object with a score(images, prompts) method), "
            f"got {type(rerank_with).__name__}."
        )
    wanted = 2 * num_images_per_prompt if num_candidates is None else num_candidates
    return check_int("num_candidates", wanted, num_images_per_prompt, MAX_IMAGES_PER_PROMPT)


def check_total(num_prompts: int, per_prompt: int) -> None:
    if num_prompts * per_prompt > MAX_IMAGES_PER_CALL:
        raise ArgumentError(
            f"{num_prompts} prompts x {per_prompt} images is {num_prompts * per_prompt} images in one call; "
            f"the limit is {MAX_IMAGES_PER_CALL}: split the work into several calls."
        )
