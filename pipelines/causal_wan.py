"""Chunk-by-chunk (Self-Forcing style) video generation on diffusers' ``WanTransformer3DModel``.

Per chunk of ``chunk_frames`` latent frames: start from seeded noise, run a few denoising steps (the
Self-Forcing schedule: timesteps 1000/750/500/250, shift-warped), each step attending to the cache plus
the chunk; between steps the predicted clean latents are re-noised with fresh seeded noise to the next
step's level. Then one forward on the clean chunk at ``context_timestep`` (0) with
``update_cache=True`` appends its K/V to the cache. The noise of every chunk and step comes from one
isolated ``torch.Generator`` in a fixed order, so runs with different caches see the same noise.

:func:`block_causal_reference` runs the same sampler without any cache: every model call is a
full-sequence forward over ``[clean earlier chunks, current chunk]`` with per-token timesteps and a
block-causal mask through diffusers' own ``WanAttnProcessor`` -- the equivalence the cache must meet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from octopus_diffusers.cache import CachePolicy, CompressedKVCache, DenseKVCache, KVCacheBase
from octopus_diffusers.cache.wan import enable_causal_cache


@dataclass(frozen=True)
class CausalSchedule:
    """Denoising timesteps per chunk (0..1000), the flow shift that warps them, and the timestep of the
    cache-writing clean pass."""

    timesteps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    shift: float = 5.0
    context_timestep: float = 0.0

    def __post_init__(self) -> None:
        if not self.timesteps or any(not 0 < t <= 1000 for t in self.timesteps):
            raise ValueError(f"causal schedule: timesteps must lie in (0, 1000], got {self.timesteps}")
        if list(self.timesteps) != sorted(self.timesteps, reverse=True):
            raise ValueError(f"causal schedule: timesteps must decrease, got {self.timesteps}")
        if self.shift <= 0:
            raise ValueError(f"causal schedule: shift must be > 0, got {self.shift}")

    def sigmas(self) -> list[float]:
        """Noise level of each step: ``shift * s / (1 + (shift - 1) * s)`` with ``s = t / 1000``."""
        return [self.shift * (t / 1000) / (1 + (self.shift - 1) * (t / 1000)) for t in self.timesteps]


@dataclass
class CausalResult:
    """Latents ``(B, C, F, H, W)`` of a chunked generation, time per chunk and the cache's report."""

    latents: torch.Tensor
    seconds_per_chunk: list[float]
    cache_report: dict[str, Any] = field(default_factory=dict)


def _chunk_noise(seed: int, shape: tuple[int, ...], num_chunks: int, steps: int, device: torch.device,
                 dtype: torch.dtype) -> list[list[torch.Tensor]]:
    """Per chunk: the initial noise and one fresh noise per later step, drawn on the CPU in a fixed order."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(shape, generator=gen).to(device, dtype) for _ in range(steps)] for _ in range(num_chunks)]


class CausalWanGenerator:
    """Chunked generation with a KV cache on a ``WanTransformer3DModel`` (its causal processors are
    installed by :func:`~octopus_diffusers.cache.wan.enable_causal_cache` unless already there)."""

    def __init__(self, transformer: Any, *, chunk_frames: int = 3, schedule: CausalSchedule | None = None,
                 vae: Any = None, pixel_space: bool = False) -> None:
        if pixel_space and vae is not None:
            raise ValueError("CausalWanGenerator: a pixel-space model takes no VAE")
        self.transformer = transformer
        self.pixel_space = pixel_space
        self.handle = getattr(transformer, "_octopus_causal", None) or enable_causal_cache(transformer)
        self.chunk_frames = chunk_frames
        self.schedule = schedule or CausalSchedule()
        self.vae = vae
        cfg = transformer.config
        self.num_layers, self.num_heads, self.head_dim = cfg.num_layers, cfg.num_attention_heads, cfg.attention_head_dim
        self.patch = tuple(cfg.patch_size)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def frame_tokens(self, latent_size: tuple[int, int]) -> int:
        return (latent_size[0] // self.patch[1]) * (latent_size[1] // self.patch[2])

    def compressed_cache(self, policy: CachePolicy, latent_size: tuple[int, int]) -> CompressedKVCache:
        return CompressedKVCache(self.num_layers, self.num_heads, self.head_dim, self.frame_tokens(latent_size),
                                 self.chunk_frames, policy)

    def dense_cache(self, latent_size: tuple[int, int], num_chunks: int, local_attn_size: int | None = None,
                    sink_chunks: int = 0) -> DenseKVCache:
        return DenseKVCache(self.num_layers, self.num_heads, self.head_dim, self.frame_tokens(latent_size),
                            self.chunk_frames, num_chunks * self.chunk_frames, local_attn_size, sink_chunks)

    def _noise(self, seed: int, batch: int, latent_size: tuple[int, int], num_chunks: int) -> list[list[torch.Tensor]]:
        channels = self.transformer.config.in_channels
        shape = (batch, channels, self.chunk_frames, *latent_size)
        return _chunk_noise(seed, shape, num_chunks, len(self.schedule.timesteps), self.device, self.dtype)

    def _model(self, x: torch.Tensor, sigma: float, prompt_embeds: torch.Tensor, attention_kwargs: dict) -> torch.Tensor:
        t = torch.full((x.shape[0],), sigma * 1000.0, device=x.device, dtype=torch.float32)
        return self.transformer(x, t, prompt_embeds, attention_kwargs=attention_kwargs, return_dict=False)[0]

    @torch.no_grad()
    def generate(self, prompt_embeds: torch.Tensor, num_chunks: int, latent_size: tuple[int, int], *,
                 cache: KVCacheBase, seed: int = 0) -> CausalResult:
        """Generate ``num_chunks`` chunks into a fresh ``cache`` (reset first); returns the latents."""
        if num_chunks < 1:
            raise ValueError(f"num_chunks must be >= 1, got {num_chunks}")
        prompt_embeds = prompt_embeds.to(self.device, self.dtype)
        cache.reset()
        noise = self._noise(seed, prompt_embeds.shape[0], latent_size, num_chunks)
        sigmas = self.schedule.sigmas()
        chunks, seconds = [], []
        for c in range(num_chunks):
            start = time.perf_counter()
            offset = c * self.chunk_frames
            read = {"kv_cache": cache, "frame_offset": offset}
            x = noise[c][0]
            for s, sigma in enumerate(sigmas):
                x0 = x - sigma * self._model(x, sigma, prompt_embeds, read)
                if s + 1 < len(sigmas):
                    x = (1 - sigmas[s + 1]) * x0 + sigmas[s + 1] * noise[c][s + 1]
            self._model(x0, self.schedule.context_timestep / 1000.0, prompt_embeds, {**read, "update_cache": True})
            if x0.device.type == "cuda":
                torch.cuda.synchronize(x0.device)
            seconds.append(time.perf_counter() - start)
            chunks.append(x0)
        return CausalResult(torch.cat(chunks, dim=2), seconds, cache.report())

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents to video frames ``(B, F, C, H, W)`` in [0, 1] with the Wan VAE (as ``WanPipeline`` does);
        a pixel-space model's output (RGB in [-1, 1]) is mapped directly."""
        if self.pixel_space:
            return ((latents.float() + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4)
        if self.vae is None:
            raise ValueError("decode: this generator has no VAE")
        vae = self.vae
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        video = vae.decode((latents * std + mean).to(vae.dtype), return_dict=False)[0]
        return (video.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)


class BlockCausalAttnProcessor:
    """diffusers' ``WanAttnProcessor`` with a boolean mask on self-attention (set per call)."""

    def __init__(self) -> None:
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        self.inner = WanAttnProcessor()
        self.mask: torch.Tensor | None = None

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        mask = self.mask if encoder_hidden_states is None else None
        return self.inner(attn, hidden_states, encoder_hidden_states, mask, rotary_emb)


def block_causal_mask(num_chunks: int, chunk_tokens: int, device: torch.device) -> torch.Tensor:
    """``(1, 1, S, S)`` bool mask: a token attends to every token of its own and earlier chunks."""
    chunk = torch.arange(num_chunks * chunk_tokens, device=device) // chunk_tokens
    return (chunk[:, None] >= chunk[None, :])[None, None]


@torch.no_grad()
def block_causal_reference(generator: CausalWanGenerator, prompt_embeds: torch.Tensor, num_chunks: int,
                           latent_size: tuple[int, int], *, seed: int = 0) -> torch.Tensor:
    """The sampler of :meth:`CausalWanGenerator.generate` with full-sequence block-causal forwards and no
    cache: the latents a chunked generation with a full exact cache must reproduce."""
    transformer = generator.transformer
    prompt_embeds = prompt_embeds.to(generator.device, generator.dtype)
    batch = prompt_embeds.shape[0]
    noise = generator._noise(seed, batch, latent_size, num_chunks)
    sigmas = generator.schedule.sigmas()
    chunk_tokens = generator.chunk_frames * generator.frame_tokens(latent_size)
    saved = dict(transformer.attn_processors)
    processor = BlockCausalAttnProcessor()
    transformer.set_attn_processor(processor)
    try:
        clean: list[torch.Tensor] = []
        for c in range(num_chunks):
            processor.mask = block_causal_mask(c + 1, chunk_tokens, generator.device)
            x = noise[c][0]
            for s, sigma in enumerate(sigmas):
                seq = torch.cat([*clean, x], dim=2)
                t = torch.full((batch, (c + 1) * chunk_tokens), generator.schedule.context_timestep,
                               device=x.device, dtype=torch.float32)
                t[:, c * chunk_tokens:] = sigma * 1000.0
                flow = transformer(seq, t, prompt_embeds, return_dict=False)[0][:, :, -generator.chunk_frames:]
                x0 = x - sigma * flow
                if s + 1 < len(sigmas):
                    x = (1 - sigmas[s + 1]) * x0 + sigmas[s + 1] * noise[c][s + 1]
            clean.append(x0)
    finally:
        transformer.set_attn_processor(saved)
    return torch.cat(clean, dim=2)


# ------------------------------------------------------------------------------------------------
# Tiny causal Wan (random weights, offline)
# ------------------------------------------------------------------------------------------------
#: Latent height x width of the tiny causal model (2x2 patches: 4 tokens per latent frame).
TINY_LATENT = (4, 4)
#: Text tokens and width of the tiny model's random prompt embeddings.
TINY_TEXT = (16, 32)


def build_tiny_causal_wan(head_dim: int = 32, num_layers: int = 2, num_heads: int = 2, device: str | torch.device = "cpu",
                          dtype: torch.dtype = torch.float32, with_vae: bool = True, chunk_frames: int = 3,
                          schedule: CausalSchedule | None = None) -> CausalWanGenerator:
    """A random-weight Wan (the tiny Wan of :mod:`.tiny` at ``head_dim``) ready for chunked generation."""
    from .tiny import _tiny_wan_transformer, _tiny_wan_vae

    transformer = _tiny_wan_transformer(attention_head_dim=head_dim, num_layers=num_layers,
                                        num_attention_heads=num_heads, ffn_dim=64).to(device, dtype).eval()
    vae = _tiny_wan_vae().to(device, dtype).eval() if with_vae else None
    return CausalWanGenerator(transformer, chunk_frames=chunk_frames, schedule=schedule, vae=vae)


def tiny_prompt_embeds(batch: int = 1, seed: int = 1234) -> torch.Tensor:
    """Random prompt embeddings ``(batch, 16, 32)`` for the tiny model, from a fixed seed."""
    return torch.randn(batch, *TINY_TEXT, generator=torch.Generator().manual_seed(seed))


__all__ = ["BlockCausalAttnProcessor", "CausalResult", "CausalSchedule", "CausalWanGenerator", "TINY_LATENT", "block_causal_mask",
           "block_causal_reference", "build_tiny_causal_wan", "tiny_prompt_embeds"]
