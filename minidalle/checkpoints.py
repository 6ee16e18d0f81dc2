"""A run's output folder and its checkpoints: written atomically, found again to resume, rotated.

Checkpoints are folders ``<output_dir>/checkpoints/checkpoint-<step>``, written by
``accelerator.save_state`` (which knows DDP, FSDP and DeepSpeed) plus an exported, loadable model.
A checkpoint is written to ``checkpoint-<step>.tmp`` and renamed only once complete, with a marker
file inside; a run killed mid-write leaves a ``.tmp`` folder that is never picked as latest and
never causes an older, good checkpoint to be deleted. The marker records the step, the number of
processes and (when every process holds the whole model) a digest of each process's weights, which
must all be equal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from minidalle.arguments import nearest_existing
from minidalle.distributed import params_sharded, unwrap
from minidalle.errors import ModelFolderError, OutputFolderError
from minidalle.faults import fault_point

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
RUN_CONFIG = "run_config.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


# ----------------------------------------------------------------------------- output folder


def check_output_dir(output_dir: str | Path, resuming: bool) -> Path:
    """Refuse to write into a folder that holds another run, unless resuming it, or files that no run
    wrote (an assembled pipeline, anything else): a launch must never change what it did not make.

    A folder holds a run once training has logged or checkpointed anything; one left by a launch that
    stopped at a configuration or data error (only ``run_config.json``) is reused. Every process checks
    before any writes (``write_run_config``), so no process mistakes another's first file for a stranger.
    """
    out = Path(output_dir)
    saved = out / RUN_CONFIG
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"train.output_dir {str(out)!r} is a file; give a folder.")
    existing = nearest_existing(out)
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        what = "is a file" if not existing.is_dir() else "is not writable"
        raise OutputFolderError(
            f"train.output_dir {str(out)!r} cannot be made: {str(existing)!r} {what}. Choose another folder."
        )
    foreign = sorted(p.name for p in out.iterdir()) if out.is_dir() and not saved.is_file() else []
    if foreign:  # training writes (and on a fresh start clears) files here: never among others' files
        raise OutputFolderError(
            f"train.output_dir {str(out)!r} holds files no training run wrote ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); choose a new or empty folder."
        )
    if not resuming and holds_run(out):
        raise OutputFolderError(
            f"Output folder {str(out)!r} already holds a run. Pass --resume_from_checkpoint latest to "
            "continue it, or choose another --train.output_dir."
        )
    return out


def write_run_config(output_dir: str | Path, run_config: dict, resuming: bool) -> None:
    """Create the folder and record the run's config (kept as first written when resuming)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / RUN_CONFIG
    if not (resuming and saved.exists()):
        saved.write_text(json.dumps(run_config, indent=2, sort_keys=True) + "\n")


def holds_run(output_dir: str | Path) -> bool:
    out = Path(output_dir)
    root = checkpoints_root(out)
    started = root.is_dir() and any(root.glob("checkpoint-*"))
    return started or (out / "metrics.jsonl").is_file()


# ----------------------------------------------------------------------------- finding checkpoints


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
        raise ModelFolderError(
            f"{resume!r} is not a complete checkpoint folder (no {COMPLETE_MARKER}). "
            f"Use 'latest' or one of: {[str(p) for _, p in list_checkpoints(output_dir)]}."
        )
    return path


def read_marker(checkpoint: Path) -> dict:
    return json.loads((checkpoint / COMPLETE_MARKER).read_text())


def checkpoint_step(checkpoint: Path) -> int:
    return int(read_marker(checkpoint)["step"])


# ----------------------------------------------------------------------------- writing checkpoints


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
    collective under FSDP and ZeRO-3) and must write only on the main process.
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
    marker = {
        "step": step,
        "time": time.time(),
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        **(extra or {}),
    }
    if model is not None and not params_sharded(accelerator):
        from accelerate.utils import gather_object

        digests = gather_object([parameter_digest(unwrap(accelerator, model))])
        marker["rank_param_digests"] = digests
        if len(set(digests)) > 1:
            logger.error(
                "The processes' weights differ at step %d (digests %s): data-parallel training "
                "has diverged; this is a bug, please report it.",
                step,
                digests,
            )
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


def parameter_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every weight and buffer, bit for bit: equal digests mean identical models."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
