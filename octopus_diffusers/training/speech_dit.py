"""A small ``StableAudioDiTModel`` trained on the packaged real speech, on log-mel spectrograms.

diffusers' Stable Audio DiT at a small size (4 query heads x head_dim 64 over 2 KV heads in
cross-attention, as the full model's GQA) denoises 64-band log-mel windows of 256 frames (4.1 s at
16 kHz, hop 256), conditioned on a caption of the speech embedded by all-MiniLM-L6-v2 (token
embeddings for cross-attention, their mean as the global token). Flow matching, an Euler sampler;
waveforms come back through torchaudio's Griffin-Lim (no neural vocoder is reachable offline), which
is rough but lets a listener hear codec damage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .bundle import caption_prompt, load_bundle, read_meta, save_bundle

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "data" / "models" / "speech_dit"
KIND = "audio"
SAMPLE_RATE = 16000
MEL = {"sample_rate": SAMPLE_RATE, "n_fft": 1024, "hop_length": 256, "n_mels": 64}
#: Captions of the two speech clips (``eval.real.models.speech_clips`` order).
SPEECH_CAPTIONS = {"pyannote_sample": "two people talking on a phone call",
                   "beckett": "a man reading a passage of a book aloud"}


@dataclass(frozen=True)
class SpeechDiTConfig:
    """Model size, window and sampler of the trained speech DiT."""

    window: int = 256
    n_mels: int = 64
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    layers: int = 4
    text_dim: int = 384
    sample_steps: int = 16

    def __post_init__(self) -> None:
        if self.heads % self.kv_heads or min(self.window, self.layers, self.sample_steps) < 1:
            raise ValueError(f"SpeechDiTConfig: heads must be a multiple of kv_heads and sizes >= 1, got {self}")


def log_mel(wave: torch.Tensor) -> torch.Tensor:
    """``(n_mels, T)`` natural-log mel power of a mono 16 kHz waveform ``(samples,)``."""
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(**MEL, power=2.0)(wave.float())
    return mel.clamp_min(1e-5).log()


def mel_to_wave(mel: torch.Tensor, iters: int = 32) -> torch.Tensor:
    """Griffin-Lim waveform ``(samples,)`` of a log-mel ``(n_mels, T)`` (seeded, deterministic)."""
    import torchaudio

    torch.manual_seed(0)
    inv = torchaudio.transforms.InverseMelScale(n_stft=MEL["n_fft"] // 2 + 1, n_mels=MEL["n_mels"],
                                                sample_rate=SAMPLE_RATE)
    gl = torchaudio.transforms.GriffinLim(n_fft=MEL["n_fft"], hop_length=MEL["hop_length"], n_iter=iters, power=2.0)
    wave = gl(inv(mel.float().exp()))
    return wave / wave.abs().max().clamp_min(1e-6) * 0.9


def denormalise(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Normalised log-mel back to natural-log mel power (the inverse of ``(m - mean) / (2 std)``)."""
    return x * (2 * std) + mean


def build_speech_dataset() -> tuple[dict[str, torch.Tensor], list[str]]:
    """Tensors of the speech dataset file (``mel/<i>`` normalised log-mels, ``caption_embeds``,
    ``mel_mean``/``mel_std``) and the clip names."""
    from octopus_diffusers.eval.real.models import load_audio, speech_clips

    from .clips import embed_captions

    clips = speech_clips()
    mels = [log_mel(torch.from_numpy(load_audio(c.path, SAMPLE_RATE))) for c in clips]
    allm = torch.cat(mels, dim=1)
    mean, std = allm.mean(), allm.std()
    tensors = {f"mel/{i}": ((m - mean) / (2 * std)).contiguous() for i, m in enumerate(mels)}  # see denormalise
    embeds, _ = embed_captions([SPEECH_CAPTIONS[c.name] for c in clips])
    tensors.update(caption_embeds=embeds.contiguous(), mel_mean=mean.reshape(1), mel_std=std.reshape(1))
    return tensors, [c.name for c in clips]


@dataclass
class SpeechDataset:
    """Normalised log-mels per clip ``(n_mels, T)``, caption embeddings, the normalisation."""

    mels: list[torch.Tensor]
    caption_embeds: torch.Tensor
    names: list[str]
    mean: float
    std: float

    @classmethod
    def load(cls, path: Path) -> SpeechDataset:
        """Read a file written by ``python -m octopus_diffusers.training data --kind audio``."""
        from .clips import SPEECH_KIND, read_dataset, sequences

        meta, tensors = read_dataset(path, SPEECH_KIND, "speech")
        return cls([m.float() for m in sequences(tensors, "mel")], tensors["caption_embeds"].float(),
                   meta.get("clips", "").split(","), float(tensors["mel_mean"]), float(tensors["mel_std"]))

    def windows(self, window: int, hop: int) -> list[tuple[int, int]]:
        from .clips import video_windows

        return video_windows([m.shape[1] for m in self.mels], window, hop)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return denormalise(x, self.mean, self.std)


def build_dit(config: SpeechDiTConfig, seed: int = 0) -> Any:
    from diffusers import StableAudioDiTModel

    torch.manual_seed(seed)
    return StableAudioDiTModel(
        sample_size=config.window, in_channels=config.n_mels, num_layers=config.layers,
        attention_head_dim=config.head_dim, num_attention_heads=config.heads,
        num_key_value_attention_heads=config.kv_heads, out_channels=config.n_mels, cross_attention_dim=256,
        time_proj_dim=256, global_states_input_dim=config.text_dim, cross_attention_input_dim=config.text_dim)


def dit_forward(model: Any, x: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Predicted flow of ``x`` ``(B, n_mels, T)`` at noise level ``sigma`` ``(B,)``, as the pipeline calls it
    (rotary embedding over the global token plus ``T`` frames, the caption's mean as global state)."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    rotary = get_1d_rotary_pos_embed(model.config.attention_head_dim // 2, x.shape[2] + 1, use_real=True,
                                     repeat_interleave_real=False)
    rotary = tuple(r.to(x.device) for r in rotary)
    global_states = text.mean(dim=1, keepdim=True)
    return model(x, sigma, encoder_hidden_states=text, global_hidden_states=global_states,
                 rotary_embedding=rotary, return_dict=False)[0]


class FlowMatchingLoss:
    """``loss_fn`` for :func:`~octopus_diffusers.training.loop.train`: random windows, uniform sigma."""

    def __init__(self, dataset: SpeechDataset, config: SpeechDiTConfig, batch_size: int, hop: int = 8) -> None:
        self.dataset, self.config, self.batch_size = dataset, config, batch_size
        self.windows = dataset.windows(config.window, hop)

    def __call__(self, model: torch.nn.Module, step: int, generator: torch.Generator) -> torch.Tensor:
        device = next(model.parameters()).device
        g = generator.device
        idx = torch.randint(len(self.windows), (self.batch_size,), generator=generator, device=g).tolist()
        picks = [self.windows[i] for i in idx]
        clean = torch.stack([self.dataset.mels[c][:, s:s + self.config.window] for c, s in picks]).to(device)
        text = self.dataset.caption_embeds[[c for c, _ in picks]].to(device)
        sigma = torch.rand(self.batch_size, generator=generator, device=g).to(device)
        noise = torch.randn(clean.shape, generator=generator, device=g).to(device)
        s = sigma.view(-1, 1, 1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            flow = dit_forward(model, (1 - s) * clean + s * noise, sigma, text)
        return torch.nn.functional.mse_loss(flow.float(), noise - clean)


@torch.no_grad()
def sample(model: Any, text: torch.Tensor, config: SpeechDiTConfig, seed: int = 0) -> torch.Tensor:
    """Euler flow-matching sample ``(B, n_mels, window)`` from seeded noise (drawn on the CPU)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(text.shape[0], config.n_mels, config.window, generator=gen).to(device, dtype)
    text = text.to(device, dtype)
    sigmas = [1.0 - i / config.sample_steps for i in range(config.sample_steps + 1)]
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        flow = dit_forward(model, x, torch.full((x.shape[0],), s, device=device, dtype=dtype), text)
        x = x + (s_next - s) * flow
    return x


@dataclass
class TrainedSpeechDiT:
    model: Any
    caption_embeds: torch.Tensor
    clip_names: list[str]
    config: SpeechDiTConfig
    mean: float
    std: float
    record: dict[str, Any]

    def prompt(self, clip: str) -> torch.Tensor:
        """``(1, L, 384)`` caption embedding of the named training clip."""
        return caption_prompt(self.caption_embeds, self.clip_names, clip)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return denormalise(x, self.mean, self.std)


def save_trained(out: Path, model: Any, dataset: SpeechDataset, config: SpeechDiTConfig, record: dict) -> None:
    save_bundle(out, model, {"caption_embeds": dataset.caption_embeds},
                {"kind": KIND, "model": asdict(config), "clips": dataset.names, "mel_mean": dataset.mean,
                 "mel_std": dataset.std, "mel": MEL, "training": record})


def load_trained(folder: Path = WEIGHTS_DIR, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> TrainedSpeechDiT:
    """Load the shipped (or any :func:`save_trained`) speech DiT strictly."""
    meta = read_meta(folder)
    config = SpeechDiTConfig(**meta["model"])
    model = build_dit(config)
    extras, meta = load_bundle(folder, model, KIND)
    return TrainedSpeechDiT(model.to(device, dtype).eval(), extras["caption_embeds"].to(device, dtype),
                            meta["clips"], config, meta["mel_mean"], meta["mel_std"], meta.get("training", {}))


__all__ = ["FlowMatchingLoss", "MEL", "SAMPLE_RATE", "SpeechDataset", "SpeechDiTConfig", "TrainedSpeechDiT",
           "WEIGHTS_DIR", "build_dit", "build_speech_dataset", "denormalise", "dit_forward", "load_trained", "log_mel",
           "mel_to_wave", "sample", "save_trained"]
