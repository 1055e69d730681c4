"""Audio fidelity against the unquantized baseline.

Waveform metrics (torchmetrics): SI-SDR and SNR, in dB, higher is better. Spectral distances (defined
here on torchaudio transforms, lower is better, 0 for identical signals):

* multi-resolution STFT distance: the mean over STFT resolutions of spectral convergence
  ``||S_ref| - |S_test||_F / ||S_ref||_F`` plus log-magnitude L1 ``mean |log|S_ref| - log|S_test||``
  (the loss of Yamamoto et al., Parallel WaveGAN, 2020), Hann windows, hop = n_fft / 4;
* log-mel distance: mean absolute difference of natural-log mel magnitudes (``log(mel + 1e-5)``);
* log-spectral distance: per STFT frame, the RMS over frequency of the dB power difference, averaged.

All metrics see both signals scaled by one common factor that makes the reference peak at 1, so the
log floors are relative to the reference level (SNR and SI-SDR are unchanged by it).

Speech metrics run only when their package is installed and the signal suits them: at least 0.5 s
long, and for STOI (pystoi) a sample rate of at least 10 kHz (its internal rate), for PESQ (pesq)
its native 8 or 16 kHz rates (no silent resampling). Otherwise they are listed in ``skipped`` with the
reason. Music and effects (Stable Audio) are judged by the spectral distances.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import torch

#: (n_fft, hop_length) pairs of the multi-resolution STFT distance.
STFT_RESOLUTIONS: tuple[tuple[int, int], ...] = ((512, 128), (1024, 256), (2048, 512))
MEL_N_FFT = 2048
MEL_BANDS = 80
LOG_EPS = 1e-5
#: Larger is better for these; the others are distances.
HIGHER_IS_BETTER = {"si_sdr": True, "snr": True, "stoi": True, "pesq": True, "mrstft": False, "log_mel": False,
                    "lsd": False}
STOI_MIN_RATE = 10_000
#: Shorter clips hold too few analysis frames for either speech metric.
SPEECH_MIN_SECONDS = 0.5
PESQ_RATES = {8000: "nb", 16000: "wb"}


@dataclass
class AudioMetrics:
    """Metrics of one waveform against its baseline: means over channels, and per-channel values."""

    values: dict[str, float]
    per_channel: dict[str, list[float]]
    sample_rate: int
    num_samples: int
    num_channels: int
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": "audio", "sample_rate": self.sample_rate, "num_samples": self.num_samples,
                "num_channels": self.num_channels, "summary": dict(self.values),
                "per_channel": self.per_channel, "skipped": dict(self.skipped)}


def as_channels(audio: torch.Tensor, name: str = "audio") -> torch.Tensor:
    """Validate a waveform ``(T,)``, ``(C, T)`` or ``(B, C, T)``; return float32 ``(N, T)`` on the CPU."""
    if not isinstance(audio, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(audio).__name__}")
    if not audio.is_floating_point():
        raise TypeError(f"{name}: expected a float waveform, got {audio.dtype}")
    if audio.dim() not in (1, 2, 3) or audio.shape[-1] < 2:
        raise ValueError(f"{name}: expected (T,), (C, T) or (B, C, T) with T >= 2, got shape {tuple(audio.shape)}")
    audio = audio.detach().cpu().float().reshape(-1, audio.shape[-1])
    if not bool(torch.isfinite(audio).all()):
        raise ValueError(f"{name}: waveform contains NaN or Inf")
    return audio


def _fitting_resolutions(num_samples: int) -> list[tuple[int, int]]:
    """The configured STFT resolutions that fit the signal, or one smaller power of two if none do."""
    fits = [(n, h) for n, h in STFT_RESOLUTIONS if n <= num_samples]
    if fits:
        return fits
    n_fft = 1 << (num_samples.bit_length() - 1)
    return [(n_fft, max(n_fft // 4, 1))]


def _magnitudes(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    from torchaudio.transforms import Spectrogram

    return Spectrogram(n_fft=n_fft, hop_length=hop, power=1.0)(x)


def multi_resolution_stft_distance(reference: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Per-channel spectral convergence + log-magnitude L1, averaged over resolutions; ``(N,)``."""
    total = torch.zeros(reference.shape[0])
    resolutions = _fitting_resolutions(reference.shape[-1])
    for n_fft, hop in resolutions:
        ref, tst = _magnitudes(reference, n_fft, hop), _magnitudes(test, n_fft, hop)
        convergence = (ref - tst).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1).clamp_min(LOG_EPS)
        log_l1 = (torch.log(ref + LOG_EPS) - torch.log(tst + LOG_EPS)).abs().flatten(1).mean(dim=1)
        total += convergence + log_l1
    return total / len(resolutions)


def log_spectral_distance(reference: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Per-channel log-spectral distance in dB at the middle STFT resolution that fits; ``(N,)``."""
    resolutions = _fitting_resolutions(reference.shape[-1])
    n_fft, hop = resolutions[len(resolutions) // 2]
    ref = 10 * torch.log10(_magnitudes(reference, n_fft, hop) ** 2 + LOG_EPS)
    tst = 10 * torch.log10(_magnitudes(test, n_fft, hop) ** 2 + LOG_EPS)
    per_frame = ((ref - tst) ** 2).mean(dim=-2).sqrt()  # RMS over frequency: (N, frames)
    return per_frame.mean(dim=-1)


def log_mel_distance(reference: torch.Tensor, test: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Per-channel mean ``|log(mel_ref + eps) - log(mel_test + eps)|``; ``(N,)``."""
    from torchaudio.transforms import MelSpectrogram

    n_fft = min(MEL_N_FFT, _fitting_resolutions(reference.shape[-1])[-1][0])
    n_mels = min(MEL_BANDS, max(n_fft // 16, 8))
    mel = MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=max(n_fft // 4, 1), n_mels=n_mels,
                         power=1.0)
    diff = torch.log(mel(reference) + LOG_EPS) - torch.log(mel(test) + LOG_EPS)
    return diff.abs().flatten(1).mean(dim=1)


def _speech_metrics(reference: torch.Tensor, test: torch.Tensor, sample_rate: int
                    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    values: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    seconds = reference.shape[-1] / sample_rate
    if importlib.util.find_spec("pystoi") is None:
        skipped["stoi"] = "pystoi is not installed"
    elif sample_rate < STOI_MIN_RATE or seconds < SPEECH_MIN_SECONDS:
        skipped["stoi"] = (f"needs >= {STOI_MIN_RATE} Hz and >= {SPEECH_MIN_SECONDS} s, got {sample_rate} Hz, "
                           f"{seconds:.3f} s")
    else:
        from torchmetrics.functional.audio import short_time_objective_intelligibility

        values["stoi"] = short_time_objective_intelligibility(test, reference, sample_rate).reshape(-1)
    if importlib.util.find_spec("pesq") is None:
        skipped["pesq"] = "pesq is not installed"
    elif sample_rate not in PESQ_RATES or seconds < SPEECH_MIN_SECONDS:
        skipped["pesq"] = (f"needs 8000 or 16000 Hz and >= {SPEECH_MIN_SECONDS} s, got {sample_rate} Hz, "
                           f"{seconds:.3f} s")
    else:
        from torchmetrics.functional.audio import perceptual_evaluation_speech_quality

        values["pesq"] = perceptual_evaluation_speech_quality(test, reference, sample_rate,
                                                              PESQ_RATES[sample_rate]).reshape(-1)
    return values, skipped


def audio_metrics(reference: torch.Tensor, test: torch.Tensor, sample_rate: int) -> AudioMetrics:
    """Compare ``test`` audio with ``reference`` audio (same shape) sampled at ``sample_rate`` Hz."""
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio, signal_noise_ratio

    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    ref = as_channels(reference, "reference")
    tst = as_channels(test, "test")
    if ref.shape != tst.shape:
        raise ValueError(f"reference and test shapes differ: {tuple(reference.shape)} vs {tuple(test.shape)}")
    # One common gain so the reference peaks at 1: SNR and SI-SDR do not change, torchmetrics' epsilon
    # and the log floor (LOG_EPS) become relative to the reference level (tiny models output ~1e-6).
    peak = float(ref.abs().max())
    if peak > 0:
        ref, tst = ref / peak, tst / peak
    wide_ref, wide_tst = ref.double(), tst.double()
    per_channel = {
        "si_sdr": scale_invariant_signal_distortion_ratio(wide_tst, wide_ref),
        "snr": signal_noise_ratio(wide_tst, wide_ref),
        "mrstft": multi_resolution_stft_distance(ref, tst),
        "log_mel": log_mel_distance(ref, tst, sample_rate),
        "lsd": log_spectral_distance(ref, tst),
    }
    speech, skipped = _speech_metrics(ref, tst, sample_rate)
    per_channel.update(speech)
    return AudioMetrics(values={k: float(v.double().mean()) for k, v in per_channel.items()},
                        per_channel={k: v.double().tolist() for k, v in per_channel.items()},
                        sample_rate=sample_rate, num_samples=ref.shape[-1], num_channels=ref.shape[0],
                        skipped=skipped)
