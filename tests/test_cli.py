"""The CLI through a real subprocess, including the --json schemas the README documents."""

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "ANYATTN_FLEX_COMPILE": "0"}
ENV.pop("ANYATTN_BACKEND", None)


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "anyattn", *args], capture_output=True, text=True,
                          env=env or ENV, timeout=300)


def test_backends_json_schema():
    r = run("backends", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["device"] == "cpu"
    by_name = {b["name"]: b for b in data["backends"]}
    assert {"reference", "sdpa", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "sdpa_math", "flex", "flash_attn",
            "flash_attn_3", "flashinfer", "xformers", "triton"} <= set(by_name)
    for b in data["backends"]:
        assert set(b) == {"name", "installed", "version", "usable", "reasons", "description", "devices"}
        assert b["usable"] == (b["reasons"] == [])
    assert by_name["reference"]["usable"] and by_name["reference"]["installed"]
    assert not by_name["sdpa_cudnn"]["usable"] and by_name["sdpa_cudnn"]["reasons"] == ["runs on cuda, not cpu"]


def test_backends_human_table():
    r = run("backends")
    assert r.returncode == 0, r.stderr
    assert "reference" in r.stdout and "runs on cuda, not cpu" in r.stdout


def test_which_json_schema_and_reasons():
    r = run("which", "--dtype", "fp32", "--head-dim", "64", "--causal", "--softcap", "30", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(d) == {"request", "source", "preference", "chosen", "candidates", "measured"}
    assert d["measured"] is None  # no tune file in this environment
    assert d["request"]["head_dim"] == 64 and d["request"]["softcap"] is True and d["request"]["dtype"] == "float32"
    assert d["source"] == "automatic" and d["chosen"] == "flex"
    for c in d["candidates"]:
        assert set(c) == {"name", "status", "reasons", "notes", "version"}
        assert c["status"] in {"chosen", "usable", "rejected", "unavailable", "not installed", "not requested"}
        if c["status"] in {"rejected", "unavailable", "not installed"}:
            assert c["reasons"], c
    sdpa = next(c for c in d["candidates"] if c["name"] == "sdpa_flash")
    assert "no logit soft-capping" in sdpa["reasons"]


def test_which_respects_env_and_forced_backend():
    r = run("which", "--dtype", "fp32", "--json", env={**ENV, "ANYATTN_BACKEND": "SDPA_MATH"})
    d = json.loads(r.stdout)
    assert d["source"] == "ANYATTN_BACKEND" and d["chosen"] == "sdpa_math" and d["preference"] == ["sdpa_math"]
    r = run("which", "--dtype", "bf16", "--backend", "flash_attn", "--json")
    assert r.returncode == 1  # forced backend cannot serve on a CPU machine
    d = json.loads(r.stdout)
    assert d["chosen"] is None and d["candidates"][0]["name"] == "flash_attn"


@pytest.mark.parametrize("args,words", [
    (["which", "--backend", "flashattn3x"], "unknown name"),
    (["which", "--dtype", "int8"], "dtype: expected one of"),
    (["which", "--op", "paged", "--device", "cuda"], "torch sees no CUDA device"),
])
def test_which_bad_input_exits_2_with_a_message(args, words):
    r = run(*args)
    assert r.returncode == 2 and words in r.stderr, (r.returncode, r.stderr)


def test_which_human_table_paged():
    r = run("which", "--op", "paged", "--dtype", "fp16", "--gqa", "4", "--window", "128")
    assert r.returncode == 0, r.stderr
    assert "paged" in r.stdout and "block_size=16" in r.stdout


def test_help_lists_every_command():
    r = run("--help")
    for cmd in ("backends", "which", "doctor", "explain", "plan", "bench", "tune"):
        assert cmd in r.stdout
