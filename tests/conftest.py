import os
import sys

import torch

# Triton's CPU interpreter for the kernel tests: TRITON_INTERPRET is read when triton's own
# helpers are decorated at `import triton`, and several test modules import torch._dynamo
# (which imports triton) at collection, so it is set here, before any test module loads. Only
# where no CUDA GPU exists: GPU runs (`pytest -m gpu`) keep compiled kernels.
if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Flex on CPU compiles C++ per shape family (~20 s each); the CPU suite runs it uncompiled
# (torch's unfused path, same math) except where a test opts back in.
os.environ.setdefault("ANYATTN_FLEX_COMPILE", "0")
os.environ.pop("ANYATTN_BACKEND", None)
os.environ.pop("ANYATTN_VERIFY", None)
# `anyattn verify` results on the developer's machine must not change what the tests select.
# A tune file in the user's ~/.cache/anyattn must not steer the suite's automatic selection.
import tempfile  # noqa: E402

os.environ["ANYATTN_CACHE_DIR"] = tempfile.mkdtemp(prefix="anyattn-test-cache-")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_selection(monkeypatch):
    import anyattn.selector

    monkeypatch.delenv("ANYATTN_BACKEND", raising=False)
    anyattn.selector.clear_cache()
    yield
    anyattn.selector.clear_cache()
