"""Chunked causal generation on a tiny random-weight diffusers Wan with the KV caches."""

import pytest
import torch

from octopus_diffusers.cache import CacheError, CachePolicy, estimate_cache_bytes
from octopus_diffusers.codecs import available_codecs
from octopus_diffusers.pipelines.causal_wan import (TINY_LATENT, CausalSchedule, block_causal_reference,
                                                    build_tiny_causal_wan, tiny_prompt_embeds)

SCHEDULE = CausalSchedule(timesteps=(1000.0, 500.0))
CHUNKS = 3


@pytest.fixture(scope="module")
def gen():
    return build_tiny_causal_wan(with_vae=False, schedule=SCHEDULE)


@pytest.fixture(scope="module")
def baseline(gen):
    return gen.generate(tiny_prompt_embeds(), CHUNKS, TINY_LATENT, cache=gen.dense_cache(TINY_LATENT, CHUNKS), seed=3)


def test_none_codec_bit_identical_to_plain_cache(gen, baseline):
    for policy in (CachePolicy(codec="none"), CachePolicy(codec="none", sink_chunks=0, keep_newest=0)):
        out = gen.generate(tiny_prompt_embeds(), CHUNKS, TINY_LATENT, cache=gen.compressed_cache(policy, TINY_LATENT),
                           seed=3)
        assert torch.equal(out.latents, baseline.latents)


def test_rolling_window_none_matches_dense_rolling(gen):
    kw = dict(cache=None, seed=1)
    window = 3 * gen.chunk_frames
    dense = gen.dense_cache(TINY_LATENT, 4, local_attn_size=window, sink_chunks=1)
    comp = gen.compressed_cache(CachePolicy(codec="none", sink_chunks=1, local_attn_size=window), TINY_LATENT)
    a = gen.generate(tiny_prompt_embeds(), 4, TINY_LATENT, **{**kw, "cache": dense})
    b = gen.generate(tiny_prompt_embeds(), 4, TINY_LATENT, **{**kw, "cache": comp})
    assert torch.equal(a.latents, b.latents)
    full = gen.generate(tiny_prompt_embeds(), 4, TINY_LATENT, cache=gen.dense_cache(TINY_LATENT, 4), seed=1)
    assert torch.equal(a.latents[:, :, :9], full.latents[:, :, :9])  # the window bites only at chunk 3
    assert not torch.equal(a.latents, full.latents)
    assert b.cache_report["frames_held"] == 2 * gen.chunk_frames


def test_chunked_equals_block_causal_full_forward(gen, baseline):
    ref = block_causal_reference(gen, tiny_prompt_embeds(), CHUNKS, TINY_LATENT, seed=3)
    # float32: the cached path attends with the chunk's queries only, the reference over the whole
    # masked sequence; sums run in different orders, so equal to ~1e-6 relative, not bit for bit.
    torch.testing.assert_close(baseline.latents, ref, rtol=1e-5, atol=1e-5)
    assert baseline.latents.abs().max() > 0.5


@pytest.mark.parametrize("codec", [c for c in available_codecs() if c != "none"])
def test_every_codec_generates_chunks(gen, baseline, codec):
    bits = 8 if codec == "fp8" else 3
    policy = CachePolicy(codec=codec, bits=bits, sink_chunks=0, keep_newest=0)
    cache = gen.compressed_cache(policy, TINY_LATENT)
    out = gen.generate(tiny_prompt_embeds(), 2, TINY_LATENT, cache=cache, seed=3)
    assert out.latents.shape == (1, 16, 6, *TINY_LATENT) and torch.isfinite(out.latents).all()
    assert len(out.seconds_per_chunk) == 2
    # the first chunk sees no cache, only the (compressed) text K/V; later chunks drift but stay close
    base = baseline.latents[:, :, :6]
    err = (out.latents - base).abs().mean() / base.abs().mean()
    assert 0 < err < 0.5
    report = out.cache_report
    est = estimate_cache_bytes(num_layers=2, num_heads=2, head_dim=32, frame_tokens=4, chunk_frames=3,
                               num_frames=2 * 3, policy=policy, text_tokens=16, dtype=torch.float32)
    assert report["nbytes"] == est["nbytes"] == cache.nbytes()
    assert report["nbytes"] < report["bf16_nbytes"] or codec == "fp8"


def test_peak_tracked_bytes_fall_with_bits(gen):
    peaks, sizes = [], []
    for codec, bits in (("none", 16), ("turboquant", 4), ("turboquant", 3), ("turboquant", 2)):
        cache = gen.compressed_cache(CachePolicy(codec=codec, bits=bits, sink_chunks=0), TINY_LATENT)
        out = gen.generate(tiny_prompt_embeds(), 2, TINY_LATENT, cache=cache, seed=3)
        peaks.append(out.cache_report["peak_tracked_bytes"])
        sizes.append(out.cache_report["nbytes"])
    assert peaks == sorted(peaks, reverse=True) and len(set(peaks)) == 4
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4


def test_errors_through_the_transformer(gen):
    prompt = tiny_prompt_embeds()
    cache = gen.compressed_cache(CachePolicy(codec="turboquant", bits=3), TINY_LATENT)
    gen.generate(prompt, 1, TINY_LATENT, cache=cache, seed=0)
    x = torch.zeros(1, 16, 3, *TINY_LATENT)
    t = torch.zeros(1)
    tr = gen.transformer
    with pytest.raises(CacheError, match="prompt embeddings differ"):
        tr(x, t, prompt + 1, attention_kwargs={"kv_cache": cache, "frame_offset": 3})
    with pytest.raises(CacheError, match="batch size 2"):
        tr(x.repeat(2, 1, 1, 1, 1), t.repeat(2), prompt.repeat(2, 1, 1),
           attention_kwargs={"kv_cache": cache, "frame_offset": 3})
    with pytest.raises(CacheError, match="tokens per latent frame"):
        tr(torch.zeros(1, 16, 3, 4, 8), t, prompt, attention_kwargs={"kv_cache": cache, "frame_offset": 3})
    cache.reset()
    with pytest.raises(CacheError, match="was reset"):
        tr(x, t, prompt, attention_kwargs={"kv_cache": cache, "frame_offset": 3})
    with pytest.raises(CacheError, match="frame_offset given without a kv_cache"):
        tr(x, t, prompt, attention_kwargs={"frame_offset": 3})
    far = gen.compressed_cache(CachePolicy(codec="none"), TINY_LATENT)
    far.frames_written = 30  # pretend 10 chunks were written: frames 30..32 pass RoPE's 32 positions
    with pytest.raises(CacheError, match="exceed RoPE's range of 32"):
        tr(x, t, prompt, attention_kwargs={"kv_cache": far, "frame_offset": 30})
    # after the errors the transformer still runs normally without a cache
    assert tr(x, t, prompt, return_dict=False)[0].shape == x.shape
