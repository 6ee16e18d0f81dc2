"""The pixel checker: attributes read back from rendered, resized, blurred and noisy images, and its scores."""

from __future__ import annotations

from dataclasses import astuple

import numpy as np
import pytest
from PIL import Image, ImageFilter

from minidalle.checker import attributes_right, checker_scores, read_attributes, score_images, scores_by_value
from minidalle.shape_attributes import ATTRIBUTE_NAMES, ShapeAttributes
from minidalle.shape_sets import BUILTIN
from minidalle.shapes import generate_examples


def _attrs(example: dict) -> ShapeAttributes:
    return ShapeAttributes(*(example[name] for name in ATTRIBUTE_NAMES))


def _degrade(image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """Roughly what a VQ-VAE reconstruction does: a 3x3 box blur and Gaussian noise (sigma 8/255)."""
    blurred = np.asarray(image.filter(ImageFilter.BoxBlur(1)), dtype=np.float32)
    return np.clip(blurred + rng.normal(0.0, 8.0, blurred.shape), 0, 255).astype(np.uint8)


def test_checker_agrees_with_ground_truth_at_32px():
    examples = list(generate_examples("train", 1100, seed=1)) + list(
        generate_examples("validation", 100, seed=1)
    )
    scores = score_images([e["image"] for e in examples], examples)  # dicts of attributes as targets
    assert scores["images"] == 1200
    assert scores["all_four_pct"] >= 99.0, scores
    for name in ATTRIBUTE_NAMES:
        assert scores[f"{name}_pct"] >= 99.0, scores


def test_checker_agrees_at_64px_and_reads_arrays():
    examples = list(generate_examples("train", 150, resolution=64, seed=2))
    arrays = [np.asarray(e["image"]) for e in examples]  # uint8 (H, W, 3)
    scores = score_images(arrays, [_attrs(e) for e in examples])
    assert scores["all_four_pct"] >= 99.0, scores
    as_float = arrays[0].astype(np.float32) / 255.0
    assert read_attributes(as_float) == _attrs(examples[0])


def test_checker_is_robust_to_blur_and_noise():
    rng = np.random.default_rng(0)
    examples = list(generate_examples("train", 600, seed=4))
    scores = score_images([_degrade(e["image"], rng) for e in examples], [_attrs(e) for e in examples])
    assert scores["all_four_pct"] >= 95.0, scores


def test_checker_finds_nothing_on_a_blank_image():
    blank = Image.new("RGB", (32, 32), BUILTIN.background)
    assert read_attributes(blank) is None
    noisy = np.clip(
        np.asarray(blank, dtype=float) + np.random.default_rng(0).normal(0, 8, (32, 32, 3)), 0, 255
    )
    assert read_attributes(noisy.astype(np.uint8)) is None


def test_score_images_reports_each_attribute_separately():
    examples = list(generate_examples("validation", 20, seed=0))
    images = [e["image"] for e in examples]
    truth = [_attrs(e) for e in examples]
    perfect = score_images(images, [e["text"] for e in examples])  # captions work as targets too
    assert perfect == {
        "color_pct": 100.0,
        "shape_pct": 100.0,
        "position_pct": 100.0,
        "size_pct": 100.0,
        "all_four_pct": 100.0,
        "attributes_pct": 100.0,
        "detected_pct": 100.0,
        "images": 20,
    }
    flip = {"small": "large", "large": "small"}
    wrong_size = [ShapeAttributes(a.color, a.shape, a.position, flip[a.size]) for a in truth]
    scores = score_images(images, wrong_size)
    assert scores["size_pct"] == 0.0 and scores["all_four_pct"] == 0.0 and scores["attributes_pct"] == 75.0
    assert scores["color_pct"] == scores["shape_pct"] == scores["position_pct"] == 100.0
    blank = Image.new("RGB", (32, 32), BUILTIN.background)
    assert score_images([blank], truth[:1])["detected_pct"] == 0.0
    with pytest.raises(ValueError, match="Cannot read attributes"):
        score_images(images[:1], ["a picture"])


def test_scores_are_percentages_of_all_images_with_undetected_ones_wrong():
    image = next(generate_examples("validation", 1, seed=0))
    truth = _attrs(image)
    wrong_colour = ShapeAttributes("green" if truth.color != "green" else "red", *astuple(truth)[1:])
    blank = Image.new("RGB", (32, 32), BUILTIN.background)
    rows = attributes_right([image["image"], image["image"], blank], [truth, wrong_colour, truth])
    assert rows == [(True, True, True, True), (False, True, True, True), None]
    scores = checker_scores(rows)
    assert scores["images"] == 3 and scores["detected_pct"] == 100.0 * 2 / 3
    assert scores["color_pct"] == 100.0 / 3 and scores["shape_pct"] == 100.0 * 2 / 3
    assert scores["all_four_pct"] == 100.0 / 3 and scores["attributes_pct"] == 100.0 * 7 / 12
    assert checker_scores([])["all_four_pct"] == 0.0


def test_scores_by_value_splits_all_four_by_shape_and_size():
    targets = [
        ShapeAttributes("red", "circle", "top left", "small"),
        ShapeAttributes("red", "circle", "top left", "large"),
        ShapeAttributes("blue", "square", "center", "small"),
        ShapeAttributes("blue", "square", "center", "small"),
    ]
    rows = [(True, True, True, True), (True, False, True, True), None, (True, True, True, True)]
    assert scores_by_value(rows, targets) == {
        "all_four_pct_shape_circle": 50.0,
        "all_four_pct_shape_square": 50.0,  # a picture with no shape found counts as wrong
        "all_four_pct_size_large": 0.0,
        "all_four_pct_size_small": pytest.approx(200 / 3),
    }
