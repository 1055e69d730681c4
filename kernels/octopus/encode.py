"""OCTOPUS encode: triplets, octahedral map, nearest / joint 3x3 rounding, packing, in one kernel.

Two ways in, one quantizer (:func:`_quantize_triplets`, which repeats the reference's float32
operations in its order, see :mod:`..tl.exact`):

* ``fused_rotation=False`` (**bit-exact**): the norm and the rotation ``y = (x @ R.T) / gamma`` are
  computed by torch exactly as :meth:`OctopusCodec._encode` does (the same ops on the same device);
  the kernel does everything after. The codes equal the reference's bit for bit on one device
  (tested under the interpreter on CPU).
* ``fused_rotation=True`` (**fast**): the kernel reads x once, computes gamma and the rotation itself
  (one tensor-core product with the Hadamard sign matrix split into x/y/z planes, entries +-1 so the
  products are exact, then ``/ sqrt(d)``), and quantizes with the GPU's fast division and square
  root. Its float32 rounding is not torch's, so a value within an ulp or two of a decision threshold
  can land on the other side: codes agree with the reference except for such near-ties (the
  fraction is measured in the tests and the benchmark).

The reference is the codec's own ``encode``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from octopus_diffusers.codecs import PackedTensor

from ..launch import EncodeConfig, default_config, encode_epilogue, encode_prologue
from ..spec import OctopusSpec, kernel_spec, midpoints, plane_width
from ..tl.exact import norm3
from ..tl.helpers import (codebook_for, lookup_any, nearest_count, octahedral_unfold, pack_fields_to_bytes,
                          pack_groups8, sign_nonzero)


@triton.jit
def _candidate(xi_c, eta_c, K: tl.constexpr, t0, t1, t2, best, best_k, EXACT: tl.constexpr):
    """Joint-rounding candidate number ``K``: its cosine-like score against the triplet, kept (as its
    number, not its indices: fewer live registers) if strictly better."""
    ux, uy, uz = octahedral_unfold(xi_c, eta_c)
    if EXACT:
        nrm = norm3(ux, uy, uz)
        s = tl.div_rn(ux, nrm) * t0 + tl.div_rn(uy, nrm) * t1 + tl.div_rn(uz, nrm) * t2
    else:
        s = (ux * t0 + uy * t1 + uz * t2) * tl.rsqrt(ux * ux + uy * uy + uz * uz)
    better = s > best
    return tl.where(better, s, best), tl.where(better, K, best_k)


@triton.jit
def _quantize_triplets(t0, t1, t2, valid, CBX, CBE, THX, THE, THR_RHO, BLOCK_R: tl.constexpr,
                       BX: tl.constexpr, BE: tl.constexpr, BR: tl.constexpr, JOINT: tl.constexpr,
                       EXACT: tl.constexpr, LOOKUP: tl.constexpr = 0):
    """Field values ``i_xi | i_eta << BX | i_rho << (BX + BE)`` of triplets ``(t0, t1, t2)``.

    ``EXACT``: the reference's float32 operations (FMA-exact norms, IEEE divisions); otherwise the
    GPU's fast forms (one reciprocal square root per candidate), for the fused-rotation path whose
    codes are already allowed to differ at near-ties. ``LOOKUP`` (a ``tl.helpers.LOOKUP_*`` mode)
    changes how codebooks are read, never the result."""
    if EXACT:
        rho = norm3(t0, t1, t2)
    else:
        rho = tl.sqrt(t0 * t0 + t1 * t1 + t2 * t2)
    has_dir = rho > 0
    dx = tl.where(has_dir, t0, 0.0)
    dy = tl.where(has_dir, t1, 0.0)
    dz = tl.where(has_dir, t2, 1.0)
    l1 = tl.abs(dx) + tl.abs(dy) + tl.abs(dz)
    if EXACT:
        px = tl.div_rn(dx, l1)
        py = tl.div_rn(dy, l1)
    else:
        inv_l1 = 1.0 / l1
        px = dx * inv_l1
        py = dy * inv_l1
    lower = dz < 0
    xi = tl.where(lower, sign_nonzero(px) * (1.0 - tl.abs(py)), px)
    eta = tl.where(lower, sign_nonzero(py) * (1.0 - tl.abs(px)), py)
    j_xi = nearest_count(xi, THX, BX)
    j_eta = nearest_count(eta, THE, BE)
    if JOINT:
        cbx = codebook_for(CBX, BLOCK_R, 1 << BX, LOOKUP)
        cbe = codebook_for(CBE, BLOCK_R, 1 << BE, LOOKUP)
        # Candidate K = 3 a + b is (j_xi + a - 1, j_eta + b - 1), clamped, scored in the reference's
        # order (xi outer, eta inner); strict '>' keeps the first maximum. The 3 eta neighbours are read
        # once, each xi neighbour once (6 lookups, not 12); the winner is kept as its number K.
        e0 = lookup_any(cbe, tl.maximum(j_eta - 1, 0), 1 << BE, LOOKUP)
        e1 = lookup_any(cbe, j_eta, 1 << BE, LOOKUP)
        e2 = lookup_any(cbe, tl.minimum(j_eta + 1, (1 << BE) - 1), 1 << BE, LOOKUP)
        best = tl.full(t0.shape, float("-inf"), dtype=tl.float32)
        best_k = tl.full(t0.shape, 4, dtype=tl.int32)  # the centre, as the reference's argmax of all-NaN
        xa = lookup_any(cbx, tl.maximum(j_xi - 1, 0), 1 << BX, LOOKUP)
        best, best_k = _candidate(xa, e0, 0, t0, t1, t2, best, best_k, EXACT)
        best, best_k = _candidate(xa, e1, 1, t0, t1, t2, best, best_k, EXACT)
        best, best_k = _candidate(xa, e2, 2, t0, t1, t2, best, best_k, EXACT)
        xa = lookup_any(cbx, j_xi, 1 << BX, LOOKUP)
        best, best_k = _candidate(xa, e0, 3, t0, t1, t2, best, best_k, EXACT)
        best, best_k = _candidate(xa, e1, 4, t0, t1, t2, best, best_k, EXACT)
        best, best_k = _candidate(xa, e2, 5, t0, t1, t2, best, best_k, EXACT)
        xa = lookup_any(cbx, tl.minimum(j_xi + 1, (1 << BX) - 1), 1 << BX, LOOKUP)
        best, best_k = _candidate(xa, e0, 6, t0, t1, t2, best, best_k, EXACT)
        best, best_k = _candidate(xa, e1, 7, t0, t1, t2, best, best_k, EXACT)
        best, best_k = _candidate(xa, e2, 8, t0, t1, t2, best, best_k, EXACT)
        j_xi = tl.minimum(tl.maximum(j_xi + best_k // 3 - 1, 0), (1 << BX) - 1)
        j_eta = tl.minimum(tl.maximum(j_eta + best_k % 3 - 1, 0), (1 << BE) - 1)
        j_rho = nearest_count(best, THR_RHO, BR)
    else:
        j_rho = nearest_count(rho, THR_RHO, BR)
    v = j_xi | (j_eta << BX) | (j_rho << (BX + BE))
    return tl.where(valid, v, 0)


@triton.jit
def _octopus_encode_kernel(X, s_x, GAMMA, NORMS_OUT, CODES, s_c, SIGNS, inv_sqrt_d,
                           CBX, CBE, THX, THE, THR_RHO, N_ROWS,
                           D: tl.constexpr, T: tl.constexpr, TP: tl.constexpr, BX: tl.constexpr,
                           BE: tl.constexpr, BR: tl.constexpr, NBYTES: tl.constexpr,
                           NBYTES_PAD: tl.constexpr, JOINT: tl.constexpr, FUSED_ROTATION: tl.constexpr,
                           EXACT: tl.constexpr, BLOCK_R: tl.constexpr, LOOKUP: tl.constexpr = 0,
                           PACK8: tl.constexpr = False):
    """Encode ``BLOCK_R`` rows: triplets as ``[BLOCK_R, TP]`` x/y/z planes (zero past ``T``), quantized,
    packed by :func:`pack_groups8` (``PACK8``) or :func:`pack_fields_to_bytes`."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = rows < N_ROWS
    i = tl.arange(0, TP)[None, :]
    valid = i < T
    x_rows = X + rows[:, None].to(tl.int64) * s_x
    if FUSED_ROTATION:
        # gamma and y = (x @ (H diag(s)).T) / sqrt(d) / gamma, as x/y/z planes of the triplets.
        j = tl.arange(0, D)
        x = tl.load(x_rows + j[None, :], mask=r_mask[:, None], other=0.0)
        xf = x.to(tl.float32)
        gamma = tl.sqrt(tl.sum(xf * xf, 1))
        tl.store(NORMS_OUT + rows, gamma.to(NORMS_OUT.dtype.element_ty), mask=r_mask)
        inv = inv_sqrt_d / tl.where(gamma > 0, gamma, 1.0)
        s_rows = SIGNS + j[:, None] * (3 * TP) + i
        xd = x.to(SIGNS.dtype.element_ty)
        t0 = tl.dot(xd, tl.load(s_rows)) * inv[:, None]
        t1 = tl.dot(xd, tl.load(s_rows + TP)) * inv[:, None]
        t2 = tl.dot(xd, tl.load(s_rows + 2 * TP)) * inv[:, None]
    else:
        m = r_mask[:, None] & valid
        t0 = tl.load(x_rows + 3 * i, mask=m & (3 * i < D), other=0.0)
        t1 = tl.load(x_rows + 3 * i + 1, mask=m & (3 * i + 1 < D), other=0.0)
        t2 = tl.load(x_rows + 3 * i + 2, mask=m & (3 * i + 2 < D), other=0.0)
    v = _quantize_triplets(t0, t1, t2, valid, CBX, CBE, THX, THE, THR_RHO, BLOCK_R, BX, BE, BR, JOINT, EXACT,
                           LOOKUP)
    out_rows = CODES + rows[:, None].to(tl.int64) * s_c
    if PACK8:
        pack_groups8(v, out_rows, r_mask[:, None], BX + BE + BR, NBYTES)
    else:
        pack_fields_to_bytes(v, out_rows, r_mask[:, None], T, T, BX + BE + BR, BX + BE + BR, NBYTES, NBYTES_PAD)


def _tables(spec: OctopusSpec, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Codebooks, their midpoints and the plane sign matrix (zeros for a non-Hadamard rotation), and
    whether the rotation is Hadamard (cached on the spec)."""

    def build() -> tuple:
        d, tp = spec.head_dim, plane_width(spec.head_dim)
        signs = spec.hadamard_signs()  # H diag(s): entries exactly +-1
        planes = torch.zeros(d, 3 * tp)
        if signs is not None:
            for c in range(3):
                idx = torch.arange(c, d, 3)
                planes[:, c * tp: c * tp + idx.numel()] = signs.T[:, idx].float()
        cbx, cbe, _ = spec.codebooks(device)
        return (cbx, cbe) + tuple(midpoints(c).to(device) for c in (
            spec.xi_codebook, spec.eta_codebook, spec.rho_codebook)) + (planes.to(device), signs is not None)

    return spec.cached(("encode", device), build)


#: GPU launch: 16 rows, gather lookups, gather-free packing. Source: H100, docs/kernels/codec_pass.md
#: (3 bits: 3.38 ms vs 3.71 with tl.gather packing, which spills; more rows per program spill too).
GPU_CONFIG = EncodeConfig(pack8=True)


def octopus_encode(codec, x: torch.Tensor, fused_rotation: bool = False,
                   config: EncodeConfig | None = None, check_finite: bool = True) -> PackedTensor:
    """GPU path of ``codec.encode(x)``: the same :class:`PackedTensor` (see the module docstring for
    what ``fused_rotation`` changes; ``config`` changes only the speed). NaN/Inf input (or an fp16 norm
    overflow) raises :class:`CodecError` from the norms, a host sync; ``check_finite=False`` leaves
    that to the caller (:meth:`Codec.count_nonfinite_side_info`)."""
    spec = kernel_spec(codec)
    cbx, cbe, thx, the, thr, planes, is_hadamard = _tables(spec, x.device)
    spec, inp = encode_prologue(codec, x, fused_rotation, planes, is_hadamard)
    cfg = default_config(config, GPU_CONFIG)
    n = inp.src.shape[0]
    if n:
        _octopus_encode_kernel[(triton.cdiv(n, cfg.block_rows),)](
            inp.src, inp.src.stride(0), inp.src, inp.norms, inp.codes, inp.codes.stride(0), inp.sign_matrix,
            spec.head_dim ** -0.5, cbx, cbe, thx, the, thr, n, D=spec.head_dim, T=spec.n_triplets,
            TP=plane_width(spec.head_dim), BX=spec.bx, BE=spec.be, BR=spec.br, NBYTES=spec.nbytes,
            NBYTES_PAD=triton.next_power_of_2(spec.nbytes), JOINT=spec.joint_rounding,
            FUSED_ROTATION=fused_rotation, EXACT=not fused_rotation, BLOCK_R=cfg.block_rows,
            LOOKUP=cfg.lookup, PACK8=cfg.pack8, num_warps=cfg.num_warps,
            enable_fp_fusion=fused_rotation)
    return encode_epilogue(codec, x, spec, inp, check_finite)
