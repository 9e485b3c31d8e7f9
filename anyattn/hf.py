"""``import anyattn.hf`` registers ``attn_implementation="anyattn"`` with Hugging Face transformers.

    import anyattn.hf
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="anyattn")
    print(anyattn.hf.explain(model))        # which backend serves the full and the sliding layers

The code lives in :mod:`anyattn.integrations.hf`; this module only re-exports it and registers
on import. ``anyattn.hf.register()`` does the same again (idempotent) and returns the name.
"""

from .integrations.hf import NAME, AnyattnMask, ModelExplanation, attention_forward, explain, mask_function, register

register()

__all__ = ["NAME", "register", "explain", "AnyattnMask", "ModelExplanation", "attention_forward", "mask_function"]
