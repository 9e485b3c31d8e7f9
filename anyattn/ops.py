"""anyattn's ops as ``torch.library`` custom ops: what torch.compile sees.

Each public op (``attention``, ``varlen_attention``, ``paged_attention``) is one opaque custom op
``torch.ops.anyattn.{attention,varlen,paged}`` with a fake (meta) implementation giving output
and LSE shapes, so ``torch.compile(fullgraph=True)`` traces a model that calls anyattn with no
graph break, and with dynamic shapes (``max_seqlen_*`` are SymInts) no recompilation when lengths
change. The backend is still chosen inside the op's real implementation, at run time, from the
cached decision for the request signature, so a compiled graph holds one op that still explains
itself.

Autograd is registered on each op: its backward is a second custom op
(``torch.ops.anyattn.*_backward``) that calls the chosen backend's ``*_backward`` method
(:class:`anyattn.backends.base.Backend`): a real backward kernel where the backend has one
(``backward_from_saved``: the forward then saves out and lse), otherwise a recomputation of the
forward under autograd.

Eager calls do not go through these ops: :mod:`anyattn.api` calls the backend directly, which
costs a few µs less per call and lets torch-native backends (SDPA, Flex) use autograd's own
backward with no recomputation. ``torch.compiler.is_compiling()`` picks the path. The functions
here can also be called eagerly (the tests do, and ``torch.library.opcheck`` checks them).

Layout contract (the fake kernels promise it, the real ones keep it): ``out`` is contiguous
``(B, Sq, Hq, Dv)`` / ``(T, Hq, Dv)``; ``lse`` contiguous fp32 ``(B, Hq, Sq)`` / ``(Hq, T)`` when
``return_lse`` or ``grad`` (else empty). ``out=`` goes to the ``*_into`` ops, which mutate it and
return only the lse: a custom op may neither return an alias of an input nor carry autograd
while it mutates one, so ``out=`` is for inference. Gradients have the layout
``torch.empty_like`` gives their input.
"""

from __future__ import annotations

import torch

from . import request as _rq
from . import selector as _sel

_SOURCE = "custom op"
_lib = torch.library.Library("anyattn", "FRAGMENT")

_OPTIONS = ("Tensor? alibi_slopes, Tensor? sinks, bool causal, float scale, int window_left, "
            "int window_right, float softcap, bool return_lse")
_SCHEMAS = {
    "attention": "attention(Tensor q, Tensor k, Tensor v, {opts}, bool grad, str backend) -> (Tensor, Tensor)",
    "attention_into": "attention_into(Tensor q, Tensor k, Tensor v, Tensor(a!) out, {opts}, str backend)"
                      " -> Tensor",
    "attention_backward": "attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v,"
                          " Tensor out, Tensor lse, {opts}, str backend) -> (Tensor, Tensor, Tensor, Tensor)",
    "varlen": "varlen(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k,"
              " SymInt max_seqlen_q, SymInt max_seqlen_k, {opts}, bool grad, str backend) -> (Tensor, Tensor)",
    "varlen_into": "varlen_into(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k,"
                   " SymInt max_seqlen_q, SymInt max_seqlen_k, Tensor(a!) out, {opts}, str backend) -> Tensor",
    "varlen_backward": "varlen_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v,"
                       " Tensor cu_seqlens_q, Tensor cu_seqlens_k, SymInt max_seqlen_q, SymInt max_seqlen_k,"
                       " Tensor out, Tensor lse, {opts}, str backend) -> (Tensor, Tensor, Tensor, Tensor)",
    "paged": "paged(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, Tensor seqused_k,"
             " Tensor? cu_seqlens_q, SymInt max_seqlen_q, SymInt? max_seqlen_k, {opts},"
             " bool grad, str backend) -> (Tensor, Tensor)",
    "paged_into": "paged_into(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, Tensor seqused_k,"
                  " Tensor? cu_seqlens_q, SymInt max_seqlen_q, SymInt? max_seqlen_k, Tensor(a!) out, {opts},"
                  " str backend) -> Tensor",
    "paged_backward": "paged_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k_cache,"
                      " Tensor v_cache, Tensor block_table, Tensor seqused_k, Tensor? cu_seqlens_q,"
                      " SymInt max_seqlen_q, SymInt? max_seqlen_k, Tensor out, Tensor lse, {opts},"
                      " str backend) -> (Tensor, Tensor, Tensor, Tensor)",
}
if not hasattr(torch.ops.anyattn, "attention"):  # a reload of this module must not define twice
    for _schema in _SCHEMAS.values():
        _lib.define(_schema.format(opts=_OPTIONS))


# --------------------------------------------------------------------------------------------
# Shapes (shared by the fake and the real kernels, so they cannot disagree)
# --------------------------------------------------------------------------------------------
def _lse_shape(op, q, wanted):
    if not wanted:
        return (0,)
    if op == "attention":
        return (q.shape[0], q.shape[2], q.shape[1])  # (B, Hq, Sq)
    return (q.shape[1], q.shape[0])  # (Hq, T)


def _fake_outputs(op, q, v, return_lse, grad):
    return (q.new_empty((*q.shape[:-1], v.shape[-1])),
            q.new_empty(_lse_shape(op, q, return_lse or grad), dtype=torch.float32))


def _grads_like(q, k, v, sinks):
    ds = torch.empty_like(sinks) if sinks is not None else q.new_empty(0, dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), ds


def _in_layout_of(t, like):
    """``t`` with the strides ``torch.empty_like(like)`` has (what the fake kernel promised)."""
    target = torch.empty_like(like)
    if t.stride() == target.stride() and t.dtype == target.dtype:
        return t
    return target.copy_(t)


# --------------------------------------------------------------------------------------------
# Real kernels: build the request, select (cached), run, keep the promised layout
# --------------------------------------------------------------------------------------------
_REQUESTS = {"attention": _rq.dense_request, "varlen": _rq.varlen_request, "paged": _rq.paged_request}


def _split(op, args):
    """(positional data, keyword options) of an op's arguments as its schema orders them."""
    n = _N_DATA[op]
    alibi_slopes, sinks, causal, scale, window_left, window_right, softcap, return_lse = args[n:n + _N_OPTIONS]
    data = args[:n]
    opts = dict(causal=causal, scale=scale, window=(window_left, window_right), softcap=softcap,
                alibi_slopes=alibi_slopes, sinks=sinks)
    if op == "paged":  # the lengths of paged are keyword arguments of the Python API
        opts.update(cu_seqlens_q=data[5], max_seqlen_q=data[6], max_seqlen_k=data[7])
        data = data[:5]
    return data, opts, return_lse


def _request(op, data, opts, return_lse, out, grad):
    return _REQUESTS[op](*data, **opts, return_lse=return_lse, out=out, grad=grad)[0]


def _concrete(b, op, data, opts):
    # A tuned choice (anyattn tune) dispatches per length bucket; forward and backward must use
    # the one backend this call's bucket picks.
    return b.resolve(op, data, opts) if hasattr(b, "resolve") else b


# The dispatch state of plain eager code, taken at import. A compiled graph runs this op's kernel
# with every key above the backend excluded (functorch's vmap layers among them); backends that
# use vmap or torch.compile themselves (FlexAttention) then fail, so the backend runs as it would
# eagerly. Autograd stays off (no_grad): the op's own autograd formula owns the graph.
_EAGER_DISPATCH = (torch._C._dispatch_tls_local_include_set(), torch._C._dispatch_tls_local_exclude_set())


def _as_eager(fn, *args, **kwargs):
    with torch._C._ForceDispatchKeyGuard(*_EAGER_DISPATCH), torch.no_grad():
        return fn(*args, **kwargs)


def _forward(op, args, out, grad, backend):
    data, opts, return_lse = _split(op, args)
    req = _request(op, data, opts, return_lse, out, grad)

    def call(b):  # through selector.run_preference: a backend failing at run time is recovered from
        b = _concrete(b, op, data, opts)
        want = return_lse or (grad and b.backward_from_saved)
        return want, _as_eager(getattr(b, op), *data, **opts, return_lse=want, out=out)  # op = method name

    want_lse, (o, lse) = _sel.run_preference(req, backend or None, _SOURCE, call)
    if want_lse:
        lse = lse if lse.is_contiguous() else lse.contiguous()
    else:  # unused by this backend's backward (it recomputes), but the fake promised the shape
        lse = data[0].new_zeros(_lse_shape(op, data[0], return_lse or grad), dtype=torch.float32)
    if out is None and not o.is_contiguous():
        o = o.contiguous()
    return o, lse


def _functional_impl(op):
    def impl(*args):
        return _forward(op, args[:-2], None, args[-2], args[-1])
    return impl


def _into_impl(op):
    def impl(*args):
        n = _N_DATA[op]
        out = args[n]
        return _forward(op, args[:n] + args[n + 1:-1], out, False, args[-1])[1]
    return impl


def _backward_impl(op):
    def impl(grad_out, grad_lse, *args):
        n = _N_DATA[op]
        out, lse = args[n], args[n + 1]
        data, opts, return_lse = _split(op, args[:n] + args[n + 2:-1])
        req = _request(op, data, opts, return_lse, None, True)
        b = _concrete(_sel.select_preference(req, args[-1] or None, _SOURCE), op, data, opts)
        # Without return_lse the lse output is internal: nothing the user computed flows into it.
        grads = _as_eager(getattr(b, op + "_backward"), grad_out, grad_lse if return_lse else None, *data,
                          out=out, lse=lse, **opts)
        dq, dk, dv, ds = grads
        q, k, v, sinks = data[0], data[1], data[2], opts["sinks"]
        if sinks is not None:
            ds = torch.zeros_like(sinks) if ds is None else ds.to(sinks.dtype)
        else:
            ds = q.new_empty(0, dtype=torch.float32)
        return _in_layout_of(dq, q), _in_layout_of(dk, k), _in_layout_of(dv, v), ds
    return impl


_N_DATA = {"attention": 3, "varlen": 7, "paged": 8}  # tensors and lengths before the options
_N_OPTIONS = 8  # alibi_slopes, sinks, causal, scale, window_left, window_right, softcap, return_lse

for _op in _N_DATA:
    # One Python kernel for every device: the backend it picks decides where the work runs.
    _lib.impl(_op, _functional_impl(_op), "CompositeExplicitAutograd")
    _lib.impl(_op + "_into", _into_impl(_op), "CompositeExplicitAutograd")
    _lib.impl(_op + "_backward", _backward_impl(_op), "CompositeExplicitAutograd")


# --------------------------------------------------------------------------------------------
# Fake kernels
# --------------------------------------------------------------------------------------------
def _register_fakes(op):
    n = _N_DATA[op]

    def fake(*args):  # args[2] is v (or v_cache): its last dim is Dv
        return _fake_outputs(op, args[0], args[2], args[n + 7], args[-2])

    def fake_into(*args):
        q = args[0]
        return q.new_empty(_lse_shape(op, q, args[n + 1 + 7]), dtype=torch.float32)

    def fake_backward(grad_out, grad_lse, *args):
        return _grads_like(args[0], args[1], args[2], args[n + 2 + 1])

    torch.library.register_fake(f"anyattn::{op}", fake, lib=_lib)
    torch.library.register_fake(f"anyattn::{op}_into", fake_into, lib=_lib)
    torch.library.register_fake(f"anyattn::{op}_backward", fake_backward, lib=_lib)


# --------------------------------------------------------------------------------------------
# Autograd: save what the backward op needs, call it
# --------------------------------------------------------------------------------------------
def _register_autograd(op):
    n = _N_DATA[op]
    backward_op = getattr(torch.ops.anyattn, op + "_backward").default

    def setup_context(ctx, inputs, output):
        # Tensors go through save_for_backward; lengths (ints, SymInts, None) ride on ctx.
        ctx.extra = [None if isinstance(x, torch.Tensor) else x for x in inputs[3:n]]
        ctx.scalars = inputs[n + 2:n + _N_OPTIONS] + (inputs[-1],)
        ctx.has_sinks = inputs[n + 1] is not None
        tensors = [x if isinstance(x, torch.Tensor) else None for x in inputs[:n]]
        ctx.save_for_backward(*tensors, output[0], output[1], inputs[n], inputs[n + 1])

    def backward(ctx, grad_out, grad_lse):
        saved = ctx.saved_tensors
        data = list(saved[:n])
        for i, x in enumerate(ctx.extra):
            if x is not None:
                data[3 + i] = x
        out, lse, alibi_slopes, sinks = saved[n:]
        dq, dk, dv, ds = backward_op(grad_out.contiguous(), grad_lse, *data, out, lse, alibi_slopes, sinks,
                                     *ctx.scalars)
        # One gradient per forward input: q, k, v get theirs, sinks its own; the lengths,
        # alibi_slopes, the six scalar options, grad and backend get none.
        return (dq, dk, dv, *[None] * (n - 3), None, ds if ctx.has_sinks else None,
                *[None] * (_N_OPTIONS - 2), None, None)

    torch.library.register_autograd(f"anyattn::{op}", backward, setup_context=setup_context, lib=_lib)


for _op in _N_DATA:
    _register_fakes(_op)
    _register_autograd(_op)


# --------------------------------------------------------------------------------------------
# Python entry points with the public ops' signatures (validation included)
# --------------------------------------------------------------------------------------------
def _call(op, data, out, alibi_slopes, sinks, causal, scale, window, softcap, return_lse, grad, backend):
    opts = (alibi_slopes, sinks, bool(causal), scale, window[0], window[1], softcap, bool(return_lse))
    pref = _sel.preference_string(backend)
    if out is None:
        o, lse = getattr(torch.ops.anyattn, op).default(*data, *opts, grad, pref)
        return (o, lse) if return_lse else o
    if grad:
        raise ValueError("out: expected None when autograd needs a backward (a tensor requires grad), "
                         "got a tensor; drop out= for training or run under torch.no_grad()")
    lse = getattr(torch.ops.anyattn, op + "_into").default(*data[:_N_DATA[op]], out, *opts, pref)
    return (out, lse) if return_lse else out


def attention(q, k, v, *, causal=False, scale=None, window=(-1, -1), softcap=0.0, alibi_slopes=None,
              sinks=None, return_lse=False, out=None, backend=None):
    """:func:`anyattn.attention` through ``torch.ops.anyattn.attention``."""
    scale, window, softcap, _ = _rq.dense_checks(
        q, k, v, causal=causal, scale=scale, window=window, softcap=softcap, alibi_slopes=alibi_slopes,
        sinks=sinks, return_lse=return_lse, out=out)
    return _call("attention", (q, k, v), out, alibi_slopes, sinks, causal, scale, window, softcap, return_lse,
                 _rq.grad_needed(q, k, v, sinks), backend)


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=False,
                     scale=None, window=(-1, -1), softcap=0.0, alibi_slopes=None, sinks=None,
                     return_lse=False, out=None, backend=None):
    """:func:`anyattn.varlen_attention` through ``torch.ops.anyattn.varlen``."""
    scale, window, softcap, _ = _rq.varlen_checks(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal, scale=scale,
        window=window, softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks, return_lse=return_lse, out=out)
    return _call("varlen", (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k), out, alibi_slopes,
                 sinks, causal, scale, window, softcap, return_lse, _rq.grad_needed(q, k, v, sinks), backend)


def paged_attention(q, k_cache, v_cache, block_table, seqused_k, *, cu_seqlens_q=None, max_seqlen_q=1,
                    max_seqlen_k=None, causal=True, scale=None, window=(-1, -1), softcap=0.0,
                    alibi_slopes=None, sinks=None, return_lse=False, out=None, backend=None):
    """:func:`anyattn.paged_attention` through ``torch.ops.anyattn.paged``."""
    scale, window, softcap, _ = _rq.paged_checks(
        q, k_cache, v_cache, block_table, seqused_k, cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k, causal=causal, scale=scale, window=window, softcap=softcap,
        alibi_slopes=alibi_slopes, sinks=sinks, return_lse=return_lse, out=out)
    data = (q, k_cache, v_cache, block_table, seqused_k, cu_seqlens_q, max_seqlen_q, max_seqlen_k)
    return _call("paged", data, out, alibi_slopes, sinks, causal, scale, window, softcap, return_lse,
                 _rq.grad_needed(q, k_cache, v_cache, sinks), backend)
