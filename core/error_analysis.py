"""Error analysis of an evaluation (detection_test.py --analyze) and the per-class score thresholds
it yields for deployment (detection_infer.py --score auto).

Input: the roidb, its categories and the COCO results of core/evaluate.py (boxes clipped, padding
gone). At IoU 0.5:
- precision-recall per class from pycocotools' own matching (COCOeval restricted to IoU 0.5, all
  areas, TestParam.max_det detections), so the curves agree with the AP50 of the evaluation;
- per class, the score threshold that maximises F1 over that ranked list (None when the class
  has no ground truth or no true positive at any threshold: nothing worth keeping);
- a confusion matrix, (C + 1) x (C + 1), rows the true class, columns the predicted one, index C
  the background. It counts the detections kept by their class's threshold: first each is matched
  to the unmatched same-class box of highest IoU >= 0.5 (COCO's rule: the diagonal is the true
  positives), then the remaining ones to any unmatched box (a localised object of the wrong
  class), in score order; boxes left are missed (column C), detections left are background false
  positives (row C).
"""
import contextlib
import io
import json
import os

import numpy as np

from core.evaluate import ground_truth
from core.targets import iou_matrix
from utils.errors import UserError
from utils.fileio import write_json
from utils.plots import new_figure, save_figure

IOU = 0.5
SCORE_ROUNDING = 5e-6       # half the unit of the scores in COCO results (rounded to 5 decimals)


def _coco_eval_at_05(roidb, categories, results, max_det):
    """COCOeval at IoU 0.5, area all, max_det detections, evaluated and accumulated."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints progress
        gt = COCO()
        gt.dataset = ground_truth(roidb, categories)
        gt.createIndex()
        dt = gt.loadRes(results) if results else COCO()
        if not results:
            dt.dataset = dict(gt.dataset, annotations=[])
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.iouThrs = np.array([IOU])
        ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e10]], ["all"]
        ev.params.maxDets = [max_det]
        ev.evaluate()
        ev.accumulate()
    return ev


def _best_f1(scores, tp, num_gt):
    """(threshold, f1, precision, recall) maximising F1 over score thresholds; only thresholds
    between distinct scores count (a threshold keeps every detection of equal score)."""
    if num_gt == 0 or not tp.any():
        return None, 0.0, 0.0, 0.0
    ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
    precision, recall = ctp / (ctp + cfp), ctp / float(num_gt)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    cut = np.append(scores[1:] != scores[:-1], True)
    i = int(np.flatnonzero(cut)[f1[cut].argmax()])
    return float(scores[i]), float(f1[i]), float(precision[i]), float(recall[i])


def pr_analysis(roidb, categories, results, max_det=100):
    """Per class at IoU 0.5: [{"name", "id", "num_gt", "ap50", "threshold", "f1", "precision",
    "recall", "curve": (scores (D,), precision (D,), recall (D,)) over the ranked detections}]."""
    ev = _coco_eval_at_05(roidb, categories, results, max_det)
    by_class = {c["id"]: [] for c in categories}
    for e in ev.evalImgs:
        if e is not None:
            by_class[e["category_id"]].append(e)
    per_class = []
    for cat in categories:
        scores, tp, num_gt = [], [], 0
        for e in by_class[cat["id"]]:
            keep = ~e["dtIgnore"][0].astype(bool)
            scores.append(np.asarray(e["dtScores"])[keep])
            tp.append(e["dtMatches"][0][keep] > 0)
            num_gt += int((~e["gtIgnore"].astype(bool)).sum())
        scores = np.concatenate(scores) if scores else np.zeros(0)
        tp = np.concatenate(tp) if tp else np.zeros(0, bool)
        order = np.argsort(-scores, kind="mergesort")          # COCOeval's order
        scores, tp = scores[order], tp[order]
        ctp = np.cumsum(tp)
        p = ev.eval["precision"][0, :, list(ev.params.catIds).index(cat["id"]), 0, 0]
        thr, f1, prec, rec = _best_f1(scores, tp, num_gt)
        per_class.append({"name": cat["name"], "id": cat["id"], "num_gt": num_gt,
                          "ap50": float(p[p > -1].mean()) if num_gt and (p > -1).any() else None,
                          "threshold": thr, "f1": f1, "precision": prec, "recall": rec,
                          "curve": (scores, ctp / np.arange(1, len(tp) + 1), ctp / max(num_gt, 1))})
    return per_class


def _by_image(roidb, categories, results):
    index = {c["id"]: i for i, c in enumerate(categories)}
    dets = {r["image_id"]: [] for r in roidb}
    for d in results:
        x, y, w, h = d["bbox"]
        dets[d["image_id"]].append((x, y, x + w, y + h, d["score"], index[d["category_id"]]))
    return {k: np.array(v, np.float64).reshape(-1, 6) for k, v in dets.items()}


def confusion_matrix(roidb, categories, results, thresholds):
    """(C + 1, C + 1) int64 counts (module docstring); thresholds: per class a score or None (the
    class's detections are all left out)."""
    c = len(categories)
    limit = np.array([t if t is not None else np.inf for t in thresholds])
    matrix = np.zeros((c + 1, c + 1), np.int64)
    dets = _by_image(roidb, categories, results)
    for r in roidb:
        det = dets[r["image_id"]]
        det = det[det[:, 4] >= limit[det[:, 5].astype(int)]]
        det = det[np.argsort(-det[:, 4], kind="mergesort")]
        gt_cls, det_cls = r["classes"].astype(int), det[:, 5].astype(int)
        # IoU is the same with x and y swapped in both lists, so x1y1x2y2 boxes go in as they are.
        iou = iou_matrix(det[:, :4], r["boxes"]) if len(det) and len(gt_cls) else np.zeros((len(det), len(gt_cls)))
        gt_free, det_free = np.ones(len(gt_cls), bool), np.ones(len(det), bool)
        for same_class in (True, False):
            for i in np.flatnonzero(det_free):
                ok = gt_free & (iou[i] >= IOU) & ((gt_cls == det_cls[i]) if same_class else True)
                if ok.any():
                    j = int(np.flatnonzero(ok)[iou[i][ok].argmax()])
                    matrix[gt_cls[j], det_cls[i]] += 1
                    gt_free[j], det_free[i] = False, False
        np.add.at(matrix, (gt_cls[gt_free], c), 1)
        np.add.at(matrix, (c, det_cls[det_free]), 1)
    return matrix


def plot_pr(per_class, png_path):
    """PR curves (left) and F1 against the score threshold (right), one line per class."""
    fig = new_figure(13, 5.5)
    ax_pr, ax_f1 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for c in per_class:
        scores, precision, recall = c["curve"]
        if not len(scores) or not c["num_gt"]:
            continue
        envelope = np.maximum.accumulate(precision[::-1])[::-1]       # interpolated, as AP uses it
        line, = ax_pr.plot(recall, envelope, linewidth=1.2, label="%s AP50 %.3f" % (c["name"], c["ap50"] or 0))
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        ax_f1.plot(scores, f1, linewidth=1.2, color=line.get_color(), label=c["name"])
        if c["threshold"] is not None:
            ax_pr.plot([c["recall"]], [c["precision"]], "o", color=line.get_color(), markersize=4)
            ax_f1.plot([c["threshold"]], [c["f1"]], "o", color=line.get_color(), markersize=4)
    for ax, (xl, yl, title) in ((ax_pr, ("recall", "precision", "precision-recall at IoU 0.5 (dot: best F1)")),
                                (ax_f1, ("score threshold", "F1", "F1 against the score threshold"))):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small", loc="lower left" if ax is ax_pr else "upper right")
    save_figure(fig, png_path)


def plot_confusion(matrix, names, png_path):
    """The confusion matrix as an image, each row normalised by its total, counts written in."""
    labels = list(names) + ["background"]
    n = len(labels)
    fig = new_figure(max(6, 0.5 * n + 3), max(5, 0.5 * n + 2))
    ax = fig.add_subplot(1, 1, 1)
    norm = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    if n <= 30:
        for (i, j), v in np.ndenumerate(matrix):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize="small",
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize="small")
    ax.set_yticklabels(labels, fontsize="small")
    ax.set_xlabel("predicted (background: missed)")
    ax.set_ylabel("true (background: false positive)")
    ax.set_title("confusion at IoU 0.5, per-class F1 thresholds")
    save_figure(fig, png_path)


def thresholds_doc(per_class, params):
    """The json written as thresholds-<tag>.json."""
    return {"params": params, "iou": IOU, "class_names": [c["name"] for c in per_class],
            "thresholds": [c["threshold"] for c in per_class],
            "per_class": [{k: c[k] for k in ("name", "num_gt", "ap50", "threshold", "f1", "precision", "recall")}
                          for c in per_class]}


def threshold_candidates(params_path, exp_dir):
    """Where --score auto looks for the thresholds of `params_path`, in order: what
    detection_test.py --analyze writes for --epoch E (exp_dir/thresholds-epochEEEE.json, when the
    file is exp_dir/<name>-EEEE.params) and for --params (exp_dir/thresholds-<stem>.json), then
    thresholds-<stem>.json beside the weights."""
    stem = os.path.splitext(os.path.basename(params_path))[0]
    name = os.path.basename(os.path.normpath(exp_dir))
    out = []
    if stem.startswith(name + "-") and stem[len(name) + 1:].isdigit():
        out.append(os.path.join(exp_dir, "thresholds-epoch%04d.json" % int(stem[len(name) + 1:])))
    out.append(os.path.join(exp_dir, "thresholds-%s.json" % stem))
    out.append(os.path.join(os.path.dirname(os.path.abspath(params_path)), "thresholds-%s.json" % stem))
    unique = {}
    for p in out:
        unique.setdefault(os.path.abspath(p), os.path.normpath(p))
    return list(unique.values())


def load_thresholds(path, class_names):
    """Per-class score thresholds (float64 (C,), +inf for a class without one) from a thresholds
    json; UserError if it is unreadable or made for other classes."""
    try:
        with open(path) as f:
            doc = json.load(f)
        names, values = doc["class_names"], doc["thresholds"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError("cannot read the score thresholds %s: %s" % (path, e))
    if list(names) != list(class_names):
        raise UserError("the score thresholds %s are for the classes %s, not %s" % (path, names, list(class_names)))
    return np.array([np.inf if v is None else float(v) for v in values], np.float64)


def analysis_paths(exp_dir, tag):
    """{"pr", "confusion_png", "confusion", "thresholds"}: the files write_analysis() writes."""
    return {"pr": os.path.join(exp_dir, "pr-%s.png" % tag),
            "confusion_png": os.path.join(exp_dir, "confusion-%s.png" % tag),
            "confusion": os.path.join(exp_dir, "confusion-%s.json" % tag),
            "thresholds": os.path.join(exp_dir, "thresholds-%s.json" % tag)}


def write_analysis(roidb, categories, results, max_det, paths, params):
    """Compute the analysis (module docstring) and write the files of analysis_paths(); returns
    a printable per-class table (name, ground truth, AP50, best-F1 threshold, F1, precision, recall)."""
    per_class = pr_analysis(roidb, categories, results, max_det)
    names = [c["name"] for c in categories]
    matrix = confusion_matrix(roidb, categories, results, [c["threshold"] for c in per_class])
    plot_pr(per_class, paths["pr"])
    plot_confusion(matrix, names, paths["confusion_png"])
    write_json(paths["confusion"], {"iou": IOU, "labels": names + ["background"], "rows": "true class",
                                    "columns": "predicted class", "matrix": matrix.tolist(),
                                    "thresholds": [c["threshold"] for c in per_class]})
    write_json(paths["thresholds"], thresholds_doc(per_class, params))
    width = max([len("class")] + [len(n) for n in names])
    lines = ["%-*s %6s %6s %6s %6s %6s %6s" % (width, "class", "gt", "AP50", "thr", "F1", "P", "R")]
    for c in per_class:
        cells = [("%6.3f" % c[k]) if c[k] is not None else "%6s" % "-" for k in ("ap50", "threshold")]
        lines.append("%-*s %6d %s %s %6.3f %6.3f %6.3f" % ((width, c["name"], c["num_gt"]) + tuple(cells) + (
            c["f1"], c["precision"], c["recall"])))
    return "\n".join(lines)


def find_thresholds(params_path, exp_dir, class_names, path=None):
    """Per-class thresholds (load_thresholds) for --score auto from `path`, else from the first of
    threshold_candidates() that exists; says which file it uses. UserError naming where it looked."""
    candidates = [path] if path else threshold_candidates(params_path, exp_dir)
    for candidate in candidates:
        if os.path.isfile(candidate):
            thresholds = load_thresholds(candidate, class_names)
            print("score thresholds per class from %s: %s" % (candidate, ", ".join(
                "%s=%s" % (n, "off" if np.isinf(t) else "%.3f" % t) for n, t in zip(class_names, thresholds))))
            return thresholds
    raise UserError("--score auto needs the per-class thresholds of detection_test.py --analyze for %s; not found "
                    "at %s (run detection_test.py --analyze on these weights, or pass --thresholds FILE)"
                    % (params_path, " or ".join(candidates)))


def apply_thresholds(det, thresholds):
    """The rows of (K, 6) detections scoring at least their class's threshold ((C,) array). The
    thresholds come from results rounded to 5 decimals (core/evaluate.py), so a raw score up to
    half that unit below its threshold is the detection the threshold was taken at: it is kept."""
    return det[det[:, 4] >= thresholds[det[:, 5].astype(int)] - SCORE_ROUNDING]
