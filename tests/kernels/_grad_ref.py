"""Independent float64 attention with autograd, for the backward tests (no anyattn imports).

The softmax is a logsumexp over the visible logits plus a sink column, so torch.autograd
gives the gradients of q, k, v, the sinks and (through lse) a loss term on the lse. Runs on
whatever device the inputs are on (the GPU suite uses it on the GPU).
"""

from __future__ import annotations

import math

import torch


def ref_one(q, k, v, *, scale, causal=False, window=(-1, -1), softcap=0.0, slopes=None,
             sinks=None):
    """One sequence, float64, differentiable. q (Sq,Hq,D), k (Sk,Hkv,D), v (Sk,Hkv,Dv)."""
    Sq, Hq, _ = q.shape
    Sk, Hkv, _ = v.shape
    g = Hq // Hkv
    kk, vv = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = torch.einsum("qhd,khd->hqk", q, kk) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    # each query's position among the keys (lower-right alignment)
    pos = torch.arange(Sq, dtype=torch.float64, device=q.device)[:, None] + (Sk - Sq)
    j = torch.arange(Sk, dtype=torch.float64, device=q.device)[None, :]
    if slopes is not None:
        s = s - slopes.double()[:, None, None] * (pos - j).abs()
    keep = torch.ones(Sq, Sk, dtype=torch.bool, device=q.device)
    if causal:
        keep &= j <= pos
    if window[0] >= 0:
        keep &= j >= pos - window[0]
    if window[1] >= 0:
        keep &= j <= pos + window[1]
    s = s.masked_fill(~keep, -math.inf)
    cols = s if sinks is None else torch.cat([s, sinks[:, None, None].expand(Hq, Sq, 1)], -1)
    if cols.shape[-1] == 0:
        lse = torch.full((Hq, Sq), -math.inf, dtype=torch.float64, device=q.device)
    else:
        lse = torch.logsumexp(cols, -1)
    p = torch.exp(s - torch.where(torch.isfinite(lse), lse, 0.0)[..., None])
    return torch.einsum("hqk,khd->qhd", p, vv), lse


def ref_grads(q, k, v, do, dlse, seqs, *, sinks, slopes, **kw):
    """float64 gradients of sum(out*do) + sum(lse*dlse). ``seqs`` yields per-sequence
    (index into q/do rows, index into k/v rows, lse column index, batch index)."""
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    sd = sinks.detach().double().requires_grad_() if sinks is not None else None
    loss = qd.new_zeros(())
    for qi, ki, li, b in seqs:
        sl = None if slopes is None else (slopes[b] if slopes.dim() == 2 else slopes)
        o, lse = ref_one(qd[qi], kd[ki], vd[ki], slopes=sl, sinks=sd, **kw)
        loss = loss + (o * do[qi].double()).sum()
        if dlse is not None:
            loss = loss + (torch.where(torch.isfinite(lse), lse, 0.0) * dlse[li].double()).sum()
    loss.backward()
    return qd.grad, kd.grad, vd.grad, (sd.grad if sd is not None else None)
