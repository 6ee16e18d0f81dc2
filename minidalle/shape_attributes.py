"""What an image of the built-in data shows: one shape, described by four attributes.

Colour, shape, position (a 3x3 grid) and size, the geometry each position and size stands for
(shared by the renderer, which draws it, and the checker, which reads it back), and the fixed
tenth of attribute combinations held out of training for the validation split.
"""

from __future__ import annotations

import itertools
from dataclasses import astuple, dataclass, fields
from functools import lru_cache

import numpy as np

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
SIZE_EXTENT = {"small": 0.19, "large": 0.31}
SIZE_THRESHOLD = 0.25  # the checker's boundary, halfway between the two
# Grid centres along each axis. Not thirds (1/6, 1/2, 5/6): a large shape centred at 1/6 would touch
# the border, so the outer centres move inwards. The checker splits halfway between centres.
GRID_CENTRES = (0.2, 0.5, 0.8)
GRID_SPLITS = (0.35, 0.65)

_HELDOUT_FRACTION = 0.1
_HELDOUT_SEED = 20240601  # fixed: the held-out set must never change between runs or users


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


ATTRIBUTE_NAMES: tuple[str, ...] = tuple(
    f.name for f in fields(ShapeAttributes)
)  # color, shape, position, size


def all_combinations() -> list[ShapeAttributes]:
    """Every (colour, shape, position, size) combination, in a fixed order."""
    return [ShapeAttributes(*combo) for combo in itertools.product(COLORS, SHAPES, POSITIONS, SIZES)]


def _pairs(attrs: ShapeAttributes) -> list[tuple]:
    values = astuple(attrs)
    return [(i, values[i], j, values[j]) for i, j in itertools.combinations(range(4), 2)]


@lru_cache(maxsize=1)
def heldout_combinations() -> tuple[ShapeAttributes, ...]:
    """The fixed ~10% of combinations that only the validation split uses, in ``all_combinations`` order."""
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


@lru_cache(maxsize=1)
def train_combinations() -> tuple[ShapeAttributes, ...]:
    """Every combination but the held-out ones, in ``all_combinations`` order."""
    heldout = set(heldout_combinations())
    return tuple(c for c in all_combinations() if c not in heldout)
