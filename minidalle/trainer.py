"""The training skeleton both train scripts share, one method per phase of a script.

A script builds a ``TrainingRun`` from its ``train:`` settings and calls, in order: ``claim_output_dir``,
``begin`` (seed, signal handlers), ``prepare`` (Accelerate's wrapping, the LR schedule, trackers),
``resume``; then, in its loop, ``backward`` per micro-batch inside ``accelerator.accumulate(model)``,
``optimizer_step``, ``log`` and ``end_of_step``; and ``final_save`` at the end. Everything particular to a
stage (data, model, losses, evaluation) stays in its script.

Gradient accumulation is Accelerate's: ``accumulate`` skips the gradient all-reduce until the last
micro-batch of a step and marks that one ``sync_gradients`` (DeepSpeed steps inside its backward), and
``accelerator.backward`` divides each loss by the number of micro-batches.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    GradientAccumulationPlugin,
    parse_flag_from_env,
    set_seed,
)
from tqdm.auto import tqdm

from minidalle.checkpoints import (
    check_output_dir,
    checkpoint_step,
    list_checkpoints,
    resolve_resume,
    save_checkpoint,
    write_run_config,
)
from minidalle.devices import allow_tf32_on_cuda, resolve_mixed_precision
from minidalle.distributed import drop_fp32_output_copy, export_state_dict, unwrap
from minidalle.errors import ModelFolderError
from minidalle.faults import GracefulStop, NonFiniteGuard, fault_active, weights_finite
from minidalle.metrics_log import MetricsLog, flat_config
from minidalle.process_exit import exit_process, keep_until_exit
from minidalle.train_config import TrainConfig, cosine_with_warmup, restore_schedule

logger = logging.getLogger(__name__)


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, step): randomness that resumes exactly."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + salt) % (2**63 - 1))


def launch_device() -> torch.device:
    """The device type Accelerate will train on, known before it is set up: CUDA when present unless the
    launch asked for the CPU (``accelerate launch --cpu`` sets ACCELERATE_USE_CPU). Asking Accelerate's
    own state instead would initialise it before the Accelerator, which then misses the process group."""
    use_cuda = torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")
    return torch.device("cuda" if use_cuda else "cpu")


class TrainingRun:
    """One launch of a train script: the accelerator, the step count, checkpoints, logs and stopping.

    ``name`` names the tracker project and the progress bar; ``nonfinite_hint`` is what the message
    suggests when too many steps in a row had a non-finite loss or gradient.
    """

    def __init__(self, tcfg: TrainConfig, name: str, nonfinite_hint: str):
        self.tcfg, self.name, self.nonfinite_hint = tcfg, name, nonfinite_hint
        self.output_dir = Path(tcfg.output_dir)
        # Batches run on across epochs, so the end of the dataloader must not force a gradient sync.
        accumulation = GradientAccumulationPlugin(
            num_steps=tcfg.gradient_accumulation_steps, sync_with_dataloader=False
        )
        self.accelerator = Accelerator(
            mixed_precision=resolve_mixed_precision(tcfg.mixed_precision, launch_device()),
            log_with=None if tcfg.report_to == "none" else tcfg.report_to,
            project_dir=str(self.output_dir),
            gradient_accumulation_plugin=accumulation,
            # From pinned memory (loader_options on CUDA) a batch is copied while the GPU computes.
            dataloader_config=DataLoaderConfiguration(non_blocking=True),
        )
        # The run holds the prepared (DDP) model, whose gloo group must outlive main: minidalle.process_exit.
        keep_until_exit(self)
        if tcfg.tf32:
            allow_tf32_on_cuda(self.accelerator.device)
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
        if not self.accelerator.is_main_process:
            logging.getLogger().setLevel(logging.WARNING)
        if tcfg.mixed_precision == "auto":
            logger.info(
                "train.mixed_precision auto: %s on %s",
                self.accelerator.mixed_precision,
                self.accelerator.device,
            )
        self.resuming = tcfg.resume_from_checkpoint is not None
        self.resume_path = resolve_resume(self.output_dir, tcfg.resume_from_checkpoint)
        # A folder the run must not use is refused now, before any data is read; claim_output_dir checks
        # again right before the first write, once every process has looked.
        check_output_dir(self.output_dir, self.resuming)
        self.step = 0  # optimizer steps done
        self.guard = NonFiniteGuard(tcfg.max_nonfinite_steps)
        self.metrics_log = MetricsLog(self.output_dir, self.accelerator.is_main_process)
        self.checkpoint_extra: Callable[[], dict] = dict  # what a stage adds to each checkpoint's marker

    # ------------------------------------------------------------------ set-up

    def claim_output_dir(self, run_config: dict) -> None:
        """Refuse a folder holding another run (unless resuming it); record the run's config there."""
        check_output_dir(self.output_dir, self.resuming)
        self.accelerator.wait_for_everyone()  # every process has looked before the main one writes
        if self.accelerator.is_main_process:
            write_run_config(self.output_dir, run_config, self.resuming)

    def begin(self) -> None:
        """Once every process is past its checks: seed, and turn SIGTERM/SIGINT into a checkpoint."""
        self.accelerator.wait_for_everyone()
        set_seed(self.tcfg.seed)
        self.stop = GracefulStop()

    def adamw(self, params) -> torch.optim.AdamW:
        """AdamW over ``params`` (tensors or groups) with the run's LR, betas and weight decay; one fused
        kernel per step on CUDA (train.fused_adamw). Called before ``prepare`` moves the model, so the
        accelerator's device decides."""
        tcfg = self.tcfg
        fused = tcfg.fused_adamw and self.accelerator.device.type == "cuda"
        return torch.optim.AdamW(
            params,
            lr=tcfg.learning_rate,
            betas=(tcfg.adam_beta1, tcfg.adam_beta2),
            weight_decay=tcfg.weight_decay,
            fused=True if fused else None,  # None: torch's own default, as before
        )

    def loader_options(self, num_workers: int, persistent: bool = True) -> dict:
        """DataLoader options: pinned host memory when training on CUDA (faster, asynchronous copies),
        and workers kept across epochs when there are any (``persistent``; not for a stream whose epoch
        is set on the dataset, which workers would not see)."""
        return {
            "num_workers": num_workers,
            "pin_memory": self.accelerator.device.type == "cuda",
            "persistent_workers": persistent and num_workers > 0,
        }

    def prepare(self, model, optimizer, *loaders, save: Callable, run_config, fp32_outputs: bool = True):
        """Wrap for the launch's engine, make the LR schedule, start the trackers.

        ``save(model, folder, state_dict)`` writes the unwrapped model (and whatever goes with it) into
        ``folder``; it runs on the main process only. Returns the prepared model, optimizer and loaders.
        ``fp32_outputs=False`` keeps the model's outputs in the autocast dtype under mixed precision
        (the caller upcasts what it uses). With train.compile the model is compiled after the wrapping.
        """
        accelerator, tcfg = self.accelerator, self.tcfg
        # Stepped by us once per optimizer step (not prepared, so it is not stepped once per process);
        # not registered for checkpointing (accelerate would pickle it): resume sets it from the step.
        self.scheduler = cosine_with_warmup(optimizer, tcfg)
        model, optimizer, *loaders = accelerator.prepare(model, optimizer, *loaders)
        if not fp32_outputs:
            drop_fp32_output_copy(accelerator, model)
        if tcfg.compile:
            model = torch.compile(model, backend=tcfg.compile_backend)
        self.model, self.optimizer, self.save = model, optimizer, save
        if accelerator.is_main_process:
            accelerator.init_trackers(self.name, config=flat_config(run_config))
        return model, optimizer, *loaders

    def resume(self) -> int:
        """Load the checkpoint being resumed, if any; open the progress bar. Returns the step reached."""
        if self.resume_path is not None:
            try:  # accelerate reads the optimizer and RNG files with torch.load(weights_only=True)
                self.accelerator.load_state(str(self.resume_path))
            except pickle.UnpicklingError as err:
                raise ModelFolderError(
                    f"Checkpoint {self.resume_path} holds a file that is not plain tensors and numbers "
                    f"({' '.join(str(err).split())[:200]}); it was not loaded. Resume from another checkpoint."
                ) from None
            self.step = checkpoint_step(self.resume_path)
            restore_schedule(self.scheduler, self.step)
            logger.info("Resumed from %s at step %d", self.resume_path, self.step)
        self.progress = tqdm(
            total=self.tcfg.max_steps,
            initial=self.step,
            desc=self.name,
            dynamic_ncols=True,
            disable=not self.accelerator.is_main_process,
        )
        return self.step

    # ------------------------------------------------------------------ one optimizer step

    def backward(self, loss: torch.Tensor) -> torch.Tensor:
        """Backward of one micro-batch's loss; Accelerate divides it by the accumulation steps.

        Returns the loss backpropagated: NaN at the steps where the test hook injects it.
        """
        if fault_active("nan_loss", self.step + 1):  # test hook (MINIDALLE_FAULTS)
            loss = loss * float("nan")
        self.accelerator.backward(loss)
        return loss

    def optimizer_step(self, loss: torch.Tensor, on_skip: Callable[[], None] | None = None):
        """Clip, then step unless the loss or gradient is not finite (then ``on_skip()`` and a warning).

        After too many skipped steps in a row, checkpoints the last good state and exits 1.
        Returns the gradient norm before clipping.
        """
        accelerator, tcfg = self.accelerator, self.tcfg
        max_norm = tcfg.max_grad_norm if tcfg.max_grad_norm > 0 else math.inf
        grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        if self.guard.check(accelerator, loss, None if accelerator.mixed_precision == "fp16" else grad_norm):
            self.optimizer.step()
        else:
            if on_skip is not None:
                on_skip()
            logger.warning(
                "Non-finite loss or gradient at step %d: step skipped (%d in a row, %d total).",
                self.step + 1,
                self.guard.in_a_row,
                self.guard.total_skipped,
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        self.progress.update(1)
        if self.guard.exhausted:
            saved = self.checkpoint(reason="non-finite")
            accelerator.end_training()
            latest = list_checkpoints(self.output_dir)
            kept = f"saved in {saved}" if saved else f"kept: {latest[-1][1] if latest else 'none yet'}"
            exit_process(  # not sys.exit: a launched worker must skip finalization (minidalle.process_exit)
                f"Stopping: {self.guard.in_a_row} non-finite steps in a row ({self.nonfinite_hint}). "
                f"Last good state {kept}."
            )
        return grad_norm

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    # ------------------------------------------------------------------ logs, checkpoints, stopping

    def log(self, section: str, metrics: dict[str, float]) -> None:
        """To the tracker and to metrics.jsonl alike, as ``section/key`` at the current step."""
        named = {f"{section}/{k}": v for k, v in metrics.items()}
        self.accelerator.log(named, step=self.step)
        self.metrics_log.write(self.step, named)

    def every(self, interval: int) -> bool:
        """True on the steps that are multiples of ``interval`` (never when it is 0)."""
        return bool(interval) and self.step % interval == 0

    def export(self, folder: Path) -> None:
        """Write the whole model into ``folder``. Call on every process (a sharded model is gathered)."""
        state = export_state_dict(self.accelerator, self.model)
        if self.accelerator.is_main_process:
            self.save(unwrap(self.accelerator, self.model), folder, state)

    def checkpoint(self, **extra) -> Path | None:
        """A complete checkpoint of this step, with the exported model inside. Call on every process.

        Weights that are no longer finite are never saved (None): a NaN checkpoint would become
        ``latest`` and push a good one out of ``checkpoints_total_limit``."""
        if not weights_finite(self.accelerator, self.model):
            logger.error("Step %d: the weights are not finite; no checkpoint written.", self.step)
            return None
        extra.update(self.checkpoint_extra())
        return save_checkpoint(
            self.accelerator,
            self.output_dir,
            self.step,
            self.export,
            self.tcfg.checkpoints_total_limit,
            extra=extra,
            model=self.model,
        )

    def end_of_step(self) -> bool:
        """Checkpoint every ``train.checkpoint_every`` steps, and when a signal arrived or
        ``train.stop_after_steps`` is reached. True when the loop must end now (exit 0, resumable)."""
        stopping = self.stop.should_stop(self.accelerator) or self.step == self.tcfg.stop_after_steps
        if stopping or self.every(self.tcfg.checkpoint_every):
            path = self.checkpoint()
            if path is not None:
                self.progress.write(f"step {self.step}: saved {path}")
        if stopping:
            stop = self.stop
            reason = f"{stop.signal_name} received" if stop.requested else "train.stop_after_steps reached"
            self.progress.write(
                f"{reason}: checkpoint written at step {self.step}; "
                "rerun with --resume_from_checkpoint latest to continue."
            )
            self.accelerator.end_training()
            self.stop.restore()
        return stopping

    def final_save(self) -> None:
        """After the last step: a checkpoint (unless one was just written) and the model in output_dir;
        then SIGTERM and SIGINT act at once again (everything is saved)."""
        self.progress.close()
        if not self.every(self.tcfg.checkpoint_every):
            self.checkpoint()
        self.export(self.output_dir)
        self.stop.restore()
