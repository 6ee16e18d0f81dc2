"""Seeds: one ``torch.Generator`` per image, so an image depends on its seed alone.

Image ``j`` of a call (prompt-major order) samples from its own generator seeded from ``(seed, j)``, so an
image never depends on ``batch_size`` or on the other prompts of the call. With a list of seeds (one per
prompt) image ``r`` of prompt ``i`` is seeded from ``(seed[i], r)``: the images of a prompt are then the
same whether it is sampled alone or batched with others.
"""

from __future__ import annotations

import secrets

import numpy as np

from minidalle.arguments import check_int
from minidalle.errors import ArgumentError

MAX_SEED = 2**63 - 1
RANDOM_SEEDS_BELOW = 2**31  # drawn seeds stay short enough to show and type back in a UI


def draw_seed() -> int:
    return secrets.randbelow(RANDOM_SEEDS_BELOW)


def check_seed(seed, num_prompts: int) -> int | list[int]:
    """An integer, one integer per prompt, or None (drawn here, so the output can report it)."""
    if seed is None:
        return draw_seed()
    if isinstance(seed, (list, tuple)):
        if len(seed) != num_prompts:
            raise ArgumentError(
                f"seed must be one integer or a list with one integer per prompt ({num_prompts}); "
                f"got a list of {len(seed)}."
            )
        return [check_int(f"seed[{i}]", s, 0, MAX_SEED) for i, s in enumerate(seed)]
    return check_int("seed", seed, 0, MAX_SEED)


def image_seed(seed: int | list[int], per_prompt: int, j: int) -> int:
    """The generator seed of image ``j`` of a call (``per_prompt`` images per prompt)."""
    if isinstance(seed, list):
        return mix(seed[j // per_prompt], j % per_prompt)
    return mix(seed, j)


def mix(seed: int, index: int) -> int:
    """A 63-bit generator seed for stream ``index`` of ``seed`` (distinct streams)."""
    words = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])
