"""COCO-style evaluation of detections with pycocotools, for any roidb source (COCO, VOC, CSV).

The ground truth is built in memory from the roidb (see core/dataset.py), so every source is
scored the same way: each box becomes an annotation with iscrowd = 0 and area = box area. For a
COCO source this differs from the official evaluation in two ways: crowd regions (dropped when
the roidb is built) are not ignored, so detections on them count as false positives, and the
small/medium/large split uses box areas instead of mask areas.

Detections come from the test symbol: per image (D, 6) x1, y1, x2, y2 (original image pixels),
score, class (0-based contiguous, the position in the category list); rows with score < 0 or
class < 0 are padding. Boxes are clipped to the image before scoring.
"""
import contextlib
import io

import numpy as np

STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def ground_truth(roidb, categories):
    """The roidb as a COCO instances dict: images, annotations (bbox x, y, w, h; area; iscrowd 0)
    and categories with their original ids."""
    images, annotations = [], []
    for r in roidb:
        images.append({"id": r["image_id"], "width": r["width"], "height": r["height"],
                       "file_name": r["image"]})
        for box, cls in zip(r["boxes"].tolist(), r["classes"].tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": r["image_id"],
                                "category_id": categories[cls]["id"], "bbox": [box[0], box[1], w, h],
                                "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": c["id"], "name": c["name"]} for c in categories]}


def to_coco_results(detections, roidb, categories):
    """{image_id: (D, 6) array} -> COCO results list [{image_id, category_id, bbox xywh, score}].

    Boxes are clipped to their image; padding rows and boxes empty after clipping are skipped.
    """
    sizes = {r["image_id"]: (r["width"], r["height"]) for r in roidb}
    results = []
    for image_id, det in sorted(detections.items()):
        width, height = sizes[image_id]
        det = np.asarray(det, np.float64).reshape(-1, 6)
        det = det[(det[:, 4] >= 0) & (det[:, 5] >= 0)]
        x1, x2 = np.clip(det[:, 0], 0, width), np.clip(det[:, 2], 0, width)
        y1, y2 = np.clip(det[:, 1], 0, height), np.clip(det[:, 3], 0, height)
        for i in np.nonzero((x2 > x1) & (y2 > y1))[0]:
            results.append({"image_id": int(image_id), "category_id": categories[int(det[i, 5])]["id"],
                            "bbox": [round(float(x1[i]), 3), round(float(y1[i]), 3),
                                     round(float(x2[i] - x1[i]), 3), round(float(y2[i] - y1[i]), 3)],
                            "score": round(float(det[i, 4]), 5)})
    return results


def evaluate(roidb, categories, results):
    """Run COCOeval (bbox) of COCO `results` against the roidb's ground truth.

    Returns {"stats": {name: value} for STAT_NAMES (-1 where undefined, as pycocotools),
             "summary": pycocotools' 12 summary lines,
             "per_class": [{"id", "name", "num_gt", "AP", "AP50"}] in category order, AP and AP50
             from eval['precision'] (area all, 100 detections), None for a class without ground
             truth}.
    No detections at all give AP 0 (pycocotools' loadRes cannot take an empty list).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    log = io.StringIO()          # pycocotools prints progress; keep only its summary
    with contextlib.redirect_stdout(log):
        gt = COCO()
        gt.dataset = ground_truth(roidb, categories)
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:
            dt = COCO()
            dt.dataset = dict(gt.dataset, annotations=[])
            dt.createIndex()
        coco_eval = COCOeval(gt, dt, "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_eval.summarize()

    # precision: [IoU threshold, recall, category, area range, max dets]
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]
    num_gt = {c["id"]: 0 for c in categories}
    for ann in gt.dataset["annotations"]:
        num_gt[ann["category_id"]] += 1
    per_class = []
    for k, cat_id in enumerate(coco_eval.params.catIds):
        p, p50 = precision[:, :, k], precision[0, :, k]
        per_class.append({"id": int(cat_id), "name": gt.cats[cat_id]["name"], "num_gt": num_gt[cat_id],
                          "AP": float(p[p > -1].mean()) if (p > -1).any() else None,
                          "AP50": float(p50[p50 > -1].mean()) if (p50 > -1).any() else None})
    return {"stats": {n: float(v) for n, v in zip(STAT_NAMES, coco_eval.stats)},
            "summary": summary.getvalue().rstrip("\n").splitlines(), "per_class": per_class}


def format_per_class(per_class):
    """Printable per-class table: name, ground-truth count, AP@[.5:.95], AP@.5."""
    width = max([len("class")] + [len(c["name"]) for c in per_class])
    lines = ["%-*s %7s %7s %7s" % (width, "class", "gt", "AP", "AP50")]
    for c in per_class:
        ap, ap50 = ("%7.3f" % v if v is not None else "%7s" % "-" for v in (c["AP"], c["AP50"]))
        lines.append("%-*s %7d %s %s" % (width, c["name"], c["num_gt"], ap, ap50))
    return "\n".join(lines)
