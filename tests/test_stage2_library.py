"""Stage-2 library: layout, caption tokenizer, loss, model save/load and sampling, on tiny random models."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from transformers import AutoTokenizer

from stage2_transformer import (
    KVDecoder,
    SequenceLayout,
    TransformerConfig,
    build_transformer,
    count_parameters,
    encode_captions,
    image_token_log_likelihood,
    load_caption_tokenizer,
    load_transformer,
    sample_image_codes,
    save_transformer,
    train_caption_tokenizer,
    weighted_lm_loss,
)
from stage2_transformer.tokenizer import CaptionTruncatedWarning

LAYOUT = SequenceLayout(text_len=8, text_vocab_size=20, codebook_size=16, grid_h=4, grid_w=4, pad_id=0)
T, N, K = LAYOUT.text_len, LAYOUT.num_image_tokens, LAYOUT.codebook_size
CAPTIONS = [
    "a red cat sitting on a blue mat",
    "two dogs playing in the snow",
    "a bowl of ramen with an egg",
    "a red car parked near a tree",
    "a small boat on a calm lake",
] * 4
WEIRD = [
    "🐱🚀 cat astronaut",
    "東京の夜景",
    "مرحبا بالعالم",
    "\x00\x07\t\n ctrl \u202e",
    "lone \ud800 surrogate",
    "",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # a large init range makes the tiny random model's predictions peaked and caption-dependent
    cfg = TransformerConfig(hidden_size=32, num_layers=2, num_heads=2, initializer_range=0.3)
    return build_transformer(cfg, LAYOUT).eval()


def _captions(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, LAYOUT.text_vocab_size, (batch, T), generator=g)  # (B, T)
    text[:, 5:] = LAYOUT.pad_id  # padded captions
    return text


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# ------------------------------------------------------------------------------------------------
# layout


def test_layout_ids_build_split_round_trip():
    assert (LAYOUT.image_offset, LAYOUT.boi_id, LAYOUT.vocab_size) == (20, 36, 37)
    assert (LAYOUT.num_image_tokens, LAYOUT.seq_len) == (16, 25)
    text = _captions(3)
    codes = torch.randint(0, K, (3, 4, 4))
    seq = LAYOUT.build(text, codes)  # (3, 25)
    assert seq.shape == (3, LAYOUT.seq_len) and seq.dtype == torch.long
    assert (seq[:, T] == LAYOUT.boi_id).all()
    assert ((seq[:, T + 1 :] >= LAYOUT.image_offset) & (seq[:, T + 1 :] < LAYOUT.boi_id)).all()
    assert torch.equal(LAYOUT.build(text, codes.reshape(3, -1)), seq)
    text2, codes2 = LAYOUT.split(seq)
    assert torch.equal(text2, text) and torch.equal(codes2, codes)
    empty = LAYOUT.empty_caption_ids(2)
    assert empty.shape == (2, T) and (empty == LAYOUT.pad_id).all()
    with pytest.raises(ValueError, match="codes values"):
        LAYOUT.build(text, codes + K)
    with pytest.raises(ValueError, match="shape"):
        LAYOUT.build(text[:, :5], codes)


def test_layout_save_load_and_validation(tmp_path):
    LAYOUT.save(tmp_path)
    assert SequenceLayout.load(tmp_path) == LAYOUT
    with pytest.raises(ValueError, match="pad_id"):
        SequenceLayout(8, 20, 16, 4, 4, pad_id=20)
    with pytest.raises(ValueError, match="grid_h"):
        SequenceLayout(8, 20, 16, 0, 4, 0)
    with pytest.raises(ValueError, match="integer"):
        SequenceLayout(8, 20, 16.0, 4, 4, 0)
    data = json.loads((tmp_path / "sequence_layout.json").read_text())
    data["seq_len"] = 99  # disagrees with the fields
    (tmp_path / "sequence_layout.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="seq_len"):
        SequenceLayout.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="sequence_layout.json"):
        SequenceLayout.load(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------
# tokenizer


def test_tokenizer_trains_saves_reloads_and_encodes_any_unicode(tmp_path):
    tok = train_caption_tokenizer(CAPTIONS, vocab_size=300, out_dir=tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    assert tok.pad_token_id == 0 and tok.convert_tokens_to_ids("<unk>") == 1
    assert 258 < len(tok) <= 300
    reloaded = load_caption_tokenizer(tmp_path)
    auto = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    ids = encode_captions(tok, CAPTIONS[:3] + WEIRD, text_len=32)  # (9, 32)
    assert ids.shape == (9, 32) and ids.dtype == torch.long
    assert ids.min() >= 0 and ids.max() < len(tok)
    assert torch.equal(encode_captions(reloaded, CAPTIONS[:3] + WEIRD, 32), ids)
    assert torch.equal(encode_captions(auto, CAPTIONS[:3] + WEIRD, 32), ids)
    assert (ids[len(CAPTIONS[:3]) + WEIRD.index("")] == tok.pad_token_id).all()  # empty caption = all PAD
    assert tok.decode(ids[0], skip_special_tokens=True) == CAPTIONS[0]
    assert tok.decode(ids[3], skip_special_tokens=True) == WEIRD[0]  # emoji survive byte-level BPE
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_caption_tokenizer(tmp_path / "empty")


def test_truncation_warns_with_count(tmp_path):
    tok = train_caption_tokenizer(CAPTIONS, vocab_size=300, out_dir=tmp_path)
    long_caption = "a red cat sitting on a blue mat near two dogs playing in the snow"
    n_tokens = len(tok(long_caption, add_special_tokens=False)["input_ids"])
    assert n_tokens > 6
    with pytest.warns(
        CaptionTruncatedWarning, match=rf"caption 1 .*cut {n_tokens - 6} of {n_tokens} tokens"
    ) as caught:
        ids = encode_captions(tok, ["a cat", long_caption], text_len=6)
    (cut,) = caught[0].message.cuts  # the same facts as fields
    assert (cut.index, cut.tokens_cut, cut.tokens) == (1, n_tokens - 6, n_tokens)
    assert torch.equal(ids[1], torch.tensor(tok(long_caption, add_special_tokens=False)["input_ids"][:6]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode_captions(tok, [long_caption], text_len=6, warn=False)
        encode_captions(tok, ["a cat"], text_len=6)


# ------------------------------------------------------------------------------------------------
# loss


def _loss_batch(batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    seq = LAYOUT.build(_captions(batch, seed), torch.randint(0, K, (batch, N), generator=g))  # (B, L)
    logits = torch.randn(batch, LAYOUT.seq_len, LAYOUT.vocab_size, generator=g)  # (B, L, V)
    return seq, logits


def test_loss_matches_hand_computation():
    seq, logits = _loss_batch()
    total, parts = weighted_lm_loss(logits, seq, LAYOUT, text_weight=0.25, image_weight=0.75)
    text_terms, image_terms = [], []
    for b in range(seq.shape[0]):
        for t in range(1, T):  # text token t from position t-1, text vocabulary only, PAD skipped
            if seq[b, t] != LAYOUT.pad_id:
                log_p = logits[b, t - 1, : LAYOUT.text_vocab_size].log_softmax(-1)
                text_terms.append(-log_p[seq[b, t]])
        for i in range(N):  # code i from position T+i, image codes only
            log_p = logits[b, T + i, LAYOUT.image_offset : LAYOUT.boi_id].log_softmax(-1)
            image_terms.append(-log_p[seq[b, T + 1 + i] - LAYOUT.image_offset])
    text_loss, image_loss = torch.stack(text_terms).mean(), torch.stack(image_terms).mean()
    assert torch.allclose(parts["text_loss"], text_loss, atol=1e-5)
    assert torch.allclose(parts["image_loss"], image_loss, atol=1e-5)
    assert torch.allclose(total, 0.25 * text_loss + 0.75 * image_loss, atol=1e-5)
    assert parts["text_tokens"] == len(text_terms)
    shifted, _ = weighted_lm_loss(logits[:, :-1], seq, LAYOUT, 0.25, 0.75)  # model fed seq[:, :-1]
    assert torch.allclose(shifted, total)


def test_loss_ignores_pad_targets_and_text_logits_at_image_positions():
    seq, logits = _loss_batch()
    total, parts = weighted_lm_loss(logits, seq, LAYOUT)
    changed = logits.clone()
    pad_target = seq[:, 1:T] == LAYOUT.pad_id  # (B, T-1): position t-1 predicts PAD
    changed[:, : T - 1][pad_target] += 10 * torch.randn(int(pad_target.sum()), LAYOUT.vocab_size)
    changed[:, T - 1] += 5.0  # predicts BOI: not in the loss
    changed[:, T:, : LAYOUT.image_offset] = 50.0  # text vocabulary at image positions
    changed[:, T:, LAYOUT.boi_id] = 50.0
    changed[:, -1] = torch.randn(LAYOUT.vocab_size)  # last position predicts nothing
    total2, parts2 = weighted_lm_loss(changed, seq, LAYOUT)
    assert torch.equal(total2, total)
    assert torch.equal(parts2["image_loss"], parts["image_loss"])
    assert torch.equal(parts2["text_loss"], parts["text_loss"])
    all_pad = LAYOUT.build(LAYOUT.empty_caption_ids(3), LAYOUT.split(seq)[1])  # dropped captions
    total3, parts3 = weighted_lm_loss(logits, all_pad, LAYOUT)
    assert parts3["text_loss"] == 0 and torch.isfinite(total3)


def test_loss_text_weight_zero_gives_zero_text_gradient():
    seq, logits = _loss_batch()
    logits.requires_grad_(True)
    total, parts = weighted_lm_loss(logits, seq, LAYOUT, text_weight=0.0, image_weight=1.0)
    total.backward()
    assert (logits.grad[:, :T] == 0).all()  # text positions (and the BOI prediction)
    assert (logits.grad[:, T:, : LAYOUT.image_offset] == 0).all()
    assert logits.grad[:, T : T + N, LAYOUT.image_offset : LAYOUT.boi_id].abs().sum() > 0
    assert torch.allclose(total, parts["image_loss"]) and parts["text_loss"] > 0  # still reported
    logits.grad = None
    weighted_lm_loss(logits, seq, LAYOUT, text_weight=1.0, image_weight=0.0)[0].backward()
    assert logits.grad[:, : T - 1, : LAYOUT.text_vocab_size].abs().sum() > 0
    assert (logits.grad[:, T:] == 0).all()


# ------------------------------------------------------------------------------------------------
# model


def test_save_load_transformer_round_trip(model, tmp_path):
    assert count_parameters(model) > 0 and model.config.vocab_size == LAYOUT.vocab_size
    save_transformer(model, LAYOUT, tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "sequence_layout.json").is_file()
    loaded, layout = load_transformer(tmp_path)
    assert layout == LAYOUT and not loaded.training
    seq = LAYOUT.build(_captions(2), torch.randint(0, K, (2, N)))
    with torch.no_grad():
        assert torch.equal(model(input_ids=seq).logits, loaded(input_ids=seq).logits)
    loaded16, _ = load_transformer(tmp_path, torch_dtype=torch.bfloat16)
    assert next(loaded16.parameters()).dtype == torch.bfloat16
    codes = sample_image_codes(loaded16, layout, _captions(2), guidance_scale=2.0, top_k=5)
    assert codes.shape == (2, 4, 4) and codes.min() >= 0 and codes.max() < K
    (tmp_path / "sequence_layout.json").unlink()
    with pytest.raises(FileNotFoundError, match="sequence_layout.json"):
        load_transformer(tmp_path)


# ------------------------------------------------------------------------------------------------
# sampling


def test_samples_only_image_codes_even_when_text_logits_dominate(model):
    def favour_text(module, args, out):  # every text token and BOI far above any image code
        out = out.clone()
        out[..., : LAYOUT.image_offset] += 1e4
        out[..., LAYOUT.boi_id] += 1e4
        return out

    # KVDecoder computes only the image-code rows of the head, so it cannot even produce a text logit;
    # transformers' forward (with or without its cache) computes all rows, which the sampler must cut.
    handle = model.lm_head.register_forward_hook(favour_text)
    try:
        for kwargs in ({}, {"temperature": 0.0}, {"guidance_scale": 3.0, "top_p": 0.9}, {"top_k": 3}):
            for way in ({"cache_implementation": "dynamic"}, {"use_cache": False}):
                codes = sample_image_codes(
                    model, LAYOUT, _captions(4), generator=torch.Generator().manual_seed(0), **kwargs, **way
                )
                assert codes.shape == (4, 4, 4) and codes.dtype == torch.long
                assert codes.min() >= 0 and codes.max() < K
    finally:
        handle.remove()


def test_seeded_sampling_is_deterministic_and_guidance_one_is_plain(model):
    text = _captions(3)

    def run(seed, **kwargs):
        return sample_image_codes(
            model, LAYOUT, text, generator=torch.Generator().manual_seed(seed), **kwargs
        )

    a = run(0, top_k=8, top_p=0.95)
    assert torch.equal(a, run(0, top_k=8, top_p=0.95))
    assert not torch.equal(run(0), run(1))
    assert torch.equal(run(5), run(5, guidance_scale=1.0, temperature=1.0))
    assert torch.equal(run(5, temperature=0.0), run(6, top_k=1))  # greedy two ways


def test_guidance_batches_cond_and_uncond_in_one_pass(model):
    text = _captions(2)
    seen = []
    handle = model.model.embed_tokens.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    try:
        greedy = sample_image_codes(model, LAYOUT, text, guidance_scale=3.0, temperature=0.0)
    finally:
        handle.remove()
    first = seen[0]  # (2B, T+1): conditional rows, then unconditional rows
    assert first.shape == (4, T + 1)
    assert torch.equal(first[:2, :T], text) and (first[2:, :T] == LAYOUT.pad_id).all()
    assert all(ids.shape == (4, 1) for ids in seen[1:])  # one token per step: the KV cache is used
    with torch.no_grad():
        logits = model(input_ids=first).logits[:, -1, LAYOUT.image_offset : LAYOUT.boi_id]  # (2B, K)
    mixed = logits[2:] + 3.0 * (logits[:2] - logits[2:])  # (B, K)
    assert torch.equal(greedy[:, 0, 0], mixed.argmax(-1))


def test_guidance_contrasts_the_unconditional_half_it_is_given(model):
    """unconditional_text_ids replaces the empty caption in guidance's second half (a reference picture's
    codes kept in both halves, only the caption emptied); the empty caption itself gives the default."""
    text = _captions(2)
    kept = LAYOUT.empty_caption_ids(2)
    kept[:, T // 2 :] = text[:, T // 2 :]  # (B, T): the caption's first half emptied, the rest kept
    seen = []
    handle = model.model.embed_tokens.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    try:
        greedy = sample_image_codes(
            model, LAYOUT, text, guidance_scale=3.0, temperature=0.0, unconditional_text_ids=kept
        )
    finally:
        handle.remove()
    first = seen[0]  # (2B, T+1)
    assert torch.equal(first[:2, :T], text) and torch.equal(first[2:, :T], kept)
    with torch.no_grad():
        logits = model(input_ids=first).logits[:, -1, LAYOUT.image_offset : LAYOUT.boi_id]  # (2B, K)
    assert torch.equal(greedy[:, 0, 0], (logits[2:] + 3.0 * (logits[:2] - logits[2:])).argmax(-1))

    def sample(**kwargs):
        generator = torch.Generator().manual_seed(3)
        return sample_image_codes(model, LAYOUT, text, guidance_scale=3.0, generator=generator, **kwargs)

    assert torch.equal(sample(unconditional_text_ids=LAYOUT.empty_caption_ids(2)), sample())
    assert not torch.equal(sample(unconditional_text_ids=kept), sample())
    with pytest.raises(ValueError, match="unconditional_text_ids has 1 rows, text_ids 2"):
        sample(unconditional_text_ids=kept[:1])


@pytest.mark.parametrize("cache_implementation", ["static", "dynamic", "hf-static"])
@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {}, {"guidance_scale": 2.5, "top_k": 6}])
def test_kv_cache_matches_full_recompute(model, kwargs, cache_implementation):
    text = _captions(3)
    cached = sample_image_codes(
        model,
        LAYOUT,
        text,
        generator=torch.Generator().manual_seed(7),
        cache_implementation=cache_implementation,
        **kwargs,
    )
    full = sample_image_codes(
        model, LAYOUT, text, generator=torch.Generator().manual_seed(7), use_cache=False, **kwargs
    )
    assert torch.equal(cached, full)
    with pytest.raises(ValueError, match="cache_implementation must be one of static, dynamic"):
        sample_image_codes(model, LAYOUT, text, cache_implementation="paged")


@pytest.mark.parametrize(
    "cfg, dtype, atol",
    [
        ({}, torch.float32, 1e-5),
        ({"num_key_value_heads": 1, "tie_word_embeddings": True}, torch.float32, 1e-5),  # grouped-query
        ({}, torch.bfloat16, 0.1),
    ],
)
# SDPA; the large-batch CPU path over the written part of the cache; the same over the whole cache
@pytest.mark.parametrize("attention", ["sdpa", "matmul-written", "matmul-whole"])
def test_kv_decoder_logits_equal_the_models_own_forward(monkeypatch, cfg, dtype, atol, attention):
    if attention != "sdpa":
        monkeypatch.setattr("stage2_transformer.decoding.MATMUL_ATTENTION_MIN_BATCH", 1)
        whole_from = 0.0 if attention == "matmul-whole" else 1.0
        monkeypatch.setattr("stage2_transformer.decoding.FULL_CACHE_ATTENTION_FROM", whole_from)
    torch.manual_seed(1)
    model = build_transformer(
        TransformerConfig(hidden_size=32, num_layers=2, num_heads=4, initializer_range=0.3), LAYOUT
    )
    if cfg:  # a variant of the same architecture that build_transformer does not make
        config = model.config
        for key, value in cfg.items():
            setattr(config, key, value)
        model = type(model)(config)
    model = model.to(dtype).eval()
    seq = LAYOUT.build(_captions(2), torch.randint(0, K, (2, N)))  # (2, L)
    with torch.no_grad():
        expected = model(input_ids=seq).logits[..., LAYOUT.image_slice].float()  # (2, L, K)
    assert KVDecoder.supports(model)
    decoder = KVDecoder(model, batch_size=2, max_len=LAYOUT.seq_len, logit_rows=LAYOUT.image_slice)
    got = {T: decoder.prefill(seq[:, : T + 1])}  # position T (BOI) predicts the first code
    for i in range(T + 1, T + 6):  # one token per step
        got[i] = decoder.step(seq[:, i : i + 1])
    got[T + 9] = decoder.step(seq[:, T + 6 : T + 10])  # a chunk of 4 after the cache: causal within it
    for position, logits in got.items():
        assert logits.shape == (2, K)
        torch.testing.assert_close(logits.float(), expected[:, position], atol=atol, rtol=0)
    decoder.prefill(seq[:, :3])  # a new prefill starts again from position 0
    torch.testing.assert_close(decoder.step(seq[:, 3:4]).float(), expected[:, 3], atol=atol, rtol=0)
    with pytest.raises(ValueError, match="built for batch 2"):
        decoder.step(seq[:1, 4:5])
    decoder.prefill(seq)
    with pytest.raises(ValueError, match=f"built for {LAYOUT.seq_len} tokens"):
        decoder.step(seq[:, :1])


def test_unsupported_models_fall_back_to_the_dynamic_cache(model):
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.attention_bias = True  # a bias on q/k/v/o: not what KVDecoder computes
    torch.manual_seed(2)
    biased = type(model)(config).eval()
    assert KVDecoder.supports(model) and not KVDecoder.supports(biased)
    with pytest.raises(ValueError, match="LlamaForCausalLM only"):
        KVDecoder(biased, 1, LAYOUT.seq_len)
    text = _captions(2)
    static = sample_image_codes(biased, LAYOUT, text, generator=torch.Generator().manual_seed(3))
    recomputed = sample_image_codes(
        biased, LAYOUT, text, generator=torch.Generator().manual_seed(3), use_cache=False
    )
    assert torch.equal(static, recomputed)


def test_batched_prompts_equal_prompts_sampled_alone(model):
    text = _captions(3, seed=1)
    seeds = [11, 12, 13]
    for kwargs in ({}, {"guidance_scale": 2.0, "top_p": 0.9}):
        batched = sample_image_codes(model, LAYOUT, text, generator=_gens(seeds), **kwargs)
        for b, seed in enumerate(seeds):
            alone = sample_image_codes(
                model, LAYOUT, text[b : b + 1], generator=torch.Generator().manual_seed(seed), **kwargs
            )
            assert torch.equal(batched[b : b + 1], alone)
    with pytest.raises(ValueError, match="list of 3 generators"):
        sample_image_codes(model, LAYOUT, text, generator=_gens([1, 2]))


def test_prefix_rows_kept_and_on_row_called_per_row(model):
    text = _captions(2)
    rows = []
    sample_image_codes(model, LAYOUT, text, on_row=lambda r, c: rows.append((r, c.shape)))
    assert rows == [(r, (2, r + 1, 4)) for r in range(4)]
    prefix = torch.randint(0, K, (2, 2, 4))
    rows.clear()
    codes = sample_image_codes(
        model, LAYOUT, text, prefix_codes=prefix, guidance_scale=2.0, on_row=lambda r, c: rows.append((r, c))
    )
    assert torch.equal(codes[:, :2], prefix)
    assert [r for r, _ in rows] == [2, 3] and torch.equal(rows[-1][1], codes)
    full = sample_image_codes(model, LAYOUT, text, prefix_codes=torch.randint(0, K, (2, 4, 4)))
    assert full.shape == (2, 4, 4)
    with pytest.raises(ValueError, match="prefix_codes"):
        sample_image_codes(model, LAYOUT, text, prefix_codes=torch.zeros(2, 1, 3, dtype=torch.long))


def test_image_log_likelihood_agrees_with_loss(model):
    text = _captions(3)
    codes = torch.randint(0, K, (3, 4, 4))
    ll = image_token_log_likelihood(model, LAYOUT, text, codes, batch_size=2)  # (3,)
    assert ll.shape == (3,) and (ll < 0).all()
    seq = LAYOUT.build(text, codes)
    with torch.no_grad():
        _, parts = weighted_lm_loss(model(input_ids=seq).logits, seq, LAYOUT)
    assert math.isclose(float(-ll.sum() / (3 * N)), float(parts["image_loss"]), rel_tol=1e-5)
