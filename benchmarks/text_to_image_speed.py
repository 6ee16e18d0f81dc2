"""Captions to pixels: images/s of sampling the codes and decoding them, against an earlier commit, side by side.

    python benchmarks/text_to_image_speed.py [--baseline-ref 12cfd47] [--batch 200] [--threads 2] \\
        [--dtype fp32] [--rounds 3] [--out benchmarks/results/text_to_image_speed.json]

Times the work a user waits for: ``sample_image_codes`` for a batch of captions with one seeded
generator per image (as the pipeline samples), then ``VQVAE.decode_codes`` of the codes, with guidance
off (scale 1) and on (``--guidance-scale``, default 3), on random models of the demo's size (the tiny
configs of this tree: 8x8 codes from a book of 512, 16 caption tokens, 4 layers, hidden 128, which
``--hidden-size`` overrides; weights do not change the speed). Both trees time models of this one size,
whatever their own configs say (12cfd47's demo was 192 wide): a speed-up is only computed between models
of equal parameter counts. Each setting runs in a fresh process, ``--repeats`` times after one warm-up,
and its fastest run counts (the least disturbed by other work on the machine).

With ``--baseline-ref`` the same timing code runs against that commit's library (checked out into a
temporary git worktree) and against this tree's, alternating, ``--rounds`` times; each side's median
counts and the speed-up is their ratio: figures from one run on one machine, where absolute figures
from different runs or machines of one kind (2-3x apart) would mislead. The calls timed exist in every
version of the library since 12cfd47. The baseline always runs in float32 (its CPU default);
``--dtype`` sets this tree's precision: of the transformer, and under bf16 of the VQ-VAE's decode too (its
weights stay float32), as the pipeline runs on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere; a timed tree goes before it (time_one_setting)

from benchmarks.worktree import checked_out  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline-ref", help="also time this git commit's library, back to back (e.g. 12cfd47)")
    p.add_argument("--batch", type=int, default=200, help="images sampled and decoded at once (default 200)")
    p.add_argument("--guidance-scale", type=float, default=3.0, help="the 'guidance on' setting (default 3)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="this tree's precision")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument(
        "--hidden-size", type=int, help="the transformer's width (default: configs/stage2_tiny.yaml's)"
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs per process; the fastest counts")
    p.add_argument(
        "--rounds", type=int, default=1, help="alternations of baseline and this tree; medians count"
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "text_to_image_speed.json"))
    p.add_argument("--one", nargs=2, metavar=("TREE", "GUIDANCE"), help=argparse.SUPPRESS)  # a child process
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.rounds < 1 or args.threads < 1:
        p.error("--batch, --repeats, --rounds and --threads must be positive")
    if args.hidden_size is None:
        from benchmarks.model_sizes import stage2_setting

        args.hidden_size = stage2_setting("tiny", "cpu")[0].hidden_size
    return args


def time_one_setting(tree: Path, guidance: float, args: argparse.Namespace) -> dict:
    """In this process, with the library of ``tree``: the fastest of ``--repeats`` runs, split into codes and decode."""
    sys.path.insert(0, str(tree))  # the library under test, not the tree this file lives in
    import torch

    from benchmarks.model_sizes import stage1_setting, stage2_setting
    from stage1_vqvae.model import VQVAE
    from stage2_transformer.model import build_transformer
    from stage2_transformer.sampling import sample_image_codes

    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model_cfg, layout, _ = stage2_setting("tiny", "cpu")
    model_cfg = dataclasses.replace(model_cfg, hidden_size=args.hidden_size)  # one size for both trees
    vq_cfg, _ = stage1_setting("tiny", "cpu")
    torch.manual_seed(0)
    model = build_transformer(model_cfg, layout).to(dtype).eval()
    vqvae = VQVAE(vq_cfg).eval()  # float32 weights in any case, as the pipeline keeps them
    # A bf16 pipeline on a CPU decodes in bf16 (MiniDallePipeline._decode_dtype); the baseline, always
    # float32, is called as its library allows.
    decode = {"compute_dtype": torch.bfloat16} if args.dtype == "bf16" else {}
    g = torch.Generator().manual_seed(0)
    text = torch.randint(1, layout.text_vocab_size, (args.batch, layout.text_len), generator=g)  # (B, T)

    def run(batch: int) -> tuple[float, float]:
        generators = [torch.Generator().manual_seed(i) for i in range(batch)]
        start = time.perf_counter()
        with torch.no_grad():
            codes = sample_image_codes(
                model, layout, text[:batch], guidance_scale=guidance, generator=generators
            )
            sampled = time.perf_counter()
            pixels = vqvae.decode_codes(codes, **decode)  # (B, 3, H, W)
        end = time.perf_counter()
        assert pixels.shape[0] == batch and torch.isfinite(pixels.float()).all()
        return sampled - start, end - sampled

    run(min(8, args.batch))  # warm-up: kernels, allocator
    codes_s, decode_s = min((run(args.batch) for _ in range(args.repeats)), key=sum)
    return {
        "library": str(Path(sys.modules[VQVAE.__module__].__file__).resolve().parents[1]),  # the tree timed
        "guidance_scale": guidance,
        "batch": args.batch,
        "dtype": args.dtype,
        "hidden_size": model_cfg.hidden_size,
        "params": sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in vqvae.parameters()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "codes_s": codes_s,
        "decode_s": decode_s,
        "seconds": codes_s + decode_s,
        "images_per_s": args.batch / (codes_s + decode_s),
    }


def measure(tree: Path, guidance: float, args: argparse.Namespace, dtype: str) -> dict:
    """One setting in a fresh process against the library of ``tree``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--one", str(tree), str(guidance)]
    command += ["--batch", str(args.batch), "--dtype", dtype, "--threads", str(args.threads)]
    command += ["--repeats", str(args.repeats), "--hidden-size", str(args.hidden_size)]
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"Timing {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(time_one_setting(Path(args.one[0]), float(args.one[1]), args)))
        return {}
    scales = [1.0, args.guidance_scale]
    with checked_out(args.baseline_ref) if args.baseline_ref else contextlib.nullcontext() as baseline_tree:
        rows = []
        for scale in scales:
            rounds = []
            for _ in range(args.rounds):
                base = measure(baseline_tree, scale, args, "fp32") if baseline_tree else None
                rounds.append((base, measure(ROOT, scale, args, args.dtype)))
            rows.append(summarise(scale, rounds))
            report = write_report(args, rows)
    print_table(args, rows)
    return report


def summarise(scale: float, rounds: list[tuple[dict | None, dict]]) -> dict:
    """Medians over the rounds of each side's images/s and time split, and the speed-up."""
    mine = [r for _, r in rounds]
    row = {
        "guidance_scale": scale,
        "images_per_s": statistics.median(r["images_per_s"] for r in mine),
        "codes_s": statistics.median(r["codes_s"] for r in mine),
        "decode_s": statistics.median(r["decode_s"] for r in mine),
        "rounds": [{"this_tree": r, "baseline": b} for b, r in rounds],
    }
    if rounds[0][0] is not None:
        base = [b for b, _ in rounds]
        if {b["params"] for b in base} != {r["params"] for r in mine}:  # never a ratio of unlike models
            raise SystemExit(
                f"The baseline's models hold {base[0]['params']:,} parameters and this tree's "
                f"{mine[0]['params']:,}: their speeds do not compare. Both should build the same sizes."
            )
        row["baseline_images_per_s"] = statistics.median(b["images_per_s"] for b in base)
        row["baseline_codes_s"] = statistics.median(b["codes_s"] for b in base)
        row["baseline_decode_s"] = statistics.median(b["decode_s"] for b in base)
        row["speedup"] = row["images_per_s"] / row["baseline_images_per_s"]
        row["codes_speedup"] = row["baseline_codes_s"] / row["codes_s"]
        row["decode_speedup"] = row["baseline_decode_s"] / row["decode_s"]
    return row


def print_table(args: argparse.Namespace, rows: list[dict]) -> None:
    print(
        f"{args.batch} images per batch, {args.threads} threads, transformer {args.hidden_size} wide, "
        f"this tree in {args.dtype}"
    )
    header = f"{'guidance':>8}  {'images/s':>9}  {'codes s':>8}  {'decode s':>8}"
    if args.baseline_ref:
        header += f"  {'baseline ' + args.baseline_ref + ' images/s':>26}  {'speedup':>7}  {'codes':>6}  {'decode':>6}"
    print(header)
    print("-" * len(header))
    for row in rows:
        line = f"{row['guidance_scale']:>8g}  {row['images_per_s']:>9.1f}  {row['codes_s']:>8.3f}  {row['decode_s']:>8.3f}"
        if args.baseline_ref:
            line += (
                f"  {row['baseline_images_per_s']:>26.1f}  {row['speedup']:>6.2f}x  {row['codes_speedup']:>5.2f}x"
                f"  {row['decode_speedup']:>5.2f}x"
            )
        print(line)
    print(f"wrote {args.out}")


def write_report(args: argparse.Namespace, rows: list[dict]) -> dict:
    report = {
        "batch": args.batch,
        "threads": args.threads,
        "hidden_size": args.hidden_size,
        "dtype": args.dtype,
        "baseline_ref": args.baseline_ref,
        "baseline_dtype": "fp32" if args.baseline_ref else None,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
