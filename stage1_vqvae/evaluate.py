"""Evaluate a trained VQ-VAE on held-out images: PSNR, codebook usage, perplexity, throughput.

    python -m stage1_vqvae.evaluate --model outputs/stage1_tiny/vqvae --config configs/stage1_tiny.yaml

Reads the data section of the (training) config, so the held-out split is the one the model never
trained on. Prints a table and writes JSON (``--output_json``, default ``<model>/eval_metrics.json``)
and a grid of the first ``--grid_images`` held-out images above their reconstructions
(``reconstructions.png`` beside the JSON; 0 writes none).
On the built-in shapes data, or a folder written by ``python -m minidalle.make_shapes``, it also
reports how often the attribute checker reads colour, shape, position and size from the
reconstructions (with the set's palette) as the captions state them (``all_four_pct``,
``attributes_pct``, ``<attribute>_pct``: percentages of the images).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from accelerate import PartialState

from minidalle import data as data_lib
from minidalle.arguments import MAX_BATCH_SIZE, check_int, check_writable_file
from minidalle.checker import attributes_right
from minidalle.config import parse_config
from minidalle.devices import allow_tf32_on_cuda
from minidalle.errors import run_main
from minidalle.make_shapes import shape_set_of_data
from minidalle.report import report_metrics
from stage1_vqvae.evaluation import evaluate_reconstruction, reconstructions_grid
from stage1_vqvae.model import VQVAE


@dataclass
class Stage1EvalConfig:
    model: str = "outputs/stage1_tiny/vqvae"
    data: data_lib.DataConfig = field(default_factory=data_lib.DataConfig)
    max_images: int = 512
    batch_size: int = 64
    output_json: str | None = None
    grid_images: int = 16

    def __post_init__(self) -> None:
        check_int("max_images", self.max_images, 1, None)
        check_int("grid_images", self.grid_images, 0, 256)
        check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)


# Keys of a training config (configs/stage1_*.yaml) that evaluation does not read: the same file
# serves both commands.
TRAINING_ONLY_KEYS = ("train", "codebook", "num_eval_images", "num_grid_images")


def write_reconstruction_grid(model: VQVAE, dataset, count: int, device, path: Path) -> None:
    """The first ``count`` held-out images, bands of 8, each above its reconstruction."""
    batch = data_lib.collate_image_captions([dataset[i] for i in range(min(count, len(dataset)))])
    path.parent.mkdir(parents=True, exist_ok=True)
    reconstructions_grid(model, batch["pixels"].to(device), columns=8).save(path)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(Stage1EvalConfig, argv, description=__doc__, ignore_file_keys=TRAINING_ONLY_KEYS)
    if cfg.output_json:
        check_writable_file("output_json", cfg.output_json)
    device = PartialState().device
    allow_tf32_on_cuda(device)  # the VQ-VAE runs in fp32
    model = VQVAE.from_pretrained(cfg.model, device=device)
    cfg.data.resolution = model.config.resolution  # images are read at the model's resolution
    _, eval_hf = data_lib.load_train_eval(cfg.data, max_eval=cfg.max_images)
    dataset = data_lib.ImageCaptionDataset(eval_hf, cfg.data.resolution)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, collate_fn=data_lib.collate_image_captions
    )
    shape_set = shape_set_of_data(cfg.data.source, cfg.data.path)
    checker = partial(attributes_right, shape_set=shape_set) if shape_set else None
    metrics = evaluate_reconstruction(model, loader, device, max_images=cfg.max_images, checker=checker)
    metrics = {"split": cfg.data.eval_split, "codebook_size": model.config.codebook_size, **metrics}
    out = Path(cfg.output_json) if cfg.output_json else Path(cfg.model) / "eval_metrics.json"
    if cfg.grid_images:
        write_reconstruction_grid(model, dataset, cfg.grid_images, device, out.parent / "reconstructions.png")
    report_metrics(
        metrics, f"VQ-VAE {cfg.model} on {cfg.data.source} data, split {cfg.data.eval_split!r}", out
    )
    return metrics


if __name__ == "__main__":
    sys.exit(run_main(main))
