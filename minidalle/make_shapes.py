"""Write a set of captioned shapes as an imagefolder, laid out like a user's own data.

    python -m minidalle.make_shapes --variant sibling_a --out data/sibling_a
    accelerate launch stage1_vqvae/train.py --config configs/stage1_tiny.yaml \\
        --data.source imagefolder --data.path data/sibling_a

``out/train/`` (the set's training combinations) and ``out/validation/`` (its held-out ones) each
hold PNGs and a ``metadata.jsonl`` with ``file_name``, ``text`` and the attribute columns ``color``,
``shape``, ``position``, ``size``. ``out/shape_set.json`` records the set (palette, sizes, held-out
split, ...), so that ``scripts/demo_heldout.py --data out`` reads colours and sizes the set's way.
Any field of the set can be overridden (``--train_size 5000``, ``--heldout_seed 3``, ``--phrasings few``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from minidalle.errors import ArgumentError, DataError, OneLineParser, OutputFolderError, run_main
from minidalle.shape_attributes import heldout_combinations
from minidalle.shape_sets import BUILTIN, SHAPE_SETS, ShapeSet, shape_set_named
from minidalle.shapes import generate_examples, write_imagefolder

SHAPE_SET_FILE = "shape_set.json"
SPLITS = ("train", "validation")
_OVERRIDABLE = {
    f.name: {"int": int, "float": float, "str": str}.get(f.type) for f in dataclasses.fields(ShapeSet)
}


def export_shape_set(shape_set: ShapeSet, out: str | Path, resolution: int = 32, seed: int = 0) -> dict:
    """Write ``shape_set`` (``train_size`` + ``eval_size`` images) as an imagefolder; returns the counts.

    A folder holding anything but an earlier export is refused; an earlier export is replaced.
    """
    out = Path(out)
    if resolution < 24:
        raise ArgumentError(
            f"--resolution must be >= 24 so small shapes stay recognisable, got {resolution}."
        )
    heldout_combinations(shape_set)  # a split that cannot be made fails before anything is replaced
    if out.exists() and any(out.iterdir()) and not (out / SHAPE_SET_FILE).is_file():
        raise OutputFolderError(
            f"{out} holds files that make_shapes did not write; choose an empty or new --out folder."
        )
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)  # a rebuild never mixes files of two settings
    sizes = {"train": shape_set.train_size, "validation": shape_set.eval_size}
    counts = {
        split: write_imagefolder(
            generate_examples(split, sizes[split], resolution, seed, shape_set), out / split
        )
        for split in SPLITS
    }
    record = {"shape_set": dataclasses.asdict(shape_set), "resolution": resolution, "seed": seed, **counts}
    (out / SHAPE_SET_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return counts


def load_shape_set(folder: str | Path) -> ShapeSet | None:
    """The set an exported folder was made from (its ``shape_set.json``); None for a folder without one."""
    path = Path(folder) / SHAPE_SET_FILE
    if not path.is_file():
        return None
    try:
        fields = json.loads(path.read_text())["shape_set"]
        fields["colors"] = tuple((name, tuple(rgb)) for name, rgb in fields["colors"])
        fields["background"], fields["size_extents"] = (
            tuple(fields["background"]),
            tuple(fields["size_extents"]),
        )
        return ShapeSet(**fields)
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"{path} is not a shape-set record ({err}); make the folder again with make_shapes."
        ) from None


def shape_set_of_data(source: str, path: str | None) -> ShapeSet | None:
    """The shape set that data reads as: the built-in one, an exported folder's, or None (other data)."""
    if source == "builtin":
        return BUILTIN
    return load_shape_set(path) if source == "imagefolder" and path else None


def main(argv: list[str] | None = None) -> dict:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="builtin", choices=sorted(SHAPE_SETS), help="the named set")
    parser.add_argument("--out", required=True, help="the imagefolder to write")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="the images' jitter, captions and order")
    for name, kind in _OVERRIDABLE.items():
        if kind is not None and name != "name":
            parser.add_argument(f"--{name}", type=kind, help=f"override the set's {name}")
    args = parser.parse_args(argv)
    overrides = {name: getattr(args, name) for name in _OVERRIDABLE if getattr(args, name, None) is not None}
    shape_set = dataclasses.replace(shape_set_named(args.variant), **overrides)
    counts = export_shape_set(shape_set, args.out, args.resolution, args.seed)
    print(
        f"{args.out}: set {shape_set.name!r}, {counts['train']} training and {counts['validation']} held-out images"
    )
    return counts


if __name__ == "__main__":
    sys.exit(run_main(main))
