"""Compile and run every kernel variant a model will use, before CUDA-graph capture.

JIT backends (anyattn's Triton kernels, FlashAttention-4's CuTe DSL, FlashInfer, compiled Flex)
compile a variant the first time it runs. A compile during CUDA-graph capture is the failure in
``shared/seeds/002``: the capture aborts ("Capture cuda graph" then a JIT error) or captures the
compile's own launches. :func:`warmup` runs each variant once, on inputs of the shapes given, so a
later capture compiles nothing. It goes through the public ops, so the selection cache is filled
too and the later capture makes no decision either.

Variants depend on: op, dtype, head dims, GQA ratio, features (causal, window, softcap, ALiBi,
sinks, lse), KV block size, and for anyattn's Triton prefill a bucket of ``max_seqlen_k`` (so pass
one sequence length per range you will serve: short (<= 768), medium (<= 6k) and long are the
buckets on Hopper), and for paged decode the batch sizes (the split count depends on batch).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import torch

from . import api
from .request import parse_dtype


@dataclass
class Warmed:
    op: str
    shape: str
    options: dict
    backend: str | None
    seconds: float

    def __str__(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items()) or "plain"
        return f"{self.op:9s} {self.shape:34s} {opts:30s} -> {self.backend or '?':14s} {self.seconds * 1e3:8.1f} ms"


def warmup(*, ops=("attention",), dtypes=(torch.bfloat16,), head_dims=(128,), num_heads=32, gqa_ratios=(1,),
           seqlens=(512,), batch_sizes=(1,), block_sizes=(16,), variants=({"causal": True},), grad=False,
           device=None, backend=None) -> list[Warmed]:
    """Run each (op, dtype, head dim, GQA ratio, seqlen, batch, block size, variant) once.

    ``variants`` are keyword options of the ops: e.g. ``{"causal": True, "window": (4095, 0)}``,
    ``{"softcap": 30.0}``, ``{"sinks": True}`` (a random sinks tensor is made), ``{"alibi": True}``,
    ``{"return_lse": True}``. ``head_dims`` entries are ints or ``(D, Dv)`` pairs. ``grad=True``
    also runs a backward. Returns what ran, with the backend chosen and the time of the first call
    (compile included). Synchronises at the end.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    done = []
    combos = itertools.product(ops, dtypes, head_dims, gqa_ratios, seqlens, batch_sizes, variants)
    for op, dtype, hd, gqa, seqlen, batch, variant in combos:
        for bs in (block_sizes if op == "paged" else (None,)):  # block size matters to paged only
            done.append(_warm_one(op, parse_dtype(dtype), hd, num_heads, gqa, seqlen, batch, bs, variant,
                                  grad, device, backend))
    return done


def _warm_one(op, dtype, hd, num_heads, gqa, seqlen, batch, bs, variant, grad, device, backend) -> Warmed:
    d, dv = (hd, hd) if isinstance(hd, int) else hd
    if num_heads % gqa:
        raise ValueError(f"gqa_ratios: expected divisors of num_heads={num_heads}, got {gqa}")
    opts = dict(variant)
    kwargs = _feature_tensors(opts, num_heads, device)
    args, shape = _inputs(op, dtype, d, dv, num_heads, num_heads // gqa, seqlen, batch, bs, device, grad)
    start = time.perf_counter()
    res = _call(op, args, kwargs, backend)
    if grad:
        (res[0] if isinstance(res, tuple) else res).float().sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    chosen = api.explain(*args, op=op, backend=backend, **kwargs).chosen
    return Warmed(op, shape + (f" block={bs}" if bs else ""), opts, chosen, seconds)


def _feature_tensors(opts, num_heads, device):
    kwargs = dict(opts)
    if kwargs.pop("sinks", False):
        kwargs["sinks"] = torch.randn(num_heads, device=device, dtype=torch.float32)
    if kwargs.pop("alibi", False):
        kwargs["alibi_slopes"] = torch.rand(num_heads, device=device, dtype=torch.float32)
    return kwargs


def _inputs(op, dtype, d, dv, hq, hkv, seqlen, batch, block_size, device, grad):
    def rnd(*shape):
        return torch.randn(*shape, device=device, dtype=dtype, requires_grad=grad)

    if op == "attention":
        return (rnd(batch, seqlen, hq, d), rnd(batch, seqlen, hkv, d), rnd(batch, seqlen, hkv, dv)), \
            f"B={batch} S={seqlen} H={hq}/{hkv} D={d}/{dv}"
    if op == "varlen":
        cu = torch.arange(0, (batch + 1) * seqlen, seqlen, device=device, dtype=torch.int32)
        total = batch * seqlen
        return (rnd(total, hq, d), rnd(total, hkv, d), rnd(total, hkv, dv), cu, cu, seqlen, seqlen), \
            f"B={batch} S={seqlen} H={hq}/{hkv} D={d}/{dv}"
    if op == "paged":
        per_seq = -(-seqlen // block_size)
        blocks = batch * per_seq
        table = torch.randperm(blocks, device=device).to(torch.int32).view(batch, per_seq)
        used = torch.full((batch,), seqlen, device=device, dtype=torch.int32)
        k_cache = torch.randn(blocks, block_size, hkv, d, device=device, dtype=dtype)
        v_cache = torch.randn(blocks, block_size, hkv, dv, device=device, dtype=dtype)
        return (rnd(batch, hq, d), k_cache, v_cache, table, used), \
            f"decode B={batch} S={seqlen} H={hq}/{hkv} D={d}/{dv}"
    raise ValueError(f"ops: expected 'attention', 'varlen' or 'paged', got {op!r}")


def _call(op, args, kwargs, backend):
    fn = {"attention": api.attention, "varlen": api.varlen_attention, "paged": api.paged_attention}[op]
    return fn(*args, backend=backend, **kwargs)
