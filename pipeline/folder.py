"""The pipeline folder: its files, ``pipeline_config.json``, and the checks that its parts fit together.

JSON + safetensors only; loading never unpickles or runs code from the folder::

    <dir>/pipeline_config.json   sampling defaults, batch limits, format version, stage-1 fingerprint
    <dir>/vqvae/                 stage 1: config.json + model.safetensors
    <dir>/transformer/           stage 2: config.json + model.safetensors + sequence_layout.json
    <dir>/tokenizer/             the caption tokenizer: tokenizer.json (+ tokenizer_config.json)

``python -m pipeline.assemble`` builds one from the outputs of the two training runs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from minidalle.arguments import check_int
from minidalle.config import ConfigError, build_dataclass, load_json_object
from minidalle.errors import ModelFolderError
from minidalle.hub import fingerprint_matches, model_fingerprint
from stage1_vqvae.model import VQVAE
from stage2_transformer.layout import LAYOUT_FILE, SequenceLayout
from stage2_transformer.model import load_transformer, save_transformer
from stage2_transformer.sampling import DEFAULT_GUIDANCE_PLAUSIBILITY, check_sampling_args
from stage2_transformer.tokenizer import load_caption_tokenizer

PIPELINE_CONFIG_FILE = "pipeline_config.json"
FORMAT_VERSION = 1
VQVAE_DIR, TRANSFORMER_DIR, TOKENIZER_DIR = "vqvae", "transformer", "tokenizer"


class IncompatiblePartsError(ModelFolderError):
    """The stage-1 model, the transformer and the tokenizer of a pipeline do not fit together."""


@dataclass
class PipelineConfig:
    """``pipeline_config.json``: sampling defaults and limits. Unknown keys are errors."""

    format_version: int = FORMAT_VERSION
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None  # None: no top-k cut
    top_p: float | None = None  # None: no nucleus cut
    guidance_scale: float = 3.0  # 1: no classifier-free guidance
    # With guidance, codes the conditional model gives less than this fraction of its top code's
    # probability are never sampled (0 disables): see stage2_transformer.sampling.
    guidance_plausibility: float = DEFAULT_GUIDANCE_PLAUSIBILITY
    batch_size: int = 16  # default images per forward pass (guidance doubles the rows)
    max_batch_size: int = 256  # larger batch_size arguments are refused
    # sha256 prefix of vqvae/config.json + model.safetensors: catches a swapped-in stage-1 model
    # that happens to have the same codebook and grid as the one the transformer learned.
    stage1_fingerprint: str | None = None
    sources: dict = dataclasses.field(default_factory=dict)  # provenance, informational only

    def __post_init__(self):
        if self.format_version != FORMAT_VERSION:
            raise ConfigError(
                f"{PIPELINE_CONFIG_FILE} has format_version={self.format_version}; this code reads version "
                f"{FORMAT_VERSION}. Re-assemble the folder with python -m pipeline.assemble."
            )
        check_sampling_args(
            self.temperature, self.top_k, self.top_p, self.guidance_scale, self.guidance_plausibility
        )
        check_int("max_batch_size", self.max_batch_size, 1, 1 << 20)
        check_int("batch_size", self.batch_size, 1, self.max_batch_size)

    @classmethod
    def load(cls, path: str | Path) -> PipelineConfig:
        path = Path(path)
        raw = load_json_object(path)
        try:
            return build_dataclass(cls, raw, where=str(path))
        except ValueError as err:
            raise ConfigError(f"{path}: {err}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n", encoding="utf-8")


def load_parts(folder: Path, device: torch.device, dtype: torch.dtype, allow_unverified: bool = False):
    """Read a pipeline folder -> (vqvae, transformer, layout, tokenizer, config), checking as it goes:
    the cheap checks come first, so a mismatched folder fails before the transformer's weights are read.
    A config without ``stage1_fingerprint`` cannot prove its stage-1 model: refused unless
    ``allow_unverified``."""
    check_pipeline_folder(folder)
    config = PipelineConfig.load(folder / PIPELINE_CONFIG_FILE)
    if config.stage1_fingerprint is None and not allow_unverified:
        raise ModelFolderError(
            f"{folder / PIPELINE_CONFIG_FILE} has no stage1_fingerprint, so nothing shows that {VQVAE_DIR}/ "
            "is the model the transformer was trained on. Re-assemble the folder with python -m "
            "pipeline.assemble, or pass --allow-unverified (allow_unverified=True) to load it anyway."
        )
    layout = SequenceLayout.load(folder / TRANSFORMER_DIR)
    tokenizer = load_caption_tokenizer(folder / TOKENIZER_DIR)
    vqvae = VQVAE.from_pretrained(folder / VQVAE_DIR, device=device)
    problems = part_mismatches(vqvae, layout, tokenizer)
    stage1_dir = folder / VQVAE_DIR
    if config.stage1_fingerprint is not None and not fingerprint_matches(
        stage1_dir, config.stage1_fingerprint
    ):
        found = model_fingerprint(stage1_dir)
        problems.append(
            f"stage-1 model: {VQVAE_DIR}/ has fingerprint {found} but the transformer was trained on "
            f"codes of the model with fingerprint {config.stage1_fingerprint} ({PIPELINE_CONFIG_FILE}); "
            "the folder's vqvae/ was replaced."
        )
    raise_if_incompatible(problems, f"The parts of {folder}")
    transformer, _ = load_transformer(folder / TRANSFORMER_DIR, torch_dtype=dtype)
    return vqvae, transformer.to(device), layout, tokenizer, config


def save_parts(folder: Path, vqvae: VQVAE, transformer, layout: SequenceLayout, tokenizer, config) -> None:
    """Write what ``load_parts`` reads, recording the stage-1 model's fingerprint in the config."""
    folder.mkdir(parents=True, exist_ok=True)
    vqvae.save_pretrained(folder / VQVAE_DIR)
    save_transformer(transformer, layout, folder / TRANSFORMER_DIR)
    tokenizer.save_pretrained(folder / TOKENIZER_DIR)
    config = dataclasses.replace(config, stage1_fingerprint=model_fingerprint(folder / VQVAE_DIR))
    config.save(folder / PIPELINE_CONFIG_FILE)


def check_pipeline_folder(folder: Path) -> None:
    """Raise FileNotFoundError naming what is missing, before anything is loaded."""
    hint = (
        "Assemble a pipeline folder from the two training runs with: python -m pipeline.assemble "
        "--stage1 outputs/stage1_tiny --stage2 outputs/stage2_tiny --out outputs/pipeline_tiny"
    )
    if not folder.is_dir():
        raise FileNotFoundError(f"Model folder {str(folder)!r} does not exist. {hint}")
    needed = [
        PIPELINE_CONFIG_FILE,
        f"{VQVAE_DIR}/config.json",
        f"{VQVAE_DIR}/model.safetensors",
        f"{TRANSFORMER_DIR}/config.json",
        f"{TRANSFORMER_DIR}/{LAYOUT_FILE}",
        f"{TOKENIZER_DIR}/tokenizer.json",
    ]
    missing = [name for name in needed if not (folder / name).is_file()]
    if not any((folder / TRANSFORMER_DIR).glob("*.safetensors")):
        missing.append(f"{TRANSFORMER_DIR}/model.safetensors")
    if missing:
        raise FileNotFoundError(
            f"Model folder {str(folder)!r} is incomplete: missing {', '.join(missing)}. {hint}"
        )


def part_mismatches(vqvae: VQVAE, layout: SequenceLayout, tokenizer) -> list[str]:
    """Each way the stage-1 model and the tokenizer differ from what the transformer was trained with."""
    problems = []
    if vqvae.config.codebook_size != layout.codebook_size:
        problems.append(
            f"codebook size: the stage-1 model has {vqvae.config.codebook_size} codes but the transformer "
            f"was trained on {layout.codebook_size} ({LAYOUT_FILE} codebook_size)."
        )
    grid = vqvae.config.grid_size
    if (grid, grid) != (layout.grid_h, layout.grid_w):
        problems.append(
            f"grid size: the stage-1 model makes a {grid}x{grid} code grid but the transformer expects "
            f"{layout.grid_h}x{layout.grid_w} ({LAYOUT_FILE} grid_h, grid_w)."
        )
    if len(tokenizer) != layout.text_vocab_size:
        problems.append(
            f"vocabulary: the caption tokenizer has {len(tokenizer)} tokens but the transformer was trained "
            f"with {layout.text_vocab_size} ({LAYOUT_FILE} text_vocab_size)."
        )
    if tokenizer.pad_token_id != layout.pad_id:
        problems.append(
            f"pad id: the caption tokenizer pads with id {tokenizer.pad_token_id} but the transformer was "
            f"trained with pad id {layout.pad_id} ({LAYOUT_FILE} pad_id)."
        )
    return problems


def raise_if_incompatible(problems: list[str], what: str) -> None:
    if problems:
        raise IncompatiblePartsError(f"{what} do not fit together:\n  - " + "\n  - ".join(problems))
