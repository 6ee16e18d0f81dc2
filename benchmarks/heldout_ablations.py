"""Held-out ablations: one change at a time against a baseline, each trained and scored as a user would.

    python benchmarks/heldout_ablations.py --data data/sibling_b --stage1 outputs/sibling_b/stage1 \\
        --out outputs/ablations_b [--runs baseline wd0.1 hidden256] [--num-captions 200]

For every run: stage 2 trains through the real entry point (``accelerate launch -q
stage2_transformer/train.py --config configs/stage2_tiny.yaml`` on ``--data`` with the run's
overrides), ``pipeline.assemble`` joins it to the stage-1 run, and ``scripts/demo_heldout.py`` samples
the folder's held-out captions at guidance 1 and 3 and reads them back with the pixel checker. A run
with sampling settings only (temperature, top-k, the plausibility cut) reuses the baseline's model.
Stage 1 is shared, so the runs differ in one thing; a stage-1 change is its own baseline (train stage
1 with the change, then pass its run as ``--stage1``). ``--stage2-flags`` changes every run, the baseline
too: ``--stage2-flags="--codes.shift_pixels 0"`` measures the changes against the recipe before the
shifted views (the README's table).

The table (all four attributes right, and each attribute, in % of the held-out captions; held-out bits
per image with and without the caption; training seconds) is printed and written as ``ablations.json``
in ``--out``, rewritten after each run. A run whose scores exist is not run again, so an interrupted
sweep resumes. Each training run of the tiny config takes about 10 minutes on 2 CPU cores; the
scores of 200 captions at two guidance scales under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from pipeline.sharing import run_record  # noqa: E402
from scripts.demo_heldout import main as demo_heldout  # noqa: E402

# name -> (stage-2 overrides, sampling overrides); one change from the tiny configs each.
RUNS: dict[str, tuple[list[str], list[str]]] = {
    "baseline": ([], []),
    "shift0": (["--codes.shift_pixels", "0"], []),
    "shift1": (["--codes.shift_pixels", "1"], []),
    "steps600": (["--train.max_steps", "600"], []),
    "steps2400": (["--train.max_steps", "2400"], []),
    "lr0.75e-3": (["--train.learning_rate", "7.5e-4"], []),
    "lr3e-3": (["--train.learning_rate", "3e-3"], []),
    "wd0.1": (["--train.weight_decay", "0.1"], []),
    "dropout0.1": (["--model.dropout", "0.1"], []),
    "hidden256": (["--model.hidden_size", "256"], []),
    "layers6": (["--model.num_layers", "6"], []),
    "caption_dropout0.2": (["--loss.caption_dropout", "0.2"], []),
    "text_weight0": (["--loss.text_weight", "0", "--loss.image_weight", "1"], []),
    "temperature0.85": ([], ["--temperature", "0.85"]),
    "top_k8": ([], ["--top-k", "8"]),
    "cut0": ([], ["--guidance-plausibility", "0"]),
    "cut0.2": ([], ["--guidance-plausibility", "0.2"]),
}
ATTRIBUTES = ("all_four", "color", "shape", "position", "size")


def train_and_assemble(
    name: str, overrides: list[str], args: argparse.Namespace
) -> tuple[Path, float | None]:
    """Train stage 2 with ``overrides`` and assemble the pipeline: (its folder, training seconds)."""
    run_dir, pipe_dir = Path(args.out) / name / "stage2", Path(args.out) / name / "pipeline"
    if (pipe_dir / "pipeline_config.json").is_file():
        return pipe_dir, None  # trained by an earlier sweep
    # `accelerate launch`, from this interpreter (its environment need not be on PATH)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "-q"]
    launch += ["--num_cpu_threads_per_process", str(args.threads)]
    data = [
        "--data.source",
        "imagefolder",
        "--data.path",
        args.data,
        "--vqvae",
        str(Path(args.stage1) / "vqvae"),
    ]
    outputs = ["--train.output_dir", str(run_dir), "--codes.cache_dir", str(Path(args.out) / "codes")]
    script = [str(ROOT / "stage2_transformer" / "train.py"), "--config", str(ROOT / args.config)]
    command = [
        *launch,
        *script,
        *data,
        *outputs,
        "--train.report_to",
        "none",
        "--resume_from_checkpoint",
        "latest",
    ]
    command += [*args.stage2_flags, *overrides]
    start = time.perf_counter()
    log = Path(args.out) / f"{name}.train.log"
    with log.open("w") as stream:
        done = subprocess.run(command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"run {name}: training failed (exit {done.returncode}); see {log}")
    seconds = time.perf_counter() - start
    assemble = [sys.executable, "-m", "pipeline.assemble", "--stage1", args.stage1, "--stage2", str(run_dir)]
    subprocess.run([*assemble, "--out", str(pipe_dir)], cwd=ROOT, check=True, capture_output=True)
    return pipe_dir, seconds


def final_eval(run_dir: Path) -> dict:
    """The run's latest held-out bits per image, as its model card reads them."""
    figures = run_record(run_dir).get("figures", {})
    return {
        "bits_per_image": figures.get("eval/bits_per_image"),
        "bits_per_image_empty_caption": figures.get("eval/bits_per_image_empty_caption"),
    }


def score(pipe_dir: Path, sampling: list[str], out: Path, args: argparse.Namespace) -> dict:
    argv = ["--model", str(pipe_dir), "--data", args.data, "--out", str(out)]
    argv += [
        "--num-captions",
        str(args.num_captions),
        "--guidance-scales",
        *map(str, args.guidance),
        *sampling,
    ]
    return demo_heldout(argv)["scores"]


def table(results: dict) -> str:
    header = ["run", "change"]
    for g in guidance_keys(results):
        header += [f"g{g} {a}" for a in ATTRIBUTES]
    header += ["bits/img", "bits/img empty", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in results.items():
        row = [name, " ".join(r["change"]) or "-"]
        for g in guidance_keys(results):
            scores = r["scores"].get(f"guidance_{g}", {})
            row += [f"{scores.get(f'{a}_pct', float('nan')):.1f}" for a in ATTRIBUTES]
        row += [
            f"{r['bits_per_image']:.1f}" if r.get("bits_per_image") else "-",
            f"{r['bits_per_image_empty_caption']:.1f}" if r.get("bits_per_image_empty_caption") else "-",
            f"{r['train_seconds']:.0f}" if isinstance(r.get("train_seconds"), float) else "-",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def guidance_keys(results: dict) -> list[str]:
    keys = dict.fromkeys(k.removeprefix("guidance_") for r in results.values() for k in r["scores"])
    return list(keys)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data", required=True, help="an imagefolder with attribute columns (minidalle.make_shapes)"
    )
    p.add_argument("--stage1", required=True, help="a stage-1 run folder (holds vqvae/) trained on --data")
    p.add_argument("--out", required=True, help="folder for the runs, the code cache and ablations.json")
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS), metavar="RUN")
    p.add_argument("--config", default="configs/stage2_tiny.yaml")
    p.add_argument(
        "--stage2-flags",
        type=shlex.split,
        default=[],
        help='overrides shared by every run, one string: --stage2-flags="--codes.shift_pixels 0"',
    )
    p.add_argument("--num-captions", type=int, default=200)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ablations.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name in args.runs:
        if name in results:
            continue
        overrides, sampling = RUNS[name]
        base = "baseline" if not overrides else name
        pipe_dir, seconds = train_and_assemble(base, overrides, args)
        results[name] = {
            "change": overrides + sampling,
            "train_seconds": seconds if base == name else None,  # a sampling-only run trained nothing
            **final_eval(pipe_dir.parent / "stage2"),
            "scores": score(pipe_dir, sampling, out / name / "heldout", args),
        }
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(table(results), flush=True)
    print(f"\n{table(results)}\nwrote {path}")
    return results


if __name__ == "__main__":
    main()
