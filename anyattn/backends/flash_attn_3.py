"""FlashAttention-3 for Hopper (the ``hopper/`` build of flash-attention, module ``flash_attn_interface``).

Ops: ``flash_attn_func`` (dense), ``flash_attn_varlen_func`` (packed varlen), and
``flash_attn_with_kvcache`` with ``page_table`` and ``cu_seqlens_q`` for paged KV (decode and
chunked prefill in one call; any page size, even 1).

What the package does:

* sm90 (H100/H200) only as shipped; fp16/bf16 here (it also has fp8 e4m3, which anyattn does not
  expose). Head dims: multiples of 8 up to 256 (kernels are compiled for 64/96/128/192/256 and
  smaller dims are rounded up inside); V may differ from Q/K only as 128 < d <= 192 with
  96 < dv <= 128 (DeepSeek-style) or d <= 64 with 256 < dv <= 512.
* causal lower-right, ``window_size``, ``softcap``, GQA native. No ALiBi, no sink logits (sinks
  are folded in from the lse).
* The lse: ``return_attn_probs=True`` on ``flash_attn_func``/``flash_attn_varlen_func`` (added
  Aug 2025; earlier betas always returned ``(out, lse)``, later ones returned only ``out``) and
  ``return_softmax_lse=True`` on ``flash_attn_with_kvcache``. Which one the installed build has
  is read from its signatures, not guessed from a version number (FA3 has no stable releases).
* ``out=`` exists only on its private op: the result is copied. Last dim must be contiguous.
"""

from __future__ import annotations

import torch

from ..request import Request
from . import _vendor as V
from .base import HeadDims, caps


class FlashAttn3Backend(V.VendorBackend):
    name = "flash_attn_3"
    aliases = ("fa3", "flash_attn3", "flash-attn-3", "flash_attention_3", "flash_attn_interface")
    description = "FlashAttention-3 (Hopper sm90 build, flash_attn_interface): dense, varlen, paged KV"
    module = "flash_attn_interface"
    distribution = "flash_attn_3"
    distributions = ("flash_attn_3", "flash-attn-3", "flashattn-hopper")
    install_hint = "build flash-attention's hopper/ directory: cd hopper && python setup.py install"
    arch_reason = ("FlashAttention-3 needs a Hopper GPU (sm90); this GPU is {cc} — anyattn falls back to "
                   "the next backend (FlashAttention-2 or cuDNN through torch SDPA on Ampere/Ada)")
    caps = caps(
        devices={"cuda"},
        dtypes={torch.float16, torch.bfloat16},
        ops={"attention", "varlen", "paged"},
        features={"causal", "window", "softcap", "sinks", "lse", "gqa", "out", "grad", "cuda_graph"},
        head_dims=HeadDims(min=8, max=512, multiple_of=8),
        min_capability=(9, 0),
        max_capability=(9, 0),
    )

    def load(self):
        import flash_attn_interface as fa3

        return fa3

    # -- selection ------------------------------------------------------------------------
    def extra_reasons(self, req: Request) -> list[str]:
        out: list[str] = []
        d, dv = req.head_dim, req.head_dim_v
        if d > 256:
            out.append(f"head_dim={d} above FlashAttention-3's 256")
        elif dv != d and not ((128 < d <= 192 and 96 < dv <= 128) or (d <= 64 and 256 < dv <= 512)):
            out.append(f"head_dim_v={dv} != head_dim={d}: FlashAttention-3 supports different V dims only "
                       "for 128 < d <= 192 with 96 < dv <= 128, or d <= 64 with 256 < dv <= 512")
        lib = self.lib
        if req.op == "paged":
            kv = getattr(lib, "flash_attn_with_kvcache", None)
            if kv is None or not V.accepts(kv, "page_table"):
                out.append("this flash_attn_interface build has no paged KV (flash_attn_with_kvcache "
                           "page_table)")
            elif not V.accepts(kv, "cu_seqlens_q"):
                out.append("this flash_attn_interface build's flash_attn_with_kvcache takes no cu_seqlens_q "
                           "(needed for packed paged queries)")
            elif (req.lse or req.sinks) and not V.accepts(kv, "return_softmax_lse"):
                out.append("this flash_attn_interface build's flash_attn_with_kvcache cannot return the lse")
            if req.grad:
                out.append("no backward for paged KV (flash_attn_with_kvcache is forward-only)")
        elif req.lse or req.sinks:
            fn = lib.flash_attn_func if req.op == "attention" else lib.flash_attn_varlen_func
            if not V.accepts(fn, "return_attn_probs"):
                what = "the lse" if req.lse else "the lse that sinks are folded in from"
                out.append(f"this flash_attn_interface build cannot return {what} (return_attn_probs came "
                           "in Aug 2025)")
        if req.grad and (req.lse or req.sinks):
            out.append("the lse FlashAttention-3 returns carries no gradient, so lse/sinks cannot be "
                       "combined with backward")
        return out

    def notes(self, req: Request) -> list[str]:
        out = []
        if req.sinks:
            out.append("sinks folded in from the kernel's lse (FlashAttention-3 has no sink logits here)")
        if req.out:
            out.append("the result is copied into out= (the public API allocates its output)")
        out.append("q/k/v need a contiguous last dim (copied otherwise); other strides passed as views")
        return out

    # -- ops --------------------------------------------------------------------------------
    @staticmethod
    def _kwargs(scale, causal, window, softcap):
        kw = {"softmax_scale": scale, "causal": causal}
        if window != (-1, -1):
            kw["window_size"] = tuple(window)
        if softcap > 0:
            kw["softcap"] = softcap
        return kw

    def attention(self, q, k, v, *, causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        need_lse = return_lse or sinks is not None
        fn = self.lib.flash_attn_func
        kw = self._kwargs(scale, causal, window, softcap)
        if need_lse and V.accepts(fn, "return_attn_probs"):
            kw["return_attn_probs"] = True
        o, lse = _split(fn(q, k, v, **kw), need_lse)
        return V.finish(o, lse, layout="dense", sinks=sinks, return_lse=return_lse, out=out)

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal, scale,
               window, softcap, alibi_slopes, sinks, return_lse, out):
        need_lse = return_lse or sinks is not None
        fn = self.lib.flash_attn_varlen_func
        kw = self._kwargs(scale, causal, window, softcap)
        if need_lse and V.accepts(fn, "return_attn_probs"):
            kw["return_attn_probs"] = True
        res = fn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kw)
        o, lse = _split(res, need_lse)
        return V.finish(o, lse, layout="packed", sinks=sinks, return_lse=return_lse, out=out)

    def paged(self, q, k_cache, v_cache, block_table, seqused_k, *, cu_seqlens_q, max_seqlen_q, max_seqlen_k,
              causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        need_lse = return_lse or sinks is not None
        kw = self._kwargs(scale, causal, window, softcap)
        if need_lse:
            kw["return_softmax_lse"] = True
        batch = block_table.shape[0]
        if cu_seqlens_q is None:
            cu_seqlens_q = torch.arange(batch + 1, device=q.device, dtype=torch.int32)
            max_seqlen_q = 1
        res = self.lib.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqused_k, page_table=block_table,
                                               cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max_seqlen_q, **kw)
        o, lse = _split(res, need_lse)
        return V.finish(o, lse, layout="packed", sinks=sinks, return_lse=return_lse, out=out)


def _split(res, need_lse):
    if isinstance(res, (tuple, list)):
        return res[0], (res[1] if need_lse else None)
    if need_lse:
        raise RuntimeError("flash_attn_interface returned no lse although it was asked for one")
    return res, None
