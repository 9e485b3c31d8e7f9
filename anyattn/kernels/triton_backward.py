"""Dense and varlen attention backward: FlashAttention-2 style Triton kernels.

Three launches, no atomics, so the result is deterministic by construction (the same bits on
every run for the same inputs and launch configuration). This is the default mode:

1. ``_bwd_pre_kernel``: per query row, ``delta = rowsum(dO * O) - dlse`` (the gradient flowing
   into the log-sum-exp enters here: d lse_i / d s_ij = p_ij) and ``lse2 = lse * log2(e)``
   (+inf where lse is -inf, so rows that see no key get p = 0), both into small fp32 buffers
   with one contiguous layout the two main kernels share.
2. ``_bwd_dkdv_kernel``: one program per (key block, kv head, sequence). K/V of the block stay
   on chip; it loops over the query heads of the GQA group and, for each, over the query
   blocks that see the key block (the range comes from the masks, like the forward's key
   range), accumulating dK and dV in fp32 and storing each once.
3. ``_bwd_dq_kernel``: one program per (query block, query head, sequence), looping over the
   key blocks that query block sees, accumulating dQ in fp32 and storing it once.

The cost of determinism: the dQ kernel recomputes Q.K^T and dO.V^T (7 matrix products per tile
pair instead of the 5 of an atomic-dQ kernel), about 1.4x the arithmetic; in exchange there
is no fp32 dQ scratch buffer, no atomics and no conversion pass.

Non-default mode, ``config={"deterministic": False}`` or ``ANYATTN_TRITON_BWD_DETERMINISTIC=0``:
no dQ kernel; the dK/dV kernel also forms each tile's dS.K and adds it into a zeroed fp32 dQ
buffer with atomics (FlashAttention-2's scheme), then one pass scales and converts it. Costs:
an fp32 buffer the size of q (4 bytes per element), its zeroing and conversion passes, atomic
traffic to L2 and run-to-run differences in the last bits of dQ (dK, dV and dsinks stay
deterministic). Measured on the H200 (bf16, d128, 4k and 16k, descriptors): the deterministic mode
is 1.29-1.43x the atomic one (the extra product and atomics push the dK/dV kernel, already at
the register cap, further into spills; docs/PERF.md §V), so determinism costs nothing there.

Logits are recomputed in the log2 domain exactly as the forward builds them (scale, softcap
``c * tanh(x / c)``, ALiBi ``-slope * |i + Sk - Sq - j|``, lower-right causal / window
masks). Softcap enters the chain rule as ``1 - tanh^2``; ALiBi is an additive constant of the
logits and sinks act through the lse only, so neither adds a term to dq/dk/dv. The sink
gradient ``dsink_h = -sum_rows exp(sink_h - lse) * delta`` is a small torch reduction over the
preprocess buffer (deterministic too). ALiBi slopes receive no gradient. Both main loops are
split like the forward's: masked edge tiles (causal diagonal, window edges, sequence ends)
and an unmasked middle.

On sm90 the streamed tiles (Q/dO in the dK/dV kernel, K/V in the dQ kernel) load through
device-side tensor descriptors where the layout allows, which frees the registers of 64-bit
pointer tiles (fewer spills): 161-172 against 105-113 TFLOP/s with pointer loads at the same
blocks (H200, bf16, d128, 4k and 16k, full and causal; the GPU tests pass on both paths), and
283-372 with the measured blocks of ``SM90_TMA_D128``. ``config={"TMA": False}`` or
``ANYATTN_TRITON_BWD_TMA=0`` selects pointer loads.

Paged KV caches have no backward (inference only). Launch configurations come from a static
table (no autotuning); a configuration that does not fit the GPU's shared memory is shrunk
and the fitting one remembered.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._common import (
    ensure_allocator,
    LOG2E,
    capability,
    cdiv,
    device_guard,
    dot_precision,
    interpret_mode,
    logit_constants,
    next_pow2,
    value_tile_width,
    window_bounds,
)


@triton.jit
def _tanh_b(x):
    # tanh(x) = 1 - 2 / (exp(2x) + 1); saturates cleanly at +-1 (same formula as the forward)
    e = tl.exp2(x * 2.8853900817779268)
    return 1.0 - 2.0 / (e + 1.0)


@triton.jit
def _scores(qk, i, j, off, qk_scale, cap2, slope2, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr):
    """log2-domain logits of a tile (any orientation: ``i`` query rows and ``j`` key columns
    broadcast to the tile) and, with softcap, d(capped)/d(uncapped) = 1 - tanh^2."""
    if SOFTCAP:
        t = _tanh_b(qk * qk_scale)
        s = cap2 * t
        dcap = 1.0 - t * t
    else:
        s = qk * qk_scale
        dcap = s  # unused without softcap
    if ALIBI:
        s = s - slope2 * tl.abs((i + off) - j).to(tl.float32)
    return s, dcap


@triton.jit
def _visible(i, j, off, Sq, Sk, left, right, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    valid = (i < Sq) & (j < Sk)
    if HAS_RIGHT:
        valid = valid & (j <= i + (off + right))
    if HAS_LEFT:
        valid = valid & (j >= i + (off - left))
    return valid


@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_base, do_base, l_base, x_base, start, end, offs_n, offs_m0,
                offs_d, offs_dv, sq_m, sq_d, sdo_m, sdo_d, Sq, Sk, off, qk_scale, cap2, slope2,
                left, right, D: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr,
                MASK: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
                HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, EVEN_D: tl.constexpr,
                EVEN_DV: tl.constexpr, PREC: tl.constexpr, qd, dod, TMA: tl.constexpr,
                dqa_base, sqa_m, ATOMIC: tl.constexpr):
    # Transposed tiles (keys along rows): p^T and ds^T feed dV += p^T dO and dK += ds^T Q
    # without a register transpose.
    for m0 in range(start, end, BLOCK_M):
        offs_m = m0 + offs_m0
        if TMA:
            # descriptors bounded by the sequence: rows past its end read as zero, and no
            # 64-bit pointer tile occupies registers
            q = qd.load([m0, 0])
            do = dod.load([m0, 0])
            qT = tl.trans(q)
        else:
            qT_ptrs = q_base + offs_m[None, :].to(tl.int64) * sq_m + offs_d[:, None] * sq_d
            do_ptrs = do_base + offs_m[:, None].to(tl.int64) * sdo_m + offs_dv[None, :] * sdo_d
            if MASK:
                mm = offs_m < Sq
                if EVEN_D:
                    qT = tl.load(qT_ptrs, mask=mm[None, :], other=0.0)
                else:
                    qT = tl.load(qT_ptrs, mask=mm[None, :] & (offs_d[:, None] < D), other=0.0)
                if EVEN_DV:
                    do = tl.load(do_ptrs, mask=mm[:, None], other=0.0)
                else:
                    do = tl.load(do_ptrs, mask=mm[:, None] & (offs_dv[None, :] < DV), other=0.0)
            else:
                if EVEN_D:
                    qT = tl.load(qT_ptrs)
                else:
                    qT = tl.load(qT_ptrs, mask=offs_d[:, None] < D, other=0.0)
                if EVEN_DV:
                    do = tl.load(do_ptrs)
                else:
                    do = tl.load(do_ptrs, mask=offs_dv[None, :] < DV, other=0.0)
        if MASK:
            mm = offs_m < Sq
            lse2 = tl.load(l_base + offs_m, mask=mm, other=float("inf"))
            delta = tl.load(x_base + offs_m, mask=mm, other=0.0)
        else:
            lse2 = tl.load(l_base + offs_m)
            delta = tl.load(x_base + offs_m)
        qkT = tl.dot(k, qT, input_precision=PREC)
        s, dcap = _scores(qkT, offs_m[None, :], offs_n[:, None], off, qk_scale, cap2, slope2,
                          SOFTCAP, ALIBI)
        pT = tl.exp2(s - lse2[None, :])
        if MASK:
            valid = _visible(offs_m[None, :], offs_n[:, None], off, Sq, Sk, left, right,
                             HAS_LEFT, HAS_RIGHT)
            pT = tl.where(valid, pT, 0.0)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=PREC)
        dpT = tl.dot(v, tl.trans(do), input_precision=PREC)
        dsT = pT * (dpT - delta[None, :])
        if SOFTCAP:
            dsT = dsT * dcap
        if TMA:
            dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=PREC)
        else:
            dk = tl.dot(dsT.to(qT.dtype), tl.trans(qT), dk, input_precision=PREC)
        if ATOMIC:
            # non-deterministic mode: this key block's share of dQ = dS K, added in fp32
            # (the order of the additions across key blocks varies from run to run)
            dqt = tl.dot(tl.trans(dsT.to(k.dtype)), k, input_precision=PREC)
            tl.atomic_add(dqa_base + offs_m[:, None].to(tl.int64) * sqa_m + offs_d[None, :], dqt,
                          mask=(offs_m[:, None] < Sq) & (offs_d[None, :] < D), sem="relaxed")
    return dk, dv


@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "left", "right", "sq_b", "sk_b", "sv_b",
                               "sdo_b", "sdk_b", "sdv_b", "sx_b", "sx_h"])
def _bwd_dkdv_kernel(Q, K, V, DO, DKP, DVP, LSE2, DELTA, SLOPES, CU_Q, CU_K,
                     sq_b, sq_m, sq_h, sq_d,
                     sk_b, sk_n, sk_h, sk_d,
                     sv_b, sv_n, sv_h, sv_d,
                     sdo_b, sdo_m, sdo_h, sdo_d,
                     sdk_b, sdk_n, sdk_h, sdk_d,
                     sdv_b, sdv_n, sdv_h, sdv_d,
                     sx_b, sx_h, sa_b, sa_h,
                     seqlen_q, seqlen_k, sm_scale, qk_scale, cap2, left, right,
                     DQA, sqa_b, sqa_m, sqa_h,
                     GROUP: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                     VARLEN: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                     SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, PREC: tl.constexpr,
                     TMA: tl.constexpr, ATOMIC: tl.constexpr):
    pid_n = tl.program_id(0)
    kvh = tl.program_id(1)
    b = tl.program_id(2)
    if VARLEN:
        q_start = tl.load(CU_Q + b)
        Sq = tl.load(CU_Q + b + 1) - q_start
        k_start = tl.load(CU_K + b)
        Sk = tl.load(CU_K + b + 1) - k_start
        q_row = Q + q_start.to(tl.int64) * sq_m
        do_row = DO + q_start.to(tl.int64) * sdo_m
        dqa_row = DQA + q_start.to(tl.int64) * sqa_m
        x_row = q_start.to(tl.int64)
        k_base = K + k_start.to(tl.int64) * sk_n + kvh * sk_h
        v_base = V + k_start.to(tl.int64) * sv_n + kvh * sv_h
        dk_base = DKP + k_start.to(tl.int64) * sdk_n + kvh * sdk_h
        dv_base = DVP + k_start.to(tl.int64) * sdv_n + kvh * sdv_h
    else:
        Sq = seqlen_q
        Sk = seqlen_k
        bb = b.to(tl.int64)
        q_row = Q + bb * sq_b
        do_row = DO + bb * sdo_b
        dqa_row = DQA + bb * sqa_b
        x_row = bb * sx_b
        k_base = K + bb * sk_b + kvh * sk_h
        v_base = V + bb * sv_b + kvh * sv_h
        dk_base = DKP + bb * sdk_b + kvh * sdk_h
        dv_base = DVP + bb * sdv_b + kvh * sdv_h
    n0 = pid_n * BLOCK_N
    if n0 >= Sk:  # varlen: this sequence is shorter than the longest
        return
    off = Sk - Sq
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    nmask = offs_n < Sk
    EVEN_D: tl.constexpr = D == BLOCK_D
    EVEN_DV: tl.constexpr = DV == BLOCK_DV
    kmask = nmask[:, None] & (offs_d[None, :] < D)
    vmask = nmask[:, None] & (offs_dv[None, :] < DV)
    k = tl.load(k_base + offs_n[:, None].to(tl.int64) * sk_n + offs_d[None, :] * sk_d,
                mask=kmask, other=0.0)
    v = tl.load(v_base + offs_n[:, None].to(tl.int64) * sv_n + offs_dv[None, :] * sv_d,
                mask=vmask, other=0.0)

    # ---- query rows that see this key block (scalars; no host sync) --------------
    n_last = tl.minimum(n0 + BLOCK_N, Sk) - 1
    if HAS_RIGHT:
        i_lo = tl.maximum(n0 - off - right, 0)
    else:
        i_lo = n0 - n0
    if HAS_LEFT:
        i_hi = tl.minimum(Sq, n_last - off + left + 1)
    else:
        i_hi = Sq
    lo = (i_lo // BLOCK_M) * BLOCK_M
    hi = tl.maximum(i_hi, lo)
    # unmasked middle: every (row, key) pair of its tiles is visible and in range
    if HAS_RIGHT:
        flo = tl.maximum(n0 + BLOCK_N - 1 - off - right, lo)
        flo = ((flo + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
        flo = tl.minimum(flo, hi)
    else:
        flo = lo
    if HAS_LEFT:
        fh = tl.maximum(tl.minimum(n0 - off + left + 1, Sq), 0)
    else:
        fh = Sq
    fh = (fh // BLOCK_M) * BLOCK_M
    fh = tl.minimum(tl.maximum(fh, flo), hi)
    if n0 + BLOCK_N > Sk:  # partial key block: every tile needs the key mask
        flo = hi
        fh = hi

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    for hh in range(GROUP):
        h = kvh * GROUP + hh
        q_base = q_row + h * sq_h
        dqa_base = dqa_row + h * sqa_h
        do_base = do_row + h * sdo_h
        l_base = LSE2 + x_row + h * sx_h
        x_base = DELTA + x_row + h * sx_h
        if ALIBI:
            slope2 = tl.load(SLOPES + b * sa_b + h * sa_h).to(tl.float32) * 1.4426950408889634
        else:
            slope2 = 0.0
        if TMA:
            Sq1 = tl.maximum(Sq, 1)
            qd = tl.make_tensor_descriptor(q_base, shape=[Sq1, D], strides=[sq_m, 1],
                                           block_shape=[BLOCK_M, BLOCK_D])
            dod = tl.make_tensor_descriptor(do_base, shape=[Sq1, DV], strides=[sdo_m, 1],
                                            block_shape=[BLOCK_M, BLOCK_DV])
        else:
            qd = q_base
            dod = do_base
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, l_base, x_base, lo, flo, offs_n,
                             offs_m0, offs_d, offs_dv, sq_m, sq_d, sdo_m, sdo_d, Sq, Sk, off,
                             qk_scale, cap2, slope2, left, right, D, DV, BLOCK_M, True, SOFTCAP,
                             ALIBI, HAS_LEFT, HAS_RIGHT, EVEN_D, EVEN_DV, PREC, qd, dod, TMA,
                             dqa_base, sqa_m, ATOMIC)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, l_base, x_base, flo, fh, offs_n,
                             offs_m0, offs_d, offs_dv, sq_m, sq_d, sdo_m, sdo_d, Sq, Sk, off,
                             qk_scale, cap2, slope2, left, right, D, DV, BLOCK_M, False, SOFTCAP,
                             ALIBI, HAS_LEFT, HAS_RIGHT, EVEN_D, EVEN_DV, PREC, qd, dod, TMA,
                             dqa_base, sqa_m, ATOMIC)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, l_base, x_base, fh, hi, offs_n,
                             offs_m0, offs_d, offs_dv, sq_m, sq_d, sdo_m, sdo_d, Sq, Sk, off,
                             qk_scale, cap2, slope2, left, right, D, DV, BLOCK_M, True, SOFTCAP,
                             ALIBI, HAS_LEFT, HAS_RIGHT, EVEN_D, EVEN_DV, PREC, qd, dod, TMA,
                             dqa_base, sqa_m, ATOMIC)
    dk = dk * sm_scale
    tl.store(dk_base + offs_n[:, None].to(tl.int64) * sdk_n + offs_d[None, :] * sdk_d,
             dk.to(DKP.dtype.element_ty), mask=kmask)
    tl.store(dv_base + offs_n[:, None].to(tl.int64) * sdv_n + offs_dv[None, :] * sdv_d,
             dv.to(DVP.dtype.element_ty), mask=vmask)


@triton.jit
def _dq_tiles(dq, q, do, lse2, delta, k_base, v_base, start, end, offs_m, offs_n0, offs_d,
              offs_dv, sk_n, sk_d, sv_n, sv_d, Sq, Sk, off, qk_scale, cap2, slope2, left, right,
              D: tl.constexpr, DV: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
              SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, HAS_LEFT: tl.constexpr,
              HAS_RIGHT: tl.constexpr, EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr,
              PREC: tl.constexpr, kd, vd, TMA: tl.constexpr):
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + offs_n0
        if TMA:
            kn = kd.load([n0, 0])  # rows past the sequence end read as zero
            kT = tl.trans(kn)
            vT = tl.trans(vd.load([n0, 0]))
        else:
            kT, vT = _load_kT_vT(k_base, v_base, offs_n, offs_d, offs_dv, sk_n, sk_d, sv_n, sv_d,
                                 Sk, D, DV, MASK, EVEN_D, EVEN_DV)
        qk = tl.dot(q, kT, input_precision=PREC)
        s, dcap = _scores(qk, offs_m[:, None], offs_n[None, :], off, qk_scale, cap2, slope2,
                          SOFTCAP, ALIBI)
        p = tl.exp2(s - lse2[:, None])
        if MASK:
            valid = _visible(offs_m[:, None], offs_n[None, :], off, Sq, Sk, left, right,
                             HAS_LEFT, HAS_RIGHT)
            p = tl.where(valid, p, 0.0)
        dp = tl.dot(do, vT, input_precision=PREC)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds = ds * dcap
        if TMA:
            dq = tl.dot(ds.to(kn.dtype), kn, dq, input_precision=PREC)
        else:
            dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq, input_precision=PREC)
    return dq


@triton.jit
def _load_kT_vT(k_base, v_base, offs_n, offs_d, offs_dv, sk_n, sk_d, sv_n, sv_d, Sk,
                D: tl.constexpr, DV: tl.constexpr, MASK: tl.constexpr, EVEN_D: tl.constexpr,
                EVEN_DV: tl.constexpr):
    # pointer loads of one key tile, transposed: K^T (D x N), V^T (Dv x N)
    kT_ptrs = k_base + offs_n[None, :].to(tl.int64) * sk_n + offs_d[:, None] * sk_d
    vT_ptrs = v_base + offs_n[None, :].to(tl.int64) * sv_n + offs_dv[:, None] * sv_d
    if MASK:
        nm = offs_n < Sk
        if EVEN_D:
            kT = tl.load(kT_ptrs, mask=nm[None, :], other=0.0)
        else:
            kT = tl.load(kT_ptrs, mask=nm[None, :] & (offs_d[:, None] < D), other=0.0)
        if EVEN_DV:
            vT = tl.load(vT_ptrs, mask=nm[None, :], other=0.0)
        else:
            vT = tl.load(vT_ptrs, mask=nm[None, :] & (offs_dv[:, None] < DV), other=0.0)
    else:
        if EVEN_D:
            kT = tl.load(kT_ptrs)
        else:
            kT = tl.load(kT_ptrs, mask=offs_d[:, None] < D, other=0.0)
        if EVEN_DV:
            vT = tl.load(vT_ptrs)
        else:
            vT = tl.load(vT_ptrs, mask=offs_dv[:, None] < DV, other=0.0)
    return kT, vT


@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "left", "right", "sq_b", "sk_b", "sv_b",
                               "sdo_b", "sdq_b", "sx_b", "sx_h"])
def _bwd_dq_kernel(Q, K, V, DO, DQ, LSE2, DELTA, SLOPES, CU_Q, CU_K,
                   sq_b, sq_m, sq_h, sq_d,
                   sk_b, sk_n, sk_h, sk_d,
                   sv_b, sv_n, sv_h, sv_d,
                   sdo_b, sdo_m, sdo_h, sdo_d,
                   sdq_b, sdq_m, sdq_h, sdq_d,
                   sx_b, sx_h, sa_b, sa_h,
                   seqlen_q, seqlen_k, sm_scale, qk_scale, cap2, left, right,
                   GROUP: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                   VARLEN: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                   SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, PREC: tl.constexpr,
                   TMA: tl.constexpr):
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    kvh = h // GROUP
    if VARLEN:
        q_start = tl.load(CU_Q + b)
        Sq = tl.load(CU_Q + b + 1) - q_start
        k_start = tl.load(CU_K + b)
        Sk = tl.load(CU_K + b + 1) - k_start
        q_base = Q + q_start.to(tl.int64) * sq_m + h * sq_h
        do_base = DO + q_start.to(tl.int64) * sdo_m + h * sdo_h
        dq_base = DQ + q_start.to(tl.int64) * sdq_m + h * sdq_h
        x_off = q_start.to(tl.int64) + h * sx_h
        k_base = K + k_start.to(tl.int64) * sk_n + kvh * sk_h
        v_base = V + k_start.to(tl.int64) * sv_n + kvh * sv_h
    else:
        Sq = seqlen_q
        Sk = seqlen_k
        bb = b.to(tl.int64)
        q_base = Q + bb * sq_b + h * sq_h
        do_base = DO + bb * sdo_b + h * sdo_h
        dq_base = DQ + bb * sdq_b + h * sdq_h
        x_off = bb * sx_b + h * sx_h
        k_base = K + bb * sk_b + kvh * sk_h
        v_base = V + bb * sv_b + kvh * sv_h
    m0 = pid_m * BLOCK_M
    if m0 >= Sq:  # varlen: this sequence is shorter than the longest
        return
    off = Sk - Sq
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    mm = offs_m < Sq
    EVEN_D: tl.constexpr = D == BLOCK_D
    EVEN_DV: tl.constexpr = DV == BLOCK_DV
    qmask = mm[:, None] & (offs_d[None, :] < D)
    q = tl.load(q_base + offs_m[:, None].to(tl.int64) * sq_m + offs_d[None, :] * sq_d,
                mask=qmask, other=0.0)
    do = tl.load(do_base + offs_m[:, None].to(tl.int64) * sdo_m + offs_dv[None, :] * sdo_d,
                 mask=mm[:, None] & (offs_dv[None, :] < DV), other=0.0)
    # rows past the sequence end: lse2 = +inf gives p = 0 (they are never stored)
    lse2 = tl.load(LSE2 + x_off + offs_m, mask=mm, other=float("inf"))
    delta = tl.load(DELTA + x_off + offs_m, mask=mm, other=0.0)
    if ALIBI:
        slope2 = tl.load(SLOPES + b * sa_b + h * sa_h).to(tl.float32) * 1.4426950408889634
    else:
        slope2 = 0.0

    # ---- key range of this query block (the forward's) ------------------------
    m_last = tl.minimum(m0 + BLOCK_M, Sq) - 1
    if HAS_LEFT:
        lo = tl.maximum(m0 + off - left, 0)
        lo = (lo // BLOCK_N) * BLOCK_N
    else:
        lo = m0 - m0
    if HAS_RIGHT:
        hi = tl.maximum(tl.minimum(Sk, m_last + off + right + 1), 0)
        fh = tl.maximum(tl.minimum(Sk, m0 + off + right + 1), 0)
    else:
        hi = Sk
        fh = Sk
    hi = tl.maximum(hi, lo)
    if HAS_LEFT:
        flo = tl.maximum(m_last + off - left, lo)
        flo = ((flo + BLOCK_N - 1) // BLOCK_N) * BLOCK_N
        flo = tl.minimum(flo, hi)
    else:
        flo = lo
    fh = (fh // BLOCK_N) * BLOCK_N
    fh = tl.minimum(tl.maximum(fh, flo), hi)

    if TMA:
        Sk1 = tl.maximum(Sk, 1)
        kd = tl.make_tensor_descriptor(k_base, shape=[Sk1, D], strides=[sk_n, 1],
                                       block_shape=[BLOCK_N, BLOCK_D])
        vd = tl.make_tensor_descriptor(v_base, shape=[Sk1, DV], strides=[sv_n, 1],
                                       block_shape=[BLOCK_N, BLOCK_DV])
    else:
        kd = k_base
        vd = v_base
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dq = _dq_tiles(dq, q, do, lse2, delta, k_base, v_base, lo, flo, offs_m, offs_n0, offs_d,
                   offs_dv, sk_n, sk_d, sv_n, sv_d, Sq, Sk, off, qk_scale, cap2, slope2, left,
                   right, D, DV, BLOCK_N, True, SOFTCAP, ALIBI, HAS_LEFT, HAS_RIGHT, EVEN_D,
                   EVEN_DV, PREC, kd, vd, TMA)
    dq = _dq_tiles(dq, q, do, lse2, delta, k_base, v_base, flo, fh, offs_m, offs_n0, offs_d,
                   offs_dv, sk_n, sk_d, sv_n, sv_d, Sq, Sk, off, qk_scale, cap2, slope2, left,
                   right, D, DV, BLOCK_N, False, SOFTCAP, ALIBI, HAS_LEFT, HAS_RIGHT, EVEN_D,
                   EVEN_DV, PREC, kd, vd, TMA)
    dq = _dq_tiles(dq, q, do, lse2, delta, k_base, v_base, fh, hi, offs_m, offs_n0, offs_d,
                   offs_dv, sk_n, sk_d, sv_n, sv_d, Sq, Sk, off, qk_scale, cap2, slope2, left,
                   right, D, DV, BLOCK_N, True, SOFTCAP, ALIBI, HAS_LEFT, HAS_RIGHT, EVEN_D,
                   EVEN_DV, PREC, kd, vd, TMA)
    dq = dq * sm_scale
    tl.store(dq_base + offs_m[:, None].to(tl.int64) * sdq_m + offs_d[None, :] * sdq_d,
             dq.to(DQ.dtype.element_ty), mask=qmask)


@triton.jit(do_not_specialize=["seqlen_q", "so_b", "sdo_b", "sl_b", "sg_b", "sx_b", "sx_h"])
def _bwd_pre_kernel(O, DO, LSE, DLSE, LSE2, DELTA,
                    so_b, so_m, so_h, so_d,
                    sdo_b, sdo_m, sdo_h, sdo_d,
                    sl_b, sl_h, sl_m,
                    sg_b, sg_h, sg_m,
                    sx_b, sx_h, seqlen_q,
                    DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
                    HAS_DLSE: tl.constexpr):
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    mm = offs_m < seqlen_q
    msk = mm[:, None] & (offs_dv[None, :] < DV)
    rows = offs_m[:, None].to(tl.int64)
    o = tl.load(O + b * so_b + h * so_h + rows * so_m + offs_dv[None, :] * so_d, mask=msk,
                other=0.0).to(tl.float32)
    do = tl.load(DO + b * sdo_b + h * sdo_h + rows * sdo_m + offs_dv[None, :] * sdo_d, mask=msk,
                 other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    if HAS_DLSE:
        delta -= tl.load(DLSE + b * sg_b + h * sg_h + offs_m * sg_m, mask=mm,
                         other=0.0).to(tl.float32)
    lse = tl.load(LSE + b * sl_b + h * sl_h + offs_m * sl_m, mask=mm, other=0.0)
    # a row that sees no key (lse = -inf) must give p = exp2(s - lse2) = 0, never inf/nan
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    tl.store(LSE2 + b * sx_b + h * sx_h + offs_m, lse2, mask=mm)
    tl.store(DELTA + b * sx_b + h * sx_h + offs_m, delta, mask=mm)


# ------------------------------------------------------------------------------
# configuration table (static: graph-capture safe, no autotuning)
# ------------------------------------------------------------------------------

#: sm90 + descriptors, head dims 65-128: measured on the H200 (bf16, d128, 4k and 16k, full and
#: causal; ``benchmarks/triton_backward_modes.py --sweep``): 283-372 TFLOP/s against 161-172 for
#: the spill-minimising (32, 64, 8, 2) / (128, 64, 8, 2) it replaces. In the dK/dV kernel the
#: resident keys are the rows of every product: 128 of them give each of the 8 warps' two warp
#: groups a 64-row wgmma tile (64 keys gave them 32), and 64-query steps double each product's
#: width; (64, 64, 4, 3), one warp group of 64 rows, came close (249-331). dQ gains 2-5 %.
SM90_TMA_D128 = dict(dkdv=(64, 128, 8, 2), dq=(64, 128, 4, 3))
#: sm90 + descriptors, head dims <= 64: measured on the H200 (bf16, d64, 4k and 16k, full and
#: causal; ``--sweep --head-dims 64``, 2026-12-01): 287-355 TFLOP/s (0.76-0.80x cuDNN) against
#: 234-305 for the unmeasured (64, 128, 8, 3) / (128, 128, 8, 3) it replaces; one warp group of
#: 64 key rows beat two (the d64 tiles are narrow enough that 4 warps keep the tensor cores fed).
SM90_TMA_D64 = dict(dkdv=(64, 64, 4, 3), dq=(64, 128, 4, 3))


def backward_config(head_dim: int, head_dim_v: int, dtype: torch.dtype,
                    device: torch.device, tma: bool = False) -> dict:
    """Launch configuration of the two main kernels.

    ``dkdv``: (BLOCK_M query rows per step, BLOCK_N keys per program, warps, stages);
    ``dq``: (BLOCK_M query rows per program, BLOCK_N keys per step, warps, stages).
    Tall key blocks for dK/dV and tall query blocks for dQ (the resident operand is the large
    one, the streamed one small), after FlashAttention-2 and Triton's fused-attention tutorial.
    ``tma`` (sm90 tensor descriptors, the default where the layout allows): d64 and d128 are the
    H200-measured ``SM90_TMA_D64`` and ``SM90_TMA_D128``; d256 is the candidate that compiled for
    sm90a with the fewest spills (<= 72 B per thread; ptxas resource usage with Triton 3.9 on a
    machine without a GPU), not yet swept on a GPU. Pointer loads (strides
    descriptors cannot take, pre-sm90): the candidates with the fewest spills (d64 none, d128
    <= ~0.4 KB, d256 <= ~0.6 KB per thread). A configuration that exceeds the GPU's shared
    memory is shrunk at first launch (see ``_launch``).
    """
    bd = max(16, next_pow2(max(head_dim, head_dim_v)))
    if interpret_mode() or device.type != "cuda":
        return dict(dkdv=(16, 16, 4, 1), dq=(16, 16, 4, 1))
    major, minor = capability(device)
    if dtype == torch.float32:
        if bd <= 64:
            return dict(dkdv=(32, 64, 4, 1), dq=(64, 32, 4, 1))
        if bd <= 128:
            return dict(dkdv=(16, 64, 4, 1), dq=(64, 16, 4, 1))
        return dict(dkdv=(16, 32, 4, 1), dq=(32, 16, 4, 1))
    if tma and major >= 9:
        if bd <= 64:
            return dict(SM90_TMA_D64)
        if bd <= 128:
            return dict(SM90_TMA_D128)
        return dict(dkdv=(16, 32, 8, 1), dq=(64, 32, 8, 2))
    big_smem = major >= 9 or (major == 8 and minor == 0)  # sm80 / sm90: 164-228 KB per SM
    if big_smem:
        if bd <= 64:
            return dict(dkdv=(32, 128, 8, 3), dq=(128, 64, 8, 3))
        if bd <= 128:
            return dict(dkdv=(32, 64, 8, 2), dq=(128, 32, 8, 2))
        return dict(dkdv=(16, 32, 8, 1), dq=(64, 16, 8, 1))
    # sm75 / sm86 / sm89: ~100 KB shared memory per SM
    if bd <= 64:
        return dict(dkdv=(32, 64, 4, 2), dq=(64, 32, 4, 2))
    if bd <= 128:
        return dict(dkdv=(32, 64, 4, 1), dq=(64, 32, 4, 1))
    return dict(dkdv=(16, 32, 4, 1), dq=(32, 16, 4, 1))




def _tma_ok(*tensors) -> bool:
    """Device-side tensor descriptors: sm90+, Triton >= 3.4, 16-bit data, unit last stride,
    16-byte aligned bases and row strides."""
    t0 = tensors[0]
    if not (hasattr(tl, "make_tensor_descriptor") and hasattr(triton, "set_allocator")):
        return False
    # the interpreter emulates descriptors on CPU (the CPU tests run this path)
    if not interpret_mode() and (t0.device.type != "cuda" or capability(t0.device)[0] < 9):
        return False
    for t in tensors:
        if t.dtype not in (torch.float16, torch.bfloat16) or t.stride(-1) != 1 \
                or t.data_ptr() % 16 or any(st % 8 for st in t.stride()[:-1]):
            return False
    return True


def _deterministic(config) -> bool:
    """Deterministic (the default) unless ``config={"deterministic": False}`` or
    ``ANYATTN_TRITON_BWD_DETERMINISTIC=0``."""
    want = (config or {}).get("deterministic")
    if want is None:
        want = os.environ.get("ANYATTN_TRITON_BWD_DETERMINISTIC", "1") not in (
            "0", "false", "False")
    return bool(want)


_FITTED: dict = {}  # (kernel, key, asked) -> the configuration that compiled within the GPU's limits


def _shrink(cfg):
    bm, bn, w, st = cfg
    if st > 1:
        return (bm, bn, w, st - 1)
    if max(bm, bn) > 16:
        return (bm, bn // 2, w, st) if bn >= bm else (bm // 2, bn, w, st)
    return None


def _launch(kernel, grid_fn, key, cfg, args, consts):
    """Launch ``kernel`` with ``cfg``; if it does not fit (Triton's OutOfResources, raised at
    compile time before anything runs) step down stages, then block sizes, and remember the
    configuration that fitted for this key."""
    # keyed by the configuration asked for too: a config= override is never replaced by the
    # configuration an earlier call (another override, or the table) fitted
    key = key + (tuple(cfg),)
    cfg = _FITTED.get(key, cfg)
    while True:
        bm, bn, w, st = cfg
        try:
            kernel[grid_fn(bm, bn)](*args, BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st,
                                    **consts)
        except Exception as exc:  # noqa: BLE001 - only resource errors are retried
            if type(exc).__name__ != "OutOfResources":
                raise
            nxt = _shrink(cfg)
            if nxt is None:
                raise
            cfg = nxt
            continue
        _FITTED[key] = cfg
        return


def flash_attention_backward(do, q, k, v, out, lse, dlse=None, *, scale, causal=False,
                             window=None, softcap=None, alibi_slopes=None, sinks=None,
                             cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                             max_seqlen_k=None, dq=None, dk=None, dv=None, config=None):
    """Gradients of :func:`~anyattn.kernels.triton_prefill.flash_attention_forward`.

    dense:  do/out (B,Sq,Hq,Dv), q (B,Sq,Hq,D), k (B,Sk,Hkv,D), v (B,Sk,Hkv,Dv),
            lse/dlse (B,Hq,Sq) fp32 (natural log, sinks included; dlse may be None);
    varlen: the packed (T,H,D) forms, lse/dlse (Hq,Tq), cu_seqlens_q/k int32 (B+1,),
            max_seqlen_q/k host ints.
    Any strides. ``dq``/``dk``/``dv`` may be given (any strides, fully overwritten); otherwise
    allocated like q/k/v. Returns ``(dq, dk, dv, dsinks)``, dsinks None without sinks.
    ``config`` overrides the table: ``{"dkdv": (BM, BN, warps, stages), "dq": (...)}``, and
    ``{"TMA": False}`` loads the streamed tiles with pointer loads instead of tensor descriptors
    (sm90 default: descriptors where the layout allows; also ``ANYATTN_TRITON_BWD_TMA=0``).
    Inputs are assumed validated by the caller.
    """
    with device_guard(q):
        return _backward(**locals())


def _backward(do, q, k, v, out, lse, dlse=None, *, scale, causal=False, window=None,
              softcap=None, alibi_slopes=None, sinks=None, cu_seqlens_q=None,
              cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None, dq=None, dk=None,
              dv=None, config=None):
    varlen = cu_seqlens_q is not None
    if do.dtype != q.dtype:  # the products pair dO with P and V in the input dtype
        do = do.to(q.dtype)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device) if dq is None else dq
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device) if dk is None else dk
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device) if dv is None else dv
    if varlen:
        B = cu_seqlens_q.shape[0] - 1
        Tq, Hq, D = q.shape
        Hkv, Dv = k.shape[1], v.shape[2]

        def s4(t):
            return (0, t.stride(0), t.stride(1), t.stride(2))

        sl = (0, lse.stride(0), lse.stride(1))
        sg = (0, dlse.stride(0), dlse.stride(1)) if dlse is not None else (0, 0, 0)
        rows, pre_b = Tq, 1
        x = torch.empty((2, Hq, Tq), dtype=torch.float32, device=q.device)
        sx = (0, Tq)
        seqlen_q = seqlen_k = 0
        grid_q, grid_k = max(int(max_seqlen_q), 0), max(int(max_seqlen_k), 0)
        cu_q, cu_k = cu_seqlens_q, cu_seqlens_k
    else:
        B, Sq, Hq, D = q.shape
        Sk, Hkv, Dv = k.shape[1], k.shape[2], v.shape[3]

        def s4(t):
            return tuple(t.stride())

        sl = tuple(lse.stride())
        sg = tuple(dlse.stride()) if dlse is not None else (0, 0, 0)
        rows, pre_b = Sq, B
        x = torch.empty((2, B, Hq, Sq), dtype=torch.float32, device=q.device)
        sx = (Hq * Sq, Sq)
        seqlen_q, seqlen_k = Sq, Sk
        grid_q, grid_k = Sq, Sk
        cu_q = cu_k = q  # unused placeholders
    lse2, delta = x[0], x[1]
    if B == 0 or Hq == 0:
        dq.zero_(), dk.zero_(), dv.zero_()
        return dq, dk, dv, (torch.zeros_like(sinks) if sinks is not None else None)
    if grid_k == 0 or k.shape[0] == 0:
        dk.zero_(), dv.zero_()
    if q.numel() == 0 or rows == 0:
        dq.zero_()

    if rows > 0:
        bmp = 16 if interpret_mode() else 64
        _bwd_pre_kernel[(cdiv(rows, bmp), Hq, pre_b)](
            out, do, lse, dlse if dlse is not None else lse, lse2, delta,
            *s4(out), *s4(do), *sl, *sg, *sx, rows,
            DV=Dv, BLOCK_M=bmp, BLOCK_DV=max(16, next_pow2(Dv)), HAS_DLSE=dlse is not None,
            num_warps=4)

    has_left, has_right, left, right = window_bounds(causal, window)
    qk_scale, cap2, has_cap = logit_constants(scale, softcap)
    if alibi_slopes is not None:
        sa = (alibi_slopes.stride(0), alibi_slopes.stride(1)) if alibi_slopes.dim() == 2 \
            else (0, alibi_slopes.stride(0))
    else:
        sa = (0, 0)
    # TMA (device-side descriptors for the streamed Q/dO and K/V tiles) where the layout allows:
    # 1.5x the pointer path on the H200 (module docstring); ``config={"TMA": False}`` or
    # ANYATTN_TRITON_BWD_TMA=0 turns it off.
    want = (config or {}).get("TMA")
    if want is None:
        want = os.environ.get("ANYATTN_TRITON_BWD_TMA", "1") not in ("", "0", "false", "False")
    tma = bool(want) and _tma_ok(q, k, v, do)
    cfg = backward_config(D, Dv, q.dtype, q.device, tma=tma)
    if config:
        cfg.update(config)
    if tma and not interpret_mode():
        ensure_allocator()
    # deterministic=False: dQ from atomics in the dK/dV kernel (5 products per tile pair
    # instead of 7, one fp32 dQ buffer and a conversion pass; bits vary between runs)
    atomic = not _deterministic(config)
    # pointer loads pad a value tile narrower than the query tile, as the forward does (a Triton
    # sm90 bug, see value_tile_width); config={"PAD_DV": False} keeps the narrow tile
    bdv = value_tile_width(D, Dv, tma, (config or {}).get("PAD_DV", True))
    consts = dict(TMA=tma, GROUP=Hq // Hkv, D=D, DV=Dv, BLOCK_D=max(16, next_pow2(D)),
                  BLOCK_DV=bdv, VARLEN=varlen, HAS_LEFT=has_left,
                  HAS_RIGHT=has_right, SOFTCAP=has_cap, ALIBI=alibi_slopes is not None,
                  PREC=dot_precision(q.dtype))
    slopes = alibi_slopes if alibi_slopes is not None else lse2
    common = (*sx, *sa, seqlen_q, seqlen_k, float(scale), qk_scale, cap2, left, right)
    dev_key = (q.device.type, q.device.index, D, Dv, q.dtype, tma, bdv)
    if atomic:
        dqa = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        sqa = s4(dqa)[:3]
    else:
        dqa, sqa = lse2, (0, 0, 0)
    if grid_k > 0 and Hkv > 0:
        _launch(_bwd_dkdv_kernel, lambda bm, bn: (cdiv(grid_k, bn), Hkv, B),
                ("dkdv", atomic) + dev_key, cfg["dkdv"],
                (q, k, v, do, dk, dv, lse2, delta, slopes, cu_q, cu_k,
                 *s4(q), *s4(k), *s4(v), *s4(do), *s4(dk), *s4(dv), *common, dqa, *sqa),
                dict(consts, ATOMIC=atomic))
    if atomic:
        torch.mul(dqa, float(scale), out=dqa)
        dq.copy_(dqa)
    elif grid_q > 0:
        _launch(_bwd_dq_kernel, lambda bm, bn: (cdiv(grid_q, bm), Hq, B),
                ("dq",) + dev_key, cfg["dq"],
                (q, k, v, do, dq, lse2, delta, slopes, cu_q, cu_k,
                 *s4(q), *s4(k), *s4(v), *s4(do), *s4(dq), *common), consts)

    dsinks = None
    if sinks is not None:
        # d lse_i / d sink_h = exp(sink_h - lse_i) and the sink has no value row: its logit's
        # gradient is -p_sink * delta summed over every row of head h (a fixed-order reduction)
        lse_n = lse2 * (1.0 / LOG2E)  # +inf on rows without keys or sink: p_sink = 0 there
        if varlen:
            p_sink = torch.exp(sinks.float()[:, None] - lse_n)
            dsinks = -(p_sink * delta).sum(1)
        else:
            p_sink = torch.exp(sinks.float()[None, :, None] - lse_n)
            dsinks = -(p_sink * delta).sum((0, 2))
        dsinks = dsinks.to(sinks.dtype)
    return dq, dk, dv, dsinks
