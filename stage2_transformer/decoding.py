"""Fast incremental decoding for the stage-2 Llama: a preallocated KV cache and fused projections.

Sampling an image is h*w steps of one token each. For the small models this project trains, a step's
cost is not arithmetic but the number of operations launched: transformers' generic Llama forward spends
most of a one-token step on bookkeeping (cache objects, mask construction, per-call dispatch of three
separate q/k/v and two gate/up projections). ``KVDecoder`` runs the same network with

- one fused QKV and one fused gate-up matrix per layer (built once per decoder, from the model's weights),
- keys and values written into tensors preallocated for the whole sequence (no concatenation per step),
- rotary cos/sin tables for every position computed once by the model's own rotary module,
- an output head restricted to the rows that will be sampled (the image codes).

It computes what ``LlamaForCausalLM`` computes (the tests compare logits at every step against the
model's own forward) for the configurations this project builds: RoPE of any kind that the model's rotary
module precomputes, no biases, SiLU MLP, grouped-query attention allowed. ``KVDecoder.supports(model)``
says whether a model qualifies; ``sample_image_codes`` falls back to transformers' ``DynamicCache`` when it
does not (another architecture, sharded weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# From this many sequences a step, one-token attention on a CPU runs as two batched products instead of
# SDPA: 1.05-1.1x faster at 128-400 (fp32, 1-2 threads), up to 2x slower below 32 (per-op overhead).
MATMUL_ATTENTION_MIN_BATCH = 128
# Once more than this fraction of the cache is written, those products run over the whole cache, the
# positions not yet written masked out, instead of over the written part. The written part is a strided
# slice, over which torch's CPU batched product runs at about twice the cost of a contiguous operand (as
# if it copied it first); the whole cache it reads as it lies. Measured on a 2-core AVX-512 CPU (one-token
# attention of 4 layers over a 4-head, 32-dim cache of 81 positions): at batch 200 the slice cost 300 us
# a layer at 20 positions and 1,180 us at 77, the whole cache 540 us at any length; at batch 400,
# 1,165-2,410 us against 1,100-1,150 us. The crossing lies near a third.
FULL_CACHE_ATTENTION_FROM = 1 / 3


class KVDecoder:
    """Prefill a (B, P) prompt, then decode one token per sequence per step, for up to ``max_len`` tokens.

    ``logit_rows`` (a slice of the vocabulary) limits the output head to those rows: logits come back as
    (B, rows). The decoder holds fused copies of the projection weights, so build it after training
    steps, not before (it does not see later weight updates).
    """

    def __init__(
        self, model: torch.nn.Module, batch_size: int, max_len: int, logit_rows: slice | None = None
    ):
        if not self.supports(model):
            raise ValueError(
                f"KVDecoder supports transformers' LlamaForCausalLM only, got {type(model).__name__}."
            )
        cfg = model.config
        backbone = model.model
        weight = backbone.embed_tokens.weight
        device, dtype = weight.device, weight.dtype
        self.embed = backbone.embed_tokens  # called as a module, so hooks on it still see every input
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.max_len = max_len
        self.pos = 0  # tokens written so far
        self.layers = []
        for layer in backbone.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                (
                    layer.input_layernorm.weight,
                    torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),  # (Hq+2Hkv)*D, C
                    attn.o_proj.weight,
                    layer.post_attention_layernorm.weight,
                    torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),  # (2M, C)
                    mlp.down_proj.weight,
                )
            )
        self.final_norm = backbone.norm.weight
        head = model.lm_head.weight
        self.head = head if logit_rows is None else head[logit_rows]  # (rows, C): a view, no copy
        positions = torch.arange(max_len, device=device).unsqueeze(0)  # (1, max_len)
        cos, sin = backbone.rotary_emb(weight, positions)  # (1, max_len, D) each, in the model's dtype
        # rotate_half(x) * sin == roll(x, D/2) * sin with its first half negated: one op instead of three.
        half = self.head_dim // 2
        self.cos = cos[0]  # (max_len, D)
        self.signed_sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)  # (max_len, D)
        self.batch_size = batch_size
        shape = (batch_size, self.num_kv_heads, max_len, self.head_dim)
        # On a CPU the cache is float32 whatever the model's dtype: SDPA's bf16 kernel is 2.3x slower than
        # its fp32 one for one-token queries at batch 400 (and bf16 products no faster, the step being bound
        # by reading the cache), and float32 scores keep a bf16 model's logits as close to its float32 forward
        # as its own SDPA's (tests/test_stage2_library.py).
        cache_dtype = torch.float32 if device.type == "cpu" else dtype
        self.upcast = cache_dtype != dtype  # attention in float32 over a half-precision model's projections
        self.matmul_attention = device.type == "cpu" and batch_size >= MATMUL_ATTENTION_MIN_BATCH
        # Zeros, not uninitialised memory: attention over the whole cache (_one_token_attention) gives
        # positions not yet written a weight of exactly 0, and 0 * NaN would still be NaN.
        self.keys = [
            torch.zeros(shape, device=device, dtype=cache_dtype) for _ in self.layers
        ]  # (B, Hkv, L, D)
        self.values = [torch.zeros(shape, device=device, dtype=cache_dtype) for _ in self.layers]

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        """True for an unsharded, bias-free, SiLU ``LlamaForCausalLM`` (what ``build_transformer`` makes)."""
        from transformers import LlamaForCausalLM

        if type(model) is not LlamaForCausalLM:
            return False
        cfg = model.config
        if cfg.attention_bias or cfg.mlp_bias or cfg.hidden_act != "silu":
            return False
        if getattr(model.model.rotary_emb, "rope_type", "default") == "dynamic":  # recomputed per length
            return False
        # Sharded (FSDP/DTensor) or meta parameters cannot be concatenated into fused matrices.
        return all(type(p) is torch.nn.Parameter and not p.is_meta for p in model.parameters())

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt (B, P) from position 0; return the last position's logits (B, rows)."""
        self.pos = 0
        return self._forward(input_ids)

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Append (B, L) tokens (usually L = 1) after those already decoded; logits of the last (B, rows)."""
        return self._forward(input_ids)

    def _forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        start, end = self.pos, self.pos + length
        if end > self.max_len:
            raise ValueError(f"KVDecoder was built for {self.max_len} tokens; position {end} is past it.")
        if batch != self.batch_size:
            raise ValueError(f"KVDecoder was built for batch {self.batch_size}, got {batch}.")
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        cos, signed_sin = self.cos[start:end, None], self.signed_sin[start:end, None]  # (L, 1, D)
        x = self.embed(input_ids)  # (B, L, C)
        for i, (norm1, qkv_w, out_w, norm2, gate_up_w, down_w) in enumerate(self.layers):
            h = self._rms_norm(x, norm1)
            qkv = F.linear(h, qkv_w).view(batch, length, heads + 2 * kv_heads, dim)  # (B, L, Hq+2Hkv, D)
            qk, v = (
                qkv[:, :, : heads + kv_heads],
                qkv[:, :, heads + kv_heads :],
            )  # (B, L, Hq+Hkv, D), (B, L, Hkv, D)
            qk = torch.addcmul(qk * cos, qk.roll(dim // 2, dims=-1), signed_sin)  # RoPE on q and k at once
            q = qk[:, :, :heads].transpose(1, 2)  # (B, Hq, L, D)
            keys, values = self.keys[i], self.values[i]
            keys[:, :, start:end] = qk[:, :, heads:].transpose(1, 2)
            values[:, :, start:end] = v.transpose(1, 2)
            if self.upcast:
                q = q.float()
            if length == 1 and self.matmul_attention:
                a = self._one_token_attention(q, keys, values, end)  # (B, Hq, 1, D)
            else:
                k, v = keys[:, :, :end], values[:, :, :end]  # (B, Hkv, end, D)
                # A one-token query attends to everything before it; a longer chunk is causal within
                # itself, which is_causal expresses only when it starts at position 0 (the prefill).
                if length == 1:
                    mask, causal = None, False
                elif start == 0:
                    mask, causal = None, True
                else:
                    mask = torch.ones(length, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
                    causal = False
                a = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=kv_heads != heads
                )  # (B, Hq, L, D)
            if self.upcast:
                a = a.to(x.dtype)
            x = x + F.linear(a.transpose(1, 2).reshape(batch, length, heads * dim), out_w)
            gate, up = F.linear(self._rms_norm(x, norm2), gate_up_w).chunk(2, dim=-1)  # (B, L, M) each
            x = x + F.linear(F.silu(gate) * up, down_w)
        self.pos = end
        return F.linear(self._rms_norm(x[:, -1], self.final_norm), self.head)  # (B, rows)

    def _one_token_attention(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, end: int
    ) -> torch.Tensor:
        """Attention of one query per sequence (B, Hq, 1, D) over the first ``end`` positions of the cache
        (B, Hkv, L, D) -> (B, Hq, 1, D).

        At batch 400 (200 guided images) on a CPU, SDPA's flash kernel took 27% of sampling; these two
        batched products make a guided fp32 batch of 200 about 7% faster (a bf16 one 5%). The query is
        made contiguous first: transposed, it made the products 1.7x slower. Past
        ``FULL_CACHE_ATTENTION_FROM`` of the cache they run over all of it, the unwritten positions
        masked to a weight of exactly 0: the same result, without the slow product over a strided slice.
        """
        batch, heads, _, dim = q.shape
        kv_heads, max_len = keys.shape[1], keys.shape[2]
        group = heads // kv_heads  # query heads that share one key/value head
        q = q.reshape(batch, kv_heads, group, dim).contiguous()  # (B, Hkv, G, D)
        whole = end > FULL_CACHE_ATTENTION_FROM * max_len
        k, v = (keys, values) if whole else (keys[:, :, :end], values[:, :, :end])  # (B, Hkv, T, D)
        scores = torch.matmul(q, k.transpose(-1, -2)) * dim**-0.5  # (B, Hkv, G, T)
        if whole and end < max_len:
            scores[..., end:] = float("-inf")
        return torch.matmul(scores.softmax(dim=-1), v).reshape(batch, heads, 1, dim)  # (B, Hq, 1, D)

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), weight, eps=self.eps)  # one op
        # As Llama in half precision: normalise in float32, cast back, then scale.
        return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
