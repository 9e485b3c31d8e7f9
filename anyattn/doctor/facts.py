"""Side-effect-free fact collection.

Everything the checks need is gathered here into :class:`Facts`, a plain dataclass of
JSON-compatible values, so that every check is a pure function of facts and can be tested
with fact sets recorded on other machines (``anyattn doctor --save-facts`` / ``--facts``).
``Facts.how`` records, for each fact, how it was found.

Nothing here writes to disk, changes the environment, or imports an attention package in
process (those are probed in subprocesses, see :mod:`anyattn.doctor.probes`).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from . import probes

SCHEMA = 1

# Environment variables that change how attention packages build or load.
ENV_EXACT = ("MAX_JOBS", "NVCC_THREADS", "TORCH_CUDA_ARCH_LIST", "FLASH_ATTN_CUDA_ARCHS",
             "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUDA_HOME", "CUDA_PATH", "CUDA_ROOT",
             "LD_LIBRARY_PATH", "PATH", "PIP_NO_BUILD_ISOLATION", "TRITON_PTXAS_PATH",
             "TRITON_CACHE_DIR", "PYTORCH_CUDA_ALLOC_CONF", "VLLM_ATTENTION_BACKEND",
             "VLLM_FLASH_ATTN_VERSION", "CONDA_PREFIX", "VIRTUAL_ENV", "XDG_CACHE_HOME")
ENV_PREFIXES = ("FLASH_ATTENTION_", "FLASHINFER_", "XFORMERS_", "ANYATTN_")

# dist name -> (import statement for the probe, importable top-level name)
ATTENTION_PACKAGES: Dict[str, Dict[str, str]] = {
    "flash-attn": {"probe": "import flash_attn, flash_attn_2_cuda", "module": "flash_attn"},
    "flash-attn-3": {"probe": "import flash_attn_interface", "module": "flash_attn_interface"},
    # FlashAttention-4 (CuTe DSL): its import alone takes ~8 s (the probe's seconds are the import time)
    "flash-attn-4": {"probe": "import flash_attn.cute", "module": "flash_attn.cute"},
    "flashinfer-python": {"probe": "import flashinfer", "module": "flashinfer"},
    "flashinfer-cubin": {"probe": "import flashinfer_cubin", "module": "flashinfer_cubin"},
    "flashinfer-jit-cache": {"probe": "import flashinfer_jit_cache", "module": "flashinfer_jit_cache"},
    "xformers": {"probe": "import xformers", "module": "xformers"},
    "vllm": {"probe": "from vllm.vllm_flash_attn import flash_attn_varlen_func", "module": "vllm"},
    "sglang": {"probe": "import sglang", "module": "sglang"},
    "triton": {"probe": "import triton", "module": "triton"},
}
# other distribution names under which the same package ships
DIST_ALIASES = {"flash-attn-3": ("flash_attn_3", "flash-attn-3", "flash-attn-hopper"),
                "flash-attn-4": ("flash-attn-4", "flash-attn-cute"),
                "flashinfer-python": ("flashinfer-python", "flashinfer"),
                "triton": ("triton", "pytorch-triton", "triton-windows")}

BUILD_PREREQS = ("packaging", "ninja", "psutil", "wheel", "setuptools")
HEADERS = ("cuda.h", "cuda_runtime.h", "cuda_fp8.h")


@dataclass
class Facts:
    """Plain, JSON-serialisable facts about one machine. ``how[key]`` says how each was found."""
    schema: int = SCHEMA
    collected_at: str = ""
    live: bool = False  # True when collected on the machine the doctor runs on
    os: Dict[str, Any] = field(default_factory=dict)
    python: Dict[str, Any] = field(default_factory=dict)
    libstdcxx: Dict[str, Any] = field(default_factory=dict)
    torch: Dict[str, Any] = field(default_factory=dict)
    gpus: List[Dict[str, Any]] = field(default_factory=list)
    driver: Dict[str, Any] = field(default_factory=dict)
    toolkit: Dict[str, Any] = field(default_factory=dict)
    pip_cuda: List[Dict[str, Any]] = field(default_factory=list)
    build: Dict[str, Any] = field(default_factory=dict)
    memory: Dict[str, Any] = field(default_factory=dict)
    cpu_count: Optional[int] = None
    env: Dict[str, str] = field(default_factory=dict)
    packages: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    triton: Dict[str, Any] = field(default_factory=dict)
    flashinfer: Dict[str, Any] = field(default_factory=dict)
    # issue 11: the new stack -- versions of every CuTe DSL / FlashInfer / FA4 piece, the DSL's
    # dsl_packages dir and whether sys.path has it, sys.path itself (no import of any of them)
    stack: Dict[str, Any] = field(default_factory=dict)
    verify: Dict[str, Any] = field(default_factory=dict)  # failures cached by `anyattn verify`
    how: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    machine: str = ""  # free-text label for recorded fact sets

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Facts":
        names = {f.name for f in dataclasses.fields(cls)}
        f = cls(**{k: v for k, v in d.items() if k in names})
        f.live = False if "live" not in d else bool(d["live"])
        return f

    @classmethod
    def load(cls, path: str) -> "Facts":
        with open(path, encoding="utf-8") as fh:
            f = cls.from_dict(json.load(fh))
        f.live = False
        return f

    # ---- small derived helpers used by checks (pure) ----
    @property
    def system(self) -> str:
        return self.os.get("system", "")

    @property
    def torch_cuda(self) -> Optional[str]:
        return self.torch.get("cuda")

    @property
    def capabilities(self) -> List[float]:
        out = []
        for g in self.gpus:
            try:
                out.append(float(g.get("cc")))
            except (TypeError, ValueError):
                pass
        return out

    def pkg(self, name: str) -> Optional[Dict[str, Any]]:
        p = self.packages.get(name)
        return p if p and p.get("installed") else None


# --------------------------------------------------------------------------------------
# helpers


def _run(cmd: List[str], timeout: float = 20.0) -> Optional[str]:
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL, errors="replace")
    except (OSError, subprocess.TimeoutExpired):
        return None
    if cp.returncode != 0:
        return None
    return cp.stdout


def parse_nvcc_version(text: str) -> Optional[str]:
    m = re.search(r"release (\d+\.\d+)", text or "")
    return m.group(1) if m else None


def _dist(name: str):
    from importlib import metadata
    for n in DIST_ALIASES.get(name, (name,)):
        try:
            return metadata.distribution(n)
        except metadata.PackageNotFoundError:
            continue
    return None


def _origin(dist) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    try:
        raw = dist.read_text("direct_url.json")
    except Exception:
        raw = None
    if raw:
        try:
            d = json.loads(raw)
            url = d.get("url", "")
            out["url"] = url
            if url.endswith(".whl"):
                out["wheel"] = url.rsplit("/", 1)[-1].replace("%2B", "+")
            if d.get("dir_info", {}).get("editable"):
                out["editable"] = True
            if "vcs_info" in d:
                out["vcs"] = d["vcs_info"].get("vcs")
        except ValueError:
            pass
    try:
        inst = (dist.read_text("INSTALLER") or "").strip()
        if inst:
            out["installer"] = inst
    except Exception:
        pass
    return out


# --------------------------------------------------------------------------------------
# collectors: each returns its value and sets how[...]


def collect_os(f: Facts) -> None:
    uname = platform.uname()
    d = {"system": uname.system, "release": uname.release, "machine": uname.machine,
         "platform": platform.platform()}
    libc, ver = platform.libc_ver()
    if libc:
        d["libc"], d["libc_version"] = libc, ver
    try:
        cs = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"
        if cs and cs.startswith("glibc "):
            d["libc"], d["libc_version"] = "glibc", cs.split()[1]
    except (AttributeError, ValueError, OSError):
        pass
    rel = uname.release.lower()
    d["wsl"] = uname.system == "Linux" and ("microsoft" in rel or "wsl" in rel)
    if uname.system == "Darwin":
        d["mac_ver"] = platform.mac_ver()[0]
    if uname.system == "Windows":
        d["win_ver"] = platform.win32_ver()[1]
    f.os = d
    f.how["os"] = "platform.uname(), os.confstr('CS_GNU_LIBC_VERSION') / platform.libc_ver()"


def collect_python(f: Facts) -> None:
    from packaging import tags
    tag_list = [str(t) for t in tags.sys_tags()]
    f.python = {"version": platform.python_version(), "implementation": sys.implementation.name,
                "executable": sys.executable, "tags": tag_list[:400], "n_tags": len(tag_list),
                "prefix": sys.prefix}
    f.how["python"] = "sys / platform; wheel tags from packaging.tags.sys_tags()"


def _glibcxx_of(path: str) -> List[str]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return []
    vers = set(m.decode() for m in re.findall(rb"GLIBCXX_(\d+\.\d+(?:\.\d+)?)", data))
    return sorted(vers, key=lambda v: tuple(int(x) for x in v.split(".")))


def collect_libstdcxx(f: Facts) -> None:
    if f.os.get("system") != "Linux":
        f.libstdcxx = {}
        f.how["libstdcxx"] = "not Linux: skipped"
        return
    cands = []
    for p in (os.path.join(sys.prefix, "lib", "libstdc++.so.6"),):
        if os.path.exists(p):
            cands.append(p)
    out = _run(["ldconfig", "-p"], timeout=10) or ""
    for ln in out.splitlines():
        if "libstdc++.so.6" in ln and "=>" in ln:
            p = ln.split("=>", 1)[1].strip()
            if p not in cands:
                cands.append(p)
    for p in ("/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6",
              "/usr/lib/aarch64-linux-gnu/libstdc++.so.6"):
        if os.path.exists(p) and os.path.realpath(p) not in {os.path.realpath(c) for c in cands}:
            cands.append(p)
    libs = []
    for p in cands[:4]:
        v = _glibcxx_of(p)
        libs.append({"path": p, "max": v[-1] if v else None, "versions": v[-8:]})
    f.libstdcxx = {"libs": libs, "max": libs[0]["max"] if libs else None}
    f.how["libstdcxx"] = "GLIBCXX_* strings read from libstdc++.so.6 (sys.prefix/lib first, then ldconfig -p)"


def collect_torch(f: Facts) -> None:
    d: Dict[str, Any] = {"installed": False}
    try:
        import torch  # the doctor needs torch's own view; never an attention package
    except Exception as e:  # noqa: BLE001 - any failure is a fact
        d["error"] = f"{type(e).__name__}: {e}"
        d["installed"] = _dist("torch") is not None
        f.torch = d
        f.how["torch"] = "import torch (failed)"
        return
    d.update(installed=True, version=torch.__version__, cuda=torch.version.cuda,
             hip=getattr(torch.version, "hip", None))
    try:
        d["cxx11_abi"] = bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    except AttributeError:
        d["cxx11_abi"] = None
    try:
        d["cuda_available"] = bool(torch.cuda.is_available())
    except Exception as e:  # noqa: BLE001
        d["cuda_available"], d["cuda_error"] = False, str(e)
    try:
        d["arch_list"] = list(torch.cuda.get_arch_list())
    except Exception:  # noqa: BLE001
        d["arch_list"] = []
    try:
        d["device_count"] = torch.cuda.device_count() if d["cuda_available"] else 0
    except Exception:  # noqa: BLE001
        d["device_count"] = 0
    d["mps_available"] = bool(getattr(getattr(torch.backends, "mps", None), "is_available", lambda: False)())
    f.torch = d
    f.how["torch"] = ("import torch: torch.__version__, torch.version.cuda/hip, "
                      "torch._C._GLIBCXX_USE_CXX11_ABI, torch.cuda.is_available(), torch.cuda.get_arch_list()")


def collect_gpus(f: Facts) -> None:
    gpus: List[Dict[str, Any]] = []
    drv: Dict[str, Any] = {}
    how = None
    try:  # NVML when nvidia-ml-py is installed
        import pynvml  # type: ignore
        pynvml.nvmlInit()
        try:
            dv = pynvml.nvmlSystemGetDriverVersion()
            drv["version"] = dv.decode() if isinstance(dv, bytes) else dv
            try:
                cv = pynvml.nvmlSystemGetCudaDriverVersion()
                drv["cuda"] = f"{cv // 1000}.{(cv % 1000) // 10}"
            except Exception:  # noqa: BLE001
                pass
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(h)
                maj, mnr = pynvml.nvmlDeviceGetCudaComputeCapability(h)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h).total // (1024 * 1024)
                bus = pynvml.nvmlDeviceGetPciInfo(h).busId
                gpus.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                             "cc": f"{maj}.{mnr}", "memory_mb": int(mem),
                             "pci_bus_id": bus.decode() if isinstance(bus, bytes) else bus})
            how = "NVML (nvidia-ml-py)"
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - not installed, or no driver
        gpus, drv = [], {}
    smi = shutil.which("nvidia-smi")
    if not how and smi:
        out = _run([smi, "--query-gpu=index,name,compute_cap,memory.total,pci.bus_id,driver_version",
                    "--format=csv,noheader,nounits"])
        if out is None:  # old nvidia-smi without compute_cap
            out2 = _run([smi, "--query-gpu=index,name,memory.total,pci.bus_id,driver_version",
                         "--format=csv,noheader,nounits"])
            out = "\n".join(",".join(p[:2] + [""] + p[2:]) for p in
                            ([x.strip() for x in ln.split(",")] for ln in (out2 or "").splitlines() if ln.strip()))
        for ln in (out or "").splitlines():
            p = [x.strip() for x in ln.split(",")]
            if len(p) < 6:
                continue
            gpus.append({"index": int(p[0]), "name": p[1], "cc": p[2] or None,
                         "memory_mb": int(float(p[3])) if p[3].replace(".", "").isdigit() else None,
                         "pci_bus_id": p[4]})
            drv["version"] = p[5]
        head = _run([smi], timeout=20) or ""
        m = re.search(r"CUDA Version:\s*([\d.]+)", head)
        if m:
            drv["cuda"] = m.group(1)
        if gpus or drv:
            how = "nvidia-smi --query-gpu"
    if not gpus and f.torch.get("cuda_available"):
        try:
            import torch
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                bus = None
                try:
                    bus = "%08X:%02X:%02X.0" % (p.pci_domain_id, p.pci_bus_id, p.pci_device_id)
                except AttributeError:
                    pass
                gpus.append({"index": i, "name": p.name, "cc": f"{p.major}.{p.minor}",
                             "memory_mb": int(p.total_memory // (1024 * 1024)), "pci_bus_id": bus})
            how = "torch.cuda.get_device_properties (no NVML, no nvidia-smi)"
            try:
                drv.setdefault("cuda", None)
            except Exception:  # noqa: BLE001
                pass
        except Exception as e:  # noqa: BLE001
            f.notes.append(f"torch GPU query failed: {e}")
    # fill a missing compute capability from torch when possible (old nvidia-smi)
    if gpus and any(not g.get("cc") for g in gpus) and f.torch.get("cuda_available"):
        try:
            import torch
            for i in range(min(len(gpus), torch.cuda.device_count())):
                p = torch.cuda.get_device_properties(i)
                if not gpus[i].get("cc"):
                    gpus[i]["cc"] = f"{p.major}.{p.minor}"
        except Exception:  # noqa: BLE001
            pass
    f.gpus = gpus
    f.driver = drv
    f.how["gpus"] = how or "no NVML, nvidia-smi not on PATH, torch sees no CUDA device"
    f.how["driver"] = f.how["gpus"]
    if os.path.exists("/proc/driver/nvidia/version"):
        try:
            with open("/proc/driver/nvidia/version") as fh:
                m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", fh.read())
            if m and not drv.get("version"):
                drv["version"] = m.group(1)
                f.how["driver"] = "/proc/driver/nvidia/version"
        except OSError:
            pass


def find_cuda_home(env: Dict[str, str], which: Callable[[str], Optional[str]] = shutil.which,
                   exists: Callable[[str], bool] = os.path.exists) -> Dict[str, Any]:
    """Find the toolkit in the order torch.utils.cpp_extension uses:
    CUDA_HOME / CUDA_PATH -> nvcc on PATH -> /usr/local/cuda."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(var):
            return {"path": env[var], "how": f"${var}"}
    nvcc = which("nvcc")
    if nvcc:  # torch takes dirname(dirname(which nvcc)) without resolving links or wrapper scripts
        return {"path": os.path.dirname(os.path.dirname(nvcc)), "how": f"dirname(dirname(which nvcc)) = {nvcc}"}
    if exists("/usr/local/cuda"):
        return {"path": "/usr/local/cuda", "how": "/usr/local/cuda exists"}
    return {"path": None, "how": "CUDA_HOME/CUDA_PATH unset, no nvcc on PATH, no /usr/local/cuda"}


def inspect_toolkit(home: Optional[str]) -> Dict[str, Any]:
    """What a build that uses ``home`` as CUDA_HOME would find there."""
    d: Dict[str, Any] = {"path": home, "exists": bool(home) and os.path.isdir(home), "nvcc": None,
                         "nvcc_version": None, "headers": {}}
    if not d["exists"]:
        return d
    exe = os.path.join(home, "bin", "nvcc.exe" if os.name == "nt" else "nvcc")
    if os.path.exists(exe):
        d["nvcc"] = exe
        d["nvcc_version"] = parse_nvcc_version(_run([exe, "--version"]) or "")
    d["has_lib"] = any(os.path.exists(os.path.join(home, sub)) for sub in ("lib64", "lib", "targets"))
    for h in HEADERS:
        hits = [os.path.join(home, "include", h)] + sorted(glob.glob(os.path.join(home, "targets", "*", "include", h)))
        d["headers"][h] = [p for p in hits if os.path.exists(p)]
    vj = os.path.join(home, "version.json")
    if os.path.exists(vj):
        try:
            with open(vj) as fh:
                d["version_json"] = json.load(fh).get("cuda", {}).get("version")
        except (OSError, ValueError):
            pass
    return d


def collect_toolkit(f: Facts) -> None:
    found = find_cuda_home(dict(os.environ))
    d = inspect_toolkit(found["path"])
    d["cuda_home"] = d.pop("path")
    d["found_by"] = found["how"]
    d["cuda_home_env"] = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    on_path = shutil.which("nvcc")
    d["nvcc_on_path"] = on_path
    if on_path:
        d["nvcc_on_path_real"] = os.path.realpath(on_path)
        if os.path.realpath(on_path) != os.path.realpath(d["nvcc"] or ""):
            d["nvcc_on_path_version"] = parse_nvcc_version(_run([on_path, "--version"]) or "")
    # other toolkits a user could point CUDA_HOME at
    cands = []
    for p in ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*")) + (
            [os.environ["CONDA_PREFIX"]] if os.environ.get("CONDA_PREFIX") else []):
        if os.path.isdir(p) and os.path.realpath(p) != os.path.realpath(d["cuda_home"] or "/nonexistent") \
                and os.path.realpath(p) not in {os.path.realpath(c["path"]) for c in cands}:
            c = inspect_toolkit(p)
            c.pop("has_lib", None)
            cands.append(c)
    d["candidates"] = cands
    f.toolkit = d
    f.how["toolkit"] = ("torch.utils.cpp_extension order: $CUDA_HOME/$CUDA_PATH -> dirname(dirname(which nvcc)) -> "
                        "/usr/local/cuda; `$CUDA_HOME/bin/nvcc --version`; headers in include/ and targets/*/include/; "
                        "other toolkits under /usr/local/cuda* and $CONDA_PREFIX")


def collect_pip_cuda(f: Facts) -> None:
    from importlib import metadata
    out = []
    seen = set()
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        if name.startswith("nvidia-") and name not in seen:
            seen.add(name)
            out.append({"name": name, "version": dist.version})
    out.sort(key=lambda x: x["name"])
    f.pip_cuda = out
    # the pip nvcc wheel ships bin/nvcc under site-packages/nvidia/cuda_nvcc
    nv = _dist("nvidia-cuda-nvcc-cu12") or _dist("nvidia-cuda-nvcc-cu13") or _dist("nvidia-cuda-nvcc")
    if nv is not None:
        for rel in ("nvidia/cuda_nvcc/bin/nvcc", "nvidia/cu13/bin/nvcc"):
            p = str(nv.locate_file(rel))
            if os.path.exists(p):
                f.toolkit["pip_nvcc"] = p
    f.how["pip_cuda"] = "importlib.metadata.distributions() named nvidia-*"


def collect_build(f: Facts) -> None:
    import importlib.util
    from importlib import metadata
    mods = {}
    for name in BUILD_PREREQS:
        spec = importlib.util.find_spec(name)
        ver = None
        if spec is not None:
            try:
                ver = metadata.version(name)
            except metadata.PackageNotFoundError:
                ver = "unknown"
        mods[name] = ver
    f.build = {"modules": mods, "ninja_bin": shutil.which("ninja"), "gcc": shutil.which("gcc"),
               "cxx": shutil.which("c++") or shutil.which("g++"), "cl": shutil.which("cl")}
    gcc = f.build["gcc"]
    if gcc:
        v = (_run([gcc, "-dumpfullversion", "-dumpversion"]) or "").strip()
        f.build["gcc_version"] = v or None
    f.how["build"] = "importlib.util.find_spec in the target interpreter; shutil.which for ninja/gcc"


def collect_memory(f: Facts) -> None:
    d: Dict[str, Any] = {}
    try:
        with open("/proc/meminfo") as fh:
            info = {ln.split(":")[0]: int(ln.split()[1]) for ln in fh if ln.split()[1:2] and ln.split()[1].isdigit()}
        d["total_gb"] = round(info["MemTotal"] / 2**20, 1)
        d["available_gb"] = round(info.get("MemAvailable", info.get("MemFree", 0)) / 2**20, 1)
        d["swap_gb"] = round(info.get("SwapTotal", 0) / 2**20, 1)
        how = "/proc/meminfo"
    except (OSError, KeyError, ValueError, IndexError):
        how = "os.sysconf"
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            d["total_gb"] = round(total / 2**30, 1)
            d["available_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / 2**30, 1)
        except (ValueError, OSError, AttributeError):
            how = "unknown"
    for p in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(p) as fh:
                raw = fh.read().strip()
            if raw.isdigit() and int(raw) < 2**60:
                d["cgroup_limit_gb"] = round(int(raw) / 2**30, 1)
                how += f" + {p}"
            break
        except OSError:
            continue
    f.memory = d
    f.how["memory"] = how
    try:
        f.cpu_count = len(os.sched_getaffinity(0))
        f.how["cpu_count"] = "os.sched_getaffinity(0)"
    except AttributeError:
        f.cpu_count = os.cpu_count()
        f.how["cpu_count"] = "os.cpu_count()"


def collect_env(f: Facts) -> None:
    env = {}
    for k, v in os.environ.items():
        if k in ENV_EXACT or k.startswith(ENV_PREFIXES):
            env[k] = v
    f.env = env
    f.how["env"] = "os.environ, the variables that matter to attention builds and loads"


def collect_package_metadata(f: Facts) -> None:
    pk: Dict[str, Dict[str, Any]] = {}
    for name, spec in ATTENTION_PACKAGES.items():
        dist = _dist(name)
        if dist is None:
            pk[name] = {"installed": False}
            continue
        d: Dict[str, Any] = {"installed": True, "version": dist.version,
                             "dist": dist.metadata.get("Name"), "origin": _origin(dist)}
        try:
            files = dist.files or []
        except Exception:  # noqa: BLE001
            files = []
        exts = sorted({str(p).replace("\\", "/") for p in files if str(p).endswith((".so", ".pyd"))})
        d["extensions"] = exts[:40]
        d["n_extensions"] = len(exts)
        d["location"] = str(dist.locate_file(""))
        pk[name] = d
    # xFormers: what it was built for, read from its cpp_lib.json without importing it
    xf = pk.get("xformers")
    if xf and xf.get("installed"):
        dist = _dist("xformers")
        p = str(dist.locate_file("xformers/cpp_lib.json"))
        try:
            with open(p) as fh:
                xf["cpp_lib"] = json.load(fh)
        except (OSError, ValueError) as e:
            xf["cpp_lib"] = None
            xf["cpp_lib_error"] = str(e)
    # vLLM: is vllm_flash_attn a real package with its compiled module?
    vl = pk.get("vllm")
    if vl and vl.get("installed"):
        base = os.path.join(vl["location"], "vllm", "vllm_flash_attn")
        d = {"dir": os.path.isdir(base), "init": os.path.exists(os.path.join(base, "__init__.py"))}
        d["compiled"] = sorted(os.path.basename(p) for p in
                               glob.glob(os.path.join(vl["location"], "vllm", "vllm_flash_attn", "_vllm_fa*_C*"))
                               + glob.glob(os.path.join(vl["location"], "vllm", "_vllm_fa*_C*")))
        vl["vllm_flash_attn"] = d
    f.packages = pk
    f.how["packages"] = ("importlib.metadata (version, RECORD, direct_url.json); xformers/cpp_lib.json read as a file; "
                         "vllm/vllm_flash_attn inspected on disk")


def collect_flashinfer(f: Facts) -> None:
    base = f.env.get("FLASHINFER_WORKSPACE_BASE") or os.path.expanduser("~")
    cache = os.path.join(base, ".cache", "flashinfer")
    probe = cache
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    f.flashinfer = {"jit_dir": cache, "jit_dir_exists": os.path.exists(cache),
                    "jit_dir_writable": bool(probe) and os.access(probe, os.W_OK),
                    "nearest_existing": probe}
    f.how["flashinfer"] = ("$FLASHINFER_WORKSPACE_BASE (default ~) + /.cache/flashinfer; "
                           "os.access(W_OK) on the nearest existing ancestor")


# distributions whose versions the new-stack checks compare (none is imported)
STACK_DISTS = ("flash-attn-4", "flash-attn-cute", "nvidia-cutlass-dsl", "nvidia-cutlass-dsl-libs-base",
               "nvidia-cutlass-dsl-libs-core", "nvidia-cutlass-dsl-libs-cu12", "nvidia-cutlass-dsl-libs-cu13",
               "flashinfer-python", "flashinfer-cubin", "flashinfer-jit-cache", "cuda-python", "cuda-bindings",
               "apache-tvm-ffi", "quack-kernels", "torch", "triton", "xformers", "flash-attn")


DSL_PACKAGE_DIRS = ("dsl_packages", "python_packages")


def collect_stack(f: Facts) -> None:
    from importlib import metadata
    vers: Dict[str, Any] = {}
    origins: Dict[str, Any] = {}
    for name in STACK_DISTS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        vers[name] = dist.version
        o = _origin(dist)
        o["location"] = str(dist.locate_file(""))
        origins[name] = o
    d: Dict[str, Any] = {"versions": vers, "origins": origins, "sys_path": list(sys.path)[:60]}
    # the CuTe DSL keeps cutlass/ (with _mlir) under .../nvidia_cutlass_dsl/dsl_packages (4.8.1, seen
    # on the H200; python_packages in some releases), put on sys.path by a .pth file; `pip install
    # --target` and some tools never process .pth files
    dsl_dirs, pths = [], []
    for base in [p for p in sys.path if p and os.path.isdir(p)][:60]:
        for sub in DSL_PACKAGE_DIRS:
            cand = os.path.join(base, "nvidia_cutlass_dsl", sub)
            if os.path.isdir(cand) and cand not in dsl_dirs:
                dsl_dirs.append(cand)
        try:
            pths += [os.path.join(base, n) for n in os.listdir(base) if n.endswith(".pth") and "cutlass" in n.lower()]
        except OSError:
            pass
    d["dsl_packages_dirs"] = dsl_dirs
    d["dsl_packages_on_sys_path"] = [x for x in dsl_dirs if x in sys.path]
    d["cutlass_pth_files"] = pths[:10]
    f.stack = d
    f.how["stack"] = ("importlib.metadata versions/origins of the FA4 / CuTe DSL / FlashInfer pieces; "
                      "<sys.path entry>/nvidia_cutlass_dsl/{dsl,python}_packages and *cutlass*.pth looked up on disk")


def collect_triton_meta(f: Facts) -> None:
    t = f.packages.get("triton") or {}
    d: Dict[str, Any] = {"installed": bool(t.get("installed")), "version": t.get("version")}
    if t.get("installed"):
        ptx = f.env.get("TRITON_PTXAS_PATH")
        if not ptx:
            cand = os.path.join(t.get("location", ""), "triton", "backends", "nvidia", "bin", "ptxas")
            ptx = cand if os.path.exists(cand) else None
            d["ptxas_how"] = "bundled with triton" if ptx else "not found"
        else:
            d["ptxas_how"] = "$TRITON_PTXAS_PATH"
        d["ptxas"] = ptx
        if ptx:
            d["ptxas_version"] = parse_nvcc_version(_run([ptx, "--version"]) or "")
    f.triton = d
    f.how["triton"] = "importlib.metadata; ptxas from $TRITON_PTXAS_PATH or triton/backends/nvidia/bin; kernel run in a subprocess"


# --------------------------------------------------------------------------------------


def collect_verify(f: Facts) -> None:
    """Failures that `anyattn verify` cached on this machine (its JSON file only; runs nothing)."""
    from .. import __version__
    from .. import verify as _verify

    data = _verify.load().get("machines") or {}
    failures = []
    for entry in data.values():
        m = entry.get("machine", {})
        if m.get("anyattn") != __version__ or m.get("torch") != f.torch.get("version"):
            continue  # another anyattn/torch: not this machine's current state
        for key, r in sorted(entry.get("results", {}).items()):
            if r.get("status") == "fail":
                failures.append({k: r.get(k) for k in ("backend", "version", "op", "dtype", "family", "reason")}
                                | {"device": m.get("device")})
    f.verify = {"cache": _verify.cache_path(), "failures": failures}
    f.how["verify"] = "the `anyattn verify` cache file"


def run_probes(f: Facts, timeout: float = 60.0, progress: Optional[Callable[[str], None]] = None,
               python: Optional[str] = None) -> None:
    """Import-probe every installed attention package in subprocesses (in parallel)."""
    jobs: Dict[str, Callable[[], dict]] = {}
    for name, spec in ATTENTION_PACKAGES.items():
        p = f.packages.get(name) or {}
        if not p.get("installed"):
            continue
        extra = probes.XFORMERS_PROBE if name == "xformers" else ""
        stmt = "import xformers" if name == "xformers" else spec["probe"]
        jobs[name] = (lambda s=stmt, e=extra: probes.import_probe(s, timeout=timeout, python=python, extra=e))
    if f.triton.get("installed") and f.torch.get("cuda_available"):
        jobs["triton-kernel"] = lambda: probes.run_python(probes.TRITON_KERNEL_PROBE, timeout=timeout, python=python,
                                                          as_file=True)
    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=min(4, len(jobs))) as ex:
        futs = {k: ex.submit(fn) for k, fn in jobs.items()}
        for k, fut in futs.items():
            if progress:
                progress(f"probing {k}")
            res = fut.result()
            extra = probes.parse_marked_json(res.get("stdout", ""))
            if extra is not None:
                res["details"] = extra
            if k == "triton-kernel":
                f.triton["kernel_probe"] = res
            else:
                f.packages[k]["probe"] = res
                f.packages[k]["probe_stmt"] = "import xformers" if k == "xformers" else ATTENTION_PACKAGES[k]["probe"]
    f.how["probes"] = f"`{python or sys.executable} -c 'import ...'` per package, {timeout:.0f}s timeout, in parallel"


def collect(probe: bool = True, timeout: float = 60.0,
            progress: Optional[Callable[[str], None]] = None) -> Facts:
    """Collect the facts of this machine. ``progress`` receives short status strings."""
    f = Facts(collected_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), live=True)
    steps = [("os", collect_os), ("python", collect_python), ("libstdc++", collect_libstdcxx),
             ("env", collect_env), ("torch", collect_torch), ("GPUs", collect_gpus),
             ("CUDA toolkit", collect_toolkit), ("pip CUDA packages", collect_pip_cuda),
             ("build prerequisites", collect_build), ("memory", collect_memory),
             ("attention packages", collect_package_metadata), ("flashinfer cache", collect_flashinfer),
             ("triton", collect_triton_meta), ("FA4 / CuTe DSL / FlashInfer pieces", collect_stack),
             ("verify cache", collect_verify)]
    for label, fn in steps:
        if progress:
            progress(f"reading {label}")
        try:
            fn(f)
        except Exception as e:  # noqa: BLE001 - one broken collector must not stop the doctor
            f.notes.append(f"{label}: {type(e).__name__}: {e}")
    if probe:
        try:
            run_probes(f, timeout=timeout, progress=progress)
        except Exception as e:  # noqa: BLE001
            f.notes.append(f"probes: {type(e).__name__}: {e}")
    return f
