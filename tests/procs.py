"""Helpers for the distributed and fault tests: run the train scripts as real processes, read results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
FSDP_ENV = {
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer",
    "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
}


def process_env(extra: dict | None = None) -> dict:
    # one thread per process: two ranks share the CPUs with other jobs
    return {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(ROOT),
        **(extra or {}),
    }


def command(script: str, *args: str, nproc: int = 1, fsdp: bool = False) -> list[str]:
    """``python script`` for one process, ``torchrun --nproc_per_node N script`` (gloo) for more."""
    target = [str(ROOT / "tests" / "fsdp_on_cpu.py"), str(ROOT / script)] if fsdp else [str(ROOT / script)]
    if nproc == 1 and not fsdp:
        return [sys.executable, *target, *args]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return [*torchrun, *target, *args]


def run(
    script: str,
    *args: str,
    nproc: int = 1,
    fsdp: bool = False,
    env: dict | None = None,
    expect_ok: bool = True,
    timeout: int = 300,
) -> subprocess.CompletedProcess:
    full_env = process_env({**(FSDP_ENV if fsdp else {}), **(env or {})})
    argv = command(script, *args, nproc=nproc, fsdp=fsdp)
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)
    if expect_ok and result.returncode != 0:
        raise AssertionError(
            f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


def start(script: str, *args: str, nproc: int = 1, env: dict | None = None, log: Path) -> subprocess.Popen:
    """Start in the background, in its own process group (as a job scheduler would signal it)."""
    with open(log, "w") as out:
        argv = command(script, *args, nproc=nproc)
        return subprocess.Popen(
            argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=process_env(env), start_new_session=True
        )


def wait_for(condition, process: subprocess.Popen, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (code {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def marker(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "checkpoint_complete.json").read_text())


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(folder.glob("*.safetensors"))))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in keys)
