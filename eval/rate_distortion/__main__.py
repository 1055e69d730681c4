"""Rate–distortion benchmark of every registered KV codec.

Measures, at the nominal rates each codec honours (refusals are recorded with the codec's reason):
the true bits/scalar (``codec.bits_per_scalar``, cross-checked with ``8·packed.nbytes/numel``),
the relative error ``||x − x̂||²/||x||²`` (``E||u − û||²`` on unit vectors), inner-product error and
bias against random queries, and the relative error of ``softmax(QKᵀ/√d)V`` with compressed K and V,
on (a) uniform unit vectors, (b) Gaussian vectors with heavy outlier channels (d = 64, 128) and
(c) real all-MiniLM-L6-v2 keys/values (d = 32). It then sweeps OCTOPUS bit allocations
(b_ξ, b_η, b_ρ), reports the frontier and, at matched true rate, how OCTOPUS compares with
TurboQuant; and it checks the ``codecs.md`` §4 numbers.

Run: ``python -m octopus_diffusers.eval.rate_distortion --out rd_out [--quick]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from octopus_diffusers.codecs import Codec, CodecError, available_codecs, get_codec

from . import rd_analysis as analysis
from .rd_datasets import RDDataset, minilm_dataset, synthetic_dataset
from .rd_metrics import (
    attention_relative_error, inner_product_errors, per_vector_relative_error, relative_mse)

DATASET_KINDS = ("unit", "outlier", "minilm")


@dataclass(frozen=True)
class BenchSize:
    """How much work a run does."""

    head_dims: tuple[int, ...]
    rates: tuple[float, ...]
    n_ip_queries: int
    n_attn_problems: int
    n_attn_keys: int
    n_attn_queries: int
    minilm_paragraphs: int
    minilm_heads: int
    sweep_vectors: int
    sweep_bits: tuple[int, ...]
    sweep_rho_bits: tuple[int, ...]
    sweep_targets: tuple[float, ...]
    turboquant_curve: tuple[float, ...]
    repro_vectors: int
    repro_head_dims: tuple[int, ...]
    #: Matched-rate grid: every whole number of bytes per vector, every ``grid_step_bytes``-th one,
    #: whose true rate lies in ``grid_rates`` (bits per scalar).
    grid_step_bytes: int = 1
    grid_rates: tuple[float, float] = (1.5, 5.0)


SIZES: dict[str, BenchSize] = {
    "quick": BenchSize(head_dims=(64,), rates=(2.0, 3.0, 4.0), n_ip_queries=16,
                       n_attn_problems=1, n_attn_keys=256, n_attn_queries=16, minilm_paragraphs=2,
                       minilm_heads=12, sweep_vectors=256, sweep_bits=(2, 3), sweep_rho_bits=(0, 1, 2),
                       sweep_targets=(2.5, 3.5), turboquant_curve=(1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0),
                       repro_vectors=1024, repro_head_dims=(128,), grid_step_bytes=8),
    "full": BenchSize(head_dims=(64, 128), rates=(1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0),
                      n_ip_queries=64, n_attn_problems=4, n_attn_keys=1024,
                      n_attn_queries=64, minilm_paragraphs=10, minilm_heads=24, sweep_vectors=2048,
                      sweep_bits=(1, 2, 3, 4, 5, 6), sweep_rho_bits=(0, 1, 2, 3, 4, 5, 6),
                      sweep_targets=(2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0),
                      turboquant_curve=tuple(x / 4 for x in range(4, 27)), repro_vectors=16384,
                      repro_head_dims=(64, 128)),
}


@dataclass(frozen=True)
class Variant:
    """One codec configuration on the chart: a registry name plus options.

    ``key_options`` / ``value_options`` apply only when compressing keys / values (the KIVI-style
    ``uniform`` codec groups keys per channel and values per token). ``extra_rates`` are nominal
    rates measured besides the size's grid (the rates fixed-width formats honour).
    """

    label: str
    codec: str
    options: dict[str, Any] = field(default_factory=dict)
    key_options: dict[str, Any] = field(default_factory=dict)
    value_options: dict[str, Any] = field(default_factory=dict)
    extra_rates: tuple[float, ...] = ()
    input_dtypes: dict[float, torch.dtype] = field(default_factory=dict)

    def build(self, head_dim: int, bits: float, seed: int, role: str) -> Codec:
        role_options = self.key_options if role == "key" else self.value_options
        return get_codec(self.codec, head_dim, bits, seed=seed, **self.options, **role_options)


#: Codecs with more than one configuration on the chart, or with their own rates.
_SPECIAL_VARIANTS: dict[str, list[Variant]] = {
    "octopus": [Variant("octopus", "octopus", {"joint_rounding": True}),
                Variant("octopus-nearest", "octopus", {"joint_rounding": False})],
    "turboquant": [Variant("turboquant", "turboquant", extra_rates=(5.5, 6.0))],
    "uniform": [Variant("uniform", "uniform", key_options={"axis": "channel"},
                        value_options={"axis": "token"})],
    "fp8": [Variant("fp8", "fp8", extra_rates=(8.0,))],
    # the identity stores its input: at 16 bits the error measured is float16 rounding, at 32 none
    "none": [Variant("none", "none", extra_rates=(16.0, 32.0), input_dtypes={16.0: torch.float16})],
}


def benchmark_variants(codecs: Iterable[str] | None = None) -> list[Variant]:
    """The configurations measured: every registered codec (or the ``codecs`` named)."""
    registered = available_codecs()
    names = list(codecs) if codecs is not None else registered
    unknown = [n for n in names if n not in registered]
    if unknown:
        raise CodecError(f"unknown codec(s) {unknown}; available: {', '.join(registered)}")
    return [v for n in names for v in _SPECIAL_VARIANTS.get(n, [Variant(n, n)])]


# ---- one measurement ---------------------------------------------------------------------------
def _roundtrip(codec: Codec, x: torch.Tensor, device: str,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, float]:
    """Decoded ``x`` (float32, CPU) and the measured bits/scalar of its packed form."""
    packed = codec.encode(x.to(device=device, dtype=dtype))
    return codec.decode(packed).float().cpu(), packed.bits_per_scalar


def measure(dataset: RDDataset, variant: Variant, bits: float, seed: int = 0,
            device: str = "cpu") -> dict[str, Any]:
    """All metrics of one codec configuration at one nominal rate on one dataset.

    Raises :class:`CodecError` when the codec refuses this (head_dim, bits).
    """
    key_codec = variant.build(dataset.head_dim, bits, seed, "key")
    value_codec = variant.build(dataset.head_dim, bits, seed, "value")
    dtype = variant.input_dtypes.get(float(bits), torch.float32)
    start = time.perf_counter()
    k_hat, measured_k = _roundtrip(key_codec, dataset.keys, device, dtype)
    v_hat, measured_v = _roundtrip(value_codec, dataset.values, device, dtype)
    seconds = time.perf_counter() - start
    rel_k = relative_mse(dataset.keys, k_hat)
    rel_v = relative_mse(dataset.values, v_hat)
    return {
        "dataset": dataset.label, "head_dim": dataset.head_dim, "codec": variant.label,
        "registry_name": variant.codec, "bits_nominal": float(bits),
        # keys and values hold the same number of scalars: the pair's rate is the mean
        "bits_per_scalar": (key_codec.bits_per_scalar + value_codec.bits_per_scalar) / 2,
        "bits_per_scalar_key": key_codec.bits_per_scalar,
        "bits_per_scalar_value": value_codec.bits_per_scalar,
        "measured_bits_key": measured_k, "measured_bits_value": measured_v,
        "rel_mse_key": rel_k, "rel_mse_value": rel_v, "distortion": (rel_k + rel_v) / 2,
        **inner_product_errors(dataset.keys, k_hat, dataset.ip_queries),
        "attn_rel_err": attention_relative_error(dataset.attn_q, dataset.attn_k, dataset.attn_v,
                                                 k_hat, v_hat),
        "codec_seconds": seconds,
    }


# ---- the three parts of a run ------------------------------------------------------------------
def build_datasets(size: BenchSize, kinds: Sequence[str], seed: int,
                   cache_dir: str | None) -> list[RDDataset]:
    from .kv_capture import DEFAULT_PARAGRAPHS

    datasets = []
    for kind in kinds:
        if kind == "minilm":
            datasets.append(minilm_dataset(size.n_ip_queries, size.n_attn_queries, size.minilm_heads,
                                           DEFAULT_PARAGRAPHS[:size.minilm_paragraphs], cache_dir, seed))
        else:
            datasets.extend(synthetic_dataset(kind, d, size.n_ip_queries, size.n_attn_problems,
                                              size.n_attn_keys, size.n_attn_queries, seed)
                            for d in size.head_dims)
    return datasets


def turboquant_bits_for_rate(head_dim: int, true_rate: float) -> float | None:
    """Nominal TurboQuant bits whose true rate is exactly ``true_rate`` (``None`` if none is).

    TurboQuant takes any whole number of code bits per vector, so it can match another codec's
    true rate exactly: subtract its norm overhead (read from its ``bits_per_scalar`` at 1 bit) and
    verify the candidate's own ``bits_per_scalar``.
    """
    try:
        overhead = get_codec("turboquant", head_dim, 1).bits_per_scalar - 1.0
        bits = round((true_rate - overhead) * head_dim) / head_dim
        if abs(get_codec("turboquant", head_dim, bits).bits_per_scalar - true_rate) < 1e-9:
            return bits
    except CodecError:
        pass
    return None


def _measure_all(jobs: Sequence[tuple[RDDataset, Variant, float]], seed: int, device: str,
                 rows: list[dict], skipped: list[dict], desc: str) -> None:
    """Measure ``jobs`` into ``rows``; a codec's refusal (at construction, or of this data) goes to
    ``skipped`` with its message."""
    for ds, variant, bits in tqdm(jobs, desc=desc, unit="cfg", leave=False):
        try:
            rows.append(measure(ds, variant, bits, seed, device))
        except CodecError as err:
            skipped.append({"dataset": ds.label, "codec": variant.label, "head_dim": ds.head_dim,
                            "bits_nominal": bits, "reason": str(err)})


def run_codecs(datasets: Sequence[RDDataset], variants: Sequence[Variant], rates: Sequence[float],
               seed: int, device: str) -> tuple[list[dict], list[dict]]:
    """Measure every variant at every rate on every dataset; returns (rows, skipped).

    TurboQuant is also measured at exactly the true rate of every OCTOPUS row of the same dataset,
    so that the matched-rate comparison needs no interpolation there.
    """
    jobs = [(ds, v, b) for ds in datasets for v in variants
            for b in sorted(set(rates) | set(v.extra_rates))]
    rows: list[dict] = []
    skipped: list[dict] = []
    _measure_all(jobs, seed, device, rows, skipped, "codecs")
    turboquant = next((v for v in variants if v.label == "turboquant"), None)
    if turboquant is not None:
        extra = []
        for ds in datasets:
            have = {r["bits_nominal"] for r in rows if r["dataset"] == ds.label and r["codec"] == "turboquant"}
            wanted = {turboquant_bits_for_rate(ds.head_dim, r["bits_per_scalar"]) for r in rows
                      if r["dataset"] == ds.label and r["registry_name"] == "octopus"}
            extra += [(ds, turboquant, b) for b in sorted(wanted - have - {None})]
        _measure_all(extra, seed, device, rows, skipped, "turboquant at OCTOPUS rates")
    dataset_order = {ds.label: i for i, ds in enumerate(datasets)}
    variant_order = {v.label: i for i, v in enumerate(variants)}
    rows.sort(key=lambda r: (dataset_order[r["dataset"]], variant_order[r["codec"]], r["bits_per_scalar"]))
    return rows, skipped


def _unit_vectors(n: int, head_dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(10_000 + seed * 1000 + head_dim)
    x = torch.randn(n, head_dim, generator=gen)
    return x / x.norm(dim=-1, keepdim=True)


def _unit_point(codec: Codec, u: torch.Tensor, device: str) -> dict[str, float]:
    """Rate and E||u − û||² on unit vectors ``u``, with the Monte-Carlo standard error of the mean
    relative to it (``distortion_rel_se``)."""
    u_hat, measured = _roundtrip(codec, u, device)
    errors = per_vector_relative_error(u, u_hat)
    mean = float(errors.mean())
    return {"bits_per_scalar": codec.bits_per_scalar, "measured_bits": measured, "distortion": mean,
            "distortion_rel_se": float(errors.std() / errors.numel() ** 0.5) / mean if mean > 0 else 0.0}


def sweep_allocations(size: BenchSize) -> list[tuple[int, int, int]]:
    """Allocations (b_ξ, b_η, b_ρ) swept: b_ξ and b_η within one bit, b_ρ at most the larger."""
    return [(bx, be, br) for bx, be, br in itertools.product(size.sweep_bits, size.sweep_bits,
                                                              size.sweep_rho_bits)
            if abs(bx - be) <= 1 and br <= max(bx, be)]


def _turboquant_curve(head_dim: int, nominal_bits: Iterable[float], u: torch.Tensor, seed: int,
                      device: str, skipped: list[dict]) -> list[dict]:
    points = []
    for bits in tqdm(sorted(set(nominal_bits)), desc=f"turboquant d={head_dim}", unit="cfg", leave=False):
        try:
            codec = get_codec("turboquant", head_dim, bits, seed=seed)
        except CodecError as err:
            skipped.append({"codec": "turboquant", "head_dim": head_dim, "bits_nominal": bits,
                            "reason": str(err)})
            continue
        points.append({"head_dim": head_dim, "bits_nominal": bits, **_unit_point(codec, u, device)})
    return points


def _compare_with_turboquant(points: Sequence[dict], tq: Sequence[dict],
                             targets: Sequence[float]) -> tuple[list[dict], list[dict]]:
    """(frontier points, best point per target rate), each with its matched-rate comparison."""
    tq_rates = [p["bits_per_scalar"] for p in tq]
    tq_dists = [p["distortion"] for p in tq]
    frontier = [{**p, **analysis.matched_comparison(p["bits_per_scalar"], p["distortion"], tq_rates, tq_dists)}
                for p in analysis.pareto_frontier(points)]
    best_rows = []
    for target in targets:
        best = analysis.best_under_budget(points, target)
        if best is None:
            continue
        at_target = analysis.log_interpolate(tq_rates, tq_dists, target)
        best_rows.append({"target_bits": target, **best, **analysis.matched_comparison(
            best["bits_per_scalar"], best["distortion"], tq_rates, tq_dists),
            "turboquant_at_target": at_target,
            "gain_vs_target_pct": None if at_target is None else 100.0 * (1 - best["distortion"] / at_target)})
    return frontier, best_rows


def allocation_sweep(size: BenchSize, seed: int, device: str) -> dict[str, Any]:
    """OCTOPUS over allocations (b_ξ, b_η, b_ρ), and TurboQuant's curve, on unit vectors.

    Per head_dim and rounding mode: every allocation the codec accepts (refusals recorded), the
    Pareto frontier, each frontier point against TurboQuant at the same true rate (TurboQuant is
    measured at its grid plus exactly every OCTOPUS true rate), and for each target true rate the
    best allocation within it.
    """
    result: dict[str, Any] = {"allocations": [], "turboquant": [], "frontiers": [], "targets": [],
                              "skipped": []}
    jobs = [(d, a, jr) for d in size.head_dims for jr in (True, False) for a in sweep_allocations(size)]
    vectors = {d: _unit_vectors(size.sweep_vectors, d, seed) for d in size.head_dims}
    for d, alloc, joint in tqdm(jobs, desc="allocation sweep", unit="cfg", leave=False):
        try:
            codec = get_codec("octopus", d, (sum(alloc) - 1) / 3, seed=seed, allocation=alloc,
                              joint_rounding=joint)
        except CodecError as err:
            result["skipped"].append({"codec": "octopus", "head_dim": d, "allocation": list(alloc),
                                      "joint_rounding": joint, "reason": str(err)})
            continue
        result["allocations"].append({"head_dim": d, "allocation": list(alloc), "joint_rounding": joint,
                                      **_unit_point(codec, vectors[d], device)})
    for d in size.head_dims:
        exact = {turboquant_bits_for_rate(d, p["bits_per_scalar"]) for p in result["allocations"]
                 if p["head_dim"] == d} - {None}
        tq = _turboquant_curve(d, set(size.turboquant_curve) | exact, vectors[d], seed, device,
                               result["skipped"])
        result["turboquant"].extend(tq)
        for joint in (True, False):
            points = [p for p in result["allocations"] if p["head_dim"] == d and p["joint_rounding"] == joint]
            frontier, best = _compare_with_turboquant(points, tq, size.sweep_targets)
            result["frontiers"].extend(frontier)
            result["targets"].extend(best)
    return result


def reproduction(size: BenchSize, seed: int, device: str, codecs: Sequence[str]) -> list[dict]:
    """``codecs.md`` §4: E||u − û||² of TurboQuant-mse and OCTOPUS (b+1, b+1, b−1) vs the table.

    Only the codecs among ``codecs`` are checked.
    """
    rows = []
    for d in size.repro_head_dims:
        u = _unit_vectors(size.repro_vectors, d, seed + 1)
        for b, ref in (analysis.TURBOQUANT_REFERENCE.get(d, {}) if "turboquant" in codecs else {}).items():
            rows.append({"codec": "turboquant", "head_dim": d, "b": b, "reference": ref,
                         **_unit_point(get_codec("turboquant", d, b, seed=seed), u, device)})
        for joint, table in (analysis.OCTOPUS_REFERENCE.get(d, {}) if "octopus" in codecs else {}).items():
            for b, ref in table.items():
                codec = get_codec("octopus", d, b, seed=seed, allocation=analysis.paper_allocation(b),
                                  joint_rounding=joint)
                rows.append({"codec": "octopus" if joint else "octopus-nearest", "head_dim": d, "b": b,
                             "reference": ref, **_unit_point(codec, u, device)})
    for row in rows:
        row["rel_diff"] = row["distortion"] / row["reference"] - 1.0
        row["within_tolerance"] = abs(row["rel_diff"]) <= analysis.REPRODUCTION_TOLERANCE
    return rows


def matched_rows(rows: Sequence[dict]) -> list[dict]:
    """Each OCTOPUS row against TurboQuant on the same dataset at the same true rate."""
    out = []
    for row in rows:
        if row["registry_name"] != "octopus":
            continue
        tq = [r for r in rows if r["codec"] == "turboquant" and r["dataset"] == row["dataset"]]
        for metric in ("distortion", "attn_rel_err"):
            cmp = analysis.matched_comparison(row["bits_per_scalar"], row[metric],
                                              [r["bits_per_scalar"] for r in tq], [r[metric] for r in tq])
            out.append({"dataset": row["dataset"], "codec": row["codec"], "bits_nominal": row["bits_nominal"],
                        "bits_per_scalar": row["bits_per_scalar"], "metric": metric, "value": row[metric],
                        **cmp})
    return out


# ---- the matched-rate grid (headline) ----------------------------------------------------------
#: Codecs on the matched-rate grid besides TurboQuant-mse (the reference), in table order.
GRID_CODECS = ("triplet_vq", "turboquant_mr", "octopus")
#: Norm bits every grid codec stores per vector (float16).
GRID_NORM_BITS = 16


def grid_rates(head_dim: int, size: BenchSize) -> list[float]:
    """True rates of whole bytes per vector (every ``grid_step_bytes``-th) within ``size.grid_rates``."""
    lo, hi = size.grid_rates
    first, last = math.ceil(lo * head_dim / 8 - 1e-9), math.floor(hi * head_dim / 8 + 1e-9)
    return [8 * n / head_dim for n in range(first, last + 1, size.grid_step_bytes)]


def octopus_frontier(head_dim: int, size: BenchSize, seed: int, device: str,
                     sweep: dict[str, Any] | None) -> list[dict]:
    """Pareto frontier of OCTOPUS allocations (joint rounding) on unit vectors at ``head_dim``: from the
    allocation sweep when it covered this head_dim, else measured here over the same allocations."""
    points = [p for p in (sweep or {}).get("allocations", []) if p["head_dim"] == head_dim and p["joint_rounding"]]
    if not points:
        u = _unit_vectors(size.sweep_vectors, head_dim, seed)
        for alloc in sweep_allocations(size):
            try:
                codec = get_codec("octopus", head_dim, (sum(alloc) - 1) / 3, seed=seed, allocation=alloc)
            except CodecError:
                continue
            points.append({"head_dim": head_dim, "allocation": list(alloc), "joint_rounding": True,
                           **_unit_point(codec, u, device)})
    return analysis.pareto_frontier(points)


def matched_grid(datasets: Sequence[RDDataset], size: BenchSize, seed: int, device: str,
                 sweep: dict[str, Any] | None, codecs: Sequence[str]) -> list[dict]:
    """Every grid codec at every grid rate on every dataset, against TurboQuant-mse and
    TurboQuant-mixed-radix measured at the same true rate.

    TurboQuant-mse is measured at exactly each grid rate (nominal bits = rate − 16/d: whole bytes of
    code). ``triplet_vq`` and ``turboquant_mr`` take the grid rate as their target true rate (they may
    store fewer bytes when they cannot fill the last one; their real rate is reported). OCTOPUS is the
    best allocation of its unit-vector frontier whose true rate is within the grid rate (its triplet
    and byte granularity counted against it). ``ratio_*`` = codec distortion / reference distortion at
    the grid rate (< 1: the codec wins).
    """
    wanted = [c for c in GRID_CODECS if c in codecs]
    rows: list[dict] = []
    cache: dict[tuple, dict] = {}

    def run(ds: RDDataset, variant: Variant, bits: float) -> dict | None:
        key = (ds.label, variant.label, json.dumps(variant.options, sort_keys=True), bits)
        if key not in cache:
            try:
                cache[key] = measure(ds, variant, bits, seed, device)
            except CodecError as err:
                cache[key] = {"refused": str(err)}
        return None if "refused" in cache[key] else cache[key]

    jobs = [(ds, r) for ds in datasets for r in grid_rates(ds.head_dim, size)]
    frontiers = {d: octopus_frontier(d, size, seed, device, sweep) for d in {ds.head_dim for ds in datasets}} \
        if "octopus" in wanted else {}
    for ds, rate in tqdm(jobs, desc="matched-rate grid", unit="rate", leave=False):
        d = ds.head_dim
        tq = run(ds, Variant("turboquant", "turboquant"), round(rate - GRID_NORM_BITS / d, 12))
        if tq is None:
            continue
        measured = {}
        for name in wanted:
            if name == "octopus":
                best = analysis.best_under_budget(frontiers[d], rate)
                if best is None:
                    continue
                alloc = tuple(best["allocation"])
                row = run(ds, Variant("octopus", "octopus", {"allocation": alloc}), (sum(alloc) - 1) / 3)
                if row is not None:
                    row = {**row, "allocation": list(alloc)}
            else:
                row = run(ds, Variant(name, name), rate)
            if row is not None:
                measured[name] = row
        refs = {"turboquant": tq, "turboquant_mr": measured.get("turboquant_mr")}
        for name, row in [("turboquant", tq)] + list(measured.items()):
            out = {"dataset": ds.label, "head_dim": d, "grid_rate": rate, "codec": name,
                   "bits_per_scalar": row["bits_per_scalar"], "measured_bits_key": row["measured_bits_key"],
                   "distortion": row["distortion"], "attn_rel_err": row["attn_rel_err"],
                   "ip_rel_mse": row["ip_rel_mse"], "allocation": row.get("allocation"),
                   "codec_seconds": row["codec_seconds"]}
            for ref_name, ref in refs.items():
                for metric, tag in (("distortion", ""), ("attn_rel_err", "attn_")):
                    out[f"{tag}ratio_vs_{ref_name}"] = (None if ref is None or ref[metric] <= 0
                                                        else row[metric] / ref[metric])
            rows.append(out)
    return rows


def grid_summary(grid: Sequence[dict]) -> list[dict]:
    """Per (dataset, codec): wins, losses and the range / geometric mean of the distortion ratios."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in grid):
        for codec in dict.fromkeys(r["codec"] for r in grid if r["dataset"] == dataset):
            if codec == "turboquant":
                continue
            mine = [r for r in grid if r["dataset"] == dataset and r["codec"] == codec]
            entry: dict[str, Any] = {"dataset": dataset, "codec": codec, "points": len(mine),
                                     "rate_min": min(r["grid_rate"] for r in mine),
                                     "rate_max": max(r["grid_rate"] for r in mine)}
            for ref in ("turboquant", "turboquant_mr"):
                for tag in ("", "attn_"):
                    ratios = [r[f"{tag}ratio_vs_{ref}"] for r in mine if r[f"{tag}ratio_vs_{ref}"] is not None]
                    if not ratios or (codec == ref):
                        continue
                    entry[f"{tag}wins_vs_{ref}"] = sum(x < 1 for x in ratios)
                    entry[f"{tag}compared_vs_{ref}"] = len(ratios)
                    entry[f"{tag}ratio_min_vs_{ref}"] = min(ratios)
                    entry[f"{tag}ratio_max_vs_{ref}"] = max(ratios)
                    entry[f"{tag}ratio_geomean_vs_{ref}"] = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
            # TurboQuant-mse's own integer widths b (true rate b + 16/d) inside the grid
            entry["at_turboquant_integer_rates"] = {
                f"{r['grid_rate']:g}": r["ratio_vs_turboquant"] for r in mine
                if abs((r["grid_rate"] - GRID_NORM_BITS / r["head_dim"]) % 1) < 1e-9
                and r["ratio_vs_turboquant"] is not None}
            out.append(entry)
    return out


# ---- peers side by side (external packages and the lattice peer) -----------------------------
#: Steps of the lattice peer (in units of the rotated unit vector's coordinates) measured per head_dim;
#: they span about 1.5 to 5 bits per scalar at d = 32..128.
#: Datasets the peers table runs on (the real K/V and the uniform reference).
PEER_DATASETS = ("minilm", "unit")
LATTICE_STEPS = (0.18, 0.12, 0.08, 0.055, 0.04, 0.028, 0.02, 0.014)


@dataclass
class Peer:
    """One peer configuration: how to encode a ``(N, d)`` tensor, decode it, and count its bytes."""

    label: str
    config: str
    source: str
    encode: Any
    decode: Any
    nbytes: Any


def _package_peer(name: str, head_dim: int, bits: float, seed: int, **options: Any) -> Peer:
    codec = get_codec(name, head_dim, bits, seed=seed, **options)
    return Peer(name, f"bits={bits:g}" + "".join(f", {k}={v}" for k, v in options.items()),
                "octopus-diffusers", codec.encode, codec.decode, lambda p: p.nbytes)


def external_peers(head_dim: int, seed: int) -> tuple[list[Peer], list[dict]]:
    """Peers from other packages that run on the CPU here (their own encode/decode, their own
    stored tensors counted), and the notes of those that do not."""
    peers, notes = [], []
    try:
        from fused_turboquant.core.quantizer import TurboQuantMSE
    except ImportError as err:
        notes.append({"peer": "fused-turboquant", "status": f"not importable: {err}"})
    else:
        for b in (2, 3, 4):
            try:
                q = TurboQuantMSE(head_dim, b, seed=seed, device="cpu")
            except ValueError as err:
                notes.append({"peer": "fused-turboquant", "status": f"bits={b}, d={head_dim}: {err}"})
                continue
            peers.append(Peer("fused-turboquant", f"bits={b} (fp32 norm)", "fused-turboquant 0.1.0",
                              q.encode, lambda c, q=q: q.decode(c),
                              lambda c: c.indices.numel() * c.indices.element_size()
                              + c.norms.numel() * c.norms.element_size()))
    try:
        from polarengine_vllm.kv_cache.cache import PolarKVQuantizer
    except ImportError as err:
        notes.append({"peer": "polarquant", "status": f"not importable: {err}"})
    else:
        for b in (2, 3, 4):
            try:
                q = PolarKVQuantizer(head_dim, b, device="cpu")
            except (ValueError, AssertionError) as err:
                notes.append({"peer": "polarquant", "status": f"nbits={b}, d={head_dim}: {err}"})
                continue
            peers.append(Peer("polarquant (PolarKVQuantizer)", f"nbits={b} (bf16 norm)", "polarquant 0.6.0",
                              lambda x, q=q: (q.quantize(x), x.shape),
                              lambda e, q=q: q.dequantize(e[0][0], e[0][1], e[1]).float(),
                              lambda e: e[0][0].numel() * e[0][0].element_size()
                              + e[0][1].numel() * e[0][1].element_size()))
    return peers, notes


def lattice_peers(head_dim: int, seed: int) -> list[Peer]:
    """The HyperQuant-style lattice peer (:mod:`octopus_diffusers.codecs.lattice_rice`) at every step."""
    from octopus_diffusers.codecs.lattice_rice import LATTICES, LatticeRiceQuantizer

    out = []
    for lattice in LATTICES:
        if head_dim % LATTICES[lattice]:
            continue
        for step in LATTICE_STEPS:
            q = LatticeRiceQuantizer(head_dim, step, lattice, seed)
            out.append(Peer(f"lattice-{lattice}-rice", f"step={step:g}", "octopus-diffusers (HyperQuant-style)",
                            q.encode, q.decode, lambda e: e.bits / 8))
    return out


def _time_peer(peer: Peer, x: torch.Tensor) -> tuple[torch.Tensor, float, float, float]:
    """(decoded float32 of x's shape, stored bytes, encode seconds, decode seconds) on the CPU."""
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    t0 = time.perf_counter()
    enc = peer.encode(flat)
    t1 = time.perf_counter()
    dec = peer.decode(enc)
    t2 = time.perf_counter()
    return dec.float().reshape(x.shape), float(peer.nbytes(enc)), t1 - t0, t2 - t1


def peer_comparison(datasets: Sequence[RDDataset], seed: int, external: bool = True
                    ) -> tuple[list[dict], list[dict]]:
    """Every peer on the same K and V of each dataset (CPU): stored bytes, true rate, relative MSE,
    attention-output error and encode/decode seconds, and ``triplet_vq`` at a true rate not above the
    peer's (its distortion ratio, < 1: ``triplet_vq`` wins). ``external=False`` leaves out the other
    packages' peers."""
    rows, notes = [], []
    for ds in datasets:
        d = ds.head_dim
        ext, ext_notes = external_peers(d, seed) if external else ([], [])
        notes += [{**n, "dataset": ds.label} for n in ext_notes]
        ours = []
        for bits in (2, 3, 4):
            ours.append(_package_peer("turboquant", d, bits, seed))
            ours.append(_package_peer("octopus", d, bits, seed))
        for bits in (2.0, 2.5, 3.0, 3.5, 4.0):
            ours += [_package_peer("triplet_vq", d, bits, seed), _package_peer("turboquant_mr", d, bits, seed)]
        for peer in tqdm(ours + ext + lattice_peers(d, seed), desc=f"peers {ds.label}", unit="cfg", leave=False):
            k_hat, k_bytes, k_enc, k_dec = _time_peer(peer, ds.keys)
            v_hat, v_bytes, v_enc, v_dec = _time_peer(peer, ds.values)
            rate = 8 * (k_bytes + v_bytes) / (ds.keys.numel() + ds.values.numel())
            row = {"dataset": ds.label, "head_dim": d, "peer": peer.label, "config": peer.config,
                   "source": peer.source, "bytes": k_bytes + v_bytes, "bits_per_scalar": rate,
                   "distortion": (relative_mse(ds.keys, k_hat) + relative_mse(ds.values, v_hat)) / 2,
                   "attn_rel_err": attention_relative_error(ds.attn_q, ds.attn_k, ds.attn_v, k_hat, v_hat),
                   "encode_s": k_enc + v_enc, "decode_s": k_dec + v_dec,
                   "vectors": int((ds.keys.numel() + ds.values.numel()) // d)}
            try:
                vq = get_codec("triplet_vq", d, rate, seed=seed)
                vk, vv = vq.roundtrip(ds.keys.float()), vq.roundtrip(ds.values.float())
                vq_dist = (relative_mse(ds.keys, vk) + relative_mse(ds.values, vv)) / 2
                row.update({"triplet_vq_bits": vq.bits_per_scalar, "triplet_vq_distortion": vq_dist,
                            "ratio_triplet_vq_vs_peer": vq_dist / row["distortion"]})
            except CodecError as err:
                row.update({"triplet_vq_bits": None, "triplet_vq_distortion": None,
                            "ratio_triplet_vq_vs_peer": None, "triplet_vq_refused": str(err)})
            rows.append(row)
    return rows, notes


# ---- command line ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m octopus_diffusers.eval.rate_distortion",
        description="Rate-distortion benchmark of every KV codec (true bits/scalar, all overheads counted).")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--quick", action="store_true", help="CI size: d=64, 3 rates, small samples")
    parser.add_argument("--seed", type=int, default=0, help="seed of codecs and data (default 0)")
    parser.add_argument("--codecs", nargs="+", metavar="NAME",
                        help=f"subset of codecs (default all: {' '.join(available_codecs())})")
    parser.add_argument("--datasets", nargs="+", choices=DATASET_KINDS, default=list(DATASET_KINDS),
                        help="datasets to run (default all)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the OCTOPUS allocation sweep")
    parser.add_argument("--no-reproduction", action="store_true", help="skip the codecs.md §4 check")
    parser.add_argument("--peers", action="store_true",
                        help="also run the peers side by side (external packages that install, the lattice "
                             "peer) on the same K/V, with CPU encode/decode times")
    parser.add_argument("--no-grid", action="store_true",
                        help="skip the matched-rate grid (every codec at every whole-byte true rate 1.5-5)")
    parser.add_argument("--cache-dir", type=str, default=None,
                        help="folder to cache captured MiniLM Q/K/V as safetensors (default: no cache)")
    parser.add_argument("--device", default="cpu", help="torch device the codecs run on (default cpu)")
    return parser


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Run the benchmark described by parsed ``args``; returns the results dict (also written)."""
    from .rd_report import environment, write_outputs

    size_name = "quick" if args.quick else "full"
    size = SIZES[size_name]
    variants = benchmark_variants(args.codecs)
    start = time.perf_counter()
    with torch.inference_mode():
        datasets = build_datasets(size, args.datasets, args.seed, args.cache_dir)
        rows, skipped = run_codecs(datasets, variants, size.rates, args.seed, args.device)
        names = {v.codec for v in variants}
        sweep = (allocation_sweep(size, args.seed, args.device)
                 if {"octopus", "turboquant"} <= names and not args.no_sweep else None)
        repro = (reproduction(size, args.seed, args.device, sorted(names))
                 if names & {"octopus", "turboquant"} and not args.no_reproduction else None)
        peers = (peer_comparison([ds for ds in datasets if ds.name in PEER_DATASETS], args.seed)
                 if args.peers else None)
        grid = (matched_grid(datasets, size, args.seed, args.device, sweep, sorted(names))
                if "turboquant" in names and names & set(GRID_CODECS) and not args.no_grid else None)
    results = {
        "command": command, "size": size_name, "size_config": asdict(size), "seed": args.seed,
        "environment": environment(args.device), "seconds": time.perf_counter() - start,
        "codecs": [asdict(v) for v in variants],
        "datasets": [{"label": ds.label, "description": ds.description, "head_dim": ds.head_dim,
                      "vectors": int(ds.keys.numel() // ds.head_dim),
                      "attention_keys": int(ds.attn_k.shape[-2]),
                      "attention_problems": int(ds.attn_k.numel() // (ds.attn_k.shape[-2] * ds.head_dim))}
                     for ds in datasets],
        "rows": rows, "skipped": skipped, "matched": matched_rows(rows), "sweep": sweep,
        "reproduction": repro, "grid": grid, "grid_summary": grid_summary(grid) if grid else None,
        "peers": None if peers is None else peers[0], "peer_notes": None if peers is None else peers[1],
    }
    write_outputs(results, Path(args.out))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = "python -m octopus_diffusers.eval.rate_distortion " + shlex.join(argv)
    results = run(args, command)
    print(f"rate-distortion: {len(results['rows'])} measurements, {len(results['skipped'])} refused "
          f"configurations, {results['seconds']:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
