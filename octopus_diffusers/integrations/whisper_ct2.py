"""Convert a CTranslate2 Whisper ``model.bin`` into transformers' ``WhisperForConditionalGeneration``.

The binary layout is CTranslate2's public one (``python/ctranslate2/specs/model_spec.py``,
``ModelSpec._serialize``), read here without CTranslate2, little-endian:

    uint32 binary version (6) | string spec name | uint32 spec revision | uint32 variable count
    per variable: string name | uint8 rank | rank x uint32 dims | uint8 dtype id | uint32 byte count | bytes
    uint32 alias count | per alias: string alias | string target

where a string is ``uint16 length (with the NUL) | UTF-8 bytes | NUL`` and dtype ids are float32 0,
int8 1, int16 2, int32 3, float16 4, bfloat16 5.

The load is strict: every variable and alias of the file is consumed, every parameter of the model is
filled, every shape is checked, and the model is returned only once all of that succeeded (a
:class:`CT2FormatError` otherwise, naming the problem -- never a half-loaded model). Fused matrices
are split: self-attention ``linear_0`` holds Q, K, V stacked; cross-attention ``linear_1`` holds K, V.
Whisper's ``k_proj`` has no bias, so the K part of a fused bias must be zero.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CT2FormatError", "CT2Model", "read_ct2", "join_parts", "convert_whisper", "load_whisper_ct2"]

SUPPORTED_VERSIONS = (6,)
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: None}  # 5: bfloat16
#: CTranslate2's ``ActivationType`` value for exact GELU (what Whisper uses).
_GELU = 3


class CT2FormatError(ValueError):
    """The file is not a (complete, supported) CTranslate2 Whisper model, or does not fit the model."""


@dataclass
class CT2Model:
    """The contents of a CTranslate2 ``model.bin``."""

    version: int
    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str]


def join_parts(parts: Sequence[Path], out: Path) -> Path:
    """Write the concatenation of ``parts`` (a ``model.bin`` split for packaging) to ``out``."""
    with open(out, "wb") as f:
        for part in parts:
            f.write(Path(part).read_bytes())
    return Path(out)


class _Reader:
    def __init__(self, data: memoryview, source: str) -> None:
        self.data, self.pos, self.source = data, 0, source

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            raise CT2FormatError(
                f"{self.source}: truncated while reading {what}: needs {n} bytes at offset {self.pos}, "
                f"the file has {len(self.data)} (a missing or cut part?)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("H", f"{what} length")
        if n == 0:
            raise CT2FormatError(f"{self.source}: {what} at offset {self.pos - 2} has length 0 (corrupt file?)")
        raw = bytes(self.take(n, what))
        if raw[-1] != 0:
            raise CT2FormatError(f"{self.source}: {what} at offset {self.pos - n} is not NUL-terminated "
                                 "(not a CTranslate2 model.bin, or corrupt)")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as err:
            raise CT2FormatError(f"{self.source}: {what} is not UTF-8 ({err})") from None


def read_ct2(source: Path | str | Sequence[Path | str]) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (or its parts, concatenated in the order given)."""
    paths = [Path(source)] if isinstance(source, (str, Path)) else [Path(p) for p in source]
    if not paths:
        raise CT2FormatError("no model.bin part given")
    for p in paths:
        if not p.is_file():
            raise CT2FormatError(f"{p}: no such file")
    name = " + ".join(str(p) for p in paths)
    data = b"".join(p.read_bytes() for p in paths)
    r = _Reader(memoryview(data), name)
    version = r.unpack("I", "binary version")
    if version not in SUPPORTED_VERSIONS:
        raise CT2FormatError(f"{name}: CTranslate2 binary version {version}, this reader supports "
                             f"{SUPPORTED_VERSIONS} (not a CTranslate2 model.bin, or another version)")
    spec = r.string("spec name")
    revision = r.unpack("I", "spec revision")
    count = r.unpack("I", "variable count")
    variables: dict[str, torch.Tensor] = {}
    for i in range(count):
        var = r.string(f"name of variable {i}")
        rank = r.unpack("B", f"rank of {var}")
        dims = [r.unpack("I", f"shape of {var}") for _ in range(rank)]
        dtype_id = r.unpack("B", f"dtype of {var}")
        nbytes = r.unpack("I", f"byte count of {var}")
        if dtype_id not in _DTYPES:
            raise CT2FormatError(f"{name}: variable {var} has unknown dtype id {dtype_id}")
        raw = r.take(nbytes, f"data of {var}")
        itemsize = 2 if dtype_id == 5 else np.dtype(_DTYPES[dtype_id]).itemsize
        if nbytes != math.prod(dims) * itemsize:
            raise CT2FormatError(f"{name}: variable {var} of shape {dims} holds {nbytes} bytes, expected "
                                 f"{math.prod(dims) * itemsize}")
        if var in variables:
            raise CT2FormatError(f"{name}: variable {var} appears twice")
        if dtype_id == 5:
            t = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16)
        else:
            t = torch.from_numpy(np.frombuffer(raw, dtype=_DTYPES[dtype_id]).copy())
        variables[var] = t.reshape(dims)
    aliases = {}
    for i in range(r.unpack("I", "alias count")):
        alias = r.string(f"alias {i}")
        aliases[alias] = r.string(f"target of alias {alias}")
    if r.pos != len(data):
        raise CT2FormatError(f"{name}: {len(data) - r.pos} unexpected bytes after the last alias "
                             "(parts joined in the wrong order, or a wrong file appended?)")
    return CT2Model(version, spec, revision, variables, aliases)


# ---- conversion -------------------------------------------------------------------------------------
def _count_layers(variables: dict[str, torch.Tensor], stack: str) -> int:
    idx = {int(m.group(1)) for k in variables if (m := re.match(rf"{stack}/layer_(\d+)/", k))}
    if not idx or idx != set(range(len(idx))):
        raise CT2FormatError(f"{stack} layers missing or not numbered 0..n-1: {sorted(idx)}")
    return len(idx)


def whisper_config(ct2: CT2Model, token_ids: dict[str, int] | None = None):
    """The ``WhisperConfig`` the file's shapes and flags describe."""
    from transformers import WhisperConfig

    v = ct2.variables

    def need(key: str) -> torch.Tensor:
        if key not in v:
            raise CT2FormatError(f"variable {key} missing (not a CTranslate2 Whisper model?)")
        return v[key]

    flags = {"decoder/activation": _GELU, "decoder/alibi": 0, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0,
             "decoder/start_from_zero_embedding": 0}
    for key, expected in flags.items():
        if key in v and int(v[key]) != expected:
            raise CT2FormatError(f"{key} = {int(v[key])}, a Whisper model has {expected}")
    vocab, d_model = need("decoder/embeddings/weight").shape
    ids = token_ids or {}
    multilingual = vocab >= 51865
    eos = ids.get("eos", 50257 if multilingual else 50256)
    return WhisperConfig(
        vocab_size=vocab, d_model=d_model, num_mel_bins=need("encoder/conv1/weight").shape[1],
        encoder_layers=_count_layers(v, "encoder"), decoder_layers=_count_layers(v, "decoder"),
        encoder_attention_heads=int(need("encoder/num_heads")), decoder_attention_heads=int(need("decoder/num_heads")),
        encoder_ffn_dim=need("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=need("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=need("encoder/position_encodings/encodings").shape[0],
        max_target_positions=need("decoder/position_encodings/encodings").shape[0],
        pad_token_id=eos, bos_token_id=eos, eos_token_id=eos,
        decoder_start_token_id=ids.get("sot", eos + 1), tie_word_embeddings=True)


def _mapping(enc_layers: int, dec_layers: int) -> list[tuple[str, list[tuple[str, int, int]] | str]]:
    """(CT2 variable, HF parameter) pairs; a list target splits the variable along dim 0 into
    ``(hf name, start, stop)`` row ranges (in units of d_model: 0-1 Q, 1-2 K, 2-3 V)."""
    pairs: list[tuple[str, Any]] = [
        ("encoder/conv1/weight", "model.encoder.conv1.weight"), ("encoder/conv1/bias", "model.encoder.conv1.bias"),
        ("encoder/conv2/weight", "model.encoder.conv2.weight"), ("encoder/conv2/bias", "model.encoder.conv2.bias"),
        ("encoder/position_encodings/encodings", "model.encoder.embed_positions.weight"),
        ("encoder/layer_norm/gamma", "model.encoder.layer_norm.weight"),
        ("encoder/layer_norm/beta", "model.encoder.layer_norm.bias"),
        ("decoder/embeddings/weight", "model.decoder.embed_tokens.weight"),
        ("decoder/position_encodings/encodings", "model.decoder.embed_positions.weight"),
        ("decoder/layer_norm/gamma", "model.decoder.layer_norm.weight"),
        ("decoder/layer_norm/beta", "model.decoder.layer_norm.bias"),
    ]

    def common(src: str, dst: str) -> None:
        pairs.extend([
            (f"{src}/self_attention/layer_norm/gamma", f"{dst}.self_attn_layer_norm.weight"),
            (f"{src}/self_attention/layer_norm/beta", f"{dst}.self_attn_layer_norm.bias"),
            (f"{src}/self_attention/linear_0/weight", [(f"{dst}.self_attn.q_proj.weight", 0, 1),
                                                       (f"{dst}.self_attn.k_proj.weight", 1, 2),
                                                       (f"{dst}.self_attn.v_proj.weight", 2, 3)]),
            (f"{src}/self_attention/linear_0/bias", [(f"{dst}.self_attn.q_proj.bias", 0, 1), ("", 1, 2),
                                                     (f"{dst}.self_attn.v_proj.bias", 2, 3)]),
            (f"{src}/self_attention/linear_1/weight", f"{dst}.self_attn.out_proj.weight"),
            (f"{src}/self_attention/linear_1/bias", f"{dst}.self_attn.out_proj.bias"),
            (f"{src}/ffn/layer_norm/gamma", f"{dst}.final_layer_norm.weight"),
            (f"{src}/ffn/layer_norm/beta", f"{dst}.final_layer_norm.bias"),
            (f"{src}/ffn/linear_0/weight", f"{dst}.fc1.weight"), (f"{src}/ffn/linear_0/bias", f"{dst}.fc1.bias"),
            (f"{src}/ffn/linear_1/weight", f"{dst}.fc2.weight"), (f"{src}/ffn/linear_1/bias", f"{dst}.fc2.bias"),
        ])

    for i in range(enc_layers):
        common(f"encoder/layer_{i}", f"model.encoder.layers.{i}")
    for i in range(dec_layers):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        common(src, dst)
        pairs.extend([
            (f"{src}/attention/layer_norm/gamma", f"{dst}.encoder_attn_layer_norm.weight"),
            (f"{src}/attention/layer_norm/beta", f"{dst}.encoder_attn_layer_norm.bias"),
            (f"{src}/attention/linear_0/weight", f"{dst}.encoder_attn.q_proj.weight"),
            (f"{src}/attention/linear_0/bias", f"{dst}.encoder_attn.q_proj.bias"),
            (f"{src}/attention/linear_1/weight", [(f"{dst}.encoder_attn.k_proj.weight", 0, 1),
                                                  (f"{dst}.encoder_attn.v_proj.weight", 1, 2)]),
            (f"{src}/attention/linear_1/bias", [("", 0, 1), (f"{dst}.encoder_attn.v_proj.bias", 1, 2)]),
            (f"{src}/attention/linear_2/weight", f"{dst}.encoder_attn.out_proj.weight"),
            (f"{src}/attention/linear_2/bias", f"{dst}.encoder_attn.out_proj.bias"),
        ])
    return pairs


#: Scalars of the file that configure the model rather than hold weights (checked in whisper_config).
_CONFIG_SCALARS = ("encoder/num_heads", "decoder/num_heads", "decoder/activation", "decoder/alibi",
                   "decoder/pre_norm", "decoder/scale_embeddings", "decoder/start_from_zero_embedding",
                   "decoder/alignment_heads", "decoder/alignment_layer")


def convert_whisper(ct2: CT2Model, dtype: torch.dtype = torch.float32,
                    token_ids: dict[str, int] | None = None):
    """A ``WhisperForConditionalGeneration`` holding the weights of ``ct2`` (strict; see the module doc)."""
    from transformers import WhisperForConditionalGeneration

    if ct2.spec != "WhisperSpec":
        raise CT2FormatError(f"spec {ct2.spec!r} is not a Whisper model (expected 'WhisperSpec')")
    config = whisper_config(ct2, token_ids)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    d = config.d_model
    state: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    for src, dst in _mapping(config.encoder_layers, config.decoder_layers):
        if src not in ct2.variables:
            raise CT2FormatError(f"variable {src} missing from the file (needed for {dst if isinstance(dst, str) else dst[0][0]})")
        t = ct2.variables[src]
        consumed.add(src)
        targets = [(dst, None, None)] if isinstance(dst, str) else dst
        if not isinstance(dst, str) and t.shape[0] != d * max(stop for _, _, stop in dst):
            raise CT2FormatError(f"{src}: fused shape {tuple(t.shape)}, expected {d * max(s for _, _, s in dst)} rows")
        for name, start, stop in targets:
            part = t if start is None else t[start * d:stop * d]
            if not name:  # the K bias of a fused bias: transformers' Whisper k_proj has none
                if bool(part.float().abs().max() > 0):
                    raise CT2FormatError(f"{src}: the key-projection bias is non-zero, but Whisper's k_proj "
                                         "has no bias")
                continue
            if name not in expected:
                raise CT2FormatError(f"{src}: target parameter {name} does not exist in the model")
            if tuple(part.shape) != tuple(expected[name]):
                raise CT2FormatError(f"{src} -> {name}: shape {tuple(part.shape)}, the model expects "
                                     f"{tuple(expected[name])}")
            state[name] = part.to(dtype).contiguous()
    for key in _CONFIG_SCALARS:
        if key in ct2.variables:
            consumed.add(key)
    left = sorted(set(ct2.variables) - consumed)
    if left:
        raise CT2FormatError(f"{len(left)} variable(s) of the file were not consumed: {left[:5]}")
    for alias, target in ct2.aliases.items():
        if (alias, target) != ("decoder/projection/weight", "decoder/embeddings/weight"):
            raise CT2FormatError(f"unexpected alias {alias} -> {target} (only the tied output projection is known)")
    if "decoder/projection/weight" in ct2.variables:
        raise CT2FormatError("decoder/projection/weight is stored, not aliased: untied output projections "
                             "are not supported")
    tied = {"proj_out.weight"}
    missing = sorted(set(expected) - set(state) - tied)
    if missing:
        raise CT2FormatError(f"{len(missing)} model parameter(s) not filled by the file: {missing[:5]}")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    if any(p.is_meta for p in model.parameters()) or any(b.is_meta for b in model.buffers()):
        raise CT2FormatError("internal: some tensors were left unfilled after loading")
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        raise CT2FormatError("internal: output projection not tied to the token embeddings")
    return model.eval()


def load_whisper_ct2(source: Path | str | Sequence[Path | str], dtype: torch.dtype = torch.float32,
                     tokenizer_file: Path | str | None = None):
    """Read and convert a CTranslate2 Whisper ``model.bin`` (or its parts) in one strict step.

    ``tokenizer_file`` (a ``tokenizer.json``) sets the end-of-text and start-of-transcript ids in the
    config from the tokenizer instead of the multilingual defaults.
    """
    token_ids = None
    if tokenizer_file is not None:
        from transformers import WhisperTokenizerFast

        tok = WhisperTokenizerFast(tokenizer_file=str(tokenizer_file))
        token_ids = {"eos": tok.convert_tokens_to_ids("<|endoftext|>"),
                     "sot": tok.convert_tokens_to_ids("<|startoftranscript|>")}
    return convert_whisper(read_ct2(source), dtype=dtype, token_ids=token_ids)
