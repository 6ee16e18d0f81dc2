"""The training settings both stages share (``train:`` in the YAML configs) and the LR schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from minidalle.arguments import MAX_BATCH_SIZE
from minidalle.trackers import check_report_to


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
    # "no", "bf16", "fp16", or "auto": bf16 where the device computes it natively (minidalle.devices).
    mixed_precision: str = "no"
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
    report_to: str = "tensorboard"  # "none" or a tracker accelerate supports: tensorboard, wandb, mlflow...
    compile: bool = False  # torch.compile the model after Accelerate's wrapping (stage 2)
    # torch.compile's backend: "inductor" generates kernels; "aot_eager" traces forward and backward the
    # same way and runs them eagerly, which finds a graph that does not compile in seconds, not minutes.
    compile_backend: str = "inductor"
    # CUDA only (CPU runs are unchanged): fp32 matmuls on TF32 tensor cores, and AdamW as one fused kernel.
    tf32: bool = True
    fused_adamw: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.max_steps >= 1, "train.max_steps must be >= 1"),
            (1 <= self.batch_size <= MAX_BATCH_SIZE, f"train.batch_size must lie in [1, {MAX_BATCH_SIZE}]"),
            (self.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps must be >= 1"),
            (self.learning_rate > 0, "train.learning_rate must be > 0"),
            (0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio must lie in [0, 1]"),
            (self.warmup_steps >= 0, "train.warmup_steps must be >= 0"),
            (self.weight_decay >= 0, "train.weight_decay must be >= 0"),
            (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "train.adam_beta1/2 must lie in [0, 1)"),
            (self.max_grad_norm >= 0, "train.max_grad_norm must be >= 0 (0 disables clipping)"),
            (
                self.mixed_precision in ("no", "bf16", "fp16", "auto"),
                "train.mixed_precision must be no, bf16, fp16 or auto",
            ),
            (self.log_every >= 1, "train.log_every must be >= 1"),
            (self.eval_every >= 0, "train.eval_every must be >= 0 (0 disables)"),
            (self.image_every >= 0, "train.image_every must be >= 0 (0 disables)"),
            (self.checkpoint_every >= 0, "train.checkpoint_every must be >= 0 (0: only at the end)"),
            (self.checkpoints_total_limit >= 1, "train.checkpoints_total_limit must be >= 1"),
            (self.max_nonfinite_steps >= 1, "train.max_nonfinite_steps must be >= 1"),
            (
                self.stop_after_steps is None or self.stop_after_steps >= 1,
                "train.stop_after_steps must be >= 1",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        check_report_to(self.report_to)
        if self.compile_backend != "inductor":
            from torch._dynamo import list_backends

            if self.compile_backend not in list_backends(exclude_tags=()):
                raise ValueError(
                    f"train.compile_backend {self.compile_backend!r} is not a torch.compile backend; "
                    f"use one of {', '.join(list_backends())}, or aot_eager or eager to debug a compile"
                )


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to ``learning_rate``, then a cosine down to ``learning_rate * min_lr_ratio``.

    Kept by hand: transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` starts warmup at LR 0
    (step / W) where this starts at lr / (W + 1) ((step + 1) / (W + 1)); the same after warmup, but
    switching would change every trained model and figure reported so far.
    """
    warmup, total, floor = cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def restore_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Set the schedule to where it is after ``step`` optimizer steps. A LambdaLR's state is only its step
    count, so resuming needs no pickled scheduler file (which would run code on loading)."""
    lrs = [base * factor(step) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    scheduler.load_state_dict({**scheduler.state_dict(), "last_epoch": step, "_last_lr": lrs})
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
