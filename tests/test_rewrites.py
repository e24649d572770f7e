"""simpleunet.export.rewrites: every onnxruntime rewrite keeps the outputs (bit-identical where it only pads and
slices), keeps a dynamic batch working, and leaves graphs it does not apply to alone. Tiny models, a few seconds;
that the exporter applies them to the real SimpleUNet-16 files is checked in test_export.py."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from simpleunet.export import rewrites
from simpleunet.export.images import calibration_set
from simpleunet.export.onnx_export import export_onnx
from simpleunet.export.quantize import quantize_onnx
from simpleunet.train.config import ModelConfig
from simpleunet.train.model import build_model
from simpleunet_runtime.image import normalize

SIZE = 32
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _model(width: int = 16) -> torch.nn.Module:
    torch.manual_seed(1)
    model = build_model(ModelConfig(width=width)).eval()
    with torch.no_grad():  # non-trivial BN statistics and biases, so a wrong channel would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.3, 0.3)
    return model


def _dynamic_batch(proto: onnx.ModelProto) -> onnx.ModelProto:
    for v in list(proto.graph.input) + list(proto.graph.output):
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    return proto


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": x})[0]


def _rewritten(proto: onnx.ModelProto, rws) -> tuple[onnx.ModelProto, dict]:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    applied = rewrites.apply(out, rws)
    onnx.checker.check_model(out, full_check=True)
    return out, applied


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """The tiny model's plain fp32 graph (dynamic batch) and its plain int8 QOperator graph (dynamic batch)."""
    fp32, _ = export_onnx(_model(), SIZE, 1)
    path = tmp_path_factory.mktemp("rw") / "fp32.onnx"
    onnx.save(fp32, str(path))
    calib = normalize(calibration_set(None, SIZE, 16).images, MEAN, STD)
    int8, _ = quantize_onnx(path, calib, "qoperator", rewrites=False)
    x = np.random.default_rng(0).normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
    return {"fp32": _dynamic_batch(fp32), "int8": _dynamic_batch(int8), "x": x, "calib": calib, "path": path}


def _ops(proto: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def test_fp32_rewrites_keep_outputs_with_a_batch(graphs):
    plain = graphs["fp32"]
    fast, applied = _rewritten(plain, rewrites.FP32)
    assert applied == {"split_concat_conv": 4, "head_as_matmul": 1}
    assert "Concat" not in _ops(fast) and "MatMul" in _ops(fast)
    assert sum(n.op_type == "Conv" for n in fast.graph.node) == 15 + 4 - 1  # 4 split in two, the head gone
    x = graphs["x"]
    np.testing.assert_allclose(_run(fast, x), _run(plain, x), atol=1e-5)
    np.testing.assert_allclose(_run(fast, x[1:2]), _run(plain, x)[1:2], atol=1e-5)


@pytest.mark.parametrize("rw", [rewrites.pad_output_channels, rewrites.pad_input_channels])
def test_int8_padding_rewrites_are_bit_identical(graphs, rw):
    plain = graphs["int8"]
    fast, applied = _rewritten(plain, (lambda m: rw(m, min_pixels=0),) if rw is rewrites.pad_output_channels
                               else (rw,))
    # the 4 decoder convs and the bottleneck (8 outputs, 3x3), the RGB input conv (3 channels)
    assert sum(applied.values()) == (5 if rw is rewrites.pad_output_channels else 1)
    x = graphs["x"]
    np.testing.assert_array_equal(_run(fast, x), _run(plain, x))


def _qconv_weights(proto: onnx.ModelProto) -> list:
    """(weight is an initializer, its dims or None) for every QLinearConv."""
    inits = {t.name: t for t in proto.graph.initializer}
    return [(n.input[3] in inits, list(inits[n.input[3]].dims) if n.input[3] in inits else None)
            for n in proto.graph.node if n.op_type == "QLinearConv"]


def test_pad_output_channels_skips_small_maps_and_pointwise_convs(graphs):
    _, applied = _rewritten(graphs["int8"], (rewrites.pad_output_channels,))
    assert applied == {"pad_output_channels": 0}  # every map of a 32-pixel model is below 128 x 128
    fast, _ = _rewritten(graphs["int8"], (lambda m: rewrites.pad_output_channels(m, min_pixels=0),))
    weights = _qconv_weights(fast)
    assert sum(not stored for stored, _ in weights) == 5  # padded: the weight is a Pad output
    assert sum(stored and dims[2:] == [1, 1] for stored, dims in weights) == 5  # 4 skip selections + head, as is
    assert _ops(fast).count("Slice") == 5


def test_int8_requantize_once_and_float_head_keep_agreement(graphs):
    plain = graphs["int8"]
    fast, applied = _rewritten(plain, rewrites.INT8)
    assert 1 <= applied["requantize_once"] <= 4 and applied["head_as_matmul"] == 1  # 4 concats: same scale yet?
    assert not any(stored and dims[0] == 1 for stored, dims in _qconv_weights(fast))  # the head is float now
    ops = _ops(fast)
    assert ops[-1] == "Sigmoid" and "MatMul" in ops
    x = graphs["calib"]
    a, b = _run(fast, x), _run(plain, x)
    assert np.abs(a - b).max() < 0.1  # one rounding fewer, not bit-identical
    t = np.median(b)  # an untrained model: threshold where half the pixels are foreground
    assert 2 * np.count_nonzero((a > t) & (b > t)) / (np.count_nonzero(a > t) + np.count_nonzero(b > t)) >= 0.98


def test_rewrites_leave_other_graphs_alone():
    """Other patterns: a concat of the input (3 + 3 channels) read by a conv is split; a concat that is a graph
    output stays; no int8 rewrite touches a float graph, and a 4-output conv is no segmentation head."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 8, 8, 8])
    w = onnx.numpy_helper.from_array(np.ones((4, 6, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Concat", ["image", "image"], ["c"], axis=1),
             helper.make_node("Conv", ["c", "w"], ["k"], pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["k", "k"], ["prob"], axis=1)]  # a concat read by the output: kept
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    before = _run(proto, np.ones((1, 3, 8, 8), np.float32))
    fast, applied = _rewritten(proto, rewrites.FP32 + rewrites.INT8)
    assert applied["split_concat_conv"] == 1 and sum(applied.values()) == 1
    np.testing.assert_allclose(_run(fast, np.ones((1, 3, 8, 8), np.float32)), before, atol=1e-5)


def test_whole_blocks_and_attention_maps_are_left_alone():
    """SimpleESKNet-32: every concat joins whole 16-channel blocks (nothing to split) and each SK block's 1-output
    1x1 conv is a spatial attention map, not the head: only the head becomes a MatMul."""
    torch.manual_seed(0)
    proto, _ = export_onnx(build_model(ModelConfig(family="simpleesknet", width=32)).eval(), SIZE, 1)
    fast, applied = _rewritten(proto, rewrites.FP32)
    assert applied == {"split_concat_conv": 0, "head_as_matmul": 1}
    x = np.random.default_rng(1).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    np.testing.assert_allclose(_run(fast, x), _run(proto, x), atol=1e-5)
