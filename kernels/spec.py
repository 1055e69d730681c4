"""What a kernel needs to know about a codec: field widths, codebooks, rotation, packed row size.

:func:`kernel_spec` turns a reference codec object (``octopus_diffusers.codecs``) into a frozen
spec that the Triton launchers read; anything the kernels do not implement is refused here with a
:class:`CodecError` naming it, never inside a kernel. The kernels implement head_dim 64 and 128
(the Hadamard rotations of every real model in ``performance.md``); other head_dims stay on the
PyTorch reference codecs.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

from octopus_diffusers.codecs import Codec, CodecError, PackedTensor

#: head_dims the kernels implement (power-of-two tiles; every model in performance.md uses one).
KERNEL_HEAD_DIMS = (64, 128)


def _check_head_dim(codec: Codec) -> None:
    if codec.head_dim not in KERNEL_HEAD_DIMS:
        raise CodecError(f"kernels: head_dim {codec.head_dim} is not implemented (kernels take "
                         f"{KERNEL_HEAD_DIMS}); use the reference codec's encode/decode")


def _codebook(values: torch.Tensor | object, bits: int, what: str) -> torch.Tensor:
    cb = torch.as_tensor(values, dtype=torch.float32).flatten().cpu()
    if cb.numel() != 1 << bits:
        raise CodecError(f"kernels: {what} codebook has {cb.numel()} entries, expected 2**{bits}")
    if bool((cb[1:] < cb[:-1]).any()):
        raise CodecError(f"kernels: {what} codebook is not sorted")
    return cb.contiguous()


@dataclass(frozen=True, eq=False)
class TurboQuantSpec:
    """TurboQuant-mse: channels ``[0, n_high)`` use ``bits_hi`` bits, the rest ``bits_lo`` (equal for an
    integer rate)."""

    head_dim: int
    bits_hi: int
    bits_lo: int
    n_high: int
    codebook_hi: torch.Tensor  # sorted float32 centroids of a rotated unit-vector coordinate
    codebook_lo: torch.Tensor
    rotation: torch.Tensor  # (d, d) float32, y = x @ R.T
    kind: str = field(default="turboquant", init=False)

    @property
    def nbytes(self) -> int:
        return (self.n_high * self.bits_hi + (self.head_dim - self.n_high) * self.bits_lo + 7) // 8


@dataclass(frozen=True, eq=False)
class OctopusSpec:
    """OCTOPUS: triplets of (xi, eta, rho) indices with widths (bx, be, br)."""

    head_dim: int
    bx: int
    be: int
    br: int
    xi_codebook: torch.Tensor
    eta_codebook: torch.Tensor
    rho_codebook: torch.Tensor
    rotation: torch.Tensor
    joint_rounding: bool
    kind: str = field(default="octopus", init=False)

    @property
    def n_triplets(self) -> int:
        return (self.head_dim + 2) // 3

    @property
    def width(self) -> int:
        return self.bx + self.be + self.br

    @property
    def nbytes(self) -> int:
        return (self.n_triplets * self.width + 7) // 8


KernelSpec = TurboQuantSpec | OctopusSpec

#: Specs per codec object (weak: a spec lives as long as its codec). Specs compare by identity, so the
#: launchers' per-spec caches key on the spec object itself.
_SPEC_CACHE: "weakref.WeakKeyDictionary[Codec, KernelSpec]" = weakref.WeakKeyDictionary()


def kernel_spec(codec: Codec) -> KernelSpec:
    """The kernel spec of ``codec`` (cached per codec object); refuses what the kernels lack."""
    cached = _SPEC_CACHE.get(codec)
    if cached is not None:
        return cached
    _check_head_dim(codec)
    if codec.name == "turboquant":
        spec: KernelSpec = _turboquant_spec(codec)
    elif codec.name == "octopus":
        spec = _octopus_spec(codec)
    else:
        raise CodecError(f"kernels: codec {codec.name!r} has no Triton kernel (kernels implement "
                         "'octopus' and 'turboquant')")
    _SPEC_CACHE[codec] = spec
    return spec


def _turboquant_spec(codec: Codec) -> TurboQuantSpec:
    if getattr(codec, "qjl_residual", False):
        raise CodecError("kernels: TurboQuant with a QJL residual (turboquant_prod) is not implemented")
    widths = [int(w) for w in codec.code_widths]
    hi, lo = max(widths), min(widths)
    n_high = int(codec.n_high) if hi != lo else codec.head_dim
    if widths != [hi] * n_high + [lo] * (codec.head_dim - n_high):
        raise CodecError(f"kernels: TurboQuant widths must be {hi} bits on the first channels then {lo}")
    return TurboQuantSpec(head_dim=codec.head_dim, bits_hi=hi, bits_lo=lo, n_high=n_high,
                          codebook_hi=_codebook(codec.codebooks[hi], hi, "turboquant"),
                          codebook_lo=_codebook(codec.codebooks[lo], lo, "turboquant"),
                          rotation=codec.rotation.matrix.contiguous())


def _octopus_spec(codec: Codec) -> OctopusSpec:
    if getattr(codec, "qjl_residual", False):
        raise CodecError("kernels: OCTOPUS with a QJL residual is not implemented")
    bx, be, br = (int(b) for b in codec.allocation)
    return OctopusSpec(head_dim=codec.head_dim, bx=bx, be=be, br=br,
                       xi_codebook=_codebook(codec.xi_codebook, bx, "octopus xi"),
                       eta_codebook=_codebook(codec.eta_codebook, be, "octopus eta"),
                       rho_codebook=_codebook(codec.rho_codebook, br, "octopus rho"),
                       rotation=codec.rotation.matrix.contiguous(),
                       joint_rounding=bool(codec.joint_rounding))


def hadamard_signs(spec: KernelSpec) -> torch.Tensor | None:
    """``sqrt(d) * R`` in float64 with entries exactly +-1 when the spec's rotation is a signed Hadamard
    matrix ``H diag(s) / sqrt(d)`` (the fused-rotation kernels and half-precision rotations need it),
    else None."""
    d = spec.head_dim
    signs = (spec.rotation.double() * d ** 0.5).round()
    exact = bool(signs.abs().eq(1).all()) and torch.allclose(signs / d ** 0.5, spec.rotation.double(), rtol=1e-6,
                                                              atol=0)
    return signs if exact else None


def midpoints(codebook: torch.Tensor) -> torch.Tensor:
    """Decision thresholds of a sorted codebook, float32 as the reference's ``nearest_index`` (one zero
    for a one-entry codebook, so a kernel always has a table to point at)."""
    t = 0.5 * (codebook[1:] + codebook[:-1])
    return t if t.numel() else torch.zeros(1)


_DEVICE_CODEBOOKS: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def device_codebooks(spec: KernelSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The spec's codebooks on ``device``, cached (no host copy per call): OCTOPUS (xi, eta, rho),
    TurboQuant (hi, lo, hi)."""
    key = (spec, device)
    if key not in _DEVICE_CODEBOOKS:
        books = ((spec.xi_codebook, spec.eta_codebook, spec.rho_codebook) if isinstance(spec, OctopusSpec)
                 else (spec.codebook_hi, spec.codebook_lo, spec.codebook_hi))
        _DEVICE_CODEBOOKS[key] = tuple(c.to(device) for c in books)  # type: ignore[assignment]
    return _DEVICE_CODEBOOKS[key]


def nbytes_of(codec: Codec) -> int:
    """Packed bytes per vector, from the codec's widths alone (no tensors: safe in fake-tensor mode)."""
    if codec.name == "octopus":
        return (codec.n_triplets * sum(codec.allocation) + 7) // 8
    return (sum(codec.code_widths) + 7) // 8


def packed_meta(codec: Codec) -> dict:
    """The ``meta`` the reference codec stores with a packed tensor (so kernel output is identical)."""
    if hasattr(codec, "packed_meta"):
        return codec.packed_meta()
    return {"allocation": list(codec.allocation), "qjl_residual": False}


def check_packed(codec: Codec, packed: PackedTensor, spec: KernelSpec) -> None:
    """Refuse packed data from another codec or configuration (before any kernel runs)."""
    if packed.codec != codec.name:
        raise CodecError(f"kernels: cannot decode data packed by codec {packed.codec!r} with {codec.name!r}")
    if packed.meta != packed_meta(codec):
        raise CodecError(f"kernels: packed with configuration {packed.meta}, the codec has "
                         f"{packed_meta(codec)}")
    codes = packed.fields["codes"]
    if codes.dtype != torch.uint8 or codes.shape[-1] != spec.nbytes or packed.shape[-1] != spec.head_dim:
        raise CodecError(f"kernels: codes {codes.dtype} {tuple(codes.shape)} do not match the codec "
                         f"({spec.nbytes} bytes per vector, head_dim {spec.head_dim})")


def plane_width(head_dim: int) -> int:
    """Padded triplet count per plane: the next power of two >= ceil(d / 3) (64 for d = 128)."""
    n = (head_dim + 2) // 3
    return 1 << (n - 1).bit_length()
