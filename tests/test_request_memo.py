"""The memoised validation in anyattn/request.py: a remembered call returns exactly what the full
checks return, and a call that differs from a remembered one in anything validation looks at
(shape, dtype, device, tensor type, option value or type, presence of a side tensor) is checked
afresh -- so the error it deserves is still raised."""

import pytest
import torch

from anyattn import request as R


class _Sub(torch.Tensor):
    pass


def _dense(q, k, v, **kw):
    opts = dict(causal=False, scale=None, window=(-1, -1), softcap=0.0, alibi_slopes=None,
                sinks=None, return_lse=False, out=None)
    opts.update(kw)
    return R.dense_request(q, k, v, **opts)


def _paged(q, kc, vc, bt, su, **kw):
    opts = dict(cu_seqlens_q=None, max_seqlen_q=1, max_seqlen_k=None, causal=True, scale=None,
                window=(-1, -1), softcap=0.0, alibi_slopes=None, sinks=None, return_lse=False,
                out=None)
    opts.update(kw)
    return R.paged_request(q, kc, vc, bt, su, **opts)


def _outcome(fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except (TypeError, ValueError) as exc:
        return type(exc), str(exc)


def _variants():
    q = torch.randn(2, 5, 4, 8)
    k = torch.randn(2, 7, 2, 8)
    ok = (q, k, k)
    yield _dense, ok, {}
    yield _dense, ok, dict(causal=True, scale=0.3, window=(2, 0), softcap=1.5, return_lse=True)
    yield _dense, ok, dict(out=torch.empty(2, 5, 4, 8))
    yield _dense, ok, dict(out=torch.empty(2, 5, 4, 8, dtype=torch.float16))  # bad out dtype
    yield _dense, ok, dict(out=torch.empty(2, 5, 4, 9))  # bad out shape
    yield _dense, ok, dict(scale=True)  # a bool is not a scale
    yield _dense, ok, dict(scale=1)  # an int scale is (normalised to float)
    yield _dense, ok, dict(scale=-1.0)
    yield _dense, ok, dict(window=[2, 0])
    yield _dense, ok, dict(softcap=None)
    yield _dense, ok, dict(alibi_slopes=torch.rand(4))
    yield _dense, ok, dict(alibi_slopes=torch.rand(3))
    yield _dense, ok, dict(sinks=torch.randn(4))
    yield _dense, (q, k.half(), k.half()), {}
    yield _dense, (q, torch.randn(2, 7, 3, 8), torch.randn(2, 7, 3, 8)), {}
    yield _dense, (q, k, torch.randn(2, 6, 2, 8)), {}
    yield _dense, (q.as_subclass(_Sub), k, k), {}
    yield _dense, (q, k.to("meta"), k.to("meta")), {}
    yield _dense, (q, k, [1]), {}
    kc = torch.randn(6, 16, 2, 8)
    bt = torch.arange(6, dtype=torch.int32).view(2, 3)
    su = torch.tensor([20, 40], dtype=torch.int32)
    pq = torch.randn(2, 4, 8)
    yield _paged, (pq, kc, kc, bt, su), {}
    yield _paged, (pq, kc, kc, bt, su), dict(max_seqlen_k=48, return_lse=True)
    yield _paged, (pq, kc, kc, bt, su), dict(max_seqlen_k=48.0)
    yield _paged, (pq, kc, kc, bt, su), dict(max_seqlen_q=2)
    yield _paged, (pq, kc, kc, bt.long(), su), {}
    yield _paged, (pq, kc, kc, bt, su[:1]), {}
    yield _paged, (torch.randn(5, 4, 8), kc, kc, bt, su), dict(
        cu_seqlens_q=torch.tensor([0, 2, 5], dtype=torch.int32), max_seqlen_q=3)
    yield _paged, (torch.randn(5, 4, 8), kc, kc, bt, su), dict(
        cu_seqlens_q=torch.tensor([0, 2, 5]), max_seqlen_q=3)  # int64 cu_seqlens


def test_remembered_outcomes_equal_fresh_checks():
    variants = list(_variants())
    R.clear_memo()
    fresh = []
    for fn, args, kw in variants:
        R.clear_memo()
        fresh.append(_outcome(fn, *args, **kw))
    assert sum(isinstance(f, tuple) and isinstance(f[0], type) for f in fresh) >= 10, \
        "the sweep must include calls the checks reject"
    R.clear_memo()
    for _ in range(2):  # every call after every other one: a memo entry never leaks across
        for (fn, args, kw), want in zip(variants, fresh):
            got = _outcome(fn, *args, **kw)
            assert got == want, (fn.__name__, kw)
    assert R._MEMO, "valid calls must be remembered"


def test_debug_flag_follows_the_environment(monkeypatch):
    for value, expect in ((None, False), ("1", True), ("0", False), ("", False), ("yes", True)):
        if value is None:
            monkeypatch.delenv("ANYATTN_DEBUG", raising=False)
        else:
            monkeypatch.setenv("ANYATTN_DEBUG", value)
        assert R.debug_checks_enabled() is expect


def test_getenv_equals_os_environ_get(monkeypatch):
    import os

    for value in (None, "", "x", "é", "a b"):
        if value is None:
            monkeypatch.delenv("ANYATTN_TEST_GETENV", raising=False)
        else:
            monkeypatch.setenv("ANYATTN_TEST_GETENV", value)
        for default in (None, "d"):
            assert R.getenv("ANYATTN_TEST_GETENV", default) == os.environ.get("ANYATTN_TEST_GETENV",
                                                                              default)
