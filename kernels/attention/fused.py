"""The fused attention kernel: TurboQuant codes decoded inside a FlashAttention-style loop (jit code).

No fp16 K or V is ever written to memory: each KV tile's codes are unpacked and looked up in the
codebooks right before the two matrix products. Everything per vector stays outside the tile
(performance.md):

* Q is rotated once, ``q_rot = q @ R_k.T``, and pre-scaled by ``scale * log2(e)`` (the loop works in
  base 2): by a torch GEMM before the kernel for large tiles, inside the kernel for few queries;
* ``gamma_k`` multiplies the score columns and ``gamma_v`` the probability columns;
* the output is accumulated in V's rotated basis and ``R_v`` is applied once at the end (a torch GEMM
  for large tiles, in the kernel for few queries).

Split-KV (flash-decoding) fills the GPU when few query tiles share a head: each split writes a
normalised partial output and its log-sum-exp, merged afterwards (:func:`_merge_splits_kernel`).

Few queries (query tiles of <= 64 rows; docs/kernels/fewq_pass.md): the query and output rotations
run inside the kernel and the splits are merged by one small kernel, so a call is two launches (the
torch GEMMs and split merge cost more than the attention there); codes are read as 32-bit words and
split in-thread, so decoded tiles reach shared memory by 16-byte stores; <= 3-bit codebooks are read
by byte permutes (:func:`_lookup_prmt`). Larger tiles read codes by byte groups, the next tile's
codes loaded during the current one (``PREFETCH``).

The host side (tiles, splits, matrices) is :mod:`.fused_launch`; OCTOPUS codes go through the
experimental :mod:`.fused_planes` kernel. The reference is :func:`..reference.rotated_attention`
(before ``R_v``) and :func:`..reference.attention_on_decoded` (after).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..tl.helpers import codebook_for, load_groups, lookup_any, split_groups
from ..turboquant.decode import tq_values


@triton.jit
def _lookup_prmt(idx, t0, t1, t2, t3):
    """fp16 ``codebook[idx]`` of an <= 8-entry codebook by byte permutes (GPU only: inline PTX).

    ``t0, t1`` hold the low bytes of the fp16 entries 0-3 and 4-7, ``t2, t3`` the high bytes
    (:func:`.fused_launch.prmt_tables`). Four 3-bit indices go into one PRMT selector; two PRMTs fetch four low
    and four high bytes and two more interleave them into two fp16 pairs: 7 instructions per 4
    values, against a ``tl.gather`` or a 7-step compare-select chain per value. The looked-up values
    are ``codebook[idx].to(float16)`` (``prmt_tables`` is tested to hold exactly those bytes); the
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
def program_rows(H, GROUP, N_Q, BLOCK_M: tl.constexpr):
    """What one (query tile, batch x head, KV split) program of a fused kernel works on: ``(split,
    batch, query head, KV head (GQA), query rows, their in-range mask)``."""
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    return tl.program_id(2), b, h, h // GROUP, offs_m, offs_m < N_Q


@triton.jit
def split_bases(pid_s, KV_PER_SPLIT, N_KV, b, hk, KC, s_kcb, s_kch, KG, s_kgb, s_kgh, VC, s_vcb, s_vch,
                VG, s_vgb, s_vgh):
    """The split's keys ``[lo, hi)`` and the (batch, KV head) bases of the K and V codes and norms.
    Loop bounds must be kernel arguments (the interpreter cannot loop over program-id tensors): every
    split runs ``KV_PER_SPLIT`` keys, the tail masked by ``hi``."""
    lo = pid_s * KV_PER_SPLIT
    hi = tl.minimum(lo + KV_PER_SPLIT, N_KV)
    return (lo, hi, KC + b * s_kcb + hk * s_kch, KG + b * s_kgb + hk * s_kgh, VC + b * s_vcb + hk * s_vch,
            VG + b * s_vgb + hk * s_vgh)


@triton.jit
def masked_scores(s, MASK, b, h, offs_m, offs_n, m_mask, n_mask, s_mb, s_mh, s_mm, s_mn,
                  HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr):
    """Base-2 scores ``s`` with the attention mask applied (bool: False = -inf; additive: times
    log2 e) and keys past the tile's end at -inf."""
    if HAS_MASK:
        m_ptrs = MASK + b * s_mb + h * s_mh + offs_m[:, None] * s_mm + offs_n[None, :] * s_mn
        mvals = tl.load(m_ptrs, mask=m_mask[:, None] & n_mask[None, :], other=0)
        if MASK_BOOL:
            s = tl.where(mvals != 0, s, float("-inf"))
        else:
            s = s + mvals.to(tl.float32) * 1.4426950408889634
    return tl.where(n_mask[None, :], s, float("-inf"))


@triton.jit
def online_softmax(s, m_i, l_i):
    """One step of the base-2 online softmax: ``(p, alpha, m_new, l_new)`` with ``p = 2**(s - m_new)``
    and ``alpha`` the factor that rescales what was accumulated so far (rows with every key masked so
    far keep ``m = -inf`` and get ``p = 0``)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    return p, alpha, m_new, l_i


@triton.jit
def store_lse(LSE, pid_s, s_ls, b, s_lb, h, s_lh, offs_m, s_lm, m_mask, m_i, l_i):
    """The split's base-2 log-sum-exp per query row (-inf for a row with no unmasked key)."""
    lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
    tl.store(LSE + pid_s * s_ls + b * s_lb + h * s_lh + offs_m * s_lm, lse, mask=m_mask)


@triton.jit
def _fused_attention_kernel(
        Q, s_qb, s_qh, s_qm, s_qd, QM, s_qmat, q_scale,
        KC, s_kcb, s_kch, s_kcn, KG, s_kgb, s_kgh, s_kgn,
        VC, s_vcb, s_vch, s_vcn, VG, s_vgb, s_vgh, s_vgn,
        KCB_HI, KCB_LO, VCB_HI, VCB_LO, k_t0, k_t1, k_t2, k_t3, v_t0, v_t1, v_t2, v_t3,
        MASK, s_mb, s_mh, s_mm, s_mn,
        O, s_ob, s_oh, s_om, s_od, s_os, OM, LSE, s_lb, s_lh, s_lm, s_ls,
        H, N_Q, N_KV, GROUP, KV_PER_SPLIT,
        D: tl.constexpr,
        K_BHI: tl.constexpr, K_BLO: tl.constexpr, K_NHI: tl.constexpr,
        K_NBYTES: tl.constexpr, K_GE: tl.constexpr, K_GB: tl.constexpr,
        V_BHI: tl.constexpr, V_BLO: tl.constexpr, V_NHI: tl.constexpr,
        V_NBYTES: tl.constexpr, V_GE: tl.constexpr, V_GB: tl.constexpr,
        HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, SPLIT: tl.constexpr, LOOKUP: tl.constexpr,
        PREFETCH: tl.constexpr, WORDS: tl.constexpr, PRMT: tl.constexpr, ROTATE_Q: tl.constexpr, Q_CHUNK: tl.constexpr,
        ROTATE_OUT: tl.constexpr, O_CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One (query tile, batch x head, KV split) program. TurboQuant K/V: ``*_BHI`` bits on the first
    ``*_NHI`` channels, ``*_BLO`` on the rest; ``*_GE, *_GB`` byte groups (0: per-field reads);
    ``LOOKUP`` a ``tl.helpers.LOOKUP_*`` codebook read, ``PRMT`` byte permutes instead."""
    pid_s, b, h, hk, offs_m, m_mask = program_rows(H, GROUP, N_Q, BLOCK_M)

    # ---- rotated, pre-scaled queries (fp16) -----------------------------------------------------
    # ROTATE_Q: Q is the caller's query and QM the query matrix (rotation here, once per program);
    # else Q already holds the rotated, pre-scaled fp16 queries.
    q_rows = Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qm
    if ROTATE_Q:
        q0 = _rotated_queries(q_rows, s_qd, m_mask, QM, s_qmat, 0, D, D, q_scale, BLOCK_M, Q_CHUNK)
    else:
        q0 = tl.load(q_rows + tl.arange(0, D)[None, :], mask=m_mask[:, None], other=0.0)
    kcb0 = codebook_for(KCB_HI, BLOCK_N, 1 << K_BHI, LOOKUP)
    kcb1 = codebook_for(KCB_LO, BLOCK_N, 1 << K_BLO, LOOKUP)
    vcb0 = codebook_for(VCB_HI, BLOCK_N, 1 << V_BHI, LOOKUP)
    vcb1 = codebook_for(VCB_LO, BLOCK_N, 1 << V_BLO, LOOKUP)
    acc0 = tl.zeros((BLOCK_M, D), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)

    lo, hi, kc_base, kg_base, vc_base, vg_base = split_bases(
        pid_s, KV_PER_SPLIT, N_KV, b, hk, KC, s_kcb, s_kch, KG, s_kgb, s_kgh, VC, s_vcb, s_vch, VG, s_vgb, s_vgh)
    if PREFETCH:
        # K and V read by 32-bit words (WORDS: KC / VC are int32 views, strides in words) or byte
        # groups: each iteration loads the next tile's codes and norms before decoding its own, so
        # the loads' latency overlaps this tile's work.
        offs_p = lo + tl.arange(0, BLOCK_N)
        p_mask = offs_p < hi
        kw0, kw1, kw2, kw3 = _load_codes(kc_base, lo, hi, s_kcn, BLOCK_N, D, K_BHI, K_GE, K_GB, WORDS)
        vw0, vw1, vw2, vw3 = _load_codes(vc_base, lo, hi, s_vcn, BLOCK_N, D, V_BHI, V_GE, V_GB, WORDS)
        g_k_nxt = tl.load(kg_base + offs_p * s_kgn, mask=p_mask, other=0.0).to(tl.float32)
        g_v_nxt = tl.load(vg_base + offs_p * s_vgn, mask=p_mask, other=0.0).to(tl.float32)
    for start in range(0, KV_PER_SPLIT, BLOCK_N):
        offs_n = lo + start + tl.arange(0, BLOCK_N)
        n_mask = offs_n < hi
        # ---- scores in base 2: (q_rot * scale * log2 e) . u_k * gamma_k ----------------------
        if PREFETCH:
            offs_p = offs_n + BLOCK_N
            p_mask = offs_p < hi
            kc0, kc1, kc2, kc3, g_k = kw0, kw1, kw2, kw3, g_k_nxt
            vc0, vc1, vc2, vc3, g_v = vw0, vw1, vw2, vw3, g_v_nxt
            kw0, kw1, kw2, kw3 = _load_codes(kc_base, lo + start + BLOCK_N, hi, s_kcn, BLOCK_N, D, K_BHI, K_GE, K_GB,
                                             WORDS)
            vw0, vw1, vw2, vw3 = _load_codes(vc_base, lo + start + BLOCK_N, hi, s_vcn, BLOCK_N, D, V_BHI, V_GE, V_GB,
                                             WORDS)
            g_k_nxt = tl.load(kg_base + offs_p * s_kgn, mask=p_mask, other=0.0).to(tl.float32)
            g_v_nxt = tl.load(vg_base + offs_p * s_vgn, mask=p_mask, other=0.0).to(tl.float32)
            k_idx = _code_indices(kc0, kc1, kc2, kc3, D, K_BHI, K_GE, WORDS)
            if PRMT:
                k = _lookup_prmt(k_idx, k_t0, k_t1, k_t2, k_t3)
            else:
                k = lookup_any(kcb0, k_idx, 1 << K_BHI, LOOKUP).to(tl.float16)
            s = tl.dot(q0, tl.trans(k))
        else:
            k = tq_values(kc_base + offs_n[:, None] * s_kcn, n_mask[:, None], kcb0, kcb1, D, K_NHI, K_BHI, K_BLO,
                          K_NBYTES, LOOKUP, K_GE, K_GB)
            s = tl.dot(q0, tl.trans(k.to(tl.float16)))
            g_k = tl.load(kg_base + offs_n * s_kgn, mask=n_mask, other=0.0).to(tl.float32)
        s = masked_scores(s * g_k[None, :], MASK, b, h, offs_m, offs_n, m_mask, n_mask, s_mb, s_mh, s_mm, s_mn,
                          HAS_MASK, MASK_BOOL)
        p, alpha, m_i, l_i = online_softmax(s, m_i, l_i)
        # ---- values: gamma_v folded into P ----------------------------------------------------
        if not PREFETCH:
            g_v = tl.load(vg_base + offs_n * s_vgn, mask=n_mask, other=0.0).to(tl.float32)
        pv = (p * g_v[None, :]).to(tl.float16)
        if PREFETCH:
            v_idx = _code_indices(vc0, vc1, vc2, vc3, D, V_BHI, V_GE, WORDS)
            if PRMT:
                v = _lookup_prmt(v_idx, v_t0, v_t1, v_t2, v_t3)
            else:
                v = lookup_any(vcb0, v_idx, 1 << V_BHI, LOOKUP).to(tl.float16)
            acc0 = tl.dot(pv, v, acc0 * alpha[:, None])
        else:
            v = tq_values(vc_base + offs_n[:, None] * s_vcn, n_mask[:, None], vcb0, vcb1, D, V_NHI, V_BHI, V_BLO,
                          V_NBYTES, LOOKUP, V_GE, V_GB)
            acc0 = tl.dot(pv, v.to(tl.float16), acc0 * alpha[:, None])

    # ---- normalise and store (rows with no unmasked key give 0) ------------------------------
    inv_l = tl.where(l_i > 0, 1.0 / l_i, 0.0)
    o_rows = O + pid_s * s_os + b * s_ob + h * s_oh + offs_m[:, None] * s_om
    if ROTATE_OUT:
        _store_rotated_back(o_rows, s_od, m_mask, acc0 * inv_l[:, None], OM, D, O_CHUNK)
    else:
        tl.store(o_rows + tl.arange(0, D)[None, :] * s_od, (acc0 * inv_l[:, None]).to(O.dtype.element_ty),
                 mask=m_mask[:, None])
    if SPLIT:
        store_lse(LSE, pid_s, s_ls, b, s_lb, h, s_lh, offs_m, s_lm, m_mask, m_i, l_i)


@triton.jit
def _store_rotated_back(o_rows, s_od, m_mask, a0, OM, D: tl.constexpr, CHUNK: tl.constexpr):
    """Store ``o_rot @ OM`` (the output in the caller's basis; ``OM`` the ``(D, D)`` float32 output
    matrix, ``a0`` the normalised rotated output), ``CHUNK`` output columns per step so the matrix
    slice in shared memory stays small. tf32x3: float32 accuracy."""
    r = tl.arange(0, D)[:, None]
    for c0 in range(0, D, CHUNK):  # a loop, not unrolled: one chunk's operands live at a time
        cols = c0 + tl.arange(0, CHUNK)[None, :]
        res = tl.dot(a0, tl.load(OM + r * D + cols), input_precision="tf32x3")
        tl.store(o_rows + cols * s_od, res.to(o_rows.dtype.element_ty), mask=m_mask[:, None])


@triton.jit
def _merge_splits_kernel(O, s_os, s_ob, s_oh, s_om, LSE, s_ls, s_lb, s_lh, s_lm,
                         OUT, s_tb, s_th, s_tm, s_td, H, N_Q, N_SPLIT,
                         S_PAD: tl.constexpr, BLOCK_D: tl.constexpr):
    """One output row (b, h, m), ``BLOCK_D`` columns: the per-split outputs weighted by
    ``exp2(lse_s - max lse)`` (:func:`..reference.combine_splits`), all splits loaded at once, stored in OUT's
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
