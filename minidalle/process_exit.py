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
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def launched_worker() -> bool:
    """True in one process of a multi-process launch (torchrun and the launchers built on it set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


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
