"""Triton building blocks shared by the codec and attention kernels.

Everything here is a ``@triton.jit`` function inlined into the kernels that call it:

* :func:`unpack_field` reads one LSB-first bit field per element straight from a packed ``uint8`` row
  (the layout of ``octopus_diffusers.codecs.packing``);
* :func:`unpack_grouped` reads all fields of one width per row with one load per code byte (not two per
  field), for widths whose fields tile whole bytes in groups (attention's TurboQuant keys/values);
* :func:`lookup` reads a codebook held in registers with ``tl.gather`` (a table read through
  ``tl.load(table_ptr + idx)`` inside an attention loop collapses throughput 13x, performance.md);
* :func:`octahedral_unfold` is the inverse octahedral map without normalisation;
* :func:`pack_fields_to_bytes` is the inverse of :func:`unpack_field` for a tile of fields (one width,
  or two: TurboQuant's fractional rates give the first channels one bit more).
"""

from __future__ import annotations

import math

import triton
import triton.language as tl


@triton.jit
def unpack_field(row_ptr, bit_off, row_mask, NBYTES: tl.constexpr, WIDTH: tl.constexpr):
    """Value of the ``WIDTH``-bit field starting at stream bit ``bit_off`` of each row.

    ``row_ptr`` points at the first byte of each row (``[R, 1]``), ``bit_off`` is ``[1, F]`` (or
    ``[R, F]``); bytes past ``NBYTES`` read as 0. Returns int32 ``[R, F]``.
    """
    byte = bit_off >> 3
    shift = bit_off & 7
    v = tl.load(row_ptr + byte, mask=row_mask & (byte < NBYTES), other=0).to(tl.int32)
    if WIDTH + 7 > 8:
        b1 = tl.load(row_ptr + byte + 1, mask=row_mask & (byte + 1 < NBYTES), other=0).to(tl.int32)
        v = v | (b1 << 8)
    if WIDTH + 7 > 16:
        b2 = tl.load(row_ptr + byte + 2, mask=row_mask & (byte + 2 < NBYTES), other=0).to(tl.int32)
        v = v | (b2 << 16)
    return (v >> shift) & ((1 << WIDTH) - 1)


def field_groups(width: int, n_fields: int) -> tuple[int, int]:
    """``(fields, bytes)`` per byte-aligned group of ``width``-bit fields for :func:`unpack_grouped`,
    or ``(0, 0)`` where the groups would not fit an int32 or not divide ``n_fields`` evenly."""
    fields = 8 // math.gcd(width, 8)
    nbytes = width * fields // 8
    if nbytes > 3 or n_fields % fields or (n_fields // fields) & (n_fields // fields - 1):
        return 0, 0
    return fields, nbytes


@triton.jit
def load_groups(row_ptr, row_mask, F: tl.constexpr, GE: tl.constexpr, GB: tl.constexpr):
    """The packed rows as int32 ``[R, F / GE]`` groups of ``GB`` bytes (``GE`` fields each): one
    load per code byte. Split by :func:`split_groups`; apart so a loop can load one tile ahead."""
    g = tl.arange(0, F // GE)[None, :]
    base = row_ptr + g * GB
    word = tl.load(base, mask=row_mask, other=0).to(tl.int32)
    for b in tl.static_range(1, GB):
        word = word | (tl.load(base + b, mask=row_mask, other=0).to(tl.int32) << (8 * b))
    return word


@triton.jit
def split_groups(word, F: tl.constexpr, WIDTH: tl.constexpr, GE: tl.constexpr):
    """int32 ``[R, F]`` fields of :func:`load_groups`' words, by shifts (field ``GE g + e`` of a row
    sits at bit ``WIDTH e`` of its group ``g``)."""
    e = tl.arange(0, GE)[None, None, :]
    fields = (word[:, :, None] >> (e * WIDTH)) & ((1 << WIDTH) - 1)
    return tl.reshape(fields, (word.shape[0], F))


@triton.jit
def unpack_grouped(row_ptr, row_mask, F: tl.constexpr, WIDTH: tl.constexpr, GE: tl.constexpr,
                   GB: tl.constexpr):
    """All ``F`` LSB-first ``WIDTH``-bit fields of each packed row, int32 ``[R, F]``.

    Fields come in groups of ``GE`` that fill exactly ``GB`` bytes (:func:`field_groups`): each group
    is read as ``GB`` byte loads of an ``[R, F / GE]`` tile and its fields split off with shifts, so
    a tile costs ``GB / GE`` loads per field instead of :func:`unpack_field`'s one or two.
    """
    return split_groups(load_groups(row_ptr, row_mask, F, GE, GB), F, WIDTH, GE)


@triton.jit
def load_codebook(cb_ptr, ROWS: tl.constexpr, SIZE: tl.constexpr):
    """A ``SIZE``-entry float32 codebook broadcast to ``[ROWS, SIZE]`` registers (for :func:`lookup`)."""
    cb = tl.load(cb_ptr + tl.arange(0, SIZE))
    return tl.broadcast_to(cb[None, :], (ROWS, SIZE))


@triton.jit
def lookup(codebook_2d, idx):
    """``codebook[idx]`` for an int32 ``[R, F]`` index tile, codebook from :func:`load_codebook`."""
    return tl.gather(codebook_2d, idx, 1)


@triton.jit
def lookup_select(cb_ptr, idx, SIZE: tl.constexpr):
    """``codebook[idx]`` by a chain of ``SIZE - 1`` compare-selects against scalar entries (no gather,
    no per-element memory access): the alternative to :func:`lookup` measured by the benchmark."""
    val = tl.zeros(idx.shape, dtype=tl.float32) + tl.load(cb_ptr)
    for k in tl.static_range(1, SIZE):
        val = tl.where(idx == k, tl.load(cb_ptr + k), val)
    return val


@triton.jit
def lookup_any(cb, idx, SIZE: tl.constexpr, SELECT: tl.constexpr):
    """:func:`lookup_select` (``cb`` a pointer) or :func:`lookup` (``cb`` from :func:`load_codebook`)."""
    # if/else, not an early return: the compiler visits code after a constexpr-if's return.
    if SELECT:
        val = lookup_select(cb, idx, SIZE)
    else:
        val = lookup(cb, idx)
    return val


@triton.jit
def sign_nonzero(t):
    """sgn with sgn(0) = +1, as in ``codecs.octahedral``."""
    return tl.where(t >= 0, 1.0, -1.0)


@triton.jit
def octahedral_unfold(xi, eta):
    """Octahedron point ``p(xi, eta)`` with ``|x|+|y|+|z| = 1`` (``octahedral_decode_unnormalized``)."""
    z = 1.0 - tl.abs(xi) - tl.abs(eta)
    lower = z < 0
    x = tl.where(lower, sign_nonzero(xi) * (1.0 - tl.abs(eta)), xi)
    y = tl.where(lower, sign_nonzero(eta) * (1.0 - tl.abs(xi)), eta)
    return x, y, z


@triton.jit
def field_offset(f, N_HI: tl.constexpr, W_HI: tl.constexpr, W_LO: tl.constexpr):
    """Stream bit offset of field ``f`` when fields ``[0, N_HI)`` are ``W_HI`` wide, the rest ``W_LO``."""
    return tl.where(f < N_HI, f * W_HI, N_HI * W_HI + (f - N_HI) * W_LO)


@triton.jit
def pack_fields_to_bytes(values, out_row_ptr, row_mask, N_FIELDS: tl.constexpr, N_HI: tl.constexpr,
                         W_HI: tl.constexpr, W_LO: tl.constexpr, NBYTES: tl.constexpr,
                         NBYTES_PAD: tl.constexpr):
    """Store ``values`` (int32 ``[R, F]``, in range of their widths) as LSB-first packed bytes.

    Field f sits at :func:`field_offset`. Byte B collects the fields overlapping its bits
    ``8B .. 8B+7``: at most ``ceil(8 / min width) + 1`` of them, each fetched from the register tile
    with ``tl.gather``.
    """
    F: tl.constexpr = values.shape[1]
    R: tl.constexpr = values.shape[0]
    W_MIN: tl.constexpr = W_LO if W_LO < W_HI else W_HI
    byte = tl.arange(0, NBYTES_PAD)[None, :]
    bit0 = byte * 8
    first = tl.where(bit0 < N_HI * W_HI, bit0 // W_HI, N_HI + (bit0 - N_HI * W_HI) // W_LO)
    acc = tl.zeros((R, NBYTES_PAD), dtype=tl.int32)
    for s in tl.static_range((8 + W_MIN - 1) // W_MIN + 1):
        f = first + s
        off = field_offset(f, N_HI, W_HI, W_LO)
        ok = (f < N_FIELDS) & (off < bit0 + 8)
        f_idx = tl.broadcast_to(tl.minimum(f, F - 1), (R, NBYTES_PAD))
        v = tl.gather(values, f_idx, 1)
        sh = off - bit0
        part = tl.where(sh >= 0, v << tl.maximum(sh, 0), v >> tl.maximum(-sh, 0))
        acc = acc | tl.where(ok, part & 0xFF, 0)
    tl.store(out_row_ptr + byte, acc.to(tl.uint8), mask=row_mask & (byte < NBYTES))
