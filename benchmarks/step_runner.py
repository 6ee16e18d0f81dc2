"""Steps run as child processes, each under its own time limit inside one budget, each result written
the moment the step ends.

Made for machines that cut every command off at a fixed limit and hand back only the few files left
in one folder: a step that hangs costs its own limit, not the whole run, and what has finished is
already on disk. A step's commands run one after another, each in a new process session, so that at
the step's deadline the whole group (a launcher and the workers it started) is killed with SIGKILL:
the train scripts answer SIGTERM by saving a checkpoint, which a step out of time cannot wait for.

Into the results folder go ``NN_<step>.json`` per step (status ok, failed, timeout or skipped,
seconds, figures, the end of its log) and ``summary.json``, rewritten after every step.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TAIL_LINES = 40
TAIL_CHARS = 4000


@dataclass
class Step:
    name: str
    limit_s: float  # the most this step may take
    min_s: float  # skipped when less than this (or its limit, if smaller) is left of the budget
    commands: Callable[[], list[list[str]] | str]  # the commands to run in order, or why to skip it
    figures: Callable[[], dict]  # its results, read from what it wrote (also after a failure)


class Runner:
    """Runs steps in the order given, within ``budget_s`` seconds counted from its creation."""

    def __init__(self, out: Path, work: Path, budget_s: float, env: dict[str, str], cwd: Path):
        self.out, self.work, self.budget_s, self.env, self.cwd = out, work, budget_s, env, cwd
        self.limits: dict[str, float] = {}  # per-step limits replacing the steps' own
        self.substitutes: dict[str, str] = {}  # per-step shell commands replacing the steps' own
        self.summary: dict = {"budget_s": budget_s, "finished": False, "steps": []}
        self.results: dict[str, dict] = {}
        self.started = time.monotonic()
        (work / "logs").mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)

    def remaining(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def json_path(self, name: str) -> Path:
        """Where step ``name`` writes its full JSON (given to a substitute command as $STEP_JSON)."""
        return self.work / f"{name}.json"

    def figures_of(self, name: str) -> dict:
        return self.results.get(name, {}).get("figures", {})

    def run(self, index: int, step: Step, skip_reason: str | None = None) -> dict:
        """Run (or skip) one step, then write its JSON and the summary."""
        start = time.monotonic()
        limit = self.limits.get(step.name, step.limit_s)
        deadline = start + min(limit, max(self.remaining(), 0.0))
        needs = min(step.min_s, limit)
        if skip_reason is None and self.remaining() < needs:
            skip_reason = f"{self.remaining():.0f} s of the budget left, the step needs {needs:.0f} s"
        commands = skip_reason or self._commands(step)
        result: dict = {"step": step.name, "index": index, "limit_s": limit}
        if isinstance(commands, str):
            result |= {"status": "skipped", "reason": commands}
        else:
            print(f"== {index:02d} {step.name}: up to {deadline - start:.0f} s", flush=True)
            self.summary["running"] = step.name  # what was cut off, should the whole run be
            self.write_summary()
            result |= self._run_commands(step.name, index, commands, deadline)
            result["figures"] = self._figures(step)
            del self.summary["running"]
        result["seconds"] = round(time.monotonic() - start, 1)
        why = f" ({result['reason']})" if "reason" in result else ""
        print(f"== {index:02d} {step.name}: {result['status']} after {result['seconds']} s{why}", flush=True)
        self.results[step.name] = result
        self._write(f"{index:02d}_{step.name}.json", result)
        brief = {k: result[k] for k in ("step", "status", "seconds", "reason", "figures") if k in result}
        self.summary["steps"].append(brief)
        self.write_summary()
        return result

    def write_summary(self, finished: bool = False) -> None:
        self.summary |= {"elapsed_s": round(time.monotonic() - self.started, 1), "finished": finished}
        self._write("summary.json", self.summary)

    def _commands(self, step: Step) -> list[list[str]] | str:
        if step.name in self.substitutes:
            return [["sh", "-c", self.substitutes[step.name]]]
        try:
            return step.commands()
        except (OSError, subprocess.SubprocessError) as err:  # e.g. a --help that hung
            return f"its commands could not be made: {err}"

    def _run_commands(self, name: str, index: int, commands: list[list[str]], deadline: float) -> dict:
        log = self.work / "logs" / f"{index:02d}_{name}.log"
        env = {**self.env, "STEP_JSON": str(self.json_path(name))}
        result: dict = {"status": "ok", "commands": [shlex.join(c) for c in commands], "command_seconds": []}
        with log.open("w") as log_file:
            for command in commands:
                print(f"   $ {shlex.join(command)}", flush=True)
                log_file.write(f"$ {shlex.join(command)}\n")
                log_file.flush()
                start = time.monotonic()
                code = run_group(command, log_file, deadline, env, self.cwd)
                result["command_seconds"].append(round(time.monotonic() - start, 1))
                if code != 0:
                    result |= (
                        {"status": "timeout"} if code is None else {"status": "failed", "returncode": code}
                    )
                    break
        result["log_tail"] = tail(log)
        if result["status"] != "ok":
            print(result["log_tail"][-1500:], flush=True)
        return result

    def _figures(self, step: Step) -> dict:
        try:
            return step.figures()
        except Exception as err:  # a killed step leaves half-written files: report, never stop the check
            return {"error": f"{type(err).__name__}: {err}"}

    def _write(self, name: str, data: dict) -> None:
        write_json(self.out / name, data)


def run_group(command: list[str], log_file, deadline: float, env: dict, cwd: Path) -> int | None:
    """Exit code of ``command``, or None when it outlasted ``deadline`` (then its group is killed)."""
    return wait_groups({"command": popen_group(command, log_file, env, cwd)}, deadline)["command"]


def popen_group(command: list[str], log_file, env: dict, cwd: Path) -> subprocess.Popen:
    """``command`` started in a new process session (so that its whole group can be killed)."""
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )


def start_group(command: list[str], log: Path, env: dict, cwd: Path) -> subprocess.Popen:
    """Start ``command`` in its own group, its output into ``log`` (after the command line)."""
    with log.open("w") as log_file:
        log_file.write(f"$ {shlex.join(command)}\n")
        log_file.flush()
        return popen_group(command, log_file, env, cwd)


def wait_groups(
    processes: dict[str, subprocess.Popen],
    deadline: float,
    on_end: Callable[[str, int | None], None] | None = None,
) -> dict[str, int | None]:
    """Wait for processes started by ``start_group``: {name: exit code, or None when it outlasted
    ``deadline``}. ``on_end(name, code)`` is called as each one ends. Every group is killed when its
    command ends (children left behind) or at the deadline."""
    codes: dict[str, int | None] = {}
    while len(codes) < len(processes):
        late = time.monotonic() >= deadline
        for name, process in processes.items():
            ended = process.poll() is not None
            if name in codes or not (ended or late):
                continue
            kill_group(process)
            codes[name] = process.returncode if ended else None
            if on_end is not None:
                on_end(name, codes[name])
        time.sleep(0.2)
    return codes


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the group ``popen_group`` started (what its command left behind too), then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def exit_status(code: int | None) -> str:
    """A side-by-side run's status from ``wait_groups``'s code: "ok", "failed (<code>)" or "timeout" (None)."""
    return "timeout" if code is None else "ok" if code == 0 else f"failed ({code})"


def tail(path: Path) -> str:
    lines = path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
    return "\n".join(lines)[-TAIL_CHARS:]


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl, in order ([] when it has none)."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def prepare_work(work: Path, marker: str, owner: str) -> None:
    """An empty work folder: one ``owner`` made before (it holds ``marker``) is emptied; a folder holding
    anything else is refused, so that no user's files are deleted."""
    if work.exists() and any(work.iterdir()):
        if not (work / marker).exists():
            sys.exit(f"{work} holds files {owner} did not write; pass another --work")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / marker).touch()


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` through a temporary file: a reader (or a kill) never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(temporary, path)


def read_json(path: Path) -> dict:
    """The JSON object in ``path``, or {} when it is missing or cut short."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def scalars(data: dict) -> dict:
    return {k: v for k, v in data.items() if v is None or isinstance(v, (str, int, float, bool))}


def compact(report: dict) -> dict:
    """A benchmark's JSON without bulk: its top-level scalars and the scalars of each of its results."""
    return {**scalars(report), "results": [scalars(row) for row in report.get("results", [])]}
