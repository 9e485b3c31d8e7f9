"""Which backend serves a call, and why.

Precedence: the ``backend=`` argument or an enclosing ``use_backend(...)`` > the environment
variable ``ANYATTN_BACKEND`` > the automatic ranking. A single name is strict: if that backend
cannot serve the call, an error carries its reasons and nothing else runs. A comma-separated
list (or a Python list) is an ordered preference: its first backend that can serve wins.

The decision for a request signature is cached, so a steady-state call costs one dict lookup.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import logging
import os
from dataclasses import dataclass, field

from . import backends
from .request import Request, dtype_name, getenv

log = logging.getLogger("anyattn")
ENV_VAR = "ANYATTN_BACKEND"

# --------------------------------------------------------------------------------------------
# The automatic ranking: fastest first, per GPU family and op. Backends that cannot serve a
# request drop out with their reasons; the first left wins.
#
# Why this order (numbers: docs/PERF.md, `anyattn bench` on the lent H200, bf16, d=128, 16k):
# * Hopper (sm90), measured in one process on the H200 (issue 8; bf16, b*s = 16k, h*d = 2048,
#   TFLOP/s, backward counted as 2.5x the forward FLOPs):
#                          FA4 4.0.0b36   sdpa_cudnn   triton   sdpa_flash (FA2)
#     fwd d128 16k full/causal   631/639      615/568   499/486      352/319
#     fwd d128 1k  full/causal   576/412      584/425   399/297      329/247
#     fwd d64  16k full/causal   509/518      467/445   414/404      308/297
#     bwd d128 16k full/causal   621/683      545/538      -         309/316
#   FlashAttention-4 wins every long forward and both backwards by 3-27 %; cuDNN wins the 1k
#   forwards by 1-3 %, which `anyattn tune` catches per bucket (the static list is one order per
#   op). Re-measured in the release run of 2026-12-01 (`bash benchmarks/device_release.sh bench`:
#   `anyattn tune`, then `anyattn bench --quick`; docs/PERF.md section S): the same order in every
#   row. Forward, b*s = 16k: cuDNN first at seqlen 512-1k (FA4 0.70-0.98x of it), FA4 from 2-4k
#   on (cuDNN 0.81-0.93x, triton 0.62-0.82x); forward+backward: FA4 at every length (cuDNN
#   0.82-0.92x, FA2 0.46-0.64x, triton 0.31-0.61x); varlen: FA4, triton 0.74-0.92x (triton first
#   at 16 x 1k, d=64); paged decode: triton at page 16 everywhere (FA4 0.11-0.99x), page 128
#   split (FA4 ahead by 2-4 % at batch >= 16, triton 3-9x ahead at batch 1). With the tune file,
#   automatic selection was >= 0.98x the best backend on all 26 `anyattn bench --quick` rows.
#   Since then FA4's page-128 path (TMA, which needs finite rows past seqused_k) is taken only by
#   name (FlashAttn4Backend.input_conditions), so at page 128 and batch >= 16 automatic selection
#   takes triton, 0.96-0.97x of FA4 there (the same run's numbers).
#   FA4 costs an ~8 s import and 1.6-3.8 s JIT per kernel variant, paid once per process.
#   FlashAttention-3 (~650 TFLOP/s published) has no wheel for torch 2.11 + CUDA 13, so it
#   could not be measured here; it follows FA4 (the same algorithm, FA4's CuTe port is at par).
#   Varlen: FA4 runs its dense kernel with a varlen scheduler (not measured separately yet).
#   Paged decode: FA4 has no split-KV on sm90, so batch 1 x 32k reads KV at 7-9 % of copy
#   bandwidth against Triton's 62 % (graphed); at batch 16 x 4k (page 16, eager) FA4 reaches
#   78 % against Triton's 55 % (host-bound eager). Triton stays first for paged (graph-safe, no
#   host sync, good at every batch); FA4 follows; tune decides per batch/context bucket.
#   cuDNN attention through SDPA needs no extra install. anyattn's Triton kernels come next (503 / 500; no
#   compile step at install, every feature, CUDA-graph safe), ahead of FA2 (sdpa_flash: 354 / 320,
#   no wgmma path) and FlexAttention (482 / 391, but it compiles on every new shape). For paged
#   decode Triton reads KV at 93-100 % of copy bandwidth at batch >= 32 with no host sync, so it
#   goes before FlashInfer, whose plan() synchronises on every call through anyattn.
# * Ampere/Ada (sm80-sm89): FA2 is the reference kernel there; torch's flash kernel is the same
#   code; cuDNN is close; Triton, xFormers and Flex follow. For paged KV, Triton (no host sync,
#   graph-safe) goes before FlashInfer, whose plan() synchronises on every call through anyattn.
# * Blackwell (sm100+), documented estimates: FlashAttention-4 is written for sm100 (tcgen05,
#   TMEM, 2-CTA MMA; its paper reports up to 1613 TFLOP/s bf16 on B200, 1.1-1.3x cuDNN 9.13), so
#   it leads dense/varlen; FA2/FA3 wheels lag; FlashInfer and cuDNN ship sm100 kernels early
#   (vLLM defaults to FlashInfer there); Triton's sm100 configurations are not tuned. For paged
#   decode FlashInfer leads (anyattn runs FA4 without split-KV). On sm12x FA4 runs an
#   Ampere-style kernel: run `anyattn tune` there.
# * FlashAttention-4 on Ampere/Ada runs an untuned Ampere-style kernel with no backward, no
#   paged KV and no sinks: it ranks after the native kernels.
# * Pre-Ampere (sm70/sm75, T4/V100): FlashAttention refuses these GPUs; xFormers' cutlass kernel
#   and torch's memory-efficient kernel run there.
# * CPU: torch's CPU flash kernel, then the math kernel; Flex (uncompiled on CPU: compiled it is
#   not trustworthy there, see backends/flex.py) only leads for what SDPA lacks (softcap, lse,
#   sinks); the reference last.
# Varlen/paged: native kernels first, gathering fallbacks (SDPA, Flex paged) after them.
# --------------------------------------------------------------------------------------------
_FALLBACKS = ["sdpa_efficient", "sdpa_math", "reference"]
AUTO_ORDER: dict[str, dict[str, list[str]]] = {
    "hopper": {
        "attention": ["flash_attn_4", "flash_attn_3", "sdpa_cudnn", "triton", "flash_attn", "sdpa_flash",
                      "flex", "xformers", "flashinfer", *_FALLBACKS],
        "varlen": ["flash_attn_4", "flash_attn_3", "triton", "flash_attn", "flashinfer", "xformers", "flex",
                   "sdpa_cudnn", *_FALLBACKS],
        "paged": ["flash_attn_3", "triton", "flash_attn_4", "flashinfer", "flash_attn", "flex", "sdpa_cudnn",
                  *_FALLBACKS],
    },
    "ampere": {
        "attention": ["flash_attn", "sdpa_flash", "sdpa_cudnn", "triton", "flash_attn_4", "xformers", "flex",
                      "flashinfer", *_FALLBACKS],
        "varlen": ["flash_attn", "triton", "flash_attn_4", "flashinfer", "xformers", "flex", "sdpa_flash",
                   *_FALLBACKS],
        "paged": ["flash_attn", "triton", "flashinfer", "flex", "sdpa_flash", *_FALLBACKS],
    },
    "blackwell": {
        "attention": ["flash_attn_4", "flashinfer", "sdpa_cudnn", "flash_attn", "triton", "sdpa_flash", "flex",
                      "xformers", *_FALLBACKS],
        "varlen": ["flash_attn_4", "flashinfer", "flash_attn", "triton", "flex", "xformers", "sdpa_cudnn",
                   *_FALLBACKS],
        "paged": ["flashinfer", "flash_attn_4", "flash_attn", "triton", "flex", "sdpa_cudnn", *_FALLBACKS],
    },
    "pre_ampere": {
        "attention": ["xformers", "sdpa_efficient", "triton", "flex", "sdpa_math", "reference"],
        "varlen": ["xformers", "triton", "flex", "sdpa_efficient", "sdpa_math", "reference"],
        "paged": ["triton", "flex", "sdpa_efficient", "sdpa_math", "reference"],
    },
    "cpu": {
        "attention": ["sdpa_flash", "sdpa_math", "flex", "reference"],
        "varlen": ["sdpa_flash", "sdpa_math", "flex", "reference"],
        "paged": ["sdpa_flash", "sdpa_math", "flex", "reference"],
    },
    "other": {  # mps, xpu, ...: whatever torch runs there
        "attention": ["sdpa", "sdpa_math", "reference"],
        "varlen": ["sdpa", "sdpa_math", "reference"],
        "paged": ["sdpa", "sdpa_math", "reference"],
    },
}


def device_family(req: Request) -> str:
    if req.device_type == "cpu":
        return "cpu"
    if req.device_type != "cuda" or req.capability is None:
        return "other"
    major = req.capability[0]
    if major >= 10:
        return "blackwell"
    if major == 9:
        return "hopper"
    if major == 8:
        return "ampere"
    return "pre_ampere"


# Training: with a backward to run, anyattn's Triton kernels go after the faster native
# backwards, and serve what they cannot (softcap, sinks, ALiBi, varlen without flash-attn).
# On Hopper the FA2 kernels (sdpa_flash, the flash-attn package) are not among the faster ones:
# forward+backward on the H200 (bf16, b*s = 16k, h*d = 2048, docs/PERF.md §S and §T), d64:
# triton 263-337 TFLOP/s against sdpa_flash's 256-294 on all four rows of `anyattn bench`; d128:
# triton's backward alone 283-372 (sweep) against FA2's 271-315, its forward 411-498 against
# 301-346. Elsewhere the Triton backward is unmeasured and ranks after all of them.
_SLOW_BACKWARD = ("triton",)
_TRAINING_FIRST = ("flash_attn_4", "flash_attn_3", "flash_attn", "flashinfer", "sdpa_cudnn", "sdpa_flash",
                   "xformers")
_TRAINING_FIRST_BY_FAMILY = {
    "hopper": tuple(n for n in _TRAINING_FIRST if n not in ("flash_attn", "sdpa_flash")),
}


def auto_order(req: Request) -> list[str]:
    family = device_family(req)
    order = AUTO_ORDER[family][req.op]
    if req.grad and req.device_type == "cuda":
        slow = [n for n in _SLOW_BACKWARD if n in order]
        rest = [n for n in order if n not in slow]
        first = _TRAINING_FIRST_BY_FAMILY.get(family, _TRAINING_FIRST)
        # after the fast native backwards ranked before Flex, and before Flex and the gathering
        # fallbacks (Flex's compiled backward failed under gradient checkpointing on the H200:
        # CheckpointError)
        flex_at = rest.index("flex") if "flex" in rest else len(rest)
        at = max((i + 1 for i, n in enumerate(rest[:flex_at]) if n in first), default=0)
        if slow and any(order.index(s_) < at for s_ in slow):
            order = rest[:at] + slow + rest[at:]
    # Backends without a rank here (plain `sdpa`, plugins) are still evaluated and explained.
    return order + [n for n in backends.names() if n not in order]


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------
_EXTRA_ALIASES = {
    "flash_attn": ("flash_attn", "flash_attn_2", "flashattn", "flash_attention", "fa2", "fa"),
    "flash_attn_3": ("fa3", "flash_attn3", "flashattn3", "flash_attention_3", "hopper", "flash_attn_interface"),
    "flash_attn_4": ("fa4", "flash_attn4", "flashattn4", "flash_attention_4", "flash_attn_cute", "cute"),
    "flashinfer": ("flash_infer",),
    "xformers": ("xformers_attn", "xformers_memory_efficient", "memory_efficient_attention"),
    "triton": ("triton_attn", "anyattn_triton", "triton_attention"),
}


def _normalize(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def _alias_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for canonical in backends.names():
        table[canonical] = canonical
        try:
            inst = backends.get(canonical)
            aliases = inst.aliases
        except Exception:  # noqa: BLE001 - a broken adapter module must not break name lookup
            aliases = ()
        for alias in (*aliases, *_EXTRA_ALIASES.get(canonical, ())):
            table.setdefault(_normalize(alias), canonical)
    return table


def resolve_name(name: str) -> str:
    """Canonical backend name for ``name`` (case-insensitive, aliases accepted)."""
    if not isinstance(name, str):
        raise TypeError(f"backend: expected a name (str), got {type(name).__name__}")
    table = _alias_table()
    key = _normalize(name)
    if key in table:
        return table[key]
    close = difflib.get_close_matches(key, list(table), n=1, cutoff=0.5)
    hint = f" Did you mean {table[close[0]]!r}?" if close else ""
    raise ValueError(f"backend: unknown name {name!r}.{hint} Valid names: {', '.join(backends.names())} "
                     "(case-insensitive; aliases such as FLASH_ATTN, fa3, TRITON_ATTN, cudnn work too)")


def parse_preference(value) -> tuple[str, ...]:
    """'a,b' or ['a', 'b'] or 'a' -> canonical names, in order, duplicates removed."""
    if isinstance(value, str):
        parts = [p for p in value.split(",") if p.strip()]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise TypeError(f"backend: expected a name, a comma-separated string or a list of names, "
                        f"got {type(value).__name__}")
    if not parts:
        raise ValueError(f"backend: expected at least one backend name, got {value!r}")
    return tuple(dict.fromkeys(resolve_name(p) for p in parts))


_context_pref: contextvars.ContextVar = contextvars.ContextVar("anyattn_backend", default=None)


@contextlib.contextmanager
def use_backend(name_or_list):
    """Within this block, calls use ``name_or_list`` (strict for one name, ordered for a list)."""
    pref = parse_preference(name_or_list)
    token = _context_pref.set(pref)
    try:
        yield pref
    finally:
        _context_pref.reset(token)


# --------------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    name: str
    status: str  # chosen | usable | rejected | unavailable | not installed | not requested
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    version: str | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "reasons": self.reasons, "notes": self.notes,
                "version": self.version}


@dataclass
class Decision:
    request: Request
    source: str  # "backend= argument" | "use_backend()" | "ANYATTN_BACKEND" | "automatic"
    preference: tuple[str, ...] | None
    chosen: str | None
    candidates: list[Candidate]
    #: set when a tune file's measurement chose: {"bucket", "shape_bucket", "winner", "timings_ms",
    #: "mode", "file"} (see anyattn.tune); None otherwise
    measured: dict | None = None

    @property
    def strict(self) -> bool:
        return self.preference is not None and len(self.preference) == 1

    def to_dict(self) -> dict:
        r = self.request
        return {
            "request": {"op": r.op, "device": r.device_type if r.device_index is None else f"{r.device_type}:{r.device_index}",
                        "capability": list(r.capability) if r.capability else None,
                        "dtype": dtype_name(r.dtype), "head_dim": r.head_dim, "head_dim_v": r.head_dim_v,
                        "gqa_ratio": r.gqa_ratio, "causal": r.causal, "window": r.window,
                        "softcap": r.softcap, "alibi": r.alibi, "sinks": r.sinks, "lse": r.lse,
                        "out": r.out, "grad": r.grad, "block_size": r.block_size},
            "source": self.source,
            "preference": list(self.preference) if self.preference else None,
            "chosen": self.chosen,
            "candidates": [c.to_dict() for c in self.candidates],
            "measured": self.measured,
        }

    def summary(self) -> str:
        lines = [f"request: {self.request.describe()}",
                 f"selection: {self.source}" + (f" {','.join(self.preference)}" if self.preference else ""),
                 f"chosen: {self.chosen or 'none'}"]
        if self.measured:
            lines.append(f"measured: {_measured_line(self.measured)}")
        for c in self.candidates:
            text = "; ".join(c.reasons or c.notes)
            lines.append(f"  {c.name:15s} {c.status:14s} {text}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __rich__(self):
        from rich.table import Table

        caption = f"selection: {self.source}" + (f" ({', '.join(self.preference)})" if self.preference else "")
        if self.measured:
            caption += f"\nmeasured: {_measured_line(self.measured)}"
        table = Table(title=f"{self.request.describe()} -> {self.chosen or 'no backend'}", caption=caption)
        table.add_column("#", justify="right")
        table.add_column("backend")
        table.add_column("status")
        table.add_column("why")
        styles = {"chosen": "bold green", "usable": "green", "rejected": "yellow",
                  "unavailable": "red", "not installed": "dim", "not requested": "dim"}
        for i, c in enumerate(self.candidates, 1):
            why = "\n".join(c.reasons) if c.reasons else "\n".join(c.notes)
            table.add_row(str(i), c.name, f"[{styles.get(c.status, '')}]{c.status}[/]", why)
        return table


class NoBackendError(RuntimeError):
    """No backend (or not the one you forced) can serve this call. ``.decision`` says why."""

    def __init__(self, decision: Decision):
        self.decision = decision
        if decision.strict:
            name = decision.preference[0]
            cand = next(c for c in decision.candidates if c.name == name)
            head = (f"backend {name!r} was requested ({decision.source}) but cannot serve "
                    f"{decision.request.describe()}: {'; '.join(cand.reasons)}")
        elif decision.preference:
            head = (f"none of the requested backends ({', '.join(decision.preference)}; {decision.source}) "
                    f"can serve {decision.request.describe()}")
        else:
            head = f"no attention backend can serve {decision.request.describe()}"
        rest = [f"  {c.name}: {'; '.join(c.reasons)}" for c in decision.candidates
                if c.reasons and not (decision.strict and c.name == decision.preference[0])]
        tail = "\nother backends:\n" + "\n".join(rest) if rest else ""
        if decision.strict:
            tail += "\n(a single backend name is strict; give a comma-separated list to allow fallbacks)"
        super().__init__(head + tail)


def _status(b, reasons: list[str]) -> str:
    if not reasons:
        return "usable"
    if reasons[0].startswith("not installed"):
        return "not installed"
    if reasons[0].startswith("unavailable"):
        return "unavailable"
    return "rejected"


def _evaluate(name: str, req: Request, trusted: bool = False) -> Candidate:
    """One candidate's verdict. ``trusted``: the user forced this one backend by name, so what
    this machine learnt about it (self-test, run-time failures) and what it needs of the inputs'
    values (``input_conditions``) are notes, not vetoes."""
    try:
        b = backends.get(name)
        reasons = b.reasons(req)
        notes = b.notes(req) if not reasons else []
        version = b.version()  # package metadata only: never imports the package
        if not reasons:
            learnt = _learnt_reasons(name, req)
            unchecked = b.input_conditions(req)
            if trusted:
                notes = ([f"{r} (forced by name: running it anyway)" for r in learnt]
                         + [f"needs {c} (forced by name: the caller vouches for it)" for c in unchecked] + notes)
            else:
                reasons = learnt + [f"needs {c}, which anyattn cannot check per call; backend='{name}' "
                                    "vouches for it" for c in unchecked]
    except Exception as exc:  # noqa: BLE001 - a broken adapter is a reason, not a crash
        from .backends.base import one_line

        return Candidate(name, "unavailable", [f"unavailable: adapter failed: {one_line(exc)}"])
    return Candidate(name, _status(b, reasons), reasons, notes, version)


# What this process and machine learnt about backends that can serve a request on paper:
# failures at run time (per signature, from recovery or ANYATTN_VERIFY=1) and the cached
# results of `anyattn verify` (per backend x op x dtype x feature family).
_runtime_failures: dict[tuple[Request, str], str] = {}


def _learnt_reasons(name: str, req: Request) -> list[str]:
    out = []
    failed = _runtime_failures.get((req, name))
    if failed:
        out.append(failed)
    try:
        from . import verify

        found = verify.known_failure(name, req)
    except Exception as exc:  # noqa: BLE001 - an unreadable verify cache must not break selection
        log.debug("anyattn: verify cache unreadable: %s", exc)
        found = None
    if found:
        out.append(found)
    return out


def _measured_line(m: dict) -> str:
    if "stale" in m:
        return f"tune file ignored: {m['stale']} [{m['file']}]"
    ts = sorted(((t, n) for n, t in m["timings_ms"].items() if t), key=lambda x: x[0])
    near = "" if m["bucket"] == m["shape_bucket"] else f" (nearest measured to {m['shape_bucket']})"
    return (f"anyattn tune chose {m['winner']} for bucket {m['bucket']}{near}, {m['mode']}: "
            + ", ".join(f"{n} {t:.3f} ms" for t, n in ts) + f" [{m['file']}]")


def _prepare(name: str) -> str | None:
    """Let a backend that defers its import (flash_attn_4) import now; its failure as a reason."""
    try:
        prep = getattr(backends.get(name), "prepare", None)
        return prep() if prep is not None else None
    except Exception as exc:  # noqa: BLE001
        from .backends.base import one_line

        return one_line(exc)


def decide(req: Request, preference: tuple[str, ...] | None = None, source: str = "automatic", *,
           measured: dict | None = None, prepare: bool = False) -> Decision:
    """Evaluate the candidates for ``req`` (uncached). Raises nothing; see ``Decision.chosen``.

    ``measured`` (automatic selection only): a tune file's result for this call's bucket; its
    winner is tried first. ``prepare``: import deferred backends before choosing them (calls do;
    ``explain()`` does not, so it stays free of an 8 s import).
    """
    if preference:
        order = list(preference)
        rest = [n for n in auto_order(req) if n not in preference]
    else:
        order, rest = auto_order(req), []
        if measured and measured.get("winner") in order:
            order = [measured["winner"]] + [n for n in order if n != measured["winner"]]
    candidates = []
    chosen = None
    strict = preference is not None and len(preference) == 1
    for name in order:
        cand = _evaluate(name, req, trusted=strict)
        if cand.status == "usable" and chosen is None and prepare:
            err = _prepare(name)
            if err:
                cand.status, cand.reasons, cand.notes = "unavailable", [f"unavailable: {err}"], []
        if cand.status == "usable":
            if chosen is None:
                cand.status = "chosen"
                chosen = name
                if measured and name == measured.get("winner"):
                    cand.notes.insert(0, f"measured fastest here ({_measured_line(measured)})")
            else:
                t = (measured or {}).get("timings_ms", {}).get(name)
                cand.notes.insert(0, f"could serve; measured {t:.3f} ms" if t else
                                  f"could serve; ranked after {chosen}")
        candidates.append(cand)
    for name in rest:  # explained, but a forced choice never falls back to them
        cand = _evaluate(name, req)
        if cand.status == "usable":
            cand.status = "not requested"
            cand.notes.insert(0, "could serve, but was not in the requested list")
        candidates.append(cand)
    return Decision(req, source, preference, chosen, candidates,
                    measured if (measured and chosen == measured.get("winner")) else None)


_cache: dict = {}


def clear_cache() -> None:
    """Forget cached decisions (after installing a package, changing ANYATTN_BACKEND, running
    ``anyattn tune``...), including the run-time failures recovery recorded, and re-read the
    verify cache."""
    _cache.clear()
    _runtime_failures.clear()
    _warned.clear()
    import sys

    from . import verify

    verify.forget_loaded()
    tune = sys.modules.get(__package__ + ".tune")
    if tune is not None:
        tune.forget()


def current_preference(explicit) -> tuple[object, str]:
    if explicit is not None:
        return explicit, "backend= argument"
    ctx = _context_pref.get()
    if ctx is not None:
        return ctx, "use_backend()"
    env = getenv(ENV_VAR)  # os.environ.get without its KeyError cost: this runs on every call
    if env and env.strip():
        return env, ENV_VAR
    return None, "automatic"


def select(req: Request, explicit=None):
    """The backend instance for this call; the hot path is one dict lookup."""
    raw, source = current_preference(explicit)
    return select_preference(req, raw, source)


def _assume_constant(fn):
    # torch.compile evaluates fn once while tracing and bakes the answer into the graph (Dynamo
    # cannot trace ContextVar.get itself); eager calls are unaffected. This is exactly what
    # torch.compiler.assume_constant_result does, without importing torch._dynamo (2 s) at
    # `import anyattn`; tests/test_custom_ops.py checks that Dynamo still honours it.
    fn._dynamo_marked_constant = True
    return fn


@_assume_constant
def preference_string(explicit) -> str:
    """The preference in force for a call (argument, use_backend(), env), as one string: ""
    for automatic, else comma-separated names. The custom ops carry it as a plain argument, so
    a compiled graph and its backward see the preference of the call that traced them."""
    raw, _ = current_preference(explicit)
    if raw is None:
        return ""
    return raw if isinstance(raw, str) else ",".join(raw)


def _cached(req: Request, raw):
    """(decision-cache key, cached backend or None) for ``req`` under the preference ``raw``."""
    key = (req, raw if not isinstance(raw, list) else tuple(raw))
    try:
        return key, _cache.get(key)
    except TypeError:  # an unhashable preference (a set...): let the parser say what is wrong
        parse_preference(raw)
        raise


def _parsed(raw, source: str):
    """The preference as a tuple of canonical names (``use_backend()`` stores it parsed already)."""
    if raw is None:
        return None
    return raw if isinstance(raw, tuple) and source == "use_backend()" else parse_preference(raw)


def select_preference(req: Request, raw, source: str = "automatic"):
    """``select`` for an already-resolved preference (None or "" = automatic)."""
    if raw == "":
        raw, source = None, "automatic"
    key, hit = _cached(req, raw)
    return hit if hit is not None else _select_uncached(req, raw, source, key)


def _select_uncached(req: Request, raw, source: str, key):
    pref = _parsed(raw, source)
    decision = decide(req, pref, source, prepare=True)
    if decision.chosen is not None and not decision.strict and _verify_on_first_use():
        decision = _verified(decision, pref, source)
    if decision.chosen is None:
        raise NoBackendError(decision)
    log.info("anyattn: %s -> %s (%s)", req.describe(), decision.chosen, source)
    if log.isEnabledFor(logging.DEBUG):
        for c in decision.candidates:
            if c.reasons:
                log.debug("anyattn:   %s %s: %s", c.name, c.status, "; ".join(c.reasons))
    backend = backends.get(decision.chosen)
    if raw is None:
        backend = _tuned(req, backend)
    _cache[key] = backend
    return backend


VERIFY_ENV = "ANYATTN_VERIFY"


def _verify_on_first_use() -> bool:
    return os.environ.get(VERIFY_ENV, "") not in ("", "0", "false", "False")


def _verified(decision: Decision, pref, source) -> Decision:
    """ANYATTN_VERIFY=1: check the chosen backend on one small case of this signature before
    trusting it; a wrong answer becomes this signature's reason and the next candidate is checked."""
    from . import verify

    req = decision.request
    while decision.chosen is not None and decision.chosen != "reference":
        try:
            failure = verify.quick_check(decision.chosen, req)
        except Exception as exc:  # noqa: BLE001 - a self-test that cannot be built must not fail the call
            log.debug("anyattn: ANYATTN_VERIFY could not check %s for %s: %s", decision.chosen, req.describe(), exc)
            failure = None
        if failure is None:
            break
        _runtime_failures[(req, decision.chosen)] = failure
        log.warning("anyattn: %s %s; choosing again for %s", decision.chosen, failure, req.describe())
        decision = decide(req, pref, source, prepare=True)
    return decision


# --------------------------------------------------------------------------------------------
# Running a call, with recovery
# --------------------------------------------------------------------------------------------
# Exceptions that are the caller's (bad arguments a backend's own data checks found): never a
# reason to try another backend. Running out of memory is about the caller's sizes, not the
# backend, and another backend would only hide it.
_NOT_RECOVERABLE: tuple[type[BaseException], ...] = (ValueError, TypeError)
_warned: set = set()


def _not_recoverable(exc: BaseException) -> bool:
    if isinstance(exc, _NOT_RECOVERABLE):
        return True
    oom = getattr(__import__("torch"), "OutOfMemoryError", None)
    return oom is not None and isinstance(exc, oom)


def run(req: Request, explicit, call):
    """Select the backend for ``req`` (as :func:`select`) and return ``call(backend)``.

    In automatic mode and for an ordered preference, a backend that raises at run time
    (NotImplementedError, torch/Inductor errors, Triton out-of-resources, an import error on
    first use...) is recorded as this signature's reason and the next usable backend serves the
    call; one WARNING per signature says what failed and what runs instead. A single strict name
    re-raises. The caller's own ValueError/TypeError are never retried.
    """
    raw, source = current_preference(explicit)
    return run_preference(req, raw, source, call)


def run_preference(req: Request, raw, source, call):
    """:func:`run` for an already-resolved preference (the custom ops carry it as a string)."""
    if raw == "":
        raw, source = None, "automatic"
    key, backend = _cached(req, raw)
    if backend is None:
        backend = _select_uncached(req, raw, source, key)
    try:
        return call(backend)
    except Exception as exc:  # noqa: BLE001 - sorted below: the caller's errors re-raise untouched
        if _not_recoverable(exc):
            raise
        return _recover(key, req, raw, source, call, backend, exc)


def _recover(key, req, raw, source, call, failed, first_exc):
    from .backends.base import CallDeclined

    if isinstance(first_exc, CallDeclined):
        return _serve_declined(key, req, raw, source, call, failed, first_exc)
    if _strict_key(key):  # a single name is strict: its failure is the caller's to see
        raise first_exc
    tried = []
    exc = first_exc
    while True:
        _record_failure(key, req, failed.name, exc, tried)
        try:
            backend = select_preference(req, raw, source)
        except NoBackendError:
            _warn_unserved(req, tried)
            raise first_exc from None
        try:
            result = call(backend)
        except CallDeclined as nxt:
            # the next in line refuses only this call's sizes (the decliner that sent us here,
            # met again): serve the call with the rest and record nothing about it
            return _serve_declined(key, req, raw, source, call, backend, nxt, tried)
        except Exception as nxt:  # noqa: BLE001
            if _not_recoverable(nxt):
                raise
            failed, exc = backend, nxt
            continue
        _warn_recovered(req, tried, backend.name)
        return result


def _record_failure(key, req, name, exc, tried) -> str:
    """``name`` failed at run time for ``req``: a cached reason for the signature, its entry in
    ``tried`` (for the WARNING) and the decision cache entry dropped; returns the reason."""
    from .backends.base import one_line

    reason = _runtime_failures[(req, name)] = f"failed at run time on this machine: {one_line(exc)}"
    tried.append(f"{name} ({one_line(exc)})")
    _cache.pop(key, None)
    return reason


def _warn_unserved(req, tried):
    log.warning("anyattn: %s failed for %s and no other backend can serve it", ", ".join(tried), req.describe())


def _warn_recovered(req, tried, name):
    """One WARNING per signature: what failed at run time and what serves it instead."""
    if tried and req not in _warned:
        _warned.add(req)
        log.warning("anyattn: %s failed at run time for %s; %s serves this signature instead "
                    "(anyattn.explain() shows why)", ", ".join(tried), req.describe(), name)


def _serve_declined(key, req, raw, source, call, declined, exc, tried=()):
    """A backend refused this one call for its sizes (``CallDeclined``): the next usable backend
    in the same decision serves it, and nothing is recorded, since the next call of the signature
    may well suit the first backend again. A strict name raises ``NoBackendError`` with the reason.
    ``tried``: real run-time failures met before (recovery's), named in its WARNING."""
    from .backends.base import CallDeclined

    decision = decide(req, _parsed(raw, source), source, prepare=True)
    names = [c.name for c in decision.candidates if c.status in ("chosen", "usable")]
    refused = {declined.name: f"declined this call at run time: {exc}"}
    tried = list(tried)
    for name in ([] if decision.strict else names):
        if name in refused:
            continue
        backend = backends.get(name)
        try:
            result = call(backend)
        except CallDeclined as nxt:
            refused[name] = f"declined this call at run time: {nxt}"
            continue
        except Exception as nxt:  # noqa: BLE001 - a real failure of the next one: recorded, as in recovery
            if _not_recoverable(nxt):
                raise
            refused[name] = _record_failure(key, req, name, nxt, tried)
            continue
        _warn_recovered(req, tried, backend.name)
        return result
    for c in decision.candidates:
        if c.name in refused:
            c.status, c.reasons = "rejected", [refused[c.name]]
    decision.chosen = None
    if tried:
        _warn_unserved(req, tried)
    raise NoBackendError(decision) from exc


def _strict_key(key) -> bool:
    raw = key[1]
    if raw is None:
        return False
    try:
        return len(parse_preference(raw)) == 1
    except (TypeError, ValueError):
        return False


def _tuned(req: Request, default):
    """With a tune file for this device that measured ``req``: a per-bucket dispatcher, else ``default``.

    Runs once per request signature (on a decision-cache miss), so the common path never pays
    for it; the dispatcher's own cost is a few integer operations and a dict lookup per call.
    """
    from . import tune

    try:
        hit = tune.measured_for(req, None)
        if hit is None:
            return default
        table = hit[0]
        sig = tune.signature(req)
        by_bucket = {}
        for b, entry in table.entries.get(sig, {}).items():
            name = entry.winner
            if name == default.name:
                by_bucket[b] = default
            elif name in backends.names() and _evaluate(name, req).status == "usable" and _prepare(name) is None:
                by_bucket[b] = backends.get(name)
        if not by_bucket:
            return default
        log.info("anyattn: %s -> measured choice per bucket (%s)", req.describe(),
                 ", ".join(f"{tune.bucket_name(b)}: {be.name}" for b, be in sorted(by_bucket.items())))
        return tune.TunedChoice(default, by_bucket, table, sig)
    except Exception as exc:  # noqa: BLE001 - a broken tune file must never take a call down
        log.debug("anyattn: tune file ignored: %s", exc)
        return default


def explain_request(req: Request, explicit=None, bucket: tuple[int, int, int] | None = None) -> Decision:
    """The decision for ``req``; with the call's ``bucket``, a tune file's measurement is shown/used."""
    raw, source = current_preference(explicit)
    pref = None if raw is None else parse_preference(raw)
    measured = None
    if raw is None and bucket is not None:
        from . import tune

        try:
            hit = tune.measured_for(req, bucket)
        except Exception:  # noqa: BLE001
            hit = None
        if hit is not None:
            table, used, entry = hit
            measured = {"bucket": tune.bucket_name(used), "shape_bucket": tune.bucket_name(bucket),
                        "winner": entry.winner, "timings_ms": dict(entry.timings_ms), "mode": entry.mode,
                        "file": str(table.path)}
        else:
            table = tune.table_for(req.device_type, req.device_index) if req.device_type in ("cuda", "cpu") else None
            if table is not None and table.stale:
                d = decide(req, pref, source)
                d.measured = {"stale": table.stale, "file": str(table.path)}
                return d
    return decide(req, pref, source, measured=measured)


# --------------------------------------------------------------------------------------------
# Described requests (no tensors): the CLI and the doctor use these.
# --------------------------------------------------------------------------------------------
def describe_request(*, op: str = "attention", dtype="bfloat16", head_dim: int = 128,
                     head_dim_v: int | None = None, causal: bool = False, gqa: int = 1, window: int | None = None,
                     softcap: float = 0.0, alibi: bool = False, sinks: bool = False, lse: bool = False,
                     grad: bool = False, block_size: int | None = None, device=None) -> Request:
    import torch

    from .request import OPS, device_capability, parse_dtype

    if op not in OPS:
        raise ValueError(f"op: expected one of {', '.join(OPS)}, got {op!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device} requested but torch sees no CUDA device "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
    index = dev.index if dev.index is not None or dev.type != "cuda" else torch.cuda.current_device()
    if op == "paged" and block_size is None:
        block_size = 16
    return Request(op=op, device_type=dev.type, device_index=index,
                   capability=device_capability(dev.type, index), dtype=parse_dtype(dtype),
                   head_dim=head_dim, head_dim_v=head_dim_v or head_dim, gqa_ratio=gqa, causal=causal,
                   window=window is not None and window >= 0, softcap=softcap > 0, alibi=alibi, sinks=sinks,
                   lse=lse, out=False, grad=grad, causal_offset=causal and op != "attention",
                   block_size=block_size if op == "paged" else None)


def decide_for(*, backend=None, bucket=None, **described) -> Decision:
    """The decision for a described request (see :func:`describe_request`) on this machine.

    ``bucket`` (from :func:`anyattn.tune.bucket`) lets a tune file's measurement decide, as for a call.
    """
    return explain_request(describe_request(**described), backend, bucket=bucket)


@dataclass
class BackendStatus:
    name: str
    installed: bool
    version: str | None
    usable: bool  # on the given device, for some plain request
    reasons: list[str]
    description: str
    devices: list[str]

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def backend_statuses(device=None) -> list[BackendStatus]:
    """Every backend: installed, version, usable for a plain fp16/bf16 d128 call on ``device``."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    probe_dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    req = describe_request(op="attention", dtype=probe_dtype, head_dim=128, device=device)
    out = []
    for name in backends.names():
        try:
            b = backends.get(name)
        except Exception as exc:  # noqa: BLE001
            out.append(BackendStatus(name, False, None, False, [f"adapter failed: {exc}"], "", []))
            continue
        reasons = _evaluate(name, req).reasons
        avail = b.availability() if req.device_type in b.caps.devices else None
        installed = avail.installed if avail else b.version() is not None or b.module is None
        out.append(BackendStatus(name, installed, b.version(), not reasons, reasons, b.description,
                                 sorted(b.caps.devices)))
    return out
