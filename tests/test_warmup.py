"""anyattn.warmup: every variant runs once, so a later CUDA-graph capture compiles nothing."""

import pytest
import torch

import anyattn


def test_warmup_runs_every_combination_on_cpu():
    done = anyattn.warmup(ops=("attention", "varlen", "paged"), dtypes=("fp32",), head_dims=((16, 8),),
                          num_heads=4, gqa_ratios=(1, 2), seqlens=(5,), batch_sizes=(2,), block_sizes=(4, 8),
                          variants=({"causal": True}, {"softcap": 2.0, "sinks": True}), device="cpu")
    # attention and varlen: 2 ratios x 2 variants; paged also x 2 block sizes
    assert len(done) == 4 + 4 + 8
    assert {w.op for w in done} == {"attention", "varlen", "paged"}
    assert all(w.backend for w in done), [str(w) for w in done]
    soft = [w for w in done if "softcap" in w.options]
    assert soft and all(w.backend in ("flex", "reference") for w in soft)  # SDPA has no softcap
    assert "block=8" in str(next(w for w in done if w.op == "paged" and w.shape.endswith("block=8")))


def test_warmup_rejects_a_ratio_that_does_not_divide_the_heads():
    with pytest.raises(ValueError, match="gqa_ratios: expected divisors of num_heads=6, got 4"):
        anyattn.warmup(num_heads=6, gqa_ratios=(4,), dtypes=("fp32",), device="cpu")


def _triton_cache_entries():
    """Compiled variants held by anyattn's Triton kernels (Triton keeps one cache per device)."""
    import triton

    from anyattn.kernels import triton_paged, triton_prefill

    total = 0
    for mod in (triton_prefill, triton_paged):
        for obj in vars(mod).values():
            if isinstance(obj, triton.runtime.jit.JITFunction):
                caches = getattr(obj, "device_caches", None)
                total += sum(len(c[0]) for c in caches.values()) if caches else len(getattr(obj, "cache", {}))
    return total


@pytest.mark.gpu
def test_capture_after_warmup_compiles_nothing():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    batch, seqlen, hq, hkv, d, bs = 8, 1000, 32, 8, 128, 16
    anyattn.warmup(ops=("paged",), num_heads=hq, gqa_ratios=(hq // hkv,), seqlens=(seqlen,), batch_sizes=(batch,),
                   block_sizes=(bs,), variants=({"causal": True},), backend="triton")
    before = _triton_cache_entries()
    q = torch.randn(batch, hq, d, device="cuda", dtype=torch.bfloat16)
    per = -(-seqlen // bs)
    kc = torch.randn(batch * per, bs, hkv, d, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    table = torch.arange(batch * per, device="cuda", dtype=torch.int32).view(batch, per)
    used = torch.full((batch,), seqlen, device="cuda", dtype=torch.int32)
    out = torch.empty_like(q)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        anyattn.paged_attention(q, kc, vc, table, used, out=out, backend="triton")
    assert _triton_cache_entries() == before, "a kernel was compiled during capture"
    graph.replay()
    ref = anyattn.paged_attention(q, kc, vc, table, used, backend="reference")
    assert (out.float() - ref.float()).abs().max() < 2e-2
