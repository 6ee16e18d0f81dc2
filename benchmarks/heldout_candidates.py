"""How much can choosing among samples do for the held-out emoji score? Several samples per caption, by category.

    python benchmarks/heldout_candidates.py --run outputs/stage2_emoji32 --data data/emoji32 \\
        [--candidates 16] [--guidance 3] [--negative_scale 32] [--negative_candidates] [--clip FOLDER] \\
        [--seed 1234] [--out benchmarks/results/heldout_candidates.json]

For each held-out (emoji, style) caption of an emoji data folder (``scripts/get_emoji.sh``), the stage-2
run draws ``--candidates`` samples (candidate k of caption i has seed ``seed + k * n + i``, so candidate
0 is the sample the evaluate command scores with the same seed and guidance, at temperature 1 with no
top-k or top-p, as in the emoji configs) and reports, per group of emoji categories, style accuracy /
retrieval top-5 (``stage2_transformer/heldout_style.py``) of:

- **first**: candidate 0, no choosing;
- **negative style**: one sample whose guidance also steers away from the caption naming the other
  style (the evaluate command's ``negative_*``);
- **all candidates**: the mean over every candidate, what one random sample scores, with less noise;
- **prior's pick**: the candidate the prior itself finds most specific to the caption against that
  negative caption, largest log p(x | caption) - log p(x | negative): a re-ranker with no other model;
- **CLIP's pick** (with ``--clip FOLDER``, a re-ranker from ``reranker/train.py``): the candidate it
  matches best to the caption, as the pipeline's ``--rerank-clip`` and the evaluate command's
  ``--rerank_clip`` keep it;
- **any candidate**: the share of captions for which at least one candidate is in the right style (or
  has the true image in its top 5): the most that any re-ranker choosing among these samples could reach.

With ``--negative_candidates`` every candidate is drawn as the negative-style sample is (candidate 0 is
then that sample), so the prior's pick and "any candidate" choose among samples steered away from the
other style.

Groups: *families* (flags, people and body, smileys: many emoji drawn to one pattern, so the other style
of one is the pattern applied to it), *one-offs* (food and drink, animals and nature, activities,
objects: each emoji its own drawing), *other* (symbols, travel and places), then *all*.
Prints a table and writes JSON: the table and, per caption, candidate 0's and the negative sample's
scores and pixel MSE to the true image, and the prior's pick. On the 8x8 emoji prior 16 candidates take
about 3 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks.heldout_run import add_heldout_arguments, load_heldout_run, write_report  # noqa: E402
from minidalle.errors import ModelFolderError  # noqa: E402
from minidalle.pixels import pil_to_tensor  # noqa: E402
from pipeline.rerank import ClipReranker  # noqa: E402
from reranker.folder import check_clip_folder  # noqa: E402
from stage2_transformer.evaluation import sample_images  # noqa: E402
from stage2_transformer.heldout_style import (  # noqa: E402
    format_group_table,
    group_masks,
    percentages,
    style_and_rank,
)
from stage2_transformer.sampling import image_token_log_likelihood  # noqa: E402
from stage2_transformer.tokenizer import encode_captions  # noqa: E402

RULES = ("first", "negative style", "all candidates", "prior's pick", "any candidate")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_heldout_arguments(p, "heldout_candidates")
    p.add_argument("--candidates", type=int, default=16)
    p.add_argument(
        "--negative_candidates",
        action="store_true",
        help="draw every candidate with guidance against the other style's caption",
    )
    p.add_argument(
        "--clip",
        default=None,
        help='a CLIP folder (pipeline/rerank.py): adds the rule "CLIP\'s pick", the candidate it matches best',
    )
    args = p.parse_args(argv)
    if args.candidates < 1:
        p.error(f"--candidates must be at least 1, got {args.candidates}.")
    if args.clip is not None:
        try:
            check_clip_folder(args.clip, "--clip")  # now, not after the run and the data load
        except ModelFolderError as e:
            p.error(str(e))

    held = load_heldout_run(args, p.error)
    run, device = held.run, held.device
    model, layout, vqvae, tokenizer = held.model, held.layout, held.vqvae, held.tokenizer
    rows, truths, others, captions, negatives = (
        held.rows,
        held.truths,
        held.others,
        held.captions,
        held.negatives,
    )
    n = len(captions)
    settings = dict(guidance_scale=args.guidance)
    candidate_settings = (
        dict(negative_captions=negatives, negative_scale=args.negative_scale)
        if args.negative_candidates
        else {}
    )

    def mse_to_truth(pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - truths).square().flatten(1).mean(1)  # (n,): sample i to its own true image

    start = time.perf_counter()
    reranker = None if args.clip is None else ClipReranker(args.clip, device=device)
    right_style, ranks, contrast, clip_scores = [], [], [], []  # each (n,) per candidate
    caption_ids = encode_captions(tokenizer, captions, layout.text_len, warn=False)  # (n, T)
    negative_ids = encode_captions(tokenizer, negatives, layout.text_len, warn=False)  # (n, T)
    for k in range(args.candidates):
        images, codes = sample_images(
            model,
            layout,
            vqvae,
            tokenizer,
            captions,
            seed=args.seed + k * n,
            return_codes=True,
            **settings,
            **candidate_settings,
        )
        pixels = torch.stack([pil_to_tensor(image) for image in images])  # (n, 3, H, W)
        if reranker is not None:
            clip_scores.append(reranker.score(images, captions))  # (n,)
        right, rank = style_and_rank(pixels, truths, others)
        right_style.append(right)
        ranks.append(rank)
        if k == 0:
            first_mse = mse_to_truth(pixels)
        flat = codes.flatten(1)  # (n, h*w)
        contrast.append(
            image_token_log_likelihood(model, layout, caption_ids, flat, batch_size=64).cpu()
            - image_token_log_likelihood(model, layout, negative_ids, flat, batch_size=64).cpu()
        )
    right_style, ranks, contrast = (
        torch.stack(right_style, 1),
        torch.stack(ranks, 1),
        torch.stack(contrast, 1),
    )
    negative_images = sample_images(
        model,
        layout,
        vqvae,
        tokenizer,
        captions,
        seed=args.seed,
        negative_captions=negatives,
        negative_scale=args.negative_scale,
        **settings,
    )
    negative_pixels = torch.stack([pil_to_tensor(image) for image in negative_images])  # (n, 3, H, W)
    negative_right, negative_rank = style_and_rank(negative_pixels, truths, others)
    negative_mse = mse_to_truth(negative_pixels)
    seconds = time.perf_counter() - start

    picks = {"prior's pick": contrast.argmax(1)}  # each (n,): the chosen candidate of every caption
    if clip_scores:
        picks["CLIP's pick"] = torch.stack(clip_scores, 1).argmax(1)
    rows_of = torch.arange(n)
    table: dict[str, dict] = {}
    for name, mask in group_masks([row["category"] for row in rows]).items():  # mask: (n,)
        scores = {
            "first": percentages(right_style[mask, 0], ranks[mask, 0]),
            "negative style": percentages(negative_right[mask], negative_rank[mask]),
            "all candidates": percentages(right_style[mask].flatten(), ranks[mask].flatten()),
            **{
                rule: percentages(right_style[rows_of, pick][mask], ranks[rows_of, pick][mask])
                for rule, pick in picks.items()
            },
            # some candidate in the right style; some candidate's rank within k iff the best rank is
            "any candidate": percentages(right_style[mask].any(1), ranks[mask].min(1).values),
        }
        table[name] = {"captions": int(mask.sum()), **scores}

    steered = ", each steered away from the other style" if args.negative_candidates else ""
    print(f"\nHeld-out captions of {args.data}, {args.candidates} candidates each{steered}, run {run}")
    print("style accuracy / retrieval top-5, %")
    print(format_group_table(table, (*RULES[:3], *picks, RULES[-1])))  # picks: the prior's, CLIP's
    print(f"sampling and scoring: {seconds:.0f} s")
    per_caption = [
        {
            "caption": captions[i],
            "category": rows[i]["category"],
            "first": {
                "right_style": bool(right_style[i, 0]),
                "rank": int(ranks[i, 0]),
                "mse": float(first_mse[i]),
            },
            "negative style": {
                "right_style": bool(negative_right[i]),
                "rank": int(negative_rank[i]),
                "mse": float(negative_mse[i]),
            },
            **{rule: int(pick[i]) for rule, pick in picks.items()},
        }
        for i in range(n)
    ]  # mse: pixel MSE to the true image, which tells two samples apart where the scores cannot
    report = {**vars(args), "seconds": seconds, "groups": table, "captions": per_caption}
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
