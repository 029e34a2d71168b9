"""Import timm where the real torchvision cannot load (a test-side stand-in, never used by foveate).

Why: ``import timm`` imports torchvision. ``timm.layers`` (``norm_act.py``, ``create_norm.py``) and
``timm.utils`` take ``torchvision.ops.misc.FrozenBatchNorm2d``, and ``timm.models`` imports
``timm.data``, whose modules take ``torchvision.transforms`` (``ToTensor`` is subclassed),
``torchvision.transforms.functional`` (``InterpolationMode`` keys a dict) and
``torchvision.datasets`` (``CIFAR10`` ...), all at import time; ``timm.layers._fx``'s
``torchvision.models.feature_extraction`` is optional (``try/except ImportError``). PyPI's
torchvision wheels are built against the CUDA build of torch: beside the CPU build of torch 2.13
its C extension does not load and ``import torchvision`` raises (``RuntimeError: operator
torchvision::nms does not exist``), so ``import timm`` fails although nothing that these tests
run (building and calling vision transformers) needs torchvision.

:func:`import_timm` therefore tries the real torchvision first, and only when that raises does it
import timm beside stand-in modules: ``torchvision.ops.misc`` with a minimal, correct
:class:`FrozenBatchNorm2d`; ``torchvision.transforms.functional`` with ``InterpolationMode``;
every other name that timm takes from ``torchvision.transforms`` / ``.functional`` /
``.datasets`` a placeholder class that raises when used (timm's data pipeline is not tested
here). ``torchvision.models`` is absent, as timm allows. The stand-ins are taken out of
``sys.modules`` again once timm is imported (timm keeps its references), so that the rest of the
test session sees the machine's torchvision exactly as it is.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import sys
import types

import torch
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters, as torchvision's (all buffers):
    ``(x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel of ``(N, C, H, W)``."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # (as torchvision's: a BatchNorm2d's state loads)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.reshape(1, -1, 1, 1)
        b = self.bias.reshape(1, -1, 1, 1)
        rv = self.running_var.reshape(1, -1, 1, 1)
        rm = self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        return x * scale + (b - rm * scale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.weight.shape[0]}, eps={self.eps})"


def _real_torchvision_imports() -> bool:
    """Whether the machine's torchvision imports (a failed attempt leaves nothing in sys.modules)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision.ops.misc")
        return True
    except Exception:  # (RuntimeError beside a torch it was not built for, ImportError, OSError, ...)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return False


class InterpolationMode(enum.Enum):
    """torchvision's interpolation modes (timm maps them to and from strings)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _placeholder(qualname: str) -> type:
    """A class standing for torchvision's ``qualname``: it can be imported and subclassed, and
    raises when instantiated."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{qualname} is a test stand-in (the real torchvision does not import here)")

    return type(qualname.rsplit(".", 1)[-1], (), {"__init__": __init__, "__module__": qualname.rsplit(".", 1)[0]})


def _stand_in_module(name: str, **attrs) -> types.ModuleType:
    """A module of ``attrs`` in which any other public name is a :func:`_placeholder`."""
    module = types.ModuleType(name)
    module.__dict__.update(attrs)

    def __getattr__(attr: str):
        if attr.startswith("__"):  # (__path__, __spec__ ...: the import system must see a plain module)
            raise AttributeError(attr)
        value = _placeholder(f"{name}.{attr}")
        setattr(module, attr, value)
        return value

    module.__getattr__ = __getattr__
    return module


STAND_IN_USED = False
"""Whether timm was imported beside the stand-ins (the real torchvision did not import)."""


def import_timm():
    """``import timm`` (and ``timm.layers``), beside the stand-in torchvision only if the real
    one does not import; ``None`` when timm is not installed."""
    global STAND_IN_USED
    if "timm" in sys.modules:
        return sys.modules["timm"]
    if importlib.util.find_spec("timm") is None:
        return None
    if _real_torchvision_imports():
        return importlib.import_module("timm")
    misc = types.ModuleType("torchvision.ops.misc")
    misc.FrozenBatchNorm2d = FrozenBatchNorm2d
    ops = types.ModuleType("torchvision.ops")
    ops.misc = misc
    functional = _stand_in_module("torchvision.transforms.functional", InterpolationMode=InterpolationMode)
    transforms = _stand_in_module("torchvision.transforms", functional=functional, InterpolationMode=InterpolationMode)
    datasets = _stand_in_module("torchvision.datasets")
    tv = types.ModuleType("torchvision")  # (no __path__: other submodules raise ModuleNotFoundError)
    tv.ops, tv.transforms, tv.datasets = ops, transforms, datasets
    stand_ins = {m.__name__: m for m in (tv, ops, misc, transforms, functional, datasets)}
    sys.modules.update(stand_ins)
    try:
        timm = importlib.import_module("timm")
        importlib.import_module("timm.layers")
        STAND_IN_USED = True
        return timm
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
