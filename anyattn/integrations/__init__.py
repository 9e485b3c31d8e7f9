"""Integrations of anyattn into other libraries (each imported only when you ask for it).

``anyattn.integrations.hf`` (also reachable as ``anyattn.hf``): Hugging Face transformers,
``attn_implementation="anyattn"``. Nothing here is imported by ``import anyattn``.
"""
