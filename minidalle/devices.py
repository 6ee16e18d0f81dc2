"""Where and in which precision a model runs: the defaults and the names users may pass."""

from __future__ import annotations

import torch

from minidalle.errors import ArgumentError

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


def resolve_device_dtype(
    device: str | torch.device | None, dtype: str | torch.dtype | None
) -> tuple[torch.device, torch.dtype]:
    """Defaults: CUDA when present with bf16 (fp16 on GPUs without bf16), else the CPU with float32."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ArgumentError(
            f"device must be 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}: {err}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(
            f"device={str(device)!r} was asked for but CUDA is not available here; use 'cpu'."
        )
    if dtype is None:
        if device.type == "cuda":
            return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return device, torch.float32
    if isinstance(dtype, str):
        if dtype.lower() not in DTYPES:
            raise ArgumentError(f"dtype must be one of {sorted(DTYPES)} or a torch.dtype, got {dtype!r}.")
        return device, DTYPES[dtype.lower()]
    if dtype not in set(DTYPES.values()):
        raise ArgumentError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}.")
    return device, dtype
