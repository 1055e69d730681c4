"""Profile one Wan-1.3B 480p step: fp16 vs quantize_attention (TurboQuant-3, OCTOPUS-3, self only)."""
import os, sys, torch
from torch.profiler import profile, ProfilerActivity
from diffusers import WanTransformer3DModel
from octopus_diffusers.processors import quantize_attention

OUT = os.environ.get("OUT", "/tmp")
torch.manual_seed(0)
model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128,
                              in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960,
                              num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                              eps=1e-6).to("cuda", torch.float16).eval()
latents = torch.randn(1, 16, 21, 60, 104, device="cuda", dtype=torch.float16)
text = torch.randn(1, 512, 4096, device="cuda", dtype=torch.float16)
t = torch.tensor([500], device="cuda")

def step():
    with torch.no_grad():
        return model(hidden_states=latents, timestep=t, encoder_hidden_states=text, return_dict=False)[0]

def prof(label):
    step(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        step(); torch.cuda.synchronize()
    tab = p.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
    open(f"{OUT}/profile_{label}.txt", "w").write(tab)
    ev = [e for e in p.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA or e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in p.key_averages()) / 1e3
    print(f"== {label}: summed kernel time {total:.1f} ms")
    rows = sorted(p.key_averages(), key=lambda e: -e.self_device_time_total)[:12]
    for e in rows:
        print(f"   {e.self_device_time_total / 1e3:8.2f} ms  {e.count:5d}x  {e.key[:90]}")

prof("fp16")
for codec in ("turboquant", "octopus"):
    with quantize_attention(model, codec=codec, bits=3, cross_attention=False):
        prof(codec + "3_self")
