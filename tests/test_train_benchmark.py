"""The training-throughput benchmark runs and writes its JSON report."""

from __future__ import annotations

import importlib.util
import json

from tests.conftest import flags
from tests.procs import ROOT


def test_train_throughput_benchmark_runs_and_writes_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "train_throughput", ROOT / "benchmarks" / "train_throughput.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "throughput.json"
    settings = flags("--stages 2 --sizes tiny --steps 1 --warmup 0 --threads 1 --device cpu")
    report = bench.main([*settings, "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    (row,) = report["results"]
    assert row["unit"] == "tokens/s" and row["throughput"] > 0 and row["peak_memory_mb"] > 0
    # counted FLOPs agree with the 6 x parameters x tokens estimate to within attention and the loss
    assert 0.8 < row["flops_per_step"] / row["flops_6nd_per_step"] < 1.5
    assert row["mfu"] is None  # no MFU without a GPU
    assert "tokens/s" in capsys.readouterr().out
