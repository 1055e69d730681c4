"""OCTOPUS decode: packed triplet codes -> rotated unit vectors (optionally times gamma), one pass.

The kernel reads each vector's packed row once, looks the three indices of every triplet up in
codebooks held in registers, unfolds the octahedron, normalises and scales by rho, and writes the
``d`` coordinates (the padded ones dropped). Two outputs:

* ``rotated=True`` (what decode-then-attend uses): ``gamma * y_hat`` in the rotated basis, in the
  attention dtype, so that ``q_rot . k_rot = q . k_hat``;
* :func:`octopus_decode` (the reference's ``decode``): ``y_hat`` in float32 from the kernel, then the
  same ``rotation.inverse(y_hat) * gamma`` as :meth:`OctopusCodec._decode`, so the GPU path and the
  reference agree bit for bit on one device.

:func:`octopus_decode_reference` is the reference meaning (the codec's own ``dequantize_rotated``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from octopus_diffusers.codecs import CodecError, PackedTensor

from .codec_spec import OctopusSpec, check_packed, kernel_spec, plane_width, reference_rotated
from .tl_exact import norm3
from .tl_helpers import load_codebook, lookup, lookup_any, octahedral_unfold, unpack_field


@triton.jit
def octopus_planes_tile(row_ptr, row_mask, cbx, cbe, cbr, T: tl.constexpr, TP: tl.constexpr,
                        BX: tl.constexpr, BE: tl.constexpr, BR: tl.constexpr, NBYTES: tl.constexpr,
                        SELECT: tl.constexpr = False):
    """Rotated unit vectors of a tile of packed rows as three float32 ``[R, TP]`` planes (x, y, z of
    each triplet; zero beyond ``T``), for attention. Fast arithmetic (one reciprocal square root per
    triplet): within float32 rounding of the reference, not bit-exact."""
    i = tl.arange(0, TP)[None, :]
    valid = i < T
    v = unpack_field(row_ptr, i * (BX + BE + BR), row_mask & valid, NBYTES, BX + BE + BR)
    xi = lookup_any(cbx, v & ((1 << BX) - 1), 1 << BX, SELECT)
    eta = lookup_any(cbe, (v >> BX) & ((1 << BE) - 1), 1 << BE, SELECT)
    rho = lookup_any(cbr, v >> (BX + BE), 1 << BR, SELECT)
    x, y, z = octahedral_unfold(xi, eta)
    r = tl.where(valid, rho * tl.rsqrt(x * x + y * y + z * z), 0.0)
    return x * r, y * r, z * r


@triton.jit
def _octopus_decode_kernel(CODES, s_c, NORMS, OUT, s_o, CBX, CBE, CBR, N_ROWS,
                           D: tl.constexpr, T: tl.constexpr, TP: tl.constexpr, BX: tl.constexpr,
                           BE: tl.constexpr, BR: tl.constexpr, NBYTES: tl.constexpr,
                           SCALE_BY_NORM: tl.constexpr, EXACT: tl.constexpr, SELECT: tl.constexpr,
                           BLOCK_R: tl.constexpr):
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
    elif SELECT:
        x, y, z = octopus_planes_tile(row_ptr, r_mask[:, None], CBX, CBE, CBR, T, TP, BX, BE, BR, NBYTES, True)
    else:
        x, y, z = octopus_planes_tile(row_ptr, r_mask[:, None], load_codebook(CBX, BLOCK_R, 1 << BX),
                                      load_codebook(CBE, BLOCK_R, 1 << BE), load_codebook(CBR, BLOCK_R, 1 << BR),
                                      T, TP, BX, BE, BR, NBYTES)
    if SCALE_BY_NORM:
        g = tl.load(NORMS + rows, mask=r_mask, other=0.0).to(tl.float32)[:, None]
        x, y, z = x * g, y * g, z * g
    out = OUT + rows[:, None].to(tl.int64) * s_o + 3 * i
    m = r_mask[:, None] & valid
    tl.store(out, x.to(OUT.dtype.element_ty), mask=m)
    tl.store(out + 1, y.to(OUT.dtype.element_ty), mask=m & (3 * i + 1 < D))
    tl.store(out + 2, z.to(OUT.dtype.element_ty), mask=m & (3 * i + 2 < D))


#: Rows (vectors) per program on the GPU, measured by the benchmark's "tune" section on the H100
#: (docs/kernels/run4_compile_crash.log, fast decode, 3 bits, 1.3 M vectors): 8 rows 0.947 ms, 16 rows
#: 1.724, 32 rows 3.092, 64 rows 3.053 — every triplet plane is a register tile, more rows spill.
GPU_BLOCK_ROWS = 8
#: The tl.gather path (the exact decode) keeps 64 rows: Triton 3.6 aborts compiling a gather of a
#: 2-entry codebook over 8 or 16 rows ("GatherLoweringHelper(op).isWarpLocal()" assertion,
#: docs/kernels/run4_compile_crash.log, run5a_compile_crash.log); 64 rows compiled for 2-4 bits (runs
#: 1-3). The select path (used by attention) has no such limit.
MIN_GATHER_ROWS = 64


def _block_rows(gather: bool) -> int:
    if not torch.cuda.is_available():
        return 16
    return max(GPU_BLOCK_ROWS, MIN_GATHER_ROWS) if gather else GPU_BLOCK_ROWS


def octopus_decode_rows(codes: torch.Tensor, norms: torch.Tensor, spec: OctopusSpec,
                        out_dtype: torch.dtype = torch.float32, scale_by_norm: bool = False,
                        out: torch.Tensor | None = None, exact: bool = True,
                        select_lookup: bool = False) -> torch.Tensor:
    """Rotated reconstruction of every row of ``codes`` ``(..., nbytes)``: ``(..., d)`` in ``out_dtype``
    (``gamma * y_hat`` when ``scale_by_norm``, else ``y_hat``); written into ``out`` (rows x d) if given.
    ``exact=False`` (attention) uses one reciprocal square root per triplet instead of the reference's
    IEEE divisions (within float32 rounding of the reference); ``select_lookup`` (fast path only) reads
    the codebooks by compare-select chains instead of ``tl.gather``."""
    if codes.dtype != torch.uint8 or codes.shape[-1] != spec.nbytes:
        raise CodecError(f"octopus kernel: expected uint8 codes (..., {spec.nbytes}), got {codes.dtype} "
                         f"{tuple(codes.shape)}")
    lead = codes.shape[:-1]
    c2 = codes.reshape(-1, spec.nbytes)
    n2 = norms.reshape(-1)
    if out is None:
        out = torch.empty((c2.shape[0], spec.head_dim), device=codes.device, dtype=out_dtype)
    elif out.shape != (c2.shape[0], spec.head_dim) or out.stride(-1) != 1:
        raise CodecError(f"decode: out must be ({c2.shape[0]}, {spec.head_dim}) with unit last stride")
    dev = codes.device
    br = _block_rows(gather=exact or not select_lookup)
    grid = (triton.cdiv(c2.shape[0], br),)
    if c2.shape[0]:
        _octopus_decode_kernel[grid](
            c2, c2.stride(0), n2, out, out.stride(0), spec.xi_codebook.to(dev), spec.eta_codebook.to(dev),
            spec.rho_codebook.to(dev), c2.shape[0], D=spec.head_dim, T=spec.n_triplets,
            TP=plane_width(spec.head_dim), BX=spec.bx, BE=spec.be, BR=spec.br, NBYTES=spec.nbytes,
            SCALE_BY_NORM=scale_by_norm, EXACT=exact, SELECT=select_lookup, BLOCK_R=br, num_warps=4, enable_fp_fusion=not exact)
    return out.reshape(*lead, spec.head_dim)


def octopus_decode(codec, packed: PackedTensor) -> torch.Tensor:
    """GPU path of ``codec.decode(packed)`` (same result, same dtype and shape)."""
    spec = kernel_spec(codec)
    check_packed(codec, packed, spec)
    y_hat = octopus_decode_rows(packed.fields["codes"], packed.fields["norms"], spec)
    gamma = packed.fields["norms"].to(torch.float32)
    return (codec.rotation.inverse(y_hat) * gamma[..., None]).to(packed.dtype)


def octopus_decode_reference(codec, packed: PackedTensor, rotated: bool = False) -> torch.Tensor:
    """Reference: the codec's own decode (``rotated=True``: ``gamma * y_hat`` before ``R``)."""
    return reference_rotated(codec, packed) if rotated else codec.decode(packed)
