"""Readers for the annotation folders labelling tools write: a flat LabelImg (Pascal VOC xml) folder
and YOLO txt. Both build their roidb with core/dataset.py's builder, so boxes are clipped and the
drops counted exactly as for COCO, VOC and CSV (see core/dataset.py for the record format).
"""
import logging
import os

from core.dataset import IMAGE_EXTS, build_labelled, build_voc, image_info, parse_voc_xml
from utils.errors import UserError

logger = logging.getLogger(__name__)


def _images(folder, what):
    """{stem: file name} of the images directly in `folder`; UserError if it is not a folder."""
    if not os.path.isdir(folder):
        raise UserError("%s not found: %s" % (what, folder))
    return {os.path.splitext(f)[0]: f for f in sorted(os.listdir(folder)) if f.lower().endswith(IMAGE_EXTS)}


def load_labelimg(folder, classes=None, keep_difficult=False):
    """Flat LabelImg folder -> (roidb, categories, stats): NAME.xml (Pascal VOC, as LabelImg saves
    it) beside the image NAME.<ext>, no ImageSets. An xml whose image is not beside it uses the
    file its <filename> names. Images without an xml were never saved in LabelImg (unlabelled,
    not known to be empty): they are left out, counted (images skipped: no_xml) and named.
    Boxes, classes and drops as load_voc (1-based VOC pixels, difficult, unknown_class)."""
    images = _images(folder, "LabelImg folder")
    xmls = sorted(f for f in os.listdir(folder) if f.lower().endswith(".xml"))
    if not xmls:
        raise UserError("%s holds no .xml annotations (LabelImg saves NAME.xml beside NAME.jpg in Pascal VOC "
                        "format)" % folder)
    parsed = []
    for n, xml in enumerate(xmls, 1):
        stem = os.path.splitext(xml)[0]
        beside = os.path.join(folder, images[stem]) if stem in images else None
        parsed.append(parse_voc_xml(os.path.join(folder, xml), folder, stem + ".jpg", n, beside))
    labelled = {os.path.abspath(p[0]) for p in parsed}
    unlabelled = [f for f in images.values() if os.path.abspath(os.path.join(folder, f)) not in labelled]
    roidb, categories, stats = build_voc(parsed, classes, keep_difficult, "labelimg", folder)
    stats["skipped_images"]["no_xml"] = len(unlabelled)
    if unlabelled:
        logger.warning("left out %d image(s) without an xml (not labelled in LabelImg): %s", len(unlabelled),
                       ", ".join(unlabelled[:5]))
    return roidb, categories, stats


def _read_classes(path):
    if not os.path.isfile(path):
        raise UserError("YOLO classes file not found: %s (one class name a line, in class-id order; "
                        "pass --classes-file)" % path)
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise UserError("YOLO classes file %s lists no class names" % path)
    return names


def _read_yolo_txt(path, names, width, height):
    """[(box x1y1x2y2 in pixels, class name)] of one YOLO label file: `class cx cy w h` per line,
    centre and size normalised by the image width and height."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) != 5:
                    raise ValueError("%d fields" % len(fields))
                cls, (cx, cy, w, h) = int(fields[0]), (float(v) for v in fields[1:])
            except ValueError as e:
                raise UserError("%s line %d: expected 'class cx cy w h' (an integer and 4 numbers), got %r (%s)"
                                % (path, line_no, line.strip()[:80], e))
            if not 0 <= cls < len(names):
                raise UserError("%s line %d: class %d is not in the classes file (%d names: 0..%d)"
                                % (path, line_no, cls, len(names), len(names) - 1))
            entries.append(([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                             (cy + h / 2) * height], names[cls]))
    return entries


def load_yolo(image_dir, label_dir=None, classes_file=None, classes=None):
    """YOLO txt -> (roidb, categories, stats).

    image_dir: the images. label_dir: NAME.txt per image NAME.<ext> (default: image_dir, or the
    sibling `labels` folder when image_dir is called `images` and that exists, as ultralytics
    lays it out). classes_file: one name a line, line k = class id k (default
    label_dir/classes.txt, as LabelImg writes it). An image without a txt has no objects (the YOLO
    convention for background images). classes: names kept, in this order (default: the classes
    file); the others are dropped as "unknown_class". Label files without an image are named
    and counted (images skipped: no_image). A malformed line or a class id outside the file is
    a UserError naming the file and the line.
    """
    images = _images(image_dir, "YOLO image folder")
    if label_dir is None:
        sibling = os.path.join(os.path.dirname(os.path.abspath(image_dir)), "labels")
        label_dir = sibling if os.path.basename(os.path.abspath(image_dir)) == "images" and os.path.isdir(sibling) \
            else image_dir
    if not os.path.isdir(label_dir):
        raise UserError("YOLO label folder not found: %s" % label_dir)
    classes_file = classes_file or os.path.join(label_dir, "classes.txt")
    file_names = _read_classes(classes_file)
    if not images:
        raise UserError("no images (%s) in %s" % (" ".join(IMAGE_EXTS), image_dir))
    per_image = {}
    for stem, name in images.items():
        try:
            width, height = image_info(os.path.join(image_dir, name))[:2]
        except OSError as e:
            raise UserError("cannot read the size of image %s: %s" % (os.path.join(image_dir, name), e))
        txt = os.path.join(label_dir, stem + ".txt")
        entries = _read_yolo_txt(txt, file_names, width, height) if os.path.isfile(txt) else []
        per_image[name] = ((width, height), entries)
    skip = {os.path.abspath(classes_file)}
    orphans = sorted(f for f in os.listdir(label_dir) if f.endswith(".txt") and os.path.splitext(f)[0] not in images
                     and os.path.abspath(os.path.join(label_dir, f)) not in skip)
    roidb, categories, stats = build_labelled(per_image, list(classes) if classes else file_names, image_dir,
                                              "yolo", label_dir, stated=False)
    stats["skipped_images"]["no_image"] = len(orphans)
    if orphans:
        logger.warning("%d label file(s) have no image in %s: %s", len(orphans), image_dir, ", ".join(orphans[:5]))
    return roidb, categories, stats
