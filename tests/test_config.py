"""Config loading: every user error is one clear UserError, variants match docs/design.md §3, no leaks."""
import ast
import os
import re

import pytest

from conftest import REPO
from utils.config import add_config_args, apply_overrides, load_config, parse_sets
from utils.errors import UserError, run_cli

B0 = os.path.join(REPO, "config", "efficientdet_b0.py")

# docs/design.md §3, typed in independently of models/efficientdet/scaling.py:
# file: (backbone, image size, BiFPN width, BiFPN repeats, head repeats, anchor scale, fusion, max level)
VARIANTS = {
    "efficientdet_b0": ("efficientnet_b0", 512, 64, 3, 3, 4.0, "fast", 7),
    "efficientdet_b1": ("efficientnet_b1", 640, 88, 4, 3, 4.0, "fast", 7),
    "efficientdet_b2": ("efficientnet_b2", 768, 112, 5, 3, 4.0, "fast", 7),
    "efficientdet_b3": ("efficientnet_b3", 896, 160, 6, 4, 4.0, "fast", 7),
    "efficientdet_b4": ("efficientnet_b4", 1024, 224, 7, 4, 4.0, "fast", 7),
    "efficientdet_b5": ("efficientnet_b5", 1280, 288, 7, 4, 4.0, "fast", 7),
    "efficientdet_b6": ("efficientnet_b6", 1280, 384, 8, 5, 4.0, "sum", 7),
    "efficientdet_d7": ("efficientnet_b6", 1536, 384, 8, 5, 5.0, "sum", 7),
    "efficientdet_b7": ("efficientnet_b7", 1536, 384, 8, 5, 4.0, "sum", 8),
}


def load_b0(*sets, is_train=True):
    return load_config(B0, list(sets), is_train=is_train)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def error_of(*sets):
    with pytest.raises(UserError) as e:
        load_b0(*sets)
    return str(e.value)


# ---- variants -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_matches_design_table(name):
    cfg = load_config(os.path.join(REPO, "config", name + ".py"), is_train=False)
    backbone, size, width, repeats, head, scale, fusion, max_level = VARIANTS[name]
    assert cfg.BackboneParam.name == backbone
    assert tuple(cfg.DatasetParam.image_size) == (size, size)
    assert (cfg.NeckParam.width, cfg.NeckParam.repeats, cfg.NeckParam.fusion) == (width, repeats, fusion)
    assert (cfg.NeckParam.min_level, cfg.NeckParam.max_level) == (3, max_level)
    assert cfg.HeadParam.repeats == head
    assert cfg.AnchorParam.scale == scale
    assert cfg.General.name.startswith("efficientdet_d")


def test_every_config_file_is_covered():
    """Every paper-variant file is in VARIANTS; every config file loads and names itself in a docstring."""
    files = [f[:-3] for f in os.listdir(os.path.join(REPO, "config")) if f.endswith(".py")
             and f not in ("base.py", "__init__.py")]
    assert {f for f in files if re.fullmatch(r"efficientdet_(b\d|d7)", f)} == set(VARIANTS)
    for name in files:
        path = os.path.join(REPO, "config", name + ".py")
        for is_train in (True, False):
            load_config(path, is_train=is_train)
        assert ast.get_docstring(ast.parse(open(path).read())), name


def test_is_train_sets_batch():
    assert load_b0(is_train=True).General.batch_image == 4
    assert load_b0(is_train=False).General.batch_image == 1


def test_fields_lists_nested_settings():
    fields = dict(load_b0().fields())
    assert fields["OptimizeParam.schedule.type"] == "cosine"
    assert fields["ModelParam.pretrain.fixed_param"] == []
    assert not any(k.endswith(".schedule") or k.endswith(".pretrain") for k in fields)


def test_overrides_do_not_leak_between_loads():
    first = load_b0("NeckParam.width=999", "OptimizeParam.schedule.end_epoch=7", "KvstoreParam.gpus=[0, 1]")
    assert first.NeckParam.width == 999 and first.OptimizeParam.schedule.end_epoch == 7
    first.KvstoreParam.gpus.append(2)       # mutate a list in place: must not reach the next load
    second = load_b0()
    assert second.NeckParam.width == 64
    assert second.OptimizeParam.schedule.end_epoch == 300
    assert second.KvstoreParam.gpus == []
    assert second.NeckParam is not first.NeckParam


# ---- --set value parsing --------------------------------------------------------------------

def test_set_parses_by_existing_type():
    cfg = load_b0("General.batch_image=2", "General.fp16=yes", "OptimizeParam.momentum=1",
                  "OptimizeParam.lr_per_64=1e-2", "General.name=run=1", " TestParam.nms_type = soft ")
    assert cfg.General.batch_image == 2 and type(cfg.General.batch_image) is int
    assert cfg.General.fp16 is True
    assert cfg.OptimizeParam.momentum == 1.0 and type(cfg.OptimizeParam.momentum) is float
    assert cfg.OptimizeParam.lr_per_64 == 0.01
    assert cfg.General.name == "run=1"        # only the first '=' separates key and value
    assert cfg.TestParam.nms_type == "soft"


@pytest.mark.parametrize("text,value", [("true", True), ("On", True), ("1", True),
                                        ("false", False), ("NO", False), ("0", False)])
def test_bool_spellings(text, value):
    assert load_b0("General.fp16=" + text).General.fp16 is value


def test_list_and_tuple_parsing():
    cfg = load_b0("OptimizeParam.schedule.step_epochs=200,250", "KvstoreParam.gpus=[0, 1]",
                  "DatasetParam.image_size=(640, 640)", "ModelParam.pretrain.fixed_param=['^stem', '^blocks_0']")
    assert cfg.OptimizeParam.schedule.step_epochs == [200, 250]
    assert cfg.KvstoreParam.gpus == [0, 1]
    assert cfg.DatasetParam.image_size == (640, 640)     # keeps the default's type: tuple
    assert cfg.ModelParam.pretrain.fixed_param == ["^stem", "^blocks_0"]
    assert load_b0("OptimizeParam.schedule.step_epochs=200").OptimizeParam.schedule.step_epochs == [200]
    assert load_b0("KvstoreParam.gpus=[0, 1]").KvstoreParam.gpus == [0, 1]


def test_python_values_are_applied_as_is():
    cfg = apply_overrides([type("General", (), {"seed": 0})], {"General.seed": 5})
    assert cfg.General.seed == 5


# ---- user errors ----------------------------------------------------------------------------

def test_unknown_class_suggests():
    msg = error_of("Genral.seed=1")
    assert "unknown config class 'Genral'" in msg and "did you mean 'General'" in msg


def test_unknown_class_without_close_match_lists_choices():
    msg = error_of("Zzz.seed=1")
    assert "unknown config class 'Zzz'" in msg and "OptimizeParam" in msg and "General" in msg


def test_unknown_field_suggests():
    msg = error_of("General.batch_imag=2")
    assert "unknown config field 'batch_imag' in General" in msg and "did you mean 'batch_image'" in msg


def test_unknown_nested_field():
    msg = error_of("OptimizeParam.schedule.typo=1")
    assert "unknown config field 'typo' in OptimizeParam.schedule" in msg and "did you mean 'type'" in msg


def test_setting_nested_class_itself():
    assert "'OptimizeParam.schedule' is a nested class" in error_of("OptimizeParam.schedule=cosine")


def test_descending_into_a_field():
    assert "'General.seed' is a field, not a nested class" in error_of("General.seed.x=1")


def test_set_without_equals():
    msg = error_of("General.seed")
    assert "--set 'General.seed' must look like Class.field=value" in msg
    with pytest.raises(UserError):
        parse_sets(["General.seed=1", "oops"])


def test_set_without_class():
    assert "'seed' must look like Class.field=value" in error_of("seed=1")


@pytest.mark.parametrize("item,expect", [
    ("General.fp16=maybe", "General.fp16 expects a boolean (true/false), got 'maybe'"),
    ("General.batch_image=two", "General.batch_image expects a"),
    ("OptimizeParam.momentum=fast", "OptimizeParam.momentum expects a float, got 'fast'"),
    ("KvstoreParam.gpus=[0,", "KvstoreParam.gpus expects a Python literal"),
])
def test_bad_values(item, expect):
    assert expect in error_of(item)


@pytest.mark.parametrize("item", ["General.batch_image=2.5", "General.seed=True"])
def test_int_field_rejects_non_integers(item):
    error_of(item)


def test_missing_config_file(tmp_path):
    missing = str(tmp_path / "nope.py")
    with pytest.raises(UserError, match="config file not found: .*nope.py"):
        load_config(missing)


def test_config_without_get_config(tmp_path):
    path = write(tmp_path, "empty_cfg.py", "X = 1\n")
    with pytest.raises(UserError, match="defines no get_config"):
        load_config(path)


def test_config_with_syntax_error(tmp_path):
    path = write(tmp_path, "broken_cfg.py", "def get_config(is_train):\n    return (\n\nx = = 1\n")
    with pytest.raises(UserError, match="syntax error at line"):
        load_config(path)


def test_user_config_file_with_overrides(tmp_path):
    """A user's own file in any folder can build on config.base and is then --set like the others."""
    path = write(tmp_path, "my_cfg.py",
                 "from config.base import efficientdet_overrides, make_config\n"
                 "def get_config(is_train):\n"
                 "    o = efficientdet_overrides('d1')\n"
                 "    o['DatasetParam.num_classes'] = 3\n"
                 "    return make_config(is_train, o)\n")
    cfg = load_config(path, ["General.batch_image=8"])
    assert (cfg.DatasetParam.num_classes, cfg.NeckParam.width, cfg.General.batch_image) == (3, 88, 8)


def test_bad_override_inside_a_config_file(tmp_path):
    path = write(tmp_path, "typo_cfg.py",
                 "from config.base import make_config\n"
                 "def get_config(is_train):\n"
                 "    return make_config(is_train, {'NeckParam.widht': 64})\n")
    with pytest.raises(UserError, match="did you mean 'width'"):
        load_config(path)


def test_run_cli_turns_user_error_into_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: load_config(str(tmp_path / "nope.py")))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config file not found") and err.count("\n") == 1


def test_cli_args():
    import argparse
    args = add_config_args(argparse.ArgumentParser()).parse_args(
        ["--config", B0, "--set", "General.seed=3", "--set", "NeckParam.width=32"])
    cfg = load_config(args.config, args.sets)
    assert (cfg.General.seed, cfg.NeckParam.width) == (3, 32)


def test_tuple_field_keeps_its_length():
    with pytest.raises(UserError, match="DatasetParam.image_size expects 2 values"):
        load_config("config/efficientdet_b0.py", ["DatasetParam.image_size=640"])
    cfg = load_config("config/efficientdet_b0.py", ["AnchorParam.aspect_ratios=((1.0, 1.0),)"])
    assert cfg.AnchorParam.aspect_ratios == ((1.0, 1.0),)


def test_config_with_name_error_is_one_line(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def get_config(is_train):\n    return x\nundefined_name\n")
    with pytest.raises(UserError, match="failed to load: NameError"):
        load_config(str(path))
