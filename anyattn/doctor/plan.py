"""``anyattn plan``: the install that works for a target environment.

flash-attn: the exact prebuilt wheel filename its setup.py looks for, by naming era; whether
that wheel installs on the target interpreter (``packaging`` tags, never a regex on wheel
names); best match among a list of release assets; otherwise a sized source build.
FlashInfer and xFormers: index-based commands and the constraints that make them work.
Always: the backends that already run here with nothing to install.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from packaging import tags as _tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

FA_RELEASE_URL = "https://github.com/Dao-AILab/flash-attention/releases/download/v{version}/{filename}"
DEFAULT_FA_VERSION = "2.8.3"  # latest flash-attn 2 release known to this table
# First flash-attn release whose setup.py names CUDA 13 wheels "cu13". Releases up to 2.8.3 map
# every CUDA >= 12 to "cu12" (their wheels then need libcudart.so.12). Assumption, see docs.
FA_CU13_FROM = Version("2.8.4")

# Peak host RAM of one flash-attn nvcc job per NVCC thread (issue 4: MAX_JOBS x NVCC_THREADS x ~5 GB).
GB_PER_JOB_THREAD = 5.0
# Rough CPU work of a flash-attn 2 source build for ONE architecture, in core-minutes.
CORE_MINUTES_PER_ARCH = 300.0
FA_DEFAULT_ARCHS = ["80", "90", "100", "120"]  # what a flash-attn 2.8 build compiles by default


@dataclass
class Target:
    """The environment an install is planned for (this machine, or overrides)."""
    torch: Optional[str] = None          # "2.6.0"
    cuda: Optional[str] = None           # torch.version.cuda, "12.4"
    python: str = "%d.%d" % sys.version_info[:2]
    cxx11_abi: Optional[bool] = None
    platform: str = "linux_x86_64"
    glibc: Optional[str] = None          # "2.36": adds manylinux tags
    ccs: List[float] = field(default_factory=list)
    cpus: int = 4
    available_gb: Optional[float] = None
    nvcc: Optional[str] = None
    driver_cuda: Optional[str] = None    # the CUDA version the driver supports (nvidia-smi's "CUDA Version")
    live_tags: Optional[List[str]] = None  # this interpreter's sys_tags (when not overridden)
    overridden: bool = False

    @property
    def torch_mm(self) -> Optional[str]:
        if not self.torch:
            return None
        v = Version(self.torch.split("+")[0])
        return f"{v.major}.{v.minor}"

    @property
    def cp(self) -> str:
        return "cp" + self.python.replace(".", "")[:4]


def platform_tag() -> str:
    import platform as _p
    s = sys.platform
    if s.startswith("linux"):
        return f"linux_{_p.uname().machine}"
    if s == "darwin":
        mac = ".".join(_p.mac_ver()[0].split(".")[:2]).replace(".", "_")
        return f"macosx_{mac}_{_p.uname().machine}"
    if s == "win32":
        return "win_amd64"
    return s


def target_from_facts(facts, **overrides) -> Target:
    """Build a Target from facts (live or recorded), then apply CLI overrides."""
    t = Target()
    if facts is not None:
        tv = facts.torch or {}
        t.torch = tv.get("version")
        t.cuda = tv.get("cuda")
        t.cxx11_abi = tv.get("cxx11_abi")
        pv = (facts.python or {}).get("version")
        if pv:
            t.python = ".".join(pv.split(".")[:2])
        sysname = (facts.os or {}).get("system")
        mach = (facts.os or {}).get("machine", "x86_64")
        if sysname == "Linux":
            t.platform = f"linux_{mach}"
        elif sysname == "Windows":
            t.platform = "win_amd64"
        elif sysname == "Darwin":
            mac = ((facts.os or {}).get("mac_ver") or "11.0").split(".")
            t.platform = f"macosx_{mac[0]}_{mac[1] if len(mac) > 1 else 0}_{mach}"
        if (facts.os or {}).get("libc") == "glibc":
            t.glibc = facts.os.get("libc_version")
        t.ccs = facts.capabilities
        t.cpus = facts.cpu_count or 4
        mem = facts.memory or {}
        t.available_gb = min([x for x in (mem.get("available_gb"), mem.get("cgroup_limit_gb")) if x] or [None]) \
            if mem.get("available_gb") or mem.get("cgroup_limit_gb") else None
        t.nvcc = (facts.toolkit or {}).get("nvcc_version")
        t.driver_cuda = (facts.driver or {}).get("cuda")
        if facts.live:  # this interpreter: its real tags
            t.live_tags = [str(x) for x in _tags.sys_tags()]
    for k, v in overrides.items():
        if v is None:
            continue
        if k == "cxx11_abi" and isinstance(v, str):
            v = v.strip().upper() in ("TRUE", "1", "YES")
        if k == "ccs" and isinstance(v, str):
            try:
                v = [float(x) for x in v.replace(";", ",").split(",") if x.strip()]
            except ValueError:
                raise ValueError(f"cc: expected compute capabilities like 9.0 or 8.0,12.0, got {v!r}") from None
        setattr(t, k, v)
        t.overridden = True
        if k in ("python", "platform"):
            t.live_tags = None
    return t


def target_tags(t: Target) -> set:
    """The wheel tags the target interpreter accepts."""
    if t.live_tags:
        return set(t.live_tags)
    major, minor = (int(x) for x in t.python.split(".")[:2])
    plats = [t.platform]
    if t.platform.startswith("linux_"):
        arch = t.platform[len("linux_"):]
        glibc_minor = int(t.glibc.split(".")[1]) if t.glibc else 17
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        many = []
        for m in range(glibc_minor, 4, -1):
            many.append(f"manylinux_2_{m}_{arch}")
            if m in legacy:
                many.append(f"{legacy[m]}_{arch}")
        plats = many + [t.platform]
    out = set(str(x) for x in _tags.cpython_tags(python_version=(major, minor), platforms=plats))
    out |= set(str(x) for x in _tags.compatible_tags(python_version=(major, minor), interpreter=f"cp{major}{minor}",
                                                      platforms=plats))
    return out


# --------------------------------------------------------------------------------------
# flash-attn wheel naming


def fa_cuda_tag(fa_version: str, cuda: str, torch: Optional[str] = None) -> Tuple[str, str]:
    """The ``cu...`` part flash-attn ``fa_version``'s setup.py asks for, with the era's rule."""
    v = Version(fa_version)
    c = Version(cuda)
    base = Version(v.base_version)
    tv = Version(torch.split("+")[0]) if torch else None
    if base < Version("2.3.6"):
        if base >= Version("2.3.0") and tv is not None and (tv.major, tv.minor) == (2, 1) and c.major == 12:
            return "cu122", "2.3.0-2.3.5: torch 2.1 + CUDA 12 forced to cu122"
        return f"cu{c.major}{c.minor}", "up to 2.3.5: torch's CUDA major.minor as-is"
    if base < Version("2.6.0"):
        return ("cu118" if c.major == 11 else "cu122"), "2.3.6-2.5.x: CUDA 11 -> cu118, 12+ -> cu122"
    if base < Version("2.7.0"):
        return ("cu118" if c.major == 11 else "cu123"), "2.6.x: CUDA 11 -> cu118, 12+ -> cu123"
    if base < FA_CU13_FROM:
        return ("cu11" if c.major == 11 else "cu12"), "2.7.0-2.8.3: major only, CUDA 11 -> cu11, 12+ -> cu12"
    return f"cu{c.major}", "from %s: major only (cu11 / cu12 / cu13)" % FA_CU13_FROM


def fa_wheel_name(fa_version: str, t: Target) -> Tuple[Optional[str], List[str]]:
    """The prebuilt wheel flash-attn's setup.py looks for on target ``t`` (or None, with reasons)."""
    reasons: List[str] = []
    if not t.torch:
        return None, ["torch is not installed in the target: install torch first (flash-attn needs it to build or pick a wheel)"]
    if not t.cuda:
        return None, [f"torch {t.torch} has no CUDA (CPU or ROCm build): flash-attn's CUDA wheels do not apply"]
    if t.cxx11_abi is None:
        return None, ["torch's C++ ABI is unknown; pass --cxx11-abi TRUE|FALSE"]
    cu, rule = fa_cuda_tag(fa_version, t.cuda, t.torch)
    reasons.append(f"CUDA tag {cu}: {rule}")
    abi = "TRUE" if t.cxx11_abi else "FALSE"
    name = (f"flash_attn-{fa_version}+{cu}torch{t.torch_mm}cxx11abi{abi}-{t.cp}-{t.cp}-{t.platform}.whl")
    parse_wheel_filename(name)  # validate
    return name, reasons


def parse_fa_local(local: str) -> Dict[str, Optional[str]]:
    """Split a flash-attn local version label (``cu12torch2.6cxx11abifalse``) into fields."""
    s = (local or "").lower()
    out: Dict[str, Optional[str]] = {"cu": None, "torch": None, "abi": None}
    i, j = s.find("torch"), s.find("cxx11abi")
    if s.startswith("cu") and i > 2:
        out["cu"] = s[2:i]
    if i >= 0:
        out["torch"] = s[i + 5:j if j > i else None]
    if j >= 0:
        out["abi"] = s[j + 8:].upper()
    return out


def _cu_major(cu: str) -> Optional[int]:
    if not cu or not cu.isdigit():
        return None
    return int(cu[:2]) if len(cu) >= 3 else int(cu)


def wheel_mismatches(filename: str, t: Target, want_version: Optional[str] = None,
                     tagset: Optional[set] = None) -> List[str]:
    """Field-by-field reasons why a flash-attn wheel does not fit target ``t`` ([] = it fits)."""
    try:
        name, ver, _build, wtags = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion) as e:
        return [f"not a valid wheel filename ({e})"]
    out = []
    if canonicalize_name(name) != "flash-attn":
        out.append(f"package: {name}, not flash-attn")
        return out
    if want_version and ver.public != Version(want_version).public:
        out.append(f"version: wheel {ver.public}, wanted {want_version}")
    local = parse_fa_local(ver.local or "")
    tcuda = Version(t.cuda) if t.cuda else None
    if tcuda is None:
        out.append("cuda: target torch has no CUDA")
    elif _cu_major(local["cu"] or "") != tcuda.major:
        out.append(f"cuda: wheel cu{local['cu']}, target torch CUDA {t.cuda} (major must match)")
    if local["torch"] != t.torch_mm:
        out.append(f"torch: wheel torch{local['torch']}, target torch {t.torch_mm}")
    want_abi = None if t.cxx11_abi is None else ("TRUE" if t.cxx11_abi else "FALSE")
    if local["abi"] is None:
        out.append(f"abi: the wheel's name does not say its C++ ABI (target torch cxx11abi{want_abi}): not an official build")
    elif local["abi"] != want_abi:
        out.append(f"abi: wheel cxx11abi{local['abi']}, target torch cxx11abi{want_abi}")
    tagset = tagset if tagset is not None else target_tags(t)
    if not {str(x) for x in wtags} & tagset:
        wt = sorted(str(x) for x in wtags)
        py = sorted({x.interpreter for x in wtags})
        plat = sorted({x.platform for x in wtags})
        if t.cp not in py and not any(p.startswith("py") or p.startswith("abi3") for p in py):
            out.append(f"python: wheel {','.join(py)}, target {t.cp}")
        if not any(p in ("any",) or p == t.platform or p.startswith("manylinux") and t.platform.startswith("linux")
                   and p.endswith(t.platform.split("_", 1)[1]) for p in plat):
            out.append(f"platform: wheel {','.join(plat)}, target {t.platform}")
        if len(out) == 0 or not any(r.startswith(("python", "platform")) for r in out):
            out.append(f"tags: wheel {','.join(wt)} not accepted by the target interpreter")
    return out


def read_available(path: str) -> List[str]:
    """Release asset names, one per line (URLs and blank lines allowed)."""
    with open(path, encoding="utf-8") as fh:
        names = []
        for ln in fh:
            ln = ln.strip()
            if not ln or ln.startswith("#"):
                continue
            names.append(ln.rsplit("/", 1)[-1].replace("%2B", "+"))
        return names


def match_available(names: Iterable[str], t: Target, want_version: Optional[str] = None) -> Dict[str, Any]:
    tagset = target_tags(t)
    fits, near = [], []
    for n in names:
        if not n.endswith(".whl"):
            continue
        reasons = wheel_mismatches(n, t, want_version, tagset)
        if reasons and reasons[0].startswith(("not a valid", "package:")):
            continue
        (near if reasons else fits).append((n, reasons))
    if fits:
        best = max(fits, key=lambda x: parse_wheel_filename(x[0])[1])
        return {"best": best[0], "candidates": [f for f, _ in fits], "closest": []}
    near.sort(key=lambda x: (len(x[1]), -len(x[0])))
    return {"best": None, "candidates": [], "closest": [{"wheel": n, "mismatches": r} for n, r in near[:5]]}


# --------------------------------------------------------------------------------------
# source build sizing


def build_sizing(t: Target, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    env = env or {}
    cpus = max(1, t.cpus or 1)
    avail = t.available_gb
    threads_env = env.get("NVCC_THREADS")
    nvcc_threads = int(threads_env) if threads_env and threads_env.isdigit() else 4
    default_jobs = max(1, min(cpus // 2 or 1, int(avail / (GB_PER_JOB_THREAD * nvcc_threads)) if avail else cpus // 2 or 1))
    jobs_env = env.get("MAX_JOBS")
    planned_jobs = int(jobs_env) if jobs_env and jobs_env.isdigit() else default_jobs
    peak = planned_jobs * nvcc_threads * GB_PER_JOB_THREAD
    # recommendation: keep 20% headroom
    rec_threads, rec_jobs = 4, 1
    budget = (avail * 0.8) if avail else None
    for th in (4, 2, 1):
        j = max(1, min(cpus // 2 or 1, int(budget / (GB_PER_JOB_THREAD * th)) if budget else cpus // 2 or 1))
        rec_threads, rec_jobs = th, j
        if budget is None or j * th * GB_PER_JOB_THREAD <= budget:
            break
    rec_peak = rec_jobs * rec_threads * GB_PER_JOB_THREAD
    # flash-attn compiles per major family: "80" (SASS also runs on sm86/sm89), "90", "100", "110", "120"
    archs = sorted({str(int(c) * 10) for c in t.ccs if c >= 8.0}, key=int) or None
    n_archs = len(archs) if archs else len(FA_DEFAULT_ARCHS)
    parallel = max(1, min(cpus, rec_jobs * rec_threads))
    minutes = CORE_MINUTES_PER_ARCH * n_archs / parallel
    return {"cpus": cpus, "available_gb": avail, "nvcc_threads": nvcc_threads, "default_jobs": default_jobs,
            "planned_jobs": planned_jobs, "planned_peak_gb": peak,
            "fits": (avail is None) or peak <= avail,
            "max_jobs": rec_jobs, "rec_nvcc_threads": rec_threads, "rec_peak_gb": rec_peak,
            "rec_fits": (avail is None) or rec_peak <= avail,
            "archs": ";".join(archs) if archs else None,
            "minutes_low": max(2, int(minutes * 0.5)), "minutes_high": max(5, int(math.ceil(minutes * 1.5)))}


def source_build(t: Target, env: Optional[Dict[str, str]] = None, pip: str = "python -m pip",
                 version: Optional[str] = None, nvcc_ok: Optional[bool] = None) -> Dict[str, Any]:
    s = build_sizing(t, env)
    pkg = f"flash-attn=={version}" if version else "flash-attn"
    arch_env = f' FLASH_ATTN_CUDA_ARCHS="{s["archs"]}"' if s["archs"] else ""
    cmd = [f"{pip} install packaging ninja psutil wheel setuptools",
           f"MAX_JOBS={s['max_jobs']} NVCC_THREADS={s['rec_nvcc_threads']}{arch_env} "
           f"{pip} install {pkg} --no-build-isolation --no-cache-dir -v"]
    notes = [f"peak RAM ~{s['rec_peak_gb']:.0f} GB (MAX_JOBS {s['max_jobs']} x NVCC_THREADS {s['rec_nvcc_threads']} x ~{GB_PER_JOB_THREAD:.0f} GB)"
             + (f" of {s['available_gb']} GB available" if s["available_gb"] else "")]
    if not s["rec_fits"]:
        notes.append("even one job may not fit: add swap first (sudo fallocate -l 16G /swapfile && sudo chmod 600 /swapfile "
                     "&& sudo mkswap /swapfile && sudo swapon /swapfile)")
    notes.append(("archs limited to this machine's GPUs (flash-attn ignores TORCH_CUDA_ARCH_LIST)" if s["archs"]
                  else "no local sm80+ GPU: flash-attn builds all its default archs (%s)" % ",".join(FA_DEFAULT_ARCHS)))
    notes.append(f"honest time estimate: {s['minutes_low']}-{s['minutes_high']} minutes on {s['cpus']} CPUs")
    if nvcc_ok is False:
        notes.append("needs nvcc whose major version equals torch's CUDA: see `anyattn doctor` (cuda_home / nvcc checks)")
    return {"command": cmd, "notes": notes, "sizing": s}


# --------------------------------------------------------------------------------------
# plans


def _pip(facts, t: Optional[Target] = None) -> str:
    """`<this interpreter> -m pip` for this machine; plain `python -m pip` for recorded facts or another target."""
    if facts is not None and getattr(facts, "live", False) and not (t is not None and t.overridden):
        return f"{sys.executable} -m pip"
    return "python -m pip"


def cu_index_tag(cuda: Optional[str]) -> Optional[str]:
    if not cuda:
        return None
    v = Version(cuda)
    return f"cu{v.major}{v.minor}"


def plan_flash_attn(t: Target, version: Optional[str] = None, available: Optional[List[str]] = None,
                    facts=None, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    pip = _pip(facts, t)
    ver = version or DEFAULT_FA_VERSION
    out: Dict[str, Any] = {"package": "flash-attn", "version": ver, "target": _target_dict(t), "wheel": None,
                           "url": None, "compatible": False, "command": [], "reasons": []}
    if t.ccs and max(t.ccs) < 8.0:
        out["reasons"].append(f"no GPU here is sm80+ (have {', '.join(str(c) for c in t.ccs)}): FlashAttention-2 "
                              "will not run; anyattn uses another backend")
    name, why = fa_wheel_name(ver, t)
    out["reasons"] += why
    if t.ccs and max(t.ccs) >= 10.0:
        out["reasons"].append(f"Blackwell GPU (sm{int(max(t.ccs) * 10)}): a flash-attn 2 wheel runs only if it was built for "
                              "this architecture ('no kernel image is available' otherwise); FlashAttention-4 is the "
                              "native kernel here: anyattn plan flash-attn-4")
    if name:
        out["wheel"] = name
        out["url"] = FA_RELEASE_URL.format(version=ver, filename=name)
        mism = wheel_mismatches(name, t)
        out["compatible"] = not mism
        out["reasons"] += mism
        if t.cuda and Version(t.cuda).major >= 13 and name.split("+", 1)[1].startswith("cu12"):
            out["compatible"] = False
            out["reasons"].append(f"flash-attn {ver}'s setup.py maps CUDA {t.cuda} to a cu12 wheel, which needs "
                                  "libcudart.so.12: it will not load with a CUDA 13 torch; build from source or use a "
                                  "newer flash-attn")
        if out["compatible"]:
            out["reasons"].append("the name is what setup.py requests; the release may still lack this combination "
                                  "(check with --available)")
    if available is not None:
        m = match_available(available, t, version)
        out["available_match"] = m
        if m["best"]:
            out["wheel"] = m["best"]
            bv = parse_wheel_filename(m["best"])[1].public
            out["url"] = FA_RELEASE_URL.format(version=bv, filename=m["best"])
            out["compatible"] = True
            out["reasons"].append(f"best available match: {m['best']}")
        else:
            out["compatible"] = False
            out["reasons"].append("no available asset fits; closest:")
            for c in m["closest"]:
                out["reasons"].append(f"  {c['wheel']}: " + "; ".join(c["mismatches"]))
    if out["compatible"] and out["url"]:
        # GitHub serves the asset under the URL-encoded name ('+' -> %2B); uv and pip take it as is
        out["url"] = out["url"].replace("+", "%2B")
        out["command"] = [f"{pip} install --no-deps {out['url']}",
                          f"# uv: uv pip install --no-deps {out['url']}"]
    elif t.cuda:
        nvcc_ok = None
        if t.nvcc and t.cuda:
            nvcc_ok = Version(t.nvcc).major == Version(t.cuda).major
        sb = source_build(t, env, pip=pip, version=version, nvcc_ok=nvcc_ok)
        out["command"] = sb["command"]
        out["source_build"] = sb
        out["reasons"] += sb["notes"]
    return out


def plan_flashinfer(t: Target, version: Optional[str] = None, facts=None) -> Dict[str, Any]:
    pip = _pip(facts, t)
    pin = f"=={version}" if version else ""
    cu = cu_index_tag(t.cuda)
    out: Dict[str, Any] = {"package": "flashinfer", "version": version, "target": _target_dict(t), "wheel": None,
                           "compatible": bool(t.cuda), "command": [], "reasons": []}
    if not t.cuda:
        out["reasons"].append("FlashInfer needs a CUDA build of torch")
        return out
    if t.ccs and max(t.ccs) < 7.5:
        out["compatible"] = False
        out["reasons"].append("FlashInfer needs sm75+ (Turing or newer)")
    if version and Version(version) < Version("0.2.0"):
        out["command"] = [f"{pip} install flashinfer{pin} -i https://flashinfer.ai/whl/{cu}/torch{t.torch_mm}/"]
        out["reasons"].append("before 0.2 FlashInfer shipped torch/CUDA-specific wheels on its own index")
        return out
    out["command"] = [f"{pip} install flashinfer-python{pin} flashinfer-cubin{pin}",
                      f"{pip} install flashinfer-jit-cache{pin} --index-url https://flashinfer.ai/whl/{cu}"]
    out["reasons"] += [
        "flashinfer-python is pure Python: kernels come from flashinfer-cubin / flashinfer-jit-cache or are JIT-compiled",
        "the three packages must have the same version; flashinfer-jit-cache is built per CUDA version "
        f"(index {cu}); if the index has none for {cu}, kernels it lacks are JIT-compiled and need nvcc {t.cuda.split('.')[0]}.x "
        "with headers (cuda_fp8.h)"]
    if any(12.0 <= c < 13.0 for c in t.ccs) and Version(t.cuda) < Version("12.9"):
        out["compatible"] = False
        out["reasons"].append(f"SM 12.x GPU: FlashInfer needs CUDA >= 12.9 (torch has {t.cuda}); install torch for cu129/cu130 first")
    if not version:
        out["reasons"].append("pin one version for all three packages (`--version V`): PyPI has served flashinfer-python "
                              "0.7.2.post1 beside flashinfer-cubin 0.6.13; unpinned, pip mixes them and the import-time "
                              "version check fails")
    out["reasons"].append("JIT cache: $FLASHINFER_WORKSPACE_BASE/.cache/flashinfer (default ~/.cache/flashinfer); its JIT "
                          "uses CUDA_HOME's nvcc, whose major must equal torch's CUDA")
    if not t.nvcc:
        out["reasons"].append("no nvcc here: any kernel missing from the prebuilt packages will fail to JIT")
    return out


def plan_xformers(t: Target, version: Optional[str] = None, facts=None) -> Dict[str, Any]:
    pip = _pip(facts, t)
    pin = f"=={version}" if version else ""
    cu = cu_index_tag(t.cuda)
    out: Dict[str, Any] = {"package": "xformers", "version": version, "target": _target_dict(t), "wheel": None,
                           "compatible": bool(t.torch), "command": [], "reasons": []}
    if not t.torch:
        out["compatible"] = False
        out["reasons"].append("install torch first")
        return out
    tpub = t.torch.split("+")[0]
    if cu:
        out["command"] = [f"{pip} install xformers{pin} torch=={tpub} --index-url https://download.pytorch.org/whl/{cu}"]
    else:
        out["command"] = [f"{pip} install xformers{pin} torch=={tpub}"]
    out["reasons"] += [
        "each xFormers release is compiled against ONE torch release; the PyTorch index serves the build matching "
        "each torch. Pinning torch makes pip fail instead of silently replacing your torch",
        "if pip reports a conflict, no xFormers build exists for this torch: skip it (anyattn uses SDPA / flash-attn) "
        f"or build it: {pip} install -v --no-build-isolation -U git+https://github.com/facebookresearch/xformers.git@main#egg=xformers"]
    return out


FA4_DEFAULT_VERSION = "4.0.0b36"     # the release measured on the H200 machine (issue 8)
DSL_DEFAULT_VERSION = "4.8.1"       # nvidia-cutlass-dsl that release ran with
# CPython versions the CuTe DSL publishes compiled wheels for (its MLIR bindings are cpXY wheels);
# an assumption to revisit with each DSL release (docs/DOCTOR.md).
DSL_PYTHONS = ("3.10", "3.11", "3.12", "3.13")
DSL_PLATFORMS = ("x86_64", "aarch64")


def dsl_wheel_name(piece: str, version: str, t: Target) -> str:
    """The compiled CuTe DSL wheel a pip on target ``t`` would need (manylinux_2_28, cpXY)."""
    arch = t.platform.split("_", 1)[1] if t.platform.startswith("linux_") else t.platform
    return f"{piece.replace('-', '_')}-{version}-{t.cp}-{t.cp}-manylinux_2_28_{arch}.whl"


def plan_flash_attn4(t: Target, version: Optional[str] = None, facts=None) -> Dict[str, Any]:
    """FlashAttention-4: a prebuilt wheel; the CuTe DSL flavour that fits this driver and torch."""
    from . import stack as _stack
    pip = _pip(facts, t)
    ver = version or FA4_DEFAULT_VERSION
    flav, why = _stack.dsl_flavour(t.driver_cuda, t.cuda)
    req = f"flash-attn-4[cu13]=={ver}" if flav == "cu13" else f"flash-attn-4=={ver}"
    out: Dict[str, Any] = {"package": "flash-attn-4", "version": ver, "target": _target_dict(t),
                           "wheel": f"flash_attn_4-{ver}-py3-none-any.whl", "compatible": True, "command": [],
                           "reasons": [], "dsl_flavour": flav}
    out["reasons"].append(f"CuTe DSL flavour: {flav or 'none'} -- {why}")
    if flav is None:
        out["compatible"] = False
    if not t.platform.startswith("linux_") or t.platform.split("_", 1)[1] not in DSL_PLATFORMS:
        out["compatible"] = False
        out["reasons"].append(f"the CuTe DSL publishes Linux wheels ({', '.join(DSL_PLATFORMS)}) only; target is {t.platform}")
    if ".".join(t.python.split(".")[:2]) not in DSL_PYTHONS:
        out["compatible"] = False
        out["reasons"].append(f"no CuTe DSL wheel for Python {t.python} (published: {', '.join(DSL_PYTHONS)})")
    if t.ccs and not _stack.fa4_gpu_ok(t.ccs):
        out["compatible"] = False
        out["reasons"].append(f"FA4 runs on compute capability 8.x-12.x; this GPU is {', '.join(str(c) for c in t.ccs)}")
    if not t.cuda:
        out["compatible"] = False
        out["reasons"].append("FA4 needs a CUDA build of torch")
    base_name = dsl_wheel_name("nvidia-cutlass-dsl-libs-base", DSL_DEFAULT_VERSION, t)
    if t.platform.startswith("linux_"):
        tt = t
        if not t.glibc:  # a machine described by flags: say what is assumed (pass --glibc to check it)
            import dataclasses
            tt = dataclasses.replace(t, glibc="2.28", live_tags=None)
            out["reasons"].append("glibc unknown: assumed >= 2.28 (manylinux_2_28); pass --glibc X.Y to check")
        ok = bool({str(x) for x in parse_wheel_filename(base_name)[3]} & target_tags(tt))
        out["dsl_wheels"] = [base_name] + ([dsl_wheel_name(f"nvidia-cutlass-dsl-libs-{flav}", DSL_DEFAULT_VERSION, t)]
                                           if flav else [])
        out["reasons"].append(f"{base_name}: {'installs on the target (packaging.tags)' if ok else 'NOT accepted by the target interpreter (glibc older than 2.28?)'}")
        if not ok:
            out["compatible"] = False
    out["reasons"] += [
        "no nvcc, no CUDA_HOME, nothing to compile at install: kernels JIT-compile with the DSL's bundled compiler "
        "at first use (import ~8 s, first call of each variant 1.6-3.8 s; anyattn.warmup() does it up front)",
        "nvidia-cutlass-dsl is a meta-package: libs-base, libs-core and the libs-cu12/cu13 flavour must all be installed "
        "(never --no-deps), and into site-packages, not --target (its .pth puts dsl_packages on sys.path)",
        "FA4 shares the `flash_attn` package with flash-attn 2: if you keep both, install FA4 last"]
    if out["compatible"]:
        out["command"] = [f"{pip} install '{req}'",
                          "python -c \"import flash_attn.cute, cutlass.cute; print('FA4 ok')\"",
                          f"# uv: uv pip install '{req}'"]
    return out


def _target_dict(t: Target) -> Dict[str, Any]:
    d = asdict(t)
    d.pop("live_tags", None)
    return d


def plan(package: str, facts=None, version: Optional[str] = None, available_file: Optional[str] = None,
         **overrides) -> Dict[str, Any]:
    t = target_from_facts(facts, **overrides)
    env = dict(getattr(facts, "env", {}) or {}) if facts is not None else {}
    pkg = package.lower().replace("_", "-")
    if pkg in ("flash-attn", "flash-attention", "flashattention"):
        avail = read_available(available_file) if available_file else None
        out = plan_flash_attn(t, version, avail, facts=facts, env=env)
    elif pkg in ("flash-attn-4", "fa4", "flash-attn-cute", "flash_attn_4"):
        out = plan_flash_attn4(t, version, facts=facts)
    elif pkg in ("flashinfer", "flashinfer-python"):
        out = plan_flashinfer(t, version, facts=facts)
    elif pkg == "xformers":
        out = plan_xformers(t, version, facts=facts)
    else:
        raise ValueError(f"unknown package {package!r}: flash-attn, flash-attn-4, flashinfer or xformers")
    out["alternatives"] = no_install_alternatives(facts, t)
    # every plan starts with what already runs here with nothing to build (issue 11)
    from . import stack as _stack
    return {"runs_here": _stack.runs_here(facts) if facts is not None else [], **out}


def no_install_alternatives(facts, t: Target) -> Dict[str, Any]:
    """Backends that already run here (via the selector when planning for this machine)."""
    from . import report  # lazy: report has the shared backend summary
    if facts is not None:
        d = report.backend_summary(facts)  # about THIS machine (selector when live), whatever the target
        d["about"] = "this machine" if getattr(facts, "live", False) else "the machine of the recorded facts"
        return d
    return {"usable": [], "chosen": None, "note": "no facts: not evaluated"}
