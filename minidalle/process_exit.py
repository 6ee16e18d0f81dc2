"""How a train script's process ends: like ``sys.exit``, except as one worker of a multi-process launch.

A worker of torchrun or ``accelerate launch`` (WORLD_SIZE > 1) flushes its output and leaves through
``os._exit``, skipping interpreter finalization, as multiprocessing's own child processes do. Why: once a
DDP model has held the gloo process group, the group and its worker threads outlive
``destroy_process_group`` (torch keeps references to it), and a worker thread can drop its last finished
collective after finalization has begun. That work's saved thread state holds a Python object, so the
thread takes the GIL, and the process aborts (SIGABRT, "terminate called without an active exception")
after everything was written: a core dump shows the main thread in ``Py_FinalizeEx`` and a gloo worker
thread in ``take_gil``. A minimal two-process accelerate script did so in 10 of 188 runs on 2 busy cores,
and CI's two-process tests did so twice. By then the run's files are closed and its trackers finished
(``end_training``): nothing is left to do that finalization would have done.

The same threads can hang a worker before it gets that far. When ``main`` returns, its locals go, and with
them the DDP model; the model's reducer holds the gloo process group, whose destructor joins the group's
worker threads while the main thread holds the GIL. A worker thread still freeing its last finished
collective (a barrier's work holding a tensor) waits for the GIL, and neither moves: py-spy showed the main
thread in ``~ProcessGroupGloo`` -> ``std::thread::join`` and a gloo thread in ``AsyncBarrierWork`` ->
``gil_scoped_acquire``, after the run had written everything, in 1 of 5 repeats of a two-process test on
2 busy cores. So a launched worker keeps its ``TrainingRun``, which holds the prepared model, referenced
(``keep_until_exit``) until ``os._exit``: Python never destroys the group, as finalization never did.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def launched_worker() -> bool:
    """True in one process of a multi-process launch (torchrun and the launchers built on it set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


# What a launched worker must not destroy before it exits (see the module docstring).
_kept_until_exit: list[object] = []


def keep_until_exit(obj: object) -> None:
    """In a launched worker, keep ``obj`` referenced until the process ends; elsewhere, do nothing (a
    notebook that calls ``main`` again must get its memory back)."""
    if launched_worker():
        _kept_until_exit.append(obj)


def exit_process(code: int | str | None = 0) -> NoReturn:
    """``sys.exit(code)``; in a launched worker, flush stdout, stderr and the log, then ``os._exit``.

    ``code`` means what it means to ``sys.exit``: None is 0, a string is printed to stderr and exits 1.
    """
    if not launched_worker():
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    logging.shutdown()  # flushes and closes every handler, as the atexit hook would
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)
