"""The built-in shapes dataset: attribute values, rendering, held-out split, captions, caching."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest

from minidalle import shape_captions, shapes
from minidalle.checker import read_attributes
from minidalle.shape_attributes import (
    ATTRIBUTE_NAMES,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapeAttributes,
    all_combinations,
    heldout_combinations,
    train_combinations,
)
from minidalle.shape_captions import make_caption, parse_caption
from minidalle.shape_sets import BUILTIN
from minidalle.shapes import build_builtin_dataset, generate_examples, render, write_imagefolder

BACKGROUND, COLORS = BUILTIN.background, BUILTIN.palette


def _attrs(example: dict) -> ShapeAttributes:
    return ShapeAttributes(*(example[name] for name in ATTRIBUTE_NAMES))


# ---------------------------------------------------------------------------------------------
# Attribute values and rendering
# ---------------------------------------------------------------------------------------------


def test_attribute_values_are_as_specified():
    assert len(COLORS) >= 6 and len(SHAPES) >= 3 and len(POSITIONS) == 9 and len(SIZES) == 2
    assert POSITIONS[0] == "top left" and POSITIONS[4] == "center" and POSITIONS[-1] == "bottom right"
    palette = np.array(list(COLORS.values()), dtype=float)
    assert np.linalg.norm(palette - np.array(BACKGROUND), axis=1).min() > 150
    gaps = [np.linalg.norm(a - b) for a, b in itertools.combinations(palette, 2)]
    assert min(gaps) > 80
    assert len(all_combinations()) == len(COLORS) * len(SHAPES) * len(POSITIONS) * len(SIZES)
    with pytest.raises(ValueError):
        ShapeAttributes("pink", "circle", "top", "small")


@pytest.mark.parametrize("resolution", [24, 32, 64, 256])
def test_render_any_resolution_is_antialiased_and_inside_the_image(resolution):
    attrs = ShapeAttributes("red", "circle", "bottom right", "large")
    image = render(attrs, resolution)
    assert image.mode == "RGB" and image.size == (resolution, resolution)
    arr = np.asarray(image).astype(int)
    is_background = (arr == BACKGROUND).all(axis=2)
    is_colour = (arr == COLORS["red"]).all(axis=2)
    assert is_colour.sum() > 0.05 * resolution**2
    assert (~is_background & ~is_colour).any()  # blended edge pixels: antialiased
    assert read_attributes(image) == attrs


def test_jitter_varies_images_but_keeps_shapes_inside_the_image():
    attrs = ShapeAttributes("yellow", "square", "top left", "large")  # the tightest spot
    renders = [np.asarray(render(attrs, 32, np.random.default_rng(i))) for i in range(40)]
    assert len({r.tobytes() for r in renders}) > 30
    for r in renders:
        border = np.concatenate([r[0], r[-1], r[:, 0], r[:, -1]])
        assert (border == BACKGROUND).all()


# ---------------------------------------------------------------------------------------------
# Held-out split
# ---------------------------------------------------------------------------------------------


def test_heldout_is_a_fixed_tenth_and_every_value_pair_stays_in_training():
    heldout = heldout_combinations()
    assert heldout == heldout_combinations()
    assert len(set(heldout)) == len(heldout) == round(0.1 * len(all_combinations()))
    train = [c for c in all_combinations() if c not in set(heldout)]
    assert list(train_combinations()) == train
    for i, j in itertools.combinations(range(4), 2):
        needed = {(a[i], a[j]) for a in map(astuple, all_combinations())}
        seen = {(a[i], a[j]) for a in map(astuple, train)}
        assert needed == seen, (ATTRIBUTE_NAMES[i], ATTRIBUTE_NAMES[j], needed - seen)
    for i, values in enumerate((COLORS, SHAPES, POSITIONS, SIZES)):
        assert {astuple(c)[i] for c in heldout} == set(values)  # validation covers every value too


def test_splits_use_only_their_combinations():
    heldout = set(heldout_combinations())
    train = [_attrs(e) for e in generate_examples("train", 600, seed=3)]
    validation = [_attrs(e) for e in generate_examples("validation", 64, seed=3)]
    assert not heldout & set(train)
    assert set(validation) == heldout  # two rounds over the held-out set: each combination twice
    assert len(set(train)) == len(all_combinations()) - len(heldout)  # 600 > 292: all dealt
    with pytest.raises(ValueError):
        next(generate_examples("test", 1))


# ---------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------


def test_canonical_caption():
    assert (
        make_caption(ShapeAttributes("red", "circle", "top left", "small"))
        == "a small red circle at the top left"
    )
    assert (
        make_caption(ShapeAttributes("orange", "square", "center", "large"))
        == "a large orange square in the center"
    )


def test_every_template_and_word_choice_parses_back():
    count = 0
    for template in shape_captions._TEMPLATES:
        for k, attrs in enumerate(all_combinations()):
            # Cycle through every synonym of every attribute across the combinations.
            for offset in range(4):
                caption = shape_captions._fill_template(
                    template, attrs, lambda opts, o=offset + k: opts[o % len(opts)]
                )
                assert parse_caption(caption) == attrs, caption
                assert len(caption.split()) <= 12, caption
                assert "a orange" not in caption
                count += 1
    assert count == 4 * len(shape_captions._TEMPLATES) * len(all_combinations())


def test_random_captions_vary_and_parse_back():
    rng = np.random.default_rng(0)
    attrs = ShapeAttributes("purple", "triangle", "bottom left", "small")
    captions = {make_caption(attrs, rng) for _ in range(300)}
    assert len(captions) > 50
    assert all(parse_caption(c) == attrs for c in captions)
    assert len({c.split()[0] for c in captions}) >= 4  # not one sentence frame with swapped words


@pytest.mark.parametrize(
    "caption",
    [
        "",
        "a red circle at the top left",
        "a small red circle",
        "a small red blue circle in the center",
        "a small red circle at the top bottom",
        "a small red circle on the left right",
        "a small red shape at the top",
    ],
)
def test_incomplete_or_contradictory_captions_do_not_parse(caption):
    assert parse_caption(caption) is None


def test_parse_is_lenient_about_case_and_punctuation():
    assert parse_caption("A Big BLUE Square, Lower-Right Corner!") == ShapeAttributes(
        "blue", "square", "bottom right", "large"
    )


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


def test_examples_are_deterministic_in_seed_split_and_index():
    first = list(generate_examples("train", 40, seed=5))
    again = list(generate_examples("train", 40, seed=5))
    longer = list(generate_examples("train", 60, seed=5))[:40]
    other = list(generate_examples("train", 40, seed=6))
    for a, b, c in zip(first, again, longer):
        assert a["text"] == b["text"] == c["text"]
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        assert np.array_equal(np.asarray(a["image"]), np.asarray(c["image"]))
    assert [e["text"] for e in first] != [e["text"] for e in other]
    assert parse_caption(first[0]["text"]) == _attrs(first[0])


# ---------------------------------------------------------------------------------------------
# Datasets: cache and imagefolder
# ---------------------------------------------------------------------------------------------


def test_build_builtin_dataset_caches_on_disk(tmp_path, monkeypatch):
    start = time.perf_counter()
    dsd = build_builtin_dataset(tmp_path, train_size=300, eval_size=40, seed=1)
    first = time.perf_counter() - start

    def no_generation(*args, **kwargs):
        raise AssertionError("a cached dataset was generated again")

    with monkeypatch.context() as patch:
        patch.setattr(shapes, "generate_examples", no_generation)
        start = time.perf_counter()
        again = build_builtin_dataset(tmp_path, train_size=300, eval_size=40, seed=1)
        second = time.perf_counter() - start
    assert second < first

    assert set(dsd) == {"train", "validation"}
    assert len(dsd["train"]) == 300 and len(dsd["validation"]) == 40
    assert dsd["train"].column_names == ["image", "text", "color", "shape", "position", "size"]
    assert type(dsd["train"].features["image"]).__name__ == "Image"
    for split in dsd:
        assert dsd[split]["text"] == again[split]["text"]
        assert np.array_equal(np.asarray(dsd[split][7]["image"]), np.asarray(again[split][7]["image"]))
    expected = next(iter(generate_examples("train", 1, seed=1)))
    assert dsd["train"][0]["text"] == expected["text"]
    assert np.array_equal(np.asarray(dsd["train"][0]["image"]), np.asarray(expected["image"]))
    heldout = set(heldout_combinations())
    assert all(_attrs(row) in heldout for row in dsd["validation"])
    assert all(parse_caption(row["text"]) == _attrs(row) for row in dsd["train"])

    # One finished folder, no temporary leftovers; other arguments get their own folder.
    assert [p.name for p in tmp_path.iterdir()] == ["shapes-v1-res32-train300-eval40-seed1"]
    other = build_builtin_dataset(tmp_path, train_size=300, eval_size=40, seed=2)
    assert other["train"]["text"] != dsd["train"]["text"]
    assert len(list(tmp_path.iterdir())) == 2


def test_an_interrupted_build_is_never_reused(tmp_path, monkeypatch):
    import datasets

    def interrupted(self, path, *args, **kwargs):
        (Path(path) / "half-written").write_text("")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(datasets.DatasetDict, "save_to_disk", interrupted)
        with pytest.raises(KeyboardInterrupt):
            build_builtin_dataset(tmp_path, train_size=8, eval_size=4)
    assert list(tmp_path.iterdir()) == []
    dsd = build_builtin_dataset(tmp_path, train_size=8, eval_size=4)
    assert len(dsd["train"]) == 8 and len(dsd["validation"]) == 4


def test_write_imagefolder_loads_with_datasets(tmp_path):
    import datasets

    dsd = build_builtin_dataset(tmp_path / "cache", train_size=12, eval_size=4, resolution=32)
    folder = tmp_path / "folder"
    assert write_imagefolder(dsd["train"], folder) == 12
    lines = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and {"file_name", "text", "color", "shape", "position", "size"} <= set(lines[0])
    assert all((folder / line["file_name"]).is_file() for line in lines)

    loaded = datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=str(tmp_path / "hf"))[
        "train"
    ]
    assert len(loaded) == 12
    by_text = {row["text"]: row for row in loaded}
    for row in dsd["train"]:
        match = by_text[row["text"]]
        assert match["color"] == row["color"] and match["position"] == row["position"]
        assert np.array_equal(np.asarray(match["image"].convert("RGB")), np.asarray(row["image"]))
