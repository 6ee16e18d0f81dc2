"""Does a prior draw a held-out emoji better when it is shown a training picture retrieved for its caption?

    python benchmarks/emoji_reference_prior.py --run outputs/stage2_emoji32_8x8 --data data/emoji32 \\
        [--retrieve caption|emoji] [--steps 2500] [--train_seed 1234] \\
        [--candidates 16 --rerank_clip outputs/reranker_emoji32/clip] [--save DIR] \\
        [--out benchmarks/results/emoji_reference_prior.json]

A retrieval-augmented prior (as RETRO, Re-Imagen or KNN-Diffusion retrieve from their training data): each
caption is followed by the stage-1 codes of one *training* picture retrieved for it, and the prior learns
the picture's codes after both::

    [caption (T) | reference codes (N) | BOI | codes (N)]

The reference codes sit in the layout's text part, as K more ids after the caption tokenizer's, so the
project's layout, model, sampler and KV decoder run unchanged. Retrieval (``--retrieve``):

- **caption** (the default): the training picture whose caption is nearest the caption by TF-IDF cosine
  over its words (``caption_neighbours``; a training row never retrieves itself): text alone, as a user's
  data would allow.
- **emoji**: the training picture of the same emoji in the other style (the data's ``unified`` column),
  none when the training split has no such picture. For a held-out caption that is the picture the held-out
  score compares against, the one the prior could only remember before.

Training follows ``configs/stage2_emoji32_8x8.yaml``: the ``--run`` prior's width, depth, heads and
attention dropout, five one-pixel shifted views of each picture (``codes.shift_pixels 1``; the reference is
a random view of its own), loss 1/8 on caption tokens and 7/8 on codes (none on the reference), caption
dropout 0.1 with the reference kept, and the reference dropped (PAD) for 10% of the rows so the prior also
draws without one. AdamW with the config's learning rate, warm-up, cosine decay to 0.1 and clipping, under
bf16 autocast where the device multiplies bf16 natively (``mixed_precision: auto``). A benchmark loop, not a
second trainer: one process, no checkpoints, nothing resumable.

Scoring is the evaluate command's (``stage2_transformer/heldout_style.py``) on the held-out captions, with
the evaluate command's seeds: the retrieved picture itself (what copying it would score), one sample with
its reference, one sample of the same prior with no reference, and the re-ranker's pick of ``--candidates``
samples (``--rerank_clip``; candidate k of caption i has seed ``seed + k * n + i`` as in
``sample_reranked``), with how often any candidate is right. Guidance contrasts the caption with the empty
caption, the reference kept in both halves (``sample_image_codes(unconditional_text_ids=...)``), so that it
amplifies what the caption says beyond the picture. Prints a table and writes JSON; on the demo's run about
23 min of training and 4 min of scoring on 2 CPU cores with bf16.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks.heldout_run import add_heldout_arguments, load_heldout_run, write_report  # noqa: E402
from minidalle.devices import resolve_mixed_precision  # noqa: E402
from minidalle.errors import ModelFolderError  # noqa: E402
from minidalle.pixels import pil_to_tensor, preprocess, tensor_to_pil  # noqa: E402
from pipeline.rerank import ClipReranker  # noqa: E402
from reranker.folder import check_clip_folder  # noqa: E402
from stage2_transformer.heldout_style import (  # noqa: E402
    format_group_table,
    group_masks,
    percentages,
    style_and_rank,
)
from stage2_transformer.layout import SequenceLayout  # noqa: E402
from stage2_transformer.model import (  # noqa: E402
    TransformerConfig,
    build_transformer,
    prefer_fast_attention,
    save_transformer,
)
from stage2_transformer.precompute import SHIFT_DIRECTIONS, shifted_views  # noqa: E402
from stage2_transformer.sampling import sample_image_codes  # noqa: E402
from stage2_transformer.tokenizer import encode_captions  # noqa: E402

NO_REFERENCE = -1
COLUMNS = ("retrieved picture", "with reference", "without reference", "re-ranker's pick")


def caption_words(caption: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", caption.lower())


def caption_neighbours(queries: list[str], keys: list[str], exclude_self: bool = False) -> torch.Tensor:
    """For each query caption, the index of the key caption nearest by TF-IDF cosine over lower-case words
    (n,); with ``exclude_self`` (queries are the keys) a caption never finds itself. Words rare among the keys
    (an emoji's name) outweigh words every caption shares (a style, a phrasing)."""
    document_frequency = Counter(word for key in keys for word in set(caption_words(key)))
    vocabulary = {word: i for i, word in enumerate(document_frequency)}
    idf = torch.tensor([math.log(len(keys) / document_frequency[word]) for word in vocabulary])  # (V,)

    def vectors(captions: list[str]) -> torch.Tensor:
        counts = torch.zeros(len(captions), len(vocabulary))  # (n, V)
        for row, caption in enumerate(captions):
            for word in caption_words(caption):
                if word in vocabulary:
                    counts[row, vocabulary[word]] += 1
        return F.normalize(counts * idf, dim=1)

    similarity = vectors(queries) @ vectors(keys).T  # (n, m)
    if exclude_self:
        similarity.fill_diagonal_(-math.inf)
    return similarity.argmax(1)


def other_style_indices(queries: list[dict], keys: list[dict]) -> torch.Tensor:
    """For each query row, the index of the key row of the same emoji (``unified``) in another style, or
    ``NO_REFERENCE`` when the keys have none (n,)."""
    by_emoji: dict[str, list[int]] = {}
    for index, row in enumerate(keys):
        by_emoji.setdefault(row["unified"], []).append(index)
    found = []
    for row in queries:
        others = [i for i in by_emoji.get(row["unified"], []) if keys[i]["style"] != row["style"]]
        found.append(others[0] if others else NO_REFERENCE)
    return torch.tensor(found)


def retrieve(mode: str, queries: list[dict], keys: list[dict], queries_are_keys: bool) -> torch.Tensor:
    """The training picture (an index into ``keys``) each query row is shown, ``NO_REFERENCE`` for none (n,)."""
    if mode == "emoji":
        return other_style_indices(queries, keys)
    texts = [row["text"] for row in keys]
    return caption_neighbours([row["text"] for row in queries], texts, exclude_self=queries_are_keys)


def reference_layout(base: SequenceLayout) -> SequenceLayout:
    """The run's layout with N reference-code ids after the caption tokens: text part (T + N) ids in
    [0, Vt + K), image part as before."""
    return SequenceLayout(
        text_len=base.text_len + base.num_image_tokens,
        text_vocab_size=base.text_vocab_size + base.codebook_size,
        codebook_size=base.codebook_size,
        grid_h=base.grid_h,
        grid_w=base.grid_w,
        pad_id=base.pad_id,
    )


def reference_ids(codes: torch.Tensor, present: torch.Tensor, base: SequenceLayout) -> torch.Tensor:
    """(B, N) codes of the references -> (B, N) text-part ids; rows where ``present`` (B,) is False are PAD."""
    ids = codes + base.text_vocab_size  # (B, N)
    return torch.where(present[:, None], ids, torch.full_like(ids, base.pad_id))


@torch.no_grad()
def encode_views(vqvae, pictures: torch.Tensor, views: int, batch_size: int = 512) -> torch.Tensor:
    """(n, 3, H, W) pictures -> (views, n, N) codes of their first ``views`` one-pixel shifted views."""
    device = next(vqvae.parameters()).device
    shifted = shifted_views(pictures, 1)[:views]  # (V, n, 3, H, W)
    return torch.stack(
        [
            torch.cat(
                [
                    vqvae.encode(view[s : s + batch_size].to(device)).flatten(1).cpu()
                    for s in range(0, len(view), batch_size)
                ]
            )
            for view in shifted
        ]
    )  # (V, n, N)


def train_prior(
    args,
    held,
    base: SequenceLayout,
    layout: SequenceLayout,
    texts: list[str],
    codes: torch.Tensor,
    references: torch.Tensor,
):
    """The reference-conditioned prior, trained on the training rows' captions ``texts`` (n), the codes of their
    pictures' shifted views ``codes`` (5, n, N) and the row each is shown ``references`` (n,); returns it in
    eval mode and the seconds it took."""
    captions = encode_captions(held.tokenizer, texts, base.text_len, warn=False)  # (n, T)
    size = held.model.config
    torch.manual_seed(args.train_seed)
    model = build_transformer(
        TransformerConfig(
            hidden_size=size.hidden_size,
            num_layers=size.num_hidden_layers,
            num_heads=size.num_attention_heads,
            dropout=size.attention_dropout,
        ),
        layout,
    ).to(held.device)
    precision = resolve_mixed_precision("auto", held.device)
    prefer_fast_attention(model, held.device, precision)
    decay = [p for p in model.parameters() if p.dim() >= 2]  # as the trainer: no decay on norms
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.learning_rate,
        betas=(0.9, 0.95),
    )

    # Linear warm-up from lr / W, then cosine to 0.1 of the peak: the schedule of the figures in docs/emoji.md
    # (the trainer's cosine_with_warmup warms up from lr / (W + 1), otherwise the same).
    def schedule(step: int) -> float:
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(args.train_seed)
    text_part, B = layout.text_len, args.batch_size  # T + N: the caption and the reference
    model.train()
    start = time.time()
    for step in range(args.steps):
        rows_drawn = torch.randint(0, len(texts), (B,), generator=generator)  # (B,)
        view = torch.randint(0, len(SHIFT_DIRECTIONS), (B,), generator=generator)  # (B,)
        reference_view = torch.randint(0, len(SHIFT_DIRECTIONS), (B,), generator=generator)  # (B,)
        reference = references[rows_drawn]  # (B,)
        shown = (reference != NO_REFERENCE) & (torch.rand(B, generator=generator) >= args.reference_dropout)
        caption = captions[rows_drawn].clone()  # (B, T)
        caption[torch.rand(B, generator=generator) < args.caption_dropout] = base.pad_id
        target = codes[view, rows_drawn]  # (B, N)
        reference_codes = codes[reference_view, reference.clamp(min=0)]  # (B, N)
        text = torch.cat([caption, reference_ids(reference_codes, shown, base)], 1)  # (B, T + N)
        seq = layout.build(text, target).to(held.device)  # (B, T + 2N + 1)
        with torch.autocast(held.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(input_ids=seq[:, :-1]).logits  # (B, L - 1, V)
        image_loss = F.cross_entropy(
            logits[:, text_part:, layout.image_slice].float().flatten(0, 1),
            seq[:, text_part + 1 :].flatten() - layout.image_offset,
        )
        caption_logits = logits[:, : base.text_len - 1, : base.text_vocab_size].float()  # (B, T - 1, Vt)
        caption_targets = seq[:, 1 : base.text_len]  # (B, T - 1)
        caption_loss = F.cross_entropy(
            caption_logits.flatten(0, 1), caption_targets.flatten(), ignore_index=base.pad_id
        )
        loss = 0.875 * image_loss + 0.125 * torch.nan_to_num(caption_loss)  # NaN: every caption dropped
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            print(f"step {step}: code loss {image_loss.item():.3f}, {time.time() - start:.0f} s", flush=True)
    model.eval()
    return model, time.time() - start


@torch.no_grad()
def draw(
    model, layout: SequenceLayout, base: SequenceLayout, vqvae, text: torch.Tensor, seed: int, guidance: float
):
    """One picture per row of ``text`` (n, T + N), row i with seed ``seed + i``; guidance against the same
    rows with the caption emptied and the reference kept. Pixels (n, 3, H, W) read back from 8-bit PIL."""
    device = next(model.parameters()).device
    pictures = []
    for start in range(0, len(text), 64):
        chunk = text[start : start + 64].to(device)  # (b, T + N)
        unconditional = chunk.clone()
        unconditional[:, : base.text_len] = base.pad_id
        generators = [torch.Generator(device=device).manual_seed(seed + start + i) for i in range(len(chunk))]
        codes = sample_image_codes(
            model,
            layout,
            chunk,
            guidance_scale=guidance,
            generator=generators,
            unconditional_text_ids=unconditional,
        )  # (b, h, w)
        pictures += [pil_to_tensor(image) for image in tensor_to_pil(vqvae.decode_codes(codes))]
    return torch.stack(pictures)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_heldout_arguments(parser, "emoji_reference_prior")
    parser.add_argument("--retrieve", choices=("caption", "emoji"), default="caption")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--caption_dropout", type=float, default=0.1)
    parser.add_argument("--reference_dropout", type=float, default=0.1)
    parser.add_argument("--train_seed", type=int, default=1234)
    parser.add_argument("--log_every", type=int, default=100)
    parser.add_argument(
        "--candidates", type=int, default=16, help="re-ranker's candidates (needs --rerank_clip)"
    )
    parser.add_argument("--rerank_clip", default=None, help="a re-ranker's clip/ folder (reranker/train.py)")
    parser.add_argument("--save", default=None, help="folder to save the trained prior in")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "warmup_steps", "log_every", "candidates"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.rerank_clip is not None:
        try:
            check_clip_folder(args.rerank_clip, "--rerank_clip")  # now, not after the training
        except ModelFolderError as err:
            parser.error(str(err))
    held = load_heldout_run(args, parser.error)
    reranker = None if args.rerank_clip is None else ClipReranker(args.rerank_clip, device=held.device)
    base = held.layout
    layout = reference_layout(base)
    train_rows = list(held.train_hf.select_columns(["text", "unified", "style"]))
    resolution = held.vqvae.config.resolution
    pictures = torch.stack([preprocess(row["image"], resolution) for row in held.train_hf])  # (m, 3, H, W)
    codes = encode_views(held.vqvae, pictures, len(SHIFT_DIRECTIONS))  # (5, m, N); view 0 as it is
    training_references = retrieve(args.retrieve, train_rows, train_rows, queries_are_keys=True)  # (m,)
    texts = [row["text"] for row in train_rows]
    model, train_seconds = train_prior(args, held, base, layout, texts, codes, training_references)
    if args.save:
        save_transformer(model, layout, args.save)

    heldout_references = retrieve(args.retrieve, held.rows, train_rows, queries_are_keys=False)  # (n,)
    shown = heldout_references != NO_REFERENCE  # (n,)
    found = heldout_references.clamp(min=0)  # (n,)
    retrieved = torch.where(shown[:, None, None, None], pictures[found], 1.0)  # (n, 3, H, W); white: none
    captions = encode_captions(held.tokenizer, held.captions, base.text_len, warn=False)  # (n, T)
    with_reference = torch.cat([captions, reference_ids(codes[0, found], shown, base)], 1)  # (n, T + N)
    without = torch.cat([captions, reference_ids(codes[0, found], torch.zeros_like(shown), base)], 1)

    def sample(text: torch.Tensor, seed: int) -> torch.Tensor:
        return draw(model, layout, base, held.vqvae, text, seed, args.guidance)

    samples = {
        "retrieved picture": retrieved,
        "with reference": sample(with_reference, args.seed),
        "without reference": sample(without, args.seed),
    }
    flags = {name: style_and_rank(pixels, held.truths, held.others) for name, pixels in samples.items()}
    same_emoji = [
        i >= 0 and train_rows[i]["unified"] == row["unified"]
        for i, row in zip(heldout_references.tolist(), held.rows)
    ]
    report: dict = {
        "retrieve": args.retrieve,
        "steps": args.steps,
        "train_seed": args.train_seed,
        "train_seconds": round(train_seconds, 1),
        "training_rows": len(train_rows),
        "training_rows_with_reference": int((training_references != NO_REFERENCE).sum()),
        "heldout_same_emoji_retrieved_pct": 100.0 * sum(same_emoji) / len(same_emoji),
    }
    if reranker is not None:  # DALL-E's choice among candidates, candidate 0 the sample scored above
        n, drawn, scores = len(held.captions), [], []
        for k in range(args.candidates):
            pictures = samples["with reference"] if k == 0 else sample(with_reference, args.seed + k * n)
            drawn.append(pictures)  # (n, 3, H, W)
            scores.append(reranker.score(tensor_to_pil(pictures), held.captions))  # (n,)
        picked = torch.stack(scores, 1).argmax(1)  # (n,)
        kept = torch.stack([drawn[k][i] for i, k in enumerate(picked.tolist())])  # (n, 3, H, W)
        flags["re-ranker's pick"] = style_and_rank(kept, held.truths, held.others)
        every = [style_and_rank(pictures, held.truths, held.others) for pictures in drawn]
        any_style = torch.stack([right for right, _ in every]).any(0)  # (n,)
        any_top5 = torch.stack([rank <= 5 for _, rank in every]).any(0)  # (n,)
        report["candidates"] = args.candidates
        report["any_candidate_right_style_pct"] = 100.0 * any_style.float().mean().item()
        report["any_candidate_top5_pct"] = 100.0 * any_top5.float().mean().item()
    groups = {}
    for group, mask in group_masks([row["category"] for row in held.rows]).items():
        groups[group] = {"captions": int(mask.sum())}
        for name, (right, rank) in flags.items():
            groups[group][name] = percentages(right[mask], rank[mask])
    report["groups"] = groups
    print(format_group_table(groups, [c for c in COLUMNS if c in flags]))
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
