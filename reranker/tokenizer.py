"""The re-ranker's caption tokenizer: stage 2's byte-level BPE with an end token after every caption.

CLIP's text tower reads a caption's meaning off the hidden state at its end token, so every encoded caption
ends with ``<eos>``, kept when a long caption is cut. The folder loads with ``AutoTokenizer``, as
``pipeline.rerank.ClipReranker`` does.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import processors
from transformers import PreTrainedTokenizerFast

from stage2_transformer.tokenizer import train_caption_tokenizer

EOS_TOKEN = "<eos>"


def train_clip_tokenizer(captions: Iterable[str], vocab_size: int, text_len: int, out_dir: str | Path):
    """Train on ``captions``, save to ``out_dir``; returns the tokenizer (ids: <pad> 0, <unk> 1, <eos> last)."""
    tokenizer: PreTrainedTokenizerFast = train_caption_tokenizer(captions, vocab_size - 1, out_dir)
    tokenizer.add_special_tokens({"eos_token": EOS_TOKEN})
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}", special_tokens=[(EOS_TOKEN, tokenizer.eos_token_id)]
    )
    tokenizer.model_input_names = ["input_ids", "attention_mask"]  # CLIP masks the padding
    tokenizer.model_max_length = text_len
    tokenizer.save_pretrained(out_dir)
    return tokenizer
