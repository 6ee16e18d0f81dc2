"""What both train scripts share: the training config, LR schedule, checkpoints, and fault handling.

Checkpoints are folders ``<output_dir>/checkpoints/checkpoint-<step>``, written by
``accelerator.save_state`` (which knows DDP, FSDP and DeepSpeed) plus an exported, loadable model.
A checkpoint is written to ``checkpoint-<step>.tmp`` and renamed only once complete, with a marker
file inside; a run killed mid-write leaves a ``.tmp`` folder that is never picked as latest and
never causes an older, good checkpoint to be deleted. The marker records the step, the number of
processes and (when every process holds the whole model) a digest of each process's weights, which
must all be equal.

Test hooks: ``MINIDALLE_FAULTS`` (see ``fault_active``) injects faults at named places, e.g. a SIGKILL
between writing a checkpoint and renaming it, or a NaN loss at given steps. Real runs never set it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

FAULTS_ENV = "MINIDALLE_FAULTS"

COMPLETE_MARKER = "checkpoint_complete.json"
RUN_CONFIG = "run_config.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainConfig:
    output_dir: str = "outputs/run"
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 32  # per process, per micro-step
    gradient_accumulation_steps: int = 1
    learning_rate: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to learning_rate * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # "no", "bf16" or "fp16"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 250
    image_every: int = 250  # reconstruction/sample grids
    checkpoint_every: int = 250
    checkpoints_total_limit: int = 3
    resume_from_checkpoint: str | None = None  # None, "latest", or a checkpoint folder
    # End this launch after this step with a checkpoint (e.g. to fit a job's time limit); the LR
    # schedule still follows max_steps, and --resume_from_checkpoint latest continues the run.
    stop_after_steps: int | None = None
    max_nonfinite_steps: int = 10  # stop after this many non-finite steps in a row
    report_to: str = "tensorboard"  # "tensorboard" or "none"
    compile: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.max_steps >= 1, "train.max_steps must be >= 1"),
            (self.batch_size >= 1, "train.batch_size must be >= 1"),
            (self.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps must be >= 1"),
            (self.learning_rate > 0, "train.learning_rate must be > 0"),
            (0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio must lie in [0, 1]"),
            (self.warmup_steps >= 0, "train.warmup_steps must be >= 0"),
            (self.weight_decay >= 0, "train.weight_decay must be >= 0"),
            (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "train.adam_beta1/2 must lie in [0, 1)"),
            (self.max_grad_norm >= 0, "train.max_grad_norm must be >= 0 (0 disables clipping)"),
            (
                self.mixed_precision in ("no", "bf16", "fp16"),
                "train.mixed_precision must be no, bf16 or fp16",
            ),
            (self.log_every >= 1, "train.log_every must be >= 1"),
            (self.eval_every >= 0, "train.eval_every must be >= 0 (0 disables)"),
            (self.image_every >= 0, "train.image_every must be >= 0 (0 disables)"),
            (self.checkpoint_every >= 0, "train.checkpoint_every must be >= 0 (0: only at the end)"),
            (self.checkpoints_total_limit >= 1, "train.checkpoints_total_limit must be >= 1"),
            (self.max_nonfinite_steps >= 1, "train.max_nonfinite_steps must be >= 1"),
            (self.report_to in ("tensorboard", "none"), "train.report_to must be tensorboard or none"),
            (
                self.stop_after_steps is None or self.stop_after_steps >= 1,
                "train.stop_after_steps must be >= 1",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup, total, floor = cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------- output folder


def prepare_output_dir(output_dir: str | Path, run_config: dict, resuming: bool, is_main: bool) -> Path:
    """Refuse to write into a folder that holds another run, unless resuming it.

    A folder holds a run once training has logged or checkpointed anything; one left by a launch that
    stopped at a configuration or data error (only ``run_config.json``) is reused.
    """
    out = Path(output_dir)
    saved = out / RUN_CONFIG
    if not resuming and holds_run(out):
        raise FileExistsError(
            f"Output folder {str(out)!r} already holds a run. Pass --resume_from_checkpoint latest to "
            "continue it, or choose another --train.output_dir."
        )
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not (resuming and saved.exists()):
            saved.write_text(json.dumps(run_config, indent=2, sort_keys=True) + "\n")
    return out


def holds_run(output_dir: str | Path) -> bool:
    out = Path(output_dir)
    root = checkpoints_root(out)
    started = root.is_dir() and any(root.glob("checkpoint-*"))
    return started or (out / "metrics.jsonl").is_file()


# ----------------------------------------------------------------------------- checkpoints


def checkpoints_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first. Folders without the completion marker are ignored."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and (child / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def resolve_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.warning(
                "No complete checkpoint in %s: starting from scratch.", checkpoints_root(output_dir)
            )
            return None
        return found[-1][1]
    path = Path(resume)
    if not (path / COMPLETE_MARKER).is_file():
        raise FileNotFoundError(
            f"{resume!r} is not a complete checkpoint folder (no {COMPLETE_MARKER}). "
            f"Use 'latest' or one of: {[str(p) for _, p in list_checkpoints(output_dir)]}."
        )
    return path


def checkpoint_step(path: Path) -> int:
    return int(json.loads((path / COMPLETE_MARKER).read_text())["step"])


def save_checkpoint(
    accelerator,
    output_dir: str | Path,
    step: int,
    export: Callable[[Path], None],
    limit: int,
    extra: dict | None = None,
    model: torch.nn.Module | None = None,
) -> Path:
    """Write a complete checkpoint atomically. Must be called on every process.

    ``export(folder)`` is called on every process too (gathering a sharded model's weights is a
    collective under FSDP and ZeRO-3) and must write only on the main process: see ``export_state_dict``.
    With ``model`` given, the marker holds each process's weight digest (``rank_param_digests``).
    """
    root = checkpoints_root(output_dir)
    final = root / f"checkpoint-{step}"
    tmp = root / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    fault_point("checkpoint_after_state", step)
    export(tmp)  # the loadable model (config.json + model.safetensors) inside the checkpoint
    marker = {"step": step, "time": time.time(), "world_size": accelerator.num_processes,
              "distributed_type": str(accelerator.distributed_type.value), **(extra or {})}  # fmt: skip
    if model is not None and not params_sharded(accelerator):
        from accelerate.utils import gather_object

        digests = gather_object([parameter_digest(unwrap(accelerator, model))])
        marker["rank_param_digests"] = digests
        if len(set(digests)) > 1:
            logger.error("The processes' weights differ at step %d (digests %s): data-parallel training "
                         "has diverged; this is a bug, please report it.", step, digests)  # fmt: skip
    if accelerator.is_main_process:
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        _fsync_tree(tmp)
        fault_point("checkpoint_before_rename", step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        # Only complete checkpoints count towards the limit, and the newest is never deleted.
        complete = list_checkpoints(output_dir)
        for _, old in complete[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob("checkpoint-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def read_marker(checkpoint: Path) -> dict:
    return json.loads((checkpoint / COMPLETE_MARKER).read_text())


def parameter_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every weight and buffer, bit for bit: equal digests mean identical models."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- engines (DDP, FSDP, DeepSpeed)


def params_sharded(accelerator) -> bool:
    """True when no process holds the whole model (FSDP, DeepSpeed ZeRO-3): its forward is collective."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return accelerator.state.deepspeed_plugin.zero_stage == 3
    return False


def export_state_dict(accelerator, model: torch.nn.Module) -> dict | None:
    """The whole model's weights, for ``save_pretrained``, on the main process (None elsewhere).

    Call on every process: under FSDP and ZeRO-3 the shards are gathered (a collective). Without
    sharding it is the unwrapped model's own state dict.
    """
    state = accelerator.get_state_dict(getattr(model, "_orig_mod", model))  # not torch.compile's wrapper
    return state if accelerator.is_main_process else None


def main_process_model(accelerator, model: torch.nn.Module, build: Callable[[], torch.nn.Module]):
    """A model the main process can run on its own (evaluation, samples). Call on every process.

    Without sharding this is the trained model itself, unwrapped. Under FSDP or ZeRO-3 the weights are
    gathered into a fresh copy made by ``build()`` on the main process; other processes get None.
    """
    if not params_sharded(accelerator):
        return unwrap(accelerator, model)
    state = export_state_dict(accelerator, model)
    if not accelerator.is_main_process:
        return None
    copy = build()
    copy.load_state_dict(state)
    return copy.to(accelerator.device)


def gather_rows(accelerator, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's ``tensor`` (N_r, ...) along dim 0, in rank order; N_r may differ.

    In rank order, the rows are the global batch in the order a single process would have seen it.
    """
    if accelerator.num_processes == 1:
        return tensor
    sizes = accelerator.gather(torch.tensor([tensor.shape[0]], device=tensor.device)).tolist()
    padded = accelerator.pad_across_processes(tensor.contiguous(), dim=0)
    gathered = accelerator.gather(padded)  # (world * max(N_r), ...)
    chunks = gathered.split(max(sizes))
    return torch.cat([chunk[:n] for chunk, n in zip(chunks, sizes)])


# ----------------------------------------------------------------------------- faults


def fault_active(name: str, step: int | None = None) -> bool:
    """Test hook: is fault ``name`` injected (at ``step``)?

    ``MINIDALLE_FAULTS`` holds comma-separated entries ``name``, ``name@step`` or ``name@first-last``.
    Names used: ``checkpoint_after_state``, ``checkpoint_before_rename`` (SIGKILL while writing the
    checkpoint of that step), ``nan_loss`` (the loss of that optimizer step becomes NaN),
    ``precompute_before_save``, ``precompute_mid_save``, ``precompute_before_merge`` (SIGKILL while
    pre-encoding; there the "step" is the process index).
    """
    spec = os.environ.get(FAULTS_ENV, "")
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        entry_name, _, steps = entry.partition("@")
        if entry_name != name:
            continue
        if not steps or step is None:
            return True
        first, _, last = steps.partition("-")
        if int(first) <= step <= int(last or first):
            return True
    return False


def fault_point(name: str, step: int | None = None) -> None:
    """Test hook: die here by SIGKILL, as a crashed machine would, when ``name`` is injected."""
    if fault_active(name, step):
        logger.error("Injected fault %r at step %s: killing this process with SIGKILL.", name, step)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


class GracefulStop:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the next step boundary and exits 0."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def should_stop(self, accelerator) -> bool:
        """True on every rank if any rank was signalled (ranks must agree to checkpoint together)."""
        flag = torch.tensor([1.0 if self.requested else 0.0], device=accelerator.device)
        if accelerator.num_processes > 1:
            flag = accelerator.reduce(flag, reduction="sum")
        return bool(flag.item() > 0)


class NonFiniteLossError(RuntimeError):
    pass


class NonFiniteGuard:
    """Skip optimizer steps whose loss or gradient is not finite; stop after too many in a row."""

    def __init__(self, max_in_a_row: int):
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self.total_skipped = 0

    def check(self, accelerator, loss: torch.Tensor, grad_norm: torch.Tensor | float | None) -> bool:
        """Returns True if the step is fine. Agrees across ranks so all skip or none does."""
        values = [loss.detach().float().reshape(1)]
        if grad_norm is not None:
            values.append(torch.as_tensor(grad_norm, dtype=torch.float32, device=loss.device).reshape(1))
        bad = torch.tensor(
            [0.0 if torch.isfinite(torch.cat(values)).all() else 1.0], device=accelerator.device
        )
        if accelerator.num_processes > 1:
            bad = accelerator.reduce(bad, reduction="sum")
        if bad.item() > 0:
            self.in_a_row += 1
            self.total_skipped += 1
            return False
        self.in_a_row = 0
        return True

    @property
    def exhausted(self) -> bool:
        return self.in_a_row >= self.max_in_a_row

    def stop_if_exhausted(
        self, accelerator, checkpoint: Callable, step: int, output_dir: Path, hint: str
    ) -> None:
        """After too many non-finite steps in a row: write a checkpoint of the last good state, exit 1."""
        if not self.exhausted:
            return
        checkpoint(step, reason="non-finite")
        accelerator.end_training()
        sys.exit(f"Stopping: {self.in_a_row} non-finite steps in a row ({hint}). Last good state saved in "
                 f"{output_dir}.")  # fmt: skip


def checkpoint_or_stop(
    accelerator, stop: GracefulStop, step: int, tcfg, checkpoint: Callable, progress
) -> bool:
    """The end of a training step: checkpoint every ``train.checkpoint_every`` steps, and when a signal
    arrived or ``train.stop_after_steps`` is reached. True when the loop must end now (exit 0, resumable)."""
    stopping = stop.should_stop(accelerator) or step == tcfg.stop_after_steps
    if stopping or (tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0):
        path = checkpoint(step)
        progress.write(f"step {step}: saved {path}")
    if stopping:
        reason = f"{stop.signal_name} received" if stop.requested else "train.stop_after_steps reached"
        progress.write(f"{reason}: checkpoint written at step {step}; "
                       "rerun with --resume_from_checkpoint latest to continue.")  # fmt: skip
        accelerator.end_training()
    return stopping


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, step): randomness that resumes exactly."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + salt) % (2**63 - 1))


def unwrap(accelerator, model: torch.nn.Module) -> torch.nn.Module:
    model = accelerator.unwrap_model(model)
    return getattr(model, "_orig_mod", model)


def infinite_batches(accelerator, dataloader, sampler, start_micro_step: int):
    """Yield (epoch, batch) forever, starting ``start_micro_step`` micro-batches into the run.

    The data order depends only on (seed, epoch), so a resumed run sees exactly the batches an
    uninterrupted run would have seen; skipped batches are not loaded.
    """
    per_epoch = len(dataloader)
    if per_epoch == 0:
        raise ValueError("The dataloader is empty: the dataset has fewer examples than one batch.")
    epoch, skip = divmod(start_micro_step, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        if hasattr(dataloader, "set_epoch"):
            dataloader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        for batch in loader:
            yield epoch, batch
        epoch, skip = epoch + 1, 0


def device_memory_metrics(device: torch.device) -> dict[str, float]:
    """Peak memory allocated by tensors on a CUDA device so far, in MiB ({} on other devices)."""
    if device.type != "cuda":
        return {}
    return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20}


class MetricsLog:
    """Appends one JSON line per logging event to <output_dir>/metrics.jsonl (main process only)."""

    def __init__(self, output_dir: str | Path, enabled: bool):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.enabled = enabled

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")


def format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def flat_config(cfg) -> dict:
    """A nested run config as flat ``section.key`` scalars, for the tracker's hyper-parameter table."""
    import dataclasses

    flat = {}
    for section, values in dataclasses.asdict(cfg).items():
        if isinstance(values, dict):
            for key, value in values.items():
                flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
        else:
            flat[section] = values
    return flat
