"""The emoji data set builder, on tiny fake npm packs built here (no network)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minidalle import data as data_lib
from minidalle.emoji_data import build_emoji_folder
from tests.emoji_packs import NAMES, STYLE_COLOURS, fake_packs


@pytest.fixture(scope="module")
def packs(tmp_path_factory) -> dict[str, Path]:
    return fake_packs(tmp_path_factory.mktemp("npm_cache"))


def read_rows(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / split / "metadata.jsonl").read_text().splitlines()]


def test_builds_a_composited_captioned_split_imagefolder(tmp_path, packs):
    out = tmp_path / "emoji"
    counts = build_emoji_folder(packs, out, resolution=32, held_out_fraction=0.1, seed=0)
    assert counts == {"emoji": 10, "train": 18, "validation": 2}  # the Component entry is left out
    train, held_out = read_rows(out, "train"), read_rows(out, "validation")
    for split, rows in (("train", train), ("validation", held_out)):
        for row in rows:
            image = Image.open(out / split / row["file_name"])
            assert image.size == (32, 32) and image.mode == "RGB"
            pixels = np.asarray(image)
            assert (pixels[:, 20:] == 255).all()  # transparent half: white, not the black under the alpha
            assert tuple(pixels[16, 8]) == STYLE_COLOURS[row["style"]]  # opaque half: the style's colour
            assert row["emoji"] in row["text"] and row["style"] in row["text"]
            assert row["emoji"] == row["emoji"].lower() and row["emoji"].upper() in NAMES
    # each held-out pair's emoji is in training in the other style, and held-out styles alternate
    train_pairs = {(row["unified"], row["style"]) for row in train}
    for row in held_out:
        other = "noto" if row["style"] == "twemoji" else "twemoji"
        assert (row["unified"], other) in train_pairs and (row["unified"], row["style"]) not in train_pairs
    assert sorted(row["style"] for row in held_out) == ["noto", "twemoji"]
    assert len({row["text"].replace(row["emoji"], "").replace(row["style"], "") for row in train}) > 2
    assert (
        "CC-BY 4.0" in (out / "ATTRIBUTION.md").read_text()
        and "Apache-2.0" in (out / "ATTRIBUTION.md").read_text()
    )
    # the project's imagefolder loader reads both splits, extra columns included
    cfg = data_lib.DataConfig(source="imagefolder", path=str(out))
    train_hf, eval_hf = data_lib.load_train_eval(cfg)
    assert (len(train_hf), len(eval_hf)) == (18, 2)
    assert sorted(eval_hf["text"]) == sorted(row["text"] for row in held_out)
    assert {"emoji", "style", "unified"} <= set(eval_hf.column_names)


def test_same_seed_same_files_other_seed_other_split(tmp_path, packs):
    first, again, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder, seed in ((first, 0), (again, 0), (other, 1)):
        build_emoji_folder(packs, folder, resolution=16, held_out_fraction=0.2, seed=seed)
    for split in ("train", "validation"):
        assert read_rows(first, split) == read_rows(again, split)
        for row in read_rows(first, split):
            assert (first / split / row["file_name"]).read_bytes() == (
                again / split / row["file_name"]
            ).read_bytes()
    assert len(read_rows(first, "validation")) == 4  # 20% of 20 pairs
    assert read_rows(first, "validation") != read_rows(other, "validation")


def test_a_tarball_that_is_not_a_pack_is_named(tmp_path, packs):
    wrong = tmp_path / "wrong.tgz"
    with tarfile.open(wrong, "w:gz") as tarball:
        tarball.add(packs["noto"], arcname="package/something.tgz")
    with pytest.raises(ValueError, match="wrong.tgz is not an emoji-datasource pack"):
        build_emoji_folder({**packs, "noto": wrong}, tmp_path / "out", resolution=32)
    assert not (tmp_path / "out").exists()  # nothing written
