"""GPU tests of the ``triton`` backend (run with ``python -m pytest -m gpu``).

Everything goes through the public API with ``backend="triton"`` and is compared with
``backend="reference"`` (fp32 math). Outputs are NaN-poisoned (``out=``) before each run and
inputs are fresh random draws. Covers dtype x head dim x causal x window x softcap x ALiBi x
sinks x GQA x Sq != Sk, varlen with empty and length-1 sequences, paged with every block size
and random non-contiguous block tables, CUDA-graph capture/replay of paged decode with new data
and new block tables, and no recompilation for new sequence lengths.
"""

from __future__ import annotations

import math

import pytest
import torch

import anyattn

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEV = "cuda"
TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 1e-4}


def _rel(a, b):
    assert not torch.isnan(a).any(), "NaN in output (unwritten element or bad masking)"
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _lse_ok(lse, ref):
    assert not torch.isnan(lse).any()
    inf = torch.isinf(ref)
    assert torch.equal(torch.isinf(lse), inf)
    if (~inf).any():
        assert (lse - ref)[~inf].abs().max() < 5e-3


def _feat_kwargs(feat, hq, b):
    kw = {k: v for k, v in feat.items() if k in ("causal", "window", "softcap")}
    if feat.get("alibi"):
        kw["alibi_slopes"] = torch.rand(hq, device=DEV) * 0.2
    if feat.get("sinks"):
        kw["sinks"] = torch.randn(hq, device=DEV)
    return kw


FEATS = [
    dict(), dict(causal=True), dict(window=(64, 0)), dict(window=(32, 16)), dict(softcap=20.0),
    dict(alibi=True), dict(sinks=True), dict(causal=True, softcap=30.0, sinks=True, alibi=True),
    dict(causal=True, window=(100, -1)),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("feat", FEATS, ids=[str(i) for i in range(len(FEATS))])
@pytest.mark.parametrize("shape", [(2, 300, 300, 8, 2), (1, 200, 517, 4, 4), (2, 333, 129, 6, 1)],
                         ids=["square-gqa4", "sq<sk-mha", "sq>sk-mqa"])
def test_dense_matrix(shape, feat, d, dtype):
    b, sq, sk, hq, hkv = shape
    q = torch.randn(b, sq, hq, d, device=DEV, dtype=dtype)
    k = torch.randn(b, hkv, sk, d, device=DEV, dtype=dtype).transpose(1, 2)  # strided
    v = torch.randn(b, sk, hkv, d, device=DEV, dtype=dtype)
    kw = _feat_kwargs(feat, hq, b)
    out = torch.full((b, sq, hq, d), float("nan"), device=DEV, dtype=dtype)
    o, lse = anyattn.attention(q, k, v, out=out, return_lse=True, backend="triton", **kw)
    ro, rl = anyattn.attention(q.float(), k.float(), v.float(), return_lse=True,
                               backend="reference", **kw)
    assert o.data_ptr() == out.data_ptr()
    assert _rel(o, ro) < TOL[dtype]
    _lse_ok(lse, rl)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32],
                         ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("d,dv", [(32, 32), (40, 40), (80, 80), (96, 96), (112, 112), (160, 160),
                                  (192, 192), (256, 256), (192, 128), (64, 32)])
def test_head_dims(d, dv, dtype):
    q = torch.randn(2, 190, 8, d, device=DEV, dtype=dtype)
    k = torch.randn(2, 250, 2, d, device=DEV, dtype=dtype)
    v = torch.randn(2, 250, 2, dv, device=DEV, dtype=dtype)
    out = torch.full((2, 190, 8, dv), float("nan"), device=DEV, dtype=dtype)
    o, lse = anyattn.attention(q, k, v, causal=True, out=out, return_lse=True, backend="triton")
    ro, rl = anyattn.attention(q.float(), k.float(), v.float(), causal=True, return_lse=True,
                               backend="reference")
    assert _rel(o, ro) < TOL[dtype]
    _lse_ok(lse, rl)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("feat", [dict(), dict(causal=True), dict(window=(20, 5), sinks=True),
                                  dict(causal=True, softcap=10.0, alibi=True)],
                         ids=["plain", "causal", "window-sinks", "causal-softcap-alibi"])
@pytest.mark.parametrize("d", [64, 128, 80])
def test_varlen(feat, dtype, d):
    lq = [0, 1, 130, 77, 1, 300, 5]
    lk = [5, 1, 200, 77, 0, 300, 900]
    cu_q = torch.tensor([0] + lq, device=DEV).cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0] + lk, device=DEV).cumsum(0).to(torch.int32)
    q = torch.randn(int(sum(lq)), 8, d, device=DEV, dtype=dtype)
    k = torch.randn(int(sum(lk)), 2, d, device=DEV, dtype=dtype)
    v = torch.randn(int(sum(lk)), 2, d, device=DEV, dtype=dtype)
    kw = _feat_kwargs(feat, 8, len(lq))
    out = torch.full_like(q, float("nan"))
    o, lse = anyattn.varlen_attention(q, k, v, cu_q, cu_k, max(lq), max(lk), out=out,
                                      return_lse=True, backend="triton", **kw)
    ro, rl = anyattn.varlen_attention(q.float(), k.float(), v.float(), cu_q, cu_k, max(lq),
                                      max(lk), return_lse=True, backend="reference", **kw)
    assert _rel(o, ro) < TOL[dtype]
    _lse_ok(lse, rl)


def _paged_inputs(lens, page, hq, hkv, d, dtype, spare=2):
    b = len(lens)
    nbp = max(1, max(math.ceil(n / page) for n in lens)) + spare
    nblk = b * nbp + 7
    k_cache = torch.randn(nblk, page, hkv, d, device=DEV, dtype=dtype)
    v_cache = torch.randn(nblk, page, hkv, d, device=DEV, dtype=dtype)
    block_table = torch.randperm(nblk, device=DEV)[: b * nbp].view(b, nbp).to(torch.int32)
    seqused = torch.tensor(lens, device=DEV, dtype=torch.int32)
    return k_cache, v_cache, block_table, seqused


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("page", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("mode", ["decode", "spec", "chunked"])
@pytest.mark.parametrize("feat", [dict(), dict(causal=True, sinks=True),
                                  dict(causal=True, window=(300, 0), softcap=30.0, alibi=True)],
                         ids=["plain", "causal-sinks", "causal-window-softcap-alibi"])
def test_paged(feat, mode, page, dtype):
    lens = [1000, 1, 0, 517, 2500]
    hq, hkv, d = 32, 8, 128
    kc, vc, bt, su = _paged_inputs(lens, page, hq, hkv, d, dtype)
    if mode == "decode":
        cu, msq = None, 1
        t = len(lens)
    else:
        ql = [4, 1, 0, 3, 4] if mode == "spec" else [200, 1, 0, 517, 64]
        cu = torch.tensor([0] + ql, device=DEV).cumsum(0).to(torch.int32)
        msq, t = max(ql), sum(ql)
    q = torch.randn(t, hq, d, device=DEV, dtype=dtype)
    kw = _feat_kwargs(feat, hq, len(lens))
    out = torch.full_like(q, float("nan"))
    o, lse = anyattn.paged_attention(q, kc, vc, bt, su, cu_seqlens_q=cu, max_seqlen_q=msq,
                                     max_seqlen_k=max(lens), out=out, return_lse=True,
                                     backend="triton", **kw)
    ro, rl = anyattn.paged_attention(q.float(), kc.float(), vc.float(), bt, su, cu_seqlens_q=cu,
                                     max_seqlen_q=msq, max_seqlen_k=max(lens), return_lse=True,
                                     backend="reference", **kw)
    assert _rel(o, ro) < TOL[dtype]
    _lse_ok(lse, rl)


def test_paged_decode_cuda_graph_replay_new_data_and_tables():
    torch.manual_seed(0)
    dtype, page, hq, hkv, d = torch.bfloat16, 16, 32, 8, 128
    b, max_blocks, nblk = 8, 256, 8 * 256 + 16  # 4k keys: split-KV + combine
    max_k = max_blocks * page
    k_cache = torch.randn(nblk, page, hkv, d, device=DEV, dtype=dtype)
    v_cache = torch.randn(nblk, page, hkv, d, device=DEV, dtype=dtype)
    q = torch.randn(b, hq, d, device=DEV, dtype=dtype)
    bt = torch.randperm(nblk, device=DEV)[: b * max_blocks].view(b, max_blocks).to(torch.int32)
    su = torch.randint(1, max_k, (b,), device=DEV, dtype=torch.int32)
    out = torch.empty_like(q)
    kw = dict(max_seqlen_k=max_k, out=out, backend="triton")
    anyattn.paged_attention(q, k_cache, v_cache, bt, su, **kw)  # warm up / compile
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        anyattn.paged_attention(q, k_cache, v_cache, bt, su, **kw)
    for _ in range(3):
        q.copy_(torch.randn_like(q))
        k_cache.copy_(torch.randn_like(k_cache))
        v_cache.copy_(torch.randn_like(v_cache))
        bt.copy_(torch.randperm(nblk, device=DEV)[: b * max_blocks].view(b, max_blocks))
        su.copy_(torch.randint(0, max_k, (b,), device=DEV, dtype=torch.int32))
        out.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        ref = anyattn.paged_attention(q.float(), k_cache.float(), v_cache.float(), bt, su,
                                      max_seqlen_k=max_k, backend="reference")
        assert _rel(out, ref) < TOL[dtype]


def test_no_recompile_for_new_sequence_lengths():
    from anyattn.kernels import triton_paged, triton_prefill

    def n_variants(fn):  # compiled variants held by a JITFunction (first item: kernel cache)
        return sum(len(entry[0]) for entry in fn.device_caches.values())

    def dense(s):
        q = torch.randn(2, s, 8, 128, device=DEV, dtype=torch.bfloat16)
        anyattn.attention(q, q[:, :, :2], q[:, :, :2].contiguous(), causal=True, backend="triton")

    def decode(n):
        kc, vc, bt, su = _paged_inputs([n, n // 2 + 1], 16, 32, 8, 128, torch.bfloat16)
        q = torch.randn(2, 32, 128, device=DEV, dtype=torch.bfloat16)
        anyattn.paged_attention(q, kc, vc, bt, su, max_seqlen_k=4096, backend="triton")

    dense(257)
    dense(8192)  # configs are bucketed by max_seqlen_k: warm both causal d=128 buckets
    decode(1000)
    before = (n_variants(triton_prefill._fwd_kernel), n_variants(triton_paged._paged_kernel))
    for s in (1000, 333, 4096, 17, 7000):
        dense(s)
    for n in (3000, 77, 4000):
        decode(n)
    torch.cuda.synchronize()
    after = (n_variants(triton_prefill._fwd_kernel), n_variants(triton_paged._paged_kernel))
    assert after == before


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("s,d", [(17, 128), (300, 64), (1000, 128), (256, 128)])
def test_host_descriptors_do_not_leak_across_sequences(causal, s, d):
    # host-side TMA descriptors view K/V as (batch * Sk, heads * D): edge tiles read rows of the
    # next sequence. Put NaN there (the last sequence) and check the others stay exact.
    from anyattn.kernels.triton_prefill import flash_attention_forward
    q = torch.randn(3, s, 8, d, device=DEV, dtype=torch.bfloat16)
    k = torch.randn(3, s, 2, d, device=DEV, dtype=torch.bfloat16)
    v = torch.randn(3, s, 2, d, device=DEV, dtype=torch.bfloat16)
    ref = anyattn.attention(q.float(), k.float(), v.float(), causal=causal, backend="reference")
    k[-1] = float("nan")
    v[-1] = float("nan")
    for cfg in (None, dict(HOSTDESC=False)):
        out = torch.full_like(q, float("nan"))
        flash_attention_forward(q, k, v, out, scale=d ** -0.5, causal=causal, config=cfg)
        assert _rel(out[:2], ref[:2]) < TOL[torch.bfloat16]
    # varlen: the same through cu_seqlens (rows of the next sequence follow directly)
    cu = torch.tensor([0, s, 2 * s, 3 * s], device=DEV, dtype=torch.int32)
    out = torch.full((3 * s, 8, d), float("nan"), device=DEV, dtype=torch.bfloat16)
    flash_attention_forward(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), out,
                            scale=d ** -0.5, causal=causal, cu_seqlens_q=cu, cu_seqlens_k=cu,
                            max_seqlen_q=s, max_seqlen_k=s)
    assert _rel(out[:2 * s].view(2, s, 8, d), ref[:2]) < TOL[torch.bfloat16]


_DV_REPRO = """
import sys, torch
from tests import naive
from tests.test_fuzz import _tensor
from anyattn.kernels import triton_prefill as P
d, dv, layout = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
config = {"PAD_DV": False} if sys.argv[4] == "unpadded" else None
g = torch.Generator().manual_seed(0)
q = _tensor((1, 1, 1, d), torch.bfloat16, "cuda", g, layout, 2)
k = _tensor((1, 17, 1, d), torch.bfloat16, "cuda", g, layout, 2)
v = _tensor((1, 17, 1, dv), torch.bfloat16, "cuda", g, layout, 2)
out = torch.full((1, 1, 1, dv), float("nan"), device="cuda", dtype=torch.bfloat16)
P.flash_attention_forward(q, k, v, out, None, scale=d ** -0.5, config=config)
torch.cuda.synchronize()
err = float((out.double().cpu() - naive.dense(q.cpu(), k.cpu(), v.cpu())[0]).abs().max())
print(f"d={d} dv={dv} {layout} {sys.argv[4]}: max error {err:.3g}")
sys.exit(0 if err < 2e-2 else 1)
"""


def _dv_repro(d, dv, layout, variant):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", _DV_REPRO, str(d), str(dv), layout, variant],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("layout", ["sliced", "contiguous"])  # pointer loads (value tile padded), TMA
@pytest.mark.parametrize("d,dv", [(128, 32), (80, 32), (64, 32), (192, 128)])
def test_smaller_value_head_dim(d, dv, layout):
    """The GPU fuzz's Dv < D reproducers (2026-12-01) on the kernel directly, in a child process
    (an illegal memory access would poison this process's CUDA context for the tests after it).
    The pointer path pads the value tile (kernels._common.value_tile_width); TMA does not need to."""
    r = _dv_repro(d, dv, layout, "default")
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]


def test_equal_value_head_dim_through_the_same_path():
    """The control: Dv = D, same sliced layout (pointer path), same sizes."""
    r = _dv_repro(128, 128, "sliced", "default")
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]


@pytest.mark.xfail(strict=False, reason="the sm90 bug itself: a value tile narrower than the query tile on "
                                        "the pointer path (wrong on the H200, Triton 3.6); XPASS = fixed upstream")
def test_unpadded_value_tile():
    r = _dv_repro(128, 32, "sliced", "unpadded")
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
