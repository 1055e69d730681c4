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


def test_repo_root_kernels_folder_does_not_shadow_the_installed_ops():
    """From the repository root, ``kernels/`` is importable as a top-level ``kernels`` (and transformers
    imports that name while probing for Hugging Face's package): that copy must stay empty, so the
    custom ops and their codec registry exist once, under ``octopus_diffusers.kernels``."""
    import subprocess
    import sys

    code = ("import kernels, importlib.util, torch\n"
            "from octopus_diffusers import kernels as installed\n"
            "from octopus_diffusers.codecs import get_codec\n"
            "assert kernels is not installed and not hasattr(kernels, 'encode') and not hasattr(kernels, '__version__')\n"
            "c = get_codec('octopus', 64, 3); x = torch.randn(2, 64)\n"
            "assert torch.equal(installed.encode(c, x).fields['codes'], c.encode(x).fields['codes'])\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
