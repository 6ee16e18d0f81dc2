"""Real captioned images: every emoji in two open styles, as an ``imagefolder`` both stages read.

    python -m minidalle.emoji_data --out data/emoji32 --resolution 32

Fetches the npm packs ``emoji-datasource-twitter`` (Twemoji, graphics CC-BY 4.0) and
``emoji-datasource-google`` (Noto, Apache-2.0) with ``npm pack`` into a cache folder, composites each
emoji's 64 px image on white at the requested resolution and writes ``train/`` and ``validation/``
folders, each with a ``metadata.jsonl`` (``file_name``, ``text``, ``emoji``, ``style``, ``unified``,
``category``), plus ``ATTRIBUTION.md`` and the packs' licence texts.

The split holds out (emoji, style) pairs, not emoji: a held-out emoji is in training in the other
style, so the model has to draw a known thing in a known style in a pairing it has never seen.
Captions name the emoji and its style in one of several phrasings. Everything is seeded: the same
packs, resolution and seed give the same files.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

PACK_VERSION = "16.0.0"
# Style as captions name it -> (npm pack, image set inside the pack, licence of its images).
STYLES = {
    "twemoji": ("emoji-datasource-twitter", "twitter", "CC-BY 4.0, https://github.com/jdecked/twemoji"),
    "noto": ("emoji-datasource-google", "google", "Apache-2.0, https://github.com/googlefonts/noto-emoji"),
}
SKIPPED_CATEGORIES = {"Component"}  # skin-tone swatches and hair parts, not pictures of a thing
CAPTION_TEMPLATES = (
    "{name}, {style} style",
    "{name} emoji in the {style} style",
    "{style} emoji: {name}",
    "{name} drawn in {style} style",
    "emoji of {name}, {style}",
    "{style} style {name}",
)


@dataclass
class EmojiImage:
    unified: str
    name: str
    category: str
    style: str
    png: bytes  # the pack's 64 px RGBA image


def fetch_pack(package: str, cache_dir: Path) -> Path:
    """The pack's tarball in ``cache_dir``, downloaded with ``npm pack`` the first time."""
    tarball = cache_dir / f"{package}-{PACK_VERSION}.tgz"
    if tarball.is_file():
        return tarball
    if shutil.which("npm") is None:
        raise RuntimeError(
            "npm is not installed: install it (apt-get install npm) or run scripts/get_emoji.sh."
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "npm",
            "pack",
            f"{package}@{PACK_VERSION}",
            "--pack-destination",
            str(cache_dir),
            "--loglevel=error",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return tarball


def read_pack(tarball: Path, image_set: str, style: str) -> tuple[list[EmojiImage], bytes]:
    """The pack's emoji (base emoji, no skin-tone variants) with their images, and its LICENSE text."""
    with tarfile.open(tarball) as pack:
        members = set(pack.getnames())
        if "package/emoji.json" not in members:
            raise ValueError(
                f"{tarball} is not an emoji-datasource pack (no package/emoji.json): delete it and rerun."
            )
        entries = json.load(pack.extractfile("package/emoji.json"))
        licence = pack.extractfile("package/LICENSE").read()
        emoji = []
        for entry in entries:
            path = f"package/img/{image_set}/64/{entry['image']}"
            if entry["category"] in SKIPPED_CATEGORIES or path not in members:
                continue
            name = (entry.get("name") or entry["short_name"].replace("_", " ")).lower()
            png = pack.extractfile(path).read()
            emoji.append(EmojiImage(entry["unified"], name, entry["category"], style, png))
    return emoji, licence


def on_white(png: bytes, resolution: int) -> Image.Image:
    """The RGBA image composited on white (alpha honoured), resized to ``resolution`` square."""
    image = Image.open(io.BytesIO(png)).convert("RGBA")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    flat = Image.alpha_composite(white, image).convert("RGB")
    if flat.size != (resolution, resolution):
        flat = flat.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return flat


def held_out_pairs(unified: list[str], styles: list[str], fraction: float, seed: int) -> set[tuple[str, str]]:
    """About ``fraction`` of all (emoji, style) pairs, at most one style per emoji, styles balanced."""
    count = round(fraction * len(unified) * len(styles))
    if count > len(unified):
        raise ValueError(f"Cannot hold out {fraction:.0%} of pairs with one style per emoji held out.")
    chosen = random.Random(seed).sample(sorted(unified), count)
    return {(code, styles[i % len(styles)]) for i, code in enumerate(chosen)}


def caption(name: str, style: str, rng: random.Random) -> str:
    return rng.choice(CAPTION_TEMPLATES).format(name=name, style=style)


def build_emoji_folder(
    packs: dict[str, Path], out: Path, resolution: int, held_out_fraction: float = 0.1, seed: int = 0
) -> dict:
    """Write the imagefolder from pack tarballs (style -> tarball). Returns the counts it wrote."""
    by_style, licences = {}, {}
    for style, tarball in packs.items():
        emoji, licences[style] = read_pack(tarball, STYLES[style][1], style)
        by_style[style] = {e.unified: e for e in emoji}
    shared = sorted(set.intersection(*(set(found) for found in by_style.values())))
    if not shared:
        raise ValueError(f"The packs {sorted(packs)} have no emoji in common: nothing to build.")
    held_out = held_out_pairs(shared, sorted(by_style), held_out_fraction, seed)
    if out.exists():
        shutil.rmtree(out)  # a rebuild never mixes files of two settings
    rows: dict[str, list[dict]] = {"train": [], "validation": []}
    rng = random.Random(seed + 1)
    for unified in shared:
        for style in sorted(by_style):
            emoji = by_style[style][unified]
            split = "validation" if (unified, style) in held_out else "train"
            file_name = f"{unified.lower()}_{style}.png"
            (out / split).mkdir(parents=True, exist_ok=True)
            on_white(emoji.png, resolution).save(out / split / file_name)
            rows[split].append(
                {
                    "file_name": file_name,
                    "text": caption(emoji.name, style, rng),
                    "emoji": emoji.name,
                    "style": style,
                    "unified": unified,
                    "category": emoji.category,
                }
            )
    for split, split_rows in rows.items():
        random.Random(seed + 2).shuffle(split_rows)  # so that the first N held-out rows span all categories
        with open(out / split / "metadata.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in split_rows)
    write_attribution(out, licences)
    counts = {"emoji": len(shared), "train": len(rows["train"]), "validation": len(rows["validation"])}
    (out / "counts.json").write_text(json.dumps(counts, indent=1) + "\n")
    return counts


def write_attribution(out: Path, licences: dict[str, bytes]) -> None:
    lines = ["# Attribution", "", f"Built from the npm packs at version {PACK_VERSION}:", ""]
    for style in sorted(licences):
        package, _, licence = STYLES[style]
        lines.append(f"- {style}: `{package}`; the emoji images are under {licence}.")
        (out / f"LICENSE-{package}.txt").write_bytes(licences[style])
    lines += [
        "",
        "Images were composited on white and resized; captions were written from the emoji names.",
        "The packs' LICENSE files (MIT, emoji-data by Cal Henderson) cover the packs' code and metadata.",
    ]
    (out / "ATTRIBUTION.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="the imagefolder to write (replaced if it exists)")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--cache_dir", default="data/npm_cache", help="where the pack tarballs are kept")
    parser.add_argument("--held_out_fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    packs = {style: fetch_pack(package, Path(args.cache_dir)) for style, (package, _, _) in STYLES.items()}
    counts = build_emoji_folder(packs, Path(args.out), args.resolution, args.held_out_fraction, args.seed)
    print(
        f"{args.out}: {counts['emoji']} emoji x {len(packs)} styles, {counts['train']} train, "
        f"{counts['validation']} held out"
    )
    return counts


if __name__ == "__main__":
    main()
