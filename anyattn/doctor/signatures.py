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
)

_CUDA_HEADERS = (r"cuda_fp8\.h|cuda_fp16\.h|cuda_bf16\.h|cuda_runtime\.h|cuda_runtime_api\.h|cuda\.h|"
                 r"cublas_v2\.h|cublasLt\.h|cusparse\.h|curand\.h|cuda_pipeline\.h|nvrtc\.h|"
                 r"cuda/std/\w+|cuda/barrier|nv/target|crt/host_config\.h|thrust/\w+\.h|cub/\w+\.cuh")
_BUILD_CONTEXT = (r"metadata-generation-failed|Getting requirements to build|setup\.py|egg_info|"
                  r"subprocess-exited-with-error|build_meta|pyproject|Preparing metadata|"
                  r"Building wheel|get_requires_for_build|pip install|uv pip|Failed to build")

SIGNATURES = [
    {
        "id": "vllm_fa_not_built",
        "title": "vLLM's vendored flash-attention (vllm_flash_attn) is missing, empty or stale",
        "rules": [
            {"any": [r"cannot import name '(?P<name>\w+)' from 'vllm\.vllm_flash_attn'",
                     r"No module named '(?P<module>vllm\.vllm_flash_attn(?:\.\w+)?|vllm\._vllm_fa\d_C)'",
                     r"(?P<module>vllm\.vllm_flash_attn)\S* \(unknown location\)"]},
        ],
        "cause": ("vllm/vllm_flash_attn has no compiled _vllm_fa*_C module (or an old one): the vendored "
                  "flash-attention was never built for this checkout, or the checkout moved on after the build "
                  "(an empty namespace package imports but has none of its functions{name_clause})."),
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
                     r"xFormers can't load C\+\+/CUDA extensions"]},
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
             "any": [r"(?:fatal error|Schwerwiegender Fehler|erreur fatale|致命错误): (?P<header>cuda_fp8\.h|cuda_runtime\.h|cuda\.h)\W{0,3}:",
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
            {"any": [r"undefined symbol: (?P<symbol>_Z\w*(?:KSs|RSs)\w*)"]},
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
                     r"cudaErrorInsufficientDriver"]},
        ],
        "cause": ("The driver supports CUDA up to {driver_cuda_or_fact} but torch/the extension uses CUDA {torch_cuda}; "
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
        "id": "gpu_arch_unsupported",
        "title": "The GPU architecture is not supported by this kernel or binary",
        "rules": [
            {"any": [r"FlashAttention only supports (?P<need>Ampere) GPUs or newer",
                     r"FlashAttention(?:-?3| 3)? (?:only )?supports? (?:only )?(?P<need>Hopper)",
                     r"no kernel image is available for execution on the device",
                     r"sm_(?P<sm>\d+a?) is not compatible with the current PyTorch installation",
                     r"Unsupported gpu architecture '(?P<arch>compute_\d+a?)'",
                     r"(?:requires|supports only) (?:compute capability|sm_?)\s*>?=?\s*(?P<need_sm>\d+(?:\.\d)?)"]},
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
            {"any": [r"(?:fatal error|Schwerwiegender Fehler|erreur fatale|致命错误): (?P<header>" + _CUDA_HEADERS + r")\W{0,3}:",
                     r"cannot open source file \"(?P<header>" + _CUDA_HEADERS + r")\""]},
        ],
        "cause": ("{header} is not in the toolkit the build uses (CUDA_HOME={cuda_home}): a runtime-only CUDA, a "
                  "pip/conda toolkit without its dev headers, or CUDA_HOME pointing at the wrong directory. "
                  "cuda_fp8.h exists only in CUDA >= 11.8."),
        "fix": ["export CUDA_HOME={cuda_home_suggest} PATH={cuda_home_suggest}/bin:$PATH",
                "ls $CUDA_HOME/include/{header}",
                "# no full toolkit? install one matching torch's CUDA {torch_cuda}:",
                "sudo apt-get install cuda-toolkit-{torch_cuda_dash}   # or: conda install -c nvidia cuda-toolkit={torch_cuda}"],
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
        ],
        "cause": ("pip built the package in an isolated environment that lacks {module}: flash-attn's setup.py imports "
                  "packaging and torch at metadata time but does not declare them as build requirements."),
        "fix": ["{pip} install packaging ninja psutil wheel setuptools",
                "MAX_JOBS={max_jobs} {pip} install flash-attn --no-build-isolation"],
    },
    {
        "id": "build_oom",
        "title": "The compiler was killed: out of memory during the build",
        "rules": [
            {"any": [r"Killed signal terminated program (?P<prog>cc1plus|cicc|ptxas|nvcc|\w+)",
                     r"died due to signal 9", r"virtual memory exhausted",
                     r"cicc.*(?:out of memory|bad_alloc)"]},
            {"all": [r"^\s*Killed\s*$|\bexit (?:code|status):? 137\b|\bsignal 9\b|SIGKILL"],
             "any": [r"ninja|nvcc|cc1plus|cicc|Building wheel|setup\.py|pip install|build_ext"]},
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
            {"any": [r"undefined symbol: (?P<symbol>\S+)"]},
        ],
        "cause": ("{symbol} is not provided by any loaded library: the binary was built against another version of a "
                  "library it links (often the CUDA runtime or a dependency) than the one loaded now."),
        "fix": ["# find which library should export it:",
                "c++filt {symbol}",
                "# then reinstall the extension for this torch {torch_version} / CUDA {torch_cuda}:",
                "anyattn plan flash-attn"],
    },
]
