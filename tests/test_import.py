"""`import anyattn` stays light: no optional backend package, no triton, no rich, and fast."""

import subprocess
import sys

HEAVY = ("flash_attn", "flash_attn_interface", "flashinfer", "xformers", "triton", "rich", "vllm", "transformers")


def test_import_pulls_in_no_optional_package():
    code = ("import sys, anyattn; heavy = %r; print(','.join(m for m in heavy if m in sys.modules))" % (HEAVY,))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def import_cost_over_torch_us() -> int:
    """Cumulative import time of anyattn minus that of torch, in one `python -X importtime` run."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import anyattn"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    cumulative = {}
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = [p.strip() for p in line.split("|")]
            if parts[2] in ("torch", "anyattn"):
                cumulative[parts[2]] = int(parts[1])
    return cumulative["anyattn"] - cumulative["torch"]


def test_import_cost_over_torch_is_small():
    cost = min(import_cost_over_torch_us() for _ in range(3))  # best of three against noise
    assert cost < 100_000, f"import anyattn adds {cost / 1000:.0f} ms over import torch"
