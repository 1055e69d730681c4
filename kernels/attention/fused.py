"""Attention over compressed K/V, decoding the codes inside a FlashAttention-style loop.

No fp16 K or V is ever written to memory: each KV tile's codes are unpacked, looked up in
codebooks (held in registers, or by byte permutes, see below) and (OCTOPUS) unfolded from the
octahedron, right before the two matrix products. Everything per vector stays outside the tile
(performance.md):

* Q is rotated once, ``q_rot = q @ R_k.T``, and pre-scaled by ``scale * log2(e)`` (the loop works in
  base 2): by a torch GEMM before the kernel for large tiles, inside the kernel for few queries;
* ``gamma_k`` multiplies the score columns and ``gamma_v`` the probability columns;
* the output is accumulated in V's rotated basis and ``R_v`` is applied once at the end (a torch GEMM
  for large tiles, in the kernel for few queries).

OCTOPUS triplets do not fit power-of-two tiles, so its vectors are handled as three planes
(x, y, z coordinates of the ``ceil(d/3)`` triplets, each padded to ``TP`` = 64 for d = 128 or 32 for
d = 64): Q is split into planes outside (one GEMM with a permuted rotation), scores are the sum of
three plane products, and the output comes back as planes that one GEMM rotates back. The padding
costs 3*TP/d = 1.5x the matrix work of a plain d-wide tile.

Split-KV (flash-decoding) fills the GPU when few query tiles share a head: each split writes a
normalised partial output and its log-sum-exp, combined afterwards.

Few queries (query tiles of <= 64 rows, TurboQuant; docs/kernels/fewq_pass.md): the query and
output rotations run inside the kernel and the splits are merged by one small kernel, so a call is
two launches (the torch GEMMs and split combination cost more than the attention there); codes are
read as 32-bit words and split in-thread, so decoded tiles reach shared memory by 16-byte stores;
<= 3-bit codebooks are read by byte permutes (:func:`_lookup_prmt`).

The reference is :func:`..reference.rotated_attention` (before ``R_v``) and
:func:`..reference.attention_on_decoded` (after).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from octopus_diffusers.codecs import CodecError, PackedTensor

from ..octopus.decode import octopus_planes_tile
from ..reference import combine_splits
from ..spec import KernelSpec, OctopusSpec, device_codebooks, plane_width
from ..tl.helpers import codebook_for, field_groups, load_groups, lookup_any, split_groups
from ..turboquant.decode import tq_values


@triton.jit
def _lookup_prmt(idx, t0, t1, t2, t3):
    """fp16 ``codebook[idx]`` of an <= 8-entry codebook by byte permutes (GPU only: inline PTX).

    ``t0, t1`` hold the low bytes of the fp16 entries 0-3 and 4-7, ``t2, t3`` the high bytes
    (:func:`prmt_tables`). Four 3-bit indices go into one PRMT selector; two PRMTs fetch four low
    and four high bytes and two more interleave them into two fp16 pairs: 7 instructions per 4
    values, against a ``tl.gather`` or a 7-step compare-select chain per value. The looked-up values
    are ``codebook[idx].to(float16)`` (:func:`prmt_tables` is tested to hold exactly those bytes); the
    attention outputs of this and the gather path differed by up to 1.6e-5 relative on the H100
    (fewq_pass.md; cause not isolated), inside the kernels' 1e-3 bound."""
    return tl.inline_asm_elementwise(
        asm="""{
        .reg .b32 sel, lo, hi;
        mad.lo.u32 sel, $3, 16, $2;
        mad.lo.u32 sel, $4, 256, sel;
        mad.lo.u32 sel, $5, 4096, sel;
        prmt.b32 lo, $6, $10, sel;
        prmt.b32 hi, $14, $18, sel;
        prmt.b32 $0, lo, hi, 0x5140;
        prmt.b32 $1, lo, hi, 0x7362;
        }""",
        constraints="=r,=r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r",
        args=[idx, t0, t1, t2, t3], dtype=tl.float16, is_pure=True, pack=4)


def prmt_tables(codebook: torch.Tensor) -> tuple[int, int, int, int]:
    """The four int32 words :func:`_lookup_prmt` reads: low bytes of fp16 entries 0-3, 4-7, high bytes
    0-3, 4-7 (a codebook of 2**b <= 8 entries, padded with its last entry)."""
    if codebook.numel() > 8:
        raise CodecError(f"attention: byte-permute lookup takes <= 8 codebook entries, got {codebook.numel()}")
    cb = torch.cat([codebook.flatten(), codebook.flatten()[-1:].expand(8 - codebook.numel())])
    bits = cb.to(torch.float16).view(torch.int16).to(torch.int64) & 0xFFFF
    lo, hi = (bits & 0xFF).tolist(), (bits >> 8).tolist()

    def word(b: list[int]) -> int:
        w = b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24
        return w - (1 << 32) if w >= 1 << 31 else w  # a Triton int32 argument

    return word(lo[:4]), word(lo[4:]), word(hi[:4]), word(hi[4:])


@triton.jit
def _load_chunk_words(base, first, hi, s_n, R: tl.constexpr, NC: tl.constexpr, W: tl.constexpr):
    """Codes of ``W``-bit fields read as uint32 words: row ``r``'s chunk ``c`` (fields ``32c .. 32c+31``)
    is words ``W c .. W c + W - 1``. Returns four ``[R, NC]`` tiles for rows ``first .. first + R``
    (rows >= ``hi`` read as 0): words ``W c + i`` for ``i < W``, the scalar 0 for the others. ``base`` points
    at int32 words, ``s_n`` is the row stride in words. Loaded as flat vectors and reshaped, so
    consecutive lanes take consecutive chunks of a row: the decoded tile then keeps that order and
    reaches shared memory by 16-byte stores (a 2-D load tile put lanes along rows: 16-bit stores)."""
    i = tl.arange(0, R * NC)
    row = first + i // NC
    ok = row < hi
    ptr = base + row * s_n + (i % NC) * W
    w0 = tl.reshape(tl.load(ptr, mask=ok, other=0).to(tl.uint32, bitcast=True), (R, NC))
    w1 = 0  # unused slots stay scalars: a loop carrying copies of w0 spends registers on them
    w2 = 0
    w3 = 0
    if W > 1:
        w1 = tl.reshape(tl.load(ptr + 1, mask=ok, other=0).to(tl.uint32, bitcast=True), (R, NC))
    if W > 2:
        w2 = tl.reshape(tl.load(ptr + 2, mask=ok, other=0).to(tl.uint32, bitcast=True), (R, NC))
    if W > 3:
        w3 = tl.reshape(tl.load(ptr + 3, mask=ok, other=0).to(tl.uint32, bitcast=True), (R, NC))
    return w0, w1, w2, w3


@triton.jit
def _load_codes(base, first, hi, s_n, BLOCK_N: tl.constexpr, D: tl.constexpr, B: tl.constexpr, GE: tl.constexpr,
                GB: tl.constexpr, WORDS: tl.constexpr):
    """A KV tile's TurboQuant codes for the prefetching loop: :func:`_load_chunk_words` (``WORDS``;
    ``base`` an int32 view) or ``tl.helpers.load_groups`` byte groups (in the first of the four)."""
    if WORDS:
        w0, w1, w2, w3 = _load_chunk_words(base, first, hi, s_n, BLOCK_N, D // 32, B)
    else:
        rows = first + tl.arange(0, BLOCK_N)
        w0 = load_groups(base + rows[:, None] * s_n, (rows < hi)[:, None], D, GE, GB)
        w1 = 0
        w2 = 0
        w3 = 0
    return w0, w1, w2, w3


@triton.jit
def _code_indices(w0, w1, w2, w3, D: tl.constexpr, B: tl.constexpr, GE: tl.constexpr, WORDS: tl.constexpr):
    """int32 ``[BLOCK_N, D]`` codebook indices of what :func:`_load_codes` returned."""
    if WORDS:
        idx = _chunk_fields(w0, w1, w2, w3, 0, 1, 32, B)
    else:
        idx = split_groups(w0, D, B, GE)
    return idx


@triton.jit
def _chunk_field(w0, w1, w2, w3, E: tl.constexpr, W: tl.constexpr):
    """Field ``E`` (0..31) of each chunk: bits ``W E .. W E + W - 1`` of the chunk's words (int32)."""
    BIT: tl.constexpr = W * E
    SH: tl.constexpr = BIT % 32
    if BIT // 32 == 0:
        lo = w0
        hi = w1
    elif BIT // 32 == 1:
        lo = w1
        hi = w2
    elif BIT // 32 == 2:
        lo = w2
        hi = w3
    else:
        lo = w3
        hi = w3
    v = lo >> SH
    if SH + W > 32:
        v = v | (hi << (32 - SH))
    return (v & ((1 << W) - 1)).to(tl.int32)


@triton.jit
def _chunk_fields(w0, w1, w2, w3, E0: tl.constexpr, STRIDE: tl.constexpr, N: tl.constexpr, W: tl.constexpr):
    """Fields ``E0, E0 + STRIDE, ..`` (``N`` of them) of every chunk, interleaved: ``[R, NC * N]`` with
    each chunk's fields in consecutive registers of one thread (``tl.interleave`` keeps the new axis
    in-thread), so the decoded tile reaches shared memory by 16-byte stores."""
    if N == 1:
        out = _chunk_field(w0, w1, w2, w3, E0, W)
    else:
        out = tl.interleave(_chunk_fields(w0, w1, w2, w3, E0, 2 * STRIDE, N // 2, W),
                            _chunk_fields(w0, w1, w2, w3, E0 + STRIDE, 2 * STRIDE, N // 2, W))
    return out


LOG2E = 1.4426950408889634
#: Columns of the query matrix multiplied per step of the in-kernel query rotation (keeps the
#: float32 matrix slice in shared memory small: 32 x 128 x 4 B = 16 KB).
Q_ROT_CHUNK = 32


@triton.jit
def _rotated_queries(q_rows, s_qd, m_mask, QM, s_qmat, COL0: tl.constexpr, W: tl.constexpr, D: tl.constexpr,
                     q_scale, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr):
    """Columns ``[COL0, COL0 + W)`` of ``(q @ QM) * q_scale`` as the fp16 score operand, ``q`` read in
    its own dtype and strides. tf32x3 products keep float32 accuracy (the torch path's fp32 GEMM)."""
    acc = tl.zeros((BLOCK_M, W), dtype=tl.float32)
    cols = COL0 + tl.arange(0, W)[None, :]
    for k0 in range(0, D, CHUNK):  # a loop, not unrolled: one chunk's operands live at a time
        kk = k0 + tl.arange(0, CHUNK)
        qk = tl.load(q_rows + kk[None, :] * s_qd, mask=m_mask[:, None], other=0.0).to(tl.float32)
        mk = tl.load(QM + kk[:, None] * s_qmat + cols)
        acc = tl.dot(qk, mk, acc, input_precision="tf32x3")
    return (acc * q_scale).to(tl.float16)


@triton.jit
def _fused_attention_kernel(
        Q, s_qb, s_qh, s_qm, s_qd, QM, s_qmat, q_scale,
        KC, s_kcb, s_kch, s_kcn, KG, s_kgb, s_kgh, s_kgn,
        VC, s_vcb, s_vch, s_vcn, VG, s_vgb, s_vgh, s_vgn,
        KCB0, KCB1, KCB2, VCB0, VCB1, VCB2, k_t0, k_t1, k_t2, k_t3, v_t0, v_t1, v_t2, v_t3,
        MASK, s_mb, s_mh, s_mm, s_mn,
        O, s_ob, s_oh, s_om, s_od, s_os, OM, LSE, s_lb, s_lh, s_lm, s_ls,
        H, N_Q, N_KV, GROUP, KV_PER_SPLIT,
        D: tl.constexpr,
        K_OCT: tl.constexpr, K_B0: tl.constexpr, K_B1: tl.constexpr, K_B2: tl.constexpr,
        K_NBYTES: tl.constexpr, K_GE: tl.constexpr, K_GB: tl.constexpr,
        V_OCT: tl.constexpr, V_B0: tl.constexpr, V_B1: tl.constexpr, V_B2: tl.constexpr,
        V_NBYTES: tl.constexpr, V_GE: tl.constexpr, V_GB: tl.constexpr,
        T: tl.constexpr, TP: tl.constexpr,
        HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, SPLIT: tl.constexpr, SELECT: tl.constexpr,
        PREFETCH: tl.constexpr, WORDS: tl.constexpr, PRMT: tl.constexpr, ROTATE_Q: tl.constexpr, Q_CHUNK: tl.constexpr,
        ROTATE_OUT: tl.constexpr, O_CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < N_Q

    # ---- rotated, pre-scaled queries (fp16), planes for OCTOPUS keys --------------------------
    # ROTATE_Q: Q is the caller's query and QM the query matrix (rotation here, once per program);
    # else Q already holds the rotated, pre-scaled fp16 queries.
    q_rows = Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qm
    if K_OCT:
        if ROTATE_Q:
            q0 = _rotated_queries(q_rows, s_qd, m_mask, QM, s_qmat, 0, TP, D, q_scale, BLOCK_M, Q_CHUNK)
            q1 = _rotated_queries(q_rows, s_qd, m_mask, QM, s_qmat, TP, TP, D, q_scale, BLOCK_M, Q_CHUNK)
            q2 = _rotated_queries(q_rows, s_qd, m_mask, QM, s_qmat, 2 * TP, TP, D, q_scale, BLOCK_M, Q_CHUNK)
        else:
            tp = tl.arange(0, TP)[None, :]
            q0 = tl.load(q_rows + tp, mask=m_mask[:, None], other=0.0)
            q1 = tl.load(q_rows + TP + tp, mask=m_mask[:, None], other=0.0)
            q2 = tl.load(q_rows + 2 * TP + tp, mask=m_mask[:, None], other=0.0)
        kcb0 = codebook_for(KCB0, BLOCK_N, 1 << K_B0, SELECT)
        kcb1 = codebook_for(KCB1, BLOCK_N, 1 << K_B1, SELECT)
        kcb2 = codebook_for(KCB2, BLOCK_N, 1 << K_B2, SELECT)
    else:
        if ROTATE_Q:
            q0 = _rotated_queries(q_rows, s_qd, m_mask, QM, s_qmat, 0, D, D, q_scale, BLOCK_M, Q_CHUNK)
        else:
            q0 = tl.load(q_rows + tl.arange(0, D)[None, :], mask=m_mask[:, None], other=0.0)
        kcb0 = codebook_for(KCB0, BLOCK_N, 1 << K_B0, SELECT)
        kcb1 = codebook_for(KCB1, BLOCK_N, 1 << K_B1, SELECT)
    if V_OCT:
        vcb0 = codebook_for(VCB0, BLOCK_N, 1 << V_B0, SELECT)
        vcb1 = codebook_for(VCB1, BLOCK_N, 1 << V_B1, SELECT)
        vcb2 = codebook_for(VCB2, BLOCK_N, 1 << V_B2, SELECT)
        acc0 = tl.zeros((BLOCK_M, TP), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_M, TP), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_M, TP), dtype=tl.float32)
    else:
        vcb0 = codebook_for(VCB0, BLOCK_N, 1 << V_B0, SELECT)
        vcb1 = codebook_for(VCB1, BLOCK_N, 1 << V_B1, SELECT)
        acc0 = tl.zeros((BLOCK_M, D), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)

    # Loop bounds must be kernel arguments (the interpreter cannot loop over program-id tensors):
    # every split runs KV_PER_SPLIT keys, the tail masked.
    lo = pid_s * KV_PER_SPLIT
    hi = tl.minimum(lo + KV_PER_SPLIT, N_KV)
    kc_base = KC + b * s_kcb + hk * s_kch
    kg_base = KG + b * s_kgb + hk * s_kgh
    vc_base = VC + b * s_vcb + hk * s_vch
    vg_base = VG + b * s_vgb + hk * s_vgh
    if PREFETCH:
        # TurboQuant K and V read by 32-bit words (WORDS: KC / VC are int32 views, strides in words)
        # or byte groups: each iteration loads the next tile's codes and norms before decoding its
        # own, so the loads' latency overlaps this tile's work.
        offs_p = lo + tl.arange(0, BLOCK_N)
        p_mask = offs_p < hi
        kw0, kw1, kw2, kw3 = _load_codes(kc_base, lo, hi, s_kcn, BLOCK_N, D, K_B0, K_GE, K_GB, WORDS)
        vw0, vw1, vw2, vw3 = _load_codes(vc_base, lo, hi, s_vcn, BLOCK_N, D, V_B0, V_GE, V_GB, WORDS)
        g_k_nxt = tl.load(kg_base + offs_p * s_kgn, mask=p_mask, other=0.0).to(tl.float32)
        g_v_nxt = tl.load(vg_base + offs_p * s_vgn, mask=p_mask, other=0.0).to(tl.float32)
    for start in range(0, KV_PER_SPLIT, BLOCK_N):
        offs_n = lo + start + tl.arange(0, BLOCK_N)
        n_mask = offs_n < hi
        # ---- scores in base 2: (q_rot * scale * log2 e) . u_k * gamma_k ----------------------
        k_rows = kc_base + offs_n[:, None] * s_kcn
        if PREFETCH:
            offs_p = offs_n + BLOCK_N
            p_mask = offs_p < hi
            kc0, kc1, kc2, kc3, g_k = kw0, kw1, kw2, kw3, g_k_nxt
            vc0, vc1, vc2, vc3, g_v = vw0, vw1, vw2, vw3, g_v_nxt
            kw0, kw1, kw2, kw3 = _load_codes(kc_base, lo + start + BLOCK_N, hi, s_kcn, BLOCK_N, D, K_B0, K_GE, K_GB,
                                             WORDS)
            vw0, vw1, vw2, vw3 = _load_codes(vc_base, lo + start + BLOCK_N, hi, s_vcn, BLOCK_N, D, V_B0, V_GE, V_GB,
                                             WORDS)
            g_k_nxt = tl.load(kg_base + offs_p * s_kgn, mask=p_mask, other=0.0).to(tl.float32)
            g_v_nxt = tl.load(vg_base + offs_p * s_vgn, mask=p_mask, other=0.0).to(tl.float32)
            k_idx = _code_indices(kc0, kc1, kc2, kc3, D, K_B0, K_GE, WORDS)
            if PRMT:
                k = _lookup_prmt(k_idx, k_t0, k_t1, k_t2, k_t3)
            else:
                k = lookup_any(kcb0, k_idx, 1 << K_B0, SELECT).to(tl.float16)
            s = tl.dot(q0, tl.trans(k))
        elif K_OCT:
            kx, ky, kz = octopus_planes_tile(k_rows, n_mask[:, None], kcb0, kcb1, kcb2, T, TP, K_B0, K_B1,
                                             K_B2, K_NBYTES, SELECT)
            s = tl.dot(q0, tl.trans(kx.to(tl.float16)))
            s = tl.dot(q1, tl.trans(ky.to(tl.float16)), s)
            s = tl.dot(q2, tl.trans(kz.to(tl.float16)), s)
        else:
            k = tq_values(k_rows, n_mask[:, None], kcb0, kcb1, D, K_B2, K_B0, K_B1, K_NBYTES, SELECT, K_GE, K_GB)
            s = tl.dot(q0, tl.trans(k.to(tl.float16)))
        if not PREFETCH:
            g_k = tl.load(kg_base + offs_n * s_kgn, mask=n_mask, other=0.0).to(tl.float32)
        s = s * g_k[None, :]
        if HAS_MASK:
            m_ptrs = MASK + b * s_mb + h * s_mh + offs_m[:, None] * s_mm + offs_n[None, :] * s_mn
            mvals = tl.load(m_ptrs, mask=m_mask[:, None] & n_mask[None, :], other=0)
            if MASK_BOOL:
                s = tl.where(mvals != 0, s, float("-inf"))
            else:
                s = s + mvals.to(tl.float32) * 1.4426950408889634
        s = tl.where(n_mask[None, :], s, float("-inf"))
        # ---- online softmax (rows with every key masked so far keep m = -inf) ----------------
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
        # ---- values: gamma_v folded into P ----------------------------------------------------
        if not PREFETCH:
            g_v = tl.load(vg_base + offs_n * s_vgn, mask=n_mask, other=0.0).to(tl.float32)
        pv = (p * g_v[None, :]).to(tl.float16)
        v_rows = vc_base + offs_n[:, None] * s_vcn
        if PREFETCH:
            v_idx = _code_indices(vc0, vc1, vc2, vc3, D, V_B0, V_GE, WORDS)
            if PRMT:
                v = _lookup_prmt(v_idx, v_t0, v_t1, v_t2, v_t3)
            else:
                v = lookup_any(vcb0, v_idx, 1 << V_B0, SELECT).to(tl.float16)
            acc0 = tl.dot(pv, v, acc0 * alpha[:, None])
        elif V_OCT:
            vx, vy, vz = octopus_planes_tile(v_rows, n_mask[:, None], vcb0, vcb1, vcb2, T, TP, V_B0, V_B1,
                                             V_B2, V_NBYTES, SELECT)
            acc0 = tl.dot(pv, vx.to(tl.float16), acc0 * alpha[:, None])
            acc1 = tl.dot(pv, vy.to(tl.float16), acc1 * alpha[:, None])
            acc2 = tl.dot(pv, vz.to(tl.float16), acc2 * alpha[:, None])
        else:
            v = tq_values(v_rows, n_mask[:, None], vcb0, vcb1, D, V_B2, V_B0, V_B1, V_NBYTES, SELECT, V_GE, V_GB)
            acc0 = tl.dot(pv, v.to(tl.float16), acc0 * alpha[:, None])

    # ---- normalise and store (rows with no unmasked key give 0) ------------------------------
    inv_l = tl.where(l_i > 0, 1.0 / l_i, 0.0)
    o_rows = O + pid_s * s_os + b * s_ob + h * s_oh + offs_m[:, None] * s_om
    if ROTATE_OUT:
        if V_OCT:
            _store_rotated_back(o_rows, s_od, m_mask, acc0 * inv_l[:, None], acc1 * inv_l[:, None],
                                acc2 * inv_l[:, None], OM, True, TP, D, O_CHUNK)
        else:
            a0 = acc0 * inv_l[:, None]
            _store_rotated_back(o_rows, s_od, m_mask, a0, a0, a0, OM, False, D, D, O_CHUNK)
    elif V_OCT:
        tp_o = tl.arange(0, TP)[None, :] * s_od
        tl.store(o_rows + tp_o, (acc0 * inv_l[:, None]).to(O.dtype.element_ty), mask=m_mask[:, None])
        tl.store(o_rows + TP * s_od + tp_o, (acc1 * inv_l[:, None]).to(O.dtype.element_ty), mask=m_mask[:, None])
        tl.store(o_rows + 2 * TP * s_od + tp_o, (acc2 * inv_l[:, None]).to(O.dtype.element_ty),
                 mask=m_mask[:, None])
    else:
        tl.store(o_rows + tl.arange(0, D)[None, :] * s_od, (acc0 * inv_l[:, None]).to(O.dtype.element_ty),
                 mask=m_mask[:, None])
    if SPLIT:
        lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        tl.store(LSE + pid_s * s_ls + b * s_lb + h * s_lh + offs_m * s_lm, lse, mask=m_mask)


@triton.jit
def _store_rotated_back(o_rows, s_od, m_mask, a0, a1, a2, OM, V_OCT: tl.constexpr, W: tl.constexpr,
                        D: tl.constexpr, CHUNK: tl.constexpr):
    """Store ``o_rot @ OM`` (the output in the caller's basis; ``OM`` the ``(OW, D)`` float32
    :func:`output_matrix`, ``a0..a2`` the normalised planes of width ``W``, or ``a0`` alone), ``CHUNK``
    output columns per step so the matrix slice in shared memory stays small. tf32x3: float32 accuracy."""
    r = tl.arange(0, W)[:, None]
    for c0 in range(0, D, CHUNK):  # a loop, not unrolled: one chunk's operands live at a time
        cols = c0 + tl.arange(0, CHUNK)[None, :]
        res = tl.dot(a0, tl.load(OM + r * D + cols), input_precision="tf32x3")
        if V_OCT:
            res = tl.dot(a1, tl.load(OM + (W + r) * D + cols), res, input_precision="tf32x3")
            res = tl.dot(a2, tl.load(OM + (2 * W + r) * D + cols), res, input_precision="tf32x3")
        tl.store(o_rows + cols * s_od, res.to(o_rows.dtype.element_ty), mask=m_mask[:, None])


@triton.jit
def _merge_splits_kernel(O, s_os, s_ob, s_oh, s_om, LSE, s_ls, s_lb, s_lh, s_lm,
                         OUT, s_tb, s_th, s_tm, s_td, H, N_Q, N_SPLIT,
                         S_PAD: tl.constexpr, BLOCK_D: tl.constexpr):
    """One output row (b, h, m), ``BLOCK_D`` columns: the per-split outputs weighted by
    ``exp2(lse_s - max lse)`` (:func:`combine_splits`), all splits loaded at once, stored in OUT's
    dtype and strides."""
    row = tl.program_id(0)
    m = row % N_Q
    h = (row // N_Q) % H
    b = row // (N_Q * H)
    s = tl.arange(0, S_PAD)
    s_ok = s < N_SPLIT
    lse = tl.load(LSE + s * s_ls + b * s_lb + h * s_lh + m * s_lm, mask=s_ok, other=float("-inf"))
    top = tl.max(lse, 0)
    w = tl.exp2(lse - tl.where(top == float("-inf"), 0.0, top))
    den = tl.sum(w, 0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    o = tl.load(O + s[:, None] * s_os + b * s_ob + h * s_oh + m * s_om + cols[None, :], mask=s_ok[:, None],
                other=0.0)
    res = tl.sum(o * w[:, None], 0) / tl.where(den > 0, den, 1.0)
    tl.store(OUT + b * s_tb + h * s_th + m * s_tm + cols * s_td, res.to(OUT.dtype.element_ty))


# ------------------------------------------------------------------------------------------------
# Host side: rotations as plane matrices, argument plumbing, split-KV combination.
# ------------------------------------------------------------------------------------------------

_MATRIX_CACHE: dict[tuple, object] = {}


def query_matrix(spec: KernelSpec, device: torch.device) -> torch.Tensor:
    """``(d, QW)`` float32 matrix taking q to the kernel's query layout: ``q @ R.T``, as planes for
    OCTOPUS keys (column ``c * TP + i`` holds rotated coordinate ``3 i + c``)."""
    key = ("q", spec, device)
    if key not in _MATRIX_CACHE:
        r = spec.rotation.to(torch.float32)
        if isinstance(spec, OctopusSpec):
            _MATRIX_CACHE[key] = _plane_rows(r, spec.head_dim).T.contiguous().to(device)
        else:
            _MATRIX_CACHE[key] = r.T.contiguous().to(device)
    return _MATRIX_CACHE[key]


def output_matrix(spec: KernelSpec, device: torch.device) -> torch.Tensor:
    """``(OW, d)`` float32 matrix taking the kernel's rotated output back: ``o_rot @ R`` (planes for
    OCTOPUS values)."""
    key = ("o", spec, device)
    if key not in _MATRIX_CACHE:
        r = spec.rotation.to(torch.float32)
        rows = _plane_rows(r, spec.head_dim) if isinstance(spec, OctopusSpec) else r
        _MATRIX_CACHE[key] = rows.contiguous().to(device)
    return _MATRIX_CACHE[key]


def _plane_rows(r: torch.Tensor, d: int) -> torch.Tensor:
    """``(3 TP, d)``: row ``c * TP + i`` is row ``3 i + c`` of ``r`` (zero beyond d)."""
    tp = plane_width(d)
    out = torch.zeros(3 * tp, d, dtype=r.dtype)
    for c in range(3):
        idx = torch.arange(c, d, 3)
        out[c * tp: c * tp + idx.numel()] = r[idx]
    return out


def _codebooks(spec: KernelSpec, device: torch.device) -> tuple[tuple[torch.Tensor, ...], tuple[int, int, int]]:
    """Three codebooks and three integers per codec: OCTOPUS (xi, eta, rho) codebooks and widths;
    TurboQuant (hi, lo, hi) codebooks and (bits_hi, bits_lo, n_high)."""
    bits = (spec.bx, spec.be, spec.br) if isinstance(spec, OctopusSpec) else (spec.bits_hi, spec.bits_lo, spec.n_high)
    return device_codebooks(spec, device), bits


def _prmt_words(spec: KernelSpec) -> tuple[int, int, int, int]:
    """:func:`prmt_tables` of a TurboQuant spec's codebook (cached per spec)."""
    key = ("prmt", spec)
    if key not in _MATRIX_CACHE:
        _MATRIX_CACHE[key] = prmt_tables(spec.codebook_hi)
    return _MATRIX_CACHE[key]


def _groups(spec: KernelSpec, grouped: bool) -> tuple[int, int]:
    """Byte-group shape for :func:`unpack_grouped` (TurboQuant with one width), else ``(0, 0)``."""
    if not grouped or isinstance(spec, OctopusSpec) or spec.bits_hi != spec.bits_lo:
        return 0, 0
    return field_groups(spec.bits_hi, spec.head_dim)


def _word_codes(packed: PackedTensor, spec: KernelSpec) -> bool:
    """Whether the prefetching loop can read ``packed``'s codes as 32-bit words: TurboQuant with one
    width of <= 4 bits (32 fields = ``width`` whole words), rows and base 4-byte aligned."""
    if isinstance(spec, OctopusSpec) or spec.bits_hi != spec.bits_lo or spec.bits_hi > 4 or spec.head_dim % 32:
        return False
    codes = packed.fields["codes"]
    # Tensor.view(torch.int32) checks every stride, size-1 dims included.
    return codes.stride(-1) == 1 and codes.data_ptr() % 4 == 0 and all(st % 4 == 0 for st in codes.stride()[:-1])


def _row_strides(packed: PackedTensor, layout: str, words: bool = False
                 ) -> tuple[torch.Tensor, tuple[int, int, int], torch.Tensor, tuple[int, int, int]]:
    """Codes (an int32 view with ``words``, see :func:`_word_codes`) and norms with their (batch,
    head, token) strides for ``layout``."""
    codes, norms = packed.fields["codes"], packed.fields["norms"]
    if words:
        codes = codes.view(torch.int32)
    elif codes.stride(-1) != 1:
        codes = codes.contiguous()
    cs, ns = codes.stride(), norms.stride()
    if layout == "BHSD":
        return codes, (cs[0], cs[1], cs[2]), norms, (ns[0], ns[1], ns[2])
    return codes, (cs[0], cs[2], cs[1]), norms, (ns[0], ns[2], ns[1])


def prepare_mask(attn_mask: torch.Tensor | None, shape: tuple[int, int, int, int]
                 ) -> tuple[torch.Tensor | None, bool]:
    """Broadcast ``attn_mask`` to ``(B, H, Nq, Nkv)`` as a stride-0 view (no copy); bool or float."""
    if attn_mask is None:
        return None, False
    if attn_mask.dtype == torch.bool:
        m = attn_mask.view(torch.uint8) if attn_mask.stride(-1) == 1 or attn_mask.dim() == 0 else attn_mask.to(torch.uint8)
        is_bool = True
    elif attn_mask.dtype.is_floating_point:
        m, is_bool = attn_mask, False
    else:
        raise TypeError(f"attention: attn_mask must be bool or floating point, got {attn_mask.dtype}")
    try:
        m = m.expand(shape)
    except RuntimeError as exc:
        raise CodecError(f"attention: attn_mask of shape {tuple(attn_mask.shape)} does not broadcast "
                         f"to (B, H, Nq, Nkv) = {shape}") from exc
    return m, is_bool


def _default_blocks(n_q: int, n_kv: int, d: int, octopus_keys: bool, prefetch_loop: bool
                    ) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) on the GPU; small tiles in the interpreter.

    OCTOPUS keys never get BLOCK_M = 16: on the H100 (Triton 3.6) that configuration produced wrong
    scores (relative error 0.7 in tests/kernels, run 2 of docs/kernels), while 64 and 128 are exact;
    (128, 128, 8 warps) was wrong too (run 8). Above 64 query rows BLOCK_M = 256 halves the decode
    work per query (run 8, 3 bits: AR chunk TurboQuant 5.88 -> 2.67 ms, OCTOPUS 7.31 -> 5.18; LTX
    7.06 -> 4.71 and 10.61 -> 7.48), except OCTOPUS over a short KV sequence (cross-attention to 512
    tokens: 10.49 ms at 128, 11.42 at 256), which keeps 128. The prefetching loop (byte-grouped
    TurboQuant K and V, the only measured case) takes BLOCK_N = 32 there at head_dim 128 (run 11: AR chunk 2.46 -> 2.16 ms, cross-512 6.16 ->
    6.07; at head_dim 64, LTX, 64 stays faster: 3.75 vs 4.61).

    Few queries (docs/kernels/fewq_pass.md, run F2: (1, 12, Nq, 32760, 128), 3 bits, GPU time of a
    CUDA-graph replay): TurboQuant up to 16 rows (16, 128, 4 warps) 0.071 ms, against 0.080 at
    (16, 64, 4), 0.098 at (16, 128, 8) and 0.112 at (16, 64, 8); up to 128 rows 64-row tiles (128
    queries: 0.176 ms as two tile rows, 0.342 as one 256-row tile). OCTOPUS keeps (64, 64, 4) and
    the torch epilogue (see :data:`MAX_FUSED_EPILOGUE_ROWS`)."""
    if not torch.cuda.is_available():
        return 16, 16, 4, 1
    if n_q <= 16 and not octopus_keys:
        return 16, 128, 4, 2
    if n_q <= (64 if octopus_keys else 128):
        return 64, 64, 4, 2
    if octopus_keys and n_kv <= 1024:
        return 128, 64, 8, 2
    return 256, (32 if d == 128 and prefetch_loop else 64), 8, 2


def choose_splits(batch_heads: int, m_blocks: int, n_kv: int, block_n: int, device: torch.device) -> int:
    """KV splits so that about two waves of programs fill the GPU (1 in the interpreter)."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    programs = batch_heads * m_blocks
    if programs >= sms:
        return 1
    splits = max(1, min(triton.cdiv(2 * sms, programs), triton.cdiv(n_kv, 4 * block_n), 64))
    return int(splits)


def fused_attention_rotated(q: torch.Tensor, k: PackedTensor, v: PackedTensor, k_spec: KernelSpec,
                            v_spec: KernelSpec, attn_mask: torch.Tensor | None = None,
                            scale: float | None = None, layout: str = "BHSD", splits: int | None = None,
                            blocks: tuple[int, int, int, int] | None = None, fp32_out: bool = False,
                            out: torch.Tensor | None = None, select_lookup: bool = False,
                            grouped_unpack: bool = True, prefetch: bool = True, rotate_q_in_kernel: bool | None = None,
                            prmt_lookup: bool | None = None, word_loads: bool = True
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the kernel: per-split outputs ``(S, B, Hq, Nq, OW)`` in V's rotated basis (planes for
    OCTOPUS) and, when ``S > 1``, their base-2 log-sum-exps ``(S, B, Hq, Nq)``; see
    :func:`fused_attention` for the arguments. ``out`` (optional) is the buffer to write into;
    ``select_lookup`` reads codebooks by compare-select chains instead of ``tl.gather``;
    ``grouped_unpack=False`` keeps TurboQuant's per-field byte reads (for comparison);
    ``prefetch`` loads the next KV tile's codes during the current one (grouped TurboQuant K and V);
    ``rotate_q_in_kernel``: rotate the queries in the kernel (None: for TurboQuant query tiles of <=
    :data:`MAX_FUSED_EPILOGUE_ROWS` rows, never OCTOPUS) or with a torch GEMM first;
    ``prmt_lookup`` reads <= 3-bit TurboQuant codebooks by byte permutes (:func:`_lookup_prmt`; None:
    wherever that applies: CUDA, word loads, no ``select_lookup``); ``word_loads=False`` keeps byte
    groups where 32-bit word loads would apply (for comparison)."""
    launch = _Launch(q, k, v, k_spec, v_spec, layout, splits, blocks, grouped_unpack, prefetch, word_loads)
    ow = 3 * launch.tp if isinstance(v_spec, OctopusSpec) else launch.d
    o_dtype = torch.float32 if launch.split or fp32_out else torch.float16
    shape = (launch.n_split, launch.b, launch.hq, launch.nq, ow)
    if out is None:
        out = torch.empty(shape, device=q.device, dtype=o_dtype)
    elif out.shape != shape or out.dtype != o_dtype or not out.is_contiguous():
        raise CodecError(f"attention: out must be a contiguous {o_dtype} tensor {shape}")
    lse = launch.new_lse()
    if rotate_q_in_kernel and not launch.small_tiles:
        raise CodecError(f"attention: in-kernel query rotation takes TurboQuant query tiles of <= "
                         f"{MAX_FUSED_EPILOGUE_ROWS} rows (these are {launch.bm}-row tiles"
                         f"{' with OCTOPUS codes' if launch.octopus else ''})")
    rotate_q = launch.small_tiles if rotate_q_in_kernel is None else rotate_q_in_kernel
    launch.run(out, (out.stride(1), out.stride(2), out.stride(3), out.stride(4), out.stride(0)), lse,
               attn_mask, scale, select_lookup, rotate_q, rotate_out=False, prmt_lookup=prmt_lookup)
    return out, lse


class _Launch:
    """Shapes, tiles and split count of one fused-attention call, and the kernel launch itself."""

    def __init__(self, q: torch.Tensor, k: PackedTensor, v: PackedTensor, k_spec: KernelSpec, v_spec: KernelSpec,
                 layout: str, splits: int | None, blocks: tuple[int, int, int, int] | None, grouped_unpack: bool,
                 prefetch: bool, word_loads: bool = True) -> None:
        if layout not in ("BHSD", "BSHD"):
            raise CodecError(f"attention: layout must be 'BHSD' or 'BSHD', got {layout!r}")
        self.q, self.k, self.v, self.k_spec, self.v_spec, self.layout = q, k, v, k_spec, v_spec, layout
        self.qb = q if layout == "BHSD" else q.transpose(1, 2)
        self.b, self.hq, self.nq, self.d = self.qb.shape
        self.hkv = k.shape[1] if layout == "BHSD" else k.shape[2]
        self.nkv = k.shape[2] if layout == "BHSD" else k.shape[1]
        if self.hq % self.hkv:
            raise CodecError(f"attention: {self.hq} query heads is not a multiple of {self.hkv} KV heads")
        self.tp = plane_width(self.d)
        self.k_groups, self.v_groups = _groups(k_spec, grouped_unpack), _groups(v_spec, grouped_unpack)
        self.prefetch = prefetch and self.k_groups[0] > 0 and self.v_groups[0] > 0
        self.bm, self.bn, self.warps, self.stages = blocks or _default_blocks(
            self.nq, self.nkv, self.d, isinstance(k_spec, OctopusSpec), self.prefetch)
        self.octopus = isinstance(k_spec, OctopusSpec) or isinstance(v_spec, OctopusSpec)
        self.small_tiles = self.bm <= MAX_FUSED_EPILOGUE_ROWS and not self.octopus
        self.words = (word_loads and self.prefetch and self.small_tiles and _word_codes(k, k_spec)
                      and _word_codes(v, v_spec))
        # inline PTX (the byte permute) exists only on a real GPU, not in the Triton interpreter
        self.prmt_ok = (self.words and q.device.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1"
                        and k_spec.bits_hi <= 3 and v_spec.bits_hi <= 3)
        self.m_blocks = triton.cdiv(self.nq, self.bm)
        n_split = splits or choose_splits(self.b * self.hq, self.m_blocks, self.nkv, self.bn, q.device)
        self.kv_per_split = max(self.bn, triton.cdiv(triton.cdiv(self.nkv, n_split), self.bn) * self.bn)
        self.n_split = max(1, triton.cdiv(self.nkv, self.kv_per_split))
        self.split = self.n_split > 1

    def new_lse(self) -> torch.Tensor | None:
        if not self.split:
            return None
        return torch.empty((self.n_split, self.b, self.hq, self.nq), device=self.q.device, dtype=torch.float32)

    def run(self, out: torch.Tensor, out_strides: tuple[int, int, int, int, int], lse: torch.Tensor | None,
            attn_mask: torch.Tensor | None, scale: float | None, select_lookup: bool, rotate_q: bool,
            rotate_out: bool, prmt_lookup: bool | None) -> None:
        """Launch into ``out`` with (batch, head, row, column, split) strides ``out_strides``;
        ``rotate_out`` applies :func:`output_matrix` in the kernel (``out`` then has ``d`` columns);
        ``prmt_lookup``: :func:`_lookup_prmt` for the codebooks (None: wherever it applies)."""
        k_spec, v_spec, dev, d = self.k_spec, self.v_spec, self.q.device, self.d
        if prmt_lookup and not self.prmt_ok:
            raise CodecError("attention: the byte-permute lookup needs a real GPU (not the interpreter) and K and "
                             "V read as 32-bit words: TurboQuant of one width <= 3 bits, head_dim a multiple of "
                             f"32, 4-byte aligned codes, query tiles of <= {MAX_FUSED_EPILOGUE_ROWS} rows, "
                             "prefetch and word_loads on")
        prmt = self.prmt_ok and not select_lookup if prmt_lookup is None else prmt_lookup
        k_tab = _prmt_words(k_spec) if prmt else (0, 0, 0, 0)
        v_tab = _prmt_words(v_spec) if prmt else (0, 0, 0, 0)
        k_oct, v_oct = isinstance(k_spec, OctopusSpec), isinstance(v_spec, OctopusSpec)
        q_scale = (1.0 / math.sqrt(d) if scale is None else float(scale)) * LOG2E
        qmat = query_matrix(k_spec, dev)
        if rotate_q:
            q_arg = self.qb
        else:
            # Rotate (and split into planes) once; fold the softmax scale and log2(e) in.
            q_arg = ((self.qb.float() @ qmat) * q_scale).to(torch.float16).contiguous()
        kc, kcs, kg, kgs = _row_strides(self.k, self.layout, words=self.words)
        vc, vcs, vg, vgs = _row_strides(self.v, self.layout, words=self.words)
        kcb, kbits = _codebooks(k_spec, dev)
        vcb, vbits = _codebooks(v_spec, dev)
        mask, mask_bool = prepare_mask(attn_mask, (self.b, self.hq, self.nq, self.nkv))
        ms = mask.stride() if mask is not None else (0, 0, 0, 0)
        lse_arg = lse if lse is not None else out
        lss = lse.stride() if lse is not None else (0, 0, 0, 0)
        _fused_attention_kernel[(self.m_blocks, self.b * self.hq, self.n_split)](
            q_arg, *q_arg.stride(), qmat, qmat.stride(0), q_scale,
            kc, *kcs, kg, *kgs, vc, *vcs, vg, *vgs,
            kcb[0], kcb[1], kcb[2], vcb[0], vcb[1], vcb[2], *k_tab, *v_tab,
            mask if mask is not None else q_arg, *ms,
            out, *out_strides, output_matrix(v_spec, dev),
            lse_arg, lss[1], lss[2], lss[3], lss[0],
            self.hq, self.nq, self.nkv, self.hq // self.hkv, self.kv_per_split,
            D=d, K_OCT=k_oct, K_B0=kbits[0], K_B1=kbits[1], K_B2=kbits[2], K_NBYTES=k_spec.nbytes,
            K_GE=self.k_groups[0], K_GB=self.k_groups[1],
            V_OCT=v_oct, V_B0=vbits[0], V_B1=vbits[1], V_B2=vbits[2], V_NBYTES=v_spec.nbytes,
            V_GE=self.v_groups[0], V_GB=self.v_groups[1], T=(d + 2) // 3, TP=self.tp, HAS_MASK=mask is not None,
            MASK_BOOL=mask_bool, SPLIT=self.split, SELECT=select_lookup, PREFETCH=self.prefetch, WORDS=self.words, PRMT=prmt,
            ROTATE_Q=rotate_q, Q_CHUNK=min(Q_ROT_CHUNK, d), ROTATE_OUT=rotate_out, O_CHUNK=min(OUT_ROT_CHUNK, d),
            BLOCK_M=self.bm, BLOCK_N=self.bn, num_warps=self.warps, num_stages=self.stages)


#: Largest query tile that the kernel handles with its few-query features: Q and the output rotated
#: in the kernel, TurboQuant codes read as 32-bit words (:func:`_load_chunk_words`), byte-permute
#: lookups. Larger tiles keep the earlier torch rotations and byte groups: at 256 rows the in-kernel
#: query rotation nearly doubles the register spills (sm_90 compile of the AR-chunk tile (256, 32,
#: 8 warps), docs/kernels/sweeps/fewq_sass.py at commit c81c26b: 712 B of stack against 384 B), the rotation's float32
#: A operand would not fit shared memory (256 x 128 x 4 B = 128 KB), and word loads at 256 rows were
#: not measured on the GPU.
#: OCTOPUS (keys or values) keeps the torch epilogue: with the fused epilogue its kernel gave wrong
#: output on the H100 at (64, 64, 4 warps) (relative error 5.2, run F1) and NaN with an additive mask
#: and one split at (64, 32, 4) (GPU tests, runs F2 and F3), both correct with the torch epilogue
#: (docs/kernels/fewq_pass.md); the dispatcher sends OCTOPUS to decode-then-attend in any case.
MAX_FUSED_EPILOGUE_ROWS = 64
#: Output columns per step of the in-kernel output rotation (a 128 x 32 float32 slice: 16 KB).
OUT_ROT_CHUNK = 32


def fused_attention(q: torch.Tensor, k: PackedTensor, v: PackedTensor, k_spec: KernelSpec,
                    v_spec: KernelSpec, attn_mask: torch.Tensor | None = None, scale: float | None = None,
                    layout: str = "BHSD", out_dtype: torch.dtype | None = None, splits: int | None = None,
                    blocks: tuple[int, int, int, int] | None = None, select_lookup: bool = False,
                    grouped_unpack: bool = True, prefetch: bool = True, fused_epilogue: bool = True,
                    prmt_lookup: bool | None = None, word_loads: bool = True) -> torch.Tensor:
    """Attention of ``q`` over packed ``k``/``v`` with in-loop decoding; output in ``q``'s layout.

    ``q``: ``(B, Hq, Nq, D)`` for layout ``"BHSD"`` or ``(B, Nq, Hq, D)`` for ``"BSHD"``; ``k``/``v``
    packed from tensors of the same layout with ``Hkv`` heads (``Hq`` a multiple of ``Hkv``: GQA reads
    head ``h // (Hq / Hkv)``, nothing repeated). ``attn_mask``: bool (True = attend) or additive
    float, broadcastable to ``(B, Hq, Nq, Nkv)``. ``out_dtype`` defaults to ``q.dtype``. Rows whose
    keys are all masked give 0. ``splits`` / ``blocks`` override the launch heuristics.

    With ``fused_epilogue`` (default) and query tiles of <= :data:`MAX_FUSED_EPILOGUE_ROWS` rows, the whole
    call is at most two launches: the kernel rotates Q and the output itself and writes the result
    (one split) or float32 partials merged by :func:`_merge_splits_kernel`; at few queries the
    separate torch GEMMs and split combination cost more than the attention (docs/kernels/fewq_pass.md).
    ``fused_epilogue=False`` runs the earlier torch path (for comparison); ``prmt_lookup`` and
    ``word_loads``: see :func:`fused_attention_rotated`.
    """
    out_dtype = q.dtype if out_dtype is None else out_dtype
    launch = _Launch(q, k, v, k_spec, v_spec, layout, splits, blocks, grouped_unpack, prefetch, word_loads)
    if not fused_epilogue or not launch.small_tiles:
        o, lse = fused_attention_rotated(q, k, v, k_spec, v_spec, attn_mask, scale, layout, splits, blocks,
                                         fp32_out=out_dtype == torch.float32, select_lookup=select_lookup,
                                         grouped_unpack=grouped_unpack, prefetch=prefetch,
                                         rotate_q_in_kernel=None if fused_epilogue else False, prmt_lookup=prmt_lookup,
                                         word_loads=word_loads)
        o_rot = combine_splits(o, lse) if lse is not None else o[0]
        res = (o_rot.float() @ output_matrix(v_spec, q.device)).to(out_dtype)
        return res if layout == "BHSD" else res.transpose(1, 2)
    res = torch.empty_like(q, dtype=out_dtype)
    rb = res if layout == "BHSD" else res.transpose(1, 2)
    lse = launch.new_lse()
    if lse is None:
        launch.run(rb, (*rb.stride(), 0), None, attn_mask, scale, select_lookup, True, rotate_out=True,
                   prmt_lookup=prmt_lookup)
        return res
    part = torch.empty((launch.n_split, launch.b, launch.hq, launch.nq, launch.d), device=q.device,
                       dtype=torch.float32)
    launch.run(part, (*part.stride()[1:], part.stride(0)), lse, attn_mask, scale, select_lookup, True,
               rotate_out=True, prmt_lookup=prmt_lookup)
    merge_splits(part, lse, rb)
    return res


def merge_splits(part: torch.Tensor, lse: torch.Tensor, out: torch.Tensor) -> None:
    """:func:`combine_splits` of ``part`` ``(S, B, H, N, D)`` into ``out`` ``(B, H, N, D)`` (any strides and
    float dtype) in one launch."""
    s_pad = triton.next_power_of_2(part.shape[0])
    d = part.shape[-1]
    block_d = max(16, min(d, 4096 // s_pad))
    _merge_splits_kernel[(part.shape[1] * part.shape[2] * part.shape[3], triton.cdiv(d, block_d))](
        part, *part.stride()[:4], lse, *lse.stride(), out, *out.stride(), part.shape[2], part.shape[3],
        part.shape[0], S_PAD=s_pad, BLOCK_D=block_d, num_warps=4)
