"""Properties every registered codec must have, checked generically over the registry.

Each codec's valid rates, options and limits live in the one table ``CASES`` below; every other
test here is written against the :class:`~octopus_diffusers.codecs.Codec` interface only. A codec
that is registered but whose module does not exist yet has its rows skipped (with the reason shown)
and fails ``test_every_registered_codec_is_implemented``; a registered codec without a row in
``CASES`` fails ``test_every_registered_codec_has_a_case``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from helpers import assert_close, errors
from helpers import sample as gaussian
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from octopus_diffusers.codecs import (
    Codec, CodecError, PackedTensor, available_codecs, codec_class, get_codec)


@dataclass(frozen=True)
class Case:
    """How to exercise one codec (``options`` apply to every construction)."""

    bits: float | None  # the rate the single-rate tests use (None: the codec's default)
    bits_ladder: tuple[float, ...]  # increasing rates whose relative error must strictly fall
    bad_bits: tuple[float, ...]  # rates the constructor must refuse
    head_dims: tuple[int, ...] = (8, 16, 64)  # accepted head_dims (hypothesis draws from these)
    bad_head_dims: tuple[int, ...] = (0,)  # head_dims the constructor must refuse
    options: dict[str, Any] = field(default_factory=dict)
    seeded: bool = True  # has a seeded rotation / projection: another seed must change the codes
    tokens_per_group: int = 1  # token count must be a multiple of this for the exact rate
    max_rel_error: float = 0.5  # bound on ||x - x^||^2 / ||x||^2 at ``bits`` (test data: ``sample``); the
    # tests check its square root, the relative RMS error of helpers.assert_close
    scales: tuple[float, ...] = (1e-3, 1.0, 30.0)  # input magnitudes over which that bound holds
    # input dtypes for which 8 * packed.nbytes / numel must equal bits_per_scalar
    rate_dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)


# One row per registered name (a codec may appear again under a variant id with other options).
CASES: dict[str, tuple[str, Case]] = {
    # "none" stores the input as is: bits=None takes any dtype (its rate is the input's width).
    "none": ("none", Case(bits=None, bits_ladder=(None,), bad_bits=(8, 4.5), seeded=False, max_rel_error=0.0)),
    # A plain e4m3 cast has a fixed range (subnormals below 2^-6, refusal above 448): no scale invariance.
    "fp8": ("fp8", Case(bits=8, bits_ladder=(8,), bad_bits=(4, 16), seeded=False, max_rel_error=2e-3,
                        scales=(1.0,))),
    "fp8-vector": ("fp8", Case(bits=8, bits_ladder=(8,), bad_bits=(7,), options={"scale": "vector"},
                               seeded=False, max_rel_error=2e-3)),
    "uniform": ("uniform", Case(bits=4, bits_ladder=(1, 2, 3, 4, 8), bad_bits=(0, 9, 2.5), seeded=False,
                                bad_head_dims=(0, 2000), max_rel_error=0.05)),
    "uniform-channel": ("uniform", Case(bits=2, bits_ladder=(1, 2, 4, 8), bad_bits=(0, 9), seeded=False,
                                        options={"axis": "channel", "group_size": 4},
                                        tokens_per_group=4, max_rel_error=0.1)),
    # PolarQuant's nominal 4 is the paper's 3.875-bit setting (see polarquant.py for the rule).
    "polarquant": ("polarquant", Case(bits=4, bits_ladder=(1, 2, 3, 4, 5, 6), bad_bits=(0, 9, 3.875),
                                      head_dims=(16, 32, 64), bad_head_dims=(0, 8, 12, 24),
                                      max_rel_error=0.1)),
    # TurboQuant needs a shipped codebook for its head_dim; fractional rates give channels one bit more.
    "turboquant": ("turboquant", Case(bits=3, bits_ladder=(1, 1.5, 2, 2.5, 3, 4), bad_bits=(0, -1, 9, 3.3),
                                      bad_head_dims=(0, 3, 7, 2000), max_rel_error=0.05)),
    # The QJL residual trades squared error for unbiased inner products: about (pi/2) x the (b-1)-bit mse error.
    "turboquant_prod": ("turboquant_prod", Case(bits=3, bits_ladder=(2, 3, 4), bad_bits=(0, 1, 10),
                                                bad_head_dims=(0, 7, 2000), max_rel_error=0.25)),
    # OCTOPUS needs a shipped codebook for its head_dim (3, 7 and 2000 are not shipped).
    "octopus": ("octopus", Case(bits=3, bits_ladder=(1, 2, 3, 4), bad_bits=(0, 8, 2.5),
                                bad_head_dims=(0, 3, 7, 2000), max_rel_error=0.05)),
    "octopus-nearest": ("octopus", Case(bits=3, bits_ladder=(2, 3, 4), bad_bits=(0, 8),
                                        options={"joint_rounding": False}, max_rel_error=0.05)),
    "octopus-qjl": ("octopus", Case(bits=3, bits_ladder=(2, 3, 4), bad_bits=(0, 8),
                                    options={"qjl_residual": True}, max_rel_error=0.1)),
    # bits is the target true rate (norm included); shipped codebooks for head_dim 32, 64 and 128. At d=32
    # a 3-bit vector keeps 2.5 bits per coordinate after its norm: single vectors reach ~0.1 error.
    "triplet_vq": ("triplet_vq", Case(bits=3, bits_ladder=(1.5, 2, 3, 4, 5), bad_bits=(0, 0.5, 8),
                                      head_dims=(32, 64, 128), bad_head_dims=(0, 8, 48), max_rel_error=0.1)),
    "turboquant_mr": ("turboquant_mr", Case(bits=3, bits_ladder=(1.5, 2, 2.5, 3, 4, 6), bad_bits=(0, 0.5, 8),
                                            head_dims=(32, 64, 128), bad_head_dims=(0, 16, 48),
                                            max_rel_error=0.1)),
    # QJL decodes to its unbiased inner-product estimator, whose squared error is about (pi/2) / bits.
    "qjl": ("qjl", Case(bits=4, bits_ladder=(1, 2, 4), bad_bits=(0, -1, 0.3), bad_head_dims=(0, 2000),
                        max_rel_error=0.6)),
}


def _implemented(name: str) -> bool:
    """False only while the codec's own module is not written (or registered) yet; any other import
    error surfaces."""
    if name not in available_codecs():
        return False
    try:
        codec_class(name)
    except ModuleNotFoundError as error:
        if (error.name or "").startswith("octopus_diffusers.codecs."):
            return False
        raise
    return True


def _params() -> list[Any]:
    """One pytest param per table row; rows of codecs whose module is not written yet are skipped."""
    out = []
    for case_id, (name, case) in CASES.items():
        marks = [] if _implemented(name) else [pytest.mark.skip(reason=f"codec {name!r} not implemented yet")]
        out.append(pytest.param(name, case, id=case_id, marks=marks))
    return out


PARAMS = _params()


def make(name: str, case: Case, bits: float | None = None, head_dim: int = 64, seed: int = 0) -> Codec:
    return get_codec(name, head_dim, case.bits if bits is None else bits, seed=seed, **case.options)


def rate(codec: Codec, dtype: torch.dtype) -> float:
    """The rate the codec promises for ``dtype`` input (``none`` without bits stores the input's width)."""
    return 8.0 * dtype.itemsize if math.isnan(codec.bits_per_scalar) else codec.bits_per_scalar


def sample(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """Gaussian test data with a fixed seed (a few larger channels, as real keys have)."""
    x = gaussian(*shape, seed=seed)
    x[..., :2] *= 4.0
    return x.to(dtype)


def test_every_registered_codec_has_a_case() -> None:
    covered = {name for name, _ in CASES.values()}
    assert set(available_codecs()) <= covered, f"add rows to CASES for {set(available_codecs()) - covered}"


def test_every_registered_codec_is_implemented() -> None:
    """The skips above are for work in progress only: a registered name without a module fails here."""
    missing = [name for name in available_codecs() if not _implemented(name)]
    assert not missing, f"registered but not implemented: {missing}"


@pytest.mark.parametrize("name,case", PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lead", [(4,), (2, 3, 4)])
def test_roundtrip_keeps_shape_dtype_device(name: str, case: Case, dtype: torch.dtype, lead: tuple) -> None:
    codec = make(name, case)
    x = sample((*lead, 64), dtype)
    original = x.clone()
    packed = codec.encode(x)
    assert torch.equal(x, original), "encode must not modify its input"
    assert isinstance(packed, PackedTensor)
    y = codec.decode(packed)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert bool(torch.isfinite(y).all())
    assert_close(name, x, y, rel_rms=math.sqrt(case.max_rel_error + 1e-2))  # + fp16/bf16 input rounding


@pytest.mark.parametrize("name,case", PARAMS)
def test_single_vector_and_empty_batch(name: str, case: Case) -> None:
    codec = make(name, case)
    lead = (case.tokens_per_group,) if case.tokens_per_group > 1 else ()
    x = sample((*lead, 64))
    assert codec.roundtrip(x).shape == x.shape
    empty = torch.zeros(0, *lead, 64) if lead else torch.zeros(0, 64)
    assert codec.roundtrip(empty).shape == empty.shape


@pytest.mark.parametrize("name,case", PARAMS)
def test_non_contiguous_input_encodes_like_its_contiguous_copy(name: str, case: Case) -> None:
    codec = make(name, case)
    x = sample((4, 64, 8)).transpose(-1, -2)  # (4, 8, 64) view with strides of the transpose
    assert not x.is_contiguous()
    packed, reference = codec.encode(x), codec.encode(x.contiguous())
    for key in reference.fields:
        assert torch.equal(packed.fields[key], reference.fields[key]), key


@pytest.mark.parametrize("name,case", PARAMS)
def test_zero_vectors_decode_to_zero(name: str, case: Case) -> None:
    codec = make(name, case)
    x = torch.zeros(2, 4, 64)
    assert torch.equal(codec.roundtrip(x), x)


@pytest.mark.parametrize("name,case", PARAMS)
def test_same_seed_same_bytes_other_seed_other_codes(name: str, case: Case) -> None:
    x = sample((3, 8, 64))
    first = make(name, case, seed=7).encode(x)
    again = make(name, case, seed=7).encode(x)
    assert first.fields.keys() == again.fields.keys()
    for key in first.fields:
        assert torch.equal(first.fields[key], again.fields[key]), key
    other = make(name, case, seed=8).encode(x)
    differs = any(not torch.equal(first.fields[k], other.fields[k]) for k in first.fields)
    assert differs == case.seeded


@pytest.mark.parametrize("name,case", PARAMS)
def test_measured_bytes_equal_bits_per_scalar(name: str, case: Case) -> None:
    for bits in case.bits_ladder:
        for head_dim in case.head_dims:
            codec = make(name, case, bits=bits, head_dim=head_dim)
            x = sample((2, 3 * case.tokens_per_group, head_dim), case.rate_dtypes[0])
            packed = codec.encode(x)
            measured = 8 * packed.nbytes / x.numel()
            assert measured == pytest.approx(rate(codec, x.dtype), rel=1e-12), (bits, head_dim)
            assert packed.bits_per_scalar == pytest.approx(rate(codec, x.dtype), rel=1e-12)


@pytest.mark.parametrize("name,case", PARAMS)
def test_relative_error_falls_as_bits_rise(name: str, case: Case) -> None:
    if len(case.bits_ladder) < 2:
        pytest.skip(f"{name} has a single rate")
    x = sample((64, 64), seed=3)
    rel = [errors(x, make(name, case, bits=b).roundtrip(x))[0] for b in case.bits_ladder]
    assert all(a > b for a, b in zip(rel, rel[1:])), dict(zip(case.bits_ladder, rel))
    rates = [make(name, case, bits=b).bits_per_scalar for b in case.bits_ladder]
    assert rates == sorted(rates)


@pytest.mark.parametrize("name,case", PARAMS)
def test_save_load_roundtrip(name: str, case: Case, tmp_path) -> None:
    codec = make(name, case)
    x = sample((2, 4, 64), torch.bfloat16)
    packed = codec.encode(x)
    path = tmp_path / "packed.safetensors"
    packed.save(path)
    loaded = PackedTensor.load(path)
    assert (loaded.codec, loaded.shape, loaded.dtype, loaded.meta) == (packed.codec, packed.shape,
                                                                       packed.dtype, packed.meta)
    assert loaded.fields.keys() == packed.fields.keys()
    for key in packed.fields:
        assert loaded.fields[key].dtype == packed.fields[key].dtype
        assert torch.equal(loaded.fields[key], packed.fields[key]), key
    assert loaded.nbytes == packed.nbytes
    fresh = make(name, case)  # a new instance: decoding needs nothing but the file and the config
    assert torch.equal(fresh.decode(loaded), codec.decode(packed))


@pytest.mark.parametrize("name,case", PARAMS)
def test_load_refuses_another_format_version(name: str, case: Case, tmp_path) -> None:
    path = tmp_path / "packed.safetensors"
    make(name, case).encode(sample((2, 4, 64))).save(path)
    with safe_open(str(path), framework="pt") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={**header, "format_version": "999"})
    with pytest.raises(CodecError, match="format version"):
        PackedTensor.load(path)


@pytest.mark.parametrize("name", ["octopus", "turboquant", "polarquant", "qjl"])
def test_a_norm_beyond_float16_range_is_an_error_not_silent_inf(name: str) -> None:
    """Finite fp16 input whose vector norm exceeds 65504 would decode to Inf through fp16 norms."""
    codec = get_codec(name, 64, 4 if name == "polarquant" else 3)
    x = torch.full((2, 64), 30000.0, dtype=torch.float16)
    with pytest.raises(CodecError, match="exceed.* (torch.)?float16"):
        codec.encode(x)
    codec.encode(x / 16)  # norm 15,000: fine


@pytest.mark.parametrize("name", ["octopus", "turboquant", "turboquant_prod", "polarquant", "qjl"])
def test_a_norm_below_float16_normal_range_is_an_error_not_a_silent_zero_vector(name: str) -> None:
    """Norms <= ~3e-8 flush to 0 in float16 (a zero vector on decode) and below 6.1e-5 lose precision."""
    codec = get_codec(name, 64, 4 if name == "polarquant" else 3)
    x = sample((2, 64))
    x = x / x.norm(dim=-1, keepdim=True)
    for scale in (1e-9, 1e-6):
        with pytest.raises(CodecError, match="smallest normal"):
            codec.encode(x * scale)
    codec.encode(x * 1e-3)  # norm 1e-3: fine
    codec.encode(torch.zeros(2, 64))  # exact zeros are not tiny norms
    if name != "polarquant":  # the remedy the message names works
        wide = get_codec(name, 64, 3, norm_dtype=torch.float32)
        tiny, unit = errors(x * 1e-9, wide.roundtrip(x * 1e-9))[0], errors(x, wide.roundtrip(x))[0]
        assert tiny == pytest.approx(unit, rel=5e-4)


@pytest.mark.parametrize("name,case", PARAMS)
def test_bad_inputs_raise_clear_errors(name: str, case: Case) -> None:
    codec = make(name, case)
    x = sample((2, 4, 64))
    for bad_value in (float("nan"), float("inf"), -float("inf")):
        bad = x.clone()
        bad[1, 2, 3] = bad_value
        with pytest.raises(CodecError, match="NaN or Inf"):
            codec.encode(bad)
    with pytest.raises(TypeError, match="dtype"):
        codec.encode(x.to(torch.int32))
    with pytest.raises(TypeError, match="dtype"):
        codec.encode(x.to(torch.float64))
    with pytest.raises(TypeError):
        codec.encode(x.numpy())
    with pytest.raises(CodecError, match="head_dim|64"):
        codec.encode(sample((2, 4, 32)))
    with pytest.raises(CodecError, match="codec"):
        codec.decode(PackedTensor("not-" + name, (2, 64), torch.float32, {"v": torch.zeros(1)}))


@pytest.mark.parametrize("name,case", PARAMS)
def test_bad_configuration_raises_at_construction(name: str, case: Case) -> None:
    for bits in case.bad_bits:
        with pytest.raises(CodecError, match="bits"):
            make(name, case, bits=bits)
    for head_dim in case.bad_head_dims:
        with pytest.raises(CodecError, match="head_dim"):
            make(name, case, head_dim=head_dim)
    for bits in (float("nan"), float("inf"), "4", True):
        with pytest.raises(CodecError, match="bits"):
            make(name, case, bits=bits)
    with pytest.raises(TypeError):
        get_codec(name, 64, case.bits, no_such_option=1, **case.options)


@pytest.mark.gpu
@pytest.mark.parametrize("name,case", PARAMS)
def test_cuda_matches_cpu(name: str, case: Case) -> None:
    codec = make(name, case)
    x = sample((2, 8, 64), torch.float16)
    y_cpu = codec.roundtrip(x)
    packed = codec.encode(x.cuda())
    assert packed.device.type == "cuda"
    y_gpu = codec.decode(packed)
    assert y_gpu.device.type == "cuda" and y_gpu.dtype == x.dtype
    assert errors(x, y_gpu.cpu())[0] == pytest.approx(errors(x, y_cpu)[0], rel=0.025, abs=1e-3)
    y_moved = codec.decode(codec.encode(x).to("cuda"))
    assert y_moved.device.type == "cuda"


@st.composite
def _inputs(draw: st.DrawFn, case: Case) -> tuple[int, torch.Tensor]:
    head_dim = draw(st.sampled_from(case.head_dims))
    lead = draw(st.lists(st.integers(1, 3), min_size=0, max_size=3))
    if case.tokens_per_group > 1:  # channel-grouped codecs need a token axis
        lead.append(draw(st.integers(1, 2 * case.tokens_per_group + 1)))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    scale = draw(st.sampled_from(case.scales))
    return head_dim, (sample((*lead, head_dim), seed=draw(st.integers(0, 2**16))) * scale).to(dtype)


@pytest.mark.parametrize("name,case", PARAMS)
def test_property_roundtrip_over_shapes_and_dtypes(name: str, case: Case) -> None:
    @settings(max_examples=12, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=_inputs(case))
    def check(data: tuple[int, torch.Tensor]) -> None:
        head_dim, x = data
        codec = make(name, case, head_dim=head_dim)
        packed = codec.encode(x)
        y = codec.decode(packed)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert bool(torch.isfinite(y).all())
        whole_groups = case.tokens_per_group == 1 or x.shape[-2] % case.tokens_per_group == 0
        if x.numel() and whole_groups and x.dtype in case.rate_dtypes:
            assert 8 * packed.nbytes / x.numel() == pytest.approx(rate(codec, x.dtype), rel=1e-12)
        if x.numel():
            # Scale invariance up to float16 side information: the error bound holds at every scale.
            assert_close(name, x, y, rel_rms=math.sqrt(max(case.max_rel_error, 1e-3) * 1.5 + 1e-2))
        assert math.isfinite(rate(codec, x.dtype))

    check()


def _shapes(case: Case) -> list[tuple[int, ...]]:
    t = case.tokens_per_group
    return [(3, 64), (2, 5, 64), (2, 3, t + 1, 64), (0, max(t, 1), 64)]


@pytest.mark.parametrize("name,case", PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_nbytes_and_field_layout_without_data(name: str, case: Case, dtype: torch.dtype) -> None:
    """Cache sizing on meta/empty tensors: the data-free count equals what encode really stores."""
    codec = make(name, case)
    for shape in _shapes(case):
        packed = codec.encode(sample(shape, dtype))
        layout = codec.field_layout(shape, dtype)
        assert layout == {k: (tuple(v.shape), v.dtype) for k, v in packed.fields.items()}, shape
        assert codec.packed_nbytes(shape, dtype) == packed.nbytes, shape
        assert codec.packed_nbytes(torch.empty(shape, device="meta").shape, dtype) == packed.nbytes
    with pytest.raises(CodecError, match="meta"):
        codec.encode(torch.empty(2, 64, device="meta", dtype=dtype))
    with pytest.raises(CodecError, match="64"):
        codec.packed_nbytes((2, 32), dtype)


@pytest.mark.parametrize("name,case", PARAMS)
def test_packed_meta_records_the_configuration_and_decode_checks_it(name: str, case: Case) -> None:
    codec = make(name, case, seed=3)
    packed = codec.encode(sample((2, case.tokens_per_group, 64)))
    assert {k: packed.meta[k] for k in ("head_dim", "bits", "seed")} == {"head_dim": 64, "bits": case.bits,
                                                                        "seed": 3}
    assert json.loads(json.dumps(packed.meta)) == packed.meta  # JSON-safe: it goes into file headers
    rebuilt = type(codec).from_meta(packed.meta)
    assert rebuilt.packed_meta() == codec.packed_meta()
    assert torch.equal(rebuilt.decode(packed), codec.decode(packed))
    with pytest.raises(CodecError, match="seed: packed 3, this codec 4"):
        make(name, case, seed=4).decode(packed)
    for key, value in packed.fields.items():  # a one-entry field must not broadcast
        damaged = PackedTensor(packed.codec, packed.shape, packed.dtype,
                               {**packed.fields, key: value.reshape(-1)[:1].clone()}, packed.meta)
        with pytest.raises(CodecError, match=f"field '{key}'"):
            codec.decode(damaged)


@pytest.mark.parametrize("name,case", PARAMS)
def test_encode_and_decode_never_alias_the_callers_tensors(name: str, case: Case) -> None:
    codec = make(name, case)
    x = sample((2, case.tokens_per_group, 64))
    packed = codec.encode(x)
    y = codec.decode(packed)
    y_before = y.clone()
    x.add_(1.0)  # the caller changes its input and its output: the packed data must not follow
    y.add_(1.0)
    assert torch.equal(codec.decode(packed), y_before)
    ptrs = {t.untyped_storage().data_ptr() for t in packed.fields.values()}
    assert x.untyped_storage().data_ptr() not in ptrs and y.untyped_storage().data_ptr() not in ptrs


@pytest.mark.parametrize("name,case", PARAMS)
def test_construction_parameters_are_type_checked(name: str, case: Case) -> None:
    for seed in (1.9, 1.0, True, "1", None):
        with pytest.raises(TypeError, match=f"seed must be an int, got {seed!r}"):
            make(name, case, seed=seed)
    with pytest.raises(CodecError, match="seed must be in 0"):
        make(name, case, seed=-1)
    for head_dim in (64.0, "64", None):
        with pytest.raises(TypeError, match="head_dim must be an int"):
            get_codec(name, head_dim, case.bits, **case.options)
    with pytest.raises(CodecError, match="head_dim -4"):
        get_codec(name, -4, case.bits, **case.options)
    assert make(name, case, seed=torch.tensor(3).numpy().item()).seed == 3
    assert isinstance(make(name, case).label(), str)
