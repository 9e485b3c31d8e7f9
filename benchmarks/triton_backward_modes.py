"""Backward-only timing of the Triton backward's modes next to torch SDPA's kernels (GPU).

    PYTHONPATH=. python3 benchmarks/triton_backward_modes.py [--quick] [--json out.json]

bf16, b·s = 16k tokens, h·d = 2048 (issue 10's table), full and causal. The Triton rows time
``flash_attention_backward`` alone (forward output and lse computed once beforehand) in four
modes: deterministic (default) / atomic dQ, pointer loads / TMA descriptors. SDPA rows time
``torch.autograd.grad`` of a retained graph (backward only). TFLOP/s count the backward as
2.5x the forward's 4·b·h·s²·d (halved when causal), the convention of issue 10's table.
Each Triton mode is also checked against the default mode's gradients (max relative error).

``--sweep``: d128 and d64 at 4k and 16k, full and causal, the default mode (deterministic, TMA)
with each candidate launch configuration of one kernel while the other keeps its table entry
(the two kernels run one after the other, so their times add), beside cuDNN and FA2 of the
same run; then the best pair per shape, deterministic and with atomic dQ. A candidate that does
not fit is shrunk by ``_launch``, and the row says which configuration ran. ``--head-dims 64``
sweeps one head dim.

``--profile``: one Triton backward (its three kernels) and one cuDNN backward at d128, 16k
tokens, full and causal, between cudaProfilerStart/Stop, for ncu's ``--profile-from-start off``
(the release script's ``profile`` stage): what the profile shows beside the speed gap.
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


def _runner(do, q, k, v, o, lse, causal, cfg=None):
    """The Triton backward alone for one configuration (None: the table's)."""
    d = q.shape[-1]
    return lambda: flash_attention_backward(do, q, k, v, o, lse, None, scale=d ** -0.5,
                                            causal=causal, config=cfg)


def _max_rel(got, want):
    return max(float((x.float() - y.float()).norm() / y.float().norm())
               for x, y in zip(got[:3], want[:3]))


def _inputs(b, s, h, d, causal, device="cuda", dtype=torch.bfloat16):
    """q, k, v, the forward's o and lse (by the Triton forward), and a random dO."""
    q, k, v = (torch.randn(b, s, h, d, device=device, dtype=dtype) for _ in range(3))
    o = torch.empty_like(q)
    lse = torch.empty(b, h, s, device=device, dtype=torch.float32)
    flash_attention_forward(q, k, v, o, lse, scale=d ** -0.5, causal=causal)
    return q, k, v, o, lse, torch.randn_like(o)


def _sdpa_backward(q, k, v, do, causal, backend):
    """SDPA's backward alone with one kernel (``backend``: an SDPBackend name), on a retained graph."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qt, kt, vt = (t.transpose(1, 2).detach().requires_grad_() for t in (q, k, v))
    with sdpa_kernel(getattr(SDPBackend, backend)):
        o = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
    dot = do.transpose(1, 2)
    return lambda: torch.autograd.grad(o, (qt, kt, vt), dot, retain_graph=True)


def _sdpa_ms(q, k, v, do, causal, backend):
    return triton.testing.do_bench(_sdpa_backward(q, k, v, do, causal, backend))


# (BLOCK_M, BLOCK_N, warps, stages) per head dim: dK/dV streams BLOCK_M query rows past BLOCK_N
# resident keys, dQ streams BLOCK_N keys past BLOCK_M resident query rows; the first entry of
# each list is the table's entry when the candidates were written
SWEEP = {
    128: {"dkdv": [(64, 128, 8, 2), (32, 64, 8, 2), (64, 64, 4, 3), (32, 128, 8, 2),
                   (64, 128, 8, 3), (128, 128, 8, 2)],
          "dq": [(64, 128, 4, 3), (128, 64, 8, 2), (64, 128, 8, 2), (128, 128, 8, 2)]},
    64: {"dkdv": [(64, 128, 8, 3), (64, 64, 4, 3), (64, 128, 4, 3), (64, 128, 8, 2),
                  (128, 128, 8, 2), (32, 128, 4, 3)],
         "dq": [(128, 128, 8, 3), (64, 128, 4, 3), (128, 64, 4, 3), (64, 64, 4, 3)]},
}


def sweep(head_dims=tuple(SWEEP)):
    from anyattn.kernels import triton_backward as tb

    table = []
    for d in head_dims:
        cands_of = SWEEP[d]
        h = 2048 // d
        for s in (4096, 16384):
            b = 16384 // s
            for causal in (False, True):
                table.append(_sweep_shape(tb, cands_of, b, s, h, d, causal))
    print("\nbackward TFLOP/s (bf16, H·D = 2048): table config, best pair (deterministic; atomic dQ), "
          "cuDNN, FA2; ratios vs cuDNN")
    for shape, t0, t1, ta, kd, dq, cu, fa in table:
        print(f"{shape:22s} table {t0:5.0f} ({t0 / cu:.2f})  best {t1:5.0f} ({t1 / cu:.2f}; atomic "
              f"{ta:5.0f}) dkdv={kd} dq={dq}  cudnn {cu:5.0f}  fa2 {fa:5.0f}")


def _sweep_shape(tb, cands_of, b, s, h, d, causal, device="cuda", dtype=torch.bfloat16):
    """One shape: each kernel's candidates with the other kernel at its table entry, then the
    best pair, deterministic and with atomic dQ."""
    q, k, v, o, lse, do = _inputs(b, s, h, d, causal, device, dtype)
    shape = f"d{d} s{s} b{b} {'causal' if causal else 'full'}"
    base_cfg = tb.backward_config(d, d, q.dtype, q.device, tma=True)
    anchors = {be: _tflops(_sdpa_ms(q, k, v, do, causal, be), b, h, s, d, causal)
               for be in ("CUDNN_ATTENTION", "FLASH_ATTENTION")}
    ref = _runner(do, q, k, v, o, lse, causal)()
    best = {}
    for kern, cands in cands_of.items():
        for cand in cands:
            run = _runner(do, q, k, v, o, lse, causal, dict(base_cfg, **{kern: cand}))
            try:
                err = _max_rel(run(), ref)
                tf = _tflops(triton.testing.do_bench(run), b, h, s, d, causal)
                ran = [c for kk, c in tb._FITTED.items() if kk[0] == kern and kk[-1] == tuple(cand)]
                note = f" (ran {ran[0]})" if ran and tuple(ran[0]) != tuple(cand) else ""
                row = f"{tf:6.0f} TFLOP/s  err {err:.1e}{note}"
                if err < 1e-2 and tf > best.get(kern, (0, None))[0]:
                    best[kern] = (tf, cand)
            except Exception as exc:  # noqa: BLE001 - report and go on
                row = f"ERR {type(exc).__name__}: {str(exc)[:120]}"
            print(f"{shape}  {kern:4s} {str(cand):18s} {row}", flush=True)
    pair = dict(base_cfg, dkdv=best.get("dkdv", (0, base_cfg["dkdv"]))[1],
                dq=best.get("dq", (0, base_cfg["dq"]))[1])
    timed = [_tflops(triton.testing.do_bench(_runner(do, q, k, v, o, lse, causal, cfg)), b, h, s, d, causal)
             for cfg in (None, pair, dict(pair, deterministic=False))]
    del q, k, v, o, lse, do, ref
    torch.cuda.empty_cache()
    return (shape, *timed, pair["dkdv"], pair["dq"], anchors["CUDNN_ATTENTION"],
            anchors["FLASH_ATTENTION"])


def profile_launches(s=16384, d=128):
    """Warm every kernel first (compiles, cuDNN's plan), then one profiled launch of each."""
    h = 2048 // d
    for causal in (False, True):
        q, k, v, o, lse, do = _inputs(1, s, h, d, causal)
        run = _runner(do, q, k, v, o, lse, causal)
        cudnn = _sdpa_backward(q, k, v, do, causal, "CUDNN_ATTENTION")
        run(), cudnn()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        run(), cudnn()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()
        print(f"profiled d{d} s{s} {'causal' if causal else 'full'}: triton backward, cuDNN backward", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="d128 at 4k and 16k only")
    ap.add_argument("--sweep", action="store_true", help="launch configurations at d128 and d64")
    ap.add_argument("--head-dims", default="128,64", help="--sweep's head dims (of 128, 64)")
    ap.add_argument("--profile", action="store_true", help="one launch of each kernel, for ncu")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.sweep:
        sweep(tuple(int(x) for x in a.head_dims.split(",")))
        return
    if a.profile:
        profile_launches()
        return
    dev = "cuda"
    rows = []
    dims = [128] if a.quick else [64, 128]
    seqs = [4096, 16384] if a.quick else [1024, 4096, 16384]
    for d in dims:
        h = 2048 // d
        for s in seqs:
            b = 16384 // s
            for causal in (False, True):
                q, k, v, o, lse, do = _inputs(b, s, h, d, causal, dev)
                base = None
                res = dict(d=d, s=s, b=b, h=h, causal=causal)
                for name, cfg in MODES.items():
                    run = _runner(do, q, k, v, o, lse, causal, cfg)
                    try:
                        g = run()
                        if base is None:
                            base = g
                        err = _max_rel(g, base)
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
