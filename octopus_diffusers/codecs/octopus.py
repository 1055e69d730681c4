"""OCTOPUS (arXiv 2605.21226): triplets of the rotated unit vector, octahedral map, Lloyd-Max codes.

Encoder, per vector x of one head (codecs.md §2):
  gamma = ||x|| (stored, float16 by default); y = R x / gamma (seeded rotation, :mod:`.rotation`);
  contiguous triplets t_i of y (the last zero-padded); rho_i = ||t_i||; (xi_i, eta_i) = octahedral map
  of t_i; xi and eta quantized with the shared Lloyd-Max direction codebook of their width, rho with
  the rho codebook (codebooks fitted to samples of this encoder, :mod:`.build_codebooks`).
  Joint rounding (default on): among the 3x3 neighbours of the nearest (j_xi, j_eta), keep the
  direction n^ maximizing s = t·n^, then store the rho centroid nearest s (the least-squares scale).
Decoder: t^_i = rho^ * octahedral_decode(xi^, eta^); y^ = triplets without padding; x^ = gamma R^T y^.

Layout (docs/architecture.md): field ``codes`` uint8 ``(..., ceil(n*w/8))``, triplet i at bit offset
i*w holding (i_xi, i_eta, i_rho); field ``norms``. With ``qjl_residual=True`` the residual
r = y - y^ (rotated unit basis) is sketched by :class:`.qjl.SignSketch` (m = head_dim sign bits,
fields ``qjl_signs`` and ``qjl_norms``) and its unbiased estimate is added back, which makes
<q, x^> an unbiased estimate of <q, x> over the sketch's randomness (up to the float16 norms).
"""

from __future__ import annotations

import torch

from .base import Codec, CodecError, PackedTensor
from .codebooks import check_head_dim, load_codebook
from .octahedral import from_triplets, n_triplets, octahedral_decode, octahedral_encode, to_triplets
from .packing import pack_bits, packed_nbytes, unpack_bits
from .qjl import SignSketch
from .rotation import Rotation

NORM_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_NEIGHBOURS = torch.tensor([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)], dtype=torch.int64)


def default_allocation(bits: int) -> tuple[int, int, int]:
    """The paper's b-bit setting (b+1, b+1, b-1): 3b+1 bits per triplet."""
    return (bits + 1, bits + 1, bits - 1)


def nearest_index(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest sorted centroid (ties to the lower one), int64."""
    thresholds = 0.5 * (centroids[1:] + centroids[:-1])
    return torch.bucketize(values, thresholds)


class OctopusCodec(Codec):
    """OCTOPUS codec; see the module docstring. ``bits`` is the nominal integer rate b whose default
    allocation is (b+1, b+1, b-1); an explicit ``allocation=(b_xi, b_eta, b_rho)`` defines the rate
    itself (``bits`` then only labels the configuration; reports use :attr:`bits_per_scalar`)."""

    name = "octopus"
    min_head_dim = 4

    def __init__(self, head_dim: int, bits: float = 3, seed: int = 0,
                 allocation: tuple[int, int, int] | None = None, joint_rounding: bool = True,
                 qjl_residual: bool = False, norm_dtype: torch.dtype = torch.float16) -> None:
        super().__init__(head_dim, bits, seed)
        if allocation is None:
            if bits != int(bits):
                raise CodecError(
                    f"octopus: fractional bits {bits} need an explicit per-triplet allocation, e.g. "
                    f"get_codec('octopus', {head_dim}, {bits}, allocation=(3, 3, 2)) for 8 bits per "
                    "triplet (b_xi, b_eta, b_rho); bits_per_scalar reports the true rate")
            if not 1 <= bits <= 7:
                raise CodecError(f"octopus: bits must be an int in 1..7 for the default allocation "
                                 f"(b+1, b+1, b-1), got {bits}; pass allocation=(b_xi, b_eta, b_rho) otherwise")
            allocation = default_allocation(int(bits))
        allocation = tuple(allocation)
        if (len(allocation) != 3 or not all(isinstance(a, int) and not isinstance(a, bool) for a in allocation)
                or not (1 <= allocation[0] <= 8 and 1 <= allocation[1] <= 8 and 0 <= allocation[2] <= 8)):
            raise CodecError(f"octopus: allocation must be three ints (b_xi, b_eta, b_rho) with b_xi, b_eta "
                             f"in 1..8 and b_rho in 0..8, got {allocation!r}")
        if norm_dtype not in NORM_DTYPES:
            raise CodecError(f"octopus: norm_dtype must be float16, bfloat16 or float32, got {norm_dtype}")
        check_head_dim(head_dim, "octopus")
        self.allocation: tuple[int, int, int] = allocation
        self.joint_rounding = bool(joint_rounding)
        self.qjl_residual = bool(qjl_residual)
        self.norm_dtype = norm_dtype
        self.rotation = Rotation(head_dim, self.seed)
        self.n_triplets = n_triplets(head_dim)
        self.bits_per_triplet = sum(allocation)
        self.xi_codebook = load_codebook("octopus_dir", allocation[0], head_dim)
        self.eta_codebook = load_codebook("octopus_dir", allocation[1], head_dim)
        self.rho_codebook = load_codebook("octopus_rho", allocation[2], head_dim)
        self._widths = list(allocation) * self.n_triplets
        self.sketch = SignSketch(head_dim, head_dim, self.seed) if self.qjl_residual else None
        self._codebook_cache: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    # ---- rate -----------------------------------------------------------------------------------
    @property
    def bits_per_scalar(self) -> float:
        bits = 8 * packed_nbytes(self._widths) + 8 * torch.empty(0, dtype=self.norm_dtype).element_size()
        if self.sketch is not None:
            bits += self.sketch.rate_bits(self.norm_dtype)
        return bits / self.head_dim

    def config(self) -> dict:
        return {**super().config(), "allocation": list(self.allocation), "joint_rounding": self.joint_rounding,
                "qjl_residual": self.qjl_residual, "norm_dtype": str(self.norm_dtype).removeprefix("torch.")}

    # ---- the unit-vector quantizer (rotated basis) ---------------------------------------------------
    def _codebooks(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if device not in self._codebook_cache:
            self._codebook_cache[device] = tuple(
                c.to(device) for c in (self.xi_codebook, self.eta_codebook, self.rho_codebook))
        return self._codebook_cache[device]

    def quantize_rotated(self, y: torch.Tensor) -> torch.Tensor:
        """Indices ``int64 (..., n_triplets, 3)`` = (i_xi, i_eta, i_rho) of rotated unit vectors ``y``."""
        cb_xi, cb_eta, cb_rho = self._codebooks(y.device)
        t = to_triplets(y.to(torch.float32))
        rho = torch.linalg.vector_norm(t, dim=-1)
        # A zero triplet has no direction; give it the north pole so the map stays finite.
        t_dir = torch.where((rho > 0)[..., None], t, t.new_tensor([0.0, 0.0, 1.0]))
        xi, eta = octahedral_encode(t_dir)
        j_xi, j_eta = nearest_index(xi, cb_xi), nearest_index(eta, cb_eta)
        if not self.joint_rounding:
            return torch.stack([j_xi, j_eta, nearest_index(rho, cb_rho)], -1)
        nb = _NEIGHBOURS.to(y.device)
        c_xi = (j_xi[..., None] + nb[:, 0]).clamp(0, cb_xi.numel() - 1)  # (..., n, 9)
        c_eta = (j_eta[..., None] + nb[:, 1]).clamp(0, cb_eta.numel() - 1)
        dirs = octahedral_decode(cb_xi[c_xi], cb_eta[c_eta])  # (..., n, 9, 3)
        s = (dirs * t[..., None, :]).sum(-1)
        best = s.argmax(-1, keepdim=True)
        s_best = s.gather(-1, best).squeeze(-1)
        return torch.stack([c_xi.gather(-1, best).squeeze(-1), c_eta.gather(-1, best).squeeze(-1),
                            nearest_index(s_best, cb_rho)], -1)

    def dequantize_rotated(self, idx: torch.Tensor) -> torch.Tensor:
        """Rotated unit-vector reconstruction ``float32 (..., head_dim)`` from triplet indices."""
        cb_xi, cb_eta, cb_rho = self._codebooks(idx.device)
        idx = idx.long()
        t_hat = cb_rho[idx[..., 2]][..., None] * octahedral_decode(cb_xi[idx[..., 0]], cb_eta[idx[..., 1]])
        return from_triplets(t_hat, self.head_dim)

    def encode_unit(self, u: torch.Tensor) -> torch.Tensor:
        """Triplet indices of unit vectors ``u`` given in the original basis (no norm, no packing)."""
        return self.quantize_rotated(self.rotation.forward(u.to(torch.float32)))

    def decode_unit(self, idx: torch.Tensor) -> torch.Tensor:
        """Unit-vector reconstruction in the original basis: ``E||u - decode_unit(encode_unit(u))||²``."""
        return self.rotation.inverse(self.dequantize_rotated(idx))

    # ---- Codec interface -------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor) -> PackedTensor:
        xf = x.to(torch.float32)
        gamma = torch.linalg.vector_norm(xf, dim=-1)
        y = self.rotation.forward(xf) / torch.where(gamma > 0, gamma, 1.0)[..., None]
        idx = self.quantize_rotated(y)
        fields = {"codes": pack_bits(idx.flatten(-2), self._widths), "norms": gamma.to(self.norm_dtype)}
        if self.sketch is not None:
            r = y - self.dequantize_rotated(idx)
            fields["qjl_signs"] = self.sketch.signs(r)
            fields["qjl_norms"] = torch.linalg.vector_norm(r, dim=-1).to(self.norm_dtype)
        return PackedTensor(self.name, tuple(x.shape), x.dtype, fields,
                            {"allocation": list(self.allocation), "qjl_residual": self.qjl_residual})

    def _decode(self, packed: PackedTensor) -> torch.Tensor:
        if packed.meta.get("allocation") != list(self.allocation) or \
                packed.meta.get("qjl_residual") != self.qjl_residual:
            raise CodecError(f"octopus: packed with allocation {packed.meta.get('allocation')} / qjl_residual "
                             f"{packed.meta.get('qjl_residual')}, this codec uses {list(self.allocation)} / "
                             f"{self.qjl_residual}")
        idx = unpack_bits(packed.fields["codes"], self._widths)
        y_hat = self.dequantize_rotated(idx.view(*idx.shape[:-1], self.n_triplets, 3))
        if self.sketch is not None:
            y_hat = y_hat + self.sketch.estimate(packed.fields["qjl_signs"], packed.fields["qjl_norms"])
        gamma = packed.fields["norms"].to(torch.float32)
        return self.rotation.inverse(y_hat) * gamma[..., None]
