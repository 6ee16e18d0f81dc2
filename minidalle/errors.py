"""User mistakes, and the one place per entry point that reports them as one line.

A user mistake (a config, data, model folder, checkpoint or argument that cannot be used) raises a
``UserError`` subclass, or one of the file errors of ``USER_MISTAKES``. An entry point runs its
``main`` through ``run_main``: such an error becomes ``error: <message>`` on stderr and exit code 2;
any other exception is a bug and keeps its traceback. ``--debug`` (or ``MINIDALLE_DEBUG=1``) shows
the traceback of user mistakes too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from minidalle.faults import restore_signal_handlers, stop_signal_handlers


class UserError(Exception):
    """Something the user gave cannot be used; the message says what and how to fix it."""


class ConfigError(UserError, ValueError):
    """A configuration value or file that cannot be used."""


class DataError(UserError, ValueError):
    """A dataset that cannot be read or holds nothing usable."""


class ModelFolderError(UserError, ValueError):
    """A model, tokenizer, pipeline or checkpoint folder that is not what the command needs."""


class ArgumentError(UserError, ValueError):
    """A command-line or API argument out of its range."""


class OutputFolderError(UserError, FileExistsError):
    """An output folder that holds something the command must not overwrite or delete."""


USER_MISTAKES = (
    UserError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)
DEBUG_FLAG = "--debug"
EXIT_USER_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose mistakes are ``ArgumentError``s (one line), not usage + exit."""

    def error(self, message: str):
        raise ArgumentError(f"{message} (see {self.prog} --help)")


def debug_requested(argv: list[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get("MINIDALLE_DEBUG", "") not in ("", "0")


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def run_main(main: Callable[[list[str]], object], argv: list[str] | None = None) -> int:
    """Call ``main(argv)`` (``--debug`` removed); a user mistake -> one line on stderr, exit code 2.

    Returns main's exit code (an int it returned, else 0), for ``sys.exit(run_main(main))``. However main
    ends, SIGINT and SIGTERM are handled as before it: a training hands them back at each of its own
    endings, and this covers an exception raised in between, which would otherwise leave a caller that
    runs ``main`` in its own process (a notebook) with a Ctrl-C that only sets a flag nobody reads.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    handlers = stop_signal_handlers()
    try:
        result = main([a for a in argv if a != DEBUG_FLAG])
    except USER_MISTAKES as err:
        if debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    finally:
        restore_signal_handlers(handlers)
    return result if isinstance(result, int) else 0
