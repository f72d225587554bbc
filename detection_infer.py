#!/usr/bin/env python
"""Detect objects in image files: a PNG with the boxes drawn and a json per image.

  python detection_infer.py --config config/quickstart.py --params experiments/quickstart/quickstart-0005.params \\
      --input photo.jpg|folder|clip.mp4|0 --out outputs/ [--score 0.3|auto] [--batch 4] [--set Class.field=value ...]

Any size, aspect or format cv2 reads works (grayscale and RGBA become RGB): each image is resized
to fit DatasetParam.image_size keeping its aspect, placed top-left and padded (the eval
transform), then runs through the deploy graph (models/efficientdet/deploy.py: normalisation,
network and post-processing in one symbol), --batch images per call. A folder is read without
recursion, files with image extensions only. For input NAME (e.g. a.jpg) the outputs are
OUT/NAME.png and OUT/NAME.json:
  {"image": path, "width": w, "height": h, "detections": [{"box": [x1, y1, x2, y2] original pixels,
   clipped to the image, "score", "class_id" (0-based), "class_name"}, ...] best first}
holding the detections scoring at least --score (0..1). Class names: those recorded in the
weights (training checkpoints and exports carry them; DatasetParam.class_names and the categories of
DatasetParam.val_roidb, when set, must then be the same list), else DatasetParam.class_names, else
the category names of DatasetParam.val_roidb when that cache exists, else "0", "1", ...
An unreadable image is skipped with one line and counted in the summary.

A video file (by its extension) or a camera index (0, 1, ...) gives OUT/NAME.annotated.mp4 and
OUT/NAME.jsonl, one line of detections per frame (core/video.py); --max-frames stops early (a
camera runs until Ctrl-C otherwise). --score auto keeps each class's detections at the score
threshold that maximised its F1 in `detection_test.py --analyze`: --thresholds FILE, else
experiments/<General.name>/thresholds-epochEEEE.json (for <name>-EEEE.params) or
thresholds-<params stem>.json there, else thresholds-<params stem>.json beside the weights.
"""
import argparse
import os

import cv2
from utils.cpu import configure_cpu

configure_cpu(inference=True)  # before mxnet is imported

import mxnet as mx
import numpy as np

from core.error_analysis import apply_thresholds, find_thresholds
from core.roidb import check_class_names, load_roidb
from core.devices import contexts
from core.image_io import ImageReadError, read_image
from core.inference import bind_inference
from core.transforms import prepare_image
from core.video import VideoSource, detection_rows, is_video, output_paths, run_video
from models.efficientdet.deploy import get_deploy_symbol
from utils.checkpoint import load_weights
from utils.config import add_config_args, check_value, load_config, number_range
from utils.draw import draw_detections
from utils.errors import UserError, refuse_overwrite, run_cli
from utils.fileio import atomic_write, write_bytes, write_json

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


def list_images(path):
    """[image paths] for a file or a folder (sorted); UserError for a missing path or no images."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UserError("input not found: %s" % path)
    found = sorted(os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTS))
    if not found:
        raise UserError("no images (%s) in %s" % (" ".join(IMAGE_EXTS), path))
    return found


def class_names(cfg, trained_on=None, params_path=""):
    """Display name of each class index (module docstring); `trained_on`: the names the weights
    record, or None."""
    d = cfg.DatasetParam
    if d.class_names and len(d.class_names) != d.num_classes:
        raise UserError("DatasetParam.class_names has %d names for %d classes" % (len(d.class_names), d.num_classes))
    roidb_names = None
    if d.val_roidb and os.path.isfile(d.val_roidb):
        roidb_names = [c["name"] for c in load_roidb(d.val_roidb)[1]]
    if trained_on is not None:
        for names, where in ((d.class_names, "DatasetParam.class_names"), (roidb_names, d.val_roidb)):
            if names:
                check_class_names(trained_on, [str(n) for n in names], params_path, where)
        return list(trained_on)
    if d.class_names:
        return [str(n) for n in d.class_names]
    if roidb_names and len(roidb_names) == d.num_classes:
        return roidb_names
    return [str(i) for i in range(d.num_classes)]


def load_model(cfg, arg, aux, params_path, batch=1):
    """Module of the deploy graph bound for `batch` images, holding the weights (arg, aux)."""
    H, W = cfg.DatasetParam.image_size
    shapes = {"data": (batch, 3, H, W), "im_scale": (batch, 1)}
    cfg.General.batch_image = batch           # the graph is built for its batch size
    return bind_inference(get_deploy_symbol(cfg), arg, aux, shapes, contexts(cfg)[:1], params_path)


def score_arg(text):
    """--score: "auto" or a number in [0, 1]."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise UserError("--score expects a number in [0, 1] or 'auto', got '%s'" % text)
    check_value("--score", value, *number_range(0, 1))
    return value


def detect(mod, cfg, images_rgb, score_thresh):
    """[(K, 6) detections] of RGB images (at most the bound batch; a short list is padded by
    repeating its last image): boxes in each image's pixels clipped to it, score >= score_thresh
    (a number, or a function filtering (K, 6) detections), best first."""
    batch = mod.data_shapes[0].shape[0]
    prepared = [prepare_image(im, cfg.DatasetParam.image_size, cfg.NormalizeParam.mean) for im in images_rgb]
    prepared += prepared[-1:] * (batch - len(prepared))
    data = mx.nd.array(np.stack([p[0] for p in prepared]))
    scales = mx.nd.array([[p[1]] for p in prepared])
    mod.forward(mx.io.DataBatch([data, scales]), is_train=False)
    out = []
    for det, image_rgb in zip(mod.get_outputs()[0].asnumpy(), images_rgb):
        det = det[det[:, 4] >= 0.0]                             # padding rows score -1
        det = score_thresh(det) if callable(score_thresh) else det[det[:, 4] >= score_thresh]
        h, w = image_rgb.shape[:2]
        det[:, [0, 2]] = np.clip(det[:, [0, 2]], 0, w)
        det[:, [1, 3]] = np.clip(det[:, [1, 3]], 0, h)
        out.append(det[(det[:, 2] > det[:, 0]) & (det[:, 3] > det[:, 1])])
    return out


def write_outputs(out_dir, path, image_rgb, det, names):
    """OUT/NAME.png (boxes drawn) and OUT/NAME.json (module docstring), both written atomically."""
    stem = os.path.join(out_dir, os.path.basename(path))
    drawn = draw_detections(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), det[:, :4], det[:, 4], det[:, 5],
                            names, score_thresh=-1.0)        # already filtered by --score
    atomic_write(stem + ".png", write_bytes(cv2.imencode(".png", drawn)[1].tobytes()))
    h, w = image_rgb.shape[:2]
    write_json(stem + ".json", {"image": path, "width": w, "height": h, "detections": detection_rows(det, names)})


def main():
    parser = add_config_args(argparse.ArgumentParser(description=__doc__,
                                                     formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--params", required=True, help="trained .params file")
    parser.add_argument("--input", required=True, help="an image file, a folder of images, a video file or a "
                        "camera index")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--score", default="0.3", help="keep detections scoring at least this (0..1), or 'auto': "
                        "per-class thresholds from detection_test.py --analyze")
    parser.add_argument("--thresholds", help="with --score auto: the thresholds json to use")
    parser.add_argument("--max-frames", type=int, help="video/camera: stop after this many frames")
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass (a folder runs faster "
                        "with a few: the per-call overhead is shared)")
    args = parser.parse_args()
    score = score_arg(args.score)
    check_value("--batch", args.batch, *number_range(1, 1024))
    if args.max_frames is not None:
        check_value("--max-frames", args.max_frames, *number_range(1))
    cfg = load_config(args.config, args.sets, is_train=False)
    video = VideoSource(args.input) if is_video(args.input) else None
    images = [] if video else list_images(args.input)
    if video:
        refuse_overwrite([("the output", p) for p in output_paths(args.out, video)], [("--input", args.input)])
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError("--out %s is an existing file; name a folder for the outputs" % args.out)
    if os.path.isdir(args.input) and os.path.isdir(args.out) and os.path.samefile(args.input, args.out):
        raise UserError("--out must not be the input folder: the outputs would become inputs next time")
    arg, aux, trained_on = load_weights(args.params)
    names = class_names(cfg, trained_on, args.params)
    score_is_auto = score == "auto"
    if score_is_auto:
        exp_dir = os.path.join("experiments", cfg.General.name)
        thresholds = find_thresholds(args.params, exp_dir, names, args.thresholds)
        score = lambda det: apply_thresholds(det, thresholds)      # noqa: E731
    mod = load_model(cfg, arg, aux, args.params, min(args.batch, len(images)) if images else args.batch)
    os.makedirs(args.out, exist_ok=True)
    if video:
        frames, found = run_video(video, args.out, lambda ims: detect(mod, cfg, ims, score), names, args.batch,
                                  args.max_frames)
        print("%d frame(s) of %s -> %s: %d detections" % (frames, args.input, ", ".join(output_paths(args.out, video)),
                                                         found))
        return 0 if frames else 1

    done, skipped, total = 0, 0, 0
    for start in range(0, len(images), args.batch):
        readable = []
        for path in images[start:start + args.batch]:
            try:
                readable.append((path, read_image(path)))
            except ImageReadError as e:
                print("skipped: %s" % e)
                skipped += 1
        if not readable:
            continue
        for (path, image), det in zip(readable, detect(mod, cfg, [im for _, im in readable], score)):
            write_outputs(args.out, path, image, det, names)
            done, total = done + 1, total + len(det)
    print("%d image(s) -> %s: %d detections scoring >= %s; %d unreadable image(s) skipped"
          % (done, args.out, total, "their class's threshold" if score_is_auto else args.score, skipped))
    return 0 if done else 1


if __name__ == "__main__":
    run_cli(main)
