"""The pipeline on a tiny random model: loading, seeds, batching, guidance, completion, re-ranking, errors."""

from __future__ import annotations

import inspect
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minidalle.errors import ModelFolderError
from minidalle.hub import model_fingerprint
from minidalle.pixels import tensor_to_pil
from pipeline import IncompatiblePartsError, MiniDallePipeline, PromptTruncatedWarning
from pipeline.assemble import assemble_pipeline
from pipeline.assemble import main as assemble_main
from pipeline.generate import main as generate_main
from pipeline.seeds import mix
from stage2_transformer.sampling import sample_image_codes
from stage2_transformer.stage1_record import write_stage1_record
from stage2_transformer.tokenizer import encode_captions, train_caption_tokenizer
from tests.tiny_models import (
    CAPTIONS,
    CODEBOOK,
    build_tiny_clip,
    build_tiny_pipeline,
    build_tiny_runs,
    tiny_vqvae,
)

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle on white", "a blue star on black", "a green heart"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def pipe(model_dir) -> MiniDallePipeline:
    return MiniDallePipeline.from_pretrained(model_dir, device="cpu")


def _pixels(images) -> list[bytes]:
    return [im.tobytes() for im in images]


# ------------------------------------------------------------------------------------------------
# loading and saving


def test_load_defaults_and_save_round_trip(pipe, model_dir, tmp_path):
    assert pipe.device.type == "cpu" and pipe.dtype == torch.float32
    assert (pipe.layout.grid_h, pipe.layout.grid_w, pipe.layout.codebook_size) == (8, 8, 32)
    out = pipe(PROMPTS[0], num_images_per_prompt=2, seed=3, return_codes=True)
    assert len(out.images) == 2 and all(im.size == (32, 32) and im.mode == "RGB" for im in out.images)
    assert out.codes.shape == (2, 8, 8) and out.prompts == [PROMPTS[0]] * 2 and out.seed == 3
    copy = pipe.save_pretrained(tmp_path / "copy")
    assert sorted(p.name for p in copy.iterdir()) == [
        "README.md",
        "pipeline_config.json",
        "tokenizer",
        "transformer",
        "vqvae",
    ]
    again = MiniDallePipeline.from_pretrained(copy, device="cpu")(PROMPTS[0], num_images_per_prompt=2, seed=3)
    assert _pixels(again.images) == _pixels(out.images)


def test_assembled_folder_holds_only_json_and_safetensors(tmp_path):
    stage1, stage2 = build_tiny_runs(tmp_path)
    (stage2 / "transformer" / "modeling_evil.py").write_text("raise SystemExit('ran code from the folder')\n")
    out = assemble_pipeline(stage1 / "vqvae", stage2, tmp_path / "p", guidance_scale=2.0, top_k=8)
    suffixes = {p.suffix for p in out.rglob("*") if p.is_file() and p.name != "README.md"}
    assert suffixes <= {".json", ".safetensors"} and (out / "README.md").is_file()  # + the model card
    config = json.loads((out / "pipeline_config.json").read_text())
    assert config["guidance_scale"] == 2.0 and config["top_k"] == 8 and config["format_version"] == 1
    assert MiniDallePipeline.from_pretrained(out, device="cpu").config.top_k == 8
    with pytest.raises(FileExistsError, match="overwrite"):
        assemble_pipeline(stage1, stage2, out)
    assemble_pipeline(None, stage2, out, overwrite=True)  # --stage1 defaults to stage1.json's path
    with pytest.raises(ValueError, match="Unknown or reserved"):
        assemble_pipeline(stage1, stage2, tmp_path / "q", guidance=2.0)


def test_assemble_finds_the_recorded_stage1_model_from_another_directory(tmp_path, monkeypatch):
    stage1, stage2 = build_tiny_runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    write_stage1_record(
        stage2, "stage1/vqvae", model_fingerprint(stage1 / "vqvae"), CODEBOOK
    )  # relative, as typed
    monkeypatch.chdir(stage2)  # where "stage1/vqvae" leads nowhere: the absolute path is used
    assert (stage2 / "stage1.json").is_file() and not Path("stage1/vqvae").exists()
    out = assemble_pipeline(None, stage2, tmp_path / "p")
    assert json.loads((out / "pipeline_config.json").read_text())["sources"]["stage1"] == str(
        stage1 / "vqvae"
    )
    shutil.move(stage1, tmp_path / "moved")  # now neither path leads to it
    with pytest.raises(FileNotFoundError, match="'stage1/vqvae' .*not a folder from here: pass --stage1"):
        assemble_pipeline(None, stage2, tmp_path / "q")
    assemble_pipeline(tmp_path / "moved", stage2, tmp_path / "q")


def test_stage2_evaluate_finds_the_stage1_model_of_the_run(tmp_path):
    from stage2_transformer.evaluate import stage1_model_of_run

    stage1, stage2 = build_tiny_runs(tmp_path)
    other = tmp_path / "other" / "vqvae"
    tiny_vqvae(seed=1).save_pretrained(other)  # same shapes, other weights
    assert stage1_model_of_run(stage2, str(other)) == str(stage1 / "vqvae")  # the record wins over the YAML
    shutil.move(stage1, tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="not a folder from here, and vqvae=.* is not that model"):
        stage1_model_of_run(stage2, str(other))  # a different model is never taken for the moved one
    assert stage1_model_of_run(stage2, str(tmp_path / "moved" / "vqvae")) == str(tmp_path / "moved" / "vqvae")
    (stage2 / "stage1.json").unlink()
    assert stage1_model_of_run(stage2, str(other)) == str(other)  # no record: vqvae is all there is
    with pytest.raises(FileNotFoundError, match="stage1.json is missing: pass --vqvae"):
        stage1_model_of_run(stage2, None)


def test_assemble_refuses_another_stage1_model(tmp_path):
    stage1, stage2 = build_tiny_runs(tmp_path)
    tiny_vqvae(seed=1).save_pretrained(tmp_path / "other" / "vqvae")  # same shapes, other weights
    with pytest.raises(ValueError, match="fingerprint"):
        assemble_pipeline(tmp_path / "other", stage2, tmp_path / "p")
    assert not (tmp_path / "p").exists()
    assert (
        assemble_main(["--stage1", str(stage1), "--stage2", str(stage2), "--out", str(tmp_path / "p")]) == 0
    )
    assert (
        assemble_main(
            ["--stage1", str(tmp_path / "other"), "--stage2", str(stage2), "--out", str(tmp_path / "x")]
        )
        == 2
    )


def _mutate_codebook(folder: Path, tmp: Path):
    tiny_vqvae(codebook_size=16).save_pretrained(folder / "vqvae")


def _mutate_grid(folder: Path, tmp: Path):
    tiny_vqvae(resolution=16).save_pretrained(folder / "vqvae")  # 4x4 codes


def _mutate_vocabulary(folder: Path, tmp: Path):
    train_caption_tokenizer(CAPTIONS, vocab_size=280, out_dir=folder / "tokenizer")


def _mutate_pad_id(folder: Path, tmp: Path):
    path = folder / "transformer" / "sequence_layout.json"
    layout = json.loads(path.read_text())
    layout["pad_id"] = 1
    path.write_text(json.dumps(layout))


def _mutate_stage1_weights(folder: Path, tmp: Path):
    tiny_vqvae(seed=1).save_pretrained(folder / "vqvae")  # same codebook and grid, other model


def _edit_config(**changes):
    def mutate(folder: Path, tmp: Path):
        path = folder / "pipeline_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return mutate


def _remove(name: str):
    def mutate(folder: Path, tmp: Path):
        path = folder / name
        path.unlink() if path.is_file() else __import__("shutil").rmtree(path)

    return mutate


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (_mutate_codebook, IncompatiblePartsError, "codebook size: the stage-1 model has 16 codes .* 32"),
        (_mutate_grid, IncompatiblePartsError, "grid size: the stage-1 model makes a 4x4 .* 8x8"),
        (
            _mutate_vocabulary,
            IncompatiblePartsError,
            "vocabulary: the caption tokenizer has 280 tokens .* 300",
        ),
        (_mutate_pad_id, IncompatiblePartsError, "pad id: the caption tokenizer pads with id 0 .* pad id 1"),
        (_mutate_stage1_weights, IncompatiblePartsError, "fingerprint"),
        (_edit_config(guidance=2.0), ValueError, "Unknown config key 'guidance'.*guidance_scale"),
        (_edit_config(format_version=2), ValueError, "format_version=2"),
        (_edit_config(temperature=-1), ValueError, "temperature must be a number >= 0"),
        (_remove("vqvae"), FileNotFoundError, "incomplete: missing vqvae/config.json"),
        (
            _remove("transformer/model.safetensors"),
            FileNotFoundError,
            "missing transformer/model.safetensors",
        ),
        (_remove("tokenizer/tokenizer.json"), FileNotFoundError, "missing tokenizer/tokenizer.json"),
        (_remove("pipeline_config.json"), FileNotFoundError, "missing pipeline_config.json"),
    ],
    ids=[
        "codebook",
        "grid",
        "vocabulary",
        "pad_id",
        "stage1_weights",
        "unknown_key",
        "version",
        "bad_default",
        "no_vqvae",
        "no_weights",
        "no_tokenizer",
        "no_config",
    ],
)
def test_mismatched_or_incomplete_folder_fails_at_load(tmp_path, mutate, error, match):
    folder = build_tiny_pipeline(tmp_path)
    mutate(folder, tmp_path)
    with pytest.raises(error, match=match):
        MiniDallePipeline.from_pretrained(folder, device="cpu")


def test_missing_folder_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*python -m pipeline.assemble"):
        MiniDallePipeline.from_pretrained(tmp_path / "nowhere")


class _Payload:
    """Unpickling this writes a marker file: proof that a pickle was loaded."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled"))


def test_loading_never_unpickles(tmp_path):
    folder = build_tiny_pipeline(tmp_path)
    marker = tmp_path / "marker"
    (folder / "transformer" / "model.safetensors").unlink()
    with open(folder / "transformer" / "pytorch_model.bin", "wb") as f:
        pickle.dump(_Payload(str(marker)), f)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        MiniDallePipeline.from_pretrained(folder, device="cpu")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# sampling


def test_same_seed_same_images_and_random_seed_is_returned(pipe):
    a = pipe(PROMPTS[:2], num_images_per_prompt=2, seed=7, return_codes=True)
    b = pipe(PROMPTS[:2], num_images_per_prompt=2, seed=7, return_codes=True)
    c = pipe(PROMPTS[:2], num_images_per_prompt=2, seed=8, return_codes=True)
    assert torch.equal(a.codes, b.codes) and _pixels(a.images) == _pixels(b.images)
    assert not torch.equal(a.codes, c.codes)
    assert not torch.equal(a.codes[0], a.codes[1])  # each image has its own stream
    drawn = pipe(PROMPTS[0], seed=None, return_codes=True)
    assert isinstance(drawn.seed, int) and 0 <= drawn.seed < 2**31
    assert torch.equal(pipe(PROMPTS[0], seed=drawn.seed, return_codes=True).codes, drawn.codes)
    # temperature 0 is greedy: the seed no longer matters
    greedy = [pipe(PROMPTS[0], temperature=0, seed=s, return_codes=True).codes for s in (1, 2)]
    assert torch.equal(greedy[0], greedy[1])


def test_only_image_codes_are_sampled_and_fed_back(pipe):
    layout = pipe.layout
    lo, hi = layout.image_offset, layout.image_offset + layout.codebook_size
    push = torch.full((layout.vocab_size,), 1e4)
    push[lo:hi] = 0.0  # every text token and BOI would win by far if the sampler looked at them

    fed = []  # the token ids of each forward pass, seen where they enter the network
    # The push reaches transformers' forward; the default KVDecoder computes only the image-code rows of
    # the head, so a text token or BOI has no logit to win with at all.
    hooks = [
        pipe.transformer.lm_head.register_forward_hook(lambda m, i, out: out + push.to(out.dtype)),
        pipe.transformer.model.embed_tokens.register_forward_pre_hook(
            lambda m, args: fed.append(args[0].clone())
        ),
    ]
    try:
        out = pipe(PROMPTS, num_images_per_prompt=2, seed=0, guidance_scale=2.0, return_codes=True)
    finally:
        for hook in hooks:
            hook.remove()
    assert out.codes.min() >= 0 and out.codes.max() < layout.codebook_size
    fed = [ids for ids in fed if ids.shape[1] <= layout.text_len + 1]  # sampling's passes, not scoring's
    prompt_len = layout.text_len + 1
    assert fed[0].shape[1] == prompt_len  # caption + BOI once, then one code per step
    steps = torch.cat([ids for ids in fed[1:]], dim=1)  # (2B, N - 1)
    assert steps.shape[1] == layout.num_image_tokens - 1
    assert ((steps >= lo) & (steps < hi)).all()


def test_guidance_at_scale_one_equals_plain_sampling(pipe):
    rows = []  # the batch of each sampling pass (the bits of the images are scored in longer passes)
    sampling_pass = pipe.layout.text_len + 1  # the prompt, then one code at a time
    hook = pipe.transformer.model.embed_tokens.register_forward_pre_hook(
        lambda module, args: rows.append(args[0].shape[0]) if args[0].shape[1] <= sampling_pass else None
    )
    try:
        plain = pipe(PROMPTS, num_images_per_prompt=2, seed=11, guidance_scale=1.0, return_codes=True)
        plain_rows, rows[:] = set(rows), []
        guided = pipe(PROMPTS, num_images_per_prompt=2, seed=11, guidance_scale=4.0, return_codes=True)
        guided_rows = set(rows)
    finally:
        hook.remove()
    assert plain_rows == {6}  # scale 1: no unconditional half at all
    assert guided_rows == {12}  # conditional and unconditional halves in one batched pass
    assert not torch.equal(plain.codes, guided.codes)
    # Just above 1, uncond + s * (cond - uncond) is the conditional model: the same codes as plain
    # sampling from the same per-image streams (with the library's plausibility cut off, which would
    # otherwise trim the tail whenever guidance runs).
    text_ids = encode_captions(pipe.tokenizer, PROMPTS, pipe.layout.text_len).repeat_interleave(2, dim=0)
    generators = [torch.Generator().manual_seed(mix(11, j)) for j in range(6)]
    params = inspect.signature(sample_image_codes).parameters
    extra = {"guidance_plausibility": 0.0} if "guidance_plausibility" in params else {}
    mixed = sample_image_codes(
        pipe.transformer, pipe.layout, text_ids, guidance_scale=1.0 + 1e-6, generator=generators, **extra
    )
    assert torch.equal(plain.codes, mixed)


def test_batched_prompts_equal_prompts_one_by_one(pipe):
    seeds = [5, 6, 7]
    batched = pipe(PROMPTS, num_images_per_prompt=2, seed=seeds, batch_size=6, return_codes=True)
    alone = [
        pipe(p, num_images_per_prompt=2, seed=[s], batch_size=1, return_codes=True)
        for p, s in zip(PROMPTS, seeds)
    ]
    assert torch.equal(batched.codes, torch.cat([o.codes for o in alone]))
    assert _pixels(batched.images) == [px for o in alone for px in _pixels(o.images)]
    # an integer seed: images do not depend on batch_size either
    one = pipe(PROMPTS, num_images_per_prompt=2, seed=9, batch_size=1, return_codes=True)
    four = pipe(PROMPTS, num_images_per_prompt=2, seed=9, batch_size=4, return_codes=True)
    assert torch.equal(one.codes, four.codes)
    # a prompt's images do not depend on the prompt beside it
    other = pipe([PROMPTS[0], "a red square"], num_images_per_prompt=2, seed=[5, 6], return_codes=True)
    assert torch.equal(other.codes[:2], batched.codes[:2])
    assert not torch.equal(other.codes[2:], batched.codes[2:4])


def test_completion_keeps_the_given_rows(pipe):
    source = pipe.decode_codes(torch.randint(0, 32, (1, 8, 8), generator=torch.Generator().manual_seed(0)))[0]
    source = source.resize((64, 48))  # any size: it is resized and centre-cropped to 32x32
    codes = pipe.encode_image([source])  # (1, 8, 8)
    events = []
    out = pipe.complete(
        source,
        PROMPTS[0],
        keep_rows=3,
        num_images_per_prompt=3,
        seed=1,
        return_codes=True,
        on_row=events.append,
    )
    assert torch.equal(out.codes[:, :3], codes[:, :3].expand(3, 3, 8))
    assert not torch.equal(out.codes[0, 3:], out.codes[1, 3:])
    assert [e.row for e in events] == list(range(3, 8))
    whole = pipe.complete(source, PROMPTS[0], keep_rows=8, seed=1, return_codes=True)
    assert torch.equal(whole.codes, codes)
    none_kept = pipe(PROMPTS[0], image=source, keep_rows=0, seed=1, return_codes=True)
    assert torch.equal(none_kept.codes, pipe(PROMPTS[0], seed=1, return_codes=True).codes)


def test_row_events_show_the_picture_row_by_row(pipe):
    events = []
    out = pipe(PROMPTS[:2], num_images_per_prompt=2, seed=2, batch_size=3, on_row=events.append)
    assert len(events) == 2 * 8  # two batches (3 + 1 images) of 8 rows
    assert [e.row for e in events] == list(range(8)) * 2
    assert [e.first_image for e in events] == [0] * 8 + [3] * 8
    progress = [e.progress for e in events]
    assert progress == sorted(progress) and progress[-1] == 1.0
    third = events[2]  # rows 0..2 sampled: pixel rows 12.. are grey
    assert third.codes.shape == (3, 3, 8) and len(third.images) == 3
    array = np.asarray(third.images[0])  # (32, 32, 3)
    assert (array[12:] == 128).all() and not (array[:12] == 128).all()
    assert _pixels(events[7].images) == _pixels(out.images[:3])
    assert _pixels(events[-1].images) == _pixels(out.images[3:])


def test_stream_yields_rows_then_the_output(pipe):
    stream = pipe.stream(PROMPTS[:2], num_images_per_prompt=2, seed=4)
    events = list(stream)
    assert len(events) == 8 and stream.output is not None
    assert _pixels(stream.output.images) == _pixels(pipe(PROMPTS[:2], num_images_per_prompt=2, seed=4).images)
    early = pipe.stream(PROMPTS[0], num_images_per_prompt=2, seed=4)
    for event in early:
        assert event.row == 0
        break  # leaving early cancels the generation
    assert early.output is None
    with pytest.raises(ValueError, match="temperature"):
        pipe.stream(PROMPTS[0], temperature=-1)  # checked on the call, before any iteration
    with pytest.raises(TypeError):
        pipe.stream(PROMPTS[0], temprature=1.0)


def test_forced_dtype_and_device(model_dir):
    pipe = MiniDallePipeline.from_pretrained(model_dir, device="cpu", dtype="bf16")
    assert pipe.dtype == torch.bfloat16 and pipe.device.type == "cpu"
    out = pipe(PROMPTS[0], num_images_per_prompt=2, seed=0, return_codes=True)
    assert len(out.images) == 2 and out.codes.max() < 32
    # a bf16 pipeline on a CPU decodes in bf16 too, within a few levels of float32's pixels
    in_bf16 = pipe.vqvae.decode_codes(out.codes, compute_dtype=torch.bfloat16)  # (2, 3, H, W)
    assert _pixels(out.images) == _pixels(tensor_to_pil(in_bf16))
    in_fp32 = np.stack(
        [np.asarray(im, dtype=np.int16) for im in tensor_to_pil(pipe.vqvae.decode_codes(out.codes))]
    )
    assert np.abs(np.stack([np.asarray(im, dtype=np.int16) for im in out.images]) - in_fp32).max() <= 8
    with pytest.raises(ValueError, match="dtype must be one of"):
        MiniDallePipeline.from_pretrained(model_dir, dtype="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            MiniDallePipeline.from_pretrained(model_dir, device="cuda")


def test_rerank_keeps_the_best_candidates_by_clip(pipe, tmp_path):
    from pipeline.rerank import ClipReranker

    reranker = ClipReranker(build_tiny_clip(tmp_path / "clip"), device="cpu")
    prompts = PROMPTS[:2]
    kept = pipe(
        prompts, num_images_per_prompt=2, rerank_with=reranker, num_candidates=5, seed=3, return_codes=True
    )
    # the candidates are what the same seed gives without re-ranking
    candidates = pipe(prompts, num_images_per_prompt=5, seed=3, return_codes=True)
    scores = reranker.score(candidates.images, candidates.prompts).reshape(2, 5)  # (P, candidates)
    best = scores.argsort(dim=1, descending=True)[:, :2] + torch.tensor([[0], [5]])  # (P, 2)
    assert torch.equal(kept.codes, candidates.codes[best.reshape(-1)])
    assert kept.prompts == [prompts[0]] * 2 + [prompts[1]] * 2
    assert kept.scores == pytest.approx(
        scores.sort(dim=1, descending=True).values[:, :2].reshape(-1).tolist()
    )
    assert len(set(scores.reshape(-1).tolist())) > 1  # the tiny CLIP does tell images apart
    with pytest.raises(ValueError, match=r"num_candidates must be an integer in \[2, 256\]"):
        pipe(prompts, num_images_per_prompt=2, rerank_with=reranker, num_candidates=1)
    with pytest.raises(ModelFolderError, match="CLIP folder .* must hold config.json and \\*.safetensors"):
        ClipReranker(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------
# invalid arguments


@pytest.mark.parametrize(
    "prompts, kwargs, match",
    [
        ("", {}, r"prompt 0 is empty or whitespace"),
        (["a red circle", " \t\n"], {}, r"prompt 1 is empty or whitespace"),
        ([], {}, r"prompts is empty"),
        (PROMPTS[0], {"temperature": "hot"}, r"temperature must be a number >= 0 \(0 = greedy.*got 'hot'"),
        (PROMPTS[0], {"temperature": -1.0}, r"temperature must be a number >= 0"),
        (PROMPTS[0], {"temperature": float("nan")}, r"temperature must be a number >= 0"),
        (PROMPTS[0], {"top_k": 0}, r"top_k must be an integer >= 1"),
        (PROMPTS[0], {"top_k": 2.5}, r"top_k must be an integer >= 1"),
        (PROMPTS[0], {"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        (PROMPTS[0], {"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        (PROMPTS[0], {"guidance_scale": -0.5}, r"guidance_scale must be a number >= 0"),
        (PROMPTS[0], {"num_images_per_prompt": 0}, r"num_images_per_prompt must be an integer in \[1, 256\]"),
        (PROMPTS[0], {"batch_size": 0}, r"batch_size must be an integer in \[1, 256\]"),
        (PROMPTS[0], {"batch_size": 10**6}, r"batch_size must be an integer in \[1, 256\]"),
        (PROMPTS[0], {"seed": -1}, r"seed must be an integer in \[0, "),
        (PROMPTS[:2], {"seed": [1]}, r"one integer per prompt \(2\)"),
        (PROMPTS[0], {"keep_rows": 2}, r"keep_rows needs an image"),
        (
            PROMPTS[0],
            {"image": Image.new("RGB", (8, 8)), "keep_rows": 9},
            r"keep_rows must be an integer in \[0, 8\]",
        ),
        (PROMPTS[0], {"num_candidates": 4}, r"num_candidates needs rerank_with"),
    ],
)
def test_invalid_arguments_name_the_argument_and_range(pipe, prompts, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(prompts, **kwargs)


def test_over_long_prompt_is_truncated_with_a_warning(pipe):
    long = "a red circle on white " * 10
    with pytest.warns(
        PromptTruncatedWarning, match=r"Prompt too long for this model \(it reads 8 tokens\)"
    ) as caught:
        out = pipe(long, seed=0, return_codes=True)
    (warning,) = caught
    n_tokens = len(pipe.tokenizer(long)["input_ids"])
    assert warning.message.text_len == 8 and warning.message.cuts[0][2:] == (n_tokens - 8, n_tokens)
    truncated = pipe.tokenizer.decode(pipe.tokenizer(long)["input_ids"][:8])
    assert torch.equal(out.codes, pipe(truncated, seed=0, return_codes=True).codes)


# ------------------------------------------------------------------------------------------------
# command line


def test_generate_command_writes_images_grid_and_record(model_dir, tmp_path):
    command = [
        sys.executable,
        "-m",
        "pipeline.generate",
        "--model",
        str(model_dir),
        "--prompt",
        PROMPTS[0],
        "--prompt",
        PROMPTS[1],
        "-n",
        "3",
        "--out",
        str(tmp_path / "grid.png"),
        "--seed",
        "5",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sampling rows" in result.stderr and "100%" in result.stderr  # the progress bar
    assert "seed: 5" in result.stdout
    grid = Image.open(tmp_path / "grid.png")
    assert grid.width > 3 * 32 and grid.height > 2 * 32
    images = sorted((tmp_path / "grid_images").glob("*.png"))
    assert [p.name for p in images] == [f"p{p:03d}_{i:02d}.png" for p in range(2) for i in range(3)]
    record = json.loads((tmp_path / "grid.json").read_text())
    assert record["seed"] == 5 and record["prompts"] == PROMPTS[:2]
    # the files are the images the library makes under the same seed
    pipe = MiniDallePipeline.from_pretrained(model_dir, device="cpu")
    expected = pipe(PROMPTS[:2], num_images_per_prompt=3, seed=5).images
    assert [Image.open(p).convert("RGB").tobytes() for p in images] == _pixels(expected)


def test_generate_command_errors_and_prompts_file(model_dir, tmp_path, capsys):
    assert generate_main(["--model", str(model_dir), "--prompt", "x", "--temperature", "-1"]) == 2
    assert "temperature must be a number >= 0" in capsys.readouterr().err
    assert generate_main(["--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert generate_main(["--model", str(model_dir)]) == 2
    assert "--prompts-file" in capsys.readouterr().err
    # a wrong re-ranker folder is named before the pipeline loads (here it would fail too)
    assert (
        generate_main(["--model", str(tmp_path / "missing"), "--prompt", "x", "--rerank-clip", str(tmp_path)])
        == 2
    )
    assert "--rerank-clip '" in (err := capsys.readouterr().err) and "must hold config.json" in err
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPTS[0]}\n\n{PROMPTS[2]}\n")
    out = tmp_path / "sub" / "g.png"
    assert (
        generate_main(
            ["--model", str(model_dir), "--prompts-file", str(prompts), "-n", "1", "--out", str(out)]
        )
        == 0
    )
    assert out.is_file() and len(list((tmp_path / "sub" / "g_images").glob("*.png"))) == 2


def test_sampling_speed_benchmark_runs_and_writes_json(model_dir, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("sampling_speed", ROOT / "benchmarks" / "sampling_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "speed.json"
    report = bench.main(
        [
            "--model",
            str(model_dir),
            "--batch-sizes",
            "1",
            "2",
            "--repeats",
            "1",
            "--methods",  # not hf-static-compile: compiling each batch shape takes ~30 s on a CPU
            "recompute",
            "hf-cache",
            "kv-cache",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    rows = report["results"]
    assert [(r["batch_size"], r["guidance"], r["method"]) for r in rows] == [
        (b, g, m) for b in (1, 2) for g in (False, True) for m in ("recompute", "hf-cache", "kv-cache")
    ]
    assert all(r["images_per_s"] > 0 for r in rows)
    assert all(r["speedup_vs_recompute"] == 1.0 for r in rows if r["method"] == "recompute")
    assert "images/s" in capsys.readouterr().out
