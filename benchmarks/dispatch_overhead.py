"""Host overhead of anyattn.attention over calling the chosen kernel directly (tiny shapes).

    python benchmarks/dispatch_overhead.py [--device cuda]

Tiny shapes make the kernel cheap, so the difference is the Python dispatch: validation, the
request signature, the cached decision lookup and the adapter. Median of several rounds.
"""

import argparse
import statistics
import time

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def per_call_us(fn, n, rounds=7):
    for _ in range(50):
        fn()
    samples = []
    for _ in range(rounds):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(samples)


def main():
    import anyattn
    from anyattn import request, selector
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    q = torch.randn(1, 16, 4, 64, device=args.device, dtype=dtype)
    k, v = torch.randn_like(q), torch.randn_like(q)
    chosen = anyattn.explain(q, k, v, causal=True).chosen
    kernel = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
              "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION, "sdpa_math": SDPBackend.MATH}.get(chosen)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def raw():
        return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)

    def raw_pinned():
        with sdpa_kernel(kernel):
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)

    def dispatch_only():
        req = request.dense_request(q, k, v, causal=True, scale=None, window=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, sinks=None, return_lse=False, out=None)[0]
        return selector.select(req, None)

    def full():
        return anyattn.attention(q, k, v, causal=True)

    rows = [("torch SDPA, torch's own pick", per_call_us(raw, args.n))]
    if kernel is not None:
        rows.append((f"torch SDPA pinned to {chosen} (what the adapter runs)", per_call_us(raw_pinned, args.n)))
    rows.append(("anyattn validation + cached selection only", per_call_us(dispatch_only, args.n)))
    rows.append((f"anyattn.attention -> {chosen}", per_call_us(full, args.n)))
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device: {args.device} ({name}), torch {torch.__version__}, q {tuple(q.shape)} {dtype}")
    for label, us in rows:
        print(f"  {label:55s} {us:8.1f} us/call")
    base = rows[1][1] if kernel is not None else rows[0][1]
    print(f"  overhead of anyattn over the pinned kernel: {rows[-1][1] - base:+.1f} us/call")


if __name__ == "__main__":
    main()
