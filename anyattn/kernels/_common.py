"""Pure-Python helpers shared by the Triton kernel modules.

Nothing here imports triton, and nothing here holds a ``@triton.jit`` function:
each kernel module defines its own jitted helpers so that a test can load a
private, interpreted copy of a kernel module (``TRITON_INTERPRET`` is read by
``triton.jit`` at decoration time) without disturbing the compiled one.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def value_tile_width(d: int, dv: int, descriptors: bool, pad: bool = True) -> int:
    """Width of the value-row tile (V, O, dO, dV) for head dims ``d`` (queries/keys), ``dv``.

    On the H200 (sm90, Triton 3.6) a value tile narrower than the query tile on the pointer-load
    path computed wrong values (d128/dv32) or read out of bounds (d64 and d80 with dv32); the same
    shapes through TMA descriptors, or with the value tile padded to the query tile's width (its
    extra columns masked), were right (GPU fuzz and tests/kernels/test_triton_gpu.py, 2026-12-01).
    So pointer loads get the padded width: P.V work on masked columns, for a rare shape.
    ``pad=False`` keeps the narrow tile (to reproduce the bug)."""
    bd, bdv = max(16, next_pow2(d)), max(16, next_pow2(dv))
    return bd if bdv < bd and pad and not descriptors else bdv


# os.environ.get of an unset variable costs ~1 µs (Mapping.get raises and catches KeyError), and
# interpret_mode() is read on every kernel call: look the encoded name up in os.environ's own
# dict, which os.environ[...] = / del / putenv-through-os.environ keep current. Anything unusual
# (os.environ replaced, another platform's mapping) takes os.environ.get.
_ENVIRON = os.environ
_ENV_DATA = getattr(os.environ, "_data", None)
try:
    _INTERP_KEY = os.environ.encodekey("TRITON_INTERPRET")
except Exception:  # noqa: BLE001 - no encodekey: the plain lookup below
    _INTERP_KEY = None
_NOT_INTERP = ("", "0", "false", "False")


def interpret_mode() -> bool:
    if os.environ is _ENVIRON and type(_ENV_DATA) is dict and _INTERP_KEY is not None:
        raw = _ENV_DATA.get(_INTERP_KEY)
        if raw is None:
            return False
        return os.environ.decodevalue(raw) not in _NOT_INTERP
    return os.environ.get("TRITON_INTERPRET", "0") not in _NOT_INTERP


@functools.lru_cache(maxsize=None)
def _device_props(index: int):
    p = torch.cuda.get_device_properties(index)
    return (p.multi_processor_count, (p.major, p.minor))


def num_sms(device: torch.device) -> int:
    """Multiprocessor count (cached; no device sync). 8 on CPU (interpreter)."""
    if device.type != "cuda":
        return 8
    idx = device.index if device.index is not None else torch.cuda.current_device()
    return _device_props(idx)[0]


def capability(device: torch.device) -> tuple[int, int]:
    if device.type != "cuda":
        return (0, 0)
    idx = device.index if device.index is not None else torch.cuda.current_device()
    return _device_props(idx)[1]


def window_bounds(causal: bool, window) -> tuple[bool, bool, int, int]:
    """(has_left, has_right, left, right) with causal folded in (causal => right = 0)."""
    left, right = (-1, -1) if window is None else (int(window[0]), int(window[1]))
    has_left = left >= 0
    has_right = right >= 0 or causal
    if causal:
        right = 0 if right < 0 else min(right, 0)
    return has_left, has_right, max(left, 0), max(right, 0)


def logit_constants(scale: float, softcap: float | None) -> tuple[float, float, bool]:
    """Constants for the log2-domain logits.

    Without softcap: s2 = qk * (scale*log2e).
    With softcap c:  s2 = (c*log2e) * tanh(qk * scale / c).
    Returns (qk_scale, cap2, has_softcap).
    """
    if softcap is not None and softcap > 0:
        return float(scale) / float(softcap), float(softcap) * LOG2E, True
    return float(scale) * LOG2E, 0.0, False


def dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs: full-precision fp32 dot ("ieee"); 16-bit inputs ignore it.
    return "ieee" if dtype == torch.float32 else "tf32"


_CUDA_GET_DEVICE = getattr(torch._C, "_cuda_getDevice", None)


def current_device() -> int:
    """``torch.cuda.current_device()`` without its lazy-init check: the kernel wrappers ask only
    while holding a CUDA tensor, so CUDA is initialised."""
    if _CUDA_GET_DEVICE is not None:
        return _CUDA_GET_DEVICE()
    return torch.cuda.current_device()


def device_guard(t: torch.Tensor):
    """Make ``t``'s GPU current for the launch (Triton launches on the current device)."""
    if t.device.type == "cuda" and t.device.index is not None \
            and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def _torch_scratch(size, alignment, stream):
    return torch.empty(size, dtype=torch.int8, device=torch.cuda.current_device())


def ensure_allocator():
    """Install the scratch allocator that device-side tensor descriptors need, in *this* context.

    Triton keeps its allocator in a ContextVar: one set in the main thread is not seen by other
    threads, among them autograd's backward worker (seen on the H200: "no allocator was set" in
    the backward's kernels). So the check runs on every descriptor launch (a ContextVar read).
    """
    import triton

    try:
        from triton.runtime import _allocation

        if not isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
            return
    except (ImportError, AttributeError):  # another Triton layout: set it every time
        pass
    triton.set_allocator(_torch_scratch)
