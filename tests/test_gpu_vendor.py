"""GPU suite for the vendor adapters: every installed vendor backend vs the reference.

For each of flash_attn, flash_attn_3, flashinfer and xformers that is installed, every op
(attention, varlen, paged) and feature combination is built as real CUDA tensors; if the backend's
own reasons say it cannot serve the call the case is skipped with those reasons (what it does not
claim is not tested), otherwise it is forced (strict) and compared with the reference backend.
Absent packages skip cleanly. Run with ``pytest -m gpu tests/test_gpu_vendor.py``.
"""

from __future__ import annotations

import pytest
import torch

import anyattn
from anyattn import backends, selector
from anyattn import request as rq
from anyattn.backends.reference import ReferenceBackend
from tests import inputs

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

VENDOR = ("flash_attn", "flash_attn_3", "flashinfer", "xformers")
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
