"""Isolation: vendor packages that segfault, abort or hang at import never take the process down,
and SDPA kernel pinning holds across threads.

Stand-in packages live in a temporary directory on sys.path (and PYTHONPATH, for the probe's
subprocess); stand-in backends name them as their module.
"""

import sys
import threading
import time

import pytest
import torch

import anyattn
from anyattn import backends, isolation, selector
from anyattn.backends.base import Backend, HeadDims, caps
from anyattn.doctor import probes
from tests import inputs

PACKAGES = {
    "anyattn_segv_pkg": "import ctypes\nctypes.string_at(0)\n",  # SIGSEGV while importing
    "anyattn_abort_pkg": "import os\nos.abort()\n",  # SIGABRT (a C++ static initialiser's terminate())
    "anyattn_hang_pkg": "import time\ntime.sleep(120)\n",  # a device init that never returns
    "anyattn_raise_pkg": "raise ImportError('libfoo.so: undefined symbol: _ZNK2at6Tensor6deviceEv')\n",
    "anyattn_fine_pkg": ("import sys\nprint('WARNING[XFORMERS]: xFormers can\\'t load C++/CUDA extensions', "
                         "file=sys.stderr)\nVALUE = 42\n"),
}


@pytest.fixture
def pkgdir(tmp_path, monkeypatch):
    for name, code in PACKAGES.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("ANYATTN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ANYATTN_IMPORT_TIMEOUT", "3")
    monkeypatch.setenv("ANYATTN_IMPORT_PROBE", "1")
    isolation.forget()
    yield tmp_path
    isolation.forget()
    for name in PACKAGES:
        sys.modules.pop(name, None)


def _backend(module, name=None):
    class _Vendor(Backend):
        distribution = None

    b = _Vendor()
    b.name = name or module
    b.module = module
    b.caps = caps(devices={"cpu"}, dtypes={torch.float32}, ops={"attention"}, features={"gqa"},
                  head_dims=HeadDims(max=64))
    b.attention = lambda q, k, v, **kw: backends.get("reference").attention(q, k, v, **kw)
    return b


@pytest.mark.parametrize("module,words", [("anyattn_segv_pkg", "crashed with SIGSEGV"),
                                          ("anyattn_abort_pkg", "crashed with SIGABRT"),
                                          ("anyattn_hang_pkg", "timed out after 3s")])
def test_an_import_that_dies_is_a_reason_and_never_runs_in_process(pkgdir, module, words):
    b = _backend(module)
    avail = b.availability()
    assert avail.installed and not avail.usable
    assert words in avail.error and module in avail.error and "probe subprocess" in avail.error
    assert module not in sys.modules  # this process never imported it


def test_a_python_import_error_is_left_to_the_in_process_import(pkgdir):
    b = _backend("anyattn_raise_pkg")
    avail = b.availability()
    assert avail.error == "ImportError: libfoo.so: undefined symbol: _ZNK2at6Tensor6deviceEv"


def test_a_healthy_import_is_cached_by_version(pkgdir, monkeypatch):
    b = _backend("anyattn_fine_pkg")
    sys.modules.pop("anyattn_fine_pkg", None)
    assert b.availability().usable and b._loaded.VALUE == 42
    sys.modules.pop("anyattn_fine_pkg", None)
    isolation.forget()
    calls = []
    monkeypatch.setattr(probes, "import_probe", lambda *a, **k: calls.append(a) or {})
    assert _backend("anyattn_fine_pkg").availability().usable
    assert calls == [], "the cached outcome for this version must be reused"
    sys.modules.pop("anyattn_fine_pkg", None)
    b2 = _backend("anyattn_fine_pkg")
    monkeypatch.setattr(b2, "version", lambda: "9.9")
    with pytest.raises(KeyError):  # a new version is probed again (the stub returns {})
        b2.availability()
    assert len(calls) == 1


def test_probe_output_is_captured(pkgdir, capfd):
    res = isolation.probe("import anyattn_fine_pkg", "1.0")
    assert res["ok"] and not res["died"]
    captured = capfd.readouterr()
    assert "WARNING[XFORMERS]" not in captured.out + captured.err


def test_selection_passes_over_a_crashing_vendor(pkgdir, monkeypatch):
    b = _backend("anyattn_segv_pkg", name="segv")
    backends.register(b)
    try:
        order = selector.AUTO_ORDER["cpu"]["attention"]
        monkeypatch.setitem(selector.AUTO_ORDER["cpu"], "attention", ["segv"] + order)
        q, k, v = inputs.dense(b=1, sq=3, sk=3, hq=2, hkv=2, d=16)
        d = anyattn.explain(q, k, v)
        cand = next(c for c in d.candidates if c.name == "segv")
        assert d.chosen == "sdpa_flash" and cand.status == "unavailable"
        assert "crashed with SIGSEGV" in cand.reasons[0]
        anyattn.attention(q, k, v)  # and the process is still here
    finally:
        backends.unregister("segv")


def test_probe_can_be_turned_off(pkgdir, monkeypatch):
    monkeypatch.setenv("ANYATTN_IMPORT_PROBE", "0")
    assert isolation.first_import_reason("anyattn_segv_pkg", "import anyattn_segv_pkg", "1") is None


# ------------------------------------------------------------------------------ SDPA pinning
def test_kernel_pinning_is_consistent_across_threads():
    """Each thread sees exactly the kernel it pinned for the whole call, and the flags are
    restored afterwards. Without the lock the threads undo each other's pins (this fails)."""
    from anyattn.backends.sdpa import _PinKernel

    cuda = torch.backends.cuda
    before = (cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(), cuda.math_sdp_enabled())
    errors = []
    expect = {"FLASH_ATTENTION": (True, False, False), "EFFICIENT_ATTENTION": (False, True, False),
              "MATH": (False, False, True)}

    def work(kernel):
        for _ in range(100):
            with _PinKernel(kernel):
                for _ in range(3):
                    time.sleep(0)  # let another thread run mid-call, as a real kernel launch would
                    seen = (cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(), cuda.math_sdp_enabled())
                    if seen != expect[kernel]:
                        errors.append((kernel, seen))

    threads = [threading.Thread(target=work, args=(k,)) for k in expect for _ in range(2)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == [], f"{len(errors)} calls saw another thread's kernel flags, e.g. {errors[:3]}"
    assert (cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(), cuda.math_sdp_enabled()) == before


def test_sdpa_calls_from_threads_are_correct():
    from tests import naive

    q, k, v = inputs.dense(b=1, sq=7, sk=9, hq=2, hkv=1, d=16)
    ref = naive.dense(q, k, v, causal=True)[0]
    results = []

    def work(name):
        for _ in range(5):
            results.append((name, anyattn.attention(q, k, v, causal=True, backend=name)))

    threads = [threading.Thread(target=work, args=(n,)) for n in ("sdpa_flash", "sdpa_math", "sdpa_flash", "sdpa_math")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20
    assert all(torch.allclose(o.double(), ref, atol=2e-5) for _, o in results)
