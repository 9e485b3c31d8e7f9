"""Launch plans on the GPU (``python -m pytest -m gpu tests/kernels/test_triton_launch_gpu.py``).

After the first call of a signature the kernels must launch through their plan (counted by
``LaunchCache.fast``), and the result must be bit-identical to the normal ``kernel[grid](...)``
launch of the same inputs (plans switched off). Many shapes, dtypes and paths (host TMA
descriptors, device-side descriptors, pointer loads, fp32, varlen, paged decode with and without
split-KV, chunked prefill) run interleaved in one process, twice, with fresh data the second
time: a plan key that merged two specialisations would launch the wrong binary and show up as a
wrong result. Every fast launch also recomputes Triton's own specialisation (verify mode).
CUDA-graph capture of fast-path launches is replayed with new data.
"""

from __future__ import annotations

import pytest
import torch

import anyattn
from anyattn.kernels import _launch as L

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEV = "cuda"


@pytest.fixture(scope="module")
def K():
    from anyattn.kernels import triton_paged as G
    from anyattn.kernels import triton_prefill as P

    for c in (P._FWD, G._PAGED, G._COMBINE):
        assert c.enabled, f"plans are off on this machine: {c.reason}"
    return P, G


@pytest.fixture(autouse=True)
def _verify(monkeypatch):
    monkeypatch.setattr(L.LaunchCache, "verify", True)


def _caches(K):
    P, G = K
    return (P._FWD, G._PAGED, G._COMBINE)


def _normal(K, fn):
    """fn() with every plan switched off: the plain kernel[grid](...) launch."""
    caches = _caches(K)
    saved = [c.enabled for c in caches]
    for c in caches:
        c.enabled = False
    try:
        r = fn()
        torch.cuda.synchronize()
        return r
    finally:
        for c, e in zip(caches, saved):
            c.enabled = e


def _fast(K, fn, expect_fast):
    """fn() twice (the first call may make plans); the second must take ``expect_fast`` plans
    and no normal launch."""
    fn()
    caches = _caches(K)
    before = [(c.fast, c.slow) for c in caches]
    r = fn()
    torch.cuda.synchronize()
    fast = sum(c.fast - b[0] for c, b in zip(caches, before))
    slow = sum(c.slow - b[1] for c, b in zip(caches, before))
    assert (fast, slow) == (expect_fast, 0), f"fast {fast}, normal {slow} launches"
    return r


def _same(a, b):
    if isinstance(a, tuple):
        for x, y in zip(a, b):
            _same(x, y)
        return
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.equal(torch.nan_to_num(a, nan=7.0), torch.nan_to_num(b, nan=7.0)), \
        "fast path differs from the normal launch"
    assert not torch.isnan(a).any()


def _dense_case(B, Sq, Sk, Hq, Hkv, D, dtype, layout, feat):
    def make():
        g = torch.Generator(device=DEV)
        g.seed()
        if layout == "misaligned":  # 2-byte offset: no TMA, pointer loads
            q = torch.randn(B, Sq, Hq, D + 8, device=DEV, generator=g).to(dtype)[..., 1:D + 1]
        else:
            q = torch.randn(B, Sq, Hq, D, device=DEV, generator=g).to(dtype)
        k = torch.randn(B, Sk, Hkv, D, device=DEV, generator=g).to(dtype)
        v = torch.randn(B, Sk, Hkv, D, device=DEV, generator=g).to(dtype)
        if layout == "headmajor":  # (B, H, S, D) storage: dense batch stride != Sk * row
            k = k.transpose(1, 2).contiguous().transpose(1, 2)
            v = v.transpose(1, 2).contiguous().transpose(1, 2)
        kw = dict(feat)
        if kw.pop("alibi", False):
            kw["alibi_slopes"] = torch.rand(Hq, device=DEV) * 0.2
        if kw.pop("sinks", False):
            kw["sinks"] = torch.randn(Hq, device=DEV)
        return q, k, v, kw

    return make


DENSE = [
    # B, Sq, Sk, Hq, Hkv, D, dtype, layout, features
    (1, 4, 4, 16, 16, 64, torch.bfloat16, "contig", {}),  # the overhead benchmark's shape
    (2, 300, 300, 8, 2, 128, torch.bfloat16, "contig", dict(causal=True)),
    (1, 200, 517, 4, 4, 64, torch.float16, "contig", dict(window=(64, 0), return_lse=True)),
    (2, 129, 129, 4, 1, 64, torch.bfloat16, "headmajor", dict(softcap=20.0)),
    (1, 77, 77, 4, 2, 80, torch.bfloat16, "contig", dict(causal=True)),  # device-side TMA
    (2, 65, 90, 4, 2, 64, torch.float16, "misaligned", dict(alibi=True, sinks=True)),
    (1, 50, 50, 2, 1, 64, torch.float32, "contig", dict(causal=True, return_lse=True)),
    (3, 33, 33, 6, 3, 128, torch.float16, "contig", dict(causal=True, window=(16, -1))),
]


def _dense_fn(case, inputs):
    q, k, v, kw = inputs
    return lambda: anyattn.attention(q, k, v, backend="triton", **kw)


def _varlen_fn(lens_q, lens_k, Hq, Hkv, D, dtype, feat):
    g = torch.Generator(device=DEV)
    g.seed()
    cq = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], device=DEV, dtype=torch.int32)
    ck = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], device=DEV, dtype=torch.int32)
    q = torch.randn(int(cq[-1]), Hq, D, device=DEV, generator=g).to(dtype)
    k = torch.randn(int(ck[-1]), Hkv, D, device=DEV, generator=g).to(dtype)
    v = torch.randn(int(ck[-1]), Hkv, D, device=DEV, generator=g).to(dtype)
    return lambda: anyattn.varlen_attention(q, k, v, cq, ck, max(lens_q), max(lens_k),
                                            backend="triton", **feat)


def _paged_fn(B, ctx, Hq, Hkv, D, page, dtype, chunk=0, lse=False):
    g = torch.Generator(device=DEV)
    g.seed()
    nbp = -(-ctx // page)
    kc = torch.randn(B * nbp + 3, page, Hkv, D, device=DEV, generator=g).to(dtype)
    vc = torch.randn(B * nbp + 3, page, Hkv, D, device=DEV, generator=g).to(dtype)
    bt = torch.randperm(B * nbp + 3, device=DEV)[:B * nbp].view(B, nbp).to(torch.int32)
    su = torch.randint(max(1, ctx - 50), ctx + 1, (B,), device=DEV, dtype=torch.int32)
    T = B * (chunk or 1)
    q = torch.randn(T, Hq, D, device=DEV, generator=g).to(dtype)
    kw = dict(return_lse=lse)
    if chunk:
        kw.update(cu_seqlens_q=torch.arange(B + 1, device=DEV, dtype=torch.int32) * chunk,
                  max_seqlen_q=chunk)
    return lambda: anyattn.paged_attention(q, kc, vc, bt, su, max_seqlen_k=ctx, backend="triton",
                                           **kw)


def _launches(G, B, ctx, Hq, Hkv, D, page, dtype, chunk=0):
    cfg = G.paged_config(batch=B, hkv=Hkv, group=Hq // Hkv, max_seqlen_q=chunk or 1,
                         max_seqlen_k=ctx, head_dim=D, head_dim_v=D, dtype=dtype,
                         device=torch.device(DEV), page=page)
    return 2 if cfg["num_splits"] > 1 else 1


PAGED = [
    # B, ctx, Hq, Hkv, D, page, dtype, chunk, lse
    (1, 4096, 32, 8, 128, 16, torch.bfloat16, 0, False),  # the benchmark's decode shapes
    (16, 4096, 32, 8, 128, 16, torch.bfloat16, 0, False),
    (64, 2048, 32, 8, 128, 16, torch.bfloat16, 0, True),
    (3, 1000, 16, 4, 64, 32, torch.float16, 0, True),
    (4, 700, 8, 2, 128, 16, torch.bfloat16, 5, False),  # chunked prefill
    (2, 300, 4, 4, 64, 128, torch.float32, 3, True),
]


def test_dense_fast_path_is_taken_and_bit_identical(K):
    cases = [(c, _dense_case(*c)) for c in DENSE]
    for rnd in range(2):  # round 2: every plan exists; fresh data, interleaved shapes
        for c, make in cases:
            fn = _dense_fn(c, make())
            _same(_fast(K, fn, 1), _normal(K, fn))


def test_host_descriptor_plans_skip_the_argument_loop_on_triton36(K):
    P, _ = K
    q = torch.randn(2, 128, 8, 128, device=DEV, dtype=torch.bfloat16)
    fn = lambda: anyattn.attention(q, q[:, :, :2], q[:, :, :2], backend="triton")  # noqa: E731
    _same(_fast(K, fn, 1), _normal(K, fn))
    hostdesc = [p for p in P._FWD.plans.values()
                if any(isinstance(s[0], str) and s[0].startswith("tensordesc") for s in p.spec)]
    assert hostdesc, "bf16, d=128 on sm90 must take host TMA descriptors"
    if L.triton_version() == (3, 6):
        assert all(p.raw is not None for p in hostdesc)


def test_varlen_new_lengths_reuse_the_plan(K):
    a = _varlen_fn([100, 0, 37, 1], [100, 5, 60, 1], 8, 2, 128, torch.bfloat16, dict(causal=True))
    _same(_fast(K, a, 1), _normal(K, a))
    P, _ = K
    n = P._FWD.slow
    # other lengths, same config bucket: no new plan, the same kernel through the plan
    b = _varlen_fn([90, 2, 1], [95, 40, 7], 8, 2, 128, torch.bfloat16, dict(causal=True))
    out = b()
    torch.cuda.synchronize()
    assert P._FWD.slow == n, "new sequence lengths must not need a new plan"
    _same(out, _normal(K, b))
    c = _varlen_fn([5, 9], [5, 9], 4, 4, 64, torch.float16, dict(window=(3, 3), return_lse=True))
    _same(_fast(K, c, 1), _normal(K, c))


def test_paged_fast_path_is_taken_and_bit_identical(K):
    _, G = K
    cases = [(c, _launches(G, *c[:7], chunk=c[7])) for c in PAGED]
    for rnd in range(2):
        for c, n in cases:
            fn = _paged_fn(*c)
            _same(_fast(K, fn, n), _normal(K, fn))
    assert any(n == 2 for _, n in cases) and any(n == 1 for _, n in cases), \
        "cover split-KV (paged + combine) and single-split launches"


def test_cuda_graph_replays_fast_path_launches(K):
    """Capture paged decode after warm-up (the captured launches are plan launches), replay with
    new queries and sequence lengths, compare with eager normal launches."""
    _, G = K
    B, ctx, Hq, Hkv, D, page = 16, 4096, 32, 8, 128, 16
    nbp = ctx // page
    kc = torch.randn(B * nbp, page, Hkv, D, device=DEV, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    bt = torch.randperm(B * nbp, device=DEV).view(B, nbp).to(torch.int32)
    su = torch.full((B,), ctx, device=DEV, dtype=torch.int32)
    q = torch.randn(B, Hq, D, device=DEV, dtype=torch.bfloat16)
    out = torch.empty_like(q)

    def step():
        return anyattn.paged_attention(q, kc, vc, bt, su, max_seqlen_k=ctx, backend="triton",
                                       out=out)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
        step()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    before = (G._PAGED.fast, G._PAGED.slow)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    assert G._PAGED.fast > before[0] and G._PAGED.slow == before[1], \
        "the captured launch must be a plan launch"
    for _ in range(3):
        q.copy_(torch.randn_like(q))
        su.copy_(torch.randint(1, ctx + 1, (B,), device=DEV, dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()
        got = out.clone()
        want = _normal(K, lambda: anyattn.paged_attention(q, kc, vc, bt, su, max_seqlen_k=ctx,
                                                          backend="triton"))
        _same(got, want)


def test_cuda_graph_replays_host_descriptor_launches(K):
    """Dense prefill through a host-descriptor plan (Triton 3.6: the cached CUtensorMap path)
    captured and replayed with new data in the same buffers."""
    q = torch.randn(2, 256, 8, 128, device=DEV, dtype=torch.bfloat16)
    k = torch.randn(2, 256, 2, 128, device=DEV, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    out = torch.empty_like(q)

    def step():
        return anyattn.attention(q, k, v, causal=True, backend="triton", out=out)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
        step()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(2):
        for t in (q, k, v):
            t.copy_(torch.randn_like(t))
        graph.replay()
        torch.cuda.synchronize()
        got = out.clone()
        _same(got, _normal(K, lambda: anyattn.attention(q, k, v, causal=True, backend="triton")))
