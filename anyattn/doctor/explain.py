"""``anyattn explain``: recognise an install / build / import / runtime failure in a log.

The patterns, causes and fixes live in ONE data table (:mod:`.signatures`). This module
matches the table against a log, pulls out the specifics (symbol, wheel, versions), and
fills in causes and copy-paste fixes from this machine's facts. Unrecognised logs are
reported as such: no guessing.
"""

from __future__ import annotations

import re
import string
from typing import Any, Dict, List, Optional

from .signatures import SIGNATURES, VOCABULARY

_FLAGS = re.IGNORECASE | re.MULTILINE
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_COMPILED: List[Dict[str, Any]] = []

# CUDA toolkit major.minor -> minimum Linux driver (CUDA toolkit release notes, table 3).
CUDA_MIN_DRIVER = {
    "11.0": "450.36.06", "11.1": "455.23.05", "11.2": "460.27.03", "11.3": "465.19.01", "11.4": "470.42.01",
    "11.5": "495.29.05", "11.6": "510.39.01", "11.7": "515.43.04", "11.8": "520.61.05",
    "12.0": "525.60.13", "12.1": "530.30.02", "12.2": "535.54.03", "12.3": "545.23.06", "12.4": "550.54.14",
    "12.5": "555.42.02", "12.6": "560.28.03", "12.8": "570.26", "12.9": "575.51.03",
    "13.0": "580.65.06", "13.1": "590.44.01", "13.2": "595.45.04",
}
# minor-version compatibility: any CUDA major.x runs on a driver >= this (PTX JIT / new features may not)
CUDA_MINOR_COMPAT_DRIVER = {"11": "450.80.02", "12": "525.60.13", "13": "580.65.06"}


def _compiled() -> List[Dict[str, Any]]:
    if not _COMPILED:
        for sig in SIGNATURES:
            assert sig["id"] in VOCABULARY, sig["id"]
            rules = []
            for r in sig["rules"]:
                rules.append({"all": [re.compile(p, _FLAGS) for p in r.get("all", [])],
                              "any": [re.compile(p, _FLAGS) for p in r.get("any", [])],
                              "none": [re.compile(p, _FLAGS) for p in r.get("none", [])]})
            _COMPILED.append({"sig": sig, "rules": rules})
    return _COMPILED


def _line_at(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    line = text[start:end if end >= 0 else None].strip()
    return line if len(line) <= 400 else line[:400] + "..."


# Prefixes that build systems and log collectors put before every line; stripped so that a bare
# "Killed" from a docker build ("#12 845.3 Killed") or a timestamped CI log still reads as one.
_LINE_PREFIXES = re.compile(
    r"^(?:"
    r"#\d+ \d+(?:\.\d+)? "                                         # buildkit --progress=plain: "#12 845.3 "
    r"|\s*\d+\.\d+ {1,12}(?=[A-Za-z#\[/(~<-])"                       # buildkit without the step: "272.6 "
    r"|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)? "  # CI / ISO timestamps
    r"|\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[^\]]*\] "                 # [2025-12-11 03:56:16 TP0] (SGLang)
    r"|\(\w+ pid=\d+\) (?:\w+ \d\d-\d\d \d\d:\d\d:\d\d \[[^\]]+\] )?"   # (EngineCore pid=1) ERROR 10-27 ... [core.py:708]
    r"|\[(?:stage-\d+|builder|build|base)[^\]]*\] "                     # [builder 3/5]
    r"|[\w.-]+\s+\| "                                                # docker compose: "api-1  | "
    r"|E\s{3,}"                                                       # pytest captured output "E     "
    r")+", re.MULTILINE)


def normalise(text: str) -> str:
    """The log without ANSI colours and per-line prefixes (timestamps, build steps)."""
    return _LINE_PREFIXES.sub("", _ANSI.sub("", (text or "").replace("\r\n", "\n")))


def match(text: str) -> List[Dict[str, Any]]:
    """Raw matches: [{"id", "title", "line", "line_no", "extracted"}], most specific first.

    Every cause found is listed (not only the first), each with its own evidence line; entries of
    one ``group`` (the undefined-symbol family) yield only their most specific member."""
    text = normalise(text)
    out = []
    groups_seen = set()
    for entry in _compiled():
        grp = entry["sig"].get("group")
        if grp and grp in groups_seen:
            continue
        for rule in entry["rules"]:
            found: List[re.Match] = []
            ok = True
            for rx in rule["all"]:
                m = rx.search(text)
                if not m:
                    ok = False
                    break
                found.append(m)
            if not ok:
                continue
            if any(rx.search(text) for rx in rule["none"]):
                continue
            if rule["any"]:
                hits = [m for m in (rx.search(text) for rx in rule["any"]) if m]
                if not hits:
                    continue
                found = hits + found
            groups: Dict[str, str] = {}
            for m in found:
                for k, v in m.groupdict().items():
                    if v and k not in groups:
                        groups[k] = v.strip()
            # the evidence: the line that carries the specifics, else the cause itself (an ``all``
            # pattern such as the bare "Killed"), not the context that only confirms it (``any``)
            primary = found[len(found) - len(rule["all"])] if rule["all"] and rule["any"] else \
                (min(found, key=lambda m: m.start()) if found else None)
            keym = primary if rule["all"] else \
                next((m for m in found if m.groupdict() and any(m.groupdict().values())), primary)
            if grp:
                groups_seen.add(grp)
            out.append({"id": entry["sig"]["id"], "title": entry["sig"]["title"],
                        "line": _line_at(text, keym.start()) if keym else "",
                        "line_no": text.count("\n", 0, keym.start()) + 1 if keym else None, "extracted": groups})
            break
    # Several causes: in the order the log shows them (the first error is usually the root cause, later
    # ones its consequences); causes evidenced on the same line keep the table's order (most specific first).
    for rank, r in enumerate(out):
        r["_rank"] = rank
    out.sort(key=lambda r: (r["line_no"] or 0, r["_rank"]))
    for r in out:
        r.pop("_rank", None)
    return out


class _Fill(dict):
    def __missing__(self, key):  # unknown placeholder: say so rather than crash
        return "<" + key + ">"


def _vers(v: Optional[str]):
    from packaging.version import InvalidVersion, Version
    try:
        return Version(str(v).split("+")[0]) if v else None
    except InvalidVersion:
        return None


def machine_context(facts) -> Dict[str, Any]:
    """Values the fix templates use, computed from facts (this machine's, or recorded ones)."""
    from . import plan as _plan
    ctx: Dict[str, Any] = {}
    if facts is None:
        return ctx
    t = facts.torch or {}
    ctx["pip"] = _plan._pip(facts)
    ctx["torch_version"] = t.get("version") or "(torch not installed)"
    ctx["torch_version_public"] = (t.get("version") or "").split("+")[0] or "<torch version>"
    tv = _vers(t.get("version"))
    ctx["torch_mm"] = f"{tv.major}.{tv.minor}" if tv else "?"
    cuda = t.get("cuda")
    cv = _vers(cuda)
    ctx["torch_cuda"] = cuda or "none (CPU build)"
    ctx["torch_cuda_major"] = str(cv.major) if cv else "?"
    ctx["torch_cuda_dash"] = f"{cv.major}-{cv.minor}" if cv else "12-8"
    ctx["cu_tag"] = f"cu{cv.major}{cv.minor}" if cv else "cpu"
    abi = t.get("cxx11_abi")
    ctx["abi"] = "TRUE" if abi else ("FALSE" if abi is not None else "?")
    ctx["torch_abi_int"] = "1" if abi else ("0" if abi is not None else "?")
    tk = facts.toolkit or {}
    ctx["cuda_home"] = tk.get("cuda_home") or "(unset)"
    ctx["cuda_home_suggest"] = suggest_cuda_home(facts) or f"/usr/local/cuda-{cv.major}.{cv.minor}" if cv else \
        (suggest_cuda_home(facts) or "/usr/local/cuda")
    ctx["nvcc_fact"] = tk.get("nvcc_version") or "none"
    ctx["pip_nvcc_pkg"] = pip_nvcc_package(cuda)
    tgt = _plan.target_from_facts(facts)
    sz = _plan.build_sizing(tgt, facts.env or {})
    ctx["max_jobs"] = sz["max_jobs"]
    ctx["nvcc_threads"] = sz["rec_nvcc_threads"]
    ctx["archs"] = sz["archs"] or ";".join(_plan.FA_DEFAULT_ARCHS)
    ctx["gb_per_job"] = int(_plan.GB_PER_JOB_THREAD * sz["nvcc_threads"])
    ctx["jobs_clause"] = (
        (f"here MAX_JOBS={sz['planned_jobs']} x NVCC_THREADS={sz['nvcc_threads']} would need ~{sz['planned_peak_gb']:.0f} GB "
         f"but only {sz['available_gb']} GB are available. ") if not sz["fits"] else
        (f"the failing build ran more jobs than fit the RAM it had (on these facts: {sz['available_gb']} GB available, "
         f"{sz['cpus']} CPUs). "))
    ctx["jobs_clause"] += (f"MAX_JOBS={sz['max_jobs']} NVCC_THREADS={sz['rec_nvcc_threads']} keeps the peak near "
                           f"{sz['rec_peak_gb']:.0f} GB.")
    fa = _plan.plan_flash_attn(tgt, facts=facts, env=facts.env or {})
    ctx["fa_wheel_url"] = fa["url"] if fa.get("compatible") and fa.get("url") else \
        ("flash-attn  # no prebuilt wheel fits this torch: this builds from source, see `anyattn plan flash-attn`")
    fi = (facts.packages or {}).get("flashinfer-python") or {}
    ctx["flashinfer_version"] = fi.get("version") or "<flashinfer-python version>"
    ctx["glibcxx_max"] = (facts.libstdcxx or {}).get("max") or "?"
    ctx["glibc"] = (facts.os or {}).get("libc_version") or "?"
    gpus = facts.gpus or []
    ctx["gpu_names"] = ", ".join(sorted({g.get("name", "?") for g in gpus})) or "no GPU visible"
    ctx["gpu_ccs"] = ", ".join(sorted({str(g.get("cc")) for g in gpus})) or "?"
    sup = [str(g.get("index")) for g in sorted(gpus, key=lambda g: g.get("pci_bus_id") or "")
           if _cc(g) and _cc(g) >= 8.0]
    ctx["supported_gpu_indices"] = ",".join(sup) if sup else "<none: no sm80+ GPU>"
    ctx["min_driver"] = min_driver(cuda) or "?"
    pv = (facts.python or {}).get("version") or "?"
    ctx["python_version"] = pv
    ctx["python_mm"] = ".".join(pv.split(".")[:2])
    ctx["cp"] = "cp" + "".join(pv.split(".")[:2])
    try:
        from . import stack as _stack
        ctx["cute_dsl_requirement"] = _stack.fa4_requirement(facts)
    except Exception:  # noqa: BLE001 - the stack module must never break explain
        ctx["cute_dsl_requirement"] = "flash-attn-4"
    ctx["driver"] = (facts.driver or {}).get("version") or "?"
    return ctx


def _cc(g) -> Optional[float]:
    try:
        return float(g.get("cc"))
    except (TypeError, ValueError):
        return None


def min_driver(cuda: Optional[str]) -> Optional[str]:
    v = _vers(cuda)
    if not v:
        return None
    key = f"{v.major}.{v.minor}"
    if key in CUDA_MIN_DRIVER:
        return CUDA_MIN_DRIVER[key]
    # unknown minor: the closest lower known one of the same major
    same = [k for k in CUDA_MIN_DRIVER if k.split(".")[0] == str(v.major) and _vers(k) <= v]
    return CUDA_MIN_DRIVER[max(same, key=_vers)] if same else None


def pip_nvcc_package(cuda: Optional[str]) -> str:
    v = _vers(cuda)
    if not v:
        return "nvidia-cuda-nvcc-cu12"
    return "nvidia-cuda-nvcc" if v.major >= 13 else f"nvidia-cuda-nvcc-cu{v.major}"


def suggest_cuda_home(facts) -> Optional[str]:
    """A toolkit on this machine with nvcc and headers whose major matches torch's CUDA, if any."""
    tk = facts.toolkit or {}
    tv = _vers((facts.torch or {}).get("cuda"))
    cands = [{"path": tk.get("cuda_home"), "nvcc_version": tk.get("nvcc_version"), "headers": tk.get("headers") or {}}]
    cands += tk.get("candidates") or []
    good = [c for c in cands if c.get("path") and c.get("nvcc_version") and (c.get("headers") or {}).get("cuda_runtime.h")]
    if tv:
        same = [c for c in good if _vers(c["nvcc_version"]).major == tv.major]
        same.sort(key=lambda c: (abs(_vers(c["nvcc_version"]).minor - tv.minor)))
        return same[0]["path"] if same else None
    return good[0]["path"] if good else None


def cuda_home_fix_lines(facts, ctx: Dict[str, Any]) -> List[str]:
    home = suggest_cuda_home(facts) if facts is not None else None
    if home:
        return [f"export CUDA_HOME={home} PATH={home}/bin:$PATH", "nvcc --version && ls $CUDA_HOME/include/cuda_fp8.h"]
    cuda = ctx.get("torch_cuda", "12.8")
    dash = ctx.get("torch_cuda_dash", "12-8")
    pipn = ctx.get("pip_nvcc_pkg", "nvidia-cuda-nvcc-cu12")
    mm = cuda if cuda and cuda[0].isdigit() else "12.8"
    return [f"# install a devel toolkit (nvcc + headers) matching torch's CUDA {cuda}, one of:",
            f"sudo apt-get install cuda-toolkit-{dash}      # NVIDIA apt repo; the 'cuda-runtime' packages have no nvcc",
            f"conda install -c nvidia cuda-toolkit={mm}",
            f"{ctx.get('pip', 'python -m pip')} install '{pipn}=={mm}.*'   # nvcc only, no cuda_fp8.h / cuda_runtime.h",
            f"export CUDA_HOME=/usr/local/cuda-{mm} PATH=/usr/local/cuda-{mm}/bin:$PATH"]


# header family -> (what ships it, the install command template)
_HEADER_SOURCES = (
    (("cudnn",), "cuDNN ships its headers separately from the toolkit",
     "{pip} install 'nvidia-cudnn-cu{torch_cuda_major}'   # headers in site-packages/nvidia/cudnn/include; or: sudo apt-get install libcudnn9-dev-cuda-{torch_cuda_major}"),
    (("nccl",), "NCCL ships its headers separately from the toolkit",
     "sudo apt-get install libnccl-dev   # or: {pip} install 'nvidia-nccl-cu{torch_cuda_major}' and add its include/ to CPATH"),
    (("cublas", "cusparse", "cusolver", "curand", "cufft"), "the math libraries' -dev packages (headers) are not installed",
     "sudo apt-get install cuda-libraries-dev-{torch_cuda_dash}   # cuBLAS/cuSPARSE/cuSOLVER/cuRAND/cuFFT headers"),
)


def header_hint(header: str, ctx: Dict[str, Any]) -> Dict[str, str]:
    """Why a CUDA header is missing and what installs it, by header family."""
    h = (header or "").lower()
    for keys, why, cmd in _HEADER_SOURCES:
        if h.startswith(keys):
            return {"header_reason": why + " (a runtime-only CUDA, or a toolkit whose library dev packages are missing).",
                    "header_install": string.Formatter().vformat(cmd, (), _Fill(ctx))}
    reason = ("a runtime-only CUDA, a pip/conda toolkit without its dev headers, or CUDA_HOME pointing at the wrong "
              "directory.")
    if h == "cuda_fp8.h":
        reason += " cuda_fp8.h exists only in CUDA >= 11.8."
    return {"header_reason": reason,
            "header_install": string.Formatter().vformat(
                "sudo apt-get install cuda-toolkit-{torch_cuda_dash}   # or: conda install -c nvidia cuda-toolkit={torch_cuda}",
                (), _Fill(ctx))}


def _enrich(mid: str, ex: Dict[str, str], ctx: Dict[str, Any], facts) -> Dict[str, Any]:
    """Id-specific values for the templates: reasoning about the extracted specifics + facts."""
    v: Dict[str, Any] = {}
    if mid == "abi_mismatch":
        sym = ex.get("symbol", "")
        sym_new = "cxx11" in sym
        v["symbol_abi"] = "new (cxx11)" if sym_new else "old (pre-C++11)"
        tabi = ((facts.torch or {}).get("cxx11_abi") if facts is not None else None)
        if tabi is None:
            v["abi_relation"] = ""
        elif bool(tabi) != sym_new:
            v["abi_relation"] = (f"Here torch {ctx.get('torch_version')} uses _GLIBCXX_USE_CXX11_ABI={ctx.get('torch_abi_int')}, "
                                 f"so you need a cxx11abi{ctx.get('abi')} build.")
        else:
            v["abi_relation"] = (f"This machine's torch {ctx.get('torch_version')} uses that same ABI, so the log probably comes "
                                 f"from another environment; there, install the build matching its torch's ABI.")
    elif mid == "vllm_fa_not_built":
        v["name_clause"] = f", e.g. {ex['name']}" if ex.get("name") else ""
        v["module_or_name"] = ex.get("module") or "vllm.vllm_flash_attn"
    elif mid == "xformers_built_for_other_torch":
        cl = (((facts.packages or {}).get("xformers") or {}).get("cpp_lib") or {}).get("version", {}) if facts else {}
        v.setdefault("built_torch", ex.get("built_torch") or cl.get("torch") or "another release")
        bc = str(ex.get("built_cuda") or cl.get("cuda") or "?")
        v["built_cuda"] = f"{int(bc) // 100}.{int(bc) % 100}" if bc.isdigit() and len(bc) >= 3 else bc  # 1208 -> 12.8
        v.setdefault("have_torch", ex.get("have_torch") or ctx.get("torch_version", "?"))
    elif mid == "flashinfer_jit":
        v["header_clause"] = f" ({ex['header']} was not found)" if ex.get("header") else ""
    elif mid == "glibcxx_too_old":
        v["binary_or_ext"] = ex.get("binary") or "The binary"
        v["needed"] = ex.get("needed", "")
        v["needed_glibc"] = ex.get("needed_glibc", "")
    elif mid == "cuda_runtime_lib_missing":
        lib = ex.get("lib", "")
        tail = lib.split(".so", 1)[1].lstrip(".") if ".so" in lib else ""
        major = tail.split(".")[0] if tail else ""
        tmaj = ctx.get("torch_cuda_major")
        if lib.startswith("libcuda.so"):
            v["lib_reason"] = ("libcuda comes from the NVIDIA driver, which is not installed or not visible "
                               "(containers need --gpus all / the NVIDIA container toolkit; WSL has it in /usr/lib/wsl/lib).")
            v["lib_fix"] = "nvidia-smi   # must work first; in WSL: export LD_LIBRARY_PATH=/usr/lib/wsl/lib:$LD_LIBRARY_PATH"
        elif major and major.isdigit() and lib.startswith(("libcudart", "libcublas", "libnvrtc", "libcusparse",
                                                           "libcufft", "libcurand", "libcusolver", "libnvJitLink")) \
                and tmaj and tmaj.isdigit() and major != tmaj:
            v["lib_reason"] = (f"the binary was built for CUDA {major} but this torch uses CUDA {ctx.get('torch_cuda')}: "
                               f"install the build of the package made for CUDA {tmaj} (e.g. cu{tmaj}).")
            v["lib_fix"] = f"anyattn plan flash-attn   # then: {ctx.get('pip')} install --no-deps --force-reinstall <that wheel>"
        else:
            pipn = f"nvidia-cuda-runtime-cu{major}" if major and major.isdigit() and int(major) < 13 else "nvidia-cuda-runtime"
            v["lib_reason"] = ("the CUDA libraries that torch's pip wheel brings (nvidia-* packages) are missing, "
                               "or the system toolkit's lib64 is not on LD_LIBRARY_PATH.")
            v["lib_fix"] = (f"{ctx.get('pip')} install {pipn}   # or: export LD_LIBRARY_PATH="
                            f"{ctx.get('cuda_home_suggest')}/lib64:$LD_LIBRARY_PATH")
    elif mid == "driver_too_old":
        v["symbol_clause"] = (f"{ex['symbol']} is a CUDA driver API function that the loaded driver (or the CUDA it was "
                              "linked against, e.g. CUDA 11 for a CUDA 12 API such as cuTensorMap*) does not provide. "
                              if ex.get("symbol") else "")
        dc = ex.get("driver_cuda")
        if dc and dc.isdigit():
            n = int(dc)
            v["driver_cuda_or_fact"] = f"{n // 1000}.{(n % 1000) // 10}"
        else:
            v["driver_cuda_or_fact"] = (facts.driver or {}).get("cuda") if facts and (facts.driver or {}).get("cuda") else "an older version"
        dcv = _vers(v["driver_cuda_or_fact"]) if v["driver_cuda_or_fact"][0].isdigit() else None
        if dcv:
            v["driver_cuda_tag"] = "118" if dcv.major == 11 else ("126" if dcv < _vers("12.8") else f"{dcv.major}{dcv.minor}")
        else:
            v["driver_cuda_tag"] = "118"
    elif mid == "torch_version_skew":
        v["skew_what"] = (f"{ex['symbol']} (a torch C++ symbol)" if ex.get("symbol") else
                          f"{ex.get('lib')} (a library of torch < 1.13)")
    elif mid == "hollow_install":
        mod = ex.get("module", "")
        guess = "flash-attn"
        for pre, dist in (("xformers", "xformers"), ("flashinfer", "flashinfer-python"), ("vllm", "vllm"),
                          ("sgl_kernel", "sgl-kernel"), ("flash_attn_3", "flash-attn-3")):
            if mod.startswith(pre):
                guess = dist
        v["dist_guess"] = guess
    elif mid == "gpu_arch_unsupported":
        need = ex.get("need") or ex.get("need_sm") or ex.get("sm") or ex.get("arch")
        v["need_clause"] = f" (the message names {need})" if need else ""
    elif mid == "nvcc_torch_cuda_mismatch":
        v["nvcc"] = ex.get("nvcc") or ex.get("nvcc_minor") or ctx.get("nvcc_fact")
        v["nvcc_minor"] = ""
        v["torch_cuda_log_or_fact"] = ex.get("torch_cuda_log") or ctx.get("torch_cuda")
        nv = _vers(v["nvcc"])
        v["nvcc_cu_tag"] = f"cu{nv.major}{nv.minor}" if nv else "cuXXX"
    elif mid == "missing_cuda_headers":
        v.update(header_hint(ex.get("header", ""), ctx))
    elif mid == "cuda_home_missing":
        v["cuda_home_fix"] = "\n".join(cuda_home_fix_lines(facts, ctx))
    elif mid == "flashinfer_version_skew":
        fv = ex.get("fi_version") or ctx.get("flashinfer_version") or "<flashinfer-python version>"
        v["fi_version_public"] = fv.split("+")[0] if not fv.startswith("0.0.0") else ctx.get("flashinfer_version", fv)
        v["pkg"] = ex.get("pkg") or "flashinfer-cubin"
        v["other_version"] = ex.get("other_version") or "(another version)"
        v["fi_version"] = fv
    elif mid == "cute_dsl_mismatch":
        v["module"] = ex.get("module") or ""
        v["symbol"] = ex.get("symbol") or ""
        if not v["module"] and not v["symbol"]:
            v["module"] = "part of the CuTe DSL"
        v["cute_dsl_requirement"] = ctx.get("cute_dsl_requirement", "flash-attn-4")
        st = (getattr(facts, "stack", None) or {}) if facts is not None else {}
        off = [d for d in st.get("dsl_packages_dirs") or [] if d not in (st.get("dsl_packages_on_sys_path") or [])]
        v["dsl_packages_dir"] = off[0] if off else "<target>/nvidia_cutlass_dsl/dsl_packages"
    elif mid == "flash_attn_namespace_clash":
        v["module"] = ex.get("module") or "flash_attn.cute"
    elif mid == "rocm_cuda_wheel":
        v["lib"] = ex.get("lib") or ""
        v["wheel"] = ex.get("wheel") or ""
        if not v["lib"] and not v["wheel"]:
            v["lib"] = "a CUDA-only build"
    elif mid in ("python_headers_missing", "wrong_python"):
        v["header"] = ex.get("header") or "Python.h"
        v["symbol"] = ex.get("symbol") or ""
        v["built_python"] = (" (built for Python %s)" % ex["built_python"]) if ex.get("built_python") else ""
    elif mid == "cuda_runtime_too_old":
        v["lib_or_cuda"] = ex.get("lib") or "CUDA library"
    elif mid == "gpu_newer_than_wheel":
        v["cute_dsl_requirement"] = ctx.get("cute_dsl_requirement", "flash-attn-4")
        v["new_gpu_or_fact"] = ex.get("new_gpu") or ctx.get("gpu_names", "?")
        ccs = [c for c in (facts.capabilities if facts is not None else []) if c >= 10.0]
        fam = sorted({str(int(c) * 10) for c in ccs}) or ["100", "120"]
        v["archs"] = ";".join(fam)
        v["arch_list"] = ";".join(f"{int(a) // 10}.{int(a) % 10}" for a in fam)
    elif mid == "libcuda_missing":
        pass
    elif mid == "wheel_tag_mismatch":
        from urllib.parse import unquote
        whl = unquote(ex.get("wheel", ""))  # %2B in URLs
        v["wheel"] = whl
        v["wheel_package"] = "flash-attn"
        v["tag_reasons"] = "its tags do not match this interpreter"
        v["wheel_fix"] = "# pick a wheel whose tags include one of: " + ", ".join(
            ((facts.python or {}).get("tags") or [])[:3]) if facts else ""
        try:
            from packaging.utils import parse_wheel_filename
            from . import plan as _plan
            name, _ver, _b, wtags = parse_wheel_filename(whl)
            v["wheel_package"] = str(name)
            if facts is not None:
                t = _plan.target_from_facts(facts)
                if str(name) == "flash-attn":
                    reasons = _plan.wheel_mismatches(whl, t)
                else:
                    ok = {str(x) for x in wtags} & _plan.target_tags(t)
                    reasons = [] if ok else [f"tags {', '.join(sorted(str(x) for x in wtags))} vs this "
                                             f"{t.cp} / {t.platform}"]
                v["tag_reasons"] = "; ".join(reasons) or "it matches this machine; the log came from another one"
                if str(name) == "flash-attn":
                    fa = _plan.plan_flash_attn(t, facts=facts, env=facts.env or {})
                    v["wheel_fix"] = "\n".join(fa["command"])
        except Exception as e:  # noqa: BLE001 - unparsable name in a log
            v["tag_reasons"] = f"the name does not parse as a wheel ({e})"
    return v


# Failures of building or installing a kernel package: their explanation starts with what already
# runs here with nothing to build (anyattn's Triton kernels, cuDNN through torch, FA4 from a wheel).
BUILD_FAILURE_IDS = frozenset((
    "cuda_home_missing", "build_isolation", "wheel_tag_mismatch", "abi_mismatch", "torch_version_skew", "build_oom",
    "missing_cuda_headers", "nvcc_torch_cuda_mismatch", "gpu_arch_unsupported", "vllm_fa_not_built", "flashinfer_jit",
    "xformers_built_for_other_torch", "hollow_install", "glibcxx_too_old", "cuda_runtime_lib_missing",
    "python_headers_missing", "gpu_newer_than_wheel", "wrong_python", "undefined_symbol", "cuda_runtime_too_old"))


def rerank(raw: List[Dict[str, Any]], facts) -> List[Dict[str, Any]]:
    """Use the machine's facts where the log alone cannot tell two causes apart.

    A CUDA library missing on a ROCm torch is the ROCm machine holding a CUDA build; `no kernel
    image` on a Blackwell GPU is a wheel older than the GPU; `flash_attn_2_cuda` missing while
    flash-attn-4 is installed is the shared `flash_attn` package."""
    if facts is None or not raw:
        return raw
    by_id = {s["id"]: s for s in SIGNATURES}
    t = facts.torch or {}
    first = raw[0]
    new_id = None
    if t.get("hip") and first["id"] in ("cuda_runtime_lib_missing", "libcuda_missing", "cuda_home_missing",
                                         "nvcc_torch_cuda_mismatch", "hollow_install"):
        new_id = "rocm_cuda_wheel"
    elif first["id"] == "gpu_arch_unsupported" and "no kernel image" in first["line"] and \
            any(c >= 10.0 for c in facts.capabilities):
        new_id = "gpu_newer_than_wheel"
    elif first["id"] == "hollow_install" and first["extracted"].get("module") == "flash_attn_2_cuda" and \
            (facts.pkg("flash-attn-4") if hasattr(facts, "pkg") else None):
        new_id = "flash_attn_namespace_clash"
    if new_id and all(r["id"] != new_id for r in raw):
        ex = dict(first["extracted"])
        if new_id == "gpu_newer_than_wheel":
            ex.setdefault("new_gpu", ", ".join(sorted({g.get("name", "?") for g in facts.gpus})))
        raw = [{"id": new_id, "title": by_id[new_id]["title"], "line": first["line"], "line_no": first.get("line_no"),
                "extracted": ex, "from_facts": True}] + raw
    return raw


def explain_text(text: str, facts=None) -> Dict[str, Any]:
    """Recognise ``text``; return {"recognised", "matches": [{"id","title","cause","fix","evidence"}], ...}.

    Several causes are listed in order (most specific first), each with its own evidence line."""
    raw = rerank(match(text), facts)
    ctx = machine_context(facts) if facts is not None else {}
    matches = []
    by_id = {s["id"]: s for s in SIGNATURES}
    for r in raw:
        sig = by_id[r["id"]]
        vals = _Fill(ctx)
        vals.update(r["extracted"])
        vals.update(_enrich(r["id"], r["extracted"], ctx, facts))
        fmt = string.Formatter()
        cause = fmt.vformat(sig["cause"], (), vals)
        fix: List[str] = []
        for line in sig["fix"]:
            fix.extend(fmt.vformat(line, (), vals).split("\n"))
        ev_facts = {}
        if facts is not None:
            ev_facts = {"torch": ctx.get("torch_version"), "torch_cuda": ctx.get("torch_cuda"),
                        "cxx11_abi": ctx.get("abi"), "nvcc": ctx.get("nvcc_fact"), "cuda_home": ctx.get("cuda_home"),
                        "gpus": ctx.get("gpu_names"), "python": (facts.python or {}).get("version")}
        matches.append({"id": r["id"], "title": sig["title"], "cause": cause, "fix": fix,
                        "evidence": {"line": r["line"], "line_no": r.get("line_no"), "extracted": r["extracted"],
                                     "facts": ev_facts, "from_facts": bool(r.get("from_facts"))}})
    lines = (text or "").count("\n") + (1 if text else 0)
    runs = []
    if matches and matches[0]["id"] in BUILD_FAILURE_IDS and facts is not None:
        from . import stack as _stack
        runs = _stack.runs_here(facts)
    return {"recognised": bool(matches), "runs_here": runs, "matches": matches, "lines": lines,
            "message": None if matches else
            ("Not recognised: none of the %d known failure signatures matches this log. anyattn does not guess; "
             "run `anyattn doctor` for this machine's state, and please report the log." % len(SIGNATURES))}


def classify(text: str) -> Optional[str]:
    """The most specific explain id for ``text`` (no facts needed), or None."""
    m = match(text)
    return m[0]["id"] if m else None
