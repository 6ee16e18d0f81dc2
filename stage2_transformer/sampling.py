"""Sampling image codes from the stage-2 model, and scoring them (log-likelihood, for bits per image).

Only image codes are ever sampled: the next-token logits are cut to the K image-code columns before
guidance, temperature, top-k and top-p. Classifier-free guidance runs the conditional and the
unconditional (all-PAD caption) halves in one batched forward pass and mixes them as
``uncond + scale * (cond - uncond)``; with ``guidance_scale == 1`` the unconditional half is not run. A
negative prompt adds a third half (``guided_logits``).
Guided sampling keeps only codes that the conditional model finds plausible (probability at least
``guidance_plausibility`` times the top code's): without this cut, guidance at scales of 2-3 lifts
codes from the far tail (ones both halves find absurd) and litters images with artefacts.

Randomness: ``generator`` is ``None`` (global RNG), one ``torch.Generator`` for the whole batch, or a list
of B generators, one per sample. With a list, each sample draws only from its own stream, so a batch of
prompts gives the same codes as the same prompts sampled one by one with the same seeds (up to
floating-point differences between batch sizes in the forward pass, which in practice do not change the
sampled tokens). Each CPU generator's variates are drawn many steps at a time (``noise.py``): the same
codes as one ``torch.multinomial`` call per image and step, in B calls per many steps instead of per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache

from minidalle.arguments import check_int, is_number
from minidalle.errors import ArgumentError

from .decoding import KVDecoder
from .layout import SequenceLayout
from .model import cache_keyword, forward_accepts
from .noise import NoiseStreams
from .static_cache_decoding import StaticCacheDecoder

# With guidance, codes whose conditional probability is below this fraction of the most likely
# code's are never sampled (0 disables). See sample_image_codes.
DEFAULT_GUIDANCE_PLAUSIBILITY = 0.05
# With a negative prompt: the weight of the contrast between the caption and the negative one, and the
# plausibility cut's least value. See guided_logits.
DEFAULT_NEGATIVE_SCALE = 32.0
NEGATIVE_PLAUSIBILITY = 0.1
MAX_NEGATIVE_SCALE = 1000.0  # past this the contrast swamps the caption's own logits entirely

Generators = torch.Generator | Sequence[torch.Generator] | None

# "static": KVDecoder (decoding.py); "dynamic": transformers' forward with DynamicCache; "hf-static":
# transformers' forward with StaticCache, "hf-static-compile" with its one-token step torch.compile'd.
CACHE_IMPLEMENTATIONS = ("static", "dynamic", "hf-static", "hf-static-compile")


@torch.no_grad()
def sample_image_codes(
    model: torch.nn.Module,
    layout: SequenceLayout,
    text_ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance_scale: float = 1.0,
    generator: Generators = None,
    prefix_codes: torch.Tensor | None = None,
    fixed_codes: torch.Tensor | None = None,
    sample_mask: torch.Tensor | None = None,
    negative_text_ids: torch.Tensor | None = None,
    on_row: Callable[[int, torch.Tensor], None] | None = None,
    use_cache: bool = True,
    guidance_plausibility: float = DEFAULT_GUIDANCE_PLAUSIBILITY,
    cache_implementation: str = "static",
    negative_scale: float = DEFAULT_NEGATIVE_SCALE,
    unconditional_text_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample (B, h, w) image codes in [0, K) for captions ``text_ids`` (B, T).

    ``temperature == 0`` is greedy (argmax, no randomness). ``prefix_codes`` (B, k, w) fixes the first k
    rows (image completion). More generally ``fixed_codes`` (B, h*w) with ``sample_mask`` (h*w,) or
    (B, h*w), True where a code is sampled, keeps every other code (region editing, variations): the
    grid is walked in raster order, sampled positions see the codes before them and fixed positions are
    fed as given (the model is causal, so a fixed code after a sampled one cannot condition it).
    ``negative_text_ids`` (B, T): negative captions, a third batched half that guidance steers away from
    with weight ``negative_scale`` (``guided_logits``). ``unconditional_text_ids`` (B, T): guidance's
    unconditional half in place of the empty caption, for a layout whose text part holds more than the
    caption (a reference picture's codes kept in both halves, so that guidance amplifies only the
    caption: ``benchmarks/emoji_reference_prior.py``). ``on_row(row, codes)`` is called after each sampled row with the rows done
    so far, ``codes`` (B, row + 1, w). ``use_cache=False`` re-runs the whole sequence at every step.
    ``cache_implementation``: ``"static"`` decodes with ``KVDecoder`` (preallocated cache, fused
    projections; falls back to ``"dynamic"`` for models it does not support), ``"dynamic"`` with
    transformers' own forward and ``DynamicCache``, ``"hf-static"`` with its ``StaticCache`` and
    ``"hf-static-compile"`` the same with the one-token step compiled (static_cache_decoding.py). Every
    way samples the same codes (up to floating-point differences of compiled kernels).
    """
    if cache_implementation not in CACHE_IMPLEMENTATIONS:
        raise ValueError(
            f"cache_implementation must be one of {', '.join(CACHE_IMPLEMENTATIONS)}, got {cache_implementation!r}."
        )
    top_k = check_sampling_args(temperature, top_k, top_p, guidance_scale, guidance_plausibility)
    device = _model_device(model)
    text_ids = _check_text_ids(text_ids, layout).to(device)  # (B, T)
    batch, h, w = text_ids.shape[0], layout.grid_h, layout.grid_w
    generators = _check_generators(generator, batch)
    codes, mask = _check_fixed(prefix_codes, fixed_codes, sample_mask, layout, batch)  # (B, N) each
    codes, mask = codes.to(device), mask.to(device)
    sampled_at = mask.any(dim=0).tolist()  # (N,) positions where some image samples
    if not any(sampled_at):
        return codes.reshape(batch, h, w)  # nothing to sample
    start = sampled_at.index(True)  # first code index to sample
    last = h * w - 1 - sampled_at[::-1].index(True)  # no forward pass is needed after it
    partial = not mask[:, start:].all()  # some positions after start are fixed
    if temperature != 0 and batch > 1 and NoiseStreams.supports(generators):  # per-image streams, drawn ahead
        generators = NoiseStreams(generators, num_steps=sum(sampled_at[start:]))
    boi = torch.full((batch, 1), layout.boi_id, dtype=torch.long, device=device)  # (B, 1)
    seq = torch.cat([text_ids, boi, codes[:, :start] + layout.image_offset], dim=1)  # (B, T+1+k*w)
    guided = guidance_scale != 1.0
    halves = 1
    if guided:  # rows [0, B) conditional, [B, 2B) the empty caption, [2B, 3B) the negative one if any
        if unconditional_text_ids is None:
            empty = layout.empty_caption_ids(batch, device=device)  # (B, T)
        else:
            empty = _check_text_ids(unconditional_text_ids, layout, "unconditional_text_ids").to(device)
            if empty.shape[0] != batch:
                raise ValueError(f"unconditional_text_ids has {empty.shape[0]} rows, text_ids {batch}.")
        parts = [seq, torch.cat([empty, seq[:, layout.text_len :]], dim=1)]
        if negative_text_ids is not None:
            negative = _check_text_ids(negative_text_ids, layout, "negative_text_ids").to(device)  # (B, T)
            if negative.shape[0] != batch:
                raise ValueError(f"negative_text_ids has {negative.shape[0]} captions, text_ids {batch}.")
            parts.append(torch.cat([negative, seq[:, layout.text_len :]], dim=1))
        seq = torch.cat(parts, dim=0)  # (halves * B, P)
        halves = len(parts)

    was_training = model.training
    model.eval()
    try:
        decoder = cache = None
        if use_cache and cache_implementation == "static" and KVDecoder.supports(model):
            decoder = KVDecoder(model, seq.shape[0], layout.seq_len, logit_rows=layout.image_slice)
            logits = decoder.prefill(seq)  # (halves * B, K)
        elif use_cache and cache_implementation.startswith("hf-static"):
            compile_steps = cache_implementation == "hf-static-compile"
            decoder = StaticCacheDecoder(model, layout.seq_len, layout.image_slice, compile=compile_steps)
            logits = decoder.prefill(seq)  # (halves * B, K)
        else:
            cache = DynamicCache(config=model.config) if use_cache else None
            logits = _last_logits(model, seq, cache)[:, layout.image_slice]  # (halves * B, K)

        def advance(code: torch.Tensor) -> torch.Tensor:
            """Feed code (B,) at the next position; return the next logits (halves * B, K)."""
            nonlocal seq
            token = (code + layout.image_offset).unsqueeze(1)  # (B, 1)
            token = token.repeat(halves, 1)  # (halves * B, 1)
            if decoder is not None:
                return decoder.step(token)  # (halves * B, K)
            if use_cache:
                return _last_logits(model, token, cache)[:, layout.image_slice]
            seq = torch.cat([seq, token], dim=1)  # (halves * B, P+1)
            return _last_logits(model, seq, None)[:, layout.image_slice]

        for i in range(start, h * w):
            if not sampled_at[i]:
                code = codes[:, i]  # (B,) fixed
                _report_row(on_row, codes, i, w)
                if i < last:
                    logits = advance(code)
                continue
            step = logits.float()  # (halves * B, K)
            if guided:
                step = guided_logits(
                    step.view(halves, batch, -1), guidance_scale, guidance_plausibility, negative_scale
                )  # (B, K)
            code = _sample(step, temperature, top_k, top_p, generators)  # (B,)
            if partial:  # images whose code here is fixed keep it
                code = torch.where(mask[:, i], code, codes[:, i])
            codes[:, i] = code
            _report_row(on_row, codes, i, w)
            if i >= last:
                continue  # the rest (if any) is fixed: no forward pass
            logits = advance(code)
    finally:
        model.train(was_training)
    return codes.reshape(batch, h, w)  # (B, h, w)


@torch.no_grad()
def image_token_log_likelihood(
    model: torch.nn.Module,
    layout: SequenceLayout,
    text_ids: torch.Tensor,
    codes: torch.Tensor,
    batch_size: int = 32,
) -> torch.Tensor:
    """log p(codes | caption) in nats, (B,) float32 on the model's device, over the image-code slice only.

    Bits per image: ``-ll / math.log(2)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    device = _model_device(model)
    seq = layout.build(_check_text_ids(text_ids, layout), codes.to(text_ids.device)).to(device)  # (B, L)
    T, N = layout.text_len, layout.num_image_tokens
    kwargs = {"use_cache": False}
    if forward_accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = N
    totals = []
    was_training = model.training
    model.eval()
    try:
        for chunk in seq.split(batch_size):
            logits = model(input_ids=chunk[:, :-1], **kwargs).logits[:, -N:]  # (b, N, V): positions T..T+N-1
            log_probs = logits[..., layout.image_slice].float().log_softmax(-1)  # (b, N, K)
            targets = chunk[:, T + 1 :] - layout.image_offset  # (b, N)
            totals.append(log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).sum(-1))  # (b,)
    finally:
        model.train(was_training)
    return torch.cat(totals)  # (B,)


def guided_logits(
    halves: torch.Tensor,
    scale: float,
    plausibility: float,
    negative_scale: float = DEFAULT_NEGATIVE_SCALE,
) -> torch.Tensor:
    """The logits to sample from, (B, K), given the model's logits of each half ``halves`` (2 or 3, B, K):
    under the caption, the empty caption and (when there are three) the negative caption.

    Without a negative: ``uncond + scale * (cond - uncond)``. With one, guidance toward the caption is
    kept as it is and a contrast against the negative is added (composable guidance, with the negative
    measured against the caption rather than against the empty caption):

        cond + (scale - 1) * (cond - uncond) + negative_scale * (cond - negative)

    Why not the negative in place of the empty caption (``negative + scale * (cond - negative)``): a
    negative usually repeats most of the caption ("a large red circle at the top left" against "a
    large circle at the top left"), so the shared words cancel and lose their guidance; measured on the
    demo model (benchmarks/editing_figures.py, seeds 0-5), shape, position and size then fell from 75%
    to 62% right. And why not ``- s * (negative - uncond)``: that pushes away from the shared words too
    (worse on both counts). ``cond - negative`` is near zero wherever the two captions agree and large
    only where the negative differs (its colour), so it needs the larger weight. This form, with the cut
    below, on the demo model of the shipped recipe (seeds 0-5): the negated colour in 0.0% of the images
    at weight 32 and 12.8% at 8 (63.0% without a negative), shape, position and size right 75.0% and
    75.8% (73.4% without).

    Only codes the conditional model finds plausible are kept (probability at least ``plausibility``
    times the top code's; the "adaptive plausibility" cut of contrastive decoding): guidance amplifies
    differences in the far tail too, so a code both halves find absurd could win by being less absurd
    under the caption. With a negative the cut is at least ``NEGATIVE_PLAUSIBILITY``: the contrast's
    weight amplifies the small, noisy differences of codes the captions agree on, and at the looser cut
    they scatter blobs over the background.
    """
    cond, uncond = halves[0], halves[1]  # (B, K) each
    if halves.shape[0] == 2:
        step = uncond + scale * (cond - uncond)  # (B, K)
    else:
        step = cond + (scale - 1) * (cond - uncond) + negative_scale * (cond - halves[2])  # (B, K)
        plausibility = max(plausibility, NEGATIVE_PLAUSIBILITY)
    if plausibility > 0:
        # p(c) >= a * p(top)  <=>  logit(c) >= logit(top) + log(a): softmax's normaliser cancels.
        floor = cond.max(dim=-1, keepdim=True).values + math.log(plausibility)  # (B, 1)
        step = step.masked_fill(cond < floor, float("-inf"))
    return step  # (B, K)


# --------------------------------------------------------------------------------------------------
# helpers


def _sample(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generators: torch.Generator | list[torch.Generator] | NoiseStreams | None,
) -> torch.Tensor:
    """One code per row from float32 ``logits`` (B, K) -> (B,)."""
    if temperature == 0:
        return logits.argmax(dim=-1)  # (B,)
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, K) each
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # (B, K): the top token always stays
        sorted_logits = sorted_logits.masked_fill(mass_before > top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)  # (B, K)
    if isinstance(generators, NoiseStreams):
        return generators.sample(probs)  # (B,)
    if isinstance(generators, list):  # one stream per sample (CUDA generators; CPU ones go to NoiseStreams)
        picks = [
            torch.multinomial(probs[b : b + 1].to(g.device), 1, generator=g).to(probs.device)
            for b, g in enumerate(generators)
        ]
        return torch.cat(picks).squeeze(1)  # (B,)
    sample_device = probs.device if generators is None else generators.device
    return torch.multinomial(probs.to(sample_device), 1, generator=generators).to(probs.device).squeeze(1)


def _last_logits(model: torch.nn.Module, input_ids: torch.Tensor, cache: DynamicCache | None) -> torch.Tensor:
    """Next-token logits (B, V) after ``input_ids`` (B, L); extends ``cache`` in place when given."""
    kwargs = {"use_cache": cache is not None}
    if cache is not None:
        kwargs[cache_keyword(model)] = cache
    if forward_accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1  # the lm_head runs on the last position only
    return model(input_ids=input_ids, **kwargs).logits[:, -1]  # (B, V)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def check_sampling_args(
    temperature,
    top_k,
    top_p,
    guidance_scale,
    guidance_plausibility=DEFAULT_GUIDANCE_PLAUSIBILITY,
) -> int | None:
    """Raise a ValueError naming the first setting out of its range; return ``top_k`` as an int (or None).

    The one check of these settings: the pipeline and its config file call it too. Temperature 0 is
    greedy decoding (always the most likely code): the limit of softmax(logits / T) as T -> 0, and what
    samplers of language models (transformers' ``do_sample=False``, most APIs' ``temperature=0``) do.
    """
    if not is_number(temperature) or temperature < 0:
        raise ArgumentError(
            f"temperature must be a number >= 0 (0 = greedy, 1 samples the model as trained; lower is more "
            f"conservative), got {temperature!r}."
        )
    if top_k is not None:
        top_k = check_int("top_k", top_k, 1, None, "or None for no top-k cut")
    if top_p is not None and (not is_number(top_p) or not 0.0 < top_p <= 1.0):
        raise ArgumentError(f"top_p must be in (0, 1] (1 = no nucleus cut) or None, got {top_p!r}.")
    if not is_number(guidance_scale) or guidance_scale < 0:
        raise ArgumentError(
            f"guidance_scale must be a number >= 0 (1 = no classifier-free guidance), got {guidance_scale!r}."
        )
    if not is_number(guidance_plausibility) or not 0 <= guidance_plausibility < 1:
        raise ArgumentError(
            f"guidance_plausibility must lie in [0, 1) (0 = no cut), got {guidance_plausibility!r}."
        )
    return top_k


def check_negative_scale_value(scale, default: float = DEFAULT_NEGATIVE_SCALE) -> float:
    """The weight of the contrast against a negative prompt: a number in (0, MAX_NEGATIVE_SCALE]. The one
    check of it: the pipeline and the evaluate command call it too."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= MAX_NEGATIVE_SCALE:
        raise ArgumentError(
            f"negative_scale must be a number in (0, {MAX_NEGATIVE_SCALE:g}], got {scale!r} "
            f"(default {default:g})."
        )
    return float(scale)


def _report_row(on_row, codes: torch.Tensor, i: int, w: int) -> None:
    """After position ``i`` ends a row: ``on_row(row, codes of the rows so far (B, rows, w))``."""
    if on_row is not None and (i + 1) % w == 0:
        on_row((i + 1) // w - 1, codes[:, : i + 1].reshape(codes.shape[0], -1, w).clone())


def _check_text_ids(text_ids: torch.Tensor, layout: SequenceLayout, name: str = "text_ids") -> torch.Tensor:
    if not isinstance(text_ids, torch.Tensor) or text_ids.dim() != 2 or text_ids.shape[1] != layout.text_len:
        shape = tuple(text_ids.shape) if isinstance(text_ids, torch.Tensor) else type(text_ids).__name__
        raise ValueError(f"{name} must be a (B, {layout.text_len}) tensor, got {shape}.")
    if text_ids.shape[0] == 0:
        raise ValueError(f"{name} holds no captions (batch size 0).")
    layout._check_range(text_ids, layout.text_vocab_size, name)
    return text_ids.long()


def _check_generators(generator: Generators, batch: int) -> torch.Generator | list[torch.Generator] | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    generators = list(generator)
    if len(generators) != batch or not all(isinstance(g, torch.Generator) for g in generators):
        raise ValueError(
            f"generator must be None, one torch.Generator, or a list of {batch} generators (one per "
            f"caption); got {len(generators)} items."
        )
    return generators


def _check_prefix(prefix: torch.Tensor | None, layout: SequenceLayout, batch: int) -> torch.Tensor:
    if prefix is None:
        return torch.zeros(batch, 0, layout.grid_w, dtype=torch.long)  # (B, 0, w)
    if prefix.dim() != 3 or prefix.shape[0] != batch or prefix.shape[2] != layout.grid_w:
        raise ValueError(
            f"prefix_codes must have shape (B={batch}, k, w={layout.grid_w}), got {tuple(prefix.shape)}."
        )
    if prefix.shape[1] > layout.grid_h:
        raise ValueError(f"prefix_codes has {prefix.shape[1]} rows but the grid has only {layout.grid_h}.")
    layout._check_range(prefix, layout.codebook_size, "prefix_codes")
    return prefix.long()


def _check_fixed(prefix_codes, fixed_codes, sample_mask, layout: SequenceLayout, batch: int):
    """(the codes to start from (B, N), where to sample (B, N) bool) from either way of fixing codes."""
    n = layout.grid_h * layout.grid_w
    if fixed_codes is None and sample_mask is None:
        prefix = _check_prefix(prefix_codes, layout, batch)  # (B, k, w)
        codes = torch.zeros(batch, n, dtype=torch.long)  # (B, N)
        codes[:, : prefix[0].numel()] = prefix.reshape(batch, -1)
        return codes, (torch.arange(n) >= prefix[0].numel()).expand(batch, n)
    if prefix_codes is not None:
        raise ValueError("give prefix_codes or fixed_codes + sample_mask, not both.")
    if fixed_codes is None or sample_mask is None:
        raise ValueError("fixed_codes and sample_mask go together: the codes to keep and where to sample.")
    if fixed_codes.shape != (batch, n):
        raise ValueError(f"fixed_codes must have shape (B={batch}, h*w={n}), got {tuple(fixed_codes.shape)}.")
    if sample_mask.dtype != torch.bool or sample_mask.shape not in ((n,), (batch, n)):
        raise ValueError(
            f"sample_mask must be a bool tensor of shape (h*w={n},) or (B={batch}, {n}), "
            f"got {sample_mask.dtype} {tuple(sample_mask.shape)}."
        )
    layout._check_range(fixed_codes, layout.codebook_size, "fixed_codes")
    return fixed_codes.long().clone(), sample_mask.expand(batch, n).cpu()
