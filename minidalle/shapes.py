"""The built-in synthetic captioned dataset: one coloured shape on a plain background.

Every image shows one shape whose colour, shape, position (a 3x3 grid) and size are stated by its
caption in one of several phrasings ("a small red circle at the top left", "top left: a tiny red
disc"). A fixed tenth of the attribute combinations is held out of training and makes up the
validation split, so validation captions test composition: every single value and every pair of
values still occurs in training.

``read_attributes`` is the matching checker: it reads the four attributes back from pixels alone,
to test the renderer and to score generated images against their captions.

    dsd = build_builtin_dataset("data/builtin_shapes", train_size=20000, eval_size=512)
    attrs = read_attributes(dsd["validation"][0]["image"])
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import astuple, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

# ---------------------------------------------------------------------------------------------
# Attribute values
# ---------------------------------------------------------------------------------------------

# A dark neutral background: every saturated colour is far from it (>= 190 in RGB distance), and
# antialiased edges blend towards it without passing near another palette colour.
BACKGROUND: tuple[int, int, int] = (40, 40, 40)
# Hues spread round the wheel; the closest pair (orange/yellow) is still ~100 apart in RGB.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (250, 135, 20),
    "yellow": (240, 230, 50),
    "green": (50, 190, 70),
    "blue": (50, 100, 240),
    "purple": (165, 70, 215),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
POSITIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
SIZES: tuple[str, ...] = ("small", "large")

# Shape extent (bounding-box side) as a fraction of the image side: ~6 and ~10 px at 32 px.
_SIZE_EXTENT = {"small": 0.19, "large": 0.31}
_SIZE_THRESHOLD = 0.25  # the checker's boundary, halfway between the two
_SIZE_JITTER = 0.05  # relative; keeps the extents within 0.18-0.20 and 0.29-0.33
# Grid centres along each axis. Not thirds (1/6, 1/2, 5/6): a large shape centred at 1/6 would touch
# the border, so the outer centres move inwards. The checker splits halfway between centres.
_GRID_CENTRES = (0.2, 0.5, 0.8)
_GRID_SPLITS = (0.35, 0.65)
_POSITION_JITTER = 1.0 / 32  # +-1 px at 32 px, scaled with resolution; far from the splits
_BORDER_MARGIN = 1.0 / 32  # jitter never pushes a shape into the outermost pixel ring (at 32 px)
_HELDOUT_FRACTION = 0.1
_HELDOUT_SEED = 20240601  # fixed: the held-out set must never change between runs or users
_CACHE_VERSION = 1  # bump whenever rendering or captions change, so old caches are not reused


@dataclass(frozen=True)
class ShapeAttributes:
    color: str
    shape: str
    position: str
    size: str

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("color", self.color, tuple(COLORS)),
            ("shape", self.shape, SHAPES),
            ("position", self.position, POSITIONS),
            ("size", self.size, SIZES),
        ):
            if value not in allowed:
                raise ValueError(f"Unknown {name} {value!r}; expected one of {allowed}.")


def all_combinations() -> list[ShapeAttributes]:
    """Every (colour, shape, position, size) combination, in a fixed order."""
    return [ShapeAttributes(*combo) for combo in itertools.product(COLORS, SHAPES, POSITIONS, SIZES)]


def _pairs(attrs: ShapeAttributes) -> list[tuple]:
    values = astuple(attrs)
    return [(i, values[i], j, values[j]) for i, j in itertools.combinations(range(4), 2)]


@lru_cache(maxsize=1)
def _heldout_tuple() -> tuple[ShapeAttributes, ...]:
    combos = all_combinations()
    n_heldout = round(_HELDOUT_FRACTION * len(combos))
    # How many training combinations still contain each pair of attribute values: a combination may be
    # held out only if none of its pairs would drop to zero, so held-out captions are compositions of
    # pairs the model has seen.
    pair_count: dict[tuple, int] = {}
    for combo in combos:
        for pair in _pairs(combo):
            pair_count[pair] = pair_count.get(pair, 0) + 1
    # Each value is held out about equally often, so validation covers every colour, shape, position and size.
    value_count: dict[tuple[int, str], int] = {}
    caps = [-(-n_heldout // len(values)) for values in (COLORS, SHAPES, POSITIONS, SIZES)]
    heldout = []
    for k in np.random.default_rng(_HELDOUT_SEED).permutation(len(combos)):
        combo = combos[k]
        values = list(enumerate(astuple(combo)))
        if all(pair_count[pair] > 1 for pair in _pairs(combo)) and all(
            value_count.get(v, 0) < caps[v[0]] for v in values
        ):
            heldout.append(combo)
            for pair in _pairs(combo):
                pair_count[pair] -= 1
            for v in values:
                value_count[v] = value_count.get(v, 0) + 1
            if len(heldout) == n_heldout:
                break
    assert len(heldout) == n_heldout, "the held-out constraints cannot be met; change _HELDOUT_SEED"
    order = {combo: i for i, combo in enumerate(combos)}
    return tuple(sorted(heldout, key=order.__getitem__))


def heldout_combinations() -> list[ShapeAttributes]:
    """The fixed ~10% of combinations that only the validation split uses."""
    return list(_heldout_tuple())


@lru_cache(maxsize=1)
def _train_tuple() -> tuple[ShapeAttributes, ...]:
    heldout = set(_heldout_tuple())
    return tuple(c for c in all_combinations() if c not in heldout)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _supersample(resolution: int) -> int:
    # Draw on a canvas of at least 256 px (8x at 32 px): box-downsampling then gives each pixel its
    # true coverage to within ~1/64, i.e. smooth, exact antialiasing.
    return max(4, -(-256 // resolution))


def render(
    attrs: ShapeAttributes, resolution: int = 32, rng: np.random.Generator | None = None
) -> Image.Image:
    """Draw ``attrs`` as an RGB image; ``rng`` adds small jitter of position and size (None: none)."""
    if resolution < 24:
        raise ValueError(f"resolution must be >= 24 so small shapes stay recognisable, got {resolution}.")
    extent = _SIZE_EXTENT[attrs.size]
    row, col = divmod(POSITIONS.index(attrs.position), 3)
    cx, cy = _GRID_CENTRES[col], _GRID_CENTRES[row]
    if rng is not None:
        extent *= 1.0 + rng.uniform(-_SIZE_JITTER, _SIZE_JITTER)
        cx += rng.uniform(-_POSITION_JITTER, _POSITION_JITTER)
        cy += rng.uniform(-_POSITION_JITTER, _POSITION_JITTER)
    half = extent / 2
    lo, hi = half + _BORDER_MARGIN, 1.0 - half - _BORDER_MARGIN
    cx, cy = min(max(cx, lo), hi), min(max(cy, lo), hi)

    scale = resolution * _supersample(resolution)
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
    background = Image.new("RGB", (resolution, resolution), BACKGROUND)
    foreground = Image.new("RGB", (resolution, resolution), COLORS[attrs.color])
    return Image.composite(foreground, background, coverage)


# ---------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------

# The first word of each list is the canonical one.
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
_COLOR_WORDS = {color: (color,) for color in COLORS} | {"purple": ("purple", "violet")}
_SHAPE_WORDS = {"circle": ("circle", "disc"), "square": ("square",), "triangle": ("triangle",)}
# Prepositional phrases ("at") and bare names ("where") for each position; first = canonical.
_POSITION_AT = {
    "top left": (
        "at the top left",
        "in the top left corner",
        "in the upper left corner",
        "at the upper left",
    ),
    "top": ("at the top", "at the top center", "in the upper middle", "at the top middle"),
    "top right": (
        "at the top right",
        "in the top right corner",
        "in the upper right corner",
        "at the upper right",
    ),
    "left": ("on the left", "at the left", "on the left side", "at the middle left"),
    "center": ("in the center", "in the middle", "at the centre", "in the centre"),
    "right": ("on the right", "at the right", "on the right side", "at the middle right"),
    "bottom left": (
        "at the bottom left",
        "in the bottom left corner",
        "in the lower left corner",
        "at the lower left",
    ),
    "bottom": ("at the bottom", "at the bottom center", "in the lower middle", "at the bottom middle"),
    "bottom right": (
        "at the bottom right",
        "in the bottom right corner",
        "in the lower right corner",
        "at the lower right",
    ),
}
_POSITION_WHERE = {
    "top left": ("top left", "upper left", "top left corner"),
    "top": ("top", "top center", "upper middle"),
    "top right": ("top right", "upper right", "top right corner"),
    "left": ("left", "left side", "middle left"),
    "center": ("center", "middle", "centre"),
    "right": ("right", "right side", "middle right"),
    "bottom left": ("bottom left", "lower left", "bottom left corner"),
    "bottom": ("bottom", "bottom center", "lower middle"),
    "bottom right": ("bottom right", "lower right", "bottom right corner"),
}
# Every template states all four attributes; the first is the canonical phrasing.
_TEMPLATES = (
    "a {size} {color} {shape} {at}",
    "{where}: a {size} {color} {shape}",
    "there is a {size} {color} {shape} {at}",
    "{at}, a {size} {color} {shape}",
    "a {size} {shape} in {color} {at}",
    "one {size} {color} {shape} {at}",
    "{size} {color} {shape}, {where}",
    "the {shape} is {color} and {size}, {at}",
    "a picture of a {size} {color} {shape} {at}",
    "a {color} {shape} {at}, {size}",
)


def _fill_template(template: str, attrs: ShapeAttributes, pick) -> str:
    """Fill ``template`` with words chosen by ``pick(options) -> option``."""
    text = template.format(
        size=pick(_SIZE_WORDS[attrs.size]),
        color=pick(_COLOR_WORDS[attrs.color]),
        shape=pick(_SHAPE_WORDS[attrs.shape]),
        at=pick(_POSITION_AT[attrs.position]),
        where=pick(_POSITION_WHERE[attrs.position]),
    )
    return re.sub(r"\ba (?=[aeiou])", "an ", text)  # "a orange" -> "an orange"


def make_caption(attrs: ShapeAttributes, rng: np.random.Generator | None = None) -> str:
    """A caption for ``attrs``: canonical ("a small red circle at the top left") if ``rng`` is None."""
    if rng is None:
        return _fill_template(_TEMPLATES[0], attrs, lambda options: options[0])
    template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
    return _fill_template(template, attrs, lambda options: options[rng.integers(len(options))])


def _invert(table: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    return {word: value for value, words in table.items() for word in words}


_WORD_TO_SIZE = _invert(_SIZE_WORDS)
_WORD_TO_COLOR = _invert(_COLOR_WORDS)
_WORD_TO_SHAPE = _invert(_SHAPE_WORDS)
_VERTICAL_WORDS = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
_HORIZONTAL_WORDS = {"left": "left", "right": "right"}
_CENTER_WORDS = {"center", "centre", "middle"}


def parse_caption(caption: str) -> ShapeAttributes | None:
    """Read the attributes back from a caption in any generated phrasing; None if any is missing or contradictory."""
    words = re.findall(r"[a-z]+", caption.lower())

    def the_one(table: Mapping[str, str]) -> str | None:
        found = {table[w] for w in words if w in table}
        return found.pop() if len(found) == 1 else None

    size, color, shape = the_one(_WORD_TO_SIZE), the_one(_WORD_TO_COLOR), the_one(_WORD_TO_SHAPE)
    # Position from independent vertical and horizontal words, so "upper left corner", "top left" and
    # "left side" all parse; "middle" only matters when neither direction is given.
    vertical, horizontal = the_one(_VERTICAL_WORDS), the_one(_HORIZONTAL_WORDS)
    if any(w in _VERTICAL_WORDS for w in words) and vertical is None:
        return None  # both "top" and "bottom"
    if any(w in _HORIZONTAL_WORDS for w in words) and horizontal is None:
        return None
    if vertical or horizontal:
        position = " ".join(p for p in (vertical, horizontal) if p)
    else:
        position = "center" if any(w in _CENTER_WORDS for w in words) else None
    if None in (size, color, shape, position):
        return None
    return ShapeAttributes(color=color, shape=shape, position=position, size=size)


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------

_SPLIT_IDS = {"train": 0, "validation": 1}


def generate_examples(
    split: str, num_examples: int, resolution: int = 32, seed: int = 0
) -> Iterator[dict[str, Any]]:
    """Yield ``{"image", "text", "color", "shape", "position", "size"}``; example i depends only on (seed, split, i).

    "train" uses the training combinations, "validation" only the held-out ones. Combinations are
    dealt in shuffled rounds, so each appears equally often (to within one round).
    """
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}.")
    combos = _train_tuple() if split == "train" else _heldout_tuple()
    split_id = _SPLIT_IDS[split]
    order, order_round = None, -1
    for index in range(num_examples):
        round_, slot = divmod(index, len(combos))
        if round_ != order_round:
            order = np.random.default_rng([seed, split_id, 0, round_]).permutation(len(combos))
            order_round = round_
        attrs = combos[order[slot]]
        rng = np.random.default_rng([seed, split_id, 1, index])
        image = render(attrs, resolution, rng)
        yield {
            "image": image,
            "text": make_caption(attrs, rng),
            "color": attrs.color,
            "shape": attrs.shape,
            "position": attrs.position,
            "size": attrs.size,
        }


def _features():
    import datasets

    return datasets.Features(
        {
            "image": datasets.Image(),
            "text": datasets.Value("string"),
            **{name: datasets.Value("string") for name in ("color", "shape", "position", "size")},
        }
    )


def _build_split(split: str, num_examples: int, resolution: int, seed: int):
    import datasets

    columns: dict[str, list] = {name: [] for name in ("image", "text", "color", "shape", "position", "size")}
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


def write_imagefolder(dataset, out_dir: str | Path) -> Path:
    """Write ``dataset`` as PNGs plus ``metadata.jsonl`` ("file_name", "text", other columns): an "imagefolder"."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    other_columns = [c for c in dataset.column_names if c != "image"]
    width = max(5, len(str(len(dataset) - 1)))
    with open(out_dir / "metadata.jsonl", "w", encoding="utf-8") as metadata:
        for index, example in enumerate(dataset):
            file_name = f"{index:0{width}d}.png"
            example["image"].convert("RGB").save(out_dir / file_name)
            record = {"file_name": file_name} | {c: example[c] for c in other_columns}
            metadata.write(json.dumps(record) + "\n")
    return out_dir


# ---------------------------------------------------------------------------------------------
# Checker: attributes from pixels
# ---------------------------------------------------------------------------------------------

_CHECK_MAX_SIDE = 128  # larger images are box-downsampled first; 128 px is plenty for these shapes
_PALETTE_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[c] for c in _PALETTE_NAMES], dtype=np.float32)


def _to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """float32 (H, W, 3) in [0, 255]; float input arrays are taken to be in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"Expected an (H, W, 3) image, got an array of shape {arr.shape}.")
    arr = arr[:, :, :3]
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(arr, 0.0, 1.0).astype(np.float32) * 255.0
    return arr.astype(np.float32)


def _box_filter3(x: np.ndarray) -> np.ndarray:
    padded = np.pad(x, 1, mode="edge")
    h, w = x.shape
    return sum(padded[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


def _dilate(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for i in range(3):
        for j in range(3):
            out |= padded[i : i + h, j : j + w]
    return out


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (a plain flood fill: masks here are small)."""
    h, w = mask.shape
    remaining = mask.copy()
    best: list[tuple[int, int]] = []
    for start in zip(*np.nonzero(mask)):
        if not remaining[start]:
            continue
        remaining[start] = False
        component, queue = [start], deque([start])
        while queue:
            y, x = queue.popleft()
            for ny in (y - 1, y, y + 1):
                for nx in (x - 1, x, x + 1):
                    if 0 <= ny < h and 0 <= nx < w and remaining[ny, nx]:
                        remaining[ny, nx] = False
                        component.append((ny, nx))
                        queue.append((ny, nx))
        if len(component) > len(best):
            best = component
    out = np.zeros_like(mask)
    ys, xs = zip(*best)
    out[list(ys), list(xs)] = True
    return out


# Coverage is measured within this many pixels of the blob, and values under the floor are dropped:
# wider rings or no floor let background noise dominate the higher moments (measured: blurred noisy
# 32 px renders fell from 99% to 89% agreement with a 3 px ring).
_RING = 2
_ALPHA_FLOOR = 0.1
# An upward triangle's skew is -2**1.5/135 = -0.021 when sharp; blur plus the floor pull small ones to
# about -0.007, while circles and squares stay within +-0.005 (32 px, Gaussian blur sigma 1 px, noise 8).
_SKEW_THRESHOLD = -0.007
_FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # area / bounding-box area


def _shape_features(alpha: np.ndarray) -> dict[str, float]:
    """Area, centroid and blur-invariant shape moments of a coverage map (pixel units)."""
    area = float(alpha.sum())
    weights = alpha / area
    ys, xs = np.indices(alpha.shape, dtype=np.float64) + 0.5
    mean_x, mean_y = float((weights * xs).sum()), float((weights * ys).sum())
    dx, dy = xs - mean_x, ys - mean_y

    def fourth_cumulant(u: np.ndarray) -> float:
        return float((weights * u**4).sum() - 3.0 * (weights * u**2).sum() ** 2)

    axis = fourth_cumulant(dx) + fourth_cumulant(dy)
    diagonal = fourth_cumulant((dx + dy) / np.sqrt(2.0)) + fourth_cumulant((dx - dy) / np.sqrt(2.0))
    return {
        "area": area,
        "mean_x": mean_x,
        "mean_y": mean_y,
        "skew_y": float((weights * dy**3).sum()) / area**1.5,
        "kurtosis_gap": (axis - diagonal) / 2.0 / area**2,
    }


def _nearest_color(colour: np.ndarray, background: np.ndarray) -> str:
    """The palette colour that, blended with the background by some fraction in [0.5, 1], best matches ``colour``.

    Blur mixes a small shape's pixels with the background; comparing along the blend line keeps a
    darkened red from reading as another colour.
    """
    offsets = _PALETTE - background  # (K, 3)
    target = colour - background
    scale = np.clip(offsets @ target / (offsets * offsets).sum(axis=1), 0.5, 1.0)  # (K,)
    residual = np.linalg.norm(target - scale[:, None] * offsets, axis=1)
    return _PALETTE_NAMES[int(np.argmin(residual))]


def _cell(centre: float) -> int:
    return int(centre > _GRID_SPLITS[0]) + int(centre > _GRID_SPLITS[1])


def read_attributes(image: Image.Image | np.ndarray) -> ShapeAttributes | None:
    """Colour, shape, position and size of the one shape in ``image``, from its pixels; None if none is found.

    Works at any resolution and tolerates mild blur and noise (VQ-VAE reconstructions).
    """
    arr = _to_array(image)
    factor = -(-max(arr.shape[:2]) // _CHECK_MAX_SIDE)
    if factor > 1:
        h, w = arr.shape[0] // factor * factor, arr.shape[1] // factor * factor
        arr = arr[:h, :w].reshape(h // factor, factor, w // factor, factor, 3).mean(axis=(1, 3))
    height, width = arr.shape[:2]

    # The background is most of the image, so the per-channel median estimates it even when a
    # generated image tints it slightly.
    background = np.median(arr.reshape(-1, 3), axis=0)
    distance = np.linalg.norm(arr - background, axis=2)
    peak = _box_filter3(distance).max()  # smoothed, so one noisy pixel cannot set the scale
    if peak < 60.0:
        return None
    blob = _largest_component(distance > 0.5 * peak)
    strong = blob & (distance > 0.8 * peak)
    if strong.sum() == 0:
        strong = blob
    colour = np.median(arr[strong], axis=0)
    color = _nearest_color(colour, background)

    # Per-pixel coverage by the shape: the projection of (pixel - background) onto (colour - background),
    # near the blob only; faint values are noise.
    direction = colour - background
    alpha = ((arr - background) @ direction) / max(float(direction @ direction), 1e-6)
    region = blob
    for _ in range(_RING):
        region = _dilate(region)
    alpha = np.where(region & (alpha >= _ALPHA_FLOOR), np.clip(alpha, 0.0, 1.0), 0.0)
    features = _shape_features(alpha)
    area = features["area"]
    # Shape from moments that a symmetric blur leaves (nearly) unchanged, scaled by the area, which blur
    # keeps: blur adds nothing to odd cumulants, and about the same to the fourth cumulant along an axis
    # and along a diagonal. An upward triangle is skewed, circles and squares are not; a square's fourth
    # cumulant along an axis is below the diagonal's by area**2/240, a circle's equals it.
    # (Fill ratios of bounding boxes, tried first, fell apart under blur: 80% on blurred 32 px renders.)
    if features["skew_y"] < _SKEW_THRESHOLD:
        shape = "triangle"
    elif features["kurtosis_gap"] < -1.0 / 480:
        shape = "square"
    else:
        shape = "circle"
    extent = float(np.sqrt(area / (height * width) / _FILL[shape]))
    size = "large" if extent > _SIZE_THRESHOLD else "small"
    centre_x, centre_y = features["mean_x"], features["mean_y"]
    if shape == "triangle":  # its centroid sits a sixth of its height below its box centre
        centre_y -= np.sqrt(2.0 * area) / 6.0
    position = POSITIONS[3 * _cell(centre_y / height) + _cell(centre_x / width)]
    return ShapeAttributes(color=color, shape=shape, position=position, size=size)


def _as_attributes(target: ShapeAttributes | Mapping[str, str] | str) -> ShapeAttributes | None:
    if isinstance(target, ShapeAttributes):
        return target
    if isinstance(target, str):
        return parse_caption(target)
    return ShapeAttributes(**{k: target[k] for k in ("color", "shape", "position", "size")})


def score_images(
    images: Iterable[Image.Image | np.ndarray],
    attributes: Iterable[ShapeAttributes | Mapping[str, str] | str],
) -> dict[str, float]:
    """Agreement of ``read_attributes`` with the targets (ShapeAttributes, dicts or captions).

    Returns per-attribute accuracy, "all_four" (every attribute right), "detected" (a shape was
    found) and "count". An image with no shape found counts as wrong on every attribute.
    """
    names = ("color", "shape", "position", "size")
    correct = dict.fromkeys((*names, "all_four", "detected"), 0)
    count = 0
    for image, target in zip(images, attributes, strict=True):
        count += 1
        expected = _as_attributes(target)
        if expected is None:
            raise ValueError(f"Cannot read attributes from target {target!r}.")
        found = read_attributes(image)
        if found is None:
            continue
        correct["detected"] += 1
        hits = [getattr(found, n) == getattr(expected, n) for n in names]
        for name, hit in zip(names, hits):
            correct[name] += hit
        correct["all_four"] += all(hits)
    result = {name: (value / count if count else 0.0) for name, value in correct.items()}
    result["count"] = count
    return result


def attributes_right(images: Iterable[Image.Image | np.ndarray], captions: Iterable[str]) -> list[int]:
    """Per image, how many of colour/shape/position/size the checker reads as its caption states (0-4)."""
    names = ("color", "shape", "position", "size")
    right = []
    for image, caption in zip(images, captions, strict=True):
        expected, found = parse_caption(caption), read_attributes(image)
        if expected is None or found is None:
            right.append(0)
            continue
        right.append(sum(getattr(found, n) == getattr(expected, n) for n in names))
    return right
