"""The codec interface: every KV codec encodes ``(..., head_dim)`` tensors into a :class:`PackedTensor`.

A codec is data-oblivious and online: each vector (or, for the KIVI-style ``uniform`` codec, each
group) is encoded on its own, deterministically given the seed. ``bits_per_scalar`` is the true
stored rate: every byte a :class:`PackedTensor` holds (codes, norms, scales, byte padding) counted.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

#: Version of the on-disk format written by :meth:`PackedTensor.save`.
PACKED_FORMAT_VERSION = 1

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
_DTYPES_BY_NAME = {v: k for k, v in _DTYPE_NAMES.items()}


class CodecError(ValueError):
    """Raised for a codec configuration or an input that a codec cannot honour."""


def nonfinite_message(count: int, dtype: torch.dtype = torch.float16) -> str:
    """What NaN/Inf in packed norms or scales (stored as ``dtype``) means, for errors."""
    return (f"input contains NaN or Inf, or {count} vector norm(s)/scale(s) exceed {dtype}'s range "
            f"(max {torch.finfo(dtype).max:g}) and would decode to Inf")


@dataclass
class PackedTensor:
    """Compressed K or V: packed integer codes plus side information, all as real tensors.

    ``fields`` maps names to tensors (``uint8`` bit-packed codes, ``float16`` norms, ...);
    ``shape`` is the shape of the tensor that was encoded and ``dtype`` its dtype, which
    :meth:`Codec.decode` returns. ``meta`` holds the codec configuration needed to decode.
    """

    codec: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    fields: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes actually stored (every field counted)."""
        return sum(t.numel() * t.element_size() for t in self.fields.values())

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def bits_per_scalar(self) -> float:
        """Measured rate: stored bits divided by the number of encoded scalars."""
        return 8.0 * self.nbytes / max(self.numel, 1)

    @property
    def device(self) -> torch.device:
        return next(iter(self.fields.values())).device

    def to(self, device: torch.device | str) -> "PackedTensor":
        return PackedTensor(self.codec, self.shape, self.dtype,
                            {k: v.to(device) for k, v in self.fields.items()}, dict(self.meta))

    def save(self, path: str | Path) -> None:
        """Write to a ``.safetensors`` file with the codec, shape, dtype and format version."""
        from safetensors.torch import save_file

        header = {
            "format_version": str(PACKED_FORMAT_VERSION),
            "codec": self.codec,
            "shape": json.dumps(list(self.shape)),
            "dtype": _DTYPE_NAMES[self.dtype],
            "meta": json.dumps(self.meta),
        }
        save_file({k: v.contiguous().cpu() for k, v in self.fields.items()}, str(path), metadata=header)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "PackedTensor":
        """Read a file written by :meth:`save`; refuses other format versions."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=str(device)) as f:
            header = f.metadata() or {}
            version = header.get("format_version")
            if version != str(PACKED_FORMAT_VERSION):
                raise CodecError(
                    f"{path}: packed format version {version!r}, this library reads version "
                    f"{PACKED_FORMAT_VERSION}")
            fields = {k: f.get_tensor(k) for k in f.keys()}
        return cls(header["codec"], tuple(json.loads(header["shape"])), _DTYPES_BY_NAME[header["dtype"]],
                   fields, json.loads(header["meta"]))


class Codec(ABC):
    """Base class of every KV codec.

    Subclasses set ``name`` and implement :meth:`_encode`, :meth:`_decode` and
    :meth:`bits_per_scalar`; this class validates inputs so that bad input fails here, with a
    message naming the problem, and never deep inside a kernel.
    """

    name: str = ""
    #: Smallest and largest head_dim the codec accepts.
    min_head_dim: int = 1
    max_head_dim: int = 1024

    def __init__(self, head_dim: int, bits: float, seed: int = 0) -> None:
        if not isinstance(head_dim, int) or isinstance(head_dim, bool):
            raise CodecError(f"{self.name}: head_dim must be an int, got {head_dim!r}")
        if not self.min_head_dim <= head_dim <= self.max_head_dim:
            raise CodecError(f"{self.name}: unsupported head_dim {head_dim}; this codec takes "
                             f"{self.min_head_dim} <= head_dim <= {self.max_head_dim}")
        if isinstance(bits, bool) or not isinstance(bits, (int, float)) or not math.isfinite(bits):
            raise CodecError(f"{self.name}: bits must be a finite number, got {bits!r}")
        self.head_dim = head_dim
        self.bits = bits
        self.seed = int(seed)

    # ---- what subclasses provide -------------------------------------------------------------
    @property
    @abstractmethod
    def bits_per_scalar(self) -> float:
        """True stored rate for full vectors: every overhead (norms, padding, side info) counted."""

    @abstractmethod
    def _encode(self, x: torch.Tensor) -> PackedTensor:
        """Encode a validated, contiguous ``(..., head_dim)`` tensor."""

    @abstractmethod
    def _decode(self, packed: PackedTensor) -> torch.Tensor:
        """Decode to a float32 tensor of ``packed.shape``."""

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description (for manifests and reports)."""
        return {"codec": self.name, "head_dim": self.head_dim, "bits": self.bits, "seed": self.seed,
                "bits_per_scalar": self.bits_per_scalar}

    # ---- public API ---------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> PackedTensor:
        """Compress ``x`` of shape ``(..., head_dim)`` (fp32, fp16 or bf16, any device)."""
        self.check_input(x)
        packed = self._encode(x.contiguous())
        self.check_side_info(packed)
        return packed

    def decode(self, packed: PackedTensor) -> torch.Tensor:
        """Reconstruct a tensor of the encoded shape, in the encoded dtype, on ``packed``'s device."""
        if packed.codec != self.name:
            raise CodecError(f"{self.name}: cannot decode data packed by codec {packed.codec!r}")
        if packed.shape[-1] != self.head_dim:
            raise CodecError(f"{self.name}: packed head_dim {packed.shape[-1]} != codec head_dim "
                             f"{self.head_dim}")
        return self._decode(packed).to(packed.dtype)

    def roundtrip(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))``: the values attention sees when K/V are stored compressed."""
        return self.decode(self.encode(x))

    def check_input(self, x: torch.Tensor, finite: bool = True) -> None:
        """Raise :class:`CodecError` / ``TypeError`` naming what is wrong with ``x``. ``finite=False``
        skips the pass over ``x`` for NaN/Inf: the GPU kernels find those in their norms instead
        (:meth:`check_side_info`), saving a full read of K/V per call."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.name}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{self.name}: unsupported dtype {x.dtype}; expected float16, bfloat16 "
                            "or float32")
        if x.dim() < 1 or x.shape[-1] != self.head_dim:
            raise CodecError(f"{self.name}: expected (..., {self.head_dim}) input, got shape "
                             f"{tuple(x.shape)}")
        if finite and not bool(torch.isfinite(x).all()):
            raise CodecError(f"{self.name}: input contains NaN or Inf (shape {tuple(x.shape)}, "
                             f"{int((~torch.isfinite(x)).sum())} non-finite values)")

    @staticmethod
    def count_nonfinite_side_info(packed: PackedTensor) -> torch.Tensor:
        """Number of NaN/Inf entries in the float fields of ``packed`` (norms, scales; not fp8 data), as a
        0-d tensor on ``packed``'s device: no host sync until someone reads it."""
        counts = [(~torch.isfinite(f)).sum() for f in packed.fields.values()
                  if f.is_floating_point() and f.dtype.itemsize > 1]
        return torch.stack(counts).sum() if counts else torch.zeros((), dtype=torch.int64)

    def check_side_info(self, packed: PackedTensor) -> None:
        """Raise :class:`CodecError` if a float field of ``packed`` (norms, scales) holds NaN or Inf:
        the input held NaN/Inf, or a vector's norm or scale exceeded the field's range (float16 norms
        overflow above 65504), which decoding would silently turn into Inf/NaN."""
        bad = int(self.count_nonfinite_side_info(packed))
        if bad:
            dtype = next(f.dtype for f in packed.fields.values() if f.is_floating_point() and f.dtype.itemsize > 1)
            raise CodecError(f"{self.name}: {nonfinite_message(bad, dtype)}; shape {tuple(packed.shape)}")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(head_dim={self.head_dim}, bits={self.bits}, seed={self.seed}, "
                f"bits_per_scalar={self.bits_per_scalar:.4f})")
