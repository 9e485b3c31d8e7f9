"""FlashAttention-4 (the ``flash-attn-4`` package, module ``flash_attn.cute``; CuTe DSL kernels).

Ops: ``flash_attn_func`` (dense) and ``flash_attn_varlen_func`` (packed varlen; paged KV through
its ``page_table`` + ``seqused_k``). Kernels are written in NVIDIA's CuTe DSL and compiled at first
use by the DSL's bundled compiler: no nvcc, no CUDA_HOME. What follows is read from
``flash_attn/cute/interface.py`` of flash-attn-4 4.0.0b36 (every assert of ``_flash_attn_fwd`` /
``_flash_attn_bwd``):

* Compute capability 8.x-12.x (``arch // 10 in [8, 9, 10, 11, 12]``); fp16/bf16 (fp8 forward only
  on sm100, which anyattn does not expose). Head dims: sm90 any multiple of 8 in 8..256 for Q/K
  and V independently; sm100/sm110 both <= 128, or (192, 128), or (256, 256) (the 512-wide MLA
  shapes need its ``qv`` form); sm8x/sm12x run an Ampere-style kernel that the interface does not
  validate: anyattn keeps multiples of 8 up to 256 there.
* Features: causal (lower-right), ``window_size`` with ``None`` for an unbounded side (a ``-1``
  would be taken as a number: the adapter maps it), ``softcap``, ``learnable_sink`` (native sink
  logits, with gradient), GQA native, ``return_lse`` (natural log, ``(B, H, S)`` / ``(H, T)``,
  ``-inf`` on rows that see no key, ``= sink`` with sinks: anyattn's convention already). No ALiBi.
* Backward: ``FlashAttnFunc``/``FlashAttnVarlenFunc`` are autograd Functions, connected whenever
  an input requires grad (the lse it returns has a gradient too). No backward on sm8x (the backward
  asserts 9.x-12.x); learnable-sink backward only on sm90/sm100/sm110 and not with sm100's
  dedicated head-dim-256 kernel; sm12x has no score_mod backward, so no softcap backward there.
  Its varlen backward ignores ``page_table``: a paged call cannot be differentiated.
* Paged KV: sm90/sm100/sm110 only (sm80 and sm120 assert ``page_table is None``). Pages are loaded
  by TMA only when the page size equals the kernel's K tile (128 for head dims <= 128 on sm90 and
  sm100); any other page size takes a cp.async gather path. With TMA, every row of a sequence's
  last page is read: rows past ``seqused_k`` must hold finite values (NaN there leaks into the
  output), which a cache from ``torch.empty`` does not promise and anyattn cannot check per call,
  so automatic selection passes that path over (``input_conditions``); ``backend="flash_attn_4"``
  vouches for the cache and takes it.
* No split-KV on sm90 (``assert not is_split_kv``): one CTA per (sequence, KV-head, query tile)
  streams the whole cache, so small-batch long-context decode uses a small part of the GPU there
  (7-9 % of copy bandwidth measured at batch 1 x 32k on the H200). anyattn passes
  ``num_splits=1`` (FA4's default) on every architecture.
* ``out=`` is an argument of its private ``_flash_attn_fwd`` only: without a backward the adapter
  calls that to write into the caller's buffer; otherwise the result is copied.

Costs: ``import flash_attn.cute`` loads the CuTe DSL and its MLIR libraries (7.9 s measured on the
H200), so anyattn does not import it to rank candidates: availability is read from files and
package metadata, and the import happens when FA4 is about to serve a call. Each new kernel
variant JIT-compiles on its first call (1.6-3.8 s measured); FA4 keeps compiled kernels on disk
across processes only with ``FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1``.

Namespace: FA4 installs ``flash_attn/cute`` with no ``flash_attn/__init__.py``; flash-attn 2
installs ``flash_attn/__init__.py`` plus the ``flash_attn_2_cuda`` extension. Both can share one
``flash_attn`` directory. FA4 is present when ``flash_attn/cute/interface.py`` is; whether FA2 is
present is decided by ``flash_attn_2_cuda`` (see ``flash_attn.py``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import time
import warnings

import torch

from ..request import Request
from . import _vendor as V
from .base import Availability, HeadDims, caps

#: sm90 head dims whose paged path anyattn's H200 fuzz checked: 32, 64 and 128 passed, 80 was
#: wrong; the others (96, 256...) are unchecked and go to other backends until a GPU run checks them
PAGED_HEAD_DIMS_SM90 = frozenset({32, 64, 128})
#: sm90 forward tiles are sized by head_dim alone (<= 64, <= 96, <= 128, <= 192, 256): a head_dim_v
#: in a larger class than head_dim overran them on the H200 (anyattn's GPU fuzz, 4.0.0b36:
#: illegal memory accesses at (32, 128) dense and paged, and at (32, 80) varlen)
_SM90_TILE_CLASSES = (64, 96, 128, 192, 256)
_AUX_DATA_WARNING = r"Argument aux_data \(position \d+\) cannot be converted to a JitArgument"
MEASURED_IMPORT_S = 7.9  # `import flash_attn.cute` on the H200 (issue 8)
MEASURED_JIT_S = (1.6, 3.8)  # first call of one variant on the H200
_SINK_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: what the private backward must take for the saved-tensor path (4.0.0b36 has them all)
_BWD_PARAMS = ("dlse", "learnable_sink", "window_size_left", "window_size_right", "cu_seqlens_q", "max_seqlen_k")
log = logging.getLogger("anyattn")
_OOM = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError  # torch < 2.5: CUDA's only


def _same_grads(got, want, rtol=2e-2) -> bool:
    """Whether two (dq, dk, dv, dsinks) agree: FA4's backward adds dQ with atomics, so two runs
    of the same kernel differ in the last bits, not more."""
    for g, w in zip(got, want):
        if w is None or g is None:
            if (w is None) != (g is None):
                return False
            continue
        if g.shape != w.shape:
            return False
        diff, ref = (g.float() - w.float()).norm(), w.float().norm()
        if not bool(torch.isfinite(diff)) or float(diff) > rtol * float(ref) + 1e-6:
            return False
    return True


def _sm90_tile_class(head_dim: int) -> int:
    return next((c for c in _SM90_TILE_CLASSES if head_dim <= c), head_dim)


# What flash_attn.cute imports at load time, beside torch: (module, distribution that ships it).
_DEPENDENCIES = (("quack", "quack-kernels"), ("tvm_ffi", "apache-tvm-ffi"), ("einops", "einops"))


def fa4_interface_dir() -> str | None:
    """The ``flash_attn/cute`` directory holding FA4's ``interface.py``, found without importing."""
    try:
        spec = importlib.util.find_spec("flash_attn")
    except (ImportError, ValueError):  # a broken parent package, or a module without a spec
        return None
    if spec is None:
        return None
    for loc in spec.submodule_search_locations or ():
        cute = os.path.join(loc, "cute")
        if os.path.isfile(os.path.join(cute, "interface.py")):
            return cute
    return None


def _module_dirs(name: str) -> list[str]:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    return list(spec.submodule_search_locations or ([os.path.dirname(spec.origin)] if spec.origin else []))


def dependency_problems() -> list[str]:
    """What will make ``import flash_attn.cute`` fail, predicted from files (nothing imported)."""
    out = []
    cutlass = _module_dirs("cutlass")
    if not cutlass:
        out.append("the CuTe DSL (module cutlass, from nvidia-cutlass-dsl) is not importable; when it was "
                   "installed with pip --target, its nvidia_cutlass_dsl/dsl_packages directory must be on "
                   "PYTHONPATH (the package's .pth file is only read from site-packages)")
    else:
        if not any(os.path.isdir(os.path.join(d, "cute")) for d in cutlass):
            out.append("cutlass.cute is missing (install nvidia-cutlass-dsl-libs-core): the import fails "
                       "with \"No module named 'cutlass.cute'\"")
        if not any(os.path.isdir(os.path.join(d, "_mlir")) for d in cutlass):
            out.append("cutlass._mlir is missing (install nvidia-cutlass-dsl-libs-base and the "
                       "nvidia-cutlass-dsl-libs-cu12/cu13 flavour): the import fails with "
                       "\"No module named 'cutlass._mlir'\"")
    for mod, dist in _DEPENDENCIES:
        if importlib.util.find_spec(mod) is None:
            out.append(f"flash_attn.cute imports {mod} (pip install {dist}), which is not installed")
    return out


def _window(window: tuple[int, int]) -> tuple[int | None, int | None]:
    """anyattn's -1 (unbounded) -> FA4's None; FA4 would read -1 as a bound one key short."""
    return tuple(None if w < 0 else w for w in window)  # type: ignore[return-value]


def _unbroadcast(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous() if any(st == 0 and n > 1 for st, n in zip(t.stride(), t.shape)) else t


def _kernel_writable(out: torch.Tensor) -> bool:
    """What FA4's validate_output_layout asserts: 16-byte aligned base and strides, unit last stride."""
    if out.stride(-1) != 1 or out.data_ptr() % 16 or 0 in out.stride():
        return False
    step = max(1, 16 // out.element_size())
    return all(st % step == 0 for st, n in zip(out.stride()[:-1], out.shape[:-1]) if n > 1)


def k_tile(cc: tuple[int, int] | None, d: int, dv: int, causal: bool, local: bool) -> int:
    """FA4's forward K tile (n_block_size) as its interface picks it; the TMA page size."""
    if cc is not None and cc[0] == 9:
        if d <= 64:
            return 128
        if d <= 96:
            return 128 if (causal or local) else 144
        if d <= 128:
            return 128
        if d <= 192:
            return 96 if local else (128 if dv <= 128 else 112)
        return 64 if local else 80
    if cc is not None and cc[0] in (8, 12):
        return 64 if (cc[0] == 8 or d > 64) else 128
    return 128


class FlashAttn4Backend(V.VendorBackend):
    name = "flash_attn_4"
    aliases = ("fa4", "flash_attn_cute", "flash-attn-4", "flash_attention_4", "flash_attn4", "flashattn4",
               "flash_attn.cute", "cute")
    description = "FlashAttention-4 (flash-attn-4, CuTe DSL, JIT at first use): dense, varlen, paged KV, sm80-sm12x"
    module = "flash_attn.cute"
    distribution = "flash-attn-4"
    distributions = ("flash-attn-4", "flash_attn_4")
    install_hint = 'pip install "flash-attn-4[cu13]" (CUDA 13 driver) or pip install flash-attn-4 (CUDA 12)'
    arch_reason = ("FlashAttention-4 supports compute capability 8.x-12.x (its interface asserts it); "
                   "this GPU is {cc}")
    caps = caps(
        devices={"cuda"},
        dtypes={torch.float16, torch.bfloat16},
        ops={"attention", "varlen", "paged"},
        features={"causal", "window", "softcap", "sinks", "lse", "gqa", "out", "grad", "cuda_graph"},
        head_dims=HeadDims(min=8, max=256, multiple_of=8),
        min_capability=(8, 0),
        max_capability=(12, 9),
    )

    def __init__(self) -> None:
        super().__init__()
        self.import_seconds: float | None = None
        self._first_calls: dict[tuple, float] = {}  # kernel variant -> host seconds of its first call
        self._direct_out: bool | None = None  # does this build's _flash_attn_fwd take out=?
        # backward variant -> whether FA4's backward from the saved (out, lse), as anyattn calls
        # it, matched FA4's own autograd path on its first use (None: not yet checked)
        self._saved_bwd_ok: dict[tuple, bool] = {}
        self._saved_bwd_fn = None  # the private backward when it takes what anyattn passes, else False

    # -- availability: files and metadata only; the 8 s import waits for the first call ----------
    def _probe(self) -> Availability:
        if fa4_interface_dir() is None:
            return Availability(installed=False, error=self._not_installed_detail())
        problems = dependency_problems()
        if problems:
            return Availability(installed=True, version=self.version(), error="; ".join(problems))
        return Availability(installed=True, version=self.version())

    @staticmethod
    def _not_installed_detail() -> str | None:
        if importlib.util.find_spec("flash_attn_2_cuda") is not None:
            return ("the flash_attn package here is FlashAttention-2's (flash_attn_2_cuda, no flash_attn.cute); "
                    "FlashAttention-4 is a separate distribution: "
                    'pip install "flash-attn-4[cu13]"')
        return None

    def load(self):
        t0 = time.perf_counter()
        iface = importlib.import_module("flash_attn.cute.interface")
        self.import_seconds = time.perf_counter() - t0
        # nvidia-cutlass-dsl 4.8.1 warns at every kernel variant's compile that FA4's own
        # ``aux_data`` argument "cannot be converted to a JitArgument" (1,400+ lines in one
        # H200 fuzz run); the kernels are right (the GPU suite) and the user can do nothing
        # about it, so this one message is silenced, nothing else
        warnings.filterwarnings("ignore", message=_AUX_DATA_WARNING, category=UserWarning)
        return iface

    def prepare(self) -> str | None:
        """Import the package now (selection calls this on the backend it is about to choose).

        Returns None when FA4 is ready, else the one-line cause; the failure is remembered and
        FA4 becomes ``unavailable`` for this process, like an import failure of any backend.
        """
        avail = self.availability()
        if not avail.usable:
            return avail.error or "not installed"
        if self._loaded is None:
            try:
                self._loaded = self.load()
            except Exception as exc:  # noqa: BLE001 - an import failure is a reason, not a crash
                self._availability = Availability(installed=True, version=self.version(), error=V.one_line(exc))
                return self._availability.error
        return None

    @property
    def lib(self):
        err = self.prepare()
        if err:
            raise RuntimeError(f"{self.name} is unavailable: {err}")
        return self._loaded

    # -- selection ------------------------------------------------------------------------------
    def extra_reasons(self, req: Request) -> list[str]:
        out: list[str] = []
        cc = req.capability
        major = cc[0] if cc else None
        d, dv = req.head_dim, req.head_dim_v
        if major in (10, 11) and not ((d <= 128 and dv <= 128) or (d, dv) in ((192, 128), (256, 256))):
            out.append(f"head dims ({d}, {dv}) not supported on sm{major}x: FlashAttention-4 takes both <= 128, "
                       "(192, 128) or (256, 256) there")
        if major == 9 and dv > d and _sm90_tile_class(dv) > _sm90_tile_class(d):
            out.append(f"head_dim_v={dv} > head_dim={d} across its sm90 tile sizes (chosen by head_dim "
                       "alone) made illegal memory accesses on the H200 (anyattn's GPU fuzz, flash-attn-4 "
                       "4.0.0b36, (32, 128) and (32, 80))")
        if req.op == "paged":
            if major in (8, 12):
                out.append(f"no paged KV on sm{major}x (FlashAttention-4's interface asserts page_table is None)")
            if major == 9 and not (d in PAGED_HEAD_DIMS_SM90 and dv in PAGED_HEAD_DIMS_SM90):
                out.append(f"paged KV at head dims ({d}, {dv}) returned wrong values on the H200 (anyattn's GPU "
                           "fuzz, flash-attn-4 4.0.0b36, head dim 80 with pages of 1 and 4: errors of 0.3-2.6); "
                           f"anyattn uses its sm90 paged kernel only for head dims {sorted(PAGED_HEAD_DIMS_SM90)}")
            if req.grad:
                out.append("no backward through a paged KV cache (FlashAttention-4's varlen backward ignores "
                           "page_table)")
        if req.sinks and major in (8, 12):
            out.append(f"no sink logits on sm{major}x (its Ampere-style kernel asserts learnable_sink is None)")
        if req.grad:
            if major == 8:
                out.append("no backward on sm8x (FlashAttention-4's backward asserts compute capability 9.x-12.x)")
            if req.sinks and major in (10, 11) and d == dv == 256:
                out.append("no sink-logit backward with head dim 256 on sm100 (its dedicated hd256 backward "
                           "kernel lacks learnable_sink)")
            if req.softcap and major == 12:
                out.append("no soft-capping backward on sm12x (no score_mod backward there)")
            if req.gqa_ratio > 1 and d != dv:
                # seen on the H200 with 4.0.0b36: "GQA backward requires head_dim == head_dim_v"
                out.append(f"no GQA backward with head_dim {d} != head_dim_v {dv} (its backward asserts "
                           "head_dim == head_dim_v under GQA)")
        return out

    def input_conditions(self, req: Request) -> list[str]:
        # TMA loads a sequence's last page whole; the rows past seqused_k get probability 0, and
        # 0 x NaN (or Inf) in V is NaN in the output. A cache from torch.empty promises nothing
        # there, and checking would cost a synchronising scan on every call.
        if req.op == "paged" and req.block_size is not None and \
                req.block_size == k_tile(req.capability, req.head_dim, req.head_dim_v, req.causal, req.window):
            return ["finite values in the rows past seqused_k of each sequence's last KV page (FlashAttention-4 "
                    "loads pages of its K tile's size whole, by TMA: NaN or Inf there reaches the output)"]
        return []

    def notes(self, req: Request) -> list[str]:
        out = []
        if self._loaded is None:
            out.append(f"first use imports flash_attn.cute (~{MEASURED_IMPORT_S:.0f} s measured on the H200); "
                       "anyattn imports it only when FlashAttention-4 is chosen")
        elif self.import_seconds is not None:
            out.append(f"flash_attn.cute imported in {self.import_seconds:.1f} s")
        lo, hi = MEASURED_JIT_S
        seen = self._first_calls
        jit = (f"each new kernel variant compiles on its first call ({lo}-{hi} s each on the H200"
               + (f"; here {len(seen)} so far, slowest {max(seen.values()):.1f} s" if seen else "")
               + "); FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 keeps them on disk across processes")
        out.append(jit)
        cc = req.capability
        if req.op == "paged" and req.block_size is not None:
            tile = k_tile(cc, req.head_dim, req.head_dim_v, req.causal, req.window)
            if req.block_size == tile:
                out.append(f"KV block size {req.block_size} = the kernel's K tile: pages load by TMA")
            else:
                out.append(f"KV block size {req.block_size} != the kernel's K tile ({tile}): pages load by a "
                           "cp.async gather (slower than the TMA path)")
        if req.op in ("paged", "varlen") and cc is not None and cc[0] == 9:
            out.append("no split-KV on sm90: small-batch long-context decode uses a fraction of the GPU "
                       "(7-9 % of copy bandwidth at batch 1 x 32k measured)")
        if req.out:
            out.append("out= is written by the kernel when no backward is needed; copied otherwise")
        if req.grad and req.op != "paged":
            out.append("under torch.compile the backward runs FA4's kernel from the saved output and lse (each "
                       "variant checked once against FA4's own autograd path, which recomputes the forward)")
        return out

    # -- ops --------------------------------------------------------------------------------------
    def _common(self, scale, causal, window, softcap, sinks, need_lse):
        kw = {"softmax_scale": scale, "causal": causal, "window_size": _window(window), "softcap": softcap,
              "return_lse": need_lse}
        if sinks is not None:
            kw["learnable_sink"] = sinks if sinks.dtype in _SINK_DTYPES else sinks.float()
        return kw

    def _call(self, public, kw, variant, tensors, out, out_shape_ok=True):
        """Run FA4; with out= and no backward, let its forward write into ``out`` directly."""
        lib = self.lib
        grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
        first = variant not in self._first_calls
        t0 = time.perf_counter() if first else 0.0
        if self._direct_out is None:  # read the private forward's signature once
            self._direct_out = hasattr(lib, "_flash_attn_fwd") and V.accepts(lib._flash_attn_fwd, "out")
        direct = out is not None and not grad and out_shape_ok and self._direct_out and _kernel_writable(out)
        if direct:
            fkw = dict(kw)
            ws = fkw.pop("window_size")
            fkw["window_size_left"], fkw["window_size_right"] = ws
            res = lib._flash_attn_fwd(*fkw.pop("_args"), out=out, **fkw)
            o, lse = res[0], res[1]
        else:
            args = kw.pop("_args")
            res = getattr(lib, public)(*args, **kw)
            o, lse = (res[0], res[1]) if isinstance(res, (tuple, list)) else (res, None)
        if first:
            self._first_calls[variant] = time.perf_counter() - t0  # host time: the JIT is synchronous
        return o, lse, direct

    def attention(self, q, k, v, *, causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        kw = self._common(scale, causal, window, softcap, sinks, return_lse)
        kw["_args"] = (q, k, v)
        variant = ("attention", q.dtype, q.shape[-1], v.shape[-1], q.shape[2] // k.shape[2], causal,
                   _window(window) != (None, None), softcap > 0, sinks is not None, return_lse)
        o, lse, direct = self._call("flash_attn_func", kw, variant, (q, k, v, sinks), out)
        if not direct:
            o = V.write_out(o, out)
        return o, (lse if return_lse else None)

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal, scale,
               window, softcap, alibi_slopes, sinks, return_lse, out):
        kw = self._common(scale, causal, window, softcap, sinks, return_lse)
        kw.update(_args=(q, k, v), cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                  max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k)
        variant = ("varlen", q.dtype, q.shape[-1], v.shape[-1], q.shape[1] // k.shape[1], causal,
                   _window(window) != (None, None), softcap > 0, sinks is not None, return_lse)
        o, lse, direct = self._call("flash_attn_varlen_func", kw, variant, (q, k, v, sinks), out)
        if not direct:
            o = V.write_out(o, out)
        return o, (lse if return_lse else None)

    # -- backward under the custom ops (torch.compile): FA4's kernel from the saved out and lse ------
    # The default would run FA4's forward again under autograd (about a fifth of a training
    # step's attention time at FA4's H200 speeds: forward 629, backward 625 TFLOP/s at d128).
    # The private backward is what FA4's own autograd Function calls; how anyattn calls it is
    # checked once per variant against that Function (the recompute path), and a variant that
    # differs keeps the recompute path, with a WARNING.
    # Once per variant suffices because nothing depends on the data: the out and lse it gets are
    # FA4's own, unmodified (this adapter passes FA4's lse through), as its Function saves them.
    backward_from_saved = True

    def attention_backward(self, grad_out, grad_lse, q, k, v, out, lse, *, causal, scale, window, softcap,
                           alibi_slopes, sinks):
        recompute = functools.partial(super().attention_backward, grad_out, grad_lse, q, k, v, out, lse,
                                      causal=causal, scale=scale, window=window, softcap=softcap,
                                      alibi_slopes=alibi_slopes, sinks=sinks)
        return self._from_saved("attention", recompute, grad_out, grad_lse, q, k, v, out, lse, causal, scale,
                                window, softcap, sinks, {})

    def varlen_backward(self, grad_out, grad_lse, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                        max_seqlen_k, out, lse, *, causal, scale, window, softcap, alibi_slopes, sinks):
        recompute = functools.partial(super().varlen_backward, grad_out, grad_lse, q, k, v, cu_seqlens_q,
                                      cu_seqlens_k, max_seqlen_q, max_seqlen_k, out, lse, causal=causal,
                                      scale=scale, window=window, softcap=softcap, alibi_slopes=alibi_slopes,
                                      sinks=sinks)
        lengths = dict(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                       max_seqlen_k=max_seqlen_k)
        return self._from_saved("varlen", recompute, grad_out, grad_lse, q, k, v, out, lse, causal, scale,
                                window, softcap, sinks, lengths)

    def _from_saved(self, op, recompute, grad_out, grad_lse, q, k, v, out, lse, causal, scale, window,
                    softcap, sinks, lengths):
        # heads are the second-to-last axis in both layouts, (B, S, H, D) and (T, H, D)
        variant = (op, q.dtype, q.shape[-1], v.shape[-1], q.shape[-2] // max(k.shape[-2], 1), causal,
                   _window(window) != (None, None), softcap > 0, sinks is not None, grad_lse is not None)
        if self._saved_bwd_fn is None:  # read the private backward's signature once
            fn = getattr(self.lib, "_flash_attn_bwd", None)
            self._saved_bwd_fn = fn if fn is not None and all(V.accepts(fn, p) for p in _BWD_PARAMS) else False
        fn = self._saved_bwd_fn
        checked = self._saved_bwd_ok.get(variant)
        if checked is False or lse is None or fn is False:
            return recompute()
        left, right = _window(window)
        try:
            res = fn(q, k, v, out, grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous(), lse,
                     softmax_scale=scale, causal=causal, softcap=softcap, window_size_left=left,
                     window_size_right=right, dlse=grad_lse,
                     learnable_sink=None if sinks is None else (sinks if sinks.dtype in _SINK_DTYPES
                                                                else sinks.float()),
                     **lengths)
        except _OOM:
            raise
        except Exception as exc:  # noqa: BLE001 - a private API that changed: the public path still works
            self._saved_bwd_ok[variant] = False
            log.warning("anyattn: FlashAttention-4's backward from the saved output raised %s for %s %s; this "
                        "variant recomputes the forward instead", V.one_line(exc), variant[0], variant[1:])
            return recompute()
        got = (res[0], res[1], res[2], res[3] if sinks is not None and len(res) > 3 else None)
        if checked is None:
            want = recompute()
            self._saved_bwd_ok[variant] = same = _same_grads(got, want)
            if not same:
                log.warning("anyattn: FlashAttention-4's backward from the saved output differed from its "
                            "autograd path for %s %s; this variant recomputes the forward instead", variant[0],
                            variant[1:])
                return want
        return got

    def paged(self, q, k_cache, v_cache, block_table, seqused_k, *, cu_seqlens_q, max_seqlen_q, max_seqlen_k,
              causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        kw = self._common(scale, causal, window, softcap, sinks, return_lse)
        kw.update(page_table=block_table, seqused_k=seqused_k, max_seqlen_k=max_seqlen_k)
        # A broadcast (stride-0) cache or query fails its compiler ("failed to legalize unresolved
        # materialization", seen on the H200): give it real strides.
        q, k_cache, v_cache = _unbroadcast(q), _unbroadcast(k_cache), _unbroadcast(v_cache)
        decode = cu_seqlens_q is None
        if decode:
            # One token per sequence: FA4's dense-q form (batch, 1, H, D) with the page table.
            kw["_args"] = (q.unsqueeze(1), k_cache, v_cache)
            out_view = out.unsqueeze(1) if out is not None else None
        else:
            kw.update(_args=(q, k_cache, v_cache), cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max_seqlen_q)
            out_view = out
        variant = ("paged", decode, q.dtype, q.shape[-1], v_cache.shape[-1], q.shape[1] // k_cache.shape[2],
                   k_cache.shape[1], causal, _window(window) != (None, None), softcap > 0, sinks is not None,
                   return_lse)
        o, lse, direct = self._call("flash_attn_varlen_func", kw, variant, (q, k_cache, v_cache, sinks), out_view)
        if decode:
            o = o.squeeze(1)
            if lse is not None:
                lse = lse[:, :, 0].transpose(0, 1)  # (B, H, 1) -> (H, B)
        if direct:
            o = out
        else:
            o = V.write_out(o, out)
        return o, (lse if return_lse else None)
