"""The attention processors: diffusers' own processors with foveate's attention.

Each ``__call__`` is its diffusers counterpart's, step by step (projections, norms, rotary
embedding with diffusers' helpers, output projection), with the same signature (diffusers
passes keyword arguments by the processor's parameter names); only the attention call differs.
They share a :class:`CanvasState` per transformer, which the transformer's forward pre-hook
fills with the latent canvas of the running forward.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...api import attention
from ...nn.joint import joint_attention
from ...patterns.base import Pattern
from ...patterns.dense import Dense

__all__ = ["CanvasState", "FoveateProcessor", "WanProcessor", "HunyuanVideoProcessor", "CogVideoXProcessor",
           "LTXProcessor"]


# -- the shared state: canvas of the running forward ---------------------------------------------
class CanvasState:
    """What the processors of one transformer share: the canvas of the running forward (set by
    the transformer's forward pre-hook), the patterns built for it, and the last attention mask
    checked (the same tensor reaches every layer of a forward).

    ``family`` describes the model: ``name``, ``canvas(module, args, kwargs)`` and ``canvas_help``.
    """

    def __init__(self, family, backend: str):
        self.family = family
        self.backend = backend
        self.canvas: tuple[int, ...] | None = None
        self.patterns: dict[tuple[int, tuple[int, ...] | None], Pattern | None] = {}
        self.mask: tuple[torch.Tensor, Any] | None = None

    def pre_hook(self, module, args, kwargs):
        self.canvas = self.family.canvas(module, args, kwargs)
        self.mask = None
        return None

    def pattern(self, spec, layer: int) -> Pattern | None:
        canvas = self.canvas
        key = (id(spec), canvas)  # (specs live as long as their processors; some are not hashable)
        if key in self.patterns:
            return self.patterns[key]
        if isinstance(spec, Pattern):
            pattern = spec
        else:
            if canvas is None:
                raise ValueError(f"layer {layer}: the pattern is a factory of the canvas, but the canvas of this "
                                 f"{self.family.name} forward is unknown ({self.family.canvas_help})")
            pattern = spec(canvas)
            if pattern is not None and not isinstance(pattern, Pattern):
                raise TypeError(f"pattern: the factory of layer {layer} returned {type(pattern).__name__}, expected a "
                                f"foveate pattern or None")
        pattern_canvas = getattr(pattern, "canvas", None)
        if canvas is not None and pattern_canvas is not None and tuple(pattern_canvas) != canvas:
            raise ValueError(f"pattern of layer {layer} is on the canvas {tuple(pattern_canvas)}, but this "
                             f"{self.family.name} forward has the latent canvas {canvas} (tokens after patching); "
                             f"give a factory, e.g. lambda canvas: P.Neighborhood(canvas, kernel)")
        if len(self.patterns) > 64:
            self.patterns.clear()
        self.patterns[key] = pattern
        return pattern


# -- the processors --------------------------------------------------------------------------------
class FoveateProcessor:
    """Base of foveate's processors: one layer's pattern, the shared state, the original processor."""

    _attention_backend = None  # set by diffusers' set_attention_backend; foveate ignores it
    _parallel_config = None  # set by diffusers' context parallelism, which foveate refuses

    def __init__(self, state: CanvasState, spec, layer: int, original):
        self.state, self.spec, self.layer, self.original = state, spec, layer, original

    def __repr__(self):
        return f"{type(self).__name__}(layer={self.layer}, pattern={self.spec!r})"

    def _check(self, attention_mask, n_canvas: int):
        if self._parallel_config is not None:
            raise ValueError(f"layer {self.layer}: foveate's processors do not run under diffusers' context "
                             f"parallelism (each device would see part of the canvas); remove() them first")
        if attention_mask is not None:
            raise ValueError(f"layer {self.layer}: {type(self.original).__name__} received an attention_mask, which "
                             f"foveate's processor cannot honour together with its pattern; remove() it for this call")
        canvas = self.state.canvas
        if canvas is not None and math.prod(canvas) != n_canvas:
            raise ValueError(f"layer {self.layer}: {n_canvas} video tokens, but the latent canvas {canvas} holds "
                             f"{math.prod(canvas)}: the tokens are not the canvas (extra conditioning tokens, or a "
                             f"split sequence), so the pattern cannot be placed")

    def _attend(self, q, k, v, n_text: int = 0, text_first: bool = False, key_lengths=None):
        """``(B, H, N, D)`` attention of the layer's pattern on the video tokens, text global."""
        pattern = self.state.pattern(self.spec, self.layer)
        if isinstance(pattern, Dense):
            pattern = None  # one dense call over all tokens (what joint_attention does for None)
        backend = self.state.backend
        if key_lengths is None:
            return joint_attention(q, k, v, pattern, extra=n_text, extra_first=text_first, backend=backend)
        # Text padding (text last): batch elements grouped by their number of valid keys m;
        # the first m tokens attend among themselves, the padded text queries see those m keys.
        n, n_canvas = q.shape[2], q.shape[2] - n_text
        outs, order = [], []
        for m in sorted(set(key_lengths)):
            idx = [b for b, length in enumerate(key_lengths) if length == m]
            if len(idx) == q.shape[0]:
                qb, kb, vb = q, k[:, :, :m], v[:, :, :m]
            else:
                sel = torch.tensor(idx, device=q.device)
                qb, kb, vb = q.index_select(0, sel), k.index_select(0, sel)[:, :, :m], v.index_select(0, sel)[:, :, :m]
            parts = [joint_attention(qb[:, :, :m], kb, vb, pattern, extra=m - n_canvas, backend=backend)]
            if m < n:
                parts.append(attention(qb[:, :, m:], kb, vb, None, backend=backend))
            outs.append(torch.cat(parts, 2))
            order += idx
        out = torch.cat(outs, 0)
        if order != sorted(order):
            out = out.index_select(0, torch.tensor(order, device=q.device).argsort())
        return out


def _wan_rotary(hidden_states, freqs_cos, freqs_sin):
    # diffusers' WanAttnProcessor defines this inside its __call__ (it cannot be imported): verbatim.
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


class WanProcessor(FoveateProcessor):
    """``WanAttnProcessor`` on a self-attention (``attn1``) with foveate's attention."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        if encoder_hidden_states is not None or attn.add_k_proj is not None:
            raise ValueError(f"layer {self.layer}: foveate's Wan processor is for the self-attention (attn1)")
        self._check(attention_mask, hidden_states.shape[1])
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _wan_rotary(query, *rotary_emb)
            key = _wan_rotary(key, *rotary_emb)
        out = self._attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)).transpose(1, 2)
        hidden_states = out.flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states


class HunyuanVideoProcessor(FoveateProcessor):
    """``HunyuanVideoAttnProcessor2_0`` (dual- and single-stream blocks) with foveate's joint
    attention: video queries see their pattern's keys and every text key, text queries see all."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        n_video = hidden_states.shape[1]
        n_text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        self._check(None, n_video)
        key_lengths = self._key_lengths(attention_mask, hidden_states.shape[0], n_video, n_video + n_text)

        if attn.add_q_proj is None and encoder_hidden_states is not None:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        # 1. QKV projections
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        # 2. QK normalization
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        # 3. Rotary embeddings on the video tokens
        if image_rotary_emb is not None:
            if attn.add_q_proj is None and encoder_hidden_states is not None:
                query = torch.cat([apply_rotary_emb(query[:, :-n_text], image_rotary_emb, sequence_dim=1),
                                   query[:, -n_text:]], dim=1)
                key = torch.cat([apply_rotary_emb(key[:, :-n_text], image_rotary_emb, sequence_dim=1),
                                 key[:, -n_text:]], dim=1)
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        # 4. Text QKV projections and normalization (dual-stream blocks)
        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            encoder_query = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            encoder_key = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            encoder_value = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            if attn.norm_added_q is not None:
                encoder_query = attn.norm_added_q(encoder_query)
            if attn.norm_added_k is not None:
                encoder_key = attn.norm_added_k(encoder_key)
            query = torch.cat([query, encoder_query], dim=1)
            key = torch.cat([key, encoder_key], dim=1)
            value = torch.cat([value, encoder_value], dim=1)
        # 5. Attention: video tokens then text tokens
        out = self._attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), n_text=n_text,
                           key_lengths=key_lengths).transpose(1, 2)
        hidden_states = out.flatten(2, 3).to(query.dtype)
        # 6. Output projection
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, :-n_text], hidden_states[:, -n_text:]
            if getattr(attn, "to_out", None) is not None:
                hidden_states = attn.to_out[0](hidden_states)
                hidden_states = attn.to_out[1](hidden_states)
            if getattr(attn, "to_add_out", None) is not None:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states

    def _key_lengths(self, mask, batch: int, n_video: int, n: int):
        """Valid keys per batch element from HunyuanVideo's mask ``(B, 1, 1, N)`` (True: a key to
        attend: every video token and the unpadded text prefix); ``None`` when all are valid."""
        if mask is None:
            return None
        cached = self.state.mask
        if cached is not None and cached[0] is mask and cached[1][0] == (batch, n_video, n):
            return cached[1][1]
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"layer {self.layer}: attention_mask must be HunyuanVideo's boolean key-padding mask, "
                             f"got {getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.dim() != 4 or mask.shape[1:3] != (1, 1) or mask.shape[3] != n or mask.shape[0] not in (1, batch):
            raise ValueError(f"layer {self.layer}: attention_mask of shape {tuple(mask.shape)}: foveate's processor "
                             f"takes a key-padding mask (B, 1, 1, {n}) only")
        keys = mask[:, 0, 0].expand(batch, n)
        lengths = keys.sum(1)
        prefix = torch.arange(n, device=mask.device) < lengths[:, None]
        if not torch.equal(keys, prefix) or bool((lengths < n_video).any()):
            raise ValueError(f"layer {self.layer}: attention_mask must allow every video key and a prefix of the text "
                             f"keys (text padding at the end), as HunyuanVideo builds it; this one does not")
        result = None if bool((lengths == n).all()) else [int(x) for x in lengths.tolist()]
        self.state.mask = (mask, ((batch, n_video, n), result))
        return result


class CogVideoXProcessor(FoveateProcessor):
    """``CogVideoXAttnProcessor2_0`` (or its fused variant) with foveate's joint attention:
    text tokens first, then video tokens."""

    def __init__(self, state, spec, layer, original, fused: bool):
        super().__init__(state, spec, layer, original)
        self.fused = fused

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        text_seq_length = encoder_hidden_states.size(1)
        self._check(attention_mask, hidden_states.shape[1])
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size = hidden_states.shape[0]
        if self.fused:
            qkv = attn.to_qkv(hidden_states)
            query, key, value = torch.split(qkv, qkv.shape[-1] // 3, dim=-1)
        else:
            query = attn.to_q(hidden_states)
            key = attn.to_k(hidden_states)
            value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query[:, :, text_seq_length:] = apply_rotary_emb(query[:, :, text_seq_length:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_seq_length:] = apply_rotary_emb(key[:, :, text_seq_length:], image_rotary_emb)
        hidden_states = self._attend(query, key, value, n_text=text_seq_length, text_first=True)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1)
        return hidden_states, encoder_hidden_states


class LTXProcessor(FoveateProcessor):
    """``LTXVideoAttnProcessor`` on a self-attention (``attn1``) with foveate's attention."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

        if encoder_hidden_states is not None:
            raise ValueError(f"layer {self.layer}: foveate's LTX processor is for the self-attention (attn1)")
        self._check(attention_mask, hidden_states.shape[1])
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb)
            key = apply_rotary_emb(key, image_rotary_emb)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        out = self._attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)).transpose(1, 2)
        hidden_states = out.flatten(2, 3).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states
