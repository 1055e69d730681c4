"""Per-frame video metrics against a baseline: exact-match values, ordering with distortion, worst frame,
and the errors for inputs that cannot be compared."""

import math

import pytest
import torch

from octopus_diffusers.eval.video_metrics import as_frames, lpips_weights_available, video_metrics


def _video(frames: int = 6, size: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(frames, 3, size, size, generator=g)


def _noisy(video: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (video + sigma * torch.randn(video.shape, generator=g)).clamp(0, 1)


def test_baseline_against_itself_is_exact():
    v = _video()
    m = video_metrics(v, v.clone(), lpips=False)
    assert all(math.isinf(x) and x > 0 for x in m.per_frame["psnr"])
    assert m.per_frame["ssim"] == pytest.approx([1.0] * 6)
    assert m.per_frame["l1"] == [0.0] * 6
    assert math.isinf(m.summary()["psnr"]["mean"])


def test_psnr_matches_its_definition_per_frame():
    v = _video()
    w = _noisy(v, 0.05)
    m = video_metrics(v, w, lpips=False)
    mse = ((w - v) ** 2).mean(dim=(1, 2, 3)).double()
    assert m.per_frame["psnr"] == pytest.approx((10 * torch.log10(1 / mse)).tolist(), rel=1e-5)
    assert m.per_frame["l1"] == pytest.approx((w - v).abs().mean(dim=(1, 2, 3)).tolist(), rel=1e-6)


def test_metrics_worsen_as_distortion_grows():
    v = _video()
    summaries = [video_metrics(v, _noisy(v, s), lpips=False).summary() for s in (0.01, 0.05, 0.2)]
    psnr = [s["psnr"]["mean"] for s in summaries]
    ssim = [s["ssim"]["mean"] for s in summaries]
    l1 = [s["l1"]["mean"] for s in summaries]
    assert psnr[0] > psnr[1] > psnr[2]
    assert ssim[0] > ssim[1] > ssim[2]
    assert l1[0] < l1[1] < l1[2]


def test_summary_names_the_worst_frame():
    v = _video()
    w = _noisy(v, 0.01)
    w[4] = _noisy(v[4:5], 0.3)[0]
    s = video_metrics(v, w, lpips=False).summary()
    assert s["psnr"]["worst_frame"] == 4 and s["psnr"]["worst"] == s["psnr"]["min"]
    assert s["ssim"]["worst_frame"] == 4
    assert s["l1"]["worst_frame"] == 4 and s["l1"]["worst"] == s["l1"]["max"]


def test_batched_and_uint8_inputs():
    v = _video(4)
    w = _noisy(v, 0.05)
    flat = video_metrics(v, w, lpips=False).per_frame
    batched = video_metrics(v.reshape(2, 2, 3, 24, 24), w.reshape(2, 2, 3, 24, 24), lpips=False).per_frame
    assert batched == flat
    as_u8 = as_frames((v * 255).round().to(torch.uint8))
    assert torch.allclose(as_u8, v, atol=1 / 255)


def test_tiny_frames_shrink_the_ssim_window():
    v = _video(3, size=8)
    m = video_metrics(v, _noisy(v, 0.05), lpips=False)
    assert m.ssim_kernel == 7 and m.frame_size == (8, 8)


@pytest.mark.parametrize("bad, match", [
    (torch.rand(3, 3, 8), "expected \\(F, C, H, W\\)"),
    (torch.rand(3, 4, 8, 8), "1 or 3 channels"),
    (torch.rand(3, 3, 8, 8) * 2, "values in \\[0, 1\\]"),
    (torch.full((3, 3, 8, 8), float("nan")), "NaN"),
])
def test_bad_frames_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        video_metrics(bad, bad, lpips=False)


def test_shape_mismatch_and_wrong_types():
    with pytest.raises(ValueError, match="shapes differ"):
        video_metrics(_video(4), _video(5), lpips=False)
    with pytest.raises(TypeError, match="torch.Tensor"):
        video_metrics(_video(2).numpy(), _video(2), lpips=False)
    with pytest.raises(TypeError, match="float frames"):
        video_metrics(torch.zeros(2, 3, 8, 8, dtype=torch.int32), torch.zeros(2, 3, 8, 8, dtype=torch.int32))


def test_lpips_is_optional_and_explains_why_it_was_skipped():
    v = _video(2)
    off = video_metrics(v, v, lpips=False)
    assert "lpips" not in off.per_frame and off.skipped["lpips"] == "disabled"
    auto = video_metrics(v, v, lpips="auto")
    available, reason = lpips_weights_available()
    if not available:
        assert auto.skipped["lpips"] == reason and "lpips" not in auto.per_frame
        with pytest.raises(RuntimeError, match="LPIPS requested but unavailable"):
            video_metrics(v, v, lpips=True)
    else:  # 24 px frames are below the backbone's minimum
        assert "smaller than" in auto.skipped["lpips"]
