"""Compound scaling: the official EfficientNet / EfficientDet coefficient tables and rounding rules.

Everything here is plain Python so that configs, model builders and the calculator script share
one source of truth. A table row is a frozen dataclass read by field name (as effdet's
model_config.py does); a new per-variant setting is one more field, with a default when most
variants share it, and the rows that differ name it.
"""
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class EfficientNetVariant:
    """Compound coefficients of one EfficientNet (docs/design.md §3)."""
    width: float                # channel multiplier
    depth: float                # repeats multiplier
    resolution: int             # classifier input side, px
    dropout: float              # classifier dropout before the FC


EFFICIENTNET_PARAMS = {
    "efficientnet_b0": EfficientNetVariant(width=1.0, depth=1.0, resolution=224, dropout=0.2),
    "efficientnet_b1": EfficientNetVariant(width=1.0, depth=1.1, resolution=240, dropout=0.2),
    "efficientnet_b2": EfficientNetVariant(width=1.1, depth=1.2, resolution=260, dropout=0.3),
    "efficientnet_b3": EfficientNetVariant(width=1.2, depth=1.4, resolution=300, dropout=0.3),
    "efficientnet_b4": EfficientNetVariant(width=1.4, depth=1.8, resolution=380, dropout=0.4),
    "efficientnet_b5": EfficientNetVariant(width=1.6, depth=2.2, resolution=456, dropout=0.4),
    "efficientnet_b6": EfficientNetVariant(width=1.8, depth=2.6, resolution=528, dropout=0.5),
    "efficientnet_b7": EfficientNetVariant(width=2.0, depth=3.1, resolution=600, dropout=0.5),
}

# B0 stages: (repeats, kernel, stride, expand_ratio, out_channels).
B0_STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
SE_RATIO = 0.25



@dataclass(frozen=True)
class EfficientDetVariant:
    """One row of the EfficientDet table (docs/design.md §3), which is
    authoritative over the paper's formula."""
    backbone: str               # EFFICIENTNET_PARAMS key
    image_size: int             # square input side, px
    fpn_width: int              # BiFPN channels
    fpn_repeats: int            # BiFPN cells
    head_repeats: int           # conv layers of the class and box nets before the predictor
    anchor_scale: float = 4.0
    fusion: str = "fast"        # BiFPN input fusion: fast, softmax or sum
    max_level: int = 7          # pyramid P3..P<max_level>
    drop_path: float = 0.2      # backbone drop-connect in training (effdet's efficientdet_d* configs)


EFFICIENTDET_PARAMS = {
    "d0": EfficientDetVariant(backbone="efficientnet_b0", image_size=512, fpn_width=64, fpn_repeats=3,
                              head_repeats=3, drop_path=0.1),
    "d1": EfficientDetVariant(backbone="efficientnet_b1", image_size=640, fpn_width=88, fpn_repeats=4,
                              head_repeats=3),
    "d2": EfficientDetVariant(backbone="efficientnet_b2", image_size=768, fpn_width=112, fpn_repeats=5,
                              head_repeats=3),
    "d3": EfficientDetVariant(backbone="efficientnet_b3", image_size=896, fpn_width=160, fpn_repeats=6,
                              head_repeats=4),
    "d4": EfficientDetVariant(backbone="efficientnet_b4", image_size=1024, fpn_width=224, fpn_repeats=7,
                              head_repeats=4),
    "d5": EfficientDetVariant(backbone="efficientnet_b5", image_size=1280, fpn_width=288, fpn_repeats=7,
                              head_repeats=4),
    "d6": EfficientDetVariant(backbone="efficientnet_b6", image_size=1280, fpn_width=384, fpn_repeats=8,
                              head_repeats=5, fusion="sum"),
    "d7": EfficientDetVariant(backbone="efficientnet_b6", image_size=1536, fpn_width=384, fpn_repeats=8,
                              head_repeats=5, fusion="sum", anchor_scale=5.0),
    "d7x": EfficientDetVariant(backbone="efficientnet_b7", image_size=1536, fpn_width=384, fpn_repeats=8,
                               head_repeats=5, fusion="sum", max_level=8),
}

# The paper's search result: depth = ALPHA**phi, width = BETA**phi, resolution = GAMMA**phi.
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15


def round_filters(filters, width_mult, divisor=8):
    """Official channel rounding: nearest multiple of 8, never dropping more than 10 %."""
    scaled = filters * width_mult
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats, depth_mult):
    return int(math.ceil(repeats * depth_mult))


def scaled_stages(variant):
    """B0 stage table scaled for `variant`: list of (repeats, kernel, stride, expand, out_channels)."""
    v = EFFICIENTNET_PARAMS[variant]
    return [(round_repeats(r, v.depth), k, s, e, round_filters(c, v.width)) for r, k, s, e, c in B0_STAGES]


def compound_multipliers(phi):
    """(depth, width, resolution) multipliers and the FLOPs factor alpha * beta^2 * gamma^2 per phi."""
    return ALPHA ** phi, BETA ** phi, GAMMA ** phi, ALPHA * BETA ** 2 * GAMMA ** 2


def efficientdet_formula(phi):
    """The EfficientDet paper's approximate scaling rule (the table above is what ships)."""
    return {
        "bifpn_width": 64 * 1.35 ** phi,
        "bifpn_depth": 3 + phi,
        "head_depth": 3 + math.floor(phi / 3),
        "resolution": 512 + 128 * phi,
    }
