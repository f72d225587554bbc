"""Compound-scaling calculator: EfficientNet multipliers per phi, B0-B7 stage tables, EfficientDet D0-D7x.

    python scripts/compound_scaling.py [--phi 0 0.5 1 ...] [--json]

Three tables: (1) the paper's search result (alpha 1.2, beta 1.1, gamma 1.15) per phi;
(2) the official B0-B7 coefficients with the official channel/repeat rounding per stage;
(3) EfficientDet's approximate formula beside the table that actually ships. `--json` prints the
three as one object: {"compound": [...], "efficientnet": {...}, "efficientdet": {...}}.
"""
import argparse
import json
import math
import os
import sys

# Runnable as `python scripts/compound_scaling.py` from a checkout, without installing the repo.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.efficientdet.scaling import (EFFICIENTDET_PARAMS, EFFICIENTNET_PARAMS, HEAD_CHANNELS,  # noqa: E402
                                         STEM_CHANNELS, compound_multipliers, efficientdet_formula,
                                         round_filters, scaled_stages)

DEFAULT_PHI = sorted({0.0, 0.5, 1.0, 2.0, 3.5, 5.0, 6.0, 7.0} | {float(i) for i in range(8)})   # the user's list + 0-7
PYRAMID_STAGES = (2, 4, 6)   # stages 3, 5, 7 give P3, P4, P5 (strides 8, 16, 32)


def compound_table(phis):
    rows = []
    for phi in phis:
        depth, width, res, step = compound_multipliers(phi)
        rows.append({"phi": phi, "depth": depth, "width": width, "resolution_mult": res,
                     "resolution": 224 * res, "flops_per_step": step, "flops": step ** phi})
    return rows


def efficientnet_table():
    out = {}
    for name, v in EFFICIENTNET_PARAMS.items():
        stages = scaled_stages(name)
        channels = [s[4] for s in stages]
        out[name] = {"width": v.width, "depth": v.depth, "resolution": v.resolution, "dropout": v.dropout,
                     "stem": round_filters(STEM_CHANNELS, v.width), "channels": channels,
                     "repeats": [s[0] for s in stages], "head": round_filters(HEAD_CHANNELS, v.width),
                     "p3_p5": [channels[i] for i in PYRAMID_STAGES]}
    return out


def efficientdet_table():
    out = {}
    for name, v in EFFICIENTDET_PARAMS.items():
        phi = int(name[1])   # d7x is the B7 version of d7: same phi
        out[name] = {"phi": phi, "formula": efficientdet_formula(phi),
                     "official": {"backbone": v.backbone, "resolution": v.image_size, "bifpn_width": v.fpn_width,
                                  "bifpn_depth": v.fpn_repeats, "head_depth": v.head_repeats,
                                  "anchor_scale": v.anchor_scale, "fusion": v.fusion, "max_level": v.max_level}}
    return out


def print_tables(compound, nets, dets):
    print("Compound scaling: depth=1.2^phi, width=1.1^phi, resolution=1.15^phi (x224)")
    print("%6s %8s %8s %8s %8s %10s %8s" % ("phi", "depth", "width", "res", "px", "a*b^2*g^2", "FLOPs"))
    for r in compound:
        print("%6g %8.3f %8.3f %8.3f %8.1f %10.4f %8.2f" % (r["phi"], r["depth"], r["width"], r["resolution_mult"],
                                                            r["resolution"], r["flops_per_step"], r["flops"]))
    print("\nEfficientNet (official coefficients and rounding): stem | 7 stages channels x repeats | head")
    for name, r in nets.items():
        stages = " ".join("%dx%d" % cr for cr in zip(r["channels"], r["repeats"]))
        print("%s w=%.1f d=%.1f %dpx drop=%.1f | %d | %s | %d | P3-P5 %s" % (
            name[-2:].upper(), r["width"], r["depth"], r["resolution"], r["dropout"], r["stem"], stages,
            r["head"], "/".join(map(str, r["p3_p5"]))))
    print("\nEfficientDet: paper formula (W=64*1.35^phi, D=3+phi, head=3+phi//3, R=512+128*phi) vs official")
    print("%-4s %4s | %7s %3s %4s %5s | %-15s %5s %4s %3s %4s %5s %-4s %3s" % (
        "", "phi", "W", "D", "head", "R", "backbone", "R", "W", "D", "head", "scale", "fuse", "max"))
    for name, r in dets.items():
        f, o = r["formula"], r["official"]
        print("%-4s %4d | %7.1f %3d %4d %5d | %-15s %5d %4d %3d %4d %5.1f %-4s %3d" % (
            name.upper(), r["phi"], f["bifpn_width"], f["bifpn_depth"], f["head_depth"], f["resolution"],
            o["backbone"], o["resolution"], o["bifpn_width"], o["bifpn_depth"], o["head_depth"],
            o["anchor_scale"], o["fusion"], o["max_level"]))


def finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError("phi must be a finite number, got '%s'" % text)
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phi", type=finite_float, nargs="+", default=DEFAULT_PHI,
                        help="compound coefficients (default: %s)" % " ".join("%g" % p for p in DEFAULT_PHI))
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args(argv)
    tables = (compound_table(sorted(set(args.phi))), efficientnet_table(), efficientdet_table())
    if args.json:
        print(json.dumps(dict(zip(("compound", "efficientnet", "efficientdet"), tables)), indent=1))
    else:
        print_tables(*tables)


if __name__ == "__main__":
    main()
