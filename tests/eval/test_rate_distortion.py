"""The rate-distortion benchmark: analysis helpers, metrics, and one quick end-to-end run."""

import csv
import json
import math
from collections import defaultdict

import pytest
import torch

from octopus_diffusers.codecs import CodecError, available_codecs, get_codec
from octopus_diffusers.eval.rate_distortion import analysis
from octopus_diffusers.eval.rate_distortion.__main__ import build_parser, main
from octopus_diffusers.eval.rate_distortion.analysis import benchmark_variants
from octopus_diffusers.eval.rate_distortion.metrics import (
    attention_relative_error, inner_product_errors, relative_mse)


# ---- analysis helpers --------------------------------------------------------------------------
def test_pareto_frontier_keeps_only_undominated_points():
    pts = [{"bits_per_scalar": r, "distortion": d} for r, d in
           [(2.0, 0.1), (2.5, 0.12), (3.0, 0.03), (3.0, 0.05), (4.0, 0.01), (1.0, 0.5)]]
    front = analysis.pareto_frontier(pts)
    assert [(p["bits_per_scalar"], p["distortion"]) for p in front] == [
        (1.0, 0.5), (2.0, 0.1), (3.0, 0.03), (4.0, 0.01)]


def test_log_interpolation_is_exact_on_an_exponential_curve():
    rates = [1.0, 2.0, 3.0, 5.0]
    dists = [4.0 ** -r for r in rates]
    for r in (1.0, 1.3, 2.5, 4.2, 5.0):
        assert analysis.log_interpolate(rates, dists, r) == pytest.approx(4.0 ** -r, rel=1e-12)
    assert analysis.log_interpolate(rates, dists, 0.9) is None  # never extrapolates
    assert analysis.log_interpolate(rates, dists, 5.1) is None


def test_matched_comparison_sign_and_budget():
    rates, dists = [2.0, 3.0], [0.1, 0.025]
    better = analysis.matched_comparison(2.5, 0.04, rates, dists)
    assert better["reference_distortion"] == pytest.approx(0.05)
    assert better["ratio"] == pytest.approx(0.8) and better["gain_pct"] == pytest.approx(20.0)
    assert better["gain_db"] == pytest.approx(10 * math.log10(1.25))
    worse = analysis.matched_comparison(2.5, 0.06, rates, dists)
    assert worse["gain_pct"] < 0
    assert analysis.matched_comparison(6.0, 0.01, rates, dists)["ratio"] is None
    pts = [{"bits_per_scalar": 2.4, "distortion": 0.09}, {"bits_per_scalar": 2.6, "distortion": 0.05}]
    assert analysis.best_under_budget(pts, 2.5)["distortion"] == 0.09
    assert analysis.best_under_budget(pts, 2.0) is None


# ---- metrics -----------------------------------------------------------------------------------
def test_metrics_on_known_perturbations():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=gen)
    assert relative_mse(x, x) == 0.0
    assert relative_mse(x, 0.9 * x) == pytest.approx(0.01, rel=1e-6)
    q = torch.randn(8, 16, generator=gen)
    shrunk = inner_product_errors(x, 0.9 * x, q)
    assert shrunk["ip_bias"] == pytest.approx(-0.1, rel=1e-6)
    assert shrunk["ip_rel_mse"] == pytest.approx(0.01, rel=1e-6)
    k, v = torch.randn(2, 32, 16, generator=gen), torch.randn(2, 32, 16, generator=gen)
    qa = torch.randn(2, 4, 16, generator=gen)
    assert attention_relative_error(qa, k, v, k, v) == 0.0
    assert attention_relative_error(qa, k, v, k, 1.1 * v) == pytest.approx(0.01, rel=1e-6)
    with pytest.raises(ValueError, match="zero"):
        relative_mse(torch.zeros(3, 4), torch.zeros(3, 4))


def test_every_registered_codec_is_benchmarked():
    assert {v.codec for v in benchmark_variants()} == set(available_codecs())
    with pytest.raises(CodecError, match="unknown codec"):
        benchmark_variants(["no-such-codec"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--quick"])  # --out is required


# ---- one quick end-to-end run ------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rd")
    assert main(["--out", str(out), "--quick"]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_quick_run_writes_every_output(quick_run):
    out, results = quick_run
    for name in ("results.json", "results.csv", "matched.csv", "sweep.csv", "README.md"):
        assert (out / name).stat().st_size > 0, name
    labels = {r["dataset"] for r in results["rows"]}
    assert labels == {"unit_d64", "outlier_d64", "minilm_d32"}
    for png in [f"rd_{label}.png" for label in labels] + ["sweep_d64.png"]:
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    with (out / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(results["rows"])
    readme = (out / "README.md").read_text()
    assert results["command"] in readme and "--quick" in results["command"]
    assert "![rd_minilm_d32.png](rd_minilm_d32.png)" in readme


def test_every_codec_measured_or_refused_with_a_reason(quick_run):
    _, results = quick_run
    measured = {r["registry_name"] for r in results["rows"]}
    assert measured == set(available_codecs())
    assert all(s["reason"] for s in results["skipped"])


def test_rates_are_the_codecs_true_rates(quick_run):
    _, results = quick_run
    for r in results["rows"]:
        # the stored bytes of the packed keys / values are exactly the declared rate
        assert r["measured_bits_key"] == pytest.approx(r["bits_per_scalar_key"], abs=1e-9), r
        assert r["measured_bits_value"] == pytest.approx(r["bits_per_scalar_value"], abs=1e-9), r
    tq = next(r for r in results["rows"] if r["codec"] == "turboquant" and r["dataset"] == "unit_d64")
    assert tq["bits_per_scalar"] == get_codec("turboquant", 64, tq["bits_nominal"]).bits_per_scalar


def test_distortion_positive_and_falling_with_rate(quick_run):
    _, results = quick_run
    curves = defaultdict(list)
    for r in results["rows"]:
        if r["codec"] == "none":
            continue
        assert r["distortion"] > 0 and r["attn_rel_err"] > 0, r
        curves[(r["dataset"], r["codec"])].append((r["bits_per_scalar"], r["distortion"]))
    assert sum(len(c) >= 2 for c in curves.values()) >= 6
    for key, pts in curves.items():
        dists = [d for _, d in sorted(pts)]
        assert all(a > b for a, b in zip(dists, dists[1:])), (key, sorted(pts))


def test_identity_codec_has_zero_error(quick_run):
    _, results = quick_run
    lossless = [r for r in results["rows"] if r["codec"] == "none" and r["bits_nominal"] == 32]
    assert len(lossless) == 3
    for r in lossless:
        assert r["distortion"] == 0 and r["ip_rel_mse"] == 0 and r["attn_rel_err"] == 0


def test_reproduction_and_matched_rate_analysis(quick_run):
    _, results = quick_run
    repro = results["reproduction"]
    assert {(r["codec"], r["b"]) for r in repro} >= {("turboquant", 2), ("octopus", 2), ("octopus-nearest", 4)}
    assert all(r["within_tolerance"] for r in repro), [r for r in repro if not r["within_tolerance"]]
    sweep = results["sweep"]
    assert sweep["frontiers"] and sweep["targets"]
    for t in sweep["targets"]:
        assert t["bits_per_scalar"] <= t["target_bits"] + 1e-9
    compared = [f for f in sweep["frontiers"] if f["ratio"] is not None]
    assert compared and all(f["ratio"] > 0 for f in compared)


# ---- the matched-rate grid and the peers table -------------------------------------------------
def test_grid_rates_are_whole_bytes_per_vector():
    from octopus_diffusers.eval.rate_distortion.analysis import SIZES, grid_rates

    rates = grid_rates(128, SIZES["full"])
    assert rates[0] == 1.5 and rates[-1] == 5.0 and len(rates) == 57
    assert all(abs(r * 128 / 8 - round(r * 128 / 8)) < 1e-9 for r in rates)
    assert grid_rates(64, SIZES["quick"]) == [1.5, 2.5, 3.5, 4.5]


def test_quick_run_matched_grid(quick_run):
    out, results = quick_run
    grid = results["grid"]
    assert {r["dataset"] for r in grid} == {"unit_d64", "outlier_d64", "minilm_d32"}
    assert {r["codec"] for r in grid} == {"turboquant", "turboquant_mr", "triplet_vq", "octopus"}
    for r in grid:
        assert r["measured_bits_key"] == pytest.approx(r["bits_per_scalar"], abs=1e-9) or r["codec"] == "octopus"
        assert r["bits_per_scalar"] <= r["grid_rate"] + 1e-9, r
        if r["codec"] == "turboquant":
            assert r["bits_per_scalar"] == pytest.approx(r["grid_rate"], abs=1e-12)
            assert r["ratio_vs_turboquant"] == 1.0
        if r["codec"] in ("turboquant_mr", "triplet_vq"):
            assert r["bits_per_scalar"] > r["grid_rate"] - 8 / r["head_dim"] - 1e-9, r
    summary = {(e["dataset"], e["codec"]): e for e in results["grid_summary"]}
    assert summary[("unit_d64", "triplet_vq")]["compared_vs_turboquant"] == 4
    for label in ("unit_d64", "minilm_d32"):
        data = (out / f"matched_{label}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    readme = (out / "README.md").read_text()
    assert "## Matched-rate grid" in readme and "triplet_vq" in readme
    with (out / "matched_grid.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(grid)


def test_peer_comparison_counts_real_bytes():
    from octopus_diffusers.eval.rate_distortion.peers import peer_comparison
    from octopus_diffusers.eval.rate_distortion.datasets import synthetic_dataset

    ds = synthetic_dataset("unit", 32, 4, 1, 64, 4, seed=1)
    rows, notes = peer_comparison([ds], seed=0, external=False)
    by = {(r["peer"], r["config"]): r for r in rows}
    tq = by[("turboquant", "bits=3")]
    assert tq["bytes"] == 2 * 64 * (12 + 2) and tq["bits_per_scalar"] == pytest.approx(3.5)
    lattice = [r for r in rows if r["peer"].startswith("lattice-E8")]
    assert len(lattice) >= 4 and all(r["bits_per_scalar"] > 1 for r in lattice)
    for r in rows:
        assert r["distortion"] > 0 and r["encode_s"] >= 0 and r["decode_s"] >= 0
        if r["triplet_vq_bits"] is not None:
            assert r["triplet_vq_bits"] <= r["bits_per_scalar"] + 1e-9
    assert all(n["status"] for n in notes)


# ---- real-model K/V as datasets ----------------------------------------------------------------
def _fake_capture(q_heads: int, kv_heads: int, q_tokens: int, kv_tokens: int, layers: int = 2):
    """A capture in :func:`capture_real_kv`'s layout whose every value tells where it came from:
    ``x[..., 0]`` = layer, ``x[..., 1]`` = head, ``x[..., 2]`` = token."""
    def tensor(layer: int, heads: int, tokens: int) -> torch.Tensor:
        x = torch.randn(heads, tokens, 8)
        x[..., 0], x[..., 1] = layer, torch.arange(heads)[:, None]
        x[..., 2] = torch.arange(tokens)[None, :].float()
        return x

    return {f"layer{i}.{role}": tensor(i, q_heads if role == "query" else kv_heads,
                                       q_tokens if role == "query" else kv_tokens)
            for i in range(layers) for role in ("query", "key", "value")}


@pytest.mark.parametrize("kind, q_heads, q_tokens", [("smollm2", 6, 512), ("whisper_cross", 2, 40)])
def test_real_dataset_blocks_spread_over_layers_with_the_models_own_queries(monkeypatch, kind, q_heads, q_tokens):
    from octopus_diffusers.eval.real import capture
    from octopus_diffusers.eval.rate_distortion.datasets import real_dataset

    fake = _fake_capture(q_heads, 2, q_tokens, 512)
    monkeypatch.setattr(capture, "capture_real_kv", lambda sources, cache_dir=None: {sources[0]: fake})
    ds = real_dataset(kind, n_ip_queries=4, n_attn_queries=16, problems=4)
    assert ds.attn_k.shape == (4, 256, 8) and ds.attn_q.shape == (4, 16, 8) and ds.label == f"{kind}_d8"
    # 2 layers x 2 heads x 2 blocks of 256 tokens = 8 candidates; 4 evenly spaced ones cover both layers
    layers, heads, first = ds.attn_k[:, 0, 0], ds.attn_k[:, 0, 1], ds.attn_k[:, 0, 2]
    assert set(layers.tolist()) == {0.0, 1.0} and set(first.tolist()) <= {0.0, 256.0}
    assert torch.equal(ds.attn_v[..., :2], ds.attn_k[..., :2])  # keys and values of the same block
    assert torch.equal(ds.attn_q[:, 0, 0], layers)  # the same layer's queries...
    assert torch.equal(ds.attn_q[:, 0, 1], heads * (q_heads // 2))  # ...of the KV head's first query head
    if kind == "smollm2":  # self-attention: queries from the block's own tokens
        assert ((ds.attn_q[..., 2] >= first[:, None]) & (ds.attn_q[..., 2] < first[:, None] + 256)).all()
    else:  # cross-attention: spread over every decoder token
        assert ds.attn_q[:, -1, 2].eq(q_tokens - 1).all()
    with pytest.raises(ValueError, match="problems must be in 1..8"):
        real_dataset(kind, 4, 16, problems=9)


def test_real_datasets_are_choices_of_the_command_line():
    from octopus_diffusers.eval.rate_distortion.datasets import REAL_KINDS

    args = build_parser().parse_args(["--out", "x", "--datasets", *REAL_KINDS])
    assert args.datasets == list(REAL_KINDS)
    assert build_parser().parse_args(["--out", "x"]).datasets == ["unit", "outlier", "minilm"]


def test_every_configuration_is_compared_with_the_grid_leader_at_an_equal_or_lower_rate():
    grid = [{"dataset": "d", "codec": "triplet_vq", "bits_per_scalar": b, "distortion": dist, "attn_rel_err": att}
            for b, dist, att in ((2.0, 0.10, 0.20), (3.0, 0.03, 0.08), (4.0, 0.01, 0.05))]
    rows = [{"dataset": "d", "codec": c, "registry_name": c, "bits_nominal": b, "bits_per_scalar": b,
             "distortion": dist, "attn_rel_err": att}
            for c, b, dist, att in (("uniform", 3.5, 0.05, 0.04), ("turboquant", 1.5, 0.2, 0.3),
                                    ("turboquant", 4.5, 0.001, 0.001), ("triplet_vq", 3.0, 0.03, 0.08))]
    got = analysis.against_grid_codec(rows, grid)
    assert len(got) == 1  # below and above the grid's range, and triplet_vq itself, are left out
    assert got[0]["triplet_vq_bits"] == 3.0  # the best point within 3.5 bits
    assert got[0]["distortion_ratio"] == pytest.approx(0.05 / 0.03) and got[0]["attn_ratio"] == pytest.approx(0.5)
