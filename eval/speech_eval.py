"""Codecs on the speech DiT trained here: K/V of every attention quantized, at matched true rates.

The shipped :mod:`~octopus_diffusers.training.speech_dit` model samples one 4.1 s log-mel window per
training caption (seeded, identical noise for every variant) with its attention processors replaced by
:func:`~octopus_diffusers.quantize_attention` at each codec's setting matched to every target true rate
(:func:`..causal_eval.matched_variants`). Per variant and caption: PSNR of the log-mel against the
unquantized baseline (peak 2 in the model's normalised units) and relative L2 error.

Run folder (written to a temporary sibling and renamed, so a failed run leaves nothing half-written)::

    results.json     config, environment, every variant's per-caption metrics
    summary.csv      one row per variant
    report.md        the table, sorted by true bits per scalar
    mels.png         baseline and every variant's log-mels (first caption)
    audio/           Griffin-Lim WAVs of the baseline and every variant, per caption
    psnr_vs_bits.png mean PSNR against true bits per scalar, one line per codec
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from octopus_diffusers.pipelines.run_folder import staged_folder, to_jsonable, write_json


def _psnr(ref: torch.Tensor, test: torch.Tensor, peak: float = 2.0) -> float:
    mse = float(((ref.float() - test.float()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def run_speech(out_dir: str | Path, *, codecs: Sequence[str] = ("none", "octopus", "turboquant", "uniform"),
               rates: Sequence[float] = (3.0, 4.0, 5.0), seed: int = 0, device: str = "cpu",
               weights: str | Path | None = None, progress: bool = True) -> Path:
    """Baseline and every matched-rate variant of the trained speech DiT into the run folder ``out_dir``
    (must not exist or be empty); returns its path."""
    from octopus_diffusers import quantize_attention
    from octopus_diffusers.codecs import get_codec
    from octopus_diffusers.env import environment
    from octopus_diffusers.eval.causal_eval import matched_variants
    from octopus_diffusers.training.speech_dit import WEIGHTS_DIR, load_trained, sample

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    trained = load_trained(Path(weights) if weights is not None else WEIGHTS_DIR, device=device)
    cfg = trained.config
    variants = matched_variants(list(codecs), cfg.head_dim, rates)   # unknown codecs fail here
    text = trained.caption_embeds
    dtype = next(trained.model.parameters()).dtype
    baseline = sample(trained.model, text, cfg, seed=seed).cpu()
    from tqdm.auto import tqdm

    mels, rows = {}, []
    for v in tqdm(variants, desc="speech DiT variants", unit="variant", disable=not progress):
        handle = quantize_attention(trained.model, codec=v.codec, bits=None if v.codec == "none" else v.bits,
                                    **dict(v.options))
        try:
            mels[v.name] = sample(trained.model, text, cfg, seed=seed).cpu()
        finally:
            handle.restore()
        rate = (float(torch.finfo(dtype).bits) if v.codec == "none"   # exact copies in the model's dtype
                else get_codec(v.codec, cfg.head_dim, v.bits, **dict(v.options)).bits_per_scalar)
        per_caption = {name: {"psnr_db": _psnr(baseline[i], mels[v.name][i]),
                              "rel_l2": float((mels[v.name][i] - baseline[i]).norm() / baseline[i].norm())}
                       for i, name in enumerate(trained.clip_names)}
        finite = [m["psnr_db"] for m in per_caption.values() if math.isfinite(m["psnr_db"])]
        rows.append({"name": v.name, "codec": v.codec, "bits": v.bits, "options": dict(v.options),
                     "target_rate": v.target_rate, "bits_per_scalar": rate, "per_caption": per_caption,
                     "mean_psnr_db": sum(finite) / len(finite) if finite else math.inf})
    rows.sort(key=lambda r: (r["bits_per_scalar"], r["name"]))
    results = {"environment": environment(device),
               "config": {"model": "speech DiT trained on the packaged speech (see its model card)",
                          "captions": trained.clip_names, "seed": seed, "window_frames": cfg.window,
                          "sample_steps": cfg.sample_steps, "head_dim": cfg.head_dim, "rates": list(rates)},
               "variants": rows}
    with staged_folder(out_dir) as tmp:
        _write(tmp, results, trained, baseline, mels)
    return out_dir


def _write(folder: Path, results: dict[str, Any], trained: Any, baseline: torch.Tensor,
           mels: dict[str, torch.Tensor]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.io import wavfile

    from octopus_diffusers.training.speech_dit import SAMPLE_RATE, mel_to_wave

    write_json(folder / "results.json", results)
    rows = results["variants"]
    names = trained.clip_names
    with (folder / "summary.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "codec", "target_rate", "bits_per_scalar", "mean_psnr_db",
                         *[f"psnr_db_{n}" for n in names]])
        for r in rows:
            writer.writerow(to_jsonable([r["name"], r["codec"], r["target_rate"], r["bits_per_scalar"],
                                         r["mean_psnr_db"], *[r["per_caption"][n]["psnr_db"] for n in names]]))
    audio = folder / "audio"
    audio.mkdir()
    for label, batch in [("baseline", baseline), *mels.items()]:
        for i, name in enumerate(names):
            wave = mel_to_wave(trained.denormalise(batch[i]))
            wavfile.write(audio / f"{name}_{label}.wav", SAMPLE_RATE, (wave.numpy() * 32767).astype("int16"))
    items = [("baseline", baseline[0])] + [(r["name"], mels[r["name"]][0]) for r in rows]
    fig, axes = plt.subplots(len(items), 1, figsize=(8, 1.3 * len(items)), squeeze=False)
    for ax, (label, mel) in zip(axes[:, 0], items):
        ax.imshow(mel.numpy(), origin="lower", aspect="auto", vmin=-1.5, vmax=1.5)
        ax.set_ylabel(label, rotation=0, ha="right", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"log-mel, caption {names[0]!r}", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "mels.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for codec in dict.fromkeys(r["codec"] for r in rows if r["codec"] != "none"):
        pts = [(r["bits_per_scalar"], r["mean_psnr_db"]) for r in rows if r["codec"] == codec]
        ax.plot(*zip(*pts), marker="o", label=codec)
    ax.set_xlabel("true bits per scalar")
    ax.set_ylabel("log-mel PSNR vs baseline (dB)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "psnr_vs_bits.png", dpi=120)
    plt.close(fig)
    (folder / "report.md").write_text(markdown_report(results))


def markdown_report(results: dict[str, Any]) -> str:
    env, cfg = results["environment"], results["config"]
    names = cfg["captions"]
    lines = ["# Codecs on the speech DiT trained here (log-mel, Griffin-Lim audio)", "",
             f"{cfg['model']}; {cfg['window_frames']} mel frames per caption, {cfg['sample_steps']} Euler steps, "
             f"seed {cfg['seed']}; every attention's K/V quantized (self and cross). Device {env.get('device')}, "
             f"torch {env.get('torch')}, diffusers {env.get('diffusers')}, commit {env.get('git_commit')}.", "",
             "PSNR of each variant's log-mel against the unquantized baseline (peak 2 in normalised units; same "
             "noise for every variant). Compare codecs at equal *true* bits per scalar (norms and scales counted).",
             "", "| variant | target rate | true bits/scalar | mean PSNR dB | " +
             " | ".join(f"PSNR {n}" for n in names) + " |", "|" + "---|" * (4 + len(names))]
    for r in results["variants"]:
        cells = [r["name"], "-" if r["target_rate"] is None else f"{r['target_rate']:g}", f"{r['bits_per_scalar']:.3f}",
                 f"{r['mean_psnr_db']:.2f}", *[f"{r['per_caption'][n]['psnr_db']:.2f}" for n in names]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![PSNR against true bits](psnr_vs_bits.png)", "", "![log-mels](mels.png)", "",
              "Audio: `audio/<caption>_<variant>.wav` (Griffin-Lim: rough, but codec damage is audible).", ""]
    return "\n".join(lines)


__all__ = ["markdown_report", "run_speech"]
