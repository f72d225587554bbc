"""Annotation readers (COCO json, Pascal VOC xml, CSV) that build a roidb, and the roidb cache.
LabelImg folders and YOLO txt are read by core/readers.py with the same builder.

A roidb is a list of records, one per image:
    {"image": absolute path, "width": int, "height": int, "image_id": int,
     "boxes": float32 (G, 4) x1, y1, x2, y2 in pixels (continuous, pixel edges),
     "classes": int32 (G,) contiguous 0-based class index}
with a dataset-level category list [{"id": original id, "name": str}] whose position is the
contiguous class index. COCO keeps its original category and image ids so that detections can be
written back as a COCO results json; VOC and CSV get ids 1..C and images 1..N.

Every reader returns (roidb, categories, stats). Boxes are clipped to the image; boxes that are
degenerate afterwards (x2 <= x1, y2 <= y1, NaN) are dropped and counted in `stats`.

Image sizes are those the image decodes to with its EXIF orientation applied (as cv2, browsers and
most labelling tools show it), and boxes are taken in that frame. When the annotation states a
size (COCO, VOC, wheat and TensorFlow CSV) that differs from it, the image is skipped, counted and
named (its boxes were drawn on other pixels: rotated, or resized after labelling); images whose
EXIF orientation is not 1 are named in a warning. A reader that finds no images is a UserError.
The json cache and the statistics live in core/roidb.py (imported here too).
"""
import csv
import json
import logging
import os
import xml.etree.ElementTree as ET

import numpy as np

from core.roidb import format_stats, load_config_roidb, load_roidb, roidb_stats, save_roidb  # noqa: F401
from utils.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class _Builder:
    """Collects records, clips boxes and keeps the drop counters shared by all readers."""

    def __init__(self, categories):
        self.categories = categories
        self.roidb = []
        self.stated = []                   # per record: its size came from the annotation
        self.dropped = {"degenerate": 0}
        self.clipped = 0

    def drop(self, reason, n=1):
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def add(self, path, width, height, image_id, boxes, classes, stated=True):
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
        self.stated.append(stated)

    def _check_sizes(self):
        """Skip (count, name) images whose stated size is not the decoded one; name EXIF-oriented ones."""
        kept, wrong, oriented = [], [], []
        for r, stated in zip(self.roidb, self.stated):
            try:
                w, h, orientation = image_info(r["image"])
            except OSError:
                kept.append(r)             # unreadable: the loader counts and skips it
                continue
            note = " (EXIF orientation %s)" % orientation if orientation != 1 else ""
            if stated and (w, h) != (r["width"], r["height"]):
                wrong.append("%s is %dx%d in the annotation but decodes as %dx%d%s"
                             % (r["image"], r["width"], r["height"], w, h, note))
                continue
            if note:
                oriented.append(os.path.basename(r["image"]) + note)
            kept.append(r)
        if wrong:
            logger.warning("skipped %d image(s) whose annotated size is not the decoded size (their boxes "
                           "would be wrong): %s", len(wrong), "; ".join(wrong[:5]))
        if oriented:
            logger.warning("%d image(s) carry an EXIF orientation, e.g. %s: their boxes are taken in the "
                           "rotated frame they display in", len(oriented), ", ".join(oriented[:5]))
        self.roidb = kept
        return len(wrong)

    def finish(self, source, what):
        """(roidb, categories, stats); `what` names the annotations in the error for no images."""
        if not self.roidb:
            raise UserError("%s has 0 images" % what)
        missing = [r["image"] for r in self.roidb if not os.path.isfile(r["image"])]
        if missing:
            raise UserError("%d of %d images are missing, e.g. %s" % (
                len(missing), len(self.roidb), ", ".join(missing[:5])))
        total, wrong = len(self.roidb), self._check_sizes()
        if not self.roidb:
            raise UserError("all %d images of %s were skipped: none decodes to its annotated size" % (total, what))
        stats = roidb_stats(self.roidb, self.categories)
        stats.update(source=source, clipped=self.clipped, dropped=dict(self.dropped),
                     skipped_images={"size_mismatch": wrong})
        logger.info("%s", format_stats(stats))
        return self.roidb, self.categories, stats


def image_info(path):
    """(width, height, EXIF orientation) of an image as it decodes, i.e. with the orientation
    applied (5-8 swap the sides), from its header; OSError if it cannot be read."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            (w, h), orientation = im.size, im.getexif().get(0x0112, 1)
    except (ValueError, SyntaxError) as e:            # what PIL raises for some broken headers
        raise OSError(str(e))
    return (h, w, orientation) if orientation in (5, 6, 7, 8) else (w, h, orientation)


def _image_size(path):
    """(width, height) as decoded; images missing here are reported later, together."""
    try:
        return image_info(path)[:2]
    except FileNotFoundError:
        return 0, 0
    except OSError as e:
        raise UserError("cannot read the size of image %s: %s" % (path, e))


def _fixed_categories(classes):
    return [{"id": i + 1, "name": str(n)} for i, n in enumerate(classes)]


# ------------------------------------------------------------------------------------------ COCO
def _coco_doc(ann_path):
    """The instances json, checked so that reading it cannot fail later on a missing key or id."""
    if not os.path.isfile(ann_path):
        raise UserError("COCO annotation file not found: %s" % ann_path)
    try:
        with open(ann_path, encoding="utf-8") as f:
            doc = json.load(f)
    except ValueError as e:                # json.JSONDecodeError and UnicodeDecodeError
        raise UserError("%s is not valid json: %s" % (ann_path, e))
    got = "keys %s" % ", ".join(sorted(doc)[:8]) if isinstance(doc, dict) else "a json %s" % type(doc).__name__
    if not (isinstance(doc, dict) and isinstance(doc.get("images"), list)
            and isinstance(doc.get("categories"), list) and isinstance(doc.get("annotations", []), list)):
        raise UserError("%s is not a COCO instances json: expected an object with the lists images, "
                        "annotations and categories, got %s" % (ann_path, got))
    doc.setdefault("annotations", [])
    checks = [("images", lambda i: "id" in i and isinstance(i.get("file_name"), str) and i["file_name"],
               'an "id" and a "file_name"'),
              ("categories", lambda c: "id" in c and "name" in c, 'an "id" and a "name"'),
              ("annotations", lambda a: {"image_id", "category_id", "bbox"} <= set(a) and isinstance(
                  a["bbox"], list) and len(a["bbox"]) == 4, '"image_id", "category_id" and a 4-number "bbox"')]
    for key, test, need in checks:
        bad = [i for i, x in enumerate(doc[key]) if not (isinstance(x, dict) and test(x))]
        if bad:
            raise UserError("%s: %d of %d %s lack %s, e.g. %s[%d] = %s" % (
                ann_path, len(bad), len(doc[key]), key, need, key, bad[0], json.dumps(doc[key][bad[0]])[:120]))
    for field, key in (("image_id", "images"), ("category_id", "categories")):
        ids = {x["id"] for x in doc[key]}
        bad = [a for a in doc["annotations"] if a[field] not in ids]
        if bad:
            raise UserError("%s: %d annotations have a %s that is not in %s, e.g. annotation %s with %s %r "
                            "(%s ids: %s)" % (ann_path, len(bad), field, key, bad[0].get("id"), field,
                                              bad[0][field], key, ", ".join(map(str, sorted(ids)[:10]))))
    return doc


def load_coco(ann_path, image_dir):
    """COCO instances json -> roidb. Crowd boxes are not trained on (dropped as "crowd")."""
    doc = _coco_doc(ann_path)
    cats = sorted(doc["categories"], key=lambda c: c["id"])
    contiguous = {c["id"]: i for i, c in enumerate(cats)}
    per_image = {}
    for a in doc["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    b = _Builder([{"id": int(c["id"]), "name": str(c["name"])} for c in cats])
    b.dropped["crowd"] = 0
    for info in sorted(doc["images"], key=lambda i: i["id"]):
        anns = per_image.get(info["id"], [])
        b.drop("crowd", sum(1 for a in anns if a.get("iscrowd", 0)))
        anns = [a for a in anns if not a.get("iscrowd", 0)]
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                 for a in anns]
        path = os.path.join(image_dir, info["file_name"])
        stated = bool(info.get("width") and info.get("height"))
        width, height = (info["width"], info["height"]) if stated else _image_size(path)
        b.add(path, width, height, info["id"], boxes, [contiguous[a["category_id"]] for a in anns], stated)
    return b.finish("coco", ann_path)


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
    parsed = [parse_voc_xml(os.path.join(voc_root, "Annotations", name + ".xml"), image_dir, name + ".jpg", n)
              for n, name in enumerate(ids, 1)]
    return build_voc(parsed, classes, keep_difficult, "voc", list_file)


def parse_voc_xml(xml_path, image_dir, default_name, image_id, image_path=None):
    """One VOC xml -> (image path, width, height, image_id, [(name, box x1y1x2y2 edges, difficult)],
    size stated); the image is `image_path` if given, else image_dir/<filename> (default_name
    when the xml names none)."""
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
        objs.append((obj.findtext("name", "").strip(), [box[0] - 1, box[1] - 1, box[2], box[3]], difficult))
    path = image_path or os.path.join(image_dir, root.findtext("filename") or default_name)
    try:
        width, height = (int(float(root.findtext("size/" + k) or 0)) for k in ("width", "height"))
    except ValueError:
        raise UserError("%s: <size> must hold numbers" % xml_path)
    stated = width > 0 and height > 0  # some converters leave <size> empty
    width, height = (width, height) if stated else _image_size(path)
    return path, width, height, image_id, objs, stated


def build_voc(parsed, classes, keep_difficult, source, what):
    """(roidb, categories, stats) of parse_voc_xml() results; counts difficult and unknown names."""
    names = list(classes) if classes else sorted({o[0] for p in parsed for o in p[4]})
    index = {c: i for i, c in enumerate(names)}
    b = _Builder(_fixed_categories(names))
    b.dropped.update(difficult=0, unknown_class=0)
    unknown = set()
    for path, width, height, image_id, objs, stated in parsed:
        kept = []
        for name, box, difficult in objs:
            if name not in index:
                unknown.add(name)
                b.drop("unknown_class")
            elif difficult and not keep_difficult:
                b.drop("difficult")
            else:
                kept.append((box, index[name]))
        b.add(path, width, height, image_id, [k[0] for k in kept], [k[1] for k in kept], stated)
    if unknown:
        logger.warning("classes not in --classes were dropped: %s", ", ".join(sorted(unknown)[:10]))
    return b.finish(source, what)


# ------------------------------------------------------------------------------------------- CSV
# Header cells of the one-row-per-box layout. A first row is a header when its box fields are such
# names: a data row whose coordinate does not parse must be an error, not a lost row.
_BOX_HEADERS = {"x1", "y1", "x2", "y2", "xmin", "ymin", "xmax", "ymax", "x_min", "y_min", "x_max", "y_max",
                "left", "top", "right", "bottom"}


def _read_rows(csv_path):
    """[(line number in the file, fields)] of the non-blank rows."""
    if not os.path.isfile(csv_path):
        raise UserError("CSV file not found: %s" % csv_path)
    with open(csv_path, newline="") as f:
        reader = csv.reader(f)
        return [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]


def load_csv(csv_path, image_dir, classes=None):
    """CSV -> roidb. Three layouts, told apart by the header:

    - one row per box: `image,x1,y1,x2,y2,label` (header optional, recognised by its box column
      names: x1.., xmin.., x_min.. or left,top,right,bottom); a row whose box fields are empty lists
      an image without boxes. Image paths are relative to `image_dir`.
    - Kaggle wheat: `image_id,width,height,bbox,source` with bbox "[x, y, w, h]"; one class
      ("wheat"), and every image in `image_dir` without rows is an empty image.
    - TensorFlow object detection: `filename,width,height,class,xmin,ymin,xmax,ymax` (the header,
      in any column order, is required); boxes in pixel edges, the sizes checked against the images.
    Errors name the line of the file (1 = the first line).
    """
    rows = _read_rows(csv_path)
    if not rows:
        raise UserError("%s has 0 images: the file is empty" % csv_path)
    header = [c.strip().lower() for c in rows[0][1]]
    if sorted(header) == sorted(TF_HEADER):
        return _load_tf_csv(csv_path, header, rows[1:], image_dir, classes)
    first = header[:5]
    if first[:4] == ["image_id", "width", "height", "bbox"]:
        return _load_wheat(csv_path, rows[1:], image_dir)
    if len(first) == 5 and set(first[1:]) <= _BOX_HEADERS:
        rows = rows[1:]
    per_image, labels = {}, []
    for line, r in rows:
        if len(r) != 6:
            raise UserError("%s line %d: expected image,x1,y1,x2,y2,label, got %d fields"
                            % (csv_path, line, len(r)))
        entry = per_image.setdefault(r[0].strip(), [])
        if all(not c.strip() for c in r[1:]):
            continue
        try:
            box = [float(c) for c in r[1:5]]
        except ValueError:
            raise UserError("%s line %d: box fields must be numbers, got %s%s" % (
                csv_path, line, r[1:5], "; a header must name them, e.g. image,x1,y1,x2,y2,label"
                if line == rows[0][0] else ""))
        entry.append((box, r[5].strip()))
        labels.append(r[5].strip())
    names = list(classes) if classes else sorted(set(labels))
    return build_labelled({n: (None, e) for n, e in per_image.items()}, names, image_dir, "csv", csv_path)


def build_labelled(per_image, names, image_dir, source, what, stated=True):
    """(roidb, categories, stats) of {image name: ((width, height) or None, [(box, label)])}; the
    classes are `names` in that order and labels not in it are dropped as "unknown_class". A None
    size is read from the image; a given one is checked against it if `stated` (the annotation's)."""
    index = {c: i for i, c in enumerate(names)}
    b = _Builder(_fixed_categories(names))
    b.dropped["unknown_class"] = 0
    unknown = set()
    for image_id, (name, (size, entries)) in enumerate(per_image.items(), 1):
        path = os.path.join(image_dir, name)
        width, height = size or _image_size(path)
        known = [(box, index[label]) for box, label in entries if label in index]
        unknown.update(label for _, label in entries if label not in index)
        b.drop("unknown_class", len(entries) - len(known))
        b.add(path, width, height, image_id, [k[0] for k in known], [k[1] for k in known],
              stated=stated and size is not None)
    if unknown:
        logger.warning("labels not in --classes were dropped: %s", ", ".join(sorted(unknown, key=str)[:10]))
    return b.finish(source, what)


# TensorFlow object detection API CSV (xml_to_csv.py of its tutorials): pixel edges, one box a row.
TF_HEADER = ("filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax")


def _load_tf_csv(csv_path, header, rows, image_dir, classes):
    col = {name: header.index(name) for name in TF_HEADER}
    per_image, labels = {}, []
    for line, r in rows:
        try:
            if len(r) != len(header):
                raise ValueError
            size = tuple(int(float(r[col[k]])) for k in ("width", "height"))
            box = [float(r[col[k]]) for k in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError:
            raise UserError("%s line %d: expected %s (numbers for the size and the box), got %s"
                            % (csv_path, line, ",".join(header), ",".join(r)[:120]))
        name, label = r[col["filename"]].strip(), r[col["class"]].strip()
        known, entries = per_image.setdefault(name, (size, []))
        if known != size:
            raise UserError("%s line %d: %s is %dx%d here but %dx%d on an earlier line"
                            % ((csv_path, line, name) + size + known))
        entries.append((box, label))
        labels.append(label)
    names = list(classes) if classes else sorted(set(labels))
    return build_labelled(per_image, names, image_dir, "csv", csv_path)


def _load_wheat(csv_path, rows, image_dir):
    per_image = {}
    for line, r in rows:
        try:
            x, y, w, h = json.loads(r[3])
            per_image.setdefault(r[0].strip(), (int(r[1]), int(r[2]), []))[2].append(
                [x, y, x + w, y + h])
        except (ValueError, TypeError, IndexError):
            raise UserError("%s line %d: expected image_id,width,height,\"[x, y, w, h]\",source"
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
        b.add(path, width, height, image_id, boxes, [0] * len(boxes), stated=name in per_image)
    return b.finish("csv", csv_path)
