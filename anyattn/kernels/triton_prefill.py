"""Dense and varlen attention forward: FlashAttention-2 style Triton kernel.

One program handles BLOCK_M query rows of one (sequence, query head). The key
range it visits is computed from the masks (causal, sliding window, sequence
end) so fully masked tiles are never loaded; the range is split in three
loops: a masked left edge (window), an unmasked middle and a masked right edge
(causal diagonal / window / sequence end). Logits are kept in the log2 domain
(exp2). Sinks seed the running max/denominator; rows with no visible key give
output 0 and lse -inf (or lse = sink with sinks).

On sm90 (Triton >= 3.4), K/V tiles come through device-side TMA tensor
descriptors bounded per sequence (q/k/v need a unit last stride and 16-byte
aligned rows; otherwise, and on older GPUs, pointer loads). Device-side
descriptors need a scratch allocator: the first TMA launch installs one with
``triton.set_allocator`` (torch.empty on the current device). Without softcap
or ALiBi the row max is taken on raw q.k and the logit costs one FMA.
``config={"PIPE": True}`` selects a hand-pipelined unmasked loop (Q.K^T of the
next tile issued before the softmax); it measured slower on H200/Triton 3.6
and is off by default (docs/PERF.md).

Configurations come from a static table keyed by (head dim, dtype, GPU arch,
TMA or not, masked or not, and on sm90 a bucket of max_seqlen_k); nothing is
autotuned, so launches are CUDA-graph safe and a warm process does not recompile
for new sequence lengths within a bucket (sequence lengths, window sizes and
batch/LSE strides are not specialised on; at most three buckets per head dim).

On sm90 the K/V descriptors are normally built on the host (``HOSTDESC``, a
(rows, heads * D) view: dense with batch stride == Sk * row stride, or varlen;
D and Dv powers of two); otherwise on the device per program.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._common import (
    ensure_allocator,
    capability,
    cdiv,
    current_device,
    dot_precision,
    interpret_mode,
    logit_constants,
    next_pow2,
    value_tile_width,
    window_bounds,
)
from ._launch import LaunchCache, check_remembered

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # Triton < 3.4: no host descriptors
    TensorDescriptor = None


@triton.jit
def _tanh(x):
    # tanh(x) = 1 - 2 / (exp(2x) + 1); saturates cleanly at +-1.
    e = tl.exp2(x * 2.8853900817779268)
    return 1.0 - 2.0 / (e + 1.0)


@triton.jit
def _logits(qk, offs_m, offs_n, off, qk_scale, cap2, slope2, SOFTCAP: tl.constexpr,
            ALIBI: tl.constexpr, FAST: tl.constexpr):
    # log2-domain logits of one tile. FAST (plain logits, scale > 0): the raw q.k, so the row
    # max is taken on it and the scale folds into one FMA per element later.
    if FAST:
        s = qk
    elif SOFTCAP:
        s = cap2 * _tanh(qk * qk_scale)
    else:
        s = qk * qk_scale
    if ALIBI:
        rel = (offs_m[:, None] + off) - offs_n[None, :]
        s = s - slope2 * tl.abs(rel).to(tl.float32)
    return s


@triton.jit
def _tile(acc, l_i, m_i, q, K_ptrs, V_ptrs, start, end, offs_m, offs_n0, off, seqlen_k,
          stride_kn, stride_vn, qk_scale, cap2, slope2, left, right, dmask_k, dmask_v,
          BLOCK_N: tl.constexpr, MASK: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
          HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, EVEN_D: tl.constexpr,
          EVEN_DV: tl.constexpr, PREC: tl.constexpr, TMA: tl.constexpr,
          FAST: tl.constexpr, KNAT: tl.constexpr, krow, kcol, vcol, HOSTDESC: tl.constexpr):
    # K_ptrs/V_ptrs are tensor descriptors when TMA (rows past the tensor end read as 0);
    # otherwise pointer tiles advanced in 64-bit pointer arithmetic (no int32 overflow).
    if TMA:
        kp = K_ptrs
        vp = V_ptrs
    else:
        kp = K_ptrs + start.to(tl.int64) * stride_kn
        vp = V_ptrs + start.to(tl.int64) * stride_vn
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + offs_n0
        if TMA:
            k = kp.load([krow + n0, kcol]).T
        elif MASK:
            nmask = offs_n < seqlen_k
            if KNAT:
                if EVEN_D:
                    k = tl.load(kp, mask=nmask[:, None], other=0.0).T
                else:
                    k = tl.load(kp, mask=nmask[:, None] & dmask_k, other=0.0).T
            else:
                if EVEN_D:
                    k = tl.load(kp, mask=nmask[None, :], other=0.0)
                else:
                    k = tl.load(kp, mask=nmask[None, :] & dmask_k, other=0.0)
        else:
            if EVEN_D:
                k = tl.load(kp)
            else:
                k = tl.load(kp, mask=dmask_k, other=0.0)
            if KNAT:
                k = k.T
        qk = tl.dot(q, k, input_precision=PREC)
        s = _logits(qk, offs_m, offs_n, off, qk_scale, cap2, slope2, SOFTCAP, ALIBI, FAST)
        if MASK:
            valid = offs_n[None, :] < seqlen_k
            if HAS_RIGHT:
                valid = valid & (offs_n[None, :] <= offs_m[:, None] + (off + right))
            if HAS_LEFT:
                valid = valid & (offs_n[None, :] >= offs_m[:, None] + (off - left))
            s = tl.where(valid, s, float("-inf"))
        if FAST:
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
        if MASK:
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_use = m_new
        if FAST:
            p = tl.exp2(s * qk_scale - m_use[:, None])
        else:
            p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if TMA:
            v = vp.load([krow + n0, vcol])
            if HOSTDESC and MASK:
                # rows past this sequence belong to the next one: zero them (p is 0 there,
                # but 0 * inf/nan would still leak)
                v = tl.where((offs_n < seqlen_k)[:, None], v, 0.0)
        elif MASK:
            if EVEN_DV:
                v = tl.load(vp, mask=nmask[:, None], other=0.0)
            else:
                v = tl.load(vp, mask=nmask[:, None] & dmask_v, other=0.0)
        else:
            if EVEN_DV:
                v = tl.load(vp)
            else:
                v = tl.load(vp, mask=dmask_v, other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PREC)
        m_i = m_new
        if not TMA:
            kp += BLOCK_N * stride_kn
            vp += BLOCK_N * stride_vn
    return acc, l_i, m_i


@triton.jit
def _step_nomask(qk, m_i, l_i, acc, offs_m, offs_n, off, qk_scale, cap2, slope2,
                 SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, FAST: tl.constexpr):
    # online-softmax update for a tile with no masked entry
    s = _logits(qk, offs_m, offs_n, off, qk_scale, cap2, slope2, SOFTCAP, ALIBI, FAST)
    if FAST:
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.exp2(s * qk_scale - m_new[:, None])
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    return p, m_new, l_i, acc


@triton.jit
def _tile_pipelined(acc, l_i, m_i, q, Kd, Vd, start, end, offs_m, offs_n0, off, qk_scale, cap2,
                    slope2, BLOCK_N: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
                    PREC: tl.constexpr, FAST: tl.constexpr):
    """Unmasked tiles through TMA descriptors, with Q.K^T of tile j+1 issued before the
    softmax of tile j so the tensor cores and the softmax could overlap (FA3's
    intra-warpgroup pipelining, written out by hand). Measured 4-20 % slower than the plain
    loop on H200 / Triton 3.6 (more registers and shared memory); off by default.
    ``start``/``end`` are BLOCK_N aligned."""
    if start < end:
        qk = tl.dot(q, Kd.load([start, 0]).T, input_precision=PREC)
        for n0 in range(start, end - BLOCK_N, BLOCK_N):
            qk_next = tl.dot(q, Kd.load([n0 + BLOCK_N, 0]).T, input_precision=PREC)
            p, m_i, l_i, acc = _step_nomask(qk, m_i, l_i, acc, offs_m, n0 + offs_n0, off,
                                            qk_scale, cap2, slope2, SOFTCAP, ALIBI, FAST)
            v = Vd.load([n0, 0])
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PREC)
            qk = qk_next
        last = end - BLOCK_N
        p, m_i, l_i, acc = _step_nomask(qk, m_i, l_i, acc, offs_m, last + offs_n0, off,
                                        qk_scale, cap2, slope2, SOFTCAP, ALIBI, FAST)
        v = Vd.load([last, 0])
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PREC)
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "left", "right", "sq_b", "sk_b", "sv_b",
                               "so_b", "sl_b", "sl_h"])
def _fwd_kernel(Q, K, V, O, LSE, SLOPES, SINK_PTR, CU_Q, CU_K, KD, VD,
                sq_b, sq_m, sq_h, sq_d,
                sk_b, sk_n, sk_h, sk_d,
                sv_b, sv_n, sv_h, sv_d,
                so_b, so_m, so_h, so_d,
                sl_b, sl_h, sl_m,
                sa_b, sa_h,
                seqlen_q, seqlen_k, qk_scale, cap2, left, right,
                GROUP: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                VARLEN: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, SINKS: tl.constexpr,
                STORE_LSE: tl.constexpr, REVERSE: tl.constexpr, PREC: tl.constexpr,
                POS_SCALE: tl.constexpr, KNAT: tl.constexpr, TMA: tl.constexpr, PIPE: tl.constexpr,
                HOSTDESC: tl.constexpr):
    FAST: tl.constexpr = (not SOFTCAP) and (not ALIBI) and POS_SCALE
    if REVERSE:
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
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
        k_base = K + k_start.to(tl.int64) * sk_n + kvh * sk_h
        v_base = V + k_start.to(tl.int64) * sv_n + kvh * sv_h
        o_base = O + q_start.to(tl.int64) * so_m + h * so_h
        l_base = LSE + q_start.to(tl.int64) * sl_m + h * sl_h
    else:
        Sq = seqlen_q
        Sk = seqlen_k
        bb = b.to(tl.int64)
        q_base = Q + bb * sq_b + h * sq_h
        k_base = K + bb * sk_b + kvh * sk_h
        v_base = V + bb * sv_b + kvh * sv_h
        o_base = O + bb * so_b + h * so_h
        l_base = LSE + bb * sl_b + h * sl_h

    off = Sk - Sq
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    mmask = offs_m < Sq
    EVEN_D: tl.constexpr = D == BLOCK_D
    EVEN_DV: tl.constexpr = DV == BLOCK_DV
    dmask_q = offs_d[None, :] < D
    if KNAT:
        dmask_k = offs_d[None, :] < D
    else:
        dmask_k = offs_d[:, None] < D
    dmask_v = offs_dv[None, :] < DV

    # ---- key range for this query tile (all scalars, no host sync) -------------
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
    hi = tl.where(m0 < Sq, hi, lo)
    hi = tl.maximum(hi, lo)
    if HAS_LEFT:
        flo = tl.maximum(m_last + off - left, lo)
        flo = ((flo + BLOCK_N - 1) // BLOCK_N) * BLOCK_N
        flo = tl.minimum(flo, hi)
    else:
        flo = lo
    fh = (fh // BLOCK_N) * BLOCK_N
    fh = tl.minimum(tl.maximum(fh, flo), hi)

    # ---- load Q --------------------------------------------------------------
    q_ptrs = q_base + offs_m[:, None].to(tl.int64) * sq_m + offs_d[None, :] * sq_d
    if EVEN_D:
        q = tl.load(q_ptrs, mask=mmask[:, None], other=0.0)
    else:
        q = tl.load(q_ptrs, mask=mmask[:, None] & dmask_q, other=0.0)
    krow = Sk * 0
    kcol = Sk * 0
    vcol = Sk * 0
    if TMA and HOSTDESC:
        # host-built descriptors over the (rows, heads * D) view of K/V: no per-program
        # descriptor creation. Tiles of the masked loops may run into the next sequence's
        # rows; those keys are masked and their V rows zeroed in _tile.
        K_ptrs = KD
        V_ptrs = VD
        if VARLEN:
            krow = k_start
        else:
            krow = b * seqlen_k
        kcol = kvh * sk_h
        vcol = kvh * sv_h
    elif TMA:
        # device-side TMA descriptors bounded by this sequence (zero fill past its end);
        # an empty sequence gets a 1-row shape but its key loop is empty (hi == lo).
        Sk1 = tl.maximum(Sk, 1)
        K_ptrs = tl.make_tensor_descriptor(k_base, shape=[Sk1, D], strides=[sk_n, 1],
                                           block_shape=[BLOCK_N, BLOCK_D])
        V_ptrs = tl.make_tensor_descriptor(v_base, shape=[Sk1, DV], strides=[sv_n, 1],
                                           block_shape=[BLOCK_N, BLOCK_DV])
    else:
        if KNAT:
            K_ptrs = k_base + offs_n0[:, None] * sk_n + offs_d[None, :] * sk_d
        else:
            K_ptrs = k_base + offs_n0[None, :] * sk_n + offs_d[:, None] * sk_d
        V_ptrs = v_base + offs_n0[:, None] * sv_n + offs_dv[None, :] * sv_d

    if ALIBI:
        slope2 = tl.load(SLOPES + b * sa_b + h * sa_h).to(tl.float32) * 1.4426950408889634
    else:
        slope2 = 0.0
    if SINKS:
        sink2 = tl.load(SINK_PTR + h).to(tl.float32) * 1.4426950408889634
        m_i = tl.zeros([BLOCK_M], dtype=tl.float32) + sink2
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32) + 1.0
    else:
        m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)

    acc, l_i, m_i = _tile(acc, l_i, m_i, q, K_ptrs, V_ptrs, lo, flo, offs_m, offs_n0, off, Sk,
                          sk_n, sv_n, qk_scale, cap2, slope2, left, right, dmask_k, dmask_v,
                          BLOCK_N, True, SOFTCAP, ALIBI, HAS_LEFT, HAS_RIGHT, EVEN_D, EVEN_DV,
                          PREC, TMA, FAST, KNAT, krow, kcol, vcol, HOSTDESC)
    if TMA and PIPE:
        acc, l_i, m_i = _tile_pipelined(acc, l_i, m_i, q, K_ptrs, V_ptrs, flo, fh, offs_m,
                                        offs_n0, off, qk_scale, cap2, slope2, BLOCK_N, SOFTCAP,
                                        ALIBI, PREC, FAST)
    else:
        acc, l_i, m_i = _tile(acc, l_i, m_i, q, K_ptrs, V_ptrs, flo, fh, offs_m, offs_n0, off, Sk,
                              sk_n, sv_n, qk_scale, cap2, slope2, left, right, dmask_k, dmask_v,
                              BLOCK_N, False, SOFTCAP, ALIBI, HAS_LEFT, HAS_RIGHT, EVEN_D, EVEN_DV,
                              PREC, TMA, FAST, KNAT, krow, kcol, vcol, HOSTDESC)
    acc, l_i, m_i = _tile(acc, l_i, m_i, q, K_ptrs, V_ptrs, fh, hi, offs_m, offs_n0, off, Sk,
                          sk_n, sv_n, qk_scale, cap2, slope2, left, right, dmask_k, dmask_v,
                          BLOCK_N, True, SOFTCAP, ALIBI, HAS_LEFT, HAS_RIGHT, EVEN_D, EVEN_DV,
                          PREC, TMA, FAST, KNAT, krow, kcol, vcol, HOSTDESC)

    # ---- epilogue ------------------------------------------------------------
    has = l_i > 0.0
    inv = tl.where(has, 1.0 / tl.where(has, l_i, 1.0), 0.0)
    out = acc * inv[:, None]
    o_ptrs = o_base + offs_m[:, None].to(tl.int64) * so_m + offs_dv[None, :] * so_d
    if EVEN_DV:
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=mmask[:, None])
    else:
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=mmask[:, None] & dmask_v)
    if STORE_LSE:
        lse = tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) * 0.6931471805599453,
                       float("-inf"))
        tl.store(l_base + offs_m * sl_m, lse, mask=mmask)


# ------------------------------------------------------------------------------
# configuration table (no autotuning: graph-capture safe, no recompiles)
# ------------------------------------------------------------------------------

def prefill_config(head_dim: int, head_dim_v: int, dtype: torch.dtype, causal: bool,
                   device: torch.device, tma: bool = True,
                   max_seqlen_k: int | None = None) -> dict:
    """Static launch configuration: BLOCK_M, BLOCK_N, num_warps, num_stages.

    sm90 entries were picked by benchmarks/triton_sweep.py and
    benchmarks/prefill_short_sweep.py (git history, 3df1865) on an H200 with Triton 3.6 (docs/PERF.md); other archs
    use conservative FA2 settings (not measured here). On sm90 with TMA the table also keys
    on ``max_seqlen_k`` in at most three buckets per (head dim, causal): short key ranges and
    causal masks (few key tiles per program) take 64-row, 4-warp tiles (two programs per SM,
    so one program's prologue/epilogue overlaps another's main loop); long non-causal ones
    the large tiles. Crossing a bucket compiles one more variant, once per process.
    """
    bd = max(16, next_pow2(max(head_dim, head_dim_v)))
    if interpret_mode() or device.type != "cuda":
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)
    major, minor = capability(device)
    if dtype == torch.float32:
        if bd <= 64:
            return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)
        if bd <= 128:
            return dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=2)
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)
    if major >= 9 and tma:
        sk = int(max_seqlen_k) if max_seqlen_k is not None else 1 << 30
        if bd <= 64:
            if (causal and sk <= 6144) or sk <= 768:
                return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)
            if not causal and sk <= 3072:
                return dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)
            return dict(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=3)
        if bd <= 128:
            if (causal and sk <= 6144) or sk <= 1536:
                return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)
            return dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3)
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)
    if major >= 9:  # pointer loads (strides not TMA-compatible)
        if bd <= 64:
            return dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)
        if bd <= 128:
            return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)
    if major == 8 and minor == 0:
        if bd <= 64:
            return dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)
        if bd <= 128:
            return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)
        return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)
    # sm75 / sm86 / sm89: ~100 KB shared memory per SM
    if bd <= 64:
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=2)
    if bd <= 128:
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)
    return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=1)




def _tma_ok(q, k, v) -> bool:
    """TMA descriptors need unit last stride and 16-byte aligned rows / bases."""
    if q.device.type != "cuda" or q.dtype not in _TMA_DTYPES:
        return False
    if not _tma_arch(q.device.index, interpret_mode()):
        return False
    if (q.data_ptr() | k.data_ptr() | v.data_ptr()) & 15:
        return False
    for t in (q, k, v):
        st = t.stride()
        # rank 3 or 4: st[0], st[1], st[-2] are all the non-last strides; OR keeps low bits
        if st[-1] != 1 or (st[0] | st[1] | st[-2]) & 7:
            return False
    return True


_TMA_DTYPES = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def _tma_arch(index, interp) -> bool:
    if interp or capability(torch.device("cuda", index))[0] < 9:
        return False
    # Triton < 3.4 has no tensor descriptors
    return hasattr(tl, "make_tensor_descriptor") and hasattr(triton, "set_allocator")


def _host_descriptors(k, v, varlen, sk, sv, cfg, want):
    """Host-side TMA descriptors over the (rows, heads * D) view of K and V, or (None, None).

    Rows are (batch, key) pairs (dense; needs batch stride == Sk * row stride) or tokens
    (varlen). D and Dv must be powers of two so that a [BLOCK_N, D] box never reads into the
    next head's columns. The kernel offsets rows by the sequence start and columns by the kv
    head; its masked loops zero V rows past the sequence end.
    """
    if not want or TensorDescriptor is None:  # None: Triton < 3.4
        return None, None
    D, Dv = k.shape[-1], v.shape[-1]
    if D != max(16, next_pow2(D)) or Dv != max(16, next_pow2(Dv)):
        return None, None
    if varlen:
        rows = k.shape[0]
    else:
        B, Sk = k.shape[0], k.shape[1]
        if B > 1 and (sk[0] != Sk * sk[1] or sv[0] != Sk * sv[1]):
            return None, None
        rows = B * Sk
    hkv = k.shape[-2]
    if rows == 0 or hkv == 0:
        return None, None
    # heads side by side inside a row (the usual (..., H, D) layout)
    if sk[2] < D or sv[2] < Dv or sk[1] < (hkv - 1) * sk[2] + D or sv[1] < (hkv - 1) * sv[2] + Dv:
        return None, None
    bn = cfg["BLOCK_N"]
    kshape = [rows, (hkv - 1) * sk[2] + D]
    vshape = [rows, (hkv - 1) * sv[2] + Dv]
    # A validated prototype per (columns, row stride, box, dtype); later calls clone it with
    # the new base and row count. TensorDescriptor.__post_init__ only asserts (base 16-byte
    # aligned -- _tma_ok checked it --, strides and box -- the prototype's --, shape > 0 --
    # rows > 0 above), so a clone is exactly what the constructor would build, at a fraction
    # of its cost.
    pk = (kshape[1], sk[1], bn, D, k.dtype)
    pv = (vshape[1], sv[1], bn, Dv, v.dtype)
    kd = _desc_like(TensorDescriptor, pk, k, kshape, [sk[1], 1], [bn, D])
    vd = _desc_like(TensorDescriptor, pv, v, vshape, [sv[1], 1], [bn, Dv])
    return kd, vd


_DESC_PROTOS: dict = {}


def _desc_like(cls, key, base, shape, strides, block):
    proto = _DESC_PROTOS.get(key)
    if proto is None or type(proto) is not cls:
        d = cls(base, shape, strides, block)
        if hasattr(d, "__dict__") and not hasattr(cls, "__slots__"):
            if len(_DESC_PROTOS) > 64:
                _DESC_PROTOS.clear()
            # the prototype must not keep its tensor alive
            _DESC_PROTOS[key] = p = cls.__new__(cls)
            p.__dict__.update(d.__dict__)
            p.base = None
        return d
    d = cls.__new__(cls)
    d.__dict__.update(proto.__dict__)
    d.base = base
    d.shape = shape
    return d


_FWD = LaunchCache(_fwd_kernel, pointers=("Q", "K", "V", "O", "LSE", "SLOPES", "SINK_PTR", "CU_Q",
                                          "CU_K"),
                   floats=("qk_scale", "cap2"),
                   # KD/VD are K/V themselves (HOSTDESC=False) or host descriptors over them,
                   # which Triton specialises on K/V's dtype and the box [BLOCK_N, D or DV] --
                   # all in the key already
                   derived=("KD", "VD"))


@functools.lru_cache(maxsize=4096)
def _cached_config(D, Dv, dtype, masked, device, tma, sk, interp):
    # prefill_config is pure in these arguments (interp: TRITON_INTERPRET, which it reads)
    return prefill_config(D, Dv, dtype, masked, device, tma=tma, max_seqlen_k=sk)


def flash_attention_forward(q, k, v, out, lse=None, *, scale, causal=False, window=None,
                            softcap=None, alibi_slopes=None, sinks=None,
                            cu_seqlens_q=None, cu_seqlens_k=None,
                            max_seqlen_q=None, max_seqlen_k=None, config=None):
    """Attention forward into ``out`` (and ``lse``).

    dense:  q (B,Sq,Hq,D), k (B,Sk,Hkv,D), v (B,Sk,Hkv,Dv), out (B,Sq,Hq,Dv), lse (B,Hq,Sq)
    varlen: q (Tq,Hq,D), k (Tk,Hkv,D), v (Tk,Hkv,Dv), out (Tq,Hq,Dv), lse (Hq,Tq),
            cu_seqlens_q/k int32 (B+1,), max_seqlen_q/k host ints.
    Any strides. Inputs are assumed validated by the caller.
    """
    dev = q.device
    if dev.type == "cuda" and dev.index != current_device():
        with torch.cuda.device(dev):
            return _flash_attention_forward(q, k, v, out, lse, scale, causal, window, softcap,
                                            alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k,
                                            max_seqlen_q, max_seqlen_k, config)
    return _flash_attention_forward(q, k, v, out, lse, scale, causal, window, softcap,
                                    alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k,
                                    max_seqlen_q, max_seqlen_k, config)


# Per-signature memo of the dense launch (issue 7 section 2): key -> (grid, options, the
# argument list's constant tail, its launch-plan key, K/V descriptor prototypes). Everything the
# full path below derives -- config, TMA choice, strides, constants, grid, Triton's key -- is a
# function of the key: shapes, strides, dtypes and device of every tensor, the options, the
# interpreter flag, and that every pointer is 16-byte aligned (calls with a misaligned pointer
# are not remembered). Per call only the tensors (and descriptors' base) are new. Varlen calls
# are not remembered: their token counts and max_seqlen change every call.
_SIG: dict = {}
_SIG_LIMIT = 1024
_MEMO_ON = True  # tests compare the remembered launch with the full path


def _flash_attention_forward(q, k, v, out, lse, scale, causal, window, softcap, alibi_slopes,
                             sinks, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                             config):
    """Body of the public function (runs with q's device current)."""
    memo = _MEMO_ON and cu_seqlens_q is None and config is None and "launch" not in _FWD.__dict__
    if memo:
        al = q.data_ptr() | k.data_ptr() | v.data_ptr() | out.data_ptr()
        if lse is not None:
            al |= lse.data_ptr()
        if alibi_slopes is not None:
            al |= alibi_slopes.data_ptr()
        if sinks is not None:
            al |= sinks.data_ptr()
        if al & 15:
            memo = False
        else:
            key = (q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), out.shape,
                   out.stride(), q.dtype, k.dtype, v.dtype, out.dtype, q.device,
                   None if lse is None else (lse.shape, lse.stride(), lse.dtype),
                   None if alibi_slopes is None else (alibi_slopes.shape, alibi_slopes.stride(),
                                                      alibi_slopes.dtype),
                   None if sinks is None else (sinks.shape, sinks.stride(), sinks.dtype),
                   scale, causal, window if type(window) is not list else tuple(window), softcap,
                   interpret_mode())
            e = _SIG.get(key)
            # an entry made while plans were off (tests switch them) has no plan key: redo it
            if e is not None and (e[3] is not None or not _FWD.enabled):
                grid, options, tail, ltail, kp, vp = e
                if kp is not None:
                    kd = _TD_NEW(TensorDescriptor)
                    kd.__dict__.update(kp)
                    kd.base = k
                    vd = _TD_NEW(TensorDescriptor)
                    vd.__dict__.update(vp)
                    vd.base = v
                else:
                    kd, vd = k, v
                dummy = out
                args = (q, k, v, out, lse if lse is not None else dummy,
                        alibi_slopes if alibi_slopes is not None else dummy,
                        sinks if sinks is not None else dummy, q, q, kd, vd) + tail
                if _FWD.verify:
                    check_remembered(_FWD, (grid, args, options), _prepare_launch(
                        q, k, v, out, lse, scale, causal, window, softcap, alibi_slopes, sinks,
                        None, None, None, None, None))
                _FWD.launch_keyed(ltail, grid, args, options,
                                  q.device.index if q.device.type == "cuda" else -1)
                return out
    prepared = _prepare_launch(q, k, v, out, lse, scale, causal, window, softcap, alibi_slopes,
                               sinks, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                               config)
    if prepared is None:
        return out
    grid, args, options = prepared
    device = q.device.index if q.device.type == "cuda" else -1
    _FWD.launch(grid, args, options, device)
    if memo:
        _remember(key, grid, args, options)
    return out


_TD_NEW = object.__new__


def _remember(key, grid, args, options):
    kd, vd = args[9], args[10]
    kp = vp = None
    if kd is not args[1]:  # host descriptors: keep their fields, not their tensors
        if type(kd) is not TensorDescriptor or not hasattr(kd, "__dict__") \
                or hasattr(TensorDescriptor, "__slots__") or TensorDescriptor.__new__ is not object.__new__:
            return
        kp, vp = dict(kd.__dict__), dict(vd.__dict__)
        kp["base"] = vp["base"] = None
    ltail = _FWD.key_tail(args)
    if ltail is None and _FWD.enabled:
        return
    if len(_SIG) >= _SIG_LIMIT:
        _SIG.clear()
    _SIG[key] = (grid, options, args[11:], ltail, kp, vp)


def _prepare_launch(q, k, v, out, lse, scale, causal, window, softcap, alibi_slopes, sinks,
                    cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, config):
    """The full derivation of one launch: (grid, every kernel argument, options), or None when
    there is nothing to compute."""
    varlen = cu_seqlens_q is not None
    if varlen:
        B = cu_seqlens_q.shape[0] - 1
        _, Hq, D = q.shape
        _, Hkv, _ = k.shape
        Dv = v.shape[2]
        sq = (0, *q.stride())
        sk = (0, *k.stride())
        sv = (0, *v.stride())
        so = (0, *out.stride())
        sl = (0, *lse.stride()) if lse is not None else (0, 0, 0)
        seqlen_q, seqlen_k = 0, 0
        grid_m = max(int(max_seqlen_q), 0)
        cu_q, cu_k = cu_seqlens_q, cu_seqlens_k
        sk_cfg = max_seqlen_k
    else:
        B, Sq, Hq, D = q.shape
        _, Sk, Hkv, _ = k.shape
        Dv = v.shape[3]
        sq, sk, sv, so = q.stride(), k.stride(), v.stride(), out.stride()
        sl = lse.stride() if lse is not None else (0, 0, 0)
        seqlen_q, seqlen_k = Sq, Sk
        grid_m = Sq
        cu_q = cu_k = q  # unused placeholders
        sk_cfg = Sk
    if B == 0 or grid_m == 0 or Hq == 0:
        return None
    tma = (config is None or config.get("TMA", True)) and _tma_ok(q, k, v)
    has_left, has_right, left, right = window_bounds(causal, window)
    # masked key ranges (causal / window) behave like short ones: few tiles per program
    masked = bool(has_left or has_right)
    if config:
        cfg = prefill_config(D, Dv, q.dtype, masked, q.device, tma=tma, max_seqlen_k=sk_cfg)
        cfg.update(config)
    else:
        cfg = _cached_config(D, Dv, q.dtype, masked, q.device, tma,
                             None if sk_cfg is None else int(sk_cfg), interpret_mode())
    qk_scale, cap2, has_cap = logit_constants(scale, softcap)
    if alibi_slopes is not None:
        sa = (alibi_slopes.stride(0), alibi_slopes.stride(1)) if alibi_slopes.dim() == 2 \
            else (0, alibi_slopes.stride(0))
    else:
        sa = (0, 0)
    BM = cfg["BLOCK_M"]
    BN = cfg["BLOCK_N"]
    pipe = bool(cfg.get("PIPE", False))
    kd, vd = _host_descriptors(k, v, varlen, sk, sv, cfg, tma and not pipe and
                               cfg.get("HOSTDESC", True))
    hostdesc = kd is not None
    if tma and not hostdesc:
        ensure_allocator()
    grid = (cdiv(grid_m, BM), Hq, B)
    BD = max(16, next_pow2(D))
    # pointer loads pad a value tile narrower than the query tile (a Triton sm90 bug, see
    # value_tile_width); config={"PAD_DV": False} is the unpadded kernel, kept to reproduce it
    BDV = value_tile_width(D, Dv, tma, cfg.get("PAD_DV", True))
    # every parameter of _fwd_kernel, positionally (the order of its signature)
    args = (
        q, k, v, out, lse if lse is not None else out,
        alibi_slopes if alibi_slopes is not None else out,
        sinks if sinks is not None else out, cu_q, cu_k,
        kd if hostdesc else k, vd if hostdesc else v,
        *sq, *sk, *sv, *so, *sl, *sa,
        seqlen_q, seqlen_k, qk_scale, cap2, left, right,
        Hq // Hkv, D, Dv, BM, BN, BD, BDV,
        varlen, has_left, has_right, has_cap, alibi_slopes is not None, sinks is not None,
        lse is not None, bool(has_right), dot_precision(q.dtype), bool(qk_scale > 0),
        bool(cfg.get("KNAT", False)), tma, pipe, hostdesc,
    )
    options = (("num_warps", cfg["num_warps"]), ("num_stages", cfg["num_stages"]))
    if cfg.get("maxnreg"):
        options += (("maxnreg", cfg["maxnreg"]),)
    return grid, args, options
