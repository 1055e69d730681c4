"""``kernels.reference`` against first principles: the rotated forms are the same attention, the split
merge is attention over all keys, the plane layout is the documented permutation. Plain PyTorch on the
CPU (no kernel runs), so these pin down the meaning the kernel tests compare against."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_close
from kernel_checks import attention_case

from octopus_diffusers.kernels.reference import (attention_on_decoded, combine_splits, from_planes,
                                                 reference_rotated, rotated_attention, to_planes)
from octopus_diffusers.kernels.spec import kernel_spec, plane_width


@pytest.mark.parametrize("name", ["octopus", "turboquant"])
def test_rotated_attention_is_attention_on_decoded_in_the_value_basis(name):
    """``softmax((q R_k^T)(gamma_k y_k)^T)(gamma_v y_v) = attention(q, k_hat, v_hat) R_v^T``: the
    rotated-basis decode times the rotation is the codec's decode."""
    q, kp, vp, ck, cv, k_hat, v_hat = attention_case(name, 64, 3, torch.float32, nq=6, nkv=20)
    q, kp, vp = q.cpu(), kp.to("cpu"), vp.to("cpu")
    rot_k, rot_v = kernel_spec(ck).rotation, kernel_spec(cv).rotation
    k_rot, v_rot = reference_rotated(ck, kp), reference_rotated(cv, vp)
    assert_close("rotated decode @ R", k_hat.cpu(), k_rot @ rot_k, rel_rms=1e-6)
    mask = torch.rand(6, 20, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[:, 0] = True
    ref = attention_on_decoded(q, k_hat.cpu(), v_hat.cpu(), mask, scale=0.2) @ rot_v.T
    assert_close("rotated attention", ref, rotated_attention(q, k_rot, v_rot, rot_k, mask, scale=0.2), rel_rms=1e-5)


def test_combine_splits_of_key_chunks_is_attention_over_all_keys():
    """Per-chunk normalised outputs merged by their base-2 log-sum-exps give softmax attention over all
    keys; a chunk whose keys are all masked (lse = -inf) contributes nothing, a row masked everywhere
    gives 0."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 5, 16, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 30, 16, generator=g, dtype=torch.float64) for _ in range(2))
    keep = torch.rand(5, 30, generator=g) > 0.3
    keep[:, 10:20] = False  # the second chunk is masked out for every row
    keep[4] = False  # the last row attends to nothing
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(16)
    scores = scores.masked_fill(~keep, float("-inf"))
    outs, lses = [], []
    for lo in (0, 10, 20):
        s = scores[..., lo:lo + 10]
        lse = torch.logsumexp(s, -1) / math.log(2)
        p = torch.where(torch.isfinite(lse)[..., None], torch.exp(s - torch.logsumexp(s, -1, keepdim=True)),
                        torch.zeros_like(s))
        outs.append(p @ v[..., lo:lo + 10, :])
        lses.append(lse)
    merged = combine_splits(torch.stack(outs), torch.stack(lses))
    full = torch.softmax(scores[..., :4, :], -1) @ v
    assert_close("merged splits", full, merged[..., :4, :], rel_rms=1e-12)
    assert merged[..., 4, :].abs().max() == 0


@pytest.mark.parametrize("head_dim", [64, 128])
def test_plane_layout_is_the_triplet_coordinate_permutation(head_dim):
    x = torch.randn(3, head_dim)
    planes = to_planes(x)
    tp = plane_width(head_dim)
    assert planes.shape == (3, 3 * tp) and tp >= (head_dim + 2) // 3
    for c in range(3):
        n = len(range(c, head_dim, 3))
        assert torch.equal(planes[:, c * tp: c * tp + n], x[:, c::3])
        assert not planes[:, c * tp + n: (c + 1) * tp].any()  # padding
    assert torch.equal(from_planes(planes, head_dim), x)
