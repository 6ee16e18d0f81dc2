"""Faults, each in a real subprocess on a tiny config: kill it, resume it, compare the weights.

SIGTERM (preemption), SIGKILL at a random moment and at fixed places inside checkpoint writing,
non-finite losses, bad configuration, and interrupted pre-encoding. Faults at fixed places are injected
with the ``MINIDALLE_FAULTS`` test hook (see ``minidalle.faults.fault_active``).
"""

from __future__ import annotations

import json
import pickle
import signal
from fractions import Fraction

import datasets
import pytest
import torch

from minidalle.checkpoints import holds_run, list_checkpoints, resolve_resume
from minidalle.faults import stop_signal_handlers
from minidalle.shapes import build_builtin_dataset
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.model import VQVAE
from tests.conftest import ROOT, flags
from tests.procs import assert_same_weights, marker, run, start, wait_for, weights

STAGE1 = "stage1_vqvae/train.py"
STAGE2 = "stage2_transformer/train.py"
TINY = flags(
    "--config configs/stage1_tiny.yaml --data.builtin_train_size 256 --data.builtin_eval_size 32 "
    "--model.base_channels 8 --model.codebook_size 32 --train.batch_size 8 --train.warmup_steps 2 "
    "--train.log_every 2 --train.eval_every 0 --train.image_every 0 --train.report_to none "
    "--codebook.kmeans_batches 1 --codebook.restart_every 2 --num_eval_images 32"
)
LONG = 60  # steps of a run that is signalled while it trains (about 3 s of training)


def tiny(cache, out, *extra):
    return [*TINY, "--data.builtin_cache_dir", str(cache), "--train.output_dir", str(out), *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shapes_cache):
    """Uninterrupted runs that the interrupted ones must reproduce exactly: 8 and LONG steps."""
    root = tmp_path_factory.mktemp("reference")
    for steps in (8, LONG):
        uninterrupted = flags(f"--train.max_steps {steps} --train.checkpoint_every 0")
        run(STAGE1, *tiny(shapes_cache, root / str(steps), *uninterrupted))
    return root


def logged_steps(out) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


# ----------------------------------------------------------------------------- preemption and crashes


def test_sigterm_checkpoints_exits_zero_and_resumes_exactly(tmp_path, shapes_cache, reference):
    out = tmp_path / "run"
    args = tiny(shapes_cache, out, "--train.max_steps", str(LONG), "--train.checkpoint_every", "0")
    job = start(STAGE1, *args, log=tmp_path / "log.txt")
    wait_for(lambda: logged_steps(out) >= 1, job, what="step 2")
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=120) == 0, (tmp_path / "log.txt").read_text()[-3000:]
    ((step, checkpoint),) = list_checkpoints(out)
    assert 2 <= step < LONG and marker(checkpoint)["step"] == step
    assert "SIGTERM received: checkpoint written" in (tmp_path / "log.txt").read_text()
    run(STAGE1, *args, "--resume_from_checkpoint", "latest")
    assert_same_weights(reference / str(LONG) / "vqvae", out / "vqvae")


def test_sigkill_at_a_random_moment_resumes_exactly(tmp_path, shapes_cache, reference):
    """Checkpoints at every step, so the kill most likely lands while one is being written."""
    out = tmp_path / "run"
    every_step = flags("--train.checkpoint_every 1 --train.checkpoints_total_limit 2")
    args = tiny(shapes_cache, out, "--train.max_steps", str(LONG), *every_step)
    job = start(STAGE1, *args, log=tmp_path / "log.txt")
    wait_for(lambda: len(list_checkpoints(out)) >= 2, job, what="two checkpoints")
    job.send_signal(signal.SIGKILL)
    assert job.wait(timeout=60) == -signal.SIGKILL
    latest = resolve_resume(out, "latest")  # only complete checkpoints count
    assert latest is not None and (latest / "vqvae" / "model.safetensors").is_file()
    run(STAGE1, *args, "--resume_from_checkpoint", "latest", "--train.checkpoint_every", "0")
    assert_same_weights(reference / str(LONG) / "vqvae", out / "vqvae")
    assert not list((out / "checkpoints").glob("*.tmp"))  # leftovers of the killed write are gone


@pytest.mark.parametrize("place", ["checkpoint_after_state", "checkpoint_before_rename"])
def test_sigkill_while_writing_a_checkpoint(tmp_path, shapes_cache, reference, place):
    """Killed inside the write of checkpoint-6: it is never loaded and checkpoint-4 (limit 1) survives."""
    out = tmp_path / "run"
    keep_one = flags("--train.max_steps 8 --train.checkpoint_every 2 --train.checkpoints_total_limit 1")
    args = tiny(shapes_cache, out, *keep_one)
    result = run(STAGE1, *args, env={"MINIDALLE_FAULTS": f"{place}@6"}, expect_ok=False)
    assert result.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-6.tmp"]
    assert [step for step, _ in list_checkpoints(out)] == [4]
    run(STAGE1, *args, "--resume_from_checkpoint", "latest")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-8"]
    assert_same_weights(reference / "8" / "vqvae", out / "vqvae")


def test_signals_act_at_once_again_after_the_last_step(
    tmp_path, shapes_cache, monkeypatch, fresh_accelerator_state
):
    """A train script run inside the caller's process (a notebook) hands SIGINT and SIGTERM back once
    training has ended, by a stop, after the last step's save, or by the non-finite stop: a flag nobody
    reads would swallow the caller's Ctrl-C, and hold up the final evaluation's end when torchrun SIGTERMs
    the other ranks."""
    from minidalle.errors import run_main
    from stage1_vqvae.train import main

    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    monkeypatch.chdir(ROOT)
    handlers = stop_signal_handlers()
    out = tmp_path / "run"
    args = tiny(shapes_cache, out, "--train.max_steps", "4", "--train.checkpoint_every", "0")
    assert run_main(main, [*args, "--train.stop_after_steps", "2"]) == 0  # the stop at a step boundary
    assert [step for step, _ in list_checkpoints(out)] == [2]
    assert stop_signal_handlers() == handlers
    assert run_main(main, [*args, "--resume_from_checkpoint", "latest"]) == 0  # the end of training
    assert (out / "vqvae" / "model.safetensors").is_file()
    assert stop_signal_handlers() == handlers
    monkeypatch.setenv("MINIDALLE_FAULTS", "nan_loss@1-3")
    nonfinite = tiny(
        shapes_cache, tmp_path / "nan", "--train.max_steps", "4", "--train.max_nonfinite_steps", "3"
    )
    with pytest.raises(SystemExit, match="non-finite steps in a row"):
        run_main(main, nonfinite)
    assert stop_signal_handlers() == handlers


def test_signals_are_handed_back_when_training_raises(
    tmp_path, shapes_cache, monkeypatch, fresh_accelerator_state
):
    """An exception raised once training has begun skips the restore at its endings: a user mistake (a
    checkpoint that cannot be resumed) or a bug mid-loop. run_main hands SIGINT and SIGTERM back however
    main ends, so that a caller training inside its own process keeps its Ctrl-C."""
    from minidalle.errors import run_main
    from minidalle.trainer import TrainingRun
    from stage1_vqvae.train import main

    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    monkeypatch.chdir(ROOT)
    handlers = stop_signal_handlers()
    out = tmp_path / "run"
    args = tiny(shapes_cache, out, "--train.max_steps", "4", "--train.checkpoint_every", "0")
    assert run_main(main, [*args, "--train.stop_after_steps", "2"]) == 0
    # resuming reads the checkpoint after the handlers are set: a pickled object there is refused (exit 2)
    (out / "checkpoints" / "checkpoint-2" / "optimizer.bin").write_bytes(pickle.dumps(Fraction(1, 3)))
    assert run_main(main, [*args, "--resume_from_checkpoint", "latest"]) == 2
    assert stop_signal_handlers() == handlers

    def failing_step(self, loss, on_skip=None):  # noqa: ARG001
        raise RuntimeError("a bug in the loop")

    monkeypatch.setattr(TrainingRun, "optimizer_step", failing_step)
    with pytest.raises(RuntimeError, match="a bug in the loop"):
        run_main(main, tiny(shapes_cache, tmp_path / "bug", "--train.max_steps", "4"))
    assert stop_signal_handlers() == handlers


# ----------------------------------------------------------------------------- non-finite losses


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, shapes_cache):
    out = tmp_path / "run"
    args = tiny(shapes_cache, out, "--train.max_steps", "6", "--train.checkpoint_every", "0")
    run(STAGE1, *args, env={"MINIDALLE_FAULTS": "nan_loss@3"})
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    skipped = {m["step"]: m["train/skipped_steps"] for m in metrics if "train/skipped_steps" in m}
    assert skipped == {2: 0, 4: 1, 6: 1}
    assert all(torch.isfinite(w).all() for w in weights(out / "vqvae").values())


@pytest.mark.parametrize("stage", [1, 2])
def test_too_many_nonfinite_steps_stop_with_the_last_good_state(tmp_path, shapes_cache, stage):
    """NaN losses at steps 3-5 with max_nonfinite_steps 3: exit 1 after step 5, with a checkpoint whose
    weights are those of step 2 (the skipped steps changed nothing)."""
    out = tmp_path / "run"
    common = ["--train.max_steps", "8", "--train.checkpoint_every", "2", "--train.max_nonfinite_steps", "3"]
    if stage == 1:
        script, args, model = (
            STAGE1,
            tiny(shapes_cache, out, *common, "--codebook.restart_every", "0"),
            "vqvae",
        )
    else:
        script, args, model = STAGE2, stage2_tiny(tmp_path, shapes_cache, out, *common), "transformer"
    result = run(script, *args, env={"MINIDALLE_FAULTS": "nan_loss@3-5"}, expect_ok=False)
    assert result.returncode == 1
    assert "Stopping: 3 non-finite steps in a row" in result.stderr
    assert [step for step, _ in list_checkpoints(out)] == [2, 4, 5]
    last = out / "checkpoints" / "checkpoint-5"
    assert marker(last)["reason"] == "non-finite"
    assert_same_weights(out / "checkpoints" / "checkpoint-2" / model, last / model)


# ----------------------------------------------------------------------------- bad configuration


def _empty_folder(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "metadata.jsonl").write_text("")
    return str(folder)


@pytest.mark.parametrize(
    "extra,message",
    [
        (lambda tmp: ["--train.max_steps", "ten"], "expects an integer"),
        (lambda tmp: ["--train.learning_rate", "-1"], "learning_rate must be > 0"),
        (lambda tmp: ["--train.batch_size", "512"], "fewer than one batch"),
        (
            lambda tmp: ["--data.source", "imagefolder", "--data.path", str(tmp / "nowhere")],
            "is not a folder",
        ),
        (lambda tmp: ["--data.source", "imagefolder", "--data.path", _empty_folder(tmp)], "holds no images"),
    ],
    ids=["wrong-type", "out-of-range", "too-little-data", "missing-data", "empty-data"],
)
def test_bad_configuration_fails_before_any_work(tmp_path, shapes_cache, extra, message):
    out = tmp_path / "run"
    result = run(
        STAGE1, *tiny(shapes_cache, out, "--train.max_steps", "2", *extra(tmp_path)), expect_ok=False
    )
    assert result.returncode != 0 and message in result.stderr
    assert not holds_run(out) and not (out / "vqvae").exists()  # nothing trained, logged or saved


def test_a_failed_start_does_not_block_the_next_but_a_real_run_does(tmp_path, shapes_cache):
    out = tmp_path / "run"
    too_big = tiny(shapes_cache, out, "--train.max_steps", "2", "--train.batch_size", "512")
    result = run(STAGE1, *too_big, expect_ok=False)
    assert result.returncode != 0
    run(STAGE1, *tiny(shapes_cache, out, "--train.max_steps", "2"))  # same folder, fixed config
    result = run(STAGE1, *tiny(shapes_cache, out, "--train.max_steps", "2"), expect_ok=False)
    assert result.returncode != 0 and "already holds a run" in result.stderr


# ----------------------------------------------------------------------------- interrupted pre-encoding


def stage2_tiny(tmp_path, cache, out, *extra):
    vqvae = tmp_path / "vqvae"
    if not vqvae.is_dir():
        torch.manual_seed(0)
        VQVAE(VQVAEConfig(resolution=32, base_channels=8, codebook_size=32)).save_pretrained(vqvae)
    settings = flags(
        "--config configs/stage2_tiny.yaml --data.builtin_train_size 256 --data.builtin_eval_size 32 "
        "--tokenizer.vocab_size 300 --model.hidden_size 32 --model.num_layers 2 --model.num_heads 2 "
        "--train.batch_size 8 --train.log_every 2 --train.eval_every 0 --train.image_every 0 "
        "--train.report_to none --num_eval_examples 32"
    )
    paths = ["--vqvae", vqvae, "--data.builtin_cache_dir", cache, "--codes.cache_dir", tmp_path / "codes"]
    return [*settings, *map(str, paths), "--train.output_dir", str(out), *extra]


def test_interrupted_precompute_reruns_without_duplicated_or_missing_rows(tmp_path, shapes_cache):
    """Two processes; process 1 is killed while saving its shard of the train codes, then the run is
    relaunched (into the same folder, as nothing was trained) and finishes."""
    out = tmp_path / "run"
    # one row per image (no shifted views), so that the rows can be checked against the source one to one,
    # and in fp32, so that they can be checked against codes encoded here (in other threads)
    args = stage2_tiny(
        tmp_path,
        shapes_cache,
        out,
        "--train.max_steps",
        "2",
        "--codes.shift_pixels",
        "0",
        "--train.mixed_precision",
        "no",
    )
    result = run(STAGE2, *args, nproc=2, env={"MINIDALLE_FAULTS": "precompute_mid_save@1"}, expect_ok=False)
    assert result.returncode != 0
    (partial,) = (tmp_path / "codes").glob("train-*.partial")
    assert not (partial / "shard-00001-of-00002").exists()  # killed before its shard was complete
    assert not [p for p in (tmp_path / "codes").glob("train-*") if not p.name.endswith(".partial")]
    run(STAGE2, *args, nproc=2)
    (final,) = (tmp_path / "codes").glob("train-*")
    codes = datasets.load_from_disk(str(final / "data"))
    source = build_builtin_dataset(shapes_cache, train_size=256, eval_size=32)["train"]
    assert codes["text"] == source["text"]  # every row once, in order
    # and the codes are those of the stage-1 model, encoded in the same batches (a shard each)
    vqvae = VQVAE.from_pretrained(tmp_path / "vqvae")
    from minidalle.data import ImageCaptionDataset, collate_image_captions

    images = ImageCaptionDataset(source.cast_column("image", datasets.Image(decode=False)), 32)
    for half in (range(0, 128), range(128, 256)):
        pixels = collate_image_captions([images[i] for i in half])["pixels"]
        expected = vqvae.encode(pixels).flatten(1)
        assert torch.equal(torch.tensor(codes[half.start : half.stop]["codes"]).long(), expected)
    assert (out / "transformer" / "model.safetensors").is_file()
