"""LSB-first bit packing of fixed-width unsigned integer fields into ``uint8``.

Contract (docs/architecture.md): stream bit k is bit ``k % 8`` of byte ``k // 8``; field j of width
``w_j`` at offset ``o_j = w_0 + ... + w_{j-1}`` stores bit t of its value at stream bit ``o_j + t``.
Each vector (the last axis) is padded to whole bytes, so a vector of fields takes
``ceil(sum(widths) / 8)`` bytes. Widths 0..16; a width-0 field stores nothing and unpacks as 0.

Vectorised torch, same code on CPU and CUDA: a field of width <= 16 shifted by its offset within its
first byte spans at most 3 bytes, so packing adds (bits never overlap, so adding is OR) the 3 byte
slices of every field into the output with one ``index_add_``, and unpacking gathers each field's 3
bytes and shifts and masks them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch

from .base import CodecError

MAX_WIDTH = 16
#: A width-16 field at bit offset 7 within its first byte spans 3 bytes.
_SPAN = 3


def as_widths(widths: int | Sequence[int], n_fields: int) -> tuple[int, ...]:
    """Normalise ``widths`` (one int for all fields, or one per field) and validate it."""
    if isinstance(widths, int):
        ws = (widths,) * n_fields
    else:
        ws = tuple(int(w) for w in widths)
    if len(ws) != n_fields:
        raise CodecError(f"packing: {len(ws)} widths given for {n_fields} fields")
    bad = [w for w in ws if not 0 <= w <= MAX_WIDTH]
    if bad:
        raise CodecError(f"packing: field widths must be in 0..{MAX_WIDTH}, got {bad[0]}")
    return ws


def packed_nbytes(widths: Sequence[int]) -> int:
    """Bytes one vector of fields with these widths takes: ``ceil(sum(widths) / 8)``."""
    return (sum(widths) + 7) // 8


@lru_cache(maxsize=256)
def _layout(widths: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per field: the shift within its first byte, its value mask, and the indices of the 3 bytes it spans."""
    w = torch.tensor(widths, dtype=torch.int64)
    offsets = torch.cumsum(w, 0) - w
    shift = (offsets % 8).to(torch.int32)
    mask = ((1 << w) - 1).to(torch.int32)
    byte_index = (offsets // 8)[:, None] + torch.arange(_SPAN)  # (n_fields, 3)
    return shift, mask, byte_index.flatten()


def pack_bits(values: torch.Tensor, widths: int | Sequence[int]) -> torch.Tensor:
    """Pack ``values`` ``(..., n_fields)`` (integers, ``0 <= v < 2**w``) into ``uint8 (..., nbytes)``."""
    if values.dtype.is_floating_point or values.dtype == torch.bool or values.dtype.is_complex:
        raise TypeError(f"pack_bits: expected an integer tensor, got {values.dtype}")
    ws = as_widths(widths, values.shape[-1])
    nbytes = packed_nbytes(ws)
    lead, n, device = values.shape[:-1], values.shape[-1], values.device
    shift, mask, byte_index = (t.to(device) for t in _layout(ws))
    v = values.reshape(math.prod(lead), n).to(torch.int32)  # explicit rows: n or rows may be 0
    if bool(((v < 0) | (v > mask)).any()):
        raise CodecError(f"pack_bits: a value does not fit its field width (widths {sorted(set(ws))})")
    shifted = v << shift
    parts = torch.stack([shifted & 255, (shifted >> 8) & 255, (shifted >> 16) & 255], -1)
    out = torch.zeros(v.shape[0], nbytes + _SPAN, dtype=torch.int32, device=device)
    out.index_add_(1, byte_index, parts.view(v.shape[0], n * _SPAN))
    return out[:, :nbytes].to(torch.uint8).reshape(*lead, nbytes)


def unpack_bits(packed: torch.Tensor, widths: int | Sequence[int], n_fields: int | None = None) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``uint8 (..., nbytes)`` -> ``int32 (..., n_fields)``.

    ``widths`` is one width per field, or a single int together with ``n_fields``.
    """
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_bits: expected a uint8 tensor, got {packed.dtype}")
    if isinstance(widths, int):
        if n_fields is None:
            raise CodecError("unpack_bits: n_fields is required when widths is a single int")
        ws = as_widths(widths, n_fields)
    else:
        ws = as_widths(widths, len(widths))
    nbytes = packed_nbytes(ws)
    if packed.shape[-1] != nbytes:
        raise CodecError(f"unpack_bits: last axis has {packed.shape[-1]} bytes, widths need {nbytes}")
    lead, n, device = packed.shape[:-1], len(ws), packed.device
    shift, mask, byte_index = (t.to(device) for t in _layout(ws))
    rows = math.prod(lead)
    p = torch.nn.functional.pad(packed.reshape(rows, nbytes).to(torch.int32), (0, _SPAN))
    b = p[:, byte_index].view(rows, n, _SPAN)
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    return ((word >> shift) & mask).reshape(*lead, n)
