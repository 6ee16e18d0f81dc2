"""Where a training step's time goes: the real train script of a stage, profiled phase by phase.

    python benchmarks/profile_step.py --stage 1 [--config configs/stage1_tiny.yaml] [--steps 100] \\
        [--out benchmarks/results/profile_stage1.json] [-- --train.mixed_precision no ...]

It runs ``stage{1,2}_*/train.py``'s ``main`` in this process on the config (to a temporary output folder,
no tracker) for ``--steps`` steps under ``cProfile``, and splits the wall time into the phases of the
loop by the functions that do them:

- data: the batch iterator (``infinite_batches``: loading, decoding, collating, moving to the device);
- forward: the model's forward and its loss in training (with gradients; evaluation's are its own);
- backward: ``TrainingRun.backward``; optimizer: ``TrainingRun.optimizer_step`` (clipping, AdamW, LR);
- logging: ``TrainingRun.log``; evaluation and grids: the stage's evaluation and image-grid functions;
- checkpoint: ``TrainingRun.end_of_step`` and ``final_save`` (checkpoints and the exported model);
- set-up and the rest: loading data and models, k-means init, pre-encoding codes, the loop's own code.

The config's evaluation, grid and checkpoint intervals are scaled to ``--steps`` (so a 100-step profile
of a 1000-step config evaluates as often per step as the real run); logging keeps its interval. Arguments
after ``--`` go to the train script (e.g. ``--train.mixed_precision no`` to profile fp32). Prints a table
and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import importlib
import inspect
import json
import platform
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from minidalle.config import parse_config  # noqa: E402
from minidalle.data import infinite_batches  # noqa: E402
from minidalle.trainer import TrainingRun  # noqa: E402


def phase_functions(stage: int) -> tuple[dict[str, list], list[tuple[object, str]]]:
    """(phase name -> the functions whose cumulative time is that phase, the training forward's
    functions as (owner, attribute): evaluation calls them too, so they are timed apart)."""
    trainer = {
        "backward": [TrainingRun.backward],
        "optimizer": [TrainingRun.optimizer_step],
        "logging": [TrainingRun.log],
        "checkpoint": [TrainingRun.end_of_step, TrainingRun.final_save],
    }
    if stage == 1:
        from stage1_vqvae import train
        from stage1_vqvae.evaluation import evaluate_reconstruction
        from stage1_vqvae.model import VQVAE

        forward = [(VQVAE, "forward"), (VQVAE, "loss")]
        evaluation = [evaluate_reconstruction, train.log_reconstructions]
    else:
        from transformers import LlamaForCausalLM

        from stage2_transformer import train
        from stage2_transformer.evaluation import evaluate_prior

        forward = [(LlamaForCausalLM, "forward"), (train, "weighted_lm_loss")]
        evaluation = [evaluate_prior, train.log_samples]
    return {"data": [infinite_batches], **trainer, "evaluation and grids": evaluation}, forward


@contextlib.contextmanager
def time_with_gradients(functions: list[tuple[object, str]], seconds: list[float]):
    """Replace each ``owner.attribute`` by a wrapper adding to ``seconds[0]`` the time of the calls made
    with gradients on (training's), not those of evaluation; restore them on leaving."""
    saved = [(owner, name, getattr(owner, name)) for owner, name in functions]

    def timed(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if not torch.is_grad_enabled():
                return function(*args, **kwargs)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[0] += time.perf_counter() - start

        return wrapper

    for owner, name, function in saved:
        setattr(owner, name, timed(function))
    try:
        yield
    finally:
        for owner, name, function in saved:
            setattr(owner, name, function)


def scaled_intervals(stage: int, config: str, steps: int, output_dir: str) -> list[str]:
    """Train-script arguments that run ``steps`` steps with the config's eval/grid/checkpoint frequency."""
    run_config = importlib.import_module(
        f"stage{stage}_{'vqvae' if stage == 1 else 'transformer'}.run_config"
    )
    config_class = run_config.Stage1RunConfig if stage == 1 else run_config.Stage2RunConfig
    tcfg = parse_config(config_class, ["--config", config]).train
    scale = steps / tcfg.max_steps
    args = ["--config", config, "--train.max_steps", str(steps), "--train.output_dir", output_dir]
    args += ["--train.report_to", "none"]
    for key in ("eval_every", "image_every", "checkpoint_every"):
        every = getattr(tcfg, key)
        args += [f"--train.{key}", str(max(1, round(every * scale)) if every else 0)]
    return args


def cumulative_seconds(stats: pstats.Stats, functions: list) -> float:
    """Cumulative time of ``functions`` (their outermost calls) in ``stats``."""
    total = 0.0
    for function in functions:
        code = inspect.unwrap(function).__code__
        key = (code.co_filename, code.co_firstlineno, code.co_name)
        if key in stats.stats:
            total += stats.stats[key][3]  # (calls, primitive calls, own time, cumulative time, callers)
    return total


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", type=int, choices=[1, 2], required=True)
    p.add_argument("--config", help="default: configs/stage{1,2}_tiny.yaml")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--out", help="default: benchmarks/results/profile_stage{1,2}.json")
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be >= 2")
    config = args.config or str(ROOT / "configs" / f"stage{args.stage}_tiny.yaml")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"profile_stage{args.stage}.json")
    train = importlib.import_module(
        f"stage{args.stage}_{'vqvae' if args.stage == 1 else 'transformer'}.train"
    )

    with tempfile.TemporaryDirectory() as tmp:
        train_args = scaled_intervals(args.stage, config, args.steps, str(Path(tmp) / "run")) + extra
        functions, forward = phase_functions(args.stage)
        forward_seconds = [0.0]
        profiler = cProfile.Profile()
        start = time.perf_counter()
        with time_with_gradients(forward, forward_seconds):
            profiler.runcall(train.main, train_args)
        wall = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    phases = {name: cumulative_seconds(stats, fns) for name, fns in functions.items()}
    phases = {"data": phases.pop("data"), "forward": forward_seconds[0], **phases}
    phases["set-up and the rest"] = wall - sum(phases.values())
    report = {
        "stage": args.stage,
        "config": config,
        "steps": args.steps,
        "train_args": train_args,
        "wall_s": wall,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "phases": {
            name: {"seconds": s, "ms_per_step": 1000 * s / args.steps, "share_pct": 100 * s / wall}
            for name, s in phases.items()
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nstage {args.stage}, {Path(config).name}, {args.steps} steps, {wall:.1f} s wall")
    print(f"{'phase':<22} {'seconds':>8} {'ms/step':>8} {'share':>6}")
    for name, row in report["phases"].items():
        print(f"{name:<22} {row['seconds']:>8.2f} {row['ms_per_step']:>8.1f} {row['share_pct']:>5.1f}%")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
