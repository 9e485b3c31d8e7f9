"""Checks: pure functions of :class:`~anyattn.doctor.facts.Facts` -> findings.

Every finding has a stable ``id``, a ``severity`` (error / warning / info), a ``title``, the
``evidence`` (the facts it used), ``why`` it matters, and a ``fix`` written as copy-paste
commands for the machine the facts describe. Checks never touch the machine: they are
tested with fact sets recorded elsewhere (tests/doctor/facts/).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

from packaging.version import InvalidVersion, Version

from . import explain as _explain
from . import plan as _plan
from .facts import Facts

SEVERITIES = ("error", "warning", "info")


@dataclass
class Finding:
    id: str
    severity: str
    title: str
    evidence: Dict[str, Any] = field(default_factory=dict)
    why: str = ""
    fix: List[str] = field(default_factory=list)
    subject: Optional[str] = None  # the package / GPU the finding is about, when there are several

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


CHECKS: List[Callable[[Facts, Dict[str, Any]], List[Finding]]] = []


def check(fn):
    CHECKS.append(fn)
    return fn


def _v(s) -> Optional[Version]:
    try:
        return Version(str(s).split("+")[0]) if s else None
    except InvalidVersion:
        return None


def _cc(g) -> Optional[float]:
    try:
        return float(g.get("cc"))
    except (TypeError, ValueError):
        return None


def _is_linux(f: Facts) -> bool:
    return f.system == "Linux"


def _cuda_torch(f: Facts) -> bool:
    return bool((f.torch or {}).get("cuda"))


def _build_likely(f: Facts) -> bool:
    """Would someone on this machine plausibly compile a CUDA extension? (a GPU and a CUDA torch)"""
    return bool(f.gpus) and _cuda_torch(f)


# ------------------------------------------------------------------ platform


@check
def check_platform(f: Facts, ctx) -> List[Finding]:
    out = []
    if f.system == "Darwin":
        out.append(Finding("macos_no_cuda", "info", "macOS: no CUDA, so no flash-attn / FlashInfer / xFormers CUDA kernels",
                           {"os": f.os.get("platform"), "mps_available": f.torch.get("mps_available")},
                           "NVIDIA kernels cannot run on macOS. PyTorch's scaled_dot_product_attention runs on CPU and "
                           "on Apple GPUs through MPS, and anyattn uses it with nothing to install.",
                           [f"{ctx.get('pip', 'python -m pip')} uninstall -y flash-attn xformers   # if a build was attempted",
                            "python -c \"import torch; print(torch.backends.mps.is_available())\""]))
    elif f.system == "Windows":
        out.append(Finding("windows_wheels", "info", "Windows: flash-attn publishes no official Windows wheels",
                           {"os": f.os.get("platform"), "python": f.python.get("version"), "torch": f.torch.get("version")},
                           "Building flash-attn on Windows needs MSVC + a CUDA toolkit and takes hours; community-built "
                           "wheels exist for common torch/CUDA/Python combinations. SDPA works with nothing to install.",
                           ["# a community wheel matching torch %s / CUDA %s / %s:" % (ctx.get("torch_mm"), ctx.get("torch_cuda"), _plan.Target(python=".".join(f.python.get("version", "3.11").split(".")[:2])).cp),
                            "# https://github.com/bdashore3/flash-attention/releases  (pip install <the .whl URL>)",
                            "# or run under WSL2, where the Linux wheels work"]))
    if f.os.get("wsl"):
        out.append(Finding("wsl", "info", "WSL2: the GPU driver comes from Windows",
                           {"kernel": f.os.get("release")},
                           "Inside WSL the NVIDIA driver is the Windows one (libcuda in /usr/lib/wsl/lib). Installing a "
                           "Linux driver, or the `cuda` / `cuda-drivers` meta-packages, breaks it; install only a toolkit.",
                           ["ls /usr/lib/wsl/lib/libcuda.so*",
                            f"sudo apt-get install cuda-toolkit-{ctx.get('torch_cuda_dash', '12-8')}   # from NVIDIA's wsl-ubuntu repo; never cuda-drivers"]))
    return out


# ------------------------------------------------------------------ torch / GPU / driver


@check
def check_torch(f: Facts, ctx) -> List[Finding]:
    t = f.torch or {}
    if t.get("version"):
        return []
    if t.get("error"):
        return [Finding("torch_import_failed", "error", "torch is installed but fails to import",
                        {"error": t.get("error")}, "Every attention backend needs torch.",
                        [f"{ctx.get('pip')} install --force-reinstall torch"] +
                        (_explain.explain_text(t["error"], f)["matches"][0]["fix"]
                         if _explain.match(t["error"]) else []))]
    return [Finding("torch_missing", "error", "torch is not installed", {"torch": None},
                    "anyattn and every attention backend need torch.",
                    [f"{ctx.get('pip')} install torch   # see https://pytorch.org/get-started/locally/ for the CUDA index"])]


def torch_index_for_driver(driver_cuda: Optional[str]) -> str:
    v = _v(driver_cuda)
    if not v:
        return "cu128"
    for need, tag in (("13.0", "cu130"), ("12.8", "cu128"), ("12.6", "cu126"), ("12.4", "cu124"), ("11.8", "cu118")):
        if v >= Version(need):
            return tag
    return "cu118"


@check
def check_gpu(f: Facts, ctx) -> List[Finding]:
    out = []
    t = f.torch or {}
    if f.system == "Darwin" or not t.get("version"):
        return out
    vis = f.env.get("CUDA_VISIBLE_DEVICES")
    if not f.gpus:
        if _cuda_torch(f) or vis in ("", "-1", "NoDevFiles"):
            out.append(Finding("no_gpu", "warning", "torch is a CUDA build but no NVIDIA GPU is visible",
                               {"torch": t.get("version"), "torch_cuda": t.get("cuda"), "CUDA_VISIBLE_DEVICES": vis,
                                "gpus_found_by": f.how.get("gpus")},
                               "The driver is missing or not exposed (containers need --gpus all), or CUDA_VISIBLE_DEVICES "
                               "hides every GPU. anyattn will run SDPA on the CPU.",
                               ["nvidia-smi", "unset CUDA_VISIBLE_DEVICES   # if it is empty or -1",
                                "# docker: run with --gpus all (NVIDIA container toolkit)"]))
        else:
            out.append(Finding("no_gpu", "info", "No NVIDIA GPU visible: CUDA attention kernels cannot run here",
                               {"torch": t.get("version"), "torch_cuda": t.get("cuda"), "gpus_found_by": f.how.get("gpus")},
                               "flash-attn, FlashInfer and xFormers' CUDA kernels need an NVIDIA GPU. anyattn uses "
                               "PyTorch SDPA on the CPU; nothing to install.", []))
        return out
    if not t.get("cuda") and not t.get("hip"):
        idx = torch_index_for_driver(f.driver.get("cuda"))
        out.append(Finding("torch_cpu_only_with_gpu", "error", "CPU-only torch on a machine with an NVIDIA GPU",
                           {"torch": t.get("version"), "gpus": [g.get("name") for g in f.gpus],
                            "driver": f.driver.get("version"), "driver_cuda": f.driver.get("cuda")},
                           "A +cpu torch cannot use the GPU; every CUDA backend is unusable and extension builds fail.",
                           [f"{ctx.get('pip')} install --force-reinstall torch --index-url https://download.pytorch.org/whl/{idx}"]))
        return out
    if vis in ("", "-1", "NoDevFiles"):
        out.append(Finding("cuda_visible_devices_empty", "warning", "CUDA_VISIBLE_DEVICES hides every GPU",
                           {"CUDA_VISIBLE_DEVICES": vis, "gpus": [g.get("name") for g in f.gpus]},
                           "torch sees no device although the driver lists GPUs.", ["unset CUDA_VISIBLE_DEVICES"]))
    elif t.get("cuda") and not t.get("cuda_available"):
        out.append(Finding("torch_cuda_unavailable", "error", "torch cannot use the GPU (torch.cuda.is_available() is False)",
                           {"torch": t.get("version"), "torch_cuda": t.get("cuda"), "driver": f.driver.get("version"),
                            "driver_cuda": f.driver.get("cuda"), "error": t.get("cuda_error")},
                           "Usually the driver is older than torch's CUDA needs (see driver_too_old), or the device "
                           "nodes are not exposed to this process.",
                           ["nvidia-smi", "python -c \"import torch; torch.cuda.init()\"   # prints the real reason"]))
    return out


@check
def check_driver(f: Facts, ctx) -> List[Finding]:
    t = f.torch or {}
    drv = (f.driver or {}).get("version")
    cuda = t.get("cuda")
    if not drv or not cuda or not f.gpus:
        return []
    need = _explain.min_driver(cuda)
    compat = _explain.CUDA_MINOR_COMPAT_DRIVER.get(cuda.split(".")[0])
    dv = _v(drv)
    ev = {"driver": drv, "driver_cuda": f.driver.get("cuda"), "torch_cuda": cuda, "min_driver": need,
          "minor_compat_driver": compat}
    fix = [f"# upgrade the NVIDIA driver to >= {need}, or install torch for an older CUDA:",
           f"{ctx.get('pip')} install --force-reinstall torch --index-url https://download.pytorch.org/whl/"
           f"{torch_index_for_driver(f.driver.get('cuda'))}"]
    if compat and dv and dv < _v(compat):
        return [Finding("driver_too_old", "error", f"Driver {drv} is too old for torch's CUDA {cuda}", ev,
                        f"CUDA {cuda.split('.')[0]}.x needs driver >= {compat} even with minor-version compatibility; "
                        "torch.cuda fails with 'CUDA driver version is insufficient'.", fix)]
    if need and dv and dv < _v(need):
        return [Finding("driver_too_old", "warning", f"Driver {drv} is older than CUDA {cuda}'s own ({need})", ev,
                        "Runs under minor-version compatibility, but PTX JIT and newer runtime features fail "
                        "(e.g. Triton or JIT-compiled kernels: 'the provided PTX was compiled with an unsupported toolchain').",
                        fix)]
    return []


def _arch_covers(arch_list: List[str], cc: float) -> bool:
    """Does torch's arch list have kernels that run on compute capability ``cc``?"""
    major, minor = int(cc), int(round((cc - int(cc)) * 10))
    for a in arch_list:
        kind, _, num = a.partition("_")
        num = num.rstrip("af")
        if not num.isdigit():
            continue
        am, an = int(num[:-1]), int(num[-1])
        if kind == "sm" and am == major and an <= minor:
            return True  # SASS runs on the same major, equal or higher minor
        if kind == "compute" and (am, an) <= (major, minor):
            return True  # PTX JIT-compiles forward
    return False


@check
def check_torch_arch(f: Facts, ctx) -> List[Finding]:
    al = (f.torch or {}).get("arch_list") or []
    if not al or not f.gpus:
        return []
    out = []
    for g in f.gpus:
        cc = _cc(g)
        if cc and not _arch_covers(al, cc):
            out.append(Finding("gpu_arch_unsupported", "error",
                               f"torch {f.torch.get('version')} has no kernels for {g.get('name')} (sm_{int(cc*10)})",
                               {"gpu": g.get("name"), "cc": g.get("cc"), "torch_arch_list": al},
                               "CUDA calls fail with 'no kernel image is available for execution on the device'.",
                               [f"# pick the torch build whose arch list includes sm_{int(cc*10)} (newer CUDA for new GPUs, "
                                "older for Pascal/Maxwell):",
                                f"{ctx.get('pip')} install --force-reinstall torch --index-url https://download.pytorch.org/whl/"
                                f"{'cu128' if cc >= 10 else 'cu126'}"], subject="torch"))
    return out


@check
def check_mixed_gpus(f: Facts, ctx) -> List[Finding]:
    ccs = [(g, _cc(g)) for g in f.gpus if _cc(g)]
    if len(ccs) < 2:
        return []
    good = [g for g, c in ccs if c >= 8.0]
    bad = [g for g, c in ccs if c < 8.0]
    if not good or not bad:
        if len({c for _, c in ccs}) > 1:
            return [Finding("mixed_gpus", "info", "GPUs of different architectures",
                            {"gpus": [(g.get("index"), g.get("name"), g.get("cc"), g.get("pci_bus_id")) for g, _ in ccs]},
                            "CUDA orders devices fastest-first by default, nvidia-smi by PCI bus id: indices differ "
                            "unless CUDA_DEVICE_ORDER=PCI_BUS_ID.", ["export CUDA_DEVICE_ORDER=PCI_BUS_ID"])]
        return []
    order = sorted(good, key=lambda g: g.get("pci_bus_id") or "")
    idx = ",".join(str(g.get("index")) for g in order)
    return [Finding("mixed_gpus", "warning", "Mixed GPUs: some cannot run FlashAttention-2 (needs sm80+)",
                    {"supported": [(g.get("index"), g.get("name"), g.get("cc"), g.get("pci_bus_id")) for g in good],
                     "unsupported": [(g.get("index"), g.get("name"), g.get("cc"), g.get("pci_bus_id")) for g in bad],
                     "CUDA_DEVICE_ORDER": f.env.get("CUDA_DEVICE_ORDER"), "CUDA_VISIBLE_DEVICES": f.env.get("CUDA_VISIBLE_DEVICES")},
                    "A process that lands on an older GPU gets 'FlashAttention only supports Ampere GPUs or newer'. "
                    "CUDA's default order (fastest first) differs from nvidia-smi's, so pin by PCI bus id.",
                    [f"export CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES={idx}"])]


# ------------------------------------------------------------------ toolkit


def _candidates_with_headers(f: Facts) -> List[Dict[str, Any]]:
    return [c for c in (f.toolkit or {}).get("candidates") or []
            if c.get("nvcc") and (c.get("headers") or {}).get("cuda_runtime.h")]


@check
def check_toolkit(f: Facts, ctx) -> List[Finding]:
    if not _is_linux(f) and f.system != "Windows":
        return []
    tk = f.toolkit or {}
    relevant = _build_likely(f) or bool(tk.get("nvcc")) or bool(tk.get("cuda_home_env"))
    if not relevant:
        return []
    sev = "warning" if _build_likely(f) else "info"
    home = tk.get("cuda_home")
    fixlines = _explain.cuda_home_fix_lines(f, ctx)
    ev = {"cuda_home": home, "found_by": tk.get("found_by"), "nvcc": tk.get("nvcc"),
          "nvcc_version": tk.get("nvcc_version"), "CUDA_HOME": tk.get("cuda_home_env"), "pip_nvcc": tk.get("pip_nvcc"),
          "other_toolkits": [c.get("path") for c in tk.get("candidates") or []]}
    if tk.get("cuda_home_env") and not tk.get("exists"):
        return [Finding("cuda_home_wrong", "error", f"CUDA_HOME={tk.get('cuda_home_env')} does not exist", ev,
                        "torch.utils.cpp_extension, flash-attn's setup.py and FlashInfer's JIT trust CUDA_HOME first.",
                        fixlines)]
    if not home:
        return [Finding("cuda_home_missing", sev, "No CUDA toolkit: CUDA_HOME unset and no nvcc", ev,
                        "Source builds (flash-attn, xFormers, vLLM) and FlashInfer's JIT need nvcc and the CUDA headers; "
                        "torch's pip wheels bring only the CUDA *runtime* libraries. Builds fail with "
                        "'CUDA_HOME environment variable is not set'.", fixlines)]
    if not tk.get("nvcc"):
        return [Finding("runtime_only_cuda", sev, f"{home} has CUDA libraries but no nvcc (runtime-only CUDA)", ev,
                        "A runtime install (cuda-runtime / cuda-libraries packages, 'runtime' container images) can run "
                        "CUDA programs but not compile them: no bin/nvcc, no headers such as cuda_fp8.h. The *devel* "
                        "toolkit (cuda-toolkit-X-Y, '-devel' images) has both.", fixlines)]
    hdr = tk.get("headers") or {}
    missing = [h for h in ("cuda_runtime.h", "cuda.h", "cuda_fp8.h") if not hdr.get(h)]
    if missing:
        better = _candidates_with_headers(f)
        nv = _v(tk.get("nvcc_version"))
        why = (f"A build with CUDA_HOME={home} fails with 'fatal error: {missing[0]}: No such file or directory'.")
        if "cuda_fp8.h" in missing and len(missing) == 1 and nv and nv < Version("11.8"):
            why += " cuda_fp8.h exists only in CUDA >= 11.8 (FlashInfer and FP8 kernels need it): this toolkit is too old."
        if better:
            b = better[0]["path"]
            title = (f"CUDA_HOME resolves to {home} ({tk.get('found_by')}), which lacks {', '.join(missing)}; "
                     f"the toolkit in {b} has them")
            ev["complete_toolkit"] = b
            return [Finding("cuda_home_wrong", sev, title, ev,
                            why + " torch takes dirname(dirname(which nvcc)), so an nvcc wrapper or symlink outside the "
                            "toolkit makes the wrong directory CUDA_HOME.",
                            [f"export CUDA_HOME={b} PATH={b}/bin:$PATH"])]
        return [Finding("cuda_headers_missing", sev, f"CUDA headers missing under {home}: {', '.join(missing)}", ev,
                        why, fixlines)]
    return []


@check
def check_nvcc_vs_torch(f: Facts, ctx) -> List[Finding]:
    tk = f.toolkit or {}
    nv, tc = _v(tk.get("nvcc_version")), _v((f.torch or {}).get("cuda"))
    if not nv or not tc:
        return []
    ev = {"nvcc": tk.get("nvcc"), "nvcc_version": tk.get("nvcc_version"), "torch_cuda": f.torch.get("cuda"),
          "cuda_home": tk.get("cuda_home")}
    same = [c for c in (tk.get("candidates") or []) if _v(c.get("nvcc_version")) and _v(c["nvcc_version"]).major == tc.major]
    fix = ([f"export CUDA_HOME={same[0]['path']} PATH={same[0]['path']}/bin:$PATH"] if same else
           [f"sudo apt-get install cuda-toolkit-{tc.major}-{tc.minor}   # or: conda install -c nvidia cuda-toolkit={tc.major}.{tc.minor}",
            f"export CUDA_HOME=/usr/local/cuda-{tc.major}.{tc.minor} PATH=/usr/local/cuda-{tc.major}.{tc.minor}/bin:$PATH",
            f"# nvcc alone from pip: {ctx.get('pip')} install '{_explain.pip_nvcc_package(f.torch.get('cuda'))}=={tc.major}.{tc.minor}.*'",
            f"# or a torch built for CUDA {nv.major}.{nv.minor}:",
            f"{ctx.get('pip')} install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu{nv.major}{nv.minor}"])
    if nv.major != tc.major:
        return [Finding("nvcc_torch_cuda_mismatch", "error" if _build_likely(f) else "warning",
                        f"nvcc {nv.major}.{nv.minor} vs torch built with CUDA {tc.major}.{tc.minor}: source builds will fail",
                        ev, f"torch.utils.cpp_extension stops with 'The detected CUDA version ({nv.major}.{nv.minor}) "
                        f"mismatches the version that was used to compile PyTorch ({tc.major}.{tc.minor})'.", fix)]
    if nv.minor != tc.minor:
        return [Finding("nvcc_torch_cuda_minor_mismatch", "warning",
                        f"nvcc {nv.major}.{nv.minor} vs torch's CUDA {tc.major}.{tc.minor} (minor differs)", ev,
                        "Builds proceed with a warning; the result usually works, but an nvcc newer than the driver "
                        "supports can emit PTX the driver cannot load.", fix)]
    return []


@check
def check_build_prereqs(f: Facts, ctx) -> List[Finding]:
    mods = (f.build or {}).get("modules") or {}
    missing = [m for m, v in mods.items() if v is None]
    # the ninja module is not needed if a ninja binary is on PATH
    if "ninja" in missing and (f.build or {}).get("ninja_bin"):
        missing.remove("ninja")
    if not missing or f.system == "Darwin":
        return []
    return [Finding("build_prereqs_missing", "warning" if _build_likely(f) else "info",
                    f"Build prerequisites missing: {', '.join(missing)}",
                    {"modules": mods, "ninja_bin": (f.build or {}).get("ninja_bin")},
                    "flash-attn's setup.py imports packaging/psutil/torch before pip can install build requirements "
                    "('No module named packaging'); without ninja the build is serial and takes hours. Build with "
                    "--no-build-isolation so the build sees these and your torch.",
                    [f"{ctx.get('pip')} install {' '.join(missing)}"] +
                    ([f"MAX_JOBS={ctx.get('max_jobs')} {ctx.get('pip')} install flash-attn --no-build-isolation"]
                     if _build_likely(f) else []))]


@check
def check_build_memory(f: Facts, ctx) -> List[Finding]:
    if not _build_likely(f):
        return []
    fa = f.pkg("flash-attn")
    fa_ok = fa and (fa.get("probe") or {}).get("ok", True)
    env_jobs = f.env.get("MAX_JOBS")
    t = _plan.target_from_facts(f)
    s = _plan.build_sizing(t, f.env)
    out = []
    ev = {k: s[k] for k in ("cpus", "available_gb", "nvcc_threads", "planned_jobs", "planned_peak_gb", "max_jobs",
                            "rec_nvcc_threads", "rec_peak_gb", "archs")}
    ev["MAX_JOBS"] = env_jobs
    arch = f' FLASH_ATTN_CUDA_ARCHS="{s["archs"]}"' if s["archs"] else ""
    cmd = (f"MAX_JOBS={s['max_jobs']} NVCC_THREADS={s['rec_nvcc_threads']}{arch} {ctx.get('pip')} install flash-attn "
           "--no-build-isolation --no-cache-dir")
    if not s["fits"] and (not fa_ok or env_jobs):
        out.append(Finding("build_oom_risk", "warning",
                           f"A flash-attn source build with MAX_JOBS={s['planned_jobs']} would need ~{s['planned_peak_gb']:.0f} GB "
                           f"(available: {s['available_gb']} GB)", ev,
                           "Each nvcc job takes ~5 GB per NVCC thread; past the RAM the OOM killer stops the compiler "
                           "('Killed', exit code 137) after up to an hour of work.",
                           [cmd] + ([] if s["rec_fits"] else ["# even one job is tight: add swap first"])))
    elif not fa_ok:
        out.append(Finding("build_sizing", "info", f"If you build flash-attn here: MAX_JOBS={s['max_jobs']} "
                           f"NVCC_THREADS={s['rec_nvcc_threads']}, about {s['minutes_low']}-{s['minutes_high']} min", ev,
                           "Sized for this machine's RAM and CPUs; archs limited to the local GPUs.", [cmd]))
    if f.env.get("TORCH_CUDA_ARCH_LIST") and not f.env.get("FLASH_ATTN_CUDA_ARCHS"):
        out.append(Finding("flash_attn_archs_ignored", "info",
                           "TORCH_CUDA_ARCH_LIST is set but flash-attn ignores it (uses FLASH_ATTN_CUDA_ARCHS)",
                           {"TORCH_CUDA_ARCH_LIST": f.env.get("TORCH_CUDA_ARCH_LIST"), "local_archs": s["archs"]},
                           "Since 2023 flash-attn's setup.py reads FLASH_ATTN_CUDA_ARCHS; without it every default arch is "
                           "compiled (several times the build time).",
                           [f'export FLASH_ATTN_CUDA_ARCHS="{s["archs"] or "80;90"}"']))
    return out


@check
def check_glibcxx(f: Facts, ctx) -> List[Finding]:
    libs = (f.libstdcxx or {}).get("libs") or []
    if len(libs) < 2 or not libs[0].get("max"):
        return []
    first = libs[0]
    best = max((l for l in libs if l.get("max")), key=lambda l: _v(l["max"]))
    if _v(first["max"]) < _v(best["max"]) and first["path"].startswith((f.python or {}).get("prefix", "\0")):
        return [Finding("glibcxx_shadowed", "warning",
                        f"The environment's libstdc++ (GLIBCXX_{first['max']}) is older than the system's (GLIBCXX_{best['max']})",
                        {"env_lib": first, "system_lib": best},
                        "Extensions built with the newer compiler fail to load with \"version `GLIBCXX_3.4.3x' not found\" "
                        "because the environment's older libstdc++ is found first.",
                        ["conda install -c conda-forge 'libstdcxx-ng>=12'",
                         f"# or: export LD_PRELOAD={best['path']}"])]
    return []


# ------------------------------------------------------------------ installed packages


def _probe_finding(name: str, p: Dict[str, Any], f: Facts) -> Optional[Finding]:
    probe = p.get("probe") or {}
    if not probe or probe.get("ok"):
        return None
    text = (probe.get("stderr") or "") + "\n" + (probe.get("error") or "")
    res = _explain.explain_text(text, f)
    ev = {"version": p.get("version"), "origin": p.get("origin"), "probe_error": probe.get("error"),
          "signal": probe.get("signal"), "timed_out": probe.get("timed_out")}
    if probe.get("timed_out"):
        return Finding("import_timeout", "error", f"{name} {p.get('version')}: importing it hangs", ev,
                       "The import did not finish within the probe timeout (CUDA init or a JIT compile hanging).",
                       [f"python -X importtime -c \"import {name.split('-')[0].replace('-', '_')}\""], subject=name)
    if res["matches"]:
        m = res["matches"][0]
        ev["explain_id"] = m["id"]
        ev["matched"] = m["evidence"]["line"]
        ev.update({k: v for k, v in m["evidence"]["extracted"].items()})
        return Finding(m["id"], "error", f"{name} {p.get('version')} fails to import: {m['title']}", ev,
                       m["cause"], m["fix"], subject=name)
    if probe.get("signal"):
        return Finding("import_crashed", "error", f"{name} {p.get('version')} crashes the interpreter on import ({probe['signal']})",
                       ev, "A native extension aborted while loading: usually a binary for another torch/CUDA.",
                       [f"{_plan._pip(f)} install --force-reinstall --no-deps {name}"], subject=name)
    return Finding("import_failed", "error", f"{name} {p.get('version')} fails to import (unrecognised error)", ev,
                   "The error does not match a known failure; it is shown as evidence.",
                   [f"python -c \"{(p.get('probe_stmt') or 'import ' + name.replace('-', '_'))}\""], subject=name)


@check
def check_imports(f: Facts, ctx) -> List[Finding]:
    out = []
    for name, p in (f.packages or {}).items():
        if not p.get("installed"):
            continue
        fi = _probe_finding(name, p, f)
        if fi:
            out.append(fi)
    return out


@check
def check_flash_attn(f: Facts, ctx) -> List[Finding]:
    out = []
    fa = f.pkg("flash-attn")
    ccs = f.capabilities
    if fa:
        ver = _v(fa.get("version"))
        probe = fa.get("probe") or {}
        if (not probe or probe.get("ok")) and fa.get("n_extensions") == 0 and not (fa.get("origin") or {}).get("editable") \
                and "extensions" in fa:
            out.append(Finding("hollow_install", "error", f"flash-attn {fa.get('version')} is installed without flash_attn_2_cuda",
                               {"version": fa.get("version"), "extensions": fa.get("extensions"), "origin": fa.get("origin")},
                               "Its RECORD lists no compiled module: `import flash_attn` fails with No module named "
                               "'flash_attn_2_cuda'.",
                               [f"{ctx.get('pip')} uninstall -y flash-attn", "anyattn plan flash-attn"], subject="flash-attn"))
        if ccs and max(ccs) < 8.0:
            out.append(Finding("gpu_arch_unsupported", "warning",
                               f"flash-attn is installed but no GPU here is sm80+ ({ctx.get('gpu_names')})",
                               {"gpus": [(g.get("name"), g.get("cc")) for g in f.gpus], "flash_attn": fa.get("version")},
                               "FlashAttention-2 supports Ampere and newer; on T4 (sm75) / V100 (sm70) it raises "
                               "'FlashAttention only supports Ampere GPUs or newer'. anyattn falls back to SDPA "
                               "(memory-efficient kernel) or xFormers.",
                               ["# nothing to do: anyattn picks a backend that runs here",
                                f"{ctx.get('pip')} uninstall -y flash-attn   # optional"], subject="flash-attn"))
        if ver and ver < Version("2.5.7"):
            out.append(Finding("flash_attn_too_old_paged_kv", "warning",
                               f"flash-attn {fa.get('version')} has no paged KV cache (needs >= 2.5.7)",
                               {"version": fa.get("version")},
                               "flash_attn_with_kvcache(block_table=...) arrived in 2.5.7; ExLlamaV2's dynamic generator and "
                               "paged-attention servers require it.",
                               [f"anyattn plan flash-attn --version {_plan.DEFAULT_FA_VERSION}"], subject="flash-attn"))
        elif ver and ver < Version("2.6.0"):
            out.append(Finding("flash_attn_too_old_softcap", "info",
                               f"flash-attn {fa.get('version')} has no softcap (needs >= 2.6)", {"version": fa.get("version")},
                               "Gemma-2 style logit soft-capping needs flash-attn >= 2.6; anyattn uses another backend for it.",
                               [f"anyattn plan flash-attn --version {_plan.DEFAULT_FA_VERSION}"], subject="flash-attn"))
    fa3 = f.pkg("flash-attn-3")
    if fa3 and ccs and not any(9.0 <= c < 10.0 for c in ccs):
        out.append(Finding("gpu_arch_unsupported", "warning", "FlashAttention-3 is installed but there is no Hopper (sm90) GPU",
                           {"gpus": [(g.get("name"), g.get("cc")) for g in f.gpus], "flash_attn_3": fa3.get("version")},
                           "FlashAttention-3 kernels are Hopper-only; anyattn uses FlashAttention-2 or SDPA elsewhere.",
                           ["# nothing to do: anyattn falls back"], subject="flash-attn-3"))
    return out


@check
def check_xformers(f: Facts, ctx) -> List[Finding]:
    xf = f.pkg("xformers")
    if not xf:
        return []
    cl = (xf.get("cpp_lib") or {}).get("version") or {}
    probe = xf.get("probe") or {}
    det = probe.get("details") or {}
    if probe and not probe.get("ok"):
        return []  # check_imports reports it
    t = f.torch or {}
    reasons = []
    bt, bpy = cl.get("torch"), cl.get("python")
    if bt and t.get("version") and _v(bt) and _v(t["version"]) and \
            (_v(bt).major, _v(bt).minor) != (_v(t["version"]).major, _v(t["version"]).minor):
        reasons.append(f"built for torch {bt}, this is {t['version']}")
    bc = cl.get("cuda")
    if bc and t.get("cuda"):
        bcs = f"{int(bc) // 100}.{int(bc) % 100}" if str(bc).isdigit() else str(bc)  # 1208 -> 12.8
        if _v(bcs) and _v(t["cuda"]) and _v(bcs).major != _v(t["cuda"]).major:
            reasons.append(f"built for CUDA {bcs}, torch has {t['cuda']}")
    if bpy and xf.get("n_extensions") and any(".cpython-" in e for e in xf.get("extensions") or []):
        py = (f.python or {}).get("version", "")
        if bpy.split(".")[:2] != py.split(".")[:2]:
            reasons.append(f"built for Python {bpy}, this is {py}")
    no_cpp = det.get("has_cpp") is False
    if not reasons and not no_cpp:
        return []
    warn_line = next((ln for ln in (probe.get("stderr") or "").splitlines() if "built for" in ln or "can't load" in ln), None)
    res = _explain.explain_text("xFormers can't load C++/CUDA extensions", f)
    fix = res["matches"][0]["fix"] if res["matches"] else []
    return [Finding("xformers_built_for_other_torch", "error",
                    f"xFormers {xf.get('version')} was built for another torch: its C++/CUDA ops do not load",
                    {"built_for": cl, "torch": t.get("version"), "has_cpp": det.get("has_cpp"),
                     "reasons": reasons, "warning": warn_line},
                    "xFormers imports, but memory_efficient_attention has no operator ('No operator found'); "
                    "anyattn skips xFormers here.", fix, subject="xformers")]


@check
def check_vllm(f: Facts, ctx) -> List[Finding]:
    vl = f.pkg("vllm")
    if not vl:
        return []
    probe = vl.get("probe") or {}
    if probe and not probe.get("ok"):
        return []  # check_imports classifies the real error
    d = vl.get("vllm_flash_attn") or {}
    if not d or (d.get("dir") and d.get("init") and d.get("compiled")):
        return []
    state = ("missing" if not d.get("dir") else "an empty namespace package (no __init__.py)" if not d.get("init")
             else "without its compiled _vllm_fa*_C module")
    res = _explain.explain_text("cannot import name 'flash_attn_varlen_func' from 'vllm.vllm_flash_attn'", f)
    return [Finding("vllm_fa_not_built", "error", f"vLLM {vl.get('version')}: vllm/vllm_flash_attn is {state}",
                    {"vllm_flash_attn": d, "origin": vl.get("origin")},
                    "vLLM's FLASH_ATTN backend fails with \"cannot import name 'flash_attn_varlen_func' from "
                    "'vllm.vllm_flash_attn'\": the vendored build is missing or stale (rebuild after pulling).",
                    res["matches"][0]["fix"] if res["matches"] else [], subject="vllm")]


def _local_cuda_tag(version: Optional[str]) -> Optional[str]:
    if not version or "+" not in version:
        return None
    loc = version.split("+", 1)[1]
    return loc if loc.startswith("cu") else None


@check
def check_flashinfer(f: Facts, ctx) -> List[Finding]:
    fi = f.pkg("flashinfer-python")
    if not fi:
        return []
    out = []
    cub, jit = f.pkg("flashinfer-cubin"), f.pkg("flashinfer-jit-cache")
    vers = {n: (p.get("version") or "").split("+")[0] for n, p in
            (("flashinfer-python", fi), ("flashinfer-cubin", cub), ("flashinfer-jit-cache", jit)) if p}
    if len(set(vers.values())) > 1:
        v = vers["flashinfer-python"]
        out.append(Finding("flashinfer_version_skew", "error", "FlashInfer packages have different versions",
                           {"versions": vers},
                           "flashinfer-cubin / flashinfer-jit-cache must equal flashinfer-python's version, or their kernels "
                           "are ignored (or mismatched) and FlashInfer JIT-compiles instead.",
                           [f"{ctx.get('pip')} install flashinfer-cubin=={v}",
                            f"{ctx.get('pip')} install flashinfer-jit-cache=={v} --index-url https://flashinfer.ai/whl/{ctx.get('cu_tag')}"],
                           subject="flashinfer"))
    tag = _local_cuda_tag(jit.get("version")) if jit else None
    tc = _v((f.torch or {}).get("cuda"))
    if tag and tc and tag[2:4] != str(tc.major)[:2]:
        out.append(Finding("flashinfer_jit_cache_cuda", "warning", f"flashinfer-jit-cache is {tag}, torch uses CUDA {tc}",
                           {"jit_cache": jit.get("version"), "torch_cuda": str(tc)},
                           "The AOT kernels were built for another CUDA major and may not load.",
                           [f"{ctx.get('pip')} install --force-reinstall flashinfer-jit-cache=={vers['flashinfer-python']} "
                            f"--index-url https://flashinfer.ai/whl/{ctx.get('cu_tag')}"], subject="flashinfer"))
    ccs = f.capabilities
    if ccs and max(ccs) < 7.5:
        out.append(Finding("gpu_arch_unsupported", "warning", "FlashInfer is installed but needs sm75+",
                           {"gpus": [(g.get("name"), g.get("cc")) for g in f.gpus]},
                           "FlashInfer kernels target Turing (sm75) and newer.", ["# nothing to do: anyattn falls back"],
                           subject="flashinfer"))
    if not cub and not jit:
        tk = f.toolkit or {}
        problems = []
        if not tk.get("nvcc"):
            problems.append("no nvcc")
        elif tc and _v(tk.get("nvcc_version")) and _v(tk["nvcc_version"]).major != tc.major:
            problems.append(f"nvcc {tk['nvcc_version']} vs torch CUDA {tc}")
        if tk.get("nvcc") and not (tk.get("headers") or {}).get("cuda_fp8.h"):
            problems.append("no cuda_fp8.h")
        if not (f.flashinfer or {}).get("jit_dir_writable", True):
            problems.append(f"JIT cache {f.flashinfer.get('jit_dir')} not writable")
        sev = "error" if problems and f.gpus else "info"
        out.append(Finding("flashinfer_no_prebuilt", sev,
                           "FlashInfer has no prebuilt kernels (flashinfer-cubin / flashinfer-jit-cache not installed)"
                           + (f": its JIT will fail ({', '.join(problems)})" if problems else ": kernels JIT-compile on first use"),
                           {"flashinfer": fi.get("version"), "nvcc": tk.get("nvcc_version"), "cuda_home": tk.get("cuda_home"),
                            "cuda_fp8.h": (tk.get("headers") or {}).get("cuda_fp8.h"), "jit_dir": f.flashinfer.get("jit_dir"),
                            "problems": problems},
                           "Without prebuilt kernels FlashInfer compiles each kernel with nvcc at first use (e.g. during "
                           "SGLang's CUDA-graph capture): that needs a full toolkit with headers and takes minutes; "
                           "failing that: 'fatal error: cuda_fp8.h: No such file or directory'.",
                           [f"{ctx.get('pip')} install flashinfer-cubin=={vers['flashinfer-python']}",
                            f"{ctx.get('pip')} install flashinfer-jit-cache=={vers['flashinfer-python']} "
                            f"--index-url https://flashinfer.ai/whl/{ctx.get('cu_tag')}"] +
                           (_explain.cuda_home_fix_lines(f, ctx) if problems else []), subject="flashinfer"))
    elif not (f.flashinfer or {}).get("jit_dir_writable", True):
        out.append(Finding("flashinfer_cache_unwritable", "warning", f"FlashInfer's JIT cache {f.flashinfer.get('jit_dir')} is not writable",
                           dict(f.flashinfer), "Any kernel missing from the prebuilt packages cannot be compiled and cached.",
                           ["export FLASHINFER_WORKSPACE_BASE=$HOME   # or a writable directory"], subject="flashinfer"))
    return out


@check
def check_triton(f: Facts, ctx) -> List[Finding]:
    tr = f.triton or {}
    kp = tr.get("kernel_probe")
    if not tr.get("installed") or not kp or kp.get("ok"):
        return []
    text = (kp.get("stderr") or "") + "\n" + (kp.get("error") or "")
    return [Finding("triton_broken", "warning", f"Triton {tr.get('version')} cannot compile and run a trivial kernel",
                    {"error": kp.get("error"), "ptxas": tr.get("ptxas"), "ptxas_version": tr.get("ptxas_version"),
                     "explain_id": _explain.classify(text)},
                    "Triton-based attention (and torch.compile) will fail; anyattn skips Triton kernels.",
                    [f"{ctx.get('pip')} install --force-reinstall triton   # the version your torch pins",
                     "export TRITON_PTXAS_PATH=$(which ptxas)   # if the bundled ptxas is too old for this GPU"],
                    subject="triton")]


@check
def check_verify_failures(f: Facts, ctx) -> List[Finding]:
    """Backends that failed `anyattn verify` here: automatic selection already skips them."""
    by_backend: Dict[str, List[Dict[str, Any]]] = {}
    for r in (f.verify or {}).get("failures", []):
        by_backend.setdefault(r.get("backend") or "?", []).append(r)
    out = []
    for name, rs in sorted(by_backend.items()):
        cells = ", ".join(f"{r.get('op')} {r.get('dtype')} {r.get('family')}" for r in rs)
        out.append(Finding("verify_failed", "warning",
                           f"{name} {rs[0].get('version') or ''} failed anyattn's self-test on this machine ({cells})",
                           {"failures": rs, "cache": (f.verify or {}).get("cache")},
                           "It can serve these calls on paper but gave wrong results or crashed here; automatic "
                           "selection skips it for them (a backend forced by name still runs).",
                           [f"anyattn verify --backend {name}   # again after upgrading {name}, torch or the driver",
                            f"anyattn which --backend {name}   # what it is still chosen for"],
                           subject=name))
    return out


# ------------------------------------------------------------------ driver


def run_checks(f: Facts) -> List[Finding]:
    """All findings for ``f``, most severe first. A crashing check becomes a finding, never an abort."""
    ctx = _explain.machine_context(f)
    out: List[Finding] = []
    for fn in CHECKS:
        try:
            out.extend(fn(f, ctx))
        except Exception as e:  # noqa: BLE001
            out.append(Finding("doctor_check_failed", "warning", f"Internal error in {fn.__name__}",
                               {"error": f"{type(e).__name__}: {e}"}, "A doctor bug; the other checks still ran.",
                               ["# please report this with `anyattn doctor --save-facts facts.json`"]))
    order = {s: i for i, s in enumerate(SEVERITIES)}
    out.sort(key=lambda x: order.get(x.severity, 9))
    # one finding per cause and package: an import probe and a fact check can name the same thing
    seen, uniq = set(), []
    for x in out:
        key = (x.id, x.subject.replace("-python", "") if x.subject else x.title)
        if key not in seen:
            seen.add(key)
            uniq.append(x)
    return uniq


def exit_code(findings: List[Finding]) -> int:
    return 1 if any(x.severity in ("error", "warning") for x in findings) else 0


# The new-stack checks (FA4 / CuTe DSL, FlashInfer 0.6-0.7, CUDA 13 wheels, ROCm, uv) register
# themselves with @check in their own module; imported last so they run after the ones above.
from . import checks_stack  # noqa: E402,F401
