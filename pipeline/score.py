"""Score images against captions: the bits of each image's codes under the prior, with the caption and
without it (the empty caption). Their difference, the bits the caption saves, is a cheap check of
whether a picture matches a caption.

    python -m pipeline.score --model outputs/pipeline_tiny --caption "a small red circle at the top left" \\
        a.png b.png [--json scores.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from minidalle.arguments import check_writable_file
from minidalle.errors import OneLineParser, run_main
from minidalle.pixels import read_image_file

from .pipeline import MiniDallePipeline


def main(argv: list[str] | None = None) -> int:
    return run_main(_score, argv)


def _score(argv: list[str] | None) -> int:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="pipeline folder or Hub repo id")
    p.add_argument(
        "--caption", action="append", required=True, help="one caption for all images, or one per image"
    )
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--json", help="also write the scores to this JSON file")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    args = p.parse_args(argv)
    if args.json:
        check_writable_file("--json", args.json)
    pipe = MiniDallePipeline.from_pretrained(args.model, device=args.device)
    images = [read_image_file(path, "image") for path in args.images]
    captions = args.caption[0] if len(args.caption) == 1 else args.caption
    bits = pipe.score(images, captions)
    captions = [captions] * len(images) if isinstance(captions, str) else captions
    rows = [
        {
            "image": path,
            "caption": c,
            "bits_with_caption": w,
            "bits_without_caption": u,
            "caption_bits": u - w,
        }
        for path, c, w, u in zip(args.images, captions, bits.with_caption, bits.without_caption)
    ]
    for row in rows:
        print(
            f"{row['image']}: {row['bits_with_caption']:.1f} bits with its caption, "
            f"{row['bits_without_caption']:.1f} without ({row['caption_bits']:+.1f} explained by the caption)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
