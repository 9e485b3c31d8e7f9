"""The guard every interpreter test module starts with: Triton must be importable and running
its CPU interpreter (TRITON_INTERPRET=1 set before triton's first import: tests/kernels/conftest.py
does that on GPU-less machines). Elsewhere the module skips; in CI it fails, because CI must
exercise the kernels, never skip them silently."""

import os

import pytest


def interpreting() -> bool:
    import triton.language as tl

    return type(tl.zeros).__name__ == "InterpretedFunction"


def require_interpreter(test_file: str) -> None:
    """Call at the top of a test module, with its ``__file__``."""
    if os.environ.get("CI"):
        import triton  # noqa: F401  (CI installs triton and numpy: a failed import must fail the run)
    else:
        pytest.importorskip("triton")
    if not interpreting():
        why = ("triton was imported before TRITON_INTERPRET=1 was set (or a GPU is present); run: "
               f"TRITON_INTERPRET=1 python -m pytest {os.path.relpath(test_file)}")
        if os.environ.get("CI"):
            raise RuntimeError(why)
        pytest.skip(why, allow_module_level=True)
