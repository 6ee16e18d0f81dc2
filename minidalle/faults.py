"""What can go wrong in a run, and the hooks that make it go wrong in tests.

``MINIDALLE_FAULTS`` (see ``fault_active``) injects faults at named places, e.g. a SIGKILL between
writing a checkpoint and renaming it, or a NaN loss at given steps. Real runs never set it.
``GracefulStop`` turns SIGTERM/SIGINT into a checkpoint and a clean exit; ``NonFiniteGuard`` skips
optimizer steps whose loss or gradient is not finite.
"""

from __future__ import annotations

import logging
import os
import signal

import torch

logger = logging.getLogger(__name__)

FAULTS_ENV = "MINIDALLE_FAULTS"


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


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_signal_handlers() -> dict:
    """SIGTERM's and SIGINT's handlers now, for ``restore_signal_handlers``."""
    return {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}


def restore_signal_handlers(handlers: dict) -> None:
    """Put back the handlers ``stop_signal_handlers`` returned, where they changed (so that a caller off
    the main thread, which may not set handlers, can call it when nothing changed)."""
    for sig, handler in handlers.items():
        if signal.getsignal(sig) is not handler:
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: not set from Python


class GracefulStop:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the next step boundary and exits 0."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self.previous = stop_signal_handlers()
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handler)

    def restore(self) -> None:
        """Give both signals back to the handlers they had. Called once the last step is done: with no step
        boundary left to stop at, a flag would only be ignored, so a Ctrl-C during the final evaluation, or
        torchrun's SIGTERM to the other ranks when one failed, must act at once again; and a caller that
        trained inside its own process (a notebook) gets its Ctrl-C back."""
        restore_signal_handlers(self.previous)

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def should_stop(self, accelerator) -> bool:
        """True on every rank if any rank was signalled (ranks must agree to checkpoint together)."""
        flag = torch.tensor([1.0 if self.requested else 0.0], device=accelerator.device)
        if accelerator.num_processes > 1:
            flag = accelerator.reduce(flag, reduction="sum")
        return bool(flag.item() > 0)


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


def weights_finite(accelerator, model: torch.nn.Module) -> bool:
    """True on every rank if no process holds a non-finite weight (each checks its own shard)."""
    bad = torch.zeros(1, device=accelerator.device)
    for parameter in model.parameters():
        local = parameter.to_local() if hasattr(parameter, "to_local") else parameter  # an FSDP2 shard
        bad += (~torch.isfinite(local.detach())).sum().float().to(bad.device)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    return bool(bad.item() == 0)
