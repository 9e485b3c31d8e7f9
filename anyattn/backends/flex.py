"""FlexAttention (torch >= 2.5 on CUDA, >= 2.6 on CPU): block masks and score mods.

Causal, sliding window and variable length are block masks, so fully masked tiles are skipped;
soft-capping and ALiBi are a ``score_mod``. Sinks are folded in from the returned log-sum-exp.
``flex_attention`` is compiled (``torch.compile``) and reused: dense calls get kernels
specialised per shape; varlen/paged calls, whose token counts change every call, compile with
symbolic sizes. anyattn raises torch._dynamo's recompile limit to 64 so new sequence lengths do
not silently fall back to the unfused path. Set ``ANYATTN_FLEX_COMPILE=0`` to run it uncompiled
(torch's unfused reference path: slow, for debugging and tests).

On CPU FlexAttention runs uncompiled unless ``ANYATTN_FLEX_COMPILE=1`` asks for it, because
compiled FlexAttention on CPU (torch 2.13) is not trustworthy: it returned wrong values
(max error ~0.7) for some short sequences depending on which shape compiled first (issue 9),
Inductor refuses the log-sum-exp and backward there ("torch.compile on CPU only supports
inference and return_lse is not supported yet", so sinks and ``return_lse`` crashed), and each
new shape costs seconds of C++ compilation, more than the fused kernel saves at the sizes CPU
attention runs. When compiling on CPU is asked for, calls that need the log-sum-exp or a
backward run uncompiled, and the first call of every compiled shape is checked against the
uncompiled result: a shape whose compiled kernel disagrees is served uncompiled from then on,
with one warning.
"""

from __future__ import annotations

import functools
import logging
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


def _compile_enabled(device_type: str = "cuda") -> bool:
    """ANYATTN_FLEX_COMPILE=0: never; =1: everywhere; unset: on CUDA only (see the module doc)."""
    value = os.environ.get("ANYATTN_FLEX_COMPILE", "").strip()
    if value in ("0", "false", "False"):
        return False
    if value:
        return True
    return device_type != "cpu"


log = logging.getLogger("anyattn")
# CPU only: compiled shapes already checked against the uncompiled result -> whether they agreed.
_CPU_CHECKED: dict = {}
# Relative (norm) error above which a compiled CPU result is wrong, not rounding.
_CPU_CHECK_TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}


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
        if req.device_type == "cpu" and req.grad:
            # torch raises NotImplementedError("FlexAttention does not support backward on CPU"),
            # compiled or not (found by the fuzz suite, torch 2.13).
            return [f"no backward on CPU (torch {torch.__version__}'s FlexAttention has none)"]
        return []

    def notes(self, req: Request) -> list[str]:
        out = []
        if req.op == "paged":
            out.append("paged KV gathered into a padded batch first (extra memory and time)")
        if not _compile_enabled(req.device_type):
            why = ("ANYATTN_FLEX_COMPILE=0" if req.device_type != "cpu" or os.environ.get("ANYATTN_FLEX_COMPILE")
                   else "compiled FlexAttention on CPU is not trusted (ANYATTN_FLEX_COMPILE=1 forces it)")
            out.append(f"{why}: running uncompiled (unfused, slow)")
        elif req.device_type == "cpu" and (req.lse or req.sinks or req.grad):
            out.append("runs uncompiled: torch.compile on CPU supports neither the log-sum-exp nor backward")
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
        if sq == 0 or sk == 0 or b == 0:
            # flex_attention indexes its block mask and reduces over keys: it raises IndexError on
            # an empty axis (found by the fuzz suite). No key seen: zeros, lse = -inf (or the sink).
            o = q.new_zeros(b, sq, hq, v.shape[-1])
            lse = q.new_full((b, hq, sq), float("-inf"), dtype=torch.float32)
            if sinks is not None:
                lse = sinks.float().view(1, -1, 1).expand_as(lse).clone()
            return o, lse
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
        compiled = _compile_enabled(q.device.type)
        on_cpu = q.device.type == "cpu"
        check_key = None
        if compiled and on_cpu:
            # Inductor on CPU: inference only, no lse (InductorError in torch 2.13).
            if need_lse or (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
                compiled = False
            else:
                check_key = (mode, tuple(q.shape), tuple(k.shape), tuple(v.shape), q.dtype, mods.key,
                             block_mask is not None)
                if _CPU_CHECKED.get(check_key) is False:
                    compiled = False
        args = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        call_kw = dict(score_mod=mods.score_mod, block_mask=block_mask, scale=scale, **kwargs)
        with warnings.catch_warnings():
            # The unfused path is chosen (by the user or for CPU); torch's advice is noise then.
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            fn = _flex_fn("eager" if not compiled else "static" if mode == "dense" else "dynamic")
            res = fn(*args, **call_kw)
            if check_key is not None and check_key not in _CPU_CHECKED:
                res = _checked_against_eager(check_key, res, args, call_kw)
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


def _checked_against_eager(key, res, args, call_kw):
    """First call of a compiled CPU shape: compare with the uncompiled result (issue 9: compiled
    FlexAttention on CPU returned wrong values for some short sequences). Returns the result to use."""
    eager = _flex_fn("eager")(*args, **call_kw)
    ref = eager.float()
    err = float((res.float() - ref).norm() / ref.norm().clamp_min(1e-12))
    ok = err <= _CPU_CHECK_TOL.get(args[0].dtype, 1e-4) and bool(torch.isfinite(res).all())
    _CPU_CHECKED[key] = ok
    if ok:
        return res
    log.warning("anyattn: compiled FlexAttention on CPU disagrees with the uncompiled result for shapes "
                "%s (relative error %.2g, torch %s); running this shape uncompiled", key[1:4], err,
                torch.__version__)
    return eager


def _finish(o, lse, out, return_lse):
    if out is not None:
        out.copy_(o)
        o = out
    return o, (lse if return_lse else None)
