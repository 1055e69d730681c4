"""QuantizedKVCache: a transformers cache storing past K/V as packed codes of the library's codecs."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from octopus_diffusers.codecs import CodecError, PackedTensor, get_codec
from octopus_diffusers.integrations.transformers_cache import QuantizedKVCache

HEAD_DIM = 16


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=HEAD_DIM,
                      max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 96, (2, 70), generator=torch.Generator().manual_seed(1))


def chunked(model, ids, cache, chunk=16):
    """Logits of ``ids`` fed ``chunk`` tokens per forward through ``cache``."""
    with torch.no_grad():
        return torch.cat([model(ids[:, s:s + chunk], cache=cache, use_cache=True).logits
                          for s in range(0, ids.shape[1], chunk)], dim=1)


def test_none_codec_is_bit_identical_to_dynamic_cache(tiny, ids):
    ref = chunked(tiny, ids, DynamicCache(config=tiny.config))
    cache = QuantizedKVCache(tiny, codec="none", bits=32, residual_window=8)
    assert torch.equal(chunked(tiny, ids, cache), ref)
    # the old tokens really went through the store (the window is not the whole cache)
    assert all(layer.key_store.length >= 62 - 7 for layer in cache.layers)
    prompt = ids[:1, :10]
    expected = tiny.generate(prompt, max_new_tokens=12, do_sample=False)
    got = tiny.generate(prompt, max_new_tokens=12, do_sample=False,
                        cache=QuantizedKVCache(tiny, codec="none", bits=32, residual_window=4))
    assert torch.equal(got, expected)


def test_old_tokens_are_stored_as_codes_and_attention_sees_their_decoding(tiny, ids):
    cache = QuantizedKVCache(tiny, codec="octopus", bits=3, residual_window=8, full_precision_layers=())
    ref_cache = DynamicCache(config=tiny.config)
    chunked(tiny, ids, ref_cache)
    chunked(tiny, ids, cache)
    layer = cache.layers[0]  # its keys do not depend on earlier layers' quantization
    assert 8 <= layer.keys.shape[-2] < 8 + 16 and layer.get_seq_length() == 70
    (packed,) = layer.key_store.chunks  # per-vector codec: one merged chunk
    assert isinstance(packed, PackedTensor) and packed.fields["codes"].dtype == torch.uint8
    n = packed.shape[-2]
    # what the next call's attention sees for the old keys: exactly the codec's decoding of them
    k_new = torch.randn(2, 2, 1, HEAD_DIM)
    keys, _ = layer.update(k_new, torch.randn(2, 2, 1, HEAD_DIM))
    codec = get_codec("octopus", HEAD_DIM, 3, seed=0)
    original = ref_cache.layers[0].keys[..., :n, :]
    assert torch.equal(keys[..., :n, :], codec.roundtrip(original))
    assert not torch.equal(keys[..., :n, :], original)
    assert torch.equal(keys[..., -1:, :], k_new)


def test_bytes_equal_the_accounting(tiny, ids):
    cache = QuantizedKVCache(tiny, codec="turboquant", bits=2, residual_window=8)
    chunked(tiny, ids, cache)
    codec = get_codec("turboquant", HEAD_DIM, 2)
    total = 0
    for index, layer in enumerate(cache.layers):
        window = 2 * layer.keys.numel() * 4  # fp32 keys + values of the window
        quantized = layer.value_store.numel() + (0 if index in (0, 2) else layer.key_store.numel())
        unquantized_keys = layer.key_store.numel() * 4 if index in (0, 2) else 0
        expected = window + unquantized_keys + quantized * codec.bits_per_scalar / 8
        assert cache.nbytes(index) == expected
        total += expected
    assert cache.nbytes() == total
    assert cache.numel() == 3 * 2 * 2 * 2 * 70 * HEAD_DIM  # layers x K/V x batch x kv heads x tokens x d
    assert cache.dense_nbytes(torch.bfloat16) == cache.numel() * 2
    assert cache.nbytes() < cache.dense_nbytes(torch.float32)
    mems = cache.memory()
    full = sum(m.full_numel for m in mems)
    paper = (sum(8 * m.packed_bytes for m in mems) + 16 * full) / cache.numel()
    assert math.isclose(cache.bits_per_scalar(full_precision_bits=16), paper)
    assert math.isclose(cache.bits_per_scalar(), 8 * cache.nbytes() / cache.numel())


def test_paper_protocol_keeps_first_and_last_layer_keys(tiny, ids):
    cache = QuantizedKVCache(tiny, codec="octopus", bits=2, residual_window=4, full_precision_layers=(0, -1))
    assert [layer.key_codec is None for layer in cache.layers] == [True, False, True]
    assert all(layer.value_codec is not None for layer in cache.layers)
    both = QuantizedKVCache(tiny, codec="octopus", bits=2, full_precision_layers=(-1,), full_precision_values=True)
    assert both.layers[2].key_codec is None and both.layers[2].value_codec is None
    chunked(tiny, ids, cache)
    assert cache.layers[0].key_store.full is not None and cache.layers[0].key_store.chunks == []


def test_quantization_changes_logits_less_at_more_bits(tiny, ids):
    ids = ids[:1, :40]
    ref = chunked(tiny, ids, DynamicCache(config=tiny.config))
    errs = [(chunked(tiny, ids, QuantizedKVCache(tiny, "turboquant", bits=b, residual_window=4,
                                                 full_precision_layers=())) - ref).abs().mean().item()
            for b in (1, 4)]
    assert errs[0] > errs[1] > 0


def test_grouping_codec_flushes_whole_groups(tiny):
    cache = QuantizedKVCache(tiny, codec="uniform", bits=4, residual_window=4, full_precision_layers=())
    layer = cache.layers[0]
    assert layer.flush_size == 32  # KIVI keys: per-channel groups of 32 tokens
    ids = torch.randint(0, 96, (1, 80), generator=torch.Generator().manual_seed(2))
    chunked(tiny, ids, cache, chunk=10)
    assert layer.key_store.length == 64 and layer.keys.shape[-2] == 16
    assert [c.shape[-2] for c in layer.key_store.chunks] == [32, 32]


def test_generate_with_a_quantized_cache(tiny, ids):
    cache = QuantizedKVCache(tiny, codec="octopus", bits=4, residual_window=4)
    out = tiny.generate(ids[:1, :10], max_new_tokens=15, do_sample=False, cache=cache)
    assert out.shape == (1, 25) and cache.get_seq_length() == 24
    assert sum(len(layer.value_store.chunks) for layer in cache.layers) == 3


def test_batch_selection_keeps_codes_consistent(tiny, ids):
    cache = QuantizedKVCache(tiny, codec="turboquant", bits=3, residual_window=4)
    chunked(tiny, ids, cache)
    before = cache.layers[1].key_store.decode()
    cache.batch_select_indices(torch.tensor([1]))
    assert torch.equal(cache.layers[1].key_store.decode(), before[1:])
    cache.reorder_cache(torch.tensor([0, 0]))
    assert torch.equal(cache.layers[1].key_store.decode(), before[[1, 1]])


def test_bad_input_gives_clear_errors(tiny):
    with pytest.raises(TypeError, match="transformers model or config"):
        QuantizedKVCache(object())
    with pytest.raises(ValueError, match="not a layer index"):
        QuantizedKVCache(tiny, full_precision_layers=(3,))
    with pytest.raises(ValueError, match="residual_window"):
        QuantizedKVCache(tiny, residual_window=-1)
    with pytest.raises(CodecError, match="unknown codec"):
        QuantizedKVCache(tiny, codec="zip")
    cache = QuantizedKVCache(tiny, codec="octopus", bits=3)
    with pytest.raises(CodecError, match="head_dim 32"):
        cache.update(torch.randn(1, 2, 3, 32), torch.randn(1, 2, 3, 32), 1)
    with pytest.raises(ValueError, match="cannot crop"):
        cache.crop(-1)
    sliding = LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                          layer_types=["sliding_attention", "full_attention"], sliding_window=8)
    with pytest.raises(ValueError, match="full-attention layers only"):
        QuantizedKVCache(sliding)


@pytest.mark.slow
def test_real_smollm2_none_is_exact_and_octopus_close(smollm2, wiki_text):
    model, tokenizer, _ = smollm2
    ids = tokenizer(wiki_text, return_tensors="pt").input_ids[:, :192]
    ref = chunked(model, ids, DynamicCache(config=model.config), chunk=64)
    assert torch.equal(chunked(model, ids, QuantizedKVCache(model, "none", bits=32), chunk=64), ref)

    def nll(logits):
        return torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()

    quant = chunked(model, ids, QuantizedKVCache(model, "octopus", bits=4), chunk=64)
    assert not torch.equal(quant, ref)
    assert abs(nll(quant) - nll(ref)) < 0.1  # 4-bit OCTOPUS keeps perplexity within ~10 %


@pytest.mark.slow
def test_perplexity_benchmark_writes_its_report(smollm2, tmp_path, monkeypatch):
    import json

    from octopus_diffusers.eval.real import text_perplexity as tp

    tiny_size = tp.Size(1, 96, ("turboquant",), (2,), ("turboquant",))
    monkeypatch.setitem(tp.SIZES, "quick", tiny_size)
    res = tp.run(tmp_path, quick=True)
    files = {p.name for p in tmp_path.iterdir()}
    assert files == {"text_results.json", "text_results.csv", "text_matched.csv", "text_ppl.png", "text.md"}
    assert json.loads((tmp_path / "text_results.json").read_text())["baseline"]["tokens_scored"] == 95
    rows = {r["label"]: r for r in res["rows"]}
    assert set(rows) == {"octopus-2b", "turboquant-2b", "turboquant-2.5b"}
    assert rows["turboquant-2.5b"]["codec_bits"] == rows["octopus-2b"]["codec_bits"] == 2.75
    # 96 tokens: 64 quantized, 32 in the window; 28 of 30 layers' keys quantized, all values
    assert 2.75 < rows["turboquant-2.5b"]["effective_bits"] < 16
    assert rows["turboquant-2b"]["ppl"] > res["baseline"]["ppl"]
    assert "matched" in (tmp_path / "text.md").read_text()
