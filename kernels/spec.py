"""What a kernel needs to know about a codec: field widths, codebooks, rotation, packed row size.

:func:`kernel_spec` turns a reference codec object (``octopus_diffusers.codecs``) into a frozen
spec that the Triton launchers read; anything the kernels do not implement is refused here with a
:class:`CodecError` naming it, never inside a kernel. The kernels implement head_dim 64 and 128
(the Hadamard rotations of every real model in ``performance.md``); other head_dims stay on the
PyTorch reference codecs.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

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


class _SpecTables:
    """Tables derived from a spec (device codebooks, sign and rotation matrices), each built once per
    key on first use and stored on the spec itself, so they are freed with it (a spec lives as long
    as its codec, :func:`kernel_spec`)."""

    head_dim: int
    rotation: torch.Tensor

    def cached(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """``build()`` the first time ``key`` is asked for, the stored result after."""
        tables = self.__dict__.get("_tables")
        if tables is None:
            tables = {}
            object.__setattr__(self, "_tables", tables)  # frozen dataclass: the table dict is the one mutable part
        if key not in tables:
            tables[key] = build()
        return tables[key]

    @property
    def codebook_list(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def codebooks(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:attr:`codebook_list` on ``device`` (no host copy per call)."""
        return self.cached(("codebooks", device), lambda: tuple(c.to(device) for c in self.codebook_list))

    def hadamard_signs(self) -> torch.Tensor | None:
        """``sqrt(d) * R`` in float64 with entries exactly +-1 when the rotation is a signed Hadamard
        matrix ``H diag(s) / sqrt(d)`` (the fused-rotation kernels and half-precision rotations need
        it), else None."""

        def build() -> torch.Tensor | None:
            d = self.head_dim
            signs = (self.rotation.double() * d ** 0.5).round()
            exact = bool(signs.abs().eq(1).all()) and torch.allclose(signs / d ** 0.5, self.rotation.double(),
                                                                      rtol=1e-6, atol=0)
            return signs if exact else None

        return self.cached("hadamard_signs", build)


@dataclass(frozen=True, eq=False)
class TurboQuantSpec(_SpecTables):
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

    @property
    def single_width(self) -> bool:
        """One width for every channel (an integer rate)."""
        return self.bits_hi == self.bits_lo

    @property
    def kernel_bits(self) -> tuple[int, int, int]:
        """The three integers the kernels take with :attr:`codebook_list`: ``(bits_hi, bits_lo, n_high)``."""
        return self.bits_hi, self.bits_lo, self.n_high

    @property
    def codebook_list(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(hi, lo, hi)``: three codebooks as the kernels take them (the third unused)."""
        return self.codebook_hi, self.codebook_lo, self.codebook_hi

    def basis_permutation(self) -> torch.Tensor | None:
        """TurboQuant decodes in the codec's coordinate order: None."""
        return None

    def query_matrix(self, device: torch.device) -> torch.Tensor:
        """``(d, d)`` float32 ``R.T``: ``q @ R.T`` is the query in the keys' rotated basis."""
        return self.cached(("q", device), lambda: self.rotation.to(torch.float32).T.contiguous().to(device))

    def output_matrix(self, device: torch.device) -> torch.Tensor:
        """``(d, d)`` float32 ``R``: ``o_rot @ R`` takes the rotated output back."""
        return self.cached(("o", device), lambda: self.rotation.to(torch.float32).contiguous().to(device))


@dataclass(frozen=True, eq=False)
class OctopusSpec(_SpecTables):
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

    @property
    def single_width(self) -> bool:
        return False

    @property
    def kernel_bits(self) -> tuple[int, int, int]:
        """The three field widths ``(bx, be, br)``."""
        return self.bx, self.be, self.br

    @property
    def codebook_list(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(xi, eta, rho)`` codebooks."""
        return self.xi_codebook, self.eta_codebook, self.rho_codebook

    def basis_permutation(self) -> torch.Tensor:
        """The x/y/z plane order decode-then-attend decodes OCTOPUS vectors in (whole-row stores):
        coordinates ``0, 3, 6, ...`` (all x), then ``1, 4, ...`` (y), then ``2, 5, ...`` (z)."""
        return plane_permutation(self.head_dim)

    def query_matrix(self, device: torch.device) -> torch.Tensor:
        """``(d, 3 TP)`` float32: ``q @ M`` is ``q @ R.T`` in plane layout (:func:`.reference.to_planes`)."""
        from .reference import to_planes

        return self.cached(("q", device), lambda: to_planes(self.rotation.to(torch.float32).T).contiguous().to(device))

    def output_matrix(self, device: torch.device) -> torch.Tensor:
        """``(3 TP, d)`` float32: ``o_planes @ M`` is ``o_rot @ R`` (zero rows for the padding)."""
        from .reference import to_planes

        return self.cached(("o", device),
                           lambda: to_planes(self.rotation.to(torch.float32).T).T.contiguous().to(device))


KernelSpec = TurboQuantSpec | OctopusSpec

#: Specs per codec object (weak: a spec, and the tables it caches, live as long as its codec).
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


def midpoints(codebook: torch.Tensor) -> torch.Tensor:
    """Decision thresholds of a sorted codebook, float32 as the reference's ``nearest_index`` (one zero
    for a one-entry codebook, so a kernel always has a table to point at)."""
    t = 0.5 * (codebook[1:] + codebook[:-1])
    return t if t.numel() else torch.zeros(1)


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


def plane_permutation(head_dim: int) -> torch.Tensor:
    """int64 permutation of OCTOPUS plane order: coordinates ``0, 3, 6, ...``, then ``1, 4, ...``, then
    ``2, 5, ...``."""
    return torch.cat([torch.arange(c, head_dim, 3) for c in range(3)])


def plane_width(head_dim: int) -> int:
    """Padded triplet count per plane: the next power of two >= ceil(d / 3) (64 for d = 128)."""
    n = (head_dim + 2) // 3
    return 1 << (n - 1).bit_length()
