"""The contract every backend fulfils: capabilities as data, reasons as sentences.

A backend declares what it supports in a :class:`Capabilities` record. The generic
:meth:`Backend.reasons` turns a :class:`~anyattn.request.Request` into the list of reasons the
backend cannot serve it (an empty list means it can), each one a sentence a person can act on.
Backends add checks the data cannot express (version gates, torch's own kernel checks) in
:meth:`Backend.extra_reasons`.

Optional packages are imported on first use only, and any failure to import (``ImportError``
with ``undefined symbol``, ``OSError`` from a missing ``.so``, a ``RuntimeError`` raised by the
package's own init) becomes the reason ``unavailable: <one-line cause>``; it never escapes into
the user's call.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch

from ..request import Request, dtype_name

FEATURES = ("causal", "window", "softcap", "alibi", "sinks", "lse", "gqa", "out", "grad",
            "cuda_graph")
_FEATURE_WORDS = {
    "causal": "causal masking", "window": "sliding-window attention", "softcap": "logit soft-capping",
    "alibi": "ALiBi slopes", "sinks": "attention sinks", "lse": "returning the log-sum-exp",
    "gqa": "grouped-query attention (Hq != Hkv)", "out": "writing into out=",
    "grad": "backward (a tensor requires grad)",
}


@dataclass(frozen=True)
class HeadDims:
    """Supported head dims: a range, optionally restricted to multiples or an explicit set."""

    min: int = 1
    max: int = 1 << 16
    multiple_of: int = 1
    only: frozenset[int] | None = None
    dv_equals_d: bool = False  # the V head dim must equal the QK head dim

    def reasons(self, d: int, dv: int) -> list[str]:
        out = []
        for label, value in (("head_dim", d), ("head_dim_v", dv)):
            if self.only is not None and value not in self.only:
                out.append(f"{label}={value} not supported (supported: {sorted(self.only)})")
            elif not self.min <= value <= self.max:
                out.append(f"{label}={value} outside the supported range {self.min}..{self.max}")
            elif value % self.multiple_of:
                out.append(f"{label}={value} is not a multiple of {self.multiple_of}")
        if self.dv_equals_d and d != dv:
            out.append(f"head_dim_v={dv} must equal head_dim={d}")
        return out


@dataclass(frozen=True)
class Capabilities:
    devices: frozenset[str]
    dtypes: frozenset[torch.dtype]
    ops: frozenset[str]
    features: frozenset[str]
    head_dims: HeadDims = HeadDims()
    min_capability: tuple[int, int] | None = None  # CUDA only
    max_capability: tuple[int, int] | None = None
    block_sizes: Callable[[int], bool] | None = None  # paged: which KV block sizes work
    block_size_rule: str = ""  # how to say which block sizes work

    def reasons(self, req: Request) -> list[str]:
        out: list[str] = []
        if req.device_type not in self.devices:
            out.append(f"runs on {', '.join(sorted(self.devices))}, not {req.device_type}")
            return out  # the rest is moot on the wrong device
        if req.capability is not None:
            cc = req.capability
            if self.min_capability and cc < self.min_capability:
                out.append(f"needs compute capability >= {_cc(self.min_capability)}; this GPU is {_cc(cc)}")
            if self.max_capability and cc > self.max_capability:
                out.append(f"supports compute capability <= {_cc(self.max_capability)}; this GPU is {_cc(cc)}")
        if req.op not in self.ops:
            out.append(f"no {req.op} op (has: {', '.join(o for o in ('attention', 'varlen', 'paged') if o in self.ops)})")
        if req.dtype not in self.dtypes:
            names = ", ".join(sorted(dtype_name(d) for d in self.dtypes))
            out.append(f"dtype {dtype_name(req.dtype)} not supported (supported: {names})")
        out += self.head_dims.reasons(req.head_dim, req.head_dim_v)
        for feat in required_features(req):
            if feat not in self.features:
                out.append(f"no {_FEATURE_WORDS.get(feat, feat)}")
        if req.block_size is not None and self.block_sizes is not None and not self.block_sizes(req.block_size):
            out.append(f"KV block size {req.block_size} not supported ({self.block_size_rule})")
        return out


def _cc(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]} (sm{cc[0]}{cc[1]})"


def required_features(req: Request) -> list[str]:
    feats = [f for f in ("causal", "window", "softcap", "alibi", "sinks", "lse", "out", "grad")
             if getattr(req, f)]
    if req.gqa_ratio > 1:
        feats.append("gqa")
    return feats


@dataclass
class Availability:
    installed: bool
    version: str | None = None
    error: str | None = None  # one-line cause when installed but not importable (or, when not
    # installed, what was found in its place: e.g. another package's module of the same name)

    @property
    def usable(self) -> bool:
        return self.installed and self.error is None


class CallDeclined(NotImplementedError):
    """A backend's kernel refused one call for its sizes, which only running it could tell (torch's
    cuDNN kernel at one query and one key, for instance). Unlike a run-time failure, it says
    nothing about the request's signature: the selector serves that call with the next usable
    backend and records nothing; a strict name gets a ``NoBackendError`` giving this reason."""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    msg = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return msg if len(msg) <= 240 else msg[:237] + "..."


class Backend:
    """Base class. Subclasses set the class attributes and implement the ops they declare."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    description: str = ""
    #: importable module that must load for the backend to work (None: torch itself)
    module: str | None = None
    #: distribution name for version lookup and install hints
    distribution: str | None = None
    install_hint: str = ""
    #: what the first-import probe runs in a subprocess (default: ``import <module>``)
    probe_statement: str | None = None
    caps: Capabilities

    def __init__(self) -> None:
        self._loaded = None
        self._availability: Availability | None = None

    # -- availability -------------------------------------------------------------------
    def version(self) -> str | None:
        if self.distribution is None:
            return torch.__version__
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    def availability(self) -> Availability:
        """Import the backend's module once and remember how that went."""
        if self._availability is None:
            self._availability = self._probe()
        return self._availability

    def _probe(self) -> Availability:
        if self.module is not None and importlib.util.find_spec(self.module.split(".")[0]) is None:
            return Availability(installed=False)
        if self.module is not None:
            # A first import that segfaults, aborts or hangs is tried in a subprocess first.
            from .. import isolation

            died = isolation.first_import_reason(self.module, self.probe_statement or f"import {self.module}",
                                                 self.version())
            if died:
                return Availability(installed=True, version=self.version(), error=died)
        try:
            self._loaded = self.load()
        except Exception as exc:  # noqa: BLE001 - any import failure is a reason, never a crash
            return Availability(installed=True, version=self.version(), error=one_line(exc))
        return Availability(installed=True, version=self.version())

    def load(self):
        """Import what the backend needs; raise on failure. Default: the declared module."""
        return importlib.import_module(self.module) if self.module else None

    @property
    def lib(self):
        if self._loaded is None:
            avail = self.availability()
            if not avail.usable:
                raise RuntimeError(f"{self.name} is unavailable: {avail.error or 'not installed'}")
        return self._loaded

    # -- selection ------------------------------------------------------------------------
    def reasons(self, req: Request) -> list[str]:
        """Every reason this backend cannot serve ``req``; empty means it can."""
        out = self.caps.reasons(req)
        if req.device_type not in self.caps.devices:
            return out
        avail = self.availability()
        if not avail.installed:
            # error, when set on a not-installed backend, says what was found instead
            detail = avail.error or self.install_hint
            hint = f" ({detail})" if detail else ""
            return [f"not installed{hint}"] + out
        if avail.error:
            return [f"unavailable: {avail.error}"] + out
        return out + self.extra_reasons(req)

    def extra_reasons(self, req: Request) -> list[str]:
        return []

    def notes(self, req: Request) -> list[str]:
        """Remarks about how the backend would serve ``req`` (e.g. a gather fallback)."""
        return []

    def input_conditions(self, req: Request) -> list[str]:
        """What serving ``req`` needs of the inputs' values that anyattn cannot check on each call
        (only a synchronising scan of the data could), phrased to follow "needs". Automatic
        selection and ordered lists pass the backend over for them; a backend forced by name
        runs with them as notes: naming it vouches for them."""
        return []

    # -- ops: (out, lse or None). Tensors are validated by the caller. ---------------------
    def attention(self, q, k, v, *, causal, scale, window, softcap, alibi_slopes, sinks,
                  return_lse, out):
        raise NotImplementedError

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal,
               scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        raise NotImplementedError

    def paged(self, q, k_cache, v_cache, block_table, seqused_k, *, cu_seqlens_q, max_seqlen_q,
              max_seqlen_k, causal, scale, window, softcap, alibi_slopes, sinks, return_lse, out):
        raise NotImplementedError

    # -- backward under the custom ops (torch.compile) -------------------------------------
    # In eager mode a backend that declares "grad" returns autograd-connected outputs and
    # autograd runs its own backward. Inside anyattn's custom ops (what torch.compile sees) the
    # forward runs without autograd, and these methods compute the gradients. The default
    # recomputes the forward with autograd on and differentiates it: right for every backend
    # whose forward is differentiable, at the cost of one extra forward. A backend with a real
    # backward kernel sets ``backward_from_saved`` and overrides them to use (out, lse).
    #: the custom op's forward asks this backend for lse and saves it with out for backward
    backward_from_saved: bool = False

    def attention_backward(self, grad_out, grad_lse, q, k, v, out, lse, *, causal, scale, window,
                           softcap, alibi_slopes, sinks):
        """(dq, dk, dv, dsinks or None) for :meth:`attention`; ``grad_lse`` may be None."""
        return recompute_grads(lambda q_, k_, v_, s_: self.attention(
            q_, k_, v_, causal=causal, scale=scale, window=window, softcap=softcap,
            alibi_slopes=alibi_slopes, sinks=s_, return_lse=grad_lse is not None, out=None),
            q, k, v, sinks, grad_out, grad_lse)

    def varlen_backward(self, grad_out, grad_lse, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                        max_seqlen_k, out, lse, *, causal, scale, window, softcap, alibi_slopes, sinks):
        return recompute_grads(lambda q_, k_, v_, s_: self.varlen(
            q_, k_, v_, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal, scale=scale,
            window=window, softcap=softcap, alibi_slopes=alibi_slopes, sinks=s_,
            return_lse=grad_lse is not None, out=None), q, k, v, sinks, grad_out, grad_lse)

    def paged_backward(self, grad_out, grad_lse, q, k_cache, v_cache, block_table, seqused_k, *,
                       cu_seqlens_q, max_seqlen_q, max_seqlen_k, out, lse, causal, scale, window, softcap,
                       alibi_slopes, sinks):
        return recompute_grads(lambda q_, k_, v_, s_: self.paged(
            q_, k_, v_, block_table, seqused_k, cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max_seqlen_q,
            max_seqlen_k=max_seqlen_k, causal=causal, scale=scale, window=window, softcap=softcap,
            alibi_slopes=alibi_slopes, sinks=s_, return_lse=grad_lse is not None, out=None),
            q, k_cache, v_cache, sinks, grad_out, grad_lse)

    def __repr__(self) -> str:
        return f"<anyattn backend {self.name}>"


def recompute_grads(forward, q, k, v, sinks, grad_out, grad_lse):
    """Gradients of ``forward(q, k, v, sinks) -> (out, lse)`` by running it again under autograd."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        sink_leaf = None if sinks is None else sinks.detach().requires_grad_()
        o, lse = forward(*leaves, sink_leaf)
        outputs, grads = [o], [grad_out]
        if grad_lse is not None and lse is not None:
            outputs.append(lse)
            grads.append(grad_lse)
        wrt = leaves + ([sink_leaf] if sink_leaf is not None else [])
        got = torch.autograd.grad(outputs, wrt, grads, allow_unused=True)
    got = [torch.zeros_like(x) if g is None else g for g, x in zip(got, wrt)]
    return got[0], got[1], got[2], (got[3] if sinks is not None else None)


def caps(**kw) -> Capabilities:
    """Build a Capabilities record from plain Python values (sets/lists/tuples)."""
    for key in ("devices", "dtypes", "ops", "features"):
        kw[key] = frozenset(kw[key])
    unknown = kw["features"] - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown features {sorted(unknown)}")
    return Capabilities(**kw)


def write_out(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """Copy a backend's fresh result into the caller's buffer when one was given."""
    if out is None:
        return result
    out.copy_(result)
    return out


def add_sinks_via_lse(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor, layout: str):
    """Fold per-head sink logits into an attention result that lacks them.

    With Z the softmax normaliser over the keys, adding a sink logit s changes it to
    Z' = Z + exp(s): the output scales by Z / Z' = exp(lse - lse') and lse becomes
    lse' = logaddexp(lse, s). Exact, and cheap next to attention itself. ``layout`` is "dense"
    (out (B, S, H, D), lse (B, H, S)) or "packed" (out (T, H, D), lse (H, T)).
    Returns (out, lse) with the sinks included.
    """
    head_axis = 1 if layout == "dense" else 0
    shape = [1] * lse.dim()
    shape[head_axis] = -1
    new_lse = torch.logaddexp(lse, sinks.float().view(shape))
    # exp(-inf - s) = 0 where no key was visible: that row's output stays 0.
    factor = torch.nan_to_num(torch.exp(lse - new_lse), nan=0.0)
    factor = factor.transpose(1, 2) if layout == "dense" else factor.transpose(0, 1)
    return (out.float() * factor.unsqueeze(-1)).to(out.dtype), new_lse
