"""Tiny offline diffusers pipelines for every model family the processors support.

Each builder constructs the denoiser, VAE (or vocoder) and scheduler from constructor arguments
under ``torch.manual_seed(0)``: no hub, no tokenizer, no text encoder run. Prompts are random
embeddings drawn from a fixed seed, sized to what each transformer expects, with padded attention
masks where the pipeline takes masks. The configs follow diffusers' own
``tests/pipelines/<model>/test_*.py::get_dummy_components``, with head dimensions of 16 (8 for the
LTX-2 audio stream) so the codecs see a power-of-two head size, 2 denoising steps and classifier-free
guidance on; each generates in about a second on 2 CPU cores.

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
            if key == "audio" and value.ndim == 2:  # mono pipelines (AudioLDM2) drop the channel axis
                value = value.unsqueeze(1)
            out[key] = value.float()
        return out


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


def _randn(*shape: int, stream: int = 0) -> torch.Tensor:
    """Random embeddings (CPU, float32) from the fixed prompt seed; ``stream`` tells apart tensors of
    one pipeline (prompt 0, negative prompt 1, ...)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(PROMPT_SEED + stream))


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


def _video_inputs(text_len: int, text_dim: int, **extra: Any) -> dict[str, Any]:
    """Prompt and negative-prompt embeddings, step count and tensor output, plus ``extra`` call kwargs."""
    return {"prompt_embeds": _randn(1, text_len, text_dim),
            "negative_prompt_embeds": _randn(1, text_len, text_dim, stream=1),
            "num_inference_steps": NUM_STEPS, "output_type": "pt", **extra}


def build_wan() -> TinyPipeline:
    """Wan 2.1 text-to-video: 2 layers, 2 heads x 16, 32x32 pixels, 9 frames (12 video tokens)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=_tiny_wan_vae(), transformer=_tiny_wan_transformer(),
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))
    return TinyPipeline("wan", pipe, _video_inputs(16, 32, height=32, width=32, num_frames=9), fps=8)


#: The Wan image-to-video attention splits its context at a hard-coded text length of 512 tokens.
WAN_I2V_TEXT_LEN = 512


def build_wan_i2v() -> TinyPipeline:
    """Wan 2.1 image-to-video with a tiny CLIP vision encoder: the ``add_k_proj`` image branch is live.

    The pipeline refuses ``image`` together with ``image_embeds`` but needs ``image`` for the first
    latent frame, so the image embeddings come from a tiny CLIP vision model built offline.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
    from PIL import Image
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    try:  # transformers >= 5 splits out the PIL backend (its default one needs torchvision)
        from transformers import CLIPImageProcessorPil as processor_cls
    except ImportError:
        from transformers import CLIPImageProcessor as processor_cls

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
    pixels = np.random.default_rng(PROMPT_SEED).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    inputs = _video_inputs(WAN_I2V_TEXT_LEN, 32, height=32, width=32, num_frames=9)
    inputs["image"] = Image.fromarray(pixels)
    return TinyPipeline("wan-i2v", pipe, inputs, fps=8)


def build_skyreels_v2() -> TinyPipeline:
    """SkyReels-V2 diffusion forcing with 2-frame causal blocks: the block-causal attention mask is live.

    13 frames give 4 latent frames, so two causal blocks of 2 latent frames each.
    """
    from diffusers import (SkyReelsV2DiffusionForcingPipeline, SkyReelsV2Transformer3DModel,
                           UniPCMultistepScheduler)

    _seeded()
    transformer = SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    pipe = SkyReelsV2DiffusionForcingPipeline(
        tokenizer=None, text_encoder=None, vae=_tiny_wan_vae(), transformer=transformer,
        scheduler=UniPCMultistepScheduler(flow_shift=5.0, use_flow_sigmas=True, prediction_type="flow_prediction"))
    inputs = _video_inputs(16, 32, prompt=None, height=32, width=32, num_frames=13, causal_block_size=2)
    return TinyPipeline("skyreels-v2", pipe, inputs, fps=8)


def _padded_mask(text_len: int, valid: int) -> torch.Tensor:
    """A (1, text_len) attention mask with ``valid`` ones then zeros: the padding path is exercised."""
    mask = torch.zeros(1, text_len, dtype=torch.long)
    mask[:, :valid] = 1
    return mask


def build_ltx_video() -> TinyPipeline:
    """LTX-Video: 2 layers, 2 heads x 16, 32x32 pixels, 9 frames; padded text mask (additive bias)."""
    from diffusers import (AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline,
                           LTXVideoTransformer3DModel)

    _seeded()
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=16,
        cross_attention_dim=32, num_layers=2, caption_channels=32)
    _seeded()
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False), upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1), timestep_conditioning=False, patch_size=1, patch_size_t=1,
        encoder_causal=True, decoder_causal=False)
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    pipe = LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                       transformer=transformer)
    inputs = _video_inputs(16, 32, height=32, width=32, num_frames=9, guidance_scale=3.0)
    inputs.update(prompt_attention_mask=_padded_mask(16, 12), negative_prompt_attention_mask=_padded_mask(16, 10))
    return TinyPipeline("ltx-video", pipe, inputs, fps=8)


def build_cogvideox() -> TinyPipeline:
    """CogVideoX in the 5B style (rotary embeddings on video tokens): 2 layers, 2 heads x 16,
    32x32 pixels, 9 frames, text length equal to ``max_text_seq_length``."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    text_len = 16
    _seeded()
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=2, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=text_len, use_rotary_positional_embeddings=True)
    _seeded()
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler())
    inputs = _video_inputs(text_len, 32, height=32, width=32, num_frames=9, max_sequence_length=text_len)
    return TinyPipeline("cogvideox", pipe, inputs, fps=8)


def build_hunyuan_video() -> TinyPipeline:
    """HunyuanVideo with true CFG (negative prompt) and padded boolean text masks: 1 dual-stream and
    1 single-stream layer, 2 heads x 16, 16x16 pixels, 9 frames."""
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                           HunyuanVideoTransformer3DModel)

    _seeded()
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=32, pooled_projection_dim=8, rope_axes_dim=(4, 6, 6))
    _seeded()
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        act_fn="silu", norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8,
        temporal_compression_ratio=4, mid_block_add_attention=True)
    pipe = HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None,
                                tokenizer_2=None)
    inputs = _video_inputs(16, 32, height=16, width=16, num_frames=9, true_cfg_scale=2.0, guidance_scale=4.5)
    inputs.update(pooled_prompt_embeds=_randn(1, 8, stream=2),
                  negative_pooled_prompt_embeds=_randn(1, 8, stream=3),
                  prompt_attention_mask=_padded_mask(16, 12), negative_prompt_attention_mask=_padded_mask(16, 10))
    return TinyPipeline("hunyuan-video", pipe, inputs, fps=8)


def build_mochi() -> TinyPipeline:
    """Mochi: 2 layers, 2 heads x 16, 32x32 pixels, 7 frames; padded text masks so the per-sample
    loop drops padding tokens."""
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    _seeded()
    transformer = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=16, num_layers=2, pooled_projection_dim=16,
        in_channels=12, out_channels=None, qk_norm="rms_norm", text_embed_dim=32, time_embed_dim=4,
        activation_fn="swiglu", max_sequence_length=16)
    _seeded()
    vae = AutoencoderKLMochi(latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
                             decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1))
    pipe = MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                         transformer=transformer)
    inputs = _video_inputs(16, 32, height=32, width=32, num_frames=7, guidance_scale=4.5)
    inputs.update(prompt_attention_mask=_padded_mask(16, 12), negative_prompt_attention_mask=_padded_mask(16, 10))
    return TinyPipeline("mochi", pipe, inputs, fps=8)


def build_stable_audio() -> TinyPipeline:
    """Stable Audio Open: 2 layers, 4 query heads x 16 over 2 KV heads in cross-attention (GQA),
    partial RoPE on half the head dim, stereo 2048 samples at 8 kHz, CFG batched with a negative prompt."""
    from diffusers import (AutoencoderOobleck, CosineDPMSolverMultistepScheduler, StableAudioDiTModel,
                           StableAudioPipeline, StableAudioProjectionModel)

    text_dim, cond_dim, latent_channels = 32, 16, 4
    _seeded()
    transformer = StableAudioDiTModel(
        sample_size=64, in_channels=latent_channels, num_layers=2, attention_head_dim=16, num_attention_heads=4,
        num_key_value_attention_heads=2, out_channels=latent_channels, cross_attention_dim=32, time_proj_dim=8,
        global_states_input_dim=2 * cond_dim, cross_attention_input_dim=cond_dim)
    _seeded()
    vae = AutoencoderOobleck(encoder_hidden_size=6, downsampling_ratios=[2, 4, 4], decoder_channels=6,
                             decoder_input_channels=latent_channels, audio_channels=2, channel_multiples=[1, 2, 2],
                             sampling_rate=8000)
    _seeded()
    projection = StableAudioProjectionModel(text_encoder_dim=text_dim, conditioning_dim=cond_dim, min_value=0,
                                            max_value=32)
    scheduler = CosineDPMSolverMultistepScheduler(solver_order=2, prediction_type="v_prediction", sigma_data=1.0,
                                                  sigma_schedule="exponential")
    pipe = StableAudioPipeline(vae=vae, text_encoder=None, projection_model=projection, tokenizer=None,
                               transformer=transformer, scheduler=scheduler)
    inputs = {"prompt_embeds": _randn(1, 16, text_dim), "negative_prompt_embeds": _randn(1, 16, text_dim, stream=1),
              "attention_mask": _padded_mask(16, 12), "negative_attention_mask": _padded_mask(16, 10),
              "num_inference_steps": NUM_STEPS, "guidance_scale": 6.0, "output_type": "pt"}
    return TinyPipeline("stable-audio", pipe, inputs, outputs={"audios": "audio"}, sample_rate=8000)


def build_audioldm2() -> TinyPipeline:
    """AudioLDM2: a UNet whose cross-attention blocks attend to GPT-2 (16-d) and T5 (32-d) embeddings,
    2 heads x 16, a tiny HiFi-GAN vocoder: mono 1024 samples at 8 kHz.

    The T5 and GPT-2 models are built from tiny configs only because the pipeline reads their
    dtypes; they never run, since the embeddings are given. The randomly initialised vocoder's
    waveform is very quiet (peak around 1e-5): compare outputs with scale-aware metrics or
    normalise before listening.
    """
    from diffusers import AudioLDM2Pipeline, AudioLDM2UNet2DConditionModel, AutoencoderKL, DDIMScheduler
    from transformers import GPT2Config, GPT2LMHeadModel, SpeechT5HifiGan, SpeechT5HifiGanConfig, T5Config, \
        T5EncoderModel

    gpt2_dim, t5_dim = 16, 32
    _seeded()
    unet = AudioLDM2UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=2,
        cross_attention_dim=([None, gpt2_dim, t5_dim],) * 2)
    _seeded()
    vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=1, out_channels=1, norm_num_groups=8,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4)
    _seeded()
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=16, sampling_rate=8000, upsample_initial_channel=16, upsample_rates=[4, 4],
        upsample_kernel_sizes=[8, 8], resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
        normalize_before=False))
    _seeded()
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=32, d_model=t5_dim, d_kv=8, d_ff=16, num_layers=1,
                                             num_heads=2))
    language_model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=gpt2_dim, n_layer=1, n_head=2, n_positions=32,
                                                bos_token_id=0, eos_token_id=0))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    pipe = AudioLDM2Pipeline(vae=vae, text_encoder=None, text_encoder_2=text_encoder_2, projection_model=None,
                             language_model=language_model, tokenizer=None, tokenizer_2=None, feature_extractor=None,
                             unet=unet, scheduler=scheduler, vocoder=vocoder)
    inputs = {"prompt_embeds": _randn(1, 12, t5_dim), "negative_prompt_embeds": _randn(1, 12, t5_dim, stream=1),
              "attention_mask": _padded_mask(12, 9), "negative_attention_mask": _padded_mask(12, 7),
              "generated_prompt_embeds": _randn(1, 8, gpt2_dim, stream=2),
              "negative_generated_prompt_embeds": _randn(1, 8, gpt2_dim, stream=3),
              "audio_length_in_s": 0.128, "num_inference_steps": NUM_STEPS, "guidance_scale": 3.5,
              "output_type": "pt"}
    return TinyPipeline("audioldm2", pipe, inputs, denoiser_name="unet", outputs={"audios": "audio"},
                        sample_rate=8000)


def build_ltx2() -> TinyPipeline:
    """LTX-2 audio-video: 2 layers, video 2 heads x 16, audio 2 heads x 8, all six attentions per block
    (video/audio self, text cross, audio-to-video and video-to-audio); 32x32 pixels, 9 frames, stereo
    audio. Prompt embeddings stand in for the stacked text-encoder layers the connectors take."""
    from diffusers import (AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler,
                           LTX2Pipeline, LTX2VideoTransformer3DModel)
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    caption_channels, text_layers = 32, 2
    _seeded()
    transformer = LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=16,
        cross_attention_dim=32, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=8, audio_cross_attention_dim=16, num_layers=2, qk_norm="rms_norm_across_heads",
        caption_channels=caption_channels, rope_double_precision=False, rope_type="split")
    _seeded()
    connectors = LTX2TextConnectors(
        caption_channels=caption_channels, text_proj_in_factor=text_layers, video_connector_num_attention_heads=4,
        video_connector_attention_head_dim=8, video_connector_num_layers=1,
        video_connector_num_learnable_registers=None, audio_connector_num_attention_heads=4,
        audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, connector_rope_base_seq_len=32, rope_theta=10000.0,
        rope_double_precision=False, causal_temporal_positioning=False, rope_type="split")
    _seeded()
    vae = AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,),
        layers_per_block=(1,), decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
        decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False), downsample_type=("spatial",),
        upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=False, patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False)
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    _seeded()
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
        mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8)
    _seeded()
    vocoder = LTX2Vocoder(in_channels=2 * 8, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4],
                          upsample_factors=[2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
                          leaky_relu_negative_slope=0.1, output_sampling_rate=16000)
    pipe = LTX2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae, text_encoder=None,
                        tokenizer=None, connectors=connectors, transformer=transformer, vocoder=vocoder)
    inputs = _video_inputs(16, caption_channels * text_layers, height=32, width=32, num_frames=9, frame_rate=25.0,
                           guidance_scale=3.0, stg_scale=0.0, modality_scale=1.0, guidance_rescale=0.0,
                           audio_guidance_scale=3.0, audio_stg_scale=0.0, audio_modality_scale=1.0,
                           audio_guidance_rescale=0.0, spatio_temporal_guidance_blocks=None,
                           max_sequence_length=16)
    inputs.update(prompt_attention_mask=_padded_mask(16, 12), negative_prompt_attention_mask=_padded_mask(16, 10))
    return TinyPipeline("ltx2", pipe, inputs, outputs={"frames": "video", "audio": "audio"}, sample_rate=16000,
                        fps=25)


_BUILDERS: dict[str, Callable[[], TinyPipeline]] = {
    "wan": build_wan,
    "wan-i2v": build_wan_i2v,
    "skyreels-v2": build_skyreels_v2,
    "ltx-video": build_ltx_video,
    "ltx2": build_ltx2,
    "cogvideox": build_cogvideox,
    "hunyuan-video": build_hunyuan_video,
    "mochi": build_mochi,
    "stable-audio": build_stable_audio,
    "audioldm2": build_audioldm2,
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
