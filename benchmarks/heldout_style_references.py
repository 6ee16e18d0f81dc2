"""How far can the held-out emoji score go on this data? Reference drawings that know the other style's picture.

    python benchmarks/heldout_style_references.py --data data/emoji32 [--resolution 32] \\
        [--translator_steps 2000] [--seed 0] [--out benchmarks/results/heldout_style_references.json]

A prior asked for a held-out (emoji, style) pair has seen that emoji only in the other style. The most
it can know about the picture asked for is the other style's picture and what the training emoji drawn
in both styles show about how one style redraws the other's emoji. Each reference below is *given*
that picture exactly, with no prior and no sampling, draws one picture per held-out caption, and is
scored with the evaluate command's score (``stage2_transformer/heldout_style.py``: style accuracy,
retrieval top-1 / top-5), per group of emoji categories as in ``benchmarks/heldout_candidates.py``:

- **other style's picture**: the training pair remembered exactly and not redrawn (style 0% by
  construction; its top-5 is what perfect memory buys on retrieval);
- **style's mean picture**: the mean of the asked style's training pictures, one picture for every
  emoji: the style without the emoji;
- **analogy**: the training emoji (drawn in both styles) whose picture in the other style is nearest
  this one's, drawn in the asked style;
- **linear translator**: ridge regression from one style's pixels to the other's (on the top
  principal components), fitted on the training emoji drawn in both styles;
- **conv translator**: a small two-scale U-Net trained on the same pairs with MSE + 0.1 L1 for
  ``--translator_steps`` steps (0 skips it), the picture in and the asked style as one-hot planes.

They tell what the score can reach when the drawing is made *from the other style's picture*; they
cannot bound a prior that knows more (how the asked style draws things that look alike) or that
draws away from the other style on purpose (guidance against the other style's caption). The
translators are trained to the mean picture, so they blur. Prints a table and writes JSON; on the
32 px emoji about 5 min on 2 CPU cores, nearly all of it the conv translator.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks.heldout_run import write_report  # noqa: E402
from minidalle import data as data_lib  # noqa: E402
from minidalle.pixels import preprocess  # noqa: E402
from stage2_transformer.heldout_style import (  # noqa: E402
    format_group_table,
    group_masks,
    heldout_pairs,
    percentages,
    pixel_mse,
    style_and_rank,
)

REFERENCES = (
    "other style's picture",
    "style's mean picture",
    "analogy",
    "linear translator",
    "conv translator",
)


def style_pairs(
    pictures: dict[tuple[str, str], torch.Tensor], source_style: str, target_style: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training emoji drawn in both styles: their pictures in ``source_style`` and in ``target_style``,
    row for row, each (m, 3, H, W); ``pictures`` maps (unified, style) to a picture (3, H, W)."""
    both = sorted(u for u, s in pictures if s == source_style and (u, target_style) in pictures)
    if not both:
        raise ValueError(f"No training emoji is drawn in both {source_style!r} and {target_style!r}.")
    sources = torch.stack([pictures[(u, source_style)] for u in both])
    return sources, torch.stack([pictures[(u, target_style)] for u in both])


def analogy(others: torch.Tensor, sources: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """For each picture of ``others`` (n, 3, H, W), the target of the nearest source (pixel MSE): (n, 3, H, W)."""
    return targets[pixel_mse(others, sources).argmin(1)]


def fit_linear_translator(
    sources: torch.Tensor, targets: torch.Tensor, components: int = 400, ridge: float = 1.0
):
    """Ridge regression from ``sources`` to ``targets`` (m, 3, H, W) on the sources' top principal
    components (fewer parameters than pairs); returns a function from pictures (n, 3, H, W) to pictures."""
    x, y = sources.flatten(1).double(), targets.flatten(1).double()  # (m, D)
    x_mean, y_mean = x.mean(0), y.mean(0)
    _, _, right = torch.linalg.svd(x - x_mean, full_matrices=False)
    basis = right[: min(components, len(x))].T  # (D, k)
    z = (x - x_mean) @ basis  # (m, k)
    weights = torch.linalg.solve(
        z.T @ z + ridge * torch.eye(z.shape[1], dtype=z.dtype), z.T @ (y - y_mean)
    )  # (k, D)

    def translate(pictures: torch.Tensor) -> torch.Tensor:
        out = (pictures.flatten(1).double() - x_mean) @ basis @ weights + y_mean  # (n, D)
        return out.clamp(-1, 1).float().view_as(pictures)

    return translate


class ConvTranslator(nn.Module):
    """A two-scale U-Net: a picture (B, 3, H, W) and the asked style as one-hot planes (B, S, H, W) in,
    the picture in that style out (B, 3, H, W), in [-1, 1]; H and W divisible by 4."""

    def __init__(self, num_styles: int, width: int = 32):
        super().__init__()

        def block(inputs: int, outputs: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(inputs, outputs, 3, padding=1),
                nn.GroupNorm(8, outputs),
                nn.SiLU(),
                nn.Conv2d(outputs, outputs, 3, padding=1),
                nn.GroupNorm(8, outputs),
                nn.SiLU(),
            )

        self.down1, self.down2 = block(3 + num_styles, width), block(width, 2 * width)
        self.middle = block(2 * width, 4 * width)
        self.up2, self.up1 = block(6 * width, 2 * width), block(3 * width, width)
        self.out = nn.Conv2d(width, 3, 1)

    def forward(self, pictures: torch.Tensor, style_planes: torch.Tensor) -> torch.Tensor:
        h1 = self.down1(torch.cat([pictures, style_planes], 1))  # (B, w, H, W)
        h2 = self.down2(F.avg_pool2d(h1, 2))  # (B, 2w, H/2, W/2)
        h3 = self.middle(F.avg_pool2d(h2, 2))  # (B, 4w, H/4, W/4)
        u2 = self.up2(torch.cat([F.interpolate(h3, scale_factor=2.0), h2], 1))  # (B, 2w, H/2, W/2)
        u1 = self.up1(torch.cat([F.interpolate(u2, scale_factor=2.0), h1], 1))  # (B, w, H, W)
        return torch.tanh(self.out(u1))  # (B, 3, H, W)


def style_planes(styles: torch.Tensor, num_styles: int, size) -> torch.Tensor:
    """One-hot planes (B, S, H, W) of the style indices ``styles`` (B,)."""
    return F.one_hot(styles, num_styles).float()[:, :, None, None].expand(-1, -1, *size)


def train_conv_translator(
    sources: torch.Tensor,
    targets: torch.Tensor,
    target_styles: torch.Tensor,
    num_styles: int,
    steps: int,
    device,
) -> ConvTranslator:
    """Train on pairs ``sources`` -> ``targets`` (m, 3, H, W) whose asked style is ``target_styles`` (m,)."""
    net = ConvTranslator(num_styles).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    for _ in range(steps):
        batch = torch.randint(0, len(sources), (32,))
        x, y = sources[batch].to(device), targets[batch].to(device)  # (32, 3, H, W)
        if torch.rand(()) < 0.5:  # a mirrored emoji is still the emoji: both pictures flipped together
            x, y = x.flip(3), y.flip(3)
        planes = style_planes(target_styles[batch], num_styles, x.shape[-2:]).to(device)
        out = net(x, planes)
        loss = F.mse_loss(out, y) + 0.1 * F.l1_loss(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return net.eval()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="emoji data folder from scripts/get_emoji.sh")
    p.add_argument("--resolution", type=int, default=32, help="pixels per side, as the stage-1 model's")
    p.add_argument("--translator_steps", type=int, default=2000, help="conv translator steps; 0 skips it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/heldout_style_references.json")
    args = p.parse_args(argv)
    if args.translator_steps < 0:
        p.error(f"--translator_steps must be 0 or more, got {args.translator_steps}.")
    if args.resolution < 4 or args.resolution % 4:
        p.error(f"--resolution must be a multiple of 4, got {args.resolution}.")
    torch.manual_seed(args.seed)
    device = Accelerator().device

    data_cfg = data_lib.DataConfig(source="imagefolder", path=args.data, resolution=args.resolution)
    train_hf, eval_hf = data_lib.load_train_eval(data_cfg)
    try:
        rows, other_rows, truths, others = heldout_pairs(eval_hf, train_hf, args.resolution)  # (n, 3, H, W)
    except ValueError as err:  # not emoji data: say so, no traceback
        p.error(str(err))
    pictures = {
        (row["unified"], row["style"]): preprocess(row["image"], args.resolution)
        for row in train_hf.select_columns(["image", "unified", "style"])
    }  # every training picture: (unified, style) -> (3, H, W)
    styles = sorted({style for _, style in pictures})
    direction_of = [(other["style"], row["style"]) for row, other in zip(rows, other_rows)]  # (from, asked)

    start = time.perf_counter()
    directions = sorted(set(direction_of))
    pairs = {direction: style_pairs(pictures, *direction) for direction in directions}
    linear = {direction: fit_linear_translator(*pairs[direction]) for direction in directions}
    style_means = {
        s: torch.stack([x for (_, style), x in pictures.items() if style == s]).mean(0) for s in styles
    }
    drawings: dict[str, torch.Tensor] = {
        "other style's picture": others,
        "style's mean picture": torch.stack([style_means[row["style"]] for row in rows]),
        "analogy": torch.empty_like(truths),
        "linear translator": torch.empty_like(truths),
    }
    for direction in directions:
        asked = torch.tensor([d == direction for d in direction_of])  # (n,)
        drawings["analogy"][asked] = analogy(others[asked], *pairs[direction])
        drawings["linear translator"][asked] = linear[direction](others[asked])
    if args.translator_steps:
        sources = torch.cat([pairs[d][0] for d in directions])  # (m, 3, H, W)
        targets = torch.cat([pairs[d][1] for d in directions])
        target_styles = torch.cat([torch.full((len(pairs[d][0]),), styles.index(d[1])) for d in directions])
        net = train_conv_translator(
            sources, targets, target_styles, len(styles), args.translator_steps, device
        )
        asked_styles = torch.tensor([styles.index(row["style"]) for row in rows])
        with torch.no_grad():
            planes = style_planes(asked_styles, len(styles), others.shape[-2:])
            drawings["conv translator"] = torch.cat(
                [net(x.to(device), s.to(device)).cpu() for x, s in zip(others.split(256), planes.split(256))]
            )
    seconds = time.perf_counter() - start

    masks = group_masks([row["category"] for row in rows])
    table: dict[str, dict] = {name: {"captions": int(mask.sum())} for name, mask in masks.items()}
    for reference, drawn in drawings.items():
        right_style, rank = style_and_rank(drawn, truths, others)
        for name, mask in masks.items():
            table[name][reference] = percentages(right_style[mask], rank[mask])

    print(f"\nHeld-out captions of {args.data} at {args.resolution} px, drawn from the other style's picture")
    print("style accuracy / retrieval top-5, %")
    print(format_group_table(table, list(drawings)))
    print(f"fitting and drawing: {seconds:.0f} s")
    report = {**vars(args), "styles": styles, "seconds": seconds, "groups": table}
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
