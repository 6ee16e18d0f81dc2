"""Tiny fake npm emoji packs (the layout of emoji-datasource-*), built locally for the tests: no network."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from minidalle.emoji_data import STYLES

NAMES = ["GRINNING FACE", "RED APPLE", "ROCKET", "SUN", "CAT FACE", "HOUSE", "STAR", "KEY", "BELL", "TREE"]
# The style's colour, painted in the emoji's opaque half; the other half is fully transparent.
STYLE_COLOURS = {"twemoji": (200, 30, 30), "noto": (30, 30, 200)}


def rgba_png(colour: tuple[int, int, int], index: int) -> bytes:
    pixels = np.zeros((64, 64, 4), dtype=np.uint8)  # transparent black
    pixels[:, :32] = (*colour, 255)  # left half opaque
    pixels[0, 0] = (index, index, index, 255)  # a mark that makes each emoji's image unique
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def fake_pack(folder: Path, style: str) -> Path:
    """A tarball laid out like an emoji-datasource pack: package/emoji.json + package/img/<set>/64/*.png."""
    package, image_set, _ = STYLES[style]
    entries = [
        {
            "name": name,
            "short_name": name.lower(),
            "unified": f"1F{i:03X}",
            "image": f"1f{i:03x}.png",
            "category": "Objects",
        }
        for i, name in enumerate(NAMES)
    ]
    entries.append(
        {
            "name": None,
            "short_name": "skin-tone-2",
            "unified": "1F3FB",
            "image": "1f3fb.png",
            "category": "Component",
        }
    )
    files = {"package/emoji.json": json.dumps(entries).encode(), "package/LICENSE": b"MIT (fake)"}
    for i, entry in enumerate(entries):
        files[f"package/img/{image_set}/64/{entry['image']}"] = rgba_png(STYLE_COLOURS[style], i)
    tarball = folder / f"{package}-16.0.0.tgz"
    with tarfile.open(tarball, "w:gz") as pack:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            pack.addfile(info, io.BytesIO(content))
    return tarball


def fake_packs(folder: Path) -> dict[str, Path]:
    """Both styles' fake packs in ``folder``: style -> tarball, as ``build_emoji_folder`` takes them."""
    folder.mkdir(parents=True, exist_ok=True)
    return {style: fake_pack(folder, style) for style in STYLES}
