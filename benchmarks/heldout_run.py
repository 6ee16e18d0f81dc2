"""A stage-2 run and the held-out emoji captions it is scored on, loaded once for the emoji benchmarks
(``heldout_candidates.py``, ``heldout_style_classifier.py``), and the JSON report writer those two and
``heldout_style_references.py`` share."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from minidalle import data as data_lib
from stage1_vqvae.model import VQVAE
from stage2_transformer.evaluate import stage1_model_of_run
from stage2_transformer.heldout_style import heldout_pairs, negative_style_caption
from stage2_transformer.layout import SequenceLayout
from stage2_transformer.model import load_transformer
from stage2_transformer.tokenizer import load_caption_tokenizer


@dataclass
class HeldoutRun:
    run: Path  # the stage-2 output folder
    device: torch.device  # where the models are
    vqvae: VQVAE
    model: PreTrainedModel
    layout: SequenceLayout
    tokenizer: PreTrainedTokenizerFast
    train_hf: Dataset  # the training split
    rows: list[dict]  # the held-out rows scored
    other_rows: list[dict]  # each one's training row of the same emoji in the other style
    truths: torch.Tensor  # (n, 3, H, W) the held-out pictures, on the CPU
    others: torch.Tensor  # (n, 3, H, W) the other style's pictures
    captions: list[str]
    negatives: list[str]  # each caption with the other style's name: the negative-style prompt


def add_heldout_arguments(parser: argparse.ArgumentParser, benchmark: str) -> None:
    """The arguments every emoji benchmark on a stage-2 run takes; its JSON goes to
    ``benchmarks/results/<benchmark>.json`` unless ``--out`` says otherwise."""
    parser.add_argument(
        "--run", required=True, help="stage-2 output folder (transformer/, tokenizer/, stage1.json)"
    )
    parser.add_argument("--data", required=True, help="emoji data folder from scripts/get_emoji.sh")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--negative_scale", type=float, default=32.0)
    parser.add_argument(
        "--max_captions", type=int, default=None, help="score only the first N held-out captions"
    )
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--vqvae",
        default=None,
        help="the run's stage-1 model folder, when its stage1.json no longer finds it",
    )
    parser.add_argument("--out", default=f"benchmarks/results/{benchmark}.json")


def load_heldout_run(args: argparse.Namespace, error: Callable[[str], None]) -> HeldoutRun:
    """The run and captions that ``args`` (of ``add_heldout_arguments``) name, on Accelerate's device.
    ``error`` (an argparse parser's) reports a folder that is not a stage-2 run, a stage-1 model it cannot
    find, and data that are not the emoji folders, each in one line with no traceback."""
    run, data, max_captions = Path(args.run), args.data, args.max_captions
    if not (run / "transformer").is_dir():
        error(f"--run {run} is not a stage-2 output folder (it has no transformer/): point it at one.")
    try:
        stage1 = stage1_model_of_run(run, args.vqvae)
    except FileNotFoundError as err:
        error(str(err))
    device = Accelerator().device
    vqvae = VQVAE.from_pretrained(stage1, device=device)
    model, layout = load_transformer(run / "transformer")
    model.to(device)
    tokenizer = load_caption_tokenizer(run / "tokenizer")
    resolution = vqvae.config.resolution
    data_cfg = data_lib.DataConfig(source="imagefolder", path=data, resolution=resolution)
    try:
        train_hf, eval_hf = data_lib.load_train_eval(data_cfg)
    except data_lib.DataError as err:
        error(str(err))
    try:
        rows, other_rows, truths, others = heldout_pairs(eval_hf, train_hf, resolution, max_captions)
    except ValueError as err:
        error(str(err))
    captions = [row["text"] for row in rows]
    negatives = [
        negative_style_caption(c, row["style"], other["style"])
        for c, row, other in zip(captions, rows, other_rows)
    ]
    return HeldoutRun(
        run,
        device,
        vqvae,
        model,
        layout,
        tokenizer,
        train_hf,
        rows,
        other_rows,
        truths,
        others,
        captions,
        negatives,
    )


def write_report(path: str | Path, report: dict) -> None:
    """An emoji benchmark's JSON report at ``path`` (its folder made when missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
