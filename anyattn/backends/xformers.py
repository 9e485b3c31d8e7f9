"""xFormers' ``memory_efficient_attention`` (module ``xformers.ops``) with its attention-bias classes.

How a call is mapped:

* Layout: anyattn's (B, S, H, D) is xFormers' BMHK. GQA uses its 5-D BMGHK layout: q is viewed
  as (B, Sq, Hkv, Hq/Hkv, D) and k/v are expanded (stride 0, no copy) to the same G x H.
* Masks are bias classes, never materialised: causal ``LowerTriangularFromBottomRightMask``;
  causal + window ``LowerTriangularFromBottomRightLocalAttentionMask(left + 1)``; a window
  without causal ``LocalAttentionFromBottomRightMask(left, right)``. Varlen uses
  ``BlockDiagonalMask`` / ``BlockDiagonalCausalFromBottomRightMask`` (+ local-attention variant
  for windows, causal only); paged KV uses ``Paged(BlockDiagonalPaddedKeysMask |
  BlockDiagonalCausalWithOffsetPaddedKeysMask)``.
* Which kernel runs (FA3/FA2 builds inside xFormers, cutlass, or torch's own kernels when its C++
  extension did not load) is xFormers' decision. anyattn asks xFormers itself: the reasons check
  runs its dispatcher on tiny stand-in tensors of the request's signature and reports its
  "`op` is not supported because: ..." lines. So a wheel whose C++/CUDA ops do not match the
  installed torch is a reason (with the torch version it was built for), not a crash.
* The bias classes take sequence lengths as Python lists: varlen and paged read ``cu_seqlens`` /
  ``seqused_k`` on the host, one device -> host sync per call (not CUDA-graph safe).
* lse from ``memory_efficient_attention_forward_requires_grad`` (its shape varies by kernel:
  padded to a multiple of 32, or per-sequence padded for varlen; anyattn normalises it). Rows
  that see no key are zeroed. No softcap, no ALiBi slopes, no sink logits (sinks folded in from
  the lse). Backward through ``memory_efficient_attention`` for dense/varlen.
"""

from __future__ import annotations

import functools
import warnings

import torch

from ..request import Request
from . import _vendor as V
from .base import HeadDims, caps

PAGE_MULTIPLE = 256  # xFormers' paged path is its FlashAttention-2 build: same page rule


class XFormersBackend(V.VendorBackend):
    name = "xformers"
    aliases = ("xformers_attn", "memory_efficient_attention", "xformers_memory_efficient")
    description = "xFormers memory_efficient_attention (FA/cutlass kernels, bias classes), sm50+"
    module = "xformers"
    distribution = "xformers"
    distributions = ("xformers",)
    install_hint = "pip install xformers (a wheel built for your torch version)"
    arch_reason = "xFormers' cutlass kernel needs sm50 or newer; this GPU is {cc}"
    caps = caps(
        devices={"cuda"},
        dtypes={torch.float16, torch.bfloat16, torch.float32},
        ops={"attention", "varlen", "paged"},
        features={"causal", "window", "sinks", "lse", "gqa", "out", "grad"},
        head_dims=HeadDims(min=1, max=65536),
        min_capability=(5, 0),
        block_sizes=lambda bs: bs % PAGE_MULTIPLE == 0,
        block_size_rule=f"xFormers' paged kernel (its FlashAttention-2 build) needs a multiple of {PAGE_MULTIPLE}",
    )

    def __init__(self) -> None:
        super().__init__()
        self._probe_cache: dict = {}

    probe_statement = "import xformers.ops"  # where its C++/CUDA library loads

    def load(self):
        # xFormers prints a multi-line "can't load C++/CUDA extensions" banner on import when its
        # build does not match; anyattn reports that as a reason, so keep it off the user's terminal.
        import contextlib
        import io
        import logging as _logging

        banner = io.StringIO()
        with contextlib.redirect_stderr(banner), contextlib.redirect_stdout(banner), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import xformers
            import xformers.ops as xops
            from xformers.ops.fmha import attn_bias
        if banner.getvalue().strip():
            _logging.getLogger("anyattn").debug("anyattn: xformers import said: %s", banner.getvalue().strip())
        return _Lib(xformers, xops, attn_bias)

    # -- selection ------------------------------------------------------------------------
    def extra_reasons(self, req: Request) -> list[str]:
        out: list[str] = []
        if req.grad and (req.lse or req.sinks):
            out.append("the lse xFormers returns carries no gradient, so lse/sinks cannot be combined "
                       "with backward")
        if req.op == "paged" and req.grad:
            out.append("no backward for paged KV in xFormers")
        if req.op == "paged" and req.window:
            out.append("anyattn maps no xFormers paged bias with a sliding window")
        if req.op == "varlen" and req.window and not req.causal:
            out.append("xFormers' varlen local-attention biases are causal only (window needs causal=True)")
        if out:
            return out
        return list(self.dispatch_reasons(req))

    def dispatch_reasons(self, req: Request) -> tuple[str, ...]:
        """Ask xFormers' dispatcher whether any of its kernels takes a call of this signature."""
        hit = self._probe_cache.get(req)
        if hit is None:
            hit = self._probe_cache[req] = self._dispatch_reasons(req)
        return hit

    def _dispatch_reasons(self, req: Request) -> tuple[str, ...]:
        lib = self.lib
        try:
            from xformers.ops.fmha.common import Inputs
            from xformers.ops.fmha.dispatch import _dispatch_fw
        except ImportError:
            return ()  # an xFormers without these internals: let the call itself decide
        try:
            inp = Inputs(**_stand_in(lib, req, self._probe_device(req)))
            _dispatch_fw(inp, True)
        except NotImplementedError as exc:
            return _dispatch_failure(lib, str(exc))
        except Exception as exc:  # noqa: BLE001 - a probe failure is a reason, never a crash
            return (f"xFormers could not be asked about this call: {V.one_line(exc)}",)
        return ()

    @staticmethod
    def _probe_device(req: Request) -> torch.device:
        if req.device_index is None:
            return torch.device(req.device_type)
        return torch.device(req.device_type, req.device_index)

    def notes(self, req: Request) -> list[str]:
        out = []
        avail = self.availability()
        if avail.usable and self._loaded is not None and not getattr(self._loaded.xformers, "_has_cpp_library", True):
            out.append("xFormers' own C++/CUDA ops did not load; it runs through torch's kernels")
        if req.op != "attention":
            out.append("bias classes take Python lists: one device->host sync per call to read the "
                       "sequence lengths (not CUDA-graph safe)")
        if req.gqa_ratio > 1:
            out.append("GQA through the 5-D BMGHK layout (K/V expanded with stride 0, no copy)")
        if req.op == "paged":
            out.append("reads the cache as one (1, blocks*block_size, Hkv, D) tensor: NHD caches with "
                       "contiguous blocks in place; other layouts (HND views, vLLM's K|V halves) are "
                       "copied on every call")
        if req.sinks:
            out.append("sinks folded in from the kernel's lse")
        if req.out:
            out.append("the result is copied into out=")
        return out

    # -- ops --------------------------------------------------------------------------------
    def _run(self, q5, k5, v5, bias, scale, need_lse, grad):
        xops = self.lib.xops
        if grad and not need_lse:
            return xops.memory_efficient_attention(q5, k5, v5, attn_bias=bias, scale=scale), None
        fn = getattr(xops, "memory_efficient_attention_forward_requires_grad", None)
        if fn is None:
            from xformers.ops import fmha

            fn = fmha.memory_efficient_attention_forward_requires_grad
        return fn(q5, k5, v5, attn_bias=bias, scale=scale)

    def attention(self, q, k, v, *, causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        b, sq, hq, _ = q.shape
        sk = k.shape[1]
        ab = self.lib.attn_bias
        bias = dense_bias(ab, causal, window, big=sq + sk + 1)
        q5, k5, v5 = to_bmghk(q, k, v)
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        o, lse = self._run(q5, k5, v5, bias, scale, return_lse or sinks is not None or not grad, grad)
        o = o.reshape(b, sq, hq, v.shape[-1])
        if lse is not None:
            lse = lse.reshape(b, hq, -1)[..., :sq]
        return V.finish(o, lse, layout="dense", sinks=sinks, return_lse=return_lse, out=out, zero_empty=True)

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal, scale,
               window, softcap, alibi_slopes, sinks, return_lse, out):
        ab = self.lib.attn_bias
        cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()  # the bias classes need host lists
        lq = [cq[i + 1] - cq[i] for i in range(len(cq) - 1)]
        lk = [ck[i + 1] - ck[i] for i in range(len(ck) - 1)]
        if causal:
            bias = ab.BlockDiagonalCausalFromBottomRightMask.from_seqlens(lq, lk, device=q.device)
            if window[0] >= 0:
                bias = ab.BlockDiagonalMask.from_seqlens(lq, lk, device=q.device) \
                    .make_local_attention_from_bottomright(window[0] + 1)
        else:
            if window != (-1, -1):
                raise ValueError("window: xFormers' varlen local attention needs causal=True")
            bias = ab.BlockDiagonalMask.from_seqlens(lq, lk, device=q.device)
        hq = q.shape[1]
        q5, k5, v5 = to_bmghk(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0))
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        o, lse = self._run(q5, k5, v5, bias, scale, return_lse or sinks is not None or not grad, grad)
        o = o.reshape(q.shape[0], hq, v.shape[-1])
        if lse is not None:
            lse = varlen_lse(lse, hq, cu_seqlens_q, q.shape[0])
        return V.finish(o, lse, layout="packed", sinks=sinks, return_lse=return_lse, out=out, zero_empty=True)

    def paged(self, q, k_cache, v_cache, block_table, seqused_k, *, cu_seqlens_q, max_seqlen_q, max_seqlen_k,
              causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        ab = self.lib.attn_bias
        batch, max_blocks = block_table.shape
        page = k_cache.shape[1]
        if cu_seqlens_q is None:
            lq = [1] * batch
        else:
            cq = cu_seqlens_q.tolist()
            lq = [cq[i + 1] - cq[i] for i in range(batch)]
        lk = seqused_k.tolist()  # host lists: one sync
        if causal:
            base, paged_type = ab.BlockDiagonalCausalWithOffsetPaddedKeysMask, \
                ab.PagedBlockDiagonalCausalWithOffsetPaddedKeysMask
        else:
            base, paged_type = ab.BlockDiagonalPaddedKeysMask, ab.PagedBlockDiagonalPaddedKeysMask
        bias = base.from_seqlens(q_seqlen=lq, kv_padding=max_blocks * page, kv_seqlen=lk, device=q.device) \
            .make_paged(block_tables=block_table, page_size=page, paged_type=paged_type)
        hq, hkv = q.shape[1], k_cache.shape[2]
        # xFormers' paged bias indexes one flat token axis; reshape views when the (block, row)
        # axes flatten and copies otherwise (the notes say so).
        kf = k_cache.reshape(1, -1, hkv, k_cache.shape[-1])
        vf = v_cache.reshape(1, -1, hkv, v_cache.shape[-1])
        q5, k5, v5 = to_bmghk(q.unsqueeze(0), kf, vf)
        o, lse = self._run(q5, k5, v5, bias, scale, True, False)
        o = o.reshape(q.shape[0], hq, v_cache.shape[-1])
        lse = varlen_lse(lse, hq, cu_seqlens_q if cu_seqlens_q is not None else
                         torch.arange(batch + 1, device=q.device, dtype=torch.int32), q.shape[0])
        return V.finish(o, lse, layout="packed", sinks=sinks, return_lse=return_lse, out=out, zero_empty=True)


class _Lib:
    def __init__(self, xformers, xops, attn_bias):
        self.xformers, self.xops, self.attn_bias = xformers, xops, attn_bias


def dense_bias(ab, causal: bool, window: tuple[int, int], big: int):
    left, right = window
    if causal:
        if left >= 0:
            return ab.LowerTriangularFromBottomRightLocalAttentionMask(left + 1)
        return ab.LowerTriangularFromBottomRightMask()
    if window != (-1, -1):
        wl, wr = V.unbounded(window, big)
        return ab.LocalAttentionFromBottomRightMask(window_left=wl, window_right=wr)
    return None


def to_bmghk(q, k, v):
    """(B, Sq, Hq, D) and (B, Sk, Hkv, D|Dv) -> BMHK when Hq == Hkv, else BMGHK with K/V expanded."""
    hq, hkv = q.shape[2], k.shape[2]
    if hq == hkv:
        return q, k, v
    g = hq // hkv
    q5 = q.unflatten(2, (hkv, g))
    k5 = k.unsqueeze(3).expand(*k.shape[:3], g, k.shape[-1])
    v5 = v.unsqueeze(3).expand(*v.shape[:3], g, v.shape[-1])
    return q5, k5, v5


def varlen_lse(lse: torch.Tensor, hq: int, cu_q: torch.Tensor, total: int) -> torch.Tensor:
    """xFormers' varlen lse -> (Hq, T): packed (1, [G,] H, T) or per-sequence padded (B, [G,] H, M)."""
    if lse.shape[0] == 1 and lse.shape[-1] == total and lse.numel() == hq * total:
        return lse.reshape(hq, total)
    padded = lse.reshape(lse.shape[0], hq, lse.shape[-1])
    return V.padded_lse_to_packed(padded, cu_q, total)


def _stand_in(lib, req: Request, dev: torch.device) -> dict:
    """Tiny tensors and the bias class a call of this signature would use (for the dispatcher)."""
    ab = lib.attn_bias
    hkv, g = 2, req.gqa_ratio
    sq, sk = 16, (32 if req.causal_offset else 16)
    mk = functools.partial(torch.zeros, dtype=req.dtype, device=dev, requires_grad=req.grad)
    if req.op == "attention":
        q, k, v = mk(1, sq, hkv * g, req.head_dim), mk(1, sk, hkv, req.head_dim), mk(1, sk, hkv, req.head_dim_v)
        bias = dense_bias(ab, req.causal, (4, -1) if req.window else (-1, -1), big=sq + sk + 1)
        if req.window and not req.causal:
            bias = ab.LocalAttentionFromBottomRightMask(window_left=4, window_right=4)
    elif req.op == "varlen":
        q, k, v = mk(1, sq, hkv * g, req.head_dim), mk(1, sk, hkv, req.head_dim), mk(1, sk, hkv, req.head_dim_v)
        lq, lk = [sq // 2, sq // 2], [sk // 2, sk // 2]
        if req.causal:
            bias = ab.BlockDiagonalCausalFromBottomRightMask.from_seqlens(lq, lk, device=dev)
            if req.window:
                bias = ab.BlockDiagonalMask.from_seqlens(lq, lk, device=dev).make_local_attention_from_bottomright(5)
        else:
            bias = ab.BlockDiagonalMask.from_seqlens(lq, lk, device=dev)
    else:
        bs = req.block_size or 16
        q = mk(1, 2, hkv * g, req.head_dim)
        k, v = mk(1, 2 * bs, hkv, req.head_dim), mk(1, 2 * bs, hkv, req.head_dim_v)
        table = torch.arange(2, dtype=torch.int32, device=dev).view(2, 1)
        if req.causal:
            base = ab.BlockDiagonalCausalWithOffsetPaddedKeysMask
            paged = ab.PagedBlockDiagonalCausalWithOffsetPaddedKeysMask
        else:
            base, paged = ab.BlockDiagonalPaddedKeysMask, ab.PagedBlockDiagonalPaddedKeysMask
        bias = base.from_seqlens(q_seqlen=[1, 1], kv_padding=bs, kv_seqlen=[bs, bs], device=dev) \
            .make_paged(block_tables=table, page_size=bs, paged_type=paged)
    q, k, v = to_bmghk(q, k, v)
    return {"query": q, "key": k, "value": v, "attn_bias": bias}


def _dispatch_failure(lib, text: str) -> tuple[str, ...]:
    """xFormers' 'No operator found ...' message -> one reason per kernel, plus the C++ load cause."""
    reasons = []
    op = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("`") and "is not supported because" in s:
            op = s.split("`")[1]
            rest = s.split("because:", 1)[1].strip()
            if rest:
                reasons.append(f"{op}: {rest}")
        elif op and s and not s.startswith(("query", "key", "value", "attn_bias", "p ", "p:", "No operator")):
            reasons.append(f"{op}: {s}")
    head = []
    xf = lib.xformers
    if not getattr(xf, "_has_cpp_library", True):
        exc = getattr(getattr(xf, "_cpp_lib", None), "_cpp_library_load_exception", None)
        built = getattr(getattr(exc, "build_info", None), "torch_version", None)
        head.append("xFormers' C++/CUDA extensions did not load"
                    + (f" (built for torch {built}, this is torch {torch.__version__})" if built else "")
                    + "; no kernel it has left takes this call")
    merged = head + list(dict.fromkeys(reasons))
    return tuple(merged) or (V.one_line(RuntimeError(text)),)
