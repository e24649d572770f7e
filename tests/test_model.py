"""The models match the authors' parameter counts exactly and their config round-trips through JSON."""
import pytest
import torch

from simpleunet.train.config import ConfigError, ModelConfig
from simpleunet.train.model import build_model, count_parameters

WIDTHS = (8, 16, 24, 32, 48, 64)
SPEC = {  # the authors' counts: 3 input channels, 2 classes, R = 0.5, paper head, alpha/beta excluded
    ("simpleunet", 1): (4252, 16244, 35980, 63460, 141652, 250820),
    ("simpleunet", 2): (7380, 28548, 63508, 112260, 251140, 445188),
    ("simpleesknet", 1): (25842, 100434, 223794, 395922, 886482, 1572114),
    ("simpleesknet", 2): (43819, 170651, 380523, 673435, 1508379, 2675483),
}


@pytest.mark.parametrize("family,blocks", sorted(SPEC))
def test_parameter_counts_match_spec(family, blocks):
    for width, expected in zip(WIDTHS, SPEC[family, blocks]):
        cfg = ModelConfig(family=family, width=width, blocks=blocks, num_classes=2, head="paper")
        model = build_model(cfg)
        assert count_parameters(model) == expected, (family, blocks, width)
        r = int(0.5 * width)
        assert count_parameters(model, include_fusion=True) == expected + 8 * r


def test_aff_off_freezes_fusion_scales():
    model = build_model(ModelConfig(width=8, aff=False))
    assert all(not p.requires_grad for p in [*model.alpha, *model.beta])
    assert count_parameters(model, include_fusion=True) == count_parameters(model)


@pytest.mark.parametrize("family", ["simpleunet", "simpleesknet", "unet"])
def test_forward_shape_and_backward(family):
    cfg = ModelConfig(family=family, width=8 if family != "unet" else 4, num_classes=2, head="logits")
    model = build_model(cfg)
    x = torch.randn(2, 3, 32, 48)
    y = model(x)
    assert y.shape == (2, 2, 32, 48)
    y.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_dilation_and_kernel_keep_shape():
    model = build_model(ModelConfig(width=8, kernel_size=5, dilation=2))
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_beta_scales_the_deep_feature():
    """beta multiplies the deep (bottleneck) feature: doubling beta equals doubling that feature."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=8)).eval()
    x = torch.randn(1, 3, 32, 32)
    ref = model(x)
    with torch.no_grad():
        model.beta[0].mul_(2.0)
        model.bottleneck[0][2].register_forward_hook(lambda m, i, o: o / 2.0)
    assert torch.allclose(model(x), ref, atol=1e-5)


def test_unet_peer_size():
    assert 7.7e6 < count_parameters(build_model(ModelConfig(family="unet", width=32))) < 7.8e6


def test_config_json_round_trip():
    cfg = ModelConfig(family="simpleesknet", width=32, blocks=2, rate=0.25, aff=False, num_classes=2, head="paper")
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert cfg.name == "simpleesknet32-n2"


@pytest.mark.parametrize("kwargs,needle", [
    ({"family": "resnet"}, "unknown model family"),
    ({"width": 0}, "width must be an integer >= 1"),
    ({"rate": 1.5}, "selection rate R"),
    ({"rate": 0.0}, "selection rate R"),
    ({"blocks": 0}, "blocks must be an integer >= 1"),
    ({"head": "paper", "num_classes": 1}, "ReLU"),
    ({"kernel_size": 4}, "odd"),
])
def test_bad_config_one_line_error(kwargs, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        ModelConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_unknown_config_key():
    with pytest.raises(ConfigError, match="unknown model config keys: colour"):
        ModelConfig.from_dict({"colour": 1})
