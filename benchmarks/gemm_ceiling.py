"""The measured matrix-multiply ceiling of this device: TFLOP/s of large square matmuls, and the device.

    python3 benchmarks/gemm_ceiling.py [--sizes 4096 8192] [--dtype bf16] [--out gemm_ceiling.json]

A chip's datasheet peak is not what its matmuls reach (on an H200, about 790 of a listed 989 bf16
TFLOP/s), so MFU is more telling when counted against this measured ceiling. For each size N it times
N x N by N x N products on random data (zeros run faster: less switching): a few untimed products
first, then ``--repeats`` timed runs of enough back-to-back products to last about 50 ms each. A
product counts 2 N^3 operations; the median run gives the size's figure, and the ceiling is the best
size's median. The JSON (rewritten after every size) also records the device, torch and CUDA.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
RUN_SECONDS = 0.05  # length of one timed run


def device_facts(device: torch.device) -> dict:
    facts = {"device": device.type, "torch": torch.__version__, "cuda": torch.version.cuda}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts |= {
            "device_name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
        }
    else:
        facts |= {
            "device_name": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
        }
    return facts


def elapsed(device: torch.device, work, count: int) -> float:
    """Seconds taken by ``count`` calls of ``work`` (CUDA events on a GPU: no host time in it)."""
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(count):
            work()
        return time.perf_counter() - start
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(count):
        work()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1000


def measure(size: int, dtype: torch.dtype, device: torch.device, warmup: int, repeats: int) -> dict:
    generator = torch.Generator(device=device).manual_seed(size)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)  # (N, N)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)  # (N, N)
    c = torch.empty(size, size, device=device, dtype=dtype)  # (N, N), reused: no allocation timed

    def work():
        torch.matmul(a, b, out=c)

    one = elapsed(device, work, max(warmup, 1)) / max(warmup, 1)
    per_run = max(1, min(1000, round(RUN_SECONDS / one)))
    seconds = [elapsed(device, work, per_run) / per_run for _ in range(repeats)]
    flops = 2 * size**3
    return {
        "size": size,
        "products_per_run": per_run,
        "ms_median": 1000 * statistics.median(seconds),
        "tflops_median": flops / statistics.median(seconds) / 1e12,
        "tflops_best": flops / min(seconds) / 1e12,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192], help="N of the N x N products")
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--warmup", type=int, default=3, help="untimed products first")
    p.add_argument("--repeats", type=int, default=7, help="timed runs per size; the median counts")
    p.add_argument("--device", help="default: cuda when present, else cpu")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gemm_ceiling.json"))
    args = p.parse_args(argv)
    if min(args.sizes) < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--sizes and --repeats must be positive, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    report = {**device_facts(device), "dtype": args.dtype, "warmup": args.warmup, "repeats": args.repeats}
    report |= {"results": [], "ceiling_tflops": None}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"{report['device_name']} ({device}), torch {report['torch']}, CUDA {report['cuda']}, {args.dtype}")
    print(f"{'N':>6} {'ms':>9} {'TFLOP/s median':>15} {'best':>8}")
    for size in args.sizes:
        row = measure(size, DTYPES[args.dtype], device, args.warmup, args.repeats)
        report["results"].append(row)
        report["ceiling_tflops"] = max(r["tflops_median"] for r in report["results"])
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(
            f"{size:>6} {row['ms_median']:>9.3f} {row['tflops_median']:>15.1f} {row['tflops_best']:>8.1f}",
            flush=True,
        )
    print(f"ceiling: {report['ceiling_tflops']:.1f} TFLOP/s ({args.dtype}); wrote {out}")
    return report


if __name__ == "__main__":
    main()
