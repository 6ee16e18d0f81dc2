"""The emoji configs train through the real entry points, a few steps each, on data from fake npm packs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from minidalle.emoji_data import build_emoji_folder
from stage1_vqvae.model import VQVAE
from stage2_transformer.heldout_style import percentages
from tests.conftest import flags, launch, read_metrics
from tests.emoji_packs import fake_packs

FEW_STEPS = (
    "--train.max_steps 2 --train.batch_size 4 --train.warmup_steps 1 --train.log_every 1 --train.eval_every 2 "
    "--train.image_every 0 --train.checkpoint_every 0 --train.report_to none"
)
STAGE1_FEW = f"{FEW_STEPS} --codebook.kmeans_batches 1 --num_eval_images 2 --num_grid_images 2"


@pytest.fixture(scope="module")
def emoji_folders(tmp_path_factory) -> dict[int, str]:
    root = tmp_path_factory.mktemp("emoji")
    packs = fake_packs(root / "npm_cache")
    for resolution in (32, 64):
        build_emoji_folder(packs, root / f"emoji{resolution}", resolution)
    return {resolution: str(root / f"emoji{resolution}") for resolution in (32, 64)}


def train_both_stages(tmp_path, folder: str, resolution: int, recipe: str = ""):
    """Two steps of each stage with configs/stage{1,2}_emoji<resolution><recipe>.yaml; returns the stage-2
    run."""
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    config1, config2 = (f"configs/stage{i}_emoji{resolution}{recipe}.yaml" for i in (1, 2))
    data = ["--data.path", folder]
    launch(
        "stage1_vqvae/train.py",
        "--config",
        config1,
        *flags(STAGE1_FEW),
        *data,
        "--train.output_dir",
        str(stage1),
    )
    assert VQVAE.from_pretrained(stage1 / "vqvae").config.resolution == resolution
    held_out = {m["eval/images"] for m in read_metrics(stage1) if "eval/images" in m}
    assert held_out == {2.0}  # evaluated on the 2 held-out pairs
    paths = [
        "--vqvae",
        stage1 / "vqvae",
        "--codes.cache_dir",
        tmp_path / "codes",
        "--train.output_dir",
        stage2,
    ]
    launch("stage2_transformer/train.py", "--config", config2, *flags(FEW_STEPS), *data, *map(str, paths))
    evals = [m for m in read_metrics(stage2) if "eval/bits_per_image" in m]
    assert evals and evals[-1]["eval/bits_per_image"] > 0
    return stage2


def test_emoji64_configs_train_both_stages(tmp_path, emoji_folders):
    train_both_stages(tmp_path, emoji_folders[64], 64)


def test_emoji32_reconstruction_recipe_trains_both_stages(tmp_path, emoji_folders):
    """configs/stage{1,2}_emoji32.yaml, the 16x16 codes that meet the 30 dB target."""
    train_both_stages(tmp_path, emoji_folders[32], 32)
    assert VQVAE.from_pretrained(tmp_path / "stage1" / "vqvae").config.grid_size == 16


def test_emoji32_configs_train_and_score_heldout_styles(tmp_path, emoji_folders, capsys):
    """The recipe of scripts/demo_emoji.sh (configs/stage{1,2}_emoji32_8x8.yaml, reranker_emoji32.yaml): both
    stages, then the evaluate command's --heldout_style: every score present and in range, a grid."""
    from stage2_transformer.evaluate import main as evaluate

    stage2 = train_both_stages(tmp_path, emoji_folders[32], 32, "_8x8")
    assert VQVAE.from_pretrained(tmp_path / "stage1" / "vqvae").config.grid_size == 8
    settings = "--heldout_style true --heldout_negative_style true --num_samples 8 --diversity_captions 2"
    settings += " --grid_pairs 2"
    paths = ["--run", stage2, "--data.path", emoji_folders[32], "--codes.cache_dir", tmp_path / "codes"]
    report = evaluate(["--config", "configs/stage2_emoji32_8x8.yaml", *map(str, paths), *flags(settings)])
    assert report["heldout_captions"] == 2  # the fake packs hold out 2 pairs
    for key in ("style_accuracy_pct", "retrieval_top1_pct", "retrieval_top5_pct"):
        for prefix in ("", "train_pairs_", "negative_"):
            assert 0 <= report[prefix + key] <= 100
    assert report["retrieval_top5_pct"] == 100.0  # 2 held-out images: the true one is always in the top 5
    assert report["diversity_mse"] >= 0 and report["heldout_pairwise_mse"] > 0
    # every held-out caption counted in exactly one category of the breakdown
    category_counts = [
        value for key, value in report.items() if key.endswith("_captions") and "category_" in key
    ]
    assert category_counts and sum(category_counts) == report["heldout_captions"]
    assert report["bits_ratio_caption_to_empty"] > 0
    assert json.loads((stage2 / "eval_metrics.json").read_text()) == report
    assert Image.open(stage2 / "heldout_samples.png").width > 2 * 128  # sample and true image side by side

    # A re-ranker, two steps of configs/reranker_emoji32.yaml on the same pictures and stage 1, and the
    # evaluate command's score of its pick of 3 samples per held-out caption.
    reranker = tmp_path / "reranker"
    settings = FEW_STEPS + " --num_eval_images 2"
    launch(
        "reranker/train.py",
        "--config",
        "configs/reranker_emoji32.yaml",
        *flags(settings),
        *map(str, ["--data.path", emoji_folders[32], "--vqvae", tmp_path / "stage1" / "vqvae"]),
        *map(str, ["--train.output_dir", reranker]),
    )
    reranked = evaluate(
        ["--config", "configs/stage2_emoji32_8x8.yaml", *map(str, paths)]
        + flags(
            "--heldout_style true --num_samples 8 --diversity_captions 0 --grid_pairs 2 --rerank_candidates 3"
        )
        + ["--rerank_clip", str(reranker / "clip")]
    )
    assert (
        reranked["reranked_candidates"] == 3
        and reranked["style_accuracy_pct"] == report["style_accuracy_pct"]
    )

    # The reference-conditioned prior, two steps on the run's pictures, scored with the same re-ranker. The
    # fake packs' held-out emoji are drawn in the other style in training: both retrievals find that picture,
    # wrong in style by construction. Caption retrieval gives every training row a reference, the emoji key
    # only the 16 rows of the 8 emoji drawn in both styles.
    from benchmarks.emoji_reference_prior import COLUMNS
    from benchmarks.emoji_reference_prior import main as reference_prior

    out = tmp_path / "reference_prior.json"
    settings = f"--run {stage2} --data {emoji_folders[32]} --steps 2 --batch_size 4 --warmup_steps 1"
    settings += f" --candidates 2 --rerank_clip {reranker / 'clip'} --out {out} --save {tmp_path / 'rag'}"
    for retrieval, with_reference in (("caption", 18), ("emoji", 16)):
        got = reference_prior(flags(f"{settings} --retrieve {retrieval}"))
        assert (got["training_rows"], got["training_rows_with_reference"]) == (18, with_reference)
        assert got["heldout_same_emoji_retrieved_pct"] == 100.0
        every = got["groups"]["all"]
        assert every["captions"] == 2 and set(COLUMNS) <= set(every)
        assert every["retrieved picture"]["style_accuracy_pct"] == 0.0
        for column in COLUMNS:
            assert every[column]["retrieval_top5_pct"] == 100.0  # 2 held-out images
        assert every["with reference"]["style_accuracy_pct"] <= got["any_candidate_right_style_pct"]
        assert json.loads(out.read_text())["groups"] == got["groups"]
    saved = json.loads((tmp_path / "rag" / "sequence_layout.json").read_text())
    assert saved["text_len"] == 24 + 64  # the caption, then the reference's 8x8 codes

    # The candidates benchmark on the same run: candidate 0 is the sample the evaluate command scored, and
    # the re-ranker's pick of the same 3 candidates is the evaluate command's reranked sample.
    from benchmarks.heldout_candidates import RULES
    from benchmarks.heldout_candidates import main as candidates

    out = tmp_path / "candidates.json"
    bench = candidates(
        ["--run", str(stage2), "--data", str(emoji_folders[32]), "--candidates", "3", "--out", str(out)]
        + ["--clip", str(reranker / "clip")]
    )
    every = bench["groups"]["all"]
    assert every["captions"] == 2 and set(RULES) <= set(every)
    assert every["first"]["style_accuracy_pct"] == report["style_accuracy_pct"]
    for key in ("style_accuracy_pct", "retrieval_top1_pct", "retrieval_top5_pct"):
        assert every["CLIP's pick"][key] == reranked["reranked_" + key]
    assert every["negative style"]["style_accuracy_pct"] == report["negative_style_accuracy_pct"]
    # any of the candidates in the right style is at least as often as the first or the prior's pick
    for rule in ("first", "all candidates", "prior's pick"):
        assert every[rule]["style_accuracy_pct"] <= every["any candidate"]["style_accuracy_pct"]
    assert json.loads(out.read_text())["groups"] == bench["groups"]
    # Every candidate steered away from the other style: candidate 0 is then the negative-style sample.
    steered = candidates(
        ["--run", str(stage2), "--data", str(emoji_folders[32]), "--candidates", "2", "--negative_candidates"]
        + ["--out", str(out)]
    )
    # mse to the true image tells the samples apart: plain and steered differ, steered candidate 0 is the
    # negative-style sample
    for plain, steered_caption in zip(bench["captions"], steered["captions"]):
        assert plain["first"]["mse"] != plain["negative style"]["mse"]
        assert steered_caption["first"] == steered_caption["negative style"] == plain["negative style"]

    # The ensemble benchmark on one run: its pick of the same 3 candidates is the evaluate command's reranked
    # sample again. A second report reuses the first's candidates (it draws none) and scores the same; one
    # drawn with another seed is refused in one line.
    from benchmarks.emoji_prior_ensemble import main as ensemble

    out = tmp_path / "ensemble.json"
    settings = f"--run {stage2} --data {emoji_folders[32]} --rerank_clip {reranker / 'clip'} --candidates 3"
    first = ensemble(flags(f"{settings} --out {out}"))["groups"]["all"]
    for key in ("style_accuracy_pct", "retrieval_top1_pct", "retrieval_top5_pct"):
        assert first["stage2: pick 3"][key] == reranked["reranked_" + key]
    capsys.readouterr()
    again = ensemble(flags(f"{settings} --reuse {out} --out {tmp_path / 'again.json'}"))["groups"]["all"]
    assert again == first and f"3 candidates from {out}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ensemble(flags(f"{settings} --reuse {out} --seed 5 --out {tmp_path / 'again.json'}"))
    assert "was drawn with other settings (seed 1234)" in capsys.readouterr().err
    # The prior with a copy of itself: their product draws the prior's own candidates, and each prior's mixed
    # pool of 4 is the re-ranker's pick among its first 2 and the product's first 2, scored as the report says.
    twin = tmp_path / "twin"
    shutil.copytree(stage2, twin, ignore=shutil.ignore_patterns("checkpoints"))
    settings = f"--run {stage2} --also {twin} --data {emoji_folders[32]} --rerank_clip {reranker / 'clip'}"
    mixed = ensemble(flags(f"{settings} --candidates 4 --out {tmp_path / 'twin.json'}"))
    scores = {
        name: {k: torch.tensor(v) for k, v in s.items()} for name, s in mixed["candidate_scores"].items()
    }
    assert torch.equal(scores["product"]["rank"], scores[str(stage2)]["rank"])
    pool = {
        k: torch.cat([scores[str(stage2)][k][:, :2], scores["product"][k][:, :2]], 1)
        for k in scores["product"]
    }
    chosen = pool["clip"].argmax(1)  # (2,)
    right, rank = pool["right"][torch.arange(2), chosen], pool["rank"][torch.arange(2), chosen]
    assert mixed["groups"]["all"]["stage2 2 + product 2: pick"] == percentages(right, rank)
    # each prior gets its pool: the copy's candidates are the prior's, so its pool is the same
    assert mixed["groups"]["all"]["twin 2 + product 2: pick"] == percentages(right, rank)

    # The style classifier's reading of the same samples. The fake packs paint each style its own colour: the
    # held-out pictures are read as their style and the other style's pictures as the other, and the samples'
    # style accuracy beside the classifier's reading is the evaluate command's.
    from benchmarks.heldout_style_classifier import main as style_classifier

    out = tmp_path / "classifier.json"
    settings = f"--run {stage2} --data {emoji_folders[32]} --classifier_steps 60 --out {out}"
    read = style_classifier(flags(settings))["groups"]["all"]
    assert read["captions"] == 2 and read["heldout_pct"] == 100.0 and read["other_style_pct"] == 0.0
    assert read["sample_style_accuracy_pct"] == report["style_accuracy_pct"]
    assert read["negative_style_accuracy_pct"] == report["negative_style_accuracy_pct"]
    assert 0 <= read["sample_pct"] <= 100 and json.loads(out.read_text())["groups"]["all"] == read

    # A user's mistakes in the benchmarks' --run / --data are one line each, no traceback; a run whose
    # stage1.json is gone is scored with --vqvae, the stage-1 model it trained on.
    moved = tmp_path / "moved_run"
    shutil.copytree(stage2, moved, ignore=shutil.ignore_patterns("stage1.json", "checkpoints"))
    mistakes = {
        f"--run {tmp_path} --data {emoji_folders[32]}": "is not a stage-2 output folder",
        f"--run {stage2} --data {tmp_path / 'no_such_folder'}": "is not a folder",
        f"--run {moved} --data {emoji_folders[32]}": "stage1.json is missing: pass --vqvae",
    }
    for settings, message in mistakes.items():
        with pytest.raises(SystemExit) as exit_info:
            candidates(flags(f"{settings} --candidates 1 --out {out}"))
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    settings = f"--run {moved} --data {emoji_folders[32]} --vqvae {tmp_path / 'stage1' / 'vqvae'}"
    again = candidates(flags(f"{settings} --candidates 1 --out {out}"))
    assert again["groups"]["all"]["first"] == every["first"]


@pytest.mark.parametrize(
    "name, width",
    [("stage2_emoji32_gpu", (768, 12, 0.1)), ("stage2_emoji32_8x8_large", (384, 6, 0.1))],
)
def test_emoji32_larger_priors_train_through_the_entry_point(tmp_path, emoji_folders, name, width):
    """The GPU prior and the largest CPU prior: one CPU step on a random 8x8 stage 1, at their width with 2
    of their layers (the full depth's final checkpoint alone would cost the suite ~10 s); tests/test_config.py
    checks the files' own sizes."""
    from stage1_vqvae.config import VQVAEConfig

    stage1 = tmp_path / "vqvae"
    VQVAE(VQVAEConfig(resolution=32, base_channels=8, channel_multipliers=[1, 2, 2])).save_pretrained(stage1)
    one_step = FEW_STEPS.replace("--train.max_steps 2", "--train.max_steps 1").replace(
        "eval_every 2", "eval_every 0"
    )
    out = tmp_path / "stage2"
    paths = ["--vqvae", stage1, "--codes.cache_dir", tmp_path / "codes", "--train.output_dir", out]
    launch(
        "stage2_transformer/train.py",
        "--config",
        f"configs/{name}.yaml",
        *flags(one_step),
        "--model.num_layers",
        "2",
        "--data.path",
        emoji_folders[32],
        *map(str, paths),
    )
    config = json.loads((out / "transformer" / "config.json").read_text())
    size = (config["hidden_size"], config["num_attention_heads"], config["attention_dropout"])
    assert size == width and config["num_hidden_layers"] == 2
    (logged,) = [m for m in read_metrics(out) if "train/steps_per_s" in m]
    assert logged["step"] == 1 and logged["train/steps_per_s"] > 0


def test_heldout_style_references_on_known_answers(tmp_path, emoji_folders, capsys):
    """The fake packs paint each style one colour in the emoji's left half, with a small mark per emoji: the
    other style's picture is the wrong style by construction, and anything drawn in the asked style's
    colour (the style's mean, the analogy, the linear translator) is the right one."""
    from benchmarks.heldout_style_references import REFERENCES
    from benchmarks.heldout_style_references import main as references

    out = tmp_path / "references.json"
    report = references(["--data", emoji_folders[32], "--translator_steps", "2", "--out", str(out)])
    every = report["groups"]["all"]
    assert every["captions"] == 2 and set(REFERENCES) <= set(every)
    assert every["other style's picture"]["style_accuracy_pct"] == 0.0
    for reference in ("style's mean picture", "analogy", "linear translator"):
        assert every[reference]["style_accuracy_pct"] == 100.0, reference
    assert 0 <= every["conv translator"]["style_accuracy_pct"] <= 100
    assert json.loads(out.read_text())["groups"] == report["groups"]

    # Captioned pictures without the emoji columns: a one-line error that names the data it needs.
    plain = tmp_path / "plain"
    shutil.copytree(emoji_folders[32], plain)
    for metadata in plain.glob("*/metadata.jsonl"):
        rows = [json.loads(line) for line in metadata.read_text().splitlines()]
        metadata.write_text(
            "".join(json.dumps({"file_name": r["file_name"], "text": r["text"]}) + "\n" for r in rows)
        )
    with pytest.raises(SystemExit):
        references(["--data", str(plain), "--translator_steps", "0", "--out", str(tmp_path / "plain.json")])
    assert "no 'unified' column" in capsys.readouterr().err and not (tmp_path / "plain.json").exists()
