"""The checkpoint-scoring benchmark's driver (benchmarks/emoji_prior_checkpoints.py) on the CPU, in seconds.

The train and score commands are replaced by a script that writes what the real ones write: complete
checkpoints (``checkpoint-<step>`` renamed from ``.tmp`` once its marker is in, the oldest rotated away
beyond three, as ``train.checkpoints_total_limit 3`` does) and the evaluation's JSON and grid. The real
commands are tested in tests/test_emoji_configs.py and tests/test_stage2_train.py. What is tested here is
the driver: every checkpoint is caught before rotation removes it, scored while training goes on, a
failed or hung run is reported, and everything is stopped at the budget.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from benchmarks import emoji_prior_checkpoints as bench

FAKE = """
import json, os, pathlib, shutil, sys, time

kind, folder = sys.argv[1], pathlib.Path(sys.argv[2])
if kind == "train":
    steps, every = int(sys.argv[3]), int(sys.argv[4])
    root = folder / "checkpoints"
    root.mkdir(parents=True)
    for step in range(every, steps + 1, every):
        time.sleep(0.4)
        tmp = root / f"checkpoint-{step}.tmp"
        for part in ("transformer", "tokenizer"):
            (tmp / part).mkdir(parents=True)
            (tmp / part / "weights").write_text(f"{folder.name} {step}")
        (tmp / "checkpoint_complete.json").write_text(json.dumps({"step": step}))
        os.replace(tmp, root / f"checkpoint-{step}")
        for old in sorted(root.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[:-3]:
            shutil.rmtree(old)
        if folder.name == "broken":
            sys.exit("CUDA out of memory")
        if folder.name == "hung":
            time.sleep(60)
else:
    name, step = folder.name.rsplit("-", 1)
    assert (folder / "transformer" / "weights").read_text() == f"{name} {int(step)}"  # the right copy
    top5 = int(step) / 2 + (1 if name == "a" else 0)
    scores = {"retrieval_top5_pct": top5, "style_accuracy_pct": 55.0}
    if "--rerank_clip" in sys.argv:  # the re-ranker's pick: best at the first checkpoint here
        scores["reranked_retrieval_top5_pct"] = 40 - int(step) / 2
    (folder / "eval.json").write_text(json.dumps(scores))
    (folder / "heldout_samples.png").write_text(folder.name)
"""


def test_every_checkpoint_is_scored_while_training_goes_on(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "fake.py"
    fake.write_text(FAKE)
    steps = {"a": 60, "broken": 60, "hung": 60}

    def train_command(self, name, overrides):
        every = str(self.args.every)
        return [sys.executable, str(fake), "train", str(self.work / name), str(steps[name]), every]

    def score_command(self, folder):
        return [sys.executable, str(fake), "score", str(folder)]

    monkeypatch.setattr(bench.CheckpointScores, "train_command", train_command)
    monkeypatch.setattr(bench.CheckpointScores, "score_command", score_command)
    data, vqvae, config, out = tmp_path / "data", tmp_path / "vqvae", tmp_path / "c.yaml", tmp_path / "out"
    (data / "train").mkdir(parents=True)
    vqvae.mkdir()
    config.write_text("{}\n")
    monkeypatch.setenv("OUT", str(out))
    budget = 8.0  # the hung run holds the test this long; the others end in about 3 s on 2 cores
    args = ["--vqvae", str(vqvae), "--data", str(data), "--config", str(config), "--every", "10"]
    args += ["--budget", str(budget), "--parallel", "2", "--allow-cpu", "--work", str(tmp_path / "work")]
    args += ["--wheels", str(tmp_path / "no_wheels")]
    for name in steps:
        args += ["--run", name, "--train.seed 0"]

    start = time.monotonic()
    summary = bench.main(args)
    assert time.monotonic() - start < budget + 5  # the hung run was killed at the budget
    assert json.loads((out / "summary.json").read_text()) == summary and summary["finished"]
    runs = summary["runs"]

    # six checkpoints, three kept at a time: every one was copied before rotation and scored
    assert runs["a"]["status"] == "ok"
    assert sorted(int(s) for s in runs["a"]["steps"]) == [10, 20, 30, 40, 50, 60]
    assert all(r["status"] == "ok" and r["top5"] == int(s) / 2 + 1 for s, r in runs["a"]["steps"].items())
    assert runs["broken"]["status"] == "failed (1)" and "CUDA out of memory" in runs["broken"]["log_tail"]
    assert runs["broken"]["steps"]["10"]["top5"] == 5.0  # what it saved before failing is still scored
    assert runs["hung"]["status"] == "timeout" and runs["hung"]["steps"]["10"]["status"] == "ok"
    assert runs["a"]["overrides"] == "--train.seed 0"

    assert summary["best"] == {"run": "a", "step": 60, "top5": 31.0}
    assert (out / "heldout_samples_best.png").read_text() == "a-000060"
    assert not list((tmp_path / "work" / "scored").glob("*/transformer"))  # scored copies are removed
    table = capsys.readouterr().out
    assert "    60       31.0          -          -" in table


def test_out_of_budget_scoring_is_reported_not_lost(tmp_path, monkeypatch):
    """A score still running at the budget is 'timeout'; a checkpoint never started is 'not scored'."""
    fake = tmp_path / "fake.py"
    fake.write_text(FAKE)

    def train_command(self, name, overrides):
        return [sys.executable, str(fake), "train", str(self.work / name), "30", "10"]

    def score_command(self, folder):
        return ["sleep", "60"]

    monkeypatch.setattr(bench.CheckpointScores, "train_command", train_command)
    monkeypatch.setattr(bench.CheckpointScores, "score_command", score_command)
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "vqvae").mkdir()
    (tmp_path / "c.yaml").write_text("{}\n")
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    args = ["--vqvae", str(tmp_path / "vqvae"), "--data", str(tmp_path / "data")]
    args += ["--config", str(tmp_path / "c.yaml"), "--budget", "4", "--parallel", "1", "--allow-cpu"]
    args += ["--work", str(tmp_path / "work")]
    args += ["--wheels", str(tmp_path / "no_wheels"), "--run", "a", ""]
    steps = bench.main(args)["runs"]["a"]["steps"]
    assert steps["10"]["status"] == "timeout"
    assert steps["20"]["status"] == steps["30"]["status"] == "not scored: out of budget"


def test_with_a_reranker_its_pick_is_scored_and_ranks_the_checkpoints(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "fake.py"
    fake.write_text(FAKE)
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text("{}")
    (clip / "model.safetensors").write_bytes(b"")  # only looked for here: the fake scorer loads nothing
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "vqvae").mkdir()
    (tmp_path / "c.yaml").write_text("{}\n")
    args = ["--vqvae", str(tmp_path / "vqvae"), "--data", str(tmp_path / "data")]
    args += ["--config", str(tmp_path / "c.yaml"), "--every", "10", "--budget", "20", "--allow-cpu"]
    args += ["--work", str(tmp_path / "work"), "--wheels", str(tmp_path / "no_wheels"), "--run", "a", ""]

    # the real evaluate command gets the re-ranker, and only when one is given
    aside = [*args, "--work", str(tmp_path / "aside")]  # the benchmark below empties its own --work
    real = bench.CheckpointScores(bench.parse_args([*aside, "--rerank_clip", str(clip)]), tmp_path / "o", {})
    command = real.score_command(tmp_path / "a-000010")
    assert command[command.index("--rerank_clip") + 1] == str(clip)
    assert "--heldout_style" in command
    plain = bench.CheckpointScores(bench.parse_args(aside), tmp_path / "o", {})
    assert "--rerank_clip" not in plain.score_command(tmp_path / "a-000010")

    def train_command(self, name, overrides):
        return [sys.executable, str(fake), "train", str(self.work / name), "30", "10"]

    def score_command(self, folder):  # the fake scorer, told whether the real command would re-rank
        rerank = ["--rerank_clip"] if self.args.rerank_clip is not None else []
        return [sys.executable, str(fake), "score", str(folder), *rerank]

    monkeypatch.setattr(bench.CheckpointScores, "train_command", train_command)
    monkeypatch.setattr(bench.CheckpointScores, "score_command", score_command)
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    summary = bench.main([*args, "--rerank_clip", str(clip)])
    steps = summary["runs"]["a"]["steps"]
    assert {s: (r["top5"], r["pick_top5"]) for s, r in steps.items()} == {
        "10": (6.0, 35.0),
        "20": (11.0, 30.0),
        "30": (16.0, 25.0),
    }
    # one sample is best at step 30, the pick at step 10: the pick decides, as the demo keeps the pick
    assert summary["best"] == {"run": "a", "step": 10, "pick_top5": 35.0}
    assert (tmp_path / "out" / "heldout_samples_best.png").read_text() == "a-000010"
    assert "held-out pick_top5 by step" in capsys.readouterr().out


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "data" / "train").mkdir(parents=True)
    base = ["--vqvae", str(tmp_path), "--data", str(tmp_path / "data")]
    with pytest.raises(SystemExit):
        bench.parse_args([*base, "--config", str(tmp_path / "missing.yaml")])
    assert "is not a file: pass a stage-2 config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args([*base, "--config", str(tmp_path), "--run", "a", "", "--run", "a", "--train.seed 1"])
    assert "--run names must differ" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("{}\n")
    (tmp_path / "config.json").write_text("{}")  # a config without weights is no re-ranker either
    with pytest.raises(SystemExit):
        bench.parse_args([*base, "--config", str(tmp_path / "c.yaml"), "--rerank_clip", str(tmp_path)])
    assert "must hold config.json and *.safetensors weights: pass a re-ranker's <run>/clip" in (
        capsys.readouterr().err
    )
    args = bench.parse_args([*base, "--config", str(tmp_path / "c.yaml")])
    assert [name for name, _ in args.run] == ["seed0", "seed1", "seed2"]
