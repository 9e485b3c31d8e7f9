"""FlashInfer (the ``flashinfer-python`` package, module ``flashinfer``), plan/run API (>= 0.2).

Ops and what each costs:

* dense, batch 1: ``single_prefill_with_kv_cache`` — no planning, no workspace argument (it uses
  a cached scratch buffer), no host sync; capturable in a CUDA graph.
* dense, batch > 1: ``BatchPrefillWithRaggedKVCacheWrapper`` with offsets built on the host
  (sizes are known there), so ``plan()`` only copies host -> device.
* varlen: the same ragged wrapper with the caller's ``cu_seqlens``; ``plan()`` copies them to the
  host: one device -> host sync per call.
* paged: ``BatchDecodeWithPagedKVCacheWrapper`` (one query token per sequence) or
  ``BatchPrefillWithPagedKVCacheWrapper`` (``cu_seqlens_q``). anyattn turns ``block_table`` +
  ``seqused_k`` into FlashInfer's CSR page table (indptr / indices / last_page_len) on the
  device without syncing; ``plan()`` then reads the offsets on the host (one sync per call).
  ``plan()`` cannot be captured in a CUDA graph (FlashInfer's own rule); anyattn plans on every
  call, so varlen/paged through anyattn are not graph-safe — for graphs, use FlashInfer's
  wrappers with ``use_cuda_graph=True`` directly and plan outside the graph.
* Wrappers share one 128 MiB workspace per device, allocated on first use.

Checked against flashinfer-python 0.7.2.post1 (signatures moved between releases; anyattn passes
everything after the tensors and the plan's sizes by keyword, which every release since 0.2
accepts): ``single_prefill_with_kv_cache`` gained ``scale_q/scale_k/scale_v/o_dtype`` before
``custom_mask`` and allocates a 32 MiB scratch per call (torch's caching allocator);
``BatchDecodeWithPagedKVCacheWrapper.plan()`` takes its options by keyword only (positional ones
are deprecated and warn); ``run()`` everywhere takes ``out=``, ``lse_base``/``lse_layout`` and, for
decode and paged prefill, ``sinks=`` — anyattn keeps its exact sink fold through the lse so every
path behaves the same. On Hopper ``plan()`` picks FlashInfer's fa3 backend for head dims 64, 128
and 256. Kernels JIT-compile with the machine's nvcc on first use unless ``flashinfer-cubin`` and
``flashinfer-jit-cache`` of exactly the same version are installed; ``import flashinfer`` itself
needs ``nvidia-ml-py`` (pynvml), ``requests`` and ``tqdm`` (a missing one is an ``unavailable``
reason with the ImportError).

Semantics: causal is bottom-right aligned; windows bound the left side only (``window_left``):
``(left, -1)``, ``(left, 0)`` (= causal), anything with causal=True, and anything in decode map
exactly; a right bound > 0 without causal does not: the selector routes such calls elsewhere
(``Request.window_right``), and a direct call raises ``ValueError`` rather than compute something else.
``logits_soft_cap`` is the softcap. ALiBi exists only with
FlashInfer's own fixed slopes (``pos_encoding_mode="ALIBI"``), not the caller's, so it is not
offered. No sink logits in these wrappers: sinks are folded in from the lse. The lse FlashInfer
returns is base 2; anyattn converts it to natural log. Forward only.
"""

from __future__ import annotations

import torch

from ..request import Request
from . import _vendor as V
from .base import HeadDims, caps

WORKSPACE_BYTES = 128 * 1024 * 1024
# measured on the H200 (flashinfer-python 0.7.2.post1, nvcc 13, 16 cores, JIT cache cold;
# tests/test_gpu_vendor.py::test_first_call_costs, docs/PERF.md §V)
MEASURED_IMPORT_S = (10.6, 19.3)  # `import flashinfer`, two machines of the same kind
MEASURED_FIRST_PREFILL_S = 82  # first prefill: nvcc builds its module
MEASURED_FIRST_DECODE_S = 24  # first paged decode, after that prefill
MIN_VERSION = "0.2.0"  # plan()/run() API


class FlashInferBackend(V.VendorBackend):
    name = "flashinfer"
    aliases = ("flash_infer", "flashinfer_python")
    description = "FlashInfer: single/batch prefill and paged decode (plan/run wrappers), sm75+"
    module = "flashinfer"
    distribution = "flashinfer-python"
    distributions = ("flashinfer-python", "flashinfer")
    install_hint = "pip install flashinfer-python"
    arch_reason = "FlashInfer needs Turing (sm75) or newer; this GPU is {cc}"
    caps = caps(
        devices={"cuda"},
        dtypes={torch.float16, torch.bfloat16},
        ops={"attention", "varlen", "paged"},
        features={"causal", "window", "softcap", "sinks", "lse", "gqa", "out"},
        head_dims=HeadDims(only=frozenset({64, 128, 256}), dv_equals_d=True),
        min_capability=(7, 5),
    )

    def __init__(self) -> None:
        super().__init__()
        self._workspaces: dict = {}
        self._wrappers: dict = {}

    def load(self):
        import flashinfer

        return flashinfer

    # -- selection ------------------------------------------------------------------------
    def extra_reasons(self, req: Request) -> list[str]:
        out = V.needs("flashinfer", self.parsed_version(), MIN_VERSION, "the plan()/run() wrapper API")
        if req.dtype == torch.bfloat16 and req.capability is not None and req.capability < (8, 0):
            out.append("bfloat16 needs sm80+ in FlashInfer; use float16 on this GPU")
        if req.window_right:
            out.append("FlashInfer's window bounds only the left side; a right bound > 0 needs causal=True")
        return out

    def notes(self, req: Request) -> list[str]:
        lo, hi = MEASURED_IMPORT_S
        out = [f"each kernel module (dtype, head dims, mask options) JIT-compiles with nvcc on first use unless "
               f"flashinfer-jit-cache of the same version is installed: first prefill {MEASURED_FIRST_PREFILL_S} s, "
               f"first decode {MEASURED_FIRST_DECODE_S} s on the H200, then cached on disk; "
               f"import flashinfer {lo}-{hi} s there"]
        if req.op == "attention":
            out.append("batch 1: single_prefill (no plan, graph-safe); batch > 1: ragged wrapper planned "
                       "per call from host-side offsets (not graph-safe)")
        else:
            out.append("plan() runs on every call and reads the sequence offsets on the host: one "
                       "device->host sync per call; not CUDA-graph safe through anyattn (paged decode: "
                       "3-25 % of copy bandwidth on the H200, where Triton reaches 63-98 %)")
        if req.window:
            out.append("windows bound the left side only: a bounded right side needs causal=True or "
                       "right == 0")
        if req.sinks:
            out.append("sinks folded in from the kernel's lse")
        if req.out:
            out.append("the result is copied into out=")
        return out

    # -- helpers ------------------------------------------------------------------------------
    def _workspace(self, device: torch.device) -> torch.Tensor:
        ws = self._workspaces.get(device)
        if ws is None:
            ws = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
            self._workspaces[device] = ws
        return ws

    def _wrapper(self, kind: str, device: torch.device, **kw):
        key = (kind, device, tuple(sorted(kw.items())))
        w = self._wrappers.get(key)
        if w is None:
            cls = getattr(self.lib, kind)
            w = cls(self._workspace(device), "NHD", **kw)
            self._wrappers[key] = w
        return w

    @staticmethod
    def _mask(causal: bool, window: tuple[int, int]) -> tuple[bool, int]:
        """(causal, window_left) for FlashInfer, or ValueError for what it cannot express."""
        left, right = window
        if not causal and right == 0:
            causal = True  # a right bound of 0 is exactly the causal mask
        elif not causal and right > 0:
            raise ValueError(f"window: FlashInfer bounds only the left side of the window; (left, right) = "
                             f"{window} without causal=True cannot be expressed (use right=-1 or 0, or "
                             "another backend)")
        return causal, (left if left >= 0 else -1)

    @staticmethod
    def _lse(lse2: torch.Tensor) -> torch.Tensor:
        """FlashInfer's (tokens, heads) base-2 lse -> natural log, (heads, tokens)."""
        return (lse2.float() * V.LN2).transpose(0, 1)

    @staticmethod
    def _softcap(softcap: float):
        return softcap if softcap > 0 else None

    # -- ops --------------------------------------------------------------------------------
    def attention(self, q, k, v, *, causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        need_lse = return_lse or sinks is not None
        causal, wl = self._mask(causal, window)
        b, sq, hq, d = q.shape
        sk, hkv = k.shape[1], k.shape[2]
        lib = self.lib
        if b == 1:
            res = lib.single_prefill_with_kv_cache(
                V.contiguous_last(q[0]), V.contiguous_last(k[0]), V.contiguous_last(v[0]), causal=causal,
                kv_layout="NHD", sm_scale=scale, window_left=wl, logits_soft_cap=self._softcap(softcap),
                return_lse=need_lse)
            o, lse2 = (res if need_lse else (res, None))
            o = o.unsqueeze(0)
        else:
            qo_indptr = torch.arange(0, (b + 1) * sq, sq, dtype=torch.int32)  # host: sizes are known
            kv_indptr = torch.arange(0, (b + 1) * sk, sk, dtype=torch.int32)
            w = self._wrapper("BatchPrefillWithRaggedKVCacheWrapper", q.device)
            w.plan(qo_indptr, kv_indptr, hq, hkv, d, causal=causal, window_left=wl,
                   logits_soft_cap=self._softcap(softcap), sm_scale=scale, q_data_type=q.dtype,
                   kv_data_type=k.dtype)
            res = w.run(q.reshape(b * sq, hq, d), k.reshape(b * sk, hkv, d), v.reshape(b * sk, hkv, -1),
                        return_lse=need_lse)
            o, lse2 = (res if need_lse else (res, None))
            o = o.view(b, sq, hq, -1)
        lse = None
        if lse2 is not None:
            lse = self._lse(lse2).reshape(hq, b, sq).transpose(0, 1)  # (H, B*S) -> (B, H, S)
        return V.finish(o, lse, layout="dense", sinks=sinks, return_lse=return_lse, out=out, zero_empty=True)

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal, scale,
               window, softcap, alibi_slopes, sinks, return_lse, out):
        need_lse = return_lse or sinks is not None
        causal, wl = self._mask(causal, window)
        w = self._wrapper("BatchPrefillWithRaggedKVCacheWrapper", q.device)
        w.plan(cu_seqlens_q, cu_seqlens_k, q.shape[1], k.shape[1], q.shape[2], causal=causal, window_left=wl,
               logits_soft_cap=self._softcap(softcap), sm_scale=scale, q_data_type=q.dtype, kv_data_type=k.dtype)
        res = w.run(V.contiguous_last(q), V.contiguous_last(k), V.contiguous_last(v), return_lse=need_lse)
        o, lse2 = (res if need_lse else (res, None))
        lse = None if lse2 is None else self._lse(lse2)
        return V.finish(o, lse, layout="packed", sinks=sinks, return_lse=return_lse, out=out, zero_empty=True)

    def paged(self, q, k_cache, v_cache, block_table, seqused_k, *, cu_seqlens_q, max_seqlen_q, max_seqlen_k,
              causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        need_lse = return_lse or sinks is not None
        if cu_seqlens_q is None:  # decode: the one query is the last token; no key lies to its right
            window = (window[0], -1)
        causal, wl = self._mask(causal, window)
        hq, d = q.shape[1], q.shape[2]
        hkv, page = k_cache.shape[2], k_cache.shape[1]
        indptr, indices, last_len = csr_page_table(block_table, seqused_k, page)
        common = dict(window_left=wl, logits_soft_cap=self._softcap(softcap), sm_scale=scale,
                      q_data_type=q.dtype, kv_data_type=k_cache.dtype)
        if cu_seqlens_q is None:
            w = self._wrapper("BatchDecodeWithPagedKVCacheWrapper", q.device, use_tensor_cores=hq // hkv > 1)
            w.plan(indptr, indices, last_len, hq, hkv, d, page, **common)
        else:
            w = self._wrapper("BatchPrefillWithPagedKVCacheWrapper", q.device)
            w.plan(cu_seqlens_q, indptr, indices, last_len, hq, hkv, d, page, causal=causal, **common)
        res = w.run(V.contiguous_last(q), (k_cache, v_cache), return_lse=need_lse)
        o, lse2 = (res if need_lse else (res, None))
        lse = None if lse2 is None else self._lse(lse2)
        return V.finish(o, lse, layout="packed", sinks=sinks, return_lse=return_lse, out=out, zero_empty=True)


def csr_page_table(block_table: torch.Tensor, seqused_k: torch.Tensor, page_size: int):
    """anyattn's (B, max_blocks) block table -> FlashInfer's CSR page table, on the device, no sync.

    indptr (B+1) counts pages; indices holds each sequence's used page ids back to back (the
    tensor is B*max_blocks long: FlashInfer reads only indices[indptr[b]:indptr[b+1]]);
    last_page_len is the number of keys in each sequence's last page.
    """
    batch, max_blocks = block_table.shape
    used = seqused_k.to(torch.int64)
    pages = (used + page_size - 1) // page_size  # (B,)
    indptr = V.cu_from_lengths(pages.to(torch.int32))
    col = torch.arange(max_blocks, device=block_table.device).view(1, -1)
    valid = col < pages.view(-1, 1)
    dump = batch * max_blocks  # one spare slot takes every unused entry
    dest = torch.where(valid, indptr[:-1].view(-1, 1).to(torch.int64) + col, torch.full_like(col, dump))
    indices = torch.zeros(dump + 1, dtype=torch.int32, device=block_table.device)
    indices.scatter_(0, dest.reshape(-1), block_table.to(torch.int32).reshape(-1))
    last_len = torch.where(pages > 0, used - (pages - 1) * page_size, torch.zeros_like(used)).to(torch.int32)
    return indptr, indices[:dump], last_len
