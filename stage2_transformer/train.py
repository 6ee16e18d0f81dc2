"""Train the stage-2 transformer: the prior p(image codes | caption).

    accelerate launch -q stage2_transformer/train.py --config configs/stage2_tiny.yaml [--train.max_steps 100 ...]

Sequence per pair: [caption tokens, padded to text_len | <boi> | h*w image codes in raster order].
Before training, every image is encoded once by the frozen stage-1 model (``vqvae``) and stored.
Writes under ``train.output_dir``: the caption tokenizer (``tokenizer/``), TensorBoard logs, sample
grids for fixed validation captions (``images/``), checkpoints that are also loadable models, and the
final model (``transformer/``) with its sequence layout.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path

import torch

from minidalle import data as data_lib
from minidalle.checker import score_images
from minidalle.checkpoints import holds_run
from minidalle.config import parse_config
from minidalle.distributed import main_process_model, unwrap
from minidalle.errors import run_main
from minidalle.hub import fingerprint_matches, model_fingerprint
from minidalle.image_folder import require_captions
from minidalle.images import captioned_grid
from minidalle.metrics_log import device_memory_metrics, format_metrics
from minidalle.process_exit import exit_process
from minidalle.trackers import log_image
from minidalle.trainer import TrainingRun, step_generator
from stage1_vqvae.model import VQVAE
from stage2_transformer.evaluation import evaluate_prior, sample_images
from stage2_transformer.layout import SequenceLayout
from stage2_transformer.loss import weighted_lm_loss
from stage2_transformer.model import (
    build_transformer,
    count_parameters,
    prefer_fast_attention,
    save_transformer,
)
from stage2_transformer.precompute import CodesMismatchError, load_codes_dir, precompute_codes
from stage2_transformer.run_config import Stage2RunConfig
from stage2_transformer.stage1_record import describe, read_stage1_record, write_stage1_record
from stage2_transformer.tokenizer import load_caption_tokenizer, train_caption_tokenizer

logger = logging.getLogger("stage2_transformer.train")


def check_stage1_matches_run(output_dir: Path, vqvae_dir: str, fingerprint: str, codebook_size: int) -> None:
    """A resumed run must keep the stage-1 model it started with: its codes are what it learned."""
    record = read_stage1_record(output_dir)
    if record is None:
        return
    same_model = fingerprint_matches(vqvae_dir, record["fingerprint"], fingerprint)
    if not same_model or record["codebook_size"] != codebook_size:
        raise CodesMismatchError(
            f"This run was trained on codes from the stage-1 model {describe(record)} (fingerprint "
            f"{record['fingerprint']}, {record['codebook_size']} codes), but `vqvae` now points at {vqvae_dir!r} "
            f"(fingerprint {fingerprint}, {codebook_size} codes). Point `vqvae` back at the original model, or "
            "start a new run in another train.output_dir."
        )


def load_tokenizer(cfg: Stage2RunConfig, accelerator, output_dir: Path, train_hf):
    """An existing tokenizer (tokenizer.path), the run's own (resume), or byte-level BPE trained now."""
    run_tokenizer = output_dir / "tokenizer"
    if cfg.tokenizer.path:
        return load_caption_tokenizer(cfg.tokenizer.path), Path(cfg.tokenizer.path)
    if accelerator.is_main_process and not (run_tokenizer / "tokenizer.json").is_file():
        captions = (text or "" for text in train_hf["text"])
        train_caption_tokenizer(captions, cfg.tokenizer.vocab_size, run_tokenizer)
        logger.info("Trained a byte-level BPE tokenizer on the training captions -> %s", run_tokenizer)
    accelerator.wait_for_everyone()
    return load_caption_tokenizer(run_tokenizer), run_tokenizer


@torch.no_grad()
def log_samples(run: TrainingRun, model, layout, vqvae, tokenizer, captions, cfg: Stage2RunConfig) -> dict:
    """Sample the fixed validation captions with the KV cache and guidance; save a captioned grid.

    On the built-in shapes data, the checker's scores of the samples are logged and returned.
    """
    s = cfg.sampling
    repeated = [c for c in captions for _ in range(s.images_per_caption)]
    images = sample_images(
        model,
        layout,
        vqvae,
        tokenizer,
        repeated,
        guidance_scale=s.guidance_scale,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        seed=cfg.train.seed,
    )
    grid = captioned_grid(images, repeated, columns=s.images_per_caption * 4)
    folder = run.output_dir / "images"
    folder.mkdir(exist_ok=True)
    grid.save(folder / f"samples-{run.step:06d}.png")
    (folder / f"samples-{run.step:06d}.txt").write_text("\n".join(repeated) + "\n")
    log_image(run.accelerator, "samples", grid, run.step, text=("sample_captions", "\n\n".join(repeated)))
    if cfg.data.source != "builtin":
        return {}
    scores = score_images(images, repeated)
    run.log("samples", scores)
    return scores


def main(argv: list[str] | None = None) -> None:
    # ---------------------------------------------------------------- config and accelerator
    cfg = parse_config(Stage2RunConfig, argv, description=__doc__)
    tcfg = cfg.train
    run = TrainingRun(
        tcfg, "stage2_transformer", nonfinite_hint="lower train.learning_rate, or use bf16 rather than fp16"
    )
    accelerator, output_dir = run.accelerator, run.output_dir
    if not Path(cfg.vqvae).is_dir():
        raise FileNotFoundError(
            f"vqvae={cfg.vqvae!r} is not a folder. Train stage 1 first (accelerate launch -q "
            "stage1_vqvae/train.py --config configs/stage1_tiny.yaml) and point vqvae at its <output_dir>/vqvae."
        )
    vqvae = VQVAE.from_pretrained(cfg.vqvae, device=accelerator.device).requires_grad_(False)
    fingerprint = model_fingerprint(cfg.vqvae)
    started = holds_run(output_dir)  # has logged or checkpointed training steps
    if started:
        check_stage1_matches_run(output_dir, cfg.vqvae, fingerprint, vqvae.config.codebook_size)
    cfg.data.resolution = vqvae.config.resolution  # images are tokenized at the stage-1 resolution
    with accelerator.main_process_first():  # read before anything is written: data mistakes fail first
        train_hf, eval_hf = data_lib.load_train_eval(cfg.data, max_eval=cfg.num_eval_examples)
    require_captions(train_hf["text"], cfg.data.train_split)
    if cfg.tokenizer.path:  # a given tokenizer that cannot be read fails before anything is written
        load_caption_tokenizer(cfg.tokenizer.path)
    run.claim_output_dir(dataclasses.asdict(cfg))
    if accelerator.is_main_process:
        if not started:  # what a launch of ours that failed before training left here belongs to no run
            shutil.rmtree(output_dir / "tokenizer", ignore_errors=True)
        write_stage1_record(output_dir, cfg.vqvae, fingerprint, vqvae.config.codebook_size)
    run.begin()

    # ---------------------------------------------------------------- data: captions -> ids, images -> codes
    tokenizer, tokenizer_dir = load_tokenizer(cfg, accelerator, output_dir, train_hf)
    codes_sets = {}
    for split, hf, given in (
        ("train", train_hf, cfg.codes.train_path),
        ("validation", eval_hf, cfg.codes.eval_path),
    ):
        if given:
            codes_sets[split], _ = load_codes_dir(given, cfg.vqvae, vqvae.config.codebook_size)
        else:
            codes_sets[split] = precompute_codes(
                hf,
                vqvae=vqvae,
                vqvae_dir=cfg.vqvae,
                tokenizer=tokenizer,
                tokenizer_dir=tokenizer_dir,
                text_len=cfg.tokenizer.text_len,
                cache_root=cfg.codes.cache_dir,
                split=split,
                batch_size=cfg.codes.batch_size,
                accelerator=accelerator,
                shift_pixels=cfg.codes.shift_pixels if split == "train" else 0,
            )
    layout = SequenceLayout(
        text_len=cfg.tokenizer.text_len,
        text_vocab_size=len(tokenizer),
        codebook_size=vqvae.config.codebook_size,
        grid_h=vqvae.config.grid_size,
        grid_w=vqvae.config.grid_size,
        pad_id=tokenizer.pad_token_id,
    )
    num_codes = len(codes_sets["train"][0]["codes"])
    if num_codes != layout.num_image_tokens:
        raise CodesMismatchError(
            f"The stored codes hold {num_codes} codes per image but the stage-1 model makes "
            f"{layout.num_image_tokens} ({layout.grid_h}x{layout.grid_w}). Re-encode with this model."
        )
    train_set = codes_sets["train"].with_format("torch", columns=["codes", "text_ids"])
    eval_captions = list(dict.fromkeys(codes_sets["validation"]["text"]))[: cfg.sampling.num_captions]
    sampler = data_lib.EpochSampler(len(train_set), seed=tcfg.seed)
    train_loader = torch.utils.data.DataLoader(
        train_set,
        tcfg.batch_size,
        sampler=sampler,
        drop_last=True,
        **run.loader_options(cfg.data.num_workers),
    )

    # ---------------------------------------------------------------- model and optimizer
    model = build_transformer(cfg.model, layout)
    prefer_fast_attention(model, accelerator.device, accelerator.mixed_precision)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = run.adamw(
        [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    )

    def save(transformer, folder: Path, state_dict) -> None:  # the model of a checkpoint or of the run
        save_transformer(transformer, layout, folder / "transformer", state_dict=state_dict)
        tokenizer.save_pretrained(folder / "tokenizer")

    # The logits stay in the autocast dtype: the loss upcasts only the slices it reads.
    model, optimizer, train_loader = run.prepare(
        model, optimizer, train_loader, save=save, run_config=cfg, fp32_outputs=False
    )
    logger.info(
        "Transformer: %.2fM parameters; sequence %d = %d text + 1 + %d image tokens; vocab %d",
        count_parameters(unwrap(accelerator, model)) / 1e6,
        layout.seq_len,
        layout.text_len,
        layout.num_image_tokens,
        layout.vocab_size,
    )

    def build_copy():  # an unsharded copy of the model, for evaluation under FSDP/ZeRO-3
        return build_transformer(cfg.model, layout)

    # ---------------------------------------------------------------- resume
    if run.resume_path is not None:
        saved_layout = SequenceLayout.load(run.resume_path / "transformer")
        if saved_layout != layout:
            raise CodesMismatchError(
                f"The checkpoint's sequence layout {saved_layout} differs from this run's {layout}: the "
                "tokenizer, text_len or stage-1 model changed. Resume with the original settings."
            )
    start_step = run.resume()
    accum = tcfg.gradient_accumulation_steps
    batches = data_lib.infinite_batches(
        accelerator, train_loader, sampler, start_micro_step=start_step * accum
    )

    # ---------------------------------------------------------------- loop
    # Sums stay on the device (float64, as the Python floats were) and are read at log steps only.
    running: dict[str, torch.Tensor] = {}
    tokens_seen, window_start = 0, time.perf_counter()
    model.train()
    while run.step < tcfg.max_steps:
        for micro in range(accum):
            _, batch = next(batches)
            codes = batch["codes"].long()  # (B, h*w)
            text_ids = batch["text_ids"].long()  # (B, T)
            # Caption dropout: the empty caption is the unconditional input of classifier-free guidance.
            # The draw depends only on (seed, step, micro-step), so a resumed run makes the same draws; the
            # global batch's draws are made in rank order and each process skips those of the ranks before
            # it, so the same captions are dropped whatever the number of processes.
            generator = step_generator(tcfg.seed, run.step, 1 + micro)
            torch.rand(accelerator.process_index * text_ids.shape[0], generator=generator)
            text_ids, drop = layout.drop_captions(
                text_ids, cfg.loss.caption_dropout, generator
            )  # (B, T), (B,)
            seq = layout.build(text_ids, codes)  # (B, L)
            text_normalizer = None  # the text loss is a mean over the text tokens of the global batch
            if accelerator.num_processes > 1:
                count = (seq[:, 1 : layout.text_len] != layout.pad_id).sum().float()
                text_normalizer = accelerator.reduce(count, "sum").clamp(min=1) / accelerator.num_processes
            with accelerator.accumulate(model), accelerator.autocast():
                logits = model(input_ids=seq[:, :-1], use_cache=False).logits  # (B, L-1, V)
                loss, parts = weighted_lm_loss(
                    logits, seq, layout, cfg.loss.text_weight, cfg.loss.image_weight, text_normalizer
                )
                loss = run.backward(loss)
            parts["caption_dropout"] = drop.float().mean()
            for key in ("text_loss", "image_loss", "caption_dropout"):
                running[key] = running.get(key, 0.0) + parts[key].double() / accum
            tokens_seen += seq.numel() * accelerator.num_processes
        grad_norm = run.optimizer_step(loss)
        running["grad_norm"] = running.get("grad_norm", 0.0) + torch.as_tensor(grad_norm).double()

        # ------------------------------------------------------------ logging, eval, samples
        if run.every(tcfg.log_every):
            elapsed = time.perf_counter() - window_start
            metrics = {k: float(v) / tcfg.log_every for k, v in running.items()}
            metrics.update(
                lr=run.lr,
                tokens_per_s=tokens_seen / max(elapsed, 1e-9),
                steps_per_s=tcfg.log_every / max(elapsed, 1e-9),
                skipped_steps=run.guard.total_skipped,
            )
            metrics.update(device_memory_metrics(accelerator.device))
            run.log("train", metrics)
            run.progress.set_postfix(
                image_loss=f"{metrics['image_loss']:.3f}", text_loss=f"{metrics['text_loss']:.3f}"
            )
            running, tokens_seen, window_start = {}, 0, time.perf_counter()
        evaluating, sampling = run.every(tcfg.eval_every), run.every(tcfg.image_every)
        if evaluating or sampling:  # every process: under FSDP/ZeRO-3 the weights are gathered for main
            eval_model = main_process_model(accelerator, model, build_copy)
        if evaluating and accelerator.is_main_process:
            metrics = evaluate_prior(eval_model, layout, codes_sets["validation"], cfg.num_eval_examples)
            run.log("eval", metrics)
            run.progress.write(f"step {run.step}: eval {format_metrics(metrics)}")
        if sampling and accelerator.is_main_process:
            log_samples(run, eval_model, layout, vqvae, tokenizer, eval_captions, cfg)
        model.train()

        # ------------------------------------------------------------ checkpoints and signals
        if run.end_of_step():
            return

    # ---------------------------------------------------------------- final save
    run.final_save()
    final = main_process_model(accelerator, model, build_copy)
    if accelerator.is_main_process:
        metrics = evaluate_prior(final, layout, codes_sets["validation"], cfg.num_eval_examples)
        run.log("eval", metrics)
        print(f"final eval: {format_metrics(metrics)}")
        if tcfg.image_every:
            scores = log_samples(run, final, layout, vqvae, tokenizer, eval_captions, cfg)
            if scores:
                print(f"final samples: {format_metrics(scores)}")
        logger.info(
            "Exported the transformer to %s and the tokenizer to %s",
            output_dir / "transformer",
            output_dir / "tokenizer",
        )
    accelerator.end_training()


if __name__ == "__main__":
    exit_process(run_main(main))
