"""Independent float64 attention formula for the kernel tests (no anyattn imports)."""

from __future__ import annotations

import math

import torch


def ref_one(q, k, v, *, scale, causal=False, window=None, softcap=None, slopes=None,
            sinks=None):
    """One sequence. q (Sq,Hq,D), k (Sk,Hkv,D), v (Sk,Hkv,Dv); slopes/sinks (Hq,) or None.

    Returns out (Sq,Hq,Dv) float64, lse (Hq,Sq) float64.
    """
    q, k, v = q.double(), k.double(), v.double()
    Sq, Hq, _ = q.shape
    Sk, Hkv, Dv = v.shape
    g = Hq // Hkv
    k = k.repeat_interleave(g, dim=1)
    v = v.repeat_interleave(g, dim=1)
    s = torch.einsum("qhd,khd->hqk", q, k) * scale
    if softcap is not None and softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(Sq, dtype=torch.float64)[:, None]
    j = torch.arange(Sk, dtype=torch.float64)[None, :]
    off = Sk - Sq
    if slopes is not None:
        s = s - slopes.double()[:, None, None] * (i + off - j).abs()[None]
    keep = torch.ones(Sq, Sk, dtype=torch.bool)
    left, right = (-1, -1) if window is None else window
    if causal:
        keep &= j <= i + off
    if left >= 0:
        keep &= j >= i + off - left
    if right >= 0:
        keep &= j <= i + off + right
    s = s.masked_fill(~keep[None], -math.inf)
    if Sk == 0:
        m = torch.full((Hq, Sq), -math.inf, dtype=torch.float64)
    else:
        m = s.amax(dim=-1)  # (Hq,Sq)
    if sinks is not None:
        m = torch.maximum(m, sinks.double()[:, None])
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m_safe[..., None])
    den = p.sum(-1)
    if sinks is not None:
        den = den + torch.exp(sinks.double()[:, None] - m_safe)
    out = torch.einsum("hqk,khd->qhd", p, v)
    den_safe = torch.where(den > 0, den, torch.ones_like(den))
    out = torch.where((den > 0).T[..., None], out / den_safe.T[..., None], torch.zeros_like(out))
    lse = torch.where(den > 0, m_safe + torch.log(den_safe), torch.full_like(den, -math.inf))
    return out, lse


def ref_dense(q, k, v, *, slopes=None, **kw):
    """q (B,Sq,Hq,D) ...; slopes (Hq,) or (B,Hq). Returns out (B,Sq,Hq,Dv), lse (B,Hq,Sq)."""
    outs, lses = [], []
    for b in range(q.shape[0]):
        sl = None if slopes is None else (slopes[b] if slopes.dim() == 2 else slopes)
        o, l = ref_one(q[b], k[b], v[b], slopes=sl, **kw)
        outs.append(o)
        lses.append(l)
    return torch.stack(outs), torch.stack(lses)


def ref_varlen(q, k, v, cu_q, cu_k, *, slopes=None, **kw):
    """Packed q (Tq,Hq,D). Returns out (Tq,Hq,Dv), lse (Hq,Tq)."""
    Tq, Hq = q.shape[0], q.shape[1]
    out = torch.zeros(Tq, Hq, v.shape[-1], dtype=torch.float64)
    lse = torch.full((Hq, Tq), -math.inf, dtype=torch.float64)
    for b in range(cu_q.numel() - 1):
        qs, qe = int(cu_q[b]), int(cu_q[b + 1])
        ks, ke = int(cu_k[b]), int(cu_k[b + 1])
        sl = None if slopes is None else (slopes[b] if slopes.dim() == 2 else slopes)
        o, l = ref_one(q[qs:qe], k[ks:ke], v[ks:ke], slopes=sl, **kw)
        out[qs:qe] = o
        lse[:, qs:qe] = l
    return out, lse


def gather_paged(cache, block_table_row, n):
    bs = cache.shape[1]
    idx = torch.arange(n)
    return cache[block_table_row[idx // bs].long(), idx % bs]


def ref_paged(q, k_cache, v_cache, block_table, seqused_k, cu_q=None, *, slopes=None, **kw):
    """q (T,Hq,D). Returns out (T,Hq,Dv), lse (Hq,T)."""
    B = block_table.shape[0]
    if cu_q is None:
        cu_q = torch.arange(B + 1, dtype=torch.int32)
    T, Hq = q.shape[0], q.shape[1]
    out = torch.zeros(T, Hq, v_cache.shape[-1], dtype=torch.float64)
    lse = torch.full((Hq, T), -math.inf, dtype=torch.float64)
    for b in range(B):
        qs, qe = int(cu_q[b]), int(cu_q[b + 1])
        n = int(seqused_k[b])
        k = gather_paged(k_cache, block_table[b], n)
        v = gather_paged(v_cache, block_table[b], n)
        sl = None if slopes is None else (slopes[b] if slopes.dim() == 2 else slopes)
        o, l = ref_one(q[qs:qe], k, v, slopes=sl, **kw)
        out[qs:qe] = o
        lse[:, qs:qe] = l
    return out, lse
