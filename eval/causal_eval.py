"""Quality over time, bytes and memory of chunked (autoregressive) Wan generation with compressed KV caches.

Baseline: the same seed and prompts with the plain uncompressed cache (:class:`DenseKVCache`). Each
variant: a :class:`CompressedKVCache` with one codec at one nominal bit width under one policy (exact
sink and newest chunks by default). Per variant: per-frame PSNR / SSIM / L1 against the baseline
(:func:`..video_metrics.video_metrics`, torchmetrics), their means over time windows (0-2 s, 2-5 s,
rest; frame windows derived from the fps, so tiny runs get frame-count windows), cache bytes held at
the end against the same cache in bf16, the **true** bits per scalar of everything held (exact sink
and newest chunks, text K/V and codes all counted), peak memory (``torch.cuda.max_memory_allocated``
on GPU; on CPU the cache's tracked tensor bytes: stored codes plus the transient dense K/V of the
block that attends) and seconds per chunk.

Run folder (written to a temporary sibling and renamed, so a failed run leaves nothing half-written)::

    results.json      config, environment (device, versions, commit), baseline, every variant
    summary.csv       one row per variant: rates, bytes, memory, time, windowed metrics
    per_frame.csv     variant, frame, time_s, psnr, ssim, l1
    report.md         the tables, side by side, sorted by true bits per scalar
    drift.png         per-frame PSNR over time, one line per variant
    psnr_vs_bits.png  windowed PSNR against true bits per scalar, one line per codec (matched-rate view)
    side_by_side*.mp4 the dense-cache baseline beside every variant (one file per target rate), with
                      amplified differences

Entry point for the CLI: :func:`run_causal`. Command line: ``python -m octopus_diffusers.eval.causal_eval OUT``.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from octopus_diffusers.cache import CachePolicy
from octopus_diffusers.pipelines.causal_wan import CausalSchedule, CausalWanGenerator
from octopus_diffusers.pipelines.run_folder import staged_folder, to_jsonable, write_json

#: Time windows of the summaries, in seconds: [start, end); None = end of the video.
WINDOWS: tuple[tuple[float, float | None], ...] = ((0.0, 2.0), (2.0, 5.0), (5.0, None))
RESULTS_FORMAT = "octopus-diffusers-causal/1"
MODELS = ("tiny", "clips", "self-forcing", "causvid")
#: Denoising timesteps per chunk of the public checkpoints (Self-Forcing: 4 steps; CausVid: 3). Not verified
#: against the released config files here (none are reachable): check them against your checkpoint's config.
MODEL_SCHEDULES = {"self-forcing": CausalSchedule((1000.0, 750.0, 500.0, 250.0), shift=5.0),
                   "causvid": CausalSchedule((1000.0, 757.0, 522.0), shift=5.0)}
#: Wan2.1 at 480x832: a 60x104 latent; 16 fps video.
REAL_LATENT, REAL_FPS = (60, 104), 16
TINY_FPS = 8
#: The shipped model trained on the real clips: every 2nd frame of 25 fps video.
CLIPS_FPS = 12.5


@dataclass(frozen=True)
class Variant:
    """One compressed-cache configuration: codec at nominal bits (``none`` = exact copies), with the
    codec options and label of a matched-rate setting (:func:`matched_variants`)."""

    codec: str
    bits: float
    options: tuple[tuple[str, Any], ...] = ()
    label: str | None = None
    target_rate: float | None = None

    @property
    def name(self) -> str:
        # none keeps exact copies in the model's dtype whatever ``bits`` says: its true rate is in the report
        if self.codec == "none":
            return "none-exact"
        return f"{self.codec}-{self.label}" if self.label else f"{self.codec}-{self.bits:g}b"


def matched_variants(codecs: Sequence[str], head_dim: int, targets: Sequence[float]) -> list[Variant]:
    """Per codec and target true rate, the setting whose codec rate at ``head_dim`` is closest
    (:func:`~octopus_diffusers.pipelines.rates.match_rate`); ``none`` once; unmatched pairs left out."""
    from octopus_diffusers.pipelines.rates import match_rate

    out = [Variant("none", 16.0)] if "none" in codecs else []
    for codec in (c for c in codecs if c != "none"):
        for target in targets:
            setting = match_rate(codec, head_dim, float(target))
            if setting is not None:
                out.append(Variant(codec, setting.bits, tuple(sorted(setting.options.items())), setting.label,
                                   float(target)))
    if len({v.name for v in out}) != len(out):
        raise ValueError(f"matched variants collide: {[v.name for v in out]} (targets too close)")
    return out


def parse_variants(codecs: Sequence[str | tuple[str, float]]) -> list[Variant]:
    """``"octopus-3"``, ``"octopus:3"`` or ``("octopus", 3)`` -> :class:`Variant`; duplicates refused."""
    out = []
    for spec in codecs:
        if isinstance(spec, str):
            sep = ":" if ":" in spec else "-"
            name, _, bits = spec.rpartition(sep)
            try:
                spec = (name, float(bits.rstrip("b")))
            except ValueError:
                raise ValueError(f"variant {spec!r}: expected CODEC-BITS, e.g. octopus-3") from None
        name, bits = spec
        out.append(Variant(name, float(bits)))
    names = [v.name for v in out]
    if len(set(names)) != len(names) or not out:
        raise ValueError(f"variants must be non-empty and distinct, got {names}")
    return out


def frame_windows(num_frames: int, fps: float) -> list[tuple[str, int, int]]:
    """``(label, first, end)`` frame ranges of :data:`WINDOWS` at ``fps`` (empty windows left out)."""
    out = []
    for start, end in WINDOWS:
        a = min(num_frames, round(start * fps))
        b = num_frames if end is None else min(num_frames, round(end * fps))
        if b > a:
            label = f"{start:g}-{end:g}s" if end is not None else f"{start:g}s-end"
            out.append((label, a, b))
    return out


def _windowed(per_frame: dict[str, list[float]], windows: list[tuple[str, int, int]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for label, a, b in windows:
        out[label] = {}
        for metric, values in per_frame.items():
            vals = values[a:b]
            if metric == "psnr" and any(math.isinf(v) for v in vals):
                out[label][metric] = float("inf") if all(math.isinf(v) for v in vals) else \
                    sum(v for v in vals if not math.isinf(v)) / sum(1 for v in vals if not math.isinf(v))
            else:
                out[label][metric] = sum(vals) / len(vals)
    return out


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------
@dataclass
class CausalModel:
    """A generator ready to run, its prompt embeddings, latent size and fps."""

    generator: CausalWanGenerator
    prompt_embeds: torch.Tensor
    latent_size: tuple[int, int]
    fps: float
    description: str


def load_causal_model(model: str, weights: str | Path | None = None, device: str = "cpu",
                      dtype: torch.dtype | None = None) -> CausalModel:
    """``tiny``: random weights, offline. ``self-forcing`` / ``causvid``: ``weights`` is a folder holding

    * the generator: an original checkpoint file (``*.pt``, ``*.pth`` or ``*.safetensors``, converted by
      :mod:`..pipelines.self_forcing_convert`) or a diffusers ``transformer/`` folder;
    * ``vae/``: the Wan2.1 VAE as a diffusers ``AutoencoderKLWan`` folder;
    * ``prompt_embeds.safetensors``: key ``prompt_embeds``, UMT5 embeddings ``(N, 512, 4096)`` of the
      prompts (computed once with Wan's text encoder; this runner does not load the 11 GB encoder).
    """
    if model not in MODELS:
        raise ValueError(f"unknown causal model {model!r}; choose one of {', '.join(MODELS)}")
    if model == "clips":
        from octopus_diffusers.training.causal_video import WEIGHTS_DIR, load_trained

        trained = load_trained(Path(weights) if weights is not None else WEIGHTS_DIR, device=device,
                               dtype=dtype or torch.float32)
        return CausalModel(trained.generator(), trained.caption_embeds, trained.latent_size, CLIPS_FPS,
                           f"Wan trained here on {', '.join(trained.clip_names)} (3x64 heads, 4 layers, 64x64 "
                           "pixels; see its model card)")
    if model == "tiny":
        from octopus_diffusers.pipelines.causal_wan import TINY_LATENT, build_tiny_causal_wan, tiny_prompt_embeds

        if weights is not None:
            raise ValueError("the tiny causal model has random weights; do not pass weights")
        gen = build_tiny_causal_wan(device=device, dtype=dtype or torch.float32)
        gen.vae.float()
        return CausalModel(gen, tiny_prompt_embeds(), TINY_LATENT, TINY_FPS, "tiny random-weight Wan (2 blocks, 2x32)")
    if weights is None:
        raise ValueError(f"--model {model} needs --weights DIR (see load_causal_model's docstring)")
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from safetensors.torch import load_file

    from octopus_diffusers.pipelines import self_forcing_convert as conv

    root = Path(weights)
    dtype = dtype or torch.bfloat16
    if (root / "transformer").is_dir():
        transformer = WanTransformer3DModel.from_pretrained(root / "transformer", torch_dtype=dtype)
    else:
        files = sorted(p for p in root.iterdir() if p.suffix in (".pt", ".pth", ".safetensors")
                       and p.name != "prompt_embeds.safetensors")
        if len(files) != 1:
            raise ValueError(f"{root}: expected one checkpoint file (*.pt, *.pth, *.safetensors) or a transformer/ "
                             f"folder, found {[p.name for p in files]}")
        transformer = conv.build_transformer(conv.load_original_checkpoint(files[0]), dtype=dtype)
    for need in ("vae", "prompt_embeds.safetensors"):
        if not (root / need).exists():
            raise FileNotFoundError(f"{root}: missing {need} (see load_causal_model's docstring)")
    vae = AutoencoderKLWan.from_pretrained(root / "vae", torch_dtype=torch.float32).to(device).eval()
    prompts = load_file(str(root / "prompt_embeds.safetensors"))["prompt_embeds"]
    gen = CausalWanGenerator(transformer.to(device).eval(), schedule=MODEL_SCHEDULES[model], vae=vae)
    return CausalModel(gen, prompts, REAL_LATENT, REAL_FPS, f"{model} from {root}")


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
def _generate(model: CausalModel, cache: Any, num_chunks: int, seed: int) -> dict[str, Any]:
    device = model.generator.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = model.generator.generate(model.prompt_embeds, num_chunks, model.latent_size, cache=cache, seed=seed)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    video = model.generator.decode(result.latents)
    report = result.cache_report
    return {"video": video, "seconds_per_chunk": result.seconds_per_chunk, "seconds": elapsed,
            "cache": {k: v for k, v in report.items() if k != "per_block"},
            "peak_memory_bytes": peak if peak is not None else report["peak_tracked_bytes"],
            "peak_memory_kind": "torch.cuda.max_memory_allocated" if peak is not None else "tracked tensor bytes"}


def run_causal(out_dir: str | Path, *, codecs: Sequence[str | tuple[str, float]] = ("octopus-2", "octopus-3",
               "octopus-4", "turboquant-2", "turboquant-3", "turboquant-4"), model: str = "tiny",
               weights: str | Path | None = None, num_chunks: int = 5, seed: int = 0, device: str = "cpu",
               sink_chunks: int = 1, keep_newest: int = 1, local_attn_size: int | None = None,
               dtype: torch.dtype | None = None, rates: Sequence[float] | None = None,
               progress: bool = True) -> Path:
    """Generate with the uncompressed cache and each codec variant, compare over time, write the run
    folder ``out_dir`` (must not exist or be empty) and return its path. With ``rates``, ``codecs`` are
    codec names and each runs at the setting matched to every target true rate (bits per scalar)."""
    from octopus_diffusers.env import environment
    from octopus_diffusers.eval.video_metrics import video_metrics

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    if num_chunks < 1:
        raise ValueError(f"num_chunks must be >= 1, got {num_chunks}")
    if rates is None:
        variants = parse_variants(codecs)
    else:
        for name in codecs:
            CachePolicy(codec=name)                                     # unknown codecs fail before loading
    loaded = load_causal_model(model, weights, device, dtype)
    gen = loaded.generator
    if rates is not None:
        variants = matched_variants(list(codecs), gen.head_dim, rates)
    policies = {v.name: CachePolicy(codec=v.codec, bits=v.bits, codec_options=dict(v.options), sink_chunks=sink_chunks,
                                    keep_newest=keep_newest, local_attn_size=local_attn_size) for v in variants}
    base_cache = (gen.dense_cache(loaded.latent_size, num_chunks, local_attn_size, sink_chunks)
                  if local_attn_size else gen.dense_cache(loaded.latent_size, num_chunks))
    baseline = _generate(loaded, base_cache, num_chunks, seed)
    ref = baseline.pop("video")
    num_frames = ref.shape[0] * ref.shape[1]
    windows = frame_windows(ref.shape[1], loaded.fps)
    from tqdm.auto import tqdm

    rows, videos = [], {}
    for v in tqdm(variants, desc="causal cache variants", unit="variant", disable=not progress):
        run = _generate(loaded, gen.compressed_cache(policies[v.name], loaded.latent_size), num_chunks, seed)
        videos[v.name] = run.pop("video")
        metrics = video_metrics(ref, videos[v.name], lpips="auto")
        codec_rate = None
        if v.codec != "none":
            from octopus_diffusers.codecs import get_codec

            codec_rate = get_codec(v.codec, gen.head_dim, v.bits, **dict(v.options)).bits_per_scalar
        rows.append({"name": v.name, "codec": v.codec, "bits": v.bits, "options": dict(v.options),
                     "target_rate": v.target_rate, "codec_bits_per_scalar": codec_rate,
                     "policy": policies[v.name].to_dict(), **run, "metrics": metrics.to_dict(),
                     "windows": _windowed(metrics.per_frame, windows)})
    rows.sort(key=lambda r: (r["cache"]["bits_per_scalar"], r["name"]))
    results = {"format": RESULTS_FORMAT, "environment": environment(device),
               "config": {"model": model, "description": loaded.description, "weights": None if weights is None
                          else str(weights), "num_chunks": num_chunks, "chunk_frames": gen.chunk_frames,
                          "latent_size": list(loaded.latent_size), "seed": seed, "fps": loaded.fps,
                          "num_frames": num_frames, "schedule": list(gen.schedule.timesteps),
                          "dtype": str(gen.dtype), "windows": [list(w) for w in windows]},
               "baseline": baseline, "variants": rows}
    with staged_folder(out_dir) as tmp:
        _write_outputs(tmp, results)
        _write_videos(tmp, ref, videos, rows, loaded.fps)
    return out_dir


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
def _summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    base = results["baseline"]
    for r in [{"name": "baseline (dense cache)", "codec": "-", "bits": None, **base}] + results["variants"]:
        row = {"variant": r["name"], "codec": r["codec"], "nominal_bits": r.get("bits"),
               "target_rate": r.get("target_rate"),
               "true_bits_per_scalar": r["cache"]["bits_per_scalar"], "codec_bits_per_scalar": r.get("codec_bits_per_scalar"),
               "cache_bytes": r["cache"]["nbytes"], "bf16_bytes": r["cache"]["bf16_nbytes"],
               "peak_memory_bytes": r["peak_memory_bytes"],
               "seconds_per_chunk": sum(r["seconds_per_chunk"]) / len(r["seconds_per_chunk"])}
        for label, metrics in r.get("windows", {}).items():
            for metric, value in metrics.items():
                row[f"{metric}_{label}"] = value
        rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _write_videos(folder: Path, ref: torch.Tensor, videos: dict[str, torch.Tensor], rows: list[dict[str, Any]],
                  fps: float) -> None:
    """``side_by_side_<rate>.mp4`` per target rate (``side_by_side.mp4`` for nominal-bits runs): the
    baseline and each variant, the batch's videos side by side in each tile, with amplified differences."""
    from octopus_diffusers.eval.render import side_by_side_video

    def strip(video: torch.Tensor) -> torch.Tensor:   # (B, F, C, H, W) -> (F, C, H, B * W)
        return torch.cat(list(video.float().cpu()), dim=-1)

    groups: dict[float | None, list[str]] = {}
    for r in rows:
        if r["codec"] != "none":
            groups.setdefault(r["target_rate"], []).append(r["name"])
    for target, names in groups.items():
        name = "side_by_side.mp4" if target is None else f"side_by_side_{target:g}bits.mp4"
        side_by_side_video(strip(ref), [(n, strip(videos[n])) for n in names], folder / name, fps=fps,
                           baseline_label="dense cache")


def _write_outputs(folder: Path, results: dict[str, Any]) -> None:
    write_json(folder / "results.json", results)
    rows = _summary_rows(results)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (folder / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(to_jsonable(rows))
    fps = results["config"]["fps"]
    with (folder / "per_frame.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "frame", "time_s", "psnr", "ssim", "l1"])
        for v in results["variants"]:
            pf = v["metrics"]["per_frame"]
            for i in range(len(pf["psnr"])):
                writer.writerow([v["name"], i, f"{i / fps:.4f}", *to_jsonable([pf["psnr"][i], pf["ssim"][i], pf["l1"][i]])])
    _plot_drift(folder / "drift.png", results)
    _plot_vs_bits(folder / "psnr_vs_bits.png", results)
    (folder / "report.md").write_text(markdown_report(results, rows))


def markdown_report(results: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> str:
    """The run's Markdown report: setup, environment, one table of every variant (by true bits)."""
    rows = rows or _summary_rows(results)
    cfg, env = results["config"], results["environment"]
    lines = [f"# Causal generation with compressed KV caches: {cfg['description']}", "",
             f"{cfg['num_chunks']} chunks x {cfg['chunk_frames']} latent frames, latent {cfg['latent_size']}, "
             f"{cfg['num_frames']} video frames at {cfg['fps']} fps, seed {cfg['seed']}, denoising timesteps "
             f"{cfg['schedule']}, transformer {cfg['dtype']}.",
             f"Device: {env.get('device')}; torch {env.get('torch')}, diffusers {env.get('diffusers')}; commit "
             f"{env.get('git_commit')}.", "",
             "Baseline: the same seed and prompts with the plain uncompressed cache. *True bits/scalar* counts every "
             "byte the cache holds at the end (exact sink and newest chunks, text K/V, codes, norms) over the "
             "scalars held; compare codecs along that column, not the nominal bits. Peak memory is "
             f"{results['baseline']['peak_memory_kind']}.", ""]
    metric_cols = [c for c in rows[-1] if c.startswith(("psnr_", "ssim_"))]
    head = ["variant", "true bits/scalar", "codec bits/scalar", "cache bytes", "x vs bf16", "peak memory",
            "s/chunk", *metric_cols]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = r["bf16_bytes"] / r["cache_bytes"] if r["cache_bytes"] else float("nan")
        cells = [r["variant"], _fmt(r["true_bits_per_scalar"]), _fmt(r["codec_bits_per_scalar"]), _fmt(r["cache_bytes"]),
                 _fmt(ratio), _fmt(r["peak_memory_bytes"]), _fmt(r["seconds_per_chunk"]),
                 *[_fmt(r.get(c)) for c in metric_cols]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![per-frame PSNR over time](drift.png)", "", "![PSNR against true bits](psnr_vs_bits.png)", "",
              "Videos: `side_by_side*.mp4` (the dense-cache baseline beside each variant, amplified differences "
              "below).", ""]
    return "\n".join(lines)


def _plot_drift(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fps = results["config"]["fps"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for v in results["variants"]:
        psnr = v["metrics"]["per_frame"]["psnr"]
        pts = [(i / fps, p) for i, p in enumerate(psnr) if math.isfinite(p)]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{v['name']} ({v['cache']['bits_per_scalar']:.2f} b)")
    for _, a, _b in results["config"]["windows"][1:]:
        ax.axvline(a / fps, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("PSNR vs uncompressed cache (dB)")
    ax.set_title("Drift over time (identical frames, PSNR = inf, not drawn)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_vs_bits(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [w[0] for w in results["config"]["windows"]]
    fig, axes = plt.subplots(1, len(labels), figsize=(4 * len(labels), 3.5), dpi=100, squeeze=False)
    for ax, label in zip(axes[0], labels):
        series: dict[str, list[tuple[float, float]]] = {}
        for v in results["variants"]:
            value = v["windows"][label]["psnr"]
            if math.isfinite(value):
                series.setdefault(v["codec"], []).append((v["cache"]["bits_per_scalar"], value))
        for codec, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=codec)
        ax.set_title(f"PSNR, {label}")
        ax.set_xlabel("true bits per scalar (cache)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("PSNR (dB)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Causal Wan with compressed KV caches: quality over time, bytes, memory")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--model", choices=MODELS, default="tiny")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--codecs", nargs="+", default=["octopus-2", "octopus-3", "octopus-4", "turboquant-2",
                                                        "turboquant-3", "turboquant-4"],
                        help="CODEC-BITS variants, or with --rates plain codec names")
    parser.add_argument("--rates", type=float, nargs="+", default=None,
                        help="target true bits per scalar: each codec at its setting matched to every rate")
    parser.add_argument("--num-chunks", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sink-chunks", type=int, default=1)
    parser.add_argument("--keep-newest", type=int, default=1)
    parser.add_argument("--local-attn-size", type=int, default=None)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="transformer dtype (default: float32 for tiny, bfloat16 for real models)")
    args = parser.parse_args(argv)
    path = run_causal(args.out_dir, codecs=args.codecs, rates=args.rates, model=args.model, weights=args.weights,
                      num_chunks=args.num_chunks, seed=args.seed, device=args.device, sink_chunks=args.sink_chunks,
                      keep_newest=args.keep_newest, local_attn_size=args.local_attn_size,
                      dtype=getattr(torch, args.dtype) if args.dtype else None)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
