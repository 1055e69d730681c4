"""K/V codecs on a real trained diffusion network: the terrain consistency UNet.

``adaptive-terrain-diffusion`` ships a guided-diffusion / consistency-model UNet (10.5 M parameters,
28 self-attention blocks, head_dim 32) as ONNX. :func:`load_terrain_unet` converts it to an fx graph
(``octopus_diffusers.integrations.fx_attention.onnx_to_fx``); the fx pass then puts a codec on the
K and V of every attention. :func:`consistency_sample` draws heightmaps by multistep consistency
sampling (Song et al. 2023, algorithm 1) from fixed-seed noise, identical for every codec, so each
quantized heightmap is compared per sample with the unquantized one: PSNR and SSIM (torchmetrics)
on the heightmap in the model's unit range [0, 1], and the relative L2 error.

An image UNet, not a video or audio DiT: the numbers say what each codec does to trained
attention in a real denoiser, not what it does to a video model.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from octopus_diffusers.codecs import CodecError
from octopus_diffusers.pipelines.run_folder import staged_folder

from .codec_grid import (FULL_CODEC_SEEDS, QUICK_CODEC_SEEDS, CodecConfig, codec_grid, environment, markdown_table,
                         matched_table, rate_plot, summarize, write_part)

SIZE = 128
SIGMA_MIN = 0.002
#: Noise levels of the consistency sampler (the first is the model's sigma_max). The package's own
#: sampler is the distilled single step, used by both runs; ``run(sigmas=(80.0, 0.8))`` adds a step.
QUICK_SIGMAS = (80.0,)
FULL_SIGMAS = (80.0,)


def terrain_onnx_path() -> Path:
    """The packaged ONNX UNet (:class:`~.models.MissingRealPackage`, one line, when it is missing)."""
    from .models import asset_path

    return asset_path("terrain_unet")


_CONVERTED: dict[str, torch.fx.GraphModule] = {}


def load_terrain_unet() -> torch.fx.GraphModule:
    """A fresh fx copy of the UNet (converted once per process, then deep-copied)."""
    from octopus_diffusers.integrations.fx_attention import onnx_to_fx

    path = str(terrain_onnx_path())
    if path not in _CONVERTED:
        _CONVERTED[path] = onnx_to_fx(path)
    return copy.deepcopy(_CONVERTED[path])


def sampling_inputs(num_samples: int, sigmas: Sequence[float], seed: int = 0
                    ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Fixed noise for every step, ``(N, 1, 128, 128)`` each, and per-sample difficulty labels in [0, 1]."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    gen = torch.Generator().manual_seed(seed)
    noises = [torch.randn(num_samples, 1, SIZE, SIZE, generator=gen) for _ in sigmas]
    difficulty = torch.linspace(0.1, 0.9, num_samples) if num_samples > 1 else torch.tensor([0.5])
    return noises, difficulty


@torch.no_grad()
def consistency_sample(model: torch.nn.Module, noises: Sequence[torch.Tensor], sigmas: Sequence[float],
                       difficulty: torch.Tensor) -> torch.Tensor:
    """Multistep consistency sampling: denoise ``sigmas[0] * z0``, then for each later sigma re-noise
    the estimate to that level and denoise again. Returns ``(N, 1, 128, 128)`` in model space."""
    if len(noises) != len(sigmas) or not sigmas:
        raise ValueError("one noise tensor per sigma is required")
    n = noises[0].shape[0]
    x = noises[0] * sigmas[0]
    estimate = model(x, torch.full((n,), float(sigmas[0])), difficulty)
    for z, sigma in zip(noises[1:], sigmas[1:]):
        x = estimate + z * (sigma ** 2 - SIGMA_MIN ** 2) ** 0.5
        estimate = model(x, torch.full((n,), float(sigma)), difficulty)
    return estimate


def to_unit(heightmaps: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] to the unit range the package's decoder uses (clipped)."""
    return ((heightmaps + 1.0) * 0.5).clamp(0.0, 1.0)


def sample_metrics(reference: torch.Tensor, test: torch.Tensor) -> dict[str, list[float]]:
    """Per-sample PSNR / SSIM (data range 1) and relative L2 of unit-range heightmaps ``(N, 1, H, W)``."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    psnr = peak_signal_noise_ratio(test, reference, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(test, reference, data_range=1.0, reduction="none")
    rel = (test - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1).clamp_min(1e-12)
    return {"psnr": psnr.tolist(), "ssim": ssim.tolist(), "rel_l2": rel.tolist()}


def run_config(cfg: CodecConfig | None, noises: Sequence[torch.Tensor], sigmas: Sequence[float],
               difficulty: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
    """Sample with K/V through ``cfg`` (``None``: the unquantized graph). Returns the heightmaps
    and the run's measured rate and time."""
    from octopus_diffusers.integrations.fx_attention import quantize_fx_attention

    model = load_terrain_unet()
    handle = quantize_fx_attention(model, seed=seed, **cfg.fx_kwargs()) if cfg is not None else None
    start = time.perf_counter()
    out = consistency_sample(model, noises, sigmas, difficulty)
    info = {"seconds": time.perf_counter() - start,
            "measured_bits_per_scalar": handle.bits_per_scalar if handle else None,
            "attention_sites": len(handle.sites) if handle else None,
            "head_dims": sorted({d for d in handle.head_dims().values() if d}) if handle else None}
    return out, info


def _grid_png(path: Path, reference: torch.Tensor, tests: Sequence[tuple[str, torch.Tensor]],
              amplify: float) -> Path:
    """Rows: samples; columns: unquantized, then each codec; under each sample its |difference|
    times ``amplify`` (shared scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, cols = reference.shape[0], 1 + len(tests)
    fig, axes = plt.subplots(2 * n, cols, figsize=(1.6 * cols, 3.3 * n), squeeze=False)
    for i in range(n):
        panels = [("unquantized", reference[i, 0])] + [(label, t[i, 0]) for label, t in tests]
        for j, (label, img) in enumerate(panels):
            ax, dax = axes[2 * i, j], axes[2 * i + 1, j]
            ax.imshow(img.numpy(), cmap="terrain", vmin=0, vmax=1)
            ax.set_title(label, fontsize=7)
            diff = (img - reference[i, 0]).abs() * amplify
            dax.imshow(diff.clamp(0, 1).numpy(), cmap="magma", vmin=0, vmax=1)
            dax.set_title(f"|diff| x{amplify:g}" if j else "", fontsize=6)
            for a in (ax, dax):
                a.set_xticks([])
                a.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Mean PSNR and SSIM against the true bits per scalar, one line per codec."""

    def draw(axes: Any) -> None:
        for codec in dict.fromkeys(r["codec_label"] for r in rows if r["codec"] != "none"):
            pts = sorted((r["measured_bits_per_scalar"], r["psnr_mean"], r["ssim_mean"], r["psnr_seed_lo"],
                          r["psnr_seed_hi"]) for r in rows if r["codec_label"] == codec)
            xs = [p[0] for p in pts]
            axes[0].errorbar(xs, [p[1] for p in pts], yerr=[[p[1] - p[3] for p in pts], [p[4] - p[1] for p in pts]],
                             fmt="o-", capsize=2, label=codec)
            axes[1].plot(xs, [1 - p[2] for p in pts], "o-", label=codec)
        axes[1].set_yscale("log")

    return rate_plot(path, ("PSNR (dB) vs unquantized (bars: per-seed means)", "1 - SSIM vs unquantized"), draw)


def run(out: Path, *, quick: bool, num_samples: int | None = None, sigmas: Sequence[float] | None = None,
        seed: int = 0) -> dict[str, Any]:
    """Sample heightmaps unquantized and with each codec configuration; write ``results.json``,
    ``results.csv``, ``per_sample.csv``, ``README.md``, ``metrics.png`` and ``grid_*bit.png`` into
    ``out`` (written to a temporary folder first, so a failed run leaves no half-written ``out``)."""
    out = Path(out)
    num_samples = num_samples or (2 if quick else 3)
    sigmas = tuple(sigmas or (QUICK_SIGMAS if quick else FULL_SIGMAS))
    head_dim = 32
    configs = codec_grid(head_dim, quick)
    noises, difficulty = sampling_inputs(num_samples, sigmas, seed)

    reference, ref_info = run_config(None, noises, sigmas, difficulty)
    from .capture import capture_terrain_qkv, kv_statistics

    statistics = kv_statistics(capture_terrain_qkv(seed))
    ref_unit = to_unit(reference)
    rows, per_sample, images, skipped = [], [], {}, []
    codec_seeds = QUICK_CODEC_SEEDS if quick else FULL_CODEC_SEEDS
    jobs = [(cfg, s) for cfg in configs for s in (codec_seeds if cfg.codec != "none" else codec_seeds[:1])]
    runs: dict[str, list[tuple[int, dict[str, list[float]], dict[str, Any], bool]]] = {}
    for cfg, codec_seed in tqdm(jobs, desc="terrain UNet codecs x seeds", unit="run"):
        if cfg.label in {s["config"] for s in skipped}:
            continue
        try:
            heights, info = run_config(cfg, noises, sigmas, difficulty, codec_seed)
        except CodecError as error:  # a codec refusing this model's K/V: recorded, not fatal
            skipped.append({"config": cfg.label, "message": str(error)})
            tqdm.write(f"terrain: {cfg.label} skipped: {error}")
            continue
        if info["head_dims"] != [head_dim]:
            raise RuntimeError(f"terrain UNet head_dims {info['head_dims']}, expected [{head_dim}]")
        unit = to_unit(heights)
        images.setdefault(cfg.label, unit)  # the grids show the first seed
        runs.setdefault(cfg.label, []).append(
            (codec_seed, sample_metrics(ref_unit, unit), info, bool(torch.equal(heights, reference))))
        for i in range(num_samples):
            per_sample.append({"config": cfg.label, "codec_seed": codec_seed, "sample": i,
                               "difficulty": float(difficulty[i]),
                               **{k: v[i] for k, v in runs[cfg.label][-1][1].items()}})
    for cfg in configs:
        if cfg.label not in runs:
            continue
        done = runs[cfg.label]
        rows.append({"codec_label": cfg.family, "config": cfg.label, "codec": cfg.codec,
                     "bits_nominal": cfg.bits, "bits_per_scalar": cfg.bits_per_scalar(head_dim),
                     "measured_bits_per_scalar": done[0][2]["measured_bits_per_scalar"],
                     "codec_seeds": [d[0] for d in done],
                     **summarize([d[1]["psnr"] for d in done], "psnr"),
                     **summarize([d[1]["ssim"] for d in done], "ssim"),
                     **summarize([d[1]["rel_l2"] for d in done], "rel_l2"),
                     "bit_identical": all(d[3] for d in done),
                     "seconds": sum(d[2]["seconds"] for d in done) / len(done)})
    none_rows = [r for r in rows if r["codec"] == "none"]
    if none_rows and not all(r["bit_identical"] for r in none_rows):
        raise RuntimeError("codec 'none' did not reproduce the unquantized heightmaps exactly")

    with staged_folder(out, overwrite=True, is_ours=lambda folder: (folder / "results.json").is_file()) as tmp:
        grids = []
        configs = [c for c in configs if c.label in images]
        octopus_rate = {c.bits: c.bits_per_scalar(head_dim) for c in configs if c.codec == "octopus"}
        for b in sorted({c.bits for c in configs if c.codec not in ("none", "fp8") and "@" not in c.label}):
            matched = f"turboquant@{octopus_rate[b]:g}" if b in octopus_rate else None
            tests = [(c.label, images[c.label]) for c in configs
                     if (c.bits == b and "@" not in c.label) or c.label == matched]
            grids.append(_grid_png(tmp / f"grid_{b:g}bit.png", ref_unit, tests, amplify=50.0).name)
        plot = _plot(tmp / "metrics.png", rows).name
        results = {"part": "terrain", "model": "terrain consistency UNet (adaptive-terrain-diffusion 0.4.2, "
                                               "ONNX fp32 weights via onnx2torch)",
                   "quick": quick, "num_samples": num_samples, "sigmas": list(sigmas), "seed": seed,
                   "codec_seeds": list(codec_seeds),
                   "head_dim": head_dim, "attention_sites": 28, "reference_seconds": ref_info["seconds"],
                   "environment": environment(), "rows": rows, "skipped": skipped, "per_sample": per_sample,
                   "kv_statistics": statistics,
                   "files": {"grids": grids, "plot": plot}}
        write_part(tmp, results, {"results.csv": rows, "per_sample.csv": per_sample}, markdown(results))
    return results


def _psnr_ssim(row: dict[str, Any] | None) -> str:
    """One matched-table cell: mean PSNR (per-seed range) and mean SSIM."""
    if row is None:
        return "-"
    return f"{row['psnr_mean']:.1f} dB ({row['psnr_seed_lo']:.1f}-{row['psnr_seed_hi']:.1f}), SSIM {row['ssim_mean']:.4f}"


def markdown(results: dict[str, Any]) -> str:
    """The part's report: setup, the table, matched-rate comparison, plots."""
    env = results["environment"]
    lines = ["# Terrain consistency UNet: K/V codecs vs the unquantized run", "",
             f"Model: {results['model']}; {results['attention_sites']} self-attention blocks, head_dim "
             f"{results['head_dim']}; K and V of every attention through the codec (fx pass). "
             f"{results['num_samples']} heightmaps, consistency sampling in {len(results['sigmas'])} step(s) "
             f"(sigmas {results['sigmas']}), noise seed {results['seed']}, same noise for every codec; codec "
             f"seeds {results['codec_seeds']} (rotations/sketches; each attention adds its index). PSNR/SSIM on "
             "the heightmap in unit range [0, 1] against the unquantized run: mean and worst over samples "
             "and seeds, and the lowest / highest per-seed mean.",
             "", f"Machine: {env['device']}; torch {env['torch']}, onnx2torch {env['onnx2torch']}, "
             f"commit {env['git_commit']}.", ""]
    lines += markdown_table(
        ["config", "nominal bits", "codec bits/scalar", "measured bits/scalar", "PSNR mean", "PSNR min",
         "PSNR per-seed lo-hi", "SSIM mean", "SSIM min", "rel L2", "seconds/run"],
        [[r["config"], r["bits_nominal"], r["bits_per_scalar"], r["measured_bits_per_scalar"],
          r["psnr_mean"], r["psnr_min"], f"{r['psnr_seed_lo']:.4g}-{r['psnr_seed_hi']:.4g}", r["ssim_mean"],
          r["ssim_min"], r["rel_l2_mean"], r["seconds"]]
         for r in results["rows"]])
    matched = matched_table(results["rows"], _psnr_ssim)
    if matched:
        lines += ["", "## At the same true rate (PSNR mean, per-seed lo-hi; SSIM mean)", "", *matched]
    lines += [f"- skipped {s['config']}: {s['message']}" for s in results.get("skipped", [])]
    if results.get("kv_statistics"):
        stats = results["kv_statistics"]
        lines += ["", "## K/V statistics (one sample at sigma_max)", "",
                  "Share of the energy in an offset shared by all tokens of a head, and the largest "
                  "channel's max |x| over the median channel's, over the 28 attentions:", ""]
        lines += markdown_table(["role", "offset share min", "offset share max", "max/median channel max"],
                                [[role, min(r["shared_offset_share"] for r in stats if r["role"] == role),
                                  max(r["shared_offset_share"] for r in stats if r["role"] == role),
                                  max(r["channel_max_over_median"] for r in stats if r["role"] == role)]
                                 for role in ("key", "value")], digits=3)
    lines += ["", f"![metrics]({results['files']['plot']})", ""]
    lines += [f"![{g}]({g})" for g in results["files"]["grids"]]
    return "\n".join(lines) + "\n"
