"""Checks of an image folder's ``metadata.jsonl`` before ``datasets`` reads it.

``datasets``' imagefolder loader drops lines that name a missing image without a word, and fails
inside pyarrow on a malformed line or a caption that is a number. Each of these is refused here with
the line number, so the user fixes the file rather than training on other data than they meant.
"""

from __future__ import annotations

import json
from pathlib import Path

from minidalle.errors import DataError

MAX_LISTED = 5  # problems named in a message; the rest are counted


def check_metadata(folder: Path, caption_column: str) -> None:
    """Every line a JSON object naming an existing image, with a string (or absent) caption."""
    metadata = folder / "metadata.jsonl"
    if not metadata.is_file():
        return  # datasets then reads images without captions; stage 2 refuses empty captions
    missing = []
    lines = metadata.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{metadata} line {number} is not valid JSON ({err.msg}).") from None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise DataError(f"{metadata} line {number} must be an object with a 'file_name' string.")
        caption = row.get(caption_column)
        if caption is not None and not isinstance(caption, str):
            raise DataError(
                f"{metadata} line {number}: the caption {caption!r} is a {type(caption).__name__}; "
                f'write captions as strings ("{caption_column}": "{caption}").'
            )
        if not (folder / row["file_name"]).is_file():
            missing.append(f"line {number}: {row['file_name']}")
    if missing:
        raise DataError(
            f"{metadata}: {len(missing)} line(s) name an image that does not exist "
            f"({'; '.join(missing[:MAX_LISTED])}). Remove those lines or add the images."
        )


def require_captions(texts: list, split: str) -> None:
    """Refuse a split whose captions are all missing or empty: the prior would ignore the text."""
    empty = sum(1 for text in texts if not (text or "").strip())
    if empty == len(texts):
        raise DataError(
            f"All {len(texts)} captions of split {split!r} are missing or empty: a text-to-image prior "
            "needs captions. Check data.caption_column and the captions in your data."
        )
