"""The reference backend against the independent float64 formula in tests/naive.py."""

import math

import pytest
import torch

import anyattn
from tests import inputs, naive

FEATURES = [
    dict(),
    dict(causal=True),
    dict(window=(3, 2)),
    dict(window=(2, -1), causal=True),
    dict(window=(-1, 0)),
    dict(softcap=2.5),
    dict(alibi=True),
    dict(sinks=True),
    dict(causal=True, softcap=3.0, alibi=True, sinks=True, window=(5, -1)),
    dict(scale=0.3),
]


def _opts(feat, hq, batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    opts = {k: v for k, v in feat.items() if k not in ("alibi", "sinks")}
    kw = dict(opts)
    api_extra = {}
    if feat.get("alibi"):
        slopes = torch.rand(batch, hq, generator=g) * 0.5
        api_extra["alibi_slopes"] = slopes
        kw["slopes"] = slopes
    if feat.get("sinks"):
        sinks = torch.randn(hq, generator=g)
        api_extra["sinks"] = sinks
        kw["sinks"] = sinks
    return opts | api_extra, kw


@pytest.mark.parametrize("feat", FEATURES, ids=lambda f: "-".join(f) or "plain")
@pytest.mark.parametrize("sq,sk", [(7, 11), (9, 9), (12, 5)])
def test_dense_matches_naive(feat, sq, sk):
    q, k, v = inputs.dense(b=2, sq=sq, sk=sk, hq=4, hkv=2, d=24, dv=16, noncontig=True)
    api, kw = _opts(feat, 4, 2)
    out, lse = anyattn.attention(q, k, v, return_lse=True, backend="reference", **api)
    ref_out, ref_lse = naive.dense(q, k, v, **kw)
    assert out.shape == (2, sq, 4, 16) and out.dtype == q.dtype
    assert lse.shape == (2, 4, sq) and lse.dtype == torch.float32
    assert torch.allclose(out.double(), ref_out, atol=1e-5)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert torch.allclose(lse.double()[finite], ref_lse[finite], atol=1e-5)


def test_fully_masked_rows_are_zero_not_nan():
    # Sq > Sk with causal: the first queries see no key at all.
    q, k, v = inputs.dense(b=1, sq=6, sk=3, hq=2, hkv=2, d=8)
    out, lse = anyattn.attention(q, k, v, causal=True, return_lse=True, backend="reference")
    assert not torch.isnan(out).any()
    assert torch.all(out[0, :3] == 0) and torch.all(torch.isinf(lse[0, :, :3]))
    sinks = torch.tensor([0.5, -1.0])
    out, lse = anyattn.attention(q, k, v, causal=True, sinks=sinks, return_lse=True, backend="reference")
    assert torch.all(out[0, :3] == 0)
    assert torch.allclose(lse[0, :, 0], sinks)


@pytest.mark.parametrize("feat", FEATURES[:6] + FEATURES[8:9], ids=lambda f: "-".join(f) or "plain")
def test_varlen_matches_naive_with_empty_and_single_sequences(feat):
    lens_q, lens_k = [3, 0, 1, 5, 2], [4, 2, 1, 5, 0]
    q, k, v, cu_q, cu_k = inputs.varlen(lens_q, lens_k, hq=4, hkv=1, d=16, dv=8)
    api, kw = _opts(feat, 4, len(lens_q))
    out, lse = anyattn.varlen_attention(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), return_lse=True,
                                        backend="reference", **api)
    ref_out, ref_lse = naive.varlen(q, k, v, cu_q, cu_k, **kw)
    assert out.shape == (sum(lens_q), 4, 8) and lse.shape == (4, sum(lens_q))
    assert torch.allclose(out.double(), ref_out, atol=1e-5)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert torch.allclose(lse.double()[finite], ref_lse[finite], atol=1e-5)


@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("nq", [None, [1, 3, 2]], ids=["decode", "chunked"])
@pytest.mark.parametrize("feat", [dict(causal=True), dict(causal=False), FEATURES[8]],
                         ids=["causal", "full", "all"])
def test_paged_matches_naive(block_size, nq, feat):
    seqused = [5, 17, 3]
    q, kc, vc, table, used, cu_q, max_q = inputs.paged(seqused, nq, block_size=block_size, hq=4, hkv=2, d=16)
    api, kw = _opts(feat, 4, 3)
    api.setdefault("causal", False)
    out, lse = anyattn.paged_attention(q, kc, vc, table, used, cu_seqlens_q=cu_q, max_seqlen_q=max_q,
                                       max_seqlen_k=max(seqused), return_lse=True, backend="reference", **api)
    kw.setdefault("causal", False)
    ref_out, ref_lse = naive.paged(q, kc, vc, table, used, cu_q, **kw)
    assert torch.allclose(out.double(), ref_out, atol=1e-5)
    assert torch.allclose(lse.double(), ref_lse, atol=1e-5)


def test_out_buffer_is_written_in_place():
    q, k, v = inputs.dense(b=2, sq=5, sk=5, hq=2, hkv=2, d=8)
    out = torch.full_like(q, math.nan)
    res = anyattn.attention(q, k, v, causal=True, out=out, backend="reference")
    assert res is out and not torch.isnan(out).any()
    assert torch.allclose(out.double(), naive.dense(q, k, v, causal=True)[0], atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_fp32(dtype):
    q, k, v = inputs.dense(b=1, sq=33, sk=33, hq=2, hkv=1, d=64, dtype=dtype)
    out = anyattn.attention(q, k, v, causal=True, backend="reference")
    assert out.dtype == dtype
    ref = naive.dense(q, k, v, causal=True)[0]
    assert inputs.rel_err(out, ref) < 1e-2


def test_reference_backward_flows():
    q, k, v = (t.requires_grad_() for t in inputs.dense(b=1, sq=4, sk=4, hq=2, hkv=2, d=8))
    anyattn.attention(q, k, v, causal=True, backend="reference").sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
