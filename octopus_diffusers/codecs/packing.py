"""LSB-first bit packing of fixed-width unsigned integer fields into ``uint8``.

Contract (docs/architecture.md): stream bit k is bit ``k % 8`` of byte ``k // 8``; field j of width
``w_j`` at offset ``o_j = w_0 + ... + w_{j-1}`` stores bit t of its value at stream bit ``o_j + t``.
Each vector (the last axis) is padded to whole bytes, so a vector of fields takes
``ceil(sum(widths) / 8)`` bytes. Widths 0..16; a width-0 field stores nothing and unpacks as 0.

Vectorised torch, same code on CPU and CUDA: values are expanded to a bit matrix, the valid bits are
gathered in stream order, and groups of 8 bits are folded into bytes (and back for unpacking).
Large inputs are processed in row chunks to bound the temporary bit matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

from .base import CodecError

MAX_WIDTH = 16
#: Upper bound on the elements of the temporary (rows, fields, max_width) bit tensor per chunk.
_CHUNK_ELEMENTS = 1 << 24


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
def _layout(widths: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Index of each stream bit in the flattened (fields, max_width) bit matrix; the width mask."""
    w_max = max(widths, default=0)
    w = torch.tensor(widths, dtype=torch.int64)
    mask = torch.arange(w_max)[None, :] < w[:, None]  # (n_fields, w_max)
    # Row-major order of the valid (field, bit) pairs is exactly stream order (offsets increase).
    stream_index = torch.nonzero(mask.flatten(), as_tuple=True)[0]
    return stream_index, mask, w_max


def pack_bits(values: torch.Tensor, widths: int | Sequence[int]) -> torch.Tensor:
    """Pack ``values`` ``(..., n_fields)`` (integers, ``0 <= v < 2**w``) into ``uint8 (..., nbytes)``."""
    if values.dtype.is_floating_point or values.dtype == torch.bool or values.dtype.is_complex:
        raise TypeError(f"pack_bits: expected an integer tensor, got {values.dtype}")
    ws = as_widths(widths, values.shape[-1])
    nbytes = packed_nbytes(ws)
    lead = values.shape[:-1]
    device = values.device
    if nbytes == 0:
        return torch.zeros(*lead, 0, dtype=torch.uint8, device=device)
    v = values.reshape(-1, values.shape[-1]).to(torch.int32)
    w_t = torch.tensor(ws, dtype=torch.int32, device=device)
    if bool(((v < 0) | (v >= (1 << w_t.to(torch.int64)).to(device))).any()):
        raise CodecError(f"pack_bits: a value does not fit its field width (widths {sorted(set(ws))})")
    stream_index, _, w_max = _layout(ws)
    stream_index = stream_index.to(device)
    n_bits = nbytes * 8
    shifts = torch.arange(w_max, dtype=torch.int32, device=device)
    byte_weights = (1 << torch.arange(8, dtype=torch.int32, device=device))
    out = torch.empty(v.shape[0], nbytes, dtype=torch.uint8, device=device)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, v.shape[1] * w_max))
    for start in range(0, v.shape[0], rows_per_chunk):
        chunk = v[start:start + rows_per_chunk]
        bits = ((chunk[:, :, None] >> shifts) & 1).to(torch.uint8).flatten(1)
        stream = torch.zeros(chunk.shape[0], n_bits, dtype=torch.int32, device=device)
        stream[:, :stream_index.numel()] = bits[:, stream_index]
        out[start:start + chunk.shape[0]] = (stream.view(-1, nbytes, 8) * byte_weights).sum(-1).to(torch.uint8)
    return out.reshape(*lead, nbytes)


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
    lead = packed.shape[:-1]
    device = packed.device
    n = len(ws)
    stream_index, mask, w_max = _layout(ws)
    if w_max == 0:
        return torch.zeros(*lead, n, dtype=torch.int32, device=device)
    stream_index = stream_index.to(device)
    p = packed.reshape(-1, nbytes).to(torch.int32)
    bit_pos = torch.arange(8, dtype=torch.int32, device=device)
    shifts = torch.arange(w_max, dtype=torch.int32, device=device)
    out = torch.empty(p.shape[0], n, dtype=torch.int32, device=device)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, n * w_max))
    for start in range(0, p.shape[0], rows_per_chunk):
        chunk = p[start:start + rows_per_chunk]
        stream = ((chunk[:, :, None] >> bit_pos) & 1).flatten(1)
        bits = torch.zeros(chunk.shape[0], n * w_max, dtype=torch.int32, device=device)
        bits[:, stream_index] = stream[:, :stream_index.numel()]
        out[start:start + chunk.shape[0]] = (bits.view(-1, n, w_max) << shifts).sum(-1, dtype=torch.int32)
    return out.reshape(*lead, n)
