"""Decode-then-attend's choice of which side to rotate: Q and the output (K/V at least as many vectors
as Q) or K and V back to the original basis (fewer, e.g. cross-attention to a short prompt). Both
against float32 attention on the reference-decoded K/V, relative RMS <= 1e-3 (as the other kernels)."""

from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, assert_close
from kernel_checks import float32_decode

from octopus_diffusers.codecs import get_codec
from octopus_diffusers.kernels.attention.decoded import basis_permutation, decoded_attention, rotate
from octopus_diffusers.kernels.reference import attention_on_decoded
from octopus_diffusers.kernels.spec import kernel_spec


@pytest.mark.parametrize("name", ["octopus", "turboquant"])
@pytest.mark.parametrize(("nq", "nkv"), [(8, 48), (48, 8)], ids=["rotate_q", "unrotate_kv"])
@pytest.mark.parametrize("layout", ["BHSD", "BSHD"])
def test_both_rotation_sides_match_the_reference(name, nq, nkv, layout):
    g = torch.Generator().manual_seed(0)
    ck, cv = get_codec(name, 64, 3, seed=1), get_codec(name, 64, 3, seed=2)
    q = torch.randn(1, 4, nq, 64, generator=g).half().to(DEVICE)
    k = torch.randn(1, 2, nkv, 64, generator=g).half().to(DEVICE)
    v = torch.randn(1, 2, nkv, 64, generator=g).half().to(DEVICE)
    mask = (torch.rand(1, 1, nq, nkv, generator=g) > 0.3).to(DEVICE)
    mask[..., 0] = True
    kp, vp = ck.encode(k), cv.encode(v)
    ref = attention_on_decoded(q, float32_decode(ck, kp), float32_decode(cv, vp), mask)
    if layout == "BSHD":
        q_in = q.transpose(1, 2).contiguous()
        kp, vp = (ck.encode(k.transpose(1, 2).contiguous()), cv.encode(v.transpose(1, 2).contiguous()))
        out = decoded_attention(q_in, kp, vp, kernel_spec(ck), kernel_spec(cv), mask, layout="BSHD").transpose(1, 2)
    else:
        out = decoded_attention(q, kp, vp, kernel_spec(ck), kernel_spec(cv), mask)
    assert out.dtype == torch.float16 and out.shape == q.shape
    assert_close("decoded", ref, out)


@pytest.mark.parametrize("name", ["turboquant", "octopus"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_rotate_and_its_inverse_are_the_codec_rotation(name, dtype):
    """``rotate`` gives ``x @ R.T`` with columns in the decode's order (OCTOPUS: x/y/z planes), and its
    inverse takes that basis back: ``y @ R`` with ``y``'s columns un-permuted."""
    spec = kernel_spec(get_codec(name, 64, 3))
    perm = basis_permutation(spec)
    perm = torch.arange(64) if perm is None else perm
    assert sorted(perm.tolist()) == list(range(64)) and (name == "turboquant") == (perm == torch.arange(64)).all()
    x = torch.randn(3, 5, 64).to(dtype)
    r = spec.rotation.double()
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-6}[dtype]
    y = rotate(x, spec)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close("rotate", (x.double() @ r.T)[..., perm], y, rel_rms=tol, max_abs=tol * x.abs().max().item())
    back = rotate(y, spec, inverse=True)
    unpermuted = torch.empty_like(y, dtype=torch.float64)
    unpermuted[..., perm] = y.double()
    assert_close("inverse rotate", unpermuted @ r, back, rel_rms=tol, max_abs=tol * y.abs().max().item())
