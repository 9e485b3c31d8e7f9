"""The public ops. Each validates on the host, picks a backend (cached) and runs it.

Eagerly a call validates (memoised per metadata signature), looks up the cached decision and
calls the backend: a few µs of Python. Under ``torch.compile`` (and ``torch.export``) the same
call goes through anyattn's custom op (:mod:`anyattn.ops`), which the compiler keeps as one
opaque node with no graph break; the backend is then picked when the op runs.
"""

from __future__ import annotations

from torch.compiler import is_compiling as _is_compiling

from . import ops as _ops
from . import request as _rq
from . import selector as _sel


def attention(q, k, v, *, causal=False, scale=None, window=(-1, -1), softcap=0.0, alibi_slopes=None,
              sinks=None, return_lse=False, out=None, backend=None):
    """Attention over dense batches.

    q ``(B, Sq, Hq, D)``, k ``(B, Sk, Hkv, D)``, v ``(B, Sk, Hkv, Dv)`` with ``Hq % Hkv == 0``.
    ``causal`` is lower-right aligned when ``Sq != Sk`` (query i sees keys ``j <= i + Sk - Sq``).
    ``window=(left, right)`` bounds each side in tokens (-1: unbounded). ``softcap`` caps logits as
    ``softcap * tanh(s / softcap)``; ``alibi_slopes`` (fp32 ``(Hq,)`` or ``(B, Hq)``) adds
    ``-slope * |i + Sk - Sq - j|``; ``sinks`` (``(Hq,)``) are logits that join the softmax
    denominator only. Returns ``out (B, Sq, Hq, Dv)`` in q's dtype, and with ``return_lse=True``
    also the fp32 natural-log ``lse (B, Hq, Sq)``. ``backend`` forces a backend (one name: strict)
    or gives an ordered preference (a list or comma-separated names).
    """
    if _is_compiling():
        return _ops.attention(q, k, v, causal=causal, scale=scale, window=window, softcap=softcap,
                              alibi_slopes=alibi_slopes, sinks=sinks, return_lse=return_lse, out=out,
                              backend=backend)
    req, scale, window, softcap = _rq.dense_request(
        q, k, v, causal=causal, scale=scale, window=window, softcap=softcap, alibi_slopes=alibi_slopes,
        sinks=sinks, return_lse=return_lse, out=out)
    o, lse = _sel.run(req, backend, lambda b: b.attention(
        q, k, v, causal=causal, scale=scale, window=window, softcap=softcap, alibi_slopes=alibi_slopes,
        sinks=sinks, return_lse=return_lse, out=out))
    return (o, lse) if return_lse else o


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=False,
                     scale=None, window=(-1, -1), softcap=0.0, alibi_slopes=None, sinks=None,
                     return_lse=False, out=None, backend=None):
    """Attention over packed variable-length sequences.

    q ``(Tq, Hq, D)``, k/v ``(Tk, Hkv, D|Dv)``; ``cu_seqlens_q``/``cu_seqlens_k`` are int32
    cumulative offsets of length B+1 (zero-length sequences allowed); ``max_seqlen_*`` are Python
    ints (the longest sequence). Causal alignment is lower-right per sequence. Returns
    ``out (Tq, Hq, Dv)`` and with ``return_lse=True`` the fp32 ``lse (Hq, Tq)``.
    """
    if _is_compiling():
        return _ops.varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                     causal=causal, scale=scale, window=window, softcap=softcap,
                                     alibi_slopes=alibi_slopes, sinks=sinks, return_lse=return_lse, out=out,
                                     backend=backend)
    req, scale, window, softcap = _rq.varlen_request(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal, scale=scale,
        window=window, softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks, return_lse=return_lse, out=out)
    o, lse = _sel.run(req, backend, lambda b: b.varlen(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal, scale=scale,
        window=window, softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks, return_lse=return_lse, out=out))
    return (o, lse) if return_lse else o


def paged_attention(q, k_cache, v_cache, block_table, seqused_k, *, cu_seqlens_q=None, max_seqlen_q=1,
                    max_seqlen_k=None, causal=True, scale=None, window=(-1, -1), softcap=0.0,
                    alibi_slopes=None, sinks=None, return_lse=False, out=None, backend=None):
    """Attention of packed query tokens over a paged KV cache.

    ``k_cache``/``v_cache`` are ``(num_blocks, block_size, Hkv, D|Dv)``; key j of sequence b lives
    in block ``block_table[b, j // block_size]`` at row ``j % block_size``; ``seqused_k`` (int32
    ``(B,)``) counts each sequence's keys. q is ``(T, Hq, D)``: without ``cu_seqlens_q`` one token
    per sequence (decode); with it, each sequence's query tokens are its last ones (chunked
    prefill, speculative decoding), so causal is lower-right aligned. ``max_seqlen_k`` bounds the
    keys per sequence (default: the block table's capacity). Returns ``out (T, Hq, Dv)`` and with
    ``return_lse=True`` the fp32 ``lse (Hq, T)``.

    The caches may have any strides: an HND cache ``(num_blocks, Hkv, block_size, D)`` is passed
    as ``cache.transpose(1, 2)``, and vLLM's per-layer ``(num_blocks, Hkv, block_size, 2*D)`` tensor
    as its two halves ``kv[..., :D].transpose(1, 2)`` and ``kv[..., D:].transpose(1, 2)``. No
    backend copies the cache; each backend's notes say how it reads it.
    """
    if _is_compiling():
        return _ops.paged_attention(q, k_cache, v_cache, block_table, seqused_k, cu_seqlens_q=cu_seqlens_q,
                                    max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, causal=causal,
                                    scale=scale, window=window, softcap=softcap, alibi_slopes=alibi_slopes,
                                    sinks=sinks, return_lse=return_lse, out=out, backend=backend)
    req, scale, window, softcap = _rq.paged_request(
        q, k_cache, v_cache, block_table, seqused_k, cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k, causal=causal, scale=scale, window=window, softcap=softcap,
        alibi_slopes=alibi_slopes, sinks=sinks, return_lse=return_lse, out=out)
    o, lse = _sel.run(req, backend, lambda b: b.paged(
        q, k_cache, v_cache, block_table, seqused_k, cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k, causal=causal, scale=scale, window=window, softcap=softcap,
        alibi_slopes=alibi_slopes, sinks=sinks, return_lse=return_lse, out=out))
    return (o, lse) if return_lse else o


_OP_REQUESTS = {"attention": _rq.dense_request, "varlen": _rq.varlen_request, "paged": _rq.paged_request}
_DEFAULTS = {"causal": False, "scale": None, "window": (-1, -1), "softcap": 0.0, "alibi_slopes": None,
             "sinks": None, "return_lse": False, "out": None}


def explain(*args, op="attention", backend=None, **kwargs):
    """The decision an op would make for these arguments, without running it.

    Takes the same arguments as the op named by ``op`` (``"attention"``, ``"varlen"`` or
    ``"paged"``). Returns a :class:`anyattn.selector.Decision`: ``.chosen``, and every candidate
    with its status and reasons; ``print()`` it for a table.
    """
    if op not in _OP_REQUESTS:
        raise ValueError(f"op: expected one of {', '.join(_OP_REQUESTS)}, got {op!r}")
    opts = dict(_DEFAULTS)
    if op == "paged":
        opts.update(causal=True, cu_seqlens_q=None, max_seqlen_q=1, max_seqlen_k=None)
    unknown = set(kwargs) - set(opts)
    if unknown:
        raise TypeError(f"explain: unexpected keyword arguments {sorted(unknown)} for op {op!r}")
    opts.update(kwargs)
    req = _OP_REQUESTS[op](*args, **opts)[0]
    from .tune import bucket_from_call  # the bucket of these shapes, for a measured (tuned) choice

    return _sel.explain_request(req, backend, bucket=bucket_from_call(op, args, opts))
