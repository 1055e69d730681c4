"""The rate–distortion measurements and their analysis: every codec at nominal rates, OCTOPUS's
allocation sweep and frontier, the ``codecs.md`` §4 reproduction, and the matched-rate grid.

Every comparison is at matched *true* bits per scalar (all overheads counted). The benchmark
measures TurboQuant at exactly the other codec's true rate wherever TurboQuant can store it (it
takes any whole number of code bits per vector), so the reference is then a measurement
(``exact_match``); elsewhere its measured curve is interpolated linearly in log-distortion between
the two measured neighbours. Outside its measured range nothing is extrapolated (``None``).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from octopus_diffusers.codecs import Codec, CodecError, available_codecs, get_codec

from .datasets import RDDataset
from .metrics import attention_relative_error, inner_product_errors, per_vector_relative_error, relative_mse


#: E||u − û||² of a uniform unit vector from ``codecs.md`` §4, keyed by head_dim and bits.
TURBOQUANT_REFERENCE: dict[int, dict[int, float]] = {
    128: {1: 0.3609, 2: 0.1160, 3: 0.0340, 4: 0.0093},
    64: {1: 0.3584, 2: 0.1145, 3: 0.0334, 4: 0.0091},
}
#: OCTOPUS (b+1, b+1, b−1) at d = 128 from ``codecs.md`` §4: nearest and joint rounding.
OCTOPUS_REFERENCE: dict[int, dict[bool, dict[int, float]]] = {
    128: {False: {2: 0.0897, 3: 0.0260, 4: 0.0071}, True: {2: 0.0832, 3: 0.0243, 4: 0.0067}},
}
#: Relative tolerance the reproduction must meet.
REPRODUCTION_TOLERANCE = 0.03


def paper_allocation(b: int) -> tuple[int, int, int]:
    """The paper's "b-bit" OCTOPUS setting (b+1, b+1, b−1): 3b+1 bits per triplet."""
    return (b + 1, b + 1, b - 1)


def pareto_frontier(points: Sequence[dict], rate_key: str = "bits_per_scalar",
                    dist_key: str = "distortion") -> list[dict]:
    """Points no other point beats at an equal or lower rate, sorted by rate."""
    frontier: list[dict] = []
    best = math.inf
    for point in sorted(points, key=lambda p: (p[rate_key], p[dist_key])):
        if point[dist_key] < best:
            frontier.append(point)
            best = point[dist_key]
    return frontier


def log_interpolate(rates: Sequence[float], distortions: Sequence[float], rate: float) -> float | None:
    """Distortion at ``rate`` on the curve through (rates, distortions), linear in log-distortion.

    The curve is first reduced to its Pareto frontier (so it is decreasing); ``None`` when ``rate``
    lies outside the measured range.
    """
    frontier = pareto_frontier([{"r": r, "d": d} for r, d in zip(rates, distortions)], "r", "d")
    if not frontier:
        return None
    xs = np.array([p["r"] for p in frontier])
    ys = np.log(np.array([p["d"] for p in frontier]))
    if rate < xs[0] - 1e-9 or rate > xs[-1] + 1e-9:
        return None
    return float(np.exp(np.interp(rate, xs, ys)))


def matched_comparison(rate: float, distortion: float, reference_rates: Sequence[float],
                       reference_distortions: Sequence[float]) -> dict:
    """Compare one point with the reference curve at the same true rate.

    ``ratio`` = distortion / reference distortion (< 1: the point wins); ``gain_pct`` =
    (1 − ratio)·100; ``gain_db`` = 10·log10(1/ratio). All ``None`` outside the reference range.
    """
    ref = log_interpolate(reference_rates, reference_distortions, rate)
    exact = any(abs(r - rate) < 1e-9 for r in reference_rates)
    if ref is None or distortion <= 0:
        return {"reference_distortion": ref, "exact_match": exact, "ratio": None, "gain_pct": None,
                "gain_db": None}
    ratio = distortion / ref
    return {"reference_distortion": ref, "exact_match": exact, "ratio": ratio,
            "gain_pct": 100.0 * (1.0 - ratio), "gain_db": 10.0 * math.log10(1.0 / ratio)}


def best_under_budget(points: Sequence[dict], budget: float, rate_key: str = "bits_per_scalar",
                      dist_key: str = "distortion") -> dict | None:
    """The lowest-distortion point whose true rate does not exceed ``budget`` (``None`` if none)."""
    feasible = [p for p in points if p[rate_key] <= budget + 1e-9]
    return min(feasible, key=lambda p: p[dist_key]) if feasible else None


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
    #: Attention problems (token blocks) taken from each real-model capture.
    real_problems: int = 12
    #: Matched-rate grid: every whole number of bytes per vector, every ``grid_step_bytes``-th one,
    #: whose true rate lies in ``grid_rates`` (bits per scalar).
    grid_step_bytes: int = 1
    grid_rates: tuple[float, float] = (1.5, 5.0)


SIZES: dict[str, BenchSize] = {
    "quick": BenchSize(head_dims=(64,), rates=(2.0, 3.0, 4.0), n_ip_queries=16,
                       n_attn_problems=1, n_attn_keys=256, n_attn_queries=16, minilm_paragraphs=2,
                       minilm_heads=12, sweep_vectors=256, sweep_bits=(2, 3), sweep_rho_bits=(0, 1, 2),
                       sweep_targets=(2.5, 3.5), turboquant_curve=(1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0),
                       repro_vectors=1024, repro_head_dims=(128,), real_problems=2, grid_step_bytes=8),
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
    frontier = [{**p, **matched_comparison(p["bits_per_scalar"], p["distortion"], tq_rates, tq_dists)}
                for p in pareto_frontier(points)]
    best_rows = []
    for target in targets:
        best = best_under_budget(points, target)
        if best is None:
            continue
        at_target = log_interpolate(tq_rates, tq_dists, target)
        best_rows.append({"target_bits": target, **best, **matched_comparison(
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
        for b, ref in (TURBOQUANT_REFERENCE.get(d, {}) if "turboquant" in codecs else {}).items():
            rows.append({"codec": "turboquant", "head_dim": d, "b": b, "reference": ref,
                         **_unit_point(get_codec("turboquant", d, b, seed=seed), u, device)})
        for joint, table in (OCTOPUS_REFERENCE.get(d, {}) if "octopus" in codecs else {}).items():
            for b, ref in table.items():
                codec = get_codec("octopus", d, b, seed=seed, allocation=paper_allocation(b),
                                  joint_rounding=joint)
                rows.append({"codec": "octopus" if joint else "octopus-nearest", "head_dim": d, "b": b,
                             "reference": ref, **_unit_point(codec, u, device)})
    for row in rows:
        row["rel_diff"] = row["distortion"] / row["reference"] - 1.0
        row["within_tolerance"] = abs(row["rel_diff"]) <= REPRODUCTION_TOLERANCE
    return rows


def matched_rows(rows: Sequence[dict]) -> list[dict]:
    """Each OCTOPUS row against TurboQuant on the same dataset at the same true rate."""
    out = []
    for row in rows:
        if row["registry_name"] != "octopus":
            continue
        tq = [r for r in rows if r["codec"] == "turboquant" and r["dataset"] == row["dataset"]]
        for metric in ("distortion", "attn_rel_err"):
            cmp = matched_comparison(row["bits_per_scalar"], row[metric],
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
    return pareto_frontier(points)


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
                best = best_under_budget(frontiers[d], rate)
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


def against_grid_codec(rows: Sequence[dict], grid: Sequence[dict], codec: str = "triplet_vq") -> list[dict]:
    """Every measured configuration (the nominal-rate rows, any codec) against ``codec``'s best grid point
    of the same dataset at an equal or lower true rate: ``distortion_ratio`` and ``attn_ratio`` are the
    configuration's relative MSE / attention-output error over that point's (< 1: it beats ``codec``
    while storing at least as many bits). Configurations above the grid's highest rate are left out.
    Whether any codec at its own settings does better than the grid's leader, not only TurboQuant."""
    out = []
    for row in rows:
        if row["registry_name"] in (codec, "none"):
            continue
        grid_points = [g for g in grid if g["dataset"] == row["dataset"] and g["codec"] == codec]
        mine = [g for g in grid_points if g["bits_per_scalar"] <= row["bits_per_scalar"] + 1e-9]
        if not mine or row["bits_per_scalar"] > max(g["bits_per_scalar"] for g in grid_points) + 1e-9:
            continue  # below or above the grid's range: nothing measured to compare with
        best = min(mine, key=lambda g: g["distortion"])
        out.append({"dataset": row["dataset"], "codec": row["codec"], "bits_nominal": row["bits_nominal"],
                    "bits_per_scalar": row["bits_per_scalar"], f"{codec}_bits": best["bits_per_scalar"],
                    "distortion_ratio": row["distortion"] / best["distortion"] if best["distortion"] > 0 else None,
                    "attn_ratio": row["attn_rel_err"] / best["attn_rel_err"] if best["attn_rel_err"] > 0 else None})
    return out
