"""Property-based fuzzing: op x features x dtype x shapes x strides x backend vs float64.

Every drawn case runs through the public API with one backend forced by name (strict). The
backend either serves it, and the result must match the independent float64 formula in
tests/naive.py, or declines it with a reason (``NoBackendError``); anything else (an exception,
NaN, a wrong number) fails the test. Shapes include odd lengths, Sq != Sk, empty sequences and
length 1; layouts include transposed, sliced and expanded (stride-0) tensors.

CI runs a fixed seed and a rotating one (the date, or ``ANYATTN_FUZZ_SEED``); a failure prints
its case as JSON and a one-line reproducer::

    python -m tests.test_fuzz '<case json>' cpu|cuda

The GPU variant (``-m gpu``) draws >= 10,000 cases over every backend installed on the GPU
(``ANYATTN_FUZZ_BACKENDS=a,b`` narrows it) and prints the counts per backend at the end.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import Counter

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")  # in the `test` extra; never silently absent in CI
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import anyattn  # noqa: E402
from tests import inputs, naive  # noqa: E402

# "auto": no backend named, so automatic selection (and its recovery) must serve every case.
CPU_BACKENDS = ["sdpa", "sdpa_flash", "sdpa_math", "flex", "reference", "auto"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Max abs error vs float64 on inputs already rounded to the dtype: output rounding (bf16 ~ 2^-8
# of |v| <= ~4) plus low-precision score arithmetic; a real bug is an order of magnitude above.
ATOL = {"float32": 1e-4, "bfloat16": 6e-2, "float16": 1.2e-2}
LSE_ATOL = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 2e-2}
# On GPUs fp32 kernels may run their matmuls in TF32 (10-bit mantissa): ~1e-3, still far below a bug.
GPU_FP32_ATOL = 3e-3
LAYOUTS = ["contiguous", "transposed", "sliced", "expanded"]

FIXED_SEED = 20260901
ROTATING_SEED = int(os.environ.get("ANYATTN_FUZZ_SEED") or time.strftime("%Y%m%d"))
CPU_EXAMPLES = int(os.environ.get("ANYATTN_FUZZ_EXAMPLES", "350"))  # per op and seed: 3 x 2 x 350 = 2,100


# ------------------------------------------------------------------------------ cases
@st.composite
def cases(draw, op: str, backends: list[str], dtypes: list[str], max_len: int, head_dims: list[int],
          long_len: int = 0):
    """One case. Lengths are at most ``max_len``; with ``long_len``, one length in five is drawn
    from (max_len, long_len] instead, so that sequences span several of a kernel's tiles (the
    masked edge tiles and the unmasked middle of each loop) while most cases stay cheap."""
    hkv = draw(st.sampled_from([1, 2, 3]))
    c = {
        "op": op,
        "backend": draw(st.sampled_from(backends)),
        "dtype": draw(st.sampled_from(dtypes)),
        "hkv": hkv,
        "hq": hkv * draw(st.sampled_from([1, 2, 4])),
        "d": draw(st.sampled_from(head_dims)),
        "dv": None,
        "causal": draw(st.booleans()),
        "window": draw(st.sampled_from([(-1, -1), (-1, -1), (0, 0), (3, 0), (2, 5), (-1, 2), (7, -1)])),
        "softcap": draw(st.sampled_from([0.0, 0.0, 0.0, 2.5, 30.0])),
        "alibi": draw(st.sampled_from([None, None, None, "heads", "batch"])),
        "sinks": draw(st.sampled_from([False, False, True])),
        "lse": draw(st.booleans()),
        "out": draw(st.sampled_from([False, False, True])),
        "scale": draw(st.sampled_from([None, None, 0.3])),
        "layout": draw(st.sampled_from(LAYOUTS)),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }
    if draw(st.integers(0, 5)) == 0:
        c["dv"] = draw(st.sampled_from(head_dims))
    lengths = st.integers(0, max_len)
    if long_len > max_len:
        short = lengths
        lengths = st.integers(0, 4).flatmap(
            lambda r: st.integers(max_len + 1, long_len) if r == 0 else short)
    if op == "attention":
        c["b"] = draw(st.integers(1, 3))
        c["sq"] = draw(st.one_of(st.just(1), lengths))
        c["sk"] = draw(st.one_of(st.just(c["sq"]), lengths))
    elif op == "varlen":
        n = draw(st.integers(1, 4))
        c["lens_q"] = draw(st.lists(lengths, min_size=n, max_size=n))
        c["lens_k"] = draw(st.lists(lengths, min_size=n, max_size=n))
    else:
        n = draw(st.integers(1, 4))
        c["block_size"] = draw(st.sampled_from([1, 3, 4, 16, 128]))  # 128: FA4's TMA pages
        c["seqused"] = draw(st.lists(lengths, min_size=n, max_size=n))
        if draw(st.booleans()):
            c["nq"] = None  # decode: one token per sequence
        else:
            c["nq"] = [draw(st.integers(0, max(n_k, 0))) for n_k in c["seqused"]]
    return c


def _tensor(shape, dtype, device, gen, layout, head_axis):
    """A tensor of ``shape`` with the strides ``layout`` names (values are what matter)."""
    if layout == "transposed":  # heads before tokens in memory
        perm = list(range(len(shape)))
        tok = head_axis - 1
        perm[tok], perm[head_axis] = perm[head_axis], perm[tok]
        base = torch.randn(*[shape[p] for p in perm], generator=gen).to(device=device, dtype=dtype)
        return base.transpose(tok, head_axis)
    if layout == "sliced":  # padded head dim and every other token row
        big = list(shape)
        big[-1] += 5
        big[head_axis - 1] = 2 * shape[head_axis - 1]
        base = torch.randn(*big, generator=gen).to(device=device, dtype=dtype)
        index = [slice(None)] * len(shape)
        index[head_axis - 1] = slice(None, None, 2)
        index[-1] = slice(None, shape[-1])
        return base[tuple(index)]
    if layout == "expanded" and shape[head_axis] > 1:  # one head broadcast (stride 0)
        one = list(shape)
        one[head_axis] = 1
        return torch.randn(*one, generator=gen).to(device=device, dtype=dtype).expand(*shape)
    return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)


def _cu(lens, device):
    out = [0]
    for n in lens:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device=device)


def _vouched_for(name, args, kw) -> bool:
    """Whether the named backend needs something of these inputs' values that anyattn cannot
    check (its input conditions: finite rows past seqused_k for FA4's TMA pages), which naming it
    vouches for: the case then keeps the cache finite. Automatic selection passes such paths over."""
    if name == "auto":
        return False
    from anyattn import backends

    req = anyattn.explain(*args, op="paged", **{key: val for key, val in kw.items() if key != "backend"}).request
    return bool(backends.get(name).input_conditions(req))


def build(c, device="cpu"):
    """(api function, positional args, keyword args, naive reference callable) for a case."""
    gen = torch.Generator().manual_seed(c["seed"])
    # The loop formula on CPU-sized cases; its vectorized twin (checked against it below) on GPU ones.
    one = naive.attend_one_sequence if device == "cpu" else naive.attend_one_sequence_vectorized
    dt = DTYPES[c["dtype"]]
    d, dv, hq, hkv, lay = c["d"], c["dv"] or c["d"], c["hq"], c["hkv"], c["layout"]
    batch = c["b"] if c["op"] == "attention" else len(c.get("lens_q") or c.get("seqused"))
    kw = dict(causal=c["causal"], window=tuple(c["window"]), softcap=c["softcap"], return_lse=c["lse"],
              scale=c["scale"], backend=None if c["backend"] == "auto" else c["backend"])
    slopes = None
    if c["alibi"] == "heads":
        slopes = torch.rand(hq, generator=gen) * 0.5
    elif c["alibi"] == "batch":
        slopes = torch.rand(batch, hq, generator=gen) * 0.5
    sinks = torch.randn(hq, generator=gen) if c["sinks"] else None
    kw["alibi_slopes"] = None if slopes is None else slopes.to(device)
    kw["sinks"] = None if sinks is None else sinks.to(device)
    ref_kw = dict(causal=c["causal"], window=tuple(c["window"]), softcap=c["softcap"], slopes=slopes, sinks=sinks,
                  scale=c["scale"], one=one)
    if c["op"] == "attention":
        b, sq, sk = c["b"], c["sq"], c["sk"]
        q = _tensor((b, sq, hq, d), dt, device, gen, lay, 2)
        k = _tensor((b, sk, hkv, d), dt, device, gen, lay, 2)
        v = _tensor((b, sk, hkv, dv), dt, device, gen, lay, 2)
        out_shape = (b, sq, hq, dv)
        args = (q, k, v)
        fn = anyattn.attention

        def ref():
            return naive.dense(q, k, v, **ref_kw)
    elif c["op"] == "varlen":
        lq, lk = c["lens_q"], c["lens_k"]
        q = _tensor((sum(lq), hq, d), dt, device, gen, lay, 1)
        k = _tensor((sum(lk), hkv, d), dt, device, gen, lay, 1)
        v = _tensor((sum(lk), hkv, dv), dt, device, gen, lay, 1)
        cu_q, cu_k = _cu(lq, device), _cu(lk, device)
        args = (q, k, v, cu_q, cu_k, max(lq), max(lk))
        out_shape = (sum(lq), hq, dv)
        fn = anyattn.varlen_attention

        def ref():
            return naive.varlen(q, k, v, cu_q, cu_k, **ref_kw)
    else:
        bs, used, nq = c["block_size"], c["seqused"], c["nq"]
        nblocks = [(n + bs - 1) // bs for n in used]
        total = sum(nblocks) + 2
        perm = torch.randperm(total, generator=gen)
        table = torch.full((len(used), max(max(nblocks), 1) + 1), int(perm[-1]), dtype=torch.int32)
        pos = 0
        for i, nb in enumerate(nblocks):
            table[i, :nb] = perm[pos:pos + nb].to(torch.int32)
            pos += nb
        kc = _tensor((total, bs, hkv, d), dt, device, gen, lay, 2)
        vc = _tensor((total, bs, hkv, dv), dt, device, gen, lay, 2)
        counts = [1] * len(used) if nq is None else nq
        q = _tensor((sum(counts), hq, d), dt, device, gen, lay, 1)
        cu_q = None if nq is None else _cu(nq, device)
        table, seqused = table.to(device), torch.tensor(used, dtype=torch.int32, device=device)
        args = (q, kc, vc, table, seqused)
        kw.update(cu_seqlens_q=cu_q, max_seqlen_q=max(counts) if counts else 0)
        if lay != "expanded" and not _vouched_for(c["backend"], args, kw):  # (a broadcast view cannot be written)
            # NaN wherever a cache from torch.empty may hold it: the rest of each last page and
            # the spare pages
            inputs.poison_past_seqused(kc, vc, table, seqused)
        out_shape = (sum(counts), hq, dv)
        fn = anyattn.paged_attention

        def ref():
            return naive.paged(q, kc, vc, table.cpu(), seqused.cpu(), None if cu_q is None else cu_q.cpu(), **ref_kw)
    if c["out"]:
        kw["out"] = torch.full(out_shape, float("nan"), dtype=dt, device=device)  # poisoned
    return fn, args, kw, ref


def reproducer(c, device="cpu") -> str:
    return f"python -m tests.test_fuzz '{json.dumps(c)}' {device}"


def check(c, device="cpu", counts: Counter | None = None) -> str:
    """Run one case; returns "served" or "declined"; raises AssertionError with a reproducer."""
    fn, args, kw, ref = build(c, device)
    try:
        res = fn(*args, **kw)
        if device != "cpu":  # a kernel's asynchronous fault belongs to this case, not the next one's
            torch.cuda.synchronize()
    except anyattn.NoBackendError as exc:
        assert c["backend"] != "auto", f"automatic selection found no backend: {exc}\n{reproducer(c, device)}"
        cand = next(x for x in exc.decision.candidates if x.name == c["backend"])
        assert cand.reasons, f"declined without a reason\n{reproducer(c, device)}"
        if counts is not None:
            counts[(c["backend"], "declined")] += 1
        return "declined"
    except Exception as exc:  # noqa: BLE001 - any crash is a finding: report it as a reproducer
        raise AssertionError(f"{c['backend']} raised {type(exc).__name__}: {exc}\ncase: {json.dumps(c)}\n"
                             f"reproduce: {reproducer(c, device)}") from exc
    out, lse = res if c["lse"] else (res, None)
    ref_out, ref_lse = ref()
    if c["out"]:
        assert out is kw["out"], f"out= was not returned\n{reproducer(c, device)}"
    o = out.detach().double().cpu()
    err = float((o - ref_out).abs().max()) if o.numel() else 0.0
    atol = GPU_FP32_ATOL if device != "cpu" and c["dtype"] == "float32" else ATOL[c["dtype"]]
    lse_atol = GPU_FP32_ATOL if device != "cpu" and c["dtype"] == "float32" else LSE_ATOL[c["dtype"]]
    assert o.shape == ref_out.shape and math.isfinite(err) and err <= atol, (
        f"{c['backend']} output error {err:.3g} > {atol}\ncase: {json.dumps(c)}\n"
        f"reproduce: {reproducer(c, device)}")
    if c["lse"]:
        lo = lse.detach().double().cpu()
        assert lo.shape == ref_lse.shape, f"lse shape {tuple(lo.shape)} != {tuple(ref_lse.shape)}\n{reproducer(c, device)}"
        same_inf = torch.equal(torch.isneginf(lo), torch.isneginf(ref_lse))
        fin = torch.isfinite(ref_lse)
        lerr = float((lo[fin] - ref_lse[fin]).abs().max()) if bool(fin.any()) else 0.0
        assert same_inf and math.isfinite(lerr) and lerr <= lse_atol, (
            f"{c['backend']} lse error {lerr:.3g} (-inf rows equal: {same_inf})\ncase: {json.dumps(c)}\n"
            f"reproduce: {reproducer(c, device)}")
    if counts is not None:
        counts[(c["backend"], "served")] += 1
    return "served"


# ------------------------------------------------------------------------------ CPU (CI)
_CPU_COUNTS: Counter = Counter()
_SETTINGS = dict(deadline=None, database=None, print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.filter_too_much])


def _cpu_test(op, which):
    @seed(FIXED_SEED if which == "fixed" else ROTATING_SEED)
    @settings(max_examples=CPU_EXAMPLES, **_SETTINGS)
    @given(c=cases(op, CPU_BACKENDS, list(DTYPES), max_len=13, head_dims=[8, 16, 24], long_len=80))
    def test(c):
        check(c, "cpu", _CPU_COUNTS)

    test.__name__ = f"test_fuzz_cpu_{op}_{which}"
    return test


for _op in ("attention", "varlen", "paged"):
    for _which in ("fixed", "rotating"):
        globals()[f"test_fuzz_cpu_{_op}_{_which}"] = _cpu_test(_op, _which)


@pytest.mark.parametrize("backend,block_size,keeps_finite", [
    ("flash_attn_4", 128, True), ("flash_attn_4", 16, False), ("sdpa", 128, False), ("auto", 128, False)])
def test_paged_cases_poison_unused_rows_unless_a_name_vouches(backend, block_size, keeps_finite):
    """Paged cases put NaN past seqused_k, except for a named backend whose input conditions ask
    for finite rows there (FA4's TMA pages: naming it vouches for the cache)."""
    c = dict(op="paged", backend=backend, dtype="float32", hkv=1, hq=2, d=64, dv=None, causal=True,
             window=(-1, -1), softcap=0.0, alibi=None, sinks=False, lse=False, out=False, scale=None,
             layout="contiguous", seed=1, block_size=block_size, seqused=[5, 0, 200], nq=None)
    _, (q, kc, vc, table, used), _, _ = build(c)
    assert bool(torch.isnan(kc).any()) == (not keeps_finite)
    assert bool(torch.isnan(vc).any()) == (not keeps_finite)


@seed(FIXED_SEED)
@settings(max_examples=150, **_SETTINGS)
@given(c=cases("varlen", ["reference"], ["float32"], max_len=13, head_dims=[8, 16]))
def test_vectorized_formula_matches_the_loop_formula(c):
    """The GPU fuzzing's float64 formula agrees with the loop one (and with alibi per batch)."""
    gen = torch.Generator().manual_seed(c["seed"])
    q = torch.randn(sum(c["lens_q"]), c["hq"], c["d"], generator=gen)
    k = torch.randn(sum(c["lens_k"]), c["hkv"], c["d"], generator=gen)
    v = torch.randn(sum(c["lens_k"]), c["hkv"], c["dv"] or c["d"], generator=gen)
    cu_q, cu_k = _cu(c["lens_q"], "cpu"), _cu(c["lens_k"], "cpu")
    slopes = torch.rand(len(c["lens_q"]), c["hq"], generator=gen) if c["alibi"] else None
    sinks = torch.randn(c["hq"], generator=gen) if c["sinks"] else None
    kw = dict(causal=c["causal"], window=tuple(c["window"]), softcap=c["softcap"], slopes=slopes, sinks=sinks,
              scale=c["scale"])
    o1, l1 = naive.varlen(q, k, v, cu_q, cu_k, **kw)
    o2, l2 = naive.varlen(q, k, v, cu_q, cu_k, one=naive.attend_one_sequence_vectorized, **kw)
    assert torch.allclose(o1, o2, atol=1e-10)
    assert torch.equal(torch.isneginf(l1), torch.isneginf(l2))
    fin = torch.isfinite(l1)
    assert torch.allclose(l1[fin], l2[fin], atol=1e-10)


def _note(request, text):
    """Print past pytest's capture: the counts are the closing note of a fuzz run. With
    ANYATTN_FUZZ_LOG=FILE the lines are also appended there (pytest-xdist workers' output is
    not shown; the release run sums the per-run lines from that file)."""
    log_path = os.environ.get("ANYATTN_FUZZ_LOG")
    if log_path:
        with open(log_path, "a") as f:
            f.write(text.strip() + "\n")
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        print(text)
        return
    with capman.global_and_fixture_disabled():
        print(text, flush=True)


def test_fuzz_cpu_counts_reached(request):
    """Runs after the fuzz tests above (file order): the CI run really drew >= 2,000 cases."""
    total = sum(_CPU_COUNTS.values())
    served = sum(n for (b, what), n in _CPU_COUNTS.items() if what == "served")
    _note(request, f"\nfuzz (CPU, seeds {FIXED_SEED} + {ROTATING_SEED}): {total} cases, {served} served; "
          + ", ".join(f"{b} {what} {n}" for (b, what), n in sorted(_CPU_COUNTS.items())))
    if CPU_EXAMPLES >= 350 and total:
        assert total >= 2000, total
    assert total == 0 or served > total // 3, "most cases should be served, or the fuzzing tests little"


# ------------------------------------------------------------------------------ GPU
GPU_EXAMPLES = int(os.environ.get("ANYATTN_FUZZ_GPU_EXAMPLES", "1200"))  # per op and seed: 3 x 5 x 1200
# Wall-clock budget per run (seconds, 0 = none): a release run on a lent GPU has minutes, and the
# first call of every kernel variant compiles (Triton, FA4's CuTe DSL), so cases stop being drawn
# at the deadline and the counts say how many ran.
GPU_SECONDS = float(os.environ.get("ANYATTN_FUZZ_GPU_SECONDS", "0"))
# The H200 release runs drew 400-1,100 cases per run in 300 s (paged most, dense fewest: more
# kernel variants to compile), so a long run wants ANYATTN_FUZZ_GPU_EXAMPLES above the default.
# ANYATTN_FUZZ_GPU_RUNS=N seeds per op (default 5). The release run asks for two runs per worker
# and one shared deadline (ANYATTN_FUZZ_GPU_UNTIL, Unix time): a run whose CUDA context is
# poisoned ends its worker process (pytest-xdist starts a fresh one), and the worker's second run
# spends the time left; a run that reached the deadline leaves its second run nothing to do.
# ANYATTN_FUZZ_GPU_FIXED=0 leaves the fixed seed out: a second fuzz call of one release would
# draw its cases again (1,020 of 11,160 were such repeats on 2026-12-01).
GPU_SEEDS = (("fixed",) if os.environ.get("ANYATTN_FUZZ_GPU_FIXED", "1") != "0" else ()) + ("rotating",) + tuple(
    f"rotating+{i}" for i in range(1, int(os.environ.get("ANYATTN_FUZZ_GPU_RUNS", "5")) - 1))
GPU_UNTIL = float(os.environ.get("ANYATTN_FUZZ_GPU_UNTIL", "0"))
_GPU_COUNTS: Counter = Counter()


class _StopDrawing(BaseException):
    """The run's deadline passed or its CUDA context is poisoned: no more cases."""


# A CUDA error that poisons the context: every later case in the process would fail with it.
_STICKY_CUDA = ("illegal memory access", "device-side assert", "unspecified launch failure",
                "misaligned address", "illegal instruction")


def _failed(failures: list[str], text: str) -> None:
    """Keep a failing case; with ANYATTN_FUZZ_FAILURES=FILE also append it there at once, so a
    worker that dies later (a poisoned CUDA context, a segfault) loses none."""
    failures.append(text)
    path = os.environ.get("ANYATTN_FUZZ_FAILURES")
    if path:
        with open(path, "a") as f:
            f.write(text.strip() + "\n\n")


def _gpu_backends():
    if not torch.cuda.is_available():
        return []
    from anyattn import selector

    only = [n.strip() for n in os.environ.get("ANYATTN_FUZZ_BACKENDS", "").split(",") if n.strip()]
    skip = [n.strip() for n in os.environ.get("ANYATTN_FUZZ_SKIP", "").split(",") if n.strip()]
    return [s.name for s in selector.backend_statuses("cuda")
            if s.installed and (not only or s.name in only) and s.name not in skip]


def _seed_of(which: str) -> int:
    return FIXED_SEED if which == "fixed" else ROTATING_SEED + (int(which.split("+")[1]) if "+" in which else 0)


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["attention", "varlen", "paged"])
@pytest.mark.parametrize("which", GPU_SEEDS)
def test_fuzz_gpu(op, which, request):
    """Thousands of cases per run: a failing case is recorded (with its reproducer) and drawing
    goes on, so one defect neither hides the others nor costs hypothesis' shrinking time; the run
    fails at its end if any case failed. A context-poisoning CUDA error stops the run at once."""
    names = _gpu_backends()
    if not names:
        pytest.skip("no CUDA device")
    s = _seed_of(which)
    mine: Counter = Counter()
    failures: list[str] = []
    deadline = time.monotonic() + GPU_SECONDS if GPU_SECONDS > 0 else math.inf
    if GPU_UNTIL > 0:
        deadline = min(deadline, time.monotonic() + (GPU_UNTIL - time.time()))
    poisoned: list[str] = []
    previous: list[dict] = []
    with_auto = [] if os.environ.get("ANYATTN_FUZZ_BACKENDS") else ["auto"]

    @seed(s)
    @settings(max_examples=GPU_EXAMPLES, phases=[Phase.generate], **_SETTINGS)
    @given(c=cases(op, names + with_auto, ["bfloat16", "float16", "float32"], max_len=70,
                   head_dims=[32, 64, 128, 80], long_len=400))
    def run(c):
        if poisoned or time.monotonic() > deadline:
            # returning would let hypothesis draw the rest of max_examples (3 ms each: 100,000
            # draws outlast the stage's timeout, as on 2026-12-01); a BaseException passes
            # through hypothesis, which catches only Exception, and ends the run at once
            raise _StopDrawing
        try:
            check(c, "cuda", mine)
        except AssertionError as exc:
            mine[(c["backend"], "FAILED")] += 1
            _failed(failures, str(exc))
            if any(t in str(exc) for t in _STICKY_CUDA):
                poisoned.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - outside the backend call (building the case)
            mine[(c["backend"], "FAILED")] += 1
            _failed(failures, f"{type(exc).__name__} while building the case after "
                    f"{json.dumps(previous[-1:])}: {exc}\ncase: {json.dumps(c)}")
            poisoned.append(str(exc))
        previous[:] = [c]

    t0 = time.monotonic()
    try:
        run()
    except _StopDrawing:
        pass
    finally:
        _GPU_COUNTS.update(mine)
        _note(request, f"\nfuzz GPU {op} seed {s}: {sum(mine.values())} cases in {time.monotonic() - t0:.0f} s; "
              + ", ".join(f"{b} {w} {n}" for (b, w), n in sorted(mine.items())))
    if poisoned and os.environ.get("PYTEST_XDIST_WORKER") and GPU_UNTIL > 0:
        # every later case of this process would fail with the same error: end the worker
        # (its counts and failures are written above) so that pytest-xdist starts a clean one
        os._exit(3)
    assert not failures, (f"{len(failures)} failing case(s)" + (" (stopped: CUDA context poisoned)" if poisoned else "")
                          + ":\n\n" + "\n\n".join(failures[:20]))


@pytest.mark.gpu
def test_fuzz_gpu_counts(request):
    """Closing note: counts per backend (run after test_fuzz_gpu in the same session)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    total = sum(_GPU_COUNTS.values())
    per = Counter()
    for (b, what), n in _GPU_COUNTS.items():
        per[b] += n
    lines = [f"  {b:15s} served {_GPU_COUNTS[(b, 'served')]:6d}  declined {_GPU_COUNTS[(b, 'declined')]:6d}"
             f"  failed {_GPU_COUNTS[(b, 'FAILED')]:4d}" for b in sorted(per)]
    _note(request, f"\nfuzz (GPU {torch.cuda.get_device_name()}, seeds "
          f"{', '.join(str(_seed_of(w)) for w in GPU_SEEDS)}): {total} cases\n" + "\n".join(lines))
    assert total >= 10000, total


def summarize(path) -> str:
    """Sum the per-run count lines that ANYATTN_FUZZ_LOG collected (pytest-xdist runs)."""
    import re

    per, total = Counter(), 0
    for line in open(path):
        m = re.match(r"fuzz GPU (\w+) seed (\d+): (\d+) cases(?: in \d+ s)?; (.*)", line.strip())
        if not m:
            continue
        total += int(m.group(3))
        for part in m.group(4).split(", "):
            backend, what, n = part.rsplit(" ", 2)
            per[(backend, what)] += int(n)
    lines = [f"fuzz GPU: {total} cases"]
    lines += [f"  {b:15s} served {per[(b, 'served')]:6d}  declined {per[(b, 'declined')]:6d}"
              f"  failed {per[(b, 'FAILED')]:4d}" for b in sorted({b for b, _ in per})]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m tests.test_fuzz '<case json>' [cpu|cuda] | --summary FILE
    if sys.argv[1] == "--summary":
        print(summarize(sys.argv[2]))
        sys.exit(0)
    case = json.loads(sys.argv[1])
    dev = sys.argv[2] if len(sys.argv) > 2 else "cpu"
    print(check(case, dev))
