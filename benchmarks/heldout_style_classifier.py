"""Does the prior draw in the style it is asked for? A style classifier's reading of the held-out samples.

    python benchmarks/heldout_style_classifier.py --run outputs/stage2_emoji32_8x8 --data data/emoji32 \\
        [--classifier_steps 1500] [--guidance 3] [--negative_scale 32] [--seed 1234] \\
        [--out benchmarks/results/heldout_style_classifier.json]

The evaluate command's *style accuracy* asks whether a sample is nearer (pixel MSE) to the held-out picture
than to the same emoji's training picture in the other style: the sample has to be the asked style's
*drawing* of that emoji. This benchmark asks the weaker question a reader asks at a glance: does the
sample *look* like the asked style? A small convolutional classifier learns the data's ``style`` column
from the training pictures (half of each batch as stage 1 reconstructs them, the way samples look; random
shifts of up to 2 pixels and mirror images), then reads, per held-out (emoji, style) caption:

- **held-out pictures**: the true held-out picture, and its stage-1 reconstruction. Its accuracy here is
  how far its reading of the samples can be trusted;
- **other style's pictures**: the same emoji's training picture in the other style, what a prior that
  copies its memory would draw. The share read as the asked style should be near 0;
- **sample**: the evaluate command's sample (same seed and guidance; candidate 0 of
  ``benchmarks/heldout_candidates.py``), and **negative style**: the sample guided away from the caption
  naming the other style (the evaluate command's ``negative_*``). Each beside the evaluate command's style
  accuracy of the same samples.

What it can tell: whether the prior renders the style it is asked for (palette, outlines, shading) apart
from whether it knows that style's drawing of the emoji. What it cannot: a classifier trained on 3,431
pictures reads whatever cues separate them, which need not be the ones a person sees; and it is not the
held-out style score of the issue (``stage2_transformer/heldout_style.py``), which it does not replace.
Prints a table by category group and writes JSON. On the 8x8 emoji prior about 3 min on 2 CPU cores, most
of it the classifier's training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks.heldout_run import add_heldout_arguments, load_heldout_run, write_report  # noqa: E402
from minidalle.pixels import pil_to_tensor, preprocess  # noqa: E402
from stage1_vqvae.model import VQVAE  # noqa: E402
from stage2_transformer.evaluation import sample_images  # noqa: E402
from stage2_transformer.heldout_style import (  # noqa: E402
    group_masks,
    style_and_rank,
)

BATCH = 128
COLUMNS = {  # JSON key -> table heading
    "heldout_pct": "held-out pictures",
    "reconstructed_pct": "their stage-1 reconstructions",
    "other_style_pct": "other style's pictures",
    "sample_pct": "sample",
    "negative_pct": "negative style",
}


def style_classifier(num_styles: int) -> nn.Module:
    """Four 3x3 convolutions (two of stride 2), global average pooling, a linear read-out: 0.13M parameters."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.GELU(),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1),
        nn.GELU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(128, num_styles),
    )


def train_classifier(
    pictures: torch.Tensor,
    reconstructions: torch.Tensor,
    labels: torch.Tensor,
    num_styles: int,
    steps: int,
    seed: int,
) -> nn.Module:
    """``pictures`` and their ``reconstructions`` (N, 3, H, W) in [-1, 1], ``labels`` (N,) style indices."""
    torch.manual_seed(seed)  # the initial weights
    generator = torch.Generator(device=pictures.device).manual_seed(seed)  # the batches and augmentations
    model = style_classifier(num_styles).to(pictures.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=max(steps, 1))
    model.train()
    for _ in range(steps):
        rows = torch.randint(len(pictures), (BATCH,), generator=generator, device=pictures.device)
        reconstructed = torch.rand(BATCH, 1, 1, 1, generator=generator, device=pictures.device) < 0.5
        batch = torch.where(reconstructed, reconstructions[rows], pictures[rows])  # (B, 3, H, W)
        dy, dx = torch.randint(-2, 3, (2,), generator=generator, device=pictures.device).tolist()
        batch = torch.roll(batch, (dy, dx), dims=(2, 3))  # emoji sit on white: the wrapped border is white
        if torch.rand((), generator=generator, device=pictures.device) < 0.5:
            batch = batch.flip(3)  # a mirrored emoji keeps its style
        loss = F.cross_entropy(model(batch), labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def read_as(model: nn.Module, pictures: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """Is each picture (n, 3, H, W) read as its ``styles`` (n,)? (n,) bool, on the CPU."""
    logits = torch.cat([model(chunk) for chunk in pictures.split(256)])  # (n, num_styles)
    return (logits.argmax(1) == styles).cpu()


@torch.no_grad()
def reconstruct(vqvae: VQVAE, pictures: torch.Tensor) -> torch.Tensor:
    """Pictures (n, 3, H, W) as stage 1 encodes and decodes them, same shape, in [-1, 1]."""
    chunks = [vqvae.decode_codes(vqvae.encode(chunk)).float().clamp(-1, 1) for chunk in pictures.split(256)]
    return torch.cat(chunks)


def percent(flags: torch.Tensor) -> float:
    return 100.0 * flags.float().mean().item()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_heldout_arguments(p, "heldout_style_classifier")
    p.add_argument("--classifier_steps", type=int, default=1500, help="training steps of 128 pictures")
    args = p.parse_args(argv)
    if args.classifier_steps < 1:
        p.error(f"--classifier_steps must be at least 1, got {args.classifier_steps}.")

    held = load_heldout_run(args, p.error)
    run, device = held.run, held.device
    vqvae, rows, truths, others = held.vqvae, held.rows, held.truths, held.others
    resolution = vqvae.config.resolution
    start = time.perf_counter()

    styles = sorted(set(held.train_hf["style"]))
    train_pictures = torch.stack([preprocess(image, resolution) for image in held.train_hf["image"]]).to(
        device
    )
    train_labels = torch.tensor([styles.index(style) for style in held.train_hf["style"]], device=device)
    classifier = train_classifier(
        train_pictures,
        reconstruct(vqvae, train_pictures),
        train_labels,
        len(styles),
        args.classifier_steps,
        args.seed,
    )
    trained_in = time.perf_counter() - start

    asked = torch.tensor([styles.index(row["style"]) for row in rows], device=device)  # (n,)
    steering = {
        "sample": {},
        "negative": dict(negative_captions=held.negatives, negative_scale=args.negative_scale),
    }
    samples = {}  # name -> (n, 3, H, W) on the CPU
    for name, extra in steering.items():
        images = sample_images(
            held.model,
            held.layout,
            vqvae,
            held.tokenizer,
            held.captions,
            seed=args.seed,
            guidance_scale=args.guidance,
            **extra,
        )
        samples[name] = torch.stack([pil_to_tensor(image) for image in images])
    truths_on = truths.to(device)
    read = {  # column -> (n,) bool: read as the asked style
        "heldout_pct": read_as(classifier, truths_on, asked),
        "reconstructed_pct": read_as(classifier, reconstruct(vqvae, truths_on), asked),
        "other_style_pct": read_as(classifier, others.to(device), asked),
        **{f"{name}_pct": read_as(classifier, pixels.to(device), asked) for name, pixels in samples.items()},
    }
    nearer = {
        name: style_and_rank(pixels, truths, others)[0] for name, pixels in samples.items()
    }  # (n,) each
    seconds = time.perf_counter() - start

    table = {}
    for group, mask in group_masks([row["category"] for row in rows]).items():
        table[group] = {
            "captions": int(mask.sum()),
            **{column: percent(flags[mask]) for column, flags in read.items()},
            **{f"{name}_style_accuracy_pct": percent(right[mask]) for name, right in nearer.items()},
        }
    print(f"\nHeld-out captions of {args.data}, run {run}; styles {', '.join(styles)}")
    print(
        "read as the asked style by the classifier, % (for samples: / the evaluate command's style accuracy)"
    )
    print(format_table(table))
    print(f"classifier: {args.classifier_steps} steps in {trained_in:.0f} s; everything {seconds:.0f} s")
    report = {**vars(args), "styles": styles, "seconds": seconds, "groups": table}
    write_report(args.out, report)
    return report


def format_table(table: dict[str, dict]) -> str:
    width = max(len(heading) for heading in COLUMNS.values())
    lines = [f"{'group':<10} {'captions':>8}  " + "  ".join(f"{h:>{width}}" for h in COLUMNS.values())]
    for group, row in table.items():
        cells = []
        for column in COLUMNS:
            cells.append(f"{row[column]:5.1f}")
            accuracy = column.replace("_pct", "_style_accuracy_pct")  # samples only: the evaluate command's
            if accuracy in row:
                cells[-1] += f" / {row[accuracy]:4.1f}"
        lines.append(f"{group:<10} {row['captions']:>8}  " + "  ".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
