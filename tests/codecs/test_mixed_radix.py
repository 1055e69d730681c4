"""Mixed-radix packing: exact round trips, the chunking rule and its rate accounting."""

import math

import pytest
import torch

from octopus_diffusers.codecs import CodecError
from octopus_diffusers.codecs.mixed_radix import (
    MAX_CHUNK_BITS, chunk_plan, pack_mixed_radix, packed_bits, unpack_mixed_radix)


@pytest.mark.parametrize("seed", range(6))
def test_round_trip_is_exact_for_random_radices_and_indices(seed):
    gen = torch.Generator().manual_seed(seed)
    n_groups = int(torch.randint(1, 60, (1,), generator=gen))
    top = [2, 7, 300, 40000, 2**20, 2**31 + 11][seed]
    radices = [int(r) for r in torch.randint(1, top + 1, (n_groups,), generator=gen)]
    idx = torch.stack([torch.randint(0, r, (5, 3), generator=gen) for r in radices], -1)
    idx[0, 0] = torch.tensor([r - 1 for r in radices])  # the largest value of every group
    idx[0, 1] = 0
    packed = pack_mixed_radix(idx, radices)
    plan = chunk_plan(tuple(radices))
    assert packed.dtype == torch.uint8 and packed.shape == (5, 3, plan.nbytes)
    assert torch.equal(unpack_mixed_radix(packed, radices), idx.long())


def test_chunks_respect_63_bits_and_lose_under_one_bit_each():
    radices = tuple([1000] * 30 + [3] * 50 + [2**40] + [5])
    plan = chunk_plan(radices)
    for (g0, g1), bits in zip(plan.chunks, plan.chunk_bits):
        product = math.prod(radices[g0:g1])
        assert product <= 2**MAX_CHUNK_BITS
        assert bits == math.ceil(math.log2(product)) if product > 1 else bits == 0
        if g1 < len(radices):  # greedy: the next group would not have fitted
            assert product * radices[g1] > 2**MAX_CHUNK_BITS
    assert plan.information_bits <= plan.total_bits < plan.information_bits + len(plan.chunks)
    assert plan.nbytes == math.ceil(plan.total_bits / 8) == math.ceil(packed_bits(radices) / 8)
    assert all(0 < w <= 16 for w in plan.piece_widths) and sum(plan.piece_widths) == plan.total_bits


def test_non_power_of_two_levels_cost_their_log2():
    # 5 levels x 27 groups: 27 log2(5) = 62.7 bits in one 63-bit chunk, vs 81 bits at 3 bits each
    assert packed_bits([5] * 27) == 63
    assert packed_bits([2**3] * 21) == 63  # powers of two pack without loss


def test_bad_input_is_refused_with_a_clear_error():
    with pytest.raises(CodecError, match="outside"):
        pack_mixed_radix(torch.tensor([[3, 0]]), [3, 4])
    with pytest.raises(CodecError, match="positive"):
        chunk_plan((3, 0))
    with pytest.raises(CodecError, match="2 radices"):
        pack_mixed_radix(torch.tensor([[1, 0, 0]]), [3, 4])
    with pytest.raises(TypeError, match="integer"):
        pack_mixed_radix(torch.tensor([[1.0, 0.0]]), [3, 4])
    with pytest.raises(CodecError, match="bytes"):
        unpack_mixed_radix(torch.zeros(1, 9, dtype=torch.uint8), [3, 4])
