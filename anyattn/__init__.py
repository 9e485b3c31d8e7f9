"""anyattn: fast attention that always installs, always runs, and says why.

    import anyattn
    out = anyattn.attention(q, k, v, causal=True)          # the fastest backend that works here
    print(anyattn.explain(q, k, v, causal=True))           # which one, and why not the others
    with anyattn.use_backend("flash_attn,sdpa_cudnn"):      # an ordered preference
        ...

Importing anyattn imports torch and nothing else heavy: optional backends (flash_attn,
flashinfer, xformers, triton) are imported when a call first needs them.
"""

from .api import attention, explain, paged_attention, varlen_attention
from .selector import Decision, NoBackendError, clear_cache, use_backend
from .warmup import warmup

__version__ = "0.1.0"

__all__ = ["attention", "varlen_attention", "paged_attention", "use_backend", "explain", "warmup", "Decision",
           "NoBackendError", "clear_cache", "__version__"]
