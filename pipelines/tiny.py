"""Tiny offline diffusers pipelines for every model family the processors support.

Each builder constructs the denoiser, VAE (or vocoder) and scheduler from constructor arguments
under ``torch.manual_seed(0)``: no hub, no tokenizer, no text encoder. Prompts are random embeddings
drawn from a fixed seed, sized to what each transformer expects. The configs follow diffusers' own
``tests/pipelines/<model>/test_*.py::get_dummy_components``, with head dimensions of 16 so the codecs
see a realistic (power-of-two) head size, and generation in about a second on 2 CPU cores.

Usage::

    tiny = build_tiny_pipeline("wan")
    out = tiny.generate(seed=0)          # {"video": (B, F, C, H, W) float in [0, 1]}
    # or, with full control over the call:
    result = tiny.pipe(**tiny.call_kwargs(seed=0))

``generate`` returns a dict with ``"video"`` and/or ``"audio"`` (``(B, C, T)`` float waveforms at
``tiny.sample_rate``). ``tiny.denoiser`` is the transformer (or UNet) that the attention processors
hook; it round-trips through ``save_pretrained`` / ``from_pretrained``, and
:meth:`TinyPipeline.replace_denoiser` swaps a reloaded one in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: Seed of the random prompt embeddings and conditioning images (fixed: the seed passed to
#: ``call_kwargs`` only drives the initial noise, so two seeds share the prompt).
PROMPT_SEED = 1234
#: Denoising steps of every tiny pipeline.
NUM_STEPS = 2


@dataclass
class TinyPipeline:
    """A tiny pipeline with the fixed inputs of one deterministic generation.

    ``inputs`` holds everything except the generator (prompt embeddings, masks, sizes, steps,
    ``output_type``); ``denoiser_name`` is the pipeline attribute of the module whose attention
    the processors replace (``"transformer"`` or ``"unet"``); ``outputs`` maps the pipeline
    output's attribute names to the keys :meth:`generate` returns (``"video"`` / ``"audio"``).
    """

    name: str
    pipe: Any
    inputs: dict[str, Any]
    denoiser_name: str = "transformer"
    outputs: dict[str, str] = field(default_factory=lambda: {"frames": "video"})
    sample_rate: int | None = None
    fps: int | None = None

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def denoiser(self) -> torch.nn.Module:
        """The transformer (or UNet) whose attention processors are hooked."""
        return getattr(self.pipe, self.denoiser_name)

    def replace_denoiser(self, module: torch.nn.Module) -> None:
        """Swap in another denoiser of the same class, e.g. one reloaded with ``from_pretrained``."""
        current = self.denoiser
        if type(module) is not type(current):
            raise TypeError(f"{self.name}: expected a {type(current).__name__}, got {type(module).__name__}")
        self.pipe.register_modules(**{self.denoiser_name: module.to(current.device, current.dtype)})

    def call_kwargs(self, seed: int = 0) -> dict[str, Any]:
        """Keyword arguments of ``pipe(...)`` for one generation; ``seed`` drives the initial noise."""
        generator = torch.Generator(device="cpu").manual_seed(seed)
        return {**self.inputs, "generator": generator}

    @torch.no_grad()
    def generate(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """Run the pipeline and return its outputs as float tensors, keyed ``"video"`` / ``"audio"``."""
        result = self.pipe(**self.call_kwargs(seed))
        out: dict[str, torch.Tensor] = {}
        for attr, key in self.outputs.items():
            value = getattr(result, attr)
            if isinstance(value, np.ndarray):
                value = torch.from_numpy(value)
            out[key] = value.float()
        return out


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


def _randn(*shape: int) -> torch.Tensor:
    """Random embeddings from the fixed prompt seed (CPU, float32)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(PROMPT_SEED + sum(shape)))


def _tiny_wan_vae():
    from diffusers import AutoencoderKLWan

    _seeded()
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def _tiny_wan_transformer(**overrides: Any):
    from diffusers import WanTransformer3DModel

    config = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16,
                  out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    config.update(overrides)
    _seeded()
    return WanTransformer3DModel(**config)


def _video_inputs(text_len: int, text_dim: int, **sizes: Any) -> dict[str, Any]:
    return {"prompt_embeds": _randn(1, text_len, text_dim), "negative_prompt_embeds": -_randn(1, text_len, text_dim),
            "num_inference_steps": NUM_STEPS, "output_type": "pt", **sizes}


def build_wan() -> TinyPipeline:
    """Wan 2.1 text-to-video: 2 layers, 2 heads x 16, 16x16 pixels, 9 frames."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=_tiny_wan_vae(), transformer=_tiny_wan_transformer(),
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))
    return TinyPipeline("wan", pipe, _video_inputs(16, 32, height=16, width=16, num_frames=9), fps=8)


#: The Wan image-to-video attention splits its context at a hard-coded text length of 512 tokens.
WAN_I2V_TEXT_LEN = 512


def build_wan_i2v() -> TinyPipeline:
    """Wan 2.1 image-to-video with a tiny CLIP vision encoder: the ``add_k_proj`` image branch is live.

    The pipeline refuses ``image`` together with ``image_embeds`` but needs ``image`` for the first
    latent frame, so the image embeddings come from a tiny CLIP vision model built offline.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
    from PIL import Image
    import transformers
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    # transformers 5 splits the PIL backend out (the default one would need torchvision).
    processor_cls = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)

    clip_hidden = 4
    transformer = _tiny_wan_transformer(in_channels=36, image_dim=clip_hidden, added_kv_proj_dim=32)
    _seeded()
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=clip_hidden, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        intermediate_size=16, patch_size=8))
    image_processor = processor_cls(crop_size=32, size=32)
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=_tiny_wan_vae(), transformer=transformer,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), image_encoder=image_encoder,
                                   image_processor=image_processor)
    pixels = np.random.default_rng(PROMPT_SEED).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    inputs = _video_inputs(WAN_I2V_TEXT_LEN, 32, height=16, width=16, num_frames=9)
    inputs["image"] = Image.fromarray(pixels)
    return TinyPipeline("wan-i2v", pipe, inputs, fps=8)


_BUILDERS: dict[str, Callable[[], TinyPipeline]] = {
    "wan": build_wan,
    "wan-i2v": build_wan_i2v,
}

#: Names accepted by :func:`build_tiny_pipeline`.
TINY_PIPELINES: tuple[str, ...] = tuple(_BUILDERS)


def build_tiny_pipeline(name: str, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> TinyPipeline:
    """Build the tiny offline pipeline ``name`` (one of :data:`TINY_PIPELINES`) on ``device`` in ``dtype``.

    Weights are created under ``torch.manual_seed(0)`` on the CPU in float32 and then moved, so a
    given name gives the same weights on every device.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown tiny pipeline {name!r}; choose one of {', '.join(TINY_PIPELINES)}")
    tiny = _BUILDERS[name]()
    tiny.pipe.set_progress_bar_config(disable=True)
    if torch.device(device) != torch.device("cpu") or dtype != torch.float32:
        tiny.pipe.to(device=device, dtype=dtype)
    tiny.inputs = {k: v.to(device=device, dtype=dtype) if isinstance(v, torch.Tensor) and v.is_floating_point()
                   else v.to(device) if isinstance(v, torch.Tensor) else v for k, v in tiny.inputs.items()}
    return tiny
