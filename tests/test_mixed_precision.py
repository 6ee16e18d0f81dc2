"""bf16 on the CPU: both train scripts launched with --train.mixed_precision bf16 (Accelerate runs bf16
autocast on the CPU too), and the stage-2 logits kept in bf16 without changing the loss or its gradient."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from minidalle.devices import cpu_has_native_bf16
from minidalle.distributed import drop_fp32_output_copy
from minidalle.pixels import pil_to_tensor
from minidalle.shapes import generate_examples
from stage1_vqvae.model import VQVAE
from stage2_transformer.layout import SequenceLayout
from stage2_transformer.loss import weighted_lm_loss
from stage2_transformer.model import TransformerConfig, build_transformer, load_transformer
from tests import test_stage1_train as stage1
from tests import test_stage2_train as stage2
from tests.conftest import read_metrics


@pytest.fixture(scope="module")
def vqvae_dir(tmp_path_factory):
    return stage2.save_vqvae(tmp_path_factory.mktemp("stage1") / "vqvae")


SHORT = "--train.max_steps 4 --train.eval_every 0 --train.image_every 0 --train.checkpoint_every 0"


def logged(out, key: str) -> list[float]:
    return [m[key] for m in read_metrics(out) if key in m]


def assert_bf16_run_differs_slightly(fp32: list[float], bf16: list[float]) -> None:
    """bf16 autocast really ran (the losses are not fp32's) and trained alike (within a few percent)."""
    assert all(math.isfinite(v) for v in bf16)
    assert bf16[0] != fp32[0]
    assert bf16[0] == pytest.approx(fp32[0], rel=0.05)


def test_stage1_trains_in_bf16_and_auto_picks_what_this_cpu_computes_natively(tmp_path, shapes_cache):
    fp32, bf16, auto = tmp_path / "fp32", tmp_path / "bf16", tmp_path / "auto"
    stage1.launch(stage1.TRAIN, *stage1.tiny_args(shapes_cache, fp32, f"{SHORT} --train.mixed_precision no"))
    stage1.launch(
        stage1.TRAIN, *stage1.tiny_args(shapes_cache, bf16, f"{SHORT} --train.mixed_precision bf16")
    )
    assert_bf16_run_differs_slightly(logged(fp32, "train/mse"), logged(bf16, "train/mse"))
    # auto (the tiny configs' setting) is bf16 on a CPU with AVX512-BF16 or AMX, else fp32: its run is
    # exactly the run of the precision it names.
    done = stage1.launch(
        stage1.TRAIN, *stage1.tiny_args(shapes_cache, auto, f"{SHORT} --train.mixed_precision auto")
    )
    chosen = "bf16" if cpu_has_native_bf16() else "no"
    assert f"train.mixed_precision auto: {chosen} on cpu" in done.stderr
    assert logged(auto, "train/mse") == logged(bf16 if chosen == "bf16" else fp32, "train/mse")
    # The exported model (fp32 weights) picks the same codes under bf16 autocast as in fp32 for nearly
    # every position: the quantizer decides in fp32; only the encoder's bf16 rounding can move a code.
    model = VQVAE.from_pretrained(bf16 / "vqvae").eval()
    assert all(
        t.dtype == torch.float32 for t in load_file(str(bf16 / "vqvae" / "model.safetensors")).values()
    )
    examples = generate_examples("validation", 16, resolution=32)
    pixels = torch.stack([pil_to_tensor(example["image"]) for example in examples])  # (16, 3, 32, 32)
    with torch.no_grad():
        codes = model.encode(pixels)  # (16, 8, 8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            codes_bf16 = model.encode(pixels)
    assert (codes_bf16 == codes).float().mean() >= 0.9


def test_stage2_trains_in_bf16(tmp_path, vqvae_dir, shapes_cache):
    codes, fp32, bf16 = tmp_path / "codes", tmp_path / "fp32", tmp_path / "bf16"
    stage2.launch(
        stage2.TRAIN,
        *stage2.tiny_args(vqvae_dir, shapes_cache, codes, fp32, f"{SHORT} --train.mixed_precision no"),
    )
    bf16_args = stage2.tiny_args(
        vqvae_dir, shapes_cache, codes, bf16, f"{SHORT} --train.mixed_precision bf16"
    )
    stage2.launch(stage2.TRAIN, *bf16_args)
    image_loss = logged(bf16, "train/image_loss")
    assert_bf16_run_differs_slightly(logged(fp32, "train/image_loss"), image_loss)
    assert image_loss[-1] < image_loss[0]
    # the bf16 run pre-encoded under its autocast, into codes of its own: fp32 ones are not reused
    assert len(list(codes.glob("train-*"))) == 2
    model, _ = load_transformer(bf16 / "transformer")
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.fixture
def bf16_accelerator(fresh_accelerator_state):
    """An in-process Accelerator in bf16; Accelerate's process-wide state is reset around it."""
    return Accelerator(mixed_precision="bf16", cpu=True)


def test_logits_stay_bf16_and_the_loss_is_unchanged(bf16_accelerator):
    layout = SequenceLayout(text_len=4, text_vocab_size=20, codebook_size=16, grid_h=2, grid_w=2, pad_id=0)
    torch.manual_seed(0)
    model = bf16_accelerator.prepare(build_transformer(TransformerConfig(32, 2, 2), layout))
    text = torch.randint(1, 20, (3, layout.text_len))
    seq = layout.build(text, torch.randint(0, 16, (3, layout.num_image_tokens)))  # (3, L)

    def loss_and_grads():
        logits = model(input_ids=seq[:, :-1], use_cache=False).logits  # (3, L-1, V)
        loss, _ = weighted_lm_loss(logits, seq, layout)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        return logits.dtype, loss, grads

    copied_dtype, copied_loss, copied_grads = loss_and_grads()
    drop_fp32_output_copy(bf16_accelerator, model)
    kept_dtype, kept_loss, kept_grads = loss_and_grads()
    assert (copied_dtype, kept_dtype) == (torch.float32, torch.bfloat16)
    assert torch.equal(kept_loss, copied_loss)
    assert all(torch.equal(a, b) for a, b in zip(kept_grads, copied_grads))
