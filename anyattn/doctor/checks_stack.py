"""Checks for today's stack (issue 11): FlashAttention-4 / CuTe DSL, FlashInfer 0.6-0.7 on SM 12.x,
flash-attn 2.8 wheels on CUDA 13 torch, ROCm machines holding CUDA builds, uv environments.

Kept apart from checks.py (same :func:`checks.check` registry, same Finding) so each module
stays small; every check is a pure function of facts, tested on recorded fact sets.
"""

from __future__ import annotations

from typing import Any, Dict, List

from . import stack as _stack
from .checks import Finding, _v, check
from .facts import Facts


def _versions(f: Facts) -> Dict[str, str]:
    return dict((f.stack or {}).get("versions") or {})


def _fa4(f: Facts):
    return f.pkg("flash-attn-4")


@check
def check_fa4_dsl(f: Facts, ctx) -> List[Finding]:
    """CuTe DSL flavour vs driver/torch, missing libs pieces, dsl_packages off sys.path, import time."""
    vers = _versions(f)
    if "nvidia-cutlass-dsl" not in vers and not _fa4(f):
        return []
    out: List[Finding] = []
    pip = ctx.get("pip", "python -m pip")
    drv, tcu = (f.driver or {}).get("cuda"), (f.torch or {}).get("cuda")
    want, why = _stack.dsl_flavour(drv, tcu)
    have = _stack.installed_flavours(vers)
    req = _stack.fa4_requirement(f)
    dsl_v = vers.get("nvidia-cutlass-dsl")
    ev = {"nvidia-cutlass-dsl": dsl_v, "flavours_installed": have, "driver_cuda": drv, "torch_cuda": tcu,
          "flash-attn-4": vers.get("flash-attn-4")}
    dm = _v(drv).major if _v(drv) else None
    too_new = [fl for fl in have if dm is not None and _stack.DSL_FLAVOURS[fl] > dm]
    if too_new:
        out.append(Finding("fa4_dsl_flavour_too_new", "error",
                           f"CuTe DSL flavour {', '.join(too_new)} needs a CUDA {_stack.DSL_FLAVOURS[too_new[0]]} driver; "
                           f"this driver supports CUDA {drv}", ev,
                           "The flavour's CUDA major must not exceed the driver's: FA4's JIT-compiled kernels fail to "
                           "load (CUDA_ERROR_UNSUPPORTED_PTX_VERSION / 'the provided PTX was compiled with an unsupported "
                           "toolchain'). " + why + ".",
                           [f"{pip} uninstall -y " + " ".join(f"nvidia-cutlass-dsl-libs-{x}" for x in too_new),
                            f"{pip} install --force-reinstall '{req}'   # the {want} flavour",
                            "# or upgrade the NVIDIA driver to a CUDA 13 one (>= 580)"], subject="nvidia-cutlass-dsl"))
    elif want == "cu13" and have == ["cu12"]:
        out.append(Finding("fa4_dsl_flavour", "info", "FA4 uses the CUDA 12 CuTe DSL flavour on a CUDA 13 stack", ev,
                           "nvidia-cutlass-dsl pulls the cu12 flavour by default; with a CUDA 13 driver and torch the "
                           "cu13 flavour is the extra `flash-attn-4[cu13]` (both work: the cu12 one runs on a CUDA 13 driver).",
                           [f"{pip} install '{req}'"], subject="nvidia-cutlass-dsl"))
    if dsl_v:
        missing = [p for p in _stack.DSL_PIECES if p not in vers]
        skew = {p: vers[p] for p in _stack.DSL_PIECES + tuple(f"nvidia-cutlass-dsl-libs-{x}" for x in have)
                if p in vers and vers[p] != dsl_v}
        if missing or not have:
            out.append(Finding("fa4_dsl_pieces_missing", "error",
                               f"nvidia-cutlass-dsl {dsl_v} is installed without "
                               f"{', '.join(missing + ([] if have else ['a libs-cu12/cu13 flavour']))}",
                               dict(ev, missing=missing),
                               "nvidia-cutlass-dsl is a meta-package: `cutlass.cute` and the MLIR bindings live in its "
                               "libs packages. Without them `import flash_attn.cute` fails with No module named 'cutlass.cute' "
                               "(an install with --no-deps, or a partial upgrade).",
                               [f"{pip} install --force-reinstall 'nvidia-cutlass-dsl=={dsl_v}' "
                                + " ".join(f"'{p}=={dsl_v}'" for p in missing)], subject="nvidia-cutlass-dsl"))
        if skew:
            out.append(Finding("fa4_dsl_pieces_skew", "error", f"CuTe DSL pieces of different versions (meta-package {dsl_v})",
                               dict(ev, versions=skew),
                               "The DSL's Python layer and its compiled MLIR libraries must come from one release "
                               "(undefined symbol: mlir..., missing cutlass.* modules).",
                               [f"{pip} install --force-reinstall 'nvidia-cutlass-dsl=={dsl_v}' "
                                + " ".join(f"'{p}=={dsl_v}'" for p in skew)], subject="nvidia-cutlass-dsl"))
    st = f.stack or {}
    dirs, on = st.get("dsl_packages_dirs") or [], st.get("dsl_packages_on_sys_path") or []
    if dirs and not on:
        out.append(Finding("fa4_dsl_not_on_sys_path", "error",
                           f"The CuTe DSL's dsl_packages directory is not on sys.path ({dirs[0]})",
                           {"dsl_packages_dirs": dirs, "cutlass_pth_files": st.get("cutlass_pth_files"),
                            "sys_path_head": (st.get("sys_path") or [])[:6]},
                           "nvidia-cutlass-dsl puts cutlass/ (with _mlir) under nvidia_cutlass_dsl/dsl_packages and adds "
                           "it to sys.path with a .pth file; `pip install --target DIR` (and PYTHONPATH-only setups) never "
                           "run .pth files, so `import cutlass` finds nothing or fails with No module named 'cutlass._mlir'.",
                           [f"export PYTHONPATH={dirs[0]}:$PYTHONPATH",
                            f"# or install normally into the environment: {pip} install '{req}'"], subject="nvidia-cutlass-dsl"))
    fa4 = _fa4(f)
    if fa4:
        ccs = f.capabilities
        if ccs and not _stack.fa4_gpu_ok(ccs):
            out.append(Finding("fa4_gpu_unsupported", "warning",
                               f"FlashAttention-4 is installed but no GPU here is sm80..sm12x ({ctx.get('gpu_names')})",
                               {"gpus": [(g.get("name"), g.get("cc")) for g in f.gpus], "flash-attn-4": fa4.get("version")},
                               "FA4's kernels exist for compute capability 8.x-12.x; anyattn falls back to another backend.",
                               ["# nothing to do: anyattn picks a backend that runs here",
                                f"{pip} uninstall -y flash-attn-4   # optional"], subject="flash-attn-4"))
        pr = fa4.get("probe") or {}
        secs = pr.get("seconds")
        if pr.get("ok") and secs and secs >= _stack.FA4_SLOW_IMPORT_S:
            out.append(Finding("fa4_import_slow", "info", f"`import flash_attn.cute` took {secs:.1f} s here",
                               {"import_seconds": secs, "flash-attn-4": fa4.get("version")},
                               "The CuTe DSL loads its MLIR compiler at import (~8 s), and the first call of each kernel "
                               "variant JIT-compiles (1.6-3.8 s). anyattn imports FA4 only when it is selected and "
                               "anyattn.warmup() moves the JIT out of the first request.",
                               ["python -c \"import anyattn; anyattn.warmup()\"   # at start-up, not per request"],
                               subject="flash-attn-4"))
    return out


@check
def check_fa_namespace(f: Facts, ctx) -> List[Finding]:
    """flash-attn 2 and flash-attn-4 both install the `flash_attn` package."""
    fa2, fa4 = f.pkg("flash-attn"), _fa4(f)
    if not (fa2 and fa4):
        return []
    if any((p.get("probe") or {}).get("ok") is False for p in (fa2, fa4)):
        return []  # check_imports already explains the failing import (same id when it is the clash)
    pip = ctx.get("pip", "python -m pip")
    return [Finding("flash_attn_namespace_clash", "warning",
                    f"flash-attn {fa2.get('version')} and flash-attn-4 {fa4.get('version')} share the `flash_attn` package",
                    {"flash-attn": fa2.get("version"), "flash-attn-4": fa4.get("version"),
                     "flash-attn location": fa2.get("location"), "flash-attn-4 location": fa4.get("location")},
                    "Both distributions write flash_attn/: whichever was installed last owns flash_attn/__init__.py, and "
                    "reinstalling flash-attn 2 can replace flash_attn/cute/ with a stub. anyattn counts each only when "
                    "its own module is there (flash_attn_2_cuda for FA2, flash_attn.cute for FA4).",
                    ["# keep both: install flash-attn 2 first, FA4 last (FA4 is prebuilt, seconds):",
                     f"{pip} install --force-reinstall --no-deps flash-attn-4",
                     "# or keep one: FA4 covers sm80..sm12x forward and backward",
                     f"{pip} uninstall -y flash-attn"], subject="flash_attn")]


@check
def check_flashinfer_new(f: Facts, ctx) -> List[Finding]:
    """FlashInfer on SM 12.x needs CUDA >= 12.9; where its JIT would compile and with which CUDA_HOME."""
    fi = f.pkg("flashinfer-python")
    if not fi:
        return []
    out: List[Finding] = []
    tc = _v((f.torch or {}).get("cuda"))
    sm12 = [g for g in f.gpus if str(g.get("cc") or "").startswith("12.")]
    if sm12 and tc and tc < _stack.FLASHINFER_SM12_MIN_CUDA:
        out.append(Finding("flashinfer_sm12_cuda", "error",
                           f"FlashInfer on {sm12[0].get('name')} (SM {sm12[0].get('cc')}) needs CUDA >= 12.9; torch uses CUDA {tc}",
                           {"gpu": sm12[0].get("name"), "cc": sm12[0].get("cc"), "torch_cuda": str(tc),
                            "flashinfer": fi.get("version")},
                           "FlashInfer's SM 12.x kernels (sm120a/sm121a) are compiled with CUDA 12.9+; with an older CUDA "
                           "its JIT rejects the architecture and no cubin matches.",
                           [f"{ctx.get('pip')} install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu129",
                            "anyattn plan flashinfer"], subject="flashinfer"))
    return out


@check
def check_cuda13_wheels(f: Facts, ctx) -> List[Finding]:
    """flash-attn 2.8.x wheels named cu12 on a CUDA 13 torch (predicted before importing)."""
    fa = f.pkg("flash-attn")
    tc = _v((f.torch or {}).get("cuda"))
    if not fa or not tc or tc.major < 13:
        return []
    loc = (fa.get("version") or "").partition("+")[2]
    wheel = (fa.get("origin") or {}).get("wheel") or ""
    tag = loc or (wheel.split("+", 1)[1] if "+" in wheel else "")
    if not tag.startswith("cu12"):
        return []
    probe = fa.get("probe") or {}
    if probe and not probe.get("ok"):
        return []  # check_imports already classified the real error
    return [Finding("flash_attn_cu12_on_cuda13", "error",
                    f"flash-attn {fa.get('version')} is a CUDA 12 build; torch uses CUDA {tc}",
                    {"flash-attn": fa.get("version"), "wheel": wheel or None, "torch_cuda": str(tc)},
                    "A cu12 wheel needs libcudart.so.12, which a CUDA 13 torch does not bring: import fails with "
                    "'libcudart.so.12: cannot open shared object file'. flash-attn 2.8.x releases up to 2.8.3 map every "
                    "CUDA >= 12 to cu12; a CUDA 13 wheel needs a release that names cu13 wheels.",
                    ["anyattn plan flash-attn", f"{ctx.get('pip')} uninstall -y flash-attn   # FA4 and cuDNN attention run here without it"],
                    subject="flash-attn")]


_CUDA_ONLY = ("flash-attn", "flash-attn-3", "flash-attn-4", "flashinfer-python", "flashinfer-cubin",
              "flashinfer-jit-cache", "xformers")


@check
def check_rocm(f: Facts, ctx) -> List[Finding]:
    """A ROCm torch with CUDA builds of attention packages."""
    t = f.torch or {}
    if not t.get("hip"):
        return []
    bad = []
    for name in _CUDA_ONLY:
        p = f.pkg(name)
        if not p or (p.get("probe") or {}).get("ok") is False:
            continue  # a failing import is explained by check_imports (re-ranked to rocm_cuda_wheel there)
        loc = (p.get("version") or "").partition("+")[2]
        if name in ("flash-attn-4", "flashinfer-python", "flashinfer-cubin", "flashinfer-jit-cache", "flash-attn-3") \
                or loc.startswith("cu") or any("cuda" in e for e in p.get("extensions") or []):
            if not loc.startswith("rocm"):
                bad.append(f"{name} {p.get('version')}")
    if not bad:
        return []
    return [Finding("rocm_cuda_wheel", "error", f"ROCm torch {t.get('version')} with CUDA builds: {', '.join(bad)}",
                    {"torch": t.get("version"), "hip": t.get("hip"), "cuda_builds": bad},
                    "CUDA wheels cannot load on ROCm (libcudart / flash_attn_2_cuda); FlashAttention-4 and FlashInfer "
                    "have no ROCm support. anyattn's Triton kernels and SDPA run on ROCm.",
                    [f"{ctx.get('pip')} uninstall -y " + " ".join(b.split()[0] for b in bad),
                     "# flash-attn for ROCm is built from source: FLASH_ATTENTION_TRITON_AMD_ENABLE=TRUE "
                     f"{ctx.get('pip')} install flash-attn --no-build-isolation"], subject="torch")]


@check
def check_uv(f: Facts, ctx) -> List[Finding]:
    """uv-managed environments: build isolation and `%2B` in wheel URLs."""
    origins = (f.stack or {}).get("origins") or {}
    t_or = origins.get("torch") or {}
    if (t_or.get("installer") or "").lower() != "uv":
        return []
    if not (f.gpus and (f.torch or {}).get("cuda")):
        return []
    return [Finding("uv_environment", "info", "This environment is managed by uv",
                    {"torch_installer": "uv", "torch_location": t_or.get("location")},
                    "uv builds sdists in isolation like pip: flash-attn's setup.py then cannot import torch "
                    "(\"doesn't declare it as a build dependency\"). Wheel URLs from GitHub releases carry the '+' as "
                    "%2B; uv and pip both accept the encoded URL, but a hand-decoded '+' in a shell or a requirements "
                    "file can break the tag match.",
                    ["uv pip install torch packaging ninja setuptools wheel",
                     "uv pip install flash-attn --no-build-isolation   # or in pyproject: [tool.uv] no-build-isolation-package = [\"flash-attn\"]",
                     "anyattn plan flash-attn   # the exact wheel URL (with %2B) instead of a build"])]


@check
def check_windows_stack(f: Facts, ctx) -> List[Finding]:
    """Windows: what of the new stack exists there."""
    if f.system != "Windows" or not f.gpus:
        return []
    return [Finding("windows_new_stack", "info", "Windows: FlashAttention-4, FlashInfer and the CuTe DSL ship Linux wheels only",
                    {"os": (f.os or {}).get("platform"), "gpus": [g.get("name") for g in f.gpus]},
                    "nvidia-cutlass-dsl, flash-attn-4 and flashinfer publish manylinux wheels; on Windows use SDPA "
                    "(cuDNN / flash kernels ship with torch), anyattn's Triton kernels with triton-windows, or WSL2.",
                    [f"{ctx.get('pip')} install triton-windows   # anyattn's Triton kernels on Windows",
                     "# or WSL2 (Ubuntu): the Linux wheels of flash-attn-4 / flashinfer work there"])]
