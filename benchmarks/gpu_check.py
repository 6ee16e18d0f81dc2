"""The GPU check: one command, sized for one 10-minute run on a GPU machine, that returns figures as it goes.

    bash scripts/get_gpu_wheels.sh                  # here, once: the packages the GPU image lacks
    OUT=results python3 benchmarks/gpu_check.py     # there (python3 only; no network needed)

First the wheels in .whl/ are installed into /tmp/site (for the packages the image lacks: datasets).
Then the steps run, most valuable first, each under its own time limit, all inside ``--budget``
seconds (default 480); a step is skipped when too little of the budget is left for it:

1. environment: device, torch, CUDA, and the measured bf16 matmul ceiling (gemm_ceiling.py);
2. train_eager: stage-2 training at the GPU config (train_throughput.py): tokens/s, peak memory, MFU
   against the measured ceiling;
3. train_compile: the same with torch.compile (when train_throughput.py offers --compile);
4. sampling: images/s at the GPU config, batch 1, 8 and 32, guidance off and on (sampling_speed.py);
5. end_to_end: both tiny stages trained in bf16 on the built-in data, the VQ-VAE evaluated, the
   pipeline assembled and scored by the checker on held-out captions (demo_heldout.py);
6. fsdp2: a few stage-2 steps under FSDP2 in one process (configs/accelerate/fsdp.yaml).

After every step, its JSON (status, seconds, figures, the end of its log) and summary.json are written
into $OUT (default outputs/gpu_check): 7 files at most. Models, logs and full JSON go to ``--work``.
Without CUDA the check stops after step 1 unless ``--allow-cpu`` (the tests' dry run: tiny sizes).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks.step_runner import Runner, Step, compact, prepare_work, read_json, read_metrics, scalars  # noqa: E402

PYTHON = sys.executable
# The packages the code base uses, and those datasets needs: their versions are reported.
PACKAGES = ["torch", "transformers", "accelerate", "tokenizers", "safetensors", "numpy", "pillow", "pyyaml"]
PACKAGES += [
    "tqdm",
    "tensorboard",
    "datasets",
    "dill",
    "multiprocess",
    "pyarrow",
    "pandas",
    "fsspec",
    "xxhash",
]
PACKAGES += ["huggingface-hub"]
# Each step's own time limit and the least time it needs (s), most valuable first. At the default
# budget of 480 s the limits add up to more: a step that ends early leaves its time to the later ones.
STEPS = {
    "environment": (60, 10),
    "train_eager": (75, 30),
    "train_compile": (120, 45),
    "sampling": (150, 40),
    "end_to_end": (240, 90),
    "fsdp2": (60, 25),
}
WORK_MARKER = ".gpu_check_work"  # a work folder holding it is the check's own, and is emptied


class GPUCheck:
    """The steps: their commands and the figures read from what they wrote."""

    def __init__(self, args: argparse.Namespace, runner: Runner, packages: dict):
        self.args, self.run, self.work, self.packages = args, runner, runner.work, packages
        self.help_texts: dict[str, str] = {}

    def steps(self) -> list[Step]:
        return [
            Step(name, limit, minimum, getattr(self, name), getattr(self, f"{name}_figures"))
            for name, (limit, minimum) in STEPS.items()
        ]

    # ------------------------------------------------------------------ 1. environment
    def environment(self) -> list[list[str]]:
        sizes = [str(n) for n in self.args.gemm_sizes]
        return [
            self.python("benchmarks/gemm_ceiling.py", "--sizes", *sizes, "--out", self.json("environment"))
        ]

    def environment_figures(self) -> dict:
        return {**compact(read_json(self.run.json_path("environment"))), **self.packages}

    # ------------------------------------------------------------------ 2, 3. training throughput
    def train_eager(self) -> list[list[str]] | str:
        return self.train("train_eager")

    def train_eager_figures(self) -> dict:
        return self.train_figures("train_eager")

    def train_compile(self) -> list[list[str]] | str:
        return self.train("train_compile", "--compile")

    def train_compile_figures(self) -> dict:
        return self.train_figures("train_compile")

    def train(self, name: str, *flags: str) -> list[list[str]] | str:
        script = "benchmarks/train_throughput.py"
        missing = [flag for flag in flags if not self.offered(script, flag)]
        if missing:
            return f"{script} --help lists no {' '.join(missing)}"
        command = self.python(script, "--sizes", self.args.train_size, *flags, "--out", self.json(name))
        stage2_only = self.offered(script, "--stages", "2")
        return [[*command, *stage2_only, *self.offered(script, "--steps", str(self.args.train_steps))]]

    def train_figures(self, name: str) -> dict:
        figures = compact(read_json(self.run.json_path(name)))
        ceiling = self.run.figures_of("environment").get("ceiling_tflops")
        for row in figures["results"]:
            if ceiling and row.get("achieved_tflops") is not None:
                row["mfu_of_measured_ceiling"] = row["achieved_tflops"] / ceiling
        return figures

    # ------------------------------------------------------------------ 4. sampling
    def sampling(self) -> list[list[str]]:
        script, a = "benchmarks/sampling_speed.py", self.args
        batches = [str(b) for b in a.sampling_batches]
        command = self.python(script, "--size", a.sampling_size, "--batch-sizes", *batches)
        command += ["--out", self.json("sampling")]
        command += self.offered(script, "--repeats", str(a.sampling_repeats))
        # Recomputing the whole sequence at every step is the slow baseline: at the GPU size its time
        # is better spent on the cached methods.
        methods = re.search(r"--methods \{([^}]*)\}", self.help_text(script))
        if methods:
            command += ["--methods", *[m for m in methods.group(1).split(",") if m != "recompute"]]
        return [command]

    def sampling_figures(self) -> dict:
        return compact(read_json(self.run.json_path("sampling")))

    # ------------------------------------------------------------------ 5. end to end
    def end_to_end(self) -> list[list[str]]:
        w = self.work
        stage1, stage2, pipeline = str(w / "stage1"), str(w / "stage2"), str(w / "pipeline")
        evaluate = ["-m", "stage1_vqvae.evaluate", "--model", f"{stage1}/vqvae", *self.data_flags()]
        evaluate += ["--config", "configs/stage1_tiny.yaml", "--output_json", str(w / "stage1_eval.json")]
        assemble = ["-m", "pipeline.assemble", "--stage1", stage1, "--stage2", stage2, "--out", pipeline]
        return [
            self.train_run("stage1", self.args.stage1_steps, "single_gpu"),
            self.python(*evaluate),
            self.train_run("stage2", self.args.stage2_steps, "single_gpu"),
            self.python(*assemble, "--overwrite"),
            self.python("scripts/demo_heldout.py", "--model", pipeline, "--out", str(w / "heldout")),
        ]

    def end_to_end_figures(self) -> dict:
        return {
            "stage1_last_train_log": last_train_log(self.work / "stage1"),
            "stage1_eval": scalars(read_json(self.work / "stage1_eval.json")),
            "stage2_last_train_log": last_train_log(self.work / "stage2"),
            "heldout": read_json(self.work / "heldout" / "heldout_scores.json").get("scores"),
        }

    # ------------------------------------------------------------------ 6. FSDP2
    def fsdp2(self) -> list[list[str]] | str:
        if not (self.work / "stage1" / "vqvae").is_dir():
            return "needs the stage-1 model that end_to_end trains"
        command = self.train_run("fsdp2", self.args.fsdp_steps, "fsdp", "--num_processes", "1")
        return [[*command, "--train.log_every", "1"]]

    def fsdp2_figures(self) -> dict:
        shards = (self.work / "fsdp2" / "checkpoints").glob("*/pytorch_model_fsdp_0")  # FSDP's own layout
        return {"last_train_log": last_train_log(self.work / "fsdp2"), "sharded_checkpoint": any(shards)}

    # ------------------------------------------------------------------ helpers
    def python(self, *arguments: str) -> list[str]:
        return [PYTHON, *arguments]

    def json(self, step: str) -> str:
        return str(self.run.json_path(step))

    def data_flags(self) -> list[str]:
        return ["--data.builtin_cache_dir", str(self.work / "data")]

    def train_run(self, run: str, steps: int, launch_config: str, *launch_options: str) -> list[str]:
        """``accelerate launch`` of a tiny run in bf16 in the work folder (stage 2 on its stage-1 model)."""
        config = f"configs/accelerate/{launch_config}.yaml"
        launch = ["-m", "accelerate.commands.launch", "--config_file", config, *launch_options]
        if run == "stage1":
            script = ["stage1_vqvae/train.py", "--config", "configs/stage1_tiny.yaml"]
        else:
            script = ["stage2_transformer/train.py", "--config", "configs/stage2_tiny.yaml"]
            stage1_model, codes = str(self.work / "stage1" / "vqvae"), str(self.work / "codes")
            script += ["--vqvae", stage1_model, "--codes.cache_dir", codes]
        script += ["--train.output_dir", str(self.work / run), "--train.max_steps", str(steps)]
        script += ["--train.mixed_precision", "bf16", "--train.report_to", "none", *self.data_flags()]
        return self.python(*launch, *script)

    def offered(self, script: str, flag: str, *values: str) -> list[str]:
        """``[flag, *values]`` when the script's --help lists the flag, else []: the benchmarks change."""
        return [flag, *values] if re.search(rf"{flag}(?![\w-])", self.help_text(script)) else []

    def help_text(self, script: str) -> str:
        if script not in self.help_texts:
            command = self.python(script, "--help")
            limit = max(self.run.remaining(), 1)
            done = subprocess.run(
                command, cwd=ROOT, env=self.run.env, capture_output=True, text=True, timeout=limit
            )
            self.help_texts[script] = done.stdout
        return self.help_texts[script]


def last_train_log(run_dir: Path) -> dict:
    """The last training line of a run's metrics.jsonl ({} when there is none)."""
    return next(
        (row for row in reversed(read_metrics(run_dir)) if any(k.startswith("train/") for k in row)), {}
    )


def install_wheels(wheels: Path, site: Path) -> dict:
    """pip-install the wheels in ``wheels`` into ``site`` (no index, no dependencies): which ones."""
    files = sorted(wheels.glob("*.whl"))
    if not files:
        return {"from_wheels": []}
    options = ["-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade", "--target"]
    command = [PYTHON, "-m", "pip", "install", *options, str(site), *map(str, files)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return {"from_wheels": [], "wheel_error": done.stderr[-2000:]}
    sys.path.insert(0, str(site))  # so that the package versions below see them
    return {"from_wheels": [f.name.split("-")[0] for f in files], "site": str(site)}


def child_env(site: Path) -> dict[str, str]:
    """The environment of the commands a GPU benchmark runs: this tree and ``site`` (where install_wheels
    put the packages the image lacks) importable, output unbuffered, the hubs offline (GPU machines have
    no network: fail at once, not after retries)."""
    python_path = os.pathsep.join(p for p in (str(ROOT), str(site), os.environ.get("PYTHONPATH")) if p)
    env = {
        **os.environ,
        "PYTHONPATH": python_path,
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    return env


def benchmark_environment(wheels: Path, site: Path) -> tuple[dict[str, str], dict]:
    """For a benchmark whose runs share one GPU: install the wheels, then return the commands' environment
    (``child_env``) and what to report about the machine (device, wheels installed, package versions)."""
    packages = install_wheels(wheels, site)  # before anything imports datasets
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return child_env(site), {"device": device, **packages, "packages": package_versions()}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=480, help="seconds for all the steps together")
    p.add_argument(
        "--steps", nargs="+", choices=STEPS, default=list(STEPS), help="run only these (in the usual order)"
    )
    p.add_argument("--allow-cpu", action="store_true", help="run the steps without CUDA too")
    p.add_argument(
        "--work", type=Path, default=ROOT / "outputs" / "gpu_check_work", help="models, logs, full JSON"
    )
    p.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="wheels to install first")
    p.add_argument("--site", type=Path, default=Path("/tmp/site"), help="where to install them")
    p.add_argument(
        "--limit", action="append", default=[], metavar="STEP=SECONDS", help="a step's own time limit"
    )
    p.add_argument(
        "--substitute",
        action="append",
        default=[],
        metavar="STEP=SHELL",
        help="run this shell command instead of a step's own (to test the check itself)",
    )
    p.add_argument("--gemm-sizes", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--train-size", default="gpu", help="train_throughput.py's size")
    p.add_argument("--train-steps", type=int, default=10, help="timed training steps")
    p.add_argument("--sampling-size", default="gpu", help="sampling_speed.py's size")
    p.add_argument("--sampling-batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--sampling-repeats", type=int, default=1)
    p.add_argument("--stage1-steps", type=int, default=1000, help="end_to_end: stage-1 steps (tiny config's)")
    p.add_argument("--stage2-steps", type=int, default=1200, help="end_to_end: stage-2 steps (tiny config's)")
    p.add_argument("--fsdp-steps", type=int, default=5)
    args = p.parse_args(argv)
    args.limit = dict(pair_of(item, p, float) for item in args.limit)
    args.substitute = dict(pair_of(item, p, str) for item in args.substitute)
    return args


def pair_of(item: str, parser: argparse.ArgumentParser, kind) -> tuple:
    name, sep, value = item.partition("=")
    if not sep or name not in STEPS:
        parser.error(f"expected STEP=VALUE with STEP one of {', '.join(STEPS)}, got {item!r}")
    return name, kind(value)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(os.environ.get("OUT") or ROOT / "outputs" / "gpu_check")
    prepare_work(args.work, WORK_MARKER, "the GPU check")
    for old in [*out.glob("[0-9][0-9]_*.json"), out / "summary.json"]:  # a previous run's results
        old.unlink(missing_ok=True)
    env = child_env(args.site)
    runner = Runner(out, args.work, args.budget, env, cwd=ROOT)
    runner.limits, runner.substitutes = args.limit, args.substitute
    packages = install_wheels(args.wheels, args.site)  # before anything imports datasets
    packages["packages"] = package_versions()
    print(f"from wheels: {packages['from_wheels'] or 'none'}; results into {out}", flush=True)
    stop = None
    for index, step in enumerate(GPUCheck(args, runner, packages).steps(), 1):
        if step.name in args.steps:
            runner.run(index, step, skip_reason=stop)
        if step.name == "environment" and runner.figures_of("environment").get("device") == "cpu":
            stop = None if args.allow_cpu else "no CUDA device (--allow-cpu runs the steps anyway)"
    runner.write_summary(finished=True)
    print(json.dumps(runner.summary))  # the figures in the log too, should the files not come back
    return runner.summary


if __name__ == "__main__":
    main()
