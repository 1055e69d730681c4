"""Run every real-weights part and write one report linking them.

``python -m octopus_diffusers.eval.real [--quick] [--only text,audio,terrain,vision] --out DIR``
runs each part's ``run(DIR/<part>, quick=...)`` (imported only when it runs) and writes
``DIR/README.md`` and ``DIR/summary.json``. A part whose model package is missing is reported in
one line naming what to install, and the other parts still run; the exit status is non-zero when
any part did not run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

#: part -> (module under octopus_diffusers.eval.real, what it measures)
PARTS: dict[str, tuple[str, str]] = {
    "text": ("text_perplexity", "SmolLM2-135M perplexity with its KV cache quantized"),
    "audio": ("whisper_asr", "Whisper-base transcripts with encoder/decoder/cross-attention K/V quantized"),
    "terrain": ("terrain", "terrain consistency UNet heightmaps (PSNR/SSIM) with K/V quantized"),
    "vision": ("dinov2", "DINOv2-small feature cosine similarity with K/V quantized"),
}
#: Installs that bring a part's dependencies (the named packages are checked by each part itself).
INSTALL_HINT = ("pip install -c constraints.txt -e '.[real]' && pip install --no-deps -r requirements-real.txt "
                "(the README's install)")


def missing_line(part: str, error: ImportError) -> str:
    """One line naming what to install for ``part``."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "install" not in message:
        name = getattr(error, "name", None)
        message = f"{message}: {INSTALL_HINT}" + (f" (missing module {name!r})" if name else "")
    return f"[{part}] skipped: {message}"


def is_missing_package(error: ImportError) -> bool:
    """A packaged model or third-party module is not installed (skip the part), as opposed to a broken
    import inside this package (fail the part: a skip would hide a bug behind an install hint)."""
    from .models import MissingRealPackage

    if isinstance(error, MissingRealPackage):
        return True
    name = getattr(error, "name", None) or ""
    return isinstance(error, ModuleNotFoundError) and bool(name) and not name.startswith("octopus_diffusers")


def parse_only(only: str | Sequence[str] | None) -> list[str]:
    """Part names from ``--only`` (comma separated or a list); all parts when ``None``."""
    if only is None:
        return list(PARTS)
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown or not names:
        raise ValueError(f"--only: unknown part(s) {unknown or names}; choose from {', '.join(PARTS)}")
    return list(dict.fromkeys(names))


def run_real(out: Path, *, quick: bool, only: list[str] | None = None) -> dict[str, Any]:
    """Run the selected parts into ``out/<part>`` and write ``out/README.md`` and ``out/summary.json``.

    Returns ``{"parts": {part: {"status": "ok" | "skipped" | "failed", "message", "seconds",
    "results"}}}``. A missing package skips that part (its line is printed and recorded); another
    error fails that part (traceback printed) and the next one still runs.
    """
    out = Path(out)
    parts = parse_only(only)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"quick": quick, "parts": {}}
    for part in tqdm(parts, desc="real-weights parts", unit="part"):
        module_name, _ = PARTS[part]
        start = time.perf_counter()
        entry: dict[str, Any] = {"module": module_name}
        try:
            module = importlib.import_module(f"{__package__}.{module_name}")
            entry["results"] = module.run(out / part, quick=quick)
            entry["status"] = "ok"
            # the part's own Markdown report: README.md (terrain, vision) or <part>.md (text, audio)
            entry["report"] = next((f"{part}/{name}" for name in ("README.md", f"{part}.md")
                                    if (out / part / name).is_file()), f"{part}/")
        except Exception as error:  # noqa: BLE001 - one failing part must not lose the others
            if isinstance(error, ImportError) and is_missing_package(error):
                entry["status"], entry["message"] = "skipped", missing_line(part, error)
                tqdm.write(entry["message"], file=sys.stderr)
            else:
                entry["status"] = "failed"
                entry["message"] = f"[{part}] failed: {type(error).__name__}: {error}"
                tqdm.write(entry["message"], file=sys.stderr)
                traceback.print_exc()
        entry["seconds"] = time.perf_counter() - start
        summary["parts"][part] = entry
    (out / "summary.json").write_text(json.dumps(
        {"quick": quick, "parts": {p: {k: v for k, v in e.items() if k != "results"}
                                   for p, e in summary["parts"].items()}}, indent=1, default=str) + "\n")
    (out / "README.md").write_text(report(summary))
    return summary


def report(summary: dict[str, Any]) -> str:
    """Top-level Markdown: one line per part, linking its own report."""
    lines = ["# Quality on real trained models", "",
             f"Mode: {'quick' if summary['quick'] else 'full'}. Each part compares every codec with the "
             "unquantized model at nominal bits (2/3/4 in the full run) and at matched true bits per scalar; "
             "its own report has the numbers, plots, machine and versions.", "",
             "| part | what | status | seconds |", "|---|---|---|---|"]
    for part, entry in summary["parts"].items():
        what = PARTS[part][1]
        status = (f"[report]({entry.get('report', part + '/')})" if entry["status"] == "ok"
                  else f"{entry['status']}: {entry.get('message', '')}")
        lines.append(f"| {part} | {what} | {status} | {entry['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m octopus_diffusers.eval.real",
                                     description="K/V codecs on real trained models (text, audio, terrain, vision).")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--quick", action="store_true", help="small inputs: a few minutes on 2 CPU cores")
    parser.add_argument("--only", default=None, help=f"comma-separated parts among {', '.join(PARTS)}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        only = parse_only(args.only)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = run_real(args.out, quick=args.quick, only=only)
    print(f"report: {args.out / 'README.md'}")
    return 0 if all(e["status"] == "ok" for e in summary["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
