"""The checker: reads colour, shape, position and size back from an image's pixels alone.

It tests the renderer and scores generated images against their captions, at any resolution and
under mild blur and noise (VQ-VAE reconstructions). Scores are percentages of images:

    read_attributes(image)  # ShapeAttributes("red", "circle", "top left", "small"), or None
    score_images(images, captions)  # {"color_pct": ..., "all_four_pct": ..., "attributes_pct": ...}
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

import numpy as np
from PIL import Image

from minidalle.shape_attributes import ATTRIBUTE_NAMES, GRID_SPLITS, POSITIONS, ShapeAttributes
from minidalle.shape_captions import parse_caption
from minidalle.shape_sets import BUILTIN, ShapeSet

_CHECK_MAX_SIDE = 128  # larger images are box-downsampled first; 128 px is plenty for these shapes


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


def _nearest_color(colour: np.ndarray, background: np.ndarray, shape_set: ShapeSet) -> str:
    """The set's colour that, blended with the background by some fraction in [0.5, 1], best matches ``colour``.

    Blur mixes a small shape's pixels with the background; comparing along the blend line keeps a
    darkened red from reading as another colour.
    """
    names = [name for name, _ in shape_set.colors]
    offsets = np.array([rgb for _, rgb in shape_set.colors], dtype=np.float32) - background  # (K, 3)
    target = colour - background
    scale = np.clip(offsets @ target / (offsets * offsets).sum(axis=1), 0.5, 1.0)  # (K,)
    residual = np.linalg.norm(target - scale[:, None] * offsets, axis=1)
    return names[int(np.argmin(residual))]


def _cell(centre: float) -> int:
    return int(centre > GRID_SPLITS[0]) + int(centre > GRID_SPLITS[1])


def read_attributes(image: Image.Image | np.ndarray, shape_set: ShapeSet = BUILTIN) -> ShapeAttributes | None:
    """Colour, shape, position and size of the one shape in ``image``, from its pixels; None if none is found.

    Colours are named from ``shape_set``'s palette and sizes split at its threshold. Works at any
    resolution and tolerates mild blur and noise (VQ-VAE reconstructions).
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
    color = _nearest_color(colour, background, shape_set)

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
    size = "large" if extent > shape_set.size_threshold else "small"
    centre_x, centre_y = features["mean_x"], features["mean_y"]
    if shape == "triangle":  # its centroid sits a sixth of its height below its box centre
        centre_y -= np.sqrt(2.0 * area) / 6.0
    position = POSITIONS[3 * _cell(centre_y / height) + _cell(centre_x / width)]
    return ShapeAttributes(color=color, shape=shape, position=position, size=size)


Target = ShapeAttributes | Mapping[str, str] | str  # attributes, a dict of them, or a caption
Hits = tuple[bool, bool, bool, bool] | None  # colour, shape, position, size read right; None: no shape found


def _as_attributes(target: Target) -> ShapeAttributes:
    if isinstance(target, ShapeAttributes):
        return target
    if isinstance(target, str):
        expected = parse_caption(target)
    else:
        expected = ShapeAttributes(**{name: target[name] for name in ATTRIBUTE_NAMES})
    if expected is None:
        raise ValueError(f"Cannot read attributes from target {target!r}.")
    return expected


def attributes_right(
    images: Iterable[Image.Image | np.ndarray], targets: Iterable[Target], shape_set: ShapeSet = BUILTIN
) -> list[Hits]:
    """Per image, whether the checker reads colour, shape, position and size as its target states them."""
    rows: list[Hits] = []
    for image, target in zip(images, targets, strict=True):
        expected, found = _as_attributes(target), read_attributes(image, shape_set)
        if found is None:
            rows.append(None)
        else:
            rows.append(tuple(getattr(found, n) == getattr(expected, n) for n in ATTRIBUTE_NAMES))
    return rows


def checker_scores(rows: list[Hits]) -> dict[str, float]:
    """Percentages of the images of ``attributes_right`` rows, and their number ("images").

    "<attribute>_pct": that attribute read right; "all_four_pct": all four; "attributes_pct": the
    readings right out of four per image; "detected_pct": a shape found. An image with no shape found
    counts as wrong on every attribute.
    """
    n = max(1, len(rows))
    found = [row for row in rows if row is not None]
    scores = {
        f"{name}_pct": 100.0 * sum(row[i] for row in found) / n for i, name in enumerate(ATTRIBUTE_NAMES)
    }
    scores["all_four_pct"] = 100.0 * sum(all(row) for row in found) / n
    scores["attributes_pct"] = 100.0 * sum(sum(row) for row in found) / (4 * n)
    scores["detected_pct"] = 100.0 * len(found) / n
    scores["images"] = len(rows)
    return scores


def scores_by_value(
    rows: list[Hits], targets: Iterable[Target], names: tuple[str, ...] = ("shape", "size")
) -> dict[str, float]:
    """All four read right, per value of each attribute in ``names``: {"all_four_pct_size_small": ...}.
    Where a check falls short, this says which kind of picture it falls short on (small shapes first)."""
    groups: dict[str, list[Hits]] = {}
    for row, target in zip(rows, targets, strict=True):
        expected = _as_attributes(target)
        for name in names:
            groups.setdefault(f"all_four_pct_{name}_{getattr(expected, name)}", []).append(row)
    return {key: checker_scores(group)["all_four_pct"] for key, group in sorted(groups.items())}


def score_images(
    images: Iterable[Image.Image | np.ndarray], targets: Iterable[Target], shape_set: ShapeSet = BUILTIN
) -> dict[str, float]:
    """How often the checker reads ``images`` of ``shape_set`` as ``targets`` state (see ``checker_scores``)."""
    return checker_scores(attributes_right(images, targets, shape_set))
