"""The attention path rule of ``KVQuantizer.attend`` (CPU tests of the choice) and the GPU paths against
the CPU reference (``@pytest.mark.gpu``, run on a CUDA machine)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close, errors

from octopus_diffusers.codecs import get_codec
from octopus_diffusers.kernels.api import Layout
from octopus_diffusers.kernels.dispatch import CROSSOVER
from octopus_diffusers.processors import KVQuantConfig, KVQuantizer, StreamSpec, quantize_attention
from octopus_diffusers.processors.paths import AttentionArguments, PathChoice, choose_attention_path

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def _choose(arguments: AttentionArguments | None = AttentionArguments(), *, device=CUDA, codec="octopus",
            supported=True, q=(1, 4, 8, 64), k=(1, 4, 8, 64), dtype=torch.float16, layout=Layout.BHSD) -> PathChoice:
    bits = {"none": None, "polarquant": 4}.get(codec, 3)
    key_codec, value_codec = (get_codec(codec, q[-1], bits, seed=s) for s in (0, 1))
    return choose_attention_path(device, key_codec, value_codec, supported, arguments, q, k, dtype, layout)


# ---- the choice (CPU) --------------------------------------------------------------------------------------

def test_cpu_and_codec_none_and_codecs_without_kernels_take_the_reference():
    assert _choose(device=CPU).path == "reference"
    none = _choose(codec="none")  # even if someone claimed kernel support for it
    assert none.path == "reference" and "bit-identical" in none.reason
    polar = _choose(codec="polarquant", supported=False)
    assert polar.path == "reference" and "no Triton kernel" in polar.reason


def test_plain_calls_take_the_gpu_attention_op():
    assert _choose().path == "gpu_attention"
    assert _choose(layout=Layout.BSHD, q=(1, 8, 4, 64), k=(1, 8, 4, 64)).path == "gpu_attention"
    bool_mask = AttentionArguments(attn_mask=torch.ones(1, 1, 8, 8, dtype=torch.bool))
    assert _choose(bool_mask).path == "gpu_attention"
    additive = AttentionArguments(attn_mask=torch.zeros(8, 8))  # broadcasts to (B, H, Nq, Nkv)
    assert _choose(additive).path == "gpu_attention"
    assert _choose(AttentionArguments(enable_gqa=True), k=(1, 2, 8, 64)).path == "gpu_attention"
    assert _choose(AttentionArguments(scale=0.1)).path == "gpu_attention"


@pytest.mark.parametrize(("arguments", "k", "why"), [
    (None, (1, 4, 8, 64), "wrapped"),
    (AttentionArguments(dropout_p=0.1), (1, 4, 8, 64), "dropout_p"),
    (AttentionArguments(is_causal=True), (1, 4, 8, 64), "is_causal"),
    (AttentionArguments(extra=("backend",)), (1, 4, 8, 64), "backend"),
    (AttentionArguments(attn_mask=torch.zeros(1, 1, 8, 8, dtype=torch.int64)), (1, 4, 8, 64), "dtype"),
    (AttentionArguments(attn_mask=torch.zeros(2, 4, 8, 8)), (1, 4, 8, 64), "does not broadcast"),
    (AttentionArguments(attn_mask=torch.zeros(1, 1, 1, 8, 8)), (1, 4, 8, 64), "does not broadcast"),
    (AttentionArguments(), (1, 2, 8, 64), "without enable_gqa"),
    (AttentionArguments(enable_gqa=True), (1, 3, 8, 64), "without enable_gqa"),
])
def test_calls_the_gpu_attention_op_cannot_take_are_decoded_on_the_gpu(arguments, k, why):
    choice = _choose(arguments, k=k)
    assert choice.path == "gpu_decode" and why in choice.reason and choice.method is None, choice


@pytest.mark.parametrize("layout", [Layout.BHSD, Layout.BSHD])
def test_the_path_choice_carries_the_kernel_method_and_one_reason(layout):
    """One decision: the gpu_attention path comes with the measured crossover's method (TurboQuant fused
    up to its limit in query rows per KV head, here 4 query heads over 2 KV heads), the reason naming
    both; the other paths carry no method."""
    limit = CROSSOVER[("turboquant", 128)]

    def shape(nq, heads):
        return (1, heads, nq, 128) if layout is Layout.BHSD else (1, nq, heads, 128)

    args = AttentionArguments(enable_gqa=True)
    few = _choose(args, codec="turboquant", q=shape(limit // 2, 4), k=shape(50, 2), layout=layout)
    many = _choose(args, codec="turboquant", q=shape(limit // 2 + 1, 4), k=shape(50, 2), layout=layout)
    assert (few.path, few.method) == ("gpu_attention", "fused") and "plain attention call; fused kernel" in few.reason
    assert (many.path, many.method) == ("gpu_attention", "decoded") and "decode, then SDPA" in many.reason
    octopus = _choose(args, q=shape(1, 4), k=shape(50, 2), layout=layout)  # 2 rows per KV head
    assert octopus.method == ("fused" if 2 <= CROSSOVER[("octopus", 128)] else "decoded")
    assert _choose(device=CPU).method is None and _choose(codec="none").method is None


def test_attention_arguments_from_sdpa_and_dispatcher_calls():
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    positional = AttentionArguments.from_call((mask, 0.0, False, 0.5), {})
    assert positional.attn_mask is mask and positional.scale == 0.5 and positional.extra == ()
    dispatcher = AttentionArguments.from_call((), {"attn_mask": None, "dropout_p": 0.0, "is_causal": False,
                                                   "backend": None, "parallel_config": None})
    assert dispatcher == AttentionArguments()
    chosen_backend = AttentionArguments.from_call((), {"backend": "flash", "attention_kwargs": {}})
    assert chosen_backend.extra == ("backend",)
    with pytest.raises(TypeError, match="'attn_mask' given twice"):
        AttentionArguments.from_call((mask,), {"attn_mask": mask})
    with pytest.raises(TypeError, match="positional"):
        AttentionArguments.from_call((None,) * 6, {})


def _quantizer(codec: str, head_dim: int, bits: float | None = 3, kv_heads: int = 2, **options) -> KVQuantizer:
    config = KVQuantConfig(codec=codec, bits=bits, **options)
    return KVQuantizer("layer", StreamSpec("self", "self"), 2 * kv_heads, kv_heads, head_dim,
                       *config.codecs(head_dim, 0), config=config)


def test_kernel_support_per_codec_and_head_dim():
    assert _quantizer("octopus", 64).kernels_support
    assert _quantizer("turboquant", 128).kernels_support
    assert not _quantizer("octopus", 16).kernels_support  # kernels take head_dim 64 and 128
    assert not _quantizer("polarquant", 64, bits=4).kernels_support
    assert not _quantizer("none", 64, bits=None).kernels_support


def test_gpu_encode_kernel_choice_follows_dtype_and_exact_gpu_codes():
    fast = _quantizer("octopus", 64)
    assert fast.fused_rotation(torch.empty(1, dtype=torch.float16))
    assert fast.fused_rotation(torch.empty(1, dtype=torch.bfloat16))
    assert not fast.fused_rotation(torch.empty(1))  # float32 always takes the exact kernel
    exact = _quantizer("octopus", 64, exact_gpu_codes=True)
    assert not exact.fused_rotation(torch.empty(1, dtype=torch.float16))


def test_quantize_attention_passes_exact_gpu_codes_to_every_quantizer():
    from octopus_diffusers.pipelines import tiny

    transformer = tiny._tiny_wan_transformer(attention_head_dim=64)
    with quantize_attention(transformer, codec="octopus", bits=3, exact_gpu_codes=True) as handle:
        processors = [m.processor for m in transformer.modules() if hasattr(m, "processor")]
        assert handle.quantizers and all(q.config is handle.config for q in handle.quantizers)
        assert all(p.kv_config is handle.config for p in processors) and handle.config.exact_gpu_codes
    with quantize_attention(transformer, codec="octopus", bits=3) as handle:
        assert not any(q.config.exact_gpu_codes for q in handle.quantizers)
    with pytest.raises(TypeError, match="exact_gpu_codes must be True or False"):
        quantize_attention(transformer, codec="octopus", bits=3, exact_gpu_codes="yes")


def test_deferred_finite_check_names_the_streams_and_clears():
    from octopus_diffusers.codecs import CodecError
    from octopus_diffusers.processors.kv import raise_if_nonfinite

    good, bad = _quantizer("octopus", 64), _quantizer("turboquant", 64)
    good.layer, bad.layer = "blocks.0.attn1", "blocks.1.attn1"
    raise_if_nonfinite([good, bad])  # nothing pending: no error
    good._nonfinite, bad._nonfinite = torch.tensor(0), torch.tensor(3)
    good._cache["prompt"] = bad._cache["prompt"] = "packed K/V"  # stand-ins for cached entries
    with pytest.raises(CodecError, match=r"blocks\.1\.attn1 \(3\).*NaN or Inf"):
        raise_if_nonfinite([good, bad])
    assert good._nonfinite is None and bad._nonfinite is None
    assert "prompt" in good._cache and not bad._cache  # bad K/V are never reused from the cache
    raise_if_nonfinite([good, bad])  # cleared


def test_quantize_attention_defers_the_finite_check_to_a_forward_hook():
    from octopus_diffusers.pipelines import tiny

    transformer = tiny._tiny_wan_transformer(attention_head_dim=64)
    before = len(transformer._forward_hooks)
    with quantize_attention(transformer, codec="octopus", bits=3) as handle:
        assert all(q.defer_finite_check for q in handle.quantizers)
        assert len(transformer._forward_hooks) == before + 1
    assert len(transformer._forward_hooks) == before


def test_cpu_attend_runs_the_reference_and_records_the_choice():
    q = _quantizer("octopus", 64)
    x = torch.randn(1, 2, 5, 64)
    calls = []
    out = q.attend(x, x, x, lambda *t: calls.append(t) or F.scaled_dot_product_attention(*t), "BHSD",
                   AttentionArguments())
    assert q.last_choice.path == "reference" and len(calls) == 1
    k_hat, v_hat = q.key_codec.roundtrip(x), q.value_codec.roundtrip(x)
    assert torch.equal(out, F.scaled_dot_product_attention(x, k_hat, v_hat))


@pytest.mark.parametrize("path", ["gpu_decode", "gpu_attention"])
@pytest.mark.parametrize("layout", ["BHSD", "BSHD"])
def test_gpu_path_code_on_cpu_tensors_equals_the_reference(monkeypatch, path, layout):
    """The GPU paths' own code (kernels.encode/decode/attention calls, layouts, GQA, mask, counters)
    forced onto CPU tensors, where the kernels' ops run the reference codecs: equal to the reference."""
    quantizer = _quantizer("octopus", 64)
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 10, 64), torch.randn(1, 2, 12, 64), torch.randn(1, 2, 12, 64)
    mask = torch.rand(1, 1, 10, 12) > 0.3
    arguments = AttentionArguments(attn_mask=mask, enable_gqa=True)
    if layout == "BSHD":
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))

    def sdpa(qq, kk, vv):
        if layout == "BSHD":
            qq, kk, vv = (t.transpose(1, 2) for t in (qq, kk, vv))
        out = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, enable_gqa=True)
        return out if layout == "BHSD" else out.transpose(1, 2)

    reference = quantizer.attend(q, k, v, sdpa, layout, arguments)
    reference_stats = quantizer.stats.bytes_stored
    method = "decoded" if path == "gpu_attention" else None
    monkeypatch.setattr(quantizer, "choose_path", lambda *a: PathChoice(path, "forced", method))
    out = quantizer.attend(q, k, v, sdpa, layout, arguments)
    assert out.shape == q.shape and out.stride() == q.stride()
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)
    assert quantizer.stats.bytes_stored == 2 * reference_stats


# ---- GPU vs CPU reference (run on a CUDA machine) -------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("codec", ["octopus", "turboquant"])
@pytest.mark.parametrize("layout", ["BHSD", "BSHD"])
@pytest.mark.parametrize("mask", [None, "bool", "additive"])
def test_gpu_attention_op_matches_the_cpu_reference(codec, layout, mask):
    """GQA (4 query heads over 2 KV heads), fp16, the three mask kinds. Bound: relative RMS 5e-3 to
    the CPU reference (decode with the reference codec, fp32 SDPA): the kernels' bound is 1e-3 on the
    same codes, and CPU vs GPU rotations may round a float near-tie to the neighbouring code."""
    torch.manual_seed(0)
    quantizer = _quantizer(codec, 64)
    # fp16-representable values, so the fp32 CPU reference encodes exactly the fp16 GPU inputs
    q, k, v = (torch.randn(*shape).half().float() for shape in ((1, 4, 40, 64), (1, 2, 56, 64), (1, 2, 56, 64)))
    attn_mask = {None: None, "bool": torch.rand(1, 1, 40, 56) > 0.3,
                 "additive": torch.randn(1, 4, 40, 56)}[mask]
    if layout == "BSHD":
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))

    def run(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        m = None if attn_mask is None else attn_mask.to(device)
        args = AttentionArguments(attn_mask=m, enable_gqa=True)

        def sdpa(qq, kk, vv):
            if layout == "BSHD":
                qq, kk, vv = (t.transpose(1, 2) for t in (qq, kk, vv))
            out = F.scaled_dot_product_attention(qq.float(), kk.float(), vv.float(), attn_mask=m, enable_gqa=True)
            return (out if layout == "BHSD" else out.transpose(1, 2)).to(dtype)

        return quantizer.attend(q.to(device, dtype), k.to(device, dtype), v.to(device, dtype), sdpa, layout, args)

    reference = run(CPU, torch.float32)
    assert quantizer.last_choice.path == "reference"
    gpu = run(CUDA, torch.float16)
    assert quantizer.last_choice.path == "gpu_attention", quantizer.last_choice
    assert gpu.dtype == torch.float16 and gpu.shape == q.shape
    assert_close(f"{codec} {layout} {mask} attention on CUDA", reference, gpu, rel_rms=5e-3)


def _tiny_wan_64():
    """The tiny Wan transformer with head_dim 64 (the kernels' smallest head_dim) and its inputs."""
    from octopus_diffusers.pipelines import tiny

    transformer = tiny._tiny_wan_transformer(attention_head_dim=64).eval()
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(1, 16, 3, 4, 4, generator=g), torch.tensor([500]), torch.randn(1, 16, 32, generator=g))
    return transformer, inputs


def _tiny_wan_64_cuda_half():
    """:func:`_tiny_wan_64` in float16 on CUDA: the transformer and its (latents, timestep, text) inputs."""
    transformer, inputs = _tiny_wan_64()
    transformer.to(CUDA, torch.float16)
    x, t, ehs = (i.to(CUDA) for i in inputs)
    return transformer, (x.half(), t, ehs.half())


@contextmanager
def _nan_in_channel_0(projection: torch.nn.Module) -> Iterator[None]:
    """``projection``'s output with NaN in its first channel, until the block exits."""
    poison = projection.register_forward_hook(
        lambda module, args, out: out.index_fill(-1, torch.tensor([0], device=out.device), float("nan")))
    try:
        yield
    finally:
        poison.remove()


@torch.no_grad()
def _forward(transformer, inputs, device, dtype=torch.float32):
    transformer.to(device, dtype)
    x, t, ehs = (i.to(device) for i in inputs)
    return transformer(x.to(dtype), t, ehs.to(dtype), return_dict=False)[0].float().cpu()


@pytest.mark.gpu
@pytest.mark.parametrize("codec", ["octopus", "turboquant"])
def test_gpu_path_on_tiny_wan_matches_the_cpu_reference(codec):
    """End to end: the quantized tiny Wan transformer on CUDA (Triton encode/decode or the attention op)
    against the same model quantized on the CPU. Bound: the GPU-vs-CPU difference is under 10 % of the
    quantization error itself and under 1e-2 relative RMS."""
    transformer, inputs = _tiny_wan_64()
    unquantized = _forward(transformer, inputs, CPU)
    with quantize_attention(transformer, codec=codec, bits=3) as handle:
        reference = _forward(transformer, inputs, CPU)
        assert {q.last_choice.path for q in handle.quantizers} == {"reference"}
        gpu = _forward(transformer, inputs, CUDA)
        assert {q.last_choice.path for q in handle.quantizers} <= {"gpu_decode", "gpu_attention"}
    quantization_error = errors(unquantized, reference)[0]
    assert quantization_error > 0
    assert_close(f"{codec} tiny Wan on CUDA", reference, gpu, rel_rms=min(1e-2, 0.1 * quantization_error))


@pytest.mark.gpu
@pytest.mark.parametrize("codec", ["octopus", "turboquant"])
def test_fast_and_exact_gpu_encode_agree_on_fp16(codec):
    """The processors' default fp16 encode (fused rotation) against ``exact_gpu_codes=True``: codes equal
    except at float near-ties (at most 1e-3 of code bytes), on BSHD K/V as diffusers passes them."""
    torch.manual_seed(0)
    k, v = (get_codec(codec, 128, 3, seed=s) for s in (0, 1))
    key = torch.randn(2, 300, 4, 128, device=CUDA, dtype=torch.float16)
    fast = KVQuantizer("l", StreamSpec("self", "self"), 4, 4, 128, k, v)
    exact = KVQuantizer("l", StreamSpec("self", "self"), 4, 4, 128, k, v, config=KVQuantConfig(exact_gpu_codes=True))
    pk, _ = fast.encode(key, key, "BSHD", gpu=True)
    ek, _ = exact.encode(key, key, "BSHD", gpu=True)
    assert pk.shape == ek.shape == (2, 4, 300, 128)
    assert (pk.fields["codes"] != ek.fields["codes"]).float().mean().item() <= 1e-3
    torch.testing.assert_close(pk.fields["norms"], ek.fields["norms"], rtol=1e-3, atol=0)


@pytest.mark.gpu
@torch.no_grad()
def test_nan_in_k_on_cuda_raises_when_the_forward_returns():
    """The GPU encode's NaN/Inf check is deferred to the end of the forward (no host sync per layer)."""
    from octopus_diffusers.codecs import CodecError

    transformer, (x, t, ehs) = _tiny_wan_64_cuda_half()
    with _nan_in_channel_0(transformer.blocks[0].attn1.to_k):
        with quantize_attention(transformer, codec="turboquant", bits=3):
            with pytest.raises(CodecError, match=r"blocks\.0\.attn1.*NaN or Inf"):
                transformer(x, t, ehs, return_dict=False)


@pytest.mark.gpu
@torch.no_grad()
def test_nan_in_cached_cross_attention_k_raises_on_every_forward():
    """Cached cross-attention K/V with NaN are dropped when the deferred check fires, so the next forward
    with the same prompt re-encodes and raises again instead of reusing them silently."""
    from octopus_diffusers.codecs import CodecError

    transformer, (x, t, ehs) = _tiny_wan_64_cuda_half()
    with _nan_in_channel_0(transformer.blocks[0].attn2.to_k):
        with quantize_attention(transformer, codec="turboquant", bits=3) as handle:
            assert any(q.cache_enabled for q in handle.quantizers)
            for _ in range(2):
                with pytest.raises(CodecError, match=r"blocks\.0\.attn2.*NaN or Inf"):
                    transformer(x, t, ehs, return_dict=False)


@pytest.mark.gpu
def test_codec_none_stays_bit_identical_on_cuda():
    transformer, inputs = _tiny_wan_64()
    plain = _forward(transformer, inputs, CUDA, torch.float16)
    with quantize_attention(transformer, codec="none") as handle:
        hooked = _forward(transformer, inputs, CUDA, torch.float16)
        assert {q.last_choice.path for q in handle.quantizers} == {"reference"}
    assert torch.equal(hooked, plain)


@pytest.mark.gpu
def test_codec_without_kernels_runs_the_reference_on_cuda():
    """polarquant has no Triton kernel: the reference codec runs on CUDA with the same values."""
    transformer, inputs = _tiny_wan_64()
    with quantize_attention(transformer, codec="polarquant", bits=4) as handle:
        reference = _forward(transformer, inputs, CPU)
        gpu = _forward(transformer, inputs, CUDA)
        assert {q.last_choice.path for q in handle.quantizers} == {"reference"}
    assert_close("polarquant tiny Wan on CUDA", reference, gpu, rel_rms=1e-3)


@pytest.mark.gpu
@torch.no_grad()
def test_compiled_gpu_path_matches_eager():
    """Under torch.compile the GPU path runs through the kernels' custom ops (fullgraph, no breaks)."""
    transformer, (x, t, ehs) = _tiny_wan_64_cuda_half()
    torch._dynamo.reset()
    try:
        with quantize_attention(transformer, codec="octopus", bits=3) as handle:
            eager = transformer(x, t, ehs, return_dict=False)[0]
            eager_bytes = handle.stats()["total"]["bytes_stored"]
            handle.reset()
            compiled = torch.compile(transformer, fullgraph=True, backend="aot_eager")(x, t, ehs, return_dict=False)[0]
            # One forward: the eager cache missed (encoded once), compiled code bypasses it (encodes once).
            assert handle.stats()["total"]["bytes_stored"] == eager_bytes
        assert_close("compiled tiny Wan", eager, compiled, rel_rms=1e-3)
    finally:
        torch._dynamo.reset()
