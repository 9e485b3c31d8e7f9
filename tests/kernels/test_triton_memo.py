"""The kernel wrappers' per-signature launch memo (issue 7 section 2) without a GPU.

A remembered call must launch exactly what the full path would build for the same tensors:
the same grid and options, the same argument list (the very tensors, descriptors with the same
fields over the new base), and a plan key equal to the one computed from those arguments.
Checked on compiled (non-interpreted) copies of the kernel modules -- nothing is compiled or
run: LaunchCache.launch/launch_keyed are replaced by recorders --, over dense (TMA descriptors
included), paged decode, chunked, split-KV with combine, LSE, sinks, ALiBi, GQA. Then, under
the interpreter, remembered calls with fresh inputs against the float64 reference.
"""

from __future__ import annotations

import itertools
import os
import sys

import pytest
import torch

if os.environ.get("CI"):
    import triton  # noqa: F401
else:
    pytest.importorskip("triton")

from anyattn.kernels import _launch as L  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from test_triton_launch import _compiled_copy  # noqa: E402
from _interpret import interpreting  # noqa: E402


@pytest.fixture(scope="module")
def mods():
    return _compiled_copy("triton_prefill"), _compiled_copy("triton_paged")


class _Rec:
    def __init__(self):
        self.calls = []


@pytest.fixture()
def rec(monkeypatch):
    r = _Rec()

    def launch(self, grid, args, options, device):
        r.calls.append(("full", self, None, grid, args, options, device))

    def launch_keyed(self, tail, grid, args, options, device):
        r.calls.append(("memo", self, tail, grid, args, options, device))

    monkeypatch.setattr(L.LaunchCache, "launch", launch)
    monkeypatch.setattr(L.LaunchCache, "launch_keyed", launch_keyed)
    return r


def _same_arg(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    if type(a).__name__ == "TensorDescriptor":
        if type(a) is not type(b) or a.base is not b.base:
            return False
        fa, fb = dict(vars(a)), dict(vars(b))
        fa.pop("base"), fb.pop("base")
        return fa == fb
    return type(a) is type(b) and a == b


def _assert_same_launch(memo_call, full_call, splits=False):
    kind, cache, tail, grid, args, options, device = memo_call
    fkind, fcache, _, fgrid, fargs, foptions, fdevice = full_call
    assert (kind, fkind) == ("memo", "full") and cache is fcache
    assert (grid, options, device) == (fgrid, foptions, fdevice)
    assert len(args) == len(fargs) == cache.n_args
    for i, (a, b) in enumerate(zip(args, fargs)):
        if splits and isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) \
                and a.dtype == torch.float32 and a.dim() >= 2 and a is not b:
            # split buffers are new per call: same metadata, not the same object
            assert (a.shape, a.stride(), a.dtype) == (b.shape, b.stride(), b.dtype), cache.names[i]
            continue
        assert _same_arg(a, b), f"{cache.names[i]}: {a!r} vs {b!r}"
    assert cache.enabled and tail == cache.key_fn(args)


def _twice(mod, rec, fn, make):
    """Run ``fn(*make())`` three ways: memo off; memo on, first call (fills it); memo on with
    fresh tensors of the same metadata (a hit), and the full path for those tensors."""
    mod._SIG.clear()
    a1 = make()
    fn(*a1)
    assert all(c[0] == "full" for c in rec.calls)
    n_first = len(rec.calls)
    a2 = make()
    fn(*a2)
    hit = rec.calls[n_first:]
    mod._MEMO_ON = False
    try:
        fn(*a2)
    finally:
        mod._MEMO_ON = True
    full = rec.calls[n_first + len(hit):]
    rec.calls.clear()
    return hit, full


def test_dense_memo_launches_what_the_full_path_builds(mods, rec, monkeypatch):
    P, _ = mods
    gen = torch.Generator().manual_seed(0)

    def check(make, **kw):
        fn = lambda q, k, v, o, l, a, s: P.flash_attention_forward(  # noqa: E731
            q, k, v, o, l, alibi_slopes=a, sinks=s, **kw)
        hit, full = _twice(P, rec, fn, make)
        assert len(hit) == len(full) == 1
        _assert_same_launch(hit[0], full[0])

    cases = 0
    for dtype, (B, S, Sk, Hq, Hkv, D), feat, lse in itertools.product(
            (torch.float16, torch.float32), ((1, 16, 16, 4, 4, 64), (2, 37, 50, 4, 2, 64),
                                             (3, 1, 33, 8, 2, 128)),
            (dict(scale=0.125), dict(scale=0.1, causal=True), dict(scale=0.1, window=(5, 0)),
             dict(scale=0.2, softcap=3.0), dict(scale=0.1, alibi=True, sinks=True)), (False, True)):
        def make():
            q = torch.randn(B, S, Hq, D, generator=gen).to(dtype)
            k = torch.randn(B, Sk, Hkv, D, generator=gen).to(dtype)
            v = torch.randn(B, Sk, Hkv, D, generator=gen).to(dtype)
            o = torch.empty(B, S, Hq, D, dtype=dtype)
            l = torch.empty(B, Hq, S) if lse else None
            a = torch.rand(Hq, generator=gen) if feat.get("alibi") else None
            s = torch.randn(Hq, generator=gen) if feat.get("sinks") else None
            return q, k, v, o, l, a, s
        check(make, **{x: y for x, y in feat.items() if x not in ("alibi", "sinks")})
        cases += 1
    # host TMA descriptors (the real _tma_ok needs an sm90 GPU): descriptors are rebuilt over
    # each call's K/V with the prototype's fields
    monkeypatch.setattr(P, "_tma_ok", lambda q, k, v: True)
    monkeypatch.setattr(P, "ensure_allocator", lambda: None)
    for B, S, D in ((1, 16, 64), (2, 37, 64), (2, 40, 128)):
        def make():
            x = torch.randn(B, S, 4, D, generator=gen).half()
            y = torch.randn(B, S, 4, D, generator=gen).half()
            return x, y[:, :, :2], y[:, :, 2:], torch.empty_like(x), None, None, None
        check(make, scale=0.1, causal=True)
        _, full = _twice(P, rec, lambda *a: P.flash_attention_forward(*a[:5], scale=0.1,
                                                                     causal=True), make)
        assert type(full[0][4][9]).__name__ == "TensorDescriptor", "descriptor case not covered"
    assert cases == 60


def test_dense_memo_skips_misaligned_and_varlen(mods, rec):
    P, _ = mods
    P._SIG.clear()
    big = torch.randn(1, 16, 4, 65).half()
    q = big[..., 1:]  # misaligned base
    for _ in range(2):
        P.flash_attention_forward(q, q, q, torch.empty_like(q), scale=0.1)
    cu = torch.tensor([0, 3, 9], dtype=torch.int32)
    t = torch.randn(9, 4, 64).half()
    for _ in range(2):
        P.flash_attention_forward(t, t, t, torch.empty_like(t), scale=0.1, cu_seqlens_q=cu,
                                  cu_seqlens_k=cu, max_seqlen_q=6, max_seqlen_k=6)
    assert [c[0] for c in rec.calls] == ["full"] * 4 and not P._SIG


def test_paged_memo_launches_what_the_full_path_builds(mods, rec):
    _, G = mods
    gen = torch.Generator().manual_seed(1)
    n = 0
    for dtype, (B, Hq, Hkv, D, page, ctx), lse, chunk, num_splits, extra in itertools.product(
            (torch.float16, torch.float32),
            ((1, 8, 2, 64, 16, 100), (3, 4, 4, 32, 32, 70), (16, 8, 1, 128, 16, 64)),
            (False, True), (False, True), (None, 1, 3), (False, True)):
        nbp = -(-ctx // page)
        T = B * (3 if chunk else 1)

        def make():
            kc = torch.randn(B * nbp, page, Hkv, D, generator=gen).to(dtype)
            vc = torch.randn(B * nbp, page, Hkv, D, generator=gen).to(dtype)
            bt = torch.randperm(B * nbp, generator=gen).view(B, nbp).int()
            su = torch.full((B,), ctx, dtype=torch.int32)
            q = torch.randn(T, Hq, D, generator=gen).to(dtype)
            cu = torch.arange(B + 1, dtype=torch.int32) * 3 if chunk else None
            return (q, kc, vc, bt, su, torch.empty_like(q), torch.empty(Hq, T) if lse else None,
                    cu, torch.rand(Hq, generator=gen) if extra else None,
                    torch.randn(Hq, generator=gen) if extra else None)

        def fn(q, kc, vc, bt, su, out, l, cu, a, s):
            G.paged_attention_forward(q, kc, vc, bt, su, out, l, cu_seqlens_q=cu,
                                      max_seqlen_q=3 if chunk else 1, max_seqlen_k=ctx,
                                      scale=0.1, causal=True, alibi_slopes=a, sinks=s,
                                      num_splits=num_splits)

        hit, full = _twice(G, rec, fn, make)
        assert len(hit) == len(full) in (1, 2)
        for h, f in zip(hit, full):
            _assert_same_launch(h, f, splits=True)
        n += len(full) == 2
    assert n > 10, "the sweep must include split-KV (combine) launches"


@pytest.mark.skipif(not os.environ.get("CI") and not interpreting(),
                    reason="needs TRITON_INTERPRET=1 before triton's import (tests/kernels/conftest.py)")
def test_remembered_calls_compute_the_reference_under_the_interpreter():
    from _attn_ref import ref_dense, ref_paged

    from anyattn.kernels import triton_paged as G
    from anyattn.kernels import triton_prefill as P

    gen = torch.Generator().manual_seed(2)
    P._SIG.clear()
    for i in range(3):  # the 2nd and 3rd calls are remembered ones, with new data
        q = torch.randn(2, 19, 4, 32, generator=gen)
        k = torch.randn(2, 23, 2, 32, generator=gen)
        v = torch.randn(2, 23, 2, 32, generator=gen)
        out = torch.full_like(q, float("nan"))
        lse = torch.full((2, 4, 19), float("nan"))
        P.flash_attention_forward(q, k, v, out, lse, scale=0.2, causal=True)
        ro, rl = ref_dense(q, k, v, scale=0.2, causal=True)
        assert float((out.double() - ro).abs().max()) < 1e-4
        assert float((lse.double() - rl).abs().max()) < 1e-3
        assert len(P._SIG) == 1
    G._SIG.clear()
    B, page, nbp = 3, 16, 3
    for i in range(3):
        kc = torch.randn(B * nbp, page, 2, 32, generator=gen)
        vc = torch.randn(B * nbp, page, 2, 32, generator=gen)
        bt = torch.randperm(B * nbp, generator=gen).view(B, nbp).int()
        su = torch.randint(1, nbp * page + 1, (B,), generator=gen).int()
        q = torch.randn(B, 4, 32, generator=gen)
        out = torch.full_like(q, float("nan"))
        lse = torch.full((4, B), float("nan"))
        G.paged_attention_forward(q, kc, vc, bt, su, out, lse, scale=0.2, causal=True,
                                  max_seqlen_k=nbp * page, num_splits=2)
        ro, rl = ref_paged(q, kc, vc, bt, su, scale=0.2, causal=True)
        assert float((out.double() - ro).abs().max()) < 1e-4
        assert float((lse.double() - rl).abs().max()) < 1e-3
        assert len(G._SIG) == 1


def test_entry_made_with_plans_off_is_redone_when_they_are_on(mods, rec):
    """The GPU tests switch plans off for the reference launch: the memo entry made then has
    no plan key, and a later call with plans on must rebuild it rather than launch without one."""
    P, _ = mods
    P._SIG.clear()
    t = torch.randn(1, 16, 2, 64).half()
    P._FWD.enabled = False
    try:
        P.flash_attention_forward(t, t, t, torch.empty_like(t), scale=0.1)
    finally:
        P._FWD.enabled = True
    assert next(iter(P._SIG.values()))[3] is None
    P.flash_attention_forward(t, t, t, torch.empty_like(t), scale=0.1)
    P.flash_attention_forward(t, t, t, torch.empty_like(t), scale=0.1)
    assert [c[0] for c in rec.calls] == ["full", "full", "memo"]
    assert rec.calls[2][2] == P._FWD.key_fn(rec.calls[2][4])


@pytest.mark.parametrize("value, expect", [(None, False), ("1", True), ("0", False), ("", False),
                                           ("false", False), ("False", False), ("true", True)])
def test_interpret_mode_follows_the_environment(monkeypatch, value, expect):
    """interpret_mode() reads os.environ's dict directly (it sits in every call's memo key):
    it must agree with os.environ.get after any change made through os.environ."""
    from anyattn.kernels._common import interpret_mode

    if value is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", value)
    assert interpret_mode() is expect
    assert expect == (os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False"))


def test_verify_mode_rederives_remembered_launches(mods, rec, monkeypatch):
    """ANYATTN_TRITON_VERIFY_PLANS=1 (the GPU run) re-derives every remembered launch and
    raises where the memo would launch something else."""
    P, G = mods
    monkeypatch.setattr(P._FWD, "verify", True, raising=False)
    monkeypatch.setattr(G._PAGED, "verify", True, raising=False)
    P._SIG.clear()
    G._SIG.clear()
    t = torch.randn(1, 16, 2, 64).half()
    for _ in range(2):
        P.flash_attention_forward(t, t, t, torch.empty_like(t), scale=0.1)
    kc = torch.randn(8, 16, 2, 64).half()
    bt = torch.arange(8, dtype=torch.int32).view(2, 4)
    su = torch.full((2,), 64, dtype=torch.int32)
    pq = torch.randn(2, 4, 64).half()
    for _ in range(2):
        G.paged_attention_forward(pq, kc, kc, bt, su, torch.empty_like(pq), scale=0.1,
                                  max_seqlen_k=64, num_splits=2)
    assert [c[0] for c in rec.calls] == ["full", "memo", "full", "full", "memo", "memo"]
    # corrupt the remembered constants: verify mode must notice before launching
    (key, e), = P._SIG.items()
    tail = list(e[2])
    tail[0] += 1
    P._SIG[key] = (e[0], e[1], tuple(tail)) + e[3:]
    with pytest.raises(RuntimeError, match="differs in sq_b"):
        P.flash_attention_forward(t, t, t, torch.empty_like(t), scale=0.1)
    (key, e), = G._SIG.items()
    G._SIG[key] = ((e[0][0] + 1,) + e[0][1:],) + e[1:]
    with pytest.raises(RuntimeError, match="grid"):
        G.paged_attention_forward(pq, kc, kc, bt, su, torch.empty_like(pq), scale=0.1,
                                  max_seqlen_k=64, num_splits=2)


from test_triton_launch import flow  # noqa: E402,F401  (the launch-flow fixture)


class _CLaunch:
    """Stands in for the compiled C launcher (no __code__: not a Python function)."""

    def __init__(self):
        self.calls = []

    def __call__(self, *a):
        self.calls.append(a)


class CudaLauncher:  # the name _direct_launch checks for; __call__ as in Triton 3.6
    global_scratch_size = profile_scratch_size = 0
    launch_cooperative_grid = False
    launch_pdl = True

    def __init__(self):
        self.launch = _CLaunch()

    def __call__(self, gridX, gridY, gridZ, stream, function, *args):
        self.launch(gridX, gridY, gridZ, stream, function, self.launch_cooperative_grid,
                    self.launch_pdl, None, None, *args)


def test_direct_launch_passes_what_the_launcher_would(flow, monkeypatch):
    cache, ck, normal, calls = flow
    launcher = CudaLauncher()
    monkeypatch.setattr(type(ck), "run", property(lambda self: launcher))
    monkeypatch.setattr(L, "triton_version", lambda: (3, 6))
    grid, args, options, dev = next(c for c in calls
                                    if all(isinstance(a, (torch.Tensor, int, float, str, bool))
                                           for a in c[1]))
    cache.launch(grid, args, options, dev)  # normal path: makes the plan
    plan = next(iter(cache.plans.values()))
    assert plan.direct is not None and plan.direct[0] is launcher.launch
    cache.launch(grid, args, options, dev)
    tail = cache.key_fn(args)
    cache.launch_keyed(tail, grid, args, options, dev)
    assert cache.fast == 2 and len(launcher.launch.calls) == 2
    launcher(*grid, 777, 1234, ("meta",), None, None, None, *args)  # what the plan used to call
    assert launcher.launch.calls[0] == launcher.launch.calls[1] == launcher.launch.calls[2]
    # scratch buffers, a Python wrapper, or another Triton: the launcher object is called
    for attr, value in (("global_scratch_size", 64), ("launch", lambda *a: None)):
        other = CudaLauncher()
        setattr(other, attr, value)
        assert L._direct_launch(other) is None
    monkeypatch.setattr(L, "triton_version", lambda: (3, 9))
    cache.plans.clear()
    cache.launch(grid, args, options, dev)
    assert next(iter(cache.plans.values())).direct is None
