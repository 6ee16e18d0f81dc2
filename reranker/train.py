"""Train the CLIP re-ranker on the captioned pictures stage 2 learns from.

    accelerate launch -q reranker/train.py --config configs/reranker_emoji32.yaml [--train.max_steps 100 ...]

DALL-E draws many samples per caption and keeps those CLIP matches best to it. No CLIP trained on a
user's own pictures exists, and none may be downloaded here, so this trains one from scratch
(transformers' ``CLIPModel``: a ViT image tower and a causal text tower, symmetric contrastive loss) on
the same training split. Part of each batch can be whole groups of rows that differ only in what the
caption names (``batches.group_column``), and part of it can be shown as stage 1 reconstructs it
(``batches.stage1_views``), the way the pipeline's samples look.

Writes, under ``train.output_dir``: logs, checkpoints, the model in ``clip/`` (config.json,
model.safetensors, tokenizer, image processor: ``pipeline.rerank.ClipReranker`` loads it, as do
``python -m pipeline.generate --rerank-clip`` and the stage-2 evaluate command's ``--rerank_clip``) and
held-out retrieval in ``eval_metrics.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from transformers import AutoTokenizer

from minidalle import data as data_lib
from minidalle.config import ConfigError, parse_config
from minidalle.distributed import unwrap
from minidalle.errors import run_main
from minidalle.metrics_log import device_memory_metrics, format_metrics
from minidalle.process_exit import exit_process
from minidalle.trainer import TrainingRun
from reranker.batches import ContrastiveBatches, groups_of
from reranker.evaluation import embed, retrieval_scores
from reranker.model import build_clip, save_clip_folder
from reranker.run_config import RerankerRunConfig
from reranker.tokenizer import train_clip_tokenizer
from stage1_vqvae.model import VQVAE

logger = logging.getLogger("reranker.train")


def load_tokenizer(cfg: RerankerRunConfig, accelerator, output_dir: Path, train_hf):
    """The run's tokenizer: trained on the training captions now, or the one a resumed run trained."""
    folder = output_dir / "tokenizer"
    if accelerator.is_main_process and not (folder / "tokenizer.json").is_file():
        captions = (text or "" for text in train_hf["text"])
        train_clip_tokenizer(captions, cfg.model.vocab_size, cfg.model.text_len, folder)
    accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def load_rows(dataset: data_lib.ImageCaptionDataset, rows: list[int]) -> dict:
    """The pictures (B, 3, H, W), captions and row indices of ``rows``; unreadable pictures are dropped
    (and counted)."""
    items = [dict(dataset[i], row=i) for i in rows]
    batch = data_lib.collate_image_captions(items)
    batch["rows"] = [item["row"] for item in items if item["pixels"] is not None]
    return batch


class Stage1Views:
    """Training pictures as the stage-1 model reconstructs them, each computed once and kept as uint8
    (3 KB a picture at 32 px): a stage-1 pass over half of every batch of 256 emoji took 0.33 s of the
    0.94 s step, 0.62 s without it."""

    def __init__(self, vqvae: VQVAE):
        self.vqvae = vqvae
        self.kept: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, rows: list[int], pixels: torch.Tensor) -> torch.Tensor:
        """``pixels`` (b, 3, H, W) of training ``rows``, in [-1, 1] -> their reconstructions, same shape."""
        new = [i for i, row in enumerate(rows) if row not in self.kept]
        if new:
            decoded = self.vqvae.decode_codes(self.vqvae.encode(pixels[new])).float()  # (n, 3, H, W)
            as_bytes = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
            for i, image in zip(new, as_bytes):
                self.kept[rows[i]] = image
        kept = torch.stack([self.kept[row] for row in rows])  # (b, 3, H, W) uint8
        return kept.to(pixels.device, pixels.dtype) / 127.5 - 1


@torch.no_grad()
def held_out_retrieval(model, eval_pixels, eval_text, device) -> dict:
    """Retrieval top-1 / top-5 of the held-out captions among the held-out pictures."""
    model.eval()
    image_embeds, text_embeds = embed(
        model,
        eval_pixels.to(device),
        eval_text["input_ids"].to(device),
        eval_text["attention_mask"].to(device),
    )
    scores = retrieval_scores(image_embeds, text_embeds, model.logit_scale.exp().item())
    model.train()
    return scores


def main(argv: list[str] | None = None) -> None:
    # ---------------------------------------------------------------- config and accelerator
    cfg = parse_config(RerankerRunConfig, argv, description=__doc__)
    tcfg = cfg.train
    run = TrainingRun(tcfg, "reranker", nonfinite_hint="lower train.learning_rate or check the data")
    accelerator = run.accelerator
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ConfigError(
            "The re-ranker trains with DDP (configs/accelerate/multi_gpu_ddp.yaml), not FSDP or DeepSpeed: "
            "it fits on one GPU, and each process's batch is its own contrastive batch."
        )

    # ---------------------------------------------------------------- data
    with accelerator.main_process_first():
        train_hf, eval_hf = data_lib.load_train_eval(cfg.data, max_eval=cfg.num_eval_images)
    train_set = data_lib.ImageCaptionDataset(train_hf, cfg.data.resolution)
    data_lib.check_usable(train_set)
    groups = None
    if cfg.batches.group_column is not None:
        if cfg.batches.group_column not in train_hf.column_names:
            raise ConfigError(
                f"batches.group_column {cfg.batches.group_column!r} is not a column of the training split "
                f"(columns: {train_hf.column_names}). Name one, or drop the setting."
            )
        groups = groups_of(train_hf[cfg.batches.group_column])
        logger.info("%d groups of rows that share %r", len(groups), cfg.batches.group_column)
    if len(train_set) < tcfg.batch_size:
        raise data_lib.NoUsableDataError(
            f"The training split has {len(train_set)} pictures, fewer than one batch of train.batch_size="
            f"{tcfg.batch_size}. Lower it or add pictures."
        )
    # Each process draws its own contrastive batch (embeddings are not gathered across processes).
    batches = ContrastiveBatches(
        len(train_set),
        tcfg.batch_size,
        tcfg.seed,
        groups,
        cfg.batches.grouped_fraction,
        accelerator.process_index,
    )
    eval_set = data_lib.ImageCaptionDataset(
        eval_hf.select(range(min(len(eval_hf), cfg.num_eval_images))), cfg.data.resolution
    )
    eval_batch = load_rows(eval_set, list(range(len(eval_set))))
    stage1_views = None
    if cfg.batches.stage1_views > 0:
        vqvae = VQVAE.from_pretrained(cfg.vqvae, device=accelerator.device).eval().requires_grad_(False)
        if vqvae.config.resolution != cfg.data.resolution:
            raise ConfigError(
                f"The stage-1 model {cfg.vqvae} works at {vqvae.config.resolution} px, the data at "
                f"{cfg.data.resolution}: set data.resolution {vqvae.config.resolution} or another vqvae."
            )
        stage1_views = Stage1Views(vqvae)
    run.claim_output_dir(dataclasses.asdict(cfg))
    tokenizer = load_tokenizer(cfg, accelerator, run.output_dir, train_hf)

    def encode(captions: list[str]) -> dict:
        return tokenizer(
            captions,
            padding="max_length",
            truncation=True,
            max_length=cfg.model.text_len,
            return_tensors="pt",
        )

    eval_text = encode(eval_batch["text"])
    run.begin()

    # ---------------------------------------------------------------- model and optimizer
    model = build_clip(cfg.model, tokenizer, cfg.data.resolution)

    def save(clip, folder: Path, state_dict) -> None:
        save_clip_folder(clip, tokenizer, folder / "clip", state_dict)

    optimizer = run.adamw(model.parameters())
    model, optimizer = run.prepare(model, optimizer, save=save, run_config=cfg)
    logger.info(
        "CLIP re-ranker: %.2fM parameters, %d processes",
        sum(p.numel() for p in model.parameters()) / 1e6,
        accelerator.num_processes,
    )
    run.resume()

    # ---------------------------------------------------------------- loop
    running: dict[str, torch.Tensor] = {}
    model.train()
    while run.step < tcfg.max_steps:
        for micro in range(tcfg.gradient_accumulation_steps):
            rows = batches.batch(run.step * tcfg.gradient_accumulation_steps + micro)
            batch = load_rows(train_set, rows)
            pixels = batch["pixels"].to(accelerator.device)  # (B, 3, H, W)
            if stage1_views is not None:  # the first share of the batch as stage 1 reconstructs it
                count = round(cfg.batches.stage1_views * len(pixels))
                pixels[:count] = stage1_views(batch["rows"][:count], pixels[:count])
            text = encode(batch["text"]).to(accelerator.device)
            with accelerator.accumulate(model), accelerator.autocast():
                out = model(
                    input_ids=text["input_ids"],
                    attention_mask=text["attention_mask"],
                    pixel_values=pixels,
                    return_loss=True,
                )
                loss = run.backward(out.loss)
            running["loss"] = running.get("loss", 0.0) + out.loss.detach().double()
        grad_norm = run.optimizer_step(loss)
        running["grad_norm"] = running.get("grad_norm", 0.0) + torch.as_tensor(grad_norm).double()
        with torch.no_grad():  # CLIP's temperature stays below 100, as in CLIP
            unwrap(accelerator, model).logit_scale.clamp_(0, 4.6052)

        # ------------------------------------------------------------ logging, eval
        if run.every(tcfg.log_every):
            metrics = {k: float(v) / tcfg.log_every for k, v in running.items()}
            metrics["loss"] /= tcfg.gradient_accumulation_steps
            metrics.update(lr=run.lr, skipped_steps=run.guard.total_skipped)
            metrics.update(device_memory_metrics(accelerator.device))
            run.log("train", metrics)
            run.progress.set_postfix(loss=f"{metrics['loss']:.3f}")
            running = {}
        if run.every(tcfg.eval_every) and accelerator.is_main_process:
            metrics = held_out_retrieval(
                unwrap(accelerator, model), eval_batch["pixels"], eval_text, accelerator.device
            )
            run.log("eval", metrics)
            run.progress.write(f"step {run.step}: eval {format_metrics(metrics)}")

        # ------------------------------------------------------------ checkpoints and signals
        if run.end_of_step():
            return

    # ---------------------------------------------------------------- final save
    run.final_save()
    if accelerator.is_main_process:
        metrics = held_out_retrieval(
            unwrap(accelerator, model), eval_batch["pixels"], eval_text, accelerator.device
        )
        run.log("eval", metrics)
        (run.output_dir / "eval_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"final eval: {format_metrics(metrics)}")
        logger.info("Exported the re-ranker to %s", run.output_dir / "clip")
    accelerator.end_training()


if __name__ == "__main__":
    exit_process(run_main(main))
