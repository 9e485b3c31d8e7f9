"""``anyattn tune``: the cache file, buckets, and automatic selection from measurements (CPU).

Timings here are written by hand (fake) into a real tune file for this machine's CPU key, so the
tests can say which backend must run for which shape; one end-to-end test measures real CPU
backends on a tiny shape.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

import anyattn
from anyattn import backends, selector, tune
from anyattn.backends.reference import ReferenceBackend
from anyattn.cli import build_parser
from tests import inputs


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYATTN_CACHE_DIR", str(tmp_path / "cache"))
    tune.forget()
    backends.reset()
    selector.clear_cache()
    yield tmp_path / "cache"
    tune.forget()
    backends.reset()
    selector.clear_cache()


def _cpu_req(sq=8, sk=8, b=1, causal=False):
    q, k, v = inputs.dense(b=b, sq=sq, sk=sk, hq=2, hkv=2, d=8)
    from anyattn.request import dense_request

    r = dense_request(q, k, v, causal=causal, scale=None, window=(-1, -1), softcap=0.0, alibi_slopes=None,
                      sinks=None, return_lse=False, out=None)[0]
    return r, (q, k, v)


def _write_fake(entries: dict, versions=None):
    """entries: {signature: {bucket tuple: (winner, {name: ms})}} -> this machine's CPU tune file."""
    key = tune.machine_key("cpu", None)
    table = tune.TuneTable(tune.tune_path(key), key, versions or {}, {})
    for sig, per in entries.items():
        for b, (winner, times) in per.items():
            table.entries.setdefault(sig, {})[b] = tune.Entry(winner, times, {"note": "fake"}, "fwd", {})
    if versions is None:
        table.versions = {n: backends.get(n).version() for per in entries.values() for _, t in per.values()
                          for n in t}
    tune.write_table(table)
    tune.forget()
    selector.clear_cache()
    return table


def test_cache_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("ANYATTN_CACHE_DIR", str(tmp_path / "x"))
    assert tune.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("ANYATTN_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tune.cache_dir() == tmp_path / "home" / ".cache" / "anyattn"


def test_buckets_are_ceil_log2_of_host_ints():
    assert tune.bucket(1024, 1024, 16) == (10, 10, 4)
    assert tune.bucket(1025, 2048, 17) == (11, 11, 5)
    assert tune.bucket(1, 1, 1) == (0, 0, 0)
    assert tune.bucket_name((3, 10, 4)) == "q3.k10.b4" and tune.parse_bucket("q3.k10.b4") == (3, 10, 4)
    q, kc, vc, table, used, _, _ = inputs.paged([5, 40], block_size=16, hq=2, hkv=2, d=8)
    assert tune.paged_bucket(kc, table, 1, None) == tune.bucket(1, table.shape[1] * 16, 2)
    assert tune.paged_bucket(kc, table, 1, 40) == (0, 6, 1)
    qv, kv, vv, cq, ck = inputs.varlen([3, 9], [4, 30], hq=2, hkv=2, d=8)
    assert tune.bucket_from_call("varlen", (qv, kv, vv, cq, ck, 9, 30), {}) == (4, 5, 1)


def test_file_roundtrip_and_staleness():
    r, _ = _cpu_req()
    sig = tune.signature(r)
    assert sig == "attention|float32|d8/8|gqa1|plain"
    table = _write_fake({sig: {(3, 3, 0): ("reference", {"reference": 0.5, "sdpa_math": 0.7, "sdpa_flash": None})}})
    got = tune.read_table(table.path, table.key)
    assert got.stale is None and got.entries[sig][(3, 3, 0)].winner == "reference"
    assert got.entries[sig][(3, 3, 0)].timings_ms["sdpa_flash"] is None
    assert got.versions["reference"] == torch.__version__
    doc = json.loads(table.path.read_text())
    assert doc["format"] == tune.FORMAT and doc["key"]["torch"] == torch.__version__
    assert tune.read_table(table.path, dict(table.key, driver="999.1")).stale.startswith("the file was written")
    doc["versions"]["reference"] = "0.0.1"
    table.path.write_text(json.dumps(doc))
    stale = tune.read_table(table.path, table.key)
    assert "backend versions changed" in stale.stale and f"reference 0.0.1 -> {torch.__version__}" in stale.stale
    doc["format"] = 999
    table.path.write_text(json.dumps(doc))
    assert tune.read_table(table.path, table.key) is None
    table.path.write_text("{not json")
    assert tune.read_table(table.path, table.key) is None


def test_no_tune_file_keeps_the_plain_backend_in_the_cache():
    r, _ = _cpu_req()
    be = selector.select(r)
    assert type(be).__name__ != "TunedChoice" and be.name == "sdpa_flash"


def _spy(monkeypatch, names):
    ran = []
    for n in names:
        b = backends.get(n)
        orig = b.attention

        def wrapped(*a, _n=n, _orig=orig, **kw):
            ran.append(_n)
            return _orig(*a, **kw)
        monkeypatch.setattr(b, "attention", wrapped)
    return ran


def test_selection_follows_the_measured_winner_per_bucket(monkeypatch):
    r, _ = _cpu_req()
    sig = tune.signature(r)
    _write_fake({sig: {
        (3, 3, 0): ("reference", {"reference": 0.40, "sdpa_math": 0.55, "sdpa_flash": 0.60}),
        (6, 6, 1): ("sdpa_math", {"reference": 0.90, "sdpa_math": 0.50, "sdpa_flash": 0.70}),
    }})
    ran = _spy(monkeypatch, ("reference", "sdpa_math", "sdpa_flash"))
    ref = ReferenceBackend()
    for (sq, b, want) in ((8, 1, "reference"), (64, 2, "sdpa_math"), (16, 1, "reference"), (128, 4, "sdpa_math")):
        q, k, v = inputs.dense(b=b, sq=sq, sk=sq, hq=2, hkv=2, d=8, seed=sq)
        ran.clear()
        out = anyattn.attention(q, k, v)
        assert ran == [want], (sq, b, ran)
        want_out = ref.attention(q, k, v, causal=False, scale=8 ** -0.5, window=(-1, -1), softcap=0.0,
                                 alibi_slopes=None, sinks=None, return_lse=False, out=None)[0]
        torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
        d = anyattn.explain(q, k, v)
        assert d.chosen == want and d.measured["winner"] == want, (sq, d.measured)
    cached = selector.select(r)
    assert type(cached).__name__ == "TunedChoice" and cached.name == "sdpa_flash"  # static choice as default
    ran.clear()
    q, k, v = inputs.dense(b=1, sq=8, sk=8, hq=2, hkv=2, d=8)
    anyattn.attention(q, k, v, backend="sdpa_flash")  # a forced backend ignores measurements
    assert ran == ["sdpa_flash"]


def test_explain_shows_the_measurement():
    r, (q, k, v) = _cpu_req()
    _write_fake({tune.signature(r): {(3, 3, 0): ("reference", {"reference": 0.40, "sdpa_flash": 0.60})}})
    d = anyattn.explain(q, k, v)
    text = str(d)
    assert "measured: anyattn tune chose reference for bucket q3.k3.b0, fwd: reference 0.400 ms, sdpa_flash 0.600 ms" in text
    cand = {c.name: c for c in d.candidates}
    assert cand["reference"].status == "chosen" and "measured fastest here" in cand["reference"].notes[0]
    assert cand["sdpa_flash"].notes[0] == "could serve; measured 0.600 ms"
    assert d.to_dict()["measured"]["timings_ms"] == {"reference": 0.40, "sdpa_flash": 0.60}
    q2, k2, v2 = inputs.dense(b=1, sq=100, sk=100, hq=2, hkv=2, d=8)
    far = anyattn.explain(q2, k2, v2)
    assert far.measured["shape_bucket"] == "q7.k7.b0" and "nearest measured to q7.k7.b0" in str(far)
    causal = anyattn.explain(q, k, v, causal=True)  # another signature: not measured
    assert causal.measured is None and causal.chosen == "sdpa_flash"


def test_stale_file_is_ignored_and_explained():
    r, (q, k, v) = _cpu_req()
    _write_fake({tune.signature(r): {(3, 3, 0): ("reference", {"reference": 0.4})}}, versions={"reference": "0.0.1"})
    assert anyattn.explain(q, k, v).chosen == "sdpa_flash"
    d = anyattn.explain(q, k, v)
    assert "tune file ignored: backend versions changed" in str(d) and d.measured["stale"]
    assert selector.select(r).name == "sdpa_flash" and type(selector.select(r)).__name__ != "TunedChoice"


def test_a_winner_that_cannot_serve_is_dropped():
    r, (q, k, v) = _cpu_req()
    _write_fake({tune.signature(r): {(3, 3, 0): ("triton", {"triton": 0.1, "sdpa_flash": 0.6})}},
                versions={})
    be = selector.select(r)  # triton cannot run on CPU: the static choice stays
    assert be.name == "sdpa_flash" and type(be).__name__ != "TunedChoice"


def test_end_to_end_cpu_tune_writes_winners(_cache):
    cases = [tune.Case("attention", 8, False, False, 1, 16, 16, 2, dtype="float32"),
             tune.Case("attention", 8, True, True, 2, 32, 32, 2, dtype="float32")]
    seen = []
    table = tune.run_tune(cases, device="cpu", reps=3, only=("sdpa_flash", "reference", "sdpa_math"),
                          include_slow=True, progress=lambda c, n, ms: seen.append((c.label(), n, ms)))
    assert table.path.exists() and table.path.parent == _cache
    assert {n for _, n, _ in seen} == {"sdpa_flash", "reference", "sdpa_math"}
    r0 = _cpu_req(16, 16, 1)[0]
    e = table.entries[tune.signature(r0)][(4, 4, 0)]
    assert e.winner in ("sdpa_flash", "reference", "sdpa_math") and e.mode == "fwd"
    assert e.timings_ms[e.winner] == min(t for t in e.timings_ms.values() if t)
    grad_sigs = [s for s in table.entries if "grad" in s]
    assert grad_sigs and table.entries[grad_sigs[0]][(5, 5, 1)].mode == "fwd+bwd"
    q, k, v = inputs.dense(b=1, sq=16, sk=16, hq=2, hkv=2, d=8)
    assert anyattn.explain(q, k, v).chosen == e.winner  # the file is used right away


def test_cli_dry_run_show_clear(capsys, _cache):
    p = build_parser()
    args = p.parse_args(["tune", "--device", "cpu", "--dry-run", "--ops", "attention,paged", "--head-dims", "8",
                         "--seqlens", "16", "--batches", "1", "--contexts", "32", "--block-sizes", "16",
                         "--grad", "no", "--causal", "no", "--dtype", "fp32"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "dense fwd d8 full 1x16" in out and "q4.k4.b0" in out and "sdpa_flash" in out
    assert "decode fwd d128 causal 1x32 block 16" in out
    args = p.parse_args(["tune", "--device", "cpu", "--show"])
    assert args.func(args) == 1 and "no tune file" in capsys.readouterr().out
    r, _ = _cpu_req()
    table = _write_fake({tune.signature(r): {(3, 3, 0): ("reference", {"reference": 0.4, "sdpa_flash": 0.5})}})
    assert args.func(args) == 0
    shown = capsys.readouterr().out
    assert "q3.k3.b0" in shown and "reference" in shown and "sdpa_flash 0.80x" in shown
    args = p.parse_args(["tune", "--device", "cpu", "--clear"])
    assert args.func(args) == 0 and not table.path.exists()
    args = p.parse_args(["tune", "--device", "cpu", "--ops", "bogus"])
    assert args.func(args) == 2




def test_which_with_a_shape_uses_the_measurement(capsys):
    r, _ = _cpu_req()
    _write_fake({tune.signature(r): {(3, 3, 0): ("reference", {"reference": 0.4, "sdpa_flash": 0.5})}})
    p = build_parser()
    args = p.parse_args(["which", "--device", "cpu", "--dtype", "fp32", "--head-dim", "8", "--seqlen", "8",
                         "--batch", "1", "--json"])
    assert args.func(args) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["chosen"] == "reference" and d["measured"]["bucket"] == "q3.k3.b0"
    args = p.parse_args(["which", "--device", "cpu", "--dtype", "fp32", "--head-dim", "8", "--json"])
    assert args.func(args) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["chosen"] == "sdpa_flash" and d["measured"] is None  # no shape: the static ranking


def test_candidates_leave_out_slow_and_redundant_backends(monkeypatch):
    r, (q, k, v) = _cpu_req()
    names = tune.candidates(r)
    assert "sdpa_flash" in names
    assert not {"reference", "sdpa_math", "sdpa"} & set(names)
    assert {"reference", "sdpa_math", "sdpa"} <= set(tune.candidates(r, include_slow=True))
    monkeypatch.setattr(tune, "SLOW_BACKWARD", ("sdpa_flash",))  # the mechanism Flex uses on GPUs
    g = r._replace(grad=True)
    assert "sdpa_flash" not in tune.candidates(g) and "sdpa_flash" in tune.candidates(r)
    assert "sdpa_flash" in tune.candidates(g, include_slow=True)
    assert tune.candidates(r, only=("reference",)) == ["reference"]
