"""Subprocess probes: import a package (or run a snippet) in a fresh interpreter with a timeout.

Attention packages are never imported in the doctor's own process: a broken extension can
abort the interpreter (SIGSEGV / SIGABRT) or hang while initialising CUDA. Each probe
runs ``python -c CODE`` and returns a plain dict::

    {"ok": bool, "returncode": int|None, "signal": "SIGSEGV"|None, "timed_out": bool,
     "seconds": float, "error": "last exception line"|None, "stdout": str, "stderr": str}

``stdout`` / ``stderr`` are tails (a few KB) so that facts stay small enough to attach to a
bug report.
"""

from __future__ import annotations

import os
import signal as _signal
import subprocess
import sys
import time
from typing import Optional

TAIL = 4000

# The probe snippet prints one JSON line prefixed with this marker on success.
MARK = "ANYATTN_PROBE_JSON:"


def _tail(text: str, n: int = TAIL) -> str:
    text = text or ""
    return text if len(text) <= n else "..." + text[-n:]


def last_error_line(stderr: str) -> Optional[str]:
    """The exception line of a Python traceback (``ImportError: ...``), else the last non-empty line."""
    lines = [ln.rstrip() for ln in (stderr or "").splitlines() if ln.strip()]
    if not lines:
        return None
    for ln in reversed(lines):
        head = ln.split(":", 1)[0].strip()
        if head.endswith(("Error", "Exception", "Exit", "Interrupt")) and " " not in head:
            return ln.strip()
    return lines[-1].strip()


def run_python(code: str, timeout: float = 60.0, python: Optional[str] = None,
               env: Optional[dict] = None, as_file: bool = False) -> dict:
    """Run ``python -c code`` and classify the outcome. Never raises.

    ``as_file``: run the code from a file in a temporary directory (removed afterwards), for code
    that needs its source on disk (Triton's @jit reads the kernel's source with inspect)."""
    if as_file:
        import tempfile
        with tempfile.TemporaryDirectory(prefix="anyattn-probe-") as d:
            path = os.path.join(d, "probe.py")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(code)
            return run_python("import runpy, sys; sys.argv = [%r]; runpy.run_path(%r, run_name='__main__')"
                              % (path, path), timeout=timeout, python=python, env=env)
    exe = python or sys.executable
    penv = dict(os.environ if env is None else env)
    penv.setdefault("PYTHONDONTWRITEBYTECODE", "1")  # no side effects on site-packages
    penv["PYTHONFAULTHANDLER"] = "1"  # a crash leaves its stack in stderr
    t0 = time.monotonic()
    try:
        cp = subprocess.run([exe, "-c", code], capture_output=True, text=True, timeout=timeout,
                            env=penv, stdin=subprocess.DEVNULL, errors="replace")
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode("utf-8", "replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode("utf-8", "replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return {"ok": False, "returncode": None, "signal": None, "timed_out": True,
                "seconds": round(time.monotonic() - t0, 2),
                "error": f"timed out after {timeout:.0f}s", "stdout": _tail(out), "stderr": _tail(err)}
    except OSError as e:
        return {"ok": False, "returncode": None, "signal": None, "timed_out": False,
                "seconds": round(time.monotonic() - t0, 2), "error": f"could not start {exe}: {e}",
                "stdout": "", "stderr": ""}
    sig = None
    if cp.returncode < 0:
        try:
            sig = _signal.Signals(-cp.returncode).name
        except ValueError:
            sig = f"signal {-cp.returncode}"
    ok = cp.returncode == 0
    err = None if ok else (f"crashed with {sig}" if sig else last_error_line(cp.stderr))
    return {"ok": ok, "returncode": cp.returncode, "signal": sig, "timed_out": False,
            "seconds": round(time.monotonic() - t0, 2), "error": err,
            "stdout": _tail(cp.stdout), "stderr": _tail(cp.stderr)}


def import_probe(statement: str, timeout: float = 60.0, python: Optional[str] = None,
                 extra: str = "") -> dict:
    """Probe an import statement, e.g. ``"import flash_attn"`` or
    ``"from vllm.vllm_flash_attn import flash_attn_varlen_func"``. ``extra`` is code run after
    the import that may print ``MARK + json`` with additional details."""
    code = statement + "\n" + extra
    return run_python(code, timeout=timeout, python=python)


def parse_marked_json(stdout: str) -> Optional[dict]:
    import json
    for ln in (stdout or "").splitlines():
        if ln.startswith(MARK):
            try:
                return json.loads(ln[len(MARK):])
            except ValueError:
                return None
    return None


# Probe code for Triton: compile and run a trivial kernel (only meaningful with a GPU).
TRITON_KERNEL_PROBE = r"""
import json, torch, triton, triton.language as tl
@triton.jit
def _add1(x_ptr, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    tl.store(x_ptr + o, tl.load(x_ptr + o, mask=m) + 1, mask=m)
x = torch.zeros(64, device="cuda")
_add1[(1,)](x, 64, BLOCK=64)
torch.cuda.synchronize()
assert float(x.sum()) == 64.0
print("ANYATTN_PROBE_JSON:" + json.dumps({"ran": True}))
"""

# xFormers: import the ops module and report whether the C++ library loaded.
XFORMERS_PROBE = r"""
import json, xformers
info = {"has_cpp": None}
try:
    import xformers.ops  # noqa
except Exception as e:  # reported separately
    info["ops_error"] = "%s: %s" % (type(e).__name__, e)
flag = getattr(xformers, "_has_cpp_library", None)  # absent in old releases: unknown, not False
info["has_cpp"] = None if flag is None else bool(flag)
print("ANYATTN_PROBE_JSON:" + json.dumps(info))
"""
