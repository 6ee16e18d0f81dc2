"""Training metrics as text: the ``metrics.jsonl`` log, console lines, and the tracker's config table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch


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
    flat = {}
    for section, values in dataclasses.asdict(cfg).items():
        if isinstance(values, dict):
            for key, value in values.items():
                flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
        else:
            flat[section] = values
    return flat


def device_memory_metrics(device: torch.device) -> dict[str, float]:
    """Peak memory allocated by tensors on a CUDA device so far, in MiB ({} on other devices)."""
    if device.type != "cuda":
        return {}
    return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20}
