"""What an image of a shape set shows: one shape, described by four attributes.

Colour, shape, position (a 3x3 grid) and size, the geometry each position stands for (shared by the
renderer, which draws it, and the checker, which reads it back), and the fixed share of attribute
combinations a set (``minidalle.shape_sets``) holds out of training for its validation split.
"""

from __future__ import annotations

import itertools
from dataclasses import astuple, dataclass, fields
from functools import lru_cache

import numpy as np

from minidalle.errors import ArgumentError
from minidalle.shape_sets import BUILTIN, KNOWN_COLORS, ShapeSet

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

# Grid centres along each axis. Not thirds (1/6, 1/2, 5/6): a large shape centred at 1/6 would touch
# the border, so the outer centres move inwards. The checker splits halfway between centres.
GRID_CENTRES = (0.2, 0.5, 0.8)
GRID_SPLITS = (0.35, 0.65)


@dataclass(frozen=True)
class ShapeAttributes:
    color: str
    shape: str
    position: str
    size: str

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("color", self.color, KNOWN_COLORS),
            ("shape", self.shape, SHAPES),
            ("position", self.position, POSITIONS),
            ("size", self.size, SIZES),
        ):
            if value not in allowed:
                raise ValueError(f"Unknown {name} {value!r}; expected one of {allowed}.")


ATTRIBUTE_NAMES: tuple[str, ...] = tuple(
    f.name for f in fields(ShapeAttributes)
)  # color, shape, position, size


def all_combinations(shape_set: ShapeSet = BUILTIN) -> list[ShapeAttributes]:
    """Every (colour, shape, position, size) combination of ``shape_set``, in a fixed order."""
    colors = shape_set.palette
    return [ShapeAttributes(*combo) for combo in itertools.product(colors, SHAPES, POSITIONS, SIZES)]


def _pairs(attrs: ShapeAttributes) -> list[tuple]:
    values = astuple(attrs)
    return [(i, values[i], j, values[j]) for i, j in itertools.combinations(range(4), 2)]


@lru_cache(maxsize=8)
def heldout_combinations(shape_set: ShapeSet = BUILTIN) -> tuple[ShapeAttributes, ...]:
    """The fixed share of combinations that only the validation split uses, in ``all_combinations`` order.

    It depends only on the set's palette names, ``heldout_fraction`` and ``heldout_seed``: it must never
    change between runs or users.
    """
    combos = all_combinations(shape_set)
    n_heldout = round(shape_set.heldout_fraction * len(combos))
    # How many training combinations still contain each pair of attribute values: a combination may be
    # held out only if none of its pairs would drop to zero, so held-out captions are compositions of
    # pairs the model has seen.
    pair_count: dict[tuple, int] = {}
    for combo in combos:
        for pair in _pairs(combo):
            pair_count[pair] = pair_count.get(pair, 0) + 1
    # Each value is held out about equally often, so validation covers every colour, shape, position and size.
    value_count: dict[tuple[int, str], int] = {}
    caps = [-(-n_heldout // len(values)) for values in (shape_set.colors, SHAPES, POSITIONS, SIZES)]
    heldout = []
    for k in np.random.default_rng(shape_set.heldout_seed).permutation(len(combos)):
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
    if len(heldout) < n_heldout:
        raise ArgumentError(
            f"Shape set {shape_set.name!r}: only {len(heldout)} of {n_heldout} combinations can be held out "
            "with every value pair kept in training; choose another heldout_seed or a smaller heldout_fraction."
        )
    order = {combo: i for i, combo in enumerate(combos)}
    return tuple(sorted(heldout, key=order.__getitem__))


@lru_cache(maxsize=8)
def train_combinations(shape_set: ShapeSet = BUILTIN) -> tuple[ShapeAttributes, ...]:
    """Every combination but the held-out ones, in ``all_combinations`` order."""
    heldout = set(heldout_combinations(shape_set))
    return tuple(c for c in all_combinations(shape_set) if c not in heldout)
