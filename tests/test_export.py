"""scripts/export.py (deploy graph with pre- and post-processing, ONNX round trip),
utils/onnx_export.py and detection_infer_speed.py."""
import json
import re

import cv2
import mxnet as mx
import numpy as np
import pytest

from conftest import run_script
from test_infer import CONFIG, NAMES, SETS, set_args, tiny_params
from utils.checkpoint import load_weights

# The export is checked with hard NMS (onnxruntime's NonMaxSuppression); the quickstart's own is soft.
EXPORT_SETS = SETS + ["TestParam.nms_type=hard"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model exported with --onnx: (prefix, completed process)."""
    pytest.importorskip("onnxruntime")
    folder = tmp_path_factory.mktemp("export")
    # A damped box head keeps boxes image-sized, so pixel differences mean something.
    params = tiny_params(folder / "tiny.params", box_scale=0.05, class_names=NAMES)
    prefix = folder / "deploy" / "tiny"
    res = run_script(["scripts/export.py", "--config", CONFIG, "--params", params, "--out", prefix, "--onnx"]
                     + set_args(EXPORT_SETS), timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    return str(prefix), res


def test_onnx_round_trip_matches_mxnet(exported):
    prefix, res = exported
    print(res.stdout)
    line = re.search(r"max diff boxes (\S+) px \(relative (\S+)\), scores (\S+), unpaired rows (\d+)", res.stdout)
    assert line, res.stdout
    box, rel, score, unpaired = float(line.group(1)), float(line.group(2)), float(line.group(3)), int(line.group(4))
    assert box < 0.05 and rel < 1e-4 and score < 1e-4 and unpaired == 0
    assert re.search(r", (\d+) detections", res.stdout).group(1) == "100"
    # SAME padding went into the convolutions' and max-pools' own pads (utils/onnx_export.fold_pads).
    import onnx
    model = onnx.load(prefix + ".onnx")
    padded = {n.output[0] for n in model.graph.node if n.op_type == "Pad"}
    assert not [n for n in model.graph.node if n.op_type in ("Conv", "MaxPool") and n.input[0] in padded]
    assert any(len(set(a.ints)) > 1 for n in model.graph.node if n.op_type == "Conv"
               for a in n.attribute if a.name == "pads")          # asymmetric (0, 0, 1, 1) pads
    # Upsampling in onnxruntime's blocked layout; hard NMS as its NonMaxSuppression (utils/onnx_nms.py).
    resizes = [{a.name: a.s for a in n.attribute} for n in model.graph.node if n.op_type == "Resize"]
    assert resizes and all(r["coordinate_transformation_mode"] == b"asymmetric" for r in resizes)
    assert [n.op_type for n in model.graph.node].count("NonMaxSuppression") == 1


@pytest.mark.parametrize("scale", [2, 3])
def test_floor_nearest_resize_equals_half_pixel(tmp_path, scale):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper
    from utils.onnx_export import floor_nearest_resizes
    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                          coordinate_transformation_mode="half_pixel")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.random.RandomState(0).normal(size=(1, 2, 5, 7)).astype(np.float32)
    before, after = _run_before_and_after(model, floor_nearest_resizes, x, tmp_path)
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(after, x.repeat(scale, 2).repeat(scale, 3))


def _run_before_and_after(model, rewrite, x, tmp_path):
    """onnxruntime outputs of `model` on `x`, then again after `rewrite(model)` changed one node."""
    import onnx
    from utils.onnx_export import ort_session
    outs = []
    for step in range(2):
        if step:
            assert rewrite(model) == 1
        onnx.save(model, str(tmp_path / "m.onnx"))
        outs.append(ort_session(str(tmp_path / "m.onnx")).run(None, {"x": x})[0])
    return outs


def test_export_carries_the_class_names(exported):
    import onnx                                   # present wherever the fixture ran (it exports)
    prefix, _ = exported
    assert load_weights(prefix + "-0000.params")[2] == NAMES
    meta = {p.key: p.value for p in onnx.load(prefix + ".onnx").metadata_props}
    assert json.loads(meta["class_names"]) == NAMES


def test_deploy_checkpoint_equals_test_symbol_on_the_eval_transform(exported, tmp_path):
    """The saved deploy graph on prepare_image's raw pixels == the test symbol on the eval
    transform's normalised, 0-padded input (same weights)."""
    from core.pipeline import build_transform
    from core.transforms import prepare_image
    from models.efficientdet.builder import get_test_symbol
    from models.efficientdet.postprocess import match_detections
    from utils.config import load_config

    prefix, _ = exported
    sym, arg, aux = mx.model.load_checkpoint(prefix, 0)
    assert sym.list_inputs()[0] == "data" and "im_scale" in sym.list_inputs()
    assert sym.list_outputs() == ["detections_output"]
    cfg = load_config(CONFIG, EXPORT_SETS + ["General.batch_image=1"], is_train=False)
    image = np.random.RandomState(2).randint(0, 255, (60, 170, 3)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "x.png"), image[:, :, ::-1])
    sample = build_transform(cfg, False)({"image": str(tmp_path / "x.png"), "image_id": 0,
                                          "boxes": np.zeros((0, 4)), "classes": np.zeros(0)})
    raw, scale = prepare_image(image, cfg.DatasetParam.image_size, cfg.NormalizeParam.mean)
    outs = []
    for s, data in ((sym, raw), (get_test_symbol(cfg), sample["data"])):
        mod = mx.mod.Module(s, data_names=["data", "im_scale"], label_names=None)
        mod.bind([("data", (1,) + data.shape), ("im_scale", (1, 1))], for_training=False)
        mod.set_params(arg, aux)
        mod.forward(mx.io.DataBatch([mx.nd.array(data[None]), mx.nd.array([[scale]])]), is_train=False)
        outs.append(mod.get_outputs()[0].asnumpy()[0])
    assert (outs[1][:, 4] >= 0).sum() == 100
    assert match_detections(outs[0], outs[1], score_tol=1e-4) < 1e-2


def test_forced_opset_is_restored():
    onnx = pytest.importorskip("onnx")
    from utils.onnx_export import forced_opset
    before = onnx.defs.onnx_opset_version()
    with forced_opset():
        assert onnx.defs.onnx_opset_version() == 13
        assert onnx.checker.DEFAULT_CONTEXT.opset_imports == {"": 13}
    assert onnx.defs.onnx_opset_version() == before
    assert onnx.checker.DEFAULT_CONTEXT.opset_imports == {"": before}


def test_infer_speed_runs_both_backends(exported):
    prefix, _ = exported
    for backend in (["--backend", "mxnet"], ["--backend", "onnxruntime", "--onnx", prefix + ".onnx"]):
        res = run_script(["detection_infer_speed.py", "--config", CONFIG, "--iters", "2", "--warmup", "1"]
                         + backend + set_args())
        assert res.returncode == 0, res.stdout + res.stderr
        assert re.search(r"128x128 %s batch 1: median [\d.]+ ms/img" % backend[1], res.stdout), res.stdout
    from detection_infer_speed import onnx_runner
    from utils.errors import UserError
    with pytest.raises(UserError, match="export it with the same config and --batch"):
        onnx_runner(prefix + ".onnx", {"data": np.zeros((2, 3, 128, 128), np.float32),
                                       "im_scale": np.ones((2, 1), np.float32)})


def test_expand_channel_gates_keeps_values(tmp_path):
    """The SE product x * gate(x) gets an upsampled gate; a constant per-channel factor does not."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper
    from utils.onnx_export import expand_channel_gates
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["xs"]),
         helper.make_node("GlobalAveragePool", ["xs"], ["pooled"]),
         helper.make_node("Sigmoid", ["pooled"], ["gate"]),
         helper.make_node("Mul", ["xs", "gate"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5, 7])],
        [numpy_helper.from_array(np.array([1.0, 2.0, 3.0], np.float32).reshape(1, 3, 1, 1), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.random.RandomState(0).normal(size=(2, 3, 5, 7)).astype(np.float32)
    before, after = _run_before_and_after(model, expand_channel_gates, x, tmp_path)
    assert [n.op_type for n in model.graph.node].count("Resize") == 1
    np.testing.assert_array_equal(before, after)


def test_pad_gate_channels_keeps_values(tmp_path):
    """An SE bottleneck of 3 channels (reduce conv -> swish -> expand conv) is padded to 16 with
    zero weights, and the output stays the same; a bottleneck whose output leaves the channel-wise
    ops (here also a graph output) is left alone."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper
    from utils.onnx_export import pad_gate_channels
    rng = np.random.RandomState(0)

    def se(prefix, source):
        return [helper.make_node("GlobalAveragePool", [source], [prefix + "pooled"]),
                helper.make_node("Conv", [prefix + "pooled", prefix + "w1", prefix + "b1"], [prefix + "r"]),
                helper.make_node("Sigmoid", [prefix + "r"], [prefix + "s"]),
                helper.make_node("Mul", [prefix + "r", prefix + "s"], [prefix + "h"]),
                helper.make_node("Conv", [prefix + "h", prefix + "w2", prefix + "b2"], [prefix + "g"]),
                helper.make_node("Sigmoid", [prefix + "g"], [prefix + "gate"]),
                helper.make_node("Mul", [source, prefix + "gate"], [prefix + "y"])]

    weights = {"w1": (3, 8, 1, 1), "b1": (3,), "w2": (8, 3, 1, 1), "b2": (8,)}
    graph = helper.make_graph(
        se("a_", "x") + se("b_", "a_y"), "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 5, 7])],
        [helper.make_tensor_value_info("b_y", TensorProto.FLOAT, [2, 8, 5, 7]),
         helper.make_tensor_value_info("b_h", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), prefix + name)
         for prefix in ("a_", "b_") for name, shape in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.normal(size=(2, 8, 5, 7)).astype(np.float32)
    before, after = _run_before_and_after(model, pad_gate_channels, x, tmp_path)
    np.testing.assert_allclose(before, after, rtol=1e-6, atol=1e-6)
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    assert shapes["a_w1"] == (16, 8, 1, 1) and shapes["a_b1"] == (16,) and shapes["a_w2"] == (8, 16, 1, 1)
    assert shapes["b_w1"] == (3, 8, 1, 1)         # its swish output is also a graph output


def _se_model(rng, batch, channels, height, width):
    """conv -> SE (GlobalAveragePool, reduce conv, relu, expand conv, sigmoid) -> product -> conv,
    exported the way the export leaves it; weights scaled by 1/sqrt(fan-in), so the gates differ
    between channels."""
    from onnx import TensorProto, helper, numpy_helper
    from utils.onnx_export import expand_channel_gates, pad_gate_channels
    weights = {"w0": (channels, channels, 1, 1), "w1": (8, channels, 1, 1), "w2": (channels, 8, 1, 1),
               "w3": (16, channels, 1, 1)}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w0"], ["f"]),
         helper.make_node("GlobalAveragePool", ["f"], ["pooled"]),
         helper.make_node("Conv", ["pooled", "w1"], ["r"]),
         helper.make_node("Relu", ["r"], ["h"]),
         helper.make_node("Conv", ["h", "w2"], ["g"]),
         helper.make_node("Sigmoid", ["g"], ["gate"]),
         helper.make_node("Mul", ["f", "gate"], ["gated"]),
         helper.make_node("Conv", ["gated", "w3"], ["y"])], "se",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, height, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 16, height, width])],
        [numpy_helper.from_array((rng.normal(size=s) / np.sqrt(s[1])).astype(np.float32), n)
         for n, s in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert expand_channel_gates(model) == 1 and pad_gate_channels(model) == 1   # as the export does
    return model


@pytest.mark.parametrize("batch, height, width", [(1, 16, 16), (2, 6, 10), (1, 5, 5)])
def test_blocked_gate_products_keep_values(batch, height, width):
    """onnxruntime's optimised graph with the SE product rewritten for its blocked layout
    (utils/onnx_blocked.py) gives the same numbers as without; runs of 64, 4 and 1 pixels. With a
    wrong block size the gates land on the wrong channels and the test sees it."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from utils.onnx_blocked import PROVIDERS, gate_products_in_blocks, nchwc_block, optimized_model
    from utils.onnx_export import ort_session
    block = nchwc_block()
    if block is None:
        pytest.skip("onnxruntime runs no blocked layout on this CPU")
    rng = np.random.RandomState(batch * 100 + height)
    model = _se_model(rng, batch, 32, height, width)
    x = rng.normal(size=(batch, 32, height, width)).astype(np.float32)

    options = ort.SessionOptions()
    plain, optimised = optimized_model(model.SerializeToString(), options)
    expected = plain.run(None, {"x": x})[0]
    results = {}
    for size in (block, 24 - block):              # the right block, and the other one of 8 / 16
        rewritten = type(optimised)()
        rewritten.CopyFrom(optimised)
        assert gate_products_in_blocks(rewritten, size) == 1
        assert "Upsample" not in [n.op_type for n in rewritten.graph.node]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(rewritten.SerializeToString(), options, providers=PROVIDERS)
        results[size] = session.run(None, {"x": x})[0]
    np.testing.assert_array_equal(results[block], expected)
    assert np.abs(results[24 - block] - expected).max() > 1e-3
    # ort_session takes this path by itself.
    np.testing.assert_array_equal(ort_session(model.SerializeToString()).run(None, {"x": x})[0], expected)


def test_nchwc_block_matches_the_cpu():
    """The probed block is 16 channels where the CPU has AVX-512 and 8 with AVX2 (x86 only)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import platform
    from utils.onnx_blocked import nchwc_block
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("onnxruntime's blocked layout is x86 only")
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    assert nchwc_block() == (16 if " avx512f" in flags else 8)
