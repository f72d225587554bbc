"""Parameter and multiply-add counts of a symbol, read off its graph with inferred shapes."""
import json

import numpy as np


def param_shapes(sym, data_shape, **input_shapes):
    """({arg name: shape}, {aux name: shape}) for input 'data' of `data_shape` and any other inputs
    (labels) given by name; the inputs themselves are excluded."""
    args, _, aux = sym.infer_shape(data=data_shape, **input_shapes)
    inputs = set(input_shapes) | {"data"}
    arg_shapes = {n: tuple(s) for n, s in zip(sym.list_arguments(), args) if n not in inputs}
    return arg_shapes, {n: tuple(s) for n, s in zip(sym.list_auxiliary_states(), aux)}


def count_params(sym, data_shape):
    """Learnable parameters (BN moving statistics excluded, as PyTorch's `parameters()` counts)."""
    return int(sum(np.prod(s) for s in param_shapes(sym, data_shape)[0].values()))


def count_macs(sym, data_shape):
    """Multiply-adds of every Convolution and FullyConnected (what the papers call FLOPs).

    Each output element of a conv with weight (O, I/g, kh, kw) costs I/g*kh*kw; of an FC with
    weight (O, I) costs I. A weight padded in the graph (layers.conv's stride-2 form) counts at its
    parameter's size; convs and FCs whose weight is computed (SE gate, fusion weights, spatial
    mean) are elementwise products or means, not learned filters, and are not counted.
    """
    arg_shapes, _ = param_shapes(sym, data_shape)
    internals = sym.get_internals()
    _, outs, _ = internals.infer_shape(data=data_shape)
    out_shapes = dict(zip(internals.list_outputs(), outs))
    nodes = json.loads(sym.tojson())["nodes"]
    total = 0
    for node in nodes:
        if node["op"] not in ("Convolution", "FullyConnected"):
            continue
        weight = nodes[node["inputs"][1][0]]
        while weight["op"] == "Concat":  # zero rows/columns concatenated around the parameter
            weight = next(nodes[i] for i, _, _ in weight["inputs"] if nodes[i]["op"] != "zeros_like")
        if weight["name"] in arg_shapes:
            total += int(np.prod(out_shapes[node["name"] + "_output"])) * int(np.prod(arg_shapes[weight["name"]][1:]))
    return total
