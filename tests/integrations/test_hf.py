"""attn_implementation="anyattn" in transformers, against attn_implementation="eager" (CPU, offline).

Tiny random-weight models built from configs (no downloads). Weights are drawn with std 0.1, so
attention logits spread over several units and softmax is far from uniform (a wrong mask, window
or softcap changes the logits well above the tolerance). Configs are deep-copied for every model
because transformers mutates them (``_attn_implementation``). Every model pair shares weights.
"""

import copy
import json
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import anyattn  # noqa: E402
import anyattn.hf  # noqa: E402
from anyattn.integrations import hf as ahf  # noqa: E402

ATOL = 1e-4  # fp32 logits of O(1): eager and anyattn differ by summation order only (~1e-6)
VOCAB = 97
WINDOW = 4  # shorter than every prompt, so the sliding layers really drop keys


def _configs():
    from transformers import (Gemma2Config, GptOssConfig, LlamaConfig, MistralConfig, Qwen2Config)

    small = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                 pad_token_id=0, bos_token_id=1, eos_token_id=None, tie_word_embeddings=False)
    return {
        "llama": LlamaConfig(**small),
        "qwen2": Qwen2Config(**small, use_sliding_window=False),
        "mistral": MistralConfig(**small, sliding_window=WINDOW),
        # head_dim 24 != hidden 64 / 4 heads; softcap 3 bites at these logit sizes.
        "gemma2": Gemma2Config(**small, head_dim=24, sliding_window=WINDOW, attn_logit_softcapping=3.0,
                               final_logit_softcapping=None, query_pre_attn_scalar=24,
                               layer_types=["sliding_attention", "full_attention"]),
        "gpt_oss": GptOssConfig(**{**small, "intermediate_size": 64}, head_dim=16, num_local_experts=4,
                                num_experts_per_tok=2, sliding_window=WINDOW,
                                layer_types=["sliding_attention", "full_attention"]),
    }


MODELS = ["llama", "qwen2", "mistral", "gemma2", "gpt_oss"]
_BASE = {}


def _base(name):
    """The eager model with its random weights (built once per name, then deep-copied)."""
    if name not in _BASE:
        from transformers import AutoModelForCausalLM

        torch.manual_seed(1234)
        model = AutoModelForCausalLM.from_config(copy.deepcopy(_configs()[name]), attn_implementation="eager")
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.1)
        _BASE[name] = model.float().eval()
    return _BASE[name]


def pair(name):
    eager = copy.deepcopy(_base(name))
    ours = copy.deepcopy(_base(name))
    ours.set_attn_implementation("anyattn")
    assert ours.config._attn_implementation == "anyattn"
    assert eager.config._attn_implementation == "eager"
    return eager, ours


def _ids(b, s, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (b, s), generator=g)


def _padding(lengths, s, side):
    m = torch.zeros(len(lengths), s, dtype=torch.long)
    for i, n in enumerate(lengths):
        if side == "left":
            m[i, s - n:] = 1
        else:
            m[i, :n] = 1
    return m


# ------------------------------------------------------------------------------------------
# Registration
# ------------------------------------------------------------------------------------------
def test_register_is_idempotent_and_wires_both_interfaces():
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    assert anyattn.hf.register() == "anyattn" == anyattn.hf.register()
    assert AttentionInterface._global_mapping["anyattn"] is ahf.attention_forward
    # Without the mask function transformers would hand the layers attention_mask=None.
    assert ALL_MASK_ATTENTION_FUNCTIONS["anyattn"] is ahf.mask_function
    for special in ("flash", "sdpa", "flex_attention"):
        assert special not in anyattn.hf.NAME


def test_from_config_with_anyattn():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(copy.deepcopy(_configs()["llama"]), attn_implementation="anyattn")
    assert model.config._attn_implementation == "anyattn"
    out = model(_ids(1, 5)).logits
    assert out.shape == (1, 5, VOCAB) and torch.isfinite(out).all()


def test_import_anyattn_does_not_import_transformers():
    code = "import sys, anyattn; print('transformers' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------
# Forward: plain, padded (left and right), padded == alone
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_plain_batch_matches_eager(name):
    eager, ours = pair(name)
    ids = _ids(2, 11)
    with torch.no_grad():
        ref, out = eager(ids).logits, ours(ids).logits
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", MODELS)
def test_padded_batch_matches_eager_and_each_sequence_alone(name, side):
    eager, ours = pair(name)
    lengths = [11, 6, 9]
    ids = _ids(3, 11, seed=1)
    mask = _padding(lengths, 11, side)
    with torch.no_grad():
        ref = eager(ids, attention_mask=mask).logits
        out = ours(ids, attention_mask=mask).logits
        valid = mask.bool()
        assert torch.isfinite(out[valid]).all()
        torch.testing.assert_close(out[valid], ref[valid], atol=ATOL, rtol=0)
        for i, n in enumerate(lengths):
            row = ids[i][valid[i]].unsqueeze(0)
            alone = ours(row).logits[0]
            torch.testing.assert_close(out[i][valid[i]], alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["gemma2", "gpt_oss"])
def test_forced_reference_backend_matches_eager(name):
    # The automatic choice on CPU is sdpa_flash/flex; the reference backend is the semantics oracle.
    eager, ours = pair(name)
    ids = _ids(2, 10, seed=2)
    mask = _padding([10, 7], 10, "left")
    with torch.no_grad(), anyattn.use_backend("reference"):
        out = ours(ids, attention_mask=mask).logits
    ref = eager(ids, attention_mask=mask).logits.detach()
    torch.testing.assert_close(out[mask.bool()], ref[mask.bool()], atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------------
# Packed (padding-free) batches
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["position_ids", "position_ids_no_cache", "flash_kwargs",
                                     "flash_kwargs_no_cache"])
@pytest.mark.parametrize("name", MODELS)
def test_flattened_batch_equals_documents_run_separately(name, variant):
    from transformers import DataCollatorWithFlattening

    eager, ours = pair(name)
    docs = [_ids(1, n, seed=10 + n)[0].tolist() for n in (7, 3, 9)]
    collator = DataCollatorWithFlattening(return_flash_attn_kwargs=variant.startswith("flash_kwargs"))
    batch = collator([{"input_ids": d} for d in docs])
    kwargs = {k: batch[k] for k in ("position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                                    "max_length_k") if k in batch}
    with torch.no_grad():
        # use_cache=False lets transformers' mask creation detect the packing itself; with a cache
        # (the default) only the position_ids reach the layers.
        packed = ours(batch["input_ids"], use_cache=not variant.endswith("no_cache"), **kwargs).logits[0]
        start = 0
        for d in docs:
            alone = eager(torch.tensor([d])).logits[0]
            torch.testing.assert_close(packed[start:start + len(d)], alone, atol=ATOL, rtol=0)
            start += len(d)


# ------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("name", MODELS)
def test_greedy_generate_matches_eager(name, cache):
    eager, ours = pair(name)
    ids = _ids(2, 7, seed=3)
    mask = _padding([7, 5], 7, "left")
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    if cache == "static":
        kw["cache_implementation"] = "static"
    with torch.no_grad():
        ref = eager.generate(ids, **kw)
        out = ours.generate(ids, **kw)
    assert out.shape == ref.shape == (2, 13)
    assert torch.equal(out, ref), (out, ref)


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------
def _grads(model, ids, mask, labels, checkpointing=False):
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.zero_grad()
    loss = model(ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# FlexAttention claims "grad" on CPU in anyattn's capability table, but torch 2.13 raises
# "FlexAttention does not support backward on CPU", so the automatic choice for softcap/sinks
# with grad fails there (reported to the owner of backends/flex.py). Until that is fixed, the
# softcap/sinks models train here with the automatic ranking minus flex.
_CPU_GRAD_PREFERENCE = {"gemma2": "sdpa_flash,sdpa_math,reference", "gpt_oss": "sdpa_flash,sdpa_math,reference"}


@pytest.mark.parametrize("name", MODELS)
def test_training_step_gradients_match_eager(name):
    import contextlib

    eager, ours = pair(name)
    ids = _ids(2, 10, seed=4)
    mask = _padding([10, 6], 10, "right")
    labels = ids.masked_fill(mask == 0, -100)
    ref_loss, ref = _grads(eager, ids, mask, labels)
    pref = _CPU_GRAD_PREFERENCE.get(name)
    with anyattn.use_backend(pref) if pref else contextlib.nullcontext():
        loss, got = _grads(ours, ids, mask, labels, checkpointing=name in ("llama", "gpt_oss"))
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=0)
    assert set(got) == set(ref)
    if name == "gpt_oss":
        assert any("sinks" in n for n in got)  # the sink logits learn through anyattn too
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], atol=5e-5, rtol=1e-3, msg=n)


def test_bf16_training_step_runs_and_tracks_fp32():
    eager, ours = pair("mistral")
    ours = ours.to(torch.bfloat16)
    ids = _ids(2, 9, seed=5)
    mask = _padding([9, 6], 9, "left")
    labels = ids.masked_fill(mask == 0, -100)
    loss, got = _grads(ours, ids, mask, labels)
    ref_loss, _ = _grads(eager, ids, mask, labels)
    assert all(torch.isfinite(g).all() for g in got.values())
    assert abs(float(loss) - float(ref_loss)) < 0.05 * float(ref_loss)


# ------------------------------------------------------------------------------------------
# torch.compile
# ------------------------------------------------------------------------------------------
def _one_layer(*models):
    for m in models:  # the forward loops over layers[:num_hidden_layers]; one layer halves the trace
        m.config.num_hidden_layers = 1
        m.model.layers = m.model.layers[:1]
    return models


def test_compiled_forward_matches_eager():
    # backend="eager" keeps this cheap on 2 CPU cores: Dynamo still traces the model, the mask
    # function and the attention function (the integration's part); code generation is torch's.
    torch._dynamo.reset()
    eager, ours = _one_layer(*pair("mistral"))
    compiled = torch.compile(ours, backend="eager")
    ids = _ids(2, 9, seed=6)
    mask = _padding([9, 6], 9, "left")
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids).logits, eager(ids).logits, atol=ATOL, rtol=0)
        out, ref = compiled(ids, attention_mask=mask).logits, eager(ids, attention_mask=mask).logits
    torch.testing.assert_close(out[mask.bool()], ref[mask.bool()], atol=ATOL, rtol=0)


@pytest.mark.parametrize("padded", [False, True], ids=["dense", "left-padded"])
def test_compiled_fullgraph_forward_matches_eager(padded):
    """The whole model traces as one graph: anyattn is one custom op per layer (aot_eager runs
    Dynamo + AOTAutograd with fake tensors, so the fake kernels are exercised)."""
    torch._dynamo.reset()
    eager, ours = _one_layer(*pair("llama"))
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)
    ids = _ids(2, 9, seed=7)
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :3] = 0
    with torch.no_grad():
        got, want = compiled(ids, attention_mask=mask).logits, eager(ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(got[keep], want[keep], atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------------
# Semantics details and errors
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("w", [1, 2, 5])
def test_sliding_window_maps_to_eager_mask_exactly(w):
    from transformers.masking_utils import sliding_window_causal_mask_function

    fn = sliding_window_causal_mask_function(w)
    left, right = ahf._resolve_window(True, None, w)
    s = 9
    t = torch.tensor
    for i in range(s):
        for j in range(s):
            ours = j <= i and i - j <= left and (right < 0 or j - i <= right)
            assert bool(fn(t(0), t(0), t(i), t(j))) == ours, (w, i, j)


def test_mask_function_reads_transformers_patterns():
    from transformers.masking_utils import (and_masks, causal_mask_function, chunked_causal_mask_function,
                                            or_masks, sliding_window_causal_mask_function)

    m = ahf.mask_function(2, 5, 5, mask_function=sliding_window_causal_mask_function(3))
    assert (m.causal, m.window, m.varlen) == (True, 3, None)
    with pytest.raises(ValueError, match="chunked_overlay"):
        ahf.mask_function(2, 5, 5, mask_function=chunked_causal_mask_function(4, torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="or_mask"):
        ahf.mask_function(2, 5, 5, mask_function=or_masks(causal_mask_function, lambda b, h, q, k: k == 0))
    with pytest.raises(ValueError, match="custom or_mask_function"):
        ahf.mask_function(2, 5, 5, mask_function=and_masks(causal_mask_function, causal_mask_function),
                          use_vmap=True)


def test_mask_with_holes_is_an_error():
    eager, ours = pair("llama")
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 3] = 0
    with pytest.raises(ValueError, match=r"contiguous run.*rows \[1\]"):
        ours(_ids(2, 8), attention_mask=mask)


def test_four_d_mask_and_dropout_are_errors():
    eager, ours = pair("llama")
    attn = ours.model.layers[0].self_attn
    q = torch.randn(1, 4, 5, 16)
    kv = torch.randn(1, 2, 5, 16)
    with pytest.raises(ValueError, match=r"4-D torch.float32 tensor of shape \(1, 1, 5, 5\)"):
        ahf.attention_forward(attn, q, kv, kv, torch.zeros(1, 1, 5, 5))
    with pytest.raises(ValueError, match="dropout=0.1"):
        ahf.attention_forward(attn, q, kv, kv, None, dropout=0.1)


def test_dense_path_passes_views_not_copies(monkeypatch):
    eager, ours = pair("llama")
    seen = []
    real = anyattn.attention

    def spy(q, k, v, **kw):
        seen.append((q._base is not None and k._base is not None, k.shape))
        return real(q, k, v, **kw)

    monkeypatch.setattr(anyattn, "attention", spy)
    with torch.no_grad():
        ours(_ids(2, 6))
    assert len(seen) == 2  # one call per layer
    assert seen[0][0]  # transformers' (B, H, S, D) transposed: views, not copies
    assert seen[0][1] == (2, 6, 2, 16)  # GQA keys not repeated


def test_explain_names_a_backend_per_layer_kind():
    _, ours = pair("gemma2")
    ex = anyattn.hf.explain(ours)
    kinds = {k["name"]: k for k in ex.kinds}
    assert set(kinds) == {"sliding", "full"}
    assert kinds["sliding"]["layers"] == [0] and kinds["full"]["layers"] == [1]
    assert "softcap 3" in kinds["full"]["features"] and f"sliding window {WINDOW}" in kinds["sliding"]["features"]
    for k in ex.kinds:
        assert k["dense"].chosen and k["varlen"].chosen
        assert k["dense"].request.softcap and k["dense"].request.window == (k["name"] == "sliding")
    assert "sliding layers 0" in str(ex) and "full layers 1" in str(ex)
    json.dumps(ex.to_dict())


# ------------------------------------------------------------------------------------------
# The GPU benchmark's CPU smoke mode
# ------------------------------------------------------------------------------------------
def test_hf_bench_tiny_runs_and_writes_json(tmp_path, capsys):
    from anyattn.integrations import hf_bench

    assert hf_bench.main(["--tiny", "--out", str(tmp_path), "--model", "llama3-8b"]) == 0
    data = json.loads((tmp_path / "hf_bench.json").read_text())
    rows = {(r["impl"], r["kind"]): r for r in data["results"]}
    for kind in ("prefill", "train", "decode"):
        for impl in ("anyattn", "sdpa", "eager"):
            assert rows[(impl, kind)]["tokens_per_s"] > 0, rows[(impl, kind)]
    assert data["explain"]["llama3-8b"]["kinds"][0]["dense"]["chosen"]
    assert "flash_attention_2" in data["env"]["unavailable"]
    assert "anyattn" in capsys.readouterr().out.split("wrote")[0]  # the table


def test_hf_bench_records_a_failing_case_and_goes_on(tmp_path, monkeypatch):
    from anyattn.integrations import hf_bench

    real = hf_bench._run_case

    def flaky(model, impl, kind, *a, **kw):
        if impl == "sdpa" and kind == "prefill":
            raise RuntimeError("boom")
        return real(model, impl, kind, *a, **kw)

    monkeypatch.setattr(hf_bench, "_run_case", flaky)
    hf_bench.main(["--tiny", "--out", str(tmp_path), "--model", "llama3-8b", "--impl", "anyattn", "--impl", "sdpa"])
    data = json.loads((tmp_path / "hf_bench.json").read_text())
    rows = {(r["impl"], r["kind"]): r for r in data["results"]}
    assert rows[("sdpa", "prefill")]["error"] == "RuntimeError: boom"
    assert rows[("sdpa", "train")]["tokens_per_s"] > 0 and rows[("anyattn", "decode")]["tokens_per_s"] > 0


def test_explain_sees_a_window_set_only_in_the_config():
    _, ours = pair("mistral")  # MistralAttention reads config.sliding_window in forward
    ex = anyattn.hf.explain(ours, training=True)
    assert [k["name"] for k in ex.kinds] == ["sliding"] and ex.kinds[0]["layers"] == [0, 1]
    assert ex.kinds[0]["dense"].request.grad and ex.kinds[0]["dense"].request.window


# ------------------------------------------------------------------------------------------
# The segment layout against the independent float64 formula (tests/naive.py)
# ------------------------------------------------------------------------------------------
class _Module(torch.nn.Module):
    def __init__(self, is_causal):
        super().__init__()
        self.is_causal = is_causal


def _qkv(b, hq, hkv, sq, sk, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, sq, d, generator=g)
    k = torch.randn(b, hkv, sk, d, generator=g)
    v = torch.randn(b, hkv, sk, d, generator=g)
    return q, k, v


def test_static_cache_layout_with_left_padding_matches_naive():
    from tests import naive
    from transformers.masking_utils import sliding_window_causal_mask_function

    # A static cache of 10 slots holding 5 past tokens; 2 new queries; slots 7..9 unfilled.
    q, k, v = _qkv(3, 4, 2, 2, 10, seed=1)
    k[:, :, 7:] = 1e4  # poison: unfilled slots must never be read
    v[:, :, 7:] = float("nan")
    pads = [0, 2, 4]
    mask = torch.ones(3, 7, dtype=torch.long)
    for i, p in enumerate(pads):
        mask[i, :p] = 0
    m = ahf.mask_function(3, 2, 10, q_offset=torch.tensor(5), kv_offset=0,
                          mask_function=sliding_window_causal_mask_function(3), attention_mask=mask)
    assert m.padded and m.window == 3
    out, weights = ahf.attention_forward(_Module(True), q, k, v, m, sliding_window=3, scaling=0.3)
    assert weights is None and out.shape == (3, 2, 4, 16)
    for i, p in enumerate(pads):
        ref, _ = naive.attend_one_sequence(q[i].transpose(0, 1), k[i, :, p:7].transpose(0, 1),
                                           v[i, :, p:7].transpose(0, 1), causal=True, window=(2, 0), scale=0.3)
        torch.testing.assert_close(out[i].double(), ref, atol=1e-5, rtol=0)


def test_cross_attention_padding_matches_naive():
    from tests import naive
    from transformers.masking_utils import bidirectional_mask_function

    q, k, v = _qkv(2, 4, 4, 3, 7, seed=2)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    dense = ahf.mask_function(2, 3, 7, mask_function=bidirectional_mask_function)
    assert dense.varlen is None and dense.causal is False
    m = ahf.mask_function(2, 3, 7, mask_function=bidirectional_mask_function, attention_mask=mask)
    out, _ = ahf.attention_forward(_Module(False), q, k, v, m)
    for i, n in enumerate((7, 4)):
        ref, _ = naive.attend_one_sequence(q[i].transpose(0, 1), k[i, :, :n].transpose(0, 1),
                                           v[i, :, :n].transpose(0, 1))
        torch.testing.assert_close(out[i].double(), ref, atol=1e-5, rtol=0)
    full, _ = ahf.attention_forward(_Module(False), q, k, v, dense)
    ref, _ = naive.attend_one_sequence(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1))
    torch.testing.assert_close(full[0].double(), ref, atol=1e-5, rtol=0)


def test_raw_two_d_mask_handed_to_the_layer_is_honoured():
    # A model that skips transformers' mask creation passes its (B, S) padding mask straight on.
    from tests import naive

    q, k, v = _qkv(2, 4, 2, 6, 6, seed=3)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0  # left padding
    for causal in (True, False):
        out, _ = ahf.attention_forward(_Module(causal), q, k, v, mask)
        ref, _ = naive.attend_one_sequence(q[1, :, 2:].transpose(0, 1), k[1, :, 2:].transpose(0, 1),
                                           v[1, :, 2:].transpose(0, 1), causal=causal)
        torch.testing.assert_close(out[1, 2:].double(), ref, atol=1e-5, rtol=0)
