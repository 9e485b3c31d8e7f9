"""One prefill and one decode launch of the triton kernels, for ncu.

ncu --clock-control none -k regex:"_fwd_kernel|_paged_kernel" -c 2 \
    --section SpeedOfLight --section Occupancy --section LaunchStats \
    python3 benchmarks/profile_one.py
"""
import torch

from anyattn.kernels.triton_paged import paged_attention_forward
from anyattn.kernels.triton_prefill import flash_attention_forward

dev = "cuda"
q = torch.randn(1, 16384, 16, 128, device=dev, dtype=torch.bfloat16)
k = torch.randn_like(q)
v = torch.randn_like(q)
out = torch.empty_like(q)
flash_attention_forward(q, k, v, out, None, scale=128 ** -0.5)
B, L, page = 16, 4096, 16
kc = torch.randn(B * L // page, page, 8, 128, device=dev, dtype=torch.bfloat16)
vc = torch.randn_like(kc)
bt = torch.randperm(B * L // page, device=dev).view(B, L // page).int()
su = torch.full((B,), L, device=dev, dtype=torch.int32)
qd = torch.randn(B, 32, 128, device=dev, dtype=torch.bfloat16)
od = torch.empty_like(qd)
paged_attention_forward(qd, kc, vc, bt, su, od, None, max_seqlen_k=L, scale=128 ** -0.5)
torch.cuda.synchronize()
