"""The codecs behind FlashDreams' KVStorageBackend protocol (compress_span / decompress_span / estimate_bytes)."""

import enum

import pytest
import torch

from helpers import assert_close

from octopus_diffusers.cache.flashdreams import (KVCompressionConfig, KVPhase, KVSpan, KVStorageBackend,
                                                 OctopusKVStorageBackend)
from octopus_diffusers.codecs import CodecError


def _kv(tokens=12, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, tokens, 2, 64, generator=g).to(dtype), torch.randn(1, tokens, 2, 64, generator=g).to(dtype))


def test_protocol_and_finalize_compresses():
    backend = OctopusKVStorageBackend(head_dim=64)
    assert isinstance(backend, KVStorageBackend)
    k, v = _kv()
    config = KVCompressionConfig(backend="turboquant", schedule=3, protected_recent_chunks=0)
    payload = backend.compress_span(k, v, span=KVSpan(24, 36), phase=KVPhase.FINALIZE_CLEAN_KV, config=config)
    dk, dv = backend.decompress_span(payload, phase=KVPhase.DENOISE, device="cpu")
    assert dk.shape == k.shape and dk.dtype == k.dtype and not torch.equal(dk, k)
    assert_close("finalized K", k, dk, rel_rms=0.25)
    # estimate_bytes is what the payload holds: 12 tokens x 2 heads x (codes + fp16 norm), K and V
    from octopus_diffusers.codecs import get_codec

    per_vector = get_codec("turboquant", 64, 3).encode(torch.zeros(1, 64)).nbytes
    assert backend.estimate_bytes(payload) == 2 * 12 * 2 * per_vector < k.numel() * 2 * 2


def test_denoise_recent_and_sink_tokens_stay_exact():
    backend = OctopusKVStorageBackend(head_dim=64)
    k, v = _kv()
    config = KVCompressionConfig(backend="octopus", schedule=(4, 2), protected_recent_chunks=1, protected_sink_tokens=5)
    denoise = backend.compress_span(k, v, span=(0, 12), phase="denoise", config=config)
    assert torch.equal(backend.decompress_span(denoise, phase="denoise", device=None)[0], k)
    recent = backend.compress_span(k, v, span=KVSpan(12, 24, chunk=3, newest_chunk=3), phase="FINALIZE_CLEAN_KV",
                                   config=config)
    assert torch.equal(backend.decompress_span(recent, phase="denoise")[1], v)
    sink = backend.compress_span(k, v, span=KVSpan(0, 12, chunk=0, newest_chunk=2), phase=KVPhase.FINALIZE_CLEAN_KV,
                                 config=config)
    dk, _ = backend.decompress_span(sink, phase="denoise")
    assert torch.equal(dk[:, :5], k[:, :5]) and not torch.equal(dk[:, 5:], k[:, 5:])
    old = backend.compress_span(k, v, span=KVSpan(12, 24, chunk=1, newest_chunk=5), phase="finalize_clean_kv",
                                config=config)
    assert backend.estimate_bytes(old) < backend.estimate_bytes(sink) < backend.estimate_bytes(recent)


def test_foreign_phase_enum_and_errors():
    class Phase(enum.Enum):  # FlashDreams' own enum, matched by name
        FINALIZE_CLEAN_KV = 1
        RESET = 2

    backend = OctopusKVStorageBackend(head_dim=64)
    k, v = _kv()
    config = KVCompressionConfig(backend="turboquant", schedule=2)
    payload = backend.compress_span(k, v, span=(0, 12), phase=Phase.FINALIZE_CLEAN_KV, config=config)
    with pytest.raises(CodecError, match="reset"):
        backend.decompress_span(payload, phase=Phase.RESET, device="cpu")
    with pytest.raises(CodecError, match="RESET"):
        backend.compress_span(k, v, span=(0, 12), phase="reset", config=config)
    with pytest.raises(CodecError, match="has 11 tokens"):
        backend.compress_span(k, v, span=(0, 11), phase="denoise", config=config)
    with pytest.raises(ValueError, match="unknown KV phase"):
        backend.compress_span(k, v, span=(0, 12), phase="prefill", config=config)
    with pytest.raises(CodecError, match="another backend instance"):
        OctopusKVStorageBackend(head_dim=64).decompress_span(payload, phase="denoise")
    with pytest.raises(CodecError, match="cannot be built for head_dim 6"):
        OctopusKVStorageBackend(head_dim=6).compress_span(*[t[..., :6] for t in _kv()], span=(0, 12),
                                                          phase="finalize_clean_kv",
                                                          config=KVCompressionConfig(backend="polarquant"))
