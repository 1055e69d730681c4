"""torch.compile of a quantized tiny Wan transformer with REAL codecs: no graph breaks (fullgraph=True),
compiled output equal to the eager quantized output, counters exact.

Compile is slow on 2 CPU cores, so the graphs are small (tiny Wan, 2 layers) and use the ``aot_eager``
backend: it traces with fake tensors through every custom op's fake implementation and AOT autograd
(what inductor consumes) without generating C++ code.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from octopus_diffusers.codecs import get_codec
from octopus_diffusers.kernels.api import Layout
from octopus_diffusers.processors import KVQuantConfig, KVQuantizer, StreamSpec, quantize_attention
from octopus_diffusers.processors.kv import packed_bytes_per_vector
from octopus_diffusers.processors.paths import AttentionArguments, PathChoice


def _wan_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 16, 3, 4, 4, generator=g), torch.tensor([500]), torch.randn(1, 16, 32, generator=g))


def _counters(handle) -> dict:
    total = handle.stats()["total"]
    return {k: total[k] for k in ("calls", "key_vectors", "value_vectors", "bytes_stored", "fp16_bytes")}


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize(("codec", "bits"), [("octopus", 3), ("polarquant", 4)])
@torch.no_grad()
def test_compiled_quantized_wan_matches_eager_with_exact_counters(tiny_runs, fresh_dynamo, codec, bits):
    """On the CPU every codec runs inside the ``kv_roundtrip`` custom op. The cross-attention cache stays
    on: under compile it is bypassed, which changes no value (the cache is exact)."""
    transformer = tiny_runs.pipeline("wan").denoiser
    x, t, ehs = _wan_inputs()
    unquantized = transformer(x, t, ehs, return_dict=False)[0]
    with quantize_attention(transformer, codec=codec, bits=bits, cache_cross_attention=False) as handle:
        eager = transformer(x, t, ehs, return_dict=False)[0]
        eager_counters = _counters(handle)
    assert not torch.equal(eager, unquantized)
    with quantize_attention(transformer, codec=codec, bits=bits) as handle:
        compiled = torch.compile(transformer, fullgraph=True, backend="aot_eager")
        out = compiled(x, t, ehs, return_dict=False)[0]
        # Same reference codecs at run time and aot_eager runs the traced aten ops: bit-identical (an
        # inductor backend would fuse the surrounding float ops and differ by rounding only).
        assert torch.equal(out, eager)
        assert _counters(handle) == eager_counters
        assert handle.stats()["total"]["cache_hits"] == 0  # bypassed under compile
        compiled(x, t, ehs, return_dict=False)
        assert _counters(handle)["bytes_stored"] == 2 * eager_counters["bytes_stored"]


@pytest.mark.parametrize(("codec", "bits", "options"), [
    ("octopus", 3, {}), ("turboquant", 2.5, {}), ("turboquant_prod", 3, {}), ("polarquant", 4, {}),
    ("qjl", 1, {}), ("fp8", 8, {"scale": "vector"}), ("uniform", 4, {"axis": "token"}), ("none", None, {})])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_bytes_per_vector_equals_packed_nbytes(codec, bits, options, dtype):
    c = get_codec(codec, 16, bits, seed=3, **options)
    x = torch.randn(2, 3, 5, 16).to(dtype)
    assert packed_bytes_per_vector(c, dtype) * 30 == c.encode(x).nbytes


def test_token_group_codec_has_no_bytes_per_vector():
    assert packed_bytes_per_vector(get_codec("uniform", 16, 4, axis="channel"), torch.float16) is None


@torch.no_grad()
def test_nan_input_still_raises_under_compile(tiny_runs, fresh_dynamo):
    transformer = tiny_runs.pipeline("wan").denoiser
    x, t, ehs = _wan_inputs()
    ehs = ehs.clone()
    ehs[0, 0, 0] = float("nan")
    with quantize_attention(transformer, codec="polarquant", bits=4, self_attention=False):
        compiled = torch.compile(transformer, fullgraph=True, backend="aot_eager")
        with pytest.raises(Exception, match="NaN or Inf"):
            compiled(x, t, ehs, return_dict=False)


@torch.no_grad()
def test_full_precision_steps_are_refused_under_compile(tiny_runs, fresh_dynamo):
    transformer = tiny_runs.pipeline("wan").denoiser
    with quantize_attention(transformer, codec="octopus", bits=3, full_precision_steps=1):
        compiled = torch.compile(transformer, fullgraph=True, backend="eager")
        with pytest.raises(Exception, match="full_precision_steps reads the timestep on the host"):
            compiled(*_wan_inputs(), return_dict=False)


@torch.no_grad()
def test_token_group_codec_is_refused_under_compile(tiny_runs, fresh_dynamo):
    """uniform keys (KIVI: per channel, grouped along tokens) have no fixed size per vector, so their
    bytes cannot be counted from shapes: refused with the reason, never counted wrongly."""
    transformer = tiny_runs.pipeline("wan").denoiser
    with quantize_attention(transformer, codec="uniform", bits=4):
        compiled = torch.compile(transformer, fullgraph=True, backend="eager")
        with pytest.raises(Exception, match="does not store a fixed size per vector"):
            compiled(*_wan_inputs(), return_dict=False)


@pytest.mark.parametrize("layout", [Layout.BHSD, Layout.BSHD])
@pytest.mark.parametrize("path", ["gpu_decode", "gpu_attention"])
@torch.no_grad()
def test_compiled_gpu_paths_trace_through_the_kernels_api_without_a_break(monkeypatch, fresh_dynamo, path, layout):
    """The GPU paths' compiled code (``kernels.api`` tensor entries, layouts, GQA) forced onto CPU tensors,
    where the kernels' ops run the reference codecs: one graph, equal to the eager path, same bytes."""
    config = KVQuantConfig(codec="octopus", bits=3)
    quantizer = KVQuantizer("layer", StreamSpec("self", "self"), 4, 2, 64, *config.codecs(64, 0), config=config)
    method = "decoded" if path == "gpu_attention" else None
    monkeypatch.setattr(quantizer, "choose_path", lambda *a: PathChoice(path, "forced", method))
    g = torch.Generator().manual_seed(0)
    q, k, v = (layout.from_bhsd(torch.randn(1, h, n, 64, generator=g)).contiguous()
               for h, n in ((4, 10), (2, 12), (2, 12)))
    arguments = AttentionArguments(enable_gqa=True)

    def sdpa(qq, kk, vv):
        out = F.scaled_dot_product_attention(*(layout.to_bhsd(t) for t in (qq, kk, vv)), enable_gqa=True)
        return layout.from_bhsd(out)

    def attend(qq, kk, vv):
        return quantizer.attend(qq, kk, vv, sdpa, layout, arguments)

    eager = attend(q, k, v)
    eager_bytes = quantizer.stats.bytes_stored
    compiled = torch.compile(attend, fullgraph=True, backend="aot_eager")(q, k, v)
    assert compiled.shape == q.shape and compiled.stride() == q.stride()
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-6)
    assert quantizer.stats.bytes_stored == 2 * eager_bytes
