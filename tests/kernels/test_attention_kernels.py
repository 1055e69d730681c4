"""Both attention kernels against ``kernels.reference``: float32 attention on the reference-decoded
K/V (``attention_on_decoded``) and, before the output rotation, ``rotated_attention``.

Launch variants (tiles, splits, lookups, code reads, epilogue) go through the private
``FusedVariant`` entry and must match the production launch to float rounding. OCTOPUS cases run the
experimental plane kernel (``attention/fused_planes.py``, never dispatched).

Tolerance: relative RMS error <= 1e-3 (the kernels' operands are fp16: the rotated, pre-scaled
queries, the decoded unit vectors and the probabilities; accumulation is fp32). The fused kernel is
checked on its float32 output, so bf16 inputs are not charged for bf16 output rounding.
Interpreter shapes are small (N <= 64); GQA, masks, layouts, head_dim 64/128 and split-KV covered.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import DEVICE, assert_close
from kernel_checks import attention_case, masks, to_bshd

from octopus_diffusers.codecs import CodecError
from octopus_diffusers.kernels.attention.decoded import decoded_attention
from octopus_diffusers.kernels.attention.fused_launch import (
    FusedLaunch,
    FusedVariant,
    _fused_attention_rotated,
    gpu_tiles,
    _fused_attention_variant,
    fused_attention,
    merge_splits,
    prmt_tables,
    word_codes,
)
from octopus_diffusers.kernels.reference import (attention_on_decoded, combine_splits, from_planes,
                                                 reference_rotated, rotated_attention)
from octopus_diffusers.kernels.spec import kernel_spec
from octopus_diffusers.kernels.tl.helpers import LOOKUP_SELECT

#: Two kernel variants that decode the same fp16 values (code reads, codebook lookups) may still sum
#: the score and output products in another order on the GPU (other operand layouts): far below the 1e-3 bound.
SAME_VALUES = 1e-5
#: The in-kernel query/output rotations (tf32x3 products) against torch's float32 GEMMs: the rotated
#: queries are rounded to fp16 afterwards, so a few elements may land one fp16 ulp apart.
SAME_ROTATION = 1e-4


def variant(q, kp, vp, ck, cv, attn_mask=None, *, scale=None, layout="BHSD", out_dtype=None, **switches):
    """The fused kernel with comparison switches (``FusedVariant``: splits, tiles, lookups, code reads)."""
    return _fused_attention_variant(q, kp, vp, kernel_spec(ck), kernel_spec(cv), attn_mask, scale, layout,
                                    out_dtype, FusedVariant(**switches))


@pytest.mark.parametrize("name,bits", [("octopus", 3), ("turboquant", 3), ("turboquant", 2.5)])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_fused_and_decoded_match_reference_d64(name, bits, mask_kind):
    q, kp, vp, ck, cv, k_hat, v_hat = attention_case(name, 64, bits, torch.float16)
    mask = masks(q.shape[2], k_hat.shape[2])[mask_kind]
    ref = attention_on_decoded(q, k_hat, v_hat, mask)
    fused = fused_attention(q, kp, vp, kernel_spec(ck), kernel_spec(cv), mask, out_dtype=torch.float32)
    assert_close("fused", ref, fused)
    decoded = decoded_attention(q.float(), kp, vp, kernel_spec(ck), kernel_spec(cv), mask)
    assert_close("decoded", ref, decoded)


@pytest.mark.parametrize("name", ["octopus", "turboquant"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_head_dim_128_dtypes_and_split_kv(name, dtype):
    q, kp, vp, ck, cv, k_hat, v_hat = attention_case(name, 128, 3, dtype, hq=2, hkv=1, nq=16, nkv=48)
    ref = attention_on_decoded(q, k_hat, v_hat, scale=0.05)
    for splits in (1, 3):
        out = variant(q, kp, vp, ck, cv, scale=0.05, out_dtype=torch.float32, splits=splits)
        assert_close(f"out {splits}", ref, out)
    assert fused_attention(q, kp, vp, kernel_spec(ck), kernel_spec(cv), scale=0.05).dtype == dtype
    # Decode-then-attend in the input dtype (half-precision rotations): output rounding included.
    decoded = decoded_attention(q, kp, vp, kernel_spec(ck), kernel_spec(cv), scale=0.05)
    assert decoded.dtype == dtype
    assert_close("decoded", ref, decoded, (2e-3 if dtype == torch.float16 else 1e-2))


@pytest.mark.parametrize("name,bits", [("octopus", 2), ("turboquant", 2.5)])
def test_fused_select_lookup_matches_reference(name, bits):
    q, kp, vp, ck, cv, k_hat, v_hat = attention_case(name, 64, bits, torch.float16, nq=16, nkv=24)
    ref = attention_on_decoded(q, k_hat, v_hat)
    out = variant(q, kp, vp, ck, cv, out_dtype=torch.float32, lookup=LOOKUP_SELECT)
    assert_close("out", ref, out)


# TurboQuant: 5-9 s under the interpreter on 2 shared cores (in-kernel tf32x3 rotation)
@pytest.mark.parametrize("name", ["octopus", pytest.param("turboquant", marks=pytest.mark.slow)])
def test_rotated_output_is_the_reference_rotated_attention_and_fully_written(name):
    """Before ``R_v``, the kernel's per-split outputs merge to ``reference.rotated_attention`` (OCTOPUS
    values: in plane layout), and every element of the output buffer, plane padding included, is
    written (the buffer starts NaN: tests/conftest.py's canary)."""
    q, kp, vp, ck, cv, _, _ = attention_case(name, 64, 3, torch.float16, nq=20, nkv=33)
    ref = rotated_attention(q.cpu(), reference_rotated(ck, kp.to("cpu")), reference_rotated(cv, vp.to("cpu")),
                            kernel_spec(ck).rotation)
    for splits in (1, 2):
        out, lse = _fused_attention_rotated(q, kp, vp, kernel_spec(ck), kernel_spec(cv),
                                            variant=FusedVariant(splits=splits))
        assert not out.isnan().any()
        merged = combine_splits(out, lse) if lse is not None else out[0]
        merged = from_planes(merged, 64) if name == "octopus" else merged
        assert_close(f"rotated output, {splits} splits", ref, merged, 2e-3)  # fp16 output with one split


def test_bshd_layout_matches_bhsd():
    q, kp, vp, ck, cv, k_hat, v_hat = attention_case("octopus", 64, 3, torch.float16, nq=16, nkv=24)
    ref = attention_on_decoded(q, k_hat, v_hat)
    kp_s, vp_s = to_bshd(kp), to_bshd(vp)
    q_s = q.transpose(1, 2).contiguous()
    for fn in (fused_attention, decoded_attention):
        out = fn(q_s, kp_s, vp_s, kernel_spec(ck), kernel_spec(cv), layout="BSHD")
        assert out.shape == q_s.shape
        assert_close(fn.__name__, ref, out.transpose(1, 2), 2e-3)  # fp16 output rounding included


def test_bad_shapes_are_refused():
    q, kp, vp, ck, cv, _, _ = attention_case("turboquant", 64, 3, torch.float16, hq=3, hkv=2)
    with pytest.raises(CodecError, match="multiple"):
        fused_attention(q, kp, vp, kernel_spec(ck), kernel_spec(cv))
    with pytest.raises(CodecError, match="layout"):
        fused_attention(q, kp, vp, kernel_spec(ck), kernel_spec(cv), layout="SBHD")
    with pytest.raises(CodecError, match="broadcast"):
        fused_attention(q[:, :2], kp, vp, kernel_spec(ck), kernel_spec(cv),
                        attn_mask=torch.ones(5, 7, dtype=torch.bool, device=DEVICE))


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_grouped_unpack_matches_per_field_reads(bits):
    """TurboQuant at an integer rate reads codes by byte groups (tl_helpers.unpack_grouped); the same
    attention must come out as with the per-field reads, for every width the groups cover."""
    q, kp, vp, ck, cv, k_hat, v_hat = attention_case("turboquant", 64, bits, torch.float16, nq=16, nkv=24)
    ref = attention_on_decoded(q, k_hat, v_hat)
    grouped = fused_attention(q, kp, vp, kernel_spec(ck), kernel_spec(cv), out_dtype=torch.float32)
    per_field = variant(q, kp, vp, ck, cv, out_dtype=torch.float32, grouped_unpack=False)
    assert_close("grouped", ref, grouped)
    assert_close("grouped vs per-field reads", per_field, grouped, SAME_VALUES)


#: Explicit few-query tiles for the loop tests, so that 100 keys span several KV tiles (and 3 splits
#: stay 2 splits of 2 tiles) on the GPU too, whose default BLOCK_N at 16 queries is 128.
FEW_QUERY_BLOCKS = (16, 32, 4, 2)


@pytest.mark.parametrize("splits", [1, 3])
def test_prefetching_loop_matches_plain_loop(splits):
    """Loading the next KV tile's codes one iteration ahead (tail tile masked, per split) must not
    change the result; 100 keys = several 32-key tiles and a partial last one."""
    q, kp, vp, ck, cv, k_hat, v_hat = attention_case("turboquant", 64, 3, torch.float16, nq=16, nkv=100)
    mask = masks(16, 100)["bool"]
    ref = attention_on_decoded(q, k_hat, v_hat, mask)
    kw = {"out_dtype": torch.float32, "splits": splits, "blocks": FEW_QUERY_BLOCKS}
    ahead = variant(q, kp, vp, ck, cv, mask, **kw)
    plain = variant(q, kp, vp, ck, cv, mask, prefetch=False, **kw)
    assert_close("ahead", ref, ahead)
    assert_close("prefetching vs plain loop", plain, ahead, SAME_VALUES)


def test_field_groups_cover_byte_aligned_widths_only():
    from octopus_diffusers.kernels.tl.helpers import field_groups
    assert [field_groups(w, 128) for w in (1, 2, 3, 4, 5, 6, 8)] == [
        (8, 1), (4, 1), (8, 3), (2, 1), (0, 0), (4, 3), (1, 1)]


@pytest.mark.slow  # 6-18 s per layout under the interpreter on 2 shared cores (in-kernel tf32x3 rotations)
@pytest.mark.parametrize("layout", ["BHSD", "BSHD"])
def test_fused_epilogue_matches_torch_epilogue(layout):
    """The kernel's own query/output rotations and the one-launch split merge (few-query path) give
    what the torch GEMMs and combine_splits give, with one split or several, in either layout."""
    name = "turboquant"
    q, kp, vp, ck, cv, k_hat, v_hat = attention_case(name, 64, 3, torch.float16, nq=16, nkv=100)
    mask = masks(16, 100)["additive"]
    ref = attention_on_decoded(q, k_hat, v_hat, mask)
    if layout == "BSHD":
        q = q.transpose(1, 2).contiguous()
        kp, vp = to_bshd(kp), to_bshd(vp)
    for splits in (1, 3):
        kw = {"layout": layout, "out_dtype": torch.float32, "splits": splits, "blocks": FEW_QUERY_BLOCKS}
        fused = variant(q, kp, vp, ck, cv, mask, **kw)
        torch_path = variant(q, kp, vp, ck, cv, mask, fused_epilogue=False, **kw)
        assert fused.shape == q.shape
        assert_close(f"fused vs torch epilogue, {splits} splits", torch_path, fused, SAME_ROTATION)
        assert_close(f"fused epilogue, {splits} splits", ref, fused if layout == "BHSD" else fused.transpose(1, 2))


def test_experimental_octopus_plane_kernel_attends_mixed_pairs_with_the_torch_epilogue():
    """EXPERIMENTAL kernel (attention/fused_planes.py, never dispatched): OCTOPUS never takes the fused
    epilogue (wrong / NaN output on the H100, fewq_pass.md); OCTOPUS pairs and mixed TurboQuant /
    OCTOPUS K and V attend correctly; TurboQuant pairs keep the few-query path."""
    q, kp, vp, ck, cv, k_oct, v_oct = attention_case("octopus", 128, 3, torch.float16, nq=16, nkv=40)
    _, tq_kp, tq_vp, tq_ck, tq_cv, k_tq, v_tq = attention_case("turboquant", 128, 3, torch.float16, nq=16, nkv=40)
    for k_pair, v_pair, k_hat, v_hat in (((kp, ck), (vp, cv), k_oct, v_oct), ((tq_kp, tq_ck), (vp, cv), k_tq, v_oct),
                                         ((kp, ck), (tq_vp, tq_cv), k_oct, v_tq)):
        launch = FusedLaunch(q, k_pair[0], v_pair[0], kernel_spec(k_pair[1]), kernel_spec(v_pair[1]), "BHSD")
        assert not launch.small_tiles and not launch.words
        out = fused_attention(q, k_pair[0], v_pair[0], kernel_spec(k_pair[1]), kernel_spec(v_pair[1]),
                              out_dtype=torch.float32)
        assert_close("out", attention_on_decoded(q, k_hat, v_hat), out)
    launch = FusedLaunch(q, tq_kp, tq_vp, kernel_spec(tq_ck), kernel_spec(tq_cv), "BHSD")
    assert launch.small_tiles and launch.words


def test_gpu_tile_table_covers_every_shape_and_avoids_the_tiles_that_failed_on_the_h100():
    """Every shape gets a row of FUSED_TILES; OCTOPUS keys never get the two tiles that produced wrong
    scores on the H100 (BLOCK_M = 16, and (128, 128) with 8 warps); query tiles are powers of two of
    at least 16 rows (tl.dot)."""
    for octopus_keys in (False, True):
        for d in (64, 128):
            for prefetch in (False, True):
                for n_q in (1, 16, 17, 64, 65, 128, 129, 1560, 32760):
                    for n_kv in (1, 512, 1024, 1025, 32760):
                        bm, bn, warps, stages = gpu_tiles(n_q, n_kv, d, octopus_keys, prefetch and not octopus_keys)
                        assert bm >= 16 and bm & (bm - 1) == 0 and bn >= 16 and bn & (bn - 1) == 0
                        if octopus_keys:
                            assert bm != 16 and (bm, bn, warps) != (128, 128, 8)


def test_merge_splits_matches_combine_splits():
    """The merge kernel weights splits as combine_splits does, including splits and rows that saw no
    unmasked key (lse = -inf: weight 0; a row with none at all gives 0)."""
    g = torch.Generator().manual_seed(5)
    part = torch.randn(5, 1, 2, 3, 64, generator=g).to(DEVICE)
    lse = (torch.randn(5, 1, 2, 3, generator=g) * 4).to(DEVICE)
    lse[1, 0, 0, 0] = float("-inf")
    lse[:, 0, 1, 2] = float("-inf")
    out = torch.full((1, 2, 3, 64), float("nan"), device=DEVICE)
    merge_splits(part, lse, out)
    ref = combine_splits(part, lse)
    assert_close("merge kernel", ref, out, rel_rms=1e-6, max_abs=1e-6)
    assert out[0, 1, 2].abs().max() == 0


def test_word_and_byte_code_reads_agree():
    """TurboQuant codes at a 4-byte aligned address are read as 32-bit words, others by byte groups;
    both reads must give the same attention (codes at an odd byte offset force the byte path)."""
    q, kp, vp, ck, cv, k_hat, v_hat = attention_case("turboquant", 64, 3, torch.float16, nq=16, nkv=40)

    def shifted(p):
        codes = p.fields["codes"]
        buf = torch.zeros(*codes.shape[:-1], codes.shape[-1] + 1, dtype=torch.uint8, device=codes.device)
        buf[..., 1:] = codes
        return dataclasses.replace(p, fields={"codes": buf[..., 1:], "norms": p.fields["norms"]})

    kps, vps = shifted(kp), shifted(vp)
    assert word_codes(kp, kernel_spec(ck)) and not word_codes(kps, kernel_spec(ck))
    words = fused_attention(q, kp, vp, kernel_spec(ck), kernel_spec(cv), out_dtype=torch.float32)
    groups = fused_attention(q, kps, vps, kernel_spec(ck), kernel_spec(cv), out_dtype=torch.float32)
    assert_close("words", attention_on_decoded(q, k_hat, v_hat), words)
    assert_close("word vs byte reads", groups, words, SAME_VALUES)


def test_prmt_tables_hold_the_fp16_codebook():
    cb = torch.tensor([-2.5, -1.0, -0.25, -0.01, 0.01, 0.25, 1.0, 2.5])
    words = [w & 0xFFFFFFFF for w in prmt_tables(cb)]
    lo = [(words[i // 4] >> (8 * (i % 4))) & 0xFF for i in range(8)]
    hi = [(words[2 + i // 4] >> (8 * (i % 4))) & 0xFF for i in range(8)]
    halves = torch.tensor([l | h << 8 for l, h in zip(lo, hi)], dtype=torch.int32).to(torch.int16).view(torch.float16)
    assert torch.equal(halves, cb.to(torch.float16))
    with pytest.raises(CodecError, match="8 codebook entries"):
        prmt_tables(torch.zeros(16))


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [1, 2, 3])
def test_prmt_lookup_equals_gather_lookup(bits):
    """GPU only (inline PTX): the byte-permute codebook read against the gather. The two compiled
    kernels agreed to a relative 0.9-1.6e-5 on the H100 (docs/kernels/fewq_pass.md; origin not
    isolated: the word- and byte-read kernels agreed exactly), far below the 1e-3 bound."""
    q, kp, vp, ck, cv, _, _ = attention_case("turboquant", 128, bits, torch.float16, hq=12, hkv=4, nq=16, nkv=700)
    kw = {"out_dtype": torch.float32}
    prmt = variant(q, kp, vp, ck, cv, prmt_lookup=True, **kw)
    gather = variant(q, kp, vp, ck, cv, prmt_lookup=False, **kw)
    assert_close("prmt vs gather lookup", gather, prmt, SAME_ROTATION)
