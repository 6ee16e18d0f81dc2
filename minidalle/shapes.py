"""The built-in synthetic captioned dataset: one coloured shape on a plain background.

Every image shows one shape whose colour, shape, position (a 3x3 grid) and size are stated by its
caption in one of several phrasings ("a small red circle at the top left", "top left: a tiny red
disc"). A fixed tenth of the attribute combinations is held out of training and makes up the
validation split, so validation captions test composition: every single value and every pair of
values still occurs in training (``minidalle.shape_attributes``). ``minidalle.checker`` reads the
attributes back from pixels. The same generator draws the sibling sets of ``minidalle.shape_sets``
(other palettes, renderers, sizes, phrasings, held-out splits): pass ``shape_set``.

    dsd = build_builtin_dataset("data/builtin_shapes", train_size=20000, eval_size=512)
    examples = generate_examples("train", 100, shape_set=SHAPE_SETS["sibling_a"])
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from minidalle.shape_attributes import (
    ATTRIBUTE_NAMES,
    GRID_CENTRES,
    POSITIONS,
    ShapeAttributes,
    heldout_combinations,
    train_combinations,
)
from minidalle.shape_captions import make_caption
from minidalle.shape_sets import BUILTIN, ShapeSet

_BORDER_MARGIN = 1.0 / 32  # jitter never pushes a shape into the outermost pixel ring (at 32 px)
_CACHE_VERSION = 1  # bump whenever rendering or captions change, so old caches are not reused


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _supersample(resolution: int, shape_set: ShapeSet) -> int:
    if shape_set.supersample:
        return shape_set.supersample
    # Draw on a canvas of at least 256 px (8x at 32 px): box-downsampling then gives each pixel its
    # true coverage to within ~1/64, i.e. smooth, exact antialiasing.
    return max(4, -(-256 // resolution))


def render(
    attrs: ShapeAttributes,
    resolution: int = 32,
    rng: np.random.Generator | None = None,
    shape_set: ShapeSet = BUILTIN,
) -> Image.Image:
    """Draw ``attrs`` as ``shape_set`` draws them, an RGB image; ``rng`` adds jitter of position and size (None: none)."""
    if resolution < 24:
        raise ValueError(f"resolution must be >= 24 so small shapes stay recognisable, got {resolution}.")
    extent = shape_set.size_extent[attrs.size]
    row, col = divmod(POSITIONS.index(attrs.position), 3)
    cx, cy = GRID_CENTRES[col], GRID_CENTRES[row]
    if rng is not None:
        extent *= 1.0 + rng.uniform(-shape_set.size_jitter, shape_set.size_jitter)
        cx += rng.uniform(-shape_set.position_jitter, shape_set.position_jitter)
        cy += rng.uniform(-shape_set.position_jitter, shape_set.position_jitter)
    half = extent / 2
    lo, hi = half + _BORDER_MARGIN, 1.0 - half - _BORDER_MARGIN
    cx, cy = min(max(cx, lo), hi), min(max(cy, lo), hi)

    scale = resolution * _supersample(resolution, shape_set)
    x0, y0, x1, y1 = ((cx - half) * scale, (cy - half) * scale, (cx + half) * scale, (cy + half) * scale)
    mask = Image.new("L", (scale, scale), 0)
    draw = ImageDraw.Draw(mask)
    # PIL boxes include their last pixel, hence the -1: the shape covers [x0, x1) on the canvas.
    box = (round(x0), round(y0), round(x1) - 1, round(y1) - 1)
    if attrs.shape == "circle":
        draw.ellipse(box, fill=255)
    elif attrs.shape == "square":
        draw.rectangle(box, fill=255)
    else:  # an upward-pointing isosceles triangle that fills its (square) bounding box
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=255)
    coverage = mask.resize((resolution, resolution), Image.Resampling.BOX)
    background = Image.new("RGB", (resolution, resolution), shape_set.background)
    foreground = Image.new("RGB", (resolution, resolution), shape_set.palette[attrs.color])
    return Image.composite(foreground, background, coverage)


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------

_SPLIT_IDS = {"train": 0, "validation": 1}


def generate_examples(
    split: str, num_examples: int, resolution: int = 32, seed: int = 0, shape_set: ShapeSet = BUILTIN
) -> Iterator[dict[str, Any]]:
    """Yield ``{"image", "text", "color", "shape", "position", "size"}``; example i depends only on (seed, split, i).

    "train" uses the training combinations of ``shape_set``, "validation" only its held-out ones.
    Combinations are dealt in shuffled rounds, so each appears equally often (to within one round).
    """
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}.")
    combos = train_combinations(shape_set) if split == "train" else heldout_combinations(shape_set)
    split_id = _SPLIT_IDS[split]
    order, order_round = None, -1
    for index in range(num_examples):
        round_, slot = divmod(index, len(combos))
        if round_ != order_round:
            order = np.random.default_rng([seed, split_id, 0, round_]).permutation(len(combos))
            order_round = round_
        attrs = combos[order[slot]]
        rng = np.random.default_rng([seed, split_id, 1, index])
        image = render(attrs, resolution, rng, shape_set)
        yield {"image": image, "text": make_caption(attrs, rng, shape_set.phrasings), **asdict(attrs)}


def _features():
    import datasets

    return datasets.Features(
        {
            "image": datasets.Image(),
            "text": datasets.Value("string"),
            **{name: datasets.Value("string") for name in ATTRIBUTE_NAMES},
        }
    )


def _build_split(split: str, num_examples: int, resolution: int, seed: int):
    import datasets

    columns: dict[str, list] = {name: [] for name in ("image", "text", *ATTRIBUTE_NAMES)}
    for example in generate_examples(split, num_examples, resolution, seed):
        # Encode the PNGs here rather than handing PIL images to datasets: the same bytes, less overhead.
        buffer = io.BytesIO()
        example.pop("image").save(buffer, format="PNG")
        columns["image"].append({"bytes": buffer.getvalue(), "path": None})
        for name, value in example.items():
            columns[name].append(value)
    return datasets.Dataset.from_dict(columns, features=_features(), split=datasets.Split(split))


def build_builtin_dataset(
    cache_dir: str | Path, train_size: int, eval_size: int, resolution: int = 32, seed: int = 0
):
    """A ``datasets.DatasetDict`` with "train" and "validation" (held-out combinations), cached on disk.

    The cache folder is named after every argument (and a version of the generator); it is written
    to a temporary folder and renamed into place, so an interrupted build is never loaded.
    """
    import datasets

    cache_dir = Path(cache_dir)
    key = f"shapes-v{_CACHE_VERSION}-res{resolution}-train{train_size}-eval{eval_size}-seed{seed}"
    final = cache_dir / key
    if final.is_dir():
        return datasets.load_from_disk(str(final))
    cache_dir.mkdir(parents=True, exist_ok=True)
    dsd = datasets.DatasetDict(
        {
            "train": _build_split("train", train_size, resolution, seed),
            "validation": _build_split("validation", eval_size, resolution, seed),
        }
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=cache_dir))
    try:
        dsd.save_to_disk(str(tmp))
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(final))


def write_imagefolder(examples: Iterable[dict[str, Any]], out_dir: str | Path) -> int:
    """Write examples (``"image"``: a PIL image, other keys: columns) as PNGs plus ``metadata.jsonl``.

    An "imagefolder": one line per image, ``"file_name"``, ``"text"`` and the other columns. Returns the
    number of images written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(out_dir / "metadata.jsonl", "w", encoding="utf-8") as metadata:
        for count, example in enumerate(examples, start=1):
            file_name = f"{count - 1:06d}.png"
            example["image"].convert("RGB").save(out_dir / file_name)
            record = {"file_name": file_name} | {c: v for c, v in example.items() if c != "image"}
            metadata.write(json.dumps(record) + "\n")
    return count
