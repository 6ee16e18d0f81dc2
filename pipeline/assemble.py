"""Assemble a pipeline folder from the outputs of the two training runs.

    python -m pipeline.assemble --stage1 outputs/stage1_tiny --stage2 outputs/stage2_tiny \\
        --out outputs/pipeline_tiny [--guidance-scale 3 --top-k 64 ...]

``--stage1`` is a stage-1 run folder (holding ``vqvae/``) or the ``vqvae/`` folder itself; left out, it
is the model recorded in ``<stage2>/stage1.json``. ``--stage2`` is a stage-2 run folder (or one of its
``checkpoint-*`` folders) holding ``transformer/`` and ``tokenizer/``. The stage-1 model must be the one
the transformer was trained on (same fingerprint as in ``stage1.json``). Only JSON and safetensors files
are copied; the result is loaded once to prove the parts fit together, and gets a model card
(``README.md``). ``--push-to-hub user/name`` then uploads it to the Hugging Face Hub.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from minidalle.errors import ModelFolderError, OneLineParser, OutputFolderError, run_main
from minidalle.hub import model_fingerprint
from stage2_transformer.stage1_record import STAGE1_RECORD, describe, read_stage1_record, recorded_stage1_path

from .folder import PIPELINE_CONFIG_FILE, TOKENIZER_DIR, TRANSFORMER_DIR, VQVAE_DIR, PipelineConfig
from .pipeline import MiniDallePipeline
from .sharing import CARD_FILE, SAMPLE_GRID_FILE, push_folder, write_model_card

_VQVAE_FILES = ("config.json", "model.safetensors")
_PIPELINE_ENTRIES = {
    PIPELINE_CONFIG_FILE,
    VQVAE_DIR,
    TRANSFORMER_DIR,
    TOKENIZER_DIR,
    CARD_FILE,
    SAMPLE_GRID_FILE,
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def find_vqvae_dir(stage1: str | Path) -> Path:
    """A stage-1 run folder or its ``vqvae/`` folder -> the ``vqvae/`` folder."""
    path = Path(stage1)
    for candidate in (path / VQVAE_DIR, path):
        if all((candidate / name).is_file() for name in _VQVAE_FILES):
            return candidate
    raise FileNotFoundError(
        f"{str(path)!r} is neither a stage-1 run folder (with {VQVAE_DIR}/config.json and "
        f"{VQVAE_DIR}/model.safetensors) nor a vqvae folder. Train stage 1 first: accelerate launch -q "
        "stage1_vqvae/train.py --config configs/stage1_tiny.yaml"
    )


def assemble_pipeline(
    stage1: str | Path | None,
    stage2: str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    **config_overrides,
) -> Path:
    """Copy the stage-1 model, the transformer and the tokenizer into ``out_dir`` with a
    ``pipeline_config.json`` (``config_overrides``: fields of ``PipelineConfig``, e.g. guidance_scale=3)."""
    stage2 = Path(stage2)
    out_dir = Path(out_dir)
    for part in (TRANSFORMER_DIR, TOKENIZER_DIR):
        if not (stage2 / part).is_dir():
            raise FileNotFoundError(
                f"{str(stage2)!r} is not a stage-2 run folder: it has no {part}/. Train stage 2 first: "
                "accelerate launch -q stage2_transformer/train.py --config configs/stage2_tiny.yaml"
            )
    record = read_stage1_record(stage2, search_parent=True)
    if stage1 is None:
        if record is None:
            raise ModelFolderError(
                f"No --stage1 given and no {STAGE1_RECORD} in {str(stage2)!r} names the stage-1 model."
            )
        stage1 = recorded_stage1_path(record)
        if stage1 is None:
            raise FileNotFoundError(
                f"{STAGE1_RECORD} in {str(stage2)!r} names the stage-1 model {describe(record)}, which is not "
                "a folder from here: pass --stage1."
            )
    vqvae_dir = find_vqvae_dir(stage1)
    fingerprint = model_fingerprint(vqvae_dir)
    if record is not None and record.get("fingerprint") != fingerprint:
        raise ModelFolderError(
            f"The stage-2 run {str(stage2)!r} was trained on codes of the stage-1 model {describe(record)} "
            f"(fingerprint {record.get('fingerprint')}), but {str(vqvae_dir)!r} has fingerprint {fingerprint}. "
            "Give the stage-1 model the transformer was trained with."
        )
    unknown = sorted(set(config_overrides) - set(PipelineConfig.__dataclass_fields__))
    if unknown or {"stage1_fingerprint", "sources", "format_version"} & set(config_overrides):
        raise ModelFolderError(
            f"Unknown or reserved pipeline settings {sorted(config_overrides)}; allowed: temperature, top_k, "
            "top_p, guidance_scale, batch_size, max_batch_size."
        )
    config = PipelineConfig(
        **config_overrides,
        stage1_fingerprint=fingerprint,
        sources={"stage1": str(vqvae_dir), "stage2": str(stage2)},
    )
    check_replaceable(out_dir, overwrite)

    # Build in a sibling temporary folder and swap it in, so a failure never leaves half a pipeline.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        _copy(vqvae_dir, staging / VQVAE_DIR, _VQVAE_FILES, required=_VQVAE_FILES)
        transformer_files = [p.name for p in (stage2 / TRANSFORMER_DIR).iterdir() if _is_data_file(p)]
        _copy(
            stage2 / TRANSFORMER_DIR, staging / TRANSFORMER_DIR, transformer_files, required=("config.json",)
        )
        _copy(stage2 / TOKENIZER_DIR, staging / TOKENIZER_DIR, _TOKENIZER_FILES, required=("tokenizer.json",))
        config.save(staging / PIPELINE_CONFIG_FILE)
        MiniDallePipeline.from_pretrained(staging, device="cpu")  # the parts must fit together
        write_model_card(staging, config)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def check_replaceable(out_dir: Path, overwrite: bool) -> None:
    """``out_dir`` may be written: new, empty, or (with ``overwrite``) an earlier pipeline and nothing else,
    so that --overwrite can never delete a training run or other files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputFolderError(f"--out {str(out_dir)!r} is a file; give a folder.")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise OutputFolderError(
            f"{str(out_dir)!r} exists and is not empty; pass overwrite=True (--overwrite)."
        )
    others = sorted(p.name for p in out_dir.iterdir() if p.name not in _PIPELINE_ENTRIES)
    if others or not (out_dir / PIPELINE_CONFIG_FILE).is_file():
        raise OutputFolderError(
            f"--overwrite replaces an earlier pipeline folder only, but {str(out_dir)!r} "
            f"{'also holds ' + ', '.join(others[:5]) if others else 'has no ' + PIPELINE_CONFIG_FILE} "
            "(a training run or other files). Choose another --out."
        )


def _is_data_file(path: Path) -> bool:
    return path.is_file() and path.suffix in (".json", ".safetensors")


def _copy(src: Path, dst: Path, names, required) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in required:
        if not (src / name).is_file():
            raise FileNotFoundError(f"{src / name} is missing.")
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def main(argv: list[str] | None = None) -> int:
    """The command line; a user mistake is one line on stderr and exit code 2 (``--debug``: traceback)."""
    return run_main(_assemble, argv)


def _assemble(argv: list[str]) -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--stage1", default=None, help="stage-1 run folder or its vqvae/ (default: stage1.json)"
    )
    parser.add_argument("--stage2", required=True, help="stage-2 run folder (transformer/, tokenizer/)")
    parser.add_argument("--out", required=True, help="the pipeline folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--guidance-scale", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--push-to-hub", metavar="USER/NAME", help="then upload the folder to this Hub repo")
    args = parser.parse_args(argv)
    names = ("temperature", "top_k", "top_p", "guidance_scale", "batch_size", "max_batch_size")
    overrides = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    out = assemble_pipeline(args.stage1, args.stage2, args.out, overwrite=args.overwrite, **overrides)
    if args.push_to_hub:
        write_model_card(out, PipelineConfig.load(out / PIPELINE_CONFIG_FILE), args.push_to_hub)
        print(f"Pushed: {push_folder(out, args.push_to_hub)}")
    print(
        f"Assembled {out} (try: python -m pipeline.generate --model {out} --prompt '...' -n 4 --out grid.png)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
