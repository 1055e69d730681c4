"""DINOv2-small from the packaged ONNX weights: strict mapping, onnxruntime check, codecs on K/V."""

from __future__ import annotations

import pytest
import torch

from octopus_diffusers.eval.real import models


@pytest.fixture(scope="module")
def dinov2():
    import importlib.util

    missing = models.available("dinov2_onnx")
    if missing:
        pytest.skip(missing)
    if importlib.util.find_spec("onnx") is None:
        pytest.skip("onnx is not installed: pip install onnx")
    from octopus_diffusers.eval.real import dinov2 as module

    return module, module.load_dinov2()


@pytest.fixture(scope="module")
def image(dinov2):
    module, _ = dinov2
    try:
        pixels, names = module.load_images(1)
    except models.MissingRealPackage as err:
        pytest.skip(str(err))
    assert pixels.shape == (1, 3, 224, 224) and names == ["astronaut.png"]
    return pixels


def test_mapped_model_matches_onnxruntime(dinov2, image) -> None:
    pytest.importorskip("onnxruntime")
    module, model = dinov2
    assert module.check_against_onnxruntime(model, image) < module.ORT_TOLERANCE


@pytest.mark.slow  # ~10 s on 2 shared cores
def test_codecs_on_kv(dinov2, image) -> None:
    module, model = dinov2
    from octopus_diffusers.codecs import get_codec
    from octopus_diffusers.eval.real.codec_grid import CodecConfig

    reference = module.features(model, image)
    with module.kv_codec_hooks(model, CodecConfig("none", "none", 32)):
        assert torch.equal(module.features(model, image), reference)
    with module.kv_codec_hooks(model, CodecConfig("turboquant-3", "turboquant", 3)) as counters:
        quant = module.features(model, image)
    assert counters["scalars"] == 12 * 2 * 6 * 257 * 64
    assert counters["bits"] / counters["scalars"] == pytest.approx(get_codec("turboquant", 64, 3).bits_per_scalar)
    m = module.cosine_metrics(reference, quant)
    assert 0.9 < m["cos_cls"][0] < 1.0 and 0.9 < m["cos_patch_tokens"][0] < 1.0
    assert torch.equal(module.features(model, image), reference)  # hooks removed on exit


def test_wrong_onnx_file_is_refused(dinov2) -> None:
    module, _ = dinov2
    missing = models.available("terrain_unet")
    if missing:
        pytest.skip(missing)
    with pytest.raises(ValueError, match="position-embedding|not a DINOv2"):
        module.load_dinov2(models.asset_path("terrain_unet"))


def test_capture(dinov2, image) -> None:
    from octopus_diffusers.eval.real.capture import capture_dinov2_qkv

    got = capture_dinov2_qkv(num_images=1)
    assert sorted(got) == sorted(f"layer{i}.{r}" for i in range(12) for r in ("query", "key", "value"))
    assert all(t.shape == (6, 257, 64) and t.dtype == torch.float32 for t in got.values())
    module, model = dinov2
    with torch.no_grad():  # layer 0's keys are the k_proj of the first block's normed input
        emb = model.embeddings(image)
        k = model.encoder.layer[0].attention.k_proj(model.encoder.layer[0].norm1(emb))
    assert torch.allclose(got["layer0.key"], k.view(1, 257, 6, 64).transpose(1, 2)[0], atol=1e-5)
