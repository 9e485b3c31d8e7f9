"""The vendor adapters' plumbing, against small stand-in modules (CPU, no vendor package needed).

Each stand-in (``flash_attn``, ``flash_attn_interface``, ``flashinfer``, ``xformers``) exposes the
functions the real package has, with the real keyword names, records what it receives, and
computes the answer with anyattn's reference math, reproducing the real package's output
conventions (flash-attn's ``+inf`` lse on empty rows and its pre-2.6 padded varlen lse,
FlashInfer's base-2 ``(tokens, heads)`` lse, xFormers' padded lse and BMGHK layout). The tests
check what the real function would receive (argument mapping, layouts, strides), the version
gates, the arch checks (with Requests built directly: this machine has no GPU), the broken-import
path and the strict-backend error.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import math
import sys
import types
from dataclasses import dataclass

import pytest
import torch

import anyattn
from anyattn import backends, selector
from anyattn.backends import _vendor
from anyattn.backends.reference import ReferenceBackend
from anyattn.request import Request
from tests import inputs

REF = ReferenceBackend()
VENDOR = ("flash_attn", "flash_attn_3", "flashinfer", "xformers", "flash_attn_4")
STAND_IN_MODULES = ("flash_attn", "flash_attn_interface", "flashinfer", "xformers", "xformers.ops",
                    "xformers.ops.fmha", "xformers.ops.fmha.attn_bias", "xformers.ops.fmha.common",
                    "xformers.ops.fmha.dispatch")


# ----------------------------------------------------------------------------------------------
# Fixtures: install stand-ins, fake the installed version, clean up
# ----------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for name in STAND_IN_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    backends.reset()
    selector.clear_cache()
    yield
    backends.reset()
    selector.clear_cache()


def _module(name, **attrs):
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    mod.__dict__.update(attrs)
    return mod


def install(monkeypatch, *mods):
    for mod in mods:
        monkeypatch.setitem(sys.modules, mod.__name__, mod)


def set_version(monkeypatch, version):
    monkeypatch.setattr(_vendor, "installed_version", lambda dists: version)


def req(op="attention", cap=(9, 0), dtype=torch.bfloat16, d=128, dv=None, gqa=1, block_size=None, **flags):
    fields = dict(causal=False, window=False, softcap=False, alibi=False, sinks=False, lse=False, out=False,
                  grad=False, causal_offset=False)
    fields.update(flags)
    if op == "paged" and block_size is None:
        block_size = 256
    return Request(op=op, device_type="cuda", device_index=0, capability=cap, dtype=dtype, head_dim=d,
                   head_dim_v=dv or d, gqa_ratio=gqa, block_size=block_size if op == "paged" else None, **fields)


def _opts(**kw):
    base = dict(causal=False, scale=0.3, window=(-1, -1), softcap=0.0, alibi_slopes=None, sinks=None,
                return_lse=False, out=None)
    base.update(kw)
    return base


def _paged_opts(**kw):
    base = _opts(**kw)
    base.setdefault("cu_seqlens_q", None)
    base.setdefault("max_seqlen_q", 1)
    base.setdefault("max_seqlen_k", None)
    return base


def close(a, b, tol=1e-5):
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)


# ----------------------------------------------------------------------------------------------
# Stand-in: flash_attn (FlashAttention-2)
# ----------------------------------------------------------------------------------------------
def _fa_lse(lse):
    """flash-attn writes +inf for a row that sees no key."""
    return torch.where(torch.isneginf(lse), torch.full_like(lse, math.inf), lse)


def _seqused_from_cu(cu):
    return (cu[1:] - cu[:-1]).to(torch.int32)


def make_flash_attn(calls, padded_varlen_lse=False):
    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                        softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
        calls.append(("func", dict(q=q, k=k, v=v, dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
                                   window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes,
                                   return_attn_probs=return_attn_probs)))
        o, lse = REF.attention(q, k, v, **_opts(causal=causal, scale=softmax_scale, window=tuple(window_size),
                                                 softcap=softcap, alibi_slopes=alibi_slopes, return_lse=True))
        return (o, _fa_lse(lse), torch.empty(0)) if return_attn_probs else o

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                               alibi_slopes=None, deterministic=False, return_attn_probs=False, block_table=None):
        calls.append(("varlen", dict(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                                     max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, softmax_scale=softmax_scale,
                                     causal=causal, window_size=window_size, softcap=softcap,
                                     alibi_slopes=alibi_slopes, return_attn_probs=return_attn_probs,
                                     block_table=block_table)))
        opts = _opts(causal=causal, scale=softmax_scale, window=tuple(window_size), softcap=softcap,
                     alibi_slopes=alibi_slopes, return_lse=True)
        if block_table is not None:
            o, lse = REF.paged(q, k, v, block_table, _seqused_from_cu(cu_seqlens_k), cu_seqlens_q=cu_seqlens_q,
                               max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, **opts)
        else:
            o, lse = REF.varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **opts)
        lse = _fa_lse(lse)
        if padded_varlen_lse:  # flash-attn < 2.6: (B, H, max_seqlen_q)
            b, pos = _vendor.token_coordinates(cu_seqlens_q, q.shape[0])
            padded = torch.full((cu_seqlens_q.numel() - 1, q.shape[1], max_seqlen_q), 7.0)
            padded[b, :, pos] = lse.transpose(0, 1)
            lse = padded
        return (o, lse, torch.empty(0)) if return_attn_probs else o

    def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                                cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                                softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                rotary_interleaved=True, alibi_slopes=None, num_splits=0,
                                return_softmax_lse=False):
        calls.append(("kvcache", dict(q=q, k_cache=k_cache, v_cache=v_cache, cache_seqlens=cache_seqlens,
                                      block_table=block_table, softmax_scale=softmax_scale, causal=causal,
                                      window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes,
                                      return_softmax_lse=return_softmax_lse)))
        assert q.dim() == 4 and q.shape[1] == 1
        o, lse = REF.paged(q[:, 0], k_cache, v_cache, block_table, cache_seqlens,
                           **_paged_opts(causal=causal, scale=softmax_scale, window=tuple(window_size),
                                         softcap=softcap, alibi_slopes=alibi_slopes, return_lse=True))
        o = o.unsqueeze(1)
        lse = _fa_lse(lse).transpose(0, 1).unsqueeze(-1)  # (B, H, 1)
        return (o, lse) if return_softmax_lse else o

    return _module("flash_attn", flash_attn_func=flash_attn_func, flash_attn_varlen_func=flash_attn_varlen_func,
                   flash_attn_with_kvcache=flash_attn_with_kvcache, __version__="stand-in")


@pytest.fixture
def fa2(monkeypatch):
    calls = []
    install(monkeypatch, make_flash_attn(calls))
    set_version(monkeypatch, "2.6.3")
    return backends.get("flash_attn"), calls


# ----------------------------------------------------------------------------------------------
# FlashAttention-2: arch, versions, mapping
# ----------------------------------------------------------------------------------------------
def test_fa2_turing_gets_the_ampere_reason(fa2):
    b, _ = fa2
    reasons = b.reasons(req(cap=(7, 5), dtype=torch.float16))
    assert any("FlashAttention-2 needs Ampere (sm80) or newer; this GPU is 7.5 (sm75)" in r
               and "anyattn falls back to" in r for r in reasons), reasons
    assert b.reasons(req(cap=(8, 0))) == []
    assert b.reasons(req(cap=(8, 9))) == []


def test_fa2_version_gates(fa2, monkeypatch):
    b, _ = fa2
    paged = req(op="paged", causal=True, causal_offset=True)
    set_version(monkeypatch, "2.5.6")
    rs = b.reasons(paged)
    assert any("paged KV" in r and "2.5.7" in r and "2.5.6" in r for r in rs), rs
    set_version(monkeypatch, "2.5.7")
    assert b.reasons(paged) == []
    set_version(monkeypatch, "2.5.9")
    rs = b.reasons(req(softcap=True))
    assert rs and all("2.6" in r for r in rs) and "soft-capping" in rs[0], rs
    set_version(monkeypatch, "2.2.1")
    rs = b.reasons(req(window=True))
    assert any("sliding-window" in r and ">= 2.3.0" in r for r in rs), rs
    set_version(monkeypatch, "2.3.6")
    rs = b.reasons(req(alibi=True))
    assert any("ALiBi" in r and ">= 2.4.0" in r for r in rs), rs
    set_version(monkeypatch, "2.0.9")
    rs = b.reasons(req(causal=True, causal_offset=True))
    assert any("2.1.0" in r for r in rs), rs
    set_version(monkeypatch, "1.0.9")
    assert "FlashAttention-1" in b.reasons(req())[0]
    set_version(monkeypatch, "2.6.3+cu123torch2.4cxx11abiFALSE")  # local version tags parse
    assert b.reasons(req(softcap=True, window=True, alibi=True)) == []


def test_fa2_data_checks(fa2):
    b, _ = fa2
    assert any("dtype float32" in r for r in b.reasons(req(dtype=torch.float32)))
    assert any("head_dim=320" in r for r in b.reasons(req(d=320)))
    assert any("head_dim_v=64 must equal" in r for r in b.reasons(req(d=128, dv=64)))
    rs = b.reasons(req(op="paged", block_size=16))
    assert any("KV block size 16" in r and "multiple of 256" in r for r in rs), rs
    assert b.reasons(req(op="paged", block_size=512)) == []
    assert any("multiple of 8" in r for r in b.reasons(req(op="paged", d=100)))
    assert b.reasons(req(d=100)) == []  # dense pads itself
    assert any("padded" in n for n in b.notes(req(d=100)))
    assert any("gradient" in r for r in b.reasons(req(grad=True, sinks=True)))
    assert b.reasons(req(grad=True)) == []


FEATURE_CASES = {
    "plain": dict(),
    "causal": dict(causal=True),
    "window": dict(causal=False, window=(2, 1)),
    "causal_window": dict(causal=True, window=(3, -1)),
    "softcap": dict(softcap=2.5),
    "alibi": dict(alibi=True),
    "sinks": dict(sinks=True),
    "lse": dict(return_lse=True),
    "everything": dict(causal=True, window=(4, 0), softcap=3.0, alibi=True, sinks=True, return_lse=True),
}


def _materialize(case, hq, q, batch=None):
    kw = dict(FEATURE_CASES[case])
    g = torch.Generator().manual_seed(3)
    if kw.pop("alibi", False):
        kw["alibi_slopes"] = torch.rand(hq, generator=g) * 0.5
    if kw.pop("sinks", False):
        kw["sinks"] = torch.randn(hq, generator=g)
    return _opts(**kw)


@pytest.mark.parametrize("case", list(FEATURE_CASES))
def test_fa2_dense_mapping_and_result(fa2, case):
    b, calls = fa2
    q, k, v = inputs.dense(b=2, sq=5, sk=9, hq=4, hkv=2, d=16, noncontig=True)
    opts = _materialize(case, 4, q)
    o, lse = b.attention(q, k, v, **opts)
    name, got = calls[-1]
    assert name == "func"
    assert got["q"] is q and got["k"] is k and got["v"] is v  # views passed through, no copies
    assert got["softmax_scale"] == opts["scale"] and got["causal"] == opts["causal"]
    assert got["dropout_p"] == 0.0
    assert tuple(got["window_size"]) == tuple(opts["window"])
    assert got["softcap"] == opts["softcap"]
    assert got["alibi_slopes"] is opts["alibi_slopes"]
    assert got["return_attn_probs"] == (opts["return_lse"] or opts["sinks"] is not None)
    ro, rl = REF.attention(q, k, v, **opts)
    close(o, ro)
    if opts["return_lse"]:
        close(lse, rl)
    else:
        assert lse is None


def test_fa2_old_versions_get_only_the_arguments_they_know(fa2, monkeypatch):
    b, calls = fa2
    set_version(monkeypatch, "2.1.2")
    q, k, v = inputs.dense(b=1, sq=4, sk=4, hq=2, hkv=2, d=8)
    # a stand-in that, like flash-attn 2.1, has no window_size / softcap / alibi_slopes keywords
    seen = {}

    def old_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, return_attn_probs=False):
        seen.update(softmax_scale=softmax_scale, causal=causal)
        return REF.attention(q, k, v, **_opts(scale=softmax_scale, causal=causal))[0]

    sys.modules["flash_attn"].flash_attn_func = old_func
    backends.reset()
    o, _ = backends.get("flash_attn").attention(q, k, v, **_opts(causal=True))
    assert seen == {"softmax_scale": 0.3, "causal": True}
    close(o, REF.attention(q, k, v, **_opts(causal=True))[0])


def test_fa2_empty_rows_lse_is_minus_inf_and_out_is_written(fa2):
    b, calls = fa2
    q, k, v = inputs.dense(b=1, sq=6, sk=3, hq=2, hkv=1, d=8)  # causal, Sq > Sk: first rows see nothing
    buf = torch.full_like(q, 9.0)
    o, lse = b.attention(q, k, v, **_opts(causal=True, return_lse=True, out=buf))
    assert o is buf
    assert torch.isneginf(lse[:, :, :3]).all() and torch.isfinite(lse[:, :, 3:]).all()
    assert (o[:, :3] == 0).all()
    ro, rl = REF.attention(q, k, v, **_opts(causal=True, return_lse=True))
    close(o, ro)
    close(lse, rl)


@pytest.mark.parametrize("padded", [False, True], ids=["lse_2.6", "lse_padded_pre_2.6"])
def test_fa2_varlen_mapping_and_lse_layouts(monkeypatch, padded):
    calls = []
    install(monkeypatch, make_flash_attn(calls, padded_varlen_lse=padded))
    set_version(monkeypatch, "2.5.9" if padded else "2.6.3")
    b = backends.get("flash_attn")
    q, k, v, cq, ck = inputs.varlen([3, 0, 5], [4, 2, 7], hq=4, hkv=2, d=16)
    sinks = torch.randn(4)
    opts = _opts(causal=True, window=(2, -1), sinks=sinks, return_lse=True)
    o, lse = b.varlen(q, k, v, cq, ck, 5, 7, **opts)
    name, got = calls[-1]
    assert name == "varlen" and got["cu_seqlens_q"] is cq and got["cu_seqlens_k"] is ck
    assert (got["max_seqlen_q"], got["max_seqlen_k"]) == (5, 7) and got["block_table"] is None
    ro, rl = REF.varlen(q, k, v, cq, ck, 5, 7, **opts)
    close(o, ro)
    close(lse, rl)
    assert lse.shape == (4, q.shape[0])


@pytest.mark.parametrize("version,path", [("2.6.3", "kvcache"), ("2.5.9", "varlen")])
def test_fa2_paged_decode_path_by_version(monkeypatch, version, path):
    calls = []
    install(monkeypatch, make_flash_attn(calls))
    set_version(monkeypatch, version)
    b = backends.get("flash_attn")
    q, kc, vc, table, used, cu_q, mq = inputs.paged([5, 300, 17], block_size=256, hq=4, hkv=1, d=16)
    opts = _paged_opts(causal=True, softcap=1.5 if version >= "2.6" else 0.0, return_lse=True)
    o, lse = b.paged(q, kc, vc, table, used, **opts)
    name, got = calls[-1]
    assert name == path
    if path == "kvcache":
        assert got["q"].shape == (3, 1, 4, 16) and got["cache_seqlens"] is used and got["block_table"] is table
        assert got["return_softmax_lse"] is True and got["softcap"] == 1.5
    else:  # return_softmax_lse came in 2.6: the varlen kernel reads the pages instead
        assert got["block_table"] is table and got["k"] is kc
        assert got["cu_seqlens_k"].tolist() == [0, 5, 305, 322]
        assert got["cu_seqlens_q"].tolist() == [0, 1, 2, 3] and got["max_seqlen_q"] == 1
    ro, rl = REF.paged(q, kc, vc, table, used, **opts)
    close(o, ro)
    close(lse, rl)


def test_fa2_paged_chunked_prefill_uses_varlen_block_table(fa2):
    b, calls = fa2
    q, kc, vc, table, used, cu_q, mq = inputs.paged([40, 260], nq=[3, 5], block_size=256, hq=2, hkv=2, d=8)
    slopes = torch.rand(2)
    opts = _paged_opts(cu_seqlens_q=cu_q, max_seqlen_q=mq, causal=True, alibi_slopes=slopes, window=(10, -1))
    o, lse = b.paged(q, kc, vc, table, used, **opts)
    name, got = calls[-1]
    assert name == "varlen" and got["cu_seqlens_q"] is cu_q and got["alibi_slopes"] is slopes
    assert got["max_seqlen_k"] == table.shape[1] * 256  # default: the block table's capacity
    close(o, REF.paged(q, kc, vc, table, used, **opts)[0])


# ----------------------------------------------------------------------------------------------
# Broken install, strict forcing
# ----------------------------------------------------------------------------------------------
class _BrokenFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``flash_attn`` and fails to load it the way an ABI-mismatched wheel does."""

    MSG = ("/usr/lib/python3/site-packages/flash_attn_2_cuda.cpython-310-x86_64-linux-gnu.so: undefined symbol: "
           "_ZNK2at6Tensor6deviceEv")

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "flash_attn":
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ImportError(self.MSG)


@pytest.fixture
def broken_flash_attn(monkeypatch):
    finder = _BrokenFinder()
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    set_version(monkeypatch, "2.6.3")
    yield finder
    sys.modules.pop("flash_attn", None)


def test_broken_import_is_unavailable_with_its_cause(broken_flash_attn):
    b = backends.get("flash_attn")
    avail = b.availability()
    assert avail.installed and not avail.usable
    assert avail.error.startswith("ImportError: ") and "undefined symbol: _ZNK2at6Tensor6deviceEv" in avail.error
    rs = b.reasons(req(cap=(8, 0)))
    assert rs[0].startswith("unavailable: ImportError:") and "flash_attn_2_cuda" in rs[0]
    decision = selector.decide(req(cap=(8, 0)), ("flash_attn", "reference"), "backend= argument")
    cand = {c.name: c for c in decision.candidates}
    assert decision.chosen == "reference"
    assert cand["flash_attn"].status == "unavailable" and "undefined symbol" in cand["flash_attn"].reasons[0]


def test_broken_import_does_not_break_attention(broken_flash_attn):
    q, k, v = inputs.dense(b=1, sq=4, sk=4, hq=2, hkv=2, d=8)
    out = anyattn.attention(q, k, v, causal=True, backend="flash_attn,reference")
    close(out, REF.attention(q, k, v, **_opts(causal=True, scale=1 / math.sqrt(8)))[0])
    out = anyattn.attention(q, k, v)  # automatic selection never trips over it either
    close(out, REF.attention(q, k, v, **_opts(scale=1 / math.sqrt(8)))[0])


def test_strict_forced_backend_raises_with_reasons(fa2, monkeypatch):
    set_version(monkeypatch, "2.5.6")
    with pytest.raises(anyattn.NoBackendError) as err:
        selector.select(req(op="paged", cap=(8, 0), causal=True, causal_offset=True), "flash_attn")
    text = str(err.value)
    assert "'flash_attn' was requested" in text and "2.5.7" in text and "strict" in text
    with pytest.raises(anyattn.NoBackendError) as err:
        selector.select(req(cap=(7, 5), dtype=torch.float16), "FA2")
    assert "needs Ampere (sm80)" in str(err.value)
    q, k, v = inputs.dense(b=1, sq=4, sk=4, hq=2, hkv=2, d=8)
    with pytest.raises(anyattn.NoBackendError, match="runs on cuda, not cpu"):
        anyattn.attention(q, k, v, backend="flash_attn")


# ----------------------------------------------------------------------------------------------
# Stand-in: flash_attn_interface (FlashAttention-3)
# ----------------------------------------------------------------------------------------------
def make_fa3(calls, with_lse_kw=True):
    def flash_attn_func(q, k, v, softmax_scale=None, causal=False, qv=None, q_descale=None, k_descale=None,
                        v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0, num_splits=1,
                        pack_gqa=None, deterministic=False, sm_margin=0, return_attn_probs=False):
        calls.append(("func", dict(q=q, k=k, v=v, softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                                   softcap=softcap, return_attn_probs=return_attn_probs)))
        o, lse = REF.attention(q, k, v, **_opts(causal=causal, scale=softmax_scale, window=tuple(window_size),
                                                 softcap=softcap, return_lse=True))
        return (o, lse) if return_attn_probs else o

    def flash_attn_func_old(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0):
        return REF.attention(q, k, v, **_opts(causal=causal, scale=softmax_scale))[0]

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_q=None,
                               seqused_k=None, softmax_scale=None, causal=False, qv=None, q_descale=None,
                               k_descale=None, v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0,
                               num_splits=1, pack_gqa=None, deterministic=False, sm_margin=0,
                               return_attn_probs=False):
        calls.append(("varlen", dict(q=q, cu_seqlens_q=cu_seqlens_q, softmax_scale=softmax_scale, causal=causal,
                                     window_size=window_size, softcap=softcap, return_attn_probs=return_attn_probs)))
        o, lse = REF.varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                            **_opts(causal=causal, scale=softmax_scale, window=tuple(window_size), softcap=softcap,
                                    return_lse=True))
        return (o, lse) if return_attn_probs else o

    def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, qv=None, rotary_cos=None, rotary_sin=None,
                                cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, page_table=None,
                                cu_seqlens_q=None, cu_seqlens_k_new=None, max_seqlen_q=None, rotary_seqlens=None,
                                q_descale=None, k_descale=None, v_descale=None, softmax_scale=None, causal=False,
                                window_size=(-1, -1), attention_chunk=0, softcap=0.0, rotary_interleaved=True,
                                scheduler_metadata=None, num_splits=0, pack_gqa=None, sm_margin=0,
                                return_softmax_lse=False):
        calls.append(("kvcache", dict(q=q, cache_seqlens=cache_seqlens, page_table=page_table,
                                      cu_seqlens_q=cu_seqlens_q,
                                      max_seqlen_q=max_seqlen_q, softmax_scale=softmax_scale, causal=causal,
                                      window_size=window_size, softcap=softcap,
                                      return_softmax_lse=return_softmax_lse)))
        o, lse = REF.paged(q, k_cache, v_cache, page_table, cache_seqlens,
                           **_paged_opts(cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max_seqlen_q, causal=causal,
                                         scale=softmax_scale, window=tuple(window_size), softcap=softcap,
                                         return_lse=True))
        return (o, lse) if return_softmax_lse else o

    return _module("flash_attn_interface", flash_attn_func=flash_attn_func if with_lse_kw else flash_attn_func_old,
                   flash_attn_varlen_func=flash_attn_varlen_func, flash_attn_with_kvcache=flash_attn_with_kvcache)


@pytest.fixture
def fa3(monkeypatch):
    calls = []
    install(monkeypatch, make_fa3(calls))
    set_version(monkeypatch, "3.0.0b1")
    return backends.get("flash_attn_3"), calls


def test_fa3_arch(fa3):
    b, _ = fa3
    assert b.reasons(req(cap=(9, 0))) == []
    rs = b.reasons(req(cap=(8, 0)))
    assert any("FlashAttention-3 needs a Hopper GPU (sm90); this GPU is 8.0 (sm80)" in r for r in rs), rs
    assert b.reasons(req(cap=(10, 0)))  # Blackwell: not this build


def test_fa3_data_checks(fa3):
    b, _ = fa3
    assert any("ALiBi" in r for r in b.reasons(req(alibi=True)))
    assert b.reasons(req(d=192, dv=128)) == []  # DeepSeek-style
    assert any("head_dim_v=96" in r for r in b.reasons(req(d=128, dv=96)))
    assert any("multiple of 8" in r for r in b.reasons(req(d=100)))
    assert b.reasons(req(op="paged", block_size=1)) == []  # any page size
    assert b.reasons(req(softcap=True, window=True, sinks=True, lse=True, gqa=8)) == []


def test_fa3_without_lse_keyword_rejects_lse(monkeypatch):
    calls = []
    install(monkeypatch, make_fa3(calls, with_lse_kw=False))
    b = backends.get("flash_attn_3")
    rs = b.reasons(req(lse=True))
    assert any("return_attn_probs" in r for r in rs), rs
    assert any("return_attn_probs" in r for r in b.reasons(req(sinks=True)))
    assert b.reasons(req()) == []


@pytest.mark.parametrize("case", ["plain", "causal", "window", "softcap", "sinks", "lse"])
def test_fa3_dense(fa3, case):
    b, calls = fa3
    q, k, v = inputs.dense(b=2, sq=6, sk=6, hq=4, hkv=1, d=16, noncontig=True)
    opts = _materialize(case, 4, q)
    o, lse = b.attention(q, k, v, **opts)
    name, got = calls[-1]
    assert got["q"] is q and got["softmax_scale"] == opts["scale"] and got["causal"] == opts["causal"]
    assert tuple(got["window_size"]) == tuple(opts["window"]) and got["softcap"] == opts["softcap"]
    assert got["return_attn_probs"] == (opts["return_lse"] or opts["sinks"] is not None)
    ro, rl = REF.attention(q, k, v, **opts)
    close(o, ro)
    if opts["return_lse"]:
        close(lse, rl)


def test_fa3_varlen_and_paged(fa3):
    b, calls = fa3
    q, k, v, cq, ck = inputs.varlen([2, 6], [5, 6], hq=4, hkv=2, d=16)
    opts = _opts(causal=True, softcap=2.0, return_lse=True)
    o, lse = b.varlen(q, k, v, cq, ck, 6, 6, **opts)
    ro, rl = REF.varlen(q, k, v, cq, ck, 6, 6, **opts)
    close(o, ro), close(lse, rl)
    # paged decode: FA3 takes the packed q with cu_seqlens_q = arange, any page size
    q, kc, vc, table, used, _, _ = inputs.paged([5, 9, 1], block_size=3, hq=4, hkv=2, d=16)
    sinks = torch.randn(4)
    opts = _paged_opts(causal=True, sinks=sinks, return_lse=True)
    o, lse = b.paged(q, kc, vc, table, used, **opts)
    name, got = calls[-1]
    assert name == "kvcache" and got["page_table"] is table and got["cache_seqlens"] is used
    assert got["cu_seqlens_q"].tolist() == [0, 1, 2, 3] and got["max_seqlen_q"] == 1 and got["q"] is q
    ro, rl = REF.paged(q, kc, vc, table, used, **opts)
    close(o, ro), close(lse, rl)
    # chunked prefill
    q, kc, vc, table, used, cu_q, mq = inputs.paged([7, 4], nq=[3, 4], block_size=5, hq=4, hkv=2, d=16)
    opts = _paged_opts(cu_seqlens_q=cu_q, max_seqlen_q=mq, causal=True, window=(2, -1))
    o, _ = b.paged(q, kc, vc, table, used, **opts)
    assert calls[-1][1]["cu_seqlens_q"] is cu_q and calls[-1][1]["max_seqlen_q"] == mq
    close(o, REF.paged(q, kc, vc, table, used, **opts)[0])


# ----------------------------------------------------------------------------------------------
# Stand-in: flashinfer
# ----------------------------------------------------------------------------------------------
def _fi_lse(lse_h_t):
    """anyattn (H, T) natural-log lse -> FlashInfer's (T, H) base-2 lse."""
    return (lse_h_t / math.log(2)).transpose(0, 1).contiguous()


def _fi_window(window_left):
    return (window_left, -1)


def _nan_empty(o, lse):
    """FlashInfer may leave garbage in rows that see no key: the adapter must zero them."""
    return o.masked_fill(torch.isneginf(lse).transpose(0, 1).unsqueeze(-1), float("nan"))


def make_flashinfer(calls):
    """flashinfer-python 0.7.2.post1's signatures (scale_q.. o_dtype come before custom_mask in
    single_prefill; run() takes everything after its tensors by keyword; BatchDecode's plan() takes
    its options only by keyword: positional ones are deprecated and warn)."""

    def single_prefill_with_kv_cache(q, k, v, scale_q=None, scale_k=None, scale_v=None, o_dtype=None,
                                     custom_mask=None, packed_custom_mask=None, causal=False,
                                     kv_layout="NHD", pos_encoding_mode="NONE", use_fp16_qk_reduction=False,
                                     sm_scale=None, window_left=-1, logits_soft_cap=None, rope_scale=None,
                                     rope_theta=None, backend="auto", return_lse=False, kv_cache_sf=None,
                                     k_scale=None, v_scale=None):
        calls.append(("single", dict(q=q, k=k, v=v, causal=causal, kv_layout=kv_layout, sm_scale=sm_scale,
                                     window_left=window_left, logits_soft_cap=logits_soft_cap,
                                     pos_encoding_mode=pos_encoding_mode, return_lse=return_lse)))
        assert q.dim() == 3 and kv_layout == "NHD"
        o, lse = REF.attention(q[None], k[None], v[None],
                               **_opts(causal=causal, scale=sm_scale, window=_fi_window(window_left),
                                       softcap=logits_soft_cap or 0.0, return_lse=True))
        o, lse = o[0], lse[0]
        o = _nan_empty(o, lse)
        return (o, _fi_lse(lse)) if return_lse else o

    class _Wrapper:
        def __init__(self, float_workspace_buffer, kv_layout="NHD", use_cuda_graph=False, *rest, backend="auto",
                     **kw):
            assert float_workspace_buffer.dtype == torch.uint8 and kv_layout == "NHD" and not rest
            assert not use_cuda_graph
            self.ctor = dict(workspace=float_workspace_buffer, use_tensor_cores=kw.get("use_tensor_cores", False))
            self.planned = None

    class BatchPrefillWithRaggedKVCacheWrapper(_Wrapper):
        def plan(self, qo_indptr, kv_indptr, num_qo_heads, num_kv_heads, head_dim_qk, head_dim_vo=None,
                 custom_mask=None, packed_custom_mask=None, causal=False, pos_encoding_mode="NONE",
                 use_fp16_qk_reduction=False, window_left=-1, logits_soft_cap=None, sm_scale=None,
                 rope_scale=None, rope_theta=None, q_data_type="float16", kv_data_type=None, o_data_type=None,
                 non_blocking=True, prefix_len_ptr=None, token_pos_in_items_ptr=None, token_pos_in_items_len=0,
                 max_item_len_ptr=None, fixed_split_size=None, disable_split_kv=False, seq_lens=None,
                 seq_lens_q=None, max_token_per_sequence=None, max_sequence_kv=None, v_indptr=None, o_indptr=None,
                 uniform_q_len=None):
            self.planned = dict(qo_indptr=qo_indptr, kv_indptr=kv_indptr, num_qo_heads=num_qo_heads,
                                num_kv_heads=num_kv_heads, head_dim=head_dim_qk, causal=causal,
                                window_left=window_left, logits_soft_cap=logits_soft_cap, sm_scale=sm_scale,
                                q_data_type=q_data_type)
            calls.append(("ragged.plan", self.planned))

        def run(self, q, k, v, *args, q_scale=None, k_scale=None, v_scale=None, o_scale=None, out=None, lse=None,
                return_lse=False, lse_base="log2", lse_layout="NH", enable_pdl=None, kv_cache_sf=None):
            assert not args and lse_base == "log2" and lse_layout == "NH"
            p = self.planned
            assert p is not None, "run() before plan()"
            qi, ki = p["qo_indptr"].to(q.device), p["kv_indptr"].to(q.device)
            mq = int((qi[1:] - qi[:-1]).max()) if qi.numel() > 1 else 0
            mk = int((ki[1:] - ki[:-1]).max()) if ki.numel() > 1 else 0
            o, l = REF.varlen(q, k, v, qi, ki, mq, mk,
                              **_opts(causal=p["causal"], scale=p["sm_scale"], window=_fi_window(p["window_left"]),
                                      softcap=p["logits_soft_cap"] or 0.0, return_lse=True))
            calls.append(("ragged.run", dict(q=q, k=k, v=v, return_lse=return_lse)))
            o = _nan_empty(o, l)
            return (o, _fi_lse(l)) if return_lse else o

    def _table_from_csr(indptr, indices, last, page):
        batch = indptr.numel() - 1
        pages = (indptr[1:] - indptr[:-1]).tolist()
        table = torch.zeros(batch, max(max(pages), 1), dtype=torch.int32)
        for b in range(batch):
            table[b, : pages[b]] = indices[int(indptr[b]): int(indptr[b + 1])]
        used = torch.tensor([(n - 1) * page + int(last[b]) if n else 0 for b, n in enumerate(pages)],
                            dtype=torch.int32)
        return table, used

    class BatchPrefillWithPagedKVCacheWrapper(_Wrapper):
        def plan(self, qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, num_qo_heads,
                 num_kv_heads, head_dim_qk, page_size, head_dim_vo=None, custom_mask=None,
                 packed_custom_mask=None, causal=False, pos_encoding_mode="NONE", use_fp16_qk_reduction=False,
                 sm_scale=None, window_left=-1, logits_soft_cap=None, rope_scale=None, rope_theta=None,
                 q_data_type="float16", kv_data_type=None, o_data_type=None, non_blocking=True,
                 prefix_len_ptr=None, token_pos_in_items_ptr=None, token_pos_in_items_len=0, max_item_len_ptr=None,
                 seq_lens=None, seq_lens_q=None, block_tables=None, max_token_per_sequence=None,
                 max_sequence_kv=None, fixed_split_size=None, disable_split_kv=False, uniform_q_len=None):
            self.planned = dict(qo_indptr=qo_indptr, indptr=paged_kv_indptr, indices=paged_kv_indices,
                                last=paged_kv_last_page_len, page_size=page_size, causal=causal,
                                window_left=window_left, logits_soft_cap=logits_soft_cap, sm_scale=sm_scale)
            calls.append(("paged_prefill.plan", self.planned))

        def run(self, q, paged_kv_cache, *args, q_scale=None, k_scale=None, v_scale=None, out=None, lse=None,
                return_lse=False, lse_base="log2", lse_layout="NH", enable_pdl=None, window_left=None, sinks=None,
                kv_cache_sf=None, skip_softmax_threshold_scale_factor=None, use_fp16_softmax=None,
                uses_spcompress=None):
            assert not args and sinks is None and lse_base == "log2"
            p = self.planned
            kc, vc = paged_kv_cache
            table, used = _table_from_csr(p["indptr"], p["indices"], p["last"], p["page_size"])
            qi = p["qo_indptr"]
            mq = int((qi[1:] - qi[:-1]).max())
            o, l = REF.paged(q, kc, vc, table, used,
                             **_paged_opts(cu_seqlens_q=qi, max_seqlen_q=mq, causal=p["causal"], scale=p["sm_scale"],
                                           window=_fi_window(p["window_left"]), softcap=p["logits_soft_cap"] or 0.0,
                                           return_lse=True))
            o = _nan_empty(o, l)
            return (o, _fi_lse(l)) if return_lse else o

    class BatchDecodeWithPagedKVCacheWrapper(_Wrapper):
        def plan(self, indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim, page_size,
                 *deprecated_positional_args, **kwargs):
            # 0.7.2: optional arguments after page_size given positionally are deprecated (they warn
            # and are scheduled for removal): the adapter must pass them by keyword.
            assert not deprecated_positional_args, "BatchDecode plan(): optional arguments passed positionally"
            return self._plan_impl(indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim,
                                   page_size, **kwargs)

        def _plan_impl(self, indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim, page_size, *,
                       pos_encoding_mode="NONE", window_left=-1, window_right=0, logits_soft_cap=None,
                       q_data_type="float16", kv_data_type=None, o_data_type=None, data_type=None, sm_scale=None,
                       rope_scale=None, rope_theta=None, non_blocking=True, block_tables=None, seq_lens=None,
                       fixed_split_size=None, disable_split_kv=False, q_len_per_req=1, is_causal=None):
            assert window_right == 0 and q_len_per_req == 1 and data_type is None
            self.planned = dict(indptr=indptr, indices=indices, last=last_page_len, page_size=page_size,
                                window_left=window_left, logits_soft_cap=logits_soft_cap, sm_scale=sm_scale,
                                num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads)
            calls.append(("decode.plan", self.planned))

        def run(self, q, paged_kv_cache, *args, q_scale=None, k_scale=None, v_scale=None, out=None, lse=None,
                return_lse=False, enable_pdl=None, window_left=None, sinks=None, q_len_per_req=None,
                skip_softmax_threshold_scale_factor=None, kv_cache_sf=None):
            assert not args and sinks is None and q_len_per_req is None
            p = self.planned
            kc, vc = paged_kv_cache
            table, used = _table_from_csr(p["indptr"], p["indices"], p["last"], p["page_size"])
            o, l = REF.paged(q, kc, vc, table, used,
                             **_paged_opts(causal=False, scale=p["sm_scale"], window=_fi_window(p["window_left"]),
                                           softcap=p["logits_soft_cap"] or 0.0, return_lse=True))
            return (o, _fi_lse(l)) if return_lse else o

    return _module("flashinfer", single_prefill_with_kv_cache=single_prefill_with_kv_cache,
                   BatchPrefillWithRaggedKVCacheWrapper=BatchPrefillWithRaggedKVCacheWrapper,
                   BatchPrefillWithPagedKVCacheWrapper=BatchPrefillWithPagedKVCacheWrapper,
                   BatchDecodeWithPagedKVCacheWrapper=BatchDecodeWithPagedKVCacheWrapper)


@pytest.fixture
def fi(monkeypatch):
    calls = []
    install(monkeypatch, make_flashinfer(calls))
    set_version(monkeypatch, "0.7.2.post1")
    return backends.get("flashinfer"), calls


def test_flashinfer_checks(fi, monkeypatch):
    b, _ = fi
    assert b.reasons(req(cap=(7, 5), dtype=torch.float16)) == []
    assert any("bfloat16 needs sm80" in r for r in b.reasons(req(cap=(7, 5), dtype=torch.bfloat16)))
    assert any("needs Turing (sm75)" in r for r in b.reasons(req(cap=(7, 0), dtype=torch.float16)))
    assert any("ALiBi" in r for r in b.reasons(req(alibi=True)))
    assert any("backward" in r for r in b.reasons(req(grad=True)))
    assert any("head_dim=96" in r for r in b.reasons(req(d=96)))
    assert b.reasons(req(op="paged", block_size=1)) == []
    assert any("sync" in n for n in b.notes(req(op="varlen")))
    # the measured JIT costs reach explain() for every op: a user waiting 82 s needs to know why
    for op in ("attention", "varlen", "paged"):
        assert any("JIT-compiles with nvcc" in n and "first prefill 82 s" in n for n in b.notes(req(op=op)))
    set_version(monkeypatch, "0.1.6")
    assert any("0.2.0" in r and "plan()/run()" in r for r in b.reasons(req()))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", ["plain", "causal", "causal_window", "softcap", "sinks", "lse"])
def test_flashinfer_dense(fi, batch, case):
    b, calls = fi
    q, k, v = inputs.dense(b=batch, sq=5, sk=8, hq=4, hkv=2, d=64, noncontig=True)
    opts = _materialize(case, 4, q)
    o, lse = b.attention(q, k, v, **opts)
    if batch == 1:
        name, got = calls[-1]
        assert name == "single" and got["sm_scale"] == opts["scale"] and got["kv_layout"] == "NHD"
        assert got["pos_encoding_mode"] == "NONE"
        assert got["logits_soft_cap"] == (opts["softcap"] or None)
        assert got["window_left"] == opts["window"][0]
    else:
        plan = [c for n, c in calls if n == "ragged.plan"][-1]
        assert plan["qo_indptr"].device.type == "cpu" and plan["qo_indptr"].tolist() == [0, 5, 10, 15]
        assert plan["kv_indptr"].tolist() == [0, 8, 16, 24] and plan["causal"] == opts["causal"]
        assert (plan["num_qo_heads"], plan["num_kv_heads"], plan["head_dim"]) == (4, 2, 64)
    ro, rl = REF.attention(q, k, v, **opts)
    close(o, ro)
    if opts["return_lse"]:
        close(lse, rl)


def test_flashinfer_window_mapping(fi):
    b, calls = fi
    q, k, v = inputs.dense(b=1, sq=6, sk=6, hq=2, hkv=2, d=64)
    o, _ = b.attention(q, k, v, **_opts(window=(2, 0)))  # right bound 0 == causal
    assert calls[-1][1]["causal"] is True and calls[-1][1]["window_left"] == 2
    close(o, REF.attention(q, k, v, **_opts(window=(2, 0)))[0])
    with pytest.raises(ValueError, match="left side"):
        b.attention(q, k, v, **_opts(window=(2, 3)))


def test_flashinfer_rejects_right_bounded_windows(fi):
    b, calls = fi
    rs = b.reasons(req(window=True, window_right=True))
    assert any("left side" in r for r in rs), rs
    assert not any("left side" in r for r in b.reasons(req(window=True)))
    from anyattn.request import dense_request

    q, k, v = inputs.dense(b=1, sq=6, sk=6, hq=2, hkv=2, d=64)
    common = dict(scale=None, softcap=0.0, alibi_slopes=None, sinks=None, return_lse=False, out=None)
    assert dense_request(q, k, v, causal=False, window=(2, 3), **common)[0].window_right
    assert not dense_request(q, k, v, causal=True, window=(2, 3), **common)[0].window_right
    assert not dense_request(q, k, v, causal=False, window=(2, 0), **common)[0].window_right
    # decode: the query is the last token, so a right bound changes nothing and is accepted
    q, kc, vc, table, used, _, _ = inputs.paged([9, 4], block_size=4, hq=2, hkv=2, d=64)
    opts = _paged_opts(causal=False, window=(3, 2))
    o, _ = b.paged(q, kc, vc, table, used, **opts)
    assert calls[-1][1]["window_left"] == 3
    close(o, REF.paged(q, kc, vc, table, used, **opts)[0])


def test_flashinfer_empty_rows_are_zero(fi):
    b, _ = fi
    q, k, v = inputs.dense(b=1, sq=6, sk=3, hq=2, hkv=2, d=64)
    o, lse = b.attention(q, k, v, **_opts(causal=True, return_lse=True))
    assert not torch.isnan(o).any() and (o[:, :3] == 0).all() and torch.isneginf(lse[:, :, :3]).all()


def test_flashinfer_varlen(fi):
    b, calls = fi
    q, k, v, cq, ck = inputs.varlen([3, 0, 6], [5, 2, 6], hq=4, hkv=1, d=128)
    sinks = torch.randn(4)
    opts = _opts(causal=True, window=(3, -1), softcap=4.0, sinks=sinks, return_lse=True)
    o, lse = b.varlen(q, k, v, cq, ck, 6, 6, **opts)
    plan = [c for n, c in calls if n == "ragged.plan"][-1]
    assert plan["qo_indptr"] is cq and plan["kv_indptr"] is ck and plan["logits_soft_cap"] == 4.0
    ro, rl = REF.varlen(q, k, v, cq, ck, 6, 6, **opts)
    close(o, ro), close(lse, rl)


def test_flashinfer_csr_page_table():
    from anyattn.backends.flashinfer import csr_page_table

    table = torch.tensor([[7, 3, 9], [4, 0, 0], [2, 8, 0], [5, 5, 5]], dtype=torch.int32)
    used = torch.tensor([33, 16, 17, 0], dtype=torch.int32)
    indptr, indices, last = csr_page_table(table, used, 16)
    assert indptr.tolist() == [0, 3, 4, 6, 6]
    assert indices[:6].tolist() == [7, 3, 9, 4, 2, 8]
    assert last.tolist() == [1, 16, 1, 0]


@pytest.mark.parametrize("chunked", [False, True])
def test_flashinfer_paged(fi, chunked):
    b, calls = fi
    if chunked:
        q, kc, vc, table, used, cu_q, mq = inputs.paged([20, 9], nq=[4, 2], block_size=8, hq=4, hkv=2, d=64)
        opts = _paged_opts(cu_seqlens_q=cu_q, max_seqlen_q=mq, causal=True, window=(5, -1), return_lse=True)
    else:
        q, kc, vc, table, used, _, _ = inputs.paged([20, 9, 1], block_size=8, hq=4, hkv=1, d=64)
        opts = _paged_opts(causal=True, softcap=3.0, sinks=torch.randn(4), return_lse=True)
    o, lse = b.paged(q, kc, vc, table, used, **opts)
    plan_name = "paged_prefill.plan" if chunked else "decode.plan"
    plan = [c for n, c in calls if n == plan_name][-1]
    assert plan["page_size"] == 8 and plan["sm_scale"] == opts["scale"]
    if not chunked:
        assert b._wrappers  # cached wrapper with tensor cores for GQA
        (kind, _, kw), w = next(iter(b._wrappers.items()))
        assert kind == "BatchDecodeWithPagedKVCacheWrapper" and dict(kw)["use_tensor_cores"] is True
        assert w.ctor["workspace"].numel() == 128 * 1024 * 1024
    ro, rl = REF.paged(q, kc, vc, table, used, **opts)
    close(o, ro), close(lse, rl)


# ----------------------------------------------------------------------------------------------
# Stand-in: xformers
# ----------------------------------------------------------------------------------------------
def make_xformers(calls, has_cpp=True, dispatch_error=None):
    ab = _module("xformers.ops.fmha.attn_bias")

    @dataclass
    class LowerTriangularFromBottomRightMask:
        pass

    @dataclass
    class LowerTriangularFromBottomRightLocalAttentionMask:
        _window_size: int

    @dataclass
    class LocalAttentionFromBottomRightMask:
        window_left: int
        window_right: int

    @dataclass
    class BlockDiagonalMask:
        q_seqlen: list
        kv_seqlen: list
        causal: bool = False
        window_size: int | None = None

        @classmethod
        def from_seqlens(cls, q_seqlen, kv_seqlen=None, *, device=None):
            assert isinstance(q_seqlen, list) and (kv_seqlen is None or isinstance(kv_seqlen, list))
            return cls(list(q_seqlen), list(kv_seqlen if kv_seqlen is not None else q_seqlen))

        def make_local_attention_from_bottomright(self, window_size):
            return BlockDiagonalCausalLocalAttentionFromBottomRightMask(self.q_seqlen, self.kv_seqlen, True,
                                                                         window_size)

    class BlockDiagonalCausalFromBottomRightMask(BlockDiagonalMask):
        @classmethod
        def from_seqlens(cls, q_seqlen, kv_seqlen=None, *, device=None):
            m = super().from_seqlens(q_seqlen, kv_seqlen, device=device)
            m.causal = True
            return m

    class BlockDiagonalCausalLocalAttentionFromBottomRightMask(BlockDiagonalMask):
        pass

    @dataclass
    class BlockDiagonalPaddedKeysMask:
        q_seqlen: list
        kv_padding: int
        kv_seqlen: list
        causal = False

        @classmethod
        def from_seqlens(cls, q_seqlen, kv_padding, kv_seqlen, causal_diagonal=None, *, device=None):
            assert isinstance(q_seqlen, list) and isinstance(kv_seqlen, list)
            return cls(q_seqlen, kv_padding, kv_seqlen)

        def make_paged(self, block_tables, page_size, paged_type):
            return paged_type(self.q_seqlen, self.kv_seqlen, block_tables, page_size)

    class BlockDiagonalCausalWithOffsetPaddedKeysMask(BlockDiagonalPaddedKeysMask):
        causal = True

    @dataclass
    class PagedBlockDiagonalPaddedKeysMask:
        q_seqlen: list
        kv_seqlen: list
        block_tables: torch.Tensor
        page_size: int
        causal = False

    class PagedBlockDiagonalCausalWithOffsetPaddedKeysMask(PagedBlockDiagonalPaddedKeysMask):
        causal = True

    for cls in (LowerTriangularFromBottomRightMask, LowerTriangularFromBottomRightLocalAttentionMask,
                LocalAttentionFromBottomRightMask, BlockDiagonalMask, BlockDiagonalCausalFromBottomRightMask,
                BlockDiagonalCausalLocalAttentionFromBottomRightMask, BlockDiagonalPaddedKeysMask,
                BlockDiagonalCausalWithOffsetPaddedKeysMask, PagedBlockDiagonalPaddedKeysMask,
                PagedBlockDiagonalCausalWithOffsetPaddedKeysMask):
        setattr(ab, cls.__name__, cls)

    def _bmhk(q, k, v):
        """BMGHK (K/V expanded with stride 0 over H) back to BMHK with Hkv heads for the reference."""
        if q.dim() == 5:
            assert k.stride(3) == 0 and v.stride(3) == 0, "K/V must be expanded, not copied"
            return q.flatten(2, 3), k[:, :, :, 0], v[:, :, :, 0]
        return q, k, v

    def _cu(lens):
        return inputs.cu(lens)

    def _compute(q, k, v, attn_bias, scale):
        qb, kb, vb = _bmhk(q, k, v)
        o_opts = dict(scale=scale if scale is not None else q.shape[-1] ** -0.5, return_lse=True)
        if attn_bias is None or isinstance(attn_bias, (LowerTriangularFromBottomRightMask,
                                                       LowerTriangularFromBottomRightLocalAttentionMask,
                                                       LocalAttentionFromBottomRightMask)):
            if isinstance(attn_bias, LowerTriangularFromBottomRightLocalAttentionMask):
                o_opts.update(causal=True, window=(attn_bias._window_size - 1, -1))
            elif isinstance(attn_bias, LowerTriangularFromBottomRightMask):
                o_opts.update(causal=True)
            elif isinstance(attn_bias, LocalAttentionFromBottomRightMask):
                o_opts.update(window=(attn_bias.window_left, attn_bias.window_right))
            o, lse = REF.attention(qb, kb, vb, **_opts(**o_opts))
            # cutlass-style lse: padded to a multiple of 32 with garbage; BMGHK splits the heads
            pad = (-lse.shape[-1]) % 32
            lse = torch.nn.functional.pad(lse, (0, pad), value=123.0)
            if q.dim() == 5:
                lse = lse.unflatten(1, q.shape[2:4])
            return o.reshape(*q.shape[:-1], v.shape[-1]), lse
        if isinstance(attn_bias, PagedBlockDiagonalPaddedKeysMask):
            page = attn_bias.page_size
            kc = kb[0].unflatten(0, (-1, page))
            vc = vb[0].unflatten(0, (-1, page))
            used = torch.tensor(attn_bias.kv_seqlen, dtype=torch.int32)
            cq = _cu(attn_bias.q_seqlen)
            o, lse = REF.paged(qb[0], kc, vc, attn_bias.block_tables, used,
                               **_paged_opts(cu_seqlens_q=cq, max_seqlen_q=max(attn_bias.q_seqlen),
                                             causal=attn_bias.causal, **o_opts))
        else:
            cq, ck = _cu(attn_bias.q_seqlen), _cu(attn_bias.kv_seqlen)
            if attn_bias.window_size is not None:
                o_opts["window"] = (attn_bias.window_size - 1, -1)
            o, lse = REF.varlen(qb[0], kb[0], vb[0], cq, ck, max(attn_bias.q_seqlen), max(attn_bias.kv_seqlen),
                                **_opts(causal=attn_bias.causal, **o_opts))
        # per-sequence padded lse (num_seqs, [G,] H, max_q rounded to 32), like torch's cutlass kernel
        nseq, mq = cq.numel() - 1, max(max(attn_bias.q_seqlen), 1)
        padded = torch.full((nseq, lse.shape[0], mq + (-mq) % 32), 55.0)
        bidx, pos = _vendor.token_coordinates(cq, qb.shape[1])
        padded[bidx, :, pos] = lse.transpose(0, 1)
        if q.dim() == 5:
            padded = padded.unflatten(1, q.shape[2:4])
        return o.reshape(*q.shape[:-1], v.shape[-1]), padded

    def memory_efficient_attention_forward_requires_grad(query, key, value, attn_bias=None, p=0.0, scale=None,
                                                         *, op=None, output_dtype=None):
        calls.append(("fw_lse", dict(q=query, k=key, v=value, attn_bias=attn_bias, scale=scale)))
        return _compute(query, key, value, attn_bias, scale)

    def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None, *, op=None,
                                   output_dtype=None):
        calls.append(("autograd", dict(q=query, k=key, v=value, attn_bias=attn_bias, scale=scale)))
        return _compute(query, key, value, attn_bias, scale)[0]

    @dataclass
    class Inputs:
        query: torch.Tensor
        key: torch.Tensor
        value: torch.Tensor
        attn_bias: object = None
        p: float = 0.0
        scale: float | None = None

    def _dispatch_fw(inp, needs_gradient):
        calls.append(("dispatch", dict(inp=inp, needs_gradient=needs_gradient)))
        if dispatch_error is not None:
            raise NotImplementedError(dispatch_error)
        return "fa2F"

    exc = type("xFormersInvalidLibException", (Exception,), {})()
    exc.build_info = types.SimpleNamespace(torch_version="2.10.0+cu128")
    cpp = types.SimpleNamespace(_cpp_library_load_exception=None if has_cpp else exc)
    root = _module("xformers", _has_cpp_library=has_cpp, _cpp_lib=cpp, __version__="0.0.35")
    ops = _module("xformers.ops", memory_efficient_attention=memory_efficient_attention,
                  memory_efficient_attention_forward_requires_grad=memory_efficient_attention_forward_requires_grad)
    fmha = _module("xformers.ops.fmha", attn_bias=ab,
                   memory_efficient_attention_forward_requires_grad=memory_efficient_attention_forward_requires_grad)
    common = _module("xformers.ops.fmha.common", Inputs=Inputs)
    dispatch = _module("xformers.ops.fmha.dispatch", _dispatch_fw=_dispatch_fw)
    root.ops, ops.fmha, fmha.common, fmha.dispatch = ops, fmha, common, dispatch
    return root, ops, fmha, ab, common, dispatch


@pytest.fixture
def xf(monkeypatch):
    calls = []
    install(monkeypatch, *make_xformers(calls))
    set_version(monkeypatch, "0.0.35")
    b = backends.get("xformers")
    monkeypatch.setattr(b, "_probe_device", lambda req: torch.device("cpu"))  # no GPU here
    return b, calls


NO_CPP_MESSAGE = """No operator found for `memory_efficient_attention_forward` with inputs:
     query       : shape=(1, 16, 2, 1, 128) (torch.bfloat16)
     key         : shape=(1, 16, 2, 1, 128) (torch.bfloat16)
     value       : shape=(1, 16, 2, 1, 128) (torch.bfloat16)
     attn_bias   : <class 'xformers.ops.fmha.attn_bias.LowerTriangularFromBottomRightMask'>
     p           : 0.0
`fa3F@0.0.0` is not supported because:
    operator wasn't built - see `python -m xformers.info` for more info
`fa2F@0.0.0` is not supported because:
    operator wasn't built - see `python -m xformers.info` for more info
`cutlassF-pt` is not supported because:
    xFormers wasn't build with CUDA support"""


def test_xformers_checks(xf, monkeypatch):
    b, calls = xf
    assert b.reasons(req(cap=(7, 5), dtype=torch.float16)) == []
    assert b.reasons(req(cap=(5, 2), dtype=torch.float32)) == []
    assert any("sm50" in r for r in b.reasons(req(cap=(3, 7))))
    assert any("soft-capping" in r for r in b.reasons(req(softcap=True)))
    assert any("ALiBi" in r for r in b.reasons(req(alibi=True)))
    assert any("causal only" in r for r in b.reasons(req(op="varlen", window=True)))
    assert b.reasons(req(op="varlen", window=True, causal=True, causal_offset=True)) == []
    assert any("multiple of 256" in r for r in b.reasons(req(op="paged", block_size=16)))
    # the dispatcher is asked with stand-ins of the request's signature
    b.reasons(req(gqa=4, causal=True))
    inp = [c["inp"] for n, c in calls if n == "dispatch"][-1]
    assert inp.query.shape == (1, 16, 2, 4, 128) and inp.key.stride(3) == 0
    assert type(inp.attn_bias).__name__ == "LowerTriangularFromBottomRightMask"


def test_xformers_without_cpp_ops_is_a_reason(monkeypatch):
    calls = []
    install(monkeypatch, *make_xformers(calls, has_cpp=False, dispatch_error=NO_CPP_MESSAGE))
    b = backends.get("xformers")
    monkeypatch.setattr(b, "_probe_device", lambda req: torch.device("cpu"))
    rs = b.reasons(req(causal=True))
    assert rs[0].startswith("xFormers' C++/CUDA extensions did not load (built for torch 2.10.0+cu128")
    assert any(r.startswith("cutlassF-pt: xFormers wasn't build with CUDA support") for r in rs), rs
    assert any(r.startswith("fa2F@0.0.0: operator wasn't built") for r in rs), rs
    decision = selector.decide(req(causal=True), ("xformers", "reference"), "backend= argument")
    assert decision.chosen == "reference" and decision.candidates[0].status == "rejected"
    # probe failures of any other kind are reasons too, never exceptions
    monkeypatch.setattr(b, "_probe_device", lambda req: (_ for _ in ()).throw(RuntimeError("no CUDA")))
    b._probe_cache.clear()
    assert "could not be asked" in b.reasons(req(causal=True, window=True))[0]


@pytest.mark.parametrize("case", ["plain", "causal", "window", "causal_window", "sinks", "lse"])
@pytest.mark.parametrize("gqa", [1, 2])
def test_xformers_dense(xf, case, gqa):
    b, calls = xf
    q, k, v = inputs.dense(b=2, sq=7, sk=9, hq=4, hkv=4 // gqa, d=16, noncontig=True)
    opts = _materialize(case, 4, q)
    o, lse = b.attention(q, k, v, **opts)
    name, got = calls[-1]
    assert name == "fw_lse" and got["scale"] == opts["scale"]
    if gqa > 1:
        assert got["q"].shape == (2, 7, 2, 2, 16) and got["k"].shape == (2, 9, 2, 2, 16)
        assert got["k"].stride(3) == 0 and got["q"].data_ptr() == q.data_ptr()
    else:
        assert got["q"] is q
    bias = got["attn_bias"]
    expect = {"plain": "NoneType", "causal": "LowerTriangularFromBottomRightMask",
              "window": "LocalAttentionFromBottomRightMask",
              "causal_window": "LowerTriangularFromBottomRightLocalAttentionMask",
              "sinks": "NoneType", "lse": "NoneType"}[case]
    assert type(bias).__name__ == expect
    if case == "causal_window":
        assert bias._window_size == 4
    ro, rl = REF.attention(q, k, v, **opts)
    close(o, ro)
    if opts["return_lse"]:
        close(lse, rl)


def test_xformers_grad_uses_autograd_api(xf):
    b, calls = xf
    q, k, v = (t.requires_grad_() for t in inputs.dense(b=1, sq=4, sk=4, hq=2, hkv=2, d=8))
    o, _ = b.attention(q, k, v, **_opts(causal=True))
    assert calls[-1][0] == "autograd"
    close(o, REF.attention(q, k, v, **_opts(causal=True))[0])


def test_xformers_varlen(xf):
    b, calls = xf
    q, k, v, cq, ck = inputs.varlen([3, 0, 6], [5, 2, 6], hq=4, hkv=2, d=16)
    opts = _opts(causal=True, window=(2, -1), sinks=torch.randn(4), return_lse=True)
    o, lse = b.varlen(q, k, v, cq, ck, 6, 6, **opts)
    bias = calls[-1][1]["attn_bias"]
    assert type(bias).__name__ == "BlockDiagonalCausalLocalAttentionFromBottomRightMask"
    assert bias.q_seqlen == [3, 0, 6] and bias.kv_seqlen == [5, 2, 6] and bias.window_size == 3
    ro, rl = REF.varlen(q, k, v, cq, ck, 6, 6, **opts)
    close(o, ro), close(lse, rl)
    o, _ = b.varlen(q, k, v, cq, ck, 6, 6, **_opts())
    assert type(calls[-1][1]["attn_bias"]).__name__ == "BlockDiagonalMask"
    close(o, REF.varlen(q, k, v, cq, ck, 6, 6, **_opts())[0])


@pytest.mark.parametrize("chunked", [False, True])
def test_xformers_paged(xf, chunked):
    b, calls = xf
    if chunked:
        q, kc, vc, table, used, cu_q, mq = inputs.paged([300, 20], nq=[3, 2], block_size=256, hq=4, hkv=2, d=16)
        opts = _paged_opts(cu_seqlens_q=cu_q, max_seqlen_q=mq, causal=True, return_lse=True)
    else:
        q, kc, vc, table, used, _, _ = inputs.paged([300, 20, 1], block_size=256, hq=4, hkv=1, d=16)
        opts = _paged_opts(causal=True, sinks=torch.randn(4), return_lse=True)
    o, lse = b.paged(q, kc, vc, table, used, **opts)
    bias = calls[-1][1]["attn_bias"]
    assert type(bias).__name__ == "PagedBlockDiagonalCausalWithOffsetPaddedKeysMask"
    assert bias.block_tables is table and bias.page_size == 256 and bias.kv_seqlen == used.tolist()
    ro, rl = REF.paged(q, kc, vc, table, used, **opts)
    close(o, ro), close(lse, rl)


# ----------------------------------------------------------------------------------------------
# All four: registry wiring, lazy imports
# ----------------------------------------------------------------------------------------------
def test_registry_names_and_aliases():
    for name in VENDOR:
        b = backends.get(name)
        assert b.name == name and b.caps.devices == frozenset({"cuda"})
    for alias, canonical in (("FLASH_ATTN", "flash_attn"), ("fa3", "flash_attn_3"), ("FLASHINFER", "flashinfer"),
                             ("FLASH_ATTN_4", "flash_attn_4"), ("fa4", "flash_attn_4"),
                             ("flash-attn", "flash_attn"), ("XFORMERS", "xformers")):
        assert selector.resolve_name(alias) == canonical


def test_not_installed_reason_and_no_import_on_cpu():
    for name in VENDOR:
        b = backends.get(name)
        assert b.reasons(req())[0].startswith("not installed")
    q, k, v = inputs.dense(b=1, sq=3, sk=3, hq=2, hkv=2, d=8)
    anyattn.attention(q, k, v)
    assert not any(m in sys.modules for m in ("flash_attn", "flash_attn.cute", "flash_attn_interface", "flashinfer",
                                             "xformers"))
