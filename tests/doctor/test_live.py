"""Real probes of the machine the tests run on, and a real broken extension built with gcc."""

import json
import os
import shutil
import subprocess
import sys
from io import StringIO

import pytest

from anyattn.doctor import checks, facts, report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def live():
    return facts.collect(probe=False)


def test_live_facts_are_plain_and_explained(live):
    d = json.loads(live.to_json())
    assert d["live"] is True and d["python"]["version"].startswith("%d.%d" % sys.version_info[:2])
    assert d["torch"]["version"]
    for key in ("os", "python", "torch", "gpus", "toolkit", "build", "memory", "packages", "env"):
        assert key in d["how"], key  # every fact says how it was found
    assert live.cpu_count and live.memory.get("total_gb")


def test_toolkit_found_like_torch_does(live, monkeypatch):
    """Order: CUDA_HOME/CUDA_PATH -> dirname(dirname(which nvcc)) -> /usr/local/cuda."""
    env = {"CUDA_HOME": "/opt/cuda-x"}
    assert facts.find_cuda_home(env)["path"] == "/opt/cuda-x"
    assert facts.find_cuda_home({}, which=lambda n: "/usr/local/bin/nvcc", exists=lambda p: True)["path"] == "/usr/local"
    assert facts.find_cuda_home({}, which=lambda n: None, exists=lambda p: True)["path"] == "/usr/local/cuda"
    assert facts.find_cuda_home({}, which=lambda n: None, exists=lambda p: False)["path"] is None
    tk = live.toolkit
    nvcc = shutil.which("nvcc")
    if nvcc is None and not os.environ.get("CUDA_HOME") and not os.path.exists("/usr/local/cuda"):
        assert tk["cuda_home"] is None
        return
    if tk.get("nvcc"):
        out = subprocess.run([tk["nvcc"], "--version"], capture_output=True, text=True).stdout
        assert tk["nvcc_version"] and f"release {tk['nvcc_version']}" in out


@pytest.mark.skipif(not os.path.exists("/usr/local/cuda/include/cuda_fp8.h"), reason="no standard CUDA toolkit here")
def test_standard_toolkit_headers_seen(live):
    homes = [live.toolkit] + [dict(c, cuda_home=c["path"]) for c in live.toolkit.get("candidates", [])]
    std = [h for h in homes if os.path.realpath(h.get("cuda_home") or "") == os.path.realpath("/usr/local/cuda")]
    assert std and std[0]["headers"]["cuda_fp8.h"] and std[0]["nvcc_version"]


def test_doctor_cli_json(tmp_path):
    saved = tmp_path / "facts.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + [p for p in sys.path if p]))
    cp = subprocess.run([sys.executable, "-m", "anyattn.doctor.cli", "doctor", "--json", "--save-facts", str(saved)],
                        capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)
    assert cp.returncode in (0, 1), cp.stderr
    d = json.loads(cp.stdout)
    assert d["exit_code"] == cp.returncode and d["live"] is True
    assert d["backends"]["chosen"]  # something always runs (SDPA at least)
    f = facts.Facts.load(str(saved))
    assert not f.live and f.python["version"] == d["summary"]["Python"].split()[0]
    cp2 = subprocess.run([sys.executable, "-m", "anyattn.doctor.cli", "doctor", "--json", "--facts", str(saved)],
                         capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    d2 = json.loads(cp2.stdout)
    assert [x["id"] for x in d2["findings"]] == [x["id"] for x in d["findings"]]
    assert d2["backends"]["source"] == "facts"


def test_doctor_fails_with_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    from anyattn.doctor import cli
    assert cli.main(["doctor", "--facts", str(bad)]) == 2


BROKEN_C = r"""
/* references a torch C++ symbol that no loaded library provides */
extern void _ZN3c104cuda9SetDeviceEi(int);
void *PyInit__C(void) { _ZN3c104cuda9SetDeviceEi(0); return 0; }
"""
CRASH_C = r"""
#include <stdlib.h>
void *PyInit__C(void) { abort(); return 0; }
"""


def _make_pkg(root, name, csrc):
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from . import _C\n")
    (root / "src.c").write_text(csrc)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(pkg / "_C.so"), str(root / "src.c")], check=True,
                   capture_output=True)
    di = root / f"{name}-0.1.dist-info"
    di.mkdir()
    (di / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (di / "RECORD").write_text(f"{name}/__init__.py,,\n{name}/_C.so,,\n{di.name}/METADATA,,\n")
    (root / "src.c").unlink()


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc missing")
def test_broken_extension_is_classified(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    _make_pkg(site, "brokenattn", BROKEN_C)
    _make_pkg(site, "crashattn", CRASH_C)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), ROOT, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setitem(facts.ATTENTION_PACKAGES, "brokenattn", {"probe": "import brokenattn", "module": "brokenattn"})
    monkeypatch.setitem(facts.ATTENTION_PACKAGES, "crashattn", {"probe": "import crashattn", "module": "crashattn"})
    f = facts.collect(probe=True, timeout=60)
    b = f.packages["brokenattn"]
    assert b["installed"] and b["extensions"] == ["brokenattn/_C.so"]
    assert not b["probe"]["ok"] and "undefined symbol: _ZN3c104cuda9SetDeviceEi" in b["probe"]["error"]
    c = f.packages["crashattn"]
    assert c["probe"]["signal"] == "SIGABRT"
    findings = checks.run_checks(f)
    [fb] = [x for x in findings if x.subject == "brokenattn"]
    assert fb.id == "torch_version_skew" and fb.severity == "error"
    assert fb.evidence["symbol"] == "_ZN3c104cuda9SetDeviceEi"
    [fc] = [x for x in findings if x.subject == "crashattn"]
    assert fc.id == "import_crashed" and "SIGABRT" in fc.title
    # and the doctor keeps running: the other checks, the backend summary and the report all complete
    assert any(x.subject is None for x in findings) or len(findings) >= 2
    buf = StringIO()
    from rich.console import Console
    report.render(f, findings, report.backend_summary(f), console=Console(file=buf, width=200))
    out = buf.getvalue()
    assert "brokenattn" in out and "anyattn picks:" in out
    assert checks.exit_code(findings) == 1


def test_probe_from_file_for_code_that_reads_its_source():
    """Triton's @jit reads its kernel's source: `python -c` cannot provide it, a temp file can."""
    from anyattn.doctor import probes
    code = "import inspect\ndef k():\n    return 1\nprint(len(inspect.getsource(k)))\n"
    assert not probes.run_python(code, timeout=60)["ok"]
    r = probes.run_python(code, timeout=60, as_file=True)
    assert r["ok"] and r["stdout"].strip().isdigit()
    crash = probes.run_python("import os; os.abort()", timeout=60)
    assert crash["signal"] == "SIGABRT" and crash["error"] == "crashed with SIGABRT"
    slow = probes.run_python("import time; time.sleep(30)", timeout=1)
    assert slow["timed_out"] and not slow["ok"]
