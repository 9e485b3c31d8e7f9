"""The Triton backward (anyattn/kernels/triton_backward.py) under Triton's CPU interpreter.

Gradients are compared with torch.autograd on an independent float64 formula written here
(tests/kernels/_grad_ref.py: logsumexp over the visible logits plus the sink column). The loss is
``sum(out * dO) + sum(lse * dlse)`` with fresh random dO/dlse, so a gradient flowing into the
lse is covered too. dq/dk/dv are NaN-poisoned strided views of larger buffers: an unwritten
element or a write outside the view fails. Shapes are tiny and odd (head dims 24/40/48,
Dv != D, Sq != Sk both ways, GQA and MQA, varlen with empty sequences). bf16 is left out: the
interpreter mishandles it on CPU (the GPU suite covers it).
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _interpret import require_interpreter  # noqa: E402

require_interpreter(__file__)

from _grad_ref import ref_grads as _ref_grads  # noqa: E402

from anyattn.backends.triton import TritonBackend  # noqa: E402
from anyattn.kernels import triton_backward as BW  # noqa: E402
from anyattn.kernels import triton_prefill as P  # noqa: E402

TOL = {torch.float16: 1e-2, torch.float32: 1e-5}


def _rel(a, b):
    assert not torch.isnan(a).any(), "NaN in a gradient (unwritten element or bad masking)"
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _poisoned(shape, dtype, pad_axis):
    """A NaN buffer one larger along ``pad_axis`` and the strided view that skips index 0."""
    full_shape = list(shape)
    full_shape[pad_axis] += 1
    full = torch.full(full_shape, float("nan"), dtype=dtype)
    return full, full.narrow(pad_axis, 1, shape[pad_axis])


def _extras(hq, b, feat, gen):
    kw = {k: v for k, v in feat.items() if k in ("causal", "window", "softcap")}
    slopes = sinks = None
    if feat.get("alibi") == "batch":
        slopes = torch.rand(b, hq, generator=gen) * 0.3
    elif feat.get("alibi"):
        slopes = torch.rand(hq, generator=gen) * 0.3
    if feat.get("sinks"):
        sinks = torch.randn(hq, generator=gen) * 2
    return kw, slopes, sinks


def _ref_kw(kw):
    return dict(causal=kw.get("causal", False), window=kw.get("window", (-1, -1)),
                softcap=kw.get("softcap", 0.0))


DENSE = [
    # B, Sq, Sk, Hq, Hkv, D, Dv, features
    (2, 37, 37, 4, 2, 40, 40, dict(dlse=True)),
    (1, 20, 33, 2, 1, 32, 32, dict(causal=True)),
    (1, 33, 20, 2, 1, 32, 32, dict(causal=True, dlse=True)),  # Sq > Sk: top rows see nothing
    (1, 29, 35, 4, 2, 24, 24, dict(window=(7, 3))),
    (1, 31, 31, 2, 2, 32, 32, dict(window=(5, -1), causal=True, sinks=True, dlse=True)),
    (2, 19, 19, 4, 4, 32, 16, dict(softcap=3.0, alibi="batch")),  # Dv != D
    (1, 33, 27, 6, 2, 48, 48, dict(alibi=True, sinks=True, causal=True)),
    (1, 1, 37, 4, 1, 32, 32, dict(causal=True, dlse=True)),  # one query row, MQA
    (1, 17, 17, 2, 1, 32, 32, dict(window=(1, 0))),  # two keys per row (a diagonal-only
    # window has dq = dk = 0 exactly, where a relative error means nothing)
    (1, 30, 30, 2, 1, 16, 40, dict(window=(-1, 4), softcap=2.0, sinks=True)),  # Dv > D
]


def _dense_case(case, dtype, seed, config=None):
    B, Sq, Sk, Hq, Hkv, D, Dv, feat = case
    gen = torch.Generator().manual_seed(seed)
    kw, slopes, sinks = _extras(Hq, B, feat, gen)
    q = torch.randn(B, Sq, Hq, D, generator=gen).to(dtype)
    k = torch.randn(B, Hkv, Sk, D, generator=gen).to(dtype).transpose(1, 2)  # head-major
    v = torch.randn(B, Sk, Hkv, Dv + 3, generator=gen).to(dtype)[..., :Dv]  # padded rows
    scale = 1.0 / math.sqrt(D)
    out = torch.empty(B, Sq, Hq, Dv, dtype=dtype)
    lse = torch.empty(B, Hq, Sq)
    P.flash_attention_forward(q, k, v, out, lse, scale=scale, alibi_slopes=slopes, sinks=sinks,
                              **kw)
    do = torch.randn(B, Hq, Sq, Dv, generator=gen).to(dtype).transpose(1, 2)  # strided dO
    dlse = torch.randn(B, Hq, Sq, generator=gen) if feat.get("dlse") else None
    bufs = [_poisoned(q.shape, dtype, 2), _poisoned(k.shape, dtype, 2),
            _poisoned(v.shape, dtype, 3)]
    dq, dk, dv, ds = BW.flash_attention_backward(
        do, q, k, v, out, lse, dlse, scale=scale, alibi_slopes=slopes, sinks=sinks,
        dq=bufs[0][1], dk=bufs[1][1], dv=bufs[2][1], config=config, **kw)
    for full, _ in bufs[:2]:
        assert torch.isnan(full[:, :, 0]).all(), "wrote outside the gradient view"
    assert torch.isnan(bufs[2][0][..., 0]).all(), "wrote outside the gradient view"
    seqs = [(b, b, b, b) for b in range(B)]
    ref = _ref_grads(q, k, v, do, dlse, seqs, sinks=sinks, slopes=slopes, scale=scale,
                     **_ref_kw(kw))
    return (dq, dk, dv, ds), ref


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", DENSE, ids=[f"dense{i}" for i in range(len(DENSE))])
def test_dense_grads(case, dtype):
    seed = int(torch.randint(0, 2**31 - 1, ()))  # fresh inputs each run; printed on failure
    got, ref = _dense_case(case, dtype, seed)
    for name, g, r in zip(("dq", "dk", "dv"), got, ref):
        assert g.dtype == dtype
        assert _rel(g, r) < TOL[dtype], f"{name} (seed {seed})"
    if ref[3] is not None:
        assert _rel(got[3], ref[3]) < TOL[dtype], f"dsinks (seed {seed})"
    else:
        assert got[3] is None


@pytest.mark.parametrize("cfg", [dict(dkdv=(16, 32, 4, 1), dq=(32, 16, 4, 1)),
                                 dict(dkdv=(32, 16, 4, 1), dq=(16, 32, 4, 1))],
                         ids=["tall", "wide"])
@pytest.mark.parametrize("case", [DENSE[1], DENSE[3], DENSE[4]],
                         ids=["causal", "window", "left-causal-sinks"])
def test_block_shapes(case, cfg):
    """BLOCK_M != BLOCK_N moves the masked/unmasked split points of both loops."""
    seed = int(torch.randint(0, 2**31 - 1, ()))
    got, ref = _dense_case(case, torch.float32, seed, config=cfg)
    for name, g, r in zip(("dq", "dk", "dv"), got, ref):
        assert _rel(g, r) < TOL[torch.float32], f"{name} (seed {seed})"


@pytest.mark.parametrize("case", [(1, 200, 290, 2, 1, 16, 16, dict(causal=True, dlse=True)),
                                  (1, 270, 260, 2, 2, 16, 16, dict(window=(70, 20), sinks=True))],
                         ids=["causal-sq<sk", "window-sinks"])
def test_measured_sm90_blocks_over_several_tiles(case):
    """The H200-measured d128 entry (64-row dK/dV steps over 128-key blocks, 64 x 128 dQ) with
    sequences several blocks long, so masked edge tiles and unmasked middles both occur."""
    seed = int(torch.randint(0, 2**31 - 1, ()))
    got, ref = _dense_case(case, torch.float32, seed, config=BW.SM90_TMA_D128)
    for name, g, r in zip(("dq", "dk", "dv", "dsinks"), got, ref):
        if r is not None:
            assert _rel(g, r) < TOL[torch.float32], f"{name} (seed {seed})"


VARLEN = [
    # q lengths, k lengths, Hq, Hkv, D, Dv, features
    ([0, 1, 21, 5, 3], [4, 1, 30, 5, 0], 4, 2, 40, 40, dict(causal=True, dlse=True)),
    ([17, 0, 9], [17, 3, 33], 2, 1, 32, 24, dict(sinks=True)),
    ([13, 25], [30, 25], 4, 1, 32, 32, dict(window=(6, 2), softcap=3.0, sinks=True, dlse=True)),
    ([1, 1, 7], [19, 0, 7], 4, 4, 16, 16, dict(alibi="batch", causal=True)),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", VARLEN, ids=[f"varlen{i}" for i in range(len(VARLEN))])
def test_varlen_grads(case, dtype):
    _varlen_case(case, dtype, None)


@pytest.mark.parametrize("case", VARLEN[:3], ids=[f"varlen{i}" for i in range(3)])
def test_varlen_tma_path(case, monkeypatch):
    """The descriptor path per sequence (bounded at each sequence's end), fp16."""
    seen = []
    real = BW._tma_ok
    monkeypatch.setattr(BW, "_tma_ok", lambda *t: seen.append(real(*t)) or seen[-1])
    _varlen_case(case, torch.float16, dict(TMA=True))
    assert seen == [True], "the descriptor path was not taken"


def _varlen_case(case, dtype, config):
    lq, lk, Hq, Hkv, D, Dv, feat = case
    seed = int(torch.randint(0, 2**31 - 1, ()))
    gen = torch.Generator().manual_seed(seed)
    kw, slopes, sinks = _extras(Hq, len(lq), feat, gen)
    cu_q = torch.tensor([0] + lq).cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0] + lk).cumsum(0).to(torch.int32)
    Tq, Tk = int(cu_q[-1]), int(cu_k[-1])
    q = torch.randn(Tq, Hq, D, generator=gen).to(dtype)
    k = torch.randn(Hkv, Tk, D, generator=gen).to(dtype).transpose(0, 1)
    v = torch.randn(Tk, Hkv, Dv, generator=gen).to(dtype)
    out = torch.empty(Tq, Hq, Dv, dtype=dtype)
    lse = torch.empty(Hq, Tq)
    vl = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max(lq), max_seqlen_k=max(lk))
    P.flash_attention_forward(q, k, v, out, lse, scale=D ** -0.5, alibi_slopes=slopes,
                              sinks=sinks, **vl, **kw)
    do = torch.randn(Tq, Hq, Dv, generator=gen).to(dtype)
    dlse = torch.randn(Hq, Tq, generator=gen) if feat.get("dlse") else None
    bufs = [_poisoned(q.shape, dtype, 1), _poisoned(k.shape, dtype, 1),
            _poisoned(v.shape, dtype, 2)]
    dq, dk, dv, ds = BW.flash_attention_backward(
        do, q, k, v, out, lse, dlse, scale=D ** -0.5, alibi_slopes=slopes, sinks=sinks,
        dq=bufs[0][1], dk=bufs[1][1], dv=bufs[2][1], config=config, **vl, **kw)
    seqs = []
    for b in range(len(lq)):
        qi = slice(int(cu_q[b]), int(cu_q[b + 1]))
        ki = slice(int(cu_k[b]), int(cu_k[b + 1]))
        seqs.append((qi, ki, (slice(None), qi), b))
    rq, rk, rv, rs = _ref_grads(q, k, v, do, dlse, seqs, sinks=sinks, slopes=slopes,
                                scale=D ** -0.5, **_ref_kw(kw))
    for name, g, r in (("dq", dq, rq), ("dk", dk, rk), ("dv", dv, rv)):
        assert _rel(g, r) < TOL[dtype], f"{name} (seed {seed})"
    # keys of a sequence without queries (and of an empty-key sequence) get exact zeros
    for b in range(len(lq)):
        if lq[b] == 0 and lk[b] > 0:
            ki = slice(int(cu_k[b]), int(cu_k[b + 1]))
            assert (dk[ki] == 0).all() and (dv[ki] == 0).all()
    if rs is not None:
        assert _rel(ds, rs) < TOL[dtype], f"dsinks (seed {seed})"


def test_deterministic():
    """Two runs on the same inputs give the same bits (no atomics anywhere)."""
    case = (2, 37, 29, 6, 2, 32, 32, dict(causal=True, sinks=True, alibi=True, dlse=True))
    seed = int(torch.randint(0, 2**31 - 1, ()))
    a, _ = _dense_case(case, torch.float16, seed)
    b, _ = _dense_case(case, torch.float16, seed)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_zero_length_dense():
    """Sq = 0 gives zero dk/dv; Sk = 0 gives zero dq (no NaN from an empty softmax)."""
    for sq, sk in ((0, 5), (5, 0)):
        q = torch.randn(1, sq, 2, 16).half()
        k = torch.randn(1, sk, 1, 16).half()
        v = torch.randn(1, sk, 1, 16).half()
        out = torch.zeros(1, sq, 2, 16).half()
        lse = torch.full((1, 2, sq), -math.inf)
        dq, dk, dv, _ = BW.flash_attention_backward(
            torch.randn_like(out), q, k, v, out, lse, scale=0.25, causal=True,
            dq=torch.full_like(q, float("nan")), dk=torch.full_like(k, float("nan")),
            dv=torch.full_like(v, float("nan")))
        for g in (dq, dk, dv):
            assert (g == 0).all()


# ---- the backend: autograd.Function and the custom-op entry points ---------------------------

def test_backend_autograd_dense():
    """TritonBackend.attention with requires_grad inputs is differentiable (q, k, v, sinks and
    the returned lse), and out= receives the same values."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    be = TritonBackend()
    B, Sq, Sk, Hq, Hkv, D = 1, 21, 26, 4, 2, 32
    q = torch.randn(B, Sq, Hq, D, generator=gen).requires_grad_()
    k = torch.randn(B, Sk, Hkv, D, generator=gen).requires_grad_()
    v = torch.randn(B, Sk, Hkv, D, generator=gen).requires_grad_()
    sinks = torch.randn(Hq, generator=gen).requires_grad_()
    out = torch.full((B, Sq, Hq, D), float("nan"))
    o, lse = be.attention(q, k, v, causal=True, scale=0.2, window=(9, 0), softcap=4.0,
                          alibi_slopes=None, sinks=sinks, return_lse=True, out=out)
    assert o.requires_grad and lse.requires_grad
    assert torch.equal(out, o.detach())
    do, dl = torch.randn(o.shape, generator=gen), torch.randn(lse.shape, generator=gen)
    ((o * do).sum() + (lse * dl).sum()).backward()
    rq, rk, rv, rs = _ref_grads(q, k, v, do, dl, [(0, 0, 0, 0)], sinks=sinks, slopes=None,
                                scale=0.2, causal=True, window=(9, 0), softcap=4.0)
    for name, g, r in (("dq", q.grad, rq), ("dk", k.grad, rk), ("dv", v.grad, rv),
                       ("dsinks", sinks.grad, rs)):
        assert _rel(g, r) < TOL[torch.float32], name


def test_backend_autograd_varlen_and_entry_points():
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    be = TritonBackend()
    lq, lk, Hq, Hkv, D = [9, 0, 14], [12, 4, 14], 2, 1, 16
    cu_q = torch.tensor([0] + lq).cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0] + lk).cumsum(0).to(torch.int32)
    q = torch.randn(int(cu_q[-1]), Hq, D, generator=gen).half().requires_grad_()
    k = torch.randn(int(cu_k[-1]), Hkv, D, generator=gen).half().requires_grad_()
    v = torch.randn(int(cu_k[-1]), Hkv, D, generator=gen).half().requires_grad_()
    opts = dict(causal=True, scale=0.25, window=(-1, -1), softcap=0.0, alibi_slopes=None,
                sinks=None)
    o, lse = be.varlen(q, k, v, cu_q, cu_k, max(lq), max(lk), return_lse=False, out=None,
                       **opts)
    assert lse is None and o.requires_grad
    do = torch.randn(o.shape, generator=gen).half()
    o.backward(do)
    seqs = [(slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1])),
             None, b) for b in range(3)]
    ref = _ref_grads(q, k, v, do, None, seqs, sinks=None, slopes=None, scale=0.25, causal=True)
    for g, r in zip((q.grad, k.grad, v.grad), ref):
        assert _rel(g, r) < TOL[torch.float16]
    # the custom-op entry point shares the code: same bits as autograd gave
    with torch.no_grad():
        o2, lse2 = be.varlen(q, k, v, cu_q, cu_k, max(lq), max(lk), return_lse=True, out=None,
                             **opts)
    dq, dk, dv, ds = be.varlen_backward(do, None, q.detach(), k.detach(), v.detach(), cu_q,
                                        cu_k, max(lq), max(lk), o2, lse2, **opts)
    assert ds is None
    for g, r in zip((dq, dk, dv), (q.grad, k.grad, v.grad)):
        assert torch.equal(g, r)


def test_backend_autograd_expanded_grad():
    """``out.sum().backward()`` hands the backward an expanded dO (all strides 0)."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    q = torch.randn(2, 13, 2, 16, generator=gen).requires_grad_()
    k = torch.randn(2, 18, 1, 16, generator=gen).requires_grad_()
    v = torch.randn(2, 18, 1, 16, generator=gen).requires_grad_()
    o, _ = TritonBackend().attention(q, k, v, causal=False, scale=0.3, window=(4, 4),
                                     softcap=0.0, alibi_slopes=None, sinks=None,
                                     return_lse=False, out=None)
    o.sum().backward()
    ref = _ref_grads(q, k, v, torch.ones(o.shape), None, [(0, 0, 0, 0), (1, 1, 1, 1)],
                     sinks=None, slopes=None, scale=0.3, window=(4, 4))
    for g, r in zip((q.grad, k.grad, v.grad), ref):
        assert _rel(g, r) < TOL[torch.float32]


def test_backend_declares_grad_and_refuses_paged_grad():
    from anyattn.request import Request

    be = TritonBackend()
    assert "grad" in be.caps.features
    req = Request(op="paged", device_type="cuda", device_index=0, capability=(9, 0),
                  dtype=torch.float16, head_dim=64, head_dim_v=64, gqa_ratio=1, causal=True,
                  window=False, softcap=False, alibi=False, sinks=False, lse=False, out=False,
                  grad=True, causal_offset=True, block_size=16, window_right=False)
    reasons = be.extra_reasons(req)
    assert any("paged" in r and "backward" in r for r in reasons), reasons


@pytest.mark.parametrize("case", [DENSE[0], DENSE[2], DENSE[4], DENSE[5], DENSE[9]],
                         ids=["gqa-d40", "causal-sq>sk", "left-sinks", "softcap-alibi-dv16",
                              "right-dv40"])
def test_tma_path(case, monkeypatch):
    """config={"TMA": True}: Q/dO and K/V tiles through tensor descriptors bounded by the
    sequence (the interpreter emulates them); rows past the end must read as zero."""
    B, Sq, Sk, Hq, Hkv, D, Dv, feat = case
    seed = int(torch.randint(0, 2**31 - 1, ()))
    gen = torch.Generator().manual_seed(seed)
    kw, slopes, sinks = _extras(Hq, B, feat, gen)
    q = torch.randn(B, Sq, Hq, D, generator=gen).half()
    k = torch.randn(B, Sk, Hkv, D, generator=gen).half()
    v = torch.randn(B, Sk, Hkv, Dv, generator=gen).half()
    out = torch.empty(B, Sq, Hq, Dv).half()
    lse = torch.empty(B, Hq, Sq)
    P.flash_attention_forward(q, k, v, out, lse, scale=D ** -0.5, alibi_slopes=slopes,
                              sinks=sinks, **kw)
    do = torch.randn(B, Sq, Hq, Dv, generator=gen).half()
    dlse = torch.randn(B, Hq, Sq, generator=gen)
    seen = []
    real = BW._tma_ok
    monkeypatch.setattr(BW, "_tma_ok", lambda *t: seen.append(real(*t)) or seen[-1])
    got = BW.flash_attention_backward(do, q, k, v, out, lse, dlse, scale=D ** -0.5,
                                      alibi_slopes=slopes, sinks=sinks,
                                      config=dict(TMA=True), **kw)
    assert seen == [True], "the descriptor path was not taken"
    ref = _ref_grads(q, k, v, do, dlse, [(b, b, b, b) for b in range(B)], sinks=sinks,
                     slopes=slopes, scale=D ** -0.5, **_ref_kw(kw))
    for name, g, r in zip(("dq", "dk", "dv"), got, ref):
        assert _rel(g, r) < TOL[torch.float16], f"{name} (seed {seed})"


@pytest.mark.parametrize("case", [DENSE[0], DENSE[4], DENSE[6]],
                         ids=["gqa-d40", "left-sinks", "alibi-sinks-causal"])
def test_atomic_dq_mode(case):
    """config={"deterministic": False}: dQ from atomics in the dK/dV kernel, same gradients."""
    seed = int(torch.randint(0, 2**31 - 1, ()))
    got, ref = _dense_case(case, torch.float32, seed, config=dict(deterministic=False))
    for name, g, r in zip(("dq", "dk", "dv", "dsinks"), got, ref):
        if r is not None:
            assert _rel(g, r) < TOL[torch.float32], f"{name} (seed {seed})"


def test_atomic_dq_mode_varlen(monkeypatch):
    monkeypatch.setenv("ANYATTN_TRITON_BWD_DETERMINISTIC", "0")
    calls = []
    real = BW._bwd_dq_kernel
    monkeypatch.setattr(BW, "_bwd_dq_kernel", _Spy(real, calls))
    _varlen_case(VARLEN[0], torch.float16, None)
    assert not calls, "the dQ kernel ran in the atomic mode"


class _Spy:
    def __init__(self, kernel, calls):
        self.kernel, self.calls = kernel, calls

    def __getitem__(self, grid):
        self.calls.append(grid)
        return self.kernel[grid]
