"""The compressed KV cache on its own: policy plan, tiers, accounting, estimate, errors."""

import pytest
import torch

from helpers import assert_close

from octopus_diffusers.cache import (CacheError, CachePolicy, CompressedKVCache, DenseKVCache, estimate_cache_bytes,
                                     plan_chunks)
from octopus_diffusers.codecs import CodecError

LAYERS, HEADS, DIM, FRAME_TOKENS, CHUNK = 2, 2, 32, 4, 2


def _chunk(seed: int, batch: int = 1, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, CHUNK * FRAME_TOKENS, HEADS, DIM)
    return torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)


def _write(cache, chunks: int, dtype=torch.float32, prompt="p", batch: int = 1) -> list:
    written = []
    for c in range(chunks):
        k, v = _chunk(c, batch, dtype)
        cache.begin_forward(c * CHUNK, CHUNK, FRAME_TOKENS, batch, prompt, write=True)
        for layer in range(LAYERS):
            cache.self_kv(layer, k, v)
            cache.cross_kv(layer, lambda: _chunk(100, batch, dtype))
        cache.end_forward()
        written.append((k, v))
    return written


def test_plan_sink_recent_bits_by_age_and_window():
    policy = CachePolicy(codec="turboquant", bits=4, sink_chunks=1, keep_newest=1, bits_by_age=(4, 3, 2))
    plan = plan_chunks(6, 3, policy)
    assert [(p.index, p.tier, p.bits) for p in plan] == [
        (0, "sink", None), (1, "compressed", 2), (2, "compressed", 2), (3, "compressed", 3), (4, "compressed", 4),
        (5, "recent", None)]
    window = CachePolicy(codec="turboquant", sink_chunks=1, keep_newest=1, local_attn_size=12)
    assert [p.index for p in plan_chunks(6, 3, window)] == [0, 4, 5]  # 3 held + the next chunk = 12 frames


def test_policy_errors():
    with pytest.raises(ValueError, match="must not rise with age"):
        CachePolicy(bits_by_age=(2, 4))
    with pytest.raises(CodecError, match="unknown codec"):
        CachePolicy(codec="zip")
    with pytest.raises(CacheError, match="local_attn_size 4 frames cannot hold"):
        CompressedKVCache(LAYERS, HEADS, DIM, FRAME_TOKENS, CHUNK, CachePolicy(local_attn_size=4))
    with pytest.raises(CodecError, match="cannot be built for head_dim 3"):
        CompressedKVCache(LAYERS, HEADS, 3, FRAME_TOKENS, CHUNK, CachePolicy(codec="polarquant", bits=3))


def test_none_codec_is_exact_and_matches_dense_cache_with_window():
    policy = CachePolicy(codec="none", sink_chunks=1, keep_newest=1, local_attn_size=4 * CHUNK)
    cache = CompressedKVCache(LAYERS, HEADS, DIM, FRAME_TOKENS, CHUNK, policy)
    dense = DenseKVCache(LAYERS, HEADS, DIM, FRAME_TOKENS, CHUNK, capacity_frames=4 * CHUNK,
                         local_attn_size=4 * CHUNK, sink_chunks=1)
    written = _write(cache, 5)
    _write(dense, 5)
    q = _chunk(99)
    for c in (cache, dense):
        c.begin_forward(5 * CHUNK, CHUNK, FRAME_TOKENS, 1, "p", write=False)
    k_c, v_c = cache.self_kv(0, *q)
    k_d, v_d = dense.self_kv(0, *q)
    # sink chunk 0, then chunks 3 and 4 (window of 4 chunks incl. the current one), then the current chunk
    expect = torch.cat([written[0][0], written[3][0], written[4][0], q[0]], dim=1)
    assert torch.equal(k_c, expect) and torch.equal(k_d, expect) and torch.equal(v_c, v_d)
    assert [s.index for s in cache.segments(0)] == [0, 3, 4]


@pytest.mark.parametrize("codec,bits", [("octopus", 3), ("turboquant", 2), ("uniform", 4), ("fp8", 8)])
def test_stored_bytes_equal_accounting_and_estimate(codec, bits):
    policy = CachePolicy(codec=codec, bits=bits, sink_chunks=1, keep_newest=1)
    cache = CompressedKVCache(LAYERS, HEADS, DIM, FRAME_TOKENS, CHUNK, policy)
    _write(cache, 4, dtype=torch.bfloat16)
    stored = sum(f.numel() * f.element_size() for layer in range(LAYERS) for s in cache.segments(layer)
                 for p in (s.k, s.v) for f in p.fields.values())
    cross = sum(f.numel() * f.element_size() for pair in cache._cross for p in pair for f in p.fields.values())
    report = cache.report()
    assert report["nbytes"] == stored + cross == cache.nbytes()
    est = estimate_cache_bytes(num_layers=LAYERS, num_heads=HEADS, head_dim=DIM, frame_tokens=FRAME_TOKENS,
                               chunk_frames=CHUNK, num_frames=4 * CHUNK, policy=policy, text_tokens=CHUNK * FRAME_TOKENS)
    assert est["nbytes"] == report["nbytes"] and est["bf16_nbytes"] == report["bf16_nbytes"]
    assert [s.tier for s in cache.segments(1)] == ["sink", "compressed", "compressed", "recent"]
    assert est["tiers"]["sink"] == report["tiers"]["sink"] > 0
    assert report["nbytes"] < report["bf16_nbytes"]


def test_compressed_tiers_decode_close_and_sink_exact():
    cache = CompressedKVCache(LAYERS, HEADS, DIM, FRAME_TOKENS, CHUNK,
                              CachePolicy(codec="turboquant", bits=4, sink_chunks=1, keep_newest=1))
    written = _write(cache, 3)
    q = _chunk(7)
    cache.begin_forward(3 * CHUNK, CHUNK, FRAME_TOKENS, 1, "p", write=False)
    k_all, _ = cache.self_kv(1, *q)
    n = CHUNK * FRAME_TOKENS
    assert torch.equal(k_all[:, :n], written[0][0])  # sink exact
    assert torch.equal(k_all[:, 2 * n:3 * n], written[2][0])  # newest exact
    mid = k_all[:, n:2 * n]
    assert not torch.equal(mid, written[1][0])
    assert_close("middle tier", written[1][0], mid, rel_rms=0.15)


def test_bad_use_is_refused():
    cache = CompressedKVCache(LAYERS, HEADS, DIM, FRAME_TOKENS, CHUNK, CachePolicy(codec="turboquant", bits=3))
    _write(cache, 2)
    with pytest.raises(CacheError, match="frame_offset 2, but the cache holds frames \\[0, 4\\)"):
        cache.begin_forward(2, CHUNK, FRAME_TOKENS, 1, "p", write=False)
    with pytest.raises(CacheError, match="tokens per latent frame"):
        cache.begin_forward(4, CHUNK, FRAME_TOKENS + 1, 1, "p", write=False)
    with pytest.raises(CacheError, match="batch size 2"):
        cache.begin_forward(4, CHUNK, FRAME_TOKENS, 2, "p", write=False)
    with pytest.raises(CacheError, match="prompt embeddings differ"):
        cache.begin_forward(4, CHUNK, FRAME_TOKENS, 1, "other", write=False)
    cache.begin_forward(4, CHUNK, FRAME_TOKENS, 1, "p", write=False)
    k, v = _chunk(0)
    with pytest.raises(CacheError, match="expected \\(B=1, S=8, H=2, D=32\\)"):
        cache.self_kv(0, k[:, :, :1], v[:, :, :1])
    cache.end_forward()
    cache.reset()
    assert cache.nbytes() == 0
    with pytest.raises(CacheError, match="was reset"):
        cache.begin_forward(4, CHUNK, FRAME_TOKENS, 1, "p", write=False)
    with pytest.raises(CacheError, match="outside a forward"):
        cache.self_kv(0, k, v)
    # a writing forward that skips a block leaves the cache unusable until reset
    cache.begin_forward(0, CHUNK, FRAME_TOKENS, 1, "p", write=True)
    cache.self_kv(0, k, v)
    with pytest.raises(CacheError, match="skipped blocks \\[1\\]"):
        cache.end_forward()
    with pytest.raises(CacheError, match="reset\\(\\) before using it again"):
        cache.begin_forward(0, CHUNK, FRAME_TOKENS, 1, "p", write=False)
