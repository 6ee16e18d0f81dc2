"""The Hub both ways: a pipeline folder from a repo id, a folder pushed to a repo, and its model card.

``from_pretrained("user/name")`` downloads with ``huggingface_hub.snapshot_download`` (its cache, so
``HF_HUB_OFFLINE=1`` / ``local_files_only`` load a snapshot already there); ``push_to_hub`` uploads a
folder written by ``save_pretrained`` with ``HfApi.upload_folder``. The card (``README.md``) is written
from what the folder and its training runs record (``pipeline_config.json``'s ``sources``): the data,
the configs, the training steps, the last evaluation figures, a sample grid when there is one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from minidalle.errors import ArgumentError
from minidalle.hub import fetch_from_hub, is_hub_repo_id

from .folder import PipelineConfig

CARD_FILE = "README.md"
SAMPLE_GRID_FILE = "sample_grid.png"
LICENSE = "mit"


def resolve_pipeline_folder(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """A local folder as is; ``user/name`` (not a folder here) is downloaded from the Hub (or read from
    its cache offline)."""
    if not is_hub_repo_id(name_or_path):
        return Path(name_or_path)  # a folder: load_parts names what is missing
    return fetch_from_hub(
        str(name_or_path),
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        local_files_only=local_files_only,
    )


def push_folder(
    folder: Path,
    repo_id: str | None = None,
    *,
    token=None,
    private: bool | None = None,
    commit_message: str | None = None,
) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` to it; returns the commit's URL."""
    from huggingface_hub import HfApi

    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ArgumentError(f"push to the Hub needs repo_id='user/name', got {repo_id!r}.")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message or "Upload mini-DALL-E pipeline",
    )
    return str(getattr(info, "commit_url", info))


def run_record(run_dir: Path) -> dict:
    """What a training run folder tells: its config, its last step, its latest non-training figures."""
    record: dict = {"folder": str(run_dir)}
    config = run_dir / "run_config.json"
    if config.is_file():
        record["config"] = json.loads(config.read_text(encoding="utf-8"))
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        figures: dict = {}
        for line in metrics.read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            record["steps"] = max(record.get("steps", 0), int(row.get("step", 0)))
            figures.update({k: v for k, v in row.items() if k != "step" and not k.startswith("train/")})
        record["figures"] = figures
    return record


def _runs(config: PipelineConfig) -> dict[str, dict]:
    """stage name -> record, for each recorded source whose run folder is still here."""
    runs = {}
    for stage, source in config.sources.items():
        path = Path(source)
        run_dir = path.parent if path.name == "vqvae" else path  # stage 1 records its vqvae/ folder
        if run_dir.is_dir():
            runs[stage] = run_record(run_dir)
    return runs


def _latest_samples(runs: dict[str, dict]) -> Path | None:
    stage2 = runs.get("stage2")
    if stage2 is None:
        return None
    grids = sorted((Path(stage2["folder"]) / "images").glob("samples-*.png"))
    return grids[-1] if grids else None


def write_model_card(folder: Path, config: PipelineConfig, repo_id: str | None = None) -> Path:
    """Write ``folder/README.md`` (and ``sample_grid.png`` when the stage-2 run left one)."""
    from huggingface_hub import ModelCard, ModelCardData

    runs = _runs(config)
    grid = _latest_samples(runs)
    if grid is not None:
        shutil.copyfile(grid, folder / SAMPLE_GRID_FILE)
    has_grid = (folder / SAMPLE_GRID_FILE).is_file()
    data = ModelCardData(
        license=LICENSE, library_name="minidalle", tags=["text-to-image", "vq-vae", "mini-dall-e"]
    )
    name = repo_id or "path/to/this/folder"
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        "# mini-DALL-E pipeline",
        "",
        "A two-stage text-to-image model: a VQ-VAE (stage 1) turns pictures into a grid of codes and a "
        "Llama-style transformer (stage 2) samples those codes from a caption.",
        "",
        "## How to load",
        "",
        "```python",
        "from pipeline import MiniDallePipeline",
        "",
        f'pipe = MiniDallePipeline.from_pretrained("{name}")',
        'out = pipe("a small red circle at the top left", num_images_per_prompt=4, seed=0)',
        "```",
        "",
        "## Sampling defaults",
        "",
        *(f"- {k}: {getattr(config, k)}" for k in ("temperature", "top_k", "top_p", "guidance_scale")),
        "",
    ]
    for stage, record in runs.items():
        run_config = record.get("config", {})
        lines += [f"## {stage}", "", f"- training steps: {record.get('steps', 'unknown')}"]
        if "data" in run_config:
            data_cfg = run_config["data"]
            lines.append(
                f"- data: {data_cfg.get('source')} {data_cfg.get('hf_name') or data_cfg.get('path') or ''}"
            )
        for section in ("model", "train"):
            if section in run_config:
                lines.append(f"- {section} config: `{json.dumps(run_config[section], sort_keys=True)}`")
        figures = record.get("figures", {})
        if figures:
            lines += ["", "| held-out figure | value |", "|---|---|"]
            lines += [
                f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in figures.items()
            ]
        lines.append("")
    if not runs:
        lines += ["## Training", "", "The training runs are not recorded in this folder.", ""]
    if has_grid:
        lines += ["## Samples", "", f"![samples]({SAMPLE_GRID_FILE})", ""]
    lines += ["## Licence", "", f"{LICENSE.upper()}.", ""]
    path = folder / CARD_FILE
    ModelCard("\n".join(lines)).save(path)
    return path
