"""Do several priors draw the held-out emoji better together than one alone?

    python benchmarks/emoji_prior_ensemble.py --run outputs/stage2_emoji32_8x8 \\
        --also outputs/stage2_emoji32_8x8_seed1 [--also RUN ...] --data data/emoji32 \\
        --rerank_clip outputs/reranker_emoji32/clip [--candidates 16] [--weights 2 1 ...] \\
        [--reuse EARLIER.json] [--out benchmarks/results/emoji_prior_ensemble.json]

Priors trained alike with different seeds differ in which held-out emoji they draw: on the 384 x 10 CPU
prior four seeds pick 37.3-40.7% top-5 (docs/emoji.md). Two ways to use R such priors, both on the same
stage 1 (each may have its own caption tokenizer):

- **pooled candidates**: each prior draws candidates as the evaluate command does (candidate k of caption
  i has seed ``seed + k * n + i``) and the CLIP re-ranker picks among all of them; "pooled C" takes the
  first C/R of each prior (as many samples as one prior's pick of C; when R divides C), "pooled R*C" all
  of them; "RUN C/2 + product C/2" the first C/2 of one prior's and of the product's (when C is even), for
  each prior (the --run prior's first).
- **product of experts**: one prior whose next-code log-probabilities are the mean of the R priors'
  (a geometric mean of their distributions, renormalised), under the caption and under the empty caption
  alike, then the usual guidance and plausibility cut (``guided_logits``). Each prior decodes with its
  own KV cache; every image draws from its own seeded stream, as ``sample_images`` does. ``--weights``
  makes it a weighted mean (one weight per run, in the order --run, --also ...; scaled to sum to 1), so
  that a larger prior can count for more than several small ones.

A prior's own candidates depend only on the prior, the captions and the seed, so ``--reuse`` takes them
from an earlier report of this benchmark (same data, seed, guidance, candidates, re-ranker and --vqvae) instead of
drawing them again; the product is always drawn.

For each prior alone, the pool and the product it reports one sample (candidate 0), the re-ranker's pick
and "any" (some candidate in the right style, or with its true image in the top 5: the most a re-ranker
could reach), scored by ``stage2_transformer/heldout_style.py`` on the held-out captions. Prints a table
and writes JSON. Sampling is at temperature 1 with no top-k or top-p, as in the emoji configs. On two
3.5M-parameter priors of the demo (8x8 codes) 16 candidates each take about 13 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks.heldout_run import add_heldout_arguments, load_heldout_run, write_report  # noqa: E402
from minidalle.errors import ModelFolderError  # noqa: E402
from minidalle.pixels import pil_to_tensor, tensor_to_pil  # noqa: E402
from pipeline.rerank import ClipReranker  # noqa: E402
from reranker.folder import check_clip_folder  # noqa: E402
from stage2_transformer.decoding import KVDecoder  # noqa: E402
from stage2_transformer.evaluate import stage1_model_of_run  # noqa: E402
from stage2_transformer.evaluation import sample_images  # noqa: E402
from stage2_transformer.heldout_style import (  # noqa: E402
    format_group_table,
    group_masks,
    percentages,
    style_and_rank,
)
from stage2_transformer.model import load_transformer  # noqa: E402
from stage2_transformer.noise import NoiseStreams  # noqa: E402
from stage2_transformer.sampling import DEFAULT_GUIDANCE_PLAUSIBILITY, guided_logits  # noqa: E402
from stage2_transformer.tokenizer import encode_captions, load_caption_tokenizer  # noqa: E402

KEYS = ("right", "rank", "clip")  # what each candidate is scored by: right style, rank, CLIP score


@torch.no_grad()
def sample_product_of_experts(
    models,
    layout,
    text_ids,
    guidance_scale: float,
    generators: list[torch.Generator],
    weights: list[float] | None = None,
) -> torch.Tensor:
    """(B, h, w) codes from the product of ``models``' next-code distributions; ``text_ids`` holds one
    (B, T) caption tensor per model (each in its own tokenizer's ids), ``generators`` one per image,
    ``weights`` one per model (summing to 1; default equal)."""
    batch, n_codes = text_ids[0].shape[0], layout.num_image_tokens
    device = next(models[0].parameters()).device
    guided = guidance_scale != 1.0
    weights = weights or [1 / len(models)] * len(models)
    weight = torch.tensor(weights, device=device).view(-1, 1, 1)  # (R, 1, 1)
    boi = torch.full((batch, 1), layout.boi_id, dtype=torch.long, device=device)  # (B, 1)
    decoders, logits = [], []
    for model, ids in zip(models, text_ids):
        seq = torch.cat([ids.to(device), boi], dim=1)  # (B, T+1)
        if guided:  # rows [0, B) the caption, [B, 2B) the empty caption
            seq = torch.cat([seq, torch.cat([layout.empty_caption_ids(batch, device=device), boi], 1)])
        decoder = KVDecoder(model, seq.shape[0], layout.seq_len, logit_rows=layout.image_slice)
        decoders.append(decoder)
        logits.append(decoder.prefill(seq))  # (halves * B, K)
    streams = NoiseStreams(generators, num_steps=n_codes)
    codes = torch.zeros(batch, n_codes, dtype=torch.long, device=device)  # (B, N)
    for i in range(n_codes):
        log_probs = torch.stack([step.float().log_softmax(-1) for step in logits])  # (R, halves * B, K)
        mean = (weight * log_probs).sum(0)  # (halves * B, K)
        if guided:
            mean = guided_logits(mean.view(2, batch, -1), guidance_scale, DEFAULT_GUIDANCE_PLAUSIBILITY)
        codes[:, i] = streams.sample(mean.softmax(-1))  # (B,)
        if i + 1 < n_codes:
            token = (codes[:, i] + layout.image_offset).unsqueeze(1)  # (B, 1)
            token = token.repeat(2 if guided else 1, 1)  # (halves * B, 1)
            logits = [decoder.step(token) for decoder in decoders]
    return codes.view(batch, layout.grid_h, layout.grid_w)  # (B, h, w)


def product_images(
    models, tokenizers, layout, vqvae, captions, guidance_scale, seed, weights=None, batch_size=32
):
    """One product-of-experts sample per caption (PIL), seeded as ``sample_images`` seeds its samples."""
    images = []
    for start in range(0, len(captions), batch_size):
        chunk = captions[start : start + batch_size]
        ids = [encode_captions(tok, chunk, layout.text_len, warn=False) for tok in tokenizers]  # (b, T) each
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        codes = sample_product_of_experts(models, layout, ids, guidance_scale, generators, weights)
        pixels = vqvae.decode_codes(codes.to(next(vqvae.parameters()).device))  # (b, 3, H, W)
        images.extend(tensor_to_pil(pixels))
    return images


def first_of_each(sources: list[dict[str, torch.Tensor]], take: int) -> dict[str, torch.Tensor]:
    """A pool of the first ``take`` candidates of each source, in order: each score (n, len(sources) * take)."""
    return {key: torch.cat([source[key][:, :take] for source in sources], 1) for key in KEYS}


# With --candidates, what fixes a prior's candidates and their scores (--vqvae: the stage 1 that decodes them).
SAME_DRAW = ("data", "seed", "guidance", "max_captions", "rerank_clip", "vqvae")


def read_reusable(args: argparse.Namespace, error) -> dict[str, dict[str, list]]:
    """The runs' candidate scores in the earlier report ``args.reuse``, refused in one line when it is not
    this benchmark's report or was drawn with other settings."""
    try:
        earlier = json.loads(Path(args.reuse).read_text())
        scores = earlier["candidate_scores"]
        drawn = {"candidates": len(next(iter(scores.values()))["clip"][0])}  # C of caption 0
    except (OSError, ValueError, KeyError, TypeError, IndexError, StopIteration) as err:
        error(f"--reuse {args.reuse} is not a report of this benchmark ({err!r}): point it at one.")
    drawn.update({key: earlier.get(key) for key in SAME_DRAW})
    differ = {key: value for key, value in drawn.items() if value != getattr(args, key)}
    if differ:
        settings = ", ".join(f"{key} {value!r}" for key, value in differ.items())
        error(
            f"--reuse {args.reuse} was drawn with other settings ({settings}): use the same, or drop --reuse."
        )
    return {name: runs for name, runs in scores.items() if name != "product"}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_heldout_arguments(p, "emoji_prior_ensemble")
    p.add_argument(
        "--also",
        action="append",
        default=[],
        help="another stage-2 run on the same stage 1 (repeat it; without one: --run's pick of C, C/2 and C/4)",
    )
    p.add_argument("--candidates", type=int, default=16)
    p.add_argument("--rerank_clip", required=True, help="a re-ranker's clip/ folder (reranker/train.py)")
    p.add_argument("--no_product", action="store_true", help="skip the product of experts")
    p.add_argument(
        "--weights",
        type=float,
        nargs="+",
        default=None,
        help="the product's weight of each run, in the order --run, --also ... (default: equal)",
    )
    p.add_argument(
        "--reuse", default=None, help="an earlier report of this benchmark: take the runs' candidates from it"
    )
    args = p.parse_args(argv)
    runs = [Path(args.run), *map(Path, args.also)]
    if args.candidates < 1:
        p.error(f"--candidates must be a positive number, got {args.candidates}.")
    weights = None
    if args.weights is not None:
        if len(args.weights) != len(runs) or min(args.weights) < 0 or sum(args.weights) <= 0:
            p.error(
                f"--weights needs one weight >= 0 for each of the {len(runs)} runs, not all 0; got {args.weights}."
            )
        weights = [w / sum(args.weights) for w in args.weights]
    reused = read_reusable(args, p.error) if args.reuse else {}
    try:
        check_clip_folder(args.rerank_clip, "--rerank_clip")
    except ModelFolderError as e:
        p.error(str(e))

    for run in runs:  # checked before the data and the first run load
        if not (run / "transformer").is_dir():
            p.error(f"{run} is not a stage-2 output folder (it has no transformer/): point it at one.")
    try:
        stage1s = {str(run): stage1_model_of_run(run, args.vqvae) for run in runs}
    except FileNotFoundError as err:
        p.error(str(err))
    if len(set(stage1s.values())) > 1:
        p.error(f"the runs were trained on different stage-1 models ({stage1s}): use runs of one.")

    held = load_heldout_run(args, p.error)
    models, tokenizers = [held.model], [held.tokenizer]
    for run in runs[1:]:
        model, layout = load_transformer(run / "transformer")
        if (layout.grid_h, layout.grid_w, layout.codebook_size) != (
            held.layout.grid_h,
            held.layout.grid_w,
            held.layout.codebook_size,
        ):
            p.error(f"--also {run} samples another code grid than --run {held.run}.")
        models.append(model.to(held.device))
        tokenizers.append(load_caption_tokenizer(run / "tokenizer"))
    layout, vqvae, captions = held.layout, held.vqvae, held.captions
    n, C = len(captions), args.candidates
    reranker = ClipReranker(args.rerank_clip, device=held.device)

    def score(images) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(right style (n,), rank (n,), CLIP score (n,)) of one image per caption."""
        pixels = torch.stack([pil_to_tensor(image) for image in images])  # (n, 3, H, W)
        right, rank = style_and_rank(pixels, held.truths, held.others)
        return right, rank, reranker.score(images, captions)

    def draw(label: str, sample) -> dict[str, torch.Tensor]:
        """C candidates per caption from ``sample(seed)``: right style, rank, CLIP score, each (n, C)."""
        start, scored = time.perf_counter(), [score(sample(args.seed + k * n)) for k in range(C)]
        print(f"{label}: {C} candidates in {time.perf_counter() - start:.0f} s", flush=True)
        return {key: torch.stack([s[j] for s in scored], 1) for j, key in enumerate(KEYS)}

    drawn = {}
    for run, model, tokenizer in zip(runs, models, tokenizers):
        if str(run) in reused:
            drawn[str(run)] = {key: torch.tensor(values) for key, values in reused[str(run)].items()}
            print(f"{run}: {C} candidates from {args.reuse}", flush=True)
            continue
        drawn[str(run)] = draw(
            str(run),
            lambda seed, m=model, t=tokenizer: sample_images(
                m, layout, vqvae, t, captions, guidance_scale=args.guidance, seed=seed
            ),
        )
    if len(runs) > 1 and not args.no_product:
        drawn["product"] = draw(
            "product of experts",
            lambda seed: product_images(
                models, tokenizers, layout, vqvae, captions, args.guidance, seed, weights
            ),
        )
    pools = {}
    priors = [drawn[str(run)] for run in runs]
    if len(runs) > 1:
        if C % len(runs) == 0:  # as many candidates as one prior's pick, C/R of each
            pools[f"pooled {C}"] = first_of_each(priors, C // len(runs))
        pools[f"pooled {len(runs) * C}"] = first_of_each(priors, C)
    if "product" in drawn:
        pools[f"pooled {len(runs) * C} + product {C}"] = first_of_each([*priors, drawn["product"]], C)
        if C % 2 == 0:  # as many candidates as one prior's pick: half of each prior's, half the product's
            for run, prior in zip(runs, priors):
                pools[f"{run.name} {C // 2} + product {C // 2}"] = first_of_each(
                    [prior, drawn["product"]], C // 2
                )

    rows_of = torch.arange(n)

    def pick(d: dict[str, torch.Tensor], first: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(right style (n,), rank (n,)) of the re-ranker's pick among the ``first`` candidates (all: None)."""
        chosen = d["clip"][:, :first].argmax(1)  # (n,)
        return d["right"][rows_of, chosen], d["rank"][rows_of, chosen]

    def any_of(d: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Some candidate in the right style (n,), the best candidate's rank (n,): what a re-ranker could reach."""
        return d["right"].any(1), d["rank"].min(1).values

    prefixes = [C] if len(runs) > 1 else sorted({C >> j for j in range(3) if C >> j >= 2})
    columns: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # rule -> (right style (n,), rank (n,))
    anys: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, d in drawn.items():
        label = "product" if name == "product" else Path(name).name
        columns[f"{label}: one"] = (d["right"][:, 0], d["rank"][:, 0])
        for k in prefixes:
            columns[f"{label}: pick {k}"] = pick(d, k)
        anys[f"{label}: any {C}"] = any_of(d)
    for label, d in pools.items():
        columns[f"{label}: pick"] = pick(d)
        anys[f"{label}: any"] = any_of(d)
    columns.update(anys)

    table: dict[str, dict] = {}
    for group, mask in group_masks([row["category"] for row in held.rows]).items():
        table[group] = {"captions": int(mask.sum())}
        for rule, (right, rank) in columns.items():
            table[group][rule] = percentages(right[mask], rank[mask])
    print(
        f"\nHeld-out captions of {args.data}, guidance {args.guidance}; style accuracy / retrieval top-5, %"
    )
    for rule, (right, rank) in columns.items():
        s = percentages(right, rank)
        print(
            f"{rule:<40} {s['style_accuracy_pct']:5.1f} / {s['retrieval_top1_pct']:4.1f} / "
            f"{s['retrieval_top5_pct']:4.1f}   ({int((rank <= 5).sum())} of {n} in the top 5)"
        )
    print(
        format_group_table(table, [rule for rule in columns if rule.endswith("pick") or f"pick {C}" in rule])
    )
    candidates = {  # per source, per caption and candidate: so that other pools can be scored afterwards
        name: {key: d[key].tolist() for key in KEYS} for name, d in drawn.items()
    }
    report = {**vars(args), "runs": [str(r) for r in runs], "groups": table, "candidate_scores": candidates}
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
