"""``anyattn verify``: check every usable backend on *this* machine against the reference.

A backend that can serve a request on paper may still be wrong here (compiled FlexAttention on
CPU with torch 2.13, cuDNN SDPA with few KV heads on B200, pytorch#193893). ``verify`` runs each
usable backend x op x dtype x feature family on small random inputs (odd lengths, GQA, empty
sequences, rows that see no key) and compares with the reference backend computed in float64.

Results are stored in a small JSON file, ``$ANYATTN_CACHE_DIR/verify.json`` (default
``~/.cache/anyattn``), keyed by the machine (anyattn, torch, CUDA driver, device name) and, per
result, the backend and its version: installing another version or moving to another GPU
makes old results irrelevant rather than wrong. Automatic selection then skips a backend that
failed here (:func:`known_failure`), with the error found as its reason.

``ANYATTN_VERIFY=1`` runs :func:`quick_check` (one small case of the request's own signature)
for each backend automatic selection is about to choose for a new signature.

This module imports torch only; rich is imported by the command line, not here.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from dataclasses import dataclass, field

import torch

from .request import Request, dtype_name

CACHE_ENV = "ANYATTN_CACHE_DIR"
CACHE_FILE = "verify.json"
SCHEMA = 1
OPS = ("attention", "varlen", "paged")
# A family is one feature on top of a plain call, so a failure points at that feature.
FAMILIES = ("plain", "causal", "window", "softcap", "alibi", "sinks", "lse", "gqa")
# Relative (Frobenius-norm) error of the output against float64 above which a result is wrong,
# not rounding: an fp16/bf16 kernel lands near 1e-3 / 5e-3; the wrong results seen were > 0.1.
TOLERANCE = {torch.float32: 2e-3, torch.float16: 1e-2, torch.bfloat16: 4e-2}
LSE_TOLERANCE = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 6e-2}  # absolute, natural log
HEAD_DIM = 64  # every backend's supported set includes it
# On CUDA: the head dim of most models and of the GPU suite, so that the kernels a JIT backend
# (FlashInfer's nvcc, FA4's CuTe DSL) compiled for them are reused, not compiled again per cell
CUDA_HEAD_DIM = 128


# --------------------------------------------------------------------------------------------
# Where results live, and for which machine
# --------------------------------------------------------------------------------------------
def cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "anyattn")


def cache_path() -> str:
    return os.path.join(cache_dir(), CACHE_FILE)


_machines: dict = {}


def machine(device_type: str, device_index: int | None = None) -> dict:
    """What a result depends on besides the backend: anyattn, torch, driver, device name."""
    key = (device_type, device_index)
    m = _machines.get(key)
    if m is None:
        from . import __version__

        driver = name = None
        if device_type == "cuda":
            idx = device_index if device_index is not None else torch.cuda.current_device()
            name = torch.cuda.get_device_name(idx)
            from .tune import driver_version

            # the NVIDIA driver from /proc, else the CUDA driver API version; on the H200 the torch
            # call alone gave None, so results were keyed without the driver
            driver = driver_version()
        else:
            import platform

            name = f"{device_type} {platform.machine()} {platform.processor() or ''}".strip()
        m = {"anyattn": __version__, "torch": torch.__version__, "driver": driver, "device": name}
        _machines[key] = m
    return m


def machine_key(m: dict) -> str:
    return ";".join(f"{k}={m[k]}" for k in ("anyattn", "torch", "driver", "device"))


def result_key(backend: str, version: str | None, op: str, dtype: torch.dtype, family: str) -> str:
    return f"{backend}=={version or '-'}/{op}/{dtype_name(dtype)}/{family}"


_loaded: dict | None = None
_quick_done: dict = {}  # (backend, Request) -> failure reason or None (ANYATTN_VERIFY=1)


def forget_loaded() -> None:
    """Re-read the cache file on next use and forget first-use checks (selector.clear_cache)."""
    global _loaded
    _loaded = None
    _quick_done.clear()


def load() -> dict:
    """The whole cache file ({} when missing or unreadable: a bad file never breaks a call)."""
    global _loaded
    if _loaded is None:
        try:
            with open(cache_path(), encoding="utf-8") as fh:
                data = json.load(fh)
            _loaded = data if isinstance(data, dict) and data.get("schema") == SCHEMA else {}
        except (OSError, ValueError):
            _loaded = {}
    return _loaded


def save(results: dict[str, dict], m: dict) -> str:
    """Merge ``results`` into the file's entry for machine ``m``; returns the path."""
    path = cache_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    forget_loaded()
    data = dict(load()) or {"schema": SCHEMA, "machines": {}}
    data.setdefault("machines", {})
    entry = data["machines"].setdefault(machine_key(m), {"machine": m, "results": {}})
    entry["results"].update(results)
    entry["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
    forget_loaded()
    return path


def families_of(req: Request) -> list[str]:
    fams = ["plain"] + [f for f in ("causal", "window", "softcap", "alibi", "sinks", "lse") if getattr(req, f)]
    if req.gqa_ratio > 1:
        fams.append("gqa")
    return fams


def known_failure(name: str, req: Request) -> str | None:
    """The reason ``name`` failed the self-test here for a family ``req`` belongs to, else None."""
    machines = load().get("machines")
    if not machines:
        return None
    entry = machines.get(machine_key(machine(req.device_type, req.device_index)))
    if not entry:
        return None
    from . import backends

    version = backends.get(name).version()
    results = entry.get("results", {})
    for fam in families_of(req):
        r = results.get(result_key(name, version, req.op, req.dtype, fam))
        if r and r.get("status") == "fail":
            return r.get("reason") or "failed the numerical self-test on this machine"
    return None


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------
@dataclass
class Case:
    op: str
    family: str
    dtype: torch.dtype
    args: tuple
    opts: dict
    lengths: str  # for the reason: "seqlen 40" / "seqlens q 7, k 13"
    request: Request | None = None
    norm: dict = field(default_factory=dict)  # normalised scale/window/softcap


def _lens(sq, sk) -> str:
    return f"seqlen {sq}" if sq == sk else f"seqlens q {sq}, k {sk}"


def _opts_for(family: str, hq: int, batch: int, device, gen) -> dict:
    opts = dict(causal=False, window=(-1, -1), softcap=0.0, alibi_slopes=None, sinks=None, return_lse=False)
    if family == "causal":
        opts["causal"] = True
    elif family == "window":
        opts["window"] = (5, 2)
    elif family == "softcap":
        opts["softcap"] = 3.0
    elif family == "alibi":
        opts["alibi_slopes"] = (torch.rand(hq, generator=gen) * 0.5).to(device)
    elif family == "sinks":
        opts["sinks"] = torch.randn(hq, generator=gen).to(device)
    elif family == "lse":
        opts["return_lse"] = True
    return opts


def _randn(shape, dtype, device, gen, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)


def cases(op: str, family: str, dtype: torch.dtype, device, *, head_dim: int = HEAD_DIM, hq: int | None = None,
          hkv: int | None = None, seed: int = 0, quick: bool = False, block_size: int = 16) -> list[Case]:
    """Small inputs for one op x family x dtype: odd lengths, Sq != Sk, an empty sequence."""
    from . import request as rq

    gen = torch.Generator().manual_seed(seed)
    if hq is None:
        hq, hkv = (4, 1) if family == "gqa" else (4, 4)
    d = head_dim
    out = []
    if op == "attention":
        shapes = [(2, 40, 40)] if quick else [(2, 40, 40), (1, 7, 13), (1, 1, 37), (2, 19, 5)]
        for b, sq, sk in shapes:
            q = _randn((b, sq, hq, d), dtype, device, gen)
            k = _randn((b, sk, hkv, d), dtype, device, gen)
            v = _randn((b, sk, hkv, d), dtype, device, gen)
            opts = _opts_for(family, hq, b, device, gen)
            req, scale, window, softcap = rq.dense_request(q, k, v, scale=None, out=None, **opts)
            out.append(Case(op, family, dtype, (q, k, v), opts, _lens(sq, sk), req,
                            dict(scale=scale, window=window, softcap=softcap)))
    elif op == "varlen":
        all_lens = [([5, 0, 17], [9, 3, 17])] if quick else [([5, 0, 17], [9, 3, 17]), ([1, 33], [40, 33])]
        for lq, lk in all_lens:
            cu_q = torch.tensor([0] + list(_cumsum(lq)), dtype=torch.int32, device=device)
            cu_k = torch.tensor([0] + list(_cumsum(lk)), dtype=torch.int32, device=device)
            q = _randn((sum(lq), hq, d), dtype, device, gen)
            k = _randn((sum(lk), hkv, d), dtype, device, gen)
            v = _randn((sum(lk), hkv, d), dtype, device, gen)
            opts = _opts_for(family, hq, len(lq), device, gen)
            args = (q, k, v, cu_q, cu_k, max(lq), max(lk))
            req, scale, window, softcap = rq.varlen_request(*args, scale=None, out=None, **opts)
            out.append(Case(op, family, dtype, args, opts, f"seqlens q {lq}, k {lk}", req,
                            dict(scale=scale, window=window, softcap=softcap)))
    else:
        all_used = [([21, 1, 40], [1, 1, 3])] if quick else [([21, 1, 40], [1, 1, 3]), ([5, 33], None)]
        for used, nq in all_used:
            nblocks = [(n + block_size - 1) // block_size for n in used]
            total = sum(nblocks) + 2
            perm = torch.randperm(total, generator=gen)
            table = torch.full((len(used), max(nblocks)), int(perm[-1]), dtype=torch.int32)
            pos = 0
            for i, nb in enumerate(nblocks):
                table[i, :nb] = perm[pos:pos + nb].to(torch.int32)
                pos += nb
            kc = _randn((total, block_size, hkv, d), dtype, device, gen)
            vc = _randn((total, block_size, hkv, d), dtype, device, gen)
            counts = [1] * len(used) if nq is None else nq
            q = _randn((sum(counts), hq, d), dtype, device, gen)
            cu_q = None if nq is None else torch.tensor([0] + list(_cumsum(nq)), dtype=torch.int32, device=device)
            opts = _opts_for(family, hq, len(used), device, gen)
            opts["causal"] = family == "causal"
            args = (q, kc, vc, table.to(device), torch.tensor(used, dtype=torch.int32, device=device))
            extra = dict(cu_seqlens_q=cu_q, max_seqlen_q=max(counts), max_seqlen_k=None)
            req, scale, window, softcap = rq.paged_request(*args, scale=None, out=None, **extra, **opts)
            out.append(Case(op, family, dtype, args, {**opts, **extra}, f"seqused_k {used}", req,
                            dict(scale=scale, window=window, softcap=softcap)))
    return out


def _cumsum(xs):
    total = 0
    for x in xs:
        total += x
        yield total


def _call(backend, case: Case, args=None):
    args = case.args if args is None else args
    opts = dict(case.opts)
    opts.update(case.norm)
    opts["out"] = None
    fn = {"attention": backend.attention, "varlen": backend.varlen, "paged": backend.paged}[case.op]
    return fn(*args, **opts)


def _reference(case: Case):
    """The reference backend in float64 on the CPU: the anchor every backend is held to."""
    from . import backends

    def up(x):
        if isinstance(x, torch.Tensor):
            return x.detach().cpu().double() if x.is_floating_point() else x.detach().cpu()
        return x

    args = tuple(up(a) for a in case.args)
    ref_case = Case(case.op, case.family, case.dtype, args, {k: up(v) for k, v in case.opts.items()},
                    case.lengths, case.request, case.norm)
    return _call(backends.get("reference"), ref_case)


def check_case(backend, case: Case) -> tuple[bool, float, str]:
    """Run one case; (ok, relative error, detail). Exceptions count as failures."""
    from .backends.base import one_line

    try:
        with torch.no_grad():
            o, lse = _call(backend, case)
            if o.device.type == "cuda":
                torch.cuda.synchronize(o.device)
    except Exception as exc:  # noqa: BLE001 - a crash in the self-test is a finding
        return False, math.inf, f"raised {one_line(exc)}"
    ro, rlse = _reference(case)
    o64 = o.detach().double().cpu()
    if not bool(torch.isfinite(o64).all()):
        return False, math.inf, f"non-finite output (NaN/inf) at {case.lengths}"
    denom = float(ro.norm())
    err = float((o64 - ro).norm()) / max(denom, 1e-12)
    if err > TOLERANCE[case.dtype]:
        return False, err, f"relative error {err:.2g} at {case.lengths}"
    if case.opts.get("return_lse"):
        if lse is None:
            return False, math.inf, "asked for the log-sum-exp, got None"
        l64 = lse.detach().double().cpu()
        if l64.shape != rlse.shape or not bool((torch.isneginf(l64) == torch.isneginf(rlse)).all()):
            return False, math.inf, f"log-sum-exp shape or -inf rows differ at {case.lengths}"
        fin = torch.isfinite(rlse)
        lerr = float((l64[fin] - rlse[fin]).abs().max()) if bool(fin.any()) else 0.0
        if not math.isfinite(lerr) or lerr > LSE_TOLERANCE[case.dtype]:
            return False, lerr, f"log-sum-exp error {lerr:.2g} at {case.lengths}"
    return True, err, ""


def _reason(detail: str, case: Case) -> str:
    what = f"{case.op} {dtype_name(case.dtype)} {case.family}"
    if detail.startswith("raised"):
        return f"failed the self-test on this machine ({what}): {detail}, torch {torch.__version__}"
    return f"failed the numerical self-test on this machine: {detail} ({what}), torch {torch.__version__}"


# --------------------------------------------------------------------------------------------
# The matrix
# --------------------------------------------------------------------------------------------
@dataclass
class Result:
    backend: str
    version: str | None
    op: str
    dtype: str
    family: str
    status: str  # pass | fail | n/a | skipped
    error: float | None = None  # worst relative error seen
    reason: str = ""
    seconds: float = 0.0
    cases: int = 0

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        if d["error"] is not None and not math.isfinite(d["error"]):
            d["error"] = None if d["status"] != "fail" else "inf"
        return d


def default_dtypes(device_type: str) -> list[torch.dtype]:
    return [torch.float32, torch.bfloat16, torch.float16] if device_type == "cpu" else \
        [torch.bfloat16, torch.float16, torch.float32]


def plan(device: str, *, backends_=None, ops=None, dtypes=None, families=None) -> list[tuple]:
    """The (backend, op, dtype, family) cells to run; the reference is the anchor, not a subject.

    Backends take turns, one cell each (the device's main dtype and the plain family first, over
    every op), so that a time budget that runs out covers every backend's most-used cells rather
    than the first backends' all: on the H200 FlashAttention-4's JIT (2-4 s a variant) spent an
    80 s budget on FA4's 35 cells alone (2026-12-01)."""
    from . import backends

    dev = torch.device(device)
    names = [n for n in (backends_ or backends.names()) if n != "reference"]
    per_backend = []
    for name in names:
        b = backends.get(name)
        if dev.type not in b.caps.devices:
            continue
        per_backend.append([(name, op, dt, fam)
                            for dt in dtypes or default_dtypes(dev.type) if dt in b.caps.dtypes
                            for fam in families or FAMILIES
                            for op in ops or OPS if op in b.caps.ops])
    return [cell for turn in itertools.zip_longest(*per_backend) for cell in turn if cell is not None]


def verify_cell(name: str, op: str, dtype: torch.dtype, family: str, device: str, seed: int = 0,
                quick: bool = False) -> Result:
    from . import backends

    b = backends.get(name)
    t0 = time.perf_counter()
    version = b.version()
    base = dict(backend=name, version=version, op=op, dtype=dtype_name(dtype), family=family)
    from .backends.base import one_line

    worst, ran, why = 0.0, 0, ["no case it serves"]
    head_dim = CUDA_HEAD_DIM if torch.device(device).type == "cuda" else HEAD_DIM
    for block_size in ((16, 256) if op == "paged" else (16,)):  # some paged kernels need 256
        try:
            cs = cases(op, family, dtype, device, seed=seed, block_size=block_size, quick=quick,
                       head_dim=head_dim)
        except Exception as exc:  # noqa: BLE001
            return Result(**base, status="n/a", reason=f"could not build inputs: {one_line(exc)}")
        for case in cs:
            reasons = b.reasons(case.request)
            if reasons:
                why = reasons
                continue
            ok, err, detail = check_case(b, case)
            ran += 1
            worst = max(worst, err)
            if not ok:
                return Result(**base, status="fail", error=err, reason=_reason(detail, case),
                              seconds=time.perf_counter() - t0, cases=ran)
        if ran:
            break
    if ran == 0:
        return Result(**base, status="n/a", reason="; ".join(why), seconds=time.perf_counter() - t0)
    return Result(**base, status="pass", error=worst, seconds=time.perf_counter() - t0, cases=ran)


def run(device: str | None = None, *, backends_=None, ops=None, dtypes=None, families=None,
        budget_s: float = 300.0, progress=None, save_results: bool = True, quick: bool = False) -> dict:
    """Run the matrix on ``device``; stops starting new cells after ``budget_s`` seconds.

    ``progress(done, total, result)`` is called after each cell; ``quick`` runs one shape per
    cell instead of four (dense) / two (varlen, paged). Returns a JSON-able summary;
    pass/fail results are merged into the cache file (n/a and skipped ones are not stored)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    m = machine(dev.type, dev.index)
    cells = plan(str(dev), backends_=backends_, ops=ops, dtypes=dtypes, families=families)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    results = []
    for i, (name, op, dt, fam) in enumerate(cells):
        if time.perf_counter() - t0 > budget_s:
            r = Result(name, None, op, dtype_name(dt), fam, "skipped", reason=f"time budget of {budget_s:.0f}s spent")
        else:
            r = verify_cell(name, op, dt, fam, str(dev), quick=quick)
        results.append(r)
        if progress is not None:
            progress(i + 1, len(cells), r)
    # run interleaved (see plan), reported per backend in the plan's order (a stable sort)
    rank = {name: i for i, name in enumerate(dict.fromkeys(c[0] for c in cells))}
    results.sort(key=lambda r: rank[r.backend])
    stored = {result_key(r.backend, r.version, r.op, getattr(torch, r.dtype), r.family): r.to_dict()
              for r in results if r.status in ("pass", "fail")}
    path = save(stored, m) if save_results and stored else None
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return {"machine": m, "device": str(dev), "cache": path, "wall_s": round(time.perf_counter() - t0, 2),
            "cpu_s": round(time.process_time() - cpu0, 2), "counts": counts,
            "results": [r.to_dict() for r in results]}


# --------------------------------------------------------------------------------------------
# ANYATTN_VERIFY=1: one small case of a request's own signature
# --------------------------------------------------------------------------------------------


def quick_check(name: str, req: Request) -> str | None:
    """Check backend ``name`` on one small case shaped like ``req``; the failure reason or None."""
    key = (name, req)
    if key in _quick_done:
        return _quick_done[key]
    from . import backends

    device = req.device_type if req.device_index is None else f"{req.device_type}:{req.device_index}"
    fam = "plain"
    case = cases(req.op, fam, req.dtype, device, head_dim=req.head_dim, hq=2 * req.gqa_ratio, hkv=2,
                 quick=True, block_size=req.block_size or 16)[0]
    # The request's own features, not a family: the case must have the same signature.
    gen = torch.Generator().manual_seed(1)
    hq = 2 * req.gqa_ratio
    opts = dict(case.opts, causal=req.causal, window=((5, 2) if req.window_right else (5, 0)) if req.window else (-1, -1),
                softcap=3.0 if req.softcap else 0.0, return_lse=req.lse,
                alibi_slopes=(torch.rand(hq, generator=gen) * 0.5).to(device) if req.alibi else None,
                sinks=torch.randn(hq, generator=gen).to(device) if req.sinks else None)
    case.opts = opts
    case.norm = dict(case.norm, window=opts["window"], softcap=opts["softcap"])
    if req.head_dim_v != req.head_dim:
        v = case.args[2]
        newv = torch.randn(*v.shape[:-1], req.head_dim_v, generator=gen).to(v.device, v.dtype)
        case.args = case.args[:2] + (newv,) + case.args[3:]
    b = backends.get(name)
    ok, _, detail = check_case(b, case)
    reason = None if ok else _reason(detail, case).replace("self-test", "first-use self-test (ANYATTN_VERIFY=1)", 1)
    _quick_done[key] = reason
    return reason
