"""OCTOPUS decode: packed triplet codes -> rotated unit vectors (optionally times gamma), one pass.

The kernels read each vector's packed row once, look the three indices of every triplet up in the
codebooks (``tl.helpers.lookup_any``: gather, compare-select or table load), unfold the octahedron,
normalise and scale by rho, and write the ``d`` coordinates (the padded ones dropped). The exact path
works on row tiles (triplets as 64-wide planes); the fast path on a flat range of triplets
(:func:`_octopus_decode_flat_kernel`, no padding lanes), optionally writing plane order
(:func:`..spec.plane_permutation`) for whole-row stores. Two outputs:

* :func:`octopus_decode_rows` with ``scale_by_norm=True`` (what decode-then-attend uses):
  ``gamma * y_hat`` in the rotated basis, in the attention dtype, so that ``q_rot . k_rot = q . k_hat``;
* :func:`octopus_decode` (the reference's ``decode``): ``y_hat`` in float32 from the kernel, then the
  same ``rotation.inverse(y_hat) * gamma`` as :meth:`OctopusCodec._decode`, so the GPU path and the
  reference agree bit for bit on one device.

The reference is :func:`..reference.reference_rotated` (the codec's own ``dequantize_rotated``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from octopus_diffusers.codecs import PackedTensor

from ..launch import checked_spec, decode_epilogue, decode_rows_prologue
from ..spec import OctopusSpec, plane_width
from ..tl.exact import norm3
from ..tl.helpers import (LOOKUP_GATHER, codebook_for, load_codebook, lookup,
                         lookup_any, lookup_mode, octahedral_unfold, unpack_field, unpack_groups8)


@triton.jit
def octopus_unit_triplets(v, cbx, cbe, cbr, BX: tl.constexpr, BE: tl.constexpr, BR: tl.constexpr,
                          LOOKUP: tl.constexpr):
    """Octahedron point ``p`` and scale ``rho / ||p||`` of packed triplet fields ``v`` (any shape;
    ``LOOKUP`` a ``LOOKUP_*`` mode): fast arithmetic (one reciprocal square root), within float32
    rounding of the reference. The unit vector times rho is ``p * scale``."""
    xi = lookup_any(cbx, v & ((1 << BX) - 1), 1 << BX, LOOKUP)
    eta = lookup_any(cbe, (v >> BX) & ((1 << BE) - 1), 1 << BE, LOOKUP)
    rho = lookup_any(cbr, v >> (BX + BE), 1 << BR, LOOKUP)
    x, y, z = octahedral_unfold(xi, eta)
    return x, y, z, rho * tl.rsqrt(x * x + y * y + z * z)


@triton.jit
def octopus_planes_tile(row_ptr, row_mask, cbx, cbe, cbr, T: tl.constexpr, TP: tl.constexpr,
                        BX: tl.constexpr, BE: tl.constexpr, BR: tl.constexpr, NBYTES: tl.constexpr,
                        LOOKUP: tl.constexpr = False, GROUPED: tl.constexpr = False):
    """Rotated unit vectors of a tile of packed rows as three float32 ``[R, TP]`` planes (x, y, z of
    each triplet; zero beyond ``T``), for attention. Fast arithmetic (one reciprocal square root per
    triplet): within float32 rounding of the reference, not bit-exact. ``GROUPED``: read the fields
    in groups of 8 (:func:`unpack_groups8`) instead of one or two byte loads per field."""
    i = tl.arange(0, TP)[None, :]
    valid = i < T
    if GROUPED:
        v = unpack_groups8(row_ptr, row_mask, TP, BX + BE + BR, NBYTES)
    else:
        v = unpack_field(row_ptr, i * (BX + BE + BR), row_mask & valid, NBYTES, BX + BE + BR)
    x, y, z, r = octopus_unit_triplets(v, cbx, cbe, cbr, BX, BE, BR, LOOKUP)
    r = tl.where(valid, r, 0.0)
    return x * r, y * r, z * r


@triton.jit
def _store_triplets(out_row, j, x, y, z, m, D: tl.constexpr, PLANES: tl.constexpr):
    """Store triplet ``j``'s coordinates (``out_row`` points at each row's output) interleaved
    (``3 j + c``, the codec's coordinate order) or, with ``PLANES``, as planes (all x, then all y, then
    all z: :func:`..spec.plane_permutation`), where consecutive triplets write consecutive elements."""
    if PLANES:
        ox = j
        oy = (D + 2) // 3 + j
        oz = (D + 2) // 3 + (D + 1) // 3 + j
    else:
        ox = 3 * j
        oy = 3 * j + 1
        oz = 3 * j + 2
    tl.store(out_row + ox, x.to(out_row.dtype.element_ty), mask=m)
    tl.store(out_row + oy, y.to(out_row.dtype.element_ty), mask=m & (3 * j + 1 < D))
    tl.store(out_row + oz, z.to(out_row.dtype.element_ty), mask=m & (3 * j + 2 < D))


@triton.jit
def _octopus_decode_kernel(CODES, s_c, NORMS, OUT, s_o, CBX, CBE, CBR, N_ROWS,
                           D: tl.constexpr, T: tl.constexpr, TP: tl.constexpr, BX: tl.constexpr,
                           BE: tl.constexpr, BR: tl.constexpr, NBYTES: tl.constexpr,
                           SCALE_BY_NORM: tl.constexpr, EXACT: tl.constexpr, LOOKUP: tl.constexpr,
                           BLOCK_R: tl.constexpr, GROUPED: tl.constexpr = False, PLANES: tl.constexpr = False):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = rows < N_ROWS
    i = tl.arange(0, TP)[None, :]
    valid = i < T
    row_ptr = CODES + rows[:, None].to(tl.int64) * s_c
    if EXACT:
        v = unpack_field(row_ptr, i * (BX + BE + BR), r_mask[:, None] & valid, NBYTES, BX + BE + BR)
        xi = lookup(load_codebook(CBX, BLOCK_R, 1 << BX), v & ((1 << BX) - 1))
        eta = lookup(load_codebook(CBE, BLOCK_R, 1 << BE), (v >> BX) & ((1 << BE) - 1))
        rho = lookup(load_codebook(CBR, BLOCK_R, 1 << BR), v >> (BX + BE))
        x, y, z = octahedral_unfold(xi, eta)
        nrm = norm3(x, y, z)
        # (p / ||p||) * rho, in the reference's order of operations.
        x = tl.div_rn(x, nrm) * rho
        y = tl.div_rn(y, nrm) * rho
        z = tl.div_rn(z, nrm) * rho
    else:
        x, y, z = octopus_planes_tile(row_ptr, r_mask[:, None], codebook_for(CBX, BLOCK_R, 1 << BX, LOOKUP),
                                      codebook_for(CBE, BLOCK_R, 1 << BE, LOOKUP),
                                      codebook_for(CBR, BLOCK_R, 1 << BR, LOOKUP), T, TP, BX, BE, BR, NBYTES,
                                      LOOKUP, GROUPED)
    if SCALE_BY_NORM:
        g = tl.load(NORMS + rows, mask=r_mask, other=0.0).to(tl.float32)[:, None]
        x, y, z = x * g, y * g, z * g
    _store_triplets(OUT + rows[:, None].to(tl.int64) * s_o, i, x, y, z, r_mask[:, None] & valid, D, PLANES)


@triton.jit
def _octopus_decode_flat_kernel(CODES, s_c, NORMS, OUT, s_o, CBX, CBE, CBR, N_ROWS, D: tl.constexpr,
                                T: tl.constexpr, BX: tl.constexpr, BE: tl.constexpr, BR: tl.constexpr,
                                NBYTES: tl.constexpr, SCALE_BY_NORM: tl.constexpr, LOOKUP: tl.constexpr,
                                BLOCK_T: tl.constexpr, PLANES: tl.constexpr = False):
    """Fast decode over a flat range of ``BLOCK_T`` triplets (row ``t // T``, triplet ``t % T``): no
    lanes wasted on the padding of a power-of-two plane (43 triplets in 64 at d = 128), every store
    of a warp covers one contiguous stretch of the output. ``LOOKUP``: select or load lookups (int32
    triplet numbers: the launcher checks ``N_ROWS * T < 2**31``)."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row = t // T
    j = t - row * T
    m = row < N_ROWS
    row64 = row.to(tl.int64)
    v = unpack_field(CODES + row64 * s_c, j * (BX + BE + BR), m, NBYTES, BX + BE + BR)
    x, y, z, r = octopus_unit_triplets(v, CBX, CBE, CBR, BX, BE, BR, LOOKUP)
    if SCALE_BY_NORM:
        r = r * tl.load(NORMS + row, mask=m, other=0.0).to(tl.float32)
    x, y, z = x * r, y * r, z * r
    _store_triplets(OUT + row64 * s_o, j, x, y, z, m, D, PLANES)


@dataclass(frozen=True)
class DecodeConfig:
    """Launch choices of the fast (attention) OCTOPUS decode; none changes the values.

    ``flat``: :func:`_octopus_decode_flat_kernel` with ``block`` triplets per program; else the row-tile
    kernel with ``block`` rows and, with ``grouped``, gather-free 8-field unpacking
    (``tl.helpers.unpack_groups8``; measured, not the default: docs/kernels/codec_pass.md). The lookup
    mode comes from the caller (``lookup``: True = select chain, False = gather, or a
    ``tl.helpers.LOOKUP_*``)."""

    flat: bool = False
    block: int = 8
    grouped: bool = False
    num_warps: int = 4


# Launch table of the OCTOPUS decode (H100, docs/kernels/codec_pass.md; the launch is re-measured by
# ``octopus_diffusers.eval.kernel_benchmark --sections codec``):
#: Fast decode: flat, 512 triplets per program, 4 warps (1.3 M vectors at 3 bits, load lookups: 0.39 ms
#: vs 0.80 for the 8-row tile).
GPU_CONFIG = DecodeConfig(flat=True, block=512)
#: Row-tile kernel where the flat one is not used (gather lookups, or >= 2**31 triplets): 8 rows (every
#: triplet plane is a register tile; 16 rows and more spill: 0.947 ms at 8 rows vs 1.724 at 16).
GPU_BLOCK_ROWS = 8
#: NOTE: the tl.gather path (the exact decode) keeps >= 64 rows: Triton 3.6 aborts compiling a gather of
#: a 2-entry codebook over 8 or 16 rows (a "GatherLoweringHelper(op).isWarpLocal()" assertion).
MIN_GATHER_ROWS = 64
#: Under the interpreter: the same kernels, smaller blocks.
CPU_CONFIG = DecodeConfig(flat=True, block=256)
CPU_BLOCK_ROWS = 16


def octopus_decode_rows(codes: torch.Tensor, norms: torch.Tensor, spec: OctopusSpec,
                        out_dtype: torch.dtype = torch.float32, scale_by_norm: bool = False, exact: bool = True,
                        lookup: int = LOOKUP_GATHER, config: DecodeConfig | None = None,
                        plane_order: bool = False) -> torch.Tensor:
    """Rotated reconstruction of every row of ``codes`` ``(..., nbytes)``: ``(..., d)`` in ``out_dtype``
    (``gamma * y_hat`` when ``scale_by_norm``, else ``y_hat``).
    ``exact=False`` (attention) uses one reciprocal square root per triplet instead of the reference's
    IEEE divisions (within float32 rounding of the reference); ``lookup`` (fast path only) reads
    the codebooks by compare-select chains (True), ``tl.gather`` (False) or loads (``LOOKUP_LOAD``);
    ``config`` (fast path only) the launch (default: the measured GPU one). ``plane_order``: the ``d``
    coordinates in :func:`..spec.plane_permutation`'s order instead of the codec's (``out[..., k]`` =
    interleaved ``[..., perm[k]]``): whole-row stores, for a consumer that permutes its other operand
    (decode-then-attend: the columns of the query rotation / rows of the output rotation)."""
    lead = codes.shape[:-1]
    c2, n2, out = decode_rows_prologue(codes, norms, spec, out_dtype)
    n = c2.shape[0]
    mode = LOOKUP_GATHER if exact else lookup_mode(lookup)
    gpu = torch.cuda.is_available()
    cfg = config or (GPU_CONFIG if gpu else CPU_CONFIG)
    cbx, cbe, cbr = spec.codebooks(codes.device)
    if not n:
        return out.reshape(*lead, spec.head_dim)
    common = dict(D=spec.head_dim, T=spec.n_triplets, BX=spec.bx, BE=spec.be, BR=spec.br, NBYTES=spec.nbytes,
                  SCALE_BY_NORM=scale_by_norm, LOOKUP=mode, PLANES=plane_order, num_warps=cfg.num_warps,
                  enable_fp_fusion=not exact)
    # int32 triplet indices: the last block runs up to block - 1 past n * T
    if cfg.flat and mode != LOOKUP_GATHER and n * spec.n_triplets + cfg.block <= 2 ** 31:
        _octopus_decode_flat_kernel[(triton.cdiv(n * spec.n_triplets, cfg.block),)](
            c2, c2.stride(0), n2, out, out.stride(0), cbx, cbe, cbr, n, BLOCK_T=cfg.block, **common)
    else:
        br = (GPU_BLOCK_ROWS if gpu else CPU_BLOCK_ROWS) if cfg.flat else cfg.block
        if mode == LOOKUP_GATHER and gpu:
            br = max(br, MIN_GATHER_ROWS)
        _octopus_decode_kernel[(triton.cdiv(n, br),)](
            c2, c2.stride(0), n2, out, out.stride(0), cbx, cbe, cbr, n, TP=plane_width(spec.head_dim),
            EXACT=exact, BLOCK_R=br, GROUPED=cfg.grouped and not exact, **common)
    return out.reshape(*lead, spec.head_dim)


def octopus_decode(codec, packed: PackedTensor) -> torch.Tensor:
    """GPU path of ``codec.decode(packed)`` (same result, same dtype and shape)."""
    spec = checked_spec(codec, packed)
    return decode_epilogue(codec, packed, octopus_decode_rows(packed.fields["codes"], packed.fields["norms"], spec))
