"""Shared test helpers: launching the real entry points and a small built-in dataset cache."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.launch import launch_command_parser
from accelerate.utils import prepare_simple_launcher_cmd_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_accelerator_state():
    """For a train script run inside the test process: Accelerate keeps one process-wide state, and a
    config that picks another precision (the tiny configs' ``auto``) than an earlier in-process run
    would be refused by it. Reset before and after."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


# What ``accelerate launch --cpu --num_processes 1 --mixed_precision no --dynamo_backend no`` puts in the
# environment of the one process it starts, from accelerate's own launcher helper, so that it follows the
# installed version (1.16 stopped setting ACCELERATE_DYNAMO_USE_DYNAMIC unasked; 1.15 set it to "False").
# test_launch_sets_what_accelerate_launch_sets holds it to what the real launcher sets. Most tests set it
# themselves and run the script directly: the launcher's own start-up costs about 1.8 s a run, a minute
# over the suite's ~30 runs.
LAUNCHER_FLAGS = shlex.split(
    "--cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no"
)
ACCELERATE_LAUNCH = ["-m", "accelerate.commands.launch", *LAUNCHER_FLAGS]
_, _launcher_environ = prepare_simple_launcher_cmd_env(
    launch_command_parser().parse_args([*LAUNCHER_FLAGS, "x.py"])
)
LAUNCHER_ENV = {key: value for key, value in _launcher_environ.items() if key.startswith("ACCELERATE_")}


# Tests that compile with inductor run only when asked: each compile costs 35-45 s of CPU, and the suite keeps
# to its 10 minutes on 2 cores. The compile path itself is tested with the aot_eager backend in every run.
inductor_compiles = pytest.mark.skipif(
    not os.environ.get("MINIDALLE_COMPILE_TESTS"),
    reason="an inductor compile costs 35-45 s of CPU; set MINIDALLE_COMPILE_TESTS=1 to run",
)


def launch(
    script: str,
    *args: str,
    expect_ok: bool = True,
    timeout: int = 600,
    env: dict | None = None,
    via_launcher: bool = False,
):
    """Run ``script args`` as ``accelerate launch`` runs it for one CPU process; returns the CompletedProcess.

    ``via_launcher``: through ``accelerate launch`` itself, the way a user does (the main train tests);
    otherwise ``python script`` with the launcher's environment (``LAUNCHER_ENV``).
    """
    command = [sys.executable, *(ACCELERATE_LAUNCH if via_launcher else []), str(ROOT / script), *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if not via_launcher:
        full_env |= LAUNCHER_ENV
    full_env |= env or {}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)
    if expect_ok and result.returncode != 0:
        raise AssertionError(
            f"{script} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result


def flags(line: str) -> list[str]:
    """Command-line flags written as a shell would read them: "--a 1 --b x" -> ["--a", "1", "--b", "x"]."""
    return shlex.split(line)


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def shapes_cache(tmp_path_factory) -> Path:
    """A folder that caches the built-in dataset across the tests of one session."""
    return tmp_path_factory.mktemp("builtin_shapes")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matrices gain nothing from threads, and OpenMP threads stall when other jobs share the CPUs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """A random-init tiny pipeline folder (tests/tiny_models.py), shared by the tests of one session."""
    from tests.tiny_models import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_pipeline"))


@pytest.fixture(scope="session")
def tiny_pipe(tiny_pipeline_dir):
    from pipeline import MiniDallePipeline

    return MiniDallePipeline.from_pretrained(tiny_pipeline_dir, device="cpu")
