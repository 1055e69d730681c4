"""Saved packed tensors: everything needed to decode is recorded, and a damaged or foreign file is a
CodecError naming the path (never a wrong decode, a broadcast field or a crash)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from octopus_diffusers.codecs import PACKED_FORMAT_VERSION, CodecError, PackedTensor, get_codec
from octopus_diffusers.codecs.base import _checksum


def _codec(**kw):
    return get_codec("octopus", 16, kw.pop("bits", 2), seed=kw.pop("seed", 5), **kw)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, PackedTensor, torch.Tensor]:
    x = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(0))
    packed = _codec().encode(x)
    path = tmp_path / "k.safetensors"
    packed.save(path)
    return path, packed, x


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k).clone() for k in f.keys()}


def _rewrite(path: Path, header: dict[str, str], tensors: dict[str, torch.Tensor], rehash: bool = True) -> None:
    """Write an edited file; with ``rehash`` its checksum is made consistent, so the checks behind the
    checksum are what the test exercises."""
    header = dict(header)
    if rehash:
        header["sha256"] = _checksum(header, tensors)
    save_file(tensors, str(path), metadata=header)


def _raises(path: Path, match: str):
    return pytest.raises(CodecError, match=rf"{path}.*{match}|{match}.*{path}")


def test_header_records_every_codec_parameter_and_decodes_with_a_fresh_codec(saved) -> None:
    path, packed, x = saved
    header, _ = _read(path)
    assert header["format_version"] == str(PACKED_FORMAT_VERSION) == "2"
    meta = json.loads(header["meta"])
    assert meta == {"head_dim": 16, "bits": 2, "seed": 5,
                    "options": {"allocation": [3, 3, 1], "joint_rounding": True, "qjl_residual": False,
                                "norm_dtype": "float16"}}
    assert len(header["sha256"]) == 64
    loaded = PackedTensor.load(path)
    assert torch.equal(_codec().decode(loaded), _codec().decode(packed))


@pytest.mark.parametrize("other,match", [
    (dict(seed=6), "seed: packed 5, this codec 6"),
    (dict(bits=3), "bits: packed 2"),
    (dict(joint_rounding=False), "joint_rounding"),
    (dict(norm_dtype=torch.float32), "norm_dtype"),
])
def test_decode_refuses_another_configuration(saved, other, match) -> None:
    """Decoding with another seed used to 'succeed' with relative error ~1.9."""
    path, _, _ = saved
    with pytest.raises(CodecError, match=match):
        _codec(**other).decode(PackedTensor.load(path))


def test_decode_refuses_another_head_dim(saved) -> None:
    path, _, _ = saved
    with pytest.raises(CodecError, match="head_dim"):
        get_codec("octopus", 32, 2, seed=5).decode(PackedTensor.load(path))


def test_loaded_tensors_do_not_point_into_the_file(saved) -> None:
    """Rewriting or truncating the file after load changes nothing (no mmap: no SIGBUS either)."""
    path, packed, _ = saved
    loaded = PackedTensor.load(path)
    before = _codec().decode(loaded).clone()
    _codec().encode(torch.randn(3, 4, 16)).save(path)  # rewrite in place
    assert torch.equal(_codec().decode(loaded), before)
    with open(path, "r+b") as f:
        f.truncate(10)
    assert torch.equal(_codec().decode(loaded), before)
    loaded.fields["codes"].bitwise_not_()  # writable memory of its own
    assert not torch.equal(loaded.fields["codes"], packed.fields["codes"])


@pytest.mark.parametrize("keep", [0, 5, 8, 20, -1, -9])
def test_truncated_file_is_refused(saved, keep) -> None:
    path, _, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    with _raises(path, "truncated|not a safetensors|checksum"):
        PackedTensor.load(path)


def test_directory_missing_file_and_non_safetensors_are_refused(tmp_path: Path) -> None:
    with _raises(tmp_path, "directory"):
        PackedTensor.load(tmp_path)
    with _raises(tmp_path / "nope.safetensors", "cannot read"):
        PackedTensor.load(tmp_path / "nope.safetensors")
    text = tmp_path / "notes.txt"
    text.write_text("these are not tensors, just a long enough line of text\n")
    with _raises(text, "truncated or not a safetensors|not a safetensors"):
        PackedTensor.load(text)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes((12).to_bytes(8, "little") + b"not json!!!!")
    with _raises(junk, "not JSON"):
        PackedTensor.load(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))  # a safetensors file, but not a packed tensor
    with _raises(plain, "no header metadata"):
        PackedTensor.load(plain)


def test_checksum_mismatch_is_refused(saved) -> None:
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of the last field
    path.write_bytes(bytes(data))
    with _raises(path, "checksum mismatch"):
        PackedTensor.load(path)
    header, tensors = _read(path)
    _rewrite(path, {**header, "meta": header["meta"].replace('"seed": 5', '"seed": 6')}, tensors, rehash=False)
    with _raises(path, "checksum mismatch"):  # the header is covered too
        PackedTensor.load(path)


@pytest.mark.parametrize("version,match", [("1", "version '1'.*seed"), ("999", "version '999'")])
def test_other_format_versions_are_refused(saved, version, match) -> None:
    path, _, _ = saved
    header, tensors = _read(path)
    _rewrite(path, {**header, "format_version": version}, tensors)
    with _raises(path, match):
        PackedTensor.load(path)


@pytest.mark.parametrize("key", ["codec", "shape", "dtype", "meta", "sha256"])
def test_missing_header_key_is_refused(saved, key) -> None:
    path, _, _ = saved
    header, tensors = _read(path)
    del header[key]
    save_file(tensors, str(path), metadata=header)
    with _raises(path, f"missing key.*{key}"):
        PackedTensor.load(path)


def test_missing_codec_parameter_is_refused(saved) -> None:
    path, _, _ = saved
    header, tensors = _read(path)
    meta = json.loads(header["meta"])
    del meta["seed"]
    _rewrite(path, {**header, "meta": json.dumps(meta)}, tensors)
    with _raises(path, "codec parameters"):
        PackedTensor.load(path)


def test_missing_field_is_refused(saved) -> None:
    path, _, _ = saved
    header, tensors = _read(path)
    del tensors["norms"]
    _rewrite(path, header, tensors)
    with _raises(path, "fields"):
        PackedTensor.load(path)


@pytest.mark.parametrize("norms,match", [
    (lambda n: n.reshape(-1)[:1].clone(), "field 'norms'.*expected torch.float16 \\(3, 4\\)"),  # broadcasts
    (lambda n: n.reshape(-1)[:0].clone(), "field 'norms'.*\\(empty\\)"),
    (lambda n: n.float(), "field 'norms' is torch.float32"),
])
def test_fields_inconsistent_with_the_header_are_refused(saved, norms, match) -> None:
    """A one-entry ``norms`` field used to broadcast over every vector on decode."""
    path, _, _ = saved
    header, tensors = _read(path)
    tensors["norms"] = norms(tensors["norms"])
    _rewrite(path, header, tensors)
    with _raises(path, match):
        PackedTensor.load(path)


@pytest.mark.parametrize("edit,match", [
    ({"shape": "[2, 4, 16]"}, "field 'codes'"),
    ({"shape": "[3, 4, 32]"}, "head_dim"),
    ({"shape": "[-3, 16]"}, "not a list of sizes"),
    ({"shape": "nope"}, "not JSON"),
    ({"dtype": "int8"}, "dtype 'int8'"),
    ({"codec": "no_such_codec"}, "unknown codec"),
    ({"codec": "turboquant"}, "cannot rebuild|allocation"),
])
def test_header_inconsistent_with_the_fields_is_refused(saved, edit, match) -> None:
    path, _, _ = saved
    header, tensors = _read(path)
    _rewrite(path, {**header, **edit}, tensors)
    with _raises(path, match):
        PackedTensor.load(path)


def test_empty_packed_tensor_round_trips(tmp_path: Path) -> None:
    codec = _codec()
    packed = codec.encode(torch.zeros(0, 16))
    packed.save(tmp_path / "e.safetensors")
    loaded = PackedTensor.load(tmp_path / "e.safetensors")
    assert loaded.shape == (0, 16) and codec.decode(loaded).shape == (0, 16)


def test_save_refuses_a_directory_or_unwritable_target_and_leaves_no_partial_file(saved, tmp_path: Path) -> None:
    _, packed, _ = saved
    with _raises(tmp_path, "directory"):
        packed.save(tmp_path)
    missing = tmp_path / "no" / "such" / "dir" / "k.safetensors"
    with _raises(missing, "cannot write"):
        packed.save(missing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.safetensors"]


def test_load_onto_an_unknown_device_is_a_codec_error(saved) -> None:
    path, _, _ = saved
    with _raises(path, "device 'nonsense'"):
        PackedTensor.load(path, device="nonsense")
