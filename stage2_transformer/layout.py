"""The stage-2 sequence layout: one vocabulary and one fixed-length sequence per (caption, image) pair.

    position:  0 ........ T-1 | T   | T+1 ......... T+N
    token:     caption (PAD-   | BOI | image codes, raster order
               padded to T)   |     | (code + image_offset)

One vocabulary covers all of it::

    [0, text_vocab_size)                      text tokens (PAD included)
    [image_offset, image_offset + K)          image codes, image_offset = text_vocab_size
    boi_id = text_vocab_size + K              begin-of-image
    vocab_size = boi_id + 1

The layout is saved beside the model (``sequence_layout.json``) so that sampling needs nothing else.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from minidalle.config import load_json_object
from minidalle.errors import ModelFolderError

LAYOUT_FILE = "sequence_layout.json"

_DERIVED = ("image_offset", "boi_id", "vocab_size", "num_image_tokens", "seq_len")


@dataclass(frozen=True)
class SequenceLayout:
    text_len: int  # T: caption tokens per sequence (padded / truncated to this)
    text_vocab_size: int  # size of the caption tokenizer's vocabulary (len(tokenizer))
    codebook_size: int  # K: number of VQ-VAE codes
    grid_h: int  # h: rows of image codes
    grid_w: int  # w: columns of image codes
    pad_id: int  # the caption tokenizer's pad id (a text token)

    def __post_init__(self):
        for name in ("text_len", "text_vocab_size", "codebook_size", "grid_h", "grid_w", "pad_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"SequenceLayout.{name} must be an integer, got {value!r}.")
        for name in ("text_len", "text_vocab_size", "codebook_size", "grid_h", "grid_w"):
            if getattr(self, name) < 1:
                raise ValueError(f"SequenceLayout.{name} must be positive, got {getattr(self, name)}.")
        if not 0 <= self.pad_id < self.text_vocab_size:
            raise ValueError(
                f"SequenceLayout.pad_id={self.pad_id} must be a text token id in [0, {self.text_vocab_size})."
            )

    # ----------------------------------------------------------------------------------------------
    # derived sizes

    @property
    def image_offset(self) -> int:
        return self.text_vocab_size

    @property
    def boi_id(self) -> int:
        return self.text_vocab_size + self.codebook_size

    @property
    def vocab_size(self) -> int:
        return self.boi_id + 1

    @property
    def num_image_tokens(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def seq_len(self) -> int:
        return self.text_len + 1 + self.num_image_tokens

    @property
    def image_slice(self) -> slice:
        """The image-code columns of the full-vocabulary logits."""
        return slice(self.image_offset, self.image_offset + self.codebook_size)

    # ----------------------------------------------------------------------------------------------
    # sequences

    def build(self, text_ids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """(B, T) caption ids + (B, h, w) or (B, h*w) codes -> (B, seq_len) token ids."""
        if text_ids.dim() != 2 or text_ids.shape[1] != self.text_len:
            raise ValueError(f"text_ids must have shape (B, {self.text_len}), got {tuple(text_ids.shape)}.")
        batch = text_ids.shape[0]
        if codes.dim() == 3:
            if codes.shape[1:] != (self.grid_h, self.grid_w):
                raise ValueError(
                    f"codes must have shape (B, {self.grid_h}, {self.grid_w}), got {tuple(codes.shape)}."
                )
            codes = codes.reshape(codes.shape[0], -1)  # (B, N)
        elif codes.dim() != 2 or codes.shape[1] != self.num_image_tokens:
            raise ValueError(
                f"codes must have shape (B, {self.grid_h}, {self.grid_w}) or (B, {self.num_image_tokens}), "
                f"got {tuple(codes.shape)}."
            )
        if codes.shape[0] != batch:
            raise ValueError(f"text_ids has batch {batch} but codes has batch {codes.shape[0]}.")
        self._check_range(text_ids, self.text_vocab_size, "text_ids")
        self._check_range(codes, self.codebook_size, "codes")
        text_ids = text_ids.long()
        boi = torch.full((batch, 1), self.boi_id, dtype=torch.long, device=text_ids.device)  # (B, 1)
        codes = codes.to(text_ids.device).long() + self.image_offset  # (B, N)
        return torch.cat([text_ids, boi, codes], dim=1)  # (B, seq_len)

    def split(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, seq_len) token ids -> (B, T) caption ids, (B, h, w) codes in [0, K)."""
        if seq.dim() != 2 or seq.shape[1] != self.seq_len:
            raise ValueError(f"seq must have shape (B, {self.seq_len}), got {tuple(seq.shape)}.")
        text_ids = seq[:, : self.text_len]  # (B, T)
        codes = seq[:, self.text_len + 1 :] - self.image_offset  # (B, N)
        return text_ids, codes.reshape(seq.shape[0], self.grid_h, self.grid_w)  # (B, T), (B, h, w)

    def empty_caption_ids(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The unconditional (classifier-free guidance) caption: all text positions PAD."""
        return torch.full((batch_size, self.text_len), self.pad_id, dtype=torch.long, device=device)  # (B, T)

    def drop_captions(
        self, text_ids: torch.Tensor, rate: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace each caption by the empty one with probability ``rate`` (training for guidance).

        Returns the new (B, T) ids and the (B,) bool mask of dropped captions. The draw is made on
        the CPU from ``generator``, so it does not depend on the device.
        """
        dropped = torch.rand(text_ids.shape[0], generator=generator) < rate  # (B,)
        dropped = dropped.to(text_ids.device)
        return torch.where(dropped[:, None], torch.full_like(text_ids, self.pad_id), text_ids), dropped

    @staticmethod
    def _check_range(ids: torch.Tensor, upper: int, name: str) -> None:
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor, got dtype {ids.dtype}.")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= upper):
            raise ValueError(
                f"{name} values must lie in [0, {upper}), got min {int(ids.min())}, max {int(ids.max())}."
            )

    # ----------------------------------------------------------------------------------------------
    # persistence

    def to_dict(self) -> dict:
        fields = dataclasses.asdict(self)
        return {**fields, **{name: getattr(self, name) for name in _DERIVED}}

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / LAYOUT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> SequenceLayout:
        path = Path(directory)
        if path.is_dir():
            path = path / LAYOUT_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"No {LAYOUT_FILE} at {path}: a stage-2 model folder must hold the sequence layout "
                "written by save_transformer()."
            )
        data = load_json_object(path)  # ConfigError (a ValueError) for a malformed file
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names) - set(_DERIVED))
        if unknown:
            raise ModelFolderError(f"{path}: unknown keys {unknown}; expected {names}.")
        missing = [n for n in names if n not in data]
        if missing:
            raise ModelFolderError(f"{path}: missing keys {missing}.")
        layout = cls(**{n: data[n] for n in names})
        for name in _DERIVED:
            if name in data and data[name] != getattr(layout, name):
                raise ModelFolderError(
                    f"{path}: {name}={data[name]} disagrees with the value {getattr(layout, name)} "
                    "derived from the other fields; the file was edited by hand or is corrupt."
                )
        return layout
