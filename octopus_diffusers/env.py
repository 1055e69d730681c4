"""Where a result came from: the one provenance record every benchmark and run folder writes.

:func:`environment` returns the machine (device, CPU or GPU name, torch threads), the versions of
Python, torch, Triton, diffusers, transformers and numpy (read from the installed distributions, so
recording them imports none of those libraries), the source commit, the UTC date and the command.
Every result file stores this dict under ``"environment"`` (the kernel benchmark under ``"env"``), so
a committed number says where it was measured.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

#: Distributions whose versions every record holds (besides torch, recorded with its build tag).
RECORDED_PACKAGES = ("octopus-diffusers", "triton", "diffusers", "transformers", "numpy")
#: Commit of a source copy without ``.git`` (the device machine), set by whoever copied it.
COMMIT_VARIABLE = "OCTOPUS_DIFFUSERS_COMMIT"
#: The checkout this package runs from (``octopus_diffusers/`` is one level below it).
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def package_version(distribution: str) -> str:
    """Installed version of ``distribution``, or ``"not installed"``."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit(paths: Sequence[str] = (), root: Path = SOURCE_ROOT) -> str | None:
    """HEAD of the checkout at ``root``, with ``" (with uncommitted changes)"`` when any of ``paths``
    (relative to ``root``; none checked when empty) has uncommitted changes.

    Outside a checkout: ``$OCTOPUS_DIFFUSERS_COMMIT`` if set, else ``None``.
    """
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = bool(paths) and bool(subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", *paths], capture_output=True, text=True,
            timeout=10, check=True).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return os.environ.get(COMMIT_VARIABLE)
    return head + (" (with uncommitted changes)" if dirty else "") if head else os.environ.get(COMMIT_VARIABLE)


def cpu_name() -> str:
    """The CPU model (from ``/proc/cpuinfo`` where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str = "cpu", *, packages: Sequence[str] = (), command: str | None = None,
                source_paths: Sequence[str] = ()) -> dict[str, Any]:
    """The provenance record of a result computed on ``device``.

    Keys: ``git_commit`` (see :func:`git_commit`; ``source_paths`` are the files whose uncommitted
    changes would alter the numbers), ``date`` (UTC, ISO 8601), ``command`` (default: this process's
    command line), ``device`` (for the CPU with its model and torch threads), ``gpu`` and ``cuda``
    (``None`` off CUDA), ``python``, ``platform``, ``torch`` (``torch.__version__``), and one version per
    :data:`RECORDED_PACKAGES` entry and per extra ``packages`` entry.
    """
    import torch

    on_cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    return {
        "git_commit": git_commit(source_paths),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "device": str(device) if str(device) != "cpu" else f"cpu ({cpu_name()}, {torch.get_num_threads()} torch threads)",
        "gpu": torch.cuda.get_device_name(torch.device(device)) if on_cuda else None,
        "cuda": torch.version.cuda if on_cuda else None,
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__,  # with its build tag (+cu130), which the distribution version leaves out
        **{name: package_version(name) for name in (*RECORDED_PACKAGES, *packages)},
    }
