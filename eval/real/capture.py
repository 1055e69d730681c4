"""Real Q/K/V from trained models, for the rate-distortion benchmark's codec tables.

:func:`capture_real_kv` runs the packaged models on fixed real inputs and returns, per source,
``{"layer{i}.query" | "layer{i}.key" | "layer{i}.value": (heads, tokens, head_dim)}`` float32
tensors, the layout of :func:`octopus_diffusers.eval.rate_distortion.kv_capture.capture_minilm_qkv`; with a
``cache_dir`` each source is saved once as ``<source>_qkv_v<version>.safetensors`` and reloaded
after. Inputs are fixed (seeded noise, named images, the first packaged texts / clip), so a capture
is deterministic on one machine.

Sources:

* ``terrain`` -- the terrain consistency UNet's 28 attentions (head_dim 32), one heightmap from
  seeded noise at sigma_max. Guided diffusion scales q and k by ``head_dim ** -0.25`` each before
  the score product; the captured q/k are the scaled operands the attention reads (a constant
  factor, which the norm-split codecs do not see). Layers differ in tokens (1024, 256 or 64) and
  heads (2, 3, 4), so they cannot be stacked.
* ``dinov2`` -- DINOv2-small's 12 layers (6 heads, head_dim 64), two bundled photographs
  (2 x 257 tokens, concatenated along tokens).
* ``smollm2`` -- SmolLM2-135M (Q4_1 weights dequantized; 3 KV heads, head_dim 64, keys after RoPE),
  the first packaged Wikipedia article, 256 tokens; needs the text part's loader.
* ``whisper`` -- Whisper-base's encoder self-attention (8 heads, head_dim 64) on the first 10 s of
  the first packaged speech clip (the encoder always reads a padded 30 s window: 1500 frames);
  through the audio part's loader.
* ``whisper_cross`` -- Whisper-base's decoder cross-attention (6 layers, 8 heads, head_dim 64) on the
  whole 30 s call: keys and values over its 1500 encoder frames, queries from the decoder
  teacher-forced on the prompt and the first tokens of the call's packaged transcript.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

#: Bump when a source's recipe changes, so an old cache file is never reused.
CAPTURE_VERSION = 1
SOURCES = ("terrain", "dinov2", "smollm2", "whisper", "whisper_cross")
ROLES = ("query", "key", "value")

QKV = dict[str, torch.Tensor]


def _collector() -> tuple[dict[str, list[torch.Tensor]], Callable[[str, str, torch.Tensor], None]]:
    chunks: dict[str, list[torch.Tensor]] = {}

    def record(site: str, role: str, x: torch.Tensor) -> None:
        # x (..., tokens, head_dim): fold the leading axes into heads
        chunks.setdefault(f"{site}.{role}", []).append(x.detach().reshape(-1, *x.shape[-2:]).float().clone())

    return chunks, record


def _projections_qkv(attentions: Sequence[torch.nn.Module], heads: int, forward: Callable[[], Any]) -> QKV:
    """Q/K/V of one ``forward()`` call as the ``q_proj`` / ``k_proj`` / ``v_proj`` outputs of each of
    ``attentions`` (``layer{i}``, split into ``heads``): Whisper's encoder and decoder cross-attention."""
    chunks, record = _collector()
    handles = []
    for i, attn in enumerate(attentions):
        for role, proj in (("query", attn.q_proj), ("key", attn.k_proj), ("value", attn.v_proj)):
            handles.append(proj.register_forward_hook(
                lambda _m, _inp, out, i=i, role=role: record(
                    f"layer{i}", role, out.view(*out.shape[:-1], heads, -1).transpose(1, 2))))
    try:
        forward()
    finally:
        for h in handles:
            h.remove()
    return {key: torch.cat(parts, dim=0).contiguous() for key, parts in chunks.items()}


@torch.no_grad()
def capture_terrain_qkv(seed: int = 0) -> QKV:
    """Q/K/V of every attention of the terrain UNet on one seeded sample at sigma_max."""
    from octopus_diffusers.integrations.fx_attention import quantize_fx_attention

    from .terrain import load_terrain_unet, sampling_inputs

    model = load_terrain_unet()
    handle = quantize_fx_attention(model, None, roles=ROLES)
    chunks, record = _collector()
    handle.set_recorder(record)
    noises, difficulty = sampling_inputs(1, (80.0,), seed)
    model(noises[0] * 80.0, torch.full((1,), 80.0), difficulty)
    renamed = {}
    for key, parts in chunks.items():
        site, role = key.split(".")
        renamed[f"layer{int(site.removeprefix('attn'))}.{role}"] = torch.cat(parts, dim=0).contiguous()
    return renamed


@torch.no_grad()
def capture_dinov2_qkv(num_images: int = 2) -> QKV:
    """Q/K/V of DINOv2-small's 12 layers on the first ``num_images`` bundled photographs."""
    from .dinov2 import kv_codec_hooks, load_dinov2, load_images

    model = load_dinov2()
    pixels, _ = load_images(num_images)
    chunks, record = _collector()
    for i in range(pixels.shape[0]):  # one image at a time: tokens of different images concatenate
        with kv_codec_hooks(model, None, recorder=record):
            model(pixel_values=pixels[i:i + 1])
    return {key: torch.cat(parts, dim=1).contiguous() for key, parts in chunks.items()}


@torch.no_grad()
def capture_smollm2_qkv(num_tokens: int = 256) -> QKV:
    """Q/K/V (keys after RoPE, as cached) of SmolLM2-135M on the first packaged Wikipedia article."""
    from transformers.models.llama import modeling_llama

    from .models import load_smollm2, wiki_articles

    model, tokenizer, _ = load_smollm2()
    text = "\n\n".join(t for _, t in wiki_articles()[:8])
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :num_tokens]
    chunks, record = _collector()
    original = modeling_llama.apply_rotary_pos_emb
    layer_of = {id(layer.self_attn): i for i, layer in enumerate(model.model.layers)}
    handles = []
    current: list[int] = []

    for attn in model.model.layers:
        handles.append(attn.self_attn.register_forward_pre_hook(
            lambda module, _args, _kw=None: current.append(layer_of[id(module)])))
        handles.append(attn.self_attn.v_proj.register_forward_hook(
            lambda module, _inp, out, cfg=model.config: record(
                f"layer{current[-1]}", "value",
                out.view(*out.shape[:-1], cfg.num_key_value_heads, -1).transpose(1, 2))))

    def rotary(q, k, *args, **kwargs):
        q, k = original(q, k, *args, **kwargs)
        record(f"layer{current[-1]}", "query", q)
        record(f"layer{current[-1]}", "key", k)
        return q, k

    modeling_llama.apply_rotary_pos_emb = rotary
    try:
        model(input_ids=ids)
    finally:
        modeling_llama.apply_rotary_pos_emb = original
        for h in handles:
            h.remove()
    return {key: torch.cat(parts, dim=0).contiguous() for key, parts in chunks.items()}


@torch.no_grad()
def capture_whisper_qkv(seconds: float = 10.0) -> QKV:
    """Q/K/V of Whisper-base's encoder self-attention on the first packaged speech clip."""
    from .models import load_audio, speech_clips
    from .whisper_asr import load_whisper

    model, _, feature_extractor, _ = load_whisper()
    audio = load_audio(speech_clips()[0].path)[: int(16000 * seconds)]
    feats = feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    encoder = model.model.encoder
    return _projections_qkv([layer.self_attn for layer in encoder.layers], model.config.encoder_attention_heads,
                            lambda: encoder(feats.to(next(model.parameters()).dtype)))


@torch.no_grad()
def capture_whisper_cross_qkv(num_tokens: int = 64) -> QKV:
    """Q/K/V of Whisper-base's decoder cross-attention on the first packaged clip (the 30 s call)."""
    from .models import load_audio, speech_clips
    from .whisper_asr import PROMPT, load_whisper

    model, tokenizer, feature_extractor, _ = load_whisper()
    clip = speech_clips()[0]
    feats = feature_extractor(load_audio(clip.path), sampling_rate=16000, return_tensors="pt").input_features
    text = tokenizer(" " + (clip.reference or ""), add_special_tokens=False).input_ids
    ids = torch.tensor([[tokenizer.convert_tokens_to_ids(t) for t in PROMPT] + text])
    return _projections_qkv([layer.encoder_attn for layer in model.model.decoder.layers],
                            model.config.decoder_attention_heads,
                            lambda: model(input_features=feats.to(next(model.parameters()).dtype),
                                          decoder_input_ids=ids[:, :num_tokens], use_cache=False))


_CAPTURES: dict[str, Callable[[], QKV]] = {
    "terrain": capture_terrain_qkv, "dinov2": capture_dinov2_qkv, "smollm2": capture_smollm2_qkv,
    "whisper": capture_whisper_qkv, "whisper_cross": capture_whisper_cross_qkv,
}


def capture_real_kv(sources: Sequence[str] = ("terrain", "dinov2"), cache_dir: Path | str | None = None
                    ) -> dict[str, QKV]:
    """``{source: {"layer{i}.{role}": (heads, tokens, head_dim)}}`` for each source in ``sources``.

    With ``cache_dir``, a source's tensors are loaded from ``<source>_qkv_v<CAPTURE_VERSION>.safetensors``
    there when present, else captured and saved. A missing model package raises
    :class:`~.models.MissingRealPackage` (one line naming what to install).
    """
    unknown = [s for s in sources if s not in _CAPTURES]
    if unknown:
        raise ValueError(f"unknown capture source(s) {unknown}; available: {', '.join(SOURCES)}")
    out: dict[str, QKV] = {}
    for source in sources:
        path = Path(cache_dir) / f"{source}_qkv_v{CAPTURE_VERSION}.safetensors" if cache_dir else None
        if path is not None and path.is_file():
            from safetensors.torch import load_file

            out[source] = load_file(str(path))
            continue
        tensors = _CAPTURES[source]()
        if path is not None:
            from safetensors.torch import save_file

            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".partial")
            save_file(tensors, str(tmp), metadata={"source": source, "capture_version": str(CAPTURE_VERSION)})
            tmp.replace(path)
        out[source] = tensors
    return out


def kv_statistics(tensors: QKV) -> list[dict[str, float | int | str]]:
    """Per layer and role (keys, values): how much of the energy is an offset shared by all tokens
    of a head (``shared_offset_share`` = ||mean over tokens||^2 / mean ||x||^2), and how far the
    largest channel stands out (``channel_max_over_median`` of the per-channel max |x|).

    A large shared key offset is invisible to attention (it adds the same q.k to every key) but a
    per-vector, norm-relative codec spends its precision on it.
    """
    rows = []
    for name, x in tensors.items():
        layer, role = name.split(".")
        if role == "query":
            continue
        mean = x.mean(dim=-2, keepdim=True)
        channel_max = x.abs().amax(dim=-2)
        rows.append({"layer": int(layer.removeprefix("layer")), "role": role,
                     "shared_offset_share": float((mean.norm(dim=-1) ** 2).mean() / (x.norm(dim=-1) ** 2).mean()),
                     "channel_max_over_median": float((channel_max.amax(-1) / channel_max.median(-1).values).mean())})
    return sorted(rows, key=lambda r: (r["layer"], r["role"]))


def head_dims(tensors: QKV) -> set[int]:
    """The head_dims present in one source's capture."""
    return {int(t.shape[-1]) for t in tensors.values()}
