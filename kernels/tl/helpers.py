"""Triton building blocks shared by the codec and attention kernels.

Everything here is a ``@triton.jit`` function inlined into the kernels that call it:

* :func:`unpack_field` reads one LSB-first bit field per element straight from a packed ``uint8`` row
  (the layout of ``octopus_diffusers.codecs.packing``);
* :func:`unpack_grouped` reads all fields of one width per row with one load per code byte (not two per
  field), for widths whose fields tile whole bytes in groups (attention's TurboQuant keys/values);
* :func:`lookup_any` reads a codebook by one of three constexpr modes (``LOOKUP_*``): ``tl.gather`` from
  registers (:func:`lookup`), a compare-select chain (:func:`lookup_select`), or a load from the tiny
  global table (``tl.load(table_ptr + idx)``, L1-resident: slow inside an attention loop, 13x there
  per performance.md, but measured fastest in the streaming codec kernels, docs/kernels/codec_pass.md);
* :func:`nearest_count` is ``torch.bucketize`` against sorted midpoints (the encoders' rounding);
* :func:`pack_groups8` / :func:`unpack_groups8` store / read ``W``-bit fields in groups of 8 (= ``W``
  bytes) without ``tl.gather``, any ``W`` (OCTOPUS triplets of 7-13 bits, TurboQuant 2-4 bits);
* :func:`octahedral_unfold` is the inverse octahedral map without normalisation;
* :func:`pack_fields_to_bytes` is the inverse of :func:`unpack_field` for a tile of fields (one width,
  or two: TurboQuant's fractional rates give the first channels one bit more).
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

from octopus_diffusers.codecs import CodecError


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


#: Codebook read modes of :func:`lookup_any` (its ``MODE`` argument; ``False``/``True`` keep meaning
#: gather/select for older callers).
LOOKUP_GATHER = 0
LOOKUP_SELECT = 1
LOOKUP_LOAD = 2


def lookup_mode(lookup: bool | int) -> int:
    """``tl.helpers.LOOKUP_*`` of a ``lookup`` argument (False: gather, True: select, or a mode)."""
    mode = int(lookup)
    if mode not in (LOOKUP_GATHER, LOOKUP_SELECT, LOOKUP_LOAD):
        raise CodecError(f"decode: unknown lookup mode {lookup!r} (False/True or a tl.helpers.LOOKUP_*)")
    return mode


@triton.jit
def lookup_any(cb, idx, SIZE: tl.constexpr, MODE: tl.constexpr):
    """``codebook[idx]`` by mode ``MODE``: ``LOOKUP_LOAD`` (``cb`` a pointer: one global load per
    element from the L1-resident table), ``LOOKUP_SELECT`` (``cb`` a pointer: :func:`lookup_select`) or
    ``LOOKUP_GATHER`` (``cb`` from :func:`load_codebook`: :func:`lookup`). All give identical values."""
    # if/else, not an early return: the compiler visits code after a constexpr-if's return.
    if MODE == 2:
        val = tl.load(cb + idx)
    elif MODE:
        val = lookup_select(cb, idx, SIZE)
    else:
        val = lookup(cb, idx)
    return val


@triton.jit
def codebook_for(cb_ptr, ROWS: tl.constexpr, SIZE: tl.constexpr, MODE: tl.constexpr):
    """What :func:`lookup_any` takes as ``cb`` in mode ``MODE``: the register tile for a gather, else
    the pointer itself."""
    if MODE == 0:
        cb = load_codebook(cb_ptr, ROWS, SIZE)
    else:
        cb = cb_ptr
    return cb


@triton.jit
def nearest_count(v, THR, BITS: tl.constexpr):
    """Number of the ``2**BITS - 1`` sorted midpoints ``THR`` strictly below ``v`` (``torch.bucketize``,
    ties low), by compares against scalar midpoints. (A binary search with one table load per step
    gave the same indices and was slower in every encode kernel, docs/kernels/codec_pass.md.)"""
    idx = tl.zeros(v.shape, dtype=tl.int32)
    for k in tl.static_range((1 << BITS) - 1):
        idx += (v > tl.load(THR + k)).to(tl.int32)
    return idx


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


@triton.jit
def _split8(values):
    """The 8 fields of each group of a ``[R, G * 8]`` tile as eight ``[R, G]`` tiles (field e of group
    g is column ``8 g + e``)."""
    v = tl.reshape(values, (values.shape[0], values.shape[1] // 8, 2, 2, 2))  # (R, G, e2, e1, e0)
    p, q = tl.split(v)  # e0 = 0 / 1
    p0, p1 = tl.split(p)  # e1
    q0, q1 = tl.split(q)
    f0, f4 = tl.split(p0)  # e2
    f2, f6 = tl.split(p1)
    f1, f5 = tl.split(q0)
    f3, f7 = tl.split(q1)
    return f0, f1, f2, f3, f4, f5, f6, f7


@triton.jit
def _join8(f0, f1, f2, f3, f4, f5, f6, f7):
    """Inverse of :func:`_split8`: eight ``[R, G]`` tiles as one ``[R, G * 8]`` tile."""
    b0 = tl.join(tl.join(f0, f4), tl.join(f2, f6))  # (R, G, e2, e1) at e0 = 0
    b1 = tl.join(tl.join(f1, f5), tl.join(f3, f7))
    v = tl.join(b0, b1)
    return tl.reshape(v, (f0.shape[0], f0.shape[1] * 8))


@triton.jit
def _shifted(f, SH: tl.constexpr, W: tl.constexpr):
    """The bits of a ``W``-bit field that land in a byte whose bit 0 is at field bit ``-SH``
    (``SH`` = field offset - byte offset), unmasked; 0 where they do not overlap."""
    if SH >= 8 or SH <= -W:
        r = f * 0
    elif SH >= 0:
        r = f << SH
    else:
        r = f >> (-SH)
    return r


@triton.jit
def _group_byte(f0, f1, f2, f3, f4, f5, f6, f7, B: tl.constexpr, W: tl.constexpr):
    """Byte ``B`` of a group of eight LSB-first ``W``-bit fields."""
    acc = _shifted(f0, 0 - 8 * B, W) | _shifted(f1, W - 8 * B, W) | _shifted(f2, 2 * W - 8 * B, W)
    acc = acc | _shifted(f3, 3 * W - 8 * B, W) | _shifted(f4, 4 * W - 8 * B, W)
    acc = acc | _shifted(f5, 5 * W - 8 * B, W) | _shifted(f6, 6 * W - 8 * B, W)
    acc = acc | _shifted(f7, 7 * W - 8 * B, W)
    return acc & 0xFF


@triton.jit
def pack_groups8(values, out_row_ptr, row_mask, W: tl.constexpr, NBYTES: tl.constexpr):
    """Store int32 ``[R, F]`` fields (``F`` a multiple of 8, each < 2**W, zero past the real fields) as
    LSB-first packed bytes, bytes ``>= NBYTES`` dropped: the fields are split into 8 tiles of one field
    per group (reshape + split), and each of a group's ``W`` bytes is ORed from the 2-3 fields that
    overlap it with constexpr shifts: no ``tl.gather`` (the inverse of :func:`unpack_groups8`)."""
    f0, f1, f2, f3, f4, f5, f6, f7 = _split8(values)
    g_off = tl.arange(0, values.shape[1] // 8)[None, :] * W
    for b in tl.static_range(W):
        byte = _group_byte(f0, f1, f2, f3, f4, f5, f6, f7, b, W)
        tl.store(out_row_ptr + g_off + b, byte.to(tl.uint8), mask=row_mask & (g_off + b < NBYTES))


@triton.jit
def _field_of_bytes(row_ptr, g_off, row_mask, E: tl.constexpr, W: tl.constexpr, NBYTES: tl.constexpr):
    """Field ``E`` of every group (int32 ``[R, G]``), from the 2-3 bytes it spans."""
    B0: tl.constexpr = (E * W) // 8
    B1: tl.constexpr = (E * W + W - 1) // 8
    v = tl.load(row_ptr + g_off + B0, mask=row_mask & (g_off + B0 < NBYTES), other=0).to(tl.int32)
    for b in tl.static_range(B0 + 1, B1 + 1):
        nxt = tl.load(row_ptr + g_off + b, mask=row_mask & (g_off + b < NBYTES), other=0).to(tl.int32)
        v = v | (nxt << (8 * (b - B0)))
    return (v >> ((E * W) % 8)) & ((1 << W) - 1)


@triton.jit
def unpack_groups8(row_ptr, row_mask, F: tl.constexpr, W: tl.constexpr, NBYTES: tl.constexpr):
    """All ``F`` LSB-first ``W``-bit fields of each packed row (int32 ``[R, F]``, ``F`` a multiple of 8;
    bytes ``>= NBYTES`` read as 0): each group's ``W`` bytes are read once per field that spans them and
    the fields joined back in order (no per-element offsets or gathers)."""
    g_off = tl.arange(0, F // 8)[None, :] * W
    return _join8(_field_of_bytes(row_ptr, g_off, row_mask, 0, W, NBYTES),
                  _field_of_bytes(row_ptr, g_off, row_mask, 1, W, NBYTES),
                  _field_of_bytes(row_ptr, g_off, row_mask, 2, W, NBYTES),
                  _field_of_bytes(row_ptr, g_off, row_mask, 3, W, NBYTES),
                  _field_of_bytes(row_ptr, g_off, row_mask, 4, W, NBYTES),
                  _field_of_bytes(row_ptr, g_off, row_mask, 5, W, NBYTES),
                  _field_of_bytes(row_ptr, g_off, row_mask, 6, W, NBYTES),
                  _field_of_bytes(row_ptr, g_off, row_mask, 7, W, NBYTES))
