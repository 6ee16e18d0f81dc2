"""Training throughput of both stages: images/s (stage 1), tokens/s (stage 2), peak memory, FLOPs and MFU.

    python benchmarks/train_throughput.py [--sizes tiny mid] [--stages 1 2] [--device cuda] [--compile] \\
        [--out benchmarks/results/train_throughput.json]

Each (stage, size) runs in its own process (so peak memory is its own) and times full optimizer steps
on random inputs of the right shapes: forward, loss, backward, gradient clipping and AdamW, the work of
one step of the train scripts without data loading. The sizes (tiny = the demo's configs, mid, gpu = the
real-scale configs) are defined in benchmarks/model_sizes.py. FLOPs per step are counted by
``torch.utils.flop_counter.FlopCounterMode`` over one step (convolutions, matmuls, attention; forward
and backward); for stage 2 the 6 x parameters x tokens estimate is shown beside it. On a GPU, MFU is
counted FLOPs per second over the chip's dense peak for the precision used (bf16 autocast by default;
``--peak-tflops`` overrides the table). Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU
and the process's maximum resident set size on the CPU. Timings are the median step of ``--steps``
after ``--warmup`` steps.

The train scripts' CUDA defaults apply on a GPU: TF32 for fp32 matmuls and fused AdamW; the logits stay
in the autocast dtype (the loss upcasts its slices). ``--compile`` runs the stage-2 model through
``torch.compile`` (FLOPs counted on the eager step before; the first compiled step is ``compile_s``).
The JSON is rewritten after every setting, and a setting that fails leaves an ``error`` row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks.model_sizes import SIZES, stage1_setting, stage2_setting  # noqa: E402
from benchmarks.worktree import checked_out  # noqa: E402
from minidalle.devices import allow_tf32_on_cuda, resolve_mixed_precision  # noqa: E402
from stage1_vqvae.model import VQVAE  # noqa: E402
from stage2_transformer.loss import weighted_lm_loss  # noqa: E402
from stage2_transformer.model import build_transformer, count_parameters, prefer_fast_attention  # noqa: E402

# Dense peak TFLOP/s by device name (substring, first match), bf16 and tf32/fp32 tensor cores.
PEAK_TFLOPS = [
    ("H200", {"bf16": 989.0, "fp32": 494.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp32": 378.0}),
    ("H100", {"bf16": 989.0, "fp32": 494.0}),
    ("A100", {"bf16": 312.0, "fp32": 156.0}),
    ("L40S", {"bf16": 362.0, "fp32": 183.0}),
    ("L4", {"bf16": 121.0, "fp32": 60.0}),
    ("A10", {"bf16": 125.0, "fp32": 62.5}),
    ("4090", {"bf16": 165.0, "fp32": 82.6}),
]


def make_step(stage: int, size: str, device: str, dtype: torch.dtype | None):
    """(step function, facts about the setting, model). step() runs one optimizer step."""
    generator = torch.Generator().manual_seed(0)
    if stage == 1:
        cfg, batch = stage1_setting(size, device)
        model = VQVAE(cfg).to(device).train()
        inputs = (torch.rand(batch, 3, cfg.resolution, cfg.resolution, generator=generator) * 2 - 1).to(
            device
        )

        def loss_fn():
            out = model(inputs)
            return model.loss(inputs, out)[0]

        facts = {
            "batch_size": batch,
            "resolution": cfg.resolution,
            "grid": cfg.grid_size,
            "codebook_size": cfg.codebook_size,
            "unit": "images/s",
            "items_per_step": batch,
        }
    else:
        cfg, layout, batch = stage2_setting(size, device)
        model = build_transformer(cfg, layout).to(device).train()
        prefer_fast_attention(model, torch.device(device), "bf16" if dtype == torch.bfloat16 else "no")
        text = torch.randint(1, layout.text_vocab_size, (batch, layout.text_len), generator=generator)
        codes = torch.randint(0, layout.codebook_size, (batch, layout.num_image_tokens), generator=generator)
        seq = layout.build(text, codes).to(device)  # (B, L)

        def loss_fn():
            logits = model(input_ids=seq[:, :-1], use_cache=False).logits  # (B, L-1, V)
            return weighted_lm_loss(logits, seq, layout)[0]

        tokens = batch * (layout.seq_len - 1)
        facts = {
            "batch_size": batch,
            "seq_len": layout.seq_len,
            "hidden_size": cfg.hidden_size,
            "num_layers": cfg.num_layers,
            "unit": "tokens/s",
            "items_per_step": tokens,
            "flops_6nd_per_step": 6 * count_parameters(model) * tokens,
        }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True if device == "cuda" else None)
    autocast = torch.autocast(device_type=device, dtype=dtype) if dtype is not None else None

    def step():
        if autocast is not None:
            with autocast:
                loss = loss_fn()
        else:
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    facts["params"] = sum(p.numel() for p in model.parameters())
    return step, facts, model


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_one(
    stage: int, size: str, device: str, precision: str, steps: int, warmup: int, compiled: bool
) -> dict:
    """Runs in a child process: time one setting and report it as a dict."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    allow_tf32_on_cuda(device)
    torch.manual_seed(0)
    step, facts, model = make_step(stage, size, device, dtype)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:  # one eager step, also a warm-up
        step()
    flops = counter.get_total_flops()
    compiled = compiled and stage == 2
    if compiled:
        model.compile()  # in place: the step's calls of the model now run the compiled forward
        start = time.perf_counter()
        step()
        synchronize(device)
        facts["compile_s"] = time.perf_counter() - start
    facts["compiled"] = compiled
    for _ in range(warmup):
        step()
    synchronize(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    result = {
        "stage": stage,
        "size": size,
        **facts,
        "step_ms": 1000 * seconds,
        "throughput": facts["items_per_step"] / seconds,
        "peak_memory_mb": peak_mb,
        "flops_per_step": flops,
        "achieved_tflops": flops / seconds / 1e12,
    }
    if device == "cuda":
        result["device_name"] = torch.cuda.get_device_name()
    return result


def peak_tflops(device_name: str, precision: str, override: float | None) -> float | None:
    if override:
        return override
    key = "fp32" if precision == "fp32" else "bf16"
    for name, peaks in PEAK_TFLOPS:
        if name in device_name:
            return peaks[key]
    return None


def print_table(rows: list[dict]) -> None:
    rows = [r for r in rows if "error" not in r]
    header = (
        f"{'stage':>5} {'size':>5} {'params':>8} {'batch':>5} {'throughput':>18} {'step ms':>8} "
        f"{'peak MB':>8} {'GFLOP/step':>10} {'TFLOP/s':>8} {'MFU':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        value = r["throughput"]
        throughput = f"{value:,.0f} {r['unit']}" if value >= 100 else f"{value:.2f} {r['unit']}"
        print(
            f"{r['stage']:>5} {r['size']:>5} {r['params'] / 1e6:>7.2f}M {r['batch_size']:>5} {throughput:>18} "
            f"{r['step_ms']:>8.1f} {r['peak_memory_mb']:>8.0f} {r['flops_per_step'] / 1e9:>10.2f} "
            f"{r['achieved_tflops']:>8.3f} {mfu:>6}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    p.add_argument(
        "--sizes",
        nargs="+",
        default=["tiny", "mid"],
        choices=SIZES,
        help="gpu: configs/stage{1,2}_gpu.yaml, the real-scale models (needs a large GPU)",
    )
    p.add_argument("--device", help="default: cuda when present, else cpu")
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp16", "fp32"],
        help="default: the configs' precisions, bf16 on cuda and auto on a cpu; auto, as train.mixed_precision "
        "auto: bf16 where the device computes it natively (CUDA with bf16, a CPU with AVX512-BF16 or AMX), "
        "else fp32",
    )
    p.add_argument("--steps", type=int, help="timed steps (default: 20 on cuda, 3 on cpu)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: 3 on cuda, 1 on cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--compile", action="store_true", help="torch.compile the stage-2 model")
    p.add_argument("--peak-tflops", type=float, help="the device's dense peak, for MFU (default: a table)")
    p.add_argument(
        "--baseline-ref",
        help="also time this git commit's own benchmark (checked out in a temporary worktree, its tiny "
        "configs given this tree's model sizes), each setting back to back with this tree's, and report "
        "the speedups",
    )
    p.add_argument(
        "--baseline-precision",
        choices=["bf16", "fp16", "fp32"],
        help="the baseline's precision (default: what 12cfd47's configs used, bf16 on cuda, fp32 on cpu)",
    )
    p.add_argument("--rounds", type=int, default=1, help="with --baseline-ref: alternations; medians count")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_throughput.json"))
    p.add_argument("--one", nargs=2, metavar=("STAGE", "SIZE"), help=argparse.SUPPRESS)  # child process
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "auto")
    if args.precision == "auto":
        args.precision = (
            "fp32" if resolve_mixed_precision("auto", torch.device(args.device)) == "no" else "bf16"
        )
    args.baseline_precision = args.baseline_precision or ("bf16" if args.device == "cuda" else "fp32")
    args.steps = args.steps or (20 if args.device == "cuda" else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.device == "cuda" else 1)
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        p.error("--steps and --rounds must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        stage, size = int(args.one[0]), args.one[1]
        result = measure_one(stage, size, args.device, args.precision, args.steps, args.warmup, args.compile)
        print(json.dumps(result))
        return result
    if args.baseline_ref:
        return compare_with_baseline(args)
    rows = []
    for size in args.sizes:
        for stage in args.stages:
            rows.append(run_setting(args, stage, size))
            report = write_report(
                args, rows
            )  # at once: a later setting that fails or is killed loses nothing
    print_table(rows)
    print(f"wrote {args.out}")
    failed = [f"stage {r['stage']} {r['size']}" for r in rows if "error" in r]
    if failed:
        sys.exit(f"{', '.join(failed)} failed; their errors are in {args.out}")
    return report


def run_setting(
    args: argparse.Namespace, stage: int, size: str, root: Path = ROOT, baseline: bool = False
) -> dict:
    """One (stage, size) in its own process, with the benchmark of the tree at ``root``: its row, or its
    error (the last lines of its stderr). A baseline tree runs at ``--baseline-precision``, uncompiled,
    through the flags every version of this script takes."""
    precision = args.baseline_precision if baseline else args.precision
    command = [sys.executable, str(root / "benchmarks" / "train_throughput.py"), "--one", str(stage), size]
    command += ["--device", args.device, "--precision", precision]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    command += ["--threads", str(args.threads)] if args.threads else []
    command += ["--compile"] if args.compile and not baseline else []
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)}
    )
    if done.returncode != 0:
        print(f"stage {stage} {size} failed:\n{done.stderr[-4000:]}", file=sys.stderr)
        return {"stage": stage, "size": size, "error": done.stderr[-2000:]}
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["precision"] = precision
    peak = peak_tflops(row.get("device_name", ""), precision, args.peak_tflops)
    row["mfu"] = row["achieved_tflops"] / peak if (args.device == "cuda" and peak) else None
    row["peak_tflops"] = peak if args.device == "cuda" else None
    return row


def compare_with_baseline(args: argparse.Namespace) -> dict:
    """Each setting timed with the baseline commit's benchmark, then this tree's, ``--rounds`` times over:
    both sides see the same machine at nearly the same moment, so the ratio holds where absolute
    figures from different runs (or machines of one kind, 2-3x apart) would not."""
    with checked_out(args.baseline_ref) as tree:
        rewritten = give_baseline_these_models(tree)
        pairs = []
        for size in args.sizes:
            for stage in args.stages:
                runs = [
                    (run_setting(args, stage, size, tree, baseline=True), run_setting(args, stage, size))
                    for _ in range(args.rounds)
                ]
                pairs.append(summarise_pair(stage, size, runs))
                report = write_report(args, pairs, baseline_models_from_this_tree=rewritten)
    print(f"{'stage':>5} {'size':>5} {'baseline ' + args.baseline_ref:>22} {'this tree':>20} {'speedup':>8}")
    for row in pairs:
        if "error" in row:
            print(f"{row['stage']:>5} {row['size']:>5}  failed: {row['error'][-200:]}")
            continue
        unit = row["unit"]
        speedup = (
            f"{row['speedup']:>7.2f}x"
            if row["speedup"] is not None
            else f"  none: the models differ ({row['baseline_params']:,} and {row['params']:,} parameters)"
        )
        print(
            f"{row['stage']:>5} {row['size']:>5} {row['baseline_throughput']:>16,.0f} {unit:<5} "
            f"{row['throughput']:>14,.0f} {unit:<5} {speedup}"
        )
    print(f"wrote {args.out}")
    return report


def give_baseline_these_models(tree: Path) -> list[str]:
    """Write the ``model:`` sections of this tree's tiny configs into the baseline worktree's, so that both
    sides time the same models: a later config change (the demo's prior went from 192 to 128 wide) is
    not a speed-up. The rest of the baseline's configs stays its own. Returns the configs rewritten."""
    import yaml

    rewritten = []
    for name in ("stage1_tiny.yaml", "stage2_tiny.yaml"):
        mine = yaml.safe_load((ROOT / "configs" / name).read_text())
        path = tree / "configs" / name
        theirs = yaml.safe_load(path.read_text())
        if theirs.get("model") != mine["model"]:
            path.write_text(yaml.safe_dump({**theirs, "model": mine["model"]}, sort_keys=False))
            rewritten.append(name)
    return rewritten


def summarise_pair(stage: int, size: str, runs: list[tuple[dict, dict]]) -> dict:
    """Median throughput of each side over the rounds, and their ratio."""
    errors = [r["error"] for pair in runs for r in pair if "error" in r]
    if errors:
        return {"stage": stage, "size": size, "error": errors[0]}
    baseline = statistics.median(b["throughput"] for b, _ in runs)
    current = statistics.median(c["throughput"] for _, c in runs)
    last, first_baseline = runs[-1][1], runs[0][0]
    # Should the two models still differ (a model option the baseline's configs cannot express), their
    # throughputs say nothing about speed, and no ratio is given.
    same_model = first_baseline["params"] == last["params"]
    return {
        **last,
        "throughput": current,
        "baseline_throughput": baseline,
        "baseline_precision": runs[-1][0]["precision"],
        "baseline_params": first_baseline["params"],
        "speedup": current / baseline if same_model else None,
        "rounds": [{"baseline": b["throughput"], "this_tree": c["throughput"]} for b, c in runs],
    }


def write_report(
    args: argparse.Namespace, rows: list[dict], baseline_models_from_this_tree: list[str] | None = None
) -> dict:
    report = {
        "device": args.device,
        "device_name": next((r["device_name"] for r in rows if "device_name" in r), None),
        "precision": args.precision,
        "compile": args.compile,
        "baseline_ref": args.baseline_ref,
        "baseline_models_from_this_tree": baseline_models_from_this_tree or [],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads or torch.get_num_threads(),
        "steps": args.steps,
        "warmup": args.warmup,
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
