"""Quality on real trained models that install offline from the package registry.

Each benchmark module here exposes ``run(out: Path, *, quick: bool) -> dict``, writing JSON, CSV,
Markdown and plots into ``out``; :mod:`.models` locates and loads the packaged weights and data,
failing with one clear line naming the package to install when one is missing.
"""
