"""KV caches in the layouts engines keep, read in place by every backend (issue: KV layouts).

``paged_attention`` takes k/v caches of any strides. Each backend must serve every layout
correctly; the values are compared with the float64 formula, and the caches are checked to be
unmodified views (the call may not write to them).
"""

import pytest
import torch

import anyattn
from anyattn.backends import _padded
from tests import inputs, naive

CPU_PAGED = ["reference", "sdpa", "sdpa_math", "sdpa_flash", "flex"]


@pytest.mark.parametrize("layout", inputs.KV_LAYOUTS)
@pytest.mark.parametrize("backend", CPU_PAGED)
@pytest.mark.parametrize("chunked", [False, True], ids=["decode", "chunked"])
def test_paged_layouts_cpu(layout, backend, chunked):
    seqused = [5, 19, 1, 12]
    nq = [2, 3, 1, 4] if chunked else None
    q, kc, vc, table, used, cu_q, max_q = inputs.paged(seqused, nq, block_size=4, hq=6, hkv=2, d=24, seed=3)
    kl, vl = inputs.relayout(kc, vc, layout)
    assert layout == "nhd" or not kl.is_contiguous()
    before = kl.clone()
    out = anyattn.paged_attention(q, kl, vl, table, used, cu_seqlens_q=cu_q, max_seqlen_q=max_q, causal=True,
                                  backend=backend)
    ref = naive.paged(q, kc, vc, table, used, cu_q, causal=True)[0]
    assert torch.allclose(out.double(), ref, atol=3e-5), (out.double() - ref).abs().max()
    assert torch.equal(kl, before)


@pytest.mark.parametrize("unused_slot", [None, -1, 2**30], ids=["spare-page", "minus-one", "huge"])
@pytest.mark.parametrize("backend", CPU_PAGED)
def test_rows_past_seqused_are_never_read_into_the_output(backend, unused_slot):
    """NaN in the unused rows of each last page (and in unreferenced pages) must not reach the
    output: 0 x NaN is NaN, so a kernel that loads a page whole has to mask the values too. The
    block table's slots past a sequence's pages hold whatever the engine left there."""
    q, kc, vc, table, used, cu_q, max_q = inputs.paged([5, 19, 1, 12], [2, 3, 1, 4], block_size=8, hq=6, hkv=2,
                                                       d=24, seed=4, spare_blocks=3)
    ref = naive.paged(q, kc, vc, table, used, cu_q, causal=True)[0]
    inputs.poison_past_seqused(kc, vc, table, used)
    if unused_slot is not None:
        for b, n in enumerate(used.tolist()):
            table[b, -(-n // 8):] = unused_slot
    out = anyattn.paged_attention(q, kc, vc, table, used, cu_seqlens_q=cu_q, max_seqlen_q=max_q, causal=True,
                                  backend=backend)
    assert not torch.isnan(out).any()
    assert torch.allclose(out.double(), ref, atol=3e-5), (out.double() - ref).abs().max()


def test_gather_reads_strided_cache_without_flattening(monkeypatch):
    """The gathering fallback indexes (block, row) pairs: it never materialises the whole cache."""
    q, kc, vc, table, used, cu_q, max_q = inputs.paged([7, 3], block_size=4, hq=2, hkv=2, d=8, spare_blocks=50)
    kl, vl = inputs.relayout(kc, vc, "hnd")
    calls = []
    real_reshape = torch.Tensor.reshape

    def spy(self, *shape):
        if self.data_ptr() in (kl.data_ptr(), vl.data_ptr()):
            calls.append(shape)
        return real_reshape(self, *shape)

    monkeypatch.setattr(torch.Tensor, "reshape", spy)
    p = _padded.from_paged(q, kl, vl, table, used, None, 1, None)
    assert calls == []
    assert p.k.shape == (2, table.shape[1] * 4, 2, 8)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", inputs.KV_LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_paged_layouts_every_gpu_backend(layout, dtype):
    """Every backend that can serve paged decode / chunked prefill here, on every layout."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    failures, served = [], []
    for nq in (None, [3, 1, 5, 2]):
        seqused = [37, 300, 1, 129]
        q, kc, vc, table, used, cu_q, max_q = inputs.paged(seqused, nq, block_size=16, hq=8, hkv=2, d=128,
                                                           dtype=dtype, device="cuda", seed=5)
        kl, vl = inputs.relayout(kc, vc, layout)
        ref = naive.paged(q, kc, vc, table, used, cu_q, causal=True)[0]
        for name, err in _every_gpu_backend(q, kl, vl, table, used, cu_q, max_q, ref):
            served.append(name)
            if not err < 2e-2:
                failures.append(f"{name} nq={nq}: rel err {err:.3g}")
    assert "triton" in served and not failures, failures


def _every_gpu_backend(q, kc, vc, table, used, cu_q, max_q, ref):
    """(backend, relative error) for every backend that serves this paged call by name."""
    from anyattn import backends

    for name in backends.names():
        try:
            out = anyattn.paged_attention(q, kc, vc, table, used, cu_seqlens_q=cu_q, max_seqlen_q=max_q,
                                          causal=True, backend=name)
        except anyattn.NoBackendError:
            continue
        yield name, inputs.rel_err(out, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("block_size", [16, 128])
def test_rows_past_seqused_every_gpu_backend(block_size):
    """NaN past seqused_k on the GPU: every backend that serves the call by name must keep it out
    of the output, except one that declares finite unused rows as an input condition (FA4's TMA
    pages), which automatic selection passes over (printed: whether it leaks)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from anyattn import backends

    failures, served, leaks = [], [], []
    for nq in (None, [3, 1, 5, 2]):
        q, kc, vc, table, used, cu_q, max_q = inputs.paged([37, 300, 1, 129], nq, block_size=block_size, hq=8,
                                                           hkv=2, d=128, dtype=torch.bfloat16, device="cuda", seed=6)
        ref = naive.paged(q, kc, vc, table, used, cu_q, causal=True)[0]
        inputs.poison_past_seqused(kc, vc, table, used)
        auto = anyattn.explain(q, kc, vc, table, used, op="paged", cu_seqlens_q=cu_q, max_seqlen_q=max_q, causal=True)
        req = auto.request
        assert not backends.get(auto.chosen).input_conditions(req), auto.chosen
        for name, err in _every_gpu_backend(q, kc, vc, table, used, cu_q, max_q, ref):
            if not err < 2e-2:
                (leaks if backends.get(name).input_conditions(req) else failures).append(
                    f"{name} nq={nq}: rel err {err:.3g}")
            served.append(name)
        err = inputs.rel_err(anyattn.paged_attention(q, kc, vc, table, used, cu_seqlens_q=cu_q, max_seqlen_q=max_q,
                                                     causal=True), ref)
        if not err < 2e-2:
            failures.append(f"automatic selection nq={nq}: rel err {err:.3g}")
    print(f"page {block_size}: served by {sorted(set(served))}; leaks where declared: {leaks}")
    assert "triton" in served and not failures, failures
