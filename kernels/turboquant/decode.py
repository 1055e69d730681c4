"""TurboQuant-mse encode and decode kernels (the comparison codec), one pass each.

Per coordinate j of the rotated unit vector: ``idx_j = bucketize(y_j, midpoints)`` against the
sorted Lloyd-Max codebook of its width (channels ``[0, n_high)`` one bit wider at fractional rates),
packed LSB-first at offset ``sum(widths[:j])``. Decode looks the codes up in registers.

As for OCTOPUS (:mod:`.octopus_encode`), ``fused_rotation=False`` takes the norm and rotation from
torch op for op as the reference does and is bit-exact; ``fused_rotation=True`` rotates inside the
kernel (Hadamard signs on the tensor cores) and agrees except at float near-ties.
:func:`turboquant_reference` names the reference (the codec's own methods).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from octopus_diffusers.codecs import CodecError, PackedTensor

from .codec_spec import (EncodeConfig, TurboQuantSpec, check_packed, default_config, device_codebooks, hadamard_signs,
                         kernel_spec, midpoints, packed_meta, reference_rotated)
from .tl_helpers import (LOOKUP_GATHER, codebook_for, field_groups, field_offset, lookup_any, lookup_mode,
                         nearest_count, pack_fields_to_bytes, pack_groups8, unpack_field, unpack_grouped)


@triton.jit
def tq_tile(row_ptr, row_mask, cb_hi, cb_lo, D: tl.constexpr, N_HI: tl.constexpr, B_HI: tl.constexpr,
            B_LO: tl.constexpr, NBYTES: tl.constexpr, SELECT: tl.constexpr = False):
    """Rotated unit vectors of a tile of packed rows: float32 ``[R, D]`` (codebooks from
    :func:`codebook_for`, ``cb_lo`` unused at an integer rate)."""
    j = tl.arange(0, D)[None, :]
    idx = unpack_field(row_ptr, field_offset(j, N_HI, B_HI, B_LO), row_mask, NBYTES, B_HI)
    if B_HI == B_LO:
        return lookup_any(cb_hi, idx, 1 << B_HI, SELECT)
    return tl.where(j < N_HI, lookup_any(cb_hi, idx, 1 << B_HI, SELECT),
                    lookup_any(cb_lo, idx & ((1 << B_LO) - 1), 1 << B_LO, SELECT))


@triton.jit
def tq_values(row_ptr, row_mask, cb_hi, cb_lo, D: tl.constexpr, N_HI: tl.constexpr, B_HI: tl.constexpr,
              B_LO: tl.constexpr, NBYTES: tl.constexpr, SELECT: tl.constexpr, GE: tl.constexpr, GB: tl.constexpr):
    """Rotated unit vectors of a tile of packed rows, float32 ``[R, D]``: byte-group unpacking when
    ``GE > 0`` (one width for all channels, :func:`~.tl_helpers.field_groups`), else :func:`tq_tile`'s
    per-field reads (what the decode kernel and the fused attention loop share)."""
    if GE > 0:
        val = lookup_any(cb_hi, unpack_grouped(row_ptr, row_mask, D, B_HI, GE, GB), 1 << B_HI, SELECT)
    else:
        val = tq_tile(row_ptr, row_mask, cb_hi, cb_lo, D, N_HI, B_HI, B_LO, NBYTES, SELECT)
    return val


@triton.jit
def _tq_decode_kernel(CODES, s_c, NORMS, OUT, s_o, CB_HI, CB_LO, N_ROWS, D: tl.constexpr,
                      N_HI: tl.constexpr, B_HI: tl.constexpr, B_LO: tl.constexpr, NBYTES: tl.constexpr,
                      SCALE_BY_NORM: tl.constexpr, SELECT: tl.constexpr, BLOCK_R: tl.constexpr,
                      GE: tl.constexpr = 0, GB: tl.constexpr = 0):
    """``SELECT`` a ``tl_helpers.LOOKUP_*`` mode; ``GE > 0``: one width, fields read in byte groups
    (:func:`unpack_grouped`), else per field."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = rows < N_ROWS
    row_ptr = CODES + rows[:, None].to(tl.int64) * s_c
    y = tq_values(row_ptr, r_mask[:, None], codebook_for(CB_HI, BLOCK_R, 1 << B_HI, SELECT),
                  codebook_for(CB_LO, BLOCK_R, 1 << B_LO, SELECT), D, N_HI, B_HI, B_LO, NBYTES, SELECT, GE, GB)
    if SCALE_BY_NORM:
        y = y * tl.load(NORMS + rows, mask=r_mask, other=0.0).to(tl.float32)[:, None]
    tl.store(OUT + rows[:, None].to(tl.int64) * s_o + tl.arange(0, D)[None, :], y.to(OUT.dtype.element_ty),
             mask=r_mask[:, None])


@triton.jit
def _tq_encode_kernel(X, s_x, NORMS_OUT, CODES, s_c, SIGNS, inv_sqrt_d, THR_HI, THR_LO, N_ROWS,
                      D: tl.constexpr, N_HI: tl.constexpr, B_HI: tl.constexpr, B_LO: tl.constexpr,
                      NBYTES: tl.constexpr, NBYTES_PAD: tl.constexpr, FUSED_ROTATION: tl.constexpr,
                      BLOCK_R: tl.constexpr, PACK8: tl.constexpr = False):
    """``BLOCK_R`` rows per program; ``PACK8`` (:func:`pack_groups8`) only for one width."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = rows < N_ROWS
    j = tl.arange(0, D)
    x = tl.load(X + rows[:, None].to(tl.int64) * s_x + j[None, :], mask=r_mask[:, None], other=0.0)
    if FUSED_ROTATION:
        xf = x.to(tl.float32)
        gamma = tl.sqrt(tl.sum(xf * xf, 1))
        tl.store(NORMS_OUT + rows, gamma.to(NORMS_OUT.dtype.element_ty), mask=r_mask)
        s = tl.load(SIGNS + j[:, None] * D + j[None, :])
        y = tl.dot(x.to(SIGNS.dtype.element_ty), s) * (inv_sqrt_d / tl.where(gamma > 0, gamma, 1.0))[:, None]
    else:
        y = x
    idx = nearest_count(y, THR_HI, B_HI)
    if B_HI != B_LO:
        idx = tl.where(j[None, :] < N_HI, idx, nearest_count(y, THR_LO, B_LO))
    out_rows = CODES + rows[:, None].to(tl.int64) * s_c
    if PACK8:
        pack_groups8(idx, out_rows, r_mask[:, None], B_HI, NBYTES)
    else:
        pack_fields_to_bytes(idx, out_rows, r_mask[:, None], D, N_HI, B_HI, B_LO, NBYTES, NBYTES_PAD)


_TABLES: dict[tuple, tuple] = {}


def _tables(spec: TurboQuantSpec, device: torch.device) -> tuple:
    """Codebooks, midpoints, the +-1 sign matrix ``(H diag(s)).T`` (float32; rounded for a non-Hadamard
    rotation, which fused rotation refuses) and whether the rotation is Hadamard."""
    key = (spec, device)
    if key not in _TABLES:
        signs = hadamard_signs(spec)
        matrix = (signs if signs is not None else (spec.rotation.double() * spec.head_dim ** 0.5).round())
        cb_hi, cb_lo, _ = device_codebooks(spec, device)
        _TABLES[key] = (cb_hi, cb_lo, midpoints(spec.codebook_hi).to(device), midpoints(spec.codebook_lo).to(device),
                        matrix.T.contiguous().float().to(device), signs is not None)
    return _TABLES[key]


#: Launches measured on the H100 (docs/kernels/codec_pass.md). Encode: 32 rows, gather-free packing
#: (run 3: 3 bits 1.38 ms against 1.88 for the previous 16 rows with tl.gather packing; 2 bits 1.37
#: against 1.53; 4 bits see PACK8_WIDTHS). Decode: fields read in byte groups; 32 rows for table-load
#: or select lookups (3 bits, load: 0.145 ms against 0.274 per field with gathers), while tl.gather
#: (what decode-then-attend uses, attention_decoded.DECODE_LOOKUP) keeps MIN_GATHER_ROWS (run 13:
#: 2,740 GB/s at 3 bits, 92 % of copy; load lookups measured equal).
GPU_CONFIG = EncodeConfig(block_rows=32, pack8=True)
#: Widths whose codes the gather-free packing writes when ``pack8`` is asked for; 4-bit fields keep
#: the gather packing, measured faster there (run 3, 32 rows: 1.57 ms against 2.26 with pack8).
PACK8_WIDTHS = (2, 3)
GPU_DECODE_BLOCK_ROWS = 32
#: The tl.gather path keeps >= 64 rows: with 16 rows, 2- and 2.5-bit codebooks (4 entries) failed the
#: GPU tests (docs/kernels/tests_final_run1.log), as OCTOPUS's gather did (octopus_decode.MIN_GATHER_ROWS).
MIN_GATHER_ROWS = 64


def tq_decode_rows(codes: torch.Tensor, norms: torch.Tensor, spec: TurboQuantSpec,
                   out_dtype: torch.dtype = torch.float32, scale_by_norm: bool = False,
                   out: torch.Tensor | None = None, select_lookup: bool | int = False,
                   block_rows: int | None = None, grouped: bool = True) -> torch.Tensor:
    """Rotated reconstruction of every row of ``codes`` ``(..., nbytes)``: ``(..., d)`` in ``out_dtype``
    (``gamma * y_hat`` when ``scale_by_norm``, else ``y_hat``); written into ``out`` (rows x d) if given.
    ``select_lookup``: codebook read (False gather, True select, or a ``tl_helpers.LOOKUP_*``);
    ``block_rows`` / ``grouped`` (byte-group unpacking, one width only) override the GPU launch."""
    if codes.dtype != torch.uint8 or codes.shape[-1] != spec.nbytes:
        raise CodecError(f"turboquant kernel: expected uint8 codes (..., {spec.nbytes}), got {codes.dtype} "
                         f"{tuple(codes.shape)}")
    lead = codes.shape[:-1]
    c2, n2 = codes.reshape(-1, spec.nbytes), norms.reshape(-1)
    if out is None:
        out = torch.empty((c2.shape[0], spec.head_dim), device=codes.device, dtype=out_dtype)
    elif out.shape != (c2.shape[0], spec.head_dim) or out.stride(-1) != 1:
        raise CodecError(f"decode: out must be ({c2.shape[0]}, {spec.head_dim}) with unit last stride")
    cb_hi, cb_lo, *_ = _tables(spec, codes.device)
    mode = lookup_mode(select_lookup)
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
            SCALE_BY_NORM=scale_by_norm, SELECT=mode, BLOCK_R=br, GE=ge, GB=gb, num_warps=4)
    return out.reshape(*lead, spec.head_dim)


def tq_decode(codec, packed: PackedTensor) -> torch.Tensor:
    """GPU path of ``codec.decode(packed)`` (same result, dtype and shape)."""
    spec = kernel_spec(codec)
    check_packed(codec, packed, spec)
    y_hat = tq_decode_rows(packed.fields["codes"], packed.fields["norms"], spec)
    return (codec.rotation.inverse(y_hat) * packed.fields["norms"].to(torch.float32)[..., None]).to(packed.dtype)


def tq_encode(codec, x: torch.Tensor, fused_rotation: bool = False,
              config: EncodeConfig | None = None, check_finite: bool = True) -> PackedTensor:
    """GPU path of ``codec.encode(x)`` (see the module docstring for ``fused_rotation``; ``config``
    changes only the speed; ``check_finite`` as :func:`.octopus_encode.octopus_encode`)."""
    spec = kernel_spec(codec)
    codec.check_input(x, finite=False)  # NaN/Inf show in the kernel's norms: checked below
    lead = x.shape[:-1]
    xf = x.reshape(-1, spec.head_dim)
    n, dev = xf.shape[0], x.device
    _, _, thr_hi, thr_lo, signs, hadamard = _tables(spec, dev)
    codes = torch.empty((n, spec.nbytes), dtype=torch.uint8, device=dev)
    if fused_rotation:
        if not hadamard:
            raise CodecError("turboquant kernel: fused rotation needs a Hadamard rotation")
        if x.dtype == torch.float32:
            raise CodecError("turboquant kernel: fused rotation takes float16/bfloat16 input; use "
                             "fused_rotation=False for float32")
        src, norms, sign_mat = xf.contiguous(), torch.empty(n, dtype=codec.norm_dtype, device=dev), signs.to(x.dtype)
    else:
        # The reference's float prologue, op for op (NormSplitRotationCodec._encode).
        x32 = xf.to(torch.float32)
        gamma = torch.linalg.vector_norm(x32, dim=-1)
        src = (codec.rotation.forward(x32) / torch.where(gamma > 0, gamma, 1.0)[..., None]).contiguous()
        norms, sign_mat = gamma.to(codec.norm_dtype), signs
    cfg = default_config(config, GPU_CONFIG)
    if cfg.lookup != LOOKUP_GATHER:
        raise CodecError("turboquant encode reads no codebook (it compares with thresholds): "
                         "EncodeConfig.lookup applies to OCTOPUS only")
    if n:
        _tq_encode_kernel[(triton.cdiv(n, cfg.block_rows),)](
            src, src.stride(0), norms, codes, codes.stride(0), sign_mat, spec.head_dim ** -0.5, thr_hi, thr_lo,
            n, D=spec.head_dim, N_HI=spec.n_high, B_HI=spec.bits_hi, B_LO=spec.bits_lo, NBYTES=spec.nbytes,
            NBYTES_PAD=triton.next_power_of_2(spec.nbytes), FUSED_ROTATION=fused_rotation,
            BLOCK_R=cfg.block_rows, PACK8=cfg.pack8 and spec.bits_hi == spec.bits_lo and spec.bits_hi in PACK8_WIDTHS,
            num_warps=cfg.num_warps, enable_fp_fusion=False)
    packed = PackedTensor(codec.name, tuple(x.shape), x.dtype,
                          {"codes": codes.reshape(*lead, spec.nbytes), "norms": norms.reshape(lead)},
                          packed_meta(codec))
    if check_finite:
        codec.check_side_info(packed)
    return packed


def turboquant_reference(codec, packed_or_x: torch.Tensor | PackedTensor, rotated: bool = False):
    """Reference: ``codec.encode(x)`` for a tensor, ``codec.decode(packed)`` (or ``gamma * y_hat``
    with ``rotated=True``) for packed data."""
    if isinstance(packed_or_x, PackedTensor):
        return reference_rotated(codec, packed_or_x) if rotated else codec.decode(packed_or_x)
    return codec.encode(packed_or_x)
