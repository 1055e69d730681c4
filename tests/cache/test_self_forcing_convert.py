"""Original Self-Forcing / CausVid (Wan2.1 naming) checkpoints -> diffusers WanTransformer3DModel."""

import pytest
import torch

from octopus_diffusers.pipelines import self_forcing_convert as conv
from octopus_diffusers.pipelines.tiny import _tiny_wan_transformer


@pytest.fixture(scope="module")
def tiny():
    return _tiny_wan_transformer(attention_head_dim=32).eval()


def _original(tiny, prefix="model."):
    return conv.to_original_state_dict(tiny.state_dict(), prefix=prefix)


def test_synthetic_original_checkpoint_round_trips(tiny, tmp_path):
    original = _original(tiny)
    # the original names, as in the Wan repository
    for key in ("model.blocks.1.self_attn.q.weight", "model.blocks.0.cross_attn.norm_k.weight",
                "model.blocks.0.ffn.2.bias", "model.blocks.0.modulation", "model.patch_embedding.weight",
                "model.text_embedding.2.weight", "model.time_embedding.0.bias", "model.time_projection.1.weight",
                "model.head.head.weight", "model.head.modulation", "model.blocks.1.norm3.weight"):
        assert key in original, key
    path = tmp_path / "self_forcing.pt"
    torch.save({"generator": {k: v * 0 for k, v in original.items()}, "generator_ema": original}, path)
    model = conv.build_transformer(conv.load_original_checkpoint(path), head_dim=32, rope_max_seq_len=32)
    assert model.config.num_layers == 2 and model.config.num_attention_heads == 2
    for k, v in tiny.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    x = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500.0])
    with torch.no_grad():
        assert torch.equal(model(x, t, text, return_dict=False)[0], tiny(x, t, text, return_dict=False)[0])
    # back to original names: the same keys and tensors
    again = conv.to_original_state_dict(model.state_dict(), prefix="model.")
    assert again.keys() == original.keys() and all(torch.equal(again[k], original[k]) for k in original)


def test_converter_command_writes_a_diffusers_folder(tiny, tmp_path):
    from diffusers import WanTransformer3DModel
    from safetensors.torch import save_file

    ckpt = tmp_path / "causvid.safetensors"
    save_file({k: v.contiguous() for k, v in _original(tiny, prefix="").items()}, str(ckpt))
    assert conv.main([str(ckpt), str(tmp_path / "out"), "--head-dim", "32"]) == 0
    loaded = WanTransformer3DModel.from_pretrained(tmp_path / "out")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in tiny.state_dict().items())


def test_strict_errors_name_the_key(tiny):
    original = _original(tiny)
    with pytest.raises(ValueError, match="unknown key 'blocks.0.cross_attn.k_img.weight'"):
        conv.build_transformer({**original, "model.blocks.0.cross_attn.k_img.weight": torch.zeros(1)}, head_dim=32)
    missing = dict(original)
    del missing["model.blocks.1.self_attn.o.bias"]
    with pytest.raises(ValueError, match="blocks.1.attn1.to_out.0.bias.*'blocks.1.self_attn.o.bias'"):
        conv.build_transformer(missing, head_dim=32)
    bad = dict(original)
    bad["model.blocks.0.ffn.2.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="'blocks.0.ffn.2.weight' has shape \\(3, 3\\)"):
        conv.build_transformer(bad, head_dim=32)
    with pytest.raises(ValueError, match="not a multiple of head_dim 48"):
        conv.build_transformer(original, head_dim=48)
    with pytest.raises(ValueError, match="no entry 'ema'"):
        conv.unwrap_checkpoint({"generator": original}, which="ema")
