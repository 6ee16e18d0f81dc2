"""The emoji prior sweep's driver (benchmarks/emoji_prior_sweep.py) on the CPU: the step arithmetic, the
side-by-side process groups, and a whole sweep in a few seconds.

In the whole sweep the train and score commands are replaced by a script that writes what the real ones
write (metrics.jsonl with ``train/steps_per_s``, the exported model, the evaluation's JSON and grid):
the real commands are tested in tests/test_emoji_configs.py, and ``train/steps_per_s`` there. What is
tested here is the driver: probe, plan the steps inside the budget, run side by side, kill at the budget,
collect.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from benchmarks import emoji_prior_sweep as sweep
from benchmarks.step_runner import start_group, wait_groups
from tests.test_gpu_check import child_is_gone

FAKE = """
import json, pathlib, sys, time
import numpy as np
from safetensors.numpy import save_file

kind, run, steps = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3])
run.mkdir(parents=True, exist_ok=True)
if kind == "train":
    if run.name == "hung":
        time.sleep(60)
    lines = [{"step": steps, "eval/bits_per_image": 300.0}]
    if run.name != "probe_silent":  # a probe that logs no step rate
        lines.append({"step": steps, "train/image_loss": 1.5, "train/steps_per_s": 1000.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\\n" for line in lines))
    (run / "transformer").mkdir()
    save_file({"a": np.zeros((2, 3)), "b": np.zeros(4)}, str(run / "transformer" / "model.safetensors"))
else:
    (run / "eval.json").write_text(json.dumps({"style_accuracy_pct": 60.0, "retrieval_top5_pct": 30.0}))
    (run / "heldout_samples.png").write_bytes(b"png")
"""


def test_steps_within_the_time_left():
    assert sweep.steps_within(rate=10.0, startup_s=20.0, seconds_left=120.0, safety=0.8, cap=20000) == 800
    assert sweep.steps_within(10.0, 20.0, 120.0, 0.8, cap=500) == 500
    assert sweep.steps_within(10.0, startup_s=130.0, seconds_left=120.0, safety=0.8, cap=500) == 0


def test_wait_groups_reports_each_end_and_kills_what_outlasts_the_deadline(tmp_path):
    commands = {
        "ok": ["sh", "-c", "exit 0"],
        "failed": ["sh", "-c", "exit 3"],
        "hung": ["sh", "-c", "sleep 60 & echo $! > child; sleep 60"],  # a child left behind too
    }
    processes = {
        n: start_group(c, tmp_path / f"{n}.log", dict(os.environ), tmp_path) for n, c in commands.items()
    }
    ended: list[tuple[str, int | None]] = []
    start = time.monotonic()
    codes = wait_groups(processes, start + 2.0, lambda name, code: ended.append((name, code)))
    assert codes == {"ok": 0, "failed": 3, "hung": None}
    assert 2.0 <= time.monotonic() - start < 10
    assert sorted(ended) == sorted(codes.items()) and ended[-1] == ("hung", None)
    assert child_is_gone(int((tmp_path / "child").read_text()))
    assert (tmp_path / "hung.log").read_text().startswith("$ sh -c")


def test_a_whole_sweep_plans_steps_inside_the_budget_and_collects_each_run(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "fake.py"
    fake.write_text(FAKE)

    def train_command(self, name, run_dir, steps, log_every):
        return [sys.executable, str(fake), "train", str(run_dir), str(steps)]

    def score_command(self, name):
        return [sys.executable, str(fake), "score", str(self.work / name), "0"]

    monkeypatch.setattr(sweep.Sweep, "train_command", train_command)
    monkeypatch.setattr(sweep.Sweep, "score_command", score_command)
    for name, variant in {
        "fast": sweep.Variant((), None, 10000),
        "fixed": sweep.Variant((), steps=7),
        "capped": sweep.Variant((), None, max_steps=3),
        "silent": sweep.Variant((), None),
        "hung": sweep.Variant((), None),
    }.items():
        monkeypatch.setitem(sweep.VARIANTS, name, variant)
    out, data, vqvae = tmp_path / "out", tmp_path / "data", tmp_path / "vqvae"
    (data / "train").mkdir(parents=True)
    vqvae.mkdir()
    monkeypatch.setenv("OUT", str(out))
    budget = 8.0  # the hung run holds the test this long; the others end in 2-4 s on 2 cores
    args = [
        "--vqvae",
        str(vqvae),
        "--data",
        str(data),
        "--variants",
        "fast",
        "fixed",
        "capped",
        "silent",
        "hung",
    ]
    args += ["--budget", str(budget), "--probe_steps", "5", "--probe_limit", "4", "--score_reserve", "1"]
    args += ["--safety", "0.5", "--min_steps", "1", "--stage1_steps", "0", "--allow-cpu"]
    args += ["--work", str(tmp_path / "work"), "--wheels", str(tmp_path / "no_wheels")]

    start = time.monotonic()
    summary = sweep.main(args)
    assert time.monotonic() - start < budget + 5  # the hung run was killed at the budget
    assert json.loads((out / "summary.json").read_text()) == summary and summary["finished"]
    runs, probes = summary["variants"], summary["probes"]

    # probed at 1000 steps/s: the steps planned fit in what was left of the budget at half the rate
    assert set(probes) == {"fast", "capped", "silent", "hung"}  # a fixed step count needs no probe
    planned = runs["fast"]["steps"]
    left = budget - 1 - runs["fast"]["started_s"]
    assert 1 <= planned <= 0.5 * 1000 * left and runs["fast"]["step"] == planned  # what the run was given
    assert runs["capped"]["steps"] == 3 and runs["fixed"]["steps"] == 7
    assert runs["silent"] == {"status": "skipped", "reason": "the probe logged no step rate"}
    assert runs["hung"]["status"] == "timeout" and "log_tail" in runs["hung"]

    for name in ("fast", "fixed", "capped"):  # trained, then scored: what each wrote is collected
        run = runs[name]
        assert run["status"] == "ok" and run["parameters"] == 10
        assert (run["style_accuracy_pct"], run["retrieval_top5_pct"]) == (60.0, 30.0)
        assert run["eval_curve"] == [[run["steps"], 300.0]] and run["steps_per_s"] == 1000.0
        assert (out / f"heldout_samples_{name}.png").read_bytes() == b"png"
    table = capsys.readouterr().out
    assert "fast" in table and " 30.0 " in table and "timeout" in table


def test_bad_folders_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sweep.parse_args(["--vqvae", str(tmp_path / "missing"), "--data", str(tmp_path)])
    assert "is not a folder: pass the stage-1 model folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.parse_args(["--vqvae", str(tmp_path), "--data", str(tmp_path)])
    assert "holds no train/ split: build it with bash scripts/get_emoji.sh" in capsys.readouterr().err


def test_a_work_folder_the_sweep_did_not_make_is_refused_and_kept(tmp_path):
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "vqvae").mkdir()
    work = tmp_path / "mine"
    work.mkdir()
    (work / "notes.txt").write_text("a user's file")
    args = ["--vqvae", str(tmp_path / "vqvae"), "--data", str(tmp_path / "data"), "--work", str(work)]
    with pytest.raises(
        SystemExit, match="holds files the emoji prior sweep did not write; pass another --work"
    ):
        sweep.main(args)
    assert (work / "notes.txt").read_text() == "a user's file"


def test_parameter_count_reads_the_exported_model(tmp_path):
    import torch
    from safetensors.torch import save_file

    (tmp_path / "transformer").mkdir()
    save_file(
        {"w": torch.zeros(3, 5), "b": torch.zeros(7)}, str(tmp_path / "transformer" / "model.safetensors")
    )
    assert sweep.parameter_count(tmp_path / "transformer") == 22
    assert sweep.parameter_count(tmp_path / "nothing") is None
    assert sweep.probe_rate(Path(tmp_path)) is None
