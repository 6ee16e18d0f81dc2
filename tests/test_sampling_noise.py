"""Per-image randomness drawn ahead (stage2_transformer/noise.py) samples exactly what per-step multinomial did."""

from __future__ import annotations

import pytest
import torch

from stage2_transformer import SequenceLayout, TransformerConfig, build_transformer, sample_image_codes
from stage2_transformer import noise as noise_lib
from stage2_transformer.noise import NoiseStreams

LAYOUT = SequenceLayout(text_len=6, text_vocab_size=20, codebook_size=32, grid_h=3, grid_w=4, pad_id=0)


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _peaked_probs(steps: int, batch: int, k: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(steps, batch, k, generator=g)
    logits[:, :, k // 2 :] = float("-inf")  # a top-k cut: zero-probability codes must never be drawn
    return logits.softmax(-1)  # (steps, B, K)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("max_variates", [1 << 24, 2 * 3 * 32, 1])  # one draw, 2 steps per draw, 1 per draw
@pytest.mark.parametrize("threaded", [False, True])  # rows filled by one thread, or shared out over two
def test_streams_draw_what_multinomial_draws_and_leave_the_same_generator_states(
    monkeypatch, two_threads, max_variates, threaded
):
    monkeypatch.setattr(noise_lib, "MAX_BUFFERED_VARIATES", max_variates)
    monkeypatch.setattr(noise_lib, "PARALLEL_DRAW_MIN_VARIATES", 1 if threaded else 1 << 30)
    steps, batch, k = 7, 3, 32
    probs = _peaked_probs(steps, batch, k)
    reference_gens, stream_gens = _gens([5, 6, 7]), _gens([5, 6, 7])
    streams = NoiseStreams(stream_gens, num_steps=steps)
    for step in range(steps):
        expected = torch.cat(
            [
                torch.multinomial(probs[step, b : b + 1], 1, generator=g)[0]
                for b, g in enumerate(reference_gens)
            ]
        )  # (B,)
        got = streams.sample(probs[step])
        assert torch.equal(got, expected)
        assert (got < k // 2).all()
    for a, b in zip(reference_gens, stream_gens):  # nothing drawn beyond what multinomial drew
        assert torch.equal(a.get_state(), b.get_state())
    with pytest.raises(RuntimeError, match="more draws"):
        streams.sample(probs[0])


def test_streams_refuse_bad_probabilities_and_cuda_style_inputs():
    streams = NoiseStreams(_gens([1, 2]), num_steps=2)
    with pytest.raises(ValueError, match="nan"):
        streams.sample(torch.tensor([[0.5, float("nan")], [0.5, 0.5]]))
    assert not NoiseStreams.supports(torch.Generator())  # one generator for the batch: multinomial's own path
    assert not NoiseStreams.supports(None)
    with pytest.raises(ValueError, match="CPU torch.Generator"):
        NoiseStreams([torch.Generator(), "seed"], num_steps=1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"guidance_scale": 3.0, "top_k": 8},
        {"temperature": 0.7, "top_p": 0.9},
        {"guidance_scale": 2.0, "prefix_codes": torch.randint(0, 32, (4, 1, 4), generator=torch.Generator())},
        {  # region editing: fixed codes between sampled ones
            "fixed_codes": torch.randint(0, 32, (4, 12), generator=torch.Generator()),
            "sample_mask": torch.tensor([0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0], dtype=torch.bool),
        },
    ],
)
def test_sampler_codes_and_generator_states_unchanged_by_drawing_ahead(monkeypatch, kwargs):
    """The whole sampler, per-image CPU generators: drawn ahead vs the per-sample multinomial calls."""
    torch.manual_seed(0)
    model = build_transformer(
        TransformerConfig(hidden_size=32, num_layers=2, num_heads=2, initializer_range=0.3), LAYOUT
    ).eval()
    text = torch.randint(1, LAYOUT.text_vocab_size, (4, LAYOUT.text_len), generator=torch.Generator())
    ahead_gens, per_step_gens = _gens(range(4)), _gens(range(4))
    ahead = sample_image_codes(model, LAYOUT, text, generator=ahead_gens, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(NoiseStreams, "supports", staticmethod(lambda generators: False))  # the old path
        per_step = sample_image_codes(model, LAYOUT, text, generator=per_step_gens, **kwargs)
    assert torch.equal(ahead, per_step)
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(ahead_gens, per_step_gens))
