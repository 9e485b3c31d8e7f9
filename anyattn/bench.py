"""``anyattn bench``: prefill and backward TFLOP/s and paged-decode GB/s, every backend side by side.

One process, one GPU. Prefill: b*s = 16k tokens, h*d = 2048, bf16, head dim 64 and 128, causal
and not, seqlen 512..16k; FLOPs = 4*b*h*sq*sk*d (halved for causal). Backward: the same shapes at
seqlen 1k..16k, forward + backward timed together, FLOPs = forward + 2.5 x forward (the
backward's usual count). Decode: (batch, context) = (1,4k) (1,32k) (16,4k) (64,2k) (128,1k)
(32,8k), GQA 32/8, head dim 128, KV block 16 and 128; bytes = the K and V bytes read. Each shape
runs on ``triton`` beside ``sdpa_cudnn``, ``sdpa_flash``, ``flex`` and every installed vendor
backend (flash_attn_4, flash_attn_3, flash_attn, flashinfer, xformers); decode baselines that
have no paged kernel of their own (sdpa_*) run on a contiguous KV of the same size, so their
bytes are the same. The same run's device-to-device copy bandwidth (bytes read + written) is the
decode yardstick. Times are medians of ``triton.testing.do_bench`` (L2 flushed between reps);
decode calls are captured in a CUDA graph where the backend allows it, so Python dispatch does
not count.

The ``auto`` column is what automatic selection picks for the shape (the static ranking, or the
measured winner when ``anyattn tune`` has run here), timed the same way; ``auto/best`` is its
throughput over the best single backend's: the goal is >= 0.98 on every row.

The first call of each triton kernel variant (compile + run) is reported as its cold-start time.
"""

from __future__ import annotations

import json
import sys
import time

PREFILL_SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)
BACKWARD_SEQLENS = (1024, 2048, 4096, 8192, 16384)
DECODE_SHAPES = ((1, 4096), (1, 32768), (16, 4096), (64, 2048), (128, 1024), (32, 8192))
BASELINES = ("flash_attn_4", "sdpa_cudnn", "sdpa_flash", "flex", "flash_attn_3", "flash_attn",
             "flashinfer", "xformers")
# Flex compiles its backward per shape (tens of seconds each): left out of the backward table so
# `anyattn bench` stays near 5 minutes; name it with --backends to include it.
BACKWARD_SKIP = ("flex",)
AUTO = "auto"


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="prefill TFLOP/s and decode GB/s per backend (GPU)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("prefill", "backward", "decode", "overhead"), default=None,
                   help="overhead: host µs per call and eager vs CUDA-graph decode (bench_overhead)")
    p.add_argument("--no-auto", action="store_true", help="skip the automatic-selection column")
    p.add_argument("--backends", default=None,
                   help="comma-separated backends to compare (default: triton + baselines)")
    p.add_argument("--seqlens", default=None, help="prefill seqlens, e.g. 4096,16384")
    p.add_argument("--head-dims", default="64,128")
    p.add_argument("--block-sizes", default="16,128")
    p.add_argument("--quick", action="store_true", help="seqlen 4k and 16k; decode batch>=16 and 1x32k")
    p.add_argument("--reps", type=int, default=100, help="do_bench rep time in ms")
    p.add_argument("--json", nargs="?", const="-", default=None,
                   help="write JSON to FILE (or stdout with no FILE)")
    p.add_argument("--device", default="cuda")
    p.set_defaults(func=main)


# ----------------------------------------------------------------------------------------------
def _bench(fn, reps, grad_to_none=None):
    import triton

    return triton.testing.do_bench(fn, warmup=25, rep=reps, grad_to_none=grad_to_none, return_mode="median")


def _graphed(fn):
    """Capture ``fn`` in a CUDA graph (after a warm-up); fall back to eager."""
    import torch

    fn()
    torch.cuda.synchronize()
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        torch.cuda.synchronize()
        return g.replay, True
    except Exception:  # noqa: BLE001 - some backends cannot be captured; time them eagerly
        torch.cuda.synchronize()
        return fn, False


def write_json(doc, dest: str) -> None:
    """``--json FILE`` writes ``doc`` there; ``--json -`` prints it."""
    text = json.dumps(doc, indent=2, default=str)
    if dest == "-":
        print(text)
    else:
        with open(dest, "w") as f:
            f.write(text)


def copy_bandwidth(device, reps) -> float:
    import torch

    x = torch.empty(1 << 30, dtype=torch.uint8, device=device)  # 1 GiB
    y = torch.empty_like(x)
    x.random_(0, 255)
    ms = _bench(lambda: y.copy_(x), reps)
    del x, y
    return 2 * (1 << 30) / ms * 1e-6  # GB/s, read + write


def _available(names, op, dtype, head_dim, device, block_size=None, gqa=1, causal=False, grad=False):
    from . import selector

    out = {}
    for n in names:
        try:
            d = selector.decide_for(op=op, dtype=dtype, head_dim=head_dim, head_dim_v=head_dim,
                                    causal=causal, gqa=gqa, window=None, softcap=False,
                                    alibi=False, sinks=False, lse=False, grad=grad,
                                    block_size=block_size, device=device, backend=n)
            out[n] = None if d.chosen else "; ".join(_reasons(d, n)) or "unavailable"
        except Exception as exc:  # noqa: BLE001
            out[n] = f"{type(exc).__name__}: {exc}"
    return out


def _reasons(decision, name):
    for c in getattr(decision, "candidates", []):
        if getattr(c, "name", None) == name:
            return list(getattr(c, "reasons", []) or [])
    return []


def _auto_name(explain_fn) -> str | None:
    """What automatic selection picks for this call (explain: nothing runs, nothing imported)."""
    try:
        return explain_fn().chosen
    except Exception:  # noqa: BLE001
        return None


def _time_row(row, fn, reps, grad_to_none=None, graph=False):
    """Time ``fn`` into ``row``: value-ready ms, first_call_s; a failure becomes the reason."""
    import torch

    try:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        run, graphed = _graphed(fn) if graph else (fn, False)
        ms = _bench(run, reps, grad_to_none)
        row.update(ms=ms, first_call_s=first)
        if graph:
            row["graphed"] = graphed
        return ms
    except Exception as exc:  # noqa: BLE001
        row.update(value=None, reason=f"{type(exc).__name__}: {str(exc)[:200]}")
        return None


def bench_prefill(args, names, rows, progress, task, grad=False):
    """Forward TFLOP/s (``grad=False``) or forward+backward TFLOP/s (``grad=True``) per backend."""
    import torch

    import anyattn

    dev = args.device
    default = BACKWARD_SEQLENS if grad else PREFILL_SEQLENS
    quick = (4096, 16384)
    seqlens = [int(s) for s in args.seqlens.split(",")] if args.seqlens else (quick if args.quick else default)
    head_dims = [int(d) for d in args.head_dims.split(",")]
    cols = names + ([] if args.no_auto else [AUTO])
    kind = "backward" if grad else "prefill"
    for d in head_dims:
        h = 2048 // d
        for s in seqlens:
            b = max(1, 16384 // s)
            q = torch.randn(b, s, h, d, device=dev, dtype=torch.bfloat16, requires_grad=grad)
            k = torch.randn(b, s, h, d, device=dev, dtype=torch.bfloat16, requires_grad=grad)
            v = torch.randn(b, s, h, d, device=dev, dtype=torch.bfloat16, requires_grad=grad)
            do = torch.randn(b, s, h, d, device=dev, dtype=torch.bfloat16) if grad else None
            for causal in (False, True):
                flops = 4 * b * h * s * s * d / (2 if causal else 1) * (3.5 if grad else 1.0)
                why = _available(names, "attention", "bf16", d, dev, causal=causal, grad=grad)
                for n in cols:
                    row = dict(kind=kind, head_dim=d, seqlen=s, batch=b, heads=h, causal=causal, backend=n,
                               unit="TFLOP/s")
                    be = None if n == AUTO else n
                    if n == AUTO:
                        row["chosen"] = _auto_name(lambda: anyattn.explain(q, k, v, causal=causal))
                    if why.get(n):
                        row.update(value=None, reason=why[n])
                    else:
                        if grad:
                            def fn(be=be):
                                anyattn.attention(q, k, v, causal=causal, backend=be).backward(do)
                        else:
                            def fn(be=be):
                                return anyattn.attention(q, k, v, causal=causal, backend=be)
                        ms = _time_row(row, fn, args.reps, [q, k, v] if grad else None)
                        if ms:
                            row["value"] = flops / ms * 1e-9
                    rows.append(row)
                    progress.advance(task)
            del q, k, v, do
            torch.cuda.empty_cache()


def bench_decode(args, names, rows, copy_gbs, progress, task):
    import torch

    import anyattn

    dev = args.device
    hq, hkv, d = 32, 8, 128
    shapes = DECODE_SHAPES if not args.quick else \
        tuple(x for x in DECODE_SHAPES if x[0] >= 16 or x[1] >= 32768)
    for page in [int(x) for x in args.block_sizes.split(",")]:
        for (b, ctx) in shapes:
            nbp = ctx // page
            nblk = b * nbp
            kc = torch.randn(nblk, page, hkv, d, device=dev, dtype=torch.bfloat16)
            vc = torch.randn_like(kc)
            bt = torch.randperm(nblk, device=dev)[: b * nbp].view(b, nbp).to(torch.int32)
            su = torch.full((b,), ctx, device=dev, dtype=torch.int32)
            q = torch.randn(b, hq, d, device=dev, dtype=torch.bfloat16)
            nbytes = 2 * b * ctx * hkv * d * 2
            why_paged = _available(names, "paged", "bf16", d, dev, block_size=page, gqa=hq // hkv)
            dense_kv = None
            for n in names + ([] if args.no_auto else [AUTO]):
                row = dict(kind="decode", batch=b, context=ctx, block_size=page, backend=n,
                           unit="GB/s")
                if n == AUTO:
                    row["chosen"] = _auto_name(lambda: anyattn.explain(q, kc, vc, bt, su, op="paged",
                                                                       max_seqlen_k=ctx))
                    row["layout"] = "paged"
                    fn = (lambda: anyattn.paged_attention(q, kc, vc, bt, su, max_seqlen_k=ctx))
                    ms = _time_row(row, fn, args.reps, graph=True)
                    if ms:
                        gbs = nbytes / ms * 1e-6
                        row.update(value=gbs, copy_fraction=gbs / copy_gbs)
                    rows.append(row)
                    progress.advance(task)
                    continue
                dense = n.startswith("sdpa")  # no paged kernel: time it on contiguous KV
                if dense:
                    if dense_kv is None:
                        dense_kv = (torch.randn(b, ctx, hkv, d, device=dev, dtype=torch.bfloat16),
                                    torch.randn(b, ctx, hkv, d, device=dev, dtype=torch.bfloat16))
                    why = _available([n], "attention", "bf16", d, dev, gqa=hq // hkv)[n]
                    q4 = q.view(b, 1, hq, d)
                    fn = (lambda n=n: anyattn.attention(q4, dense_kv[0], dense_kv[1], backend=n))
                    row["layout"] = "contiguous KV"
                else:
                    why = why_paged.get(n)
                    fn = (lambda n=n: anyattn.paged_attention(q, kc, vc, bt, su, max_seqlen_k=ctx,
                                                              backend=n))
                    row["layout"] = "paged"
                if why:
                    row.update(value=None, reason=why)
                else:
                    try:
                        t0 = time.perf_counter()
                        fn()
                        torch.cuda.synchronize()
                        first = time.perf_counter() - t0
                        run, graphed = _graphed(fn)
                        ms = _bench(run, args.reps)
                        gbs = nbytes / ms * 1e-6
                        row.update(value=gbs, ms=ms, first_call_s=first, graphed=graphed,
                                   copy_fraction=gbs / copy_gbs)
                    except Exception as exc:  # noqa: BLE001
                        row.update(value=None, reason=f"{type(exc).__name__}: {str(exc)[:200]}")
                rows.append(row)
                progress.advance(task)
            del kc, vc, dense_kv
            torch.cuda.empty_cache()


def _auto_vs_best(g):
    """(auto row, best backend name, auto value / best value) for one case's rows."""
    auto = g.get(AUTO)
    # sdpa_* decode rows run on a contiguous KV (another op): they are shown, not the bar to meet
    vals = {n: r["value"] for n, r in g.items()
            if n != AUTO and r.get("value") and r.get("layout") != "contiguous KV"}
    if not auto or not auto.get("value") or not vals:
        return auto, None, None
    best = max(vals, key=vals.get)
    return auto, best, auto["value"] / vals[best]


def _ratios(rows):
    """Attach triton / baseline ratios to the triton rows."""
    key = lambda r: tuple(r.get(k) for k in ("kind", "head_dim", "seqlen", "causal", "batch",  # noqa: E731
                                             "context", "block_size"))
    groups = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    for g in groups.values():
        tri = next((r for r in g if r["backend"] == "triton" and r.get("value")), None)
        if tri is None:
            continue
        tri["ratios"] = {r["backend"]: tri["value"] / r["value"] for r in g
                         if r["backend"] not in ("triton", AUTO) and r.get("value")}
    for g in groups.values():
        auto, best, ratio = _auto_vs_best({r["backend"]: r for r in g})
        if ratio is not None:
            auto.update(best=best, auto_over_best=ratio)


def auto_summary(rows, goal: float = 0.98) -> str:
    """The auto column's verdict: how often automatic selection picked the fastest backend, and
    auto/best, split by cause. Where auto picked the best column's own backend, auto/best is two
    timings of one kernel (plus anyattn's dispatch, a few µs on millisecond shapes): a ratio under
    the goal there is timing spread, not a wrong choice, and is reported as such."""
    judged = [r for r in rows if r.get("auto_over_best") is not None]
    if not judged:
        return ""
    same = [r for r in judged if r.get("chosen") == r["best"]]
    other = [r for r in judged if r.get("chosen") != r["best"]]
    below = [r for r in judged if r["auto_over_best"] < goal]

    def case(r):
        parts = [r["kind"], f"d{r['head_dim']}" if r.get("head_dim") else "",
                 str(r.get("seqlen") or r.get("context") or ""), "causal" if r.get("causal") else "",
                 f"b{r['batch']}" if r.get("batch") else "", f"page {r['block_size']}" if r.get("block_size") else ""]
        return " ".join(p for p in parts if p)

    ratios = [r["auto_over_best"] for r in judged]
    out = (f"auto >= {goal} x best on {len(judged) - len(below)}/{len(judged)} shapes (min {min(ratios):.2f}); "
           f"auto picked the fastest backend on {len(same)}/{len(judged)}")
    spread = [r["auto_over_best"] for r in same]
    if spread:
        out += f" (there auto/best = {min(spread):.2f}-{max(spread):.2f}: one kernel timed twice)"
    if other:
        out += "; another choice: " + "; ".join(
            f"{case(r)} {r.get('chosen')} {r['auto_over_best']:.2f}x {r['best']}" for r in other)
    return out


def _by_case(rows, fields):
    """Rows grouped by the case they measure, in first-seen order: case -> {backend: row}."""
    cases: dict = {}
    for r in rows:
        cases.setdefault(tuple(r[f] for f in fields), {})[r["backend"]] = r
    return cases


def _short(name):
    return {"flash_attn_4": "fa4", "flash_attn_3": "fa3", "flash_attn": "fa2", "sdpa_cudnn": "cudnn",
            "sdpa_flash": "sdpa_flash", "sdpa_efficient": "mem_eff", "flashinfer": "fi"}.get(name, name)


def _auto_cells(g):
    auto, best, ratio = _auto_vs_best(g)
    if not auto:
        return ["-", "-"]
    val = f"{auto['value']:.0f} ({_short(auto.get('chosen') or '?')})" if auto.get("value") else "-"
    return [val, f"{ratio:.2f} vs {_short(best)}" if ratio is not None else "-"]


def _table(rows, copy_gbs, names):
    from rich.table import Table

    has_auto = any(r["backend"] == AUTO for r in rows)
    auto_cols = ("auto", "auto/best") if has_auto else ()
    tables = []
    for kind, title in (("prefill", "prefill TFLOP/s (bf16, b*s=16k, h*d=2048); ratio = triton / backend"),
                        ("backward", "forward+backward TFLOP/s (bf16, b*s=16k, h*d=2048; FLOPs = 3.5 x forward: "
                                     "backward counted as 2.5 x)")):
        pre = [r for r in rows if r["kind"] == kind]
        if not pre:
            continue
        shown = [n for n in names if any(r["backend"] == n and r.get("value") for r in pre)] or names
        tri_cols = [n for n in shown if n != "triton"] if kind == "prefill" and "triton" in shown else []
        t = Table(title=title)
        for col in ("d", "seqlen", "causal", *shown, *auto_cols, *(f"tri/{n}" for n in tri_cols),
                    *(("triton 1st call s",) if kind == "prefill" else ())):
            t.add_column(col, justify="right")
        for k, g in _by_case(pre, ("head_dim", "seqlen", "causal")).items():
            tri = g.get("triton", {})
            vals = [f"{g[n]['value']:.0f}" if g.get(n, {}).get("value") else "-" for n in shown]
            rat = [f"{tri.get('ratios', {}).get(n, float('nan')):.2f}"
                   if tri.get("ratios", {}).get(n) else "-" for n in tri_cols]
            first = ([f"{tri.get('first_call_s', float('nan')):.1f}" if tri else "-"] if kind == "prefill" else [])
            t.add_row(str(k[0]), str(k[1]), "yes" if k[2] else "no", *vals,
                      *(_auto_cells(g) if has_auto else []), *rat, *first)
        tables.append(t)
    dec = [r for r in rows if r["kind"] == "decode"]
    if dec:
        shown = [n for n in names if any(r["backend"] == n and r.get("value") for r in dec)] or names
        t = Table(title=f"decode GB/s (bf16, GQA 32/8, d=128); copy bandwidth {copy_gbs:.0f} GB/s;"
                        " % = of copy bandwidth")
        for col in ("block", "batch", "context", *shown, *auto_cols, "triton %copy",
                    *(f"tri/{n}" for n in shown if n != "triton")):
            t.add_column(col, justify="right")
        for k, g in _by_case(dec, ("block_size", "batch", "context")).items():
            tri = g.get("triton", {})
            vals = [f"{g[n]['value']:.0f}" if g.get(n, {}).get("value") else "-" for n in shown]
            rat = [f"{tri.get('ratios', {}).get(n):.2f}" if tri.get("ratios", {}).get(n) else "-"
                   for n in shown if n != "triton"]
            pct = f"{tri['copy_fraction'] * 100:.0f}%" if tri.get("value") else "-"
            t.add_row(str(k[0]), str(k[1]), str(k[2]), *vals, *(_auto_cells(g) if has_auto else []), pct, *rat)
        tables.append(t)
    return tables


def main(args) -> int:
    import torch

    if getattr(args, "only", None) == "overhead":  # its own section and options
        from .bench_overhead import main as overhead

        return overhead(["--device", args.device] + (["--json", args.json] if args.json else []))

    if not torch.cuda.is_available():
        print("anyattn bench: needs a CUDA GPU (none visible)", file=sys.stderr)
        return 2
    from rich.console import Console
    from rich.progress import Progress

    import anyattn  # noqa: F401

    names = ["triton"] + [n for n in BASELINES]
    if args.backends:
        names = [n.strip() for n in args.backends.split(",") if n.strip()]
    console = Console(stderr=args.json == "-")
    if not console.is_terminal:  # logs and pipes: do not squeeze the tables into 80 columns
        console = Console(stderr=args.json == "-", width=220)
    env = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
               cuda=torch.version.cuda, command="anyattn bench " + " ".join(sys.argv[2:]))
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        env["triton"] = None
    rows = []
    copy_gbs = copy_bandwidth(args.device, args.reps)
    n_pre = n_bwd = n_dec = 0
    ncols = len(names) + (0 if args.no_auto else 1)
    bwd_names = [n for n in names if args.backends or n not in BACKWARD_SKIP]
    if args.only in (None, "prefill"):
        sl = len(args.seqlens.split(",")) if args.seqlens else (2 if args.quick else len(PREFILL_SEQLENS))
        n_pre = sl * len(args.head_dims.split(",")) * 2 * ncols
    if args.only in (None, "backward"):
        sl = len(args.seqlens.split(",")) if args.seqlens else (2 if args.quick else len(BACKWARD_SEQLENS))
        n_bwd = sl * len(args.head_dims.split(",")) * 2 * (len(bwd_names) + (0 if args.no_auto else 1))
    if args.only in (None, "decode"):
        shapes = 4 if args.quick else len(DECODE_SHAPES)
        n_dec = shapes * len(args.block_sizes.split(",")) * ncols
    with Progress(console=console, transient=True) as progress:
        if n_pre:
            task = progress.add_task("prefill", total=n_pre)
            bench_prefill(args, names, rows, progress, task)
        if n_bwd:
            task = progress.add_task("backward", total=n_bwd)
            bench_prefill(args, bwd_names, rows, progress, task, grad=True)
        if n_dec:
            task = progress.add_task("decode", total=n_dec)
            bench_decode(args, names, rows, copy_gbs, progress, task)
    _ratios(rows)
    doc = dict(env=env, copy_gbs=copy_gbs, rows=rows)
    if args.json:
        write_json(doc, args.json)
    if args.json != "-":
        console.print(f"{env['device']}  torch {env['torch']}  triton {env['triton']}  "
                      f"copy {copy_gbs:.0f} GB/s (read+write)")
        shown = [n for n in names if any(r["backend"] == n and r.get("value") for r in rows)]
        for t in _table(rows, copy_gbs, names):
            console.print(t)
        skipped = {r["backend"]: r.get("reason") for r in rows if not r.get("value")}
        for n, why in skipped.items():
            if n not in shown and n != AUTO:
                console.print(f"[dim]{n}: {why}[/]")
        line = auto_summary(rows)
        if line:
            console.print(line)
    return 0
