"""Reports and plots order and label variants by TRUE bits per scalar: tables sorted by the measured rate with
the target and the codec setting beside it, rate plots without the unquantized reference, files written whole."""

import csv
import math

import pytest

from octopus_diffusers.eval.plots import plot_metric_vs_bits
from octopus_diffusers.eval.report import by_rate, markdown_report, setting, write_reports


def _variant(name, codec, bits, rate, psnr, target=None, options=None):
    summary = {"psnr": {"mean": psnr, "min": psnr, "max": psnr, "worst": psnr, "worst_frame": 0, "worst_prompt": 0},
               "l1": {"mean": 0.01, "min": 0.01, "max": 0.01, "worst": 0.01, "worst_frame": 0, "worst_prompt": 0}}
    per_prompt = [{"summary": summary, "per_frame": {"psnr": [psnr, psnr]}, "skipped": {}}]
    return {"name": name, "codec": codec, "bits": bits, "options": options or {}, "target_rate": target,
            "predicted_bits_per_scalar": rate, "bits_per_scalar": rate,
            "kv": None if codec is None else {"bytes_stored": 10, "bytes_fp16": 40}, "seconds": 0.1,
            "metrics": {"video": {"per_prompt": per_prompt, "summary": summary, "skipped": {}}}}


@pytest.fixture
def results():
    variants = [  # in manifest order: codec by codec, not by rate
        _variant("baseline", None, None, None, math.inf),
        _variant("none-fp32", "none", 32, 32.0, math.inf),
        _variant("octopus-a442", "octopus", 10 / 3, 5.0, 48.0, 5, {"allocation": [4, 4, 2]}),
        _variant("octopus-a221", "octopus", 5 / 3, 3.0, 43.0, 3, {"allocation": [2, 2, 1]}),
        _variant("turboquant-2b", "turboquant", 2, 3.0, 45.0, 3),
        _variant("uniform-1b-g16", "uniform", 1, 3.0, 42.0, 3, {"axis": "token", "group_size": 16}),
    ]
    run = {"model": {"name": "m"}, "media": ["video"], "prompts": ["p"], "seed": 0, "steps": 2,
           "environment": {"git_commit": "abc123", "device": "cpu (x, 2 torch threads)", "torch": "2.11.0",
                           "python": "3.11", "diffusers": "0.42.1"},
           "rate_matching": {"targets": [3, 5], "head_dim": 16, "tolerance": 0.25,
                             "unmatched": [{"codec": "uniform", "target": 5}]}}
    return {"run": run, "variants": variants}


def test_rows_are_sorted_by_true_rate_with_target_and_setting(results):
    assert [v["name"] for v in by_rate(results["variants"])] == [
        "baseline", "octopus-a221", "turboquant-2b", "uniform-1b-g16", "octopus-a442", "none-fp32"]
    text = markdown_report(results)
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0][:3] == ["| true bits/scalar", "target", "variant"]
    assert [r[2] for r in rows[1:]] == [v["name"] for v in by_rate(results["variants"])]
    assert [r[0] for r in rows[1:]] == ["| –", "| 3.000", "| 3.000", "| 3.000", "| 5.000", "| 32.000"]
    assert "matched true rates 3, 5 bits/scalar" in text and "head_dim 16" in text
    assert "no setting near the target (left out): uniform at 5" in text
    assert "- commit `abc123` on cpu (x, 2 torch threads); torch 2.11.0, diffusers 0.42.1" in text


def test_settings_name_what_was_configured(results):
    by_name = {v["name"]: v for v in results["variants"]}
    assert setting(by_name["octopus-a221"]) == "alloc (2, 2, 1)"
    assert setting(by_name["uniform-1b-g16"]) == "1 b, group 16"
    assert setting(by_name["turboquant-2b"]) == "2 b"
    assert setting(by_name["none-fp32"]) == "stored unchanged" and setting(by_name["baseline"]) == "–"


def test_nominal_runs_say_their_rates_differ(results):
    results["run"]["rate_matching"] = None
    for v in results["variants"]:
        v["target_rate"] = None
    text = markdown_report(results)
    assert "nominal bit widths" in text and "| target |" not in text


def test_written_files_and_csv(results, tmp_path):
    paths = write_reports(results, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "metrics.json", "report.md"]
    rows = list(csv.DictReader(open(paths["csv"])))
    first = [r for r in rows if r["metric"] == "psnr"]
    assert [r["variant"] for r in first][:2] == ["baseline", "octopus-a221"]
    assert first[1]["target_rate"] == "3" and first[1]["setting"] == "alloc (2, 2, 1)"
    assert '"psnr"' in paths["json"].read_text() and "inf" in paths["json"].read_text()


def test_rate_plot_leaves_out_the_unquantized_reference(results, tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, x, y, **kw: drawn.append((kw["label"], list(x))) or original(self, x, y, **kw))
    plot_metric_vs_bits(results, "video", "psnr", tmp_path / "p.png")
    assert dict(drawn) == {"octopus": [3.0, 5.0], "turboquant": [3.0], "uniform": [3.0]}
    assert (tmp_path / "p.png").stat().st_size > 0
