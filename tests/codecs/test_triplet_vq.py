"""triplet_vq: rate filled to the byte, exact nearest-codeword encoder, reproducible codebooks, and
lower distortion than TurboQuant-mse at its own true rate."""

import pytest
import torch
from helpers import assert_close, unit_vectors

from octopus_diffusers.codecs import CodecError, get_codec
from octopus_diffusers.codecs.triplet_vq import TripletVQCodec
from octopus_diffusers.codecs.vq_codebooks import (
    SETTINGS, fit_group_codebook, group_key, load_vq, vq_index)



@pytest.mark.parametrize("head_dim,bits", [(32, 2.0), (64, 1.5), (64, 3.3), (128, 2.125), (128, 5.0)])
def test_true_rate_is_what_the_bytes_hold_and_fills_the_target(head_dim, bits):
    codec = get_codec("triplet_vq", head_dim, bits, seed=3)
    x = torch.randn(2, 5, head_dim, generator=torch.Generator().manual_seed(1))
    packed = codec.encode(x)
    assert packed.fields["codes"].dtype == torch.uint8
    assert codec.bits_per_scalar == packed.bits_per_scalar == 8 * packed.nbytes / packed.numel
    # within one byte per vector of the target, never above it
    assert bits - 8 / head_dim - 1e-9 < codec.bits_per_scalar <= bits + 1e-9
    assert codec.config()["code_bits"] <= codec.code_budget
    x_hat = codec.decode(packed)
    assert x_hat.shape == x.shape and x_hat.dtype == x.dtype
    assert_close("roundtrip", x, x_hat, rel_rms=0.35 ** 0.5)  # relative squared error < 0.35


def test_encoder_finds_the_exact_nearest_of_all_signed_codewords():
    codec = TripletVQCodec(64, 3.0)
    y = codec.rotation.forward(unit_vectors(200, 64, 5))
    idx = codec.group_indices(y)
    seg = codec.segments[0]
    cb = load_vq(seg.key)
    signs = torch.tensor([[1 - 2 * ((s >> j) & 1) for j in range(3)] for s in range(8)], dtype=torch.float32)
    full = (cb[:, None, :] * signs[None]).reshape(-1, 3)  # index i*8 + s, as the codec numbers them
    t = y[:, :3 * seg.count].reshape(-1, 3)
    brute = torch.cdist(t.double(), full.double()).argmin(-1)
    assert torch.equal(idx[:, :seg.count].reshape(-1), brute)
    assert torch.equal(codec.reconstruct(idx)[:, :3 * seg.count].reshape(-1, 3), full[brute])


def test_lower_distortion_than_turboquant_at_the_same_true_rate():
    u = unit_vectors(1024, 128, 7)
    for b in (2, 3):
        tq = get_codec("turboquant", 128, b)
        vq = get_codec("triplet_vq", 128, tq.bits_per_scalar)
        assert vq.bits_per_scalar <= tq.bits_per_scalar
        d_tq = float(((u - tq.roundtrip(u)) ** 2).sum(-1).mean())
        d_vq = float(((u - vq.roundtrip(u)) ** 2).sum(-1).mean())
        assert d_vq < 0.92 * d_tq, (b, d_vq, d_tq)


def test_shipped_codebook_is_reproduced_by_the_build_script():
    meta = vq_index()
    assert meta["settings"]["seed"] == SETTINGS["seed"] and meta["version"] == 1
    key = group_key(64, 3, 8)
    cb, dist = fit_group_codebook(64, 3, 8)
    assert torch.allclose(cb, load_vq(key), atol=1e-6)
    assert dist == pytest.approx(meta["codebooks"][key]["distortion"], rel=1e-9)


def test_bad_configurations_fail_clearly():
    with pytest.raises(CodecError, match="head_dim 48"):
        get_codec("triplet_vq", 48, 3.0)
    with pytest.raises(CodecError, match="below"):
        get_codec("triplet_vq", 128, 0.25)
    with pytest.raises(CodecError, match="above"):
        get_codec("triplet_vq", 64, 6.0)
    codec = get_codec("triplet_vq", 64, 3.0)
    with pytest.raises(CodecError, match="range"):
        codec.encode(torch.full((2, 64), 1e4))  # norm 8e4 overflows the float16 norm
    with pytest.raises(CodecError, match="smallest normal"):
        codec.encode(torch.full((2, 64), 1e-7))  # norm 8e-7 would lose its precision in float16


def test_usable_by_name_in_the_processors_spec_and_saved_files(tmp_path):
    from octopus_diffusers.codecs import PackedTensor
    from octopus_diffusers.processors import KVQuantConfig

    for name in ("triplet_vq", "turboquant_mr"):
        key_codec, value_codec = KVQuantConfig(codec=name, bits=2.5).codecs(64, 1)
        assert key_codec.name == name and key_codec.seed != value_codec.seed
        x = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(0))
        packed = key_codec.encode(x)
        packed.save(tmp_path / f"{name}.safetensors")
        loaded = PackedTensor.load(tmp_path / f"{name}.safetensors")
        assert torch.equal(key_codec.decode(loaded), key_codec.decode(packed))
