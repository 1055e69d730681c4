"""The codec interface: every KV codec encodes ``(..., head_dim)`` tensors into a :class:`PackedTensor`.

A codec is data-oblivious and online: each vector (or, for the KIVI-style ``uniform`` codec, each
group) is encoded on its own, deterministically given the seed. ``bits_per_scalar`` is the true
stored rate: every byte a :class:`PackedTensor` holds (codes, norms, scales, byte padding) counted.

A packed tensor carries everything needed to decode it (codec name, ``head_dim``, ``bits``, seed and
options, in :attr:`PackedTensor.meta`); :meth:`Codec.decode` refuses one whose parameters differ from
the decoding codec's, or whose fields do not have the layout the codec writes
(:meth:`Codec.field_layout`), so a wrong seed or a damaged file never decodes to plausible garbage.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

#: Version of the on-disk format written by :meth:`PackedTensor.save`. Version 2 records the codec's
#: seed, head_dim, bits and options and a SHA-256 checksum; version 1 files recorded neither and are
#: refused (they cannot be decoded safely).
PACKED_FORMAT_VERSION = 2

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
_DTYPES_BY_NAME = {v: k for k, v in _DTYPE_NAMES.items()}
#: Keys of :attr:`PackedTensor.meta` that identify the codec configuration (:meth:`Codec.packed_meta`).
IDENTITY_KEYS = ("head_dim", "bits", "seed", "options")
_HEADER_KEYS = ("codec", "shape", "dtype", "meta", "sha256")
#: Seeds are fed to ``torch.Generator.manual_seed`` (after small offsets), so they must stay well in range.
MAX_SEED = 2**63 - 2**40


class CodecError(ValueError):
    """Raised for a codec configuration or an input that a codec cannot honour."""


class CodecTypeError(CodecError, TypeError):
    """A codec parameter of the wrong type (a float seed, a string where a boolean belongs)."""


def nonfinite_message(count: int, dtype: torch.dtype = torch.float16) -> str:
    """What NaN/Inf in packed norms or scales (stored as ``dtype``) means, for errors."""
    return (f"input contains NaN or Inf, or {count} vector norm(s)/scale(s) exceed {dtype}'s range "
            f"(max {torch.finfo(dtype).max:g}) and would decode to Inf")


def check_int(value: Any, name: str, who: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int; :class:`CodecTypeError` for a bool, float or other non-integer, and
    :class:`CodecError` outside ``lo..hi``; both messages name ``who``, ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise CodecTypeError(f"{who}: {name} must be an int, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"{lo}..{hi}" if lo is not None and hi is not None else (f">= {lo}" if lo is not None
                                                                           else f"<= {hi}")
        raise CodecError(f"{who}: {name} must be in {bounds}, got {value}")
    return value


def check_flag(value: Any, name: str, who: str) -> bool:
    """``value`` if it is a real bool: ``"no"``, ``0`` or ``None`` would silently mean something else."""
    if not isinstance(value, bool):
        raise CodecTypeError(f"{who}: {name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"`` (the form stored in files and configs)."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """Inverse of :func:`dtype_name`; :class:`CodecError` for a name that is not a torch dtype."""
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise CodecError(f"unknown dtype name {name!r}")
    return dtype


#: Float dtypes a codec may store its norms in.
NORM_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def resolve_norm_dtype(norm_dtype: torch.dtype | str, who: str) -> torch.dtype:
    """``norm_dtype`` given as a torch dtype or its name (``"float16"``, the form stored in packed meta)."""
    if isinstance(norm_dtype, str) and norm_dtype in ("float16", "bfloat16", "float32"):
        norm_dtype = dtype_from_name(norm_dtype)
    if norm_dtype not in NORM_DTYPES:
        raise CodecError(f"{who}: norm_dtype must be float16, bfloat16 or float32, got {norm_dtype!r}")
    return norm_dtype


def refuse_tiny_norms(norms: torch.Tensor, dtype: torch.dtype, who: str, what: str = "vector norm",
                      fix: str = "pass norm_dtype=torch.float32 (or torch.bfloat16), which stores such norms"
                      ) -> None:
    """Raise :class:`CodecError` if a nonzero float32 ``norms`` entry is below ``dtype``'s smallest normal
    number: stored as ``dtype`` it would lose its precision or flush to zero (a silent zero vector).
    ``fix`` is the remedy the message offers besides rescaling the input."""
    tiny = torch.finfo(dtype).tiny
    bad = (norms > 0) & (norms < tiny)
    count = int(bad.sum()) if norms.numel() else 0
    if count:
        smallest = float(norms[bad].min())
        raise CodecError(
            f"{who}: {count} {what}(s) (smallest {smallest:.3g}) are below {dtype_name(dtype)}'s smallest "
            f"normal value {tiny:.3g} and would decode to a wrong or zero vector; rescale the input"
            + (f" or {fix}" if fix else ""))


@dataclass
class PackedTensor:
    """Compressed K or V: packed integer codes plus side information, all as real tensors.

    ``fields`` maps names to tensors (``uint8`` bit-packed codes, ``float16`` norms, ...);
    ``shape`` is the shape of the tensor that was encoded and ``dtype`` its dtype, which
    :meth:`Codec.decode` returns. ``meta`` holds the codec configuration needed to decode
    (:meth:`Codec.packed_meta`: ``head_dim``, ``bits``, ``seed``, ``options``).
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

    # ---- files ----------------------------------------------------------------------------------
    def _header(self) -> dict[str, str]:
        if self.dtype not in _DTYPE_NAMES:
            raise CodecError(f"cannot save a packed tensor of dtype {self.dtype}")
        return {"format_version": str(PACKED_FORMAT_VERSION), "codec": self.codec,
                "shape": json.dumps(list(self.shape)), "dtype": _DTYPE_NAMES[self.dtype],
                "meta": json.dumps(self.meta, sort_keys=True)}

    def save(self, path: str | Path) -> None:
        """Write one ``.safetensors`` file: the fields as tensors; the codec, shape, dtype, codec
        parameters (``meta``), format version and a SHA-256 of all of it in the header. The file is
        written beside ``path`` and renamed into place, so an interrupted save never leaves half a file."""
        from safetensors.torch import save

        path = Path(path)
        if path.is_dir():
            raise CodecError(f"{path}: is a directory; give a file path for the packed tensor")
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.fields.items()}
        header = self._header()
        header["sha256"] = _checksum(header, tensors)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_bytes(save(tensors, metadata=header))
            os.replace(tmp, path)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise CodecError(f"{path}: cannot write the packed tensor ({error.strerror or error})") from error

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "PackedTensor":
        """Read a file written by :meth:`save` into memory (a copy: later changes to the file do not
        reach the result) and validate it: format version, checksum, header, and the field layout the
        codec expects for the recorded shape and parameters. Any problem is a :class:`CodecError`
        naming ``path``."""
        path = Path(path)
        if path.is_dir():
            raise CodecError(f"{path}: is a directory, not a packed-tensor file")
        try:
            data = path.read_bytes()
        except OSError as error:
            raise CodecError(f"{path}: cannot read the packed tensor ({error.strerror or error})") from error
        header, tensors = _parse_safetensors(data, path)
        packed = _from_header(header, tensors, path)
        from . import codec_class  # the registry imports this module

        try:
            codec = codec_class(packed.codec).from_meta(packed.meta)
            codec.validate_packed(packed)
        except CodecError as error:
            raise CodecError(f"{path}: {error}") from error
        try:
            return packed.to(device) if torch.device(device) != torch.device("cpu") else packed
        except (RuntimeError, AssertionError) as error:  # torch's errors for unknown or absent devices
            raise CodecError(f"{path}: cannot move the packed tensor to device {device!r} ({error})") from error


def _checksum(header: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the header (without the checksum) and every field's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in header.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        if t.numel():
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())  # the raw bytes, no copy
    return h.hexdigest()


def _parse_safetensors(data: bytes, path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Header metadata and tensors (each a fresh copy in memory) of safetensors ``data``."""
    from safetensors.torch import load

    not_ours = f"{path}: not a safetensors packed-tensor file"
    if len(data) < 8:
        raise CodecError(f"{not_ours} ({len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise CodecError(f"{path}: truncated or not a safetensors file (header of {n} bytes, file has "
                         f"{len(data)} bytes)")
    try:
        raw = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CodecError(f"{not_ours} (header is not JSON: {error})") from error
    if not isinstance(raw, dict):
        raise CodecError(f"{not_ours} (header is not a JSON object)")
    body = len(data) - 8 - n
    for name, entry in raw.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2):
            raise CodecError(f"{not_ours} (tensor {name!r} has no data offsets)")
        if offsets[1] > body:
            raise CodecError(f"{path}: truncated: tensor {name!r} ends at byte {offsets[1]} of a "
                             f"{body}-byte data section")
    try:
        tensors = {k: v.clone() for k, v in load(data).items()}
    except Exception as error:  # safetensors raises its own SafetensorError (or ValueError) types
        raise CodecError(f"{not_ours} ({error})") from error
    metadata = raw.get("__metadata__")
    if not isinstance(metadata, dict):
        raise CodecError(f"{not_ours} (no header metadata)")
    return metadata, tensors


def _from_header(header: dict[str, str], tensors: dict[str, torch.Tensor], path: Path) -> PackedTensor:
    version = header.get("format_version")
    if version != str(PACKED_FORMAT_VERSION):
        hint = ("; it records neither the codec seed nor its parameters, so it cannot be decoded "
                "safely: re-encode and save again") if version == "1" else ""
        raise CodecError(f"{path}: packed format version {version!r}, this library reads version "
                         f"{PACKED_FORMAT_VERSION}{hint}")
    missing = [k for k in _HEADER_KEYS if k not in header]
    if missing:
        raise CodecError(f"{path}: header is missing key(s) {missing}")
    if _checksum(header, tensors) != header["sha256"]:
        raise CodecError(f"{path}: checksum mismatch: the file was damaged or edited after it was saved")
    try:
        shape, meta = json.loads(header["shape"]), json.loads(header["meta"])
    except json.JSONDecodeError as error:
        raise CodecError(f"{path}: header shape/meta are not JSON ({error})") from error
    if not (isinstance(shape, list) and shape and all(isinstance(s, int) and not isinstance(s, bool)
                                                       and s >= 0 for s in shape)):
        raise CodecError(f"{path}: header shape {header['shape']} is not a list of sizes")
    if header["dtype"] not in _DTYPES_BY_NAME:
        raise CodecError(f"{path}: header dtype {header['dtype']!r} is not one of {list(_DTYPES_BY_NAME)}")
    if not isinstance(meta, dict) or any(k not in meta for k in IDENTITY_KEYS):
        raise CodecError(f"{path}: header meta {header['meta']} lacks the codec parameters {list(IDENTITY_KEYS)}")
    if not tensors:
        raise CodecError(f"{path}: holds no fields")
    return PackedTensor(header["codec"], tuple(shape), _DTYPES_BY_NAME[header["dtype"]], tensors, meta)


class Codec(ABC):
    """Base class of every KV codec.

    Subclasses set ``name`` and implement :meth:`_encode`, :meth:`_decode`, :meth:`bits_per_scalar`,
    :meth:`options` (their constructor options, JSON form) and :meth:`field_layout`; this class
    validates inputs so that bad input fails here, with a message naming the problem, and never deep
    inside a kernel.
    """

    name: str = ""
    #: Smallest and largest head_dim the codec accepts.
    min_head_dim: int = 1
    max_head_dim: int = 1024
    #: Rate used when ``bits`` is None; None: the codec needs an explicit ``bits`` (or, see
    #: ``bits_optional``, has no nominal rate at all).
    default_bits: float | None = None
    #: True for codecs without a nominal rate (``none`` stores its input's dtype).
    bits_optional: bool = False

    def __init__(self, head_dim: int, bits: float | None = None, seed: int = 0) -> None:
        who = self.name or type(self).__name__
        head_dim = check_int(head_dim, "head_dim", who)
        if not self.min_head_dim <= head_dim <= self.max_head_dim:
            raise CodecError(f"{who}: unsupported head_dim {head_dim}; this codec takes "
                             f"{self.min_head_dim} <= head_dim <= {self.max_head_dim}")
        if bits is None:
            bits = self.default_bits
        if bits is None and not self.bits_optional:
            raise CodecError(f"{who}: bits (the nominal rate) is required, e.g. get_codec({who!r}, "
                             f"{head_dim}, 3)")
        if bits is not None and (isinstance(bits, bool) or not isinstance(bits, (int, float))
                                 or not math.isfinite(bits)):
            raise CodecError(f"{who}: bits must be a finite number, got {bits!r}")
        self.head_dim = head_dim
        self.bits = bits
        self.seed = check_int(seed, "seed", who, 0, MAX_SEED)

    # ---- what subclasses provide -------------------------------------------------------------
    @property
    @abstractmethod
    def bits_per_scalar(self) -> float:
        """True stored rate for full vectors: every overhead (norms, padding, side info) counted."""

    @abstractmethod
    def _encode(self, x: torch.Tensor) -> PackedTensor:
        """Encode a validated, contiguous ``(..., head_dim)`` tensor (meta: :meth:`packed_meta`)."""

    @abstractmethod
    def _decode(self, packed: PackedTensor) -> torch.Tensor:
        """Decode a validated packed tensor to a float32 tensor of ``packed.shape``."""

    def options(self) -> dict[str, Any]:
        """The constructor's keyword options in JSON form, resolved (defaults filled in):
        ``type(self)(head_dim, bits, seed=seed, **options())`` rebuilds an equal codec."""
        return {}

    def field_layout(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
                     ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """``{field: (shape, dtype)}`` of the :class:`PackedTensor` that encoding a ``dtype`` tensor of
        ``shape`` gives, computed without data. The fallback here encodes zeros; codecs override it."""
        packed = self._encode(torch.zeros(shape, dtype=dtype))
        return {k: (tuple(v.shape), v.dtype) for k, v in packed.fields.items()}

    # ---- configuration -------------------------------------------------------------------------
    def packed_meta(self) -> dict[str, Any]:
        """What every packed tensor records and :meth:`decode` checks: head_dim, bits, seed, options."""
        return {"head_dim": self.head_dim, "bits": self.bits, "seed": self.seed, "options": self.options()}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "Codec":
        """The codec that wrote a packed tensor with this ``meta`` (see :meth:`packed_meta`)."""
        options = meta.get("options")
        if not isinstance(options, dict):
            raise CodecError(f"{cls.name}: packed meta has no options dict: {meta}")
        if isinstance(options.get("norm_dtype"), str):  # stored by name; constructors take the dtype
            options = {**options, "norm_dtype": dtype_from_name(options["norm_dtype"])}
        try:
            return cls(meta.get("head_dim"), meta.get("bits"), seed=meta.get("seed"), **options)
        except TypeError as error:  # an option this codec does not take
            raise CodecError(f"{cls.name}: cannot rebuild the codec from packed meta {meta}: {error}") from error

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description (for manifests and reports)."""
        rate = self.bits_per_scalar
        return {"codec": self.name, "label": self.label(), "head_dim": self.head_dim, "bits": self.bits,
                "seed": self.seed, "bits_per_scalar": None if math.isnan(rate) else rate, **self.options()}

    def label(self, dtype: torch.dtype | None = None) -> str:
        """Short name of the configuration for tables and plots, e.g. ``octopus-3b``; ``dtype`` (the
        input's) matters only to codecs whose storage depends on it (``none``)."""
        return f"{self.name}-{self.bits:g}b"

    def packed_nbytes(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32) -> int:
        """Bytes :meth:`encode` stores for a ``dtype`` tensor of ``shape`` (``PackedTensor.nbytes``),
        without data: for cache sizing on meta or empty tensors."""
        shape = tuple(check_int(s, "shape entry", self.name, 0) for s in shape)
        if not shape or shape[-1] != self.head_dim:
            raise CodecError(f"{self.name}: expected a (..., {self.head_dim}) shape, got {shape}")
        if dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{self.name}: unsupported dtype {dtype}; expected float16, bfloat16 or float32")
        return sum(math.prod(s) * d.itemsize for s, d in self.field_layout(shape, dtype).values())

    # ---- public API ---------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> PackedTensor:
        """Compress ``x`` of shape ``(..., head_dim)`` (fp32, fp16 or bf16, any device)."""
        self.check_input(x)
        packed = self._encode(x.contiguous())
        if any(k not in packed.meta for k in IDENTITY_KEYS):  # a codec that builds its own meta
            packed.meta = {**packed.meta, **self.packed_meta()}
        self.check_side_info(packed)
        return packed

    def decode(self, packed: PackedTensor) -> torch.Tensor:
        """Reconstruct a tensor of the encoded shape, in the encoded dtype, on ``packed``'s device.

        Refuses data packed by another codec or configuration (seed, head_dim, bits, options) and
        fields whose names, shapes or dtypes differ from what this codec writes."""
        self.validate_packed(packed)
        return self._decode(packed).to(packed.dtype)

    def validate_packed(self, packed: PackedTensor) -> None:
        """Raise :class:`CodecError` unless ``packed`` is what this codec writes: same codec and
        parameters (:meth:`packed_meta`), and fields laid out as :meth:`field_layout` says."""
        if not isinstance(packed, PackedTensor):
            raise TypeError(f"{self.name}: expected a PackedTensor, got {type(packed).__name__}")
        if packed.codec != self.name:
            raise CodecError(f"{self.name}: cannot decode data packed by codec {packed.codec!r}")
        if not packed.shape or packed.shape[-1] != self.head_dim:
            raise CodecError(f"{self.name}: packed head_dim {packed.shape[-1] if packed.shape else None} != "
                             f"codec head_dim {self.head_dim}")
        expected = self.packed_meta()
        diffs = [f"{k}: packed {packed.meta.get(k)!r}, this codec {v!r}" for k, v in expected.items()
                 if k != "options" and packed.meta.get(k) != v]
        got_options = packed.meta.get("options") or {}
        diffs += [f"{k}: packed {got_options.get(k)!r}, this codec {v!r}"
                  for k, v in expected["options"].items() if got_options.get(k) != v]
        diffs += [f"{k}: packed {v!r}, this codec has no such option" for k, v in got_options.items()
                  if k not in expected["options"]]
        if diffs:
            raise CodecError(f"{self.name}: packed with another configuration ({'; '.join(diffs)})")
        if packed.dtype not in SUPPORTED_DTYPES:
            raise CodecError(f"{self.name}: packed dtype {packed.dtype} is not float16, bfloat16 or float32")
        layout = self.field_layout(tuple(packed.shape), packed.dtype)
        if set(layout) != set(packed.fields):
            raise CodecError(f"{self.name}: packed fields {sorted(packed.fields)}, this codec writes "
                             f"{sorted(layout)}")
        for key, (shape, dtype) in layout.items():
            got = packed.fields[key]
            if not isinstance(got, torch.Tensor) or tuple(got.shape) != shape or got.dtype != dtype:
                what = (f"{got.dtype} {tuple(got.shape)}" if isinstance(got, torch.Tensor)
                        else type(got).__name__)
                empty = " (empty)" if isinstance(got, torch.Tensor) and got.numel() == 0 else ""
                raise CodecError(f"{self.name}: field {key!r} is {what}{empty}, expected {dtype} {shape} "
                                 f"for encoded shape {tuple(packed.shape)}")

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
        if x.device.type == "meta":
            raise CodecError(f"{self.name}: cannot encode a meta-device tensor (shape {tuple(x.shape)}): it "
                             "holds no data; codec.packed_nbytes(shape, dtype) gives its packed size")
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
        rate = self.bits_per_scalar
        return (f"{type(self).__name__}(head_dim={self.head_dim}, bits={self.bits}, seed={self.seed}, "
                f"bits_per_scalar={rate:.4f})")
