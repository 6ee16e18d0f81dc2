"""Negative prompts, region editing and variations, measured with the built-in checker on a trained model.

    python benchmarks/editing_figures.py --model outputs/pipeline_tiny [--images 16] [--seed 0] \\
        [--out benchmarks/results/editing_figures.json]

- **negative prompt**: captions that leave the colour open ("a large circle at the top left"); for each,
  the colour the model draws most often without a negative prompt is negated ("a large red circle at
  the top left"): the share of images in that colour with and without it, and how often the named
  attributes (shape, position, size) stay right.
- **editing**: a built-in picture with one shape; a box over an empty grid cell is repainted under a
  caption naming a new shape there ("empty_cell"), or the box over the shape's own cell under a caption
  naming another shape there ("replace": a one-shape picture, like the training data). Outside the box (one code cell away from its border) the mean
  absolute pixel change against the input and against the input's own VQ-VAE reconstruction (the
  decoder's noise floor); inside, the checker's score of the box alone (pasted onto the background).
- **variations**: of built-in pictures, at several strengths, caption-free: the checker's agreement with
  the input's four attributes, and the diversity (mean pairwise absolute pixel difference, 0-255).

Each part samples in batches; on the demo's tiny model the whole run takes a few minutes of CPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from minidalle.checker import read_attributes, score_images  # noqa: E402
from minidalle.shape_attributes import GRID_SPLITS, POSITIONS, ShapeAttributes  # noqa: E402
from minidalle.shape_captions import make_caption  # noqa: E402
from minidalle.shape_sets import BUILTIN  # noqa: E402
from minidalle.shapes import render  # noqa: E402
from pipeline import MiniDallePipeline  # noqa: E402

OPEN_COLOUR = [
    ("circle", "top left"),
    ("square", "center"),
    ("triangle", "bottom right"),
    ("circle", "right"),
]
# (the picture's shape, the new shape painted into an empty cell)
EDITS = [
    (
        ShapeAttributes("blue", "square", "top left", "small"),
        ShapeAttributes("red", "circle", "bottom right", "small"),
    ),
    (
        ShapeAttributes("green", "circle", "bottom", "small"),
        ShapeAttributes("yellow", "square", "top", "small"),
    ),
    (
        ShapeAttributes("purple", "triangle", "right", "small"),
        ShapeAttributes("orange", "circle", "left", "small"),
    ),
    (
        ShapeAttributes("red", "square", "bottom left", "small"),
        ShapeAttributes("blue", "triangle", "top right", "small"),
    ),
]
# (the picture's shape, another shape painted over it, in its own cell: a picture of the training kind)
REPLACEMENTS = [(old, ShapeAttributes(new.color, new.shape, old.position, "small")) for old, new in EDITS]
VARIATION_INPUTS = [
    ShapeAttributes(*combo)
    for combo in [
        ("red", "circle", "top left", "large"),
        ("blue", "square", "center", "large"),
        ("green", "triangle", "bottom right", "large"),
        ("yellow", "circle", "left", "small"),
    ]
]
STRENGTHS = (0.1, 0.3, 0.6)


def _caption_without_colour(shape: str, position: str) -> str:
    full = make_caption(ShapeAttributes("red", shape, position, "large"))
    return full.replace("red ", "")


def negative_prompt_figures(
    pipe: MiniDallePipeline, n: int, seed: int, negative_scale: float | None = None
) -> dict:
    captions = [_caption_without_colour(s, p) for s, p in OPEN_COLOUR]
    plain = pipe(captions, num_images_per_prompt=n, seed=seed, batch_size=n * len(captions))
    read = [read_attributes(im) for im in plain.images]
    rows = []
    negatives = []
    for i, (shape, position) in enumerate(OPEN_COLOUR):
        colours = Counter(a.color for a in read[i * n : (i + 1) * n] if a is not None)
        colour = colours.most_common(1)[0][0] if colours else "red"
        negatives.append(make_caption(ShapeAttributes(colour, shape, position, "large")))
        rows.append({"caption": captions[i], "negated_colour": colour, "negative_prompt": negatives[-1]})
    steered = pipe(
        captions,
        num_images_per_prompt=n,
        seed=seed,
        batch_size=n * len(captions),
        negative_prompt=negatives,
        negative_scale=negative_scale,
    )
    for name, output in (("without", plain), ("with", steered)):
        found = [read_attributes(im) for im in output.images]
        for i, row in enumerate(rows):
            mine = found[i * n : (i + 1) * n]
            shape, position = OPEN_COLOUR[i]
            row[f"negated_colour_pct_{name}"] = (
                100.0 * sum(a is not None and a.color == row["negated_colour"] for a in mine) / n
            )
            row[f"named_right_pct_{name}"] = (
                100.0
                * sum(
                    a is not None and (a.shape, a.position, a.size) == (shape, position, "large")
                    for a in mine
                )
                / n
            )
    summary = {
        key: float(np.mean([r[key] for r in rows]))
        for key in (
            "negated_colour_pct_without",
            "negated_colour_pct_with",
            "named_right_pct_without",
            "named_right_pct_with",
        )
    }
    return {"images_per_caption": n, "captions": rows, "mean": summary}


def negative_over_seeds(
    pipe: MiniDallePipeline, n: int, seeds: list[int], negative_scale: float | None
) -> dict:
    """``negative_prompt_figures`` for each seed, and their mean."""
    runs = [negative_prompt_figures(pipe, n, seed, negative_scale) for seed in seeds]
    mean = {key: float(np.mean([run["mean"][key] for run in runs])) for key in runs[0]["mean"]}
    return {"seeds": seeds, "negative_scale": negative_scale, "per_seed": runs, "mean": mean}


def _cell_box(position: str, resolution: int) -> tuple[int, int, int, int]:
    """The pixel box of a grid cell (the checker's split lines), snapped outwards to whole pixels."""
    row, col = divmod(POSITIONS.index(position), 3)
    edges = (0.0, *GRID_SPLITS, 1.0)
    return (
        int(edges[col] * resolution),
        int(edges[row] * resolution),
        int(np.ceil(edges[col + 1] * resolution)),
        int(np.ceil(edges[row + 1] * resolution)),
    )


def _outside(box, resolution: int, margin: int) -> np.ndarray:
    keep = np.ones((resolution, resolution), dtype=bool)
    x0, y0, x1, y1 = box
    keep[max(0, y0 - margin) : y1 + margin, max(0, x0 - margin) : x1 + margin] = False
    return keep  # (H, W)


def editing_figures(pipe: MiniDallePipeline, n: int, seed: int, edits) -> dict:
    resolution = pipe.vqvae.config.resolution
    margin = resolution // pipe.layout.grid_w  # one code cell
    rows = []
    for picture_attrs, new_attrs in edits:
        picture = render(picture_attrs, resolution)
        box = _cell_box(new_attrs.position, resolution)
        out = pipe.edit(
            picture, make_caption(new_attrs), box=box, num_images_per_prompt=n, seed=seed, batch_size=n
        )
        reconstruction = np.asarray(pipe.decode_codes(pipe.encode_image([picture]))[0], dtype=np.float32)
        source = np.asarray(picture, dtype=np.float32)
        outside = _outside(box, resolution, margin)
        edited = np.stack([np.asarray(im, dtype=np.float32) for im in out.images])  # (n, H, W, 3)
        only_box = []
        for im in out.images:
            canvas = Image.new("RGB", (resolution, resolution), BUILTIN.background)
            canvas.paste(im.crop(box), box[:2])
            only_box.append(canvas)
        scores = score_images(only_box, [new_attrs] * n)
        rows.append(
            {
                "picture": make_caption(picture_attrs),
                "prompt": make_caption(new_attrs),
                "box": box,
                "outside_change_vs_input": float(np.abs(edited - source)[:, outside].mean()),
                "outside_change_vs_reconstruction": float(np.abs(edited - reconstruction)[:, outside].mean()),
                "reconstruction_error_outside": float(np.abs(reconstruction - source)[outside].mean()),
                "inside_all_four_pct": scores["all_four_pct"],
                "inside_color_pct": scores["color_pct"],
                "inside_shape_pct": scores["shape_pct"],
            }
        )
    keys = [k for k in rows[0] if k.startswith(("outside", "reconstruction", "inside"))]
    return {
        "images_per_edit": n,
        "edits": rows,
        "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys},
    }


def variation_figures(pipe: MiniDallePipeline, n: int, seed: int) -> dict:
    resolution = pipe.vqvae.config.resolution
    inputs = [render(attrs, resolution) for attrs in VARIATION_INPUTS]
    reconstructions = pipe.decode_codes(pipe.encode_image(inputs))
    rows = []
    for strength in STRENGTHS:
        agree, diversity = [], []
        for picture, attrs in zip(inputs, VARIATION_INPUTS):
            out = pipe.variations(picture, n, strength=strength, seed=seed, batch_size=n)
            agree.append(score_images(out.images, [attrs] * n)["all_four_pct"])
            pixels = [np.asarray(im, dtype=np.float32) for im in out.images]
            diversity.append(np.mean([np.abs(a - b).mean() for a, b in itertools.combinations(pixels, 2)]))
        rows.append(
            {
                "strength": strength,
                "agreement_all_four_pct": float(np.mean(agree)),
                "diversity": float(np.mean(diversity)),
            }
        )
    reference = score_images(reconstructions, VARIATION_INPUTS)["all_four_pct"]
    return {
        "variations_per_input": n,
        "inputs": len(inputs),
        "reconstruction_all_four_pct": reference,
        "strengths": rows,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "outputs" / "pipeline_tiny"), help="pipeline folder")
    p.add_argument("--images", type=int, default=16, help="images per caption / edit / input (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--negative-scale", type=float, help="the contrast's weight (default: the pipeline's)")
    p.add_argument(
        "--negative-seeds", type=int, nargs="+", help="negative-prompt figures averaged over these seeds"
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "editing_figures.json"))
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    pipe = MiniDallePipeline.from_pretrained(args.model, device="cpu")
    result = {
        "model": args.model,
        "seed": args.seed,
        "negative_prompt": negative_over_seeds(
            pipe, args.images, args.negative_seeds or [args.seed], args.negative_scale
        ),
        "editing": {
            "empty_cell": editing_figures(pipe, args.images, args.seed, EDITS),
            "replace": editing_figures(pipe, args.images, args.seed, REPLACEMENTS),
        },
        "variations": variation_figures(pipe, args.images, args.seed),
    }
    neg, var = result["negative_prompt"]["mean"], result["variations"]
    print("| negative prompt | negated colour % | shape+position+size right % |")
    print("|---|---|---|")
    print(f"| without | {neg['negated_colour_pct_without']:.1f} | {neg['named_right_pct_without']:.1f} |")
    print(f"| with | {neg['negated_colour_pct_with']:.1f} | {neg['named_right_pct_with']:.1f} |")
    print()
    print(
        "| editing | outside change vs input | vs reconstruction | reconstruction error | inside all four % | colour % | shape % |"
    )
    print("|---|---|---|---|---|---|---|")
    for kind, figures in result["editing"].items():
        edit = figures["mean"]
        print(
            f"| {kind} ({len(figures['edits'])} edits) | {edit['outside_change_vs_input']:.2f} | "
            f"{edit['outside_change_vs_reconstruction']:.2f} | {edit['reconstruction_error_outside']:.2f} | "
            f"{edit['inside_all_four_pct']:.1f} | {edit['inside_color_pct']:.1f} | {edit['inside_shape_pct']:.1f} |"
        )
    print()
    print(
        f"| variations (reconstruction: {var['reconstruction_all_four_pct']:.0f}% all four) | agreement all four % | diversity |"
    )
    print("|---|---|---|")
    for row in var["strengths"]:
        print(
            f"| strength {row['strength']} | {row['agreement_all_four_pct']:.1f} | {row['diversity']:.2f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
