"""SDPA kernels and FlexAttention on CPU against the float64 formula, for what each claims.

Each backend either serves a feature correctly or rejects it with a reason; both outcomes are
checked, so a backend can neither silently compute the wrong thing nor silently refuse.
"""

import pytest
import torch

import anyattn
from tests import inputs, naive
from tests.test_reference import FEATURES, _opts

CPU_BACKENDS = ["sdpa", "sdpa_flash", "sdpa_math", "flex"]
# What each backend must reject on CPU (feature -> words expected in the reason).
MUST_REJECT = {
    "sdpa": {"softcap": "soft-capping", "sinks": "sinks"},
    "sdpa_flash": {"softcap": "soft-capping", "sinks": "sinks"},
    "sdpa_math": {"softcap": "soft-capping", "sinks": "sinks"},
    "flex": {},
}


def _run_or_reason(fn, backend):
    try:
        return fn(), None
    except anyattn.NoBackendError as exc:
        cand = next(c for c in exc.decision.candidates if c.name == backend)
        assert cand.reasons, "a rejection must carry reasons"
        return None, " ".join(cand.reasons)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("feat", FEATURES, ids=lambda f: "-".join(f) or "plain")
def test_dense(backend, feat):
    q, k, v = inputs.dense(b=2, sq=9, sk=13, hq=4, hkv=2, d=32, noncontig=True)
    api, kw = _opts(feat, 4, 2)
    res, reason = _run_or_reason(lambda: anyattn.attention(q, k, v, backend=backend, **api), backend)
    must = [w for f, w in MUST_REJECT[backend].items() if feat.get(f)]
    if must:
        assert res is None and all(w in reason for w in must), reason
        return
    assert reason is None, f"{backend} rejected {feat}: {reason}"
    ref = naive.dense(q, k, v, **kw)[0]
    assert torch.allclose(res.double(), ref, atol=2e-5), (res.double() - ref).abs().max()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("feat", [dict(), dict(causal=True), dict(window=(2, 1), alibi=True)],
                         ids=["plain", "causal", "window-alibi"])
def test_varlen_and_paged(backend, feat):
    lens_q, lens_k = [3, 0, 1, 6], [5, 2, 1, 6]
    q, k, v, cu_q, cu_k = inputs.varlen(lens_q, lens_k, hq=4, hkv=2, d=16)
    api, kw = _opts(feat, 4, 4)
    out = anyattn.varlen_attention(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), backend=backend, **api)
    assert torch.allclose(out.double(), naive.varlen(q, k, v, cu_q, cu_k, **kw)[0], atol=2e-5)

    seqused = [4, 19, 7]
    q, kc, vc, table, used, cu_q, max_q = inputs.paged(seqused, [1, 4, 2], block_size=4, hq=4, hkv=2, d=16)
    api, kw = _opts(feat, 4, 3)
    out = anyattn.paged_attention(q, kc, vc, table, used, cu_seqlens_q=cu_q, max_seqlen_q=max_q,
                                  causal=feat.get("causal", False), backend=backend,
                                  **{k_: v_ for k_, v_ in api.items() if k_ != "causal"})
    kw.setdefault("causal", False)
    assert torch.allclose(out.double(), naive.paged(q, kc, vc, table, used, cu_q, **kw)[0], atol=2e-5)


def test_flex_returns_lse_and_sinks():
    q, k, v = inputs.dense(b=1, sq=6, sk=10, hq=2, hkv=1, d=16)
    sinks = torch.tensor([0.3, -0.7])
    out, lse = anyattn.attention(q, k, v, causal=True, sinks=sinks, return_lse=True, backend="flex")
    ref_out, ref_lse = naive.dense(q, k, v, causal=True, sinks=sinks)
    assert torch.allclose(out.double(), ref_out, atol=2e-5)
    assert torch.allclose(lse.double(), ref_lse, atol=2e-5)


def test_sdpa_says_it_cannot_return_lse():
    q, k, v = inputs.dense(b=1, sq=4, sk=4, hq=2, hkv=2, d=16)
    with pytest.raises(anyattn.NoBackendError, match="log-sum-exp"):
        anyattn.attention(q, k, v, return_lse=True, backend="sdpa_math")


def test_flex_compiled_once_on_cpu(monkeypatch):
    """ANYATTN_FLEX_COMPILE=1 compiles on CPU; each compiled shape's first call is checked
    against the uncompiled result (issue 9: wrong values for some short sequences, depending on
    which shape compiled first), and what Inductor cannot do on CPU (lse, sinks) runs uncompiled
    instead of raising InductorError."""
    from anyattn.backends import flex

    monkeypatch.setenv("ANYATTN_FLEX_COMPILE", "1")
    for sq, sk in ((40, 40), (7, 13)):  # the failing length first, then a short Sq != Sk one
        q, k, v = inputs.dense(b=1, sq=sq, sk=sk, hq=2, hkv=2, d=16, seed=sq)
        out = anyattn.attention(q, k, v, causal=True, softcap=5.0, backend="flex")
        assert torch.allclose(out.double(), naive.dense(q, k, v, causal=True, softcap=5.0)[0], atol=2e-5)
    assert sum(1 for key in flex._CPU_CHECKED if key[1] in ((1, 40, 2, 16), (1, 7, 2, 16))) == 2
    sinks = torch.tensor([0.3, -0.7])
    out, lse = anyattn.attention(q, k, v, causal=True, sinks=sinks, return_lse=True, backend="flex")
    ref_out, ref_lse = naive.dense(q, k, v, causal=True, sinks=sinks)
    assert torch.allclose(out.double(), ref_out, atol=2e-5) and torch.allclose(lse.double(), ref_lse, atol=2e-5)


def _fake_compiled_flex(monkeypatch, wrong=1.7, forbid_lse=False):
    """Stand in for torch.compile(flex_attention) on CPU: the eager result x ``wrong`` (or an
    InductorError-like failure when asked for the lse)."""
    from anyattn.backends import flex

    eager = flex._flex_fn("eager")
    calls = []

    def compiled(*args, **kw):
        calls.append(kw)
        if forbid_lse and "return_aux" in kw or "return_lse" in kw:
            raise RuntimeError("InductorError: torch.compile on CPU only supports inference and return_lse is "
                               "not supported yet")
        return eager(*args, **kw) * wrong

    real = flex._flex_fn
    monkeypatch.setattr(flex, "_flex_fn", lambda mode: compiled if mode in ("static", "dynamic") else real(mode))
    monkeypatch.setattr(flex, "_CPU_CHECKED", {})
    monkeypatch.setenv("ANYATTN_FLEX_COMPILE", "1")
    return calls


def test_wrong_compiled_cpu_flex_is_caught_and_served_uncompiled(monkeypatch, caplog):
    calls = _fake_compiled_flex(monkeypatch, wrong=1.7)
    q, k, v = inputs.dense(b=1, sq=40, sk=40, hq=2, hkv=2, d=16)
    ref = naive.dense(q, k, v, causal=True)[0]
    with caplog.at_level("WARNING", logger="anyattn"):
        for _ in range(3):
            out = anyattn.attention(q, k, v, causal=True, backend="flex")
            assert torch.allclose(out.double(), ref, atol=2e-5), (out.double() - ref).abs().max()
    assert len(calls) == 1, "a shape that compiled wrong must not be run compiled again"
    msgs = [r.getMessage() for r in caplog.records if "disagrees" in r.getMessage()]
    assert len(msgs) == 1 and "relative error 0.7" in msgs[0]
    # A right compiled result is used as is (the check runs once per shape).
    calls = _fake_compiled_flex(monkeypatch, wrong=1.0)
    for _ in range(2):
        anyattn.attention(q, k, v, causal=True, backend="flex")
    assert len(calls) == 2


def test_compiled_cpu_flex_never_compiles_lse_sinks_or_grad(monkeypatch):
    calls = _fake_compiled_flex(monkeypatch, forbid_lse=True)
    q, k, v = inputs.dense(b=1, sq=6, sk=10, hq=2, hkv=1, d=16)
    sinks = torch.tensor([0.3, -0.7])
    out, lse = anyattn.attention(q, k, v, causal=True, sinks=sinks, return_lse=True, backend="flex")
    ref_out, ref_lse = naive.dense(q, k, v, causal=True, sinks=sinks)
    assert torch.allclose(out.double(), ref_out, atol=2e-5) and torch.allclose(lse.double(), ref_lse, atol=2e-5)
    assert calls == []
    # No backward on CPU at all (torch raises NotImplementedError even uncompiled): a reason.
    qg = q.clone().requires_grad_()
    with pytest.raises(anyattn.NoBackendError, match="no backward on CPU"):
        anyattn.attention(qg, k, v, causal=True, softcap=2.0, backend="flex")
    out = anyattn.attention(qg, k, v, causal=True, softcap=2.0)
    out.sum().backward()
    assert qg.grad is not None and calls == []


def test_flex_on_cpu_runs_uncompiled_unless_asked(monkeypatch):
    from anyattn.backends import flex

    monkeypatch.delenv("ANYATTN_FLEX_COMPILE", raising=False)
    assert not flex._compile_enabled("cpu") and flex._compile_enabled("cuda")
    q, k, v = inputs.dense(b=1, sq=5, sk=5, hq=2, hkv=2, d=16)
    d = anyattn.explain(q, k, v, softcap=3.0, backend="flex")
    assert "not trusted" in " ".join(next(c for c in d.candidates if c.name == "flex").notes)


def test_automatic_choice_on_cpu_is_fast_path_and_correct():
    q, k, v = inputs.dense(b=2, sq=16, sk=16, hq=4, hkv=4, d=32)
    decision = anyattn.explain(q, k, v, causal=True)
    assert decision.chosen == "sdpa_flash"
    out = anyattn.attention(q, k, v, causal=True)
    assert torch.allclose(out.double(), naive.dense(q, k, v, causal=True)[0], atol=2e-5)
    # softcap is beyond SDPA: the ranking moves on, with the reason recorded.
    decision = anyattn.explain(q, k, v, causal=True, softcap=10.0)
    assert decision.chosen == "flex"
    sdpa = next(c for c in decision.candidates if c.name == "sdpa_flash")
    assert any("soft-capping" in r for r in sdpa.reasons)


@pytest.mark.parametrize("backend", ["sdpa", "sdpa_math", "sdpa_flash"])
def test_single_query_causal_sees_every_key(backend):
    """Decode with a KV cache: one query, lower-right causal = all keys (no mask is built)."""
    q, k, v = inputs.dense(b=2, sq=1, sk=13, hq=4, hkv=2, d=32, seed=9)
    got = anyattn.attention(q, k, v, causal=True, backend=backend)
    ref = naive.dense(q, k, v, causal=True)[0]
    assert torch.allclose(got.double(), ref, atol=2e-5)
    assert torch.allclose(got, anyattn.attention(q, k, v, backend=backend), atol=1e-6)
