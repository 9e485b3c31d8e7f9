"""anyattn's own Triton kernels.

Importing this package does not import triton; the kernel modules
(``triton_prefill``, ``triton_paged``, ``triton_backward``) do, and are loaded on first use.
"""

from __future__ import annotations

__all__ = ["flash_attention_backward", "flash_attention_forward", "paged_attention_forward",
           "triton_available"]


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the environment
        return False
    return True


def flash_attention_forward(*args, **kwargs):
    from .triton_prefill import flash_attention_forward as f

    return f(*args, **kwargs)


def paged_attention_forward(*args, **kwargs):
    from .triton_paged import paged_attention_forward as f

    return f(*args, **kwargs)


def flash_attention_backward(*args, **kwargs):
    from .triton_backward import flash_attention_backward as f

    return f(*args, **kwargs)
