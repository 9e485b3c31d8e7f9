"""Launch plans (anyattn/kernels/_launch.py) without a GPU.

The plan key must separate every pair of calls that Triton specialises differently. Triton's
own specialisation is computed here by its real binder (``create_function_from_signature`` with
a CUDA sm90 backend object; no GPU needed) on the argument lists the kernel wrappers really
build -- dense, varlen, paged decode/chunked and combine calls over dtypes, strides, misaligned
pointers, features and host descriptors -- and every group of calls sharing a key must share
one specialisation. The launch flow (plan made after the first call, fast path after, every
fallback) runs against a stand-in CompiledKernel. Compiled (non-interpreted) copies of the
kernel modules are loaded with TRITON_INTERPRET=0 at decoration time; nothing is compiled.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys

import pytest
import torch

if os.environ.get("CI"):
    import triton  # noqa: F401
else:
    pytest.importorskip("triton")

from triton import knobs  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from anyattn.kernels import _launch as L  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "anyattn", "kernels")


def _compiled_copy(name):
    """A private copy of anyattn.kernels.<name> whose kernels are JITFunctions."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        spec = importlib.util.spec_from_file_location(f"anyattn.kernels._plantest_{name}",
                                                      os.path.join(ROOT, f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        mod.__package__ = "anyattn.kernels"
        spec.loader.exec_module(mod)
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old
    return mod


@pytest.fixture(scope="module")
def mods():
    P, G = _compiled_copy("triton_prefill"), _compiled_copy("triton_paged")
    assert type(P._fwd_kernel) is JITFunction and type(G._paged_kernel) is JITFunction
    return P, G


def _binder(kernel):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", 90, 32))
    return create_function_from_signature(kernel.signature, kernel.params, backend)


class _Capture:
    """Stands in for LaunchCache.launch: records what the wrapper would launch."""

    def __init__(self):
        self.calls = []

    def __call__(self, grid, args, options, device):
        self.calls.append((grid, args, options, device))


def _prefill_calls(P, monkeypatch):
    cap = _Capture()
    monkeypatch.setattr(P._FWD, "launch", cap)
    gen = torch.Generator().manual_seed(0)

    def run(q, k, v, lse=False, **kw):
        B_or_T = q.shape[:-2]
        out = torch.empty(*B_or_T, q.shape[-2], v.shape[-1], dtype=q.dtype)
        l = None
        if lse:
            l = torch.empty(q.shape[-2], q.shape[0], dtype=torch.float32) if q.dim() == 3 \
                else torch.empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32)
        P.flash_attention_forward(q, k, v, out, l, scale=kw.pop("scale", 0.125), **kw)

    for dtype, (B, S, Sk, Hq, Hkv, D), feat, lse in itertools.product(
            (torch.float16, torch.bfloat16, torch.float32),
            ((1, 16, 16, 4, 4, 64), (2, 37, 50, 4, 2, 64), (3, 1, 33, 8, 2, 128), (1, 17, 17, 2, 1, 40)),
            (dict(), dict(causal=True), dict(window=(5, 0)), dict(softcap=3.0), dict(scale=-0.1)),
            (False, True)):
        q = torch.randn(B, S, Hq, D, generator=gen).to(dtype)
        k = torch.randn(B, Sk, Hkv, D, generator=gen).to(dtype)
        v = torch.randn(B, Sk, Hkv, D, generator=gen).to(dtype)
        run(q, k, v, lse=lse, **feat)
    q = torch.randn(2, 20, 4, 64, generator=gen).half()
    kv = torch.randn(2, 4, 20, 64, generator=gen).half().transpose(1, 2)  # head-major K/V
    run(q, kv, kv)
    big = torch.randn(2, 20, 4, 65, generator=gen).half()
    run(big[..., 1:], big[..., 1:][:, :, :2], big[..., 1:][:, :, :2])  # misaligned pointers
    run(big[..., :64], big[..., :64], big[..., :64])  # strides not multiples of 16
    alibi = torch.rand(4, generator=gen)
    sinks = torch.randn(4, generator=gen)
    run(q, q, q, alibi_slopes=alibi, sinks=sinks)
    run(q, q, q, alibi_slopes=torch.rand(2, 4, generator=gen))
    for lens in ([3, 0, 17], [1, 1], [40, 2, 2, 9]):
        cu = torch.tensor([0] + list(itertools.accumulate(lens)), dtype=torch.int32)
        t = torch.randn(int(cu[-1]), 4, 64, generator=gen).half()
        run(t, t[:, :2], t[:, :2], lse=True, cu_seqlens_q=cu, cu_seqlens_k=cu,
            max_seqlen_q=max(lens), max_seqlen_k=max(lens), causal=True)
    # host TMA descriptors (the real _tma_ok needs an sm90 GPU)
    monkeypatch.setattr(P, "_tma_ok", lambda q, k, v: True)
    monkeypatch.setattr(P, "ensure_allocator", lambda: None)
    for B, S, D in ((1, 16, 64), (2, 37, 64), (4, 37, 64), (2, 40, 128), (2, 20, 80)):
        x = torch.randn(B, S, 4, D, generator=gen).half()
        run(x, x[:, :, :2], x[:, :, :2], causal=True)
        run(x, x, x)
    return cap.calls


def _paged_calls(G, monkeypatch):
    cap_p, cap_c = _Capture(), _Capture()
    monkeypatch.setattr(G._PAGED, "launch", cap_p)
    monkeypatch.setattr(G._COMBINE, "launch", cap_c)
    gen = torch.Generator().manual_seed(1)
    for dtype, (B, Hq, Hkv, D, page, ctx), lse, chunk, num_splits in itertools.product(
            (torch.float16, torch.float32),
            ((1, 8, 2, 64, 16, 100), (3, 4, 4, 32, 32, 70), (16, 8, 1, 128, 16, 64)),
            (False, True), (False, True), (None, 1, 3)):
        nbp = -(-ctx // page)
        kc = torch.randn(B * nbp, page, Hkv, D, generator=gen).to(dtype)
        bt = torch.randperm(B * nbp, generator=gen).view(B, nbp).int()
        su = torch.full((B,), ctx, dtype=torch.int32)
        T = B * (3 if chunk else 1)
        q = torch.randn(T, Hq, D, generator=gen).to(dtype)
        out = torch.empty_like(q)
        lse_t = torch.empty(Hq, T) if lse else None
        kw = dict(cu_seqlens_q=torch.arange(B + 1, dtype=torch.int32) * 3, max_seqlen_q=3,
                  causal=True) if chunk else {}
        G.paged_attention_forward(q, kc, kc, bt, su, out, lse_t, scale=0.1, max_seqlen_k=ctx,
                                  num_splits=num_splits, **kw)
    return cap_p.calls, cap_c.calls


def _assert_key_separates(cache, kernel, calls):
    binder = _binder(kernel)
    groups = {}
    for grid, args, options, device in calls:
        assert len(args) == cache.n_args, "the wrapper must pass every parameter"
        key = cache.key(device, args, options)
        assert key is not None
        spec = tuple(binder(*args, **dict(options))[1])
        groups.setdefault(key, set()).add(spec)
    bad = {k: v for k, v in groups.items() if len(v) > 1}
    assert not bad, f"one plan key, several Triton specialisations: {next(iter(bad.values()))}"
    return groups


def test_prefill_key_separates_triton_specialisations(mods, monkeypatch):
    P, _ = mods
    calls = _prefill_calls(P, monkeypatch)
    groups = _assert_key_separates(P._FWD, P._fwd_kernel, calls)
    # the sweep must really cover distinct specialisations (a constant key would fail above)
    assert len(groups) > 40
    descs = [a for _, args, _, _ in calls for a in args[9:11] if not isinstance(a, torch.Tensor)]
    assert descs, "the sweep must include host-descriptor calls"


def test_paged_and_combine_keys_separate_triton_specialisations(mods, monkeypatch):
    _, G = mods
    paged, combine = _paged_calls(G, monkeypatch)
    assert combine, "the sweep must include split-KV calls"
    assert len(_assert_key_separates(G._PAGED, G._paged_kernel, paged)) > 10
    _assert_key_separates(G._COMBINE, G._combine_kernel, combine)


def test_key_int_width_and_alignment_classes(mods, monkeypatch):
    """Edge classes the tensors above cannot produce: ints past int32, one misaligned pointer
    among aligned ones, ints equal to 1 (Triton makes those constexprs) or divisible by 16."""
    P, _ = mods
    cap = _Capture()
    monkeypatch.setattr(P._FWD, "launch", cap)
    t = torch.randn(1, 16, 2, 64).half()
    P.flash_attention_forward(t, t, t, torch.empty_like(t), scale=0.1)
    _, base, options, dev = cap.calls[0]
    binder = _binder(P._fwd_kernel)
    names = P._FWD.names
    i_seq = names.index("seqlen_k")  # do_not_specialize
    i_stride = names.index("sq_m")  # specialised
    flat = torch.empty(64, dtype=torch.float16)

    def key_spec(i, value):
        a = list(base)
        if i is not None:
            a[i] = value
        a = tuple(a)
        return P._FWD.key(dev, a, options), tuple(binder(*a, **dict(options))[1])

    cases = [(None, None), (i_seq, 2 ** 31), (i_seq, 2 ** 31 - 1), (i_seq, -(2 ** 31) - 1),
             (i_stride, 1), (i_stride, 16), (i_stride, 17), (3, flat[1:]), (4, flat[1:]),
             (3, flat)]
    seen = {}
    for i, value in cases:
        k, s = key_spec(i, value)
        assert seen.get(k, s) == s, (i, value)
        seen[k] = s
    # Triton's classes: original; i64 (2**31 and -(2**31)-1); constexpr 1; not %16 (17);
    # O misaligned; LSE misaligned. 2**31-1 (i32), 16 (%16 like sq_m = 128) and an aligned O
    # specialise like the original -- the key may split those, never merge the others.
    assert len(set(seen.values())) == 6
    assert len(seen) >= 6


# ---- the launch flow, against a stand-in compiled kernel ------------------------------------

class CompiledKernel:  # the name LaunchCache checks for
    def __init__(self):
        self.calls = []
        self.function = 1234
        self.packed_metadata = ("meta",)

    @property
    def run(self):
        return self._launch

    def _launch(self, *a):
        self.calls.append(a)


class _Driver:
    class active:  # noqa: N801 - mirrors triton.runtime.driver.active
        @staticmethod
        def get_current_stream(device):
            return 778 + device


@pytest.fixture()
def flow(mods, monkeypatch):
    P, _ = mods
    cache = L.LaunchCache(P._fwd_kernel, pointers=("Q", "K", "V", "O", "LSE", "SLOPES",
                                                   "SINK_PTR", "CU_Q", "CU_K"),
                          floats=("qk_scale", "cap2"), derived=("KD", "VD"))
    assert cache.enabled, cache.reason
    ck = CompiledKernel()
    normal = []

    def fake_run(self, *args, grid, warmup, **kwargs):
        normal.append((grid, args, kwargs))
        return ck

    monkeypatch.setattr(JITFunction, "run", fake_run)
    binder = _binder(P._fwd_kernel)
    entry = (None, None, None, None, binder)
    monkeypatch.setattr(P._fwd_kernel, "device_caches", {-1: entry, 0: entry})
    cache._driver = _Driver
    calls = _prefill_calls(P, monkeypatch)
    return cache, ck, normal, calls


def test_first_call_plans_then_launches_directly(flow):
    cache, ck, normal, calls = flow
    grid, args, options, dev = calls[0]
    cache.launch(grid, args, options, dev)
    assert (cache.slow, cache.fast, len(normal), len(ck.calls)) == (1, 0, 1, 0)
    assert normal[0] == (grid, args, dict(options))
    cache.launch(grid, args, options, dev)
    assert (cache.slow, cache.fast, len(normal)) == (1, 1, 1)
    # what JITFunction.run passes: grid, stream, function, metadata, launch metadata, hooks,
    # then every argument; the hooks are empty chains, so None says the same
    assert ck.calls[0] == (*grid, 777, 1234, ("meta",), None, None, None, *args)


def test_every_distinct_key_takes_the_normal_path_once(flow):
    cache, ck, normal, calls = flow
    for grid, args, options, dev in calls + calls:
        cache.launch(grid, args, options, dev)
    keys = {cache.key(d, a, o) for _, a, o, d in calls}
    assert cache.slow == len(keys) and cache.fast == 2 * len(calls) - len(keys)
    assert len(cache.plans) == len(keys)


def test_fallbacks_keep_the_normal_path(flow, monkeypatch):
    cache, ck, normal, calls = flow
    grid, args, options, dev = calls[0]
    cache.launch(grid, args, options, dev)

    def slow_once():
        n = cache.slow
        cache.launch(grid, args, options, dev)
        return cache.slow == n + 1

    hook = lambda *a: None  # noqa: E731
    knobs.runtime.launch_enter_hook.add(hook)
    try:
        assert slow_once(), "a launch hook (profiler) must see every launch"
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert not slow_once()
    cache.kernel.pre_run_hooks.append(hook)
    try:
        assert slow_once()
    finally:
        cache.kernel.pre_run_hooks.remove(hook)
    debug = knobs.runtime.debug
    knobs.runtime.debug = not debug
    try:
        assert slow_once(), "a changed debug knob changes Triton's options"
    finally:
        knobs.runtime.debug = debug
    assert not slow_once()
    # an argument of an unplanned type: no key, normal path, no plan
    odd = (None,) + args[1:]
    assert cache.key(dev, odd, options) is None
    n = len(cache.plans)
    cache.launch(grid, odd, options, dev)
    assert len(cache.plans) == n


def test_verify_mode_catches_a_wrong_plan(flow, monkeypatch):
    cache, ck, normal, calls = flow
    grid, args, options, dev = calls[0]
    cache.launch(grid, args, options, dev)
    monkeypatch.setattr(L.LaunchCache, "verify", True)
    cache.launch(grid, args, options, dev)  # right plan: passes
    plan = next(iter(cache.plans.values()))
    plan.spec = plan.spec[:-1] + (("constexpr", "other"),)
    with pytest.raises(RuntimeError, match="collision"):
        cache.launch(grid, args, options, dev)


def test_plans_are_off_where_not_verified(mods, monkeypatch):
    P, _ = mods
    mk = lambda: L.LaunchCache(P._fwd_kernel, pointers=("Q",))  # noqa: E731
    monkeypatch.setenv("ANYATTN_TRITON_FAST_LAUNCH", "0")
    assert not mk().enabled
    monkeypatch.delenv("ANYATTN_TRITON_FAST_LAUNCH")
    monkeypatch.setattr(L, "triton_version", lambda: (3, 7))
    c = mk()
    assert not c.enabled and "not verified" in c.reason
    assert c.key(0, (), ()) is None
    with pytest.raises(ValueError, match="unknown parameters"):
        L.LaunchCache(P._fwd_kernel, pointers=("NOPE",))


def test_interpreter_keeps_the_normal_path():
    """Under TRITON_INTERPRET the kernels are InterpretedFunctions: no plans, ever (the
    interpreter tests then run the unchanged normal path)."""
    from anyattn.kernels import triton_paged as G
    from anyattn.kernels import triton_prefill as P

    if type(P._fwd_kernel) is JITFunction:
        pytest.skip("kernels are compiled in this process (GPU run)")
    for c in (P._FWD, G._PAGED, G._COMBINE):
        assert not c.enabled and c.key(0, (), ()) is None
        assert "InterpretedFunction" in c.reason


def test_plan_count_is_bounded(flow, monkeypatch):
    cache, ck, normal, calls = flow
    monkeypatch.setattr(L, "_MAX_PLANS", 3)
    for grid, args, options, dev in calls[:20]:
        cache.launch(grid, args, options, dev)
    assert len(cache.plans) <= 3


# ---- pieces: descriptor clones, raw tensordesc launches, cached configs ----------------------

def test_descriptor_clone_equals_constructor(mods):
    P, _ = mods
    from triton.tools.tensor_descriptor import TensorDescriptor

    P._DESC_PROTOS.clear()
    a = torch.randn(4 * 37, 2, 64).half()
    b = torch.randn(2 * 37, 2, 64).half()
    first = P._desc_like(TensorDescriptor, ("k",), a, [148, 128], [128, 1], [16, 64])
    clone = P._desc_like(TensorDescriptor, ("k",), b, [74, 128], [128, 1], [16, 64])
    fresh = TensorDescriptor(b, [74, 128], [128, 1], [16, 64])
    assert first.base is a and clone.base is b
    assert set(vars(clone)) == set(vars(fresh))
    for f in vars(fresh):
        if f != "base":
            assert getattr(clone, f) == getattr(fresh, f), f
    assert P._DESC_PROTOS[("k",)].base is None, "the prototype must not keep a tensor alive"


def _wrap_like_triton36(launcher, signature, metas):
    """A stand-in for Triton 3.6's wrap_handle_tensordesc (same closure variables), written
    from its documented behaviour: each TensorDescriptor argument becomes its expansion."""

    def wrap_handle_tensordesc(launcher, signature, tensordesc_meta):
        tensordesc_indices = {i for i, s in enumerate(signature) if s.startswith("tensordesc")}

        def inner(*args):
            out = list(args[:13])
            j = 0
            for i, a in enumerate(args[13:]):
                if i in tensordesc_indices:
                    out.extend(_expand(a, tensordesc_meta[j]))
                    j += 1
                else:
                    out.append(a)
            return launcher(*out)

        return inner

    return wrap_handle_tensordesc(launcher, signature, metas)


def _expand(d, meta):
    if meta is None:  # Triton's decomposition when not lowered to a CUtensorMap
        return [d.base, *d.shape, *d.strides, False, *d.shape, *d.strides]
    return [("map", d.base.data_ptr(), tuple(d.shape), meta["m"]), *d.shape, *d.strides]


@pytest.mark.parametrize("metas", [[{"m": 0}, {"m": 1}], [None, None]], ids=["tma", "decomposed"])
def test_raw_tensordesc_launch_matches_the_wrapped_launcher(monkeypatch, metas):
    from triton.tools.tensor_descriptor import TensorDescriptor

    got = []
    sig = ["*fp16", "tensordesc<fp16[16, 64]>", "i32", "tensordesc<fp16[16, 64]>", "constexpr"]
    inner = _wrap_like_triton36(lambda *a: got.append(a), sig, metas)

    class Launcher:
        launch = inner
        global_scratch_size = profile_scratch_size = 0
        launch_cooperative_grid = False
        launch_pdl = True

    assert L._RawTensordescLaunch.supported(Launcher)
    import triton.backends.nvidia.driver as drv

    monkeypatch.setattr(drv, "make_tensordesc_arg", _expand, raising=False)
    raw = L._RawTensordescLaunch(Launcher, inner)
    x, y = torch.randn(64, 64).half(), torch.randn(32, 64).half()
    for base in (x, y, x):
        args = ("ptr", TensorDescriptor(base, [base.shape[0], 64], [64, 1], [16, 64]), 5,
                TensorDescriptor(y, [32, 64], [64, 1], [16, 64]), 128)
        raw(1, 2, 3, 9, 42, "md", args)
        inner(1, 2, 3, 9, 42, False, True, None, None, "md", None, None, None, *args)
        assert len(got[-1]) == len(got[-2])
        assert all(a is b or a == b for a, b in zip(got[-1], got[-2]))
    # encoded maps cached: (x, y) at position 0, y at position 1; decomposed ones hold the
    # tensor itself and are never cached
    assert len(raw.cache) == (3 if metas[0] else 0)


def test_cached_configs_equal_the_tables(mods):
    P, G = mods
    dev = torch.device("cpu")
    for D, Dv, dt, masked, tma, sk in itertools.product((40, 64, 128), (64,),
                                                        (torch.float16, torch.float32),
                                                        (False, True), (False, True),
                                                        (None, 100, 5000)):
        assert P._cached_config(D, Dv, dt, masked, dev, tma, sk, False) == \
            P.prefill_config(D, Dv, dt, masked, dev, tma=tma, max_seqlen_k=sk)
    for b, ns in itertools.product((1, 16, 64), (None, 2)):
        assert G._cached_config(b, 8, 4, 1, 4096, 128, 128, torch.float16, dev, 16, ns, False) == \
            G.paged_config(batch=b, hkv=8, group=4, max_seqlen_q=1, max_seqlen_k=4096,
                           head_dim=128, head_dim_v=128, dtype=torch.float16, device=dev,
                           page=16, num_splits=ns)


def test_config_override_skips_the_cache(mods, monkeypatch):
    """config= (sweeps, tests) must reach the kernel even where a cached table entry exists."""
    P, _ = mods
    cap = _Capture()
    monkeypatch.setattr(P._FWD, "launch", cap)
    q = torch.randn(1, 20, 2, 32).half()
    for cfg in (None, dict(BLOCK_M=32, BLOCK_N=32, num_warps=8)):
        P.flash_attention_forward(q, q, q, torch.empty_like(q), scale=0.1, config=cfg)
    (g0, a0, o0, _), (g1, a1, o1, _) = cap.calls
    names = P._FWD.names
    assert a1[names.index("BLOCK_M")] == 32 and dict(o1)["num_warps"] == 8
    assert a0[names.index("BLOCK_M")] == 16 and g0 != g1


def test_descriptor_allocator_is_installed_in_every_thread():
    """Triton keeps its scratch allocator in a ContextVar: a thread (autograd's backward worker)
    that never set one gets Triton's null allocator unless ensure_allocator runs there."""
    import threading

    from triton.runtime import _allocation

    from anyattn.kernels._common import ensure_allocator

    seen = []

    def worker():
        before = isinstance(_allocation._allocator.get(), _allocation.NullAllocator)
        ensure_allocator()
        seen.append((before, isinstance(_allocation._allocator.get(), _allocation.NullAllocator)))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [(True, False)]


@pytest.mark.parametrize("d,dv,descriptors,pad,want", [
    (128, 32, False, True, 128),   # pointer loads: the narrow value tile padded (the sm90 bug)
    (80, 32, False, True, 128),    # query tile 128 (next power of two), value tile padded to it
    (128, 32, True, True, 32),     # TMA descriptors were right with the narrow tile
    (128, 32, False, False, 32),   # pad=False: the unpadded kernel, kept to reproduce the bug
    (64, 128, False, True, 128),   # Dv > D: the value tile is already the wider one
    (40, 40, False, True, 64),
    (8, 8, False, True, 16),       # tiles are at least 16 wide
])
def test_value_tile_width(d, dv, descriptors, pad, want):
    from anyattn.kernels._common import value_tile_width

    assert value_tile_width(d, dv, descriptors, pad) == want
