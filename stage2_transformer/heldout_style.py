"""Held-out score for real images: does the prior draw a known emoji in a known style it never saw paired?

The data (``minidalle.emoji_data``) hold out (emoji, style) pairs whose emoji is in training in the
other style. For each held-out caption one image is sampled and compared in pixels, no downloaded
model needed:

* ``style_accuracy_pct``: the sample is nearer (pixel MSE) to the true held-out image than to the
  same emoji's training image in the other style; chance is 50%. It tells whether the caption's style
  word moved the picture towards the right style *for that emoji*. It cannot tell whether the picture
  is good: a blurry average of both styles that leans the right way scores as well as a sharp drawing.
  Nor does it reward redrawing the emoji from its other style: on one-off emoji (food, animals) the two
  styles' drawings share little, and drawings made from the other style's picture with what the
  two-style training pairs show fall below chance (``benchmarks/heldout_style_references.py``). It asks
  for the style's *drawing* of the emoji, not its look: whether the sample looks like the asked style
  (palette, outlines, shading) is what ``benchmarks/heldout_style_classifier.py`` reads.
* ``retrieval_top1_pct`` / ``retrieval_top5_pct``: the true image's rank among all held-out images
  by distance to the sample. It tells whether the sample is specific to its emoji (shape, colours);
  pixel MSE rewards matching layout and colour, so it cannot tell "right object, shifted or
  restyled" from "wrong object of similar colours", and its chance level falls with the number of
  held-out images (1/n and 5/n).
* ``diversity_mse``: mean pairwise MSE among ``diversity_samples`` samples of one caption (averaged
  over captions), beside ``heldout_pairwise_mse``, the mean MSE between different held-out images.
  Near zero means guidance collapsed the samples into copies; it cannot tell good variety from noise.
* ``train_pairs_*``: the same scores for samples of the *training* captions of the same emoji (the
  other style, which the prior was trained on), with the held-out image as the "other style". It tells
  how well the prior draws what it has seen, which bounds what it can carry over to a pairing it has
  not; it cannot tell generalisation, only memory.
* ``negative_*`` (with ``heldout_negative_style``): the same scores for samples of the same
  captions and seeds whose guidance also steers away from a negative prompt, the caption with the
  other style's name ("penguin, noto style" against "penguin, twemoji style"). It tells how much of the
  style a user gets by naming the style they do not want; the negative caption is extra input, so
  these scores do not replace the plain ones.
* ``reranked_*`` (with a re-ranker, the evaluate command's ``rerank_clip``): the same scores for the
  sample a CLIP re-ranker (``reranker/train.py``) picks among ``rerank_candidates`` per caption, the
  first of them being the plain sample. It tells what DALL-E's draw-many-keep-the-best adds on top of
  the prior; the re-ranker learnt from the same training pictures, so it cannot supply a style drawing
  neither model has seen, only choose among what the prior draws.
* Bits per image of the held-out images with and without the caption come from ``evaluate_prior``
  (``bits_ratio_caption_to_empty``): how much the caption helps the likelihood, with no sampling;
  it cannot tell whether samples look right.
* ``category_<name>_*`` (when the data have a ``category`` column): the captions, style accuracy and
  retrieval top-5 of the plain samples within each emoji category, ranks still among all held-out
  images. It tells which kinds of picture the prior carries to the other style: families drawn to one
  pattern (flags, faces, hands) against one-off objects (food, animals), which the prior can only
  draw the way it saw them; a category of a few captions says little.

Distances are mean squared errors of pixels in [-1, 1] at the stage-1 model's resolution.
"""

from __future__ import annotations

import itertools
import re

import torch
from PIL import Image

from minidalle.images import captioned_grid
from minidalle.pixels import pil_to_tensor, preprocess, tensor_to_pil
from stage2_transformer.evaluation import sample_images, sample_reranked

# Emoji categories by how the other style of an emoji relates to it: *families* are many emoji drawn to one
# pattern (the other style of one is the pattern applied to it), *one-offs* each their own drawing; the
# rest (symbols, travel and places) are "other".
CATEGORY_GROUPS = {
    "families": ("Flags", "People & Body", "Smileys & Emotion"),
    "one-offs": ("Food & Drink", "Animals & Nature", "Activities", "Objects"),
}


def category_group(category: str) -> str:
    """The group of ``CATEGORY_GROUPS`` an emoji category belongs to, else "other"."""
    return next((name for name, members in CATEGORY_GROUPS.items() if category in members), "other")


def label_masks(labels: list[str]) -> dict[str, torch.Tensor]:
    """Per distinct label, in sorted order: which captions (n,) bool carry it."""
    return {label: torch.tensor([other == label for other in labels]) for label in sorted(set(labels))}


def group_masks(categories: list[str]) -> dict[str, torch.Tensor]:
    """Per group of ``CATEGORY_GROUPS``, then "other" and "all": which captions (n,) bool belong to it;
    groups with no caption are left out."""
    by_group = label_masks([category_group(category) for category in categories])
    masks = {name: by_group[name] for name in [*CATEGORY_GROUPS, "other"] if name in by_group}
    if categories:
        masks["all"] = torch.ones(len(categories), dtype=torch.bool)
    return masks


def format_group_table(table: dict[str, dict], columns: list[str] | tuple[str, ...]) -> str:
    """Lines of "style accuracy / retrieval top-5" per group (rows) and column, from
    ``table[group] = {"captions": n, column: percentages(...), ...}``."""
    width = max(15, *(len(c) for c in columns))
    lines = [f"{'group':<10} {'captions':>8}  " + "  ".join(f"{c:>{width}}" for c in columns)]
    for name, row in table.items():
        cells = [
            f"{row[c]['style_accuracy_pct']:5.1f} / {row[c]['retrieval_top5_pct']:4.1f}" for c in columns
        ]
        lines.append(f"{name:<10} {row['captions']:>8}  " + "  ".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


def pixel_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error between every image of ``a`` (n, 3, H, W) and every image of ``b`` (m, 3, H, W)."""
    return torch.cdist(a.flatten(1), b.flatten(1)).square() / a[0].numel()  # (n, m)


def style_and_rank(
    samples: torch.Tensor, truths: torch.Tensor, other_styles: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per caption: is the sample in the right style (n,) bool, and the true image's rank (n,) among all
    ``truths`` by distance to the sample (1 = nearest); all inputs (n, 3, H, W), row i belongs together.

    A tie counts against the sample: ``samples`` equal to both images are in the wrong style.
    """
    to_truths = pixel_mse(samples, truths)  # (n, n): sample i to held-out image j
    to_own_truth = to_truths.diagonal()  # (n,)
    to_other_style = (samples - other_styles).square().flatten(1).mean(1)  # (n,)
    rank = 1 + (to_truths < to_own_truth[:, None]).sum(1)  # (n,)
    return to_own_truth < to_other_style, rank


def percentages(right_style: torch.Tensor, rank: torch.Tensor) -> dict[str, float]:
    """Style accuracy and retrieval top-1/top-5 (percentages) of the captions given."""
    return {
        "style_accuracy_pct": 100.0 * right_style.float().mean().item(),
        "retrieval_top1_pct": 100.0 * (rank <= 1).float().mean().item(),
        "retrieval_top5_pct": 100.0 * (rank <= 5).float().mean().item(),
    }


def scores_by_group(right_style: torch.Tensor, rank: torch.Tensor, groups: list[str]) -> dict[str, float]:
    """Style accuracy and retrieval top-5 within each group (an emoji category), from ``style_and_rank``'s
    per-caption flags and ranks (so ranks stay among all held-out images): keys ``<group>_captions``,
    ``<group>_style_accuracy_pct``, ``<group>_retrieval_top5_pct``, the group named in lower case with runs
    of other characters as one ``_`` ("Food & Drink" -> food_drink).
    """
    scores: dict[str, float] = {}
    for group, rows in label_masks(groups).items():  # rows: (n,)
        name = re.sub(r"[^a-z0-9]+", "_", group.lower()).strip("_")
        group_scores = percentages(right_style[rows], rank[rows])
        scores[f"{name}_captions"] = int(rows.sum())
        scores[f"{name}_style_accuracy_pct"] = group_scores["style_accuracy_pct"]
        scores[f"{name}_retrieval_top5_pct"] = group_scores["retrieval_top5_pct"]
    return scores


def mean_pairwise_mse(groups: torch.Tensor) -> float:
    """Mean MSE over the pairs within each group, averaged over groups; ``groups`` is (g, k, 3, H, W), k >= 2."""
    pairs = list(itertools.combinations(range(groups.shape[1]), 2))
    first, second = groups[:, [i for i, _ in pairs]], groups[:, [j for _, j in pairs]]  # (g, pairs, 3, H, W)
    return (first - second).square().flatten(2).mean().item()


def other_style_rows(heldout_rows, train_rows) -> list:
    """For each held-out row, the training row of the same emoji (``unified``) in the other style."""
    by_emoji: dict[str, list] = {}
    for row in train_rows:
        by_emoji.setdefault(row["unified"], []).append(row)
    others = []
    for row in heldout_rows:
        candidates = [r for r in by_emoji.get(row["unified"], []) if r["style"] != row["style"]]
        if not candidates:
            raise ValueError(
                f"Held-out emoji {row['unified']} ({row['style']}) has no training image in another style: "
                "the held-out style score needs data built by minidalle.emoji_data (columns unified, style)."
            )
        others.append(candidates[0])
    return others


def heldout_pairs(eval_hf, train_hf, resolution: int, max_captions: int | None = None):
    """The first ``max_captions`` held-out rows (all if None), each one's training row of the same emoji in
    the other style, and both as pictures: ``(rows, other_rows, truths, others)``, pictures (n, 3, H, W)."""
    check_heldout_columns(eval_hf)
    count = len(eval_hf) if max_captions is None else min(max_captions, len(eval_hf))
    rows = list(eval_hf.select(range(count)))
    other_rows = other_style_rows(rows, train_hf.select_columns(["image", "text", "unified", "style"]))
    truths = torch.stack([preprocess(row["image"], resolution) for row in rows])  # (n, 3, H, W)
    others = torch.stack([preprocess(row["image"], resolution) for row in other_rows])  # (n, 3, H, W)
    return rows, other_rows, truths, others


def negative_style_caption(caption: str, style: str, other_style: str) -> str:
    """The caption with its style's name replaced by the other style's: "penguin, noto style" ->
    "penguin, twemoji style", the negative prompt that steers a sample away from the other style."""
    words = re.split(r"(\W+)", caption)  # words and the separators between them, in order
    if style not in words:
        raise ValueError(f"The caption {caption!r} does not name its style {style!r} as a word.")
    return "".join(other_style if word == style else word for word in words)


def check_heldout_columns(eval_hf) -> None:
    """Fail before any sampling if the data are not the emoji folders this score needs."""
    for column in ("unified", "style"):
        if column not in eval_hf.column_names:
            raise ValueError(
                f"The eval split has no {column!r} column: --heldout_style needs data built by "
                "minidalle.emoji_data (bash scripts/get_emoji.sh)."
            )


def score_heldout_styles(
    model, layout, vqvae, tokenizer, eval_hf, train_hf, cfg, diversity_samples: int = 4, reranker=None
) -> tuple[dict[str, float], list[Image.Image]]:
    """Sample the held-out captions, score them; returns the metrics and the samples (PIL, one per caption).

    ``cfg`` is the evaluate command's config: ``sampling``, ``seed``, ``num_samples`` (captions scored)
    and ``diversity_captions`` (captions sampled ``diversity_samples`` times each). With a ``reranker``
    (``pipeline.rerank.ClipReranker``) the held-out captions are also scored as the re-ranker's pick of
    ``cfg.rerank_candidates`` samples each (``reranked_*``), and those picks are the samples returned.
    """
    heldout_rows, other_rows, truths, others = heldout_pairs(
        eval_hf, train_hf, vqvae.config.resolution, cfg.num_samples
    )  # truths, others: (n, 3, H, W)
    captions = [row["text"] for row in heldout_rows]
    negatives = None  # built before any sampling: a caption that does not name its style fails first
    if cfg.heldout_negative_style:
        negatives = [
            negative_style_caption(caption, row["style"], other["style"])
            for caption, row, other in zip(captions, heldout_rows, other_rows)
        ]
    settings = dict(
        guidance_scale=cfg.sampling.guidance_scale,
        temperature=cfg.sampling.temperature,
        top_k=cfg.sampling.top_k,
        top_p=cfg.sampling.top_p,
    )
    metrics: dict[str, float] = {}

    def sample_and_score(
        prompts: list[str], near: torch.Tensor, far: torch.Tensor, prefix: str = "", **extra
    ):
        """Sample ``prompts`` (seeds cfg.seed + index) and score them: nearer ``near`` than ``far`` is right.
        Returns the samples (PIL) and ``style_and_rank``'s per-caption flags and ranks."""
        images = sample_images(model, layout, vqvae, tokenizer, prompts, seed=cfg.seed, **settings, **extra)
        pixels = torch.stack([pil_to_tensor(image) for image in images])  # (n, 3, H, W)
        right_style, rank = style_and_rank(pixels, near, far)
        for key, value in percentages(right_style, rank).items():
            metrics[prefix + key] = value
        return images, right_style, rank

    samples, right_style, rank = sample_and_score(captions, truths, others)
    if reranker is not None:  # the same first candidates, and the re-ranker's pick among more
        reranked, _ = sample_reranked(
            model,
            layout,
            vqvae,
            tokenizer,
            captions,
            reranker,
            cfg.rerank_candidates,
            seed=cfg.seed,
            first=samples,
            **settings,
        )
        pixels = torch.stack([pil_to_tensor(image) for image in reranked])  # (n, 3, H, W)
        reranked_style, reranked_rank = style_and_rank(pixels, truths, others)
        metrics.update(
            {"reranked_" + key: value for key, value in percentages(reranked_style, reranked_rank).items()}
        )
        metrics["reranked_candidates"] = cfg.rerank_candidates
        samples = reranked  # the grid shows what the pipeline would keep
    if "category" in eval_hf.column_names:
        categories = [row["category"] for row in heldout_rows]
        by_category = scores_by_group(right_style, rank, categories)
        metrics.update({f"category_{key}": value for key, value in by_category.items()})
    # The same scores on the training pairs of these emoji, roles swapped: how well the prior draws what
    # it was trained on bounds what it can carry over to the held-out style.
    sample_and_score([row["text"] for row in other_rows], others, truths, "train_pairs_")
    if negatives is not None:  # the same captions and seeds, guided away from the other style's name
        sample_and_score(
            captions,
            truths,
            others,
            "negative_",
            negative_captions=negatives,
            negative_scale=cfg.negative_scale,
        )
    if cfg.diversity_captions > 0 and diversity_samples > 1:
        repeated = [c for c in captions[: cfg.diversity_captions] for _ in range(diversity_samples)]
        groups = sample_images(
            model, layout, vqvae, tokenizer, repeated, seed=cfg.seed + len(captions), **settings
        )
        grouped = torch.stack([pil_to_tensor(image) for image in groups]).unflatten(
            0, (-1, diversity_samples)
        )
        metrics["diversity_mse"] = mean_pairwise_mse(grouped)  # grouped: (g, k, 3, H, W)
    distances = pixel_mse(truths, truths)  # (n, n)
    metrics["heldout_pairwise_mse"] = distances.sum().item() / max(1, len(truths) * (len(truths) - 1))
    metrics["heldout_captions"] = len(captions)
    return metrics, samples


def heldout_grid(samples: list[Image.Image], eval_hf, count: int, columns: int = 8) -> Image.Image:
    """Held-out samples, each beside its true image: tiles captioned 'sample: <caption>' and 'true'."""
    tiles, captions = [], []
    for sample, row in zip(samples[:count], eval_hf.select(range(min(count, len(samples))))):
        tiles += [sample, tensor_to_pil(preprocess(row["image"], sample.width))[0]]
        captions += [f"sample: {row['text']}", "true"]
    return captioned_grid(tiles, captions, columns=columns)
