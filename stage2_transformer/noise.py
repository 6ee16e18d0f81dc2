"""Each sample's own randomness, drawn ahead of the decoding loop: the same codes, far fewer calls.

``torch.multinomial(p, 1, generator=g)`` draws one Exp(1) variate ``q`` per category from ``g`` and
returns ``argmax(p / q)`` (the exponential form of the Gumbel-max trick). With one generator per image,
so that an image depends on its seed alone, the sampler used to make B such calls at every step: at
batch 200 on a CPU that was about an eighth of a sampling run. The variates do not depend on ``p``, so
``NoiseStreams`` draws each generator's variates for many steps in one call and picks the codes of the
whole batch with one division and one argmax.

On CPU generators the variates of one call of (steps, K) are those of ``steps`` calls of K, in order, so
the codes and every generator's state afterwards equal the per-sample ``multinomial`` calls bit for bit
(``tests/test_sampling_noise.py`` checks both against ``torch.multinomial`` itself). CUDA generators
advance per call rather than per variate, so sampling keeps the per-sample calls for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

# Variates held at once: 2**24 float32 is 64 MiB (at batch 200 and 512 codes, 163 steps per draw).
MAX_BUFFERED_VARIATES = 1 << 24
# From this many variates a draw, threads fill the rows (at batch 200 x 64 steps x 512 codes, 124 -> 64 ms).
PARALLEL_DRAW_MIN_VARIATES = 1 << 18


class NoiseStreams:
    """Exp(1) variates for ``num_steps`` draws from each of B CPU generators, ``sample(probs)`` once per step.

    Exactly ``num_steps * K`` variates are taken from each generator over the stream's life, as many as
    the per-sample calls would take, so a generator used after sampling continues where it would have.
    """

    def __init__(self, generators: Sequence[torch.Generator], num_steps: int):
        if not self.supports(generators):
            raise ValueError("NoiseStreams needs a list of CPU torch.Generator objects, one per sample.")
        self.generators = list(generators)
        self.steps_left = num_steps  # draws not yet taken from the generators
        self.buffer = torch.empty(len(self.generators), 0, 0)  # (B, steps, K): none drawn yet
        self.next_step = 0

    @staticmethod
    def supports(generators) -> bool:
        return isinstance(generators, list) and all(
            isinstance(g, torch.Generator) and g.device.type == "cpu" for g in generators
        )

    def sample(self, probs: torch.Tensor) -> torch.Tensor:
        """One code per row of ``probs`` (B, K), float32 and normalised -> (B,), on ``probs``' device."""
        if self.next_step == self.buffer.shape[1]:
            self._draw(probs.shape[-1])
        noise = self.buffer[:, self.next_step]  # (B, K)
        self.next_step += 1
        cpu_probs = probs.to(noise.device)
        if not (cpu_probs >= 0).all():  # nan fails the comparison too; a softmax holds no inf
            raise ValueError("The sampling probabilities hold nan or a negative value.")
        return (cpu_probs / noise).argmax(dim=-1).to(probs.device)  # (B,)

    def _draw(self, num_categories: int) -> None:
        batch = len(self.generators)
        steps = min(self.steps_left, max(1, MAX_BUFFERED_VARIATES // (batch * num_categories)))
        if steps < 1:
            raise RuntimeError("NoiseStreams was asked for more draws than the num_steps it was built for.")
        self.buffer = torch.empty(batch, steps, num_categories)  # (B, steps, K) float32, as multinomial's
        rows = list(zip(self.buffer, self.generators))
        # One generator's variates come out one after another on one core; the images' streams are
        # independent, so the rows are shared out over torch's threads (2x faster on 2 cores, the same bits).
        workers = (
            min(torch.get_num_threads(), batch) if self.buffer.numel() >= PARALLEL_DRAW_MIN_VARIATES else 1
        )
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(_fill_rows, [rows[i::workers] for i in range(workers)]))
        else:
            _fill_rows(rows)
        self.steps_left -= steps
        self.next_step = 0


def _fill_rows(rows) -> None:
    for row, generator in rows:  # each generator used by one thread only, in row order
        row.exponential_(1.0, generator=generator)
