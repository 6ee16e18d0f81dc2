"""The text-to-image pipeline: caption -> stage-2 image codes -> stage-1 decoder -> PIL images.

A pipeline folder (JSON + safetensors only; loading never unpickles or runs code from it)::

    <dir>/pipeline_config.json   sampling defaults, batch limits, format version, stage-1 fingerprint
    <dir>/vqvae/                 stage 1: config.json + model.safetensors
    <dir>/transformer/           stage 2: config.json + model.safetensors + sequence_layout.json
    <dir>/tokenizer/             the caption tokenizer: tokenizer.json (+ tokenizer_config.json)

``python -m pipeline.assemble`` builds one from the outputs of the two training runs.

    pipe = MiniDallePipeline.from_pretrained("outputs/pipeline_tiny")
    out = pipe(["a red circle"], num_images_per_prompt=4, seed=0)   # PipelineOutput
    out.images[0].save("circle.png"); print(out.seed)

Seeds: image ``j`` of a call (prompt-major order) samples from its own ``torch.Generator`` seeded from
``(seed, j)``, so an image never depends on ``batch_size`` or on the other prompts of the call. With a
list of seeds (one per prompt) image ``r`` of prompt ``i`` is seeded from ``(seed[i], r)``: the images
of a prompt are then the same whether it is sampled alone or batched with others.
"""

from __future__ import annotations

import dataclasses
import json
import math
import queue
import secrets
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from minidalle.config import ConfigError, build_dataclass, load_json_object
from minidalle.hub import model_fingerprint
from minidalle.pixels import pil_to_tensor, resize_center_crop, tensor_to_pil, to_rgb
from stage1_vqvae.model import VQVAE
from stage2_transformer.layout import LAYOUT_FILE, SequenceLayout
from stage2_transformer.model import load_transformer, save_transformer
from stage2_transformer.sampling import DEFAULT_GUIDANCE_PLAUSIBILITY, sample_image_codes
from stage2_transformer.tokenizer import encode_captions, load_caption_tokenizer

PIPELINE_CONFIG_FILE = "pipeline_config.json"
FORMAT_VERSION = 1
VQVAE_DIR, TRANSFORMER_DIR, TOKENIZER_DIR = "vqvae", "transformer", "tokenizer"
MAX_SEED = 2**63 - 1
_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


class IncompatiblePartsError(ValueError):
    """The stage-1 model, the transformer and the tokenizer of a pipeline folder do not fit together."""


class GenerationCancelled(RuntimeError):
    """Raised inside a generation whose consumer went away (see ``GenerationStream``)."""


@dataclass
class PipelineConfig:
    """``pipeline_config.json``: sampling defaults and limits. Unknown keys are errors."""

    format_version: int = FORMAT_VERSION
    temperature: float = 1.0
    top_k: int | None = None  # None: no top-k cut
    top_p: float | None = None  # None: no nucleus cut
    guidance_scale: float = 3.0  # 1: no classifier-free guidance
    # With guidance, codes the conditional model gives less than this fraction of its top code's
    # probability are never sampled (0 disables): see stage2_transformer.sampling.
    guidance_plausibility: float = DEFAULT_GUIDANCE_PLAUSIBILITY
    batch_size: int = 16  # default images per forward pass (guidance doubles the rows)
    max_batch_size: int = 256  # larger batch_size arguments are refused
    # sha256 prefix of vqvae/config.json + model.safetensors: catches a swapped-in stage-1 model
    # that happens to have the same codebook and grid as the one the transformer learned.
    stage1_fingerprint: str | None = None
    sources: dict = dataclasses.field(default_factory=dict)  # provenance, informational only

    def __post_init__(self):
        if self.format_version != FORMAT_VERSION:
            raise ConfigError(
                f"{PIPELINE_CONFIG_FILE} has format_version={self.format_version}; this code reads version "
                f"{FORMAT_VERSION}. Re-assemble the folder with python -m pipeline.assemble."
            )
        check_sampling_args(self.temperature, self.top_k, self.top_p, self.guidance_scale)
        if not _is_number(self.guidance_plausibility) or not 0 <= self.guidance_plausibility < 1:
            raise ValueError(f"guidance_plausibility must lie in [0, 1), got {self.guidance_plausibility!r}.")
        _check_int("max_batch_size", self.max_batch_size, 1, 1 << 20)
        _check_int("batch_size", self.batch_size, 1, self.max_batch_size)

    @classmethod
    def load(cls, path: str | Path) -> PipelineConfig:
        path = Path(path)
        raw = load_json_object(path)
        try:
            return build_dataclass(cls, raw, where=str(path))
        except ValueError as err:
            raise ConfigError(f"{path}: {err}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n", encoding="utf-8")


@dataclass
class PipelineOutput:
    """What a pipeline call returns. Images are in prompt-major order: all of prompt 0, then prompt 1..."""

    images: list[Image.Image]
    prompts: list[str]  # the prompt of each image
    seed: int | list[int]  # the seed(s) used: pass it back to get the same images
    codes: torch.Tensor | None = None  # (num_images, h, w) int64 on the CPU, with return_codes=True
    scores: list[float] | None = None  # CLIP similarity of each kept image, when re-ranked


@dataclass
class RowEvent:
    """Sent after each sampled row of code, for a UI that shows the pictures appearing row by row."""

    row: int  # the row just sampled, 0-based
    num_rows: int  # rows in the code grid
    first_image: int  # index (in the call's order) of the first image of this batch
    images: list[Image.Image]  # this batch (of candidates, when re-ranking), rows > row painted grey
    codes: torch.Tensor  # (b, row + 1, w) the codes sampled so far, on the CPU
    progress: float  # fraction of the call's rows done, in (0, 1]


@dataclass
class _Request:
    """A validated call: everything ``_run`` needs, nothing left to check."""

    prompts: list[str]
    text_ids: torch.Tensor  # (P, T)
    per_prompt: int  # images sampled per prompt (candidates, when re-ranking)
    keep: int  # images kept per prompt
    temperature: float
    top_k: int | None
    top_p: float | None
    guidance_scale: float
    seed: int | list[int]
    batch_size: int
    return_codes: bool
    prefix: torch.Tensor | None  # (P, k, w) codes of the images to complete
    reranker: object | None


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
        problems = _mismatches(vqvae, layout, tokenizer)
        if problems:
            raise IncompatiblePartsError(
                "The pipeline's parts do not fit together:\n  - " + "\n  - ".join(problems)
            )
        # Fast tokenizers are not safe to call from several threads at once ("Already borrowed").
        self._tokenizer_lock = threading.Lock()

    # ----------------------------------------------------------------------------------------------
    # loading and saving

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> MiniDallePipeline:
        """Load a local pipeline folder. ``device``: default CUDA when present, else CPU. ``dtype`` (of the
        transformer; the small VQ-VAE stays float32): default bf16 on CUDA (fp16 where bf16 is missing),
        float32 on the CPU."""
        folder = Path(path)
        check_pipeline_folder(folder)
        config = PipelineConfig.load(folder / PIPELINE_CONFIG_FILE)
        device, dtype = resolve_device_dtype(device, dtype)
        # Cheap checks first, so a mismatched folder fails before the transformer's weights are read.
        layout = SequenceLayout.load(folder / TRANSFORMER_DIR)
        tokenizer = load_caption_tokenizer(folder / TOKENIZER_DIR)
        vqvae = VQVAE.from_pretrained(folder / VQVAE_DIR, device=device)
        problems = _mismatches(vqvae, layout, tokenizer)
        if config.stage1_fingerprint is not None:
            found = model_fingerprint(folder / VQVAE_DIR)
            if found != config.stage1_fingerprint:
                problems.append(
                    f"stage-1 model: {VQVAE_DIR}/ has fingerprint {found} but the transformer was trained on "
                    f"codes of the model with fingerprint {config.stage1_fingerprint} ({PIPELINE_CONFIG_FILE}); "
                    "the folder's vqvae/ was replaced."
                )
        if problems:
            raise IncompatiblePartsError(
                f"The parts of {folder} do not fit together:\n  - " + "\n  - ".join(problems)
            )
        transformer, _ = load_transformer(folder / TRANSFORMER_DIR, torch_dtype=dtype)
        return cls(vqvae, transformer.to(device), layout, tokenizer, config)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the folder layout ``from_pretrained`` reads (weights in their current dtype)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.vqvae.save_pretrained(folder / VQVAE_DIR)
        save_transformer(self.transformer, self.layout, folder / TRANSFORMER_DIR)
        self.tokenizer.save_pretrained(folder / TOKENIZER_DIR)
        config = dataclasses.replace(self.config, stage1_fingerprint=model_fingerprint(folder / VQVAE_DIR))
        config.save(folder / PIPELINE_CONFIG_FILE)
        return folder

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    # ----------------------------------------------------------------------------------------------
    # generating

    def __call__(
        self,
        prompts: str | Sequence[str],
        *,
        num_images_per_prompt: int = 1,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_scale: float | None = None,
        seed: int | Sequence[int] | None = None,
        batch_size: int | None = None,
        return_codes: bool = False,
        on_row: Callable[[RowEvent], None] | None = None,
        image: Image.Image | Sequence[Image.Image] | None = None,
        keep_rows: int | None = None,
        rerank_with=None,
        num_candidates: int | None = None,
    ) -> PipelineOutput:
        """Generate ``num_images_per_prompt`` images for each prompt.

        Sampling arguments left at ``None`` take the defaults of ``pipeline_config.json``;
        ``top_k >= codebook_size`` and ``top_p == 1`` switch those cuts off. ``seed``: an integer, one
        integer per prompt, or None (a random seed, returned in the output). ``on_row(RowEvent)`` is
        called after each sampled row. ``image`` + ``keep_rows``: image completion (one image for all
        prompts, or one per prompt): its first ``keep_rows`` rows of codes are kept, the rest sampled.
        ``rerank_with`` (a ``ClipReranker``): sample ``num_candidates`` per prompt (default twice the
        number asked), keep the ``num_images_per_prompt`` that CLIP finds closest to the prompt.
        """
        request = self._prepare(
            prompts, num_images_per_prompt=num_images_per_prompt, temperature=temperature, top_k=top_k,
            top_p=top_p, guidance_scale=guidance_scale, seed=seed, batch_size=batch_size,
            return_codes=return_codes, image=image, keep_rows=keep_rows, rerank_with=rerank_with,
            num_candidates=num_candidates,
        )  # fmt: skip
        return self._run(request, on_row)

    def stream(self, prompts: str | Sequence[str], **kwargs) -> GenerationStream:
        """The iterator form of ``__call__``: yields ``RowEvent``s; ``.output`` holds the result at the end.

        Arguments are checked now, so invalid ones raise here rather than on the first ``next()``.
        Stopping the iteration early (``close()``, or a dropped consumer) cancels the generation.
        """
        if "on_row" in kwargs:
            raise TypeError("stream() reports rows itself; do not pass on_row.")
        request = self._prepare(prompts, **kwargs)  # same keywords as __call__; unknown ones are errors
        return GenerationStream(lambda on_row: self._run(request, on_row))

    def complete(self, image: Image.Image, prompt: str, keep_rows: int, **kwargs) -> PipelineOutput:
        """Image completion (the DALL-E blog's image prompts): keep the first ``keep_rows`` rows of the
        image's codes and sample the rest under ``prompt``. Other arguments as for ``__call__``."""
        return self(prompt, image=image, keep_rows=keep_rows, **kwargs)

    def encode_image(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> (B, h, w) codes (on the CPU), after resizing and centre-cropping to the stage-1
        resolution."""
        resolution = self.vqvae.config.resolution
        pixels = torch.stack([pil_to_tensor(resize_center_crop(to_rgb(im), resolution)) for im in images])
        vq_device = next(self.vqvae.parameters()).device
        return self.vqvae.encode(pixels.to(vq_device)).cpu()  # (B, h, w)

    def decode_codes(self, codes: torch.Tensor) -> list[Image.Image]:
        """(B, h, w) codes -> PIL images."""
        vq_device = next(self.vqvae.parameters()).device
        return tensor_to_pil(self.vqvae.decode_codes(codes.to(vq_device)))

    # ----------------------------------------------------------------------------------------------
    # internals

    def _prepare(
        self,
        prompts,
        *,
        num_images_per_prompt=1,
        temperature=None,
        top_k=None,
        top_p=None,
        guidance_scale=None,
        seed=None,
        batch_size=None,
        return_codes=False,
        image=None,
        keep_rows=None,
        rerank_with=None,
        num_candidates=None,
    ) -> _Request:
        cfg = self.config
        prompts = _check_prompts(prompts)
        num_images_per_prompt = _check_int("num_images_per_prompt", num_images_per_prompt, 1, None)
        temperature = cfg.temperature if temperature is None else temperature
        top_k = cfg.top_k if top_k is None else top_k
        top_p = cfg.top_p if top_p is None else top_p
        guidance_scale = cfg.guidance_scale if guidance_scale is None else guidance_scale
        check_sampling_args(temperature, top_k, top_p, guidance_scale)
        if top_k is not None:
            top_k = int(top_k)
        if top_k is not None and top_k >= self.layout.codebook_size:
            top_k = None  # keeps every code anyway
        if top_p is not None and top_p >= 1.0:
            top_p = None

        per_prompt = num_images_per_prompt
        if rerank_with is None and num_candidates is not None:
            raise ValueError(
                "num_candidates needs rerank_with (a ClipReranker) to choose among the candidates."
            )
        if rerank_with is not None:
            if not callable(getattr(rerank_with, "score", None)):
                raise ValueError(
                    f"rerank_with must be a ClipReranker (an object with a score(images, prompts) method), "
                    f"got {type(rerank_with).__name__}."
                )
            per_prompt = 2 * num_images_per_prompt if num_candidates is None else num_candidates
            per_prompt = _check_int("num_candidates", per_prompt, num_images_per_prompt, None)

        total = len(prompts) * per_prompt
        if batch_size is None:
            batch_size = min(total, cfg.batch_size)
        batch_size = _check_int("batch_size", batch_size, 1, cfg.max_batch_size)

        if seed is None:
            seed = secrets.randbelow(2**31)  # small enough to show and type back in a UI
        elif isinstance(seed, (list, tuple)):
            if len(seed) != len(prompts):
                raise ValueError(
                    f"seed must be one integer or a list with one integer per prompt ({len(prompts)}); "
                    f"got a list of {len(seed)}."
                )
            seed = [_check_int(f"seed[{i}]", s, 0, MAX_SEED) for i, s in enumerate(seed)]
        else:
            seed = _check_int("seed", seed, 0, MAX_SEED)

        prefix = None
        if image is None and keep_rows is not None:
            raise ValueError("keep_rows needs an image to complete (image=...).")
        if image is not None:
            if keep_rows is None:
                raise ValueError(
                    f"image completion needs keep_rows, the rows to keep, in [0, {self.layout.grid_h}]."
                )
            keep_rows = _check_int("keep_rows", keep_rows, 0, self.layout.grid_h)
            images = [image] if isinstance(image, Image.Image) else list(image)
            if not all(isinstance(im, Image.Image) for im in images):
                raise ValueError("image must be a PIL image or a list of PIL images (one per prompt).")
            if len(images) == 1:
                images = images * len(prompts)
            if len(images) != len(prompts):
                raise ValueError(
                    f"image must be one image or one per prompt ({len(prompts)}); got {len(images)}."
                )
            prefix = self.encode_image(images)[:, :keep_rows]  # (P, k, w)

        with self._tokenizer_lock, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            text_ids = encode_captions(self.tokenizer, prompts, self.layout.text_len, warn=True)  # (P, T)
        for w in caught:  # re-issue, pointing at the caller, with what the model can read
            message = str(w.message)
            if "truncated" in message:
                message = (
                    f"Prompt too long for this model (it reads {self.layout.text_len} tokens): {message}"
                )
            warnings.warn(message, w.category, stacklevel=3)
        return _Request(
            prompts=prompts, text_ids=text_ids, per_prompt=per_prompt, keep=num_images_per_prompt,
            temperature=float(temperature), top_k=top_k, top_p=top_p, guidance_scale=float(guidance_scale),
            seed=seed, batch_size=batch_size, return_codes=bool(return_codes), prefix=prefix,
            reranker=rerank_with,
        )  # fmt: skip

    def _image_seed(self, request: _Request, j: int) -> int:
        if isinstance(request.seed, list):
            return _mix(request.seed[j // request.per_prompt], j % request.per_prompt)
        return _mix(request.seed, j)

    def _run(self, request: _Request, on_row: Callable[[RowEvent], None] | None) -> PipelineOutput:
        layout, device = self.layout, self.device
        h = layout.grid_h
        total = len(request.prompts) * request.per_prompt
        prompt_of = torch.arange(total) // request.per_prompt  # (N,)
        starts = range(0, total, request.batch_size)
        kept_rows = 0 if request.prefix is None else request.prefix.shape[1]
        rows_per_batch = max(1, h - kept_rows)
        all_codes = []
        for b, start in enumerate(starts):
            index = prompt_of[start : start + request.batch_size]  # (b,)
            text_ids = request.text_ids[index].to(device)  # (b, T)
            prefix = None if request.prefix is None else request.prefix[index].to(device)  # (b, k, w)
            generators = [
                torch.Generator(device=device).manual_seed(self._image_seed(request, j))
                for j in range(start, start + len(index))
            ]
            row_callback = None
            if on_row is not None:

                def row_callback(row, codes, start=start, b=b):  # codes (b, row + 1, w)
                    done = b * rows_per_batch + row + 1 - kept_rows
                    on_row(
                        RowEvent(
                            row=row,
                            num_rows=h,
                            first_image=start,
                            images=self._partial_images(codes),
                            codes=codes.cpu(),
                            progress=done / (len(starts) * rows_per_batch),
                        )  # fmt: skip
                    )

            codes = sample_image_codes(
                self.transformer, layout, text_ids, temperature=request.temperature, top_k=request.top_k,
                top_p=request.top_p, guidance_scale=request.guidance_scale, generator=generators,
                prefix_codes=prefix, on_row=row_callback, guidance_plausibility=self.config.guidance_plausibility,
            )  # fmt: skip  # (b, h, w)
            all_codes.append(codes.cpu())
        codes = torch.cat(all_codes)  # (N, h, w)
        images = self.decode_codes(codes)
        prompts = [request.prompts[i] for i in prompt_of.tolist()]
        scores = None
        if request.reranker is not None:
            values, chosen = _best_per_prompt(
                request.reranker.score(images, prompts), request.per_prompt, request.keep
            )
            scores = values.tolist()
            images, prompts, codes = [images[i] for i in chosen], [prompts[i] for i in chosen], codes[chosen]
        return PipelineOutput(
            images=images,
            prompts=prompts,
            seed=request.seed,
            codes=codes if request.return_codes else None,
            scores=scores,
        )

    def _partial_images(self, codes: torch.Tensor) -> list[Image.Image]:
        """Decode (b, r, w) codes of the first r rows as a full picture: the unsampled rows repeat the last
        sampled one (so the decoder's edge looks natural) and are then painted grey."""
        b, r, w = codes.shape
        h = self.layout.grid_h
        full = torch.cat([codes, codes[:, -1:].expand(b, h - r, w)], dim=1)  # (b, h, w)
        vq_device = next(self.vqvae.parameters()).device
        pixels = self.vqvae.decode_codes(full.to(vq_device))  # (b, 3, H, W)
        pixels[:, :, r * pixels.shape[2] // h :] = 0.0  # grey in [-1, 1]
        return tensor_to_pil(pixels)


class GenerationStream:
    """Iterate over ``RowEvent``s while a generation runs in a worker thread; ``output`` at the end.

    The generation runs in a thread because the sampler reports rows through a callback. Stopping the
    iteration early cancels it at the next row.
    """

    def __init__(self, run: Callable[[Callable[[RowEvent], None]], PipelineOutput]):
        self._run = run
        self._events: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._started = False
        self.output: PipelineOutput | None = None

    def __iter__(self) -> Iterator[RowEvent]:
        if self._started:
            raise RuntimeError("A GenerationStream can be iterated only once.")
        self._started = True
        done = object()

        def on_row(event: RowEvent) -> None:
            if self._cancel.is_set():
                raise GenerationCancelled("the consumer of the stream stopped")
            self._events.put(event)

        def work() -> None:
            try:
                self.output = self._run(on_row)
                self._events.put(done)
            except BaseException as err:  # handed to the consumer's thread
                self._events.put(err)

        thread = threading.Thread(target=work, name="minidalle-generate", daemon=True)
        thread.start()
        try:
            while True:
                item = self._events.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._cancel.set()
            thread.join()


# --------------------------------------------------------------------------------------------------
# checks


def check_pipeline_folder(folder: Path) -> None:
    """Raise FileNotFoundError naming what is missing, before anything is loaded."""
    hint = (
        "Assemble a pipeline folder from the two training runs with: python -m pipeline.assemble "
        "--stage1 outputs/stage1_tiny --stage2 outputs/stage2_tiny --out outputs/pipeline_tiny"
    )
    if not folder.is_dir():
        raise FileNotFoundError(f"Model folder {str(folder)!r} does not exist. {hint}")
    needed = [
        PIPELINE_CONFIG_FILE,
        f"{VQVAE_DIR}/config.json",
        f"{VQVAE_DIR}/model.safetensors",
        f"{TRANSFORMER_DIR}/config.json",
        f"{TRANSFORMER_DIR}/{LAYOUT_FILE}",
        f"{TOKENIZER_DIR}/tokenizer.json",
    ]
    missing = [name for name in needed if not (folder / name).is_file()]
    if not any((folder / TRANSFORMER_DIR).glob("*.safetensors")):
        missing.append(f"{TRANSFORMER_DIR}/model.safetensors")
    if missing:
        raise FileNotFoundError(
            f"Model folder {str(folder)!r} is incomplete: missing {', '.join(missing)}. {hint}"
        )


def _mismatches(vqvae: VQVAE, layout: SequenceLayout, tokenizer) -> list[str]:
    problems = []
    if vqvae.config.codebook_size != layout.codebook_size:
        problems.append(
            f"codebook size: the stage-1 model has {vqvae.config.codebook_size} codes but the transformer "
            f"was trained on {layout.codebook_size} ({LAYOUT_FILE} codebook_size)."
        )
    grid = vqvae.config.grid_size
    if (grid, grid) != (layout.grid_h, layout.grid_w):
        problems.append(
            f"grid size: the stage-1 model makes a {grid}x{grid} code grid but the transformer expects "
            f"{layout.grid_h}x{layout.grid_w} ({LAYOUT_FILE} grid_h, grid_w)."
        )
    if len(tokenizer) != layout.text_vocab_size:
        problems.append(
            f"vocabulary: the caption tokenizer has {len(tokenizer)} tokens but the transformer was trained "
            f"with {layout.text_vocab_size} ({LAYOUT_FILE} text_vocab_size)."
        )
    if tokenizer.pad_token_id != layout.pad_id:
        problems.append(
            f"pad id: the caption tokenizer pads with id {tokenizer.pad_token_id} but the transformer was "
            f"trained with pad id {layout.pad_id} ({LAYOUT_FILE} pad_id)."
        )
    return problems


def check_sampling_args(temperature, top_k, top_p, guidance_scale) -> None:
    """Sampling settings, each error naming the argument and its allowed range."""
    if not _is_number(temperature) or not temperature > 0:
        raise ValueError(
            f"temperature must be a number > 0, got {temperature!r} (1 samples the model as trained; "
            "lower is more conservative)."
        )
    if top_k is not None:
        _check_int("top_k", top_k, 1, None, "or None for no top-k cut")
    if top_p is not None and (not _is_number(top_p) or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] (1 = no nucleus cut), got {top_p!r}.")
    if not _is_number(guidance_scale) or not guidance_scale >= 0:
        raise ValueError(
            f"guidance_scale must be a number >= 0 (1 = no classifier-free guidance), got {guidance_scale!r}."
        )


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise ValueError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}.")
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt.")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(f"prompt {i} must be a string, got {type(prompt).__name__}.")
        if not prompt.strip():
            raise ValueError(f"prompt {i} is empty or whitespace: describe the image to generate.")
    return list(prompts)


def _check_int(name: str, value, low: int, high: int | None, note: str = "") -> int:
    in_range = f"in [{low}, {high}]" if high is not None else f">= {low}"
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    ok = ok or (isinstance(value, float) and value.is_integer())  # e.g. 4.0 from a UI number box
    if not ok or value < low or (high is not None and value > high):
        extra = f" ({note})" if note else ""
        raise ValueError(f"{name} must be an integer {in_range}{extra}, got {value!r}.")
    return int(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)


def resolve_device_dtype(
    device: str | torch.device | None, dtype: str | torch.dtype | None
) -> tuple[torch.device, torch.dtype]:
    """Defaults: CUDA when present with bf16 (fp16 on GPUs without bf16), else the CPU with float32."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device must be 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}: {err}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for but CUDA is not available here; use 'cpu'.")
    if dtype is None:
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
    elif isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or a torch.dtype, got {dtype!r}.")
        dtype = _DTYPES[dtype.lower()]
    elif dtype not in set(_DTYPES.values()):
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}.")
    return device, dtype


def _mix(seed: int, index: int) -> int:
    """A 63-bit generator seed for image ``index`` of a call seeded with ``seed`` (distinct streams)."""
    words = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def _best_per_prompt(scores: torch.Tensor, per_prompt: int, keep: int) -> tuple[torch.Tensor, list[int]]:
    """(P * per_prompt,) scores -> the best ``keep`` of each prompt, best first: values (P * keep,) and
    their indices into the candidates."""
    grouped = scores.float().cpu().reshape(-1, per_prompt)  # (P, per_prompt)
    values, order = grouped.topk(keep, dim=1)  # (P, keep) each
    flat = order + torch.arange(grouped.shape[0])[:, None] * per_prompt  # (P, keep)
    return values.reshape(-1), flat.reshape(-1).tolist()
