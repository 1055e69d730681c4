"""Audio metrics against a baseline: exact-match values, ordering with distortion, SI-SDR's scale
invariance, short signals, speech metrics only where they apply, and refused inputs."""

import importlib.util

import pytest
import torch

from octopus_diffusers.eval.audio_metrics import (audio_metrics, log_mel_distance, multi_resolution_stft_distance)

RATE = 16000


def _music(seconds: float = 0.5, channels: int = 2, seed: int = 0) -> torch.Tensor:
    """Two tones plus a little noise, so that every spectral bin has energy."""
    t = torch.arange(int(seconds * RATE)) / RATE
    g = torch.Generator().manual_seed(seed)
    tones = 0.4 * torch.sin(2 * torch.pi * 440 * t) + 0.2 * torch.sin(2 * torch.pi * 1250 * t)
    return tones.expand(channels, -1) + 0.02 * torch.randn(channels, t.numel(), generator=g)


def _noisy(audio: torch.Tensor, sigma: float) -> torch.Tensor:
    return audio + sigma * torch.randn(audio.shape, generator=torch.Generator().manual_seed(7))


def test_identical_audio_has_zero_spectral_distance():
    a = _music()
    m = audio_metrics(a, a.clone(), RATE)
    assert m.values["mrstft"] == 0 and m.values["log_mel"] == 0 and m.values["lsd"] == 0
    assert m.values["si_sdr"] > 150 and m.values["snr"] > 150  # only float64's epsilon limits them
    assert m.num_channels == 2 and m.num_samples == a.shape[-1] and len(m.per_channel["snr"]) == 2


def test_snr_matches_its_definition():
    a = _music()
    b = _noisy(a, 0.05)
    m = audio_metrics(a, b, RATE)
    expected = 10 * torch.log10((a ** 2).sum(-1) / ((b - a) ** 2).sum(-1))
    assert m.per_channel["snr"] == pytest.approx(expected.tolist(), rel=1e-4)


def test_every_metric_worsens_as_noise_grows():
    a = _music()
    runs = [audio_metrics(a, _noisy(a, s), RATE).values for s in (0.005, 0.05, 0.3)]
    for metric in ("si_sdr", "snr"):
        assert runs[0][metric] > runs[1][metric] > runs[2][metric], metric
    for metric in ("mrstft", "log_mel", "lsd"):
        assert runs[0][metric] < runs[1][metric] < runs[2][metric], metric


def test_si_sdr_ignores_gain_but_snr_does_not():
    a = _music()
    b = _noisy(a, 0.05)
    m1, m2 = audio_metrics(a, b, RATE), audio_metrics(a, 0.5 * b, RATE)
    assert m2.values["si_sdr"] == pytest.approx(m1.values["si_sdr"], abs=1e-3)
    assert m2.values["snr"] < m1.values["snr"] - 3


def test_metrics_do_not_depend_on_the_common_level():
    """Tiny pipelines output waveforms around 1e-6: the epsilons must not swamp them."""
    a = _music()
    b = _noisy(a, 0.05)
    loud, quiet = audio_metrics(a, b, RATE).values, audio_metrics(1e-6 * a, 1e-6 * b, RATE).values
    assert quiet == pytest.approx(loud, rel=1e-4)
    assert audio_metrics(1e-6 * a, 1e-6 * a, RATE).values["si_sdr"] > 150


def test_short_signals_use_a_fitting_stft():
    a = _music(seconds=0.02)  # 320 samples: shorter than every default FFT size
    b = _noisy(a, 0.05)
    assert float(multi_resolution_stft_distance(a, b).mean()) > 0
    assert float(log_mel_distance(a, b, RATE).mean()) > 0
    assert audio_metrics(a, b, RATE).values["mrstft"] > 0


def test_speech_metrics_only_where_they_apply():
    a = _music()
    m = audio_metrics(a, _noisy(a, 0.05), 44100)
    if importlib.util.find_spec("pesq") is None:
        assert m.skipped["pesq"] == "pesq is not installed"
    else:
        assert "needs 8000 or 16000 Hz" in m.skipped["pesq"]
    if importlib.util.find_spec("pystoi") is None:
        assert m.skipped["stoi"] == "pystoi is not installed"
    assert "stoi" not in m.values and "pesq" not in m.values


def test_mono_and_batched_layouts():
    a = _music(channels=1)
    b = _noisy(a, 0.05)
    mono = audio_metrics(a[0], b[0], RATE)
    assert mono.num_channels == 1
    assert mono.values == pytest.approx(audio_metrics(a.unsqueeze(0), b.unsqueeze(0), RATE).values)


def test_bad_inputs_are_refused():
    a = _music()
    with pytest.raises(ValueError, match="shapes differ"):
        audio_metrics(a, a[:, :-1], RATE)
    with pytest.raises(ValueError, match="sample_rate"):
        audio_metrics(a, a, 0)
    with pytest.raises(TypeError, match="float waveform"):
        audio_metrics(a.to(torch.int16), a.to(torch.int16), RATE)
    with pytest.raises(ValueError, match="NaN"):
        audio_metrics(a, torch.full_like(a, float("nan")), RATE)


def test_speech_metrics_run_on_speech_rate_signals():
    pytest.importorskip("pystoi")
    pytest.importorskip("pesq")
    a = _music(seconds=1.0, channels=1)
    clean, noisy = audio_metrics(a, _noisy(a, 0.01), RATE), audio_metrics(a, _noisy(a, 0.2), RATE)
    assert not clean.skipped
    assert clean.values["stoi"] > noisy.values["stoi"] and clean.values["pesq"] > noisy.values["pesq"]
