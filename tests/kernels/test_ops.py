"""The public entry points and torch.library ops: CPU reference path, fake shapes, torch.compile."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from helpers import DEVICE, assert_close

import octopus_diffusers.kernels as kernels
from octopus_diffusers.codecs import CodecError, get_codec
from octopus_diffusers.kernels.api import Layout, choose_method
from octopus_diffusers.kernels.dispatch import CROSSOVER
from octopus_diffusers.kernels.reference import packed_attention


def _packed(codec, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return codec.encode(torch.randn(*shape, generator=g))


def test_cpu_entry_points_are_the_reference():
    codec = get_codec("octopus", 64, 3)
    x = torch.randn(2, 3, 8, 64)
    packed = kernels.encode(codec, x)
    ref = codec.encode(x)
    assert torch.equal(packed.fields["codes"], ref.fields["codes"]) and packed.meta == ref.meta
    assert torch.equal(kernels.decode(codec, packed), codec.decode(packed))
    q = torch.randn(2, 6, 5, 64)
    out = kernels.attention(q, packed, packed, codec, codec)
    assert torch.equal(out, packed_attention(q, packed, packed, codec, codec, None, None, "BHSD"))


def test_a_freed_codec_leaves_the_registry_with_its_spec_and_tables():
    """The codec registry and the spec caches are weak: once the last user drops a codec (a restored
    handle), its key no longer resolves and its kernel spec, with the tables filled on the spec, is
    freed too. While the codec lives, its key is stable."""
    from octopus_diffusers.kernels.attention.decoded import decode_rotated

    codec = get_codec("turboquant", 64, 3)
    key = kernels.ops.register_codec(codec)
    assert kernels.ops.register_codec(codec) == key and kernels.ops.codec_for(key) is codec
    spec = kernels.kernel_spec(codec)
    decode_rotated(_packed(codec, (1, 1, 2, 64)).to(DEVICE), spec, torch.float16)  # fills the spec's tables
    codec_ref, spec_ref = weakref.ref(codec), weakref.ref(spec)
    del codec, spec
    gc.collect()
    assert codec_ref() is None and spec_ref() is None
    with pytest.raises(CodecError, match="no codec registered"):
        kernels.ops.codec_for(key)
    assert kernels.ops.register_codec(get_codec("turboquant", 64, 3)) != key  # keys are never reused


def test_stray_top_level_sub_packages_stay_inert():
    """From a checkout's root, ``kernels`` and its sub-packages are importable under a stray top-level
    name (transformers probes for Hugging Face's ``kernels``): that copy must load nothing, so the
    ops and their codec registry exist once, under ``octopus_diffusers.kernels``."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, kernels, kernels.attention, kernels.octopus, kernels.turboquant, kernels.tl\n"
            "assert not hasattr(kernels, 'encode'), 'stray kernels loaded the api'\n"
            "loaded = sorted(m for m in sys.modules if m.startswith('kernels.') or m in ('torch', 'triton'))\n"
            "assert loaded == ['kernels.attention', 'kernels.octopus', 'kernels.tl', 'kernels.turboquant'], loaded\n")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_encode_of_a_transposed_bshd_view_is_not_copied():
    """diffusers keeps K/V as (B, S, H, D); their (B, H, S, D) view is encoded in place and the codes come
    back as the same kind of view, equal to encoding a contiguous copy."""
    codec = get_codec("turboquant", 64, 3)
    x_bshd = torch.randn(2, 9, 3, 64)
    view = x_bshd.transpose(1, 2)
    packed = kernels.encode(codec, view)
    ref = codec.encode(view.contiguous())
    assert packed.shape == view.shape == ref.shape
    for name in ("codes", "norms"):
        assert torch.equal(packed.fields[name], ref.fields[name])
        assert not packed.fields[name].is_contiguous() and packed.fields[name].transpose(1, 2).is_contiguous()
    assert torch.equal(kernels.decode(codec, packed), codec.decode(ref))


def test_fake_implementations_give_shapes_and_dtypes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    codec = get_codec("turboquant", 128, 3)
    key = kernels.ops.register_codec(codec)
    with FakeTensorMode():
        x = torch.empty(2, 5, 128, dtype=torch.float16)
        codes, norms = torch.ops.octopus_diffusers.encode(x, key, False)
        assert codes.shape == (2, 5, 48) and codes.dtype == torch.uint8 and norms.shape == (2, 5)
        y = torch.ops.octopus_diffusers.decode(codes, norms, key, torch.bfloat16)
        assert y.shape == (2, 5, 128) and y.dtype == torch.bfloat16
        q = torch.empty(2, 4, 7, 128, dtype=torch.float16)
        out = torch.ops.octopus_diffusers.attention(q, codes[:, None], norms[:, None], codes[:, None],
                                                    norms[:, None], key, key, None, None, "BHSD", "fused")
        assert out.shape == q.shape and out.dtype == q.dtype


def test_torch_compile_fullgraph_has_no_graph_break():
    codec = get_codec("octopus", 64, 2)
    assert kernels.supports(codec)  # builds the kernel spec outside the compiled region (documented)
    packed = _packed(codec, (1, 2, 12, 64))
    q = torch.randn(1, 2, 4, 64)
    compiled = torch.compile(lambda t: kernels.attention(t, packed, packed, codec, codec) * 2, fullgraph=True,
                             backend="eager")
    assert_close("compiled", kernels.attention(q, packed, packed, codec, codec) * 2, compiled(q), rel_rms=1e-6)


def test_dispatch_uses_reference_path_on_cpu_and_refuses_bad_arguments():
    codec = get_codec("turboquant", 64, 3)
    assert choose_method((1, 2, 16, 64), 2, codec, codec, torch.device("cpu")).method == "decoded"
    packed = _packed(codec, (1, 2, 12, 64))
    q = torch.randn(1, 2, 4, 64)
    with pytest.raises(CodecError, match="method"):
        kernels.attention(q, packed, packed, codec, codec, method="magic")
    with pytest.raises(CodecError, match="head_dim"):
        kernels.attention(torch.randn(1, 2, 4, 32), packed, packed, codec, codec)
    with pytest.raises(CodecError, match="configuration"):
        kernels.decode(get_codec("turboquant", 64, 2), packed)
    with pytest.raises(CodecError, match="layout must be 'BHSD' or 'BSHD', got 'BSDH'"):
        kernels.attention(q, packed, packed, codec, codec, layout="BSDH")
    assert kernels.supports(codec) and not kernels.supports(get_codec("octopus", 96, 3))


def test_dispatch_follows_the_measured_crossover():
    octo, tq = get_codec("octopus", 128, 3), get_codec("turboquant", 128, 3)
    cuda = torch.device("cuda")

    def method(rows, codec_k, codec_v):
        return choose_method((1, 1, rows, 128), 1, codec_k, codec_v, cuda).method

    limit_octo, limit_tq = CROSSOVER[("octopus", 128)], CROSSOVER[("turboquant", 128)]
    assert limit_octo != limit_tq  # so the mixed case below tells which limit applies
    for codec, limit in ((octo, limit_octo), (tq, limit_tq)):
        if limit:
            assert method(limit, codec, codec) == "fused"
        assert method(limit + 1, codec, codec) == "decoded"
        assert method(1560, codec, codec) == "decoded"
    assert method(1, octo, octo) == ("fused" if limit_octo >= 1 else "decoded")
    # both codecs must favour the fused kernel: the smaller limit decides
    for rows in (1, 16, max(limit_octo, limit_tq)):
        expected = "fused" if rows <= min(limit_octo, limit_tq) else "decoded"
        assert method(rows, octo, tq) == method(rows, tq, octo) == expected
    assert method(16, get_codec("turboquant", 64, 3), tq) == "decoded"  # unmeasured


def test_rows_per_kv_head_count_query_heads_per_kv_head_in_either_layout():
    """Nq * Hq / Hkv query rows share a KV head (GQA): 8 queries x 4 heads over 1 KV head are 32 rows."""
    tq = get_codec("turboquant", 128, 3)
    limit = CROSSOVER[("turboquant", 128)]
    cuda = torch.device("cuda")
    for layout, shape in ((Layout.BHSD, (1, 4, limit // 4, 128)), (Layout.BSHD, (1, limit // 4, 4, 128))):
        assert choose_method(shape, 1, tq, tq, cuda, layout).method == "fused"
        assert choose_method(shape, 1, tq, tq, cuda, layout.value).method == "fused"
    over = choose_method((1, 4, limit // 4 + 1, 128), 1, tq, tq, cuda)
    assert over.method == "decoded" and f"over {limit} query rows" in over.reason


def test_tensor_level_entries_equal_the_packed_ones_and_trace_without_a_break():
    """encode_codes / decode_codes / attention_codes / roundtrip: the fields of the packed entries, and
    one compiled graph (fullgraph) over all of them."""
    codec = get_codec("octopus", 64, 3)
    polar = get_codec("polarquant", 64, 4)
    assert kernels.supports(codec) and not kernels.supports(polar)  # registers both, outside the graph
    x, q = torch.randn(1, 2, 12, 64), torch.randn(1, 2, 4, 64)
    packed = kernels.encode(codec, x)
    codes, norms = kernels.api.encode_codes(codec, x)
    assert torch.equal(codes, packed.fields["codes"]) and torch.equal(norms, packed.fields["norms"])
    assert torch.equal(kernels.api.decode_codes(codec, codes, norms, x.dtype), codec.decode(packed))
    assert torch.equal(kernels.api.roundtrip(polar, x), polar.roundtrip(x))

    def all_entries(t):
        c, n = kernels.api.encode_codes(codec, t)
        out = kernels.api.attention_codes(q, c, n, c, n, codec, codec)
        return out + kernels.api.decode_codes(codec, c, n, t.dtype).mean() + kernels.api.roundtrip(polar, t).mean()

    compiled = torch.compile(all_entries, fullgraph=True, backend="eager")
    assert_close("compiled entries", all_entries(x), compiled(x), rel_rms=1e-6)


def test_kv_roundtrip_op_fake_and_unknown_key():
    from torch._subclasses.fake_tensor import FakeTensorMode

    codec = get_codec("qjl", 64, 1)
    key = kernels.ops.register_codec(codec)
    with FakeTensorMode():
        y = torch.ops.octopus_diffusers.kv_roundtrip(torch.empty(2, 3, 64, dtype=torch.bfloat16), key)
        assert y.shape == (2, 3, 64) and y.dtype == torch.bfloat16
    with pytest.raises(CodecError, match="no codec registered under 'nope'"):
        torch.ops.octopus_diffusers.kv_roundtrip(torch.zeros(1, 64), "nope")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("name", ["octopus", "turboquant"])
def test_encode_refuses_nan_and_overflowing_norms(device, name):
    """NaN/Inf input, or a finite vector whose norm overflows the fp16 norms, is a CodecError. On the GPU
    the kernel's norms show it (no extra pass over x); ``check_finite=False`` leaves the check to the
    caller, who reads ``Codec.count_nonfinite_side_info``."""
    codec = get_codec(name, 64, 3)
    x = torch.randn(2, 3, 5, 64, dtype=torch.float16, device=device)
    bad = x.clone()
    bad[1, 2, 3, 4] = float("nan")
    huge = torch.full_like(x, 30000.0)
    for tensor in (bad, huge):
        with pytest.raises(CodecError, match="NaN or Inf"):
            kernels.encode(codec, tensor, fused_rotation=device == "cuda")
    if device == "cuda":
        packed = kernels.encode(codec, bad, fused_rotation=True, check_finite=False)
        assert int(codec.count_nonfinite_side_info(packed)) == 1
