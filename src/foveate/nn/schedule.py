"""Hybrids across layers: which layers are linear and which softmax, and the stack of mixers.

:func:`hybrid_schedule` repeats a cycle of layer kinds over the layers (``"L"``: a linear
layer, ``"S"``: a softmax layer, ``"H"``: a per-head hybrid layer); :func:`hybrid_stack`
builds one module per layer from a factory per kind. The rest of each block (norms, MLP,
residuals, positional encodings) is the model's.

MiniCPM-SALA-style stack: Lightning Attention (``decayed``) layers with sparse softmax layers,
three linear to one sparse. (MiniCPM-SALA picks its sparse layers with a layer-selection
algorithm rather than periodically: pass that list of kinds to :func:`hybrid_stack` directly.
Its sparse layers are InfLLM-V2, which selects key blocks per query block beside the first
and the local ones; ``P.BlockTopK`` is foveate's block selection.)

```python
import torch
from foveate import patterns as P
from foveate.nn import LinearAttention, SelfAttention, hybrid_schedule, hybrid_stack

kinds = hybrid_schedule(8, "LLLS")  # ('linear', 'linear', 'linear', 'softmax', 'linear', ...)
mixers = hybrid_stack(
    kinds,
    linear=lambda i: LinearAttention(512, 8, "decayed"),
    softmax=lambda i: SelfAttention(
        512, 8, P.BlockTopK(8, block=128, sink_blocks=1, local_blocks=1, causal=True)),
)
x = torch.randn(2, 1024, 512)
for mixer in mixers:  # (each in a block of its own: norm, residual, MLP)
    x = x + mixer(x)
```

InfiniteVL-style stack: Gated DeltaNet interleaved with sliding-window attention, one
sliding-window layer then three Gated DeltaNet layers (InfiniteVL's default ``layer_types``:
36 layers, a window of 8192 keys):

```python
kinds = hybrid_schedule(12, "SLLL")
mixers = hybrid_stack(
    kinds,
    linear=lambda i: LinearAttention(512, 8, "gated_delta"),
    softmax=lambda i: SelfAttention(512, 8, P.SlidingWindow(8191) & P.Causal()),
)
```

Other schedules: ``"LLLSLLS"`` (two softmax layers in seven), ``"LS"`` (alternating), or
``"LLLH"`` with ``hybrid=lambda i: HybridAttention(...)`` for per-head hybrid layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ..patterns.base import is_int

#: The layer kinds, by their letter in a cycle.
KINDS = {"L": "linear", "S": "softmax", "H": "hybrid"}


def hybrid_schedule(layers: int, cycle: str = "LLLS") -> tuple[str, ...]:
    """The kind of each of ``layers`` layers: ``cycle`` repeated from layer 0 (the last
    repetition cut short when ``len(cycle)`` does not divide ``layers``).

    Args:
        layers: the number of layers, at least 1.
        cycle: one letter per layer of the repeating unit: ``"L"`` linear, ``"S"`` softmax,
            ``"H"`` per-head hybrid (any case). ``"LLLS"`` is three linear layers then a
            softmax one (MiniCPM-SALA's 3 : 1); ``"SLLL"`` InfiniteVL's order.

    Returns:
        A tuple of ``layers`` kinds, each ``"linear"``, ``"softmax"`` or ``"hybrid"``.

    Raises:
        TypeError, ValueError: on a bad ``layers`` or ``cycle``, naming it.
    """
    if not is_int(layers):
        raise TypeError(f"layers must be an int, got {type(layers).__name__} {layers!r}")
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    if not isinstance(cycle, str):
        raise TypeError(f"cycle must be a str of the letters L, S, H, got {type(cycle).__name__} {cycle!r}")
    letters = cycle.upper()
    if not letters or any(c not in KINDS for c in letters):
        raise ValueError(f"cycle must be a non-empty str of the letters L (linear), S (softmax), H (hybrid), "
                         f"got {cycle!r}")
    return tuple(KINDS[letters[i % len(letters)]] for i in range(int(layers)))


def hybrid_stack(
    schedule: Sequence[str],
    *,
    linear: Callable[[int], nn.Module] | None = None,
    softmax: Callable[[int], nn.Module] | None = None,
    hybrid: Callable[[int], nn.Module] | None = None,
) -> nn.ModuleList:
    """One module per layer of ``schedule``, each built by its kind's factory.

    Args:
        schedule: the layers' kinds, as :func:`hybrid_schedule` returns them (``"linear"``,
            ``"softmax"``, ``"hybrid"``) or as their letters (``"LLLS"``); any list works,
            e.g. the layers a selection algorithm chose.
        linear: called with the layer's index for each linear layer, e.g.
            ``lambda i: LinearAttention(512, 8, "gated_delta")``.
        softmax: likewise for each softmax layer, e.g.
            ``lambda i: SelfAttention(512, 8, P.SlidingWindow(511) & P.Causal())``.
        hybrid: likewise for each per-head hybrid layer (``HybridAttention``). A factory whose
            kind the schedule does not use is not called.

    Returns:
        An ``nn.ModuleList``, layer ``i`` built by ``factory(i)``.

    Raises:
        TypeError, ValueError: on an unknown kind, a missing or non-callable factory, or a
            factory that returns something other than an ``nn.Module``.
    """
    if isinstance(schedule, bytes) or not isinstance(schedule, Sequence):
        raise TypeError(f"schedule must be a sequence of layer kinds, got {type(schedule).__name__}")
    factories = {"linear": linear, "softmax": softmax, "hybrid": hybrid}
    for name, factory in factories.items():
        if factory is not None and not callable(factory):
            raise TypeError(f"{name} must be callable (layer index -> nn.Module) or None, got {type(factory).__name__}")
    names = {**KINDS, **{k.lower(): v for k, v in KINDS.items()}, **{v: v for v in KINDS.values()}}
    kinds = []
    for i, kind in enumerate(schedule):
        if not isinstance(kind, str) or kind not in names:
            raise ValueError(f"schedule[{i}] must be 'linear', 'softmax' or 'hybrid' (or L, S, H), got {kind!r}")
        kinds.append(names[kind])
    if not kinds:
        raise ValueError("schedule must have at least one layer")
    layers = []
    for i, kind in enumerate(kinds):
        factory = factories[kind]
        if factory is None:
            raise ValueError(f"schedule has {kind} layers (layer {i}) but {kind}= was not given")
        module = factory(i)
        if not isinstance(module, nn.Module):
            raise TypeError(f"{kind}({i}) returned {type(module).__name__}, not a torch.nn.Module")
        layers.append(module)
    return nn.ModuleList(layers)

