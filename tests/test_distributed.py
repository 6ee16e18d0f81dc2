"""Data-parallel training with two real CPU processes (torchrun, gloo), FSDP2 for stage 2, and streamed data.

Each two-process run is checked against a one-process run of the same global batch (2 x 4 against
1 x 8): world size 2 in the checkpoint marker, the two processes' weights bit-identical (their
digests), and the weights equal to the single-process ones within float tolerance.
"""

from __future__ import annotations

import signal

import datasets
import pytest
import torch

from minidalle.data import DataConfig
from minidalle.shapes import build_builtin_dataset
from minidalle.streaming import StreamingImageCaptions, load_streaming_train_eval
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.model import VQVAE
from tests.conftest import flags, read_metrics
from tests.procs import assert_same_weights, marker, max_difference, run, start, wait_for, weights

# A wrong data split, gradient average or codebook restart moves a weight by about the learning rate
# per step (Adam's steps are lr-sized whatever the gradient's scale); float rounding, which differs
# between machines, moves it far less. The tolerances are a tenth of the learning rate.
# In fp32 whatever the configs' precision: bf16 rounding differs between a batch of 8 and two of 4 by far
# more than these tolerances, and what is tested here is the distribution, not the precision.
STAGE1_LR, STAGE2_LR = 2e-3, 1.5e-3

STAGE1 = flags(
    "--config configs/stage1_tiny.yaml --data.builtin_train_size 256 --data.builtin_eval_size 32 "
    "--model.base_channels 8 --model.codebook_size 32 --train.warmup_steps 2 --train.log_every 2 "
    "--train.eval_every 0 --train.image_every 0 --train.checkpoint_every 0 --train.report_to none "
    f"--num_eval_images 32 --train.learning_rate {STAGE1_LR} --train.mixed_precision no "
    # k-means over two batches, and dead-code restarts every 2 steps (this threshold makes some happen)
    "--codebook.kmeans_batches 2 --codebook.restart_every 2 --codebook.dead_code_threshold 1.3"
)

STAGE2 = flags(
    "--config configs/stage2_tiny.yaml --data.builtin_train_size 256 --data.builtin_eval_size 32 "
    "--tokenizer.vocab_size 300 --model.hidden_size 32 --model.num_layers 2 --model.num_heads 2 "
    "--train.warmup_steps 2 --train.log_every 2 --train.eval_every 3 --train.image_every 0 "
    "--train.checkpoint_every 0 --train.report_to none --num_eval_examples 32 "
    f"--loss.caption_dropout 0.3 --train.max_steps 6 --train.learning_rate {STAGE2_LR} --train.mixed_precision no"
)


def assert_ranks_agree(checkpoint, world_size: int) -> None:
    info = marker(checkpoint)
    assert info["world_size"] == world_size
    digests = info.get("rank_param_digests")
    if digests is not None:
        assert len(digests) == world_size and len(set(digests)) == 1, digests


# ----------------------------------------------------------------------------- stage 1 (DDP)


def test_stage1_two_processes_match_one(tmp_path, shapes_cache):
    common = [*STAGE1, "--data.builtin_cache_dir", str(shapes_cache), "--train.max_steps", "6"]
    out_ddp, out_one = str(tmp_path / "ddp"), str(tmp_path / "one")
    run("stage1_vqvae/train.py", *common, "--train.batch_size", "4", "--train.output_dir", out_ddp, nproc=2)
    run("stage1_vqvae/train.py", *common, "--train.batch_size", "8", "--train.output_dir", out_one)
    assert_ranks_agree(tmp_path / "ddp" / "checkpoints" / "checkpoint-6", world_size=2)
    assert_ranks_agree(tmp_path / "one" / "checkpoints" / "checkpoint-6", world_size=1)
    restarts = [m.get("train/restarted_codes", 0) for m in read_metrics(tmp_path / "one")]
    assert sum(restarts) > 0  # the codebook restarts were exercised
    ddp, one = weights(tmp_path / "ddp" / "vqvae"), weights(tmp_path / "one" / "vqvae")
    # Weights (conv kernels, the codebook) agree to well under a fault's lr-sized moves. Biases that feed
    # a per-channel GroupNorm have no true gradient, so Adam turns float noise in theirs into lr-sized
    # steps; they cancel in the output, which is compared instead.
    matrices = [k for k in ddp if ddp[k].dim() >= 2]
    assert max_difference(ddp, one, matrices) < STAGE1_LR / 10
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model_ddp, model_one = (
        VQVAE.from_pretrained(tmp_path / "ddp" / "vqvae"),
        VQVAE.from_pretrained(tmp_path / "one" / "vqvae"),
    )
    with torch.no_grad():
        assert torch.allclose(
            model_ddp(pixels).reconstruction, model_one(pixels).reconstruction, atol=STAGE1_LR / 10
        )


# ----------------------------------------------------------------------------- stage 2 (DDP, FSDP)


@pytest.fixture(scope="module")
def vqvae_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = VQVAEConfig(resolution=32, base_channels=8, channel_multipliers=[1, 2, 2], codebook_size=32)
    return VQVAE(config).save_pretrained(tmp_path_factory.mktemp("stage1") / "vqvae")


@pytest.fixture(scope="module")
def stage2_single(tmp_path_factory, vqvae_dir, shapes_cache):
    """One process, batch 8, with its own pre-encoded codes."""
    root = tmp_path_factory.mktemp("stage2_single")
    args = stage2_args(vqvae_dir, shapes_cache, root / "codes", root / "run", batch_size="8")
    run("stage2_transformer/train.py", *args)
    return root


def stage2_args(vqvae_dir, shapes_cache, codes, out, batch_size: str = "4"):
    paths = ["--vqvae", vqvae_dir, "--data.builtin_cache_dir", shapes_cache, "--codes.cache_dir", codes]
    return [*STAGE2, *map(str, paths), "--train.batch_size", batch_size, "--train.output_dir", str(out)]


def test_stage2_two_processes_match_one(tmp_path, vqvae_dir, shapes_cache, stage2_single):
    args = stage2_args(vqvae_dir, shapes_cache, tmp_path / "codes", tmp_path / "ddp")
    run("stage2_transformer/train.py", *args, nproc=2)
    assert_ranks_agree(tmp_path / "ddp" / "checkpoints" / "checkpoint-6", world_size=2)
    ddp, one = weights(tmp_path / "ddp" / "transformer"), weights(stage2_single / "run" / "transformer")
    assert ddp.keys() == one.keys()
    assert max_difference(ddp, one, ddp.keys()) < STAGE2_LR / 10
    # pre-encoding split across the two processes and merged gives exactly the one-process result
    for split in ("train", "validation"):
        merged = datasets.load_from_disk(str(next((tmp_path / "codes").glob(f"{split}-*")) / "data"))
        single = datasets.load_from_disk(str(next((stage2_single / "codes").glob(f"{split}-*")) / "data"))
        assert merged.to_dict() == single.to_dict()


def test_stage2_fsdp_checkpoints_resume_and_export(tmp_path, vqvae_dir, shapes_cache, stage2_single):
    """FSDP2 (decoder layers wrapped, sharded checkpoints), stopped at step 3 and resumed."""
    out = tmp_path / "fsdp"
    args = stage2_args(vqvae_dir, shapes_cache, tmp_path / "codes", out)
    run("stage2_transformer/train.py", *args, "--train.stop_after_steps", "3", nproc=2, fsdp=True)
    checkpoint = out / "checkpoints" / "checkpoint-3"
    assert marker(checkpoint)["distributed_type"] == "FSDP" and marker(checkpoint)["world_size"] == 2
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir()  # each process wrote its own shard
    # the model exported inside a sharded checkpoint is the whole model, loadable as usual
    from stage2_transformer.model import load_transformer

    model, _ = load_transformer(checkpoint / "transformer")
    assert all(not hasattr(p, "device_mesh") for p in model.parameters())
    run("stage2_transformer/train.py", *args, "--resume_from_checkpoint", "latest", nproc=2, fsdp=True)
    fsdp, one = weights(out / "transformer"), weights(stage2_single / "run" / "transformer")
    assert fsdp.keys() == one.keys()
    assert max_difference(fsdp, one, fsdp.keys()) < STAGE2_LR / 10


# ----------------------------------------------------------------------------- streaming


@pytest.fixture(scope="module")
def parquet_shards(tmp_path_factory, shapes_cache):
    """The built-in data as 4 train shards and 1 validation shard of parquet."""
    root = tmp_path_factory.mktemp("parquet")
    folder, one_shard = root / "sharded", root / "one_shard"
    folder.mkdir(), one_shard.mkdir()
    dsd = build_builtin_dataset(shapes_cache, train_size=256, eval_size=32)
    for i in range(4):
        dsd["train"].shard(4, i, contiguous=True).to_parquet(str(folder / f"train-{i:05d}.parquet"))
    dsd["validation"].to_parquet(str(folder / "validation-00000.parquet"))
    dsd["train"].to_parquet(str(one_shard / "train-00000.parquet"))
    return folder


def test_stream_is_split_across_processes_and_resumes_by_position(parquet_shards):
    def rows(dataset):
        return [(item["text"], item["pixels"].sum().item()) for item in dataset]

    # 4 shards: whole shards per process; 1 shard (no validation split: 16 examples held out from it):
    # every other example per process
    for folder, total in ((parquet_shards, 256), (parquet_shards.parent / "one_shard", 240)):
        cfg = DataConfig(source="hf", path=str(folder), streaming=True)
        stream, evaluation = load_streaming_train_eval(cfg, max_eval=16)
        assert len(evaluation) == 16 and stream.n_shards == (4 if total == 256 else 1)
        parts = [
            StreamingImageCaptions(stream, 32, seed=0, buffer_size=32, rank=r, world_size=2) for r in (0, 1)
        ]
        for epoch in (0, 1):
            for part in parts:
                part.set_position(epoch)
            seen = [rows(part) for part in parts]
            assert not set(seen[0]) & set(seen[1])  # no example on both processes in an epoch
            assert len(seen[0]) + len(seen[1]) == total and len(set(seen[0]) | set(seen[1])) == total
            if epoch == 0:
                first_epoch = seen[0]
        assert seen[0] != first_epoch  # reshuffled every epoch
    parts[0].set_position(epoch=1, skip=10)
    assert rows(parts[0]) == seen[0][10:]  # resuming mid-epoch continues exactly


def test_stage1_streaming_two_processes_resume_exactly(tmp_path, parquet_shards):
    streamed = "--data.source hf --data.streaming true --data.shuffle_buffer 32 --train.batch_size 8"
    common = [*STAGE1, *flags(streamed), "--data.path", str(parquet_shards), "--train.log_every", "10"]
    # 20 steps x 8 images x 2 processes: more than one epoch of each process's 128 examples
    common += ["--train.max_steps", "20"]
    run("stage1_vqvae/train.py", *common, "--train.output_dir", str(tmp_path / "straight"), nproc=2)
    resumed = tmp_path / "resumed"
    common += ["--train.output_dir", str(resumed)]
    run("stage1_vqvae/train.py", *common, "--train.stop_after_steps", "18", nproc=2)
    info = marker(resumed / "checkpoints" / "checkpoint-18")
    assert info["world_size"] == 2 and info["stream_positions"] == [[1, 2], [1, 2]]  # 18 = 16 + 2 batches
    run("stage1_vqvae/train.py", *common, "--resume_from_checkpoint", "latest", nproc=2)
    assert_ranks_agree(resumed / "checkpoints" / "checkpoint-20", world_size=2)
    assert_same_weights(tmp_path / "straight" / "vqvae", resumed / "vqvae")


# ----------------------------------------------------------------------------- preemption of a 2-process job


def test_sigterm_to_a_two_process_job_checkpoints_on_both(tmp_path, shapes_cache):
    out = tmp_path / "run"
    args = [*STAGE1, "--data.builtin_cache_dir", str(shapes_cache), "--train.output_dir", str(out)]
    args += flags("--train.batch_size 4 --train.max_steps 100000 --train.log_every 1")
    job = start("stage1_vqvae/train.py", *args, nproc=2, log=tmp_path / "log.txt")
    wait_for(lambda: (out / "metrics.jsonl").is_file(), job, what="the first logged step")
    job.send_signal(signal.SIGTERM)  # to torchrun, which passes it on to both processes
    job.wait(timeout=120)
    log = (tmp_path / "log.txt").read_text()
    assert "SIGTERM received: checkpoint written" in log
    (checkpoint,) = (out / "checkpoints").iterdir()
    assert checkpoint.name.startswith("checkpoint-") and not checkpoint.name.endswith(".tmp")
    assert_ranks_agree(checkpoint, world_size=2)
