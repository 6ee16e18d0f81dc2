"""The Hub both ways without a network: loading by repo id from a cache laid out as huggingface_hub's,
pushing to a recorded ``HfApi``, and the model card of a saved pipeline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipeline import MiniDallePipeline

ROOT = Path(__file__).resolve().parents[1]
REVISION = "0123456789abcdef0123456789abcdef01234567"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _hub_cache(tiny_pipeline_dir: Path, root: Path, repo_id: str = "user/tiny") -> Path:
    """huggingface_hub's cache layout: models--user--tiny/snapshots/<rev>/ and refs/main naming it."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(tiny_pipeline_dir, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return root


def test_load_by_repo_id_offline_from_the_cache(tiny_pipeline_dir, tiny_pipe, tmp_path):
    cache = _hub_cache(tiny_pipeline_dir, tmp_path / "hub")
    loaded = MiniDallePipeline.from_pretrained(
        "user/tiny", device="cpu", cache_dir=cache, local_files_only=True
    )
    same = MiniDallePipeline.from_pretrained(
        "user/tiny", device="cpu", cache_dir=cache, revision=REVISION, local_files_only=True
    )
    expected = tiny_pipe("a red circle on white", seed=1).images[0].tobytes()
    assert loaded("a red circle on white", seed=1).images[0].tobytes() == expected
    assert same("a red circle on white", seed=1).images[0].tobytes() == expected
    # HF_HUB_OFFLINE=1 with the cache in HF_HUB_CACHE: the way a user without network loads it
    script = "from pipeline import MiniDallePipeline; p = MiniDallePipeline.from_pretrained('user/tiny', device='cpu'); print(p('a red circle on white', seed=1).bits_with_caption)"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(tiny_pipe("a red circle on white", seed=1).bits_with_caption)
    with pytest.raises(
        FileNotFoundError, match="'user/missing' is not a local folder, and the Hub repository"
    ):
        MiniDallePipeline.from_pretrained(
            "user/missing", device="cpu", cache_dir=cache, local_files_only=True
        )


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records what would be uploaded (no network in tests)."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private))

    def upload_folder(self, repo_id, folder_path, commit_message):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        card = (Path(folder_path) / "README.md").read_text()
        self.calls.append(("upload_folder", repo_id, files, card, self.token))
        return f"https://huggingface.co/{repo_id}/commit/abc"


def test_push_to_hub_uploads_the_saved_folder_with_its_card(
    tiny_pipe, tiny_pipeline_dir, tmp_path, monkeypatch
):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    RecordingApi.calls = []
    url = tiny_pipe.push_to_hub("user/tiny", token="hf_x", private=True)
    assert url == "https://huggingface.co/user/tiny/commit/abc"
    (_, repo, private), (_, repo2, files, card, token) = RecordingApi.calls
    assert repo == repo2 == "user/tiny" and private is True and token == "hf_x"
    assert {"README.md", "pipeline_config.json", "vqvae/model.safetensors", "transformer/config.json"} <= set(
        files
    )
    assert 'from_pretrained("user/tiny")' in card
    RecordingApi.calls = []
    tiny_pipe.save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="user/other")
    assert [c[:2] for c in RecordingApi.calls] == [
        ("create_repo", "user/other"),
        ("upload_folder", "user/other"),
    ]
    RecordingApi.calls = []
    from pipeline.assemble import main as assemble_main

    config = json.loads((tiny_pipeline_dir / "pipeline_config.json").read_text())
    args = ["--stage2", config["sources"]["stage2"], "--out", str(tmp_path / "assembled")]
    assert assemble_main([*args, "--push-to-hub", "user/assembled"]) == 0
    (_, _, files, card, _) = RecordingApi.calls[-1]
    assert "README.md" in files and 'from_pretrained("user/assembled")' in card
    with pytest.raises(ValueError, match="needs repo_id='user/name'"):
        tiny_pipe.save_pretrained(tmp_path / "out2", push_to_hub=True)


def test_model_card_names_the_training_figures_and_the_sample_grid(tiny_pipeline_dir, tmp_path):
    config = json.loads((tiny_pipeline_dir / "pipeline_config.json").read_text())
    stage2 = Path(config["sources"]["stage2"])
    # what a stage-2 run leaves behind: its config, its metrics log, its sample grids
    (stage2 / "run_config.json").write_text(
        json.dumps({"data": {"source": "builtin"}, "train": {"max_steps": 40}})
    )
    rows = [{"step": 20, "train/loss": 3.0}, {"step": 40, "eval/loss": 2.5, "heldout/checker_all": 0.625}]
    (stage2 / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (stage2 / "images").mkdir(exist_ok=True)
    Image.new("RGB", (64, 32), (200, 10, 10)).save(stage2 / "images" / "samples-000040.png")
    tiny_pipe = MiniDallePipeline.from_pretrained(tiny_pipeline_dir, device="cpu")
    folder = tiny_pipe.save_pretrained(tmp_path / "carded", repo_id="user/tiny")
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "mit" and "text-to-image" in card.data.tags
    text = card.text
    assert (
        "training steps: 40" in text
        and "| heldout/checker_all | 0.625 |" in text
        and "| eval/loss | 2.5 |" in text
    )
    assert "train/loss" not in text and "data: builtin" in text
    assert "![samples](sample_grid.png)" in text and (folder / "sample_grid.png").is_file()
    assert 'MiniDallePipeline.from_pretrained("user/tiny")' in text
    assert (
        MiniDallePipeline.from_pretrained(folder, device="cpu") is not None
    )  # the card does not break loading
