"""The CLIP re-ranker: its batches, its tokenizer, and a short real training run that the pipeline loads."""

from __future__ import annotations

import json

import pytest
import torch

from reranker.batches import ContrastiveBatches, groups_of
from tests.conftest import flags, launch, read_metrics

TRAIN = "reranker/train.py"


@pytest.fixture(scope="module")
def vqvae_dir(tmp_path_factory):
    """A small random stage-1 model: its reconstructions are what the stage-1 views show."""
    from stage1_vqvae.config import VQVAEConfig
    from stage1_vqvae.model import VQVAE

    torch.manual_seed(0)
    config = VQVAEConfig(resolution=32, base_channels=8, channel_multipliers=[1, 2, 2], codebook_size=32)
    return VQVAE(config).save_pretrained(tmp_path_factory.mktemp("stage1") / "vqvae")


def test_groups_keep_rows_that_share_a_value():
    assert groups_of(["a", "b", "a", None, None, "c", "b", "a"]) == [[0, 2, 7], [1, 6]]


def test_batches_hold_whole_groups_distinct_rows_and_resume_exactly():
    groups = [[2 * g, 2 * g + 1] for g in range(20)]  # rows 0-39 in pairs, rows 40-99 alone
    batches = ContrastiveBatches(100, 16, seed=3, groups=groups, grouped_fraction=0.5)
    for step in range(50):
        rows = batches.batch(step)
        assert len(rows) == len(set(rows)) == 16 and all(0 <= r < 100 for r in rows)
        grouped = rows[:8]  # half the batch: four whole pairs
        assert all(grouped[i] // 2 == grouped[i + 1] // 2 for i in range(0, 8, 2))
        assert rows == ContrastiveBatches(100, 16, seed=3, groups=groups, grouped_fraction=0.5).batch(step)
    assert batches.batch(0) != batches.batch(1)
    other_process = ContrastiveBatches(100, 16, seed=3, groups=groups, grouped_fraction=0.5, process_index=1)
    assert other_process.batch(0) != batches.batch(0)
    # without groups every row is as likely as any other: all of them turn up
    plain = ContrastiveBatches(100, 16, seed=3)
    assert set().union(*(plain.batch(step) for step in range(100))) == set(range(100))
    with pytest.raises(ValueError, match="needs at least 16 training rows"):
        ContrastiveBatches(10, 16, seed=0)


def test_stage1_views_are_reconstructions_computed_once(vqvae_dir):
    from reranker.train import Stage1Views
    from stage1_vqvae.model import VQVAE

    vqvae = VQVAE.from_pretrained(vqvae_dir, device="cpu").eval()
    calls = []
    encode = vqvae.encode
    vqvae.encode = lambda pixels: calls.append(len(pixels)) or encode(pixels)
    views = Stage1Views(vqvae)
    pixels = torch.rand(4, 3, 32, 32) * 2 - 1  # (4, 3, H, W)
    first = views([7, 8, 9, 10], pixels)
    with torch.no_grad():
        expected = vqvae.decode_codes(encode(pixels)).clamp(-1, 1)
    assert first.shape == pixels.shape and (first - expected).abs().max() <= 1 / 127.5  # kept as uint8
    again = views([9, 3], torch.stack([pixels[2], pixels[0]]))  # row 9 kept, row 3 new
    assert calls == [4, 1] and torch.equal(again[0], first[2])


def test_tokenizer_ends_every_caption_with_its_end_token(tmp_path):
    from transformers import AutoTokenizer

    from reranker.tokenizer import train_clip_tokenizer

    captions = ["penguin drawn in noto style", "grinning face, twemoji style", "zambia flag"] * 4
    train_clip_tokenizer(captions, 300, 8, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)  # as ClipReranker loads it
    encoded = tokenizer(
        ["penguin", "a caption far longer than eight tokens, cut short"],
        padding="max_length",
        truncation=True,
        max_length=8,
        return_tensors="pt",
    )
    ids, mask = encoded["input_ids"], encoded["attention_mask"]  # (2, 8) each
    eos = tokenizer.eos_token_id
    assert ids.shape == (2, 8) and int(ids.max()) < len(tokenizer) == 300
    last = mask.sum(1) - 1  # (2,)
    assert ids[0, last[0]] == eos and ids[1, 7] == eos and last[1] == 7  # kept when the caption is cut
    assert (ids[0, last[0] + 1 :] == tokenizer.pad_token_id).all() and (ids == eos).sum() == 2


def test_config_mistakes_are_named():
    from minidalle.config import parse_config
    from reranker.run_config import RerankerRunConfig

    with pytest.raises(ValueError, match="batches.stage1_views needs vqvae"):
        parse_config(
            RerankerRunConfig, flags("--config configs/reranker_tiny.yaml --batches.stage1_views 0.5")
        )
    with pytest.raises(ValueError, match="multiple of model.patch_size"):
        parse_config(RerankerRunConfig, flags("--config configs/reranker_tiny.yaml --model.patch_size 5"))
    with pytest.raises(ValueError, match=r"batches.grouped_fraction must lie in \[0, 1\]"):
        parse_config(
            RerankerRunConfig, flags("--config configs/reranker_tiny.yaml --batches.grouped_fraction 2")
        )


def test_train_learns_captions_and_the_pipeline_loads_it(tmp_path, shapes_cache, vqvae_dir):
    """A short run on the shapes through accelerate launch: held-out retrieval well above chance, the same
    figure from the saved folder through pipeline.rerank.ClipReranker (so its tokenizer and image processor
    read captions and pixels as training did), and stage-1 views drawn from the stage-1 model."""
    from minidalle import data as data_lib
    from minidalle.pixels import tensor_to_pil
    from pipeline.rerank import ClipReranker
    from reranker.evaluation import retrieval_scores

    out = tmp_path / "run"
    settings = (
        "--config configs/reranker_tiny.yaml --data.builtin_train_size 2000 --data.builtin_eval_size 64 "
        "--num_eval_images 64 --train.max_steps 120 --train.batch_size 64 --train.warmup_steps 20 "
        "--train.eval_every 60 --train.checkpoint_every 60 --train.report_to none --batches.stage1_views 0.25"
    )
    paths = ["--data.builtin_cache_dir", shapes_cache, "--vqvae", vqvae_dir, "--train.output_dir", out]
    launch(TRAIN, *flags(settings), *map(str, paths), via_launcher=True)
    final = json.loads((out / "eval_metrics.json").read_text())
    chance = 100 * 5 / 64
    assert final["pairs"] == 64 and final["retrieval_top5_pct"] >= 3 * chance, final
    evals = [m for m in read_metrics(out) if "eval/contrastive_loss" in m]
    assert [m["step"] for m in evals] == [60, 120, 120]
    losses = [m["train/loss"] for m in read_metrics(out) if "train/loss" in m]
    assert losses[-1] < losses[0] - 0.5  # it learned, from log(64) = 4.16

    reranker = ClipReranker(out / "clip", device="cpu")
    config = data_lib.DataConfig(
        builtin_train_size=2000, builtin_eval_size=64, builtin_cache_dir=str(shapes_cache)
    )
    _, eval_hf = data_lib.load_train_eval(config)
    batch = data_lib.collate_image_captions(list(data_lib.ImageCaptionDataset(eval_hf, 32)))
    images, captions = tensor_to_pil(batch["pixels"]), batch["text"]
    # every caption against every picture, through the folder a user loads
    similarity = torch.stack([reranker.score(images, [caption] * len(images)) for caption in captions])
    ranks = 1 + (similarity > similarity.diagonal()[:, None]).sum(1)
    assert 100 * (ranks <= 5).float().mean().item() == pytest.approx(
        final["retrieval_top5_pct"], abs=100 / 64
    )
    assert retrieval_scores(torch.eye(3), torch.eye(3), 10.0)["retrieval_top1_pct"] == 100.0


def test_reranked_sample_is_the_best_scored_of_the_seeded_candidates(tmp_path):
    """The evaluate command's reranked sample: candidate k of caption i is drawn with seed + k * n + i (so
    candidate 0 is the plain sample), and the kept one is the candidate the CLIP scores highest."""
    from pipeline.rerank import ClipReranker
    from stage1_vqvae.model import VQVAE
    from stage2_transformer.evaluation import sample_images, sample_reranked
    from stage2_transformer.model import load_transformer
    from stage2_transformer.tokenizer import load_caption_tokenizer
    from tests.tiny_models import build_tiny_clip, build_tiny_runs

    stage1, stage2 = build_tiny_runs(tmp_path)
    model, layout = load_transformer(stage2 / "transformer")
    vqvae = VQVAE.from_pretrained(stage1 / "vqvae", device="cpu")
    tokenizer = load_caption_tokenizer(stage2 / "tokenizer")
    reranker = ClipReranker(build_tiny_clip(tmp_path / "clip"), device="cpu")
    captions = ["a red circle", "a small blue square at the top", "a green triangle"]
    kept, picked = sample_reranked(
        model, layout, vqvae, tokenizer, captions, reranker, 4, seed=5, guidance_scale=2.0
    )
    n = len(captions)
    candidates = [
        sample_images(model, layout, vqvae, tokenizer, captions, seed=5 + k * n, guidance_scale=2.0)
        for k in range(4)
    ]
    scores = torch.stack([reranker.score(images, captions) for images in candidates], 1)  # (n, 4)
    assert picked.tolist() == scores.argmax(1).tolist()
    for i, image in enumerate(kept):
        assert image.tobytes() == candidates[picked[i]][i].tobytes()
    assert len({image.tobytes() for images in candidates for image in images}) > n  # candidates differ
    # candidate 0 handed over as already drawn: the same pick
    _, picked_again = sample_reranked(
        model,
        layout,
        vqvae,
        tokenizer,
        captions,
        reranker,
        4,
        seed=5,
        first=candidates[0],
        guidance_scale=2.0,
    )
    assert torch.equal(picked_again, picked)


def test_a_group_column_the_data_lack_is_one_line_before_anything_is_written(
    tmp_path, shapes_cache, capsys, fresh_accelerator_state
):
    from minidalle.errors import run_main
    from reranker.train import main

    out = tmp_path / "run"
    argv = flags(
        "--config configs/reranker_tiny.yaml --data.builtin_train_size 256 --data.builtin_eval_size 32"
    )
    argv += ["--data.builtin_cache_dir", str(shapes_cache), "--train.output_dir", str(out)]
    capsys.readouterr()
    code = run_main(main, [*argv, "--batches.group_column", "unified"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert "batches.group_column 'unified' is not a column" in errors[0] and "'text'" in errors[0]
    assert not (out / "run_config.json").exists()
