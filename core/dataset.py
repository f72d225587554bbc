"""Annotation readers (COCO json, Pascal VOC xml, CSV) that build a roidb, and the roidb cache.

A roidb is a list of records, one per image:
    {"image": absolute path, "width": int, "height": int, "image_id": int,
     "boxes": float32 (G, 4) x1, y1, x2, y2 in pixels (continuous, pixel edges),
     "classes": int32 (G,) contiguous 0-based class index}
with a dataset-level category list [{"id": original id, "name": str}] whose position is the
contiguous class index. COCO keeps its original category and image ids so that detections can be
written back as a COCO results json; VOC and CSV get ids 1..C and images 1..N.

Every reader returns (roidb, categories, stats). Boxes are clipped to the image; boxes that are
degenerate afterwards (x2 <= x1, y2 <= y1, NaN) are dropped and counted in `stats`.
"""
import contextlib
import csv
import io
import json
import logging
import os
import xml.etree.ElementTree as ET

import numpy as np

from utils.checkpoint import atomic_write
from utils.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
CACHE_VERSION = 1


class _Builder:
    """Collects records, clips boxes and keeps the drop counters shared by all readers."""

    def __init__(self, categories):
        self.categories = categories
        self.roidb = []
        self.dropped = {"degenerate": 0}
        self.clipped = 0

    def drop(self, reason, n=1):
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def add(self, path, width, height, image_id, boxes, classes):
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        classes = np.asarray(classes, np.int64).reshape(-1)
        finite = np.isfinite(boxes).all(1)
        clipped = np.stack([np.clip(boxes[:, 0], 0, width), np.clip(boxes[:, 1], 0, height),
                            np.clip(boxes[:, 2], 0, width), np.clip(boxes[:, 3], 0, height)], 1)
        # NaN compares False everywhere, so `finite` is what catches it, not the size test.
        keep = finite & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        self.clipped += int((np.abs(clipped - boxes) > 1e-6)[keep].any(1).sum())
        self.drop("degenerate", int((~keep).sum()))
        self.roidb.append({"image": os.path.abspath(path), "width": int(width), "height": int(height),
                           "image_id": int(image_id), "boxes": clipped[keep].astype(np.float32),
                           "classes": classes[keep].astype(np.int32)})

    def finish(self, source):
        missing = [r["image"] for r in self.roidb if not os.path.isfile(r["image"])]
        if missing:
            raise UserError("%d of %d images are missing, e.g. %s" % (
                len(missing), len(self.roidb), ", ".join(missing[:5])))
        stats = roidb_stats(self.roidb, self.categories)
        stats.update(source=source, clipped=self.clipped, dropped=dict(self.dropped))
        logger.info("%s", format_stats(stats))
        return self.roidb, self.categories, stats


def roidb_stats(roidb, categories):
    """{"images", "boxes", "empty_images", "per_class": {name: count}} of a roidb."""
    counts = np.zeros(len(categories), np.int64)
    for r in roidb:
        counts += np.bincount(r["classes"], minlength=len(categories))[:len(categories)]
    return {"images": len(roidb), "boxes": int(counts.sum()),
            "empty_images": sum(1 for r in roidb if len(r["classes"]) == 0),
            "per_class": {c["name"]: int(n) for c, n in zip(categories, counts)}}


def format_stats(stats):
    """One summary line: images, boxes, per-class counts and what was clipped or dropped."""
    line = "%s: %d images (%d empty), %d boxes" % (
        stats.get("source", "roidb"), stats["images"], stats["empty_images"], stats["boxes"])
    line += "; per class: " + ", ".join("%s=%d" % kv for kv in stats["per_class"].items())
    if "dropped" in stats:
        line += "; clipped %d; dropped: %s" % (stats["clipped"], ", ".join(
            "%s=%d" % kv for kv in sorted(stats["dropped"].items())))
    return line


def _image_size(path):
    """(width, height) from the file header; images missing here are reported later, together."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        return 0, 0
    except OSError as e:
        raise UserError("cannot read the size of image %s: %s" % (path, e))


def _fixed_categories(classes):
    return [{"id": i + 1, "name": str(n)} for i, n in enumerate(classes)]


# ------------------------------------------------------------------------------------------ COCO
def load_coco(ann_path, image_dir):
    """COCO instances json -> roidb. Crowd boxes are not trained on (dropped as "crowd")."""
    from pycocotools.coco import COCO
    if not os.path.isfile(ann_path):
        raise UserError("COCO annotation file not found: %s" % ann_path)
    try:
        with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints progress lines
            coco = COCO(ann_path)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError("%s is not a COCO instances json: %s" % (ann_path, e))
    cat_ids = sorted(coco.getCatIds())
    contiguous = {cid: i for i, cid in enumerate(cat_ids)}
    b = _Builder([{"id": int(c), "name": coco.cats[c]["name"]} for c in cat_ids])
    b.dropped["crowd"] = 0
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        b.drop("crowd", sum(1 for a in anns if a.get("iscrowd", 0)))
        anns = [a for a in anns if not a.get("iscrowd", 0)]
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                 for a in anns]
        path = os.path.join(image_dir, info["file_name"])
        width, height = (info["width"], info["height"]) if info.get("width") else _image_size(path)
        b.add(path, width, height, image_id, boxes, [contiguous[a["category_id"]] for a in anns])
    return b.finish("coco")


# ------------------------------------------------------------------------------------------- VOC
def load_voc(voc_root, split="trainval", list_file=None, image_dir=None, classes=None,
             keep_difficult=False):
    """Pascal VOC layout -> roidb.

    Ids come from `list_file` (default voc_root/ImageSets/Main/<split>.txt), xml from
    voc_root/Annotations, images from `image_dir` (default voc_root/JPEGImages). VOC pixel indices
    are 1-based and inclusive, so xmin/ymin move by -1 to become pixel edges (Detectron2 does the
    same). Difficult boxes are dropped (counted) unless `keep_difficult`; names not in `classes`
    are dropped as "unknown_class".
    """
    list_file = list_file or os.path.join(voc_root, "ImageSets", "Main", split + ".txt")
    image_dir = image_dir or os.path.join(voc_root, "JPEGImages")
    if not os.path.isfile(list_file):
        raise UserError("VOC image set list not found: %s" % list_file)
    with open(list_file) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    parsed = []
    for n, image_name in enumerate(ids, 1):
        xml_path = os.path.join(voc_root, "Annotations", image_name + ".xml")
        try:
            root = ET.parse(xml_path).getroot()
        except FileNotFoundError:
            raise UserError("VOC annotation not found: %s" % xml_path)
        except ET.ParseError as e:
            raise UserError("VOC annotation %s is not valid xml: %s" % (xml_path, e))
        objs = []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            try:
                box = [float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
            except (AttributeError, TypeError, ValueError):
                raise UserError("%s: an <object> has no valid <bndbox>" % xml_path)
            difficult = obj.findtext("difficult", "0").strip() == "1"
            objs.append((obj.findtext("name", "").strip(), [box[0] - 1, box[1] - 1, box[2], box[3]],
                         difficult))
        path = os.path.join(image_dir, root.findtext("filename") or image_name + ".jpg")
        width, height = int(root.findtext("size/width") or 0), int(root.findtext("size/height") or 0)
        if width <= 0 or height <= 0:      # some converters leave <size> empty
            width, height = _image_size(path)
        parsed.append((path, width, height, n, objs))
    names = list(classes) if classes else sorted({o[0] for p in parsed for o in p[4]})
    index = {c: i for i, c in enumerate(names)}
    b = _Builder(_fixed_categories(names))
    b.dropped.update(difficult=0, unknown_class=0)
    unknown = set()
    for path, width, height, image_id, objs in parsed:
        kept = []
        for name, box, difficult in objs:
            if name not in index:
                unknown.add(name)
                b.drop("unknown_class")
            elif difficult and not keep_difficult:
                b.drop("difficult")
            else:
                kept.append((box, index[name]))
        b.add(path, width, height, image_id, [k[0] for k in kept], [k[1] for k in kept])
    if unknown:
        logger.warning("classes not in --classes were dropped: %s", ", ".join(sorted(unknown)[:10]))
    return b.finish("voc")


# ------------------------------------------------------------------------------------------- CSV
def _read_rows(csv_path):
    if not os.path.isfile(csv_path):
        raise UserError("CSV file not found: %s" % csv_path)
    with open(csv_path, newline="") as f:
        return [r for r in csv.reader(f) if any(c.strip() for c in r)]


def load_csv(csv_path, image_dir, classes=None):
    """CSV -> roidb. Two layouts, told apart by the header:

    - one row per box: `image,x1,y1,x2,y2,label` (header optional); a row whose box fields are
      empty lists an image without boxes. Image paths are relative to `image_dir`.
    - Kaggle wheat: `image_id,width,height,bbox,source` with bbox "[x, y, w, h]"; one class
      ("wheat"), and every image in `image_dir` without rows is an empty image.
    """
    rows = _read_rows(csv_path)
    if rows and [c.strip().lower() for c in rows[0][:4]] == ["image_id", "width", "height", "bbox"]:
        return _load_wheat(csv_path, rows[1:], image_dir)
    if rows and len(rows[0]) > 1 and rows[0][1].strip() and not _is_number(rows[0][1]):
        rows = rows[1:]                    # a header row: its x1 field is text
    per_image, labels = {}, []
    for line, r in enumerate(rows, 1):
        if len(r) != 6:
            raise UserError("%s row %d: expected image,x1,y1,x2,y2,label, got %d fields"
                            % (csv_path, line, len(r)))
        entry = per_image.setdefault(r[0].strip(), [])
        if all(not c.strip() for c in r[1:]):
            continue
        try:
            box = [float(c) for c in r[1:5]]
        except ValueError:
            raise UserError("%s row %d: box fields must be numbers: %s" % (csv_path, line, r[1:5]))
        entry.append((box, r[5].strip()))
        labels.append(r[5].strip())
    names = list(classes) if classes else sorted(set(labels))
    index = {c: i for i, c in enumerate(names)}
    b = _Builder(_fixed_categories(names))
    b.dropped["unknown_class"] = 0
    for image_id, (name, entries) in enumerate(per_image.items(), 1):
        path = os.path.join(image_dir, name)
        width, height = _image_size(path)
        known = [(box, index[label]) for box, label in entries if label in index]
        b.drop("unknown_class", len(entries) - len(known))
        b.add(path, width, height, image_id, [k[0] for k in known], [k[1] for k in known])
    if b.dropped["unknown_class"]:
        logger.warning("labels not in --classes were dropped: %s",
                       ", ".join(sorted(set(labels) - set(index))[:10]))
    return b.finish("csv")


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def _load_wheat(csv_path, rows, image_dir):
    per_image = {}
    for line, r in enumerate(rows, 2):
        try:
            x, y, w, h = json.loads(r[3])
            per_image.setdefault(r[0].strip(), (int(r[1]), int(r[2]), []))[2].append(
                [x, y, x + w, y + h])
        except (ValueError, TypeError, IndexError):
            raise UserError("%s row %d: expected image_id,width,height,\"[x, y, w, h]\",source"
                            % (csv_path, line))
    files = {}
    if os.path.isdir(image_dir):
        files = {os.path.splitext(f)[0]: f for f in sorted(os.listdir(image_dir))
                 if f.lower().endswith(IMAGE_EXTS)}
    b = _Builder(_fixed_categories(["wheat"]))
    names = list(per_image) + sorted(set(files) - set(per_image))
    for image_id, name in enumerate(names, 1):
        path = os.path.join(image_dir, files.get(name, name + ".jpg"))
        width, height, boxes = per_image.get(name) or (*_image_size(path), [])
        b.add(path, width, height, image_id, boxes, [0] * len(boxes))
    return b.finish("csv")


# ----------------------------------------------------------------------------------------- cache
def save_roidb(path, roidb, categories, source=""):
    """Write the roidb as json (never pickle), with the category mapping and the source format."""
    images = [{"image": r["image"], "width": r["width"], "height": r["height"],
               "image_id": r["image_id"], "boxes": r["boxes"].tolist(),
               "classes": r["classes"].tolist()} for r in roidb]
    doc = {"version": CACHE_VERSION, "source": source, "categories": categories, "images": images}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
    atomic_write(path, write)              # a crash never leaves half a cache


def load_roidb(path):
    """Read a cache written by save_roidb -> (roidb, categories); a bad cache is a UserError."""
    try:
        with open(path) as f:
            doc = json.load(f)
        if doc.get("version") != CACHE_VERSION:
            raise ValueError("unknown cache version %r" % doc.get("version"))
        categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in doc["categories"]]
        roidb = []
        for r in doc["images"]:
            boxes = np.asarray(r["boxes"], np.float32).reshape(-1, 4)
            classes = np.asarray(r["classes"], np.int32).reshape(-1)
            if len(boxes) != len(classes) or ((classes < 0) | (classes >= len(categories))).any():
                raise ValueError("image %s has inconsistent boxes/classes" % r["image"])
            roidb.append({"image": r["image"], "width": int(r["width"]), "height": int(r["height"]),
                          "image_id": int(r["image_id"]), "boxes": boxes, "classes": classes})
    except FileNotFoundError:
        raise UserError("roidb cache not found: %s (make it with scripts/create_roidb.py)" % path)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError("roidb cache %s is corrupt: %s" % (path, e))
    return roidb, categories


def load_config_roidb(cfg, split):
    """The roidb of DatasetParam.<split>_roidb ("train" or "val"), checked against num_classes."""
    path = getattr(cfg.DatasetParam, split + "_roidb")
    if not path:
        raise UserError("set DatasetParam.%s_roidb (a roidb cache from scripts/create_roidb.py)" % split)
    roidb, categories = load_roidb(path)
    if len(categories) != cfg.DatasetParam.num_classes:
        raise UserError("the roidb has %d classes but DatasetParam.num_classes is %d"
                        % (len(categories), cfg.DatasetParam.num_classes))
    return roidb, categories
