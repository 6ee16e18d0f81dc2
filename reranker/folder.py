"""The re-ranker folder on disk: what ``pipeline.rerank.ClipReranker`` needs to find in it.

Checked without importing transformers, so that a command (or a GPU benchmark, before it installs its
wheels) refuses a wrong folder in its first second rather than after hours of training or sampling.
"""

from __future__ import annotations

from pathlib import Path

from minidalle.errors import ModelFolderError


def check_clip_folder(path: str | Path, flag: str = "CLIP folder") -> Path:
    """``path`` as a folder holding a saved ``CLIPModel``, config.json and safetensors weights.

    Else a ``ModelFolderError`` that names ``flag``, the folder and what to pass instead.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise ModelFolderError(
            f"{flag} {str(folder)!r} must hold config.json and *.safetensors weights: pass a re-ranker's "
            "<run>/clip from reranker/train.py, or a CLIPModel saved with save_pretrained together with "
            "its tokenizer and image processor."
        )
    return folder
