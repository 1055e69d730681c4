"""The one results table of the kernel benchmark: ``docs/kernels/results.csv``.

Each benchmark row (the JSON rows of :mod:`.kernel_benchmark`) becomes one or more flat CSV rows with
the run's provenance beside the number, appended so that the table keeps every run. ``speed`` is the
row's speed relative to its section's baseline, higher is better: the fraction of device-copy
bandwidth (``codec``), the best fp16/bf16 SDPA time over this time (``attention``), the fp16 step time
over this step time (``wan``); ``check`` is the correctness figure of the row (code mismatch rate
against the CPU codec, relative error against decode-then-attend, relative output change).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterable, Iterator

COLUMNS = ["date", "commit", "gpu", "torch", "triton", "section", "shape", "dtype", "codec", "bits", "method",
           "ms", "graph_ms", "gb_per_s", "speed", "check"]


def provenance(env: dict[str, Any]) -> dict[str, str]:
    """The provenance columns of a run: from an :func:`octopus_diffusers.env.environment` record (short
    ``git_commit``, the day of ``date``), or from the ``commit`` / ``date`` given by hand (``--commit``,
    or a run JSON written before the record had ``git_commit``)."""
    commit = env.get("commit") or (env.get("git_commit") or "unknown").split()[0][:7]
    return {"date": str(env.get("date", ""))[:10], "commit": commit, "gpu": env.get("gpu") or "",
            "torch": env.get("torch", ""), "triton": env.get("triton", "")}


def _split_label(label: str) -> tuple[str, str, str]:
    """``"turboquant3_fused"`` -> (codec, bits, method); ``"sdpa_cudnn"`` -> ("", "", "sdpa_cudnn")."""
    head, _, method = label.rpartition("_")
    if head.startswith("sdpa") or not head:
        return "", "", label
    codec = head.rstrip("0123456789.")
    return codec, head[len(codec):], method


def flatten(row: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The CSV rows of one benchmark row (without the provenance columns)."""
    section = row["section"]
    if section == "copy":
        yield {"section": "copy", "shape": f"{row['bytes']} B", "ms": row["ms"], "gb_per_s": row["GB/s"]}
    elif section == "codec":
        shape = "x".join(map(str, row["shape"]))
        for method, ms in row["ms"].items():
            yield {"section": "codec", "shape": shape, "dtype": "torch.float16", "codec": row["codec"],
                   "bits": row["bits"], "method": method, "ms": ms, "gb_per_s": row["GB/s"][method],
                   "speed": row["pct_of_copy"][method] / 100, "check": row["fused_code_mismatch_vs_cpu"]}
    elif section == "attention_bound":
        yield {"section": "attention", "shape": row["shape_name"], "dtype": row["dtype"], "method": "fp16_kv_read",
               "ms": row["kv_fp16_read_ms"], "speed": row["kv_read_share_of_sdpa"]}
    elif section == "attention":
        codec, bits, method = _split_label(row["method"])
        best = row.get("best_sdpa_ms")
        yield {"section": "attention", "shape": f"{row['shape_name']} {'x'.join(map(str, row['shape']))}",
               "dtype": row["dtype"], "codec": codec, "bits": bits, "method": method, "ms": row["ms"],
               "graph_ms": row.get("graph_ms"), "speed": best / row["ms"] if best else None,
               "check": row.get("rel_err_vs_decoded")}
    elif section == "crossover":
        shape = f"1x{row['heads']}x{row['nq']}x{row['nkv']}x{row['d']}"
        for method in ("fused", "decoded"):
            yield {"section": "crossover", "shape": shape, "dtype": "torch.float16", "codec": row["codec"],
                   "bits": row["bits"], "method": method, "ms": row[f"{method}_ms"],
                   "graph_ms": row[f"{method}_graph_ms"]}
    elif section == "wan":
        best = min(row["fp16_step_ms_default_sdpa"], row["fp16_step_ms_cudnn_first"])
        yield {"section": "wan", "shape": f"Wan-1.3B step, {row['tokens']} tokens", "dtype": "torch.float16",
               "codec": row["codec"], "bits": row["bits"], "method": row["config"], "ms": row["compressed_step_ms"],
               "speed": best / row["compressed_step_ms"], "check": row["rel_output_change"]}
    else:
        raise ValueError(f"unknown benchmark section {section!r} in a result row")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def append_rows(path: Path, env: dict[str, Any], rows: Iterable[dict[str, Any]]) -> int:
    """Append the flattened ``rows`` of a run with provenance ``env`` to the CSV ``path`` (header
    written when the file is new); returns how many CSV rows were written."""
    flat = [{**provenance(env), **r} for row in rows for r in flatten(row)]
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with path.open(newline="") as f:
            header = next(csv.reader(f), None)
        if header != COLUMNS:
            raise ValueError(f"{path} has columns {header}, expected {COLUMNS}: not a kernel results table")
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        for r in flat:
            writer.writerow({k: _cell(r.get(k)) for k in COLUMNS})
    return len(flat)
