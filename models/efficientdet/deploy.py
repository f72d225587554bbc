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
from utils.onnx_export import export_onnx
from utils.onnx_nms import append_class_nms


def _channel_const(values):
    """(1, 3, 1, 1) float32 symbol from 3 numbers (`ones` scaled: no parameter, exports to ONNX)."""
    parts = [mx.sym.ones(shape=(1, 1, 1, 1)) * float(v) for v in values]
    return mx.sym.concat(*parts, dim=1)


def get_deploy_symbol(cfg, portable=False, nms=True):
    """get_test_symbol with the normalisation ((x - mean) / std, NormalizeParam) in front.

    portable: build with plain ops only (layers.FORMS), the form ONNX export needs; the
    default is the form that runs fastest in MXNet. Both take the same parameters and give the
    same outputs; the default is built for General.batch_image images per call.
    nms=False: the candidates before NMS instead of the detections (get_test_symbol).
    """
    if portable:
        with graph_target("portable"):
            return get_deploy_symbol(cfg, nms=nms)
    raw = mx.sym.Variable("data")
    mean = _channel_const(cfg.NormalizeParam.mean)
    inv_std = _channel_const([1.0 / s for s in cfg.NormalizeParam.std])
    normalised = mx.sym.broadcast_mul(mx.sym.broadcast_sub(raw, mean), inv_std)
    # Composition replaces the test symbol's `data` variable by the normalised input.
    return get_test_symbol(cfg, nms)(data=normalised)


def export_deploy_onnx(cfg, params, batch, path, metadata=None):
    """Write the deploy graph for `batch` images (static) as ONNX to `path`, with `params`
    ({name: NDArray}); inputs `data` and `im_scale`, output `detections_output`, as the MXNet
    deploy graph. Hard NMS runs as onnxruntime's NonMaxSuppression (utils/onnx_nms.py); soft-NMS
    keeps the graph's own unrolled selection. Returns `path`."""
    H, W = cfg.DatasetParam.image_size
    t = cfg.TestParam
    if t.nms_type != "hard":
        return export_onnx(get_deploy_symbol(cfg, portable=True), params, [(batch, 3, H, W), (batch, 1)],
                           path, metadata)
    return export_onnx(get_deploy_symbol(cfg, portable=True, nms=False), params, [(batch, 3, H, W)], path,
                       metadata, edit=lambda model: append_class_nms(
                           model, cfg.DatasetParam.num_classes, t.max_det, t.nms_thresh, t.score_thresh))
