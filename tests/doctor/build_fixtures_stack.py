"""Fact sets for the new-stack checks (issue 11), written like build_fixtures.py (run by hand:
python tests/doctor/build_fixtures_stack.py). Versions, paths and error texts are those of real
installs: flash-attn-4 4.0.0b36 / nvidia-cutlass-dsl 4.8.1 (the H200 machine of issue 8),
flashinfer-python 0.7.2.post1 beside flashinfer-cubin 0.6.13 (what PyPI served), real error lines
(tests/doctor/logs/sources.json)."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_fixtures import HERE, OKPROBE, base, fail, gpu, pkg, toolkit, torch  # noqa: E402

SP = "/opt/venv/lib/python3.12/site-packages"


def stack(versions, dsl_dirs=None, on_path=True, installer="pip", sys_path=None):
    sp = sys_path or ["", "/usr/lib/python312.zip", "/usr/lib/python3.12", SP]
    dirs = dsl_dirs if dsl_dirs is not None else ([f"{SP}/nvidia_cutlass_dsl/python_packages"]
                                                  if "nvidia-cutlass-dsl" in versions else [])
    if on_path:
        sp = sp + [d for d in dirs if d not in sp]
    return {"versions": versions, "origins": {n: {"installer": installer, "location": SP} for n in versions},
            "sys_path": sp, "dsl_packages_dirs": dirs, "dsl_packages_on_sys_path": [d for d in dirs if d in sp],
            "cutlass_pth_files": [f"{SP}/nvidia_cutlass_dsl.pth"] if dirs and on_path else []}


def slow_ok(seconds):
    d = dict(OKPROBE)
    d["seconds"] = seconds
    return d


DSL = {"nvidia-cutlass-dsl": "4.8.1", "nvidia-cutlass-dsl-libs-base": "4.8.1", "nvidia-cutlass-dsl-libs-core": "4.8.1"}
M = {}

# 1. the H200 machine of issue 8: FA4 4.0.0b36, cu13 flavour, all fine; the import takes 7.9 s
f = base("H200, torch 2.11+cu130, FA4 4.0.0b36 (cu13 flavour)", "3.12.3")
f["torch"] = torch("2.11.0+cu130", "13.0", abi=True, arch=["sm_80", "sm_90", "sm_100", "sm_120"])
f["gpus"] = [gpu(0, "NVIDIA H200", "9.0", 141, "00000000:19:00.0")]
f["driver"] = {"version": "580.95.05", "cuda": "13.0"}
f["toolkit"] = toolkit("/usr/local/cuda", "13.0")
f["triton"] = {"installed": True, "version": "3.6.0"}
f["packages"]["flash-attn-4"] = pkg("4.0.0b36", [], probe=slow_ok(7.9), location=SP)
f["stack"] = stack(dict(DSL, **{"nvidia-cutlass-dsl-libs-cu13": "4.8.1", "flash-attn-4": "4.0.0b36",
                                "torch": "2.11.0+cu130"}))
f["_expect"] = {"ids": ["fa4_import_slow"], "absent": ["fa4_dsl_flavour_too_new", "fa4_dsl_pieces_missing",
                "fa4_dsl_not_on_sys_path", "flash_attn_namespace_clash", "fa4_dsl_flavour"], "exit_code": 0,
                "severity": {"fa4_import_slow": "info"}, "fix_contains": {"fa4_import_slow": "anyattn.warmup()"}}
M["h200_fa4_cu13_ok"] = f

# 2. A100 on a CUDA 12.4 driver with the cu13 flavour of the DSL (pip install 'flash-attn-4[cu13]')
f = base("A100, driver 550 (CUDA 12.4), FA4 with the cu13 DSL flavour", "3.12.3")
f["torch"] = torch("2.8.0+cu128", "12.8", abi=True, arch=["sm_80", "sm_86", "sm_90", "sm_100", "sm_120"])
f["gpus"] = [gpu(0, "NVIDIA A100-SXM4-80GB", "8.0", 80, "00000000:07:00.0")]
f["driver"] = {"version": "550.127.05", "cuda": "12.4"}
f["packages"]["flash-attn-4"] = pkg("4.0.0b36", [], probe=fail(
    "RuntimeError: CUDA Error: CUDA_ERROR_UNSUPPORTED_PTX_VERSION (the provided PTX was compiled with an unsupported toolchain)"),
    location=SP)
f["stack"] = stack(dict(DSL, **{"nvidia-cutlass-dsl-libs-cu13": "4.8.1", "flash-attn-4": "4.0.0b36"}))
f["_expect"] = {"ids": ["fa4_dsl_flavour_too_new"], "exit_code": 1, "severity": {"fa4_dsl_flavour_too_new": "error"},
                "fix_contains": {"fa4_dsl_flavour_too_new": "uninstall -y nvidia-cutlass-dsl-libs-cu13"}}
M["a100_fa4_cu13_flavour_old_driver"] = f

# 3. H100: nvidia-cutlass-dsl installed with --no-deps: libs-core missing -> No module named 'cutlass.cute'
f = base("H100, FA4 installed with --no-deps (no libs-core)", "3.11.10")
f["torch"] = torch("2.9.1+cu128", "12.8", abi=True)
f["gpus"] = [gpu(0, "NVIDIA H100 80GB HBM3", "9.0", 80, "00000000:18:00.0")]
f["driver"] = {"version": "570.133.20", "cuda": "12.8"}
f["packages"]["flash-attn-4"] = pkg("4.0.0b36", [], probe=fail("ModuleNotFoundError: No module named 'cutlass.cute'"),
                                    location=SP)
f["stack"] = stack({"nvidia-cutlass-dsl": "4.8.1", "nvidia-cutlass-dsl-libs-base": "4.8.1",
                    "nvidia-cutlass-dsl-libs-cu12": "4.8.1", "flash-attn-4": "4.0.0b36"})
f["_expect"] = {"ids": ["fa4_dsl_pieces_missing", "cute_dsl_mismatch"], "exit_code": 1,
                "fix_contains": {"fa4_dsl_pieces_missing": "'nvidia-cutlass-dsl-libs-core==4.8.1'"}}
M["h100_fa4_missing_libs_core"] = f

# 4. L40S: FA4 installed with pip --target into a shared dir on PYTHONPATH: the .pth never ran
f = base("L40S, FA4 installed with pip install --target /opt/fa4", "3.12.3")
f["torch"] = torch("2.9.1+cu128", "12.8", abi=True)
f["gpus"] = [gpu(0, "NVIDIA L40S", "8.9", 46, "00000000:3B:00.0")]
f["driver"] = {"version": "570.133.20", "cuda": "12.8"}
f["env"] = {"PYTHONPATH": "/opt/fa4"}
f["packages"]["flash-attn-4"] = pkg("4.0.0b36", [], probe=fail("ModuleNotFoundError: No module named 'cutlass._mlir'"),
                                    location="/opt/fa4")
f["stack"] = stack(dict(DSL, **{"nvidia-cutlass-dsl-libs-cu12": "4.8.1", "flash-attn-4": "4.0.0b36"}),
                   dsl_dirs=["/opt/fa4/nvidia_cutlass_dsl/python_packages"], on_path=False,
                   sys_path=["", "/opt/fa4", "/usr/lib/python3.12", SP])
f["_expect"] = {"ids": ["fa4_dsl_not_on_sys_path", "cute_dsl_mismatch"], "exit_code": 1,
                "fix_contains": {"fa4_dsl_not_on_sys_path": "export PYTHONPATH=/opt/fa4/nvidia_cutlass_dsl/python_packages"}}
M["l40s_fa4_target_install"] = f

# 5. H100 with flash-attn 2.8.3 installed after FA4: flash_attn/cute gone
f = base("H100, flash-attn 2.8.3 installed after flash-attn-4", "3.12.3")
f["torch"] = torch("2.8.0+cu128", "12.8", abi=True)
f["gpus"] = [gpu(0, "NVIDIA H100 80GB HBM3", "9.0", 80, "00000000:18:00.0")]
f["driver"] = {"version": "570.133.20", "cuda": "12.8"}
f["packages"]["flash-attn"] = pkg("2.8.3", ["flash_attn_2_cuda.cpython-312-x86_64-linux-gnu.so"], location=SP,
                                  origin={"installer": "pip", "wheel": "flash_attn-2.8.3+cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"})
f["packages"]["flash-attn-4"] = pkg("4.0.0b36", [], probe=fail("ModuleNotFoundError: No module named 'flash_attn.cute'"),
                                    location=SP)
f["stack"] = stack(dict(DSL, **{"nvidia-cutlass-dsl-libs-cu12": "4.8.1", "flash-attn-4": "4.0.0b36", "flash-attn": "2.8.3"}))
f["_expect"] = {"ids": ["flash_attn_namespace_clash"], "exit_code": 1,
                "fix_contains": {"flash_attn_namespace_clash": "--force-reinstall --no-deps flash-attn-4"}}
M["h100_fa4_fa2_namespace_clash"] = f

# 6. RTX 5090 (SM 12.0) with FlashInfer on a CUDA 12.8 torch
f = base("RTX 5090, torch 2.7+cu128, FlashInfer 0.6.3", "3.12.3")
f["torch"] = torch("2.7.1+cu128", "12.8", abi=True, arch=["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"])
f["gpus"] = [gpu(0, "NVIDIA GeForce RTX 5090", "12.0", 32, "00000000:01:00.0")]
f["driver"] = {"version": "575.64.03", "cuda": "12.9"}
f["toolkit"] = toolkit("/usr/local/cuda", "12.8")
f["packages"]["flashinfer-python"] = pkg("0.6.3", [], location=SP)
f["packages"]["flashinfer-cubin"] = pkg("0.6.3", [], location=SP)
f["stack"] = stack({"flashinfer-python": "0.6.3", "flashinfer-cubin": "0.6.3"})
f["_expect"] = {"ids": ["flashinfer_sm12_cuda"], "exit_code": 1, "severity": {"flashinfer_sm12_cuda": "error"},
                "fix_contains": {"flashinfer_sm12_cuda": "whl/cu129"}}
M["rtx5090_flashinfer_cu128"] = f

# 7. H100: what PyPI served (flashinfer-python 0.7.2.post1 beside flashinfer-cubin 0.6.13)
f = base("H100, flashinfer-python 0.7.2.post1 + flashinfer-cubin 0.6.13", "3.12.3")
f["torch"] = torch("2.9.1+cu128", "12.8", abi=True)
f["gpus"] = [gpu(0, "NVIDIA H100 80GB HBM3", "9.0", 80, "00000000:18:00.0")]
f["driver"] = {"version": "570.133.20", "cuda": "12.8"}
f["packages"]["flashinfer-python"] = pkg("0.7.2.post1", [], location=SP, probe=fail(
    "RuntimeError: flashinfer-cubin version (0.6.13) does not match flashinfer version (0.7.2.post1). Please install the "
    "same version of both packages. Set FLASHINFER_DISABLE_VERSION_CHECK=1 to bypass this check."))
f["packages"]["flashinfer-cubin"] = pkg("0.6.13", [], location=SP)
f["stack"] = stack({"flashinfer-python": "0.7.2.post1", "flashinfer-cubin": "0.6.13"})
f["_expect"] = {"ids": ["flashinfer_version_skew"], "exit_code": 1,
                "fix_contains": {"flashinfer_version_skew": "flashinfer-cubin==0.7.2.post1"}}
M["h100_flashinfer_072_cubin_0613"] = f

# 8. B200 with a flash-attn 2.8.3 cu12 wheel on torch 2.10+cu130, recorded with --no-probe
f = base("B200, torch 2.10+cu130, flash-attn 2.8.3+cu12 (no probe)", "3.12.3")
f["torch"] = torch("2.10.0+cu130", "13.0", abi=True, arch=["sm_80", "sm_90", "sm_100", "sm_120"])
f["gpus"] = [gpu(0, "NVIDIA B200", "10.0", 180, "00000000:1B:00.0")]
f["driver"] = {"version": "580.95.05", "cuda": "13.0"}
f["toolkit"] = toolkit("/usr/local/cuda", "13.0")
f["packages"]["flash-attn"] = pkg("2.8.3", ["flash_attn_2_cuda.cpython-312-x86_64-linux-gnu.so"], probe=None, location=SP,
                                  origin={"installer": "pip", "wheel": "flash_attn-2.8.3+cu12torch2.10cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"})
f["stack"] = stack({"flash-attn": "2.8.3"})
f["_expect"] = {"ids": ["flash_attn_cu12_on_cuda13"], "exit_code": 1,
                "fix_contains": {"flash_attn_cu12_on_cuda13": "anyattn plan flash-attn"}}
M["b200_fa283_cu12_wheel_cuda13"] = f

# 9. MI300X with a ROCm torch and a CUDA flash-attn wheel
f = base("MI300X, torch 2.9.1+rocm6.4, flash-attn +cu12 wheel", "3.12.3")
f["torch"] = torch("2.9.1+rocm6.4", None, abi=True, avail=True, arch=["gfx90a", "gfx942"], hip="6.4.43482")
f["how"]["gpus"] = "no NVML, nvidia-smi not on PATH, torch sees no CUDA device"
f["packages"]["flash-attn"] = pkg("2.8.3+cu12torch2.9cxx11abitrue", ["flash_attn_2_cuda.cpython-312-x86_64-linux-gnu.so"],
                                  probe=fail("ImportError: libcudart.so.12: cannot open shared object file: No such file or directory"),
                                  location=SP)
f["stack"] = stack({"flash-attn": "2.8.3+cu12torch2.9cxx11abitrue"})
f["_expect"] = {"ids": ["rocm_cuda_wheel"], "exit_code": 1,
                "fix_contains": {"rocm_cuda_wheel": "uninstall -y flash-attn"}}
M["mi300x_rocm_cuda_wheel"] = f

# 10. RTX 4090 workstation whose environment uv manages
f = base("RTX 4090, uv-managed venv", "3.12.3")
f["torch"] = torch("2.9.1+cu128", "12.8", abi=True)
f["gpus"] = [gpu(0, "NVIDIA GeForce RTX 4090", "8.9", 24, "00000000:01:00.0")]
f["driver"] = {"version": "570.133.20", "cuda": "12.8"}
f["toolkit"] = toolkit("/usr/local/cuda", "12.8")
f["stack"] = stack({"torch": "2.9.1+cu128"}, installer="uv")
f["_expect"] = {"ids": ["uv_environment"], "exit_code": 1,
                "fix_contains": {"uv_environment": "uv pip install flash-attn --no-build-isolation"}}
f["_expect"]["exit_code"] = 0  # advice only
M["rtx4090_uv"] = f

# 11. Windows 11 with an RTX 4080: no Linux-only wheels
f = base("Windows 11, RTX 4080 SUPER", "3.12.7")
f["os"] = {"system": "Windows", "release": "10", "machine": "AMD64", "platform": "Windows-10-10.0.26100-SP0",
           "wsl": False, "win_ver": "10.0.26100"}
f["libstdcxx"] = {}
f["torch"] = torch("2.9.1+cu128", "12.8", abi=False)
f["gpus"] = [gpu(0, "NVIDIA GeForce RTX 4080 SUPER", "8.9", 16, "00000000:01:00.0")]
f["driver"] = {"version": "581.57", "cuda": "13.0"}
f["stack"] = stack({"torch": "2.9.1+cu128"})
f["_expect"] = {"ids": ["windows_new_stack", "windows_wheels"], "exit_code": 1,
                "fix_contains": {"windows_new_stack": "triton-windows"}}
M["windows_rtx4080_new_stack"] = f

# 12. Colab T4 with FA4 installed: sm75 has no FA4 kernels
f = base("Colab T4 with flash-attn-4 installed", "3.12.11")
f["torch"] = torch("2.8.0+cu126", "12.6", abi=True)
f["gpus"] = [gpu(0, "Tesla T4", "7.5", 15, "00000000:00:04.0")]
f["driver"] = {"version": "550.54.15", "cuda": "12.4"}
f["packages"]["flash-attn-4"] = pkg("4.0.0b36", [], probe=slow_ok(8.4), location=SP)
f["stack"] = stack(dict(DSL, **{"nvidia-cutlass-dsl-libs-cu12": "4.8.1", "flash-attn-4": "4.0.0b36"}))
f["_expect"] = {"ids": ["fa4_gpu_unsupported"], "absent": ["fa4_dsl_flavour_too_new"], "exit_code": 1,
                "severity": {"fa4_gpu_unsupported": "warning"}}
M["t4_fa4_unsupported"] = f

# 13. H100 on a CUDA 13 driver and torch with the default cu12 flavour: works, the cu13 extra is available
f = base("H100, driver 580 (CUDA 13.0), torch 2.11+cu130, FA4 with the cu12 DSL flavour", "3.12.3")
f["torch"] = torch("2.11.0+cu130", "13.0", abi=True, arch=["sm_80", "sm_90", "sm_100", "sm_120"])
f["gpus"] = [gpu(0, "NVIDIA H100 80GB HBM3", "9.0", 80, "00000000:18:00.0")]
f["driver"] = {"version": "580.95.05", "cuda": "13.0"}
f["toolkit"] = toolkit("/usr/local/cuda", "13.0")
f["packages"]["flash-attn-4"] = pkg("4.0.0b36", [], probe=slow_ok(3.1), location=SP)
f["stack"] = stack(dict(DSL, **{"nvidia-cutlass-dsl-libs-cu12": "4.8.1", "flash-attn-4": "4.0.0b36"}))
f["_expect"] = {"ids": ["fa4_dsl_flavour"], "absent": ["fa4_dsl_flavour_too_new", "fa4_import_slow"], "exit_code": 0,
                "fix_contains": {"fa4_dsl_flavour": "flash-attn-4[cu13]"}}
M["h100_fa4_cu12_flavour_cuda13"] = f

# 14. RTX A6000: a partial upgrade left the DSL's libs-base one release behind the meta-package
f = base("RTX A6000, nvidia-cutlass-dsl 4.8.1 with libs-base 4.7.0", "3.11.10")
f["torch"] = torch("2.9.1+cu128", "12.8", abi=True)
f["gpus"] = [gpu(0, "NVIDIA RTX A6000", "8.6", 48, "00000000:41:00.0")]
f["driver"] = {"version": "570.133.20", "cuda": "12.8"}
f["packages"]["flash-attn-4"] = pkg("4.0.0b36", [], probe=fail(
    "ImportError: /opt/venv/lib/python3.11/site-packages/nvidia_cutlass_dsl/python_packages/cutlass/_mlir/_mlir_libs/"
    "_cute.cpython-311-x86_64-linux-gnu.so: undefined symbol: mlirCuteTiledCopyTypeGet"), location=SP)
f["stack"] = stack({"nvidia-cutlass-dsl": "4.8.1", "nvidia-cutlass-dsl-libs-base": "4.7.0",
                    "nvidia-cutlass-dsl-libs-core": "4.8.1", "nvidia-cutlass-dsl-libs-cu12": "4.8.1",
                    "flash-attn-4": "4.0.0b36"})
f["_expect"] = {"ids": ["fa4_dsl_pieces_skew", "cute_dsl_mismatch"], "exit_code": 1,
                "fix_contains": {"fa4_dsl_pieces_skew": "'nvidia-cutlass-dsl-libs-base==4.8.1'"}}
M["a6000_fa4_dsl_pieces_skew"] = f

# 15. H100 with flash-attn 2.8.3 and FA4 both importing (FA4 installed last): a warning, not an error
f = base("H100, flash-attn 2.8.3 and flash-attn-4 both working", "3.12.3")
f["torch"] = torch("2.8.0+cu128", "12.8", abi=True)
f["gpus"] = [gpu(0, "NVIDIA H100 80GB HBM3", "9.0", 80, "00000000:18:00.0")]
f["driver"] = {"version": "570.133.20", "cuda": "12.8"}
f["packages"]["flash-attn"] = pkg("2.8.3", ["flash_attn_2_cuda.cpython-312-x86_64-linux-gnu.so"], location=SP)
f["packages"]["flash-attn-4"] = pkg("4.0.0b36", [], probe=slow_ok(4.2), location=SP)
f["stack"] = stack(dict(DSL, **{"nvidia-cutlass-dsl-libs-cu12": "4.8.1", "flash-attn-4": "4.0.0b36", "flash-attn": "2.8.3"}))
f["_expect"] = {"ids": ["flash_attn_namespace_clash"], "exit_code": 1,
                "severity": {"flash_attn_namespace_clash": "warning"},
                "fix_contains": {"flash_attn_namespace_clash": "uninstall -y flash-attn"}, "chosen": "flash_attn_4"}
M["h100_fa2_and_fa4_both_import"] = f

if __name__ == "__main__":
    for name, d in M.items():
        with open(os.path.join(HERE, name + ".json"), "w") as fh:
            json.dump(d, fh, indent=1, sort_keys=True)
            fh.write("\n")
    print(f"wrote {len(M)} fact sets to {HERE}")
