"""Knowledge about today's attention stack, as pure functions of facts.

FlashAttention-4 (``flash-attn-4``, written in the CuTe DSL ``nvidia-cutlass-dsl``), FlashInfer
0.6-0.7's split packages, and -- for every plan and build-failure explanation -- what already
runs on the machine with nothing to build, with its measured speed when ``anyattn bench`` results
exist (see :func:`results_path` / :func:`measured_speeds`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

from packaging.version import InvalidVersion, Version

# FlashAttention-4 runs on compute capability 8.x .. 12.x (its interface asserts the arch).
FA4_MIN_CC, FA4_MAX_CC = 8.0, 13.0
FA4_IMPORT_SECONDS = 7.9     # `import flash_attn.cute` measured on the H200 machine (issue 8)
FA4_SLOW_IMPORT_S = 5.0      # the probe's import time above which the doctor says so
# CuTe DSL flavours: the meta-package pulls libs-cu12 by default; libs-cu13 comes with the extra.
DSL_FLAVOURS = {"cu12": 12, "cu13": 13}
DSL_PIECES = ("nvidia-cutlass-dsl-libs-base", "nvidia-cutlass-dsl-libs-core")
# FlashInfer on SM 12.x (RTX 50xx / RTX PRO 6000 / DGX Spark) needs CUDA >= 12.9 (its sm120a kernels).
FLASHINFER_SM12_MIN_CUDA = Version("12.9")


def _v(s) -> Optional[Version]:
    try:
        return Version(str(s).split("+")[0]) if s else None
    except InvalidVersion:
        return None


def _major(s) -> Optional[int]:
    v = _v(s)
    return v.major if v else None


# ------------------------------------------------------------------ FA4 / CuTe DSL


def dsl_flavour(driver_cuda: Optional[str], torch_cuda: Optional[str]) -> Tuple[Optional[str], str]:
    """The CuTe DSL flavour for this driver and torch, and why.

    The flavour's CUDA major must not exceed the driver's (a cu13 DSL emits code a CUDA 12 driver
    cannot load); cu13 only pays off with a CUDA 13 torch, so it is chosen when both are >= 13."""
    dm, tm = _major(driver_cuda), _major(torch_cuda)
    if dm is None:
        return "cu12", "driver CUDA unknown: the default (cu12) flavour, which any driver >= 525 loads"
    if dm < 12:
        return None, f"the driver supports CUDA {driver_cuda}: every CuTe DSL flavour needs a CUDA >= 12 driver"
    if dm >= 13 and (tm or 0) >= 13:
        return "cu13", f"driver CUDA {driver_cuda} and torch CUDA {torch_cuda}: the cu13 flavour (flash-attn-4[cu13])"
    if dm >= 13:
        return "cu12", f"torch is CUDA {torch_cuda or '?'}: the default cu12 flavour (a CUDA 13 driver runs it)"
    return "cu12", f"the driver supports CUDA {driver_cuda}: cu12 only (the cu13 flavour needs a CUDA 13 driver)"


def fa4_requirement(facts) -> str:
    """`flash-attn-4` or `flash-attn-4[cu13]` for the machine of ``facts``."""
    flav, _ = dsl_flavour((getattr(facts, "driver", None) or {}).get("cuda"), (getattr(facts, "torch", None) or {}).get("cuda"))
    return "flash-attn-4[cu13]" if flav == "cu13" else "flash-attn-4"


def fa4_gpu_ok(ccs: List[float]) -> bool:
    return any(FA4_MIN_CC <= c < FA4_MAX_CC for c in ccs)


def installed_flavours(versions: Dict[str, str]) -> List[str]:
    return [f for f in DSL_FLAVOURS if f"nvidia-cutlass-dsl-libs-{f}" in versions]


# ------------------------------------------------------------------ measured speed


def results_path(env: Optional[Dict[str, str]] = None) -> str:
    """Where the doctor reads this machine's measured attention speed.

    ``$ANYATTN_RESULTS`` if set, else ``~/.cache/anyattn/bench.json``. The file is what
    ``anyattn bench --json FILE`` writes: ``{"env": {"device", "torch", ...}, "rows": [{"kind":
    "prefill"|"decode", "backend", "head_dim", "seqlen", "causal", "value", "unit"}, ...]}``
    (save it there with ``anyattn bench --json ~/.cache/anyattn/bench.json``)."""
    env = env if env is not None else dict(os.environ)
    return env.get("ANYATTN_RESULTS") or os.path.join(os.path.expanduser("~"), ".cache", "anyattn", "bench.json")


def measured_speeds(doc: Optional[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """backend -> its prefill speed at the largest measured shape (head_dim 128 when measured)."""
    out: Dict[str, Dict[str, Any]] = {}
    if not doc or not isinstance(doc.get("rows"), list):
        return out
    rows = [r for r in doc["rows"] if isinstance(r, dict) and r.get("kind") == "prefill" and r.get("value")
            and r.get("unit") == "TFLOP/s"]
    if any(r.get("head_dim") == 128 for r in rows):
        rows = [r for r in rows if r.get("head_dim") == 128]
    device = (doc.get("env") or {}).get("device")
    for r in rows:
        b = r.get("backend")
        key = (r.get("seqlen") or 0, bool(r.get("causal")))
        cur = out.get(b)
        if cur is None or key > cur["_key"]:
            out[b] = {"_key": key, "tflops": round(float(r["value"]), 1), "seqlen": r.get("seqlen"),
                      "head_dim": r.get("head_dim"), "causal": bool(r.get("causal")), "device": device}
    for d in out.values():
        d.pop("_key", None)
    return out


def read_results(facts) -> Dict[str, Dict[str, Any]]:
    """Measured speeds from this machine's results file (live facts only; never for recorded ones)."""
    if facts is None or not getattr(facts, "live", False):
        return {}
    try:
        with open(results_path(), encoding="utf-8") as fh:
            return measured_speeds(json.load(fh))
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------ what runs with nothing to build


def runs_here(facts, measured: Optional[Dict[str, Dict[str, Any]]] = None) -> List[Dict[str, Any]]:
    """What already runs on this machine with nothing to build, fastest kind first.

    Each entry: {"name", "what", "how", "speed"}; ``speed`` is this machine's measured TFLOP/s
    (from :func:`read_results`) or None."""
    if facts is None:
        return []
    measured = measured if measured is not None else read_results(facts)
    t = facts.torch or {}
    ccs = facts.capabilities
    gpu = bool(ccs) and bool(t.get("cuda"))
    best = max(ccs) if ccs else 0.0
    tv = _v(t.get("version"))
    pip = "python -m pip"
    out: List[Dict[str, Any]] = []

    def add(name, what, how, backend=None):
        m = measured.get(backend or name)
        out.append({"name": name, "what": what, "how": how,
                    "speed": (f"{m['tflops']} TFLOP/s measured here (prefill, head_dim {m['head_dim']}, "
                              f"seqlen {m['seqlen']}{', causal' if m['causal'] else ''}, {m['device']})") if m else None})

    if gpu and fa4_gpu_ok(ccs):
        fa4 = facts.pkg("flash-attn-4") if hasattr(facts, "pkg") else None
        add("flash_attn_4", "FlashAttention-4 (CuTe DSL): prebuilt wheel, kernels JIT-compile for this GPU at first use "
            "(no nvcc, no CUDA_HOME; import ~8 s, first call of each variant 1.6-3.8 s)",
            ("installed" if (fa4.get("probe") or {}).get("ok", True) else
             f"installed, but its import fails here (see `anyattn doctor`); reinstall: {pip} install --force-reinstall "
             f"'{fa4_requirement(facts)}'") if fa4 else f"{pip} install '{fa4_requirement(facts)}'")
    if gpu and best >= 8.0 and tv and tv >= Version("2.5"):
        add("sdpa_cudnn", "cuDNN attention through torch (SDPA's CUDNN_ATTENTION backend): ships with torch",
            "nothing to install: anyattn uses it automatically")
    triton_ok = bool((facts.triton or {}).get("installed"))
    if gpu and triton_ok and best >= 8.0:
        add("triton", "anyattn's own Triton kernels (dense / varlen prefill, paged decode): ship with anyattn",
            "nothing to install")
    if t.get("version"):
        add("sdpa", "PyTorch scaled_dot_product_attention (flash / memory-efficient / math)", "nothing to install",
            backend="sdpa_flash" if gpu else "sdpa")
    return out


def runs_here_lines(facts, measured=None) -> List[str]:
    lines = []
    for r in runs_here(facts, measured):
        lines.append(f"{r['name']}: {r['what']}" + (f" -- {r['speed']}" if r["speed"] else "") + f" [{r['how']}]")
    return lines
