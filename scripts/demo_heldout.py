"""Sample held-out captions with a trained pipeline, write captioned grids, print the checker's scores (% of images).

    python scripts/demo_heldout.py --model outputs/pipeline_tiny --out outputs/heldout
    python scripts/demo_heldout.py --model outputs/pipeline_a --data data/sibling_a --out outputs/heldout_a

The captions describe attribute combinations (colour, shape, position, size) that never occur in
the training split: the built-in set's, or, with ``--data``, the held-out split of an imagefolder
whose metadata.jsonl has the columns color, shape, position and size (``python -m
minidalle.make_shapes`` writes such folders). The checker reads the four attributes back from each
image's pixels, with the set's palette and sizes (``--variant``, else the folder's shape_set.json,
else the built-in set's). It also scores the held-out images themselves ("ground_truth"): the
ceiling of the check, 100% when the checker reads the set right.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from minidalle import data as data_lib
from minidalle.checker import score_images
from minidalle.errors import DataError, run_main
from minidalle.images import captioned_grid
from minidalle.make_shapes import load_shape_set
from minidalle.pixels import decode_image, to_rgb
from minidalle.shape_attributes import ATTRIBUTE_NAMES, ShapeAttributes
from minidalle.shape_sets import BUILTIN, SHAPE_SETS, ShapeSet, shape_set_named
from minidalle.shapes import generate_examples
from pipeline import MiniDallePipeline


def heldout_of_folder(folder: str, shape_set: ShapeSet, num_captions: int) -> tuple[list[dict], list]:
    """The first ``num_captions`` held-out rows (caption + attributes) of an imagefolder, and their images."""
    _, heldout = data_lib.load_train_eval(
        data_lib.DataConfig(source="imagefolder", path=folder), num_captions
    )
    missing = [name for name in ATTRIBUTE_NAMES if name not in heldout.column_names]
    if missing:
        raise DataError(
            f"{folder}: the held-out metadata.jsonl has no column {missing}; the checker needs color, shape, "
            "position and size for each image (python -m minidalle.make_shapes writes them)."
        )
    rows = [
        {n: row[n] for n in ("text", *ATTRIBUTE_NAMES)}
        for row in heldout.select(range(min(num_captions, len(heldout))))
    ]
    try:
        attributes = [ShapeAttributes(**{n: row[n] for n in ATTRIBUTE_NAMES}) for row in rows]
    except ValueError as err:
        raise DataError(f"{folder}: {err}") from None
    unknown = sorted({a.color for a in attributes} - set(shape_set.palette))
    if unknown:
        raise DataError(
            f"{folder}: colours {unknown} are not in the palette of shape set {shape_set.name!r}; "
            f"pass --variant with the set the folder was made from (one of {sorted(SHAPE_SETS)})."
        )
    images = [to_rgb(decode_image(value)) for value in heldout.select(range(len(rows)))["image"]]
    return rows, images


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="outputs/pipeline_tiny", help="an assembled pipeline folder")
    parser.add_argument("--out", default="outputs/heldout", help="folder for the grid and scores")
    parser.add_argument("--num-captions", type=int, default=128, help="held-out captions to sample")
    parser.add_argument("--guidance-scales", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", help="an imagefolder with attribute columns: score its held-out captions")
    parser.add_argument(
        "--variant",
        choices=sorted(SHAPE_SETS),
        help="the shape set: its held-out captions, or the palette that reads --data",
    )
    parser.add_argument("--dtype", help="the transformer's precision: fp32 or bf16 (default: the pipeline's)")
    parser.add_argument("--temperature", type=float, help="default: the pipeline's")
    parser.add_argument("--top-k", type=int, help="default: the pipeline's")
    parser.add_argument(
        "--guidance-plausibility",
        type=float,
        help="the cut under guidance (0: none); default: the pipeline's",
    )
    args = parser.parse_args(argv)

    shape_set = shape_set_named(args.variant) if args.variant else None
    if args.data:  # data mistakes fail before the model is loaded
        shape_set = shape_set or load_shape_set(args.data) or BUILTIN
        targets, truths = heldout_of_folder(args.data, shape_set, args.num_captions)
    pipe = MiniDallePipeline.from_pretrained(args.model, dtype=args.dtype)
    if args.guidance_plausibility is not None:
        pipe.config = dataclasses.replace(pipe.config, guidance_plausibility=args.guidance_plausibility)
    sampling = {
        "temperature": pipe.config.temperature if args.temperature is None else args.temperature,
        "top_k": pipe.config.top_k if args.top_k is None else args.top_k,
    }
    if not args.data:
        shape_set = shape_set or BUILTIN
        resolution = pipe.vqvae.config.resolution
        examples = list(generate_examples("validation", args.num_captions, resolution, 99, shape_set))
        targets = [{name: ex[name] for name in ("text", *ATTRIBUTE_NAMES)} for ex in examples]
        truths = [ex["image"] for ex in examples]
    captions = [row["text"] for row in targets]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ground_truth = score_images(truths, targets, shape_set)
    results = {
        "model": args.model,
        "data": args.data,
        "shape_set": shape_set.name,
        "num_captions": len(captions),
        "sampling": {**sampling, "guidance_plausibility": pipe.config.guidance_plausibility},
        "ground_truth": ground_truth,
        "scores": {},
    }
    print(
        f"the held-out images themselves: all four attributes read right in {ground_truth['all_four_pct']:.1f}%"
    )
    for scale in args.guidance_scales:
        start = time.perf_counter()
        output = pipe(captions, guidance_scale=scale, seed=args.seed, batch_size=32, **sampling)
        elapsed = time.perf_counter() - start
        scores = score_images(output.images, targets, shape_set)
        results["scores"][f"guidance_{scale:g}"] = {**scores, "seconds": elapsed}
        grid = captioned_grid(output.images[:32], captions[:32], columns=8)
        grid.save(out / f"heldout_guidance_{scale:g}.png")
        print(
            f"guidance {scale:g}: all four attributes right in {scores['all_four_pct']:.1f}% of "
            f"{len(captions)} held-out captions (colour {scores['color_pct']:.1f}%, shape "
            f"{scores['shape_pct']:.1f}%, position {scores['position_pct']:.1f}%, size "
            f"{scores['size_pct']:.1f}%), {len(captions) / elapsed:.1f} images/s"
        )
    (out / "heldout_scores.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote the grids {out}/heldout_guidance_*.png and the scores {out / 'heldout_scores.json'}")
    return results


if __name__ == "__main__":
    sys.exit(run_main(main))
