"""Write evaluation results (from :func:`octopus_diffusers.eval.evaluate.evaluate_run`) as JSON, CSV and Markdown.

* ``metrics.json``: everything, per-frame curves included; strict JSON (infinite PSNR is ``"inf"``);
* ``metrics.csv``: one tidy row per variant x prompt x media x metric (mean, min, max, worst frame);
* ``report.md``: one table per media, rows sorted by TRUE bits per scalar (the rate every comparison
  is made at; the nominal setting is only a label), the rate matching, the skipped metrics with
  reasons, and links to the plots and renders given to it.

Every file is written to a temporary name and renamed into place, so an interrupted write leaves the
previous file, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from octopus_diffusers.pipelines.run_folder import BASELINE, to_jsonable, true_rate

#: Column order and headers of the Markdown tables (metrics missing from a run are left out).
VIDEO_COLUMNS = (("psnr", "PSNR dB"), ("ssim", "SSIM"), ("l1", "L1"), ("lpips", "LPIPS"))
AUDIO_COLUMNS = (("si_sdr", "SI-SDR dB"), ("snr", "SNR dB"), ("mrstft", "MR-STFT"), ("log_mel", "log-mel"),
                 ("lsd", "LSD dB"), ("stoi", "STOI"), ("pesq", "PESQ"))
CSV_FIELDS = ("variant", "codec", "bits", "setting", "target_rate", "bits_per_scalar", "kv_bytes", "kv_bytes_fp16",
              "prompt", "media", "metric", "mean", "min", "max", "worst_frame")
REPORT_NAME = "report.md"


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def by_rate(variants: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The baseline first, then variants by true bits per scalar (ties: codec name, manifest order)."""
    order = {id(v): i for i, v in enumerate(variants)}
    return sorted(variants, key=lambda v: (v["name"] != BASELINE, true_rate(v) or 0.0, v["codec"] or "",
                                           order[id(v)]))


def setting(variant: dict[str, Any]) -> str:
    """The codec setting behind a variant: nominal bits and options (``alloc (2, 2, 1)``, ``group 16``)."""
    if variant.get("codec") is None:
        return "–"
    if variant["codec"] == "none":
        return "stored unchanged"
    options = variant.get("options") or {}
    parts = [] if "allocation" in options else [f"{variant['bits']:g} b"]
    for key, value in options.items():
        if key == "allocation":
            parts.append("alloc (" + ", ".join(str(b) for b in value) + ")")
        elif key == "group_size":
            parts.append(f"group {value}")
        elif key != "axis":
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def write_metrics_json(results: dict[str, Any], path: Path) -> None:
    _write_atomic(path, json.dumps(to_jsonable(results), indent=2, allow_nan=False) + "\n")


def _csv_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for v in by_rate(results["variants"]):
        kv = v.get("kv") or {}
        base = {"variant": v["name"], "codec": v["codec"] or "", "bits": "" if v["bits"] is None else v["bits"],
                "setting": setting(v) if v["codec"] else "",
                "target_rate": "" if v.get("target_rate") is None else v["target_rate"],
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
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(_csv_rows(results))
    _write_atomic(path, buffer.getvalue())


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
    variants = by_rate([v for v in results["variants"] if media in v["metrics"]])
    columns = VIDEO_COLUMNS if media == "video" else AUDIO_COLUMNS
    present = [(k, h) for k, h in columns if k in variants[0]["metrics"][media]["summary"]]
    matched = any(v.get("target_rate") is not None for v in variants)
    header = ["true bits/scalar"] + (["target"] if matched else []) + ["variant", "codec", "setting",
                                                                       "KV stored / fp16"]
    if media == "video":
        header += [f"{h} mean" for _, h in present] + ["PSNR worst (prompt, frame)"]
    else:
        header += [h for _, h in present]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for v in variants:
        summary = v["metrics"][media]["summary"]
        rate = true_rate(v)
        cells = ["–" if rate is None else f"{rate:.3f}"]
        if matched:
            cells.append("–" if v.get("target_rate") is None else f"{v['target_rate']:g}")
        cells += [v["name"], v["codec"] or "–", setting(v), _kv_cell(v.get("kv"))]
        if media == "video":
            cells += [_fmt(summary[k]["mean"], 2 if k == "psnr" else 4) for k, _ in present]
            psnr = summary["psnr"]
            cells.append(f"{_fmt(psnr['worst'], 2)} ({psnr['worst_prompt']}, {psnr['worst_frame']})")
        else:
            cells += [_fmt(summary[k], 2 if k in ("si_sdr", "snr", "lsd") else 4) for k, _ in present]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _environment_lines(env: dict[str, Any] | None) -> list[str]:
    if not env:
        return []
    return [f"- commit `{env.get('git_commit') or 'unknown'}` on {env.get('device')}"
            + (f" ({env['gpu']})" if env.get("gpu") else "")
            + f"; torch {env.get('torch')}, diffusers {env.get('diffusers', '?')}, python {env.get('python')}"]


def _matching_lines(matching: dict[str, Any] | None) -> list[str]:
    if not matching:
        return ["- codecs ran at nominal bit widths, so their true rates differ: compare rows by true "
                "bits/scalar, not by the setting"]
    lines = [f"- codecs compared at matched true rates {', '.join(f'{t:g}' for t in matching['targets'])} "
             f"bits/scalar: each got the setting whose true rate at head_dim {matching['head_dim']} is closest "
             f"(within {matching['tolerance']:g})"]
    if matching.get("unmatched"):
        lines.append("- no setting near the target (left out): " + ", ".join(
            f"{u['codec']} at {u['target']:g}" for u in matching["unmatched"]))
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
             *_environment_lines(run.get("environment")),
             "- every variant uses the same seed and prompts; metrics compare it with the unquantized "
             "baseline (the baseline row scores the baseline against itself: ∞ PSNR and zero spectral distances "
             "expected; SI-SDR/SNR are then capped only by their epsilon)",
             "- true bits/scalar is the stored rate measured over every K/V the attention encoded (norms, scales "
             "and padding counted; codec `none` stores the model's own dtype); rows are sorted by it. KV "
             "bytes are what the quantized attention stored against the same K/V in fp16",
             *_matching_lines(run.get("rate_matching")), ""]
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
    paths = {"json": out_dir / "metrics.json", "csv": out_dir / "metrics.csv", "markdown": out_dir / REPORT_NAME}
    write_metrics_json(results, paths["json"])
    write_metrics_csv(results, paths["csv"])
    _write_atomic(paths["markdown"], markdown_report(results, images, videos))
    return paths
