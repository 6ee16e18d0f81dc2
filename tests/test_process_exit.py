"""How a train script's process ends: ``sys.exit`` alone, ``os._exit`` after a flush as a launched worker.

A worker of a multi-process launch must skip interpreter finalization (where gloo's leftover threads can
abort it) without losing output still in a buffer; a single process must end exactly as before.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.procs import ROOT, command, process_env

SCRIPT = textwrap.dedent(
    """
    import atexit, sys
    from minidalle.process_exit import exit_process
    atexit.register(lambda: print("finalized", flush=True))
    sys.stdout.write("unflushed stdout")  # stdout to a pipe is block-buffered: still in the buffer here
    code = sys.argv[1]
    exit_process(int(code) if code.isdigit() else code)
    """
)


def end(code: str, world_size: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "PYTHONUNBUFFERED")}
    env["PYTHONPATH"] = str(ROOT)
    if world_size is not None:
        env["WORLD_SIZE"] = world_size
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, code], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize("world_size", [None, "1"])
def test_a_single_process_ends_as_sys_exit_does(world_size):
    result = end("3", world_size)
    assert result.returncode == 3
    assert result.stdout == "unflushed stdoutfinalized\n"  # atexit handlers ran: the interpreter finalized


def test_a_launched_worker_skips_finalization_and_keeps_its_output():
    result = end("3", "2")
    assert result.returncode == 3
    assert result.stdout == "unflushed stdout"  # flushed, and no atexit handler ran


def test_a_launched_worker_reports_a_message_code_as_sys_exit_does():
    result = end("Stopping: the loss is not finite", "2")
    assert result.returncode == 1
    assert result.stderr.strip() == "Stopping: the loss is not finite"
    assert "finalized" not in result.stdout


KEEP_SCRIPT = textwrap.dedent(
    """
    import gc, sys, weakref
    import torch
    from minidalle.process_exit import exit_process
    from minidalle.train_config import TrainConfig
    from minidalle.trainer import TrainingRun

    def main(output_dir):
        tcfg = TrainConfig(output_dir=output_dir, report_to="none")
        run = TrainingRun(tcfg, "t", "hint")
        model = torch.nn.Linear(2, 2)
        model, _ = run.prepare(model, run.adamw(model.parameters()), save=None, run_config=tcfg)
        run.accelerator.wait_for_everyone()
        run.accelerator.end_training()
        return weakref.ref(model), type(model).__name__

    model, kind = main(sys.argv[1])  # main's locals are gone, as when a train script's main returns
    gc.collect()
    print(kind, "alive" if model() is not None else "freed", flush=True)
    exit_process(0)
    """
)


@pytest.mark.parametrize("nproc", [1, 2])
def test_a_launched_worker_keeps_its_prepared_model_until_it_exits(tmp_path, nproc):
    """Freeing a DDP model destroys its gloo group, which can deadlock with the group's own threads (see
    minidalle.process_exit): a launched worker must never free it. A single process frees it as usual."""
    script = tmp_path / "keep.py"
    script.write_text(KEEP_SCRIPT)
    argv = command(str(script), str(tmp_path / "run"), nproc=nproc)
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=process_env(), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(line for line in result.stdout.splitlines() if line.endswith(("alive", "freed")))
    if nproc == 1:
        assert lines == ["Linear freed"]
    else:
        assert lines == ["DistributedDataParallel alive"] * 2
