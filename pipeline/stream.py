"""Row-by-row generation: ``GenerationStream`` runs a generation in a worker thread and hands its rows
over as an iterator; ``partial_pictures`` decodes the rows sampled so far as whole pictures."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from PIL import Image

from minidalle.pixels import tensor_to_pil
from stage1_vqvae.model import VQVAE

if TYPE_CHECKING:
    from .outputs import PipelineOutput, RowEvent


class GenerationCancelled(RuntimeError):
    """Raised inside a generation whose consumer went away (see ``GenerationStream``)."""


class GenerationStream:
    """Iterate over ``RowEvent``s while a generation runs in a worker thread; ``output`` at the end.

    The generation runs in a thread because the sampler reports rows through a callback. Stopping the
    iteration early cancels it at the next row.
    """

    def __init__(self, run: Callable[[Callable[[RowEvent], None]], PipelineOutput]):
        self._run = run
        self._events: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._started = False
        self.output: PipelineOutput | None = None

    def __iter__(self) -> Iterator[RowEvent]:
        if self._started:
            raise RuntimeError("A GenerationStream can be iterated only once.")
        self._started = True
        done = object()

        def on_row(event: RowEvent) -> None:
            if self._cancel.is_set():
                raise GenerationCancelled("the consumer of the stream stopped")
            self._events.put(event)

        def work() -> None:
            try:
                self.output = self._run(on_row)
                self._events.put(done)
            except BaseException as err:  # handed to the consumer's thread
                self._events.put(err)

        thread = threading.Thread(target=work, name="minidalle-generate", daemon=True)
        thread.start()
        try:
            while True:
                item = self._events.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._cancel.set()
            thread.join()


def partial_pictures(
    vqvae: VQVAE,
    codes: torch.Tensor,
    fixed: torch.Tensor | None,
    mask: torch.Tensor | None,
    compute_dtype: torch.dtype | None = None,
) -> list[Image.Image]:
    """Decode (b, r, w) codes of the first r rows as a full picture: the cells still to sample repeat
    the last sampled row (so the decoder's edge looks natural) and are then painted grey; the input
    image's kept codes (``fixed``, ``mask``: (b, N)) show as they are. ``compute_dtype``: as in
    ``VQVAE.decode_codes``."""
    b, r, w = codes.shape
    h = vqvae.config.grid_size
    full = torch.cat([codes, codes[:, -1:].expand(b, h - r, w)], dim=1)  # (b, h, w)
    pending = torch.zeros(b, h, w, dtype=torch.bool)
    pending[:, r:] = True
    if fixed is not None:
        pending &= mask.cpu().reshape(b, h, w)
        full = torch.where(pending, full, fixed.cpu().reshape(b, h, w))  # (b, h, w)
    pixels = vqvae.decode_codes(full.to(next(vqvae.parameters()).device), compute_dtype)  # (b, 3, H, W)
    scale = pixels.shape[2] // h
    grey = pending.repeat_interleave(scale, 1).repeat_interleave(scale, 2)  # (b, H, W)
    return tensor_to_pil(pixels.masked_fill(grey[:, None].to(pixels.device), 0.0))  # grey in [-1, 1]
