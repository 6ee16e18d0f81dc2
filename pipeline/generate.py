"""Generate images from the command line: each image as a PNG, plus a captioned grid.

    python -m pipeline.generate --model outputs/pipeline_tiny --prompt "a red circle on blue" -n 8 \\
        --out grid.png [--seed 0] [--prompts-file prompts.txt] [--guidance-scale 3 --top-k 64 ...]

Writes ``grid.png``, the single images to ``grid_images/`` (``p{prompt}_{image}.png``) and the settings,
prompts, seed and the bits of each image under the prior (with and without its caption) to
``grid.json``, so any image can be made again. ``--negative-prompt "a red circle"`` steers away from
a caption. ``--image photo.png`` with ``--keep-rows 3`` completes a picture, with ``--box 0 0 16 16``
repaints that region (pixels of the image) under the prompt, with ``--strength 0.3`` makes variations
(an empty ``--prompt ""`` for caption-free ones). ``--rerank-clip DIR --num-candidates 16`` keeps the
best ``-n`` of 16 by CLIP. ``--model`` is a folder or a Hub repo id (``user/name``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from pathlib import Path

from transformers.utils import logging as hf_logging

from minidalle.arguments import check_writable_file
from minidalle.errors import ArgumentError, OneLineParser, run_main
from minidalle.images import captioned_grid
from minidalle.pixels import read_image_file
from reranker.folder import check_clip_folder
from stage2_transformer.sampling import DEFAULT_NEGATIVE_SCALE

from .pipeline import MiniDallePipeline

SAMPLING = ("temperature", "top_k", "top_p", "guidance_scale")  # flags left out: the pipeline's defaults
IMAGE_NAME = re.compile(r"p\d{3,}_\d{2,}\.png")  # the single images' names, p{prompt}_{image}.png
MAX_PROMPT_CHARS = 2000  # longer lines are almost surely a wrong file; the model reads a few dozen tokens


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", required=True, help="pipeline folder (python -m pipeline.assemble) or Hub repo id"
    )
    p.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for several")
    p.add_argument("--prompts-file", help="a text file with one prompt per line (blank lines skipped)")
    p.add_argument("-n", "--num-images", type=int, default=4, help="images per prompt (default 4)")
    p.add_argument("--out", default="grid.png", help="the grid image to write (default grid.png)")
    p.add_argument("--seed", type=int, help="default: random (printed and saved, to reproduce)")
    p.add_argument("--temperature", type=float, help="default: the pipeline's config")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--batch-size", type=int, help="images per forward pass")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--dtype", help="fp32, bf16 or fp16 (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--image", help="complete this image: keep its first --keep-rows rows of codes")
    p.add_argument("--keep-rows", type=int)
    p.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), help="edit this region")
    p.add_argument("--strength", type=float, help="variations: the share of the image's codes resampled")
    p.add_argument(
        "--negative-prompt", action="append", help="steer away from this caption; once, or once per prompt"
    )
    p.add_argument(
        "--negative-scale",
        type=float,
        help=f"weight of the contrast against --negative-prompt (default {DEFAULT_NEGATIVE_SCALE:g}; see the "
        "README for what more or less does)",
    )
    p.add_argument("--rerank-clip", help="a local CLIPModel folder: keep the best -n of --num-candidates")
    p.add_argument("--num-candidates", type=int)
    p.add_argument("--columns", type=int, help="grid columns (default: images per prompt, at most 8)")
    p.add_argument(
        "--allow-unverified", action="store_true", help="load a pipeline without a stage-1 fingerprint"
    )
    return p.parse_args(argv)


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts-file {str(path)!r} does not exist.")
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ArgumentError("give at least one --prompt or a --prompts-file with one prompt per line.")
    for i, prompt in enumerate(prompts):
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ArgumentError(f"prompt {i} has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}.")
    return prompts


def main(argv: list[str] | None = None) -> int:
    """The command line; a user mistake is one line on stderr and exit code 2 (``--debug``: traceback)."""
    return run_main(lambda args: _generate(parse_args(args)), argv)


def _generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    prompts = read_prompts(args)
    out = check_writable_file("--out", args.out if Path(args.out).suffix else f"{args.out}.png")
    if args.rerank_clip:
        check_clip_folder(args.rerank_clip, "--rerank-clip")  # before the pipeline loads
    hf_logging.disable_progress_bar()  # the "Loading weights" bar is noise here
    pipe = MiniDallePipeline.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, allow_unverified=args.allow_unverified
    )
    extra = {}
    if args.image is not None:
        extra["image"] = read_image_file(args.image, "--image")
        extra.update(keep_rows=args.keep_rows, box=args.box, strength=args.strength)
    elif args.keep_rows is not None or args.box is not None or args.strength is not None:
        raise ArgumentError(
            "--keep-rows, --box and --strength need --image, the picture to complete, edit or vary."
        )
    if args.negative_prompt:
        extra["negative_prompt"] = (
            args.negative_prompt[0] if len(args.negative_prompt) == 1 else args.negative_prompt
        )
    if args.negative_scale is not None:
        extra["negative_scale"] = args.negative_scale
    if args.rerank_clip:
        from .rerank import ClipReranker

        extra["rerank_with"] = ClipReranker(args.rerank_clip, device=pipe.device)
        extra["num_candidates"] = args.num_candidates
    elif args.num_candidates is not None:
        raise ArgumentError("--num-candidates needs --rerank-clip, the CLIP model that picks the best.")

    bar = tqdm(  # delay: a call refused by the pipeline's checks prints no bar before its error line
        total=1.0, unit="", desc="sampling rows", bar_format="{l_bar}{bar}| {elapsed}<{remaining}", delay=0.1
    )

    def on_row(event) -> None:
        bar.n = round(event.progress, 4)
        bar.set_postfix_str(f"row {event.row + 1}/{event.num_rows}", refresh=False)
        bar.refresh()

    with warnings.catch_warnings():
        warnings.simplefilter("always")  # an over-long prompt warns each time
        settings = {name: getattr(args, name) for name in (*SAMPLING, "seed", "batch_size")}
        output = pipe(prompts, num_images_per_prompt=args.num_images, on_row=on_row, **settings, **extra)
    bar.n = 1.0
    bar.close()

    image_dir = out.with_name(out.stem + "_images")
    image_dir.mkdir(parents=True, exist_ok=True)
    for stale in image_dir.iterdir():  # images an earlier run with this --out wrote; nothing else
        if IMAGE_NAME.fullmatch(stale.name):
            stale.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    per_prompt = len(output.images) // len(prompts)
    paths = []
    for k, image in enumerate(output.images):
        path = image_dir / f"p{k // per_prompt:03d}_{k % per_prompt:02d}.png"
        image.save(path)
        paths.append(str(path))
    columns = args.columns or min(per_prompt, 8)
    captioned_grid(output.images, output.prompts, columns=max(1, columns)).save(out)
    record = {
        "model": str(args.model),
        "prompts": prompts,
        "seed": output.seed,
        "num_images_per_prompt": args.num_images,
        "settings": {name: getattr(args, name) for name in SAMPLING},
        "defaults": {name: getattr(pipe.config, name) for name in SAMPLING},
        "images": paths,
        "scores": output.scores,
        "negative_prompt": args.negative_prompt,
        "negative_scale": args.negative_scale if args.negative_prompt else None,
        "bits_with_caption": output.bits_with_caption,
        "bits_without_caption": output.bits_without_caption,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    rows = math.ceil(len(output.images) / max(1, columns))
    print(
        f"Wrote {out} ({rows}x{columns} grid), {len(paths)} images in {image_dir}/ and {out.with_suffix('.json')}"
    )
    print(f"seed: {output.seed} (pass --seed {output.seed} to make the same images again)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
