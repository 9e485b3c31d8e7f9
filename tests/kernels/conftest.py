"""Kernel tests: make Triton's CPU interpreter available on GPU-less machines.

``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates a function, including Triton's own
``triton.language`` helpers at ``import triton``; so it must be set before the first import of
triton in the process. This conftest is collected before any test module that could import
triton, and sets it only where no CUDA GPU exists (where compiled Triton cannot run anyway), so
GPU runs (``pytest -m gpu``) keep compiled kernels.
"""

import os
import sys

import torch

# (tests/conftest.py does the same for the whole suite; this keeps `pytest tests/kernels` alone right)
if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
