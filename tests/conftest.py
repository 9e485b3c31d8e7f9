import os
import tempfile

# Flex on CPU compiles C++ per shape family (~20 s each); the CPU suite runs it uncompiled
# (torch's unfused path, same math) except where a test opts back in.
os.environ.setdefault("ANYATTN_FLEX_COMPILE", "0")
os.environ.pop("ANYATTN_BACKEND", None)
os.environ.pop("ANYATTN_VERIFY", None)
# `anyattn verify` results on the developer's machine must not change what the tests select.
os.environ["ANYATTN_CACHE_DIR"] = tempfile.mkdtemp(prefix="anyattn-test-cache-")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_selection(monkeypatch):
    import anyattn.selector

    monkeypatch.delenv("ANYATTN_BACKEND", raising=False)
    anyattn.selector.clear_cache()
    yield
    anyattn.selector.clear_cache()
