"""``save_pretrained`` / ``from_pretrained`` for our own modules: ``config.json`` + ``model.safetensors``.

A model class sets ``config_class`` (a dataclass) and ``model_type``; its ``__init__`` takes that
config. Loading reads JSON and safetensors only (never pickle, never code from the folder), from a
local folder or, for users with internet, a Hugging Face Hub repository id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file

from minidalle.config import ConfigError, build_dataclass, load_json_object
from minidalle.errors import ModelFolderError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def file_fingerprint(*paths: Path) -> str:
    """A short digest of the files' bytes: names a model or tokenizer by its content, not its path."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def model_fingerprint(model_dir: str | Path) -> str:
    """The fingerprint of a folder written by ``save_pretrained``: its config and its tensors.

    The tensors are digested by name, dtype, shape and bytes, not as the file's bytes: safetensors writes
    its metadata keys in an order that changes from one process to the next, so two saves of one model
    (a finished run re-exported on rerunning it) differ byte for byte while holding the same weights.
    """
    folder = Path(model_dir)
    digest = hashlib.sha256((folder / CONFIG_NAME).read_bytes())
    with open(folder / WEIGHTS_NAME, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
        data_start = 8 + header_size
        for name in sorted(k for k in header if k != "__metadata__"):
            entry = header[name]
            begin, end = entry["data_offsets"]
            f.seek(data_start + begin)
            digest.update(json.dumps([name, entry["dtype"], entry["shape"]]).encode())
            digest.update(f.read(end - begin))
    return digest.hexdigest()[:16]


def fingerprint_matches(model_dir: str | Path, recorded: str | None, fingerprint: str | None = None) -> bool:
    """True when ``recorded`` is the model's fingerprint (``fingerprint``, when the caller has it already),
    or the digest of its files' bytes that records written before content fingerprints hold (so runs and
    pipelines made then still verify)."""
    if recorded is None:
        return False
    folder = Path(model_dir)
    if recorded == (fingerprint or model_fingerprint(folder)):
        return True
    return recorded == file_fingerprint(folder / CONFIG_NAME, folder / WEIGHTS_NAME)


def is_hub_repo_id(name_or_path: str | Path) -> bool:
    """``user/name`` that is no path here: what ``from_pretrained`` fetches from the Hugging Face Hub."""
    name = str(name_or_path)
    return not Path(name).exists() and not name.startswith((".", "/", "~")) and name.count("/") == 1


def fetch_from_hub(repo_id: str, **download) -> Path:
    """``snapshot_download(repo_id, **download)`` (revision, cache_dir, token, local_files_only,
    allow_patterns); a repository that cannot be had is a FileNotFoundError that names it."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo_id, **download))
    except Exception as err:  # noqa: BLE001 - offline and not cached, no such repo, no access: all "not found"
        raise FileNotFoundError(
            f"No such folder here: {repo_id!r} is not a local folder, and the Hub repository could not be "
            f"loaded ({type(err).__name__}; that needs the network and an existing repo, or offline one "
            "already in the Hub cache). Give an existing folder or repo id."
        ) from None


def resolve_model_dir(name_or_path: str | Path, files: tuple[str, ...] = (CONFIG_NAME, WEIGHTS_NAME)) -> Path:
    """A local folder as is; a Hub repo id ``user/name`` is downloaded (needs internet)."""
    path = Path(name_or_path)
    if path.is_dir():
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"Model folder {str(path)!r} is incomplete: missing {', '.join(missing)}. "
                "Point at a folder written by save_pretrained (e.g. <output_dir>/vqvae)."
            )
        return path
    if not is_hub_repo_id(name_or_path):
        raise FileNotFoundError(
            f"Model folder {str(name_or_path)!r} does not exist. Give a folder written by save_pretrained "
            "or a Hugging Face Hub repo id such as 'user/model'."
        )
    return fetch_from_hub(str(name_or_path), allow_patterns=list(files))


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a file cut short or of another format is a ModelFolderError."""
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for a bad file
        raise ModelFolderError(
            f"{path} cannot be read as safetensors ({' '.join(str(err).split())}): the file is cut short or "
            "is not a model file. Copy or export the model again."
        ) from None


class PretrainedMixin:
    config_class: ClassVar[type]
    model_type: ClassVar[str]

    def save_pretrained(
        self, save_directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None
    ) -> Path:
        """Write ``config.json`` + ``model.safetensors``. ``state_dict`` replaces the module's own weights
        (e.g. the full weights gathered from a sharded FSDP/DeepSpeed model)."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        config = {"model_type": self.model_type, **dataclasses.asdict(self.config)}
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        state_dict = self.state_dict() if state_dict is None else state_dict
        state = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
        save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt", "model_type": self.model_type})
        return out

    @classmethod
    def load_config(cls, name_or_path: str | Path) -> Any:
        folder = resolve_model_dir(name_or_path, (CONFIG_NAME,))
        raw: dict[str, Any] = load_json_object(folder / CONFIG_NAME)
        model_type = raw.pop("model_type", None)
        if model_type != cls.model_type:
            raise ConfigError(
                f"{folder / CONFIG_NAME} describes a {model_type!r} model, not a {cls.model_type!r} one. "
                "Check that you pointed at the right folder."
            )
        return build_dataclass(cls.config_class, raw, where=str(folder / CONFIG_NAME))

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ):
        folder = resolve_model_dir(name_or_path)
        config = cls.load_config(folder)
        model = cls(config)
        state, own = read_safetensors(folder / WEIGHTS_NAME), model.state_dict()
        missing = [name for name in own if name not in state]
        unexpected = [name for name in state if name not in own]
        reshaped = [name for name in state if name in own and state[name].shape != own[name].shape]
        if missing or unexpected or reshaped:  # load_state_dict would raise a RuntimeError on a shape
            raise ModelFolderError(
                f"Weights in {folder / WEIGHTS_NAME} do not fit the config: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}, of another shape {reshaped[:5]}; the config was edited or "
                "the files come from different models. Export the model again."
            )
        model.load_state_dict(state)
        model.to(device=device)
        if dtype is not None:
            model.to(dtype=dtype)
        return model.eval()
