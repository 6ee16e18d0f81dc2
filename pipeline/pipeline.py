"""The text-to-image pipeline: caption -> stage-2 image codes -> stage-1 decoder -> PIL images.

    pipe = MiniDallePipeline.from_pretrained("outputs/pipeline_tiny")   # a folder or a Hub repo id
    out = pipe(["a red circle"], num_images_per_prompt=4, seed=0)     # PipelineOutput (+ bits per image)
    out.images[0].save("circle.png"); print(out.seed)                  # also: edit, variations, score

A call runs in named phases: check inputs, encode prompts, prepare codes (an input image's codes and
where to resample them), sample, decode, re-rank when asked, and measure each image's bits. Seeds: one
generator per image (pipeline/seeds.py); editing, variations and completion: pipeline/regions.py.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from minidalle.arguments import check_int
from minidalle.devices import allow_tf32_on_cuda, resolve_device_dtype
from minidalle.errors import ArgumentError
from minidalle.pixels import pil_to_tensor, resize_center_crop, tensor_to_pil, to_rgb
from stage1_vqvae.model import VQVAE
from stage2_transformer import sampling
from stage2_transformer.layout import SequenceLayout
from stage2_transformer.tokenizer import CaptionTruncatedWarning, encode_captions

from .folder import PipelineConfig, load_parts, part_mismatches, raise_if_incompatible, save_parts
from .outputs import ImageBits, PipelineOutput, PromptTruncatedWarning, RowEvent
from .regions import check_strength, sample_masks
from .rerank import best_per_prompt
from .seeds import check_seed, image_seed
from .settings import (
    MAX_IMAGES_PER_PROMPT,
    GenerationSettings,
    check_candidates,
    check_completion,
    check_negative_prompts,
    check_negative_scale,
    check_prompts,
    check_total,
)
from .sharing import push_folder, resolve_pipeline_folder, write_model_card
from .stream import GenerationStream, partial_pictures

RowCallback = Callable[[RowEvent], None]


class MiniDallePipeline:
    """Stage 1 + stage 2 + caption tokenizer, loaded from one folder. See the module docstring."""

    def __init__(
        self,
        vqvae: VQVAE,
        transformer: torch.nn.Module,
        layout: SequenceLayout,
        tokenizer,
        config: PipelineConfig | None = None,
    ):
        self.vqvae = vqvae.eval()
        self.transformer = transformer.eval()
        self.layout = layout
        self.tokenizer = tokenizer
        self.config = config or PipelineConfig()
        raise_if_incompatible(part_mismatches(vqvae, layout, tokenizer), "The pipeline's parts")
        # Fast tokenizers are not safe to call from several threads at once ("Already borrowed").
        self._tokenizer_lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        allow_unverified: bool = False,
        **hub,
    ) -> MiniDallePipeline:
        """Load a pipeline folder, or a Hub repo id ``user/name`` (``hub``: revision, cache_dir, token,
        local_files_only of ``snapshot_download``). ``device``: default CUDA when present, else CPU.
        ``dtype`` (of the transformer; the small VQ-VAE's weights stay float32): default bf16 on CUDA
        (fp16 where bf16 is missing), float32 on the CPU. On a CPU, bf16 also decodes in bf16 (the
        faster path where the CPU computes bf16 natively: ``decode_codes``). ``allow_unverified``: load a
        folder whose config records no stage-1 fingerprint (otherwise refused)."""
        folder = resolve_pipeline_folder(path, **hub)
        device, dtype = resolve_device_dtype(device, dtype)
        allow_tf32_on_cuda(device)  # the VQ-VAE decode runs in fp32
        return cls(*load_parts(folder, device, dtype, allow_unverified))

    def save_pretrained(self, path: str | Path, push_to_hub: bool = False, **hub) -> Path:
        """Write the folder ``from_pretrained`` reads (weights in their current dtype) and its model card;
        ``push_to_hub=True`` uploads it (``hub``: repo_id, token, private, commit_message)."""
        folder = Path(path)
        save_parts(folder, self.vqvae, self.transformer, self.layout, self.tokenizer, self.config)
        write_model_card(folder, self.config, hub.get("repo_id"))
        if push_to_hub:
            push_folder(folder, **hub)
        return folder

    def push_to_hub(self, repo_id: str, **hub) -> str:
        """Save to a temporary folder and upload it (``hub``: token, private, commit_message)."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, repo_id=repo_id)
            return push_folder(Path(tmp), repo_id, **hub)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    # ----------------------------------------------------------------------------------------------
    # generating

    def __call__(
        self, prompts: str | Sequence[str], *, on_row: RowCallback | None = None, **settings
    ) -> PipelineOutput:
        """Generate ``num_images_per_prompt`` images for each prompt.

        ``settings``: the keywords of ``GenerationSettings`` (num_images_per_prompt, temperature, top_k,
        top_p, guidance_scale, seed, batch_size, return_codes, negative_prompt, image + keep_rows / box /
        strength for completion / editing / variations, rerank_with + num_candidates for re-ranking);
        unknown ones are errors. ``on_row(RowEvent)`` is called after each sampled row.
        """
        # 1. Check inputs
        prompts, run = self.check_inputs(prompts, GenerationSettings(**settings))
        # 2. Encode prompts (and the negative ones)
        text_ids, negative_ids = self.encode_prompts(prompts), self.encode_negative(run)  # (P, T) each
        # 3. Prepare codes: the input images' codes and which of them to resample
        plan = self.prepare_codes(run)  # ((P, N), (P * candidates, N)) or None
        # 4. Sample
        codes = self.sample_image_codes(text_ids, negative_ids, plan, run, on_row)  # (P * candidates, h, w)
        # 5. Decode
        images = self.decode_codes(codes)
        # 6. Re-rank: keep the candidates CLIP matches best; 7. the bits of each image under the prior
        return self.measure_bits(self.rerank(images, prompts, codes, run), run)

    def stream(self, prompts: str | Sequence[str], **settings) -> GenerationStream:
        """The iterator form of ``__call__``: yields ``RowEvent``s; ``.output`` holds the result at the end.

        Phases 1-3 run now, so invalid arguments raise here (and warnings reach the caller) rather than
        on the first ``next()``. Stopping the iteration early cancels the generation.
        """
        if "on_row" in settings:
            raise TypeError("stream() reports rows itself; do not pass on_row.")
        prompts, run = self.check_inputs(prompts, GenerationSettings(**settings))
        text_ids, negative_ids = self.encode_prompts(prompts), self.encode_negative(run)  # (P, T) each
        plan = self.prepare_codes(run)  # ((P, N), (P * candidates, N)) or None

        def sample_decode_rerank(on_row: RowCallback) -> PipelineOutput:  # phases 4-7, in the worker
            codes = self.sample_image_codes(text_ids, negative_ids, plan, run, on_row)  # (P * cand., h, w)
            return self.measure_bits(self.rerank(self.decode_codes(codes), prompts, codes, run), run)

        return GenerationStream(sample_decode_rerank)

    def complete(self, image: Image.Image, prompt: str, keep_rows: int, **settings) -> PipelineOutput:
        """Image completion (the DALL-E blog's image prompts): keep the first ``keep_rows`` rows of the
        image's codes and sample the rest under ``prompt``. Other arguments as for ``__call__``."""
        if not isinstance(prompt, str):
            raise ArgumentError(f"complete() takes one prompt (a string), got {type(prompt).__name__}.")
        return self(prompt, image=image, keep_rows=keep_rows, **settings)

    def edit(self, image: Image.Image, prompt: str, box, **settings) -> PipelineOutput:
        """Region editing: resample the codes of the cells ``box`` = (x0, y0, x1, y1) (pixels of ``image``)
        touches under ``prompt``, in raster order, keeping every other code. Other arguments as for
        ``__call__``; ``pipe.stream(prompt, image=image, box=box)`` shows the region filling row by row."""
        return self(prompt, image=image, box=box, **settings)

    def variations(
        self, image: Image.Image, n: int = 4, prompt: str | None = None, strength: float = 0.3, **settings
    ) -> PipelineOutput:
        """``n`` variations of ``image``: each resamples a random ``strength`` share of its codes (its own
        positions, drawn from its seed) under ``prompt``, or under the empty caption when None."""
        return self(prompt or "", image=image, strength=strength, num_images_per_prompt=n, **settings)

    def score(self, images: Image.Image | Sequence[Image.Image], captions: str | Sequence[str]) -> ImageBits:
        """The bits of each image's codes under the prior, with its caption and with the empty caption
        (one caption for all images, or one per image)."""
        images = [images] if isinstance(images, Image.Image) else list(images)
        captions = [captions] * len(images) if isinstance(captions, str) else list(captions)
        if len(captions) != len(images) or not images:
            raise ArgumentError(
                f"score needs one caption or one per image ({len(images)}); got {len(captions)}."
            )
        return self._bits(self.encode_image(images), check_prompts(captions, allow_empty=True))

    # ----------------------------------------------------------------------------------------------
    # the phases

    def check_inputs(self, prompts, settings: GenerationSettings) -> tuple[list[str], GenerationSettings]:
        """Validate a call; return its prompts and its settings with every default filled in:
        ``num_candidates`` is then the images sampled per prompt, ``image`` one image per prompt."""
        cfg = self.config
        prompts = check_prompts(prompts, allow_empty=settings.strength is not None)
        num_images = check_int(
            "num_images_per_prompt", settings.num_images_per_prompt, 1, MAX_IMAGES_PER_PROMPT
        )
        temperature = cfg.temperature if settings.temperature is None else settings.temperature
        top_k = cfg.top_k if settings.top_k is None else settings.top_k
        top_p = cfg.top_p if settings.top_p is None else settings.top_p
        guidance_scale = cfg.guidance_scale if settings.guidance_scale is None else settings.guidance_scale
        top_k = sampling.check_sampling_args(temperature, top_k, top_p, guidance_scale)
        per_prompt = check_candidates(settings.rerank_with, settings.num_candidates, num_images)
        check_total(len(prompts), per_prompt)
        batch_size = settings.batch_size
        if batch_size is None:
            batch_size = min(len(prompts) * per_prompt, cfg.batch_size)
        negative = check_negative_prompts(settings.negative_prompt, len(prompts), guidance_scale)
        images, keep_rows = check_completion(
            settings.image,
            settings.keep_rows,
            len(prompts),
            self.layout.grid_h,
            settings.box,
            settings.strength,
        )
        return prompts, dataclasses.replace(
            settings,
            num_images_per_prompt=num_images,
            temperature=float(temperature),
            top_k=top_k,
            top_p=top_p,
            guidance_scale=float(guidance_scale),
            seed=check_seed(settings.seed, len(prompts)),
            batch_size=check_int("batch_size", batch_size, 1, cfg.max_batch_size),
            return_codes=bool(settings.return_codes),
            negative_prompt=negative,
            negative_scale=check_negative_scale(
                settings.negative_scale, negative, sampling.DEFAULT_NEGATIVE_SCALE
            ),
            image=images,
            keep_rows=keep_rows,
            strength=None if settings.strength is None else check_strength(settings.strength),
            num_candidates=per_prompt,
        )

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> (P, T) token ids; an over-long prompt is cut, with a ``PromptTruncatedWarning``."""
        with self._tokenizer_lock, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            text_ids = encode_captions(self.tokenizer, prompts, self.layout.text_len)  # (P, T)
        for w in caught:  # re-issued, pointing at the caller
            message = w.message
            if isinstance(message, CaptionTruncatedWarning):
                message = PromptTruncatedWarning(*message.args)  # the same fields, said of prompts
            warnings.warn(message, stacklevel=3)
        return text_ids

    def encode_negative(self, run: GenerationSettings) -> torch.Tensor | None:
        """The negative prompts' (P, T) token ids, or None (guidance then uses the empty caption)."""
        return None if run.negative_prompt is None else self.encode_prompts(run.negative_prompt)

    def prepare_codes(self, run: GenerationSettings) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For an input image: its codes (P, N) and, per image to sample, where to resample (P * cand., N)."""
        if run.image is None:
            return None
        h, w = self.layout.grid_h, self.layout.grid_w
        codes = self.encode_image(run.image).reshape(len(run.image), h * w)  # (P, N)
        return codes, sample_masks(run, h, w)  # (P, N), (P * candidates, N)

    def sample_image_codes(
        self,
        text_ids: torch.Tensor,
        negative_ids: torch.Tensor | None,
        plan: tuple[torch.Tensor, torch.Tensor] | None,
        run: GenerationSettings,
        on_row: RowCallback | None,
    ) -> torch.Tensor:
        """Sample ``run.num_candidates`` images per prompt in batches of ``run.batch_size``, each image from
        its own seeded generator: (P * candidates, h, w) codes on the CPU."""
        device, per_prompt = self.device, run.num_candidates
        total = text_ids.shape[0] * per_prompt
        sampled = torch.zeros(1) if plan is None else plan[1].any(0).nonzero()  # positions sampled
        first_row = int(sampled[0]) // self.layout.grid_w if len(sampled) else self.layout.grid_h
        prompt_of = torch.arange(total) // per_prompt  # (N,)
        starts = range(0, total, run.batch_size)
        all_codes = []
        for batch, start in enumerate(starts):
            index = prompt_of[start : start + run.batch_size]  # (b,)
            generators = [
                torch.Generator(device=device).manual_seed(image_seed(run.seed, per_prompt, j))
                for j in range(start, start + len(index))
            ]
            fixed = None if plan is None else plan[0][index].to(device)  # (b, N)
            mask = None if plan is None else plan[1][start : start + len(index)]  # (b, N)
            codes = sampling.sample_image_codes(
                self.transformer,
                self.layout,
                text_ids[index].to(device),  # (b, T)
                temperature=run.temperature,
                top_k=run.top_k,
                top_p=run.top_p,
                guidance_scale=run.guidance_scale,
                generator=generators,
                fixed_codes=fixed,
                sample_mask=mask,
                negative_text_ids=None if negative_ids is None else negative_ids[index].to(device),  # (b, T)
                on_row=self._row_reporter(on_row, start, batch, len(starts), first_row, fixed, mask),
                guidance_plausibility=self.config.guidance_plausibility,
                negative_scale=run.negative_scale,
            )  # (b, h, w)
            all_codes.append(codes.cpu())
        return torch.cat(all_codes)  # (N, h, w)

    def decode_codes(self, codes: torch.Tensor) -> list[Image.Image]:
        """(B, h, w) codes -> PIL images."""
        pixels = self.vqvae.decode_codes(codes.to(self._vqvae_device), compute_dtype=self._decode_dtype)
        return tensor_to_pil(pixels)

    def rerank(
        self, images: list[Image.Image], prompts: list[str], codes: torch.Tensor, run: GenerationSettings
    ) -> PipelineOutput:
        """The output of a call: with ``run.rerank_with``, the best ``num_images_per_prompt`` of each
        prompt's candidates, best first; otherwise every image."""
        prompts = [prompt for prompt in prompts for _ in range(run.num_candidates)]  # of each image
        scores = None
        if run.rerank_with is not None:
            values, chosen = best_per_prompt(
                run.rerank_with.score(images, prompts), run.num_candidates, run.num_images_per_prompt
            )
            scores = values.tolist()
            images, prompts, codes = [images[i] for i in chosen], [prompts[i] for i in chosen], codes[chosen]
        return PipelineOutput(images=images, prompts=prompts, seed=run.seed, codes=codes, scores=scores)

    def measure_bits(self, output: PipelineOutput, run: GenerationSettings) -> PipelineOutput:
        """Fill in the bits of each image with and without its caption (then drop the codes unless asked)."""
        bits = self._bits(output.codes, output.prompts)
        output.bits_with_caption, output.bits_without_caption = bits.with_caption, bits.without_caption
        output.codes = output.codes if run.return_codes else None
        return output

    def _bits(self, codes: torch.Tensor, captions: list[str]) -> ImageBits:
        """(B, h, w) codes and their captions -> bits under the prior with and without the captions."""
        with self._tokenizer_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", CaptionTruncatedWarning)  # the call warned already
            text_ids = encode_captions(self.tokenizer, captions, self.layout.text_len)  # (B, T)
        empty = self.layout.empty_caption_ids(len(captions))  # (B, T)
        nats = [
            sampling.image_token_log_likelihood(
                self.transformer, self.layout, ids, codes, batch_size=self.config.batch_size
            )
            for ids in (text_ids, empty)
        ]  # (B,) each
        with_caption, without = [(-ll.float().cpu() / math.log(2)).tolist() for ll in nats]
        return ImageBits(with_caption, without)

    # ----------------------------------------------------------------------------------------------
    # images <-> codes

    def encode_image(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> (B, h, w) codes (on the CPU), after resizing and centre-cropping to the stage-1
        resolution."""
        resolution = self.vqvae.config.resolution
        pixels = torch.stack([pil_to_tensor(resize_center_crop(to_rgb(im), resolution)) for im in images])
        return self.vqvae.encode(pixels.to(self._vqvae_device)).cpu()  # (B, h, w)

    @property
    def _vqvae_device(self) -> torch.device:
        return next(self.vqvae.parameters()).device

    @property
    def _decode_dtype(self) -> torch.dtype | None:
        """bf16 for a bf16 pipeline on a CPU, where the decoder is a third of the time to pixels: 200 demo
        images decode in 0.23 s instead of 0.45 s, within a few levels of 255 of float32's pixels. On a GPU
        the decode is a sliver of that time and stays float32."""
        cpu_bf16 = self._vqvae_device.type == "cpu" and self.dtype == torch.bfloat16
        return torch.bfloat16 if cpu_bf16 else None

    def _row_reporter(
        self,
        on_row: RowCallback | None,
        start: int,
        batch: int,
        num_batches: int,
        kept: int,
        fixed: torch.Tensor | None,
        mask: torch.Tensor | None,
    ):
        """The sampler's per-row callback for batch ``batch`` (its first image: ``start``; rows before
        ``kept`` are not sampled; ``fixed`` (b, N) and ``mask`` (b, N): the input image's codes and where
        they are resampled): sends a ``RowEvent`` with the partial pictures to ``on_row``."""
        if on_row is None:
            return None
        h = self.layout.grid_h
        rows_per_batch = max(1, h - kept)

        def report(row: int, codes: torch.Tensor) -> None:  # codes (b, row + 1, w)
            done = batch * rows_per_batch + row + 1 - kept
            images = partial_pictures(self.vqvae, codes, fixed, mask, self._decode_dtype)
            progress = done / (num_batches * rows_per_batch)
            on_row(RowEvent(row, h, first_image=start, images=images, codes=codes.cpu(), progress=progress))

        return report
