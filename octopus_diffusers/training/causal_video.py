"""A small block-causal ``WanTransformer3DModel`` trained on the real clips, in pixel space.

The model is diffusers' own Wan transformer at a small size with realistic attention geometry
(3 heads x head_dim 64), 4x4 patches on 64x64 RGB frames (256 tokens per frame), conditioned on a
clip caption embedded by all-MiniLM-L6-v2. It is trained the way causal video models generate
(teacher forcing, as CausVid / Self-Forcing's initialisation): a sequence of ``c`` clean chunks at
timestep 0 followed by one noisy chunk, block-causal attention, flow-matching loss on the noisy chunk
only. At inference :class:`~octopus_diffusers.pipelines.causal_wan.CausalWanGenerator` runs it chunk by
chunk through the KV cache, which is the same computation (the cache is written by the clean pass).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .bundle import caption_prompt, load_bundle, read_meta, save_bundle
from .clips import VideoDataset

#: Where the shipped weights live inside the package, and the bundle's kind.
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "data" / "models" / "causal_video"
KIND = "video"


@dataclass(frozen=True)
class CausalVideoConfig:
    """Model size, frame geometry and the sampler of the trained causal video model."""

    size: int = 64
    patch: int = 4
    frames_per_chunk: int = 2
    chunks: int = 6
    heads: int = 3
    head_dim: int = 64
    layers: int = 4
    ffn_dim: int = 768
    text_dim: int = 384
    sample_steps: int = 8
    sample_shift: float = 1.0

    def __post_init__(self) -> None:
        if self.size % self.patch:
            raise ValueError(f"CausalVideoConfig: size {self.size} is not a multiple of patch {self.patch}")
        if min(self.frames_per_chunk, self.chunks, self.heads, self.layers, self.sample_steps) < 1:
            raise ValueError(f"CausalVideoConfig: sizes must be >= 1, got {self}")

    @property
    def window_frames(self) -> int:
        return self.frames_per_chunk * self.chunks

    @property
    def frame_tokens(self) -> int:
        return (self.size // self.patch) ** 2

    def schedule(self) -> Any:
        """The sampler's timesteps: ``sample_steps`` evenly from 1000 down to ``1000 / sample_steps``."""
        from octopus_diffusers.pipelines.causal_wan import CausalSchedule

        n = self.sample_steps
        return CausalSchedule(timesteps=tuple(1000.0 * (n - i) / n for i in range(n)), shift=self.sample_shift)


def build_transformer(config: CausalVideoConfig, seed: int = 0) -> Any:
    """A freshly initialised ``WanTransformer3DModel`` of ``config`` (seeded)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, config.patch, config.patch), num_attention_heads=config.heads,
        attention_head_dim=config.head_dim, in_channels=3, out_channels=3, text_dim=config.text_dim,
        freq_dim=256, ffn_dim=config.ffn_dim, num_layers=config.layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)


class TeacherForcingLoss:
    """``loss_fn`` for :func:`~octopus_diffusers.training.loop.train`: per step a batch of windows,
    one chunk index ``c`` for the batch, clean chunks ``< c`` at timestep 0 then chunk ``c`` noised to a
    uniform sigma; MSE of the predicted flow ``noise - clean`` on chunk ``c``."""

    def __init__(self, dataset: VideoDataset, config: CausalVideoConfig, batch_size: int, hop: int = 2) -> None:
        from octopus_diffusers.pipelines.causal_wan import BlockCausalAttnProcessor

        self.dataset, self.config, self.batch_size = dataset, config, batch_size
        self.windows = dataset.windows(config.window_frames, hop)
        self.processor = BlockCausalAttnProcessor()
        self._installed: set[int] = set()

    def batch(self, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(clean (B, 3, F, H, W), caption embeddings (B, L, 384))`` of random windows."""
        idx = torch.randint(len(self.windows), (self.batch_size,), generator=generator, device=generator.device)
        picks = [self.windows[i] for i in idx.tolist()]
        clean = torch.stack([self.dataset.window(c, s, self.config.window_frames) for c, s in picks])
        text = self.dataset.caption_embeds[[c for c, _ in picks]]
        return clean.to(device), text.to(device)

    def __call__(self, model: torch.nn.Module, step: int, generator: torch.Generator) -> torch.Tensor:
        from octopus_diffusers.pipelines.causal_wan import block_causal_mask

        if id(model) not in self._installed:
            model.set_attn_processor(self.processor)
            self._installed.add(id(model))
        device = next(model.parameters()).device
        cfg = self.config
        clean, text = self.batch(generator, device)
        c = int(torch.randint(cfg.chunks, (1,), generator=generator, device=generator.device))
        f0, f1 = c * cfg.frames_per_chunk, (c + 1) * cfg.frames_per_chunk
        target_clean = clean[:, :, f0:f1]
        sigma = torch.rand(clean.shape[0], generator=generator, device=generator.device).to(device)
        noise = torch.randn(target_clean.shape, generator=generator, device=generator.device).to(device)
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy = (1 - s) * target_clean + s * noise
        seq = torch.cat([clean[:, :, :f0], noisy], dim=2)
        chunk_tokens = cfg.frames_per_chunk * cfg.frame_tokens
        t = torch.zeros(clean.shape[0], (c + 1) * chunk_tokens, device=device)
        t[:, c * chunk_tokens:] = sigma[:, None] * 1000.0
        self.processor.mask = block_causal_mask(c + 1, chunk_tokens, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            flow = model(seq, t, text, return_dict=False)[0][:, :, f0:f1]
        return torch.nn.functional.mse_loss(flow.float(), noise - target_clean)


@dataclass
class TrainedCausalVideo:
    """The shipped model: transformer, caption embeddings per clip, config, and its training record."""

    transformer: Any
    caption_embeds: torch.Tensor
    clip_names: list[str]
    config: CausalVideoConfig
    record: dict[str, Any] = field(default_factory=dict)

    def prompt(self, clip: str) -> torch.Tensor:
        """``(1, L, 384)`` caption embedding of the named training clip."""
        return caption_prompt(self.caption_embeds, self.clip_names, clip)

    def generator(self) -> Any:
        """A :class:`CausalWanGenerator` (pixel space: the model works on RGB in [-1, 1], no VAE)."""
        from octopus_diffusers.pipelines.causal_wan import CausalWanGenerator

        return CausalWanGenerator(self.transformer, chunk_frames=self.config.frames_per_chunk,
                                  schedule=self.config.schedule(), pixel_space=True)

    @property
    def latent_size(self) -> tuple[int, int]:
        return (self.config.size, self.config.size)


def save_trained(out: Path, transformer: Any, dataset: VideoDataset, config: CausalVideoConfig,
                 record: dict[str, Any]) -> None:
    """Write the shippable bundle: fp16 weights, the caption embeddings, config and training record."""
    save_bundle(out, transformer, {"caption_embeds": dataset.caption_embeds},
                {"kind": KIND, "model": asdict(config), "clips": dataset.names, "training": record})


def load_trained(folder: Path = WEIGHTS_DIR, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> TrainedCausalVideo:
    """Load the shipped (or any :func:`save_trained`) model strictly; a missing or foreign file is an error."""
    meta = read_meta(folder)
    config = CausalVideoConfig(**meta["model"])
    transformer = build_transformer(config)
    extras, meta = load_bundle(folder, transformer, KIND)
    captions = extras["caption_embeds"]
    if captions.shape[0] != len(meta["clips"]):
        raise ValueError(f"{folder}: {captions.shape[0]} caption embeddings for clips {meta['clips']}")
    return TrainedCausalVideo(transformer.to(device, dtype).eval(), captions.to(device, dtype), meta["clips"],
                              config, meta.get("training", {}))


__all__ = ["CausalVideoConfig", "TeacherForcingLoss", "TrainedCausalVideo", "WEIGHTS_DIR", "build_transformer",
           "load_trained", "save_trained"]
