"""Quantization-aware fine-tuning (``simpleunet-train --qat --init RUN``): train through a fake-quantized view of
the int8 graph that ``export/quantize.py`` writes, so the weights learn to survive int8 rounding.

The view mirrors the QOperator graph of a SimpleUNet: BatchNorm folded into each conv with its running statistics
(frozen while fine-tuning, as the export folds them), the AFF scales folded into the conv after each concat
(``export.onnx_export.fold_aff``), weights int8 symmetric per output channel on the exporter's grid (``GRIDS``:
int7, onnxruntime's reduce_range, [-64, 64], the exporter's default; pair-safe; or the full-range int8 that files
before 2026-12-03 used, which is not exact on AVX2 without VNNI, see ``simpleunet_runtime.saturation``), and uint8
per-tensor
activations with MinMax ranges at the places the int8 graph requantizes: the model input, every conv-BN-ReLU
output, each upsampled tensor, each concat and the logits (max pooling keeps its input's scale). The ranges are
measured on a fixed batch of training images (``calibrate``) and held between calibrations; gradients pass the
rounding straight through (torch's fake-quant ops). The fp32 weights stay the checkpoint: the exporter quantizes
them as it quantizes any run's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import SimpleUNet, SingleConv


class ActivationRange(nn.Module):
    """A uint8 per-tensor fake-quantizer whose range is MinMax over what it saw while ``observing`` (and a plain
    pass-through while ``bypass``: the fp32 graph)."""

    bypass = False

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("low", torch.tensor(0.0))
        self.register_buffer("high", torch.tensor(0.0))
        self.observing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bypass:
            return x
        if self.observing:
            self.low = torch.minimum(self.low, x.detach().min())
            self.high = torch.maximum(self.high, x.detach().max())
            return x
        low, high = float(self.low), float(self.high)  # the range always holds 0, as onnxruntime's does
        scale = max((high - low) / 255, 1e-8)
        return torch.fake_quantize_per_tensor_affine(x, scale, int(round(-low / scale)), 0, 255)


#: Weight grids of ``export.quantize.WEIGHTS`` the view can train through.
GRIDS = ("int7", "pair-safe", "int8")


def weight_grid(weight: torch.Tensor, grid: str) -> tuple[torch.Tensor, int]:
    """(per-output-channel scale, largest |q|) of the exporter's weight grid ``grid`` for ``weight``."""
    if grid == "pair-safe":
        return pair_safe_scale(weight), 127
    limit = {"int7": 64, "int8": 127}[grid]
    return (weight.detach().flatten(1).abs().amax(dim=1) / limit).clamp_min(1e-12), limit


def pair_safe_scale(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel scales of ``export.quantize.pair_safe_scales``: the larger of max|w| / 127 and the two
    largest same-sign magnitudes' sum / 128 (the exporter then nudges a scale up by float32 steps where rounding
    would still cross 128; that is below the resolution this view trains at)."""
    from simpleunet_runtime.saturation import PAIR_LIMIT

    w = weight.detach().flatten(1)
    k = min(2, w.shape[1])
    pos = w.clamp_min(0).topk(k, dim=1).values.sum(1)
    neg = (-w).clamp_min(0).topk(k, dim=1).values.sum(1)
    return torch.maximum(w.abs().amax(dim=1) / 127, torch.maximum(pos, neg) / PAIR_LIMIT).clamp_min(1e-12)


def folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor, in_scale: torch.Tensor | None = None,
                quantize: bool = True, grid: str = "int7") -> torch.Tensor:
    """conv -> BN (running statistics) as one conv, its weights per-channel fake-quantized on ``grid`` unless not
    ``quantize``; ``in_scale`` multiplies the weights' input channels (the AFF fold)."""
    gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * gain.view(-1, 1, 1, 1)
    if in_scale is not None:
        weight = weight * in_scale.view(1, -1, 1, 1)
    bias = bn.bias - bn.running_mean * gain
    if not quantize:
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation)
    scale, limit = weight_grid(weight, grid)
    zero = torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
    weight = torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -limit, limit)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation)


class FakeQuantSimpleUNet(nn.Module):
    """The int8 view of a ``SimpleUNet``; its parameters are the wrapped model's (training this trains that)."""

    def __init__(self, model: nn.Module, grid: str = "int7"):
        super().__init__()
        if not isinstance(model, SimpleUNet):  # TrainConfig refuses --qat for the other families first
            raise TypeError(f"FakeQuantSimpleUNet wraps a SimpleUNet, not {type(model).__name__}")
        if grid not in GRIDS:
            raise ValueError(f"unknown weight grid {grid!r}; choose one of {', '.join(GRIDS)}")
        self.model, self.grid = model, grid
        blocks = [b for b in model.modules() if isinstance(b, SingleConv)]
        self._index = {id(b): i for i, b in enumerate(blocks)}
        self.block_out = nn.ModuleList(ActivationRange() for _ in blocks)
        self.image = ActivationRange()
        self.upsampled = nn.ModuleList(ActivationRange() for _ in model.decoder)
        self.concat = nn.ModuleList(ActivationRange() for _ in model.decoder)
        self.logits = ActivationRange()
        self._float = False  # while calibrating: the fp32 graph, which is what the export calibrates

    def train(self, mode: bool = True) -> "FakeQuantSimpleUNet":
        """BatchNorm stays in eval mode: its running statistics are folded into the convs, as the export does."""
        super().train(mode)
        for bn in self.model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.eval()
        return self

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Set every activation range to MinMax over ``x`` (normalized NCHW images) in the fp32 graph, as the
        export calibrates."""
        ranges = [r for r in self.modules() if isinstance(r, ActivationRange)]
        for r in ranges:
            r.low.fill_(0.0)
            r.high.fill_(0.0)
            r.observing = True
        self._float = True
        try:
            self.forward(x)
        finally:
            self._float = False
            for r in ranges:
                r.observing = False

    def fp32(self, x: torch.Tensor) -> torch.Tensor:
        """The same graph without any rounding: what the exporter's fp32 file computes from these weights (BatchNorm
        folded with its running statistics, as here). Training both views towards each other (``qat_agreement``)
        keeps the int8 file's masks on the fp32 file's."""
        ranges = [r for r in self.modules() if isinstance(r, ActivationRange)]
        self._float = True
        for r in ranges:
            r.bypass = True
        try:
            return self.forward(x)
        finally:
            self._float = False
            for r in ranges:
                r.bypass = False

    def float_view(self) -> nn.Module:
        """A module whose forward is ``fp32`` (for validation code that calls ``module(x)``)."""
        return _Float(self)

    def _conv(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor,
              in_scale: torch.Tensor | None = None) -> torch.Tensor:
        return folded_conv(conv, bn, x, in_scale, quantize=not self._float, grid=self.grid)

    def _block(self, block: nn.Sequential, x: torch.Tensor, in_scale: torch.Tensor | None = None) -> torch.Tensor:
        return self.block_out[self._index[id(block)]](F.relu(self._conv(block[0], block[1], x, in_scale)))

    def _stack(self, stack: nn.Sequential, x: torch.Tensor, in_scale: torch.Tensor | None = None) -> torch.Tensor:
        for i, block in enumerate(stack):
            x = self._block(block, x, in_scale if i == 0 else None)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = self.image(x)
        skips = []
        for level, enc in enumerate(m.encoder):
            if level:
                x = F.max_pool2d(x, 2)
            x = self._stack(enc, x)
            if level < m.levels - 1:
                skips.append(self._block(m.select[level], x))
        x = self._stack(m.bottleneck, x)
        for step, dec in enumerate(m.decoder):
            up = self.upsampled[step](F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))
            cat = self.concat[step](torch.cat([skips[m.levels - 2 - step], up], dim=1))
            x = self._stack(dec, cat, torch.cat([m.alpha[step].reshape(-1), m.beta[step].reshape(-1)]))
        logits = self._conv(m.head[0], m.head[1], x)
        return self.logits(F.relu(logits) if len(m.head) > 2 else logits)  # the 'paper' head ends in a ReLU


class _Float(nn.Module):
    def __init__(self, view: FakeQuantSimpleUNet):
        super().__init__()
        self.view = view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.view.fp32(x)


def agreement_loss(int8_logits: torch.Tensor, fp32_logits: torch.Tensor) -> torch.Tensor:
    """How far the int8 view's probabilities are from the fp32 view's (cross-entropy to them, both directions
    trained): the term that keeps the two files' masks together."""
    if int8_logits.shape[1] == 1:
        return 0.5 * (F.binary_cross_entropy_with_logits(int8_logits, torch.sigmoid(fp32_logits).detach())
                      + F.binary_cross_entropy_with_logits(fp32_logits, torch.sigmoid(int8_logits).detach()))
    return 0.5 * (F.kl_div(F.log_softmax(int8_logits, 1), F.softmax(fp32_logits, 1).detach(), reduction="batchmean")
                  + F.kl_div(F.log_softmax(fp32_logits, 1), F.softmax(int8_logits, 1).detach(), reduction="batchmean"))
