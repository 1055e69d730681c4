"""The install layout: every package folder is listed in pyproject, nothing generic is top-level."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> tuple[list[str], dict[str, str]]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return cfg["packages"], cfg["package-dir"]


def test_every_package_folder_is_declared():
    packages, package_dir = _declared()
    found = set()
    for name, folder in package_dir.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    # sub-packages of octopus_diffusers itself
    for init in (ROOT / "octopus_diffusers").rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT).parts
        found.add(".".join(rel))
    assert found == set(packages)


def test_installed_names_live_under_octopus_diffusers():
    packages, package_dir = _declared()
    assert all(p == "octopus_diffusers" or p.startswith("octopus_diffusers.") for p in packages)
    assert set(package_dir) <= set(packages)
