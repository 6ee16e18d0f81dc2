"""The training-throughput benchmark runs and writes its JSON report; compiled, on request."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from tests.conftest import flags
from tests.procs import ROOT


def run_benchmark(out, extra: str = "") -> dict:
    spec = importlib.util.spec_from_file_location(
        "train_throughput", ROOT / "benchmarks" / "train_throughput.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    settings = flags(f"--stages 2 --sizes tiny --steps 1 --warmup 0 --threads 1 --device cpu {extra}")
    return bench.main([*settings, "--out", str(out)])


def test_train_throughput_benchmark_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "throughput.json"
    report = run_benchmark(out)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    (row,) = report["results"]
    assert row["unit"] == "tokens/s" and row["throughput"] > 0 and row["peak_memory_mb"] > 0
    # counted FLOPs agree with the 6 x parameters x tokens estimate to within attention and the loss
    assert 0.8 < row["flops_per_step"] / row["flops_6nd_per_step"] < 1.5
    assert row["mfu"] is None  # no MFU without a GPU
    assert "tokens/s" in capsys.readouterr().out


@pytest.mark.skipif(
    not os.environ.get("MINIDALLE_COMPILE_TESTS"),
    reason="compiling forward and backward costs about 35 s of CPU; set MINIDALLE_COMPILE_TESTS=1 to run",
)
def test_compiled_benchmark_reports_compile_time(tmp_path):
    (row,) = run_benchmark(tmp_path / "throughput.json", "--compile")["results"]
    assert row["compiled"] and row["compile_s"] > 0 and row["achieved_tflops"] > 0
