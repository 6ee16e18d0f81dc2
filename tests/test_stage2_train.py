"""The stage-2 train script, launched with `accelerate launch` on a tiny config, and its data path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from minidalle.hub import model_fingerprint
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.model import VQVAE
from stage2_transformer.layout import SequenceLayout
from stage2_transformer.model import load_transformer
from stage2_transformer.tokenizer import load_caption_tokenizer
from tests.conftest import ROOT, flags, inductor_compiles, launch, read_metrics


def save_vqvae(folder, seed: int = 0, codebook_size: int = 32):
    torch.manual_seed(seed)
    config = VQVAEConfig(
        resolution=32, base_channels=8, channel_multipliers=[1, 2, 2], codebook_size=codebook_size
    )
    VQVAE(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vqvae_dir(tmp_path_factory):
    return save_vqvae(tmp_path_factory.mktemp("stage1") / "vqvae")


TRAIN = "stage2_transformer/train.py"
TINY = flags(
    "--config configs/stage2_tiny.yaml --data.builtin_train_size 256 --data.builtin_eval_size 32 "
    "--tokenizer.vocab_size 300 --model.hidden_size 32 --model.num_layers 2 --model.num_heads 2 "
    "--train.batch_size 8 --train.warmup_steps 2 --train.log_every 2 --train.eval_every 4 --train.image_every 4 "
    "--train.checkpoint_every 4 --train.learning_rate 3e-3 --sampling.num_captions 2 "
    "--sampling.images_per_caption 2 --num_eval_examples 32"
)


def tiny_args(vqvae, cache, codes, out, extra: str = ""):
    """The tiny run's flags, its folders, then ``extra`` (flags and values separated by spaces)."""
    paths = ["--vqvae", vqvae, "--data.builtin_cache_dir", cache, "--codes.cache_dir", codes]
    return [*TINY, *map(str, paths), "--train.output_dir", str(out), *flags(extra)]


def test_train_writes_checkpoints_samples_and_model(tmp_path, vqvae_dir, shapes_cache):
    out, codes = tmp_path / "run", tmp_path / "codes"
    launch(TRAIN, *tiny_args(vqvae_dir, shapes_cache, codes, out, "--train.max_steps 12"), via_launcher=True)
    # the tiny config pre-encodes five shifted views of each training picture, image-major (so that the rows
    # do not depend on batching or sharding); the held-out split stays as it is
    import datasets

    from minidalle.shapes import build_builtin_dataset

    train_meta = json.loads(next(codes.glob("train-*/codes_meta.json")).read_text())
    eval_meta = json.loads(next(codes.glob("validation-*/codes_meta.json")).read_text())
    assert train_meta["shift_pixels"] == 1 and train_meta["num_rows"] == 5 * 256
    assert train_meta["skipped_images"] == 0
    assert "shift_pixels" not in eval_meta and eval_meta["num_rows"] == 32
    rows = datasets.load_from_disk(str(next(codes.glob("train-*")) / "data"))
    source = build_builtin_dataset(shapes_cache, train_size=256, eval_size=32)["train"]["text"]
    assert rows["text"] == [text for text in source for _ in range(5)]
    # exported model with its layout, and the tokenizer
    model, layout = load_transformer(out / "transformer")
    tokenizer = load_caption_tokenizer(out / "tokenizer")
    assert layout.text_vocab_size == len(tokenizer) and layout.codebook_size == 32
    assert (layout.grid_h, layout.grid_w, layout.text_len) == (8, 8, 16)
    assert model.config.vocab_size == layout.vocab_size
    # checkpoints hold loadable models
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "checkpoint-12",
        "checkpoint-4",
        "checkpoint-8",
    ]
    load_transformer(out / "checkpoints" / "checkpoint-8" / "transformer")
    # sample grids with their captions
    for step in (4, 8, 12):
        grid = Image.open(out / "images" / f"samples-{step:06d}.png")
        assert grid.size[0] > 128
        captions = (out / "images" / f"samples-{step:06d}.txt").read_text().splitlines()
        assert len(captions) == 4
    # losses fall; eval reports bits per image against the uniform prior
    metrics = read_metrics(out)
    image_loss = [m["train/image_loss"] for m in metrics if "train/image_loss" in m]
    assert image_loss[-1] < image_loss[0]
    evals = [m for m in metrics if "eval/bits_per_image" in m]
    assert evals[-1]["eval/uniform_bits_per_image"] == pytest.approx(64 * 5)
    assert evals[-1]["eval/bits_per_image"] < evals[-1]["eval/uniform_bits_per_image"]
    assert json.loads((out / "stage1.json").read_text())["codebook_size"] == 32
    # the evaluation command: bits per image with and without the caption, and checker scores of samples
    from stage2_transformer.evaluate import main as evaluate

    paths = ["--run", out, "--data.builtin_cache_dir", shapes_cache, "--codes.cache_dir", tmp_path / "codes"]
    settings = flags("--data.builtin_train_size 256 --data.builtin_eval_size 32 --num_samples 4")
    report = evaluate(["--config", "configs/stage2_tiny.yaml", *map(str, paths), *settings])
    saved = json.loads((out / "eval_metrics.json").read_text())
    assert (
        saved == report
        and report["examples"] == 32
        and report["uniform_bits_per_image"] == pytest.approx(320)
    )
    assert 0 < report["bits_per_image"] < 320 and report["bits_per_image_empty_caption"] > 0
    assert report["samples_per_setting"] == 4 and 0 <= report["samples_all_four_pct_cfg3"] <= 100


def test_resume_continues_exactly(tmp_path, vqvae_dir, shapes_cache):
    codes = tmp_path / "codes"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = "--train.max_steps 8 --train.checkpoint_every 0 --train.image_every 0 --train.eval_every 0"
    launch(TRAIN, *tiny_args(vqvae_dir, shapes_cache, codes, straight, common))
    launch(TRAIN, *tiny_args(vqvae_dir, shapes_cache, codes, resumed, f"{common} --train.stop_after_steps 3"))
    resume = f"{common} --resume_from_checkpoint latest"
    result = launch(TRAIN, *tiny_args(vqvae_dir, shapes_cache, codes, resumed, resume))
    assert "Reusing pre-encoded train codes" in result.stderr  # the second run did not re-encode
    a = load_file(str(straight / "transformer" / "model.safetensors"))
    b = load_file(str(resumed / "transformer" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def refusal(argv: list[str], capsys) -> str:
    """Run the train script in this process (a refusal comes before any training: no need to pay a
    process start for it); returns what it printed to stderr, after checking it exited non-zero."""
    from minidalle.errors import run_main
    from stage2_transformer.train import main

    capsys.readouterr()
    code = run_main(main, argv)
    err = capsys.readouterr().err
    assert code != 0, err[-3000:]
    return err


def test_mismatched_stage1_model_fails_clearly(
    tmp_path, vqvae_dir, shapes_cache, capsys, monkeypatch, fresh_accelerator_state
):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    monkeypatch.chdir(ROOT)
    codes = tmp_path / "codes"
    out = tmp_path / "run"
    two_steps = "--train.max_steps 2 --train.image_every 0 --train.eval_every 0"
    launch(TRAIN, *tiny_args(vqvae_dir, shapes_cache, codes, out, two_steps))
    other = save_vqvae(tmp_path / "other_vqvae", seed=1, codebook_size=64)
    # resuming the run with another stage-1 model
    resume = "--train.max_steps 4 --resume_from_checkpoint latest"
    err = refusal(tiny_args(other, shapes_cache, codes, out, resume), capsys)
    assert "was trained on codes from the stage-1 model" in err
    # training a new run on codes made by another stage-1 model (same codebook size, other weights)
    same_size = save_vqvae(tmp_path / "same_size", seed=2, codebook_size=32)
    stored = next(codes.glob("train-*"))
    given_codes = ["--train.max_steps", "2", "--codes.train_path", str(stored)]
    err = refusal([*tiny_args(same_size, shapes_cache, codes, tmp_path / "new"), *given_codes], capsys)
    assert "were made by another stage-1 model" in err
    err = refusal([*tiny_args(other, shapes_cache, codes, tmp_path / "new2"), *given_codes], capsys)
    assert "use a codebook of 32 entries, but the stage-1 model has 64" in err
    # A launch that failed before training left a record and a tokenizer but no run: the folder takes a
    # fresh start with another stage-1 model (no "was trained on codes from" refusal, no stale tokenizer).
    assert (tmp_path / "new2" / "stage1.json").is_file() and (tmp_path / "new2" / "tokenizer").is_dir()
    launch(TRAIN, *tiny_args(same_size, shapes_cache, codes, tmp_path / "new2", two_steps))
    record = json.loads((tmp_path / "new2" / "stage1.json").read_text())
    assert record["fingerprint"] == model_fingerprint(same_size) and record["codebook_size"] == 32
    assert record["absolute_path"] == str(Path(same_size).resolve())


@pytest.mark.parametrize(
    "backend",
    [
        "aot_eager",
        pytest.param("inductor", marks=inductor_compiles),
    ],
)
def test_compiled_training_exports_the_plain_model(tmp_path, vqvae_dir, shapes_cache, backend):
    """train.compile: compiled after Accelerate's wrapping; the checkpoint and the export hold plain weights.
    aot_eager traces forward and backward as inductor does and runs them without generating kernels."""
    out, kernels = tmp_path / "run", tmp_path / "inductor"
    two_steps = "--train.max_steps 2 --train.image_every 0 --train.eval_every 0 --train.compile true --model.num_layers 1"
    result = launch(
        TRAIN,
        *tiny_args(
            vqvae_dir, shapes_cache, tmp_path / "codes", out, f"{two_steps} --train.compile_backend {backend}"
        ),
        # a fresh kernel cache: the suite pays the real compile time; dynamo's log names the backend it ran
        env={"TORCHINDUCTOR_CACHE_DIR": str(kernels), "TORCH_LOGS": "dynamo"},
    )
    assert f"done compiler function {backend}" in result.stderr  # dynamo traced the model and compiled it
    if backend == "inductor":
        assert any(kernels.rglob("*.py"))  # inductor wrote the compiled graphs' code
    exported = load_file(str(out / "transformer" / "model.safetensors"))
    in_checkpoint = load_file(str(out / "checkpoints" / "checkpoint-2" / "transformer" / "model.safetensors"))
    assert not any("_orig_mod" in key for key in exported)
    assert exported.keys() == in_checkpoint.keys()
    assert all(torch.equal(exported[key], in_checkpoint[key]) for key in exported)
    model, _ = load_transformer(out / "transformer")
    assert model.config.num_hidden_layers == 1


def test_an_unknown_compile_backend_is_refused_with_the_known_ones():
    from minidalle.train_config import TrainConfig

    with pytest.raises(
        ValueError, match="'inductr' is not a torch.compile backend; use one of .*inductor.*aot_eager"
    ):
        TrainConfig(compile=True, compile_backend="inductr")


def test_caption_dropout_rate():
    layout = SequenceLayout(text_len=6, text_vocab_size=50, codebook_size=16, grid_h=2, grid_w=2, pad_id=0)
    text_ids = torch.randint(1, 50, (20000, 6))
    dropped_ids, mask = layout.drop_captions(text_ids, 0.1, torch.Generator().manual_seed(0))
    assert abs(mask.float().mean().item() - 0.1) < 0.01
    assert (dropped_ids[mask] == 0).all()  # dropped captions are entirely the empty caption
    assert torch.equal(dropped_ids[~mask], text_ids[~mask])  # the others are untouched
    none, mask = layout.drop_captions(text_ids, 0.0)
    assert not mask.any() and torch.equal(none, text_ids)


def test_caption_dropout_happens_in_training(tmp_path, vqvae_dir, shapes_cache):
    out = tmp_path / "run"
    settings = "--train.max_steps 20 --train.batch_size 16 --loss.caption_dropout 0.5"
    settings += " --train.image_every 0 --train.eval_every 0"
    launch(TRAIN, *tiny_args(vqvae_dir, shapes_cache, tmp_path / "codes", out, settings))
    rates = [m["train/caption_dropout"] for m in read_metrics(out) if "train/caption_dropout" in m]
    assert abs(sum(rates) / len(rates) - 0.5) < 0.1  # 320 draws


def test_shifted_views_move_the_picture_and_repeat_its_edges():
    from stage2_transformer.precompute import shifted_views

    image = torch.arange(16.0).reshape(1, 1, 4, 4)  # (B, C, H, W)
    views = shifted_views(image, 1)  # (5, B, C, H, W): as is, right, left, down, up
    assert views.shape == (5, 1, 1, 4, 4) and torch.equal(views[0], image)
    assert torch.equal(views[1][..., 1:], image[..., :-1]) and torch.equal(views[1][..., 0], image[..., 0])
    assert torch.equal(views[2][..., :-1], image[..., 1:]) and torch.equal(views[2][..., -1], image[..., -1])
    assert torch.equal(views[3][..., 1:, :], image[..., :-1, :]) and torch.equal(
        views[4][..., :-1, :], image[..., 1:, :]
    )
