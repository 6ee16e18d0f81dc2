"""The held-out style score on hand-made cases whose answer is known."""

from __future__ import annotations

import pytest
import torch

from minidalle.pixels import pil_to_tensor
from stage2_transformer.heldout_style import (
    check_heldout_columns,
    mean_pairwise_mse,
    negative_style_caption,
    other_style_rows,
    percentages,
    pixel_mse,
    scores_by_group,
    style_and_rank,
)


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # (n, 3, 8, 8)


def test_identical_samples_score_full_marks_and_swapped_styles_score_zero():
    truths, other_styles = images(10, 0), images(10, 1)
    perfect = percentages(*style_and_rank(truths.clone(), truths, other_styles))
    assert perfect == {"style_accuracy_pct": 100.0, "retrieval_top1_pct": 100.0, "retrieval_top5_pct": 100.0}
    swapped = percentages(*style_and_rank(other_styles.clone(), truths, other_styles))
    assert swapped["style_accuracy_pct"] == 0.0


def test_half_right_styles_and_ranks_counted_per_caption():
    truths, other_styles = images(8, 0), images(8, 1)
    samples = torch.cat([truths[:4], other_styles[4:]])  # right style for the first half only
    assert percentages(*style_and_rank(samples, truths, other_styles))["style_accuracy_pct"] == 50.0
    # each sample is a copy of the *next* caption's true image: the true one is never nearest
    shifted = truths.roll(1, dims=0)
    scores = percentages(*style_and_rank(shifted, truths, other_styles))
    assert scores["retrieval_top1_pct"] == 0.0 and scores["retrieval_top5_pct"] < 100.0


def test_scores_by_group_split_the_captions_and_rank_among_all_images():
    levels = torch.linspace(-1, 1, 8)
    truths = levels[:, None, None, None].expand(8, 3, 4, 4)  # image j is flat grey at levels[j]
    # Flags (rows 0-4) drawn right; food (rows 5-7) all drawn as flag 0's image, which is also the food's
    # other-style image: wrong style, and 5 or more held-out images nearer than the food's own.
    samples = torch.cat([truths[:5], truths[:1].expand(3, 3, 4, 4)])
    other_styles = torch.cat([-truths[:5] + 3, truths[:1].expand(3, 3, 4, 4)])
    groups = ["Flags"] * 5 + ["Food & Drink"] * 3
    scores = scores_by_group(*style_and_rank(samples, truths, other_styles), groups)
    assert (scores["flags_captions"], scores["food_drink_captions"]) == (5, 3)
    assert scores["flags_style_accuracy_pct"] == 100.0 and scores["flags_retrieval_top5_pct"] == 100.0
    assert scores["food_drink_style_accuracy_pct"] == 0.0
    # Ranks are among all 8 held-out images: among the group's 3 alone every true image would be in the top 5.
    assert scores["food_drink_retrieval_top5_pct"] == 0.0
    assert (
        percentages(*style_and_rank(samples[5:], truths[5:], other_styles[5:]))["retrieval_top5_pct"] == 100.0
    )


def test_pixel_mse_and_diversity():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.stack([torch.zeros(3, 4, 4), torch.full((3, 4, 4), 0.5)])
    assert pixel_mse(a, b) == pytest.approx(torch.tensor([[0.0, 0.25], [0.0, 0.25]]))
    copies = images(1, 0).expand(3, 4, 3, 8, 8)  # 3 captions, 4 identical samples each
    assert mean_pairwise_mse(copies) == 0.0
    two = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])[None]  # (1, 2, 3, 8, 8): distance 1
    assert mean_pairwise_mse(two) == pytest.approx(1.0)


def test_other_style_is_the_same_emoji_in_the_training_split():
    train = [
        {"unified": "1F600", "style": "noto", "image": "grin_noto"},
        {"unified": "1F680", "style": "twemoji", "image": "rocket_twemoji"},
    ]
    heldout = [{"unified": "1F600", "style": "twemoji"}, {"unified": "1F680", "style": "noto"}]
    assert [row["image"] for row in other_style_rows(heldout, train)] == ["grin_noto", "rocket_twemoji"]
    with pytest.raises(ValueError, match="no training image in another style"):
        other_style_rows([{"unified": "1F34E", "style": "noto"}], train)


def test_data_without_emoji_columns_fail_before_sampling():
    import datasets

    shapes_like = datasets.Dataset.from_dict({"image": ["a.png"], "text": ["a red circle"]})
    with pytest.raises(ValueError, match="no 'unified' column.*get_emoji.sh"):
        check_heldout_columns(shapes_like)


def test_negative_style_caption_swaps_the_style_word_only():
    assert negative_style_caption("penguin, noto style", "noto", "twemoji") == "penguin, twemoji style"
    assert negative_style_caption("noto emoji: notebook", "noto", "twemoji") == "twemoji emoji: notebook"
    with pytest.raises(ValueError, match="does not name its style"):
        negative_style_caption("a penguin", "noto", "twemoji")


def test_negative_style_without_guidance_is_refused():
    from stage2_transformer.evaluate import Stage2EvalConfig
    from stage2_transformer.run_config import SamplingConfig

    with pytest.raises(ValueError, match="needs guidance"):
        Stage2EvalConfig(heldout_negative_style=True, sampling=SamplingConfig(guidance_scale=1.0))
    assert Stage2EvalConfig(heldout_negative_style=True, sampling=SamplingConfig(guidance_scale=3.0))
    with pytest.raises(ValueError, match=r"negative_scale must be a number in \(0, 1000\]"):
        Stage2EvalConfig(heldout_negative_style=True, negative_scale=0.0)


def test_a_folder_without_a_reranker_is_refused_when_the_config_is_read(tmp_path):
    from minidalle.errors import ModelFolderError
    from stage2_transformer.evaluate import Stage2EvalConfig

    (tmp_path / "config.json").write_text("{}")  # a config and no weights: refused before any model loads
    with pytest.raises(ModelFolderError, match=r"rerank_clip '.*' must hold config.json and \*.safetensors"):
        Stage2EvalConfig(heldout_style=True, rerank_clip=str(tmp_path))


def test_the_candidates_benchmark_refuses_a_folder_without_a_reranker_first(tmp_path, capsys):
    from benchmarks.heldout_candidates import main as candidates

    # tmp_path is no stage-2 run either: the re-ranker is named first, before anything loads
    with pytest.raises(SystemExit):
        candidates(["--run", str(tmp_path), "--data", str(tmp_path), "--clip", str(tmp_path)])
    assert f"--clip {str(tmp_path)!r} must hold config.json and *.safetensors" in capsys.readouterr().err


def test_reference_translators_recover_a_known_mapping():
    from benchmarks.heldout_style_references import analogy, fit_linear_translator

    sources = images(40, 0)[:, :, :2, :2]  # (40, 3, 2, 2): 12 pixels, more pairs than pixels
    translate = fit_linear_translator(sources, -0.5 * sources, ridge=1e-6)
    new = images(5, 1)[:, :, :2, :2]
    assert translate(new) == pytest.approx(-0.5 * new, abs=1e-4)
    # analogy: the target of the nearest source, here the source's own row
    assert torch.equal(analogy(sources[[3, 7]] + 1e-3, sources, -sources), -sources[[3, 7]])


def test_group_table_lines():
    from stage2_transformer.heldout_style import format_group_table, group_masks

    masks = group_masks(["Flags", "Food & Drink", "Symbols", "Flags"])
    assert {name: int(mask.sum()) for name, mask in masks.items()} == {
        "families": 2,
        "one-offs": 1,
        "other": 1,
        "all": 4,
    }
    scores = {"style_accuracy_pct": 87.5, "retrieval_top1_pct": 0.0, "retrieval_top5_pct": 40.0}
    lines = format_group_table({"all": {"captions": 4, "first": scores}}, ["first"]).splitlines()
    assert lines[0].split() == ["group", "captions", "first"]
    assert lines[1].split() == ["all", "4", "87.5", "/", "40.0"]


def test_reference_retrieval_finds_the_emoji_by_its_name_words():
    """benchmarks/emoji_reference_prior.py: a caption retrieves the training picture whose caption shares its
    rare words (the emoji's name), not the one that shares its style and phrasing; a training caption never
    retrieves itself; the emoji key finds the other style or nothing."""
    from benchmarks.emoji_reference_prior import NO_REFERENCE, caption_neighbours, other_style_indices

    keys = [
        {"text": "noto emoji: grinning face", "unified": "1F600", "style": "noto"},
        {"text": "penguin drawn in twemoji style", "unified": "1F427", "style": "twemoji"},
        {"text": "twemoji emoji: grinning face", "unified": "1F600", "style": "twemoji"},
        {"text": "noto emoji: red apple", "unified": "1F34E", "style": "noto"},
    ]
    texts = [key["text"] for key in keys]
    queries = ["noto emoji: penguin", "an apple, red, noto style", "grinning face"]
    assert caption_neighbours(queries, texts).tolist() == [1, 3, 0]
    assert caption_neighbours(texts, texts, exclude_self=True).tolist() == [2, 2, 0, 0]  # else: shared style
    assert caption_neighbours(texts, texts).tolist() == [0, 1, 2, 3]  # without the exclusion: itself
    heldout = [{"unified": "1F427", "style": "noto"}, {"unified": "1F600", "style": "noto"}]
    assert other_style_indices(heldout, keys).tolist() == [1, 2]
    assert other_style_indices(keys, keys).tolist() == [2, NO_REFERENCE, 0, NO_REFERENCE]


def test_reference_codes_sit_after_the_caption_tokens():
    """The reference layout keeps the run's image ids and puts K reference-code ids after the caption
    tokenizer's, PAD where a row shows no reference."""
    from benchmarks.emoji_reference_prior import reference_ids, reference_layout
    from stage2_transformer.layout import SequenceLayout

    base = SequenceLayout(text_len=4, text_vocab_size=10, codebook_size=6, grid_h=2, grid_w=2, pad_id=0)
    layout = reference_layout(base)
    assert (layout.text_len, layout.text_vocab_size, layout.codebook_size) == (8, 16, 6)
    codes = torch.tensor([[0, 1, 2, 5], [3, 3, 3, 3]])  # (2, N)
    ids = reference_ids(codes, torch.tensor([True, False]), base)
    assert ids.tolist() == [[10, 11, 12, 15], [0, 0, 0, 0]]
    seq = layout.build(torch.cat([torch.ones(2, 4, dtype=torch.long), ids], 1), codes)  # (2, 13)
    text, back = layout.split(seq)
    assert torch.equal(back.flatten(1), codes) and torch.equal(text[:, 4:], ids)
    assert seq[0, 9:].tolist() == [c + 16 for c in codes[0].tolist()]  # image ids after every text id


def test_a_product_of_one_prior_draws_what_that_prior_draws(tmp_path):
    """benchmarks/emoji_prior_ensemble.py: the product of experts seeds, guides and cuts as sample_images does,
    so a product of one prior (or of the same prior twice: the geometric mean of equal distributions) draws the
    very images the evaluate command scores, and a product of two different priors draws other ones."""
    from benchmarks.emoji_prior_ensemble import product_images
    from stage2_transformer.evaluation import sample_images
    from stage2_transformer.model import load_transformer
    from stage2_transformer.tokenizer import load_caption_tokenizer
    from tests.tiny_models import CAPTIONS, build_tiny_runs, tiny_vqvae

    _, run_a = build_tiny_runs(tmp_path / "a", seed=0)
    _, run_b = build_tiny_runs(tmp_path / "b", seed=1)
    (model_a, layout), (model_b, _) = (
        load_transformer(run_a / "transformer"),
        load_transformer(run_b / "transformer"),
    )
    tokenizer = load_caption_tokenizer(run_a / "tokenizer")
    vqvae, captions = tiny_vqvae(0), CAPTIONS[:6]

    def pixels(images):
        return torch.stack([pil_to_tensor(image) for image in images])  # (n, 3, H, W)

    alone = pixels(sample_images(model_a, layout, vqvae, tokenizer, captions, guidance_scale=3.0, seed=7))
    for models in ([model_a], [model_a, model_a]):
        product = product_images(models, [tokenizer] * len(models), layout, vqvae, captions, 3.0, seed=7)
        assert torch.equal(pixels(product), alone)
    both = product_images([model_a, model_b], [tokenizer] * 2, layout, vqvae, captions, 3.0, seed=7)
    assert not torch.equal(pixels(both), alone)
    # --weights: a prior of weight 0 has no say, so each of the two alone is drawn again
    alone_b = pixels(sample_images(model_b, layout, vqvae, tokenizer, captions, guidance_scale=3.0, seed=7))
    for weights, expected in (([1.0, 0.0], alone), ([0.0, 1.0], alone_b)):
        weighted = product_images(
            [model_a, model_b], [tokenizer] * 2, layout, vqvae, captions, 3.0, 7, weights
        )
        assert torch.equal(pixels(weighted), expected)


def test_the_ensemble_benchmark_refuses_runs_of_different_stage1_models(tmp_path, capsys):
    from benchmarks.emoji_prior_ensemble import main as ensemble
    from tests.tiny_models import build_tiny_clip, build_tiny_runs

    _, run_a = build_tiny_runs(tmp_path / "a", seed=0)
    _, run_b = build_tiny_runs(tmp_path / "b", seed=1)  # its own stage 1, other weights
    clip = build_tiny_clip(tmp_path / "clip")
    with pytest.raises(SystemExit):  # before any data loads: tmp_path holds no emoji data
        ensemble(
            ["--run", str(run_a), "--also", str(run_b), "--data", str(tmp_path), "--rerank_clip", str(clip)]
        )
    assert "the runs were trained on different stage-1 models" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a weight for each run
        ensemble(
            ["--run", str(run_a), "--also", str(run_a), "--data", str(tmp_path), "--rerank_clip", str(clip)]
            + ["--weights", "1"]
        )
    assert "--weights needs one weight >= 0 for each of the 2 runs" in capsys.readouterr().err


def test_a_pool_takes_the_first_candidates_of_each_source_in_order():
    """benchmarks/emoji_prior_ensemble.py: "RUN C/2 + product C/2" pools the first C/2 candidates of each, so a
    source's later candidates, however well the re-ranker scores them, are not in it."""
    from benchmarks.emoji_prior_ensemble import first_of_each

    run = {key: torch.tensor([[0.1, 0.2, 0.9, 0.8]]) for key in ("right", "rank", "clip")}  # (1, 4) each
    product = {key: torch.tensor([[0.3, 0.5, 0.4, 0.7]]) for key in ("right", "rank", "clip")}
    pool = first_of_each([run, product], 2)
    assert (
        torch.equal(pool["clip"], torch.tensor([[0.1, 0.2, 0.3, 0.5]])) and pool["clip"].argmax(1).item() == 3
    )
    assert first_of_each([run, product], 4)["rank"].shape == (1, 8)
