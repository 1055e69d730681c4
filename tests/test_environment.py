"""The installed stack is the verified one: constraints.txt pins match what is installed, and the
exact pins of pyproject.toml agree with constraints.txt (so the README install and .ci/run resolve
the same versions)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_constraints", ROOT / ".ci" / "check_constraints.py")
check_constraints = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_constraints)
CONSTRAINTS = ROOT / "constraints.txt"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU machine runs its own image's versions")
def test_installed_versions_match_the_lock():
    assert check_constraints.drift(CONSTRAINTS) == []


def test_pyproject_exact_pins_agree_with_the_lock():
    pins = check_constraints.read_pins(CONSTRAINTS)
    text = (ROOT / "pyproject.toml").read_text()
    exact = re.findall(r'"([A-Za-z0-9_.\-]+)==([^";\s]+)', text)
    assert {"torch", "torchaudio", "triton", "diffusers", "transformers"} <= {n for n, _ in exact}
    for name, version in exact:
        key = re.sub(r"[-_.]+", "-", name).lower()
        assert pins.get(key) == version, f"pyproject pins {name}=={version}, constraints.txt has {pins.get(key)}"


def test_drift_is_reported(tmp_path):
    lock = tmp_path / "c.txt"
    lock.write_text(f"torch==0.0.1\nno-such-package-xyz==1.0\n# comment\npytest=={pytest.__version__}\n")
    problems = check_constraints.drift(lock)
    assert problems == ["no-such-package-xyz: pinned 1.0, not installed",
                        f"torch: pinned 0.0.1, installed {_torch_dist()}"]
    assert check_constraints.main(["x", str(lock)]) == 1


def _torch_dist() -> str:
    from importlib import metadata

    return metadata.version("torch")


def test_cli_check_passes_on_the_lock(capsys):
    if torch.cuda.is_available():
        pytest.skip("the GPU machine runs its own image's versions")
    assert check_constraints.main(["x", str(CONSTRAINTS)]) == 0
    assert "match" in capsys.readouterr().out
