"""ONNX export of MXNet symbols (`mx.onnx.export_model`) and onnxruntime sessions.

docs/design.md §2: mxnet 1.9.1's exporter needs onnx < 1.19 and writes opset-13 nodes, but it stamps
the model with onnx's newest opset and checks the graph against it, so ops whose signature
changed later (Split and ReduceMean take inputs instead of attributes from opset 18) make
onnxruntime refuse the file. Both the stamped opset (`onnx.defs.onnx_opset_version`) and the
checker's opset are forced to 13 while exporting.
"""
import contextlib
import io
import os

import numpy as np

from utils.errors import UserError
from utils.fileio import atomic_write
from utils.onnx_blocked import PROVIDERS, consumers, gate_products_in_blocks, nchwc_block, optimized_model

OPSET = 13


@contextlib.contextmanager
def forced_opset(version=OPSET):
    """Make the onnx package report opset `version` (exporter and checker) inside the block."""
    try:
        import onnx
        import onnx.checker
    except ImportError:
        raise UserError("ONNX export needs the onnx package (pip install -c constraints.txt 'onnx<1.19')")
    saved_version = onnx.defs.onnx_opset_version
    saved_imports = onnx.checker.DEFAULT_CONTEXT.opset_imports
    onnx.defs.onnx_opset_version = lambda: version
    onnx.checker.DEFAULT_CONTEXT.opset_imports = {"": version}
    try:
        yield
    finally:
        onnx.defs.onnx_opset_version = saved_version
        onnx.checker.DEFAULT_CONTEXT.opset_imports = saved_imports


def export_onnx(sym, params, input_shapes, path, metadata=None, edit=None):
    """Write `sym` with `params` ({name: NDArray}) to `path` atomically; float32 inputs of
    `input_shapes` (one static shape per input, in sym.list_inputs() order); `metadata` {key: str}
    goes into the model's metadata_props; `edit(model)` may change the onnx ModelProto before it is
    written. Returns `path`.

    The exporter lists every weight as a graph input too, which makes onnxruntime treat them as
    overridable (no constant folding, one warning per weight); they are removed from the inputs.
    """
    import mxnet as mx

    def write(tmp):
        # redirect_stdout: the exporter prints the name of every reversed scalar op (1 - x).
        with forced_opset(), contextlib.redirect_stdout(io.StringIO()):
            mx.onnx.export_model(sym, params, [tuple(s) for s in input_shapes],
                                 [np.float32] * len(input_shapes), tmp)
        import onnx      # present: forced_opset checked
        model = onnx.load(tmp)
        weights = {t.name for t in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in weights]
        del model.graph.input[:]
        model.graph.input.extend(inputs)
        fold_pads(model)
        floor_nearest_resizes(model)
        expand_channel_gates(model)
        pad_gate_channels(model)
        if edit is not None:
            edit(model)
        for key, value in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, tmp)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, write)
    return path


def fold_pads(model):
    """Merge each spatial Pad that feeds only Conv (pad value 0) or MaxPool (-inf) nodes into their
    `pads` attribute, in place. ONNX takes asymmetric pads on the op itself, which MXNet cannot
    express (TF SAME pads one more after than before), and a separate Pad breaks onnxruntime's
    blocked-layout chain with two reorders. Returns the number of Pads removed."""
    from onnx import helper, numpy_helper
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    users_of = consumers(model)
    removed = []
    for pad in [n for n in model.graph.node if n.op_type == "Pad"]:
        users = users_of.get(pad.output[0], [])
        mode = [a.s for a in pad.attribute if a.name == "mode"]
        if not users or mode not in ([], [b"constant"]) or pad.input[1] not in init:
            continue
        widths = init[pad.input[1]].astype(int).tolist()
        value = float(init[pad.input[2]]) if len(pad.input) > 2 and pad.input[2] in init else 0.0
        wanted = {"Conv": 0.0, "MaxPool": float("-inf")}
        if len(widths) != 8 or any(widths[i] for i in (0, 1, 4, 5)) or \
                any(u.op_type not in wanted or wanted[u.op_type] != value for u in users):
            continue
        extra = [widths[2], widths[3], widths[6], widths[7]]          # top, left, bottom, right
        for user in users:
            attrs = {a.name: a for a in user.attribute}
            if "auto_pad" in attrs and attrs["auto_pad"].s not in (b"", b"NOTSET"):
                break
        else:
            for user in users:
                old = [a for a in user.attribute if a.name == "pads"]
                pads = list(old[0].ints) if old else [0, 0, 0, 0]
                if old:
                    user.attribute.remove(old[0])
                user.attribute.append(helper.make_attribute("pads", [a + b for a, b in zip(pads, extra)]))
                user.input[0] = pad.input[0]
            removed.append(pad)
    for pad in removed:
        model.graph.node.remove(pad)
    return len(removed)


def floor_nearest_resizes(model):
    """Give each nearest-neighbour Resize with integer scales coordinate_transformation_mode
    "asymmetric" and nearest_mode "floor", in place; returns how many changed.

    The exporter writes "half_pixel" (round_prefer_floor). For an integer scale s, output pixel
    i = q*s + r maps to q + (r + 0.5)/s - 0.5, which lies strictly within 0.5 of q: the same source
    pixel q = floor(i / s) as "asymmetric" + "floor". onnxruntime runs only the latter in its
    blocked layout (NCHWc); the former costs two layout reorders around every upsampling."""
    from onnx import helper, numpy_helper
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type != "Resize" or attrs.get("mode") is None or attrs["mode"].s != b"nearest":
            continue
        mode = attrs.get("coordinate_transformation_mode")
        scales = init.get(node.input[2]) if len(node.input) > 2 else None
        if (mode is not None and mode.s != b"half_pixel") or scales is None or scales.size == 0 \
                or (scales < 1).any() or (scales != scales.round()).any() or "nearest_mode" in attrs:
            continue
        if mode is not None:
            node.attribute.remove(mode)
        node.attribute.extend([helper.make_attribute("coordinate_transformation_mode", "asymmetric"),
                               helper.make_attribute("nearest_mode", "floor")])
        changed += 1
    return changed


def expand_channel_gates(model):
    """Give each Mul of a feature map (N, C, H, W) by per-channel gates (N, C, 1, 1) (the SE
    product) gates upsampled to (N, C, H, W) by a nearest Resize, in place; returns the count.

    The values are the same (nearest upsampling from 1x1 repeats the gate). onnxruntime runs a
    same-shape Mul and the Resize in its blocked layout, while the broadcasting Mul needs the
    feature map reordered to plain and back. Constant gates (the input normalisation) are left
    alone: onnxruntime would fold their upsampled copy into a full-size constant."""
    from onnx import helper, numpy_helper, shape_inference
    inferred = shape_inference.infer_shapes(model).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.value_info) + list(inferred.input) + list(inferred.output)}
    constant = {t.name for t in model.graph.initializer} | {""}
    nodes, count = [], 0
    for node in model.graph.node:          # topological order, as ONNX requires
        if all(i in constant for i in node.input):
            constant.update(node.output)
        x, g = (shapes.get(i) for i in node.input) if len(node.input) == 2 else (None, None)
        if node.op_type == "Mul" and node.input[1] not in constant and x and g and len(x) == len(g) == 4 and 0 not in x + g \
                and g[:2] == x[:2] and g[2:] == [1, 1] and x[2:] != [1, 1]:
            count += 1
            scales, full = "gate_scales_%d" % count, "gate_full_%d" % count
            model.graph.initializer.append(numpy_helper.from_array(np.array([1, 1] + x[2:], np.float32), scales))
            nodes.append(helper.make_node("Resize", [node.input[1], "", scales], [full], name=full, mode="nearest",
                                          coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
            node.input[1] = full
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def ort_session(path, threads=None):
    """onnxruntime InferenceSession of `path` (or a model's bytes) on CPU with `threads` intra-op
    threads (None = one per core this process may use) and warnings silenced (errors still raise).
    Where onnxruntime runs its blocked layout, the graph it optimised gets the SE products
    rewritten for it first (utils/onnx_blocked.py): the same outputs, a few percent faster."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("this needs the onnxruntime package (pip install -c constraints.txt onnxruntime)")

    def options():
        o = ort.SessionOptions()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        o.intra_op_num_threads = threads or cores
        o.log_severity_level = 3
        return o
    # onnxruntime fuses x * sigmoid(x) into QuickGelu, which its blocked-layout (NCHWc) convolutions
    # cannot chain with: two reorders around each. Sigmoid and Mul unfused measured ~6% faster on D0.
    unfused = ["QuickGeluFusion"]
    block = nchwc_block()
    if block is None:
        return ort.InferenceSession(path, options(), providers=PROVIDERS, disabled_optimizers=unfused)
    session, model = optimized_model(path, options(), unfused)
    if not gate_products_in_blocks(model, block):
        return session
    final = options()
    final.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL    # done above
    return ort.InferenceSession(model.SerializeToString(), final, providers=PROVIDERS)


# onnxruntime's blocked layout (NCHWc) groups 8 channels on AVX2 CPUs and 16 on AVX-512 ones.
NCHWC_BLOCK = 16


def pad_gate_channels(model, multiple=NCHWC_BLOCK):
    """Give each squeeze-excitation bottleneck a channel count that is a multiple of `multiple`,
    in place; returns how many changed.

    The bottleneck is a Conv on a GlobalAveragePool (the reduce conv, D0 has 4 to 28 channels)
    whose output reaches only channel-wise ops (Sigmoid, Mul: swish) and then Convs (the expand
    conv). The reduce conv gets zero filters and biases, the expand convs zero input weights, so
    the output is unchanged whatever the extra channels hold. onnxruntime runs the expand conv
    in its blocked layout only when its input channels fill whole blocks; otherwise the gate,
    its Resize and the SE product run in plain layout between two reorders of the feature map.
    """
    from onnx import numpy_helper
    init = {t.name: t for t in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    users_of = consumers(model)
    outputs = {o.name for o in model.graph.output}

    def weight(name):
        return numpy_helper.to_array(init[name]) if name in init else None

    def grouped(node):
        return any(a.name == "group" and a.i != 1 for a in node.attribute)

    changed = 0
    for reduce in [n for n in model.graph.node if n.op_type == "Conv"]:
        source = producer.get(reduce.input[0])
        w = weight(reduce.input[1])
        if source is None or source.op_type != "GlobalAveragePool" or w is None or grouped(reduce) \
                or w.shape[0] % multiple == 0 or (len(reduce.input) > 2 and weight(reduce.input[2]) is None):
            continue
        # Everything between the reduce conv and the next convs must keep channels apart.
        inside, expands, frontier, ok = set(reduce.output), [], [reduce.output[0]], True
        while frontier and ok:
            for node in users_of.get(frontier.pop(), []):
                if node.op_type == "Conv":
                    expand = weight(node.input[1])
                    ok = ok and expand is not None and expand.shape[1] == w.shape[0] and not grouped(node) \
                        and node.input[0] in inside and node.input[1] not in inside
                    expands.append(node)
                elif node.op_type in ("Sigmoid", "Mul", "Relu") and all(i in inside for i in node.input):
                    if node.output[0] not in inside:
                        inside.add(node.output[0])
                        frontier.append(node.output[0])
                else:
                    ok = False
        # ... and no padded weight may serve another node.
        if not ok or not expands or inside & outputs or \
                any(len(users_of[n]) != 1 for n in [reduce.input[1]] + [e.input[1] for e in expands]):
            continue
        extra = -w.shape[0] % multiple
        pads = [(reduce.input[1], w, 0)] + [(e.input[1], weight(e.input[1]), 1) for e in expands]
        if len(reduce.input) > 2:
            pads.append((reduce.input[2], weight(reduce.input[2]), 0))
        for name, array, axis in pads:
            shape = list(array.shape)
            shape[axis] = extra
            init[name].CopyFrom(numpy_helper.from_array(
                np.concatenate([array, np.zeros(shape, array.dtype)], axis=axis), name))
        changed += 1
    return changed
