"""An independent float64 attention formula, one query row at a time, for the tests.

Deliberately shares no code with anyattn: it is what the reference backend is checked against.
"""

import math

import torch


def attend_one_sequence(q, k, v, *, causal=False, scale=None, window=(-1, -1), softcap=0.0, slopes=None,
                        sinks=None):
    """q (Sq, Hq, D), k (Sk, Hkv, D), v (Sk, Hkv, Dv) -> out (Sq, Hq, Dv) f64, lse (Hq, Sq) f64."""
    q, k, v = q.double().cpu(), k.double().cpu(), v.double().cpu()
    sq, hq, d = q.shape
    sk, hkv, dv = v.shape
    scale = 1 / math.sqrt(d) if scale is None else scale
    group = hq // hkv
    out = torch.zeros(sq, hq, dv, dtype=torch.float64)
    lse = torch.full((hq, sq), -math.inf, dtype=torch.float64)
    left, right = window
    for h in range(hq):
        kh = h // group
        for i in range(sq):
            pos = i + sk - sq  # the query's position among the keys (bottom-right aligned)
            js, logits = [], []
            for j in range(sk):
                if causal and j > pos:
                    continue
                if left >= 0 and j < pos - left:
                    continue
                if right >= 0 and j > pos + right:
                    continue
                s = scale * float(q[i, h] @ k[j, kh])
                if softcap > 0:
                    s = softcap * math.tanh(s / softcap)
                if slopes is not None:
                    s -= float(slopes[h]) * abs(pos - j)
                js.append(j)
                logits.append(s)
            terms = logits + ([float(sinks[h])] if sinks is not None else [])
            if not terms:
                continue
            m = max(terms)
            z = sum(math.exp(t - m) for t in terms)
            row_lse = m + math.log(z)
            lse[h, i] = row_lse
            for j, s in zip(js, logits):
                out[i, h] += math.exp(s - row_lse) * v[j, kh]
    return out, lse


def attend_one_sequence_vectorized(q, k, v, *, causal=False, scale=None, window=(-1, -1), softcap=0.0,
                                   slopes=None, sinks=None):
    """The same formula with float64 tensor ops instead of Python loops, for GPU-sized fuzzing.

    Shares nothing with anyattn either; tests/test_fuzz.py checks it against the loop version."""
    q, k, v = q.double().cpu(), k.double().cpu(), v.double().cpu()
    sq, hq, d = q.shape
    sk, hkv, dv = v.shape
    scale = 1 / math.sqrt(d) if scale is None else scale
    group = hq // hkv if hkv else 1
    kk, vv = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    s = torch.einsum("ihd,jhd->hij", q, kk) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    pos = torch.arange(sq).view(sq, 1) + sk - sq
    j = torch.arange(sk).view(1, sk)
    if slopes is not None:
        s = s - slopes.double().cpu().view(hq, 1, 1) * (pos - j).abs()
    keep = torch.ones(sq, sk, dtype=torch.bool)
    left, right = window
    if causal:
        keep &= j <= pos
    if left >= 0:
        keep &= j >= pos - left
    if right >= 0:
        keep &= j <= pos + right
    s = s.masked_fill(~keep, -math.inf)
    terms = s if sinks is None else torch.cat([s, sinks.double().cpu().view(hq, 1, 1).expand(hq, sq, 1)], -1)
    lse = torch.logsumexp(terms, -1) if terms.shape[-1] else torch.full((hq, sq), -math.inf, dtype=torch.float64)
    p = torch.exp(s - lse.unsqueeze(-1))
    p = torch.nan_to_num(p, nan=0.0)  # rows with lse = -inf see nothing
    out = torch.einsum("hij,jhd->ihd", p, vv)
    return out, lse


def dense(q, k, v, slopes=None, one=None, **kw):
    one = one or attend_one_sequence
    outs, lses = [], []
    for b in range(q.shape[0]):
        sl = None if slopes is None else (slopes if slopes.dim() == 1 else slopes[b])
        o, l = one(q[b], k[b], v[b], slopes=sl, **kw)
        outs.append(o)
        lses.append(l)
    return torch.stack(outs), torch.stack(lses)


def varlen(q, k, v, cu_q, cu_k, slopes=None, one=None, **kw):
    one = one or attend_one_sequence
    cq, ck = cu_q.tolist(), cu_k.tolist()
    out = torch.zeros(q.shape[0], q.shape[1], v.shape[-1], dtype=torch.float64)
    lse = torch.full((q.shape[1], q.shape[0]), -math.inf, dtype=torch.float64)
    for b in range(len(cq) - 1):
        if cq[b + 1] == cq[b]:
            continue
        sl = None if slopes is None else (slopes if slopes.dim() == 1 else slopes[b])
        o, l = one(q[cq[b]:cq[b + 1]], k[ck[b]:ck[b + 1]], v[ck[b]:ck[b + 1]], slopes=sl, **kw)
        out[cq[b]:cq[b + 1]] = o
        lse[:, cq[b]:cq[b + 1]] = l
    return out, lse


def paged(q, k_cache, v_cache, block_table, seqused_k, cu_q=None, slopes=None, one=None, **kw):
    one = one or attend_one_sequence
    bs = k_cache.shape[1]
    batch = block_table.shape[0]
    cq = list(range(batch + 1)) if cu_q is None else cu_q.tolist()
    out = torch.zeros(q.shape[0], q.shape[1], v_cache.shape[-1], dtype=torch.float64)
    lse = torch.full((q.shape[1], q.shape[0]), -math.inf, dtype=torch.float64)
    for b in range(batch):
        n = int(seqused_k[b])
        if cq[b + 1] == cq[b]:
            continue
        rows = [(int(block_table[b, j // bs]), j % bs) for j in range(n)]
        kk = torch.stack([k_cache[blk, r] for blk, r in rows]) if rows else k_cache[:0, 0]
        vv = torch.stack([v_cache[blk, r] for blk, r in rows]) if rows else v_cache[:0, 0]
        sl = None if slopes is None else (slopes if slopes.dim() == 1 else slopes[b])
        o, l = one(q[cq[b]:cq[b + 1]], kk, vv, slopes=sl, **kw)
        out[cq[b]:cq[b + 1]] = o
        lse[:, cq[b]:cq[b + 1]] = l
    return out, lse


def dense_autograd(q, k, v, *, causal=False, window=(-1, -1), sinks=None, scale=None):
    """Dense attention as differentiable float64 tensor algebra (for gradient checks).

    Written independently of anyattn's backends: an explicit (Sq, Sk) visibility matrix with
    lower-right causal alignment, a sink column in the softmax, and rows that see nothing give 0.
    Returns (out (B, Sq, Hq, Dv), lse (B, Hq, Sq)).
    """
    q, k, v = q.double(), k.double(), v.double()
    b, sq, hq, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    kk = k.repeat_interleave(hq // hkv, dim=2)
    vv = v.repeat_interleave(hq // hkv, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, kk) * scale
    i = torch.arange(sq).view(-1, 1) + (sk - sq)
    j = torch.arange(sk).view(1, -1)
    seen = torch.ones(sq, sk, dtype=torch.bool)
    if causal:
        seen &= j <= i
    if window[0] >= 0:
        seen &= j >= i - window[0]
    if window[1] >= 0:
        seen &= j <= i + window[1]
    s = s.masked_fill(~seen, float("-inf"))
    if sinks is not None:
        s = torch.cat([s, sinks.double().view(1, hq, 1, 1).expand(b, hq, sq, 1)], dim=-1)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse).unsqueeze(-1))
    p = p[..., :sk]
    return torch.einsum("bhqk,bkhd->bqhd", p, vv), lse
