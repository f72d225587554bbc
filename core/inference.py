"""Binding an inference graph (the test or the deploy symbol, models/efficientdet/) with given
weights: shared by detection_test.py, detection_infer.py and scripts/export.py.

Both graphs take `data` (N, 3, H, W) and `im_scale` (N, 1) and end in post-processing; the
weights are (arg, aux) dicts of NDArrays as utils.checkpoint.load_weights returns them.
"""
import mxnet as mx

from utils.errors import UserError

INPUTS = ("data", "im_scale")


def check_params(sym, arg, aux, input_shapes, path):
    """UserError naming what is missing or mis-shaped, before Module fails less clearly."""
    arg_shapes, _, aux_shapes = sym.infer_shape(**input_shapes)
    want = dict(zip(sym.list_arguments(), arg_shapes))
    want.update(zip(sym.list_auxiliary_states(), aux_shapes))
    have = dict(arg, **aux)
    missing = sorted(n for n in want if n not in have and n not in INPUTS)
    if missing:
        raise UserError("%s lacks %d parameters of this model, e.g. %s; does the config match the weights?"
                        % (path, len(missing), ", ".join(missing[:3])))
    wrong = ["%s %s in the file vs %s in the model" % (n, tuple(have[n].shape), tuple(want[n]))
             for n in sorted(want) if n not in INPUTS and tuple(have[n].shape) != tuple(want[n])]
    if wrong:
        raise UserError("%s does not fit this model (%d shape mismatches), e.g. %s; check "
                        "DatasetParam.num_classes and the variant" % (path, len(wrong), wrong[0]))


def device_shapes(input_shapes, num_devices):
    """`input_shapes` with the batch split over `num_devices`: what each device's graph takes (the
    SE gates fold the batch into channels, so a graph is built for one device's share)."""
    return {k: (v[0] // num_devices,) + tuple(v[1:]) for k, v in input_shapes.items()}


def bind_inference(sym, arg, aux, input_shapes, ctx, path):
    """Module of `sym` bound for inference at `input_shapes` ({"data": (N, 3, H, W), "im_scale":
    (N, 1)}) on the contexts `ctx`, each taking N / len(ctx) images (the batch `sym` was built
    for), holding the weights (arg, aux) after check_params; entries the graph does not use (a
    training checkpoint carries more) are ignored."""
    check_params(sym, arg, aux, device_shapes(input_shapes, len(ctx)), path)
    mod = mx.mod.Module(sym, data_names=list(input_shapes), label_names=None, context=ctx)
    mod.bind(list(input_shapes.items()), for_training=False)
    mod.set_params(arg, aux, allow_extra=True)
    return mod
