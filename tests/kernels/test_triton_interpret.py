"""anyattn's Triton kernels under Triton's CPU interpreter (TRITON_INTERPRET=1).

The interpreter is chosen when ``@triton.jit`` decorates a function (Triton's own library
too), so tests/kernels/conftest.py sets the variable before triton's first import on GPU-less
machines; elsewhere this module skips (CI: fails) with the command to run it. Shapes are tiny and odd on
purpose (sequence lengths that are not multiples of the block, head dims 40/80, GQA, empty and
length-1 sequences, random non-contiguous block tables). Outputs are NaN-poisoned before every
run and compared with an independent float64 formula (tests/kernels/_attn_ref.py). bf16 is
left out: the interpreter mishandles it on CPU (the GPU tests cover it).
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _attn_ref import ref_dense, ref_paged, ref_varlen  # noqa: E402
from _interpret import require_interpreter  # noqa: E402

require_interpreter(__file__)

from anyattn.kernels import triton_paged as G  # noqa: E402
from anyattn.kernels import triton_prefill as P  # noqa: E402

TOL = {torch.float16: 4e-3, torch.float32: 2e-5}
DTYPES = [torch.float16, torch.float32]


def _rel(a, b):
    assert not torch.isnan(a).any(), "NaN in output (unwritten element or bad masking)"
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _check_lse(lse, ref):
    assert not torch.isnan(lse).any(), "NaN in lse"
    inf_ref = torch.isinf(ref)
    assert torch.equal(torch.isinf(lse), inf_ref), "lse = -inf exactly where no key is visible"
    if (~inf_ref).any():
        err = (lse.double() - ref)[~inf_ref].abs().max()
        assert err < 2e-3, f"lse error {err}"


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


DENSE = [
    # B, Sq, Sk, Hq, Hkv, D, Dv, features
    (2, 37, 37, 4, 2, 40, 40, {}),
    (1, 20, 45, 2, 1, 64, 64, dict(causal=True)),
    (1, 45, 20, 2, 1, 32, 32, dict(causal=True)),  # Sq > Sk: top rows see nothing
    (1, 33, 50, 4, 2, 80, 80, dict(window=(7, 3))),
    (1, 33, 50, 2, 2, 32, 32, dict(window=(5, -1), causal=True, sinks=True)),
    (2, 19, 19, 4, 4, 64, 32, dict(softcap=5.0, alibi="batch")),  # Dv != D
    (1, 40, 33, 6, 2, 48, 48, dict(alibi=True, sinks=True, causal=True)),
    (1, 1, 50, 4, 1, 32, 32, dict(causal=True)),  # single query row (decode-like)
    (1, 17, 17, 2, 1, 112, 112, dict(window=(0, 0))),  # diagonal only
    (1, 30, 30, 2, 1, 32, 32, dict(window=(-1, 4))),  # right bound only
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", DENSE, ids=[f"dense{i}" for i in range(len(DENSE))])
def test_dense(case, dtype):
    B, Sq, Sk, Hq, Hkv, D, Dv, feat = case
    gen = torch.Generator().manual_seed(hash((case[:7], str(dtype))) % 2**31)
    kw, slopes, sinks = _extras(Hq, B, feat, gen)
    q = torch.randn(B, Sq, Hq, D, generator=gen).to(dtype)
    # non-contiguous K (head-major storage) and V (padded last dim)
    k = torch.randn(B, Hkv, Sk, D, generator=gen).to(dtype).transpose(1, 2)
    v = torch.randn(B, Sk, Hkv, Dv + 3, generator=gen).to(dtype)[..., :Dv]
    out_full = torch.full((B, Sq, Hq + 1, Dv), float("nan"), dtype=dtype)
    out = out_full[:, :, 1:]  # strided output view
    lse = torch.full((B, Hq, Sq), float("nan"))
    scale = 1.0 / math.sqrt(D)
    P.flash_attention_forward(q, k, v, out, lse, scale=scale, alibi_slopes=slopes, sinks=sinks,
                              **kw)
    ro, rl = ref_dense(q, k, v, scale=scale, slopes=slopes, sinks=sinks, **kw)
    assert _rel(out, ro) < TOL[dtype]
    assert torch.isnan(out_full[:, :, 0]).all(), "wrote outside the output view"
    _check_lse(lse, rl)


def test_dense_pointer_paths_agree():
    """The natural-layout K load (KNAT) and the default layout compute the same thing."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 29, 2, 40, generator=gen).half()
    k = torch.randn(1, 31, 1, 40, generator=gen).half()
    v = torch.randn(1, 31, 1, 40, generator=gen).half()
    outs = []
    for knat in (False, True):
        out = torch.full_like(q, float("nan"))
        P.flash_attention_forward(q, k, v, out, None, scale=0.2, causal=True,
                                  config=dict(KNAT=knat, BLOCK_M=16, BLOCK_N=16))
        outs.append(out)
    ro, _ = ref_dense(q, k, v, scale=0.2, causal=True)
    assert _rel(outs[0], ro) < TOL[torch.float16]
    assert _rel(outs[1], ro) < TOL[torch.float16]


@pytest.mark.parametrize("d,dv", [(64, 32), (80, 16)])
def test_padded_value_tile_matches(d, dv):
    """The pointer path pads a value tile narrower than the query tile (the sm90 Dv < D fix) to the
    query tile's width, its extra columns masked: the same attention, and only Dv columns written."""
    gen = torch.Generator().manual_seed(d + dv)
    q = torch.randn(1, 1, 2, d, generator=gen).half()
    k = torch.randn(1, 17, 1, d, generator=gen).half()
    v = torch.randn(1, 34, 1, dv + 5, generator=gen).half()[:, ::2, :, :dv]  # sliced: pointer path
    out_full = torch.full((1, 1, 2, dv + 4), float("nan")).half()
    out = out_full[..., :dv]
    P.flash_attention_forward(q, k, v, out, None, scale=0.3)
    ro, _ = ref_dense(q, k, v, scale=0.3)
    assert _rel(out, ro) < TOL[torch.float16]
    assert torch.isnan(out_full[..., dv:]).all(), "wrote past head_dim_v"


VARLEN = [
    # q lengths, k lengths, Hq, Hkv, D, features
    ([0, 1, 21, 5, 1], [4, 1, 30, 5, 0], 4, 2, 40, dict(causal=True)),
    ([17, 0, 9], [17, 3, 40], 2, 1, 80, {}),
    ([13, 25], [30, 25], 4, 1, 32, dict(window=(6, 2), softcap=3.0, sinks=True)),
    ([1, 1, 1], [19, 0, 7], 4, 4, 64, dict(alibi=True, causal=True)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", VARLEN, ids=[f"varlen{i}" for i in range(len(VARLEN))])
def test_varlen(case, dtype):
    lq, lk, Hq, Hkv, D, feat = case
    gen = torch.Generator().manual_seed(len(lq) * 100 + D)
    kw, slopes, sinks = _extras(Hq, len(lq), feat, gen)
    cu_q = torch.tensor([0] + lq).cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0] + lk).cumsum(0).to(torch.int32)
    q = torch.randn(int(cu_q[-1]), Hq, D, generator=gen).to(dtype)
    k = torch.randn(int(cu_k[-1]), Hkv, D, generator=gen).to(dtype)
    v = torch.randn(int(cu_k[-1]), Hkv, D, generator=gen).to(dtype)
    out = torch.full_like(q, float("nan"))
    lse = torch.full((Hq, q.shape[0]), float("nan"))
    P.flash_attention_forward(q, k, v, out, lse, scale=D ** -0.5, alibi_slopes=slopes,
                              sinks=sinks, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                              max_seqlen_q=max(lq), max_seqlen_k=max(lk), **kw)
    ro, rl = ref_varlen(q, k, v, cu_q, cu_k, scale=D ** -0.5, slopes=slopes, sinks=sinks, **kw)
    assert _rel(out, ro) < TOL[dtype]
    _check_lse(lse, rl)


PAGED = [
    # seqused_k, q lengths (None = decode), Hq, Hkv, D, Dv, features, num_splits, config
    ([37, 1, 0, 64], None, 4, 1, 64, 64, {}, None, None),
    ([37, 1, 0, 64], None, 8, 2, 40, 40, dict(sinks=True), 3, None),
    ([45, 5, 3, 64], [3, 5, 0, 7], 8, 2, 80, 80, dict(causal=True), 2, None),
    ([70, 20], [4, 1], 4, 2, 32, 48, dict(causal=True, window=(10, 0), softcap=3.0, alibi=True,
                                         sinks=True), 3, None),
    ([50, 33], None, 4, 4, 32, 32, dict(window=(5, -1)), 1, None),
    ([50, 33, 1], [2, 1, 1], 4, 2, 32, 32, dict(causal=True), 2, dict(BLOCK_N=32)),  # > page 16
    ([61, 1, 0], None, 8, 2, 64, 64, dict(sinks=True), 2, dict(PREFETCH=False)),
    ([40, 29], [3, 2], 4, 1, 40, 40, dict(causal=True, window=(9, 0)), 1,
     dict(PREFETCH=False, BLOCK_N=32)),
]


@pytest.mark.parametrize("page", [16, 32])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", PAGED, ids=[f"paged{i}" for i in range(len(PAGED))])
def test_paged(case, dtype, page):
    lens, qlens, Hq, Hkv, D, Dv, feat, splits, cfg = case
    gen = torch.Generator().manual_seed(sum(lens) + page)
    B = len(lens)
    kw, slopes, sinks = _extras(Hq, B, feat, gen)
    nbp = max(1, max(math.ceil(n / page) for n in lens)) + 1  # spare columns in the table
    nblk = B * nbp + 3
    k_cache = torch.randn(nblk, page, Hkv, D, generator=gen).to(dtype)
    v_cache = torch.randn(nblk, page, Hkv, Dv, generator=gen).to(dtype)
    block_table = torch.randperm(nblk, generator=gen)[: B * nbp].view(B, nbp).to(torch.int32)
    # slots past seqused_k hold NaN: a kernel that lets them into the sums fails
    for b, n in enumerate(lens):
        used = set(block_table[b, : math.ceil(n / page)].tolist())
        for col in range(nbp):
            blk = int(block_table[b, col])
            if blk not in used:
                k_cache[blk] = float("nan")
                v_cache[blk] = float("nan")
        if n % page:
            last = int(block_table[b, n // page])
            k_cache[last, n % page:] = float("nan")
            v_cache[last, n % page:] = float("nan")
    seqused = torch.tensor(lens, dtype=torch.int32)
    if qlens is None:
        cu, T, msq = None, B, 1
    else:
        cu = torch.tensor([0] + qlens).cumsum(0).to(torch.int32)
        T, msq = int(cu[-1]), max(qlens)
    q = torch.randn(T, Hq, D, generator=gen).to(dtype)
    out = torch.full((T, Hq, Dv), float("nan"), dtype=dtype)
    lse = torch.full((Hq, T), float("nan"))
    G.paged_attention_forward(q, k_cache, v_cache, block_table, seqused, out, lse,
                              cu_seqlens_q=cu, max_seqlen_q=msq, max_seqlen_k=max(lens),
                              scale=D ** -0.5, alibi_slopes=slopes, sinks=sinks,
                              num_splits=splits, config=cfg,
                              **kw)
    kc = torch.nan_to_num(k_cache)
    vc = torch.nan_to_num(v_cache)
    ro, rl = ref_paged(q, kc, vc, block_table, seqused, cu, scale=D ** -0.5, slopes=slopes,
                       sinks=sinks, **kw)
    assert _rel(out, ro) < TOL[dtype]
    _check_lse(lse, rl)


def test_split_count_is_shape_only():
    """The split heuristic reads shapes and max_seqlen only: same answer for any data."""
    cpu = torch.device("cpu")
    a = G.paged_config(batch=1, hkv=8, group=4, max_seqlen_q=1, max_seqlen_k=32768, head_dim=128,
                       head_dim_v=128, dtype=torch.float16, device=cpu, page=16)
    b = G.paged_config(batch=1, hkv=8, group=4, max_seqlen_q=1, max_seqlen_k=32768, head_dim=128,
                       head_dim_v=128, dtype=torch.float16, device=cpu, page=16)
    assert a == b and a["num_splits"] > 1
    big = G.paged_config(batch=512, hkv=8, group=4, max_seqlen_q=1, max_seqlen_k=1024,
                         head_dim=128, head_dim_v=128, dtype=torch.float16, device=cpu, page=16)
    assert big["num_splits"] == 1


def test_block_n_fits_page():
    assert G._fit_block_n(64, 16) == 64  # several pages per tile
    assert G._fit_block_n(64, 256) == 64  # one page holds several tiles
    assert G._fit_block_n(64, 48) == 16  # 48 = 3 x 16
    assert G._fit_block_n(64, 80) == 16


@pytest.mark.parametrize("pipe", [dict(PIPE=False, HOSTDESC=False), dict(HOSTDESC=True),
                                  dict(PIPE=True)], ids=["tma-device", "tma-host", "tma-pipelined"])
@pytest.mark.parametrize("case", [DENSE[0], DENSE[1], DENSE[3], DENSE[5], DENSE[6]],
                         ids=["plain", "causal", "window", "softcap-alibi", "alibi-sinks"])
def test_dense_tma_paths(case, pipe, monkeypatch):
    """The sm90 tensor-descriptor paths (forced on: the interpreter emulates descriptors)."""
    monkeypatch.setattr(P, "_tma_ok", lambda q, k, v: True)
    monkeypatch.setattr(P, "ensure_allocator", lambda: None)
    B, Sq, Sk, Hq, Hkv, D, Dv, feat = case
    gen = torch.Generator().manual_seed(11)
    kw, slopes, sinks = _extras(Hq, B, feat, gen)
    q = torch.randn(B, Sq, Hq, D, generator=gen).half()
    k = torch.randn(B, Sk, Hkv, D, generator=gen).half()
    v = torch.randn(B, Sk, Hkv, Dv, generator=gen).half()
    out = torch.full((B, Sq, Hq, Dv), float("nan"), dtype=torch.float16)
    lse = torch.full((B, Hq, Sq), float("nan"))
    P.flash_attention_forward(q, k, v, out, lse, scale=D ** -0.5, alibi_slopes=slopes,
                              sinks=sinks, config=dict(pipe, BLOCK_M=16, BLOCK_N=16), **kw)
    ro, rl = ref_dense(q, k, v, scale=D ** -0.5, slopes=slopes, sinks=sinks, **kw)
    assert _rel(out, ro) < TOL[torch.float16]
    _check_lse(lse, rl)


@pytest.mark.parametrize("varlen", [False, True], ids=["dense", "varlen"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_host_descriptors_mask_next_sequence(causal, varlen, monkeypatch):
    """Host-side descriptors view K/V as (rows, heads * D): edge tiles read the next sequence's
    rows. NaN there (the last sequence) must not reach the other sequences' outputs."""
    monkeypatch.setattr(P, "_tma_ok", lambda q, k, v: True)
    monkeypatch.setattr(P, "ensure_allocator", lambda: None)
    B, S, Hq, Hkv, D = 3, 37, 4, 2, 32
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(B, S, Hq, D, generator=gen).half()
    k = torch.randn(B, S, Hkv, D, generator=gen).half()
    v = torch.randn(B, S, Hkv, D, generator=gen).half()
    ro, _ = ref_dense(q, k, v, scale=D ** -0.5, causal=causal)
    k[-1] = float("nan")
    v[-1] = float("nan")
    cfg = dict(HOSTDESC=True, BLOCK_M=16, BLOCK_N=16)
    if varlen:
        cu = torch.arange(B + 1, dtype=torch.int32) * S
        out = torch.full((B * S, Hq, D), float("nan"), dtype=torch.float16)
        P.flash_attention_forward(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), out,
                                  scale=D ** -0.5, causal=causal, cu_seqlens_q=cu,
                                  cu_seqlens_k=cu, max_seqlen_q=S, max_seqlen_k=S, config=cfg)
        out = out.view(B, S, Hq, D)
    else:
        out = torch.full((B, S, Hq, D), float("nan"), dtype=torch.float16)
        P.flash_attention_forward(q, k, v, out, scale=D ** -0.5, causal=causal, config=cfg)
    assert _rel(out[:B - 1], ro[:B - 1]) < TOL[torch.float16]


@pytest.mark.parametrize("layout", ["hnd", "vllm_kv"])
@pytest.mark.parametrize("decode", [True, False], ids=["decode", "chunked"])
def test_paged_strided_caches(layout, decode):
    """HND caches and vLLM's combined K|V tensor are read in place through their strides."""
    from tests.inputs import relayout

    gen = torch.Generator().manual_seed(11)
    lens, page, Hq, Hkv, D = [37, 5, 20], 16, 8, 2, 32
    nblk = 12
    k_cache = torch.randn(nblk, page, Hkv, D, generator=gen).to(torch.float16)
    v_cache = torch.randn(nblk, page, Hkv, D, generator=gen).to(torch.float16)
    block_table = torch.randperm(nblk, generator=gen)[:9].view(3, 3).to(torch.int32)
    kl, vl = relayout(k_cache, v_cache, layout)
    assert not kl.is_contiguous()
    seqused = torch.tensor(lens, dtype=torch.int32)
    qlens = None if decode else [3, 1, 4]
    cu = None if decode else torch.tensor([0] + qlens).cumsum(0).to(torch.int32)
    T = 3 if decode else sum(qlens)
    q = torch.randn(T, Hq, D, generator=gen).to(torch.float16)
    out = torch.full((T, Hq, D), float("nan"), dtype=torch.float16)
    G.paged_attention_forward(q, kl, vl, block_table, seqused, out, None, cu_seqlens_q=cu,
                              max_seqlen_q=1 if decode else max(qlens), max_seqlen_k=max(lens),
                              scale=D ** -0.5, causal=True)
    ro, _ = ref_paged(q, k_cache, v_cache, block_table, seqused, cu, scale=D ** -0.5, causal=True)
    assert _rel(out, ro) < TOL[torch.float16]
