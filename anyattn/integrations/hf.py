"""Hugging Face transformers integration: ``attn_implementation="anyattn"``.

    import anyattn.hf                                   # registers "anyattn" with transformers
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="anyattn")

Two functions are registered under the one name (transformers >= 5.0):

* a **mask function** (``AttentionMaskInterface``). transformers calls it once per forward and
  mask type (full, sliding) with the mask *pattern* (a Python closure) and the user's 2-D padding
  mask. It returns an :class:`AnyattnMask`: causal or not, the sliding window, and, for padded or
  packed batches, the variable-length layout (``cu_seqlens``) that the attention layers of that
  type share. Without a mask function transformers would pass ``attention_mask=None`` and a
  padded batch would silently attend to its padding.
* an **attention function** (``AttentionInterface``) that maps transformers' call onto
  :func:`anyattn.attention` or :func:`anyattn.varlen_attention`.

The name is deliberately free of "flash", "sdpa" and "flex_attention": transformers matches
those substrings and switches on special paths of its own (kernel downloads, fp32 casts,
``is_causal`` skips) that anyattn does not need.

Layout. transformers passes q ``(B, H, Sq, D)`` and k/v ``(B, Hkv, Skv, D)`` (not repeated
for GQA, often non-contiguous); ``transpose(1, 2)`` gives anyattn's ``(B, S, H, D)`` as a view,
and anyattn accepts any strides, so the dense path copies nothing. The output is
``(B, Sq, H, Dv)``, what transformers' modeling code reshapes next.

Masks and host synchronisation (``max_seqlen_*`` must be Python ints in anyattn):

* no 2-D mask -> dense ``attention`` (lower-right causal when a KV cache makes Skv > Sq);
* a 2-D padding mask -> ``varlen_attention`` over *segments*: each row is split into
  [leading padding | valid tokens | trailing padding], so the padded batch is one packed batch
  of 3*B sequences and the output comes back already in the padded layout (no pad-back
  scatter; padding positions hold finite garbage, as with eager). ``cu_seqlens`` are computed
  on the device and ``max_seqlen`` is the padded length (an upper bound, which anyattn
  accepts), so the layout itself needs no sync and keeps static shapes for a static cache under
  ``torch.compile``. Outside ``torch.compile`` the mask function (once per forward and mask
  type, not per layer) spends one sync to see whether the mask is all ones (then the dense path
  serves it, as for generate()'s all-ones masks) and, for a padded batch, a second one to check
  that each row's valid tokens are one contiguous run (left or right padding; holes raise);
* packed batches (``DataCollatorWithFlattening``): ``cu_seq_lens_q/k`` + ``max_length_q/k``
  kwargs are used as given (no sync); packed ``position_ids`` are turned into ``cu_seqlens``
  once per forward (one sync), cached on the ``position_ids`` tensor that every layer shares;
* anything anyattn cannot express exactly (4-D masks, ``or``-combined or chunked patterns,
  dropout) raises ``ValueError`` naming what was passed, never a silently ignored mask.

:func:`explain` says which anyattn backend serves each kind of attention layer of a model.
"""

from __future__ import annotations

import logging
import math
import weakref

import torch

import anyattn

NAME = "anyattn"
log = logging.getLogger("anyattn.hf")

__all__ = ["NAME", "register", "explain", "AnyattnMask", "attention_forward", "mask_function",
           "ModelExplanation"]


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------
def register() -> str:
    """Register anyattn with transformers (idempotent); returns the implementation name."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError as exc:  # transformers is an optional dependency
        raise ImportError(f"anyattn.hf needs transformers>=5.0 (pip install 'anyattn[hf]'): {exc}") from exc
    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, mask_function)
    return NAME


def _compiling() -> bool:
    return torch.compiler.is_compiling()


# --------------------------------------------------------------------------------------------
# The mask object
# --------------------------------------------------------------------------------------------
class AnyattnMask:
    """What transformers' mask creation tells the attention layers of one mask type.

    ``causal``: True/False, or None when the pattern could not be read (then the module's
    ``is_causal`` decides). ``window``: the causal sliding window in tokens including the query
    (transformers' ``sliding_window``), ``bidirectional_window``: the ``|i - j| <= w`` window of
    bidirectional sliding masks. ``varlen``: ``(cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
    max_seqlen_k)`` when the batch must be run as packed sequences, with ``padded=True`` when q/k
    are the padded ``(B, S)`` layout split into segments and ``padded=False`` for packed
    documents. ``kv_length`` is the number of key rows the layers must pass.
    """

    # transformers treats a mask that is not 2-D as already prepared: generate() builds the
    # masks of a static cache ahead of the compiled forward and hands them back in, and the model
    # then calls the mask function again with this object (which mask_function returns as is).
    ndim = 4

    def __init__(self, *, causal, window, bidirectional_window, kv_length, q_length, batch_size, varlen=None,
                 padded=False, has_padding_mask=False, pattern=""):
        self.batch_size = batch_size
        self.causal = causal
        self.window = window
        self.bidirectional_window = bidirectional_window
        self.kv_length = kv_length
        self.q_length = q_length
        self.varlen = varlen
        self.padded = padded
        self.has_padding_mask = has_padding_mask
        self.pattern = pattern

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch_size, 1, self.q_length, self.kv_length)

    def __repr__(self) -> str:
        kind = "dense" if self.varlen is None else ("padded segments" if self.padded else "packed documents")
        return (f"AnyattnMask({self.pattern or 'pattern unknown'}, causal={self.causal}, window={self.window}, "
                f"kv_length={self.kv_length}, {kind})")


class _Pattern:
    def __init__(self):
        self.causal = None
        self.window = None
        self.bidirectional_window = None
        self.packed = None  # (B, S) sequence ids of packed documents
        self.names = []


_SUPPORTED = ("causal, bidirectional, sliding-window (causal or bidirectional), packed sequences, "
              "and a 2-D padding mask")


def _cell(fn, name):
    code = fn.__code__
    return fn.__closure__[code.co_freevars.index(name)].cell_contents


def _read_pattern(fn, pat: _Pattern) -> None:
    """Walk transformers' mask-function closures (masking_utils) into a _Pattern; raise if foreign."""
    qual = getattr(fn, "__qualname__", type(fn).__name__)
    base = qual.split(".<locals>")[0]
    pat.names.append(base)
    if base == "causal_mask_function":
        pat.causal = True
    elif base == "bidirectional_mask_function":
        pat.causal = False if pat.causal is None else pat.causal
    elif base in ("and_masks", "sliding_window_causal_mask_function", "sliding_window_bidirectional_mask_function"):
        for f in _cell(fn, "mask_functions"):
            _read_pattern(f, pat)
    elif base == "sliding_window_overlay":
        pat.window = int(_cell(fn, "sliding_window"))
    elif base == "sliding_window_bidirectional_overlay":
        pat.bidirectional_window = int(_cell(fn, "sliding_window"))
    elif base == "remap_positions_for_packed_sequence":
        _read_pattern(_cell(fn, "mask_function"), pat)
    elif base == "packed_sequence_mask_function":
        pat.packed = _cell(fn, "packed_sequence_mask")
    else:
        raise ValueError(
            f"attn_implementation='anyattn': the model asked for an attention mask built from {qual!r}, "
            f"which anyattn cannot express exactly (it supports {_SUPPORTED}). Use "
            "attn_implementation='eager' or 'sdpa' for this model.")


def _pattern_of(mask_fn, use_vmap: bool) -> _Pattern:
    pat = _Pattern()
    if use_vmap:
        # transformers sets use_vmap exactly when a model adds its own or_/and_mask_function
        # (image tokens attending bidirectionally, ...): arbitrary index logic anyattn cannot run.
        raise ValueError(
            "attn_implementation='anyattn': the model combined its causal mask with a custom "
            f"or_mask_function/and_mask_function ({getattr(mask_fn, '__qualname__', mask_fn)!r}), which anyattn "
            f"cannot express exactly (it supports {_SUPPORTED}). Use attn_implementation='eager' or 'sdpa'.")
    if _compiling():
        # Dynamo cannot read closure cells of functions created while tracing, so under
        # torch.compile only the top-level name is read; the module's is_causal and its
        # sliding_window kwarg (which every transformers model passes) carry the rest.
        # (Identity, not __qualname__: Dynamo cannot trace string methods on it.)
        from transformers.masking_utils import bidirectional_mask_function, causal_mask_function

        if mask_fn is causal_mask_function:
            pat.causal = True
            pat.names.append("causal_mask_function")
        elif mask_fn is bidirectional_mask_function:
            pat.causal = False
            pat.names.append("bidirectional_mask_function")
        return pat
    _read_pattern(mask_fn, pat)
    return pat


# --------------------------------------------------------------------------------------------
# Variable-length layouts (device ops only, unless a comment says otherwise)
# --------------------------------------------------------------------------------------------
def _padding_segments(valid: torch.Tensor, q_first, q_length: int, causal_clip: bool, aligned: bool = True):
    """Split each row of a (B, Lk) key-validity mask into [pad | valid | pad] sequences.

    Query token i of a row sits at key row ``q_first + i``. Returns int32 cu_seqlens of length
    3B+1 for the queries (packed as B*Sq rows) and the keys (B*Lk rows). Each query segment is
    the tail of its key segment, so anyattn's lower-right causal alignment is exact per segment.
    ``aligned=False`` (cross-attention: queries are not key positions) puts every query of a
    row with that row's valid keys. Also returns (first, count) for the caller's checks.
    """
    b, lk = valid.shape
    dev = valid.device
    count = valid.sum(-1)
    first = torch.where(count > 0, valid.int().argmax(-1), torch.zeros_like(count))
    end = first + count
    if causal_clip:
        # Keys after the last query are invisible to a causal query anyway; clipping them keeps
        # every query segment the tail of its key segment (e.g. an all-ones 2-D mask spanning a
        # static cache's unfilled slots).
        end = torch.minimum(end, torch.as_tensor(q_first + q_length, device=dev))
        first = torch.minimum(first, end)
    rows = torch.arange(b, device=dev)
    zero = torch.zeros_like(first)
    k_bounds = torch.stack([zero, first, end], -1) + (rows * lk).view(-1, 1)
    if aligned:
        q_rel = torch.stack([zero - q_first, first - q_first, end - q_first], -1).clamp(0, q_length)
    else:
        q_rel = torch.stack([zero, zero, zero + q_length], -1)
    q_bounds = q_rel + (rows * q_length).view(-1, 1)
    # new_full, not torch.tensor([...], device=...): a fill kernel instead of a host-to-device
    # copy, which CUDA-graph capture (generate's reduce-overhead compile) would bake in anyway.
    cu_k = torch.cat([k_bounds.flatten(), count.new_full((1,), b * lk)]).to(torch.int32)
    cu_q = torch.cat([q_bounds.flatten(), count.new_full((1,), b * q_length)]).to(torch.int32)
    return cu_q, cu_k, first, count


def _documents_from_boundaries(starts_mask: torch.Tensor):
    """cu_seqlens and max length for packed documents; ``starts_mask`` (B, S) marks first tokens.

    One host sync (the number of documents is data), done once per forward by the callers.
    """
    b, s = starts_mask.shape
    starts_mask = starts_mask.clone()
    starts_mask[:, 0] = True  # a document never spans two rows
    starts = starts_mask.flatten().nonzero().flatten()
    cu = torch.cat([starts, torch.tensor([b * s], device=starts.device)]).to(torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
    return cu, max_len


def _documents_from_sequence_ids(seq_ids: torch.Tensor):
    change = torch.zeros_like(seq_ids, dtype=torch.bool)
    change[:, 1:] = seq_ids[:, 1:] != seq_ids[:, :-1]
    return _documents_from_boundaries(change)


# A one-entry cache: every layer of a forward gets the same position_ids tensor, so the sync that
# decides "packed or not" happens once per forward instead of once per layer.
_posid_cache: dict = {"ref": None, "version": None, "result": None}


def _documents_from_position_ids(position_ids: torch.Tensor, batch: int):
    if position_ids.shape[0] != batch:
        position_ids = position_ids.expand(batch, -1)
    if not _compiling():
        ref = _posid_cache["ref"]
        if ref is not None and ref() is position_ids and _posid_cache["version"] == position_ids._version:
            return _posid_cache["result"]
    restart = torch.zeros_like(position_ids, dtype=torch.bool)
    restart[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    result = _documents_from_boundaries(restart) if bool(restart.any()) else None
    if not _compiling():
        _posid_cache.update(ref=weakref.ref(position_ids), version=position_ids._version, result=result)
    return result


# --------------------------------------------------------------------------------------------
# The mask function (AttentionMaskInterface)
# --------------------------------------------------------------------------------------------
def mask_function(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset: int = 0,
                  mask_function=None, attention_mask: torch.Tensor | None = None, **kwargs) -> AnyattnMask:
    """transformers' mask hook: returns the :class:`AnyattnMask` the attention layers will get."""
    from transformers.masking_utils import causal_mask_function

    if isinstance(attention_mask, AnyattnMask):  # prepared ahead (generate with a static cache)
        if (attention_mask.q_length, attention_mask.kv_length) != (q_length, kv_length):
            raise ValueError(f"attn_implementation='anyattn': a prepared mask for {attention_mask.q_length} queries and "
                             f"{attention_mask.kv_length} keys was passed to a forward with {q_length} and {kv_length}")
        return attention_mask
    mask_fn = mask_function if mask_function is not None else causal_mask_function
    pat = _pattern_of(mask_fn, bool(kwargs.get("use_vmap", False)))
    common = dict(causal=pat.causal, window=pat.window, bidirectional_window=pat.bidirectional_window,
                  kv_length=kv_length, q_length=q_length, batch_size=batch_size, pattern="+".join(dict.fromkeys(pat.names)))

    if pat.packed is not None and attention_mask is None:
        # transformers detected packed position_ids (no cache, no 2-D mask): documents.
        cu, max_len = _documents_from_sequence_ids(pat.packed)
        return AnyattnMask(varlen=(cu, cu, max_len, max_len), padded=False, **common)

    static_offset = isinstance(q_offset, torch.Tensor)  # StaticLayer keeps its length on the device
    q_first = q_offset - kv_offset  # key row of the first query
    # Queries are the last keys (self-attention, with or without a cache) unless this is a
    # non-causal mask whose lengths say otherwise (cross-attention over an encoder's states).
    aligned = pat.causal is not False or static_offset or q_first + q_length == kv_length
    if attention_mask is None:
        if not aligned or (not static_offset and q_first + q_length == kv_length):
            return AnyattnMask(**common)
        # A static cache's keys include unfilled slots: the valid keys are those before the
        # queries' end, known here only as a device tensor -> segments, no sync.
        device = q_offset.device if static_offset else kwargs.get("device", "cpu")
        valid = (torch.arange(kv_length, device=device) < (q_first + q_length)).expand(batch_size, -1)
        has_mask = False
    else:
        if attention_mask.dim() != 2:
            raise ValueError(f"attn_implementation='anyattn': expected a 2-D padding mask (batch, keys), got "
                             f"shape {tuple(attention_mask.shape)}")
        # The mask covers absolute positions [0, n); key row j of this layer is absolute position
        # kv_offset + j (sliding caches drop old keys, static caches have unfilled slots): pad
        # with "invalid" and slice, as transformers' own sdpa mask does.
        m = attention_mask.to(torch.bool)
        need = kv_offset + kv_length
        if m.shape[-1] < need:
            m = torch.nn.functional.pad(m, (0, need - m.shape[-1]), value=False)
        valid = m[:, kv_offset:need]
        has_mask = True

    compiling = _compiling()
    if not compiling and not static_offset and (q_first + q_length == kv_length or not aligned) \
            and bool(valid.all()):
        # One sync per forward and mask type (generate() passes an all-ones mask every step):
        # nothing is padded, so the cheaper dense path serves it.
        return AnyattnMask(has_padding_mask=has_mask, **common)
    cu_q, cu_k, first, count = _padding_segments(valid, q_first, q_length, causal_clip=pat.causal is not False,
                                                 aligned=aligned)
    if not compiling:
        # A second sync, padded batches only: the segments are exact only if the valid tokens of
        # each row are one contiguous run (left or right padding). Under torch.compile this check
        # is skipped (it would break the graph); generate() with a static cache builds its masks
        # outside the compiled forward, so it is checked there too.
        last = kv_length - 1 - valid.flip(-1).int().argmax(-1)
        holes = (count > 0) & (last - first + 1 != count)
        if bool(holes.any()):
            bad = holes.nonzero().flatten().tolist()
            raise ValueError(
                "attn_implementation='anyattn': the 2-D attention_mask must mark one contiguous run of "
                f"tokens per row (left or right padding); rows {bad[:8]} have holes. Pack such sequences "
                "(DataCollatorWithFlattening) or use attn_implementation='eager'.")
    return AnyattnMask(varlen=(cu_q, cu_k, q_length, kv_length), padded=True, has_padding_mask=has_mask,
                       **common)


# --------------------------------------------------------------------------------------------
# The attention function (AttentionInterface)
# --------------------------------------------------------------------------------------------
def _describe(obj) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a {obj.dim()}-D {obj.dtype} tensor of shape {tuple(obj.shape)}"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}"


def _resolve_window(causal: bool, mask: AnyattnMask | None, sliding_window) -> tuple[int, int]:
    w = sliding_window
    if mask is not None:
        mw = mask.window if causal else mask.bidirectional_window
        if mw is not None and w is not None and int(w) != mw:
            raise ValueError(f"attn_implementation='anyattn': the layer passed sliding_window={w} but its mask "
                             f"was built with a window of {mw} tokens")
        w = mw if w is None else w
    if w is None or (isinstance(w, (int, float)) and w <= 0):
        return (-1, -1)
    w = int(w)
    # transformers' causal window of w tokens includes the query itself (kv_idx > q_idx - w), so
    # it sees w-1 keys to its left; the bidirectional one keeps |q_idx - kv_idx| <= w.
    return (w - 1, 0) if causal else (w, w)


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask, dropout: float = 0.0, scaling: float | None = None,
                      sliding_window: int | None = None, softcap: float | None = None,
                      is_causal: bool | None = None, s_aux: torch.Tensor | None = None, **kwargs):
    """transformers' attention hook: ``(out (B, Sq, H, Dv), None)``."""
    if dropout:
        raise ValueError(f"attn_implementation='anyattn': attention dropout is not supported, got dropout={dropout} "
                         "(set the config's attention_dropout to 0)")
    for unsupported in ("position_bias", "block_table"):
        if kwargs.get(unsupported) is not None:
            raise ValueError(f"attn_implementation='anyattn': {unsupported!r} is not supported, got "
                             f"{_describe(kwargs[unsupported])}")

    mask = attention_mask
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        # A model that bypasses transformers' mask creation and hands over the raw padding mask
        # (read per layer: such a model gives no per-forward hook to cache it on).
        from transformers.masking_utils import bidirectional_mask_function, causal_mask_function

        causal_layer = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        mask = mask_function(query.shape[0], query.shape[2], key.shape[2],
                             q_offset=key.shape[2] - query.shape[2], attention_mask=mask, device=query.device,
                             mask_function=causal_mask_function if causal_layer else bidirectional_mask_function)
    elif mask is not None and not isinstance(mask, AnyattnMask):
        raise ValueError(
            f"attn_implementation='anyattn': got attention_mask={_describe(mask)}; anyattn takes no 4-D or "
            "block masks (they would have to be ignored). Pass the 2-D padding mask (batch, seq) instead, "
            "or use attn_implementation='eager' for a custom mask.")

    if is_causal is None:
        is_causal = mask.causal if mask is not None and mask.causal is not None else getattr(module, "is_causal", True)
    causal = bool(is_causal)
    window = _resolve_window(causal, mask, sliding_window)
    opts = dict(causal=causal, scale=scaling, window=window, softcap=float(softcap) if softcap else 0.0,
                sinks=s_aux)

    q = query.transpose(1, 2)  # (B, Sq, H, D) views: anyattn takes any strides
    k = key.transpose(1, 2)
    v = value.transpose(1, 2)
    b, sq, h, _ = q.shape
    skv = k.shape[1]
    if mask is not None and mask.kv_length != skv:
        raise ValueError(f"attn_implementation='anyattn': the mask was built for {mask.kv_length} keys but the "
                         f"layer passed {skv} (key of shape {tuple(key.shape)})")

    def run_varlen(cu_q, cu_k, max_q, max_k):
        out = anyattn.varlen_attention(q.reshape(b * sq, h, -1), k.reshape(b * skv, k.shape[2], -1),
                                       v.reshape(b * skv, v.shape[2], -1), cu_q, cu_k, max_q, max_k, **opts)
        return out.view(b, sq, h, -1), None

    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None and cu_k is not None:
        max_q, max_k = kwargs.get("max_length_q"), kwargs.get("max_length_k")
        if mask is not None and mask.padded:
            raise ValueError("attn_implementation='anyattn': got both cu_seq_lens_q/k (a packed batch) and a "
                             "padding mask; pass one of them")
        # (Packed documents that transformers also found in position_ids are the same documents.)
        if max_q is None or max_k is None:
            raise ValueError("attn_implementation='anyattn': cu_seq_lens_q/k need max_length_q/k too, got "
                             f"max_length_q={max_q!r}, max_length_k={max_k!r}")
        # Python ints from DataCollatorWithFlattening; a tensor costs one sync per layer here.
        return run_varlen(cu_q.to(torch.int32), cu_k.to(torch.int32), int(max_q), int(max_k))

    if mask is not None and mask.varlen is not None:
        return run_varlen(*mask.varlen)

    position_ids = kwargs.get("position_ids")
    # Packed position_ids that transformers' mask creation did not see (it looks only without a
    # cache, and a plain forward creates one). Deciding needs the data: one sync per forward
    # (cached). Under torch.compile only batch 1 (DataCollatorWithFlattening's layout) is checked,
    # so that batched compiled forwards stay one graph; pass cu_seq_lens_q/k there otherwise.
    if (position_ids is not None and sq == skv and sq > 1 and not (mask is not None and mask.has_padding_mask)
            and position_ids.dim() == 2 and position_ids.shape[-1] == sq and (b == 1 or not _compiling())):
        docs = _documents_from_position_ids(position_ids, b)
        if docs is not None:
            cu, max_len = docs
            return run_varlen(cu, cu, max_len, max_len)

    return anyattn.attention(q, k, v, **opts), None


# --------------------------------------------------------------------------------------------
# Explain: which backend serves each layer kind
# --------------------------------------------------------------------------------------------
class ModelExplanation:
    """Per layer kind: the layers, the features, and anyattn's decision (dense and packed)."""

    def __init__(self, kinds):
        self.kinds = kinds  # list of dicts: name, layers, features, dense, varlen (Decisions)

    def to_dict(self) -> dict:
        return {"kinds": [{"kind": k["name"], "layers": k["layers"], "features": k["features"],
                           "dense": k["dense"].to_dict(), "varlen": k["varlen"].to_dict()} for k in self.kinds]}

    def __str__(self) -> str:
        lines = []
        for k in self.kinds:
            lines.append(f"{k['name']} layers {_ranges(k['layers'])} ({k['features']}): "
                         f"dense -> {k['dense'].chosen or 'none'}, padded/packed -> {k['varlen'].chosen or 'none'}")
        return "\n".join(lines)


def _ranges(idx) -> str:
    out, start, prev = [], None, None
    for i in idx + [None]:
        if start is None:
            start = prev = i
        elif i is not None and i == prev + 1:
            prev = i
        else:
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = prev = i
    return ",".join(out)


def _layer_window(mod, cfg):
    """The sliding window a layer passes to the attention function, as its modeling code decides."""
    if hasattr(mod, "sliding_window"):  # Gemma-2, gpt-oss, Qwen2: per layer, None for full layers
        return mod.sliding_window
    types = getattr(cfg, "layer_types", None)
    if types is not None and mod.layer_idx < len(types):
        return getattr(cfg, "sliding_window", None) if types[mod.layer_idx] == "sliding_attention" else None
    return getattr(cfg, "sliding_window", None)  # Mistral: config.sliding_window for every layer


def explain(model, *, training: bool | None = None, dtype=None, device=None) -> ModelExplanation:
    """Which anyattn backend serves each kind of attention layer of ``model`` (full, sliding...).

    Runs nothing: it builds tiny stand-in tensors with each layer kind's head counts, head dims,
    window, softcap and sinks, and asks :func:`anyattn.explain`. ``training`` (default: the
    model's mode) asks for backends that also have a backward.
    """
    config = model.config
    params = next(model.parameters(), None)
    dtype = dtype or (params.dtype if params is not None else torch.float32)
    device = device or (params.device if params is not None else torch.device("cpu"))
    training = model.training if training is None else training
    groups: dict = {}
    for mod in model.modules():
        if not (hasattr(mod, "layer_idx") and hasattr(mod, "head_dim") and hasattr(mod, "scaling")):
            continue
        cfg = getattr(mod, "config", config)
        hq = getattr(cfg, "num_attention_heads", None)
        hkv = getattr(cfg, "num_key_value_heads", None) or hq
        if hq is None:
            continue
        window = _layer_window(mod, cfg)
        softcap = getattr(mod, "attn_logit_softcapping", None) or 0.0
        sinks = getattr(mod, "sinks", None)
        key = (window, float(softcap), sinks is not None, mod.head_dim, hq, hkv, bool(getattr(mod, "is_causal", True)))
        groups.setdefault(key, []).append(mod.layer_idx)
    kinds = []
    for (window, softcap, has_sinks, d, hq, hkv, causal), layers in groups.items():
        q = torch.empty(1, 2, hq, d, dtype=dtype, device=device, requires_grad=training)
        kv = torch.empty(1, 2, hkv, d, dtype=dtype, device=device, requires_grad=training)
        sinks = torch.zeros(hq, dtype=torch.float32, device=device) if has_sinks else None
        win = (window - 1, 0) if window and causal else ((window, window) if window else (-1, -1))
        opts = dict(causal=causal, window=win, softcap=softcap, sinks=sinks)
        cu = torch.tensor([0, 2], dtype=torch.int32, device=device)
        dense = anyattn.explain(q, kv, kv, scale=1 / math.sqrt(d), **opts)
        varlen = anyattn.explain(q[0], kv[0], kv[0], cu, cu, 2, 2, op="varlen", **opts)
        feats = [f"heads {hq}/{hkv}", f"head_dim {d}"]
        if window:
            feats.append(f"sliding window {window}")
        if softcap:
            feats.append(f"softcap {softcap:g}")
        if has_sinks:
            feats.append("sinks")
        kinds.append({"name": "sliding" if window else "full", "layers": sorted(layers), "features": ", ".join(feats),
                      "dense": dense, "varlen": varlen})
    result = ModelExplanation(kinds)
    log.info("anyattn.hf: %s", str(result).replace("\n", "; "))
    return result
