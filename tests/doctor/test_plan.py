"""plan: flash-attn wheel naming by era, ABI / Python variations, --available matching, source builds."""

import json
import os

import pytest
from packaging.utils import parse_wheel_filename

from anyattn.doctor import plan
from anyattn.doctor.facts import Facts

HERE = os.path.dirname(os.path.abspath(__file__))

REAL = [  # (version, torch, cuda, python, abi, real release asset name)
    ("2.0.9", "2.1.0", "12.1", "3.10", True, "flash_attn-2.0.9+cu121torch2.1cxx11abiTRUE-cp310-cp310-linux_x86_64.whl"),
    ("2.6.3", "2.3.1", "12.1", "3.10", False, "flash_attn-2.6.3+cu123torch2.3cxx11abiFALSE-cp310-cp310-linux_x86_64.whl"),
    ("2.7.4.post1", "2.6.0", "12.4", "3.10", False,
     "flash_attn-2.7.4.post1+cu12torch2.6cxx11abiFALSE-cp310-cp310-linux_x86_64.whl"),
    ("2.8.3", "2.7.1", "12.8", "3.12", True, "flash_attn-2.8.3+cu12torch2.7cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"),
]


def T(torch="2.6.0", cuda="12.4", python="3.10", abi=False, platform="linux_x86_64", **kw):
    return plan.Target(torch=torch, cuda=cuda, python=python, cxx11_abi=abi, platform=platform, glibc="2.35", **kw)


@pytest.mark.parametrize("ver,torch,cuda,py,abi,name", REAL)
def test_real_names(ver, torch, cuda, py, abi, name):
    got, _ = plan.fa_wheel_name(ver, T(torch, cuda, py, abi))
    assert got == name
    assert plan.wheel_mismatches(name, T(torch, cuda, py, abi)) == []


@pytest.mark.parametrize("ver,torch,cuda,tag", [
    ("2.3.2", "2.0.1", "11.7", "cu117"),      # as-is
    ("2.3.2", "2.1.2", "12.1", "cu122"),      # torch 2.1 + CUDA 12 forced to cu122 (2.3.0-2.3.3)
    ("2.2.0", "2.1.2", "12.1", "cu121"),      # before 2.3.0: as-is
    ("2.3.6", "2.2.0", "12.1", "cu122"),      # 12.x -> cu122
    ("2.5.8", "2.3.0", "11.8", "cu118"),      # 11.x -> cu118
    ("2.6.3", "2.4.0", "12.4", "cu123"),      # 12.x -> cu123
    ("2.6.3", "2.4.0", "11.8", "cu118"),
    ("2.7.0", "2.5.1", "11.8", "cu11"),       # major only
    ("2.8.3", "2.9.0", "12.9", "cu12"),
    ("2.8.3", "2.10.0", "13.0", "cu12"),      # pre-cu13 setup.py maps 13 to cu12
    ("2.8.4", "2.10.0", "13.0", "cu13"),      # cu13 era
])
def test_eras(ver, torch, cuda, tag):
    assert plan.fa_cuda_tag(ver, cuda, torch)[0] == tag


def test_variations_parse_as_wheels():
    for py in ("3.9", "3.10", "3.11", "3.12", "3.13"):
        for abi in (True, False):
            name, _ = plan.fa_wheel_name("2.8.3", T("2.8.0", "12.8", py, abi))
            pname, ver, _, tags = parse_wheel_filename(name)
            assert str(pname) == "flash-attn" and ver.local == f"cu12torch2.8cxx11abi{str(abi).lower()}"
            cp = "cp" + py.replace(".", "")
            assert {str(t) for t in tags} == {f"{cp}-{cp}-linux_x86_64"}


def test_cuda13_with_old_release_is_not_compatible():
    p = plan.plan_flash_attn(T("2.10.0", "13.0", "3.12", True), "2.8.3")
    assert p["wheel"].startswith("flash_attn-2.8.3+cu12torch2.10") and not p["compatible"]
    assert any("libcudart.so.12" in r for r in p["reasons"])
    assert any("--no-build-isolation" in c for c in p["command"])


def test_tags_checked_with_packaging():
    t = T(python="3.11")
    assert plan.wheel_mismatches("flash_attn-2.7.4.post1+cu12torch2.6cxx11abiFALSE-cp310-cp310-linux_x86_64.whl", t) == \
        ["python: wheel cp310, target cp311"]
    r = plan.wheel_mismatches("flash_attn-2.7.0.post2+cu124torch2.4.1cxx11abiFALSE-cp310-cp310-win_amd64.whl",
                              T("2.4.1", "12.4"))
    assert any(x.startswith("platform: wheel win_amd64") for x in r)
    assert any(x.startswith("torch: wheel torch2.4.1") for x in r)


AVAILABLE = """# flash-attention v2.7.4.post1 and v2.8.3 release assets (subset)
flash_attn-2.7.4.post1+cu12torch2.5cxx11abiFALSE-cp310-cp310-linux_x86_64.whl
flash_attn-2.7.4.post1+cu12torch2.6cxx11abiFALSE-cp310-cp310-linux_x86_64.whl
flash_attn-2.7.4.post1+cu12torch2.6cxx11abiTRUE-cp310-cp310-linux_x86_64.whl
flash_attn-2.7.4.post1+cu12torch2.6cxx11abiFALSE-cp311-cp311-linux_x86_64.whl
https://github.com/Dao-AILab/flash-attention/releases/download/v2.8.3/flash_attn-2.8.3%2Bcu12torch2.6cxx11abiFALSE-cp310-cp310-linux_x86_64.whl
flash_attn-2.8.3+cu12torch2.7cxx11abiTRUE-cp312-cp312-linux_x86_64.whl
flash-attention-2.8.3.tar.gz
"""


def test_available_best_match(tmp_path):
    f = tmp_path / "assets.txt"
    f.write_text(AVAILABLE)
    names = plan.read_available(str(f))
    m = plan.match_available(names, T())
    assert m["best"] == "flash_attn-2.8.3+cu12torch2.6cxx11abiFALSE-cp310-cp310-linux_x86_64.whl"
    m = plan.match_available(names, T(), want_version="2.7.4.post1")
    assert m["best"] == "flash_attn-2.7.4.post1+cu12torch2.6cxx11abiFALSE-cp310-cp310-linux_x86_64.whl"


def test_available_field_by_field(tmp_path):
    f = tmp_path / "assets.txt"
    f.write_text(AVAILABLE)
    p = plan.plan("flash-attn", facts=None, available_file=str(f), torch="2.6.0", cuda="12.4", python="3.13",
                  cxx11_abi="TRUE", platform="linux_x86_64")
    assert not p["compatible"]
    closest = p["available_match"]["closest"]
    assert closest and closest[0]["mismatches"]
    joined = " ".join(m for c in closest for m in c["mismatches"])
    assert "python: wheel cp310, target cp313" in joined and "abi: wheel cxx11abiFALSE" in joined
    assert any("--no-build-isolation" in c for c in p["command"])  # falls back to a sized source build


def test_source_build_sizing():
    t = T(ccs=[8.0, 9.0], cpus=32, available_gb=60.0)
    s = plan.build_sizing(t, {"MAX_JOBS": "16"})
    assert s["planned_peak_gb"] == 16 * 4 * plan.GB_PER_JOB_THREAD and not s["fits"]
    assert s["rec_peak_gb"] <= 60 * 0.8 and s["archs"] == "80;90"
    sb = plan.source_build(t, {})
    assert 'FLASH_ATTN_CUDA_ARCHS="80;90"' in sb["command"][1] and "--no-build-isolation" in sb["command"][1]
    assert any("minutes" in n for n in sb["notes"])
    small = plan.build_sizing(T(cpus=2, available_gb=6.0), {})
    assert small["max_jobs"] == 1 and small["rec_nvcc_threads"] == 1 and small["rec_fits"]


def test_plan_for_recorded_facts():
    with open(os.path.join(HERE, "facts", "a100_runtime_only.json")) as fh:
        f = Facts.from_dict(json.load(fh))
    p = plan.plan("flash-attn", facts=f)
    assert p["wheel"] == "flash_attn-2.8.3+cu12torch2.5cxx11abiFALSE-cp310-cp310-linux_x86_64.whl"
    assert p["compatible"] and p["command"][0].startswith("python -m pip install --no-deps https://github.com/")
    assert "estimated from facts" in p["alternatives"]["note"]
    assert p["alternatives"]["usable"] == ["sdpa"]  # FlashInfer imports, but its JIT has no nvcc here
    fi = plan.plan("flashinfer", facts=f, version="0.2.5")
    assert any("flashinfer-jit-cache==0.2.5 --index-url https://flashinfer.ai/whl/cu124" in c for c in fi["command"])
    assert any("no nvcc" in r for r in fi["reasons"])
    xf = plan.plan("xformers", facts=f)
    assert xf["command"] == ["python -m pip install xformers torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"]


def test_plan_cli_json(tmp_path):
    from anyattn.doctor import cli
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(["plan", "flash-attn", "--version", "2.6.3", "--torch", "2.3.1", "--cuda", "12.1", "--python", "3.10",
                       "--cxx11-abi", "FALSE", "--platform", "linux_x86_64", "--json",
                       "--facts", os.path.join(HERE, "facts", "cpu_laptop.json")])
    d = json.loads(buf.getvalue())
    assert rc == 0
    assert {"package", "wheel", "compatible", "command", "reasons", "alternatives"} <= set(d)
    assert d["wheel"] == REAL[1][5] and d["compatible"]
    url = f"https://github.com/Dao-AILab/flash-attention/releases/download/v2.6.3/{REAL[1][5].replace('+', '%2B')}"
    assert d["command"] == [f"python -m pip install --no-deps {url}", f"# uv: uv pip install --no-deps {url}"]


def test_plan_on_real_cuda13_device_facts():
    """Recorded on the H200 device machine: torch 2.11+cu130, no flash-attn release wheel loads there."""
    with open(os.path.join(HERE, "facts", "h200_device_real.json")) as fh:
        f = Facts.from_dict(json.load(fh))
    p = plan.plan("flash-attn", facts=f)
    assert p["wheel"] == "flash_attn-2.8.3+cu12torch2.11cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"
    assert not p["compatible"]
    assert any('FLASH_ATTN_CUDA_ARCHS="90"' in c and "MAX_JOBS=" in c for c in p["command"])
    assert p["source_build"]["sizing"]["rec_peak_gb"] <= 125.0


def test_archs_are_flash_attn_families():
    """FLASH_ATTN_CUDA_ARCHS takes families: sm86/sm89 run the sm80 build."""
    assert plan.build_sizing(T(ccs=[8.6, 8.9]), {})["archs"] == "80"
    assert plan.build_sizing(T(ccs=[9.0, 12.0]), {})["archs"] == "90;120"
    assert plan.build_sizing(T(ccs=[7.5]), {})["archs"] is None  # no FA2-capable GPU: defaults
