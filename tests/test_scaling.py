"""Compound scaling: official rounding, the calculator script, and the Python version check."""
import importlib.util
import json
import os
import sys

import pytest

from conftest import REPO, run_script
from models.efficientdet.scaling import (B0_STAGES, EFFICIENTDET_PARAMS, EFFICIENTNET_PARAMS, compound_multipliers,
                                         efficientdet_formula, round_filters, round_repeats, scaled_stages)

# Published per-stage tables (timm tf_efficientnet_b*): (stage channels, stage repeats, stem, head).
OFFICIAL = {
    "efficientnet_b0": ([16, 24, 40, 80, 112, 192, 320], [1, 2, 2, 3, 3, 4, 1], 32, 1280),
    "efficientnet_b1": ([16, 24, 40, 80, 112, 192, 320], [2, 3, 3, 4, 4, 5, 2], 32, 1280),
    "efficientnet_b2": ([16, 24, 48, 88, 120, 208, 352], [2, 3, 3, 4, 4, 5, 2], 32, 1408),
    "efficientnet_b3": ([24, 32, 48, 96, 136, 232, 384], [2, 3, 3, 5, 5, 6, 2], 40, 1536),
    "efficientnet_b4": ([24, 32, 56, 112, 160, 272, 448], [2, 4, 4, 6, 6, 8, 2], 48, 1792),
    "efficientnet_b5": ([24, 40, 64, 128, 176, 304, 512], [3, 5, 5, 7, 7, 9, 3], 48, 2048),
    "efficientnet_b6": ([32, 40, 72, 144, 200, 344, 576], [3, 6, 6, 8, 8, 11, 3], 56, 2304),
    "efficientnet_b7": ([32, 48, 80, 160, 224, 384, 640], [4, 7, 7, 10, 10, 13, 4], 64, 2560),
}
# docs/design.md §3: P3/P4/P5 channels (outputs of stages 3, 5, 7).
PYRAMID = {"b0": (40, 112, 320), "b1": (40, 112, 320), "b2": (48, 120, 352), "b3": (48, 136, 384),
           "b4": (56, 160, 448), "b5": (64, 176, 512), "b6": (72, 200, 576), "b7": (80, 224, 640)}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_scaled_stages_match_published_tables(name):
    channels, repeats, _, _ = OFFICIAL[name]
    stages = scaled_stages(name)
    assert [s[4] for s in stages] == channels and [s[0] for s in stages] == repeats
    # kernel, stride and expansion are never scaled
    assert [s[1:4] for s in stages] == [s[1:4] for s in B0_STAGES]
    assert tuple(channels[i] for i in (2, 4, 6)) == PYRAMID[name[-2:]]


def test_round_filters_rules():
    assert round_filters(40, 1.4) == 56              # 56.0 exactly
    assert round_filters(192, 1.8) == 344            # 345.6 -> nearest multiple of 8
    assert round_filters(7, 1.7) == 16               # 11.9 -> 8 would lose > 10 %, so + 8
    assert round_filters(1, 1.0) == 8                # never below the divisor
    assert round_repeats(3, 3.1) == 10 and round_repeats(1, 1.0) == 1   # ceil, exact stays


def test_compound_multipliers():
    depth, width, res, flops = compound_multipliers(1)
    assert (depth, width, res) == (1.2, 1.1, 1.15)
    assert flops == pytest.approx(1.2 * 1.1 ** 2 * 1.15 ** 2) and abs(flops - 2) < 0.1
    assert compound_multipliers(0)[:3] == (1.0, 1.0, 1.0)
    assert compound_multipliers(2)[0] == pytest.approx(1.44)


def test_efficientdet_formula_is_only_approximate():
    assert efficientdet_formula(0) == {"bifpn_width": 64, "bifpn_depth": 3, "head_depth": 3, "resolution": 512}
    assert efficientdet_formula(3)["head_depth"] == 4 and efficientdet_formula(6)["head_depth"] == 5
    # where the shipped table departs from the paper's rule (the table wins)
    assert efficientdet_formula(5)["resolution"] == 1152 != EFFICIENTDET_PARAMS["d5"].image_size
    assert efficientdet_formula(7)["bifpn_depth"] == 10 != EFFICIENTDET_PARAMS["d7"].fpn_repeats


def compound_json(*args):
    proc = run_script(["scripts/compound_scaling.py", "--json"] + list(args), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_calculator_json():
    out = compound_json()
    assert [r["phi"] for r in out["compound"]] == [0, 0.5, 1, 2, 3, 3.5, 4, 5, 6, 7]
    for r in out["compound"]:
        phi = r["phi"]
        assert r["depth"] == pytest.approx(1.2 ** phi) and r["width"] == pytest.approx(1.1 ** phi)
        assert r["resolution"] == pytest.approx(224 * 1.15 ** phi)
        assert r["flops_per_step"] == pytest.approx(1.92027)
    assert set(out["efficientnet"]) == set(EFFICIENTNET_PARAMS)
    for name, (channels, repeats, stem, head) in OFFICIAL.items():
        row = out["efficientnet"][name]
        assert (row["channels"], row["repeats"], row["stem"], row["head"]) == (channels, repeats, stem, head)
        v = EFFICIENTNET_PARAMS[name]
        assert [row["width"], row["depth"], row["resolution"], row["dropout"]] == [v.width, v.depth, v.resolution,
                                                                                 v.dropout]
    assert out["efficientnet"]["efficientnet_b7"]["p3_p5"] == [80, 224, 640]
    assert set(out["efficientdet"]) == set(EFFICIENTDET_PARAMS)
    d7x = out["efficientdet"]["d7x"]["official"]
    assert (d7x["backbone"], d7x["resolution"], d7x["max_level"]) == ("efficientnet_b7", 1536, 8)
    assert out["efficientdet"]["d7"]["official"]["anchor_scale"] == 5.0
    assert out["efficientdet"]["d2"]["formula"]["bifpn_width"] == pytest.approx(64 * 1.35 ** 2)


def test_calculator_custom_phi_and_text():
    assert [r["phi"] for r in compound_json("--phi", "2", "0.25", "2")["compound"]] == [0.25, 2]
    proc = run_script(["scripts/compound_scaling.py", "--phi", "1"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "1.200    1.100    1.150" in proc.stdout
    assert "| 64 | 32x4 48x7 80x7 160x10 224x10 384x13 640x4 | 2560 |" in proc.stdout   # B7 row
    bad = run_script(["scripts/compound_scaling.py", "--phi", "nan"], timeout=120)
    assert bad.returncode == 2 and "finite" in bad.stderr


def load_check_python():
    spec = importlib.util.spec_from_file_location("check_python", os.path.join(REPO, "scripts", "check_python.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_python_passes_here():
    assert sys.version_info[:2] == (3, 11)
    proc = run_script(["scripts/check_python.py"], timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


@pytest.mark.parametrize("version,needle", [((3, 12, 0), "no wheel for 3.12+"), ((3, 13, 1), "no wheel for 3.12+"),
                                            ((3, 10, 4), "constraints.txt"), ((2, 7, 18), "constraints.txt")])
def test_check_python_rejects(version, needle):
    message = load_check_python().check(version)
    assert needle in message and "Python %d.%d found" % version[:2] in message and "\n" not in message
