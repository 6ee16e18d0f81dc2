"""An earlier commit checked out beside this tree, for the benchmarks that time both side by side."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def checked_out(ref: str) -> Iterator[Path]:
    """The folder of a temporary git worktree of ``ref`` (a commit, tag or branch), removed afterwards.

    A ref git cannot check out ends the benchmark with git's own one-line reason, not a traceback.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "baseline"
        done = subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["git worktree add failed"])[-1]
            raise SystemExit(f"--baseline-ref {ref!r} cannot be checked out: {reason}")
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
