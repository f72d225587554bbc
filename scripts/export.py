#!/usr/bin/env python
"""Export a trained detector as a deployable graph, with pre- and post-processing inside.

  python scripts/export.py --config config/efficientdet_b0.py --params model/d0-0000.params \\
      --out deploy/d0 [--onnx] [--batch 1] [--set Class.field=value ...]

Writes PREFIX-symbol.json and PREFIX-0000.params (mx.model.load_checkpoint(PREFIX, 0) reads them)
and, with --onnx, PREFIX.onnx (opset 13, static batch --batch). The class names the weights record
go along: `meta:class_names` in the .params (utils/checkpoint.py), metadata "class_names" (a json
list) in the ONNX file. No output may be one of the input files. The graph contract is in
models/efficientdet/deploy.py: `data` (N, 3, H, W) float32 RGB 0-255 resized to fit and placed
top-left, padded with the mean colour (prepare_image), and `im_scale` (N, 1), in; detections
(N, max_det, 6) in original pixels out. With --onnx the file is run in onnxruntime on a
synthetic image beside MXNet and the largest differences of the matched detections are printed.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.cpu import configure_cpu  # noqa: E402

configure_cpu(inference=True)  # before mxnet is imported

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

from core.inference import check_params  # noqa: E402
from core.synthetic import render_image  # noqa: E402
from core.transforms import prepare_image  # noqa: E402
from models.efficientdet.deploy import export_deploy_onnx, get_deploy_symbol  # noqa: E402
from utils.checkpoint import load_weights, save_epoch_params  # noqa: E402
from utils.config import add_config_args, load_config  # noqa: E402
from utils.errors import UserError, refuse_overwrite, run_cli  # noqa: E402
from utils.fileio import atomic_write  # noqa: E402
from utils.onnx_export import ort_session  # noqa: E402


def sample_batch(cfg, batch):
    """Deploy-graph inputs from seeded synthetic images, cropped to a 5:3 aspect so that the
    resize leaves padding: data (B, 3, H, W) float32, im_scale (B, 1) float32."""
    rng = np.random.RandomState(0)
    data, scales = [], []
    for _ in range(batch):
        image, _, _ = render_image(rng, size=320)
        d, s = prepare_image(image[:192], cfg.DatasetParam.image_size, cfg.NormalizeParam.mean)
        data.append(d)
        scales.append([s])
    return np.stack(data), np.array(scales, np.float32)


def matched_differences(ours, reference, score_tol=1e-3):
    """Pair the valid rows of two (D, 6) detection lists (same class, score within score_tol,
    closest box) -> (max box diff in pixels, max box diff relative to the coordinate's size,
    max score diff, rows left unpaired)."""
    ours, reference = ours[ours[:, 4] >= 0], reference[reference[:, 4] >= 0]
    free = np.ones(len(ours), bool)
    box = rel = score = 0.0

    def box_diff(a, b):
        # Untrained weights can overflow exp() in the box decoder: equal infinities differ by 0.
        with np.errstate(invalid="ignore"):
            return np.where(a == b, 0.0, np.abs(a - b))
    for row in reference:
        cand = np.nonzero(free & (ours[:, 5] == row[5]) & (np.abs(ours[:, 4] - row[4]) <= score_tol))[0]
        if not len(cand):
            continue
        best = cand[np.argmin(box_diff(ours[cand, :4], row[:4]).max(1))]
        free[best] = False
        d = box_diff(ours[best, :4], row[:4])
        box, score = max(box, float(d.max())), max(score, float(abs(ours[best, 4] - row[4])))
        rel = max(rel, float((d / np.maximum(np.abs(row[:4]), 1.0)).max()))
    unpaired = int(free.sum()) + len(reference) - int((~free).sum())
    return box, rel, score, unpaired


def check_onnx(sym, arg, aux, cfg, path, batch):
    """Run the ONNX file and MXNet on sample_batch; print and return the largest differences."""
    data, scale = sample_batch(cfg, batch)
    mod = mx.mod.Module(sym, data_names=["data", "im_scale"], label_names=None)
    mod.bind([("data", data.shape), ("im_scale", scale.shape)], for_training=False)
    mod.set_params(arg, aux)
    mod.forward(mx.io.DataBatch([mx.nd.array(data), mx.nd.array(scale)]), is_train=False)
    want = mod.get_outputs()[0].asnumpy()
    got = ort_session(path).run(None, {"data": data, "im_scale": scale})[0]
    diffs = np.array([matched_differences(g, w) for g, w in zip(got, want)])
    box, rel, score, unpaired = diffs.max(0)
    valid = int((want[..., 4] >= 0).sum())
    # A row pairs only with a row of the same class, so unpaired 0 also means equal classes.
    print("onnxruntime vs mxnet on %d sample image(s), %d detections: max diff boxes %.3g px "
          "(relative %.3g), scores %.3g, unpaired rows %d" % (batch, valid, box, rel, score, unpaired))
    return box, rel, score, int(unpaired)


def main():
    parser = add_config_args(argparse.ArgumentParser(description=__doc__,
                                                     formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--params", required=True, help="trained .params file (arg:/aux: keys)")
    parser.add_argument("--out", required=True, help="output prefix, e.g. deploy/d0")
    parser.add_argument("--onnx", action="store_true", help="also write PREFIX.onnx and check it")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the ONNX graph (static)")
    args = parser.parse_args()
    if args.batch < 1:
        raise UserError("--batch must be at least 1, got %d" % args.batch)
    outputs = [("--out", args.out + suffix) for suffix in ("-symbol.json", "-0000.params", ".onnx")]
    refuse_overwrite(outputs[:2 + args.onnx], [("--params", args.params), ("--config", args.config)])
    cfg = load_config(args.config, args.sets, is_train=False)
    cfg.General.batch_image = args.batch      # the MXNet graph is built for its batch size
    H, W = cfg.DatasetParam.image_size
    shapes = {"data": (args.batch, 3, H, W), "im_scale": (args.batch, 1)}

    sym = get_deploy_symbol(cfg)
    arg, aux, class_names = load_weights(args.params)
    check_params(sym, arg, aux, shapes, args.params)
    # Only what the graph uses: a training checkpoint may carry more.
    arg = {k: arg[k] for k in sym.list_arguments() if k not in shapes}
    aux = {k: aux[k] for k in sym.list_auxiliary_states()}

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write(args.out + "-symbol.json", sym.save)
    save_epoch_params(args.out + "-0000.params", arg, aux, class_names)
    print("wrote %s-symbol.json and %s-0000.params (inputs data (N, 3, %d, %d) RGB 0-255 padded with "
          "the mean colour, im_scale (N, 1))" % (args.out, args.out, H, W))
    if args.onnx:
        path = export_deploy_onnx(cfg, dict(arg, **aux), args.batch, args.out + ".onnx",
                                  {"class_names": json.dumps(class_names)} if class_names else None)
        print("wrote %s (opset 13, batch %d)" % (path, args.batch))
        check_onnx(sym, arg, aux, cfg, path, args.batch)
    return 0


if __name__ == "__main__":
    run_cli(main)
