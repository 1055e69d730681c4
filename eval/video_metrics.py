"""Per-frame video fidelity against the unquantized baseline: PSNR, SSIM, L1 and (optionally) LPIPS.

Frames are float tensors in [0, 1] shaped ``(F, C, H, W)`` or ``(B, F, C, H, W)`` (what diffusers video
pipelines return with ``output_type="pt"``); a batch is flattened into one sequence of frames. PSNR and
SSIM come from torchmetrics with ``data_range=1.0`` and ``reduction="none"``, so every frame keeps its
own value. LPIPS needs pretrained backbone weights that only a model hub provides: it is computed when
those weights are already on disk and is otherwise reported as skipped, never required.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

#: Metrics where a larger value is better (the worst frame is the minimum); the rest are distances.
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "l1": False, "lpips": False}
#: torchmetrics' default SSIM window; shrunk (to an odd size) only for frames smaller than it.
SSIM_KERNEL = 11
#: LPIPS backbones (AlexNet) need frames at least this large on each side.
LPIPS_MIN_SIDE = 64


@dataclass
class VideoMetrics:
    """Per-frame metric curves of one video against its baseline (each a float64 list of length F)."""

    per_frame: dict[str, list[float]]
    num_frames: int
    frame_size: tuple[int, int]
    ssim_kernel: int
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float | int]]:
        """For each metric: mean, min, max over frames, and the worst frame's index and value."""
        out: dict[str, dict[str, float | int]] = {}
        for name, values in self.per_frame.items():
            t = torch.tensor(values, dtype=torch.float64)
            worst = int(t.argmin() if HIGHER_IS_BETTER[name] else t.argmax())
            out[name] = {"mean": float(t.mean()), "min": float(t.min()), "max": float(t.max()),
                         "worst_frame": worst, "worst": float(t[worst])}
        return out

    def to_dict(self) -> dict:
        """JSON-ready form (non-finite floats are left as Python floats; see ``report.to_json``)."""
        return {"kind": "video", "num_frames": self.num_frames, "frame_size": list(self.frame_size),
                "ssim_kernel": self.ssim_kernel, "summary": self.summary(), "per_frame": self.per_frame,
                "skipped": dict(self.skipped)}


def as_frames(video: torch.Tensor, name: str = "video") -> torch.Tensor:
    """Validate a video and return it as float32 frames ``(N, C, H, W)`` in [0, 1] on the CPU.

    ``uint8`` input is scaled by 1/255; float input must already lie in [0, 1].
    """
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(video).__name__}")
    if video.dim() == 5:
        video = video.flatten(0, 1)
    if video.dim() != 4:
        raise ValueError(f"{name}: expected (F, C, H, W) or (B, F, C, H, W) frames, got shape {tuple(video.shape)}")
    if video.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expected 1 or 3 channels in dim -3, got shape {tuple(video.shape)}")
    if video.dtype == torch.uint8:
        return video.cpu().float() / 255.0
    if not video.is_floating_point():
        raise TypeError(f"{name}: expected float frames in [0, 1] or uint8, got {video.dtype}")
    video = video.detach().cpu().float()
    if not bool(torch.isfinite(video).all()):
        raise ValueError(f"{name}: frames contain NaN or Inf")
    lo, hi = float(video.min()), float(video.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"{name}: expected values in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    return video.clamp(0.0, 1.0)


def _ssim_kernel(height: int, width: int) -> int:
    side = min(height, width, SSIM_KERNEL)
    return side if side % 2 == 1 else side - 1


def lpips_weights_available(net: str = "alex") -> tuple[bool, str]:
    """Whether LPIPS can run offline: torchvision installed and its ``net`` backbone already cached.

    Returns ``(available, reason)``; ``reason`` says what is missing when it is not.
    """
    try:
        import torchvision  # noqa: F401
        from torchvision import models
    except ImportError:
        return False, "torchvision is not installed"
    weights = {"alex": models.AlexNet_Weights, "vgg": models.VGG16_Weights,
               "squeeze": models.SqueezeNet1_1_Weights}[net].DEFAULT
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not checkpoint.is_file():
        return False, f"backbone weights not cached at {checkpoint} (LPIPS needs a model hub download)"
    return True, ""


def _lpips_per_frame(reference: torch.Tensor, test: torch.Tensor, net: str) -> list[float]:
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    metric = LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True)
    if reference.shape[1] == 1:
        reference, test = reference.expand(-1, 3, -1, -1), test.expand(-1, 3, -1, -1)
    with torch.no_grad():
        values = metric.net(test, reference, normalize=True).reshape(-1)
    return values.double().tolist()


def video_metrics(reference: torch.Tensor, test: torch.Tensor,
                  lpips: bool | Literal["auto"] = "auto", lpips_net: str = "alex") -> VideoMetrics:
    """Compare ``test`` frames with ``reference`` frames, frame by frame.

    ``lpips="auto"`` computes LPIPS only when its weights are cached locally (else it is listed in
    ``skipped`` with the reason); ``lpips=True`` raises when it cannot run; ``False`` skips it.
    Identical frames give PSNR ``inf``, SSIM 1 and L1 0.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    ref = as_frames(reference, "reference")
    tst = as_frames(test, "test")
    if ref.shape != tst.shape:
        raise ValueError(f"reference and test shapes differ: {tuple(ref.shape)} vs {tuple(tst.shape)}")
    height, width = ref.shape[-2:]
    kernel = _ssim_kernel(height, width)
    per_frame = {
        "psnr": peak_signal_noise_ratio(tst, ref, data_range=1.0, dim=(1, 2, 3), reduction="none"),
        "ssim": structural_similarity_index_measure(tst, ref, data_range=1.0, reduction="none",
                                                    kernel_size=kernel),
        "l1": (tst - ref).abs().mean(dim=(1, 2, 3)),
    }
    values = {k: v.reshape(-1).double().tolist() for k, v in per_frame.items()}
    skipped: dict[str, str] = {}
    if lpips:
        ok, reason = lpips_weights_available(lpips_net)
        if ok and min(height, width) < LPIPS_MIN_SIDE:
            ok, reason = False, f"frames of {height}x{width} are smaller than {LPIPS_MIN_SIDE} px"
        if ok:
            values["lpips"] = _lpips_per_frame(ref, tst, lpips_net)
        elif lpips is True:
            raise RuntimeError(f"LPIPS requested but unavailable: {reason}")
        else:
            skipped["lpips"] = reason
    else:
        skipped["lpips"] = "disabled"
    return VideoMetrics(values, num_frames=ref.shape[0], frame_size=(height, width), ssim_kernel=kernel,
                        skipped=skipped)

