"""Fail when the installed packages drift from constraints.txt (the verified lock of a fresh install).

``python .ci/check_constraints.py [constraints.txt]``: lists every pinned package whose installed
version differs or that is missing, and exits 1 if there is any. ``.ci/run`` calls it after installing,
and ``tests/test_environment.py`` runs the same check inside the suite.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)")


def read_pins(path: Path) -> dict[str, str]:
    """``name -> version`` for every ``name==version`` line (names normalised as pip does)."""
    pins = {}
    for line in path.read_text().splitlines():
        m = _PIN.match(line.strip())
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def drift(path: Path) -> list[str]:
    """One line per pinned package that is missing or at another version."""
    problems = []
    for name, want in sorted(read_pins(path).items()):
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}: pinned {want}, not installed")
            continue
        if have != want:
            problems.append(f"{name}: pinned {want}, installed {have}")
    return problems


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else ROOT / "constraints.txt"
    problems = drift(path)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{len(problems)} package(s) drifted from {path}; reinstall with "
              f"'pip install -c {path.name} -e .[test]' or regenerate the lock deliberately", file=sys.stderr)
        return 1
    print(f"all {len(read_pins(path))} pins of {path.name} match the installed versions")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
