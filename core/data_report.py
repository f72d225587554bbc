"""The data check of scripts/analyze_data.py: counts, duplicates, box sizes and shapes, anchor fit.

Box sizes and aspects are those at the network input after the eval resize (core/anchor_fit.py).
"""
import hashlib
import os
from collections import defaultdict

import numpy as np

from core.anchor_fit import anchor_settings, fit, input_boxes, set_line, suggest
from core.roidb import roidb_stats
from utils.plots import new_figure, save_figure

MAX_BOXES = 50000      # boxes measured (a fixed random subset beyond that): memory and time stay bounded


def duplicate_images(roidb):
    """([[paths]] of records whose files have the same bytes (sha1), [unreadable paths]); a file
    listed twice in the roidb counts as a duplicate too."""
    by_hash, unreadable = defaultdict(list), []
    for r in roidb:
        try:
            with open(r["image"], "rb") as f:
                by_hash[hashlib.sha1(f.read()).hexdigest()].append(r["image"])
        except OSError:
            unreadable.append(r["image"])
    return [paths for paths in by_hash.values() if len(paths) > 1], unreadable


def analyze(cfg, roidb, categories, hash_files=True):
    """The report of a roidb against cfg (a json-able dict):
    {"images", "boxes", "empty_images", "per_class", "duplicates": [[paths]] (None: not checked), "unreadable",
     "image_size", "boxes_measured" (all, or MAX_BOXES of them), "box_side": {min, median, max}, "aspect_hw": {min, median, max},
     "pos_iou", "anchors": fit() of the configured anchors + their settings,
     "suggestion": suggest() (aspect_ratios, scale, fit), "set_line": the --set arguments,
     or None when the suggestion does not beat the configured anchors}.
    Also returns the boxes (N, 4) at the input size, for plot()."""
    stats = roidb_stats(roidb, categories)
    boxes, _ = input_boxes(roidb, cfg.DatasetParam.image_size, MAX_BOXES)
    duplicates, unreadable = duplicate_images(roidb) if hash_files else (None, [])
    settings = anchor_settings(cfg)
    pos_iou = float(cfg.AnchorParam.pos_iou)
    report = dict(stats, duplicates=duplicates, unreadable=unreadable, image_size=list(settings["image_size"]),
                  pos_iou=pos_iou, suggestion=None, set_line=None, boxes_measured=len(boxes))
    if not len(boxes):
        return report, boxes
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    aspect = (boxes[:, 3] - boxes[:, 1]) / (boxes[:, 2] - boxes[:, 0])
    for key, v in (("box_side", side), ("aspect_hw", aspect)):
        report[key] = {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}
    report["anchors"] = dict(fit(boxes, pos_iou, **settings), **settings)
    best = suggest(boxes, pos_iou, settings)
    if best["bpr"] > report["anchors"]["bpr"]:
        report["suggestion"], report["set_line"] = best, set_line(best)
    return report, boxes


def format_report(report, what):
    """Printable lines of analyze()'s report; `what` names the roidb."""
    lines = ["%s: %d images (%d without boxes), %d boxes" % (what, report["images"], report["empty_images"],
                                                              report["boxes"]),
             "per class: " + ", ".join("%s=%d" % kv for kv in report["per_class"].items())]
    dup = report["duplicates"]
    lines.append("duplicate images (same bytes): not checked" if dup is None else
                 "duplicate images (same bytes): %d group(s)%s" % (len(dup), "; e.g. " + " = ".join(dup[0][:3])
                                                                    if dup else ""))
    if report["unreadable"]:
        lines.append("unreadable images: %d, e.g. %s" % (len(report["unreadable"]), report["unreadable"][0]))
    if "anchors" not in report:
        return lines + ["no boxes: nothing to fit anchors to"]
    s, a, (h, w) = report["box_side"], report["anchors"], report["image_size"]
    lines.append("box side (sqrt of area) at %dx%d after the eval resize: min %.1f, median %.1f, max %.1f px; "
                 "aspect h/w %.2f-%.2f%s" % (h, w, s["min"], s["median"], s["max"], report["aspect_hw"]["min"],
                                             report["aspect_hw"]["max"], "" if report["boxes_measured"] ==
                                             report["boxes"] else " (%d sampled boxes)" % report["boxes_measured"]))
    lines.append("anchor fit: best possible recall %.3f at IoU %g (AnchorParam.scale=%g, %d aspect ratios, "
                 "levels %d-%d); mean best IoU %.3f" % (a["bpr"], report["pos_iou"], a["scale"],
                                                        len(a["aspect_ratios"]), a["min_level"], a["max_level"],
                                                        a["mean_iou"]))
    lines.append("boxes smaller than the %.1f px the smallest anchor (%.1f px) can match at IoU %g: %d"
                 % (a["min_matchable"], a["smallest_anchor"], report["pos_iou"], a["too_small"]))
    g = report["suggestion"]
    if g is None:
        lines.append("k-means suggestion: none better than the configured anchors")
    else:
        lines.append("k-means suggestion: best possible recall %.3f, mean best IoU %.3f, %d boxes below the "
                     "smallest match:\n  %s" % (g["bpr"], g["mean_iou"], g["too_small"], report["set_line"]))
    return lines


def _anchor_sides(a):
    """Side (sqrt of area) of each octave's square anchor per level: [px]."""
    return [a["scale"] * 2.0 ** (level + o / float(a["num_scales"]))
            for level in range(a["min_level"], a["max_level"] + 1) for o in range(a["num_scales"])]


def plot(report, boxes, categories, png_path):
    """One PNG: boxes per class, box side histogram (anchor sides marked), aspect histogram
    (anchor aspects marked)."""
    fig = new_figure(15, 4.5)
    ax = fig.add_subplot(1, 3, 1)
    names = [c["name"] for c in categories]
    ax.bar(range(len(names)), [report["per_class"][n] for n in names], color="#4c72b0")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center",
                       fontsize="small")
    ax.set_title("boxes per class (%d images without boxes)" % report["empty_images"])
    if len(boxes):
        a = report["anchors"]
        side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        ax = fig.add_subplot(1, 3, 2)
        ax.hist(side, bins=np.geomspace(max(side.min(), 0.5), side.max() * 1.01, 40), color="#55a868")
        ax.set_xscale("log")
        for v in _anchor_sides(a):
            ax.axvline(v, color="gray", linestyle=":", linewidth=0.8)
        ax.axvline(a["min_matchable"], color="red", linewidth=1, label="least side matchable")
        ax.set_title("box side at %dx%d (dotted: anchor sides)" % tuple(report["image_size"]))
        ax.set_xlabel("sqrt(w h) px")
        ax.legend(fontsize="small")
        ax = fig.add_subplot(1, 3, 3)
        aspect = (boxes[:, 3] - boxes[:, 1]) / (boxes[:, 2] - boxes[:, 0])
        ax.hist(aspect, bins=np.geomspace(aspect.min(), aspect.max() * 1.01 + 1e-6, 40), color="#c44e52")
        ax.set_xscale("log")
        for x, y in a["aspect_ratios"]:
            ax.axvline(y / x, color="gray", linestyle=":", linewidth=1)
        ax.set_title("aspect h/w (dotted: anchors)")
        fig.suptitle("anchor fit: best possible recall %.3f at IoU %g" % (a["bpr"], report["pos_iou"]))
    save_figure(fig, png_path)
    return os.path.abspath(png_path)
