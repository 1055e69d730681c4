"""The ``octopus-diffusers`` command: ``demo``, ``run``, ``eval``, ``render`` and ``bench``.

``run`` generates a baseline and every codec x bits with one model and seed, then (unless told not to)
scores and renders them; ``eval`` and ``render`` redo those steps on an existing run folder; ``demo``
does it all offline on the embedded tiny video (Wan) and audio (Stable Audio Open) pipelines; ``bench``
is the codec rate-distortion benchmark.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DTYPES = ("bfloat16", "float16", "float32")
DEMO_CODECS = ("none", "octopus", "turboquant", "uniform")
#: Far-apart widths: the tiny video pipeline has so few tokens that adjacent widths can swap order.
DEMO_BITS = (2.0, 4.0, 6.0)
#: Demo media -> (model whose tiny pipeline runs, sub-folder).
DEMO_MODELS = {"video": "wan2.1-t2v-1.3b", "audio": "stable-audio-open"}
#: Audio length arguments differ between audio pipelines.
SECONDS_ARGUMENT = {"StableAudioPipeline": "audio_end_in_s", "AudioLDM2Pipeline": "audio_length_in_s"}


class CLIError(Exception):
    """A problem with the command line or its inputs, shown as one ``error:`` line."""


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


def _bits_list(text: str) -> list[float]:
    try:
        values = [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bit widths must be numbers separated by commas, got {text!r}") from None
    if not values or any(not 0 < b <= 32 for b in values):
        raise argparse.ArgumentTypeError(f"bit widths must lie in (0, 32], got {text!r}")
    return values


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


# ---- parser --------------------------------------------------------------------------------------
def _add_quantization_options(p: argparse.ArgumentParser, codecs: Sequence[str], bits: Sequence[float]) -> None:
    p.add_argument("--codecs", type=_codec_list, default=list(codecs), metavar="A,B,...",
                   help=f"comma-separated codecs to compare with the baseline (default {','.join(codecs)}); "
                        "'none' (identical K/V) and 'fp8' run once at their fixed width")
    p.add_argument("--bits", type=_bits_list, default=list(bits), metavar="B,B,...",
                   help=f"comma-separated nominal bits per scalar for every codec (default "
                        f"{','.join(f'{b:g}' for b in bits)}); a codec refusing a width stops the run before "
                        "anything is generated")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise and of the codecs' rotations "
                                                       "(default 0), the same for every variant")
    p.add_argument("--no-self-attention", action="store_true",
                   help="leave self-/joint-attention K/V unquantized")
    p.add_argument("--no-cross-attention", action="store_true", help="leave cross-attention K/V unquantized")
    p.add_argument("--full-precision-steps", type=int, default=0, metavar="N",
                   help="keep the first N denoising steps unquantized (default 0)")


def _add_post_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lpips", choices=("auto", "on", "off"), default="auto",
                   help="LPIPS for video: 'auto' computes it only when its backbone weights are cached locally "
                        "(default), 'on' fails without them, 'off' skips it")
    p.add_argument("--no-diff", action="store_true", help="renders: leave out the amplified-difference row")
    p.add_argument("--amplify", type=float, default=8.0,
                   help="renders: factor applied to |variant - baseline| in the difference row (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from octopus_diffusers.pipelines.models import MODELS

    parser = argparse.ArgumentParser(
        prog="octopus-diffusers",
        description="Quantize the attention K/V of diffusers video and audio models with OCTOPUS and peer "
                    "codecs, and compare the outputs with the unquantized baseline.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="offline end-to-end demo on tiny Wan (video) and Stable Audio (audio)",
                          description="Build the embedded tiny video and audio pipelines (random weights, no "
                                      "download), generate the baseline and every codec x bits, and write "
                                      "metrics, reports, plots and renders. About a minute on 2 CPU cores.")
    demo.add_argument("--out", type=Path, default=Path("octopus_demo"),
                      help="output folder (default ./octopus_demo); video/ and audio/ are written inside")
    demo.add_argument("--media", choices=("both", "video", "audio"), default="both",
                      help="which tiny pipelines to run (default both)")
    _add_quantization_options(demo, DEMO_CODECS, DEMO_BITS)
    _add_post_options(demo)

    run = sub.add_parser("run", help="generate baseline + codecs x bits with a real (or tiny) model, then score "
                                     "and render",
                         description="Load a model from the hub, a local folder or its tiny offline version; "
                                     "generate the baseline and every codec x bits with the same seed and "
                                     "prompts into a run folder; then evaluate and render it.")
    run.add_argument("--model", required=True, choices=sorted(MODELS), metavar="MODEL",
                     help=f"model family and default weights: {', '.join(sorted(MODELS))}")
    run.add_argument("--weights", metavar="ID_OR_FOLDER",
                     help="hub id or local folder written by save_pretrained (default: the model's hub id)")
    run.add_argument("--tiny", action="store_true", help="use the family's tiny offline pipeline (random weights)")
    run.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                     help="a text prompt; repeat for several (each runs for every variant)")
    run.add_argument("--prompt-embeds", type=Path, metavar="FILE",
                     help="safetensors file of call tensors (prompt_embeds, negative_prompt_embeds, masks) for "
                          "pipelines saved without a text encoder")
    run.add_argument("--out", type=Path, required=True, help="run folder to write (created)")
    run.add_argument("--steps", type=_positive_int, help="denoising steps (default: the model's)")
    run.add_argument("--frames", type=_positive_int, help="video frames (default: the model's)")
    run.add_argument("--height", type=_positive_int, help="video height in pixels (default: the model's)")
    run.add_argument("--width", type=_positive_int, help="video width in pixels (default: the model's)")
    run.add_argument("--seconds", type=float, help="audio length in seconds (default: the model's)")
    run.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    run.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="weights dtype (default bfloat16)")
    run.add_argument("--device", default=None, help="torch device (default cuda when available, else cpu)")
    run.add_argument("--cpu-offload", action="store_true",
                     help="diffusers enable_model_cpu_offload: keep only the running component on the GPU")
    run.add_argument("--frame-dtype", choices=("float16", "float32"), default="float16",
                     help="dtype of the saved raw frames (default float16: half the disk, rounding <= 2.5e-4, "
                          "so PSNR above ~75 dB is not resolved; float32 keeps frames exact)")
    run.add_argument("--skip-eval", action="store_true", help="only generate; score later with `eval`")
    run.add_argument("--skip-render", action="store_true", help="do not write comparison renders")
    _add_quantization_options(run, ("octopus", "turboquant", "uniform"), (2.0, 3.0, 4.0))
    _add_post_options(run)

    ev = sub.add_parser("eval", help="score a run folder against its baseline: JSON, CSV, Markdown, plots",
                        description="Compute every metric of every variant in RUN against the baseline and write "
                                    "metrics.json, metrics.csv, report.md and plots/ into RUN (or --out).")
    ev.add_argument("run", type=Path, metavar="RUN", help="run folder written by `run` or `demo`")
    ev.add_argument("--out", type=Path, help="where to write (default: RUN)")
    _add_post_options(ev)

    render = sub.add_parser("render", help="side-by-side comparison videos / spectrograms of a run folder",
                            description="Per prompt and bit width: baseline | codec ... MP4s with an amplified "
                                        "difference row (video); spectrogram PNGs and listening MP4s (audio).")
    render.add_argument("run", type=Path, metavar="RUN", help="run folder written by `run` or `demo`")
    render.add_argument("--out", type=Path, help="where to write (default: RUN/renders)")
    _add_post_options(render)

    from octopus_diffusers.eval.rate_distortion import build_parser as bench_parser

    sub.add_parser("bench", parents=[bench_parser()], add_help=False,
                   help="codec rate-distortion benchmark (true bits/scalar, distortion, attention error)",
                   description=bench_parser().description)
    return parser


# ---- commands ------------------------------------------------------------------------------------
def _run_config(args: argparse.Namespace, prompts: list[str], overrides: dict[str, Any],
                prompt_embeds: Any = None):
    from octopus_diffusers.pipelines.runner import RunConfig

    return RunConfig(codecs=args.codecs, bits=args.bits, prompts=prompts, seed=args.seed,
                     steps=getattr(args, "steps", None), overrides=overrides, prompt_embeds=prompt_embeds,
                     self_attention=not args.no_self_attention, cross_attention=not args.no_cross_attention,
                     full_precision_steps=args.full_precision_steps,
                     frame_dtype=getattr(args, "frame_dtype", "float32"))  # demo: tiny frames, kept exact


def _evaluate_and_report(run_dir: Path, out_dir: Path, args: argparse.Namespace, renders: list[Path]) -> Path:
    from octopus_diffusers.eval.evaluate import evaluate_run
    from octopus_diffusers.eval.plots import plot_all
    from octopus_diffusers.eval.report import write_reports

    lpips = {"auto": "auto", "on": True, "off": False}[args.lpips]
    results = evaluate_run(run_dir, lpips=lpips, progress=not args.quiet)
    plots = plot_all(results, out_dir / "plots")
    paths = write_reports(results, out_dir, images=[p.relative_to(out_dir) for p in plots],
                          videos=[_relative(p, out_dir) for p in renders])
    return paths["markdown"]


def _relative(path: Path, start: Path) -> Path:
    import os

    return Path(os.path.relpath(path, start))


def _render(run_dir: Path, out_dir: Path, args: argparse.Namespace) -> list[Path]:
    from octopus_diffusers.eval.render import render_run

    return render_run(run_dir, out_dir, diff_row=not args.no_diff, amplify=args.amplify, progress=not args.quiet)


def _finish(run_dir: Path, args: argparse.Namespace, evaluate: bool = True, render: bool = True) -> Path | None:
    renders = _render(run_dir, run_dir / "renders", args) if render else []
    return _evaluate_and_report(run_dir, run_dir, args, renders) if evaluate else None


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from octopus_diffusers.pipelines.runner import load_model, run_comparison

    start = time.perf_counter()
    media = ("video", "audio") if args.media == "both" else (args.media,)
    reports = []
    for kind in media:
        model = load_model(DEMO_MODELS[kind], tiny=True, dtype=torch.float32, device="cpu")
        run_dir = run_comparison(model, _run_config(args, [], {}), args.out / kind, progress=not args.quiet)
        reports.append(_finish(run_dir, args))
    print(f"demo finished in {time.perf_counter() - start:.1f} s; reports:")
    for report in reports:
        print(f"  {report}")
    return 0


def _overrides(args: argparse.Namespace, pipeline_class: str) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for option, key in (("frames", "num_frames"), ("height", "height"), ("width", "width"),
                        ("guidance", "guidance_scale")):
        if getattr(args, option) is not None:
            overrides[key] = getattr(args, option)
    if args.seconds is not None:
        if pipeline_class not in SECONDS_ARGUMENT:
            raise CLIError(f"--seconds is for audio models; {pipeline_class} makes video (use --frames)")
        overrides[SECONDS_ARGUMENT[pipeline_class]] = args.seconds
    return overrides


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from octopus_diffusers.pipelines.models import get_model_spec
    from octopus_diffusers.pipelines.runner import load_model, run_comparison

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    spec = get_model_spec(args.model)
    overrides = _overrides(args, spec.pipeline_class)
    embeds = None
    if args.prompt_embeds is not None:
        if not args.prompt_embeds.is_file():
            raise CLIError(f"--prompt-embeds: no such file {args.prompt_embeds}")
        from safetensors.torch import load_file

        embeds = load_file(str(args.prompt_embeds))
    model = load_model(args.model, weights=args.weights, tiny=args.tiny, dtype=getattr(torch, args.dtype),
                       device=device, cpu_offload=args.cpu_offload)
    run_dir = run_comparison(model, _run_config(args, args.prompt, overrides, embeds), args.out,
                             progress=not args.quiet)
    report = _finish(run_dir, args, evaluate=not args.skip_eval, render=not args.skip_render)
    print(f"run folder: {run_dir}" + (f"; report: {report}" if report else ""))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    out = args.out or args.run
    renders_dir = args.run / "renders"
    renders = sorted(renders_dir.glob("*.mp4")) + sorted(renders_dir.glob("*.png")) if renders_dir.is_dir() else []
    report = _evaluate_and_report(args.run, out, args, renders)
    print(f"report: {report}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    written = _render(args.run, args.out or args.run / "renders", args)
    print(f"{len(written)} render(s):")
    for path in written:
        print(f"  {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``octopus-diffusers`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        from octopus_diffusers.eval.rate_distortion import main as bench_main

        return bench_main(argv[1:])
    from octopus_diffusers.codecs import CodecError
    from octopus_diffusers.pipelines.runner import RunnerError

    commands = {"demo": cmd_demo, "run": cmd_run, "eval": cmd_eval, "render": cmd_render}
    try:
        return commands[args.command](args)
    except (CLIError, RunnerError, CodecError, FileNotFoundError) as err:
        print(f"octopus-diffusers {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
