"""GPU tests of the Triton backward (run with ``python -m pytest -m gpu``).

Gradients of anyattn's Triton kernels (through the public API with ``backend="triton"`` and
through ``TritonBackend.attention_backward``/``varlen_backward``) against torch.autograd on the
independent float64 formula of tests/kernels/_grad_ref.py, computed on the GPU. Realistic
shapes (hundreds to a few thousand tokens, GQA/MQA, Sq != Sk both ways), head dims
64/96/128/256 and Dv != D, bf16/fp16 (fp32 once), every feature, strided inputs and dO,
NaN-poisoned gradient buffers, varlen with empty sequences, the lse gradient, the sink
gradient, and bit-identical reruns.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

import anyattn

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

sys.path.insert(0, os.path.dirname(__file__))
from _grad_ref import ref_grads  # noqa: E402

DEV = "cuda"
# relative Frobenius error of each gradient against float64 autograd
TOL = {torch.bfloat16: 4e-2, torch.float16: 1e-2, torch.float32: 1e-4}


def _backend():
    from anyattn.backends.triton import TritonBackend

    return TritonBackend()


def _rel(a, b):
    assert not torch.isnan(a).any(), "NaN in a gradient (unwritten element or bad masking)"
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _feat(feat, hq, b, gen):
    kw = {k: v for k, v in feat.items() if k in ("causal", "window", "softcap")}
    kw.setdefault("window", (-1, -1))
    kw.setdefault("softcap", 0.0)
    kw.setdefault("causal", False)
    kw["alibi_slopes"] = (torch.rand(hq, device=DEV, generator=gen) * 0.2
                          if feat.get("alibi") else None)
    kw["sinks"] = torch.randn(hq, device=DEV, generator=gen) if feat.get("sinks") else None
    return kw


def _ref_kw(kw):
    return dict(causal=kw["causal"], window=kw["window"], softcap=kw["softcap"])


FEATS = [
    dict(), dict(causal=True), dict(window=(64, 0)), dict(window=(32, 16)),
    dict(softcap=20.0, causal=True), dict(alibi=True), dict(sinks=True, dlse=True),
    dict(causal=True, softcap=30.0, sinks=True, alibi=True, dlse=True),
    dict(causal=True, window=(100, -1)),
]
SHAPES = [(2, 512, 512, 8, 2), (1, 300, 700, 4, 4), (2, 700, 300, 6, 1), (1, 1024, 1024, 4, 1)]


def _dense(shape, feat, d, dv, dtype, seed):
    b, sq, sk, hq, hkv = shape
    gen = torch.Generator(device=DEV).manual_seed(seed)
    kw = _feat(feat, hq, b, gen)
    q = torch.randn(b, sq, hq, d, device=DEV, dtype=dtype, generator=gen)
    k = torch.randn(b, hkv, sk, d, device=DEV, dtype=dtype, generator=gen).transpose(1, 2)
    v = torch.randn(b, sk, hkv, dv, device=DEV, dtype=dtype, generator=gen)
    scale = d ** -0.5
    with torch.no_grad():
        o, lse = anyattn.attention(q, k, v, scale=scale, return_lse=True, backend="triton", **kw)
    do = torch.randn(b, hq, sq, dv, device=DEV, dtype=dtype, generator=gen).transpose(1, 2)
    dlse = torch.randn(b, hq, sq, device=DEV, generator=gen) if feat.get("dlse") else None
    return q, k, v, o, lse, do, dlse, scale, kw


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("d", [64, 96, 128, 256])
@pytest.mark.parametrize("fi", range(len(FEATS)), ids=[f"feat{i}" for i in range(len(FEATS))])
def test_dense_grads(fi, d, dtype):
    feat = FEATS[fi]
    shape = SHAPES[(fi + d) % len(SHAPES)]  # each feature meets several shapes across head dims
    seed = int(torch.randint(0, 2**31 - 1, ()))
    q, k, v, o, lse, do, dlse, scale, kw = _dense(shape, feat, d, d, dtype, seed)
    dq = torch.full_like(q, float("nan"))
    dk = torch.full_like(k, float("nan"))
    dv = torch.full_like(v, float("nan"))
    be = _backend()
    got = be._backward_kernels().flash_attention_backward(
        do, q, k, v, o, lse, dlse, scale=scale, causal=kw["causal"], window=kw["window"],
        softcap=kw["softcap"] or None, alibi_slopes=kw["alibi_slopes"], sinks=kw["sinks"],
        dq=dq, dk=dk, dv=dv)
    seqs = [(i, i, i, 0) for i in range(shape[0])]
    ref = ref_grads(q, k, v, do, dlse, seqs, sinks=kw["sinks"], slopes=kw["alibi_slopes"],
                    scale=scale, **_ref_kw(kw))
    for name, g, r in zip(("dq", "dk", "dv", "dsinks"), got, ref):
        if r is None:
            assert g is None
            continue
        assert _rel(g, r) < TOL[dtype], f"{name} (seed {seed})"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("d,dv", [(192, 128), (64, 32), (40, 40), (80, 80)])
def test_dense_head_dims(d, dv, dtype):
    """Dv != D and non-power-of-two head dims, through attention_backward."""
    seed = int(torch.randint(0, 2**31 - 1, ()))
    feat = dict(causal=True, sinks=True, dlse=True)
    q, k, v, o, lse, do, dlse, scale, kw = _dense((2, 333, 401, 4, 2), feat, d, dv, dtype, seed)
    got = _backend().attention_backward(do, dlse, q, k, v, o, lse, **kw, scale=scale)
    ref = ref_grads(q, k, v, do, dlse, [(0, 0, 0, 0), (1, 1, 1, 1)], sinks=kw["sinks"],
                    slopes=None, scale=scale, **_ref_kw(kw))
    for name, g, r in zip(("dq", "dk", "dv", "dsinks"), got, ref):
        assert _rel(g, r) < TOL[dtype], f"{name} (seed {seed})"


VARLEN = [
    ([0, 1, 517, 64, 300], [40, 1, 600, 64, 0], 8, 2, dict(causal=True, dlse=True)),
    ([256, 0, 1000], [256, 7, 1000], 4, 1, dict(window=(128, 0), softcap=15.0, sinks=True)),
    ([333, 129], [129, 333], 6, 6, dict(alibi=True, causal=True, sinks=True)),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("case", VARLEN, ids=[f"varlen{i}" for i in range(len(VARLEN))])
def test_varlen_grads(case, d, dtype):
    lq, lk, hq, hkv, feat = case
    seed = int(torch.randint(0, 2**31 - 1, ()))
    gen = torch.Generator(device=DEV).manual_seed(seed)
    kw = _feat(feat, hq, len(lq), gen)
    cu_q = torch.tensor([0] + lq, device=DEV).cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0] + lk, device=DEV).cumsum(0).to(torch.int32)
    tq, tk = sum(lq), sum(lk)
    q = torch.randn(tq, hq, d, device=DEV, dtype=dtype, generator=gen)
    k = torch.randn(tk, hkv, d, device=DEV, dtype=dtype, generator=gen)
    v = torch.randn(tk, hkv, d, device=DEV, dtype=dtype, generator=gen)
    with torch.no_grad():
        o, lse = anyattn.varlen_attention(q, k, v, cu_q, cu_k, max(lq), max(lk), scale=d ** -0.5,
                                          return_lse=True, backend="triton", **kw)
    do = torch.randn(tq, hq, d, device=DEV, dtype=dtype, generator=gen)
    dlse = torch.randn(hq, tq, device=DEV, generator=gen) if feat.get("dlse") else None
    got = _backend().varlen_backward(do, dlse, q, k, v, cu_q, cu_k, max(lq), max(lk), o, lse,
                                     scale=d ** -0.5, **kw)
    cq, ck = cu_q.tolist(), cu_k.tolist()
    seqs = [(slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1]), (slice(None), slice(cq[b], cq[b + 1])),
             b) for b in range(len(lq))]
    ref = ref_grads(q, k, v, do, dlse, seqs, sinks=kw["sinks"], slopes=kw["alibi_slopes"],
                    scale=d ** -0.5, **_ref_kw(kw))
    for name, g, r in zip(("dq", "dk", "dv", "dsinks"), got, ref):
        if r is None:
            assert g is None
            continue
        assert _rel(g, r) < TOL[dtype], f"{name} (seed {seed})"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_api_backward_end_to_end(dtype):
    """anyattn.attention(..., backend="triton") with requires_grad inputs: .backward() fills
    q/k/v/sinks .grad, the lse output carries a gradient too, out= works."""
    gen = torch.Generator(device=DEV).manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    b, s, hq, hkv, d = 2, 777, 8, 2, 128
    q = torch.randn(b, s, hq, d, device=DEV, dtype=dtype, generator=gen).requires_grad_()
    k = torch.randn(b, s, hkv, d, device=DEV, dtype=dtype, generator=gen).requires_grad_()
    v = torch.randn(b, s, hkv, d, device=DEV, dtype=dtype, generator=gen).requires_grad_()
    sinks = torch.randn(hq, device=DEV, generator=gen).requires_grad_()
    out = torch.full((b, s, hq, d), float("nan"), device=DEV, dtype=dtype)
    o, lse = anyattn.attention(q, k, v, causal=True, sinks=sinks, return_lse=True, out=out,
                               backend="triton")
    do = torch.randn(o.shape, device=DEV, dtype=dtype, generator=gen)
    dl = torch.randn(lse.shape, device=DEV, generator=gen)
    ((o.float() * do.float()).sum() + (lse * dl).sum()).backward()
    ref = ref_grads(q, k, v, do, dl, [(i, i, i, 0) for i in range(b)], sinks=sinks, slopes=None,
                    scale=d ** -0.5, causal=True)
    for name, g, r in zip(("dq", "dk", "dv", "dsinks"), (q.grad, k.grad, v.grad, sinks.grad),
                          ref):
        assert _rel(g, r) < TOL[dtype], name


def test_api_varlen_backward_end_to_end():
    gen = torch.Generator(device=DEV).manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    lens = [300, 0, 1, 900]
    cu = torch.tensor([0] + lens, device=DEV).cumsum(0).to(torch.int32)
    t, hq, hkv, d = sum(lens), 8, 8, 64
    q, k, v = (torch.randn(t, h, d, device=DEV, dtype=torch.bfloat16, generator=gen)
               .requires_grad_() for h in (hq, hkv, hkv))
    o = anyattn.varlen_attention(q, k, v, cu, cu, max(lens), max(lens), causal=True,
                                 backend="triton")
    do = torch.randn(o.shape, device=DEV, dtype=torch.bfloat16, generator=gen)
    o.backward(do)
    c = cu.tolist()
    seqs = [(slice(c[i], c[i + 1]), slice(c[i], c[i + 1]), None, i) for i in range(len(lens))]
    ref = ref_grads(q, k, v, do, None, seqs, sinks=None, slopes=None, scale=d ** -0.5,
                    causal=True)
    for g, r in zip((q.grad, k.grad, v.grad), ref):
        assert _rel(g, r) < TOL[torch.bfloat16]


@pytest.mark.parametrize("d", [64, 128])
def test_deterministic(d):
    """Same inputs, same bits: two backward runs (large enough to fill the GPU)."""
    seed = int(torch.randint(0, 2**31 - 1, ()))
    feat = dict(causal=True, sinks=True, dlse=True)
    q, k, v, o, lse, do, dlse, scale, kw = _dense((4, 2048, 2048, 16, 4), feat, d, d,
                                                  torch.bfloat16, seed)
    be = _backend()
    a = be.attention_backward(do, dlse, q, k, v, o, lse, scale=scale, **kw)
    b = be.attention_backward(do, dlse, q, k, v, o, lse, scale=scale, **kw)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_long_sequence_against_sdpa():
    """A long causal sequence (8k, d128, bf16): too large for the float64 formula, so the
    reference is SDPA's own backward in float32 math."""
    gen = torch.Generator(device=DEV).manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    b, s, h, d = 1, 8192, 8, 128
    q, k, v = (torch.randn(b, s, h, d, device=DEV, dtype=torch.bfloat16, generator=gen)
               .requires_grad_() for _ in range(3))
    o = anyattn.attention(q, k, v, causal=True, backend="triton")
    do = torch.randn(o.shape, device=DEV, dtype=torch.bfloat16, generator=gen)
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), do)
    qf, kf, vf = (t.detach().float().transpose(1, 2).requires_grad_() for t in (q, k, v))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        of = torch.nn.functional.scaled_dot_product_attention(qf, kf, vf, is_causal=True)
    rq, rk, rv = torch.autograd.grad(of, (qf, kf, vf), do.float().transpose(1, 2))
    for g, r in zip((dq, dk, dv), (rq, rk, rv)):
        assert _rel(g, r.transpose(1, 2)) < TOL[torch.bfloat16]


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="tensor descriptors need sm90")
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("fi", [0, 1, 3, 7], ids=["plain", "causal", "window", "all"])
def test_tma_path(fi, d):
    """config={"TMA": True} (device-side descriptors for the streamed tiles) against float64,
    and bit-identical to itself on a rerun."""
    from anyattn.kernels import triton_backward as BW

    feat = FEATS[fi]
    shape = SHAPES[(fi + d) % len(SHAPES)]
    seed = int(torch.randint(0, 2**31 - 1, ()))
    q, k, v, o, lse, do, dlse, scale, kw = _dense(shape, feat, d, d, torch.bfloat16, seed)
    do = do.contiguous()  # descriptors need a unit last stride and aligned rows
    k = k.contiguous()
    assert BW._tma_ok(q, k, v, do)
    args = dict(scale=scale, causal=kw["causal"], window=kw["window"],
                softcap=kw["softcap"] or None, alibi_slopes=kw["alibi_slopes"],
                sinks=kw["sinks"], config=dict(TMA=True))
    got = BW.flash_attention_backward(do, q, k, v, o, lse, dlse, **args)
    again = BW.flash_attention_backward(do, q, k, v, o, lse, dlse, **args)
    ref = ref_grads(q, k, v, do, dlse, [(i, i, i, 0) for i in range(shape[0])],
                    sinks=kw["sinks"], slopes=kw["alibi_slopes"], scale=scale, **_ref_kw(kw))
    for name, g, g2, r in zip(("dq", "dk", "dv", "dsinks"), got, again, ref):
        if r is None:
            continue
        assert _rel(g, r) < TOL[torch.bfloat16], f"{name} (seed {seed})"
        assert torch.equal(g, g2)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="tensor descriptors need sm90")
def test_tma_path_varlen():
    from anyattn.kernels import triton_backward as BW

    gen = torch.Generator(device=DEV).manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    lens_q, lens_k = [0, 1, 517, 64, 300], [40, 1, 600, 64, 0]
    cu_q = torch.tensor([0] + lens_q, device=DEV).cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0] + lens_k, device=DEV).cumsum(0).to(torch.int32)
    q = torch.randn(sum(lens_q), 8, 128, device=DEV, dtype=torch.bfloat16, generator=gen)
    k = torch.randn(sum(lens_k), 2, 128, device=DEV, dtype=torch.bfloat16, generator=gen)
    v = torch.randn(sum(lens_k), 2, 128, device=DEV, dtype=torch.bfloat16, generator=gen)
    vl = (cu_q, cu_k, max(lens_q), max(lens_k))
    with torch.no_grad():
        o, lse = anyattn.varlen_attention(q, k, v, *vl, causal=True, return_lse=True,
                                          backend="triton")
    do = torch.randn(o.shape, device=DEV, dtype=torch.bfloat16, generator=gen)
    got = BW.flash_attention_backward(do, q, k, v, o, lse, None, scale=128 ** -0.5, causal=True,
                                      cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                      max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k),
                                      config=dict(TMA=True))
    cq, ck = cu_q.tolist(), cu_k.tolist()
    seqs = [(slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1]), None, b) for b in range(5)]
    ref = ref_grads(q, k, v, do, None, seqs, sinks=None, slopes=None, scale=128 ** -0.5,
                    causal=True)
    for name, g, r in zip(("dq", "dk", "dv"), got, ref):
        assert _rel(g, r) < TOL[torch.bfloat16], name


@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "tma"])
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("fi", [1, 7], ids=["causal", "all"])
def test_atomic_dq_mode(fi, d, tma):
    """config={"deterministic": False}: dQ by atomics inside the dK/dV kernel (non-default)."""
    from anyattn.kernels import triton_backward as BW

    if tma and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("tensor descriptors need sm90")
    feat = FEATS[fi]
    shape = SHAPES[(fi + d) % len(SHAPES)]
    seed = int(torch.randint(0, 2**31 - 1, ()))
    q, k, v, o, lse, do, dlse, scale, kw = _dense(shape, feat, d, d, torch.bfloat16, seed)
    do, k = do.contiguous(), k.contiguous()
    got = BW.flash_attention_backward(
        do, q, k, v, o, lse, dlse, scale=scale, causal=kw["causal"], window=kw["window"],
        softcap=kw["softcap"] or None, alibi_slopes=kw["alibi_slopes"], sinks=kw["sinks"],
        config=dict(deterministic=False, TMA=tma))
    ref = ref_grads(q, k, v, do, dlse, [(i, i, i, 0) for i in range(shape[0])],
                    sinks=kw["sinks"], slopes=kw["alibi_slopes"], scale=scale, **_ref_kw(kw))
    for name, g, r in zip(("dq", "dk", "dv", "dsinks"), got, ref):
        if r is not None:
            assert _rel(g, r) < TOL[torch.bfloat16], f"{name} (seed {seed})"


_DV_BWD_REPRO = """
import sys, torch
sys.path.insert(0, "tests/kernels")
from _grad_ref import ref_grads
from tests.test_fuzz import _tensor
from anyattn.kernels.triton_backward import flash_attention_backward
from anyattn.kernels.triton_prefill import flash_attention_forward
d, dv, layout = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
g = torch.Generator().manual_seed(1)
q, k, do = (_tensor((1, s, 2, w), torch.bfloat16, "cuda", g, layout, 2)
            for s, w in ((70, d), (130, d), (70, dv)))
v = _tensor((1, 130, 2, dv), torch.bfloat16, "cuda", g, layout, 2)
o = torch.empty((1, 70, 2, dv), device="cuda", dtype=torch.bfloat16)
lse = torch.empty((1, 2, 70), device="cuda", dtype=torch.float32)
flash_attention_forward(q, k, v, o, lse, scale=d ** -0.5, causal=True)
got = [torch.full_like(t, float("nan")) for t in (q, k, v)]
flash_attention_backward(do, q, k, v, o, lse, scale=d ** -0.5, causal=True, dq=got[0], dk=got[1],
                         dv=got[2])
torch.cuda.synchronize()
ref = ref_grads(q, k, v, do, None, [(0, 0, 0, 0)], sinks=None, slopes=None, scale=d ** -0.5,
                causal=True, window=(-1, -1), softcap=0.0)
errs = [float((a.double() - r).norm() / r.norm()) for a, r in zip(got, ref[:3])]
print(f"d={d} dv={dv} {layout}: dq/dk/dv relative errors", errs)
sys.exit(0 if all(e < 4e-2 for e in errs) else 1)
"""


@pytest.mark.parametrize("layout", ["sliced", "contiguous"])  # pointer loads (value tile padded), TMA
@pytest.mark.parametrize("d,dv", [(128, 32), (80, 32), (64, 32), (192, 128)])
def test_smaller_value_head_dim_backward(d, dv, layout):
    """Dv < D through both backward paths on the kernel directly, in a child process (the
    forward's sm90 bug with a narrow value tile, test_triton_gpu::test_smaller_value_head_dim,
    could read out of bounds and poison this process's CUDA context)."""
    import subprocess

    r = subprocess.run([sys.executable, "-c", _DV_BWD_REPRO, str(d), str(dv), layout],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
