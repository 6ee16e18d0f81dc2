"""``GenerationStream``: a generation run in a worker thread, its rows handed over as an iterator."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

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
