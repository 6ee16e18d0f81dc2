"""Incremental decoding with transformers' own forward over its ``StaticCache``, optionally compiled.

The rival ``KVDecoder`` (decoding.py) has to beat: keys and values live in buffers allocated once for the
whole sequence, so every one-token step has the same shapes and ``torch.compile`` can capture it; on CUDA,
``mode="reduce-overhead"`` replays the step as a CUDA graph, which removes the per-operation launch cost
that dominates a small model's step. The prompt (its length varies) always runs eagerly.
"""

from __future__ import annotations

import weakref

import torch
from transformers import StaticCache

from .model import cache_keyword

_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its compiled forward


def compiled_forward(model: torch.nn.Module):
    """``model.forward`` compiled once per model, for one-token steps (reused by later sampling calls)."""
    if model not in _COMPILED:
        on_cuda = next(model.parameters()).device.type == "cuda"
        mode = "reduce-overhead" if on_cuda else "default"  # CUDA graphs need a CUDA device
        _COMPILED[model] = torch.compile(model.forward, mode=mode, fullgraph=True, dynamic=False)
    return _COMPILED[model]


class StaticCacheDecoder:
    """Prefill a (B, P) prompt, then one token per step, up to ``max_len`` tokens: the same interface as
    ``KVDecoder``. ``logit_rows`` cuts the returned logits to those vocabulary rows."""

    def __init__(
        self, model: torch.nn.Module, max_len: int, logit_rows: slice | None = None, compile: bool = False
    ):
        self.model = model
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.max_len = max_len
        self.rows = logit_rows if logit_rows is not None else slice(None)
        self.step_forward = compiled_forward(model) if compile else model.forward
        self.cache_keyword = cache_keyword(model)
        self.pos = 0

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt (B, P) from position 0; return the last position's logits (B, rows)."""
        self.pos = 0
        return self._forward(self.model.forward, input_ids)

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Append (B, 1) tokens after those already decoded; return their logits (B, rows)."""
        return self._forward(self.step_forward, input_ids)

    def _forward(self, forward, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        if self.pos + length > self.max_len:
            raise ValueError(
                f"The cache holds {self.max_len} tokens; position {self.pos + length} is past it."
            )
        positions = torch.arange(self.pos, self.pos + length, device=input_ids.device)  # (L,)
        out = forward(
            input_ids=input_ids,
            cache_position=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_keyword: self.cache},
        )
        self.pos += length
        return out.logits[:, -1, self.rows]  # (B, rows)
