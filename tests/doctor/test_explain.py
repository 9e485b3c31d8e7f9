"""explain: every id recognised from >= 2 realistic logs; most specific cause first; honest misses."""

import glob
import json
import os
import subprocess
import sys

import pytest

from anyattn.doctor import explain
from anyattn.doctor.facts import Facts
from anyattn.doctor.signatures import SIGNATURES, VOCABULARY

HERE = os.path.dirname(os.path.abspath(__file__))
LOGS = sorted(glob.glob(os.path.join(HERE, "logs", "*.log")))
FIXED = ("cuda_home_missing", "build_isolation", "wheel_tag_mismatch", "abi_mismatch", "torch_version_skew",
         "build_oom", "missing_cuda_headers", "nvcc_torch_cuda_mismatch", "gpu_arch_unsupported", "vllm_fa_not_built",
         "flashinfer_jit", "xformers_built_for_other_torch", "hollow_install", "glibcxx_too_old",
         "cuda_runtime_lib_missing")


def facts(name):
    with open(os.path.join(HERE, "facts", name + ".json")) as fh:
        return Facts.from_dict(json.load(fh))


def expected_id(path):
    return os.path.basename(path).split("__")[0]


def test_vocabulary_is_fixed_and_table_is_one():
    assert VOCABULARY[:len(FIXED)] == FIXED
    ids = [s["id"] for s in SIGNATURES]
    assert len(ids) == len(set(ids)) and set(ids) <= set(VOCABULARY)
    assert set(FIXED) <= set(ids)


def test_two_logs_per_id():
    counts = {}
    for p in LOGS:
        counts[expected_id(p)] = counts.get(expected_id(p), 0) + 1
    for i in VOCABULARY:
        assert counts.get(i, 0) >= 2, i
    assert counts.get("unrecognised", 0) >= 2


@pytest.mark.parametrize("path", LOGS, ids=[os.path.basename(p)[:-4] for p in LOGS])
def test_log(path):
    with open(path) as fh:
        text = fh.read()
    res = explain.explain_text(text, facts("h100_nvcc_mismatch"))
    want = expected_id(path)
    if want == "unrecognised":
        assert not res["recognised"] and res["matches"] == []
        assert "Not recognised" in res["message"]
        return
    assert res["recognised"]
    first = res["matches"][0]
    assert first["id"] == want, [m["id"] for m in res["matches"]]
    assert first["cause"] and first["fix"] and first["evidence"]["line"]
    assert "<" not in first["cause"].replace("<module>", ""), first["cause"]  # every placeholder filled


def test_specifics_extracted():
    text = open(os.path.join(HERE, "logs", "abi_mismatch__old_abi_string.log")).read()
    m = explain.explain_text(text, facts("rtx4090_abi"))["matches"]
    assert [x["id"] for x in m] == ["abi_mismatch"]  # not also torch_version_skew / undefined_symbol
    assert m[0]["evidence"]["extracted"]["symbol"] == "_ZN3c106detail14torchCheckFailEPKcS2_jRKSs"
    assert "old (pre-C++11)" in m[0]["cause"]
    m = explain.explain_text(open(os.path.join(HERE, "logs", "nvcc_torch_cuda_mismatch__11_vs_12.log")).read(),
                             facts("h100_nvcc_mismatch"))["matches"][0]
    assert m["evidence"]["extracted"] == {"nvcc": "11.8", "torch_cuda_log": "12.1"}


def test_wheel_tag_reasons_use_facts():
    text = open(os.path.join(HERE, "logs", "wheel_tag_mismatch__python_version.log")).read()
    m = explain.explain_text(text, facts("rtx4090_abi"))["matches"][0]  # py3.10, torch 2.6 ABI FALSE
    assert m["evidence"]["extracted"]["wheel"].startswith("flash_attn-2.8.3+cu12torch2.7")
    assert "python: wheel cp312, target cp310" in m["cause"]
    assert "torch: wheel torch2.7, target torch 2.6" in m["cause"]
    assert "abi: wheel cxx11abiTRUE, target torch cxx11abiFALSE" in m["cause"]
    assert any("cxx11abiFALSE-cp310-cp310" in line for line in m["fix"])


def test_runtime_lib_major_vs_torch():
    text = open(os.path.join(HERE, "logs", "cuda_runtime_lib_missing__cudart12.log")).read()
    m = explain.explain_text(text, facts("b200_cudart12"))["matches"][0]
    assert "built for CUDA 12" in m["cause"] and "13.0" in m["cause"]


def test_explain_cli_json_and_exit_codes(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
    fx = os.path.join(HERE, "facts", "colab_t4.json")
    log = os.path.join(HERE, "logs", "gpu_arch_unsupported__fa_ampere.log")
    cp = subprocess.run([sys.executable, "-m", "anyattn.doctor.cli", "explain", log, "--json", "--facts", fx],
                        capture_output=True, text=True, env=env, timeout=120)
    assert cp.returncode == 0, cp.stderr
    d = json.loads(cp.stdout)
    assert set(d["matches"][0]) >= {"id", "cause", "fix", "evidence"}
    assert d["matches"][0]["id"] == "gpu_arch_unsupported" and "Tesla T4" in d["matches"][0]["cause"]
    cp = subprocess.run([sys.executable, "-m", "anyattn.doctor.cli", "explain", "-", "--json", "--facts", fx],
                        input="all good, nothing failed\n", capture_output=True, text=True, env=env, timeout=120)
    assert cp.returncode == 1 and json.loads(cp.stdout)["matches"] == []


def test_uv_url_wheel_is_unquoted():
    text = open(os.path.join(HERE, "logs", "wheel_tag_mismatch__uv_url.log")).read()
    m = explain.explain_text(text, facts("h100_nvcc_mismatch"))["matches"][0]  # cp312, torch 2.7 cxx11abiTRUE
    assert m["id"] == "wheel_tag_mismatch"
    assert m["cause"].startswith("flash_attn-2.7.4.post1+cu12torch2.6cxx11abiFALSE-cp311")  # %2B decoded
    assert "python: wheel cp311, target cp312" in m["cause"]


def test_localized_compiler_message():
    text = open(os.path.join(HERE, "logs", "missing_cuda_headers__localized_de.log")).read()
    m = explain.explain_text(text, facts("a100_runtime_only"))["matches"][0]
    assert m["id"] == "missing_cuda_headers" and m["evidence"]["extracted"]["header"] == "cuda_runtime_api.h"
