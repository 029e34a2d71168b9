"""``Radial``: Radial Attention's mask for video diffusion transformers (frame-distance decay)."""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, field

import torch

from ..layout import block_areas
from .base import Pattern, set_ints
from .blocks import Blocks
from .kernel_mask import FrameBands
from .segment_canvas import build_box_pair_layout

MODELS = ("wan", "hunyuan")


@dataclass(frozen=True)
class Radial(Pattern):
    """Radial Attention (Li et al., "Radial Attention: O(n log n) Sparse Attention with Energy
    Decay for Long Video Generation", 2025): attention between frames thins out with their
    distance, as its released mask generator (``radial_attn/attn_mask.py``) builds it.

    The tokens are ``frames`` frames of ``tokens_per_frame`` tokens each, frame after frame (a
    ``(frames, tokens_per_frame)`` canvas). Query token ``r`` of frame ``i`` and key token ``c``
    of frame ``j``, frame distance ``d = |i - j|``, ``g = d.bit_length()``,
    ``P = 2 ** tokens_per_frame.bit_length()``:

    * frame 0 is a sink: every query sees all of it;
    * otherwise the key is allowed when ``|c - r| <= width(d)`` and frame ``j`` is *on* at
      distance ``d``:

      - ``width(0)`` = the whole frame; ``width(1)`` = half the frame for ``model="wan"``
        (``tokens_per_frame // 2``), the whole frame for ``"hunyuan"``;
      - ``width(d)`` for ``d >= 2``: ``max(P / 2**g * decay, block)``, windows halving from one
        power-of-two distance group to the next down to ``block`` tokens;
      - on at distance ``d`` when ``P / 2**g >= block``, else only every ``block // (P /
        2**g)``-th distance (``d % split == 0``): far frames are skipped whole.

    Args:
        frames: number of frames (latent frames: Wan 2.1 720p, 81 frames: 21; HunyuanVideo 720p:
            30).
        tokens_per_frame: tokens per latent frame after patching (720p: ``45 x 80 = 3600``).
        model: ``"wan"`` or ``"hunyuan"`` (the generator's ``model_type``: how far the full
            frames reach).
        decay: the generator's ``decay_factor`` (> 0): scales the windows of distances >= 2.
        block_rule: use the paper's block rule instead of the token-level mask: every frame
            pair's mask is shrunk to ``block x block`` blocks the way the generator does it (a
            block is kept when over 60 % of its non-empty columns are more than a third
            filled), and the kept blocks are attended whole; a block that holds the video's
            last tokens is attended whole on its row and column (the generator gives it to the
            text). The pattern then runs ``block x block`` blocks only.
        block: the generator's block size (128): the narrowest window and the unit of the
            block rule.

    For text beside the video (the generator keeps the text global), wrap it:
    ``WithText(Radial(30, 3600, model="hunyuan"), text)``.

    The layout (token-level form) is built from the raster blocks' boxes on the ``(frames,
    tokens_per_frame)`` canvas: a box pair is decided by the frame distances it spans and the
    gap (some pair allowed) and farthest distance (every pair) between its in-frame ranges; no
    pair is evaluated. On the fused kernels its partial blocks are masked by a
    :class:`~foveate.patterns.kernel_mask.FrameBands` leaf (up to 128 frames; past that, from a
    bitmask).
    """

    frames: int
    tokens_per_frame: int
    model: str = "wan"
    decay: float = 1.0
    block_rule: bool = False
    block: int = 128
    canvas: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        set_ints(self, frames=1, tokens_per_frame=1, block=1)
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        decay = self.decay
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not math.isfinite(decay) or decay <= 0:
            raise ValueError(f"decay must be a positive finite number, got {self.decay!r}")
        if not isinstance(self.block_rule, bool):
            raise TypeError(f"block_rule must be a bool, got {type(self.block_rule).__name__} {self.block_rule!r}")
        object.__setattr__(self, "decay", float(decay))
        object.__setattr__(self, "canvas", (self.frames, self.tokens_per_frame))

    # -- the definition -------------------------------------------------------------------
    def width(self, d: int) -> int:
        """The window half-width at frame distance ``d``: ``|c - r| <= width(d)`` (the
        generator's ``get_window_width``, floored: offsets are integers)."""
        t = self.tokens_per_frame
        if d == 0 or (d == 1 and self.model == "hunyuan"):
            return t
        if d == 1:
            return t // 2
        length = 2 ** t.bit_length() / 2 ** d.bit_length() * self.decay
        return math.floor(max(length, self.block))

    def split(self, d: int) -> int:
        """Frame distance ``d`` is on when ``d % split(d) == 0`` (the generator's
        ``get_diagonal_split_mask``; 1: always on)."""
        length = 2 ** self.tokens_per_frame.bit_length() / 2 ** d.bit_length()
        return 1 if length >= self.block else int(self.block / length)

    def groups(self) -> tuple[tuple[int, int], ...]:
        """``(width, split)`` per distance group ``g = d.bit_length()``, ``g = 0 ..
        (frames - 1).bit_length()`` (both depend on ``d`` only through ``g``)."""
        return tuple((self.width(g and 1 << (g - 1)), self.split(g and 1 << (g - 1)))
                     for g in range((self.frames - 1).bit_length() + 1))

    def frame_allowed(self, d: torch.Tensor, offset: torch.Tensor, key_frame: torch.Tensor) -> torch.Tensor:
        """Whether pairs at frame distance ``d``, in-frame offset ``|c - r|`` ``offset`` and key
        frame ``key_frame`` are allowed (tensors that broadcast)."""
        width = torch.zeros_like(d)
        split = torch.ones_like(d)
        for g, (w, s) in enumerate(self.groups()):
            in_group = (d >= (1 << (g - 1))) if g else (d == 0)
            width = torch.where(in_group, w, width)
            split = torch.where(in_group, s, split)
        return (key_frame == 0) | ((offset <= width) & (d % split == 0))

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        if self.block_rule:
            return self._blocks().mask_mod(q_len, kv_len)
        t = self.tokens_per_frame

        def mask_mod(b, h, q_idx, kv_idx):
            qf, kf = q_idx // t, kv_idx // t
            return self.frame_allowed((qf - kf).abs(), ((kv_idx - kf * t) - (q_idx - qf * t)).abs(), kf)

        return mask_mod

    def allowed_pairs(self) -> int:
        """Allowed pairs, counted per frame pair (a frame pair's band holds ``T + 2 sum_{k <=
        w} (T - k)`` pairs)."""
        if self.block_rule:
            n, bs = self.frames * self.tokens_per_frame, self.block
            qb, kb = torch.nonzero(self._blocks().mask[0, 0], as_tuple=True)
            return int(block_areas(qb, kb, (bs, bs, n, n)).sum())
        t, total = self.tokens_per_frame, 0
        for i in range(self.frames):
            for j in range(self.frames):
                d = abs(i - j)
                if j == 0:
                    total += t * t
                elif d % self.split(d) == 0:
                    w = min(self.width(d), t - 1)
                    total += t + 2 * (w * t - w * (w + 1) // 2)
        return total

    # -- kernels ---------------------------------------------------------------------------
    @property
    def fixed_blocks(self) -> tuple[int, int] | None:  # type: ignore[override]
        return (self.block, self.block) if self.block_rule else None

    def kernel_mask(self, q_len: int, kv_len: int):
        if self.block_rule:
            return None  # (every visited block is full)
        groups = self.groups()
        if len(groups) > FrameBands.MAX_GROUPS:
            return None
        return FrameBands(frame=self.tokens_per_frame, sink=1, widths=tuple(w for w, _ in groups),
                          splits=tuple(s for _, s in groups))

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        # (tile is None: the pattern cannot be tiled, base.build refuses one)
        if self.block_rule:
            return self._blocks().build(q_len, kv_len, block_q=block_q, block_kv=block_kv, device=device)
        canvas, frames, t = self.canvas, self.frames, self.tokens_per_frame
        near = [(d, min(self.width(d), t - 1)) for d in range(frames) if d % self.split(d) == 0]

        def key_regions(owner, x0, x1):
            # Per distance that is on: the frames at that distance on either side, the in-frame
            # range widened by the window; and the sink frame whole.
            owners, los, his = [], [], []
            for d, w in near:
                for sign in ((0,) if d == 0 else (-1, 1)):
                    lo = torch.stack([x0[:, 0] + sign * d, torch.clamp(x0[:, 1] - w, min=0)], 1)
                    hi = torch.stack([x1[:, 0] + sign * d, torch.clamp(x1[:, 1] + w, max=t - 1)], 1)
                    lo[:, 0].clamp_(min=0)
                    hi[:, 0].clamp_(max=frames - 1)
                    keep = lo[:, 0] <= hi[:, 0]
                    owners.append(owner[keep]), los.append(lo[keep]), his.append(hi[keep])
            owners.append(owner)
            los.append(torch.zeros_like(x0))
            his.append(torch.tensor([0, t - 1], device=device).expand_as(x1))
            lo = torch.cat(los)
            return torch.cat(owners), lo, torch.cat(his), torch.ones_like(lo)

        def classify(q_lo, q_hi, k_lo, k_hi):
            # Boxes span few frames (one unless a block holds more than a frame): enumerate them.
            nq = int((q_hi[:, 0] - q_lo[:, 0]).max()) + 1 if q_lo.numel() else 1
            nk = int((k_hi[:, 0] - k_lo[:, 0]).max()) + 1 if k_lo.numel() else 1
            qf = q_lo[:, 0, None] + torch.arange(nq, device=device)
            kf = k_lo[:, 0, None] + torch.arange(nk, device=device)
            valid = (qf <= q_hi[:, 0, None])[:, :, None] & (kf <= k_hi[:, 0, None])[:, None, :]
            d = (qf[:, :, None] - kf[:, None, :]).abs()
            kf = kf[:, None, :].expand_as(d)
            gap = torch.clamp(torch.maximum(k_lo[:, 1] - q_hi[:, 1], q_lo[:, 1] - k_hi[:, 1]), min=0)
            far = torch.maximum(k_hi[:, 1] - q_lo[:, 1], q_hi[:, 1] - k_lo[:, 1])
            some = self.frame_allowed(d, gap[:, None, None], kf) & valid
            every = self.frame_allowed(d, far[:, None, None], kf) | ~valid
            return some.flatten(1).any(1), every.flatten(1).all(1)

        return build_box_pair_layout(canvas, key_regions, classify, block_q=block_q, block_kv=block_kv,
                                     device=device, mask_mod=self.mask_mod(q_len, kv_len),
                                     allowed_pairs=self.allowed_pairs())

    # -- the paper's block rule ------------------------------------------------------------
    def _blocks(self) -> Blocks:
        return _block_rule_pattern(self)

    def block_rule_mask(self) -> torch.Tensor:
        """The ``(nb, nb)`` bool block matrix of the paper's block rule, ``nb = ceil(frames *
        tokens_per_frame / block)``: the generator's ``gen_log_mask_shrinked`` in closed form
        (a frame pair's column densities counted from its band, not from a dense mask)."""
        frames, t, bs = self.frames, self.tokens_per_frame, self.block
        n = frames * t
        nb = -(-n // bs)
        out = torch.zeros(nb, nb, dtype=torch.bool)
        if n % bs:  # the block that holds the video's end goes with the text: whole
            out[n // bs:] = True
            out[:, n // bs:] = True
        per_frame = -(-t // bs)
        # A column's density in a block is the overlap of the block's rows with the column's
        # band, a trapezoid in the column: the columns reaching a count k are one interval, so
        # each block's counts of non-empty and of dense columns come from interval lengths.
        dense_count = int(torch.nonzero(torch.arange(bs + 1) / bs > 1 / 3)[0])  # (as the float test)
        a = torch.arange(per_frame)[None, :, None]  # block of rows, of columns (b)
        b = torch.arange(per_frame)[None, None, :]
        for i in range(frames):
            js = torch.tensor([j for j in range(frames) if j == 0 or abs(i - j) % self.split(abs(i - j)) == 0])
            w = torch.tensor([t if j == 0 else self.width(abs(i - int(j))) for j in js])[:, None, None]
            rem_r, rem_c = (i * t) % bs, ((js * t) % bs)[:, None, None]
            r0, r1 = torch.clamp(a * bs - rem_r, min=0), torch.clamp((a + 1) * bs - rem_r, max=t)
            c0, c1 = torch.clamp(b * bs - rem_c, min=0), torch.clamp((b + 1) * bs - rem_c, max=t)

            def columns(k):  # columns of block b whose count in block a is >= k
                lo = torch.maximum(r0 - w - 1 + k, c0)
                hi = torch.minimum(r1 + w - k + 1, c1)
                return torch.clamp(hi - lo, min=0) * ((r1 - r0 >= k) & (2 * w + 1 >= k))

            nonzero, high = columns(1), columns(dense_count)
            kept = high / (nonzero + 1e-9) > 0.6  # (j, a, b)
            rows = ((i * t) // bs + a).expand_as(kept)
            cols = ((js * t) // bs)[:, None, None] + b
            cols = cols.expand_as(kept)
            kept = kept & (rows < nb) & (cols < nb)
            out[rows[kept], cols[kept]] = True
        return out


@functools.lru_cache(maxsize=16)
def _block_rule_pattern(pattern: Radial) -> Blocks:
    # (kept: the block matrix takes a moment at video sizes)
    return Blocks(pattern.block_rule_mask(), pattern.block, pattern.block)
