"""Train the stage-1 VQ-VAE image tokenizer.

    accelerate launch -q stage1_vqvae/train.py --config configs/stage1_tiny.yaml [--train.max_steps 100 ...]

Runs unchanged on CPU, one GPU or many (Accelerate's DDP/FSDP/DeepSpeed). Writes, under
``train.output_dir``: TensorBoard logs, reconstruction grids (``images/``), checkpoints that are also
loadable models (``checkpoints/checkpoint-<step>/vqvae``) and the final model (``vqvae/``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections import deque
from functools import partial
from pathlib import Path

import torch
from accelerate.utils import DistributedType, gather_object

from minidalle import data as data_lib
from minidalle import streaming
from minidalle.checker import attributes_right
from minidalle.checkpoints import read_marker
from minidalle.config import ConfigError, parse_config
from minidalle.distributed import gather_rows, unwrap
from minidalle.errors import run_main
from minidalle.metrics_log import device_memory_metrics, format_metrics
from minidalle.process_exit import exit_process
from minidalle.trackers import log_image
from minidalle.trainer import TrainingRun, step_generator
from stage1_vqvae.evaluation import evaluate_reconstruction, reconstructions_grid
from stage1_vqvae.model import VQVAE, psnr
from stage1_vqvae.run_config import Stage1RunConfig

logger = logging.getLogger("stage1_vqvae.train")


@torch.no_grad()
def log_reconstructions(run: TrainingRun, model, grid_pixels) -> None:
    """Inputs above, reconstructions below: a grid on disk and in the run's trackers."""
    model.eval()
    grid = reconstructions_grid(model, grid_pixels)
    (run.output_dir / "images").mkdir(exist_ok=True)
    grid.save(run.output_dir / "images" / f"reconstructions-{run.step:06d}.png")
    log_image(run.accelerator, "reconstructions", grid, run.step)
    model.train()


def save_vqvae(vqvae: VQVAE, folder: Path, state_dict: dict | None) -> None:
    vqvae.save_pretrained(folder / "vqvae", state_dict=state_dict)


def main(argv: list[str] | None = None) -> None:
    # ---------------------------------------------------------------- config and accelerator
    cfg = parse_config(Stage1RunConfig, argv, description=__doc__)
    tcfg = cfg.train
    run = TrainingRun(
        tcfg,
        "stage1_vqvae",
        nonfinite_hint="lower train.learning_rate, check the data, or use bf16 rather than fp16",
    )
    accelerator = run.accelerator
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ConfigError(
            "Stage 1 trains with DDP (configs/accelerate/multi_gpu_ddp.yaml), not FSDP or DeepSpeed: k-means "
            "init and dead-code restarts rewrite codebook entries in place, which sharded or optimizer-owned "
            "weights do not allow, and the VQ-VAE fits on one GPU anyway."
        )

    # ---------------------------------------------------------------- data
    with accelerator.main_process_first():
        if cfg.data.streaming:
            train_stream, eval_hf = streaming.load_streaming_train_eval(
                cfg.data, max_eval=cfg.num_eval_images
            )
        else:
            train_hf, eval_hf = data_lib.load_train_eval(cfg.data, max_eval=cfg.num_eval_images)
    eval_set = data_lib.ImageCaptionDataset(eval_hf, cfg.data.resolution)
    if cfg.data.streaming:  # this process's part of the stream; the loader is not prepared (already split)
        data_lib.check_usable(data_lib.ImageCaptionDataset(list(train_stream.take(256)), cfg.data.resolution))
        train_set = streaming.StreamingImageCaptions(
            train_stream,
            cfg.data.resolution,
            seed=tcfg.seed,
            buffer_size=cfg.data.shuffle_buffer,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
        )
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
    collate, workers = data_lib.collate_image_captions, cfg.data.num_workers
    # a stream's epoch is set on its dataset, which persistent workers would not see
    loader_options = run.loader_options(workers, persistent=not cfg.data.streaming)
    train_loader = torch.utils.data.DataLoader(
        train_set, tcfg.batch_size, sampler=sampler, drop_last=True, collate_fn=collate, **loader_options
    )
    eval_loader = torch.utils.data.DataLoader(eval_set, 64, num_workers=workers, collate_fn=collate)
    grid_images = [eval_set[i] for i in range(min(len(eval_set), cfg.num_grid_images))]
    grid_pixels = data_lib.collate_image_captions(grid_images)["pixels"]  # (n, 3, H, W)
    grid_pixels = grid_pixels.to(accelerator.device)
    checker = attributes_right if cfg.data.source == "builtin" else None
    run.claim_output_dir(dataclasses.asdict(cfg))  # data mistakes fail first, before anything is written
    run.begin()

    # ---------------------------------------------------------------- model and optimizer
    model = VQVAE(cfg.model)
    optimizer = run.adamw(model.parameters())
    if cfg.data.streaming:  # a stream is already split across processes: its loader is not prepared
        model, optimizer = run.prepare(model, optimizer, save=save_vqvae, run_config=cfg)
    else:
        model, optimizer, train_loader = run.prepare(
            model, optimizer, train_loader, save=save_vqvae, run_config=cfg
        )
    quantizer = unwrap(accelerator, model).quantizer
    logger.info(
        "VQ-VAE: %.2fM parameters, %dx%d codes from a book of %d, %d processes",
        sum(p.numel() for p in model.parameters()) / 1e6,
        cfg.model.grid_size,
        cfg.model.grid_size,
        cfg.model.codebook_size,
        accelerator.num_processes,
    )
    data_position = (0, 0)  # streaming: (epoch, batches into it) on this process
    if cfg.data.streaming:
        run.checkpoint_extra = lambda: {"stream_positions": gather_object([list(data_position)])}

    # ---------------------------------------------------------------- resume
    start_step = run.resume()
    if cfg.data.streaming:
        if run.resume_path is not None:
            positions = read_marker(run.resume_path).get("stream_positions") or []
            if len(positions) != accelerator.num_processes:
                raise ConfigError(
                    f"{run.resume_path} was written by {len(positions)} processes reading the data stream; "
                    f"resume it with the same number (not {accelerator.num_processes}) to continue exactly."
                )
            data_position = tuple(positions[accelerator.process_index])
        batches = streaming.stream_batches(train_loader, train_set, *data_position, device=accelerator.device)
    else:
        batches = data_lib.infinite_batches(
            accelerator, train_loader, sampler, start_micro_step=start_step * tcfg.gradient_accumulation_steps
        )

    if start_step == 0 and cfg.codebook.kmeans_init:
        # k-means over the first batches' encoder outputs, gathered from every process in rank order:
        # every process computes the same centroids from the same images as one process would.
        with torch.no_grad():
            first_batches = itertools.islice(iter(train_loader), cfg.codebook.kmeans_batches)
            encoder = unwrap(accelerator, model).encoder
            z_e = torch.cat(
                [gather_rows(accelerator, encoder(b["pixels"].to(accelerator.device))) for b in first_batches]
            )  # (N, D, h, w)
            quantizer.kmeans_init(z_e, generator=step_generator(tcfg.seed, 0, 1))

    # ---------------------------------------------------------------- loop
    usage_window: deque[torch.Tensor] = deque(maxlen=cfg.codebook.usage_window)
    K = cfg.model.codebook_size
    accum = tcfg.gradient_accumulation_steps
    # Sums stay on the device (float64, as the Python floats were) and are read at log steps only.
    running: dict[str, torch.Tensor | float] = {}
    model.train()
    while run.step < tcfg.max_steps:
        step_codes = []
        usage_before = quantizer.usage.clone()  # restored if the step is skipped
        for _ in range(accum):
            data_position, batch = next(batches)
            pixels = batch["pixels"]  # (B, 3, H, W)
            with accelerator.accumulate(model), accelerator.autocast():
                if pixels.shape[0] == 0:  # every image in this batch was unreadable
                    loss = sum(p.sum() * 0 for p in model.parameters())
                    parts, out = {}, None
                else:
                    out = model(pixels)
                    loss, parts = unwrap(accelerator, model).loss(pixels, out)
                loss = run.backward(loss)
            if out is not None:
                step_codes.append(out.codes.detach().flatten())
                parts["psnr"] = psnr(out.reconstruction.detach(), pixels).mean()
                for key, value in parts.items():
                    running[key] = running.get(key, 0.0) + value.detach().double() / accum
        run.optimizer_step(loss, on_skip=partial(quantizer.usage.copy_, usage_before))

        # ------------------------------------------------------------ codebook health
        if step_codes:
            usage_window.append(torch.bincount(torch.cat(step_codes), minlength=K).cpu())
        if run.every(cfg.codebook.restart_every) and run.step <= cfg.codebook.restart_until * tcfg.max_steps:
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
                    z_e, cfg.codebook.dead_code_threshold, generator=step_generator(tcfg.seed, run.step, 2)
                )
                running["restarted_codes"] = running.get("restarted_codes", 0.0) + restarted * tcfg.log_every

        # ------------------------------------------------------------ logging, eval, reconstructions
        if run.every(tcfg.log_every):
            metrics = {k: float(v) / tcfg.log_every for k, v in running.items()}
            if usage_window:
                window = torch.stack(list(usage_window)).sum(0)  # (K,)
                metrics["codebook_usage_pct"] = 100.0 * (window > 0).sum().item() / K
            metrics.update(
                lr=run.lr, skipped_steps=run.guard.total_skipped, skipped_images=data_lib.SKIPPED.count
            )
            metrics.update(device_memory_metrics(accelerator.device))
            run.log("train", metrics)
            run.progress.set_postfix(
                loss=f"{metrics.get('mse', 0):.4f}",
                psnr=f"{metrics.get('psnr', 0):.1f}",
                usage=f"{metrics.get('codebook_usage_pct', 0):.0f}%",
            )
            running = {}
        if run.every(tcfg.eval_every) and accelerator.is_main_process:
            metrics = evaluate_reconstruction(
                unwrap(accelerator, model),
                eval_loader,
                accelerator.device,
                max_images=cfg.num_eval_images,
                checker=checker,
            )
            run.log("eval", metrics)
            run.progress.write(f"step {run.step}: eval {format_metrics(metrics)}")
            model.train()
        if run.every(tcfg.image_every) and accelerator.is_main_process:
            log_reconstructions(run, unwrap(accelerator, model), grid_pixels)

        # ------------------------------------------------------------ checkpoints and signals
        if run.end_of_step():
            return

    # ---------------------------------------------------------------- final save
    run.final_save()
    if accelerator.is_main_process:
        final = unwrap(accelerator, model)
        log_reconstructions(run, final, grid_pixels)
        metrics = evaluate_reconstruction(
            final, eval_loader, accelerator.device, max_images=cfg.num_eval_images, checker=checker
        )
        run.log("eval", metrics)
        print(f"final eval: {format_metrics(metrics)}")
        if data_lib.SKIPPED.count:
            logger.warning(
                "%d unreadable images were skipped: %s",
                data_lib.SKIPPED.count,
                sorted(data_lib.SKIPPED.reported)[:20],
            )
        logger.info("Exported the model to %s", run.output_dir / "vqvae")
    accelerator.end_training()


if __name__ == "__main__":
    exit_process(run_main(main))
