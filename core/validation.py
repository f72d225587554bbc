"""Running a roidb through the test graph and scoring it with COCOeval: detection_test.py (with its
TTA views) and the validation of detection_train.py (TestParam.eval_every) share this path.

The test graph (models/efficientdet/builder.get_test_symbol) is built for General.batch_image
images per device and fed by the eval pipeline (core.tta.eval_transform) through a
DetectionLoader; its output rows are (x1, y1, x2, y2, score, class), padding rows all -1.
"""
import logging
import time

import mxnet as mx
import numpy as np
from tqdm import tqdm

from core.evaluate import evaluate, to_coco_results
from core.inference import bind_inference, device_shapes
from core.loader import DetectionLoader
from core.tta import eval_transform, merge_views, tta_views, unflip
from models.efficientdet.builder import get_test_symbol

logger = logging.getLogger(__name__)


class EvalGraph:
    """The test symbol of `cfg`, built once, for batches of General.batch_image x len(ctx) images
    at DatasetParam.image_size.

    bind() makes a fresh executor for every set of weights: oneDNN's subgraph backend folds the
    weights of inference convolutions (and BN into them) at the first forward, so weights set on
    an executor that already ran are partly ignored.
    """

    def __init__(self, cfg, ctx):
        self.batch_size = cfg.General.batch_image * len(ctx)
        self.shapes = {"data": (self.batch_size, 3) + tuple(cfg.DatasetParam.image_size),
                       "im_scale": (self.batch_size, 1)}
        self.device_shapes = device_shapes(self.shapes, len(ctx))
        self.sym, self.ctx = get_test_symbol(cfg), ctx

    def bind(self, arg, aux, path):
        """Module holding the weights (arg, aux) (core.inference.bind_inference; `path` names them
        in errors)."""
        return bind_inference(self.sym, arg, aux, self.shapes, self.ctx, path)


def detect(mod, loader, flip=False):
    """Run every batch; return {image_id: (max_det, 6) detections} (rows: see get_test_symbol).
    flip: the loader mirrors the images, so the boxes are mirrored back (core.tta.unflip)."""
    detections = {}
    for batch in tqdm(loader, total=loader.num_batches, desc="test", dynamic_ncols=True, disable=None):
        im_scale = mx.nd.array(batch.im_info[:, 2:3])
        mod.forward(mx.io.DataBatch([batch.data[0], im_scale]), is_train=False)
        out = mod.get_outputs()[0].asnumpy()
        if flip:
            out = unflip(out, batch.im_info[:, 1])
        real = len(out) - batch.pad          # the padded tail repeats earlier images (or another rank's)
        detections.update(zip(batch.image_ids[:real].tolist(), out[:real]))
    return detections


def eval_loader(cfg, roidb, batch_size, flip=False, rank=0, num_ranks=1):
    """DetectionLoader of the eval transform (mirrored with `flip`), in roidb order, this rank's shard."""
    d = cfg.DatasetParam
    return DetectionLoader(roidb, eval_transform(cfg, flip), None, batch_size, num_workers=d.num_workers,
                           prefetch=d.prefetch, rank=rank, num_ranks=num_ranks)


def detect_views(cfg, roidb, arg, aux, ctx, path):
    """Detections of every test view (core.tta.tta_views: just the plain one without TTA), merged
    per image by weighted boxes fusion when there are several.

    Returns ({image_id: (K, 6)}, seconds of detection and merging, binding excluded).
    """
    per_view, seconds = [], 0.0
    for view_cfg, flips in tta_views(cfg):
        graph = EvalGraph(view_cfg, ctx)
        mod = graph.bind(arg, aux, path)
        for flip in flips:
            loader = eval_loader(view_cfg, roidb, graph.batch_size, flip)
            start = time.time()
            per_view.append(detect(mod, loader, flip))
            seconds += time.time() - start
            loader.close()
    start = time.time()
    detections = per_view[0] if len(per_view) == 1 else \
        merge_views(per_view, {r["image_id"]: (r["height"], r["width"]) for r in roidb}, cfg)
    return detections, seconds + time.time() - start


class Validator:
    """COCO evaluation of weights on a roidb during training: the plain view (no TTA) of the test
    graph, built once; called with (arg, aux), it returns core.evaluate.evaluate's report plus
    "seconds" (binding, detection and COCOeval). `roidb`/`categories`: core.roidb.load_roidb's.

    Under dist_sync (kv: the dist kvstore) every rank takes part, at the same epochs: rank 0's
    weights are broadcast first (the ranks' BN statistics and EMAs differ; what is scored is what
    rank 0 saves), each rank detects its shard of the roidb (the loader's sharding), and the
    detections are summed through the kvstore into one (images, max_det, 6) array: shards are
    disjoint, so the sum is a gather. Every rank then runs COCOeval on the same detections and
    reaches the same AP, hence the same early-stop decision, without further messages. No rank waits
    on another longer than the slowest shard.
    """

    def __init__(self, cfg, roidb, categories, ctx, kv=None):
        self.cfg, self.roidb, self.categories, self.kv = cfg, roidb, categories, kv
        self.graph = EvalGraph(cfg, ctx)
        self.rank, self.num_ranks = (kv.rank, kv.num_workers) if kv is not None else (0, 1)
        self.index = {r["image_id"]: i for i, r in enumerate(roidb)}
        self.det_shape = (len(roidb), cfg.TestParam.max_det, 6)
        self.param_shapes = None
        if kv is not None:
            arg_shapes, _, aux_shapes = self.graph.sym.infer_shape(**self.graph.device_shapes)
            names = [("arg:" + n, s) for n, s in zip(self.graph.sym.list_arguments(), arg_shapes)
                     if n not in self.graph.device_shapes]
            self.param_shapes = names + [("aux:" + n, s) for n, s in
                                         zip(self.graph.sym.list_auxiliary_states(), aux_shapes)]
            size = sum(int(np.prod(s)) for _, s in self.param_shapes)
            # kv.init is collective: every rank builds its Validator at the same point of main().
            kv.init("val_params", mx.nd.zeros((size,)))
            kv.init("val_detections", mx.nd.zeros(self.det_shape))

    def _sum(self, key, value):
        out = mx.nd.zeros(value.shape)
        self.kv.push(key, value)
        self.kv.pull(key, out=out)
        return out

    def _broadcast(self, arg, aux):
        """Rank 0's (arg, aux) on every rank: rank 0 pushes them, the others zeros."""
        have = {"arg:" + k: v for k, v in arg.items()}
        have.update({"aux:" + k: v for k, v in aux.items()})
        if self.rank == 0:
            flat = mx.nd.concat(*[have[n].as_in_context(mx.cpu()).reshape((-1,)) for n, _ in self.param_shapes],
                                dim=0)
        else:
            flat = mx.nd.zeros((sum(int(np.prod(s)) for _, s in self.param_shapes),))
        flat, out, at = self._sum("val_params", flat), ({}, {}), 0
        for name, shape in self.param_shapes:
            size = int(np.prod(shape))
            out[name.startswith("aux:")][name[4:]] = flat[at:at + size].reshape(shape)
            at += size
        return out

    def detect(self, arg, aux):
        """{image_id: (max_det, 6)} of every image of the roidb with the weights (arg, aux): a fresh
        executor of the test graph (EvalGraph.bind), this rank's shard, then the gather."""
        if self.kv is not None:
            arg, aux = self._broadcast(arg, aux)
        mod = self.graph.bind(arg, aux, "the weights being trained")
        loader = eval_loader(self.cfg, self.roidb, self.graph.batch_size, rank=self.rank, num_ranks=self.num_ranks)
        try:
            detections = detect(mod, loader)
        finally:
            loader.close()
        if self.kv is None:
            return detections
        mine = np.zeros(self.det_shape, np.float32)
        for image_id, det in detections.items():
            mine[self.index[image_id]] = det
        gathered = self._sum("val_detections", mx.nd.array(mine)).asnumpy()
        return {r["image_id"]: gathered[i] for i, r in enumerate(self.roidb)}

    def __call__(self, arg, aux):
        start = time.time()
        detections = self.detect(arg, aux)
        report = evaluate(self.roidb, self.categories, to_coco_results(detections, self.roidb, self.categories))
        report["seconds"] = time.time() - start
        return report
