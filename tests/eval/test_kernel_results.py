"""The kernel results table: benchmark rows flatten to the CSV with their provenance, appended."""

import csv
import json

import pytest

from octopus_diffusers.eval.kernel_benchmark import main
from octopus_diffusers.eval.kernel_results import COLUMNS, append_rows, flatten

ENV = {"gpu": "GPU X", "torch": "2.11.0", "triton": "3.6.0", "commit": "abc1234", "date": "2026-12-02"}
ROWS = [
    {"section": "copy", "bytes": 512, "ms": 0.25, "GB/s": 4000.0},
    {"section": "codec", "codec": "octopus", "bits": 3, "shape": [1, 2, 8, 128], "bytes": 10,
     "ms": {"enc_fused": 1.0, "dec_full": 2.0}, "GB/s": {"enc_fused": 100.0, "dec_full": 50.0},
     "pct_of_copy": {"enc_fused": 2.5, "dec_full": 1.25}, "fused_code_mismatch_vs_cpu": 0.0},
    {"section": "attention", "shape_name": "decode", "shape": [1, 12, 12, 16, 32760, 128], "dtype": "torch.float16",
     "method": "turboquant3_fused", "ms": 0.146, "TFLOPs": 1.0, "rel_err_vs_decoded": 7.8e-4, "best_sdpa_ms": 0.073,
     "graph_ms": 0.0714, "best_sdpa_graph_ms": 0.0723},
    {"section": "attention", "shape_name": "decode", "shape": [1, 12, 12, 16, 32760, 128], "dtype": "torch.float16",
     "method": "sdpa_flash", "ms": 0.073, "TFLOPs": 2.0, "graph_ms": float("nan")},
    {"section": "crossover", "codec": "octopus", "bits": 3, "nq": 16, "nkv": 32760, "heads": 12, "d": 128,
     "fused_ms": 0.5, "fused_graph_ms": 0.4, "decoded_ms": 0.3, "decoded_graph_ms": 0.2},
]


def test_rows_flatten_with_codec_bits_and_speed():
    flat = [r for row in ROWS for r in flatten(row)]
    assert len(flat) == 1 + 2 + 1 + 1 + 2
    fused = next(r for r in flat if r.get("method") == "fused" and r["section"] == "attention")
    assert (fused["codec"], fused["bits"], fused["speed"]) == ("turboquant", "3", pytest.approx(0.5))
    assert next(r for r in flat if r.get("method") == "sdpa_flash")["codec"] == ""


def test_append_keeps_earlier_runs_and_checks_the_header(tmp_path):
    path = tmp_path / "results.csv"
    assert append_rows(path, ENV, ROWS) == 7
    assert append_rows(path, {**ENV, "commit": "def5678"}, ROWS[:1]) == 1
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS and len(rows) == 8
    assert rows[0]["commit"] == "abc1234" and rows[-1]["commit"] == "def5678"
    assert next(r for r in rows if r["method"] == "sdpa_flash")["graph_ms"] == ""  # NaN left empty
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a kernel results table"):
        append_rows(other, ENV, ROWS)


def test_unknown_section_is_an_error():
    with pytest.raises(ValueError, match="unknown benchmark section 'nope'"):
        list(flatten({"section": "nope"}))


def test_from_json_needs_no_gpu_and_overrides_provenance(tmp_path, capsys):
    src = tmp_path / "run.json"
    src.write_text(json.dumps({"env": {"gpu": "GPU X", "torch": "t", "triton": "tr"}, "rows": ROWS}))
    out = tmp_path / "results.csv"
    main(["--from-json", str(src), "--record", str(out), "--commit", "0123abc", "--date", "2026-11-23"])
    assert "appended 7 rows" in capsys.readouterr().out
    with out.open() as f:
        assert {r["commit"] for r in csv.DictReader(f)} == {"0123abc"}
    with pytest.raises(SystemExit):
        main(["--from-json", str(src)])  # no --record
    with pytest.raises(SystemExit):
        main(["--sections", "nope"])


def test_provenance_from_the_one_environment_record():
    from octopus_diffusers.env import environment
    from octopus_diffusers.eval.kernel_results import provenance

    record = {**environment("cpu"), "gpu": "GPU X", "git_commit": "0123456789abcdef (with uncommitted changes)"}
    got = provenance(record)
    assert got["commit"] == "0123456" and len(got["date"]) == 10 and got["gpu"] == "GPU X"
    assert got["torch"] == record["torch"] and got["triton"] == record["triton"]
    assert provenance({**record, "commit": "abc1234"})["commit"] == "abc1234"  # given by hand wins
