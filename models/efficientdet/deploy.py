"""The deployable graph: normalisation + network + post-processing in one symbol. The caller-side
resize that goes with it is core.transforms.prepare_image.

Contract of the deploy graph (scripts/export.py writes it, detection_infer.py runs it):
  inputs  `data` (N, 3, H, W) float32 RGB 0-255, (H, W) = DatasetParam.image_size: the image
          resized to fit keeping its aspect, placed top-left, the rest filled with the mean colour
          NormalizeParam.mean (core.transforms.prepare_image does exactly this);
          `im_scale` (N, 1): network input = original image * im_scale.
  output  `detections_output` (N, TestParam.max_det, 6): x1, y1, x2, y2 in original pixels,
          score, class (0-based); padding rows are all -1.
The eval transform pads with 0 after normalisation; the mean colour normalises to exactly 0, so
mean padding gives the same network input without a mask input. Padding with the uint8-rounded
mean instead is off by under 0.5/std (~0.01) in the padded area only.
"""
import mxnet as mx

from models.efficientdet.builder import get_test_symbol
from models.efficientdet.layers import graph_target


def _channel_const(values):
    """(1, 3, 1, 1) float32 symbol from 3 numbers (`ones` scaled: no parameter, exports to ONNX)."""
    parts = [mx.sym.ones(shape=(1, 1, 1, 1)) * float(v) for v in values]
    return mx.sym.concat(*parts, dim=1)


def get_deploy_symbol(cfg, portable=False):
    """get_test_symbol with the normalisation ((x - mean) / std, NormalizeParam) in front.

    portable: build with plain ops only (layers.FORMS), the form ONNX export needs; the
    default is the form that runs fastest in MXNet. Both take the same parameters and give the
    same outputs; the default is built for General.batch_image images per call.
    """
    if portable:
        with graph_target("portable"):
            return get_deploy_symbol(cfg)
    raw = mx.sym.Variable("data")
    mean = _channel_const(cfg.NormalizeParam.mean)
    inv_std = _channel_const([1.0 / s for s in cfg.NormalizeParam.std])
    normalised = mx.sym.broadcast_mul(mx.sym.broadcast_sub(raw, mean), inv_std)
    # Composition replaces the test symbol's `data` variable by the normalised input.
    return get_test_symbol(cfg)(data=normalised)
