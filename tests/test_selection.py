"""Selection: precedence, names, strict vs ordered lists, broken and unsupported backends."""

import importlib.util
import logging
import sys
import types

import pytest
import torch

import anyattn
from anyattn import backends, selector
from anyattn.backends.base import Backend, HeadDims, caps
from tests import inputs

UNDEFINED = ("/site-packages/flash_attn_2_cuda.cpython-311-x86_64-linux-gnu.so: undefined symbol: "
             "_ZNK2at6Tensor6deviceEv")


class _StandIn(Backend):
    """A CPU backend that records its calls and answers with the reference math."""

    name = "standin"
    aliases = ("stand_in", "STANDIN_ATTN")
    module = "anyattn_standin_mod"
    distribution = None
    caps = caps(devices={"cpu"}, dtypes={torch.float32}, ops={"attention"}, features={"causal", "gqa"},
                head_dims=HeadDims(max=64))

    def __init__(self):
        super().__init__()
        self.calls = 0

    def attention(self, q, k, v, **kw):
        self.calls += 1
        return backends.get("reference").attention(q, k, v, **kw)


class _Broken(_StandIn):
    name = "broken"
    aliases = ()

    def load(self):
        raise ImportError(UNDEFINED)


def _installed(monkeypatch, backend):
    """Make the stand-in's module look installed and register the backend for one test."""
    monkeypatch.setitem(sys.modules, "anyattn_standin_mod", types.ModuleType("anyattn_standin_mod"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "anyattn_standin_mod"
                        else _real_find_spec(name, *a))
    backends.register(backend)
    return backend


_real_find_spec = importlib.util.find_spec


@pytest.fixture
def standin(monkeypatch):
    yield _installed(monkeypatch, _StandIn())
    backends.unregister("standin")


@pytest.fixture
def broken(monkeypatch):
    yield _installed(monkeypatch, _Broken())
    backends.unregister("broken")


def _qkv(**kw):
    return inputs.dense(b=1, sq=5, sk=5, hq=2, hkv=2, d=16, **kw)


def test_argument_beats_context_beats_env(standin, monkeypatch):
    q, k, v = _qkv()
    monkeypatch.setenv("ANYATTN_BACKEND", "sdpa_math")
    assert anyattn.explain(q, k, v).chosen == "sdpa_math"
    assert anyattn.explain(q, k, v).source == "ANYATTN_BACKEND"
    with anyattn.use_backend("standin"):
        d = anyattn.explain(q, k, v)
        assert (d.chosen, d.source) == ("standin", "use_backend()")
        d = anyattn.explain(q, k, v, backend="reference")
        assert (d.chosen, d.source) == ("reference", "backend= argument")
        anyattn.attention(q, k, v)
    assert standin.calls == 1
    monkeypatch.delenv("ANYATTN_BACKEND")
    assert anyattn.explain(q, k, v).source == "automatic"


@pytest.mark.parametrize("alias,canonical", [
    ("FLASH_ATTN", "flash_attn"), ("flash-attn", "flash_attn"), ("fa2", "flash_attn"), ("FA3", "flash_attn_3"),
    ("FLASHINFER", "flashinfer"), ("TRITON_ATTN", "triton"), ("FLEX_ATTENTION", "flex"), ("torch_sdpa", "sdpa"),
    ("cudnn", "sdpa_cudnn"), ("XFORMERS", "xformers"), ("Math", "sdpa_math"), ("mem-efficient", "sdpa_efficient"),
    (" reference ", "reference"),
])
def test_aliases_case_insensitive(alias, canonical):
    assert selector.resolve_name(alias) == canonical


def test_unknown_name_lists_valid_names_and_suggests():
    with pytest.raises(ValueError) as err:
        selector.resolve_name("flash_atn")
    msg = str(err.value)
    assert "'flash_atn'" in msg and "Did you mean 'flash_attn'" in msg and "sdpa_cudnn" in msg
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="unknown name 'nope'"):
        anyattn.attention(q, k, v, backend="nope")


def test_unknown_name_in_env_is_an_error_not_ignored(monkeypatch):
    monkeypatch.setenv("ANYATTN_BACKEND", "flashinfr")
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="Did you mean 'flashinfer'"):
        anyattn.attention(q, k, v)


def test_single_name_is_strict(standin):
    q, k, v = _qkv()
    with pytest.raises(anyattn.NoBackendError) as err:
        anyattn.attention(q, k, v, window=(2, 2), backend="standin")
    msg = str(err.value)
    assert "'standin' was requested" in msg and "no sliding-window attention" in msg
    assert "strict" in msg
    assert standin.calls == 0


def test_list_is_ordered_preference_with_fallback(standin):
    q, k, v = _qkv()
    out = anyattn.attention(q, k, v, window=(2, 2), backend="standin,sdpa_math")
    d = anyattn.explain(q, k, v, window=(2, 2), backend=["standin", "sdpa_math"])
    assert d.chosen == "sdpa_math"
    assert [c.name for c in d.candidates[:2]] == ["standin", "sdpa_math"]
    assert d.candidates[0].status == "rejected"
    assert torch.allclose(out, anyattn.attention(q, k, v, window=(2, 2), backend="reference"), atol=1e-5)


def test_broken_import_is_a_reason_not_a_crash(broken):
    q, k, v = _qkv()
    d = anyattn.explain(q, k, v, backend="broken,reference")
    cand = d.candidates[0]
    assert cand.status == "unavailable"
    assert "undefined symbol: _ZNK2at6Tensor6deviceEv" in cand.reasons[0]
    assert d.chosen == "reference"
    anyattn.attention(q, k, v, backend="broken,reference")  # runs
    with pytest.raises(anyattn.NoBackendError, match="undefined symbol"):
        anyattn.attention(q, k, v, backend="broken")


def test_capability_reasons_read_like_sentences():
    from anyattn.request import Request

    req = Request(op="paged", device_type="cuda", device_index=0, capability=(7, 5), dtype=torch.bfloat16,
                  head_dim=320, head_dim_v=320, gqa_ratio=4, causal=True, window=False, softcap=True,
                  alibi=False, sinks=False, lse=False, out=False, grad=False, causal_offset=True, block_size=16)
    c = caps(devices={"cuda"}, dtypes={torch.float16}, ops={"attention"}, features={"causal"},
             head_dims=HeadDims(max=256), min_capability=(8, 0))
    reasons = c.reasons(req)
    assert "needs compute capability >= 8.0 (sm80); this GPU is 7.5 (sm75)" in reasons
    assert any(r.startswith("no paged op") for r in reasons)
    assert "dtype bfloat16 not supported (supported: float16)" in reasons
    assert "head_dim=320 outside the supported range 1..256" in reasons
    assert "no logit soft-capping" in reasons and "no grouped-query attention (Hq != Hkv)" in reasons
    wrong_device = c.reasons(req._replace(device_type="cpu", capability=None))
    assert wrong_device == ["runs on cuda, not cpu"]


def test_preference_list_that_cannot_serve_lists_every_reason():
    q, k, v = _qkv()
    with pytest.raises(anyattn.NoBackendError) as err:
        anyattn.attention(q, k, v, softcap=5.0, backend="sdpa_math,sdpa_cudnn")
    msg = str(err.value)
    assert msg.startswith("none of the requested backends (sdpa_math, sdpa_cudnn")
    assert "sdpa_math: no logit soft-capping" in msg and "sdpa_cudnn: runs on cuda, not cpu" in msg
    assert err.value.decision.chosen is None


def test_decision_is_cached_per_signature(monkeypatch):
    q, k, v = _qkv()
    calls = []
    real = selector.decide
    monkeypatch.setattr(selector, "decide", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    for _ in range(3):
        anyattn.attention(q, k, v, causal=True)
    q2, k2, v2 = inputs.dense(b=3, sq=9, sk=9, hq=2, hkv=2, d=16)  # other lengths, same signature
    anyattn.attention(q2, k2, v2, causal=True)
    assert len(calls) == 1
    anyattn.attention(q, k, v, causal=False)  # another signature
    assert len(calls) == 2


def test_choice_logged_once_at_info_with_rejections_at_debug(caplog):
    q, k, v = _qkv()
    with caplog.at_level(logging.DEBUG, logger="anyattn"):
        anyattn.attention(q, k, v, softcap=3.0)
        anyattn.attention(q, k, v, softcap=3.0)
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    debugs = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(infos) == 1 and "-> flex" in infos[0].getMessage()
    assert any("sdpa_flash" in r.getMessage() and "soft-capping" in r.getMessage() for r in debugs)


def test_explain_prints_a_table_and_serialises():
    from rich.console import Console

    q, k, v = _qkv()
    d = anyattn.explain(q, k, v, causal=True)
    console = Console(record=True, width=140)
    console.print(d)
    text = console.export_text()
    assert "sdpa_flash" in text and "chosen" in text and "runs on cuda, not cpu" in text
    js = d.to_dict()
    assert js["chosen"] == "sdpa_flash" and js["request"]["causal"] is True
    assert {c["name"] for c in js["candidates"]} >= {"reference", "flash_attn", "triton", "sdpa_cudnn"}
    assert "chosen: sdpa_flash" in str(d)


def test_forced_backend_never_silently_falls_back():
    q, k, v = _qkv()
    with pytest.raises(anyattn.NoBackendError, match="soft-capping"):
        anyattn.attention(q, k, v, softcap=5.0, backend="sdpa_flash")


def test_gpu_only_backends_say_so_on_cpu():
    q, k, v = _qkv()
    d = anyattn.explain(q, k, v)
    by_name = {c.name: c for c in d.candidates}
    for name in ("flash_attn", "flash_attn_3", "sdpa_cudnn", "sdpa_efficient"):
        assert by_name[name].reasons == ["runs on cuda, not cpu"], by_name[name].reasons


def test_training_ranks_triton_by_its_measured_backward():
    """Hopper: the Triton backward measured faster than the FA2 kernels (H200, docs/PERF.md §S/§T),
    so training keeps it ahead of sdpa_flash and the flash-attn package, behind FA4 and cuDNN.
    Elsewhere it is unmeasured and goes after every native backward."""
    from anyattn.selector import auto_order
    from tests.test_vendor_adapters import req

    hopper = auto_order(req(cap=(9, 0), grad=True))
    assert hopper.index("sdpa_cudnn") < hopper.index("triton") < hopper.index("sdpa_flash")
    assert hopper.index("triton") < hopper.index("flash_attn") and hopper.index("flash_attn_4") == 0
    ampere = auto_order(req(cap=(8, 0), grad=True))
    assert ampere.index("triton") > max(ampere.index(n) for n in ("flash_attn", "sdpa_flash", "sdpa_cudnn"))
    assert ampere.index("triton") < ampere.index("flex")
    # inference keeps the forward ranking everywhere
    assert auto_order(req(cap=(8, 0))).index("triton") < auto_order(req(cap=(8, 0))).index("flash_attn_4")
