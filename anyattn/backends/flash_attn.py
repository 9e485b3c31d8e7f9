"""FlashAttention-2 (the ``flash-attn`` package, module ``flash_attn``).

Ops: ``flash_attn_func`` (dense), ``flash_attn_varlen_func`` (packed varlen, and paged KV via its
``block_table`` for chunked prefill), ``flash_attn_with_kvcache`` (paged decode).

What the package does, by version (checked against the installed distribution's metadata):

* Ampere (sm80) or newer only; fp16/bf16; head dims up to 256, Q/K and V the same size. A head
  dim that is not a multiple of 8 is zero-padded by flash-attn itself (an extra copy of q/k/v);
  a paged KV cache cannot be padded that way, so paged needs a multiple of 8.
* causal is lower-right aligned from 2.1.0; ``window_size`` from 2.3.0; ``alibi_slopes`` from
  2.4.0; paged KV: ``flash_attn_with_kvcache(block_table=...)`` from 2.5.0 and
  ``flash_attn_varlen_func(block_table=...)`` from 2.5.7, so anyattn asks for 2.5.7 (as
  ExLlamaV2's dynamic generator does); ``softcap`` and ``return_softmax_lse`` on the kvcache path
  from 2.6.0. Upstream flash-attn's paged KV needs ``block_size % 256 == 0`` (the 16-token pages
  of vLLM's fork, ``vllm_flash_attn``, are not upstream).
* The lse comes from ``return_attn_probs=True`` (dense/varlen; the probabilities themselves are
  only materialised with dropout) and ``return_softmax_lse=True`` (kvcache). Varlen lse is
  ``(H, total_q)`` from 2.6.0 and per-sequence padded ``(B, H, max_seqlen_q)`` before; both are
  converted. A row that sees no key has output 0 and lse ``+inf`` in flash-attn; anyattn reports
  ``-inf``.
* FlashAttention-4 (flash-attn-4) also installs into ``flash_attn`` (only ``flash_attn/cute``, no
  ``__init__.py``, no ``flash_attn_2_cuda``): a ``flash_attn`` like that is reported as
  "not installed" here, with what was found; the reverse check lives in ``flash_attn_4.py``.
* No sinks in the kernel: they are folded in from the lse. No ``out=`` in the Python API: the
  result is copied into ``out``. The kernels need a contiguous last dim (flash-attn copies
  otherwise); other strides are passed through as views.
"""

from __future__ import annotations

import importlib.util

import torch

from ..request import Request
from . import _vendor as V
from .base import Availability, HeadDims, caps

PAGE_MULTIPLE = 256


class FlashAttnBackend(V.VendorBackend):
    name = "flash_attn"
    aliases = ("flash_attn_2", "fa2", "flash-attn", "flash_attention_2")
    description = "FlashAttention-2 (flash-attn package): dense, varlen and paged KV, sm80+"
    module = "flash_attn"
    distribution = "flash-attn"
    distributions = ("flash-attn", "flash_attn")
    install_hint = "pip install flash-attn --no-build-isolation"
    arch_reason = ("FlashAttention-2 needs Ampere (sm80) or newer; this GPU is {cc} — anyattn falls back "
                   "to the next backend (xFormers' cutlass kernel or torch SDPA's memory-efficient "
                   "kernel on pre-Ampere GPUs)")
    caps = caps(
        devices={"cuda"},
        dtypes={torch.float16, torch.bfloat16},
        ops={"attention", "varlen", "paged"},
        features={"causal", "window", "softcap", "alibi", "sinks", "lse", "gqa", "out", "grad",
                  "cuda_graph"},
        head_dims=HeadDims(min=1, max=256, dv_equals_d=True),
        min_capability=(8, 0),
        block_sizes=lambda bs: bs % PAGE_MULTIPLE == 0,
        block_size_rule=f"upstream flash-attn's paged KV needs a multiple of {PAGE_MULTIPLE}",
    )

    def _probe(self):
        # FlashAttention-4 (flash-attn-4) installs flash_attn/cute with no flash_attn/__init__.py and no
        # flash_attn_2_cuda: such a flash_attn is not FlashAttention-2, whatever `import flash_attn` does.
        from .flash_attn_4 import fa4_interface_dir

        if importlib.util.find_spec("flash_attn_2_cuda") is None and fa4_interface_dir() is not None:
            fa4 = V.installed_version(("flash-attn-4", "flash_attn_4"))
            return Availability(installed=False, error=(
                f"the flash_attn package here is FlashAttention-4's flash_attn.cute (flash-attn-4 {fa4 or '?'}) "
                "without flash_attn_2_cuda; FlashAttention-2 is a separate install: "
                "pip install flash-attn --no-build-isolation"))
        return super()._probe()

    def load(self):
        import flash_attn  # noqa: F401  (imports flash_attn_2_cuda: an ABI mismatch fails here)

        from flash_attn import flash_attn_func, flash_attn_varlen_func

        try:
            from flash_attn import flash_attn_with_kvcache
        except ImportError:  # flash-attn < 2.2
            flash_attn_with_kvcache = None
        return _Lib(flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache)

    # -- selection ------------------------------------------------------------------------
    def extra_reasons(self, req: Request) -> list[str]:
        v = self.parsed_version()
        pkg = "flash-attn"
        out: list[str] = []
        if v is not None and v < V.Version("2.0.0"):
            return [f"flash-attn {v} is FlashAttention-1; anyattn needs FlashAttention-2 (>= 2.1)"]
        if req.causal:  # before 2.1 causal was top-left aligned: wrong whenever Sq != Sk (decode too)
            out += V.needs(pkg, v, "2.1.0", "lower-right aligned causal (Sq != Sk)")
        if req.window:
            out += V.needs(pkg, v, "2.3.0", "sliding-window attention")
        if req.alibi:
            out += V.needs(pkg, v, "2.4.0", "ALiBi")
        if req.softcap:
            out += V.needs(pkg, v, "2.6.0", "logit soft-capping")
        if req.op == "paged":
            out += V.needs(pkg, v, "2.5.7", "paged KV (flash_attn_varlen_func block_table)",
                           "ExLlamaV2's dynamic generator needs it too")
            if req.head_dim % 8:
                out.append(f"paged KV needs head_dim to be a multiple of 8 (flash-attn cannot pad a "
                           f"paged cache); got {req.head_dim}")
            if req.grad:
                out.append("no backward for paged KV (flash_attn_with_kvcache is forward-only)")
        if req.grad and (req.lse or req.sinks):
            out.append("the lse flash-attn returns carries no gradient, so lse/sinks cannot be "
                       "combined with backward")
        return out

    def notes(self, req: Request) -> list[str]:
        out = []
        if req.head_dim % 8:
            out.append(f"head_dim={req.head_dim} is zero-padded to a multiple of 8 by flash-attn "
                       "(an extra copy of q, k, v)")
        if req.sinks:
            out.append("sinks folded in from the kernel's lse (flash-attn has no sink logits)")
        if req.out:
            out.append("flash-attn allocates its output; the result is copied into out=")
        out.append("q/k/v need a contiguous last dim (flash-attn copies otherwise); other strides "
                   "are passed as views")
        return out

    # -- ops --------------------------------------------------------------------------------
    def _kwargs(self, scale, causal, window, softcap, alibi_slopes):
        kw = {"softmax_scale": scale, "causal": causal}
        if window != (-1, -1):
            kw["window_size"] = tuple(window)
        if softcap > 0:
            kw["softcap"] = softcap
        if alibi_slopes is not None:
            kw["alibi_slopes"] = alibi_slopes
        return kw

    def attention(self, q, k, v, *, causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        need_lse = return_lse or sinks is not None
        kw = self._kwargs(scale, causal, window, softcap, alibi_slopes)
        res = self.lib.flash_attn_func(q, k, v, dropout_p=0.0, return_attn_probs=need_lse, **kw)
        o, lse = _split(res, need_lse)
        if lse is not None:
            lse = lse[..., : q.shape[1]]
        return V.finish(o, lse, layout="dense", sinks=sinks, return_lse=return_lse, out=out)

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal, scale,
               window, softcap, alibi_slopes, sinks, return_lse, out):
        need_lse = return_lse or sinks is not None
        kw = self._kwargs(scale, causal, window, softcap, alibi_slopes)
        res = self.lib.flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                              dropout_p=0.0, return_attn_probs=need_lse, **kw)
        o, lse = _split(res, need_lse)
        if lse is not None and lse.dim() == 3:  # flash-attn < 2.6: (B, H, max_seqlen_q)
            lse = V.padded_lse_to_packed(lse, cu_seqlens_q, q.shape[0])
        return V.finish(o, lse, layout="packed", sinks=sinks, return_lse=return_lse, out=out)

    def paged(self, q, k_cache, v_cache, block_table, seqused_k, *, cu_seqlens_q, max_seqlen_q, max_seqlen_k,
              causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        need_lse = return_lse or sinks is not None
        kw = self._kwargs(scale, causal, window, softcap, alibi_slopes)
        ver = self.parsed_version()
        kvcache_lse_ok = ver is None or ver >= V.Version("2.6.0")
        lib = self.lib
        if cu_seqlens_q is None and lib.flash_attn_with_kvcache is not None and (not need_lse or kvcache_lse_ok):
            # Decode: one query token per sequence; the kvcache kernel splits long caches.
            if need_lse:
                kw["return_softmax_lse"] = True
            res = lib.flash_attn_with_kvcache(q.unsqueeze(1), k_cache, v_cache, cache_seqlens=seqused_k,
                                              block_table=block_table, **kw)
            o, lse = _split(res, need_lse)
            o = o.squeeze(1)
            if lse is not None:
                lse = lse[:, :, 0].transpose(0, 1)  # (B, H, 1) -> (H, B)
        else:
            # Chunked prefill / speculative decoding: the varlen kernel reads pages through block_table;
            # cu_seqlens_k carries each sequence's key count.
            batch = block_table.shape[0]
            if cu_seqlens_q is None:
                cu_seqlens_q = torch.arange(batch + 1, device=q.device, dtype=torch.int32)
                max_seqlen_q = 1
            cu_k = V.cu_from_lengths(seqused_k)
            if max_seqlen_k is None:
                max_seqlen_k = block_table.shape[1] * k_cache.shape[1]
            res = lib.flash_attn_varlen_func(q, k_cache, v_cache, cu_seqlens_q, cu_k, max_seqlen_q, max_seqlen_k,
                                             dropout_p=0.0, return_attn_probs=need_lse, block_table=block_table,
                                             **kw)
            o, lse = _split(res, need_lse)
            if lse is not None and lse.dim() == 3:
                lse = V.padded_lse_to_packed(lse, cu_seqlens_q, q.shape[0])
        return V.finish(o, lse, layout="packed", sinks=sinks, return_lse=return_lse, out=out)


class _Lib:
    def __init__(self, flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache):
        self.flash_attn_func = flash_attn_func
        self.flash_attn_varlen_func = flash_attn_varlen_func
        self.flash_attn_with_kvcache = flash_attn_with_kvcache


def _split(res, need_lse):
    """flash-attn returns ``out`` or a tuple ``(out, softmax_lse, ...)``."""
    if isinstance(res, (tuple, list)):
        return res[0], (res[1] if need_lse else None)
    if need_lse:
        raise RuntimeError("flash-attn returned no lse although it was asked for one")
    return res, None
