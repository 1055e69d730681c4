"""Shared builders of the kernel tests: seeded attention cases, masks, token-major codes.

Every kernel test compares a kernel with the reference codec or with ``kernels.reference`` through
``helpers.assert_close`` (or ``torch.equal`` where the kernel is bit-exact by design).
"""

from __future__ import annotations

import dataclasses

import torch

from helpers import DEVICE

from octopus_diffusers.codecs import Codec, PackedTensor, get_codec


def float32_decode(codec: Codec, packed: PackedTensor) -> torch.Tensor:
    """``codec.decode`` in float32 (not rounded to the input dtype): the attention references' K/V."""
    return codec.decode(dataclasses.replace(packed, dtype=torch.float32))


def to_bshd(packed: PackedTensor) -> PackedTensor:
    """The same codes stored token-major: ``(B, N, H, bytes)`` and ``(B, N, H)``."""
    s = packed.shape
    return dataclasses.replace(packed, shape=(s[0], s[2], s[1], s[3]),
                               fields={n: t.transpose(1, 2).contiguous() for n, t in packed.fields.items()})


def attention_case(name: str, head_dim: int, bits: float, dtype: torch.dtype, hq: int = 4, hkv: int = 2,
                   nq: int = 24, nkv: int = 40, seed: int = 0):
    """Seeded ``(q, k_packed, v_packed, codec_k, codec_v, k_hat, v_hat)`` (BHSD; K twice V's scale)."""
    g = torch.Generator().manual_seed(seed)
    ck, cv = get_codec(name, head_dim, bits, seed=1), get_codec(name, head_dim, bits, seed=2)
    q = torch.randn(1, hq, nq, head_dim, generator=g).to(dtype).to(DEVICE)
    k = (torch.randn(1, hkv, nkv, head_dim, generator=g) * 2).to(dtype).to(DEVICE)
    v = torch.randn(1, hkv, nkv, head_dim, generator=g).to(dtype).to(DEVICE)
    kp, vp = ck.encode(k), cv.encode(v)
    return q, kp, vp, ck, cv, float32_decode(ck, kp), float32_decode(cv, vp)


def masks(nq: int, nkv: int) -> dict[str, torch.Tensor | None]:
    """No mask, a bool mask (every row keeps key 0: SDPA gives NaN rows otherwise) and an additive one."""
    g = torch.Generator().manual_seed(3)
    keep = torch.rand(1, 1, nq, nkv, generator=g) > 0.4
    keep[..., 0] = True
    return {"none": None, "bool": keep.to(DEVICE), "additive": torch.randn(nq, nkv, generator=g).to(DEVICE)}
