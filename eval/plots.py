"""Plots of evaluation results: a metric against the true bit rate, one line per codec, and per-frame
PSNR curves of every variant. matplotlib with the Agg backend (no display needed)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from octopus_diffusers.pipelines.run_folder import BASELINE, true_rate  # noqa: E402

from .audio_metrics import HIGHER_IS_BETTER as AUDIO_HIGHER_IS_BETTER  # noqa: E402
from .video_metrics import HIGHER_IS_BETTER as VIDEO_HIGHER_IS_BETTER  # noqa: E402

HIGHER_IS_BETTER = {**VIDEO_HIGHER_IS_BETTER, **AUDIO_HIGHER_IS_BETTER}

METRIC_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "l1": "L1", "lpips": "LPIPS", "si_sdr": "SI-SDR (dB)",
                 "snr": "SNR (dB)", "mrstft": "multi-resolution STFT distance", "log_mel": "log-mel distance",
                 "lsd": "log-spectral distance (dB)", "stoi": "STOI", "pesq": "PESQ"}


def _metric_mean(variant: dict[str, Any], media: str, metric: str) -> float | None:
    summary = variant["metrics"].get(media, {}).get("summary", {})
    if metric not in summary:
        return None
    value = summary[metric]
    return value["mean"] if isinstance(value, dict) else value


def plot_metric_vs_bits(results: dict[str, Any], media: str, metric: str, path: Path) -> Path:
    """``metric`` (mean over frames / channels and prompts) against true bits per scalar, per codec.

    The baseline, codec ``none`` (the unquantized K/V, at the model dtype's 16 or 32 bits, would only
    stretch the axis) and non-finite points (identical output: infinite PSNR) are left out; the title
    says how many non-finite points were.
    """
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    left_out = 0
    for v in results["variants"]:
        if v["name"] == BASELINE or v["codec"] == "none":
            continue
        value = _metric_mean(v, media, metric)
        rate = true_rate(v)
        if value is None or rate is None or not math.isfinite(value):
            left_out += 1
            continue
        series[v["codec"]].append((float(rate), value))
    if not series:
        raise ValueError(f"no finite {media} {metric!r} values to plot")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for codec, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=codec)
    ax.set_xlabel("bits per scalar (true, overheads counted)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
    title = f"{media}: {metric} vs rate ({better} is better)"
    if left_out:
        title += f"; {left_out} non-finite point(s) left out"
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_per_frame(results: dict[str, Any], path: Path, metric: str = "psnr", prompt: int = 0) -> Path:
    """Per-frame ``metric`` of every variant for prompt ``prompt`` (infinite values are not drawn)."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    drawn = 0
    for v in sorted(results["variants"], key=lambda v: true_rate(v) or 0.0):
        video = v["metrics"].get("video")
        if video is None or v["name"] == BASELINE:
            continue
        curve = video["per_prompt"][prompt]["per_frame"][metric]
        if not any(math.isfinite(x) for x in curve):
            continue
        ax.plot(range(len(curve)), [x if math.isfinite(x) else float("nan") for x in curve], marker=".",
                label=f"{v['name']} ({true_rate(v):.2f} b/s)")
        drawn += 1
    if not drawn:
        plt.close(fig)
        raise ValueError(f"no variant has finite per-frame {metric!r} values to plot")
    ax.set_xlabel("frame")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(f"per-frame {metric} against the baseline, prompt {prompt}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_all(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Every rate plot the results support plus the per-frame PSNR curves of each prompt."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    has_rate_points = any(v["name"] != BASELINE and v["codec"] != "none" for v in results["variants"])
    for media in results["run"]["media"]:
        if not has_rate_points:
            break
        metrics = results["variants"][0]["metrics"][media]["summary"]
        for metric in metrics:
            paths.append(plot_metric_vs_bits(results, media, metric, out_dir / f"{media}_{metric}_vs_bits.png"))
    if "video" in results["run"]["media"] and has_rate_points:
        for prompt in range(len(results["run"]["prompts"])):
            paths.append(plot_per_frame(results, out_dir / f"video_psnr_per_frame_prompt{prompt}.png", prompt=prompt))
    return paths
