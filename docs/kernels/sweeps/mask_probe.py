import torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
torch.manual_seed(0)
for nkv in (56, 64):
  q=torch.randn(1,4,40,64,device='cuda',dtype=torch.float16); k=torch.randn(1,2,nkv,64,device='cuda',dtype=torch.float16); v=torch.randn_like(k)
  ref=F.scaled_dot_product_attention(q.float(),k.float(),v.float(),attn_mask=None,enable_gqa=True)
  for mdt in (torch.float32, torch.float16):
    m=torch.randn(1,4,40,nkv,device='cuda').to(mdt)
    ref=F.scaled_dot_product_attention(q.float(),k.float(),v.float(),attn_mask=m.float(),enable_gqa=True)
    for b in (SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
      try:
        with sdpa_kernel([b]):
          o=F.scaled_dot_product_attention(q,k,v,attn_mask=m,enable_gqa=True)
        print(nkv, mdt, b, 'nan' if o.isnan().any() else f'err {(o.float()-ref).abs().max().item():.3g}')
      except Exception as e: print(nkv, mdt, b, 'ERR', str(e)[:80])
    try:
      with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH], set_priority=True):
        o=F.scaled_dot_product_attention(q,k,v,attn_mask=m,enable_gqa=True)
      print(nkv, mdt, 'priority', 'nan' if o.isnan().any() else 'ok')
    except Exception as e: print('prio ERR', str(e)[:80])
