"""The real models a run can load: diffusers pipeline class, default hub id and default call.

Each entry names the pipeline output attribute it reads (``frames`` for video, ``audios`` for
audio), the default generation settings from the model's own documentation (smaller where the
documented size needs a data-centre GPU only to be compared, e.g. frame counts), and the tiny
offline pipeline of the same family (:mod:`octopus_diffusers.pipelines.tiny`) that ``--tiny`` builds
instead of downloading anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """One supported real model."""

    name: str
    pipeline_class: str
    hub_id: str
    media: str  # "video" or "audio"
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    negative_prompt: str | None = None
    fps: int | None = None
    tiny: str | None = None
    notes: str = ""
    #: Video height and width must be multiples of this (the pipeline's own ``check_inputs`` rule).
    size_multiple: int | None = None
    #: Video frame counts must be ``k * frame_step + 1`` (pipelines that otherwise round with a warning).
    frame_step: int | None = None

    @property
    def output_attribute(self) -> str:
        return "frames" if self.media == "video" else "audios"


_WAN_NEGATIVE = ("Bright tones, overexposed, static, blurred details, subtitles, worst quality, low quality, "
                 "JPEG compression residue, ugly, deformed")

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("wan2.1-t2v-1.3b", "WanPipeline", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "video",
              {"height": 480, "width": 832, "num_frames": 33, "num_inference_steps": 30, "guidance_scale": 5.0},
              negative_prompt=_WAN_NEGATIVE, fps=16, tiny="wan", notes="12 heads x 128; ~10 GB in bf16",
              size_multiple=16, frame_step=4),
    ModelSpec("wan2.1-t2v-14b", "WanPipeline", "Wan-AI/Wan2.1-T2V-14B-Diffusers", "video",
              {"height": 480, "width": 832, "num_frames": 33, "num_inference_steps": 30, "guidance_scale": 5.0},
              negative_prompt=_WAN_NEGATIVE, fps=16, tiny="wan", notes="40 heads x 128; use --cpu-offload below 80 GB",
              size_multiple=16, frame_step=4),
    ModelSpec("ltx-video", "LTXPipeline", "Lightricks/LTX-Video", "video",
              {"height": 480, "width": 704, "num_frames": 65, "num_inference_steps": 40},
              negative_prompt="worst quality, inconsistent motion, blurry, jittery, distorted", fps=24,
              tiny="ltx-video", notes="32 heads x 64", size_multiple=32),
    ModelSpec("cogvideox-2b", "CogVideoXPipeline", "THUDM/CogVideoX-2b", "video",
              {"height": 480, "width": 720, "num_frames": 49, "num_inference_steps": 50, "guidance_scale": 6.0},
              fps=8, tiny="cogvideox", notes="joint text+video attention", size_multiple=8),
    ModelSpec("cogvideox-5b", "CogVideoXPipeline", "THUDM/CogVideoX-5b", "video",
              {"height": 480, "width": 720, "num_frames": 49, "num_inference_steps": 50, "guidance_scale": 6.0},
              fps=8, tiny="cogvideox", notes="48 heads x 64, RoPE", size_multiple=8),
    ModelSpec("hunyuanvideo", "HunyuanVideoPipeline", "hunyuanvideo-community/HunyuanVideo", "video",
              {"height": 320, "width": 512, "num_frames": 61, "num_inference_steps": 30},
              fps=15, tiny="hunyuan-video", notes="24 heads x 128; use --cpu-offload below 80 GB",
              size_multiple=16),
    ModelSpec("mochi", "MochiPipeline", "genmo/mochi-1-preview", "video",
              {"height": 480, "width": 848, "num_frames": 31, "num_inference_steps": 64},
              fps=30, tiny="mochi", size_multiple=8),
    ModelSpec("skyreels-v2-t2v-14b", "SkyReelsV2Pipeline", "Skywork/SkyReels-V2-T2V-14B-540P-Diffusers", "video",
              {"height": 544, "width": 960, "num_frames": 49, "num_inference_steps": 50, "guidance_scale": 6.0},
              fps=24, tiny="skyreels-v2", size_multiple=16, frame_step=4),
    ModelSpec("stable-audio-open", "StableAudioPipeline", "stabilityai/stable-audio-open-1.0", "audio",
              {"audio_end_in_s": 10.0, "num_inference_steps": 100, "guidance_scale": 7.0},
              negative_prompt="Low quality.", tiny="stable-audio", notes="GQA cross-attention, 24 x 64"),
    ModelSpec("audioldm2", "AudioLDM2Pipeline", "cvssp/audioldm2", "audio",
              {"audio_length_in_s": 10.0, "num_inference_steps": 100, "guidance_scale": 3.5},
              negative_prompt="Low quality.", tiny="audioldm2", notes="UNet; 16 kHz"),
)}


def get_model_spec(name: str) -> ModelSpec:
    """The entry for ``name``; a clear error lists the known names."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; supported: {', '.join(MODELS)}")
    return MODELS[name]
