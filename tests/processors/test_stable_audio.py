"""Stable Audio Open on the tiny pipeline: partial-RoPE self-attention and grouped-query
cross-attention (4 query heads over 2 KV heads) quantized at the KV-head count, cached across steps."""

from __future__ import annotations

import pytest
import torch

from octopus_diffusers.codecs import get_codec
from octopus_diffusers.processors import KVQuantizer, StreamSpec
from octopus_diffusers.processors.stable_audio import GroupedKV, QuantizedStableAudioAttnProcessor

NAME = "stable-audio"
HEADS, KV_HEADS, HEAD_DIM = 4, 2, 16
CFG_BATCH, STEPS = 2, 2
CROSS_TOKENS = 16 + 2  # prompt tokens + start/end duration tokens
SELF_TOKENS = 64 + 1  # latent length + the global (duration) token


def test_none_is_bit_identical_and_restore_is_exact(tiny_runs):
    with tiny_runs.exact_hook(NAME, QuantizedStableAudioAttnProcessor) as handle:
        rows = {r["layer"]: r for r in handle.report()}
    assert rows["transformer_blocks.0.attn2:text"]["kind"] == "cross"
    assert (rows["transformer_blocks.0.attn2:text"]["heads"], rows["transformer_blocks.0.attn2:text"]["kv_heads"]) \
        == (HEADS, KV_HEADS)
    assert rows["transformer_blocks.0.attn1"]["kv_heads"] == HEADS


def test_cross_attention_is_quantized_at_the_kv_head_count_and_cached(tiny_runs):
    stats, stats_off = tiny_runs.stats_with_and_without_cache(NAME, codec="octopus", bits=3)
    cross = stats["layers"]["transformer_blocks.0.attn2:text"]
    cross_off = stats_off["layers"]["transformer_blocks.0.attn2:text"]
    # KV heads, not the 4 query heads the processor repeats them to; one encode per prompt batch (CFG batched).
    assert cross_off["key_vectors"] == STEPS * CFG_BATCH * KV_HEADS * CROSS_TOKENS
    assert (cross["key_vectors"], cross["cache_misses"], cross["cache_hits"]) == (
        CFG_BATCH * KV_HEADS * CROSS_TOKENS, 1, 1)
    assert stats["layers"]["transformer_blocks.0.attn1"]["key_vectors"] == STEPS * CFG_BATCH * HEADS * SELF_TOKENS
    per_vector = get_codec("octopus", HEAD_DIM, 3).encode(torch.randn(1, HEAD_DIM)).nbytes
    total = stats["total"]
    assert total["bytes_stored"] == total["vectors_encoded"] * per_vector
    assert cross["cached_bytes"] == 2 * CFG_BATCH * KV_HEADS * CROSS_TOKENS * per_vector  # K and V held


def test_only_cross_attention(tiny_runs):
    ref = tiny_runs.reference(NAME)
    out, stats = tiny_runs.quantized(NAME, codec="turboquant", bits=2, self_attention=False)
    assert set(stats["layers"]) == {"transformer_blocks.0.attn2:text", "transformer_blocks.1.attn2:text"}
    assert not torch.equal(out, ref)


def _grouped(codec: str = "none", bits: float | None = None) -> GroupedKV:
    key_codec, value_codec = get_codec(codec, HEAD_DIM, bits), get_codec(codec, HEAD_DIM, bits, seed=1)
    return GroupedKV(KVQuantizer("attn2", StreamSpec("text", "cross"), HEADS, KV_HEADS, HEAD_DIM, key_codec,
                                 value_codec))


def test_grouped_kv_matches_quantizing_before_the_repeat():
    kv_key, kv_value = torch.randn(2, KV_HEADS, 5, HEAD_DIM), torch.randn(2, KV_HEADS, 5, HEAD_DIM)
    query = torch.randn(2, HEADS, 7, HEAD_DIM)
    key, value = kv_key.repeat_interleave(2, dim=1), kv_value.repeat_interleave(2, dim=1)
    grouped = _grouped("turboquant", 3)
    out = grouped.attend(query, key, value, torch.nn.functional.scaled_dot_product_attention, "BHSD")
    quantizer = grouped.quantizers[0]
    key_hat = quantizer.key_codec.decode(quantizer.key_codec.encode(kv_key)).repeat_interleave(2, dim=1)
    value_hat = quantizer.value_codec.decode(quantizer.value_codec.encode(kv_value)).repeat_interleave(2, dim=1)
    assert torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(query, key_hat, value_hat))
    assert quantizer.stats.key_vectors == 2 * KV_HEADS * 5


def test_grouped_kv_refuses_heads_that_are_not_copies():
    key = torch.randn(1, HEADS, 5, HEAD_DIM)
    with pytest.raises(RuntimeError, match="not 2 identical copies of 2 KV heads"):
        _grouped().attend(key, key, key, torch.nn.functional.scaled_dot_product_attention, "BHSD")


def test_grouped_kv_needs_whole_groups():
    codec = get_codec("none", HEAD_DIM)
    with pytest.raises(ValueError, match="not a multiple"):
        GroupedKV(KVQuantizer("attn2", StreamSpec("text", "cross"), 3, 2, HEAD_DIM, codec, codec))
