"""anyattn's own Triton kernels (``anyattn.kernels``): dense, varlen and paged forward.

Compiled at first use by Triton's bundled toolchain: no nvcc, no CUDA_HOME, no wheel that must
match torch. Every feature of the API (causal, window, softcap, ALiBi, sinks, LSE, GQA, out=)
in one kernel family. Dense and varlen have a Triton backward (``kernels/triton_backward.py``;
deterministic by default, no atomics): with a tensor that requires grad the ops return outputs connected to
autograd, and ``attention_backward``/``varlen_backward`` serve the custom-op layer; paged KV caches
are inference only. Launch configurations come from a static table keyed by
shapes and the caller's ``max_seqlen_*`` (no autotuning, no host-device sync), so calls are
CUDA-graph safe. ``triton`` is imported here on first use only, never by ``import anyattn``.
"""

from __future__ import annotations

import importlib
import importlib.metadata

import torch

from ..request import Request
from .base import Backend, HeadDims, caps

_MIN_TRITON = (3, 0)


def _triton_version() -> tuple[int, int] | None:
    try:
        v = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None
    try:
        major, minor = v.split("+")[0].split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


class _Kernels:
    def __init__(self, prefill, paged):
        self.prefill = prefill
        self.paged = paged


class TritonBackend(Backend):
    name = "triton"
    aliases = ("anyattn_triton", "triton_attention", "own")
    description = "anyattn's own Triton kernels (FA2-style prefill with TMA on sm90, split-KV paged decode)"
    module = "triton"
    distribution = "triton"
    install_hint = "pip install triton (bundled with torch on Linux x86-64)"
    caps = caps(
        devices={"cuda"},
        dtypes={torch.float16, torch.bfloat16, torch.float32},
        ops={"attention", "varlen", "paged"},
        features={"causal", "window", "softcap", "alibi", "sinks", "lse", "gqa", "out",
                  "cuda_graph", "grad"},
        head_dims=HeadDims(min=16, max=256),
        min_capability=(7, 5),
        block_sizes=lambda bs: bs >= 16 and bs % 16 == 0,
        block_size_rule="a multiple of 16",
    )

    def load(self):
        import triton  # noqa: F401  (the reason, if this fails, names triton itself)

        prefill = importlib.import_module("anyattn.kernels.triton_prefill")
        paged = importlib.import_module("anyattn.kernels.triton_paged")
        return _Kernels(prefill, paged)

    def extra_reasons(self, req: Request) -> list[str]:
        out = []
        tv = _triton_version()
        if tv is not None and tv < _MIN_TRITON:
            out.append(f"needs triton >= {_MIN_TRITON[0]}.{_MIN_TRITON[1]}; found "
                       f"{tv[0]}.{tv[1]}")
        if req.dtype == torch.bfloat16 and req.capability is not None and req.capability < (8, 0):
            out.append("bfloat16 needs compute capability >= 8.0 (sm80) in Triton")
        if req.op == "paged" and req.grad:
            out.append("no backward for paged KV caches (an inference-only layout); train with "
                       "attention or varlen_attention")
        return out

    def notes(self, req: Request) -> list[str]:
        out = []
        if req.dtype == torch.float32:
            out.append("float32 runs full-precision fp32 dots (no tensor-core tf32): correct but slow")
        if req.grad and req.op != "paged":
            out.append("backward: deterministic Triton kernels by default (no atomics; dQ in its "
                       "own pass, which recomputes Q.K^T and dO.V^T; "
                       "ANYATTN_TRITON_BWD_DETERMINISTIC=0 adds dQ by atomics instead); ALiBi "
                       "slopes get no gradient")
        if req.capability is not None and req.capability >= (9, 0) and req.op != "paged":
            out.append("TMA tensor descriptors are used when q/k/v have a unit last stride and "
                       "16-byte aligned rows; otherwise a slower pointer-load path")
        return out

    # -- ops ------------------------------------------------------------------------------
    def attention(self, q, k, v, *, causal, scale, window, softcap, alibi_slopes, sinks,
                  return_lse, out):
        if _needs_grad(q, k, v, sinks):
            return self._autograd(q, k, v, None, None, None, None, causal=causal, scale=scale,
                                  window=window, softcap=softcap, alibi_slopes=alibi_slopes,
                                  sinks=sinks, return_lse=return_lse, out=out)
        B, Sq, Hq, _ = q.shape
        o = out if out is not None else q.new_empty((B, Sq, Hq, v.shape[-1]))
        lse = torch.empty((B, Hq, Sq), device=q.device, dtype=torch.float32) if return_lse else None
        self.lib.prefill.flash_attention_forward(
            q, k, v, o, lse, scale=scale, causal=causal, window=window,
            softcap=softcap or None, alibi_slopes=alibi_slopes, sinks=sinks)
        return o, lse

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal,
               scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        if _needs_grad(q, k, v, sinks):
            return self._autograd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                  max_seqlen_k, causal=causal, scale=scale, window=window,
                                  softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks,
                                  return_lse=return_lse, out=out)
        T, Hq, _ = q.shape
        o = out if out is not None else q.new_empty((T, Hq, v.shape[-1]))
        lse = torch.empty((Hq, T), device=q.device, dtype=torch.float32) if return_lse else None
        self.lib.prefill.flash_attention_forward(
            q, k, v, o, lse, scale=scale, causal=causal, window=window,
            softcap=softcap or None, alibi_slopes=alibi_slopes, sinks=sinks,
            cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
            max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k)
        return o, lse

    def paged(self, q, k_cache, v_cache, block_table, seqused_k, *, cu_seqlens_q, max_seqlen_q,
              max_seqlen_k, causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        T, Hq, _ = q.shape
        o = out if out is not None else q.new_empty((T, Hq, v_cache.shape[-1]))
        lse = torch.empty((Hq, T), device=q.device, dtype=torch.float32) if return_lse else None
        self.lib.paged.paged_attention_forward(
            q, k_cache, v_cache, block_table, seqused_k, o, lse,
            cu_seqlens_q=cu_seqlens_q, max_seqlen_q=1 if cu_seqlens_q is None else max_seqlen_q,
            max_seqlen_k=max_seqlen_k, scale=scale, causal=causal, window=window,
            softcap=softcap or None, alibi_slopes=alibi_slopes, sinks=sinks)
        return o, lse

    # -- backward -------------------------------------------------------------------------
    # Dense and varlen only. By default the kernels are deterministic (no atomics): the same
    # inputs give the same gradient bits on every run; the price is a separate dQ pass that
    # recomputes Q.K^T and dO.V^T (kernels/triton_backward.py; ANYATTN_TRITON_BWD_DETERMINISTIC=0
    # selects atomic dQ). ALiBi slopes get no gradient.
    def _backward_kernels(self):
        self.lib  # noqa: B018  (raises the unavailability reason if triton does not load)
        return importlib.import_module("anyattn.kernels.triton_backward")

    def attention_backward(self, grad_out, grad_lse, q, k, v, out, lse, *, causal, scale, window,
                           softcap, alibi_slopes, sinks):
        """(dq, dk, dv, dsinks or None) of the dense op; ``lse`` (B, Hq, Sq) fp32 as the
        forward returned it, ``grad_lse`` its gradient or None."""
        return self._backward_kernels().flash_attention_backward(
            grad_out, q, k, v, out, lse, grad_lse, scale=scale, causal=causal, window=window,
            softcap=softcap or None, alibi_slopes=alibi_slopes, sinks=sinks)

    def varlen_backward(self, grad_out, grad_lse, q, k, v, cu_seqlens_q, cu_seqlens_k,
                        max_seqlen_q, max_seqlen_k, out, lse, *, causal, scale, window, softcap,
                        alibi_slopes, sinks):
        """(dq, dk, dv, dsinks or None) of the varlen op; ``lse`` (Hq, Tq) fp32."""
        return self._backward_kernels().flash_attention_backward(
            grad_out, q, k, v, out, lse, grad_lse, scale=scale, causal=causal, window=window,
            softcap=softcap or None, alibi_slopes=alibi_slopes, sinks=sinks,
            cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
            max_seqlen_k=max_seqlen_k)

    def _autograd(self, q, k, v, cu_q, cu_k, max_q, max_k, *, causal, scale, window, softcap,
                  alibi_slopes, sinks, return_lse, out):
        o, lse = _TritonAttentionFn.apply(self, q, k, v, sinks, alibi_slopes, cu_q, cu_k, max_q,
                                          max_k, causal, scale, window, softcap)
        if out is not None:
            out.copy_(o)  # differentiable: gradients reach q/k/v through out as well
            o = out
        return o, (lse if return_lse else None)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _TritonAttentionFn(torch.autograd.Function):
    """Eager autograd for the dense and varlen ops: the Triton forward (always with lse),
    then the Triton backward. Outputs are (out, lse); lse is differentiable too."""

    @staticmethod
    def forward(ctx, backend, q, k, v, sinks, alibi_slopes, cu_q, cu_k, max_q, max_k, causal,
                scale, window, softcap):
        opts = dict(causal=causal, scale=scale, window=window, softcap=softcap,
                    alibi_slopes=alibi_slopes, sinks=sinks, return_lse=True, out=None)
        with torch.no_grad():
            if cu_q is None:
                o, lse = backend.attention(q, k, v, **opts)
            else:
                o, lse = backend.varlen(q, k, v, cu_q, cu_k, max_q, max_k, **opts)
        ctx.save_for_backward(q, k, v, o, lse, sinks, alibi_slopes, cu_q, cu_k)
        ctx.backend = backend
        ctx.args = (max_q, max_k, causal, scale, window, softcap)
        ctx.set_materialize_grads(False)  # an unused lse gets None, not a zero tensor
        return o, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_lse):
        q, k, v, o, lse, sinks, alibi_slopes, cu_q, cu_k = ctx.saved_tensors
        max_q, max_k, causal, scale, window, softcap = ctx.args
        if grad_out is None and grad_lse is None:
            return (None,) * 14
        if grad_out is None:
            grad_out = torch.zeros_like(o)
        opts = dict(causal=causal, scale=scale, window=window, softcap=softcap,
                    alibi_slopes=alibi_slopes, sinks=sinks)
        if cu_q is None:
            dq, dk, dv, ds = ctx.backend.attention_backward(grad_out, grad_lse, q, k, v, o, lse,
                                                            **opts)
        else:
            dq, dk, dv, ds = ctx.backend.varlen_backward(grad_out, grad_lse, q, k, v, cu_q, cu_k,
                                                         max_q, max_k, o, lse, **opts)
        return (None, dq, dk, dv, ds if ctx.needs_input_grad[4] else None) + (None,) * 9
