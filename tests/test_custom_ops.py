"""anyattn under torch.compile: custom ops with fake kernels and autograd, no graph breaks.

The compiled runs use the ``aot_eager`` backend (Dynamo + AOTAutograd with fake tensors: every
piece anyattn registers is exercised, no C++ compile) except one Inductor test.
"""

import pytest
import torch
import torch._dynamo.testing

import anyattn
from anyattn import backends
from tests import inputs, naive


def _breaks(fn, *args):
    torch._dynamo.reset()
    return torch._dynamo.explain(fn)(*args).graph_break_count


def _dense(**kw):
    return inputs.dense(b=2, sq=7, sk=11, hq=4, hkv=2, d=32, noncontig=True, **kw)


@pytest.mark.parametrize("case", ["plain", "lse", "gqa-causal-window", "out", "sinks-softcap"])
def test_dense_traces_without_graph_breaks(case):
    q, k, v = _dense()
    sinks = torch.randn(4)
    out = torch.empty(2, 7, 4, 32)

    def fn(q, k, v):
        if case == "plain":
            return anyattn.attention(q, k, v) * 2
        if case == "lse":
            o, lse = anyattn.attention(q, k, v, return_lse=True, backend="reference")
            return o.sum() + lse.sum()
        if case == "gqa-causal-window":
            return anyattn.attention(q, k, v, causal=True, window=(3, 0)) + 1
        if case == "out":
            anyattn.attention(q, k, v, causal=True, out=out)
            return out * 2
        return anyattn.attention(q, k, v, sinks=sinks, softcap=5.0) - 1

    assert _breaks(fn, q, k, v) == 0
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), fn(q, k, v), rtol=1e-5, atol=1e-5)


def test_varlen_and_paged_trace_without_graph_breaks():
    q, k, v, cu_q, cu_k = inputs.varlen([3, 0, 5], [4, 2, 6], hq=4, hkv=2, d=16)
    pq, kc, vc, table, used, pcu, pmax = inputs.paged([5, 9, 1], [2, 3, 1], block_size=4, hq=4, hkv=2, d=16)

    def varlen(q, k, v):
        return anyattn.varlen_attention(q, k, v, cu_q, cu_k, 5, 6, causal=True) * 2

    def paged(q):
        dec = anyattn.paged_attention(q[:3], kc, vc, table, used)
        chunk, lse = anyattn.paged_attention(q, kc, vc, table, used, cu_seqlens_q=pcu, max_seqlen_q=pmax,
                                             return_lse=True, backend="reference")
        return dec.sum() + chunk.sum() + lse.sum()

    assert _breaks(varlen, q, k, v) == 0
    assert _breaks(paged, pq) == 0
    for fn, args in ((varlen, (q, k, v)), (paged, (pq,))):
        torch.testing.assert_close(torch.compile(fn, backend="aot_eager", fullgraph=True)(*args), fn(*args),
                                   rtol=1e-5, atol=1e-5)


def test_compiled_matches_float64_formula_inductor():
    q, k, v = _dense(seed=4)
    fn = torch.compile(lambda q, k, v: anyattn.attention(q, k, v, causal=True, window=(4, 0)), fullgraph=True)
    ref = naive.dense(q, k, v, causal=True, window=(4, 0))[0]
    assert torch.allclose(fn(q, k, v).double(), ref, atol=2e-5)


def _opcheck(op, args):
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("grad", [False, True])
def test_opcheck_attention(grad):
    q, k, v = (t.detach().requires_grad_(grad) for t in _dense(seed=1))
    sinks = torch.randn(4, requires_grad=grad)
    _opcheck(torch.ops.anyattn.attention.default,
             (q, k, v, None, sinks, True, 0.3, 4, 0, 2.0, True, grad, "reference"))
    _opcheck(torch.ops.anyattn.attention.default,
             (q, k, v, None, None, False, 0.2, -1, -1, 0.0, False, grad, ""))


def test_opcheck_into_and_backward_ops():
    q, k, v = _dense(seed=2)
    out = torch.empty(2, 7, 4, 32)
    _opcheck(torch.ops.anyattn.attention_into.default,
             (q, k, v, out, None, None, True, 0.2, -1, -1, 0.0, True, "reference"))
    o, lse = torch.ops.anyattn.attention.default(q, k, v, None, None, True, 0.2, -1, -1, 0.0, True, True,
                                                 "reference")
    _opcheck(torch.ops.anyattn.attention_backward.default,
             (torch.randn_like(o), None, q, k, v, o, lse, None, None, True, 0.2, -1, -1, 0.0, True, "reference"))


def test_opcheck_varlen_and_paged():
    q, k, v, cu_q, cu_k = inputs.varlen([3, 0, 5], [4, 2, 6], hq=4, hkv=2, d=16)
    q.requires_grad_()
    _opcheck(torch.ops.anyattn.varlen.default,
             (q, k, v, cu_q, cu_k, 5, 6, None, None, True, 0.25, -1, -1, 0.0, True, True, "reference"))
    pq, kc, vc, table, used, pcu, pmax = inputs.paged([5, 9, 1], [2, 3, 1], block_size=4, hq=4, hkv=2, d=16)
    _opcheck(torch.ops.anyattn.paged.default,
             (pq, kc, vc, table, used, pcu, pmax, None, None, None, True, 0.25, -1, -1, 0.0, True, False, ""))
    _opcheck(torch.ops.anyattn.paged.default,
             (pq[:3], kc, vc, table, used, None, 1, 16, None, None, True, 0.25, 2, 0, 0.0, False, False, "sdpa"))


def _grads(fn, tensors):
    for t in tensors:
        t.grad = None
    fn().backward()
    return [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("backend", [None, "reference", "sdpa_math"])
def test_compiled_training_step_matches_eager(backend):
    """Gradients through the custom op's autograd (recomputing backward) equal eager autograd's."""
    q, k, v = (t.requires_grad_() for t in _dense(seed=5))
    sinks = torch.randn(4, requires_grad=True) if backend == "reference" else None
    leaves = [q, k, v] + ([sinks] if sinks is not None else [])
    w = torch.randn(2, 7, 4, 32)

    def loss(q, k, v, sinks):
        o, lse = anyattn.attention(q, k, v, causal=True, window=(5, 0), sinks=sinks,
                                   return_lse=True, backend=backend) \
            if backend == "reference" else (anyattn.attention(q, k, v, causal=True, window=(5, 0),
                                                              backend=backend), None)
        total = (o * w).sum()
        return total + lse.sum() if lse is not None else total

    eager = _grads(lambda: loss(q, k, v, sinks), leaves)
    compiled_fn = torch.compile(loss, backend="aot_eager", fullgraph=True)
    compiled = _grads(lambda: compiled_fn(q, k, v, sinks), leaves)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-5)
    # and against the float64 formula
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = naive.dense_autograd(*ref_leaves[:3], causal=True, window=(5, 0),
                               sinks=ref_leaves[3] if sinks is not None else None)
    ref_loss = (ref[0] * w.double()).sum() + (ref[1].sum() if backend == "reference" else 0)
    ref_loss.backward()
    for c, r in zip(compiled, ref_leaves):
        assert torch.allclose(c.double(), r.grad, atol=1e-4), (c.double() - r.grad).abs().max()


def test_compiled_varlen_training_matches_float64():
    q, k, v, cu_q, cu_k = inputs.varlen([3, 0, 5, 2], [4, 2, 6, 2], hq=4, hkv=2, d=16, seed=6)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    fn = torch.compile(lambda q, k, v: anyattn.varlen_attention(q, k, v, cu_q, cu_k, 5, 6, causal=True).square()
                       .sum(), backend="aot_eager", fullgraph=True)
    grads = _grads(lambda: fn(q, k, v), leaves)
    # float64 reference: each sequence on its own (lengths 0 and 2 included)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    total = 0
    for b in range(len(cu_q) - 1):
        sl_q, sl_k = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        o = naive.dense_autograd(*(t[s].unsqueeze(0) for t, s in zip(ref_leaves, (sl_q, sl_k, sl_k))),
                                 causal=True)[0]
        total = total + o.square().sum()
    total.backward()
    for g, r in zip(grads, ref_leaves):
        assert torch.allclose(g.double(), r.grad, atol=1e-4), (g.double() - r.grad).abs().max()


def test_new_lengths_do_not_recompile():
    """Token counts and max_seqlen change every batch: one dynamic graph serves them all."""
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()

    def fn(q, k, v, cu_q, cu_k, mq, mk):
        return anyattn.varlen_attention(q, k, v, cu_q, cu_k, mq, mk, causal=True)

    compiled = torch.compile(fn, backend=counter, fullgraph=True)
    for lens in ([3, 5], [4, 7], [9, 2], [1, 12], [6, 6]):
        q, k, v, cu_q, cu_k = inputs.varlen(lens, lens, hq=4, hkv=2, d=16, seed=sum(lens))
        got = compiled(q, k, v, cu_q, cu_k, max(lens), max(lens))
        assert torch.allclose(got.double(), naive.varlen(q, k, v, cu_q, cu_k, causal=True)[0], atol=2e-5)
    assert counter.frame_count <= 2, counter.frame_count  # static first, then one dynamic graph


def test_out_with_grad_under_compile_is_a_clear_error():
    q, k, v = (t.requires_grad_() for t in _dense())
    out = torch.empty(2, 7, 4, 32)
    fn = torch.compile(lambda q, k, v: anyattn.attention(q, k, v, out=out), backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match="out: expected None when autograd needs a backward"):
        fn(q, k, v)


def test_strict_backend_that_cannot_serve_raises_through_the_op():
    q, k, v = _dense()
    with pytest.raises(anyattn.NoBackendError, match="sdpa_math"):
        anyattn.ops.attention(q, k, v, softcap=2.0, backend="sdpa_math")


def test_preference_in_force_at_trace_time_is_used(monkeypatch):
    ref = backends.get("reference")
    calls = []
    real = type(ref).attention

    def spy(self, *a, **kw):
        calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(type(ref), "attention", spy)
    q, k, v = _dense()
    torch._dynamo.reset()
    fn = torch.compile(lambda q, k, v: anyattn.attention(q, k, v) + 0, backend="aot_eager", fullgraph=True)
    with anyattn.use_backend("reference"):
        fn(q, k, v)
    assert calls


def test_eager_op_path_matches_direct_path_for_every_op():
    """anyattn.ops.* (what the compiler calls) and the eager fast path agree exactly."""
    q, k, v = _dense(seed=7)
    sinks = torch.randn(4)
    a = anyattn.attention(q, k, v, causal=True, sinks=sinks, return_lse=True, backend="flex")
    b = anyattn.ops.attention(q, k, v, causal=True, sinks=sinks, return_lse=True, backend="flex")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert b[0].is_contiguous() and b[1].is_contiguous()
    pq, kc, vc, table, used, pcu, pmax = inputs.paged([5, 9, 1], [2, 3, 1], block_size=4, hq=4, hkv=2, d=16)
    out = torch.full((6, 4, 16), float("nan"))
    got = anyattn.ops.paged_attention(pq, kc, vc, table, used, cu_seqlens_q=pcu, max_seqlen_q=pmax, out=out)
    assert got is out and not out.isnan().any()
    torch.testing.assert_close(out.double(), naive.paged(pq, kc, vc, table, used, pcu, causal=True)[0],
                               rtol=0, atol=2e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", [None, "triton", "sdpa_cudnn"])
def test_reduce_overhead_cuda_graphs(backend):
    """torch.compile(mode="reduce-overhead") replays CUDA graphs of a model that calls anyattn."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch._dynamo.reset()
    q, k, v = inputs.dense(b=2, sq=256, sk=256, hq=8, hkv=2, d=128, dtype=torch.bfloat16, device="cuda")
    proj = torch.nn.Linear(128, 128, device="cuda", dtype=torch.bfloat16)

    def layer(q, k, v):
        return proj(anyattn.attention(q, k, v, causal=True, backend=backend))

    compiled = torch.compile(layer, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad():
        for _ in range(3):
            got = compiled(q, k, v)
        ref = proj(naive.dense(q, k, v, causal=True)[0].to(device="cuda", dtype=torch.bfloat16))
    assert inputs.rel_err(got, ref) < 2e-2
