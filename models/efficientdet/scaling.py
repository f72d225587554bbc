"""Compound scaling: the official EfficientNet / EfficientDet coefficient tables and rounding rules.

Everything here is plain Python so that configs, model builders and the calculator script share
one source of truth.
"""
import math

# (width, depth, resolution, dropout) per EfficientNet variant.
EFFICIENTNET_PARAMS = {
    "efficientnet_b0": (1.0, 1.0, 224, 0.2),
    "efficientnet_b1": (1.0, 1.1, 240, 0.2),
    "efficientnet_b2": (1.1, 1.2, 260, 0.3),
    "efficientnet_b3": (1.2, 1.4, 300, 0.3),
    "efficientnet_b4": (1.4, 1.8, 380, 0.4),
    "efficientnet_b5": (1.6, 2.2, 456, 0.4),
    "efficientnet_b6": (1.8, 2.6, 528, 0.5),
    "efficientnet_b7": (2.0, 3.1, 600, 0.5),
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

# EfficientDet table (DESIGN.md §3), authoritative over the paper's formula:
# backbone, input size, BiFPN width, BiFPN repeats, head repeats, anchor scale, fusion, max level.
EFFICIENTDET_PARAMS = {
    "d0": ("efficientnet_b0", 512, 64, 3, 3, 4.0, "fast", 7),
    "d1": ("efficientnet_b1", 640, 88, 4, 3, 4.0, "fast", 7),
    "d2": ("efficientnet_b2", 768, 112, 5, 3, 4.0, "fast", 7),
    "d3": ("efficientnet_b3", 896, 160, 6, 4, 4.0, "fast", 7),
    "d4": ("efficientnet_b4", 1024, 224, 7, 4, 4.0, "fast", 7),
    "d5": ("efficientnet_b5", 1280, 288, 7, 4, 4.0, "fast", 7),
    "d6": ("efficientnet_b6", 1280, 384, 8, 5, 4.0, "sum", 7),
    "d7": ("efficientnet_b6", 1536, 384, 8, 5, 5.0, "sum", 7),
    "d7x": ("efficientnet_b7", 1536, 384, 8, 5, 4.0, "sum", 8),
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
    width, depth = EFFICIENTNET_PARAMS[variant][:2]
    return [(round_repeats(r, depth), k, s, e, round_filters(c, width)) for r, k, s, e, c in B0_STAGES]


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
