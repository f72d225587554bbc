"""EfficientDet anchors (numpy), as in google/automl and effdet.

Per level l with feature size (fh, fw), the stride is per axis: (H / fh, W / fw), which is 2**l
when the input divides by 2**l and slightly less otherwise (effdet and automl do the same). For
octave o in 0..num_scales-1 and each aspect (ax, ay): base = anchor_scale * stride * 2**(o /
num_scales) per axis; half sizes are base_x*ax/2 and base_y*ay/2; centres sit at stride/2 + k*stride.
Order: level, y, x, then anchor (o * num_aspects + aspect).
"""
import numpy as np

ASPECT_RATIOS = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))


def feature_sizes(image_size, max_level):
    """[(h, w)] for levels 0..max_level with TF SAME stride-2 rounding: size_{l+1} = ceil(size_l / 2)."""
    h, w = image_size
    sizes = [(h, w)]
    for _ in range(max_level):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        sizes.append((h, w))
    return sizes


def level_strides(image_size, level):
    """(stride_y, stride_x) of `level` for an (H, W) input: the input size over the feature size."""
    fh, fw = feature_sizes(image_size, level)[level]
    return image_size[0] / float(fh), image_size[1] / float(fw)


def generate_anchors(image_size, min_level=3, max_level=7, num_scales=3,
                     aspect_ratios=ASPECT_RATIOS, anchor_scale=4.0):
    """Anchors for an (H, W) input as float32 (A, 4) in (y1, x1, y2, x2), A = sum_l h_l*w_l*K."""
    sizes = feature_sizes(image_size, max_level)
    out = []
    for level in range(min_level, max_level + 1):
        sy, sx = level_strides(image_size, level)
        fh, fw = sizes[level]
        ys = sy / 2.0 + np.arange(fh) * sy
        xs = sx / 2.0 + np.arange(fw) * sx
        half = []
        for octave in range(num_scales):
            base = anchor_scale * 2.0 ** (octave / float(num_scales))
            for ax, ay in aspect_ratios:
                half.append((base * sy * ay / 2.0, base * sx * ax / 2.0))
        half = np.array(half)  # (K, 2) half-height, half-width
        cy, cx = np.meshgrid(ys, xs, indexing="ij")
        centre = np.stack([cy, cx], -1).reshape(-1, 1, 2)  # (h*w, 1, 2)
        boxes = np.concatenate([centre - half[None], centre + half[None]], -1)  # (h*w, K, 4)
        out.append(boxes.reshape(-1, 4))
    return np.concatenate(out, 0).astype(np.float32)


def num_anchors(image_size, min_level=3, max_level=7, num_scales=3, num_aspects=3):
    sizes = feature_sizes(image_size, max_level)
    return sum(sizes[l][0] * sizes[l][1] for l in range(min_level, max_level + 1)) * num_scales * num_aspects
