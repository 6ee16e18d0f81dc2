"""The training benchmarks run and write their JSON reports: throughput (compiled on request, and against
an earlier commit), and the phase profile of a real training run."""

from __future__ import annotations

import importlib.util
import json
import subprocess

import pytest

from tests.conftest import flags, inductor_compiles
from tests.procs import ROOT


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def run_benchmark(out, extra: str = "") -> dict:
    bench = load_benchmark("train_throughput")
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


@inductor_compiles
def test_compiled_benchmark_reports_compile_time(tmp_path):
    (row,) = run_benchmark(tmp_path / "throughput.json", "--compile")["results"]
    assert row["compiled"] and row["compile_s"] > 0 and row["achieved_tflops"] > 0


def test_baseline_ref_times_both_trees_and_reports_the_speedup(tmp_path, capsys):
    """Against HEAD itself: the ref's own benchmark runs from a temporary worktree, then this tree's."""
    bench = load_benchmark("train_throughput")
    out = tmp_path / "vs_head.json"
    worktrees_before = git_worktrees()
    settings = flags(
        "--stages 1 --sizes tiny --steps 1 --warmup 0 --threads 1 --device cpu --baseline-ref HEAD"
    )
    report = bench.main([*settings, "--out", str(out)])
    (row,) = report["results"]
    assert row["baseline_throughput"] > 0 and row["throughput"] > 0
    assert row["speedup"] == pytest.approx(row["throughput"] / row["baseline_throughput"])
    assert report["baseline_ref"] == "HEAD" and json.loads(out.read_text())["results"][0]["speedup"] > 0
    assert "speedup" in capsys.readouterr().out
    assert git_worktrees() == worktrees_before  # the baseline's worktree is removed


def test_no_speedup_between_trees_whose_models_differ():
    """Should the two sides still build different models, their throughput ratio is no speed-up and must
    not be reported as one."""
    summarise = load_benchmark("train_throughput").summarise_pair
    row = {"stage": 2, "size": "tiny", "unit": "tokens/s", "precision": "bf16"}
    same = summarise(
        2, "tiny", [({**row, "params": 10, "throughput": 100.0}, {**row, "params": 10, "throughput": 150.0})]
    )
    assert same["speedup"] == pytest.approx(1.5)
    unlike = summarise(
        2, "tiny", [({**row, "params": 12, "throughput": 100.0}, {**row, "params": 10, "throughput": 150.0})]
    )
    assert unlike["speedup"] is None and unlike["baseline_params"] == 12 and unlike["params"] == 10


def test_the_baseline_times_this_trees_models(tmp_path):
    """A retuned model size in this tree's tiny configs goes into the baseline's worktree, nothing else."""
    import yaml

    give = load_benchmark("train_throughput").give_baseline_these_models
    (tmp_path / "configs").mkdir()
    stage1 = (ROOT / "configs" / "stage1_tiny.yaml").read_text()
    (tmp_path / "configs" / "stage1_tiny.yaml").write_text(stage1)  # the same models: left as it is
    mine = yaml.safe_load((ROOT / "configs" / "stage2_tiny.yaml").read_text())
    theirs = {**mine, "model": {**mine["model"], "hidden_size": 192}, "train": {"max_steps": 1200}}
    (tmp_path / "configs" / "stage2_tiny.yaml").write_text(yaml.safe_dump(theirs))
    assert give(tmp_path) == ["stage2_tiny.yaml"]
    rewritten = yaml.safe_load((tmp_path / "configs" / "stage2_tiny.yaml").read_text())
    assert rewritten == {**theirs, "model": mine["model"]}  # its own training settings stay
    assert (tmp_path / "configs" / "stage1_tiny.yaml").read_text() == stage1


def git_worktrees() -> list[str]:
    return subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True
    ).stdout.splitlines()


def test_profile_splits_a_real_training_run_into_its_phases(tmp_path, shapes_cache, fresh_accelerator_state):
    bench = load_benchmark("profile_step")
    out = tmp_path / "profile.json"
    tiny = "--data.builtin_train_size 256 --data.builtin_eval_size 32 --model.base_channels 8 "
    tiny += f"--model.codebook_size 32 --train.batch_size 8 --num_eval_images 32 --data.builtin_cache_dir {shapes_cache}"
    report = bench.main(["--stage", "1", "--steps", "4", "--out", str(out), "--", *flags(tiny)])
    phases = report["phases"]
    assert json.loads(out.read_text())["phases"] == phases
    assert list(phases)[:3] == ["data", "forward", "backward"]
    assert all(
        phases[name]["seconds"] > 0 for name in ("data", "forward", "backward", "optimizer", "checkpoint")
    )
    assert phases["evaluation and grids"]["seconds"] > 0  # the final evaluation and grid
    assert sum(p["seconds"] for p in phases.values()) == pytest.approx(report["wall_s"])
    assert all(p["seconds"] >= 0 for p in phases.values())  # no phase counted twice
