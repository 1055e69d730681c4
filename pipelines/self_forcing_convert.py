"""Convert Self-Forcing / CausVid checkpoints (original Wan2.1 module naming) to diffusers' ``WanTransformer3DModel``.

The causal Wan students keep the original Wan repository's names (``blocks.N.self_attn.q``,
``cross_attn.k``, ``norm_q``, ``ffn.0``, ``modulation``, ``head.head`` ...), often below a
``model.`` prefix and inside a training checkpoint's ``generator`` / ``generator_ema`` entry.
Causal attention changes no weight, so their tensors map one to one onto diffusers' Wan names. The
conversion is strict: every source key is consumed, every target parameter filled, every shape
checked against the model built from the inferred config; anything else is a ``ValueError`` naming
the key.

Command line (writes a diffusers folder loadable with ``WanTransformer3DModel.from_pretrained``)::

    python -m octopus_diffusers.pipelines.self_forcing_convert CHECKPOINT OUT_DIR [--which generator_ema]
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

#: Original (Wan repository) name -> diffusers name, for everything outside the blocks.
_TOP = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
}
#: Inside ``blocks.N.``: original module -> diffusers module. The original ``norm3`` is the affine
#: cross-attention norm, which diffusers calls ``norm2`` (its ``norm2``/``norm3`` have no weights).
_BLOCK = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "self_attn.norm_q": "attn1.norm_q", "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0", "cross_attn.norm_q": "attn2.norm_q", "cross_attn.norm_k": "attn2.norm_k",
    "norm3": "norm2", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
}
#: Bare parameters (no ``.weight``/``.bias``).
_PARAMS = {"head.modulation": "scale_shift_table"}
_BLOCK_PARAMS = {"modulation": "scale_shift_table"}

#: Wrapper prefixes stripped from every key (training wrappers, torch.compile, FSDP, DDP).
_PREFIXES = ("model.", "module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
#: Entries of a training checkpoint that may hold the generator's weights, in order of preference.
CHECKPOINT_ENTRIES = ("generator_ema", "generator", "state_dict", "model")

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def unwrap_checkpoint(obj: Any, which: str | None = None) -> dict[str, torch.Tensor]:
    """The tensor dict of a loaded checkpoint: ``obj[which]`` or the first of :data:`CHECKPOINT_ENTRIES`
    present, or ``obj`` itself when it already maps names to tensors."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint: expected a dict of tensors, got {type(obj).__name__}")
    if which is not None:
        if which not in obj:
            raise ValueError(f"checkpoint: no entry {which!r}; it has {', '.join(map(str, list(obj)[:10]))}")
        obj = obj[which]
    elif not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for entry in CHECKPOINT_ENTRIES:
            if entry in obj and isinstance(obj[entry], Mapping):
                obj = obj[entry]
                break
        else:
            raise ValueError(f"checkpoint: no tensor dict found; entries {', '.join(map(str, list(obj)[:10]))}; "
                             f"pass which= one of them")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"checkpoint: entry {bad[0]!r} is not a tensor")
    return dict(obj)


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (:data:`_PREFIXES`, repeatedly) from every key; refuses collisions."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key
        while name.startswith(_PREFIXES):
            name = name[next(len(p) for p in _PREFIXES if name.startswith(p)):]
        if name in out:
            raise ValueError(f"checkpoint: keys {key!r} and another both map to {name!r} after removing prefixes")
        out[name] = value
    return out


def diffusers_name(original: str) -> str:
    """The diffusers parameter name of one original (prefix-free) Wan key; ``ValueError`` for an unknown key."""
    if original in _PARAMS:
        return _PARAMS[original]
    m = _BLOCK_KEY.match(original)
    if m:
        index, rest = m.groups()
        if rest in _BLOCK_PARAMS:
            return f"blocks.{index}.{_BLOCK_PARAMS[rest]}"
        module, _, leaf = rest.rpartition(".")
        if module in _BLOCK and leaf in ("weight", "bias"):
            return f"blocks.{index}.{_BLOCK[module]}.{leaf}"
    else:
        module, _, leaf = original.rpartition(".")
        if module in _TOP and leaf in ("weight", "bias"):
            return f"{_TOP[module]}.{leaf}"
    raise ValueError(f"checkpoint: unknown key {original!r} (not a text-to-video Wan2.1 parameter; image-to-video "
                     "keys such as img_emb / k_img are not supported)")


def original_name(diffusers_key: str) -> str:
    """Inverse of :func:`diffusers_name` (used to build original-format checkpoints in tests)."""
    inverse_top = {v: k for k, v in _TOP.items()}
    inverse_block = {v: k for k, v in _BLOCK.items()}
    for orig, diff in _PARAMS.items():
        if diffusers_key == diff:
            return orig
    m = _BLOCK_KEY.match(diffusers_key)
    if m:
        index, rest = m.groups()
        for orig, diff in _BLOCK_PARAMS.items():
            if rest == diff:
                return f"blocks.{index}.{orig}"
        module, _, leaf = rest.rpartition(".")
        if module in inverse_block:
            return f"blocks.{index}.{inverse_block[module]}.{leaf}"
    else:
        module, _, leaf = diffusers_key.rpartition(".")
        if module in inverse_top:
            return f"{inverse_top[module]}.{leaf}"
    raise ValueError(f"no original Wan name for diffusers key {diffusers_key!r}")


def infer_config(state: Mapping[str, torch.Tensor], head_dim: int = 128) -> dict[str, Any]:
    """``WanTransformer3DModel`` config from the (prefix-free, original-named) tensors' shapes.

    The head count is not stored in any shape (``norm_q`` spans all heads), so ``head_dim`` (128 for
    every Wan2.1 model) gives ``num_attention_heads = dim / head_dim``.
    """
    for key in ("patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight", "head.head.weight",
                "blocks.0.ffn.0.weight"):
        if key not in state:
            raise ValueError(f"checkpoint: missing {key!r}, needed to infer the model config")
    patch = state["patch_embedding.weight"]
    dim, in_channels = patch.shape[0], patch.shape[1]
    patch_size = tuple(int(s) for s in patch.shape[2:])
    if dim % head_dim:
        raise ValueError(f"checkpoint: model width {dim} is not a multiple of head_dim {head_dim}")
    blocks = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))}
    if blocks != set(range(len(blocks))):
        raise ValueError(f"checkpoint: block indices {sorted(blocks)} are not 0..{len(blocks) - 1}")
    out_features = state["head.head.weight"].shape[0]
    prod = patch_size[0] * patch_size[1] * patch_size[2]
    return {"patch_size": patch_size, "num_attention_heads": dim // head_dim, "attention_head_dim": head_dim,
            "in_channels": int(in_channels), "out_channels": int(out_features // prod),
            "text_dim": int(state["text_embedding.0.weight"].shape[1]),
            "freq_dim": int(state["time_embedding.0.weight"].shape[1]),
            "ffn_dim": int(state["blocks.0.ffn.0.weight"].shape[0]), "num_layers": len(blocks),
            "cross_attn_norm": "blocks.0.norm3.weight" in state, "qk_norm": "rms_norm_across_heads", "eps": 1e-6}


def convert_state_dict(original: Mapping[str, torch.Tensor],
                       expected: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Original-named tensors (prefixes allowed) -> diffusers names. With ``expected`` (a model's
    ``state_dict()``) every target must be filled exactly once with the same shape."""
    state = strip_prefixes(original)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = diffusers_name(key)
        if name in out:
            raise ValueError(f"checkpoint: two keys map to {name!r} (second: {key!r})")
        if expected is not None:
            if name not in expected:
                raise ValueError(f"checkpoint: key {key!r} maps to {name!r}, which this model does not have")
            if tuple(expected[name].shape) != tuple(value.shape):
                raise ValueError(f"checkpoint: key {key!r} has shape {tuple(value.shape)}, the model's {name!r} "
                                 f"has {tuple(expected[name].shape)}")
        out[name] = value
    if expected is not None:
        missing = sorted(set(expected) - set(out))
        if missing:
            raise ValueError(f"checkpoint: no tensor for the model's {missing[0]!r} (original name "
                             f"{original_name(missing[0])!r}) and {len(missing) - 1} more")
    return out


def to_original_state_dict(diffusers_state: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """diffusers-named tensors -> original Wan names (``prefix`` e.g. ``"model."``), for tests and export."""
    return {prefix + original_name(k): v for k, v in diffusers_state.items()}


def load_original_checkpoint(path: str | Path, which: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pt``/``.pth``/``.bin`` (torch.load, weights only) or ``.safetensors`` checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return unwrap_checkpoint(load_file(str(path)), which)
    return unwrap_checkpoint(torch.load(str(path), map_location="cpu", weights_only=True), which)


def build_transformer(original: Mapping[str, torch.Tensor], head_dim: int = 128, rope_max_seq_len: int = 1024,
                      dtype: torch.dtype | None = None):
    """A ``WanTransformer3DModel`` holding the converted weights (strict load, shapes checked)."""
    from diffusers import WanTransformer3DModel

    state = strip_prefixes(original)
    config = infer_config(state, head_dim)
    with torch.device("meta"):
        model = WanTransformer3DModel(**config, rope_max_seq_len=rope_max_seq_len)
    converted = convert_state_dict(state, model.state_dict())
    model.load_state_dict(converted, strict=True, assign=True)
    # the rotary tables are non-persistent buffers: rebuild them off the meta device
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    model.rope = WanRotaryPosEmbed(head_dim, config["patch_size"], rope_max_seq_len)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--which", default=None, help="checkpoint entry (default: generator_ema, generator, ...)")
    parser.add_argument("--head-dim", type=int, default=128)
    args = parser.parse_args(argv)
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        parser.error(f"{args.out_dir} exists and is not empty")
    model = build_transformer(load_original_checkpoint(args.checkpoint, args.which), args.head_dim)
    model.save_pretrained(args.out_dir)
    print(f"wrote {args.out_dir} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
