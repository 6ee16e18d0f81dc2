"""Which training rows make up each contrastive batch.

A contrastive loss learns only the differences that occur inside a batch. With uniform batches of 256
from 3,431 emoji pictures, the same emoji in its other style shares a batch 7% of the time, so the
re-ranker hardly has to read the style word. Drawing part of each batch as whole groups (rows that share
a value, e.g. one emoji in both styles) makes that difference occur in every batch.

A batch depends only on (seed, step, process), so a resumed run draws the batches an uninterrupted one would.
"""

from __future__ import annotations

import torch

from minidalle.trainer import step_generator


def groups_of(values: list) -> list[list[int]]:
    """Rows grouped by value: the groups of two or more rows (a None value groups nothing)."""
    rows: dict = {}
    for index, value in enumerate(values):
        if value is not None:
            rows.setdefault(value, []).append(index)
    return [members for members in rows.values() if len(members) > 1]


class ContrastiveBatches:
    """``batch(step)``: ``size`` distinct row indices, about ``grouped_fraction`` of them whole groups."""

    def __init__(
        self,
        num_rows: int,
        size: int,
        seed: int,
        groups: list[list[int]] | None = None,
        grouped_fraction: float = 0.0,
        process_index: int = 0,
    ):
        if size > num_rows:
            raise ValueError(f"A batch of {size} needs at least {size} training rows, there are {num_rows}.")
        self.num_rows, self.size, self.seed = num_rows, size, seed
        self.groups = groups or []
        self.grouped_fraction = grouped_fraction if self.groups else 0.0
        self.process_index = process_index

    def batch(self, step: int) -> list[int]:
        generator = step_generator(self.seed, step, salt=1 + self.process_index)
        chosen: list[int] = []
        quota = round(self.size * self.grouped_fraction)
        for g in torch.randperm(len(self.groups), generator=generator).tolist():
            members = self.groups[g]
            if len(chosen) + len(members) > quota:
                break
            chosen += members
        taken = set(chosen)
        for row in torch.randperm(self.num_rows, generator=generator).tolist():
            if len(chosen) == self.size:
                break
            if row not in taken:
                chosen.append(row)
        return chosen
