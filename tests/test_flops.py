"""MAC counts against the paper's published GMACs (thop's rules, 1x3x256x256, 2 classes, paper head)."""
from __future__ import annotations

import pytest
from torch import nn

from simpleunet.train.config import ModelConfig
from simpleunet.train.flops import count_macs, mac_breakdown
from simpleunet.train.model import build_model


@pytest.mark.parametrize("family,width,blocks,gmacs", [
    ("simpleunet", 16, 1, 0.21), ("simpleunet", 32, 1, 0.74), ("simpleesknet", 32, 2, 8.60),
])
def test_spec_gmacs(family, width, blocks, gmacs):
    model = build_model(ModelConfig(family=family, width=width, blocks=blocks, num_classes=2, head="paper"))
    assert round(count_macs(model, 256) / 1e9, 2) == gmacs


def test_conv_rule_and_functional_ops():
    """A hand-countable model: every rule once, including the functional calls thop's module hooks miss."""

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=True)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=4)
            self.bn = nn.BatchNorm2d(8)
            self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            x = self.bn(self.dw(self.conv(x)))
            g = self.fc(x.mean(dim=(2, 3)))
            x = nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            return self.up(nn.functional.max_pool2d(x, 2)), g

    parts = mac_breakdown(Tiny(), 16)
    assert parts["conv"] == 16 * 16 * 8 * 3 * 9 + 16 * 16 * 8 * 2 * 9
    assert parts["batch_norm"] == 4 * 8 * 16 * 16
    assert parts["avg_pool"] == 8 * 16 * 16 + 8
    assert parts["linear"] == 2 * 8
    assert parts["upsample"] == 11 * 8 * 32 * 32
    assert parts["conv_transpose"] == 8 * 16 * 16 * 4 * 4
    assert count_macs(Tiny(), 16, convs_only=True) == parts["conv"] + parts["linear"] + parts["conv_transpose"]


def test_scales_with_area_and_restores_mode():
    model = build_model(ModelConfig(width=8)).train()
    small, big = count_macs(model, 64), count_macs(model, 128)
    assert big == 4 * small
    assert model.training
    assert count_macs(model, (64, 128)) == 2 * small
