"""FlexAttention (torch >= 2.5 on CUDA, >= 2.6 on CPU): block masks and score mods.

Causal, sliding window and variable length are block masks, so fully masked tiles are skipped;
soft-capping and ALiBi are a ``score_mod``. Sinks are folded in from the returned log-sum-exp.
``flex_attention`` is compiled (``torch.compile``) and reused: dense calls get kernels
specialised per shape; varlen/paged calls, whose token counts change every call, compile with
symbolic sizes. anyattn raises torch._dynamo's recompile limit to 64 so new sequence lengths do
not silently fall back to the unfused path. Set ``ANYATTN_FLEX_COMPILE=0`` to run it uncompiled
(torch's unfused reference path: slow, for debugging and tests).
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from ..request import Request
from . import _padded
from .base import Backend, HeadDims, add_sinks_via_lse, caps

_MIN_TORCH = {"cuda": (2, 5), "cpu": (2, 6)}


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


# Each new sequence length is a new BlockMask shape and so a new compile; torch's default limit
# of 8 recompiles per function would silently drop FlexAttention to its unfused eager path.
_RECOMPILE_LIMIT = 64


@functools.lru_cache(maxsize=None)
def _flex_fn(mode: str):
    """flex_attention compiled for ``mode``: "static" (dense calls: kernels specialised per
    shape, the fastest), "dynamic" (varlen/paged: token counts change every call, so sizes are
    symbolic), or "eager" (ANYATTN_FLEX_COMPILE=0)."""
    from torch.nn.attention.flex_attention import flex_attention

    if mode == "eager":
        return flex_attention
    import torch._dynamo.config as dynamo_config

    for knob in ("recompile_limit", "cache_size_limit"):  # the name changed in torch 2.6
        if getattr(dynamo_config, knob, _RECOMPILE_LIMIT) < _RECOMPILE_LIMIT:
            setattr(dynamo_config, knob, _RECOMPILE_LIMIT)
    return torch.compile(flex_attention, dynamic=False if mode == "static" else True)


def _compile_enabled() -> bool:
    return os.environ.get("ANYATTN_FLEX_COMPILE", "1") not in ("0", "false", "False")


class FlexBackend(Backend):
    name = "flex"
    aliases = ("flex_attention", "flexattention", "torch_flex")
    description = "torch FlexAttention (compiled Triton kernels on CUDA, C++ on CPU)"
    caps = caps(
        devices={"cuda", "cpu"},
        dtypes={torch.float16, torch.bfloat16, torch.float32},
        ops={"attention", "varlen", "paged"},
        features={"causal", "window", "softcap", "alibi", "sinks", "lse", "gqa", "out", "grad"},
        head_dims=HeadDims(min=16, max=256),
    )

    def load(self):
        from torch.nn.attention import flex_attention

        return flex_attention

    def extra_reasons(self, req: Request) -> list[str]:
        need = _MIN_TORCH.get(req.device_type)
        if need and _torch_version() < need:
            return [f"FlexAttention on {req.device_type} needs torch >= {need[0]}.{need[1]}, "
                    f"this is {torch.__version__}"]
        if req.grad and req.device_type == "cpu":
            # torch raises "FlexAttention does not support backward on CPU" (seen with 2.13).
            return [f"no backward on CPU (torch {torch.__version__}'s FlexAttention is inference-only there)"]
        return []

    def notes(self, req: Request) -> list[str]:
        out = []
        if req.op == "paged":
            out.append("paged KV gathered into a padded batch first (extra memory and time)")
        if not _compile_enabled():
            out.append("ANYATTN_FLEX_COMPILE=0: running uncompiled (unfused, slow)")
        else:
            out.append("compiles on the first call of each shape (seconds); later calls reuse it")
        return out

    # -- ops ---------------------------------------------------------------------------------
    def attention(self, q, k, v, *, causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        o, lse = self._flex(q, k, v, None, None, None, causal, scale, window, softcap, alibi_slopes, sinks,
                            return_lse)
        return _finish(o, lse, out, return_lse)

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal, scale,
               window, softcap, alibi_slopes, sinks, return_lse, out):
        hq, dv = q.shape[1], v.shape[-1]
        if q.shape[0] == 0 or k.shape[0] == 0:
            o = q.new_zeros(q.shape[0], hq, dv)
            lse = q.new_full((hq, q.shape[0]), float("-inf"), dtype=torch.float32)
            if sinks is not None:
                lse = sinks.float().view(-1, 1).expand_as(lse).clone()
            return _finish(o, lse, out, return_lse)
        docs = _Documents(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0])
        o, lse = self._flex(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), None, None, docs, causal, scale,
                            window, softcap, alibi_slopes, sinks, return_lse)
        o = o.squeeze(0)
        lse = None if lse is None else lse.squeeze(0)
        return _finish(o, lse, out, return_lse)

    def paged(self, q, k_cache, v_cache, block_table, seqused_k, *, cu_seqlens_q, max_seqlen_q, max_seqlen_k,
              causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        p = _padded.from_paged(q, k_cache, v_cache, block_table, seqused_k, cu_seqlens_q, max_seqlen_q,
                               max_seqlen_k)
        o, lse = self._flex(p.q, p.k, p.v, p.q_lens, p.k_lens, None, causal, scale, window, softcap,
                            alibi_slopes, sinks, return_lse)
        o, lse = _padded.to_packed(p, o, lse)
        return _finish(o, lse, out, return_lse)

    # -- the one place flex_attention is called ----------------------------------------------
    def _flex(self, q, k, v, q_lens, k_lens, docs, causal, scale, window, softcap, alibi_slopes, sinks,
              return_lse):
        b, sq, hq, _ = q.shape
        sk = k.shape[1]
        mode = "docs" if docs is not None else "padded" if q_lens is not None else "dense"
        alibi_rank = 0 if alibi_slopes is None else alibi_slopes.dim()
        mods = _mods_for(mode, sk - sq if mode == "dense" else 0, causal, window, softcap, alibi_rank)
        mods.bind(q_lens=q_lens, k_lens=k_lens, docs=docs, slopes=alibi_slopes)
        block_mask = None
        if mods.mask_mod is not None:
            block_mask = _block_mask(mods, b if mode == "padded" else None, sq, sk, q.device, cacheable=mode == "dense")
        need_lse = return_lse or sinks is not None
        kwargs = {"enable_gqa": hq != k.shape[2]}
        if need_lse:
            kwargs.update(_lse_kwargs())
        compiled = _compile_enabled()
        with warnings.catch_warnings():
            if not compiled:  # the user asked for the unfused path; torch's advice is noise then
                warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            fn = _flex_fn("eager" if not compiled else "static" if mode == "dense" else "dynamic")
            res = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                     score_mod=mods.score_mod, block_mask=block_mask, scale=scale, **kwargs)
        mods.bind()  # drop this call's tensors
        if need_lse:
            o, aux = res
            lse = getattr(aux, "lse", aux).float()  # (B, H, Sq)
        else:
            o, lse = res, None
        o = o.transpose(1, 2)
        if sinks is not None:
            o, lse = add_sinks_via_lse(o, lse, sinks, "dense")
        # Rows with no visible key: flex leaves lse at -inf and the output at 0; keep it that way.
        return o, lse


class _Documents:
    """Packed variable-length sequences as document ids, for one block mask over B=1."""

    def __init__(self, cu_q, cu_k, tq, tk):
        self.q_doc, self.q_pos = _padded.token_coordinates(cu_q, tq)
        self.k_doc, self.k_pos = _padded.token_coordinates(cu_k, tk)
        self.offset = (cu_k[1:] - cu_k[:-1] - (cu_q[1:] - cu_q[:-1])).long()


class _Mods:
    """The mask_mod/score_mod pair for one configuration, reused across calls.

    torch.compile guards on the identity of the functions it is given, so fresh closures on
    every call would recompile every call. One pair per configuration is built once; the
    tensors of the current call (lengths, documents, slopes) are read from this holder.
    """

    def __init__(self, mode, offset, causal, window, softcap, alibi_rank):
        self.key = (mode, offset, causal, window, softcap, alibi_rank)
        self.q_lens = self.k_lens = self.docs = self.slopes = None
        left, right = window
        holder = self

        if mode == "docs":
            def rel(b, qi, ki):
                d = holder.docs
                return d.q_pos[qi] + d.offset[d.q_doc[qi]] - d.k_pos[ki]

            def batch_of(b, qi):
                return holder.docs.q_doc[qi]
        elif mode == "padded":
            def rel(b, qi, ki):
                return qi + (holder.k_lens[b] - holder.q_lens[b]) - ki

            def batch_of(b, qi):
                return b
        else:
            def rel(b, qi, ki):
                return qi + offset - ki

            def batch_of(b, qi):
                return b

        def mask_mod(b, h, qi, ki):
            r = rel(b, qi, ki)
            keep = r == r  # all-true of the right shape, traceable
            if causal:
                keep = keep & (r >= 0)
            if left >= 0:
                keep = keep & (r <= left)
            if right >= 0:
                keep = keep & (r >= -right)
            if mode == "docs":
                keep = keep & (holder.docs.q_doc[qi] == holder.docs.k_doc[ki])
            if mode == "padded":
                keep = keep & (qi < holder.q_lens[b]) & (ki < holder.k_lens[b])
            return keep

        def score_mod(score, b, h, qi, ki):
            if softcap > 0:
                score = softcap * torch.tanh(score / softcap)
            if alibi_rank:
                slope = holder.slopes[h] if alibi_rank == 1 else holder.slopes[batch_of(b, qi), h]
                score = score - slope * torch.abs(rel(b, qi, ki)).to(score.dtype)
            return score

        masked = causal or left >= 0 or right >= 0 or mode != "dense"
        self.mask_mod = mask_mod if masked else None
        self.score_mod = score_mod if (softcap > 0 or alibi_rank) else None

    def bind(self, q_lens=None, k_lens=None, docs=None, slopes=None):
        self.q_lens, self.k_lens, self.docs, self.slopes = q_lens, k_lens, docs, slopes


@functools.lru_cache(maxsize=256)
def _mods_for(mode, offset, causal, window, softcap, alibi_rank) -> _Mods:
    return _Mods(mode, offset, causal, window, softcap, alibi_rank)


_BLOCK_MASKS: dict = {}


def _block_mask(mods, batch, sq, sk, device, cacheable):
    """Dense masks depend only on shapes and options: build each once. Data-dependent ones
    (varlen documents, paged lengths) are built per call."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = (mods.key, sq, sk, str(device))
    if cacheable and key in _BLOCK_MASKS:
        return _BLOCK_MASKS[key]
    bm = create_block_mask(mods.mask_mod, batch, None, sq, sk, device=device)
    if cacheable:
        if len(_BLOCK_MASKS) >= 64:
            _BLOCK_MASKS.pop(next(iter(_BLOCK_MASKS)))
        _BLOCK_MASKS[key] = bm
    return bm


def _lse_kwargs():
    try:
        from torch.nn.attention.flex_attention import AuxRequest

        return {"return_aux": AuxRequest(lse=True)}
    except ImportError:  # torch < 2.9
        return {"return_lse": True}


def _finish(o, lse, out, return_lse):
    if out is not None:
        out.copy_(o)
        o = out
    return o, (lse if return_lse else None)
