"""``P.Radial`` (Radial Attention) against its released mask generator's logic, rewritten as loops.

The generator (``radial_attn/attn_mask.py``: ``get_window_width``, ``get_diagonal_split_mask``,
``gen_log_mask_shrinked``, ``shrinkMaskStrict``) builds a token mask per frame pair and, for
its kernels, shrinks it to blocks. Below: the same decisions, frame pair by frame pair and token
by token, with the generator's hard-coded 128 (block size and threshold) as a parameter so that
small shapes exercise every branch (sinks, halving windows, skipped distances).
"""

from __future__ import annotations

import pytest
import torch

import foveate
from foveate import patterns as P
from foveate.backends.triton import masks
from kernel_spy import needs_triton
from layout_checks import check_layout
from mask_probe import assert_masks_equal, probe

F64 = torch.float64


def generator_window_width(dist, tokens_per_frame, decay, block, model):
    if model == "wan":
        if dist < 1:
            return tokens_per_frame
        if dist == 1:
            return tokens_per_frame // 2
    elif dist <= 1:
        return tokens_per_frame
    decay_length = 2 ** tokens_per_frame.bit_length() / 2 ** dist.bit_length() * decay
    return decay_length if decay_length >= block else block


def generator_split_on(dist, tokens_per_frame, block):
    decay_length = 2 ** tokens_per_frame.bit_length() / 2 ** dist.bit_length()
    if decay_length >= block:
        return True
    return dist % int(block / decay_length) == 0


def generator_local_mask(i, j, t, decay, block, model):
    """The (t, t) mask of query frame i against key frame j, element by element."""
    local = torch.zeros(t, t, dtype=torch.bool)
    if j == 0:  # the attention sink
        local[:] = True
        return local
    dist = abs(i - j)
    width = generator_window_width(dist, t, decay, block, model)
    on = generator_split_on(dist, t, block)
    for r in range(t):
        for c in range(t):
            local[r, c] = abs(c - r) <= width and on
    return local


def token_mask(frames, t, decay, block, model):
    n = frames * t
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(frames):
        for j in range(frames):
            mask[i * t:(i + 1) * t, j * t:(j + 1) * t] = generator_local_mask(i, j, t, decay, block, model)
    return mask


def shrink_strict(mask, block):
    """``shrinkMaskStrict``: a block kept when over 60 % of its non-empty columns are more than a
    third filled (the generator truncates to whole blocks of the first axis' length)."""
    block_num = mask.shape[0] // block
    mask = mask[:block_num * block, :block_num * block].view(block_num, block, block_num, block)
    density = mask.sum(dim=1) / block
    nonzero = density > 0
    high = density > 1 / 3
    return high.sum(dim=-1) / (nonzero.sum(dim=-1) + 1e-9) > 0.6


def block_rule_mask(frames, t, decay, block, model):
    """``gen_log_mask_shrinked`` with one block of text after the video (the block holding the
    video's end belongs to the text), cut to the video's blocks."""
    n = frames * t
    nb = -(-n // block)
    total = (nb + 1) * block
    final = torch.zeros(total // block, total // block, dtype=torch.bool)
    border = n // block
    final[border:] = True
    final[:, border:] = True
    for i in range(frames):
        for j in range(frames):
            local = generator_local_mask(i, j, t, decay, block, model)
            rem_r, rem_c = (i * t) % block, (j * t) % block
            rows = rem_r + ((t - 1) // block + 1) * block
            cols = rem_c + ((t - 1) // block + 1) * block
            padded = torch.zeros(rows, cols, dtype=torch.bool)
            padded[rem_r:rem_r + t, rem_c:rem_c + t] = local
            kept = shrink_strict(padded, block)
            r0, c0 = (i * t) // block, (j * t) // block
            final[r0:r0 + kept.shape[0], c0:c0 + kept.shape[1]] |= kept
    return final[:nb, :nb]


# (frames, tokens_per_frame, model, decay, block): small shapes that reach every branch.
CASES = [
    (6, 40, "wan", 1.0, 16),  # widths 40, 20, 16; distances 4, 5 split by 2
    (6, 40, "hunyuan", 1.0, 16),
    (9, 50, "wan", 0.5, 8),  # distances 4..8 halve the window, 8 is split
    (5, 33, "hunyuan", 2.0, 32),  # every distance >= 2 split
    (4, 7, "wan", 1.0, 4),  # blocks of several frames
    (3, 64, "wan", 1.0, 128),  # the generator's own block: narrow frames are split from distance 0
]


@pytest.mark.parametrize("frames,t,model,decay,block", CASES)
def test_mask_layout_and_counts_are_the_generators(frames, t, model, decay, block):
    p = P.Radial(frames, t, model=model, decay=decay, block=block)
    n = frames * t
    want = token_mask(frames, t, decay, block, model)
    got = p.mask_mod(n, n)(0, 0, torch.arange(n)[:, None], torch.arange(n)[None, :])
    assert torch.equal(got, want)
    assert p.allowed_pairs() == int(want.sum())
    assert p.default_lengths() == (n, n)
    for bq, bkv in ((16, 16), (32, 16), (13, 7), (64, 64)):
        check_layout(p.build(n, n, block_q=bq, block_kv=bkv), want, bq, bkv, f"{p!r} blocks {bq}x{bkv}")


@pytest.mark.parametrize("frames,t,model,decay,block", CASES)
def test_block_rule_is_the_generators(frames, t, model, decay, block):
    p = P.Radial(frames, t, model=model, decay=decay, block=block, block_rule=True)
    n = frames * t
    want_blocks = block_rule_mask(frames, t, decay, block, model)
    assert torch.equal(p.block_rule_mask(), want_blocks)
    want = want_blocks.repeat_interleave(block, 0).repeat_interleave(block, 1)[:n, :n]
    got = p.mask_mod(n, n)(0, 0, torch.arange(n)[:, None], torch.arange(n)[None, :])
    assert torch.equal(got, want)
    assert p.allowed_pairs() == int(want.sum())
    layout = p.build(n, n, block_q=block, block_kv=block)
    check_layout(layout, want, block, block, repr(p))
    assert p.fixed_blocks == (block, block) and p.kernel_mask(n, n) is None


def test_wan_and_hunyuan_shapes():
    """At the papers' shapes: the per-group windows and the density of the mask."""
    wan, hunyuan = P.Radial(21, 3600, model="wan"), P.Radial(30, 3600, model="hunyuan")
    assert wan.groups() == ((3600, 1), (1800, 1), (1024, 1), (512, 1), (256, 1), (128, 1))
    assert hunyuan.groups()[:2] == ((3600, 1), (3600, 1))
    for p in (wan, hunyuan):
        n = p.frames * p.tokens_per_frame
        record = foveate.simulate(p)
        assert 0.2 < p.allowed_pairs() / n ** 2 < 0.5
        assert record.speedup_bound > 2


@needs_triton
@pytest.mark.parametrize("frames,t,model,decay,block", CASES)
def test_kernel_predicate_is_the_generators(frames, t, model, decay, block):
    """The FRAMES leaf, element by element, in both block forms."""
    p = P.Radial(frames, t, model=model, decay=decay, block=block)
    n = frames * t
    spec = masks.mask_spec(p, n, n)
    assert spec.kinds == ("frames",) and spec.path == "structured"
    want = token_mask(frames, t, decay, block, model)
    for transposed, blocks in ((False, (64, 32)), (True, (32, 64))):
        got, _ = probe(spec, n, n, *blocks, transposed)
        assert_masks_equal(got, want, f"{p!r}, transposed={transposed}", spec)


def _grads(pattern, backend, dtype, q, k, v, d_out):
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = foveate.attention(*leaves, pattern, backend=backend)
    return [out.detach().to(F64), *(g.to(F64) for g in torch.autograd.grad(out, leaves, d_out.to(dtype)))]


ATTENTION = [
    P.Radial(5, 24, model="wan", block=16),
    P.Radial(6, 20, model="hunyuan", decay=0.5, block=8),
    P.Radial(4, 100, model="wan", block_rule=True),  # (the Triton kernels run 128x128 blocks)
    P.WithText(P.Radial(5, 24, model="hunyuan", block=16), 9),
]


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("pattern", ATTENTION, ids=repr)
def test_attention_equals_the_reference(pattern, backend):
    n = pattern.default_lengths()[0]
    gen = torch.Generator().manual_seed(0)
    q, k, v, d_out = (torch.randn(1, 2, n, 16, generator=gen, dtype=F64) for _ in range(4))
    want = _grads(pattern, "reference", F64, q, k, v, d_out)
    got = _grads(pattern, backend, torch.float32, q, k, v, d_out)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert (g - w).abs().max().item() < 1e-4 * max(1.0, w.abs().max().item()), f"{pattern!r} {name}"


def test_value_semantics_and_repr():
    assert P.Radial(21, 3600) == P.Radial(21, 3600, model="wan", decay=1, block_rule=False, block=128)
    assert hash(P.Radial(4, 10)) == hash(P.Radial(4, 10))
    assert P.Radial(4, 10) != P.Radial(4, 10, model="hunyuan")
    assert P.Radial(4, 10).canvas == (4, 10)
    assert repr(P.Radial(4, 10)) == "Radial(frames=4, tokens_per_frame=10, model='wan', decay=1.0, " \
                                     "block_rule=False, block=128)"
    with pytest.raises(ValueError, match="cannot be tiled"):
        P.Radial(4, 10).build(40, 40, tile=(2, 5))
    with pytest.raises(ValueError, match="q_len=40"):
        P.Radial(4, 10).build(41, 41)


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(frames=0, tokens_per_frame=8), ValueError, "frames"),
    (dict(frames=2.0, tokens_per_frame=8), TypeError, "frames"),
    (dict(frames=2, tokens_per_frame=0), ValueError, "tokens_per_frame"),
    (dict(frames=2, tokens_per_frame=8, model="cog"), ValueError, "model"),
    (dict(frames=2, tokens_per_frame=8, decay=0), ValueError, "decay"),
    (dict(frames=2, tokens_per_frame=8, decay=float("nan")), ValueError, "decay"),
    (dict(frames=2, tokens_per_frame=8, block_rule=1), TypeError, "block_rule"),
    (dict(frames=2, tokens_per_frame=8, block=0), ValueError, "block"),
])
def test_bad_arguments(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        P.Radial(**kwargs)
