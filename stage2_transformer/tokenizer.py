"""The caption tokenizer: byte-level BPE trained on the training captions, saved as a transformers tokenizer.

Byte-level BPE starts from the 256 byte values, so every caption (emoji, CJK, right-to-left scripts,
control characters) encodes without unknown tokens. Captions are right-padded with ``<pad>`` to the
fixed text length of the sequence layout; longer captions are truncated with a ``CaptionTruncatedWarning``.

Use ``len(tokenizer)`` (not the requested vocabulary size: BPE may learn fewer merges on a small
corpus) as ``SequenceLayout.text_vocab_size``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from minidalle.arguments import check_int
from minidalle.config import load_json_object
from minidalle.errors import ModelFolderError

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = [PAD_TOKEN, UNK_TOKEN]  # ids 0 and 1, in this order
_MIN_VOCAB = 256 + len(SPECIAL_TOKENS)


class CaptionCut(NamedTuple):
    index: int  # the caption's position in the batch
    preview: str  # its start, quoted
    tokens_cut: int
    tokens: int  # before cutting


class CaptionTruncatedWarning(UserWarning):
    """Captions longer than ``text_len`` tokens kept only their first ``text_len``; ``cuts`` says which."""

    def __init__(self, text_len: int, num_captions: int, cuts: list[CaptionCut]):
        super().__init__(text_len, num_captions, cuts)
        self.text_len, self.num_captions, self.cuts = text_len, num_captions, cuts

    def __str__(self) -> str:
        shown = "; ".join(
            f"caption {c.index} ({c.preview}): cut {c.tokens_cut} of {c.tokens} tokens"
            for c in self.cuts[:10]
        )
        more = f"; and {len(self.cuts) - 10} more" if len(self.cuts) > 10 else ""
        return (
            f"{len(self.cuts)} of {self.num_captions} captions are longer than text_len={self.text_len} tokens and "
            f"were truncated, {sum(c.tokens_cut for c in self.cuts)} tokens cut in all: {shown}{more}."
        )


def train_caption_tokenizer(
    captions: Iterable[str], vocab_size: int, out_dir: str | Path
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``captions`` and save it to ``out_dir`` (``tokenizer.json`` etc.).

    The saved folder loads with ``load_caption_tokenizer(out_dir)`` or ``AutoTokenizer.from_pretrained(out_dir)``.
    """
    special = f"256 byte tokens + {len(SPECIAL_TOKENS)} special tokens"
    vocab_size = check_int("vocab_size", vocab_size, _MIN_VOCAB, None, special)
    backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator((_clean(c) for c in captions), trainer=trainer)
    if backend.token_to_id(PAD_TOKEN) != 0 or backend.token_to_id(UNK_TOKEN) != 1:
        raise RuntimeError("BPE training did not place <pad> at id 0 and <unk> at id 1.")

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="right",
        truncation_side="right",
        model_input_names=["input_ids"],
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def load_caption_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer folder (``tokenizer.json``, optionally ``tokenizer_config.json``) or file, offline."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        tokenizer_file, folder = path, path.parent
    else:
        tokenizer_file, folder = path / "tokenizer.json", path
    if not folder.is_dir():
        raise FileNotFoundError(f"Tokenizer folder {folder} does not exist.")
    if not tokenizer_file.is_file():
        present = sorted(p.name for p in folder.iterdir())[:20]
        raise FileNotFoundError(
            f"No tokenizer.json in {folder} (it holds {present}). Train one with train_caption_tokenizer() "
            "or point to a folder saved by a transformers fast tokenizer."
        )
    kwargs = {}
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        config = load_json_object(config_file)
        for key in ("pad_token", "unk_token", "bos_token", "eos_token", "padding_side", "model_max_length"):
            if config.get(key) is not None:
                kwargs[key] = config[key]
    try:
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), **kwargs)
    except Exception as err:  # noqa: BLE001 - the tokenizers library raises plain Exception on a bad file
        raise ModelFolderError(
            f"{tokenizer_file} cannot be read as a tokenizer ({' '.join(str(err).split())[:200]}): the file is "
            "cut short or of another kind. Copy or train the tokenizer again."
        ) from None
    if tokenizer.pad_token_id is None:  # e.g. a GPT-2 style folder
        if tokenizer.backend_tokenizer.token_to_id(PAD_TOKEN) is not None:
            tokenizer.pad_token = PAD_TOKEN
        elif tokenizer.eos_token is not None:
            warnings.warn(
                f"The tokenizer in {folder} has no pad token; using its end token {tokenizer.eos_token!r} "
                "as padding (its targets are then ignored by the loss).",
                stacklevel=2,
            )
            tokenizer.pad_token = tokenizer.eos_token
        else:
            raise ModelFolderError(
                f"The tokenizer in {folder} has no pad token (nor a {PAD_TOKEN!r} or end token to use as one); "
                "captions cannot be padded to a fixed length."
            )
    return tokenizer


def _clean(caption: str) -> str:
    """Make any Python string encodable: lone surrogates (invalid in UTF-8) become U+FFFD."""
    if not isinstance(caption, str):
        raise TypeError(f"captions must be strings, got {type(caption).__name__}: {caption!r}")
    try:
        caption.encode("utf-8")
    except UnicodeEncodeError:
        caption = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in caption)
    return caption


def encode_captions(
    tokenizer: PreTrainedTokenizerFast, captions: list[str], text_len: int, warn: bool = True
) -> torch.Tensor:
    """Encode captions to a (B, text_len) LongTensor, right-padded with ``tokenizer.pad_token_id``.

    Captions longer than ``text_len`` tokens keep their first ``text_len`` tokens; with ``warn`` a
    single ``CaptionTruncatedWarning`` names each truncated caption and how many tokens it lost.
    """
    if isinstance(captions, str):
        raise TypeError("encode_captions expects a list of captions, got a single string.")
    if text_len < 1:
        raise ValueError(f"text_len must be positive, got {text_len}.")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("The tokenizer has no pad token; load it with load_caption_tokenizer().")
    captions = [_clean(c) for c in captions]
    encoded = tokenizer(captions, add_special_tokens=False)["input_ids"] if captions else []
    ids = torch.full((len(captions), text_len), pad_id, dtype=torch.long)  # (B, T)
    cuts = []
    for i, tokens in enumerate(encoded):
        if len(tokens) > text_len:
            cuts.append(CaptionCut(i, _preview(captions[i]), len(tokens) - text_len, len(tokens)))
            tokens = tokens[:text_len]
        if tokens:
            ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    if cuts and warn:
        warnings.warn(CaptionTruncatedWarning(text_len, len(captions), cuts), stacklevel=2)
    return ids


def _preview(caption: str, limit: int = 40) -> str:
    return repr(caption if len(caption) <= limit else caption[:limit] + "...")
