"""The ``python -m octopus_diffusers.eval.real`` orchestrator, with stand-in parts (fast)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from octopus_diffusers.eval.real import __main__ as orchestrator
from octopus_diffusers.eval.real.models import MissingRealPackage

PKG = "octopus_diffusers.eval.real"


def _fake_part(monkeypatch, module: str, run) -> None:
    fake = types.ModuleType(f"{PKG}.{module}")
    fake.run = run
    monkeypatch.setitem(sys.modules, f"{PKG}.{module}", fake)


def _ok(out: Path, *, quick: bool) -> dict:
    out.mkdir(parents=True)
    (out / "README.md").write_text("# part\n")
    return {"quick": quick}


def test_missing_package_gives_one_clear_line(monkeypatch, tmp_path, capsys) -> None:
    def missing(out: Path, *, quick: bool) -> dict:
        raise MissingRealPackage("terrain consistency UNet (ONNX) not found (module terrain_diffusion is "
                                 "not installed): pip install --no-deps adaptive-terrain-diffusion==0.4.2")

    def no_onnx2torch(out: Path, *, quick: bool) -> dict:
        raise ModuleNotFoundError("No module named 'onnx2torch'", name="onnx2torch")

    _fake_part(monkeypatch, "terrain", missing)
    _fake_part(monkeypatch, "dinov2", no_onnx2torch)
    _fake_part(monkeypatch, "whisper_asr", _ok)
    summary = orchestrator.run_real(tmp_path, quick=True, only=["terrain", "vision", "audio"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    assert err == [summary["parts"]["terrain"]["message"], summary["parts"]["vision"]["message"]]
    assert "adaptive-terrain-diffusion==0.4.2" in err[0] and "\n" not in err[0]
    assert "onnx2torch" in err[1] and "requirements-real.txt" in err[1]
    assert [summary["parts"][p]["status"] for p in ("terrain", "vision", "audio")] == ["skipped", "skipped", "ok"]
    report = (tmp_path / "README.md").read_text()
    assert "[report](audio/README.md)" in report and "skipped: [terrain]" in report
    assert json.loads((tmp_path / "summary.json").read_text())["parts"]["audio"]["status"] == "ok"


def test_failing_part_does_not_stop_the_others(monkeypatch, tmp_path) -> None:
    def broken(out: Path, *, quick: bool) -> dict:
        raise RuntimeError("boom")

    _fake_part(monkeypatch, "text_perplexity", broken)
    _fake_part(monkeypatch, "terrain", _ok)
    assert orchestrator.main(["--quick", "--only", "text,terrain", "--out", str(tmp_path)]) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["parts"]["text"]["status"] == "failed" and "boom" in summary["parts"]["text"]["message"]
    assert summary["parts"]["terrain"]["status"] == "ok" and summary["quick"] is True


def test_only_is_checked(tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match="unknown part"):
        orchestrator.parse_only("text,video")
    assert orchestrator.parse_only(None) == ["text", "audio", "terrain", "vision"]
    assert orchestrator.main(["--only", "video", "--out", str(tmp_path)]) == 2
    assert "unknown part" in capsys.readouterr().err


def test_missing_onnx2torch_is_one_clear_line(monkeypatch, tmp_path) -> None:
    from octopus_diffusers.integrations.fx_attention import onnx_to_fx

    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"onnx2torch.*pip install --no-deps onnx2torch==1.5.15") as err:
        onnx_to_fx(model)
    line = orchestrator.missing_line("terrain", err.value)
    assert line.startswith("[terrain] skipped: converting ONNX models needs onnx and onnx2torch") and "\n" not in line


def test_a_broken_import_inside_the_package_fails_the_part_instead_of_skipping_it(monkeypatch, tmp_path) -> None:
    """Only a missing third-party or model package is a skip; an import bug of ours must not hide behind an
    install hint."""
    def broken_import(out: Path, *, quick: bool) -> dict:
        raise ImportError("cannot import name 'gone' from 'octopus_diffusers.codecs'", name="octopus_diffusers.codecs")

    _fake_part(monkeypatch, "terrain", broken_import)
    summary = orchestrator.run_real(tmp_path, quick=True, only=["terrain"])
    assert summary["parts"]["terrain"]["status"] == "failed"
    assert "ImportError: cannot import name 'gone'" in summary["parts"]["terrain"]["message"]
