"""foveate as an attention implementation of Hugging Face transformers (5.x).

``register()`` adds ``"foveate"`` to both of transformers' registries:

* ``AttentionMaskInterface``: the function that the models' mask builders
  (``create_causal_mask``, ``create_sliding_window_causal_mask``, ``create_bidirectional_mask``,
  ...) call. It returns a :class:`HFMask`: what transformers asked for (its ``mask_function``,
  the lengths and offsets, the 2-D padding mask), not a tensor. Without this function the
  models would get ``None`` and a sliding-window layer would silently attend to everything.
* ``AttentionInterface``: the attention function. It turns the :class:`HFMask` into a foveate
  pattern (:func:`pattern_for`) and calls :func:`foveate.attention`:

  ====================================================  ==========================================
  transformers' mask                                    foveate pattern
  ====================================================  ==========================================
  causal                                                ``Causal()``
  sliding window ``w`` (``kv > q - w``, causal)         ``SlidingWindow(w - 1)``
  bidirectional (encoders)                              dense (``None``)
  bidirectional sliding window ``w`` (``|q - kv| <= w``)  ``SlidingWindow(w, w)``
  left or right padding, packed sequences               ``Documents.from_ids(ids, inner=...)``
  anything else (custom ``or``/``and`` masks, holes)    the mask evaluated densely: ``Mask``
  ====================================================  ==========================================

  The last row is the documented fallback: correct for any mask, at the cost of evaluating it
  on every (query, key) pair. Decoding steps with a padded batch take it too (few queries).

Positions: transformers' queries sit at ``q_offset + i`` and its keys at ``kv_offset + j``;
foveate aligns queries bottom-right. A static cache hands over its whole buffer (``kv_length``
past the last written slot), so the keys after ``q_offset + q_length`` (never visible to a
causal query) are cut off first.

Per layer, :func:`set_pattern` replaces the model's pattern by one of the user's on chosen layers
(for example content-selected blocks for a long prefill). Such a pattern applies to calls
whose queries and keys are the same tokens (prefill without a cache offset); the decoding
steps after it use the model's own mask.

Outputs at padding positions are unspecified (transformers' own implementations disagree
there too); every real token's output is exact.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .. import backends
from .. import patterns as P
from ..api import attention
from ..patterns.base import Pattern
from ..score_mods import Softcap

__all__ = ["register", "set_pattern", "HFMask", "pattern_for"]

_PATTERN_ATTR = "_foveate_pattern"


@dataclass(frozen=True, eq=False)
class HFMask:
    """What one of transformers' mask builders asked for, kept structured for the attention call.

    Attributes:
        batch_size: ``B``.
        q_length: queries in the call; they sit at positions ``q_offset + i``.
        kv_length: keys in the call (a static cache's whole buffer); at ``kv_offset + j``.
        q_offset: position of the first query.
        kv_offset: position of the first key.
        mask_function: transformers' ``fn(batch_idx, head_idx, q_idx, kv_idx) -> bool`` on
            positions (broadcasting index tensors).
        padding: ``(B, kv_length)`` bool, ``True`` for a real key; ``None`` when every key is real.
        device: where the model runs (the dense fallback's mask is made there).
    """

    batch_size: int
    q_length: int
    kv_length: int
    q_offset: int
    kv_offset: int
    mask_function: Callable
    padding: torch.Tensor | None
    device: torch.device | None = None
    # pattern_for's answers, per key length: one mask serves every layer of its kind.
    _patterns: dict = field(default_factory=dict, repr=False)

    # A prepared 4-D mask to transformers: generation with a static cache builds the masks once
    # and hands them back to the model, whose mask builders then pass a 4-D mask through.
    ndim = 4

    @functools.cached_property
    def structure(self) -> tuple:
        """``(base pattern, packed sequence ids or None)`` read from ``mask_function``; the base
        is ``"unknown"`` when the function is not one foveate recognises."""
        return _structure(_describe(self.mask_function))

    @property
    def plain(self) -> bool:
        """No padding and no packed sequences."""
        return self.padding is None and self.structure[1] is None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(B, 1, q_length, kv_length)``, the shape of the mask it stands for."""
        return (self.batch_size, 1, self.q_length, self.kv_length)

    def dense(self) -> torch.Tensor:
        """The mask as a ``(B, 1, q_length, kv_length)`` bool tensor on :attr:`device` (every pair
        evaluated)."""
        device = self.device if self.device is not None else (self.padding.device if self.padding is not None else None)
        b = torch.arange(self.batch_size, device=device)[:, None, None, None]
        h = torch.zeros((), dtype=torch.long, device=device)
        qi = torch.arange(self.q_length, device=device)[None, None, :, None] + self.q_offset
        ki = torch.arange(self.kv_length, device=device)[None, None, None, :] + self.kv_offset
        allowed = self.mask_function(b, h, qi, ki).expand(self.batch_size, 1, self.q_length, self.kv_length)
        if self.padding is not None:
            allowed = allowed & self.padding.to(allowed.device)[:, None, None, :]
        return allowed


def _mask_interface(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Callable | None = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> HFMask:
    """transformers' ``AttentionMaskInterface`` entry (called by its mask builders)."""
    if isinstance(attention_mask, HFMask):
        return attention_mask  # already prepared (generation with a static cache)
    if mask_function is None:
        from transformers.masking_utils import causal_mask_function
        mask_function = causal_mask_function
    padding = None
    if attention_mask is not None:
        mask = attention_mask.bool()
        # Padded on the right to the keys' end, as transformers' own builders do.
        short = kv_offset + kv_length - mask.shape[-1]
        if short > 0:
            mask = torch.nn.functional.pad(mask, (0, short))
        mask = mask[:, kv_offset:kv_offset + kv_length]
        if not bool(mask.all()):
            padding = mask
    device = kwargs.get("device")
    return HFMask(int(batch_size), int(q_length), int(kv_length), int(q_offset), int(kv_offset), mask_function,
                  padding, torch.device(device) if device is not None else None)


# ----------------------------------------------------------------------------------------------
# transformers' mask functions, read back into what they are


def _closure(fn) -> dict:
    try:
        return inspect.getclosurevars(fn).nonlocals
    except (TypeError, ValueError):
        return {}


def _describe(fn) -> tuple:
    """transformers' mask function as a small tree: ``("causal",)``, ``("and", [..])``, ..., or
    ``("unknown",)``. Recognised by the functions' qualified names and closure variables."""
    from transformers import masking_utils as mu
    if fn is mu.causal_mask_function:
        return ("causal",)
    if fn is mu.bidirectional_mask_function:
        return ("dense",)
    name = getattr(fn, "__qualname__", "")
    env = _closure(fn)
    outer = name.split(".<locals>.")[0] if ".<locals>." in name else None
    if outer in ("and_masks", "or_masks") and "mask_functions" in env:
        return ("and" if outer == "and_masks" else "or", [_describe(f) for f in env["mask_functions"]])
    if outer == "sliding_window_overlay" and "sliding_window" in env:
        return ("window", int(env["sliding_window"]))
    if outer == "sliding_window_bidirectional_overlay" and "sliding_window" in env:
        return ("centred", int(env["sliding_window"]))
    if outer == "packed_sequence_mask_function" and "packed_sequence_mask" in env:
        return ("packed", env["packed_sequence_mask"])
    if outer == "remap_positions_for_packed_sequence" and "mask_function" in env:
        return ("remap", _describe(env["mask_function"]))
    return ("unknown",)


def _base_pattern(tree: tuple) -> Pattern | None | str:
    """The foveate pattern of a position-only mask tree, ``"unknown"`` if it is not one."""
    kind = tree[0]
    if kind == "causal":
        return P.Causal()
    if kind == "dense":
        return None
    if kind == "and":
        parts = sorted(tree[1], key=lambda t: t[0])
        kinds = [t[0] for t in parts]
        if kinds == ["causal", "window"]:
            return P.SlidingWindow(parts[1][1] - 1)
        if kinds == ["centred", "dense"]:
            return P.SlidingWindow(parts[0][1], parts[0][1])
        if len(parts) == 1:
            return _base_pattern(parts[0])
    return "unknown"


def _structure(tree: tuple) -> tuple[Pattern | None | str, torch.Tensor | None]:
    """``(base pattern, packed sequence ids or None)``; base ``"unknown"`` if not recognised."""
    if tree[0] == "and":
        packed = [t for t in tree[1] if t[0] == "packed"]
        rest = [t for t in tree[1] if t[0] != "packed"]
        if len(packed) == 1 and len(rest) == 1 and rest[0][0] == "remap":
            # Positions restart in each packed sequence; the masks we read back depend only on
            # position differences inside a sequence, so the document's own positions do.
            return _base_pattern(rest[0][1]), packed[0][1]
    return _base_pattern(tree), None


# ----------------------------------------------------------------------------------------------
# HFMask -> pattern


def _document_ids(valid: torch.Tensor, packed: torch.Tensor | None) -> torch.Tensor | None:
    """Per-token document ids making padding and packing one ``Documents`` pattern, or ``None``
    when a sequence's real tokens are not one run (a hole of padding inside it).

    Each run of tokens with equal ``(sequence, real or padding)`` is one document: a left- or
    right-padded sequence is a padding document beside a real one, so a real query sees only
    real keys of its own sequence."""
    seq = packed if packed is not None else torch.zeros_like(valid, dtype=torch.long)
    key = seq.to(torch.long) * 2 + valid.to(torch.long)
    change = torch.ones_like(key, dtype=torch.bool)
    change[:, 1:] = key[:, 1:] != key[:, :-1]
    ids = change.cumsum(1) - 1
    # Real runs per sequence must be at most one (else the real tokens would be cut apart).
    starts = change & valid
    for b in range(valid.shape[0]):
        seq_of_real_runs = seq[b][starts[b]]
        if seq_of_real_runs.numel() != torch.unique(seq_of_real_runs).numel():
            return None
    return ids


def _dense_pattern(allowed: torch.Tensor) -> Pattern:
    """The fallback: a ``(B|1, H|1, Nq, Nkv)`` bool mask as a pattern (evaluated per pair; per
    batch element and per query head where it differs)."""
    batch = allowed.shape[0] if allowed.shape[0] > 1 else None
    heads = allowed.shape[1] if allowed.shape[1] > 1 else None

    def fn(b, h, q_idx, kv_idx):
        return allowed[b if batch else 0, h if heads else 0, q_idx, kv_idx]

    return P.Mask(fn, batch=batch, heads=heads)


def pattern_for(mask: HFMask, key_length: int | None = None) -> tuple[Pattern | None, int]:
    """The foveate pattern of a transformers mask, and how many keys it uses.

    Args:
        mask: what the mask builder returned.
        key_length: the keys the attention call holds (default ``mask.kv_length``).

    Returns:
        ``(pattern, keys)``: run ``attention(q, k[:, :, :keys], v[:, :, :keys], pattern)``;
        ``pattern`` is ``None`` for dense attention. The keys after ``keys`` are never visible
        (the unwritten end of a static cache).
    """
    key_length = mask.kv_length if key_length is None else key_length
    if key_length not in mask._patterns:
        mask._patterns[key_length] = _pattern_for(mask, key_length)
    return mask._patterns[key_length]


def _pattern_for(mask: HFMask, key_length: int) -> tuple[Pattern | None, int]:
    # The keys that a query may see end at the last query's position (bottom-right).
    end = min(mask.q_offset + mask.q_length - mask.kv_offset, key_length)
    base, packed = mask.structure
    causal_like = isinstance(base, Pattern)  # causal, windowed: nothing past the last query
    keys = end if causal_like and end >= mask.q_length else key_length
    aligned = mask.kv_offset + keys == mask.q_offset + mask.q_length
    padding = mask.padding[:, :keys] if mask.padding is not None else None
    if isinstance(base, str) or not aligned:
        return _dense_pattern(mask.dense()[..., :keys]), keys
    if padding is None and packed is None:
        return base, keys
    if mask.q_length == keys:
        valid = padding if padding is not None else torch.ones(mask.batch_size, keys, dtype=torch.bool,
                                                               device=packed.device)
        seq = packed.expand(mask.batch_size, -1) if packed is not None else None
        ids = _document_ids(valid.to(seq.device) if seq is not None else valid, seq)
        if ids is not None:
            return P.Documents.from_ids(ids, inner=base if base is not None else P.Dense()), keys
    return _dense_pattern(mask.dense()[..., :keys]), keys


# ----------------------------------------------------------------------------------------------
# The attention function


def _attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: Any, dropout: float = 0.0, scaling: float | None = None,
                       is_causal: bool | None = None, softcap: float | None = None,
                       sliding_window: int | None = None, s_aux: Any = None, position_bias: Any = None,
                       *, backend: str = "auto", **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' ``AttentionInterface`` entry: ``query (B, Hq, Nq, D)``, ``key``/``value``
    ``(B, Hkv, Nkv, D)``; returns ``(B, Nq, Hq, Dv)`` and no weights."""
    if s_aux is not None:
        raise NotImplementedError("foveate attention does not take s_aux (attention sinks as extra logits) yet; "
                                  "use attn_implementation='eager' for this model")
    if position_bias is not None:
        raise NotImplementedError("foveate attention does not take position_bias (T5-style biases) from "
                                  "transformers yet; use foveate.score_mods.RelativePositionBias directly")
    if dropout and module.training:
        raise NotImplementedError(f"foveate attention has no attention dropout (dropout={dropout} in training "
                                  f"mode); set the model's attention_dropout to 0 or use model.eval()")
    if kwargs.get("output_attentions"):
        warnings.warn("foveate attention does not return attention weights (output_attentions=True)",
                      stacklevel=2)
    q_len, kv_len = query.shape[2], key.shape[2]
    score_mod = Softcap(float(softcap)) if softcap is not None else None

    if isinstance(attention_mask, HFMask):
        pattern, keys = pattern_for(attention_mask, kv_len)
        same_tokens = attention_mask.q_offset == attention_mask.kv_offset and q_len == keys
        plain = attention_mask.plain
    elif attention_mask is None:
        # No mask built (a module called alone, a model without mask builders): the module's
        # own flags say what it is, as for transformers' flash-attention path.
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        if sliding_window is not None and causal:
            pattern = P.SlidingWindow(int(sliding_window) - 1)
        elif causal and q_len > 1:
            pattern = P.Causal()
        else:
            pattern = None
        keys, same_tokens, plain = kv_len, q_len == kv_len, True
    elif isinstance(attention_mask, torch.Tensor):
        # A mask tensor built elsewhere (a user's 4-D mask): honoured as it is.
        keys, same_tokens, plain = kv_len, False, False
        mask4 = attention_mask if attention_mask.dim() == 4 else attention_mask[:, None]
        mask4 = mask4[..., :kv_len]
        if mask4.dtype == torch.bool:
            pattern = _dense_pattern(mask4.to(query.device))
        else:
            from ..score_mods import DenseBias
            pattern = None
            bias = DenseBias(mask4.to(query.dtype))
            score_mod = bias if score_mod is None else score_mod + bias
    else:
        raise TypeError(f"attention_mask must be a foveate HFMask, a tensor or None, got {type(attention_mask).__name__}"
                        f" (was the model's mask built with attn_implementation='foveate'?)")

    user = getattr(module, _PATTERN_ATTR, None)
    if user is not None and same_tokens:
        if not plain:
            raise ValueError(f"layer {getattr(module, 'layer_idx', '?')} has the pattern {user!r} (set_pattern), "
                             f"but this batch is padded or packed; a set pattern takes unpadded, unpacked batches")
        pattern = user
    if keys != kv_len:
        key, value = key[:, :, :keys], value[:, :, :keys]
    out = attention(query, key, value, pattern, score_mod=score_mod, scale=scaling, backend=backend)
    return out.transpose(1, 2).contiguous(), None


def register(name: str = "foveate", *, backend: str = "auto") -> str:
    """Register foveate in transformers as ``attn_implementation=name``.

    Adds the attention function to ``transformers.AttentionInterface`` and the mask function to
    ``transformers.AttentionMaskInterface`` (both are needed: the mask function tells the
    attention which pattern the model asked for). Then
    ``AutoModelForCausalLM.from_pretrained(..., attn_implementation=name)`` or
    ``model.set_attn_implementation(name)``.

    Args:
        name: the implementation's name; not one that transformers matches by substring
            (containing ``flash``, ``sdpa``, ``flex_attention`` or ``paged``).
        backend: the foveate backend every call uses (``"auto"``: the best that runs).

    Returns:
        ``name``.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    lowered = name.lower()
    for reserved in ("flash", "sdpa", "flex_attention", "paged", "eager", "kernels-community"):
        if reserved in lowered:
            raise ValueError(f"name={name!r} contains {reserved!r}, which transformers matches by substring; "
                             f"choose another name")
    backends.check_name(backend)
    from transformers import AttentionInterface, AttentionMaskInterface

    def forward(*args, **kwargs):
        return _attention_forward(*args, backend=backend, **kwargs)

    forward.__name__ = forward.__qualname__ = f"foveate_attention_forward[{backend}]"
    AttentionInterface.register(name, forward)
    AttentionMaskInterface.register(name, _mask_interface)
    return name


def set_pattern(model: torch.nn.Module, pattern: Pattern | None, *, layers: Any = None) -> list[int]:
    """Run ``pattern`` instead of the model's own mask on chosen layers.

    Args:
        model: a transformers model using the ``"foveate"`` implementation.
        pattern: a foveate sequence pattern (causal models want a causal one, e.g.
            ``P.SlidingWindow(1023)`` or content-selected blocks with ``causal=True``), or
            ``None`` to give the layers back their own mask.
        layers: the layer indices (``module.layer_idx``): an int, an iterable of ints, a
            predicate ``fn(layer_idx) -> bool``, or ``None`` for every layer.

    Returns:
        The layer indices that were set.

    The pattern applies when the queries and keys are the same tokens (a prefill without a
    cache); the decoding steps after it use the model's own mask. A padded or packed batch on
    such a layer raises ``ValueError``.
    """
    if pattern is not None and not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a foveate pattern or None, got {type(pattern).__name__}")
    if layers is None:
        chosen = lambda i: True  # noqa: E731
    elif callable(layers):
        chosen = layers
    elif isinstance(layers, int) and not isinstance(layers, bool):
        chosen = {layers}.__contains__
    else:
        try:
            wanted = {int(i) for i in layers}
        except TypeError:
            raise TypeError(f"layers must be None, an int, an iterable of ints or a predicate, got {layers!r}") from None
        chosen = wanted.__contains__
    done = []
    for module in model.modules():
        idx = getattr(module, "layer_idx", None)
        if idx is None or not hasattr(module, "is_causal") or not _is_attention(module):
            continue
        if chosen(idx):
            setattr(module, _PATTERN_ATTR, pattern)
            done.append(int(idx))
    if not done:
        raise ValueError(f"layers={layers!r} matched no attention layer of {type(model).__name__}")
    return sorted(done)


def _is_attention(module: torch.nn.Module) -> bool:
    """A transformers attention module: it has the projections of one."""
    return any(hasattr(module, n) for n in ("q_proj", "qkv_proj", "query", "c_attn", "Wqkv"))
