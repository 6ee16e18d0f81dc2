"""Which codes a call samples and which it keeps: completion (rows), editing (a box), variations (a share).

Each returns a (h*w,) bool ``sample_mask`` over the code grid in raster order, True where a code is
sampled; ``stage2_transformer.sampling.sample_image_codes`` keeps every other code of the input image.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from minidalle.arguments import is_number
from minidalle.errors import ArgumentError

from .seeds import image_seed, mix

if TYPE_CHECKING:
    from .settings import GenerationSettings


def sample_masks(run: GenerationSettings, grid_h: int, grid_w: int) -> torch.Tensor:
    """Where each image of a call with an input image resamples: (P * candidates, N) bool."""
    total = len(run.image) * run.num_candidates
    if run.box is not None:
        masks = [box_mask(run.box, im.size, grid_h, grid_w) for im in run.image]  # one per prompt
        masks = [m for m in masks for _ in range(run.num_candidates)]
    elif run.strength is not None:  # each image draws its positions from its own seed
        seeds = [mix(image_seed(run.seed, run.num_candidates, j), 1) for j in range(total)]
        masks = [
            variation_mask(run.strength, grid_h * grid_w, torch.Generator().manual_seed(s)) for s in seeds
        ]
    else:
        masks = [rows_mask(run.keep_rows, grid_h, grid_w)] * total
    return torch.stack(masks)  # (P * candidates, N)


def rows_mask(keep_rows: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Completion: sample every row from ``keep_rows`` on."""
    return torch.arange(grid_h * grid_w) >= keep_rows * grid_w  # (N,)


def check_box(box, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """``box`` = (x0, y0, x1, y1) in pixels of an image of ``size`` (width, height), x0 < x1, y0 < y1."""
    width, height = size
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(is_number(v) for v in box):
        raise ArgumentError(f"box must be four numbers (x0, y0, x1, y1) in pixels of the image, got {box!r}.")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x0 < x1 and y0 < y1):
        raise ArgumentError(f"box {box!r} is empty: it needs x0 < x1 and y0 < y1.")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ArgumentError(
            f"box {box!r} lies outside the {width}x{height} image: keep 0 <= x0 < x1 <= {width} and "
            f"0 <= y0 < y1 <= {height}."
        )
    return x0, y0, x1, y1


def box_mask(box, size: tuple[int, int], grid_h: int, grid_w: int) -> torch.Tensor:
    """Editing: sample the code cells the box touches. ``box`` is in pixels of the input image (of
    ``size``); the image is centre-cropped to a square before encoding (``resize_center_crop``), so the
    box is mapped through the same crop."""
    x0, y0, x1, y1 = check_box(box, size)
    width, height = size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2  # the crop's corner in the input image

    def cells(a: float, b: float, offset: float, n: int) -> range:
        lo = int((a - offset) / side * n)
        hi = math.ceil((b - offset) / side * n)
        return range(max(0, lo), min(n, hi))

    rows, cols = cells(y0, y1, top, grid_h), cells(x0, x1, left, grid_w)
    if not rows or not cols:
        raise ArgumentError(f"box {box!r} lies in the part of the image cropped away to make it square.")
    mask = torch.zeros(grid_h, grid_w, dtype=torch.bool)
    mask[rows.start : rows.stop, cols.start : cols.stop] = True
    return mask.reshape(-1)  # (N,)


def check_strength(strength) -> float:
    if not is_number(strength) or not 0.0 < strength <= 1.0:
        raise ArgumentError(
            f"strength must lie in (0, 1]: the share of the image's codes to resample (1 = a new image), "
            f"got {strength!r}."
        )
    return float(strength)


def variation_mask(strength: float, num_codes: int, generator: torch.Generator) -> torch.Tensor:
    """Variations: resample ``round(strength * N)`` code positions (at least one), chosen at random."""
    count = max(1, round(strength * num_codes))
    mask = torch.zeros(num_codes, dtype=torch.bool)
    mask[torch.randperm(num_codes, generator=generator)[:count]] = True
    return mask  # (N,)
