"""Every user mistake: exit code 2, one line ``error: ...`` on stderr, nothing written or changed.

The cases run in-process through each entry point's ``run_main`` (as ``python -m`` / the scripts do);
a few run as real processes, one through ``accelerate launch``. Folders a command must not touch (a
training run, a pipeline, a stage-2 run) are hashed byte for byte before and after each case.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from minidalle.errors import run_main
from tests.conftest import ROOT, launch
from tests.tiny_models import build_tiny_runs

TINY_S1 = "--train.report_to none --train.max_steps 2 --train.batch_size 4 --model.base_channels 8"
TINY_DATA = "--data.builtin_train_size 64 --data.builtin_eval_size 8 --num_eval_images 8"
TINY_DATA2 = "--data.builtin_train_size 64 --data.builtin_eval_size 8 --num_eval_examples 8"


def tree_hash(folder: Path) -> str:
    """A digest of every file's path and bytes under ``folder`` ("absent" when there is none)."""
    if not folder.exists():
        return "absent"
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def image_folder(root: Path, lines: list[str], images: int = 3, readable: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        if readable:
            Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(root / f"{i}.png")
        else:
            (root / f"{i}.png").write_bytes(b"not a png")
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def hf_data(path: Path, captions: list) -> Path:
    """A local ``datasets`` dataset (one parquet file) of tiny images with these captions."""
    import io

    import datasets

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 0, 0)).save(buffer, format="PNG")
    images = [{"bytes": buffer.getvalue(), "path": None}] * len(captions)
    table = datasets.Dataset.from_dict({"image": images, "text": captions})
    table.cast_column("image", datasets.Image()).to_parquet(str(path))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny model folders, a pipeline, a (fake) training run and data folders with one flaw each."""
    from pipeline.assemble import assemble_pipeline

    root = tmp_path_factory.mktemp("mistakes")
    stage1, stage2 = build_tiny_runs(root)
    pipeline = assemble_pipeline(stage1, stage2, root / "pipeline")
    run = root / "run"  # what a training run leaves: config, metrics, a complete checkpoint
    (run / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-4" / "checkpoint_complete.json").write_text('{"step": 4}')
    (run / "run_config.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 4}\n')
    configs = root / "configs"
    configs.mkdir()
    for name, text in {
        "malformed.yaml": "train: [1,\n",
        "tab.yaml": "train:\n\tmax_steps: 3\n",
        "duplicate.yaml": "train:\n  max_steps: 3\n  max_steps: 4\n",
        "list.yaml": "- a\n- b\n",
    }.items():
        (configs / name).write_text(text)
    (configs / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01garbage")
    unverified = root / "unverified"
    assemble_pipeline(stage1, stage2, unverified)
    config = json.loads((unverified / "pipeline_config.json").read_text())
    (unverified / "pipeline_config.json").write_text(json.dumps({**config, "stage1_fingerprint": None}))
    deeper = root / "deeper"  # a pipeline whose transformer config.json was edited to one more layer
    assemble_pipeline(stage1, stage2, deeper)
    config = json.loads((deeper / "transformer" / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (deeper / "transformer" / "config.json").write_text(json.dumps(config))
    shallower = root / "shallower"  # ... and one edited to one layer fewer
    assemble_pipeline(stage1, stage2, shallower)
    config = json.loads((shallower / "transformer" / "config.json").read_text())
    config["num_hidden_layers"] -= 1
    (shallower / "transformer" / "config.json").write_text(json.dumps(config))
    wider = root / "wider_vqvae"  # a VQ-VAE whose config.json was edited to more channels
    wider.mkdir()
    config = json.loads((stage1 / "vqvae" / "config.json").read_text())
    (wider / "config.json").write_text(json.dumps({**config, "base_channels": config["base_channels"] * 2}))
    (wider / "model.safetensors").write_bytes((stage1 / "vqvae" / "model.safetensors").read_bytes())
    truncated = root / "truncated_vqvae"
    truncated.mkdir()
    (truncated / "config.json").write_bytes((stage1 / "vqvae" / "config.json").read_bytes())
    (truncated / "model.safetensors").write_bytes((stage1 / "vqvae" / "model.safetensors").read_bytes()[:300])
    cut_tokenizer = root / "cut_tokenizer"
    cut_tokenizer.mkdir()
    (cut_tokenizer / "tokenizer.json").write_text((stage2 / "tokenizer" / "tokenizer.json").read_text()[:200])
    good = ['{"file_name": "0.png", "text": "a"}', '{"file_name": "1.png", "text": "b"}']
    data = {
        "bad_json": image_folder(root / "d_json", [*good, '{"file_name": "2.png", "text": }']),
        "missing_image": image_folder(root / "d_missing", [*good, '{"file_name": "9.png", "text": "c"}']),
        "number_caption": image_folder(root / "d_number", [*good, '{"file_name": "2.png", "text": 5}']),
        "unreadable": image_folder(
            root / "d_unreadable",
            [f'{{"file_name": "{i}.png", "text": "a"}}' for i in range(24)],
            images=24,
            readable=False,
        ),
        "other_column": image_folder(
            root / "d_other", [line.replace('"text"', '"caption"') for line in good], 2
        ),
        "empty_captions": image_folder(
            root / "d_empty", [f'{{"file_name": "{i}.png", "text": ""}}' for i in range(24)], images=24
        ),
    }
    mixed = [{"image": str(data["bad_json"] / "0.png"), "text": text} for text in ("a red circle", 5)]
    (root / "mixed.jsonl").write_text("".join(json.dumps(row) + "\n" for row in mixed))
    hf = {
        "number": hf_data(root / "number.parquet", list(range(24))),
        "list": hf_data(root / "list.parquet", [["a", "b"]] * 24),
        "none": hf_data(root / "none.parquet", [None] * 24),
    }
    (root / "no_images").mkdir()
    no_metadata = image_folder(root / "d_no_metadata", [])
    (no_metadata / "metadata.jsonl").unlink()
    (root / "a_file").write_text("x")
    (root / "prompts_many.txt").write_text("\n".join(f"prompt {i}" for i in range(1100)) + "\n")
    return {
        "root": root,
        "stage1": stage1,
        "stage2": stage2,
        "pipeline": pipeline,
        "run": run,
        "configs": configs,
        "unverified": unverified,
        "deeper": deeper,
        "shallower": shallower,
        "truncated": truncated,
        "wider": wider,
        "cut_tokenizer": cut_tokenizer,
        "data": {**data, "no_metadata": no_metadata},
        "hf": hf,
    }


def entry(name: str):
    if name == "stage1":
        from stage1_vqvae.train import main
    elif name == "stage2":
        from stage2_transformer.train import main
    elif name == "eval1":
        from stage1_vqvae.evaluate import main
    elif name == "eval2":
        from stage2_transformer.evaluate import main
    elif name == "assemble":
        from pipeline.assemble import _assemble as main
    else:
        from pipeline.generate import main as generate

        def main(argv):  # generate's main runs run_main itself; unwrap it to test the shared handler
            return generate(argv)

    return main


S1 = "--config configs/stage1_tiny.yaml --train.output_dir {out} --data.builtin_cache_dir {cache}"
S2 = "--config configs/stage2_tiny.yaml --vqvae {stage1}/vqvae --train.output_dir {out}"
S2 += " --data.builtin_cache_dir {cache} --codes.cache_dir {root}/codes"
E1 = "--config configs/stage1_tiny.yaml --model {stage1}/vqvae --data.builtin_cache_dir {cache}"
E2 = "--config configs/stage2_tiny.yaml --run {stage2} --data.builtin_cache_dir {cache}"
IMF = "--data.source imagefolder --data.path"
HF = "--data.source hf --data.path parquet --data.data_files"
GEN = "--model {pipeline} --prompt 'a red circle' --out {out}/g.png"
AS = "--stage1 {stage1} --stage2 {stage2}"

# (entry point, arguments, words the message must hold, folders that must stay byte-identical)
CASES = [
    # stage-1 training: config files
    ("stage1", "--config {root}/nope.yaml --train.output_dir {out}", ["does not exist"], []),
    ("stage1", "--config {configs}/malformed.yaml", ["not valid yaml"], []),
    ("stage1", "--config {configs}/tab.yaml", ["not valid yaml"], []),
    ("stage1", "--config {configs}/binary.yaml", ["not text"], []),
    ("stage1", "--config {configs}/duplicate.yaml", ["max_steps", "twice"], []),
    ("stage1", "--config {configs}/list.yaml", ["mapping"], []),
    ("stage1", "--config", ["expected one argument"], []),
    # stage-1 training: keys and values
    ("stage1", S1 + " --train.lr 1", ["unknown config key", "learning_rate"], []),
    ("stage1", S1 + " --train.max_steps abc", ["max_steps", "integer"], []),
    ("stage1", S1 + " --train.max_steps", ["needs a value"], []),
    ("stage1", S1 + " stray", ["unexpected argument"], []),
    ("stage1", S1 + " --model.channel_multipliers '[1,'", ["cannot read"], []),
    ("stage1", S1 + " --train.batch_size 0", ["batch_size"], []),
    ("stage1", S1 + " --train.batch_size 100000000", ["batch_size"], []),
    ("stage1", S1 + " --train.learning_rate inf", ["learning_rate", "finite"], []),
    ("stage1", S1 + " --train.learning_rate nan", ["learning_rate", "finite"], []),
    ("stage1", S1 + " --train.max_grad_norm -inf", ["max_grad_norm", "finite"], []),
    ("stage1", S1 + " --model.beta nan", ["beta", "finite"], []),
    ("stage1", S1 + " --model.base_channels -4", ["base_channels"], []),
    ("stage1", S1 + " --model.base_channels 0", ["base_channels"], []),
    ("stage1", S1 + " --model.channel_multipliers [1,0,2]", ["channel_multipliers"], []),
    ("stage1", S1 + " --model.num_res_blocks -1", ["num_res_blocks"], []),
    ("stage1", S1 + " --model.codebook_size 1", ["codebook_size"], []),
    ("stage1", S1 + " --model.codebook_size 1000000000", ["codebook_size", "1048576"], []),
    ("stage1", S1 + " --model.base_channels 100000", ["widest layer", "8192"], []),
    ("stage1", S1 + " --data.resolution 12", ["resolution"], []),
    ("stage1", S1 + " --train.mixed_precision fp8", ["mixed_precision"], []),
    ("stage1", S1 + " --train.warmup_steps -1", ["warmup_steps"], []),
    ("stage1", S1 + " --data.num_workers 100000", ["num_workers", "256"], []),
    ("stage1", S1 + " --data.builtin_train_size 1000000000", ["builtin_train_size", "1000000"], []),
    ("stage1", S1 + " --codebook.restart_until 2", ["restart_until"], []),
    # stage-1 training: data and folders
    ("stage1", S1 + f" {TINY_S1} {IMF} {{root}}/nowhere", ["not a folder"], []),
    ("stage1", S1 + f" {TINY_S1} {IMF} {{root}}/no_images", ["no images"], []),
    ("stage1", S1 + f" {TINY_S1} {IMF} {{data_bad_json}}", ["line 3", "not valid json"], []),
    ("stage1", S1 + f" {TINY_S1} {IMF} {{data_missing_image}}", ["1 line", "9.png"], []),
    ("stage1", S1 + f" {TINY_S1} {IMF} {{data_number_caption}}", ["line 3", "caption"], []),
    ("stage1", S1 + f" {TINY_S1} {IMF} {{data_unreadable}}", ["could be read"], []),
    (
        "stage1",
        S1 + f" {TINY_S1} {IMF} {{data_no_metadata}}",
        ["column 'text' not found", "caption_column"],
        [],
    ),
    ("stage1", S1 + f" {TINY_S1} {IMF} {{data_other_column}}", ["column 'text' not found", "caption"], []),
    ("stage1", S1 + f" {TINY_S1} {TINY_DATA} --train.output_dir {{root}}/a_file", ["is a file"], []),
    (
        "stage1",
        S1 + f" {TINY_S1} --train.output_dir {{root}}/a_file/run",
        ["cannot be made", "is a file"],
        [],
    ),
    (
        "stage1",
        S1 + f" {TINY_S1} {TINY_DATA} --train.output_dir {{pipeline}}",
        ["no training run"],
        ["pipeline"],
    ),
    ("stage1", S1 + f" {TINY_S1} {TINY_DATA} --train.output_dir {{run}}", ["already holds a run"], ["run"]),
    (
        "stage1",
        S1 + f" {TINY_S1} {TINY_DATA} --train.output_dir {{run}} --resume_from_checkpoint {{stage2}}",
        ["not a complete checkpoint"],
        ["run", "stage2"],
    ),
    ("stage1", S1 + f" {TINY_S1} {HF} {{hf_number}}", ["column 'text'", "int64", "strings"], []),
    ("stage1", S1 + f" {TINY_S1} {HF} {{hf_list}}", ["column 'text'", "list", "strings"], []),
    ("stage1", S1 + f" {TINY_S1} {HF} {{hf_number}} --data.streaming true", ["int64", "strings"], []),
    (
        "stage1",
        S1 + f" {TINY_S1} --data.source hf --data.path json --data.data_files {{root}}/mixed.jsonl",
        ["column 'text'", "json", "strings"],
        [],
    ),
    # stage-2 training
    ("stage2", S2 + " --sampling.temperature -1", ["temperature"], []),
    ("stage2", S2 + " --sampling.top_k 0", ["top_k"], []),
    ("stage2", S2 + " --sampling.top_p 2", ["top_p"], []),
    ("stage2", S2 + " --sampling.guidance_scale nan", ["guidance_scale", "finite"], []),
    ("stage2", S2 + " --sampling.images_per_caption 0", ["images_per_caption"], []),
    ("stage2", S2 + " --loss.image_weight inf", ["image_weight", "finite"], []),
    ("stage2", S2 + " --model.num_layers 0", ["num_layers"], []),
    ("stage2", S2 + " --tokenizer.vocab_size 10", ["vocab_size"], []),
    ("stage2", S2 + " --tokenizer.text_len 10000000", ["text_len", "4096"], []),
    ("stage2", S2 + " --model.hidden_size 1000000", ["hidden_size", "16384"], []),
    ("stage2", S2 + " --model.num_layers 100000", ["num_layers", "256"], []),
    ("stage2", S2 + " --codes.batch_size 0", ["codes.batch_size"], []),
    ("stage2", S2 + " --vqvae {root}/nowhere", ["not a folder"], []),
    ("stage2", S2 + " --vqvae {stage2}/transformer", ["llama"], ["stage2"]),
    ("stage2", S2 + " --vqvae {truncated}", ["safetensors"], []),
    ("stage2", S2 + " --vqvae someone/x", ["someone/x", "not a folder"], []),
    ("stage2", S2 + f" {TINY_DATA2} --train.output_dir {{pipeline}}", ["no training run"], ["pipeline"]),
    ("stage2", S2 + f" {TINY_DATA2} --train.output_dir {{stage2}}", ["no training run"], ["stage2"]),
    ("stage2", S2 + f" {TINY_DATA2} --train.output_dir {{run}}", ["already holds a run"], ["run"]),
    ("stage2", S2 + f" {IMF} {{data_empty_captions}}", ["captions", "empty"], []),
    ("stage2", S2 + f" {IMF} {{data_missing_image}}", ["9.png"], []),
    ("stage2", S2 + f" {HF} {{hf_none}}", ["captions", "empty"], []),
    ("stage2", S2 + f" {TINY_DATA2} --tokenizer.path {{cut_tokenizer}}", ["tokenizer"], []),
    # evaluation
    ("eval1", E1 + " --model {root}/nowhere", ["does not exist"], []),
    ("eval1", E1 + " --model someone/x", ["no such folder"], []),
    ("eval1", E1 + " --model {stage2}/transformer", ["llama"], ["stage2"]),
    ("eval1", E1 + " --model {wider}", ["do not fit", "another shape"], ["wider"]),
    ("eval1", E1 + " --batch_size 0", ["batch_size"], []),
    ("eval1", E1 + " --output_json {root}/a_file/m.json", ["output_json", "not a folder"], ["stage1"]),
    ("eval1", E1 + " --output_json {stage1}", ["output_json", "folder"], ["stage1"]),
    ("eval2", E2 + " --run {root}/nowhere", ["does not exist"], []),
    ("eval2", E2 + " --sampling.temperature -1", ["temperature"], []),
    ("eval2", E2 + " --guidance_scales [1,nan]", ["finite"], []),
    ("eval2", E2 + " --max_examples 0", ["max_examples"], []),
    ("eval2", E2 + " --output_json {root}/a_file/m.json", ["output_json"], ["stage2"]),
    # pipeline.assemble
    ("assemble", AS + " --out {stage2} --overwrite", ["earlier pipeline folder only"], ["stage2"]),
    ("assemble", AS + " --out {run} --overwrite", ["earlier pipeline folder only"], ["run", "stage2"]),
    ("assemble", AS + " --out {pipeline}", ["not empty"], ["pipeline"]),
    ("assemble", AS + " --out {root}/a_file", ["is a file"], []),
    ("assemble", "--stage1 {stage1} --stage2 {root}/nowhere --out {out}", ["not a stage-2 run"], []),
    ("assemble", "--stage1 {root}/nowhere --stage2 {stage2} --out {out}", ["neither"], []),
    ("assemble", AS + " --out {out} --temperature -1", ["temperature"], []),
    ("assemble", AS + " --out {out} --batch-size 0", ["batch_size"], []),
    ("assemble", AS + " --out {out} --top-k abc", ["invalid int"], []),
    ("assemble", "--stage1 {stage1}", ["required"], []),
    # pipeline.generate
    ("generate", GEN + " -n 100000", ["num_images_per_prompt", "256"], ["pipeline"]),
    ("generate", GEN + " -n 0", ["num_images_per_prompt"], []),
    ("generate", GEN + " --batch-size 100000", ["batch_size"], []),
    ("generate", GEN + " --prompts-file {root}/prompts_many.txt", ["prompts", "limit"], []),
    ("generate", GEN + " --prompts-file {root}/nope.txt", ["does not exist"], []),
    ("generate", "--model {pipeline} --out {out}/g.png", ["at least one"], []),
    ("generate", GEN + " --temperature -1", ["temperature"], []),
    ("generate", GEN + " --top-p 0", ["top_p"], []),
    ("generate", GEN + " --seed abc", ["invalid int"], []),
    ("generate", GEN + " --keep-rows 2", ["--image"], []),
    ("generate", GEN + " --image {root}/a_file --keep-rows 2", ["cannot be read as an image"], []),
    ("generate", GEN + " --dtype fp8", ["dtype"], []),
    ("generate", GEN + " --device cuda:99", ["cuda"], []),
    ("generate", GEN + " --out {root}/a_file/g.png", ["not a folder"], []),
    ("generate", GEN + " --model {root}/nowhere", ["does not exist"], []),
    ("generate", GEN + " --model {unverified}", ["stage1_fingerprint", "--allow-unverified"], ["unverified"]),
    ("generate", GEN + " --model {deeper}", ["do not fit"], ["deeper"]),
    ("generate", GEN + " --model {shallower}", ["do not fit"], ["shallower"]),
    ("generate", GEN + " --model someone/x", ["no such folder"], []),
]


def fill(template: str, world: dict, out: Path, cache: Path) -> list[str]:
    import shlex

    names = {k: v for k, v in world.items() if isinstance(v, Path)}
    names.update({f"data_{k}": v for k, v in world["data"].items()})
    names.update({f"hf_{k}": v for k, v in world["hf"].items()})
    return shlex.split(template.format(out=out, cache=cache, **names))


@pytest.mark.parametrize(("command", "template", "words", "protected"), CASES)
def test_user_mistake(
    command,
    template,
    words,
    protected,
    world,
    shapes_cache,
    tmp_path,
    capsys,
    monkeypatch,
    fresh_accelerator_state,
):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MINIDALLE_DEBUG", raising=False)
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    argv = fill(template, world, out, shapes_cache)
    before = {name: tree_hash(world[name]) for name in protected}
    capsys.readouterr()
    code = run_main(entry(command), argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
    assert {name: tree_hash(world[name]) for name in protected} == before
    assert not out.exists()


def test_read_only_output_folder_is_refused_before_work(tmp_path):
    """A real process; as root (who may write anywhere) it runs without the capability to override
    file permissions, as any other user would."""
    import shutil

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    as_user = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: a read-only folder cannot be made")
        caps = "-dac_override,-dac_read_search"
        as_user = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
    cache = tmp_path / "cache"
    argv = [*S1.format(out=locked / "run", cache=cache).split(), *TINY_S1.split()]
    result = subprocess.run(
        [*as_user, sys.executable, "stage1_vqvae/train.py", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert "not writable" in errors[0] and str(locked) in errors[0]
    assert not cache.exists()  # refused before the data was made


def test_debug_shows_the_traceback(world, monkeypatch):
    from stage1_vqvae.train import main

    with pytest.raises(Exception, match="finite"):
        run_main(main, ["--config", "configs/stage1_tiny.yaml", "--train.learning_rate", "inf", "--debug"])
    monkeypatch.setenv("MINIDALLE_DEBUG", "1")
    with pytest.raises(Exception, match="finite"):
        run_main(main, ["--config", "configs/stage1_tiny.yaml", "--train.learning_rate", "inf"])


def test_internal_errors_keep_their_traceback():
    def broken(argv):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_main(broken, [])


def test_generate_clears_only_its_own_images(world, tmp_path):
    from pipeline.generate import main

    image_dir = tmp_path / "g_images"
    image_dir.mkdir()
    (image_dir / "p000_05.png").write_bytes(b"old")  # left by an earlier call with -n 6
    (image_dir / "notes.txt").write_text("mine")
    argv = ["--model", str(world["pipeline"]), "--prompt", "a", "-n", "2", "--seed", "0"]
    assert main([*argv, "--out", str(tmp_path / "g.png"), "--device", "cpu"]) == 0
    assert sorted(p.name for p in image_dir.iterdir()) == ["notes.txt", "p000_00.png", "p000_01.png"]


def test_api_refuses_bad_prompts_and_counts(world):
    from minidalle.errors import ArgumentError, ModelFolderError
    from pipeline import MiniDallePipeline

    with pytest.raises(ModelFolderError, match="allow_unverified"):
        MiniDallePipeline.from_pretrained(world["unverified"], device="cpu")
    MiniDallePipeline.from_pretrained(world["unverified"], device="cpu", allow_unverified=True)
    pipe = MiniDallePipeline.from_pretrained(world["pipeline"], device="cpu")
    with pytest.raises(ValueError, match="prompt 0 must be a string"):
        pipe([["a", "b"]])
    with pytest.raises(ArgumentError, match="one prompt"):
        pipe.complete(Image.new("RGB", (32, 32)), ["a", "b"], keep_rows=2)
    with pytest.raises(ArgumentError, match="num_images_per_prompt"):
        pipe("a", num_images_per_prompt=100000)
    with pytest.raises(ArgumentError, match="limit"):
        pipe(["a"] * 64, num_images_per_prompt=256)


def test_no_nan_checkpoint(tmp_path, monkeypatch):
    """Weights that are no longer finite are never checkpointed: the good checkpoint stays latest."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    from minidalle.checkpoints import list_checkpoints
    from minidalle.train_config import TrainConfig
    from minidalle.trainer import TrainingRun

    run = TrainingRun(TrainConfig(output_dir=str(tmp_path), report_to="none"), "t", "hint")
    run.claim_output_dir({})
    model = torch.nn.Linear(2, 2)
    model, _ = run.prepare(
        model, torch.optim.SGD(model.parameters(), lr=0.1), save=lambda *a: None, run_config=TrainConfig()
    )
    run.step = 1
    assert run.checkpoint() is not None
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    run.step = 2
    assert run.checkpoint() is None
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1]


def _planted_pickle(marker: Path) -> bytes:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Payload())


def test_resume_runs_no_code_from_the_checkpoint(tmp_path, shapes_cache):
    """A real run through accelerate launch; then every pickle-like file of its checkpoint is replaced by
    one that would run code: resuming refuses in one line and the code never runs."""
    out = tmp_path / "run"
    base = [
        "--config", "configs/stage1_tiny.yaml", "--train.output_dir", str(out), "--data.builtin_cache_dir",
        str(shapes_cache), *TINY_S1.split(), *TINY_DATA.split(), "--train.eval_every", "0",
        "--train.image_every", "0", "--codebook.kmeans_batches", "1",
    ]  # fmt: skip
    launch("stage1_vqvae/train.py", *base)
    checkpoint = out / "checkpoints" / "checkpoint-2"
    assert not list(checkpoint.glob("custom_checkpoint_*"))  # the LR schedule is not pickled
    marker = tmp_path / "code_ran"
    for name in ("random_states_0.pkl", "optimizer.bin", "custom_checkpoint_0.pkl"):
        (checkpoint / name).write_bytes(_planted_pickle(marker))
    before = tree_hash(out)
    resume = [*base, "--train.max_steps", "4", "--resume_from_checkpoint", "latest"]
    result = subprocess.run(
        [sys.executable, "stage1_vqvae/train.py", *resume],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "1"},
        timeout=300,
    )
    assert not marker.exists()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert result.returncode == 2 and len(errors) == 1 and "not plain tensors" in errors[0], result.stderr
    assert tree_hash(out) == before


def test_accelerate_launch_shows_one_line(world, shapes_cache):
    """Under ``accelerate launch --quiet`` the user sees the script's one line; the pipeline folder a
    stage-2 launch was pointed at keeps its tokenizer/ (it used to be deleted)."""
    before = tree_hash(world["pipeline"])
    argv = fill(S2 + f" {TINY_DATA2} --train.output_dir {{pipeline}}", world, world["root"], shapes_cache)
    result = launch("stage2_transformer/train.py", *argv, expect_ok=False)
    assert result.returncode != 0 and tree_hash(world["pipeline"]) == before
    quiet = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--cpu", "--num_processes", "1",
         "--num_machines", "1", "--num_cpu_threads_per_process", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         str(ROOT / "stage1_vqvae/train.py"), "--config", "configs/stage1_tiny.yaml", "--train.learning_rate", "inf"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    lines = [line for line in quiet.stderr.splitlines() if line.strip()]
    assert quiet.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), quiet.stderr
