"""attn_implementation="anyattn" on a GPU (run with ``python -m pytest -m gpu tests/integrations``).

The same tiny random-weight models as test_hf.py, on CUDA: fp32 against eager (tight), bf16
against the fp32 eager model (loose: bf16 rounding), greedy generation with the dynamic cache
and with the static cache (which generate() compiles on CUDA by itself), training gradients,
and packed batches. Here anyattn's automatic choice picks real GPU kernels (FlashAttention,
cuDNN, Triton...), so this is the check that those paths match eager's masks.
"""

import copy

import pytest
import torch

pytest.importorskip("transformers")

import anyattn  # noqa: E402
import anyattn.hf  # noqa: E402
from tests.integrations.test_hf import MODELS, _base, _grads, _ids, _padding  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def cuda_pair(name, dtype=torch.float32):
    eager = copy.deepcopy(_base(name)).cuda()
    ours = copy.deepcopy(_base(name)).to("cuda", dtype)
    ours.set_attn_implementation("anyattn")
    return eager, ours


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", MODELS)
def test_gpu_padded_batch_matches_eager(name, side, dtype):
    eager, ours = cuda_pair(name, dtype)
    ids = _ids(3, 40, seed=1).cuda()
    mask = _padding([40, 17, 29], 40, side).cuda()
    with torch.no_grad():
        ref = eager(ids, attention_mask=mask).logits
        out = ours(ids, attention_mask=mask).logits.float()
    v = mask.bool()
    tol = 2e-4 if dtype == torch.float32 else 0.15
    torch.testing.assert_close(out[v], ref[v], atol=tol, rtol=0)
    with torch.no_grad():
        plain = ours(ids).logits.float()
    torch.testing.assert_close(plain, eager(ids).logits, atol=tol, rtol=0)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("name", MODELS)
def test_gpu_greedy_generate_matches_eager(name, cache):
    eager, ours = cuda_pair(name)
    ids = _ids(2, 9, seed=3).cuda()
    mask = _padding([9, 6], 9, "left").cuda()
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    if cache == "static":
        kw["cache_implementation"] = "static"  # generate() compiles the decode step on CUDA
    with torch.no_grad():
        ref = eager.generate(ids, **kw)
        out = ours.generate(ids, **kw)
    assert torch.equal(out, ref), (out, ref)


@pytest.mark.parametrize("name", MODELS)
def test_gpu_training_gradients_match_eager(name):
    eager, ours = cuda_pair(name)
    ids = _ids(2, 33, seed=4).cuda()
    mask = _padding([33, 20], 33, "right").cuda()
    labels = ids.masked_fill(mask == 0, -100)
    ref_loss, ref = _grads(eager, ids, mask, labels)
    loss, got = _grads(ours, ids, mask, labels, checkpointing=True)
    torch.testing.assert_close(loss, ref_loss, atol=1e-4, rtol=0)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], atol=2e-4, rtol=1e-2, msg=n)


@pytest.mark.parametrize("name", MODELS)
def test_gpu_bf16_training_step_is_finite_and_close(name):
    eager, ours = cuda_pair(name, torch.bfloat16)
    ids = _ids(2, 33, seed=5).cuda()
    mask = _padding([33, 20], 33, "left").cuda()
    labels = ids.masked_fill(mask == 0, -100)
    loss, got = _grads(ours, ids, mask, labels)
    ref_loss, _ = _grads(eager, ids, mask, labels)
    assert all(torch.isfinite(g).all() for g in got.values())
    assert abs(float(loss) - float(ref_loss)) < 0.05 * float(ref_loss)


@pytest.mark.parametrize("name", MODELS)
def test_gpu_flattened_batch_equals_documents(name):
    from transformers import DataCollatorWithFlattening

    eager, ours = cuda_pair(name)
    docs = [_ids(1, n, seed=n)[0].tolist() for n in (37, 5, 22)]
    batch = DataCollatorWithFlattening(return_flash_attn_kwargs=True)([{"input_ids": d} for d in docs])
    for keys in (("position_ids",), ("position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")):
        kw = {k: (batch[k].cuda() if torch.is_tensor(batch[k]) else batch[k]) for k in keys}
        with torch.no_grad():
            packed = ours(batch["input_ids"].cuda(), **kw).logits[0]
        start = 0
        for d in docs:
            with torch.no_grad():
                alone = eager(torch.tensor([d], device="cuda")).logits[0]
            torch.testing.assert_close(packed[start:start + len(d)], alone, atol=2e-4, rtol=0)
            start += len(d)


def test_gpu_explain_picks_gpu_kernels():
    _, ours = cuda_pair("gemma2", torch.bfloat16)
    ex = anyattn.hf.explain(ours)
    print(ex)
    for k in ex.kinds:
        assert k["dense"].chosen not in (None, "reference"), k["dense"]
        assert k["varlen"].chosen not in (None, "reference"), k["varlen"]

