"""Rewrites of onnxruntime's own optimised graph, in its blocked layout (NCHWc).

On x86 onnxruntime runs convolutions in a blocked layout: (N, C, H, W) stored as
(N, C / B, H, W, B), B = 8 channels with AVX2 and 16 with AVX-512. Its graph optimiser turns the
model's nodes into blocked ones (`com.microsoft.nchwc`) when the session is created, for the
CPU it runs on. A rewrite that depends on B can therefore only be made after that step: the
session is created once with `optimized_model_filepath`, the optimised graph is rewritten, and
the session that runs is created from it with no further optimisation.

The rewrite (`gate_products_in_blocks`): the SE product x * gate is exported as a same-shape
`Mul` by a gate upsampled from 1x1 to the map's size (utils/onnx_export.expand_channel_gates),
because onnxruntime's blocked `Mul` does not broadcast. In the blocked layout each run of k pixels
of a block is k*B numbers whose gates repeat with period B, so the product is also a broadcasting
`Mul` of the map viewed as (N, C/B, H*W/k, k*B) by the gate tiled k times, (N, C/B, 1, k*B). That
writes no full-size gate and reads the map once; the products are the same numbers. k =
gcd(H*W, 64): onnxruntime broadcasts one run of k*B numbers per inner call, and runs of 8 cost
more than the upsampled gate did, runs of 512 about half.
"""
import functools
import os
import tempfile

import numpy as np

NCHWC = "com.microsoft.nchwc"
PROVIDERS = ["CPUExecutionProvider"]


def _attr(node, name):
    from onnx import helper
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def consumers(model):
    """{tensor name: [nodes that take it as an input]} of an ONNX model."""
    users = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def optimized_model(source, options, disabled_optimizers=()):
    """(session, optimised ModelProto) of `source` (path or bytes) with `options`: the session
    onnxruntime builds, and the graph it runs, saved through `optimized_model_filepath`."""
    import onnx
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        session = ort.InferenceSession(source, options, providers=PROVIDERS,
                                       disabled_optimizers=list(disabled_optimizers))
        model = onnx.load(options.optimized_model_filepath)
    options.optimized_model_filepath = ""
    return session, model


@functools.lru_cache(maxsize=None)
def nchwc_block():
    """Channels per block of onnxruntime's blocked layout on this CPU, or None where it runs
    convolutions in plain layout (no NCHWc support, e.g. on ARM).

    Found by looking at memory, not by guessing from CPU flags: a 1x1 identity convolution of
    16 channels over 2 pixels is optimised, its blocked output read without the reorder back to
    plain layout, and the order of its numbers shows how many channels a block holds.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 1, 2])],
        [numpy_helper.from_array(np.eye(16, dtype=np.float32).reshape(16, 16, 1, 1), "w")])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    _, model = optimized_model(probe.SerializeToString(), options)
    reorder = [n for n in model.graph.node if n.op_type == "ReorderOutput" and n.output[0] == "y"]
    if not any(n.domain == NCHWC and n.op_type == "Conv" for n in model.graph.node) or len(reorder) != 1:
        return None
    # y := the blocked buffer itself, flattened.
    model.graph.initializer.append(numpy_helper.from_array(np.array([32], np.int64), "flat"))
    reorder[0].CopyFrom(helper.make_node("Reshape", [reorder[0].input[0], "flat"], ["y"]))
    del model.graph.output[0].type.tensor_type.shape.dim[:]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = np.arange(32, dtype=np.float32).reshape(1, 16, 1, 2)          # x[c, p] = 2c + p
    flat = ort.InferenceSession(model.SerializeToString(), options, providers=PROVIDERS).run(None, {"x": x})[0]
    for block in (8, 16):
        if np.array_equal(flat, x.reshape(16 // block, block, 2).transpose(0, 2, 1).ravel()):
            return block
    return None


def _from_pooled(name, producer, weights, steps=8):
    """Whether tensor `name` is computed from a GlobalAveragePool through at most `steps` nodes
    that keep its 1x1 spatial size (unpadded 1x1 convolutions, Sigmoid, Mul, Relu)."""
    for _ in range(steps):
        node = producer.get(name)
        if node is None:
            return False
        if node.op_type == "GlobalAveragePool":
            return True
        if node.op_type == "Conv":
            weight = weights.get(node.input[1])
            kernel = _attr(node, "kernel_shape") or (weight.dims[2:] if weight is not None else None)
            if kernel is None or list(kernel) != [1, 1] or any(_attr(node, "pads") or []):
                return False
        elif node.op_type not in ("Sigmoid", "Mul", "Relu"):
            return False
        name = node.input[0]
    return False


def gate_products_in_blocks(model, block, run=64):
    """Rewrite each blocked SE product (module docstring) of onnxruntime's optimised `model` in
    place, for blocks of `block` channels and runs of up to `run` pixels; returns how many.

    The pattern, as onnxruntime's optimiser leaves it: a blocked `Upsample` of a 1x1 gate (traced
    back to a GlobalAveragePool, its channel count that of the blocked conv that makes it) whose
    only consumer is `Mul(x, full_gate)`. Shapes use Reshape's 0 (copy the batch dimension).
    """
    from onnx import helper, numpy_helper
    producer = {out: node for node in model.graph.node for out in node.output}
    users_of = consumers(model)
    weights = {t.name: t for t in model.graph.initializer}
    replaced, constants = {}, []
    for up in model.graph.node:
        scales = _attr(up, "scales")
        users = users_of.get(up.output[0], [])
        gate = producer.get(up.input[0]) if up.input else None
        if up.op_type != "Upsample" or up.domain != NCHWC or scales is None or len(scales) != 4 \
                or list(scales[:2]) != [1, 1] or len(users) != 1 or users[0].op_type != "Mul" \
                or gate is None or gate.op_type != "Conv" or gate.domain != NCHWC \
                or gate.input[1] not in weights or not _from_pooled(up.input[0], producer, weights):
            continue
        mul = users[0]
        x = [name for name in mul.input if name != up.output[0]]
        channels = weights[gate.input[1]].dims[0]
        if len(x) != 1 or len(mul.input) != 2 or channels % block:
            continue
        h, w = int(scales[2]), int(scales[3])
        k = int(np.gcd(h * w, run))
        name = up.output[0]
        for suffix, values in (("_map_shape", [0, channels // block, h * w // k, k * block]),
                               ("_gate_shape", [0, channels // block, 1, block]),
                               ("_repeats", [1, 1, 1, k]),
                               ("_out_shape", [0, channels, h, w])):
            constants.append(numpy_helper.from_array(np.array(values, np.int64), name + suffix))
        replaced[id(up)] = []
        replaced[id(mul)] = [
            helper.make_node("Reshape", [x[0], name + "_map_shape"], [name + "_map"]),
            helper.make_node("Reshape", [up.input[0], name + "_gate_shape"], [name + "_gate"]),
            helper.make_node("Tile", [name + "_gate", name + "_repeats"], [name + "_run"]),
            helper.make_node("Mul", [name + "_map", name + "_run"], [name + "_prod"]),
            helper.make_node("Reshape", [name + "_prod", name + "_out_shape"], list(mul.output))]
    if replaced:
        nodes = [new for node in model.graph.node for new in replaced.get(id(node), [node])]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(constants)
    return len(replaced) // 2
