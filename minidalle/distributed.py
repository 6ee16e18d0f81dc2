"""Working with a model however Accelerate wraps it (DDP, FSDP, DeepSpeed, torch.compile).

Under FSDP and DeepSpeed ZeRO-3 no process holds the whole model: gathering its weights is a
collective, so the functions marked "call on every process" must be called by all of them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def unwrap(accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside Accelerate's wrapper and torch.compile's."""
    model = accelerator.unwrap_model(model)
    return getattr(model, "_orig_mod", model)


def drop_fp32_output_copy(accelerator, model: torch.nn.Module) -> None:
    """Under mixed precision, keep the prepared model's autocast but drop Accelerate's copy of every
    floating output to fp32. For a language model that copy is the whole (B, L, V) logits, 3.4 GB a
    step at the GPU config; the loss upcasts only the slices it reads, which gives the same values.
    Nothing changes without mixed precision (Accelerate then leaves ``forward`` alone)."""
    from accelerate.utils import get_mixed_precision_context_manager

    inner = accelerator.unwrap_model(model)  # the module whose forward Accelerate replaced (inside DDP)
    original = inner.__dict__.get("_original_forward")  # set by Accelerate when it wraps forward
    if original is not None:
        autocast = get_mixed_precision_context_manager(accelerator.native_amp, accelerator.autocast_handler)
        inner.forward = autocast(original)


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

    Call on every process: under FSDP and ZeRO-3 the shards are gathered. Without sharding it is the
    unwrapped model's own state dict.
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
