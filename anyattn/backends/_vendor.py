"""Plumbing shared by the vendor adapters (flash_attn, flash_attn_3, flashinfer, xformers).

Version gates read the installed distribution's metadata (never the package's own
``__version__``, which would need an import). Results are normalised here to anyattn's
conventions: lse fp32 natural log, ``-inf`` for a row that sees no key (FlashAttention writes
``+inf`` there), output rows of such queries exactly 0, sinks folded in through the lse.
Nothing here reads device memory: every fix-up is a tensor op queued on the device.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import math

import torch
from packaging.version import InvalidVersion, Version

from ._padded import token_coordinates  # noqa: F401  (re-exported for the adapters)
from .base import Backend, add_sinks_via_lse, one_line, write_out  # noqa: F401

LN2 = math.log(2.0)


def installed_version(distributions: tuple[str, ...]) -> str | None:
    """The version of the first of ``distributions`` that is installed (metadata only)."""
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def parse_version(text: str | None) -> Version | None:
    if not text:
        return None
    try:
        return Version(text)
    except InvalidVersion:
        # e.g. "2.6.3+cu123torch2.4cxx11abiFALSE" parses; a vendor fork's odd string may not
        head = text.split("+")[0].split("-")[0]
        try:
            return Version(head)
        except InvalidVersion:
            return None


def needs(package: str, have: Version | None, need: str, what: str, why: str = "") -> list[str]:
    """A version gate as a reason: ``[]`` when ``have`` is new enough (or unknown)."""
    if have is None or have >= Version(need):
        return []
    tail = f" ({why})" if why else ""
    return [f"{what} needs {package} >= {need}{tail}; installed: {have}"]


def accepts(fn, name: str) -> bool:
    """Whether callable ``fn`` takes a parameter ``name`` (``**kwargs`` counts)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def fix_lse(lse: torch.Tensor) -> torch.Tensor:
    """fp32, and ``-inf`` (not ``+inf`` / NaN) where a row saw no key."""
    lse = lse.float()
    return torch.where(torch.isnan(lse) | (lse == math.inf), torch.full_like(lse, -math.inf), lse)


def zero_empty_rows(out: torch.Tensor, lse: torch.Tensor, head_axis_out: int, token_axes: str) -> torch.Tensor:
    """Zero output rows whose lse is -inf (kernels may leave NaN or garbage there).

    ``token_axes`` says how lse lines up with out: "dense" (lse (B,H,S), out (B,S,H,D)) or
    "packed" (lse (H,T), out (T,H,D)).
    """
    empty = torch.isneginf(lse)
    if token_axes == "dense":
        mask = empty.transpose(1, 2).unsqueeze(-1)
    else:
        mask = empty.transpose(0, 1).unsqueeze(-1)
    return out.masked_fill(mask, 0.0)


def finish(o: torch.Tensor, lse: torch.Tensor | None, *, layout: str, sinks, return_lse: bool, out,
           zero_empty: bool = False):
    """Apply sinks through the lse, copy into ``out=``, drop the lse unless asked for.

    ``layout``: "dense" (o (B,S,H,D), lse (B,H,S)) or "packed" (o (T,H,D), lse (H,T)).
    """
    if lse is not None:
        lse = fix_lse(lse)
        if zero_empty:
            o = zero_empty_rows(o, lse, 2 if layout == "dense" else 1, layout)
    if sinks is not None:
        if lse is None:
            raise RuntimeError("anyattn: sinks need the kernel's lse, which it did not return")
        o, lse = add_sinks_via_lse(o, lse, sinks, layout)
    o = write_out(o, out)
    return o, (lse if return_lse else None)


def padded_lse_to_packed(lse: torch.Tensor, cu_q: torch.Tensor, total: int) -> torch.Tensor:
    """(B, H, max_q) per-sequence padded lse (flash-attn < 2.6 varlen) -> packed (H, T)."""
    b, pos = token_coordinates(cu_q, total)
    return lse[b, :, pos].transpose(0, 1)


def cu_from_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """int32 cumulative offsets [0, l0, l0+l1, ...] on the lengths' device (no sync)."""
    return torch.nn.functional.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))


def contiguous_last(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def unbounded(window: tuple[int, int], big: int) -> tuple[int, int]:
    """Replace -1 (unbounded) by ``big`` for kernels that take only finite windows."""
    return tuple(big if w < 0 else w for w in window)  # type: ignore[return-value]


class VendorBackend(Backend):
    """A Backend around an optional vendor package: metadata versions, friendlier arch reasons."""

    #: distribution names to try, in order, for the installed version
    distributions: tuple[str, ...] = ()
    #: replaces the generic "needs compute capability >= X" sentence (formatted with cc=...)
    arch_reason: str = ""

    def version(self) -> str | None:
        return installed_version(self.distributions or ((self.distribution,) if self.distribution else ()))

    def parsed_version(self) -> Version | None:
        return parse_version(self.version())

    def reasons(self, req):
        out = super().reasons(req)
        if self.arch_reason and req.capability is not None:
            cc = f"{req.capability[0]}.{req.capability[1]} (sm{req.capability[0]}{req.capability[1]})"
            out = [self.arch_reason.format(cc=cc) if r.startswith(("needs compute capability",
                                                                   "supports compute capability"))
                   else r for r in out]
        return out
