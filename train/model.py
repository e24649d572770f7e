"""SimpleUNet, SimpleESKNet (the authors' architecture, README "Models") and a classic U-Net peer, built from a
``ModelConfig``.

Both SimpleUNet families share one skeleton (``_FixedWidthUNet``) and differ only in their block: a plain
conv-BN-ReLU (``SingleConv``) or ESKNet's selective-kernel block (``SKBlock``).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class SingleConv(nn.Sequential):
    """Conv(k x k, dilation d, no bias) -> BatchNorm -> ReLU, 'same' padding."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, dilation: int = 1):
        pad = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, padding=pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class SKBlock(nn.Module):
    """ESKNet's selective-kernel block: two branches (3x3 dilated, 5x5) mixed by channel and spatial attention."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        c = cout
        self.stem = nn.Sequential(nn.Conv2d(cin, c, 3, padding=1), nn.BatchNorm2d(c), nn.LeakyReLU(0.01))
        self.branch_a = nn.Sequential(nn.Conv2d(c, c, 3, padding=3, dilation=3), nn.BatchNorm2d(c), nn.LeakyReLU(0.01))
        self.branch_b = nn.Sequential(nn.Conv2d(c, c, 5, padding=2), nn.BatchNorm2d(c), nn.LeakyReLU(0.01))
        self.fc1 = nn.Linear(2 * c, c)
        self.fc2 = nn.Linear(c, c)
        self.spatial = nn.Conv2d(2 * c, 1, 1)
        self.fuse = nn.Sequential(nn.Conv2d(5 * c, c, 1), nn.BatchNorm2d(c), nn.LeakyReLU(0.01))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.stem(x)
        a, b = self.branch_a(x1), self.branch_b(x1)
        x2 = torch.cat([b, a], dim=1)
        se = torch.sigmoid(self.fc2(F.relu(self.fc1(x2.mean(dim=(2, 3))))))[:, :, None, None]
        sa = torch.sigmoid(self.spatial(F.relu(x2)))
        return self.fuse(torch.cat([a * se, b * (1 - se), b * (1 - sa), a * sa, x1], dim=1))


def _stack(make: Callable[[int, int], nn.Module], cin: int, cout: int, n: int) -> nn.Sequential:
    """One block cin -> cout followed by n-1 blocks cout -> cout."""
    return nn.Sequential(make(cin, cout), *[make(cout, cout) for _ in range(n - 1)])


class _FixedWidthUNet(nn.Module):
    """The SimpleUNet skeleton: five levels at fixed width C, partial feature selection on skips (C -> R*C),
    a decoder at width R*C, bilinear upsampling and adaptive feature fusion (per-channel alpha, beta)."""

    levels = 5

    def __init__(self, cfg: ModelConfig, block: Callable[[int, int], nn.Module],
                 select: Callable[[int, int], nn.Module]):
        super().__init__()
        self.config = cfg
        c, n = cfg.width, cfg.blocks
        r = int(cfg.rate * c)
        self.encoder = nn.ModuleList(
            [_stack(block, cfg.in_channels, c, 1)] + [_stack(block, c, c, n) for _ in range(self.levels - 1)]
        )
        self.select = nn.ModuleList([select(c, r) for _ in range(self.levels - 1)])
        self.bottleneck = _stack(block, c, r, n)
        self.decoder = nn.ModuleList([_stack(block, 2 * r, r, n) for _ in range(self.levels - 1)])
        self.alpha = nn.ParameterList([nn.Parameter(torch.ones(r, 1, 1), requires_grad=cfg.aff)
                                       for _ in range(self.levels - 1)])
        self.beta = nn.ParameterList([nn.Parameter(torch.ones(r, 1, 1), requires_grad=cfg.aff)
                                      for _ in range(self.levels - 1)])
        head: list[nn.Module] = [nn.Conv2d(r, cfg.num_classes, 1, bias=False), nn.BatchNorm2d(cfg.num_classes)]
        if cfg.head == "paper":
            head.append(nn.ReLU(inplace=True))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, enc in enumerate(self.encoder):
            if level:
                x = F.max_pool2d(x, 2)
            x = enc(x)
            if level < self.levels - 1:
                skips.append(self.select[level](x))
        x = self.bottleneck(x)
        for step, dec in enumerate(self.decoder):
            j = self.levels - 2 - step  # deepest skip first
            up = F.interpolate(x * self.beta[step], scale_factor=2, mode="bilinear", align_corners=True)
            x = dec(torch.cat([skips[j] * self.alpha[step], up], dim=1))
        return self.head(x)


class SimpleUNet(_FixedWidthUNet):
    def __init__(self, cfg: ModelConfig):
        k, d = cfg.kernel_size, cfg.dilation
        super().__init__(cfg, lambda i, o: SingleConv(i, o, k, d), lambda i, o: SingleConv(i, o, 1, 1))


class SimpleESKNet(_FixedWidthUNet):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, SKBlock, SKBlock)


class UNet(nn.Module):
    """Classic U-Net (Ronneberger et al. 2015) with BatchNorm: widths C, 2C, ..., 16C, transposed-conv upsampling.
    C = 32 gives the ~7.8 M-parameter peer of the comparison tables."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        widths = [cfg.width * 2**i for i in range(5)]

        def double(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(SingleConv(i, o), SingleConv(o, o))

        self.encoder = nn.ModuleList([double(cfg.in_channels, widths[0])] +
                                     [double(widths[i - 1], widths[i]) for i in range(1, 5)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2) for i in range(4, 0, -1)])
        self.decoder = nn.ModuleList([double(2 * widths[i - 1], widths[i - 1]) for i in range(4, 0, -1)])
        self.head = nn.Conv2d(widths[0], cfg.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, enc in enumerate(self.encoder):
            if level:
                x = F.max_pool2d(x, 2)
            x = enc(x)
            skips.append(x)
        for up, dec, skip in zip(self.up, self.decoder, reversed(skips[:-1])):
            x = dec(torch.cat([skip, up(x)], dim=1))
        return self.head(x)


class DeepSupervision(nn.Module):
    """Training-time wrapper for deep supervision (``TrainConfig.deep_supervision``): the model plus a 1x1 conv on
    each of its decoder's coarser levels (1/8, 1/4, 1/2 of the input), read by forward hooks, so the model itself,
    its checkpoint and its export stay unchanged. ``forward`` gives (the model's logits, the side logits upsampled
    to the same size)."""

    def __init__(self, model: _FixedWidthUNet):
        super().__init__()
        self.model = model
        r, classes = model.head[0].in_channels, model.config.num_classes
        self.side = nn.ModuleList([nn.Conv2d(r, classes, 1) for _ in model.decoder[:-1]])
        self._features: list[torch.Tensor] | None = None  # a list only inside forward: the model alone keeps none
        for dec in model.decoder[:-1]:
            dec.register_forward_hook(lambda _m, _in, out: self._features.append(out) if self._features is not None
                                      else None)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self._features = []
        try:
            logits = self.model(x)
            features = self._features
        finally:
            self._features = None
        return logits, [F.interpolate(conv(f), size=logits.shape[-2:], mode="bilinear", align_corners=False)
                        for conv, f in zip(self.side, features)]


MODELS: dict[str, type[nn.Module]] = {"simpleunet": SimpleUNet, "simpleesknet": SimpleESKNet, "unet": UNet}


def build_model(cfg: ModelConfig) -> nn.Module:
    """The factory: a fresh model for ``cfg`` (family names are checked by ModelConfig)."""
    return MODELS[cfg.family](cfg)


def count_parameters(model: nn.Module, include_fusion: bool = False) -> int:
    """Trainable parameters as the paper counts them: alpha/beta excluded unless ``include_fusion``."""
    fusion = {id(p) for name, p in model.named_parameters() if name.startswith(("alpha.", "beta."))}
    return sum(p.numel() for p in model.parameters()
               if p.requires_grad and (include_fusion or id(p) not in fusion))
