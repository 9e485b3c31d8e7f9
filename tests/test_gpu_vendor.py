"""GPU suite for the vendor adapters: every installed vendor backend vs the reference.

For each of flash_attn_4, flash_attn, flash_attn_3, flashinfer and xformers that is installed, every op
(attention, varlen, paged) and feature combination is built as real CUDA tensors; if the backend's
own reasons say it cannot serve the call the case is skipped with those reasons (what it does not
claim is not tested), otherwise it is forced (strict) and compared with the reference backend.
Backward: every backend that claims ``grad`` is differentiated (q, k, v and the sink logits) and
compared with the reference's gradients. Absent packages skip cleanly. Run with
``pytest -m gpu tests/test_gpu_vendor.py`` (``-rP`` also prints the first-call / JIT times).
"""

from __future__ import annotations

import time

import pytest
import torch

import anyattn
from anyattn import backends, selector
from anyattn import request as rq
from anyattn.backends.reference import ReferenceBackend
from tests import inputs
from tests.inputs import rel_err

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

VENDOR = ("flash_attn_4", "flash_attn", "flash_attn_3", "flashinfer", "xformers")
REF = ReferenceBackend()
DEV = "cuda"

FEATURES = {
    "plain": dict(),
    "causal": dict(causal=True),
    "gqa": dict(causal=True, gqa=True),
    "window": dict(causal=True, window=(5, -1)),
    "window_both": dict(window=(4, 3)),
    "softcap": dict(causal=True, softcap=20.0),
    "alibi": dict(causal=True, alibi=True),
    "sinks": dict(causal=True, sinks=True),
    "lse": dict(causal=True, return_lse=True),
    "out": dict(causal=True, out=True),
    "everything": dict(causal=True, gqa=True, window=(6, -1), softcap=30.0, sinks=True, return_lse=True),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _backend_or_skip(name):
    b = backends.get(name)
    avail = b.availability()
    if not avail.installed:
        pytest.skip(f"{name} not installed")
    if avail.error:
        pytest.skip(f"{name} unavailable: {avail.error}")
    return b


def _options(feat, hq, dev):
    f = dict(FEATURES[feat])
    g = torch.Generator().manual_seed(1)
    opts = dict(causal=f.get("causal", False), window=f.get("window", (-1, -1)), softcap=f.get("softcap", 0.0),
                return_lse=f.get("return_lse", False), alibi_slopes=None, sinks=None)
    if f.get("alibi"):
        opts["alibi_slopes"] = (torch.rand(hq, generator=g) * 0.3).to(dev)
    if f.get("sinks"):
        opts["sinks"] = torch.randn(hq, generator=g).to(dev)
    return opts, f.get("out", False)


def _check(got, want, dtype, return_lse):
    o, lse = (got if return_lse else (got, None))
    wo, wl = want
    tol = 2e-2 if dtype == torch.bfloat16 else 5e-3
    torch.testing.assert_close(o.float(), wo.float(), atol=tol, rtol=tol)
    if return_lse:
        finite = torch.isfinite(wl)
        assert torch.equal(torch.isfinite(lse), finite), "lse: -inf rows differ"
        torch.testing.assert_close(lse[finite], wl[finite].float(), atol=2e-2, rtol=2e-2)


def _skip_unless_claimed(b, req, opts=None):
    reasons = b.reasons(req)
    if reasons:
        pytest.skip(f"{b.name} does not claim {req.describe()}: {'; '.join(reasons)}")


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("feat", list(FEATURES))
@pytest.mark.parametrize("name", VENDOR)
def test_dense(name, feat, dtype):
    b = _backend_or_skip(name)
    dt, dev = DTYPES[dtype], DEV
    hkv = 2 if FEATURES[feat].get("gqa") else 8
    q, k, v = inputs.dense(b=2, sq=37, sk=53, hq=8, hkv=hkv, d=128, dtype=dt, device=dev, seed=3)
    opts, want_out = _options(feat, 8, dev)
    out = torch.empty_like(q) if want_out else None
    req = rq.dense_request(q, k, v, scale=None, out=out, **opts)[0]
    _skip_unless_claimed(b, req, opts)
    got = anyattn.attention(q, k, v, out=out, backend=name, **opts)
    want = REF.attention(q, k, v, scale=128 ** -0.5, out=None, **{**opts, "return_lse": True})
    if want_out:
        assert (got[0] if opts["return_lse"] else got) is out
    _check(got, want, dt, opts["return_lse"])


@pytest.mark.parametrize("dtype", ["bf16"])
@pytest.mark.parametrize("feat", list(FEATURES))
@pytest.mark.parametrize("name", VENDOR)
def test_varlen(name, feat, dtype):
    b = _backend_or_skip(name)
    dt, dev = DTYPES[dtype], DEV
    hkv = 2 if FEATURES[feat].get("gqa") else 8
    lq, lk = [17, 0, 64, 5], [33, 4, 64, 40]
    q, k, v, cq, ck = inputs.varlen(lq, lk, hq=8, hkv=hkv, d=128, dtype=dt, device=dev, seed=4)
    opts, want_out = _options(feat, 8, dev)
    out = torch.empty_like(q) if want_out else None
    req = rq.varlen_request(q, k, v, cq, ck, max(lq), max(lk), scale=None, out=out, **opts)[0]
    _skip_unless_claimed(b, req, opts)
    got = anyattn.varlen_attention(q, k, v, cq, ck, max(lq), max(lk), out=out, backend=name, **opts)
    want = REF.varlen(q, k, v, cq, ck, max(lq), max(lk), scale=128 ** -0.5, out=None,
                      **{**opts, "return_lse": True})
    _check(got, want, dt, opts["return_lse"])


@pytest.mark.parametrize("chunked", [False, True], ids=["decode", "chunked"])
@pytest.mark.parametrize("feat", list(FEATURES))
@pytest.mark.parametrize("name", VENDOR)
def test_paged(name, feat, chunked):
    b = _backend_or_skip(name)
    dt, dev = torch.bfloat16, DEV
    hkv = 2 if FEATURES[feat].get("gqa") else 8
    used = [300, 17, 520]
    nq = [4, 1, 7] if chunked else None
    for bs in (16, 256):  # the smallest page size the backend takes
        q, kc, vc, table, su, cu_q, mq = inputs.paged(used, nq=nq, block_size=bs, hq=8, hkv=hkv, d=128, dtype=dt,
                                                      device=dev, seed=5)
        opts, want_out = _options(feat, 8, dev)
        out = torch.empty_like(q) if want_out else None
        req = rq.paged_request(q, kc, vc, table, su, cu_seqlens_q=cu_q, max_seqlen_q=mq, max_seqlen_k=None,
                               scale=None, out=out, **opts)[0]
        if not any("block size" in r for r in b.reasons(req)):
            break
    _skip_unless_claimed(b, req, opts if chunked else None)  # decode: nothing lies to the right
    got = anyattn.paged_attention(q, kc, vc, table, su, cu_seqlens_q=cu_q, max_seqlen_q=mq, out=out,
                                  backend=name, **opts)
    want = REF.paged(q, kc, vc, table, su, cu_seqlens_q=cu_q, max_seqlen_q=mq, max_seqlen_k=None,
                     scale=128 ** -0.5, out=None, **{**opts, "return_lse": True})
    _check(got, want, dt, opts["return_lse"])


@pytest.mark.parametrize("name", VENDOR)
def test_reasons_never_raise_and_explain(name):
    """Installed or not, broken or not: the adapter answers with reasons, never an exception."""
    b = backends.get(name)
    for op in ("attention", "varlen", "paged"):
        req = selector.describe_request(op=op, dtype="bf16", head_dim=128, causal=True, device="cuda")
        reasons = b.reasons(req)
        assert all(isinstance(r, str) and r for r in reasons)
    decision = selector.decide_for(dtype="bfloat16", head_dim=128, causal=True)
    cand = {c.name: c for c in decision.candidates}
    assert name in cand and decision.chosen is not None


# ----------------------------------------------------------------------------------------------
# Backward (fwd + bwd) against the reference's autograd, in fp32 from the same bf16 inputs
# ----------------------------------------------------------------------------------------------
GRAD_FEATURES = ("plain", "causal", "gqa", "window", "window_both", "softcap", "sinks", "lse", "everything")


def _grads(fn, tensors, lse_weight):
    for t in tensors:
        t.grad = None
    res = fn()
    o, lse = res if isinstance(res, tuple) else (res, None)
    g = torch.Generator(device="cpu").manual_seed(7)
    w = torch.randn(o.shape, generator=g).to(o.device)
    loss = (o.float() * w).sum() + (lse.float().nan_to_num(neginf=0.0).sum() * lse_weight if lse is not None else 0)
    loss.backward()
    return o.detach().float(), [t.grad.detach().float().clone() for t in tensors]


def _leafs(*ts):
    return [t.detach().clone().requires_grad_() for t in ts]


@pytest.mark.parametrize("feat", GRAD_FEATURES)
@pytest.mark.parametrize("op", ["attention", "varlen"])
@pytest.mark.parametrize("name", VENDOR)
def test_backward(name, op, feat):
    b = _backend_or_skip(name)
    dt, dev = torch.bfloat16, DEV
    hkv = 2 if FEATURES[feat].get("gqa") else 8
    opts, _ = _options(feat, 8, dev)
    if op == "attention":
        q, k, v = _leafs(*inputs.dense(b=2, sq=97, sk=131, hq=8, hkv=hkv, d=128, dtype=dt, device=dev, seed=11))
        sink = _leafs(opts["sinks"])[0] if opts["sinks"] is not None else None
        req = rq.dense_request(q, k, v, scale=None, out=None, **{**opts, "sinks": sink})[0]
        _skip_unless_claimed(b, req)

        def run(be, q=q, k=k, v=v, sink=sink):
            return anyattn.attention(q, k, v, backend=be, **{**opts, "sinks": sink})
    else:
        lq, lk = [17, 0, 64, 5], [33, 4, 64, 40]
        q0, k0, v0, cq, ck = inputs.varlen(lq, lk, hq=8, hkv=hkv, d=128, dtype=dt, device=dev, seed=12)
        q, k, v = _leafs(q0, k0, v0)
        sink = _leafs(opts["sinks"])[0] if opts["sinks"] is not None else None
        req = rq.varlen_request(q, k, v, cq, ck, max(lq), max(lk), scale=None, out=None,
                                **{**opts, "sinks": sink})[0]
        _skip_unless_claimed(b, req)

        def run(be, q=q, k=k, v=v, sink=sink):
            return anyattn.varlen_attention(q, k, v, cq, ck, max(lq), max(lk), backend=be, **{**opts, "sinks": sink})
    tensors = [t for t in (q, k, v, sink) if t is not None]
    lse_w = 0.5 if opts["return_lse"] else 0.0
    o, grads = _grads(lambda: run(name), tensors, lse_w)
    wo, wgrads = _grads(lambda: run("reference"), tensors, lse_w)
    assert rel_err(o, wo) < 1e-2
    for label, g, w in zip(("dq", "dk", "dv", "dsinks"), grads, wgrads):
        assert torch.isfinite(g).all(), f"{label} has non-finite values"
        assert rel_err(g, w) < 2e-2, f"{name} {op} {feat}: {label} relative error {rel_err(g, w):.3g}"


@pytest.mark.parametrize("feat", ["causal", "gqa", "window_both", "softcap", "sinks", "everything"])
@pytest.mark.parametrize("op", ["attention", "varlen"])
@pytest.mark.parametrize("name", VENDOR)
def test_backward_from_saved_output(name, op, feat):
    """What the custom ops (torch.compile) run for a backend that sets ``backward_from_saved``:
    its backward from the saved out/lse, twice (the first call also checks it against the
    backend's own autograd path), against the reference's gradients; the check must pass here."""
    b = _backend_or_skip(name)
    if not b.backward_from_saved:
        pytest.skip(f"{name} recomputes its forward for the backward")
    dt, dev = torch.bfloat16, DEV
    hkv = 2 if FEATURES[feat].get("gqa") else 8
    opts, _ = _options(feat, 8, dev)
    opts.pop("return_lse")
    g = torch.Generator(device="cpu").manual_seed(5)
    if op == "attention":
        q, k, v = inputs.dense(b=2, sq=97, sk=131, hq=8, hkv=hkv, d=128, dtype=dt, device=dev, seed=21)
        req = rq.dense_request(q, k, v, scale=None, out=None, return_lse=True, grad=True, **opts)[0]
        lengths = ()
    else:
        lq, lk = [17, 0, 64, 5], [33, 4, 64, 40]
        q, k, v, cq, ck = inputs.varlen(lq, lk, hq=8, hkv=hkv, d=128, dtype=dt, device=dev, seed=22)
        req = rq.varlen_request(q, k, v, cq, ck, max(lq), max(lk), scale=None, out=None, return_lse=True,
                                grad=True, **opts)[0]
        lengths = (cq, ck, max(lq), max(lk))
    _skip_unless_claimed(b, req)
    kw = dict(opts, scale=128 ** -0.5)
    o, lse = getattr(b, op)(q, k, v, *lengths, **kw, return_lse=True, out=None)
    wo, wl = getattr(REF, op)(q, k, v, *lengths, **kw, return_lse=True, out=None)
    go = torch.randn(o.shape, generator=g).to(dev, dt)
    gl = torch.randn(lse.shape, generator=g).to(dev) * 0.5 if feat in ("everything",) else None
    want = getattr(REF, op + "_backward")(go, gl, q, k, v, *lengths, wo, wl, **kw)
    before = dict(getattr(b, "_saved_bwd_ok", {}))  # the backend object is shared by the tests
    for round_ in range(2):
        got = getattr(b, op + "_backward")(go, gl, q, k, v, *lengths, o, lse, **kw)
        for label, x, w in zip(("dq", "dk", "dv", "dsinks"), got, want):
            if w is None:
                continue
            assert torch.isfinite(x).all(), f"{label} has non-finite values"
            assert rel_err(x.float(), w.float()) < 2e-2, f"{name} {op} {feat} call {round_}: {label}"
    checks = getattr(b, "_saved_bwd_ok", {})
    mine = {key: ok for key, ok in checks.items() if key not in before}
    assert checks and all(mine.values()), f"the saved-output backward differed from autograd's: {mine}"


HEAD_DIMS = ((64, 64), (96, 96), (256, 256), (192, 128), (128, 64))


@pytest.mark.parametrize("grad", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("dims", HEAD_DIMS, ids=[f"d{a}-dv{b}" for a, b in HEAD_DIMS])
@pytest.mark.parametrize("name", VENDOR)
def test_head_dims(name, dims, grad):
    b = _backend_or_skip(name)
    d, dv = dims
    q, k, v = inputs.dense(b=2, sq=77, sk=77, hq=4, hkv=2, d=d, dv=dv, dtype=torch.bfloat16, device=DEV, seed=13)
    if grad:
        q, k, v = _leafs(q, k, v)
    req = rq.dense_request(q, k, v, causal=True, scale=None, window=(-1, -1), softcap=0.0, alibi_slopes=None,
                           sinks=None, return_lse=False, out=None)[0]
    _skip_unless_claimed(b, req)
    common = dict(causal=True)
    if not grad:
        got = anyattn.attention(q, k, v, backend=name, **common)
        want = anyattn.attention(q, k, v, backend="reference", **common)
        assert rel_err(got, want) < 1e-2
        return
    o, grads = _grads(lambda: anyattn.attention(q, k, v, backend=name, **common), [q, k, v], 0.0)
    wo, wgrads = _grads(lambda: anyattn.attention(q, k, v, backend="reference", **common), [q, k, v], 0.0)
    assert rel_err(o, wo) < 1e-2
    for g, w in zip(grads, wgrads):
        assert rel_err(g, w) < 2e-2


@pytest.mark.parametrize("bs", [16, 64, 128])
@pytest.mark.parametrize("name", VENDOR)
def test_paged_block_sizes(name, bs):
    """Every page size a backend claims, including FA4's TMA path (page = its 128-key tile)."""
    b = _backend_or_skip(name)
    q, kc, vc, table, su, _, _ = inputs.paged([300, 17, 520, 128], block_size=bs, hq=8, hkv=2, d=128,
                                              dtype=torch.bfloat16, device=DEV, seed=14)
    req = rq.paged_request(q, kc, vc, table, su, cu_seqlens_q=None, max_seqlen_q=1, max_seqlen_k=None, causal=True,
                           scale=None, window=(-1, -1), softcap=0.0, alibi_slopes=None, sinks=None, return_lse=True,
                           out=None)[0]
    _skip_unless_claimed(b, req)
    got = anyattn.paged_attention(q, kc, vc, table, su, return_lse=True, backend=name)
    want = REF.paged(q, kc, vc, table, su, cu_seqlens_q=None, max_seqlen_q=1, max_seqlen_k=None, causal=True,
                     scale=128 ** -0.5, window=(-1, -1), softcap=0.0, alibi_slopes=None, sinks=None, return_lse=True,
                     out=None)
    _check(got, want, torch.bfloat16, True)


@pytest.mark.parametrize("name", ["flash_attn_4", "flashinfer"])
def test_first_call_costs(name):
    """Import and first-call (JIT compile) times, printed for docs/PERF.md; results checked too."""
    b = backends.get(name)
    t0 = time.perf_counter()
    if not b.availability().usable:
        pytest.skip(f"{name}: {b.availability().error or 'not installed'}")
    prep = getattr(b, "prepare", None)
    err = prep() if prep else None
    if err:
        pytest.skip(f"{name}: {err}")
    _ = b.lib
    t_import = time.perf_counter() - t0
    report = {"import_s": round(t_import, 2)}
    q, k, v = inputs.dense(b=1, sq=1024, sk=1024, hq=16, hkv=4, d=128, dtype=torch.bfloat16, device=DEV, seed=15)
    for label, fn in (("prefill_first_call_s", lambda: anyattn.attention(q, k, v, causal=True, backend=name)),
                      ("prefill_second_call_s", lambda: anyattn.attention(q, k, v, causal=True, backend=name))):
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        report[label] = round(time.perf_counter() - t0, 3)
    want = anyattn.attention(q, k, v, causal=True, backend="reference")
    assert rel_err(out, want) < 1e-2
    qd, kc, vc, table, su, _, _ = inputs.paged([4000, 333, 1000], block_size=16, hq=16, hkv=4, d=128,
                                               dtype=torch.bfloat16, device=DEV, seed=16)
    for label in ("decode_first_call_s", "decode_second_call_s"):
        t0 = time.perf_counter()
        out = anyattn.paged_attention(qd, kc, vc, table, su, backend=name)
        torch.cuda.synchronize()
        report[label] = round(time.perf_counter() - t0, 3)
    want = anyattn.paged_attention(qd, kc, vc, table, su, backend="reference")
    assert rel_err(out, want) < 1e-2
    print(f"\n{name} {b.version()} cold start: {report}")
