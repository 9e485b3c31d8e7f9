"""The explain signature table: ONE data table, most specific cause first.

Each entry:
  id     -- stable id (the fixed vocabulary of issue 4 §4, plus extensions appended at the end
            of VOCABULARY; never rename one)
  rules  -- the entry matches when ANY rule matches; a rule matches when every pattern in
            ``all`` is found and (if ``any`` is given) at least one pattern in ``any`` is found.
            Named groups in matching patterns become the extracted specifics.
  cause  -- a sentence; ``{name}`` placeholders are filled from extracted specifics and from
            this machine's facts (see explain.machine_context)
  fix    -- copy-paste commands (same placeholders); lines starting with "#" are comments.
  none   -- optional in a rule: the rule fails when any of these patterns is found (a torch
            "sm_120 is not compatible" warning makes "no kernel image" torch's problem, not the wheel's).
  group  -- optional: of the entries sharing a group only the first match is reported (one
            undefined symbol is ABI *or* version skew *or* something else, not all three).

Patterns are Python regexes compiled with re.IGNORECASE | re.MULTILINE unless ``case`` is set.
Order matters: the first matching entry is the most specific cause (an ``undefined symbol``
containing ``__cxx11`` is abi_mismatch before it could be torch_version_skew).
"""

from __future__ import annotations

VOCABULARY = (
    # fixed by issue 4 (never rename)
    "cuda_home_missing", "build_isolation", "wheel_tag_mismatch", "abi_mismatch",
    "torch_version_skew", "build_oom", "missing_cuda_headers", "nvcc_torch_cuda_mismatch",
    "gpu_arch_unsupported", "vllm_fa_not_built", "flashinfer_jit", "xformers_built_for_other_torch",
    "hollow_install", "glibcxx_too_old", "cuda_runtime_lib_missing",
    # extensions
    "driver_too_old", "undefined_symbol",
    # issue 11: the new stack and the split families
    "libcuda_missing", "python_headers_missing", "flash_attn_namespace_clash", "cute_dsl_mismatch",
    "flashinfer_version_skew", "rocm_cuda_wheel", "gpu_newer_than_wheel", "wrong_python",
    "cuda_runtime_too_old",
)

# Every header of the CUDA toolkit and of the CUDA libraries that ship headers separately (cuDNN,
# cuBLAS, cuSOLVER, cuSPARSE, cuRAND, cuFFT, NCCL, NVTX, NPP, nvJPEG, CUPTI...): one family, so a
# build that misses cusparse.h is recognised like one that misses cuda_fp8.h. CUTLASS/CuTe headers
# (cute/..., cutlass/...) are NOT toolkit headers (an empty git submodule): excluded on purpose.
_CUDA_HEADERS = (r"(?!cute/|cutlass/)(?:"
                 r"(?:cuda\w*|cu(?:blas|sparse|solver|rand|fft|pti|file|dnn|tensor)\w*|nccl\w*|nvrtc\w*|"
                 r"nvToolsExt\w*|nvtx3?/[\w/]+|nvjpeg\w*|npp\w*|nvml|nvperf\w*|cooperative_groups(?:/\w+)?|"
                 r"mma|sm_\d+_\w+|vector_types|device_launch_parameters|crt/\w+|thrust/[\w/]+|cub/[\w/]+|"
                 r"cuda/[\w/]+|nv/\w+)\.(?:h|hpp|cuh)"
                 r"|cuda/std/\w+|cuda/barrier|cuda/pipeline|nv/target)")
# The header as compilers print it: gcc/clang/nvcc `fatal error: X: No such file`, MSVC
# `fatal error C1083: Cannot open include file: 'X'` (any locale), EDG `cannot open source file "X"`,
# tcc `error: include file 'X' not found`. Only the English tokens are relied on.
_HDR_LINE = (r"(?:fatal error|Schwerwiegender Fehler|erreur fatale|致命错误|error)(?: C\d{4})?:"
             r"(?:[^\n]{0,60}?[\s'\"“:])?(?P<header>" + _CUDA_HEADERS + r")['\"”]?\W{0,3}"
             r"(?::|No such|not found|没有|Datei|Aucun)")
_HDR_EDG = r"cannot open source file \"(?P<header>" + _CUDA_HEADERS + r")\""
_BUILD_CONTEXT = (r"metadata-generation-failed|Getting requirements to build|setup\.py|egg_info|"
                  r"subprocess-exited-with-error|build_meta|pyproject|Preparing metadata|"
                  r"Building wheel|get_requires_for_build|pip install|uv pip|Failed to build|"
                  r"The build backend returned an error|Call to `setuptools|build_wheel|"
                  r"doesn't declare it as a build dependency|uv sync|uv add")
# Evidence of a GPU newer than most binaries' arch lists (Blackwell: sm100/sm103/sm110/sm120/sm121).
_NEW_GPU = (r"sm_?1[0-2]\d|compute capability:? 1[0-2]\.\d|capability \(1[0-2], \d\)|RTX 50\d0|RTX 5000 series|"
            r"\b50[6-9]0\b|\bB[12]00\b|\bGB[12]0\d?\b|GB10\b|Blackwell|RTX PRO 6000|DGX Spark|Thor")
# ROCm markers: a ROCm torch / an AMD GPU
_ROCM = r"\+rocm\d|torch\.version\.hip|ROCm|/opt/rocm|\bhipcc\b|\bgfx9\d\w|\bgfx1[01]\d\w|Radeon|Instinct|MI[123]\d\dX?\b"

SIGNATURES = [
    {
        "id": "flashinfer_version_skew",
        "title": "FlashInfer packages of different versions (flashinfer-cubin / flashinfer-jit-cache vs flashinfer-python)",
        "rules": [
            {"any": [r"(?P<pkg>flashinfer-(?:cubin|jit-cache)) version \((?P<other_version>[^)]+)\) does not match flashinfer version \((?P<fi_version>[^)]+)\)",
                     r"(?P<pkg>flashinfer-(?:cubin|jit-cache)) \((?P<other_version>[^)]+)\) != flashinfer \((?P<fi_version>[^)]+)\)",
                     r"(?P<pkg>flashinfer-(?:cubin|jit-cache))\s*:\s*(?P<other_version>\S+)\s+\W*\s*MISMATCH vs flashinfer-python==(?P<fi_version>\S+)"]},
        ],
        "cause": ("{pkg} {other_version} is installed beside flashinfer {fi_version}: FlashInfer refuses prebuilt kernels of "
                  "another release (its import-time version check). This happens when a base image or an older install left "
                  "{pkg} behind while flashinfer-python was upgraded (PyPI does not always publish every version of both)."),
        "fix": ["# make them equal (the version of flashinfer-python wins):",
                "{pip} install --no-deps 'flashinfer-cubin=={fi_version_public}'",
                "{pip} install --no-deps 'flashinfer-jit-cache=={fi_version_public}' --index-url https://flashinfer.ai/whl/{cu_tag}",
                "# no matching cubin published? remove it: FlashInfer then downloads/JIT-compiles the kernels it needs",
                "{pip} uninstall -y {pkg}",
                "anyattn plan flashinfer"],
    },
    {
        "id": "cute_dsl_mismatch",
        "title": "The CuTe DSL (nvidia-cutlass-dsl) flavour or version lacks what the kernel calls",
        "rules": [
            {"any": [r"No module named '(?P<module>cutlass\.(?:cute|_mlir|base_dsl|cutlass_dsl|pipeline|utils)[\w.]*)'",
                     r"No (?:such )?module(?: named)? [`'](?P<module>cutlass\.[\w.]+)[`']",
                     r"undefined symbol: (?P<symbol>mlir\w+)",
                     r"No module named '(?P<module>tvm_ffi|quack|cuda\.bindings|cuda\.pathfinder)'"]},
            {"all": [r"No module named '(?P<module>cutlass)'"],
             "any": [r"nvidia-cutlass-dsl|CuTe ?DSL|cutlass\.cute|flash_attn\.cute|cute\.kernel"]},
        ],
        "cause": ("{module}{symbol} is missing: the installed CuTe DSL is incomplete or of another flavour/version than the "
                  "kernel was written for. nvidia-cutlass-dsl is a meta-package: its Python and MLIR pieces live in "
                  "nvidia-cutlass-dsl-libs-base / -libs-core (CUDA 12 flavour by default, the CUDA 13 flavour is an extra, "
                  "e.g. flash-attn-4[cu13]); `cutlass._mlir` comes from the package's dsl_packages directory, which is put on "
                  "sys.path by a .pth file that `pip install --target` and some tools skip; module paths moved between DSL "
                  "releases (cutlass.utils.ampere_utils left in 4.3)."),
        "fix": ["# reinstall the DSL with all its pieces, in the flavour of this driver/torch (see `anyattn plan flash-attn-4`):",
                "{pip} install --force-reinstall '{cute_dsl_requirement}'",
                "{pip} show nvidia-cutlass-dsl nvidia-cutlass-dsl-libs-base nvidia-cutlass-dsl-libs-core   # all present, same version",
                "python -c \"import cutlass, cutlass.cute; print(cutlass.__file__)\"",
                "# installed with --target? add its dsl_packages dir (the skipped .pth did this):",
                "export PYTHONPATH={dsl_packages_dir}:$PYTHONPATH"],
    },
    {
        "id": "flash_attn_namespace_clash",
        "title": "FlashAttention-4 and flash-attn 2 both own the `flash_attn` package: one hides the other",
        "rules": [
            {"any": [r"No module named '(?P<module>flash_attn\.cute(?:\.\w+)*)'",
                     r"cannot import name '(?P<name>\w+)' from '(?P<module>flash_attn\.cute(?:\.\w+)*)'"]},
            {"all": [r"flash[-_]attn[-_]4|flash_attn\.cute|flash-attn-cute"],
             "any": [r"No module named '(?P<module>flash_attn_2_cuda)'",
                     r"cannot import name '(?P<name>flash_attn_(?:varlen_)?func)' from '(?P<module>flash_attn)'"]},
        ],
        "cause": ("{module} is not where Python looks: flash-attn-4 installs flash_attn/cute/ inside the same `flash_attn` "
                  "package as flash-attn 2, so installing (or upgrading) one overwrites or shadows the other -- a flash-attn "
                  "2.x with no cute/ directory, a stub cute/ left by flash-attn 2, or a user-site copy earlier on sys.path."),
        "fix": ["# see which flash_attn is imported and which distributions claim it:",
                "python -c \"import flash_attn, os; print(flash_attn.__file__, os.listdir(os.path.dirname(flash_attn.__file__)))\"",
                "{pip} show -f flash-attn flash-attn-4 | grep -E '^(Name|Version|Location)'",
                "# keep FA4 working: install flash-attn 2 first (if you need it), then FA4 last:",
                "{pip} install --force-reinstall --no-deps flash-attn-4",
                "# anyattn uses FA4 and flash-attn 2 only when each one's own module is present (flash_attn.cute / flash_attn_2_cuda)"],
    },
    {
        "id": "rocm_cuda_wheel",
        "title": "A CUDA build of a package on a ROCm (AMD) machine",
        "rules": [
            {"all": [_ROCM],
             "any": [r"(?P<lib>libcudart\.so(?:\.\d+)*|libcuda\.so(?:\.\d+)*|libcublas\w*\.so(?:\.\d+)*): cannot open shared object file",
                     r"(?P<wheel>\S+\+cu\d+\S*\.whl)", r"Found no NVIDIA driver on your system",
                     r"CUDA_HOME environment variable is not set", r"No CUDA GPUs are available"]},
        ],
        "cause": ("This is a ROCm (AMD) environment but the package is a CUDA build ({lib}{wheel}): CUDA wheels (+cuXY, "
                  "flash_attn_2_cuda, libcudart) cannot load on ROCm. ROCm needs the ROCm builds: torch from the rocm index, "
                  "flash-attn built from source with ROCm (its CK / Triton backends), FlashInfer and FA4 have no ROCm support."),
        "fix": ["{pip} uninstall -y flash-attn flash-attn-4 flashinfer-python xformers",
                "{pip} install torch --index-url https://download.pytorch.org/whl/rocm6.4   # a ROCm torch, if not already",
                "# flash-attn on ROCm (MI200/MI300, RDNA3 via Triton): build it, no CUDA wheel applies",
                "FLASH_ATTENTION_TRITON_AMD_ENABLE=TRUE {pip} install flash-attn --no-build-isolation",
                "# or nothing to install: anyattn's Triton kernels and PyTorch SDPA run on ROCm"],
    },
    {
        "id": "vllm_fa_not_built",
        "title": "vLLM's compiled extensions (vllm._C, the vendored flash-attention vllm_flash_attn) are missing, empty or stale",
        "rules": [
            {"any": [r"cannot import name '(?P<name>\w+)' from 'vllm\.vllm_flash_attn'",
                     r"No module named '(?P<module>vllm\.vllm_flash_attn(?:\.\w+)?|vllm\._vllm_fa\d_C)'",
                     r"(?P<module>vllm\.vllm_flash_attn)\S* \(unknown location\)",
                     r"No module named '(?P<module>vllm\._C|vllm\._moe_C|vllm\._flashmla_C)'",
                     r"(?P<module>vllm_flash_attn)\S*: cannot open shared object file",
                     r"(?P<module>vllm/vllm_flash_attn/_vllm_fa\d_C\S*\.so): undefined symbol"]},
        ],
        "cause": ("{module_or_name} is missing or stale: vLLM's C++/CUDA extensions (vllm._C, vllm/vllm_flash_attn/"
                  "_vllm_fa*_C) were never built for this checkout, or the checkout moved on after the build (an empty "
                  "namespace package imports but has none of its functions{name_clause}), or the installed wheel is not "
                  "one for this Python / platform / CUDA."),
        "fix": ["# editable/source checkout: rebuild the compiled parts (reuses a prebuilt wheel's kernels when "
                "your Python files match a release)",
                "cd /path/to/vllm && git pull && {pip} install -e . --no-build-isolation -v",
                "# or, without local changes, use a released wheel that contains the kernels:",
                "{pip} install --force-reinstall vllm"],
    },
    {
        "id": "xformers_built_for_other_torch",
        "title": "xFormers was built for another torch / CUDA / Python",
        "rules": [
            {"any": [r"xFormers was built for:\s*(?:\n\s*)?PyTorch (?P<built_torch>\S+) with CUDA (?P<built_cuda>\S+) \(you have (?P<have_torch>[^)]+)\)",
                     r"Python\s+(?P<built_python>\d+\.\d+\.\d+) \(you have (?P<have_python>\d+\.\d+\.\d+)\)",
                     r"xFormers can't load C\+\+/CUDA extensions",
                     r"xFormers wasn't build with CUDA support",
                     r"xformers\._C\w* is not available|Operator wasn't built - see `python -m xformers\.info`"]},
            {"all": [r"xformers"], "any": [r"No operator found for `?memory_efficient_attention_\w+`?"]},
        ],
        "cause": ("xFormers' C++/CUDA library was compiled against torch {built_torch} (CUDA {built_cuda}) but this "
                  "environment has torch {have_torch}; its ops fail to load and memory_efficient_attention "
                  "finds no operator."),
        "fix": ["# install the xFormers build made for this torch from the PyTorch index (keeps torch pinned):",
                "{pip} install -U xformers torch=={torch_version_public} --index-url https://download.pytorch.org/whl/{cu_tag}",
                "# or uninstall it: anyattn uses PyTorch SDPA / other backends without it",
                "{pip} uninstall -y xformers"],
    },
    {
        "id": "flashinfer_jit",
        "title": "FlashInfer fell back to JIT compilation and the compile failed",
        "rules": [
            {"all": [r"flashinfer"],
             "any": [_HDR_LINE, r"\.cache/flashinfer\S*[\s\S]{0,400}?(?:CalledProcessError|returned non-zero exit status)",
                     r"(?:CalledProcessError|returned non-zero exit status)[\s\S]{0,400}?\.cache/flashinfer",
                     r"Prebuilt kernels not found", r"Ninja build failed", r"Error building extension",
                     r"ninja: build stopped", r"nvcc['\"]?: (?:command )?not found",
                     r"No such file or directory: '[^']*nvcc'", r"CUDA_HOME environment variable is not set",
                     r"Could not find nvcc"]},
        ],
        "cause": ("FlashInfer found no prebuilt kernel for this GPU/version (flashinfer-cubin / flashinfer-jit-cache "
                  "missing or mismatched) and compiled one at run time with nvcc, which needs a full CUDA toolkit "
                  "with headers{header_clause}."),
        "fix": ["# prebuilt kernels, no compiler needed (versions must equal flashinfer-python's):",
                "{pip} install flashinfer-cubin=={flashinfer_version}",
                "{pip} install flashinfer-jit-cache=={flashinfer_version} --index-url https://flashinfer.ai/whl/{cu_tag}",
                "# or give the JIT a complete toolkit:",
                "export CUDA_HOME={cuda_home_suggest} PATH={cuda_home_suggest}/bin:$PATH",
                "ls $CUDA_HOME/include/cuda_fp8.h"],
    },
    {
        "id": "abi_mismatch",
        "group": "undefined_symbol",
        "title": "C++ ABI mismatch (_GLIBCXX_USE_CXX11_ABI) between an extension and torch",
        "rules": [
            {"any": [r"undefined symbol: (?P<symbol>_Z\w*cxx11\w*)"]},
            {"any": [r"undefined symbol: (?P<symbol>_Z\w*(?:KSs|RSs|PSs|ESs|ISs|_Ss)\w*)"]},
        ],
        "cause": ("The undefined symbol {symbol} uses the {symbol_abi} std::string ABI, which the torch it loaded "
                  "against does not export: the extension was compiled (or its wheel chosen) with the other C++ ABI "
                  "(_GLIBCXX_USE_CXX11_ABI). {abi_relation}"),
        "fix": ["# reinstall the wheel built with torch's ABI (cxx11abi{abi}); flash-attn for example:",
                "{pip} install --no-deps --force-reinstall {fa_wheel_url}",
                "# or build from source against this torch (ABI is taken from torch):",
                "{pip} uninstall -y flash-attn && MAX_JOBS={max_jobs} {pip} install flash-attn --no-build-isolation --no-cache-dir"],
    },
    {
        "id": "glibcxx_too_old",
        "title": "The C/C++ runtime (libstdc++ / glibc) is older than the binary needs",
        "rules": [
            {"any": [r"version [`'\"](?P<needed>GLIBCXX_[\d.]+|CXXABI_[\d.]+)['\"] not found(?: \(required by (?P<binary>[^)]+)\))?",
                     r"version [`'\"](?P<needed_glibc>GLIBC_[\d.]+)['\"] not found(?: \(required by (?P<binary>[^)]+)\))?"]},
        ],
        "cause": ("{binary_or_ext} needs {needed}{needed_glibc} but the loaded runtime provides at most GLIBCXX_{glibcxx_max} / "
                  "glibc {glibc}: it was built with a newer compiler or distro than this one."),
        "fix": ["# a newer libstdc++ into the environment (conda) or the system:",
                "conda install -c conda-forge 'libstdcxx-ng>=12'   # or: sudo apt-get install --only-upgrade libstdc++6",
                "# if an older libstdc++ shadows the system one, see which is loaded:",
                "python -c \"import ctypes,subprocess;print(subprocess.run(['grep','libstdc','/proc/self/maps'],capture_output=True,text=True).stdout)\"",
                "# GLIBC_* missing means the OS is too old for this wheel: use a wheel built for manylinux2014/older glibc or a newer base image"],
    },
    {
        "id": "libcuda_missing",
        "title": "The CUDA *driver* library (libcuda.so) is not found at JIT / import time",
        "rules": [
            {"any": [r"libcuda\.so cannot found", r"cannot find -lcuda\b",
                     r"(?P<lib>libcuda\.so(?:\.1)?): cannot open shared object file",
                     r"Could not find (?:the CUDA driver library|libcuda)", r"Failed to (?:find|load) libcuda",
                     r"(?P<lib>nvcuda\.dll) (?:could not|not) (?:be )?(?:found|loaded)"]},
        ],
        "cause": ("libcuda.so comes with the NVIDIA *driver*, not with CUDA wheels or the toolkit: Triton's launcher and the "
                  "CuTe DSL (FlashAttention-4) link or dlopen it when they JIT-compile. It is missing, not on the loader path, "
                  "or only libcuda.so.1 exists (no unversioned libcuda.so symlink, which Triton's linker step needs): "
                  "containers without --gpus / the NVIDIA container toolkit, WSL (it lives in /usr/lib/wsl/lib), or a "
                  "driver installed without its dev symlink. The CUDA *runtime* (libcudart) is a different library."),
        "fix": ["ldconfig -p | grep libcuda     # where the driver library is",
                "# only libcuda.so.1? give Triton the unversioned name (or point it at the directory):",
                "export TRITON_LIBCUDA_PATH=$(dirname $(ldconfig -p | awk '/libcuda.so.1/{print $NF; exit}'))",
                "# WSL: export LD_LIBRARY_PATH=/usr/lib/wsl/lib:$LD_LIBRARY_PATH",
                "# docker: run with --gpus all (NVIDIA container toolkit) so the driver is mounted",
                "nvidia-smi   # must work first"],
    },
    {
        "id": "python_headers_missing",
        "title": "Python.h (the Python development headers) is missing when a launcher or extension is compiled",
        "rules": [
            {"any": [r"(?:fatal error|error)(?: C\d{4})?:[^\n]{0,60}?['\"“]?(?P<header>Python\.h|pyconfig\.h)['\"”]?\W{0,3}(?::|No such|not found|没有)",
                     r"include file '(?P<header>Python\.h|pyconfig\.h)' not found",
                     r"cannot open source file \"(?P<header>Python\.h)\""]},
        ],
        "cause": ("{header} is not installed for this Python {python_version}: Triton compiles a small C launcher "
                  "(cuda_utils.c / main.c) at first use, and C extensions need the headers too. Distro Pythons ship them in "
                  "pythonX.Y-dev / python3-devel; embedded (ComfyUI portable), some uv-managed and conda-less Windows "
                  "Pythons have none, or Triton cannot find the Python libs."),
        "fix": ["sudo apt-get install python{python_mm}-dev     # Debian/Ubuntu; Fedora/RHEL: sudo dnf install python3-devel",
                "python -c \"import sysconfig; print(sysconfig.get_paths()['include'])\"   # must contain Python.h",
                "# Windows embedded Python: copy the include/ and libs/ folders of the same CPython version next to python.exe",
                "# uv: use a managed Python that ships headers: uv python install {python_mm} && uv venv --python {python_mm}"],
    },
    {
        "id": "cuda_runtime_lib_missing",
        "title": "A CUDA runtime library cannot be found",
        "rules": [
            {"any": [r"(?P<lib>lib(?:cudart|cublas|cublasLt|cudnn\w*|nvrtc|nvrtc-builtins|cusparse|cufft|curand|cusolver|nccl|nvJitLink|nvToolsExt|cupti|cuda|c10_cuda|torch_cuda)\.so(?:\.[\d.]+)?): cannot open shared object file"]},
        ],
        "cause": ("{lib} is not on the loader path: {lib_reason}"),
        "fix": ["{lib_fix}"],
    },
    {
        "id": "driver_too_old",
        "title": "The NVIDIA driver is older than the CUDA runtime needs",
        "rules": [
            {"any": [r"CUDA driver version is insufficient for CUDA runtime version",
                     r"The NVIDIA driver on your system is too old \(found version (?P<driver_cuda>\d+)\)",
                     r"cudaErrorInsufficientDriver",
                     # JIT-compiled kernels (Triton, CuTe DSL / FA4, FlashInfer) carry PTX newer than the driver
                     r"(?P<ptx>the provided PTX was compiled with an unsupported toolchain|CUDA_ERROR_UNSUPPORTED_PTX_VERSION)"]},
            {"any": [r"undefined symbol: (?P<symbol>cu(?:TensorMap|Launch|Mem|Ctx|Stream|Device|Graph|Library|Kernel|Module|Get|Func|Event|Occupancy|Coredump|Multicast|Green)\w*)"]},
        ],
        "cause": ("{symbol_clause}The driver supports CUDA up to {driver_cuda_or_fact} but torch/the extension uses CUDA {torch_cuda}; "
                  "a CUDA {torch_cuda_major}.x runtime needs driver >= {min_driver}."),
        "fix": ["# upgrade the driver (>= {min_driver}), or install a torch built for an older CUDA:",
                "{pip} install torch --index-url https://download.pytorch.org/whl/cu{driver_cuda_tag}"],
    },
    {
        "id": "torch_version_skew",
        "group": "undefined_symbol",
        "title": "The extension was built against a different torch version",
        "rules": [
            {"any": [r"undefined symbol: (?P<symbol>_ZN?K?(?:3c10|2at|5torch|6caffe2)\w*)"]},
            # torch >= 1.13 merged these into libtorch_cuda.so: the binary was built against an older torch
            {"any": [r"(?P<lib>libtorch_cuda_cpp\.so|libtorch_cuda_cu\.so): cannot open shared object file"]},
        ],
        "cause": ("{skew_what} is missing from torch {torch_version}: the binary was compiled "
                  "against another torch release (C++ symbols change between torch minor versions)."),
        "fix": ["# install the wheel made for torch {torch_mm} (flash-attn for example):",
                "{pip} install --no-deps --force-reinstall {fa_wheel_url}",
                "# or rebuild against this torch:",
                "MAX_JOBS={max_jobs} {pip} install --no-build-isolation --no-cache-dir --force-reinstall flash-attn"],
    },
    {
        "id": "wrong_python",
        "group": "undefined_symbol",
        "title": "A binary built for another Python (a Python C-API symbol is missing)",
        "rules": [
            {"any": [r"undefined symbol: (?P<symbol>_?_?Py[A-Z]\w*)",
                     r"module compiled against (?:API|ABI) version \S+ but this version of numpy is \S+",
                     r"Python version mismatch: module was compiled for Python (?P<built_python>[\d.]+)"]},
        ],
        "cause": ("{symbol}{built_python} belongs to the Python C API: the extension (or torch itself) was built for another "
                  "Python version or build than the interpreter loading it (this one is Python {python_version}); wheel "
                  "tags like cp310 must equal the interpreter's, and some patch releases changed the ABI."),
        "fix": ["python -c \"import sys; print(sys.version)\"   # the interpreter that fails",
                "# reinstall the binary for this interpreter (its wheel tag must be {cp}):",
                "{pip} install --force-reinstall --no-cache-dir <the package>",
                "anyattn plan flash-attn"],
    },
    {
        "id": "cuda_runtime_too_old",
        "group": "undefined_symbol",
        "title": "A CUDA runtime library older than the binary was built against is loaded",
        "rules": [
            {"any": [r"undefined symbol: (?P<symbol>(?:cuda|nccl|cublas\w*|cudnn|cusparse|cusolver|cufft|curand|nvrtc|nvJitLink)[A-Z_]\w*)(?:, version (?P<lib>\S+))?"]},
        ],
        "cause": ("{symbol} is missing from the loaded {lib_or_cuda}: a CUDA library older than the one the binary was built "
                  "against is found first -- typically a system /usr/local/cuda/lib64 on LD_LIBRARY_PATH shadowing the newer "
                  "nvidia-* pip libraries that torch {torch_version} (CUDA {torch_cuda}) brings."),
        "fix": ["python -c \"import torch; print(torch.version.cuda)\"; echo $LD_LIBRARY_PATH",
                "# let torch load its own CUDA libraries: drop the older toolkit from the path",
                "export LD_LIBRARY_PATH=$(echo $LD_LIBRARY_PATH | tr ':' '\\n' | grep -v '/cuda' | paste -sd:)",
                "{pip} install --force-reinstall 'nvidia-cuda-runtime-cu{torch_cuda_major}' 'nvidia-nccl-cu{torch_cuda_major}'   # if the pip libraries are stale"],
    },
    {
        "id": "hollow_install",
        "title": "The package is installed without its compiled module",
        "rules": [
            {"any": [r"No module named '(?P<module>flash_attn_2_cuda|flash_attn_cuda|flash_attn_3_cuda|flash_attn_3\._C|"
                     r"xformers\._C\w*|flashinfer\._kernels|vllm\._C|sgl_kernel\.\w+|\w+_cuda)'",
                     r"cannot import name '(?P<name>\w+)' from '(?P<module>flash_attn|flashinfer|xformers)' \(unknown location\)"]},
        ],
        "cause": ("{module} is missing: the package's Python files are installed but its compiled extension is not "
                  "(a failed or interrupted build, a source install that skipped the CUDA build, or a wheel for "
                  "another platform)."),
        "fix": ["{pip} uninstall -y {dist_guess}",
                "{pip} install --no-deps --force-reinstall {fa_wheel_url}",
                "# or build it (needs nvcc): MAX_JOBS={max_jobs} {pip} install --no-build-isolation --no-cache-dir {dist_guess}"],
    },
    {
        "id": "gpu_newer_than_wheel",
        "group": "gpu_arch",
        "title": "The GPU is newer than the architectures the binary was compiled for",
        "rules": [
            {"all": [r"no kernel image is available for execution on the device"],
             "any": [r"(?P<new_gpu>" + _NEW_GPU + r")"],
             "none": [r"sm_\d+a? is not compatible with the current PyTorch installation"]},
        ],
        "cause": ("The binary has no kernel for this GPU ({new_gpu_or_fact}): Blackwell GPUs (sm100 / sm120) are newer than "
                  "the CUDA architectures the wheel (or your own build without FLASH_ATTN_CUDA_ARCHS / TORCH_CUDA_ARCH_LIST "
                  "covering them) was compiled for; SASS of older families does not run on them and no PTX was embedded."),
        "fix": ["# nothing to build: what already runs here on this GPU --",
                "anyattn doctor     # anyattn's Triton kernels, cuDNN attention through torch, FlashAttention-4 (sm80..sm12x)",
                "{pip} install '{cute_dsl_requirement}'   # prebuilt, JIT-compiled for this GPU at first use (see `anyattn plan flash-attn-4`)",
                "# or rebuild the package for this architecture (CUDA >= 12.8 needed for sm120):",
                "FLASH_ATTN_CUDA_ARCHS=\"{archs}\" TORCH_CUDA_ARCH_LIST=\"{arch_list}\" {pip} install --no-build-isolation --no-cache-dir --force-reinstall <the package>"],
    },
    {
        "id": "gpu_arch_unsupported",
        "group": "gpu_arch",
        "title": "The GPU architecture is not supported by this kernel or binary",
        "rules": [
            {"any": [r"FlashAttention only supports (?P<need>Ampere) GPUs or newer",
                     r"FlashAttention(?:-?3| 3)? (?:only )?supports? (?:only )?(?P<need>Hopper)",
                     r"sm_(?P<sm>\d+a?) is not compatible with the current PyTorch installation",
                     r"Unsupported gpu architecture '(?P<arch>compute_\d+a?)'",
                     r"(?:requires|supports only) (?:compute capability|sm_?)\s*>?=?\s*(?P<need_sm>\d+(?:\.\d)?)"]},
            {"any": [r"no kernel image is available for execution on the device"]},
        ],
        "cause": ("This GPU ({gpu_names}, compute capability {gpu_ccs}) is not one the binary has kernels for{need_clause}. "
                  "FlashAttention-2 needs sm80+ (Ampere, Ada, Hopper, Blackwell), FlashAttention-3 needs sm90."),
        "fix": ["# nothing to install: anyattn falls back to a backend that runs here",
                "anyattn doctor",
                "# with mixed GPUs, expose only supported ones (by PCI bus id order):",
                "export CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES={supported_gpu_indices}"],
    },
    {
        "id": "nvcc_torch_cuda_mismatch",
        "title": "nvcc's CUDA version differs from the one torch was built with",
        "rules": [
            {"any": [r"The detected CUDA version \((?P<nvcc>[\d.]+)\) mismatches the version that was used to compile\s+PyTorch \((?P<torch_cuda_log>[\d.]+)\)",
                     r"The detected CUDA version \((?P<nvcc_minor>[\d.]+)\) has a minor version mismatch"]},
        ],
        "cause": ("The build uses nvcc {nvcc}{nvcc_minor} from CUDA_HOME but torch was built with CUDA {torch_cuda_log_or_fact}; "
                  "torch.utils.cpp_extension refuses a different major version."),
        "fix": ["# point CUDA_HOME at a toolkit whose major version equals torch's:",
                "export CUDA_HOME=/usr/local/cuda-{torch_cuda} PATH=/usr/local/cuda-{torch_cuda}/bin:$PATH",
                "# no such toolkit? get nvcc {torch_cuda_major}.x from pip:",
                "{pip} install '{pip_nvcc_pkg}=={torch_cuda}.*'",
                "# or install torch built for your nvcc:",
                "{pip} install torch --index-url https://download.pytorch.org/whl/{nvcc_cu_tag}"],
    },
    {
        "id": "missing_cuda_headers",
        "title": "CUDA toolkit headers are missing",
        "rules": [
            # any locale: "No such file or directory", "没有那个文件或目录", "Datei oder Verzeichnis nicht gefunden"
            {"any": [_HDR_LINE, _HDR_EDG]},
        ],
        "cause": ("{header} is not in the toolkit the build uses (CUDA_HOME={cuda_home}): {header_reason}"),
        "fix": ["export CUDA_HOME={cuda_home_suggest} PATH={cuda_home_suggest}/bin:$PATH",
                "ls $CUDA_HOME/include/{header}",
                "# no full toolkit? install one matching torch's CUDA {torch_cuda}:",
                "{header_install}"],
    },
    {
        "id": "cuda_home_missing",
        "title": "No CUDA toolkit (nvcc) for the build: CUDA_HOME unset or runtime-only CUDA",
        "rules": [
            {"any": [r"CUDA_HOME environment variable is not set",
                     r"(?:^|/|\s)nvcc['\"]?: (?:command )?not found",
                     r"No such file or directory: '(?P<path>[^']*nvcc)'",
                     r"Could not find nvcc|nvcc was not found|Cannot find CUDA_HOME|CUDA_HOME is not set"]},
            {"all": [r"unsupported operand type\(s\) for \+: 'NoneType' and 'str'"],
             "any": [r"bare_metal|nvcc|cuda_dir|CUDA_HOME"]},
        ],
        "cause": ("The build needs nvcc but found none: CUDA_HOME is unset (or wrong) and no nvcc is on PATH. "
                  "The CUDA *runtime* (what torch wheels and `cuda-toolkit`-less images ship) has no compiler; "
                  "a *devel* toolkit has nvcc and headers."),
        "fix": ["{cuda_home_fix}"],
    },
    {
        "id": "build_isolation",
        "title": "Build isolation hid a build dependency (packaging / torch / ninja ...)",
        "rules": [
            {"all": [r"No module named '(?P<module>packaging|torch|wheel|psutil|setuptools|ninja|numpy)'"],
             "any": [_BUILD_CONTEXT]},
            {"any": [r"`(?P<dist>[\w.-]+)@[\w.+-]+` depends on `(?P<module>\w+)`, but doesn't declare it as a build dependency"]},
        ],
        "cause": ("pip built the package in an isolated environment that lacks {module}: flash-attn's setup.py imports "
                  "packaging and torch at metadata time but does not declare them as build requirements."),
        "fix": ["{pip} install packaging ninja psutil wheel setuptools",
                "MAX_JOBS={max_jobs} {pip} install flash-attn --no-build-isolation",
                "# uv: uv pip install torch packaging ninja && uv pip install flash-attn --no-build-isolation",
                "#     (pyproject: [tool.uv] no-build-isolation-package = [\"flash-attn\"])",
                "# better, nothing to build: anyattn plan flash-attn"],
    },
    {
        "id": "build_oom",
        "title": "The compiler was killed: out of memory during the build",
        "rules": [
            # gcc/clang in any locale print the English tail: "signal terminated program cc1plus"
            {"any": [r"(?:Killed )?signal terminated program (?P<prog>cc1plus|cc1|cicc|ptxas|nvcc|as|ld|\w+)",
                     r"died due to signal 9", r"virtual memory exhausted", r"ld terminated with signal 9",
                     r"cicc.*(?:out of memory|bad_alloc)", r"nvcc error\s*:\s*'(?P<prog>\w+)' died"]},
            {"all": [r"^\s*Killed\s*$|\bexit (?:code|status):? ?137\b|\bsignal 9\b|SIGKILL|"
                     r"returned non-zero exit status -9\b|\berror 137\b|OOMKilled"],
             "any": [r"ninja|nvcc|cc1plus|cicc|Building wheel|setup\.py|pip install|build_ext|make(?:\[\d+\])?:|"
                     r"docker build|RUN |Dockerfile|cmake|uv pip|Compiling objects"]},
        ],
        "cause": ("The kernel's OOM killer stopped the compiler: each nvcc job of flash-attn can take ~{gb_per_job} GB; "
                  "{jobs_clause}"),
        "fix": ["MAX_JOBS={max_jobs} NVCC_THREADS={nvcc_threads} FLASH_ATTN_CUDA_ARCHS=\"{archs}\" "
                "{pip} install flash-attn --no-build-isolation --no-cache-dir",
                "# better: a prebuilt wheel (seconds instead of an hour):",
                "anyattn plan flash-attn"],
    },
    {
        "id": "wheel_tag_mismatch",
        "title": "The wheel's tags do not match this platform / Python",
        "rules": [
            {"any": [r"(?P<wheel>[^\s/'\"=]+\.whl) is not a supported wheel on this platform",
                     r"(?P<wheel>[^\s/'\"=]+\.whl)\S* is (?:not compatible|incompatible) with (?:the current|this) platform",
                     r"incompatible with the current platform: \S*?(?P<wheel>[^\s/'\"=]+\.whl)"]},
        ],
        "cause": "{wheel} cannot install here: {tag_reasons}",
        "fix": ["anyattn plan {wheel_package}", "{wheel_fix}"],
    },
    {
        "id": "undefined_symbol",
        "group": "undefined_symbol",
        "title": "A binary references a symbol no loaded library provides",
        "rules": [
            {"any": [r"undefined symbol: (?P<symbol>(?!mlir|cu[A-Z])\S+)"]},
        ],
        "cause": ("{symbol} is not provided by any loaded library: the binary was built against another version of a "
                  "library it links (often the CUDA runtime or a dependency) than the one loaded now."),
        "fix": ["# find which library should export it:",
                "c++filt {symbol}",
                "# then reinstall the extension for this torch {torch_version} / CUDA {torch_cuda}:",
                "anyattn plan flash-attn"],
    },
]
