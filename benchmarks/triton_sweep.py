"""Device script: correctness spot-checks + config sweep for the Triton kernels.

PYTHONPATH=. python3 benchmarks/triton_sweep.py [--quick] [--out DIR]
Prints a short table last; writes a JSON log to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "kernels"))
from _attn_ref import ref_dense, ref_paged, ref_varlen  # noqa: E402

from anyattn.kernels.triton_paged import paged_attention_forward  # noqa: E402
from anyattn.kernels.triton_prefill import flash_attention_forward  # noqa: E402

import triton  # noqa: E402

dev = torch.device("cuda")
LOG = {"checks": [], "prefill": [], "decode": []}


def rel(a, b):
    a = a.double().cpu()
    b = b.double().cpu()
    if torch.isnan(a).any():
        return float("nan")
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check(name, err, tol):
    ok = err == err and err < tol
    LOG["checks"].append(dict(name=name, err=err, ok=ok))
    print(f"[{'ok' if ok else 'FAIL'}] {name}: {err:.2e}", flush=True)
    return ok


def correctness():
    torch.manual_seed(1)
    tol = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 1e-4}
    ci = 0
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for (B, Sq, Sk, Hq, Hkv, D, Dv, kw) in [
            (2, 257, 257, 4, 2, 128, 128, {}),
            (2, 300, 513, 4, 1, 64, 64, dict(causal=True)),
            (1, 513, 200, 4, 4, 80, 80, dict(causal=True)),
            (2, 333, 333, 8, 2, 96, 96, dict(window=(64, 16), softcap=20.0)),
            (1, 250, 390, 4, 2, 40, 40, dict(causal=True, window=(50, -1), sinks=True, alibi=True)),
            (1, 129, 129, 2, 1, 256, 256, dict(causal=True)),
            (1, 200, 300, 4, 2, 192, 128, dict(causal=True, sinks=True)),
            (1, 190, 190, 4, 2, 112, 112, {}),
            (1, 190, 190, 4, 2, 160, 160, dict(causal=True)),
        ]:
            kw = dict(kw)
            sl = torch.rand(Hq, device=dev) * 0.5 if kw.pop("alibi", False) else None
            sk = torch.randn(Hq, device=dev) if kw.pop("sinks", False) else None
            q = torch.randn(B, Sq, Hq, D, device=dev, dtype=dtype)
            # non-contiguous k/v: (B,Hkv,Sk,D) storage viewed as (B,Sk,Hkv,D)
            k = torch.randn(B, Hkv, Sk, D, device=dev, dtype=dtype).transpose(1, 2)
            v = torch.randn(B, Sk, Hkv, Dv + 8, device=dev, dtype=dtype)[..., :Dv]
            out = torch.full((B, Sq, Hq, Dv), float("nan"), device=dev, dtype=dtype)
            lse = torch.full((B, Hq, Sq), float("nan"), device=dev)
            ci = (ci + 1) % 4
            cfg = [None, dict(TMA=False), dict(TMA=False, KNAT=True), dict(PIPE=True)][ci]
            flash_attention_forward(q, k, v, out, lse, scale=1 / math.sqrt(D), alibi_slopes=sl,
                                    sinks=sk, config=cfg, **kw)
            ro, rl = ref_dense(q.cpu(), k.cpu(), v.cpu(), scale=1 / math.sqrt(D),
                               slopes=None if sl is None else sl.cpu(),
                               sinks=None if sk is None else sk.cpu(), **kw)
            e = max(rel(out, ro), rel(torch.where(torch.isinf(rl), 0, lse.double().cpu()),
                                      torch.where(torch.isinf(rl), 0, rl)) * 0.1)
            check(f"dense {dtype} B{B} {Sq}x{Sk} H{Hq}/{Hkv} D{D}/{Dv} {kw} alibi={sl is not None}"
                  f" sinks={sk is not None} cfg={cfg}", e, tol[dtype])
        # varlen with empty and length-1 sequences
        lq = [0, 1, 130, 77, 1, 300]
        lk = [5, 1, 200, 77, 0, 300]
        cu_q = torch.tensor([0] + lq).cumsum(0).int()
        cu_k = torch.tensor([0] + lk).cumsum(0).int()
        for kw in (dict(causal=True), dict(window=(20, 5)), {}):
            q = torch.randn(int(cu_q[-1]), 8, 128, device=dev, dtype=dtype)
            k = torch.randn(int(cu_k[-1]), 2, 128, device=dev, dtype=dtype)
            v = torch.randn(int(cu_k[-1]), 2, 128, device=dev, dtype=dtype)
            out = torch.full_like(q, float("nan"))
            lse = torch.full((8, q.shape[0]), float("nan"), device=dev)
            flash_attention_forward(q, k, v, out, lse, scale=0.1, cu_seqlens_q=cu_q.to(dev),
                                    cu_seqlens_k=cu_k.to(dev), max_seqlen_q=max(lq),
                                    max_seqlen_k=max(lk), **kw)
            ro, rl = ref_varlen(q.cpu(), k.cpu(), v.cpu(), cu_q, cu_k, scale=0.1, **kw)
            check(f"varlen {dtype} {kw}", rel(out, ro), tol[dtype])
        # paged
        for page in (16, 64, 256):
            for (lens, qlens, kw, S) in [
                ([1000, 1, 0, 517], None, {}, None),
                ([1000, 1, 0, 517], None, dict(sinks=True), 7),
                ([900, 35, 600], [5, 35, 1], dict(causal=True), None),
                ([900, 35, 600], [5, 35, 1], dict(causal=True, window=(100, 0), softcap=30.0), 3),
            ]:
                kw = dict(kw)
                sk = torch.randn(32, device=dev) if kw.pop("sinks", False) else None
                B = len(lens)
                nbp = max(1, max(math.ceil(n / page) for n in lens))
                nblk = B * nbp + 5
                kc = torch.randn(nblk, page, 8, 128, device=dev, dtype=dtype)
                vc = torch.randn(nblk, page, 8, 128, device=dev, dtype=dtype)
                bt = torch.randperm(nblk)[: B * nbp].view(B, nbp).int().to(dev)
                su = torch.tensor(lens, dtype=torch.int32, device=dev)
                if qlens is None:
                    cu, T, msq = None, B, 1
                else:
                    cu = torch.tensor([0] + qlens).cumsum(0).int().to(dev)
                    T, msq = int(sum(qlens)), max(qlens)
                q = torch.randn(T, 32, 128, device=dev, dtype=dtype)
                out = torch.full_like(q, float("nan"))
                lse = torch.full((32, T), float("nan"), device=dev)
                paged_attention_forward(q, kc, vc, bt, su, out, lse, cu_seqlens_q=cu,
                                        max_seqlen_q=msq, max_seqlen_k=max(lens), scale=0.09,
                                        sinks=sk, num_splits=S, **kw)
                ro, rl = ref_paged(q.cpu(), kc.cpu(), vc.cpu(), bt.cpu(), su.cpu(),
                                   None if cu is None else cu.cpu(), scale=0.09,
                                   sinks=None if sk is None else sk.cpu(), **kw)
                check(f"paged {dtype} page{page} {lens} {qlens} {kw} S={S}", rel(out, ro),
                      tol[dtype])


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def prefill_sweep(quick):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    P = dict(PIPE=True)
    cfgs_by_d = {
        128: [dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3),
              dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, **P),
              dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2, **P),
              dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, **P),
              dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=4, **P)],
        64: [dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3),
             dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3, **P),
             dict(BLOCK_M=128, BLOCK_N=128, num_warps=4, num_stages=3, **P),
             dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, **P),
             dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, **P)],
        256: [dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2),
              dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2, **P)],
    }
    rows = []
    for D in (128, 64, 256):
        configs = cfgs_by_d[D]
        H = 2048 // D
        for S in ((4096,) if D == 256 else (4096, 16384)):
            B = 16384 // S
            q = torch.randn(B, S, H, D, device=dev, dtype=torch.bfloat16)
            k = torch.randn_like(q)
            v = torch.randn_like(q)
            out = torch.empty_like(q)
            qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
            for causal in (False, True):
                flops = 4 * B * H * S * S * D / (2 if causal else 1)
                res = {}
                for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION),
                                 ("flash", SDPBackend.FLASH_ATTENTION)):
                    try:
                        with sdpa_kernel(be):
                            ms = bench(lambda: F.scaled_dot_product_attention(qt, kt, vt,
                                                                              is_causal=causal))
                        res[name] = flops / ms * 1e-9
                    except Exception as e:  # noqa: BLE001
                        res[name] = None
                        print(name, "failed", repr(e)[:200])
                best = None
                for cfg in configs:
                    try:
                        t0 = time.time()
                        flash_attention_forward(q, k, v, out, None, scale=D ** -0.5,
                                                causal=causal, config=cfg)
                        torch.cuda.synchronize()
                        ct = time.time() - t0
                        ms = bench(lambda: flash_attention_forward(
                            q, k, v, out, None, scale=D ** -0.5, causal=causal, config=cfg))
                        tf = flops / ms * 1e-9
                    except Exception as e:  # noqa: BLE001
                        print("cfg failed", cfg, repr(e)[:300], flush=True)
                        continue
                    r = dict(D=D, S=S, causal=causal, cfg=cfg, tflops=tf, compile_s=ct, **res)
                    rows.append(r)
                    LOG["prefill"].append(r)
                    if best is None or tf > best["tflops"]:
                        best = r
                    print(f"D{D} S{S} causal={causal} {cfg} {tf:.0f} TF/s (compile {ct:.1f}s)",
                          flush=True)
                if best:
                    print(f"BEST D{D} S{S} c={causal}: triton {best['tflops']:.0f} cudnn "
                          f"{res['cudnn'] or 0:.0f} flash {res['flash'] or 0:.0f} {best['cfg']}",
                          flush=True)
    return rows


def decode_sweep(quick):
    x = torch.empty(2 * 1024**3 // 2, dtype=torch.bfloat16, device=dev)
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    copy_bw = 2 * x.numel() * 2 / ms * 1e-6
    print(f"copy bandwidth {copy_bw:.0f} GB/s (read+write)")
    del x, y
    LOG["copy_gbs"] = copy_bw
    shapes = [(1, 4096), (1, 32768), (16, 4096), (64, 2048), (128, 1024), (32, 8192)]
    Hq, Hkv, D = 32, 8, 128
    cfgs = [dict(BLOCK_N=bn, num_stages=st, num_warps=w, PREFETCH=pf)
            for pf in (True, False) for (bn, st, w) in ((64, 2, 4), (64, 3, 2), (64, 3, 4),
                                                          (128, 2, 4))]
    splits = ((2, 4), (4, 4), (2, 32), (1, 4), (8, 4))
    from anyattn.bench import _graphed
    summary = []
    for page in (16, 128):
        for (B, L) in shapes:
            nbp = L // page
            nblk = B * nbp
            kc = torch.randn(nblk, page, Hkv, D, device=dev, dtype=torch.bfloat16)
            vc = torch.randn_like(kc)
            bt = torch.randperm(nblk, device=dev)[: B * nbp].view(B, nbp).int()
            su = torch.full((B,), L, dtype=torch.int32, device=dev)
            q = torch.randn(B, Hq, D, device=dev, dtype=torch.bfloat16)
            out = torch.empty_like(q)
            nbytes = 2 * B * L * Hkv * D * 2
            best = None
            for cfg in cfgs:
                done = set()
                for tgt, mst in splits:
                    from anyattn.kernels.triton_paged import paged_config
                    base = paged_config(batch=B, hkv=Hkv, group=Hq // Hkv, max_seqlen_q=1,
                                        max_seqlen_k=L, head_dim=D, head_dim_v=D,
                                        dtype=q.dtype, device=dev, page=page,
                                        config=dict(cfg, split_target=tgt, min_split_tiles=mst))
                    S = base["num_splits"]
                    if S in done:
                        continue
                    done.add(S)
                    try:
                        fn = (lambda: paged_attention_forward(
                            q, kc, vc, bt, su, out, None, max_seqlen_k=L, scale=D ** -0.5,
                            config=cfg, num_splits=S))
                        run, _ = _graphed(fn)
                        ms = bench(run)
                    except Exception as e:  # noqa: BLE001
                        print("decode cfg failed", cfg, repr(e)[:300])
                        continue
                    gbs = nbytes / ms * 1e-6
                    r = dict(page=page, B=B, L=L, cfg=cfg, splits=S, tgt=tgt, mst=mst, gbs=gbs,
                             frac=gbs / copy_bw)
                    LOG["decode"].append(r)
                    if best is None or gbs > best["gbs"]:
                        best = r
            summary.append(best)
            print(f"page{page} B{B} L{L}: {best['gbs']:.0f} GB/s ({best['frac']*100:.0f}% copy) "
                  f"{best['cfg']} S={best['splits']}", flush=True)
            del kc, vc
    return summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--skip", default="")
    a = ap.parse_args()
    print(torch.__version__, triton.__version__, torch.cuda.get_device_name(), flush=True)
    LOG["env"] = dict(torch=torch.__version__, triton=triton.__version__,
                      device=torch.cuda.get_device_name())
    if "check" not in a.skip:
        correctness()
    dec = decode_sweep(a.quick) if "decode" not in a.skip else []
    pre = prefill_sweep(a.quick) if "prefill" not in a.skip else []
    with open(os.path.join(a.out, "sweep.json"), "w") as f:
        json.dump(LOG, f, indent=1, default=str)
    print("==== summary ====")
    nf = sum(not c["ok"] for c in LOG["checks"])
    print(f"checks: {len(LOG['checks']) - nf} ok, {nf} failed")
    for c in LOG["checks"]:
        if not c["ok"]:
            print("FAIL", c["name"], c["err"])
    for r in dec:
        print(f"decode page{r['page']} B{r['B']} L{r['L']}: {r['gbs']:.0f} GB/s "
              f"{r['frac']*100:.0f}% {r['cfg']} S={r['splits']}")
    best = {}
    for r in pre:
        key = (r["D"], r["S"], r["causal"])
        if key not in best or r["tflops"] > best[key]["tflops"]:
            best[key] = r
    for key, r in best.items():
        print(f"prefill D{key[0]} S{key[1]} causal={key[2]}: {r['tflops']:.0f} TF/s "
              f"(cudnn {r['cudnn'] or 0:.0f}, flash {r['flash'] or 0:.0f}) {r['cfg']}")


if __name__ == "__main__":
    main()
