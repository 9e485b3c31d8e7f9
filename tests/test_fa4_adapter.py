"""The FlashAttention-4 adapter against an on-disk stand-in of ``flash_attn.cute`` (CPU).

The stand-in is a real package directory put on ``sys.path`` (like FA4's wheel: ``flash_attn/cute``
with no ``flash_attn/__init__.py``), whose ``interface.py`` has the signatures of flash-attn-4
4.0.0b36 (``flash_attn_func``, ``flash_attn_varlen_func``, the private ``_flash_attn_fwd`` with
``out=``), asserts what the real one asserts about its arguments (int32 page table without
``cu_seqlens_k``, sink dtype and shape, window sides ``None`` or >= 0), records every call and
computes with anyattn's reference math, autograd included. Also the FA2/FA4 namespace clash, the
dependency checks done from files, and the deferred import.
"""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch

import anyattn
from anyattn import backends, selector
from anyattn.backends import _vendor
from anyattn.backends.reference import ReferenceBackend
from tests import inputs
from tests.test_vendor_adapters import _opts, _paged_opts, close
from tests.test_vendor_adapters import req as _vendor_req

REF = ReferenceBackend()

INTERFACE = '''
"""Stand-in for flash_attn/cute/interface.py (flash-attn-4 4.0.0b36 signatures)."""
from typing import Optional, Tuple, Callable
import torch
from anyattn.backends.reference import ReferenceBackend

REF = ReferenceBackend()
CALLS = []


def _win(window_size):
    # FA4 takes None for an unbounded side; a -1 would be used as a bound (one key short)
    assert all(w is None or w >= 0 for w in window_size), f"window_size {window_size}: -1 is not unbounded in FA4"
    return tuple(-1 if w is None else w for w in window_size)


def _opts(softmax_scale, causal, window_size, softcap, learnable_sink):
    if learnable_sink is not None:
        assert learnable_sink.dtype in (torch.float16, torch.bfloat16, torch.float32)
    return dict(causal=causal, scale=softmax_scale, window=_win(window_size), softcap=softcap or 0.0,
                alibi_slopes=None, sinks=learnable_sink, return_lse=True, out=None)


def _compute(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, page_table, opts):
    if page_table is not None:
        assert cu_seqlens_k is None, "page_table is not supported with cu_seqlens_k"
        assert page_table.dtype == torch.int32 and page_table.stride(-1) == 1
        if cu_seqlens_q is None:  # dense q (B, Sq, H, D) over pages
            assert q.dim() == 4 and q.shape[1] == 1
            o, lse = REF.paged(q[:, 0], k, v, page_table, seqused_k, cu_seqlens_q=None, max_seqlen_q=1,
                               max_seqlen_k=max_seqlen_k, **opts)
            return o.unsqueeze(1), lse.transpose(0, 1).unsqueeze(-1)  # (B, H, 1)
        return REF.paged(q, k, v, page_table, seqused_k, cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max_seqlen_q,
                         max_seqlen_k=max_seqlen_k, **opts)
    if cu_seqlens_q is not None:
        return REF.varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **opts)
    return REF.attention(q, k, v, **opts)


def _flash_attn_fwd(q, k, v, qv=None, cu_seqlens_q=None, cu_seqlens_k=None, seqused_q=None, seqused_k=None,
                    max_seqlen_q=None, max_seqlen_k=None, min_seqlen_k=None, page_table=None, softmax_scale=None,
                    causal=False, softcap=None, window_size_left=None, window_size_right=None,
                    learnable_sink=None, tile_mn=None, mma_pv_is_rs=None, intra_wg_overlap=None,
                    num_threads=384, num_splits=1, pack_gqa=None, _arch=None, score_mod=None, mask_mod=None,
                    block_sparse_tensors=None, return_lse=False, out=None, lse=None, aux_tensors=None,
                    aux_scalars=None, q_descale=None, k_descale=None, v_descale=None, gather_kv_indices=None,
                    scheduler_metadata=None, seqlen_k_per_split=None, disable_scheduler_metadata=False,
                    gather_bwd_recompute_p=False):
    CALLS.append(("_flash_attn_fwd", dict(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                                          seqused_k=seqused_k, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
                                          page_table=page_table, softmax_scale=softmax_scale, causal=causal,
                                          softcap=softcap, window=(window_size_left, window_size_right),
                                          learnable_sink=learnable_sink, return_lse=return_lse, out=out,
                                          num_splits=num_splits)))
    assert not any(t is not None and t.requires_grad and torch.is_grad_enabled() for t in (q, k, v)), \\
        "the adapter must use the autograd Function when a backward is needed"
    o, l = _compute(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, page_table,
                    _opts(softmax_scale, causal, (window_size_left, window_size_right), softcap, learnable_sink))
    if out is not None:
        assert out.shape == o.shape and out.dtype == o.dtype, (out.shape, o.shape)
        out.copy_(o)
        o = out
    return o, (l if return_lse else None), None, None, None


def flash_attn_func(q, k, v, qv=None, gather_kv_indices=None, softmax_scale=None, causal=False,
                    window_size=(None, None), learnable_sink=None, softcap=0.0, num_splits=1, pack_gqa=None,
                    deterministic=False, score_mod=None, score_mod_bwd=None, mask_mod=None, aux_tensors=None,
                    aux_scalars=None, block_sparse_tensors=None, block_sparse_tensors_bwd=None, return_lse=False,
                    gather_bwd_recompute_p=False, gather_bwd_token_chunk=None):
    CALLS.append(("flash_attn_func", dict(q=q, k=k, v=v, softmax_scale=softmax_scale, causal=causal,
                                          window_size=window_size, learnable_sink=learnable_sink, softcap=softcap,
                                          return_lse=return_lse, num_splits=num_splits)))
    assert q.dim() == 4
    o, l = _compute(q, k, v, None, None, None, None, None, None,
                    _opts(softmax_scale, causal, window_size, softcap, learnable_sink))
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, learnable_sink))
    return o, (l if (return_lse or grad) else None)


def flash_attn_varlen_func(q, k, v, qv=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                           max_seqlen_k=None, min_seqlen_k=None, seqused_q=None, seqused_k=None,
                           gather_kv_indices=None, page_table=None, softmax_scale=None, causal=False,
                           window_size=(None, None), learnable_sink=None, softcap=0.0, num_splits=1, pack_gqa=None,
                           deterministic=False, score_mod=None, score_mod_bwd=None, mask_mod=None,
                           block_sparse_tensors=None, aux_tensors=None, aux_scalars=None, return_lse=False,
                           scheduler_metadata=None, seqlen_k_per_split=None, disable_scheduler_metadata=False,
                           gather_bwd_recompute_p=False, gather_bwd_token_chunk=None):
    CALLS.append(("flash_attn_varlen_func", dict(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                                                 max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
                                                 seqused_k=seqused_k, page_table=page_table,
                                                 softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                                                 learnable_sink=learnable_sink, softcap=softcap,
                                                 return_lse=return_lse, num_splits=num_splits)))
    o, l = _compute(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, page_table,
                    _opts(softmax_scale, causal, window_size, softcap, learnable_sink))
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, learnable_sink))
    return o, (l if (return_lse or grad) else None)


BWD_SKEW = 1.0  # a test sets it to make the stand-in's private backward wrong


def _flash_attn_bwd(q, k, v, out, dout, lse, softmax_scale=None, causal=False, softcap=0.0,
                    window_size_left=None, window_size_right=None, m_block_size=64, n_block_size=128,
                    num_threads=256, pack_gqa=False, num_stages_Q=2, num_stages_dO=2, SdP_swapAB=False,
                    dKV_swapAB=False, dQ_swapAB=False, AtomLayoutMSdP=2, AtomLayoutNdKV=2, AtomLayoutMdQ=2,
                    V_in_regs=False, cu_seqlens_q=None, cu_seqlens_k=None, seqused_q=None, seqused_k=None,
                    max_seqlen_q=None, max_seqlen_k=None, deterministic=False, dq=None, dk=None, dv=None,
                    score_mod=None, score_mod_bwd=None, mask_mod=None, aux_tensors=None, aux_scalars=None,
                    block_sparse_tensors=None, dlse=None, learnable_sink=None):
    # what 4.0.0b36 asserts and needs: the saved lse, a unit-stride dout, the forward's window form
    CALLS.append(("_flash_attn_bwd", dict(q=q, out=out, dout=dout, lse=lse, softmax_scale=softmax_scale,
                                          causal=causal, softcap=softcap,
                                          window=(window_size_left, window_size_right), dlse=dlse,
                                          learnable_sink=learnable_sink, cu_seqlens_q=cu_seqlens_q,
                                          max_seqlen_k=max_seqlen_k)))
    assert lse is not None and dout.stride(-1) == 1 and lse.dtype == torch.float32
    opts = _opts(softmax_scale, causal, (window_size_left, window_size_right), softcap, learnable_sink)
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        sink = None if learnable_sink is None else learnable_sink.detach().requires_grad_()
        o, l = _compute(*leaves, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, None,
                        dict(opts, sinks=sink))
        outs, grads = [o], [dout]
        if dlse is not None:
            outs.append(l)
            grads.append(dlse)
        wrt = leaves + ([sink] if sink is not None else [])
        got = torch.autograd.grad(outs, wrt, grads, allow_unused=True)
    got = [torch.zeros_like(x) if g is None else g * BWD_SKEW for g, x in zip(got, wrt)]
    return tuple(got)
'''

FA4_MODULES = ("flash_attn", "flash_attn.cute", "flash_attn.cute.interface", "flash_attn_2_cuda", "cutlass",
               "quack", "tvm_ffi", "einops")


def _write(root, rel, text=""):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _deps(root, cute=True, mlir=True, skip=()):
    """Stand-in dependency packages, only for names not importable here (never shadow real ones)."""
    if importlib.util.find_spec("cutlass") is None and "cutlass" not in skip:
        _write(root, "cutlass/__init__.py")
        if cute:
            _write(root, "cutlass/cute/__init__.py")
        if mlir:
            _write(root, "cutlass/_mlir/__init__.py")
    for mod in ("quack", "tvm_ffi", "einops"):
        if importlib.util.find_spec(mod) is None and mod not in skip:
            _write(root, f"{mod}/__init__.py")


def _fa4_files(root):
    _write(root, "flash_attn/cute/__init__.py", "from .interface import flash_attn_func, flash_attn_varlen_func\n")
    _write(root, "flash_attn/cute/interface.py", textwrap.dedent(INTERFACE))


def _fa2_files(root):
    _write(root, "flash_attn/__init__.py", "import flash_attn_2_cuda  # noqa\n__version__ = '2.8.3'\n")
    _write(root, "flash_attn_2_cuda.py", "")


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for name in list(sys.modules):
        if name.split(".")[0] in {m.split(".")[0] for m in FA4_MODULES}:
            monkeypatch.delitem(sys.modules, name, raising=False)
    importlib.invalidate_caches()
    backends.reset()
    selector.clear_cache()
    yield
    for name in list(sys.modules):
        if name.split(".")[0] in {m.split(".")[0] for m in FA4_MODULES}:
            sys.modules.pop(name, None)
    backends.reset()
    selector.clear_cache()


def set_version(monkeypatch, version):
    monkeypatch.setattr(_vendor, "installed_version", lambda dists: version)


@pytest.fixture
def fa4(tmp_path, monkeypatch):
    _fa4_files(tmp_path)
    _deps(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    set_version(monkeypatch, "4.0.0b36")
    b = backends.get("flash_attn_4")

    def calls():
        return sys.modules["flash_attn.cute.interface"].CALLS
    return b, calls


def req(op="attention", block_size=None, **kw):
    """tests.test_vendor_adapters.req with FA4's paged tile as the default page (16)."""
    return _vendor_req(op, block_size=16 if op == "paged" and block_size is None else block_size, **kw)


# ----------------------------------------------------------------------------------------------
# Presence, namespace clash, dependencies, deferred import
# ----------------------------------------------------------------------------------------------
def test_not_installed_without_flash_attn_cute():
    b = backends.get("flash_attn_4")
    rs = b.reasons(req())
    assert rs[0].startswith("not installed") and "flash-attn-4" in rs[0], rs


def test_fa4_alone_is_not_flash_attn_2(fa4):
    b4, _ = fa4
    assert b4.reasons(req()) == []
    rs = backends.get("flash_attn").reasons(req())
    assert rs[0].startswith("not installed (the flash_attn package here is FlashAttention-4's flash_attn.cute "
                            "(flash-attn-4 4.0.0b36) without flash_attn_2_cuda"), rs
    assert "pip install flash-attn" in rs[0]
    assert "flash_attn" not in sys.modules  # decided from files: nothing imported


def test_fa2_alone_is_not_flash_attn_4(tmp_path, monkeypatch):
    _fa2_files(tmp_path)
    _deps(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    rs = backends.get("flash_attn_4").reasons(req())
    assert rs[0].startswith("not installed (the flash_attn package here is FlashAttention-2's"), rs
    assert "flash_attn_2_cuda" in rs[0] and "flash-attn-4" in rs[0]
    assert not any(r.startswith("not installed") for r in backends.get("flash_attn").reasons(req()))


def test_both_in_one_flash_attn_directory(tmp_path, monkeypatch):
    _fa2_files(tmp_path)
    _fa4_files(tmp_path)
    _deps(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert backends.get("flash_attn_4").reasons(req()) == []
    fa2 = backends.get("flash_attn")
    assert fa2.availability().installed  # FA2's own import (of the stand-in) decides the rest


@pytest.mark.parametrize("missing,expect", [
    ("cutlass", "the CuTe DSL (module cutlass, from nvidia-cutlass-dsl) is not importable"),
    ("cute", "cutlass.cute is missing (install nvidia-cutlass-dsl-libs-core)"),
    ("mlir", "cutlass._mlir is missing (install nvidia-cutlass-dsl-libs-base"),
    ("quack", "flash_attn.cute imports quack (pip install quack-kernels)"),
])
def test_missing_dependencies_are_predicted_from_files(tmp_path, monkeypatch, missing, expect):
    if missing in ("cutlass", "cute", "mlir") and importlib.util.find_spec("cutlass") is not None:
        pytest.skip("a real cutlass is importable here")
    if missing == "quack" and importlib.util.find_spec("quack") is not None:
        pytest.skip("a real quack is importable here")
    _fa4_files(tmp_path)
    _deps(tmp_path, cute=missing != "cute", mlir=missing != "mlir",
          skip={"cutlass": ("cutlass",), "quack": ("quack",)}.get(missing, ()))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    b = backends.get("flash_attn_4")
    rs = b.reasons(req())
    assert rs[0].startswith("unavailable: ") and expect in rs[0], rs
    if missing == "cutlass":
        assert "dsl_packages directory must be on PYTHONPATH" in rs[0]
    d = selector.decide(req(), ("flash_attn_4", "reference"), "backend= argument")
    assert d.chosen == "reference" and d.candidates[0].status == "unavailable"


def test_import_is_deferred_until_chosen(fa4, monkeypatch):
    b, calls = fa4
    r = req(causal=True)
    assert b.reasons(r) == [] and "flash_attn.cute.interface" not in sys.modules
    d = selector.explain_request(r)  # explain ranks and explains, imports nothing
    assert d.chosen == "flash_attn_4" and "flash_attn.cute.interface" not in sys.modules
    notes = " ".join(next(c for c in d.candidates if c.name == "flash_attn_4").notes)
    assert "imports flash_attn.cute (~8 s" in notes and "compiles on its first call (1.6-3.8 s" in notes
    assert "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1" in notes
    assert selector.select(r).name == "flash_attn_4"  # a real call's selection imports it
    assert "flash_attn.cute.interface" in sys.modules and b.import_seconds is not None
    assert "imported in" in " ".join(b.notes(r))


@pytest.mark.parametrize("block_size,tma", [(128, True), (16, False), (64, False)])
def test_tma_pages_need_finite_unused_rows_so_only_a_name_takes_them(fa4, block_size, tma):
    """TMA reads a last page whole and 0 x NaN in V reaches the output: automatic selection and
    ordered lists pass FA4 over for pages of its K tile's size (a cache from torch.empty promises
    nothing there); naming FA4 vouches for the cache, with the condition as a note."""
    b, _ = fa4
    r = req(op="paged", block_size=block_size, causal=True)
    assert b.reasons(r) == []
    assert bool(b.input_conditions(r)) == tma
    for preference in (None, ("flash_attn_4", "reference")):
        d = selector.decide(r, preference)
        fa = next(c for c in d.candidates if c.name == "flash_attn_4")
        if tma:
            assert d.chosen != "flash_attn_4" and fa.status == "rejected"
            assert "finite values in the rows past seqused_k" in fa.reasons[0]
            assert "cannot check per call; backend='flash_attn_4' vouches for it" in fa.reasons[0]
        else:
            assert fa.status in ("chosen", "usable") and not fa.reasons
    strict = selector.decide(r, ("flash_attn_4",), "backend= argument")
    assert strict.chosen == "flash_attn_4"
    vouched = [n for n in strict.candidates[0].notes if "the caller vouches for it" in n]
    assert len(vouched) == int(tma)


def test_cutlass_aux_data_warning_is_silenced_and_nothing_else(fa4):
    import warnings

    b, _ = fa4
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        b.prepare()  # the load installs the filter (inside this block: restored after it)
        warnings.warn("Argument aux_data (position 17) cannot be converted to a JitArgument for function "
                      "'cutlass___call___flash_attncuteflash_fwd_sm90'", UserWarning)
        warnings.warn("Argument other (position 3) cannot be converted to a JitArgument", UserWarning)
        warnings.warn("something else", UserWarning)
    assert [str(w.message) for w in seen] == [
        "Argument other (position 3) cannot be converted to a JitArgument", "something else"]


def test_import_failure_at_selection_falls_through(tmp_path, monkeypatch):
    _fa4_files(tmp_path)
    _deps(tmp_path)
    (tmp_path / "flash_attn/cute/interface.py").write_text("raise ImportError(\"No module named 'cutlass._mlir'\")\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    r = req(causal=True)
    be = selector.select(r, "flash_attn_4,reference")
    assert be.name == "reference"
    rs = backends.get("flash_attn_4").reasons(r)
    assert rs[0] == "unavailable: ImportError: No module named 'cutlass._mlir'", rs


def test_registry_aliases():
    for alias in ("fa4", "FA4", "flash_attn_cute", "FLASH_ATTN_4", "flash-attn-4", "flash_attention_4"):
        assert selector.resolve_name(alias) == "flash_attn_4"
    assert selector.resolve_name("fa3") == "flash_attn_3" and selector.resolve_name("fa2") == "flash_attn"


# ----------------------------------------------------------------------------------------------
# Limits as reasons
# ----------------------------------------------------------------------------------------------
def test_arch_and_head_dim_rules(fa4):
    b, _ = fa4
    assert any("compute capability 8.x-12.x" in r and "7.5 (sm75)" in r for r in b.reasons(req(cap=(7, 5))))
    assert b.reasons(req(cap=(8, 0))) == [] and b.reasons(req(cap=(12, 0))) == []
    assert b.reasons(req(cap=(9, 0), d=192, dv=192)) == []  # sm90: any multiple of 8 up to 256
    assert b.reasons(req(cap=(9, 0), d=128, dv=64)) == []  # Dv != D on sm90
    assert b.reasons(req(cap=(9, 0), d=48, dv=64)) == []  # both in the <= 64 tile class
    for d, dv in ((32, 128), (32, 80), (64, 96), (96, 128)):  # the H200 fuzz's illegal accesses
        assert any(f"head_dim_v={dv} > head_dim={d}" in r for r in b.reasons(req(cap=(9, 0), d=d, dv=dv))), (d, dv)
        assert not any("sm90 tile sizes" in r for r in b.reasons(req(cap=(10, 0), d=d, dv=dv))), (d, dv)
    assert any("multiple of 8" in r for r in b.reasons(req(d=100)))
    assert any("head_dim=320" in r for r in b.reasons(req(d=320)))
    for d, dv in ((192, 192), (128, 256), (96, 192)):
        assert any("not supported on sm10x" in r for r in b.reasons(req(cap=(10, 0), d=d, dv=dv))), (d, dv)
    for d, dv in ((64, 64), (192, 128), (256, 256), (96, 64)):
        assert b.reasons(req(cap=(10, 0), d=d, dv=dv)) == [], (d, dv)
    assert any("dtype float32" in r for r in b.reasons(req(dtype=torch.float32)))
    assert any("ALiBi" in r for r in b.reasons(req(alibi=True)))


def test_feature_rules_per_arch(fa4):
    b, _ = fa4
    full = dict(causal=True, window=True, softcap=True, sinks=True, lse=True, gqa=8, out=True, grad=True)
    assert b.reasons(req(cap=(9, 0), **full)) == []
    assert any("no backward on sm8x" in r for r in b.reasons(req(cap=(8, 0), grad=True)))
    assert any("no paged KV on sm8x" in r for r in b.reasons(req(op="paged", cap=(8, 6))))
    assert any("no paged KV on sm12x" in r for r in b.reasons(req(op="paged", cap=(12, 0))))
    assert any("no sink logits on sm12x" in r for r in b.reasons(req(cap=(12, 0), sinks=True)))
    assert any("no soft-capping backward on sm12x" in r for r in b.reasons(req(cap=(12, 0), softcap=True, grad=True)))
    assert any("hd256 backward" in r for r in b.reasons(req(cap=(10, 0), d=256, sinks=True, grad=True)))
    assert b.reasons(req(cap=(9, 0), d=256, sinks=True, grad=True)) == []
    assert any("no backward through a paged KV cache" in r for r in b.reasons(req(op="paged", grad=True)))
    assert b.reasons(req(op="paged", block_size=1)) == []  # any page size (cp.async gather)


def test_paged_notes_name_the_path(fa4):
    b, _ = fa4
    tma = " ".join(b.notes(req(op="paged", block_size=128, causal=True)))
    assert "= the kernel's K tile: pages load by TMA" in tma
    assert "no split-KV on sm90" in tma
    gather = " ".join(b.notes(req(op="paged", block_size=16, causal=True)))
    assert "!= the kernel's K tile (128): pages load by a cp.async gather" in gather
    assert "split-KV" not in " ".join(b.notes(req(op="paged", cap=(10, 0), block_size=16)))


# ----------------------------------------------------------------------------------------------
# Argument mapping and results
# ----------------------------------------------------------------------------------------------
CASES = {
    "plain": dict(),
    "causal": dict(causal=True),
    "window_left": dict(window=(2, -1)),
    "window_right": dict(window=(-1, 1)),
    "window_both": dict(window=(2, 1)),
    "causal_window": dict(causal=True, window=(3, -1)),
    "softcap": dict(softcap=2.5),
    "sinks": dict(sinks=True),
    "lse": dict(return_lse=True),
    "everything": dict(causal=True, window=(4, 0), softcap=3.0, sinks=True, return_lse=True),
}


def _materialize(case, hq):
    kw = dict(CASES[case])
    if kw.pop("sinks", False):
        kw["sinks"] = torch.randn(hq, generator=torch.Generator().manual_seed(3))
    return _opts(**kw)


def _expect_window(window):
    return tuple(None if w < 0 else w for w in window)


@pytest.mark.parametrize("case", list(CASES))
def test_dense_mapping_and_result(fa4, case):
    b, calls = fa4
    q, k, v = inputs.dense(b=2, sq=5, sk=9, hq=4, hkv=2, d=16, dtype=torch.bfloat16, noncontig=True)
    opts = _materialize(case, 4)
    o, lse = b.attention(q, k, v, **opts)
    name, got = calls()[-1]
    assert name == "flash_attn_func"
    assert got["q"] is q and got["k"] is k and got["v"] is v  # strided views passed through
    assert got["softmax_scale"] == opts["scale"] and got["causal"] == opts["causal"]
    assert got["window_size"] == _expect_window(opts["window"])
    assert got["softcap"] == opts["softcap"] and got["num_splits"] == 1
    assert got["learnable_sink"] is opts["sinks"]  # native sinks, not folded
    assert got["return_lse"] == opts["return_lse"]
    ro, rl = REF.attention(q, k, v, **opts)
    close(o, ro)
    if opts["return_lse"]:
        assert lse.shape == (2, 4, 5)  # (B, H, Sq): anyattn's layout, passed through
        close(lse, rl)
    else:
        assert lse is None


def test_float64_sinks_are_cast_for_fa4(fa4):
    b, calls = fa4
    q, k, v = inputs.dense(b=1, sq=4, sk=4, hq=2, hkv=2, d=8, dtype=torch.bfloat16)
    sinks = torch.randn(2, dtype=torch.float64)
    o, _ = b.attention(q, k, v, **_opts(sinks=sinks))
    assert calls()[-1][1]["learnable_sink"].dtype == torch.float32
    close(o, REF.attention(q, k, v, **_opts(sinks=sinks))[0])


def test_out_is_written_by_the_kernel_without_backward(fa4):
    b, calls = fa4
    q, k, v = inputs.dense(b=2, sq=6, sk=6, hq=4, hkv=1, d=16, dtype=torch.bfloat16)
    buf = torch.full((2, 6, 4, 16), 9.0, dtype=torch.bfloat16)
    o, lse = b.attention(q, k, v, **_opts(causal=True, window=(2, -1), return_lse=True, out=buf))
    name, got = calls()[-1]
    assert name == "_flash_attn_fwd" and got["out"] is buf and o is buf
    assert got["window"] == (2, None) and got["return_lse"] is True
    ro, rl = REF.attention(q, k, v, **_opts(causal=True, window=(2, -1), return_lse=True))
    close(o, ro), close(lse, rl)


def test_backward_goes_through_the_autograd_function(fa4):
    b, calls = fa4
    q, k, v = (t.requires_grad_() for t in inputs.dense(b=1, sq=5, sk=7, hq=4, hkv=2, d=16, seed=2))
    sinks = torch.randn(4, requires_grad=True)
    buf = torch.empty(1, 5, 4, 16)
    opts = _opts(causal=True, softcap=2.0, sinks=sinks, return_lse=True, out=buf)
    o, lse = b.attention(q, k, v, **opts)
    assert calls()[-1][0] == "flash_attn_func"  # not the private forward: it would cut the graph
    (o.square().sum() + lse.sum()).backward()
    got = [t.grad.clone() for t in (q, k, v, sinks)]
    for t in (q, k, v, sinks):
        t.grad = None
    ro, rl = REF.attention(q, k, v, **{**opts, "out": None})
    (ro.square().sum() + rl.sum()).backward()
    for g, t in zip(got, (q, k, v, sinks)):
        close(g, t.grad, tol=1e-4)


def test_varlen_mapping(fa4):
    b, calls = fa4
    q, k, v, cq, ck = inputs.varlen([3, 0, 5], [4, 2, 7], hq=4, hkv=2, d=16, dtype=torch.bfloat16)
    sinks = torch.randn(4)
    opts = _opts(causal=True, window=(2, -1), sinks=sinks, softcap=1.5, return_lse=True)
    o, lse = b.varlen(q, k, v, cq, ck, 5, 7, **opts)
    name, got = calls()[-1]
    assert name == "flash_attn_varlen_func" and got["cu_seqlens_q"] is cq and got["cu_seqlens_k"] is ck
    assert (got["max_seqlen_q"], got["max_seqlen_k"]) == (5, 7) and got["page_table"] is None
    assert got["window_size"] == (2, None) and got["learnable_sink"] is sinks
    ro, rl = REF.varlen(q, k, v, cq, ck, 5, 7, **opts)
    close(o, ro), close(lse, rl)
    assert lse.shape == (4, q.shape[0])


def test_paged_decode_uses_dense_q_over_pages(fa4):
    b, calls = fa4
    q, kc, vc, table, used, _, _ = inputs.paged([5, 40, 17], block_size=16, hq=4, hkv=1, d=16, dtype=torch.bfloat16)
    sinks = torch.randn(4)
    opts = _paged_opts(causal=True, softcap=3.0, sinks=sinks, return_lse=True, max_seqlen_k=48)
    o, lse = b.paged(q, kc, vc, table, used, **opts)
    name, got = calls()[-1]
    assert name == "flash_attn_varlen_func"
    assert got["q"].shape == (3, 1, 4, 16) and got["q"].data_ptr() == q.data_ptr()
    assert got["page_table"] is table and got["seqused_k"] is used and got["cu_seqlens_q"] is None
    assert got["cu_seqlens_k"] is None and got["max_seqlen_k"] == 48 and got["k"] is kc
    ro, rl = REF.paged(q, kc, vc, table, used, **opts)
    assert o.shape == (3, 4, 16) and lse.shape == (4, 3)
    close(o, ro), close(lse, rl)


def test_paged_decode_out_written_in_place(fa4):
    b, calls = fa4
    q, kc, vc, table, used, _, _ = inputs.paged([5, 9], block_size=4, hq=2, hkv=2, d=8, dtype=torch.bfloat16)
    buf = torch.full((2, 2, 8), 7.0, dtype=torch.bfloat16)
    o, _ = b.paged(q, kc, vc, table, used, **_paged_opts(causal=True, out=buf))
    name, got = calls()[-1]
    assert name == "_flash_attn_fwd" and got["out"].data_ptr() == buf.data_ptr() and o is buf
    close(o, REF.paged(q, kc, vc, table, used, **_paged_opts(causal=True))[0])


def test_paged_chunked_prefill(fa4):
    b, calls = fa4
    q, kc, vc, table, used, cu_q, mq = inputs.paged([20, 9], nq=[4, 2], block_size=8, hq=4, hkv=2, d=16,
                                                    dtype=torch.bfloat16)
    opts = _paged_opts(cu_seqlens_q=cu_q, max_seqlen_q=mq, causal=True, window=(5, -1), return_lse=True)
    o, lse = b.paged(q, kc, vc, table, used, **opts)
    name, got = calls()[-1]
    assert got["cu_seqlens_q"] is cu_q and got["max_seqlen_q"] == mq and got["q"] is q
    assert got["page_table"] is table and got["window_size"] == (5, None)
    ro, rl = REF.paged(q, kc, vc, table, used, **opts)
    close(o, ro), close(lse, rl)


def test_first_call_jit_time_is_recorded_per_variant(fa4):
    b, _ = fa4
    q, k, v = inputs.dense(b=1, sq=4, sk=4, hq=2, hkv=2, d=8, dtype=torch.bfloat16)
    b.attention(q, k, v, **_opts())
    b.attention(q, k, v, **_opts())
    b.attention(q, k, v, **_opts(causal=True))
    assert len(b._first_calls) == 2 and all(t >= 0 for t in b._first_calls.values())
    assert "here 2 so far" in " ".join(b.notes(req()))


def test_public_api_with_fa4_forced(fa4, monkeypatch):
    """Through anyattn.attention with backend='fa4': strict name resolution and the CPU-device reason."""
    q, k, v = inputs.dense(b=1, sq=3, sk=3, hq=2, hkv=2, d=8)
    with pytest.raises(anyattn.NoBackendError, match="runs on cuda, not cpu"):
        anyattn.attention(q, k, v, backend="fa4")
    assert "flash_attn.cute.interface" not in sys.modules


def test_hopper_ranks_fa4_first_for_dense_and_after_triton_for_paged():
    from anyattn.selector import AUTO_ORDER

    assert AUTO_ORDER["hopper"]["attention"][0] == "flash_attn_4"
    assert AUTO_ORDER["hopper"]["varlen"][0] == "flash_attn_4"
    paged = AUTO_ORDER["hopper"]["paged"]
    assert paged.index("triton") < paged.index("flash_attn_4")
    for fam in ("ampere", "blackwell"):
        assert "flash_attn_4" in AUTO_ORDER[fam]["attention"]


def _bwd_case(b, varlen, gqa, feat):
    gen = torch.Generator().manual_seed(7)
    hq, hkv, d = 4, (2 if gqa else 4), 16
    kw = dict(causal=feat.get("causal", False), scale=0.3, window=feat.get("window", (-1, -1)),
              softcap=feat.get("softcap", 0.0), alibi_slopes=None,
              sinks=torch.randn(hq, generator=gen) if feat.get("sinks") else None)
    if varlen:
        lens = [5, 0, 9]
        cu = torch.tensor([0, 5, 5, 14], dtype=torch.int32)
        q, k, v = (torch.randn(14, h, d, generator=gen) for h in (hq, hkv, hkv))
        o, lse = b.varlen(q, k, v, cu, cu, max(lens), max(lens), **kw, return_lse=True, out=None)
        go, gl = torch.randn_like(o), torch.randn_like(lse)
        run = lambda: b.varlen_backward(go, gl, q, k, v, cu, cu, max(lens), max(lens), o, lse, **kw)  # noqa: E731
        ref = lambda: REF.varlen_backward(go, gl, q, k, v, cu, cu, max(lens), max(lens), o, lse, **kw)  # noqa: E731
    else:
        q = torch.randn(2, 7, hq, d, generator=gen)
        k, v = (torch.randn(2, 9, hkv, d, generator=gen) for _ in range(2))
        o, lse = b.attention(q, k, v, **kw, return_lse=True, out=None)
        go, gl = torch.randn_like(o).transpose(1, 2).contiguous().transpose(1, 2), torch.randn_like(lse)
        run = lambda: b.attention_backward(go, gl, q, k, v, o, lse, **kw)  # noqa: E731
        ref = lambda: REF.attention_backward(go, gl, q, k, v, o, lse, **kw)  # noqa: E731
    return run, ref


@pytest.mark.parametrize("varlen", [False, True], ids=["dense", "varlen"])
@pytest.mark.parametrize("feat", [dict(causal=True), dict(window=(3, 0), softcap=5.0, sinks=True)],
                         ids=["causal", "window-softcap-sinks"])
def test_backward_from_saved_output_is_checked_once_then_used(fa4, varlen, feat):
    """Under the custom ops FA4's backward runs from the saved out/lse: the first call of a
    variant also runs FA4's autograd path and compares; later calls run the private backward alone."""
    b, calls = fa4
    assert b.backward_from_saved
    run, ref = _bwd_case(b, varlen, gqa=True, feat=feat)
    for round_ in range(2):
        calls().clear()
        got, want = run(), ref()
        for name, g, w in zip(("dq", "dk", "dv", "dsinks"), got, want):
            assert (g is None) == (w is None), name
            if w is not None:
                close(g, w, 1e-4)
        names = [c[0] for c in calls()]
        fwd = "flash_attn_varlen_func" if varlen else "flash_attn_func"
        assert names.count("_flash_attn_bwd") == 1
        assert (fwd in names) == (round_ == 0), names  # the check recomputes on the first call only
    call = next(c[1] for c in calls() if c[0] == "_flash_attn_bwd")
    assert call["dlse"] is not None and call["softmax_scale"] == 0.3
    assert call["window"] == ((3, 0) if "window" in feat else (None, None))
    assert (call["learnable_sink"] is not None) == bool(feat.get("sinks"))
    assert (call["cu_seqlens_q"] is not None) == varlen


def test_backward_from_saved_output_that_disagrees_falls_back_for_good(fa4, caplog):
    import logging

    b, calls = fa4
    b.lib.BWD_SKEW = 1.5
    run, ref = _bwd_case(b, False, gqa=False, feat=dict(causal=True))
    with caplog.at_level(logging.WARNING, logger="anyattn"):
        first = run()
    for g, w in zip(first[:3], ref()[:3]):  # the checked (recomputed) answer is returned
        close(g, w, 1e-4)
    assert any("differed from its autograd path" in r.getMessage() for r in caplog.records)
    calls().clear()
    again = run()
    for g, w in zip(again[:3], ref()[:3]):
        close(g, w, 1e-4)
    assert "_flash_attn_bwd" not in [c[0] for c in calls()], "the variant keeps the recompute path"


def test_backward_from_saved_output_that_raises_falls_back(fa4, caplog):
    import logging

    b, calls = fa4

    def broken(*a, dlse=None, learnable_sink=None, window_size_left=None, window_size_right=None,
               cu_seqlens_q=None, max_seqlen_k=None, **kw):
        raise AssertionError("a changed private API")

    b.lib._flash_attn_bwd = broken
    run, ref = _bwd_case(b, False, gqa=True, feat=dict(causal=True))
    with caplog.at_level(logging.WARNING, logger="anyattn"):
        got = run()
    for g, w in zip(got[:3], ref()[:3]):
        close(g, w, 1e-4)
    assert any("raised AssertionError: a changed private API" in r.getMessage() for r in caplog.records)
    assert False in b._saved_bwd_ok.values()


def test_misaligned_out_is_copied_not_handed_to_the_kernel(fa4):
    b, calls = fa4
    q, k, v = inputs.dense(b=1, sq=4, sk=4, hq=2, hkv=2, d=8, dtype=torch.bfloat16)
    big = torch.zeros(1, 4, 2, 8 + 3, dtype=torch.bfloat16)
    buf = big[..., 1:9]  # last dim contiguous, but the base and row strides are not 16-byte aligned
    o, _ = b.attention(q, k, v, **_opts(out=buf))
    assert calls()[-1][0] == "flash_attn_func" and o is buf
    close(o, REF.attention(q, k, v, **_opts())[0])
