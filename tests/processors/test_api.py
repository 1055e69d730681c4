"""quantize_attention and the processor framework: report, counters, restore, errors, direct use
(torch.compile: test_compile.py)."""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers import LTXVideoTransformer3DModel

from octopus_diffusers.codecs import CodecError, PackedTensor
from octopus_diffusers.processors import (KVQuantConfig, QuantizedWanAttnProcessor, StepCounter, quantize_attention,
                                          registered_processors)


def _wan(tiny_runs):
    return tiny_runs.pipeline("wan")


def _wan_inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 16, 3, 4, 4, generator=g), torch.tensor([500]), torch.randn(1, 16, 32, generator=g))


# ---- processor classes -------------------------------------------------------------------------------

def test_every_quantized_processor_has_the_exact_signature_it_replaces():
    pairs = registered_processors()
    assert len(pairs) >= 6
    for original, quantized in pairs.items():
        assert issubclass(quantized, original)
        assert inspect.signature(quantized.__call__) == inspect.signature(original.__call__), quantized.__name__
        assert inspect.signature(quantized().__call__) == inspect.signature(original().__call__), quantized.__name__
        assert hasattr(quantized(), "_attention_backend") and hasattr(quantized(), "_parallel_config")


@torch.no_grad()
def test_attention_backend_is_carried_in_and_set_through(tiny_runs):
    transformer = _wan(tiny_runs).denoiser
    x, t, ehs = _wan_inputs()
    ref = transformer(x, t, ehs, return_dict=False)[0]
    transformer.set_attention_backend("_native_math")
    try:
        math_ref = transformer(x, t, ehs, return_dict=False)[0]
        with quantize_attention(transformer, codec="none"):
            processors = list(transformer.attn_processors.values())
            assert {p._attention_backend.value for p in processors} == {"_native_math"}
            assert torch.equal(transformer(x, t, ehs, return_dict=False)[0], math_ref)
            transformer.set_attention_backend("native")
            assert {p._attention_backend.value for p in processors} == {"native"}
            assert torch.equal(transformer(x, t, ehs, return_dict=False)[0], ref)
    finally:
        transformer.reset_attention_backend()


# ---- the handle ------------------------------------------------------------------------------------------

def test_report_table_and_context_manager(tiny_runs):
    pipe = _wan(tiny_runs).pipe
    with quantize_attention(pipe, codec="octopus", bits=3, value_bits=4) as handle:
        rows = handle.report()
        table = handle.table()
    assert handle.restored
    assert [r["kind"] for r in rows] == ["self", "cross", "self", "cross"]
    row = rows[0]
    assert (row["heads"], row["kv_heads"], row["head_dim"], row["codec"]) == (2, 2, 16, "octopus")
    assert row["key_bits"] < row["value_bits"]  # true rates of the 3- and 4-bit codecs, norms included
    assert table.splitlines()[0].split() == ["layer", "kind", "heads", "kv_heads", "head_dim", "codec",
                                             "key_bits", "value_bits", "cached"]
    assert len(table.splitlines()) == 1 + len(rows) and "blocks.1.attn2:text" in table
    assert not any(isinstance(p, QuantizedWanAttnProcessor) for p in pipe.transformer.attn_processors.values())


def test_nothing_global_is_patched_and_the_vae_is_untouched(tiny_runs):
    import torch.nn.functional as F
    from diffusers.models import attention_dispatch
    from diffusers.models.transformers import transformer_wan

    pipe = _wan(tiny_runs).pipe
    sdpa, dispatch = F.scaled_dot_product_attention, transformer_wan.dispatch_attention_fn
    vae_processors = [m.processor for m in pipe.vae.modules() if hasattr(m, "processor")]
    with quantize_attention(pipe, codec="turboquant", bits=2):
        assert F.scaled_dot_product_attention is sdpa
        assert transformer_wan.dispatch_attention_fn is dispatch is attention_dispatch.dispatch_attention_fn
        assert [m.processor for m in pipe.vae.modules() if hasattr(m, "processor")] == vae_processors


def test_context_manager_restores_when_the_body_raises(tiny_runs):
    pipe = _wan(tiny_runs).pipe
    originals = dict(pipe.transformer.attn_processors)
    with pytest.raises(KeyError):
        with quantize_attention(pipe, codec="none"):
            raise KeyError("boom")
    assert all(pipe.transformer.attn_processors[k] is v for k, v in originals.items())


def test_reported_bytes_equal_the_bytes_actually_stored(tiny_runs):
    pipe = _wan(tiny_runs).pipe
    stored: list[PackedTensor] = []
    with quantize_attention(pipe, codec="uniform", bits=3) as handle:
        for q in handle.quantizers:
            for codec in (q.key_codec, q.value_codec):
                def recording_encode(x, _encode=codec.encode):
                    packed = _encode(x)
                    stored.append(packed)
                    return packed
                codec.encode = recording_encode
        tiny_runs.output("wan")
        total = handle.stats()["total"]
    assert total["bytes_stored"] == sum(p.nbytes for p in stored) > 0
    assert total["vectors_encoded"] == sum(p.numel // p.shape[-1] for p in stored)
    assert total["fp16_bytes"] == 2 * sum(p.numel for p in stored)
    assert total["compression"] == pytest.approx(total["fp16_bytes"] / total["bytes_stored"])
    assert total["bits_per_scalar"] == pytest.approx(8 * total["bytes_stored"] / sum(p.numel for p in stored))


def test_full_precision_steps(tiny_runs):
    ref = tiny_runs.reference("wan")
    all_steps, stats = tiny_runs.quantized("wan", codec="turboquant", bits=2, full_precision_steps=2)
    assert torch.equal(all_steps, ref)
    assert stats["total"]["full_precision_calls"] == stats["total"]["calls"] == 16
    first_step, stats = tiny_runs.quantized("wan", codec="turboquant", bits=2, full_precision_steps=1)
    none_fp, _ = tiny_runs.quantized("wan", codec="turboquant", bits=2)
    assert stats["total"]["full_precision_calls"] == 8  # 4 attention modules x (cond, uncond) at step 0
    assert not torch.equal(first_step, ref) and not torch.equal(first_step, none_fp)


def test_step_rule_of_the_step_counter():
    steps = StepCounter()
    seen = []
    for t in (900, 900, 500, 500, 100, 950, 950, 400):  # CFG passes repeat t; a larger t starts over
        steps.observe(torch.tensor([t]))
        seen.append(steps.step_index)
    assert seen == [0, 0, 1, 1, 2, 0, 0, 1]


def test_layer_and_kind_selection(tiny_runs):
    pipe = _wan(tiny_runs).pipe
    with quantize_attention(pipe, codec="none", layers=[1]) as handle:
        assert [r["layer"] for r in handle.report()] == ["blocks.1.attn1", "blocks.1.attn2:text"]
        untouched = pipe.transformer.blocks[0].attn1.processor
        assert not isinstance(untouched, QuantizedWanAttnProcessor)
    with quantize_attention(pipe, codec="none", self_attention=False) as handle:
        assert {r["kind"] for r in handle.report()} == {"cross"}
    with quantize_attention(pipe, codec="none", layers="blocks.*.attn1") as handle:
        assert [r["layer"] for r in handle.report()] == ["blocks.0.attn1", "blocks.1.attn1"]
    with pytest.raises(ValueError, match="layers: 7 match"):
        quantize_attention(pipe, codec="none", layers=[7])
    with pytest.raises(TypeError, match="layers"):
        quantize_attention(pipe, codec="none", layers=[1.5])


# ---- bad input -------------------------------------------------------------------------------------------

def test_bad_codec_or_bits_fail_before_touching_the_model(tiny_runs):
    pipe = _wan(tiny_runs).pipe
    originals = dict(pipe.transformer.attn_processors)
    with pytest.raises(CodecError, match="unknown codec 'nope'"):
        quantize_attention(pipe, codec="nope")
    with pytest.raises(CodecError, match="blocks.0.attn1: none: bits must be"):
        quantize_attention(pipe, codec="none", bits=3)
    with pytest.raises(CodecError, match=r"octopus: bits=8 .* pass allocation=\(8, 8, 8\)"):
        quantize_attention(pipe, codec="octopus", bits=8)  # names the allocation to pass
    with pytest.raises(ValueError, match="full_precision_steps"):
        quantize_attention(pipe, codec="none", full_precision_steps=-1)
    assert all(pipe.transformer.attn_processors[k] is v for k, v in originals.items())


def test_codec_none_needs_no_bits(tiny_runs):
    ref = tiny_runs.reference("wan")
    with quantize_attention(_wan(tiny_runs).pipe, codec="none") as handle:
        assert torch.equal(tiny_runs.output("wan"), ref)
        assert handle.config.nominal_key_bits is None and handle.report()[0]["codec"] == "none"
    assert QuantizedWanAttnProcessor(codec="none").kv_config.nominal_value_bits is None


def test_octopus_at_8_bits_runs_with_the_allocation_the_error_names(tiny_runs):
    with quantize_attention(_wan(tiny_runs).pipe, codec="octopus", bits=8, allocation=(8, 8, 8)) as handle:
        tiny_runs.output("wan")
        assert handle.config.codec_options == {"allocation": (8, 8, 8)}
        assert handle.stats()["total"]["bytes_stored"] > 0


# ---- the config object -------------------------------------------------------------------------------------

def test_a_config_is_taken_whole_and_keywords_override_its_fields(tiny_runs):
    """quantize_attention and every processor take one KVQuantConfig; keywords replace fields by name and
    any other keyword is a codec option. The handle, its quantizers and the processors share it."""
    pipe = _wan(tiny_runs).pipe
    config = KVQuantConfig(codec="turboquant", bits=3, value_bits=4, cross_attention=False, seed=7)
    with quantize_attention(pipe, config) as handle:
        assert handle.config is config
        assert {r["kind"] for r in handle.report()} == {"self"}
        assert all(q.config is config for q in handle.quantizers)
        assert all(p.kv_config is config for p in pipe.transformer.attn_processors.values()
                   if isinstance(p, QuantizedWanAttnProcessor))
        rows = handle.report()
        assert rows[0]["key_bits"] < rows[0]["value_bits"]
    with quantize_attention(pipe, config, layers=[1], key_bits=2) as handle:
        assert handle.config == KVQuantConfig(codec="turboquant", bits=3, key_bits=2, value_bits=4,
                                              cross_attention=False, layers=(1,), seed=7)
        assert [r["layer"] for r in handle.report()] == ["blocks.1.attn1"]
    assert config.replace(bits=4, allocation=(5, 5, 3)).codec_options == {"allocation": (5, 5, 3)}
    assert config.replace(codec="octopus").nominal_key_bits == 3 and config.nominal_value_bits == 4
    assert repr(QuantizedWanAttnProcessor(config, seed=1)).startswith(
        "QuantizedWanAttnProcessor(codec='turboquant', key_bits=3, value_bits=4, seed=1")


@pytest.mark.parametrize("arguments, error, message", [
    ({"codec": "nope"}, CodecError, "unknown codec 'nope'"),
    ({"bits": "3"}, TypeError, "bits must be a number"),
    ({"self_attention": "no"}, TypeError, "self_attention must be True or False, got 'no'"),
    ({"full_precision_steps": 1.5}, TypeError, "full_precision_steps must be an int"),
    ({"full_precision_steps": -1}, ValueError, "full_precision_steps must be >= 0"),
    ({"seed": 1.9}, TypeError, "seed must be an int, got 1.9"),
    ({"layers": []}, ValueError, "layers is empty"),
    ({"layers": [1.5]}, TypeError, "layers: expected block indices"),
    ({"codec_options": {"seed": 3}}, TypeError, "codec_options: seed are set by the config itself"),
    ({"codec_options": ("allocation",)}, TypeError, "codec_options must be a mapping"),
])
def test_a_bad_config_is_refused_when_made(arguments, error, message):
    with pytest.raises(error, match=message):
        KVQuantConfig(**arguments)


def test_config_must_be_a_config_not_a_positional_codec(tiny_runs):
    with pytest.raises(TypeError, match="config must be a KVQuantConfig, got 'turboquant' .*pass codec='turboquant'"):
        quantize_attention(_wan(tiny_runs).pipe, "turboquant")
    with pytest.raises(TypeError, match="config must be a KVQuantConfig"):
        QuantizedWanAttnProcessor({"codec": "none"})


def test_quantize_attention_documents_every_config_field():
    import dataclasses

    doc = quantize_attention.__doc__
    assert all(f"``{f.name}``" in doc for f in dataclasses.fields(KVQuantConfig) if f.name != "codec_options")
    assert all(f"{f.name}:" in KVQuantConfig.__doc__ or f"{f.name}," in KVQuantConfig.__doc__
               for f in dataclasses.fields(KVQuantConfig))


def test_layers_that_match_nothing_are_named_with_the_valid_ones(tiny_runs):
    pipe = _wan(tiny_runs).pipe
    originals = dict(pipe.transformer.attn_processors)
    with pytest.raises(ValueError, match=r"layers: 99 match\(es\) no attention module; block indices are 0-1"):
        quantize_attention(pipe, codec="none", layers=[0, 99])
    names = r"module names blocks\.\*\.attn1, blocks\.\*\.attn2"
    with pytest.raises(ValueError, match=r"'blocks\.\*\.atn2' match.* " + names):
        quantize_attention(pipe, codec="none", layers=["blocks.0.attn1", "blocks.*.atn2"])
    with pytest.raises(ValueError, match="layers: '1' match"):  # an index given as a string is a name pattern
        quantize_attention(pipe, codec="none", layers=["1"])
    with pytest.raises(ValueError, match="layers is empty"):
        quantize_attention(pipe, codec="none", layers=[])
    assert all(pipe.transformer.attn_processors[k] is v for k, v in originals.items())


@pytest.mark.parametrize("option", ["self_attention", "cross_attention", "cache_cross_attention", "exact_gpu_codes"])
def test_flags_given_as_strings_are_refused(tiny_runs, option):
    with pytest.raises(TypeError, match=f"{option} must be True or False, got 'no'"):
        quantize_attention(_wan(tiny_runs).pipe, codec="none", **{option: "no"})


def test_codec_flag_option_given_as_a_string_is_refused(tiny_runs):
    pipe = _wan(tiny_runs).pipe
    originals = dict(pipe.transformer.attn_processors)
    with pytest.raises(TypeError, match="joint_rounding must be True or False, got 'no'"):
        quantize_attention(pipe, codec="octopus", bits=3, joint_rounding="no")
    assert all(pipe.transformer.attn_processors[k] is v for k, v in originals.items())


@pytest.mark.parametrize("seed, error, message", [
    (1.9, TypeError, "seed must be an int, got 1.9"), (True, TypeError, "seed must be an int, got True"),
    ("3", TypeError, "seed must be an int, got '3'"), (-1, ValueError, "seed must be >= 0, got -1")])
def test_bad_seeds_are_refused_and_named(tiny_runs, seed, error, message):
    with pytest.raises(error, match=message):
        quantize_attention(_wan(tiny_runs).pipe, codec="turboquant", bits=3, seed=seed)
    with pytest.raises(error, match=message):
        QuantizedWanAttnProcessor(codec="turboquant", bits=3, seed=seed)


@pytest.mark.parametrize("option, value, error, message", [
    ("bits", "3", TypeError, "bits must be a number .*got '3' \\(str\\)"),
    ("bits", True, TypeError, "bits must be a number .*got True"),
    ("bits", float("nan"), ValueError, "bits must be a finite number > 0, got nan"),
    ("key_bits", 0, ValueError, "key_bits must be a finite number > 0, got 0"),
    ("value_bits", -2.5, ValueError, "value_bits must be a finite number > 0, got -2.5")])
def test_bad_bits_are_named(tiny_runs, option, value, error, message):
    with pytest.raises(error, match=message):
        quantize_attention(_wan(tiny_runs).pipe, codec="turboquant", **{option: value})


def test_model_without_attention_and_non_models_are_refused():
    with pytest.raises(ValueError, match="Sequential .* has no attention modules"):
        quantize_attention(torch.nn.Sequential(torch.nn.Linear(4, 4)), codec="none")
    with pytest.raises(TypeError, match="diffusers pipeline or a torch.nn.Module"):
        quantize_attention("transformer", codec="none")


def test_hooking_twice_and_restoring_twice_are_errors(tiny_runs):
    pipe = _wan(tiny_runs).pipe
    handle = quantize_attention(pipe, codec="none")
    try:
        with pytest.raises(RuntimeError, match="already quantized"):
            quantize_attention(pipe.transformer, codec="none")
    finally:
        handle.restore()
    with pytest.raises(RuntimeError, match="already restored"):
        handle.restore()


def test_restore_after_processors_were_replaced_by_hand(tiny_runs):
    """A processor replaced by hand is left in place and reported; the rest is restored, our forward
    hooks are gone, and the model can be hooked again."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    transformer = _wan(tiny_runs).denoiser
    originals = dict(transformer.attn_processors)
    pre_hooks, hooks = dict(transformer._forward_pre_hooks), dict(transformer._forward_hooks)
    mine = WanAttnProcessor()
    handle = quantize_attention(transformer, codec="turboquant", bits=3, full_precision_steps=1)
    transformer.blocks[0].attn1.set_processor(mine)  # by hand, after hooking
    transformer.blocks[1].attn2.set_processor(originals["blocks.1.attn2.processor"])  # the original, by hand
    with pytest.raises(RuntimeError, match="already quantized"):
        quantize_attention(transformer, codec="none")
    with pytest.warns(RuntimeWarning, match=r"blocks\.0\.attn1 \(WanAttnProcessor\)"):
        summary = handle.restore()
    assert summary == {"restored": ["blocks.0.attn2", "blocks.1.attn1", "blocks.1.attn2"],
                       "left_in_place": ["blocks.0.attn1 (WanAttnProcessor)"]}
    after = transformer.attn_processors
    assert after["blocks.0.attn1.processor"] is mine
    assert all(after[k] is v for k, v in originals.items() if k != "blocks.0.attn1.processor")
    assert dict(transformer._forward_pre_hooks) == pre_hooks and dict(transformer._forward_hooks) == hooks
    with quantize_attention(transformer, codec="none") as again:  # hooks every module again
        assert len(again.report()) == 4
    assert transformer.attn_processors["blocks.0.attn1.processor"] is mine
    transformer.set_attn_processor(originals)


def test_restore_reports_nothing_when_all_is_ours(tiny_runs, recwarn):
    with quantize_attention(_wan(tiny_runs).pipe, codec="none") as handle:
        pass
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert handle.restored


def test_unsupported_model_family_is_named():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    class CustomProcessor(AttnProcessor2_0):
        pass

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Attention(query_dim=8, heads=2, dim_head=4, processor=CustomProcessor())

    with pytest.raises(TypeError, match=r"cannot hook Model: attention processor\(s\) CustomProcessor \(e.g. attn\)"):
        quantize_attention(Model(), codec="none")


def _ltx_head_dim_8() -> LTXVideoTransformer3DModel:
    torch.manual_seed(0)
    return LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                      num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                      num_layers=1, caption_channels=16)


def test_codec_that_cannot_take_the_head_dim_is_named_with_the_layer():
    ltx = _ltx_head_dim_8()
    with pytest.raises(CodecError, match="transformer_blocks.0.attn1: polarquant: unsupported head_dim 8"):
        quantize_attention(ltx, codec="polarquant", bits=4)
    assert not any(hasattr(m, "_octopus_quantized_by") for m in ltx.modules())


@torch.no_grad()
def test_processor_of_another_family_is_refused():
    ltx = _ltx_head_dim_8()
    ltx.set_attn_processor(QuantizedWanAttnProcessor(codec="none"))
    with pytest.raises(TypeError, match="QuantizedWanAttnProcessor replaces WanAttnProcessor .* LTXAttention"):
        ltx(torch.randn(1, 8, 8), torch.randn(1, 4, 16), torch.tensor([10]),
            encoder_attention_mask=torch.ones(1, 4), num_frames=2, height=2, width=2)


# ---- direct use with set_attn_processor ---------------------------------------------------------------------

@torch.no_grad()
def test_direct_processor_use_matches_quantize_attention(tiny_runs):
    transformer = _wan(tiny_runs).denoiser
    x, t, ehs = _wan_inputs()
    originals = dict(transformer.attn_processors)
    with quantize_attention(transformer, codec="turboquant", bits=3, seed=5, cache_cross_attention=False):
        hooked = transformer(x, t, ehs, return_dict=False)[0]
    try:
        shared = QuantizedWanAttnProcessor(KVQuantConfig(codec="turboquant", bits=3, seed=5))
        transformer.set_attn_processor(shared)  # one object for every layer: state is kept per module
        assert torch.equal(transformer(x, t, ehs, return_dict=False)[0], hooked)
        assert len(shared.bound_quantizers()) == 4
        per_layer = {name: QuantizedWanAttnProcessor(codec="turboquant", bits=3, seed=5 + 2 * i)
                     for i, name in enumerate(originals)}
        transformer.set_attn_processor(per_layer)
        assert torch.equal(transformer(x, t, ehs, return_dict=False)[0], hooked)
    finally:
        transformer.set_attn_processor(dict(originals))


@torch.no_grad()
def test_direct_use_honours_the_stream_selection_and_refuses_what_needs_the_hook(tiny_runs):
    transformer = _wan(tiny_runs).denoiser
    x, t, ehs = _wan_inputs()
    originals = dict(transformer.attn_processors)
    try:
        self_only = QuantizedWanAttnProcessor(codec="turboquant", bits=3, cross_attention=False)
        transformer.set_attn_processor(self_only)
        transformer(x, t, ehs, return_dict=False)
        assert [q.stream.kind for q in self_only.bound_quantizers()] == ["self", "self"]
        for refused, message in (({"layers": [0]}, "layers= selects modules by name"),
                                 ({"full_precision_steps": 1}, "full_precision_steps needs the transformer's")):
            transformer.set_attn_processor(QuantizedWanAttnProcessor(codec="turboquant", bits=3, **refused))
            with pytest.raises(ValueError, match=message):
                transformer(x, t, ehs, return_dict=False)
    finally:
        transformer.set_attn_processor(dict(originals))
