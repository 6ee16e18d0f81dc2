"""Beyond text-to-image on the tiny model: negative prompts, region editing, variations, bits per image."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.generate import main as generate_main
from stage2_transformer.sampling import (
    DEFAULT_NEGATIVE_SCALE,
    NEGATIVE_PLAUSIBILITY,
    guided_logits,
    image_token_log_likelihood,
    sample_image_codes,
)
from stage2_transformer.tokenizer import encode_captions

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPT = "a red circle on white"


@pytest.fixture(scope="module")
def picture(tiny_pipe) -> Image.Image:
    return tiny_pipe("a blue star on black", seed=2).images[0]  # 32x32: 8x8 codes of 4x4 pixels


def _ids(tiny_pipe, captions):
    return encode_captions(tiny_pipe.tokenizer, captions, tiny_pipe.layout.text_len)


# ------------------------------------------------------------------------------------------------
# negative prompts


def test_negative_prompt_is_a_third_guided_half(tiny_pipe):
    negative = "a green heart"
    out = tiny_pipe(PROMPT, num_images_per_prompt=2, seed=4, negative_prompt=negative, return_codes=True)
    plain = tiny_pipe(PROMPT, num_images_per_prompt=2, seed=4, return_codes=True)
    assert not torch.equal(out.codes, plain.codes)
    from pipeline.seeds import mix

    expected = sample_image_codes(
        tiny_pipe.transformer,
        tiny_pipe.layout,
        _ids(tiny_pipe, [PROMPT] * 2),
        guidance_scale=tiny_pipe.config.guidance_scale,
        generator=[torch.Generator().manual_seed(mix(4, j)) for j in range(2)],
        negative_text_ids=_ids(tiny_pipe, [negative] * 2),
    )
    assert torch.equal(out.codes, expected)
    # one per prompt: each prompt's images use its own negative
    both = tiny_pipe(
        [PROMPT, "a blue star"], seed=[4, 5], negative_prompt=[negative, "a red square"], return_codes=True
    )
    assert torch.equal(both.codes[0], out.codes[0])
    # the contrast's weight is the caller's: the default by name gives the same images, another weight others
    same = tiny_pipe(
        PROMPT,
        num_images_per_prompt=2,
        seed=4,
        negative_prompt=negative,
        return_codes=True,
        negative_scale=DEFAULT_NEGATIVE_SCALE,
    )
    assert torch.equal(same.codes, out.codes)
    weak = tiny_pipe(
        PROMPT,
        num_images_per_prompt=2,
        seed=4,
        negative_prompt=negative,
        return_codes=True,
        negative_scale=0.5,
    )
    assert not torch.equal(weak.codes, out.codes)


def test_guidance_toward_the_words_a_negative_shares_with_the_caption_is_kept():
    cond, uncond = torch.tensor([[2.0, 1.9, 0.0, -9.0]]), torch.tensor([[0.0, 1.0, 0.0, -9.0]])  # (1, K)
    plain = guided_logits(torch.stack([cond, uncond]), 3.0, 0.0)  # (1, K)
    # a negative that says what the caption says steers nowhere: the guidance stays (in place of the empty
    # caption it would cancel it); only the stricter cut differs
    same = guided_logits(torch.stack([cond, uncond, cond]), 3.0, 0.0)
    kept = cond[0] >= cond.max() + math.log(NEGATIVE_PLAUSIBILITY)
    assert torch.allclose(same[0, kept], plain[0, kept]) and torch.isinf(same[0, ~kept]).all()
    # a negative that likes code 0 more than the caption does turns the pick to code 1
    negative = torch.tensor([[4.0, 1.9, 0.0, -9.0]])
    assert (
        plain.argmax() == 0 and guided_logits(torch.stack([cond, uncond, negative]), 3.0, 0.0).argmax() == 1
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"negative_prompt": ["a", "b"]}, r"one string or one per prompt \(1\); got 2"),
        ({"negative_prompt": 3}, r"negative_prompt must be a string"),
        ({"negative_prompt": "a red circle", "guidance_scale": 1.0}, r"set guidance_scale != 1"),
        ({"negative_scale": 4.0}, r"give negative_prompt too"),
        (
            {"negative_prompt": "a red circle", "negative_scale": 0},
            r"negative_scale must be a number in \(0, 1000\]",
        ),
        ({"negative_prompt": "a red circle", "negative_scale": "8"}, r"negative_scale must be a number"),
        ({"box": (0, 0, 4, 4)}, r"box needs an image"),
        ({"image": Image.new("RGB", (32, 32)), "box": (0, 0, 4, 4), "keep_rows": 2}, r"exactly one of"),
        ({"image": Image.new("RGB", (32, 32)), "box": (0, 0, 40, 4)}, r"outside the 32x32 image"),
        ({"image": Image.new("RGB", (32, 32)), "box": (-1, 0, 4, 4)}, r"outside the 32x32 image"),
        ({"image": Image.new("RGB", (32, 32)), "box": (8, 0, 8, 4)}, r"is empty: it needs x0 < x1"),
        ({"image": Image.new("RGB", (32, 32)), "box": (0, 0, 4)}, r"box must be four numbers"),
        ({"image": Image.new("RGB", (64, 32)), "box": (0, 0, 10, 32)}, r"cropped away"),
        ({"image": Image.new("RGB", (32, 32)), "strength": 0.0}, r"strength must lie in \(0, 1\]"),
        ({"image": Image.new("RGB", (32, 32)), "strength": 1.5}, r"strength must lie in \(0, 1\]"),
    ],
)
def test_bad_new_arguments_are_named(tiny_pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_pipe(PROMPT, seed=0, **kwargs)


# ------------------------------------------------------------------------------------------------
# region editing


def test_edit_keeps_every_code_outside_the_box_and_resamples_inside(tiny_pipe, picture):
    original = tiny_pipe.encode_image([picture])[0]  # (8, 8)
    out = tiny_pipe.edit(
        picture, PROMPT, box=(8, 12, 20, 24), num_images_per_prompt=3, seed=1, return_codes=True
    )
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[3:6, 2:5] = True  # pixel rows 12..24, columns 8..20 at 4 pixels per code
    assert (out.codes[:, ~inside] == original[~inside]).all()
    assert (out.codes[:, inside] != original[inside]).any()
    assert len(out.bits_with_caption) == 3


def test_edit_of_whole_rows_is_completion_and_later_codes_never_condition_earlier(tiny_pipe, picture):
    edited = tiny_pipe.edit(picture, PROMPT, box=(0, 20, 32, 32), seed=3, return_codes=True)
    completed = tiny_pipe.complete(picture, PROMPT, keep_rows=5, seed=3, return_codes=True)
    assert torch.equal(edited.codes, completed.codes)
    # a code after the box is fed as a fixed token after the box was sampled: it cannot change it
    fixed = tiny_pipe.encode_image([picture]).reshape(1, -1)  # (1, 64)
    mask = torch.zeros(64, dtype=torch.bool)
    mask[[0, 1, 2, 3, 8, 9, 10, 11]] = True  # rows 0-1, columns 0-3

    def sample(fixed_codes):
        generator = [torch.Generator().manual_seed(5)]
        return sample_image_codes(
            tiny_pipe.transformer,
            tiny_pipe.layout,
            _ids(tiny_pipe, [PROMPT]),
            fixed_codes=fixed_codes,
            sample_mask=mask,
            guidance_scale=3.0,
            generator=generator,
        ).reshape(1, -1)  # (1, 64)

    later, earlier = fixed.clone(), fixed.clone()
    later[0, 63] = (fixed[0, 63] + 1) % tiny_pipe.layout.codebook_size
    earlier[0, 4:8] = (fixed[0, 4:8] + 1) % tiny_pipe.layout.codebook_size  # between the box's two rows
    a, b, c = sample(fixed), sample(later), sample(earlier)
    assert torch.equal(a[0, mask], b[0, mask]) and b[0, 63] == later[0, 63]
    assert torch.equal(a[0, :4], c[0, :4]) and not torch.equal(a[0, 8:12], c[0, 8:12])


def test_edit_converts_any_mode_and_size_and_fills_the_region_row_by_row(tiny_pipe, picture):
    grey = picture.convert("L").resize((64, 64))  # mode L, twice the size: box in its pixels
    stream = tiny_pipe.stream(PROMPT, image=grey, box=(16, 16, 48, 40), seed=0)
    events = list(stream)
    assert [e.row for e in events] == list(range(2, 8))  # from the box's first row to the end
    first = events[0].images[0]  # after row 2: the box's rows 3-4 still grey, outside as the input
    pending = first.crop((8, 12, 24, 20))
    assert (np.asarray(pending) == 128).all()
    assert first.crop((0, 24, 32, 32)).tobytes() != Image.new("RGB", (32, 8), (128, 128, 128)).tobytes()
    assert len(stream.output.images) == 1


# ------------------------------------------------------------------------------------------------
# variations


def test_variations_resample_a_strength_share_of_codes(tiny_pipe, picture):
    original = tiny_pipe.encode_image([picture])[0].reshape(-1)  # (64,)
    out = tiny_pipe.variations(picture, 4, strength=0.25, seed=9, return_codes=True)
    assert len(out.images) == 4 and out.prompts == [""] * 4
    changed = (out.codes.reshape(4, -1) != original).sum(1)  # (4,)
    assert (changed <= 16).all() and (changed > 0).any()  # at most round(0.25 * 64) positions each
    assert len({c.tobytes() for c in out.codes.numpy()}) == 4  # each image its own positions and codes
    again = tiny_pipe.variations(picture, 4, strength=0.25, seed=9, return_codes=True)
    assert torch.equal(again.codes, out.codes)
    strong = tiny_pipe.variations(picture, 4, prompt=PROMPT, strength=1.0, seed=9, return_codes=True)
    assert (strong.codes.reshape(4, -1) != original).sum(1).float().mean() > changed.float().mean()


# ------------------------------------------------------------------------------------------------
# bits per image


def test_each_image_carries_its_bits_and_score_gives_the_same(tiny_pipe):
    out = tiny_pipe([PROMPT, "a blue star on black"], num_images_per_prompt=2, seed=6, return_codes=True)
    ids = _ids(tiny_pipe, out.prompts)
    nats = image_token_log_likelihood(tiny_pipe.transformer, tiny_pipe.layout, ids, out.codes)
    assert out.bits_with_caption == pytest.approx((-nats / math.log(2)).tolist(), rel=1e-5)
    empty = tiny_pipe.layout.empty_caption_ids(4)
    nats_empty = image_token_log_likelihood(tiny_pipe.transformer, tiny_pipe.layout, empty, out.codes)
    assert out.bits_without_caption == pytest.approx((-nats_empty / math.log(2)).tolist(), rel=1e-5)
    scored = tiny_pipe.score(out.images, out.prompts)
    codes = tiny_pipe.encode_image(out.images)
    expected = -image_token_log_likelihood(tiny_pipe.transformer, tiny_pipe.layout, ids, codes) / math.log(2)
    assert scored.with_caption == pytest.approx(expected.tolist(), rel=1e-5)
    assert scored.caption_bits == pytest.approx(
        [u - c for c, u in zip(scored.with_caption, scored.without_caption)]
    )
    with pytest.raises(ValueError, match=r"one caption or one per image \(4\); got 3"):
        tiny_pipe.score(out.images, out.prompts[:3])


def test_generate_command_edits_varies_and_records_bits(tiny_pipeline_dir, picture, tmp_path, capsys):
    picture.save(tmp_path / "in.png")
    base = ["--model", str(tiny_pipeline_dir), "--image", str(tmp_path / "in.png"), "--seed", "0", "-n", "2"]
    out = tmp_path / "edit.png"
    args = [*base, "--prompt", PROMPT, "--box", "0", "0", "16", "16", "--negative-prompt", "a green heart"]
    assert generate_main([*args, "--negative-scale", "16", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert len(record["bits_with_caption"]) == 2 and record["negative_prompt"] == ["a green heart"]
    assert record["negative_scale"] == 16
    assert all(b > 0 for b in record["bits_without_caption"])
    assert generate_main([*base, "--prompt", "", "--strength", "0.3", "--out", str(tmp_path / "v.png")]) == 0
    assert generate_main([*base, "--prompt", PROMPT, "--box", "0", "0", "99", "4"]) == 2
    assert "outside the 32x32 image" in capsys.readouterr().err
    assert generate_main(["--model", str(tiny_pipeline_dir), "--prompt", PROMPT, "--strength", "0.5"]) == 2
    assert "need --image" in capsys.readouterr().err


def test_editing_figures_benchmark_runs_and_writes_json(tiny_pipeline_dir, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "editing_figures.py"
    spec = importlib.util.spec_from_file_location("editing_figures", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "figures.json"
    with pytest.warns(UserWarning):  # the tiny model reads 8 tokens: the built-in captions are cut
        result = bench.main(
            [
                "--model",
                str(tiny_pipeline_dir),
                "--images",
                "2",
                "--out",
                str(out),
                "--negative-seeds",
                "0",
                "1",
            ]
            + ["--negative-scale", "16"]
        )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    negative = result["negative_prompt"]
    assert negative["seeds"] == [0, 1] and negative["negative_scale"] == 16 and len(negative["per_seed"]) == 2
    assert set(result["negative_prompt"]["mean"]) == {
        "negated_colour_pct_without",
        "negated_colour_pct_with",
        "named_right_pct_without",
        "named_right_pct_with",
    }
    assert [row["strength"] for row in result["variations"]["strengths"]] == list(bench.STRENGTHS)
    assert "| strength 0.3 |" in capsys.readouterr().out


def test_score_command_prints_and_writes_the_bits(tiny_pipe, tiny_pipeline_dir, picture, tmp_path, capsys):
    from pipeline.score import main as score_main

    picture.save(tmp_path / "a.png")
    out = tmp_path / "scores.json"
    assert (
        score_main(
            [
                "--model",
                str(tiny_pipeline_dir),
                "--caption",
                PROMPT,
                str(tmp_path / "a.png"),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    (row,) = json.loads(out.read_text())
    expected = tiny_pipe.score(picture, PROMPT)
    assert row["bits_with_caption"] == pytest.approx(expected.with_caption[0])
    assert row["caption_bits"] == pytest.approx(expected.caption_bits[0])
    assert "explained by the caption" in capsys.readouterr().out
    assert (
        score_main(
            ["--model", str(tiny_pipeline_dir), "--caption", "a", "--caption", "b", str(tmp_path / "a.png")]
        )
        == 2
    )
    assert "one caption or one per image (1); got 2" in capsys.readouterr().err
