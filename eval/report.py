"""Write evaluation results (from :func:`octopus_diffusers.eval.evaluate.evaluate_run`) as JSON, CSV and Markdown.

* ``metrics.json``: everything, per-frame curves included; strict JSON (infinite PSNR is ``"inf"``);
* ``metrics.csv``: one tidy row per variant x prompt x media x metric (mean, min, max, worst frame);
* ``report.md``: one table per media across codecs and bits, the skipped metrics with reasons, and
  links to the plots and renders given to it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from octopus_diffusers.pipelines.run_folder import write_json

#: Column order and headers of the Markdown tables (metrics missing from a run are left out).
VIDEO_COLUMNS = (("psnr", "PSNR dB"), ("ssim", "SSIM"), ("l1", "L1"), ("lpips", "LPIPS"))
AUDIO_COLUMNS = (("si_sdr", "SI-SDR dB"), ("snr", "SNR dB"), ("mrstft", "MR-STFT"), ("log_mel", "log-mel"),
                 ("lsd", "LSD dB"), ("stoi", "STOI"), ("pesq", "PESQ"))
CSV_FIELDS = ("variant", "codec", "bits", "bits_per_scalar", "kv_bytes", "kv_bytes_fp16", "prompt", "media",
              "metric", "mean", "min", "max", "worst_frame")


def write_metrics_json(results: dict[str, Any], path: Path) -> None:
    write_json(path, results)


def _csv_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for v in results["variants"]:
        kv = v.get("kv") or {}
        base = {"variant": v["name"], "codec": v["codec"] or "", "bits": "" if v["bits"] is None else v["bits"],
                "bits_per_scalar": "" if v["bits_per_scalar"] is None else v["bits_per_scalar"],
                "kv_bytes": kv.get("bytes_stored", ""), "kv_bytes_fp16": kv.get("bytes_fp16", "")}
        for media, block in v["metrics"].items():
            for prompt, result in enumerate(block["per_prompt"]):
                for metric, stats in result["summary"].items():
                    if isinstance(stats, dict):  # video: mean / min / max / worst frame
                        row = {"mean": stats["mean"], "min": stats["min"], "max": stats["max"],
                               "worst_frame": stats["worst_frame"]}
                    else:  # audio: one value per output
                        row = {"mean": stats, "min": "", "max": "", "worst_frame": ""}
                    rows.append(base | {"prompt": prompt, "media": media, "metric": metric} | row)
    return rows


def write_metrics_csv(results: dict[str, Any], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(_csv_rows(results))


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _kv_cell(kv: dict[str, Any] | None) -> str:
    if not kv:
        return "–"
    return (f"{_fmt_bytes(kv['bytes_stored'])} / {_fmt_bytes(kv['bytes_fp16'])} "
            f"({kv['bytes_fp16'] / max(kv['bytes_stored'], 1):.1f}x)")


def _media_table(results: dict[str, Any], media: str) -> list[str]:
    variants = [v for v in results["variants"] if media in v["metrics"]]
    columns = VIDEO_COLUMNS if media == "video" else AUDIO_COLUMNS
    present = [(k, h) for k, h in columns if k in variants[0]["metrics"][media]["summary"]]
    header = ["variant", "codec", "bits", "bits/scalar", "KV stored / fp16"]
    if media == "video":
        header += [f"{h} mean" for _, h in present] + ["PSNR worst (prompt, frame)"]
    else:
        header += [h for _, h in present]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for v in variants:
        summary = v["metrics"][media]["summary"]
        bits = "–" if v["bits"] is None else f"{v['bits']:g}"
        cells = [v["name"], v["codec"] or "–", bits, _fmt(v["bits_per_scalar"]), _kv_cell(v.get("kv"))]
        if media == "video":
            cells += [_fmt(summary[k]["mean"], 2 if k == "psnr" else 4) for k, _ in present]
            psnr = summary["psnr"]
            cells.append(f"{_fmt(psnr['worst'], 2)} ({psnr['worst_prompt']}, {psnr['worst_frame']})")
        else:
            cells += [_fmt(summary[k], 2 if k in ("si_sdr", "snr", "lsd") else 4) for k, _ in present]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_report(results: dict[str, Any], images: Sequence[str | Path] = (),
                    videos: Sequence[str | Path] = ()) -> str:
    """The Markdown report text; ``images`` / ``videos`` are paths relative to the report to link."""
    run = results["run"]
    model = run.get("model") or {}
    lines = [f"# KV quantization report: {model.get('name', '?')}", "",
             f"- model source: `{model.get('source', '?')}` ({model.get('pipeline_class', '?')}, "
             f"{model.get('dtype', '?')}, device {model.get('device', '?')})",
             f"- seed {run.get('seed')}, {run.get('steps')} steps, {len(run.get('prompts') or [])} prompt(s)",
             "- every variant uses the same seed and prompts; metrics compare it with the unquantized "
             "baseline (the baseline row scores the baseline against itself: ∞ PSNR and zero spectral distances "
             "expected; SI-SDR/SNR are then capped only by their epsilon)",
             "- bits/scalar is the true stored rate (norms, scales and padding counted); KV bytes are what "
             "the quantized attention stored against the same K/V in fp16", ""]
    for media in run.get("media") or []:
        lines += [f"## {media.capitalize()}", ""]
        if media == "video":
            lines += ["Per-frame metrics averaged over frames and prompts; the worst frame is the lowest "
                      "PSNR of any prompt.", ""]
        lines += _media_table(results, media) + [""]
        skipped = results["variants"][0]["metrics"][media].get("skipped") or {}
        if skipped:
            lines += ["Not computed: " + "; ".join(f"{k} ({why})" for k, why in skipped.items()), ""]
    if images:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).as_posix()})" for p in images] + [""]
    if videos:
        lines += ["## Renders", ""] + [f"- [{Path(p).name}]({Path(p).as_posix()})" for p in videos] + [""]
    return "\n".join(lines)


def write_reports(results: dict[str, Any], out_dir: Path, images: Sequence[str | Path] = (),
                  videos: Sequence[str | Path] = ()) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.csv`` and ``report.md`` into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "metrics.json", "csv": out_dir / "metrics.csv", "markdown": out_dir / "report.md"}
    write_metrics_json(results, paths["json"])
    write_metrics_csv(results, paths["csv"])
    paths["markdown"].write_text(markdown_report(results, images, videos))
    return paths
