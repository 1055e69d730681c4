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


SIZES: dict[str, BenchSize] = {
    "quick": BenchSize(head_dims=(64,), rates=(2.0, 3.0, 4.0), n_ip_queries=16,
                       n_attn_problems=1, n_attn_keys=256, n_attn_queries=16, minilm_paragraphs=2,
                       minilm_heads=12, sweep_vectors=256, sweep_bits=(2, 3), sweep_rho_bits=(0, 1, 2),
                       sweep_targets=(2.5, 3.5), turboquant_curve=(1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0),
                       repro_vectors=1024, repro_head_dims=(128,)),
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
        "reproduction": repro,
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
