"""The GPU check's dry run on the CPU: step order, per-step files, time limits, the budget.

Only the first step (the matmul ceiling, at a tiny size) runs for real; the others are replaced by
cheap shell commands (``--substitute``), since what is tested here is the driver, not the benchmarks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["environment", "train_eager", "train_compile", "sampling", "end_to_end", "fsdp2"]


def run_check(tmp_path: Path, *args: str) -> tuple[Path, Path, str]:
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OUT": str(out), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "benchmarks/gpu_check.py", "--work", str(work)]
    command += ["--wheels", str(tmp_path / "no_wheels")]
    done = subprocess.run(
        [*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return out, work, done.stdout


def snapshot(step: str) -> str:
    """A substitute command that keeps the summary as the step found it, then does nothing else."""
    return f"{step}=cp $OUT/summary.json $STEP_JSON.summary"


def test_steps_run_in_order_each_writing_its_file_and_a_hung_step_is_killed(tmp_path):
    out, work, stdout = run_check(
        tmp_path,
        "--allow-cpu",
        "--budget", "100",
        "--gemm-sizes", "32", "64",
        "--substitute", 'train_eager=echo \'{"results": [{"achieved_tflops": 0.01}]}\' > $STEP_JSON',
        "--substitute", "train_compile=cp $OUT/summary.json $STEP_JSON.summary; exit 3",
        # the step and a child it started both sleep past the step's limit
        "--substitute", "sampling=sleep 60 & echo $! > $STEP_JSON.child; sleep 60",
        "--limit", "sampling=1.5",
        "--substitute", snapshot("end_to_end"),
        "--substitute", snapshot("fsdp2"),
    )  # fmt: skip
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"{i:02d}_{name}.json" for i, name in enumerate(STEPS, 1)] + ["summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and [s["step"] for s in summary["steps"]] == STEPS
    assert [s["status"] for s in summary["steps"]] == ["ok", "ok", "failed", "timeout", "ok", "ok"]
    assert stdout.index("01 environment") < stdout.index("04 sampling") < stdout.index("06 fsdp2")

    environment = json.loads((out / "01_environment.json").read_text())["figures"]
    ceiling = environment["ceiling_tflops"]
    assert environment["device"] == "cpu" and ceiling > 0 and environment["packages"]["torch"]
    row = json.loads((out / "02_train_eager.json").read_text())["figures"]["results"][0]
    assert row["mfu_of_measured_ceiling"] == 0.01 / ceiling

    sampling = json.loads((out / "04_sampling.json").read_text())
    assert 1.5 <= sampling["seconds"] < 10 and "sleep 60" in sampling["commands"][0]
    child = int((work / "sampling.json.child").read_text())
    assert child_is_gone(child)

    for index, name in [(3, "train_compile"), (5, "end_to_end"), (6, "fsdp2")]:  # what each step found
        seen = json.loads((work / f"{name}.json.summary").read_text())
        assert [s["step"] for s in seen["steps"]] == STEPS[: index - 1] and seen["running"] == name
        assert not seen["finished"]


def test_a_step_is_skipped_when_the_budget_is_spent(tmp_path):
    out, _, _ = run_check(
        tmp_path,
        "--budget", "5",
        "--substitute", "environment=sleep 2.5",
        "--limit", "environment=4",
        "--limit", "train_eager=3",
        *[f"--substitute={name}=true" for name in STEPS[1:]],
    )  # fmt: skip
    steps = json.loads((out / "summary.json").read_text())["steps"]
    assert [s["status"] for s in steps] == ["ok"] + ["skipped"] * 5
    assert "budget left" in steps[1]["reason"]
    assert len(list(out.iterdir())) <= 8


def test_without_cuda_the_check_stops_after_the_environment(tmp_path):
    out, _, _ = run_check(
        tmp_path,
        "--substitute", 'environment=echo \'{"device": "cpu"}\' > $STEP_JSON',
        *[f"--substitute={name}=true" for name in STEPS[1:]],
    )  # fmt: skip
    steps = json.loads((out / "summary.json").read_text())["steps"]
    assert steps[0]["status"] == "ok"
    assert all(s["status"] == "skipped" and "no CUDA" in s["reason"] for s in steps[1:])


def child_is_gone(pid: int) -> bool:
    """Killed: no such process, or a zombie waiting for init to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return True
