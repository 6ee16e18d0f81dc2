"""The stage-2 model: a decoder-only transformer (transformers' Llama) over the sequence layout's vocabulary.

Built from a config with random weights (never pretrained), sized by ``TransformerConfig``. A saved
model folder holds ``config.json`` + ``model.safetensors`` (``save_pretrained``) and
``sequence_layout.json``, so sampling needs only the folder.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel
from transformers.utils import logging as hf_logging

from minidalle.errors import ModelFolderError

from .layout import LAYOUT_FILE, SequenceLayout

MAX_HIDDEN_SIZE = 16384  # Llama-2 70B uses 8192; more is a typo
MAX_LAYERS = 256


@dataclass
class TransformerConfig:
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int | None = None  # None: Llama-style 8/3 * hidden, rounded up to a multiple of 32
    dropout: float = 0.0  # attention dropout (Llama has no residual or embedding dropout)
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    gradient_checkpointing: bool = False

    def __post_init__(self):
        for name, high in (("hidden_size", MAX_HIDDEN_SIZE), ("num_layers", MAX_LAYERS), ("num_heads", None)):
            if getattr(self, name) < 1 or (high is not None and getattr(self, name) > high):
                limit = f"lie in [1, {high}]" if high else "be positive"
                raise ValueError(f"TransformerConfig.{name} must {limit}, got {getattr(self, name)}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"TransformerConfig.hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}."
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"The head size hidden_size/num_heads={self.hidden_size // self.num_heads} must be even (RoPE)."
            )
        if self.intermediate_size is not None and not 1 <= self.intermediate_size <= 4 * MAX_HIDDEN_SIZE:
            raise ValueError(
                f"TransformerConfig.intermediate_size must lie in [1, {4 * MAX_HIDDEN_SIZE}], got "
                f"{self.intermediate_size}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TransformerConfig.dropout must be in [0, 1), got {self.dropout}.")
        if self.rope_theta <= 0:
            raise ValueError(f"TransformerConfig.rope_theta must be positive, got {self.rope_theta}.")

    @property
    def mlp_size(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        return 32 * math.ceil(8 * self.hidden_size / 3 / 32)  # SwiGLU: about as many weights as a 4x MLP


def prefer_fast_attention(model: PreTrainedModel, device: torch.device, mixed_precision: str) -> None:
    """SDPA attention, except for bf16 training on a CPU: there SDPA's bf16 backward costs more than the
    rest of the step, and the eager softmax(QK^T)V path makes a tiny-config step 1.4x faster
    (``benchmarks/train_throughput.py --precision bf16``). Nothing of this is saved with the model."""
    if device.type == "cpu" and mixed_precision == "bf16":
        model.set_attn_implementation("eager")


def build_transformer(cfg: TransformerConfig, layout: SequenceLayout) -> PreTrainedModel:
    """A randomly initialised ``LlamaForCausalLM`` for ``layout`` (vocabulary and sequence length)."""
    config = LlamaConfig(
        vocab_size=layout.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.mlp_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=layout.seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        attention_dropout=float(cfg.dropout),
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.initializer_range,
        # No pad_token_id: it would freeze the PAD embedding at zero (nn.Embedding padding_idx), and the
        # all-PAD caption is the learned unconditional input of classifier-free guidance.
        pad_token_id=None,
        bos_token_id=layout.boi_id,
        eos_token_id=None,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config)
    if cfg.gradient_checkpointing:  # renamed in transformers 5.x; train with use_cache=False
        enable = (
            getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        )
        enable()
    return model


def save_transformer(
    model: PreTrainedModel, layout: SequenceLayout, out_dir: str | Path, state_dict: dict | None = None
) -> Path:
    """Save weights (safetensors) + ``config.json`` + ``sequence_layout.json`` to ``out_dir``.

    ``state_dict`` replaces the model's own weights (e.g. the full weights gathered from FSDP/DeepSpeed).
    """
    if model.config.vocab_size != layout.vocab_size:
        raise ValueError(
            f"The model's vocabulary ({model.config.vocab_size}) does not match the layout's ({layout.vocab_size})."
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, state_dict=state_dict)  # transformers 5 always writes safetensors
    layout.save(out_dir)
    return out_dir


def load_transformer(
    path: str | Path, torch_dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, SequenceLayout]:
    """Load a folder written by ``save_transformer``: (model in eval mode, its sequence layout). Offline only."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Stage-2 model folder {path} does not exist.")
    missing = [name for name in ("config.json", LAYOUT_FILE) if not (path / name).is_file()]
    if not any(path.glob("*.safetensors")):
        missing.append("model.safetensors")
    if missing:
        present = sorted(p.name for p in path.iterdir())[:20]
        raise FileNotFoundError(
            f"{path} is not a stage-2 model folder: missing {missing} (it holds {present}). "
            "Save models with save_transformer()."
        )
    layout = SequenceLayout.load(path)
    kwargs = {} if torch_dtype is None else {"dtype": torch_dtype}
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # its table of missing weights is replaced by the error below
    hf_logging.disable_progress_bar()  # and a bar for a load of a second is noise
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            path,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
            attn_implementation="sdpa",
            output_loading_info=True,
            **kwargs,
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise ModelFolderError(f"{path} cannot be loaded: {' '.join(str(err).split())[:500]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    # transformers fills missing weights with random ones and only prints a table: refuse instead
    wrong = {k: sorted(info[k]) for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info[k]}
    if wrong:
        details = "; ".join(
            f"{k.replace('_', ' ')} {v[:3]}{' ...' if len(v) > 3 else ''}" for k, v in wrong.items()
        )
        raise ModelFolderError(
            f"{path}: the weights in model.safetensors do not fit config.json ({details}); the config was "
            "edited or the files come from different models. Export the model again."
        )
    if model.config.vocab_size != layout.vocab_size:
        raise ValueError(
            f"{path}: config.json has vocab_size={model.config.vocab_size} but {LAYOUT_FILE} implies "
            f"{layout.vocab_size}."
        )
    if model.config.max_position_embeddings < layout.seq_len:
        raise ValueError(
            f"{path}: the model has {model.config.max_position_embeddings} positions but the layout needs "
            f"{layout.seq_len}."
        )
    model.eval()
    return model, layout


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())  # parameters() already yields a tied weight once


_FORWARD_PARAMETERS: dict[type, set[str]] = {}


def forward_accepts(model: torch.nn.Module, name: str) -> bool:
    """Whether ``model.forward`` takes an argument ``name`` (looked up once per model class)."""
    params = _FORWARD_PARAMETERS.get(type(model))
    if params is None:
        params = _FORWARD_PARAMETERS[type(model)] = set(inspect.signature(model.forward).parameters)
    return name in params


def cache_keyword(model: torch.nn.Module) -> str:
    """The forward argument that takes a KV cache: transformers >= 5.24 names it ``cache``, earlier 5.x
    releases ``past_key_values``."""
    return "cache" if forward_accepts(model, "cache") else "past_key_values"
