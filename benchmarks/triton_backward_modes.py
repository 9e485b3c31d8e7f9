"""Backward-only timing of the Triton backward's modes next to torch SDPA's kernels (GPU).

    PYTHONPATH=. python3 benchmarks/triton_backward_modes.py [--quick] [--json out.json]

bf16, b·s = 16k tokens, h·d = 2048 (issue 10's table), full and causal. The Triton rows time
``flash_attention_backward`` alone (forward output and lse computed once beforehand) in four
modes: deterministic (default) / atomic dQ, pointer loads / TMA descriptors. SDPA rows time
``torch.autograd.grad`` of a retained graph (backward only). TFLOP/s count the backward as
2.5x the forward's 4·b·h·s²·d (halved when causal), the convention of issue 10's table.
Each Triton mode is also checked against the default mode's gradients (max relative error).
"""

from __future__ import annotations

import argparse
import json

import torch
import triton.testing

from anyattn.kernels.triton_backward import flash_attention_backward
from anyattn.kernels.triton_prefill import flash_attention_forward

MODES = {
    "triton det ptr": dict(deterministic=True, TMA=False),
    "triton det tma": dict(deterministic=True, TMA=True),
    "triton atomic ptr": dict(deterministic=False, TMA=False),
    "triton atomic tma": dict(deterministic=False, TMA=True),
}


def _tflops(ms, b, h, s, d, causal):
    f = 2.5 * 4 * b * h * s * s * d * (0.5 if causal else 1.0)
    return f / (ms * 1e-3) / 1e12


def _sdpa_ms(q, k, v, do, causal, backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qt, kt, vt = (t.transpose(1, 2).detach().requires_grad_() for t in (q, k, v))
    with sdpa_kernel(getattr(SDPBackend, backend)):
        o = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
    dot = do.transpose(1, 2)
    return triton.testing.do_bench(
        lambda: torch.autograd.grad(o, (qt, kt, vt), dot, retain_graph=True))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="d128 at 4k and 16k only")
    ap.add_argument("--json")
    a = ap.parse_args()
    dev = "cuda"
    rows = []
    dims = [128] if a.quick else [64, 128]
    seqs = [4096, 16384] if a.quick else [1024, 4096, 16384]
    for d in dims:
        h = 2048 // d
        for s in seqs:
            b = 16384 // s
            for causal in (False, True):
                q, k, v = (torch.randn(b, s, h, d, device=dev, dtype=torch.bfloat16)
                           for _ in range(3))
                o = torch.empty_like(q)
                lse = torch.empty(b, h, s, device=dev, dtype=torch.float32)
                flash_attention_forward(q, k, v, o, lse, scale=d ** -0.5, causal=causal)
                do = torch.randn_like(o)
                base = None
                res = dict(d=d, s=s, b=b, h=h, causal=causal)
                for name, cfg in MODES.items():
                    def run(cfg=cfg):
                        return flash_attention_backward(do, q, k, v, o, lse, None,
                                                        scale=d ** -0.5, causal=causal,
                                                        config=cfg)
                    try:
                        g = run()
                        if base is None:
                            base = g
                        err = max(float((x.float() - y.float()).norm() / y.float().norm())
                                  for x, y in zip(g[:3], base[:3]))
                        ms = triton.testing.do_bench(run)
                        res[name] = dict(ms=ms, tflops=_tflops(ms, b, h, s, d, causal),
                                         rel_err_vs_default=err)
                    except Exception as exc:  # noqa: BLE001 - report and go on
                        res[name] = dict(error=f"{type(exc).__name__}: {str(exc)[:200]}")
                for be in ("CUDNN_ATTENTION", "FLASH_ATTENTION"):
                    try:
                        ms = _sdpa_ms(q, k, v, do, causal, be)
                        res[be.lower()] = dict(ms=ms, tflops=_tflops(ms, b, h, s, d, causal))
                    except Exception as exc:  # noqa: BLE001
                        res[be.lower()] = dict(error=f"{type(exc).__name__}: {str(exc)[:200]}")
                rows.append(res)
                cells = []
                for key, val in res.items():
                    if isinstance(val, dict):
                        cells.append(f"{key}={val['tflops']:.0f}" if "tflops" in val
                                     else f"{key}=ERR({val['error'][:60]})")
                print(f"d{d} s{s} b{b} {'causal' if causal else 'full'}: " + "  ".join(cells),
                      flush=True)
                del q, k, v, o, lse, do, base
                torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
