"""Any image to an RGB tensor in [-1, 1] at a given resolution, and tensors back to PIL images.

Decoding accepts what ``datasets`` hands over (``{"bytes", "path"}``, a path, bytes or a PIL image);
any mode (RGBA, LA, P, L, 16-bit, CMYK) becomes 8-bit RGB, transparency composited on white.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile

from minidalle.errors import ArgumentError

# A truncated file should be reported as unreadable, not half-decoded into a grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (RGBA, LA, P, L, I;16, I, F, CMYK, ...) to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit grey: scale by the actual range rather than clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        if image.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        scaled = (array - lo) / max(hi - lo, 1e-12) * 255.0
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    width, height = image.size
    scale = resolution / min(width, height)
    new_w, new_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)  # (3, H, W)


def tensor_to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) or (3, H, W) in [-1, 1] -> PIL images."""
    if pixels.dim() == 3:
        pixels = pixels[None]
    array = (pixels.detach().float().clamp(-1, 1).add(1).mul(127.5).round()).to(torch.uint8)
    array = array.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    return [Image.fromarray(a) for a in array]


def decode_image(value: Any) -> Image.Image:
    """Decode a datasets ``Image(decode=False)`` value ({"bytes", "path"}) or a PIL image."""
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict):
        if value.get("bytes"):
            image = Image.open(io.BytesIO(value["bytes"]))
        elif value.get("path"):
            image = Image.open(value["path"])
        else:
            raise ValueError("empty image entry")
    elif isinstance(value, (str, os.PathLike)):
        image = Image.open(value)
    elif isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    else:
        raise ValueError(f"unsupported image value of type {type(value).__name__}")
    image.load()
    return image


def read_image_file(path: str | os.PathLike, flag: str) -> Image.Image:
    """A user's image file, decoded now; one that cannot be read is an ``ArgumentError`` naming ``flag``."""
    try:
        return decode_image(path)
    except OSError as err:
        raise ArgumentError(f"{flag} {str(path)!r} cannot be read as an image ({err}).") from None


def preprocess(value: Any, resolution: int) -> torch.Tensor:
    return pil_to_tensor(resize_center_crop(to_rgb(decode_image(value)), resolution))
