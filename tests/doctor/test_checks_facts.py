"""Checks against recorded fact sets of many machines (tests/doctor/facts/*.json).

Each fact set carries ``_expect``: the finding ids it must produce, ids it must not,
severities, substrings its fixes must contain (copy-paste commands for THAT machine),
the exit code, and the backend the facts-based estimate picks.
"""

import glob
import json
import os

import pytest

from anyattn.doctor import checks, report
from anyattn.doctor.facts import Facts

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = sorted(glob.glob(os.path.join(HERE, "facts", "*.json")))


def load(path):
    with open(path) as fh:
        d = json.load(fh)
    return Facts.from_dict(d), d.get("_expect", {})


def test_enough_machines():
    assert len(FIXTURES) >= 12
    systems = {load(p)[0].system for p in FIXTURES}
    assert {"Linux", "Darwin", "Windows"} <= systems


@pytest.mark.parametrize("path", FIXTURES, ids=[os.path.basename(p)[:-5] for p in FIXTURES])
def test_fact_set(path):
    f, exp = load(path)
    assert exp, "every fact set states what it must produce"
    assert not f.live
    findings = checks.run_checks(f)
    ids = [x.id for x in findings]
    assert "doctor_check_failed" not in ids, [x.evidence for x in findings if x.id == "doctor_check_failed"]
    for want in exp.get("ids", []):
        assert want in ids, f"{want} missing from {ids}"
    for unwanted in exp.get("absent", []):
        assert unwanted not in ids, f"{unwanted} unexpected in {ids}"
    for fid, sev in exp.get("severity", {}).items():
        assert sev in [x.severity for x in findings if x.id == fid]
    for fid, sub in exp.get("fix_contains", {}).items():
        fixes = "\n".join(line for x in findings if x.id == fid for line in x.fix)
        assert sub in fixes, f"{fid}: {sub!r} not in\n{fixes}"
    assert checks.exit_code(findings) == exp["exit_code"]
    for x in findings:
        assert x.severity in checks.SEVERITIES
        assert x.id and x.id == x.id.lower() and " " not in x.id
        assert x.title and x.why
        if x.severity in ("error", "warning"):
            assert x.fix, f"{x.id} has no fix"
            assert x.evidence, f"{x.id} has no evidence"
    b = report.backend_summary(f)
    assert b["source"] == "facts" and "another machine" in b["note"]
    if "chosen" in exp:
        assert b["chosen"] == exp["chosen"]


@pytest.mark.parametrize("path", FIXTURES[:3])
def test_roundtrip(path, tmp_path):
    f, _ = load(path)
    p = tmp_path / "f.json"
    p.write_text(f.to_json())
    g = Facts.load(str(p))
    assert g.to_dict() == dict(f.to_dict(), live=False)


def test_fix_uses_machine_specifics():
    """The same failure gets different copy-paste fixes on different machines."""
    f, _ = load(os.path.join(HERE, "facts", "rtx4090_abi.json"))
    [abi] = [x for x in checks.run_checks(f) if x.id == "abi_mismatch"]
    assert any("cxx11abiFALSE" in line and "cp310" in line for line in abi.fix)
    f.torch["cxx11_abi"] = True
    f.python["version"] = "3.12.1"
    [abi2] = [x for x in checks.run_checks(f) if x.id == "abi_mismatch"]
    assert any("cxx11abiTRUE" in line and "cp312" in line for line in abi2.fix)


def test_checks_are_pure():
    f, _ = load(os.path.join(HERE, "facts", "h100_nvcc_mismatch.json"))
    before = f.to_json()
    a = [x.to_dict() for x in checks.run_checks(f)]
    b = [x.to_dict() for x in checks.run_checks(f)]
    assert a == b and f.to_json() == before


def test_rendering_recorded_facts():
    from io import StringIO
    from rich.console import Console
    f, _ = load(os.path.join(HERE, "facts", "mixed_3090_1080ti.json"))
    findings = checks.run_checks(f)
    buf = StringIO()
    report.render(f, findings, report.backend_summary(f), console=Console(file=buf, width=200))
    out = buf.getvalue()
    assert "mixed_gpus" in out and "CUDA_VISIBLE_DEVICES=1" in out and "anyattn picks: flash_attn" in out
    d = report.to_json_dict(f, findings, report.backend_summary(f), checks.exit_code(findings))
    json.dumps(d)
    assert d["exit_code"] == 1 and d["findings"][0]["severity"] in ("error", "warning")


def test_broken_check_becomes_finding(monkeypatch):
    def boom(f, ctx):
        raise KeyError("x")
    monkeypatch.setattr(checks, "CHECKS", checks.CHECKS + [boom])
    f, _ = load(os.path.join(HERE, "facts", "cpu_laptop.json"))
    ids = [x.id for x in checks.run_checks(f)]
    assert "doctor_check_failed" in ids and "no_gpu" in ids


def test_docs_list_every_id():
    import re
    from anyattn.doctor.signatures import VOCABULARY
    root = os.path.dirname(os.path.dirname(HERE))
    doc = open(os.path.join(root, "docs", "DOCTOR.md")).read()
    from anyattn.doctor import checks_stack
    src = open(checks.__file__).read() + open(checks_stack.__file__).read()
    ids = set(re.findall(r'Finding\("([a-z0-9_]+)"', src)) | set(VOCABULARY)
    missing = sorted(i for i in ids if f"`{i}`" not in doc)
    assert not missing, missing


@pytest.mark.parametrize("torch_facts,want", [
    ({"installed": False}, "torch_missing"),
    ({"installed": True, "error": "ImportError: libcudart.so.12: cannot open shared object file: No such file or directory"},
     "torch_import_failed"),
])
def test_without_working_torch(torch_facts, want):
    f, _ = load(os.path.join(HERE, "facts", "a100_runtime_only.json"))
    f.torch = torch_facts
    findings = checks.run_checks(f)
    ids = [x.id for x in findings]
    assert want in ids and "doctor_check_failed" not in ids
    assert report.backend_summary(f)["chosen"] is None
    from anyattn.doctor import plan
    assert plan.plan("flash-attn", facts=f)["wheel"] is None


def test_rocm_torch_is_not_called_cpu_only():
    f, _ = load(os.path.join(HERE, "facts", "cpu_laptop.json"))
    f.torch.update(version="2.6.0+rocm6.2", cuda=None, hip="6.2.41133")
    ids = [x.id for x in checks.run_checks(f)]
    assert "torch_cpu_only_with_gpu" not in ids and "doctor_check_failed" not in ids
