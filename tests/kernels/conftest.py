"""Puts this folder on ``sys.path`` so the kernel tests share :mod:`kernel_checks` (pytest runs with
``--import-mode=importlib``, which adds no test folder to the path)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
