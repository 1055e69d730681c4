"""What a kernel needs to know about a codec: field widths, codebooks, rotation, packed row size.

:func:`kernel_spec` turns a reference codec object (``octopus_diffusers.codecs``) into a frozen
spec that the Triton launchers read; anything the kernels do not implement is refused here with a
:class:`CodecError` naming it, never inside a kernel. The kernels implement head_dim 64 and 128
(the Hadamard rotations of every real model in ``performance.md``); other head_dims stay on the
PyTorch reference codecs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from octopus_diffusers.codecs import Codec, CodecError

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


@dataclass(frozen=True)
class TurboQuantSpec:
    """TurboQuant-mse with one integer width for every coordinate."""

    head_dim: int
    bits: int
    codebook: torch.Tensor  # (2**bits,) sorted float32 centroids of a rotated unit-vector coordinate
    rotation: torch.Tensor  # (d, d) float32, y = x @ R.T
    kind: str = field(default="turboquant", init=False)

    @property
    def nbytes(self) -> int:
        return (self.head_dim * self.bits + 7) // 8


@dataclass(frozen=True)
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

_SPEC_CACHE: dict[int, KernelSpec] = {}


def kernel_spec(codec: Codec) -> KernelSpec:
    """The kernel spec of ``codec`` (cached per codec object); refuses what the kernels lack."""
    cached = _SPEC_CACHE.get(id(codec))
    if cached is not None and cached.head_dim == codec.head_dim:
        return cached
    _check_head_dim(codec)
    if codec.name == "turboquant":
        spec: KernelSpec = _turboquant_spec(codec)
    elif codec.name == "octopus":
        spec = _octopus_spec(codec)
    else:
        raise CodecError(f"kernels: codec {codec.name!r} has no Triton kernel (kernels implement "
                         "'octopus' and 'turboquant')")
    _SPEC_CACHE[id(codec)] = spec
    return spec


def _turboquant_spec(codec: Codec) -> TurboQuantSpec:
    widths = tuple(int(w) for w in codec.widths)
    if len(set(widths)) != 1:
        raise CodecError(f"kernels: TurboQuant with mixed widths {sorted(set(widths))} (fractional "
                         f"bits={codec.bits}) is not implemented; use an integer bits value")
    bits = widths[0]
    return TurboQuantSpec(head_dim=codec.head_dim, bits=bits,
                          codebook=_codebook(codec.codebook_for_width(bits), bits, "turboquant"),
                          rotation=codec.rotation.matrix.contiguous())


def _octopus_spec(codec: Codec) -> OctopusSpec:
    if getattr(codec, "qjl", False):
        raise CodecError("kernels: OCTOPUS with a QJL residual is not implemented")
    bx, be, br = (int(b) for b in codec.allocation)
    return OctopusSpec(head_dim=codec.head_dim, bx=bx, be=be, br=br,
                       xi_codebook=_codebook(codec.xi_codebook, bx, "octopus xi"),
                       eta_codebook=_codebook(codec.eta_codebook, be, "octopus eta"),
                       rho_codebook=_codebook(codec.rho_codebook, br, "octopus rho"),
                       rotation=codec.rotation.matrix.contiguous(),
                       joint_rounding=bool(codec.joint_rounding))


def plane_width(head_dim: int) -> int:
    """Padded triplet count per plane: the next power of two >= ceil(d / 3) (64 for d = 128)."""
    n = (head_dim + 2) // 3
    return 1 << (n - 1).bit_length()
