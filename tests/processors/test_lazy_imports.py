"""Imports are lazy: a broken optional (audio) stack cannot take down the video path, and the top-level
names are the real objects."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import pytest

import octopus_diffusers
import octopus_diffusers.codecs
import octopus_diffusers.processors

#: Family modules of audio models, and what they would pull in.
AUDIO_MODULES = ("octopus_diffusers.processors.stable_audio", "octopus_diffusers.processors.ltx2",
                 "diffusers.pipelines.audioldm2.modeling_audioldm2")


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_importing_the_package_and_processors_imports_no_audio_stack():
    out = _run("""
        import sys
        import octopus_diffusers
        octopus_diffusers.quantize_attention
        import octopus_diffusers.processors
        loaded = [m for m in ("torchaudio", "transformers", "diffusers.models.transformers",
                              "octopus_diffusers.processors.audioldm2", "octopus_diffusers.processors.wan")
                  if m in sys.modules]
        print("loaded:", loaded)
    """)
    assert "loaded: []" in out, out


def test_video_model_hooks_and_runs_with_the_audio_stack_blocked():
    """torchaudio and diffusers' AudioLDM2 module cannot be imported (as when a wheel does not load):
    hooking a Wan transformer and running it works and imports no audio family; the generic
    AttnProcessor2_0 family (AudioLDM2's) also hooks a plain model without the AudioLDM2 module."""
    out = _run("""
        import sys
        sys.modules["torchaudio"] = None                                      # import blocked
        sys.modules["diffusers.pipelines.audioldm2.modeling_audioldm2"] = None
        import torch
        import octopus_diffusers
        from diffusers import WanTransformer3DModel
        from diffusers.models.attention_processor import Attention, AttnProcessor2_0

        torch.manual_seed(0)
        model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
                                      in_channels=4, out_channels=4, text_dim=8, freq_dim=16, ffn_dim=16,
                                      num_layers=1, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
        x, t, ehs = torch.randn(1, 4, 1, 4, 4), torch.tensor([500]), torch.randn(1, 3, 8)
        with torch.no_grad():
            ref = model(x, t, ehs, return_dict=False)[0]
            with octopus_diffusers.quantize_attention(model, codec="turboquant", bits=2) as handle:
                out = model(x, t, ehs, return_dict=False)[0]
                assert handle.stats()["total"]["calls"] == 2
        assert out.shape == ref.shape and not torch.equal(out, ref)

        class Plain(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.attn = Attention(query_dim=8, heads=2, dim_head=4, processor=AttnProcessor2_0())

            def forward(self, x):
                return self.attn(x)

        plain = Plain()
        with octopus_diffusers.quantize_attention(plain, codec="none"):
            plain(torch.randn(1, 3, 8))
        print("audio:", [m for m in %r if sys.modules.get(m) is not None])
    """ % (AUDIO_MODULES,))
    assert "audio: []" in out, out


def test_top_level_names_are_the_real_objects():
    assert octopus_diffusers.quantize_attention is octopus_diffusers.processors.quantize_attention
    assert octopus_diffusers.QuantizedAttentionHandle is octopus_diffusers.processors.QuantizedAttentionHandle
    assert octopus_diffusers.get_codec is octopus_diffusers.codecs.get_codec
    assert octopus_diffusers.KVQuantConfig is octopus_diffusers.processors.KVQuantConfig
    assert list(inspect.signature(octopus_diffusers.quantize_attention).parameters) == ["pipe_or_model", "config",
                                                                                        "overrides"]
    assert octopus_diffusers.quantize_attention.__doc__.startswith("Quantize the attention K/V")
    assert set(octopus_diffusers.__all__) <= set(dir(octopus_diffusers))
    assert all(getattr(octopus_diffusers, name) is not None for name in octopus_diffusers.__all__)
    assert len(octopus_diffusers.__all__) <= 10
    with pytest.raises(AttributeError, match="no_such_name"):
        octopus_diffusers.no_such_name  # noqa: B018


def test_family_classes_are_read_lazily_from_the_package():
    from octopus_diffusers.processors import FAMILIES, QuantizedWanAttnProcessor
    from octopus_diffusers.processors.wan import QuantizedWanAttnProcessor as direct

    assert QuantizedWanAttnProcessor is direct
    assert "QuantizedStableAudioAttnProcessor" in dir(octopus_diffusers.processors)
    # every registry entry names the class that replaces exactly that diffusers processor
    for original, quantized in octopus_diffusers.processors.registered_processors().items():
        assert FAMILIES[original.__name__].split(":")[1] == quantized.__name__
    assert len(octopus_diffusers.processors.registered_processors()) == len(FAMILIES)


def test_a_family_that_cannot_be_imported_is_named(monkeypatch):
    from octopus_diffusers.processors import base

    class BrokenFamilyProcessor:
        pass

    monkeypatch.setitem(base.FAMILIES, "BrokenFamilyProcessor", "no_such_family:QuantizedBroken")
    with pytest.raises(ImportError, match="octopus_diffusers.processors.no_such_family cannot be imported"):
        base.quantized_processor_class(BrokenFamilyProcessor)
    assert "BrokenFamilyProcessor" in base.supported_processor_names()
