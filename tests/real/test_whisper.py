"""Whisper-base from the packaged CTranslate2 file: strict converter, bad files, quantized transcripts."""

from __future__ import annotations

import struct

import pytest
import torch

from octopus_diffusers.integrations.whisper_ct2 import CT2FormatError, convert_whisper, read_ct2



def require(*assets: str) -> None:
    from octopus_diffusers.eval.real import models

    missing = models.available(*assets)
    if missing:
        pytest.skip(missing)


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def ct2_bytes(version: int = 6, spec: str = "WhisperSpec", variables=(("w", [2, 3], 4),),
              aliases=(("a", "w"),)) -> bytes:
    """A small file in CTranslate2's model.bin layout (dtype id 4: float16)."""
    out = struct.pack("<I", version) + _string(spec) + struct.pack("<I", 3) + struct.pack("<I", len(variables))
    for name, dims, dtype_id in variables:
        n = 1
        for d in dims:
            n *= d
        data = torch.arange(n, dtype=torch.float16).numpy().tobytes()
        out += _string(name) + struct.pack("<B", len(dims)) + b"".join(struct.pack("<I", d) for d in dims)
        out += struct.pack("<B", dtype_id) + struct.pack("<I", len(data)) + data
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases:
        out += _string(alias) + _string(target)
    return out


def test_reader_parses_the_layout(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(ct2_bytes())
    model = read_ct2(path)
    assert (model.version, model.spec, model.revision) == (6, "WhisperSpec", 3)
    assert model.variables["w"].dtype == torch.float16 and model.variables["w"].shape == (2, 3)
    assert torch.equal(model.variables["w"].flatten(), torch.arange(6, dtype=torch.float16))
    assert model.aliases == {"a": "w"}
    # parts are concatenated in order
    data = path.read_bytes()
    (tmp_path / "p1").write_bytes(data[:17])
    (tmp_path / "p2").write_bytes(data[17:])
    assert read_ct2([tmp_path / "p1", tmp_path / "p2"]).aliases == {"a": "w"}


@pytest.mark.parametrize("cut", [3, 20, 40, -5])
def test_truncated_file_is_refused(tmp_path, cut):
    path = tmp_path / "model.bin"
    path.write_bytes(ct2_bytes()[:cut])
    with pytest.raises(CT2FormatError, match="truncated"):
        read_ct2(path)


def test_wrong_version_spec_and_extra_bytes_are_refused(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(ct2_bytes(version=5))
    with pytest.raises(CT2FormatError, match="binary version 5"):
        read_ct2(path)
    path.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 4)
    with pytest.raises(CT2FormatError, match="binary version"):
        read_ct2(path)
    path.write_bytes(ct2_bytes() + b"\0\0")
    with pytest.raises(CT2FormatError, match="unexpected bytes"):
        read_ct2(path)
    path.write_bytes(ct2_bytes(variables=(("w", [2, 3], 9),)))
    with pytest.raises(CT2FormatError, match="unknown dtype id 9"):
        read_ct2(path)
    path.write_bytes(ct2_bytes(spec="TransformerSpec"))
    with pytest.raises(CT2FormatError, match="not a Whisper model"):
        convert_whisper(read_ct2(path))
    with pytest.raises(CT2FormatError, match="no such file"):
        read_ct2(tmp_path / "missing.bin")


def test_a_part_missing_is_refused(whisper_parts):
    with pytest.raises(CT2FormatError, match="truncated"):
        read_ct2(whisper_parts[:1])
    with pytest.raises(CT2FormatError):
        read_ct2(list(reversed(whisper_parts)))


@pytest.fixture(scope="module")
def ct2_real(whisper_parts):
    return read_ct2(whisper_parts)


def test_real_file_layout(ct2_real):
    assert (ct2_real.version, ct2_real.spec) == (6, "WhisperSpec")
    assert len(ct2_real.variables) == 212
    assert ct2_real.variables["decoder/embeddings/weight"].shape == (51865, 512)


def _edited(ct2, **changes):
    from dataclasses import replace

    variables = dict(ct2.variables)
    for key, value in changes.items():
        key = key.replace("__", "/")
        if value is None:
            variables.pop(key)
        else:
            variables[key] = value
    return replace(ct2, variables=variables)


def test_strict_load_refuses_missing_extra_misshapen_and_biased_k(ct2_real):
    with pytest.raises(CT2FormatError, match="encoder/layer_3/ffn/linear_0/bias missing"):
        convert_whisper(_edited(ct2_real, encoder__layer_3__ffn__linear_0__bias=None))
    with pytest.raises(CT2FormatError, match="not consumed"):
        convert_whisper(_edited(ct2_real, encoder__extra__weight=torch.zeros(3)))
    with pytest.raises(CT2FormatError, match=r"fc2.weight: shape \(512, 2047\)"):
        convert_whisper(_edited(ct2_real, decoder__layer_1__ffn__linear_1__weight=torch.zeros(512, 2047)))
    bias = ct2_real.variables["encoder/layer_0/self_attention/linear_0/bias"].clone()
    bias[600] = 1
    with pytest.raises(CT2FormatError, match="key-projection bias is non-zero"):
        convert_whisper(_edited(ct2_real, encoder__layer_0__self_attention__linear_0__bias=bias))


@pytest.fixture(scope="module")
def asr(whisper_model):
    from octopus_diffusers.eval.real import models, whisper_asr

    require("beckett_wav")
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    tokenizer = WhisperTokenizerFast(tokenizer_file=str(models.asset_path("whisper_tokenizer")))
    import json

    ct2_config = json.loads(models.asset_path("whisper_ct2_config").read_text())
    clip = next(c for c in models.speech_clips() if c.name == "beckett")
    audio = models.load_audio(clip.path)[: 16000 * 4]  # the first 4 s: "Ever tried. Ever failed."
    features = WhisperFeatureExtractor()(audio, sampling_rate=16000, return_tensors="pt").input_features
    return whisper_model, tokenizer, features, ct2_config, whisper_asr


def test_every_parameter_filled_and_tied(whisper_model):
    assert not any(p.is_meta for p in whisper_model.parameters())
    assert whisper_model.proj_out.weight.data_ptr() == whisper_model.model.decoder.embed_tokens.weight.data_ptr()
    assert whisper_model.model.encoder.layers[0].self_attn.k_proj.bias is None


@pytest.mark.slow
def test_converted_model_transcribes_and_none_codec_is_exact(asr):
    model, tokenizer, features, ct2_config, whisper_asr = asr
    base = whisper_asr.transcribe(model, tokenizer, features, ct2_config)
    assert whisper_asr.wer(base["text"], "Ever tried. Ever failed. No matter.") == 0.0
    kv = whisper_asr.WhisperKV(model, "none", 32)
    try:
        same = whisper_asr.transcribe(model, tokenizer, features, ct2_config, kv)
    finally:
        kv.remove()
    assert same["tokens"] == base["tokens"]
    assert kv.streams["encoder_self"].numel == 6 * 2 * 1500 * 512  # layers x K/V x frames x d_model
    assert kv.streams["cross"].numel == 6 * 2 * 1500 * 512  # encoded once, not once per step
    quant = whisper_asr.WhisperKV(model, "turboquant", 2)
    try:
        low = whisper_asr.transcribe(model, tokenizer, features, ct2_config, quant)
    finally:
        quant.remove()
    assert quant.streams["cross"].numel == 6 * 2 * 1500 * 512
    assert quant.streams["encoder_self"].bits_per_scalar == pytest.approx(2.25)
    assert low["decoder_self_bits"] == pytest.approx(2.25)
    assert not any(h for h in model.model.encoder.layers[0].self_attn.k_proj._forward_hooks.values())


def test_metrics():
    from octopus_diffusers.eval.real import whisper_asr

    assert whisper_asr.normalize("Hello, World!  It's me.") == "hello world it's me"
    assert whisper_asr.wer("hello world", "Hello, world.") == 0.0
    assert whisper_asr.wer("hello there world", "hello world") == pytest.approx(0.5)
    agree = whisper_asr.token_agreement([1, 2, 9, 4], [1, 2, 3, 4])
    assert agree == {"prefix_agreement": 0.5, "token_error_rate": 0.25}
    with pytest.raises(ValueError, match="empty reference"):
        whisper_asr.wer("x", " ,. ")


def test_stm_reference_is_read_in_time_order():
    from octopus_diffusers.eval.real import models

    require("pyannote_stm")
    text = models.read_stm(models.asset_path("pyannote_stm"))
    assert text.startswith("Hello? Hello? Oh, hello. I didn't know you were there.")


@pytest.mark.slow
def test_cross_attention_capture_reads_the_encoder_frames_and_the_decoder_queries():
    require("whisper_part1", "whisper_part2", "whisper_tokenizer", "pyannote_wav", "pyannote_stm")
    from octopus_diffusers.eval.real.capture import capture_whisper_cross_qkv

    got = capture_whisper_cross_qkv(num_tokens=16)
    assert sorted(got) == sorted(f"layer{i}.{r}" for i in range(6) for r in ("query", "key", "value"))
    assert got["layer0.key"].shape == got["layer5.value"].shape == (8, 1500, 64)  # the 30 s window's frames
    assert got["layer3.query"].shape == (8, 16, 64)
    assert all(torch.isfinite(t).all() for t in got.values())
