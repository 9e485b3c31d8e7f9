"""A vendor package whose import kills the interpreter never takes the user's process down.

An attention extension can segfault or abort while loading (a CUDA library built for another
driver, a C++ ABI mismatch caught by a static initialiser) or hang initialising a device; in
the user's process that is a dead server, with no Python exception anyone could catch. So the
first time a backend imports its vendor package on this machine, the import runs first in a
subprocess with a timeout (the doctor's probe, :func:`anyattn.doctor.probes.import_probe`). The
outcome is cached per package version, Python, torch and interpreter in
``$ANYATTN_CACHE_DIR/import_probes.json`` (next to the verify cache), so later processes pay
nothing until the package changes.

Only deaths count: a signal, a timeout, or an exit without a Python traceback. A plain Python
exception (``ImportError: undefined symbol``) is harmless in-process, so the in-process import
then runs and reports its own error as before. Output of the probe (xFormers' "can't load
C++/CUDA extensions" banner included) is captured, never shown.

``ANYATTN_IMPORT_PROBE=0`` turns the probe off; ``ANYATTN_IMPORT_TIMEOUT`` (seconds, default 60)
bounds it.
"""

from __future__ import annotations

import json
import os
import sys
import time

CACHE_FILE = "import_probes.json"
PROBE_ENV = "ANYATTN_IMPORT_PROBE"
TIMEOUT_ENV = "ANYATTN_IMPORT_TIMEOUT"

_memo: dict[str, dict] = {}


def enabled() -> bool:
    return os.environ.get(PROBE_ENV, "1") not in ("0", "false", "False", "")


def timeout() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, "60"))
    except ValueError:
        return 60.0


def cache_path() -> str:
    from .verify import cache_dir

    return os.path.join(cache_dir(), CACHE_FILE)


def _key(statement: str, version: str | None) -> str:
    import torch

    return (f"{statement}|version={version or '-'}|python={sys.version.split()[0]}|torch={torch.__version__}"
            f"|exe={sys.executable}")


def _read() -> dict:
    try:
        with open(cache_path(), encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(key: str, value: dict) -> None:
    path = cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = _read()
        data[key] = value
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:  # a read-only home: the probe result lives for this process only
        pass


def probe(statement: str, version: str | None) -> dict:
    """The (cached) outcome of running ``statement`` in a fresh interpreter."""
    key = _key(statement, version)
    hit = _memo.get(key) or _read().get(key)
    if hit is None:
        from .doctor import probes

        res = probes.import_probe(statement, timeout=timeout())
        died = bool(res["signal"] or res["timed_out"] or res["returncode"] not in (0, 1))
        hit = {"ok": res["ok"], "died": died, "error": res["error"], "seconds": res["seconds"],
               "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write(key, hit)
    _memo[key] = hit
    return hit


def first_import_reason(module: str, statement: str, version: str | None) -> str | None:
    """Why ``module`` must not be imported in this process (its import kills or hangs a
    subprocess), else None. Free once the module is imported or the outcome is cached."""
    if not enabled() or module in sys.modules or module.split(".")[0] in sys.modules:
        return None
    hit = probe(statement, version)
    if not hit.get("died"):
        return None
    what = hit.get("error") or "died"
    return (f"importing {module} {version or ''} {what} in a probe subprocess, so anyattn does not import it "
            f"in-process (reinstall or remove it; cached in {cache_path()} until its version changes)").replace("  ", " ")


def forget() -> None:
    _memo.clear()
