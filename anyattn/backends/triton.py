"""anyattn's own Triton kernels (``anyattn.kernels``): dense, varlen and paged forward.

Compiled at first use by Triton's bundled toolchain: no nvcc, no CUDA_HOME, no wheel that must
match torch. Every feature of the API (causal, window, softcap, ALiBi, sinks, LSE, GQA, out=)
in one kernel family; forward only. Launch configurations come from a static table keyed by
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
                  "cuda_graph"},
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
        return out

    def notes(self, req: Request) -> list[str]:
        out = []
        if req.dtype == torch.float32:
            out.append("float32 runs full-precision fp32 dots (no tensor-core tf32): correct but slow")
        if req.capability is not None and req.capability >= (9, 0) and req.op != "paged":
            out.append("TMA tensor descriptors are used when q/k/v have a unit last stride and "
                       "16-byte aligned rows; otherwise a slower pointer-load path")
        return out

    # -- ops ------------------------------------------------------------------------------
    def attention(self, q, k, v, *, causal, scale, window, softcap, alibi_slopes, sinks,
                  return_lse, out):
        B, Sq, Hq, _ = q.shape
        o = out if out is not None else q.new_empty((B, Sq, Hq, v.shape[-1]))
        lse = torch.empty((B, Hq, Sq), device=q.device, dtype=torch.float32) if return_lse else None
        self.lib.prefill.flash_attention_forward(
            q, k, v, o, lse, scale=scale, causal=causal, window=window,
            softcap=softcap or None, alibi_slopes=alibi_slopes, sinks=sinks)
        return o, lse

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal,
               scale, window, softcap, alibi_slopes, sinks, return_lse, out):
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
