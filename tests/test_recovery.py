"""Recovery and trust: a backend that fails at run time or fails the self-test is passed over.

Stand-in backends (module=None: "installed" wherever torch is) are ranked first for CPU dense
attention, then made to raise or to return wrong numbers.
"""

import json
import logging
import os
import subprocess
import sys
import time

import pytest
import torch

import anyattn
from anyattn import backends, selector, verify
from anyattn.backends.base import Backend, HeadDims, caps
from tests import inputs, naive


class _Flaky(Backend):
    """Serves CPU fp32 dense attention on paper; at run time raises ``self.exc`` (or returns
    ``self.wrong`` x the right answer when set)."""

    name = "flaky"
    module = None
    distribution = None
    caps = caps(devices={"cpu"}, dtypes={torch.float32}, ops={"attention"},
                features={"causal", "gqa", "lse", "sinks", "softcap", "alibi", "window"}, head_dims=HeadDims(max=128))

    def __init__(self, exc=None, wrong=None):
        super().__init__()
        self.exc, self.wrong, self.calls = exc, wrong, 0

    def attention(self, q, k, v, **kw):
        self.calls += 1
        if self.exc is not None:
            raise self.exc
        o, lse = backends.get("reference").attention(q, k, v, **kw)
        return (o * self.wrong if self.wrong is not None else o), lse


@pytest.fixture
def flaky(monkeypatch):
    made = []

    def make(exc=None, wrong=None, name="flaky", first=True):
        b = _Flaky(exc, wrong)
        b.name = name
        backends.register(b)
        made.append(name)
        if first:
            order = selector.AUTO_ORDER["cpu"]["attention"]
            monkeypatch.setitem(selector.AUTO_ORDER["cpu"], "attention", [name] + [n for n in order if n != name])
        return b

    yield make
    for name in made:
        backends.unregister(name)


@pytest.fixture(autouse=True)
def _own_verify_cache(tmp_path, monkeypatch):
    """Each test starts with no verify results (some tests write failures there)."""
    monkeypatch.setenv("ANYATTN_CACHE_DIR", str(tmp_path / "cache"))
    anyattn.clear_cache()
    yield
    anyattn.clear_cache()


def _qkv():
    return inputs.dense(b=1, sq=9, sk=11, hq=2, hkv=1, d=16, seed=3)


def _triton_oor():
    from triton.runtime.errors import OutOfResources

    return OutOfResources(232448, 101376, "shared memory")


def _inductor_error():
    # What Flex+sinks on CPU raised (issue 9); InductorError is a RuntimeError subclass.
    return RuntimeError("torch._inductor.exc.InductorError: LoweringException: NotImplementedError: torch.compile "
                        "on CPU only supports inference and `return_lse` is not supported yet.")


@pytest.mark.parametrize("make_exc", [lambda: NotImplementedError("no kernel for this shape"), _inductor_error,
                                      lambda: ImportError("libcudart.so.13: cannot open shared object file"),
                                      _triton_oor, lambda: AssertionError("kernel precondition")],
                         ids=["NotImplementedError", "InductorError", "ImportError", "OutOfResources", "assert"])
def test_automatic_mode_recovers_once_per_signature(flaky, caplog, make_exc):
    bad = flaky(exc=make_exc())
    q, k, v = _qkv()
    assert anyattn.explain(q, k, v, causal=True).chosen == "flaky"
    with caplog.at_level(logging.WARNING, logger="anyattn"):
        out = anyattn.attention(q, k, v, causal=True)
        out2 = anyattn.attention(q, k, v, causal=True)
    ref = naive.dense(q, k, v, causal=True)[0]
    assert torch.allclose(out.double(), ref, atol=2e-5) and torch.allclose(out2.double(), ref, atol=2e-5)
    assert bad.calls == 1, "the failed backend must not be retried for this signature"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    msg = warnings[0].getMessage()
    assert "flaky" in msg and type(bad.exc).__name__ in msg and "sdpa_flash serves" in msg, msg
    # explain() shows the learnt reason, and the replacement.
    d = anyattn.explain(q, k, v, causal=True)
    cand = next(c for c in d.candidates if c.name == "flaky")
    assert d.chosen == "sdpa_flash" and cand.status == "rejected"
    assert cand.reasons[0].startswith("failed at run time on this machine: " + type(bad.exc).__name__)
    # Another signature still tries the backend first: the reason is per signature.
    anyattn.attention(q, k, v, causal=False)
    assert bad.calls == 2


def test_a_call_declined_for_its_sizes_is_served_by_the_next_and_nothing_is_learnt(flaky, caplog):
    """CallDeclined (a kernel refusing one call's sizes, e.g. cuDNN at one query and one key) is
    not a fault of the signature: the next backend serves that call, the next call tries the
    first backend again, and no WARNING is logged."""
    from anyattn.backends.base import CallDeclined

    bad = flaky(exc=CallDeclined("torch's CUDNN_ATTENTION kernel refuses this call's sizes"))
    q, k, v = _qkv()
    with caplog.at_level(logging.WARNING, logger="anyattn"):
        out = anyattn.attention(q, k, v, causal=True)
        anyattn.attention(q, k, v, causal=True)
    assert torch.allclose(out.double(), naive.dense(q, k, v, causal=True)[0], atol=2e-5)
    assert bad.calls == 2, "a per-call refusal must not retire the backend for the signature"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert anyattn.explain(q, k, v, causal=True).chosen == "flaky"


def test_a_declined_call_whose_next_backend_fails_never_records_the_decliner(flaky, caplog):
    """A declines this call's sizes, B (next in line) then fails for real: B's failure is
    recorded and a third backend serves the call; A, which only refused one call, is not
    recorded as failing (recovery used to pick A again, meet its refusal and record it)."""
    from anyattn import selector
    from anyattn.backends.base import CallDeclined

    decliner = flaky(exc=CallDeclined("refuses this call's sizes"), first=False)
    flaky(exc=RuntimeError("boom"), name="flaky2", first=False)
    q, k, v = _qkv()
    pref = "flaky,flaky2,sdpa_math"
    with caplog.at_level(logging.WARNING, logger="anyattn"):
        out = anyattn.attention(q, k, v, backend=pref)
    assert torch.allclose(out.double(), naive.dense(q, k, v)[0], atol=2e-5)
    failed = {name for (_req, name) in selector._runtime_failures}
    assert "flaky2" in failed and "flaky" not in failed, failed
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 1 and "flaky2 (RuntimeError: boom)" in msgs[0] and "sdpa_math" in msgs[0], msgs
    assert decliner.calls == 1, "asked once for this call, not again by the recovery"
    anyattn.attention(q, k, v, backend=pref)
    assert decliner.calls == 2, "the decliner stays first in line for the next call"


def test_a_strict_name_that_declines_a_call_raises_no_backend_error_with_the_reason(flaky):
    from anyattn.backends.base import CallDeclined

    flaky(exc=CallDeclined("refuses this call's sizes (q (1, 2, 1, 16))"))
    q, k, v = _qkv()
    with pytest.raises(anyattn.NoBackendError, match="declined this call at run time: refuses this call") as info:
        anyattn.attention(q, k, v, backend="flaky")
    cand = next(c for c in info.value.decision.candidates if c.name == "flaky")
    assert cand.status == "rejected" and cand.reasons[0].startswith("declined this call at run time")


@pytest.mark.parametrize("second", ["declines", "fails"])
def test_when_no_listed_backend_serves_a_declined_call_no_backend_error_names_each(flaky, second):
    from anyattn.backends.base import CallDeclined

    flaky(exc=CallDeclined("first refuses"), first=False)
    exc = CallDeclined("second refuses") if second == "declines" else RuntimeError("boom")
    flaky(exc=exc, name="flaky2", first=False)
    q, k, v = _qkv()
    with pytest.raises(anyattn.NoBackendError) as info:
        anyattn.attention(q, k, v, backend="flaky,flaky2")
    text = str(info.value)
    assert "declined this call at run time: first refuses" in text
    assert ("declined this call at run time: second refuses" if second == "declines"
            else "failed at run time on this machine: RuntimeError: boom") in text


def test_strict_name_reraises_and_records_nothing(flaky):
    bad = flaky(exc=NotImplementedError("nope"))
    q, k, v = _qkv()
    with pytest.raises(NotImplementedError, match="nope"):
        anyattn.attention(q, k, v, backend="flaky")
    with pytest.raises(NotImplementedError):
        anyattn.attention(q, k, v, backend="flaky")
    assert bad.calls == 2
    assert anyattn.explain(q, k, v).chosen == "flaky"  # automatic still ranks it: nothing learnt


def test_ordered_list_falls_back_in_order(flaky, caplog):
    flaky(exc=RuntimeError("boom"), first=False)
    second = flaky(exc=NotImplementedError("also"), name="flaky2", first=False)
    q, k, v = _qkv()
    with caplog.at_level(logging.WARNING, logger="anyattn"):
        out = anyattn.attention(q, k, v, backend="flaky,flaky2,sdpa_math")
    assert torch.allclose(out.double(), naive.dense(q, k, v)[0], atol=2e-5)
    assert second.calls == 1
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 1 and "flaky (RuntimeError: boom), flaky2 (NotImplementedError: also)" in msgs[0]
    assert "sdpa_math serves" in msgs[0]
    d = anyattn.explain(q, k, v, backend="flaky,flaky2,sdpa_math")
    assert d.chosen == "sdpa_math"


def test_when_every_candidate_fails_the_first_error_surfaces(flaky):
    flaky(exc=RuntimeError("first"), first=False)
    flaky(exc=RuntimeError("second"), name="flaky2", first=False)
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match="first"):
        anyattn.attention(q, k, v, backend=["flaky", "flaky2"])


@pytest.mark.parametrize("exc", [ValueError("block_table: ids out of range"), TypeError("x: expected int"),
                                 torch.OutOfMemoryError("CUDA out of memory")], ids=["ValueError", "TypeError", "OOM"])
def test_callers_errors_are_not_retried(flaky, exc):
    bad = flaky(exc=exc)
    q, k, v = _qkv()
    with pytest.raises(type(exc)):
        anyattn.attention(q, k, v)
    with pytest.raises(type(exc)):
        anyattn.attention(q, k, v)
    assert bad.calls == 2 and anyattn.explain(q, k, v).chosen == "flaky"


def test_clear_cache_forgets_runtime_failures(flaky):
    bad = flaky(exc=NotImplementedError("x"))
    q, k, v = _qkv()
    anyattn.attention(q, k, v)
    assert anyattn.explain(q, k, v).chosen != "flaky"
    anyattn.clear_cache()
    assert anyattn.explain(q, k, v).chosen == "flaky"
    assert bad.calls == 1


# ------------------------------------------------------------------------------ verify
def test_verify_catches_wrong_numbers_and_selection_skips_it(flaky):
    bad = flaky(wrong=1.7)
    summary = verify.run("cpu", backends_=["flaky"], ops=["attention"], dtypes=[torch.float32],
                         families=["plain", "causal"], budget_s=60)
    assert summary["counts"] == {"fail": 2}
    r = summary["results"][0]
    assert r["status"] == "fail" and 0.5 < r["error"] < 1.0, r  # |1.7 - 1| = 0.7 relative
    assert r["reason"].startswith("failed the numerical self-test on this machine: relative error 0.7 at seqlen 40")
    assert f"torch {torch.__version__}" in r["reason"]
    on_disk = json.load(open(summary["cache"]))
    (entry,) = on_disk["machines"].values()
    assert entry["machine"]["torch"] == torch.__version__
    assert any(k.startswith("flaky==") and v["status"] == "fail" for k, v in entry["results"].items())

    q, k, v = _qkv()
    d = anyattn.explain(q, k, v)
    cand = next(c for c in d.candidates if c.name == "flaky")
    assert d.chosen == "sdpa_flash" and "relative error 0.7" in cand.reasons[0]
    out = anyattn.attention(q, k, v)
    assert torch.allclose(out.double(), naive.dense(q, k, v)[0], atol=2e-5)
    assert bad.calls == 2  # one failing case per cell in verify; the user's call never reached it
    # Forced by name: the user gets what they asked for, with the finding as a note.
    forced = anyattn.explain(q, k, v, backend="flaky")
    assert forced.chosen == "flaky"
    assert "forced by name" in next(c for c in forced.candidates if c.name == "flaky").notes[0]


def test_verify_passes_real_cpu_backends_and_marks_what_they_do_not_serve():
    summary = verify.run("cpu", backends_=["sdpa_math", "flex"], ops=["attention", "varlen"],
                         dtypes=[torch.float32], families=["plain", "softcap", "gqa"], budget_s=120)
    by = {(r["backend"], r["op"], r["family"]): r for r in summary["results"]}
    assert by[("sdpa_math", "attention", "softcap")]["status"] == "n/a"
    assert "soft-capping" in by[("sdpa_math", "attention", "softcap")]["reason"]
    for key in [("sdpa_math", "attention", "plain"), ("sdpa_math", "varlen", "gqa"), ("flex", "attention", "softcap"),
                ("flex", "varlen", "plain")]:
        assert by[key]["status"] == "pass" and by[key]["error"] < 1e-5, by[key]


@pytest.mark.parametrize("device,head_dim", [("cpu", 64), ("cuda", 128)])
def test_verify_cells_use_the_head_dim_of_their_device(monkeypatch, device, head_dim):
    """On CUDA the cells use head dim 128 (what models and the GPU suite compile for JIT backends)."""
    seen = []

    def fake_cases(*args, **kw):
        seen.append(kw["head_dim"])
        raise RuntimeError("no inputs needed")

    monkeypatch.setattr(verify, "cases", fake_cases)
    r = verify.verify_cell("sdpa_math", "attention", torch.float32, "plain", device)
    assert r.status == "n/a" and seen == [head_dim]


def test_verify_budget_skips_and_does_not_store_skips(flaky):
    flaky(wrong=2.0)
    summary = verify.run("cpu", backends_=["flaky"], ops=["attention"], dtypes=[torch.float32], budget_s=0.0)
    assert summary["counts"] == {"skipped": len(verify.FAMILIES)}
    assert summary["cache"] is None


def test_a_short_budget_reaches_every_backend(monkeypatch):
    """Backends take turns: a budget that runs out after a few slow cells has still run each
    backend's first cell (the main dtype, plain, every op), and the report is grouped by backend."""
    ran = []

    def slow_cell(name, op, dtype, family, device, quick=False):
        ran.append((name, op, family))
        time.sleep(0.05 if name == "sdpa_math" else 0.0)
        return verify.Result(name, "1", op, verify.dtype_name(dtype), family, "pass", error=0.0)

    monkeypatch.setattr(verify, "verify_cell", slow_cell)
    summary = verify.run("cpu", backends_=["sdpa_math", "flex", "sdpa"], budget_s=0.12, save_results=False)
    assert {name for name, _, _ in ran} == {"sdpa_math", "flex", "sdpa"}
    assert ran[:3] == [("sdpa_math", "attention", "plain"), ("flex", "attention", "plain"),
                       ("sdpa", "attention", "plain")]
    names = [r["backend"] for r in summary["results"]]
    assert names == sorted(names, key=["sdpa_math", "flex", "sdpa"].index)
    assert summary["counts"]["skipped"] > 0


def test_a_corrupt_cache_file_never_breaks_a_call(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYATTN_CACHE_DIR", str(tmp_path))
    (tmp_path / "verify.json").write_text("{not json")
    anyattn.clear_cache()
    q, k, v = _qkv()
    assert anyattn.explain(q, k, v).chosen == "sdpa_flash"


def test_verify_on_first_use_catches_a_wrong_backend(flaky, monkeypatch, caplog):
    bad = flaky(wrong=0.5)
    monkeypatch.setenv("ANYATTN_VERIFY", "1")
    q, k, v = _qkv()
    sinks = torch.tensor([0.2, -0.4])
    with caplog.at_level(logging.WARNING, logger="anyattn"):
        out = anyattn.attention(q, k, v, causal=True, sinks=sinks, softcap=4.0)
    ref = naive.dense(q, k, v, causal=True, sinks=sinks, softcap=4.0)[0]
    assert torch.allclose(out.double(), ref, atol=2e-5)
    assert bad.calls == 1  # the one quick check; never the user's call
    d = anyattn.explain(q, k, v, causal=True, sinks=sinks, softcap=4.0)
    assert "first-use self-test" in next(c for c in d.candidates if c.name == "flaky").reasons[0]
    assert any("flaky" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_verify_on_first_use_passes_a_good_backend(monkeypatch):
    monkeypatch.setenv("ANYATTN_VERIFY", "1")
    q, k, v = _qkv()
    out = anyattn.attention(q, k, v, window=(3, 1))
    assert torch.allclose(out.double(), naive.dense(q, k, v, window=(3, 1))[0], atol=2e-5)
    assert anyattn.explain(q, k, v, window=(3, 1)).chosen == "sdpa_flash"


def test_cli_verify_json(tmp_path):
    env = {**os.environ, "ANYATTN_CACHE_DIR": str(tmp_path), "ANYATTN_FLEX_COMPILE": "0"}
    cp = subprocess.run([sys.executable, "-m", "anyattn", "verify", "--json", "--backend", "sdpa_math",
                         "--op", "attention", "--dtype", "fp32", "--family", "plain", "--family", "lse"],
                        capture_output=True, text=True, env=env, timeout=120,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["counts"] == {"pass": 1, "n/a": 1} and doc["cache"] == str(tmp_path / "verify.json")
    assert {"anyattn", "torch", "driver", "device"} <= set(doc["machine"])


def test_doctor_reports_verify_failures(flaky):
    from anyattn.doctor import checks, facts

    flaky(wrong=1.7)
    verify.run("cpu", backends_=["flaky"], ops=["attention"], dtypes=[torch.float32], families=["plain"])
    f = facts.Facts()
    facts.collect_torch(f)
    facts.collect_verify(f)
    found = [x for x in checks.run_checks(f) if x.id == "verify_failed"]
    assert len(found) == 1 and found[0].subject == "flaky" and found[0].severity == "warning"
    assert "attention float32 plain" in found[0].title
    assert "relative error 0.7" in found[0].evidence["failures"][0]["reason"]
    assert any("anyattn verify --backend flaky" in line for line in found[0].fix)
    # Another torch's results are not this machine's state.
    f.torch["version"] = "0.0.1"
    facts.collect_verify(f)
    assert not [x for x in checks.run_checks(f) if x.id == "verify_failed"]


@pytest.mark.gpu
def test_verify_on_the_gpu(request, tmp_path):
    """`anyattn verify --quick` over every backend installed on the GPU but FlashInfer (its nvcc
    JIT takes minutes a variant: the release script's verify stage names it when its kernels are
    compiled): prints the summary; any failure is a finding (a backend wrong on this GPU) to
    declare as a reason. The budget keeps it inside the GPU suite's 240 s per test."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    summary = verify.run("cuda", backends_=[n for n in backends.names() if n != "flashinfer"], budget_s=150,
                         quick=True)
    fails = [r for r in summary["results"] if r["status"] == "fail"]
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print(f"\nverify on {summary['machine']['device']}: {summary['counts']} in {summary['wall_s']}s "
              f"(CPU {summary['cpu_s']}s)")
        for r in fails:
            print(f"  FAIL {r['backend']} {r['op']} {r['dtype']} {r['family']}: {r['reason']}")
    assert summary["counts"].get("pass", 0) > 0
    assert not fails, [f"{r['backend']} {r['op']} {r['dtype']} {r['family']}: {r['reason']}" for r in fails]
