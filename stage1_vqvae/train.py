"""Train the stage-1 VQ-VAE image tokenizer.

    accelerate launch stage1_vqvae/train.py --config configs/stage1_tiny.yaml [--train.max_steps 100 ...]

Runs unchanged on CPU, one GPU or many (Accelerate's DDP/FSDP/DeepSpeed). Writes, under
``train.output_dir``: TensorBoard logs, reconstruction grids (``images/``), checkpoints that are also
loadable models (``checkpoints/checkpoint-<step>/vqvae``) and the final model (``vqvae/``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
from collections import deque
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object, set_seed
from tqdm.auto import tqdm

from minidalle import data as data_lib
from minidalle.config import ConfigError, parse_config
from minidalle.images import reconstruction_grid, to_chw_uint8
from minidalle.pixels import tensor_to_pil
from minidalle.shapes import attributes_right
from minidalle.training import (
    GracefulStop,
    MetricsLog,
    NonFiniteGuard,
    checkpoint_or_stop,
    checkpoint_step,
    cosine_with_warmup,
    device_memory_metrics,
    export_state_dict,
    fault_active,
    flat_config,
    format_metrics,
    gather_rows,
    infinite_batches,
    prepare_output_dir,
    read_marker,
    resolve_resume,
    save_checkpoint,
    step_generator,
    unwrap,
)
from stage1_vqvae.evaluation import evaluate_reconstruction
from stage1_vqvae.model import VQVAE, psnr
from stage1_vqvae.run_config import Stage1RunConfig

logger = logging.getLogger("stage1_vqvae.train")


@torch.no_grad()
def log_reconstructions(accelerator, model, grid_pixels, output_dir: Path, step: int) -> None:
    model.eval()
    reconstruction = model.decode_codes(model.encode(grid_pixels))  # (n, 3, H, W)
    grid = reconstruction_grid(tensor_to_pil(grid_pixels), tensor_to_pil(reconstruction))
    (output_dir / "images").mkdir(exist_ok=True)
    grid.save(output_dir / "images" / f"reconstructions-{step:06d}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("reconstructions", to_chw_uint8(grid), step)
    model.train()


def main(argv: list[str] | None = None) -> None:
    # ---------------------------------------------------------------- config and accelerator
    cfg = parse_config(Stage1RunConfig, argv, description=__doc__)
    tcfg = cfg.train
    output_dir = Path(tcfg.output_dir)
    accelerator = Accelerator(
        mixed_precision=tcfg.mixed_precision,
        log_with=None if tcfg.report_to == "none" else tcfg.report_to,
        project_dir=str(output_dir),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ConfigError(
            "Stage 1 trains with DDP (configs/accelerate/multi_gpu_ddp.yaml), not FSDP or DeepSpeed: k-means "
            "init and dead-code restarts rewrite codebook entries in place, which sharded or optimizer-owned "
            "weights do not allow, and the VQ-VAE fits on one GPU anyway."
        )
    resume_path = resolve_resume(output_dir, tcfg.resume_from_checkpoint)
    prepare_output_dir(output_dir, dataclasses.asdict(cfg), tcfg.resume_from_checkpoint is not None,
                       accelerator.is_main_process)  # fmt: skip
    accelerator.wait_for_everyone()
    set_seed(tcfg.seed)
    stop = GracefulStop()

    # ---------------------------------------------------------------- data
    with accelerator.main_process_first():
        if cfg.data.streaming:
            train_stream, eval_hf = data_lib.load_streaming_train_eval(cfg.data, max_eval=cfg.num_eval_images)
        else:
            train_hf, eval_hf = data_lib.load_train_eval(cfg.data, max_eval=cfg.num_eval_images)
    eval_set = data_lib.ImageCaptionDataset(eval_hf, cfg.data.resolution)
    if cfg.data.streaming:  # this process's part of the stream; the loader is not prepared (already split)
        data_lib.check_usable(data_lib.ImageCaptionDataset(list(train_stream.take(256)), cfg.data.resolution))
        train_set = data_lib.StreamingImageCaptions(
            train_stream, cfg.data.resolution, seed=tcfg.seed, buffer_size=cfg.data.shuffle_buffer,
            rank=accelerator.process_index, world_size=accelerator.num_processes,
        )  # fmt: skip
        sampler = None
    else:
        train_set = data_lib.ImageCaptionDataset(train_hf, cfg.data.resolution)
        data_lib.check_usable(train_set)
        if len(train_set) < tcfg.batch_size * accelerator.num_processes:
            raise data_lib.NoUsableDataError(
                f"The training split has {len(train_set)} images, fewer than one batch of train.batch_size="
                f"{tcfg.batch_size} on each of {accelerator.num_processes} processes."
            )
        sampler = data_lib.EpochSampler(len(train_set), seed=tcfg.seed)
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=tcfg.batch_size, sampler=sampler, drop_last=True,
        num_workers=cfg.data.num_workers, collate_fn=data_lib.collate_image_captions,
    )  # fmt: skip
    eval_loader = torch.utils.data.DataLoader(
        eval_set, batch_size=64, shuffle=False, num_workers=cfg.data.num_workers,
        collate_fn=data_lib.collate_image_captions,
    )  # fmt: skip
    grid_pixels = data_lib.collate_image_captions(
        [eval_set[i] for i in range(min(len(eval_set), cfg.num_grid_images))]
    )
    checker = attributes_right if cfg.data.source == "builtin" else None

    # ---------------------------------------------------------------- model and optimizer
    model = VQVAE(cfg.model)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=tcfg.learning_rate, betas=(tcfg.adam_beta1, tcfg.adam_beta2),
        weight_decay=tcfg.weight_decay,
    )  # fmt: skip
    # The scheduler is stepped once per optimizer step by us (not prepared, so it is not stepped
    # once per process) and checkpointed with the rest of the state.
    scheduler = cosine_with_warmup(optimizer, tcfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    if not cfg.data.streaming:
        train_loader = accelerator.prepare(train_loader)
    accelerator.register_for_checkpointing(scheduler)
    if tcfg.compile:
        model = torch.compile(model)
    grid_pixels = grid_pixels["pixels"].to(accelerator.device)
    if accelerator.is_main_process:
        n_params = sum(p.numel() for p in model.parameters())
        logger.info("VQ-VAE: %.2fM parameters, %dx%d codes from a book of %d, %d processes",
                    n_params / 1e6, cfg.model.grid_size, cfg.model.grid_size, cfg.model.codebook_size,
                    accelerator.num_processes)  # fmt: skip
        accelerator.init_trackers("stage1_vqvae", config=flat_config(cfg))

    def export(folder: Path) -> None:  # called on every process; writes on the main one
        state = export_state_dict(accelerator, model)
        if accelerator.is_main_process:
            unwrap(accelerator, model).save_pretrained(folder / "vqvae", state_dict=state)

    data_position = (0, 0)  # streaming: (epoch, batches into it) on this process

    def checkpoint(step: int, **extra) -> Path:  # called on every process
        if cfg.data.streaming:
            extra["stream_positions"] = gather_object([list(data_position)])
        return save_checkpoint(accelerator, output_dir, step, export, tcfg.checkpoints_total_limit,
                               extra=extra, model=model)  # fmt: skip

    # ---------------------------------------------------------------- resume
    global_step = 0
    if resume_path is not None:
        accelerator.load_state(str(resume_path))
        global_step = checkpoint_step(resume_path)
        logger.info("Resumed from %s at step %d", resume_path, global_step)
    accum = tcfg.gradient_accumulation_steps
    if cfg.data.streaming:
        if resume_path is not None:
            positions = read_marker(resume_path).get("stream_positions") or []
            if len(positions) != accelerator.num_processes:
                raise ConfigError(
                    f"{resume_path} was written by {len(positions)} processes reading the data stream; "
                    f"resume it with the same number (not {accelerator.num_processes}) to continue exactly."
                )
            data_position = tuple(positions[accelerator.process_index])
        batches = data_lib.stream_batches(train_loader, train_set, *data_position, device=accelerator.device)
    else:
        batches = infinite_batches(accelerator, train_loader, sampler, start_micro_step=global_step * accum)

    if global_step == 0 and cfg.codebook.kmeans_init:
        # k-means over the first batches' encoder outputs, gathered from every process in rank order:
        # every process computes the same centroids from the same images as one process would.
        with torch.no_grad():
            encoder = unwrap(accelerator, model).encoder
            first_batches = itertools.islice(iter(train_loader), cfg.codebook.kmeans_batches)
            z_e = torch.cat([gather_rows(accelerator, encoder(b["pixels"].to(accelerator.device)))
                             for b in first_batches])  # (N, D, h, w)  # fmt: skip
            unwrap(accelerator, model).quantizer.kmeans_init(z_e, generator=step_generator(tcfg.seed, 0, 1))

    # ---------------------------------------------------------------- loop
    guard = NonFiniteGuard(tcfg.max_nonfinite_steps)
    metrics_log = MetricsLog(output_dir, accelerator.is_main_process)
    usage_window: deque[torch.Tensor] = deque(maxlen=cfg.codebook.usage_window)
    K = cfg.model.codebook_size
    progress = tqdm(total=tcfg.max_steps, initial=global_step, disable=not accelerator.is_main_process,
                    desc="stage 1", dynamic_ncols=True)  # fmt: skip
    running: dict[str, float] = {}
    model.train()
    while global_step < tcfg.max_steps:
        # One optimizer step = `accum` micro-batches; gradients sync only on the last one.
        step_codes = []
        usage_before = unwrap(accelerator, model).quantizer.usage.clone()  # restored if the step is skipped
        for micro in range(accum):
            data_position, batch = next(batches)
            pixels = batch["pixels"]  # (B, 3, H, W)
            sync_context = accelerator.no_sync(model) if micro < accum - 1 else contextlib.nullcontext()
            with sync_context, accelerator.autocast():
                if pixels.shape[0] == 0:  # every image in this batch was unreadable
                    loss = sum(p.sum() * 0 for p in model.parameters())
                    parts, out = {}, None
                else:
                    out = model(pixels)
                    loss, parts = unwrap(accelerator, model).loss(pixels, out)
                if fault_active("nan_loss", global_step + 1):  # test hook (MINIDALLE_FAULTS)
                    loss = loss * float("nan")
                accelerator.backward(loss / accum)
            if out is not None:
                step_codes.append(out.codes.detach().flatten())
                for key, value in parts.items():
                    running[key] = running.get(key, 0.0) + value.item() / accum
                running["psnr"] = (
                    running.get("psnr", 0.0) + psnr(out.reconstruction.detach(), pixels).mean().item() / accum
                )
        max_norm = tcfg.max_grad_norm if tcfg.max_grad_norm > 0 else math.inf
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
        if guard.check(accelerator, loss, None if tcfg.mixed_precision == "fp16" else grad_norm):
            optimizer.step()
        else:
            unwrap(accelerator, model).quantizer.usage.copy_(usage_before)
            logger.warning("Non-finite loss or gradient at step %d: step skipped (%d in a row, %d total).",
                           global_step + 1, guard.in_a_row, guard.total_skipped)  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        global_step += 1
        progress.update(1)

        guard.stop_if_exhausted(
            accelerator,
            checkpoint,
            global_step,
            output_dir,
            hint="lower train.learning_rate, check the data, or use bf16 rather than fp16",
        )

        # ------------------------------------------------------------ codebook health
        quantizer = unwrap(accelerator, model).quantizer
        if step_codes:
            usage_window.append(torch.bincount(torch.cat(step_codes), minlength=K).cpu())
        restart = cfg.codebook.restart_every
        if (
            restart
            and global_step % restart == 0
            and global_step <= cfg.codebook.restart_until * tcfg.max_steps
        ):
            # New codes are drawn from the last micro-batch of every process (gathered in rank order),
            # so each process restarts the same codes the same way, as a single process would.
            grid = cfg.model.grid_size
            z_e = (
                out.z_e.detach()
                if out is not None
                else pixels.new_zeros(0, cfg.model.codebook_dim, grid, grid)
            )
            z_e = gather_rows(accelerator, z_e)  # (N, D, h, w)
            if z_e.shape[0] and torch.isfinite(z_e).all():
                restarted = quantizer.restart_dead_codes(
                    z_e, cfg.codebook.dead_code_threshold, generator=step_generator(tcfg.seed, global_step, 2)
                )
                running["restarted_codes"] = running.get("restarted_codes", 0.0) + restarted * tcfg.log_every

        # ------------------------------------------------------------ logging
        if global_step % tcfg.log_every == 0:
            metrics = {k: v / tcfg.log_every for k, v in running.items()}
            if usage_window:
                window = torch.stack(list(usage_window)).sum(0)  # (K,)
                metrics["codebook_usage_pct"] = 100.0 * (window > 0).sum().item() / K
            metrics["lr"] = scheduler.get_last_lr()[0]
            metrics["skipped_steps"] = guard.total_skipped
            metrics["skipped_images"] = data_lib.SKIPPED.count
            metrics.update(device_memory_metrics(accelerator.device))
            accelerator.log({f"train/{k}": v for k, v in metrics.items()}, step=global_step)
            metrics_log.write(global_step, {f"train/{k}": v for k, v in metrics.items()})
            progress.set_postfix(loss=f"{metrics.get('mse', 0):.4f}", psnr=f"{metrics.get('psnr', 0):.1f}",
                                 usage=f"{metrics.get('codebook_usage_pct', 0):.0f}%")  # fmt: skip
            running = {}
        if tcfg.eval_every and global_step % tcfg.eval_every == 0 and accelerator.is_main_process:
            metrics = evaluate_reconstruction(unwrap(accelerator, model), eval_loader, accelerator.device,
                                              max_images=cfg.num_eval_images, checker=checker)  # fmt: skip
            accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=global_step)
            metrics_log.write(global_step, {f"eval/{k}": v for k, v in metrics.items()})
            progress.write(f"step {global_step}: eval {format_metrics(metrics)}")
            model.train()
        if tcfg.image_every and global_step % tcfg.image_every == 0 and accelerator.is_main_process:
            log_reconstructions(accelerator, unwrap(accelerator, model), grid_pixels, output_dir, global_step)

        # ------------------------------------------------------------ checkpoints and signals
        if checkpoint_or_stop(accelerator, stop, global_step, tcfg, checkpoint, progress):
            return

    # ---------------------------------------------------------------- final save
    progress.close()
    if not (tcfg.checkpoint_every and global_step % tcfg.checkpoint_every == 0):
        checkpoint(global_step)
    export(output_dir)
    if accelerator.is_main_process:
        final = unwrap(accelerator, model)
        log_reconstructions(accelerator, final, grid_pixels, output_dir, global_step)
        metrics = evaluate_reconstruction(final, eval_loader, accelerator.device,
                                          max_images=cfg.num_eval_images, checker=checker)  # fmt: skip
        accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=global_step)
        metrics_log.write(global_step, {f"eval/{k}": v for k, v in metrics.items()})
        print(f"final eval: {format_metrics(metrics)}")
        if data_lib.SKIPPED.count:
            logger.warning("%d unreadable images were skipped: %s", data_lib.SKIPPED.count,
                           sorted(data_lib.SKIPPED.reported)[:20])  # fmt: skip
        logger.info("Exported the model to %s", output_dir / "vqvae")
    accelerator.end_training()


if __name__ == "__main__":
    main()
