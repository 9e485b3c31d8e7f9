"""PyTorch's ``scaled_dot_product_attention`` and each of its kernels, forceable one by one.

``sdpa`` lets torch pick its kernel; ``sdpa_flash``, ``sdpa_cudnn``, ``sdpa_efficient`` and
``sdpa_math`` pin one with ``torch.nn.attention.sdpa_kernel``. On CUDA, whether a pinned kernel
can take a request is asked of torch itself (``torch.backends.cuda.can_use_*_attention`` on
small stand-in tensors of the request's shape signature), and torch's own explanation becomes
the reason. Variable-length and paged calls are served by gathering into a padded batch with a
mask: correct, but it costs memory and time, and the notes say so.
"""

from __future__ import annotations

import functools
import re
import threading
import warnings

import torch
import torch.nn.functional as F

from ..request import Request
from . import _padded
from .base import Backend, CallDeclined, HeadDims, caps

_HALF = {torch.float16, torch.bfloat16}
_BASE_FEATURES = {"causal", "window", "alibi", "gqa", "out", "grad", "cuda_graph"}


def _has_enable_gqa() -> bool:
    import inspect

    try:
        return "enable_gqa" in inspect.signature(F.scaled_dot_product_attention).parameters
    except (TypeError, ValueError):  # builtins without a signature: torch >= 2.5 documents it
        return tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


HAS_ENABLE_GQA = _has_enable_gqa()


class SdpaBackend(Backend):
    #: torch.nn.attention.SDPBackend member name, None = let torch choose
    kernel: str | None = None
    #: whether this kernel takes enable_gqa itself (torch >= 2.5); otherwise torch is asked
    #: once per device (_kernel_takes_gqa) and, failing that, K/V heads are repeated
    native_gqa: bool = True
    #: whether this kernel accepts an explicit attention mask / bias on CUDA
    takes_mask: bool = True
    caps = caps(
        devices={"cpu", "cuda", "mps", "xpu"},
        dtypes={torch.float16, torch.bfloat16, torch.float32},
        ops={"attention", "varlen", "paged"},
        features=_BASE_FEATURES,
        head_dims=HeadDims(min=1, max=1 << 16),
    )
    name = "sdpa"
    aliases = ("torch_sdpa", "sdpa_auto", "torch")
    description = "torch.nn.functional.scaled_dot_product_attention, torch picks the kernel"

    # -- selection ------------------------------------------------------------------------
    def extra_reasons(self, req: Request) -> list[str]:
        out = []
        if req.device_type == "cuda" and not self.takes_mask and _needs_mask(req):
            out.append("this kernel takes no attention mask, and " + _why_mask(req) + " needs one")
        if out or self.kernel is None or self.kernel == "MATH" or self.caps.reasons(req):
            return out  # torch's own check only adds noise once the data already says no
        return list(_torch_kernel_reasons(self.kernel, req, self._gqa_native(_req_device(req))))

    def notes(self, req: Request) -> list[str]:
        out = []
        if req.op != "attention":
            out.append(f"{req.op} served by gathering into a padded batch with a mask "
                       "(extra memory and time; a native varlen/paged backend is faster)")
        if req.gqa_ratio > 1 and not self._gqa_native(_req_device(req)):
            out.append("K/V heads repeated to match the query heads (this kernel has no native GQA)")
        if _needs_mask(req):
            out.append(f"a dense mask of Sq x Sk is built for {_why_mask(req)}")
        return out

    def _gqa_native(self, device) -> bool:
        """Whether this kernel takes enable_gqa itself (else K/V heads are repeated)."""
        if not HAS_ENABLE_GQA:
            return False
        return self.native_gqa or _kernel_takes_gqa(self.kernel, device)

    # -- ops --------------------------------------------------------------------------------
    def attention(self, q, k, v, *, causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        if causal and q.shape[1] == 1:
            # One query, lower-right aligned, sees every key: causal changes nothing (decode with a
            # KV cache), and SDPA's top-left is_causal would hide all keys but the first.
            causal = False
        if not q.shape[1] or not k.shape[1]:
            return _finish(_empty_result(q, v), out)
        if window != (-1, -1) or alibi_slopes is not None or (causal and q.shape[1] != k.shape[1]):
            o = self._sdpa_padded(q, k, v, None, None, True, causal, scale, window, alibi_slopes)
            return _finish(o, out)
        # The common case (no mask), kept lean: it runs on every call (issue 7 section 2).
        if self.kernel != "MATH":
            q, k, v = _fused_ready(q, query=True), _fused_ready(k), _fused_ready(v)
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        gqa = False
        group = q.shape[2] // k.shape[2]
        if group > 1:
            if self._gqa_native(q.device):
                gqa = True
            else:
                kt, vt = kt.repeat_interleave(group, dim=1), vt.repeat_interleave(group, dim=1)
        o = _run_sdpa(self.kernel, qt, kt, vt, None, causal, scale, gqa).transpose(1, 2)
        if out is not None:
            out.copy_(o)
            return out, None
        return o, None

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal, scale,
               window, softcap, alibi_slopes, sinks, return_lse, out):
        p = _padded.from_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
        o = self._sdpa_padded(p.q, p.k, p.v, p.q_lens, p.k_lens, True, causal, scale, window, alibi_slopes)
        return _finish(_padded.to_packed(p, o, None)[0], out)

    def paged(self, q, k_cache, v_cache, block_table, seqused_k, *, cu_seqlens_q, max_seqlen_q, max_seqlen_k,
              causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        p = _padded.from_paged(q, k_cache, v_cache, block_table, seqused_k, cu_seqlens_q, max_seqlen_q,
                               max_seqlen_k)
        o = self._sdpa_padded(p.q, p.k, p.v, p.q_lens, p.k_lens, True, causal, scale, window, alibi_slopes)
        return _finish(_padded.to_packed(p, o, None)[0], out)

    def _sdpa_padded(self, q, k, v, q_lens, k_lens, mask_needed, causal, scale, window, alibi_slopes):
        if not q.shape[1] or not k.shape[1]:
            return _empty_result(q, v)
        if self.kernel != "MATH":
            q, k, v = _fused_ready(q, query=True), _fused_ready(k), _fused_ready(v)
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        group = q.shape[2] // k.shape[2]
        gqa = False
        if group > 1:
            if self._gqa_native(q.device):
                gqa = True
            else:
                kt, vt = kt.repeat_interleave(group, dim=1), vt.repeat_interleave(group, dim=1)
        mask = None
        empty_rows = None
        if mask_needed:
            sq, sk = q.shape[1], k.shape[1]
            rel = _padded.relative_position(sq, sk, q_lens, k_lens, q.device)
            keep = _padded.visible(rel, sq, sk, q_lens, k_lens, causal=causal, window=window).unsqueeze(1)
            empty_rows = ~keep.any(-1, keepdim=True)  # (B|1, 1, Sq, 1)
            # A fully masked row would give NaN; let it see key 0 and zero it afterwards.
            keep = keep | (empty_rows & (torch.arange(sk, device=q.device) == 0))
            if alibi_slopes is not None:
                bias = _padded.alibi_bias(rel, alibi_slopes).masked_fill(~keep, float("-inf"))
                # Softmax ignores a per-row constant: shifting each row's largest visible bias to
                # 0 before rounding to q's dtype keeps the logits that matter exact. Rounded as
                # is, a bias of -30 in bf16 is off by up to 0.06 (the H200 fuzz found errors of
                # 0.09 at 60 queries over 3 keys); shifted, only far, negligible keys round.
                mask = (bias - bias.amax(-1, keepdim=True)).to(q.dtype)
            else:
                mask = keep
            causal_flag = False
        else:
            causal_flag = causal
        o = _run_sdpa(self.kernel, qt, kt, vt, mask, causal_flag, scale, gqa)
        if empty_rows is not None:
            o = o.masked_fill(empty_rows, 0.0)
        return o.transpose(1, 2)


def _empty_result(q, v):
    """No query or no key: the output is empty or all zeros (a row that sees no key is 0, as in
    every anyattn backend); torch's fused kernels refuse zero-length sequences ("Invalid backend")."""
    b, sq, h = q.shape[0], q.shape[1], q.shape[2]
    return q.new_zeros(b, sq, h, v.shape[-1])


def _fused_ready(t, query=False):
    """``t`` as torch's fused kernels take it: unit stride on the head dim, and a 16-byte aligned
    base and strides. Misaligned views (a head dim padded to an odd width, an offset slice) make
    the efficient kernel raise "no kernel found to launch" and, on the H200, made torch's own pick
    return wrong values (the GPU fuzz: errors of 4-5 at bf16, head dim 32); a copy costs less.
    ``query``: the kernel lays its output out like q, so a broadcast q (stride 0 over heads or
    tokens) is copied too: cuDNN then rejected the output's strides on the H200 ("The stride for
    the last dimension ... should be 1 for output_names::O", GPU fuzz 2026-12-01). Broadcast K/V
    (an MQA head expanded) stay views."""
    st = t.stride()  # (B, S, H, D): the three leading strides are spelled out, this runs per call
    if st[3] != 1:
        return t.contiguous()
    step = _ALIGN_STEP.get(t.dtype) or 16 // t.element_size()
    suspect = st[0] % step or st[1] % step or st[2] % step or query and not (st[0] and st[1] and st[2])
    if t.data_ptr() % 16 or suspect and _unfit(t, st, step, query):
        return t.clone(memory_format=torch.contiguous_format)  # contiguous() would keep a bad base
    return t


_ALIGN_STEP = {torch.float16: 8, torch.bfloat16: 8, torch.float32: 4}


def _unfit(t, st, step, zero_too) -> bool:
    """Whether a dim of more than one element has a stride off the 16-byte grid, or (``zero_too``)
    a zero stride; a size-1 dim's stride is never used."""
    return any((s % step or zero_too and s == 0) and n > 1 for s, n in zip(st[:3], t.shape[:3]))


def _finish(o, out):
    if out is not None:
        out.copy_(o)
        return out, None
    return o, None


def _needs_mask(req: Request) -> bool:
    return req.window or req.alibi or req.causal_offset or req.op != "attention"


def _why_mask(req: Request) -> str:
    why = []
    if req.op != "attention":
        why.append(f"{req.op} (padding)")
    if req.window:
        why.append("the sliding window")
    if req.alibi:
        why.append("ALiBi")
    if req.causal_offset and req.op == "attention":
        why.append("causal with Sq != Sk (lower-right)")
    return " and ".join(why) or "nothing"


# torch's SDPA kernel flags are process-global, not per thread: without a lock, thread A's
# pin of the flash kernel could be undone by thread B's restore mid-call (A would then run
# B's kernel, or whatever the flags were before both). anyattn's pinned calls hold this lock
# from pinning to restoring, so concurrent sdpa_* calls each run the kernel they pinned (they
# are serialised for the host-side launch, not the kernel). Limit: code in another thread
# calling F.scaled_dot_product_attention directly meanwhile sees the pinned flags, as it would
# under torch.nn.attention.sdpa_kernel.
_PIN_LOCK = threading.RLock()

# SDPA kernel -> (torch._C getter, torch._C setter, torch.backends.cuda getter, setter). The
# private torch._C functions are what the public ones call; they are used when present because
# the public wrappers add a Python frame each, on every call's path.
_FLAGS = {
    "FLASH_ATTENTION": ("_get_flash_sdp_enabled", "_set_sdp_use_flash", "flash_sdp_enabled",
                        "enable_flash_sdp"),
    "EFFICIENT_ATTENTION": ("_get_mem_efficient_sdp_enabled", "_set_sdp_use_mem_efficient",
                            "mem_efficient_sdp_enabled", "enable_mem_efficient_sdp"),
    "MATH": ("_get_math_sdp_enabled", "_set_sdp_use_math", "math_sdp_enabled", "enable_math_sdp"),
    "CUDNN_ATTENTION": ("_get_cudnn_sdp_enabled", "_set_sdp_use_cudnn", "cudnn_sdp_enabled",
                        "enable_cudnn_sdp"),
}
_PIN_PLANS: dict = {}


def _pin_plan(kernel: str) -> tuple:
    """((getter, setter, wanted state), ...) for pinning ``kernel``: built once per kernel."""
    plan = _PIN_PLANS.get(kernel)
    if plan is None:
        cuda, C = torch.backends.cuda, torch._C
        flags = []
        for name, (cg, cs, pg, ps) in _FLAGS.items():
            if hasattr(C, cg) and hasattr(C, cs):
                flags.append((getattr(C, cg), getattr(C, cs), name == kernel))
            elif hasattr(cuda, pg):
                flags.append((getattr(cuda, pg), getattr(cuda, ps), name == kernel))
        plan = _PIN_PLANS[kernel] = tuple(flags)
    return plan


def _sdpa(qt, kt, vt, mask, is_causal, scale, gqa):
    if gqa:
        return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, is_causal=is_causal, scale=scale,
                                              enable_gqa=True)
    return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, is_causal=is_causal, scale=scale)


def _run_sdpa(kernel, qt, kt, vt, mask, is_causal, scale, gqa):
    """F.scaled_dot_product_attention with exactly one SDPA kernel enabled (``kernel``; None:
    torch picks), the flags restored afterwards.

    What ``torch.nn.attention.sdpa_kernel`` does, at a fraction of its cost: this sits on every
    call's path, so only the flags whose state differs are flipped (pinning cuDNN with the
    defaults flips three, not four), and flipped back even if the kernel raises.
    """
    if kernel is None:
        return _sdpa(qt, kt, vt, mask, is_causal, scale, gqa)
    flipped = []  # (setter, state before the call)
    with _PIN_LOCK:
        try:
            for get, set_, on in _pin_plan(kernel):
                was = get()
                if was != on:
                    set_(on)
                    flipped.append((set_, was))
            return _sdpa(qt, kt, vt, mask, is_causal, scale, gqa)
        except RuntimeError as exc:
            if _REFUSED.search(str(exc)):
                # The pinned kernel refuses these particular sizes (cuDNN at one query and one
                # key, say): not a fault of the signature, so the call is declined, not failed.
                raise CallDeclined(f"torch's {kernel} kernel refuses this call's sizes "
                                   f"(q {tuple(qt.shape)}, k {tuple(kt.shape)}): {str(exc).splitlines()[0]}") from exc
            raise
        finally:
            for set_, was in flipped:
                set_(was)


#: torch's messages for "the pinned kernel cannot take these inputs"
_REFUSED = re.compile(r"No available kernel|Invalid backend|no kernel found to launch")


class _PinKernel:
    """Enable exactly one SDPA kernel for the duration of a ``with`` block, then restore the
    flags (the context-manager form of :func:`_run_sdpa`'s pinning; same lock)."""

    def __init__(self, kernel: str):
        self._plan = _pin_plan(kernel)
        self._flipped: list[list] = []  # a stack: the same instance may be entered re-entrantly

    def __enter__(self):
        _PIN_LOCK.acquire()
        flipped = []
        try:
            for get, set_, on in self._plan:
                was = get()
                if was != on:
                    set_(on)
                    flipped.append((set_, was))
        except BaseException:
            for set_, was in flipped:
                set_(was)
            _PIN_LOCK.release()
            raise
        self._flipped.append(flipped)

    def __exit__(self, *exc):
        try:
            for set_, was in self._flipped.pop():
                set_(was)
        finally:
            _PIN_LOCK.release()


def _kernel_context(kernel: str | None):
    if kernel is None:
        import contextlib

        return contextlib.nullcontext()
    return _PinKernel(kernel)


@functools.lru_cache(maxsize=256)
def _torch_kernel_reasons(kernel: str, req: Request, native_gqa: bool) -> tuple[str, ...]:
    """Ask torch whether ``kernel`` would run a call of this signature, and why not."""
    if req.device_type != "cuda":
        return _trial_reasons(kernel, req, native_gqa)
    can_use = {
        "FLASH_ATTENTION": getattr(torch.backends.cuda, "can_use_flash_attention", None),
        "EFFICIENT_ATTENTION": getattr(torch.backends.cuda, "can_use_efficient_attention", None),
        "CUDNN_ATTENTION": getattr(torch.backends.cuda, "can_use_cudnn_attention", None),
    }[kernel]
    if can_use is None:
        return (f"torch {torch.__version__} has no {kernel.lower()} kernel check (kernel missing)",)
    q, k, v, mask, gqa = _stand_ins(req, native_gqa)
    try:
        params = torch.backends.cuda.SDPAParams(q, k, v, mask, 0.0, req.causal and mask is None, gqa)
    except TypeError:  # torch < 2.5: no enable_gqa argument
        params = torch.backends.cuda.SDPAParams(q, k, v, mask, 0.0, req.causal and mask is None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = can_use(params, True)
    if ok:
        return ()
    return _clean_torch_warnings(caught) or (f"torch says the {kernel.lower()} kernel cannot run this",)


def _clean_torch_warnings(caught) -> tuple[str, ...]:
    """torch's kernel-check warnings, minus its headers and source locations."""
    texts = []
    for w in caught:
        text = re.sub(r"\s*\(Triggered internally at [^)]*\)\.?", "", str(w.message)).strip()
        first = text.splitlines()[0].strip() if text else ""
        if first and not first.endswith("because:"):
            texts.append(first)
    return tuple(dict.fromkeys(texts))


def _req_device(req: Request) -> torch.device:
    return torch.device(req.device_type, req.device_index) if req.device_index is not None else torch.device(req.device_type)


@functools.lru_cache(maxsize=None)
def _kernel_takes_gqa(kernel: str | None, device: torch.device) -> bool:
    """Ask torch once per device whether a fused kernel accepts enable_gqa (newer torch grew it
    for cuDNN and the efficient kernel); repeating K/V heads costs memory and bandwidth."""
    can_use = {"EFFICIENT_ATTENTION": "can_use_efficient_attention",
               "CUDNN_ATTENTION": "can_use_cudnn_attention"}.get(kernel)
    if device.type != "cuda" or can_use is None or not hasattr(torch.backends.cuda, can_use):
        return False
    q = torch.empty(1, 4, 16, 64, dtype=torch.bfloat16, device=device)
    k = torch.empty(1, 2, 16, 64, dtype=torch.bfloat16, device=device)
    try:
        params = torch.backends.cuda.SDPAParams(q, k, k, None, 0.0, False, True)
    except TypeError:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bool(getattr(torch.backends.cuda, can_use)(params, False))


def _stand_ins(req: Request, native_gqa: bool):
    dev = _req_device(req)
    hkv = 2
    hq = hkv * req.gqa_ratio
    gqa = req.gqa_ratio > 1 and native_gqa
    if req.gqa_ratio > 1 and not gqa:
        hkv = hq
    sq, sk = 16, 32 if req.causal_offset else 16
    q = torch.empty(1, hq, sq, req.head_dim, dtype=req.dtype, device=dev, requires_grad=req.grad)
    k = torch.empty(1, hkv, sk, req.head_dim, dtype=req.dtype, device=dev, requires_grad=req.grad)
    v = torch.empty(1, hkv, sk, req.head_dim_v, dtype=req.dtype, device=dev, requires_grad=req.grad)
    mask = None
    if _needs_mask(req):
        mask = (torch.empty(1, hq, sq, sk, dtype=req.dtype, device=dev) if req.alibi
                else torch.ones(1, 1, sq, sk, dtype=torch.bool, device=dev))
    return q, k, v, mask, gqa


def _trial_reasons(kernel: str, req: Request, native_gqa: bool) -> tuple[str, ...]:
    """Off CUDA torch has no can_use_* checks: run the kernel once on tiny inputs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, mask, gqa = _stand_ins(req, native_gqa)
    q, k, v = (torch.randn_like(t) for t in (q, k, v))
    if mask is not None and mask.dtype != torch.bool:
        mask = torch.zeros_like(mask)
    kwargs = {"enable_gqa": True} if gqa else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel(getattr(SDPBackend, kernel)):
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=req.causal and mask is None,
                                               **kwargs)
        except RuntimeError as exc:
            return _clean_torch_warnings(caught) or (str(exc).splitlines()[0],)
    return ()


class SdpaFlash(SdpaBackend):
    name = "sdpa_flash"
    aliases = ("flash_sdp", "torch_flash", "sdpa_fa2")
    description = "torch SDPA's FlashAttention-2 kernel (CUDA sm80+), or its CPU flash kernel"
    kernel = "FLASH_ATTENTION"
    takes_mask = False
    caps = caps(devices={"cuda", "cpu"}, dtypes={torch.float16, torch.bfloat16, torch.float32},
                ops={"attention", "varlen", "paged"}, features=_BASE_FEATURES,
                head_dims=HeadDims(min=1, max=256))

    def extra_reasons(self, req: Request) -> list[str]:
        if req.device_type == "cuda" and req.dtype not in _HALF:
            return ["the CUDA flash kernel takes float16/bfloat16 only"]
        return super().extra_reasons(req)


class SdpaCudnn(SdpaBackend):
    name = "sdpa_cudnn"
    aliases = ("cudnn", "cudnn_attention", "torch_cudnn")
    description = "torch SDPA's cuDNN attention kernel (CUDA)"
    kernel = "CUDNN_ATTENTION"
    native_gqa = False
    caps = caps(devices={"cuda"}, dtypes=_HALF, ops={"attention", "varlen", "paged"},
                features=_BASE_FEATURES, head_dims=HeadDims(min=1, max=256), min_capability=(8, 0))


class SdpaEfficient(SdpaBackend):
    name = "sdpa_efficient"
    aliases = ("efficient", "mem_efficient", "memory_efficient", "torch_efficient")
    description = "torch SDPA's memory-efficient (xFormers-derived) kernel (CUDA)"
    kernel = "EFFICIENT_ATTENTION"
    native_gqa = False
    caps = caps(devices={"cuda"}, dtypes={torch.float16, torch.bfloat16, torch.float32},
                ops={"attention", "varlen", "paged"}, features=_BASE_FEATURES, head_dims=HeadDims(min=1))


class SdpaMath(SdpaBackend):
    name = "sdpa_math"
    aliases = ("math", "torch_math")
    description = "torch SDPA's math kernel (any device; unfused, O(S^2) memory)"
    kernel = "MATH"
