"""Multiply-accumulates per image, counted the way thop counts them (how the paper's GMACs were measured).

thop hooks ``nn.Module``s, so it misses what a model does functionally (our bilinear upsampling and the SK block's
global average pool are ``F.interpolate`` / ``Tensor.mean`` calls). Here one ``TorchFunctionMode`` sees every torch
call of a forward pass and applies thop's rules to it:

- convolution: output elements x (input channels / groups) x kernel area (bias not counted);
  transposed convolution: input elements x (output channels / groups) x kernel area (the MACs it really does);
- linear / matmul: output elements x inner dimension;
- batch norm: 4 x elements (thop: normalise + affine, 2 ops each);
- bilinear upsampling: 11 x output elements; nearest: 0;
- mean over spatial dims (global average pool): input elements + output elements;
- ReLU, pooling by max, element-wise arithmetic, concatenation: 0.

``convs_only=True`` keeps just the convolution/linear MACs: the multiply-accumulates that remain once batch norm is
folded into the convolutions at export, i.e. the arithmetic a CPU actually executes.
"""
from __future__ import annotations

import math
from collections import Counter

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

UPSAMPLE_OPS = {"bilinear": 11, "linear": 5, "bicubic": 259, "trilinear": 31, "nearest": 0}  # thop's table
MATMUL_KINDS = ("conv", "conv_transpose", "linear")


def _arg(args, kwargs, i, name, default=None):
    return args[i] if len(args) > i else kwargs.get(name, default)


class _Counter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.macs: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in ("conv1d", "conv2d", "conv3d"):
            w, groups = args[1] if len(args) > 1 else kwargs["weight"], _arg(args, kwargs, 6, "groups", 1)
            self.macs["conv"] += out.numel() * (args[0].shape[1] // groups) * math.prod(w.shape[2:])
        elif name.startswith("conv_transpose"):
            w = args[1] if len(args) > 1 else kwargs["weight"]  # (in, out/groups, k...)
            self.macs["conv_transpose"] += args[0].numel() * w.shape[1] * math.prod(w.shape[2:])
        elif name == "linear":
            self.macs["linear"] += out.numel() * args[0].shape[-1]
        elif name in ("matmul", "mm", "bmm", "__matmul__"):
            self.macs["linear"] += out.numel() * args[0].shape[-1]
        elif name == "batch_norm":
            self.macs["batch_norm"] += 4 * args[0].numel()
        elif name == "interpolate":
            mode = _arg(args, kwargs, 3, "mode", "nearest")
            self.macs["upsample"] += UPSAMPLE_OPS.get(mode, 0) * out.numel()
        elif name in ("mean", "adaptive_avg_pool2d") and isinstance(args[0], torch.Tensor) \
                and out.numel() < args[0].numel():
            self.macs["avg_pool"] += args[0].numel() + out.numel()
        return out


def mac_breakdown(model: nn.Module, imgsz: int | tuple[int, int] = 256, in_channels: int | None = None
                  ) -> dict[str, int]:
    """MACs of one forward pass at batch 1, per operation kind (see the module docstring)."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    if in_channels is None:
        cfg = getattr(model, "config", None)
        in_channels = getattr(cfg, "in_channels", 3)
    first = next(model.parameters(), None)
    x = torch.zeros(1, in_channels, h, w, dtype=first.dtype if first is not None else torch.float32,
                    device=first.device if first is not None else "cpu")
    was_training = model.training
    model.eval()
    counter = _Counter()
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return dict(counter.macs)


def count_macs(model: nn.Module, imgsz: int | tuple[int, int] = 256, convs_only: bool = False) -> int:
    """MACs per image at ``imgsz`` (thop's rules; ``convs_only``: convolutions and linear layers only)."""
    parts = mac_breakdown(model, imgsz)
    return int(sum(v for k, v in parts.items() if not convs_only or k in MATMUL_KINDS))
