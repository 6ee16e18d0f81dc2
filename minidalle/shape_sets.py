"""Sets of captioned shapes: what one set can vary, and the named sets (the built-in one and its siblings).

A recipe tuned on one set can overfit to what that set holds fixed: its palette and background, its
renderer, its shape sizes, its phrasings, which combinations it holds out, its size. A sibling set
changes these and keeps the task (one coloured shape, four attributes), so a held-out score on it
tells whether the recipe composes attributes or has learnt the built-in set.

    SHAPE_SETS["sibling_a"].palette  # {"white": (245, 245, 245), "purple": ...}
    python -m minidalle.make_shapes --variant sibling_a --out data/sibling_a  # an imagefolder
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from minidalle.errors import ArgumentError

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ShapeSet:
    """Everything a set varies; the built-in set is ``SHAPE_SETS["builtin"]``."""

    name: str
    colors: tuple[tuple[str, RGB], ...]  # (name, RGB) in the order combinations are enumerated
    background: RGB
    size_extents: tuple[float, float]  # bounding-box side of "small" and "large", fraction of the image side
    # Antialiasing: 0 draws on a canvas of >= 256 px and box-downsamples (exact coverage); 1 draws at
    # the image's own resolution (hard, aliased edges); k > 1 takes k x k samples per pixel.
    supersample: int
    position_jitter: float  # uniform, +- this fraction of the image side, per axis
    size_jitter: float  # relative, uniform +-
    phrasings: str  # "many": ten templates with synonyms; "few": three fixed templates, one word per value
    heldout_fraction: float  # of the colour x shape x position x size combinations
    heldout_seed: int
    train_size: int  # what make_shapes exports unless told otherwise
    eval_size: int

    def __post_init__(self) -> None:
        small, large = self.size_extents
        for wrong, problem in (
            (
                self.phrasings not in ("many", "few"),
                f"phrasings must be 'many' or 'few', not {self.phrasings!r}",
            ),
            (
                not 0.1 <= small < large <= 0.4,
                f"size_extents need 0.1 <= small < large <= 0.4, not {self.size_extents}",
            ),
            (self.supersample < 0, f"supersample must be >= 0, not {self.supersample}"),
            (
                not 0 < self.heldout_fraction <= 0.5,
                f"heldout_fraction must be in (0, 0.5], not {self.heldout_fraction}",
            ),
            (min(self.train_size, self.eval_size) < 1, "train_size and eval_size must be >= 1"),
        ):
            if wrong:
                raise ArgumentError(f"Shape set {self.name!r}: {problem}.")

    @property
    def palette(self) -> dict[str, RGB]:
        return dict(self.colors)

    @property
    def size_extent(self) -> dict[str, float]:
        return dict(zip(("small", "large"), self.size_extents))

    @property
    def size_threshold(self) -> float:
        """The checker's boundary between the sizes: halfway between the two extents."""
        return sum(self.size_extents) / 2


BUILTIN = ShapeSet(
    name="builtin",
    # Hues spread round the wheel on a dark neutral background: every colour is >= 190 from the
    # background in RGB, the closest pair (orange/yellow) ~100 apart, and antialiased edges blend
    # towards the background without passing near another colour.
    colors=(
        ("red", (220, 40, 40)),
        ("orange", (250, 135, 20)),
        ("yellow", (240, 230, 50)),
        ("green", (50, 190, 70)),
        ("blue", (50, 100, 240)),
        ("purple", (165, 70, 215)),
    ),
    background=(40, 40, 40),
    size_extents=(0.19, 0.31),  # ~6 and ~10 px at 32 px
    supersample=0,
    position_jitter=1.0 / 32,  # +-1 px at 32 px: far from the checker's splits
    size_jitter=0.05,
    phrasings="many",
    heldout_fraction=0.1,
    heldout_seed=20240601,
    train_size=20000,
    eval_size=512,
)

# Siblings: the built-in set with what a recipe could overfit to changed.
# Other colours (white among them, a bluer purple) on a dark slate background, coarse 2x2
# antialiasing with sub-pixel jitter up to 2.5 px, three fixed phrasings, 12% held out.
SIBLING_A = replace(
    BUILTIN,
    name="sibling_a",
    colors=(
        ("white", (245, 245, 245)),
        ("purple", (130, 60, 200)),
        ("cyan", (40, 200, 210)),
        ("magenta", (230, 50, 160)),
        ("lime", (150, 230, 40)),
        ("red", (225, 45, 30)),
    ),
    background=(30, 36, 52),
    supersample=2,
    position_jitter=2.5 / 32,
    size_jitter=0.08,
    phrasings="few",
    heldout_fraction=0.12,
    heldout_seed=7,
)
# Dark colours on a light background; smaller small and larger large shapes drawn without
# antialiasing; 15% held out; half the training images.
SIBLING_B = replace(
    BUILTIN,
    name="sibling_b",
    colors=(
        ("black", (25, 25, 25)),
        ("red", (200, 30, 40)),
        ("blue", (30, 70, 200)),
        ("green", (30, 140, 60)),
        ("purple", (120, 40, 160)),
        ("orange", (235, 120, 20)),
    ),
    background=(235, 232, 222),
    size_extents=(0.16, 0.36),
    supersample=1,
    position_jitter=1.5 / 32,
    heldout_fraction=0.15,
    heldout_seed=11,
    train_size=10000,
)

SHAPE_SETS: dict[str, ShapeSet] = {s.name: s for s in (BUILTIN, SIBLING_A, SIBLING_B)}
# Every colour name of every set: what captions may name and attributes may hold.
KNOWN_COLORS: tuple[str, ...] = tuple(
    dict.fromkeys(name for s in SHAPE_SETS.values() for name, _ in s.colors)
)


def shape_set_named(name: str) -> ShapeSet:
    if name not in SHAPE_SETS:
        raise ArgumentError(f"Unknown shape set {name!r}; choose one of {sorted(SHAPE_SETS)}.")
    return SHAPE_SETS[name]
