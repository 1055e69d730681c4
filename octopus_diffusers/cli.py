"""The ``octopus-diffusers`` command: ``demo``, ``run``, ``eval``, ``render`` and ``bench``.

``run`` generates a baseline and every codec at matched true rates (or nominal bits) with one model and
seed, then (unless told not to) scores and renders them; with ``--model self-forcing|causvid`` it
generates chunk by chunk through the compressed KV cache instead. ``eval`` and ``render`` redo those
steps on an existing run folder; ``demo`` does it all offline on the embedded tiny video (Wan) and audio
(Stable Audio Open) pipelines; ``bench codecs|kernels|real|cache|memory`` runs one benchmark.

Every failure ends with one ``octopus-diffusers <command>: error: ...`` line on stderr and one of the
exit codes of :class:`ExitCode` (listed in ``--help``); ``--traceback`` shows the Python traceback too.
"""

from __future__ import annotations

import argparse
import enum
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DTYPES = ("bfloat16", "float16", "float32")
DEMO_CODECS = ("none", "octopus", "turboquant", "uniform")
#: Target true bits per scalar of the demo and of ``run``: at the tiny pipelines' head_dim 16 every
#: compared codec has a setting at exactly these rates (OCTOPUS allocations, TurboQuant fractional
#: bits, per-token uniform groups); far apart, since the tiny video has so few tokens that close
#: rates can swap order.
DEFAULT_RATES = (3.0, 4.0, 5.0)
#: Demo media -> model whose tiny pipeline runs (each writes a run folder of that name).
DEMO_MODELS = {"video": "wan2.1-t2v-1.3b", "audio": "stable-audio-open"}
#: The demo's other parts: chunk-by-chunk video through the compressed KV cache (the small Wan trained
#: on the real clips), the small Stable Audio DiT trained on the real speech (both at matched true rates), and
#: codecs on real trained models (quick sizes of ``bench real``: Whisper, terrain UNet, DINOv2, SmolLM2).
DEMO_PARTS = (*DEMO_MODELS, "causal", "speech", "real")
#: Chunks (2 frames each) of the demo's causal part on the model trained on the real clips.
DEMO_CAUSAL_CHUNKS = 5
#: Audio length arguments differ between audio pipelines.
SECONDS_ARGUMENT = {"StableAudioPipeline": "audio_end_in_s", "AudioLDM2Pipeline": "audio_length_in_s"}
#: Seeds drive torch generators and the codecs' rotations; this range is valid everywhere.
MAX_SEED = 2**32 - 1
#: Chunk-by-chunk (causal) video models: ``run`` sends them through the compressed KV cache
#: (:func:`octopus_diffusers.eval.causal_eval.run_causal`); ``--tiny`` gives a random-weight tiny one.
#: ``clips`` is the small model trained here on the real clips, shipped with the package.
CAUSAL_MODELS = ("self-forcing", "causvid", "clips")
#: ``bench`` subcommand -> (module whose ``main(argv)`` runs it, help). The modules load only when run.
BENCHMARKS = {
    "codecs": ("octopus_diffusers.eval.rate_distortion.__main__",
               "codec rate-distortion at matched true bits per scalar (CPU): distortion, attention error, peers"),
    "kernels": ("octopus_diffusers.eval.kernel_benchmark",
                "Triton kernels vs fp16 SDPA, eager and CUDA-graph time (needs a GPU)"),
    "real": ("octopus_diffusers.eval.real.__main__",
             "codecs on real trained models: SmolLM2 perplexity, Whisper WER, terrain UNet, DINOv2"),
    "cache": ("octopus_diffusers.cache.gpu_bench",
              "causal Wan2.1-1.3B: peak memory and seconds per chunk with each KV cache (GPU; --toy on CPU)"),
    "memory": ("octopus_diffusers.cache.memory",
               "Wan2.1-1.3B KV-cache bytes per codec at 81/161/321 frames, from the cache's own accounting"),
}
#: Benchmarks that need a CUDA device unless given ``--toy``.
GPU_BENCHMARKS = {"kernels", "cache"}


class ExitCode(enum.IntEnum):
    """Exit status of the command, one per kind of failure (meanings in :data:`EXIT_CODE_MEANINGS`)."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    BAD_INPUT = 3
    ENVIRONMENT = 4
    OUT_OF_MEMORY = 5
    INTERRUPTED = 130


EXIT_CODE_MEANINGS = {
    ExitCode.OK: "success",
    ExitCode.INTERNAL: "unexpected internal error (a bug: rerun with --traceback and report it)",
    ExitCode.USAGE: "bad command line or option value, or a setting the model or a codec refuses",
    ExitCode.BAD_INPUT: "damaged or invalid input: run folder, manifest, outputs, weights folder, embeddings file",
    ExitCode.ENVIRONMENT: "device unavailable, no permission to write, hub unreachable, missing package",
    ExitCode.OUT_OF_MEMORY: "out of memory (try --cpu-offload or a smaller size)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C): partial folders removed, an existing run folder unchanged",
}
EXIT_CODES_HELP = "exit codes:\n" + "\n".join(f"  {code.value:<4} {text}" for code, text in EXIT_CODE_MEANINGS.items())


class CLIError(Exception):
    """A problem with the command line or its inputs, shown as one ``error:`` line with ``code``."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``prog: error: ...``) and :attr:`ExitCode.USAGE`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---- argument types ------------------------------------------------------------------------------
def _codec_list(text: str) -> list[str]:
    from octopus_diffusers.codecs import available_codecs

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in available_codecs()]
    if unknown or not names:
        named = ", ".join(repr(n) for n in unknown) or repr(text)
        raise argparse.ArgumentTypeError(f"unknown codec(s) {named}; available: "
                                         f"{', '.join(available_codecs())}")
    return names


def _number_list(what: str) -> Callable[[str], list[float]]:
    def parse(text: str) -> list[float]:
        try:
            values = [float(b) for b in text.split(",") if b.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be numbers separated by commas, got {text!r}") from None
        if not values or any(not 0 < b <= 32 for b in values):  # also refuses nan and inf
            raise argparse.ArgumentTypeError(f"{what} must lie in (0, 32], got {text!r}")
        return values

    parse.__name__ = what
    return parse


_bits_list = _number_list("bit widths")
_rates_list = _number_list("target rates")


def _choice_list(choices: Sequence[str], what: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"{what}: unknown {', '.join(unknown) or 'empty list'}; choose "
                                             f"from {', '.join(choices)}")
        return list(dict.fromkeys(names))
    return parse


def _int_in(low: int, high: int | None, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"in {low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{what} must be an integer {bound}, got {text}")
        return value

    parse.__name__ = what
    return parse


_positive_int = _int_in(1, None, "value")


def _float_where(check: Callable[[float], bool], what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or not check(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what
    return parse


_positive_float = _float_where(lambda v: v > 0, "a finite number > 0")
_nonnegative_float = _float_where(lambda v: v >= 0, "a finite number >= 0")


def _device(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"device {text!r}: only cpu, cuda and cuda:N are supported")
    return text


# ---- parser --------------------------------------------------------------------------------------
def _add_quantization_options(p: argparse.ArgumentParser, codecs: Sequence[str]) -> None:
    p.add_argument("--codecs", type=_codec_list, default=list(codecs), metavar="A,B,...",
                   help=f"comma-separated codecs to compare with the baseline (default {','.join(codecs)}); "
                        "'none' (identical K/V, stored at the model dtype's width) and 'fp8' run once")
    p.add_argument("--rates", type=_rates_list, default=None, metavar="R,R,...",
                   help="target TRUE bits per scalar (norms, scales and padding counted): each codec gets the "
                        "setting whose true rate at the model's head_dim is closest (OCTOPUS per-triplet "
                        "allocation, TurboQuant fractional bits, uniform per-token group size), within "
                        f"0.25 bits (default {','.join(f'{r:g}' for r in DEFAULT_RATES)} unless --bits is given)")
    p.add_argument("--bits", type=_bits_list, default=None, metavar="B,B,...",
                   help="compare at these NOMINAL bits per scalar instead of --rates (each codec's true rate "
                        "then differs); a codec refusing a width stops the run before anything is generated")
    p.add_argument("--seed", type=_int_in(0, MAX_SEED, "--seed"), default=0,
                   help=f"seed (0..{MAX_SEED}) of the initial noise and of the codecs' rotations (default 0), "
                        "the same for every variant")
    p.add_argument("--no-self-attention", action="store_true",
                   help="leave self-/joint-attention K/V unquantized")
    p.add_argument("--no-cross-attention", action="store_true", help="leave cross-attention K/V unquantized")
    p.add_argument("--full-precision-steps", type=_int_in(0, None, "--full-precision-steps"), default=0,
                   metavar="N", help="keep the first N denoising steps unquantized (default 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run folder at --out (it is kept until the new one is complete)")


def _add_post_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lpips", choices=("auto", "on", "off"), default="auto",
                   help="LPIPS for video: 'auto' computes it only when its backbone weights are cached locally "
                        "(default), 'on' fails without them, 'off' skips it")
    p.add_argument("--no-diff", action="store_true", help="renders: leave out the amplified-difference row")
    p.add_argument("--amplify", type=_positive_float, default=8.0,
                   help="renders: factor (> 0) applied to |variant - baseline| in the difference row (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from octopus_diffusers.pipelines.models import MODELS

    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="octopus-diffusers", formatter_class=formatter, epilog=EXIT_CODES_HELP,
        description="Quantize the attention K/V of diffusers video and audio models with OCTOPUS and peer "
                    "codecs, and compare the outputs with the unquantized baseline at matched true bits per "
                    "scalar.")
    parser.add_argument("--traceback", action="store_true",
                        help="on an error, print the Python traceback as well as the one-line message")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, formatter_class=formatter, epilog=EXIT_CODES_HELP, **kwargs)

    demo = command("demo", help="offline end-to-end demo: trained causal video and speech models, tiny pipelines, "
                                "real models",
                   description="Offline, no download: the small causal Wan and speech DiT trained here on real clips "
                               "(shipped with the package), the tiny random-weight Wan and Stable Audio pipelines and "
                               "real trained models at quick sizes; the baseline and every codec at matched true "
                               "rates, with metrics, reports, plots, MP4s and WAVs. A few minutes on 2 CPU cores.")
    demo.add_argument("--out", type=Path, default=Path("octopus_demo"),
                      help="output folder (default ./octopus_demo); video/ and audio/ run folders are written inside")
    demo.add_argument("--media", type=_choice_list(DEMO_PARTS, "--media"), default=list(DEMO_PARTS),
                      metavar="PART,...",
                      help=f"comma-separated parts among {', '.join(DEMO_PARTS)} (default all): tiny random-weight Wan "
                           "video and Stable Audio pipelines, the causal Wan trained on real clips through the "
                           "compressed KV cache, the speech DiT trained on real speech (all at matched true rates), "
                           "and real trained models at quick sizes")
    _add_quantization_options(demo, DEMO_CODECS)
    _add_post_options(demo)

    run = command("run", help="generate baseline + codecs at matched rates with a real (or tiny) model, then "
                              "score and render",
                  description="Load a model from the hub, a local folder or its tiny offline version; generate the "
                              "baseline and every codec setting with the same seed and prompts into a run folder "
                              "(written beside it and swapped in when complete); then evaluate and render it.")
    run.add_argument("--model", required=True, choices=sorted(MODELS) + list(CAUSAL_MODELS), metavar="MODEL",
                     help=f"model family and default weights: {', '.join(sorted(MODELS))}; chunk-by-chunk video "
                          f"through the compressed KV cache: {', '.join(CAUSAL_MODELS)} (self-forcing/causvid need "
                          "--weights DIR, see docs/autoregressive/README.md, or --tiny; clips is the small model "
                          "trained here on the real clips, shipped with the package)")
    run.add_argument("--weights", metavar="ID_OR_FOLDER",
                     help="hub id or local folder written by save_pretrained (default: the model's hub id); for "
                          f"{'/'.join(CAUSAL_MODELS)} the folder with the original checkpoint, vae/ and "
                          "prompt_embeds.safetensors")
    run.add_argument("--chunks", type=_positive_int, default=None,
                     help=f"{'/'.join(CAUSAL_MODELS)}: chunks to generate (default 5; 3 latent frames each, "
                          "2 frames for clips)")
    run.add_argument("--tiny", action="store_true", help="use the family's tiny offline pipeline (random weights)")
    run.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                     help="a text prompt; repeat for several (each runs for every variant)")
    run.add_argument("--prompt-embeds", type=Path, metavar="FILE",
                     help="safetensors file of call tensors (prompt_embeds, negative_prompt_embeds, masks) for "
                          "pipelines saved without a text encoder; with --tiny they replace the tiny pipeline's "
                          "random embeddings (same names and feature sizes)")
    run.add_argument("--out", type=Path, required=True, help="run folder to write (must be new or empty, "
                                                             "or a run folder with --overwrite)")
    run.add_argument("--steps", type=_positive_int, help="denoising steps (default: the model's)")
    run.add_argument("--frames", type=_positive_int, help="video frames (default: the model's)")
    run.add_argument("--height", type=_positive_int, help="video height in pixels (default: the model's)")
    run.add_argument("--width", type=_positive_int, help="video width in pixels (default: the model's)")
    run.add_argument("--seconds", type=_positive_float, help="audio length in seconds (default: the model's)")
    run.add_argument("--guidance", type=_nonnegative_float,
                     help="classifier-free guidance scale (default: the model's)")
    run.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="weights dtype (default bfloat16)")
    run.add_argument("--device", type=_device, default=None,
                     help="torch device: cpu, cuda or cuda:N (default cuda when available, else cpu)")
    run.add_argument("--cpu-offload", action="store_true",
                     help="diffusers enable_model_cpu_offload: keep only the running component on the GPU")
    run.add_argument("--frame-dtype", choices=("float16", "float32"), default="float16",
                     help="dtype of the saved raw frames (default float16: half the disk, rounding <= 2.5e-4, "
                          "so PSNR above ~75 dB is not resolved; float32 keeps frames exact)")
    run.add_argument("--skip-eval", action="store_true", help="only generate; score later with `eval`")
    run.add_argument("--skip-render", action="store_true", help="do not write comparison renders")
    _add_quantization_options(run, ("octopus", "turboquant", "uniform"))
    _add_post_options(run)

    ev = command("eval", help="score a run folder against its baseline: JSON, CSV, Markdown, plots",
                 description="Check RUN against its manifest, compute every metric of every variant against the "
                             "baseline and write metrics.json, metrics.csv, report.md and plots/ into RUN (or --out).")
    ev.add_argument("run", type=Path, metavar="RUN", help="run folder written by `run` or `demo`")
    ev.add_argument("--out", type=Path, help="where to write (default: RUN)")
    _add_post_options(ev)

    render = command("render", help="side-by-side comparison videos / spectrograms of a run folder",
                     description="Check RUN against its manifest; per prompt and true rate: baseline | codec ... "
                                 "MP4s with an amplified difference row (video); spectrogram PNGs and listening "
                                 "MP4s (audio). The renders folder is replaced as a whole.")
    render.add_argument("run", type=Path, metavar="RUN", help="run folder written by `run` or `demo`")
    render.add_argument("--out", type=Path, help="where to write (default: RUN/renders)")
    _add_post_options(render)

    bench = command("bench", help="run one benchmark: " + ", ".join(BENCHMARKS),
                    description="Each benchmark is its module's own command line; `bench NAME --help` shows its "
                                "options.\n" + "\n".join(f"  {k:<8} {v[1]}" for k, v in BENCHMARKS.items()))
    bench.add_argument("benchmark", choices=list(BENCHMARKS), metavar="NAME", help=", ".join(BENCHMARKS))
    bench.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")
    return parser


# ---- third-party noise ---------------------------------------------------------------------------
#: Warnings from libraries that a user of this command cannot act on: (category, message regex).
QUIET_WARNINGS = (
    # diffusers' Oobleck VAE and transformers' vocoders still call the deprecated weight_norm.
    (FutureWarning, r"`torch\.nn\.utils\.weight_norm` is deprecated"),
    # torchsde's Brownian interval (Stable Audio's SDE scheduler) at float round-off of the schedule's ends.
    (UserWarning, r"Should have t[ab][<>]=t[01] but got"),
)
#: Logger -> message fragments dropped from it: diffusers warns on every ``.to(dtype)`` of a model with an
#: (empty) keep-in-fp32 list, which the tiny pipelines' dtype casts trigger.
QUIET_LOG_MESSAGES = {"diffusers.models.modeling_utils": ("should be kept in float32",)}


class _DropMessages(logging.Filter):
    def __init__(self, fragments: Sequence[str]) -> None:
        super().__init__()
        self.fragments = tuple(fragments)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


@contextmanager
def quiet_third_party() -> Iterator[None]:
    """Silence :data:`QUIET_WARNINGS` and :data:`QUIET_LOG_MESSAGES` for the duration (our own output,
    progress bars and errors are untouched)."""
    filters = [(logging.getLogger(name), _DropMessages(fragments)) for name, fragments in QUIET_LOG_MESSAGES.items()]
    with warnings.catch_warnings():
        for category, pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern, category=category)
        for logger, f in filters:
            logger.addFilter(f)
        try:
            yield
        finally:
            for logger, f in filters:
                logger.removeFilter(f)


# ---- commands ------------------------------------------------------------------------------------
def _run_config(args: argparse.Namespace, prompts: list[str], overrides: dict[str, Any],
                prompt_embeds: Any = None, embeds_source: Any = None):
    from octopus_diffusers.pipelines.runner import RunConfig

    if args.rates is not None and args.bits is not None:
        raise CLIError("give --rates (matched true rates) or --bits (nominal widths), not both")
    rates = None if args.bits is not None else (args.rates or list(DEFAULT_RATES))
    return RunConfig(codecs=args.codecs, bits=args.bits or [], rates=rates, prompts=prompts, seed=args.seed,
                     steps=getattr(args, "steps", None), overrides=overrides, prompt_embeds=prompt_embeds,
                     prompt_embeds_source=embeds_source,
                     self_attention=not args.no_self_attention, cross_attention=not args.no_cross_attention,
                     full_precision_steps=args.full_precision_steps,
                     frame_dtype=getattr(args, "frame_dtype", "float32"))  # demo: tiny frames, kept exact


def _is_plots_folder(folder: Path) -> bool:
    return all(p.is_file() and p.suffix == ".png" for p in folder.iterdir())


def _outside_outputs(run_dir: Path, out_dir: Path, option: str) -> None:
    """Reports and renders never go inside a run's outputs/ (the folder would then fail its own check)."""
    from octopus_diffusers.pipelines.run_folder import OUTPUTS

    outputs = (run_dir / OUTPUTS).resolve()
    if out_dir.resolve() == outputs or outputs in out_dir.resolve().parents:
        raise CLIError(f"{option} {out_dir} lies inside the run's {OUTPUTS}/ folder; choose another place")


def _evaluate_and_report(run_dir: Path, out_dir: Path, args: argparse.Namespace) -> Path:
    from octopus_diffusers.eval.evaluate import evaluate_run
    from octopus_diffusers.eval.plots import plot_all
    from octopus_diffusers.eval.render import current_renders
    from octopus_diffusers.eval.report import write_reports
    from octopus_diffusers.pipelines.run_folder import RunFolder, check_output_folder, staged_folder

    _outside_outputs(run_dir, out_dir, "--out")
    check_output_folder(out_dir, overwrite=True, is_ours=lambda _: True)
    run = RunFolder(run_dir)
    lpips = {"auto": "auto", "on": True, "off": False}[args.lpips]
    results = evaluate_run(run, lpips=lpips, progress=not args.quiet)
    out_dir.mkdir(parents=True, exist_ok=True)
    with staged_folder(out_dir / "plots", overwrite=True, is_ours=_is_plots_folder) as staging:
        plots = [out_dir / "plots" / p.name for p in plot_all(results, staging)]
    renders = current_renders(run, run_dir / "renders")
    paths = write_reports(results, out_dir, images=[p.relative_to(out_dir) for p in plots],
                          videos=[_relative(p, out_dir) for p in renders])
    return paths["markdown"]


def _relative(path: Path, start: Path) -> Path:
    import os

    return Path(os.path.relpath(path, start))


def _render(run_dir: Path, out_dir: Path, args: argparse.Namespace) -> list[Path]:
    from octopus_diffusers.eval.render import is_renders_folder, render_run
    from octopus_diffusers.pipelines.run_folder import RunFolder, staged_folder

    _outside_outputs(run_dir, out_dir, "--out")
    run = RunFolder(run_dir)
    with staged_folder(out_dir, overwrite=True, is_ours=is_renders_folder) as staging:
        written = render_run(run, staging, diff_row=not args.no_diff, amplify=args.amplify, progress=not args.quiet)
    return [out_dir / p.relative_to(staging) for p in written]


def _finish(run_dir: Path, args: argparse.Namespace, evaluate: bool = True, render: bool = True) -> Path | None:
    if render:
        _render(run_dir, run_dir / "renders", args)
    return _evaluate_and_report(run_dir, run_dir, args) if evaluate else None


def _generate_run(model: Any, config: Any, out: Path, args: argparse.Namespace, evaluate: bool = True,
                  render: bool = True) -> Path | None:
    """Generate, render and score into a staged folder swapped in at ``out`` only when all is done."""
    from octopus_diffusers.eval.report import REPORT_NAME
    from octopus_diffusers.pipelines.runner import run_comparison

    run_comparison(model, config, out, progress=not args.quiet, overwrite=args.overwrite,
                   finish=lambda staging: _finish(staging, args, evaluate=evaluate, render=render))
    return out / REPORT_NAME if evaluate else None


def _demo_folder(folder: Path) -> bool:
    """A demo output folder: only the demo's part folders inside."""
    return all(p.name in DEMO_PARTS and p.is_dir() for p in folder.iterdir())


def _demo_part_is_ours(folder: Path) -> bool:
    """A causal, speech or real part folder the demo wrote (its results.json / summary.json)."""
    return (folder / "results.json").is_file() or (folder / "summary.json").is_file()


def _demo_causal(args: argparse.Namespace, out: Path) -> Path:
    from octopus_diffusers.eval.causal_eval import run_causal
    from octopus_diffusers.pipelines.run_folder import staged_folder

    with staged_folder(out, args.overwrite, _demo_part_is_ours) as staging:
        run_causal(staging, codecs=list(args.codecs), rates=args.rates or list(DEFAULT_RATES), model="clips",
                   num_chunks=DEMO_CAUSAL_CHUNKS, seed=args.seed, progress=not args.quiet)
    return out / "report.md"


def _demo_speech(args: argparse.Namespace, out: Path) -> Path:
    from octopus_diffusers.eval.speech_eval import run_speech
    from octopus_diffusers.pipelines.run_folder import staged_folder

    with staged_folder(out, args.overwrite, _demo_part_is_ours) as staging:
        run_speech(staging, codecs=list(args.codecs), rates=args.rates or list(DEFAULT_RATES), seed=args.seed,
                   progress=not args.quiet)
    return out / "report.md"


def _demo_real(args: argparse.Namespace, out: Path) -> Path:
    from octopus_diffusers.eval.real.__main__ import run_real
    from octopus_diffusers.pipelines.run_folder import staged_folder

    with staged_folder(out, args.overwrite, _demo_part_is_ours) as staging:
        run_real(staging, quick=True)
    return out / "README.md"


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from octopus_diffusers.pipelines.run_folder import OutputFolderError, check_output_folder
    from octopus_diffusers.pipelines.runner import load_model

    start = time.perf_counter()
    config = _run_config(args, [], {})
    if args.out.is_dir() and not _demo_folder(args.out) and any(args.out.iterdir()):
        raise OutputFolderError(f"{args.out} holds other files than the demo's {', '.join(DEMO_PARTS)} folders; "
                                "choose another --out")
    for kind in args.media:
        check_output_folder(args.out / kind, args.overwrite, None if kind in DEMO_MODELS else _demo_part_is_ours)
    reports = []
    for kind in args.media:
        if kind in DEMO_MODELS:
            model = load_model(DEMO_MODELS[kind], tiny=True, dtype=torch.float32, device="cpu")
            reports.append(_generate_run(model, config, args.out / kind, args))
        else:
            part = {"causal": _demo_causal, "speech": _demo_speech, "real": _demo_real}[kind]
            reports.append(part(args, args.out / kind))
    print(f"demo finished in {time.perf_counter() - start:.1f} s; reports:")
    for report in reports:
        print(f"  {report}")
    return ExitCode.OK


def _overrides(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for option, key in (("frames", "num_frames"), ("height", "height"), ("width", "width"),
                        ("guidance", "guidance_scale")):
        if getattr(args, option) is not None:
            if spec.media == "audio" and option in ("frames", "height", "width"):
                raise CLIError(f"--{option} is for video models; {spec.name} makes audio (use --seconds)")
            overrides[key] = getattr(args, option)
    for option in ("height", "width"):
        value = getattr(args, option)
        if value is not None and spec.size_multiple and value % spec.size_multiple:
            raise CLIError(f"--{option} {value}: {spec.pipeline_class} needs a multiple of {spec.size_multiple}")
    if args.frames is not None and spec.frame_step and (args.frames - 1) % spec.frame_step:
        raise CLIError(f"--frames {args.frames}: {spec.pipeline_class} needs {spec.frame_step}k+1 frames "
                       f"(e.g. {(args.frames - 1) // spec.frame_step * spec.frame_step + 1})")
    if args.seconds is not None:
        if spec.pipeline_class not in SECONDS_ARGUMENT:
            raise CLIError(f"--seconds is for audio models; {spec.pipeline_class} makes video (use --frames)")
        overrides[SECONDS_ARGUMENT[spec.pipeline_class]] = args.seconds
    return overrides


def load_prompt_embeds(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tensors of a ``--prompt-embeds`` file (copied out of the file) and its size and SHA-256;
    refuses a missing, unreadable, empty or non-finite file, or one without ``prompt_embeds``."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from octopus_diffusers.pipelines.run_folder import file_record

    if not path.is_file():
        raise CLIError(f"--prompt-embeds: no such file {path}", ExitCode.BAD_INPUT)
    try:
        tensors = {k: v.clone() for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CLIError(f"--prompt-embeds {path}: not a readable safetensors file ({err})", ExitCode.BAD_INPUT) from None
    if "prompt_embeds" not in tensors:
        has = ", ".join(sorted(tensors)) or "none"
        raise CLIError(f"--prompt-embeds {path}: no 'prompt_embeds' tensor (has {has})", ExitCode.BAD_INPUT)
    for key, value in tensors.items():
        if value.numel() == 0:
            raise CLIError(f"--prompt-embeds {path}: tensor {key!r} is empty", ExitCode.BAD_INPUT)
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CLIError(f"--prompt-embeds {path}: tensor {key!r} holds NaN or Inf", ExitCode.BAD_INPUT)
    return tensors, {"file": str(path), **file_record(path)}


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from octopus_diffusers.pipelines.models import get_model_spec
    from octopus_diffusers.pipelines.run_folder import check_output_folder
    from octopus_diffusers.pipelines.runner import check_device, load_model

    if args.model in CAUSAL_MODELS:
        return cmd_run_causal(args)
    if args.chunks is not None:
        raise CLIError(f"--chunks is for the chunk-by-chunk models {', '.join(CAUSAL_MODELS)}, not {args.model}")
    spec = get_model_spec(args.model)
    overrides = _overrides(args, spec)
    check_output_folder(args.out, args.overwrite)
    embeds, source = load_prompt_embeds(args.prompt_embeds) if args.prompt_embeds is not None else (None, None)
    config = _run_config(args, args.prompt, overrides, embeds, source)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    model = load_model(args.model, weights=args.weights, tiny=args.tiny, dtype=getattr(torch, args.dtype),
                       device=device, cpu_offload=args.cpu_offload)
    report = _generate_run(model, config, args.out, args, evaluate=not args.skip_eval, render=not args.skip_render)
    print(f"run folder: {args.out}" + (f"; report: {report}" if report else ""))
    return ExitCode.OK


def cmd_eval(args: argparse.Namespace) -> int:
    report = _evaluate_and_report(args.run, args.out or args.run, args)
    print(f"report: {report}")
    return ExitCode.OK


def cmd_render(args: argparse.Namespace) -> int:
    written = _render(args.run, args.out or args.run / "renders", args)
    print(f"{len(written)} render(s):")
    for path in written:
        print(f"  {path}")
    return ExitCode.OK


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    import torch

    from octopus_diffusers.pipelines.run_folder import check_output_folder

    options = list(args.options)
    if args.benchmark in GPU_BENCHMARKS and "--toy" not in options and "--from-json" not in options \
            and not {"-h", "--help"} & set(options) and not torch.cuda.is_available():
        raise CLIError(f"bench {args.benchmark} needs a CUDA GPU" +
                       (" (or --toy for the CPU-size code path)" if args.benchmark == "cache" else ""),
                       ExitCode.ENVIRONMENT)
    module = importlib.import_module(BENCHMARKS[args.benchmark][0])
    if args.benchmark == "codecs" and not {"-h", "--help"} & set(options):
        parsed = module.build_parser().parse_args(options)
        check_output_folder(parsed.out, overwrite=True, is_ours=lambda _: True)
    return int(module.main(options) or 0)


def cmd_run_causal(args: argparse.Namespace) -> int:
    """``run --model self-forcing|causvid``: chunk-by-chunk generation through the compressed KV cache."""
    import torch

    from octopus_diffusers.eval.causal_eval import run_causal
    from octopus_diffusers.pipelines.run_folder import check_output_folder
    from octopus_diffusers.pipelines.runner import check_device

    if args.model == "clips" and args.tiny:
        raise CLIError("clips: the trained model ships with the package; --tiny does not apply")
    if args.model != "clips" and args.tiny == (args.weights is not None):
        raise CLIError(f"{args.model}: give --weights DIR (the original checkpoint, vae/, prompt_embeds.safetensors) "
                       "or --tiny (random weights), not both or neither")
    unsupported = [o for o in ("prompt", "prompt_embeds", "frames", "height", "width", "seconds", "guidance", "steps")
                   if getattr(args, o) not in (None, [])]
    if unsupported:
        raise CLIError(f"{args.model}: --{unsupported[0].replace('_', '-')} is not an option of causal runs "
                       "(prompts come from prompt_embeds.safetensors in --weights; size and steps from the model)")
    check_output_folder(args.out, args.overwrite)
    if args.out.exists() and args.overwrite:
        import shutil

        shutil.rmtree(args.out)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    if args.bits:
        variants = [(c, 16.0) if c == "none" else (c, b) for c in args.codecs
                    for b in ([16.0] if c == "none" else args.bits)]
        codecs, rates = list(dict.fromkeys(variants)), None
    else:   # matched true rates (the codec's bits per scalar; the cache's exact chunks add the same to each)
        codecs, rates = list(args.codecs), args.rates or list(DEFAULT_RATES)
    folder = run_causal(args.out, codecs=codecs, rates=rates, model="tiny" if args.tiny else args.model,
                        weights=args.weights, num_chunks=args.chunks or 5, seed=args.seed, device=device,
                        dtype=None if args.tiny or args.model == "clips" else getattr(torch, args.dtype),
                        progress=not args.quiet)
    print(f"run folder: {folder}; report: {folder / 'report.md'}")
    return ExitCode.OK


def exit_code(err: BaseException) -> ExitCode:
    """The :class:`ExitCode` of an exception escaping a command."""
    import torch

    from octopus_diffusers.pipelines.run_folder import OutputFolderError, OutputNotWritableError, RunFolderError
    from octopus_diffusers.pipelines.runner import (RunnerEnvironmentError, RunnerError, RunnerInputError,
                                                    RunnerOutOfMemoryError)

    if isinstance(err, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if isinstance(err, CLIError):
        return err.code
    if isinstance(err, (RunnerOutOfMemoryError, torch.OutOfMemoryError, MemoryError)):
        return ExitCode.OUT_OF_MEMORY
    if isinstance(err, (RunnerEnvironmentError, OutputNotWritableError, PermissionError, ImportError)):
        return ExitCode.ENVIRONMENT
    if isinstance(err, (RunnerInputError, RunFolderError)):
        return ExitCode.BAD_INPUT
    if isinstance(err, (RunnerError, OutputFolderError, ValueError)):  # CodecError is a ValueError
        return ExitCode.USAGE
    return ExitCode.INTERNAL


def _message(err: BaseException, code: ExitCode) -> str:
    if code == ExitCode.INTERRUPTED:
        return "interrupted; folders being written were removed, existing run folders are unchanged"
    text = " ".join(str(err).split()) or type(err).__name__  # one line
    if code == ExitCode.OUT_OF_MEMORY and "--cpu-offload" not in text:
        from octopus_diffusers.pipelines.runner import OOM_HINT

        return f"{text}; {OOM_HINT}"
    if code == ExitCode.INTERNAL:
        return f"internal error ({type(err).__name__}: {text}); rerun with --traceback and report it"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``octopus-diffusers`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    commands = {"demo": cmd_demo, "run": cmd_run, "eval": cmd_eval, "render": cmd_render, "bench": cmd_bench}
    try:
        with quiet_third_party():
            return int(commands[args.command](args))
    except (Exception, KeyboardInterrupt) as err:
        code = exit_code(err)
        if args.traceback:
            import traceback

            traceback.print_exc()
        print(f"octopus-diffusers {args.command}: error: {_message(err, code)}", file=sys.stderr)
        return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
