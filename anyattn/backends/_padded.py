"""Shared plumbing for backends that only speak dense (batch, seqlen, heads, dim) tensors.

Variable-length and paged calls are turned into a padded batch by gathering with index
tensors built on the device (no ``.item()``/``.tolist()``: the caller's ``max_seqlen_*`` sizes
the padding), and results are gathered back the same way. The visibility rule (causal, window,
key padding) and the ALiBi bias live here once, so the reference, SDPA and FlexAttention
backends agree on them by construction; the tests check the reference against an independent
float64 formula.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Padded:
    q: torch.Tensor  # (B, Sq, Hq, D)
    k: torch.Tensor  # (B, Sk, Hkv, D)
    v: torch.Tensor  # (B, Sk, Hkv, Dv)
    q_lens: torch.Tensor | None  # (B,) int64, None = every row full
    k_lens: torch.Tensor | None
    token_batch: torch.Tensor | None = None  # packed query token -> (batch, position)
    token_pos: torch.Tensor | None = None


def relative_position(sq: int, sk: int, q_lens, k_lens, device) -> torch.Tensor:
    """rel[b, i, j] = (query i's key-space position) - j, bottom-right aligned per sequence."""
    i = torch.arange(sq, device=device).view(1, sq, 1)
    j = torch.arange(sk, device=device).view(1, 1, sk)
    if q_lens is None:
        offset = torch.full((1, 1, 1), sk - sq, device=device, dtype=torch.long)
    else:
        offset = (k_lens - q_lens).view(-1, 1, 1)
    return i + offset - j


def visible(rel: torch.Tensor, sq: int, sk: int, q_lens, k_lens, *, causal, window) -> torch.Tensor:
    """Boolean (B|1, Sq, Sk): may query i attend to key j."""
    left, right = window
    keep = torch.ones_like(rel, dtype=torch.bool)
    if causal:
        keep &= rel >= 0
    if left >= 0:
        keep &= rel <= left
    if right >= 0:
        keep &= rel >= -right
    if k_lens is not None:
        keep &= torch.arange(sk, device=rel.device).view(1, 1, sk) < k_lens.view(-1, 1, 1)
        keep &= torch.arange(sq, device=rel.device).view(1, sq, 1) < q_lens.view(-1, 1, 1)
    return keep


def alibi_bias(rel: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
    """(B|1, H, Sq, Sk) fp32 bias -slope * |rel|."""
    s = slopes.float()
    s = s.view(1, -1, 1, 1) if s.dim() == 1 else s.view(s.shape[0], s.shape[1], 1, 1)
    return -s * rel.abs().unsqueeze(1).float()


def _positions(cu: torch.Tensor, max_len: int):
    """Index (B, max_len) into a packed tensor, clamped, plus the per-sequence lengths."""
    starts = cu[:-1].long()
    lens = (cu[1:] - cu[:-1]).long()
    ar = torch.arange(max_len, device=cu.device).view(1, -1)
    idx = starts.view(-1, 1) + torch.minimum(ar, (lens - 1).clamp(min=0).view(-1, 1))
    return idx, lens


def _gather_packed(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    if x.shape[0] == 0:  # nothing to gather from: every sequence is empty
        return x.new_zeros((*idx.shape, *x.shape[1:]))
    return x[idx.clamp(max=x.shape[0] - 1)]


def token_coordinates(cu_q: torch.Tensor, total: int):
    """For each packed token: its sequence and its position in it (device ops, no sync)."""
    t = torch.arange(total, device=cu_q.device)
    b = torch.searchsorted(cu_q[1:].long(), t, right=True)
    return b, t - cu_q.long()[b]


def from_varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int) -> Padded:
    qi, q_lens = _positions(cu_q, max(max_q, 1))
    ki, k_lens = _positions(cu_k, max(max_k, 1))
    tb, tp = token_coordinates(cu_q, q.shape[0])
    return Padded(_gather_packed(q, qi), _gather_packed(k, ki), _gather_packed(v, ki), q_lens, k_lens, tb, tp)


def from_paged(q, k_cache, v_cache, block_table, seqused_k, cu_q, max_q: int, max_k: int | None) -> Padded:
    bs = k_cache.shape[1]
    batch = block_table.shape[0]
    if max_k is None:
        max_k = block_table.shape[1] * bs
    max_k = max(min(max_k, block_table.shape[1] * bs), 1)
    if cu_q is None:
        cu_q = torch.arange(batch + 1, device=q.device, dtype=torch.int32)
        max_q = 1
    j = torch.arange(max_k, device=q.device)
    # Index (block, row) pairs directly: a cache with any strides (an HND view, vLLM's K|V halves)
    # is read in place, where flattening it first would copy the whole cache.
    blocks = block_table.long()[:, j // bs].clamp(0, k_cache.shape[0] - 1)  # (B, max_k)
    rows = (j % bs).view(1, -1)
    k = k_cache[blocks, rows]
    v = v_cache[blocks, rows]
    # Rows past seqused_k (the rest of a last page, table slots past a sequence's pages) are the
    # cache's, not the caller's data: a cache from torch.empty may hold NaN there, and a masked
    # key still multiplies its value row by 0 (0 x NaN = NaN). Zero them in the gathered copy
    # (advanced indexing made k and v fresh tensors: in place, no second copy).
    unused = (j.view(1, -1) >= seqused_k.view(-1, 1))[:, :, None, None]
    k.masked_fill_(unused, 0), v.masked_fill_(unused, 0)
    qi, q_lens = _positions(cu_q, max(max_q, 1))
    tb, tp = token_coordinates(cu_q, q.shape[0])
    return Padded(_gather_packed(q, qi), k, v, q_lens, seqused_k.long(), tb, tp)


def to_packed(p: Padded, out_padded: torch.Tensor, lse_padded: torch.Tensor | None):
    """Padded (B, Sq, H, Dv) output and (B, H, Sq) lse back to packed (T, H, Dv) and (H, T)."""
    out = out_padded[p.token_batch, p.token_pos]
    lse = None if lse_padded is None else lse_padded[p.token_batch, :, p.token_pos].transpose(0, 1)
    return out, lse
