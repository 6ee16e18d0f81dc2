"""Which stage-1 model a stage-2 run was trained on: ``<run>/stage1.json``.

A transformer has learned the codes of one VQ-VAE and is meaningless with any other, so the training
script records that model (its path and its weights' fingerprint) and evaluation, resumption and
``pipeline.assemble`` read it back. The path is stored as given and as an absolute path: the one given
(often relative, like ``outputs/stage1_tiny/vqvae``) keeps working when the project folder moves, the
absolute one when a command runs from another working directory.
"""

from __future__ import annotations

import json
from pathlib import Path

STAGE1_RECORD = "stage1.json"


def write_stage1_record(
    run_dir: str | Path, vqvae_dir: str | Path, fingerprint: str, codebook_size: int
) -> dict:
    record = {
        "path": str(vqvae_dir),
        "absolute_path": str(Path(vqvae_dir).resolve()),
        "fingerprint": fingerprint,
        "codebook_size": codebook_size,
    }
    (Path(run_dir) / STAGE1_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def read_stage1_record(run_dir: str | Path, search_parent: bool = False) -> dict | None:
    """The run's record, or None when it has none. ``search_parent``: also look in the parent folder (for
    a folder inside a run, like one of its exports)."""
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir.parent) if search_parent else (run_dir,):
        path = folder / STAGE1_RECORD
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return None


def recorded_stage1_path(record: dict) -> str | None:
    """The recorded stage-1 folder as it can be reached from here: as given, else absolute; None if neither."""
    for candidate in (record.get("path"), record.get("absolute_path")):
        if candidate and Path(candidate).is_dir():
            return candidate
    return None


def describe(record: dict) -> str:
    """The recorded path(s), for error messages."""
    given, absolute = record.get("path"), record.get("absolute_path")
    return repr(given) if not absolute or absolute == given else f"{given!r} ({absolute})"
