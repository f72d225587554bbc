"""Image files in, RGB uint8 arrays out, or ImageReadError: the one place that decodes an image.

Used by the transforms, the mixing step, the loader (which counts and skips unreadable images) and
detection_infer.py. Decoding applies the EXIF orientation, as cv2.imread and most viewers and
labelling tools do, so boxes are taken in the displayed frame.
"""
import cv2
import numpy as np


class ImageReadError(Exception):
    """An image file is missing, truncated, not an image, or not the size its roidb record says.
    The loader counts and skips it."""


def jpeg_is_complete(data):
    """False for a JPEG (bytes) cut short: no end-of-image marker after its last start-of-scan.

    libjpeg only warns on such a file and cv2 returns it grey-filled. Inside scan data 0xFF is
    always followed by 0x00 or a restart marker, so FFD9 after the last FFDA can only be the real end;
    an EXIF thumbnail's own markers come before the main image's scans.
    """
    return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda")


def read_image(path):
    """RGB uint8 (h, w, 3), EXIF orientation applied (as cv2.imread and most viewers and labelling
    tools do); raises ImageReadError for anything cv2 cannot decode and for truncated JPEGs."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageReadError("cannot read image %s: %s" % (path, e.strerror or e))
    if data[:2] == b"\xff\xd8" and not jpeg_is_complete(data):
        raise ImageReadError("%s is a truncated JPEG (it ends before its end-of-image marker)" % path)
    img = None
    if data:
        try:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error as e:
            raise ImageReadError("%s: %s" % (path, e))
    if img is None:
        raise ImageReadError("cannot read image %s%s" % (path, "" if data else " (empty file)"))
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_record_image(record):
    """read_image of a roidb record, which must decode to the record's width and height: boxes drawn
    on another size (an image resized or re-oriented after labelling) would be silently wrong."""
    img = read_image(record["image"])
    h, w = img.shape[:2]
    if "width" in record and (w, h) != (record["width"], record["height"]):
        raise ImageReadError("%s decodes as %dx%d but its roidb record says %dx%d (resized or rotated after "
                             "labelling?)" % (record["image"], w, h, record["width"], record["height"]))
    return img
