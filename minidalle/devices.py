"""Where and in which precision a model runs: the defaults and the names users may pass."""

from __future__ import annotations

from pathlib import Path

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


def allow_tf32_on_cuda(device: str | torch.device) -> None:
    """On CUDA, run fp32 matmuls on TF32 tensor cores (10-bit mantissa, fp32 range and accumulation):
    several times the fp32 rate on A100/H100, at a precision training and decoding do not notice.

    cuDNN convolutions use TF32 already by default. Nothing changes on other devices, so CPU results stay
    bit-identical. The process-wide setting (not the per-backend ``fp32_precision`` API): torch refuses to
    read the global precision, which inductor does, once the two APIs have been mixed.
    """
    if torch.device(device).type == "cuda":
        torch.set_float32_matmul_precision("high")


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX, as /proc/cpuinfo reports).

    There, oneDNN runs bf16 matmuls and convolutions at about twice the fp32 rate; elsewhere bf16 is
    emulated and several times slower than fp32, so it must not be chosen by default.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:  # not Linux: no way to tell, so no
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_mixed_precision(setting: str, device: torch.device) -> str:
    """``train.mixed_precision`` for Accelerate: "auto" becomes bf16 where ``device`` computes it natively
    (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), and "no" elsewhere; other values pass through.
    """
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "no"
    return "no"
