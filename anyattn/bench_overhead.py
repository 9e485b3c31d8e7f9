"""``anyattn bench --only overhead``: host cost per call, and eager vs CUDA-graph decode bandwidth.

Host µs/call: ``time.perf_counter`` over ``--calls`` (default 300) calls without synchronising,
after a warm-up, median of ``--repeats`` rounds (the GPU queue is drained between rounds, not
inside them). Shapes are tiny so the kernels cost less than the host work. Rows, each beside the
same run's direct call of what anyattn runs:

* dense tiny bf16 q/k/v (1, 16, 4, 64): ``F.scaled_dot_product_attention`` direct (torch's pick,
  and pinned to cuDNN -- the pin entered once, outside the timed loop), ``anyattn.attention``
  automatic, anyattn's own work alone (validation + cached selection), the chosen backend's
  method direct; ``anyattn.attention(backend="triton")``, the triton backend method,
  ``kernels.triton_prefill.flash_attention_forward`` direct, and the Triton launch alone
  (through its launch plan, and through ``kernel[grid](...)``);
* paged decode (GQA 32/8, d 128, bf16, context 4k, page 16) at batch 1, 16 and 64: the same
  ladder down to ``kernels.triton_paged.paged_attention_forward``.

Bandwidth: paged decode at batch x context 1x4k, 16x4k and 64x2k, K and V bytes read per call
over the wall time of ``--bw-calls`` back-to-back calls (eager, host cost included) and of as
many replays of one CUDA graph of the same call, beside the same run's device-to-device copy
bandwidth (bytes read + written). No L2 flush between calls, for either.

``--tiny``: a few calls per row (the CPU test; on CPU the GPU rows say why they are skipped).

``--profile``: also run ``anyattn.attention`` (automatic, and ``backend="triton"``) and the
triton paged decode (batch 16 x 4k) under cProfile and print each one's top functions by
``tottime`` in µs per call (cProfile inflates every Python frame; read the ranking, and the
``ncalls`` per call, not the absolute numbers).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def _parser():
    p = argparse.ArgumentParser(prog="anyattn bench --only overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--calls", type=int, default=300, help="calls per timed round (>= 300 for the record)")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds; the median is reported")
    p.add_argument("--bw-calls", type=int, default=200, help="calls per bandwidth measurement")
    p.add_argument("--tiny", action="store_true", help="a few calls per row (smoke test)")
    p.add_argument("--json", default=None, help="write the results as JSON to this file ('-': stdout)")
    p.add_argument("--profile", action="store_true",
                   help="also print cProfile's top functions by tottime for the anyattn calls")
    p.add_argument("--profile-top", type=int, default=15, help="functions per profile (--profile)")
    return p


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_us(fn, device, calls, repeats, warmup=20):
    """Median host µs per call of ``fn`` over ``repeats`` rounds of ``calls`` unsynchronised calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) / calls * 1e6)
        _sync(device)
    return statistics.median(samples)


class _Rows:
    def __init__(self, device, calls, repeats):
        self.rows = []
        self.device, self.calls, self.repeats = device, calls, repeats

    def add(self, group, label, fn, base=None, note=None):
        """Time ``fn`` (or record why it cannot run); ``base``: the label of this group's direct
        call that the row is compared with."""
        row = dict(group=group, label=label, us=None, note=note)
        try:
            row["us"] = host_us(fn, self.device, self.calls, self.repeats)
        except Exception as exc:  # noqa: BLE001 - an unavailable piece is a row with a reason
            row["note"] = f"{type(exc).__name__}: {str(exc)[:160]}"
        if base is not None:
            ref = next((r for r in self.rows if r["group"] == group and r["label"] == base), None)
            if ref is not None and ref["us"] is not None and row["us"] is not None:
                row["over"] = row["us"] - ref["us"]
                row["over_what"] = base
        self.rows.append(row)
        return row

    def skip(self, group, label, why):
        self.rows.append(dict(group=group, label=label, us=None, note=why))


def _capture_launches(cache):
    """Wrap ``cache.launch`` to keep the last (grid, args, options, device) it was given."""
    seen = []
    orig = cache.launch

    def spy(grid, args, options, device):
        seen[:] = [(grid, args, options, device)]
        return orig(grid, args, options, device)

    cache.launch = spy

    def restore():
        if vars(cache).get("launch") is spy:
            del cache.launch

    return seen, restore


def _launch_rows(rows, group, cache, call):
    """The Triton launch alone: the last launch of ``call`` replayed through the plan and
    through ``kernel[grid](...)`` (same arguments, same output buffers)."""
    seen, restore = _capture_launches(cache)
    try:
        call()
    finally:
        restore()
    if not seen:
        rows.skip(group, "triton launch only", "the call launched nothing")
        return
    grid, args, options, dev = seen[0]
    rows.add(group, "  triton launch through its plan", lambda: cache.launch(grid, args, options, dev),
             note=None if cache.enabled else f"plans off: {cache.reason}")
    kw = dict(options)
    rows.add(group, "  triton launch, kernel[grid](...)", lambda: cache.kernel[grid](*args, **kw))


def bench_dense(rows, device):
    import torch
    import torch.nn.functional as F

    import anyattn
    from anyattn import request, selector

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    group = f"dense (1,16,4,64) {str(dtype).replace('torch.', '')}"
    q = torch.randn(1, 16, 4, 64, device=device, dtype=dtype)
    k, v = torch.randn_like(q), torch.randn_like(q)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    rows.add(group, "F.sdpa direct, torch's pick", lambda: F.scaled_dot_product_attention(qt, kt, vt))
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def pinned_rows():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                rows.add(group, "F.sdpa direct, pinned to cuDNN",
                         lambda: F.scaled_dot_product_attention(qt, kt, vt))
        pinned_rows()
    chosen = anyattn.explain(q, k, v).chosen
    base = "F.sdpa direct, pinned to cuDNN" if chosen == "sdpa_cudnn" else None
    kernels = {"sdpa_flash": "FLASH_ATTENTION", "sdpa_efficient": "EFFICIENT_ATTENTION",
               "sdpa_math": "MATH"}
    if device.type == "cuda" and chosen in kernels:  # the SDPA kernel the adapter pins
        from torch.nn.attention import SDPBackend, sdpa_kernel

        base = f"F.sdpa direct, pinned to {chosen}"
        with sdpa_kernel(getattr(SDPBackend, kernels[chosen])):
            rows.add(group, base, lambda: F.scaled_dot_product_attention(qt, kt, vt))
    rows.add(group, f"anyattn.attention automatic (-> {chosen})", lambda: anyattn.attention(q, k, v),
             base=base)

    def own_work(backend=None):
        req = request.dense_request(q, k, v, causal=False, scale=None, window=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, sinks=None, return_lse=False, out=None)[0]
        return selector.select(req, backend)

    rows.add(group, "  anyattn's own work: validation + cached selection", own_work)
    b = own_work()
    rows.add(group, f"  {chosen} backend method direct",
             lambda: b.attention(q, k, v, causal=False, scale=0.125, window=(-1, -1), softcap=0.0,
                                 alibi_slopes=None, sinks=None, return_lse=False, out=None))
    if device.type != "cuda":
        rows.skip(group, "anyattn.attention(backend='triton')", "needs a CUDA GPU")
        return
    try:
        from anyattn.kernels import triton_prefill as P
    except Exception as exc:  # noqa: BLE001
        rows.skip(group, "anyattn.attention(backend='triton')", f"triton unavailable: {exc}")
        return
    out = torch.empty_like(q)
    direct = "flash_attention_forward direct"
    rows.add(group, direct, lambda: P.flash_attention_forward(q, k, v, out, scale=0.125))
    rows.add(group, "anyattn.attention(backend='triton')",
             lambda: anyattn.attention(q, k, v, backend="triton"), base=direct)
    rows.add(group, "  validation + cached selection (triton)", lambda: own_work("triton"))
    tb = own_work("triton")
    rows.add(group, "  triton backend method direct",
             lambda: tb.attention(q, k, v, causal=False, scale=0.125, window=(-1, -1), softcap=0.0,
                                  alibi_slopes=None, sinks=None, return_lse=False, out=None),
             base=direct)
    _launch_rows(rows, group, P._FWD, lambda: P.flash_attention_forward(q, k, v, out, scale=0.125))


def _paged_inputs(device, B, ctx, page=16, hq=32, hkv=8, d=128):
    import torch

    nbp = ctx // page
    kc = torch.randn(B * nbp, page, hkv, d, device=device, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    bt = torch.randperm(B * nbp, device=device).view(B, nbp).to(torch.int32)
    su = torch.full((B,), ctx, device=device, dtype=torch.int32)
    q = torch.randn(B, hq, d, device=device, dtype=torch.bfloat16)
    return q, kc, vc, bt, su


def bench_paged(rows, device):
    import torch

    import anyattn
    from anyattn import request, selector

    if device.type != "cuda":
        rows.skip("paged decode", "anyattn.paged_attention(backend='triton')", "needs a CUDA GPU")
        return
    from anyattn.kernels import triton_paged as G

    for B in (1, 16, 64):
        ctx = 4096
        group = f"paged decode {B}x4k GQA 32/8 d128"
        q, kc, vc, bt, su = _paged_inputs(device, B, ctx)
        out = torch.empty_like(q)
        scale = 128 ** -0.5
        direct = "paged_attention_forward direct"
        rows.add(group, direct, lambda: G.paged_attention_forward(q, kc, vc, bt, su, out, scale=scale,
                                                                  max_seqlen_k=ctx))
        rows.add(group, "anyattn.paged_attention(backend='triton')",
                 lambda: anyattn.paged_attention(q, kc, vc, bt, su, max_seqlen_k=ctx, backend="triton"),
                 base=direct)

        def own_work():
            req = request.paged_request(q, kc, vc, bt, su, cu_seqlens_q=None, max_seqlen_q=1,
                                        max_seqlen_k=ctx, causal=True, scale=None, window=(-1, -1),
                                        softcap=0.0, alibi_slopes=None, sinks=None, return_lse=False,
                                        out=None)[0]
            return selector.select(req, "triton")

        rows.add(group, "  validation + cached selection", own_work)
        tb = own_work()
        rows.add(group, "  triton backend method direct",
                 lambda: tb.paged(q, kc, vc, bt, su, cu_seqlens_q=None, max_seqlen_q=1,
                                  max_seqlen_k=ctx, causal=True, scale=scale, window=(-1, -1),
                                  softcap=0.0, alibi_slopes=None, sinks=None, return_lse=False,
                                  out=None), base=direct)
        _launch_rows(rows, group, G._PAGED,
                     lambda: G.paged_attention_forward(q, kc, vc, bt, su, out, scale=scale,
                                                       max_seqlen_k=ctx))
        del q, kc, vc, bt, su, out
        torch.cuda.empty_cache()


def profile_calls(fn, device, calls, top):
    """cProfile ``calls`` calls of ``fn`` (after a warm-up): the ``top`` functions by tottime,
    each as dict(function, ncalls per call, tottime and cumtime in µs per call)."""
    import cProfile
    import pstats

    for _ in range(20):
        fn()
    _sync(device)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    _sync(device)
    st = pstats.Stats(prof)
    rows = []
    for (file, line, name), (_, nc, tt, ct, _) in st.stats.items():
        where = name if file == "~" else f"{file.rsplit('/anyattn/', 1)[-1].rsplit('/', 1)[-1]}:{line}({name})"
        rows.append(dict(function=where, ncalls=nc / calls, tottime_us=tt / calls * 1e6,
                         cumtime_us=ct / calls * 1e6))
    rows.sort(key=lambda r: -r["tottime_us"])
    return rows[:top]


def bench_profiles(device, calls, top):
    """cProfile tables of the public calls (see ``--profile``): {label: rows}."""
    import torch

    import anyattn

    out = {}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q = torch.randn(1, 16, 4, 64, device=device, dtype=dtype)
    k, v = torch.randn_like(q), torch.randn_like(q)
    chosen = anyattn.explain(q, k, v).chosen
    todo = [(f"anyattn.attention automatic (-> {chosen}), dense (1,16,4,64)",
             lambda: anyattn.attention(q, k, v))]
    if device.type == "cuda":
        todo.append(("anyattn.attention(backend='triton'), dense (1,16,4,64)",
                     lambda: anyattn.attention(q, k, v, backend="triton")))
        pq, kc, vc, bt, su = _paged_inputs(device, 16, 4096)
        todo.append(("anyattn.paged_attention(backend='triton'), decode 16x4k",
                     lambda: anyattn.paged_attention(pq, kc, vc, bt, su, max_seqlen_k=4096,
                                                     backend="triton")))
    for label, fn in todo:
        try:
            out[label] = profile_calls(fn, device, calls, top)
        except Exception as exc:  # noqa: BLE001 - a failing piece is reported, not fatal
            out[label] = [dict(function=f"{type(exc).__name__}: {str(exc)[:160]}", ncalls=0,
                               tottime_us=0.0, cumtime_us=0.0)]
    return out


def _profile_tables(profiles):
    from rich.table import Table

    tables = []
    for label, rows in profiles.items():
        t = Table(title=f"cProfile, top by tottime: {label} (µs per call, profiler-inflated)")
        for c in ("function", "calls/call", "tottime µs", "cumtime µs"):
            t.add_column(c, justify="left" if c == "function" else "right")
        for r in rows:
            t.add_row(r["function"], f"{r['ncalls']:.1f}", f"{r['tottime_us']:.2f}",
                      f"{r['cumtime_us']:.2f}")
        tables.append(t)
    return tables


def _wall_gbs(fn, nbytes, n, device, repeats=3):
    fn()
    _sync(device)
    best = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(device)
        best.append(nbytes * n / (time.perf_counter() - t0) * 1e-9)
    return statistics.median(best)


def bench_bandwidth(device, n, reps_ms):
    import torch

    import anyattn

    from .bench import copy_bandwidth

    copy = copy_bandwidth(device, reps_ms)
    out = []
    for B, ctx in ((1, 4096), (16, 4096), (64, 2048)):
        q, kc, vc, bt, su = _paged_inputs(device, B, ctx)
        nbytes = 2 * B * ctx * 8 * 128 * 2
        o = torch.empty_like(q)

        def call():
            return anyattn.paged_attention(q, kc, vc, bt, su, max_seqlen_k=ctx, backend="triton", out=o)

        eager = _wall_gbs(call, nbytes, n, device)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            call()
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            call()
        graphed = _wall_gbs(g.replay, nbytes, n, device)
        out.append(dict(batch=B, context=ctx, eager_gbs=eager, graph_gbs=graphed,
                        eager_of_graph=eager / graphed, graph_of_copy=graphed / copy))
        del q, kc, vc, bt, su, o, g
        torch.cuda.empty_cache()
    return copy, out


def _tables(rows, bw, copy):
    from rich.table import Table

    t = Table(title="host µs per call (eager, no sync; median of rounds)")
    for c in ("case", "call", "µs/call", "over direct", "note"):
        t.add_column(c, justify="left" if c in ("case", "call", "note") else "right")
    last = None
    for r in rows:
        over = f"{r['over']:+.1f} vs {r['over_what']}" if r.get("over") is not None else ""
        t.add_row(r["group"] if r["group"] != last else "", r["label"],
                  f"{r['us']:.1f}" if r["us"] is not None else "-", over, r.get("note") or "")
        last = r["group"]
    tables = [t]
    if bw:
        b = Table(title=f"paged decode GB/s (K+V bytes read), triton; copy {copy:.0f} GB/s (read+write)")
        for c in ("batch x context", "eager GB/s", "CUDA graph GB/s", "eager / graph", "graph / copy"):
            b.add_column(c, justify="right")
        for r in bw:
            b.add_row(f"{r['batch']} x {r['context']}", f"{r['eager_gbs']:.0f}", f"{r['graph_gbs']:.0f}",
                      f"{r['eager_of_graph'] * 100:.0f}%", f"{r['graph_of_copy'] * 100:.0f}%")
        tables.append(b)
    return tables


def main(argv=None) -> int:
    import torch
    from rich.console import Console

    args = _parser().parse_args(argv)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("anyattn bench --only overhead: needs a CUDA GPU for --device cuda (none visible)",
              file=sys.stderr)
        return 2
    calls, repeats, bw_calls = args.calls, args.repeats, args.bw_calls
    if args.tiny:
        calls, repeats, bw_calls = 5, 2, 3
    t0 = time.perf_counter()
    rows = _Rows(dev, calls, repeats)
    bench_dense(rows, dev)
    bench_paged(rows, dev)
    copy, bw = (None, [])
    if dev.type == "cuda":
        copy, bw = bench_bandwidth(dev, bw_calls, 10 if args.tiny else 50)
    env = dict(device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
               torch=torch.__version__, calls=calls, repeats=repeats, seconds=None)
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        env["triton"] = None
    profiles = bench_profiles(dev, 20 if args.tiny else 2000, args.profile_top) if args.profile else {}
    env["seconds"] = time.perf_counter() - t0
    doc = dict(env=env, rows=rows.rows, copy_gbs=copy, bandwidth=bw, profile=profiles)
    if args.json:
        from .bench import write_json

        write_json(doc, args.json)
    console = Console(stderr=args.json == "-")
    if not console.is_terminal:
        console = Console(stderr=args.json == "-", width=200)
    console.print(f"{env['device']}  torch {env['torch']}  triton {env['triton']}  "
                  f"{calls} calls x {repeats} rounds  ({env['seconds']:.0f} s)")
    for t in _profile_tables(profiles) + _tables(rows.rows, bw, copy):
        console.print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
