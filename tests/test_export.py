"""simpleunet.export: parity of every file with PyTorch on real images, int8 agreement, metadata, AFF folding,
atomic outputs, bad-input errors, offline operation, publishing.

ONE real export (session fixture, run through the CLI with sockets disabled) makes the four files every
file-level test reads: one onnx2tf conversion for both TFLite formats in the whole suite.
The checkpoint is a real early SimpleUNet-16 Kvasir-SEG checkpoint (tests/fixtures/simpleunet16-kvasir-early).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from simpleunet.export import cli
from simpleunet.export.errors import ExportError
from simpleunet.export.images import CALIBRATION_DIR, calibration_set, verification_set
from simpleunet.export.manifest import sha256
from simpleunet.export.metadata import read_onnx_metadata, read_tflite_metadata, set_onnx_metadata
from simpleunet.export.onnx_export import export_onnx, fold_aff, remove_mul_by_one
from simpleunet.export.pipeline import export_model
from simpleunet.train.checkpoint import load_model, save_model
from simpleunet.train.config import ModelConfig
from simpleunet.train.model import build_model
from simpleunet_runtime.errors import SimpleUNetError
from simpleunet_runtime.image import normalize
from simpleunet_runtime.metadata import METADATA_KEY, ModelMetadata

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "simpleunet16-kvasir-early"
KVASIR = Path(os.environ.get("SIMPLEUNET_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets")) \
    / "kvasir-seg"
VAL_SIZE = 40


def _real_val_data() -> str | None:
    """The Kvasir-SEG test split (val_120) when the dataset is here, else the bundled val sample (also real)."""
    return str(KVASIR) if (KVASIR / "images").is_dir() else None


@contextlib.contextmanager
def no_network():
    """Every socket, connection and name lookup in this process raises."""
    def refuse(*_a, **_k):
        raise OSError("network disabled by the test")

    class NoSocket(socket.socket):
        def __init__(self, *a, **k):
            refuse()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "socket", NoSocket)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        yield


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """The one real export: ``simpleunet-export --checkpoint FIXTURE --int8`` with networking disabled."""
    out = tmp_path_factory.mktemp("export") / "su16"
    args = ["--checkpoint", str(FIXTURE), "--int8", "--out", str(out), "--val-size", str(VAL_SIZE)]
    if _real_val_data():
        args += ["--val-data", _real_val_data()]
    stdout, stderr = io.StringIO(), io.StringIO()
    with no_network(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(args)
    assert code == 0, stderr.getvalue()
    name = "simpleunet16"
    files = {"onnx-fp32": out / f"{name}-fp32.onnx", "onnx-int8": out / f"{name}-int8.onnx",
             "tflite-fp32": out / f"{name}-fp32.tflite", "tflite-int8": out / f"{name}-int8.tflite"}
    return {"out": out, "files": files, "stdout": stdout.getvalue(), "manifest": json.loads(
        (out / "manifest.json").read_text())}


@pytest.fixture(scope="session")
def reference():
    """Real held-out images (normalized NCHW), their masks and the PyTorch fp32 probabilities."""
    model, meta = load_model(FIXTURE)
    pre = meta["preprocess"]
    val = verification_set(_real_val_data(), pre["imgsz"], VAL_SIZE)
    x = normalize(val.images, pre["mean"], pre["std"])
    with torch.no_grad():
        prob = torch.sigmoid(model(torch.from_numpy(x)))[:, 0].numpy()
    return {"x": x, "prob": prob, "masks": val.masks, "threshold": pre["threshold"], "images": val.images}


def _segmenter_probs(path: Path, x: np.ndarray) -> np.ndarray:
    """Probabilities through the runtime's Segmenter: the deployment path, not the exporter's own runner."""
    from simpleunet_runtime import Segmenter

    seg = Segmenter(path, threads=1)
    return np.concatenate([seg.run(x[i:i + 1]) for i in range(len(x))])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.count_nonzero(a & b)
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2 * inter / total


# ---- the real export --------------------------------------------------------------------------------------------

def test_export_writes_four_files_and_reports(exported):
    for path in exported["files"].values():
        assert path.is_file() and path.stat().st_size > 0
    text = exported["stdout"]
    for step in ("ONNX: success", "ONNX int8 qoperator: success", "TFLite: success", "TFLite int8: success",
                 "Export complete", "Next:"):
        assert step in text
    assert not list(exported["out"].parent.glob(".*staging*")), "staging folder left behind"


@pytest.mark.parametrize("key", ["onnx-fp32", "tflite-fp32"])
def test_fp32_files_match_pytorch(exported, reference, key):
    prob = _segmenter_probs(exported["files"][key], reference["x"])
    assert prob.shape == reference["prob"].shape
    assert np.abs(prob - reference["prob"]).max() <= 1e-4


@pytest.mark.parametrize("key", ["onnx-int8", "tflite-int8"])
def test_int8_masks_agree_with_fp32_on_real_images(exported, reference, key):
    prob = _segmenter_probs(exported["files"][key], reference["x"])
    thr = reference["threshold"]
    agree = _dice(prob > thr, reference["prob"] > thr)
    assert agree >= 0.98, f"{key}: int8 vs fp32 mask Dice {agree:.4f} on {len(prob)} real Kvasir images"
    # and it is still a segmentation model: Dice vs ground truth close to PyTorch's
    gt = reference["masks"]
    assert _dice(prob > thr, gt) >= _dice(reference["prob"] > thr, gt) - 0.02


def test_int8_files_are_small(exported):
    size = {k: p.stat().st_size for k, p in exported["files"].items()}
    assert size["onnx-int8"] <= 24 * 1024  # the goal for SimpleUNet-16
    assert size["tflite-int8"] < 0.45 * size["tflite-fp32"]
    assert size["onnx-int8"] < 0.4 * size["onnx-fp32"]


def test_manifest_lists_files_with_hashes_and_checks(exported):
    man = exported["manifest"]
    rows = {r["file"]: r for r in man["files"]}
    assert set(rows) == {p.name for p in exported["files"].values()}
    for path in exported["files"].values():
        row = rows[path.name]
        assert row["sha256"] == sha256(path) and row["bytes"] == path.stat().st_size
        assert row["parameters"] == man["parameters"] == 16_234
    assert rows["simpleunet16-int8.onnx"]["int8_weight_bytes"] > 15_000
    assert rows["simpleunet16-fp32.onnx"]["checks"]["max_abs_delta_vs_pytorch"] <= 1e-4
    assert rows["simpleunet16-int8.tflite"]["checks"]["dice_vs_fp32"] >= 0.98
    assert man["calibration"]["images"] == 32 and man["verification"]["held_out"]
    assert man["aff_folded"] and "onnx2tf" in man["tools"]


def test_onnx_files_carry_the_onnxruntime_rewrites(exported):
    """The exporter applies rewrites.FP32 / rewrites.INT8 (exactness: test_rewrites.py; parity with PyTorch and
    int8 agreement of these very files: the tests above) and records them; TFLite is converted from the plain
    graph (one concat per decoder step)."""
    fp32 = [n.op_type for n in onnx.load(str(exported["files"]["onnx-fp32"])).graph.node]
    assert "Concat" not in fp32 and fp32.count("Conv") == 18 and "MatMul" in fp32
    int8 = [n.op_type for n in onnx.load(str(exported["files"]["onnx-int8"])).graph.node]
    # 256^2 and 128^2 decoder convs padded to 16 outputs; the RGB input padded to 4 channels; float head
    assert int8.count("Slice") == 2 and int8.count("QLinearConcat") == 4 and "MatMul" in int8
    assert int8.count("QLinearConv") == 14 and int8.count("Pad") == 1 + 2 * 3 + 1
    rows = {r["file"]: r for r in exported["manifest"]["files"]}
    assert rows["simpleunet16-fp32.onnx"]["rewrites"] == {"split_concat_conv": 4, "head_as_matmul": 1}
    assert rows["simpleunet16-int8.onnx"]["rewrites"] == {"pad_output_channels": 2, "pad_input_channels": 1,
                                                          "requantize_once": 4, "head_as_matmul": 1}
    assert exported["manifest"]["onnxruntime_rewrites"] is True
    assert "onnxruntime rewrites: split_concat_conv x4" in exported["stdout"]


def test_metadata_round_trips(exported):
    model, meta = load_model(FIXTURE)
    for key, path in exported["files"].items():
        md = read_tflite_metadata(path) if key.startswith("tflite") else read_onnx_metadata(path)
        assert md.family == "simpleunet" and (md.width, md.blocks, md.rate) == (16, 1, 0.5)
        assert md.imgsz == (256, 256) and md.mean == tuple(meta["preprocess"]["mean"])
        assert md.threshold == meta["preprocess"]["threshold"] and md.output == "probabilities"
        assert "min_region" not in meta["preprocess"] and not md.min_region.active  # an older checkpoint
        assert md.precision == key.split("-")[1]
        assert md.input_layout == ("NHWC" if key.startswith("tflite") else "NCHW")
        assert md.weights_sha256 == sha256(FIXTURE / "model.safetensors")
        assert md.dataset == "kvasir-seg" and "diagnostic" in md.notice
        assert ModelMetadata.from_json(md.to_json()) == md


def test_files_are_stripped(exported):
    proto = onnx.load(str(exported["files"]["onnx-int8"]))
    assert not any(n.name or n.doc_string for n in proto.graph.node)
    assert max(len(i.name) for i in proto.graph.initializer) <= 3
    assert [p.key for p in proto.metadata_props] == [METADATA_KEY]
    tfl = exported["files"]["tflite-int8"].read_bytes()
    assert b"CONVERSION_METADATA" not in tfl and b"serving_default" not in tfl


@pytest.mark.parametrize("key", ["tflite-int8", "tflite-fp32"])
def test_tflite_stores_identical_parts_once_and_runs_bit_identically(exported, reference, key):
    """``tflite.to_bytes`` writes every identical vector and quantization/options table once: each file reads back
    as exactly the model a plain ``flatbuffer_utils`` write of it gives (no unreferenced buffer left either), is
    smaller (int8: over 4 KB, and under the 24 KB goal) and runs to bit-identical outputs on real images with
    LiteRT's default XNNPACK delegate (the whole graph delegated, as before) and with the builtin kernels."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from tensorflow.lite.tools import flatbuffer_utils

    from simpleunet.export.tflite import _key

    data = exported["files"][key].read_bytes()
    model = flatbuffer_utils.read_model_from_bytearray(data)
    plain = flatbuffer_utils.convert_object_to_bytearray(model)
    assert _key(flatbuffer_utils.read_model_from_bytearray(plain)) == _key(model)
    referenced = {0} | {t.buffer for t in model.subgraphs[0].tensors} | {m.buffer for m in model.metadata}
    assert referenced == set(range(len(model.buffers)))
    if key == "tflite-int8":
        assert len(plain) - len(data) >= 4_000 and len(data) <= 24 * 1024
    else:
        assert len(plain) - len(data) >= 1_000
    x = reference["x"][:8].transpose(0, 2, 3, 1)
    for resolver in (OpResolverType.AUTO, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES):
        outputs, plans = [], []
        for content in (plain, data):
            it = Interpreter(model_content=content, num_threads=1, experimental_op_resolver_type=resolver)
            it.allocate_tensors()
            inp, out = it.get_input_details()[0], it.get_output_details()[0]
            scale, zero = inp["quantization"]
            ys = []
            for image in x:
                it.set_tensor(inp["index"], image[None] if key == "tflite-fp32" else
                              np.clip(np.round(image[None] / np.float32(scale) + zero), -128, 127).astype(np.int8))
                it.invoke()
                ys.append(it.get_tensor(out["index"]).copy())
            outputs.append(np.stack(ys))
            plans.append([(op["op_name"], list(op["inputs"]), list(op["outputs"])) for op in it._get_ops_details()])
        assert outputs[0].dtype == (np.int8 if key == "tflite-int8" else np.float32)
        assert np.array_equal(outputs[0], outputs[1])
        assert plans[0] == plans[1]
        delegated = [p for p in plans[1] if p[0] == "DELEGATE"]
        if resolver == OpResolverType.AUTO:  # one XNNPACK partition from the input to the output
            graph = model.subgraphs[0]
            assert len(delegated) == 1 and delegated[0][1][0] == graph.inputs[0]
            assert delegated[0][2] == list(graph.outputs)
        else:
            assert not delegated


def test_export_ran_offline_and_onnx2tf_child_blocks_sockets():
    """The child that runs onnx2tf blocks the network itself (the parent's patch does not reach it)."""
    code = ("from simpleunet.export.tflite import block_network; block_network(); import socket\n"
            "try:\n    socket.create_connection(('github.com', 443), timeout=1)\nexcept OSError as e:\n"
            "    print('blocked', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "blocked network access is disabled" in out.stdout


def test_onnx2tf_runs_only_the_two_conversions_kept():
    """onnx2tf's float16, dynamic-range, float-I/O int8 and int16-activation conversions are skipped (empty);
    float32 and full-integer int8 still convert. In a child: TensorFlow stays out of the test process."""
    code = """
import numpy as np, tensorflow as tf
from simpleunet.export.tflite import skip_unused_conversions
skip_unused_conversions()
model = tf.keras.Sequential([tf.keras.Input((8, 8, 3), batch_size=1), tf.keras.layers.Conv2D(4, 3)])
def variant(optimize=False, types=(), ops=None, calibrate=False, io=None):
    c = tf.lite.TFLiteConverter.from_keras_model(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT] if optimize else []
    c.target_spec.supported_types = list(types)
    c.target_spec.supported_ops = ops or [tf.lite.OpsSet.TFLITE_BUILTINS]
    if calibrate:
        c.representative_dataset = lambda: ([np.ones((1, 8, 8, 3), np.float32)] for _ in range(2))
    if io:
        c.inference_input_type = c.inference_output_type = io
    return len(c.convert()) > 0
int8 = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
int16 = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
print([variant(), variant(True, [tf.float16]), variant(True), variant(True, ops=int8, calibrate=True),
       variant(True, ops=int8, calibrate=True, io=tf.int8), variant(True, ops=int16, calibrate=True, io=tf.int16)])
"""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.stdout.strip().splitlines()[-1:] == ["[True, False, False, False, True, False]"], out.stderr[-2000:]


# ---- AFF folding ------------------------------------------------------------------------------------------------

def _randomized(cfg: ModelConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in list(model.alpha) + list(model.beta):
            p.copy_(torch.randn_like(p) * 1.5)  # both signs
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("family", ["simpleunet", "simpleesknet"])
def test_aff_fold_is_exact_and_removes_the_muls(family):
    cfg = ModelConfig(family=family, width=8)
    model = _randomized(cfg)
    folded = fold_aff(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), atol=1e-5)
    assert all(torch.all(p == 1) for p in list(folded.alpha) + list(folded.beta))
    assert not torch.all(model.alpha[0] == 1), "the original model must not be modified"
    proto, sizes = export_onnx(model, 64, 1)
    unfolded, _ = export_onnx(model, 64, 1, fold=False)
    muls = lambda p: sum(n.op_type == "Mul" for n in p.graph.node)  # noqa: E731
    assert muls(unfolded) - muls(proto) == 8
    assert sizes["strip"] < sizes["torch.onnx.export"]


def test_mul_by_one_that_broadcasts_is_kept():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    ones = helper.make_tensor("c", TensorProto.FLOAT, [3, 1, 1], [1.0, 1.0, 1.0])
    same = helper.make_tensor("d", TensorProto.FLOAT, [1, 1, 1], [1.0])
    nodes = [helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Mul", ["m", "d"], ["n"]),
             helper.make_node("Relu", ["n"], ["y"])]
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [ones, same]))
    assert remove_mul_by_one(proto) == 1  # Mul by d goes; Mul by c broadcasts 1 -> 3 channels and stays
    assert [n.op_type for n in proto.graph.node] == ["Mul", "Relu"]


@pytest.mark.parametrize("fmt", ["qoperator", "qdq"])
def test_quantized_graphs_are_valid_and_keep_the_output_float(tmp_path, fmt):
    """Both int8 layouts pass the full ONNX check (onnxruntime's QDQ quantizer can emit invalid graphs) and end
    in a float Sigmoid; on real calibration images the int8 probabilities stay close to fp32."""
    from simpleunet.export.quantize import quantize_onnx
    from simpleunet.export.verify import onnx_probabilities

    torch.manual_seed(0)
    model = build_model(ModelConfig(width=8)).eval()  # untrained: every folded conv bias is 0, shared in the file
    proto, _ = export_onnx(model, 64, 1)
    assert sum(len(i.dims) == 1 for i in proto.graph.initializer) < 15
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(proto, str(fp32))
    x = normalize(calibration_set(None, 64, 16).images, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    qproto, sizes = quantize_onnx(fp32, x, fmt)  # runs onnx.checker full_check
    ops = [n.op_type for n in qproto.graph.node]
    assert ops[-1] == "Sigmoid"
    if fmt == "qoperator":  # the head runs in float after a DequantizeLinear (rewrites.head_as_matmul)
        assert "QLinearConv" in ops and "Conv" not in ops
        assert "MatMul" in ops[-8:]
    else:  # every float Conv reads dequantized int8 weights; no onnxruntime rewrite applies to QDQ graphs
        assert ops.count("Conv") == 15 and ops.count("DequantizeLinear") >= 2 * 15 and ops[-2] == "DequantizeLinear"
    assert ("Resize" in ops) and sizes["strip + share"] < sizes["quantize_static"]
    qpath = tmp_path / "int8.onnx"
    onnx.save(qproto, str(qpath))
    assert np.abs(onnx_probabilities(qpath, x[:4]) - onnx_probabilities(fp32, x[:4])).max() < 0.1


def test_a_percentile_calibration_narrows_the_activation_ranges(tmp_path):
    from simpleunet.export.quantize import quantize_onnx

    torch.manual_seed(0)
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(export_onnx(build_model(ModelConfig(width=4)).eval(), 32, 1)[0], str(fp32))
    x = normalize(calibration_set(None, 32, 16).images, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

    def input_scale(calibration: str) -> float:  # the input's range: the same tensor in both graphs
        proto, _ = quantize_onnx(fp32, x, calibration=calibration)
        node = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear")
        return float(onnx.numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == node.input[1])))

    assert input_scale("percentile-99.999") < input_scale("minmax")
    with pytest.raises(ExportError, match="unknown calibration 'kl'; choose one of minmax, percentile"):
        quantize_onnx(fp32, x, calibration="kl")


def test_onnx_metadata_is_replaced_not_duplicated():
    proto = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    md = ModelMetadata(family="simpleunet", width=8, blocks=1, rate=0.5, imgsz=(64, 64), mean=(0.5,) * 3,
                       std=(0.25,) * 3)
    set_onnx_metadata(proto, md)
    set_onnx_metadata(proto, md.replace(precision="int8"))
    assert [p.key for p in proto.metadata_props] == [METADATA_KEY]
    assert ModelMetadata.from_json(proto.metadata_props[0].value).precision == "int8"


# ---- bad input: one-line errors, nothing half-written -----------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    model, meta = load_model(FIXTURE)
    save_model(folder, model, meta)
    return folder


def _error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_cli_bad_inputs(capsys, tmp_path, tiny_ckpt):
    ck = str(tiny_ckpt)
    assert "does not exist" in _error(capsys, ["--checkpoint", str(tmp_path / "missing")])
    assert "multiple of 16" in _error(capsys, ["--checkpoint", ck, "--imgsz", "250"])
    assert "unknown format 'coreml'" in _error(capsys, ["--checkpoint", ck, "--formats", "onnx,coreml"])
    assert "--width 32 does not match" in _error(capsys, ["--checkpoint", ck, "--width", "32"])
    assert "--opset" in _error(capsys, ["--checkpoint", ck, "--opset", "9"])
    (tmp_path / "empty").mkdir()
    assert "holds no images" in _error(capsys, ["--checkpoint", ck, "--int8", "--calib-data",
                                                str(tmp_path / "empty")])
    assert "does not exist" in _error(capsys, ["--checkpoint", ck, "--int8", "--calib-data",
                                               str(tmp_path / "nope")])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"not a jpeg")
    assert "broken.jpg is not a readable image" in _error(capsys, ["--checkpoint", ck, "--int8", "--calib-data",
                                                                   str(bad)])
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert "cannot write to --out" in _error(capsys, ["--checkpoint", ck, "--formats", "onnx",
                                                      "--out", str(blocker / "sub")])


def test_corrupt_and_mismatched_checkpoints(capsys, tmp_path, tiny_ckpt):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_ckpt, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    assert "not a readable safetensors" in _error(capsys, ["--checkpoint", str(corrupt)])
    mismatch = tmp_path / "mismatch"
    shutil.copytree(tiny_ckpt, mismatch)
    cfg = json.loads((mismatch / "config.json").read_text())
    cfg["model"]["width"] = 8
    (mismatch / "config.json").write_text(json.dumps(cfg))
    assert "do not match its config" in _error(capsys, ["--checkpoint", str(mismatch)])


def test_no_shipped_weights_is_a_clear_error(capsys, monkeypatch, tmp_path):
    import simpleunet.export.pipeline as pipeline

    monkeypatch.setattr(pipeline, "zoo_dir", lambda: tmp_path)
    assert "no pretrained weights for simpleunet width 24" in _error(capsys, ["--width", "24"])


def test_few_calibration_images_warn(tmp_path):
    for p in sorted(CALIBRATION_DIR.glob("*.jpg"))[:3]:
        shutil.copy(p, tmp_path / p.name)
    with pytest.warns(UserWarning, match="only 3 calibration"):
        cal = calibration_set(tmp_path, 64)
    assert cal.images.shape == (3, 64, 64, 3)
    with pytest.raises(SimpleUNetError, match="at least 1"):
        calibration_set(tmp_path, 64, 0)


def test_failed_check_leaves_existing_files_untouched(tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    out.mkdir()
    good = out / "simpleunet16-fp32.onnx"
    good.write_bytes(b"previous good export")
    with pytest.raises(SimpleUNetError, match="max \\|Δ\\| vs PyTorch .* nothing was written"):
        export_model(tiny_ckpt, formats="onnx", int8=False, out=out, max_delta=1e-12, val_size=2, log=None)
    assert good.read_bytes() == b"previous good export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_conversion_tool_failure_is_one_line(tmp_path, monkeypatch):
    from simpleunet.export.tflite import ConversionError, convert

    bad = tmp_path / "bad.onnx"
    proto = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["image"], ["prob"])], "g",
        [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
        [onnx.helper.make_tensor_value_info("prob", onnx.TensorProto.FLOAT, [1, 3, 16, 16])]))
    proto.graph.node[0].op_type = "NoSuchOp"
    onnx.save(proto, str(bad))
    images = np.zeros((1, 16, 16, 3), np.uint8)
    monkeypatch.chdir(tmp_path)  # relative paths: the child runs in its own working directory
    with pytest.raises(ConversionError) as info:
        convert(Path("bad.onnx"), {"fp32": Path("x.tflite")}, images, (0.5,) * 3, (0.25,) * 3, {"fp32": "{}"})
    message = str(info.value)
    assert "onnx2tf failed" in message and "NoSuchOp" in message and "\n" not in message
    assert not (tmp_path / "x.tflite").exists()


# ---- calibration sample and publishing --------------------------------------------------------------------------

def test_bundled_calibration_sample_is_real_train_images():
    files = sorted(CALIBRATION_DIR.glob("*.jpg"))
    assert len(files) == 32 and sum(f.stat().st_size for f in files) <= 1_000_000
    assert "Jha" in (CALIBRATION_DIR / "README.md").read_text()
    if (KVASIR / "splits").is_dir():
        train = set((KVASIR / "splits" / "train_880.txt").read_text().split())
        test = set((KVASIR / "splits" / "val_120.txt").read_text().split())
        stems = {f.stem for f in files}
        assert stems <= train and not stems & test


def test_bundle_exports_every_zoo_checkpoint(tmp_path, tiny_ckpt):
    from simpleunet.train.zoo import bundle
    from simpleunet_runtime import bundled

    zoo_dir = tmp_path / "zoo"
    shutil.copytree(tiny_ckpt, zoo_dir / "simpleunet16-test")
    (zoo_dir / "simpleunet16-test" / "metrics.json").write_text(json.dumps({"test": {"mDice": 0.5}}))
    dest = tmp_path / "models"
    dest.mkdir()
    (dest / "stale-model.onnx").write_bytes(b"old")
    entries = bundle(zoo_dir, dest, formats=("onnx",), log=None)
    assert {(e["precision"], e["format"]) for e in entries} == {("fp32", "onnx"), ("int8", "onnx")}
    assert json.loads((dest / "index.json").read_text()) == entries
    assert not (dest / "stale-model.onnx").exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]
    for e in entries:
        assert e["name"] == "simpleunet16-test" and e["dataset"] == "kvasir-seg" and e["parameters"] == 16_234
        assert e["metrics"]["test_mDice"] == 0.5
        assert e["metrics"]["export_checks"]["on"] == "16 held-out kvasir-seg images"  # not the test split
        path = bundled.resolve(e["name"], e["precision"], e["format"], folder=dest)  # checks the sha256
        assert read_onnx_metadata(path).name == "simpleunet16-test"


def test_bundle_of_named_models_keeps_the_other_bundled_files(tmp_path, tiny_ckpt, monkeypatch):
    """``simpleunet-publish NAME`` re-exports that model only: the others' files and index entries stay as they are
    (a re-export on another CPU would change their bytes); a name that is not a zoo model is one line, one the
    runtime does not bundle is skipped."""
    from simpleunet.train import zoo
    from simpleunet.train.zoo import bundle

    zoo_dir, dest = tmp_path / "zoo", tmp_path / "models"
    for name in ("simpleunet16-kept", "simpleunet16-new"):
        shutil.copytree(tiny_ckpt, zoo_dir / name)
        (zoo_dir / name / "metrics.json").write_text(json.dumps({"test": {"mDice": 0.5}}))
    dest.mkdir()
    (dest / "simpleunet16-kept-fp32.onnx").write_bytes(b"published elsewhere")
    with pytest.raises(SimpleUNetError, match="no index.json in .*without names"):  # nothing to keep: refuse
        bundle(zoo_dir, dest, formats=("onnx",), log=None, only=["simpleunet16-new"])
    kept = {"name": "simpleunet16-kept", "format": "onnx", "precision": "fp32", "file": "simpleunet16-kept-fp32.onnx"}
    (dest / "index.json").write_text(json.dumps([kept]))
    with pytest.raises(SimpleUNetError, match="not a zoo model: simpleunet16-gone") as info:
        bundle(zoo_dir, dest, formats=("onnx",), log=None, only=["simpleunet16-gone"])
    assert "\n" not in str(info.value)
    monkeypatch.setitem(zoo.NOT_BUNDLED, "simpleunet16-new", "a test")  # a zoo model the runtime does not bundle
    assert bundle(zoo_dir, dest, formats=("onnx",), log=None, only=["simpleunet16-new"]) == [kept]
    monkeypatch.delitem(zoo.NOT_BUNDLED, "simpleunet16-new")
    entries = bundle(zoo_dir, dest, formats=("onnx",), log=None, only=["simpleunet16-new"])
    assert entries[0] == kept and {e["name"] for e in entries[1:]} == {"simpleunet16-new"}
    assert json.loads((dest / "index.json").read_text()) == entries
    assert (dest / "simpleunet16-kept-fp32.onnx").read_bytes() == b"published elsewhere"
    assert entries[-1]["file"] == "simpleunet16-new-int8.onnx" and (dest / entries[-1]["file"]).is_file()


def test_a_dataset_folder_calibrates_on_train_and_checks_on_test(busi):
    """A BUSI model is calibrated on BUSI's train split and checked on its test split (never calibrated on test)."""
    train = set((busi / "splits" / "train.txt").read_text().split())
    test = set((busi / "splits" / "test.txt").read_text().split())
    cal = calibration_set(busi, 32, 8)
    assert "train split" in cal.source and len(cal.names) == 8 and set(cal.names) <= train
    val = verification_set(busi, 32, 8)
    assert "test split" in val.source and len(val.names) == 8 and set(val.names) <= test


# ---- review fixes: own data when publishing, stale files, held-out checks, --max-delta, Ctrl-C --------------------

def _as_busi(src: Path, dest: Path) -> Path:
    """A copy of a checkpoint whose config says it was trained on BUSI."""
    shutil.copytree(src, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["dataset"] = cfg.setdefault("train", {})["dataset"] = "busi"
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def test_publish_refuses_a_model_whose_dataset_is_missing_and_export_records_the_fallback(tmp_path, tiny_ckpt,
                                                                                         monkeypatch):
    """Publishing never calibrates a BUSI model on the bundled Kvasir-SEG sample; a plain export still may, and
    says so in its manifest and in each file's metadata."""
    import simpleunet.export.pipeline as pipeline
    from simpleunet.train.zoo import bundle

    monkeypatch.setattr(pipeline, "own_dataset", lambda name: None)
    busi = _as_busi(tiny_ckpt, tmp_path / "zoo" / "simpleunet16-busi")
    dest = tmp_path / "models"
    with pytest.raises(SimpleUNetError, match="'busi' was not found.*set SIMPLEUNET_DATA") as info:
        bundle(tmp_path / "zoo", dest, formats=("onnx",), log=None)
    assert "\n" not in str(info.value) and not (dest / "index.json").exists()
    out = tmp_path / "out"
    export_model(busi, formats="onnx", int8=True, val_size=2, out=out, log=None)
    man = json.loads((out / "manifest.json").read_text())
    assert man["calibration"]["dataset"] == man["verification"]["dataset"] == "kvasir-seg"
    assert man["checkpoint"]["dataset"] == "busi" and "'busi', which is not found here" in man["warnings"][0]
    extra = read_onnx_metadata(out / "simpleunet16-int8.onnx").extra
    assert extra["calibration_data"] == extra["check_data"] == "kvasir-seg"


def test_reexport_removes_only_the_stale_files_it_wrote(tmp_path, tiny_ckpt):
    """Files the previous manifest listed and the new run does not write go; the user's files and a listed file
    the user changed (other sha256) stay."""
    out = tmp_path / "out"
    export_model(tiny_ckpt, formats="onnx", int8=True, int8_onnx="both", val_size=2, out=out, log=None)
    assert {"simpleunet16-int8.onnx", "simpleunet16-int8-qdq.onnx"} <= {p.name for p in out.iterdir()}
    (out / "notes.txt").write_text("mine")
    (out / "simpleunet16-int8-qdq.onnx").write_bytes(b"edited by the user")
    result = export_model(tiny_ckpt, formats="onnx", int8=False, val_size=2, out=out, log=None)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "notes.txt", "simpleunet16-fp32.onnx",
                                                     "simpleunet16-int8-qdq.onnx"]
    assert [r["file"] for r in json.loads(result.manifest.read_text())["files"]] == ["simpleunet16-fp32.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_ctrl_c_while_committing_waits_and_says_the_export_was_written():
    import signal

    from simpleunet.export.outfolder import hold_interrupt

    moved = []
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job starts with it ignored
    try:
        with pytest.raises(KeyboardInterrupt, match="already written"):
            with hold_interrupt("the export was already written to out"):
                os.kill(os.getpid(), signal.SIGINT)
                moved.append("all files")  # still running after the signal
        assert moved == ["all files"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


def _copy_sample(folder: Path, count: int) -> list[str]:
    from simpleunet_runtime.sample import sample_pairs

    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    pairs = sample_pairs()[:count]
    for img, mask in pairs:
        shutil.copy(img, folder / "images" / img.name)
        shutil.copy(mask, folder / "masks" / mask.name)
    return [img.stem for img, _ in pairs]


def test_a_folder_whose_splits_have_no_test_split_is_not_called_held_out(tmp_path):
    ids = _copy_sample(tmp_path / "data", 4)
    (tmp_path / "data" / "splits").mkdir()
    (tmp_path / "data" / "splits" / "train.txt").write_text("\n".join(ids[:3]))
    val = verification_set(tmp_path / "data", 32)
    assert sorted(val.names) == sorted(ids) and not val.held_out and "(test split)" not in val.source
    (tmp_path / "data" / "splits" / "test.txt").write_text(ids[3])
    val = verification_set(tmp_path / "data", 32)
    assert val.names == ids[3:] and val.held_out and val.source.endswith("(test split)")


def test_check_masks_merge_every_mask_of_a_sample(tmp_path):
    """A BUSI image with _mask and _mask_1 is checked against both lesions, as training and eval see it."""
    from PIL import Image

    cls = tmp_path / "Dataset_BUSI_with_GT" / "benign"
    cls.mkdir(parents=True)
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(cls / "benign (1).png")
    for suffix, cols in (("_mask", slice(0, 8)), ("_mask_1", slice(8, 16))):
        mask = np.zeros((16, 16), np.uint8)
        mask[:, cols] = 255
        Image.fromarray(mask).save(cls / f"benign (1){suffix}.png")
    val = verification_set(tmp_path, 16)
    assert val.names == ["benign_001"] and val.masks[0].all()


def test_max_delta_is_checked_up_front(capsys, tiny_ckpt):
    for bad in ("-1", "nan", "inf", "0"):
        with pytest.raises(SystemExit) as info:
            cli.main(["--checkpoint", str(tiny_ckpt), "--max-delta", bad])
        assert info.value.code == 2
        assert "argument --max-delta: expected a positive number" in capsys.readouterr().err
    with pytest.raises(SimpleUNetError, match="--max-delta must be a positive number, got nan"):
        export_model(tiny_ckpt, max_delta=float("nan"), log=None)


# ---- int8 that is right on every CPU (simpleunet_runtime.saturation) -------------------------------------------

def test_exported_int8_onnx_is_proven_int16_safe(exported):
    """The export records the machine-independent verdict in the manifest and in the file's metadata."""
    from simpleunet_runtime.saturation import PAIR_LIMIT, check_onnx

    path = exported["files"]["onnx-int8"]
    verdict = check_onnx(path)
    assert verdict.safe and verdict.ops >= 14 and verdict.peak <= PAIR_LIMIT
    checks = {r["file"]: r for r in exported["manifest"]["files"]}[path.name]["checks"]
    assert checks["avx2_int16_safe"] is True and checks["largest_weight_pair"] == verdict.peak
    assert checks["checked_on"] == exported["manifest"]["checked_on"]["int8_kernels"]
    assert exported["manifest"]["int8_weights"] == "int7"
    from simpleunet.export.metadata import read_onnx_metadata

    extra = read_onnx_metadata(path).extra
    assert extra["int8_weights"] == "int7" and extra["avx2_int16_safe"] is True


@pytest.mark.parametrize("weights, safe", [("int7", True), ("pair-safe", True), ("int8", False)])
def test_weight_grids_and_the_proof(tmp_path, weights, safe):
    """Full-range int8 (the files bundled before 2026-12-03) fails the proof on any machine; int7 and pair-safe
    pass it, pair-safe with per-channel scales no coarser than int7's."""
    from onnx import numpy_helper

    from simpleunet.export.quantize import quantize_onnx
    from simpleunet_runtime.saturation import PAIR_LIMIT, check_onnx, pair_peaks

    model, meta = load_model(FIXTURE)
    proto, _ = export_onnx(model, 64, 1)
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(proto, str(fp32))
    x = normalize(calibration_set(None, 64, 16).images, meta["preprocess"]["mean"], meta["preprocess"]["std"])
    q, _ = quantize_onnx(fp32, x, weights=weights, rewrites=False)
    assert check_onnx(q.SerializeToString()).safe is safe
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    peaks = [int(pair_peaks(inits[n.input[3]]).max()) for n in q.graph.node if n.op_type == "QLinearConv"]
    assert (max(peaks) <= PAIR_LIMIT) is safe
    if weights == "pair-safe":
        assert max(int(np.abs(inits[n.input[3]].astype(int)).max()) for n in q.graph.node
                   if n.op_type == "QLinearConv") > 64  # finer than int7 where the filter allows it


def test_export_refuses_an_int8_file_that_would_saturate(tmp_path, tiny_ckpt, monkeypatch):
    """Should a quantizer ever write full-range weights, the export stops with one line naming file, cause and fix,
    on this machine whatever its CPU, and writes nothing."""
    from simpleunet.export import quantize

    monkeypatch.setitem(quantize.WEIGHTS, "int7", quantize.WEIGHTS["int8"])
    out = tmp_path / "out"
    with pytest.raises(SimpleUNetError, match=r"simpleunet16-int8.onnx: not int16-safe on AVX2.*--int8-weights int7 "
                                              r".*nothing was written") as exc:
        export_model(tiny_ckpt, formats="onnx", int8=True, out=out, val_size=2, log=None)
    assert "\n" not in str(exc.value) and not out.exists()


def test_failed_agreement_names_file_cpu_cause_and_fix(tmp_path, tiny_ckpt):
    with pytest.raises(SimpleUNetError) as exc:
        export_model(tiny_ckpt, formats="onnx", int8=True, out=tmp_path / "out", val_size=2, min_agreement=1.0,
                     log=None)
    msg = str(exc.value)
    assert "simpleunet16-int8.onnx: int8 mask agrees with fp32 at Dice" in msg or "agrees with fp32 at Dice 1" in msg
    if "< --min-agreement" in msg:
        assert "on this CPU (x86" in msg or "on this CPU (ARM" in msg
        assert "likely cause:" in msg and "nothing was written" in msg and "\n" not in msg


def test_int8_weights_flag_offers_only_safe_grids(capsys, tiny_ckpt):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--checkpoint", str(tiny_ckpt), "--int8", "--int8-weights", "int8"])
    assert exc.value.code == 2 and "invalid choice: 'int8'" in capsys.readouterr().err
    with pytest.raises(SimpleUNetError, match="unknown --int8-weights 'int8'"):
        export_model(tiny_ckpt, int8_weights="int8", log=None)


def test_bias_correction_restores_every_conv_mean(tmp_path):
    """After ``correct_bias``, the float graph with the int7 grid weights has each conv's mean output on the
    calibration images back at the float graph's (conv by conv, so each sees its inputs' corrections); the
    weights are untouched, only biases move."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from simpleunet.export.quantize import correct_bias, grid_weights

    model, meta = load_model(FIXTURE)
    proto, _ = export_onnx(model, 64, 1)
    x = normalize(calibration_set(None, 64, 16).images, meta["preprocess"]["mean"],
                  meta["preprocess"]["std"]).astype(np.float32)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]

    def means(p, grid: bool) -> list[np.ndarray]:
        q = onnx.ModelProto()
        q.CopyFrom(p)
        inits = {t.name: t for t in q.graph.initializer}
        if grid:
            for n in convs:
                w = numpy_helper.to_array(inits[n.input[1]])
                inits[n.input[1]].CopyFrom(numpy_helper.from_array(grid_weights(w, "int7"), n.input[1]))
        q.graph.output.extend(helper.make_tensor_value_info(n.output[0], onnx.TensorProto.FLOAT, None)
                              for n in convs)
        sess = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
        outs = [sess.run([n.output[0] for n in convs], {"image": x[i:i + 1]}) for i in range(len(x))]
        return [np.mean([o[k].mean((0, 2, 3)) for o in outs], 0) for k in range(len(convs))]

    want = means(proto, grid=False)
    before = [abs(g - w).max() for g, w in zip(means(proto, grid=True), want)]
    corrected = onnx.ModelProto()
    corrected.CopyFrom(proto)
    largest = correct_bias(corrected, x, "int7")
    after = [abs(g - w).max() for g, w in zip(means(corrected, grid=True), want)]
    assert max(after) < 1e-4 < max(before)
    assert set(largest) == {n.output[0] for n in convs} and max(largest.values()) > 1e-4
    old = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for t in corrected.graph.initializer:
        if t.name in {n.input[1] for n in convs}:
            assert np.array_equal(numpy_helper.to_array(t), old[t.name])


def test_export_keeps_the_int8_file_that_agrees_better_on_training_images(exported):
    """``--bias-correction auto`` (the default) scores both candidates on training images, never the check images,
    keeps the better, and says which in the manifest and in the file's metadata."""
    entry = {r["file"]: r for r in exported["manifest"]["files"]}[exported["files"]["onnx-int8"].name]
    choice = entry["bias_correction"]
    scores = choice["mdice_vs_fp32"]
    assert choice["chosen_by"] == "auto" and choice["train_images"] >= 32
    assert choice["used"] is (scores["on"] > scores["off"])
    assert read_onnx_metadata(exported["files"]["onnx-int8"]).extra["bias_correction"] is choice["used"]


@pytest.mark.parametrize("flag", ["on", "off"])
def test_bias_correction_flag_forces_the_choice(tmp_path, tiny_ckpt, flag):
    out = tmp_path / "out"
    assert cli.main(["--checkpoint", str(tiny_ckpt), "--int8", "--formats", "onnx", "--bias-correction", flag,
                     "--out", str(out), "--val-size", "2"]) == 0
    path = out / "simpleunet16-int8.onnx"
    assert read_onnx_metadata(path).extra["bias_correction"] is (flag == "on")
    entry = {r["file"]: r for r in json.loads((out / "manifest.json").read_text())["files"]}[path.name]
    assert entry["bias_correction"] == {"used": flag == "on", "chosen_by": flag}


def test_int8_weights_auto_keeps_the_grid_that_agrees_better_on_training_images(tmp_path, tiny_ckpt):
    """``--int8-weights auto`` quantizes on int7 and pair-safe, keeps the file closer to fp32 on training images, and
    records the grid used (file metadata, manifest) and both scores; a second layout (``--int8-onnx both``) keeps the
    first's choice, so both files carry the same weights."""
    out = tmp_path / "out"
    assert cli.main(["--checkpoint", str(tiny_ckpt), "--int8", "--formats", "onnx", "--int8-weights", "auto",
                     "--bias-correction", "off", "--int8-onnx", "both", "--out", str(out), "--val-size", "2"]) == 0
    path = out / "simpleunet16-int8.onnx"
    manifest = json.loads((out / "manifest.json").read_text())
    rows = {r["file"]: r for r in manifest["files"]}
    entry, qdq = rows[path.name], rows["simpleunet16-int8-qdq.onnx"]
    choice, scores = entry["int8_weights_choice"], entry["int8_weights_choice"]["mdice_vs_fp32"]
    assert choice["chosen_by"] == "auto" and choice["train_images"] >= 32 and set(scores) == {"int7", "pair-safe"}
    assert choice["used"] == ("pair-safe" if scores["pair-safe"] > scores["int7"] else "int7") == entry["int8_weights"]
    assert qdq["int8_weights"] == entry["int8_weights"] and qdq["int8_weights_choice"] == choice
    assert manifest["int8_weights"] == choice["used"] and manifest["int8_weights_requested"] == "auto"
    extra = read_onnx_metadata(path).extra
    assert extra["int8_weights"] == choice["used"] and extra["avx2_int16_safe"] is True
    assert entry["bias_correction"] == {"used": False, "chosen_by": "off"}


def test_the_checkpoints_small_region_rule_reaches_the_file_and_the_runtime(tmp_path):
    """preprocess.min_region goes into the file's metadata and manifest; without one a file keeps every region."""
    from simpleunet_runtime import Segmenter
    from simpleunet_runtime.regions import MinRegion

    model, meta = load_model(FIXTURE)
    folder = tmp_path / "ruled"
    save_model(folder, model, {**meta, "preprocess": {**meta["preprocess"], "min_region": [0.003, 0.3]}})
    result = export_model(folder, formats="onnx", int8=False, val_size=2, out=tmp_path / "out", log=None)
    path = result.files["onnx-fp32"]
    assert read_onnx_metadata(path).min_region == MinRegion(0.003, 0.3)
    assert json.loads(result.manifest.read_text())["preprocess"]["min_region"] == [0.003, 0.3]
    assert Segmenter(path).metadata.min_region == MinRegion(0.003, 0.3)
