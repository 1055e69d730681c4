"""The console output of a representative ``run --tiny`` (the tiny Stable Audio pipeline in bfloat16, whose
build, casts and SDE scheduler trigger diffusers', torch's and torchsde's known warnings) is clean: our own
progress bars and summary, no third-party warnings a user cannot act on."""

import subprocess
import sys

from octopus_diffusers.cli import QUIET_LOG_MESSAGES


def test_run_tiny_prints_no_third_party_warnings(tmp_path):
    argv = [sys.executable, "-m", "octopus_diffusers.cli", "run", "--model", "stable-audio-open", "--tiny",
            "--dtype", "bfloat16", "--device", "cpu", "--codecs", "turboquant", "--rates", "4",
            "--out", str(tmp_path / "run")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert any(line.startswith("generating stable-audio-open") for line in lines)  # our progress bars stay
    noise = [line for line in lines if "Warning" in line or "warnings.warn" in line
             or any(f in line for fragments in QUIET_LOG_MESSAGES.values() for f in fragments)]
    assert not noise, "\n".join(noise)
    assert done.stdout.startswith("run folder: ")
