"""The training code of the small real-clip models: data windows, the resumable loop, both models at
tiny sizes on CPU (the loss falls), the shipped bundle format, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from octopus_diffusers.training.bundle import load_bundle, save_bundle
from octopus_diffusers.training.causal_video import CausalVideoConfig, TeacherForcingLoss, TrainedCausalVideo, \
    build_transformer, load_trained, save_trained
from octopus_diffusers.training.clips import VideoDataset, nearest_window_psnr, save_dataset, video_windows
from octopus_diffusers.training.loop import TrainConfig, train
from octopus_diffusers.training.speech_dit import FlowMatchingLoss, SpeechDataset, SpeechDiTConfig, build_dit, \
    mel_to_wave, sample

TINY_VIDEO = CausalVideoConfig(size=16, patch=4, frames_per_chunk=1, chunks=3, heads=2, head_dim=16, layers=1,
                               ffn_dim=32, text_dim=8, sample_steps=2)
TINY_SPEECH = SpeechDiTConfig(window=16, n_mels=8, heads=2, kv_heads=1, head_dim=16, layers=1, text_dim=8,
                              sample_steps=2)


def _video_dataset() -> VideoDataset:
    """Two smooth synthetic 'clips' (moving gradients), 6 frames of 16x16, with 3-token captions."""
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-1, 1, 16)
    clips = [torch.stack([torch.stack([torch.sin(3 * x[None, :] + t / 2 + c) * torch.cos(2 * x[:, None])] * 3)
                          for t in range(6)]) * 0.8 for c in range(2)]
    return VideoDataset(clips, torch.randn(2, 3, 8, generator=g), ["a", "b"])


def _speech_dataset() -> SpeechDataset:
    g = torch.Generator().manual_seed(1)
    t = torch.arange(48.0)
    mels = [torch.sin(t[None, :] / 4 + torch.arange(8.0)[:, None] + c) * 0.7 for c in range(2)]
    return SpeechDataset(mels, torch.randn(2, 3, 8, generator=g), ["p", "q"], mean=-4.0, std=2.0)


def _assert_loss_fell(result) -> None:
    """The mean of the last 10 logged losses is at least 20 % below the mean of the first 10."""
    first, last = (sum(v for _, v in part) / len(part) for part in (result.losses[:10], result.losses[-10:]))
    assert last < 0.8 * first, (first, last)


def test_windows_cover_every_clip_at_the_hop_and_refuse_short_clips() -> None:
    assert video_windows([5, 3], window=3, hop=2) == [(0, 0), (0, 2), (1, 0)]
    with pytest.raises(ValueError, match="shorter than the 4-frame window"):
        video_windows([3, 2], window=4, hop=1)


def test_nearest_window_psnr_finds_the_exact_window_along_either_time_axis() -> None:
    seqs = [torch.randn(7, 3, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    psnr, clip, start = nearest_window_psnr(seqs[1][2:5], seqs, time_dim=0, peak=2.0)
    assert (clip, start) == (1, 2) and psnr > 100
    mels = [s.flatten(1).T for s in seqs]                  # (48, 7): time on dim 1
    psnr, clip, start = nearest_window_psnr(mels[0][:, 3:6] + 0.01, mels, time_dim=1, peak=2.0)
    assert (clip, start) == (0, 3) and 40 < psnr < 100


def _quadratic_loss(model: torch.nn.Module, step: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(8, 4, generator=gen)
    return ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()


def test_loop_resumes_bit_identically_and_refuses_another_runs_checkpoint(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=40, lr=5e-2, warmup=2, checkpoint_every=15, log_every=1)
    straight = torch.nn.Linear(4, 1)
    torch.manual_seed(5)
    resumed = torch.nn.Linear(4, 1)
    resumed.load_state_dict(straight.state_dict())
    a = train(straight, _quadratic_loss, cfg, tmp_path / "a", progress=False)

    def interrupted(model: torch.nn.Module, step: int, gen: torch.Generator) -> torch.Tensor:
        if step == 17:
            raise KeyboardInterrupt
        return _quadratic_loss(model, step, gen)

    with pytest.raises(KeyboardInterrupt):
        train(resumed, interrupted, cfg, tmp_path / "b", progress=False)
    second = train(resumed, _quadratic_loss, cfg, tmp_path / "b", progress=False)
    assert second.resumed_from == 15 and second.steps_done == 40 and second.losses == a.losses
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert sum(v for _, v in a.losses[-5:]) < 0.5 * sum(v for _, v in a.losses[:5])
    assert (tmp_path / "a" / "loss.png").is_file() and (tmp_path / "a" / "loss.csv").read_text().startswith("step")
    with pytest.raises(ValueError, match="written by another run"):
        train(torch.nn.Linear(4, 1), _quadratic_loss, TrainConfig(steps=7), tmp_path / "a", progress=False)


def test_loop_refuses_a_non_finite_loss(tmp_path: Path) -> None:
    def bad(model, step, gen):
        return model(torch.full((1, 4), float("nan"))).sum()

    with pytest.raises(FloatingPointError, match="training loss is nan at step 0"):
        train(torch.nn.Linear(4, 1), bad, TrainConfig(steps=2, warmup=0), tmp_path, progress=False)


def test_causal_video_loss_falls_and_the_model_generates_through_the_cache(tmp_path: Path) -> None:
    data = _video_dataset()
    model = build_transformer(TINY_VIDEO)
    loss = TeacherForcingLoss(data, TINY_VIDEO, batch_size=4, hop=1)
    result = train(model, loss, TrainConfig(steps=60, lr=3e-3, warmup=5, log_every=1), tmp_path, progress=False)
    _assert_loss_fell(result)
    trained = TrainedCausalVideo(result.ema, data.caption_embeds, data.names, TINY_VIDEO)
    gen = trained.generator()
    out = gen.generate(trained.prompt("b"), 3, trained.latent_size, cache=gen.dense_cache(trained.latent_size, 3))
    assert out.latents.shape == (1, 3, 3, 16, 16) and torch.isfinite(out.latents).all()


def test_causal_video_bundle_round_trips_and_refuses_missing_or_foreign_files(tmp_path: Path) -> None:
    data = _video_dataset()
    model = build_transformer(TINY_VIDEO, seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())                                  # fp16-exact weights
    save_trained(tmp_path / "m", model, data, TINY_VIDEO, {"steps": 1})
    loaded = load_trained(tmp_path / "m")
    assert loaded.config == TINY_VIDEO and loaded.clip_names == ["a", "b"] and loaded.record == {"steps": 1}
    for (k, p), (k2, q) in zip(model.state_dict().items(), loaded.transformer.state_dict().items()):
        assert k == k2 and torch.equal(p, q)
    with pytest.raises(ValueError, match="unknown clip 'c'"):
        loaded.prompt("c")
    (tmp_path / "m" / "extras.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing extras.safetensors"):
        load_trained(tmp_path / "m")
    save_bundle(tmp_path / "s", build_dit(TINY_SPEECH), {"caption_embeds": torch.zeros(1, 1, 8)},
                {"kind": "audio", "model": TINY_SPEECH.__dict__})
    with pytest.raises(ValueError, match="bundle kind 'audio', expected 'video'"):
        load_bundle(tmp_path / "s", build_transformer(TINY_VIDEO), "video")


def test_dataset_files_refuse_another_kind_and_name_the_path(tmp_path: Path) -> None:
    save_dataset({"mel/0": torch.zeros(8, 16)}, tmp_path / "x.safetensors", {"kind": "octopus-speech-mels"})
    with pytest.raises(ValueError, match="not a video dataset"):
        VideoDataset.load(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError, match="no video dataset file"):
        VideoDataset.load(tmp_path / "missing.safetensors")
    assert not list(tmp_path.glob("*.partial"))


def test_speech_dit_loss_falls_and_samples_decode_to_audio(tmp_path: Path) -> None:
    data = _speech_dataset()
    model = build_dit(TINY_SPEECH)
    loss = FlowMatchingLoss(data, TINY_SPEECH, batch_size=8, hop=2)
    result = train(model, loss, TrainConfig(steps=60, lr=3e-3, warmup=5, log_every=1), tmp_path, progress=False)
    _assert_loss_fell(result)
    mel = sample(result.ema, data.caption_embeds[:1], TINY_SPEECH)
    assert mel.shape == (1, 8, 16) and torch.isfinite(mel).all()


def test_griffin_lim_gives_a_normalised_waveform_of_the_mels_length() -> None:
    wave = mel_to_wave(torch.randn(64, 20) - 4, iters=2)
    assert wave.ndim == 1 and abs(wave.shape[0] - 19 * 256) <= 256 and float(wave.abs().max()) == pytest.approx(0.9)


def test_shipped_config_json_matches_the_model_configs() -> None:
    from octopus_diffusers.training import causal_video, speech_dit

    for folder, cls in ((causal_video.WEIGHTS_DIR, CausalVideoConfig), (speech_dit.WEIGHTS_DIR, SpeechDiTConfig)):
        if not (folder / "config.json").is_file():
            pytest.skip(f"{folder} not trained yet")
        meta = json.loads((folder / "config.json").read_text())
        cls(**meta["model"])
        assert meta["training"]["steps"] > 0 and meta["training"]["baseline_eval"]
