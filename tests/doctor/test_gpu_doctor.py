"""The doctor on a real GPU machine (run by the lead: python -m pytest -m gpu tests/doctor/test_gpu_doctor.py -v -s).

With flash-attn-4 / nvidia-cutlass-dsl / flashinfer installed these check that the live facts see
the new stack the way the recorded fact sets assume it (versions, flavour, dsl_packages on
sys.path, FA4's import time), that no new-stack check misfires on a healthy install, and that the
bundle and plan work live."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")]

from anyattn.doctor import checks, facts, plan, stack  # noqa: E402

HAS_FA4 = importlib.util.find_spec("flash_attn") is not None and \
    any(d.metadata.get("Name", "").lower() in ("flash-attn-4", "flash-attn-cute")
        for d in __import__("importlib.metadata").metadata.distributions())


@pytest.fixture(scope="module")
def live():
    return facts.collect(probe=True, timeout=120)


def test_gpu_and_driver_seen(live):
    assert live.gpus and live.driver.get("version") and live.driver.get("cuda")
    print("GPUs", live.gpus, "driver", live.driver, "torch", live.torch.get("version"), live.torch.get("cuda"))


@pytest.mark.skipif(not HAS_FA4, reason="flash-attn-4 not installed")
def test_fa4_stack_seen_and_healthy(live):
    st = live.stack
    vers = st["versions"]
    print("stack versions", json.dumps(vers, indent=1), "dsl dirs", st["dsl_packages_dirs"])
    assert "nvidia-cutlass-dsl" in vers and stack.installed_flavours(vers)
    assert st["dsl_packages_dirs"] and st["dsl_packages_on_sys_path"], "nvidia_cutlass_dsl/dsl_packages must be found and on sys.path (via the .pth, or PYTHONPATH after pip install --target)"
    pr = live.packages["flash-attn-4"]["probe"]
    print("FA4 import probe", pr.get("ok"), pr.get("seconds"), pr.get("error"))
    assert pr["ok"], pr
    ids = [x.id for x in checks.run_checks(live)]
    for bad in ("fa4_dsl_flavour_too_new", "fa4_dsl_pieces_missing", "fa4_dsl_pieces_skew", "fa4_dsl_not_on_sys_path",
                "cute_dsl_mismatch", "doctor_check_failed"):
        assert bad not in ids, ids
    p = plan.plan("flash-attn-4", facts=live)
    print("plan", p["command"], p["reasons"][:2])
    assert p["compatible"] and p["runs_here"][0]["name"] == "flash_attn_4"


def test_bundle_live(tmp_path):
    env = dict(os.environ)
    out = tmp_path / "bundle.json"
    cp = subprocess.run([sys.executable, "-m", "anyattn.doctor.cli", "doctor", "--bundle", str(out), "--json"],
                        capture_output=True, text=True, env=env, timeout=600)
    assert cp.returncode in (0, 1), cp.stderr
    d = json.loads(out.read_text())
    assert d["gpus"] and d["torch"]["torch.version.cuda"] and d["decision"]["source"] == "selector"
    home = os.path.expanduser("~")
    assert home == "/" or home not in out.read_text()
    print("bundle packages", [(p["name"], p["version"], p["origin"]) for p in d["attention_packages"]])
