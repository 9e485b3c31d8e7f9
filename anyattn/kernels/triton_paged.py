"""Paged attention (decode, speculative decoding, chunked prefill) over an NHD KV cache.

Flash-decoding: grid = (num_splits, batch * kv_heads, query row blocks). Each
program packs the query rows of one KV head (query tokens x the GQA group of
heads sharing that KV head) into one BLOCK_M tile, so every KV tile is read
once for the whole group, and walks its share of the visible key range,
gathering keys through the block table (any page size; pages need not be
contiguous). With more than one split, each program writes a normalised
partial output and its log2-sum-exp; a combine kernel merges the splits (and
adds the attention-sink term exactly once).

The number of splits is a pure function of (batch, kv heads, query blocks,
max_seqlen_k, SM count), never of device data: CUDA-graph safe, no autotuning.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._common import (
    capability,
    cdiv,
    current_device,
    dot_precision,
    interpret_mode,
    logit_constants,
    next_pow2,
    num_sms,
    window_bounds,
)
from ._launch import LaunchCache, check_remembered


@triton.jit
def _tanh(x):
    e = tl.exp2(x * 2.8853900817779268)
    return 1.0 - 2.0 / (e + 1.0)


@triton.jit
def _pages(bt_row, n0, s_hi, sbt_n, PAGE: tl.constexpr, BLOCK_N: tl.constexpr):
    # physical block ids (int64) of the tile starting at n0 (n0 is BLOCK_N aligned)
    if PAGE >= BLOCK_N:
        idx = tl.minimum(n0, tl.maximum(s_hi - 1, 0)) // PAGE
        pg = tl.load(bt_row + idx * sbt_n).to(tl.int64)
    else:
        # one block-table entry per key (an L1 hit for all but one key of a page)
        offs = n0 + tl.arange(0, BLOCK_N)
        pg = tl.load(bt_row + (offs // PAGE) * sbt_n, mask=offs < s_hi, other=0).to(tl.int64)
    return pg


@triton.jit(do_not_specialize=["sbt_b", "sl_h", "sop_s", "slp_s", "left", "right"])
def _paged_kernel(Q, KC, VC, BT, SEQUSED, CU_Q, O, LSE, OP, LP, SLOPES, SINK_PTR,
                  sq_t, sq_h, sq_d,
                  skb, sks, skh, skd,
                  svb, svs, svh, svd,
                  sbt_b, sbt_n,
                  so_t, so_h, so_d,
                  sl_h, sl_t,
                  sop_s, sop_t, sop_h,
                  slp_s, slp_t,
                  sa_b, sa_h,
                  qk_scale, cap2, left, right,
                  HKV: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
                  PAGE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, NUM_SPLITS: tl.constexpr,
                  DECODE: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                  SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, SINKS: tl.constexpr,
                  STORE_LSE: tl.constexpr, PREC: tl.constexpr, PREFETCH: tl.constexpr):
    split = tl.program_id(0)
    bh = tl.program_id(1)
    mb = tl.program_id(2)
    b = bh // HKV
    kvh = bh % HKV

    if DECODE:
        q_start = b
        nq = 1
    else:
        q_start = tl.load(CU_Q + b)
        nq = tl.load(CU_Q + b + 1) - q_start
    Sk = tl.load(SEQUSED + b)
    off = Sk - nq

    rows = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    t_loc = rows // GROUP
    hh = kvh * GROUP + rows % GROUP
    rmask = t_loc < nq
    tok = (q_start + t_loc).to(tl.int64)

    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    EVEN_D: tl.constexpr = D == BLOCK_D
    EVEN_DV: tl.constexpr = DV == BLOCK_DV

    # ---- visible key range of this row block, then this split's share --------
    t0 = (mb * BLOCK_M) // GROUP
    t1 = tl.minimum((mb * BLOCK_M + BLOCK_M - 1) // GROUP, nq - 1)
    if HAS_LEFT:
        lo = tl.maximum(t0 + off - left, 0)
        lo = (lo // BLOCK_N) * BLOCK_N  # tiles stay page aligned
    else:
        lo = Sk * 0
    if HAS_RIGHT:
        hi = tl.maximum(tl.minimum(t1 + off + right + 1, Sk), 0)
    else:
        hi = Sk
    hi = tl.where(t0 < nq, hi, lo)
    hi = tl.maximum(hi, lo)
    span = hi - lo
    chunk = ((span + NUM_SPLITS - 1) // NUM_SPLITS + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    s_lo = tl.minimum(lo + split * chunk, hi)
    s_hi = tl.minimum(s_lo + chunk, hi)

    # ---- Q tile: rows = (token, head in group) --------------------------------
    q_ptrs = Q + tok[:, None] * sq_t + hh[:, None] * sq_h + offs_d[None, :] * sq_d
    if EVEN_D:
        q = tl.load(q_ptrs, mask=rmask[:, None], other=0.0)
    else:
        q = tl.load(q_ptrs, mask=rmask[:, None] & (offs_d[None, :] < D), other=0.0)

    if ALIBI:
        slope2 = tl.load(SLOPES + b * sa_b + hh * sa_h, mask=rmask, other=0.0).to(tl.float32)
        slope2 = slope2 * 1.4426950408889634
    if SINKS:
        sink2 = tl.load(SINK_PTR + hh, mask=rmask, other=0.0).to(tl.float32) * 1.4426950408889634
        m_i = sink2
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32) + 1.0
    else:
        m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)

    bt_row = BT + b.to(tl.int64) * sbt_b
    kc = KC + kvh * skh
    vc = VC + kvh * svh
    qpos = t_loc + off  # absolute position of each query row

    # PREFETCH: page ids fetched one tile ahead and V issued with K (explicit software
    # pipelining); otherwise ids are loaded in the loop and V after the softmax, leaving the
    # overlap to Triton's pipeliner (num_stages). Which wins is measured (docs/PERF.md).
    if PREFETCH:
        pg = _pages(bt_row, s_lo, s_hi, sbt_n, PAGE, BLOCK_N)
    for n0 in range(s_lo, s_hi, BLOCK_N):
        offs_n = n0 + offs_n0
        nmask = offs_n < s_hi
        if not PREFETCH:
            pg = _pages(bt_row, n0, s_hi, sbt_n, PAGE, BLOCK_N)
        if PAGE >= BLOCK_N:
            slot = (n0 % PAGE) + offs_n0
        else:
            slot = offs_n % PAGE
        koff = pg * skb + slot * sks
        voff = pg * svb + slot * svs
        k_ptrs = kc + koff[None, :] + offs_d[:, None] * skd
        v_ptrs = vc + voff[:, None] + offs_dv[None, :] * svd
        if EVEN_D:
            k = tl.load(k_ptrs, mask=nmask[None, :], other=0.0)
        else:
            k = tl.load(k_ptrs, mask=nmask[None, :] & (offs_d[:, None] < D), other=0.0)
        if PREFETCH:
            if EVEN_DV:
                v = tl.load(v_ptrs, mask=nmask[:, None], other=0.0)
            else:
                v = tl.load(v_ptrs, mask=nmask[:, None] & (offs_dv[None, :] < DV), other=0.0)
            pg = _pages(bt_row, n0 + BLOCK_N, s_hi, sbt_n, PAGE, BLOCK_N)
        qk = tl.dot(q, k, input_precision=PREC)
        if SOFTCAP:
            s = cap2 * _tanh(qk * qk_scale)
        else:
            s = qk * qk_scale
        if ALIBI:
            rel = qpos[:, None] - offs_n[None, :]
            s = s - slope2[:, None] * tl.abs(rel).to(tl.float32)
        valid = nmask[None, :]
        if HAS_RIGHT:
            valid = valid & (offs_n[None, :] <= qpos[:, None] + right)
        if HAS_LEFT:
            valid = valid & (offs_n[None, :] >= qpos[:, None] - left)
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if not PREFETCH:
            if EVEN_DV:
                v = tl.load(v_ptrs, mask=nmask[:, None], other=0.0)
            else:
                v = tl.load(v_ptrs, mask=nmask[:, None] & (offs_dv[None, :] < DV), other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PREC)
        m_i = m_new

    has = l_i > 0.0
    inv = tl.where(has, 1.0 / tl.where(has, l_i, 1.0), 0.0)
    out = acc * inv[:, None]
    lse2 = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
    dvmask = offs_dv[None, :] < DV
    if NUM_SPLITS == 1:
        o_ptrs = O + tok[:, None] * so_t + hh[:, None] * so_h + offs_dv[None, :] * so_d
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=rmask[:, None] & dvmask)
        if STORE_LSE:
            tl.store(LSE + hh * sl_h + tok * sl_t, lse2 * 0.6931471805599453, mask=rmask)
    else:
        op = OP + split * sop_s + tok[:, None] * sop_t + hh[:, None] * sop_h + offs_dv[None, :]
        tl.store(op, out, mask=rmask[:, None] & dvmask)
        tl.store(LP + split * slp_s + tok * slp_t + hh, lse2, mask=rmask)


@triton.jit(do_not_specialize=["sop_s", "slp_s", "sl_h"])
def _combine_kernel(OP, LP, O, LSE, SINK_PTR,
                    sop_s, sop_t, sop_h, slp_s, slp_t,
                    so_t, so_h, so_d, sl_h, sl_t,
                    DV: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr,
                    BLOCK_DV: tl.constexpr, SINKS: tl.constexpr, STORE_LSE: tl.constexpr):
    # one (token, head) per program; every split's partial is loaded in one shot, so the
    # combine costs one memory round trip whatever the split count
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_dv = tl.arange(0, BLOCK_DV)
    smask = offs_s < NUM_SPLITS
    lp = tl.load(LP + offs_s * slp_s + t * slp_t + h, mask=smask, other=float("-inf"))
    m = tl.max(lp, 0)
    if SINKS:
        sink2 = tl.load(SINK_PTR + h).to(tl.float32) * 1.4426950408889634
        m = tl.maximum(m, sink2)
    m_use = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lp - m_use)
    den = tl.sum(w, 0)
    if SINKS:
        den = den + tl.exp2(sink2 - m_use)
    o = tl.load(OP + offs_s[:, None] * sop_s + t * sop_t + h * sop_h + offs_dv[None, :],
                mask=(smask & (w > 0.0))[:, None] & (offs_dv[None, :] < DV), other=0.0)
    acc = tl.sum(w[:, None] * o, 0)
    has = den > 0.0
    inv = tl.where(has, 1.0 / tl.where(has, den, 1.0), 0.0)
    tl.store(O + t * so_t + h * so_h + offs_dv * so_d, (acc * inv).to(O.dtype.element_ty),
             mask=offs_dv < DV)
    if STORE_LSE:
        lse = tl.where(has, (m_use + tl.log2(tl.where(has, den, 1.0))) * 0.6931471805599453,
                       float("-inf"))
        tl.store(LSE + h * sl_h + t * sl_t, lse)


# ------------------------------------------------------------------------------
# configuration (pure function of shapes; no autotuning)
# ------------------------------------------------------------------------------

def _fit_block_n(bn: int, page: int) -> int:
    """BLOCK_N compatible with the page size: divides it, or is a multiple of it."""
    if page >= bn:
        while page % bn and bn > 16:
            bn //= 2
        return bn
    if bn % page == 0 and (page & (page - 1)) == 0:
        return bn
    return 16


def paged_config(*, batch, hkv, group, max_seqlen_q, max_seqlen_k, head_dim, head_dim_v,
                 dtype, device, page, num_splits=None, config=None) -> dict:
    """Launch configuration from shapes only (graph safe).

    Tuned on H200 / Triton 3.6 with benchmarks/triton_sweep.py (git history, 3df1865; numbers in docs/PERF.md): decode uses
    BLOCK_N=64 and 3 pipeline stages; the split count gives about ``split_target``
    programs per SM but keeps at least ``min_split_tiles`` key tiles per split.
    """
    cfg = {}
    rows = group * max(int(max_seqlen_q), 1)
    bd = max(16, next_pow2(max(head_dim, head_dim_v)))
    interp = interpret_mode() or device.type != "cuda"
    if interp:
        cfg.update(BLOCK_M=max(16, min(32, next_pow2(rows))), BLOCK_N=16, num_warps=4,
                   num_stages=1, split_target=2)
    else:
        major, _ = capability(device)
        if dtype == torch.float32:
            bm = max(16, min(32, next_pow2(rows)))
            cfg.update(BLOCK_M=bm, BLOCK_N=32 if bd <= 128 else 16, num_warps=4, num_stages=1,
                       split_target=4)
        else:
            bm = max(16, min(64 if bd > 128 else 128, next_pow2(rows)))
            if bm <= 16 and batch * hkv >= 64:
                # many (sequence, kv head) pairs: ~4 programs per SM, Triton's pipeliner
                cfg.update(BLOCK_M=bm, BLOCK_N=64 if bd <= 128 else 32, num_warps=2,
                           num_stages=3 if major >= 8 else 2, split_target=4,
                           min_split_tiles=4, PREFETCH=False)
            elif bm <= 16:
                # few long sequences: ~2 programs per SM, explicit one-tile-ahead prefetch
                cfg.update(BLOCK_M=bm, BLOCK_N=64 if bd <= 128 else 32, num_warps=4,
                           num_stages=3 if major >= 8 else 2, split_target=2,
                           min_split_tiles=4, PREFETCH=True)
            else:
                cfg.update(BLOCK_M=bm, BLOCK_N=64 if bd <= 128 else 32,
                           num_warps=4 if bm <= 64 else 8,
                           num_stages=2 if major >= 8 else 1, split_target=2)
    if config:
        cfg.update(config)
    cfg["BLOCK_N"] = _fit_block_n(cfg["BLOCK_N"], page)
    m_blocks = cdiv(rows, cfg["BLOCK_M"])
    if num_splits is None:
        num_splits = cfg.get("num_splits")
    if num_splits is None:
        programs = batch * hkv * m_blocks
        target = int(cfg["split_target"] * num_sms(device))
        tiles = cdiv(max(int(max_seqlen_k), 1), cfg["BLOCK_N"])
        num_splits = max(1, min(target // max(programs, 1),
                                tiles // cfg.get("min_split_tiles", 4), 128))
    cfg["num_splits"] = int(num_splits)
    cfg["m_blocks"] = m_blocks
    return cfg


_PAGED = LaunchCache(_paged_kernel, pointers=("Q", "KC", "VC", "BT", "SEQUSED", "CU_Q", "O", "LSE",
                                            "OP", "LP", "SLOPES", "SINK_PTR"),
                     floats=("qk_scale", "cap2"))
_COMBINE = LaunchCache(_combine_kernel, pointers=("OP", "LP", "O", "LSE", "SINK_PTR"))


@functools.lru_cache(maxsize=4096)
def _cached_config(batch, hkv, group, max_seqlen_q, max_seqlen_k, head_dim, head_dim_v, dtype,
                   device, page, num_splits, interp):
    # paged_config is pure in these arguments (interp: TRITON_INTERPRET, which it reads; the
    # SM count is fixed per device)
    return paged_config(batch=batch, hkv=hkv, group=group, max_seqlen_q=max_seqlen_q,
                        max_seqlen_k=max_seqlen_k, head_dim=head_dim, head_dim_v=head_dim_v,
                        dtype=dtype, device=device, page=page, num_splits=num_splits)


def paged_attention_forward(q, k_cache, v_cache, block_table, seqused_k, out, lse=None, *,
                            cu_seqlens_q=None, max_seqlen_q=1, max_seqlen_k=None, scale,
                            causal=False, window=None, softcap=None, alibi_slopes=None,
                            sinks=None, config=None, num_splits=None):
    """Paged attention into ``out`` (T,Hq,Dv) and ``lse`` (Hq,T).

    q (T,Hq,D); k_cache (num_blocks, block_size, Hkv, D), v_cache (..., Dv);
    block_table (B, max_blocks) int32; seqused_k (B,) int32. cu_seqlens_q None:
    one token per sequence (decode). Query tokens are the last tokens of their
    sequence (bottom-right aligned causal mask).
    """
    dev = q.device
    if dev.type == "cuda" and dev.index != current_device():
        with torch.cuda.device(dev):
            return _paged_attention_forward(q, k_cache, v_cache, block_table, seqused_k, out,
                                            lse, cu_seqlens_q, max_seqlen_q, max_seqlen_k, scale,
                                            causal, window, softcap, alibi_slopes, sinks, config,
                                            num_splits)
    return _paged_attention_forward(q, k_cache, v_cache, block_table, seqused_k, out, lse,
                                    cu_seqlens_q, max_seqlen_q, max_seqlen_k, scale, causal,
                                    window, softcap, alibi_slopes, sinks, config, num_splits)


# Per-signature memo of the paged launches (issue 7 section 2), as in triton_prefill: key ->
# (grid, options, constant argument tail, launch-plan key, split count, split-buffer sizes, the
# combine launch's grid, options, tail and plan key). The key holds everything the full path
# below reads: shapes, strides, dtypes and device of every tensor, max_seqlen_q/k, the options,
# num_splits, the interpreter flag, and that every pointer is 16-byte aligned (otherwise the call
# is not remembered). The split buffers are allocated per call (a buffer kept across calls would
# be shared by concurrent streams and CUDA graphs); the caching allocator aligns them to 512 B.
_SIG: dict = {}
_SIG_LIMIT = 1024
_MEMO_ON = True  # tests compare the remembered launch with the full path
_F32 = torch.float32


def _paged_attention_forward(q, k_cache, v_cache, block_table, seqused_k, out, lse, cu_seqlens_q,
                             max_seqlen_q, max_seqlen_k, scale, causal, window, softcap,
                             alibi_slopes, sinks, config, num_splits):
    """Body of the public function (runs with q's device current)."""
    memo = _MEMO_ON and config is None and "launch" not in _PAGED.__dict__ \
        and "launch" not in _COMBINE.__dict__
    if memo:
        al = (q.data_ptr() | k_cache.data_ptr() | v_cache.data_ptr() | block_table.data_ptr()
              | seqused_k.data_ptr() | out.data_ptr())
        for t in (lse, alibi_slopes, sinks, cu_seqlens_q):
            if t is not None:
                al |= t.data_ptr()
        if al & 15:
            memo = False
        else:
            key = (q.shape, q.stride(), k_cache.shape, k_cache.stride(), v_cache.shape,
                   v_cache.stride(), block_table.shape, block_table.stride(), seqused_k.shape,
                   out.shape, out.stride(), q.dtype, k_cache.dtype, v_cache.dtype, out.dtype,
                   block_table.dtype, seqused_k.dtype, q.device,
                   None if lse is None else (lse.shape, lse.stride(), lse.dtype),
                   None if alibi_slopes is None else (alibi_slopes.shape, alibi_slopes.stride(),
                                                      alibi_slopes.dtype),
                   None if sinks is None else (sinks.shape, sinks.stride(), sinks.dtype),
                   None if cu_seqlens_q is None else (cu_seqlens_q.shape, cu_seqlens_q.dtype),
                   max_seqlen_q, max_seqlen_k, scale, causal,
                   window if type(window) is not list else tuple(window), softcap, num_splits,
                   interpret_mode())
            e = _SIG.get(key)
            # an entry made while plans were off (tests switch them) has no plan key: redo it
            if e is not None and ((e[3] is not None and (e[6] is None or e[6][3] is not None))
                                  or not (_PAGED.enabled or _COMBINE.enabled)):
                grid, options, tail, ltail, S, sizes, comb = e
                if S > 1:
                    dev = q.device
                    op = torch.empty(sizes[0], device=dev, dtype=_F32)
                    lp = torch.empty(sizes[1], device=dev, dtype=_F32)
                else:
                    op = lp = out
                lse_arg = lse if lse is not None else out
                sinks_arg = sinks if sinks is not None else out
                index = q.device.index if q.device.type == "cuda" else -1
                args = (q, k_cache, v_cache, block_table, seqused_k,
                        cu_seqlens_q if cu_seqlens_q is not None else seqused_k,
                        out, lse_arg, op, lp, alibi_slopes if alibi_slopes is not None else out,
                        sinks_arg) + tail
                if comb is not None:
                    cgrid, coptions, ctail, cltail = comb
                    cargs = (op, lp, out, lse_arg, sinks_arg) + ctail
                if _PAGED.verify:
                    want, cwant = _prepare_launches(
                        q, k_cache, v_cache, block_table, seqused_k, out, lse, cu_seqlens_q,
                        max_seqlen_q, max_seqlen_k, scale, causal, window, softcap, alibi_slopes,
                        sinks, None, num_splits)
                    check_remembered(_PAGED, (grid, args, options), want,
                                     fresh=(8, 9) if S > 1 else ())
                    if (comb is None) != (cwant is None):
                        raise RuntimeError("remembered paged launch: combine step differs")
                    if comb is not None:
                        check_remembered(_COMBINE, (cgrid, cargs, coptions), cwant, fresh=(0, 1))
                _PAGED.launch_keyed(ltail, grid, args, options, index)
                if comb is not None:
                    _COMBINE.launch_keyed(cltail, cgrid, cargs, coptions, index)
                return out
    B, nbt = block_table.shape
    T = q.shape[0]
    if B == 0 or T == 0:
        return out
    if nbt == 0:  # no key can exist
        out.zero_()
        if lse is not None:
            lse.fill_(float("-inf") if sinks is None else 0.0)
            if sinks is not None:
                lse.copy_(sinks.float()[:, None].expand_as(lse))
        return out
    launches = _prepare_launches(q, k_cache, v_cache, block_table, seqused_k, out, lse,
                                 cu_seqlens_q, max_seqlen_q, max_seqlen_k, scale, causal, window,
                                 softcap, alibi_slopes, sinks, config, num_splits)
    index = q.device.index if q.device.type == "cuda" else -1
    (grid, args, options), comb = launches
    _PAGED.launch(grid, args, options, index)
    if comb is not None:
        _COMBINE.launch(comb[0], comb[1], comb[2], index)
    if memo:
        _remember(key, launches)
    return out


def _remember(key, launches):
    (grid, args, options), comb = launches
    ltail = _PAGED.key_tail(args)
    if ltail is None and _PAGED.enabled:
        return
    S = args[_PAGED.names.index("NUM_SPLITS")]
    sizes = (tuple(args[8].shape), tuple(args[9].shape)) if S > 1 else None
    centry = None
    if comb is not None:
        cltail = _COMBINE.key_tail(comb[1])
        if cltail is None and _COMBINE.enabled:
            return
        centry = (comb[0], comb[2], comb[1][5:], cltail)
    if len(_SIG) >= _SIG_LIMIT:
        _SIG.clear()
    _SIG[key] = (grid, options, args[12:], ltail, S, sizes, centry)


def _prepare_launches(q, k_cache, v_cache, block_table, seqused_k, out, lse, cu_seqlens_q,
                      max_seqlen_q, max_seqlen_k, scale, causal, window, softcap, alibi_slopes,
                      sinks, config, num_splits):
    """The full derivation of the launches: ((grid, args, options) of the paged kernel, the
    combine kernel's or None), split buffers allocated."""
    B, nbt = block_table.shape
    T, Hq, D = q.shape
    _, page, Hkv, _ = k_cache.shape
    Dv = v_cache.shape[3]
    decode = cu_seqlens_q is None
    if decode:
        max_seqlen_q = 1
    if max_seqlen_k is None:
        max_seqlen_k = nbt * page
    group = Hq // Hkv
    if config:
        cfg = paged_config(batch=B, hkv=Hkv, group=group, max_seqlen_q=max_seqlen_q,
                           max_seqlen_k=max_seqlen_k, head_dim=D, head_dim_v=Dv, dtype=q.dtype,
                           device=q.device, page=page, num_splits=num_splits, config=config)
    else:
        cfg = _cached_config(B, Hkv, group, int(max_seqlen_q), int(max_seqlen_k), D, Dv, q.dtype,
                             q.device, page, num_splits, interpret_mode())
    S = cfg["num_splits"]
    has_left, has_right, left, right = window_bounds(causal, window)
    qk_scale, cap2, has_cap = logit_constants(scale, softcap)
    if alibi_slopes is not None:
        sa = (alibi_slopes.stride(0), alibi_slopes.stride(1)) if alibi_slopes.dim() == 2 \
            else (0, alibi_slopes.stride(0))
    else:
        sa = (0, 0)
    dev = q.device
    if S > 1:
        op = torch.empty((S, T, Hq, Dv), device=dev, dtype=torch.float32)
        lp = torch.empty((S, T, Hq), device=dev, dtype=torch.float32)
        # contiguous by construction: strides without asking the tensors
        sop = (T * Hq * Dv, Hq * Dv, Dv)
        slp = (T * Hq, Hq)
    else:
        op = lp = out
        sop, slp = (0, 0, 0), (0, 0)
    sl = lse.stride() if lse is not None else (0, 0)
    dummy = out
    lse_arg = lse if lse is not None else dummy
    sinks_arg = sinks if sinks is not None else dummy
    BDV = max(16, next_pow2(Dv))
    so = out.stride()
    # every parameter of _paged_kernel, positionally (the order of its signature)
    args = (
        q, k_cache, v_cache, block_table, seqused_k,
        cu_seqlens_q if cu_seqlens_q is not None else seqused_k,
        out, lse_arg, op, lp,
        alibi_slopes if alibi_slopes is not None else dummy, sinks_arg,
        *q.stride(), *k_cache.stride(), *v_cache.stride(),
        *block_table.stride(), *so, *sl, *sop, *slp, *sa,
        qk_scale, cap2, left, right,
        Hkv, group, D, Dv, page, cfg["BLOCK_M"], cfg["BLOCK_N"], max(16, next_pow2(D)), BDV,
        S, decode, has_left, has_right, has_cap, alibi_slopes is not None,
        (sinks is not None) and S == 1, lse is not None, dot_precision(q.dtype),
        bool(cfg.get("PREFETCH", True)),
    )
    main = ((S, B * Hkv, cfg["m_blocks"]), args,
            (("num_warps", cfg["num_warps"]), ("num_stages", cfg["num_stages"])))
    if S > 1:
        bs = max(2, next_pow2(S))
        cargs = (op, lp, out, lse_arg, sinks_arg, *sop, *slp, *so, *sl,
                 Dv, S, bs, BDV, sinks is not None, lse is not None)
        return main, ((T, Hq, 1), cargs, (("num_warps", 4 if bs * BDV <= 8192 else 8),))
    return main, None
