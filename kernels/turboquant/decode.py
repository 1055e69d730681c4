"""TurboQuant-mse decode: packed per-coordinate codes -> rotated unit vectors (optionally times gamma).

Coordinate ``j`` of the rotated unit vector is ``codebook[idx_j]``, ``idx_j`` the LSB-first field at
bit ``sum(widths[:j])`` (channels ``[0, n_high)`` one bit wider at fractional rates), looked up in
registers. :func:`tq_values` is the tile decode the fused attention loop shares. The reference is
:func:`..reference.reference_rotated` (the codec's ``dequantize_fields``); :func:`tq_decode` ends
as the codec's ``decode`` does, bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from octopus_diffusers.codecs import PackedTensor

from ..launch import checked_spec, decode_epilogue, decode_rows_prologue
from ..spec import TurboQuantSpec
from ..tl.helpers import (LOOKUP_GATHER, codebook_for, field_groups, field_offset, lookup_any, lookup_mode,
                          unpack_field, unpack_grouped)


@triton.jit
def tq_tile(row_ptr, row_mask, cb_hi, cb_lo, D: tl.constexpr, N_HI: tl.constexpr, B_HI: tl.constexpr,
            B_LO: tl.constexpr, NBYTES: tl.constexpr, LOOKUP: tl.constexpr = False):
    """Rotated unit vectors of a tile of packed rows: float32 ``[R, D]`` (codebooks from
    :func:`codebook_for`, ``cb_lo`` unused at an integer rate)."""
    j = tl.arange(0, D)[None, :]
    idx = unpack_field(row_ptr, field_offset(j, N_HI, B_HI, B_LO), row_mask, NBYTES, B_HI)
    if B_HI == B_LO:
        return lookup_any(cb_hi, idx, 1 << B_HI, LOOKUP)
    return tl.where(j < N_HI, lookup_any(cb_hi, idx, 1 << B_HI, LOOKUP),
                    lookup_any(cb_lo, idx & ((1 << B_LO) - 1), 1 << B_LO, LOOKUP))


@triton.jit
def tq_values(row_ptr, row_mask, cb_hi, cb_lo, D: tl.constexpr, N_HI: tl.constexpr, B_HI: tl.constexpr,
              B_LO: tl.constexpr, NBYTES: tl.constexpr, LOOKUP: tl.constexpr, GE: tl.constexpr, GB: tl.constexpr):
    """Rotated unit vectors of a tile of packed rows, float32 ``[R, D]``: byte-group unpacking when
    ``GE > 0`` (one width for all channels, :func:`~..tl.helpers.field_groups`), else :func:`tq_tile`'s
    per-field reads (what the decode kernel and the fused attention loop share)."""
    if GE > 0:
        val = lookup_any(cb_hi, unpack_grouped(row_ptr, row_mask, D, B_HI, GE, GB), 1 << B_HI, LOOKUP)
    else:
        val = tq_tile(row_ptr, row_mask, cb_hi, cb_lo, D, N_HI, B_HI, B_LO, NBYTES, LOOKUP)
    return val


@triton.jit
def _tq_decode_kernel(CODES, s_c, NORMS, OUT, s_o, CB_HI, CB_LO, N_ROWS, D: tl.constexpr,
                      N_HI: tl.constexpr, B_HI: tl.constexpr, B_LO: tl.constexpr, NBYTES: tl.constexpr,
                      SCALE_BY_NORM: tl.constexpr, LOOKUP: tl.constexpr, BLOCK_R: tl.constexpr,
                      GE: tl.constexpr = 0, GB: tl.constexpr = 0):
    """``LOOKUP`` a ``tl.helpers.LOOKUP_*`` mode; ``GE > 0``: one width, fields read in byte groups
    (:func:`unpack_grouped`), else per field."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = rows < N_ROWS
    row_ptr = CODES + rows[:, None].to(tl.int64) * s_c
    y = tq_values(row_ptr, r_mask[:, None], codebook_for(CB_HI, BLOCK_R, 1 << B_HI, LOOKUP),
                  codebook_for(CB_LO, BLOCK_R, 1 << B_LO, LOOKUP), D, N_HI, B_HI, B_LO, NBYTES, LOOKUP, GE, GB)
    if SCALE_BY_NORM:
        y = y * tl.load(NORMS + rows, mask=r_mask, other=0.0).to(tl.float32)[:, None]
    tl.store(OUT + rows[:, None].to(tl.int64) * s_o + tl.arange(0, D)[None, :], y.to(OUT.dtype.element_ty),
             mask=r_mask[:, None])


#: Decode launch, measured on the H100 (docs/kernels/codec_pass.md): fields read in byte groups; 32 rows
#: for table-load or select lookups (3 bits, load: 0.145 ms against 0.274 per field with gathers),
#: while tl.gather (what decode-then-attend uses, attention.decoded.DECODE_LOOKUP) keeps
#: MIN_GATHER_ROWS (2,740 GB/s at 3 bits, 92 % of copy: docs/kernels/results.csv, codec, 2026-11-23,
#: d69f2f6; load lookups measured equal).
GPU_DECODE_BLOCK_ROWS = 32
#: The tl.gather path keeps >= 64 rows: with 16 rows, 2- and 2.5-bit codebooks (4 entries) failed the
#: GPU tests as OCTOPUS's gather did (octopus.decode.MIN_GATHER_ROWS).
MIN_GATHER_ROWS = 64


def tq_decode_rows(codes: torch.Tensor, norms: torch.Tensor, spec: TurboQuantSpec,
                   out_dtype: torch.dtype = torch.float32, scale_by_norm: bool = False, lookup: int = LOOKUP_GATHER,
                   block_rows: int | None = None, grouped: bool = True) -> torch.Tensor:
    """Rotated reconstruction of every row of ``codes`` ``(..., nbytes)``: ``(..., d)`` in ``out_dtype``
    (``gamma * y_hat`` when ``scale_by_norm``, else ``y_hat``).
    ``lookup``: codebook read (False gather, True select, or a ``tl.helpers.LOOKUP_*``);
    ``block_rows`` / ``grouped`` (byte-group unpacking, one width only) override the GPU launch."""
    lead = codes.shape[:-1]
    c2, n2, out = decode_rows_prologue(codes, norms, spec, out_dtype)
    cb_hi, cb_lo, _ = spec.codebooks(codes.device)
    mode = lookup_mode(lookup)
    gpu = torch.cuda.is_available()
    br = block_rows or (GPU_DECODE_BLOCK_ROWS if gpu else 16)
    if mode == LOOKUP_GATHER and gpu:
        br = max(br, MIN_GATHER_ROWS)
    ge, gb = field_groups(spec.bits_hi, spec.head_dim) if spec.bits_hi == spec.bits_lo else (0, 0)
    if not grouped:
        ge, gb = 0, 0
    if c2.shape[0]:
        _tq_decode_kernel[(triton.cdiv(c2.shape[0], br),)](
            c2, c2.stride(0), n2, out, out.stride(0), cb_hi, cb_lo, c2.shape[0], D=spec.head_dim,
            N_HI=spec.n_high, B_HI=spec.bits_hi, B_LO=spec.bits_lo, NBYTES=spec.nbytes,
            SCALE_BY_NORM=scale_by_norm, LOOKUP=mode, BLOCK_R=br, GE=ge, GB=gb, num_warps=4)
    return out.reshape(*lead, spec.head_dim)


def tq_decode(codec, packed: PackedTensor) -> torch.Tensor:
    """GPU path of ``codec.decode(packed)`` (same result, dtype and shape)."""
    spec = checked_spec(codec, packed)
    return decode_epilogue(codec, packed, tq_decode_rows(packed.fields["codes"], packed.fields["norms"], spec))
