"""Regenerate the machine fact sets in tests/doctor/facts/ (run by hand: python tests/doctor/build_fixtures.py).

Each fact set reproduces the facts ``anyattn doctor --save-facts`` records on such a machine
(values taken from real reports of these setups: nvidia-smi output, torch builds, error texts).
``_expect`` holds what the checks must produce: ids that must appear, ids that must not, the
exit code, substrings the fixes must contain, and the backend the estimate must pick.
Two fact sets are real recordings and are not generated here: ``devbox_cpu_nvcc13.json``
(this project's developer machine) and ``h100_xformers_real.json`` (the device machine).
"""

import json
import os

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "facts")

NOT = {"installed": False}
PKGS = ["flash-attn", "flash-attn-3", "flashinfer-python", "flashinfer-cubin", "flashinfer-jit-cache",
        "xformers", "vllm", "sglang", "triton"]
OKPROBE = {"ok": True, "returncode": 0, "signal": None, "timed_out": False, "seconds": 1.2, "error": None,
           "stdout": "", "stderr": ""}
SP = "/usr/lib/python3/dist-packages"


def fail(err_line, stderr=None):
    return {"ok": False, "returncode": 1, "signal": None, "timed_out": False, "seconds": 0.9, "error": err_line,
            "stdout": "", "stderr": stderr or ("Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\n"
                                               + err_line + "\n")}


def pkg(version, ext=None, probe=OKPROBE, origin=None, **kw):
    d = {"installed": True, "version": version, "dist": kw.pop("dist", None), "origin": origin or {"installer": "pip"},
         "extensions": ext or [], "n_extensions": len(ext or []), "location": kw.pop("location", "/opt/venv/lib/python3.10/site-packages"),
         "probe": probe}
    d.update(kw)
    return d


def toolkit(home=None, nvcc=None, headers=("cuda.h", "cuda_runtime.h", "cuda_fp8.h"), found_by=None, env=None,
            candidates=(), exists=True):
    if home is None:
        return {"cuda_home": None, "found_by": "CUDA_HOME/CUDA_PATH unset, no nvcc on PATH, no /usr/local/cuda",
                "cuda_home_env": None, "nvcc": None, "nvcc_version": None, "headers": {}, "exists": False,
                "nvcc_on_path": None, "candidates": list(candidates)}
    return {"cuda_home": home, "found_by": found_by or "/usr/local/cuda exists", "cuda_home_env": env,
            "nvcc": f"{home}/bin/nvcc" if nvcc else None, "nvcc_version": nvcc, "exists": exists, "has_lib": True,
            "headers": {h: ([f"{home}/include/{h}"] if h in headers else []) for h in ("cuda.h", "cuda_runtime.h", "cuda_fp8.h")}
            if exists else {},
            "nvcc_on_path": f"{home}/bin/nvcc" if nvcc else None, "candidates": list(candidates)}


def torch(version, cuda, abi=False, avail=True, arch=None, n=1, **kw):
    d = {"installed": True, "version": version, "cuda": cuda, "hip": None, "cxx11_abi": abi,
         "cuda_available": avail, "arch_list": arch if arch is not None else
         (["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"] if cuda else []),
         "device_count": n if avail else 0, "mps_available": False}
    d.update(kw)
    return d


def gpu(i, name, cc, mem_gb, bus):
    return {"index": i, "name": name, "cc": cc, "memory_mb": mem_gb * 1024, "pci_bus_id": bus}


def base(label, py="3.10.12"):
    return {
        "schema": 1, "collected_at": "2026-11-20T12:00:00Z", "live": False, "machine": label,
        "os": {"system": "Linux", "release": "5.15.0-122-generic", "machine": "x86_64",
               "platform": "Linux-5.15.0-122-generic-x86_64-with-glibc2.35", "libc": "glibc", "libc_version": "2.35",
               "wsl": False},
        "python": {"version": py, "implementation": "cpython", "executable": "/opt/venv/bin/python",
                   "tags": [], "n_tags": 0, "prefix": "/opt/venv"},
        "libstdcxx": {"libs": [{"path": "/lib/x86_64-linux-gnu/libstdc++.so.6", "max": "3.4.30", "versions": ["3.4.30"]}],
                      "max": "3.4.30"},
        "torch": {}, "gpus": [], "driver": {}, "toolkit": toolkit(None), "pip_cuda": [],
        "build": {"modules": {"packaging": "24.1", "ninja": "1.11.1.1", "psutil": "6.0.0", "wheel": "0.44.0",
                              "setuptools": "75.1.0"}, "ninja_bin": "/opt/venv/bin/ninja", "gcc": "/usr/bin/gcc",
                  "gcc_version": "11.4.0"},
        "memory": {"total_gb": 251.7, "available_gb": 240.2, "swap_gb": 0.0}, "cpu_count": 32,
        "env": {}, "packages": {p: dict(NOT) for p in PKGS},
        "triton": {"installed": False}, "flashinfer": {"jit_dir": "/root/.cache/flashinfer", "jit_dir_exists": False,
                                                       "jit_dir_writable": True, "nearest_existing": "/root"},
        "how": {"gpus": "nvidia-smi --query-gpu", "toolkit": "torch.utils.cpp_extension order"}, "notes": [],
    }


M = {}

# 1. CPU-only laptop: nothing to fix, SDPA on CPU
f = base("CPU-only Linux laptop", "3.11.9")
f["torch"] = torch("2.5.1+cpu", None, abi=False, avail=False)
f["how"]["gpus"] = "no NVML, nvidia-smi not on PATH, torch sees no CUDA device"
f["memory"] = {"total_gb": 15.5, "available_gb": 9.1}
f["cpu_count"] = 8
f["build"]["modules"]["psutil"] = None
f["_expect"] = {"ids": ["no_gpu"], "absent": ["cuda_home_missing", "driver_too_old", "build_prereqs_missing_warning"],
                "exit_code": 0, "severity": {"no_gpu": "info"}, "chosen": "sdpa"}
M["cpu_laptop"] = f

# 2. macOS (Apple Silicon): SDPA on MPS
f = base("MacBook Pro M3, macOS 14", "3.12.4")
f["os"] = {"system": "Darwin", "release": "23.5.0", "machine": "arm64", "platform": "macOS-14.5-arm64-arm-64bit",
           "wsl": False, "mac_ver": "14.5"}
f["libstdcxx"] = {}
f["torch"] = torch("2.6.0", None, abi=False, avail=False, mps_available=True)
f["build"]["modules"]["ninja"] = None
f["_expect"] = {"ids": ["macos_no_cuda"], "absent": ["no_gpu", "cuda_home_missing", "build_prereqs_missing"],
                "exit_code": 0, "chosen": "sdpa"}
M["macos_m3"] = f

# 3. Windows desktop, RTX 3090, no toolkit
f = base("Windows 11, RTX 3090", "3.11.9")
f["os"] = {"system": "Windows", "release": "10", "machine": "AMD64", "platform": "Windows-10-10.0.22631-SP0",
           "wsl": False, "win_ver": "10.0.22631"}
f["libstdcxx"] = {}
f["torch"] = torch("2.6.0+cu124", "12.4", abi=False)
f["gpus"] = [gpu(0, "NVIDIA GeForce RTX 3090", "8.6", 24, "00000000:01:00.0")]
f["driver"] = {"version": "566.36", "cuda": "12.7"}
f["_expect"] = {"ids": ["windows_wheels", "cuda_home_missing"], "absent": ["driver_too_old"], "exit_code": 1,
                "fix_contains": {"windows_wheels": "cp311", "cuda_home_missing": "12-4"}, "chosen": "sdpa"}
M["windows_rtx3090"] = f

# 4. Colab T4: flash-attn installed, imports, cannot run; nvcc 12.5 vs torch 12.4
f = base("Google Colab, Tesla T4", "3.10.12")
f["torch"] = torch("2.6.0+cu124", "12.4", abi=False)
f["gpus"] = [gpu(0, "Tesla T4", "7.5", 15, "00000000:00:04.0")]
f["driver"] = {"version": "550.54.15", "cuda": "12.4"}
f["toolkit"] = toolkit("/usr/local/cuda", "12.5")
f["memory"] = {"total_gb": 12.7, "available_gb": 10.9}
f["cpu_count"] = 2
f["packages"]["flash-attn"] = pkg("2.7.4.post1", ["flash_attn_2_cuda.cpython-310-x86_64-linux-gnu.so"],
                                  origin={"installer": "pip", "url": "https://github.com/Dao-AILab/flash-attention/releases/download/v2.7.4.post1/flash_attn-2.7.4.post1+cu12torch2.6cxx11abiFALSE-cp310-cp310-linux_x86_64.whl",
                                          "wheel": "flash_attn-2.7.4.post1+cu12torch2.6cxx11abiFALSE-cp310-cp310-linux_x86_64.whl"})
f["packages"]["triton"] = pkg("3.2.0")
f["triton"] = {"installed": True, "version": "3.2.0", "kernel_probe": OKPROBE}
f["_expect"] = {"ids": ["gpu_arch_unsupported", "nvcc_torch_cuda_minor_mismatch"],
                "absent": ["nvcc_torch_cuda_mismatch", "hollow_install"], "exit_code": 1, "chosen": "sdpa"}
M["colab_t4"] = f

# 5. V100: old flash-attn (no paged KV), GPU unsupported
f = base("DGX-1, Tesla V100-SXM2-32GB", "3.10.14")
f["torch"] = torch("2.3.1+cu121", "12.1", abi=False, n=1)
f["gpus"] = [gpu(0, "Tesla V100-SXM2-32GB", "7.0", 32, "00000000:06:00.0")]
f["driver"] = {"version": "535.183.01", "cuda": "12.2"}
f["toolkit"] = toolkit("/usr/local/cuda", "12.1")
f["packages"]["flash-attn"] = pkg("2.5.6", ["flash_attn_2_cuda.cpython-310-x86_64-linux-gnu.so"])
f["packages"]["xformers"] = pkg("0.0.27", ["xformers/_C.so"],
                                probe=dict(OKPROBE, details={"has_cpp": True}),
                                cpp_lib={"version": {"cuda": 1201, "torch": "2.3.1+cu121", "python": "3.10.14"}})
f["_expect"] = {"ids": ["gpu_arch_unsupported", "flash_attn_too_old_paged_kv"],
                "absent": ["xformers_built_for_other_torch", "mixed_gpus"], "exit_code": 1, "chosen": "xformers"}
M["v100_old_flash_attn"] = f

# 6. A100 with runtime-only CUDA; FlashInfer without prebuilt kernels -> JIT would fail
f = base("A100 80GB, CUDA runtime image (no nvcc)", "3.10.12")
f["torch"] = torch("2.5.1+cu124", "12.4", abi=False)
f["gpus"] = [gpu(0, "NVIDIA A100-SXM4-80GB", "8.0", 80, "00000000:07:00.0")]
f["driver"] = {"version": "550.90.07", "cuda": "12.4"}
f["toolkit"] = toolkit("/usr/local/cuda", None, headers=())
f["pip_cuda"] = [{"name": "nvidia-cuda-runtime-cu12", "version": "12.4.127"}]
f["packages"]["flashinfer-python"] = pkg("0.2.5", [], location="/opt/venv/lib/python3.10/site-packages")
f["_expect"] = {"ids": ["runtime_only_cuda", "flashinfer_no_prebuilt", "build_sizing"],
                "absent": ["cuda_home_missing"], "exit_code": 1, "severity": {"flashinfer_no_prebuilt": "error"},
                "fix_contains": {"runtime_only_cuda": "cuda-toolkit-12-4", "flashinfer_no_prebuilt": "flashinfer-cubin==0.2.5"},
                "chosen": "sdpa"}  # FlashInfer imports but could neither load prebuilt kernels nor JIT them
M["a100_runtime_only"] = f

# 7. RTX 4090: cxx11abiTRUE flash-attn wheel on a cxx11abiFALSE torch
f = base("Workstation, RTX 4090", "3.10.12")
f["torch"] = torch("2.6.0+cu124", "12.4", abi=False)
f["gpus"] = [gpu(0, "NVIDIA GeForce RTX 4090", "8.9", 24, "00000000:01:00.0")]
f["driver"] = {"version": "560.35.03", "cuda": "12.6"}
f["toolkit"] = toolkit("/usr/local/cuda-12.4", "12.4", found_by="nvcc on PATH")
f["memory"] = {"total_gb": 62.7, "available_gb": 55.0}
f["cpu_count"] = 24
sym = "_ZN3c105ErrorC2ENS_14SourceLocationENSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE"
f["packages"]["flash-attn"] = pkg(
    "2.7.4.post1", ["flash_attn_2_cuda.cpython-310-x86_64-linux-gnu.so"],
    probe=fail(f"ImportError: /opt/venv/lib/python3.10/site-packages/flash_attn_2_cuda.cpython-310-x86_64-linux-gnu.so: undefined symbol: {sym}"),
    origin={"installer": "pip", "wheel": "flash_attn-2.7.4.post1+cu12torch2.6cxx11abiTRUE-cp310-cp310-linux_x86_64.whl"})
f["_expect"] = {"ids": ["abi_mismatch"], "absent": ["torch_version_skew", "undefined_symbol"], "exit_code": 1,
                "fix_contains": {"abi_mismatch": "flash_attn-2.8.3%2Bcu12torch2.6cxx11abiFALSE-cp310-cp310-linux_x86_64.whl"},  # the URL form (%2B)
                "chosen": "sdpa"}
M["rtx4090_abi"] = f

# 8. H100 whose nvcc (11.8) disagrees with torch (12.8); MAX_JOBS far too high for RAM
f = base("H100 PCIe, old system toolkit", "3.12.3")
f["torch"] = torch("2.7.1+cu128", "12.8", abi=True, arch=["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"])
f["gpus"] = [gpu(0, "NVIDIA H100 PCIe", "9.0", 80, "00000000:2A:00.0")]
f["driver"] = {"version": "570.124.06", "cuda": "12.8"}
f["toolkit"] = toolkit("/usr/local/cuda", "11.8", headers=("cuda.h", "cuda_runtime.h", "cuda_fp8.h"))
f["memory"] = {"total_gb": 64.0, "available_gb": 58.3}
f["cpu_count"] = 32
f["env"] = {"MAX_JOBS": "32", "TORCH_CUDA_ARCH_LIST": "9.0"}
f["_expect"] = {"ids": ["nvcc_torch_cuda_mismatch", "build_oom_risk", "flash_attn_archs_ignored"],
                "absent": ["nvcc_torch_cuda_minor_mismatch"], "exit_code": 1,
                "severity": {"nvcc_torch_cuda_mismatch": "error"},
                "fix_contains": {"build_oom_risk": 'FLASH_ATTN_CUDA_ARCHS="90"', "nvcc_torch_cuda_mismatch": "export CUDA_HOME=/usr/local/cuda-12.8"},
                "chosen": "sdpa"}
M["h100_nvcc_mismatch"] = f

# 9. Mixed GPUs: RTX 3090 + GTX 1080 Ti
f = base("Mixed GPUs: RTX 3090 + GTX 1080 Ti", "3.11.9")
f["torch"] = torch("2.6.0+cu124", "12.4", abi=False, n=2)
f["gpus"] = [gpu(0, "NVIDIA GeForce GTX 1080 Ti", "6.1", 11, "00000000:01:00.0"),
             gpu(1, "NVIDIA GeForce RTX 3090", "8.6", 24, "00000000:02:00.0")]
f["driver"] = {"version": "550.120", "cuda": "12.4"}
f["toolkit"] = toolkit("/usr/local/cuda", "12.4")
f["packages"]["flash-attn"] = pkg("2.7.4.post1", ["flash_attn_2_cuda.cpython-311-x86_64-linux-gnu.so"])
f["_expect"] = {"ids": ["mixed_gpus"], "absent": ["gpu_arch_unsupported"], "exit_code": 1,
                "fix_contains": {"mixed_gpus": "CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=1"}, "chosen": "flash_attn"}
M["mixed_3090_1080ti"] = f

# 10. xFormers built for another torch (PyPI 0.0.35 on torch 2.11+cu130): imports, no C++ ops
f = base("H100, torch 2.11+cu130, PyPI xFormers 0.0.35", "3.12.3")
f["torch"] = torch("2.11.0+cu130", "13.0", abi=True, arch=["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"])
f["gpus"] = [gpu(0, "NVIDIA H100 80GB HBM3", "9.0", 80, "00000000:19:00.0")]
f["driver"] = {"version": "580.82.07", "cuda": "13.0"}
f["toolkit"] = toolkit("/usr/local/cuda", "13.0")
xwarn = ("WARNING[XFORMERS]: xFormers can't load C++/CUDA extensions. xFormers was built for:\n"
         "    PyTorch 2.10.0+cu128 with CUDA 1208 (you have 2.11.0+cu130)\n"
         "    Python  3.10.19 (you have 3.12.3)\n")
f["packages"]["xformers"] = pkg("0.0.35", ["xformers/_C.so"], probe=dict(OKPROBE, stderr=xwarn, details={"has_cpp": False}),
                                cpp_lib={"version": {"cuda": 1208, "hip": None, "torch": "2.10.0+cu128", "python": "3.10.19"}})
f["_expect"] = {"ids": ["xformers_built_for_other_torch"], "absent": ["import_failed"], "exit_code": 1,
                "fix_contains": {"xformers_built_for_other_torch": "torch==2.11.0 --index-url https://download.pytorch.org/whl/cu130"},
                "chosen": "sdpa"}
M["h100_broken_xformers"] = f

# 11. Stale vLLM checkout: vllm_flash_attn is an empty namespace package
f = base("A100, editable vLLM checkout after git pull", "3.12.3")
f["torch"] = torch("2.6.0+cu124", "12.4", abi=False)
f["gpus"] = [gpu(0, "NVIDIA A100-SXM4-40GB", "8.0", 40, "00000000:07:00.0")]
f["driver"] = {"version": "550.90.07", "cuda": "12.4"}
f["toolkit"] = toolkit("/usr/local/cuda", "12.4")
f["packages"]["vllm"] = pkg("0.8.5.dev120+g1a2b3c4.cu124", ["vllm/_C.abi3.so"],
                            probe=fail("ImportError: cannot import name 'flash_attn_varlen_func' from 'vllm.vllm_flash_attn' (unknown location)"),
                            origin={"url": "file:///home/me/vllm", "editable": True}, location="/home/me/vllm",
                            vllm_flash_attn={"dir": True, "init": False, "compiled": []})
f["_expect"] = {"ids": ["vllm_fa_not_built"], "absent": ["hollow_install"], "exit_code": 1,
                "fix_contains": {"vllm_fa_not_built": "--no-build-isolation"}, "chosen": "sdpa"}
M["a100_stale_vllm"] = f

# 12. Old driver: 470 (CUDA 11.4) under a cu124 torch
f = base("AWS g5, A10G, old AMI driver", "3.10.12")
f["torch"] = torch("2.6.0+cu124", "12.4", abi=False, avail=False,
                   cuda_error="The NVIDIA driver on your system is too old (found version 11040).")
f["gpus"] = [gpu(0, "NVIDIA A10G", "8.6", 23, "00000000:00:1E.0")]
f["driver"] = {"version": "470.256.02", "cuda": "11.4"}
f["_expect"] = {"ids": ["driver_too_old", "torch_cuda_unavailable"], "exit_code": 1,
                "severity": {"driver_too_old": "error"}, "fix_contains": {"driver_too_old": "whl/cu118"}, "chosen": "sdpa"}
M["a10g_old_driver"] = f

# 13. CPU-only torch on an L4
f = base("GCP g2, NVIDIA L4, pip install torch from a CPU index", "3.11.9")
f["torch"] = torch("2.5.1+cpu", None, abi=False, avail=False)
f["gpus"] = [gpu(0, "NVIDIA L4", "8.9", 22, "00000000:00:03.0")]
f["driver"] = {"version": "550.90.07", "cuda": "12.4"}
f["_expect"] = {"ids": ["torch_cpu_only_with_gpu"], "absent": ["no_gpu"], "exit_code": 1,
                "fix_contains": {"torch_cpu_only_with_gpu": "whl/cu124"}, "chosen": "sdpa"}
M["l4_cpu_torch"] = f

# 14. Hollow flash-attn: RECORD has no compiled module
f = base("A100, interrupted source build", "3.10.12")
f["torch"] = torch("2.4.1+cu121", "12.1", abi=False)
f["gpus"] = [gpu(0, "NVIDIA A100-SXM4-80GB", "8.0", 80, "00000000:07:00.0")]
f["driver"] = {"version": "535.183.01", "cuda": "12.2"}
f["toolkit"] = toolkit("/usr/local/cuda", "12.1")
f["packages"]["flash-attn"] = pkg("2.6.3", [], probe=fail("ModuleNotFoundError: No module named 'flash_attn_2_cuda'"))
f["_expect"] = {"ids": ["hollow_install"], "exit_code": 1,
                "fix_contains": {"hollow_install": "flash_attn-2.8.3%2Bcu12torch2.4cxx11abiFALSE-cp310-cp310-linux_x86_64.whl"},  # the URL form (%2B)
                "chosen": "sdpa"}
M["a100_hollow_flash_attn"] = f

# 15. WSL2 with an RTX 3060, healthy apart from the WSL note
f = base("WSL2 Ubuntu 22.04, RTX 3060", "3.10.12")
f["os"]["release"] = "5.15.153.1-microsoft-standard-WSL2"
f["os"]["wsl"] = True
f["torch"] = torch("2.7.1+cu128", "12.8", abi=True, arch=["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"])
f["gpus"] = [gpu(0, "NVIDIA GeForce RTX 3060", "8.6", 12, "00000000:01:00.0")]
f["driver"] = {"version": "572.16", "cuda": "12.8"}
f["toolkit"] = toolkit("/usr/local/cuda-12.8", "12.8")
f["memory"] = {"total_gb": 15.6, "available_gb": 13.0}
f["cpu_count"] = 16
f["packages"]["flash-attn"] = pkg("2.8.3", ["flash_attn_2_cuda.cpython-310-x86_64-linux-gnu.so"])
f["_expect"] = {"ids": ["wsl"], "absent": ["driver_too_old", "build_oom_risk"], "exit_code": 0, "chosen": "flash_attn"}
M["wsl_rtx3060"] = f

# 16. FlashInfer version skew on an H100
f = base("H100 SXM, SGLang server", "3.12.3")
f["torch"] = torch("2.8.0+cu128", "12.8", abi=True, arch=["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"])
f["gpus"] = [gpu(0, "NVIDIA H100 80GB HBM3", "9.0", 80, "00000000:19:00.0")]
f["driver"] = {"version": "570.133.20", "cuda": "12.8"}
f["toolkit"] = toolkit("/usr/local/cuda", "12.8")
f["packages"]["flashinfer-python"] = pkg("0.3.1")
f["packages"]["flashinfer-cubin"] = pkg("0.3.0")
f["packages"]["flashinfer-jit-cache"] = pkg("0.3.1+cu128", ["flashinfer_jit_cache/jit_cache/x.so"])
f["_expect"] = {"ids": ["flashinfer_version_skew"], "absent": ["flashinfer_no_prebuilt"], "exit_code": 1,
                "fix_contains": {"flashinfer_version_skew": "flashinfer-cubin==0.3.1"}, "chosen": "flashinfer"}
M["h100_flashinfer_skew"] = f

# 17. RTX 5090 (sm120) with a torch that has no Blackwell kernels
f = base("RTX 5090, torch 2.6 cu124", "3.12.3")
f["torch"] = torch("2.6.0+cu124", "12.4", abi=False)
f["gpus"] = [gpu(0, "NVIDIA GeForce RTX 5090", "12.0", 32, "00000000:01:00.0")]
f["driver"] = {"version": "575.57.08", "cuda": "12.9"}
f["_expect"] = {"ids": ["gpu_arch_unsupported"], "exit_code": 1, "fix_contains": {"gpu_arch_unsupported": "whl/cu128"},
                "chosen": "sdpa"}
M["rtx5090_old_torch"] = f

# 18. Conda env whose old libstdc++ shadows the system one
f = base("conda env on Ubuntu 24.04, A100", "3.10.14")
f["python"]["prefix"] = "/home/me/miniconda3/envs/llm"
f["libstdcxx"] = {"libs": [{"path": "/home/me/miniconda3/envs/llm/lib/libstdc++.so.6", "max": "3.4.29", "versions": ["3.4.29"]},
                           {"path": "/lib/x86_64-linux-gnu/libstdc++.so.6", "max": "3.4.33", "versions": ["3.4.33"]}],
                  "max": "3.4.29"}
f["torch"] = torch("2.5.1+cu124", "12.4", abi=False)
f["gpus"] = [gpu(0, "NVIDIA A100-PCIE-40GB", "8.0", 40, "00000000:3B:00.0")]
f["driver"] = {"version": "550.90.07", "cuda": "12.4"}
f["toolkit"] = toolkit("/usr/local/cuda", "12.4")
f["packages"]["flash-attn"] = pkg("2.7.2.post1", ["flash_attn_2_cuda.cpython-310-x86_64-linux-gnu.so"], probe=fail(
    "ImportError: /home/me/miniconda3/envs/llm/lib/libstdc++.so.6: version `GLIBCXX_3.4.32' not found "
    "(required by /home/me/miniconda3/envs/llm/lib/python3.10/site-packages/flash_attn_2_cuda.cpython-310-x86_64-linux-gnu.so)"))
f["_expect"] = {"ids": ["glibcxx_too_old", "glibcxx_shadowed"], "exit_code": 1,
                "fix_contains": {"glibcxx_shadowed": "libstdcxx-ng"}, "chosen": "sdpa"}
M["conda_glibcxx"] = f

# 19. torch upgraded under a compiled flash-attn
f = base("A6000, torch upgraded after building flash-attn", "3.11.9")
f["torch"] = torch("2.6.0+cu124", "12.4", abi=False)
f["gpus"] = [gpu(0, "NVIDIA RTX A6000", "8.6", 48, "00000000:41:00.0")]
f["driver"] = {"version": "550.120", "cuda": "12.4"}
f["toolkit"] = toolkit("/usr/local/cuda", "12.4")
f["packages"]["flash-attn"] = pkg("2.7.0.post2", ["flash_attn_2_cuda.cpython-311-x86_64-linux-gnu.so"], probe=fail(
    "ImportError: /opt/venv/lib/python3.11/site-packages/flash_attn_2_cuda.cpython-311-x86_64-linux-gnu.so: undefined symbol: _ZN3c104cuda9SetDeviceEi"))
f["_expect"] = {"ids": ["torch_version_skew"], "absent": ["abi_mismatch"], "exit_code": 1,
                "fix_contains": {"torch_version_skew": "cu12torch2.6cxx11abiFALSE-cp311-cp311"}, "chosen": "sdpa"}
M["a6000_torch_skew"] = f

# 20. cu12 flash-attn wheel on a CUDA 13 torch: libcudart.so.12 missing
f = base("B200, torch 2.10+cu130", "3.12.3")
f["torch"] = torch("2.10.0+cu130", "13.0", abi=True, arch=["sm_80", "sm_90", "sm_100", "sm_120"])
f["gpus"] = [gpu(0, "NVIDIA B200", "10.0", 180, "00000000:1B:00.0")]
f["driver"] = {"version": "580.95.05", "cuda": "13.0"}
f["toolkit"] = toolkit("/usr/local/cuda", "13.0")
f["packages"]["flash-attn"] = pkg("2.8.3", ["flash_attn_2_cuda.cpython-312-x86_64-linux-gnu.so"], probe=fail(
    "ImportError: libcudart.so.12: cannot open shared object file: No such file or directory"))
f["_expect"] = {"ids": ["cuda_runtime_lib_missing"], "exit_code": 1,
                "fix_contains": {"cuda_runtime_lib_missing": "anyattn plan flash-attn"}, "chosen": "sdpa"}
M["b200_cudart12"] = f


if __name__ == "__main__":
    os.makedirs(HERE, exist_ok=True)
    for name, d in M.items():
        with open(os.path.join(HERE, name + ".json"), "w") as fh:
            json.dump(d, fh, indent=1, sort_keys=True)
            fh.write("\n")
    print(f"wrote {len(M)} fact sets to {HERE}")
