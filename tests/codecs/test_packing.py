"""Bit packing: exact round trips, the LSB-first layout, byte counts and bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from octopus_diffusers.codecs.base import CodecError
from octopus_diffusers.codecs.packing import pack_bits, packed_nbytes, unpack_bits


def _random_values(widths, lead, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cols = [torch.randint(0, 1 << w, lead, generator=gen) if w else torch.zeros(lead, dtype=torch.int64)
            for w in widths]
    return torch.stack(cols, -1)


@settings(max_examples=60, deadline=None)
@given(widths=st.lists(st.integers(0, 16), min_size=1, max_size=20), rows=st.integers(1, 5),
       seed=st.integers(0, 1000))
def test_round_trip_any_widths(widths, rows, seed):
    values = _random_values(widths, (rows, 2), seed)
    packed = pack_bits(values, widths)
    assert packed.dtype == torch.uint8
    assert packed.shape == (rows, 2, packed_nbytes(widths))
    assert torch.equal(unpack_bits(packed, widths).to(torch.int64), values)


def test_lsb_first_layout_by_hand():
    # fields 3 bits (=5 -> 101), 2 bits (=2 -> 10), 4 bits (=9 -> 1001): stream bits
    # 1,0,1 | 0,1 | 1,0,0,1 -> byte0 = bits 0..7 = 1,0,1,0,1,1,0,0 = 0b00110101, byte1 = bit 8 = 1
    packed = pack_bits(torch.tensor([5, 2, 9]), [3, 2, 4])
    assert packed.tolist() == [0b00110101, 1]


def test_uniform_width_and_single_int_unpack():
    values = _random_values([4] * 7, (3,))
    packed = pack_bits(values, 4)
    assert packed.shape == (3, 4)  # 28 bits -> 4 bytes
    assert torch.equal(unpack_bits(packed, 4, n_fields=7).long(), values)


def test_zero_width_fields_take_no_space():
    packed = pack_bits(torch.zeros(4, 3, dtype=torch.int64), [0, 0, 0])
    assert packed.shape == (4, 0)
    assert unpack_bits(packed, [0, 0, 0]).shape == (4, 3)


def test_large_input():
    values = _random_values([5, 5, 3], (200_000,), seed=3)
    assert torch.equal(unpack_bits(pack_bits(values, [5, 5, 3]), [5, 5, 3]).long(), values)


def test_bad_input():
    with pytest.raises(CodecError, match="does not fit"):
        pack_bits(torch.tensor([4]), [2])
    with pytest.raises(CodecError, match="does not fit"):
        pack_bits(torch.tensor([-1]), [2])
    with pytest.raises(CodecError, match="0..16"):
        pack_bits(torch.tensor([1]), [17])
    with pytest.raises(TypeError, match="integer"):
        pack_bits(torch.tensor([1.0]), [2])
    with pytest.raises(CodecError, match="bytes"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), [8])
    with pytest.raises(TypeError, match="uint8"):
        unpack_bits(torch.zeros(1, dtype=torch.int32), [8])


@pytest.mark.gpu
def test_cuda_matches_cpu():
    values = _random_values([3, 3, 1] * 10, (64,))
    cpu = pack_bits(values, [3, 3, 1] * 10)
    gpu = pack_bits(values.cuda(), [3, 3, 1] * 10)
    assert torch.equal(gpu.cpu(), cpu)
    assert torch.equal(unpack_bits(gpu, [3, 3, 1] * 10).cpu().long(), values)


def test_empty_batches():
    packed = pack_bits(torch.zeros(0, 5, dtype=torch.int64), [3] * 5)
    assert packed.shape == (0, 2)
    assert unpack_bits(packed, [3] * 5).shape == (0, 5)
