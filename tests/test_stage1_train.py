"""The stage-1 train script, launched with `accelerate launch` on a tiny config."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from stage1_vqvae.model import VQVAE
from tests.conftest import LAUNCHER_ENV, flags, launch, read_metrics

TRAIN = "stage1_vqvae/train.py"
TINY = flags(
    "--config configs/stage1_tiny.yaml --data.builtin_train_size 256 --data.builtin_eval_size 32 "
    "--model.base_channels 8 --model.codebook_size 32 --train.batch_size 8 --train.warmup_steps 2 "
    "--train.log_every 2 --train.eval_every 4 --train.image_every 4 --train.checkpoint_every 4 "
    "--train.report_to tensorboard --codebook.restart_every 2 --codebook.kmeans_batches 1 --num_eval_images 32"
)


def tiny_args(cache, out, extra: str = ""):
    """The tiny run's flags, its two folders, then ``extra`` (flags and values separated by spaces)."""
    return [*TINY, "--data.builtin_cache_dir", str(cache), "--train.output_dir", str(out), *flags(extra)]


def test_launch_sets_what_accelerate_launch_sets(tmp_path):
    """The other tests run the train scripts directly with LAUNCHER_ENV: it must be what the launcher sets."""
    script = tmp_path / "show_env.py"
    script.write_text(
        "import json, os\nprint(json.dumps({k: v for k, v in os.environ.items() if k.startswith('ACCELERATE_')}))\n"
    )
    result = launch(str(script), via_launcher=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == LAUNCHER_ENV


def test_train_writes_checkpoints_grids_logs_and_model(tmp_path, shapes_cache):
    out = tmp_path / "run"
    launch(
        TRAIN,
        *tiny_args(shapes_cache, out, "--train.max_steps 12 --train.learning_rate 3e-3"),
        via_launcher=True,
    )
    # the exported model loads and tokenizes images
    model = VQVAE.from_pretrained(out / "vqvae")
    assert model.encode(torch.zeros(1, 3, 32, 32)).shape == (1, 8, 8)
    # checkpoints are complete, limited in number, and each holds a loadable model
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]
    VQVAE.from_pretrained(out / "checkpoints" / "checkpoint-8" / "vqvae")
    # reconstruction grids (inputs above, reconstructions below) and TensorBoard events
    grids = sorted((out / "images").glob("reconstructions-*.png"))
    assert [g.name for g in grids] == [f"reconstructions-{s:06d}.png" for s in (4, 8, 12)]
    assert Image.open(grids[-1]).size[1] > Image.open(grids[-1]).size[0] / 8  # two rows of tiles
    assert list(out.rglob("events.out.tfevents.*"))
    # the loss falls and eval metrics are logged
    metrics = read_metrics(out)
    train_mse = [m["train/mse"] for m in metrics if "train/mse" in m]
    assert train_mse[-1] < 0.5 * train_mse[0]
    evals = [m for m in metrics if "eval/psnr_db" in m]
    assert evals and all(0 < m["eval/codebook_usage_pct"] <= 100 for m in evals)
    assert "eval/attributes_pct" in evals[-1]
    # the evaluation command reports on the held-out split and writes JSON
    from stage1_vqvae.evaluate import main as evaluate

    paths = ["--model", str(out / "vqvae"), "--data.builtin_cache_dir", str(shapes_cache)]
    paths += ["--output_json", str(tmp_path / "eval.json")]
    sizes = flags("--data.builtin_train_size 256 --data.builtin_eval_size 32")
    report = evaluate(["--config", "configs/stage1_tiny.yaml", *paths, *sizes])
    assert report["images"] == 32 and report["psnr_db"] == pytest.approx(evals[-1]["eval/psnr_db"], abs=1e-3)
    assert (
        json.loads((tmp_path / "eval.json").read_text())["codebook_usage_pct"] == report["codebook_usage_pct"]
    )
    assert 0 < report["ssim"] <= 1
    # 16 held-out images in two bands of 8: inputs above reconstructions, four rows of 96 px tiles
    assert Image.open(tmp_path / "reconstructions.png").size == (8 * 98 + 2, 4 * 98 + 2)


def test_resume_continues_exactly(tmp_path, shapes_cache):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    eight_steps = "--train.max_steps 8 --train.checkpoint_every 0"
    launch(TRAIN, *tiny_args(shapes_cache, straight, eight_steps))
    launch(TRAIN, *tiny_args(shapes_cache, resumed, f"{eight_steps} --train.stop_after_steps 4"))
    assert not (resumed / "vqvae").exists()  # stopped early: no final export yet
    launch(TRAIN, *tiny_args(shapes_cache, resumed, f"{eight_steps} --resume_from_checkpoint latest"))
    a = load_file(str(straight / "vqvae" / "model.safetensors"))
    b = load_file(str(resumed / "vqvae" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_refuses_to_overwrite_another_run(tmp_path, shapes_cache):
    out = tmp_path / "run"
    launch(TRAIN, *tiny_args(shapes_cache, out, "--train.max_steps 2"))
    result = launch(TRAIN, *tiny_args(shapes_cache, out, "--train.max_steps 2"), expect_ok=False)
    assert result.returncode != 0 and "already holds a run" in result.stderr
    assert (out / "vqvae" / "model.safetensors").is_file()  # nothing already done was lost


def test_unknown_config_key_fails_before_work(tmp_path, shapes_cache):
    out = tmp_path / "run"
    result = launch(TRAIN, *tiny_args(shapes_cache, out, "--train.learnig_rate 1"), expect_ok=False)
    assert result.returncode != 0 and "learning_rate" in result.stderr
    assert not out.exists()


def _odd_images_folder(folder):
    """An imagefolder with every awkward kind of image, two corrupt files included."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
    images = {
        "rgba.png": Image.fromarray(rgb).convert("RGBA"),
        "gray.png": Image.fromarray(rgb[..., 0]),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "gray16.png": Image.fromarray(rgb[..., 1].astype(np.uint16) * 257),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "la.png": Image.fromarray(rgb[..., 0]).convert("LA"),
        "tall.png": Image.fromarray(rng.integers(0, 255, (90, 20, 3), dtype=np.uint8)),
        "tiny.png": Image.fromarray(rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)),
    }
    lines = []
    for name, image in images.items():
        image.save(folder / name)
        lines.append(f'{{"file_name": "{name}", "text": "an odd image {name}"}}')
    (folder / "corrupt.png").write_bytes(b"this is not a png at all")
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    (folder / "truncated.png").write_bytes(buffer.getvalue()[:200])
    lines += [
        '{"file_name": "corrupt.png", "text": "broken"}',
        '{"file_name": "truncated.png", "text": "cut"}',
    ]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_odd_modes_and_corrupt_images_are_handled(tmp_path):
    from minidalle.data import (
        SKIPPED,
        DataConfig,
        ImageCaptionDataset,
        check_usable,
        collate_image_captions,
        load_captioned_dataset,
    )

    folder = _odd_images_folder(tmp_path / "odd")
    hf = load_captioned_dataset(DataConfig(source="imagefolder", path=str(folder), resolution=16), "train")
    dataset = ImageCaptionDataset(hf, 16)
    items = [dataset[i] for i in range(len(dataset))]
    good = [it for it in items if it["pixels"] is not None]
    bad = [it["bad"] for it in items if it["pixels"] is None]
    assert len(good) == 8 and len(bad) == 2
    assert any("corrupt.png" in b for b in bad) and any("truncated.png" in b for b in bad)
    for item in good:
        assert item["pixels"].shape == (3, 16, 16)
        assert item["pixels"].min() >= -1 and item["pixels"].max() <= 1
    skipped_before = SKIPPED.count
    batch = collate_image_captions(items)
    assert batch["pixels"].shape == (8, 3, 16, 16) and len(batch["text"]) == 8
    assert SKIPPED.count == skipped_before + 2  # the unreadable images are dropped and counted
    check_usable(dataset)


def test_training_skips_corrupt_images_and_reports_them(tmp_path):
    folder = _odd_images_folder(tmp_path / "odd")
    # enough rows for a train/eval split: repeat the metadata lines
    lines = (folder / "metadata.jsonl").read_text().splitlines() * 3
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    settings = flags(
        "--config configs/stage1_tiny.yaml --data.source imagefolder --data.resolution 16 --model.base_channels 8 "
        "--model.codebook_size 16 --train.batch_size 4 --train.max_steps 6 --train.eval_every 0 "
        "--train.report_to none --codebook.kmeans_batches 1"
    )
    paths = ["--data.path", str(folder), "--train.output_dir", str(out)]
    result = launch(TRAIN, *settings, *paths)
    assert (out / "vqvae" / "model.safetensors").is_file()
    assert "Skipping unreadable image" in result.stderr and "corrupt.png" in result.stderr


def test_dataset_without_usable_images_fails_clearly(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(b"garbage")
    (folder / "metadata.jsonl").write_text(
        "".join(f'{{"file_name": "{i}.png", "text": "x"}}\n' for i in range(3))
    )
    from minidalle.data import (
        DataConfig,
        ImageCaptionDataset,
        NoUsableDataError,
        check_usable,
        load_captioned_dataset,
    )

    hf = load_captioned_dataset(DataConfig(source="imagefolder", path=str(folder)), "train")
    with pytest.raises(NoUsableDataError, match="None of the first 3 images could be read"):
        check_usable(ImageCaptionDataset(hf, 32))
