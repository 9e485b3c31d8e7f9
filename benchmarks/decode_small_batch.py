"""Split-count / config sweep for small-batch paged decode (graph-captured, median of do_bench).

PYTHONPATH=. python3 benchmarks/decode_small_batch.py
"""
import torch
import triton

from anyattn.bench import _graphed, copy_bandwidth
from anyattn.kernels.triton_paged import paged_attention_forward

dev = "cuda"
copy = copy_bandwidth(dev, 100)
print(f"copy {copy:.0f} GB/s")
hq, hkv, d = 32, 8, 128
for page in (16, 128):
    for b, ctx in ((1, 4096), (1, 32768), (4, 8192)):
        nbp = ctx // page
        kc = torch.randn(b * nbp, page, hkv, d, device=dev, dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        bt = torch.randperm(b * nbp, device=dev).view(b, nbp).int()
        su = torch.full((b,), ctx, device=dev, dtype=torch.int32)
        q = torch.randn(b, hq, d, device=dev, dtype=torch.bfloat16)
        out = torch.empty_like(q)
        nbytes = 2 * b * ctx * hkv * d * 2
        res = []
        for cfg in (dict(BLOCK_N=64, num_stages=3, num_warps=4, PREFETCH=True),
                    dict(BLOCK_N=64, num_stages=3, num_warps=2, PREFETCH=False),
                    dict(BLOCK_N=128, num_stages=2, num_warps=4, PREFETCH=True)):
            for S in (8, 16, 33, 66):
                fn = (lambda: paged_attention_forward(q, kc, vc, bt, su, out, None,
                                                      max_seqlen_k=ctx, scale=d ** -0.5,
                                                      config=cfg, num_splits=S))
                run, _ = _graphed(fn)
                ms = triton.testing.do_bench(run, warmup=25, rep=100, return_mode="median")
                res.append((nbytes / ms * 1e-6 / copy, S, cfg))
        res.sort(key=lambda r: -r[0])
        print(f"page{page} B{b} ctx{ctx}: " + "  ".join(
            f"{r[0]*100:.0f}%:S{r[1]}/{r[2]['BLOCK_N']}/{r[2]['num_warps']}/"
            f"{'P' if r[2]['PREFETCH'] else 'n'}" for r in res[:6]), flush=True)
        del kc, vc
