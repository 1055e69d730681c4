"""Whisper-base transcripts of real speech with K/V quantized by every codec.

Model: openai/whisper-base converted by
:func:`~octopus_diffusers.integrations.whisper_ct2.load_whisper_ct2` from the packaged CTranslate2
``model.bin`` (fp16 weights, run in fp32). Three K/V streams are quantized, all with the same codec
and bits:

* encoder self-attention (6 layers, 1500 audio frames): forward hooks on each ``k_proj`` / ``v_proj``
  encode their output (as ``(B, heads, frames, 64)``) and hand the decoding on -- Whisper has no
  rotary embedding, so the projection output is exactly the attention's K/V;
* decoder cross-attention over the audio frames: the same hooks on ``encoder_attn.k_proj`` /
  ``v_proj``, which transformers calls once per utterance (the result is kept in the
  cross-attention cache and reused at every step): encoded once, step-invariant;
* decoder self-attention: a :class:`~octopus_diffusers.integrations.transformers_cache.QuantizedKVCache`
  (no residual window, no full-precision layer: every token, the prompt included, as codes).

Decoding is greedy, the prompt ``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>``, with the
suppressed tokens of the CTranslate2 config, up to 224 tokens. Metrics: word error rate
(``torchmetrics``) against the unquantized run and against the reference transcript where one is
packaged (``sample.stm``; text lower-cased, punctuation dropped), and token agreement with the
unquantized run (share of its tokens before the first difference; token edit distance).

Entry point: :func:`run` (``python -m octopus_diffusers.eval.real.whisper_asr --out DIR``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...codecs import Codec, kv_codecs
from ...integrations.transformers_cache import QuantizedKVCache
from . import models
from .text_perplexity import Size, plan

SEED = 0
MAX_NEW_TOKENS = 224
PROMPT = ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")

SIZES = {
    "quick": (("beckett",), Size(0, 0, ("octopus", "turboquant"), (2, 4), ())),
    "reference": (("pyannote_sample",), Size(0, 0, ("octopus", "turboquant", "polarquant"), (2, 4), ("turboquant",))),
    "full": (("pyannote_sample", "beckett"),
             Size(0, 0, ("octopus", "triplet_vq", "turboquant", "turboquant_mr", "turboquant_prod", "polarquant",
                         "qjl", "uniform", "fp8"),
                  (2, 3, 4), ("triplet_vq", "turboquant", "turboquant_mr"))),
}


def load_whisper() -> tuple[Any, Any, Any, dict[str, Any]]:
    """(model, tokenizer, feature extractor, CTranslate2 config) of the packaged Whisper-base."""
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    from ...integrations.whisper_ct2 import load_whisper_ct2

    tokenizer_file = models.asset_path("whisper_tokenizer")
    model = load_whisper_ct2([models.asset_path("whisper_part1"), models.asset_path("whisper_part2")],
                             tokenizer_file=tokenizer_file)
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(tokenizer_file))
    ct2_config = json.loads(models.asset_path("whisper_ct2_config").read_text())
    return model, tokenizer, WhisperFeatureExtractor(), ct2_config


# ---- quantization of the three streams --------------------------------------------------------------
@dataclass
class StreamBytes:
    """Packed bytes and scalars encoded in one stream (hooks count every call)."""

    nbytes: int = 0
    numel: int = 0

    @property
    def bits_per_scalar(self) -> float:
        return 8 * self.nbytes / self.numel if self.numel else float("nan")


@dataclass
class WhisperKV:
    """Hooks quantizing the encoder self-attention and decoder cross-attention K/V of ``model``, and
    the factory of the decoder's quantized self-attention cache. ``remove()`` takes the hooks off."""

    model: Any
    codec: str
    bits: float
    seed: int = SEED
    streams: dict[str, StreamBytes] = field(default_factory=lambda: {"encoder_self": StreamBytes(),
                                                                     "cross": StreamBytes()})
    _handles: list = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg = self.model.config
        head_dim = cfg.d_model // cfg.encoder_attention_heads
        enc = self.model.model.encoder.layers
        dec = self.model.model.decoder.layers
        for i, layer in enumerate(enc):
            self._hook(layer.self_attn, "encoder_self", i, head_dim)
        for i, layer in enumerate(dec):
            self._hook(layer.encoder_attn, "cross", len(enc) + i, head_dim)

    def _hook(self, attn: Any, stream: str, index: int, head_dim: int) -> None:
        k_codec, v_codec = kv_codecs(self.codec, head_dim, self.bits, self.bits, self.seed, index)
        for proj, codec in ((attn.k_proj, k_codec), (attn.v_proj, v_codec)):
            self._handles.append(proj.register_forward_hook(self._make_hook(codec, attn.num_heads, stream)))

    def _make_hook(self, codec: Codec, heads: int, stream: str):
        counter = self.streams[stream]

        def hook(module: Any, args: Any, out: torch.Tensor) -> torch.Tensor:
            b, t, _ = out.shape
            x = out.view(b, t, heads, -1).transpose(1, 2)  # (B, H, T, D): tokens on dim -2
            packed = codec.encode(x)
            counter.nbytes += packed.nbytes
            counter.numel += packed.numel
            return codec.decode(packed).transpose(1, 2).reshape(b, t, -1)
        return hook

    def decoder_cache(self) -> QuantizedKVCache:
        """The decoder self-attention cache: every token stored as codes."""
        return QuantizedKVCache(self.model, codec=self.codec, bits=self.bits, residual_window=0,
                                full_precision_layers=(), seed=self.seed + 1000)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


# ---- transcription --------------------------------------------------------------------------------
def transcribe(model: Any, tokenizer: Any, features: torch.Tensor, ct2_config: dict[str, Any],
               kv: WhisperKV | None = None) -> dict[str, Any]:
    """Greedy transcript of one 30 s feature window; ``kv`` quantizes the three K/V streams."""
    from transformers import DynamicCache, EncoderDecoderCache

    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    prompt = [tokenizer.convert_tokens_to_ids(t) for t in PROMPT]
    suppress = torch.tensor(sorted(set(ct2_config.get("suppress_ids", []))), dtype=torch.long)
    suppress_begin = torch.tensor(ct2_config.get("suppress_ids_begin", []), dtype=torch.long)
    device = next(model.parameters()).device
    suppress, suppress_begin = suppress.to(device), suppress_begin.to(device)
    self_cache = kv.decoder_cache() if kv is not None else DynamicCache(config=model.config)
    cache = EncoderDecoderCache(self_cache, DynamicCache(config=model.config))
    tokens: list[int] = []
    with torch.no_grad():
        encoder_out = model.model.encoder(features.to(device)).last_hidden_state
        inputs = torch.tensor([prompt], device=device)
        for step in range(MAX_NEW_TOKENS):
            logits = model(encoder_outputs=(encoder_out,), decoder_input_ids=inputs, cache=cache,
                           use_cache=True).logits[0, -1].clone()
            logits[suppress] = -float("inf")
            if step == 0:
                logits[suppress_begin] = -float("inf")
            token = int(logits.argmax())
            if token == eot:
                break
            tokens.append(token)
            inputs = torch.tensor([[token]], device=device)
    out = {"tokens": tokens, "text": tokenizer.decode(tokens, skip_special_tokens=True).strip()}
    if kv is not None:
        out["decoder_self_bits"] = self_cache.bits_per_scalar()
        out["decoder_self_bytes"] = self_cache.nbytes()
    return out


def normalize(text: str) -> str:
    """Lower case, punctuation dropped (apostrophes kept), single spaces: the text WER compares."""
    text = re.sub(r"[^\w\s']", " ", text.lower())
    return " ".join(text.split())


def wer(hypothesis: str, reference: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` after :func:`normalize`."""
    from torchmetrics.functional.text import word_error_rate

    ref = normalize(reference)
    if not ref:
        raise ValueError("empty reference transcript")
    return float(word_error_rate(normalize(hypothesis), ref))


def token_agreement(tokens: Sequence[int], reference: Sequence[int]) -> dict[str, float]:
    """Share of ``reference`` tokens before the first difference, and token edit distance / length."""
    prefix = 0
    for a, b in zip(tokens, reference):
        if a != b:
            break
        prefix += 1
    prev = list(range(len(reference) + 1))
    for i, a in enumerate(tokens, 1):
        cur = [i] + [0] * len(reference)
        for j, b in enumerate(reference, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a != b))
        prev = cur
    n = max(len(reference), 1)
    return {"prefix_agreement": prefix / n, "token_error_rate": prev[-1] / n}


# ---- benchmark ------------------------------------------------------------------------------------
def run(out: Path, *, quick: bool, device: str = "cpu", size: str | None = None) -> dict[str, Any]:
    """Transcribe the packaged clips unquantized and with every codec configuration; write
    ``audio_results.json``, ``audio_results.csv``, ``audio_transcripts.csv`` and ``audio.md``.
    ``device`` runs the model and the codecs (their PyTorch reference code) there; ``size`` names a
    size of :data:`SIZES` instead of ``quick`` (``reference``: the call with its transcript, three
    codecs at 2 and 4 bits)."""
    from tqdm.auto import tqdm

    size_name = size or ("quick" if quick else "full")
    if size_name not in SIZES:
        raise ValueError(f"unknown size {size_name!r}; sizes: {', '.join(SIZES)}")
    clip_names, size = SIZES[size_name]
    start = time.perf_counter()
    model, tokenizer, extractor, ct2_config = load_whisper()
    model.to(device)
    load_seconds = time.perf_counter() - start
    clips = [c for c in models.speech_clips() if c.name in clip_names]
    features = {c.name: extractor(models.load_audio(c.path), sampling_rate=16000, return_tensors="pt").input_features
                for c in clips}
    head_dim = model.config.d_model // model.config.encoder_attention_heads
    configs, matched_plan = plan(size, head_dim)
    baseline = {c.name: transcribe(model, tokenizer, features[c.name], ct2_config) for c in clips}
    rows, transcripts = [], []
    for c in clips:
        b = baseline[c.name]
        row = {"clip": c.name, "label": "unquantized", "codec": "none", "bits": 32.0, "roles": ["baseline"],
               "tokens": len(b["tokens"]), "wer_vs_unquantized": 0.0, "prefix_agreement": 1.0,
               "token_error_rate": 0.0, "text": b["text"]}
        if c.reference:
            row["wer_vs_reference"] = wer(b["text"], c.reference)
        rows.append(row)
    for cfg in tqdm(configs, desc="whisper", unit="cfg"):
        kv = WhisperKV(model, cfg.codec, cfg.bits)
        try:
            for c in clips:
                t0 = time.perf_counter()
                res = transcribe(model, tokenizer, features[c.name], ct2_config, kv)
                b = baseline[c.name]
                row = {"clip": c.name, "label": cfg.label, "codec": cfg.codec, "bits": cfg.bits,
                       "roles": list(cfg.roles), "codec_bits": kv_rate(cfg.codec, cfg.bits, head_dim),
                       "tokens": len(res["tokens"]), "wer_vs_unquantized": wer(res["text"], b["text"]),
                       **token_agreement(res["tokens"], b["tokens"]),
                       "decoder_self_bits": res["decoder_self_bits"], "text": res["text"],
                       "seconds": time.perf_counter() - t0}
                if c.reference:
                    row["wer_vs_reference"] = wer(res["text"], c.reference)
                rows.append(row)
        finally:
            kv.remove()
        row_streams = {k: v.bits_per_scalar for k, v in kv.streams.items()}
        for r in rows[-len(clips):]:
            r.update({f"{k}_bits": v for k, v in row_streams.items()})
    results = {
        "benchmark": "whisper_asr", "model": "openai/whisper-base, CTranslate2 fp16 weights converted, run in fp32",
        "size": size_name,
        "command": "python -m octopus_diffusers.eval.real.whisper_asr --out OUT"
                   + {"quick": " --quick", "full": ""}.get(size_name, f" --size {size_name}"),
        "clips": [{"name": c.name, "source": c.source, "reference": c.reference} for c in clips],
        "baseline": baseline, "rows": rows, "load_seconds": load_seconds,
        "matched": [{"target_bits": t, "bits": row} for t, row in matched_plan.items()],
        "environment": models.environment(device, ("whisper_part1", "whisper_part2", "pyannote_wav",
                                                  "beckett_wav")),
    }
    results["seconds"] = time.perf_counter() - start
    models.write_files(Path(out), {
        "audio_results.json": json.dumps(results, indent=1, default=str) + "\n",
        "audio_results.csv": models.csv_text([{k: v for k, v in r.items() if k != "text"} for r in rows]),
        "audio_transcripts.csv": models.csv_text([{"clip": r["clip"], "config": r["label"], "text": r["text"]}
                                                  for r in rows]),
        "audio.md": markdown(results),
    })
    return results


def kv_rate(codec: str, bits: float, head_dim: int) -> float:
    """True codec rate (mean of key and value codecs) of a configuration."""
    k, v = kv_codecs(codec, head_dim, bits, bits, SEED, 1)
    return (k.bits_per_scalar + v.bits_per_scalar) / 2


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = ["# Whisper-base transcripts with quantized K/V", "",
             "Command:", "", f"```\n{results['command']}\n```", "",
             f"Size `{results['size']}`, {results['seconds']:.0f} s on {env['device']} (model conversion "
             f"{results['load_seconds']:.0f} s). Versions: python {env['python']}, torch {env['torch']}, "
             f"transformers {env['transformers']}, octopus-diffusers {env['octopus-diffusers']}, "
             + ", ".join(f"{k} {v}" for k, v in env["packages"].items())
             + f"; source commit {env['git_commit']}.", ""]
    if results["size"] != "full":
        lines += [f"**Size `{results['size']}`** (the clips and configurations below only): a reduced run. "
                  "The full size (both clips, every codec at 2/3/4 bits and TurboQuant at OCTOPUS's "
                  "true rates) is `python -m octopus_diffusers.eval.real.whisper_asr --out DIR`.", ""]
    lines += ["## Protocol", ""]
    lines += (__doc__ or "").split("\n\n", 1)[1].split("Entry point")[0].strip().splitlines() + [""]
    for clip in results["clips"]:
        base = results["baseline"][clip["name"]]
        lines += [f"## {clip['name']} ({clip['source']})", "",
                  f"Unquantized transcript ({len(base['tokens'])} tokens): \"{base['text']}\"", ""]
        if clip["reference"]:
            lines += [f"Reference (`sample.stm`): \"{clip['reference']}\"", ""]
        rows = [r for r in results["rows"] if r["clip"] == clip["name"]]
        header = ["config", "runs for", "codec bits/scalar", "WER vs unquantized"]
        header += ["WER vs reference"] if clip["reference"] else []
        header += ["tokens before first difference", "token edit distance",
                   "measured bits: encoder / cross / decoder self"]
        table = []
        for r in sorted(rows, key=lambda r: (r["codec"] != "none", r["codec"], r["bits"])):
            cells = [r["label"], ", ".join(r["roles"]), r.get("codec_bits", 32.0),
                     f"{100 * r['wer_vs_unquantized']:.1f} %"]
            cells += [f"{100 * r['wer_vs_reference']:.1f} %"] if clip["reference"] else []
            cells += [f"{100 * r['prefix_agreement']:.0f} %", f"{100 * r['token_error_rate']:.1f} %"]
            cells += [" / ".join(f"{r[k]:.3g}" for k in ("encoder_self_bits", "cross_bits", "decoder_self_bits"))
                      if "cross_bits" in r else "-"]
            table.append(cells)
        lines += models.md_table(header, table)
        lines += ["Transcripts:", ""] + [f"- `{r['label']}`: \"{r['text']}\"" for r in
                                         sorted(rows, key=lambda r: (r["codec"] != "none", r["codec"], r["bits"]))]
        lines += [""]
    lines += ["## Matched true rate", "",
              "Targets are OCTOPUS's codec rates at 2/3/4 bits; each codec runs at its configuration "
              "with the largest codec rate not above the target (see `runs for` above; bits per target):", ""]
    for m in results["matched"]:
        lines.append(f"- {m['target_bits']:g} bits/scalar: " + ", ".join(f"{c} {b:g}b" for c, b in m["bits"].items()))
    lines += ["", "All transcripts: `audio_transcripts.csv`; per-run numbers: `audio_results.csv` / "
              "`audio_results.json` (measured bits per scalar of each stream included).", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for audio.md, JSON, CSV")
    parser.add_argument("--quick", action="store_true", help="beckett.wav only, two codecs at 2 and 4 bits")
    parser.add_argument("--size", choices=sorted(SIZES), help="a named size instead of --quick / full")
    parser.add_argument("--device", default="cpu", help="torch device for the model and codecs")
    args = parser.parse_args(argv)
    try:
        res = run(args.out, quick=args.quick, device=args.device, size=args.size)
    except models.MissingRealPackage as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(res['rows'])} transcripts; wrote {args.out}/audio.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
