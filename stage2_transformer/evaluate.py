"""Evaluate a trained stage-2 prior on held-out pairs.

    python -m stage2_transformer.evaluate --run outputs/stage2_tiny --config configs/stage2_tiny.yaml

Reports the validation loss on image tokens and bits per image, conditioned on the caption and with
the empty caption, against the uniform prior's h*w*log2(K) bits. On the built-in shapes data (or a
folder written by ``python -m minidalle.make_shapes``, read with its set's palette) it also samples
one image per held-out caption, with and without classifier-free guidance, and reports how often the
checker reads all four attributes as the caption states (``samples_all_four_pct_cfg<scale>``, a
percentage) and the share of single attributes read right (``samples_attributes_pct_cfg<scale>``).
On emoji data (``scripts/get_emoji.sh``), ``--heldout_style true`` adds the held-out style score of
``stage2_transformer/heldout_style.py`` (style accuracy, retrieval, diversity; style accuracy and
top-5 within each emoji category) and writes held-out samples beside their true images to
``<run>/heldout_samples.png``; ``--heldout_negative_style true`` also scores samples guided away from
the caption that names the other style, and ``--rerank_clip FOLDER`` (a re-ranker from
``reranker/train.py``) scores its pick of ``--rerank_candidates`` samples per held-out caption
(``reranked_*``; the grid then shows those picks). Prints a table and writes JSON.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import Accelerator

from minidalle import data as data_lib
from minidalle.arguments import check_int, check_writable_file
from minidalle.checker import score_images
from minidalle.config import parse_config
from minidalle.devices import allow_tf32_on_cuda
from minidalle.errors import run_main
from minidalle.hub import fingerprint_matches
from minidalle.make_shapes import shape_set_of_data
from minidalle.report import report_metrics
from pipeline.rerank import ClipReranker
from pipeline.settings import MAX_IMAGES_PER_PROMPT
from reranker.folder import check_clip_folder
from stage1_vqvae.model import VQVAE
from stage2_transformer.evaluation import evaluate_prior, sample_images
from stage2_transformer.heldout_style import check_heldout_columns, heldout_grid, score_heldout_styles
from stage2_transformer.model import load_transformer
from stage2_transformer.precompute import precompute_codes
from stage2_transformer.run_config import CodesConfig, SamplingConfig
from stage2_transformer.sampling import (
    DEFAULT_NEGATIVE_SCALE,
    check_negative_scale_value,
    check_sampling_args,
)
from stage2_transformer.stage1_record import STAGE1_RECORD, describe, read_stage1_record, recorded_stage1_path
from stage2_transformer.tokenizer import load_caption_tokenizer


@dataclass
class Stage2EvalConfig:
    run: str = "outputs/stage2_tiny"  # a stage-2 output folder (transformer/, tokenizer/, stage1.json)
    vqvae: str | None = None  # only for runs without <run>/stage1.json, which records the stage-1 model
    data: data_lib.DataConfig = field(default_factory=data_lib.DataConfig)
    codes: CodesConfig = field(default_factory=CodesConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_examples: int = 512
    num_samples: int = 256  # held-out captions sampled per guidance setting (built-in data, heldout_style)
    guidance_scales: list[float] = field(default_factory=lambda: [1.0, 3.0])
    seed: int = 1234
    heldout_style: bool = False  # emoji data: score samples of the held-out (emoji, style) pairs
    heldout_negative_style: bool = False  # with heldout_style: also guide samples away from the other style
    negative_scale: float = DEFAULT_NEGATIVE_SCALE  # with heldout_negative_style: its weight
    diversity_captions: int = 64  # with heldout_style: captions sampled 4 times each for diversity
    # with heldout_style: a CLIP re-ranker folder (reranker/train.py); also scores its pick of
    # rerank_candidates samples per held-out caption (reranked_*), as the pipeline's --rerank-clip keeps
    rerank_clip: str | None = None
    rerank_candidates: int = 16
    grid_pairs: int = 16  # with heldout_style: held-out (sample, true image) pairs in the grid
    output_json: str | None = None

    def __post_init__(self) -> None:
        check_int("max_examples", self.max_examples, 1, None)
        check_int("num_samples", self.num_samples, 1, None)
        for scale in self.guidance_scales:
            check_sampling_args(self.sampling.temperature, None, None, scale)
        check_negative_scale_value(self.negative_scale)
        check_int("rerank_candidates", self.rerank_candidates, 2, MAX_IMAGES_PER_PROMPT)
        if self.rerank_clip is not None and not self.heldout_style:
            raise ValueError("rerank_clip scores the held-out emoji captions: set --heldout_style true too.")
        if self.rerank_clip is not None:
            check_clip_folder(self.rerank_clip, "rerank_clip")  # now, not after the data and models load
        if self.heldout_negative_style and self.sampling.guidance_scale == 1.0:
            raise ValueError(
                "heldout_negative_style needs guidance (a negative prompt acts through it): set "
                "sampling.guidance_scale above 1, e.g. --sampling.guidance_scale 3."
            )


# Keys of a training config (configs/stage2_*.yaml) that evaluation does not read: the same file
# serves both commands (the tokenizer and the layout come from the run's folder).
TRAINING_ONLY_KEYS = ("tokenizer", "model", "loss", "train", "num_eval_examples")


def stage1_model_of_run(run: Path, vqvae: str | None) -> str:
    """The stage-1 model folder to evaluate the stage-2 run with.

    The model the run trained on (recorded by train.py) wins over ``vqvae``, which often comes from a shared
    YAML file. ``vqvae`` is used for a run without the record, or when the recorded folder is no longer
    where it was and ``vqvae`` holds that same model (same weights fingerprint).
    """
    record = read_stage1_record(run)
    if record is None:
        if vqvae is None:
            raise FileNotFoundError(
                f"{run / STAGE1_RECORD} is missing: pass --vqvae, the stage-1 model folder the run used."
            )
        return vqvae
    recorded = recorded_stage1_path(record)
    if recorded is not None:
        return recorded
    if vqvae is not None and Path(vqvae).is_dir() and fingerprint_matches(vqvae, record["fingerprint"]):
        return vqvae  # the recorded model, moved
    raise FileNotFoundError(
        f"{run / STAGE1_RECORD} names the stage-1 model {describe(record)}, which is not a folder from here, "
        f"and vqvae={vqvae!r} is not that model: pass --vqvae with the folder it moved to."
    )


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(Stage2EvalConfig, argv, description=__doc__, ignore_file_keys=TRAINING_ONLY_KEYS)
    if cfg.output_json:
        check_writable_file("output_json", cfg.output_json)
    accelerator = Accelerator()
    allow_tf32_on_cuda(accelerator.device)  # pre-encoding, the prior and the VQ-VAE decode run in fp32
    run = Path(cfg.run)
    vqvae_dir = stage1_model_of_run(run, cfg.vqvae)
    vqvae = VQVAE.from_pretrained(vqvae_dir, device=accelerator.device)
    model, layout = load_transformer(run / "transformer")
    model.to(accelerator.device)
    tokenizer = load_caption_tokenizer(run / "tokenizer")
    cfg.data.resolution = vqvae.config.resolution
    train_hf, eval_hf = data_lib.load_train_eval(cfg.data, max_eval=cfg.max_examples)
    reranker = None
    if cfg.heldout_style:
        check_heldout_columns(eval_hf)
        if cfg.rerank_clip is not None:
            reranker = ClipReranker(cfg.rerank_clip, device=accelerator.device)
    codes = precompute_codes(
        eval_hf,
        vqvae=vqvae,
        vqvae_dir=vqvae_dir,
        tokenizer=tokenizer,
        tokenizer_dir=run / "tokenizer",
        text_len=layout.text_len,
        cache_root=cfg.codes.cache_dir,
        split="validation",
        batch_size=cfg.codes.batch_size,
        accelerator=accelerator,
    )
    metrics: dict = {"run": str(run), **evaluate_prior(model, layout, codes, cfg.max_examples)}
    shape_set = shape_set_of_data(cfg.data.source, cfg.data.path)
    if shape_set is not None:
        captions = list(codes["text"])[: cfg.num_samples]
        for scale in cfg.guidance_scales:
            images = sample_images(
                model,
                layout,
                vqvae,
                tokenizer,
                captions,
                guidance_scale=scale,
                temperature=cfg.sampling.temperature,
                top_k=cfg.sampling.top_k,
                top_p=cfg.sampling.top_p,
                seed=cfg.seed,
            )
            scores = score_images(images, captions, shape_set)
            for name in ("all_four_pct", "attributes_pct"):
                metrics[f"samples_{name}_cfg{scale:g}"] = scores[name]
        metrics["samples_per_setting"] = len(captions)
    if cfg.heldout_style:
        scores, samples = score_heldout_styles(
            model, layout, vqvae, tokenizer, eval_hf, train_hf, cfg, reranker=reranker
        )
        metrics.update(scores)
        metrics["bits_ratio_caption_to_empty"] = (
            metrics["bits_per_image"] / metrics["bits_per_image_empty_caption"]
        )
        heldout_grid(samples, eval_hf, cfg.grid_pairs).save(run / "heldout_samples.png")
    out = Path(cfg.output_json) if cfg.output_json else run / "eval_metrics.json"
    report_metrics(
        metrics, f"Stage-2 prior {run} on {cfg.data.source} data, split {cfg.data.eval_split!r}", out
    )
    return metrics


if __name__ == "__main__":
    sys.exit(run_main(main))
