"""GPU: every torch-native backend against the reference, for every op and feature it claims.

Run on a GPU machine with `python -m pytest -m gpu`. A backend that does not claim a feature
must say why (a non-empty reason); one that claims it must match the fp32 reference.
"""

import math

import pytest
import torch

import anyattn
from tests import inputs

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BACKENDS = ["sdpa", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "sdpa_math", "flex", "triton", "reference"]
FEATURES = [
    dict(), dict(causal=True), dict(window=(64, 0)), dict(window=(32, 16)), dict(softcap=20.0),
    dict(alibi=True), dict(sinks=True), dict(lse=True), dict(causal=True, softcap=30.0, sinks=True, lse=True),
]


def _extras(feat, hq, b, device):
    kw = {k: v for k, v in feat.items() if k in ("causal", "window", "softcap")}
    if feat.get("alibi"):
        kw["alibi_slopes"] = torch.rand(hq, device=device) * 0.1
    if feat.get("sinks"):
        kw["sinks"] = torch.randn(hq, device=device)
    if feat.get("lse"):
        kw["return_lse"] = True
    return kw


def _check(fn, backend, dtype):
    try:
        got = fn(backend)
    except anyattn.NoBackendError as exc:
        cand = next(c for c in exc.decision.candidates if c.name == backend)
        assert cand.reasons
        pytest.skip(f"{backend} declines: {'; '.join(cand.reasons)[:200]}")
    ref = fn("reference")
    got, ref = (got if isinstance(got, tuple) else (got,)), (ref if isinstance(ref, tuple) else (ref,))
    tol = 2e-2 if dtype != torch.float32 else 2e-3
    err = inputs.rel_err(got[0], ref[0])
    assert err < tol, f"{backend}: relative error {err:.2e}"
    if len(ref) > 1:
        finite = torch.isfinite(ref[1])
        assert torch.equal(torch.isfinite(got[1]), finite)
        assert torch.allclose(got[1][finite], ref[1][finite], atol=1e-2, rtol=1e-3)


DTYPE_DIMS = [(torch.bfloat16, 128), (torch.bfloat16, 80), (torch.float16, 64), (torch.float32, 64)]


@pytest.mark.parametrize("dtype,d", DTYPE_DIMS, ids=lambda x: str(x).replace("torch.", ""))
@pytest.mark.parametrize("feat", FEATURES, ids=lambda f: "-".join(f) or "plain")
@pytest.mark.parametrize("backend", BACKENDS)
def test_dense(backend, feat, d, dtype):
    torch.manual_seed(hash((backend, d)) % 1000)
    q, k, v = inputs.dense(b=2, sq=200, sk=333, hq=8, hkv=2, d=d, dtype=dtype, device="cuda",
                           seed=d)
    kw = _extras(feat, 8, 2, "cuda")
    _check(lambda b: anyattn.attention(q, k, v, backend=b, **kw), backend, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("feat", [dict(), dict(causal=True), dict(causal=True, window=(16, 0), lse=True)],
                         ids=["plain", "causal", "window-lse"])
def test_varlen(backend, feat):
    lens_q, lens_k = [17, 0, 1, 130, 64], [17, 5, 300, 130, 1]
    q, k, v, cu_q, cu_k = inputs.varlen(lens_q, lens_k, hq=8, hkv=4, d=128, dtype=torch.bfloat16, device="cuda")
    kw = _extras(feat, 8, 5, "cuda")
    _check(lambda b: anyattn.varlen_attention(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), backend=b, **kw),
           backend, torch.bfloat16)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block_size", [16, 128])
@pytest.mark.parametrize("nq", [None, [1, 7, 3]], ids=["decode", "chunked"])
def test_paged(backend, block_size, nq):
    q, kc, vc, table, used, cu_q, max_q = inputs.paged([33, 700, 129], nq, block_size=block_size, hq=8, hkv=2,
                                                       d=128, dtype=torch.bfloat16, device="cuda")
    _check(lambda b: anyattn.paged_attention(q, kc, vc, table, used, cu_seqlens_q=cu_q, max_seqlen_q=max_q,
                                             max_seqlen_k=700, backend=b), backend, torch.bfloat16)


def test_out_written_and_no_nan_rows():
    q, k, v = inputs.dense(b=1, sq=64, sk=32, hq=4, hkv=4, d=64, dtype=torch.bfloat16, device="cuda")
    out = torch.full_like(q, math.nan)
    anyattn.attention(q, k, v, causal=True, out=out)
    assert not torch.isnan(out).any()
    assert torch.all(out[0, :32] == 0)  # rows that see no key
