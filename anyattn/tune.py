"""``anyattn tune``: time every usable backend on this machine, remember the winners per shape bucket.

The static ranking (``selector.AUTO_ORDER``) is one order per GPU family and op; the fastest
backend really depends on the shape (cuDNN wins short causal prefill on the H200, FlashAttention-4
long prefill and backward, Triton small-batch decode). ``anyattn tune`` measures that here and
writes a small JSON file; automatic selection then uses the measured winner for the call's
bucket.

File: ``$ANYATTN_CACHE_DIR`` or ``~/.cache/anyattn`` (see :func:`cache_dir`), one file per machine
key (GPU name, compute capability, driver, torch, CUDA), ``tune-v1-<hash>.json``. Inside, the
versions of every backend that was timed: when one of them changes (an upgrade, an uninstall) the
file is stale and ignored until ``anyattn tune`` runs again, and ``explain()`` says so.

Buckets. A :class:`~anyattn.request.Request` has no sequence lengths (it keys the decision cache),
so the bucket is computed from host-side ints only, never from device data: ``(ceil(log2 Sq),
ceil(log2 Sk), ceil(log2 batch))`` from the tensor shapes (dense), ``max_seqlen_q/k`` and
``len(cu_seqlens) - 1`` (varlen), ``max_seqlen_q``, ``max_seqlen_k`` (or the block table's
capacity) and the block table's rows (paged). No sync, and nothing at all on the hot path when no
tune file exists for the device: the decision cache then holds the backend itself, as before.
With a file, the cache holds a :class:`TunedChoice`, whose op methods compute the bucket (a few
integer operations), look the backend up in a dict and call it. A bucket that was not measured
takes the nearest measured one (L1 distance in log2 steps).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = 1
ENV_DIR = "ANYATTN_CACHE_DIR"
#: backends not timed by default (``--all`` times them): correct everywhere and slow everywhere, or
#: torch's own pick among the sdpa_* kernels, which are timed one by one
SLOW = ("reference", "sdpa_math", "sdpa")
#: not timed for backward by default: Flex compiles a backward per shape (tens of seconds each) and
#: is left out of `anyattn bench`'s backward table for the same reason
SLOW_BACKWARD = ("flex",)


def cache_dir() -> Path:
    """Where tune files live: ``$ANYATTN_CACHE_DIR``, else ``~/.cache/anyattn``."""
    env = os.environ.get(ENV_DIR, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "anyattn"


# ----------------------------------------------------------------------------------------------
# Keys, buckets, signatures
# ----------------------------------------------------------------------------------------------
def _log2_bucket(n: int) -> int:
    """ceil(log2(n)) for n >= 1 (0 for n <= 1): 1024 -> 10, 1025..2048 -> 11."""
    return (n - 1).bit_length() if n > 1 else 0


def bucket(sq: int, sk: int, batch: int) -> tuple[int, int, int]:
    return (_log2_bucket(sq), _log2_bucket(sk), _log2_bucket(batch))


def bucket_name(b: tuple[int, int, int]) -> str:
    return f"q{b[0]}.k{b[1]}.b{b[2]}"


def parse_bucket(text: str) -> tuple[int, int, int]:
    q, k, b = text.split(".")
    return (int(q[1:]), int(k[1:]), int(b[1:]))


def dense_bucket(q, k) -> tuple[int, int, int]:
    return bucket(q.shape[1], k.shape[1], q.shape[0])


def varlen_bucket(cu_seqlens_q, max_seqlen_q, max_seqlen_k) -> tuple[int, int, int]:
    return bucket(max_seqlen_q, max_seqlen_k, cu_seqlens_q.shape[0] - 1)


def paged_bucket(k_cache, block_table, max_seqlen_q, max_seqlen_k) -> tuple[int, int, int]:
    ctx = max_seqlen_k if max_seqlen_k is not None else block_table.shape[1] * k_cache.shape[1]
    return bucket(max_seqlen_q, ctx, block_table.shape[0])


def bucket_from_call(op: str, args: tuple, kwargs: dict) -> tuple[int, int, int]:
    """The bucket of an op's call from its arguments (as given to ``anyattn.<op>``)."""
    if op == "attention":
        return dense_bucket(args[0], args[1])
    if op == "varlen":
        return varlen_bucket(args[3], args[5], args[6])
    return paged_bucket(args[1], args[3], kwargs.get("max_seqlen_q", 1), kwargs.get("max_seqlen_k"))


_SIG_FLAGS = ("causal", "window", "softcap", "alibi", "sinks", "lse", "out", "grad", "causal_offset",
              "window_right")


def signature(req) -> str:
    """A request's signature without the device: the key of its entries in a tune file."""
    from .request import dtype_name

    flags = "+".join(f for f in _SIG_FLAGS if getattr(req, f)) or "plain"
    bs = f"|bs{req.block_size}" if req.block_size is not None else ""
    return f"{req.op}|{dtype_name(req.dtype)}|d{req.head_dim}/{req.head_dim_v}|gqa{req.gqa_ratio}|{flags}{bs}"


def driver_version() -> str | None:
    """The NVIDIA driver version from /proc (cheap, no subprocess); the CUDA driver API version else."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            for tok in f.readline().split():
                if tok.count(".") >= 1 and tok.replace(".", "").isdigit():
                    return tok
    except OSError:
        pass
    try:
        import torch

        v = torch._C._cuda_getDriverVersion()  # e.g. 13000: the CUDA version the driver supports
        return f"cuda-driver-api {v // 1000}.{(v % 1000) // 10}"
    except Exception:  # noqa: BLE001
        return None


def machine_key(device_type: str, device_index: int | None) -> dict:
    import torch

    if device_type == "cuda":
        idx = device_index if device_index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(idx)
        cap = list(torch.cuda.get_device_capability(idx))
        driver = driver_version()
    else:
        # platform.machine() reads os.uname(); platform.processor() would run `uname -p` in a subprocess
        name, cap, driver = f"{device_type}:{platform.machine()}", None, None
    return {"device": name, "capability": cap, "driver": driver, "torch": torch.__version__,
            "cuda": torch.version.cuda}


def tune_path(key: dict) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"tune-v{FORMAT}-{digest}.json"


# ----------------------------------------------------------------------------------------------
# The table in memory
# ----------------------------------------------------------------------------------------------
@dataclass
class Entry:
    winner: str
    timings_ms: dict  # backend -> median ms (None: failed / could not serve, see errors)
    shape: dict = field(default_factory=dict)
    mode: str = "fwd"  # "fwd" | "fwd+bwd"
    errors: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"winner": self.winner, "timings_ms": self.timings_ms, "shape": self.shape, "mode": self.mode,
                "errors": self.errors}

    def summary(self) -> str:
        ts = sorted(((t, n) for n, t in self.timings_ms.items() if t), key=lambda x: x[0])
        return ", ".join(f"{n} {t:.3f} ms" for t, n in ts)


@dataclass
class TuneTable:
    path: Path
    key: dict
    versions: dict  # backend -> version string it was timed with
    entries: dict  # signature -> {bucket tuple: Entry}
    stale: str | None = None  # why the file is ignored

    def lookup(self, sig: str, b: tuple[int, int, int]):
        """(bucket used, Entry) for the nearest measured bucket of ``sig``, or None."""
        got = self.entries.get(sig)
        if not got:
            return None
        if b in got:
            return b, got[b]
        near = min(got, key=lambda m: (sum(abs(x - y) for x, y in zip(m, b)), m))
        return near, got[near]

    def to_dict(self) -> dict:
        return {"format": FORMAT, "key": self.key, "versions": self.versions,
                "entries": {s: {bucket_name(b): e.to_dict() for b, e in sorted(d.items())}
                            for s, d in sorted(self.entries.items())},
                "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _current_version(name: str) -> str | None:
    from . import backends

    try:
        return backends.get(name).version()  # package metadata only: never imports the package
    except Exception:  # noqa: BLE001
        return None


def read_table(path: Path, key: dict | None = None) -> TuneTable | None:
    """Parse a tune file; None when absent or unreadable. A version change makes it ``stale``."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return None
    entries: dict = {}
    for sig, per in (doc.get("entries") or {}).items():
        for bname, e in per.items():
            try:
                entries.setdefault(sig, {})[parse_bucket(bname)] = Entry(
                    e["winner"], dict(e.get("timings_ms") or {}), dict(e.get("shape") or {}),
                    e.get("mode", "fwd"), dict(e.get("errors") or {}))
            except (KeyError, ValueError, TypeError):
                continue
    table = TuneTable(path, doc.get("key") or {}, dict(doc.get("versions") or {}), entries)
    if key is not None and table.key != key:
        table.stale = "the file was written for another machine key"
    changed = [f"{n} {v} -> {_current_version(n) or 'not installed'}" for n, v in table.versions.items()
               if _current_version(n) != v]
    if changed:
        table.stale = (f"backend versions changed since `anyattn tune` ({'; '.join(changed)}): "
                       "re-run anyattn tune")
    return table


_tables: dict = {}


def table_for(device_type: str, device_index: int | None) -> TuneTable | None:
    """The tune table for a device (read once per process); None when there is no file."""
    k = (device_type, device_index)
    if k not in _tables:
        try:
            key = machine_key(device_type, device_index)
            _tables[k] = read_table(tune_path(key), key)
        except Exception:  # noqa: BLE001 - a broken cache must never take a call down
            _tables[k] = None
    return _tables[k]


def forget() -> None:
    """Drop tables read so far (after writing a file; ``anyattn.clear_cache()`` calls this)."""
    _tables.clear()


def measured_for(req, b: tuple[int, int, int] | None):
    """(table, bucket used, Entry) when a fresh tune table measured this request, else None."""
    if req.device_type not in ("cuda", "cpu"):
        return None
    table = table_for(req.device_type, req.device_index)
    if table is None or table.stale:
        return None
    if b is None:
        got = table.entries.get(signature(req))
        return (table, None, None) if got else None
    hit = table.lookup(signature(req), b)
    return None if hit is None else (table, hit[0], hit[1])


class TunedChoice:
    """What the decision cache holds for a request the tune file covers: a per-bucket dispatch.

    It has the backends' op methods; each computes the call's bucket from host ints and forwards
    to the measured winner (``default`` for buckets nowhere near a measurement cannot happen: the
    nearest measured bucket is used). ``name`` is the static choice's name.
    """

    def __init__(self, default, by_bucket: dict, table: TuneTable, sig: str):
        self.default = default
        self.name = default.name
        self._by_bucket = dict(by_bucket)  # bucket -> backend instance (measured buckets)
        self._resolved: dict = {}
        self._table = table
        self._sig = sig

    def pick(self, b):
        got = self._resolved.get(b)
        if got is None:
            hit = self._table.lookup(self._sig, b)
            got = self._by_bucket.get(hit[0], self.default) if hit else self.default
            self._resolved[b] = got
        return got

    def resolve(self, op, data, opts):
        """The backend this call's bucket picks (the custom ops run forward and backward on it)."""
        if op == "attention":
            q, k = data[0], data[1]
            return self.pick(bucket(q.shape[1], k.shape[1], q.shape[0]))
        if op == "varlen":
            return self.pick(bucket(data[5], data[6], data[3].shape[0] - 1))
        return self.pick(paged_bucket(data[1], data[3], opts.get("max_seqlen_q", 1), opts.get("max_seqlen_k")))

    def attention(self, q, k, v, **kw):
        return self.pick(bucket(q.shape[1], k.shape[1], q.shape[0])).attention(q, k, v, **kw)

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kw):
        return self.pick(bucket(max_seqlen_q, max_seqlen_k, cu_seqlens_q.shape[0] - 1)).varlen(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kw)

    def paged(self, q, k_cache, v_cache, block_table, seqused_k, **kw):
        b = paged_bucket(k_cache, block_table, kw.get("max_seqlen_q", 1), kw.get("max_seqlen_k"))
        return self.pick(b).paged(q, k_cache, v_cache, block_table, seqused_k, **kw)

    def __repr__(self) -> str:
        return f"<anyattn measured choice {self._sig}: {len(self._by_bucket)} buckets, default {self.name}>"


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------
@dataclass
class Case:
    op: str  # attention | varlen | paged
    head_dim: int
    causal: bool
    grad: bool
    batch: int
    seqlen_q: int
    seqlen_k: int
    heads: int
    gqa: int = 1
    block_size: int | None = None
    dtype: str = "bfloat16"

    def label(self) -> str:
        what = {"attention": "dense", "varlen": "varlen", "paged": "decode" if self.seqlen_q == 1 else "paged"}
        extra = f" block {self.block_size}" if self.block_size else ""
        return (f"{what[self.op]} {'fwd+bwd' if self.grad else 'fwd'} d{self.head_dim} "
                f"{'causal' if self.causal else 'full'} {self.batch}x{self.seqlen_k}{extra}")


PREFILL_SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)
BACKWARD_SEQLENS = (1024, 2048, 4096, 8192, 16384)
DECODE_SHAPES = ((1, 4096), (1, 32768), (16, 4096), (64, 2048), (128, 1024), (32, 8192))


def default_cases(ops=("attention", "varlen", "paged"), head_dims=(64, 128), seqlens=None, batches=None,
                  causal=(False, True), grad=(False, True), block_sizes=(16, 128), contexts=None,
                  dtype="bfloat16") -> list[Case]:
    """The shapes of ``anyattn bench`` (b*s = 16k tokens, h*d = 2048; decode GQA 32/8 d128)."""
    out: list[Case] = []

    def batches_for(s):
        return batches if batches else (max(1, 16384 // s),)

    for op in ops:
        if op in ("attention", "varlen"):
            for g in grad:
                if op == "varlen" and g and not seqlens:
                    continue  # the bench has no varlen backward: tuned only for seqlens you name
                for d in head_dims:
                    for c in causal:
                        for s in (seqlens or (BACKWARD_SEQLENS if g else PREFILL_SEQLENS)):
                            if op == "varlen" and not seqlens and s not in (1024, 4096, 16384):
                                continue
                            for b in batches_for(s):
                                out.append(Case(op, d, c, g, b, s, s, 2048 // d, dtype=dtype))
        elif op == "paged":
            shapes = DECODE_SHAPES
            if contexts or batches:
                shapes = tuple((b, c) for b in (batches or (1, 16, 64)) for c in (contexts or (4096,)))
            for bs in block_sizes:
                for (b, ctx) in shapes:
                    out.append(Case("paged", 128, True, False, b, 1, ctx, 32, gqa=4, block_size=bs, dtype=dtype))
    return out


def _timer(device):
    """A median-of-runs timer: triton's do_bench on CUDA (L2 flushed), wall clock elsewhere."""
    import torch

    if str(device).startswith("cuda"):
        try:
            import triton.testing

            return lambda fn, reps: triton.testing.do_bench(fn, warmup=25, rep=reps, return_mode="median")
        except Exception:  # noqa: BLE001
            pass

        def cuda_events(fn, reps):
            fn()
            torch.cuda.synchronize()
            times = []
            for _ in range(max(5, reps // 5)):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                torch.cuda.synchronize()
                times.append(a.elapsed_time(b))
            return sorted(times)[len(times) // 2]
        return cuda_events

    def wall(fn, reps):
        fn()
        times = []
        for _ in range(max(3, min(50, reps))):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[len(times) // 2]
    return wall


def _graphed(fn):
    """Capture a decode call in a CUDA graph where the backend allows it (like ``anyattn bench``)."""
    from .bench import _graphed as bench_graphed

    return bench_graphed(fn)


def build_call(case: Case, device):
    """Tensors for ``case`` and ``(request, fn(backend_or_None))`` running it (fwd, or fwd+bwd)."""
    import torch

    import anyattn
    from . import request as rq

    dt = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[case.dtype]
    g = torch.Generator(device="cpu").manual_seed(0)
    d, h = case.head_dim, case.heads

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dt)

    if case.op == "attention":
        b, sq, sk = case.batch, case.seqlen_q, case.seqlen_k
        q, k, v = rnd(b, sq, h, d), rnd(b, sk, h // case.gqa, d), rnd(b, sk, h // case.gqa, d)
        if case.grad:
            for t in (q, k, v):
                t.requires_grad_()
        req = rq.dense_request(q, k, v, causal=case.causal, scale=None, window=(-1, -1), softcap=0.0,
                               alibi_slopes=None, sinks=None, return_lse=False, out=None)[0]
        call = lambda be: anyattn.attention(q, k, v, causal=case.causal, backend=be)  # noqa: E731
        tensors = (q, k, v)
    elif case.op == "varlen":
        b, s = case.batch, case.seqlen_k
        q, k, v = rnd(b * s, h, d), rnd(b * s, h // case.gqa, d), rnd(b * s, h // case.gqa, d)
        if case.grad:
            for t in (q, k, v):
                t.requires_grad_()
        cu = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device=device)
        req = rq.varlen_request(q, k, v, cu, cu, s, s, causal=case.causal, scale=None, window=(-1, -1),
                                softcap=0.0, alibi_slopes=None, sinks=None, return_lse=False, out=None)[0]
        call = lambda be: anyattn.varlen_attention(q, k, v, cu, cu, s, s, causal=case.causal, backend=be)  # noqa: E731
        tensors = (q, k, v)
    else:
        b, ctx, page = case.batch, case.seqlen_k, case.block_size
        nbp = (ctx + page - 1) // page
        kc, vc = rnd(b * nbp, page, h // case.gqa, d), rnd(b * nbp, page, h // case.gqa, d)
        bt = torch.randperm(b * nbp, generator=g).view(b, nbp).to(device=device, dtype=torch.int32)
        su = torch.full((b,), ctx, dtype=torch.int32, device=device)
        q = rnd(b, h, d)
        req = rq.paged_request(q, kc, vc, bt, su, cu_seqlens_q=None, max_seqlen_q=1, max_seqlen_k=ctx,
                               causal=True, scale=None, window=(-1, -1), softcap=0.0, alibi_slopes=None,
                               sinks=None, return_lse=False, out=None)[0]
        call = lambda be: anyattn.paged_attention(q, kc, vc, bt, su, max_seqlen_k=ctx, backend=be)  # noqa: E731
        tensors = ()
    if case.grad:
        def fn(be):
            out = call(be)
            out.backward(torch.ones_like(out))
        return req, fn, tensors
    return req, call, tensors


def candidates(req, include_slow=False, only=None) -> list[str]:
    """Backends that can serve ``req`` here, in the static automatic order."""
    from . import selector

    decision = selector.decide(req)
    names = [c.name for c in decision.candidates if c.status in ("chosen", "usable")]
    if only:
        return [n for n in names if n in only]
    if not include_slow:
        names = [n for n in names if n not in SLOW and not (req.grad and n in SLOW_BACKWARD)]
    return names


def measure_case(case: Case, device, reps=100, include_slow=False, only=None, progress=None) -> tuple:
    """Time every usable backend on ``case``: (request, Entry)."""
    import torch

    req, fn, tensors = build_call(case, device)
    timer = _timer(device)
    timings, errors = {}, {}
    for name in candidates(req, include_slow, only):
        try:
            run = lambda n=name: fn(n)  # noqa: E731
            if case.op == "paged" and str(device).startswith("cuda"):
                run, _ = _graphed(run)
            grad_to_none = lambda: [setattr(t, "grad", None) for t in tensors]  # noqa: E731
            if tensors and case.grad:
                inner = run
                run = lambda inner=inner: (grad_to_none(), inner())  # noqa: E731
            timings[name] = float(timer(run, reps))
        except Exception as exc:  # noqa: BLE001 - a backend failing here is a measurement, not a crash
            timings[name] = None
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if progress:
            progress(case, name, timings[name])
    del tensors
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    ok = {n: t for n, t in timings.items() if t}
    winner = min(ok, key=ok.get) if ok else None
    shape = {"batch": case.batch, "seqlen_q": case.seqlen_q, "seqlen_k": case.seqlen_k, "heads": case.heads,
             "head_dim": case.head_dim, "gqa": case.gqa, "block_size": case.block_size}
    return req, (Entry(winner, timings, shape, "fwd+bwd" if case.grad else "fwd", errors) if winner else None)


def run_tune(cases, device="cuda", reps=100, include_slow=False, only=None, progress=None,
             path: Path | None = None) -> TuneTable:
    """Measure ``cases`` and merge the winners into this machine's tune file (written atomically)."""
    import torch

    from . import backends, selector

    dev = torch.device(device)
    index = dev.index if dev.index is not None or dev.type != "cuda" else torch.cuda.current_device()
    key = machine_key(dev.type, index)
    path = path or tune_path(key)
    old = read_table(path, key)
    table = TuneTable(path, key, {}, {} if (old is None or old.stale) else old.entries)
    if old is not None and not old.stale:
        table.versions = dict(old.versions)
    selector.clear_cache()
    forget()  # measure the static order, not a previous tune's
    _tables[(dev.type, index)] = None
    for case in cases:
        req, entry = measure_case(case, device, reps, include_slow, only, progress)
        if entry is None:
            continue
        table.entries.setdefault(signature(req), {})[bucket(case.seqlen_q, case.seqlen_k, case.batch)] = entry
        for n in entry.timings_ms:
            table.versions[n] = backends.get(n).version()
        write_table(table)  # after every case: an interrupted run keeps what it measured
    write_table(table)
    forget()
    selector.clear_cache()
    return table


def write_table(table: TuneTable) -> None:
    table.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = table.path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(table.to_dict(), indent=1, sort_keys=True))
    os.replace(tmp, table.path)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def register(subparsers) -> None:
    p = subparsers.add_parser("tune", help="time every usable backend here; automatic selection uses the winners",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", default="attention,varlen,paged", help="comma-separated: attention,varlen,paged")
    p.add_argument("--head-dims", default="64,128")
    p.add_argument("--seqlens", default=None, help="sequence lengths (default: anyattn bench's)")
    p.add_argument("--batches", default=None, help="batch sizes (default: 16k tokens / seqlen; decode: bench's)")
    p.add_argument("--contexts", default=None, help="paged: keys per sequence (default: bench's decode shapes)")
    p.add_argument("--block-sizes", default="16,128")
    p.add_argument("--causal", choices=("both", "yes", "no"), default="both")
    p.add_argument("--grad", choices=("both", "yes", "no"), default="both",
                   help="also time forward+backward (dense)")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--backends", default=None, help="only these backends (comma-separated)")
    p.add_argument("--all", action="store_true", help="also time the slow fallbacks (reference, sdpa_math)")
    p.add_argument("--reps", type=int, default=100, help="timing budget per backend and shape, ms")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry-run", action="store_true", help="list the shapes and candidates; time nothing")
    p.add_argument("--show", action="store_true", help="print this machine's tune file and exit")
    p.add_argument("--clear", action="store_true", help="delete this machine's tune file and exit")
    p.add_argument("--json", action="store_true", help="print the resulting table as JSON")
    p.set_defaults(func=main)


def _ints(text):
    return tuple(int(x) for x in text.split(",") if x.strip()) if text else None


def main(args) -> int:
    import torch

    from .request import dtype_name, parse_dtype

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("anyattn tune: needs a CUDA GPU (none visible); --device cpu times CPU backends", file=sys.stderr)
        return 2
    index = dev.index if dev.index is not None or dev.type != "cuda" else torch.cuda.current_device()
    key = machine_key(dev.type, index)
    path = tune_path(key)
    if args.clear:
        existed = path.exists()
        path.unlink(missing_ok=True)
        forget()
        print(f"{'removed' if existed else 'no tune file at'} {path}")
        return 0
    if args.show:
        table = read_table(path, key)
        if table is None:
            print(f"no tune file for this machine ({path})")
            return 1
        if args.json:
            print(json.dumps(table.to_dict(), indent=1, sort_keys=True))
        else:
            _print_table(table)
        return 0
    ops = tuple(o.strip() for o in args.ops.split(",") if o.strip())
    bad = [o for o in ops if o not in ("attention", "varlen", "paged")]
    if bad:
        print(f"anyattn tune: --ops: expected attention, varlen or paged, got {', '.join(bad)}", file=sys.stderr)
        return 2
    yn = {"both": (False, True), "yes": (True,), "no": (False,)}
    cases = default_cases(ops=ops, head_dims=_ints(args.head_dims), seqlens=_ints(args.seqlens),
                          batches=_ints(args.batches), causal=yn[args.causal], grad=yn[args.grad],
                          block_sizes=_ints(args.block_sizes), contexts=_ints(args.contexts),
                          dtype=dtype_name(parse_dtype(args.dtype)))
    only = tuple(x.strip() for x in args.backends.split(",")) if args.backends else None
    if only:
        from . import selector

        only = tuple(selector.resolve_name(n) for n in only)
    if args.dry_run:
        for c in cases:
            try:
                req = build_call(c, args.device)[0] if dev.type == "cpu" or torch.cuda.is_available() else None
                names = candidates(req, args.all, only) if req is not None else []
            except Exception as exc:  # noqa: BLE001
                names = [f"({type(exc).__name__}: {exc})"]
            print(f"{c.label():45s} {bucket_name(bucket(c.seqlen_q, c.seqlen_k, c.batch)):12s} {', '.join(names)}")
        print(f"{len(cases)} shapes; file: {path}")
        return 0

    t0 = time.perf_counter()

    def progress(case, name, ms):
        print(f"  {case.label():45s} {name:15s} {'%.3f ms' % ms if ms else 'failed'}", file=sys.stderr, flush=True)

    table = run_tune(cases, args.device, args.reps, args.all, only, progress, path)
    if args.json:
        print(json.dumps(table.to_dict(), indent=1, sort_keys=True))
    else:
        _print_table(table)
        print(f"wrote {path} ({time.perf_counter() - t0:.0f} s)")
    return 0


def _print_table(table: TuneTable) -> None:
    print(f"tune file {table.path}\n  machine: {json.dumps(table.key, sort_keys=True)}")
    if table.stale:
        print(f"  STALE (ignored): {table.stale}")
    for sig, per in sorted(table.entries.items()):
        print(sig)
        for b, e in sorted(per.items()):
            ok = {n: t for n, t in e.timings_ms.items() if t}
            best = ok.get(e.winner)
            rest = ", ".join(f"{n} {best / t:.2f}x" for n, t in sorted(ok.items(), key=lambda x: x[1])
                             if n != e.winner)
            print(f"  {bucket_name(b):12s} {e.mode:7s} {e.winner:15s} {best:.3f} ms   others: {rest or '-'}"
                  if best else f"  {bucket_name(b):12s} no measurement")

