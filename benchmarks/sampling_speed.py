"""Sampling throughput of the stage-2 transformer: KV cache against recomputing the whole sequence.

    python benchmarks/sampling_speed.py [--model outputs/pipeline_tiny] [--batch-sizes 1 8 32] \\
        [--guidance-scale 3] [--device cpu] [--out benchmarks/results/sampling_speed.json]

For each batch size, with guidance off (scale 1) and on (conditional and unconditional halves in one
batched pass), it times ``sample_image_codes`` on the same model and prompts in up to four ways
(``--methods``):

- ``recompute``: no cache, the whole sequence is run again at every step (the baseline);
- ``hf-cache``: transformers' own forward with its ``DynamicCache``;
- ``hf-static-compile``: transformers' forward over its ``StaticCache`` with the one-token step
  ``torch.compile``d (CUDA graphs on a GPU); its compile time per batch shape is reported apart;
- ``kv-cache``: the pipeline's default, ``KVDecoder`` (preallocated cache, fused projections);

and reports images per second (image codes only; the VQ-VAE decode is not timed) and each way's speedup
over recomputation. Without ``--model`` it builds a random model of ``--size`` (default tiny, the demo's:
8x8 codes from a book of 512, 16 caption tokens, hidden 192, 4 layers): weights do not change the
speed, and it runs anywhere. Each setting runs ``--repeats`` times after one warm-up; the best run
counts (the least disturbed by other jobs on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks.model_sizes import SIZES, stage2_setting  # noqa: E402
from minidalle.devices import resolve_device_dtype  # noqa: E402
from stage2_transformer.model import build_transformer  # noqa: E402
from stage2_transformer.sampling import sample_image_codes  # noqa: E402

METHODS = {  # name -> sample_image_codes keyword arguments
    "recompute": {"use_cache": False},
    "hf-cache": {"use_cache": True, "cache_implementation": "dynamic"},
    "hf-static-compile": {"use_cache": True, "cache_implementation": "hf-static-compile"},
    "kv-cache": {"use_cache": True, "cache_implementation": "static"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a pipeline folder (default: a random model, see --size)")
    p.add_argument(
        "--size",
        choices=SIZES,
        default="tiny",
        help="the random model's size (benchmarks/model_sizes.py): tiny is the demo's, gpu "
        "configs/stage2_gpu.yaml's (353M parameters, 64 caption tokens + 32x32 codes)",
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=list(METHODS),
        help="ways to sample, timed in this order; speed-ups are over the first one given",
    )
    p.add_argument("--guidance-scale", type=float, default=3.0, help="the 'guidance on' setting (default 3)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per setting; the best counts")
    p.add_argument("--device", help="default: cuda when present, else cpu")
    p.add_argument("--dtype", help="fp32, bf16, fp16 (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sampling_speed.json"))
    args = p.parse_args(argv)
    if any(b < 1 for b in args.batch_sizes) or args.repeats < 1:
        p.error("--batch-sizes and --repeats must be positive")
    return args


def load_model(args: argparse.Namespace):
    device, dtype = resolve_device_dtype(args.device, args.dtype)
    if args.model:
        from pipeline import MiniDallePipeline

        pipe = MiniDallePipeline.from_pretrained(args.model, device=device, dtype=dtype)
        return pipe.transformer, pipe.layout, f"{args.model}"
    model_cfg, layout, _ = stage2_setting(args.size, device.type)
    torch.manual_seed(0)
    with torch.device(device):
        model = build_transformer(model_cfg, layout).to(dtype=dtype).eval()
    return model, layout, f"random model of the {args.size} size"


def time_sampling(model, layout, batch: int, guidance: float, method: str, repeats: int) -> float:
    """Best wall time (s) to sample ``batch`` images."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(batch)
    text = torch.randint(1, layout.text_vocab_size, (batch, layout.text_len), generator=g)  # (B, T)
    best = float("inf")
    for _ in range(repeats):
        generators = [torch.Generator(device=device).manual_seed(i) for i in range(batch)]
        _sync(device)
        start = time.perf_counter()
        sample_image_codes(
            model, layout, text, guidance_scale=guidance, generator=generators, **METHODS[method]
        )
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _compiled(method: str) -> bool:
    return METHODS[method].get("cache_implementation", "").endswith("compile")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, layout, source = load_model(args)
    device = next(model.parameters()).device
    for method in args.methods:  # warm-up: kernels, allocator (a compiled method warms up per shape below)
        if not _compiled(method):
            time_sampling(model, layout, 2, args.guidance_scale, method, 1)

    report = {
        "model": source,
        "layout": layout.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "dtype": str(next(model.parameters()).dtype),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
    }
    rows = []
    header = f"{'batch':>5}  {'guidance':>8}  {'method':>17}  {'seconds':>8}  {'images/s':>9}  {'speedup':>7}"
    print(
        f"{source}: {layout.grid_h}x{layout.grid_w} codes, {layout.text_len} caption tokens, "
        f"sequence {layout.seq_len}; {device} {next(model.parameters()).dtype}, {torch.get_num_threads()} threads"
    )
    print(header)
    print("-" * len(header))
    for batch in args.batch_sizes:
        for guidance in (1.0, args.guidance_scale):
            baseline = None
            for method in args.methods:
                # A compiled step is compiled anew for each batch shape: its first call, timed apart.
                first_call = (
                    time_sampling(model, layout, batch, guidance, method, 1) if _compiled(method) else None
                )
                seconds = time_sampling(model, layout, batch, guidance, method, args.repeats)
                baseline = baseline or seconds  # the first method given (by default recomputation)
                speedup = baseline / seconds
                row = {
                    "batch_size": batch,
                    "guidance": guidance != 1.0,
                    "guidance_scale": guidance,
                    "method": method,
                    "kv_cache": method != "recompute",
                    "seconds": seconds,
                    "images_per_s": batch / seconds,
                    f"speedup_vs_{args.methods[0]}": speedup,
                    "compile_seconds": None if first_call is None else first_call - seconds,
                }
                rows.append(row)
                write_report(args.out, report, rows)  # after every row: a killed run keeps what it measured
                print(
                    f"{batch:>5}  {('on' if row['guidance'] else 'off'):>8}  {method:>17}  "
                    f"{seconds:>8.3f}  {row['images_per_s']:>9.2f}  {speedup:>6.1f}x",
                    flush=True,
                )
    print(f"wrote {args.out}")
    return {**report, "results": rows}


def write_report(path: str, report: dict, rows: list[dict]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**report, "results": rows}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
