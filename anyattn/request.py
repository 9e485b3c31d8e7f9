"""What a call asks for: validation of the user's tensors and the request signature.

A :class:`Request` is the part of a call that decides which backend can serve it (op, device,
dtype, head dims, feature flags) and nothing else, so it can key the decision cache. Sequence
lengths are deliberately absent; the one exception is whether a causal call has ``Sq != Sk``,
because SDPA's own causal flag is top-left aligned and then needs a bias.

All validation here looks at metadata only (shapes, dtypes, devices): nothing reads device
memory, so nothing synchronises with the GPU. Checks that need the data (monotone cu_seqlens,
block ids in range) run only with ``ANYATTN_DEBUG=1``.
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import torch

OPS = ("attention", "varlen", "paged")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
                torch.float64: "float64"}
DTYPE_ALIASES = {
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def parse_dtype(value) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    try:
        return DTYPE_ALIASES[str(value).lower()]
    except KeyError:
        raise ValueError(f"dtype: expected one of {sorted(DTYPE_ALIASES)}, got {value!r}") from None


class Request(NamedTuple):
    """Hashable signature of a call: everything backend support depends on."""

    op: str
    device_type: str
    device_index: int | None
    capability: tuple[int, int] | None  # CUDA compute capability, None elsewhere
    dtype: torch.dtype
    head_dim: int
    head_dim_v: int
    gqa_ratio: int  # Hq // Hkv (1 = plain multi-head)
    causal: bool
    window: bool  # a sliding window bounds at least one side
    softcap: bool
    alibi: bool
    sinks: bool
    lse: bool
    out: bool
    grad: bool  # autograd will need a backward
    causal_offset: bool  # causal with Sq != Sk (lower-right alignment matters)
    block_size: int | None = None  # paged KV only
    window_right: bool = False  # a non-causal window bounds the right side (some kernels cannot)

    def describe(self) -> str:
        feats = [f for f in ("causal", "window", "softcap", "alibi", "sinks", "lse", "out", "grad")
                 if getattr(self, f)]
        dev = self.device_type if self.device_index is None else f"{self.device_type}:{self.device_index}"
        if self.capability:
            dev += f" (sm{self.capability[0]}{self.capability[1]})"
        hd = f"{self.head_dim}" if self.head_dim == self.head_dim_v else f"{self.head_dim}/{self.head_dim_v}"
        parts = [self.op, dev, dtype_name(self.dtype), f"head_dim={hd}"]
        if self.gqa_ratio > 1:
            parts.append(f"gqa={self.gqa_ratio}")
        if self.block_size is not None:
            parts.append(f"block_size={self.block_size}")
        if feats:
            parts.append("+".join(feats))
        return " ".join(parts)


@functools.lru_cache(maxsize=None)
def device_capability(device_type: str, index: int | None) -> tuple[int, int] | None:
    if device_type != "cuda":
        return None
    return tuple(torch.cuda.get_device_capability(index if index is not None else torch.cuda.current_device()))


# os.environ.get of an unset variable costs ~1 µs (Mapping.get raises and catches KeyError);
# paged and varlen calls read ANYATTN_DEBUG every call. getenv() looks the encoded name up in
# os.environ's own dict, which every change made through os.environ keeps current; anything
# unusual (os.environ replaced, a mapping without that dict) takes os.environ.get.
_ENVIRON = os.environ
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEYS: dict = {}


def getenv(name: str, default=None):
    """``os.environ.get(name, default)``, without the exception an unset name costs there."""
    if os.environ is _ENVIRON and type(_ENV_DATA) is dict:
        key = _ENV_KEYS.get(name)
        if key is None:
            try:
                key = _ENV_KEYS[name] = os.environ.encodekey(name)
            except Exception:  # noqa: BLE001 - no encodekey: the plain lookup
                return os.environ.get(name, default)
        raw = _ENV_DATA.get(key)
        return default if raw is None else os.environ.decodevalue(raw)
    return os.environ.get(name, default)


def debug_checks_enabled() -> bool:
    return getenv("ANYATTN_DEBUG", "") not in ("", "0", "false", "False")


# --------------------------------------------------------------------------------------------
# Validation helpers. Messages name the argument, what was expected and what was given.
# --------------------------------------------------------------------------------------------

def _require_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")


def _require_rank(name: str, t: torch.Tensor, rank: int, layout: str) -> None:
    if t.dim() != rank:
        raise ValueError(f"{name}: expected a {rank}-D tensor {layout}, got shape {tuple(t.shape)}")


def _require_int_tensor(name: str, t, rank: int, device: torch.device, length: int | None = None) -> None:
    _require_tensor(name, t)
    if t.dtype != torch.int32:
        raise TypeError(f"{name}: expected dtype torch.int32, got {t.dtype}")
    if t.dim() != rank:
        raise ValueError(f"{name}: expected a {rank}-D tensor, got shape {tuple(t.shape)}")
    if length is not None and t.shape[0] != length:
        raise ValueError(f"{name}: expected length {length}, got shape {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (where q is), got {t.device}")
    # Kernels read these through raw pointers (flash-attn checks it too): unit stride along the last axis.
    if t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name}: expected unit stride along its last axis (e.g. .contiguous()), "
                         f"got strides {tuple(t.stride())} for shape {tuple(t.shape)}")


def _check_qkv_common(q, k, v, q_head_axis: int, kv_head_axis: int,
                      names: tuple[str, str] = ("k", "v")) -> tuple[int, int, int, int]:
    """Dtype/device/head checks shared by the three ops; returns (Hq, Hkv, D, Dv)."""
    if q.dtype not in SUPPORTED_DTYPES and q.dtype != torch.float64:
        raise TypeError(f"q: expected dtype float16, bfloat16 or float32, got {q.dtype}")
    kn, vn = names
    for name, t in ((kn, k), (vn, v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: expected dtype {q.dtype} (same as q), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name}: expected a tensor on {q.device} (where q is), got {t.device}")
    hq, hkv, hv = q.shape[q_head_axis], k.shape[kv_head_axis], v.shape[kv_head_axis]
    d, dk, dv = q.shape[-1], k.shape[-1], v.shape[-1]
    if dk != d:
        raise ValueError(f"{kn}: expected head dim {d} (same as q), got {dk}")
    if hv != hkv:
        raise ValueError(f"{vn}: expected {hkv} heads (same as {kn}), got {hv}")
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"{kn}: number of KV heads must divide the {hq} query heads (MQA/GQA), got {hkv}")
    if d == 0 or dv == 0:
        raise ValueError(f"q/v: head dims must be positive, got D={d}, Dv={dv}")
    return hq, hkv, d, dv


def normalize_options(*, scale, window, softcap, alibi_slopes, sinks, q: torch.Tensor,
                      num_heads: int, batch: int | None) -> tuple[float, tuple[int, int], float]:
    """Check the scalar and side-tensor options; returns (scale, window, softcap) normalised."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    else:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"scale: expected a float, got {type(scale).__name__}")
        scale = float(scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale: expected a finite positive number, got {scale}")
    if (not isinstance(window, (tuple, list)) or len(window) != 2
            or not all(isinstance(w, int) and not isinstance(w, bool) for w in window)):
        raise TypeError(f"window: expected a pair of ints (left, right), got {window!r}")
    left, right = int(window[0]), int(window[1])
    if left < -1 or right < -1:
        raise ValueError(f"window: expected each side >= 0 or -1 (unbounded), got {(left, right)}")
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
        raise TypeError(f"softcap: expected a float, got {type(softcap).__name__}")
    softcap = float(softcap)
    if not math.isfinite(softcap) or softcap < 0:
        raise ValueError(f"softcap: expected a finite number >= 0 (0 disables), got {softcap}")
    if alibi_slopes is not None:
        _require_tensor("alibi_slopes", alibi_slopes)
        if alibi_slopes.dtype != torch.float32:
            raise TypeError(f"alibi_slopes: expected dtype torch.float32, got {alibi_slopes.dtype}")
        ok_shapes = [(num_heads,)] + ([(batch, num_heads)] if batch is not None else [])
        if tuple(alibi_slopes.shape) not in ok_shapes:
            raise ValueError(f"alibi_slopes: expected shape {' or '.join(map(str, ok_shapes))}, "
                             f"got {tuple(alibi_slopes.shape)}")
        if alibi_slopes.device != q.device:
            raise ValueError(f"alibi_slopes: expected a tensor on {q.device}, got {alibi_slopes.device}")
    if sinks is not None:
        _require_tensor("sinks", sinks)
        if not sinks.is_floating_point():
            raise TypeError(f"sinks: expected a floating-point tensor, got {sinks.dtype}")
        if tuple(sinks.shape) != (num_heads,):
            raise ValueError(f"sinks: expected shape ({num_heads},), got {tuple(sinks.shape)}")
        if sinks.device != q.device:
            raise ValueError(f"sinks: expected a tensor on {q.device}, got {sinks.device}")
    return scale, (left, right), softcap


def check_out_and_lse(out, expected_shape: tuple[int, ...], q: torch.Tensor) -> None:
    if out is None:
        return
    _require_tensor("out", out)
    if tuple(out.shape) != expected_shape:
        raise ValueError(f"out: expected shape {expected_shape}, got {tuple(out.shape)}")
    if out.dtype != q.dtype:
        raise TypeError(f"out: expected dtype {q.dtype} (same as q), got {out.dtype}")
    if out.device != q.device:
        raise ValueError(f"out: expected a tensor on {q.device}, got {out.device}")
    if any(st == 0 and n > 1 for st, n in zip(out.stride(), out.shape)):  # writes would collide
        raise ValueError(f"out: expected a tensor whose elements do not overlap (no expanded, stride-0 axis), "
                         f"got strides {tuple(out.stride())} for shape {tuple(out.shape)}")


def grad_needed(q, k, v, sinks) -> bool:
    """Whether autograd will need a backward for this call."""
    return torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                        or (sinks is not None and sinks.requires_grad))


def _grad_needed(q, k, v, sinks) -> bool:
    try:
        return grad_needed(q, k, v, sinks)
    except AttributeError:  # not tensors: validation says which
        return False


def _make_request(op, q, d, dv, hq, hkv, *, causal, window, softcap, alibi_slopes, sinks,
                  return_lse, out, grad, causal_offset, block_size=None) -> Request:
    dev = q.device
    return Request(
        op=op, device_type=dev.type, device_index=dev.index,
        capability=device_capability(dev.type, dev.index), dtype=q.dtype,
        head_dim=d, head_dim_v=dv, gqa_ratio=hq // hkv, causal=bool(causal),
        window=window != (-1, -1), softcap=softcap > 0, alibi=alibi_slopes is not None,
        sinks=sinks is not None, lse=bool(return_lse), out=out is not None, grad=grad,
        causal_offset=bool(causal) and causal_offset, block_size=block_size,
        window_right=(not causal) and window[1] > 0,
    )


def dense_checks(q, k, v, *, causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
    """Validate a dense call; returns (scale, window, softcap, (Hq, Hkv, D, Dv)) normalised.

    Metadata only, so torch.compile traces it without a graph break.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        _require_tensor(name, t)
        _require_rank(name, t, 4, "(batch, seqlen, heads, head_dim)")
    dims = _check_qkv_common(q, k, v, q_head_axis=2, kv_head_axis=2)
    hq, dv = dims[0], dims[3]
    b, sq, _, _ = q.shape
    if k.shape[0] != b or v.shape[0] != b:
        raise ValueError(f"k/v: expected batch {b} (same as q), got {k.shape[0]} and {v.shape[0]}")
    if v.shape[1] != k.shape[1]:
        raise ValueError(f"v: expected seqlen {k.shape[1]} (same as k), got {v.shape[1]}")
    scale, window, softcap = normalize_options(scale=scale, window=window, softcap=softcap,
                                               alibi_slopes=alibi_slopes, sinks=sinks, q=q,
                                               num_heads=hq, batch=b)
    check_out_and_lse(out, (b, sq, hq, dv), q)
    return scale, window, softcap, dims


def dense_request(q, k, v, *, causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out,
                  grad=None):
    """Validate a dense call and build its Request; returns (req, scale, window, softcap).

    ``grad`` defaults to whether autograd will need a backward. Results are remembered per
    metadata signature (:func:`_memoized`), so a steady-state call skips the checks.
    """
    if grad is None:
        grad = _grad_needed(q, k, v, sinks)
    key = None
    if _plain_options(causal, scale, window, softcap, return_lse):
        try:  # _memo_key's layout, written out: the common dense call pays no loop or frame
            key = ("attention", q.shape, q.dtype, q.device, type(q), k.shape, k.dtype, k.device,
                   type(k), v.shape, v.dtype, v.device, type(v),
                   *((None,) if alibi_slopes is None else _tensor_meta(alibi_slopes)),
                   *((None,) if sinks is None else _tensor_meta(sinks)),
                   *((None,) if out is None else _strided_meta(out)),
                   causal, scale, window, softcap, return_lse, grad)
        except AttributeError:  # not a tensor: the checks will say so
            key = None
    hit = _MEMO.get(key) if key is not None else None
    if hit is not None:
        return hit
    scale_n, window_n, softcap_n, (hq, hkv, d, dv) = dense_checks(
        q, k, v, causal=causal, scale=scale, window=window, softcap=softcap, alibi_slopes=alibi_slopes,
        sinks=sinks, return_lse=return_lse, out=out)
    req = _make_request("attention", q, d, dv, hq, hkv, causal=causal, window=window_n, softcap=softcap_n,
                        alibi_slopes=alibi_slopes, sinks=sinks, return_lse=return_lse, out=out,
                        # one query (decode with a cache) sees every key when causal: no offset
                        grad=grad, causal_offset=1 < q.shape[1] != k.shape[1])
    return _remember(key, (req, scale_n, window_n, softcap_n))


def _check_cu_seqlens(name, cu, device, batch_plus_one=None):
    _require_int_tensor(name, cu, 1, device, batch_plus_one)
    if cu.shape[0] < 2:
        raise ValueError(f"{name}: expected at least 2 entries (batch + 1), got shape {tuple(cu.shape)}")


def _check_max_seqlen(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected a Python int (not a tensor: reading one would synchronise "
                        f"with the device), got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name}: expected >= 0, got {value}")


def _debug_check_cu_seqlens(name, cu, total, max_seqlen):
    lengths = (cu[1:] - cu[:-1]).cpu()
    if int(cu[0]) != 0:
        raise ValueError(f"{name}: expected cu[0] == 0, got {int(cu[0])}")
    if bool((lengths < 0).any()):
        raise ValueError(f"{name}: expected non-decreasing offsets, got {cu.tolist()}")
    if int(cu[-1]) != total:
        raise ValueError(f"{name}: expected last offset == {total} packed tokens, got {int(cu[-1])}")
    if max_seqlen is not None and lengths.numel() and int(lengths.max()) > max_seqlen:
        raise ValueError(f"{name}: a sequence has {int(lengths.max())} tokens, more than the max_seqlen "
                         f"{max_seqlen} you passed")


def varlen_checks(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal, scale,
                  window, softcap, alibi_slopes, sinks, return_lse, out):
    """Validate a varlen call; returns (scale, window, softcap, (Hq, Hkv, D, Dv))."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _require_tensor(name, t)
        _require_rank(name, t, 3, "(total_tokens, heads, head_dim)")
    dims = _check_qkv_common(q, k, v, q_head_axis=1, kv_head_axis=1)
    hq, dv = dims[0], dims[3]
    if v.shape[0] != k.shape[0]:
        raise ValueError(f"v: expected {k.shape[0]} tokens (same as k), got {v.shape[0]}")
    _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.device)
    _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, q.device, cu_seqlens_q.shape[0])
    _check_max_seqlen("max_seqlen_q", max_seqlen_q)
    _check_max_seqlen("max_seqlen_k", max_seqlen_k)
    batch = cu_seqlens_q.shape[0] - 1
    scale, window, softcap = normalize_options(scale=scale, window=window, softcap=softcap,
                                               alibi_slopes=alibi_slopes, sinks=sinks, q=q,
                                               num_heads=hq, batch=batch)
    check_out_and_lse(out, (q.shape[0], hq, dv), q)
    return scale, window, softcap, dims


def varlen_request(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal, scale,
                   window, softcap, alibi_slopes, sinks, return_lse, out, grad=None):
    if grad is None:
        grad = _grad_needed(q, k, v, sinks)
    debug = debug_checks_enabled()
    key = None if debug else _memo_key(
        ("varlen", q, k, v, alibi_slopes, sinks, out, cu_seqlens_q, cu_seqlens_k), causal, scale, window,
        softcap, return_lse, grad, _int_or_none(max_seqlen_q), _int_or_none(max_seqlen_k))
    hit = _MEMO.get(key) if key is not None else None
    if hit is not None:
        return hit
    scale_n, window_n, softcap_n, (hq, hkv, d, dv) = varlen_checks(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal, scale=scale,
        window=window, softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks, return_lse=return_lse, out=out)
    if debug:
        _debug_check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q)
        _debug_check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k)
    # Per-sequence lengths differ, so lower-right alignment always matters for causal varlen.
    req = _make_request("varlen", q, d, dv, hq, hkv, causal=causal, window=window_n, softcap=softcap_n,
                        alibi_slopes=alibi_slopes, sinks=sinks, return_lse=return_lse, out=out,
                        grad=grad, causal_offset=True)
    return _remember(key, (req, scale_n, window_n, softcap_n))


def paged_checks(q, k_cache, v_cache, block_table, seqused_k, *, cu_seqlens_q, max_seqlen_q,
                 max_seqlen_k, causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
    """Validate a paged call; returns (scale, window, softcap, (Hq, Hkv, D, Dv)).

    k_cache/v_cache may have any strides (an HND cache is passed as its NHD-shaped view
    ``cache.transpose(1, 2)``; vLLM's combined K|V tensor as its two slices): nothing is copied.
    """
    _require_tensor("q", q)
    _require_rank("q", q, 3, "(total_tokens, heads, head_dim)")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        _require_tensor(name, t)
        _require_rank(name, t, 4, "(num_blocks, block_size, kv_heads, head_dim)")
    dims = _check_qkv_common(q, k_cache, v_cache, q_head_axis=1, kv_head_axis=2,
                             names=("k_cache", "v_cache"))
    hq, dv = dims[0], dims[3]
    if v_cache.shape[:2] != k_cache.shape[:2]:
        raise ValueError(f"v_cache: expected (num_blocks, block_size) = {tuple(k_cache.shape[:2])} "
                         f"(same as k_cache), got {tuple(v_cache.shape[:2])}")
    _require_int_tensor("block_table", block_table, 2, q.device)
    batch = block_table.shape[0]
    _require_int_tensor("seqused_k", seqused_k, 1, q.device, batch)
    if cu_seqlens_q is None:
        if q.shape[0] != batch:
            raise ValueError(f"q: without cu_seqlens_q each sequence has one query token, so expected "
                             f"{batch} tokens (block_table rows), got {q.shape[0]}")
        if max_seqlen_q != 1:
            raise ValueError(f"max_seqlen_q: expected 1 without cu_seqlens_q, got {max_seqlen_q}")
    else:
        _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.device, batch + 1)
    _check_max_seqlen("max_seqlen_q", max_seqlen_q)
    _check_max_seqlen("max_seqlen_k", max_seqlen_k, allow_none=True)
    if k_cache.shape[1] <= 0:
        raise ValueError(f"k_cache: expected a positive block size, got {k_cache.shape[1]}")
    scale, window, softcap = normalize_options(scale=scale, window=window, softcap=softcap,
                                               alibi_slopes=alibi_slopes, sinks=sinks, q=q,
                                               num_heads=hq, batch=batch)
    check_out_and_lse(out, (q.shape[0], hq, dv), q)
    return scale, window, softcap, dims


def _debug_check_paged(q, k_cache, block_table, seqused_k, cu_seqlens_q, max_seqlen_q):
    block_size = k_cache.shape[1]
    batch = block_table.shape[0]
    if cu_seqlens_q is not None:
        _debug_check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q)
    bt = block_table.cpu()
    used_blocks = (seqused_k.cpu().long() + block_size - 1) // block_size
    if bool((used_blocks > block_table.shape[1]).any()):
        raise ValueError("seqused_k: a sequence needs more blocks than block_table has columns")
    for b in range(batch):
        ids = bt[b, : int(used_blocks[b])]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= k_cache.shape[0]):
            raise ValueError(f"block_table: row {b} has block ids outside [0, {k_cache.shape[0]})")
    if cu_seqlens_q is not None:
        nq = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).cpu()
        if bool((nq > seqused_k.cpu()).any()):
            raise ValueError("cu_seqlens_q: a sequence has more query tokens than seqused_k keys")


def paged_request(q, k_cache, v_cache, block_table, seqused_k, *, cu_seqlens_q, max_seqlen_q,
                  max_seqlen_k, causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out,
                  grad=None):
    if grad is None:
        grad = _grad_needed(q, k_cache, v_cache, sinks)
    debug = debug_checks_enabled()
    key = None
    if not debug and _plain_options(causal, scale, window, softcap, return_lse) \
            and type(max_seqlen_q) is int and (max_seqlen_k is None or type(max_seqlen_k) is int):
        try:  # _memo_key's layout, written out (as in dense_request): this runs every decode step
            key = ("paged", q.shape, q.dtype, q.device, type(q), k_cache.shape, k_cache.dtype,
                   k_cache.device, type(k_cache), v_cache.shape, v_cache.dtype, v_cache.device,
                   type(v_cache),
                   *((None,) if alibi_slopes is None else _tensor_meta(alibi_slopes)),
                   *((None,) if sinks is None else _tensor_meta(sinks)),
                   *((None,) if out is None else _strided_meta(out)),
                   *_strided_meta(block_table), *_strided_meta(seqused_k),
                   *((None,) if cu_seqlens_q is None else _strided_meta(cu_seqlens_q)),
                   max_seqlen_q, max_seqlen_k, causal, scale, window, softcap, return_lse, grad)
        except AttributeError:  # not a tensor: the checks will say so
            key = None
    hit = _MEMO.get(key) if key is not None else None
    if hit is not None:
        return hit
    scale_n, window_n, softcap_n, (hq, hkv, d, dv) = paged_checks(
        q, k_cache, v_cache, block_table, seqused_k, cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k, causal=causal, scale=scale, window=window, softcap=softcap,
        alibi_slopes=alibi_slopes, sinks=sinks, return_lse=return_lse, out=out)
    if debug:
        _debug_check_paged(q, k_cache, block_table, seqused_k, cu_seqlens_q, max_seqlen_q)
    req = _make_request("paged", q, d, dv, hq, hkv, causal=causal, window=window_n, softcap=softcap_n,
                        alibi_slopes=alibi_slopes, sinks=sinks, return_lse=return_lse, out=out,
                        grad=grad, causal_offset=True, block_size=k_cache.shape[1])
    return _remember(key, (req, scale_n, window_n, softcap_n))


# --------------------------------------------------------------------------------------------
# Memoised validation. Every check above reads metadata only (types, shapes, dtypes, devices,
# option values, and the strides of out= and of the index tensors), so its outcome is a
# function of that metadata: a call whose metadata was seen
# before skips the checks and gets the same (request, normalised options). Only plain Python
# option types are memoised (True == 1 must not let a bool scale through); anything unusual
# takes the full checks, which then explain what is wrong.
# --------------------------------------------------------------------------------------------
_MEMO: dict = {}
_MEMO_LIMIT = 4096  # distinct signatures (varlen token counts change every call)
_NoneType = type(None)
_PLAIN_SCALARS = (float, int, _NoneType)


def _tensor_meta(t):
    return None if t is None else (t.shape, t.dtype, t.device, type(t))


def _strided_meta(t):
    # for the tensors whose strides the checks read (index tensors: unit last stride; out: no
    # overlapping axis)
    return (t.shape, t.dtype, t.device, type(t), t.stride())


def _int_or_none(x):
    return x if type(x) is int or x is None else _Unmemoisable


class _Unmemoisable:  # a marker: the key builder gives up
    pass


def _plain_options(causal, scale, window, softcap, return_lse) -> bool:
    """Whether the options are of the plain types that memoising relies on."""
    return not (type(causal) is not bool or type(return_lse) is not bool
                or type(scale) not in _PLAIN_SCALARS or type(softcap) not in _PLAIN_SCALARS
                or softcap is None or type(window) is not tuple or len(window) != 2
                or type(window[0]) is not int or type(window[1]) is not int)


def _memo_key(tensors, causal, scale, window, softcap, return_lse, grad, *extra):
    """A hashable key of everything validation looks at, or None if the call is unusual.

    Layout: op name, then per tensor either None or (shape, dtype, device, type) flattened (a
    shape is never None, so the flat form is unambiguous), the extras, then the options.
    """
    if not _plain_options(causal, scale, window, softcap, return_lse) or _Unmemoisable in extra:
        return None
    try:
        # one flat tuple, built without a generator (a frame per tensor): this runs every call
        key = [tensors[0]]
        for t in tensors[1:]:
            if t is None:
                key.append(None)
            else:
                key += (t.shape, t.dtype, t.device, type(t), t.stride())  # strides: see _strided_meta
        key += extra
        key += (causal, scale, window, softcap, return_lse, grad)
        return tuple(key)
    except AttributeError:  # not a tensor: the checks will say so
        return None


def _remember(key, result):
    if key is not None:
        if len(_MEMO) >= _MEMO_LIMIT:
            _MEMO.clear()
        _MEMO[key] = result
    return result


def clear_memo() -> None:
    _MEMO.clear()
