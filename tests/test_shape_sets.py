"""Shape sets: the built-in set stays as it was, and each sibling renders, captions, holds out and reads back."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import astuple, replace

import numpy as np
import pytest
from PIL import ImageFilter

from minidalle.checker import score_images
from minidalle.errors import ArgumentError
from minidalle.shape_attributes import (
    ATTRIBUTE_NAMES,
    ShapeAttributes,
    all_combinations,
    heldout_combinations,
    train_combinations,
)
from minidalle.shape_captions import _FEW_TEMPLATES, parse_caption
from minidalle.shape_sets import BUILTIN, SHAPE_SETS
from minidalle.shapes import generate_examples

SIBLINGS = [s for s in SHAPE_SETS.values() if s is not BUILTIN]


def _digest(examples) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(example["image"].tobytes())
        digest.update(example["text"].encode())
        digest.update(repr([example[name] for name in ATTRIBUTE_NAMES]).encode())
    return digest.hexdigest()


# Taken from main (c7b03e2) before shape sets existed: the demo's data must stay byte for byte.
@pytest.mark.parametrize(
    "split, count, resolution, seed, expected",
    [
        ("train", 64, 32, 0, "3bbd57de94999550ab9203d6bb9229e5acfc088fd4f0901cd61b83f3757b6e37"),
        ("validation", 32, 32, 0, "821d8d2361bec1d980d46848eaa562395f4b36df5d51a6bb5c81d9441c7bca12"),
        ("validation", 32, 32, 99, "6fdec5fb95411c92347594f86f65dcba46f665dcd3ad24c66ffbc3f4ed6b6908"),
    ],
)
def test_the_builtin_set_is_byte_identical_to_before(split, count, resolution, seed, expected):
    assert _digest(generate_examples(split, count, resolution, seed)) == expected
    assert _digest(generate_examples(split, count, resolution, seed, SHAPE_SETS["builtin"])) == expected


def test_the_builtin_heldout_combinations_are_unchanged():
    combos = repr([astuple(c) for c in heldout_combinations()]).encode()
    assert (
        hashlib.sha256(combos).hexdigest()
        == "743038ce5b75221e53189683f5e53b9e3d16c026f98fae8b70a3cb31967ad902"
    )


def test_siblings_change_what_a_recipe_could_overfit_to():
    for sibling in SIBLINGS:
        for field in ("colors", "background", "supersample", "position_jitter", "heldout_seed"):
            assert getattr(sibling, field) != getattr(BUILTIN, field), (sibling.name, field)
    assert {"white", "purple"} <= set(SHAPE_SETS["sibling_a"].palette)
    assert {s.phrasings for s in SHAPE_SETS.values()} == {"many", "few"}
    assert len({s.size_extents for s in SHAPE_SETS.values()}) > 1
    assert len({s.train_size for s in SHAPE_SETS.values()}) > 1
    assert len({s.heldout_fraction for s in SHAPE_SETS.values()}) == len(SHAPE_SETS)


@pytest.mark.parametrize("shape_set", SHAPE_SETS.values(), ids=list(SHAPE_SETS))
def test_palette_is_far_from_the_background_and_apart(shape_set):
    palette = np.array(list(shape_set.palette.values()), dtype=float)
    assert np.linalg.norm(palette - np.array(shape_set.background), axis=1).min() > 150
    assert min(np.linalg.norm(a - b) for a, b in itertools.combinations(palette, 2)) > 80


@pytest.mark.parametrize("shape_set", SIBLINGS, ids=[s.name for s in SIBLINGS])
def test_sibling_heldout_keeps_every_value_pair_in_training(shape_set):
    combos, heldout = all_combinations(shape_set), heldout_combinations(shape_set)
    # every colour of the palette with every shape, position and size of the built-in set
    assert {c.color for c in combos} == set(shape_set.palette) and len(set(combos)) == len(combos)
    assert {astuple(c)[1:] for c in combos} == {astuple(c)[1:] for c in all_combinations()}
    assert len(heldout) == round(shape_set.heldout_fraction * len(combos))
    assert set(heldout) != set(heldout_combinations(replace(shape_set, heldout_seed=1)))
    train = train_combinations(shape_set)
    for i, j in itertools.combinations(range(4), 2):
        assert {(a[i], a[j]) for a in map(astuple, combos)} == {(a[i], a[j]) for a in map(astuple, train)}
    validation = {
        ShapeAttributes(*(e[n] for n in ATTRIBUTE_NAMES))
        for e in generate_examples("validation", 60, 32, 0, shape_set)
    }
    assert validation <= set(heldout)


def test_few_phrasings_are_three_fixed_sentences_that_parse_back():
    sibling = SHAPE_SETS["sibling_a"]
    examples = list(generate_examples("train", 200, 32, 0, sibling))
    frames = {
        e["text"].replace(e["color"], "C").replace(e["shape"], "S")
        for e in examples
        if e["size"] == "small" and e["position"] == "left"
    }
    assert 1 < len(frames) <= len(_FEW_TEMPLATES) == 3
    for example in examples:
        assert parse_caption(example["text"]) == ShapeAttributes(*(example[n] for n in ATTRIBUTE_NAMES))


@pytest.mark.parametrize("shape_set", SIBLINGS, ids=[s.name for s in SIBLINGS])
def test_checker_reads_each_sibling_with_its_palette(shape_set):
    examples = list(generate_examples("train", 500, 32, 1, shape_set)) + list(
        generate_examples("validation", 100, 32, 1, shape_set)
    )
    images = [e["image"] for e in examples]
    assert score_images(images, examples, shape_set)["all_four_pct"] == 100.0
    rng = np.random.default_rng(0)  # roughly a VQ-VAE reconstruction: box blur and noise
    blurred = [
        np.asarray(i.filter(ImageFilter.BoxBlur(1)), dtype=float) + rng.normal(0, 8, (32, 32, 3))
        for i in images[:300]
    ]
    degraded = [np.clip(b, 0, 255).astype(np.uint8) for b in blurred]
    assert score_images(degraded, examples[:300], shape_set)["all_four_pct"] >= 97.0
    # the built-in palette and sizes misread the sibling: the checker must be told the set
    assert score_images(images, examples, BUILTIN)["all_four_pct"] < 90.0


@pytest.mark.parametrize("shape_set", SIBLINGS, ids=[s.name for s in SIBLINGS])
def test_sibling_renders_read_back_at_64px_inside_the_image(shape_set):
    examples = list(generate_examples("train", 60, 64, 2, shape_set))
    assert examples[0]["image"].size == (64, 64)
    assert score_images([e["image"] for e in examples], examples, shape_set)["all_four_pct"] == 100.0
    for example in examples:  # jitter never pushes a shape into the outermost pixel ring
        pixels = np.asarray(example["image"])
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        assert (border == shape_set.background).all()


def test_a_set_that_cannot_be_made_is_refused_with_the_fix():
    with pytest.raises(ArgumentError, match="phrasings must be 'many' or 'few'"):
        replace(BUILTIN, phrasings="some")
    with pytest.raises(ArgumentError, match="heldout_fraction must be in"):
        replace(BUILTIN, heldout_fraction=0.0)
    with pytest.raises(ArgumentError, match="choose another heldout_seed or a smaller heldout_fraction"):
        heldout_combinations(replace(BUILTIN, heldout_fraction=0.5))
