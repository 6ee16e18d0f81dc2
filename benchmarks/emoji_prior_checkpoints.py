"""Held-out emoji score over training: stage-2 runs trained side by side (seeds, step counts), each
checkpoint scored on the held-out (emoji, style) pairs while training goes on.

    bash scripts/get_gpu_wheels.sh datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 \\
        transformers==5.24.0                                          # here: what the GPU image lacks
    OUT=results python3 benchmarks/emoji_prior_checkpoints.py --vqvae STAGE1_RUN/vqvae --data data/emoji32 \\
        [--config configs/stage2_emoji32_gpu.yaml] [--every 250] [--budget 500] \\
        [--run seed0 "--train.seed 0" --run short "--train.max_steps 1000" ...] \\
        [--rerank_clip RERANKER_RUN/clip]                                               # there

Why: on the emoji data held-out bits stop being a guide early (the larger priors' held-out bits rise
from step ~500 while their held-out drawings still get closer to the truth), so where retrieval peaks
has to be measured by sampling. Each ``--run`` is a real ``stage2_transformer/train.py`` run of
``--config`` with its overrides, checkpointing every ``--every`` steps; every checkpoint (each holds a
loadable model) is copied as it appears and scored by ``python -m stage2_transformer.evaluate
--heldout_style true`` in its own process, up to ``--parallel`` at once, all sharing the GPU. Runs and
scoring are killed at ``--budget`` seconds; what was scored by then is reported. With ``--rerank_clip``
each checkpoint is also scored as the re-ranker's pick of 16 samples per caption (``pick_*``, what
``scripts/demo_emoji.sh`` reports), and the best checkpoint is the one whose pick scores highest.

Into $OUT (default outputs/emoji_prior_checkpoints): ``summary.json``, rewritten as each score
arrives (per run, per step: held-out style, top-1, top-5, the training pairs' top-5, bits with and
without the caption, diversity), and the held-out grid of the best-scoring checkpoint. Prints a table
of held-out top-5 by step and run. Models and logs go to ``--work`` (a folder an earlier run of this
benchmark made is emptied; one holding anything else is refused).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks.gpu_check import benchmark_environment  # noqa: E402
from benchmarks.step_runner import (  # noqa: E402
    exit_status,
    kill_group,
    prepare_work,
    read_json,
    start_group,
    tail,
    write_json,
)
from minidalle.checkpoints import list_checkpoints  # noqa: E402
from minidalle.errors import ModelFolderError  # noqa: E402
from reranker.folder import check_clip_folder  # noqa: E402

PYTHON = sys.executable
WORK_MARKER = ".emoji_prior_checkpoints_work"
DEFAULT_RUNS = (("seed0", "--train.seed 0"), ("seed1", "--train.seed 1"), ("seed2", "--train.seed 2"))
SCORES = {  # short name in the summary: key of the evaluate command's JSON
    "style": "style_accuracy_pct",
    "top1": "retrieval_top1_pct",
    "top5": "retrieval_top5_pct",
    "train_top5": "train_pairs_retrieval_top5_pct",
    "bits": "bits_per_image",
    "bits_empty": "bits_per_image_empty_caption",
    "diversity": "diversity_mse",
    "pick_style": "reranked_style_accuracy_pct",  # with --rerank_clip
    "pick_top1": "reranked_retrieval_top1_pct",
    "pick_top5": "reranked_retrieval_top5_pct",
}


class CheckpointScores:
    def __init__(self, args: argparse.Namespace, out: Path, env: dict):
        self.args, self.out, self.work, self.env = args, out, args.work, env
        self.started = time.monotonic()
        self.summary: dict = {"budget_s": args.budget, "config": args.config, "runs": {}, "finished": False}
        self.training: dict = {}  # run name: its training process
        self.queue: list[tuple[str, int]] = []  # (run, step) copied, waiting to be scored
        self.scoring: dict = {}  # (run, step): its scoring process
        self.best: tuple[float, str, int] | None = None  # (top-5, run, step)
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def scored_folder(self, name: str, step: int) -> Path:
        """Where the model of run ``name`` at ``step`` is copied and scored."""
        return self.work / "scored" / f"{name}-{step:06d}"

    def score_log(self, name: str, step: int) -> Path:
        return self.work / "logs" / f"score_{name}_{step}.log"

    # ------------------------------------------------------------------ commands
    def train_command(self, name: str, overrides: str) -> list[str]:
        a = self.args
        command = [PYTHON, "stage2_transformer/train.py", "--config", a.config, "--vqvae", a.vqvae]
        command += ["--data.path", a.data, "--codes.cache_dir", str(self.work / "codes" / name)]
        command += ["--train.output_dir", str(self.work / name), "--train.checkpoint_every", str(a.every)]
        # a checkpoint is copied within a second of appearing: three kept leave ample time
        command += ["--train.checkpoints_total_limit", "3", "--train.image_every", "0"]
        return command + ["--train.report_to", "none", *shlex.split(overrides)]

    def score_command(self, folder: Path) -> list[str]:
        a = self.args
        command = [PYTHON, "-m", "stage2_transformer.evaluate", "--config", a.config, "--run", str(folder)]
        command += ["--vqvae", a.vqvae, "--data.path", a.data, "--codes.cache_dir", str(folder / "codes")]
        command += ["--heldout_style", "true", "--num_samples", str(a.num_samples)]
        if a.rerank_clip is not None:
            command += ["--rerank_clip", str(a.rerank_clip)]
        return command + ["--output_json", str(folder / "eval.json")]

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        for name, overrides in self.args.run:
            command = self.train_command(name, overrides)
            self.training[name] = start_group(command, self.work / "logs" / f"{name}.log", self.env, ROOT)
            self.summary["runs"][name] = {"overrides": overrides, "status": "running", "steps": {}}
        self.write_summary()
        deadline = self.started + self.args.budget
        while time.monotonic() < deadline and (self.training or self.queue or self.scoring):
            self.poll_training()
            self.poll_scoring()
            while self.queue and len(self.scoring) < self.args.parallel:
                self.start_scoring(*self.queue.pop(0))
            time.sleep(0.5)
        for name, process in list(self.training.items()):  # out of budget
            kill_group(process)
            self.end_training(name, None)
        for key, process in list(self.scoring.items()):
            kill_group(process)
            self.record_score(key, {"status": "timeout"})
        for name, step in self.queue:
            self.record_score((name, step), {"status": "not scored: out of budget"})
        self.write_summary(finished=True)
        return self.summary

    def poll_training(self) -> None:
        for name, process in list(self.training.items()):
            ended = process.poll() is not None  # read before the checkpoints: a final one is not missed
            self.copy_new_checkpoints(name)
            if ended:
                kill_group(process)  # what it left behind
                self.end_training(name, process.returncode)

    def copy_new_checkpoints(self, name: str) -> None:
        """Copy each new checkpoint's model and tokenizer out of the run (old checkpoints are rotated)."""
        steps = self.summary["runs"][name]["steps"]
        for step, checkpoint in list_checkpoints(self.work / name):
            if str(step) in steps:
                continue
            folder = self.scored_folder(name, step)
            try:
                for part in ("transformer", "tokenizer"):
                    shutil.copytree(checkpoint / part, folder / part)
            except OSError as err:  # rotated away while copying: that step goes unscored
                steps[str(step)] = {"status": f"missed: {err}"}
                continue
            steps[str(step)] = {"status": "queued", "at_s": round(self.elapsed(), 1)}
            self.queue.append((name, step))

    def end_training(self, name: str, code: int | None) -> None:
        del self.training[name]
        run = self.summary["runs"][name]
        run["status"] = exit_status(code)
        run["train_end_s"] = round(self.elapsed(), 1)
        if code != 0:
            run["log_tail"] = tail(self.work / "logs" / f"{name}.log")
        self.write_summary()

    def start_scoring(self, name: str, step: int) -> None:
        command = self.score_command(self.scored_folder(name, step))
        self.scoring[(name, step)] = start_group(command, self.score_log(name, step), self.env, ROOT)

    def poll_scoring(self) -> None:
        for (name, step), process in list(self.scoring.items()):
            if process.poll() is None:
                continue
            kill_group(process)
            del self.scoring[(name, step)]
            folder = self.scored_folder(name, step)
            scores = read_json(folder / "eval.json")
            result = {short: scores[key] for short, key in SCORES.items() if key in scores}
            key = self.best_key()
            result["status"] = "ok" if process.returncode == 0 and key in result else "failed"
            if result["status"] != "ok":
                result["log_tail"] = tail(self.score_log(name, step))
            elif self.best is None or result[key] > self.best[0]:
                self.best = (result[key], name, step)
                shutil.copy(folder / "heldout_samples.png", self.out / "heldout_samples_best.png")
                self.summary["best"] = {"run": name, "step": step, key: result[key]}
            self.record_score((name, step), result)
            shutil.rmtree(folder / "transformer", ignore_errors=True)  # 0.4 GB each at 92M parameters

    def best_key(self) -> str:
        """The score that ranks checkpoints: the re-ranker's pick's top-5 when there is a re-ranker."""
        return "top5" if self.args.rerank_clip is None else "pick_top5"

    def record_score(self, key: tuple[str, int], result: dict) -> None:
        name, step = key
        result["at_s"] = round(self.elapsed(), 1)
        self.summary["runs"][name]["steps"][str(step)] = result
        self.write_summary()

    def write_summary(self, finished: bool = False) -> None:
        self.summary |= {"elapsed_s": round(self.elapsed(), 1), "finished": finished}
        write_json(self.out / "summary.json", self.summary)  # a kill never leaves half a file


def format_table(summary: dict, key: str = "top5") -> str:
    """One row per checkpoint step, one column per run: the score ``key`` ('-' where none)."""
    runs = summary["runs"]
    steps = sorted({int(s) for run in runs.values() for s in run["steps"]})
    lines = [f"held-out {key} by step\n{'step':>6} " + " ".join(f"{name:>10}" for name in runs)]
    for step in steps:
        cells = []
        for run in runs.values():
            value = run["steps"].get(str(step), {}).get(key)
            cells.append(f"{value:>10.1f}" if isinstance(value, (int, float)) else f"{'-':>10}")
        lines.append(f"{step:>6} " + " ".join(cells))
    lines.append("status " + " ".join(f"{run['status']:>10}" for run in runs.values()))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vqvae", required=True, help="the stage-1 model folder every run trains on")
    p.add_argument("--data", required=True, help="emoji data folder from scripts/get_emoji.sh")
    p.add_argument("--config", default="configs/stage2_emoji32_gpu.yaml", help="the stage-2 config")
    p.add_argument(
        "--run",
        nargs=2,
        action="append",
        metavar=("NAME", "OVERRIDES"),
        help='a run: its name and its overrides of --config, e.g. seed1 "--train.seed 1" (repeat; '
        "default: seeds 0, 1 and 2 of the config as it is)",
    )
    p.add_argument("--every", type=int, default=250, help="checkpoint (and score) every this many steps")
    p.add_argument("--budget", type=float, default=500, help="seconds for everything")
    p.add_argument("--parallel", type=int, default=6, help="checkpoints scored at once")
    p.add_argument("--num_samples", type=int, default=381, help="held-out captions scored")
    p.add_argument(
        "--rerank_clip",
        type=Path,
        help="a CLIP re-ranker folder (reranker/train.py, <run>/clip): also score its pick of 16 samples",
    )
    p.add_argument("--allow-cpu", action="store_true", help="run without CUDA too (a dry run)")
    p.add_argument("--work", type=Path, default=ROOT / "outputs" / "emoji_prior_checkpoints_work")
    p.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="wheels to install first")
    p.add_argument("--site", type=Path, default=Path("/tmp/site"), help="where to install them")
    args = p.parse_args(argv)
    args.run = args.run or [list(run) for run in DEFAULT_RUNS]
    names = [name for name, _ in args.run]
    if len(set(names)) < len(names):
        p.error(f"--run names must differ, got {names}")
    if not Path(args.vqvae).is_dir():
        p.error(f"--vqvae {args.vqvae} is not a folder: pass the stage-1 model folder (<run>/vqvae)")
    if not (Path(args.data) / "train").is_dir():
        p.error(f"--data {args.data} holds no train/ split: build it with bash scripts/get_emoji.sh")
    if args.rerank_clip is not None:
        try:
            check_clip_folder(args.rerank_clip, "--rerank_clip")
        except ModelFolderError as e:
            p.error(str(e))
    if not Path(args.config).is_file():
        p.error(
            f"--config {args.config} is not a file: pass a stage-2 config, e.g. configs/stage2_emoji32.yaml"
        )
    for name in ("every", "budget", "parallel", "num_samples"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(os.environ.get("OUT") or ROOT / "outputs" / "emoji_prior_checkpoints")
    prepare_work(args.work, WORK_MARKER, "the checkpoint scoring benchmark")
    env, environment = benchmark_environment(args.wheels, args.site)
    if environment["device"] == "cpu" and not args.allow_cpu:
        sys.exit("No CUDA device: this benchmark is sized for a GPU (--allow-cpu runs it anyway).")
    bench = CheckpointScores(args, out, env)  # the budget counts from here, after torch's import
    bench.summary["environment"] = environment
    summary = bench.run()
    print(format_table(summary))
    print(format_table(summary, "style"))
    if args.rerank_clip is not None:
        print(format_table(summary, "pick_top5"))
        print(format_table(summary, "pick_style"))
    print(json.dumps(summary))  # the figures in the log too, should the files not come back
    return summary


if __name__ == "__main__":
    main()
