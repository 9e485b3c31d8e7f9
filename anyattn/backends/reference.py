"""Pure-PyTorch reference: fp32 math, every op and feature, any device.

It is the ground truth the other backends are tested against, and the backend of last resort.
It materialises the full (B, H, Sq, Sk) score matrix, so it is slow and memory-hungry by design.
"""

from __future__ import annotations

import torch

from . import _padded
from .base import Backend, HeadDims, caps

ALL_FEATURES = ("causal", "window", "softcap", "alibi", "sinks", "lse", "gqa", "out", "grad")


def attention_padded(q, k, v, q_lens, k_lens, *, causal, scale, window, softcap, alibi_slopes, sinks):
    """(B, Sq, Hq, D) x (B, Sk, Hkv, D) -> out (B, Sq, Hq, Dv) in q.dtype, lse (B, Hq, Sq) fp32."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    b, sq, hq, _ = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    qf = q.to(compute).transpose(1, 2)
    kf = k.to(compute).transpose(1, 2).repeat_interleave(group, dim=1)
    vf = v.to(compute).transpose(1, 2).repeat_interleave(group, dim=1)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    rel = _padded.relative_position(sq, sk, q_lens, k_lens, q.device)
    if alibi_slopes is not None:
        s = s + _padded.alibi_bias(rel, alibi_slopes).to(compute)
    keep = _padded.visible(rel, sq, sk, q_lens, k_lens, causal=causal, window=window).unsqueeze(1)
    s = s.masked_fill(~keep, float("-inf"))
    if sinks is not None:
        sink_col = sinks.to(compute).view(1, hq, 1, 1).expand(b, hq, sq, 1)
        lse = torch.logsumexp(torch.cat([s, sink_col], dim=-1), dim=-1)
    else:
        lse = torch.logsumexp(s, dim=-1)
    # A row with no visible key has lse = -inf; its probabilities are 0, not NaN.
    p = torch.exp(s - lse.unsqueeze(-1).masked_fill(torch.isinf(lse).unsqueeze(-1), 0.0))
    out = torch.matmul(p, vf).transpose(1, 2).to(q.dtype)
    lse = lse if compute == torch.float64 else lse.float()
    return out, lse


class ReferenceBackend(Backend):
    name = "reference"
    aliases = ("ref", "torch_naive", "naive", "pytorch", "eager")
    description = "pure PyTorch, fp32 math; the ground truth and last resort (slow, O(S^2) memory)"
    caps = caps(
        devices={"cpu", "cuda", "mps", "xpu"},
        dtypes={torch.float16, torch.bfloat16, torch.float32, torch.float64},
        ops={"attention", "varlen", "paged"},
        features=ALL_FEATURES,
        head_dims=HeadDims(min=1, max=1 << 16),
    )

    def attention(self, q, k, v, *, causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        o, lse = attention_padded(q, k, v, None, None, causal=causal, scale=scale, window=window,
                                  softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks)
        return _finish(o, lse, out, return_lse)

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal, scale,
               window, softcap, alibi_slopes, sinks, return_lse, out):
        p = _padded.from_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
        return self._run_padded(p, causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out)

    def paged(self, q, k_cache, v_cache, block_table, seqused_k, *, cu_seqlens_q, max_seqlen_q, max_seqlen_k,
              causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        p = _padded.from_paged(q, k_cache, v_cache, block_table, seqused_k, cu_seqlens_q, max_seqlen_q,
                               max_seqlen_k)
        return self._run_padded(p, causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out)

    def _run_padded(self, p, causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        o, lse = attention_padded(p.q, p.k, p.v, p.q_lens, p.k_lens, causal=causal, scale=scale,
                                  window=window, softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks)
        o, lse = _padded.to_packed(p, o, lse)
        return _finish(o, lse, out, return_lse)


def _finish(o, lse, out, return_lse):
    if out is not None:
        out.copy_(o)
        o = out
    return o, (lse if return_lse else None)
