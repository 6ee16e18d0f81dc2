"""Stage-2 priors of several sizes on the emoji data, trained side by side on one GPU inside a time
budget, each scored on the held-out (emoji, style) pairs; stage 1 trains beside them.

    bash scripts/get_gpu_wheels.sh datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 \\
        transformers==5.24.0                                          # here: what the GPU image lacks
    OUT=results python3 benchmarks/emoji_prior_sweep.py --vqvae STAGE1_RUN/vqvae --data data/emoji32 \\
        [--variants cpu_recipe h384_l6 h768_l12 h1024_l16] [--budget 480] [--stage1_steps 5000]   # there

Made for a GPU lent for minutes: every variant is a real ``stage2_transformer/train.py`` run followed by
``python -m stage2_transformer.evaluate --heldout_style true --heldout_negative_style true``, and each
runs in its own process (a small prior leaves most of an H200 idle), so they share the GPU.

1. **probe**: each variant without a fixed step count trains ``--probe_steps`` steps, side by side, for
   its step rate (the last logged window, ``train/steps_per_s``) and its start-up time;
2. **train and score**: each variant trains as many steps as fit before the scoring reserve
   (``--score_reserve`` s before the end of the budget) at that rate, times ``--safety``, up to its cap,
   so that its learning-rate schedule runs to its end; then it is scored at once. ``cpu_recipe`` is
   the CPU run measured in configs/stage2_emoji32.yaml (192 wide, 4 layers, 4096 caption tokens,
   batch 32, 2500 steps), started at once, so the GPU figures sit beside a known one.

With ``--stage1_steps`` > 0 stage 1 trains (``--stage1_config``) from the start and is evaluated
(PSNR, codebook usage on the held-out images): the stage-2 variants use ``--vqvae`` either way.
Into $OUT (default outputs/emoji_prior_sweep) go ``summary.json``, rewritten as each run ends, and
each scored variant's held-out grid: 7 files at most. Prints a table. Models and logs go to ``--work``
(a folder an earlier sweep made is emptied; one holding anything else is refused).

Measured on one H200 with ``--budget 515`` (490 s in all): the 768-wide, 12-layer prior reaches held-out
top-5 36.7% against the CPU recipe's 26.0%; the table is in docs/emoji.md ("A larger prior, on one GPU")
and in configs/stage2_emoji32_gpu.yaml.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks.gpu_check import benchmark_environment, last_train_log  # noqa: E402
from benchmarks.step_runner import (  # noqa: E402
    exit_status,
    prepare_work,
    read_json,
    read_metrics,
    start_group,
    tail,
    wait_groups,
    write_json,
)

PYTHON = sys.executable
WORK_MARKER = ".emoji_prior_sweep_work"  # a work folder holding it is the sweep's own, and is emptied
STAGE2_CONFIG = "configs/stage2_emoji32.yaml"
# Read back from each variant's evaluation: the held-out score, its negative-style twin, the training
# pairs (memory) and the bits (``stage2_transformer/heldout_style.py`` says what each can tell).
SCORES = (
    "style_accuracy_pct",
    "retrieval_top1_pct",
    "retrieval_top5_pct",
    "negative_style_accuracy_pct",
    "negative_retrieval_top5_pct",
    "train_pairs_style_accuracy_pct",
    "train_pairs_retrieval_top5_pct",
    "bits_per_image",
    "bits_per_image_empty_caption",
    "bits_ratio_caption_to_empty",
    "diversity_mse",
)


@dataclass(frozen=True)
class Variant:
    overrides: tuple[str, ...]  # command-line overrides of configs/stage2_emoji32.yaml
    steps: int | None = None  # a fixed step count; None: as many as the budget allows, up to max_steps
    max_steps: int = 20000


def wide(hidden: int, layers: int, learning_rate: str) -> Variant:
    """A larger prior: batch 128, attention dropout 0.1, weight decay 0.1 (it passes over the training
    views many times: 14 in 1905 steps)."""
    size = ("--model.hidden_size", str(hidden), "--model.num_layers", str(layers))
    size += ("--model.num_heads", str(hidden // 64), "--model.dropout", "0.1")
    train = ("--train.batch_size", "128", "--train.learning_rate", learning_rate)
    return Variant(size + train + ("--train.weight_decay", "0.1", "--train.warmup_steps", "200"))


VARIANTS = {
    "cpu_recipe": Variant(("--train.batch_size", "32"), steps=2500),
    "h384_l6": wide(384, 6, "5e-4"),
    "h768_l12": wide(768, 12, "3e-4"),
    "h1024_l16": wide(1024, 16, "2e-4"),
    # a dry run on the CPU (--allow-cpu --variants tiny --stage1_steps 10): about a minute on 2 cores
    "tiny": Variant(
        ("--model.hidden_size", "32", "--model.num_layers", "1", "--model.num_heads", "2"), None, 40
    ),
}


def steps_within(rate: float, startup_s: float, seconds_left: float, safety: float, cap: int) -> int:
    """Training steps that fit in ``seconds_left``: start-up first, then ``rate`` steps/s, times ``safety``."""
    return max(0, min(cap, int(safety * rate * (seconds_left - startup_s))))


def probe_rate(run_dir: Path) -> float | None:
    """Steps per second in the last logged training window of a run (None when none was logged)."""
    rates = [row["train/steps_per_s"] for row in read_metrics(run_dir) if "train/steps_per_s" in row]
    return rates[-1] if rates else None


class Sweep:
    def __init__(self, args: argparse.Namespace, out: Path, env: dict):
        self.args, self.out, self.work, self.env = args, out, args.work, env
        self.started = time.monotonic()
        self.summary: dict = {"budget_s": args.budget, "variants": {}, "finished": False}
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # ------------------------------------------------------------------ commands
    def train_command(self, name: str, run_dir: Path, steps: int, log_every: int) -> list[str]:
        a = self.args
        command = [PYTHON, "stage2_transformer/train.py", "--config", STAGE2_CONFIG, "--vqvae", a.vqvae]
        command += ["--data.path", a.data, "--tokenizer.vocab_size", "4096"]
        command += ["--codes.cache_dir", str(self.work / "codes" / name), "--train.output_dir", str(run_dir)]
        command += ["--train.max_steps", str(steps), "--train.log_every", str(log_every)]
        command += ["--train.eval_every", str(max(steps // 4, 1)), "--train.image_every", "0"]
        command += ["--train.checkpoint_every", "0", "--train.report_to", "none"]
        return command + list(VARIANTS[name].overrides)

    def score_command(self, name: str) -> list[str]:
        run_dir, codes = self.work / name, str(self.work / "codes" / name)
        command = [PYTHON, "-m", "stage2_transformer.evaluate", "--config", STAGE2_CONFIG]
        command += ["--run", str(run_dir), "--data.path", self.args.data, "--codes.cache_dir", codes]
        command += ["--heldout_style", "true", "--heldout_negative_style", "true"]
        return command + ["--num_samples", "381", "--output_json", str(run_dir / "eval.json")]

    def stage1_command(self) -> list[str]:
        a, run_dir = self.args, self.work / "stage1"
        train = [PYTHON, "stage1_vqvae/train.py", "--config", a.stage1_config, "--data.path", a.data]
        train += ["--train.max_steps", str(a.stage1_steps), "--train.output_dir", str(run_dir)]
        train += ["--train.checkpoint_every", "0", "--train.report_to", "none"]
        evaluate = [PYTHON, "-m", "stage1_vqvae.evaluate", "--model", str(run_dir / "vqvae")]
        evaluate += ["--config", a.stage1_config, "--data.path", a.data]
        evaluate += ["--output_json", str(run_dir / "eval.json")]
        return ["sh", "-c", f"{shlex.join(train)} && {shlex.join(evaluate)}"]

    # ------------------------------------------------------------------ phases
    def probe(self, names: list[str]) -> dict[str, dict]:
        """Step rate and start-up time of each variant, all probed side by side."""
        steps = self.args.probe_steps
        log_every = max(steps // 3, 1)
        processes, started = {}, time.monotonic()
        for name in names:
            command = self.train_command(name, self.work / f"probe_{name}", steps, log_every)
            processes[name] = start_group(command, self.work / "logs" / f"probe_{name}.log", self.env, ROOT)
        ends: dict[str, float] = {}
        codes = wait_groups(
            processes,
            started + self.args.probe_limit,
            lambda name, _: ends.setdefault(name, time.monotonic()),
        )
        probes = {}
        for name in names:
            rate = probe_rate(self.work / f"probe_{name}")
            wall = ends[name] - started
            probes[name] = {"status": exit_status(codes[name]), "wall_s": round(wall, 1), "steps_per_s": rate}
            if rate:
                probes[name]["startup_s"] = round(max(wall - steps / rate, 0.0), 1)
            else:
                probes[name]["log_tail"] = tail(self.work / "logs" / f"probe_{name}.log")
        return probes

    def run(self) -> dict:
        a = self.args
        names = list(a.variants)
        processes = {}
        if a.stage1_steps:
            processes["stage1"] = start_group(
                self.stage1_command(), self.work / "logs" / "stage1.log", self.env, ROOT
            )
        fixed = [n for n in names if VARIANTS[n].steps is not None]
        for name in fixed:
            processes[name] = self.start_variant(name, VARIANTS[name].steps)
        probed = [n for n in names if VARIANTS[n].steps is None]
        probes = self.probe(probed) if probed else {}
        self.summary["probes"] = probes
        train_end = a.budget - a.score_reserve
        for name in probed:
            rate = probes[name]["steps_per_s"]
            if not rate:
                self.record(name, {"status": "skipped", "reason": "the probe logged no step rate"})
                continue
            left = train_end - self.elapsed()
            steps = steps_within(rate, probes[name]["startup_s"], left, a.safety, VARIANTS[name].max_steps)
            if steps < a.min_steps:
                self.record(name, {"status": "skipped", "reason": f"{steps} steps fit in {left:.0f} s"})
                continue
            processes[name] = self.start_variant(name, steps)
        self.write_summary()
        wait_groups(processes, self.started + a.budget, self.collect)
        self.write_summary(finished=True)
        return self.summary

    def start_variant(self, name: str, steps: int):
        run_dir = self.work / name
        train = self.train_command(name, run_dir, steps, log_every=max(steps // 20, 1))
        command = ["sh", "-c", f"{shlex.join(train)} && {shlex.join(self.score_command(name))}"]
        self.record(name, {"status": "running", "steps": steps, "started_s": round(self.elapsed(), 1)})
        return start_group(command, self.work / "logs" / f"{name}.log", self.env, ROOT)

    # ------------------------------------------------------------------ results
    def collect(self, name: str, code: int | None) -> None:
        """Read what run ``name`` wrote the moment it ends, and rewrite the summary."""
        log = self.work / "logs" / f"{name}.log"
        result = {"status": exit_status(code), "seconds": round(self.elapsed(), 1)}
        if name == "stage1":
            keys = ("images", "psnr_db", "ssim", "codebook_usage_pct", "perplexity")
            result |= {k: v for k, v in read_json(self.work / "stage1" / "eval.json").items() if k in keys}
            result["train_steps"] = last_train_log(self.work / "stage1").get("step")
            grid = self.work / "stage1" / "reconstructions.png"  # written beside the JSON
            if grid.is_file():
                shutil.copy(grid, self.out / "stage1_reconstructions.png")
        else:
            run_dir = self.work / name
            scores = read_json(run_dir / "eval.json")
            result |= {k: scores[k] for k in SCORES if k in scores}
            result |= {
                "parameters": parameter_count(run_dir / "transformer"),
                "eval_curve": eval_curve(run_dir),
            }
            last = last_train_log(run_dir)
            result |= {
                k.removeprefix("train/"): last[k]
                for k in ("step", "train/image_loss", "train/steps_per_s")
                if k in last
            }
            grid = run_dir / "heldout_samples.png"
            if grid.is_file():
                shutil.copy(grid, self.out / f"heldout_samples_{name}.png")
        if result["status"] != "ok":
            result["log_tail"] = tail(log)
        self.record(name, result)

    def record(self, name: str, result: dict) -> None:
        self.summary["variants"][name] = {**self.summary["variants"].get(name, {}), **result}
        self.write_summary()

    def write_summary(self, finished: bool = False) -> None:
        self.summary |= {"elapsed_s": round(self.elapsed(), 1), "finished": finished}
        write_json(self.out / "summary.json", self.summary)  # a kill never leaves half a file


def parameter_count(model_dir: Path) -> int | None:
    from safetensors import safe_open

    path = model_dir / "model.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as weights:
        return sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())  # noqa: SIM118


def eval_curve(run_dir: Path) -> list[list[float]]:
    """[step, held-out bits per image with the caption] at each evaluation during training."""
    rows = [row for row in read_metrics(run_dir) if "eval/bits_per_image" in row]
    return [[row["step"], round(row["eval/bits_per_image"], 1)] for row in rows]


def cell(row: dict, key: str, width: int, digits: int = 1) -> str:
    value = row.get(key)
    return f"{value:>{width}.{digits}f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"


def format_table(summary: dict) -> str:
    head = f"{'variant':<11} {'params':>7} {'steps':>6} {'bits c/e':>13} {'style':>6} {'top1':>5} {'top5':>5}"
    head += f" {'neg st':>6} {'neg t5':>6} {'tr t5':>6} {'div':>5}  status"
    lines = [head]
    for name, r in summary["variants"].items():
        if name == "stage1":
            continue
        params = f"{r['parameters'] / 1e6:>6.1f}M" if r.get("parameters") else f"{'-':>7}"
        bits = f"{cell(r, 'bits_per_image', 6)}/{cell(r, 'bits_per_image_empty_caption', 6)}"
        lines.append(
            f"{name:<11} {params} {r.get('steps', '-'):>6} {bits} {cell(r, 'style_accuracy_pct', 6)} "
            f"{cell(r, 'retrieval_top1_pct', 5)} {cell(r, 'retrieval_top5_pct', 5)} "
            f"{cell(r, 'negative_style_accuracy_pct', 6)} {cell(r, 'negative_retrieval_top5_pct', 6)} "
            f"{cell(r, 'train_pairs_retrieval_top5_pct', 6)} {cell(r, 'diversity_mse', 5, 3)}  {r['status']}"
        )
    if "stage1" in summary["variants"]:
        lines.append(f"stage 1: {json.dumps(summary['variants']['stage1'])[:300]}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vqvae", required=True, help="the stage-1 model folder every variant trains on")
    p.add_argument("--data", required=True, help="emoji data folder from scripts/get_emoji.sh")
    p.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=["cpu_recipe", "h384_l6", "h768_l12", "h1024_l16"]
    )
    p.add_argument("--budget", type=float, default=480, help="seconds for everything")
    p.add_argument("--probe_steps", type=int, default=60)
    p.add_argument("--probe_limit", type=float, default=100, help="seconds the probes may take")
    p.add_argument("--score_reserve", type=float, default=100, help="seconds kept for scoring after training")
    p.add_argument("--safety", type=float, default=0.8, help="share of the time left that training plans for")
    p.add_argument("--min_steps", type=int, default=200, help="a variant that fits fewer steps is skipped")
    p.add_argument("--stage1_config", default="configs/stage1_emoji32.yaml")
    p.add_argument("--stage1_steps", type=int, default=5000, help="0: no stage-1 run")
    p.add_argument("--allow-cpu", action="store_true", help="run without CUDA too (the tests' dry run)")
    p.add_argument("--work", type=Path, default=ROOT / "outputs" / "emoji_prior_sweep_work")
    p.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="wheels to install first")
    p.add_argument("--site", type=Path, default=Path("/tmp/site"), help="where to install them")
    args = p.parse_args(argv)
    if not Path(args.vqvae).is_dir():
        p.error(f"--vqvae {args.vqvae} is not a folder: pass the stage-1 model folder (<run>/vqvae)")
    if not (Path(args.data) / "train").is_dir():
        p.error(f"--data {args.data} holds no train/ split: build it with bash scripts/get_emoji.sh")
    for name in ("budget", "probe_limit", "score_reserve", "safety"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(os.environ.get("OUT") or ROOT / "outputs" / "emoji_prior_sweep")
    prepare_work(args.work, WORK_MARKER, "the emoji prior sweep")  # a previous sweep's runs are emptied
    env, environment = benchmark_environment(args.wheels, args.site)
    sweep = Sweep(args, out, env)  # the budget counts from here, after torch's import
    sweep.summary["environment"] = environment
    sweep.write_summary()
    if environment["device"] == "cpu" and not args.allow_cpu:
        sys.exit("No CUDA device: this sweep is sized for a GPU (--allow-cpu runs it anyway).")
    summary = sweep.run()
    print(format_table(summary))
    print(json.dumps(summary))  # the figures in the log too, should the files not come back
    return summary


if __name__ == "__main__":
    main()
