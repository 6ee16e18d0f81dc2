"""Captions of the built-in data: every phrasing states all four attributes, and parses back.

make_caption(ShapeAttributes("red", "circle", "top left", "small"))  # "a small red circle at the top left"
parse_caption("top left: a tiny red disc")  # the same attributes
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from minidalle.shape_attributes import ShapeAttributes
from minidalle.shape_sets import KNOWN_COLORS

# The first word of each list is the canonical one.
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
_COLOR_WORDS = {color: (color,) for color in KNOWN_COLORS} | {"purple": ("purple", "violet")}
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
# A set with few phrasings uses these three, each with the canonical word for every value.
_FEW_TEMPLATES = (
    "a {size} {color} {shape} {at}",
    "{size} {color} {shape}, {where}",
    "an image of a {color} {shape}, {size}, {at}",
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


def make_caption(
    attrs: ShapeAttributes, rng: np.random.Generator | None = None, phrasings: str = "many"
) -> str:
    """A caption for ``attrs``: canonical ("a small red circle at the top left") if ``rng`` is None.

    ``phrasings``: "many" (ten templates, synonyms) or "few" (three templates, canonical words).
    """
    if rng is None:
        return _fill_template(_TEMPLATES[0], attrs, lambda options: options[0])
    if phrasings == "few":
        template = _FEW_TEMPLATES[rng.integers(len(_FEW_TEMPLATES))]
        return _fill_template(template, attrs, lambda options: options[0])
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
