"""The backend registry: every backend anyattn knows, by canonical name.

Adapter modules here import only torch at module level; the optional package each one wraps
(flash_attn, flash_attn.cute, flashinfer, xformers, triton) is imported on first use, inside the adapter.
"""

from __future__ import annotations

import importlib

from .base import Backend

# canonical name -> (module, class). Order here is only the listing order of `anyattn backends`;
# the automatic ranking lives in anyattn.selector.AUTO_ORDER.
_REGISTRY: dict[str, tuple[str, str]] = {
    "flash_attn_4": ("flash_attn_4", "FlashAttn4Backend"),
    "flash_attn_3": ("flash_attn_3", "FlashAttn3Backend"),
    "flash_attn": ("flash_attn", "FlashAttnBackend"),
    "flashinfer": ("flashinfer", "FlashInferBackend"),
    "xformers": ("xformers", "XFormersBackend"),
    "triton": ("triton", "TritonBackend"),
    "sdpa": ("sdpa", "SdpaBackend"),
    "sdpa_cudnn": ("sdpa", "SdpaCudnn"),
    "sdpa_flash": ("sdpa", "SdpaFlash"),
    "sdpa_efficient": ("sdpa", "SdpaEfficient"),
    "sdpa_math": ("sdpa", "SdpaMath"),
    "flex": ("flex", "FlexBackend"),
    "reference": ("reference", "ReferenceBackend"),
}

_instances: dict[str, Backend] = {}


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> Backend:
    """The backend instance for a canonical name (created on first use)."""
    inst = _instances.get(name)
    if inst is None:
        module, cls = _REGISTRY[name]
        inst = getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
        _instances[name] = inst
    return inst


def register(backend: Backend) -> None:
    """Add or replace a backend instance (plugins and tests)."""
    _instances[backend.name] = backend
    _REGISTRY.setdefault(backend.name, ("", type(backend).__name__))


def unregister(name: str) -> None:
    _instances.pop(name, None)
    if name in _REGISTRY and _REGISTRY[name][0] == "":
        del _REGISTRY[name]


def reset() -> None:
    """Forget instances (and what their imports taught us); tests use this."""
    _instances.clear()
