"""Image grids with PIL and numpy (no torchvision): reconstructions, samples, captioned sheets."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def make_grid(images: list[Image.Image], columns: int, padding: int = 2, fill=(255, 255, 255)) -> Image.Image:
    if not images:
        raise ValueError("make_grid needs at least one image.")
    width = max(im.width for im in images)
    height = max(im.height for im in images)
    rows = (len(images) + columns - 1) // columns
    grid = Image.new(
        "RGB", (columns * (width + padding) + padding, rows * (height + padding) + padding), fill
    )
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid.paste(image.convert("RGB"), (padding + c * (width + padding), padding + r * (height + padding)))
    return grid


def upscale(image: Image.Image, min_side: int) -> Image.Image:
    """Nearest-neighbour upscaling by an integer factor, so tiny images stay crisp and visible."""
    factor = max(1, -(-min_side // min(image.size)))
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def reconstruction_grid(
    inputs: list[Image.Image],
    reconstructions: list[Image.Image],
    min_side: int = 96,
    columns: int | None = None,
) -> Image.Image:
    """Inputs in a row, their reconstructions in the row below; bands of ``columns`` images (default all)."""
    columns = columns or len(inputs)
    tiles = []
    for start in range(0, len(inputs), columns):
        band_inputs, band_outputs = inputs[start : start + columns], reconstructions[start : start + columns]
        blank = [Image.new("RGB", inputs[0].size, (255, 255, 255))] * (columns - len(band_inputs))
        tiles += band_inputs + blank + band_outputs + blank
    return make_grid([upscale(im, min_side) for im in tiles], columns)


def captioned_grid(
    images: list[Image.Image], captions: list[str], columns: int, min_side: int = 128, caption_lines: int = 3
) -> Image.Image:
    """Each image with its caption written below it."""
    font = ImageFont.load_default()
    tiles = []
    for image, caption in zip(images, captions):
        image = upscale(image, min_side)
        chars_per_line = max(8, image.width // 6)
        lines = textwrap.wrap(caption, chars_per_line)[:caption_lines]
        tile = Image.new("RGB", (image.width, image.height + 12 * caption_lines + 4), (255, 255, 255))
        tile.paste(image, (0, 0))
        draw = ImageDraw.Draw(tile)
        for i, line in enumerate(lines):
            draw.text((2, image.height + 2 + 12 * i), line, fill=(0, 0, 0), font=font)
        tiles.append(tile)
    return make_grid(tiles, columns, padding=4)


def to_chw_uint8(image: Image.Image) -> np.ndarray:
    """For TensorBoard's add_image (dataformats CHW)."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
