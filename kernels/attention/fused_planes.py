"""EXPERIMENTAL: the fused attention loop for OCTOPUS codes, as x/y/z planes (jit code).

Never chosen by :func:`..api.choose_method` (OCTOPUS decode-then-attend was faster at every measured
shape: docs/kernels/results.csv, crossover, 2026-11-23 d69f2f6 and 2026-12-02 d433c21); reached only by
``method="fused"`` and the benchmark, which measures it against decode-then-attend. Kept correct
(tests/kernels) so that a later GPU pass can take it up; production fused attention is the TurboQuant
kernel of :mod:`.fused`.

OCTOPUS triplets do not fit power-of-two tiles, so its vectors are handled as three planes (x, y, z
coordinates of the ``ceil(d/3)`` triplets, each padded to ``TP`` = 64 for d = 128 or 32 for d = 64,
:func:`..reference.to_planes`): Q comes split into planes (one torch GEMM with the permuted rotation),
scores are the sum of three plane products, and the output goes back as planes that one torch GEMM
rotates back. The padding costs ``3 TP / d`` = 1.5x the matrix work of a d-wide tile. The other side
of a mixed pair (TurboQuant K with OCTOPUS V, or the reverse) is read per field or by byte groups, as
the production kernel's plain loop does. No in-kernel rotations: on the H100 the in-kernel epilogue
gave wrong or NaN OCTOPUS output at the few-query tiles (docs/kernels/fewq_pass.md).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..octopus.decode import octopus_planes_tile
from ..tl.helpers import codebook_for
from ..turboquant.decode import tq_values
from .fused import masked_scores, online_softmax, program_rows, split_bases, store_lse


@triton.jit
def _fused_planes_kernel(
        Q, s_qb, s_qh, s_qm,
        KC, s_kcb, s_kch, s_kcn, KG, s_kgb, s_kgh, s_kgn,
        VC, s_vcb, s_vch, s_vcn, VG, s_vgb, s_vgh, s_vgn,
        KCB0, KCB1, KCB2, VCB0, VCB1, VCB2,
        MASK, s_mb, s_mh, s_mm, s_mn,
        O, s_ob, s_oh, s_om, s_od, s_os, LSE, s_lb, s_lh, s_lm, s_ls,
        H, N_Q, N_KV, GROUP, KV_PER_SPLIT,
        D: tl.constexpr,
        K_OCT: tl.constexpr, K_B0: tl.constexpr, K_B1: tl.constexpr, K_B2: tl.constexpr,
        K_NBYTES: tl.constexpr, K_GE: tl.constexpr, K_GB: tl.constexpr,
        V_OCT: tl.constexpr, V_B0: tl.constexpr, V_B1: tl.constexpr, V_B2: tl.constexpr,
        V_NBYTES: tl.constexpr, V_GE: tl.constexpr, V_GB: tl.constexpr,
        T: tl.constexpr, TP: tl.constexpr,
        HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, SPLIT: tl.constexpr, LOOKUP: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One (query tile, batch x head, KV split) program. ``Q`` holds the rotated, pre-scaled fp16
    queries (planes when ``K_OCT``); ``*_OCT`` K / V are OCTOPUS (widths ``*_B0..2``) or TurboQuant
    (``*_B0, *_B1, *_B2`` = bits_hi, bits_lo, n_high). The output is written in V's rotated basis
    (planes when ``V_OCT``)."""
    pid_s, b, h, hk, offs_m, m_mask = program_rows(H, GROUP, N_Q, BLOCK_M)

    q_rows = Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qm
    if K_OCT:
        tp = tl.arange(0, TP)[None, :]
        q0 = tl.load(q_rows + tp, mask=m_mask[:, None], other=0.0)
        q1 = tl.load(q_rows + TP + tp, mask=m_mask[:, None], other=0.0)
        q2 = tl.load(q_rows + 2 * TP + tp, mask=m_mask[:, None], other=0.0)
        kcb2 = codebook_for(KCB2, BLOCK_N, 1 << K_B2, LOOKUP)
    else:
        q0 = tl.load(q_rows + tl.arange(0, D)[None, :], mask=m_mask[:, None], other=0.0)
    kcb0 = codebook_for(KCB0, BLOCK_N, 1 << K_B0, LOOKUP)
    kcb1 = codebook_for(KCB1, BLOCK_N, 1 << K_B1, LOOKUP)
    vcb0 = codebook_for(VCB0, BLOCK_N, 1 << V_B0, LOOKUP)
    vcb1 = codebook_for(VCB1, BLOCK_N, 1 << V_B1, LOOKUP)
    if V_OCT:
        vcb2 = codebook_for(VCB2, BLOCK_N, 1 << V_B2, LOOKUP)
        acc0 = tl.zeros((BLOCK_M, TP), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_M, TP), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_M, TP), dtype=tl.float32)
    else:
        acc0 = tl.zeros((BLOCK_M, D), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)

    lo, hi, kc_base, kg_base, vc_base, vg_base = split_bases(
        pid_s, KV_PER_SPLIT, N_KV, b, hk, KC, s_kcb, s_kch, KG, s_kgb, s_kgh, VC, s_vcb, s_vch, VG, s_vgb, s_vgh)
    for start in range(0, KV_PER_SPLIT, BLOCK_N):
        offs_n = lo + start + tl.arange(0, BLOCK_N)
        n_mask = offs_n < hi
        # ---- scores in base 2: (q_rot * scale * log2 e) . u_k * gamma_k ----------------------
        k_rows = kc_base + offs_n[:, None] * s_kcn
        if K_OCT:
            kx, ky, kz = octopus_planes_tile(k_rows, n_mask[:, None], kcb0, kcb1, kcb2, T, TP, K_B0, K_B1,
                                             K_B2, K_NBYTES, LOOKUP)
            s = tl.dot(q0, tl.trans(kx.to(tl.float16)))
            s = tl.dot(q1, tl.trans(ky.to(tl.float16)), s)
            s = tl.dot(q2, tl.trans(kz.to(tl.float16)), s)
        else:
            k = tq_values(k_rows, n_mask[:, None], kcb0, kcb1, D, K_B2, K_B0, K_B1, K_NBYTES, LOOKUP, K_GE, K_GB)
            s = tl.dot(q0, tl.trans(k.to(tl.float16)))
        g_k = tl.load(kg_base + offs_n * s_kgn, mask=n_mask, other=0.0).to(tl.float32)
        s = masked_scores(s * g_k[None, :], MASK, b, h, offs_m, offs_n, m_mask, n_mask, s_mb, s_mh, s_mm, s_mn,
                          HAS_MASK, MASK_BOOL)
        p, alpha, m_i, l_i = online_softmax(s, m_i, l_i)
        # ---- values: gamma_v folded into P ----------------------------------------------------
        g_v = tl.load(vg_base + offs_n * s_vgn, mask=n_mask, other=0.0).to(tl.float32)
        pv = (p * g_v[None, :]).to(tl.float16)
        v_rows = vc_base + offs_n[:, None] * s_vcn
        if V_OCT:
            vx, vy, vz = octopus_planes_tile(v_rows, n_mask[:, None], vcb0, vcb1, vcb2, T, TP, V_B0, V_B1,
                                             V_B2, V_NBYTES, LOOKUP)
            acc0 = tl.dot(pv, vx.to(tl.float16), acc0 * alpha[:, None])
            acc1 = tl.dot(pv, vy.to(tl.float16), acc1 * alpha[:, None])
            acc2 = tl.dot(pv, vz.to(tl.float16), acc2 * alpha[:, None])
        else:
            v = tq_values(v_rows, n_mask[:, None], vcb0, vcb1, D, V_B2, V_B0, V_B1, V_NBYTES, LOOKUP, V_GE, V_GB)
            acc0 = tl.dot(pv, v.to(tl.float16), acc0 * alpha[:, None])

    # ---- normalise and store (rows with no unmasked key give 0) ------------------------------
    inv_l = tl.where(l_i > 0, 1.0 / l_i, 0.0)
    o_rows = O + pid_s * s_os + b * s_ob + h * s_oh + offs_m[:, None] * s_om
    if V_OCT:
        tp_o = tl.arange(0, TP)[None, :] * s_od
        tl.store(o_rows + tp_o, (acc0 * inv_l[:, None]).to(O.dtype.element_ty), mask=m_mask[:, None])
        tl.store(o_rows + TP * s_od + tp_o, (acc1 * inv_l[:, None]).to(O.dtype.element_ty), mask=m_mask[:, None])
        tl.store(o_rows + 2 * TP * s_od + tp_o, (acc2 * inv_l[:, None]).to(O.dtype.element_ty),
                 mask=m_mask[:, None])
    else:
        tl.store(o_rows + tl.arange(0, D)[None, :] * s_od, (acc0 * inv_l[:, None]).to(O.dtype.element_ty),
                 mask=m_mask[:, None])
    if SPLIT:
        store_lse(LSE, pid_s, s_ls, b, s_lb, h, s_lh, offs_m, s_lm, m_mask, m_i, l_i)
